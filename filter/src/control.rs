//! The filter's control socket: how another process (the shipper, `lifeboat
//! snapshot`) cuts the disk and reads the cut.
//!
//! A unix stream socket; requests are one text line each, replies are one
//! text line (`ok ...` or `err MESSAGE`), followed for `blocks` and `read` by
//! binary data whose length the line gives:
//!
//! | request              | reply line                          | then                         |
//! |----------------------|-------------------------------------|------------------------------|
//! | `info`               | `ok DISK_SIZE BLOCK_SIZE CUT SUSPECT LAST` | (CUT is the generation or `-`; SUSPECT is 0 or 1; LAST is the last committed POINT or `-`) |
//! | `cut dirty` / `cut full` | `ok GENERATION DIRTY READABLE`  |                              |
//! | `blocks`             | `ok N`                              | N little-endian u64 block indexes |
//! | `read FIRST COUNT`   | `ok BYTES`                          | the blocks FIRST.. as at the cut, concatenated (each released) |
//! | `finish POINT`       | `ok N`: POINT recorded in the state file, then the cut bits dropped | |
//! | `finish verified POINT` | `ok N`, and the suspect flag cleared (the cut was a full verify) | |
//! | `abort`              | `ok N` (cut bits back to live)      |                              |
//!
//! POINT is the point the cycle committed from the cut, the one the dirty
//! maps are relative to from now on: `VAULT_ID:SEQUENCE:ROOT_ID:CUT_GENERATION`
//! (ids in hex). A cut cannot be finished without naming it.
//!
//! A cut belongs to the connection that made it: if that connection closes
//! before `finish`, the cut is aborted, so a crashed reader loses nothing.
//!
//! Only root and the user the filter runs as may use the socket: the file is
//! made 0600 before it listens, whatever the umask, and each connection's
//! peer credentials (SO_PEERCRED) are checked before its first request is
//! served; anyone else gets one line in answer to its first request, `err
//! uid N may not use the control socket ...`, and is disconnected (and the
//! filter logs the refusal).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use disk_format::{LastPoint, RootId, VaultId};

use crate::disk::{CutInfo, CutKind, Disk};

/// Largest `read` answered in one reply.
pub const MAX_READ_BYTES: u64 = 64 << 20;
const MAX_LINE: usize = 256;

/// The control connections being served, with their threads.
type Conns = Arc<Mutex<Vec<(UnixStream, JoinHandle<()>)>>>;

/// The control socket server of one disk.
pub struct ControlServer {
    path: PathBuf,
    listener: Arc<UnixListener>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Each connection's socket (to shut it down) and thread (to join it).
    conns: Conns,
}

impl ControlServer {
    /// Binds `path` (replacing a stale socket file), private to its owner
    /// whatever the umask, and serves `disk` on a thread.
    pub fn start(path: &Path, disk: Arc<Disk>) -> io::Result<ControlServer> {
        if path.symlink_metadata().is_ok() {
            std::fs::remove_file(path)?;
        }
        let listener = crate::sys::bind_private_unix(path)
            .map_err(|e| io::Error::new(e.kind(), format!("binding control socket {}: {e}", path.display())))?;
        let listener = Arc::new(listener);
        let for_thread = listener.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let conns: Conns = Arc::default();
        let conns2 = conns.clone();
        let thread = std::thread::Builder::new().name("control".into()).spawn(move || {
            let listener = for_thread;
            for conn in listener.incoming() {
                if stop2.load(Ordering::Acquire) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let Ok(handle) = conn.try_clone() else { continue };
                let disk = disk.clone();
                let spawned = std::thread::Builder::new().name("control-conn".into()).spawn(move || serve(conn, &disk));
                let mut list = conns2.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                // Forget connections that ended, so a long-lived server does not grow.
                list.retain(|(_, t)| !t.is_finished());
                if let Ok(t) = spawned {
                    list.push((handle, t));
                }
            }
        })?;
        Ok(ControlServer { path: path.to_owned(), listener, stop, thread: Some(thread), conns })
    }

