//! Interoperability of the real `lifeboat filter` process with real NBD clients.
//!
//! Every test here starts the `lifeboat` binary built by cargo, serves a fresh
//! image through it on a unix socket, and drives it with the clients QEMU users
//! actually run: `qemu-io` (QEMU's own NBD client), `nbdinfo` and `nbdcopy`
//! (libnbd). After the clients are done the test checks three things:
//!
//! * the clients saw their own data (`qemu-io read -P`, `nbdcopy` out),
//! * the image file on disk holds exactly what was written, and nothing else
//!   changed,
//! * `lifeboat dirty NAME --json` marks exactly the blocks the writes touched,
//!   computed here from each request's offset, length and the block size.
//!
//! A missing client tool fails the test with "run scripts/setup.sh": these
//! tests never skip.

// Test code for 64-bit hosts: offsets and sizes fit usize; pattern bytes are reduced mod 251.
#![allow(clippy::cast_possible_truncation)]

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

// ---------------------------------------------------------------------------
// Support: the lifeboat binary, a scratch home, the filter child process.
// (Each test file in cli/tests carries its own copy: they are separate crates.)
// ---------------------------------------------------------------------------

const BIN: &str = env!("CARGO_BIN_EXE_lifeboat");
const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// Path of a client tool, or a failure that says how to install it.
fn tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = ["/usr/bin", "/usr/sbin", "/bin", "/sbin"].iter().map(PathBuf::from).collect();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not installed: run scripts/setup.sh"))
}

/// A scratch directory holding the lifeboat home, images and sockets.
/// Kept short (under /tmp) because unix socket paths are limited to 107 bytes.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::Builder::new().prefix("lb-interop-").tempdir().expect("temp dir");
        Scratch { dir }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn home(&self) -> PathBuf {
        self.path("home")
    }
    /// Runs `lifeboat --home HOME ARGS...` and returns its output.
    fn lifeboat(&self, args: &[&str]) -> Output {
        Command::new(BIN).arg("--home").arg(self.home()).args(args).output().expect("run lifeboat")
    }
    /// `lifeboat protect NAME --image IMG --block-size BS`, which must succeed.
    fn protect(&self, name: &str, image: &Path, block_size: u64) {
        let bs = format!("{}KiB", block_size / KIB);
        let out = self.lifeboat(&["protect", name, "--image", image.to_str().unwrap(), "--block-size", &bs]);
        assert_ok(&out, "lifeboat protect");
    }
    /// `lifeboat dirty NAME --json`, parsed.
    fn dirty(&self, name: &str) -> Dirty {
        let out = self.lifeboat(&["dirty", name, "--json"]);
        assert_ok(&out, "lifeboat dirty --json");
        Dirty::parse(&out.stdout)
    }
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The JSON document `lifeboat dirty --json` prints.
#[derive(Debug)]
struct Dirty {
    block_size: u64,
    disk_size: u64,
    dirty_count: u64,
    dirty_blocks: BTreeSet<u64>,
    suspect: bool,
}

impl Dirty {
    fn parse(stdout: &[u8]) -> Dirty {
        let text = String::from_utf8_lossy(stdout);
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("`dirty --json` printed invalid JSON ({e}):\n{text}"));
        let num = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("`{k}` missing or not a number in {text}"));
        let blocks: Vec<u64> = v["dirty_blocks"]
            .as_array()
            .unwrap_or_else(|| panic!("`dirty_blocks` missing in {text}"))
            .iter()
            .map(|b| b.as_u64().expect("block index"))
            .collect();
        let set: BTreeSet<u64> = blocks.iter().copied().collect();
        assert_eq!(set.len(), blocks.len(), "dirty_blocks lists a block twice: {text}");
        let d = Dirty {
            block_size: num("block_size"),
            disk_size: num("disk_size"),
            dirty_count: num("dirty_count"),
            dirty_blocks: set,
            suspect: v["suspect"].as_bool().unwrap_or_else(|| panic!("`suspect` missing in {text}")),
        };
        assert_eq!(d.dirty_count, d.dirty_blocks.len() as u64, "dirty_count disagrees with dirty_blocks: {text}");
        d
    }
}

/// A running `lifeboat filter` child. Dropping it kills it (SIGKILL) and
/// reaps it, so a failing test leaves no server behind.
struct Filter {
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
}

