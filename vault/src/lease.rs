//! Leases: small objects ([`Kind::Lease`]) that say "this process is using
//! that, don't take it away", so that retention and garbage collection,
//! which delete, never race the processes that read or write.
//!
//! ```text
//! leases/point/DISK/SEQUENCE/TOKEN   a point being restored: prune keeps it
//! leases/cycle/DISK/TOKEN            a shipper cycle writing packs, pages, root
//! leases/gc/TOKEN                    a garbage collection deleting objects
//! ```
//!
//! `TOKEN` is 16 random hex digits, so every lease is its own object, and a
//! lease is created if absent ([`crate::Backend::create`]), so taking one
//! never overwrites another's, even between hosts sharing one bucket. A
//! lease that is ever rewritten (a renewal) goes through
//! [`crate::Backend::replace_if`] from the version its holder last wrote. A lease is removed when its
//! [`Hold`] is dropped.
//!
//! # Body (text, UTF-8)
//!
//! ```text
//! lifeboat lease v1
//! holder=<what holds it, e.g. "restore" (free text, one line)>
//! host=<hostname, for messages only>
//! machine=</etc/machine-id of the holder's host>
//! boot=</proc/sys/kernel/random/boot_id when it was taken>
//! pid=<the holder's process id>
//! start=<the process's start time, field 22 of /proc/PID/stat>
//! created_ns=<wall clock when taken, nanoseconds since the epoch; for messages>
//! ```
//!
//! # When is a lease stale?
//!
//! A holder that crashed leaves its lease behind. A lease is **stale** (and
//! may be ignored and removed) only when this host can prove its holder is
//! gone: the lease's `machine` is this host's machine id, and either its
//! `boot` is not this host's current boot id (the host rebooted since), or
//! no process `pid` exists, or the process `pid` has another start time (the
//! pid was reused). A lease from another host, a lease whose body does not
//! parse, or one this host cannot judge (no machine id, `/proc` unreadable)
//! is **live**: when unsure, keep. Such a lease is removed by the operator
//! ([`Vault::break_lease`]) once they know its holder is gone.
//!
//! A lease written by **this very process** (same machine, boot, pid and
//! start time) is live only while this process still holds it: a [`Hold`]
//! that was dropped, or a take whose put failed after the object landed,
//! may leave its object behind when the delete fails (a transient backend
//! error). Without this rule such a lease would look live for as long as the
//! process runs — in a long-running agent, one failed delete of a GC lease
//! would refuse every later cycle of every disk, and one of a cycle lease
//! every later GC, until a restart. The process keeps the names of the leases
//! it holds (a process-wide set), so it can tell.
//!
//! "This host" and "this process" are the vault's [`HostIdentity`]:
//! [`HostIdentity::current`] (read from the files above) unless a test set
//! another with [`Vault::with_host_identity`]. Whether process `pid` runs,
//! and since when, is always read from `/proc`.
//!
//! No timestamp is trusted for staleness: file times are not read at all
//! (a backend's mtime or atime says nothing reliable, see STYLE.md), and
//! `created_ns` is only shown in messages.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::backend::Kind;
use crate::error::VaultError;
use crate::store::{check_disk, root_name, Vault};

const MAGIC_LINE: &str = "lifeboat lease v1";

/// Names of the leases this process holds now: registered before the lease
/// is written, removed once its [`Hold`] is released or dropped. (Lease names
/// end in 64 random bits, so names from different vaults do not collide.)
static HELD: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

fn held() -> std::sync::MutexGuard<'static, BTreeSet<String>> {
    HELD.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether this process holds lease `name` now.
fn held_here(name: &str) -> bool {
    held().contains(name)
}

/// What a lease protects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    /// A point being restored (retention keeps it).
    Point {
        /// The disk.
        disk: String,
        /// The point's sequence.
        sequence: u64,
    },
    /// A shipper cycle of a disk (garbage collection waits for it).
    Cycle {
        /// The disk.
        disk: String,
    },
    /// A garbage collection (cycles wait for it).
    Gc,
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Purpose::Point { disk, sequence } => write!(f, "a restore of point {disk}/{sequence}"),
            Purpose::Cycle { disk } => write!(f, "a replication cycle of disk {disk}"),
            Purpose::Gc => f.write_str("a garbage collection"),
        }
    }
}

