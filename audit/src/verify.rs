//! Verification: a log file or the vault's copy, record by record (framing,
//! MAC, seq, chain), and the two copies against each other.
//!
//! A log is read as a stream; what is kept in memory is 8 bytes per record
//! (its seq, to tell a reordering from a drop) and 32 per record of the
//! in-order prefix (its MAC, to compare the home's copy with the vault's).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use disk_format::{KeyFingerprint, Keys};
use vault::{Backend, Kind};

use crate::error::AuditError;
use crate::log::parse_segment_name;
use crate::record::{decode_body, Body, Item, LogId, RawRecord, Scanner, GENESIS_PREV};

/// What is wrong with a record or a stretch of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// The record's MAC does not verify: it was changed after it was written
    /// (or written by someone without the key).
    Edited,
    /// The record's `prev_mac` is not the MAC of the record before it: a
    /// record before it was replaced.
    ChainBroken,
    /// Records `first ..= last` are missing just before this one.
    Dropped {
        /// First missing seq.
        first: u64,
        /// Last missing seq.
        last: u64,
    },
    /// The record is out of place: record `expected` belongs here, and the
    /// records in between come later.
    Reordered {
        /// The seq that belongs here.
        expected: u64,
    },
    /// The record is a second copy of one already seen.
    Duplicated,
    /// A record of another key or another log (spliced in).
    Foreign {
        /// Whose it is.
        detail: String,
    },
    /// An authentic record whose body is not a valid record body (a writer bug).
    Malformed {
        /// What is wrong.
        detail: String,
    },
    /// The log ends inside a record: a crash during an append (the next
    /// append removes it) or a truncation.
    TornTail {
        /// Bytes of the partial record.
        bytes: u64,
    },
    /// The bytes here are not a record; nothing after them can be read.
    Unreadable {
        /// What is wrong.
        detail: String,
    },
    /// The vault's copy goes further than the home's log: records were
    /// removed from the end of the home's log.
    HomeTruncated {
        /// The last seq in the vault.
        vault_last: u64,
        /// The last seq in the home.
        home_last: u64,
    },
    /// The home's record and the vault's copy of it differ.
    Differs {
        /// Where the vault's copy is.
        vault_place: String,
    },
    /// The home's log is missing or is another log than the one this home
    /// copied to its vaults (according to the sync state beside it): it was
    /// deleted or replaced.
    Replaced {
        /// The log this home copied.
        copied: LogId,
        /// The log found in its place, if any.
        found: Option<LogId>,
    },
    /// A vault segment whose name does not fit its contents, or an object
    /// under the audit prefix that is not a segment.
    BadSegment {
        /// What is wrong.
        detail: String,
    },
    /// This record says a point was committed, and the vault no longer
    /// holds it, with no prune record for it (`links`).
    LostPoint {
        /// The disk.
        disk: String,
        /// The point.
        point: u64,
    },
    /// The vault's point is not the one this record committed (`links`).
    PointDiffers {
        /// The disk.
        disk: String,
        /// The point.
        point: u64,
    },
    /// A point was cut after record `seq` of this log, which the vault's
    /// copy does not hold (or holds another record there) (`links`).
    LostRecords {
        /// The disk of the point that names the record.
        disk: String,
        /// That point.
        point: u64,
        /// The record it names.
        seq: u64,
        /// The last record of the vault's copy (0: none).
        last: u64,
    },
    /// The vault's copy ends before records this home copied there (by the
    /// sync state beside the home's log).
    CopyLost {
        /// The last record this home copied to the vault.
        copied: u64,
        /// The last record the vault's copy holds.
        vault_last: u64,
    },
    /// The home's log is missing although the home's disks committed
    /// points under its key (`links`).
    LogMissing {
        /// A disk that committed points.
        disk: String,
        /// Its last committed point.
        point: u64,
    },
}

/// One thing verification found, with where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The log file's path, or `VAULT: audit/SEGMENT` for a vault copy.
    pub place: String,
    /// The record's seq, where there is one.
    pub seq: Option<u64>,
    /// Byte offset in the file or segment, where there is one.
    pub offset: Option<u64>,
    /// What is wrong.
    pub kind: ProblemKind,
}

