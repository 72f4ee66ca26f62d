//! The vault: where recovery points live at the recovery site.
//!
//! This crate owns the target side. A [`Backend`] is a dumb store of whole
//! objects keyed by ([`Kind`], name): it knows nothing of blocks, keys or
//! points. On top of it, a [`Vault`] stores and reads the objects whose bytes
//! `disk-format` defines — the vault config, packs of sealed blocks, map
//! pages and point roots — under the names FORMAT.md gives them
//! ([`store`]); rebuilds the [`BlockIndex`] from the packs' own indexes
//! ([`index`]), or keeps it on the host between cycles ([`index_cache`]);
//! restores a point to a raw image, verifying every object it
//! reads ([`restore`]); and scrubs the whole vault, with or without the key
//! ([`check`]). Recovery points are pruned by a retention ladder
//! ([`retention`]: roots only) and what no root references is removed by
//! garbage collection ([`gc`], without the key); leases ([`lease`]) keep a
//! point being restored from being pruned, and keep a garbage collection and
//! a shipper cycle from running at once. A vault is named by a [`Location`]
//! (a directory or a vault server's URL, [`location`]) and opened through an
//! [`Opener`] ([`open`]).
//!
//! Encryption happens on the host before anything reaches a backend. The
//! vault holds no key and no plaintext, and asks for the key only to restore
//! (and to authenticate in `check` and `load_root` when the caller has it);
//! it never stores it: the config records only its fingerprint.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod backend;
pub mod check;
pub mod compress;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod counting;
pub mod disks;
pub mod error;
pub mod gc;
pub mod immutability;
#[cfg(feature = "conformance")]
pub mod in_flight;
pub mod index;
pub mod index_cache;
pub mod lease;
pub mod local;
pub mod location;
pub mod open;
pub mod pages;
pub mod par;
pub mod point_reader;
pub mod progress;
pub mod restore;
pub mod retention;
pub mod store;
pub mod throttle;

pub use backend::{Backend, Kind, ObjectWriter, Protection, Version, DIRECT_ALIGN};
pub use check::{CheckReport, Problem};
pub use disks::{DiskChoice, DiskPoints, Disks, UnreadableChain};
pub use error::{Damage, VaultError};
pub use gc::{GarbagePack, GcReport};
pub use index::{BlockIndex, BlockLocation, UnreadablePack};
pub use index_cache::IndexCache;
pub use lease::{Hold, HostIdentity, LeaseInfo, Liveness, Purpose};
pub use local::{LocalBackend, StagedObject};
pub use location::{Location, LocationError};
pub use open::{LocalOpener, Opener};
pub use point_reader::PointReader;
pub use progress::{Callback, Progress};
pub use restore::RestoreReport;
pub use retention::{select, Policy, PruneReport, Selection, Thin};
pub use store::{root_name, PointSummary, Vault};
