//! Child processes: checking that one succeeded, and waiting for one with a
//! deadline so that a hung process fails the test instead of hanging it.

use std::process::{Child, ExitStatus, Output};
use std::thread;
use std::time::{Duration, Instant};

/// Fails unless `out` is a successful exit, showing its stdout and stderr.
/// `what` names the command in the message.
pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits up to `limit` for `child` to exit. After that it kills and reaps the
/// child and returns `None`.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Waits up to `limit` for `child` to exit; after that kills it and fails,
/// naming it `what`.
pub fn wait_for(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    wait_timeout(child, limit).unwrap_or_else(|| panic!("{what} did not finish within {limit:?}"))
}

/// A command's stdout as JSON, or a failure showing what it printed.
pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("not JSON ({e}): {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

/// Whether process `pid` exists and is not a zombie.
pub fn pid_alive(pid: u64) -> bool {
    u32::try_from(pid).ok().and_then(system::process::stat).is_some_and(|(state, _)| state != 'Z')
}
