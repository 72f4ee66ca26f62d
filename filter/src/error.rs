//! Errors of the filter.
//!
//! Policy: every error names the file or disk it is about and, where the user
//! can act, says what to do. Refusals of a damaged state file never change it.

use std::io;
use std::path::PathBuf;

/// What went wrong in the filter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// An I/O error on a named file.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done ("reading state file", ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The state file header is damaged or not a state file.
    #[error("state file {} is unusable: {source}. Lifeboat will not guess which blocks changed; \
             run `lifeboat protect NAME --image IMAGE --reset-state` to start a new state file that \
             marks the whole disk to be verified", path.display())]
    Header {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: disk_format::HeaderError,
    },
    /// The state file is shorter or longer than its header says.
    #[error("state file {} is {len} bytes but its header needs exactly {want} (truncated or damaged); \
             run `lifeboat protect NAME --image IMAGE --reset-state` to start a new one", path.display())]
    WrongLength {
        /// The state file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The length its geometry needs.
        want: u64,
    },
    /// A bitmap has bits set past the disk's last block.
    #[error("state file {}: the {which} bitmap marks blocks past the disk's last block \
             ({block_count} blocks): it does not fit the disk; run `lifeboat protect NAME --image IMAGE \
             --reset-state` to start a new one", path.display())]
    BitmapOverflow {
        /// The state file.
        path: PathBuf,
        /// "live" or "cut".
        which: &'static str,
        /// Blocks in the disk.
        block_count: u64,
    },
    /// The image is not the size the state file was made for.
    #[error("disk image {} is {size} bytes but its state file was made for {want} bytes; \
             the image was resized or replaced: protect it again", path.display())]
    ImageSize {
        /// The image.
        path: PathBuf,
        /// Its size now.
        size: u64,
        /// The size in the state file.
        want: u64,
    },
    /// Another process holds the disk.
    #[error("disk state {} is locked by another process (a running `lifeboat filter` or cycle); \
             stop it first", path.display())]
    Locked {
        /// The state file.
        path: PathBuf,
    },
    /// Another process holds QEMU's image lock on the image in a way that
    /// conflicts with serving it: a VM runs on the file, or another filter
    /// (under another name, or another home) serves it.
    #[error("disk image {} is in use by another process (a VM or another filter holds QEMU's image lock on it: \
             {conflict}): stop it first; a VM must reach a protected disk only through Lifeboat's NBD export", path.display())]
    ImageInUse {
        /// The image.
        path: PathBuf,
        /// The conflicting lock.
        conflict: crate::image::Conflict,
    },
    /// A cut was asked for while one is in progress.
    #[error("a cut (generation {0}) is already in progress; finish or abort it first")]
    CutInProgress(u64),
    /// A cut operation was asked for with no cut in progress.
    #[error("no cut is in progress")]
    NoCut,
    /// A point was recorded against a cut other than the one in progress.
    #[error(
        "point {point} was cut at generation {generation}, but the cut in progress is generation {cut}; \
         the point was not recorded and the cut is kept"
    )]
    WrongCut {
        /// The generation of the cut in progress.
        cut: u64,
        /// The point's sequence number.
        point: u64,
        /// The generation the point says it was cut at.
        generation: u64,
    },
    /// A block was asked for that is not in the cut, or was already released.
    #[error("block {0} is not part of the current cut or was already read and released")]
    NotInCut(u64),
}

impl FilterError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> FilterError {
        let path = path.into();
        move |source| FilterError::Io { what, path, source }
    }
}
