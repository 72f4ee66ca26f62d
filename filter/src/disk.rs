//! A protected disk at run time: its image, its state file, and the cut.
//!
//! **Write path.** Every write, trim and write-zeroes takes the cut gate in
//! shared mode, sets the live bits of the blocks it touches, preserves any of
//! those blocks that a cut still needs (one local copy of the old block, the
//! only extra work a VM write ever waits for), and only then writes the image.
//! Because the bit is set before the data write is issued, a write
//! acknowledged to the client is always recorded.
//!
//! **The cut.** [`Disk::cut`] takes the gate exclusively: it waits for the
//! writes in flight to finish (each lands wholly before the cut) and holds off
//! new ones for the moment it takes to move the live bits into the cut bitmap.
//! From then on, each block of the cut's *preserve set* (the cut blocks, or
//! every block for a full point-in-time copy) has its old contents copied to a
//! scratch file before its first overwrite. A reader of the cut
//! ([`Disk::read_cut_block`]) gets the copy if there is one and the image
//! otherwise; the per-block stripe lock makes "copy or read" atomic against a
//! concurrent writer. Reading a block releases it: later writes to it skip the
//! copy. A reader in the same process may also read cut blocks straight from
//! the image without any lock and then check, per block, that no writer got
//! there first ([`Disk::validate_direct_read`], which says why that is safe).
//!
//! [`Disk::finish_cut`] ends a cut whose point is safely stored (the cut bits
//! are dropped); [`Disk::abort_cut`] ends one that was not (the cut bits go
//! back to the live map, so nothing is lost). Copies live only in this
//! process: a filter that dies mid-cut is reopened with its cut merged back.
//!
//! **The copies** wait in block-sized slots, in memory up to a process-wide
//! budget and then in the disk's scratch file ([`crate::copies`]). A slot
//! whose copy was read is reused by the next copy, so during a cut neither
//! grows past the most copies waiting at once, and nothing is allocated or
//! freed per block: punching a hole per block read cost a synchronous discard
//! on a filesystem mounted with `discard` (measured under the churn bench:
//! the cycle's reader spent seconds per cycle in `blkdev_issue_discard`).
//! They are emptied once per cut, after the cut ends and outside the gate,
//! so VM writes never wait on that either.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};

use disk_format::{blocks_touched, Geometry, LastPoint};

use crate::bitmap::Bitmap;
use crate::copies::{CopyMemory, CopyStore, CopyUsage, Slot};
use crate::error::FilterError;
use crate::image::{lock_for_serving, ImageId};
use crate::nbd::Export;
use crate::state_file::StateFile;

const STRIPES: usize = 64;

/// Which blocks a cut preserves for its reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutKind {
    /// The blocks written since the last cut: what a replication cycle ships.
    Dirty,
    /// Every block: a point-in-time copy of the whole disk (`lifeboat snapshot`).
    Full,
}

/// What a cut took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutInfo {
    /// Generation number of this cut.
    pub generation: u64,
    /// Blocks moved from the live map into the cut map.
    pub dirty_blocks: u64,
    /// Blocks the reader may read (the preserve set).
    pub readable_blocks: u64,
}

/// Told of every write a client makes, once it has reached the image: the
/// churn profile (issue 16) counts them. Called on the NBD worker's thread,
/// so an implementation must be cheap and must never block.
pub trait WriteObserver: Send + Sync {
    /// `len` bytes were written over `blocks`; `zeroes` when the request was
    /// a write-zeroes or trim (its data is known to be zero).
    fn wrote(&self, blocks: Range<u64>, len: u64, zeroes: bool);
}

/// Paths of a protected disk's files.
#[derive(Debug, Clone)]
pub struct DiskPaths {
    /// The raw disk image the VM uses.
    pub image: PathBuf,
    /// The state file.
    pub state: PathBuf,
    /// Scratch file for copy-before-write copies during a cut.
    pub scratch: PathBuf,
}

struct ActiveCut {
    generation: u64,
}

