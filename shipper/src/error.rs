//! Errors of a cycle.
//!
//! Policy: say which disk and which step failed; the cut has been aborted by
//! the time the caller sees the error, so the message can promise that no
//! change was lost. A variant carries the facts (which pack, block or
//! point) as fields and the lower layer's error as its `source`; the
//! message quotes the source too, as the CLI's error chain expects (it
//! leaves out a cause an outer message already includes).

use std::io;

use disk_format::{CryptoError, PackWriteError, PageError, RootError};

/// Why a cycle failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShipError {
    /// The filter's control socket or the image could not be used.
    #[error("talking to the filter or reading the image: {0}")]
    Source(io::Error),
    /// The filter refused or failed an operation on the disk.
    #[error(transparent)]
    Filter(#[from] filter::FilterError),
    /// The vault failed.
    #[error(transparent)]
    Vault(#[from] vault::VaultError),
    /// A map page of the previous point is damaged.
    #[error("previous point's map: {0}")]
    Page(#[from] PageError),
    /// A block could not be sealed.
    #[error("building the point: sealing block {block}: {source}")]
    Seal {
        /// The disk block.
        block: u64,
        /// The sealing error.
        #[source]
        source: CryptoError,
    },
    /// A pack of this cycle could not be handed to the pack storer: the
    /// storer stopped (its own error is the cause, and is reported instead
    /// when known).
    #[error("building the point: {source}")]
    PackOut {
        /// The pack's number in this cycle, from 0.
        pack: u64,
        /// What the pack's output said.
        #[source]
        source: io::Error,
    },
    /// A pack of this cycle could not be written or refused a block.
    #[error("building the point: {source}")]
    Pack {
        /// The pack's number in this cycle, from 0.
        pack: u64,
        /// The disk block being added, when it was adding one that failed.
        block: Option<u64>,
        /// The pack writer's error.
        #[source]
        source: PackWriteError,
    },
    /// A block could not be entered in the new point's map.
    #[error("building the point: {source}")]
    MapEntry {
        /// The disk block.
        block: u64,
        /// The map builder's error.
        #[source]
        source: PageError,
    },
    /// The new point's root could not be encoded (nothing was written).
    #[error("building the point: encoding the root: {source}")]
    EncodeRoot {
        /// The sequence the point would have had.
        sequence: u64,
        /// The root encoder's error.
        #[source]
        source: RootError,
    },
    /// Fewer or more blocks came out of the read pipeline than went in (a
    /// bug in the shipper; nothing was committed).
    #[error("building the point: internal error: {shipped} of {blocks} blocks went through the pipeline")]
    BlocksLost {
        /// Blocks that came out.
        shipped: u64,
        /// Blocks that went in.
        blocks: u64,
    },
    /// The disk's geometry changed under the cycle.
    #[error("the disk's geometry ({got}) does not match ({want})")]
    Geometry {
        /// What the source reports.
        got: String,
        /// What was expected.
        want: String,
    },
    /// The cycle was asked to stop (the agent is shutting down).
    #[error("the cycle was cancelled (Lifeboat is stopping); its changes stay marked dirty")]
    Cancelled,
    /// A cut taken before the vault answered (a cycle into a remote vault
    /// cuts while it takes the lease and finds the newest point) cannot be
    /// shipped: the vault is busy, or the point is not the one the dirty
    /// maps are relative to. Nothing was written; the cut was handed back
    /// and the cycle goes on as the vault's answers say.
    #[error("the cut taken while the vault was asked was handed back: the vault's answers do not let it be shipped")]
    EarlyCutUndone,
    /// Packs the host's index cache named, and that blocks of the cut were
    /// deduplicated against, are gone from the vault (garbage-collected at
    /// the site since the cache last listed it). Nothing was committed; the
    /// cache no longer names them, and the cycle cuts and ships again.
    #[error(
        "{packs} pack(s) the host's index cache named are gone from the vault (garbage-collected at the site?): \
         {blocks} block(s) of the cut were found in them"
    )]
    IndexCacheStale {
        /// Packs gone.
        packs: usize,
        /// Blocks of the cut deduplicated against them.
        blocks: u64,
    },
    /// The vault's config names another cipher than the disk's newest point,
    /// whose root (authenticated with the key) records the cipher the vault
    /// had when it was cut. A vault's cipher never changes: the config was
    /// replaced. Nothing was shipped.
    #[error(
        "the vault at {location} says its blocks are sealed with {now}, but point {sequence} of this disk, \
         authenticated with the key, was cut when the vault's cipher was {was}: the vault config was replaced (a \
         downgrade, or another vault's config). Nothing was shipped; restore the vault's config object from a \
         backup of the vault"
    )]
    CipherChanged {
        /// The vault.
        location: String,
        /// The newest point.
        sequence: u64,
        /// Its cipher.
        was: disk_format::Cipher,
        /// The cipher the config names.
        now: disk_format::Cipher,
    },
    /// A worker thread panicked.
    #[error("internal error: a shipper thread panicked")]
    Panic,
}
