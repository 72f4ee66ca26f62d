//! More faults between a protected host and its vault server (issue 14,
//! point 4), with real processes: a link that stalls mid-pack (no reset, no
//! byte moving), a long partition under a running agent, and a full disk at
//! the recovery site. Traffic goes through a fault-injecting proxy; every
//! wait is on an event (bytes crossed, a log line, a process exit), never a
//! sleep. After every fault: the failed cycle keeps its changes dirty, no
//! partial point is listed, the next cycle commits and restores byte for
//! byte, and the site's scrub finds nothing wrong.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use vm_tests::clients::nbd_uri;
use vm_tests::fault_proxy::{Fault, FaultProxy};
use vm_tests::lifeboat::{Home, Scratch};
use vm_tests::replicate::{nbd_write, ShipReport};
use vm_tests::site::{free_port, Site};
use vm_tests::Rng;

const MIB: usize = 1 << 20;
const BIN: &str = env!("CARGO_BIN_EXE_lifeboat");
/// The host's vault-server timeout in these tests, in seconds.
const TIMEOUT: u64 = 2;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn arg(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 test path")
}

/// A site whose server the host reaches only through a fault proxy, a
/// protected disk `d1` of `disk` bytes replicated there with its first
/// point shipped. The vault directory is `vault_dir` (made if missing).
struct World {
    /// Unmounted first (fields drop in order), before the scratch goes.
    _tmpfs: Option<Tmpfs>,
    s: Scratch,
    site: Site,
    proxy: FaultProxy,
    host: Home,
    vault_dir: PathBuf,
    key: PathBuf,
    image: PathBuf,
    url: String,
    disk: usize,
    rng: Rng,
}

impl World {
    fn new(s: Scratch, tmpfs: Option<Tmpfs>, vault_dir: PathBuf, disk: usize, rpo: &str) -> World {
        let port = free_port();
        let proxy = FaultProxy::start(([127, 0, 0, 1], port).into()).unwrap();
        let mut site = Site::init_on(Path::new(BIN), s.dir(), port, &[proxy.addr().port()]);
        fs::create_dir_all(&vault_dir).unwrap();
        site.serve(&[("main", &vault_dir)]);
        let host = Home::new(BIN, s.path("host-home"));
        site.join("web1", &["main"], &host);
        let key = s.path("k.key");
        host.run_ok(&["key", "new", "--out", arg(&key)]);
        let url = format!("lifeboat://127.0.0.1:{}/main", proxy.addr().port());
        host.run_ok(&["vault", "init", &url, "--key", arg(&key)]);
        let image = s.path("disk.img");
        let mut rng = Rng::new(43);
        fs::write(&image, rng.bytes(disk)).unwrap();
        host.run_ok(&[
            "protect",
            "d1",
            "--image",
            arg(&image),
            "--vault",
            &url,
            "--key",
            arg(&key),
            "--block-size",
            "64KiB",
            "--rpo",
            rpo,
        ]);
        World { _tmpfs: tmpfs, s, site, proxy, host, vault_dir, key, image, url, disk, rng }
    }

    /// `lifeboat ARGS` on the host with the short vault-server timeout.
    fn host_cmd(&self, args: &[&str]) -> Command {
        let mut c = self.host.command();
        let _ = c.args(args).env("LIFEBOAT_VAULT_TIMEOUT", TIMEOUT.to_string());
        c
    }

    /// `blocks` scattered 64 KiB blocks of new data, as NBD writes.
    fn plan(&mut self, blocks: u64) -> Vec<(u64, Vec<u8>)> {
        let n = self.disk as u64 / 65536;
        (0..blocks).map(|i| ((i * 7 + self.rng.below(5)) % n * 65536, self.rng.bytes(65536))).collect()
    }

    /// Writes `blocks` blocks through a filter of its own.
    fn write(&mut self, blocks: u64) {
        let data = self.plan(blocks);
        let sock = self.s.path("d1.sock");
        let filter = self.host.filter("d1", &sock);
        nbd_write(self.s.dir(), &nbd_uri("d1", &sock), &as_plan(&data));
        filter.stop();
    }

    fn points(&self) -> Vec<u64> {
        let out = self.host.run(&["points", "d1", "--json"]);
        assert!(out.status.success(), "points: {}\nserver log:\n{}", stderr(&out), self.site.log().join("\n"));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array().unwrap().iter().map(|p| p["id"].as_u64().unwrap()).collect()
    }

    fn dirty(&self) -> usize {
        self.host.dirty("d1").dirty_blocks.len()
    }

