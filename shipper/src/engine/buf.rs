//! The block buffer pool: one aligned allocation cut into slots, one
//! [`BlockBuf`] per slot.
//!
//! ```text
//! slot i:  | head (4096)                 | data (block size)      |
//!                          nonce (24) ^   ^ 4096-aligned           ^ tag (16), in slot i+1's head
//! ```
//!
//! A block's plaintext is read to `data`, which starts at a 4096-aligned
//! address (O_DIRECT). The nonce goes in the last 24 bytes of the head and
//! the tag in the first 16 bytes after the data (the start of the next slot's
//! head, or the spare page after the last slot), so a worker seals in place:
//! a `BlockBuf` derefs to the *blob frame* `nonce ‖ data ‖ tag`, laid out as
//! [`Keys::seal_in_place`](disk_format::keys::Keys::seal_in_place) wants it.
//! Frames of different slots never overlap (the head is 4096 bytes, a frame
//! uses 40 of them).
//!
//! Exactly one `BlockBuf` exists per slot, made by [`BlockPool::new`]; it is
//! not `Clone` and has no other constructor, so holding it is owning its slot.
//! That is what makes handing out `&mut [u8]` into the shared allocation
//! sound, and what lets the io_uring engine give the kernel a slot's address
//! while it holds the `BlockBuf`.

use std::alloc::Layout;
use std::io;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::Arc;

use disk_format::keys::{NONCE_LEN, SEAL_OVERHEAD, TAG_LEN};

/// Alignment of every block's data (and of O_DIRECT offsets and lengths).
pub const ALIGN: usize = 4096;
/// Bytes before each block's data; the nonce takes the last `NONCE_LEN`.
const HEAD: usize = ALIGN;
const _: () = assert!(NONCE_LEN + TAG_LEN <= HEAD);

/// The allocation behind a pool.
pub(crate) struct Arena {
    base: NonNull<u8>,
    layout: Layout,
    stride: usize,
    block_size: usize,
    slots: usize,
}

// SAFETY: the arena is plain heap memory owned by this value; it has no
// thread affinity. Which thread may touch which bytes is decided by
// `BlockBuf` ownership (one per slot, moved between threads by value).
unsafe impl Send for Arena {}
// SAFETY: `&Arena` gives no access to the memory by itself (only the
// address, for the io_uring registration); all reads and writes go through a
// `BlockBuf`, which owns its slot exclusively.
unsafe impl Sync for Arena {}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: `base` was returned by `alloc_zeroed(self.layout)` in
        // `BlockPool::new` and is freed only here, once: the last `Arc` is
        // gone, so no `BlockBuf` and no engine can reach the memory. An engine
        // that could not drain its in-flight reads leaks its `Arc` instead,
        // so the kernel never writes to freed memory.
        unsafe { std::alloc::dealloc(self.base.as_ptr(), self.layout) }
    }
}

impl Arena {
    /// Start and length of the whole allocation (for registering it with a
    /// ring). The caller must not access the memory through this address.
    pub(crate) fn region(&self) -> (*mut u8, usize) {
        (self.base.as_ptr(), self.layout.size())
    }

    /// Offset of slot `slot`'s data from `base`.
    fn data_offset(&self, slot: usize) -> usize {
        debug_assert!(slot < self.slots);
        slot * self.stride + HEAD
    }
}

/// A fixed set of aligned block buffers; see the module docs for the layout.
#[derive(Clone)]
pub struct BlockPool {
    arena: Arc<Arena>,
}

impl std::fmt::Debug for BlockPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlockPool({} x {} bytes)", self.arena.slots, self.arena.block_size)
    }
}

impl BlockPool {
    /// Allocates `count` buffers for blocks of `block_size` bytes (a multiple
    /// of 4096) and returns the pool and its buffers, each exactly once.
    pub fn new(block_size: usize, count: usize) -> io::Result<(BlockPool, Vec<BlockBuf>)> {
        if block_size == 0 || !block_size.is_multiple_of(ALIGN) || count == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("block buffers of {block_size} bytes (a multiple of {ALIGN} is needed), {count} of them"),
            ));
        }
        let stride = HEAD + block_size;
        let size = count.checked_mul(stride).and_then(|n| n.checked_add(HEAD));
        let layout = size.and_then(|s| Layout::from_size_align(s, ALIGN).ok()).ok_or_else(|| {
            io::Error::new(io::ErrorKind::OutOfMemory, format!("{count} block buffers of {block_size} bytes"))
        })?;
        // SAFETY: the layout has a non-zero size (at least HEAD bytes) and a
        // power-of-two alignment. The memory is zeroed, so every byte a
        // `BlockBuf` later hands out as `&[u8]` is initialized.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let base = NonNull::new(ptr).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("allocating {count} block buffers of {block_size} bytes"),
            )
        })?;
        let arena = Arc::new(Arena { base, layout, stride, block_size, slots: count });
        let bufs = (0..count).map(|slot| BlockBuf { arena: Arc::clone(&arena), slot }).collect();
        Ok((BlockPool { arena }, bufs))
    }

    /// Bytes of data per buffer.
    pub fn block_size(&self) -> usize {
        self.arena.block_size
    }

    /// Number of buffers.
    pub fn len(&self) -> usize {
        self.arena.slots
    }

    /// Always false: a pool has at least one buffer.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub(crate) fn arena(&self) -> &Arc<Arena> {
        &self.arena
    }
}

