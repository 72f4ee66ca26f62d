//! Where copy-before-write copies wait for the cut's reader.
//!
//! A copy is one block's cut-time contents, made by a writer just before it
//! overwrites the block and read (once) by the cut's reader. Copies live in
//! block-sized *slots*: first in memory (an anonymous `memfd`, up to a
//! process-wide budget, [`CopyMemory`]), then in the disk's scratch file. A
//! slot whose copy was read is reused by the next copy, memory slots first,
//! so neither store grows past the most copies waiting at once, and nothing is
//! allocated or freed per block (punching a hole per block read cost a
//! synchronous discard on a filesystem mounted with `discard`). Both stores
//! are emptied once per cut, after it ends ([`CopyStore::clear`]).
//!
//! **Why memory first.** A copy lives for seconds: until the reader gets to
//! its block. In the scratch file it is still written back to the device by
//! the kernel's flusher (under heavy churn the page cache is over its dirty
//! threshold all the time), which costs as much device bandwidth as the
//! reader's own reads, for data nobody will read from the device. Measured
//! with `benches/churn-bench.sh` at 500 MB/s, where about half of each cut's
//! blocks are overwritten before the reader gets to them (see
//! DESIGN-NOTES.md, "Copies wait in memory first"). The budget keeps a burst from taking the host's
//! memory: past it, copies spill to the file as before.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::FilterError;

/// Memory the copies of every disk in this process may take together.
#[derive(Debug)]
pub struct CopyMemory {
    available: AtomicU64,
}

impl CopyMemory {
    /// A budget of `bytes`.
    pub fn new(bytes: u64) -> Arc<CopyMemory> {
        Arc::new(CopyMemory { available: AtomicU64::new(bytes) })
    }

    /// The process-wide budget [`crate::Disk::open`] uses, of
    /// [`CopyMemory::default_bytes`].
    pub fn global() -> Arc<CopyMemory> {
        static GLOBAL: OnceLock<Arc<CopyMemory>> = OnceLock::new();
        Arc::clone(GLOBAL.get_or_init(|| CopyMemory::new(CopyMemory::default_bytes())))
    }

    /// The default budget: a quarter of the machine's memory, at most 8 GiB
    /// (256 MiB where `/proc/meminfo` cannot be read). It is only taken while
    /// a cut's blocks are overwritten faster than the cycle reads them.
    pub fn default_bytes() -> u64 {
        mem_total().map_or(256 << 20, |t| (t / 4).min(8 << 30))
    }

    /// Bytes not yet taken.
    pub fn available(&self) -> u64 {
        self.available.load(Ordering::Relaxed)
    }

    fn reserve(&self, n: u64) -> bool {
        self.available.fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| a.checked_sub(n)).is_ok()
    }

    fn release(&self, n: u64) {
        let _ = self.available.fetch_add(n, Ordering::AcqRel);
    }
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn mem_total() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// An anonymous in-memory file, or `None` where the kernel has no `memfd_create`.
fn memfd() -> Option<File> {
    system::memfd::create(c"lifeboat-copies").ok()
}

/// Where one copy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// Slot `n` of the in-memory store.
    Memory(u64),
    /// Slot `n` of the scratch file.
    File(u64),
}

#[derive(Default)]
struct Slots {
    free_memory: Vec<u64>,
    free_file: Vec<u64>,
    /// Memory slots ever used since the last clear; each holds its block
    /// size of the budget until then.
    next_memory: u64,
    next_file: u64,
    /// The most the last cleared cut's copies took.
    last_peak: Option<CopyUsage>,
}

/// How much each store holds (for tests and status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyUsage {
    /// Bytes of memory the copies' slots take (those in use and those free for reuse).
    pub memory_bytes: u64,
    /// Bytes of the scratch file they take (its length; slots are
    /// block-sized, a disk's short last block may make it a little less).
    pub file_bytes: u64,
}

/// One disk's copies: memory slots, then scratch-file slots.
pub(crate) struct CopyStore {
    block_size: u64,
    memory: Option<File>,
    budget: Arc<CopyMemory>,
    file: File,
    path: PathBuf,
    slots: Mutex<Slots>,
}

