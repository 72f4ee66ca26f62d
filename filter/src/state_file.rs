//! The state file of one protected disk, at run time: header slots read and
//! written with `pread`/`pwrite`, bitmaps mapped shared as atomic words.
//!
//! How an open decides whether the bitmaps can be trusted:
//!
//! | header found                         | meaning                               | result          |
//! |--------------------------------------|---------------------------------------|-----------------|
//! | clean, bitmap checksum matches       | last filter stopped cleanly           | trusted         |
//! | clean, bitmap checksum differs       | bitmap pages lost or damaged          | **suspect**     |
//! | open, boot id = this boot            | the filter process died; the kernel kept its mapped pages | trusted |
//! | open, boot id ≠ this boot            | the host went down with the filter running; pages may be lost | **suspect** |
//! | suspect flag already set             | a verify is still owed                | **suspect**     |
//!
//! A suspect state marks every block dirty (the whole disk is to be verified)
//! and keeps the suspect flag until a verify-resync clears it. A header that is
//! damaged, a file of the wrong length, or bits past the disk's end are refused
//! outright: the file is left as it was found.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use disk_format::state::bitmaps_checksum;
use disk_format::{Geometry, LastPoint, StateHeader, HEADER_PAGE};
use system::file::Step;

use crate::bitmap::Bitmap;
use crate::error::FilterError;
use crate::mmap::WordMap;

/// The state file, opened and locked by the filter (or by an offline cycle).
pub struct StateFile {
    path: PathBuf,
    file: File,
    geometry: Geometry,
    /// The current header and the slot it lives in.
    header: Mutex<(StateHeader, usize)>,
    map: WordMap,
    words_per_map: usize,
    opened: OpenReport,
}

/// What an open found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenReport {
    /// The previous filter did not shut down cleanly.
    pub was_unclean: bool,
    /// The state is suspect (now or from before): every block is to be verified.
    pub suspect: bool,
    /// This open is the one that found the state suspect.
    pub newly_suspect: bool,
}

/// A read-only summary of a state file: what `lifeboat dirty` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyReport {
    /// Block size in bytes.
    pub block_size: u32,
    /// Disk size in bytes.
    pub disk_size: u64,
    /// Blocks set in the live or the cut bitmap, ascending.
    pub dirty_blocks: Vec<u64>,
    /// The bitmaps cannot be trusted; the whole disk is to be verified.
    pub suspect: bool,
    /// A filter has (or had, if it crashed) the disk open.
    pub open: bool,
    /// Cut generation.
    pub cut_generation: u64,
    /// The point the bitmaps are relative to (the last one committed).
    pub last_point: Option<LastPoint>,
}

/// The kernel's boot id: changes at every boot, so a header written in this
/// boot can be told from one written before a host crash.
pub fn current_boot_id() -> [u8; 16] {
    let text = system::host::boot_id().unwrap_or_default();
    let hex: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    let mut id = [0u8; 16];
    if hex.len() == 32 {
        for (i, pair) in hex.chunks(2).enumerate() {
            let s = std::str::from_utf8(pair).expect("ascii hex");
            id[i] = u8::from_str_radix(s, 16).expect("hex digit pair");
        }
    }
    id
}

fn read_header(path: &Path, file: &File) -> Result<(StateHeader, usize), FilterError> {
    let len = file.metadata().map_err(FilterError::io("reading state file", path))?.len();
    let mut page = vec![0u8; HEADER_PAGE.min(usize::try_from(len).unwrap_or(HEADER_PAGE))];
    file.read_exact_at(&mut page, 0).map_err(FilterError::io("reading state file", path))?;
    let (header, slot) =
        StateHeader::read_page(&page).map_err(|source| FilterError::Header { path: path.to_owned(), source })?;
    let want = header.geometry.state_file_len();
    if len != want {
        return Err(FilterError::WrongLength { path: path.to_owned(), len, want });
    }
    Ok((header, slot))
}

