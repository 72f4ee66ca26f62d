//! The cycle's data path: a reader, hashing/sealing workers and one writer,
//! joined by bounded channels, with block buffers from a fixed pool.
//!
//! A buffer is taken from the pool by the reader, filled with one block's
//! plaintext at offset `NONCE_LEN`, hashed and sealed in place by a worker
//! (the blob is then `buf[..blob_len]`), consumed by the writer, and returned
//! to the pool: no block is copied between stages. When the writer stops (it
//! finished or failed) it drops the pool's only sender, the reader's next
//! take fails, and everything winds down without deadlock.

use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{bounded, Receiver, Sender};
use disk_format::ids::BlockId;
use disk_format::keys::{Keys, NONCE_LEN, SEAL_OVERHEAD};
use disk_format::Geometry;
use vault::BlockIndex;

use crate::error::ShipError;
use crate::source::CutSource;

/// Bytes the reader asks the source for at once.
const READ_BATCH: u64 = 8 << 20;

/// One block after the workers.
pub(crate) enum Sealed {
    /// All zero: not stored.
    Zero { index: u64, buf: Vec<u8> },
    /// The vault already holds a block with this id.
    Known { index: u64, id: BlockId, buf: Vec<u8> },
    /// New data: `buf[..blob_len]` is the sealed blob.
    New { index: u64, id: BlockId, buf: Vec<u8>, blob_len: usize },
}

struct Plain {
    index: u64,
    len: usize,
    buf: Vec<u8>,
}

/// What the pipeline reads and how.
pub(crate) struct Job<'a> {
    /// Runs of consecutive blocks to read: (first, count).
    pub runs: &'a [(u64, u64)],
    /// The disk's geometry.
    pub geometry: Geometry,
    /// Subkeys for ids and sealing.
    pub keys: &'a Keys,
    /// Block ids the vault already holds (not sealed again).
    pub known: &'a BlockIndex,
    /// Hashing and sealing threads.
    pub workers: usize,
    /// Checked between read batches: set, the pipeline stops with `Cancelled`.
    pub cancel: Option<&'a AtomicBool>,
}

/// Reads every block of the job's runs from `source`, seals what the vault
/// lacks, and hands each block to `sink` in the writer thread. Returns when
/// every block went through `sink`, or the first error.
pub(crate) fn run(
    source: &mut dyn CutSource,
    job: &Job<'_>,
    sink: &mut (dyn FnMut(&Sealed) -> Result<(), ShipError> + Send),
    progress: &mut dyn FnMut(u64),
) -> Result<(), ShipError> {
    let Job { runs, geometry, keys, known, workers, cancel } = *job;
    let bs = geometry.block_size as usize;
    let pool_size = 8 * workers.max(1) + 8;
    let (pool_tx, pool_rx) = bounded::<Vec<u8>>(pool_size);
    for _ in 0..pool_size {
        pool_tx.send(vec![0u8; bs + SEAL_OVERHEAD]).expect("pool has room");
    }
    let (work_tx, work_rx) = bounded::<Plain>(pool_size);
    let (done_tx, done_rx) = bounded::<Result<Sealed, ShipError>>(pool_size);

    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            let (rx, tx) = (work_rx.clone(), done_tx.clone());
            s.spawn(move || seal_worker(&rx, &tx, keys, known));
        }
        drop((work_rx, done_tx));
        let writer = s.spawn(move || write_all(&done_rx, pool_tx, sink));
        let read = read_all(source, runs, geometry, cancel, &pool_rx, work_tx, progress);
        let written = writer.join().map_err(|_| ShipError::Panic)?;
        // A writer error is the cause; a read error after it is its echo.
        written.and(read)
    })
}

fn read_all(
    source: &mut dyn CutSource,
    runs: &[(u64, u64)],
    geometry: Geometry,
    cancel: Option<&AtomicBool>,
    pool: &Receiver<Vec<u8>>,
    work: Sender<Plain>,
    progress: &mut dyn FnMut(u64),
) -> Result<(), ShipError> {
    let per = (READ_BATCH / u64::from(geometry.block_size)).max(1);
    let mut chunk = Vec::with_capacity(usize::try_from(READ_BATCH).expect("8 MiB") + geometry.block_size as usize);
    for &(first, count) in runs {
        let mut at = first;
        while at < first + count {
            if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(ShipError::Cancelled);
            }
            let n = per.min(first + count - at);
            chunk.clear();
            source.read(at, n, &mut chunk)?;
            let mut off = 0;
            for b in at..at + n {
                let len = geometry.block_len(b);
                let Ok(mut buf) = pool.recv() else { return Ok(()) }; // the writer stopped
                buf[NONCE_LEN..NONCE_LEN + len].copy_from_slice(&chunk[off..off + len]);
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

fn seal_worker(rx: &Receiver<Plain>, tx: &Sender<Result<Sealed, ShipError>>, keys: &Keys, known: &BlockIndex) {
    for Plain { index, len, mut buf } in rx {
        let plain = &buf[NONCE_LEN..NONCE_LEN + len];
        let out = if plain.iter().all(|&b| b == 0) {
            Ok(Sealed::Zero { index, buf })
        } else {
            let id = keys.block_id(plain);
            if known.contains(&id) {
                Ok(Sealed::Known { index, id, buf })
            } else {
                match keys.seal_in_place(&id, &mut buf, len) {
                    Ok(blob_len) => Ok(Sealed::New { index, id, buf, blob_len }),
                    Err(e) => Err(ShipError::Format(format!("sealing block {index}: {e}"))),
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
    pool: Sender<Vec<u8>>,
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
