//! `lifeboat snapshot`: a point-in-time copy of the whole disk.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use filter::control::ControlClient;
use filter::CutKind;

use crate::home::Home;
use crate::output::PartialFile;
use crate::progress::Reporter;
use vault::Progress;

#[derive(clap::Args)]
pub struct Args {
    /// The protected disk.
    name: String,
    /// The raw image to write (must not exist, unless --force).
    #[arg(long)]
    out: PathBuf,
    /// Overwrite --out if it exists. Never a protected disk's image, nor an
    /// image a VM or filter has open (QEMU's image lock).
    #[arg(long)]
    force: bool,
}

/// Bytes asked of the filter per request.
const BATCH_BYTES: u64 = 16 << 20;

/// Writes `data` at `offset` unless it is all zero (the output is sparse).
fn write_sparse(out: &File, path: &Path, data: &[u8], offset: u64, block: usize) -> Result<()> {
    for (i, chunk) in data.chunks(block).enumerate() {
        if chunk.iter().any(|&b| b != 0) {
            out.write_all_at(chunk, offset + (i * block) as u64)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}

pub fn run(home: &Home, a: Args) -> Result<()> {
    let mut entry = home.disk(&a.name)?;
    entry.check_usable(&a.name)?;
    crate::output::refuse_image_in_use(home, &a.out, "snapshot")?;
    let partial = PartialFile::create(&a.out, a.force)?;
    let (out, tmp) = (partial.file(), partial.path());
    let started = Instant::now();
    let (size, how) = match ControlClient::connect(&entry.control_path()) {
        Ok(client) => (from_filter(client, out, tmp)?, "cut by the running filter"),
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => {
            (offline(&mut entry, &a.name, out, tmp)?, "no filter running; image copied under the disk lock")
        }
        Err(e) => return Err(e).with_context(|| format!("connecting to {}", entry.control_path().display())),
    };
    out.set_len(size)?;
    partial.commit()?;
    let secs = started.elapsed().as_secs_f64();
    outln!(
        "snapshot of {} written to {} ({} bytes in {:.1} s, {:.0} MiB/s; {how})",
        a.name,
        a.out.display(),
        size,
        secs,
        size as f64 / (1 << 20) as f64 / secs.max(1e-6)
    );
    Ok(())
}

fn from_filter(mut c: ControlClient, out: &File, path: &Path) -> Result<u64> {
    let info = c.info().context("asking the filter for the disk's geometry")?;
    // A replication cycle may hold the disk's cut for a moment: wait for it.
    let cut = c.cut_when_free(CutKind::Full, std::time::Duration::from_secs(300)).context("cutting the disk")?;
    let bs = u64::from(info.block_size);
    let blocks = info.disk_size.div_ceil(bs);
    let per = (BATCH_BYTES / bs).max(1);
    let mut buf = Vec::with_capacity(usize::try_from(BATCH_BYTES).expect("16 MiB"));
    let mut first = 0;
    let mut progress = Reporter::new("snapshot: ", std::io::IsTerminal::is_terminal(&io::stderr()));
    progress.start("copying", info.disk_size);
    while first < blocks {
        let n = per.min(blocks - first);
        buf.clear();
        c.read(first, n, &mut buf)
            .with_context(|| format!("reading blocks {first}..{} of cut {}", first + n, cut.generation))?;
        write_sparse(out, path, &buf, first * bs, usize::try_from(bs).expect("block fits"))?;
        first += n;
        progress.advance(buf.len() as u64);
    }
    drop(progress);
    // A snapshot is not a recovery point: the cut's blocks stay dirty.
    c.abort().context("ending the cut")?;
    Ok(info.disk_size)
}

fn offline(entry: &mut crate::home::DiskEntry, name: &str, out: &File, path: &Path) -> Result<u64> {
    let (disk, note) = entry.open_disk(name, filter::copies::CopyMemory::global())?;
    if let Some(note) = note {
        tracing::info!("lifeboat: {note}");
    }
    let g = disk.geometry();
    let cut = disk.cut(CutKind::Full)?;
    let mut buf = vec![0u8; g.block_size as usize];
    for b in 0..g.block_count {
        disk.read_cut_block(b, &mut buf).with_context(|| format!("reading block {b} of cut {}", cut.generation))?;
        let len = g.block_len(b);
        write_sparse(out, path, &buf[..len], g.block_range(b).start, len)?;
    }
    let _ = disk.abort_cut()?;
    disk.close()?;
    Ok(g.disk_size)
}