/// Who holds a lease, as its body says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// What holds it (e.g. `restore`, `shipper`).
    pub holder: String,
    /// The holder's hostname (messages only).
    pub host: String,
    /// The holder's host's machine id.
    pub machine: String,
    /// The holder's host's boot id when it took the lease.
    pub boot: String,
    /// The holder's process id.
    pub pid: u32,
    /// The holder's process start time (clock ticks since boot).
    pub start: u64,
    /// When it was taken (wall clock, for messages only).
    pub created_ns: u64,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (pid {} on host {})", self.holder, self.pid, self.host)
    }
}

/// Whether a lease's holder is known to be gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// Its holder may still be running: respect it.
    Live,
    /// Its holder is provably gone (why): it may be removed.
    Stale(String),
}

/// A lease found in the vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The object name (kind [`Kind::Lease`]).
    pub name: String,
    /// What it protects (from its name).
    pub purpose: Purpose,
    /// Who holds it, or why the body could not be read (then it is live).
    pub holder: Result<Holder, String>,
    /// Whether its holder is known to be gone.
    pub liveness: Liveness,
}

impl LeaseInfo {
    /// Whether it must be respected.
    pub fn is_live(&self) -> bool {
        self.liveness == Liveness::Live
    }

    /// "leases/NAME, held by …" for messages.
    pub fn describe(&self) -> String {
        match &self.holder {
            Ok(h) => format!("leases/{} ({}), held by {h}", self.name, self.purpose),
            Err(why) => format!("leases/{} ({}), unreadable: {why}", self.name, self.purpose),
        }
    }
}

/// A lease this process holds; removed from the vault when dropped.
#[must_use = "the lease is removed as soon as the Hold is dropped"]
pub struct Hold<'v> {
    vault: &'v Vault,
    name: String,
    released: bool,
}

impl fmt::Debug for Hold<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hold(leases/{})", self.name)
    }
}

impl Hold<'_> {
    /// The lease's object name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Removes the lease now, reporting a failure (dropping ignores it). A
    /// lease left behind by a failed delete is stale from then on: this
    /// process no longer holds it (see the module documentation).
    pub fn release(mut self) -> Result<(), VaultError> {
        self.released = true;
        let removed = self.vault.backend().remove(Kind::Lease, &self.name);
        // Removed or not, this process no longer holds it: a leftover object
        // is stale from now on (see the module documentation).
        held().remove(&self.name);
        removed
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        if !self.released {
            let _ = self.vault.backend().remove(Kind::Lease, &self.name);
            held().remove(&self.name);
        }
    }
}

/// Who "this host" and "this process" are, as a lease records them and as
/// leases are judged. Production code uses [`HostIdentity::current`] (what a
/// [`Vault`] uses unless told otherwise); a test gives a vault another one
/// ([`Vault::with_host_identity`]) to play this host, another host, a
/// rebooted host or a crashed process without depending on the machine it
/// runs on (e.g. one without `/etc/machine-id`). Whether a process `pid`
/// runs, and since when, is always read from `/proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostIdentity {
    /// The hostname (messages only).
    pub host: String,
    /// The machine id (`/etc/machine-id`); `None`: leases cannot be judged.
    pub machine: Option<String>,
    /// The boot id (`/proc/sys/kernel/random/boot_id`); `None`: leases cannot be judged.
    pub boot: Option<String>,
    /// The process id of the lease holder.
    pub pid: u32,
    /// That process's start time (field 22 of `/proc/PID/stat`).
    pub start: Option<u64>,
}

/// Start time (field 22) of process `pid`, or `None` if it does not exist or
/// cannot be read. The command name (field 2) may hold spaces and ')', so
/// fields are counted after its last ')'.
fn process_start(pid: u32) -> Option<u64> {
    system::process::stat(pid).map(|(_, start)| start)
}

impl HostIdentity {
    /// This host and this process, read from the machine.
    pub fn current() -> HostIdentity {
        let pid = std::process::id();
        HostIdentity {
            host: system::host::hostname(),
            machine: system::host::machine_id(),
            boot: system::host::boot_id(),
            pid,
            start: process_start(pid),
        }
    }
}

fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn encode(holder: &str, me: &HostIdentity) -> String {
    let created_ns = system::clock::now_ns();
    format!(
        "{MAGIC_LINE}\nholder={}\nhost={}\nmachine={}\nboot={}\npid={}\nstart={}\ncreated_ns={created_ns}\n",
        one_line(holder),
        one_line(&me.host),
        me.machine.as_deref().unwrap_or(""),
        me.boot.as_deref().unwrap_or(""),
        me.pid,
        me.start.unwrap_or(0),
    )
}

