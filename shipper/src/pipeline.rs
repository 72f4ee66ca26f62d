//! The cycle's data path: a reader, hashing/sealing workers and one writer,
//! joined by bounded channels, with block buffers from a fixed pool.
//!
//! A buffer ([`BlockBuf`]: 4096-aligned data with room for the nonce before
//! it and the tag after it) is taken from the pool by the reader and filled
//! with one block's plaintext, hashed and sealed in place by a worker (the
//! blob is then `buf[..blob_len]`), consumed by the writer, and returned to
//! the pool. When the writer stops (it finished or failed) it drops the
//! pool's only sender, the reader's next take fails, and everything winds
//! down without deadlock.
//!
//! How the reader fills a buffer depends on the source. A cut open in this
//! process ([`CutSource::direct`], a `LocalSource`) is read by the read
//! engine straight into the buffer (io_uring, O_DIRECT where it can, many
//! reads in flight; pread where io_uring is unavailable), and each block is
//! then validated with the disk ([`filter::Disk::validate_direct_read`]); a
//! block a writer overwrote meanwhile is read again from its copy, into the
//! same buffer. A block a writer already copied aside before the reader got
//! to it ([`filter::Disk::in_image`] says no) is read from its copy without
//! touching the image: under heavy churn that is most of them. No block is
//! copied between stages. Any other source
//! ([`CutSource::read`], over the filter's control socket) arrives in
//! batches and is copied once into the buffers.

use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{bounded, Receiver, Sender, TryRecvError};
use disk_format::ids::{BlockId, PackId};
use disk_format::keys::{Cipher, Keys, NONCE_LEN};
use disk_format::pack::blob_checksum;
use disk_format::Geometry;
use vault::BlockIndex;

use crate::engine::{default_depth, BlockBuf, BlockPool, Done, Engine, EngineChoice};
use crate::error::ShipError;
use crate::source::{CutSource, DirectCut};

/// Bytes the reader asks a copying source for at once, and between progress
/// reports.
const READ_BATCH: u64 = 8 << 20;

/// One block after the workers.
pub(crate) enum Sealed {
    /// All zero: not stored.
    Zero { index: u64, buf: BlockBuf },
    /// The vault already holds a block with this id, in pack `pack` (as the
    /// index says).
    Known { index: u64, id: BlockId, pack: PackId, buf: BlockBuf },
    /// New data: `buf[..blob_len]` is the sealed blob, `checksum` its CRC-32
    /// for the pack index (computed by the worker, while the blob is hot);
    /// `compressed`: the blob holds the block (of `len` bytes) zstd-compressed.
    New { index: u64, id: BlockId, buf: BlockBuf, blob_len: usize, checksum: u32, compressed: bool, len: usize },
}

struct Plain {
    index: u64,
    len: usize,
    buf: BlockBuf,
}

/// What the pipeline reads and how.
pub(crate) struct Job<'a> {
    /// Runs of consecutive blocks to read: (first, count).
    pub runs: &'a [(u64, u64)],
    /// The disk's geometry.
    pub geometry: Geometry,
    /// Subkeys for ids and sealing.
    pub keys: &'a Keys,
    /// The cipher new blocks are sealed with (the vault's).
    pub cipher: Cipher,
    /// Compress new blocks that shrink by an eighth or more (`vault::compress`).
    pub compress: bool,
    /// Block ids the vault already holds (not sealed again).
    pub known: &'a BlockIndex,
    /// Hashing and sealing threads.
    pub workers: usize,
    /// Checked between reads: set, the pipeline stops with `Cancelled`.
    pub cancel: Option<&'a AtomicBool>,
    /// Ask the page cache before the device ([`Engine::set_cache_first`]).
    pub cache_first: bool,
}

