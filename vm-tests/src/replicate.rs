//! Replication as the end-to-end tests drive it: key files, vaults, `lifeboat
//! ship --once`, `points` and `restore` through the real binary; block writes
//! through the filter with libnbd; a queue-depth-1 writer of numbered records
//! whose history explains (or refuses) a copy of the disk; and the vault
//! directory seen as files, to list, copy and damage.
//!
//! Every command here runs with `LIFEBOAT_KEY_PASSPHRASE` removed from its
//! environment unless the caller sets it, so a passphrase in the developer's
//! shell cannot change what a test sees.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::clients::python_nbd;
use crate::lifeboat::Home;
use crate::process::{assert_ok, wait_for};

/// The environment variable a passphrase-wrapped key file is unlocked with.
pub const PASSPHRASE_ENV: &str = "LIFEBOAT_KEY_PASSPHRASE";

// ---------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------

/// The JSON report of `lifeboat ship NAME --once --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShipReport {
    /// The committed point's id.
    pub sequence: u64,
    /// The whole disk was read (first cycle or verify).
    pub full: bool,
    /// Blocks read from the cut.
    pub blocks_read: u64,
    /// Blocks that were all zero.
    pub zero_blocks: u64,
    /// Blocks the vault already held.
    pub known_blocks: u64,
    /// Blocks sealed and stored.
    pub new_blocks: u64,
    /// Bytes of packs, pages and root written.
    pub bytes_shipped: u64,
    /// Blocks the page cache served (incremental cycles ask it first).
    pub cached_blocks: u64,
    /// Requests the cycle made of the vault, when counted.
    pub requests: Option<u64>,
}

impl ShipReport {
    /// Parses the report, failing unless every field is there and the block
    /// counts add up.
    pub fn parse(stdout: &[u8]) -> ShipReport {
        let text = String::from_utf8_lossy(stdout);
        let v: serde_json::Value = serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("`ship --json` printed invalid JSON ({e}):\n{text}"));
        let num = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("`{k}` missing or not a number in {text}"));
        let r = ShipReport {
            sequence: num("sequence"),
            full: v["full"].as_bool().unwrap_or_else(|| panic!("`full` missing in {text}")),
            blocks_read: num("blocks_read"),
            requests: v["requests"].as_u64(),
            zero_blocks: num("zero_blocks"),
            known_blocks: num("known_blocks"),
            new_blocks: num("new_blocks"),
            bytes_shipped: num("bytes_shipped"),
            cached_blocks: num("cached_blocks"),
        };
        assert!(r.cached_blocks <= r.blocks_read, "more blocks from the cache than read: {text}");
        assert_eq!(
            r.zero_blocks + r.known_blocks + r.new_blocks,
            r.blocks_read,
            "zero + known + new blocks must be the blocks read: {text}"
        );
        r
    }
}

/// One entry of `lifeboat points NAME --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointInfo {
    /// The point id (`--point ID`).
    pub id: u64,
    /// The cut instant as printed (RFC 3339, UTC).
    pub cut_time: String,
    /// The cut instant, nanoseconds since the Unix epoch.
    pub cut_time_ns: u64,
    /// `crash-consistent` or `app-consistent`.
    pub consistency: String,
    /// Disk size at the cut.
    pub disk_size: u64,
    /// The point's root object in the vault: `roots/CHAIN/SEQUENCE`.
    pub root_object: String,
}

