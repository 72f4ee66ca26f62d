//! Issue 12, hole 5: a broken stderr must never take the data path down
//! (DESIGN.md, invariant 9).
//!
//! `lifeboat filter` and `lifeboat agent` run with stderr at `/dev/full`
//! (every write fails with ENOSPC), at a pipe whose read end was closed
//! before they started, and at a pipe whose reader exits once they are
//! ready (every write fails with EPIPE; Rust ignores SIGPIPE).
//! Each must still serve NBD — also new connections after lines were logged
//! (every connection logs two) — run a cycle that commits a point restoring
//! to what was written, stop on SIGTERM with exit status 0 and leave its
//! state file closed; the lines it could not log are counted in the disk's
//! status (`log_lines_dropped`). Before the fix, the first failed log line
//! panicked the thread that wrote it: the main thread (exit 101, state file
//! left open), or, once the reader had gone, every NBD connection thread
//! (each new connection dropped) and the signal thread (SIGTERM ignored).
//!
//! Readiness is the NBD socket appearing (nothing can be read from a broken
//! log; the reader that exits reads up to the ready line); qemu-io's
//! connection then waits in the listen backlog until the server accepts it.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vm_tests::clients::{nbd_uri, qemu_io};
use vm_tests::lifeboat::{unix_listen, Home, Scratch};
use vm_tests::process::wait_timeout;
use vm_tests::replicate::PointInfo;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Where the daemon's stderr goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stderr {
    /// `/dev/full`: every write fails with ENOSPC.
    DevFull,
    /// A pipe whose read end is already closed: every write fails with EPIPE.
    ClosedPipe,
    /// A pipe whose reader reads up to the daemon's ready line, then exits
    /// (a log collector that dies): every later write fails with EPIPE.
    ReaderExits,
}

/// The pipe (read end, write end), close-on-exec.
fn pipe() -> (OwnedFd, OwnedFd) {
    let (r, w) = std::io::pipe().expect("pipe");
    (r.into(), w.into())
}

impl Stderr {
    /// The child's stderr, and the read end the test keeps for a while.
    fn stdio(self) -> (Stdio, Option<OwnedFd>) {
        match self {
            Stderr::DevFull => {
                (Stdio::from(fs::OpenOptions::new().write(true).open("/dev/full").expect("open /dev/full")), None)
            }
            Stderr::ClosedPipe => (Stdio::from(pipe().1), None),
            Stderr::ReaderExits => {
                let (read, write) = pipe();
                (Stdio::from(write), Some(read))
            }
        }
    }
}

/// A `lifeboat filter` or `agent` child, SIGKILLed and reaped if the test fails.
struct Daemon {
    child: Option<Child>,
    what: String,
}

impl Daemon {
    /// Starts `lifeboat ARGS...` with `stderr`; for [`Stderr::ReaderExits`],
    /// reads its log until a line containing `ready`, then closes the pipe.
    fn spawn(home: &Home, args: &[&str], stderr: Stderr, ready: &str) -> Daemon {
        let mut cmd: Command = home.command();
        let (stdio, reader) = stderr.stdio();
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(stdio);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        drop(cmd); // our copy of the pipe's write end: the reader sees EOF if the child dies
        let daemon = Daemon { child: Some(child), what: format!("lifeboat {} (stderr {stderr:?})", args.join(" ")) };
        if let Some(reader) = reader {
            let mut log = String::new();
            for line in BufReader::new(fs::File::from(reader)).lines() {
                let line = line.expect("reading the daemon's stderr");
                log.push_str(&line);
                log.push('\n');
                if line.contains(ready) {
                    return daemon; // the read end closes here
                }
            }
            panic!("{} closed stderr before logging {ready:?}:\n{log}", daemon.what);
        }
        daemon
    }

    /// Fails if the process has exited.
    fn assert_running(&mut self, when: &str) {
        if let Some(status) = self.child.as_mut().expect("running").try_wait().unwrap() {
            panic!("{} exited with {status} {when}", self.what);
        }
    }

