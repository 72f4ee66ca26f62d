//! Group cuts: the disks of one VM (or of every VM in one consistency
//! group) cut together, so their points are consistent with each other.
//!
//! Each member disk's cycle runs on its own thread with a [`Member`] hook.
//! At the cut the members meet three times ([`Phase`]): all have
//! [`Phase::Arrived`] (each may have spent a while on vault I/O; no write is
//! held yet), each has [`Phase::Held`] its disk's new writes, each has
//! [`Phase::Cut`]. Only between the first and the last meeting are writes
//! held, and only local work happens there (a flag, a bit move), so the
//! VM's writes pause for microseconds. A member that does not arrive within
//! the timeout (its cycle failed early, or is slow) breaks the round: every
//! member then cuts on its own, its point is not marked as part of a group,
//! and no write is held. A write that started after any member's cut cannot
//! be in another member's point: every disk's writes were held before the
//! first cut.
//!
//! The meeting itself is a plain state machine ([`Meeting`]), so the
//! simulation checks it without threads; [`Round`] puts it behind a mutex
//! and a condition variable with a deadline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use disk_format::{CutGroup, Keys, RootExtension};
use shipper::{CutHook, HookError};

/// The meetings of a round, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The member reached the cut.
    Arrived,
    /// The member holds its disk's new writes.
    Held,
    /// The member has cut.
    Cut,
}

/// What a member waiting at a meeting does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Every member is there: go on.
    Open,
    /// Someone is missing: keep waiting (until the deadline).
    Wait,
    /// The round broke: every member cuts on its own.
    Broken,
}

/// Who has reached which meeting of one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meeting {
    members: usize,
    arrived: usize,
    held: usize,
    cut: usize,
    broken: bool,
}

impl Meeting {
    /// A round of `members` disks, nobody there yet.
    pub fn new(members: usize) -> Meeting {
        Meeting { members, arrived: 0, held: 0, cut: 0, broken: false }
    }

    fn count(&mut self, phase: Phase) -> &mut usize {
        match phase {
            Phase::Arrived => &mut self.arrived,
            Phase::Held => &mut self.held,
            Phase::Cut => &mut self.cut,
        }
    }

    /// A member reaches `phase`.
    pub fn arrive(&mut self, phase: Phase) -> Gate {
        *self.count(phase) += 1;
        self.gate(phase)
    }

    /// Where a member waiting at `phase` stands.
    pub fn gate(&mut self, phase: Phase) -> Gate {
        if self.broken {
            Gate::Broken
        } else if *self.count(phase) >= self.members {
            Gate::Open
        } else {
            Gate::Wait
        }
    }

    /// A waiting member gives up (its deadline passed, or the agent
    /// stops): the round is broken for everyone.
    pub fn give_up(&mut self) {
        self.broken = true;
    }

    /// Whether the round broke.
    pub fn broken(&self) -> bool {
        self.broken
    }
}

/// One group cut, shared by its members' threads.
#[derive(Debug)]
pub struct Round<'a> {
    id: [u8; 16],
    members: usize,
    timeout: Duration,
    /// The agent stopping breaks the round at once.
    cancel: Option<&'a AtomicBool>,
    meeting: Mutex<Meeting>,
    wake: Condvar,
}

impl<'a> Round<'a> {
    /// A round of `members` disks with a random group id; a member waits at
    /// most `timeout` at each meeting.
    pub fn new(
        members: usize,
        timeout: Duration,
        cancel: Option<&'a AtomicBool>,
    ) -> Result<Round<'a>, getrandom::Error> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id)?;
        Ok(Round { id, members, timeout, cancel, meeting: Mutex::new(Meeting::new(members)), wake: Condvar::new() })
    }

    /// How many disks the round cuts.
    pub fn members(&self) -> usize {
        self.members
    }

    /// Arrives at `phase` and waits for every member; false if the round
    /// broke (someone was too late), for everyone.
    pub fn meet(&self, phase: Phase) -> bool {
        let deadline = Instant::now() + self.timeout;
        let mut m = self.meeting.lock().unwrap_or_else(PoisonError::into_inner);
        let mut gate = m.arrive(phase);
        self.wake.notify_all();
        loop {
            match gate {
                Gate::Open => return true,
                Gate::Broken => return false,
                Gate::Wait => {}
            }
            let now = Instant::now();
            if now >= deadline || self.cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
                m.give_up();
                self.wake.notify_all();
                return false;
            }
            // Woken by every arrival; the nap bounds how late a cancel is seen.
            let nap = (deadline - now).min(Duration::from_millis(100));
            m = self.wake.wait_timeout(m, nap).unwrap_or_else(PoisonError::into_inner).0;
            gate = m.gate(phase);
        }
    }
}

