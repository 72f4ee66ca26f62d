//! `lifeboat profile`: the churn a disk's writes make, as the filter recorded
//! it while serving the disk (issue 16).

use anyhow::{Context, Result};
use profile::{Series, Summary};

use crate::home::{DiskEntry, Home};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Summarise a disk's churn profile: how much it writes, how many
    /// distinct blocks change within 30 s, 5 min and 15 min (what a cycle at
    /// that RPO would read) and within an hour and a day (what the retention
    /// ladder's hourly and daily points hold), at the median, 95th and 99th
    /// percentile and the peak, and what a sample of the written blocks says
    /// about zeros, repeats and compression.
    ///
    /// The profile is recorded by `lifeboat filter` and `lifeboat agent`
    /// whenever they serve the disk, with or without a vault (protect a disk
    /// without --vault to profile it before replicating it): one record
    /// every 30 s in HOME/disks/NAME/churn.profile, a month at most (10 MB;
    /// older records are overwritten). Only windows recorded whole count
    /// in the percentiles. Turn recording off with `protect NAME --profile off`.
    Show(ShowArgs),
    /// Print a disk's churn profile record by record, oldest first, one JSON
    /// object a line: each interval's start (Unix seconds), length, bytes
    /// written and zeroed, requests, distinct blocks so far in its 30 s,
    /// 5 min, 15 min, 1 h and 1 day windows, and its sample counts (see FORMAT.md,
    /// "Churn profile"), for your own analysis.
    Export(ExportArgs),
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// The protected disk.
    name: String,
}

#[derive(clap::Args)]
pub struct ShowArgs {
    /// The protected disk.
    name: String,
    /// Print JSON: the summary's fields (bytes and seconds as numbers; the
    /// windows as a list) and the disk's name.
    #[arg(long)]
    json: bool,
}

pub fn run(home: &Home, c: Command) -> Result<()> {
    match c {
        Command::Show(a) => show(home, &a),
        Command::Export(a) => export(home, &a.name),
    }
}

/// The disk's profile, or an error that says how one gets recorded.
pub fn read(home: &Home, name: &str) -> Result<(DiskEntry, profile::SeriesShape, Vec<profile::Record>)> {
    let entry = home.disk(name)?;
    let path = path(&entry);
    match Series::read(&path) {
        Ok((shape, records)) => Ok((entry, shape, records)),
        Err(profile::SeriesError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!(
                "disk {name:?} has no churn profile yet ({} does not exist): it is recorded while `lifeboat filter \
                 {name}` or `lifeboat agent` serves the disk{}",
                path.display(),
                if entry.config.profile { "" } else { ", and recording is off (`protect --profile on`)" }
            )
        }
        Err(e) => Err(e).context(format!("disk {name:?}")),
    }
}

fn export(home: &Home, name: &str) -> Result<()> {
    let (_, _, records) = read(home, name)?;
    for r in &records {
        outln!("{}", serde_json::to_string(r)?);
    }
    Ok(())
}

/// Where a disk's churn profile is kept.
pub fn path(entry: &DiskEntry) -> std::path::PathBuf {
    entry.dir.join("churn.profile")
}

fn mb(bytes: f64) -> String {
    format!("{:.1}", bytes / 1e6)
}

#[allow(clippy::cast_precision_loss)]
fn show(home: &Home, a: &ShowArgs) -> Result<()> {
    let (entry, shape, records) = read(home, &a.name)?;
    let s = Summary::of(shape, &records);
    if a.json {
        let mut v = serde_json::to_value(&s)?;
        v["disk"] = serde_json::Value::String(a.name.clone());
        outln!("{v}");
        return Ok(());
    }
    let when = |t: i64| crate::time::rfc3339(u64::try_from(t).unwrap_or(0) * 1_000_000_000);
    match (s.from, s.to) {
        (Some(from), Some(to)) => outln!(
            "{}: churn profile from {} to {}: {} intervals, {} recorded{}",
            a.name,
            when(from),
            when(to),
            s.intervals,
            if s.seconds < 7200 {
                format!("{:.1} min", s.seconds as f64 / 60.0)
            } else {
                format!("{:.1} h", s.seconds as f64 / 3600.0)
            },
            if entry.config.profile { "" } else { " (recording is off)" }
        ),
        _ => {
            outln!("{}: the churn profile has no intervals yet (one is written every {} s)", a.name, shape.interval);
            return Ok(());
        }
    }
    outln!(
        "written: {} MB in {} requests, {} MB zeroed or trimmed; mean {} MB/s, busiest interval {} MB/s",
        mb(s.bytes_written as f64),
        s.writes,
        mb(s.bytes_zeroed as f64),
        mb(s.mean_write_rate),
        mb(s.peak_write_rate)
    );
    outln!("write requests a second: mean {:.1}, p95 {:.1}, peak {:.1}", s.mean_iops, s.p95_iops, s.peak_iops);
    outln!("distinct blocks changed per window (what a cycle at that RPO reads; {} B blocks):", shape.block_size);
    outln!(
        "  {:<8} {:>8} {:>10} {:>10} {:>10} {:>10} {:>14}",
        "window",
        "windows",
        "p50 MB",
        "p95 MB",
        "p99 MB",
        "max MB",
        "p95 MB/s"
    );
    for w in &s.windows {
        let label = match w.seconds {
            s if s < 60 => format!("{s} s"),
            s if s < 3600 => format!("{} min", s / 60),
            s => format!("{} h", s / 3600),
        };
        if w.windows == 0 {
            outln!("  {:<8} {:>8}   (no whole window recorded yet)", label, 0);
            continue;
        }
        outln!(
            "  {:<8} {:>8} {:>10} {:>10} {:>10} {:>10} {:>14}",
            label,
            w.windows,
            mb(w.p50_bytes as f64),
            mb(w.p95_bytes as f64),
            mb(w.p99_bytes as f64),
            mb(w.max_bytes as f64),
            mb(w.p95_bytes as f64 / f64::from(w.seconds))
        );
    }
    if s.sampled == 0 {
        outln!("sampled blocks: none yet");
    } else {
        outln!(
            "sampled blocks: {} read back: {:.1}% zero, {:.1}% repeats of earlier blocks, the rest stored at {:.2} of \
             its size; about {:.2} of the changed bytes would ship",
            s.sampled,
            100.0 * s.zero_share,
            100.0 * s.repeat_share,
            s.compressed_ratio,
            s.ships_ratio
        );
    }
    Ok(())
}

/// Seconds per profile interval: 30, or `LIFEBOAT_PROFILE_INTERVAL` (for
/// tests and demonstrations; a profile recorded at another interval is set
/// aside and a new one begun).
fn interval() -> u32 {
    std::env::var("LIFEBOAT_PROFILE_INTERVAL")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&s| s > 0)
        .unwrap_or(profile::INTERVAL)
}

/// Starts recording `disk`'s churn profile while it is served, unless its
/// configuration turned that off. A profile that cannot be recorded is a
/// warning, never a reason not to serve the disk.
pub fn start(entry: &DiskEntry, disk: &filter::Disk, name: &str) -> Option<profile::Profiler> {
    if !entry.config.profile {
        return None;
    }
    match profile::Profiler::start(disk, &path(entry), interval(), profile::DEFAULT_BUDGET) {
        Ok((p, note)) => {
            if let Some(note) = note {
                tracing::info!(disk = name, "lifeboat: {name}: {note}");
            }
            Some(p)
        }
        Err(e) => {
            tracing::warn!(disk = name, "lifeboat: warning: {name}: not recording its churn profile: {e}");
            None
        }
    }
}
