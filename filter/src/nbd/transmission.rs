//! The transmission phase of one connection.
//!
//! The connection's thread is the *reader*: it parses request headers, reads
//! write payloads into pooled buffers and queues the requests. A few worker
//! threads (per connection) take requests off the queue, run them against the
//! [`Export`] in parallel and send each reply whole (header and data in one
//! `writev`) under the connection's write lock, in whatever order they finish.
//! Workers start when a request finds none idle, up to
//! [`WORKERS_PER_CONNECTION`]: a connection that sends nothing costs its
//! reader thread only.
//!
//! What is in flight is bounded (count and bytes), so a client pipelining
//! huge writes cannot make the server allocate without limit; the reader
//! simply stops reading until workers catch up.
//!
//! Requests the spec says to refuse get their error reply from the reader,
//! which still consumes a refused write's payload so the stream stays in step.
//! A bad magic, EOF, `NBD_CMD_DISC` or a failed reply send ends reading; the
//! requests already queued still run to completion (writes reach the export)
//! before the connection closes.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, BufReader, IoSlice, Read, Write};
use std::net::Shutdown;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread;

use super::proto::{self, Errno, Op, ProtoError};
use super::server::Socket;
use super::Export;

/// Worker threads per connection. Export calls may block (fsync, a cold
/// read); four keep a deep queue moving on a small host without piling up
/// threads when a client opens many connections.
const WORKERS_PER_CONNECTION: usize = 4;
/// At most this many requests queued or running per connection.
const MAX_IN_FLIGHT: usize = 256;
/// At most this many payload bytes (write data, read buffers) in flight per
/// connection; one request may exceed it alone (up to
/// [`proto::MAX_BLOCK_SIZE`]) when nothing else is in flight.
const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;
/// Buffers kept for reuse per connection, and the largest one kept.
const POOL_MAX_BUFFERS: usize = 2 * WORKERS_PER_CONNECTION + 8;
const POOL_MAX_BUFFER_LEN: usize = 4 << 20;

/// Lock a mutex, ignoring poisoning: every critical section here leaves the
/// data consistent, and a panicking export call is caught before it could
/// poison anything.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a connection's transmission phase ended.
#[derive(Debug)]
pub(crate) enum Ending {
    /// The client sent `NBD_CMD_DISC`.
    Disconnect,
    /// The client closed the connection between requests (or the server shut
    /// the socket's read side down).
    Eof,
    /// The client closed the connection in the middle of a request.
    Truncated,
    /// A request header with a bad magic: the stream is out of sync.
    Protocol(ProtoError),
    /// Reading from the socket failed.
    ReadFailed(io::Error),
    /// A reply could not be sent, or the export panicked.
    Broken,
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::Disconnect => write!(f, "client disconnected (NBD_CMD_DISC)"),
            Ending::Eof => write!(f, "connection closed"),
            Ending::Truncated => {
                write!(f, "client closed the connection in the middle of a request")
            }
            Ending::Protocol(e) => write!(f, "protocol error: {e}"),
            Ending::ReadFailed(e) => write!(f, "read error: {e}"),
            Ending::Broken => write!(f, "connection broken (see the error above)"),
        }
    }
}

/// One queued request.
struct Job {
    cookie: u64,
    op: Op,
    /// The payload of a write (its first `len` bytes).
    payload: Option<Vec<u8>>,
    /// Bytes charged against [`MAX_IN_FLIGHT_BYTES`].
    cost: usize,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Workers waiting on `work`: only then is a wake-up needed.
    idle_workers: usize,
    /// Workers started so far.
    workers: usize,
    /// No more jobs will come; workers exit once the queue is empty.
    closing: bool,
    in_flight: usize,
    in_flight_bytes: usize,
    reader_waiting: bool,
}

/// Buffers reused across requests so steady-state I/O allocates nothing.
/// Buffers only grow, so a reused one is never zero-filled again.
#[derive(Default)]
struct BufPool {
    free: Mutex<Vec<Vec<u8>>>,
}

impl BufPool {
    /// A buffer of at least `len` bytes.
    fn get(&self, len: usize) -> Vec<u8> {
        let mut buf = lock(&self.free).pop().unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, 0);
        }
        buf
    }

    fn put(&self, buf: Vec<u8>) {
        if buf.len() <= POOL_MAX_BUFFER_LEN {
            let mut free = lock(&self.free);
            if free.len() < POOL_MAX_BUFFERS {
                free.push(buf);
            }
        }
    }
}

/// What the reader and the workers of one connection share.
struct Conn<'a> {
    sock: &'a Socket,
    export: &'a dyn Export,
    label: &'a str,
    queue: Mutex<Queue>,
    /// Workers wait here for jobs.
    work: Condvar,
    /// The reader waits here for room in the in-flight budget.
    room: Condvar,
    /// Serializes replies so each goes out whole.
    write_lock: Mutex<()>,
    /// Set once a reply could not be sent (or the export panicked): no more
    /// replies are attempted and the reader stops.
    broken: AtomicBool,
    /// Only the first export error of a connection is logged.
    export_error_logged: AtomicBool,
    pool: BufPool,
}

