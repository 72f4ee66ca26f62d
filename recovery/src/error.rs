//! Errors of the recovery crate.
//!
//! Policy: every message names the VM (and the disk, point or file) and says
//! what the user can do next; the kinds are matchable so the CLI can choose
//! an exit status and tests can tell a refusal from a failure. A refusal
//! ([`Refusal`]) and a QEMU failure ([`QemuError`]) carry the facts they
//! name as fields, never only as text.

use std::path::PathBuf;

use vault::VaultError;

use crate::failover::{JobState, Kind};
use crate::plan::RunState;

/// What went wrong in a failover.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryError {
    /// A VM definition is invalid.
    #[error("VM definition {what}: {why}")]
    Definition {
        /// Which definition (VM name or file).
        what: String,
        /// What is wrong and how to fix it.
        why: String,
    },
    /// The VM, or a point of it, cannot be found in the vault.
    #[error("{0}")]
    NotFound(String),
    /// The failover cannot go on as asked (another one is active, it was
    /// committed, ...): nothing was changed.
    #[error("{0}")]
    Refused(#[from] Refusal),
    /// Launching or stopping QEMU (or an instant-recovery server) failed.
    #[error("{0}")]
    Qemu(#[from] QemuError),
    /// A job's or run's file cannot be read as one: nothing was changed.
    #[error("{0}")]
    StateFile(#[from] crate::job_file::StateFileError),
    /// An audit record could not be written; the job stopped there.
    #[error("{why}")]
    Audit {
        /// The record's kind, e.g. `failover.start`.
        record: String,
        /// Why it could not be written (names the log and what to do).
        why: String,
    },
    /// A file of the failover's state could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The vault refused or failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
}

impl RecoveryError {
    pub(crate) fn io(what: &'static str, path: &std::path::Path, source: std::io::Error) -> RecoveryError {
        RecoveryError::Io { what, path: path.to_path_buf(), source }
    }
}

/// What was refused, and why; nothing was changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// A VM or plan name that cannot name a directory.
    #[error("{why}")]
    BadName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: String,
    },
    /// Another failover command holds the VM's lock.
    #[error("another `lifeboat failover` of VM {vm:?} is running right now (it holds {}); wait for it", lock.display())]
    Busy {
        /// The VM.
        vm: String,
        /// The lock file.
        lock: PathBuf,
    },
    /// The VM's failover was committed; it cannot be run again.
    #[error(
        "the {} failover of VM {vm:?} to point {point} was committed; the VM runs at the recovery site now",
        kind.as_str()
    )]
    Committed {
        /// The VM.
        vm: String,
        /// The committed job's kind.
        kind: Kind,
        /// Its point.
        point: u64,
    },
    /// A failover of another kind is active for the VM.
    #[error(
        "a {} failover of VM {vm:?} is active ({state:?}); end it first with `lifeboat failover cleanup {vm}`{}",
        active.as_str(),
        if *active == Kind::Unplanned { " or `lifeboat failover commit`" } else { "" }
    )]
    OtherKindActive {
        /// The VM.
        vm: String,
        /// The active job's kind.
        active: Kind,
        /// Where it is.
        state: JobState,
    },
    /// A booted test failover cannot switch points.
    #[error("a test failover of VM {vm:?} to point {point} is running; `lifeboat failover cleanup {vm}` first")]
    TestRunning {
        /// The VM.
        vm: String,
        /// The test's point.
        point: u64,
    },
    /// The job was started with instant recovery and resumed without it.
    #[error("the failover of VM {vm:?} was started with instant recovery; run it again with --instant")]
    NeedsInstant {
        /// The VM.
        vm: String,
    },
    /// The chosen point is damaged.
    #[error("{damage}; pick another point with --point")]
    DamagedPoint {
        /// The VM's first disk.
        disk: String,
        /// The point.
        point: u64,
        /// What the vault found (names the disk and point).
        damage: String,
    },
    /// Several VMs of that name are in the vault and nothing picks one.
    #[error(
        "vault {vault} holds {count} VMs named {vm:?} (protected from different hosts, or protected anew); nothing \
         says which one is meant, so nothing was done: {candidates}. Name one with --from-host HOST or --disk-id ID \
         (of its first disk)"
    )]
    AmbiguousVm {
        /// The vault's location.
        vault: String,
        /// The VM.
        vm: String,
        /// How many match.
        count: usize,
        /// Each of them described (host, identity).
        candidates: String,
    },
    /// A test failover cannot be committed.
    #[error("the failover of VM {vm:?} is a test; it cannot be committed (`lifeboat failover cleanup {vm}` ends it)")]
    CommitTest {
        /// The VM.
        vm: String,
    },
    /// Only a booted failover can be committed.
    #[error(
        "the {} failover of VM {vm:?} is {state:?}, not booted; run `lifeboat failover {vm} --{}` again to finish it, \
         then commit",
        kind.as_str(),
        kind.as_str()
    )]
    NotBooted {
        /// The VM.
        vm: String,
        /// The job's kind.
        kind: Kind,
        /// Where it is.
        state: JobState,
    },
    /// A committed failover is production and is not cleaned up.
    #[error(
        "the failover of VM {vm:?} was committed: its VM and disks are production now and are not removed (after \
         `lifeboat failback {vm} --prepare` they may be)"
    )]
    CleanupCommitted {
        /// The VM.
        vm: String,
    },
    /// A NIC's network has no mapping at this site.
    #[error(
        "NIC {nic} of VM {vm:?} is on network {network:?}, which has no mapping at this recovery site: pass \
         --network {network}=bridge:BRIDGE (or =user, =isolated, =none)"
    )]
    UnmappedNetwork {
        /// The VM.
        vm: String,
        /// The NIC's index.
        nic: usize,
        /// Its network.
        network: String,
    },
    /// A direct-boot kernel or initrd may be changed by others.
    #[error("VM {vm:?}: {why}")]
    UntrustedBoot {
        /// The VM.
        vm: String,
        /// Which file and what to do (from `trust`).
        why: String,
    },
    /// The plan already ran to the end.
    #[error(
        "plan {plan:?} already ran to the end ({}); `lifeboat plan cleanup {plan}` ends a test run, and a new run \
         needs the old one cleaned up",
        kind.as_str()
    )]
    PlanDone {
        /// The plan.
        plan: String,
        /// Its run's kind.
        kind: Kind,
    },
    /// Another run of the plan (another kind, or another version of the
    /// plan file) is in progress.
    #[error(
        "plan {plan:?} has a {} run in progress ({state:?}) made from {}; resume it with `lifeboat plan resume \
         {plan}` or end it with `lifeboat plan cleanup {plan}`",
        kind.as_str(),
        if *same_plan { "this plan" } else { "a different version of the plan file" }
    )]
    PlanInProgress {
        /// The plan.
        plan: String,
        /// The run's kind.
        kind: Kind,
        /// Where it is.
        state: RunState,
        /// Whether it was made from the same plan file.
        same_plan: bool,
    },
}

