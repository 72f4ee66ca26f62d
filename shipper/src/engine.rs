//! Reading blocks of a disk image into pooled, aligned buffers: io_uring
//! when the kernel allows it, `pread` otherwise, behind one closed enum.
//!
//! - [`BlockPool`] / [`BlockBuf`]: one aligned allocation, one buffer per
//!   slot; a block's data starts at a 4096-aligned address with room for the
//!   nonce before it and the tag after it, so the same buffer is read into
//!   (O_DIRECT), hashed, sealed in place and written out, never copied.
//! - [`Engine::Uring`]: an io_uring with the pool registered as one fixed
//!   buffer (`READ_FIXED`), up to [`Engine::capacity`] reads in flight, the
//!   image opened `O_DIRECT` where the filesystem takes it (else buffered).
//!   The engine owns each read's buffer until its completion is reaped; a
//!   short read is resubmitted for the rest, `EINTR`/`EAGAIN` retried, and an
//!   engine dropped with reads in flight waits for them first.
//! - [`Engine::Sync`]: `pread` on a buffered descriptor (kernel readahead
//!   does what queue depth does for io_uring), one read at a time.
//!
//! The choice is made when a cycle starts: [`EngineChoice::from_env`] reads
//! `LIFEBOAT_IO_ENGINE` (`uring`: io_uring or fail; `sync`: pread; unset or
//! `auto`: io_uring unless the kernel refuses to set up a ring with `ENOSYS`,
//! `EPERM` or `ENOMEM`, as seccomp sandboxes, `kernel.io_uring_disabled` and
//! old kernels do).
//!
//! This module holds the shipper's only `unsafe` code (the buffer pool and
//! the ring); every block says why it is sound.

mod buf;
mod sync;
mod uring;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

pub use buf::{BlockBuf, BlockPool, ALIGN};

use crate::error::ShipError;
use sync::SyncEngine;
use uring::UringEngine;

/// The environment variable that picks the read engine.
pub const ENGINE_ENV: &str = "LIFEBOAT_IO_ENGINE";

/// Which engine to use, as asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineChoice {
    /// io_uring, or pread where the kernel refuses io_uring.
    Auto,
    /// io_uring, or an error.
    Uring,
    /// pread.
    Sync,
}

impl EngineChoice {
    /// Reads [`ENGINE_ENV`]: `uring`, `sync`, `auto` or unset.
    pub fn from_env() -> Result<EngineChoice, ShipError> {
        match std::env::var(ENGINE_ENV) {
            Err(std::env::VarError::NotPresent) => Ok(EngineChoice::Auto),
            Ok(v) => match v.trim() {
                "" | "auto" => Ok(EngineChoice::Auto),
                "uring" | "io_uring" | "io-uring" => Ok(EngineChoice::Uring),
                "sync" | "pread" => Ok(EngineChoice::Sync),
                other => Err(ShipError::Source(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{ENGINE_ENV}={other:?} is not an I/O engine: use uring, sync or auto"),
                ))),
            },
            Err(e) => Err(ShipError::Source(io::Error::new(io::ErrorKind::InvalidInput, format!("{ENGINE_ENV}: {e}")))),
        }
    }
}

/// Which engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// io_uring.
    Uring,
    /// pread.
    Sync,
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EngineKind::Uring => "io_uring",
            EngineKind::Sync => "sync",
        })
    }
}

/// A finished read: the buffer is handed back whatever happened.
#[derive(Debug)]
pub struct Done {
    /// The block read.
    pub block: u64,
    /// Bytes of the block (the data is `buf.data()[..len]`).
    pub len: usize,
    /// The buffer.
    pub buf: BlockBuf,
    /// The read's outcome; an error names the image, the block and the offset.
    pub result: Result<(), ShipError>,
}

/// One read: block `block`, `len` bytes at byte `offset` of the image.
pub(crate) struct Op {
    pub block: u64,
    pub offset: u64,
    pub len: usize,
    /// Bytes read so far.
    pub got: usize,
    pub buf: BlockBuf,
    /// The last attempt went through the O_DIRECT descriptor.
    pub direct: bool,
    /// The last attempt asked the page cache only (`RWF_NOWAIT`).
    pub nowait: bool,
    /// The page cache was asked already (a miss goes to the device).
    pub cache_tried: bool,
    /// `EINTR`/`EAGAIN` retries so far.
    pub retries: u32,
}

