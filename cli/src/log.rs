//! The one log subscriber (issue 13, part 4): every `tracing` event of the
//! library crates and of this binary becomes one line on stderr, or one
//! entry in the journal when systemd runs us.
//!
//! - On a terminal or a pipe: `2026-11-25T15:53:00.123Z MESSAGE`, the
//!   message text as the event wrote it (tests and operators grep for it),
//!   stamped in RFC 3339 UTC. The level is not printed: messages that are
//!   warnings or errors say so in their text. Fields are not printed either
//!   (messages name their disk, peer and point); they are for the journal.
//! - Under systemd (`JOURNAL_STREAM` names the device and inode of our
//!   stderr): a datagram in the journal's native protocol to its socket,
//!   with `MESSAGE`, `PRIORITY`, `SYSLOG_IDENTIFIER`, `LIFEBOAT_TARGET` and
//!   each event field upper-cased (`DISK=web1`). If the socket cannot be
//!   opened, lines go to stderr as above.
//!
//! A line is formatted into one buffer on the thread that logs and handed
//! to a log thread, which writes it with one `write(2)` (or one `send(2)`),
//! so lines of different threads never interleave. A write that fails
//! (stderr at `/dev/full`, a reader that went away: Rust ignores SIGPIPE)
//! is dropped and counted in [`filter::log::dropped`], which a disk's
//! status reports as `log_lines_dropped`; it never panics. A stderr whose
//! reader stops reading without closing blocks the log thread only: past
//! 1,024 waiting lines, new ones are dropped and counted. `main` waits for
//! the queue (up to 5 s, [`flush`]) before the process exits. Nothing in
//! this module can fail or hold up the caller (DESIGN.md, invariant 9).

use std::fmt::{self, Write as _};
use std::io::{self, IsTerminal, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use crate::time::{now_ns, rfc3339};

/// Where the journal listens for native-protocol datagrams.
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Writes one whole line; an error is counted as a dropped line.
pub type LineWriter = Box<dyn Fn(&[u8]) -> io::Result<()> + Send + Sync>;

/// Where events go.
pub enum Sink {
    /// One human line per event through the writer (stderr in `lifeboat`).
    Lines(LineWriter),
    /// One native-protocol datagram per event, on a connected socket.
    Journal(UnixDatagram),
}

impl Sink {
    fn write(&self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::Lines(write) => write(bytes),
            Sink::Journal(socket) => socket.send(bytes).map(drop),
        }
    }
}

/// Lines waiting for the log thread at most; past that a line is dropped
/// and counted, and the thread that logged goes on.
const QUEUE_LINES: usize = 1024;

/// The layer that writes every event to its [`Sink`].
pub struct LogLayer {
    /// Render for the journal, not as a human line.
    journal: bool,
    out: Out,
}

enum Out {
    /// Written by the thread that logs.
    Now(Sink),
    /// Handed to the log thread.
    Queued { tx: SyncSender<Vec<u8>>, pending: Arc<Pending> },
}

/// Lines queued and not yet written, and a wake-up when that changes.
#[derive(Default)]
pub struct Pending {
    count: Mutex<usize>,
    changed: Condvar,
}

impl Pending {
    fn add(&self, n: isize) {
        let mut count = self.count.lock().unwrap_or_else(PoisonError::into_inner);
        *count = count.saturating_add_signed(n);
        self.changed.notify_all();
    }

    /// Waits up to `limit` until every queued line was written (or
    /// dropped); whether they were.
    pub fn wait(&self, limit: Duration) -> bool {
        let count = self.count.lock().unwrap_or_else(PoisonError::into_inner);
        let (count, _) =
            self.changed.wait_timeout_while(count, limit, |n| *n > 0).unwrap_or_else(PoisonError::into_inner);
        *count == 0
    }
}

impl LogLayer {
    /// A layer writing to `sink` on the thread that logs.
    pub fn new(sink: Sink) -> LogLayer {
        LogLayer { journal: matches!(sink, Sink::Journal(_)), out: Out::Now(sink) }
    }