impl PointInfo {
    /// Parses the JSON array, failing unless every entry has `id`,
    /// `cut_time`, `cut_time_ns`, `consistency` and `disk_size`.
    pub fn parse_list(stdout: &[u8]) -> Vec<PointInfo> {
        let text = String::from_utf8_lossy(stdout);
        let v: serde_json::Value = serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("`points --json` printed invalid JSON ({e}):\n{text}"));
        let list = v.as_array().unwrap_or_else(|| panic!("`points --json` is not an array: {text}"));
        list.iter()
            .map(|p| {
                let num = |k: &str| p[k].as_u64().unwrap_or_else(|| panic!("`{k}` missing or not a number in {p}"));
                let string = |k: &str| {
                    p[k].as_str().unwrap_or_else(|| panic!("`{k}` missing or not a string in {p}")).to_string()
                };
                PointInfo {
                    id: num("id"),
                    cut_time: string("cut_time"),
                    cut_time_ns: num("cut_time_ns"),
                    consistency: string("consistency"),
                    disk_size: num("disk_size"),
                    root_object: string("root_object"),
                }
            })
            .collect()
    }
}

/// `path` as a command-line argument (test scratch paths are UTF-8).
pub fn arg(path: &Path) -> &str {
    path.to_str().unwrap_or_else(|| panic!("{} is not UTF-8", path.display()))
}

