//! A restore from a vault that wants many reads in flight (a vault server,
//! stood in for by `vault::in_flight::InFlight`) keeps that many outstanding,
//! whatever the cores (issue 14: "restore keeps several ranged reads in
//! flight").

mod common;

use std::time::Duration;

use common::{master, new_vault, Disk, Rng};
use vault::in_flight::InFlight;
use vault::{BlockIndex, LocalBackend, Vault};

#[test]
fn a_restore_keeps_as_many_reads_in_flight_as_the_vault_asks() {
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    let keys = master().keys();
    // 256 blocks in packs of 16: 16 packs of 1 MiB, each read whole by a
    // thread of its own (the probe counts reads of 512 KiB or more, not the
    // 256 KiB tail reads the index is built from).
    let mut disk = Disk::new("d", 256 << 16, 65536, 16);
    Rng(7).fill(&mut disk.image);
    let blocks: Vec<u64> = (0..256).collect();
    disk.ship(&vault, &keys, &mut BlockIndex::new(), &blocks);
    drop(vault);

    let probe = InFlight::new(
        LocalBackend::open(&dir.path().join("vault")).unwrap(),
        16,
        8,
        (512 << 10)..u64::MAX,
        Duration::from_secs(3),
    );
    let seen = probe.seen();
    let vault = Vault::open(Box::new(probe)).unwrap().with_host_identity(common::test_host());
    let out = tempfile::NamedTempFile::new().unwrap();
    vault.restore(&disk.chain(&keys), 1, &keys, out.as_file(), &mut ()).unwrap();
    assert!(std::fs::read(out.path()).unwrap() == disk.image, "the restored image differs");
    assert!(seen.max() >= 8, "at most {} ranged reads were in flight at once", seen.max());
}
