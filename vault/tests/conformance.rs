//! The backend conformance suite: the contract of `vault::Backend`, run
//! against every implementation (today the local directory; the receiver and
//! object stores join when they exist).

use vault::{Backend, Kind, LocalBackend, VaultError};

fn suite(b: &dyn Backend) {
    put_get_round_trip(b);
    missing_objects(b);
    ranges(b);
    replace_is_whole(b);
    listing(b);
    names_cannot_escape(b);
    kinds_are_separate(b);
    streamed_objects(b);
    discarding(b);
}

/// `discard` removes an object from the namespace at once, like `delete`;
/// `empty_trash` frees it (and only discarded objects).
fn discarding(b: &dyn Backend) {
    let data = vec![7u8; 10_000];
    b.put(Kind::Pack, "dd01", &data).unwrap();
    b.put(Kind::Pack, "dd02", b"kept").unwrap();
    b.put(Kind::Root, "trashy/00000000000000000001", b"root").unwrap();
    b.discard(Kind::Pack, "dd01").unwrap();
    b.discard(Kind::Root, "trashy/00000000000000000001").unwrap();
    assert!(!b.list(Kind::Pack, "dd").unwrap().contains(&"dd01".to_string()));
    assert!(b.list(Kind::Root, "trashy/").unwrap().is_empty());
    assert!(matches!(b.get(Kind::Pack, "dd01"), Err(VaultError::NotFound { .. })));
    assert_eq!(b.size(Kind::Pack, "dd01").unwrap(), None);
    assert!(matches!(b.discard(Kind::Pack, "dd01"), Err(VaultError::NotFound { .. })));
    assert!(matches!(b.discard(Kind::Page, "ffee"), Err(VaultError::NotFound { .. })));
    assert!(matches!(b.discard(Kind::Root, "../x"), Err(VaultError::BadName { .. })));
    // The same name written again (a cycle writes the same pack again) is a
    // new object, untouched by the trash; discarded again, both go.
    b.put(Kind::Pack, "dd01", b"again").unwrap();
    assert_eq!(b.get(Kind::Pack, "dd01").unwrap(), b"again");
    let (objects, bytes) = b.empty_trash().unwrap();
    assert!(objects == 0 || (objects == 2 && bytes == 10_004), "freed {objects} objects, {bytes} bytes");
    assert_eq!(b.get(Kind::Pack, "dd01").unwrap(), b"again");
    assert_eq!(b.get(Kind::Pack, "dd02").unwrap(), b"kept");
    b.discard(Kind::Pack, "dd01").unwrap();
    b.empty_trash().unwrap();
    assert_eq!(b.empty_trash().unwrap(), (0, 0), "an empty trash frees nothing");
    assert!(matches!(b.get(Kind::Pack, "dd01"), Err(VaultError::NotFound { .. })));
    b.delete(Kind::Pack, "dd02").unwrap();
}

/// `bytes` copied to a 4096-aligned address (what the shipper's chunks are).
fn aligned_copy(bytes: &[u8]) -> (Vec<u8>, usize) {
    let mut v = vec![0u8; bytes.len() + vault::DIRECT_ALIGN];
    let at = v.as_ptr().align_offset(vault::DIRECT_ALIGN);
    v[at..at + bytes.len()].copy_from_slice(bytes);
    (v, at)
}