impl Home {
    /// `lifeboat --home DIR ARGS...` with `env` set (an empty value removes
    /// the variable) and `LIFEBOAT_KEY_PASSPHRASE` removed unless `env` sets it.
    pub fn run_env(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        let mut cmd = self.command();
        cmd.env_remove(PASSPHRASE_ENV);
        for (k, v) in env {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        cmd.args(args).output().expect("run lifeboat")
    }

    /// `lifeboat ARGS...` (no passphrase), which must succeed.
    fn run_clean_ok(&self, args: &[&str]) -> Output {
        let o = self.run_env(&[], args);
        assert_ok(&o, &format!("lifeboat {args:?}"));
        o
    }

    /// `lifeboat key new --out OUT`, which must succeed; returns the
    /// fingerprint `lifeboat key show` prints for the new file, after
    /// checking `key new` printed the same.
    pub fn key_new(&self, out: &Path) -> String {
        let o = self.run_clean_ok(&["key", "new", "--out", arg(out)]);
        let fp = self.key_show(out, &[]);
        let said = String::from_utf8_lossy(&o.stdout);
        assert!(said.contains(&fp), "`key new` did not print the fingerprint {fp} that `key show` gives:\n{said}");
        fp
    }

    /// `lifeboat key show KEY` with `env`, which must succeed: the
    /// fingerprint, 32 lowercase hex digits.
    pub fn key_show(&self, key: &Path, env: &[(&str, &str)]) -> String {
        let o = self.run_env(env, &["key", "show", arg(key)]);
        assert_ok(&o, "lifeboat key show");
        let fp = String::from_utf8_lossy(&o.stdout).trim().to_string();
        assert!(
            fp.len() == 32 && fp.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "`key show` printed {fp:?}, not a 32-digit hex fingerprint"
        );
        fp
    }

    /// `lifeboat vault init VAULT --key KEY`, which must succeed.
    pub fn vault_init(&self, vault: &Path, key: &Path) {
        self.run_clean_ok(&["vault", "init", arg(vault), "--key", arg(key)]);
    }

    /// `lifeboat protect NAME --image IMAGE --block-size N KiB --vault VAULT
    /// --key KEY`, which must succeed.
    pub fn protect_replicated(&self, name: &str, image: &Path, block_size: u64, vault: &Path, key: &Path) {
        self.protect_replicated_with(name, image, block_size, vault, key, &[]);
    }

    /// [`Home::protect_replicated`] with more arguments (`--rpo 1s`, ...).
    pub fn protect_replicated_with(
        &self,
        name: &str,
        image: &Path,
        block_size: u64,
        vault: &Path,
        key: &Path,
        extra: &[&str],
    ) {
        let bs = format!("{}KiB", block_size / 1024);
        let mut args =
            vec!["protect", name, "--image", arg(image), "--block-size", &bs, "--vault", arg(vault), "--key", arg(key)];
        args.extend_from_slice(extra);
        self.run_clean_ok(&args);
    }

    /// `lifeboat ship NAME --once --json`, which must succeed; the parsed report.
    pub fn ship(&self, name: &str) -> ShipReport {
        ShipReport::parse(&self.run_clean_ok(&["ship", name, "--once", "--json"]).stdout)
    }

    /// Starts `lifeboat ship NAME --once --json` with stdout and stderr piped,
    /// for a test that kills it.
    pub fn spawn_ship(&self, name: &str) -> Child {
        let mut cmd = self.command();
        cmd.env_remove(PASSPHRASE_ENV)
            .args(["ship", name, "--once", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().expect("spawn lifeboat ship")
    }

    /// `lifeboat points NAME --json` (in the disk's vault), which must
    /// succeed; checks the ids ascend.
    pub fn points(&self, name: &str) -> Vec<PointInfo> {
        let list = PointInfo::parse_list(&self.run_clean_ok(&["points", name, "--json"]).stdout);
        assert!(list.windows(2).all(|w| w[0].id < w[1].id), "`points` lists ids out of order: {list:?}");
        list
    }

    /// The name of point `sequence` of disk `name` in its vault (`CHAIN/` and
    /// 20 digits), as `points --json` gives it: the vault names a disk's
    /// chain by a keyed id, never by its name.
    pub fn root_name(&self, name: &str, sequence: u64) -> String {
        let chain = self.chain(name);
        root_name(&chain, sequence)
    }

    /// The chain disk `name`'s points are stored under (from its newest point).
    pub fn chain(&self, name: &str) -> String {
        let points = self.points(name);
        let newest = points.last().unwrap_or_else(|| panic!("disk {name} has no point: its chain is unknown"));
        let object = newest.root_object.strip_prefix("roots/").expect("roots/CHAIN/SEQUENCE");
        object.split('/').next().expect("CHAIN/SEQUENCE").to_string()
    }

    /// `lifeboat restore NAME --point POINT --out OUT --force` from the
    /// disk's vault with its key, which must succeed; returns the restored
    /// image's bytes.
    pub fn restore(&self, name: &str, point: &str, out: &Path) -> Vec<u8> {
        self.run_clean_ok(&["restore", name, "--point", point, "--out", arg(out), "--force"]);
        fs::read(out).unwrap_or_else(|e| panic!("reading the restored image {}: {e}", out.display()))
    }

    /// `lifeboat snapshot NAME --out OUT --force`, which must succeed;
    /// returns the copy's bytes.
    pub fn snapshot(&self, name: &str, out: &Path) -> Vec<u8> {
        self.run_clean_ok(&["snapshot", name, "--out", arg(out), "--force"]);
        fs::read(out).unwrap_or_else(|e| panic!("reading the snapshot {}: {e}", out.display()))
    }
}

/// Fails unless `out` exited with status 1 and its stderr contains every one
/// of `needles`; returns the stderr. `what` names the command in messages.
pub fn assert_refused(out: &Output, what: &str, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: expected exit status 1, got {}\nstdout:\n{}\nstderr:\n{err}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    for n in needles {
        assert!(err.contains(n), "{what}: the error does not mention {n:?}:\n{err}");
    }
    err
}

// ---------------------------------------------------------------------------
// Disk contents
// ---------------------------------------------------------------------------

/// A 64-bit fingerprint of `bytes` (not cryptographic: it tells a restored
/// image from the expected one without keeping a copy of every point).
pub fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29) ^ (h >> 17);
    }
    for &b in chunks.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The index of the first `bs`-byte block where `a` and `b` differ (or the
/// first past the shorter one), for messages; `None` when they are equal.
pub fn first_difference(a: &[u8], b: &[u8], bs: u64) -> Option<u64> {
    if a == b {
        return None;
    }
    let at = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
    Some(at as u64 / bs)
}

/// Writes each `(offset, bytes)` through the NBD export at `uri` with libnbd
/// (one `pwrite` each, in order, queue depth 1), then disconnects. `dir`
/// holds the data and plan files. Every write must be acknowledged.
pub fn nbd_write(dir: &Path, uri: &str, writes: &[(u64, &[u8])]) {
    const SCRIPT: &str = r#"
import sys, nbd
uri, plan, data = sys.argv[1:4]
h = nbd.NBD()
h.connect_uri(uri)
with open(data, "rb") as f:
    for line in open(plan):
        off, ln = (int(x) for x in line.split())
        h.pwrite(f.read(ln), off)
h.shutdown()
print("ok", flush=True)
"#;
    let script = dir.join("nbd-write.py");
    let plan = dir.join("nbd-write.plan");
    let data = dir.join("nbd-write.data");
    fs::write(&script, SCRIPT).unwrap();
    fs::write(&plan, writes.iter().map(|(off, b)| format!("{off} {}\n", b.len())).collect::<String>()).unwrap();
    fs::write(&data, writes.iter().flat_map(|(_, b)| b.iter().copied()).collect::<Vec<u8>>()).unwrap();
    let out = Command::new(python_nbd()).arg(&script).arg(uri).arg(&plan).arg(&data).output().expect("run python3");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "writing {} blocks through {uri} failed ({}):\n{}",
        writes.len(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// The vault as files
// ---------------------------------------------------------------------------

/// Every regular file under `dir`, by path relative to it: (length,
/// [`fingerprint`] of the contents). Two listings are equal when no file was
/// added, removed or changed.
pub fn tree(dir: &Path) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("listing {}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, (bytes.len() as u64, fingerprint(&bytes)));
            }
        }
    }
    out
}

/// Copies the directory tree `src` to `dst` (which must not exist).
pub fn copy_tree(src: &Path, dst: &Path) {
    fs::create_dir(dst).unwrap_or_else(|e| panic!("creating {}: {e}", dst.display()));
    for e in fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        let to = dst.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_tree(&p, &to);
        } else {
            fs::copy(&p, &to).unwrap_or_else(|e| panic!("copying {}: {e}", p.display()));
        }
    }
}

