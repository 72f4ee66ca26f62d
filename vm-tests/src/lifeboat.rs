//! The `lifeboat` binary as the end-to-end tests drive it: a scratch directory
//! with a lifeboat home in it, the commands (`protect`, `dirty --json`, ...),
//! and the `lifeboat filter` child process that serves a disk.
//!
//! The binary's path always comes from the caller: the cli tests pass
//! `env!("CARGO_BIN_EXE_lifeboat")`, the VM tests [`crate::paths::lifeboat_bin`].

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::process::{assert_ok, wait_timeout};

/// One test's scratch directory, holding a lifeboat home, images and sockets;
/// removed on drop. It sits in the temp dir under a short name because a unix
/// socket path is limited to 107 bytes.
pub struct Scratch {
    dir: tempfile::TempDir,
    /// The lifeboat home, `<scratch>/home`.
    pub home: Home,
}

impl Scratch {
    /// A fresh scratch directory named `PREFIX…`, with a home driven by `bin`.
    pub fn new(bin: impl Into<PathBuf>, prefix: &str) -> Scratch {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().expect("temp dir");
        let home = Home::new(bin, dir.path().join("home"));
        Scratch { dir, home }
    }

    /// The directory itself.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `name` inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A lifeboat home (`--home`) and the binary that runs in it.
pub struct Home {
    /// The home directory.
    pub dir: PathBuf,
    bin: PathBuf,
    /// Variables set for every command (a cloud vault's settings).
    env: Vec<(String, String)>,
}

/// The parsed output of `lifeboat dirty NAME --json`.
#[derive(Debug, Clone)]
pub struct Dirty {
    /// Bytes per block.
    pub block_size: u64,
    /// Bytes in the disk.
    pub disk_size: u64,
    /// Indexes of dirty blocks (live and cut).
    pub dirty_blocks: BTreeSet<u64>,
    /// Whether the state cannot be trusted.
    pub suspect: bool,
}

impl Dirty {
    /// Parses the JSON document, failing unless every field is there, no
    /// block is listed twice and `dirty_count` agrees with `dirty_blocks`.
    pub fn parse(stdout: &[u8]) -> Dirty {
        let text = String::from_utf8_lossy(stdout);
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("`dirty --json` printed invalid JSON ({e}):\n{text}"));
        let num = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("`{k}` missing or not a number in {text}"));
        let blocks: Vec<u64> = v["dirty_blocks"]
            .as_array()
            .unwrap_or_else(|| panic!("`dirty_blocks` missing in {text}"))
            .iter()
            .map(|b| b.as_u64().expect("block index"))
            .collect();
        let dirty_blocks: BTreeSet<u64> = blocks.iter().copied().collect();
        assert_eq!(dirty_blocks.len(), blocks.len(), "dirty_blocks lists a block twice: {text}");
        assert_eq!(num("dirty_count"), dirty_blocks.len() as u64, "dirty_count disagrees with dirty_blocks: {text}");
        Dirty {
            block_size: num("block_size"),
            disk_size: num("disk_size"),
            dirty_blocks,
            suspect: v["suspect"].as_bool().unwrap_or_else(|| panic!("`suspect` missing in {text}")),
        }
    }
}

/// `unix:SOCK`, the `--listen` address of a unix socket.
pub fn unix_listen(sock: &Path) -> String {
    format!("unix:{}", sock.display())
}

impl Home {
    /// A home at `dir`, driven by the `lifeboat` binary at `bin`.
    pub fn new(bin: impl Into<PathBuf>, dir: PathBuf) -> Home {
        Home { dir, bin: bin.into(), env: Vec::new() }
    }

    /// The same home with `vars` set in the environment of every command it
    /// runs (a cloud vault's endpoint and credentials, as a user exports
    /// them).
    pub fn with_env(mut self, vars: &[(String, String)]) -> Home {
        self.env.extend(vars.iter().cloned());
        self
    }

