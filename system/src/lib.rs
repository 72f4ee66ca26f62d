//! Lifeboat's one system layer: what the other crates ask of the operating
//! system beyond `std`, in one place, with every `unsafe` call fenced in the
//! module that needs it and explained there: `unsafe_code` is denied for the
//! crate and allowed, module by module, only in the modules that make a
//! system call std does not offer (`extent`, `host`, `limits`, `lock`,
//! `memfd`, `process`, `signals`, `socket`). Every `unsafe` block carries a
//! `SAFETY` comment saying why that call is sound (a workspace lint).
//!
//! - [`file`]: replace a file atomically and durably (one policy: write a
//!   private temporary beside it, fsync it, rename it over, fsync the
//!   directory), so a host crash leaves the old or the new contents, never
//!   an empty or partial file.
//! - [`lock`]: `flock(2)`, waiting or not; and QEMU's single-byte
//!   open-file-description locks (`F_OFD_SETLK`, `F_OFD_GETLK`).
//! - [`socket`]: waking a blocked `accept` (`shutdown(2)`), binding a unix
//!   socket only its owner can connect to, a unix socket peer's credentials.
//! - [`limits`]: raising the open-files limit, and how many are left.
//! - [`extent`]: punching holes and zeroing ranges (`fallocate(2)`).
//! - [`memfd`]: anonymous in-memory files.
//! - [`clock`]: the wall clock in nanoseconds since the epoch.
//! - [`host`]: this host's name, machine id, boot id, and who we run as.
//! - [`process`]: a unix socket peer's pid, pidfds (a process handle that
//!   stays tied to one process even if its pid is reused), signals to a
//!   process or a process group, whether a pid exists.
//! - [`signals`]: SIGTERM and SIGINT taken as ordinary events by one thread.
//! - [`host::set_umask`] and [`host::effective_uid`] (the calls themselves).
//!
//! It depends on `libc` only, so the filter can use it too.
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod clock;
pub mod extent;
pub mod file;
pub mod host;
pub mod limits;
pub mod lock;
pub mod memfd;
pub mod process;
pub mod signals;
pub mod socket;
