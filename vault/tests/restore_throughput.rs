//! A measurement, not a test (ignored by default; run by hand in release):
//!
//! `cargo test -p vault --release --test restore_throughput -- --ignored --nocapture`
//!
//! Ships 1 GiB of random 64 KiB blocks (packs of 512 blobs, ~32 MiB) into a
//! local vault, restores the point and prints MB/s, beside the cost of
//! reading the same packs whole and blob by blob (one `get_range` per 64 KiB
//! block), and of opening every blob, and the output floor (writing the
//! image and syncing it). Set `LIFEBOAT_RESTORE_MIB` for another size, and
//! `LIFEBOAT_RESTORE_OUT=/dev/shm` to write the image to memory instead of
//! the temporary directory's disk. The vault was just written, so it is read from the page
//! cache: this measures the restore's own work, not the disk.
#![allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]

mod common;

use std::time::Instant;

use common::{master, new_vault, Disk, Rng};
use vault::{BlockIndex, Kind};

/// This process's CPU time (user + system), in seconds, from /proc/self/stat.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(") ").map_or("", |(_, f)| f).split(' ').collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0 // utime, stime; USER_HZ is 100 on Linux
}

fn mbs(bytes: u64, secs: f64) -> String {
    format!("{:>7.0} MB/s", bytes as f64 / 1e6 / secs)
}

#[test]
#[ignore = "a measurement to run by hand in release mode"]
fn restore_throughput() {
    let mib: u64 = std::env::var("LIFEBOAT_RESTORE_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    let keys = master().keys();
    let mut disk = Disk::new("big", mib << 20, 65536, 512);
    Rng(0x1234_5678_9abc_def1).fill(&mut disk.image);
    let blocks: Vec<u64> = (0..disk.geometry.block_count).collect();
    let t = Instant::now();
    disk.ship(&vault, &keys, &mut BlockIndex::new(), &blocks);
    let size = disk.image.len() as u64;
    println!("shipped {mib} MiB in {:.2} s (test helper, one thread)", t.elapsed().as_secs_f64());

    // LIFEBOAT_RESTORE_OUT=/dev/shm puts the image in memory, to measure the
    // restore without the output disk's speed.
    let out_dir = std::env::var_os("LIFEBOAT_RESTORE_OUT").map_or_else(|| dir.path().to_owned(), Into::into);
    let out_tmp = tempfile::tempdir_in(&out_dir).unwrap();
    let path = out_tmp.path().join("restored.img");
    let out = std::fs::File::create(&path).unwrap();
    let (t, cpu) = (Instant::now(), cpu_secs());
    let mut calls = 0u64;
    let report = vault.restore("big", 1, &keys, &out, &mut vault::Callback::new(|_, _, _| calls += 1)).unwrap();
    let (secs, cpu) = (t.elapsed().as_secs_f64(), cpu_secs() - cpu);
    println!(
        "restore: {} wall, {} per CPU-second ({:.2} s, {:.2} CPU-s; {} packs, {} backend reads, {} MB read; {} \
         progress calls)",
        mbs(size, secs),
        mbs(size, cpu),
        secs,
        cpu,
        report.packs_read,
        report.pack_reads,
        report.pack_bytes_read / 1_000_000,
        calls
    );
    assert_eq!(report.bytes_written, size);
    let got = std::fs::read(&path).unwrap();
    assert!(got == disk.image, "restored image differs");
    drop(got);
    std::fs::remove_file(&path).unwrap();

    // The parts, one thread each.
    {
        use std::os::unix::fs::FileExt;
        let path = out_tmp.path().join("floor.img");
        let out = std::fs::File::create(&path).unwrap();
        out.set_len(size).unwrap();
        let t = Instant::now();
        for (i, chunk) in disk.image.chunks(65536).enumerate() {
            out.write_all_at(chunk, i as u64 * 65536).unwrap();
        }
        let written = t.elapsed().as_secs_f64();
        out.sync_all().unwrap();
        let synced = t.elapsed().as_secs_f64();
        println!(
            "output floor: pwrite 64 KiB blocks:  {} ({written:.2} s), + sync_all: {} ({synced:.2} s)",
            mbs(size, written),
            mbs(size, synced)
        );
        std::fs::remove_file(&path).unwrap();
    }
    let backend = vault.backend();
    let packs = backend.list(Kind::Pack, "").unwrap();
    let t = Instant::now();
    let mut whole = 0u64;
    for p in &packs {
        whole += backend.get(Kind::Pack, p).unwrap().len() as u64;
    }
    println!("read every pack whole (get):         {}", mbs(whole, t.elapsed().as_secs_f64()));
    let index = vault.block_index().unwrap();
    let t = Instant::now();
    let mut n = 0u64;
    for p in &packs {
        let id = disk_format::PackId::from_hex(p).unwrap();
        let len = index.pack_len(&id).unwrap();
        let bytes = backend.get(Kind::Pack, p).unwrap();
        let pack = disk_format::Pack::parse(&bytes).unwrap();
        for e in pack.index().entries() {
            n += backend.get_range(Kind::Pack, p, e.offset, u64::from(e.blob_len)).unwrap().len() as u64;
        }
        assert!(len == bytes.len() as u64);
    }
    println!("read every blob by get_range:        {} ({} calls)", mbs(n, t.elapsed().as_secs_f64()), index.len());
    let t = Instant::now();
    let bytes = backend.get(Kind::Pack, &packs[0]).unwrap();
    let pack = disk_format::Pack::parse(&bytes).unwrap();
    let mut opened = 0u64;
    for i in 0..pack.index().entries().len() {
        let (e, blob) = pack.blob(i).unwrap();
        opened += keys.open_block(pack.index().cipher(), &e.id, blob).unwrap().len() as u64;
    }
    println!("open_block (AEAD + id), one pack:    {}", mbs(opened, t.elapsed().as_secs_f64()));
    // The keyless scrub of one pack: its name (BLAKE3 of header, index and
    // trailer) and every blob's CRC-32 (pack format 2).
    let t = Instant::now();
    pack.check_id(&disk_format::PackId::from_hex(&packs[0]).unwrap()).unwrap();
    assert!(pack.check_checksums().is_empty());
    println!("keyless pack check (name + CRCs):    {}", mbs(bytes.len() as u64, t.elapsed().as_secs_f64()));
}
