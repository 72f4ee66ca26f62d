//! Processes: the pid of a unix socket's peer (`SO_PEERCRED`), a pidfd for
//! it (`pidfd_open(2)`, a handle that stays tied to that one process even if
//! its number is reused), waiting on the pidfd for the process to exit
//! (`poll(2)`), and `kill(2)`.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// The pid of the process at the other end of a connected unix socket, as
/// the kernel recorded it (for a server socket: the process that listened).
/// `None` when the kernel cannot name it here (the peer is in another pid
/// namespace, where it reports 0).
pub fn peer_pid(s: &UnixStream) -> io::Result<Option<u32>> {
    Ok(crate::socket::peer_credentials(s)?.pid)
}

/// A pidfd: one process, whatever later happens to its pid number.
#[derive(Debug)]
pub struct Pidfd {
    fd: OwnedFd,
    pid: u32,
}

impl Pidfd {
    /// Opens a pidfd for `pid` (`ESRCH` if no such process is left).
    pub fn open(pid: u32) -> io::Result<Pidfd> {
        let raw = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
        // SAFETY: pidfd_open takes a pid and flags (no pointers) and returns a
        // new descriptor or -1.
        let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, raw, 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = i32::try_from(rc).map_err(|_| io::Error::other("pidfd_open returned an out-of-range descriptor"))?;
        // SAFETY: `fd` was just returned by pidfd_open, is open, and nothing
        // else owns it; the OwnedFd closes it exactly once.
        Ok(Pidfd { fd: unsafe { OwnedFd::from_raw_fd(fd) }, pid })
    }

    /// The pid it was opened for.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits up to `timeout` for the process to exit; true once it has.
    pub fn wait_exit(&self, timeout: Duration) -> io::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = libc::c_int::try_from(left.as_millis().min(60_000)).unwrap_or(60_000);
            let mut p = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: `p` is one live pollfd and the count passed is 1; the
            // descriptor is owned by `self` and outlives the call.
            let rc = unsafe { libc::poll(&mut p, 1, ms) };
            if rc > 0 {
                return Ok(true);
            }
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            } else if left.is_zero() {
                return Ok(false);
            }
        }
    }
}

/// Sends SIGKILL to `pid`. The caller has checked that the pid is still the
/// process it means.
pub fn kill9(pid: u32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: kill(2) takes no pointers.
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends signal `sig` to `pid`; `ESRCH` when no such process is left. The
/// caller has checked that the pid is still the process it means.
pub fn signal(pid: u32, sig: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: kill(2) takes no pointers.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends signal `sig` to every process of group `pgid` (a child started in
/// a group of its own and not yet reaped, so its id is not reused).
pub fn signal_group(pgid: u32, sig: libc::c_int) -> io::Result<()> {
    let pgid = libc::pid_t::try_from(pgid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: kill(2) takes no pointers.
    if unsafe { libc::kill(-pgid, sig) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether a process `pid` exists (signal 0; one of another user counts).
/// A pid says nothing about *which* process it is: to follow one process,
/// hold a [`Pidfd`].
pub fn exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: kill with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) }
}

/// What `/proc/PID/stat` says of a process: its state letter (field 3:
/// `R`, `S`, `Z` for a zombie, ...) and its start time (field 22, clock
/// ticks after boot), which with the pid names one process: a reused pid
/// has another start time. `None` if there is no such process. The command
/// name (field 2) may hold spaces and `)`, so fields are counted after its
/// last `)`.
pub fn stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let start = rest.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// Whether process `pid` is alive (not a zombie) and has `arg` among its
/// command-line arguments: a pid read from a file is trusted only while it
/// is still the process that was started with that argument (its pid file,
/// its socket), never a reuse of its number by another program.
pub fn alive_with_arg(pid: u32, arg: &std::ffi::OsStr) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let ours = cmdline.split(|&b| b == 0).any(|a| a == arg.as_bytes());
    ours && stat(pid).is_some_and(|(state, _)| state != 'Z')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_counts_as_ours_only_with_its_argument_and_until_it_dies() {
        use std::io::BufRead;
        // A child that says when it runs: before that its command line may
        // still be the forked parent's (or empty, mid-exec).
        let mut child = std::process::Command::new("python3")
            .args(["-c", "import time; print('up', flush=True); time.sleep(60)", "30.5"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line, "up\n");
        let pid = child.id();
        assert!(alive_with_arg(pid, "30.5".as_ref()));
        assert!(!alive_with_arg(pid, "/run/other.pid".as_ref()), "another program under a reused pid");
        signal(pid, libc::SIGKILL).unwrap();
        assert!(Pidfd::open(pid).unwrap().wait_exit(Duration::from_secs(10)).unwrap());
        assert!(!alive_with_arg(pid, "30.5".as_ref()), "a zombie is not alive");
        child.wait().unwrap();
    }

    #[test]
    fn a_child_exists_until_reaped_and_its_pidfd_sees_it_exit() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        assert!(exists(pid));
        let (state, start) = stat(pid).expect("a running child has a stat");
        assert!(state != 'Z' && start > 0, "{state} {start}");
        let fd = Pidfd::open(pid).unwrap();
        assert!(!fd.wait_exit(Duration::from_millis(10)).unwrap(), "a sleeping child reported as exited");
        signal(pid, libc::SIGKILL).unwrap();
        assert!(fd.wait_exit(Duration::from_secs(10)).unwrap());
        assert_eq!(stat(pid), Some(('Z', start)), "an unreaped dead child is a zombie");
        child.wait().unwrap();
        assert!(!exists(pid) || Pidfd::open(pid).is_ok(), "a reaped pid is gone unless reused");
        assert_eq!(signal(pid, 0).map_err(|e| e.raw_os_error()), Err(Some(libc::ESRCH)));
    }
}
