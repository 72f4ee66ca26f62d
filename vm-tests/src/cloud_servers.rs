//! The cloud-storage emulators the cloud-vault tests run against: Azurite's
//! Blob service (Azure Blob Storage) and moto's server (Amazon S3), pinned
//! and installed into the cache by `scripts/setup.sh` (found with
//! [`paths::azurite_blob`] and [`paths::moto_server`]).
//!
//! Each [`Azurite::start`] or [`Moto::start`] is a new, empty, in-memory
//! server of the test's own on a free loopback port, ready when `start`
//! returns: it has read the server's "listening" line (no sleeping). What the
//! server printed is kept for the test's failure message ([`Azurite::log`],
//! [`Moto::log`]).
//!
//! It must not skip when an emulator is missing (it fails saying "run
//! scripts/setup.sh"), nor leave a server behind. A server runs in a process
//! group of its own, which drop SIGKILLs and reaps. It is also started under
//! `setpriv --pdeathsig KILL`, so a test process that dies without unwinding
//! (a nextest timeout, SIGKILL) takes its servers with it: nextest's own kill
//! reaches only the test's process group, and the server has left it. That
//! signal follows the *thread* that started the server, so start a server on
//! the test's own thread and keep it there (not in a `static` that several
//! tests share).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::paths;
use crate::site::free_port;

/// How long a server may take to say it listens (about a second on an idle
/// host, Azurite the slower; a loaded 2-core host takes many times that).
const STARTUP_LIMIT: Duration = Duration::from_secs(60);

/// Azurite's Blob service, in memory, on `127.0.0.1:PORT`, with its
/// well-known development account.
#[derive(Debug)]
pub struct Azurite {
    server: Server,
}

impl Azurite {
    /// The development account every Azurite serves (path-style URLs:
    /// `http://HOST:PORT/ACCOUNT/CONTAINER/BLOB`).
    pub const ACCOUNT: &'static str = "devstoreaccount1";
    /// The development account's shared key (base64), the same in every
    /// Azurite and in Azure's own storage emulator.
    pub const KEY: &'static str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    /// Starts `azurite-blob --inMemoryPersistence --loose
    /// --skipApiVersionCheck --disableTelemetry` on a free loopback port and
    /// waits until it listens. It runs in a temporary directory of its own
    /// (it writes nothing there in memory mode; Azurite refuses `--location`
    /// together with `--inMemoryPersistence`). Fails with its output if it
    /// exits or does not listen within a minute.
    pub fn start() -> Azurite {
        let server = Server::start(
            "azurite-blob",
            &paths::azurite_blob(),
            |cmd, port| {
                cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                    .args(["--inMemoryPersistence", "--loose", "--skipApiVersionCheck", "--disableTelemetry"])
                    // Either would change what the server is: other accounts
                    // (AZURITE_ACCOUNTS), a SQL metadata store (AZURITE_DB).
                    .env_remove("AZURITE_ACCOUNTS")
                    .env_remove("AZURITE_DB");
            },
            |port| format!("successfully listens on http://127.0.0.1:{port}"),
        );
        Azurite { server }
    }

