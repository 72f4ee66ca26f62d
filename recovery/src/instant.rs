//! Instant recovery: serve a recovery point over NBD at once, fetching each
//! block from the vault on its first read, while a background copy
//! materializes the rest into a local image.
//!
//! The local image starts sparse (all zero) at the disk's size. A
//! **present** bitmap says which blocks of it hold the point's data (or the
//! VM's own writes since): zero blocks of the point are present from the
//! start; any other block is fetched (authenticated by
//! [`vault::PointReader`]) and written into the image under its stripe lock
//! before the first read or write that touches it is served, so the VM's
//! own writes always land on the point's data and are never overwritten by
//! a later fetch. The bitmap is a file beside the image (one bit a block,
//! written with `pwrite` after the block's data), synced after the image on
//! every NBD FLUSH; after a crash a block whose bit was lost is fetched
//! again, which at worst undoes a write the VM had not flushed.
//!
//! When every block is present the image is a complete local copy and the
//! vault is no longer needed.
//!
//! The guest comes first: while a read or write of the VM is fetching
//! blocks, the background copy starts no new fetch (it finishes the ones in
//! flight), so the guest's fetches have the vault's link to themselves, not
//! one share in seventeen.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use disk_format::Geometry;
use filter::nbd::Export;
use vault::PointReader;

/// Stripe locks: blocks `b` and `b + STRIPES` share one.
const STRIPES: usize = 256;

/// A point served from the vault into a local image (see the module
/// documentation).
pub struct InstantDisk {
    reader: PointReader,
    geometry: Geometry,
    image: File,
    bitmap: File,
    present: Vec<AtomicU64>,
    stripes: Vec<Mutex<()>>,
    fetched: AtomicU64,
    fetched_on_demand: AtomicU64,
    /// Reads and writes of the VM fetching blocks now; the background copy
    /// waits on `demand_done` while any are.
    demand: Mutex<u64>,
    demand_done: Condvar,
    /// Background fetchers waiting for the VM's fetches now.
    yielding: AtomicU64,
}

/// One read or write of the VM fetching: the background copy holds back
/// until it is dropped.
struct Demand<'a>(&'a InstantDisk);