/// What a member holds during the cut: its disk's new writes.
pub trait HoldWrites: Sync {
    /// New writes wait until [`HoldWrites::release_writes`].
    fn hold_writes(&self);
    /// Held writes go on.
    fn release_writes(&self);
}

impl HoldWrites for filter::Disk {
    fn hold_writes(&self) {
        filter::Disk::hold_writes(self);
    }

    fn release_writes(&self) {
        filter::Disk::release_writes(self);
    }
}

/// One member disk's part in a round (a [`CutHook`]).
pub struct Member<'a> {
    round: &'a Round<'a>,
    disk: &'a dyn HoldWrites,
    name: &'a str,
    /// The VM's app-consistency hooks, run by one member of each VM.
    app: Option<Box<dyn CutHook + 'a>>,
    /// The VM definition to seal into the root.
    definition: Option<Vec<u8>>,
    /// The audit log's head for the root to commit to.
    audit_head: Option<disk_format::AuditHead>,
    keys: &'a Keys,
    grouped: Mutex<Option<bool>>,
    held: Mutex<bool>,
}

/// What a member seals into its point's root besides the group id.
pub struct Sealed<'a> {
    /// The VM definition, if the disk belongs to a VM.
    pub definition: Option<Vec<u8>>,
    /// The audit log's head.
    pub audit_head: Option<disk_format::AuditHead>,
    /// The key that seals the root extension.
    pub keys: &'a Keys,
}

impl<'a> Member<'a> {
    /// Disk `name`'s part in `round`; `app`: the VM's quiescing, if this
    /// disk carries it.
    pub fn new(
        round: &'a Round<'a>,
        disk: &'a dyn HoldWrites,
        name: &'a str,
        app: Option<Box<dyn CutHook + 'a>>,
        sealed: Sealed<'a>,
    ) -> Member<'a> {
        Member {
            round,
            disk,
            name,
            app,
            definition: sealed.definition,
            audit_head: sealed.audit_head,
            keys: sealed.keys,
            grouped: Mutex::new(None),
            held: Mutex::new(false),
        }
    }

    fn grouped(&self) -> bool {
        self.grouped.lock().unwrap_or_else(PoisonError::into_inner).unwrap_or(false)
    }
}

impl CutHook for Member<'_> {
    fn before(&self) -> Result<(), HookError> {
        let app = self.app.as_ref().map_or(Ok(()), |a| a.before());
        let mut ok = self.round.meet(Phase::Arrived);
        if ok {
            self.disk.hold_writes();
            *self.held.lock().unwrap_or_else(PoisonError::into_inner) = true;
            ok = self.round.meet(Phase::Held);
        }
        if !ok {
            tracing::info!(
                "lifeboat: warning: {}: not every disk of its group reached the cut within {} s; this point is cut \
                 on its own (each disk crash-consistent, the set not)",
                self.name,
                self.round.timeout.as_secs()
            );
        }
        *self.grouped.lock().unwrap_or_else(PoisonError::into_inner) = Some(ok);
        app
    }

    fn after(&self) -> Result<(), HookError> {
        if self.grouped() {
            // Every member has cut (or gave up waiting): writes may go on.
            let _ = self.round.meet(Phase::Cut);
        }
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if *held {
            self.disk.release_writes();
            *held = false;
        }
        self.app.as_ref().map_or(Ok(()), |a| a.after())
    }

    fn app_consistent(&self) -> bool {
        self.app.is_some()
    }

    fn root_extension(&self) -> Option<Vec<u8>> {
        let members = u32::try_from(self.round.members).ok()?;
        let ext = RootExtension {
            vm_definition: self.definition.clone(),
            cut_group: self.grouped().then_some(CutGroup { id: self.round.id, members }),
            audit_head: self.audit_head,
            // The shipper adds the vault's cipher.
            block_cipher: None,
        };
        ext.encode(self.keys).ok()
    }
}

