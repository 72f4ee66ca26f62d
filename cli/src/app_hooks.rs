//! Quiescing the guest around an app-consistent cut: through the QEMU guest
//! agent (fsfreeze) or the user's pre- and post-cut hooks, with a watchdog
//! that resumes the guest (thaw, or the post hook) if this process dies in
//! between.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use recovery::vmdef::AppConsistency;

/// How the guest is quiesced.
enum Quiesce {
    /// guest-fsfreeze-freeze / thaw on this guest-agent socket.
    Agent(PathBuf),
    /// The user's hooks.
    Hooks { pre: PathBuf, post: PathBuf },
}

/// One disk's app-consistent cut (a `shipper::CutHook`).
pub struct Hooks {
    vm: String,
    disk: String,
    how: Quiesce,
    timeout: Duration,
    watchdog: Mutex<Option<Child>>,
    /// `before` refused a hook another user could change: nothing was
    /// quiesced, so `after` runs nothing either.
    refused: std::sync::atomic::AtomicBool,
}

impl Hooks {
    pub fn new(vm: &str, disk: &str, a: &AppConsistency) -> Option<Hooks> {
        let how = match (&a.guest_agent, &a.pre_hook, &a.post_hook) {
            (Some(g), _, _) => Quiesce::Agent(g.clone()),
            (None, Some(pre), Some(post)) => Quiesce::Hooks { pre: pre.clone(), post: post.clone() },
            _ => return None,
        };
        Some(Hooks {
            vm: vm.to_string(),
            disk: disk.to_string(),
            how,
            timeout: Duration::from_secs(a.timeout_seconds),
            watchdog: Mutex::new(None),
            refused: std::sync::atomic::AtomicBool::new(false),
        })
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

    /// Runs a hook to its end or its timeout (then kills it). A hook runs as
    /// root, so it must be as private as the key file: checked right before
    /// each run (it may have been loosened since `vm define`).
    fn run(&self, program: &Path, which: &str) -> Result<(), String> {
        recovery::trust::check_private_executable(program, &format!("{which}-cut hook")).map_err(|e| e.to_string())?;
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

impl Hooks {
    /// Starts the watchdog: in its own process group, so it outlives us, it
    /// resumes the guest once the timeout has passed unless `after` stops it.
    fn start_watchdog(&self) -> Result<(), String> {
        let mut dog = match &self.how {
            Quiesce::Hooks { post, .. } => {
                let mut c = self.command(Path::new("/bin/sh"), "post");
                c.args(["-c", "sleep \"$1\"; exec \"$2\"", "lifeboat-thaw-watchdog"])
                    .arg(self.timeout.as_secs().to_string())
                    .arg(post);
                c
            }
            Quiesce::Agent(socket) => {
                let exe = std::env::current_exe().map_err(|e| format!("finding the lifeboat binary: {e}"))?;
                let mut c = Command::new(exe);
                c.arg("guest-thaw").arg("--socket").arg(socket).args(["--after", &self.timeout.as_secs().to_string()]);
                c.stdin(Stdio::null()).stdout(Stdio::null());
                c
            }
        };
        dog.stderr(Stdio::null()).process_group(0);
        let child = dog.spawn().map_err(|e| format!("starting the resume watchdog: {e}"))?;
        *self.watchdog.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(child);
        Ok(())
    }
}

impl shipper::CutHook for Hooks {
    fn before(&self) -> Result<(), String> {
        if let Quiesce::Hooks { pre, post } = &self.how {
            // The watchdog may run the post hook: neither runs unless both pass.
            let trusted = recovery::trust::check_private_executable(pre, "pre-cut hook")
                .and_then(|()| recovery::trust::check_private_executable(post, "post-cut hook"));
            self.refused.store(trusted.is_err(), std::sync::atomic::Ordering::Relaxed);
            trusted.map_err(|e| e.to_string())?;
        }
        self.start_watchdog()?;
        match &self.how {
            Quiesce::Hooks { pre, .. } => self.run(pre, "pre"),
            Quiesce::Agent(socket) => match crate::qga::execute(socket, "guest-fsfreeze-freeze", self.timeout) {
                Ok(n) => {
                    if n.as_u64() == Some(0) {
                        return Err("the guest agent froze no file system".into());
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            },
        }
    }

    fn after(&self) -> Result<(), String> {
        if self.refused.swap(false, std::sync::atomic::Ordering::Relaxed) {
            return Ok(()); // `before` said why; nothing ran, nothing to resume
        }
        if let Some(mut dog) = self.watchdog.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            // The group is the watchdog's own (process_group(0)), not yet
            // reaped, so its id is not reused.
            let _ = system::process::signal_group(dog.id(), libc::SIGKILL);
            let _ = dog.wait();
        }
        match &self.how {
            Quiesce::Hooks { post, .. } => self.run(post, "post"),
            // Thawed even if the freeze reported an error: a partial freeze
            // must not stay.
            Quiesce::Agent(socket) => crate::qga::execute(socket, "guest-fsfreeze-thaw", self.timeout).map(|_| ()),
        }
    }
}
