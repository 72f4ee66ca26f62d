//! Cloud vaults: a vault in an Azure Blob storage container
//! (`az://ACCOUNT/CONTAINER[/PREFIX]`) or an S3 bucket
//! (`s3://BUCKET[/PREFIX]`, AWS or any S3-compatible store), as a
//! [`vault::Backend`].
//!
//! This crate owns the cloud's async stack (the `object_store` crate, its
//! HTTP client, a tokio runtime per backend) and keeps it behind the
//! synchronous `Backend` trait: nothing above it, and nothing in the filter,
//! sees a future. It must not hold a key, print, or put a credential in an
//! error, a log line or a location string. Settings and credentials come
//! from each ecosystem's standard environment variables ([`Settings`]).
//!
//! See "Cloud vaults" in docs/DESIGN-NOTES.md for the design: the object
//! layout, how conditional writes map onto each service, and why packs are
//! created only where absent.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod backend;
mod protection;
mod s3_checksum;
mod service;
mod settings;

pub use backend::CloudBackend;
pub use protection::{BucketProtection, LockMode, ObjectLock};
pub use settings::Settings;
