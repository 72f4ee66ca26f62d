//! The `lifeboat` commands the VM tests use, and the `lifeboat filter` child
//! process that serves the guest's disk.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::paths;

/// A lifeboat home (`--home`) in a test's scratch directory.
pub struct Home {
    /// The home directory.
    pub dir: PathBuf,
    bin: PathBuf,
}

/// The parsed output of `lifeboat dirty NAME --json`.
#[derive(Debug, Clone)]
pub struct Dirty {
    /// Bytes per block.
    pub block_size: u64,
    /// Bytes in the disk.
    pub disk_size: u64,
    /// Indexes of dirty blocks (live and cut).
    pub blocks: BTreeSet<u64>,
    /// Whether the state cannot be trusted.
    pub suspect: bool,
}

impl Home {
    /// A home at `dir`, driven by the binary [`paths::lifeboat_bin`] finds.
    pub fn new(dir: PathBuf) -> Home {
        Home { dir, bin: paths::lifeboat_bin() }
    }

    /// Runs `lifeboat --home DIR ARGS...`.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(&self.bin).arg("--home").arg(&self.dir).args(args).output().expect("run lifeboat")
    }

    fn run_ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "lifeboat {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `lifeboat protect NAME --image IMAGE --block-size N KiB`.
    pub fn protect(&self, name: &str, image: &Path, block_size: u64) {
        let bs = format!("{}KiB", block_size / 1024);
        self.run_ok(&["protect", name, "--image", image.to_str().unwrap(), "--block-size", &bs]);
    }

    /// `lifeboat dirty NAME --json`, parsed and checked for self-consistency.
    pub fn dirty(&self, name: &str) -> Dirty {
        let out = self.run_ok(&["dirty", name, "--json"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("`dirty --json` printed invalid JSON ({e}): {text}"));
        let num = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("`{k}` missing in {text}"));
        let blocks: BTreeSet<u64> = v["dirty_blocks"]
            .as_array()
            .unwrap_or_else(|| panic!("`dirty_blocks` missing in {text}"))
            .iter()
            .map(|b| b.as_u64().expect("block index"))
            .collect();
        assert_eq!(num("dirty_count"), blocks.len() as u64, "dirty_count disagrees with dirty_blocks");
        Dirty {
            block_size: num("block_size"),
            disk_size: num("disk_size"),
            blocks,
            suspect: v["suspect"].as_bool().unwrap_or_else(|| panic!("`suspect` missing in {text}")),
        }
    }

    /// Starts `lifeboat filter NAME --listen unix:SOCK` and waits for its ready
    /// line (`filter NAME listening on unix:SOCK`), up to 30 s.
    pub fn filter(&self, name: &str, sock: &Path) -> Filter {
        let listen = format!("unix:{}", sock.display());
        let mut child = Command::new(&self.bin)
            .arg("--home")
            .arg(&self.dir)
            .args(["filter", name, "--listen", &listen])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lifeboat filter");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let pipe = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        let mut filter = Filter { child: Some(child), log };
        let ready = format!("filter {name} listening on {listen}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.trim_end() == ready => return filter,
                Ok(_) => {}
                Err(_) => {
                    if let Some(st) = filter.child.as_mut().unwrap().try_wait().unwrap() {
                        panic!("lifeboat filter exited with {st} before it was ready:\n{}", filter.log());
                    }
                    assert!(Instant::now() < deadline, "lifeboat filter not ready in 30 s:\n{}", filter.log());
                }
            }
        }
    }
}

/// A running `lifeboat filter`. Dropping it SIGKILLs and reaps it.
pub struct Filter {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
}

impl Filter {
    /// Everything the filter printed on stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// SIGTERM, then wait up to 30 s; returns the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("filter running");
        // SAFETY: kill(2) on our own child, not yet reaped (we still hold its
        // `Child` and have not waited for it), so the pid still names it.
        let rc = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill -TERM lifeboat filter");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                thread::sleep(Duration::from_millis(50)); // let the log thread drain
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                panic!("lifeboat filter ignored SIGTERM for 30 s:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(20));
        }
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
