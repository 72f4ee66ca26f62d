//! A backend decorator that counts requests, as the vault server would see
//! them: for tests, benchmarks, and `ship --json`'s `requests`.
//!
//! Every call is one request, with four exceptions that follow what the
//! store is sent: a `get_tail` is [`Backend::tail_requests`] (2 on Azure,
//! which has no suffix ranges), a `list` is one request per page of names returned (at
//! least one; [`Backend::list_page`]: 10,000 on the vault server, 1,000 on
//! S3, 5,000 on Azure), `missing` is one request per batch of names asked
//! ([`Backend::missing_batch`]: 100,000 on the vault server, one HEAD per
//! name on a cloud store), and a streamed object ([`Backend::writer`]) is
//! one request, counted when it is committed (a multipart upload's parts
//! are not counted apart).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::backend::{Backend, Kind, ObjectWriter, Version};
use crate::error::VaultError;

/// Names one LIST request of the vault server returns at most (the
/// default [`Backend::list_page`]).
pub const LIST_PAGE: u64 = 10_000;
/// Names one `missing` request of the vault server asks about at most (the
/// default [`Backend::missing_batch`]).
pub const MISSING_PAGE: u64 = 100_000;

/// Requests counted so far, shared between a [`Counting`] backend and
/// whoever reads the counts.
#[derive(Debug, Default)]
pub struct RequestCount {
    total: AtomicU64,
    lists: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
}

/// A snapshot of a [`RequestCount`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Requests {
    /// Every request.
    pub total: u64,
    /// LIST requests (pages of [`LIST_PAGE`] names).
    pub lists: u64,
    /// Reads: whole or ranged GETs and sizes (HEAD).
    pub reads: u64,
    /// Writes: puts, creates, replaces, streamed objects, deletes.
    pub writes: u64,
}

impl RequestCount {
    /// The counts now.
    pub fn get(&self) -> Requests {
        Requests {
            total: self.total.load(Ordering::Relaxed),
            lists: self.lists.load(Ordering::Relaxed),
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
        }
    }

    fn add(&self, class: Option<&AtomicU64>, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
        if let Some(c) = class {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }
}

impl std::ops::Sub for Requests {
    type Output = Requests;
    fn sub(self, earlier: Requests) -> Requests {
        Requests {
            total: self.total - earlier.total,
            lists: self.lists - earlier.lists,
            reads: self.reads - earlier.reads,
            writes: self.writes - earlier.writes,
        }
    }
}

/// `B` with every request counted (see the module doc for what one is).
pub struct Counting<B> {
    inner: B,
    count: Arc<RequestCount>,
}

impl<B: Backend> Counting<B> {
    /// Counts the requests made of `inner`, from zero.
    pub fn new(inner: B) -> Counting<B> {
        Counting { inner, count: Arc::default() }
    }

    /// The shared counts (still counting after the backend moves into a
    /// [`crate::Vault`]).
    pub fn count(&self) -> Arc<RequestCount> {
        Arc::clone(&self.count)
    }

    fn read(&self) {
        self.count.add(Some(&self.count.reads), 1);
    }

    fn write(&self) {
        self.count.add(Some(&self.count.writes), 1);
    }
}

/// A streamed object: one request when committed.
struct CountedWriter<'a> {
    inner: Box<dyn ObjectWriter + 'a>,
    count: &'a RequestCount,
}

impl ObjectWriter for CountedWriter<'_> {
    fn write(&mut self, data: &[u8]) -> Result<(), VaultError> {
        self.inner.write(data)
    }
    fn commit(self: Box<Self>, name: &str) -> Result<(), VaultError> {
        self.count.add(Some(&self.count.writes), 1);
        self.inner.commit(name)
    }
}

