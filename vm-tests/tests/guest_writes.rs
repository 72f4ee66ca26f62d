//! A real Linux guest writes through `lifeboat filter`, and the dirty bitmap
//! marks exactly what it wrote.
//!
//! The host makes an image with an ext4 filesystem in its first 32 MiB and a
//! raw tail of known pseudo-random bytes, protects it, and boots a guest
//! (Debian cloud kernel + busybox initramfs, QEMU TCG) whose virtio disk is the
//! filter's NBD export. The guest
//!
//! 1. mounts the ext4 filesystem, writes files with known content, syncs and
//!    unmounts it;
//! 2. writes known patterns with `dd` at known, unaligned offsets in the tail;
//! 3. powers off.
//!
//! The host then stops the filter with SIGTERM and checks: the pattern bytes
//! are in the image; `debugfs -R "dump ..."` returns each file's content and
//! `e2fsck -fn` finds the filesystem clean; and `lifeboat dirty --json` marks
//! every block that differs from the original image and every pattern block,
//! while in the tail no other block is dirty.
//!
//! These tests boot a VM, so they are `#[ignore]`d in the quick pass and run
//! by `scripts/test.sh --full` (`cargo nextest run --run-ignored all`).

// Test code for 64-bit hosts: offsets and sizes fit usize; pattern bytes are reduced mod 251.
#![allow(clippy::cast_possible_truncation)]

use std::collections::BTreeSet;
use std::fs;
use std::process::Command;
use std::time::Duration;

use vm_tests::initramfs::{self, GuestFile};
use vm_tests::lifeboat::Scratch;
use vm_tests::process::assert_ok;
use vm_tests::qemu::Vm;
use vm_tests::{blocks_of, paths, pseudo_random};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// The ext4 filesystem occupies [0, FS_SIZE); the raw tail is the rest.
const FS_SIZE: u64 = 32 * MIB;
/// Not a multiple of 64 KiB: the last 64 KiB block is 12 KiB long.
const DISK_SIZE: u64 = 64 * MIB + 12 * KIB;

/// Files the guest writes into ext4: (guest path under /mnt, content).
fn ext4_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("lb/f1.bin", pseudo_random((3 * MIB + 1234) as usize, 101)),
        ("lb/sub/hello.txt", b"hello from the guest, through lifeboat filter\n".repeat(37)),
        ("lb/f3.bin", pseudo_random((700 * KIB) as usize, 103)),
    ]
}

/// Pattern writes into the tail: (offset, length). Unaligned on purpose; the
/// last one ends at the disk's last byte.
fn patterns() -> Vec<(u64, u64)> {
    vec![
        (FS_SIZE, 4096),                        // the tail's first block
        (FS_SIZE + 3 * 64 * KIB + 777, 1500),   // inside one block, unaligned
        (40 * MIB - 1000, 2000),                // spans a 64 KiB boundary
        (48 * MIB + 4096, MIB + 3 * 4096 + 17), // many blocks
        (DISK_SIZE - 4096 - 300, 4096 + 300),   // the disk's very end
    ]
}

fn guest_script() -> String {
    let mut s = String::from("echo '@@LB STEP start'\n");
    s.push_str("mount -t ext4 /dev/vda /mnt\nmkdir -p /mnt/lb/sub\n");
    for (i, (path, _)) in ext4_files().iter().enumerate() {
        s.push_str(&format!("cp /data/f{i} /mnt/{path}\n"));
    }
    s.push_str("sync\numount /mnt\necho '@@LB STEP ext4'\n");
    for (i, (off, len)) in patterns().iter().enumerate() {
        s.push_str(&format!(
            "dd if=/data/p{i} of=/dev/vda bs={len} count=1 seek={off} iflag=fullblock oflag=seek_bytes \
             conv=notrunc,fsync status=none\n"
        ));
    }
    s.push_str("sync\necho '@@LB STEP pattern'\n");
    s
}

fn pattern_data(i: usize, len: u64) -> Vec<u8> {
    pseudo_random(len as usize, 1000 + i as u64)
}