/// The kinds of object a local vault directory holds, by directory name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object {
    /// `VAULT/packs/xx/NAME`
    Pack,
    /// `VAULT/pages/xx/NAME`
    Page,
    /// `VAULT/roots/DISK/SEQUENCE`
    Root,
}

impl Object {
    fn dir(self) -> &'static str {
        match self {
            Object::Pack => "packs",
            Object::Page => "pages",
            Object::Root => "roots",
        }
    }

    /// The object's name in messages and `vault check` output:
    /// `packs/NAME`, `pages/NAME`, `roots/DISK/SEQUENCE`.
    pub fn label(self, name: &str) -> String {
        format!("{}/{name}", self.dir())
    }

    /// Where object `name` of this kind lives in the vault directory.
    pub fn path(self, vault: &Path, name: &str) -> PathBuf {
        match self {
            Object::Pack | Object::Page => vault.join(self.dir()).join(&name[..2]).join(name),
            Object::Root => vault.join(self.dir()).join(name),
        }
    }

    /// The names of the stored objects of this kind (not `tmp/`): hex ids
    /// for packs and pages, `DISK/SEQUENCE` for roots.
    pub fn list(self, vault: &Path) -> BTreeSet<String> {
        let base = vault.join(self.dir());
        let mut out = BTreeSet::new();
        let Ok(dirs) = fs::read_dir(&base) else { return out };
        for d in dirs {
            let d = d.unwrap().path();
            if !d.is_dir() {
                continue;
            }
            for f in fs::read_dir(&d).unwrap() {
                let f = f.unwrap().path();
                let file = f.file_name().unwrap().to_string_lossy().into_owned();
                out.insert(match self {
                    Object::Root => format!("{}/{file}", d.file_name().unwrap().to_string_lossy()),
                    Object::Pack | Object::Page => file,
                });
            }
        }
        out
    }
}

