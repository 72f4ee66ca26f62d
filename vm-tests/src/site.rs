//! A recovery site for tests: a site directory made by the real binary
//! (`lifeboat site init`), a real `lifeboat vault serve` process on a
//! loopback port, and protected hosts joined to it with real enrollment
//! files (`site enroll` / `site join`). Nothing is made by hand: the
//! certificates are the ones a user's site would have.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::lifeboat::Home;

/// A loopback port nobody listens on now (the kernel's pick; a process that
/// takes it before the server binds makes the server fail loudly, not a
/// test pass wrongly).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port").port()
}

/// The site: its home (where `site` commands run), its directory, the
/// served vaults, and the server process while it runs.
pub struct Site {
    /// The recovery site's home.
    pub home: Home,
    /// `lifeboat site init`'s directory.
    pub dir: PathBuf,
    /// The port the server listens on (127.0.0.1).
    pub port: u16,
    server: Option<Server>,
}

/// A running `lifeboat vault serve`.
struct Server {
    child: Child,
    log: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Site {
    /// `lifeboat site init DIR --address 127.0.0.1:PORT` in a new site home
    /// under `root`.
    pub fn init(bin: &Path, root: &Path) -> Site {
        Site::init_on(bin, root, free_port(), &[])
    }

    /// [`Site::init`] with the server on `port`, the site also reachable at
    /// `127.0.0.1:PORT` for each
    /// of `extra_ports` (a fault proxy's port: the server's certificate
    /// names 127.0.0.1 either way, and a joined host finds its credentials
    /// under any of the site's addresses).
    pub fn init_on(bin: &Path, root: &Path, port: u16, extra_ports: &[u16]) -> Site {
        let home = Home::new(bin, root.join("site-home"));
        let dir = root.join("site");
        let mut args = vec!["site".to_string(), "init".into(), path(&dir).into()];
        for p in std::iter::once(port).chain(extra_ports.iter().copied()) {
            args.extend(["--address".to_string(), format!("127.0.0.1:{p}")]);
        }
        home.run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        Site { home, dir, port, server: None }
    }

    /// The URL of vault `name` at this site.
    pub fn url(&self, name: &str) -> String {
        format!("lifeboat://127.0.0.1:{}/{name}", self.port)
    }

    /// Starts `lifeboat vault serve` for `vaults` (NAME, directory) and
    /// waits until it says it serves them.
    pub fn serve(&mut self, vaults: &[(&str, &Path)]) {
        assert!(self.server.is_none(), "the server is running already");
        let listen = format!("127.0.0.1:{}", self.port);
        let mut args = vec!["vault".to_string(), "serve".into(), "--site".into(), path(&self.dir).into()];
        args.extend(["--listen".to_string(), listen]);
        args.extend(vaults.iter().map(|(n, p)| format!("{n}={}", path(p))));
        let mut child = self
            .home
            .command()
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lifeboat vault serve");
        let log: Arc<(Mutex<Vec<String>>, Condvar)> = Arc::default();
        {
            let log = log.clone();
            let stderr = child.stderr.take().expect("piped stderr");
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    log.0.lock().unwrap().push(line);
                    log.1.notify_all();
                }
            });
        }
        self.server = Some(Server { child, log });
        if !self.wait_log("serving vaults", Duration::from_secs(60)) {
            let lines = self.log().join("\n");
            panic!("lifeboat vault serve did not start:\n{lines}");
        }
    }

    /// Every line the server logged so far.
    pub fn log(&self) -> Vec<String> {
        self.server.as_ref().map(|s| s.log.0.lock().unwrap().clone()).unwrap_or_default()
    }

    /// Waits until a line containing `text` was logged; false at the timeout
    /// or if the server's stderr closed first.
    pub fn wait_log(&self, text: &str, timeout: Duration) -> bool {
        let Some(s) = &self.server else { return false };
        let deadline = Instant::now() + timeout;
        let mut lines = s.log.0.lock().unwrap();
        loop {
            if lines.iter().any(|l| l.contains(text)) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            lines = s.log.1.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// The server's pid, while it runs.
    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(|s| s.child.id())
    }

    /// SIGTERMs the server and waits for it: its exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut s = self.server.take().expect("the server runs");
        system::process::signal(s.child.id(), libc::SIGTERM).expect("SIGTERM the server");
        s.child.wait().expect("wait for the server")
    }

    /// SIGKILLs the server and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
    }

    /// `lifeboat site enroll HOST --vault V...` and `lifeboat site join` of
    /// the file in `host`'s home.
    pub fn join(&self, host_name: &str, vaults: &[&str], host: &Home) {
        let file = self.dir.with_file_name(format!("{host_name}.enroll"));
        let mut args = vec!["site", "enroll", host_name, "--out", path(&file), "--site", path(&self.dir)];
        for v in vaults {
            args.extend(["--vault", v]);
        }
        self.home.run_ok(&args);
        host.run_ok(&["site", "join", path(&file)]);
    }
}