    /// The account's blob endpoint: `http://127.0.0.1:PORT/devstoreaccount1`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{}", self.server.port, Azurite::ACCOUNT)
    }

    /// The environment a user would export to reach it (Lifeboat's cloud
    /// settings: `AZURE_STORAGE_ENDPOINT`, the account key, plain HTTP).
    pub fn vars(&self) -> Vec<(String, String)> {
        [
            ("AZURE_STORAGE_ENDPOINT", self.endpoint()),
            ("AZURE_STORAGE_ACCOUNT_KEY", Azurite::KEY.to_string()),
            ("AZURE_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// The server's pid (its process group's id too).
    pub fn pid(&self) -> u32 {
        self.server.child.id()
    }

    /// Everything it printed so far (its start-up lines and one line per
    /// request), for a failure message.
    pub fn log(&self) -> String {
        self.server.log.text()
    }

    /// Whether a line containing `marker` is in the log, waiting up to 10 s
    /// for it: the server logs a request after answering it, so a client
    /// that has its answer may look before the line is written.
    pub fn logged(&self, marker: &str) -> bool {
        self.server.log.wait_for(marker, Duration::from_secs(10))
    }
}

impl RequestLog for Azurite {
    fn requests_logged(&self) -> usize {
        self.server.log.count(HTTP_LINE)
    }
    fn logged(&self, marker: &str) -> bool {
        self.server.log.wait_for(marker, Duration::from_secs(10))
    }
}

/// moto's server (its S3 service; it serves the other AWS services too), in
/// memory, on `127.0.0.1:PORT`. It checks no signature, so any credentials
/// do; but a request must be signed: an unsigned one is anonymous, and
/// reading a (private) object anonymously is refused with 403.
#[derive(Debug)]
pub struct Moto {
    server: Server,
}

impl Moto {
    /// The region to sign for (buckets made without a location are there).
    pub const REGION: &'static str = "us-east-1";
    /// A dummy access key id (moto's own examples use `testing`).
    pub const ACCESS_KEY_ID: &'static str = "testing";
    /// A dummy secret access key.
    pub const SECRET_ACCESS_KEY: &'static str = "testing";

    /// Starts `moto_server -H 127.0.0.1 -p PORT` on a free loopback port and
    /// waits until it listens. Fails with its output if it exits or does not
    /// listen within a minute.
    pub fn start() -> Moto {
        Moto::launch(&[])
    }

    /// Starts moto enforcing IAM: the first `free` requests need no
    /// credentials (an administrator's set-up: a bucket, and for each user
    /// [`Moto::user_vars`]'s three), and every later one is allowed only by
    /// the IAM policy of its access key (`INITIAL_NO_AUTH_ACTION_COUNT`).
    pub fn start_with_iam(free: u32) -> Moto {
        Moto::launch(&[("INITIAL_NO_AUTH_ACTION_COUNT", free.to_string())])
    }

    /// `moto_server` on a free loopback port with `env` set.
    fn launch(env: &[(&str, String)]) -> Moto {
        let server = Server::start(
            "moto_server",
            &paths::moto_server(),
            |cmd, port| {
                cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]).env("PYTHONUNBUFFERED", "1");
                cmd.envs(env.iter().map(|(k, v)| (k, v)));
            },
            |port| format!("Running on http://127.0.0.1:{port}"),
        );
        Moto { server }
    }

    /// Makes IAM user `name` with the inline policy `policy` (JSON) and an
    /// access key (three requests: CreateUser, PutUserPolicy,
    /// CreateAccessKey), and returns [`Moto::vars`] with that key.
    pub fn user_vars(&self, name: &str, policy: &str) -> Vec<(String, String)> {
        let iam = |form: &str| {
            let (status, _, body) = http(
                self.server.port,
                "POST",
                "/",
                &[
                    ("Content-Type", "application/x-www-form-urlencoded"),
                    // moto finds the service in the signature's scope; a
                    // free request's signature is not checked.
                    (
                        "Authorization",
                        "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/iam/aws4_request, \
                         SignedHeaders=host, Signature=0",
                    ),
                ],
                form.as_bytes(),
            );
            assert_eq!(status, 200, "IAM {form}: {body}");
            body
        };
        iam(&format!("Action=CreateUser&UserName={name}&Version=2010-05-08"));
        iam(&format!(
            "Action=PutUserPolicy&UserName={name}&PolicyName=lifeboat&PolicyDocument={}&Version=2010-05-08",
            form_encode(policy)
        ));
        let key = iam(&format!("Action=CreateAccessKey&UserName={name}&Version=2010-05-08"));
        let field = |tag: &str| {
            let open = format!("<{tag}>");
            let start = key.find(&open).unwrap_or_else(|| panic!("no {tag} in {key}")) + open.len();
            key[start..start + key[start..].find('<').expect("a closing tag")].to_string()
        };
        let (id, secret) = (field("AccessKeyId"), field("SecretAccessKey"));
        self.vars()
            .into_iter()
            .map(|(k, v)| match k.as_str() {
                "AWS_ACCESS_KEY_ID" => (k, id.clone()),
                "AWS_SECRET_ACCESS_KEY" => (k, secret.clone()),
                _ => (k, v),
            })
            .collect()
    }

    /// The S3 endpoint, for path-style requests
    /// (`http://127.0.0.1:PORT/BUCKET/KEY`): `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.server.port)
    }

    /// The environment a user would export to reach it (the AWS
    /// variables: endpoint, region, credentials, plain HTTP).
    pub fn vars(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", Moto::REGION.to_string()),
            ("AWS_ACCESS_KEY_ID", Moto::ACCESS_KEY_ID.to_string()),
            ("AWS_SECRET_ACCESS_KEY", Moto::SECRET_ACCESS_KEY.to_string()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// The server's pid (its process group's id too).
    pub fn pid(&self) -> u32 {
        self.server.child.id()
    }

    /// Everything it printed so far (its start-up lines and one line per
    /// request), for a failure message.
    pub fn log(&self) -> String {
        self.server.log.text()
    }

    /// Whether a line containing `marker` is in the log, waiting up to 10 s
    /// for it: the server logs a request after answering it, so a client
    /// that has its answer may look before the line is written.
    pub fn logged(&self, marker: &str) -> bool {
        self.server.log.wait_for(marker, Duration::from_secs(10))
    }
}

impl RequestLog for Moto {
    fn requests_logged(&self) -> usize {
        self.server.log.count(HTTP_LINE)
    }
    fn logged(&self, marker: &str) -> bool {
        self.server.log.wait_for(marker, Duration::from_secs(10))
    }
}

/// One emulator process, in a process group of its own, its output read
/// into a [`Log`] by two threads until it closes.
struct Server {
    what: &'static str,
    port: u16,
    child: Child,
    /// The exit status once the child was reaped: its group id may then
    /// name someone else's processes, so nothing is signalled any more.
    reaped: Option<ExitStatus>,
    log: Arc<Log>,
    /// The server's working directory, removed after it is stopped.
    _cwd: TempDir,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("what", &self.what)
            .field("port", &self.port)
            .field("pid", &self.child.id())
            .field("reaped", &self.reaped)
            .finish_non_exhaustive()
    }
}

