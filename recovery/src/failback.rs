//! Failback: bring a disk at the original site to a recovery point while
//! moving only the blocks that differ.
//!
//! [`converge`] reads the local image block by block, computes each block's
//! keyed id (the same BLAKE3 the shipper names blocks with) and compares it
//! with the point's; only a block whose id differs is fetched from the vault
//! (authenticated) and written, and a block the point has as zero is zeroed.
//! So the bytes fetched are those the two sides disagree on — what the
//! recovered VM changed since the failover, plus what the original disk
//! changed after the failover point — whatever the disk's size, and no
//! state file has to have survived at either site. The local disk is read
//! once, whole (hashing runs at several GB/s; the disk is the bound).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use disk_format::Keys;
use serde::Serialize;
use vault::PointReader;

/// What a [`converge`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConvergeReport {
    /// Blocks of the disk.
    pub blocks: u64,
    /// Blocks whose contents differed and were fetched and written.
    pub fetched_blocks: u64,
    /// Bytes fetched from the vault (plaintext).
    pub fetched_bytes: u64,
    /// Blocks the point has as zero that were not zero locally (zeroed).
    pub zeroed_blocks: u64,
}

/// Makes `image` byte for byte the point `reader` reads (see the module
/// documentation); `progress` counts blocks compared (one phase,
/// "comparing blocks"). The image must be the
/// disk's size.
pub fn converge(
    reader: &PointReader,
    keys: &Keys,
    image: &File,
    progress: &mut dyn vault::Progress,
) -> io::Result<ConvergeReport> {
    let g = reader.geometry();
    let len = image.metadata()?.len();
    if len != g.disk_size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the disk is {len} bytes but the point's disk is {}: not the same disk", g.disk_size),
        ));
    }
    let mut report = ConvergeReport { blocks: g.block_count, ..ConvergeReport::default() };
    let mut local = vec![0u8; g.block_size as usize];
    let mut remote = vec![0u8; g.block_size as usize];
    progress.start("comparing blocks", g.block_count);
    for b in 0..g.block_count {
        let n = g.block_len(b);
        let at = g.block_range(b).start;
        image.read_exact_at(&mut local[..n], at)?;
        match reader.block_id(b) {
            None => {
                if local[..n].iter().any(|&x| x != 0) {
                    remote[..n].fill(0);
                    image.write_all_at(&remote[..n], at)?;
                    report.zeroed_blocks += 1;
                }
            }
            Some(id) => {
                if keys.block_id(&local[..n]) != *id {
                    reader.read_block(b, &mut remote[..n]).map_err(|e| io::Error::other(e.to_string()))?;
                    image.write_all_at(&remote[..n], at)?;
                    report.fetched_blocks += 1;
                    report.fetched_bytes += n as u64;
                }
            }
        }
        if b % 256 == 255 || b + 1 == g.block_count {
            progress.advance(b % 256 + 1);
        }
    }
    image.sync_all()?;
    Ok(report)
}