impl Filter {
    /// Starts `lifeboat filter NAME --listen unix:SOCK [--listen EXTRA...]` and
    /// waits (up to 30 s) for its "filter NAME listening on unix:SOCK [EXTRA...]" line.
    fn start(scratch: &Scratch, name: &str, sock: &Path, extra: &[String]) -> Filter {
        let listen = format!("unix:{}", sock.display());
        let mut cmd = Command::new(BIN);
        cmd.arg("--home").arg(scratch.home()).args(["filter", name, "--listen", &listen]);
        for e in extra {
            cmd.args(["--listen", e]);
        }
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn filter");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        {
            let pipe = child.stderr.take().unwrap();
            let log = Arc::clone(&stderr);
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push_str(&line);
                    log.lock().unwrap().push('\n');
                    let _ = tx.send(line);
                }
            });
        }
        // One line names every listener: "filter NAME listening on unix:PATH [tcp:HOST:PORT ...]".
        let prefix = format!("filter {name} listening on ");
        let mut want: Vec<&str> = vec![&listen];
        want.extend(extra.iter().map(String::as_str));
        want.sort_unstable();
        let is_ready = |line: &str| {
            line.strip_prefix(&prefix).is_some_and(|rest| {
                let mut got: Vec<&str> = rest.split_whitespace().collect();
                got.sort_unstable();
                got == want
            })
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut filter = Filter { child: Some(child), stderr };
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if is_ready(&line) => return filter,
                Ok(_) => {}
                Err(_) => {
                    if let Some(status) = filter.child.as_mut().unwrap().try_wait().unwrap() {
                        panic!("lifeboat filter exited with {status} before it was ready:\n{}", filter.log());
                    }
                    if Instant::now() > deadline {
                        panic!("lifeboat filter did not print \"{prefix}{want:?}\" within 30 s:\n{}", filter.log());
                    }
                }
            }
        }
    }
    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
    fn pid(&self) -> i32 {
        self.child.as_ref().expect("filter running").id() as i32
    }
    /// SIGTERM, then wait up to 30 s for the exit status.
    fn terminate(&mut self) -> ExitStatus {
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet
        // (we hold its `Child`), so the pid cannot have been reused.
        let rc = unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        assert_eq!(rc, 0, "kill -TERM filter");
        self.wait(Duration::from_secs(30))
    }
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().expect("filter running");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                // Let the stderr thread drain the last lines.
                thread::sleep(Duration::from_millis(50));
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                panic!("lifeboat filter did not exit within {limit:?}:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
    /// SIGTERM and require a clean exit (status 0).
    fn stop(mut self) {
        let status = self.terminate();
        assert!(status.success(), "filter exited with {status} after SIGTERM:\n{}", self.log());
    }
}

impl Drop for Filter {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), so a failing run can be replayed.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Block indexes a request [off, off+len) touches.
fn blocks_of(off: u64, len: u64, bs: u64) -> std::ops::RangeInclusive<u64> {
    assert!(len > 0);
    (off / bs)..=((off + len - 1) / bs)
}

fn nbd_uri(export: &str, sock: &Path) -> String {
    format!("nbd+unix:///{export}?socket={}", sock.display())
}

