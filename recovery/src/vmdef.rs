//! A VM's launch definition: what the recovery site needs to boot it.
//!
//! Stored as TOML in the home (`HOME/vms/NAME.toml`, written by `lifeboat vm
//! define`) and, sealed, in the root of every point of each of its disks
//! (disk-format `root_ext`), so the definition travels with the data and a
//! failover boots a point with the definition it had when it was cut.
//!
//! ```toml
//! name = "web1"
//! memory_mib = 1024
//! cpus = 2
//! disks = ["web1-root", "web1-data"]   # protected disks, in boot order
//!
//! [[nics]]
//! network = "prod"                     # mapped to a real network at the recovery site
//! mac = "52:54:00:12:34:56"            # optional
//!
//! [health]                             # when the booted VM counts as healthy
//! serial = "login:"                    # a line on its serial console containing this
//! tcp_port = 22                        # and/or a TCP port that accepts connections
//! timeout_seconds = 300
//!
//! [boot]                               # optional: direct kernel boot instead of the disk's loader
//! kernel = "/srv/dr/vmlinuz"
//! initrd = "/srv/dr/initrd.img"
//! append = "console=ttyS0 root=/dev/vda"
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::RecoveryError;

/// A VM definition (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmDefinition {
    /// The VM's name.
    pub name: String,
    /// Memory, MiB.
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    /// Virtual CPUs.
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    /// Its protected disks, in order (the first is the boot disk).
    pub disks: Vec<String>,
    /// Its network interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<Nic>,
    /// The boot health check.
    #[serde(default)]
    pub health: Health,
    /// Direct kernel boot, if the disk has no boot loader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<DirectBoot>,
    /// App-consistent points, taken at the source with the guest quiesced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_consistent: Option<AppConsistency>,
    /// VMs with the same group are cut together with all their disks (the
    /// disks of one VM always are); a failover boots each VM from points of
    /// one group cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency_group: Option<String>,
}

/// How the source site takes app-consistent points: at most every
/// `every_seconds`, a cycle quiesces the guest, cuts, and resumes it —
/// either through the QEMU guest agent (`guest_agent`: the host end of the
/// VM's `org.qemu.guest_agent.0` channel; guest-fsfreeze-freeze / thaw) or
/// with the user's hooks (`pre_hook`, `post_hook`: absolute paths, given
/// LIFEBOAT_VM, LIFEBOAT_DISK and LIFEBOAT_HOOK=pre|post). Each step may take
/// `timeout_seconds`; if Lifeboat dies while the guest is quiesced, a
/// watchdog resumes it (thaw, or the post hook) once that time has passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConsistency {
    /// At most one app-consistent point per this many seconds.
    #[serde(default = "default_app_every")]
    pub every_seconds: u64,
    /// The VM's guest-agent socket at the source site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_agent: Option<PathBuf>,
    /// Run before the cut (absolute path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_hook: Option<PathBuf>,
    /// Run after the cut, and by the watchdog (absolute path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_hook: Option<PathBuf>,
    /// How long each step may take.
    #[serde(default = "default_hook_timeout")]
    pub timeout_seconds: u64,
}

fn default_app_every() -> u64 {
    3600
}
fn default_hook_timeout() -> u64 {
    30
}

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    /// The network it is on at the source site; the recovery site maps it.
    pub network: String,
    /// Its MAC address, if fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// When a booted VM counts as healthy: every check given must pass within
/// the timeout. With none given, the VM is healthy once QEMU runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// A serial-console line containing this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// A guest TCP port that must accept a connection (reached through the
    /// first NIC: forwarded from the host's loopback on user networking).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_port: Option<u16>,
    /// How long the checks may take, from launch.
    #[serde(default = "default_health_timeout")]
    pub timeout_seconds: u64,
}

impl Default for Health {
    fn default() -> Health {
        Health { serial: None, tcp_port: None, timeout_seconds: default_health_timeout() }
    }
}