/// Whether another process holds the state file's lock (a filter or a
/// cycle has the disk open). False if the file cannot be opened.
pub(crate) fn is_locked(path: &Path) -> bool {
    let Ok(file) = File::open(path) else { return false };
    // The lock, if taken, goes when `file` closes at the end of this function.
    matches!(system::lock::try_lock_exclusive(&file), Ok(false))
}

fn load_words(words: &[AtomicU64]) -> Vec<u64> {
    words.iter().map(|w| w.load(std::sync::atomic::Ordering::Acquire)).collect()
}

impl StateFile {
    /// Creates a new state file at `path` (which must not exist) for a disk of
    /// `geometry`. With `suspect`, every block starts dirty and the suspect
    /// flag is set (used when a damaged state file is replaced). The file is
    /// written under a temporary name, synced and renamed into place.
    pub fn create(path: &Path, geometry: Geometry, disk_id: [u8; 16], suspect: bool) -> Result<(), FilterError> {
        StateFile::create_with(path, geometry, disk_id, suspect, None)
    }

    /// [`StateFile::create`], recording `last_point` as the point the state
    /// is relative to. For a state that replaces another (`suspect`, every
    /// block dirty, so true of any point): keeping the old record lets the
    /// next cycle still notice a vault that lost points, and never reuse a
    /// sequence number.
    pub fn create_with(
        path: &Path,
        geometry: Geometry,
        disk_id: [u8; 16],
        suspect: bool,
        last_point: Option<LastPoint>,
    ) -> Result<(), FilterError> {
        let created = system::clock::now_ns() / 1_000_000_000;
        let mut header = StateHeader::new(geometry, disk_id, created);
        header.flags.suspect = suspect;
        header.last_point = last_point;
        let tmp = path.with_extension("new");
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(FilterError::io("creating state file", &tmp))?;
        f.set_len(geometry.state_file_len()).map_err(FilterError::io("sizing state file", &tmp))?;
        if suspect {
            let ones = vec![0xffu8; usize::try_from(geometry.bitmap_len).expect("fits")];
            f.write_all_at(&ones, geometry.live_offset()).map_err(FilterError::io("writing state file", &tmp))?;
            let last = geometry.live_offset() + (geometry.words() as u64 - 1) * 8;
            f.write_all_at(&geometry.last_word_mask().to_le_bytes(), last)
                .map_err(FilterError::io("writing state file", &tmp))?;
            let past = geometry.words() as u64 * 8;
            let zeros = vec![0u8; usize::try_from(geometry.bitmap_len - past).expect("fits")];
            f.write_all_at(&zeros, geometry.live_offset() + past)
                .map_err(FilterError::io("writing state file", &tmp))?;
        }
        let live: Vec<u64> = if suspect {
            let mut v = vec![u64::MAX; geometry.words()];
            *v.last_mut().expect("at least one word") = geometry.last_word_mask();
            v
        } else {
            vec![0; geometry.words()]
        };
        // Checksum covers the meaningful words of both maps.
        header.bitmaps_checksum = bitmaps_checksum(&live, &vec![0; geometry.words()]);
        f.write_all_at(&header.initial_page(), 0).map_err(FilterError::io("writing state file", &tmp))?;
        f.flush().map_err(FilterError::io("writing state file", &tmp))?;
        drop(f);
        system::file::install(&tmp, path).map_err(|e| match e.step {
            Step::SyncFile => FilterError::io("syncing state file", &tmp)(e.source),
            Step::Rename => FilterError::io("renaming state file into place", path)(e.source),
            Step::SyncDir => FilterError::io("syncing directory", &e.dir)(e.source),
        })
    }