    /// The newest point is the disk, byte for byte.
    fn verify(&self, what: &str) {
        let out = self.s.path("restored.raw");
        self.host.run_ok(&["restore", "d1", "--out", arg(&out), "--force"]);
        assert!(fs::read(&out).unwrap() == fs::read(&self.image).unwrap(), "{what}: the newest point differs");
    }

    /// The next cycle commits and restores byte for byte.
    fn ship_and_verify(&self, what: &str) -> u64 {
        let o = self.host.run(&["ship", "d1", "--once", "--json"]);
        assert!(o.status.success(), "{what}: the cycle after the fault failed: {}", stderr(&o));
        self.verify(what);
        assert_eq!(self.dirty(), 0, "{what}: dirty blocks left after a committed cycle");
        ShipReport::parse(&o.stdout).sequence
    }

    /// The site's scrub of the vault, by path, with the key.
    fn scrub(&self) {
        let o =
            self.site.home.run_ok(&["vault", "check", arg(&self.vault_dir), "--read-data", "--key", arg(&self.key)]);
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("no problem"), "{text}");
    }

    /// Lines of the server's log containing `text`.
    fn log_count(&self, text: &str) -> usize {
        self.site.log().iter().filter(|l| l.contains(text)).count()
    }
}

fn as_plan(data: &[(u64, Vec<u8>)]) -> Vec<(u64, &[u8])> {
    data.iter().map(|(at, d)| (*at, d.as_slice())).collect()
}

/// A failed cycle: exit 1, its changes still dirty, no new point.
fn assert_failed_cleanly(w: &World, o: &Output, points_before: &[u64], dirty_before: usize, what: &str) {
    assert_eq!(o.status.code(), Some(1), "{what}: {}", stderr(o));
    assert!(stderr(o).contains("stay marked dirty"), "{what}: {}", stderr(o));
    assert_eq!(w.points(), points_before, "{what}: a point was listed for a failed cycle");
    assert!(w.dirty() >= dirty_before, "{what}: dirty bits lost ({} < {dirty_before})", w.dirty());
}

/// A world whose link dies (no reset, nothing moves either way) once 512
/// KiB of a cycle have gone up: mid-pack, since the pack is ~3 MiB. Runs
/// `ship d1 --once` as `ship` makes it, and returns the world, the
/// command's output, the time from the stall to its exit, and the points
/// and dirty count from before.
fn stall_mid_pack(prefix: &str, ship: impl FnOnce(&World) -> Command) -> (World, Output, Duration, Vec<u64>, usize) {
    let s = Scratch::new(BIN, prefix);
    let vault = s.path("vaults/main");
    let mut w = World::new(s, None, vault, 16 * MIB, "1h");
    w.ship_and_verify("first point");
    w.write(48);
    let (points, dirty) = (w.points(), w.dirty());
    w.proxy.set(Fault::StallAfterUp(512 << 10));
    let up = w.proxy.up();
    let child = ship(&w).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    assert!(w.proxy.wait_up(up + (512 << 10), Duration::from_secs(60)), "the pack never started");
    let stalled = Instant::now();
    let o = child.wait_with_output().unwrap();
    let took = stalled.elapsed();
    assert_eq!(w.proxy.up(), up + (512 << 10), "bytes crossed a stalled link");
    (w, o, took, points, dirty)
}

#[test]
fn a_link_stalled_mid_pack_fails_the_cycle_within_the_timeout_and_the_next_commits() {
    let (w, o, took, points, dirty) = stall_mid_pack("lb-site-stall-", |w| w.host_cmd(&["ship", "d1", "--once"]));
    // Without the progress timeout this would take minutes (HTTP/2
    // keep-alive of 30 s + 30 s, then TCP's own retries).
    assert!(took < Duration::from_secs(3 * TIMEOUT + 8), "a stalled link held the cycle for {took:?}");
    let err = stderr(&o);
    assert!(err.contains(&w.url), "the error names the server: {err}");
    assert!(err.contains("check the network path to the site"), "the error says what to do: {err}");
    w.proxy.set(Fault::None);
    assert_failed_cleanly(&w, &o, &points, dirty, "stalled");
    w.ship_and_verify("after the stall");
    w.scrub();
}

