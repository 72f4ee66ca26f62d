//! The bytes of one audit record (FORMAT.md, "Audit log (format version 2)").
//!
//! ```text
//! offset  size  field
//! 0       8     magic            first 8 bytes of BLAKE3("lifeboat audit record v1")
//! 8       2     format_version   2 (1 is still read)
//! 10      2     reserved         0
//! 12      4     body_len         1 ..= MAX_BODY
//! 16      8     seq              1, 2, 3, ... within one log
//! 24      16    fingerprint      the key's fingerprint
//! 40      16    log_id           random, fixed when the log's first record is written
//! 56      32    prev_mac         the previous record's mac; all zero for seq 1
//! 88      n     body             v2: the JSON object (see `Body`) sealed with
//!                                `Keys::seal_audit_body`, AAD = bytes 0..88;
//!                                v1: the JSON object in the clear
//! 88+n    4     record_len       128 + n (lets a writer find the last record from the end)
//! 92+n    4     reserved         0
//! 96+n    32    mac              BLAKE3 keyed with the audit subkey over bytes 0 .. 96+n
//! ```
//!
//! All integers little-endian. This module only encodes and parses; the log
//! file and the vault copy are in `log.rs`, the checks of a whole log in
//! `verify.rs`.

use disk_format::{KeyFingerprint, Keys, SEAL_OVERHEAD};
use serde::{Deserialize, Serialize};

/// First 8 bytes of BLAKE3("lifeboat audit record v1").
pub const RECORD_MAGIC: [u8; 8] = [0xa4, 0xcc, 0xf1, 0xc7, 0x21, 0xfa, 0xfc, 0x23];
/// Bytes before the body.
pub const HEADER_LEN: usize = 88;
/// Bytes after the body: record_len, reserved, mac.
pub const TRAILER_LEN: usize = 40;
/// Framing bytes of every record.
pub const OVERHEAD: usize = HEADER_LEN + TRAILER_LEN;
/// The largest body a record may carry (64 KiB): keep details small.
pub const MAX_BODY: usize = 64 * 1024;
/// The `prev_mac` of a log's first record.
pub const GENESIS_PREV: [u8; 32] = [0; 32];
/// Length of a log id.
pub const LOG_ID_LEN: usize = 16;

const _: () = assert!(OVERHEAD == 128);

/// The record format versions this code reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatVersion {
    /// Version 1: the body in the clear (issue 12, hole 10: the vault read
    /// host names, users and image paths). Still read.
    V1 = 1,
    /// Version 2: the body sealed (XChaCha20-Poly1305, AAD = the header).
    V2 = 2,
}

impl TryFrom<u16> for FormatVersion {
    type Error = u16;
    fn try_from(v: u16) -> Result<Self, u16> {
        match v {
            1 => Ok(FormatVersion::V1),
            2 => Ok(FormatVersion::V2),
            other => Err(other),
        }
    }
}

/// A log's identity: 16 random bytes drawn when its first record is written,
/// carried by every record, naming its copy in the vault. Two hosts with
/// the same key keep separate logs that never mix.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogId(pub [u8; LOG_ID_LEN]);

impl LogId {
    /// A fresh random id.
    pub fn random() -> Result<LogId, getrandom::Error> {
        let mut id = [0u8; LOG_ID_LEN];
        getrandom::fill(&mut id)?;
        Ok(LogId(id))
    }

    /// Parses the 32 hex digits `Display` prints.
    pub fn from_hex(s: &str) -> Option<LogId> {
        let id = disk_format::ids::parse_hex::<LOG_ID_LEN>(s)?;
        // Only the lowercase form is canonical (it names vault objects).
        (hex(&id) == s).then_some(LogId(id))
    }
}

impl std::fmt::Display for LogId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl std::fmt::Debug for LogId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogId({self})")
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    disk_format::ids::hex(bytes)
}

/// What a caller records: the action, the disk it concerns, and details.
///
/// Records are authenticated, **not encrypted**, and are copied to the vault:
/// never put a key, a passphrase or disk contents in `details`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// What happened: lowercase letters, digits, `.`, `_`, `-` (1 to 64),
    /// e.g. `protect`, `cycle.committed`, `cycle.failed`, `prune`, `gc`,
    /// `restore`, `key.use`, `vault.init`.
    pub kind: String,
    /// The disk it concerns, if one.
    pub disk: Option<String>,
    /// Anything else worth keeping, as a JSON object (`null` is taken as `{}`).
    pub details: serde_json::Value,
}