/// How a start-up ended.
enum Startup {
    Ready,
    Exited(ExitStatus),
    TimedOut,
}

impl Server {
    /// Starts `program`, its arguments and environment set by
    /// `configure(command, port)`, on a free port and waits for a line
    /// containing `ready(port)`. A server that exits because another
    /// process took the port between [`free_port`] and its bind is started
    /// once more on another port; any other exit, or no ready line within
    /// [`STARTUP_LIMIT`], fails with what it printed.
    fn start(
        what: &'static str,
        program: &Path,
        configure: impl Fn(&mut Command, u16),
        ready: impl Fn(u16) -> String,
    ) -> Server {
        let mut attempt = 1;
        loop {
            let port = free_port();
            let mut server = Server::spawn(what, port, program, &configure);
            match server.wait_ready(&ready(port), STARTUP_LIMIT) {
                Startup::Ready => return server,
                Startup::Exited(status) => {
                    let log = server.log.text();
                    let port_taken = ["EADDRINUSE", "already in use", "is in use"].iter().any(|s| log.contains(s));
                    if port_taken && attempt == 1 {
                        attempt += 1;
                        continue;
                    }
                    panic!("{what} exited with {status} before it listened on 127.0.0.1:{port}:\n{log}");
                }
                Startup::TimedOut => {
                    let log = server.log.text();
                    panic!(
                        "{what} did not say it listens on 127.0.0.1:{port} within {STARTUP_LIMIT:?} \
                         (looked for {:?}):\n{log}",
                        ready(port)
                    );
                }
            }
        }
    }