fn decode(body: &[u8]) -> Result<Holder, String> {
    let text = std::str::from_utf8(body).map_err(|_| "not UTF-8".to_string())?;
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC_LINE) {
        return Err(format!("does not start with {MAGIC_LINE:?}"));
    }
    let mut h = Holder {
        holder: String::new(),
        host: String::new(),
        machine: String::new(),
        boot: String::new(),
        pid: 0,
        start: 0,
        created_ns: 0,
    };
    let mut seen = 0u8;
    for line in lines {
        let (k, v) = line.split_once('=').ok_or_else(|| format!("line {line:?} is not KEY=VALUE"))?;
        let num = |v: &str| v.parse::<u64>().map_err(|_| format!("{k}={v:?} is not a number"));
        match k {
            "holder" => h.holder = v.to_string(),
            "host" => h.host = v.to_string(),
            "machine" => h.machine = v.to_string(),
            "boot" => h.boot = v.to_string(),
            "pid" => h.pid = u32::try_from(num(v)?).map_err(|_| format!("pid={v} is out of range"))?,
            "start" => h.start = num(v)?,
            "created_ns" => h.created_ns = num(v)?,
            _ => continue, // a later version may add fields
        }
        seen += 1;
    }
    if seen < 7 {
        return Err("fields are missing".into());
    }
    Ok(h)
}

/// Whether `h`'s process is provably gone, judged from this host.
/// `held_here`: this process holds the lease now (only consulted when the
/// lease names this very process).
fn liveness(h: &Holder, me: &HostIdentity, held_here: bool) -> Liveness {
    let Some(machine) = &me.machine else { return Liveness::Live };
    if h.machine.is_empty() || h.machine != *machine {
        return Liveness::Live; // another host (or one that cannot say): cannot tell
    }
    let Some(boot) = &me.boot else { return Liveness::Live };
    if !h.boot.is_empty() && h.boot != *boot {
        return Liveness::Stale(format!("host {} rebooted since pid {} took it", h.host, h.pid));
    }
    if h.boot.is_empty() || h.start == 0 {
        return Liveness::Live;
    }
    if std::fs::metadata("/proc/self/stat").is_err() {
        return Liveness::Live; // no /proc: cannot tell
    }
    match process_start(h.pid) {
        None => Liveness::Stale(format!("process {} no longer runs on host {}", h.pid, h.host)),
        Some(start) if start != h.start => {
            Liveness::Stale(format!("process {} on host {} is another process now (pid reused)", h.pid, h.host))
        }
        Some(_) if h.pid == me.pid && !held_here => Liveness::Stale(format!(
            "process {} on host {} (this process) no longer holds it; its release failed",
            h.pid, h.host
        )),
        Some(_) => Liveness::Live,
    }
}

fn parse_name(name: &str) -> Option<Purpose> {
    let parts: Vec<&str> = name.split('/').collect();
    match parts.as_slice() {
        ["point", disk, seq, _token] if seq.len() == 20 => {
            Some(Purpose::Point { disk: (*disk).to_string(), sequence: seq.parse().ok()? })
        }
        ["cycle", disk, _token] => Some(Purpose::Cycle { disk: (*disk).to_string() }),
        ["gc", _token] => Some(Purpose::Gc),
        _ => None,
    }
}

