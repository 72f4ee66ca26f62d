//! The log in the home (`HOME/audit/<fingerprint>.log`) and its copy in the
//! vault (`audit/<fingerprint>/<log id>/<first seq>` segments).
//!
//! Every append and every copy runs under an exclusive `flock` of the log
//! file, so the agent and any number of CLI commands may append at once: each
//! sees the others' records and chains onto the last one. An append finds the
//! last record from the end of the file (its trailer gives its length) and
//! checks its MAC before chaining onto it; when that fails it scans the file
//! from the start, and either truncates a torn tail (a crash mid-append:
//! only the partial record goes, and an `audit.torn-tail` record says so) or
//! refuses, if the damage is anything else.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use disk_format::{AuditHead, KeyFingerprint, Keys};
use serde::{Deserialize, Serialize};
use vault::{Backend, Kind, VaultError};

use crate::error::AuditError;
use crate::record::{
    self, encode_record, Body, Event, Item, LogId, Scanner, Stamp, GENESIS_PREV, MAX_BODY, OVERHEAD, TRAILER_LEN,
};

/// The largest vault segment a copy writes (several are written when more
/// is due, e.g. after the vault was unreachable for a while).
pub const SEGMENT_MAX: usize = 4 << 20;

/// The log file of the key with `fingerprint` in `dir` (`HOME/audit`).
pub fn log_path(dir: &Path, fingerprint: KeyFingerprint) -> PathBuf {
    dir.join(format!("{fingerprint}.log"))
}

/// The vault object name (kind [`Kind::Audit`]) of the segment of log
/// `log_id` whose first record is `first`: `FINGERPRINT/LOG_ID/FIRST`, the
/// seq as 20 zero-padded digits so names sort in seq order.
pub fn segment_name(fingerprint: KeyFingerprint, log_id: LogId, first: u64) -> String {
    format!("{fingerprint}/{log_id}/{first:020}")
}

/// Splits a segment name into log id and first seq; `None` for a name that
/// is not `FINGERPRINT/LOG_ID/20 DIGITS` under `fingerprint`.
pub fn parse_segment_name(fingerprint: KeyFingerprint, name: &str) -> Option<(LogId, u64)> {
    let mut parts = name.split('/');
    let (fp, id, first) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || fp != fingerprint.to_string() || first.len() != 20 {
        return None;
    }
    if !first.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((LogId::from_hex(id)?, first.parse().ok()?))
}

/// What an append wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The new record's seq.
    pub seq: u64,
    /// Its byte offset in the log file.
    pub offset: u64,
    /// The log it joined (new if this was the first record).
    pub log_id: LogId,
    /// If the log had a torn tail (a crash mid-append), how many bytes of
    /// the partial record were cut off; an `audit.torn-tail` record written
    /// just before this one says the same.
    pub repaired_torn_bytes: Option<u64>,
}

/// What a copy to the vault did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synced {
    /// Segments written.
    pub segments: Vec<String>,
    /// Records copied.
    pub records: u64,
    /// The last seq the vault now holds (0: the log is empty).
    pub vault_last: u64,
}

/// The last whole record of a log.
#[derive(Debug, Clone, Copy)]
struct Last {
    seq: u64,
    mac: [u8; 32],
    log_id: LogId,
}

/// Where a log's good records end, and what follows them.
struct Tail {
    /// Byte offset just past the last whole record.
    end: u64,
    last: Option<Last>,
    /// Bytes of a torn record after `end`.
    torn: u64,
}

/// What the sync state file (`<fingerprint>.log.sync`) remembers per vault:
/// the next record to copy and where it starts. A hint, checked before use:
/// a wrong or lost file costs a listing of the vault, never a wrong copy.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SyncState {
    log_id: String,
    vaults: std::collections::BTreeMap<String, VaultMark>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct VaultMark {
    /// Seq of the first record the vault does not hold.
    next_seq: u64,
    /// Its offset in the log file.
    next_offset: u64,
    /// Hex MAC of record `next_seq - 1` (what the next copied record must chain to).
    last_mac: String,
    /// The last segment written, probed to notice a wiped or replaced vault.
    last_segment: String,
}

/// One key's audit log in a home. Cheap to open: nothing is read until an
/// append or a copy.
pub struct AuditLog<'k> {
    path: PathBuf,
    keys: &'k Keys,
}

