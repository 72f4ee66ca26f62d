//! `launch::power_off` against a real QEMU (issue 12, hole 11: a killed
//! QEMU was reported as "powered off by the guest"). `qemu-system-x86_64 -M
//! none` starts in milliseconds with no guest at all, so it ignores
//! `system_powerdown` like a guest that ignores its power button; a second
//! QMP monitor lets the test see the press arrive (QEMU's `POWERDOWN`
//! event, sent to every monitor) and then end QEMU the way the case needs:
//!
//! * SIGKILLed while power_off waits: "exited without a guest shutdown";
//! * told to `quit` over QMP: QEMU's own SHUTDOWN event, but not a guest
//!   power-off, so not clean either;
//! * still running at the timeout: an error naming its pid;
//! * nothing listening on the socket: an error, never "already off".

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use recovery::launch::power_off;

/// A daemonized `qemu-system-x86_64 -M none` with two QMP sockets: `qmp`
/// for power_off, `watch` for the test. Killed on drop.
struct Qemu {
    _dir: tempfile::TempDir,
    pid: u32,
    qmp: PathBuf,
    watch: PathBuf,
}

impl Qemu {
    fn start() -> Qemu {
        let dir = tempfile::tempdir().unwrap();
        let (qmp, watch, pidfile) =
            (dir.path().join("qmp.sock"), dir.path().join("watch.sock"), dir.path().join("pid"));
        // -daemonize returns once QEMU is set up: both sockets listen.
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
        let pid = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        Qemu { _dir: dir, pid, qmp, watch }
    }

    /// Whether the pid is still this QEMU (its command line names our
    /// socket), so a reused pid is never taken for it.
    fn alive(&self) -> bool {
        std::fs::read(format!("/proc/{}/cmdline", self.pid))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*self.watch.to_string_lossy()))
    }

    /// Connects to the watch socket and negotiates capabilities.
    fn watcher(&self) -> Watcher {
        let s = UnixStream::connect(&self.watch).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut w = Watcher { r: BufReader::new(s.try_clone().unwrap()), w: s };
        assert!(w.line().contains("\"QMP\""), "no QMP greeting");
        writeln!(w.w, "{{\"execute\":\"qmp_capabilities\"}}").unwrap();
        assert!(w.line().contains("\"return\""), "qmp_capabilities refused");
        w
    }

    fn kill9(&self) {
        assert!(Command::new("kill").args(["-9", &self.pid.to_string()]).status().unwrap().success());
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if self.alive() {
            let _ = Command::new("kill").args(["-9", &self.pid.to_string()]).status();
        }
    }
}

/// The test's own QMP connection.
struct Watcher {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Watcher {
    fn line(&mut self) -> String {
        let mut l = String::new();
        assert!(self.r.read_line(&mut l).unwrap() > 0, "QEMU closed the watch socket");
        l
    }

    /// Waits for QEMU's POWERDOWN event: power_off's system_powerdown has
    /// arrived, so power_off is now waiting for QEMU to exit.
    fn wait_powerdown(&mut self) {
        while !self.line().contains("\"POWERDOWN\"") {}
    }
}

#[test]
fn a_qemu_killed_while_power_off_waits_is_reported_as_exited_without_a_guest_shutdown() {
    let q = Qemu::start();
    let mut watch = q.watcher();
    let socket = q.qmp.clone();
    let waiting = std::thread::spawn(move || power_off(&socket, Duration::from_secs(60)));
    watch.wait_powerdown();
    q.kill9();
    let off = waiting.join().unwrap().expect("QEMU is gone: power_off says how, it does not fail");
    assert!(!off.clean, "a SIGKILLed QEMU was reported as a clean power-off: {}", off.detail);
    assert_eq!(off.pid, q.pid, "{}", off.detail);
    assert_eq!(off.reason, None);
    assert!(
        off.detail.contains(&format!("QEMU (pid {}) exited without a guest shutdown (killed or crashed", q.pid)),
        "{}",
        off.detail
    );
    assert!(!off.detail.contains("powered off"), "{}", off.detail);
}

#[test]
fn a_qmp_quit_is_not_a_guest_shutdown() {
    let q = Qemu::start();
    let mut watch = q.watcher();
    let socket = q.qmp.clone();
    let waiting = std::thread::spawn(move || power_off(&socket, Duration::from_secs(60)));
    watch.wait_powerdown();
    writeln!(watch.w, "{{\"execute\":\"quit\"}}").unwrap();
    let off = waiting.join().unwrap().expect("QEMU quit: power_off says how, it does not fail");
    assert!(!off.clean, "a QMP quit was reported as a clean power-off: {}", off.detail);
    assert_eq!(off.reason.as_deref(), Some("host-qmp-quit"), "{}", off.detail);
    assert!(
        off.detail
            .contains("exited without a guest power-off (SHUTDOWN event, reason host-qmp-quit, not from the guest)"),
        "{}",
        off.detail
    );
    assert!(!q.alive(), "power_off returned while QEMU (pid {}) still ran", q.pid);
}

#[test]
fn a_qemu_still_running_at_the_timeout_is_an_error_and_is_left_running() {
    let q = Qemu::start();
    let e = power_off(&q.qmp, Duration::from_secs(2)).expect_err("QEMU never exited, yet power_off succeeded");
    let msg = e.to_string();
    for want in ["did not power off within 2 s of system_powerdown", &format!("QEMU (pid {}) still runs", q.pid)] {
        assert!(msg.contains(want), "the error does not say {want:?}: {msg}");
    }
    assert!(q.alive(), "power_off killed QEMU");
}

#[test]
fn nothing_listening_on_the_socket_is_an_error_not_already_off() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sock");
    let e = power_off(&missing, Duration::from_secs(2)).expect_err("a missing socket was taken as a VM that is off");
    assert!(e.to_string().contains("nothing answers on the QMP socket"), "{e}");
    // A socket file whose listener is gone (connect: refused).
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let e = power_off(&stale, Duration::from_secs(2)).expect_err("a stale socket was taken as a VM that is off");
    assert!(e.to_string().contains(&format!("nothing answers on the QMP socket {}", stale.display())), "{e}");
}
