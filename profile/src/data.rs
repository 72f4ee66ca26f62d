//! What an initial sync of a disk would ship: a sample of the data already
//! on its image. The churn profile sees only what the VM writes, and a
//! disk's old data can compress quite unlike its new writes (a database's
//! fresh pages against its compressed archives), so `lifeboat
//! plan-capacity` reads the image itself for the initial sync.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// What a sample of an image's data holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataSample {
    /// Blocks read (each at least partly data, not a hole).
    pub blocks: u64,
    /// Of them, all zero (an initial sync ships none of those).
    pub zero: u64,
    /// Bytes read.
    pub bytes: u64,
    /// What the vault would store of them: zero blocks nothing, the rest
    /// compressed by the vault's rule.
    pub stored: u64,
}

impl DataSample {
    /// Bytes stored per byte of data, if anything was read.
    #[allow(clippy::cast_precision_loss)]
    pub fn ships(&self) -> Option<f64> {
        (self.bytes > 0).then(|| self.stored as f64 / self.bytes as f64)
    }
}

/// Reads up to `want` blocks of `block_size` at random places among the
/// data of `image` (`size` bytes; holes are skipped, as they hold no
/// data) and compresses them by the vault's rule, for at most `limit`.
pub fn sample_image(image: &File, size: u64, block_size: u32, want: u64, limit: Duration) -> io::Result<DataSample> {
    let bs = u64::from(block_size.max(512));
    let blocks = size.div_ceil(bs);
    let mut s = DataSample::default();
    if blocks == 0 {
        return Ok(s);
    }
    let mut state = [0u8; 8];
    getrandom::fill(&mut state).map_err(io::Error::other)?;
    let mut state = u64::from_le_bytes(state) | 1;
    let mut compressor = vault::compress::Compressor::new()?;
    let (mut block, mut out) = (vec![0u8; usize::try_from(bs).unwrap_or(1 << 20)], vec![0u8; 0]);
    out.resize(block.len(), 0);
    let start = Instant::now();
    // A mostly sparse image needs many tries to find its data; each costs
    // one lseek. A try limit keeps an empty image quick.
    let mut tries = 0u64;
    while s.blocks < want && tries < want.saturating_mul(4096) && start.elapsed() < limit {
        tries += 1;
        // xorshift64: the places need to be spread, not secret.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let at = (state % blocks) * bs;
        match system::extent::next_data(image, at)? {
            Some(d) if d < at + bs => {}
            _ => continue,
        }
        let len = usize::try_from(bs.min(size - at)).unwrap_or(block.len());
        let buf = &mut block[..len];
        image.read_exact_at(buf, at)?;
        s.blocks += 1;
        s.bytes += len as u64;
        if buf.iter().all(|&b| b == 0) {
            s.zero += 1;
            continue;
        }
        s.stored += compressor.compress(buf, &mut out[..len]).unwrap_or(len) as u64;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_finds_the_data_among_holes_and_tells_zero_text_and_random() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(dir.path().join("i")).unwrap();
        let bs = 64 * 1024usize;
        f.set_len(1 << 30).unwrap();
        // 64 blocks of data in a 1 GiB sparse image: 16 random, 16 text,
        // 32 written as zeroes (allocated, so data to lseek, yet nothing
        // to ship).
        let mut random = vec![0u8; 16 * bs];
        getrandom::fill(&mut random).unwrap();
        f.write_all_at(&random, 0).unwrap();
        let text: Vec<u8> =
            b"the quick brown fox jumps over the lazy dog. ".iter().copied().cycle().take(16 * bs).collect();
        f.write_all_at(&text, 512 << 20).unwrap();
        f.write_all_at(&vec![0u8; 32 * bs], 900 << 20).unwrap();
        let s = sample_image(&f, 1 << 30, 64 * 1024, 400, Duration::from_secs(60)).unwrap();
        assert_eq!(s.blocks, 400, "{s:?}");
        // About a quarter random (stored whole), a quarter text (a sliver),
        // half zero (nothing): a little over a quarter ships.
        let zero = s.zero as f64 / s.blocks as f64;
        assert!((0.35..0.65).contains(&zero), "{s:?}");
        let ships = s.ships().unwrap();
        assert!((0.15..0.40).contains(&ships), "{ships} {s:?}");

        // No data at all: nothing read, and quickly.
        let empty =
            std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(dir.path().join("e")).unwrap();
        empty.set_len(1 << 30).unwrap();
        let s = sample_image(&empty, 1 << 30, 64 * 1024, 400, Duration::from_secs(60)).unwrap();
        assert_eq!((s.blocks, s.ships()), (0, None));
    }
}
