//! The shipper: one replication cycle at a time.
//!
//! A cycle cuts the disk ([`source::CutSource`]: the running filter over its
//! control socket, or the image itself when no filter runs), reads the cut
//! blocks, skips zero blocks, names each block by its keyed BLAKE3 id, skips
//! blocks the vault already holds, seals the rest with XChaCha20-Poly1305 in
//! place, fills packs, stores them, then the point's new map pages, then its
//! root — last — and only then tells the filter the cut is done. Any failure
//! before the root is stored aborts the cut, which hands its blocks back to
//! the live map: a half-shipped cycle is invisible and nothing is lost.
//!
//! It must not block the VM's writes: everything here runs in the shipper's
//! own threads, and the filter's only extra work is the copy-before-write.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod cycle;
pub mod error;
mod pipeline;
pub mod source;

pub use cycle::{run_cycle, CycleOptions, CycleReport, Progress};
pub use error::ShipError;
pub use source::{CutSource, LocalSource, RemoteSource};