impl DirectBoot {
    /// Checks the kernel and initrd with [`crate::trust::check_private_executable`]:
    /// QEMU boots them with root's rights over the recovered disks.
    pub fn check_trusted_files(&self) -> Result<(), crate::trust::TrustError> {
        crate::trust::check_private_executable(&self.kernel, "boot kernel")?;
        if let Some(i) = &self.initrd {
            crate::trust::check_private_executable(i, "boot initrd")?;
        }
        Ok(())
    }
}

/// Direct kernel boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectBoot {
    /// The kernel image (a path at the recovery site).
    pub kernel: PathBuf,
    /// The initramfs, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    /// The kernel command line.
    #[serde(default)]
    pub append: String,
}

fn default_memory() -> u32 {
    512
}
fn default_cpus() -> u32 {
    1
}
fn default_health_timeout() -> u64 {
    300
}

/// Checks a VM or network name: it becomes a directory and a QEMU id.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {name:?} is not valid: use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.' or '-'"
        ))
    }
}

impl VmDefinition {
    /// Parses and validates a definition; `what` names it in errors.
    pub fn parse(text: &str, what: &str) -> Result<VmDefinition, RecoveryError> {
        let def: VmDefinition = toml::from_str(text)
            .map_err(|e| RecoveryError::Definition { what: what.to_string(), why: e.to_string() })?;
        def.validate().map_err(|why| RecoveryError::Definition { what: what.to_string(), why })?;
        Ok(def)
    }

