//! The source side of a planned failover, run where the VM's disks are
//! protected: refuse before touching anything if the VM has another
//! failover going, power the source VM off (or take the word of the person
//! running it that it is off), and ship a final cycle of every disk. The
//! failover then boots the first disk's final point ([`crate::failover`]),
//! with the steps done here as its prelude.
//!
//! Written against [`HostSide`] like [`crate::failback`]. A failure
//! half-way leaves the disks shipped so far shipped and no job: running the
//! command again stops nothing twice (the VM is off) and ships each disk's
//! final cycle again, which sends only what the vault lacks.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::RecoveryError;
use crate::failover::{now_ns, JobState, Site};
use crate::host::{HostError, HostSide};
use crate::step_log::{Step, StepName};

/// How the source VM is stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceStop {
    /// Power it off through its QMP socket (QEMU `-qmp unix:PATH`), waiting
    /// up to the timeout for QEMU's process to be gone.
    Qmp {
        /// The socket.
        socket: PathBuf,
        /// How long the VM may take.
        timeout: Duration,
    },
    /// The person running the failover has shut it down.
    AlreadyStopped,
    /// Neither was said: refused before anything is done.
    Unknown,
}

/// Why the source side stopped. Nothing is booted; what was shipped stays.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlannedError {
    /// The VM already has a failover at this site.
    #[error("VM {vm:?} already has a {kind} failover here ({state:?}); `lifeboat failover status {vm}` shows it")]
    FailoverExists {
        /// The VM.
        vm: String,
        /// That failover's kind.
        kind: &'static str,
        /// Its state.
        state: JobState,
    },
    /// The VM is not defined on this host.
    #[error(
        "--planned runs where VM {vm:?} is defined (`lifeboat vm define`); it is not in {}",
        home.display()
    )]
    NotDefinedHere {
        /// The VM.
        vm: String,
        /// The home it was looked for in.
        home: PathBuf,
    },
    /// The source VM was neither to be powered off nor said to be off.
    #[error(
        "--planned must know the source VM is off: pass --source-qmp SOCKET (Lifeboat powers it off) or, once you \
         have shut it down yourself, --source-stopped"
    )]
    SourceStateUnknown,
    /// Powering the source VM off failed; nothing was shipped or booted.
    #[error("{source}; nothing was shipped or booted: shut the VM down yourself and run again with --source-stopped")]
    PowerOff {
        /// Why.
        source: RecoveryError,
    },
    /// A final cycle failed.
    #[error("the final cycle of disk {disk:?} of VM {vm:?} (the source VM is off; run again to retry)")]
    FinalCycle {
        /// The VM.
        vm: String,
        /// The disk.
        disk: String,
        /// Why.
        source: HostError,
    },
    /// The VM's definition lists no disk.
    #[error("VM {vm:?} has no disk to fail over")]
    NoDisk {
        /// The VM.
        vm: String,
    },
    /// An audit record could not be written: the action must not pass
    /// unrecorded.
    #[error("{0}")]
    Audit(String),
    /// The failover's job could not be read.
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    /// The host side failed (its message names what and why).
    #[error(transparent)]
    Host(HostError),
}

/// Runs the source side of VM `vm`'s planned failover (see the module
/// documentation), recording `failover.planned.source-stopped` and
/// `failover.planned.final-cycle` through `audit` and appending its steps,
/// done, to `prelude`. Returns the final point of the first disk.
pub fn source_side<H: HostSide>(
    site: &Site,
    host: &H,
    vm: &str,
    stop: &SourceStop,
    prelude: &mut Vec<Step>,
    audit: &mut dyn FnMut(&str, Value) -> Result<(), String>,
) -> Result<u64, PlannedError> {
    if let Some(j) = site.load(vm)? {
        return Err(PlannedError::FailoverExists { vm: vm.to_string(), kind: j.kind.as_str(), state: j.state });
    }
    let def = host
        .vm(vm)
        .map_err(PlannedError::Host)?
        .ok_or_else(|| PlannedError::NotDefinedHere { vm: vm.to_string(), home: host.home().to_path_buf() })?;
    let started = now_ns();
    let (how, clean) = match stop {
        SourceStop::Qmp { socket, timeout } => {
            host.say(&format!("[{vm}] stopping the source VM (QMP system_powerdown on {}) ...", socket.display()));
            let off = crate::launch::power_off(socket, *timeout).map_err(|source| PlannedError::PowerOff { source })?;
            if off.clean {
                host.say(&format!("[{vm}] {}", off.detail));
            } else {
                // The process is gone, so the disk is what it is: the final
                // cycle ships it as it stands, like any crash-consistent point.
                host.say(&format!(
                    "[{vm}] WARNING: {}. The source VM did NOT shut down cleanly: the final point is \
                     crash-consistent, not a clean shutdown; going on with the final cycle",
                    off.detail
                ));
            }
            (off.detail, Some(off.clean))
        }
        SourceStop::AlreadyStopped => ("stopped by the user (--source-stopped)".to_string(), None),
        SourceStop::Unknown => return Err(PlannedError::SourceStateUnknown),
    };
    audit("failover.planned.source-stopped", json!({ "vm": vm, "how": how, "clean_shutdown": clean }))
        .map_err(PlannedError::Audit)?;
    prelude.push(Step::done_since(StepName::StopSource, started, how));
    let mut first = None;
    for disk in &def.disks {
        let t = now_ns();
        host.say(&format!("[{vm}] final cycle of disk {disk} ..."));
        let r = host.run_cycle(disk).map_err(|source| PlannedError::FinalCycle {
            vm: vm.to_string(),
            disk: disk.clone(),
            source,
        })?;
        first.get_or_insert(r.sequence);
        prelude.push(Step::done_since(
            StepName::FinalCycle(disk.clone()),
            t,
            format!(
                "point {} committed: {} blocks read, {} new, {} bytes shipped",
                r.sequence, r.blocks_read, r.new_blocks, r.bytes_shipped
            ),
        ));
        host.say(&format!("[{vm}] final cycle of disk {disk} done: point {}", r.sequence));
    }
    let seq = first.ok_or_else(|| PlannedError::NoDisk { vm: vm.to_string() })?;
    audit("failover.planned.final-cycle", json!({ "vm": vm, "point": seq })).map_err(PlannedError::Audit)?;
    Ok(seq)
}