    /// A layer handing its lines to a log thread that writes them to
    /// `sink`, at most `capacity` waiting: a stderr that blocks (a reader
    /// that stopped reading) blocks that thread only, and what does not fit
    /// is dropped and counted. The [`Pending`] lines, to wait for at exit.
    pub fn queued(sink: Sink, capacity: usize) -> io::Result<(LogLayer, Arc<Pending>)> {
        let journal = matches!(sink, Sink::Journal(_));
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(capacity);
        let pending = Arc::new(Pending::default());
        let done = Arc::clone(&pending);
        std::thread::Builder::new().name("log".into()).spawn(move || {
            // SIGTERM and SIGINT are for the thread that waits for them
            // (the daemons block them in every other thread): this one,
            // started before they are blocked, must not take them either.
            let _ = crate::signals::block_termination();
            for line in rx {
                if sink.write(&line).is_err() {
                    filter::log::count_dropped();
                }
                done.add(-1);
            }
        })?;
        Ok((LogLayer { journal, out: Out::Queued { tx, pending: Arc::clone(&pending) } }, pending))
    }
}

/// The lines the installed subscriber's log thread has yet to write.
static PENDING: OnceLock<Arc<Pending>> = OnceLock::new();

/// How long [`flush`] waits at most: a stderr that blocks must not keep
/// the process from exiting.
const FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// Installs the process's subscriber: the journal when systemd connected
/// our stderr to it, otherwise human lines on stderr, both written by a
/// log thread. Called once, first thing in `main`; [`flush`] before exit.
pub fn install() {
    let sink = match journal_stream() {
        Some(socket) => Sink::Journal(socket),
        None => Sink::Lines(Box::new(write_stderr)),
    };
    let layer = match LogLayer::queued(sink, QUEUE_LINES) {
        Ok((layer, pending)) => {
            let _ = PENDING.set(pending);
            layer
        }
        // No thread to be had: write on the thread that logs.
        Err(_) => LogLayer::new(Sink::Lines(Box::new(write_stderr))),
    };
    // Fails only if a subscriber is already set: then that one stays.
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer));
}

/// Waits (up to 5 s) until the log thread has written every line logged
/// so far: call before the process exits.
pub fn flush() {
    if let Some(pending) = PENDING.get() {
        let _ = pending.wait(FLUSH_LIMIT);
    }
}

/// A subscriber writing to `sink` on the thread that logs (tests).
#[cfg(test)]
pub fn subscriber(sink: Sink) -> impl Subscriber + Send + Sync {
    tracing_subscriber::registry().with(LogLayer::new(sink))
}

/// One line to stderr, in one write under its lock; on a terminal, around
/// any progress bar being drawn (the bar is cleared, then drawn again).
fn write_stderr(line: &[u8]) -> io::Result<()> {
    let write = || io::stderr().lock().write_all(line);
    if io::stderr().is_terminal() {
        crate::progress::suspend_bars(write)
    } else {
        write()
    }
}

/// The journal's socket, connected, if `JOURNAL_STREAM` says our stderr is
/// the journal's stream (systemd sets it for `StandardError=journal`; a
/// child whose stderr was redirected inherits the variable, hence the check
/// of device and inode).
fn journal_stream() -> Option<UnixDatagram> {
    let var = std::env::var("JOURNAL_STREAM").ok()?;
    let stderr = std::os::fd::AsFd::as_fd(&io::stderr()).try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(stderr).metadata().ok()?;
    if !names_stream(&var, meta.dev(), meta.ino()) {
        return None;
    }
    connect_journal(Path::new(JOURNAL_SOCKET)).ok()
}

/// Whether `JOURNAL_STREAM`'s value (`DEVICE:INODE`, decimal) names the file
/// with device `dev` and inode `ino`.
fn names_stream(var: &str, dev: u64, ino: u64) -> bool {
    var.split_once(':').is_some_and(|(d, i)| d.parse() == Ok(dev) && i.parse() == Ok(ino))
}