impl Drop for Demand<'_> {
    fn drop(&mut self) {
        let mut n = lock(&self.0.demand);
        *n -= 1;
        if *n == 0 {
            self.0.demand_done.notify_all();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn word_bit(block: u64) -> (usize, u64) {
    (usize::try_from(block / 64).expect("fits"), 1u64 << (block % 64))
}

impl InstantDisk {
    /// Opens (or, after a restart, reopens) the local image and its bitmap
    /// for the point `reader` reads. A new image is created sparse at the
    /// disk's size; an existing one must have that size, and its bitmap
    /// file is trusted for the blocks it marks present.
    pub fn open(reader: PointReader, image: &Path, bitmap: &Path) -> io::Result<InstantDisk> {
        let geometry = reader.geometry();
        let words = usize::try_from(geometry.block_count.div_ceil(64)).expect("fits");
        let fresh = !image.exists();
        let img = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(image)?;
        if fresh {
            img.set_len(geometry.disk_size)?;
        } else if img.metadata()?.len() != geometry.disk_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is not {} bytes, the disk's size at the point: not this point's copy",
                    image.display(),
                    geometry.disk_size
                ),
            ));
        }
        let bm = OpenOptions::new().read(true).write(true).create(true).truncate(fresh).mode(0o600).open(bitmap)?;
        let mut bytes = vec![0u8; words * 8];
        if !fresh {
            let n = bm.read_at(&mut bytes, 0)?;
            bytes[n..].fill(0);
        }
        let present: Vec<AtomicU64> =
            bytes.chunks_exact(8).map(|c| AtomicU64::new(u64::from_le_bytes(c.try_into().expect("8 bytes")))).collect();
        let disk = InstantDisk {
            reader,
            geometry,
            image: img,
            bitmap: bm,
            present,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            fetched: AtomicU64::new(0),
            fetched_on_demand: AtomicU64::new(0),
            demand: Mutex::new(0),
            demand_done: Condvar::new(),
            yielding: AtomicU64::new(0),
        };
        // Zero blocks are present in a sparse image already.
        for b in 0..geometry.block_count {
            if disk.reader.is_zero(b) && !disk.is_present(b) {
                let (w, bit) = word_bit(b);
                disk.present[w].fetch_or(bit, Ordering::AcqRel);
            }
        }
        for w in 0..words {
            disk.persist_word(w)?;
        }
        disk.bitmap.sync_data()?;
        Ok(disk)
    }

    fn is_present(&self, block: u64) -> bool {
        let (w, bit) = word_bit(block);
        self.present[w].load(Ordering::Acquire) & bit != 0
    }

    fn persist_word(&self, w: usize) -> io::Result<()> {
        let v = self.present[w].load(Ordering::Acquire);
        self.bitmap.write_all_at(&v.to_le_bytes(), (w * 8) as u64)
    }

    /// Fetches `block` into the image unless it is present already.
    fn ensure(&self, block: u64, on_demand: bool) -> io::Result<()> {
        if self.is_present(block) {
            return Ok(());
        }
        let _g = self.stripes[usize::try_from(block).expect("fits") % STRIPES]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.is_present(block) {
            return Ok(());
        }
        let mut buf = vec![0u8; self.geometry.block_len(block)];
        self.reader.read_block(block, &mut buf).map_err(|e| io::Error::other(e.to_string()))?;
        self.image.write_all_at(&buf, self.geometry.block_range(block).start)?;
        let (w, bit) = word_bit(block);
        self.present[w].fetch_or(bit, Ordering::AcqRel);
        self.persist_word(w)?;
        self.fetched.fetch_add(1, Ordering::Relaxed);
        if on_demand {
            self.fetched_on_demand.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Fetches every block of `offset..offset + len` not present yet, for
    /// a read or write of the VM: the missing blocks all at once, as many
    /// in flight as the vault wants (a guest's 1 MiB read of a cold disk is
    /// 16 blocks of 64 KiB: one round trip to a cloud vault, not 16).
    fn ensure_range(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let bs = u64::from(self.geometry.block_size);
        let missing: Vec<u64> = (offset / bs..=(offset + len - 1) / bs).filter(|b| !self.is_present(*b)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        *lock(&self.demand) += 1;
        let _demand = Demand(self);
        let lanes = self.reader.reads_in_flight().max(1).min(missing.len());
        if lanes <= 1 {
            return missing.iter().try_for_each(|b| self.ensure(*b, true));
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let first_error: Mutex<Option<io::Error>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..lanes {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(b) = missing.get(i) else { return };
                    if let Err(e) = self.ensure(*b, true) {
                        first_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get_or_insert(e);
                        // The others stop at their next block.
                        next.store(missing.len(), Ordering::Relaxed);
                        return;
                    }
                });
            }
        });
        match first_error.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Copies every block not yet present, in block order, until done or
    /// `stop` is set; `progress(blocks_done, total)` after each block (from
    /// the copying threads). As many fetches are in flight as the vault
    /// wants ([`vault::PointReader::reads_in_flight`]: one for a local
    /// vault, 16 for a vault server, whose round trip would otherwise bound
    /// the copy to a block per round trip). Reads and writes the VM makes
    /// meanwhile are served first: they fetch what they need themselves,
    /// and no copying thread starts a fetch while they do.
    /// Returns whether every block is present; on an error the first is
    /// returned once the other threads have stopped.
    pub fn background_copy(&self, stop: &AtomicBool, progress: &(dyn Fn(u64, u64) + Sync)) -> io::Result<bool> {
        let total = self.geometry.block_count;
        let next = AtomicU64::new(0);
        let done = AtomicU64::new(0);
        let failed = AtomicBool::new(false);
        let first_error: Mutex<Option<io::Error>> = Mutex::new(None);
        let threads = self.reader.reads_in_flight().max(1);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    if stop.load(Ordering::Relaxed) || failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let b = next.fetch_add(1, Ordering::Relaxed);
                    if b >= total {
                        return;
                    }
                    if !self.is_present(b) {
                        self.yield_to_guest();
                        if let Err(e) = self.ensure(b, false) {
                            failed.store(true, Ordering::Relaxed);
                            first_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get_or_insert(e);
                            return;
                        }
                    }
                    progress(done.fetch_add(1, Ordering::Relaxed) + 1, total);
                });
            }
        });
        if let Some(e) = first_error.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner) {
            return Err(e);
        }
        if stop.load(Ordering::Relaxed) && done.load(Ordering::Relaxed) < total {
            return Ok(false);
        }
        self.image.sync_data()?;
        self.bitmap.sync_data()?;
        Ok(true)
    }

    /// Waits while a read or write of the VM is fetching.
    fn yield_to_guest(&self) {
        let mut n = lock(&self.demand);
        if *n == 0 {
            return;
        }
        self.yielding.fetch_add(1, Ordering::Relaxed);
        while *n > 0 {
            n = self.demand_done.wait(n).unwrap_or_else(PoisonError::into_inner);
        }
        self.yielding.fetch_sub(1, Ordering::Relaxed);
    }

    /// Background copying threads holding back for the VM's fetches now.
    pub fn yielding(&self) -> u64 {
        self.yielding.load(Ordering::Relaxed)
    }

    /// Blocks present so far, of all.
    pub fn present_blocks(&self) -> (u64, u64) {
        let n: u64 = self.present.iter().map(|w| u64::from(w.load(Ordering::Relaxed).count_ones())).sum();
        (n, self.geometry.block_count)
    }

    /// Blocks fetched from the vault so far, and how many of them a read or
    /// write was waiting for.
    pub fn fetched(&self) -> (u64, u64) {
        (self.fetched.load(Ordering::Relaxed), self.fetched_on_demand.load(Ordering::Relaxed))
    }
}

