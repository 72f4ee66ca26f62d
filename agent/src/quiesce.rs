//! Quiescing the guest around an app-consistent cut: through the QEMU guest
//! agent (fsfreeze) or the user's pre- and post-cut hooks, with a watchdog
//! that resumes the guest (thaw, or the post hook) if this process dies in
//! between.
//!
//! The watchdog of a guest agent runs `EXE guest-thaw --socket S --after N`
//! with this process's own executable: the binary that links this crate
//! provides that command (it calls [`guest_agent`]).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use recovery::json_lines::JsonLines;
use recovery::trust::TrustError;
use recovery::vmdef::AppConsistency;
use shipper::{CutHook, HookError};

/// Which of the user's hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// Run before the cut (quiesce).
    Pre,
    /// Run after the cut (resume).
    Post,
}

impl std::fmt::Display for Which {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Which::Pre => "pre",
            Which::Post => "post",
        })
    }
}

/// Why quiescing or resuming the guest failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuiesceError {
    /// A hook another user could change (it runs as root).
    #[error("{0}")]
    Untrusted(#[from] TrustError),
    /// The hook could not be started.
    #[error("the {which}-cut hook {} cannot run: {source}", program.display())]
    Spawn {
        /// Which hook.
        which: Which,
        /// Its path.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The hook exited unsuccessfully.
    #[error("the {which}-cut hook {} failed ({status}): {stderr}", program.display())]
    Failed {
        /// Which hook.
        which: Which,
        /// Its path.
        program: PathBuf,
        /// How it exited.
        status: std::process::ExitStatus,
        /// What it said on stderr.
        stderr: String,
    },
    /// The hook ran too long and was killed.
    #[error("the {which}-cut hook {} ran past its {seconds} s timeout and was killed", program.display())]
    TimedOut {
        /// Which hook.
        which: Which,
        /// Its path.
        program: PathBuf,
        /// The timeout.
        seconds: u64,
    },
    /// Waiting for the hook failed.
    #[error("waiting for the {which}-cut hook: {source}")]
    Wait {
        /// Which hook.
        which: Which,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The watchdog that resumes the guest could not start.
    #[error("starting the resume watchdog: {0}")]
    Watchdog(#[source] std::io::Error),
    /// Talking to the guest agent failed.
    #[error("guest agent {} ({command}): {source}", socket.display())]
    GuestAgent {
        /// Its host-side socket.
        socket: PathBuf,
        /// The command sent.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The guest agent answered the command with an error.
    #[error("guest agent {} ({command}): {reason}", socket.display())]
    Refused {
        /// Its host-side socket.
        socket: PathBuf,
        /// The command sent.
        command: String,
        /// The agent's description.
        reason: String,
    },
    /// The freeze succeeded but froze nothing.
    #[error("the guest agent froze no file system")]
    NothingFrozen,
}

/// How the guest is quiesced.
enum Quiesce {
    /// guest-fsfreeze-freeze / thaw on this guest-agent socket.
    Agent(PathBuf),
    /// The user's hooks.
    Hooks { pre: PathBuf, post: PathBuf },
}

/// One disk's app-consistent cut (a [`CutHook`]).
pub struct Hooks {
    vm: String,
    disk: String,
    how: Quiesce,
    timeout: Duration,
    watchdog: Mutex<Option<Child>>,
    /// `before` refused a hook another user could change: nothing was
    /// quiesced, so `after` runs nothing either.
    refused: AtomicBool,
}

impl Hooks {
    /// The quiescing `a` asks for, for disk `disk` of VM `vm`; `None` if
    /// it names neither a guest agent nor both hooks.
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
            refused: AtomicBool::new(false),
        })
    }

    fn command(&self, program: &Path, which: Which) -> Command {
        let mut c = Command::new(program);
        c.env("LIFEBOAT_VM", &self.vm)
            .env("LIFEBOAT_DISK", &self.disk)
            .env("LIFEBOAT_HOOK", which.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }

    /// Runs a hook to its end or its timeout (then kills it). A hook runs as
    /// root, so it must be as private as the key file: checked right before
    /// each run (it may have been loosened since `vm define`).
    fn run(&self, program: &Path, which: Which) -> Result<(), QuiesceError> {
        recovery::trust::check_private_executable(program, &format!("{which}-cut hook"))?;
        let mut child = self.command(program, which).spawn().map_err(|source| QuiesceError::Spawn {
            which,
            program: program.to_path_buf(),
            source,
        })?;
        let started = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    let out = child.wait_with_output().map(|o| o.stderr).unwrap_or_default();
                    return Err(QuiesceError::Failed {
                        which,
                        program: program.to_path_buf(),
                        status,
                        stderr: String::from_utf8_lossy(&out).trim().to_string(),
                    });
                }
                Ok(None) if started.elapsed() >= self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(QuiesceError::TimedOut {
                        which,
                        program: program.to_path_buf(),
                        seconds: self.timeout.as_secs(),
                    });
                }
                // Polled: a hook is a child of ours with no pidfd to wait on
                // with a timeout in std.
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(source) => return Err(QuiesceError::Wait { which, source }),
            }
        }
    }

    /// Starts the watchdog: in its own process group, so it outlives us, it
    /// resumes the guest once the timeout has passed unless `after` stops it.
    fn start_watchdog(&self) -> Result<(), QuiesceError> {
        let mut dog = match &self.how {
            Quiesce::Hooks { post, .. } => {
                let mut c = self.command(Path::new("/bin/sh"), Which::Post);
                c.args(["-c", "sleep \"$1\"; exec \"$2\"", "lifeboat-thaw-watchdog"])
                    .arg(self.timeout.as_secs().to_string())
                    .arg(post);
                c
            }
            Quiesce::Agent(socket) => {
                let mut c = Command::new(std::env::current_exe().map_err(QuiesceError::Watchdog)?);
                c.arg("guest-thaw").arg("--socket").arg(socket).args(["--after", &self.timeout.as_secs().to_string()]);
                c.stdin(Stdio::null()).stdout(Stdio::null());
                c
            }
        };
        dog.stderr(Stdio::null()).process_group(0);
        let child = dog.spawn().map_err(QuiesceError::Watchdog)?;
        *self.watchdog.lock().unwrap_or_else(PoisonError::into_inner) = Some(child);
        Ok(())
    }

    fn quiesce(&self) -> Result<(), QuiesceError> {
        if let Quiesce::Hooks { pre, post } = &self.how {
            // The watchdog may run the post hook: neither runs unless both pass.
            let trusted = recovery::trust::check_private_executable(pre, "pre-cut hook")
                .and_then(|()| recovery::trust::check_private_executable(post, "post-cut hook"));
            self.refused.store(trusted.is_err(), Ordering::Relaxed);
            trusted?;
        }
        self.start_watchdog()?;
        match &self.how {
            Quiesce::Hooks { pre, .. } => self.run(pre, Which::Pre),
            Quiesce::Agent(socket) => {
                let frozen = guest_agent(socket, "guest-fsfreeze-freeze", self.timeout)?;
                if frozen.as_u64() == Some(0) {
                    return Err(QuiesceError::NothingFrozen);
                }
                Ok(())
            }
        }
    }

    fn resume(&self) -> Result<(), QuiesceError> {
        if self.refused.swap(false, Ordering::Relaxed) {
            return Ok(()); // `before` said why; nothing ran, nothing to resume
        }
        if let Some(mut dog) = self.watchdog.lock().unwrap_or_else(PoisonError::into_inner).take() {
            // The group is the watchdog's own (process_group(0)), not yet
            // reaped, so its id is not reused.
            let _ = system::process::signal_group(dog.id(), libc::SIGKILL);
            let _ = dog.wait();
        }
        match &self.how {
            Quiesce::Hooks { post, .. } => self.run(post, Which::Post),
            // Thawed even if the freeze reported an error: a partial freeze
            // must not stay.
            Quiesce::Agent(socket) => guest_agent(socket, "guest-fsfreeze-thaw", self.timeout).map(|_| ()),
        }
    }
}

