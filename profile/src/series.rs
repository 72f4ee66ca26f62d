//! The churn time series on disk: one fixed-size record per interval, in a
//! ring of fixed capacity, so the file never grows past
//! [`Series::max_len`] however long the disk is recorded.
//!
//! Layout (little-endian; FORMAT.md, "Churn profile"):
//!
//! - header, [`HEADER_LEN`] bytes: magic `LBCHURN1`, version (u32, 1),
//!   record length (u32), capacity in records (u32), interval in seconds
//!   (u32), block size (u32), reserved (u32), block count (u64), CRC-32 of
//!   the 40 bytes before it (u32), zeros to 64;
//! - `capacity` slots of [`RECORD_LEN`] bytes; record `seq` (from 1) lives
//!   in slot `(seq - 1) % capacity`, overwriting the record `capacity`
//!   before it.
//!
//! A record is written in one `pwrite` and not synced: the profile is
//! advisory, a crash of the process (SIGKILL) leaves the page cache to the
//! kernel, and a power cut may lose the last intervals. A record torn by a
//! crash fails its CRC and is skipped; the newest valid record is found by
//! reading every slot when the file is opened (a month of 30 s intervals is
//! 10 MB).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

/// File magic.
pub const MAGIC: &[u8; 8] = b"LBCHURN1";
/// Bytes of the header.
pub const HEADER_LEN: u64 = HEADER as u64;
const HEADER: usize = 64;
/// Bytes of one record.
pub const RECORD_LEN: usize = RECORD_LEN_U32 as usize;
const RECORD_LEN_U32: u32 = 112;
/// The windows a record counts distinct blocks over, in seconds: the
/// candidate RPOs (30 s, 5 min, 15 min), and the hour and the day between
/// the hourly and daily points the retention ladder keeps.
pub const WINDOWS: [u32; 5] = [30, 300, 900, 3_600, 86_400];
/// A month of 30 s intervals (31 days).
pub const DEFAULT_CAPACITY: u32 = 31 * 24 * 120;
/// Set on a record whose windows began before the recording did (the first
/// windows after a start): its window counts are partial.
pub const FLAG_PARTIAL: u32 = 1;

/// Failures of the series file, naming it.
#[derive(Debug, thiserror::Error)]
pub enum SeriesError {
    /// An I/O error.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Not a churn profile, or one this build cannot read.
    #[error("{path} is not a churn profile this build reads ({why})")]
    Format {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
}

/// One interval of a disk's writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Record {
    /// Sequence number, from 1.
    pub seq: u64,
    /// Start of the interval, Unix seconds.
    pub start: i64,
    /// Its length in seconds (shorter than the interval for the last one
    /// before a stop).
    pub seconds: u32,
    /// [`FLAG_PARTIAL`].
    pub flags: u32,
    /// Bytes written by write requests.
    pub bytes_written: u64,
    /// Bytes written by write-zeroes and trim requests.
    pub bytes_zeroed: u64,
    /// Write, write-zeroes and trim requests.
    pub writes: u64,
    /// Distinct blocks changed in each of [`WINDOWS`] so far: in the window
    /// that this interval ends (or is in), from the window's start (or the
    /// recording's) to this interval's end.
    pub distinct: [u32; 5],
    /// Written blocks read back and analysed (a sample).
    pub sampled: u32,
    /// Of those, all zero.
    pub sampled_zero: u32,
    /// Of those, equal to a block analysed before (what the vault would
    /// deduplicate).
    pub sampled_repeat: u32,
    /// Bytes of the sampled blocks that are neither zero nor repeats.
    pub sampled_bytes: u64,
    /// Those bytes as the vault stores them: compressed where compression
    /// saves an eighth, whole otherwise.
    pub sampled_stored: u64,
    /// When the recording that wrote this record started, Unix seconds.
    pub since: i64,
}

impl Record {
    /// End of the interval, Unix seconds.
    pub fn end(&self) -> i64 {
        self.start + i64::from(self.seconds)
    }

    /// Whether this interval, `(start, end]`, ends window `w` (of
    /// [`WINDOWS`]): a multiple of the window's length lies in it. (A roll
    /// that comes late ends the window late; the writes of that moment
    /// count in the window that ends.)
    pub fn ends_window(&self, w: usize) -> bool {
        let len = i64::from(WINDOWS[w]);
        self.end().div_euclid(len) > self.start.div_euclid(len)
    }

