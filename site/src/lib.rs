//! The recovery site: a vault server that protected hosts replicate to.
//!
//! See "Vault server protocol" in disk-format/FORMAT.md for the wire API and
//! "The vault server" in docs/DESIGN-NOTES.md for the design.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod checks;
pub mod client;
pub mod enroll;
pub mod enroll_client;
pub mod pki;
pub mod protocol;
pub mod rights;
pub mod server;
pub mod site_audit;
pub mod site_dir;
pub mod tls;