/// The name of point `sequence` of `disk` in the vault: `DISK/` and 20 digits.
pub fn root_name(disk: &str, sequence: u64) -> String {
    format!("{disk}/{sequence:020}")
}

/// Flips bit `bit` of byte `offset` of the file at `path`, in place.
pub fn flip_bit(path: &Path, offset: u64, bit: u8) {
    let f =
        fs::OpenOptions::new().read(true).write(true).open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap_or_else(|e| panic!("{} byte {offset}: {e}", path.display()));
    b[0] ^= 1 << bit;
    f.write_all_at(&b, offset).unwrap();
}

// ---------------------------------------------------------------------------
// Records: a writer whose history explains every crash-consistent copy
// ---------------------------------------------------------------------------

/// The unit a record is made of, independent of the filter's block size.
pub const SLOT: u64 = 4096;
const SLOT_BYTES: usize = 4096;
const REC_MAGIC: &[u8; 8] = b"LBREC001";
const ORIG_MAGIC: &[u8; 8] = b"LBORIG01";

/// Writes records at queue depth 1 until STOP exists (checked every 16
/// records). In `random` mode a record covers 1 to 3 consecutive slots at a
/// random place; in `sweep` mode one slot each, backwards through the disk
/// (so a copier reading forwards meets the writer). Each slot carries the
/// record's sequence number, its own index and a fill derived from both.
/// Prints "SEQ FIRST N T_ISSUE T_ACK" per acknowledged record
/// (CLOCK_MONOTONIC ns), then "done".
const RECORD_WRITER: &str = r#"
import sys, os, time, struct, random, nbd
uri, slot, nslots, seed, mode, stop = sys.argv[1:7]
slot, nslots, seed = int(slot), int(nslots), int(seed)
rng = random.Random(seed)
h = nbd.NBD()
h.connect_uri(uri)
def record(seq, s):
    head = b"LBREC001" + struct.pack("<QQ", seq, s)
    return head + bytes([(seq * 31 + s * 7) % 251 + 1]) * (slot - len(head))
seq = 0
while True:
    if seq % 16 == 0 and os.path.exists(stop):
        break
    if mode == "sweep":
        n, first = 1, nslots - 1 - seq % nslots
    else:
        n = rng.choice((1, 1, 1, 2, 3))
        first = rng.randrange(0, nslots - n + 1)
    buf = b"".join(record(seq, first + k) for k in range(n))
    t0 = time.monotonic_ns()
    h.pwrite(buf, first * slot)
    t1 = time.monotonic_ns()
    print(seq, first, n, t0, t1, flush=True)
    seq += 1
h.shutdown()
print("done", flush=True)
"#;

/// The content slot `slot` has before any record covers it.
pub fn original_slot(slot: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(SLOT_BYTES);
    v.extend_from_slice(ORIG_MAGIC);
    v.extend_from_slice(&slot.to_le_bytes());
    v.resize(SLOT_BYTES, 0xA5);
    v
}

/// What record `seq` writes into slot `slot`.
fn record(seq: u64, slot: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(SLOT_BYTES);
    v.extend_from_slice(REC_MAGIC);
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&slot.to_le_bytes());
    let fill = u8::try_from((seq * 31 + slot * 7) % 251 + 1).expect("below 252");
    v.resize(SLOT_BYTES, fill);
    v
}

/// One acknowledged record.
#[derive(Debug, Clone, Copy)]
pub struct Rec {
    /// Sequence number, from 0.
    pub seq: u64,
    /// First slot.
    pub first: u64,
    /// Slots covered.
    pub n: u64,
    /// CLOCK_MONOTONIC ns when the write was issued.
    pub t_issue: u64,
    /// CLOCK_MONOTONIC ns when it was acknowledged.
    pub t_ack: u64,
}