    fn spawn(what: &'static str, port: u16, program: &Path, configure: impl Fn(&mut Command, u16)) -> Server {
        let cwd = tempfile::Builder::new()
            .prefix(&format!("lifeboat-{what}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("a temporary directory for {what}: {e}"));
        // `setpriv --pdeathsig KILL` execs the server with the death signal
        // set (it survives the exec), so it dies with the thread that started
        // it even when no drop runs; the pid stays the server's. (util-linux,
        // so no `unsafe` pre_exec in this crate for a prctl.)
        let mut cmd = Command::new(paths::tool("setpriv"));
        cmd.args(["--pdeathsig", "KILL", "--"]).arg(program);
        configure(&mut cmd, port);
        let mut child = cmd
            .current_dir(cwd.path())
            // Stdin from /dev/null: the server neither reads nor holds the
            // test's stdin.
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group: drop kills whatever it started too; and a
            // terminal's Ctrl-C or nextest's group signal does not reach it
            // (the death signal above does the job then).
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        let log = Arc::new(Log::default());
        log.state.lock().unwrap().open_streams = 2;
        log.read_from(child.stdout.take().expect("piped stdout"));
        log.read_from(child.stderr.take().expect("piped stderr"));
        Server { what, port, child, reaped: None, log, _cwd: cwd }
    }

    /// Waits for a line containing `marker`, for the process to exit, or
    /// for `limit` to pass.
    fn wait_ready(&mut self, marker: &str, limit: Duration) -> Startup {
        let deadline = Instant::now() + limit;
        let log = self.log.clone();
        let mut state = log.state.lock().unwrap();
        loop {
            if state.lines.iter().any(|l| l.contains(marker)) {
                return Startup::Ready;
            }
            // Both streams closed, or (checked every 100 ms) the process is
            // gone while something it started holds them open.
            if state.open_streams == 0 {
                drop(state);
                let status = self.child.wait().unwrap_or_else(|e| panic!("waiting for {}: {e}", self.what));
                return self.exited(status);
            }
            if let Some(status) = self.child.try_wait().unwrap_or_else(|e| panic!("waiting for {}: {e}", self.what)) {
                drop(state);
                return self.exited(status);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Startup::TimedOut;
            }
            state = log.changed.wait_timeout(state, left.min(Duration::from_millis(100))).unwrap().0;
        }
    }

    /// Notes that the server was reaped with `status`, and lets the readers
    /// take in what is left in its pipes.
    fn exited(&mut self, status: ExitStatus) -> Startup {
        self.reaped = Some(status);
        self.log.wait_closed(Duration::from_secs(2));
        Startup::Exited(status)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.reaped.is_none() {
            // The group is the server's own (process_group(0)) and its
            // leader is not reaped yet, so its id still names that group.
            // SIGKILL: the server keeps nothing worth a clean shutdown.
            let _ = system::process::signal_group(self.child.id(), libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// A server's output lines (stdout and stderr interleaved as they came),
/// and how many of its two streams are still open.
#[derive(Default)]
struct Log {
    state: Mutex<LogState>,
    changed: Condvar,
}

#[derive(Default)]
struct LogState {
    lines: Vec<String>,
    open_streams: usize,
}

impl Log {
    /// Whether a line containing `marker` arrives within `limit`.
    fn wait_for(&self, marker: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut state = self.state.lock().unwrap();
        loop {
            if state.lines.iter().any(|l| l.contains(marker)) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || state.open_streams == 0 {
                return false;
            }
            state = self.changed.wait_timeout(state, left).unwrap().0;
        }
    }

    /// Reads `stream` line by line into the log on a thread of its own,
    /// until it closes.
    fn read_from(self: &Arc<Self>, stream: impl Read + Send + 'static) {
        let log = self.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).to_string();
                        log.state.lock().unwrap().lines.push(line);
                        log.changed.notify_all();
                    }
                }
            }
            log.state.lock().unwrap().open_streams -= 1;
            log.changed.notify_all();
        });
    }