impl Drop for Member<'_> {
    fn drop(&mut self) {
        // Never leave a disk's writes held, whatever happened to the cycle.
        if *self.held.lock().unwrap_or_else(PoisonError::into_inner) {
            self.disk.release_writes();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn a_meeting_opens_when_everyone_is_there_and_a_give_up_breaks_it_for_all() {
        let mut m = Meeting::new(3);
        assert_eq!(m.arrive(Phase::Arrived), Gate::Wait);
        assert_eq!(m.arrive(Phase::Arrived), Gate::Wait);
        assert_eq!(m.arrive(Phase::Arrived), Gate::Open);
        assert_eq!(m.gate(Phase::Arrived), Gate::Open, "the first two see it open too");
        assert_eq!(m.arrive(Phase::Held), Gate::Wait);
        m.give_up();
        assert_eq!(m.gate(Phase::Held), Gate::Broken);
        assert_eq!(m.arrive(Phase::Held), Gate::Broken, "a late member finds it broken, even as the last one");
        assert!(m.broken());
    }

    /// Counts holds and releases of a disk's writes.
    #[derive(Default)]
    struct Writes {
        held: AtomicUsize,
        released: AtomicUsize,
    }

    impl HoldWrites for Writes {
        fn hold_writes(&self) {
            self.held.fetch_add(1, Ordering::SeqCst);
        }
        fn release_writes(&self) {
            self.released.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn keys() -> Keys {
        disk_format::keys::MasterKey::from_bytes([7; 32]).keys()
    }

    #[test]
    fn members_that_all_arrive_hold_cut_together_and_release() {
        let keys = keys();
        let round = Round::new(2, Duration::from_secs(30), None).unwrap();
        let disks = [Writes::default(), Writes::default()];
        std::thread::scope(|s| {
            for (i, d) in disks.iter().enumerate() {
                let (round, keys) = (&round, &keys);
                s.spawn(move || {
                    let name = format!("d{i}");
                    let sealed = Sealed { definition: None, audit_head: None, keys };
                    let m = Member::new(round, d, &name, None, sealed);
                    m.before().unwrap();
                    assert_eq!(d.held.load(Ordering::SeqCst), 1, "writes are held across the cut");
                    m.after().unwrap();
                    let ext = RootExtension::decode(&m.root_extension().unwrap(), keys).unwrap();
                    assert_eq!(ext.cut_group.map(|g| (g.id, g.members)), Some((round.id, 2)));
                });
            }
        });
        for d in &disks {
            assert_eq!((d.held.load(Ordering::SeqCst), d.released.load(Ordering::SeqCst)), (1, 1));
        }
    }

    #[test]
    fn a_member_that_never_arrives_breaks_the_round_and_nobody_stays_held() {
        let keys = keys();
        let round = Round::new(2, Duration::from_millis(50), None).unwrap();
        let disk = Writes::default();
        let sealed = Sealed { definition: None, audit_head: None, keys: &keys };
        let m = Member::new(&round, &disk, "alone", None, sealed);
        m.before().unwrap();
        m.after().unwrap();
        assert_eq!(disk.held.load(Ordering::SeqCst), 0, "no write is held for a round that broke at arrival");
        let ext = RootExtension::decode(&m.root_extension().unwrap(), &keys).unwrap();
        assert!(ext.cut_group.is_none(), "a point cut on its own is not marked as part of a group");
    }

    #[test]
    fn a_stop_breaks_a_waiting_round_at_once() {
        let stop = AtomicBool::new(true);
        let round = Round::new(2, Duration::from_secs(600), Some(&stop)).unwrap();
        assert!(!round.meet(Phase::Arrived), "a stopping agent does not wait 10 minutes for a member");
    }

    #[test]
    fn a_member_dropped_between_hold_and_release_lets_writes_go() {
        let keys = keys();
        let round = Round::new(1, Duration::from_secs(5), None).unwrap();
        let disk = Writes::default();
        {
            let sealed = Sealed { definition: None, audit_head: None, keys: &keys };
            let m = Member::new(&round, &disk, "d", None, sealed);
            m.before().unwrap();
            assert_eq!(disk.held.load(Ordering::SeqCst), 1);
        } // the cycle failed at the cut: `after` never ran
        assert_eq!(disk.released.load(Ordering::SeqCst), 1, "the drop released the writes");
    }
}