impl ProblemKind {
    /// A short, stable name for scripts (`--json`): `edited`, `chain-broken`,
    /// `dropped`, `reordered`, `duplicated`, `foreign`, `malformed`,
    /// `torn-tail`, `unreadable`, `home-truncated`, `differs`, `replaced`,
    /// `bad-segment`, `lost-point`, `point-differs`, `lost-records`,
    /// `copy-lost`, `log-missing`.
    pub fn name(&self) -> &'static str {
        match self {
            ProblemKind::Edited => "edited",
            ProblemKind::ChainBroken => "chain-broken",
            ProblemKind::Dropped { .. } => "dropped",
            ProblemKind::Reordered { .. } => "reordered",
            ProblemKind::Duplicated => "duplicated",
            ProblemKind::Foreign { .. } => "foreign",
            ProblemKind::Malformed { .. } => "malformed",
            ProblemKind::TornTail { .. } => "torn-tail",
            ProblemKind::Unreadable { .. } => "unreadable",
            ProblemKind::HomeTruncated { .. } => "home-truncated",
            ProblemKind::Differs { .. } => "differs",
            ProblemKind::Replaced { .. } => "replaced",
            ProblemKind::BadSegment { .. } => "bad-segment",
            ProblemKind::LostPoint { .. } => "lost-point",
            ProblemKind::PointDiffers { .. } => "point-differs",
            ProblemKind::LostRecords { .. } => "lost-records",
            ProblemKind::CopyLost { .. } => "copy-lost",
            ProblemKind::LogMissing { .. } => "log-missing",
        }
    }
}

impl std::fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProblemKind::Edited => {
                f.write_str("edited: its MAC does not verify (the record was changed after it was written)")
            }
            ProblemKind::ChainBroken => f.write_str(
                "chain broken: it does not chain to the record before it (that record was replaced or removed)",
            ),
            ProblemKind::Dropped { first, last } if first == last => {
                write!(f, "dropped: record {first} is missing before it")
            }
            ProblemKind::Dropped { first, last } => {
                write!(f, "dropped: records {first} to {last} are missing before it")
            }
            ProblemKind::Reordered { expected } => {
                write!(f, "reordered: record {expected} belongs here; the records between come later")
            }
            ProblemKind::Duplicated => f.write_str("duplicated: a second copy of a record already seen"),
            ProblemKind::Foreign { detail } => write!(f, "foreign: {detail} (spliced in from another log)"),
            ProblemKind::Malformed { detail } => write!(f, "malformed: authentic, but {detail}"),
            ProblemKind::TornTail { bytes } => write!(
                f,
                "torn tail: the log ends {bytes} bytes into a record (a crash during an append, repaired by the next \
                 append; or the log was truncated)"
            ),
            ProblemKind::Unreadable { detail } => write!(f, "unreadable: {detail}; nothing after this can be read"),
            ProblemKind::HomeTruncated { vault_last, home_last } => write!(
                f,
                "truncated: the vault's copy holds records up to {vault_last}, the home's log ends at {home_last} \
                 (records were removed from the home's log)"
            ),
            ProblemKind::Differs { vault_place } => {
                write!(f, "differs from the vault's copy in {vault_place} (one of the two was rewritten)")
            }
            ProblemKind::Replaced { copied, found: None } => write!(
                f,
                "missing: this home copied audit log {copied} to its vault, and the log is gone (deleted); the \
                 vault's copy is what remains"
            ),
            ProblemKind::Replaced { copied, found: Some(found) } => write!(
                f,
                "replaced: this home copied audit log {copied} to its vault, but the log here is {found} (the old \
                 log was deleted or moved aside)"
            ),
            ProblemKind::BadSegment { detail } => write!(f, "bad segment: {detail}"),
            ProblemKind::LostPoint { disk, point } => write!(
                f,
                "lost point: it commits point {point} of disk {disk:?}, which the vault no longer holds, and no \
                 prune record removed it (the vault's roots were deleted or its storage rolled back)"
            ),
            ProblemKind::PointDiffers { disk, point } => write!(
                f,
                "point differs: the vault's point {point} of disk {disk:?} is not the one this record committed \
                 (its root was replaced, or the vault forked)"
            ),
            ProblemKind::LostRecords { disk, point, seq, last: 0 } => write!(
                f,
                "lost records: point {point} of disk {disk:?} was cut after record {seq} of this log, and the vault \
                 holds no copy of the log (its audit segments were deleted)"
            ),
            ProblemKind::LostRecords { disk, point, seq, last } if last < seq => write!(
                f,
                "lost records: point {point} of disk {disk:?} was cut after record {seq} of this log, but the \
                 vault's copy ends at record {last} (its newest audit segments were deleted, or its storage rolled \
                 back)"
            ),
            ProblemKind::LostRecords { disk, point, seq, .. } => write!(
                f,
                "lost records: record {seq} is not the record point {point} of disk {disk:?} was cut after (the log \
                 was replaced)"
            ),
            ProblemKind::CopyLost { copied, vault_last } => write!(
                f,
                "copy lost: this home copied records up to {copied} to the vault, whose copy now ends at record \
                 {vault_last} (its newest audit segments were deleted, or its storage rolled back)"
            ),
            ProblemKind::LogMissing { disk, point } => write!(
                f,
                "missing: there is no audit log of this key, yet disk {disk:?} committed point {point} with it (the \
                 state file records it): the log was deleted"
            ),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.place)?;
        match (self.seq, self.offset) {
            (Some(s), Some(o)) => write!(f, ": record {s} at byte {o}")?,
            (Some(s), None) => write!(f, ": record {s}")?,
            (None, Some(o)) => write!(f, ": at byte {o}")?,
            (None, None) => {}
        }
        write!(f, ": {}", self.kind)
    }
}

