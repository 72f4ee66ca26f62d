//! `lifeboat plan-capacity`: bandwidth, achievable RPO, initial sync, vault
//! storage, cores and copy memory for this host's disks, from their churn
//! profiles or synthetic specs (issue 16, part 3; arithmetic in
//! `profile::plan`).

use std::os::unix::fs::MetadataExt;

use anyhow::{bail, Context, Result};
use profile::plan::{self, DiskLoad, Ladder, Machine, Plan, Targets};
use profile::report::ChurnSeries;
use profile::Summary;

use crate::home::Home;
use crate::size::{parse_duration, parse_size};

#[derive(clap::Args)]
pub struct Args {
    /// Protected disks to plan for, from their churn profiles (`lifeboat
    /// profile show`). Default: every protected disk that has one (none
    /// when only --synthetic disks are given).
    names: Vec<String>,
    /// A disk not yet profiled:
    /// NAME:size=SIZE,churn=RATE[,daily=SIZE][,used=SIZE][,burst=X][,ships=X].
    /// churn is the mean rate of distinct changed data (2MB/s, 10Mbit);
    /// daily the distinct data changed in a day (the daily change rate a
    /// storage array reports; default: the disk); the busiest windows (p95,
    /// p99) are burst times the mean (default 2); used is the data an
    /// initial sync reads (default size); ships is the share of changed
    /// bytes that ships after zeros, repeats and compression (default 1).
    /// Repeat for several.
    #[arg(long, value_name = "SPEC", value_parser = parse_synthetic)]
    synthetic: Vec<Synthetic>,
    /// The recovery point objective to plan for: 30s, 5m, 15m or any duration.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    rpo: u64,
    /// The link to the vault (100Mbit, 1Gbit, 50MB/s): the plan then says
    /// the RPO it holds and whether it holds the target. Without it, the
    /// plan says what bandwidth the target needs.
    #[arg(long, value_name = "RATE")]
    link: Option<vault::throttle::Rate>,
    /// Headroom added to the churn for growth, percent (ASR's planner adds 30).
    #[arg(long, default_value_t = 30.0, value_name = "PERCENT")]
    growth: f64,
    /// The retention ladder the vault's storage is planned for (as `protect` takes it).
    #[command(flatten)]
    ladder: crate::cmd::protect::LadderArgs,
    /// What one core of this host takes through the pipeline (read, hash,
    /// compress, seal), e.g. 500MB/s: the plan then says the cores a disk
    /// needs and whether the host has them. Default: what `lifeboat bench`
    /// measured (HOME/machine.json), if it ran.
    #[arg(long, value_name = "RATE")]
    pipeline_per_core: Option<vault::throttle::Rate>,
    /// Cores the pipeline may use (default: the machine profile's, else this host's).
    #[arg(long)]
    cores: Option<u32>,
    /// Print the plan as JSON (bytes, bytes a second and seconds as numbers).
    #[arg(long)]
    json: bool,
    /// Also write the plan as one self-contained HTML page (no script,
    /// style or font from elsewhere) with charts: churn over time, the RPO
    /// a link holds against its bandwidth, the vault's storage over days.
    #[arg(long, value_name = "FILE")]
    html: Option<std::path::PathBuf>,
}

/// A `--synthetic` disk.
#[derive(Debug, Clone)]
pub struct Synthetic(DiskLoad);