    /// Waits (polling, up to `limit`) until `ready` holds, failing if the
    /// process exits first.
    fn wait_until(&mut self, what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        self.assert_running(&format!("while waiting for {what}"));
        while !ready() {
            assert!(Instant::now() < deadline, "{}: {what} did not happen within {limit:?}", self.what);
            std::thread::sleep(Duration::from_millis(50));
            self.assert_running(&format!("while waiting for {what}"));
        }
    }

    /// SIGTERM, and the exit status within 30 s.
    fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // Our own child, not yet reaped, so the pid still names it.
        system::process::signal(child.id(), libc::SIGTERM).expect("SIGTERM to our own child");
        wait_timeout(&mut child, Duration::from_secs(30)).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} did not exit within 30 s of SIGTERM", self.what)
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

use system::clock::now_ns;

/// A scratch home with a key, a vault and disk `d` (4 MiB of zeros, 64 KiB
/// blocks, RPO 1 s) protected; the image's path.
fn protected(s: &Scratch) -> PathBuf {
    let (key, vault, image) = (s.path("k.key"), s.path("vault"), s.path("d.img"));
    fs::write(&image, vec![0u8; usize::try_from(4 * MIB).unwrap()]).unwrap();
    s.home.key_new(&key);
    s.home.vault_init(&vault, &key);
    s.home.protect_replicated_with("d", &image, 64 * 1024, &vault, &key, &["--rpo", "1s"]);
    image
}

/// `lifeboat dirty d --json`.
fn dirty(home: &Home) -> Value {
    serde_json::from_slice(&home.run_ok(&["dirty", "d", "--json"]).stdout).unwrap()
}

