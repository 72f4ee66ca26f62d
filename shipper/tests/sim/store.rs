//! The fake vault backend: objects in memory, one sorted map per kind, with
//! injected faults.
//!
//! It keeps the `vault::Backend` contract (vault/src/backend.rs): a put is
//! atomic (the object is whole or absent, never a part), a range past the end
//! is `ShortObject`, a missing object is `NotFound`, listings are sorted.
//! Faults: the Nth matching operation fails with an I/O error (for a put,
//! optionally after the object landed: the reply was lost), or the process
//! "crashes" there — that operation and every later one fail until
//! [`Store::restart`], as if the process were gone. Objects can be corrupted
//! (a flipped byte or a truncation) to check that damage is reported.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use vault::backend::check_name;
use vault::{Backend, Kind, VaultError, Version};

/// A backend operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Put,
    Get,
    GetRange,
    Size,
    List,
    Delete,
}

/// What happens when a fault triggers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The operation fails; nothing changes.
    Fail,
    /// A put stores the object, then reports an error (the reply was lost).
    FailAfterPut,
    /// The process dies here: this operation (a put lands or not, as
    /// `landed` says) and every later one fail until [`Store::restart`].
    Crash { landed: bool },
}

/// One armed fault: the `nth` (1-based) operation matching `op` and `kind`
/// (`None` matches any) triggers `action`.
#[derive(Debug, Clone)]
pub struct Fault {
    pub op: Option<Op>,
    pub kind: Option<Kind>,
    pub nth: u64,
    pub action: Action,
    /// Matching operations seen so far.
    pub seen: u64,
    /// What it hit, once triggered.
    pub hit: Option<String>,
}

impl Fault {
    pub fn new(op: Option<Op>, kind: Option<Kind>, nth: u64, action: Action) -> Fault {
        Fault { op, kind, nth, action, seen: 0, hit: None }
    }
}

#[derive(Default)]
struct State {
    objects: HashMap<Kind, BTreeMap<String, Vec<u8>>>,
    /// When each name was first stored (a counter): pack names are random
    /// (nonces), so schedules pick objects by age, not by name.
    born: HashMap<(Kind, String), u64>,
    faults: Vec<Fault>,
    /// Triggered faults, in order (taken by [`Store::disarm`]).
    triggered: Vec<Fault>,
    crashed: bool,
    /// Faults neither count nor trigger (another process is using the store).
    suspended: bool,
    /// Ambiguous puts: the object landed but its writer saw an error.
    landed_puts: Vec<(Kind, String)>,
    ops: u64,
}

impl State {
    fn insert(&mut self, kind: Kind, name: &str, data: Vec<u8>) {
        let n = self.born.len() as u64;
        self.born.entry((kind, name.to_string())).or_insert(n);
        self.objects.entry(kind).or_default().insert(name.to_string(), data);
    }
}

/// The shared store: every `Vault` opened on it ("processes") sees the same objects.
#[derive(Default)]
pub struct Store {
    state: Mutex<State>,
}

fn injected(kind: Kind, name: &str, what: &str) -> VaultError {
    VaultError::Io {
        what: "injected fault on",
        path: format!("sim://vault/{kind}/{name}").into(),
        source: std::io::Error::other(what.to_string()),
    }
}

