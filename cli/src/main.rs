//! `lifeboat`: disaster recovery for virtual machine disks.
//!
//! This binary parses arguments, reads and writes the home directory's
//! configuration, and reports progress and errors. The work itself lives in
//! the library crates (`filter`, `disk-format`, `vault`, `shipper`, `audit`,
//! `recovery`).

#![forbid(unsafe_code)]

#[macro_use]
mod stdout;
mod disk_pick;
mod home;
mod host_side;
mod keyfile;
mod log;
mod output;
mod progress;
mod protecting;
mod replicate;
mod signals;
mod size;
mod status_file;
mod time;
mod vault_open;
mod cmd {
    pub mod agent;
    pub mod audit;
    pub mod bench;
    pub mod dirty;
    pub mod failback;
    pub mod failover;
    pub mod filter;
    pub mod instant;
    pub mod key;
    pub mod plan;
    pub mod plan_capacity;
    pub mod points;
    pub mod profile;
    pub mod protect;
    pub mod prune;
    pub mod restore;
    pub mod serve;
    pub mod ship;
    pub mod site;
    pub mod snapshot;
    pub mod status;
    pub mod vault;
    pub mod vm;
}

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Lifeboat protects VM disks: a write filter records every block a VM
/// changes, and each replication cycle ships only those blocks, encrypted
/// with a key only you hold, to a vault at the recovery site.
///
/// Typical use:
///
///   lifeboat key new --out /root/lifeboat.key        (keep a copy off-site)
///
///   lifeboat vault init /mnt/dr-vault --key /root/lifeboat.key
///
///   lifeboat protect web1 --image /var/lib/vms/web1.raw --vault /mnt/dr-vault --key /root/lifeboat.key --rpo 30s
///
///   lifeboat agent        (the main job: serves every protected disk over NBD, at
///                          HOME/disks/NAME/nbd.sock, and replicates each on its RPO)
///
///   qemu-system-x86_64 ... -drive file=nbd:unix:/var/lib/lifeboat/disks/web1/nbd.sock,format=raw,if=virtio
///
///   lifeboat status       (RPO achieved, last cycle, errors)
///
///   lifeboat points web1
///
///   lifeboat restore web1 --point latest --out /tmp/web1.raw
///
///   lifeboat vm define web1 --disk web1 --memory 2GiB --nic prod --health-tcp 22
///
///   lifeboat failover web1 --test          (a drill: isolated boot, RTO; then `failover cleanup web1`)
///
///   lifeboat failover web1 --unplanned --vault /mnt/dr-vault --key /root/lifeboat.key --network prod=bridge:br0
///
///   lifeboat plan run shop.toml --test     (a whole application, in order)
///
/// Lifeboat sets its umask to 077: everything it creates under the home, in
/// a local vault, and what its hooks and VMs create is private to the user
/// running it (and root), whatever the shell's umask. Its sockets accept
/// only root and that user.
///
/// Exit codes: 0 success, 1 failure (the message says what to do), 2 bad usage,
/// 3 `status` found a disk failing or late.
#[derive(Parser)]
#[command(name = "lifeboat", version, about, long_about, max_term_width = 100)]
struct Cli {
    /// Where Lifeboat keeps each protected disk's configuration and state.
    #[arg(long, global = true, env = "LIFEBOAT_HOME", default_value = "/var/lib/lifeboat")]
    home: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start protecting a disk image: create its state file under the home.
    ///
    /// The image (a raw file or block device) stays where it is; the VM must
    /// then reach it only through `lifeboat filter`, so every write is recorded.
    Protect(cmd::protect::Args),
    /// Serve a protected disk over NBD, recording every block written.
    ///
    /// Runs in the foreground. The export is named after the disk and is also
    /// the default export (empty name), as with qemu-nbd. SIGTERM or SIGINT
    /// finishes the requests in flight, marks the state file clean and exits 0.
    /// A control socket in the disk's directory lets `lifeboat snapshot` (and
    /// the shipper) cut the disk while it is served. While it serves the image
    /// it holds QEMU's image lock on it: a VM, qemu-io or another filter that
    /// would write the file directly is refused. An image replaced at its path
    /// since `protect` is refused until `protect NAME --reset-state`.
    Filter(cmd::filter::Args),
    /// Show which blocks have changed since the last recovery point.
    Dirty(cmd::dirty::Args),
    /// Write a point-in-time copy of the whole disk while the VM keeps writing.
    ///
    /// With the filter running, asks it to cut and copies every block exactly
    /// as it was at that instant (blocks the VM overwrites meanwhile are copied
    /// aside first). With no filter running, locks the disk and copies the
    /// image. The copy is a raw image, sparse where the disk is zero. The
    /// dirty blocks are left as they were: a snapshot is not a recovery point.
    Snapshot(cmd::snapshot::Args),
    /// Create or inspect the customer key.
    #[command(subcommand)]
    Key(cmd::key::Command),
    /// Create or check a vault.
    #[command(subcommand)]
    Vault(cmd::vault::Command),
    /// Run a replication cycle now: cut, ship the changed blocks, commit a point.
    ///
    /// With the filter running, the cut is taken through its control socket
    /// while the VM keeps writing. With no filter running (VM off), the disk
    /// is locked and its image read directly. The first cycle of a disk, and
    /// the first after an unclean host shutdown, reads the whole disk (blocks
    /// the vault already holds are not sent again). If the cycle fails, its
    /// changes stay marked dirty and the next cycle ships them.
    ///
    /// A cycle builds only on the point the disk's state file records as the
    /// last one committed; when the vault's newest point is another (rolled
    /// back, roots deleted, the disk re-pointed to another vault and back,
    /// another host writing under this name) it verifies the whole disk and
    /// says why.
    Ship(cmd::ship::Args),
    /// List a disk's recovery points. At the protected site, also warns when
    /// the vault no longer holds the newest point this host committed (rolled
    /// back, roots deleted).
    Points(cmd::points::Args),
    /// Write a recovery point out as a raw image, verifying every block.
    Restore(cmd::restore::Args),
    /// Apply the retention ladder: keep every recent point, then one per hour
    /// (and optionally one per day), and delete the rest of the disk's points.
    ///
    /// Only the points' roots are deleted (no key needed); `lifeboat vault gc`
    /// then frees the blocks no remaining point uses. The newest point, a
    /// point being restored, and a damaged point are never pruned.
    Prune(cmd::prune::Args),
    /// Run Lifeboat's main job in the foreground: serve every protected disk
    /// and replicate each on its schedule.
    Agent(cmd::agent::Args),
    /// Show each protected disk's replication health: RPO, last cycle, errors.
    Status(cmd::status::Args),
    /// What a disk's writes would cost to replicate: the churn profile the
    /// filter records while it serves the disk (see `profile show --help`).
    #[command(subcommand)]
    Profile(cmd::profile::Command),
    /// Plan the capacity that protecting this host's disks takes: per disk
    /// and for the host, the bandwidth that holds an RPO at the p95 and p99
    /// of the profiled churn (with growth headroom), the RPO a given link
    /// holds, the initial sync's time, the vault's storage over the
    /// retention ladder, the pipeline's cores, copy-before-write memory at
    /// the peak, and which disks cannot be protected at the target and why.
    ///
    /// From the churn profiles the filter records (`lifeboat profile show`),
    /// or from --synthetic specs for disks not yet profiled. Changed data in
    /// a window the profile did not record is bounded from the 30 s, 5 min
    /// and 15 min windows it did (never under-estimated), and a disk whose
    /// churn the link cannot carry at any RPO is said to be, never given a
    /// number. Disks cut together share the link: a disk's cycles are slowed
    /// by the others' busy windows that coincide with its own (as the
    /// profiles recorded them; a synthetic disk's are taken as coinciding).
    /// The initial sync is planned from a sample of the data on each image.
    /// `benches/plan-validate.sh` checks the plan against a real agent.
    /// Example: `lifeboat plan-capacity --rpo 5m --link 100Mbit --keep-daily 15`.
    PlanCapacity(cmd::plan_capacity::Args),
    /// Measure this host's own ceilings, each beside its floor, in well
    /// under a minute: the cycle's read engine against O_DIRECT reads of
    /// the same image, whole cycles into a local vault on 1..N workers
    /// against block id and seal alone on as many threads, and a restore
    /// against a sequential write. Writes HOME/machine.json, from which
    /// `plan-capacity` counts the cores a disk needs. Run it with --dir on
    /// the file system the images (or a local vault) live on, while the
    /// host is otherwise quiet.
    Bench(cmd::bench::Args),
    /// Inspect and verify the tamper-evident audit log.
    #[command(subcommand)]
    Audit(cmd::audit::Command),
    /// Define the VMs whose disks are protected (what a failover boots).
    #[command(subcommand)]
    Vm(cmd::vm::Command),
    /// Boot a protected VM at the recovery site from a recovery point.
    ///
    /// `lifeboat failover VM --test` boots a point (latest, or --point ID) on
    /// an isolated network while replication goes on, checks its health and
    /// reports the RTO; `lifeboat failover cleanup VM` removes all of it.
    /// `lifeboat failover VM --unplanned [--point ID] --network prod=bridge:br0`
    /// boots a point when the source site is gone; run it again with another
    /// --point to switch, and `lifeboat failover commit VM` to make it final.
    ///
    /// Each failover is a job whose steps are kept in
    /// HOME/failovers/VM/job.json: if Lifeboat dies, the same command resumes
    /// where it stopped. Every step goes to the audit log. At a recovery site
    /// with an empty home, pass --vault and --key: the VM's definition comes
    /// from the vault, stored with each point.
    Failover(cmd::failover::Args),
    /// Bring a failed-over VM home, moving only what changed.
    ///
    /// At the recovery site, `lifeboat failback VM --prepare` powers the
    /// recovered VM off and ships its disks back to the vault (only blocks
    /// the vault does not hold travel). Then at the original site,
    /// `lifeboat failback VM` compares every block of each original disk
    /// with that point by its keyed hash and fetches only those that differ,
    /// resets the disk's state, and the VM can start there again with
    /// protection resuming in the original direction.
    Failback(cmd::failback::Args),
    /// Recovery plans: fail a whole application over in order (groups of
    /// VMs in parallel, scripts and manual steps between them).
    #[command(subcommand)]
    Plan(cmd::plan::Command),
    /// The recovery site: make its CA (`site init`), let protected hosts in
    /// (`site enroll` there, `site join` on the host), cut them off (`site
    /// revoke`), list them (`site hosts`).
    #[command(subcommand)]
    Site(cmd::site::Command),
    /// (Internal) serve a recovery point for `lifeboat failover --instant`.
    #[command(hide = true)]
    InstantServe(cmd::instant::Args),
    /// (Internal) the watchdog of a guest-agent freeze: thaws the guest
    /// after a delay unless killed first.
    #[command(hide = true)]
    GuestThaw {
        /// The guest agent's socket.
        #[arg(long)]
        socket: PathBuf,
        /// Seconds to wait first.
        #[arg(long)]
        after: u64,
    },
}