impl Event {
    /// An event of `kind` about `disk` with `details`.
    pub fn new(kind: &str, disk: Option<&str>, details: serde_json::Value) -> Event {
        Event { kind: kind.to_string(), disk: disk.map(str::to_string), details }
    }
}

/// Who wrote a record, and when: filled in by the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// Nanoseconds since the Unix epoch (the host's clock).
    pub time_ns: u64,
    /// The host's name.
    pub host: String,
    /// The effective user id of the writing process.
    pub uid: u32,
    /// That user's name, if `/etc/passwd` has it.
    pub user: Option<String>,
    /// The writing process.
    pub pid: u32,
}

impl Stamp {
    /// This process, now.
    pub fn now() -> Stamp {
        let time_ns = system::clock::now_ns();
        let uid = system::host::effective_uid();
        Stamp {
            time_ns,
            host: system::host::hostname(),
            uid,
            user: system::host::user_name(uid),
            pid: std::process::id(),
        }
    }
}

/// A record's body as stored: one JSON object, fields in this order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Body {
    /// Equal to the header's `seq`.
    pub seq: u64,
    /// RFC 3339 UTC with nanoseconds, for people; `time_ns` is the same instant.
    pub time: String,
    /// Nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// The event kind.
    pub kind: String,
    /// The disk, if the event concerns one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    /// Host name of the writer.
    pub host: String,
    /// Effective uid of the writer.
    pub uid: u32,
    /// User name of the writer, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Process id of the writer.
    pub pid: u32,
    /// The event's details (a JSON object).
    pub details: serde_json::Value,
}

fn check_word(what: &str, s: &str, extra_upper: bool) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && !s.starts_with(['.', '-'])
        && s.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c) || (extra_upper && c.is_ascii_uppercase())
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{what} {s:?} must be 1 to 64 of [a-z0-9._-], not starting with '.' or '-'"))
    }
}

impl Body {
    /// The body of `event` stamped by `stamp`, as record `seq`. Refuses a
    /// bad kind or disk name, or details that are not a JSON object.
    pub fn new(seq: u64, event: &Event, stamp: &Stamp) -> Result<Body, String> {
        check_word("event kind", &event.kind, false)?;
        if let Some(d) = &event.disk {
            check_word("disk name", d, true)?;
        }
        let details = match &event.details {
            serde_json::Value::Null => serde_json::Value::Object(Default::default()),
            v @ serde_json::Value::Object(_) => v.clone(),
            other => return Err(format!("event details must be a JSON object, not {other}")),
        };
        Ok(Body {
            seq,
            time: rfc3339_ns(stamp.time_ns),
            time_ns: stamp.time_ns,
            kind: event.kind.clone(),
            disk: event.disk.clone(),
            host: stamp.host.clone(),
            uid: stamp.uid,
            user: stamp.user.clone(),
            pid: stamp.pid,
            details,
        })
    }
}

/// Formats nanoseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
pub fn rfc3339_ns(ns: u64) -> String {
    disk_format::time::rfc3339(ns, 9)
}

/// Encodes record `seq` of log `log_id` with `body`, chained to `prev_mac`
/// and MAC'd with `keys`' audit subkey. Low level: [`crate::AuditLog::append`]
/// is what writers call.
pub fn encode_record(keys: &Keys, log_id: LogId, seq: u64, prev_mac: &[u8; 32], body: &Body) -> Vec<u8> {
    let json = serde_json::to_vec(body).expect("a Body always serializes");
    encode_raw(keys, log_id, seq, prev_mac, &json)
}

/// [`encode_record`] for body bytes already serialized (tests build odd bodies with it).
#[doc(hidden)]
pub fn encode_raw(keys: &Keys, log_id: LogId, seq: u64, prev_mac: &[u8; 32], json: &[u8]) -> Vec<u8> {
    encode_version(keys, FormatVersion::V2, log_id, seq, prev_mac, json)
}