    /// Stops accepting, ends every connection (a cut a client still held is
    /// aborted: its blocks stay dirty) and waits for their threads, so that
    /// nothing holds the disk when this returns; removes the socket file.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = crate::sys::shutdown_listener(&*self.listener); // wakes the accept loop
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for (sock, _) in &conns {
            let _ = sock.shutdown(std::net::Shutdown::Both);
        }
        for (_, t) in conns {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(conn: UnixStream, disk: &Disk) {
    match crate::sys::peer_uid(&conn) {
        Ok(uid) if crate::sys::peer_allowed(uid) => {}
        Ok(uid) => {
            tracing::warn!("control: refused a connection from uid {uid}: only root and the filter's own user may cut");
            // Read (and ignore) the first request before answering it: closing
            // a unix socket with unread data resets the peer, which could then
            // lose the answer. Bounded in size and time.
            let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(2)));
            let _ = BufReader::new(&conn).take(MAX_LINE as u64).read_line(&mut String::new());
            let _ = writeln!(
                &conn,
                "err uid {uid} may not use the control socket of this disk: only root and the user running the filter may"
            );
            let _ = conn.shutdown(std::net::Shutdown::Write);
            return;
        }
        Err(e) => {
            tracing::warn!("control: refused a connection whose peer credentials cannot be read: {e}");
            return;
        }
    }
    let mut owns_cut = false;
    let result = serve_inner(&conn, disk, &mut owns_cut);
    if owns_cut && disk.abort_cut().is_ok() {
        tracing::warn!(
            "control: a client left without finishing its cut; the cut was aborted and its blocks stay dirty"
        );
    }
    if let Err(e) = result {
        if e.kind() != io::ErrorKind::UnexpectedEof && e.kind() != io::ErrorKind::BrokenPipe {
            tracing::warn!("control: connection error: {e}");
        }
    }
}

fn serve_inner(conn: &UnixStream, disk: &Disk, owns_cut: &mut bool) -> io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = io::BufWriter::with_capacity(1 << 20, conn.try_clone()?);
    let mut line = String::new();
    let mut data = Vec::new();
    loop {
        line.clear();
        let n = reader.by_ref().take(MAX_LINE as u64).read_line(&mut line)?;
        if n == 0 {
            return Ok(());
        }
        if !line.ends_with('\n') {
            writeln!(out, "err request line too long or not terminated")?;
            out.flush()?;
            return Ok(());
        }
        data.clear();
        let reply = handle(line.trim(), disk, owns_cut, &mut data);
        match reply {
            Ok(text) => writeln!(out, "ok {text}")?,
            Err(msg) => writeln!(out, "err {}", msg.replace('\n', " "))?,
        }
        out.write_all(&data)?;
        out.flush()?;
    }
}

/// One control request, as parsed from its line (see the module docs for the
/// syntax). [`parse_request`] reads it, [`Request::to_line`] writes it: the
/// server uses the one and [`ControlClient`] the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// `info`
    Info,
    /// `cut dirty` / `cut full`
    Cut(CutKind),
    /// `blocks`
    Blocks,
    /// `read FIRST COUNT`
    Read {
        /// First block.
        first: u64,
        /// Number of blocks.
        count: u64,
    },
    /// `finish [verified] POINT`
    Finish {
        /// The point committed from the cut.
        point: LastPoint,
        /// The cut was a full verify: clear the suspect flag.
        verified: bool,
    },
    /// `abort`
    Abort,
}

impl Request {
    /// The request's line, without the newline: what [`parse_request`] reads back.
    pub fn to_line(&self) -> String {
        match self {
            Request::Info => "info".into(),
            Request::Cut(CutKind::Dirty) => "cut dirty".into(),
            Request::Cut(CutKind::Full) => "cut full".into(),
            Request::Blocks => "blocks".into(),
            Request::Read { first, count } => format!("read {first} {count}"),
            Request::Finish { point, verified: false } => format!("finish {}", point_token(point)),
            Request::Finish { point, verified: true } => format!("finish verified {}", point_token(point)),
            Request::Abort => "abort".into(),
        }
    }
}