/// One block buffer of a [`BlockPool`], owning its slot.
///
/// Derefs to the blob frame, `NONCE_LEN + block_size + TAG_LEN` bytes: the
/// plaintext sits at `[NONCE_LEN..NONCE_LEN + len]` (4096-aligned), and after
/// [`Keys::seal_in_place`](disk_format::keys::Keys::seal_in_place) the blob
/// is `[..blob_len]`.
pub struct BlockBuf {
    arena: Arc<Arena>,
    slot: usize,
}

impl std::fmt::Debug for BlockBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlockBuf(slot {} of {})", self.slot, self.arena.slots)
    }
}

impl BlockBuf {
    /// Bytes of data the buffer holds.
    pub fn block_size(&self) -> usize {
        self.arena.block_size
    }

    /// The data area: `block_size` bytes at a 4096-aligned address.
    pub fn data(&self) -> &[u8] {
        &self[NONCE_LEN..NONCE_LEN + self.arena.block_size]
    }

    /// The data area, writable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        let bs = self.arena.block_size;
        &mut self[NONCE_LEN..NONCE_LEN + bs]
    }

    /// Address of the data area, for a read the kernel performs while the
    /// engine holds this buffer. Derived from the arena's base without going
    /// through a reference, so no Rust reference to the bytes exists while
    /// the kernel writes them.
    pub(crate) fn data_ptr(&mut self) -> *mut u8 {
        let off = self.arena.data_offset(self.slot);
        // SAFETY: `off + block_size <= layout.size()` (slot < slots, and the
        // arena is `slots * stride + HEAD` bytes with `stride = HEAD +
        // block_size`), so the result stays inside the allocation.
        unsafe { self.arena.base.as_ptr().add(off) }
    }

    /// Whether this buffer belongs to `arena` (so a registered-buffer read
    /// may name it).
    pub(crate) fn is_in(&self, arena: &Arc<Arena>) -> bool {
        Arc::ptr_eq(&self.arena, arena)
    }

    fn frame_ptr(&self) -> *mut u8 {
        let off = self.arena.data_offset(self.slot) - NONCE_LEN;
        // SAFETY: as in `data_ptr`; `off >= HEAD - NONCE_LEN > 0`, and the
        // frame's end, `data_offset + block_size + TAG_LEN`, is at most
        // `(slot + 1) * stride + TAG_LEN <= slots * stride + HEAD`.
        unsafe { self.arena.base.as_ptr().add(off) }
    }

    fn frame_len(&self) -> usize {
        self.arena.block_size + SEAL_OVERHEAD
    }
}

impl Deref for BlockBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: the frame lies inside the allocation (see `frame_ptr`),
        // which is initialized (zeroed at allocation) and lives as long as
        // the `Arc` we hold. Frames of different slots are disjoint (module
        // docs), and this `BlockBuf` is the only handle to its slot; `&self`
        // excludes `&mut self`, and the engine never hands a buffer out while
        // the kernel may write to it, so nothing writes the frame while the
        // returned borrow lives.
        unsafe { std::slice::from_raw_parts(self.frame_ptr(), self.frame_len()) }
    }
}

impl DerefMut for BlockBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; `&mut self` proves no other borrow of this
        // slot's frame exists, and no other `BlockBuf` can reach it.
        unsafe { std::slice::from_raw_parts_mut(self.frame_ptr(), self.frame_len()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_aligned_and_frames_are_disjoint() {
        let (pool, mut bufs) = BlockPool::new(8192, 3).unwrap();
        assert_eq!((pool.len(), pool.block_size()), (3, 8192));
        let mut ranges = Vec::new();
        for (i, b) in bufs.iter_mut().enumerate() {
            assert_eq!(b.data_ptr() as usize % ALIGN, 0);
            assert_eq!(b.len(), 8192 + SEAL_OVERHEAD);
            assert_eq!(b.data().as_ptr() as usize % ALIGN, 0);
            b.data_mut().fill(u8::try_from(i + 1).unwrap());
            b[..NONCE_LEN].fill(0xee);
            let n = b.len();
            b[n - TAG_LEN..].fill(0xff);
            let start = b.as_ptr() as usize;
            ranges.push(start..start + n);
        }
        for (i, b) in bufs.iter().enumerate() {
            assert!(b.data().iter().all(|&x| usize::from(x) == i + 1), "slot {i} was overwritten");
        }
        ranges.sort_by_key(|r| r.start);
        assert!(ranges.windows(2).all(|w| w[0].end <= w[1].start));
    }

    #[test]
    fn refuses_unaligned_block_sizes() {
        assert!(BlockPool::new(1000, 4).is_err());
        assert!(BlockPool::new(4096, 0).is_err());
    }
}
