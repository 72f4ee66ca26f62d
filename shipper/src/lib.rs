//! The shipper: one replication cycle at a time.
//!
//! A cycle cuts the disk ([`source::CutSource`]: the running filter over its
//! control socket, or the image itself when no filter runs), reads the cut
//! blocks (a disk open in this process straight from its image, with io_uring
//! and O_DIRECT into a pool of aligned buffers, or pread where io_uring is
//! unavailable: [`engine`]), skips zero blocks, names each block by its keyed BLAKE3 id, skips
//! blocks the vault already holds, seals the rest with XChaCha20-Poly1305 in
//! place, fills packs, stores them, then the point's new map pages, then its
//! root — last — and only then tells the filter the cut is done. Any failure
//! before the root is stored aborts the cut, which hands its blocks back to
//! the live map: a half-shipped cycle is invisible and nothing is lost.
//!
//! It must not block the VM's writes: everything here runs in the shipper's
//! own threads, and the filter's only extra work is the copy-before-write.
#![deny(missing_docs)]
// The one exception, fenced in one module: the aligned buffer pool and the
// io_uring engine (every `unsafe` block there says why it is sound).
#![deny(unsafe_code)]

pub mod chain;
pub mod cycle;
#[allow(unsafe_code)]
pub mod engine;
pub mod error;
mod pack_out;
mod page_copy;
mod pipeline;
pub mod source;

pub use cycle::{run_cycle, CutHook, CycleOptions, CycleReport, HookError, Progress};
pub use error::ShipError;
pub use source::{CutSource, DirectCut, LocalSource, RemoteSource};