impl std::fmt::Debug for AuditLog<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditLog({})", self.path.display())
    }
}

impl<'k> AuditLog<'k> {
    /// The log of `keys` in `dir` (`HOME/audit`), which is created with mode
    /// 0700 if missing. The log file itself is created (0600) by the first
    /// append.
    pub fn open(dir: &Path, keys: &'k Keys) -> Result<AuditLog<'k>, AuditError> {
        if !dir.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(AuditError::io("creating the audit log directory", dir))?;
        }
        Ok(AuditLog { path: log_path(dir, keys.fingerprint()), keys })
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sync_state_path(&self) -> PathBuf {
        sync_state_path(&self.path)
    }

    /// Opens the log file (creating it 0600) and takes its exclusive lock.
    fn lock(&self) -> Result<(File, bool), AuditError> {
        let existed = self.path.exists();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.path)
            .map_err(AuditError::io("opening audit log", &self.path))?;
        system::lock::lock(&f, true).map_err(AuditError::io("locking audit log", &self.path))?;
        Ok((f, !existed))
    }

    /// Appends a record of `event`, stamped with this host, user, process
    /// and the current time, and makes it durable before returning.
    pub fn append(&self, event: &Event) -> Result<Appended, AuditError> {
        self.append_stamped(event, &Stamp::now())
    }

    /// [`AuditLog::append`] with a given stamp. **Tests only** (golden
    /// vectors need fixed times): a real record says when it was written.
    #[doc(hidden)]
    pub fn append_stamped(&self, event: &Event, stamp: &Stamp) -> Result<Appended, AuditError> {
        // Check the event before touching the file (the largest seq makes
        // the longest body).
        let preview = Body::new(u64::MAX, event, stamp).map_err(AuditError::BadEvent)?;
        let len = serde_json::to_vec(&preview).expect("a Body always serializes").len();
        if len + disk_format::SEAL_OVERHEAD > MAX_BODY {
            return Err(AuditError::BadEvent(format!(
                "the record body would be {len} bytes, more than {MAX_BODY}; keep details small"
            )));
        }
        let (f, created) = self.lock()?;
        let tail = self.find_tail(&f)?;
        let (seq0, mut prev, log_id) = match tail.last {
            Some(l) => (l.seq + 1, l.mac, l.log_id),
            None => (1, GENESIS_PREV, LogId::random().map_err(|e| AuditError::Random(e.to_string()))?),
        };
        let mut out = Vec::new();
        let mut seq = seq0;
        if tail.torn > 0 {
            let note = Event::new(
                "audit.torn-tail",
                None,
                serde_json::json!({
                    "offset": tail.end,
                    "bytes": tail.torn,
                    "note": "a record cut short by a crash during an append was removed"
                }),
            );
            let body = Body::new(seq, &note, stamp).map_err(AuditError::BadEvent)?;
            let r = encode_record(self.keys, log_id, seq, &prev, &body);
            prev = r[r.len() - 32..].try_into().expect("32 bytes");
            out.extend_from_slice(&r);
            seq += 1;
        }
        let body = Body::new(seq, event, stamp).map_err(AuditError::BadEvent)?;
        let r = encode_record(self.keys, log_id, seq, &prev, &body);
        let offset = tail.end + (out.len() as u64);
        out.extend_from_slice(&r);
        if tail.torn > 0 {
            f.set_len(tail.end).map_err(AuditError::io("truncating the torn tail of audit log", &self.path))?;
        }
        // One write at the end of the good records; under the lock nobody
        // else writes, so a crash can only leave this write torn.
        f.write_all_at(&out, tail.end).map_err(AuditError::io("appending to audit log", &self.path))?;
        f.sync_data().map_err(AuditError::io("syncing audit log", &self.path))?;
        if created {
            sync_parent(&self.path)?;
        }
        Ok(Appended { seq, offset, log_id, repaired_torn_bytes: (tail.torn > 0).then_some(tail.torn) })
    }

    /// Finds the last whole record: from the end (fast), else by a scan.
    fn find_tail(&self, f: &File) -> Result<Tail, AuditError> {
        let size = f.metadata().map_err(AuditError::io("reading audit log size", &self.path))?.len();
        if size == 0 {
            return Ok(Tail { end: 0, last: None, torn: 0 });
        }
        if let Some(last) = self.last_from_end(f, size)? {
            return Ok(Tail { end: size, last: Some(last), torn: 0 });
        }
        self.scan_tail(f)
    }

