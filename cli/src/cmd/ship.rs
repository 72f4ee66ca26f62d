//! `lifeboat ship`: run a replication cycle now.

use std::io::IsTerminal;

use anyhow::{bail, Context, Result};
use filter::control::ControlClient;
use shipper::{LocalSource, RemoteSource};

use crate::home::Home;

#[derive(clap::Args)]
pub struct Args {
    /// The protected disk.
    name: String,
    /// Run one cycle and exit (the agent runs cycles on the disk's schedule).
    #[arg(long)]
    once: bool,
    /// Print the cycle's report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    bandwidth: crate::vault_open::BandwidthArg,
}

/// A cycle's progress: the one reporter ([`crate::progress::Reporter`]),
/// under the name the agent and failover use (`Bar::new(prefix,
/// tty).quiet_when_done()`).
pub type Bar = crate::progress::Reporter;

/// Runs one cycle of disk `name` now: through the process serving it (the
/// agent or `lifeboat filter`), or on the locked image when none does.
/// How long a cycle through the serving process waits for that process's
/// own cycle (the agent's) to end before it gives up.
const CUT_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

pub fn once(
    home: &Home,
    name: &str,
    mut bar: Bar,
    throttle: Option<vault::throttle::Throttle>,
) -> Result<shipper::CycleReport> {
    let (mut entry, mut target) = crate::replicate::load(home, name)?;
    target.throttle = throttle;
    entry.check_usable(name)?;
    // Every failure from here on, also opening the source (the serving
    // process may die at any moment), names the disk and leaves its changes
    // dirty.
    let cycled = |r: Result<_, agent::CycleError>| {
        r.map_err(|e| anyhow::Error::new(e).context(format!("cycle of disk {name:?}")))
    };
    let opening = |what: &str, e: shipper::ShipError| {
        Err(anyhow::Error::new(e).context(format!("cycle of disk {name:?}: {what}")))
    };
    let report = match ControlClient::connect(&entry.control_path()) {
        Ok(client) => match RemoteSource::new(client) {
            // The agent serving the disk may be in its own cycle: wait for
            // it (a planned failover's final cycle must not fail on it).
            Ok(source) => {
                let mut source = source.waiting_for_cuts(CUT_WAIT);
                cycled(target.cycle(&mut source, None, 0, &mut bar, None))
            }
            Err(e) => opening("opening a cut through the process serving it", e),
        },
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            // No filter: the VM is off. Lock the disk so no filter starts meanwhile.
            let (disk, note) = entry
                .open_disk(name, filter::copies::CopyMemory::global())
                .with_context(|| format!("cycle of disk {name:?}: opening its image (no filter serves it)"))?;
            if let Some(note) = note {
                tracing::info!(disk = name, "lifeboat: {note}");
            }
            let mut source = LocalSource::shared(std::sync::Arc::new(disk));
            let r = cycled(target.cycle(&mut source, None, 0, &mut bar, None));
            source.close()?;
            r
        }
        Err(e) => return Err(e).with_context(|| format!("connecting to {}", entry.control_path().display())),
    };
    let (r, _) = report
        .map_err(|e| anyhow::anyhow!("{}; its changes stay marked dirty for the next cycle", crate::error_chain(&e)))?;
    Ok(r)
}

pub fn run(home: &Home, a: Args) -> Result<()> {
    if !a.once {
        bail!("`lifeboat ship` runs one cycle: pass --once (the agent runs cycles on a schedule)");
    }
    let r = once(home, &a.name, Bar::new("", std::io::stderr().is_terminal()), a.bandwidth.throttle())?;
    for w in &r.warnings {
        tracing::warn!(disk = a.name, "lifeboat: warning: {}: {w}", a.name);
    }
    if a.json {
        outln!(
            "{}",
            serde_json::json!({
                "disk": a.name, "sequence": r.sequence, "full": r.full, "blocks_read": r.blocks_read,
                "zero_blocks": r.zero_blocks, "known_blocks": r.known_blocks, "new_blocks": r.new_blocks,
                "compressed_blocks": r.compressed_blocks, "new_bytes": r.new_bytes,
                "cached_blocks": r.cached_blocks,
                "bytes_shipped": r.bytes_shipped, "packs": r.packs, "pages": r.pages, "millis": r.millis,
                "warnings": r.warnings, "root": r.root_id.to_string(),
                "chain_break": r.chain_break.as_ref().map(|b| b.describe(&a.name)),
                "requests": r.requests, "index_listed": r.index_listed,
            })
        );
    } else {
        outln!(
            "{}: point {} committed ({}): {} blocks read, {} new ({} compressed), {} already in the vault, {} zero; {} \
             bytes shipped in {:.1} s",
            a.name,
            r.sequence,
            if r.full { "full sync" } else { "incremental" },
            r.blocks_read,
            r.new_blocks,
            r.compressed_blocks,
            r.known_blocks,
            r.zero_blocks,
            r.bytes_shipped,
            r.millis as f64 / 1000.0
        );
    }
    Ok(())
}