/// Parses one request line (without its newline; words are separated by
/// ASCII whitespace). A pure function of the text: whether the connection
/// owns a cut is judged by the server afterwards. The error says what is
/// wrong with the line.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let words: Vec<&str> = line.split_ascii_whitespace().collect();
    match words.as_slice() {
        ["info"] => Ok(Request::Info),
        ["cut", kind] => match *kind {
            "dirty" => Ok(Request::Cut(CutKind::Dirty)),
            "full" => Ok(Request::Cut(CutKind::Full)),
            other => Err(format!("unknown cut kind {other:?}: use `dirty` or `full`")),
        },
        ["blocks"] => Ok(Request::Blocks),
        ["read", first, count] => {
            let parse = |s: &str| s.parse::<u64>().map_err(|_| format!("bad number {s:?} in read request"));
            Ok(Request::Read { first: parse(first)?, count: parse(count)? })
        }
        ["finish"] | ["finish", "verified"] => {
            Err("finish names the point committed from the cut: `finish [verified] VAULT:SEQ:ROOT:GEN`".into())
        }
        ["finish", point] | ["finish", "verified", point] => {
            let verified = words.len() == 3;
            let point = parse_point(point).ok_or_else(|| format!("bad point {point:?} in finish request"))?;
            Ok(Request::Finish { point, verified })
        }
        ["finish", ..] => Err(format!("malformed finish request {line:?}: use `finish [verified] VAULT:SEQ:ROOT:GEN`")),
        ["abort"] => Ok(Request::Abort),
        _ => Err(format!("unknown request {line:?}")),
    }
}

/// Whether `line` is (or tries to be) a request that needs the cut: those are
/// answered "not yours" before their syntax is judged.
fn wants_the_cut(line: &str) -> bool {
    let words: Vec<&str> = line.split_ascii_whitespace().collect();
    matches!(words.as_slice(), ["blocks" | "finish" | "abort"] | ["finish", ..] | ["read", _, _])
}

fn handle(req: &str, disk: &Disk, owns_cut: &mut bool, data: &mut Vec<u8>) -> Result<String, String> {
    let not_owner = || {
        disk.cut_in_progress()
            .map(|g| format!("cut generation {g} belongs to another control connection"))
            .unwrap_or_else(|| "no cut is in progress; send `cut dirty` or `cut full` first".into())
    };
    if !*owns_cut && wants_the_cut(req) {
        return Err(not_owner());
    }
    match parse_request(req)? {
        Request::Info => {
            let g = disk.geometry();
            let cut = disk.cut_in_progress().map_or("-".to_string(), |g| g.to_string());
            let header = disk.state().header();
            let suspect = u8::from(header.flags.suspect);
            let last = header.last_point.as_ref().map_or("-".to_string(), point_token);
            Ok(format!("{} {} {cut} {suspect} {last}", g.disk_size, g.block_size))
        }
        Request::Cut(kind) => {
            let CutInfo { generation, dirty_blocks, readable_blocks } = disk.cut(kind).map_err(|e| e.to_string())?;
            *owns_cut = true;
            Ok(format!("{generation} {dirty_blocks} {readable_blocks}"))
        }
        Request::Blocks => {
            let blocks = disk.cut_blocks().map_err(|e| e.to_string())?;
            data.extend(blocks.iter().flat_map(|b| b.to_le_bytes()));
            Ok(blocks.len().to_string())
        }
        Request::Read { first, count } => {
            let g = disk.geometry();
            let end = first.checked_add(count).filter(|&e| e <= g.block_count);
            let Some(end) = end else {
                return Err(format!("blocks {first}+{count} are past the disk's {} blocks", g.block_count));
            };
            if count * u64::from(g.block_size) > MAX_READ_BYTES {
                return Err(format!("read of {count} blocks is over the {MAX_READ_BYTES}-byte limit; ask for fewer"));
            }
            for b in first..end {
                let at = data.len();
                data.resize(at + g.block_len(b), 0);
                if let Err(e) = disk.read_cut_block(b, &mut data[at..]) {
                    data.clear();
                    return Err(e.to_string());
                }
            }
            Ok(data.len().to_string())
        }
        Request::Finish { point, verified } => {
            let n = disk.finish_cut(point, verified).map_err(|e| e.to_string())?;
            *owns_cut = false;
            Ok(n.to_string())
        }
        Request::Abort => {
            let n = disk.abort_cut().map_err(|e| e.to_string())?;
            *owns_cut = false;
            Ok(n.to_string())
        }
    }
}

/// Runs [`parse_request`] on `data` the way the `control_request` fuzz target
/// does: the whole input and each of its `\n`-separated lines, as lossy UTF-8
/// and (where valid) as the raw bytes, each as is and trimmed (the server
/// trims). Every accepted request must come back unchanged from
/// [`Request::to_line`], and that line must be canonical. Returns how many
/// pieces parsed; panics only on a broken round trip.
pub fn fuzz_request_line_bytes(data: &[u8]) -> usize {
    let mut accepted = 0;
    let mut check = |text: &str| {
        for piece in [text, text.trim()] {
            if let Ok(req) = parse_request(piece) {
                accepted += 1;
                let line = req.to_line();
                assert!(!line.contains('\n'), "request line {line:?} contains a newline");
                assert!(line.len() < MAX_LINE, "request line {line:?} is longer than the server reads");
                assert_eq!(parse_request(&line), Ok(req), "round trip of {piece:?} through {line:?}");
            }
        }
    };
    let lossy = String::from_utf8_lossy(data);
    check(&lossy);
    for line in lossy.split('\n') {
        check(line);
    }
    for raw in data.split(|&b| b == b'\n') {
        if let Ok(line) = std::str::from_utf8(raw) {
            check(line);
        }
    }
    accepted
}

