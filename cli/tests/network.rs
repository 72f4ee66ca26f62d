//! Network exposure of the NBD server (issue 12, hole 7), through the real
//! binary, real sockets and the real NBD clients:
//!
//! * A TCP listen address that is not loopback (`0.0.0.0`, `::`) is refused
//!   by `protect`, `filter` and the agent (also when disk.toml was edited by
//!   hand), with a message that says why and what to do; `--insecure-tcp`
//!   is recorded in disk.toml and the agent then serves there with a loud
//!   warning at every start.
//! * A client that connects and says nothing is dropped after the
//!   (shortened) handshake timeout, while an established client that was
//!   quiet longer than that still reads and writes.
//! * Past `--max-connections` a new connection is closed at once (EOF before
//!   the greeting), the refusals are logged rate-limited, and the
//!   established clients still work.
//! * An idle established connection costs the server one thread: its
//!   workers start only when requests need them.
//! * With the open-files limit at 256 (soft and hard, set in the agent's
//!   `pre_exec`) and 300 idle connections, the replication cycle still
//!   commits and other clients are served: through the per-disk cap with the
//!   defaults, and through the file-descriptor reserve when the cap is
//!   raised past the limit.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vm_tests::clients::{nbd_uri, qemu_io};
use vm_tests::lifeboat::{unix_listen, Filter, Scratch};
use vm_tests::paths::tool;
use vm_tests::process::wait_timeout;
use vm_tests::pseudo_random;
use vm_tests::replicate::arg;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

fn scratch() -> Scratch {
    Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-net-")
}

/// A scratch home with disk `name` protected on a fresh 4 MiB image.
fn protected(s: &Scratch, name: &str) -> PathBuf {
    let image = s.path(&format!("{name}.img"));
    fs::write(&image, pseudo_random(4 * MIB, 7)).unwrap();
    s.home.protect(name, &image, 64 * 1024);
    image
}

// The NBD wire constants a minimal client needs (fixed newstyle).
const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const NBD_OPT_EXPORT_NAME: u32 = 1;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// A raw NBD client on a unix socket: just enough of the protocol to hold a
/// connection open at a chosen stage, which no packaged client does.
struct Client {
    s: UnixStream,
}

impl Client {
    /// Connects; every later read fails after 30 s instead of hanging the test.
    fn connect(sock: &Path) -> Client {
        let s = UnixStream::connect(sock).unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Client { s }
    }