    /// The last record, if the file ends with a whole, authentic record of
    /// this key (the common case); `None` sends the caller to a full scan.
    fn last_from_end(&self, f: &File, size: u64) -> Result<Option<Last>, AuditError> {
        if size < OVERHEAD as u64 {
            return Ok(None);
        }
        let mut trailer = [0u8; TRAILER_LEN];
        f.read_exact_at(&mut trailer, size - TRAILER_LEN as u64)
            .map_err(AuditError::io("reading audit log", &self.path))?;
        let len = u64::from(u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes")));
        if len < OVERHEAD as u64 || len > (OVERHEAD + MAX_BODY) as u64 || len > size {
            return Ok(None);
        }
        let mut buf = vec![0u8; usize::try_from(len).expect("at most 64 KiB")];
        f.read_exact_at(&mut buf, size - len).map_err(AuditError::io("reading audit log", &self.path))?;
        // The first record's log id (it must be this log's).
        let mut first_id = [0u8; 16];
        f.read_exact_at(&mut first_id, 40).map_err(AuditError::io("reading audit log", &self.path))?;
        Ok(match record::parse(&buf, self.keys) {
            Ok(r) if r.mac_ok && r.fingerprint == self.keys.fingerprint() && r.log_id.0 == first_id => {
                Some(Last { seq: r.seq, mac: r.mac, log_id: r.log_id })
            }
            _ => None,
        })
    }

    /// Scans the whole file: every record must be authentic; a torn record
    /// may end it.
    fn scan_tail(&self, f: &File) -> Result<Tail, AuditError> {
        let mut r = f.try_clone().map_err(AuditError::io("reading audit log", &self.path))?;
        r.seek(SeekFrom::Start(0)).map_err(AuditError::io("reading audit log", &self.path))?;
        let mut sc = Scanner::new(BufReader::new(r), self.keys, 0);
        let mut last: Option<Last> = None;
        let mut end = 0;
        loop {
            let damaged =
                |offset, seq, detail: String| AuditError::Damaged { path: self.path.clone(), offset, seq, detail };
            match sc.next_item().map_err(AuditError::io("reading audit log", &self.path))? {
                Item::Record(at, rec) => {
                    if !rec.mac_ok {
                        if last.is_none() && rec.fingerprint != self.keys.fingerprint() {
                            return Err(AuditError::WrongKey {
                                place: self.path.display().to_string(),
                                log_fingerprint: rec.fingerprint,
                                key_fingerprint: self.keys.fingerprint(),
                            });
                        }
                        return Err(damaged(
                            at,
                            Some(rec.seq),
                            "its MAC does not verify: the record was changed after it was written".into(),
                        ));
                    }
                    let (want_seq, want_prev) = last.map_or((1, GENESIS_PREV), |l| (l.seq + 1, l.mac));
                    if rec.seq != want_seq || rec.prev_mac != want_prev || last.is_some_and(|l| l.log_id != rec.log_id)
                    {
                        return Err(damaged(
                            at,
                            Some(rec.seq),
                            format!(
                                "it does not follow record {} (records dropped, reordered or spliced)",
                                want_seq - 1
                            ),
                        ));
                    }
                    end = at + rec.len as u64;
                    last = Some(Last { seq: rec.seq, mac: rec.mac, log_id: rec.log_id });
                }
                Item::End => return Ok(Tail { end, last, torn: 0 }),
                Item::Torn { offset, bytes } => return Ok(Tail { end: offset, last, torn: bytes }),
                Item::Invalid { offset, seq, detail } => return Err(damaged(offset, seq, detail)),
            }
        }
    }

    /// Where the log stands: its id and its newest record's seq and MAC, or
    /// `None` for a log with no record yet. A point's root carries it
    /// (`disk_format::AuditHead`), so a vault whose copy of the log ends
    /// before it is seen to have lost segments.
    pub fn head(&self) -> Result<Option<AuditHead>, AuditError> {
        if !self.path.exists() {
            return Ok(None);
        }
        let (f, _) = self.lock()?;
        let tail = self.find_tail(&f)?;
        Ok(tail.last.map(|l| AuditHead { log_id: l.log_id.0, seq: l.seq, mac: l.mac }))
    }

    /// Copies the records the vault does not hold yet to `backend`, as
    /// segments of about [`SEGMENT_MAX`] bytes at most (kind [`Kind::Audit`],
    /// names from [`segment_name`]). Every record copied is checked (MAC,
    /// seq, chain) first; a damaged log is refused, never copied.
    pub fn sync_to(&self, backend: &dyn Backend) -> Result<Synced, AuditError> {
        let (f, _) = self.lock()?;
        let tail = self.find_tail(&f)?;
        let Some(last) = tail.last else {
            return Ok(Synced { segments: vec![], records: 0, vault_last: 0 });
        };
        let fp = self.keys.fingerprint();
        let location = backend.location();
        let mut state = self.read_sync_state(last.log_id);
        // Everything is copied as far as this home knows: nothing to send,
        // so nothing to ask the vault. The next copy checks the mark.
        if let Some(m) = state.vaults.get(&location) {
            if m.next_seq == last.seq + 1 && m.next_offset == tail.end {
                return Ok(Synced { segments: vec![], records: 0, vault_last: last.seq });
            }
        }
        let mark = match state.vaults.get(&location) {
            Some(m) if self.mark_holds(&f, m, (tail.end, last), backend)? => m.clone(),
            _ => self.mark_from_vault(&f, backend, last.log_id, tail.end)?,
        };
        if mark.next_seq > last.seq + 1 {
            return Err(AuditError::VaultAhead {
                path: self.path.clone(),
                location,
                vault_last: mark.next_seq - 1,
                home_last: last.seq,
            });
        }
        let mut synced = Synced { segments: vec![], records: 0, vault_last: mark.next_seq - 1 };
        let mut mark = mark;
        while mark.next_seq <= last.seq {
            let (bytes, count, last_mac) = self.read_segment(&f, &mark, tail.end)?;
            if count == 0 {
                return Err(AuditError::Damaged {
                    path: self.path.clone(),
                    offset: mark.next_offset,
                    seq: Some(mark.next_seq),
                    detail: "the record the vault needs next is not in the log (records dropped)".into(),
                });
            }
            let name = segment_name(fp, last.log_id, mark.next_seq);
            self.put_segment(backend, &name, &bytes)?;
            mark = VaultMark {
                next_seq: mark.next_seq + count,
                next_offset: mark.next_offset + bytes.len() as u64,
                last_mac: record::hex(&last_mac),
                last_segment: name.clone(),
            };
            synced.segments.push(name);
            synced.records += count;
            synced.vault_last = mark.next_seq - 1;
            state.vaults.insert(location.clone(), mark.clone());
            self.write_sync_state(&state)?;
        }
        Ok(synced)
    }

    /// Whether a remembered mark can be trusted: it points at the record it
    /// names (or at the end), the vault still has the segment it wrote, and
    /// nothing after it.
    fn mark_holds(
        &self,
        f: &File,
        m: &VaultMark,
        (end, last): (u64, Last),
        backend: &dyn Backend,
    ) -> Result<bool, AuditError> {
        let log_id = last.log_id;
        if m.next_offset > end || m.next_seq == 0 || (m.next_offset == end && m.next_seq != last.seq + 1) {
            return Ok(false);
        }
        if m.next_offset < end {
            let mut head = [0u8; 24];
            if f.read_exact_at(&mut head, m.next_offset).is_err() || head[..8] != record::RECORD_MAGIC {
                return Ok(false);
            }
            if u64::from_le_bytes(head[16..24].try_into().expect("8 bytes")) != m.next_seq {
                return Ok(false);
            }
        }
        let fp = self.keys.fingerprint();
        if parse_segment_name(fp, &m.last_segment).is_none_or(|(id, _)| id != log_id) {
            return Ok(false);
        }
        // The segment it wrote is there, and the next one is not (else the
        // mark is stale: a copy crashed before saving it, or the state file
        // was restored from a backup).
        // The two probes go out together: one round trip to a cloud vault.
        let probe = |name: &str| {
            backend
                .size(Kind::Audit, name)
                .map_err(AuditError::vault(format!("probing audit segment {name} in {}", backend.location())))
        };
        let next = segment_name(fp, log_id, m.next_seq);
        let (wrote, next) = std::thread::scope(|s| {
            let next = s.spawn(|| probe(&next));
            (probe(&m.last_segment), next.join().expect("an audit probe does not panic"))
        });
        Ok(wrote?.is_some() && next?.is_none())
    }

    /// Works out what the vault holds by listing it (after a lost or stale
    /// sync state), and where the next record to copy starts in the file.
    fn mark_from_vault(
        &self,
        f: &File,
        backend: &dyn Backend,
        log_id: LogId,
        end: u64,
    ) -> Result<VaultMark, AuditError> {
        let fp = self.keys.fingerprint();
        let prefix = format!("{fp}/{log_id}/");
        let vault_err = AuditError::vault;
        let names = backend
            .list(Kind::Audit, &prefix)
            .map_err(vault_err(format!("listing audit segments in {}", backend.location())))?;
        let newest = names.iter().filter_map(|n| parse_segment_name(fp, n).map(|(_, s)| (s, n))).max();
        let vault_last = match newest {
            None => 0,
            Some((first, name)) => {
                let bytes = backend
                    .get(Kind::Audit, name)
                    .map_err(vault_err(format!("reading audit segment {name} in {}", backend.location())))?;
                let mut sc = Scanner::new(&bytes[..], self.keys, 0);
                let mut last = first - 1;
                while let Ok(Item::Record(_, r)) = sc.next_item() {
                    if r.mac_ok && r.seq == last + 1 {
                        last = r.seq;
                    }
                }
                last
            }
        };
        // Find record vault_last + 1 (and vault_last's MAC) in the file.
        let mut r = f.try_clone().map_err(AuditError::io("reading audit log", &self.path))?;
        r.seek(SeekFrom::Start(0)).map_err(AuditError::io("reading audit log", &self.path))?;
        let mut sc = Scanner::new(BufReader::new(r), self.keys, 0);
        let mut mark = VaultMark {
            next_seq: vault_last + 1,
            next_offset: end,
            last_mac: record::hex(&GENESIS_PREV),
            last_segment: String::new(),
        };
        let mut home_last = 0;
        while let Item::Record(at, rec) = sc.next_item().map_err(AuditError::io("reading audit log", &self.path))? {
            home_last = rec.seq;
            if rec.seq == vault_last {
                mark.last_mac = record::hex(&rec.mac);
            }
            if rec.seq == vault_last + 1 {
                mark.next_offset = at;
                return Ok(mark);
            }
        }
        if vault_last > home_last {
            return Err(AuditError::VaultAhead {
                path: self.path.clone(),
                location: backend.location(),
                vault_last,
                home_last,
            });
        }
        Ok(mark)
    }

    /// Reads and checks the records from `mark` on, up to [`SEGMENT_MAX`]
    /// bytes (at least one record): the bytes, how many, the last MAC.
    fn read_segment(&self, f: &File, mark: &VaultMark, end: u64) -> Result<(Vec<u8>, u64, [u8; 32]), AuditError> {
        let mut r = f.try_clone().map_err(AuditError::io("reading audit log", &self.path))?;
        r.seek(SeekFrom::Start(mark.next_offset)).map_err(AuditError::io("reading audit log", &self.path))?;
        let mut sc = Scanner::new(BufReader::new(r.take(end - mark.next_offset)), self.keys, mark.next_offset);
        let mut out = Vec::new();
        let (mut seq, mut prev_hex, mut count) = (mark.next_seq, mark.last_mac.clone(), 0u64);
        let mut last_mac = [0u8; 32];
        while out.len() < SEGMENT_MAX {
            match sc.next_item().map_err(AuditError::io("reading audit log", &self.path))? {
                Item::Record(at, rec) => {
                    let why = if !rec.mac_ok {
                        Some("its MAC does not verify: the record was changed after it was written".to_string())
                    } else if rec.seq != seq || record::hex(&rec.prev_mac) != prev_hex {
                        Some(format!("it does not follow record {} (records dropped or reordered)", seq - 1))
                    } else {
                        None
                    };
                    if let Some(detail) = why {
                        return Err(AuditError::Damaged {
                            path: self.path.clone(),
                            offset: at,
                            seq: Some(rec.seq),
                            detail,
                        });
                    }
                    out.extend_from_slice(&rec.bytes);
                    last_mac = rec.mac;
                    prev_hex = record::hex(&rec.mac);
                    seq += 1;
                    count += 1;
                }
                Item::End => break,
                Item::Torn { offset, .. } | Item::Invalid { offset, .. } => {
                    return Err(AuditError::Damaged {
                        path: self.path.clone(),
                        offset,
                        seq: Some(seq),
                        detail: "the record is not whole".into(),
                    })
                }
            }
        }
        Ok((out, count, last_mac))
    }

    /// Stores a segment. A segment of that name may already be there (a copy
    /// that crashed before it saved its state): it is replaced only by a
    /// copy that begins with exactly its bytes, so nothing the vault holds
    /// is ever lost.
    fn put_segment(&self, backend: &dyn Backend, name: &str, bytes: &[u8]) -> Result<(), AuditError> {
        let loc = backend.location();
        let verr = AuditError::vault;
        // The usual case, a new segment, is one create-if-absent request.
        match backend.create(Kind::Audit, name, bytes) {
            Ok(_) => return Ok(()),
            Err(VaultError::AlreadyExists { .. }) => {}
            Err(e) => return Err(verr(format!("writing audit segment {name} to {loc}"))(e)),
        }
        {
            let old = backend.get(Kind::Audit, name).map_err(verr(format!("reading audit segment {name} in {loc}")))?;
            if !bytes.starts_with(&old) {
                return Err(AuditError::Damaged {
                    path: self.path.clone(),
                    offset: 0,
                    seq: parse_segment_name(self.keys.fingerprint(), name).map(|(_, s)| s),
                    detail: format!(
                        "the vault {loc} already holds a different segment {name} (the vault's copy and the log \
                         disagree)"
                    ),
                });
            }
        }
        backend.put(Kind::Audit, name, bytes).map_err(verr(format!("writing audit segment {name} to {loc}")))
    }

    fn read_sync_state(&self, log_id: LogId) -> SyncState {
        let fresh = SyncState { log_id: log_id.to_string(), vaults: Default::default() };
        match std::fs::read(self.sync_state_path()).ok().and_then(|b| serde_json::from_slice::<SyncState>(&b).ok()) {
            Some(s) if s.log_id == log_id.to_string() => s,
            _ => fresh,
        }
    }

    fn write_sync_state(&self, state: &SyncState) -> Result<(), AuditError> {
        let path = self.sync_state_path();
        let bytes = serde_json::to_vec_pretty(state).expect("the sync state serializes");
        // Not durable: a lost or emptied state only makes the next copy
        // ask the vault again (`read_sync_state` takes it for none).
        system::file::replace_unsynced(&path, &bytes).map_err(AuditError::io("writing audit sync state", &path))
    }
}

/// The sync state file of the log at `log`: `<log>.sync`.
fn sync_state_path(log: &Path) -> PathBuf {
    let mut p = log.to_path_buf().into_os_string();
    p.push(".sync");
    p.into()
}

/// The log id the sync state beside the log at `log` remembers copying to
/// a vault, if any: the id the log must still have. A hint for
/// [`crate::verify_home`] (the state file is not authenticated).
pub(crate) fn copied_log_id(log: &Path) -> Option<LogId> {
    let bytes = std::fs::read(sync_state_path(log)).ok()?;
    let state: SyncState = serde_json::from_slice(&bytes).ok()?;
    if state.vaults.is_empty() {
        return None;
    }
    LogId::from_hex(&state.log_id)
}

/// The last record of the log at `log` that the sync state beside it says
/// was copied to the vault at `location` (0: none). A hint, not evidence
/// (the state file is not authenticated); [`crate::verify`] uses it to tell
/// a vault that lost records this home copied from one that was not yet sent
/// them.
pub fn copied_through(log: &Path, location: &str) -> u64 {
    std::fs::read(sync_state_path(log))
        .ok()
        .and_then(|b| serde_json::from_slice::<SyncState>(&b).ok())
        .and_then(|s| s.vaults.get(location).map(|m| m.next_seq.saturating_sub(1)))
        .unwrap_or(0)
}

fn sync_parent(path: &Path) -> Result<(), AuditError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(AuditError::io("syncing directory", dir))
}
