//! A backend decorator for tests that measures how many ranged reads a
//! reader keeps in flight at once (restore, instant recovery's background
//! copy, failback's fetches), and, with [`InFlight::with_commits`], how many
//! streamed objects (packs) a writer commits at once.
//!
//! Only reads whose length is in `counted` count (so that, say, the tail
//! reads an index is built from do not). Each such `get_range` holds until `want` reads are outstanding together (or
//! until `patience` has passed once, after which the gate stays open), so a
//! reader that does keep that many in flight is seen to, however fast the
//! inner backend answers; a reader that does not costs the test `patience`
//! once, not once per read. [`Backend::reads_in_flight`] answers what the
//! wrapped backend asks for, so a test can stand in for a remote vault.
//! Commits of streamed objects pass a gate of their own, the same way.
//!
//! With [`InFlight::held`], counted reads also wait at a [`Turnstile`]
//! until the test lets each through by its arrival number: a test can then
//! say which of several readers goes first, and see who asked meanwhile.

use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::backend::{Backend, Kind, ObjectWriter, Version};
use crate::error::VaultError;

#[derive(Default)]
struct Count {
    now: usize,
    max: usize,
    open: bool,
}

/// Holds whoever enters until `want` are inside together, or until
/// `patience` has passed once (it then stays open).
#[derive(Default)]
struct Gate {
    count: Mutex<Count>,
    changed: Condvar,
}

impl Gate {
    fn enter(&self, want: usize, patience: Duration) {
        let mut g = self.count.lock().unwrap_or_else(PoisonError::into_inner);
        g.now += 1;
        g.max = g.max.max(g.now);
        if g.now >= want {
            g.open = true;
        }
        self.changed.notify_all();
        let deadline = Instant::now() + patience;
        while !g.open {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                g.open = true;
                break;
            }
            g = self.changed.wait_timeout(g, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    fn leave(&self) {
        self.count.lock().unwrap_or_else(PoisonError::into_inner).now -= 1;
    }

    fn max(&self) -> usize {
        self.count.lock().unwrap_or_else(PoisonError::into_inner).max
    }
}

#[derive(Default)]
struct Shared {
    reads: Gate,
    commits: Gate,
    turnstile: Option<Turnstile>,
}

#[derive(Default)]
struct Arrivals {
    /// Reads that reached the turnstile, numbered from 0 in order.
    arrived: u64,
    /// Arrival numbers let through (or about to be).
    admitted: std::collections::HashSet<u64>,
    /// Every read passes.
    open: bool,
}

/// Where counted reads of an [`InFlight::held`] backend wait to be let
/// through (see the module documentation).
#[derive(Default)]
pub struct Turnstile {
    state: Mutex<Arrivals>,
    changed: Condvar,
}

impl Turnstile {
    fn pass(&self) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let ticket = s.arrived;
        s.arrived += 1;
        self.changed.notify_all();
        while !s.open && !s.admitted.contains(&ticket) {
            s = self.changed.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Reads that reached the turnstile so far.
    pub fn arrived(&self) -> u64 {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).arrived
    }

    /// Waits until `n` reads have reached the turnstile, for at most
    /// `timeout`; returns how many had.
    pub fn wait_arrived(&self, n: u64, timeout: Duration) -> u64 {
        let s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (s, _) =
            self.changed.wait_timeout_while(s, timeout, |s| s.arrived < n).unwrap_or_else(PoisonError::into_inner);
        s.arrived
    }

    /// Lets the reads of arrival numbers `tickets` through.
    pub fn admit(&self, tickets: impl IntoIterator<Item = u64>) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).admitted.extend(tickets);
        self.changed.notify_all();
    }

    /// Lets every read through, now and later.
    pub fn open(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).open = true;
        self.changed.notify_all();
    }
}

/// See the module documentation.
pub struct InFlight<B> {
    inner: B,
    asks: usize,
    want: usize,
    counted: Range<u64>,
    patience: Duration,
    /// With [`InFlight::with_commits`]: what [`Backend::writes_in_flight`]
    /// answers, and how many commits the commit gate waits for.
    commits: Option<(usize, usize)>,
    shared: Arc<Shared>,
}

/// What an [`InFlight`] saw, readable after the backend was handed over.
#[derive(Clone)]
pub struct Seen(Arc<Shared>);

impl Seen {
    /// The most ranged reads seen outstanding at once.
    pub fn max(&self) -> usize {
        self.0.reads.max()
    }

    /// The most commits of streamed objects seen under way at once.
    pub fn max_commits(&self) -> usize {
        self.0.commits.max()
    }

    /// The turnstile of an [`InFlight::held`] backend.
    pub fn turnstile(&self) -> Option<&Turnstile> {
        self.0.turnstile.as_ref()
    }
}

impl<B: Backend> InFlight<B> {
    /// Wraps `inner`, answering [`Backend::reads_in_flight`] with `asks`, and
    /// holding ranged reads of a length in `counted` until `want` are
    /// outstanding or `patience` passed.
    pub fn new(inner: B, asks: usize, want: usize, counted: Range<u64>, patience: Duration) -> InFlight<B> {
        InFlight { inner, asks, want, counted, patience, commits: None, shared: Arc::default() }
    }

