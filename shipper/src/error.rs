//! Errors of a cycle.
//!
//! Policy: say which disk and which step failed; the cut has been aborted by
//! the time the caller sees the error, so the message can promise that no
//! change was lost.

use std::io;

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
    Page(#[from] disk_format::map_page::PageError),
    /// A format or crypto error while building the point.
    #[error("building the point: {0}")]
    Format(String),
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
    /// A worker thread panicked.
    #[error("internal error: a shipper thread panicked")]
    Panic,
}