/// The text form of a point in the protocol: `VAULT:SEQUENCE:ROOT:GENERATION`.
fn point_token(p: &LastPoint) -> String {
    format!("{}:{}:{}:{}", p.vault_id, p.sequence, p.root_id, p.cut_generation)
}

fn parse_point(s: &str) -> Option<LastPoint> {
    let mut it = s.split(':');
    let (v, seq, root, generation) = (it.next()?, it.next()?, it.next()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    let sequence = seq.parse().ok().filter(|&n| n != 0)?;
    Some(LastPoint {
        vault_id: VaultId::from_hex(v)?,
        sequence,
        root_id: RootId::from_hex(root)?,
        cut_generation: generation.parse().ok()?,
    })
}

/// A client of a filter's control socket.
pub struct ControlClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

/// Disk facts the filter reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteInfo {
    /// Disk size in bytes.
    pub disk_size: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// Generation of the cut in progress.
    pub cut: Option<u64>,
    /// The state is suspect: the next cycle must verify every block.
    pub suspect: bool,
    /// The point the dirty maps are relative to (the last one committed).
    pub last_point: Option<LastPoint>,
}

fn bad(msg: String) -> io::Error {
    io::Error::other(msg)
}

impl ControlClient {
    /// Connects to the control socket at `path`.
    pub fn connect(path: &Path) -> io::Result<ControlClient> {
        let s = UnixStream::connect(path)?;
        Ok(ControlClient { reader: BufReader::with_capacity(1 << 20, s.try_clone()?), writer: s })
    }