/// Runs qemu-io against an NBD URI with the given `-c` commands; every command
/// must succeed (qemu-io exits 1 when a `read -P` pattern does not match).
fn qemu_io(uri: &str, cmds: &[String]) -> String {
    let mut cmd = Command::new(tool("qemu-io"));
    cmd.args(["-f", "raw", uri]);
    for c in cmds {
        cmd.args(["-c", c]);
    }
    let out = cmd.output().expect("run qemu-io");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !stdout.contains("failed"),
        "qemu-io {uri} {cmds:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// One client request in the qemu-io test.
#[derive(Clone, Copy)]
enum Op {
    /// `write -P byte off len`
    Write(u8),
    /// `write -z off len` (NBD_CMD_WRITE_ZEROES)
    Zero,
    /// `discard off len` (NBD_CMD_TRIM): contents afterwards are unspecified
    Trim,
}

#[test]
fn qemu_io_writes_read_back_and_dirty_marks_exactly_the_touched_blocks() {
    let s = Scratch::new();
    let bs = 64 * KIB;
    // Not a multiple of the block size: the last block (index 80) is 20 KiB long.
    let size = 5 * MIB + 20 * KIB;
    let last = size / bs;
    let original = pseudo_random(size as usize, 1);
    let image = s.path("disk.img");
    fs::write(&image, &original).unwrap();
    s.protect("vm1", &image, bs);

    let fresh = s.dirty("vm1");
    assert_eq!((fresh.block_size, fresh.disk_size), (bs, size), "geometry after protect");
    assert!(fresh.dirty_blocks.is_empty(), "a freshly protected disk has dirty blocks: {fresh:?}");
    assert!(!fresh.suspect, "a freshly protected disk is suspect");

    let sock = s.path("f.sock");
    let filter = Filter::start(&s, "vm1", &sock, &[]);

    // (offset, length, op): unaligned, spanning, tiny, and at the disk's very end.
    // The pattern writes do not overlap each other, so each reads back whole.
    let ops: Vec<(u64, u64, Op)> = vec![
        (0, 4096, Op::Write(0x11)),                // aligned, first block
        (bs - 100, 300, Op::Write(0x22)),          // spans blocks 0 and 1
        (2 * bs + 3, 1, Op::Write(0x33)),          // one byte, unaligned
        (3 * bs + 7, 2 * bs + 5, Op::Write(0x44)), // spans blocks 3, 4, 5
        (last * bs - 10, 30, Op::Write(0x55)),     // into the short last block
        (size - 4096 - 7, 4096, Op::Write(0x66)),  // near the end
        (size - 7, 7, Op::Write(0x77)),            // the very last bytes
        (40 * bs + 512, 8192, Op::Zero),           // WRITE_ZEROES inside block 40
        (44 * bs + 4096, bs, Op::Zero),            // WRITE_ZEROES spanning 44/45
        (50 * bs, bs, Op::Trim),                   // TRIM of block 50
        (60 * bs - 512, 1024, Op::Trim),           // TRIM spanning 59/60
    ];
    let named = nbd_uri("vm1", &sock);
    let default = nbd_uri("", &sock);

    // Half of the requests go to the named export, half to the default one.
    for (i, (off, len, op)) in ops.iter().enumerate() {
        let c = match op {
            Op::Write(p) => format!("write -P {p} {off} {len}"),
            Op::Zero => format!("write -z {off} {len}"),
            Op::Trim => format!("discard {off} {len}"),
        };
        qemu_io(if i % 2 == 0 { &named } else { &default }, &[c]);
    }
    // Read everything back through both exports, in one qemu-io session each.
    let reads: Vec<String> = ops
        .iter()
        .filter_map(|(off, len, op)| match op {
            Op::Write(p) => Some(format!("read -P {p} {off} {len}")),
            Op::Zero => Some(format!("read -P 0 {off} {len}")),
            Op::Trim => None,
        })
        .collect();
    qemu_io(&named, &reads);
    qemu_io(&default, &reads);

    let expected: BTreeSet<u64> = ops.iter().flat_map(|&(off, len, _)| blocks_of(off, len, bs)).collect();
    assert!(expected.contains(&last) && expected.contains(&0));
    let live = s.dirty("vm1");
    assert_eq!(live.dirty_blocks, expected, "dirty blocks while the filter runs");
    assert!(!live.suspect);
    assert_eq!((live.block_size, live.disk_size), (bs, size));

    filter.stop();
    let after = s.dirty("vm1");
    assert_eq!(after.dirty_blocks, expected, "dirty blocks after a clean stop");
    assert!(!after.suspect, "a cleanly stopped filter left the state suspect");

    // The image holds exactly the writes; bytes nobody wrote are unchanged.
    let got = fs::read(&image).unwrap();
    assert_eq!(got.len() as u64, size, "the image changed size");
    let mut want = original.clone();
    let mut trimmed = vec![false; size as usize];
    for &(off, len, op) in &ops {
        let r = off as usize..(off + len) as usize;
        match op {
            Op::Write(p) => want[r].fill(p),
            Op::Zero => want[r].fill(0),
            Op::Trim => trimmed[r].fill(true),
        }
    }
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        // A trimmed byte may read as its old value or as zero.
        let ok = g == w || (trimmed[i] && g == 0);
        assert!(ok, "image byte {i} (block {}) is {g:#04x}, expected {w:#04x}", i as u64 / bs);
    }
}