#[allow(clippy::cast_precision_loss)]
fn parse_synthetic(s: &str) -> Result<Synthetic, String> {
    let usage = "NAME:size=SIZE,churn=RATE[,daily=SIZE][,used=SIZE][,burst=X][,ships=X], e.g. \
                 db:size=200G,churn=2MB/s,daily=20G,burst=3";
    let (name, spec) = s.split_once(':').ok_or_else(|| format!("{s:?}: expected {usage}"))?;
    crate::home::check_name(name).map_err(|e| format!("{e:#}"))?;
    let (mut size, mut used, mut churn, mut daily, mut burst, mut ships) = (None, None, None, None, 2.0, 1.0);
    for kv in spec.split(',') {
        let (k, v) = kv.split_once('=').ok_or_else(|| format!("{kv:?}: expected KEY=VALUE in {usage}"))?;
        let num = |v: &str| v.parse::<f64>().ok().filter(|x| x.is_finite() && *x > 0.0);
        match k {
            "size" => size = Some(parse_size(v)? as f64),
            "used" => used = Some(parse_size(v)? as f64),
            "daily" => daily = Some(parse_size(v)? as f64),
            "churn" => churn = Some(v.parse::<vault::throttle::Rate>()?.get() as f64),
            "burst" => burst = num(v).filter(|b| *b >= 1.0).ok_or_else(|| format!("burst={v}: a number >= 1"))?,
            "ships" => ships = num(v).filter(|x| *x <= 1.0).ok_or_else(|| format!("ships={v}: a number in (0, 1]"))?,
            _ => return Err(format!("{k:?}: unknown; expected {usage}")),
        }
    }
    let size = size.ok_or_else(|| format!("{name}: size= is missing ({usage})"))?;
    let churn = churn.ok_or_else(|| format!("{name}: churn= is missing ({usage})"))?;
    let used = used.unwrap_or(size).min(size);
    Ok(Synthetic(DiskLoad::synthetic(name, size, used, churn, daily, burst, ships)))
}

/// How long plan-capacity reads a disk's image for its initial sync's sample.
const SAMPLE_TIME: std::time::Duration = std::time::Duration::from_secs(3);

/// A protected disk's load from its profile: its size from the profile,
/// the data an initial sync reads from the image's allocated bytes, what
/// of it ships from a sample of the image.
#[allow(clippy::cast_precision_loss)]
fn load_disk(home: &Home, name: &str) -> Result<(DiskLoad, ChurnSeries)> {
    let (entry, shape, records) = crate::cmd::profile::read(home, name)?;
    let s = Summary::of(shape, &records);
    let disk_bytes = (shape.block_count * u64::from(shape.block_size)) as f64;
    let used = match std::fs::metadata(&entry.config.image) {
        Ok(m) if m.file_type().is_file() => (m.blocks() * 512) as f64,
        _ => disk_bytes,
    };
    let bs = f64::from(shape.block_size);
    let points = records.iter().map(|r| (r.start, f64::from(r.distinct[0]) * bs)).collect();
    let mut load = DiskLoad::from_profile(name, &s, plan::series(&shape, &records), disk_bytes, used.min(disk_bytes));
    // The initial sync ships the data on the image, which may compress
    // unlike the writes the profile sampled: read a sample of it.
    let sample = std::fs::File::open(&entry.config.image).and_then(|f| {
        profile::data::sample_image(
            &f,
            shape.block_count * u64::from(shape.block_size),
            shape.block_size,
            256,
            SAMPLE_TIME,
        )
    });
    match sample.map(|s| s.ships()) {
        Ok(Some(ships)) => load.initial_ships = ships,
        Ok(None) => {}
        Err(e) => tracing::warn!(
            "lifeboat plan-capacity: note: {name}: could not sample the data on {} ({e}); its initial sync is \
             planned with the compression of its writes",
            entry.config.image.display()
        ),
    }
    Ok((load, ChurnSeries { name: name.to_string(), points }))
}