    /// Start of window `w` as this record counts it: the window it ends,
    /// or else the one it lies in.
    pub fn window_start(&self, w: usize) -> i64 {
        let len = i64::from(WINDOWS[w]);
        if self.ends_window(w) {
            self.end().div_euclid(len) * len - len
        } else {
            self.start.div_euclid(len) * len
        }
    }

    /// Whether window `w`, as this record counts it, was recorded whole:
    /// the recording started at or before the window did.
    pub fn window_whole(&self, w: usize) -> bool {
        self.since <= self.window_start(w)
    }

    fn encode(&self) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        b[0..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8..16].copy_from_slice(&self.start.to_le_bytes());
        b[16..20].copy_from_slice(&self.seconds.to_le_bytes());
        b[20..24].copy_from_slice(&self.flags.to_le_bytes());
        b[24..32].copy_from_slice(&self.bytes_written.to_le_bytes());
        b[32..40].copy_from_slice(&self.bytes_zeroed.to_le_bytes());
        b[40..48].copy_from_slice(&self.writes.to_le_bytes());
        for (i, d) in self.distinct.iter().enumerate() {
            b[48 + 4 * i..52 + 4 * i].copy_from_slice(&d.to_le_bytes());
        }
        b[68..72].copy_from_slice(&self.sampled.to_le_bytes());
        b[72..76].copy_from_slice(&self.sampled_zero.to_le_bytes());
        b[76..80].copy_from_slice(&self.sampled_repeat.to_le_bytes());
        b[80..88].copy_from_slice(&self.sampled_bytes.to_le_bytes());
        b[88..96].copy_from_slice(&self.sampled_stored.to_le_bytes());
        b[96..104].copy_from_slice(&self.since.to_le_bytes());
        let crc = crc32fast::hash(&b[..104]);
        b[104..108].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// The record in `b`, if it holds one whose CRC matches.
    fn decode(b: &[u8; RECORD_LEN]) -> Option<Record> {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let seq = u64_at(0);
        if seq == 0 || u32_at(104) != crc32fast::hash(&b[..104]) {
            return None;
        }
        Some(Record {
            seq,
            start: u64_at(8).cast_signed(),
            seconds: u32_at(16),
            flags: u32_at(20),
            bytes_written: u64_at(24),
            bytes_zeroed: u64_at(32),
            writes: u64_at(40),
            distinct: [u32_at(48), u32_at(52), u32_at(56), u32_at(60), u32_at(64)],
            sampled: u32_at(68),
            sampled_zero: u32_at(72),
            sampled_repeat: u32_at(76),
            sampled_bytes: u64_at(80),
            sampled_stored: u64_at(88),
            since: u64_at(96).cast_signed(),
        })
    }
}

/// What a series describes: the disk's geometry and the interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SeriesShape {
    /// Records kept.
    pub capacity: u32,
    /// Seconds per interval.
    pub interval: u32,
    /// The disk's block size in bytes.
    pub block_size: u32,
    /// The disk's blocks.
    pub block_count: u64,
}

impl SeriesShape {
    fn encode(&self) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[0..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&1u32.to_le_bytes());
        h[12..16].copy_from_slice(&RECORD_LEN_U32.to_le_bytes());
        h[16..20].copy_from_slice(&self.capacity.to_le_bytes());
        h[20..24].copy_from_slice(&self.interval.to_le_bytes());
        h[24..28].copy_from_slice(&self.block_size.to_le_bytes());
        h[32..40].copy_from_slice(&self.block_count.to_le_bytes());
        let crc = crc32fast::hash(&h[..40]);
        h[40..44].copy_from_slice(&crc.to_le_bytes());
        h
    }

    fn decode(h: &[u8; HEADER]) -> Result<SeriesShape, String> {
        let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
        if &h[0..8] != MAGIC {
            return Err("wrong magic".into());
        }
        if u32_at(40) != crc32fast::hash(&h[..40]) {
            return Err("header CRC mismatch".into());
        }
        if u32_at(8) != 1 || u32_at(12) != RECORD_LEN_U32 {
            return Err(format!("version {} with {}-byte records", u32_at(8), u32_at(12)));
        }
        let shape = SeriesShape {
            capacity: u32_at(16),
            interval: u32_at(20),
            block_size: u32_at(24),
            block_count: u64::from_le_bytes(h[32..40].try_into().expect("8 bytes")),
        };
        if shape.capacity == 0 || shape.interval == 0 || shape.block_size == 0 {
            return Err("zero capacity, interval or block size".into());
        }
        Ok(shape)
    }
}

