//! Setting up a child process before it runs: what `std::process::Command`
//! cannot say by itself.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes `cmd`'s child start with at most `limit` open files (soft and hard
/// limit, so it cannot raise it): how a test meets the descriptor limit a
/// careless admin's unit file sets.
pub fn limit_open_files(cmd: &mut Command, limit: u64) {
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
        super::limit_open_files(&mut cmd, 77);
        let out = cmd.output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "77\n77\n");
    }
}