impl CopyStore {
    /// Creates (truncating) the scratch file at `path`.
    pub(crate) fn open(path: &Path, block_size: u32, budget: Arc<CopyMemory>) -> Result<CopyStore, FilterError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(FilterError::io("creating copy-before-write scratch file", path))?;
        Ok(CopyStore {
            block_size: u64::from(block_size),
            memory: memfd(),
            budget,
            file,
            path: path.to_path_buf(),
            slots: Mutex::new(Slots::default()),
        })
    }

    /// A memory slot if one is free or the budget allows another.
    fn memory_slot(&self, slots: &mut Slots) -> Option<u64> {
        self.memory.as_ref()?;
        if let Some(n) = slots.free_memory.pop() {
            return Some(n);
        }
        if !self.budget.reserve(self.block_size) {
            return None;
        }
        slots.next_memory += 1;
        Some(slots.next_memory - 1)
    }

    fn file_slot(slots: &mut Slots) -> u64 {
        slots.free_file.pop().unwrap_or_else(|| {
            slots.next_file += 1;
            slots.next_file - 1
        })
    }

    fn free(&self, slot: Slot) {
        let mut slots = self.slots.lock().expect("slots lock");
        match slot {
            Slot::Memory(n) => slots.free_memory.push(n),
            Slot::File(n) => slots.free_file.push(n),
        }
    }

    /// Stores `data` (at most one block) in a free slot.
    pub(crate) fn put(&self, data: &[u8]) -> Result<Slot, FilterError> {
        let memory = self.memory_slot(&mut self.slots.lock().expect("slots lock"));
        if let (Some(n), Some(mem)) = (memory, self.memory.as_ref()) {
            match mem.write_all_at(data, n * self.block_size) {
                Ok(()) => return Ok(Slot::Memory(n)),
                // Out of memory for the page: the file still has room.
                Err(_) => self.free(Slot::Memory(n)),
            }
        }
        let n = Self::file_slot(&mut self.slots.lock().expect("slots lock"));
        match self.file.write_all_at(data, n * self.block_size) {
            Ok(()) => Ok(Slot::File(n)),
            Err(e) => {
                self.free(Slot::File(n));
                Err(FilterError::io("writing copy-before-write scratch file", &self.path)(e))
            }
        }
    }

    /// Reads the copy in `slot` into `buf` and frees the slot (read or not:
    /// a copy is read once).
    pub(crate) fn take(&self, slot: Slot, buf: &mut [u8]) -> Result<(), FilterError> {
        let read = match slot {
            Slot::Memory(n) => self
                .memory
                .as_ref()
                .expect("memory slots need the memory store")
                .read_exact_at(buf, n * self.block_size),
            Slot::File(n) => self.file.read_exact_at(buf, n * self.block_size),
        };
        self.free(slot);
        read.map_err(|e| match slot {
            Slot::Memory(_) => FilterError::io("reading copy-before-write copies in memory for", self.dir())(e),
            Slot::File(_) => FilterError::io("reading copy-before-write scratch file", &self.path)(e),
        })
    }

    /// Empties both stores and gives the memory back to the budget. Only
    /// between cuts: every copy is forgotten.
    pub(crate) fn clear(&self) -> Result<(), FilterError> {
        let mut slots = self.slots.lock().expect("slots lock");
        // Slots are only ever added during a cut: their count is its peak.
        slots.last_peak = (slots.next_memory + slots.next_file > 0).then(|| CopyUsage {
            memory_bytes: slots.next_memory * self.block_size,
            file_bytes: slots.next_file * self.block_size,
        });
        if let Some(mem) = &self.memory {
            mem.set_len(0).map_err(FilterError::io("emptying copy-before-write copies in memory for", self.dir()))?;
            self.budget.release(slots.next_memory * self.block_size);
            slots.next_memory = 0;
            slots.free_memory.clear();
        }
        self.file.set_len(0).map_err(FilterError::io("clearing copy-before-write scratch file", &self.path))?;
        slots.next_file = 0;
        slots.free_file.clear();
        Ok(())
    }

    /// The most the copies of the last ended cut took (`None`: it had no
    /// copies, or no cut has ended).
    pub(crate) fn last_peak(&self) -> Option<CopyUsage> {
        self.slots.lock().expect("slots lock").last_peak
    }

    /// What each store holds now.
    pub(crate) fn usage(&self) -> io::Result<CopyUsage> {
        let memory_bytes = self.slots.lock().expect("slots lock").next_memory * self.block_size;
        Ok(CopyUsage { memory_bytes, file_bytes: self.file.metadata()?.len() })
    }

    /// The directory of the scratch file (the disk's), naming the memory store in errors.
    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(&self.path)
    }
}

impl Drop for CopyStore {
    fn drop(&mut self) {
        // The memfd's pages go with its descriptor; their budget comes back.
        let slots = self.slots.get_mut().expect("slots lock");
        self.budget.release(slots.next_memory * self.block_size);
    }
}
