//! Booting a recovered VM with QEMU at the recovery site, and stopping it.
//!
//! QEMU runs detached (`-daemonize`, so the VM outlives the `lifeboat
//! failover` command that started it), with its pid file, serial console log
//! and QMP socket in the failover's directory. `-daemonize` returns only once
//! the VM is set up, so a bad option or a missing kernel is reported by the
//! launch itself. A pid is trusted only while `/proc/PID/cmdline` still names
//! this failover's pid file, so a reused pid is never signalled.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::RecoveryError;
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
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| RecoveryError::Qemu(format!("finding a free port for the health check: {e}")))?;
    Ok(l.local_addr().map_err(|e| RecoveryError::Qemu(e.to_string()))?.port())
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
        let net = networks.get(&nic.network).ok_or_else(|| {
            RecoveryError::Refused(format!(
                "NIC {i} of VM {:?} is on network {:?}, which has no mapping at this recovery site: pass \
                 --network {}=bridge:BRIDGE (or =user, =isolated, =none)",
                def.name, nic.network, nic.network
            ))
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
        b.check_trusted_files().map_err(|e| RecoveryError::Refused(format!("VM {:?}: {e}", def.name)))?;
    }
    let out = cmd.output().map_err(|e| {
        RecoveryError::Qemu(format!(
            "cannot run {}: {e} (install qemu-system-x86, e.g. scripts/setup.sh)",
            qemu.binary.display()
        ))
    })?;
    if !out.status.success() {
        return Err(RecoveryError::Qemu(format!(
            "QEMU refused to start VM {:?} ({}): {}",
            def.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let pid = read_pid(&pidfile)?
        .ok_or_else(|| RecoveryError::Qemu(format!("QEMU started but wrote no pid to {}", pidfile.display())))?;
    Ok(Running { pid, pidfile, console, qmp, health_port })
}

/// Whether process `pid` is alive (not a zombie) and has `arg` among its
/// command-line arguments: a pid is trusted only while it is still the
/// process that was started, never a reuse of its number.
pub(crate) fn process_alive_with_arg(pid: u32, arg: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let want = arg.display().to_string();
    let ours = cmdline.split(|&b| b == 0).any(|a| a == want.as_bytes());
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = state.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'));
    ours && !zombie
}

/// The pid in a pid file, if the file exists.
fn read_pid(pidfile: &Path) -> Result<Option<u32>, RecoveryError> {
    match std::fs::read_to_string(pidfile) {
        Ok(t) => t
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| RecoveryError::Qemu(format!("{} does not hold a pid: {t:?}", pidfile.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RecoveryError::io("reading", pidfile, e)),
    }
}

impl Running {
    /// Whether this QEMU process is still alive (and is still ours).
    pub fn alive(&self) -> bool {
        process_alive_with_arg(self.pid, &self.pidfile)
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
            let pid = libc::pid_t::try_from(self.pid).map_err(|_| RecoveryError::Qemu("pid out of range".into()))?;
            // SAFETY: kill(2) takes no pointers; the pid was checked to be this
            // failover's QEMU just above.
            let _ = unsafe { libc::kill(pid, libc::SIGKILL) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if self.alive() {
                return Err(RecoveryError::Qemu(format!("QEMU pid {} survived SIGKILL for 10 s", self.pid)));
            }
        }
        Ok(())
    }
}

/// Sends one QMP command (after the capabilities handshake) and returns the
/// reply line.
pub fn qmp(socket: &Path, command: &str) -> Result<String, RecoveryError> {
    let fail = |e: std::io::Error| RecoveryError::Qemu(format!("QMP {}: {e}", socket.display()));
    let s = UnixStream::connect(socket).map_err(fail)?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(fail)?;
    let mut r = BufReader::new(s.try_clone().map_err(fail)?);
    let mut w = s;
    let mut line = String::new();
    r.read_line(&mut line).map_err(fail)?; // greeting
    writeln!(w, "{{\"execute\":\"qmp_capabilities\"}}").map_err(fail)?;
    line.clear();
    r.read_line(&mut line).map_err(fail)?;
    writeln!(w, "{{\"execute\":\"{command}\"}}").map_err(fail)?;
    loop {
        line.clear();
        if r.read_line(&mut line).map_err(fail)? == 0 {
            return Ok(String::new());
        }
        if line.contains("\"return\"") || line.contains("\"error\"") {
            return Ok(line);
        }
    }
}

/// Powers a running VM off through its QMP socket: `system_powerdown` (the
/// ACPI power button), then waits until QEMU has exited (its QMP socket no
/// longer answers) or `timeout` passes. A socket nobody listens on means the
/// VM is already off. Returns what happened, for the job's record.
pub fn power_off(qmp_socket: &Path, timeout: Duration) -> Result<String, RecoveryError> {
    let started = Instant::now();
    match qmp(qmp_socket, "system_powerdown") {
        Ok(reply) if reply.contains("\"error\"") => {
            return Err(RecoveryError::Qemu(format!("QEMU refused system_powerdown: {}", reply.trim())))
        }
        Ok(_) => {}
        Err(_) if UnixStream::connect(qmp_socket).is_err() => {
            return Ok(format!("already off (nothing answers on {})", qmp_socket.display()))
        }
        Err(e) => return Err(e),
    }
    while started.elapsed() < timeout {
        if UnixStream::connect(qmp_socket).is_err() {
            return Ok(format!(
                "powered off by the guest {:.1} s after system_powerdown",
                started.elapsed().as_secs_f64()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(RecoveryError::Qemu(format!(
        "the source VM did not power off within {} s of system_powerdown (does the guest handle the ACPI power button?)",
        timeout.as_secs()
    )))
}