impl Store {
    pub fn new() -> Arc<Store> {
        Arc::new(Store::default())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A backend handle for `Vault::open` / `Vault::init`.
    pub fn backend(self: &Arc<Store>) -> Box<dyn Backend> {
        Box::new(SimBackend(Arc::clone(self)))
    }

    pub fn arm(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    /// Removes every armed fault and returns those that triggered.
    pub fn disarm(&self) -> Vec<Fault> {
        let mut s = self.lock();
        s.faults.clear();
        std::mem::take(&mut s.triggered)
    }

    pub fn crashed(&self) -> bool {
        self.lock().crashed
    }

    /// The process dies now: every later operation fails until [`Store::restart`].
    pub fn crash_now(&self) {
        self.lock().crashed = true;
    }

    /// While set, armed faults neither count nor trigger.
    pub fn suspend_faults(&self, on: bool) {
        self.lock().suspended = on;
    }

    /// The crashed process is gone; a new one may use the store.
    pub fn restart(&self) {
        self.lock().crashed = false;
    }

    pub fn take_landed_puts(&self) -> Vec<(Kind, String)> {
        std::mem::take(&mut self.lock().landed_puts)
    }

    // Direct access, bypassing faults (the simulation's own view).

    pub fn names(&self, kind: Kind) -> Vec<String> {
        self.lock().objects.get(&kind).map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }

    /// Names of `kind`, oldest first.
    pub fn names_by_age(&self, kind: Kind) -> Vec<String> {
        let s = self.lock();
        let mut names: Vec<(u64, String)> = s
            .objects
            .get(&kind)
            .map(|m| m.keys().map(|n| (s.born.get(&(kind, n.clone())).copied().unwrap_or(0), n.clone())).collect())
            .unwrap_or_default();
        names.sort();
        names.into_iter().map(|(_, n)| n).collect()
    }

    pub fn raw_get(&self, kind: Kind, name: &str) -> Option<Vec<u8>> {
        self.lock().objects.get(&kind).and_then(|m| m.get(name).cloned())
    }

    pub fn raw_len(&self, kind: Kind, name: &str) -> Option<usize> {
        self.lock().objects.get(&kind).and_then(|m| m.get(name).map(Vec::len))
    }

    pub fn raw_put(&self, kind: Kind, name: &str, data: Vec<u8>) {
        let mut s = self.lock();
        s.insert(kind, name, data);
    }

    pub fn raw_delete(&self, kind: Kind, name: &str) -> bool {
        self.lock().objects.get_mut(&kind).is_some_and(|m| m.remove(name).is_some())
    }

    /// Counts the operation against the armed faults: `Err` if the process
    /// has crashed, else the fault action that triggered, if any.
    fn gate(&self, s: &mut State, op: Op, kind: Kind, name: &str) -> Result<Option<Action>, VaultError> {
        s.ops += 1;
        if s.crashed {
            return Err(injected(kind, name, "the process crashed"));
        }
        if s.suspended {
            return Ok(None);
        }
        let mut fired = None;
        for f in &mut s.faults {
            if f.hit.is_some() || f.op.is_some_and(|o| o != op) || f.kind.is_some_and(|k| k != kind) {
                continue;
            }
            f.seen += 1;
            if f.seen == f.nth && fired.is_none() {
                f.hit = Some(format!("{op:?} {kind}/{name}"));
                fired = Some(f.clone());
            }
        }
        let Some(f) = fired else { return Ok(None) };
        s.faults.retain(|g| g.hit.is_none());
        s.triggered.push(f.clone());
        if let Action::Crash { .. } = f.action {
            s.crashed = true;
        }
        Ok(Some(f.action))
    }
}

/// `Backend` over a shared [`Store`].
pub struct SimBackend(pub Arc<Store>);

/// What a write requires of the object already there.
#[derive(Clone, Copy)]
enum Precondition<'a> {
    /// Nothing (put).
    None,
    /// No object (create).
    Absent,
    /// The object at this version (replace_if).
    At(&'a Version),
}

impl SimBackend {
    /// A put, create or replace_if: gated as a put (so a schedule's faults
    /// hit the same writes whichever of them the vault uses), then the
    /// precondition checked atomically under the store's lock.
    fn write(&self, kind: Kind, name: &str, data: &[u8], pre: Precondition<'_>) -> Result<(), VaultError> {
        check_name(name)?;
        let mut s = self.0.lock();
        let action = self.0.gate(&mut s, Op::Put, kind, name)?;
        let current = s.objects.get(&kind).and_then(|m| m.get(name));
        let refused = match (pre, current) {
            (Precondition::Absent, Some(_)) => Some(VaultError::AlreadyExists { kind, name: name.to_string() }),
            (Precondition::At(_), None) => Some(VaultError::Conflict { kind, name: name.to_string() }),
            (Precondition::At(v), Some(now)) if Version::of_contents(now) != *v => {
                Some(VaultError::Conflict { kind, name: name.to_string() })
            }
            _ => None,
        };
        if let Some(refused) = refused {
            // Refused: nothing lands, whatever fault was armed here.
            return Err(match action {
                None => refused,
                Some(a) => injected(kind, name, &format!("{a:?}")),
            });
        }
        let store = match action {
            None | Some(Action::FailAfterPut) | Some(Action::Crash { landed: true }) => true,
            Some(Action::Fail) | Some(Action::Crash { landed: false }) => false,
        };
        if store {
            s.insert(kind, name, data.to_vec());
        }
        match action {
            None => Ok(()),
            Some(a) => {
                if store {
                    s.landed_puts.push((kind, name.to_string()));
                }
                Err(injected(kind, name, &format!("{a:?}")))
            }
        }
    }
}

impl Backend for SimBackend {
    fn put(&self, kind: Kind, name: &str, data: &[u8]) -> Result<(), VaultError> {
        self.write(kind, name, data, Precondition::None)
    }

    fn create(&self, kind: Kind, name: &str, data: &[u8]) -> Result<Version, VaultError> {
        self.write(kind, name, data, Precondition::Absent)?;
        Ok(Version::of_contents(data))
    }

    fn get_versioned(&self, kind: Kind, name: &str) -> Result<(Vec<u8>, Version), VaultError> {
        let data = self.get(kind, name)?;
        let version = Version::of_contents(&data);
        Ok((data, version))
    }

    fn replace_if(&self, kind: Kind, name: &str, data: &[u8], version: &Version) -> Result<Version, VaultError> {
        self.write(kind, name, data, Precondition::At(version))?;
        Ok(Version::of_contents(data))
    }

    fn get(&self, kind: Kind, name: &str) -> Result<Vec<u8>, VaultError> {
        check_name(name)?;
        let mut s = self.0.lock();
        if let Some(a) = self.0.gate(&mut s, Op::Get, kind, name)? {
            return Err(injected(kind, name, &format!("{a:?}")));
        }
        s.objects
            .get(&kind)
            .and_then(|m| m.get(name).cloned())
            .ok_or_else(|| VaultError::NotFound { kind, name: name.to_string() })
    }

    fn get_range(&self, kind: Kind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, VaultError> {
        check_name(name)?;
        let mut s = self.0.lock();
        if let Some(a) = self.0.gate(&mut s, Op::GetRange, kind, name)? {
            return Err(injected(kind, name, &format!("{a:?}")));
        }
        let obj = s
            .objects
            .get(&kind)
            .and_then(|m| m.get(name))
            .ok_or_else(|| VaultError::NotFound { kind, name: name.to_string() })?;
        let size = obj.len() as u64;
        let end = offset.saturating_add(len);
        if end > size {
            return Err(VaultError::ShortObject { kind, name: name.to_string(), size, offset, end });
        }
        let (a, b) = (usize::try_from(offset).expect("small"), usize::try_from(end).expect("small"));
        Ok(obj[a..b].to_vec())
    }

    fn size(&self, kind: Kind, name: &str) -> Result<Option<u64>, VaultError> {
        check_name(name)?;
        let mut s = self.0.lock();
        if let Some(a) = self.0.gate(&mut s, Op::Size, kind, name)? {
            return Err(injected(kind, name, &format!("{a:?}")));
        }
        Ok(s.objects.get(&kind).and_then(|m| m.get(name)).map(|o| o.len() as u64))
    }

    fn list(&self, kind: Kind, prefix: &str) -> Result<Vec<String>, VaultError> {
        let mut s = self.0.lock();
        if let Some(a) = self.0.gate(&mut s, Op::List, kind, prefix)? {
            return Err(injected(kind, prefix, &format!("{a:?}")));
        }
        Ok(s.objects
            .get(&kind)
            .map(|m| m.range(prefix.to_string()..).take_while(|(n, _)| n.starts_with(prefix)).map(|(n, _)| n.clone()))
            .into_iter()
            .flatten()
            .collect())
    }

    fn delete(&self, kind: Kind, name: &str) -> Result<(), VaultError> {
        check_name(name)?;
        let mut s = self.0.lock();
        if let Some(a) = self.0.gate(&mut s, Op::Delete, kind, name)? {
            return Err(injected(kind, name, &format!("{a:?}")));
        }
        match s.objects.get_mut(&kind).and_then(|m| m.remove(name)) {
            Some(_) => Ok(()),
            None => Err(VaultError::NotFound { kind, name: name.to_string() }),
        }
    }

    fn location(&self) -> String {
        "sim://vault".to_string()
    }
}
