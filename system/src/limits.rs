//! The process's limit on open files (`RLIMIT_NOFILE`).
#![allow(unsafe_code)]

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The soft and hard `RLIMIT_NOFILE` of this process.
fn open_files_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) writes one `rlimit` into the struct we pass, which
    // is writable and lives on our stack for the whole call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// The process's limit on open files, before and after
/// [`raise_open_files_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFilesLimit {
    /// The soft limit found at start.
    pub before: u64,
    /// The soft limit now.
    pub now: u64,
    /// The hard limit (the ceiling an unprivileged process may raise to).
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, but not past
/// [`OPEN_FILES_CEILING`]: children the process starts (hooks, qemu-img)
/// inherit the soft limit, and some of them still close every descriptor up
/// to it one by one. Never lowers it.
pub fn raise_open_files_limit() -> io::Result<OpenFilesLimit> {
    let (soft, hard) = open_files_limit()?;
    let want = hard.min(OPEN_FILES_CEILING).max(soft);
    if want > soft {
        let lim = libc::rlimit { rlim_cur: want, rlim_max: hard };
        // SAFETY: setrlimit(2) only reads the one `rlimit` we pass, which is
        // initialised and lives on our stack for the whole call.
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(OpenFilesLimit { before: soft, now: want, hard })
}

/// The highest soft limit on open files [`raise_open_files_limit`] sets.
pub const OPEN_FILES_CEILING: u64 = 65_536;

/// How many more files this process may open before it reaches its soft
/// `RLIMIT_NOFILE`, counted from `/proc/self/fd` (without the descriptor the
/// count itself uses). `None` when either cannot be read.
pub fn open_files_left() -> Option<u64> {
    let (soft, _) = open_files_limit().ok()?;
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count().saturating_sub(1);
    Some(soft.saturating_sub(u64::try_from(open).unwrap_or(u64::MAX)))
}

/// Makes `cmd`'s child start with at most `limit` open files (soft and hard
/// limit, so it cannot raise it): how a test meets the descriptor limit a
/// careless admin's unit file sets.
pub fn limit_child_open_files(cmd: &mut Command, limit: u64) {
    // SAFETY: the closure runs in the forked child before exec and only calls
    // setrlimit(2), which is async-signal-safe, on a value on its own stack;
    // it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit { rlim_cur: limit, rlim_max: limit };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_child_starts_with_the_limit() {
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args(["-c", "ulimit -n; ulimit -Hn"]);
        super::limit_child_open_files(&mut cmd, 77);
        let out = cmd.output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "77\n77\n");
    }

    use super::*;

    #[test]
    fn raising_never_lowers_and_stops_at_the_ceiling_and_a_new_file_takes_one_left() {
        let r = raise_open_files_limit().unwrap();
        assert!(r.now >= r.before && r.now <= r.hard.max(r.before), "{r:?}");
        assert!(r.now <= OPEN_FILES_CEILING.max(r.before), "{r:?}");
        assert_eq!(open_files_limit().unwrap().0, r.now);
        let again = raise_open_files_limit().unwrap();
        assert_eq!((again.before, again.now), (r.now, r.now), "a second raise changed the limit");
        let left = open_files_left().unwrap();
        let f = std::fs::File::open("/proc/self/stat").unwrap();
        assert_eq!(open_files_left().unwrap(), left - 1);
        drop(f);
    }
}