impl Op {
    fn done(self, result: Result<(), ShipError>) -> Done {
        Done { block: self.block, len: self.len, buf: self.buf, result }
    }
}

/// The image, open once or twice: `direct` (O_DIRECT) when the filesystem
/// takes it, `buffered` always (the sync engine's descriptor, and the
/// fallback for a read O_DIRECT cannot do).
pub(crate) struct Image {
    pub path: PathBuf,
    pub direct: Option<File>,
    pub buffered: File,
}

impl Image {
    fn open(path: &Path, reopen: &dyn Fn(bool) -> io::Result<File>, want_direct: bool) -> Result<Image, ShipError> {
        let opening = |e: io::Error| {
            ShipError::Source(io::Error::new(e.kind(), format!("opening disk image {} to read: {e}", path.display())))
        };
        let direct = if want_direct {
            match reopen(true) {
                Ok(f) => Some(f),
                // The filesystem does not do O_DIRECT (some FUSE and network
                // filesystems, ramfs): read through the page cache.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => None,
                Err(e) => return Err(opening(e)),
            }
        } else {
            None
        };
        Ok(Image { path: path.to_path_buf(), direct, buffered: reopen(false).map_err(opening)? })
    }

    /// An error reading `block` at byte `offset`.
    pub fn error(&self, block: u64, offset: u64, e: &io::Error) -> ShipError {
        ShipError::Source(io::Error::new(
            e.kind(),
            format!("reading block {block} (byte {offset}) of disk image {}: {e}", self.path.display()),
        ))
    }

    /// The image ended inside `block`.
    pub fn short(&self, op: &Op) -> ShipError {
        self.error(
            op.block,
            op.offset,
            &io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the image ends after {} of the block's {} bytes (was it truncated or replaced?)",
                    op.got, op.len
                ),
            ),
        )
    }
}

/// Reads blocks of one image into pool buffers.
pub enum Engine {
    /// io_uring (boxed: the ring's state is large).
    Uring(Box<UringEngine>),
    /// pread.
    Sync(SyncEngine),
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Engine({}, direct: {}, capacity {})", self.kind(), self.direct(), self.capacity())
    }
}

/// Reads in flight the io_uring engine aims for with blocks of `block_size`
/// bytes: about 8 MiB, between 8 and 64 reads.
pub fn default_depth(block_size: usize) -> usize {
    ((8 << 20) / block_size.max(1)).clamp(8, 64)
}

/// Whether a ring setup error means "no io_uring here" (fall back) rather
/// than a real failure.
fn uring_unavailable(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM | libc::ENOMEM))
}

impl Engine {
    /// Opens an engine reading the image at `path`, opened by `reopen(direct)`
    /// (with O_DIRECT if `direct`; a refusal with `EINVAL` falls back to
    /// buffered), into buffers of `pool`, with up to `depth` reads in flight.
    pub fn open(
        choice: EngineChoice,
        path: &Path,
        reopen: &dyn Fn(bool) -> io::Result<File>,
        pool: &BlockPool,
        depth: usize,
    ) -> Result<Engine, ShipError> {
        if choice != EngineChoice::Sync {
            match UringEngine::setup(depth, pool) {
                Ok(ring) => {
                    let image = Image::open(path, reopen, true)?;
                    return Ok(Engine::Uring(Box::new(ring.with_image(image))));
                }
                Err(e) if choice == EngineChoice::Auto && uring_unavailable(&e) => {}
                Err(e) => {
                    return Err(ShipError::Source(io::Error::new(
                        e.kind(),
                        format!(
                            "setting up io_uring ({ENGINE_ENV}={choice:?}): {e}; set {ENGINE_ENV}=sync to use pread"
                        ),
                    )))
                }
            }
        }
        Ok(Engine::Sync(SyncEngine::new(Image::open(path, reopen, false)?)))
    }

    /// [`Engine::open`] on a path, opened read-only.
    pub fn open_path(choice: EngineChoice, path: &Path, pool: &BlockPool, depth: usize) -> Result<Engine, ShipError> {
        let reopen = |direct: bool| {
            use std::os::unix::fs::OpenOptionsExt;
            let mut o = std::fs::OpenOptions::new();
            o.read(true);
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(path)
        };
        Engine::open(choice, path, &reopen, pool, depth)
    }

