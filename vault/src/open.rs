//! Opening a vault by its [`Location`]: one place that turns a location into
//! a [`Backend`], so every command and every crate that opens vaults reaches
//! a directory and a vault server alike.
//!
//! This crate knows only directories ([`LocalOpener`]). The `lifeboat`
//! binary provides the opener that also reaches vault servers (the `site`
//! crate's client), and hands it to the agent and the recovery code, which
//! open vaults through this trait and never name a backend themselves.

use crate::backend::Backend;
use crate::error::VaultError;
use crate::local::LocalBackend;
use crate::location::Location;
use crate::store::Vault;

/// Turns vault locations into backends.
pub trait Opener: Send + Sync {
    /// Opens the store of an existing vault.
    fn open(&self, at: &Location) -> Result<Box<dyn Backend>, VaultError>;

    /// Opens the store a new vault is made in (`lifeboat vault init`):
    /// for a directory, creates it if needed and refuses one with other files.
    fn create(&self, at: &Location) -> Result<Box<dyn Backend>, VaultError>;

    /// Opens the vault at `at` (reads its config).
    fn open_vault(&self, at: &Location) -> Result<Vault, VaultError> {
        Vault::open(self.open(at)?)
    }
}

/// Opens vault directories; refuses vault servers (this crate has no client).
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalOpener;

impl LocalOpener {
    fn path_of(at: &Location) -> Result<&std::path::Path, VaultError> {
        at.path().ok_or_else(|| VaultError::Unsupported {
            location: at.to_string(),
            why: "only vault directories can be opened here, not vault servers".to_string(),
        })
    }
}

impl Opener for LocalOpener {
    fn open(&self, at: &Location) -> Result<Box<dyn Backend>, VaultError> {
        Ok(Box::new(LocalBackend::open(LocalOpener::path_of(at)?)?))
    }

    fn create(&self, at: &Location) -> Result<Box<dyn Backend>, VaultError> {
        Ok(Box::new(LocalBackend::create(LocalOpener::path_of(at)?)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Kind;

    #[test]
    fn local_opener_creates_and_opens_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let at = Location::Path(tmp.path().join("v"));
        let b = LocalOpener.create(&at).unwrap();
        b.put(Kind::Lease, "x", b"1").unwrap();
        assert_eq!(LocalOpener.open(&at).unwrap().get(Kind::Lease, "x").unwrap(), b"1");
        assert_eq!(b.location(), at.to_string());
    }

    #[test]
    fn local_opener_refuses_servers_by_name() {
        let at: Location = "lifeboat://127.0.0.1:1/v".parse().unwrap();
        for e in [LocalOpener.open(&at).err().unwrap(), LocalOpener.create(&at).err().unwrap()] {
            assert!(
                matches!(&e, VaultError::Unsupported { location, .. } if location == "lifeboat://127.0.0.1:1/v"),
                "{e}"
            );
        }
    }
}
