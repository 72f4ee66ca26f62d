//! The backend conformance suite: the contract of `vault::Backend`, run
//! against every implementation (today the local directory; the receiver and
//! object stores join when they exist).

use std::sync::Barrier;

use vault::{Backend, Kind, LocalBackend, VaultError, Version};

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
    create_if_absent(b);
    replace_if_unchanged(b);
    racing_creates(b);
    racing_replaces(b);
    read_modify_write_loses_no_update(b);
}

/// `create` stores an object only where there is none; an existing object
/// is left whole and the refusal names it.
fn create_if_absent(b: &dyn Backend) {
    let name = "made/00000000000000000001";
    let v1 = b.create(Kind::Root, name, b"first").unwrap();
    let e = b.create(Kind::Root, name, b"second, longer").unwrap_err();
    assert!(matches!(&e, VaultError::AlreadyExists { kind: Kind::Root, name: n } if n == name), "{e}");
    assert!(e.to_string().contains(name), "the refusal names the object: {e}");
    assert_eq!(b.get(Kind::Root, name).unwrap(), b"first", "create overwrote an object");
    assert_eq!(b.get_versioned(Kind::Root, name).unwrap(), (b"first".to_vec(), v1));
    // Every kind, the content-addressed ones too.
    b.create(Kind::Pack, "c1e0", b"pack").unwrap();
    assert!(matches!(b.create(Kind::Pack, "c1e0", b"other"), Err(VaultError::AlreadyExists { .. })));
    assert_eq!(b.get(Kind::Pack, "c1e0").unwrap(), b"pack");
    b.create(Kind::Config, "config-created", b"c").unwrap();
    assert!(matches!(b.create(Kind::Config, "config-created", b"d"), Err(VaultError::AlreadyExists { .. })));
    // Deleted, the name can be created again.
    b.delete(Kind::Root, name).unwrap();
    b.create(Kind::Root, name, b"again").unwrap();
    assert_eq!(b.get(Kind::Root, name).unwrap(), b"again");
    assert!(matches!(b.create(Kind::Root, "../x", b"x"), Err(VaultError::BadName { .. })));
    let listed = b.list(Kind::Root, "made/").unwrap();
    assert_eq!(listed, vec![name.to_string()], "a refused create left something listed");
}

/// `replace_if` replaces only from the version read: from a stale version,
/// a deleted object or a version of other contents it is `Conflict` and the
/// object is unchanged.
fn replace_if_unchanged(b: &dyn Backend) {
    let name = "lease-like/0123456789abcdef";
    let v1 = b.create(Kind::Lease, name, b"generation 1").unwrap();
    let v2 = b.replace_if(Kind::Lease, name, b"generation 2", &v1).unwrap();
    assert_ne!(v1, v2, "a replacement with other contents kept the version");
    let (data, v) = b.get_versioned(Kind::Lease, name).unwrap();
    assert_eq!((data.as_slice(), &v), (&b"generation 2"[..], &v2));
    // From the stale version: refused, unchanged.
    let e = b.replace_if(Kind::Lease, name, b"from stale", &v1).unwrap_err();
    assert!(matches!(&e, VaultError::Conflict { kind: Kind::Lease, name: n } if n == name), "{e}");
    assert!(e.to_string().contains(name), "the conflict names the object: {e}");
    assert_eq!(b.get(Kind::Lease, name).unwrap(), b"generation 2");
    // A put by another writer changes the version: the reader's is stale.
    b.put(Kind::Lease, name, b"put by another").unwrap();
    assert!(matches!(b.replace_if(Kind::Lease, name, b"x", &v2), Err(VaultError::Conflict { .. })));
    assert_eq!(b.get(Kind::Lease, name).unwrap(), b"put by another");
    // A version that is no tag of this object.
    let bogus = Version::new("no-such-version");
    assert!(matches!(b.replace_if(Kind::Lease, name, b"x", &bogus), Err(VaultError::Conflict { .. })));
    // Deleted since it was read: refused, and not brought back.
    let (_, v) = b.get_versioned(Kind::Lease, name).unwrap();
    b.delete(Kind::Lease, name).unwrap();
    assert!(matches!(b.replace_if(Kind::Lease, name, b"x", &v), Err(VaultError::Conflict { .. })));
    assert!(matches!(b.get(Kind::Lease, name), Err(VaultError::NotFound { .. })));
    // Never there at all (its directory neither).
    assert!(matches!(b.replace_if(Kind::Lease, "never/made", b"x", &v), Err(VaultError::Conflict { .. })));
    assert!(matches!(b.get_versioned(Kind::Lease, "never/made"), Err(VaultError::NotFound { .. })));
    assert!(b.list(Kind::Lease, "never/").unwrap().is_empty());
}