    /// The definition as TOML (what `parse` reads back).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a VM definition always serializes")
    }

    /// Every definition in `dir` (the home's `vms/`: one `NAME.toml` each),
    /// sorted by name; none if `dir` does not exist.
    pub fn load_dir(dir: &std::path::Path) -> Result<Vec<VmDefinition>, RecoveryError> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(RecoveryError::io("listing", dir, e)),
        };
        let mut vms = Vec::new();
        for e in entries {
            let path = e.map_err(|e| RecoveryError::io("listing", dir, e))?.path();
            if path.extension().is_some_and(|x| x == "toml") {
                let text = std::fs::read_to_string(&path).map_err(|e| RecoveryError::io("reading", &path, e))?;
                vms.push(VmDefinition::parse(&text, &path.display().to_string())?);
            }
        }
        vms.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(vms)
    }

    /// The definition in `dir` that names disk `disk`, if any.
    pub fn of_disk(dir: &std::path::Path, disk: &str) -> Result<Option<VmDefinition>, RecoveryError> {
        Ok(VmDefinition::load_dir(dir)?.into_iter().find(|v| v.disks.iter().any(|d| d == disk)))
    }

    /// Checks every field; the error says which and why.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_fields()
    }

    /// Checks that the files this definition runs or boots as root (its
    /// app-consistency hooks, its boot kernel and initrd) exist and are as
    /// private as the key file: see [`crate::trust`]. `vm define` calls it,
    /// and each use checks its file again. A kernel that does not exist here
    /// is left to the boot at the recovery site, which checks it.
    pub fn check_trusted_files(&self) -> Result<(), crate::trust::TrustError> {
        if let Some(a) = &self.app_consistent {
            for (p, what) in [(&a.pre_hook, "pre-cut hook"), (&a.post_hook, "post-cut hook")] {
                if let Some(p) = p {
                    crate::trust::check_private_executable(p, what)?;
                }
            }
        }
        // The kernel and initrd are paths at the recovery site: where they
        // do not exist (the protected site), the boot checks them there.
        if let Some(b) = self.boot.as_ref().filter(|b| b.kernel.symlink_metadata().is_ok()) {
            b.check_trusted_files()?;
        }
        Ok(())
    }

    fn validate_fields(&self) -> Result<(), String> {
        check_name("VM name", &self.name)?;
        if self.disks.is_empty() {
            return Err("a VM needs at least one disk".into());
        }
        for (i, d) in self.disks.iter().enumerate() {
            check_name("disk name", d)?;
            if self.disks[..i].contains(d) {
                return Err(format!("disk {d:?} is listed twice"));
            }
        }
        if !(16..=4 << 20).contains(&self.memory_mib) {
            return Err(format!("memory_mib = {}: use 16 to 4194304 MiB", self.memory_mib));
        }
        if !(1..=255).contains(&self.cpus) {
            return Err(format!("cpus = {}: use 1 to 255", self.cpus));
        }
        for (i, n) in self.nics.iter().enumerate() {
            check_name(&format!("network of NIC {i}"), &n.network)?;
            if let Some(mac) = &n.mac {
                let parts: Vec<&str> = mac.split(':').collect();
                if parts.len() != 6 || !parts.iter().all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok()) {
                    return Err(format!("NIC {i}: mac {mac:?} is not six hex pairs like 52:54:00:12:34:56"));
                }
            }
        }
        if self.health.tcp_port.is_some() && self.nics.is_empty() {
            return Err("health.tcp_port needs a NIC to reach the guest through".into());
        }
        if self.health.serial.as_deref() == Some("") {
            return Err("health.serial is empty: give the text a console line must contain".into());
        }
        if !(1..=86_400).contains(&self.health.timeout_seconds) {
            return Err(format!("health.timeout_seconds = {}: use 1 to 86400", self.health.timeout_seconds));
        }
        if let Some(g) = &self.consistency_group {
            check_name("consistency_group", g)?;
        }
        if let Some(a) = &self.app_consistent {
            let hooks = (&a.pre_hook, &a.post_hook);
            match (&a.guest_agent, hooks) {
                (Some(g), (None, None)) if g.is_absolute() => {}
                (None, (Some(pre), Some(post))) if pre.is_absolute() && post.is_absolute() => {}
                _ => {
                    return Err("app_consistent: give either guest_agent or both pre_hook and post_hook, as absolute \
                                paths"
                        .into())
                }
            }
            if a.every_seconds == 0 || !(1..=3600).contains(&a.timeout_seconds) {
                return Err("app_consistent: every_seconds must be at least 1, timeout_seconds 1 to 3600".into());
            }
        }
        if let Some(b) = &self.boot {
            if !b.kernel.is_absolute() || b.initrd.as_ref().is_some_and(|i| !i.is_absolute()) {
                return Err("boot.kernel and boot.initrd must be absolute paths".into());
            }
            if b.append.contains('\n') {
                return Err("boot.append must be one line".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
name = "web1"
memory_mib = 1024
cpus = 2
disks = ["web1-root", "web1-data"]

[[nics]]
network = "prod"
mac = "52:54:00:12:34:56"

[health]
serial = "login:"
tcp_port = 22
timeout_seconds = 120

[boot]
kernel = "/srv/vmlinuz"
initrd = "/srv/initrd"
append = "console=ttyS0"
"#;

    #[test]
    fn parses_round_trips_and_defaults() {
        let d = VmDefinition::parse(FULL, "test").unwrap();
        assert_eq!(d.disks, ["web1-root", "web1-data"]);
        assert_eq!(d.health.tcp_port, Some(22));
        assert_eq!(VmDefinition::parse(&d.to_toml(), "again").unwrap(), d);
        let min = VmDefinition::parse("name = \"a\"\ndisks = [\"a\"]\n", "min").unwrap();
        assert_eq!((min.memory_mib, min.cpus, min.health.timeout_seconds), (512, 1, 300));
    }

    #[test]
    fn bad_definitions_name_the_field() {
        for (text, needle) in [
            ("name = \"a\"\ndisks = []\n", "at least one disk"),
            ("name = \"../x\"\ndisks = [\"a\"]\n", "VM name"),
            ("name = \"a\"\ndisks = [\"a\", \"a\"]\n", "listed twice"),
            ("name = \"a\"\ndisks = [\"a\"]\ncpus = 0\n", "cpus"),
            ("name = \"a\"\ndisks = [\"a\"]\n[[nics]]\nnetwork = \"p\"\nmac = \"zz\"\n", "mac"),
            ("name = \"a\"\ndisks = [\"a\"]\n[health]\ntcp_port = 22\n", "needs a NIC"),
            ("name = \"a\"\ndisks = [\"a\"]\n[boot]\nkernel = \"vmlinuz\"\n", "absolute"),
            ("name = \"a\"\ndisks = [\"a\"]\nram = 5\n", "unknown field"),
        ] {
            let e = VmDefinition::parse(text, "t").unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }
}
