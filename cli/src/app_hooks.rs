//! The user's pre- and post-cut hooks of an app-consistent point, with a
//! watchdog that runs the post hook if this process dies in between.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use recovery::vmdef::AppConsistency;

/// The hooks of one disk's app-consistent cut (a `shipper::CutHook`).
pub struct Hooks {
    vm: String,
    disk: String,
    pre: PathBuf,
    post: PathBuf,
    timeout: Duration,
    watchdog: Mutex<Option<Child>>,
}

impl Hooks {
    pub fn new(vm: &str, disk: &str, a: &AppConsistency) -> Hooks {
        Hooks {
            vm: vm.to_string(),
            disk: disk.to_string(),
            pre: a.pre_hook.clone(),
            post: a.post_hook.clone(),
            timeout: Duration::from_secs(a.timeout_seconds),
            watchdog: Mutex::new(None),
        }
    }

    fn command(&self, program: &Path, which: &str) -> Command {
        let mut c = Command::new(program);
        c.env("LIFEBOAT_VM", &self.vm)
            .env("LIFEBOAT_DISK", &self.disk)
            .env("LIFEBOAT_HOOK", which)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }

    /// Runs a hook to its end or its timeout (then kills it).
    fn run(&self, program: &Path, which: &str) -> Result<(), String> {
        let mut child = self
            .command(program, which)
            .spawn()
            .map_err(|e| format!("the {which}-cut hook {} cannot run: {e}", program.display()))?;
        let started = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    let out = child.wait_with_output().map(|o| o.stderr).unwrap_or_default();
                    return Err(format!(
                        "the {which}-cut hook {} failed ({status}): {}",
                        program.display(),
                        String::from_utf8_lossy(&out).trim()
                    ));
                }
                Ok(None) if started.elapsed() >= self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "the {which}-cut hook {} ran past its {} s timeout and was killed",
                        program.display(),
                        self.timeout.as_secs()
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(format!("waiting for the {which}-cut hook: {e}")),
            }
        }
    }
}

impl shipper::CutHook for Hooks {
    fn before(&self) -> Result<(), String> {
        // The watchdog first: in its own process group, so it outlives us,
        // it runs the post hook once the timeout has passed unless `after`
        // stops it.
        let mut dog = self.command(Path::new("/bin/sh"), "post");
        dog.args(["-c", "sleep \"$1\"; exec \"$2\"", "lifeboat-thaw-watchdog"])
            .arg(self.timeout.as_secs().to_string())
            .arg(&self.post)
            .stderr(Stdio::null())
            .process_group(0);
        let child = dog.spawn().map_err(|e| format!("starting the post-hook watchdog: {e}"))?;
        *self.watchdog.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(child);
        self.run(&self.pre, "pre")
    }

    fn after(&self) -> Result<(), String> {
        if let Some(mut dog) = self.watchdog.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            if let Ok(pgid) = libc::pid_t::try_from(dog.id()) {
                // SAFETY: kill(2) takes no pointers; the group is the watchdog's own
                // (process_group(0)), not yet reaped, so its id is not reused.
                let _ = unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
            let _ = dog.wait();
        }
        self.run(&self.post, "post")
    }
}