impl Export for InstantDisk {
    fn size(&self) -> u64 {
        self.geometry.disk_size
    }

    fn preferred_block_size(&self) -> u32 {
        4096
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.ensure_range(offset, buf.len() as u64)?;
        self.image.read_exact_at(buf, offset)
    }

    fn write_at(&self, data: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        // Fetch first even for whole blocks: a fetch racing a write could
        // otherwise land after it. (One wasted fetch per block overwritten
        // whole before its first read.)
        self.ensure_range(offset, data.len() as u64)?;
        self.image.write_all_at(data, offset)?;
        if fua {
            self.image.sync_data()?;
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.image.sync_data()?;
        self.bitmap.sync_data()
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        // Contents after a trim are unspecified; keeping the point's data is
        // allowed and keeps the bitmap simple.
        self.ensure_range(offset, len)?;
        if fua {
            self.image.sync_data()?;
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, _may_trim: bool, fua: bool) -> io::Result<()> {
        self.ensure_range(offset, len)?;
        let zeros = vec![0u8; 1 << 20];
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(zeros.len() as u64);
            self.image.write_all_at(&zeros[..usize::try_from(n).expect("<= 1 MiB")], at)?;
            at += n;
        }
        if fua {
            self.image.sync_data()?;
        }
        Ok(())
    }
}

/// Serves an [`InstantDisk`] on a unix socket, copying in the background
/// meanwhile, until the server is shut down through the handle given to
/// `ready` (called once it listens).
pub fn serve(
    disk: Arc<InstantDisk>,
    socket: &Path,
    name: &str,
    ready: impl FnOnce(filter::nbd::ShutdownHandle),
) -> io::Result<()> {
    let listen = filter::nbd::Listen::Unix(socket.to_path_buf());
    let server = filter::nbd::Server::bind(&[listen], name, Arc::clone(&disk) as Arc<dyn Export>)?;
    let stop_copy = Arc::new(AtomicBool::new(false));
    let copier = {
        let (disk, stop) = (Arc::clone(&disk), Arc::clone(&stop_copy));
        std::thread::spawn(move || disk.background_copy(&stop, &|_, _| {}))
    };
    ready(server.shutdown_handle());
    let result = server.run();
    stop_copy.store(true, Ordering::Relaxed);
    let copied = copier.join().map_err(|_| io::Error::other("the background copy panicked"))?;
    result.and(copied.map(|_| ()))
}