fn streamed_objects(b: &dyn Backend) {
    let Some(mut w) = b.writer(Kind::Pack).unwrap() else { return };
    let data: Vec<u8> = (0..20_000u32).map(|i| (i * 13 % 253) as u8).collect();
    // Aligned at an aligned offset (may bypass the page cache), then
    // unaligned, then an aligned piece at an unaligned offset.
    let (a, at) = aligned_copy(&data[..8192]);
    w.write(&a[at..at + 8192]).unwrap();
    w.write(&data[8192..9192]).unwrap();
    let (c, at) = aligned_copy(&data[9192..13_288]);
    w.write(&c[at..at + 4096]).unwrap();
    w.write(&data[13_288..]).unwrap();
    // Not visible before the commit.
    assert!(b.list(Kind::Pack, "ab77").unwrap().is_empty());
    assert!(matches!(b.get(Kind::Pack, "ab77"), Err(VaultError::NotFound { .. })));
    w.commit("ab77").unwrap();
    assert_eq!(b.get(Kind::Pack, "ab77").unwrap(), data);

    // A commit replaces an object of that name whole.
    let mut w = b.writer(Kind::Pack).unwrap().unwrap();
    let (a, at) = aligned_copy(&data[..4096]);
    w.write(&a[at..at + 4096]).unwrap();
    w.commit("ab77").unwrap();
    assert_eq!(b.get(Kind::Pack, "ab77").unwrap(), &data[..4096]);

    // Dropped, or committed under a bad name: nothing appears.
    let before = b.list(Kind::Pack, "").unwrap();
    let mut w = b.writer(Kind::Pack).unwrap().unwrap();
    w.write(&data).unwrap();
    drop(w);
    let mut w = b.writer(Kind::Pack).unwrap().unwrap();
    w.write(&data).unwrap();
    assert!(matches!(w.commit("../escape"), Err(VaultError::BadName { .. })));
    assert_eq!(b.list(Kind::Pack, "").unwrap(), before);
}

fn put_get_round_trip(b: &dyn Backend) {
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    b.put(Kind::Pack, "ab01", &big).unwrap();
    assert_eq!(b.get(Kind::Pack, "ab01").unwrap(), big);
    assert_eq!(b.size(Kind::Pack, "ab01").unwrap(), Some(big.len() as u64));
    b.put(Kind::Root, "disk1/00000000000000000001", b"").unwrap();
    assert_eq!(b.get(Kind::Root, "disk1/00000000000000000001").unwrap(), b"");
}

fn missing_objects(b: &dyn Backend) {
    assert!(matches!(b.get(Kind::Page, "ffee"), Err(VaultError::NotFound { kind: Kind::Page, .. })));
    assert!(matches!(b.get_range(Kind::Page, "ffee", 0, 1), Err(VaultError::NotFound { .. })));
    assert_eq!(b.size(Kind::Page, "ffee").unwrap(), None);
    assert!(matches!(b.delete(Kind::Page, "ffee"), Err(VaultError::NotFound { .. })));
}

fn ranges(b: &dyn Backend) {
    b.put(Kind::Pack, "cd02", b"0123456789").unwrap();
    assert_eq!(b.get_range(Kind::Pack, "cd02", 3, 4).unwrap(), b"3456");
    assert_eq!(b.get_range(Kind::Pack, "cd02", 10, 0).unwrap(), b"");
    let e = b.get_range(Kind::Pack, "cd02", 8, 4).unwrap_err();
    assert!(matches!(e, VaultError::ShortObject { size: 10, offset: 8, end: 12, .. }), "{e}");
    assert!(e.to_string().contains("cd02"), "error names the object: {e}");
    assert!(matches!(b.get_range(Kind::Pack, "cd02", u64::MAX, 2), Err(VaultError::ShortObject { .. })));
}

fn replace_is_whole(b: &dyn Backend) {
    b.put(Kind::Config, "config", b"first version").unwrap();
    b.put(Kind::Config, "config", b"second").unwrap();
    assert_eq!(b.get(Kind::Config, "config").unwrap(), b"second");
}

fn listing(b: &dyn Backend) {
    for n in ["web/00000000000000000002", "web/00000000000000000001", "db/00000000000000000001"] {
        b.put(Kind::Root, n, n.as_bytes()).unwrap();
    }
    assert_eq!(b.list(Kind::Root, "web/").unwrap(), vec!["web/00000000000000000001", "web/00000000000000000002"]);
    let all = b.list(Kind::Root, "").unwrap();
    assert!(all.contains(&"db/00000000000000000001".to_string()) && all.len() >= 4);
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted);
    b.put(Kind::Pack, "ef03", b"x").unwrap();
    let packs = b.list(Kind::Pack, "").unwrap();
    assert!(packs.contains(&"ab01".to_string()) && packs.contains(&"ef03".to_string()), "{packs:?}");
    b.delete(Kind::Root, "web/00000000000000000002").unwrap();
    assert_eq!(b.list(Kind::Root, "web/").unwrap(), vec!["web/00000000000000000001"]);
    assert!(matches!(b.get(Kind::Root, "web/00000000000000000002"), Err(VaultError::NotFound { .. })));
}

