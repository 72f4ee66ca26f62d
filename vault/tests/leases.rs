//! Leases left behind by this very process. A lease whose delete failed (a
//! transient backend error when its `Hold` was dropped), or whose put landed
//! though it reported an error, names a process that is still running — this
//! one — but nobody holds it any more. It must not block cycles or garbage
//! collection for as long as the process lives. (Found by the shipper's
//! simulation, seed 139: one failed delete of a cycle lease refused every
//! later GC for the rest of the process's life; the same with a GC lease
//! would refuse every cycle of every disk.)

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use vault::{Backend, HostIdentity, Kind, LocalBackend, Vault, VaultError, Version};

/// How many of the next lease deletes fail, and how many lease puts fail
/// after the object landed (the reply was lost).
#[derive(Default)]
struct Faults {
    deletes: AtomicU32,
    puts_after_landing: AtomicU32,
}

struct Flaky {
    inner: LocalBackend,
    faults: Arc<Faults>,
}

fn take(n: &AtomicU32) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
}

fn injected(name: &str) -> VaultError {
    VaultError::Io { what: "injected failure on", path: name.into(), source: std::io::Error::other("timeout") }
}

impl Backend for Flaky {
    fn put(&self, kind: Kind, name: &str, data: &[u8]) -> Result<(), VaultError> {
        self.inner.put(kind, name, data)?;
        if kind == Kind::Lease && take(&self.faults.puts_after_landing) {
            return Err(injected(name));
        }
        Ok(())
    }
    fn create(&self, kind: Kind, name: &str, data: &[u8]) -> Result<Version, VaultError> {
        let version = self.inner.create(kind, name, data)?;
        if kind == Kind::Lease && take(&self.faults.puts_after_landing) {
            return Err(injected(name));
        }
        Ok(version)
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
        self.inner.get_range(kind, name, offset, len)
    }
    fn size(&self, kind: Kind, name: &str) -> Result<Option<u64>, VaultError> {
        self.inner.size(kind, name)
    }
    fn list(&self, kind: Kind, prefix: &str) -> Result<Vec<String>, VaultError> {
        self.inner.list(kind, prefix)
    }
    fn delete(&self, kind: Kind, name: &str) -> Result<(), VaultError> {
        if kind == Kind::Lease && take(&self.faults.deletes) {
            return Err(injected(name));
        }
        self.inner.delete(kind, name)
    }
    fn location(&self) -> String {
        self.inner.location()
    }
}

/// This process on a host of the test's own making: the tests judge leases
/// the same on every machine (one without `/etc/machine-id` too).
fn test_host() -> HostIdentity {
    HostIdentity {
        host: "here".into(),
        machine: Some("test-machine-0123456789abcdef".into()),
        boot: Some("test-boot-1".into()),
        ..HostIdentity::current()
    }
}

fn flaky_vault(dir: &std::path::Path) -> (Vault, Arc<Faults>) {
    let keys = disk_format::MasterKey::from_bytes([0x42; 32]).keys();
    let faults = Arc::new(Faults::default());
    let backend = Flaky { inner: LocalBackend::create(&dir.join("vault")).unwrap(), faults: Arc::clone(&faults) };
    (Vault::init(Box::new(backend), &keys).unwrap().with_host_identity(test_host()), faults)
}

#[test]
fn a_cycle_lease_whose_delete_failed_does_not_block_gc() {
    let dir = tempfile::tempdir().unwrap();
    let (vault, faults) = flaky_vault(dir.path());
    let cycle = vault.begin_cycle("web").unwrap();
    let name = cycle.name().to_string();
    // While held, it blocks GC.
    assert!(matches!(vault.gc(false), Err(VaultError::Busy { .. })));
    faults.deletes.store(1, Ordering::SeqCst);
    assert!(cycle.release().is_err(), "the delete fails");
    assert_eq!(vault.backend().list(Kind::Lease, "").unwrap(), vec![name.clone()], "left behind");
    let leases = vault.leases("").unwrap();
    assert!(!leases[0].is_live(), "this process no longer holds it: {leases:?}");
    let report = vault.gc(false).expect("a lease nobody holds must not block GC");
    assert_eq!(report.stale_leases_removed, vec![name]);
    assert!(vault.backend().list(Kind::Lease, "").unwrap().is_empty());
}

#[test]
fn a_gc_lease_whose_delete_failed_does_not_block_cycles() {
    let dir = tempfile::tempdir().unwrap();
    let (vault, faults) = flaky_vault(dir.path());
    // GC's own lease is dropped at the end of the run; its delete fails.
    faults.deletes.store(1, Ordering::SeqCst);
    vault.gc(false).unwrap();
    assert_eq!(vault.backend().list(Kind::Lease, "gc/").unwrap().len(), 1, "left behind");
    drop(vault.begin_cycle("web").expect("a GC lease nobody holds must not block cycles"));
    // A dropped Hold whose delete fails is stale too.
    faults.deletes.store(1, Ordering::SeqCst);
    drop(vault.begin_cycle("web").unwrap());
    assert!(vault.gc(false).is_ok());
    assert!(vault.backend().list(Kind::Lease, "").unwrap().is_empty(), "GC removed both");
}

#[test]
fn a_lease_put_that_landed_but_failed_is_stale_and_a_held_lease_is_live() {
    let dir = tempfile::tempdir().unwrap();
    let (vault, faults) = flaky_vault(dir.path());
    faults.puts_after_landing.store(1, Ordering::SeqCst);
    assert!(vault.begin_cycle("web").is_err());
    let leases = vault.leases("").unwrap();
    assert_eq!(leases.len(), 1, "the object landed");
    assert!(!leases[0].is_live(), "but nobody holds it");
    // Another handle on the same vault in this process (another Vault, as an
    // agent opens per disk) still sees a lease this process holds as live.
    let cycle = vault.begin_cycle("web").unwrap();
    let other = Vault::open(Box::new(LocalBackend::open(&dir.path().join("vault")).unwrap()))
        .unwrap()
        .with_host_identity(test_host());
    let live: Vec<_> = other.leases("cycle/").unwrap().into_iter().filter(|l| l.is_live()).collect();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].name, cycle.name());
    assert!(matches!(other.gc(false), Err(VaultError::Busy { .. })));
    drop(cycle);
    assert!(other.gc(false).is_ok());
}