/// [`encode_raw`] in a given format version (the frozen version 1 fixtures
/// are written with `V1`: the body in the clear).
#[doc(hidden)]
pub fn encode_version(
    keys: &Keys,
    version: FormatVersion,
    log_id: LogId,
    seq: u64,
    prev_mac: &[u8; 32],
    json: &[u8],
) -> Vec<u8> {
    let stored_len = match version {
        FormatVersion::V1 => json.len(),
        FormatVersion::V2 => json.len() + SEAL_OVERHEAD,
    };
    let body_len = u32::try_from(stored_len).expect("bodies are checked against MAX_BODY");
    let record_len = u32::try_from(stored_len + OVERHEAD).expect("bodies are checked against MAX_BODY");
    let mut r = Vec::with_capacity(OVERHEAD + stored_len);
    r.extend_from_slice(&RECORD_MAGIC);
    r.extend_from_slice(&(version as u16).to_le_bytes());
    r.extend_from_slice(&[0; 2]);
    r.extend_from_slice(&body_len.to_le_bytes());
    r.extend_from_slice(&seq.to_le_bytes());
    r.extend_from_slice(keys.fingerprint().as_bytes());
    r.extend_from_slice(&log_id.0);
    r.extend_from_slice(prev_mac);
    debug_assert_eq!(r.len(), HEADER_LEN);
    match version {
        FormatVersion::V1 => r.extend_from_slice(json),
        FormatVersion::V2 => {
            let sealed = keys.seal_audit_body(&r[..HEADER_LEN], json);
            r.extend_from_slice(&sealed);
        }
    }
    r.extend_from_slice(&record_len.to_le_bytes());
    r.extend_from_slice(&[0; 4]);
    let mac = keys.audit_mac(&r);
    r.extend_from_slice(&mac);
    r
}

/// What the first bytes of a record say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Head {
    /// Fewer than 16 bytes, all of them a prefix of a valid header.
    Prefix,
    /// Only zero bytes: space the file system allocated for an append whose
    /// data never reached the disk (a torn tail, not a record).
    Zeros,
    /// A valid header: the record is this many bytes long.
    Len(usize),
    /// Not a record: a bad magic, version, reserved field or length.
    Invalid(String),
}

/// Checks the framing fields of the header at the start of `bytes` (magic,
/// version, reserved, body length); at least 16 bytes are needed to decide.
pub(crate) fn head(bytes: &[u8]) -> Head {
    let have = bytes.len();
    let magic_part = have.min(8);
    if bytes[..magic_part] != RECORD_MAGIC[..magic_part] {
        if bytes.iter().all(|&b| b == 0) {
            return Head::Zeros;
        }
        return Head::Invalid("no record starts here (bad magic)".into());
    }
    if have < 16 {
        return Head::Prefix;
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if FormatVersion::try_from(version).is_err() {
        return Head::Invalid(format!("format version {version} (this Lifeboat reads versions 1 and 2)"));
    }
    if bytes[10..12] != [0, 0] {
        return Head::Invalid("reserved header bytes are not zero".into());
    }
    let body_len = u32_at(bytes, 12) as usize;
    if body_len == 0 || body_len > MAX_BODY {
        return Head::Invalid(format!("body length {body_len} is outside 1..={MAX_BODY}"));
    }
    Head::Len(OVERHEAD + body_len)
}

/// One record as read back: every field, unauthenticated until `mac_ok`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    /// `seq` from the header.
    pub seq: u64,
    /// The key fingerprint from the header.
    pub fingerprint: KeyFingerprint,
    /// The log id from the header.
    pub log_id: LogId,
    /// The chain link from the header.
    pub prev_mac: [u8; 32],
    /// The whole record, as stored.
    pub bytes: Vec<u8>,
    /// The stored MAC.
    pub mac: [u8; 32],
    /// Whether the stored MAC is the MAC of the record under the key it was checked with.
    pub mac_ok: bool,
    /// Total bytes of the record.
    pub len: usize,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Parses the whole record `r` (exactly the length its header gives) and
/// checks its MAC with `keys`. A bad trailer is an error; a bad MAC is not
/// (see `mac_ok`).
pub(crate) fn parse(r: &[u8], keys: &Keys) -> Result<RawRecord, String> {
    match head(r) {
        Head::Len(len) if len == r.len() => {}
        Head::Len(len) => return Err(format!("the header gives {len} bytes, {} are there", r.len())),
        Head::Invalid(d) => return Err(d),
        Head::Prefix | Head::Zeros => return Err("no record starts here".into()),
    }
    let len = r.len();
    let body_len = len - OVERHEAD;
    let record_len = u32_at(r, HEADER_LEN + body_len) as usize;
    if record_len != len {
        return Err(format!("its trailer gives a length of {record_len} bytes, its header {len}"));
    }
    if r[HEADER_LEN + body_len + 4..HEADER_LEN + body_len + 8] != [0; 4] {
        return Err("reserved trailer bytes are not zero".into());
    }
    let mac: [u8; 32] = r[len - 32..].try_into().expect("32 bytes");
    let expected = keys.audit_mac(&r[..len - 32]);
    Ok(RawRecord {
        seq: u64::from_le_bytes(r[16..24].try_into().expect("8 bytes")),
        fingerprint: KeyFingerprint(r[24..40].try_into().expect("16 bytes")),
        log_id: LogId(r[40..56].try_into().expect("16 bytes")),
        prev_mac: r[56..88].try_into().expect("32 bytes"),
        bytes: r.to_vec(),
        mac_ok: blake3::Hash::from(expected) == blake3::Hash::from(mac), // constant time
        mac,
        len,
    })
}

/// What a [`Scanner`] found next.
#[derive(Debug)]
pub(crate) enum Item {
    /// A well-framed record at `offset` (authentic or not: see `mac_ok`).
    Record(u64, RawRecord),
    /// The end of the bytes, right after a whole record (or at 0).
    End,
    /// The bytes end inside a record that starts at `offset`: `bytes` bytes
    /// of a plausible record, or zeros. What a crash mid-append leaves.
    Torn { offset: u64, bytes: u64 },
    /// The bytes at `offset` are not a record, nor a torn one; what follows
    /// cannot be framed.
    Invalid { offset: u64, seq: Option<u64>, detail: String },
}

/// Reads records one after another from a byte stream (a log file, a vault
/// segment) without holding more than one in memory.
pub(crate) struct Scanner<'k, R> {
    r: R,
    keys: &'k Keys,
    offset: u64,
    done: bool,
}

