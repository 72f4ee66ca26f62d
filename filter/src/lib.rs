//! Lifeboat's write filter: the NBD server that stands between a VM and its
//! disk image and records every block the VM changes.
//!
//! The filter owns the per-disk state file at run time ([`state_file`]): it
//! maps the live and cut bitmaps, sets a bit *before* each write reaches the
//! image, and keeps the header honest about clean and unclean shutdowns. It
//! owns the **cut** ([`disk::Disk::cut`]): moving the live bits into the cut
//! set and copying a cut block's old contents aside before the first
//! overwrite, so a reader sees the disk exactly as it was at the cut. It
//! serves the image over NBD ([`nbd`]) and takes cut requests on a control
//! socket ([`control`]).
//!
//! While it serves an image it holds QEMU's image lock on it ([`image`]), so
//! a VM, `qemu-io` or a second filter cannot write the image behind its back.
//!
//! It must not know about encryption, vaults or networks beyond NBD and its
//! control socket.
#![deny(missing_docs)]
// The filter makes its system calls through the `system` crate; its only
// `unsafe` is the one that views the mapped bitmaps as atomics (`mmap`).
// `forbid` would be stronger, but a forbid cannot be lifted for one module,
// so the crate denies and `mmap` alone allows.
#![deny(unsafe_code)]

pub mod bitmap;
pub mod control;
pub mod copies;
pub mod disk;
pub mod error;
pub mod image;
pub mod log;
#[allow(unsafe_code)]
mod mmap;
pub mod nbd;
pub mod state_file;
mod sys;

pub use disk::{CutInfo, CutKind, Disk, WriteObserver};
pub use error::FilterError;
pub use image::ImageId;
pub use state_file::{DirtyReport, StateFile};
pub use sys::{raise_open_files_limit, OpenFilesLimit, OPEN_FILES_CEILING};