/// The result of verifying one log (a file, or one log's segments in a vault).
#[derive(Debug, Clone)]
pub struct LogReport {
    /// The file, or `VAULT: audit/FINGERPRINT/LOG_ID`.
    pub place: String,
    /// The log's id (from its first record), if it has one.
    pub log_id: Option<LogId>,
    /// Records read (authentic or not).
    pub records: u64,
    /// The last seq of the chain as read (0 for an empty log).
    pub last_seq: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Everything found wrong, in the order found.
    pub problems: Vec<Problem>,
    /// MACs of the authentic, in-order records 1, 2, ... (index seq - 1).
    macs: Vec<[u8; 32]>,
    /// Where each of the in-order records is (segment or file), for messages.
    homes: Vec<(u64, String)>,
}

impl LogReport {
    /// Whether nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The MAC of record `seq`, if it is among the authentic, in-order
    /// records read.
    pub fn mac_of(&self, seq: u64) -> Option<[u8; 32]> {
        usize::try_from(seq.checked_sub(1)?).ok().and_then(|i| self.macs.get(i)).copied()
    }
}

/// One record as listed by [`read_records`].
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Its seq (from the header; trust it only if `authentic`).
    pub seq: u64,
    /// Its byte offset in the file.
    pub offset: u64,
    /// Its log.
    pub log_id: LogId,
    /// Whether its MAC verified under the key.
    pub authentic: bool,
    /// The decoded body, if it decodes.
    pub body: Option<Body>,
}

struct Anomaly {
    idx: usize,
    place: String,
    offset: u64,
    seq: u64,
    expected: u64,
}

/// The streaming checks shared by files and vault segments.
struct Checker<'k> {
    keys: &'k Keys,
    fp: KeyFingerprint,
    report: LogReport,
    expected: u64,
    last_mac: [u8; 32],
    seqs: Vec<u64>,
    anomalies: Vec<Anomaly>,
    /// Checking a vault's segments (which may overlap) rather than a file.
    vault: bool,
}

impl<'k> Checker<'k> {
    fn new(keys: &'k Keys, place: String, vault: bool) -> Self {
        Checker {
            keys,
            fp: keys.fingerprint(),
            report: LogReport {
                place,
                log_id: None,
                records: 0,
                last_seq: 0,
                bytes: 0,
                problems: vec![],
                macs: vec![],
                homes: vec![],
            },
            expected: 1,
            last_mac: GENESIS_PREV,
            seqs: vec![],
            anomalies: vec![],
            vault,
        }
    }

    fn problem(&mut self, place: &str, seq: Option<u64>, offset: Option<u64>, kind: ProblemKind) {
        self.report.problems.push(Problem { place: place.to_string(), seq, offset, kind });
    }