/// Reads every block of the job's runs from `source`, seals what the vault
/// lacks, and hands each block to `sink` in the writer thread. Returns when
/// every block went through `sink` (with the number the page cache served),
/// or the first error.
pub(crate) fn run(
    source: &mut dyn CutSource,
    job: &Job<'_>,
    sink: &mut (dyn FnMut(&Sealed) -> Result<(), ShipError> + Send),
    progress: &mut dyn FnMut(u64),
) -> Result<u64, ShipError> {
    let Job { runs, geometry, keys, cipher, compress, known, workers, cancel, cache_first } = *job;
    let bs = geometry.block_size as usize;
    let workers = workers.max(1);
    let choice = if source.direct().is_some() { Some(EngineChoice::from_env()?) } else { None };
    let depth = match choice {
        None => 0,
        Some(EngineChoice::Sync) => 1,
        Some(_) => default_depth(bs),
    };
    let pool_size = depth + 8 * workers + 8;
    let (pool, bufs) = BlockPool::new(bs, pool_size).map_err(ShipError::Source)?;
    let mut from = match (choice, source.direct()) {
        (Some(choice), Some(cut)) => {
            let reopen = |direct: bool| cut.disk.reopen_image(direct);
            let mut engine = Engine::open(choice, cut.disk.image_path(), &reopen, &pool, depth)?;
            engine.set_cache_first(cache_first);
            ReadFrom::Direct(cut, engine)
        }
        _ => ReadFrom::Copy(source),
    };
    let (pool_tx, pool_rx) = bounded::<BlockBuf>(pool_size);
    for buf in bufs {
        pool_tx.send(buf).expect("pool has room");
    }
    let (work_tx, work_rx) = bounded::<Plain>(pool_size);
    let (done_tx, done_rx) = bounded::<Result<Sealed, ShipError>>(pool_size);

    std::thread::scope(|s| {
        // Named, so that profiles and `top -H` tell the stages apart.
        let named = |name: &str| std::thread::Builder::new().name(name.to_string());
        for n in 0..workers {
            let (rx, tx) = (work_rx.clone(), done_tx.clone());
            let _ = named(&format!("ship-seal-{n}"))
                .spawn_scoped(s, move || seal_worker(&rx, &tx, keys, cipher, compress, known))
                .expect("spawning a sealing thread");
        }
        drop((work_rx, done_tx));
        let writer = named("ship-write")
            .spawn_scoped(s, move || write_all(&done_rx, pool_tx, sink))
            .expect("spawning the writing thread");
        let reader = Reader { runs, geometry, cancel, pool: &pool_rx, work: work_tx, progress };
        let read = match &mut from {
            ReadFrom::Direct(cut, engine) => reader.direct(*cut, engine),
            ReadFrom::Copy(source) => reader.copying(&mut **source),
        };
        let cached = match &from {
            ReadFrom::Direct(_, engine) => engine.cache_stats().0,
            ReadFrom::Copy(_) => 0,
        };
        // Reads still in flight after an error finish here (the engine waits
        // for them), before the workers are joined.
        drop(from);
        let written = writer.join().map_err(|_| ShipError::Panic)?;
        // A writer error is the cause; a read error after it is its echo.
        written.and(read).map(|()| cached)
    })
}

/// Where the reader gets the blocks.
enum ReadFrom<'s> {
    /// Straight from the image, with a read engine.
    Direct(DirectCut<'s>, Engine),
    /// Copied from [`CutSource::read`].
    Copy(&'s mut dyn CutSource),
}

struct Reader<'a, 'p> {
    runs: &'a [(u64, u64)],
    geometry: Geometry,
    cancel: Option<&'a AtomicBool>,
    pool: &'a Receiver<BlockBuf>,
    work: Sender<Plain>,
    progress: &'p mut dyn FnMut(u64),
}

impl Reader<'_, '_> {
    fn cancelled(&self) -> bool {
        self.cancel.is_some_and(|c| c.load(Ordering::Relaxed))
    }

    /// Reads through `source.read` in batches, copying each block into a
    /// pool buffer.
    fn copying(self, source: &mut dyn CutSource) -> Result<(), ShipError> {
        let Reader { runs, geometry, pool, work, progress, .. } = self;
        let per = (READ_BATCH / u64::from(geometry.block_size)).max(1);
        let mut chunk = Vec::with_capacity(usize::try_from(READ_BATCH).expect("8 MiB") + geometry.block_size as usize);
        for &(first, count) in runs {
            let mut at = first;
            while at < first + count {
                if self.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                    return Err(ShipError::Cancelled);
                }
                let n = per.min(first + count - at);
                chunk.clear();
                source.read(at, n, &mut chunk)?;
                let mut off = 0;
                for b in at..at + n {
                    let len = geometry.block_len(b);
                    let Ok(mut buf) = pool.recv() else { return Ok(()) }; // the writer stopped
                    buf.data_mut()[..len].copy_from_slice(&chunk[off..off + len]);
                    off += len;
                    if work.send(Plain { index: b, len, buf }).is_err() {
                        return Ok(());
                    }
                }
                progress(off as u64);
                at += n;
            }
        }
        Ok(())
    }

    /// Sends a read block to the workers and reports progress every
    /// [`READ_BATCH`] bytes; false if the workers stopped (the writer failed).
    fn hand_on(&mut self, plain: Plain, unreported: &mut u64) -> bool {
        *unreported += plain.len as u64;
        if self.work.send(plain).is_err() {
            return false;
        }
        if *unreported >= READ_BATCH {
            (self.progress)(*unreported);
            *unreported = 0;
        }
        true
    }

    /// Reads with `engine` straight into pool buffers, validating each block
    /// with the disk; counts the blocks read from their copies instead.
    fn direct(mut self, cut: DirectCut<'_>, engine: &mut Engine) -> Result<(), ShipError> {
        let geometry = self.geometry;
        let mut blocks = self.runs.iter().flat_map(|&(first, count)| first..first + count);
        let mut next = blocks.next();
        let mut done: Vec<Done> = Vec::with_capacity(engine.capacity());
        let mut unreported = 0u64;
        loop {
            // Fill the engine while it has room and the pool has buffers.
            while let Some(b) = next {
                if engine.in_flight() >= engine.capacity() {
                    break;
                }
                if self.cancelled() {
                    return Err(ShipError::Cancelled);
                }
                let buf = match self.pool.try_recv() {
                    Ok(buf) => buf,
                    // Reads in flight will finish and free buffers downstream.
                    Err(TryRecvError::Empty) if engine.in_flight() > 0 => break,
                    Err(TryRecvError::Empty) => match self.pool.recv() {
                        Ok(buf) => buf,
                        Err(_) => return Ok(()), // the writer stopped
                    },
                    Err(TryRecvError::Disconnected) => return Ok(()),
                };
                let len = geometry.block_len(b);
                if !cut.disk.in_image(b) {
                    // A writer copied it aside already: reading the image
                    // (and waiting for its new data to be written back, with
                    // O_DIRECT) would only be thrown away. Read the copy.
                    let mut buf = buf;
                    cut.disk.read_cut_block(b, &mut buf.data_mut()[..len])?;
                    if !self.hand_on(Plain { index: b, len, buf }, &mut unreported) {
                        return Ok(()); // the workers stopped: the writer failed
                    }
                    next = blocks.next();
                    continue;
                }
                let range = geometry.block_range(b);
                if engine.push(b, range.start, len, buf).is_err() {
                    unreachable!("the engine had room and the block fits the buffer");
                }
                next = blocks.next();
            }
            if engine.in_flight() == 0 {
                break; // every block was pushed and reaped
            }
            engine.reap(true, &mut done)?;
            for Done { block, len, mut buf, result } in done.drain(..) {
                result?;
                if !cut.disk.validate_direct_read(cut.generation, block)? {
                    // A writer overwrote it while (or before) we read it: the
                    // cut-time contents are in its copy.
                    cut.disk.read_cut_block(block, &mut buf.data_mut()[..len])?;
                }
                if !self.hand_on(Plain { index: block, len, buf }, &mut unreported) {
                    return Ok(()); // the workers stopped: the writer failed
                }
            }
        }
        if unreported > 0 {
            (self.progress)(unreported);
        }
        Ok(())
    }
}

