//! Group cuts: the disks of one VM (or of every VM in one consistency
//! group) cut together, so their points are consistent with each other.
//!
//! Each member disk's cycle runs on its own thread with a [`Member`] hook.
//! At the cut, the members meet three times: (1) all have arrived (each may
//! have spent a while on vault I/O; no write is held yet), (2) each has
//! held its disk's new writes, (3) each has cut. Only between (1) and (3)
//! are writes held, and only local work happens there (a flag, a bit move),
//! so the VM's writes pause for microseconds. A member that does not
//! arrive within the timeout (its cycle failed early, or is slow) breaks
//! the round: every member then cuts on its own, its point is not marked
//! as part of a group, and no write is held. A write that started after
//! any member's cut cannot be in another member's point: every disk's
//! writes were held before the first cut.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use disk_format::{CutGroup, Keys, RootExtension};
use filter::Disk;

/// One group cut, shared by its members.
pub struct Round<'a> {
    id: [u8; 16],
    members: usize,
    timeout: Duration,
    /// The agent stopping breaks the round at once.
    cancel: Option<&'a AtomicBool>,
    state: Mutex<(usize, usize, usize, bool)>,
    wake: Condvar,
}

impl<'a> Round<'a> {
    pub fn new(members: usize, timeout: Duration, cancel: Option<&'a AtomicBool>) -> anyhow::Result<Round<'a>> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|e| anyhow::anyhow!("random group id: {e}"))?;
        Ok(Round { id, members, timeout, cancel, state: Mutex::new((0, 0, 0, false)), wake: Condvar::new() })
    }

    /// Arrives at meeting `phase` (0, 1, 2) and waits for every member;
    /// false if the round broke (someone was too late), for everyone.
    fn meet(&self, phase: usize) -> bool {
        let deadline = Instant::now() + self.timeout;
        let mut g = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match phase {
            0 => g.0 += 1,
            1 => g.1 += 1,
            _ => g.2 += 1,
        }
        self.wake.notify_all();
        loop {
            let count = match phase {
                0 => g.0,
                1 => g.1,
                _ => g.2,
            };
            if g.3 {
                return false;
            }
            if count >= self.members {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || self.cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
                g.3 = true;
                self.wake.notify_all();
                return false;
            }
            let nap = (deadline - now).min(Duration::from_millis(100));
            g = self.wake.wait_timeout(g, nap).unwrap_or_else(std::sync::PoisonError::into_inner).0;
        }
    }
}

/// One member disk's part in a round (a `shipper::CutHook`).
pub struct Member<'a> {
    pub round: &'a Round<'a>,
    pub disk: &'a Arc<Disk>,
    pub name: &'a str,
    /// The VM's app-consistency hooks, run by one member of each VM.
    pub app: Option<crate::app_hooks::Hooks>,
    /// The VM definition to seal into the root.
    pub definition: Option<Vec<u8>>,
    /// The audit log's head for the root to commit to.
    pub audit_head: Option<disk_format::AuditHead>,
    pub keys: &'a Keys,
    grouped: Mutex<Option<bool>>,
    held: Mutex<bool>,
}

impl<'a> Member<'a> {
    pub fn new(
        round: &'a Round<'a>,
        disk: &'a Arc<Disk>,
        name: &'a str,
        app: Option<crate::app_hooks::Hooks>,
        definition: Option<Vec<u8>>,
        audit_head: Option<disk_format::AuditHead>,
        keys: &'a Keys,
    ) -> Member<'a> {
        Member {
            round,
            disk,
            name,
            app,
            definition,
            audit_head,
            keys,
            grouped: Mutex::new(None),
            held: Mutex::new(false),
        }
    }
}

impl shipper::CutHook for Member<'_> {
    fn before(&self) -> Result<(), String> {
        let app = self.app.as_ref().map_or(Ok(()), shipper::CutHook::before);
        let mut ok = self.round.meet(0);
        if ok {
            self.disk.hold_writes();
            *self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = true;
            ok = self.round.meet(1);
        }
        if !ok {
            filter::log_line!(
                "lifeboat: warning: {}: not every disk of its group reached the cut within {} s; this point is cut \
                 on its own (each disk crash-consistent, the set not)",
                self.name,
                self.round.timeout.as_secs()
            );
        }
        *self.grouped.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(ok);
        app
    }

    fn after(&self) -> Result<(), String> {
        let grouped = self.grouped.lock().unwrap_or_else(std::sync::PoisonError::into_inner).unwrap_or(false);
        if grouped {
            // Every member has cut (or gave up waiting): writes may go on.
            let _ = self.round.meet(2);
        }
        let mut held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *held {
            self.disk.release_writes();
            *held = false;
        }
        self.app.as_ref().map_or(Ok(()), shipper::CutHook::after)
    }

    fn app_consistent(&self) -> bool {
        self.app.is_some()
    }

    fn root_extension(&self) -> Option<Vec<u8>> {
        let grouped = self.grouped.lock().unwrap_or_else(std::sync::PoisonError::into_inner).unwrap_or(false);
        let members = u32::try_from(self.round.members).ok()?;
        let ext = RootExtension {
            vm_definition: self.definition.clone(),
            cut_group: grouped.then_some(CutGroup { id: self.round.id, members }),
            audit_head: self.audit_head,
        };
        ext.encode(self.keys).ok()
    }
}

impl Drop for Member<'_> {
    fn drop(&mut self) {
        // Never leave a disk's writes held, whatever happened to the cycle.
        if *self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner) {
            self.disk.release_writes();
        }
    }
}
