//! Booting a recovered VM with QEMU at the recovery site, and stopping it.
//!
//! QEMU runs detached (`-daemonize`, so the VM outlives the `lifeboat
//! failover` command that started it), with its pid file, serial console log
//! and QMP socket in the failover's directory. `-daemonize` returns only once
//! the VM is set up, so a bad option or a missing kernel is reported by the
//! launch itself. A pid is trusted only while `/proc/PID/cmdline` still names
//! this failover's pid file, so a reused pid is never signalled.

use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{QemuError, RecoveryError, Refusal};
use crate::json_lines::{is_reply, is_timeout, JsonLines};
use crate::vmdef::VmDefinition;

/// Where a NIC goes at the recovery site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// QEMU user networking (NAT through the host), with `restrict=on`
    /// when isolated: the guest reaches nothing outside, only the host's
    /// forwarded health-check port reaches it.
    User {
        /// No route out (test failover).
        isolated: bool,
    },
    /// A host bridge.
    Bridge(String),
    /// No interface.
    None,
}

impl std::str::FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Network, String> {
        match s {
            "user" => Ok(Network::User { isolated: false }),
            "isolated" => Ok(Network::User { isolated: true }),
            "none" => Ok(Network::None),
            _ => match s.strip_prefix("bridge:") {
                Some(br) if !br.is_empty() && br.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) => {
                    Ok(Network::Bridge(br.to_string()))
                }
                _ => Err(format!("network {s:?}: use user, isolated, none or bridge:BRIDGE")),
            },
        }
    }
}

/// How to run QEMU.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// The binary (default `qemu-system-x86_64` on PATH).
    pub binary: PathBuf,
    /// `kvm` or `tcg`.
    pub accel: String,
}

impl Default for QemuConfig {
    fn default() -> QemuConfig {
        QemuConfig { binary: PathBuf::from("qemu-system-x86_64"), accel: accel().to_string() }
    }
}

/// KVM only when /dev/kvm is writable and the CPU has vmx or svm; else TCG.
pub fn accel() -> &'static str {
    let kvm_rw = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let virt = cpuinfo.lines().any(|l| l.starts_with("flags") && (l.contains(" vmx") || l.contains(" svm")));
    if kvm_rw && virt {
        "kvm"
    } else {
        "tcg"
    }
}

/// A launched VM: where its files are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    /// QEMU's pid.
    pub pid: u32,
    /// Its pid file (names the process in /proc/PID/cmdline).
    pub pidfile: PathBuf,
    /// The serial console log.
    pub console: PathBuf,
    /// The QMP socket.
    pub qmp: PathBuf,
    /// The host port forwarded to the guest's health-check port, if any.
    pub health_port: Option<u16>,
}

/// QEMU option values escape a comma by doubling it.
fn esc(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// A free TCP port on the loopback (bound and released: QEMU binds it next).
fn free_port() -> Result<u16, RecoveryError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(QemuError::FreePort)?;
    Ok(l.local_addr().map_err(QemuError::FreePort)?.port())
}

/// Where a recovered VM's disk comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// A restored raw image.
    File(PathBuf),
    /// An NBD export on a unix socket (instant recovery).
    Nbd {
        /// The socket.
        socket: PathBuf,
        /// The export name.
        export: String,
    },
}