fn read_full<R: std::io::Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl<'k, R: std::io::Read> Scanner<'k, R> {
    /// Scans `r`, whose first byte is at `offset` of the file or object.
    pub(crate) fn new(r: R, keys: &'k Keys, offset: u64) -> Self {
        Scanner { r, keys, offset, done: false }
    }

    /// The next record, or how the bytes end. After anything but a record,
    /// every further call returns [`Item::End`].
    pub(crate) fn next_item(&mut self) -> std::io::Result<Item> {
        if self.done {
            return Ok(Item::End);
        }
        let at = self.offset;
        let mut buf = vec![0u8; 16];
        let n = read_full(&mut self.r, &mut buf)?;
        let item = match head(&buf[..n]) {
            _ if n == 0 => Item::End,
            Head::Prefix => Item::Torn { offset: at, bytes: n as u64 },
            Head::Zeros => {
                let mut rest = Vec::new();
                std::io::Read::read_to_end(&mut self.r, &mut rest)?;
                if rest.iter().all(|&b| b == 0) {
                    Item::Torn { offset: at, bytes: (n + rest.len()) as u64 }
                } else {
                    Item::Invalid { offset: at, seq: None, detail: "zero bytes followed by other data".into() }
                }
            }
            Head::Invalid(detail) => Item::Invalid { offset: at, seq: None, detail },
            Head::Len(len) => {
                buf.resize(len, 0);
                let got = read_full(&mut self.r, &mut buf[16..])?;
                if 16 + got < len {
                    Item::Torn { offset: at, bytes: (16 + got) as u64 }
                } else {
                    match parse(&buf, self.keys) {
                        Ok(rec) => {
                            self.offset += len as u64;
                            return Ok(Item::Record(at, rec));
                        }
                        Err(detail) => {
                            let seq = u64::from_le_bytes(buf[16..24].try_into().expect("8 bytes"));
                            Item::Invalid { offset: at, seq: Some(seq), detail }
                        }
                    }
                }
            }
        };
        self.done = true;
        Ok(item)
    }
}

impl RawRecord {
    /// The body bytes (JSON).
    pub fn body(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..self.len - TRAILER_LEN]
    }
}

