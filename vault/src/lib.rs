//! The vault: where recovery points live at the recovery site.
//!
//! This crate owns the target side. A [`Backend`] is a dumb store of whole
//! objects keyed by ([`Kind`], name): it knows nothing of blocks, keys or
//! points. Encryption happens on the host before anything reaches a backend,
//! and the vault must never hold or ask for the key (except in restore, which
//! is given it).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod backend;
pub mod error;
pub mod local;

pub use backend::{Backend, Kind};
pub use error::VaultError;
pub use local::LocalBackend;
