//! Who and where we are: read from `/proc` and `/etc`; and the umask.
#![allow(unsafe_code)]

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// The host's name (the kernel's), or `unknown`.
pub fn hostname() -> String {
    kernel_hostname().unwrap_or_else(|| "unknown".into())
}

/// The host's name (the kernel's), if readable and not empty.
pub fn kernel_hostname() -> Option<String> {
    read_trimmed("/proc/sys/kernel/hostname")
}

/// The host's machine id (`/etc/machine-id`, else D-Bus's copy), if any.
pub fn machine_id() -> Option<String> {
    read_trimmed("/etc/machine-id").or_else(|| read_trimmed("/var/lib/dbus/machine-id"))
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), if readable.
pub fn boot_id() -> Option<String> {
    read_trimmed("/proc/sys/kernel/random/boot_id")
}

/// The effective uid of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// Sets the process's umask; returns the previous one. Call it before any
/// thread exists (the umask is process-wide).
pub fn set_umask(mask: u32) -> u32 {
    // SAFETY: umask(2) cannot fail and touches no memory.
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}

/// The name `/etc/passwd` gives `uid`, if any.
pub fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id: u32 = f.nth(1)?.parse().ok()?;
        (id == uid && !name.is_empty()).then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_host_and_user_are_read() {
        assert!(!hostname().is_empty());
        assert_eq!(boot_id().map(|b| b.len()), Some(36), "a boot id is a UUID");
        let uid = effective_uid();
        assert_ne!(uid, u32::MAX);
        if uid == 0 {
            assert_eq!(user_name(0).as_deref(), Some("root"));
        }
    }
}