/// CLOCK_MONOTONIC in nanoseconds: the clock Python's `time.monotonic_ns()` reads.
pub fn monotonic_ns() -> u64 {
    system::clock::monotonic_ns()
}

/// The record writer (Python on libnbd) running against a filter. Dropping
/// it kills and reaps the process.
pub struct RecordWriter {
    child: Option<Child>,
    recs: Arc<Mutex<Vec<Rec>>>,
    reader: Option<JoinHandle<bool>>,
    stop: PathBuf,
}

/// Where the record writer puts its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOrder {
    /// 1 to 3 slots at a random place each time.
    Random,
    /// One slot each time, backwards through the disk.
    Sweep,
}

impl RecordWriter {
    /// Starts writing records at random places over `nslots` slots of the
    /// export at `uri`; `dir` holds the script and the stop file.
    pub fn spawn(dir: &Path, uri: &str, nslots: u64, seed: u64) -> RecordWriter {
        RecordWriter::spawn_ordered(dir, uri, nslots, seed, WriteOrder::Random)
    }

    /// Like [`RecordWriter::spawn`], in the given order.
    pub fn spawn_ordered(dir: &Path, uri: &str, nslots: u64, seed: u64, order: WriteOrder) -> RecordWriter {
        let mode = match order {
            WriteOrder::Random => "random",
            WriteOrder::Sweep => "sweep",
        };
        let script = dir.join("record-writer.py");
        fs::write(&script, RECORD_WRITER).unwrap();
        let stop = dir.join("record-writer.stop");
        let mut child = Command::new(python_nbd())
            .arg(&script)
            .arg(uri)
            .args([SLOT.to_string(), nslots.to_string(), seed.to_string(), mode.to_string()])
            .arg(&stop)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the record writer");
        let recs: Arc<Mutex<Vec<Rec>>> = Arc::default();
        let sink = Arc::clone(&recs);
        let out = child.stdout.take().unwrap();
        let reader = thread::spawn(move || {
            let mut done = false;
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if line == "done" {
                    done = true;
                    continue;
                }
                let f: Vec<u64> = line.split_whitespace().map(|x| x.parse().expect("writer line")).collect();
                assert_eq!(f.len(), 5, "writer line {line:?}");
                let mut r = sink.lock().unwrap();
                assert_eq!(f[0], r.len() as u64, "writer sequence numbers must be consecutive");
                r.push(Rec { seq: f[0], first: f[1], n: f[2], t_issue: f[3], t_ack: f[4] });
            }
            done
        });
        RecordWriter { child: Some(child), recs, reader: Some(reader), stop }
    }

    /// Records acknowledged so far.
    pub fn acked(&self) -> usize {
        self.recs.lock().unwrap().len()
    }

    /// Waits until `n` records are acknowledged; fails after `limit`.
    pub fn wait_acked(&mut self, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.acked() < n {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the record writer exited ({status}) after {} of {n} records", self.acked());
            }
            assert!(
                Instant::now() < deadline,
                "the writer acknowledged only {} of {n} records in {limit:?}",
                self.acked()
            );
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Stops the writer cleanly and returns every acknowledged record.
    pub fn stop(mut self) -> Vec<Rec> {
        fs::write(&self.stop, b"").unwrap();
        let status = wait_for(self.child.as_mut().unwrap(), Duration::from_secs(60), "the record writer");
        self.child = None;
        assert!(self.reader.take().unwrap().join().expect("reader thread"), "the writer did not finish cleanly");
        assert!(status.success(), "the record writer failed: {status}");
        self.recs.lock().unwrap().clone()
    }
}

