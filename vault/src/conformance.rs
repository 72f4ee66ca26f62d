//! The backend conformance suite: the contract of [`Backend`], run against
//! every implementation (vm-memory's `test_bitmap<B: Bitmap>`): the local
//! directory (`vault/tests/conformance.rs`) and the vault server's
//! `RemoteBackend` (`site/tests/conformance.rs`). Behind the `conformance`
//! feature; panics on the first breach.
//!
//! A [`Profile`] says what kind of store is under test. A plain store
//! ([`Profile::Store`]) keeps whatever bytes it is given under any name, and
//! deletes and replaces anything. A vault server as a host sees it
//! ([`Profile::Server`]) checks contents against names and kinds (so the
//! suite writes valid packs, pages and roots there) and is append-only for
//! hosts: a delete of anything but a lease, a discard, and a replacement of
//! a root or the config are refused ([`VaultError::Refused`]), which the
//! suite then checks instead of the plain store's behaviour. Everything
//! else is the same contract, checked the same way.

// Test data: byte patterns wrap on purpose.
#![allow(clippy::cast_possible_truncation)]

use std::sync::Barrier;

use disk_format::{BlockId, Consistency, Geometry, Keys, MasterKey, PackWriter, PageId, Root};

use crate::backend::{Backend, Kind, Version, DIRECT_ALIGN};
use crate::error::VaultError;

/// What kind of store the suite runs against (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Any bytes under any name; deletes and replaces anything.
    Store,
    /// Checks contents against names; append-only for hosts.
    Server,
}

/// Runs the whole suite against `b`, which must be empty.
pub fn suite(b: &dyn Backend, p: Profile) {
    put_get_round_trip(b, p);
    missing_objects(b, p);
    ranges(b, p);
    replace_is_whole(b, p);
    listing(b, p);
    names_cannot_escape(b);
    kinds_are_separate(b, p);
    streamed_objects(b, p);
    discarding(b, p);
    create_if_absent(b, p);
    replace_if_unchanged(b);
    racing_creates(b, p);
    racing_replaces(b, p);
    read_modify_write_loses_no_update(b);
    missing_in_one_call(b, p);
}

