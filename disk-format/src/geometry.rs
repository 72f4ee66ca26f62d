//! Block geometry of a protected disk: how a disk of a given size splits into
//! blocks, and where each bitmap of the state file lives.

use std::ops::Range;

/// Smallest block size Lifeboat tracks (4 KiB).
pub const MIN_BLOCK_SIZE: u32 = 4096;
/// Largest block size Lifeboat tracks (1 MiB).
pub const MAX_BLOCK_SIZE: u32 = 1 << 20;
/// Bitmaps are padded to whole pages so each can be mapped and flushed alone.
const PAGE: u64 = 4096;

/// Why a disk size / block size pair is not a valid geometry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GeometryError {
    /// The block size is not a power of two between 4 KiB and 1 MiB.
    #[error("block size {0} is not a power of two from 4096 (4 KiB) to 1048576 (1 MiB)")]
    BlockSize(u64),
    /// A zero-length disk cannot be protected.
    #[error("disk size is 0: an empty image cannot be protected")]
    EmptyDisk,
    /// The disk is too large for the state file's offsets.
    #[error("disk size {0} is too large")]
    TooLarge(u64),
}

/// The shape of a protected disk and of its state file.
///
/// The state file is: a 4 KiB header page, then the live bitmap, then the cut
/// bitmap, each `bitmap_len` bytes (a whole number of pages). Bit `i` of a
/// bitmap is bit `i % 64` of the little-endian `u64` word `i / 64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Size of the disk image in bytes (any value; the last block may be short).
    pub disk_size: u64,
    /// Block size in bytes, a power of two in `MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE`.
    pub block_size: u32,
    /// `ceil(disk_size / block_size)`.
    pub block_count: u64,
    /// Bytes of one bitmap in the state file: `ceil(block_count / 64) * 8`, rounded up to 4 KiB.
    pub bitmap_len: u64,
}

impl Geometry {
    /// Checks a disk size / block size pair and derives the rest.
    pub fn new(disk_size: u64, block_size: u64) -> Result<Geometry, GeometryError> {
        if !block_size.is_power_of_two()
            || block_size < u64::from(MIN_BLOCK_SIZE)
            || block_size > u64::from(MAX_BLOCK_SIZE)
        {
            return Err(GeometryError::BlockSize(block_size));
        }
        if disk_size == 0 {
            return Err(GeometryError::EmptyDisk);
        }
        // Keep every derived offset far from u64 overflow: 2^60 bytes (1 EiB).
        if disk_size > 1 << 60 {
            return Err(GeometryError::TooLarge(disk_size));
        }
        let block_count = disk_size.div_ceil(block_size);
        let words = block_count.div_ceil(64);
        let bitmap_len = (words * 8).div_ceil(PAGE) * PAGE;
        Ok(Geometry {
            disk_size,
            block_size: u32::try_from(block_size).map_err(|_| GeometryError::BlockSize(block_size))?,
            block_count,
            bitmap_len,
        })
    }

    /// Number of `u64` words that hold meaningful bits in one bitmap.
    pub fn words(&self) -> usize {
        usize::try_from(self.block_count.div_ceil(64)).expect("bitmap fits in memory")
    }

    /// Byte offset of the live bitmap in the state file.
    pub fn live_offset(&self) -> u64 {
        crate::state::HEADER_PAGE as u64
    }

    /// Byte offset of the cut bitmap in the state file.
    pub fn cut_offset(&self) -> u64 {
        self.live_offset() + self.bitmap_len
    }

    /// Exact length of a valid state file for this geometry.
    pub fn state_file_len(&self) -> u64 {
        self.cut_offset() + self.bitmap_len
    }

    /// Byte range of the disk that block `index` covers (the last one may be short).
    pub fn block_range(&self, index: u64) -> Range<u64> {
        let start = index * u64::from(self.block_size);
        start..(start + u64::from(self.block_size)).min(self.disk_size)
    }

