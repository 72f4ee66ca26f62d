//! Booting the guest: `qemu-system-x86_64` (q35, 256 MiB, TCG unless KVM is
//! really usable), the virtio disk as an NBD blockdev on a unix socket, the
//! serial console on stdout, a timeout.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::paths::{self, Kernel};
use crate::process::wait_timeout;
use crate::serial::{self, Marker};

/// One boot.
pub struct Vm {
    /// The kernel to boot.
    pub kernel: Kernel,
    /// The initramfs from [`crate::initramfs::build`].
    pub initrd: PathBuf,
    /// The NBD server's unix socket.
    pub socket: PathBuf,
    /// The export to ask for ("" is the default export).
    pub export: String,
    /// Give up (kill QEMU, fail) after this long. `LIFEBOAT_VM_TIMEOUT`
    /// (seconds) overrides it.
    pub timeout: Duration,
    /// A QMP socket to serve (`-qmp unix:PATH,server=on,wait=off`), for a
    /// test that powers the VM down as a planned failover does.
    pub qmp: Option<PathBuf>,
    /// A QEMU guest agent channel: a unix socket on the host (the
    /// `org.qemu.guest_agent.0` virtio-serial port in the guest).
    pub qga: Option<PathBuf>,
    /// Boot with `lb.ignore_power_button` on the kernel command line: the
    /// guest's `/init` then never arms its power button, so QMP
    /// `system_powerdown` does nothing (a guest that ignores the button).
    pub ignore_power_button: bool,
}

/// A booted VM whose console can be watched while it runs.
pub struct Booted {
    child: std::process::Child,
    console: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<thread::JoinHandle<()>>,
    start: Instant,
    timeout: Duration,
    accel: &'static str,
}

/// What a finished boot left behind.
#[derive(Debug)]
pub struct Transcript {
    /// QEMU's exit status.
    pub status: ExitStatus,
    /// The serial console, as received.
    pub console: Vec<u8>,
    /// QEMU's own stderr (kept apart so it cannot garble console lines).
    pub stderr: String,
    /// The markers on it.
    pub markers: Vec<Marker>,
    /// How long QEMU ran.
    pub elapsed: Duration,
    /// "tcg" or "kvm".
    pub accel: &'static str,
}

impl Transcript {
    /// The console as text, for failure messages.
    pub fn console_text(&self) -> String {
        String::from_utf8_lossy(&self.console).replace('\r', "")
    }

    /// Fails unless QEMU exited 0, the guest printed READY and `DONE 0`, and
    /// no FAIL marker. Returns the args of every `STEP` marker.
    pub fn assert_success(&self) -> Vec<String> {
        let log = || {
            format!(
                "QEMU {} after {:?} ({}); stderr: {}\nconsole:\n{}",
                self.status,
                self.elapsed,
                self.accel,
                self.stderr,
                self.console_text()
            )
        };
        let fails: Vec<&Marker> = self.markers.iter().filter(|m| m.word == "FAIL").collect();
        assert!(fails.is_empty(), "the guest reported failures {fails:?}\n{}", log());
        assert!(self.markers.iter().any(|m| m.word == "READY"), "the guest never saw its disk\n{}", log());
        let done: Vec<&Marker> = self.markers.iter().filter(|m| m.word == "DONE").collect();
        assert_eq!(done.len(), 1, "expected exactly one DONE marker\n{}", log());
        assert_eq!(done[0].args, "0", "the guest script failed\n{}", log());
        assert!(self.status.success(), "QEMU did not exit cleanly\n{}", log());
        self.markers.iter().filter(|m| m.word == "STEP").map(|m| m.args.clone()).collect()
    }
}

/// KVM only when /dev/kvm is writable and the CPU has vmx or svm; else TCG
/// (see shared/VM-TESTS.md: /dev/kvm exists on these machines but is
/// unusable). The same choice `lifeboat failover` makes.
pub fn accel() -> &'static str {
    recovery::launch::accel()
}

