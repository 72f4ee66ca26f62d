//! The NBD server: fixed-newstyle handshake and the transmission phase, over a
//! unix socket or TCP, in front of anything that implements [`Export`].
//!
//! This module knows nothing of bitmaps or cuts: the filter's [`crate::Disk`]
//! implements [`Export`] and does its marking inside `write_at`, `trim` and
//! `write_zeroes`, before the data reaches the image.
//!
//! - [`proto`]: the wire format, pure parsers and serializers (fuzzed).
//! - `handshake`: fixed newstyle negotiation (`NBD_OPT_GO`, `NBD_OPT_INFO`,
//!   `NBD_OPT_LIST`, `NBD_OPT_EXPORT_NAME`, `NBD_OPT_ABORT`,
//!   `NBD_OPT_STARTTLS`; simple replies only).
//! - `transmission`: one connection's requests, run in parallel on a few
//!   worker threads, replies in completion order.
//! - `server`: [`Listen`] addresses, [`Server`] and its [`ShutdownHandle`].
//!
//! The server advertises `NBD_FLAG_SEND_FLUSH`, `NBD_FLAG_SEND_FUA`,
//! `NBD_FLAG_SEND_TRIM`, `NBD_FLAG_SEND_WRITE_ZEROES` and
//! `NBD_FLAG_CAN_MULTI_CONN`, block sizes 1 / the export's preferred / 32 MiB.
//! A request the spec says to refuse gets the error value the spec names and
//! the connection goes on; only a request with a bad magic (the stream is out
//! of sync) closes the connection, and never another one. Logging is one line
//! on stderr per connection opened and closed, plus errors; none per request;
//! connections refused at accept are counted on one line at most every 10 s.
//!
//! The server guards the host against its clients ([`Options`]): TCP only on
//! loopback unless told otherwise or TLS is required, a per-server connection
//! cap, a handshake deadline and a file-descriptor reserve; see `server`.
//!
//! TLS: with [`Options::tls`] every TCP client must send `NBD_OPT_STARTTLS`
//! first; the server then hands the socket to the [`TlsUpgrade`] it was given
//! and serves the plaintext stream that returns. This crate has no TLS stack
//! (DESIGN.md keeps encryption out of the filter); Lifeboat's is the
//! `nbd-tls` crate.
//!
//! The module has no `unsafe`. Replies are written with plain `write`/`writev`:
//! a client that vanished raises `SIGPIPE`, which the Rust runtime ignores in
//! every Rust `main`, so the write fails with `EPIPE` and only that
//! connection closes.
#![forbid(unsafe_code)]

mod handshake;
pub mod proto;
mod server;
mod transmission;

pub use server::{Listen, LocalAddr, Options, ParseListenError, Server, ShutdownHandle, TlsUpgrade};

use std::io;

/// A block device the NBD server can serve.
///
/// Every method may be called from many threads at once (requests of one
/// connection run in parallel, and several connections may be open).
/// Offsets and lengths passed in are already checked against [`Export::size`].
pub trait Export: Send + Sync + 'static {
    /// Size of the export in bytes.
    fn size(&self) -> u64;
    /// The preferred I/O size advertised to clients (NBD_INFO_BLOCK_SIZE), a power of two.
    fn preferred_block_size(&self) -> u32;
    /// Fill `buf` from `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Write `data` at `offset`; with `fua`, durable before returning.
    fn write_at(&self, data: &[u8], offset: u64, fua: bool) -> io::Result<()>;
    /// Make every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// Discard `len` bytes at `offset` (contents afterwards are unspecified).
    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()>;
    /// Write zeroes; `may_trim` is false when the client set NBD_CMD_FLAG_NO_HOLE.
    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool, fua: bool) -> io::Result<()>;
}