/// A churn profile file, open for appending.
#[derive(Debug)]
pub struct Series {
    file: File,
    path: PathBuf,
    shape: SeriesShape,
    next_seq: u64,
}

impl Series {
    /// The most bytes a series of `capacity` records takes.
    pub fn max_len(capacity: u32) -> u64 {
        HEADER_LEN + u64::from(capacity) * RECORD_LEN as u64
    }

    /// Opens the series at `path` to append to it, or makes a new one
    /// (mode 0600) if there is none. A file of another shape (the disk was
    /// protected again with another size or block size, or the interval
    /// changed) or one that is not a series is renamed to `PATH.old` and a
    /// new one started; the second value then says so.
    pub fn open_or_create(path: &Path, shape: SeriesShape) -> Result<(Series, Option<String>), SeriesError> {
        let io = |what: &'static str| {
            let path = path.to_path_buf();
            move |source| SeriesError::Io { what, path, source }
        };
        let mut note = None;
        match Series::read(path) {
            Ok((old, records)) if old == shape => {
                let file = OpenOptions::new().read(true).write(true).open(path).map_err(io("opening"))?;
                let next_seq = records.last().map_or(1, |r| r.seq + 1);
                return Ok((Series { file, path: path.to_path_buf(), shape, next_seq }, None));
            }
            Ok((old, _)) => {
                note = Some(format!(
                    "{}: recorded for another shape ({} blocks of {} bytes every {} s); kept as {}.old, a new \
                     profile begins",
                    path.display(),
                    old.block_count,
                    old.block_size,
                    old.interval,
                    path.display()
                ));
            }
            Err(SeriesError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            Err(e) => note = Some(format!("{e}; kept as {}.old, a new profile begins", path.display())),
        }
        if note.is_some() {
            let mut old = path.as_os_str().to_owned();
            old.push(".old");
            std::fs::rename(path, &old).map_err(io("setting aside"))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io("creating"))?;
        file.write_all_at(&shape.encode(), 0).map_err(io("writing the header of"))?;
        Ok((Series { file, path: path.to_path_buf(), shape, next_seq: 1 }, note))
    }

    /// The shape this series records.
    pub fn shape(&self) -> SeriesShape {
        self.shape
    }

    /// Appends `record` (its `seq` is set here), overwriting the oldest
    /// once the ring is full. Returns the sequence number given.
    pub fn append(&mut self, mut record: Record) -> Result<u64, SeriesError> {
        record.seq = self.next_seq;
        let slot = (record.seq - 1) % u64::from(self.shape.capacity);
        self.file
            .write_all_at(&record.encode(), HEADER_LEN + slot * RECORD_LEN as u64)
            .map_err(|source| SeriesError::Io { what: "appending to", path: self.path.clone(), source })?;
        self.next_seq += 1;
        Ok(record.seq)
    }