/// Whether `data` is all zero (word-wide, so it vectorizes).
fn is_zero(data: &[u8]) -> bool {
    let mut chunks = data.chunks_exact(64);
    let tail_zero = chunks.remainder().iter().all(|&b| b == 0);
    tail_zero && chunks.all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

fn seal_worker(
    rx: &Receiver<Plain>,
    tx: &Sender<Result<Sealed, ShipError>>,
    keys: &Keys,
    cipher: Cipher,
    compress: bool,
    known: &BlockIndex,
) {
    // Each worker compresses with a context and a buffer of its own.
    let mut compressor = compress.then(vault::compress::Compressor::new).and_then(Result::ok);
    let mut squeezed = Vec::new();
    for Plain { index, len, mut buf } in rx {
        let plain = &buf[NONCE_LEN..NONCE_LEN + len];
        let out = if is_zero(plain) {
            Ok(Sealed::Zero { index, buf })
        } else {
            let id = keys.block_id(plain);
            if let Some(loc) = known.get(&id) {
                Ok(Sealed::Known { index, id, pack: loc.pack, buf })
            } else {
                // Compressed (after the id: dedup and the id are about the
                // plaintext), the block replaces its plaintext in the buffer.
                let mut sealed_len = len;
                let mut compressed = false;
                if let Some(c) = compressor.as_mut() {
                    squeezed.resize(len, 0);
                    if let Some(n) = c.compress(&buf[NONCE_LEN..NONCE_LEN + len], &mut squeezed) {
                        buf[NONCE_LEN..NONCE_LEN + n].copy_from_slice(&squeezed[..n]);
                        (sealed_len, compressed) = (n, true);
                    }
                }
                match keys.seal_in_place(cipher, &id, &mut buf, sealed_len) {
                    Ok(blob_len) => {
                        let checksum = blob_checksum(&buf[..blob_len]);
                        Ok(Sealed::New { index, id, buf, blob_len, checksum, compressed, len })
                    }
                    Err(source) => Err(ShipError::Seal { block: index, source }),
                }
            }
        };
        if tx.send(out).is_err() {
            return;
        }
    }
}

fn write_all(
    rx: &Receiver<Result<Sealed, ShipError>>,
    pool: Sender<BlockBuf>,
    sink: &mut (dyn FnMut(&Sealed) -> Result<(), ShipError> + Send),
) -> Result<(), ShipError> {
    for item in rx {
        let sealed = item?;
        sink(&sealed)?;
        let buf = match sealed {
            Sealed::Zero { buf, .. } | Sealed::Known { buf, .. } | Sealed::New { buf, .. } => buf,
        };
        let _ = pool.send(buf);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::is_zero;

    #[test]
    fn zero_check_sees_every_byte() {
        for len in [0usize, 1, 63, 64, 65, 4096, 65536 - 1000] {
            let mut v = vec![0u8; len];
            assert!(is_zero(&v));
            for i in [0, len / 2, len.saturating_sub(1)] {
                if i < len {
                    v[i] = 1;
                    assert!(!is_zero(&v), "len {len}, byte {i}");
                    v[i] = 0;
                }
            }
        }
    }
}