fn names_cannot_escape(b: &dyn Backend) {
    for bad in ["", "../x", "a/../b", "a//b", ".hidden", "a/.b", "sp ace", "new\nline", "/abs"] {
        assert!(matches!(b.put(Kind::Root, bad, b"x"), Err(VaultError::BadName { .. })), "{bad:?} accepted");
        assert!(matches!(b.get(Kind::Root, bad), Err(VaultError::BadName { .. })), "{bad:?} accepted by get");
    }
    assert!(matches!(b.put(Kind::Pack, "a/b", b"x"), Err(VaultError::BadName { .. })));
}

fn kinds_are_separate(b: &dyn Backend) {
    b.put(Kind::Page, "aa11", b"page").unwrap();
    b.put(Kind::Pack, "aa11", b"pack").unwrap();
    assert_eq!(b.get(Kind::Page, "aa11").unwrap(), b"page");
    assert_eq!(b.get(Kind::Pack, "aa11").unwrap(), b"pack");
}

#[test]
fn local_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let b = LocalBackend::create(&dir.path().join("vault")).unwrap();
    suite(&b);
    // Two handles on one vault in one process write at once without their
    // temporary objects colliding (they did once: each handle counted its
    // own temporary names from 0).
    let (one, two) = (
        LocalBackend::open(&dir.path().join("vault")).unwrap(),
        LocalBackend::open(&dir.path().join("vault")).unwrap(),
    );
    let mut w1 = one.writer(Kind::Pack).unwrap().unwrap();
    let mut w2 = two.writer(Kind::Pack).unwrap().unwrap();
    w1.write(b"one").unwrap();
    w2.write(b"two").unwrap();
    w2.commit("cc02").unwrap();
    w1.commit("cc01").unwrap();
    assert_eq!(b.get(Kind::Pack, "cc01").unwrap(), b"one");
    assert_eq!(b.get(Kind::Pack, "cc02").unwrap(), b"two");
    // Nothing is left half-written in the temporary area, nor in the trash.
    assert_eq!(std::fs::read_dir(dir.path().join("vault/tmp")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(dir.path().join("vault/trash")).unwrap().count(), 0);
    // Discarding only moves the file: it is in the trash until emptied.
    b.put(Kind::Pack, "ee01", &[1u8; 5000]).unwrap();
    b.discard(Kind::Pack, "ee01").unwrap();
    assert_eq!(std::fs::read_dir(dir.path().join("vault/trash")).unwrap().count(), 1);
    assert_eq!(b.empty_trash().unwrap(), (1, 5000));
    assert_eq!(std::fs::read_dir(dir.path().join("vault/trash")).unwrap().count(), 0);
}

#[test]
fn local_backend_conforms_in_memory() {
    // tmpfs: O_DIRECT behaves differently from a disk filesystem (or is
    // refused); the streamed writer must give the same bytes either way.
    assert!(
        std::path::Path::new("/dev/shm").is_dir(),
        "/dev/shm is not a directory: this test needs a tmpfs there (standard on Linux; mount one)"
    );
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let b = LocalBackend::create(&dir.path().join("vault")).unwrap();
    suite(&b);
    assert_eq!(std::fs::read_dir(dir.path().join("vault/tmp")).unwrap().count(), 0);
}

#[test]
fn local_backend_refuses_a_file_as_vault() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("file");
    std::fs::write(&f, b"x").unwrap();
    let e = LocalBackend::open(&f).err().expect("refused");
    assert!(e.to_string().contains(&f.display().to_string()), "{e}");
    assert!(LocalBackend::open(&dir.path().join("missing")).is_err());
}
