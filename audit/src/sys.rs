//! What the crate asks of the operating system: `flock(2)` (the one unsafe
//! call), and who and where the writer is (read from `/proc` and `/etc`).
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Takes `flock(2)` on `file`: exclusive or shared, waiting for it. The lock
/// belongs to the open file description and is released when `file` closes,
/// so it excludes other processes *and* other descriptors of this process.
pub(crate) fn lock(file: &File, exclusive: bool) -> io::Result<()> {
    let op = if exclusive { libc::LOCK_EX } else { libc::LOCK_SH };
    loop {
        // SAFETY: flock only reads the descriptor number and the flag; `file`
        // owns the descriptor and outlives the call. No memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// The host's name, or `unknown`.
pub(crate) fn hostname() -> String {
    read_trimmed("/proc/sys/kernel/hostname").unwrap_or_else(|| "unknown".into())
}

/// The effective uid of this process (second field of `Uid:` in
/// `/proc/self/status`); `u32::MAX` if that cannot be read.
pub(crate) fn effective_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|f| f.parse().ok())
        .unwrap_or(u32::MAX)
}

/// The name `/etc/passwd` gives `uid`, if any.
pub(crate) fn user_name(uid: u32) -> Option<String> {
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
    fn who_and_where() {
        assert_ne!(effective_uid(), u32::MAX);
        assert!(!hostname().is_empty());
        assert_eq!(user_name(0).as_deref(), Some("root"));
    }
}