fn main() -> ExitCode {
    // Everything Lifeboat and its children (QEMU, hooks, plan scripts) create
    // is private to the administrator, whatever umask the shell gave us: the
    // home names the image and the key, and its sockets cut the disk. The
    // library crates also create their files, directories and sockets with
    // explicit private modes; this is the second layer.
    // Called before any thread exists.
    system::host::set_umask(0o077);
    system::host::tune_allocator();
    // Every log line of the libraries and of this binary goes through it.
    log::install();
    let cli = Cli::parse();
    let home = home::Home::new(cli.home);
    let result = match cli.command {
        Command::Protect(a) => cmd::protect::run(&home, a),
        Command::Filter(a) => cmd::filter::run(&home, a),
        Command::Dirty(a) => cmd::dirty::run(&home, a),
        Command::Snapshot(a) => cmd::snapshot::run(&home, a),
        Command::Key(c) => cmd::key::run(c),
        Command::Vault(c) => cmd::vault::run(&home, c),
        Command::Ship(a) => cmd::ship::run(&home, a),
        Command::Points(a) => cmd::points::run(&home, a),
        Command::Restore(a) => cmd::restore::run(&home, a),
        Command::Prune(a) => cmd::prune::run(&home, a),
        Command::Agent(a) => cmd::agent::run(&home, a),
        Command::Status(a) => cmd::status::run(&home, a),
        Command::Profile(c) => cmd::profile::run(&home, c),
        Command::PlanCapacity(a) => cmd::plan_capacity::run(&home, a),
        Command::Bench(a) => cmd::bench::run(&home, a),
        Command::Audit(c) => cmd::audit::run(&home, c),
        Command::Vm(c) => cmd::vm::run(&home, c),
        Command::Failover(a) => cmd::failover::run(&home, a),
        Command::Failback(a) => cmd::failback::run(&home, a),
        Command::Plan(c) => cmd::plan::run(&home, c),
        Command::Site(c) => cmd::site::run(&home, c),
        Command::InstantServe(a) => cmd::instant::run(&home, a),
        Command::GuestThaw { socket, after } => {
            std::thread::sleep(std::time::Duration::from_secs(after));
            let mut last = Ok(serde_json::Value::Null);
            for _ in 0..5 {
                last = agent::quiesce::guest_agent(&socket, "guest-fsfreeze-thaw", std::time::Duration::from_secs(10));
                if last.is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            last.map(|_| ()).map_err(anyhow::Error::from)
        }
    };
    let code = exit_code(result);
    // The log thread writes what is queued (up to 5 s) before we exit.
    log::flush();
    code
}

/// The exit code for the command's `result`, saying what failed on stderr.
fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    let succeeded = result.is_ok();
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("lifeboat: error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    };
    match stdout::failure() {
        // The reader stopped reading (`lifeboat points | head -1`): quiet, as with `ls | head`.
        Some(e) if e.kind() == std::io::ErrorKind::BrokenPipe => code,
        Some(e) => {
            tracing::error!(
                "lifeboat: error: writing the output to stdout failed: {e}; the command itself {}",
                if succeeded { "succeeded" } else { "failed too" }
            );
            ExitCode::FAILURE
        }
        None => code,
    }
}

/// The error and its causes on one line, leaving out a cause whose text an
/// outer message already includes (many library errors quote their source).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