    /// Which engine this is.
    pub fn kind(&self) -> EngineKind {
        match self {
            Engine::Uring(_) => EngineKind::Uring,
            Engine::Sync(_) => EngineKind::Sync,
        }
    }

    /// Whether reads bypass the page cache (O_DIRECT).
    pub fn direct(&self) -> bool {
        match self {
            Engine::Uring(e) => e.direct(),
            Engine::Sync(_) => false,
        }
    }

    /// Page cache first: each read asks the page cache alone first
    /// (`RWF_NOWAIT` on the buffered descriptor) and reads what it lacks
    /// from the device (O_DIRECT). For the blocks of an incremental cycle,
    /// which the VM wrote through this host's page cache minutes ago: a hit
    /// costs one copy, where an O_DIRECT read of a dirty range would first
    /// make the kernel write it back and wait. Off (the default), reads go
    /// straight to the device: a full cycle reads cold data once, and should
    /// not fill the cache with it. Only the io_uring engine does this; the
    /// sync engine always reads through the page cache.
    pub fn set_cache_first(&mut self, on: bool) {
        if let Engine::Uring(e) = self {
            e.set_cache_first(on);
        }
    }

    /// Reads answered wholly by the page cache, and reads that went (at least
    /// partly) to the device, since the engine opened. The sync engine reads
    /// through the cache without asking it first, and reports (0, 0).
    pub fn cache_stats(&self) -> (u64, u64) {
        match self {
            Engine::Uring(e) => e.cache_stats(),
            Engine::Sync(_) => (0, 0),
        }
    }

    /// Whether the pool is registered with the ring (fixed-buffer reads).
    pub fn registered(&self) -> bool {
        match self {
            Engine::Uring(e) => e.registered(),
            Engine::Sync(_) => false,
        }
    }

    /// Reads it can hold at once.
    pub fn capacity(&self) -> usize {
        match self {
            Engine::Uring(e) => e.capacity(),
            Engine::Sync(e) => e.capacity(),
        }
    }

    /// Reads pushed and not yet reaped.
    pub fn in_flight(&self) -> usize {
        match self {
            Engine::Uring(e) => e.in_flight(),
            Engine::Sync(e) => e.in_flight(),
        }
    }

    /// Queues a read of block `block`: `len` bytes (at most the buffer's
    /// block size) at byte `offset` (a multiple of 4096) into `buf`. Call
    /// only while `in_flight() < capacity()`; a full engine hands the buffer
    /// back as `Err`.
    pub fn push(&mut self, block: u64, offset: u64, len: usize, buf: BlockBuf) -> Result<(), BlockBuf> {
        if self.in_flight() >= self.capacity() || len > buf.block_size() || len == 0 {
            return Err(buf);
        }
        let op = Op { block, offset, len, got: 0, buf, direct: false, nowait: false, cache_tried: false, retries: 0 };
        match self {
            Engine::Uring(e) => e.push(op),
            Engine::Sync(e) => e.push(op),
        }
        Ok(())
    }

    /// Starts the queued reads and appends finished ones to `out`; with
    /// `wait`, waits until at least one is finished (if any is in flight).
    /// An `Err` is a failure of the engine itself (the ring); a failed read
    /// comes back as a [`Done`] with its error.
    pub fn reap(&mut self, wait: bool, out: &mut Vec<Done>) -> Result<(), ShipError> {
        match self {
            Engine::Uring(e) => e.reap(wait, out),
            Engine::Sync(e) => {
                e.reap(out);
                Ok(())
            }
        }
    }

    /// Which engine [`Engine::open`] would pick for `choice` on this kernel
    /// (for a start-up log line).
    pub fn probe(choice: EngineChoice) -> Result<EngineKind, ShipError> {
        let (pool, _bufs) = BlockPool::new(ALIGN, 1).map_err(ShipError::Source)?;
        let engine = Engine::open(choice, Path::new("/dev/null"), &|_| File::open("/dev/null"), &pool, 1)?;
        Ok(engine.kind())
    }
}