impl Vm {
    /// The QEMU command line.
    pub fn command(&self, accel: &str) -> Command {
        let mut cmd = Command::new(paths::tool("qemu-system-x86_64"));
        let blockdev = format!(
            "driver=nbd,node-name=disk0,server.type=unix,server.path={},export={}",
            qemu_escape(&self.socket),
            self.export
        );
        cmd.args(["-accel", accel])
            .args(["-cpu", if accel == "kvm" { "host" } else { "max" }])
            .args(["-machine", "q35", "-m", "256", "-smp", "1"])
            .args(["-nographic", "-no-reboot", "-net", "none"])
            .arg("-kernel")
            .arg(&self.kernel.vmlinuz)
            .arg("-initrd")
            .arg(&self.initrd)
            .args([
                "-append",
                if self.ignore_power_button {
                    "console=ttyS0 quiet loglevel=1 panic=-1 rdinit=/init lb.ignore_power_button"
                } else {
                    "console=ttyS0 quiet loglevel=1 panic=-1 rdinit=/init"
                },
            ])
            .args(["-blockdev", &blockdev])
            .args(["-device", "virtio-blk-pci,drive=disk0"]);
        if let Some(q) = &self.qmp {
            cmd.args(["-qmp", &format!("unix:{},server=on,wait=off", qemu_escape(q))]);
        }
        if let Some(g) = &self.qga {
            cmd.args(["-chardev", &format!("socket,path={},server=on,wait=off,id=qga0", qemu_escape(g))])
                .args(["-device", "virtio-serial-pci"])
                .args(["-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"]);
        }
        cmd
    }

    /// Boots, waits for QEMU to exit (the guest powers off) or the timeout.
    pub fn run(&self) -> Transcript {
        self.start().wait()
    }

    /// Boots and returns at once; [`Booted::wait`] ends the boot.
    pub fn start(&self) -> Booted {
        let accel = accel();
        let timeout = std::env::var("LIFEBOAT_VM_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(self.timeout);
        let mut child = self
            .command(accel)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn qemu-system-x86_64");
        let console = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(Box::new(child.stdout.take().unwrap()), Arc::clone(&console)),
            collect(Box::new(child.stderr.take().unwrap()), Arc::clone(&stderr)),
        ];
        Booted { child, console, stderr, readers, start: Instant::now(), timeout, accel }
    }
}

impl Booted {
    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The console so far, as text.
    pub fn console_text(&self) -> String {
        String::from_utf8_lossy(&self.console.lock().unwrap()).replace('\r', "")
    }

    /// Waits until the console holds the marker `@@LB WORD ARGS` (a whole
    /// line); fails, showing the console, if QEMU exits first or `limit`
    /// passes.
    pub fn wait_marker(&mut self, word: &str, args: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let found = serial::markers(&self.console.lock().unwrap())
                .is_ok_and(|ms| ms.iter().any(|m| m.word == word && m.args == args));
            if found {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("QEMU exited ({status}) before the guest printed @@LB {word} {args}:\n{}", self.console_text());
            }
            assert!(
                Instant::now() < deadline,
                "the guest did not print @@LB {word} {args} within {limit:?} ({}):\n{}",
                self.accel,
                self.console_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for QEMU to exit (the guest powers off) or the timeout (counted
    /// from the boot).
    pub fn wait(mut self) -> Transcript {
        let (accel, timeout) = (self.accel, self.timeout);
        let status = wait_timeout(&mut self.child, timeout.saturating_sub(self.start.elapsed()));
        let elapsed = self.start.elapsed();
        for r in std::mem::take(&mut self.readers) {
            let _ = r.join();
        }
        let console = &self.console;
        let stderr = &self.stderr;
        let Some(status) = status else {
            let text = String::from_utf8_lossy(&console.lock().unwrap()).replace('\r', "");
            let err = String::from_utf8_lossy(&stderr.lock().unwrap()).into_owned();
            panic!("the VM did not power off within {timeout:?} ({accel}); stderr: {err}\nconsole so far:\n{text}");
        };
        let console = std::mem::take(&mut *console.lock().unwrap());
        let markers = serial::markers(&console)
            .unwrap_or_else(|e| panic!("{e}\nconsole:\n{}", String::from_utf8_lossy(&console).replace('\r', "")));
        let stderr = String::from_utf8_lossy(&stderr.lock().unwrap()).into_owned();
        Transcript { status, console, stderr, markers, elapsed, accel }
    }
}

impl Drop for Booted {
    /// A test that fails before [`Booted::wait`] leaves no QEMU behind.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Copies a pipe into a shared buffer until EOF, on a thread.
fn collect(mut pipe: Box<dyn Read + Send>, sink: Arc<Mutex<Vec<u8>>>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

/// QEMU option values escape a comma by doubling it.
fn qemu_escape(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}