/// Boots `def` from `disks` (in the definition's order) with its files in
/// `dir`; `networks` maps each NIC's network.
pub fn launch(
    def: &VmDefinition,
    disks: &[DiskSource],
    networks: &BTreeMap<String, Network>,
    dir: &Path,
    qemu: &QemuConfig,
) -> Result<Running, RecoveryError> {
    let pidfile = dir.join("qemu.pid");
    let console = dir.join("console.log");
    let qmp = dir.join("qmp.sock");
    for f in [&pidfile, &console, &qmp] {
        match std::fs::remove_file(f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(RecoveryError::io("removing", f, e)),
            _ => {}
        }
    }
    let mut cmd = Command::new(&qemu.binary);
    cmd.args(["-name", &format!("guest={},process=lifeboat-{}", def.name, def.name)])
        .args(["-machine", "q35", "-accel", &qemu.accel])
        .args(["-cpu", if qemu.accel == "kvm" { "host" } else { "max" }])
        .args(["-m", &def.memory_mib.to_string(), "-smp", &def.cpus.to_string()])
        .args(["-display", "none", "-monitor", "none", "-no-user-config", "-nodefaults"])
        .args(["-serial", &format!("file:{}", esc(&console))])
        .args(["-qmp", &format!("unix:{},server=on,wait=off", esc(&qmp))])
        .args(["-pidfile", &pidfile.display().to_string(), "-daemonize"]);
    for (i, d) in disks.iter().enumerate() {
        match d {
            DiskSource::File(f) => {
                cmd.args(["-drive", &format!("file={},format=raw,if=virtio,index={i},cache=writeback", esc(f))]);
            }
            DiskSource::Nbd { socket, export } => {
                let node = format!("d{i}");
                cmd.args([
                    "-blockdev",
                    &format!(
                        "driver=nbd,node-name={node},server.type=unix,server.path={},export={export}",
                        esc(socket)
                    ),
                ]);
                cmd.args(["-device", &format!("virtio-blk-pci,drive={node}")]);
            }
        }
    }
    if let Some(b) = &def.boot {
        cmd.arg("-kernel").arg(&b.kernel);
        if let Some(i) = &b.initrd {
            cmd.arg("-initrd").arg(i);
        }
        cmd.args(["-append", &b.append]);
    }
    let mut health_port = None;
    for (i, nic) in def.nics.iter().enumerate() {
        let net = networks.get(&nic.network).ok_or_else(|| Refusal::UnmappedNetwork {
            vm: def.name.clone(),
            nic: i,
            network: nic.network.clone(),
        })?;
        let netdev = match net {
            Network::None => continue,
            Network::User { isolated } => {
                let mut s = format!("user,id=n{i}");
                if *isolated {
                    s.push_str(",restrict=on");
                }
                if let (0, Some(port)) = (i, def.health.tcp_port) {
                    let host = free_port()?;
                    health_port = Some(host);
                    s.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{port}"));
                }
                s
            }
            Network::Bridge(br) => format!("bridge,id=n{i},br={br}"),
        };
        let mut device = format!("virtio-net-pci,netdev=n{i}");
        if let Some(mac) = &nic.mac {
            device.push_str(&format!(",mac={mac}"));
        }
        cmd.args(["-netdev", &netdev, "-device", &device]);
    }
    // QEMU boots the kernel and initrd with root's rights over the recovered
    // disks: checked here, at each boot, not only at `vm define`.
    if let Some(b) = &def.boot {
        b.check_trusted_files().map_err(|e| Refusal::UntrustedBoot { vm: def.name.clone(), why: e.to_string() })?;
    }
    let out = cmd.output().map_err(|source| QemuError::Spawn { binary: qemu.binary.clone(), source })?;
    if !out.status.success() {
        return Err(QemuError::StartRefused {
            vm: def.name.clone(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }
        .into());
    }
    let pid = read_pid(&pidfile)?.ok_or_else(|| QemuError::NoPid { pidfile: pidfile.clone() })?;
    Ok(Running { pid, pidfile, console, qmp, health_port })
}

/// The pid in a pid file, if the file exists.
fn read_pid(pidfile: &Path) -> Result<Option<u32>, RecoveryError> {
    match std::fs::read_to_string(pidfile) {
        Ok(t) => t
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| QemuError::BadPid { pidfile: pidfile.to_path_buf(), text: t.clone() }.into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RecoveryError::io("reading", pidfile, e)),
    }
}

impl Running {
    /// Whether this QEMU process is still alive (and is still ours).
    pub fn alive(&self) -> bool {
        system::process::alive_with_arg(self.pid, self.pidfile.as_os_str())
    }

    /// Stops the VM: QMP `quit`, then SIGKILL if it has not gone within
    /// `grace`. Returns once the process is gone.
    pub fn stop(&self, grace: Duration) -> Result<(), RecoveryError> {
        if !self.alive() {
            return Ok(());
        }
        let _ = qmp(&self.qmp, "quit");
        let deadline = Instant::now() + grace;
        while self.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.alive() {
            // The pid was checked to be this failover's QEMU just above.
            let _ = system::process::kill9(self.pid);
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if self.alive() {
                return Err(QemuError::SurvivedKill { pid: self.pid }.into());
            }
        }
        Ok(())
    }
}

/// One QMP connection past its greeting and `qmp_capabilities`. Every
/// message read through it is looked at for a `SHUTDOWN` event.
struct Qmp {
    c: JsonLines,
    /// The first `SHUTDOWN` event seen.
    shutdown: Option<Shutdown>,
}

/// QEMU's `SHUTDOWN` event: `guest` is true when the guest asked for it,
/// `reason` says what (`guest-shutdown` is a guest power-off; `guest-reset`
/// and `guest-panic` are guest-initiated too, `host-qmp-quit` and
/// `host-signal` are not).
#[derive(Debug, Clone)]
struct Shutdown {
    guest: bool,
    reason: Option<String>,
    /// When it was read.
    at: Instant,
}