/// `lifeboat status d --json`: the disk's object.
fn status(home: &Home) -> Value {
    let out = home.run(&["status", "d", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("status --json: {e}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    v[0].clone()
}

/// After the daemon stopped: its state file is closed and trusted, it
/// counted the lines it could not log, and `point` restores with the
/// first 128 KiB of `pattern` then zeros.
fn check_after_stop(s: &Scratch, point: u64, pattern: u8) {
    let d = dirty(&s.home);
    assert_eq!((&d["open"], &d["suspect"]), (&Value::Bool(false), &Value::Bool(false)), "after SIGTERM: {d}");
    let st = status(&s.home);
    assert!(st["log_lines_dropped"].as_u64().is_some_and(|n| n > 0), "the lost log lines are not counted: {st}");
    let restored = s.home.restore("d", &point.to_string(), &s.path("restored.img"));
    assert_eq!(restored.len() as u64, 4 * MIB);
    assert!(
        restored[..usize::try_from(128 * KIB).unwrap()].iter().all(|&b| b == pattern),
        "point {point} lacks the write"
    );
    assert!(
        restored[usize::try_from(128 * KIB).unwrap()..].iter().all(|&b| b == 0),
        "point {point} has data past the write"
    );
}

fn filter_serves_ships_and_stops(stderr: Stderr) {
    let s = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-stderr-");
    protected(&s);
    let sock = s.path("nbd.sock");
    let listen = unix_listen(&sock);
    let mut filter = Daemon::spawn(&s.home, &["filter", "d", "--listen", &listen], stderr, "listening on");
    filter.wait_until("the NBD socket", Duration::from_secs(30), || sock.exists());
    let uri = nbd_uri("d", &sock);

    qemu_io(&uri, &["write -P 0xa5 0 128k"]);
    let shipped = s.home.ship("d");
    // The first cycle reads the whole disk: all zero but the two written blocks.
    assert_eq!((shipped.blocks_read, shipped.zero_blocks), (64, 62), "{shipped:?}");
    // A new connection after both the first one and the cycle were logged.
    qemu_io(&uri, &["read -P 0xa5 0 128k", "write -P 0x5a 1M 64k"]);
    filter.assert_running("after serving two connections and a cycle");
    let d = dirty(&s.home);
    assert_eq!((&d["open"], &d["dirty_blocks"]), (&Value::Bool(true), &serde_json::json!([16])), "{d}");

    let status = filter.terminate();
    assert!(status.success(), "lifeboat filter exited with {status} after SIGTERM (stderr {stderr:?})");
    assert_eq!(dirty(&s.home)["dirty_blocks"], serde_json::json!([16]), "the unshipped write stays dirty");
    check_after_stop(&s, shipped.sequence, 0xa5);
}

fn agent_serves_cycles_and_stops(stderr: Stderr) {
    let s = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-stderr-");
    protected(&s);
    let sock = s.home.dir.join("disks/d/nbd.sock");
    let mut agent = Daemon::spawn(&s.home, &["agent"], stderr, "d: serving on");
    agent.wait_until("the NBD socket", Duration::from_secs(30), || sock.exists());
    let uri = nbd_uri("d", &sock);

    qemu_io(&uri, &["write -P 0xa5 0 128k"]);
    let written = now_ns();
    let mut points = Vec::new();
    agent.wait_until("a point cut after the write", Duration::from_secs(60), || {
        points = PointInfo::parse_list(&s.home.run_ok(&["points", "d", "--json"]).stdout);
        points.last().is_some_and(|p| p.cut_time_ns > written)
    });
    let point = points.last().unwrap().id;
    // A new connection after the first one and the cycles were logged; it
    // only reads, so the point above stays the disk's contents.
    qemu_io(&uri, &["read -P 0xa5 0 128k", "read -P 0 128k 1m"]);
    let st = status(&s.home);
    assert_eq!((&st["agent"]["running"], &st["state"]), (&Value::Bool(true), &Value::from("ok")), "{st}");

    let status = agent.terminate();
    assert!(status.success(), "lifeboat agent exited with {status} after SIGTERM (stderr {stderr:?})");
    assert_eq!(self::status(&s.home)["agent"]["running"], false);
    check_after_stop(&s, point, 0xa5);
}

#[test]
fn filter_with_stderr_at_dev_full_serves_ships_and_stops_cleanly() {
    filter_serves_ships_and_stops(Stderr::DevFull);
}

#[test]
fn filter_with_stderr_a_closed_pipe_serves_ships_and_stops_cleanly() {
    filter_serves_ships_and_stops(Stderr::ClosedPipe);
}

#[test]
fn agent_with_stderr_at_dev_full_serves_cycles_and_stops_cleanly() {
    agent_serves_cycles_and_stops(Stderr::DevFull);
}

#[test]
fn agent_with_stderr_a_closed_pipe_serves_cycles_and_stops_cleanly() {
    agent_serves_cycles_and_stops(Stderr::ClosedPipe);
}

#[test]
fn filter_whose_stderr_reader_exits_serves_ships_and_stops_cleanly() {
    filter_serves_ships_and_stops(Stderr::ReaderExits);
}

#[test]
fn agent_whose_stderr_reader_exits_serves_cycles_and_stops_cleanly() {
    agent_serves_cycles_and_stops(Stderr::ReaderExits);
}

/// Commands that are not daemons print with `println!`-like calls: a stdout
/// that fails must give an exit code and a message, not a panic (exit 101).
/// The reader of a pipe that stops reading (`lifeboat points | head -1`)
/// gets the command's own exit code and no noise; a full stdout is an error.
#[test]
fn commands_with_a_broken_stdout_exit_with_a_code_not_a_panic() {
    let s = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-stdout-");
    protected(&s);
    s.home.ship("d");

    let full = fs::OpenOptions::new().write(true).open("/dev/full").expect("open /dev/full");
    let out = s.home.command().args(["points", "d"]).stdout(full).output().expect("run lifeboat points");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "`points >/dev/full` exited with {}: {err}", out.status);
    assert!(
        err.contains("writing the output to stdout failed") && err.contains("No space left on device"),
        "`points >/dev/full` does not say what failed: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    for args in [&["points", "d"][..], &["status", "d"], &["dirty", "d", "--json"]] {
        let out = s.home.command().args(args).stdout(pipe().1).output().expect("run lifeboat");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(0),
            "`lifeboat {args:?}` into a closed pipe exited with {}: {err}",
            out.status
        );
        assert!(err.is_empty(), "`lifeboat {args:?}` into a closed pipe printed on stderr: {err}");
    }
}