/// Serve requests until the client leaves or the stream breaks; returns only
/// after every accepted request has finished.
pub(crate) fn serve(
    sock: &Socket,
    reader: &mut BufReader<&Socket>,
    export: &dyn Export,
    size: u64,
    shutting_down: &dyn Fn() -> bool,
    label: &str,
) -> Ending {
    let conn = Conn {
        sock,
        export,
        label,
        queue: Mutex::new(Queue::default()),
        work: Condvar::new(),
        room: Condvar::new(),
        write_lock: Mutex::new(()),
        broken: AtomicBool::new(false),
        export_error_logged: AtomicBool::new(false),
        pool: BufPool::default(),
    };
    thread::scope(|scope| {
        let ending = conn.read_loop(scope, reader, size, shutting_down);
        let mut q = lock(&conn.queue);
        q.closing = true;
        conn.work.notify_all();
        drop(q);
        ending
        // the scope joins the workers: every queued request finishes first
    })
}

impl<'a> Conn<'a> {
    fn read_loop<'scope>(
        &'scope self,
        scope: &'scope thread::Scope<'scope, '_>,
        reader: &mut BufReader<&Socket>,
        size: u64,
        shutting_down: &dyn Fn() -> bool,
    ) -> Ending {
        let mut hdr = [0u8; proto::REQUEST_HEADER_LEN];
        loop {
            if self.broken.load(Ordering::Relaxed) {
                return Ending::Broken;
            }
            match read_header(reader, &mut hdr) {
                Ok(true) => {}
                Ok(false) if self.broken.load(Ordering::Relaxed) => return Ending::Broken,
                Ok(false) => return Ending::Eof,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ending::Truncated,
                Err(_) if self.broken.load(Ordering::Relaxed) => return Ending::Broken,
                Err(e) => return Ending::ReadFailed(e),
            }
            let req = match proto::parse_request_header(&hdr) {
                Ok(req) => req,
                Err(e) => return Ending::Protocol(e),
            };
            let checked = match proto::check_request(&req, size) {
                Ok(Op::Disc) => return Ending::Disconnect,
                Ok(op) => {
                    let cost = match op {
                        Op::Read { len, .. } | Op::Write { len, .. } => usize::try_from(len).unwrap_or(usize::MAX),
                        _ => 0,
                    };
                    // Wait for room first, then look at the shutdown flag:
                    // a request still waiting when shutdown begins never runs.
                    self.reserve(cost);
                    if shutting_down() {
                        self.release(cost);
                        Err(Errno::Shutdown)
                    } else {
                        Ok((op, cost))
                    }
                }
                Err(errno) => Err(errno),
            };
            let (op, cost) = match checked {
                Ok(checked) => checked,
                Err(errno) => {
                    // Consume a refused write's payload so the next header
                    // is read from the right place.
                    let payload = u64::from(req.payload_len());
                    match io::copy(&mut reader.by_ref().take(payload), &mut io::sink()) {
                        Ok(n) if n == payload => {}
                        Ok(_) => return Ending::Truncated,
                        Err(e) => return Ending::ReadFailed(e),
                    }
                    self.send(&proto::simple_reply(errno.wire(), req.cookie), &[]);
                    continue;
                }
            };
            let payload = if let Op::Write { .. } = op {
                let mut buf = self.pool.get(cost);
                if let Err(e) = reader.read_exact(&mut buf[..cost]) {
                    self.release(cost);
                    return match e.kind() {
                        io::ErrorKind::UnexpectedEof => Ending::Truncated,
                        _ => Ending::ReadFailed(e),
                    };
                }
                Some(buf)
            } else {
                None
            };
            let mut q = lock(&self.queue);
            if q.idle_workers == 0 && q.workers < WORKERS_PER_CONNECTION {
                // The new worker waits for the queue lock we hold, then finds the job.
                let spawned = thread::Builder::new()
                    .name(format!("nbd-worker-{}", q.workers))
                    .spawn_scoped(scope, move || self.work_loop());
                match spawned {
                    Ok(_) => q.workers += 1,
                    Err(e) if q.workers == 0 => {
                        tracing::error!("{}: cannot start a worker thread: {e}; closing the connection", self.label);
                        drop(q);
                        if let Some(buf) = payload {
                            self.pool.put(buf);
                        }
                        self.release(cost);
                        return Ending::Broken;
                    }
                    // The workers already running take the job.
                    Err(_) => {}
                }
            }
            q.jobs.push_back(Job { cookie: req.cookie, op, payload, cost });
            if q.idle_workers > 0 {
                self.work.notify_one();
            }
        }
    }

    /// Wait until the in-flight budget has room for a request of `cost`
    /// bytes, then charge it.
    fn reserve(&self, cost: usize) {
        let mut q = lock(&self.queue);
        while q.in_flight >= MAX_IN_FLIGHT || (q.in_flight > 0 && q.in_flight_bytes + cost > MAX_IN_FLIGHT_BYTES) {
            q.reader_waiting = true;
            q = self.room.wait(q).unwrap_or_else(|p| p.into_inner());
        }
        q.reader_waiting = false;
        q.in_flight += 1;
        q.in_flight_bytes += cost;
    }

    fn release(&self, cost: usize) {
        let mut q = lock(&self.queue);
        Self::release_locked(&mut q, cost, &self.room);
    }

    fn release_locked(q: &mut Queue, cost: usize, room: &Condvar) {
        q.in_flight -= 1;
        q.in_flight_bytes -= cost;
        if q.reader_waiting {
            room.notify_one();
        }
    }

    fn work_loop(&self) {
        let mut q = lock(&self.queue);
        loop {
            if let Some(job) = q.jobs.pop_front() {
                drop(q);
                let cost = job.cost;
                self.execute(job);
                q = lock(&self.queue);
                Self::release_locked(&mut q, cost, &self.room);
                continue;
            }
            if q.closing {
                return;
            }
            q.idle_workers += 1;
            q = self.work.wait(q).unwrap_or_else(|p| p.into_inner());
            q.idle_workers -= 1;
        }
    }

    fn execute(&self, job: Job) {
        let Job { cookie, op, payload, .. } = job;
        match op {
            Op::Read { offset, len } => {
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                let mut buf = self.pool.get(len);
                let result =
                    self.call(&op, || if len == 0 { Ok(()) } else { self.export.read_at(&mut buf[..len], offset) });
                match result {
                    Ok(()) => self.send(&proto::simple_reply(0, cookie), &buf[..len]),
                    Err(Some(errno)) => self.send(&proto::simple_reply(errno.wire(), cookie), &[]),
                    Err(None) => {}
                }
                self.pool.put(buf);
            }
            Op::Write { offset, len, fua } => {
                let buf = payload.unwrap_or_default();
                let len = usize::try_from(len).unwrap_or(usize::MAX).min(buf.len());
                let result =
                    self.call(&op, || if len == 0 { Ok(()) } else { self.export.write_at(&buf[..len], offset, fua) });
                self.reply(cookie, result);
                self.pool.put(buf);
            }
            Op::Flush => {
                let result = self.call(&op, || self.export.flush());
                self.reply(cookie, result);
            }
            Op::Trim { offset, len, fua } => {
                let result =
                    self.call(&op, || if len == 0 { Ok(()) } else { self.export.trim(offset, u64::from(len), fua) });
                self.reply(cookie, result);
            }
            Op::WriteZeroes { offset, len, may_trim, fua } => {
                let result = self.call(&op, || {
                    if len == 0 {
                        Ok(())
                    } else {
                        self.export.write_zeroes(offset, u64::from(len), may_trim, fua)
                    }
                });
                self.reply(cookie, result);
            }
            Op::Disc => {}
        }
    }

    /// Run one export call. `Err(Some(errno))`: the export failed; `Err(None)`:
    /// it panicked, and the connection is closed without a reply (the client
    /// must not believe anything about that request).
    fn call(&self, op: &Op, f: impl FnOnce() -> io::Result<()>) -> Result<(), Option<Errno>> {
        match panic::catch_unwind(AssertUnwindSafe(f)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                if !self.export_error_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "{}: {op:?} failed: {e} (further errors on this connection are not logged)",
                        self.label
                    );
                }
                Err(Some(Errno::from_io(&e)))
            }
            Err(_) => {
                tracing::error!("{}: the export panicked during {op:?}; closing the connection", self.label);
                self.break_connection();
                Err(None)
            }
        }
    }

    fn reply(&self, cookie: u64, result: Result<(), Option<Errno>>) {
        match result {
            Ok(()) => self.send(&proto::simple_reply(0, cookie), &[]),
            Err(Some(errno)) => self.send(&proto::simple_reply(errno.wire(), cookie), &[]),
            Err(None) => {}
        }
    }

    /// Send one reply, header and data together, unless the connection is broken.
    fn send(&self, header: &[u8; proto::SIMPLE_REPLY_LEN], data: &[u8]) {
        if self.broken.load(Ordering::Relaxed) {
            return;
        }
        let _guard = lock(&self.write_lock);
        let mut bufs = [IoSlice::new(header), IoSlice::new(data)];
        if let Err(e) = write_all_vectored(self.sock, &mut bufs) {
            if !self.broken.load(Ordering::Relaxed) {
                tracing::warn!("{}: cannot send a reply: {e}; closing the connection", self.label);
            }
            self.break_connection();
        }
    }

    /// Stop replying and make the reader's next read fail; queued requests
    /// still run.
    fn break_connection(&self) {
        self.broken.store(true, Ordering::Relaxed);
        let _ = self.sock.shutdown(Shutdown::Both);
    }
}

/// Fill `buf` with the next request header. `Ok(false)`: clean EOF before the
/// first byte; a partial header is `UnexpectedEof`.
fn read_header<R: Read>(r: &mut R, buf: &mut [u8; proto::REQUEST_HEADER_LEN]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// `write_all` for several slices, with one `writev` per attempt.
fn write_all_vectored(mut w: &Socket, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