impl Shutdown {
    /// A guest power-off: the guest asked the (virtual) hardware to turn
    /// off, as an OS does at the end of its shutdown. Nothing else counts.
    fn clean(&self) -> bool {
        self.guest && self.reason.as_deref() == Some("guest-shutdown")
    }

    fn reason(&self) -> &str {
        self.reason.as_deref().unwrap_or("not given")
    }
}

impl Qmp {
    /// Reads the greeting and negotiates capabilities on `s`. `Ok(None)`:
    /// QEMU closed the connection first.
    fn handshake(s: UnixStream, deadline: Instant) -> std::io::Result<Option<Qmp>> {
        let mut q = Qmp { c: JsonLines::new(s)?, shutdown: None };
        match q.next(deadline)? {
            None => return Ok(None),
            Some(g) if g.get("QMP").is_some() => {}
            Some(g) => return Err(std::io::Error::other(format!("this is not a QMP greeting: {g}"))),
        }
        Ok(q.execute("qmp_capabilities", deadline)?.map(|_| q))
    }

    /// The next message ([`JsonLines::next`]), noting a `SHUTDOWN` event.
    fn next(&mut self, deadline: Instant) -> std::io::Result<Option<serde_json::Value>> {
        let Some(v) = self.c.next(deadline)? else { return Ok(None) };
        if v["event"] == "SHUTDOWN" && self.shutdown.is_none() {
            self.shutdown = Some(Shutdown {
                guest: v["data"]["guest"].as_bool().unwrap_or(false),
                reason: v["data"]["reason"].as_str().map(str::to_string),
                at: Instant::now(),
            });
        }
        Ok(Some(v))
    }

    /// Sends `command` and returns its reply (`return` or `error`), skipping
    /// events; `Ok(None)` if QEMU closed the connection first (a write to a
    /// closed connection counts as that too).
    fn execute(&mut self, command: &str, deadline: Instant) -> std::io::Result<Option<serde_json::Value>> {
        if !self.c.execute(command, None, deadline)? {
            return Ok(None);
        }
        loop {
            match self.next(deadline)? {
                None => return Ok(None),
                Some(v) if is_reply(&v) => return Ok(Some(v)),
                Some(_) => {}
            }
        }
    }
}

/// Sends one QMP command (after the capabilities handshake) and returns the
/// reply line ("" if QEMU closed the connection first, as after `quit`).
pub fn qmp(socket: &Path, command: &str) -> Result<String, RecoveryError> {
    let fail = |source: std::io::Error| QemuError::Qmp { socket: socket.to_path_buf(), source };
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = UnixStream::connect(socket).map_err(fail)?;
    let Some(mut q) = Qmp::handshake(s, deadline).map_err(fail)? else { return Ok(String::new()) };
    Ok(q.execute(command, deadline).map_err(fail)?.map(|v| v.to_string()).unwrap_or_default())
}

/// How a VM's QEMU ended after [`power_off`]'s `system_powerdown`.
#[derive(Debug, Clone, PartialEq)]
pub struct PoweredOff {
    /// QEMU's pid (the QMP socket's peer).
    pub pid: u32,
    /// The guest powered itself off: QEMU sent the `SHUTDOWN` event with
    /// `guest: true, reason: "guest-shutdown"` before it exited. False when
    /// QEMU exited any other way (killed, crashed, told to quit, a guest
    /// reset or panic): the disk may then hold a half-done write.
    pub clean: bool,
    /// The `SHUTDOWN` event's reason, if QEMU sent one.
    pub reason: Option<String>,
    /// Seconds from `system_powerdown` until QEMU's process was gone.
    pub seconds: f64,
    /// What happened, in words, for the job and the audit record.
    pub detail: String,
}