    /// Reads a series: its shape and its valid records, oldest first. Slots
    /// never written, and records torn by a crash, are skipped.
    pub fn read(path: &Path) -> Result<(SeriesShape, Vec<Record>), SeriesError> {
        let io = |what: &'static str| {
            let path = path.to_path_buf();
            move |source| SeriesError::Io { what, path, source }
        };
        let file = File::open(path).map_err(io("opening"))?;
        let mut h = [0u8; HEADER];
        file.read_exact_at(&mut h, 0).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                SeriesError::Format { path: path.to_path_buf(), why: "shorter than its header".into() }
            }
            _ => SeriesError::Io { what: "reading", path: path.to_path_buf(), source: e },
        })?;
        let shape = SeriesShape::decode(&h).map_err(|why| SeriesError::Format { path: path.to_path_buf(), why })?;
        let len = file.metadata().map_err(io("inspecting"))?.len();
        let slots = ((len.saturating_sub(HEADER_LEN)) / RECORD_LEN as u64).min(u64::from(shape.capacity));
        let mut bytes = vec![0u8; usize::try_from(slots).expect("a month fits in memory") * RECORD_LEN];
        file.read_exact_at(&mut bytes, HEADER_LEN).map_err(io("reading"))?;
        let mut records: Vec<Record> =
            bytes.chunks_exact(RECORD_LEN).filter_map(|c| Record::decode(c.try_into().expect("a record"))).collect();
        records.sort_by_key(|r| r.seq);
        // A ring holds one lap: anything older than the newest's lap is a
        // slot that was not overwritten because its successor was torn.
        if let Some(newest) = records.last().map(|r| r.seq) {
            let cap = u64::from(shape.capacity);
            records.retain(|r| r.seq + cap > newest);
        }
        Ok((shape, records))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(capacity: u32) -> SeriesShape {
        SeriesShape { capacity, interval: 30, block_size: 65536, block_count: 1024 }
    }

    fn record(start: i64) -> Record {
        Record { start, seconds: 30, bytes_written: 7, distinct: [1, 2, 3, 4, 5], since: 0, ..Record::default() }
    }

    #[test]
    fn records_round_trip_and_a_torn_one_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("churn");
        let (mut s, note) = Series::open_or_create(&path, shape(10)).unwrap();
        assert!(note.is_none());
        for i in 0..3 {
            s.append(record(i * 30)).unwrap();
        }
        let (_, got) = Series::read(&path).unwrap();
        assert_eq!(got.iter().map(|r| (r.seq, r.start)).collect::<Vec<_>>(), vec![(1, 0), (2, 30), (3, 60)]);
        assert_eq!(got[1], Record { seq: 2, ..record(30) });
        // A crash half-way through the third record's write.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xff; 20], HEADER_LEN + 2 * RECORD_LEN as u64 + 30).unwrap();
        let (_, got) = Series::read(&path).unwrap();
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2]);
        // Reopened, the series goes on after the newest valid record.
        drop(s);
        let (mut s, _) = Series::open_or_create(&path, shape(10)).unwrap();
        assert_eq!(s.append(record(90)).unwrap(), 3);
    }

    #[test]
    fn the_ring_keeps_the_newest_capacity_records_and_never_grows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("churn");
        let (mut s, _) = Series::open_or_create(&path, shape(5)).unwrap();
        for i in 0..12 {
            s.append(record(i * 30)).unwrap();
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), Series::max_len(5));
        let (_, got) = Series::read(&path).unwrap();
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![8, 9, 10, 11, 12]);
    }

    #[test]
    fn another_shape_is_set_aside_and_a_new_series_begins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("churn");
        let (mut s, _) = Series::open_or_create(&path, shape(5)).unwrap();
        s.append(record(0)).unwrap();
        drop(s);
        let other = SeriesShape { block_count: 2048, ..shape(5) };
        let (_, note) = Series::open_or_create(&path, other).unwrap();
        assert!(note.unwrap().contains("another shape"));
        assert_eq!(Series::read(&path).unwrap(), (other, vec![]));
        let mut old = path.as_os_str().to_owned();
        old.push(".old");
        assert_eq!(Series::read(Path::new(&old)).unwrap().1.len(), 1);
        // Not a series at all: named, set aside too.
        std::fs::write(&path, b"hello").unwrap();
        assert!(matches!(Series::read(&path), Err(SeriesError::Format { .. })));
        let (_, note) = Series::open_or_create(&path, other).unwrap();
        assert!(note.unwrap().contains("not a churn profile"));
    }

    #[test]
    fn window_ends_and_wholeness() {
        // 30 s intervals from 00:04:30: the one ending at 00:05:00 ends the
        // 5 min window; recorded since 00:04:30, that window is partial.
        let r = Record { start: 270, seconds: 30, since: 270, ..Record::default() };
        assert!(r.ends_window(0) && r.ends_window(1) && !r.ends_window(2));
        assert!(r.window_whole(0) && !r.window_whole(1));
        let r = Record { start: 570, seconds: 30, since: 270, ..Record::default() };
        assert!(r.ends_window(1) && r.window_whole(1));
        // A short last interval inside a window ends none.
        let r = Record { start: 600, seconds: 12, since: 270, ..Record::default() };
        assert!(!r.ends_window(0) && !r.ends_window(1));
        assert_eq!((r.window_start(0), r.window_start(1)), (600, 600));
        // A roll a second late still ends the window it crossed.
        let r = Record { start: 270, seconds: 31, since: 0, ..Record::default() };
        assert!(r.ends_window(0) && r.ends_window(1));
        assert_eq!((r.window_start(0), r.window_start(1)), (270, 0));
        // An empty interval on a boundary ends nothing.
        let r = Record { start: 300, seconds: 0, since: 0, ..Record::default() };
        assert!(!r.ends_window(0) && !r.ends_window(1));
    }
}