/// The same stall with the default timeout (no `LIFEBOAT_VAULT_TIMEOUT`),
/// to hold the README's word: "a dead link fails a cycle within about three
/// minutes" (measured 180 s: the stalled upload, then a read the cycle
/// retries on a new connection and its last request over the dead link each
/// wait out the 60 s). In the full pass (`#[ignore]`): it waits out the
/// real timeout.
#[test]
#[ignore = "waits out the default 60 s vault-server timeout: run with --full"]
fn a_link_stalled_mid_pack_fails_the_cycle_within_three_minutes_by_default() {
    let (w, o, took, points, dirty) = stall_mid_pack("lb-site-stall-default-", |w| {
        let mut cmd = w.host.command();
        let _ = cmd.args(["ship", "d1", "--once"]).env_remove("LIFEBOAT_VAULT_TIMEOUT");
        cmd
    });
    eprintln!("a stalled link failed the cycle after {took:?} with the default timeout");
    assert!(took >= Duration::from_secs(55), "the default timeout is 60 s, yet the cycle failed after {took:?}");
    assert!(took < Duration::from_secs(200), "a stalled link held the cycle for {took:?}, not about three minutes");
    let err = stderr(&o);
    assert!(err.contains("check the network path to the site"), "the error says what to do: {err}");
    w.proxy.set(Fault::None);
    assert_failed_cleanly(&w, &o, &points, dirty, "stalled, default timeout");
    w.ship_and_verify("after the stall");
}

#[test]
fn a_long_partition_fails_each_agent_cycle_and_the_first_after_it_commits() {
    let s = Scratch::new(BIN, "lb-site-partition-");
    let vault = s.path("vaults/main");
    let mut w = World::new(s, None, vault, 8 * MIB, "1s");
    let mut agent = w.host.spawn_with(&["agent"], |c| {
        let _ = c.env("LIFEBOAT_VAULT_TIMEOUT", TIMEOUT.to_string());
    });
    agent.wait_line("d1: point 1 committed", Duration::from_secs(60));
    // The partition: every new connection is closed at once, and the open
    // one is cut.
    w.proxy.set(Fault::Refuse);
    w.proxy.reset_all();
    // Writes during the partition, through the agent's own NBD export.
    let data = w.plan(16);
    let sock = w.s.path("host-home/disks/d1/nbd.sock");
    nbd_write(w.s.dir(), &nbd_uri("d1", &sock), &as_plan(&data));
    for cycle in 0..3 {
        let line = agent.wait_line("d1: cycle failed", Duration::from_secs(60));
        assert!(line.contains("127.0.0.1"), "cycle {cycle}: the failure names the server: {line}");
        // A link cut during the handshake is not called "not a vault server".
        assert!(!line.contains("not a Lifeboat vault server"), "cycle {cycle}: misleading cause: {line}");
    }
    let st = w.host.run(&["status", "d1", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v[0]["state"], "failing", "{v}");
    assert!(v[0]["consecutive_failures"].as_u64().unwrap() >= 3, "{v}");
    assert!(agent.running(), "the agent exited during the partition:\n{}", agent.log());
    // Healed: the first cycle after it commits what was written.
    w.proxy.set(Fault::None);
    agent.wait_line("committed", Duration::from_secs(60));
    agent.stop();
    w.verify("after the partition");
    assert_eq!(w.dirty(), 0, "dirty blocks left after the partition healed");
    w.scrub();
}

/// A tmpfs of `mib` MiB at `dir`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: usize) -> Tmpfs {
        fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "lifeboat-test", arg(dir)])
            .status()
            .expect("run mount (these tests run as root)");
        assert!(st.success(), "mount a tmpfs at {} (these tests run as root)", dir.display());
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem of `dir` with a file `name` until it is full.
fn fill(dir: &Path, name: &str) -> PathBuf {
    use std::io::Write;
    let p = dir.join(name);
    let mut f = fs::File::create(&p).unwrap();
    let chunk = vec![0xa5u8; 64 << 10];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", p.display()),
        }
    }
    let _ = f.sync_all();
    p
}

#[test]
fn a_full_disk_at_the_site_fails_the_cycle_with_507_and_the_next_commits_once_freed() {
    let s = Scratch::new(BIN, "lb-site-full-");
    let mount = s.path("vaults");
    let tmpfs = Tmpfs::mount(&mount, 48);
    let mut w = World::new(s, Some(tmpfs), mount.join("main"), 8 * MIB, "1h");
    w.ship_and_verify("first point");
    let filler = fill(&mount, "filler");
    w.write(32);
    let (points, dirty) = (w.points(), w.dirty());
    let o = w.host_cmd(&["ship", "d1", "--once"]).output().unwrap();
    let err = stderr(&o);
    assert!(err.contains("recovery site's disk is full"), "the error says the site's disk is full: {err}");
    assert!(err.contains(&w.url), "the error names the server: {err}");
    assert!(w.log_count("(no-space)") >= 1, "the server logged no 507:\n{}", w.site.log().join("\n"));
    // The server keeps serving: `points` goes through it.
    assert_failed_cleanly(&w, &o, &points, dirty, "full disk");
    fs::remove_file(&filler).unwrap();
    w.scrub();
    w.ship_and_verify("after space was freed");
    w.scrub();
}