    /// Takes the next record in storage order. Fails only for a wrong key.
    fn feed(&mut self, place: &str, at: u64, rec: &RawRecord) -> Result<(), AuditError> {
        self.report.records += 1;
        self.report.bytes += rec.len as u64;
        if rec.fingerprint != self.fp {
            if self.report.records == 1 && !rec.mac_ok {
                return Err(AuditError::WrongKey {
                    place: place.to_string(),
                    log_fingerprint: rec.fingerprint,
                    key_fingerprint: self.fp,
                });
            }
            let detail = format!("a record of the key {}", rec.fingerprint);
            self.problem(place, Some(rec.seq), Some(at), ProblemKind::Foreign { detail });
            return Ok(());
        }
        if !rec.mac_ok {
            // Framing intact, so assume it holds the place it claims to
            // hold in the sequence: the records around it are judged as if
            // it were the one expected.
            self.problem(place, Some(rec.seq), Some(at), ProblemKind::Edited);
            self.seqs.push(self.expected);
            self.expected += 1;
            self.last_mac = rec.mac;
            return Ok(());
        }
        match self.report.log_id {
            None => self.report.log_id = Some(rec.log_id),
            Some(id) if id != rec.log_id => {
                let detail = format!("a record of log {}, not {id}", rec.log_id);
                self.problem(place, Some(rec.seq), Some(at), ProblemKind::Foreign { detail });
                return Ok(());
            }
            Some(_) => {}
        }
        if let Err(detail) = decode_body(rec, self.keys) {
            self.problem(place, Some(rec.seq), Some(at), ProblemKind::Malformed { detail });
        }
        let seen = rec.seq.checked_sub(1).and_then(|i| usize::try_from(i).ok()).and_then(|i| self.report.macs.get(i));
        if self.vault && rec.seq < self.expected && seen == Some(&rec.mac) {
            // Overlapping vault segments (a copy repeated after a crash or
            // a restored sync state) hold the same record twice: harmless.
            self.report.records -= 1;
            self.report.bytes -= rec.len as u64;
            return Ok(());
        }
        let idx = self.seqs.len();
        self.seqs.push(rec.seq);
        if rec.seq == self.expected {
            if rec.prev_mac != self.last_mac {
                self.problem(place, Some(rec.seq), Some(at), ProblemKind::ChainBroken);
            }
            if self.report.macs.len() as u64 + 1 == rec.seq {
                self.report.macs.push(rec.mac);
                if self.report.homes.last().is_none_or(|(_, p)| p != place) {
                    self.report.homes.push((rec.seq, place.to_string()));
                }
            }
            self.expected += 1;
            self.last_mac = rec.mac;
        } else {
            let a = Anomaly { idx, place: place.to_string(), offset: at, seq: rec.seq, expected: self.expected };
            self.anomalies.push(a);
            if rec.seq > self.expected {
                self.expected = rec.seq + 1;
                self.last_mac = rec.mac;
            }
        }
        Ok(())
    }

    /// Takes how a stream of records ended.
    fn end(&mut self, place: &str, item: Item) {
        let vault = self.vault;
        match item {
            Item::Record(..) | Item::End => {}
            Item::Torn { offset, bytes } if !vault => {
                self.problem(place, Some(self.expected), Some(offset), ProblemKind::TornTail { bytes });
            }
            Item::Torn { offset, bytes } => {
                let detail = format!("the segment ends {bytes} bytes into a record (truncated)");
                self.problem(place, Some(self.expected), Some(offset), ProblemKind::Unreadable { detail });
            }
            Item::Invalid { offset, seq, detail } => {
                self.problem(place, seq, Some(offset), ProblemKind::Unreadable { detail });
            }
        }
    }

    /// Tells drops from reorderings, now that every seq is known.
    fn finish(mut self) -> LogReport {
        const MAX_CLASSIFIED: usize = 1000;
        const MAX_RANGE: u64 = 100_000;
        let mut positions: HashMap<u64, Vec<usize>> = HashMap::new();
        if !self.anomalies.is_empty() {
            for (i, s) in self.seqs.iter().enumerate() {
                positions.entry(*s).or_default().push(i);
            }
        }
        let appears =
            |s: u64, pred: &dyn Fn(usize) -> bool| positions.get(&s).is_some_and(|v| v.iter().any(|&i| pred(i)));
        let mut explained: HashSet<u64> = HashSet::new();
        let mut found = Vec::new();
        for a in self.anomalies.iter().take(MAX_CLASSIFIED) {
            let kind = if a.seq > a.expected {
                let later = a.seq - a.expected <= MAX_RANGE && (a.expected..a.seq).all(|m| appears(m, &|i| i > a.idx));
                if later {
                    explained.extend(a.expected..a.seq);
                    ProblemKind::Reordered { expected: a.expected }
                } else {
                    ProblemKind::Dropped { first: a.expected, last: a.seq - 1 }
                }
            } else if explained.remove(&a.seq) {
                continue;
            } else if appears(a.seq, &|i| i < a.idx) {
                ProblemKind::Duplicated
            } else {
                ProblemKind::Reordered { expected: a.expected }
            };
            found.push(Problem { place: a.place.clone(), seq: Some(a.seq), offset: Some(a.offset), kind });
        }
        self.report.problems.extend(found);
        if self.anomalies.len() > MAX_CLASSIFIED {
            let a = &self.anomalies[MAX_CLASSIFIED];
            let detail = format!("{} more records out of sequence from here on", self.anomalies.len() - MAX_CLASSIFIED);
            let p = Problem {
                place: a.place.clone(),
                seq: Some(a.seq),
                offset: Some(a.offset),
                kind: ProblemKind::Unreadable { detail },
            };
            self.report.problems.push(p);
        }
        self.report.last_seq = self.expected - 1;
        self.report
    }
}