/// QEMU (or an instant-recovery server) could not be started, reached or
/// stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QemuError {
    /// No loopback port for the health check's forward.
    #[error("finding a free port for the health check: {0}")]
    FreePort(std::io::Error),
    /// The QEMU binary did not run.
    #[error("cannot run {}: {source} (install qemu-system-x86, e.g. scripts/setup.sh)", binary.display())]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// QEMU exited with an error instead of starting the VM.
    #[error("QEMU refused to start VM {vm:?} ({status}): {stderr}")]
    StartRefused {
        /// The VM.
        vm: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it said.
        stderr: String,
    },
    /// QEMU started but its pid file is missing.
    #[error("QEMU started but wrote no pid to {}", pidfile.display())]
    NoPid {
        /// The pid file.
        pidfile: PathBuf,
    },
    /// The pid file holds something else.
    #[error("{} does not hold a pid: {text:?}", pidfile.display())]
    BadPid {
        /// The pid file.
        pidfile: PathBuf,
        /// What it holds.
        text: String,
    },
    /// QEMU did not die.
    #[error("QEMU pid {pid} survived SIGKILL for 10 s")]
    SurvivedKill {
        /// Its pid.
        pid: u32,
    },
    /// An instant-recovery server did not die.
    #[error("the instant-recovery server pid {pid} survived SIGKILL")]
    ServerSurvivedKill {
        /// Its pid.
        pid: u32,
    },
    /// An instant-recovery server could not be started.
    #[error("{why}")]
    Serve {
        /// The disk.
        disk: String,
        /// Why (names the server's log).
        why: String,
    },
    /// A QMP exchange failed.
    #[error("QMP {}: {source}", socket.display())]
    Qmp {
        /// The QMP socket.
        socket: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Nothing listens on the QMP socket.
    #[error(
        "nothing answers on the QMP socket {} ({source}), so Lifeboat cannot see whether that QEMU runs or how it \
         stopped",
        socket.display()
    )]
    NoAnswer {
        /// The QMP socket.
        socket: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The socket's peer could not be read.
    #[error("reading the peer of the QMP socket {}: {source}", socket.display())]
    Peer {
        /// The QMP socket.
        socket: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The socket's peer is in another pid namespace.
    #[error(
        "the process behind the QMP socket {} is in another pid namespace: Lifeboat cannot watch it exit",
        socket.display()
    )]
    OtherNamespace {
        /// The QMP socket.
        socket: PathBuf,
    },
    /// No pidfd on QEMU.
    #[error("QEMU (pid {pid}) behind the QMP socket {}: pidfd_open: {source}", socket.display())]
    Pidfd {
        /// The QMP socket.
        socket: PathBuf,
        /// QEMU's pid.
        pid: u32,
        /// Why.
        source: std::io::Error,
    },
    /// QEMU accepted the connection and said nothing.
    #[error(
        "QEMU (pid {pid}) accepted a connection on {} but did not answer within {seconds} s (is another QMP client \
         connected? QEMU serves one at a time)",
        socket.display()
    )]
    Silent {
        /// The QMP socket.
        socket: PathBuf,
        /// QEMU's pid.
        pid: u32,
        /// How long Lifeboat waited.
        seconds: u64,
    },
    /// A QMP exchange with a known QEMU failed.
    #[error("QMP {} (QEMU pid {pid}): {source}", socket.display())]
    QmpOf {
        /// The QMP socket.
        socket: PathBuf,
        /// QEMU's pid.
        pid: u32,
        /// Why.
        source: std::io::Error,
    },
    /// QEMU answered `system_powerdown` with an error.
    #[error("QEMU (pid {pid}) refused system_powerdown: {reply}")]
    PowerdownRefused {
        /// QEMU's pid.
        pid: u32,
        /// Its reply.
        reply: String,
    },
    /// Waiting on the pidfd failed.
    #[error("waiting for QEMU (pid {pid}) to exit: {source}")]
    Wait {
        /// QEMU's pid.
        pid: u32,
        /// Why.
        source: std::io::Error,
    },
    /// QEMU reported a shutdown and did not exit.
    #[error(
        "QEMU (pid {pid}) still runs {seconds} s after system_powerdown, although it reported a shutdown (SHUTDOWN \
         event, reason {reason}) {after:.1} s after it (started with -no-shutdown? then quit it over QMP)"
    )]
    NoExitAfterShutdown {
        /// QEMU's pid.
        pid: u32,
        /// The timeout, seconds.
        seconds: u64,
        /// The SHUTDOWN event's reason.
        reason: String,
        /// Seconds from the button to the event.
        after: f64,
    },
    /// The guest did not power off in time.
    #[error(
        "the VM did not power off within {seconds} s of system_powerdown: QEMU (pid {pid}) still runs (does the guest \
         handle the ACPI power button?)"
    )]
    NoPowerOff {
        /// QEMU's pid.
        pid: u32,
        /// The timeout, seconds.
        seconds: u64,
    },
}