/// Powers a running VM off through its QMP socket and says honestly how it
/// ended. Connects, takes a pidfd on QEMU (the socket's peer, from
/// `SO_PEERCRED`, right after connecting, so a reused pid cannot fool it),
/// sends `system_powerdown` (the ACPI power button), then keeps the
/// connection and reads QEMU's events until EOF and the pidfd reports the
/// process gone. The guest powered off only if QEMU sent `SHUTDOWN` with
/// reason `guest-shutdown`; otherwise QEMU exited without a guest shutdown
/// ([`PoweredOff::clean`] false). An error, and no claim about the VM, when
/// nothing answers on the socket, QEMU refuses the command, or QEMU is
/// still alive after `timeout`.
pub fn power_off(qmp_socket: &Path, timeout: Duration) -> Result<PoweredOff, RecoveryError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let socket = || qmp_socket.to_path_buf();
    let s = UnixStream::connect(qmp_socket).map_err(|source| QemuError::NoAnswer { socket: socket(), source })?;
    let pid = system::process::peer_pid(&s)
        .map_err(|source| QemuError::Peer { socket: socket(), source })?
        .ok_or_else(|| QemuError::OtherNamespace { socket: socket() })?;
    let pidfd =
        system::process::Pidfd::open(pid).map_err(|source| QemuError::Pidfd { socket: socket(), pid, source })?;
    let qmp_err = |source: std::io::Error| {
        if is_timeout(&source) {
            QemuError::Silent { socket: socket(), pid, seconds: timeout.as_secs() }
        } else {
            QemuError::QmpOf { socket: socket(), pid, source }
        }
    };
    let mut q = Qmp::handshake(s, deadline).map_err(qmp_err)?;
    let pressed = Instant::now();
    // Whether QEMU answered system_powerdown (it may exit before it does).
    let mut answered = false;
    if let Some(q) = q.as_mut() {
        match q.execute("system_powerdown", deadline).map_err(qmp_err)? {
            Some(reply) if reply.get("error").is_some() => {
                return Err(QemuError::PowerdownRefused { pid, reply: reply.to_string() }.into())
            }
            Some(_) => answered = true,
            None => {}
        }
        // Read events until QEMU closes the connection (it does as it exits).
        loop {
            match q.next(deadline) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) if is_timeout(&e) => break,
                Err(e) => return Err(qmp_err(e).into()),
            }
        }
    }
    let exited = pidfd
        .wait_exit(deadline.saturating_duration_since(Instant::now()))
        .map_err(|source| QemuError::Wait { pid, source })?;
    let shutdown = q.as_ref().and_then(|q| q.shutdown.clone());
    if !exited {
        return Err(match &shutdown {
            Some(s) => QemuError::NoExitAfterShutdown {
                pid,
                seconds: timeout.as_secs(),
                reason: s.reason().to_string(),
                after: s.at.saturating_duration_since(pressed).as_secs_f64(),
            },
            None => QemuError::NoPowerOff { pid, seconds: timeout.as_secs() },
        }
        .into());
    }
    let seconds = pressed.elapsed().as_secs_f64();
    let when = if answered {
        format!("{seconds:.1} s after system_powerdown")
    } else {
        format!("{seconds:.1} s after Lifeboat connected, before it answered system_powerdown")
    };
    let (clean, detail) = match &shutdown {
        Some(s) if s.clean() => (
            true,
            format!(
                "the guest powered off (SHUTDOWN event, reason guest-shutdown) {:.1} s after system_powerdown; QEMU \
                 (pid {pid}) exited",
                s.at.saturating_duration_since(pressed).as_secs_f64()
            ),
        ),
        Some(s) => (
            false,
            format!(
                "QEMU (pid {pid}) exited without a guest power-off (SHUTDOWN event, reason {}, {}) {when}: the disk \
                 may be mid-write (crash-consistent, as after a power cut)",
                s.reason(),
                if s.guest { "from the guest" } else { "not from the guest" }
            ),
        ),
        None => (
            false,
            format!(
                "QEMU (pid {pid}) exited without a guest shutdown (killed or crashed: no SHUTDOWN event) {when}: the \
                 disk may be mid-write (crash-consistent, as after a power cut)"
            ),
        ),
    };
    Ok(PoweredOff { pid: pidfd.pid(), clean, reason: shutdown.and_then(|s| s.reason), seconds, detail })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that closes with bytes of ours still unread makes our next read
    /// fail with ECONNRESET once its last messages are read. QEMU does that
    /// when it exits, so it is the end of the connection, not a QMP error.
    use std::io::Write;

    #[test]
    fn a_peer_closing_with_our_bytes_unread_is_the_end_not_an_error() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mut q = Qmp { c: JsonLines::new(ours).unwrap(), shutdown: None };
        let deadline = Instant::now() + Duration::from_secs(5);
        assert!(q.c.execute("query-status", None, deadline).unwrap()); // never read by the peer
        writeln!(theirs, "{{\"event\":\"SHUTDOWN\",\"data\":{{\"guest\":false,\"reason\":\"host-qmp-quit\"}}}}")
            .unwrap();
        drop(theirs);
        let event = q.next(deadline).expect("the event sent before the close").expect("an event, not EOF");
        assert_eq!(event["event"], "SHUTDOWN");
        assert!(q.next(deadline).expect("a reset after the last message is EOF").is_none());
        assert_eq!(q.shutdown.as_ref().and_then(|s| s.reason.as_deref()), Some("host-qmp-quit"));
    }
}