    /// Reads the server's greeting: `Ok(true)` if it came, `Ok(false)` if the
    /// server closed the connection without one.
    fn greeting(&mut self) -> std::io::Result<bool> {
        let mut g = [0u8; 18];
        match self.s.read_exact(&mut g) {
            Ok(()) => {
                assert_eq!(u64::from_be_bytes(g[..8].try_into().unwrap()), NBDMAGIC, "greeting magic");
                assert_eq!(u64::from_be_bytes(g[8..16].try_into().unwrap()), IHAVEOPT, "newstyle greeting");
                Ok(true)
            }
            Err(e) if matches!(e.kind(), ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The whole handshake (NBD_OPT_EXPORT_NAME of the default export),
    /// ending in the transmission phase; returns the export size.
    fn establish(sock: &Path) -> Client {
        let mut c = Client::connect(sock);
        assert!(c.greeting().expect("greeting"), "the server closed a connection under the cap");
        let mut out = Vec::new();
        out.extend_from_slice(&3u32.to_be_bytes()); // FIXED_NEWSTYLE | NO_ZEROES
        out.extend_from_slice(&IHAVEOPT.to_be_bytes());
        out.extend_from_slice(&NBD_OPT_EXPORT_NAME.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        c.s.write_all(&out).unwrap();
        let mut reply = [0u8; 10];
        c.s.read_exact(&mut reply).expect("NBD_OPT_EXPORT_NAME reply");
        assert_eq!(u64::from_be_bytes(reply[..8].try_into().unwrap()), 4 * MIB as u64, "export size");
        c
    }

    fn request(&mut self, kind: u16, cookie: u64, offset: u64, len: usize, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&cookie.to_be_bytes());
        out.extend_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
        out.extend_from_slice(data);
        self.s.write_all(&out).unwrap();
        let mut hdr = [0u8; 16];
        self.s.read_exact(&mut hdr).expect("reply header");
        assert_eq!(u32::from_be_bytes(hdr[..4].try_into().unwrap()), SIMPLE_REPLY_MAGIC, "reply magic");
        assert_eq!(u32::from_be_bytes(hdr[4..8].try_into().unwrap()), 0, "reply error");
        assert_eq!(u64::from_be_bytes(hdr[8..].try_into().unwrap()), cookie, "reply cookie");
        let mut buf = vec![0u8; if kind == 0 { len } else { 0 }];
        self.s.read_exact(&mut buf).expect("read data");
        buf
    }

    /// Writes `data` at `offset` and reads it back through this connection.
    fn write_and_read_back(&mut self, offset: u64, data: &[u8]) {
        self.request(1, 1, offset, data.len(), data);
        let got = self.request(0, 2, offset, data.len(), &[]);
        assert!(got == data, "read back through the established connection differs from what it wrote");
    }

    /// Whether the server has closed this connection: a read returns EOF
    /// (or a reset), within the 30 s read timeout.
    fn wait_closed(&mut self) -> Result<(), String> {
        let mut b = [0u8; 1];
        match self.s.read(&mut b) {
            Ok(0) => Ok(()),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(()),
            Ok(_) => Err("the server sent data".into()),
            Err(e) => Err(format!("still open: {e}")),
        }
    }
}

/// The `lifeboat` exit status and stderr of `args`.
fn run_err(s: &Scratch, args: &[&str]) -> (bool, String) {
    let out = s.home.run(args);
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn non_loopback_tcp_is_refused_unless_insecure_tcp_is_given() {
    let s = scratch();
    let image = protected(&s, "d");
    let conf = s.home.dir.join("disks/d/disk.toml");

    for exposed in ["tcp:0.0.0.0:0", "tcp:[::]:0"] {
        let (ok, err) = run_err(&s, &["protect", "d", "--image", arg(&image), "--listen", exposed]);
        assert!(!ok, "protect accepted {exposed} without --insecure-tcp");
        for needle in ["not a loopback address", "no authentication", "ssh -L", "--insecure-tcp"] {
            assert!(err.contains(needle), "protect --listen {exposed}: no {needle:?} in:\n{err}");
        }
        assert!(!fs::read_to_string(&conf).unwrap().contains("0:0"), "the refused address reached disk.toml");

        let mut f = s.home.spawn_filter("d", &[exposed.to_string()]);
        let status = f.wait(Duration::from_secs(30));
        assert!(!status.success(), "lifeboat filter served on {exposed} without --insecure-tcp:\n{}", f.log());
        let log = f.log();
        assert!(log.contains("refusing to listen") && log.contains("--insecure-tcp"), "filter {exposed}:\n{log}");
    }
    // A host name is resolved: localhost is loopback.
    s.home.run_ok(&["protect", "d", "--image", arg(&image), "--listen", "tcp:localhost:0"]);

    // disk.toml edited by hand: the agent refuses the address too.
    let text = fs::read_to_string(&conf).unwrap().replace("tcp:localhost:0", "tcp:0.0.0.0:0");
    fs::write(&conf, text).unwrap();
    let mut agent = s.home.spawn_with(&["agent"], |_| {});
    let status = agent.wait(Duration::from_secs(30));
    let log = agent.log();
    assert!(!status.success() && log.contains("refusing to serve it on tcp:0.0.0.0:0"), "agent:\n{log}");

    // With --insecure-tcp: recorded, served, and a warning at every start.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("tcp:0.0.0.0:{port}");
    s.home.run_ok(&["protect", "d", "--image", arg(&image), "--listen", &listen, "--insecure-tcp"]);
    let text = fs::read_to_string(&conf).unwrap();
    assert!(text.contains("insecure_tcp = true") && text.contains(&listen), "disk.toml:\n{text}");
    let agent = s.home.agent(&[], &["d"]);
    let log = agent.log();
    assert!(
        log.contains(&format!("WARNING: disk d is served on tcp:0.0.0.0:{port}")) && log.contains("no authentication"),
        "no warning for the exposed address:\n{log}"
    );
    let out = Command::new(tool("nbdinfo")).arg(format!("nbd://127.0.0.1:{port}/d")).output().unwrap();
    assert!(out.status.success(), "nbdinfo on the accepted address: {}", String::from_utf8_lossy(&out.stderr));
    agent.stop();
    let f = s.home.filter_on_insecure("d", &listen);
    assert!(f.log().contains("WARNING: disk d is served on tcp:0.0.0.0:"), "filter --insecure-tcp:\n{}", f.log());
    f.stop();

    // Moving back to loopback without the flag drops it from disk.toml.
    s.home.run_ok(&["protect", "d", "--image", arg(&image), "--listen", "tcp:127.0.0.1:0"]);
    assert!(!fs::read_to_string(&conf).unwrap().contains("insecure_tcp"), "insecure_tcp kept after a loopback listen");
}

/// `lifeboat filter NAME --listen L --insecure-tcp`, waited for.
trait FilterInsecure {
    fn filter_on_insecure(&self, name: &str, listen: &str) -> Filter;
}

impl FilterInsecure for vm_tests::lifeboat::Home {
    fn filter_on_insecure(&self, name: &str, listen: &str) -> Filter {
        let mut f = self.spawn_with(&["filter", name, "--listen", listen, "--insecure-tcp"], |_| {});
        f.wait_line(&format!("filter {name} listening on"), Duration::from_secs(30));
        f
    }
}

/// Starts `lifeboat filter NAME --listen unix:SOCK EXTRA...` and waits until it listens.
fn filter(s: &Scratch, name: &str, sock: &Path, extra: &[&str]) -> Filter {
    let listen = unix_listen(sock);
    let mut args = vec!["filter", name, "--listen", &listen];
    args.extend_from_slice(extra);
    let mut f = s.home.spawn_with(&args, |_| {});
    f.wait_line(&format!("filter {name} listening on"), Duration::from_secs(30));
    f
}

#[test]
fn a_client_silent_in_the_handshake_is_dropped_but_a_quiet_established_one_is_not() {
    let s = scratch();
    protected(&s, "d");
    let sock = s.path("d.sock");
    let mut f = filter(&s, "d", &sock, &["--handshake-timeout", "1s"]);

    let mut established = Client::establish(&sock);
    let mut silent = Client::connect(&sock);
    let started = Instant::now();
    assert!(silent.greeting().unwrap(), "no greeting");
    // It says nothing more: the server must hang up on it.
    if let Err(e) = silent.wait_closed() {
        panic!("a client silent in the handshake was not dropped within 30 s ({e}):\n{}", f.log());
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "dropped after {took:?}, before the 1 s handshake timeout");
    assert!(took < Duration::from_secs(9), "dropped after {took:?}: the 1 s timeout was not applied");
    f.wait_line("did not finish the handshake within 1 s", Duration::from_secs(10));

    // The established client has been quiet for longer than the timeout: the
    // transmission phase is not timed.
    established.write_and_read_back(64 * 1024, &pseudo_random(4 * KIB, 3));
    f.stop();
}

#[test]
fn connections_past_the_cap_are_closed_at_once_and_established_clients_still_work() {
    let s = scratch();
    protected(&s, "d");
    let sock = s.path("d.sock");
    let mut f = filter(&s, "d", &sock, &["--max-connections", "4"]);

    let mut clients: Vec<Client> = (0..4).map(|_| Client::establish(&sock)).collect();
    for i in 0..50 {
        let mut c = Client::connect(&sock);
        let started = Instant::now();
        let greeted = c.greeting().unwrap_or_else(|e| panic!("connection {i} past the cap: {e}\n{}", f.log()));
        assert!(!greeted, "connection {i} past the cap of 4 got a greeting instead of being closed:\n{}", f.log());
        assert!(started.elapsed() < Duration::from_secs(5), "connection {i} past the cap was not closed at once");
    }
    let line = f.wait_line("refused", Duration::from_secs(10));
    assert!(line.contains("limit of 4 open connections"), "{line}");
    let refusal_lines = f.log().lines().filter(|l| l.contains("refused")).count();
    assert!(refusal_lines <= 2, "50 refusals logged in {refusal_lines} lines, not rate-limited:\n{}", f.log());

    for (i, c) in clients.iter_mut().enumerate() {
        c.write_and_read_back(i as u64 * 64 * 1024, &pseudo_random(4 * KIB, i as u64));
    }
    // A slot freed is a slot for a new client (its thread ends shortly
    // after the client leaves: poll for it, with a deadline).
    drop(clients.pop());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new(tool("nbdinfo")).arg(nbd_uri("d", &sock)).output().unwrap();
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "nbdinfo never got the freed slot:\n{}", f.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    f.stop();
}

/// The `Threads:` line of /proc/PID/status.
fn threads(pid: u32) -> usize {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Threads:")).expect("Threads: in /proc/PID/status");
    line["Threads:".len()..].trim().parse().unwrap()
}

#[test]
fn idle_established_connections_cost_one_thread_each() {
    let s = scratch();
    protected(&s, "d");
    let sock = s.path("d.sock");
    let f = filter(&s, "d", &sock, &["--max-connections", "100"]);
    let before = threads(f.pid());
    let mut clients: Vec<Client> = (0..40).map(|_| Client::establish(&sock)).collect();
    // Each client's reply to a request proves its connection's thread has
    // passed the handshake (and would have started its workers by then).
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_and_read_back(i as u64 * 4096, &pseudo_random(4 * KIB, i as u64));
    }
    let busy = threads(f.pid());
    // Idle from here on: a new connection that only handshakes adds one thread.
    let idle: Vec<Client> = (0..40).map(|_| Client::establish(&sock)).collect();
    let after = threads(f.pid());
    assert!(
        after - busy <= 40,
        "40 idle connections added {} threads (from {busy} to {after}; {before} before any client): idle clients \
         must cost their reader thread only",
        after - busy
    );
    drop((clients, idle));
    f.stop();
}

/// The agent, with the open-files limit at `limit` (soft and hard, so it
/// cannot raise it), serving every disk of the home.
fn agent_with_nofile(s: &Scratch, limit: u64, extra: &[&str], names: &[&str]) -> Filter {
    let mut args = vec!["agent"];
    args.extend_from_slice(extra);
    let mut agent = s.home.spawn_with(&args, |cmd| system::limits::limit_child_open_files(cmd, limit));
    for name in names {
        agent.wait_line(&format!("{name}: serving on "), Duration::from_secs(30));
    }
    agent
}

/// Waits for the next cycle of `name` to end and fails unless it committed.
fn next_cycle_commits(agent: &mut Filter, name: &str) -> String {
    loop {
        // "lifeboat agent: a: point 3 committed ..." or "lifeboat agent: error: a: cycle failed: ..."
        let line = agent.wait_line(&format!(" {name}: "), Duration::from_secs(120));
        if line.contains("committed") {
            return line;
        }
        assert!(!line.contains("cycle failed"), "a cycle failed under the connection flood: {line}\n{}", agent.log());
    }
}

/// A home with disk `a` replicated every second and disk `b` served only.
fn two_disks(s: &Scratch) -> (PathBuf, PathBuf) {
    let (key, vault) = (s.path("k.key"), s.path("vault"));
    s.home.key_new(&key);
    s.home.vault_init(&vault, &key);
    let image_a = s.path("a.img");
    fs::write(&image_a, pseudo_random(4 * MIB, 1)).unwrap();
    s.home.protect_replicated_with("a", &image_a, 64 * 1024, &vault, &key, &["--rpo", "1s"]);
    protected(s, "b");
    (s.home.dir.join("disks/a/nbd.sock"), s.home.dir.join("disks/b/nbd.sock"))
}

/// What a flood of connections left behind.
struct Flood {
    /// Connections that finished the handshake and stay idle.
    kept: Vec<Client>,
    /// Connections that got neither a greeting nor EOF within a second: the
    /// server stopped accepting (they wait in the listen backlog).
    stalled: Vec<Client>,
}

/// Opens `n` connections to `sock` that finish the handshake and then stay
/// idle. Refused ones should be closed at once; see [`Flood`].
fn idle_flood(sock: &Path, n: usize) -> Flood {
    let mut flood = Flood { kept: Vec::new(), stalled: Vec::new() };
    for _ in 0..n {
        let mut c = Client::connect(sock);
        c.s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        match c.greeting() {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                flood.stalled.push(c);
                continue;
            }
            Err(e) => panic!("a connection of the flood failed: {e}"),
        }
        let mut out = Vec::new();
        out.extend_from_slice(&3u32.to_be_bytes());
        out.extend_from_slice(&IHAVEOPT.to_be_bytes());
        out.extend_from_slice(&NBD_OPT_EXPORT_NAME.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        c.s.write_all(&out).unwrap();
        let mut reply = [0u8; 10];
        c.s.read_exact(&mut reply).expect("handshake of an idle client");
        flood.kept.push(c);
    }
    flood
}

/// nbdinfo on `uri`, which must answer within 30 s.
fn nbdinfo_answers(uri: &str, agent: &Filter) {
    let mut child = Command::new(tool("nbdinfo"))
        .arg(uri)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run nbdinfo");
    let status = wait_timeout(&mut child, Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "nbdinfo {uri}: {status:?}\n{}", agent.log());
}

#[test]
fn three_hundred_idle_connections_under_a_256_file_limit_leave_the_cycle_and_other_clients_working() {
    let s = scratch();
    let (sock_a, sock_b) = two_disks(&s);
    let mut agent = agent_with_nofile(&s, 256, &[], &["a", "b"]);
    next_cycle_commits(&mut agent, "a");

    let flood = idle_flood(&sock_b, 300);
    // The cycle commits, and the other disk is served.
    next_cycle_commits(&mut agent, "a");
    qemu_io(&nbd_uri("a", &sock_a), &["write -P 0x5a 0 64k"]);
    nbdinfo_answers(&nbd_uri("a", &sock_a), &agent);
    let line = next_cycle_commits(&mut agent, "a");
    assert!(line.contains("incremental"), "{line}");
    assert!(flood.stalled.is_empty(), "{} connections were left queued instead of refused", flood.stalled.len());
    let kept = flood.kept.len();
    assert_eq!(kept, 16, "disk b kept {kept} of 300 idle connections, not the default cap of 16");
    // (logged before the cycles above; wait_line has read past it)
    assert!(agent.log().contains("limit of 16 open connections"), "no refusal logged:\n{}", agent.log());
    drop(flood);
    agent.stop();
}

#[test]
fn past_a_raised_cap_the_file_descriptor_reserve_keeps_the_cycle_working() {
    let s = scratch();
    let (sock_a, sock_b) = two_disks(&s);
    let mut agent = agent_with_nofile(&s, 256, &["--max-connections", "1000"], &["a", "b"]);
    next_cycle_commits(&mut agent, "a");

    let flood = idle_flood(&sock_b, 300);
    // A cycle opens what it needs from the reserve.
    next_cycle_commits(&mut agent, "a");
    qemu_io_refused_or_ok(&sock_a);
    next_cycle_commits(&mut agent, "a");
    assert!(flood.stalled.is_empty(), "{} connections were left queued instead of refused", flood.stalled.len());
    let kept = flood.kept.len();
    assert!(kept < 256 - 64, "disk b kept {kept} idle connections: no file descriptors reserved");
    assert!(kept > 100, "disk b kept only {kept} idle connections: the reserve is far too large");
    // (logged before the cycles above; wait_line has read past it)
    assert!(agent.log().contains("file descriptors are left"), "no refusal logged:\n{}", agent.log());
    drop(flood);
    // Once the idle clients are gone, other clients are served again.
    nbdinfo_eventually(&nbd_uri("a", &sock_a), &agent);
    agent.stop();
}

/// While the reserve is reached a new client is closed at once, not queued:
/// qemu-io fails fast instead of hanging.
fn qemu_io_refused_or_ok(sock: &Path) {
    let started = Instant::now();
    let mut child = Command::new(tool("qemu-io"))
        .args(["-f", "raw", &nbd_uri("a", sock), "-c", "read 0 4k"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run qemu-io");
    let status = wait_timeout(&mut child, Duration::from_secs(30));
    assert!(status.is_some(), "qemu-io hung at the file-descriptor reserve instead of being refused");
    assert!(started.elapsed() < Duration::from_secs(20), "qemu-io took {:?}", started.elapsed());
}

/// nbdinfo answers once the server has closed the connections that left.
fn nbdinfo_eventually(uri: &str, agent: &Filter) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new(tool("nbdinfo")).arg(uri).output().unwrap();
        if out.status.success() {
            return;
        }
        assert!(Instant::now() < deadline, "nbdinfo {uri} never answered after the flood ended:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}
