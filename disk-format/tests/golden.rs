//! Golden vectors and corrupt fixtures of the state file format, checked in
//! under `tests/fixtures/state-v2/`. The bytes are what FORMAT.md describes;
//! if this test fails after a code change, the change altered the format.
//! The version 1 fixtures under `tests/fixtures/state-v1/` are frozen: this
//! build must still read them as before.
//!
//! To regenerate after an intended, versioned format change:
//! `LIFEBOAT_BLESS=1 cargo test -p disk-format --test golden`.

use std::path::PathBuf;

use disk_format::state::{bitmaps_checksum, SLOT_OFFSETS};
use disk_format::{Geometry, HeaderError, LastPoint, RootId, StateHeader, VaultId, HEADER_PAGE};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-v2")
}

fn frozen_v1() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-v1")
}

/// The last point recorded in the golden file's current slot.
fn golden_last_point() -> LastPoint {
    LastPoint {
        vault_id: VaultId(*b"lifeboat-vault01"),
        sequence: 17,
        root_id: RootId(*b"root-id-of-point-17-0123456789ab"),
        cut_generation: 5,
    }
}

/// A disk of 10 full 64 KiB blocks and one 123-byte block; live bits {0, 3,
/// 10}, cut bit {5}; written twice, so slot B (seq 2) is current: cleanly
/// closed at cut generation 5 with point 17 recorded, slot A (seq 1) still
/// says open at generation 4 with no point.
fn golden() -> Vec<u8> {
    let g = Geometry::new(10 * 65536 + 123, 65536).unwrap();
    let live = [(1u64 << 0) | (1 << 3) | (1 << 10)];
    let cut = [1u64 << 5];
    let mut h = StateHeader::new(g, *b"lifeboat-disk-01", 1_790_000_000);
    h.boot_id = *b"boot-0123456789a";
    h.cut_generation = 4;
    h.flags.open = true;
    let mut file = h.initial_page();
    h.cut_generation = 5;
    h.flags.open = false;
    h.bitmaps_checksum = bitmaps_checksum(&live, &cut);
    h.last_point = Some(golden_last_point());
    assert_eq!(h.write_next(&mut file, 0), 1);
    file.resize(usize::try_from(g.state_file_len()).unwrap(), 0);
    file[HEADER_PAGE..HEADER_PAGE + 8].copy_from_slice(&live[0].to_le_bytes());
    let cut_at = usize::try_from(g.cut_offset()).unwrap();
    file[cut_at..cut_at + 8].copy_from_slice(&cut[0].to_le_bytes());
    file
}

/// Each corrupt fixture: its name, how it is made from the golden file.
fn corrupt() -> Vec<(&'static str, Vec<u8>)> {
    let good = golden();
    let g = Geometry::new(10 * 65536 + 123, 65536).unwrap();
    let mut out = Vec::new();
    let mut f = good.clone();
    f[SLOT_OFFSETS[0]] ^= 0xff;
    f[SLOT_OFFSETS[1]] ^= 0xff;
    out.push(("bad-magic.state", f));
    let mut f = good.clone();
    f[SLOT_OFFSETS[0] + 30] ^= 0x01;
    f[SLOT_OFFSETS[1] + 30] ^= 0x01;
    out.push(("both-slots-damaged.state", f));
    let mut f = good.clone();
    f[SLOT_OFFSETS[1] + 100] ^= 0x40; // the newer slot torn: readers fall back to slot A
    out.push(("newer-slot-torn.state", f));
    out.push(("truncated.state", good[..usize::try_from(g.state_file_len()).unwrap() - 4096].to_vec()));
    out.push(("header-only.state", good[..1000].to_vec()));
    let mut f = good.clone();
    f[HEADER_PAGE + 1] |= 0x80; // bit 15 of the live map: block 15 of an 11-block disk
    out.push(("bitmap-past-end.state", f));
    let mut f = good.clone();
    let cut_at = usize::try_from(g.cut_offset()).unwrap();
    f[cut_at + 8 * 5] = 1; // a bit in padding word 5 of the cut map: block 320
    out.push(("bitmap-padding-bit.state", f));
    out
}