fn refused<T: std::fmt::Debug>(r: Result<T, VaultError>, what: &str) {
    match r {
        Err(VaultError::Refused { .. }) => {}
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

/// A pack of `about` bytes or so: for a plain store, `fill` repeated under
/// the name `plain`; for a server, a valid version 2 pack under its id.
fn pack(p: Profile, plain: &str, about: usize, seed: u8) -> (String, Vec<u8>) {
    if p == Profile::Store {
        return (plain.to_string(), (0..about).map(|i| (i * 7 % 251) as u8 ^ seed).collect());
    }
    let mut w = PackWriter::new(Vec::new()).expect("a Vec takes writes");
    let blob_len = about.clamp(41, 64 * 1024 + 40);
    let mut n = 0u64;
    while n == 0 || (w.bytes_written() as usize) < about.saturating_sub(blob_len) {
        n += 1;
        let mut id = [0u8; 32];
        id[0] = seed;
        id[1..9].copy_from_slice(&n.to_le_bytes());
        let blob: Vec<u8> = (0..blob_len).map(|i| (i as u64 * 13 + n) as u8 ^ seed).collect();
        w.add_blob(&BlockId(id), &blob).expect("distinct ids, valid lengths");
    }
    let done = w.finish().expect("a Vec takes writes");
    (done.id.to_string(), done.out)
}

/// A page: for a plain store, `plain` and a few bytes; for a server, bytes
/// named by their BLAKE3.
fn page(p: Profile, plain: &str, seed: u8) -> (String, Vec<u8>) {
    let bytes: Vec<u8> = (0..300u32).map(|i| (i as u8).wrapping_mul(3) ^ seed).collect();
    match p {
        Profile::Store => (plain.to_string(), bytes),
        Profile::Server => (PageId::of(&bytes).to_string(), bytes),
    }
}

/// A root of `disk` at `sequence`: any bytes for a plain store (`plain`), a
/// valid (format 1) root for a server; `variant` makes different roots of
/// one point (different lengths for a plain store: a torn object shows).
fn root(p: Profile, disk: &str, sequence: u64, variant: usize, plain: &[u8]) -> Vec<u8> {
    if p == Profile::Store {
        let mut v = plain.to_vec();
        v.resize(plain.len() + variant * 777, u8::try_from(variant % 256).expect("in range"));
        return v;
    }
    let root = Root {
        consistency: Consistency::Crash,
        disk_id: [u8::try_from(variant % 256).expect("in range"); 16],
        disk_name: disk.to_string(),
        host: "x".repeat(variant % 60),
        namespace: None,
        sequence,
        cut_time_ns: 1_000_000_000 + sequence,
        cut_generation: sequence,
        geometry: Geometry::new(65536, 65536).expect("a valid geometry"),
        bytes_shipped: variant as u64,
        parent: None,
        pages: vec![PageId([0u8; 32])],
        page_packs: Vec::new(),
        page_pack_of: Vec::new(),
        extension: Vec::new(),
    };
    let keys = Keys::derive(&MasterKey::from_bytes([5u8; 32]));
    root.encode_version_1_for_tests(&keys).expect("a valid root")
}

fn root_name(disk: &str, sequence: u64) -> String {
    crate::store::root_name(disk, sequence)
}

/// `create` stores an object only where there is none; an existing object
/// is left whole and the refusal names it.
fn create_if_absent(b: &dyn Backend, p: Profile) {
    let name = root_name("made", 1);
    let first = root(p, "made", 1, 0, b"first");
    let v1 = b.create(Kind::Root, &name, &first).unwrap();
    let e = b.create(Kind::Root, &name, &root(p, "made", 1, 1, b"second, longer")).unwrap_err();
    assert!(matches!(&e, VaultError::AlreadyExists { kind: Kind::Root, name: n } if *n == name), "{e}");
    assert!(e.to_string().contains(&name), "the refusal names the object: {e}");
    assert_eq!(b.get(Kind::Root, &name).unwrap(), first, "create overwrote an object");
    assert_eq!(b.get_versioned(Kind::Root, &name).unwrap(), (first, v1));
    // Every kind, the content-addressed ones too.
    let (c1, c1bytes) = pack(p, "c1e0", 4, 1);
    b.create(Kind::Pack, &c1, &c1bytes).unwrap();
    let other = if p == Profile::Store { b"other".to_vec() } else { c1bytes.clone() };
    assert!(matches!(b.create(Kind::Pack, &c1, &other), Err(VaultError::AlreadyExists { .. })));
    assert_eq!(b.get(Kind::Pack, &c1).unwrap(), c1bytes);
    b.create(Kind::Config, "config-created", b"c").unwrap();
    assert!(matches!(b.create(Kind::Config, "config-created", b"d"), Err(VaultError::AlreadyExists { .. })));
    if p == Profile::Store {
        // Deleted, the name can be created again.
        b.delete(Kind::Root, &name).unwrap();
        b.create(Kind::Root, &name, b"again").unwrap();
        assert_eq!(b.get(Kind::Root, &name).unwrap(), b"again");
    } else {
        refused(b.delete(Kind::Root, &name), "a host deleting a root");
    }
    assert!(matches!(b.create(Kind::Root, "../x", b"x"), Err(VaultError::BadName { .. })));
    let listed = b.list(Kind::Root, "made/").unwrap();
    assert_eq!(listed, vec![name], "a refused create left something listed");
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
fn racing_creates(b: &dyn Backend, p: Profile) {
    for round in 0..5u64 {
        let name = root_name("race", round + 1);
        let start = Barrier::new(RACERS);
        let data = |i: usize| root(p, "race", round + 1, i, &vec![u8::try_from(i).expect("small"); 1000]);
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..RACERS)
                .map(|i| {
                    let (name, start, data) = (&name, &start, &data);
                    s.spawn(move || {
                        let bytes = data(i);
                        start.wait();
                        b.create(Kind::Root, name, &bytes)
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
        assert_eq!(b.get(Kind::Root, &name).unwrap(), data(winners[0]), "round {round}");
    }
}

/// `RACERS` threads replace one object from the same version at once:
/// exactly one wins, the others conflict, and the object is the winner's.
/// (A config for a plain store; a lease for a server, where hosts never
/// replace the config.)
fn racing_replaces(b: &dyn Backend, p: Profile) {
    let (kind, name) = match p {
        Profile::Store => (Kind::Config, "raced/config"),
        Profile::Server => (Kind::Lease, "raced/lease"),
    };
    let v0 = b.create(kind, name, b"start").unwrap();
    if p == Profile::Server {
        refused(b.replace_if(Kind::Config, "config-created", b"x", &v0), "a host replacing the config");
    }
    let start = Barrier::new(RACERS);
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..RACERS)
            .map(|i| {
                let (v0, start) = (&v0, &start);
                s.spawn(move || {
                    let data = vec![u8::try_from(i).unwrap(); 500 + i * 311];
                    start.wait();
                    b.replace_if(kind, name, &data, v0)
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
    let (data, v) = b.get_versioned(kind, name).unwrap();
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
/// `empty_trash` frees it (and only discarded objects). A server refuses
/// both from a host: garbage collection runs at the site.
fn discarding(b: &dyn Backend, p: Profile) {
    let (d1, data) = pack(p, "dd01", 10_000, 2);
    let (d2, kept) = pack(p, "dd02", 4, 3);
    b.put(Kind::Pack, &d1, &data).unwrap();
    b.put(Kind::Pack, &d2, &kept).unwrap();
    let trashy = root_name("trashy", 1);
    b.put(Kind::Root, &trashy, &root(p, "trashy", 1, 0, b"root")).unwrap();
    if p == Profile::Server {
        refused(b.discard(Kind::Pack, &d1), "a host discarding a pack");
        refused(b.discard(Kind::Root, &trashy), "a host discarding a root");
        assert_eq!(b.empty_trash().unwrap(), (0, 0));
        assert_eq!(b.get(Kind::Pack, &d1).unwrap(), data);
        return;
    }
    b.discard(Kind::Pack, &d1).unwrap();
    b.discard(Kind::Root, &trashy).unwrap();
    assert!(!b.list(Kind::Pack, "dd").unwrap().contains(&d1));
    assert!(b.list(Kind::Root, "trashy/").unwrap().is_empty());
    assert!(matches!(b.get(Kind::Pack, &d1), Err(VaultError::NotFound { .. })));
    assert_eq!(b.size(Kind::Pack, &d1).unwrap(), None);
    assert!(matches!(b.discard(Kind::Pack, &d1), Err(VaultError::NotFound { .. })));
    assert!(matches!(b.discard(Kind::Page, "ffee"), Err(VaultError::NotFound { .. })));
    assert!(matches!(b.discard(Kind::Root, "../x"), Err(VaultError::BadName { .. })));
    // The same name written again (a cycle writes the same pack again) is a
    // new object, untouched by the trash; discarded again, both go.
    b.put(Kind::Pack, &d1, b"again").unwrap();
    assert_eq!(b.get(Kind::Pack, &d1).unwrap(), b"again");
    let (objects, bytes) = b.empty_trash().unwrap();
    let want = data.len() as u64 + 4;
    assert!(objects == 0 || (objects == 2 && bytes == want), "freed {objects} objects, {bytes} bytes");
    assert_eq!(b.get(Kind::Pack, &d1).unwrap(), b"again");
    assert_eq!(b.get(Kind::Pack, &d2).unwrap(), kept);
    b.discard(Kind::Pack, &d1).unwrap();
    b.empty_trash().unwrap();
    assert_eq!(b.empty_trash().unwrap(), (0, 0), "an empty trash frees nothing");
    assert!(matches!(b.get(Kind::Pack, &d1), Err(VaultError::NotFound { .. })));
    b.delete(Kind::Pack, &d2).unwrap();
}

/// `bytes` copied to a 4096-aligned address (what the shipper's chunks are).
fn aligned_copy(bytes: &[u8]) -> (Vec<u8>, usize) {
    let mut v = vec![0u8; bytes.len() + DIRECT_ALIGN];
    let at = v.as_ptr().align_offset(DIRECT_ALIGN);
    v[at..at + bytes.len()].copy_from_slice(bytes);
    (v, at)
}

fn streamed_objects(b: &dyn Backend, p: Profile) {
    let Some(mut w) = b.writer(Kind::Pack).unwrap() else { return };
    let (name, data) = pack(p, "ab77", 20_000, 4);
    assert!(data.len() > 13_288, "{}", data.len());
    // Aligned at an aligned offset (may bypass the page cache), then
    // unaligned, then an aligned piece at an unaligned offset.
    let (a, at) = aligned_copy(&data[..8192]);
    w.write(&a[at..at + 8192]).unwrap();
    w.write(&data[8192..9192]).unwrap();
    let (c, at) = aligned_copy(&data[9192..13_288]);
    w.write(&c[at..at + 4096]).unwrap();
    w.write(&data[13_288..]).unwrap();
    // Not visible before the commit.
    assert!(b.list(Kind::Pack, &name).unwrap().is_empty());
    assert!(matches!(b.get(Kind::Pack, &name), Err(VaultError::NotFound { .. })));
    w.commit(&name).unwrap();
    assert_eq!(b.get(Kind::Pack, &name).unwrap(), data);

    if p == Profile::Store {
        // A commit over an existing name succeeds and leaves one whole
        // object: the new one (the local directory replaces it) or the one
        // already there (a cloud store creates a streamed object only where
        // none is: its name is its contents' hash, so that is the same
        // object). Never a mix of the two.
        let mut w = b.writer(Kind::Pack).unwrap().unwrap();
        let (a, at) = aligned_copy(&data[..4096]);
        w.write(&a[at..at + 4096]).unwrap();
        w.commit(&name).unwrap();
        let now = b.get(Kind::Pack, &name).unwrap();
        assert!(now == data || now == data[..4096], "a commit over {name} left {} bytes", now.len());
    }

    // Dropped, or committed under a bad name: nothing appears.
    let (_, other) = pack(p, "ab78", 20_000, 5);
    let before = b.list(Kind::Pack, "").unwrap();
    let mut w = b.writer(Kind::Pack).unwrap().unwrap();
    w.write(&other).unwrap();
    drop(w);
    let mut w = b.writer(Kind::Pack).unwrap().unwrap();
    w.write(&other).unwrap();
    assert!(matches!(w.commit("../escape"), Err(VaultError::BadName { .. })));
    assert_eq!(b.list(Kind::Pack, "").unwrap(), before);
}

fn put_get_round_trip(b: &dyn Backend, p: Profile) {
    let (name, big) = pack(p, "ab01", 3_000_000, 6);
    b.put(Kind::Pack, &name, &big).unwrap();
    assert_eq!(b.get(Kind::Pack, &name).unwrap(), big);
    assert_eq!(b.size(Kind::Pack, &name).unwrap(), Some(big.len() as u64));
    let r = root(p, "disk1", 1, 0, b"");
    b.put(Kind::Root, &root_name("disk1", 1), &r).unwrap();
    assert_eq!(b.get(Kind::Root, &root_name("disk1", 1)).unwrap(), r);
}

fn missing_objects(b: &dyn Backend, p: Profile) {
    assert!(matches!(b.get(Kind::Page, "ffee"), Err(VaultError::NotFound { kind: Kind::Page, .. })));
    assert!(matches!(b.get_range(Kind::Page, "ffee", 0, 1), Err(VaultError::NotFound { .. })));
    assert_eq!(b.size(Kind::Page, "ffee").unwrap(), None);
    match p {
        Profile::Store => assert!(matches!(b.delete(Kind::Page, "ffee"), Err(VaultError::NotFound { .. }))),
        Profile::Server => refused(b.delete(Kind::Page, "ffee"), "a host deleting a page"),
    }
    assert!(matches!(b.delete(Kind::Lease, "no-such-lease"), Err(VaultError::NotFound { .. })));
    b.remove(Kind::Lease, "no-such-lease").expect("removing a missing object is not an error");
    b.create(Kind::Lease, "removed-lease", b"held").unwrap();
    b.remove(Kind::Lease, "removed-lease").unwrap();
    assert!(matches!(b.get(Kind::Lease, "removed-lease"), Err(VaultError::NotFound { .. })));
    assert!(!b.list(Kind::Lease, "").unwrap().contains(&"removed-lease".to_string()));
}

fn ranges(b: &dyn Backend, p: Profile) {
    let (name, data) = pack(p, "cd02", 10, 7);
    let len = data.len() as u64;
    b.put(Kind::Pack, &name, &data).unwrap();
    assert_eq!(b.get_range(Kind::Pack, &name, 3, 4).unwrap(), &data[3..7]);
    assert_eq!(b.get_range(Kind::Pack, &name, len, 0).unwrap(), b"");
    let e = b.get_range(Kind::Pack, &name, len - 2, 4).unwrap_err();
    assert!(
        matches!(e, VaultError::ShortObject { size, offset, end, .. } if size == len && offset == len - 2 && end == len + 2),
        "{e}"
    );
    assert!(e.to_string().contains(&name), "error names the object: {e}");
    assert!(matches!(b.get_range(Kind::Pack, &name, u64::MAX, 2), Err(VaultError::ShortObject { .. })));
    // The tail: the last bytes and the whole size, in one call.
    assert_eq!(b.get_tail(Kind::Pack, &name, 5).unwrap(), Some((data[data.len() - 5..].to_vec(), len)));
    assert_eq!(b.get_tail(Kind::Pack, &name, len + 100).unwrap(), Some((data.clone(), len)));
    assert_eq!(b.get_tail(Kind::Pack, &"ab".repeat(32), 5).unwrap(), None);
}

fn replace_is_whole(b: &dyn Backend, p: Profile) {
    b.put(Kind::Config, "config", b"first version").unwrap();
    match p {
        Profile::Store => {
            b.put(Kind::Config, "config", b"second").unwrap();
            assert_eq!(b.get(Kind::Config, "config").unwrap(), b"second");
        }
        Profile::Server => {
            refused(b.put(Kind::Config, "config", b"second"), "a host replacing the config");
            assert_eq!(b.get(Kind::Config, "config").unwrap(), b"first version");
        }
    }
    b.put(Kind::Lease, "whole", b"first version").unwrap();
    b.put(Kind::Lease, "whole", b"second").unwrap();
    assert_eq!(b.get(Kind::Lease, "whole").unwrap(), b"second");
}

fn listing(b: &dyn Backend, p: Profile) {
    for (disk, seq) in [("web", 2), ("web", 1), ("db", 1)] {
        let n = root_name(disk, seq);
        b.put(Kind::Root, &n, &root(p, disk, seq, 0, n.as_bytes())).unwrap();
    }
    assert_eq!(b.list(Kind::Root, "web/").unwrap(), vec![root_name("web", 1), root_name("web", 2)]);
    let all = b.list(Kind::Root, "").unwrap();
    assert!(all.contains(&root_name("db", 1)) && all.len() >= 4);
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted);
    let (ef, efbytes) = pack(p, "ef03", 1, 8);
    b.put(Kind::Pack, &ef, &efbytes).unwrap();
    let packs = b.list(Kind::Pack, "").unwrap();
    assert!(packs.contains(&pack(p, "ab01", 3_000_000, 6).0) && packs.contains(&ef), "{packs:?}");
    if p == Profile::Server {
        refused(b.delete(Kind::Root, &root_name("web", 2)), "a host deleting a root");
        return;
    }
    b.delete(Kind::Root, &root_name("web", 2)).unwrap();
    assert_eq!(b.list(Kind::Root, "web/").unwrap(), vec![root_name("web", 1)]);
    assert!(matches!(b.get(Kind::Root, &root_name("web", 2)), Err(VaultError::NotFound { .. })));
}

fn names_cannot_escape(b: &dyn Backend) {
    for bad in ["", "../x", "a/../b", "a//b", ".hidden", "a/.b", "sp ace", "new\nline", "/abs"] {
        assert!(matches!(b.put(Kind::Root, bad, b"x"), Err(VaultError::BadName { .. })), "{bad:?} accepted");
        assert!(matches!(b.get(Kind::Root, bad), Err(VaultError::BadName { .. })), "{bad:?} accepted by get");
    }
    assert!(matches!(b.put(Kind::Pack, "a/b", b"x"), Err(VaultError::BadName { .. })));
}

/// One name in two kinds is two objects. (For a server: the pack's own
/// name, and a page whose bytes are the pack's header, index and trailer,
/// which hash to that name.)
fn kinds_are_separate(b: &dyn Backend, p: Profile) {
    let (name, pack_bytes) = pack(p, "aa11", 4, 9);
    let page_bytes = match p {
        Profile::Store => b"page".to_vec(),
        Profile::Server => {
            let parsed = disk_format::Pack::parse(&pack_bytes).expect("a valid pack");
            let at = usize::try_from(parsed.index().index_offset()).expect("in memory");
            [&pack_bytes[..32], &pack_bytes[at..]].concat()
        }
    };
    b.put(Kind::Page, &name, &page_bytes).unwrap();
    b.put(Kind::Pack, &name, &pack_bytes).unwrap();
    assert_eq!(b.get(Kind::Page, &name).unwrap(), page_bytes);
    assert_eq!(b.get(Kind::Pack, &name).unwrap(), pack_bytes);
    let (g, gbytes) = page(p, "aa12", 1);
    b.put(Kind::Page, &g, &gbytes).unwrap();
    assert_eq!(b.get(Kind::Page, &g).unwrap(), gbytes);
}

/// `missing` answers for many names at once, in the order given.
fn missing_in_one_call(b: &dyn Backend, p: Profile) {
    let (have, bytes) = pack(p, "fa01", 4, 10);
    b.put(Kind::Pack, &have, &bytes).unwrap();
    let absent: Vec<String> = (0..500).map(|i| format!("{:064x}", i + 1)).collect();
    let mut asked = absent.clone();
    asked.insert(250, have.clone());
    assert_eq!(b.missing(Kind::Pack, &asked).unwrap(), absent);
    assert!(b.missing(Kind::Pack, std::slice::from_ref(&have)).unwrap().is_empty());
}