    /// `lifeboat --home DIR`, to add arguments to and run.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--home").arg(&self.dir);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs `lifeboat --home DIR ARGS...`.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run lifeboat")
    }

    /// Runs `lifeboat --home DIR ARGS...`, which must succeed.
    pub fn run_ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert_ok(&out, &format!("lifeboat {args:?}"));
        out
    }

    /// `lifeboat protect NAME --image IMAGE --block-size N KiB`.
    pub fn protect(&self, name: &str, image: &Path, block_size: u64) {
        let bs = format!("{}KiB", block_size / 1024);
        self.run_ok(&["protect", name, "--image", image.to_str().unwrap(), "--block-size", &bs]);
    }

    /// `lifeboat dirty NAME --json`, parsed and checked by [`Dirty::parse`].
    pub fn dirty(&self, name: &str) -> Dirty {
        Dirty::parse(&self.run_ok(&["dirty", name, "--json"]).stdout)
    }

    /// Starts `lifeboat filter NAME --listen L...` and returns at once, without
    /// waiting for it to be ready (for a filter that must refuse to start).
    pub fn spawn_filter(&self, name: &str, listens: &[String]) -> Filter {
        let mut cmd = self.command();
        cmd.args(["filter", name]);
        for l in listens {
            cmd.args(["--listen", l]);
        }
        Filter::spawn(cmd)
    }

    /// Starts `lifeboat agent ARGS...` and waits, up to 30 s, until it has
    /// logged `NAME: serving on` for each of `names`. The returned handle is a
    /// [`Filter`]: the agent is the filter (and the shipper) for every disk.
    pub fn agent(&self, args: &[&str], names: &[&str]) -> Filter {
        let mut cmd = self.command();
        cmd.arg("agent").args(args);
        let mut agent = Filter::spawn(cmd);
        for name in names {
            agent.wait_line(&format!("{name}: serving on "), Duration::from_secs(30));
        }
        agent
    }

    /// Starts `lifeboat ARGS...` as a long-running child (a filter or an
    /// agent) after `configure` has adjusted the command (environment,
    /// `pre_exec` resource limits), and returns at once; wait for it with
    /// [`Filter::wait_line`].
    pub fn spawn_with(&self, args: &[&str], configure: impl FnOnce(&mut Command)) -> Filter {
        let mut cmd = self.command();
        cmd.args(args);
        configure(&mut cmd);
        Filter::spawn(cmd)
    }

    /// Starts `lifeboat filter NAME --listen unix:SOCK` and waits for it to be
    /// ready, as [`Home::filter_on`].
    pub fn filter(&self, name: &str, sock: &Path) -> Filter {
        self.filter_on(name, &[unix_listen(sock)])
    }

    /// Starts `lifeboat filter NAME --listen L...` and waits, up to 30 s, for
    /// its ready line, which names every listener:
    /// `filter NAME listening on L1 L2 ...` (in any order).
    pub fn filter_on(&self, name: &str, listens: &[String]) -> Filter {
        let mut filter = self.spawn_filter(name, listens);
        let prefix = format!("filter {name} listening on ");
        let mut want: Vec<&str> = listens.iter().map(String::as_str).collect();
        want.sort_unstable();
        let is_ready = |line: &str| {
            // After the timestamp every log line starts with.
            line.trim_end().split_once(&prefix).is_some_and(|(_, rest)| {
                let mut got: Vec<&str> = rest.split(' ').collect();
                got.sort_unstable();
                got == want
            })
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match filter.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if is_ready(&line) => return filter,
                Ok(_) => {}
                Err(_) => {
                    if let Some(status) = filter.child.as_mut().unwrap().try_wait().unwrap() {
                        panic!("lifeboat filter exited with {status} before it was ready:\n{}", filter.log());
                    }
                    assert!(
                        Instant::now() < deadline,
                        "lifeboat filter did not print \"{prefix}{want:?}\" within 30 s:\n{}",
                        filter.log()
                    );
                }
            }
        }
    }
}

/// A running `lifeboat filter` (or `lifeboat agent`) child. Dropping it SIGKILLs and reaps it, so a
/// failing test leaves no server behind.
pub struct Filter {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    lines: mpsc::Receiver<String>,
}

impl Filter {
    /// Spawns `cmd` with stderr collected line by line into the log.
    fn spawn(mut cmd: Command) -> Filter {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel::<String>();
        let pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        Filter { child: Some(child), log, lines }
    }

    /// Everything the filter printed on stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits up to `limit` for a stderr line containing `needle` (a line not
    /// yet waited for) and returns it; fails if the process exits first.
    pub fn wait_line(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => {
                    if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                        panic!("lifeboat exited with {status} before logging {needle:?}:\n{}", self.log());
                    }
                    assert!(
                        Instant::now() < deadline,
                        "lifeboat did not log {needle:?} within {limit:?}:\n{}",
                        self.log()
                    );
                }
            }
        }
    }

    /// The process id (while it runs).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("filter running").id()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// Sends signal `sig` to the process.
    pub fn signal(&self, sig: i32) {
        // Our own child, not yet reaped (we still hold its `Child` and have
        // not waited for it), so the pid still names it.
        let pid = self.child.as_ref().expect("filter running").id();
        system::process::signal(pid, sig).unwrap_or_else(|e| panic!("kill({pid}, {sig}) on lifeboat filter: {e}"));
    }

    /// Waits up to `limit` for the process to exit and returns its status;
    /// after that kills it and fails.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let status = wait_timeout(self.child.as_mut().expect("filter running"), limit);
        self.child = None;
        let Some(status) = status else {
            panic!("lifeboat filter did not exit within {limit:?}:\n{}", self.log());
        };
        // Let the stderr thread drain the last lines.
        thread::sleep(Duration::from_millis(50));
        status
    }

    /// SIGTERM, then wait up to 30 s; returns the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait(Duration::from_secs(30))
    }

    /// SIGTERM, and require a clean exit (status 0) within 30 s.
    pub fn stop(mut self) {
        let status = self.terminate();
        assert!(status.success(), "lifeboat filter exited with {status} after SIGTERM:\n{}", self.log());
    }
}

impl Drop for Filter {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
