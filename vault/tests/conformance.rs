//! The backend conformance suite (`vault::conformance`, shared with the
//! vault server's tests in `site/tests/conformance.rs`) against the local
//! directory, and what only the local directory does.

use vault::conformance::{suite, Profile};
use vault::{Backend, Kind, LocalBackend};

#[test]
fn local_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let b = LocalBackend::create(&dir.path().join("vault")).unwrap();
    suite(&b, Profile::Store);
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
    suite(&b, Profile::Store);
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