/// A protected disk, open for serving and cutting.
pub struct Disk {
    paths: DiskPaths,
    image: File,
    /// Which file `image` is.
    image_id: ImageId,
    geometry: Geometry,
    state: StateFile,
    /// Copy-before-write copies of the current cut, one block-sized slot each.
    copies_store: CopyStore,
    /// Writes and cut reads hold it shared; cut, finish and abort hold it exclusively.
    gate: RwLock<()>,
    /// Fast check on the write path: is any cut in progress?
    cutting: AtomicBool,
    cut: Mutex<Option<ActiveCut>>,
    /// Blocks whose old contents the current cut still needs (not yet copied,
    /// not yet read). Only meaningful while `cutting`.
    preserve: Vec<AtomicU64>,
    /// Block -> its copy's slot, striped by block number.
    copies: Vec<Mutex<HashMap<u64, Slot>>>,
    /// The copy store holds copies of an ended cut; emptied by whoever
    /// comes first: the end of that cut (outside the gate) or the next cut
    /// (before it takes the gate), both under `scratch_clear`.
    scratch_stale: AtomicBool,
    scratch_clear: Mutex<()>,
    /// Serializes data writes to an image that is a regular file. Its
    /// filesystem serializes buffered writes to one file anyway (ext4, XFS
    /// and btrfs hold the inode lock exclusively for each), and a writer
    /// waiting there *spins* while the holder copies: with the NBD server's
    /// workers on a 2-core host that was 28% of all CPU samples
    /// (`rwsem_spin_on_owner`, `perf record -a` under 500 MB/s of 1 MiB
    /// writes). Waiting on this mutex sleeps instead. `None` for a block
    /// device, whose buffered writes run in parallel.
    image_write: Option<Mutex<()>>,
    /// Set while a group cut holds new writes back ([`Disk::hold_writes`]).
    held: AtomicBool,
    hold_lock: Mutex<()>,
    hold_wake: Condvar,
    /// Told of each write once it is in the image ([`Disk::observe`]).
    observer: OnceLock<Arc<dyn WriteObserver>>,
}

fn image_size(path: &Path, f: &File) -> Result<u64, FilterError> {
    use std::io::Seek;
    let mut f = f;
    f.seek(io::SeekFrom::End(0)).map_err(FilterError::io("sizing disk image", path))
}

impl Disk {
    /// Opens the image (taking QEMU's image lock on it, see [`crate::image`])
    /// and the state file (locking it). Fails without changing anything if
    /// another process has the image or the state file, or the state file is
    /// refused; an image whose size differs is refused too.
    /// Copies wait in memory within the process-wide [`CopyMemory::global`].
    pub fn open(paths: DiskPaths) -> Result<Disk, FilterError> {
        Disk::open_with_copy_memory(paths, CopyMemory::global())
    }

