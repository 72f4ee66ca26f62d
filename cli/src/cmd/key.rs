//! `lifeboat key`: the customer key.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Subcommand;

use crate::keyfile::{self, PASSPHRASE_ENV};

#[derive(Subcommand)]
pub enum Command {
    /// Create a new 256-bit master key file (mode 0600).
    ///
    /// Keep a copy somewhere safe and away from the vault: without it no
    /// recovery point can be restored, and Lifeboat cannot recover it.
    New {
        /// Where to write the key file (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Wrap the key with a passphrase (Argon2id) taken from $LIFEBOAT_KEY_PASSPHRASE.
        #[arg(long)]
        passphrase: bool,
    },
    /// Print a key file's fingerprint (identifies the key without revealing it).
    Show {
        /// The key file.
        file: PathBuf,
    },
}

pub fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::New { out, passphrase } => {
            let pass = if passphrase {
                match std::env::var(PASSPHRASE_ENV) {
                    Ok(p) if p.len() >= 8 => Some(p),
                    Ok(_) => bail!("the passphrase in {PASSPHRASE_ENV} is shorter than 8 characters"),
                    Err(_) => bail!("--passphrase takes the passphrase from {PASSPHRASE_ENV}, which is not set"),
                }
            } else {
                None
            };
            let key = keyfile::create(&out, pass.as_deref())?;
            outln!("key written to {} (fingerprint {})", out.display(), key.fingerprint());
            outln!("keep a copy away from the vault: without it no recovery point can be restored");
            Ok(())
        }
        Command::Show { file } => {
            let keys = keyfile::load(&file)?;
            outln!("{}", keys.fingerprint());
            Ok(())
        }
    }
}