#[allow(clippy::cast_precision_loss)]
pub fn run(home: &Home, a: Args) -> Result<()> {
    let mut disks = Vec::new();
    let names = if a.names.is_empty() && a.synthetic.is_empty() {
        let names: Vec<String> = home
            .disk_names()?
            .into_iter()
            .filter(|n| home.disk(n).is_ok_and(|e| crate::cmd::profile::path(&e).exists()))
            .collect();
        if names.is_empty() {
            bail!(
                "no protected disk in {} has a churn profile yet: serve disks with `lifeboat agent` (or `lifeboat \
                 filter NAME`) for a while, or plan for disks not yet profiled with --synthetic",
                home.root().display()
            );
        }
        names
    } else {
        a.names.clone()
    };
    let mut churn = Vec::new();
    for n in &names {
        let (load, series) = load_disk(home, n)?;
        disks.push(load);
        churn.push(series);
    }
    disks.extend(a.synthetic.iter().map(|s| s.0.clone()));
    if !(a.growth.is_finite() && a.growth >= 0.0) {
        bail!("--growth {}: a percentage, 0 or more", a.growth);
    }
    let measured = crate::cmd::bench::load_machine(home)?;
    let here = std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
    let cores = a.cores.or(measured.as_ref().map(|m| m.cores)).unwrap_or(here);
    let per_core = a.pipeline_per_core.map(|r| r.get() as f64).or(measured.as_ref().map(|m| m.pipeline_per_core));
    let targets = Targets {
        rpo: a.rpo.max(1) as f64,
        link: a.link.map(|r| r.get() as f64),
        growth: a.growth / 100.0,
        ladder: Ladder {
            recent: a.ladder.keep_recent as f64,
            hourly: a.ladder.keep_hourly,
            daily: a.ladder.keep_daily,
        },
        machine: per_core.map(|pipeline_per_core| Machine { pipeline_per_core, cores }),
    };
    let p = plan::plan(&disks, &targets);
    if let Some(path) = &a.html {
        std::fs::write(path, profile::report::html(&p, &churn))
            .with_context(|| format!("writing the report {}", path.display()))?;
    }
    if a.json {
        outln!("{}", serde_json::to_string(&p)?);
    } else {
        print_table(&p);
    }
    Ok(())
}

fn mbit(b: Option<f64>) -> String {
    b.map_or("-".into(), plan::mbit)
}

fn gb(b: Option<f64>) -> String {
    b.map_or("-".into(), |b| if b < 1e9 { format!("{:.0} MB", b / 1e6) } else { format!("{:.1} GB", b / 1e9) })
}

fn dur(s: Option<f64>) -> String {
    s.map_or("-".into(), plan::secs)
}

fn print_table(p: &Plan) {
    let t = &p.targets;
    outln!(
        "capacity plan: RPO {}, link {}, growth headroom {:.0}%, retention {} of every point, {} hourly, {} daily",
        dur(Some(t.rpo)),
        t.link.map_or("not given".into(), |l| mbit(Some(l))),
        t.growth * 100.0,
        dur(Some(t.ladder.recent)),
        t.ladder.hourly,
        t.ladder.daily
    );
    outln!(
        "{:<12} {:>14} {:>14} {:>11} {:>10} {:>8} {:>12} {:>12} {:>7} {:>11}",
        "disk",
        "bandwidth p95",
        "p99",
        "RPO on link",
        "cycle p95",
        "max RPO",
        "initial sync",
        "vault",
        "cores",
        "copy memory"
    );
    for d in p.disks.iter().chain(std::iter::once(&p.host)) {
        outln!(
            "{:<12} {:>14} {:>14} {:>11} {:>10} {:>8} {:>12} {:>12} {:>7} {:>11}",
            d.name,
            mbit(d.bandwidth_p95),
            mbit(d.bandwidth_p99),
            if t.link.is_none() { "-".into() } else { d.achievable_rpo.map_or("none".into(), |r| dur(Some(r))) },
            d.cycle_seconds.map_or("-".into(), |c| format!("{:.1} s", c[1])),
            dur(d.max_rpo_seconds),
            dur(d.initial_sync_seconds),
            gb(d.storage_bytes),
            d.cores.map_or("-".into(), |c| format!("{c:.2}")),
            gb(d.copy_memory_bytes)
        );
    }
    outln!(
        "(bandwidth: to ship each RPO window's changes within it; cycle: a p95 window read and shipped beside the \
         other disks' cycles of the same cut (host: a whole cut); max RPO: an interval plus a p99 cycle; vault: once \
         the retention ladder is full)"
    );
    let problems: Vec<&String> = p.disks.iter().chain(std::iter::once(&p.host)).flat_map(|d| &d.problems).collect();
    if problems.is_empty() {
        outln!("every disk can be protected at this target");
    } else {
        outln!("cannot be protected at this target:");
        for m in problems {
            outln!("  {m}");
        }
    }
    for n in p.disks.iter().flat_map(|d| &d.notes) {
        outln!("note: {n}");
    }
}
