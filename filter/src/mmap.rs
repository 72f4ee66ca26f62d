//! The one place that turns mapped state-file memory into atomics.
//!
//! The live and cut bitmaps are mapped shared from the state file so that a
//! set bit is in the page cache the moment the store retires: if the filter
//! process dies, the kernel still holds the page and writes it back. Nothing
//! else in the crate touches the mapping; everyone else sees `&[AtomicU64]`.

use std::fs::File;
use std::io;
use std::sync::atomic::AtomicU64;

use memmap2::{MmapOptions, MmapRaw};

/// A shared, writable mapping of `len` bytes of a file seen only as words.
pub(crate) struct WordMap {
    map: MmapRaw,
    words: usize,
}

impl WordMap {
    /// Maps `len` bytes of `file` at `offset` (both multiples of the page size).
    pub(crate) fn map(file: &File, offset: u64, len: u64) -> io::Result<WordMap> {
        let len = usize::try_from(len).map_err(|_| io::Error::other("bitmap too large to map"))?;
        assert!(offset.is_multiple_of(4096) && len.is_multiple_of(8), "bitmaps are page aligned");
        let map = MmapOptions::new().offset(offset).len(len).map_raw(file)?;
        Ok(WordMap { map, words: len / 8 })
    }

    /// All mapped words.
    pub(crate) fn words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is `self.words * 8` bytes long, page aligned (so
        // aligned for AtomicU64, which has the size and alignment of u64 on
        // every 64-bit target Lifeboat supports), readable and writable
        // (MAP_SHARED, PROT_READ|PROT_WRITE from `map_raw` on a read-write
        // file), and lives as long as `self`, which the returned slice borrows.
        // All access to it goes through atomics: no `&[u8]` or `&mut` view of
        // this memory exists anywhere, and other processes only `pread` the
        // file (their reads race benignly with our atomic stores).
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast::<AtomicU64>(), self.words) }
    }

    /// Writes dirty mapped pages back to the file and waits for them (msync).
    pub(crate) fn flush(&self) -> io::Result<()> {
        self.map.flush()
    }
}