    /// Also answers [`Backend::writes_in_flight`] with `lanes`, and holds
    /// each streamed object's commit until `want` commits are under way or
    /// `patience` passed.
    pub fn with_commits(self, lanes: usize, want: usize) -> InFlight<B> {
        InFlight { commits: Some((lanes, want)), ..self }
    }

    /// Wraps `inner`, answering [`Backend::reads_in_flight`] with `asks`;
    /// every ranged read of a length in `counted` waits at a [`Turnstile`]
    /// ([`Seen::turnstile`]) until it is let through.
    pub fn held(inner: B, asks: usize, counted: Range<u64>) -> InFlight<B> {
        let shared = Arc::new(Shared { turnstile: Some(Turnstile::default()), ..Shared::default() });
        InFlight { inner, asks, want: 1, counted, patience: Duration::ZERO, commits: None, shared }
    }

    /// A handle on what it sees.
    pub fn seen(&self) -> Seen {
        Seen(Arc::clone(&self.shared))
    }
}

/// A streamed object whose commit passes the commit gate.
struct GatedWriter<'a> {
    inner: Box<dyn ObjectWriter + 'a>,
    shared: &'a Shared,
    want: usize,
    patience: Duration,
}

impl ObjectWriter for GatedWriter<'_> {
    fn write(&mut self, data: &[u8]) -> Result<(), VaultError> {
        self.inner.write(data)
    }
    fn commit(self: Box<Self>, name: &str) -> Result<(), VaultError> {
        let GatedWriter { inner, shared, want, patience } = *self;
        shared.commits.enter(want, patience);
        let r = inner.commit(name);
        shared.commits.leave();
        r
    }
}

impl<B: Backend> Backend for InFlight<B> {
    fn put(&self, kind: Kind, name: &str, data: &[u8]) -> Result<(), VaultError> {
        self.inner.put(kind, name, data)
    }
    fn create(&self, kind: Kind, name: &str, data: &[u8]) -> Result<Version, VaultError> {
        self.inner.create(kind, name, data)
    }
    fn get_versioned(&self, kind: Kind, name: &str) -> Result<(Vec<u8>, Version), VaultError> {
        self.inner.get_versioned(kind, name)
    }
    fn replace_if(&self, kind: Kind, name: &str, data: &[u8], version: &Version) -> Result<Version, VaultError> {
        self.inner.replace_if(kind, name, data, version)
    }
    fn get(&self, kind: Kind, name: &str) -> Result<Vec<u8>, VaultError> {
        self.inner.get(kind, name)
    }
    fn get_range(&self, kind: Kind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, VaultError> {
        if !self.counted.contains(&len) {
            return self.inner.get_range(kind, name, offset, len);
        }
        if let Some(t) = &self.shared.turnstile {
            t.pass();
        }
        self.shared.reads.enter(self.want, self.patience);
        let r = self.inner.get_range(kind, name, offset, len);
        self.shared.reads.leave();
        r
    }
    fn size(&self, kind: Kind, name: &str) -> Result<Option<u64>, VaultError> {
        self.inner.size(kind, name)
    }
    fn get_tail(&self, kind: Kind, name: &str, max_len: u64) -> Result<Option<(Vec<u8>, u64)>, VaultError> {
        self.inner.get_tail(kind, name, max_len)
    }
    fn list(&self, kind: Kind, prefix: &str) -> Result<Vec<String>, VaultError> {
        self.inner.list(kind, prefix)
    }
    fn delete(&self, kind: Kind, name: &str) -> Result<(), VaultError> {
        self.inner.delete(kind, name)
    }
    fn remove(&self, kind: Kind, name: &str) -> Result<(), VaultError> {
        self.inner.remove(kind, name)
    }
    fn remote(&self) -> bool {
        self.inner.remote()
    }
    fn discard(&self, kind: Kind, name: &str) -> Result<(), VaultError> {
        self.inner.discard(kind, name)
    }
    fn missing(&self, kind: Kind, names: &[String]) -> Result<Vec<String>, VaultError> {
        self.inner.missing(kind, names)
    }
    fn location(&self) -> String {
        self.inner.location()
    }
    fn protection(&self) -> Result<crate::backend::Protection, VaultError> {
        self.inner.protection()
    }
    fn extend_locks(&self, objects: &[(Kind, String)], min_days: u32, days: u32) -> Result<u64, VaultError> {
        self.inner.extend_locks(objects, min_days, days)
    }
    fn tail_requests(&self) -> u64 {
        self.inner.tail_requests()
    }
    fn list_page(&self) -> u64 {
        self.inner.list_page()
    }
    fn missing_batch(&self) -> u64 {
        self.inner.missing_batch()
    }
    fn reads_in_flight(&self) -> usize {
        self.asks
    }
    fn writes_in_flight(&self) -> usize {
        self.commits.map_or_else(|| self.inner.writes_in_flight(), |(lanes, _)| lanes)
    }
    fn writer(&self, kind: Kind) -> Result<Option<Box<dyn ObjectWriter + '_>>, VaultError> {
        let inner = self.inner.writer(kind)?;
        Ok(match (inner, self.commits) {
            (Some(inner), Some((_, want))) => {
                Some(Box::new(GatedWriter { inner, shared: &self.shared, want, patience: self.patience }))
            }
            (inner, _) => inner,
        })
    }
}
