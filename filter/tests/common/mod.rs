//! What the NBD server tests share: an in-memory export that records what
//! reached it and can be told to fail, block or dawdle, and a server serving
//! it on a unix socket and on TCP.
//!
//! Each test file compiles this module on its own (`mod common;`) and uses a
//! part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use filter::nbd::{Export, Listen, LocalAddr, Options, Server, ShutdownHandle};

/// The export name the tests serve unless they ask for another.
pub const NAME: &str = "disk0";

/// What reached the export, in order (reads are not recorded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Write { offset: u64, len: usize, fua: bool },
    Flush,
    Trim { offset: u64, len: u64, fua: bool },
    Zero { offset: u64, len: u64, may_trim: bool, fua: bool },
}

/// A RAM disk that records calls and can be told to fail, block or dawdle.
/// Trimmed bytes read back as 0xee, so a client that relies on trim zeroing
/// shows up.
pub struct MemExport {
    pub data: RwLock<Vec<u8>>,
    calls: Mutex<Vec<Call>>,
    /// Writes and reads at exactly this offset fail with this OS error.
    pub fail_at: Mutex<Option<(u64, i32)>>,
    /// A read at `.0` waits (up to 5 s, else EIO) until a read at `.1` has
    /// started, then 200 ms more.
    pub rendezvous: Option<(u64, u64)>,
    second_started: Mutex<bool>,
    pub started_cond: Condvar,
    /// Writes at this offset take this long.
    pub slow_write: Option<(u64, Duration)>,
    pub slow_write_started: AtomicBool,
    /// Reads at this offset wait (up to 10 s, else EIO) until `gate_open`.
    pub gate: Option<u64>,
    pub gate_open: Mutex<bool>,
}

const EIO: i32 = 5;

impl MemExport {
    pub fn new(size: usize) -> MemExport {
        MemExport {
            data: RwLock::new(vec![0; size]),
            calls: Mutex::new(Vec::new()),
            fail_at: Mutex::new(None),
            rendezvous: None,
            second_started: Mutex::new(false),
            started_cond: Condvar::new(),
            slow_write: None,
            slow_write_started: AtomicBool::new(false),
            gate: None,
            gate_open: Mutex::new(false),
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    pub fn bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let offset = usize::try_from(offset).unwrap();
        self.data.read().unwrap()[offset..offset + len].to_vec()
    }

    fn check_fail(&self, offset: u64) -> io::Result<()> {
        match *self.fail_at.lock().unwrap() {
            Some((at, errno)) if at == offset => Err(io::Error::from_raw_os_error(errno)),
            _ => Ok(()),
        }
    }
}

fn range(offset: u64, len: u64) -> std::ops::Range<usize> {
    let start = usize::try_from(offset).unwrap();
    start..start + usize::try_from(len).unwrap()
}

impl Export for MemExport {
    fn size(&self) -> u64 {
        self.data.read().unwrap().len() as u64
    }

    fn preferred_block_size(&self) -> u32 {
        4096
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check_fail(offset)?;
        if let Some((first, second)) = self.rendezvous {
            if offset == second {
                *self.second_started.lock().unwrap() = true;
                self.started_cond.notify_all();
            } else if offset == first {
                let started = self.second_started.lock().unwrap();
                let (started, _) =
                    self.started_cond.wait_timeout_while(started, Duration::from_secs(5), |s| !*s).unwrap();
                if !*started {
                    return Err(io::Error::from_raw_os_error(EIO));
                }
                // let the second request's reply go out first
                drop(started);
                thread::sleep(Duration::from_millis(200));
            }
        }
        if self.gate == Some(offset) {
            let open = self.gate_open.lock().unwrap();
            let (open, _) = self.started_cond.wait_timeout_while(open, Duration::from_secs(10), |o| !*o).unwrap();
            if !*open {
                return Err(io::Error::from_raw_os_error(EIO));
            }
        }
        buf.copy_from_slice(&self.data.read().unwrap()[range(offset, buf.len() as u64)]);
        Ok(())
    }