#[test]
fn fixtures_are_the_bytes_the_code_writes() {
    let bless = std::env::var_os("LIFEBOAT_BLESS").is_some();
    let mut all = vec![("golden.state", golden())];
    all.extend(corrupt());
    for (name, bytes) in all {
        let path = fixtures().join(name);
        if bless {
            std::fs::write(&path, &bytes).unwrap();
        }
        let on_disk = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(on_disk == bytes, "{name} differs from what the code writes: the format changed");
    }
}

#[test]
fn golden_header_decodes_to_known_values() {
    let file = std::fs::read(fixtures().join("golden.state")).unwrap();
    let (h, slot) = StateHeader::read_page(&file[..HEADER_PAGE]).unwrap();
    assert_eq!(slot, 1);
    assert_eq!(h.seq, 2);
    assert_eq!(h.geometry.disk_size, 655_483);
    assert_eq!(h.geometry.block_size, 65536);
    assert_eq!(h.geometry.block_count, 11);
    assert_eq!(h.cut_generation, 5);
    assert!(!h.flags.open && !h.flags.suspect);
    assert_eq!(&h.disk_id, b"lifeboat-disk-01");
    assert_eq!(h.created_unix, 1_790_000_000);
    assert_eq!(h.bitmaps_checksum, bitmaps_checksum(&[0b100_0000_1001], &[1 << 5]));
    assert_eq!(h.last_point, Some(golden_last_point()));
    // Field offsets as FORMAT.md gives them, read straight from the bytes.
    let b = &file[2048..2048 + 256];
    assert_eq!(&b[0..8], &disk_format::STATE_MAGIC);
    assert_eq!(u16::from_le_bytes([b[8], b[9]]), 2);
    assert_eq!(&b[152..168], b"lifeboat-vault01");
    assert_eq!(u64::from_le_bytes(b[168..176].try_into().unwrap()), 17);
    assert_eq!(&b[176..208], b"root-id-of-point-17-0123456789ab");
    assert_eq!(u64::from_le_bytes(b[208..216].try_into().unwrap()), 5);
    assert_eq!(&b[216..224], &[0; 8]);
    assert_eq!(u64::from_le_bytes(b[24..32].try_into().unwrap()), 655_483);
    assert_eq!(u32::from_le_bytes(b[32..36].try_into().unwrap()), 65536);
    assert_eq!(u64::from_le_bytes(b[72..80].try_into().unwrap()), 5);
    assert_eq!(&b[224..256], blake3::hash(&b[..224]).as_bytes());
}

#[test]
fn corrupt_headers_are_refused_with_the_right_error() {
    let read = |name: &str| {
        let f = std::fs::read(fixtures().join(name)).unwrap();
        StateHeader::read_page(&f[..f.len().min(HEADER_PAGE)])
    };
    assert_eq!(read("bad-magic.state"), Err(HeaderError::BadMagic));
    assert!(matches!(read("both-slots-damaged.state"), Err(HeaderError::BothSlotsBad(..))));
    assert_eq!(read("header-only.state"), Err(HeaderError::TooShort(1000)));
    // A torn newer copy is not an error: the older copy is current.
    let (h, slot) = read("newer-slot-torn.state").unwrap();
    assert_eq!((slot, h.seq, h.cut_generation, h.flags.open), (0, 1, 4, true));
}

#[test]
fn frozen_version_1_files_still_read_and_have_no_last_point() {
    let file = std::fs::read(frozen_v1().join("golden.state")).unwrap();
    let (h, slot) = StateHeader::read_page(&file[..HEADER_PAGE]).unwrap();
    assert_eq!((slot, h.seq, h.cut_generation, h.flags.open), (1, 2, 5, false));
    assert_eq!(h.last_point, None, "a version 1 file records no point: the next cycle verifies the whole disk");
    let read = |name: &str| {
        let f = std::fs::read(frozen_v1().join(name)).unwrap();
        StateHeader::read_page(&f[..f.len().min(HEADER_PAGE)])
    };
    assert_eq!(read("bad-magic.state"), Err(HeaderError::BadMagic));
    assert!(matches!(read("both-slots-damaged.state"), Err(HeaderError::BothSlotsBad(..))));
    let (h, slot) = read("newer-slot-torn.state").unwrap();
    assert_eq!((slot, h.seq, h.cut_generation, h.flags.open), (0, 1, 4, true));
}