impl CutHook for Hooks {
    fn before(&self) -> Result<(), HookError> {
        self.quiesce().map_err(HookError::from)
    }

    fn after(&self) -> Result<(), HookError> {
        self.resume().map_err(HookError::from)
    }
}

/// Runs `command` on the QEMU guest agent at `socket` and returns its
/// `return` value: `guest-sync-delimited` first, then the command, on one
/// connection per command (so a watchdog can use the single-client channel
/// after we are gone).
pub fn guest_agent(socket: &Path, command: &str, timeout: Duration) -> Result<serde_json::Value, QuiesceError> {
    let fail =
        |source: std::io::Error| QuiesceError::GuestAgent { socket: socket.into(), command: command.into(), source };
    let deadline = Instant::now() + timeout;
    let mut c = JsonLines::connect(socket).map_err(fail)?;
    let mut id = [0u8; 4];
    getrandom::fill(&mut id).map_err(|e| fail(std::io::Error::other(e)))?;
    let id = u32::from_le_bytes(id) & 0x7fff_ffff;
    // 0xFF resets the agent's parser; its reply starts with 0xFF too, so
    // anything a previous client left unread is skipped.
    c.send_raw(&[0xFF], deadline).map_err(fail)?;
    c.execute("guest-sync-delimited", Some(serde_json::json!({ "id": id })), deadline).map_err(fail)?;
    c.skip_through(0xFF, deadline).map_err(fail)?;
    loop {
        match c.next(deadline) {
            Ok(Some(v)) if v["return"].as_u64() == Some(u64::from(id)) => break,
            Ok(Some(_)) => {}
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {} // left over from an earlier client
            Ok(None) => return Err(fail(std::io::Error::other("the agent closed the channel"))),
            Err(e) => return Err(fail(e)),
        }
    }
    c.execute(command, None, deadline).map_err(fail)?;
    let reply =
        c.next(deadline).map_err(fail)?.ok_or_else(|| fail(std::io::Error::other("the agent closed the channel")))?;
    match reply.get("return") {
        Some(ret) => Ok(ret.clone()),
        None => Err(QuiesceError::Refused {
            socket: socket.into(),
            command: command.into(),
            reason: reply["error"]["desc"].as_str().map_or_else(|| reply.to_string(), str::to_string),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    /// A guest agent that answers the sync, then `reply` to the command,
    /// after writing `stale` as an earlier client's leftovers.
    fn fake_agent(dir: &Path, stale: &'static [u8], reply: &'static str) -> (PathBuf, std::thread::JoinHandle<String>) {
        let path = dir.join("qga.sock");
        let l = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            let mut reset = [0u8; 1];
            std::io::Read::read_exact(&mut r, &mut reset).unwrap();
            assert_eq!(reset, [0xFF]);
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let sync: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(sync["execute"], "guest-sync-delimited");
            w.write_all(stale).unwrap();
            w.write_all(b"\xff").unwrap();
            writeln!(w, "{{\"return\": {}}}", sync["arguments"]["id"]).unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            writeln!(w, "{reply}").unwrap();
            line
        });
        (path, t)
    }

    #[test]
    fn a_command_runs_after_the_sync_and_returns_its_value() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, agent) = fake_agent(dir.path(), b"{\"return\": 1}\ngarbage", "{\"return\": 3}");
        let v = guest_agent(&sock, "guest-fsfreeze-freeze", Duration::from_secs(10)).unwrap();
        assert_eq!(v, 3);
        let sent: serde_json::Value = serde_json::from_str(&agent.join().unwrap()).unwrap();
        assert_eq!(sent["execute"], "guest-fsfreeze-freeze");
    }

    #[test]
    fn an_agent_error_names_the_socket_and_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, agent) =
            fake_agent(dir.path(), b"", "{\"error\": {\"class\": \"x\", \"desc\": \"frozen already\"}}");
        let e = guest_agent(&sock, "guest-fsfreeze-freeze", Duration::from_secs(10)).unwrap_err();
        agent.join().unwrap();
        assert!(matches!(&e, QuiesceError::Refused { reason, .. } if reason == "frozen already"), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("qga.sock") && text.contains("guest-fsfreeze-freeze"), "{text}");
    }

    #[test]
    fn a_missing_agent_is_a_clear_error() {
        let e = guest_agent(Path::new("/nonexistent/qga.sock"), "guest-ping", Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, QuiesceError::GuestAgent { .. }));
        assert!(e.to_string().starts_with("guest agent /nonexistent/qga.sock (guest-ping): "), "{e}");
    }
}