impl Drop for RecordWriter {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The records' history, slot by slot: what explains a crash-consistent copy.
pub struct History {
    /// Every acknowledged record.
    pub recs: Vec<Rec>,
    per_slot: Vec<Vec<u64>>,
}

/// What one slot of a copy holds.
#[derive(Debug, PartialEq)]
enum Content {
    Original,
    Record(u64),
}

impl History {
    /// Indexes `recs` over `nslots` slots.
    pub fn new(recs: Vec<Rec>, nslots: u64) -> History {
        let mut per_slot: Vec<Vec<u64>> = vec![Vec::new(); usize::try_from(nslots).expect("fits")];
        for r in &recs {
            for k in r.first..r.first + r.n {
                per_slot[usize::try_from(k).expect("fits")].push(r.seq);
            }
        }
        History { recs, per_slot }
    }

    /// The disk before any record: every slot's original content.
    pub fn original_image(nslots: u64) -> Vec<u8> {
        (0..nslots).flat_map(original_slot).collect()
    }

    fn decode(copy: &[u8], slot: u64, what: &str) -> Content {
        let at = usize::try_from(slot * SLOT).expect("fits");
        let bytes = &copy[at..at + SLOT_BYTES];
        if bytes == original_slot(slot).as_slice() {
            return Content::Original;
        }
        if &bytes[..8] == REC_MAGIC {
            let seq = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
            let at = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
            assert_eq!(at, slot, "{what}: slot {slot} holds record {seq}'s data for slot {at}");
            assert!(bytes == record(seq, slot).as_slice(), "{what}: slot {slot} holds a torn copy of record {seq}");
            return Content::Record(seq);
        }
        panic!("{what}: slot {slot} holds neither its original content nor a record: {:02x?}", &bytes[..32]);
    }

    /// The range of cuts K that explain `copy` — every slot holds the last
    /// record with seq <= K that covered it, or its original content — or a
    /// failure naming the slots that disagree. K = -1 is "before the first
    /// record".
    pub fn explain(&self, copy: &[u8], what: &str) -> (i64, i64) {
        assert_eq!(copy.len() as u64, self.per_slot.len() as u64 * SLOT, "{what}: size");
        let (mut lo, mut hi) = (-1i64, i64::MAX);
        let (mut lo_by, mut hi_by) = (None, None);
        let k = |seq: u64| i64::try_from(seq).expect("fits");
        for (slot, writes) in self.per_slot.iter().enumerate() {
            match Self::decode(copy, slot as u64, what) {
                Content::Original => {
                    if let Some(&first) = writes.first() {
                        if k(first) - 1 < hi {
                            hi = k(first) - 1;
                            hi_by = Some((slot, "original content"));
                        }
                    }
                }
                Content::Record(seq) => {
                    let at = writes
                        .binary_search(&seq)
                        .unwrap_or_else(|_| panic!("{what}: slot {slot} holds record {seq}, which never covered it"));
                    if k(seq) > lo {
                        lo = k(seq);
                        lo_by = Some(slot);
                    }
                    if let Some(&next) = writes.get(at + 1) {
                        if k(next) - 1 < hi {
                            hi = k(next) - 1;
                            hi_by = Some((slot, "a record overwritten later"));
                        }
                    }
                }
            }
        }
        assert!(
            lo <= hi,
            "{what} is not crash-consistent: slot {lo_by:?} holds record {lo}, but slot {hi_by:?} shows nothing \
             after record {hi} had been written"
        );
        (lo, hi)
    }

    /// What the clock says about a cut taken between `t_start` and `t_end`
    /// (CLOCK_MONOTONIC ns): records acknowledged before `t_start` are in
    /// (the first value is the last of them), records issued after `t_end`
    /// are out (the second value is the first of them).
    pub fn clock_bounds(&self, t_start: u64, t_end: u64) -> (i64, i64) {
        let k = |seq: u64| i64::try_from(seq).expect("fits");
        let must_in = self.recs.iter().filter(|r| r.t_ack < t_start).map(|r| k(r.seq)).max().unwrap_or(-1);
        let must_out = self.recs.iter().filter(|r| r.t_issue > t_end).map(|r| k(r.seq)).min().unwrap_or(i64::MAX);
        (must_in, must_out)
    }
}
