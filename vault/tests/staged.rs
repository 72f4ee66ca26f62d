//! Objects staged by the vault server (`LocalBackend::stage`): once durable,
//! their pages leave the page cache.

use std::fs::File;
use std::os::fd::AsRawFd;

use vault::{Kind, LocalBackend};

/// Pages of `file` in the page cache (mincore over a shared mapping).
#[allow(unsafe_code)]
fn resident_pages(file: &File) -> usize {
    let len = usize::try_from(file.metadata().unwrap().len()).unwrap();
    // SAFETY: a fresh read-only shared mapping of an open file of `len`
    // bytes; nothing reads through it, and it is unmapped below.
    let map = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0) };
    assert_ne!(map, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
    let pages = len.div_ceil(4096);
    let mut vec = vec![0u8; pages];
    // SAFETY: `map` is the mapping above, `len` long; `vec` has one byte per
    // page of it.
    let rc = unsafe { libc::mincore(map, len, vec.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    // SAFETY: the mapping made above, unmapped once.
    let _ = unsafe { libc::munmap(map, len) };
    vec.iter().filter(|&&b| b & 1 == 1).count()
}

/// A server receives object after object that nobody reads soon: each
/// leaves the page cache once durable, so its memory is the next upload's
/// (on a virtual machine, memory taken fresh costs several times more).
#[test]
fn a_staged_object_leaves_the_page_cache_once_durable() {
    let dir = tempfile::tempdir().unwrap();
    let backend = LocalBackend::create(&dir.path().join("vault")).unwrap();
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let name = "ab".repeat(32);
    let mut staged = backend.stage(Kind::Pack).unwrap();
    // Unaligned pieces, as HTTP/2 frames arrive: written through the cache.
    for piece in data.chunks(100_003) {
        staged.write(piece).unwrap();
    }
    let mut back = vec![0u8; 4096];
    staged.read_at(&mut back, 1 << 20).unwrap();
    assert_eq!(back, data[1 << 20..(1 << 20) + 4096]);
    staged.create(&name).unwrap();
    let path = dir.path().join("vault/packs").join(&name[..2]).join(&name);
    let file = File::open(&path).unwrap();
    assert_eq!(resident_pages(&file), 0, "the durable object's pages are still cached");
    // Read, it is cached again: mincore does see cached pages, so the 0
    // above is a real one.
    assert_eq!(std::fs::read(&path).unwrap(), data, "the object is whole");
    assert!(resident_pages(&file) > 0, "a file just read is cached");
}