fn token() -> Result<String, VaultError> {
    let mut t = [0u8; 8];
    getrandom::fill(&mut t).map_err(|e| VaultError::Io {
        what: "drawing a random lease name for",
        path: "leases".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(t.iter().map(|b| format!("{b:02x}")).collect())
}

impl Vault {
    /// Writes a new lease under `prefix` (a `/`-terminated lease name prefix).
    fn take_lease(&self, prefix: &str, holder: &str) -> Result<Hold<'_>, VaultError> {
        let name = format!("{prefix}{}", token()?);
        // Registered before it is written, so that no lister in this process
        // ever judges it stale while it is being taken.
        held().insert(name.clone());
        // Created, never overwritten: a lease is its holder's alone (a token
        // drawn twice is refused, not shared).
        if let Err(e) = self.backend().create(Kind::Lease, &name, encode(holder, &self.host_identity()).as_bytes()) {
            // The object may have landed all the same: unregistered, it is stale.
            held().remove(&name);
            return Err(e);
        }
        Ok(Hold { vault: self, name, released: false })
    }

    /// Every lease whose name starts with `prefix`, with its liveness judged
    /// from this host. A lease that vanishes while listed is skipped.
    pub fn leases(&self, prefix: &str) -> Result<Vec<LeaseInfo>, VaultError> {
        let me = self.host_identity();
        let mut out = Vec::new();
        for name in self.backend().list(Kind::Lease, prefix)? {
            let Some(purpose) = parse_name(&name) else {
                // Not a name this version writes (a later version's?): when
                // unsure, keep — it is live and blocks garbage collection
                // (under `gc/`, cycles too).
                out.push(LeaseInfo {
                    name: name.clone(),
                    purpose: Purpose::Gc,
                    holder: Err("not a lease name Lifeboat writes".into()),
                    liveness: Liveness::Live,
                });
                continue;
            };
            let body = match self.backend().get(Kind::Lease, &name) {
                Err(VaultError::NotFound { .. }) => continue,
                other => other?,
            };
            let holder = decode(&body);
            let liveness = match &holder {
                Ok(h) => liveness(h, &me, held_here(&name)),
                Err(_) => Liveness::Live,
            };
            out.push(LeaseInfo { name, purpose, holder, liveness });
        }
        Ok(out)
    }

    /// Removes lease `name` whatever its liveness: for an operator who knows
    /// its holder is gone (e.g. a crashed restore on another host).
    pub fn break_lease(&self, name: &str) -> Result<(), VaultError> {
        self.backend().delete(Kind::Lease, name)
    }

    /// Removes the stale leases among `leases`; returns their names. A lease
    /// that vanished meanwhile counts as removed.
    pub(crate) fn remove_stale(&self, leases: &[LeaseInfo]) -> Result<Vec<String>, VaultError> {
        let mut removed = Vec::new();
        for l in leases.iter().filter(|l| !l.is_live()) {
            match self.backend().delete(Kind::Lease, &l.name) {
                Ok(()) | Err(VaultError::NotFound { .. }) => removed.push(l.name.clone()),
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }

    /// Holds point `sequence` of `disk` for `holder` (e.g. "restore"): until
    /// the returned [`Hold`] is dropped, [`Vault::prune`] keeps the point and
    /// [`Vault::gc`] keeps what it references. The lease is written first and
    /// the point's root checked after, so either the point is gone
    /// ([`VaultError::NoSuchPoint`]) or every prune that lists leases from
    /// now on sees the hold.
    pub fn hold(&self, disk: &str, sequence: u64, holder: &str) -> Result<Hold<'_>, VaultError> {
        check_disk(disk)?;
        let hold = self.take_lease(&format!("point/{}/", root_name(disk, sequence)), holder)?;
        if self.backend().size(Kind::Root, &root_name(disk, sequence))?.is_none() {
            return Err(VaultError::NoSuchPoint {
                disk: disk.to_string(),
                sequence,
                location: self.backend().location(),
            });
        }
        Ok(hold)
    }

    /// Announces a shipper cycle of `disk`: call it before reading the latest
    /// root or building the block index, and keep the [`Hold`] until the
    /// root is written (or the cycle failed). While it is held,
    /// [`Vault::gc`] refuses to run; if a garbage collection is running, this
    /// refuses instead ([`VaultError::Busy`]) and the cycle should be retried
    /// later (its blocks stay dirty: nothing is lost). See `gc.rs` for why.
    pub fn begin_cycle(&self, disk: &str) -> Result<Hold<'_>, VaultError> {
        check_disk(disk)?;
        let hold = self.take_lease(&format!("cycle/{disk}/"), "shipper")?;
        // Written first, then look: a GC that started before our lease was
        // visible has its own lease visible to us now (it wrote it before
        // looking for ours).
        if let Some(gc) = self.leases("gc/")?.into_iter().find(LeaseInfo::is_live) {
            return Err(VaultError::Busy {
                location: self.backend().location(),
                action: format!("a replication cycle of disk {disk}"),
                lease: gc.describe(),
                next: "its changes stay marked dirty and nothing is lost; the agent runs the cycle again within \
                       seconds (its retry delay), `ship --once` when run again"
                    .into(),
            });
        }
        Ok(hold)
    }

    /// Takes the garbage-collection lease; refuses while any live cycle
    /// lease or other garbage collection exists.
    fn begin_gc(&self) -> Result<Hold<'_>, VaultError> {
        let hold = self.take_lease("gc/", "gc")?;
        let leases = self.leases("")?;
        if let Some(l) = leases.iter().find(|l| l.name != hold.name && blocks_gc(l)) {
            return Err(VaultError::Busy {
                location: self.backend().location(),
                action: "garbage collection".into(),
                lease: l.describe(),
                next: "run it again when that is over; if its holder is gone (crashed on another host), remove \
                       the lease with `lifeboat vault break-lease`"
                    .into(),
            });
        }
        Ok(hold)
    }

    /// Takes the garbage-collection lease like [`Vault::begin_gc`], but while
    /// a cycle (or another collection) holds the vault, waits up to `wait`
    /// for it to end, looking once every `poll`. `waiting` hears each
    /// refusal that starts a wait (a new holder, not every look).
    ///
    /// While it waits it only *looks* (lists leases, writes none), and it
    /// takes its lease only when it sees none in its way, so a waiting
    /// collection refuses a cycle only in the instant of the handshake — the
    /// same race any collection has. On a vault that cycles continuously
    /// (a 30 s interval, cycles of a few seconds) the wait ends at the next
    /// gap between cycles.
    pub(crate) fn begin_gc_within(
        &self,
        wait: Duration,
        poll: Duration,
        waiting: &mut dyn FnMut(&VaultError),
    ) -> Result<Hold<'_>, VaultError> {
        let deadline = Instant::now() + wait;
        loop {
            let busy = match self.begin_gc() {
                Err(e @ VaultError::Busy { .. }) => e,
                other => return other,
            };
            if Instant::now() >= deadline {
                return Err(match busy {
                    VaultError::Busy { location, action, lease, next } if !wait.is_zero() => VaultError::Busy {
                        location,
                        action: format!("{action} (after waiting {}s)", wait.as_secs()),
                        lease,
                        next,
                    },
                    e => e,
                });
            }
            waiting(&busy);
            while Instant::now() < deadline {
                std::thread::sleep(poll.min(deadline.saturating_duration_since(Instant::now())));
                if !self.leases("")?.iter().any(blocks_gc) {
                    break;
                }
            }
        }
    }
}

