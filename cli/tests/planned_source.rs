//! The source side of `lifeboat failover --planned --source-qmp` with a real
//! QEMU and no guest (issue 12, hole 11): `qemu-system-x86_64 -M none`
//! ignores `system_powerdown` like a guest that ignores its power button,
//! and a second QMP monitor lets the test see the press arrive (QEMU's
//! `POWERDOWN` event) before it ends QEMU.
//!
//! * SIGKILLed while the failover waits: QEMU exited without a guest
//!   shutdown. The failover says so loudly and goes on (the disk is what it
//!   is; the final cycle ships it, crash-consistent), and the job's step and
//!   the audit record say it was not a clean shutdown.
//! * Still running at `--shutdown-timeout`: the failover fails, ships and
//!   boots nothing, leaves no job, and QEMU runs on.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use vm_tests::lifeboat::Scratch;
use vm_tests::process::wait_for;
use vm_tests::replicate::arg;

const MIB: u64 = 1024 * 1024;

/// A home with disk `d1` replicating to a vault, one point shipped, and VM
/// `db` defined on it (with a kernel that does not exist: its boot fails).
fn setup(prefix: &str) -> Scratch {
    let s = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), prefix);
    let image = s.path("d1.img");
    fs::write(&image, vec![7u8; usize::try_from(4 * MIB).unwrap()]).unwrap();
    s.home.key_new(&s.path("k.key"));
    s.home.vault_init(&s.path("vault"), &s.path("k.key"));
    s.home.protect_replicated("d1", &image, 64 * 1024, &s.path("vault"), &s.path("k.key"));
    s.home.ship("d1");
    s.home.run_ok(&["vm", "define", "db", "--disk", "d1", "--kernel", "/nonexistent/vmlinuz", "--health-serial", "x"]);
    s
}

/// A daemonized `qemu-system-x86_64 -M none` with two QMP sockets, `qmp`
/// for lifeboat and `watch` for the test. Killed on drop.
struct Qemu {
    pid: u32,
    qmp: PathBuf,
    watch: PathBuf,
}

impl Qemu {
    fn start(dir: &Path) -> Qemu {
        let (qmp, watch, pidfile) = (dir.join("qmp.sock"), dir.join("watch.sock"), dir.join("qemu.pid"));
        let out = Command::new("qemu-system-x86_64")
            .args(["-M", "none", "-display", "none", "-nodefaults", "-no-user-config"])
            .args(["-qmp", &format!("unix:{},server=on,wait=off", qmp.display())])
            .args(["-qmp", &format!("unix:{},server=on,wait=off", watch.display())])
            .arg("-pidfile")
            .arg(&pidfile)
            .arg("-daemonize")
            .output()
            .expect("run qemu-system-x86_64 (scripts/setup.sh installs it)");
        assert!(out.status.success(), "QEMU did not start: {}", String::from_utf8_lossy(&out.stderr));
        let pid = fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        Qemu { pid, qmp, watch }
    }

    /// Whether the pid is still this QEMU (its command line names our socket).
    fn alive(&self) -> bool {
        fs::read(format!("/proc/{}/cmdline", self.pid))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*self.watch.to_string_lossy()))
    }

    /// Waits on the watch socket for QEMU's POWERDOWN event: lifeboat's
    /// system_powerdown has arrived and it is waiting for QEMU to exit.
    fn wait_powerdown(&self) {
        let s = UnixStream::connect(&self.watch).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        writeln!(w, "{{\"execute\":\"qmp_capabilities\"}}").unwrap();
        loop {
            line.clear();
            assert!(r.read_line(&mut line).unwrap() > 0, "QEMU closed the watch socket");
            if line.contains("\"POWERDOWN\"") {
                return;
            }
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if self.alive() {
            let _ = Command::new("kill").args(["-9", &self.pid.to_string()]).status();
        }
    }
}

#[test]
fn a_source_qemu_killed_during_power_off_is_recorded_as_not_a_clean_shutdown_and_the_final_cycle_runs() {
    let s = setup("lb-plankill-");
    let q = Qemu::start(s.dir());
    let child = s
        .home
        .command()
        .args(["failover", "db", "--planned", "--source-qmp", arg(&q.qmp), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    q.wait_powerdown();
    assert!(Command::new("kill").args(["-9", &q.pid.to_string()]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // It went on past the source: the final cycle ran; the boot (no kernel) failed.
    assert!(stderr.contains("final cycle of disk d1 done"), "the final cycle did not run: {stderr}");
    let want = format!("QEMU (pid {}) exited without a guest shutdown (killed or crashed", q.pid);
    assert!(stderr.contains(&format!("WARNING: {want}")), "no loud warning: {stderr}");
    assert!(stderr.contains("did NOT shut down cleanly"), "{stderr}");
    let status = s.home.run_ok(&["failover", "status", "db", "--json"]);
    let job: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let steps = job["steps"].as_array().unwrap();
    assert_eq!(
        (steps[0]["name"].as_str(), steps[1]["name"].as_str()),
        (Some("stop source VM"), Some("final cycle of disk d1"))
    );
    assert!(steps[0]["detail"].as_str().unwrap().starts_with(&want), "{job}");
    assert_eq!(steps[1]["state"], "done", "{job}");
    let audit = s.home.run_ok(&["audit", "show", "--json"]);
    let text = String::from_utf8_lossy(&audit.stdout);
    let record =
        text.lines().find(|l| l.contains("failover.planned.source-stopped")).unwrap_or_else(|| panic!("{text}"));
    assert!(record.contains("\"clean_shutdown\":false"), "the audit record does not say it was unclean: {record}");
    s.home.run_ok(&["failover", "cleanup", "db"]);
}

#[test]
fn a_source_still_running_at_the_shutdown_timeout_fails_the_failover_and_nothing_ships() {
    let s = setup("lb-planstay-");
    let q = Qemu::start(s.dir());
    let points_before = s.home.run_ok(&["points", "d1", "--json"]).stdout;
    let mut child = s
        .home
        .command()
        .args(["failover", "db", "--planned", "--source-qmp", arg(&q.qmp), "--shutdown-timeout", "2s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for(&mut child, Duration::from_secs(60), "lifeboat failover --planned");
    let mut stderr = String::new();
    let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr);
    assert!(!status.success(), "the failover succeeded though the source never stopped: {stderr}");
    for want in [
        "did not power off within 2 s of system_powerdown".to_string(),
        format!("QEMU (pid {}) still runs", q.pid),
        "nothing was shipped or booted".to_string(),
    ] {
        assert!(stderr.contains(&want), "the error does not say {want:?}: {stderr}");
    }
    assert!(q.alive(), "QEMU was stopped");
    assert!(!s.path("home").join("failovers/db").exists(), "a job was left behind");
    let points_after = s.home.run_ok(&["points", "d1", "--json"]).stdout;
    assert_eq!(points_before, points_after, "a point was shipped");
}