    fn request(&mut self, req: &Request) -> io::Result<String> {
        let req = req.to_line();
        self.writer.write_all(format!("{req}\n").as_bytes())?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the filter closed the control connection"));
        }
        let line = line.trim_end();
        match line.split_once(' ') {
            Some(("ok", rest)) => Ok(rest.to_string()),
            Some(("err", msg)) => Err(bad(format!("the filter refused `{req}`: {msg}"))),
            _ => Err(bad(format!("malformed control reply {line:?}"))),
        }
    }

    fn numbers(text: &str, n: usize) -> io::Result<Vec<u64>> {
        let v: Vec<u64> = text.split_ascii_whitespace().filter_map(|w| w.parse().ok()).collect();
        if v.len() != n {
            return Err(bad(format!("malformed control reply {text:?}")));
        }
        Ok(v)
    }

    /// Disk size, block size and the cut in progress.
    pub fn info(&mut self) -> io::Result<RemoteInfo> {
        let r = self.request(&Request::Info)?;
        let w: Vec<&str> = r.split_ascii_whitespace().collect();
        let [size, bs, cut, suspect, last] = w.as_slice() else {
            return Err(bad(format!("malformed info reply {r:?}")));
        };
        let num = |s: &str| s.parse::<u64>().map_err(|_| bad(format!("malformed info reply {r:?}")));
        Ok(RemoteInfo {
            disk_size: num(size)?,
            block_size: u32::try_from(num(bs)?).map_err(|_| bad(format!("malformed info reply {r:?}")))?,
            cut: if *cut == "-" { None } else { Some(num(cut)?) },
            suspect: *suspect == "1",
            last_point: match *last {
                "-" => None,
                p => Some(parse_point(p).ok_or_else(|| bad(format!("malformed point in info reply {r:?}")))?),
            },
        })
    }

    /// Cuts the disk.
    pub fn cut(&mut self, kind: CutKind) -> io::Result<CutInfo> {
        let v = Self::numbers(&self.request(&Request::Cut(kind))?, 3)?;
        Ok(CutInfo { generation: v[0], dirty_blocks: v[1], readable_blocks: v[2] })
    }

    /// Like [`ControlClient::cut`], but while another cut is in progress (a
    /// replication cycle of the agent, another snapshot) retries every 100 ms
    /// for up to `limit` before failing.
    pub fn cut_when_free(&mut self, kind: CutKind, limit: std::time::Duration) -> io::Result<CutInfo> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            match self.cut(kind) {
                Err(e) if e.to_string().contains("already in progress") && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                r => return r,
            }
        }
    }

    /// The cut's dirty blocks.
    pub fn blocks(&mut self) -> io::Result<Vec<u64>> {
        let n = Self::numbers(&self.request(&Request::Blocks)?, 1)?[0];
        let mut bytes = vec![0u8; usize::try_from(n * 8).map_err(|_| bad("too many blocks".into()))?];
        self.reader.read_exact(&mut bytes)?;
        Ok(bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
    }

    /// Reads `count` blocks from `first` as at the cut, appending them to `out`.
    pub fn read(&mut self, first: u64, count: u64, out: &mut Vec<u8>) -> io::Result<()> {
        let n = Self::numbers(&self.request(&Request::Read { first, count })?, 1)?[0];
        if n > MAX_READ_BYTES {
            return Err(bad(format!("control reply announces {n} bytes, over the limit")));
        }
        let at = out.len();
        out.resize(at + usize::try_from(n).expect("<= 64 MiB"), 0);
        self.reader.read_exact(&mut out[at..])
    }

    /// Ends the cut after `point` was committed from it: the filter records
    /// the point and drops the cut's bits. With `verified`, the cut was a
    /// full verify and the suspect flag is cleared.
    pub fn finish(&mut self, point: &LastPoint, verified: bool) -> io::Result<u64> {
        Ok(Self::numbers(&self.request(&Request::Finish { point: *point, verified })?, 1)?[0])
    }

    /// Ends the cut, returning its bits to the live map.
    pub fn abort(&mut self) -> io::Result<u64> {
        Ok(Self::numbers(&self.request(&Request::Abort)?, 1)?[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point() -> LastPoint {
        LastPoint { vault_id: VaultId([0xab; 16]), sequence: 7, root_id: RootId([0x5c; 32]), cut_generation: u64::MAX }
    }

    #[test]
    fn every_request_round_trips_through_its_line() {
        let all = [
            Request::Info,
            Request::Cut(CutKind::Dirty),
            Request::Cut(CutKind::Full),
            Request::Blocks,
            Request::Read { first: 0, count: u64::MAX },
            Request::Finish { point: point(), verified: false },
            Request::Finish { point: point(), verified: true },
            Request::Abort,
        ];
        for req in all {
            assert_eq!(parse_request(&req.to_line()), Ok(req), "{}", req.to_line());
        }
        assert_eq!(parse_request("  read\t3  4 "), Ok(Request::Read { first: 3, count: 4 }));
        assert!(parse_request("finish").unwrap_err().contains("finish names the point"));
        assert!(parse_request("finish 1:2:3:4").unwrap_err().contains("bad point"));
        assert!(parse_request("cut half").unwrap_err().contains("unknown cut kind"));
        assert!(parse_request("read x 1").unwrap_err().contains("bad number \"x\""));
        assert!(parse_request("blocks 1").unwrap_err().contains("unknown request"));
        assert!(wants_the_cut("finish 1:2:3:4") && wants_the_cut("read x y") && !wants_the_cut("read 1"));
    }

    #[test]
    fn fuzz_harness_on_pseudo_random_input() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let words: [&[u8]; 12] = [
            b"info",
            b"cut",
            b"dirty",
            b"full",
            b"blocks",
            b"read",
            b"finish",
            b"verified",
            b"abort",
            b" ",
            b"\n",
            b"\t",
        ];
        let p = point_token(&point()).into_bytes();
        let mut accepted = 0;
        for i in 0..20000 {
            let mut data = Vec::new();
            for _ in 0..next() % 6 {
                match next() % 8 {
                    0..=3 => data.extend_from_slice(words[usize::try_from(next() % 12).unwrap()]),
                    4 => data.extend_from_slice((next() % 1000).to_string().as_bytes()),
                    5 => data.extend_from_slice(&p[..usize::try_from(next()).unwrap() % (p.len() + 1)]),
                    _ => data.extend((0..next() % 4).map(|_| next().to_le_bytes()[0])),
                }
                if i % 2 == 0 {
                    data.push(b' ');
                }
            }
            accepted += fuzz_request_line_bytes(&data);
        }
        // The generator must reach the parser's accepting paths, or the test proves little.
        assert!(accepted > 2000, "only {accepted} pieces parsed");
    }
}