    /// Waits up to `limit` for both streams to close.
    fn wait_closed(&self, limit: Duration) {
        let state = self.state.lock().unwrap();
        let _unused = self.changed.wait_timeout_while(state, limit, |s| s.open_streams > 0).unwrap();
    }

    /// The lines so far, one per line.
    fn text(&self) -> String {
        self.state.lock().unwrap().lines.join("\n")
    }

    fn count(&self, marker: &str) -> usize {
        self.state.lock().unwrap().lines.iter().filter(|l| l.contains(marker)).count()
    }
}

/// What both servers log for every request they answer (an access-log line).
const HTTP_LINE: &str = " HTTP/1.";

/// A server's access log, to set a client's count of its requests against.
pub trait RequestLog {
    /// Requests logged so far (one line each, written after the answer).
    fn requests_logged(&self) -> usize;
    /// Whether a line containing `marker` is in the log, waiting up to 10 s.
    fn logged(&self, marker: &str) -> bool;
}

/// One HTTP/1.0 request (so the answer is not chunked and the server
/// closes the connection after it): the status, the head, the body.
pub(crate) fn http(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect to {port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("{method} {target} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap_or_else(|e| panic!("{method} {target}: reading the answer: {e}"));
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let status = head
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status line in {head:?}"));
    (status, head.to_string(), body.to_string())
}

/// `s` encoded for an `application/x-www-form-urlencoded` body.
fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{http, Azurite, Moto, Server};
    use crate::process::pid_alive;
    use std::net::TcpStream;
    use std::path::Path;
    use std::time::{Duration, Instant};

    fn refuses(port: u16) -> bool {
        TcpStream::connect(("127.0.0.1", port)).is_err()
    }

    #[test]
    fn moto_serves_s3_buckets_and_objects() {
        let moto = Moto::start();
        assert_eq!(moto.endpoint(), format!("http://127.0.0.1:{}", moto.port()));
        // A well-formed SigV4 header whose signature moto does not check.
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={}/20260101/{}/s3/aws4_request, SignedHeaders=host, Signature=00",
            Moto::ACCESS_KEY_ID,
            Moto::REGION
        );
        let signed = [("Authorization", auth.as_str())];
        let (status, _, body) = http(moto.port(), "PUT", "/lifeboat-test", &signed, b"");
        assert_eq!(status, 200, "create bucket: {body}\n{}", moto.log());
        let (status, _, body) = http(moto.port(), "PUT", "/lifeboat-test/a/key", &signed, b"hello vault");
        assert_eq!(status, 200, "put object: {body}\n{}", moto.log());
        let (status, _, body) = http(moto.port(), "GET", "/", &signed, b"");
        assert_eq!(status, 200, "list buckets: {body}\n{}", moto.log());
        assert!(body.contains("<Name>lifeboat-test</Name>"), "the bucket is not listed: {body}");
        let (status, _, body) = http(moto.port(), "GET", "/lifeboat-test/a/key", &signed, b"");
        assert_eq!((status, body.as_str()), (200, "hello vault"), "{}", moto.log());
        // Unsigned is anonymous: the object is private.
        let (status, _, _) = http(moto.port(), "GET", "/lifeboat-test/a/key", &[], b"");
        assert_eq!(status, 403, "{}", moto.log());
        assert!(moto.logged("PUT /lifeboat-test/a/key"), "the log misses the request:\n{}", moto.log());
    }

    #[test]
    fn azurite_answers_blob_requests_as_azure_does() {
        let azurite = Azurite::start();
        assert_eq!(azurite.endpoint(), format!("http://127.0.0.1:{}/devstoreaccount1", azurite.port()));
        // Unsigned, so refused: but refused by Azurite's Blob service, with
        // Azure's error code and XML body (a signed request needs HMAC,
        // which this crate does not carry; the cloud backend's own tests
        // sign with Azurite::KEY).
        let (status, head, body) =
            http(azurite.port(), "PUT", "/devstoreaccount1/lifeboat?restype=container", &[], b"");
        assert_eq!(status, 403, "{head}\n{body}\n{}", azurite.log());
        assert!(head.contains("Server: Azurite-Blob/3.37."), "not Azurite 3.37's Blob service: {head}");
        assert!(head.contains("x-ms-error-code: AuthorizationFailure"), "{head}");
        assert!(body.contains("<Code>AuthorizationFailure</Code>"), "{body}");
        assert!(
            azurite.logged("PUT /devstoreaccount1/lifeboat?restype=container"),
            "the log misses the request:\n{}",
            azurite.log()
        );
    }

    #[test]
    fn drop_kills_and_reaps_both_servers() {
        let (azurite, moto) = (Azurite::start(), Moto::start());
        let servers = [(azurite.pid(), azurite.port()), (moto.pid(), moto.port())];
        for (pid, port) in servers {
            assert!(pid_alive(pid.into()) && !refuses(port), "server {pid} on {port} is not up");
        }
        drop(azurite);
        drop(moto);
        for (pid, port) in servers {
            // Reaped by drop: not even a zombie is left.
            assert!(!system::process::exists(pid), "server {pid} still exists after drop");
            assert!(refuses(port), "port {port} still accepts after drop");
        }
    }

    #[test]
    fn a_server_dies_with_the_thread_that_started_it() {
        // The thread that started the server ends while the server is still
        // owned (moved out to this thread), as when a test process dies
        // without unwinding: the death signal set by setpriv kills it, no
        // drop needed. (Why a server must stay on the thread that started it.)
        let moto = std::thread::spawn(Moto::start).join().unwrap();
        let (pid, port) = (moto.pid(), moto.port());
        let deadline = Instant::now() + Duration::from_secs(10);
        while pid_alive(pid.into()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // A zombie now, reaped by the drop below.
        assert!(!pid_alive(pid.into()), "moto_server {pid} outlived the thread that started it:\n{}", moto.log());
        assert!(refuses(port), "port {port} still accepts");
        drop(moto);
        assert!(!system::process::exists(pid), "moto_server {pid} was not reaped");
    }

    #[test]
    fn a_server_that_exits_before_it_listens_fails_with_its_output() {
        let start = || {
            Server::start(
                "fake",
                Path::new("/bin/sh"),
                |cmd, _| {
                    cmd.args(["-c", "echo about to fail; echo boom >&2; exit 3"]);
                },
                |port| format!("listening on {port}"),
            )
        };
        let err = std::panic::catch_unwind(start).expect_err("a server that exits must fail the test");
        let msg = err.downcast_ref::<String>().expect("a formatted panic message");
        assert!(msg.contains("fake exited with exit status: 3 before it listened"), "{msg}");
        assert!(msg.contains("about to fail") && msg.contains("boom"), "its output is missing: {msg}");
    }

    #[test]
    fn a_port_taken_before_the_bind_is_retried_once_on_another() {
        // A fake server whose first start finds its port taken (Node's
        // message), and whose second listens.
        let marks = tempfile::tempdir().unwrap();
        let script = r#"if [ -e "$1/taken" ]; then echo "listening on $2"; exec sleep 60; fi
            : > "$1/taken"; echo "Error: listen EADDRINUSE: address already in use 127.0.0.1:$2" >&2; exit 1"#;
        let server = Server::start(
            "fake",
            Path::new("/bin/sh"),
            |cmd, port| {
                cmd.args(["-c", script, "sh"]).arg(marks.path()).arg(port.to_string());
            },
            |port| format!("listening on {port}"),
        );
        assert!(marks.path().join("taken").exists(), "the first start did not run");
        let log = server.log.text();
        assert!(log.contains(&format!("listening on {}", server.port)), "{log}");
        let pid = server.child.id();
        drop(server);
        assert!(!system::process::exists(pid), "the fake server {pid} outlived its drop");
    }
}