    /// [`Disk::open`] with copies kept in memory within `budget` (shared with
    /// whichever other disks use it), then in the scratch file.
    pub fn open_with_copy_memory(paths: DiskPaths, budget: Arc<CopyMemory>) -> Result<Disk, FilterError> {
        let image = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&paths.image)
            .map_err(FilterError::io("opening disk image", &paths.image))?;
        // Before the state file is touched: a refusal changes nothing.
        if let Err(conflict) = lock_for_serving(&image).map_err(FilterError::io("locking disk image", &paths.image))? {
            // The same disk served twice: say so (the state file's lock).
            if crate::state_file::is_locked(&paths.state) {
                return Err(FilterError::Locked { path: paths.state.clone() });
            }
            return Err(FilterError::ImageInUse { path: paths.image.clone(), conflict });
        }
        let meta = image.metadata().map_err(FilterError::io("inspecting disk image", &paths.image))?;
        let image_id = ImageId::of(&meta);
        let is_file = meta.file_type().is_file();
        let state = StateFile::open(&paths.state)?;
        let geometry = state.geometry();
        let copies_store = CopyStore::open(&paths.scratch, geometry.block_size, budget)?;
        let size = image_size(&paths.image, &image)?;
        if size != geometry.disk_size {
            return Err(FilterError::ImageSize { path: paths.image.clone(), size, want: geometry.disk_size });
        }
        Ok(Disk {
            image,
            image_id,
            geometry,
            state,
            copies_store,
            gate: RwLock::new(()),
            cutting: AtomicBool::new(false),
            cut: Mutex::new(None),
            preserve: (0..geometry.words()).map(|_| AtomicU64::new(0)).collect(),
            copies: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
            image_write: is_file.then(|| Mutex::new(())),
            held: AtomicBool::new(false),
            hold_lock: Mutex::new(()),
            hold_wake: Condvar::new(),
            scratch_stale: AtomicBool::new(false),
            scratch_clear: Mutex::new(()),
            observer: OnceLock::new(),
            paths,
        })
    }

    /// Has `observer` told of every write from now on. A disk takes one
    /// observer: false (and nothing changes) if it has one already.
    pub fn observe(&self, observer: Arc<dyn WriteObserver>) -> bool {
        self.observer.set(observer).is_ok()
    }

    /// The open image again, read-only, for reading it beside the server
    /// (the churn profile's sampler): the same file whatever the image's
    /// path names now, opened anew through `/proc/self/fd` so that it holds
    /// none of the image's locks and keeps none alive after [`Disk::close`].
    pub fn image_reader(&self) -> io::Result<File> {
        File::open(format!("/proc/self/fd/{}", self.image.as_raw_fd()))
    }

    fn observed(&self, offset: u64, len: u64, zeroes: bool) {
        if let Some(o) = self.observer.get() {
            o.wrote(blocks_touched(offset, len, self.geometry.block_size), len, zeroes);
        }
    }

    /// The disk's geometry.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// The state file.
    pub fn state(&self) -> &StateFile {
        &self.state
    }

    fn preserve_map(&self) -> Bitmap<'_> {
        Bitmap::new(&self.preserve, self.geometry.block_count)
    }

    fn stripe(&self, block: u64) -> &Mutex<HashMap<u64, Slot>> {
        &self.copies[usize::try_from(block % STRIPES as u64).expect("small")]
    }

    /// Records the blocks and copies aside what the cut still needs. Called
    /// with the gate held shared, before the image is written.
    fn before_write(&self, offset: u64, len: u64) -> io::Result<()> {
        let blocks = blocks_touched(offset, len, self.geometry.block_size);
        self.state.live().set_range(blocks.clone());
        if self.cutting.load(Ordering::Acquire) {
            let preserve = self.preserve_map();
            for b in blocks {
                if preserve.get(b) {
                    self.copy_aside(b)?;
                }
            }
        }
        Ok(())
    }

    /// Copies block `b`'s current (cut-time) contents aside.
    fn copy_aside(&self, b: u64) -> io::Result<()> {
        let mut copies = self.stripe(b).lock().expect("stripe lock");
        if !self.preserve_map().get(b) {
            return Ok(()); // copied or read by someone else meanwhile
        }
        let range = self.geometry.block_range(b);
        let mut buf = vec![0u8; self.geometry.block_len(b)];
        self.image.read_exact_at(&mut buf, range.start)?;
        let slot = self.copies_store.put(&buf).map_err(io::Error::other)?;
        let _ = copies.insert(b, slot);
        self.preserve_map().clear(b);
        Ok(())
    }

    /// Starts a cut: moves the live bits into the cut map at one instant
    /// between writes, and begins preserving the chosen blocks.
    pub fn cut(&self, kind: CutKind) -> Result<CutInfo, FilterError> {
        // Lock order: scratch_clear, then the gate (end_cut never holds the
        // gate while it waits for scratch_clear).
        // Not under the gate: VM writes go on while the file is emptied. (It is
        // stale only between a cut's end and the next cut, which this is.)
        let _clear = self.scratch_clear.lock().expect("scratch lock");
        self.clear_stale_scratch()?;
        let _gate = self.gate.write().expect("gate lock");
        let mut cut = self.cut.lock().expect("cut lock");
        if let Some(c) = cut.as_ref() {
            return Err(FilterError::CutInProgress(c.generation));
        }
        let dirty_blocks = self.state.live().move_into(&self.state.cut());
        let preserve = self.preserve_map();
        preserve.clear_all();
        let readable_blocks = match kind {
            CutKind::Dirty => {
                for b in self.state.cut().ones() {
                    preserve.set(b);
                }
                dirty_blocks
            }
            CutKind::Full => {
                preserve.fill();
                self.geometry.block_count
            }
        };
        let generation = self.state.header().cut_generation + 1;
        // Not synced: a cut matters only while this process lives.
        self.state.update_header(false, |h| h.cut_generation = generation)?;
        *cut = Some(ActiveCut { generation });
        self.cutting.store(true, Ordering::Release);
        Ok(CutInfo { generation, dirty_blocks, readable_blocks })
    }

    /// The blocks of the current cut's dirty set (what a cycle ships).
    pub fn cut_blocks(&self) -> Result<Vec<u64>, FilterError> {
        let cut = self.cut.lock().expect("cut lock");
        if cut.is_none() {
            return Err(FilterError::NoCut);
        }
        Ok(self.state.cut().ones().collect())
    }

    /// Reads block `b` as it was at the cut into `buf` (which must hold the
    /// block: `geometry().block_len(b)` bytes) and releases it: the copy is
    /// dropped and later writes to the block no longer copy it.
    pub fn read_cut_block(&self, b: u64, buf: &mut [u8]) -> Result<(), FilterError> {
        if b >= self.geometry.block_count {
            return Err(FilterError::NotInCut(b));
        }
        let len = self.geometry.block_len(b);
        let buf = &mut buf[..len];
        let _gate = self.gate.read().expect("gate lock");
        if !self.cutting.load(Ordering::Acquire) {
            return Err(FilterError::NoCut);
        }
        let mut copies = self.stripe(b).lock().expect("stripe lock");
        if let Some(slot) = copies.remove(&b) {
            // Read or not, the copy is gone from `copies`: its slot is free.
            self.copies_store.take(slot, buf)?;
        } else if self.preserve_map().get(b) {
            // Not overwritten since the cut: the image still holds it. While the
            // preserve bit is set, a writer of this block must first take the
            // stripe lock we hold, so the bit is cleared only after the read.
            self.image
                .read_exact_at(buf, self.geometry.block_range(b).start)
                .map_err(FilterError::io("reading disk image", &self.paths.image))?;
            self.preserve_map().clear(b);
        } else {
            return Err(FilterError::NotInCut(b));
        }
        Ok(())
    }

    /// Which file the open image is (device and inode), whatever its path
    /// names now.
    pub fn image_id(&self) -> ImageId {
        self.image_id
    }

    /// The disk image's path (for messages).
    pub fn image_path(&self) -> &Path {
        &self.paths.image
    }

    /// Opens the image once more, read-only, for a reader that reads cut
    /// blocks straight from it ([`Disk::validate_direct_read`]), with
    /// `O_DIRECT` if `direct`. It is the very file this `Disk` has open
    /// (reopened through `/proc/self/fd`, so a path renamed or replaced since
    /// cannot substitute another file); without `/proc`, the image's path.
    /// A filesystem that refuses `O_DIRECT` fails with `EINVAL`: the caller
    /// opens again without it.
    pub fn reopen_image(&self, direct: bool) -> io::Result<File> {
        let mut opts = OpenOptions::new();
        opts.read(true);
        if direct {
            opts.custom_flags(libc::O_DIRECT);
        }
        let proc_path = PathBuf::from(format!("/proc/self/fd/{}", self.image.as_raw_fd()));
        match opts.open(proc_path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => opts.open(&self.paths.image),
            other => other,
        }
    }

    /// The optimistic half of reading a cut block without a lock: a reader
    /// that has read block `b` of cut `generation` straight from the image
    /// (from [`Disk::reopen_image`], by any means, buffered or `O_DIRECT`)
    /// calls this *after that read has completed* (and must have issued the
    /// read after [`Disk::cut`] returned `generation`). `Ok(true)`: the bytes read
    /// are the block as at the cut, and the block is released (as
    /// [`Disk::read_cut_block`] would release it). `Ok(false)`: a writer
    /// overwrote the block meanwhile, so the bytes read may be anything; its
    /// cut-time contents were copied aside first, and the reader gets them
    /// with [`Disk::read_cut_block`]. Errors as `read_cut_block`: no cut, a
    /// different cut (the one read for ended), a block outside the cut.
    ///
    /// **Why checking after the read is enough.** The cut sets `b`'s preserve
    /// bit with the gate held exclusively, so every write that began before
    /// the cut has completed (its data is in the image or the page cache) and
    /// every later write to `b` runs `copy_aside(b)` before it writes the
    /// image. `copy_aside` clears the bit under `b`'s stripe lock and the
    /// image write is issued only after it returns; trims and write-zeroes
    /// take the same path. So "the bit is still set" at a moment T means no
    /// write to `b` after the cut has been *issued* before T. This check runs
    /// under the same stripe lock, after the read completed: if it finds the
    /// bit set, no post-cut write was issued before the read finished, hence
    /// none overlapped it, and the bytes read are exactly the cut-time bytes.
    /// Clearing the bit under the lock then releases the block: a writer that
    /// takes the lock after us sees the bit clear and skips the copy, and its
    /// data write is issued after our read completed. If the bit is clear, a
    /// writer got the lock first and left a copy in the scratch file (the
    /// read may have been torn; it is discarded). The mutex orders the bit
    /// operations between threads; the kernel orders the I/O: a buffered read
    /// copies from the page cache, and an `O_DIRECT` read first writes back
    /// and waits on the dirty page-cache pages in its range
    /// (`filemap_write_and_wait_range`), so a pre-cut buffered write is seen
    /// by either kind of read. The generation check (under the gate, which
    /// `cut`, `finish_cut` and `abort_cut` hold exclusively) makes sure the
    /// bit tested is the one set by the cut the reader started from, not by a
    /// later cut after writes the reader may have half seen.
    pub fn validate_direct_read(&self, generation: u64, b: u64) -> Result<bool, FilterError> {
        if b >= self.geometry.block_count {
            return Err(FilterError::NotInCut(b));
        }
        let _gate = self.gate.read().expect("gate lock");
        if !self.cutting.load(Ordering::Acquire) || self.cut_in_progress() != Some(generation) {
            return Err(FilterError::NoCut);
        }
        let _copies = self.stripe(b).lock().expect("stripe lock");
        Ok(self.preserve_map().clear(b))
    }

    fn end_cut(&self, keep_bits: bool) -> Result<u64, FilterError> {
        let n = self.end_cut_gated(keep_bits)?;
        // The gate is open again: VM writes do not wait for this. A failure
        // leaves the file marked stale, and the next cut clears it (or fails
        // with the error, before it changes anything).
        let _clear = self.scratch_clear.lock().expect("scratch lock");
        let _ = self.clear_stale_scratch();
        Ok(n)
    }

    /// Empties the copy store if it holds an ended cut's copies (never
    /// while a cut is in progress: a cut clears the flag before it starts).
    /// Called with `scratch_clear` held.
    fn clear_stale_scratch(&self) -> Result<(), FilterError> {
        if self.scratch_stale.swap(false, Ordering::AcqRel) {
            if let Err(e) = self.copies_store.clear() {
                self.scratch_stale.store(true, Ordering::Release);
                return Err(e);
            }
        }
        Ok(())
    }

    /// How much memory and scratch file the copies take now (slots in use
    /// and slots free for reuse until the cut ends).
    pub fn copy_usage(&self) -> io::Result<CopyUsage> {
        self.copies_store.usage()
    }

    /// The most memory and scratch file the copies of the last ended cut
    /// took, if it made any (block-sized slots; the file's last may be short).
    pub fn last_cut_copies(&self) -> Option<CopyUsage> {
        self.copies_store.last_peak()
    }

    /// Whether block `b` of the current cut is still to be read from the
    /// image: no writer has copied it aside and it was not read. A hint for
    /// a reader choosing where to read from, since a writer may copy the
    /// block aside right after; [`Disk::validate_direct_read`] and
    /// [`Disk::read_cut_block`] stay the authority. `false` outside a cut.
    pub fn in_image(&self, b: u64) -> bool {
        b < self.geometry.block_count && self.cutting.load(Ordering::Acquire) && self.preserve_map().get(b)
    }

    fn end_cut_gated(&self, keep_bits: bool) -> Result<u64, FilterError> {
        let _gate = self.gate.write().expect("gate lock");
        let mut cut = self.cut.lock().expect("cut lock");
        if cut.take().is_none() {
            return Err(FilterError::NoCut);
        }
        self.cutting.store(false, Ordering::Release);
        self.preserve_map().clear_all();
        for s in &self.copies {
            s.lock().expect("stripe lock").clear();
        }
        let n = if keep_bits {
            self.state.cut().move_into(&self.state.live())
        } else {
            let n = self.state.cut().count();
            self.state.cut().clear_all();
            n
        };
        self.scratch_stale.store(true, Ordering::Release);
        Ok(n)
    }

    /// Ends the cut after its point is safely stored: records `point` in the
    /// state file as the point the dirty maps are now relative to (durably,
    /// clearing the suspect flag too if the cut was a full `verified` one),
    /// then drops the cut bits. Returns how many there were.
    ///
    /// The record is written first: a crash between the two leaves the cut
    /// bits to be merged back into the live map by the next open, a superset
    /// of what changed since `point`, which is safe. The other order could
    /// leave a state whose bits are relative to `point` but which names the
    /// point before it; the cycle accepts that case too (`shipper::cycle`),
    /// but only as the commit-then-crash window, not as the normal path.
    pub fn finish_cut(&self, point: LastPoint, verified: bool) -> Result<u64, FilterError> {
        match self.cut_in_progress() {
            None => return Err(FilterError::NoCut),
            Some(g) if g != point.cut_generation => {
                return Err(FilterError::WrongCut { cut: g, point: point.sequence, generation: point.cut_generation })
            }
            Some(_) => {}
        }
        self.state.update_header(true, |h| {
            h.last_point = Some(point);
            if verified {
                h.flags.suspect = false;
            }
        })?;
        self.end_cut(false)
    }

    /// Ends the cut without a stored point: its bits go back into the live map,
    /// so the next cut takes them again. Returns how many.
    pub fn abort_cut(&self) -> Result<u64, FilterError> {
        self.end_cut(true)
    }

    /// Holds new writes back (they wait before entering the gate) until
    /// [`Disk::release_writes`]; writes already in flight go on. A group
    /// cut holds every member disk, then cuts each: no write that started
    /// after any member's cut can be in another member's cut, so the points
    /// are consistent across the disks. The caller keeps the hold short
    /// (the cuts only move bits) and always releases it.
    pub fn hold_writes(&self) {
        let _g = self.hold_lock.lock().expect("hold lock");
        self.held.store(true, Ordering::SeqCst);
    }

    /// Lets held writes go on.
    pub fn release_writes(&self) {
        let _g = self.hold_lock.lock().expect("hold lock");
        self.held.store(false, Ordering::SeqCst);
        self.hold_wake.notify_all();
    }

    fn wait_while_held(&self) {
        if !self.held.load(Ordering::SeqCst) {
            return;
        }
        let mut g = self.hold_lock.lock().expect("hold lock");
        while self.held.load(Ordering::SeqCst) {
            g = self.hold_wake.wait(g).expect("hold lock");
        }
    }

    /// Generation of the cut in progress, if any.
    pub fn cut_in_progress(&self) -> Option<u64> {
        self.cut.lock().expect("cut lock").as_ref().map(|c| c.generation)
    }

    /// Closes the disk cleanly: aborts any cut, syncs the image, writes the
    /// bitmaps back and marks the state file clean. Call after every client
    /// has stopped.
    pub fn close(self) -> Result<(), FilterError> {
        if self.cut_in_progress().is_some() {
            let _ = self.abort_cut()?;
        }
        self.image.sync_all().map_err(FilterError::io("syncing disk image", &self.paths.image))?;
        self.state.close_clean()?;
        let _ = std::fs::remove_file(&self.paths.scratch);
        Ok(())
    }
}

