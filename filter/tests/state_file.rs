//! The state file at run time: clean and unclean shutdowns, suspect states,
//! and refusal of damaged files (which must be left exactly as found).

#![allow(clippy::cast_possible_truncation)] // test sizes are small

use std::path::{Path, PathBuf};

use disk_format::{Geometry, StateHeader, HEADER_PAGE};
use filter::disk::DiskPaths;
use filter::nbd::Export;
use filter::{Disk, FilterError, StateFile};

fn setup(dir: &Path, size: u64, bs: u64) -> DiskPaths {
    let image = dir.join("disk.img");
    std::fs::write(&image, vec![0u8; size as usize]).unwrap();
    let state = dir.join("state");
    StateFile::create(&state, Geometry::new(size, bs).unwrap(), [1; 16], false).unwrap();
    DiskPaths { image, state, scratch: dir.join("scratch") }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../disk-format/tests/fixtures/state-v1").join(name)
}

/// Rewrites the current header slot in place (as a crashed or older writer would have left it).
fn edit_header(state: &Path, f: impl FnOnce(&mut StateHeader)) {
    let mut bytes = std::fs::read(state).unwrap();
    let (mut h, slot) = StateHeader::read_page(&bytes[..HEADER_PAGE]).unwrap();
    f(&mut h);
    h.write_next(&mut bytes[..HEADER_PAGE], slot);
    std::fs::write(state, bytes).unwrap();
}

#[test]
fn writes_are_recorded_and_a_clean_close_is_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let paths = setup(dir.path(), 10 * 65536 + 123, 65536);
    let disk = Disk::open(paths.clone()).unwrap();
    disk.write_at(&[1; 10], 65536 * 3 + 65530, false).unwrap(); // spans blocks 3 and 4
    disk.write_at(&[2; 3], 10 * 65536 + 120, true).unwrap(); // the short last block
    disk.trim(0, 1, false).unwrap();
    disk.write_zeroes(65536 * 7, 65536, true, false).unwrap();
    let live: Vec<u64> = disk.state().live().ones().collect();
    assert_eq!(live, vec![0, 3, 4, 7, 10]);
    let r = StateFile::report(&paths.state).unwrap();
    assert!(r.open && !r.suspect);
    disk.close().unwrap();
    let r = StateFile::report(&paths.state).unwrap();
    assert_eq!(r.dirty_blocks, vec![0, 3, 4, 7, 10]);
    assert!(!r.open && !r.suspect);
    let disk = Disk::open(paths).unwrap();
    assert!(!disk.state().opened().was_unclean && !disk.state().opened().suspect);
    assert_eq!(disk.state().live().count(), 5);
}

#[test]
fn a_process_crash_in_this_boot_keeps_the_bitmap_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let paths = setup(dir.path(), 1 << 20, 4096);
    let disk = Disk::open(paths.clone()).unwrap();
    disk.write_at(&[9; 4096], 4096 * 17, false).unwrap();
    std::mem::forget(disk); // no close: as if killed (the lock leaks with it; see below)
                            // The forgotten Disk still holds its flock on the old descriptor, so open a
                            // copy of the files, as a restarted process would find them.
    let copy = tempfile::tempdir().unwrap();
    let paths2 = DiskPaths {
        image: copy.path().join("disk.img"),
        state: copy.path().join("state"),
        scratch: copy.path().join("scratch"),
    };
    std::fs::copy(&paths.image, &paths2.image).unwrap();
    std::fs::copy(&paths.state, &paths2.state).unwrap();
    let disk = Disk::open(paths2).unwrap();
    let o = disk.state().opened();
    assert!(o.was_unclean && !o.suspect, "{o:?}");
    assert_eq!(disk.state().live().ones().collect::<Vec<_>>(), vec![17]);
}

#[test]
fn a_host_crash_makes_the_state_suspect_and_every_block_dirty() {
    let dir = tempfile::tempdir().unwrap();
    let paths = setup(dir.path(), 1 << 20, 65536);
    Disk::open(paths.clone()).unwrap().close().unwrap();
    // Open, in another boot, and never closed.
    edit_header(&paths.state, |h| {
        h.flags.open = true;
        h.boot_id = *b"an-earlier-boot!";
    });
    let r = StateFile::report(&paths.state).unwrap();
    assert!(r.suspect);
    assert_eq!(r.dirty_blocks.len(), 16);
    let disk = Disk::open(paths.clone()).unwrap();
    let o = disk.state().opened();
    assert!(o.was_unclean && o.suspect && o.newly_suspect, "{o:?}");
    assert_eq!(disk.state().live().count(), 16);
    disk.close().unwrap();
    // Suspect is sticky across clean closes until a verify clears it.
    let disk = Disk::open(paths.clone()).unwrap();
    assert!(disk.state().opened().suspect && !disk.state().opened().newly_suspect);
    disk.state().clear_suspect().unwrap();
    disk.close().unwrap();
    assert!(!StateFile::report(&paths.state).unwrap().suspect);
}

