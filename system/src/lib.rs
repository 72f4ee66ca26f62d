//! Lifeboat's one system layer: what the other crates ask of the operating
//! system beyond `std`, in one place, with every `unsafe` call fenced in the
//! module that needs it (`lock`, `process`) and explained there.
//!
//! - [`file`]: replace a file atomically and durably (one policy: write a
//!   private temporary beside it, fsync it, rename it over, fsync the
//!   directory), so a host crash leaves the old or the new contents, never
//!   an empty or partial file.
//! - [`lock`]: `flock(2)`, waiting or not.
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

pub mod child;
pub mod clock;
pub mod file;
pub mod host;
pub mod lock;
pub mod process;
pub mod signals;