    /// Opens and locks the state file for a filter or an offline cycle, and
    /// marks it open in this boot. See the module docs for how an unclean
    /// previous shutdown is judged. A refused file is not modified.
    pub fn open(path: &Path) -> Result<StateFile, FilterError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(FilterError::io("opening state file", path))?;
        match system::lock::try_lock_exclusive(&file) {
            Ok(true) => {}
            Ok(false) => return Err(FilterError::Locked { path: path.to_owned() }),
            Err(e) => return Err(FilterError::Io { what: "locking state file", path: path.to_owned(), source: e }),
        }
        let (header, slot) = read_header(path, &file)?;
        let g = header.geometry;
        let map = WordMap::map(&file, g.live_offset(), 2 * g.bitmap_len)
            .map_err(FilterError::io("mapping state file", path))?;
        let words_per_map = usize::try_from(g.bitmap_len / 8).expect("fits");
        let sf = StateFile {
            path: path.to_owned(),
            file,
            geometry: g,
            header: Mutex::new((header.clone(), slot)),
            map,
            words_per_map,
            opened: OpenReport { was_unclean: false, suspect: false, newly_suspect: false },
        };
        // Check the whole mapped region of each map, padding words included.
        let words = sf.map.words();
        let regions = [("live", &words[..words_per_map]), ("cut", &words[words_per_map..])];
        for (which, region) in regions {
            if Bitmap::new(region, g.block_count).first_bit_past_end().is_some() {
                return Err(FilterError::BitmapOverflow { path: path.to_owned(), which, block_count: g.block_count });
            }
        }
        let boot = current_boot_id();
        let was_unclean = header.flags.open;
        let lost_pages = if was_unclean {
            header.boot_id != boot
        } else {
            bitmaps_checksum(&load_words(sf.live_words()), &load_words(sf.cut_words())) != header.bitmaps_checksum
        };
        let newly_suspect = lost_pages && !header.flags.suspect;
        let suspect = header.flags.suspect || lost_pages;
        // Nothing has been changed so far; from here on the file is ours.
        if suspect {
            sf.live().fill();
        }
        // A cut's copies do not outlive the process that made them: whatever a
        // previous filter had cut but not finished goes back to the live map.
        sf.cut().move_into(&sf.live());
        sf.update_header(true, |h| {
            h.flags.open = true;
            h.flags.suspect = suspect;
            h.boot_id = boot;
        })?;
        Ok(StateFile { opened: OpenReport { was_unclean, suspect, newly_suspect }, ..sf })
    }

    /// What the open found.
    pub fn opened(&self) -> OpenReport {
        self.opened
    }

    /// The disk's geometry.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Path of the state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn live_words(&self) -> &[AtomicU64] {
        &self.map.words()[..self.geometry.words()]
    }

    fn cut_words(&self) -> &[AtomicU64] {
        &self.map.words()[self.words_per_map..self.words_per_map + self.geometry.words()]
    }

    /// The live bitmap: blocks written since the last cut.
    pub fn live(&self) -> Bitmap<'_> {
        Bitmap::new(self.live_words(), self.geometry.block_count)
    }

    /// The cut bitmap: blocks of the cut in progress (empty when none is).
    pub fn cut(&self) -> Bitmap<'_> {
        Bitmap::new(self.cut_words(), self.geometry.block_count)
    }

    /// A copy of the current header.
    pub fn header(&self) -> StateHeader {
        self.header.lock().expect("header lock").0.clone()
    }

    /// Changes the header and writes it to the spare slot; with `durable`,
    /// waits until it is on stable storage.
    pub fn update_header(&self, durable: bool, f: impl FnOnce(&mut StateHeader)) -> Result<(), FilterError> {
        let mut guard = self.header.lock().expect("header lock");
        let (header, slot) = &mut *guard;
        let mut next = header.clone();
        f(&mut next);
        let mut page = vec![0u8; HEADER_PAGE];
        self.file.read_exact_at(&mut page, 0).map_err(FilterError::io("reading state file", &self.path))?;
        let new_slot = next.write_next(&mut page, *slot);
        let at = disk_format::state::SLOT_OFFSETS[new_slot];
        self.file
            .write_all_at(&page[at..at + disk_format::SLOT_SIZE], at as u64)
            .map_err(FilterError::io("writing state file header", &self.path))?;
        if durable {
            self.file.sync_data().map_err(FilterError::io("syncing state file", &self.path))?;
        }
        *header = next;
        *slot = new_slot;
        Ok(())
    }

    /// Clears the suspect flag after a full verify has made the bitmaps true again.
    pub fn clear_suspect(&self) -> Result<(), FilterError> {
        self.update_header(true, |h| h.flags.suspect = false)
    }

    /// Marks the state cleanly closed: writes the bitmaps back, records their
    /// checksum, clears the open flag and syncs. The caller has stopped every
    /// writer and merged any unfinished cut first.
    pub fn close_clean(&self) -> Result<(), FilterError> {
        self.map.flush().map_err(FilterError::io("writing back state file bitmaps", &self.path))?;
        let sum = bitmaps_checksum(&load_words(self.live_words()), &load_words(self.cut_words()));
        self.update_header(true, |h| {
            h.flags.open = false;
            h.bitmaps_checksum = sum;
        })
    }

    /// The current header of the state file at `path`, read without
    /// locking or changing it (a running filter may rewrite it meanwhile:
    /// this is a snapshot).
    pub fn header_of(path: &Path) -> Result<StateHeader, FilterError> {
        let file = File::open(path).map_err(FilterError::io("opening state file", path))?;
        Ok(read_header(path, &file)?.0)
    }

    /// Reads a state file without locking or changing it, for reports. Works
    /// while a filter has it open. Reading the live map before the cut map
    /// never misses a bit a concurrent cut moves (the cut adds to the cut map
    /// before it clears the live map).
    pub fn report(path: &Path) -> Result<DirtyReport, FilterError> {
        let file = File::open(path).map_err(FilterError::io("opening state file", path))?;
        let (header, _) = read_header(path, &file)?;
        let g = header.geometry;
        let read_map = |offset: u64| -> Result<Vec<u64>, FilterError> {
            let mut bytes = vec![0u8; usize::try_from(g.bitmap_len).expect("bitmap fits in memory")];
            file.read_exact_at(&mut bytes, offset).map_err(FilterError::io("reading state file", path))?;
            Ok(bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
        };
        let mut live = read_map(g.live_offset())?;
        let mut cut = read_map(g.cut_offset())?;
        let last = g.words() - 1;
        for (which, m) in [("live", &live), ("cut", &cut)] {
            if m[last] & !g.last_word_mask() != 0 || m[last + 1..].iter().any(|&w| w != 0) {
                return Err(FilterError::BitmapOverflow { path: path.to_owned(), which, block_count: g.block_count });
            }
        }
        live.truncate(g.words());
        cut.truncate(g.words());
        let lost_pages = if header.flags.open {
            // Open in an earlier boot and never closed: the host went down.
            header.boot_id != current_boot_id()
        } else {
            bitmaps_checksum(&live, &cut) != header.bitmaps_checksum
        };
        let suspect = header.flags.suspect || lost_pages;
        let dirty_blocks = if suspect {
            (0..g.block_count).collect()
        } else {
            live.iter()
                .zip(&cut)
                .enumerate()
                .flat_map(|(i, (l, c))| {
                    let mut v = l | c;
                    std::iter::from_fn(move || {
                        (v != 0).then(|| {
                            let b = v.trailing_zeros();
                            v &= v - 1;
                            i as u64 * 64 + u64::from(b)
                        })
                    })
                })
                .collect()
        };
        Ok(DirtyReport {
            block_size: g.block_size,
            disk_size: g.disk_size,
            dirty_blocks,
            suspect,
            open: header.flags.open,
            cut_generation: header.cut_generation,
            last_point: header.last_point,
        })
    }
}