    /// Length in bytes of block `index`.
    pub fn block_len(&self, index: u64) -> usize {
        let r = self.block_range(index);
        usize::try_from(r.end - r.start).expect("block fits in memory")
    }

    /// Mask of the meaningful bits of the last bitmap word (all ones if the
    /// block count is a multiple of 64). Bits outside it must stay zero.
    pub fn last_word_mask(&self) -> u64 {
        match self.block_count % 64 {
            0 => u64::MAX,
            n => (1u64 << n) - 1,
        }
    }
}

/// The blocks that a request of `len` bytes at `offset` touches, as a range of
/// block indexes; empty when `len` is 0. The caller checks `offset + len`
/// against the disk size first; this function never overflows for such inputs.
pub fn blocks_touched(offset: u64, len: u64, block_size: u32) -> Range<u64> {
    if len == 0 {
        return 0..0;
    }
    let bs = u64::from(block_size);
    let first = offset / bs;
    let last = (offset + (len - 1)) / bs;
    first..last + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_bad_block_sizes() {
        for bs in [0u64, 1, 512, 2048, 4095, 65535, 3 << 12, 2 << 20] {
            assert_eq!(Geometry::new(1 << 30, bs), Err(GeometryError::BlockSize(bs)));
        }
        assert_eq!(Geometry::new(0, 65536), Err(GeometryError::EmptyDisk));
    }

    #[test]
    fn odd_disk_size_gets_a_short_last_block() {
        let g = Geometry::new(10 * 65536 + 123, 65536).unwrap();
        assert_eq!(g.block_count, 11);
        assert_eq!(g.block_len(10), 123);
        assert_eq!(g.block_range(10), 655360..655483);
        assert_eq!(g.last_word_mask(), (1 << 11) - 1);
        assert_eq!(g.bitmap_len, 4096);
        assert_eq!(g.state_file_len(), 3 * 4096);
    }

    #[test]
    fn bitmap_is_page_padded() {
        // 8 pages of bitmap hold 8 * 4096 * 8 blocks exactly.
        let g = Geometry::new(8 * 4096 * 8 * 4096, 4096).unwrap();
        assert_eq!(g.bitmap_len, 8 * 4096);
        assert_eq!(g.last_word_mask(), u64::MAX);
        let g = Geometry::new(8 * 4096 * 8 * 4096 + 1, 4096).unwrap();
        assert_eq!(g.bitmap_len, 9 * 4096);
    }

    proptest! {
        #[test]
        fn blocks_touched_covers_exactly_the_bytes(
            shift in 12u32..=20,
            offset in 0u64..(1 << 40),
            len in 0u64..(1 << 24),
        ) {
            let bs = 1u32 << shift;
            let r = blocks_touched(offset, len, bs);
            if len == 0 {
                prop_assert!(r.is_empty());
            } else {
                let bs = u64::from(bs);
                // First and last byte lie in the first and last block...
                prop_assert!(r.start * bs <= offset && offset < (r.start + 1) * bs);
                let last = offset + len - 1;
                prop_assert!((r.end - 1) * bs <= last && last < r.end * bs);
                // ...so no block outside the range holds a byte of the request.
                prop_assert_eq!(r.end - r.start, (last / bs) - (offset / bs) + 1);
            }
        }

        #[test]
        fn geometry_counts_every_byte(disk in 1u64..(1 << 44), shift in 12u32..=20) {
            let g = Geometry::new(disk, 1 << shift).unwrap();
            let last = g.block_range(g.block_count - 1);
            prop_assert_eq!(last.end, disk);
            prop_assert!(last.start < last.end);
            prop_assert!(g.words() as u64 * 8 <= g.bitmap_len);
            prop_assert_eq!(g.bitmap_len % 4096, 0);
            prop_assert_eq!(u64::from(g.last_word_mask().count_ones()), g.block_count - (g.words() as u64 - 1) * 64);
        }
    }
}