/// Where a test keeps its vault: a directory named by its path (what the
/// tests always did), or the same kind of directory served as vault `main`
/// by a real `lifeboat vault serve` on loopback, named by its
/// `lifeboat://` URL. One test body runs against both (issue 14: "the
/// existing replicate, restore, failover and crash tests pass against a real
/// `lifeboat vault serve`"): it names the vault by [`TestVault::location`]
/// and lets every home that uses it [`TestVault::join`] first.
pub enum TestVault {
    /// A vault directory on this host.
    Dir(PathBuf),
    /// A vault directory behind a site's server.
    Served {
        /// The site, its server running.
        site: Site,
        /// The served directory.
        dir: PathBuf,
        /// `lifeboat://127.0.0.1:PORT/main`.
        url: String,
    },
}

impl TestVault {
    /// `ROOT/vault`, not made yet (`vault init` makes it).
    pub fn dir(root: &Path) -> TestVault {
        TestVault::Dir(root.join("vault"))
    }

    /// A site in `ROOT/vault-site/` (`site init`: its home and directory
    /// there) serving the empty directory `ROOT/vault-site/vaults/main` as
    /// `main`.
    pub fn served(bin: &Path, root: &Path) -> TestVault {
        let root = root.join("vault-site");
        std::fs::create_dir(&root).unwrap_or_else(|e| panic!("creating {}: {e}", root.display()));
        let mut site = Site::init(bin, &root);
        let dir = root.join("vaults/main");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        site.serve(&[("main", &dir)]);
        let url = site.url("main");
        TestVault::Served { site, dir, url }
    }

    /// [`TestVault::served`] if `served`, else [`TestVault::dir`].
    pub fn new(served: bool, bin: &Path, root: &Path) -> TestVault {
        if served {
            TestVault::served(bin, root)
        } else {
            TestVault::dir(root)
        }
    }

    /// How commands name the vault: its path or its URL.
    pub fn location(&self) -> &str {
        match self {
            TestVault::Dir(dir) => path(dir),
            TestVault::Served { url, .. } => url,
        }
    }

    /// The vault's directory (served or not), to look at as files.
    pub fn path(&self) -> &Path {
        match self {
            TestVault::Dir(dir) | TestVault::Served { dir, .. } => dir,
        }
    }

    /// Lets `home` use the vault: for a served one, `site enroll HOST` and
    /// `site join` in `home` (enrolling a host again supersedes its earlier
    /// certificate, as a rebuilt or recovering site does); nothing for a
    /// directory.
    pub fn join(&self, host_name: &str, home: &Home) {
        if let TestVault::Served { site, .. } = self {
            site.join(host_name, &["main"], home);
        }
    }

    /// At the end of a test: a served vault's server is SIGTERMed and must
    /// exit 0 (it finished every request in flight).
    pub fn finish(self) {
        if let TestVault::Served { mut site, .. } = self {
            let log = site.log().join("\n");
            let status = site.stop();
            assert!(status.success(), "lifeboat vault serve exited with {status}:\n{log}");
        }
    }

    /// The site, for a served vault.
    pub fn site(&self) -> Option<&Site> {
        match self {
            TestVault::Dir(_) => None,
            TestVault::Served { site, .. } => Some(site),
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.kill();
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 test path")
}