#[test]
fn a_bitmap_changed_behind_a_clean_header_is_suspect() {
    let dir = tempfile::tempdir().unwrap();
    let paths = setup(dir.path(), 1 << 20, 65536);
    Disk::open(paths.clone()).unwrap().close().unwrap();
    let mut bytes = std::fs::read(&paths.state).unwrap();
    bytes[HEADER_PAGE] ^= 0b100; // as if a page of the bitmap came back different
    std::fs::write(&paths.state, bytes).unwrap();
    assert!(StateFile::report(&paths.state).unwrap().suspect);
    assert!(Disk::open(paths).unwrap().state().opened().newly_suspect);
}

#[test]
fn a_second_opener_is_refused_while_the_disk_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let paths = setup(dir.path(), 1 << 20, 65536);
    let _held = Disk::open(paths.clone()).unwrap();
    assert!(matches!(Disk::open(paths), Err(FilterError::Locked { .. })));
}

/// Issue 12, hole 4: one image behind two state files (two names, or two
/// homes) is served by one `Disk` at a time: the second is refused on
/// QEMU's image lock, before its state file is touched, and a lock-free
/// reopen of the first (the direct reader's) conflicts with nothing.
#[test]
fn issue12_the_same_image_under_another_state_file_is_refused_while_held() {
    let dir = tempfile::tempdir().unwrap();
    let paths = setup(dir.path(), 1 << 20, 65536);
    let held = Disk::open(paths.clone()).unwrap();
    let other_state = dir.path().join("state2");
    StateFile::create(&other_state, Geometry::new(1 << 20, 65536).unwrap(), [2; 16], false).unwrap();
    let before = std::fs::read(&other_state).unwrap();
    let other = DiskPaths { image: paths.image.clone(), state: other_state.clone(), scratch: dir.path().join("s2") };
    let e = Disk::open(other.clone()).err().expect("a second Disk on the same image was opened");
    assert!(matches!(e, FilterError::ImageInUse { .. }), "{e}");
    assert!(e.to_string().contains(&paths.image.display().to_string()), "{e}");
    assert_eq!(std::fs::read(&other_state).unwrap(), before, "the refused open changed its state file");
    let _reader = held.reopen_image(false).unwrap();
    held.close().unwrap();
    // The lock went with the first Disk.
    Disk::open(other).unwrap().close().unwrap();
}

#[test]
fn a_resized_image_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let paths = setup(dir.path(), 1 << 20, 65536);
    std::fs::OpenOptions::new().write(true).open(&paths.image).unwrap().set_len(2 << 20).unwrap();
    let e = Disk::open(paths).err().expect("refused");
    assert!(matches!(e, FilterError::ImageSize { size: 2097152, want: 1048576, .. }), "{e}");
}

/// Every corrupt fixture is refused by both the filter and the report, with
/// an error that names the file, and the file is not modified.
#[test]
fn corrupt_fixtures_are_refused_and_left_unchanged() {
    type Expect = fn(&FilterError) -> bool;
    let cases: [(&str, Expect); 6] = [
        ("bitmap-padding-bit.state", |e| matches!(e, FilterError::BitmapOverflow { which: "cut", .. })),
        ("bad-magic.state", |e| matches!(e, FilterError::Header { source: disk_format::HeaderError::BadMagic, .. })),
        ("both-slots-damaged.state", |e| matches!(e, FilterError::Header { .. })),
        ("header-only.state", |e| matches!(e, FilterError::Header { .. })),
        ("truncated.state", |e| matches!(e, FilterError::WrongLength { len: 8192, want: 12288, .. })),
        ("bitmap-past-end.state", |e| matches!(e, FilterError::BitmapOverflow { which: "live", .. })),
    ];
    for (name, expect) in cases {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::copy(fixture(name), &state).unwrap();
        let image = dir.path().join("disk.img");
        std::fs::write(&image, vec![0u8; 655_483]).unwrap();
        let before = std::fs::read(&state).unwrap();
        let paths = DiskPaths { image, state: state.clone(), scratch: dir.path().join("scratch") };
        let e = Disk::open(paths).err().unwrap_or_else(|| panic!("{name} was accepted"));
        assert!(expect(&e), "{name}: unexpected error {e:?}");
        assert!(e.to_string().contains(&state.display().to_string()), "{name}: error does not name the file: {e}");
        let e = StateFile::report(&state).err().unwrap_or_else(|| panic!("{name} was reported"));
        assert!(expect(&e), "{name}: report gave {e:?}");
        assert_eq!(std::fs::read(&state).unwrap(), before, "{name} was modified");
    }
}

#[test]
fn the_golden_file_opens_with_its_cut_merged_back() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::copy(fixture("golden.state"), &state).unwrap();
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![0u8; 655_483]).unwrap();
    let r = StateFile::report(&state).unwrap();
    assert_eq!(r.dirty_blocks, vec![0, 3, 5, 10]);
    assert!(!r.suspect && !r.open);
    let disk = Disk::open(DiskPaths { image, state, scratch: dir.path().join("scratch") }).unwrap();
    assert_eq!(disk.state().live().ones().collect::<Vec<_>>(), vec![0, 3, 5, 10]);
    assert_eq!(disk.state().cut().count(), 0);
    assert_eq!(disk.state().header().cut_generation, 5);
}
