//! Instant recovery's background copy and failback's fetches keep many
//! reads in flight when the vault wants them (a vault server over a WAN,
//! stood in for by `vault::in_flight::InFlight`), and still end byte for
//! byte (issue 14: "restore and instant recovery keep several ranged reads
//! in flight").

#[path = "../../vault/tests/common/mod.rs"]
mod vault_fixture;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use recovery::instant::InstantDisk;
use vault::in_flight::{InFlight, Seen};
use vault::{BlockIndex, LocalBackend, PointReader, Vault};
use vault_fixture::{master, new_vault, test_host, Disk, Rng};

/// A point of 256 random 64 KiB blocks (16 packs of 1 MiB), and a reader of
/// it through a probe asking for 16 reads in flight that counts block reads
/// (not the 256 KiB pack tail reads).
fn point(dir: &Path) -> (Disk, PointReader, Seen) {
    let keys = master().keys();
    let vault = new_vault(dir);
    let mut disk = Disk::new("d", 256 << 16, 65536, 16);
    Rng(11).fill(&mut disk.image);
    let blocks: Vec<u64> = (0..256).collect();
    disk.ship(&vault, &keys, &mut BlockIndex::new(), &blocks);
    drop(vault);
    let probe = InFlight::new(
        LocalBackend::open(&dir.join("vault")).unwrap(),
        16,
        8,
        65536..(128 << 10),
        Duration::from_secs(3),
    );
    let seen = probe.seen();
    let vault = Arc::new(Vault::open(Box::new(probe)).unwrap().with_host_identity(test_host()));
    let reader = Vault::point_reader(&vault, &disk.chain(&keys), 1, &Arc::new(keys)).unwrap();
    (disk, reader, seen)
}

#[test]
fn the_instant_background_copy_keeps_many_reads_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, reader, seen) = point(dir.path());
    let image = dir.path().join("instant.img");
    let d = InstantDisk::open(reader, &image, &dir.path().join("instant.bitmap")).unwrap();
    assert!(d.background_copy(&AtomicBool::new(false), &|_, _| {}).unwrap(), "the copy did not finish");
    assert_eq!(d.present_blocks(), (256, 256));
    assert!(std::fs::read(&image).unwrap() == disk.image, "the copied image differs from the point");
    assert!(seen.max() >= 8, "at most {} block reads were in flight at once", seen.max());
}

/// A guest's read of a cold range fetches its missing blocks together: a
/// 1 MiB read of 16 blocks keeps 8 or more reads in flight (one round trip
/// to a cloud vault, not 16), and reads the point's bytes.
#[test]
fn a_guest_read_of_a_cold_range_fetches_its_blocks_at_once() {
    use filter::nbd::Export;
    let dir = tempfile::tempdir().unwrap();
    let (disk, reader, seen) = point(dir.path());
    let d = InstantDisk::open(reader, &dir.path().join("instant.img"), &dir.path().join("instant.bitmap")).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    d.read_at(&mut buf, 32 << 16).unwrap();
    assert!(buf == disk.image[32 << 16..(32 << 16) + (1 << 20)], "the read differs from the point");
    assert_eq!(d.fetched(), (16, 16));
    assert!(seen.max() >= 8, "at most {} block reads were in flight at once", seen.max());
}

#[test]
fn failback_fetches_what_differs_with_many_reads_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, reader, seen) = point(dir.path());
    let path = dir.path().join("local.img");
    let mut local = disk.image.clone();
    // Every other block differs here: 128 to fetch.
    for b in (0..256).step_by(2) {
        local[b * 65536] ^= 0xff;
    }
    std::fs::write(&path, &local).unwrap();
    let image = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let report = recovery::failback::converge(&reader, &master().keys(), &image, &mut ()).unwrap();
    assert_eq!((report.fetched_blocks, report.fetched_bytes), (128, 128 * 65536));
    assert!(std::fs::read(&path).unwrap() == disk.image, "the converged image differs from the point");
    assert!(seen.max() >= 8, "at most {} block reads were in flight at once", seen.max());
}

/// The guest comes first (issue 15: "ordered so that a cold instant-recovery
/// boot reads what the guest asks for first"): while a read of the VM is
/// fetching, the background copy finishes the fetches it has in flight and
/// starts no new one, so the guest's fetch does not queue behind sixteen.
#[test]
fn the_background_copy_starts_no_fetch_while_a_guest_read_waits() {
    use filter::nbd::Export;
    let dir = tempfile::tempdir().unwrap();
    let keys = master().keys();
    let vault = new_vault(dir.path());
    let mut disk = Disk::new("d", 256 << 16, 65536, 16);
    Rng(12).fill(&mut disk.image);
    disk.ship(&vault, &keys, &mut BlockIndex::new(), &(0..256).collect::<Vec<u64>>());
    drop(vault);
    let held = InFlight::held(LocalBackend::open(&dir.path().join("vault")).unwrap(), 4, 65536..(128 << 10));
    let seen = held.seen();
    let vault = Arc::new(Vault::open(Box::new(held)).unwrap().with_host_identity(test_host()));
    let reader = Vault::point_reader(&vault, &disk.chain(&keys), 1, &Arc::new(keys)).unwrap();
    let image = dir.path().join("instant.img");
    let d = Arc::new(InstantDisk::open(reader, &image, &dir.path().join("instant.bitmap")).unwrap());
    let gate = seen.turnstile().unwrap();
    let long = Duration::from_secs(20);
    // A failed assertion must not leave the threads waiting at the gate.
    struct OpenOnDrop<'a>(&'a vault::in_flight::Turnstile);
    impl Drop for OpenOnDrop<'_> {
        fn drop(&mut self) {
            self.0.open();
        }
    }
    std::thread::scope(|s| {
        let _open = OpenOnDrop(gate);
        let copy = s.spawn(|| d.background_copy(&AtomicBool::new(false), &|_, _| {}));
        assert_eq!(gate.wait_arrived(4, long), 4, "the copy keeps four fetches in flight");
        // The guest reads block 200, which the copy (in block order) is far from.
        let guest = s.spawn(|| {
            let mut buf = vec![0u8; 4096];
            d.read_at(&mut buf, 200 << 16).map(|()| buf)
        });
        assert_eq!(gate.wait_arrived(5, long), 5, "the guest's fetch is the fifth");
        // The copy's four finish; none of its threads may start another
        // until the guest's fetch is done.
        gate.admit(0..4);
        let deadline = std::time::Instant::now() + long;
        while d.yielding() < 4 && gate.arrived() == 5 && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(gate.arrived(), 5, "a background fetch started while the guest's waited");
        assert_eq!(d.yielding(), 4, "every copying thread holds back for the guest");
        gate.admit([4]);
        let buf = guest.join().unwrap().unwrap();
        assert!(buf == disk.image[200 << 16..(200 << 16) + 4096], "the guest read differs from the point");
        gate.open();
        assert!(copy.join().unwrap().unwrap(), "the copy did not finish");
    });
    assert!(std::fs::read(&image).unwrap() == disk.image, "the copied image differs from the point");
    assert_eq!(d.fetched(), (256, 1));
}