const RACERS: usize = 8;

/// `RACERS` threads create one name at the same moment: exactly one wins,
/// and the object is the winner's, whole.
fn racing_creates(b: &dyn Backend) {
    for round in 0..5 {
        let name = format!("race/{round:020}");
        let start = Barrier::new(RACERS);
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..RACERS)
                .map(|i| {
                    let (name, start) = (&name, &start);
                    s.spawn(move || {
                        // Different lengths: a torn or mixed object shows.
                        let data = vec![u8::try_from(i).unwrap(); 1000 + i * 777];
                        start.wait();
                        b.create(Kind::Root, name, &data)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<usize> = (0..RACERS).filter(|&i| results[i].is_ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {} creators won", winners.len());
        for (i, r) in results.iter().enumerate() {
            if let Err(e) = r {
                assert!(matches!(e, VaultError::AlreadyExists { .. }), "round {round}, racer {i}: {e}");
            }
        }
        let w = winners[0];
        assert_eq!(b.get(Kind::Root, &name).unwrap(), vec![u8::try_from(w).unwrap(); 1000 + w * 777], "round {round}");
    }
}

/// `RACERS` threads replace one object from the same version at once:
/// exactly one wins, the others conflict, and the object is the winner's.
fn racing_replaces(b: &dyn Backend) {
    let name = "raced/config";
    let v0 = b.create(Kind::Config, name, b"start").unwrap();
    let start = Barrier::new(RACERS);
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..RACERS)
            .map(|i| {
                let (v0, start) = (&v0, &start);
                s.spawn(move || {
                    let data = vec![u8::try_from(i).unwrap(); 500 + i * 311];
                    start.wait();
                    b.replace_if(Kind::Config, name, &data, v0)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: Vec<usize> = (0..RACERS).filter(|&i| results[i].is_ok()).collect();
    assert_eq!(winners.len(), 1, "{} replacers won from one version", winners.len());
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(matches!(r, VaultError::Conflict { .. }), "{r}");
    }
    let w = winners[0];
    let (data, v) = b.get_versioned(Kind::Config, name).unwrap();
    assert_eq!(data, vec![u8::try_from(w).unwrap(); 500 + w * 311]);
    assert_eq!(&v, results[w].as_ref().unwrap(), "the winner's version is the object's");
}

/// Threads each add to one counter by read, modify, replace-if (retrying on
/// a conflict): no increment is lost.
fn read_modify_write_loses_no_update(b: &dyn Backend) {
    const THREADS: usize = 4;
    const EACH: usize = 15;
    let name = "counter/0000000000000000";
    b.create(Kind::Lease, name, b"0").unwrap();
    let start = Barrier::new(THREADS);
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                start.wait();
                for _ in 0..EACH {
                    loop {
                        let (data, v) = b.get_versioned(Kind::Lease, name).unwrap();
                        let n: u64 = std::str::from_utf8(&data).unwrap().parse().unwrap();
                        match b.replace_if(Kind::Lease, name, (n + 1).to_string().as_bytes(), &v) {
                            Ok(_) => break,
                            Err(VaultError::Conflict { .. }) => continue,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            });
        }
    });
    assert_eq!(b.get(Kind::Lease, name).unwrap(), (THREADS * EACH).to_string().as_bytes(), "an update was lost");
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