fn run_case(block_size: u64, export: &str) {
    let scratch = Scratch::new(paths::lifeboat_bin(), "lb-vm-");
    let dir = scratch.dir();
    let kernel = paths::kernel();

    // The image: ext4 in the first 32 MiB, pseudo-random bytes in the tail.
    let image = dir.join("disk.img");
    fs::File::create(&image).unwrap().set_len(DISK_SIZE).unwrap();
    let mkfs = Command::new(paths::tool("mkfs.ext4"))
        .args(["-q", "-F", "-b", "4096", "-L", "lbtest"])
        .args(["-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard"])
        .arg(&image)
        .arg(format!("{}k", FS_SIZE / KIB))
        .output()
        .unwrap();
    assert_ok(&mkfs, "mkfs.ext4");
    let mut original = fs::read(&image).unwrap();
    original[FS_SIZE as usize..].copy_from_slice(&pseudo_random((DISK_SIZE - FS_SIZE) as usize, 77));
    fs::write(&image, &original).unwrap();

    let home = &scratch.home;
    home.protect("vm", &image, block_size);
    let before = home.dirty("vm");
    assert!(before.dirty_blocks.is_empty() && !before.suspect, "fresh protection is not clean: {before:?}");

    // The guest.
    let mut files: Vec<GuestFile> = ext4_files()
        .into_iter()
        .enumerate()
        .map(|(i, (_, data))| GuestFile { path: format!("/data/f{i}"), data })
        .collect();
    for (i, &(_, len)) in patterns().iter().enumerate() {
        files.push(GuestFile { path: format!("/data/p{i}"), data: pattern_data(i, len) });
    }
    let initrd = initramfs::build(&kernel, dir, &guest_script(), &files);

    let sock = dir.join("vm.sock");
    let mut filter = home.filter("vm", &sock);
    let vm = Vm {
        kernel,
        initrd,
        socket: sock,
        export: export.to_string(),
        timeout: Duration::from_secs(300),
        qmp: None,
        qga: None,
        ignore_power_button: false,
    };
    let transcript = vm.run();
    let steps = transcript.assert_success();
    assert_eq!(steps, ["start", "ext4", "pattern"], "guest steps\n{}", transcript.console_text());
    let ready = transcript.markers.iter().find(|m| m.word == "READY").unwrap();
    assert_eq!(ready.args, (DISK_SIZE / 512).to_string(), "the guest saw a disk of the wrong size");
    eprintln!("guest ran {:?} under {}", transcript.elapsed, transcript.accel);

    assert!(filter.running(), "the filter died while serving the guest:\n{}", filter.log());
    let st = filter.terminate();
    assert!(st.success(), "filter exit after SIGTERM: {st}\n{}", filter.log());

    // The data.
    let img = fs::read(&image).unwrap();
    assert_eq!(img.len() as u64, DISK_SIZE, "the image changed size");
    for (i, &(off, len)) in patterns().iter().enumerate() {
        let got = &img[off as usize..(off + len) as usize];
        assert!(got == pattern_data(i, len).as_slice(), "pattern {i} at {off}+{len} is not in the image");
    }
    for (path, data) in ext4_files() {
        let out = dir.join("dumped");
        let _ = fs::remove_file(&out);
        let cmd = format!("dump /{path} {}", out.display());
        let o = Command::new(paths::tool("debugfs")).args(["-R", &cmd]).arg(&image).output().unwrap();
        assert_ok(&o, &format!("debugfs -R {cmd:?}"));
        let got = fs::read(&out)
            .unwrap_or_else(|e| panic!("debugfs did not dump /{path} ({e}): {}", String::from_utf8_lossy(&o.stderr)));
        assert!(got == data, "/{path} in the guest's ext4 has the wrong content ({} bytes)", got.len());
    }
    let fsck = Command::new(paths::tool("e2fsck")).arg("-fn").arg(&image).output().unwrap();
    assert_ok(&fsck, "e2fsck -fn of the guest's ext4");

    // The bitmap.
    let dirty = home.dirty("vm");
    assert_eq!((dirty.block_size, dirty.disk_size), (block_size, DISK_SIZE));
    assert!(!dirty.suspect, "the state is suspect after a clean stop");
    let nblocks = DISK_SIZE.div_ceil(block_size);
    let changed: BTreeSet<u64> = (0..nblocks)
        .filter(|&b| {
            let r = (b * block_size) as usize..((b + 1) * block_size).min(DISK_SIZE) as usize;
            img[r.clone()] != original[r]
        })
        .collect();
    let missed: Vec<&u64> = changed.difference(&dirty.dirty_blocks).collect();
    assert!(missed.is_empty(), "blocks the guest changed are not dirty: {missed:?}");
    let pattern_blocks: BTreeSet<u64> =
        patterns().iter().flat_map(|&(off, len)| blocks_of(off, len, block_size)).collect();
    let missed: Vec<&u64> = pattern_blocks.difference(&dirty.dirty_blocks).collect();
    assert!(missed.is_empty(), "pattern blocks are not dirty: {missed:?}");
    let first_tail = FS_SIZE / block_size;
    let tail_dirty: BTreeSet<u64> = dirty.dirty_blocks.iter().copied().filter(|&b| b >= first_tail).collect();
    assert_eq!(tail_dirty, pattern_blocks, "dirty blocks in the raw tail, which only the patterns touched");
    assert!(
        dirty.dirty_blocks.iter().any(|&b| b < first_tail) && changed.iter().any(|&b| b < first_tail),
        "the ext4 workload changed nothing"
    );
    eprintln!(
        "{} KiB blocks: {} dirty ({} in ext4, {} pattern), {} changed",
        block_size / KIB,
        dirty.dirty_blocks.len(),
        dirty.dirty_blocks.len() - tail_dirty.len(),
        tail_dirty.len(),
        changed.len()
    );
}

#[test]
#[ignore = "boots a VM (full pass only): scripts/test.sh --full"]
fn guest_ext4_and_pattern_writes_are_all_dirty_64k_blocks_named_export() {
    run_case(64 * KIB, "vm");
}

#[test]
#[ignore = "boots a VM (full pass only): scripts/test.sh --full"]
fn guest_ext4_and_pattern_writes_are_all_dirty_4k_blocks_default_export() {
    run_case(4 * KIB, "");
}