/// A datagram socket connected to the journal listening at `path`.
pub fn connect_journal(path: &Path) -> io::Result<UnixDatagram> {
    let socket = UnixDatagram::unbound()?;
    socket.connect(path)?;
    Ok(socket)
}

/// Crates of the network stack (the vault server and its client) whose
/// debug and trace events are their own internals (every HTTP/2 frame):
/// never built, let alone written. Their warnings and errors still show.
const QUIET_BELOW_INFO: [&str; 6] = ["h2", "hyper", "hyper_util", "rustls", "tokio_rustls", "tokio"];
/// The cloud vaults' client crates, whose info events are chatter too
/// ("Using Static credential provider" at every open); their warnings (a
/// retried request) still show.
const QUIET_BELOW_WARN: [&str; 2] = ["object_store", "reqwest"];

fn is_dependency_chatter(m: &Metadata<'_>) -> bool {
    let of = |crates: &[&str]| {
        crates.iter().any(|c| m.target().strip_prefix(c).is_some_and(|rest| rest.is_empty() || rest.starts_with("::")))
    };
    (*m.level() > Level::INFO && of(&QUIET_BELOW_INFO)) || (*m.level() > Level::WARN && of(&QUIET_BELOW_WARN))
}

impl<S: Subscriber> Layer<S> for LogLayer {
    fn register_callsite(&self, m: &'static Metadata<'static>) -> Interest {
        if is_dependency_chatter(m) {
            Interest::never()
        } else {
            Interest::always()
        }
    }

    fn enabled(&self, m: &Metadata<'_>, _: Context<'_, S>) -> bool {
        !is_dependency_chatter(m)
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let line = if self.journal {
            journal_entry(event.metadata().level(), event.metadata().target(), &fields)
        } else {
            human_line(now_ns(), &fields).into_bytes()
        };
        let sent = match &self.out {
            Out::Now(sink) => sink.write(&line).is_ok(),
            Out::Queued { tx, pending } => {
                pending.add(1);
                let queued = tx.try_send(line).is_ok();
                if !queued {
                    pending.add(-1);
                }
                queued
            }
        };
        if !sent {
            filter::log::count_dropped();
        }
    }
}

