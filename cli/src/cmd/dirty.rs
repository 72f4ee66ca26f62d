//! `lifeboat dirty`: the blocks changed since the last recovery point.

use anyhow::Result;
use filter::StateFile;

use crate::home::Home;

#[derive(clap::Args)]
pub struct Args {
    /// The protected disk.
    name: String,
    /// Print JSON: {"block_size", "disk_size", "dirty_count", "dirty_blocks": [...], "suspect", "open", "cut_generation"}.
    #[arg(long)]
    json: bool,
}

pub fn run(home: &Home, a: Args) -> Result<()> {
    let disk = home.disk(&a.name)?;
    let r = StateFile::report(&disk.state_path())?;
    if a.json {
        let v = serde_json::json!({
            "name": a.name,
            "block_size": r.block_size,
            "disk_size": r.disk_size,
            "dirty_count": r.dirty_blocks.len(),
            "dirty_blocks": r.dirty_blocks,
            "suspect": r.suspect,
            "open": r.open,
            "cut_generation": r.cut_generation,
            // The point the dirty blocks are relative to: the last one committed.
            "last_point": r.last_point.map(|p| serde_json::json!({
                "vault_id": p.vault_id.to_string(), "id": p.sequence, "root": p.root_id.to_string(),
                "cut_generation": p.cut_generation,
            })),
        });
        outln!("{v}");
        return Ok(());
    }
    let bs = u64::from(r.block_size);
    let blocks = r.disk_size.div_ceil(bs);
    outln!(
        "{}: {} of {} blocks dirty ({} of {} bytes, block size {})",
        a.name,
        r.dirty_blocks.len(),
        blocks,
        r.dirty_blocks.len() as u64 * bs,
        r.disk_size,
        bs
    );
    match r.last_point {
        Some(p) => outln!("relative to point {} (vault {}, root {})", p.sequence, p.vault_id, p.root_id),
        None => outln!("relative to no recorded point: the next cycle verifies the whole disk"),
    }
    if r.suspect {
        outln!("suspect: the host went down while the disk was open, or the state file was replaced;");
        outln!("         every block counts as dirty and the next cycle verifies the whole disk.");
    }
    Ok(())
}