    fn write_at(&self, data: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.check_fail(offset)?;
        if let Some((at, delay)) = self.slow_write {
            if at == offset {
                self.slow_write_started.store(true, std::sync::atomic::Ordering::SeqCst);
                thread::sleep(delay);
            }
        }
        self.data.write().unwrap()[range(offset, data.len() as u64)].copy_from_slice(data);
        self.calls.lock().unwrap().push(Call::Write { offset, len: data.len(), fua });
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.calls.lock().unwrap().push(Call::Flush);
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.check_fail(offset)?;
        // Trim leaves contents unspecified; make that visible.
        self.data.write().unwrap()[range(offset, len)].fill(0xee);
        self.calls.lock().unwrap().push(Call::Trim { offset, len, fua });
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool, fua: bool) -> io::Result<()> {
        self.check_fail(offset)?;
        self.data.write().unwrap()[range(offset, len)].fill(0);
        self.calls.lock().unwrap().push(Call::Zero { offset, len, may_trim, fua });
        Ok(())
    }
}

/// A server on `<tempdir>/nbd.sock` and on tcp:127.0.0.1:0, run on a thread.
/// It does not keep the export alive once `run` returns.
pub struct TestServer {
    pub addrs: Vec<LocalAddr>,
    pub handle: ShutdownHandle,
    thread: Option<JoinHandle<io::Result<()>>>,
    dir: tempfile::TempDir,
}

impl TestServer {
    /// Serves `export` as [`NAME`].
    pub fn start(export: Arc<MemExport>) -> TestServer {
        TestServer::start_named(export, NAME)
    }

    /// Serves `export` as `name`.
    pub fn start_named(export: Arc<MemExport>, name: &str) -> TestServer {
        TestServer::start_with(export, name, Options::default())
    }

    /// Serves `export` as `name` with these options.
    pub fn start_with(export: Arc<MemExport>, name: &str, options: Options) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let listens = [Listen::Unix(dir.path().join("nbd.sock")), Listen::Tcp("127.0.0.1:0".into())];
        let server = Server::bind_with(&listens, name, export, options).unwrap();
        let addrs = server.local_addrs();
        let handle = server.shutdown_handle();
        let thread = Some(thread::spawn(move || server.run()));
        TestServer { addrs, handle, thread, dir }
    }

    pub fn unix_path(&self) -> &Path {
        match &self.addrs[0] {
            LocalAddr::Unix(p) => p,
            other => panic!("expected a unix address, got {other}"),
        }
    }

    pub fn tcp_addr(&self) -> SocketAddr {
        let LocalAddr::Tcp(addr) = self.addrs[1] else { panic!("expected a tcp address") };
        addr
    }

    pub fn unix_uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.unix_path().display())
    }

    pub fn tcp_uri(&self, export: &str) -> String {
        format!("nbd://{}/{export}", self.tcp_addr())
    }

    /// `name` in the server's temporary directory, for files a test makes.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Shut down and wait for `run` to return (with a deadline).
    pub fn stop(&mut self) {
        self.handle.shutdown();
        let thread = self.thread.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !thread.is_finished() {
            assert!(Instant::now() < deadline, "Server::run did not return within 10 s of shutdown");
            thread::sleep(Duration::from_millis(5));
        }
        thread.join().unwrap().unwrap();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if self.thread.is_none() {
            return;
        }
        if thread::panicking() {
            self.handle.shutdown();
        } else {
            self.stop();
        }
    }
}

/// A zeroed export of `size` bytes served as [`NAME`].
pub fn server(size: usize) -> (Arc<MemExport>, TestServer) {
    server_named(size, NAME)
}

/// A zeroed export of `size` bytes served as `name`.
pub fn server_named(size: usize, name: &str) -> (Arc<MemExport>, TestServer) {
    let export = Arc::new(MemExport::new(size));
    let srv = TestServer::start_named(Arc::clone(&export), name);
    (export, srv)
}

/// Finishes `d`'s cut in progress as a cycle does, naming a point cut from
/// it (the cut and direct-read tests).
pub fn finish(d: &filter::Disk) -> Result<u64, filter::FilterError> {
    let point = disk_format::LastPoint {
        vault_id: disk_format::VaultId([1; 16]),
        sequence: 1,
        root_id: disk_format::RootId([2; 32]),
        cut_generation: d.cut_in_progress().unwrap_or(0),
    };
    d.finish_cut(point, false)
}