/// An event's message and its other fields, as text.
#[derive(Default)]
struct Fields {
    message: String,
    others: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            value.clone_into(&mut self.message);
        } else {
            self.others.push((field.name(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message.clear();
            let _ = write!(self.message, "{value:?}");
        } else {
            self.others.push((field.name(), format!("{value:?}")));
        }
    }
}

/// `STAMP MESSAGE\n`; an event without a message shows its fields instead.
fn human_line(ns: u64, fields: &Fields) -> String {
    let mut line = rfc3339(ns);
    line.push(' ');
    if fields.message.is_empty() {
        let shown: Vec<String> = fields.others.iter().map(|(k, v)| format!("{k}={v}")).collect();
        line.push_str(&shown.join(" "));
    } else {
        line.push_str(&fields.message);
    }
    line.push('\n');
    line
}

/// The journal's native protocol: `NAME=value\n` per field, or, for a
/// value with a newline, `NAME\n`, its length as 64-bit little endian, the
/// value and `\n`.
fn journal_entry(level: &Level, target: &str, fields: &Fields) -> Vec<u8> {
    let priority = match *level {
        Level::ERROR => "3",
        Level::WARN => "4",
        Level::INFO => "6",
        Level::DEBUG | Level::TRACE => "7",
    };
    let mut out = Vec::with_capacity(128 + fields.message.len());
    put_field(&mut out, "MESSAGE", &fields.message);
    put_field(&mut out, "PRIORITY", priority);
    put_field(&mut out, "SYSLOG_IDENTIFIER", "lifeboat");
    put_field(&mut out, "LIFEBOAT_TARGET", target);
    for (name, value) in &fields.others {
        put_field(&mut out, &journal_name(name), value);
    }
    out
}

/// A field name as the journal takes it: upper-case letters, digits and
/// `_`, not starting with `_` (reserved for trusted fields) or a digit.
fn journal_name(name: &str) -> String {
    let mut out: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    if !out.starts_with(|c: char| c.is_ascii_uppercase()) {
        out.insert(0, 'F');
    }
    out
}

fn put_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    if value.contains('\n') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        out.push(b'=');
    }
    out.extend_from_slice(value.as_bytes());
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A subscriber whose lines go into the returned buffer.
    fn captured() -> (impl Subscriber + Send + Sync, Arc<Mutex<Vec<u8>>>) {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let out = Arc::clone(&buf);
        let sink = Sink::Lines(Box::new(move |line| {
            out.lock().unwrap().extend_from_slice(line);
            Ok(())
        }));
        (subscriber(sink), buf)
    }

    /// A stamp as `time::rfc3339` writes it: `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    fn is_stamp(s: &str) -> bool {
        let b = s.as_bytes();
        b.len() == 24
            && b.iter().enumerate().all(|(i, c)| match i {
                4 | 7 => *c == b'-',
                10 => *c == b'T',
                13 | 16 => *c == b':',
                19 => *c == b'.',
                23 => *c == b'Z',
                _ => c.is_ascii_digit(),
            })
    }

    #[test]
    fn a_library_event_becomes_one_stamped_line_with_its_message_verbatim() {
        let (sub, buf) = captured();
        tracing::subscriber::with_default(sub, || {
            // An event as the agent crate writes it, and one with a field,
            // which the human line leaves out.
            tracing::info!("lifeboat agent: web1: point 3 committed");
            tracing::warn!(disk = "web1", "lifeboat: warning: web1: vault slow");
        });
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let (stamp, msg) = lines[0].split_once(' ').unwrap();
        assert!(is_stamp(stamp), "not an RFC 3339 stamp: {stamp:?}");
        assert_eq!(msg, "lifeboat agent: web1: point 3 committed");
        let (stamp, msg) = lines[1].split_once(' ').unwrap();
        assert!(is_stamp(stamp), "{stamp:?}");
        assert_eq!(msg, "lifeboat: warning: web1: vault slow");
    }

    #[test]
    fn the_network_stacks_debug_chatter_is_not_written_but_its_warnings_are() {
        let (sub, buf) = captured();
        tracing::subscriber::with_default(sub, || {
            tracing::trace!(target: "h2::codec", "decoding frame from 33B");
            tracing::debug!(target: "hyper_util::client", "connecting");
            tracing::warn!(target: "rustls::conn", "a warning from rustls");
            tracing::debug!(target: "h2o", "a crate whose name only starts like one");
            tracing::info!(target: "object_store::aws::builder", "Using Static credential provider");
            tracing::warn!(target: "object_store::client::retry", "Encountered transport error, retrying");
            tracing::debug!("lifeboat: a debug line of our own");
        });
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().map(|l| l.split_once(' ').unwrap().1).collect();
        assert_eq!(
            lines,
            [
                "a warning from rustls",
                "a crate whose name only starts like one",
                "Encountered transport error, retrying",
                "lifeboat: a debug line of our own"
            ],
            "{text}"
        );
    }

    #[test]
    fn a_full_stderr_counts_every_lost_line_and_never_panics() {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("open /dev/full");
        let sink = Sink::Lines(Box::new(move |line| (&full).write_all(line)));
        let before = filter::log::dropped();
        tracing::subscriber::with_default(subscriber(sink), || {
            for n in 0..3 {
                tracing::error!("lifeboat: error: line {n}");
            }
        });
        // Other tests in this process may drop lines too: at least ours.
        assert!(filter::log::dropped() >= before + 3, "{} lost lines counted, want 3", filter::log::dropped() - before);
    }

    #[test]
    fn a_stderr_that_blocks_never_blocks_the_thread_that_logs() {
        // The writer blocks on every line until `release` is dropped, and
        // says when it has taken one.
        let (release, blocked) = mpsc::channel::<()>();
        let blocked = Mutex::new(blocked);
        let (took_tx, took) = mpsc::channel::<()>();
        let written = Arc::new(Mutex::new(Vec::new()));
        let out = Arc::clone(&written);
        let sink = Sink::Lines(Box::new(move |line| {
            let _ = took_tx.send(());
            let _ = blocked.lock().unwrap().recv();
            out.lock().unwrap().extend_from_slice(line);
            Ok(())
        }));
        let (layer, pending) = LogLayer::queued(sink, 4).unwrap();
        let before = filter::log::dropped();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            // The writer holds line 0 before the rest come (else which
            // lines fit depends on when its thread first runs).
            tracing::info!("line 0");
            took.recv_timeout(Duration::from_secs(30)).expect("the writer took the first line");
            for n in 1..10 {
                tracing::info!("line {n}");
            }
        });
        // Here only because logging did not wait for the writer. Four lines
        // wait in the queue, one may be in the writer's hands; the rest were
        // dropped and counted.
        let dropped = filter::log::dropped() - before;
        assert!(dropped == 5 || dropped == 6, "{dropped} lines dropped");
        drop(release);
        assert!(pending.wait(Duration::from_secs(30)), "the queue did not drain");
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        let got: Vec<&str> = text.lines().map(|l| l.split_once(' ').unwrap().1).collect();
        let want: Vec<String> = (0..10 - dropped).map(|n| format!("line {n}")).collect();
        assert_eq!(got, want, "the lines that fit are written whole and in order");
    }

    #[test]
    fn journal_entries_carry_message_priority_and_fields() {
        let dir = tempfile_dir();
        let path = dir.join("journal.socket");
        let journal = UnixDatagram::bind(&path).unwrap();
        let sink = Sink::Journal(connect_journal(&path).unwrap());
        let msg = "lifeboat: warning: web1: two\nlines";
        tracing::subscriber::with_default(subscriber(sink), || {
            tracing::warn!(disk = "web1", "{msg}");
        });
        let mut buf = vec![0u8; 4096];
        let n = journal.recv(&mut buf).unwrap();
        let entry = &buf[..n];
        let mut want = b"MESSAGE\n".to_vec();
        want.extend_from_slice(&(msg.len() as u64).to_le_bytes());
        want.extend_from_slice(msg.as_bytes());
        want.extend_from_slice(b"\nPRIORITY=4\nSYSLOG_IDENTIFIER=lifeboat\n");
        assert!(entry.starts_with(&want), "{:?}", String::from_utf8_lossy(entry));
        let rest = String::from_utf8_lossy(&entry[want.len()..]).into_owned();
        assert!(rest.starts_with("LIFEBOAT_TARGET=lifeboat::log::tests\n"), "{rest}");
        assert!(rest.ends_with("DISK=web1\n"), "{rest}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn journal_stream_must_name_our_stderr() {
        assert!(names_stream("64769:1234", 64769, 1234));
        assert!(!names_stream("64769:1234", 64769, 1235), "a redirected child's stderr is another file");
        assert!(!names_stream("64769:1234", 1, 1234));
        assert!(!names_stream("", 0, 0));
        assert!(!names_stream("64769", 64769, 0));
        assert!(!names_stream("x:y", 0, 0));
    }

    #[test]
    fn journal_field_names_are_what_the_journal_accepts() {
        assert_eq!(journal_name("disk"), "DISK");
        assert_eq!(journal_name("peer.addr"), "PEER_ADDR");
        assert_eq!(journal_name("_x"), "F_X");
        assert_eq!(journal_name("9lives"), "F9LIVES");
    }

    /// A private scratch directory (cli has no tempfile dependency).
    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("lifeboat-log-test-{}-{}", std::process::id(), now_ns()));
        std::fs::create_dir(&dir).unwrap();
        dir
    }
}
