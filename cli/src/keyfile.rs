//! The customer key file on disk: created 0600, refused when others can read
//! it, unlocked with a passphrase from the environment when it has one.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};
use disk_format::key_file::{KeyFile, KeyFileError};
use disk_format::keys::{Keys, MasterKey};

/// Environment variable holding the key file's passphrase, if it has one.
pub const PASSPHRASE_ENV: &str = "LIFEBOAT_KEY_PASSPHRASE";

/// Writes a new master key to `out` (which must not exist), mode 0600.
pub fn create(out: &Path, passphrase: Option<&str>) -> Result<MasterKey> {
    let key = MasterKey::generate().context("generating a key")?;
    let bytes = KeyFile::encode(&key, passphrase.map(str::as_bytes)).context("encoding the key file")?;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("creating key file {} (it must not exist yet)", out.display()))?;
    f.write_all(&bytes[..]).and_then(|()| f.sync_all()).with_context(|| format!("writing {}", out.display()))?;
    Ok(key)
}

/// Loads the key file at `path` and derives the subkeys.
pub fn load(path: &Path) -> Result<Keys> {
    let meta = std::fs::metadata(path).with_context(|| format!("key file {} cannot be read", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "key file {} is accessible to other users (mode {mode:03o}); the key must be private: \
             run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading key file {}", path.display()))?;
    let passphrase = std::env::var(PASSPHRASE_ENV).ok();
    match KeyFile::decode(&bytes, || passphrase.clone()) {
        Ok(master) => Ok(master.keys()),
        Err(KeyFileError::NeedsPassphrase) => {
            bail!("key file {} is protected by a passphrase: set {PASSPHRASE_ENV}", path.display())
        }
        Err(KeyFileError::WrongPassphrase) => {
            bail!("wrong passphrase for key file {} (from {PASSPHRASE_ENV})", path.display())
        }
        Err(e) => Err(e).with_context(|| {
            format!(
                "key file {} is damaged or not a Lifeboat key file; restore it from your key backup",
                path.display()
            )
        }),
    }
}