impl<B: Backend> Backend for Counting<B> {
    fn put(&self, kind: Kind, name: &str, data: &[u8]) -> Result<(), VaultError> {
        self.write();
        self.inner.put(kind, name, data)
    }
    fn create(&self, kind: Kind, name: &str, data: &[u8]) -> Result<Version, VaultError> {
        self.write();
        self.inner.create(kind, name, data)
    }
    fn get_versioned(&self, kind: Kind, name: &str) -> Result<(Vec<u8>, Version), VaultError> {
        self.read();
        self.inner.get_versioned(kind, name)
    }
    fn replace_if(&self, kind: Kind, name: &str, data: &[u8], version: &Version) -> Result<Version, VaultError> {
        self.write();
        self.inner.replace_if(kind, name, data, version)
    }
    fn get(&self, kind: Kind, name: &str) -> Result<Vec<u8>, VaultError> {
        self.read();
        self.inner.get(kind, name)
    }
    fn get_range(&self, kind: Kind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, VaultError> {
        self.read();
        self.inner.get_range(kind, name, offset, len)
    }
    fn size(&self, kind: Kind, name: &str) -> Result<Option<u64>, VaultError> {
        self.read();
        self.inner.size(kind, name)
    }
    fn get_tail(&self, kind: Kind, name: &str, max_len: u64) -> Result<Option<(Vec<u8>, u64)>, VaultError> {
        self.count.add(Some(&self.count.reads), self.inner.tail_requests());
        self.inner.get_tail(kind, name, max_len)
    }
    fn list(&self, kind: Kind, prefix: &str) -> Result<Vec<String>, VaultError> {
        let names = self.inner.list(kind, prefix)?;
        let pages = (names.len() as u64).div_ceil(self.inner.list_page().max(1)).max(1);
        self.count.add(Some(&self.count.lists), pages);
        Ok(names)
    }
    fn delete(&self, kind: Kind, name: &str) -> Result<(), VaultError> {
        self.write();
        self.inner.delete(kind, name)
    }
    fn remove(&self, kind: Kind, name: &str) -> Result<(), VaultError> {
        self.write();
        self.inner.remove(kind, name)
    }
    fn remote(&self) -> bool {
        self.inner.remote()
    }
    fn discard(&self, kind: Kind, name: &str) -> Result<(), VaultError> {
        self.write();
        self.inner.discard(kind, name)
    }
    fn empty_trash(&self) -> Result<(u64, u64), VaultError> {
        self.write();
        self.inner.empty_trash()
    }
    fn missing(&self, kind: Kind, names: &[String]) -> Result<Vec<String>, VaultError> {
        let pages = (names.len() as u64).div_ceil(self.inner.missing_batch().max(1)).max(1);
        self.count.add(Some(&self.count.reads), pages);
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
        self.inner.reads_in_flight()
    }
    fn writes_in_flight(&self) -> usize {
        self.inner.writes_in_flight()
    }
    fn writer(&self, kind: Kind) -> Result<Option<Box<dyn ObjectWriter + '_>>, VaultError> {
        Ok(self.inner.writer(kind)?.map(|inner| Box::new(CountedWriter { inner, count: &self.count }) as Box<_>))
    }
    fn sweep_unfinished(
        &self,
        older_than: std::time::Duration,
        dry_run: bool,
    ) -> Result<Vec<(String, u64)>, VaultError> {
        self.inner.sweep_unfinished(older_than, dry_run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalBackend;

    #[test]
    fn each_call_is_one_request_and_a_list_one_per_page_of_names() {
        let dir = tempfile::tempdir().unwrap();
        let b = Counting::new(LocalBackend::create(dir.path()).unwrap());
        let count = b.count();
        b.put(Kind::Audit, "a", b"x").unwrap();
        assert_eq!(b.get(Kind::Audit, "a").unwrap(), b"x");
        assert_eq!(b.list(Kind::Audit, "").unwrap(), vec!["a".to_string()]);
        assert_eq!(b.list(Kind::Pack, "").unwrap(), Vec::<String>::new());
        let names: Vec<String> = (0..50).map(|i| format!("n{i}")).collect();
        assert_eq!(b.missing(Kind::Audit, &names).unwrap().len(), 50);
        let mut w = b.writer(Kind::Audit).unwrap().expect("the local backend streams");
        w.write(b"data").unwrap();
        w.commit("p").unwrap();
        assert_eq!(count.get(), Requests { total: 6, lists: 2, reads: 2, writes: 2 });
    }

    /// A store that pages listings at 3 names, answers `missing` one name a
    /// request and a tail in two, as a cloud store does (S3 pages at
    /// 1,000; Azure reads a tail with a HEAD and a range).
    struct Paged(LocalBackend);

    impl Backend for Paged {
        fn put(&self, kind: Kind, name: &str, data: &[u8]) -> Result<(), VaultError> {
            self.0.put(kind, name, data)
        }
        fn create(&self, kind: Kind, name: &str, data: &[u8]) -> Result<Version, VaultError> {
            self.0.create(kind, name, data)
        }
        fn get_versioned(&self, kind: Kind, name: &str) -> Result<(Vec<u8>, Version), VaultError> {
            self.0.get_versioned(kind, name)
        }
        fn replace_if(&self, kind: Kind, name: &str, data: &[u8], version: &Version) -> Result<Version, VaultError> {
            self.0.replace_if(kind, name, data, version)
        }
        fn get(&self, kind: Kind, name: &str) -> Result<Vec<u8>, VaultError> {
            self.0.get(kind, name)
        }
        fn get_range(&self, kind: Kind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, VaultError> {
            self.0.get_range(kind, name, offset, len)
        }
        fn size(&self, kind: Kind, name: &str) -> Result<Option<u64>, VaultError> {
            self.0.size(kind, name)
        }
        fn list(&self, kind: Kind, prefix: &str) -> Result<Vec<String>, VaultError> {
            self.0.list(kind, prefix)
        }
        fn delete(&self, kind: Kind, name: &str) -> Result<(), VaultError> {
            self.0.delete(kind, name)
        }
        fn location(&self) -> String {
            self.0.location()
        }
        fn tail_requests(&self) -> u64 {
            2
        }
        fn list_page(&self) -> u64 {
            3
        }
        fn missing_batch(&self) -> u64 {
            1
        }
    }

    #[test]
    fn listings_and_existence_checks_are_counted_as_the_store_pages_them() {
        let dir = tempfile::tempdir().unwrap();
        // Through a Box, as a vault holds its backend: the pages are the store's.
        let inner: Box<dyn Backend> = Box::new(Paged(LocalBackend::create(dir.path()).unwrap()));
        let b = Counting::new(inner);
        let count = b.count();
        for i in 0..7 {
            b.put(Kind::Audit, &format!("a{i}"), b"x").unwrap();
        }
        let before = count.get();
        assert_eq!(b.list(Kind::Audit, "").unwrap().len(), 7);
        assert_eq!(b.list(Kind::Pack, "").unwrap().len(), 0);
        let names: Vec<String> = (0..5).map(|i| format!("n{i}")).collect();
        assert_eq!(b.missing(Kind::Audit, &names).unwrap().len(), 5);
        assert!(b.get_tail(Kind::Audit, "a0", 64).unwrap().is_some());
        assert_eq!(count.get() - before, Requests { total: 3 + 1 + 5 + 2, lists: 4, reads: 5 + 2, writes: 0 });
    }
}