/// Decodes an authentic record's body (opening it first in version 2) and
/// checks it against its header.
pub(crate) fn decode_body(raw: &RawRecord, keys: &Keys) -> Result<Body, String> {
    let opened;
    let json = if raw.bytes[8..10] == (FormatVersion::V1 as u16).to_le_bytes() {
        raw.body()
    } else {
        opened = keys
            .open_audit_body(&raw.bytes[..HEADER_LEN], raw.body())
            .ok_or_else(|| "the sealed body does not open under the key".to_string())?;
        &opened[..]
    };
    let body: Body = serde_json::from_slice(json).map_err(|e| format!("the body is not a valid record body: {e}"))?;
    if body.seq != raw.seq {
        return Err(format!("the body says seq {}, the header {}", body.seq, raw.seq));
    }
    if !body.details.is_object() {
        return Err("details is not a JSON object".into());
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use disk_format::MasterKey;

    #[test]
    fn magic_is_derived_from_the_versioned_string() {
        assert_eq!(&blake3::hash(b"lifeboat audit record v1").as_bytes()[..8], &RECORD_MAGIC);
    }

    fn stamp() -> Stamp {
        Stamp { time_ns: 1_795_621_980_123_456_789, host: "h".into(), uid: 0, user: Some("root".into()), pid: 7 }
    }

    #[test]
    fn encode_then_parse() {
        let k = MasterKey::from_bytes([1; 32]).keys();
        let body =
            Body::new(3, &Event::new("prune", Some("web1"), serde_json::json!({"deleted": 2})), &stamp()).unwrap();
        assert_eq!(body.time, "2026-11-25T15:53:00.123456789Z");
        let id = LogId([9; 16]);
        let bytes = encode_record(&k, id, 3, &[5; 32], &body);
        let raw = parse(&bytes, &k).unwrap();
        let mut sc = Scanner::new(&bytes[..], &k, 0);
        assert!(matches!(sc.next_item().unwrap(), Item::Record(0, r) if r == raw));
        assert!(matches!(sc.next_item().unwrap(), Item::End));
        assert!(raw.mac_ok);
        assert_eq!((raw.seq, raw.log_id, raw.prev_mac, raw.len), (3, id, [5; 32], bytes.len()));
        assert_eq!(decode_body(&raw, &k).unwrap(), body);
        // Sealed: nothing of the body is in the clear, and another key cannot open it.
        for text in [&b"prune"[..], b"web1", b"root", b"deleted"] {
            assert!(!bytes.windows(text.len()).any(|w| w == text), "{:?} is in the clear", text);
        }
        let other = MasterKey::from_bytes([2; 32]).keys();
        assert!(decode_body(&raw, &other).is_err());
        // The frozen version 1 (the body in the clear) still decodes.
        let json = serde_json::to_vec(&body).unwrap();
        let v1 = encode_version(&k, FormatVersion::V1, id, 3, &[5; 32], &json);
        assert_eq!(decode_body(&parse(&v1, &k).unwrap(), &k).unwrap(), body);
        assert!(!parse(&bytes, &other).unwrap().mac_ok);
        for cut in [1, 5, 20, 100, bytes.len() - 1] {
            let item = Scanner::new(&bytes[..cut], &k, 10).next_item().unwrap();
            assert!(matches!(item, Item::Torn { offset: 10, bytes } if bytes == cut as u64), "cut at {cut}: {item:?}");
        }
        assert!(matches!(Scanner::new(&[0u8; 300][..], &k, 0).next_item().unwrap(), Item::Torn { bytes: 300, .. }));
        assert!(matches!(Scanner::new(&[1u8; 300][..], &k, 0).next_item().unwrap(), Item::Invalid { .. }));
        let mut zeros_then_data = vec![0u8; 300];
        zeros_then_data[299] = 1;
        assert!(matches!(Scanner::new(&zeros_then_data[..], &k, 0).next_item().unwrap(), Item::Invalid { .. }));
        let mut bad_trailer = bytes.clone();
        let at = bytes.len() - 40;
        bad_trailer[at] ^= 1;
        assert!(matches!(
            Scanner::new(&bad_trailer[..], &k, 0).next_item().unwrap(),
            Item::Invalid { seq: Some(3), .. }
        ));
    }

    #[test]
    fn bad_events_are_refused() {
        let s = stamp();
        assert!(Body::new(1, &Event::new("Protect", None, serde_json::Value::Null), &s).is_err());
        assert!(Body::new(1, &Event::new("", None, serde_json::Value::Null), &s).is_err());
        assert!(Body::new(1, &Event::new("x", Some("a/b"), serde_json::Value::Null), &s).is_err());
        assert!(Body::new(1, &Event::new("x", None, serde_json::json!([1])), &s).is_err());
        let b = Body::new(1, &Event::new("x", Some("Web_1"), serde_json::Value::Null), &s).unwrap();
        assert_eq!(b.details, serde_json::json!({}));
    }

    #[test]
    fn log_ids_print_and_parse() {
        let id = LogId([0xab; 16]);
        assert_eq!(LogId::from_hex(&id.to_string()), Some(id));
        assert_eq!(LogId::from_hex(&id.to_string().to_uppercase()), None);
        assert_eq!(LogId::from_hex("ab"), None);
    }
}
