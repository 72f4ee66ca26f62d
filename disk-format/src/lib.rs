//! Every byte layout Lifeboat persists, and nothing else.
//!
//! This crate owns the on-disk formats: today the per-disk **state file**
//! ([`state`]); later the pack, map page, point root, stream frame and key file
//! formats. It parses and serializes; it never opens a file, maps memory or
//! touches a socket. Every format starts with a magic derived from a versioned
//! string, carries a format version independent of the crate version, and a
//! checksum; `FORMAT.md` beside this file specifies every field, and the tests
//! hold golden vectors and corrupt fixtures.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod geometry;
pub mod state;

pub use geometry::{blocks_touched, Geometry, GeometryError, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};
pub use state::{HeaderError, StateFlags, StateHeader, HEADER_PAGE, SLOT_SIZE, STATE_MAGIC};