#[test]
fn nbdinfo_reports_size_block_sizes_and_flags_for_both_exports_and_tcp() {
    let s = Scratch::new();
    let size = 3 * MIB + 4 * KIB;
    let image = s.path("disk.img");
    fs::write(&image, pseudo_random(size as usize, 2)).unwrap();
    s.protect("info", &image, 4 * KIB);
    let sock = s.path("i.sock");
    // A free TCP port on loopback for the second listener.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let filter = Filter::start(&s, "info", &sock, &[format!("tcp:127.0.0.1:{port}")]);

    let nbdinfo = tool("nbdinfo");
    let uris = [nbd_uri("info", &sock), nbd_uri("", &sock), format!("nbd://127.0.0.1:{port}/info")];
    for uri in &uris {
        let out = Command::new(&nbdinfo).args(["--json", uri]).output().expect("run nbdinfo");
        assert_ok(&out, &format!("nbdinfo --json {uri}"));
        let v: Value = serde_json::from_slice(&out.stdout).expect("nbdinfo JSON");
        let e = &v["exports"][0];
        assert_eq!(e["export-size"].as_u64(), Some(size), "{uri}: size\n{e:#}");
        assert_eq!(e["is_read_only"].as_bool(), Some(false), "{uri}: read-only\n{e:#}");
        for flag in ["can_flush", "can_fua", "can_trim", "can_zero"] {
            assert_eq!(e[flag].as_bool(), Some(true), "{uri}: {flag}\n{e:#}");
        }
        let min = e["block_size_minimum"].as_u64().unwrap_or_else(|| panic!("{uri}: no block size info\n{e:#}"));
        let pref = e["block_size_preferred"].as_u64().expect("preferred block size");
        let max = e["block_size_maximum"].as_u64().expect("maximum block size");
        assert!(min.is_power_of_two() && min <= 4096, "{uri}: minimum block size {min}");
        assert!(pref.is_power_of_two() && pref >= min && pref <= max, "{uri}: preferred block size {pref}");
        assert!(max >= 64 * KIB && max.is_multiple_of(min), "{uri}: maximum block size {max}");
        assert_eq!(v["protocol"].as_str(), Some("newstyle-fixed"), "{uri}: protocol");
    }

    // NBD_OPT_LIST names the disk's export.
    let out = Command::new(&nbdinfo).args(["--list", "--json", &nbd_uri("", &sock)]).output().unwrap();
    assert_ok(&out, "nbdinfo --list");
    let v: Value = serde_json::from_slice(&out.stdout).expect("nbdinfo --list JSON");
    let names: Vec<&str> =
        v["exports"].as_array().expect("exports").iter().filter_map(|e| e["export-name"].as_str()).collect();
    assert!(names.contains(&"info"), "NBD_OPT_LIST does not name the export: {names:?}");

    // An unknown export name is refused, and the server keeps serving.
    let out = Command::new(&nbdinfo).arg(nbd_uri("no-such-disk", &sock)).output().unwrap();
    assert!(!out.status.success(), "nbdinfo on an unknown export succeeded");
    let out = Command::new(&nbdinfo).args(["--size", &nbd_uri("info", &sock)]).output().unwrap();
    assert_ok(&out, "nbdinfo --size after a refused export");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), size.to_string());

    // nbdinfo only reads: nothing is dirty.
    assert!(s.dirty("info").dirty_blocks.is_empty(), "reads dirtied blocks");
    filter.stop();
}

#[test]
fn nbdcopy_in_and_out_is_byte_for_byte_and_dirties_every_block() {
    let s = Scratch::new();
    let bs = 64 * KIB;
    let size = 24 * MIB + 12 * KIB; // last block is partial
    let image = s.path("disk.img");
    fs::write(&image, pseudo_random(size as usize, 3)).unwrap();
    s.protect("copy", &image, bs);

    // The source: random data with a 2 MiB hole in the middle, which nbdcopy
    // sends as zero requests rather than data.
    let source = s.path("source.bin");
    let mut data = pseudo_random(size as usize, 4);
    let hole = (8 * MIB) as usize..(10 * MIB) as usize;
    data[hole.clone()].fill(0);
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::File::create(&source).unwrap();
        f.write_all(&data[..hole.start]).unwrap();
        f.seek(SeekFrom::Start(hole.end as u64)).unwrap();
        f.write_all(&data[hole.end..]).unwrap();
    }

    let sock = s.path("c.sock");
    let filter = Filter::start(&s, "copy", &sock, &[]);
    let nbdcopy = tool("nbdcopy");
    let out = Command::new(&nbdcopy).arg(&source).arg(nbd_uri("copy", &sock)).output().unwrap();
    assert_ok(&out, "nbdcopy file -> filter");

    let back = s.path("back.bin");
    let out = Command::new(&nbdcopy).arg(nbd_uri("", &sock)).arg(&back).output().unwrap();
    assert_ok(&out, "nbdcopy filter -> file");
    let got = fs::read(&back).unwrap();
    assert_eq!(got.len(), data.len(), "nbdcopy out: wrong length");
    if let Some(i) = got.iter().zip(&data).position(|(a, b)| a != b) {
        panic!("nbdcopy out differs from what nbdcopy wrote in, first at byte {i}");
    }

    let all: BTreeSet<u64> = (0..size.div_ceil(bs)).collect();
    assert_eq!(s.dirty("copy").dirty_blocks, all, "every block was written: all must be dirty");
    filter.stop();

    let img = fs::read(&image).unwrap();
    assert!(img == data, "the image file differs from the source after a clean stop");
    let after = s.dirty("copy");
    assert_eq!(after.dirty_blocks, all);
    assert!(!after.suspect);
}
