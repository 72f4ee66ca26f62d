//! A backend decorator for tests that measures how many ranged reads a
//! reader keeps in flight at once (restore, instant recovery's background
//! copy, failback's fetches).
//!
//! Only reads whose length is in `counted` count (so that, say, the tail
//! reads an index is built from do not). Each such `get_range` holds until `want` reads are outstanding together (or
//! until `patience` has passed once, after which the gate stays open), so a
//! reader that does keep that many in flight is seen to, however fast the
//! inner backend answers; a reader that does not costs the test `patience`
//! once, not once per read. [`Backend::reads_in_flight`] answers what the
//! wrapped backend asks for, so a test can stand in for a remote vault.

use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::backend::{Backend, Kind, ObjectWriter, Version};
use crate::error::VaultError;

#[derive(Default)]
struct Gate {
    now: usize,
    max: usize,
    open: bool,
}

#[derive(Default)]
struct Shared {
    gate: Mutex<Gate>,
    changed: Condvar,
}

/// See the module documentation.
pub struct InFlight<B> {
    inner: B,
    asks: usize,
    want: usize,
    counted: Range<u64>,
    patience: Duration,
    shared: Arc<Shared>,
}

/// What an [`InFlight`] saw, readable after the backend was handed over.
#[derive(Clone)]
pub struct Seen(Arc<Shared>);

impl Seen {
    /// The most ranged reads seen outstanding at once.
    pub fn max(&self) -> usize {
        self.0.gate.lock().unwrap_or_else(PoisonError::into_inner).max
    }
}

impl<B: Backend> InFlight<B> {
    /// Wraps `inner`, answering [`Backend::reads_in_flight`] with `asks`, and
    /// holding ranged reads of a length in `counted` until `want` are
    /// outstanding or `patience` passed.
    pub fn new(inner: B, asks: usize, want: usize, counted: Range<u64>, patience: Duration) -> InFlight<B> {
        InFlight { inner, asks, want, counted, patience, shared: Arc::default() }
    }

    /// A handle on what it sees.
    pub fn seen(&self) -> Seen {
        Seen(Arc::clone(&self.shared))
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
        {
            let mut g = self.shared.gate.lock().unwrap_or_else(PoisonError::into_inner);
            g.now += 1;
            g.max = g.max.max(g.now);
            if g.now >= self.want {
                g.open = true;
            }
            self.shared.changed.notify_all();
            let deadline = Instant::now() + self.patience;
            while !g.open {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    g.open = true;
                    break;
                }
                g = self.shared.changed.wait_timeout(g, left).unwrap_or_else(PoisonError::into_inner).0;
            }
        }
        let r = self.inner.get_range(kind, name, offset, len);
        self.shared.gate.lock().unwrap_or_else(PoisonError::into_inner).now -= 1;
        r
    }
    fn size(&self, kind: Kind, name: &str) -> Result<Option<u64>, VaultError> {
        self.inner.size(kind, name)
    }
    fn list(&self, kind: Kind, prefix: &str) -> Result<Vec<String>, VaultError> {
        self.inner.list(kind, prefix)
    }
    fn delete(&self, kind: Kind, name: &str) -> Result<(), VaultError> {
        self.inner.delete(kind, name)
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
    fn reads_in_flight(&self) -> usize {
        self.asks
    }
    fn writes_in_flight(&self) -> usize {
        self.inner.writes_in_flight()
    }
    fn writer(&self, kind: Kind) -> Result<Option<Box<dyn ObjectWriter + '_>>, VaultError> {
        self.inner.writer(kind)
    }
}