fn open_shared(path: &Path) -> Result<File, AuditError> {
    let f = File::open(path).map_err(AuditError::io("opening audit log", path))?;
    // A shared lock: appends (exclusive) wait, so no half-written record is seen.
    system::lock::lock(&f, false).map_err(AuditError::io("locking audit log", path))?;
    Ok(f)
}

/// Verifies the log file at `path` with `keys`, calling `visit` for every
/// well-framed record in file order. Errors only when the file cannot be
/// read or was written with another key; damage is in the report.
pub fn scan_log(path: &Path, keys: &Keys, visit: &mut dyn FnMut(&Record)) -> Result<LogReport, AuditError> {
    let f = open_shared(path)?;
    let place = path.display().to_string();
    let mut checker = Checker::new(keys, place.clone(), false);
    let mut sc = Scanner::new(BufReader::new(f), keys, 0);
    loop {
        match sc.next_item().map_err(AuditError::io("reading audit log", path))? {
            Item::Record(at, rec) => {
                checker.feed(&place, at, &rec)?;
                let body = if rec.fingerprint == keys.fingerprint() { decode_body(&rec, keys).ok() } else { None };
                visit(&Record { seq: rec.seq, offset: at, log_id: rec.log_id, authentic: rec.mac_ok, body });
            }
            other => {
                checker.end(&place, other);
                break;
            }
        }
    }
    Ok(checker.finish())
}

/// Verifies the log of `keys` in the home's audit directory `dir`. `None`
/// when there is no log and none was ever copied from here. A log that is
/// missing, or is another log than the one this home copied to its vaults,
/// is reported as [`ProblemKind::Replaced`]; a missing log then reads as an
/// empty log of the copied id, so [`cross_check`] with the vault's copy also
/// reports every record as truncated.
pub fn verify_home(dir: &Path, keys: &Keys) -> Result<Option<LogReport>, AuditError> {
    let path = crate::log_path(dir, keys.fingerprint());
    let copied = crate::log::copied_log_id(&path);
    let mut report = if path.exists() {
        verify_log(&path, keys)?
    } else if copied.is_some() {
        Checker::new(keys, path.display().to_string(), false).finish()
    } else {
        return Ok(None);
    };
    if let Some(copied) = copied {
        let place = report.place.clone();
        let replaced =
            |found| Problem { place, seq: None, offset: None, kind: ProblemKind::Replaced { copied, found } };
        match report.log_id {
            // Missing, or empty: read as an empty log of the copied id.
            None => {
                report.log_id = Some(copied);
                if !path.exists() {
                    report.problems.insert(0, replaced(None));
                }
            }
            Some(found) if found != copied => report.problems.insert(0, replaced(Some(found))),
            Some(_) => {}
        }
    }
    Ok(Some(report))
}

/// Verifies the log file at `path` with `keys`.
pub fn verify_log(path: &Path, keys: &Keys) -> Result<LogReport, AuditError> {
    scan_log(path, keys, &mut |_| {})
}

/// Every record of the log file at `path`, in file order, and its report.
pub fn read_records(path: &Path, keys: &Keys) -> Result<(Vec<Record>, LogReport), AuditError> {
    let mut out = Vec::new();
    let report = scan_log(path, keys, &mut |r| out.push(r.clone()))?;
    Ok((out, report))
}

/// Verifies every log of `keys` that `backend` holds a copy of (one report
/// per log id; a vault shared by several homes with one key holds several).
/// Each log's segments are read in seq order and checked as one stream, so
/// a deleted segment shows as dropped records. Objects under the key's
/// prefix that are not segments get a report of their own (no log id).
pub fn verify_vault(backend: &dyn Backend, keys: &Keys) -> Result<Vec<LogReport>, AuditError> {
    scan_vault(backend, keys, &mut |_| {})
}

