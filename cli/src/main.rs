//! `lifeboat`: disaster recovery for virtual machine disks.
//!
//! This binary parses arguments, reads and writes the home directory's
//! configuration, and reports progress and errors. The work itself lives in
//! the library crates (`filter`, `disk-format`).

mod home;
mod signals;
mod size;
mod cmd {
    pub mod dirty;
    pub mod filter;
    pub mod protect;
    pub mod snapshot;
}

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Lifeboat protects VM disks: a write filter records every block a VM
/// changes, so recovery points can be cut and shipped without rescanning the disk.
///
/// Typical use:
///
///   lifeboat protect web1 --image /var/lib/vms/web1.raw
///
///   lifeboat filter web1 --listen unix:/run/lifeboat/web1.sock
///
///   qemu-system-x86_64 ... -drive file=nbd:unix:/run/lifeboat/web1.sock,format=raw,if=virtio
///
///   lifeboat dirty web1 --json
///
///   lifeboat snapshot web1 --out /backup/web1-now.raw
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
    /// the shipper) cut the disk while it is served.
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let home = home::Home::new(cli.home);
    let result = match cli.command {
        Command::Protect(a) => cmd::protect::run(&home, a),
        Command::Filter(a) => cmd::filter::run(&home, a),
        Command::Dirty(a) => cmd::dirty::run(&home, a),
        Command::Snapshot(a) => cmd::snapshot::run(&home, a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lifeboat: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