/// A live cycle's lease, or another collection's: garbage collection waits.
fn blocks_gc(l: &LeaseInfo) -> bool {
    l.is_live() && matches!(l.purpose, Purpose::Cycle { .. } | Purpose::Gc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process on a host of the test's own making: nothing here depends
    /// on the machine having a machine id.
    fn test_host() -> HostIdentity {
        HostIdentity {
            host: "here".into(),
            machine: Some("test-machine-0123456789abcdef".into()),
            boot: Some("test-boot-1".into()),
            ..HostIdentity::current()
        }
    }

    #[test]
    fn body_round_trips_and_this_process_is_live() {
        let me = test_host();
        let h = decode(encode("restore\nx", &me).as_bytes()).unwrap();
        assert_eq!(h.holder, "restore x");
        assert_eq!(h.pid, std::process::id());
        assert_eq!(liveness(&h, &me, true), Liveness::Live);
        assert!(decode(b"lifeboat lease v1\nholder=x\n").is_err());
        assert!(decode(b"garbage").is_err());
    }

    #[test]
    fn dead_process_reboot_and_reused_pid_are_stale_other_hosts_are_not() {
        let me = test_host();
        assert!(me.start.is_some(), "/proc/self/stat cannot be read: leases are judged from Linux's /proc");
        let mut h = decode(encode("restore", &me).as_bytes()).unwrap();
        h.pid = u32::MAX - 1; // no such process
        assert!(matches!(liveness(&h, &me, true), Liveness::Stale(_)));
        let mut h2 = decode(encode("restore", &me).as_bytes()).unwrap();
        h2.start += 1;
        assert!(matches!(liveness(&h2, &me, true), Liveness::Stale(_)));
        let mut h3 = decode(encode("restore", &me).as_bytes()).unwrap();
        h3.boot = "another-boot".into();
        assert!(matches!(liveness(&h3, &me, true), Liveness::Stale(_)));
        let mut h4 = h.clone();
        h4.machine = "another-machine".into();
        assert_eq!(liveness(&h4, &me, true), Liveness::Live);
        // A host that cannot say who it is judges nothing: every lease is live.
        let blind = HostIdentity { machine: None, ..test_host() };
        assert_eq!(liveness(&h, &blind, true), Liveness::Live);
        // This very process wrote it but no longer holds it (its delete failed).
        let mine = decode(encode("shipper", &me).as_bytes()).unwrap();
        assert!(matches!(liveness(&mine, &me, false), Liveness::Stale(_)));
        assert_eq!(liveness(&mine, &me, true), Liveness::Live);
    }

    #[test]
    fn names_parse() {
        assert_eq!(
            parse_name("point/web/00000000000000000007/0123456789abcdef"),
            Some(Purpose::Point { disk: "web".into(), sequence: 7 })
        );
        assert_eq!(parse_name("cycle/web/0123"), Some(Purpose::Cycle { disk: "web".into() }));
        assert_eq!(parse_name("gc/0123"), Some(Purpose::Gc));
        assert_eq!(parse_name("other"), None);
    }
}