fn punch_hole(f: &File, offset: u64, len: u64) {
    // Failure (a filesystem without hole punching) only costs scratch space.
    let _ = system::extent::punch_hole(f, offset, len);
}

fn zero_range(f: &File, offset: u64, len: u64, may_trim: bool) -> io::Result<()> {
    let done =
        if may_trim { system::extent::punch_hole(f, offset, len) } else { system::extent::zero_range(f, offset, len) };
    if done.is_ok() {
        return Ok(());
    }
    // No fallocate support (block device, odd filesystem): write zeroes.
    let zeros = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64);
        f.write_all_at(&zeros[..usize::try_from(n).expect("<= 1 MiB")], offset + done)?;
        done += n;
    }
    Ok(())
}

impl Export for Disk {
    fn size(&self) -> u64 {
        self.geometry.disk_size
    }

    fn preferred_block_size(&self) -> u32 {
        4096
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.image.read_exact_at(buf, offset)
    }

    fn write_at(&self, data: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.wait_while_held();
        let _gate = self.gate.read().expect("gate lock");
        self.before_write(offset, data.len() as u64)?;
        {
            let _one = self.image_write.as_ref().map(|m| m.lock().expect("image write lock"));
            self.image.write_all_at(data, offset)?;
        }
        if fua {
            self.image.sync_data()?;
        }
        self.observed(offset, data.len() as u64, false);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.image.sync_data()
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.wait_while_held();
        let _gate = self.gate.read().expect("gate lock");
        self.before_write(offset, len)?;
        punch_hole(&self.image, offset, len);
        if fua {
            self.image.sync_data()?;
        }
        self.observed(offset, len, true);
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool, fua: bool) -> io::Result<()> {
        self.wait_while_held();
        let _gate = self.gate.read().expect("gate lock");
        self.before_write(offset, len)?;
        zero_range(&self.image, offset, len, may_trim)?;
        if fua {
            self.image.sync_data()?;
        }
        self.observed(offset, len, true);
        Ok(())
    }
}