/// [`verify_vault`], calling `visit` for every well-framed record of every
/// log in the vault, each log's records in seq order.
pub fn scan_vault(
    backend: &dyn Backend,
    keys: &Keys,
    visit: &mut dyn FnMut(&Record),
) -> Result<Vec<LogReport>, AuditError> {
    let fp = keys.fingerprint();
    let loc = backend.location();
    let verr = AuditError::vault;
    let names =
        backend.list(Kind::Audit, &format!("{fp}/")).map_err(verr(format!("listing audit segments in {loc}")))?;
    let mut logs: BTreeMap<LogId, Vec<(u64, String)>> = BTreeMap::new();
    let mut strays = Vec::new();
    for n in names {
        match parse_segment_name(fp, &n) {
            Some((id, first)) => logs.entry(id).or_default().push((first, n)),
            None => strays.push(n),
        }
    }
    let mut reports = Vec::new();
    for (id, mut segments) in logs {
        segments.sort();
        let mut checker = Checker::new(keys, format!("{loc}: audit/{fp}/{id}"), true);
        checker.report.log_id = Some(id);
        for (first, name) in segments {
            let place = format!("{loc}: audit/{name}");
            let bytes =
                backend.get(Kind::Audit, &name).map_err(verr(format!("reading audit segment {name} in {loc}")))?;
            let mut sc = Scanner::new(&bytes[..], keys, 0);
            let mut n = 0u64;
            loop {
                match sc.next_item().map_err(AuditError::io("reading audit segment", Path::new(&place)))? {
                    Item::Record(at, rec) => {
                        if n == 0 && rec.seq != first {
                            let detail =
                                format!("its name says it starts at record {first}, its first record is {}", rec.seq);
                            checker.problem(&place, Some(rec.seq), Some(0), ProblemKind::BadSegment { detail });
                        }
                        checker.feed(&place, at, &rec)?;
                        let body = if rec.fingerprint == fp { decode_body(&rec, keys).ok() } else { None };
                        visit(&Record { seq: rec.seq, offset: at, log_id: rec.log_id, authentic: rec.mac_ok, body });
                        n += 1;
                    }
                    other => {
                        if n == 0 && matches!(other, Item::End) {
                            let detail = "the segment is empty".to_string();
                            checker.problem(&place, None, None, ProblemKind::BadSegment { detail });
                        }
                        checker.end(&place, other);
                        break;
                    }
                }
            }
        }
        reports.push(checker.finish());
    }
    if !strays.is_empty() {
        let mut r = Checker::new(keys, format!("{loc}: audit/{fp}"), true).finish();
        for n in strays {
            let detail = "not an audit segment name (FINGERPRINT/LOG_ID/20 digits)".to_string();
            r.problems.push(Problem {
                place: format!("{loc}: audit/{n}"),
                seq: None,
                offset: None,
                kind: ProblemKind::BadSegment { detail },
            });
        }
        reports.push(r);
    }
    Ok(reports)
}

/// Compares a home log's report with the vault's report of the same log
/// (same log id; otherwise nothing is compared): records both hold must be
/// identical, and the vault must not go further than the home. The vault
/// being behind is not a problem (see [`not_copied`]).
pub fn cross_check(home: &LogReport, vault: &LogReport) -> Vec<Problem> {
    let mut out = Vec::new();
    if home.log_id.is_none() || home.log_id != vault.log_id {
        return out;
    }
    if let Some(i) = home.macs.iter().zip(&vault.macs).position(|(a, b)| a != b) {
        let seq = i as u64 + 1;
        let vault_place =
            vault.homes.iter().rev().find(|(s, _)| *s <= seq).map_or_else(|| vault.place.clone(), |(_, p)| p.clone());
        out.push(Problem {
            place: home.place.clone(),
            seq: Some(seq),
            offset: None,
            kind: ProblemKind::Differs { vault_place },
        });
    }
    if vault.last_seq > home.last_seq {
        out.push(Problem {
            place: home.place.clone(),
            seq: Some(home.last_seq + 1),
            offset: Some(home.bytes),
            kind: ProblemKind::HomeTruncated { vault_last: vault.last_seq, home_last: home.last_seq },
        });
    }
    out
}

/// How many of the home log's records the vault's copy does not hold yet.
pub fn not_copied(home: &LogReport, vault: &LogReport) -> u64 {
    home.last_seq.saturating_sub(vault.last_seq)
}
