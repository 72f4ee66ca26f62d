//! `lifeboat audit` (being written).

use anyhow::{bail, Result};

use crate::home::Home;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Verify the audit log.
    Verify,
}

pub fn run(_home: &Home, _c: Command) -> Result<()> {
    bail!("lifeboat audit is not built yet")
}
