//! Capacity planning arithmetic (issue 16, part 3): from each disk's churn
//! (a recorded profile, or a synthetic spec) and the targets, what the RPO
//! needs and what a link allows. Pure arithmetic, no I/O: `lifeboat
//! plan-capacity` gathers the inputs and prints the result.
//!
//! **Changed data in a window of any length.** A profile counts distinct
//! blocks in 30 s, 5 min and 15 min windows. For another length `R` the
//! plan takes the smallest of two upper bounds over the recorded windows
//! `W`: monotony (`D(R) <= D(W)` for `W >= R`) and subadditivity (`D(R) <=
//! ceil(R / W) * D(W)`, as a longer window is covered by shorter ones), and
//! never more than the disk. Both are bounds, so every figure derived from
//! them errs towards more bandwidth and more storage, never less. Below the
//! shortest recorded window (a seconds-level RPO), the bytes written in `R`
//! seconds at the intervals' write rate (same percentile) are taken when
//! smaller: that one assumes writes spread evenly within a 30 s interval.
//!
//! **What holds an RPO.** Lifeboat cuts a point every `R` and a cycle must
//! ship its window's changes before the next cut, so the link must carry
//! `D(R) x ships / R` at the percentile chosen (p95 or p99 of the windows),
//! times the growth headroom (ASR's planner adds 30%). The RPO achievable on
//! a link is the shortest candidate interval whose p95 need fits.
//!
//! **Storage** over the retention ladder is the first full copy plus, for
//! each kept point, the changes it holds that its predecessor does not: the
//! recent points one interval each, the hourly ones an hour each, the daily
//! ones a day each (the mean window, not a percentile: the vault sums many).

use serde::Serialize;

use crate::series::{Record, SeriesShape, WINDOWS};
use crate::summary::Summary;

/// Changed bytes in one window length: the mean and the percentiles.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WindowLoad {
    /// Window length, seconds.
    pub seconds: u32,
    /// Mean changed bytes per window.
    pub mean: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// One recorded window of a disk: when it ended and what changed in it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// When the window ended, Unix seconds.
    pub end: i64,
    /// Its length, seconds (one of [`WINDOWS`]).
    pub seconds: u32,
    /// Bytes of distinct blocks changed in it.
    pub bytes: f64,
    /// Shipped bytes per changed byte in it, from the sampler's picks of
    /// its blocks, if it analysed any.
    pub ships: Option<f64>,
}

/// Every whole window of every length in a profile's records, oldest first:
/// what lets the planner see which disks were busy at the same time, and
/// what each busy window's own blocks ship (a burst of fresh data and a
/// trickle of small writes ship at different ratios).
///
/// The sampler analyses a 30 s window's picks during the interval after
/// it, so a window's sample is in the records that end within one interval
/// after each of its 30 s parts: those ending in `(end - len + interval,
/// end + interval]`.
pub fn series(shape: &SeriesShape, records: &[Record]) -> Vec<Sample> {
    let bs = f64::from(shape.block_size);
    let step = i64::from(shape.interval.max(1));
    let ends: Vec<i64> = records.iter().map(Record::end).collect();
    let ships = |from: i64, to: i64| {
        let (a, b) = (ends.partition_point(|&e| e <= from), ends.partition_point(|&e| e <= to));
        let rs = &records[a..b.max(a)];
        let sum = |f: fn(&Record) -> u64| rs.iter().map(f).sum::<u64>();
        let sampled = sum(|r| u64::from(r.sampled));
        #[allow(clippy::cast_precision_loss)]
        (sampled > 0).then(|| {
            let new = sampled - sum(|r| u64::from(r.sampled_zero)) - sum(|r| u64::from(r.sampled_repeat));
            let (bytes, stored) = (sum(|r| r.sampled_bytes), sum(|r| r.sampled_stored));
            let compressed = if bytes == 0 { 1.0 } else { stored as f64 / bytes as f64 };
            new as f64 / sampled as f64 * compressed
        })
    };
    let mut out = Vec::new();
    for r in records {
        for (w, &seconds) in WINDOWS.iter().enumerate() {
            if r.ends_window(w) && r.window_whole(w) {
                let end = r.end();
                out.push(Sample {
                    end,
                    seconds,
                    bytes: f64::from(r.distinct[w]) * bs,
                    ships: ships(end - i64::from(seconds) + step, end + step),
                });
            }
        }
    }
    out
}

/// One disk's churn as the planner sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskLoad {
    /// The disk's name.
    pub name: String,
    /// Its size, bytes.
    pub disk_bytes: f64,
    /// What an initial sync reads and ships before compression: the data
    /// on the disk (allocated bytes of a sparse image), bytes.
    pub used_bytes: f64,
    /// The recorded windows (those with at least one whole window).
    pub windows: Vec<WindowLoad>,
    /// Shipped bytes per changed byte (zero and repeated blocks removed,
    /// the rest compressed).
    pub ships: f64,
    /// Stored bytes per byte of data on the initial sync (compression).
    pub initial_ships: f64,
    /// The busiest interval's write rate, bytes a second.
    pub peak_write_rate: f64,
    /// The intervals' write rates (bytes a second; `seconds` is 1): what
    /// bounds windows shorter than the shortest recorded.
    pub write_rate: WindowLoad,
    /// Seconds of churn recorded (0 for a synthetic spec).
    pub recorded_seconds: u64,
    /// The recorded windows one by one ([`series`]; empty for a synthetic
    /// spec): with every disk's, the plan sees whose busy windows coincide.
    #[serde(skip)]
    pub series: Vec<Sample>,
}

impl DiskLoad {
    /// A disk's load from its recorded profile: `s` summarises it, `series`
    /// lists its windows ([`series`]).
    pub fn from_profile(name: &str, s: &Summary, series: Vec<Sample>, disk_bytes: f64, used_bytes: f64) -> DiskLoad {
        #[allow(clippy::cast_precision_loss)]
        let windows = s
            .windows
            .iter()
            .filter(|w| w.windows > 0)
            .map(|w| WindowLoad {
                seconds: w.seconds,
                mean: w.mean_bytes,
                p95: w.p95_bytes as f64,
                p99: w.p99_bytes as f64,
            })
            .collect();
        DiskLoad {
            name: name.to_string(),
            disk_bytes,
            used_bytes,
            windows,
            ships: s.ships_ratio,
            initial_ships: s.compressed_ratio,
            peak_write_rate: s.peak_write_rate,
            write_rate: WindowLoad {
                seconds: 1,
                mean: s.mean_write_rate,
                p95: s.p95_write_rate,
                p99: s.p99_write_rate,
            },
            recorded_seconds: s.seconds,
            series,
        }
    }

    /// A disk not yet profiled: `size` bytes holding `used` bytes, changing
    /// `rate` distinct bytes a second on average and at most `daily` in a
    /// day (rewrites of the same blocks; the disk if not known), its busy
    /// windows (p95 and p99) `burst` times the mean, shipping `ships` of
    /// each changed byte.
    pub fn synthetic(
        name: &str,
        size: f64,
        used: f64,
        rate: f64,
        daily: Option<f64>,
        burst: f64,
        ships: f64,
    ) -> DiskLoad {
        let cap = daily.unwrap_or(size).min(size);
        let windows = WINDOWS
            .iter()
            .map(|&w| {
                let mean = (rate * f64::from(w)).min(cap);
                WindowLoad { seconds: w, mean, p95: (mean * burst).min(cap), p99: (mean * burst).min(cap) }
            })
            .collect();
        DiskLoad {
            name: name.to_string(),
            disk_bytes: size,
            used_bytes: used,
            windows,
            ships,
            initial_ships: ships,
            peak_write_rate: rate * burst,
            write_rate: WindowLoad { seconds: 1, mean: rate, p95: rate * burst, p99: rate * burst },
            recorded_seconds: 0,
            series: Vec::new(),
        }
    }

    /// Changed bytes in a window of `seconds` (see the module's bounds),
    /// by `pick` (the mean or a percentile); `None` without any recorded
    /// window.
    pub fn changed(&self, seconds: f64, pick: fn(&WindowLoad) -> f64) -> Option<f64> {
        let shortest = self.windows.iter().map(|w| f64::from(w.seconds)).reduce(f64::min)?;
        let bound = self
            .windows
            .iter()
            .map(|w| {
                let len = f64::from(w.seconds);
                if len >= seconds {
                    pick(w)
                } else {
                    (seconds / len).ceil() * pick(w)
                }
            })
            .reduce(f64::min)?;
        let bound = if seconds < shortest { bound.min(seconds * pick(&self.write_rate)) } else { bound };
        Some(bound.min(self.disk_bytes))
    }

    /// Bytes shipped for a window of `seconds`, by `pick`. When the profile
    /// recorded windows of that length one by one with their own samples,
    /// from those (each window's changes at its own ratio: a burst of fresh
    /// data and a trickle of small writes ship differently, and the busy
    /// windows are the bursts); otherwise the changed bytes at the
    /// profile's mean ratio.
    pub fn shipped(&self, seconds: f64, pick: fn(&WindowLoad) -> f64) -> Option<f64> {
        let mut v: Vec<f64> = self
            .series
            .iter()
            .filter(|s| f64::from(s.seconds) == seconds)
            .map(|s| s.bytes.min(self.disk_bytes) * s.ships.unwrap_or(self.ships))
            .collect();
        if v.is_empty() {
            return Some(self.changed(seconds, pick)? * self.ships);
        }
        #[allow(clippy::cast_precision_loss)]
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let (p95, p99) = (nearest_rank(&mut v, 0.95), nearest_rank(&mut v, 0.99));
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some(pick(&WindowLoad { seconds: seconds as u32, mean, p95, p99 }))
    }

    /// The link rate, bytes a second, that ships each `rpo` window's changes
    /// within the window at `pick`, with `growth` headroom.
    pub fn bandwidth(&self, rpo: f64, pick: fn(&WindowLoad) -> f64, growth: f64) -> Option<f64> {
        Some(self.shipped(rpo, pick)? * (1.0 + growth) / rpo)
    }
}

/// The retention ladder: every point of the last `recent` seconds, then
/// one an hour for `hourly` hours, then one a day for `daily` days.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ladder {
    /// Seconds of recent points kept whole.
    pub recent: f64,
    /// Hourly points.
    pub hourly: u32,
    /// Daily points.
    pub daily: u32,
}

/// What this host measured of itself (`lifeboat bench`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Machine {
    /// Bytes a second one core takes through read, hash, compress and seal.
    pub pipeline_per_core: f64,
    /// Cores on the host.
    pub cores: u32,
}

/// What to plan for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Targets {
    /// The RPO, seconds.
    pub rpo: f64,
    /// The link to the vault, bytes a second, if given.
    pub link: Option<f64>,
    /// Headroom for growth on the churn (0.3: 30%).
    pub growth: f64,
    /// The retention ladder.
    pub ladder: Ladder,
    /// This host's measured ceilings, if known.
    pub machine: Option<Machine>,
}

/// The intervals the planner tries when it looks for the RPO a link
/// allows, seconds.
pub const CANDIDATE_RPOS: [f64; 10] = [5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0];

/// One disk's plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskPlan {
    /// The disk.
    pub name: String,
    /// Link rate that holds the RPO at the p95 window, with headroom, bytes/s.
    pub bandwidth_p95: Option<f64>,
    /// The same at p99.
    pub bandwidth_p99: Option<f64>,
    /// The shortest candidate RPO the link holds at p95 (seconds), if a link
    /// was given and one does.
    pub achievable_rpo: Option<f64>,
    /// Seconds the initial sync takes over the link (or the pipeline, if
    /// slower), if either is known.
    pub initial_sync_seconds: Option<f64>,
    /// Vault bytes once the ladder is full.
    pub storage_bytes: Option<f64>,
    /// Vault bytes each point adds while it is a recent one: a mean
    /// window's changes as shipped (how fast the vault grows in the first
    /// stretch of the ladder, before points are thinned).
    pub point_bytes: Option<f64>,
    /// Vault bytes at the end of each day, from day 1 until the ladder is
    /// full (at least 15 days).
    pub storage_by_day: Vec<f64>,
    /// Cores the pipeline needs to read a p95 window within the RPO.
    pub cores: Option<f64>,
    /// Copy-before-write memory at the peak: what the VM can overwrite
    /// while a p95 cycle reads, bounded by the window's blocks.
    pub copy_memory_bytes: Option<f64>,
    /// Seconds a cycle of a mean, a p95 and a p99 window takes: its changes
    /// read through the pipeline and shipped over the link, whichever is
    /// slower (both overlap), if either is known.
    pub cycle_seconds: Option<[f64; 3]>,
    /// The oldest the newest point gets: one interval plus a p99 cycle, if
    /// that cycle fits in the interval (a longer one delays the next cut,
    /// and the RPO then grows while the burst lasts).
    pub max_rpo_seconds: Option<f64>,
    /// Why this disk cannot be protected at the target, if it cannot.
    pub problems: Vec<String>,
    /// Remarks that do not stop it (a short profile).
    pub notes: Vec<String>,
}

/// What the host's disks need at one candidate RPO.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CurvePoint {
    /// The RPO, seconds.
    pub rpo: f64,
    /// Link rate that holds it at p95 with headroom, bytes a second.
    pub bandwidth_p95: Option<f64>,
}

/// The whole host's plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// The targets planned for.
    pub targets: Targets,
    /// Each disk.
    pub disks: Vec<DiskPlan>,
    /// The host: sums over the disks (their busy windows taken as
    /// coinciding, which errs high), and the RPO the link holds for all.
    pub host: DiskPlan,
    /// The host's need at each of [`CANDIDATE_RPOS`] (the chart of the RPO
    /// a link holds against its bandwidth).
    pub host_curve: Vec<CurvePoint>,
}

/// A rate in bytes a second as people size links: `12.5 Mbit/s`.
pub fn mbit(bytes_per_second: f64) -> String {
    format!("{:.1} Mbit/s", bytes_per_second * 8.0 / 1e6)
}

/// A duration in seconds, in the unit that reads best: `45 s`, `5 min`, `2.5 h`.
pub fn secs(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

const DAY: f64 = 86_400.0;
const HOUR: f64 = 3_600.0;

/// Vault bytes at the end of day `day` (from 1) and when the ladder is full.
fn storage(d: &DiskLoad, l: Ladder, rpo: f64) -> Option<(Vec<f64>, f64)> {
    let mean = |w: &WindowLoad| w.mean;
    let base = d.used_bytes * d.initial_ships;
    let recent_points = (l.recent / rpo).floor();
    let recent = recent_points * d.shipped(rpo, mean)?;
    let per_hour = d.shipped(HOUR, mean)?;
    let per_day = d.shipped(DAY, mean)?;
    let span_days = (l.recent / DAY + f64::from(l.hourly) / 24.0 + f64::from(l.daily)).ceil().max(15.0);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let days = span_days as usize;
    let at = |t: f64| {
        // Points older than the recent stretch: hourly ones until the
        // hourly stretch is full, then daily ones.
        let past_recent = (t - l.recent).max(0.0);
        let hours = (past_recent / HOUR).floor().min(f64::from(l.hourly));
        let past_hourly = (past_recent - f64::from(l.hourly) * HOUR).max(0.0);
        let daily = (past_hourly / DAY).floor().min(f64::from(l.daily));
        let recent_now = (t.min(l.recent) / rpo).floor() * d.shipped(rpo, mean).unwrap_or(0.0);
        base + recent_now + hours * per_hour + daily * per_day
    };
    #[allow(clippy::cast_precision_loss)]
    let by_day: Vec<f64> = (1..=days).map(|day| at(day as f64 * DAY)).collect();
    let full = base + recent + f64::from(l.hourly) * per_hour + f64::from(l.daily) * per_day;
    Some((by_day, full))
}

/// The rate a disk's changes ship at, bytes (as shipped) a second: the link,
/// or the pipeline (the cores it may use) if slower, if either is known.
fn ship_rate(d: &DiskLoad, t: &Targets) -> Option<f64> {
    let pipeline = t.machine.map(|m| m.pipeline_per_core * f64::from(m.cores));
    match (t.link, pipeline) {
        (Some(l), Some(p)) => Some(l.min(p / d.ships.max(1e-9))),
        (Some(l), None) => Some(l),
        (None, Some(p)) => Some(p / d.ships.max(1e-9)),
        (None, None) => None,
    }
}

/// Seconds a cycle of the mean, p95 and p99 window takes with the link and
/// the pipeline to itself.
fn alone(d: &DiskLoad, t: &Targets) -> Option<[f64; 3]> {
    let rate = ship_rate(d, t)?;
    let cycle = |pick: fn(&WindowLoad) -> f64| Some(d.shipped(t.rpo, pick)? / rate);
    Some([cycle(|w| w.mean)?, cycle(|w| w.p95)?, cycle(|w| w.p99)?])
}

/// The oldest the newest point gets: an interval plus a p99 cycle, if
/// that cycle fits in the interval.
fn max_rpo(cycles: Option<[f64; 3]>, rpo: f64) -> Option<f64> {
    cycles.and_then(|[_, _, c]| (c <= rpo).then_some(rpo + c))
}

fn overrun_note(name: &str, cycles: Option<[f64; 3]>, rpo: f64) -> Option<String> {
    let [_, _, c] = cycles?;
    (c > rpo).then(|| {
        format!(
            "{name}: a cycle of a p99 window takes {}, longer than the RPO: at the busiest times the points fall \
             behind and the achieved RPO grows until the burst passes",
            secs(c)
        )
    })
}

/// One cycle's time when the disks of a round share the link and the
/// pipeline: `own` seconds alone, `others` the other disks' seconds alone
/// in the same round. The link serves the cycles in flight in turn (each
/// transfer reserves its share of the rate), so until this disk's cycle
/// ends each other disk takes as much as it does, up to its own need.
fn shared(own: f64, others: impl Iterator<Item = f64>) -> f64 {
    own + others.map(|o| o.min(own)).sum::<f64>()
}

/// Nearest-rank percentile `q` of `v` (sorted here).
fn nearest_rank(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Each disk's cycles, and the host's rounds (every disk's cycle of one
/// cut), when the disks share the link: `[mean, p95, p99]` seconds.
///
/// The agent cuts every disk of one RPO at the same moments, so their
/// cycles overlap. When every disk's profile recorded windows of the RPO's
/// length, the windows that ended together (within half a window) are one
/// round, each window's changes ship at its own sampled ratio, and each
/// disk's cycle in it is [`shared`] with the others' of the same round:
/// busy windows that did not coincide do not slow each other.
/// Otherwise (a synthetic disk, an RPO no profile records) every disk's
/// mean, p95 and p99 windows are taken as coinciding, which errs long.
fn shared_cycles(disks: &[DiskLoad], t: &Targets) -> (Vec<Option<[f64; 3]>>, Option<[f64; 3]>) {
    let rates: Option<Vec<f64>> = disks.iter().map(|d| ship_rate(d, t)).collect();
    let Some(rates) = rates else {
        return (disks.iter().map(|_| None).collect(), None);
    };
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let len = t.rpo as u32;
    let of_len = |d: &DiskLoad| d.series.iter().filter(|s| s.seconds == len).copied().collect::<Vec<_>>();
    let joint =
        (f64::from(len) == t.rpo && disks.iter().all(|d| d.series.iter().any(|s| s.seconds == len))).then(|| {
            // Rounds: windows whose ends lie within half a window of the
            // round's first; seconds alone per disk (0 if it had none).
            let mut ends: Vec<(i64, usize, f64)> = disks
                .iter()
                .enumerate()
                .flat_map(|(i, d)| {
                    let rate = rates[i];
                    of_len(d)
                        .into_iter()
                        .map(move |s| (s.end, i, s.bytes.min(d.disk_bytes) * s.ships.unwrap_or(d.ships) / rate))
                })
                .collect();
            ends.sort_by_key(|e| e.0);
            let mut rounds: Vec<Vec<Option<f64>>> = Vec::new();
            let mut first = i64::MIN;
            for (end, i, secs) in ends {
                if rounds.is_empty() || end - first > i64::from(len / 2) || rounds.last().unwrap()[i].is_some() {
                    rounds.push(vec![None; disks.len()]);
                    first = end;
                }
                rounds.last_mut().unwrap()[i] = Some(secs);
            }
            rounds
        });
    if let Some(rounds) = joint {
        let stats = |mut v: Vec<f64>| {
            #[allow(clippy::cast_precision_loss)]
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            [mean, nearest_rank(&mut v, 0.95), nearest_rank(&mut v, 0.99)]
        };
        let per_disk = (0..disks.len())
            .map(|i| {
                let v: Vec<f64> = rounds
                    .iter()
                    .filter_map(|r| {
                        let own = r[i]?;
                        Some(shared(own, r.iter().enumerate().filter(|(j, _)| *j != i).filter_map(|(_, o)| *o)))
                    })
                    .collect();
                Some(stats(v))
            })
            .collect();
        let host = stats(rounds.iter().map(|r| r.iter().flatten().sum()).collect());
        return (per_disk, Some(host));
    }
    let own: Option<Vec<[f64; 3]>> = disks.iter().map(|d| alone(d, t)).collect();
    let Some(own) = own else {
        return (disks.iter().map(|_| None).collect(), None);
    };
    let per_disk = (0..own.len())
        .map(|i| {
            Some(
                [0, 1, 2]
                    .map(|k| shared(own[i][k], own.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, o)| o[k]))),
            )
        })
        .collect();
    let host = [0, 1, 2].map(|k| own.iter().map(|o| o[k]).sum());
    (per_disk, Some(host))
}

/// Plans one disk, as if it had the link and the pipeline to itself
/// ([`plan`] shares them among the host's disks).
pub fn plan_disk(d: &DiskLoad, t: &Targets) -> DiskPlan {
    let mut p = plan_disk_but_cycles(d, t);
    set_cycles(&mut p, alone(d, t), t.rpo);
    p
}

/// A disk's cycles, the oldest its newest point gets, and a note if its
/// p99 cycle overruns the interval.
fn set_cycles(p: &mut DiskPlan, cycles: Option<[f64; 3]>, rpo: f64) {
    p.cycle_seconds = cycles;
    p.max_rpo_seconds = max_rpo(cycles, rpo);
    p.notes.extend(overrun_note(&p.name, cycles, rpo));
}

/// Everything of a disk's plan but its cycles (which depend on the disks
/// it shares the link with).
fn plan_disk_but_cycles(d: &DiskLoad, t: &Targets) -> DiskPlan {
    let p95 = |w: &WindowLoad| w.p95;
    let p99 = |w: &WindowLoad| w.p99;
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    if d.windows.is_empty() {
        problems.push(format!(
            "{}: no whole window of churn recorded yet: serve it for at least 15 minutes (a day or more for \
             percentiles that mean something)",
            d.name
        ));
    } else if d.recorded_seconds > 0 && (d.recorded_seconds as f64) < DAY {
        #[allow(clippy::cast_precision_loss)]
        let h = d.recorded_seconds as f64 / HOUR;
        notes.push(format!(
            "{}: profiled for {h:.1} h only: the percentiles stand for a whole day or week only if this was typical",
            d.name
        ));
    }
    let bandwidth_p95 = d.bandwidth(t.rpo, p95, t.growth);
    let bandwidth_p99 = d.bandwidth(t.rpo, p99, t.growth);
    let achievable_rpo = t.link.and_then(|link| {
        CANDIDATE_RPOS.iter().copied().find(|&r| d.bandwidth(r, p95, t.growth).is_some_and(|b| b <= link))
    });
    if let (Some(link), Some(need)) = (t.link, bandwidth_p95) {
        if need > link {
            let sustained = d.bandwidth(CANDIDATE_RPOS[CANDIDATE_RPOS.len() - 1], p95, t.growth).unwrap_or(need);
            problems.push(match achievable_rpo {
                Some(r) => format!(
                    "{}: an RPO of {} needs {} at p95 with {:.0}% headroom; the link has {}: the shortest RPO it holds \
                     is {}",
                    d.name,
                    secs(t.rpo),
                    mbit(need),
                    t.growth * 100.0,
                    mbit(link),
                    secs(r)
                ),
                None => format!(
                    "{}: its churn exceeds the link at any RPO: even hourly points need {} at p95, the link has {}",
                    d.name,
                    mbit(sustained),
                    mbit(link)
                ),
            });
        }
    }
    let read = d.changed(t.rpo, p95);
    let cores = match (t.machine, read) {
        (Some(m), Some(read)) => Some(read * (1.0 + t.growth) / t.rpo / m.pipeline_per_core),
        _ => None,
    };
    if let (Some(m), Some(c)) = (t.machine, cores) {
        if c > f64::from(m.cores) {
            problems.push(format!(
                "{}: reading a p95 window within {} takes {c:.1} cores of this host's pipeline; it has {}",
                d.name,
                secs(t.rpo),
                m.cores
            ));
        }
    }
    let ship_rate = ship_rate(d, t);
    let initial_sync_seconds = ship_rate.map(|r| d.used_bytes * d.initial_ships / r);
    // A cycle of a p95 window takes its shipped bytes over the ship rate;
    // meanwhile the VM may overwrite blocks not yet read, each copied aside
    // once: at most the window's blocks, at most the peak write rate times
    // the cycle.
    let copy_memory_bytes = match (read, ship_rate) {
        (Some(read), Some(rate)) => Some(read.min(d.peak_write_rate * (read * d.ships / rate))),
        (Some(read), None) => Some(read),
        _ => None,
    };
    let (storage_by_day, storage_bytes) = match storage(d, t.ladder, t.rpo) {
        Some((by_day, full)) => (by_day, Some(full)),
        None => (Vec::new(), None),
    };
    DiskPlan {
        name: d.name.clone(),
        bandwidth_p95,
        bandwidth_p99,
        achievable_rpo,
        initial_sync_seconds,
        storage_bytes,
        point_bytes: d.shipped(t.rpo, |w| w.mean),
        storage_by_day,
        cores,
        copy_memory_bytes,
        cycle_seconds: None,
        max_rpo_seconds: None,
        problems,
        notes,
    }
}

/// Plans every disk and the host.
pub fn plan(disks: &[DiskLoad], t: &Targets) -> Plan {
    let mut plans: Vec<DiskPlan> = disks.iter().map(|d| plan_disk_but_cycles(d, t)).collect();
    let (cycles, host_cycles) = shared_cycles(disks, t);
    for (p, c) in plans.iter_mut().zip(cycles) {
        set_cycles(p, c, t.rpo);
    }
    let sum = |f: fn(&DiskPlan) -> Option<f64>| plans.iter().map(f).sum::<Option<f64>>();
    let p95 = |w: &WindowLoad| w.p95;
    let host_need = |r: f64| disks.iter().map(|d| d.bandwidth(r, p95, t.growth)).sum::<Option<f64>>();
    let achievable_rpo =
        t.link.and_then(|link| CANDIDATE_RPOS.iter().copied().find(|&r| host_need(r).is_some_and(|b| b <= link)));
    let mut problems = Vec::new();
    if let (Some(link), Some(need)) = (t.link, sum(|p| p.bandwidth_p95)) {
        if need > link && plans.iter().all(|p| p.problems.is_empty()) {
            problems.push(format!(
                "together the disks need {} at p95 for an RPO of {}; the link has {}{}",
                mbit(need),
                secs(t.rpo),
                mbit(link),
                achievable_rpo
                    .map(|r| format!(": the shortest RPO it holds for all is {}", secs(r)))
                    .unwrap_or_default()
            ));
        }
    }
    if let (Some(m), Some(c)) = (t.machine, sum(|p| p.cores)) {
        if c > f64::from(m.cores) && plans.iter().all(|p| p.problems.is_empty()) {
            problems.push(format!("together the disks need {c:.1} cores of this host's pipeline; it has {}", m.cores));
        }
    }
    let days = plans.iter().map(|p| p.storage_by_day.len()).max().unwrap_or(0);
    let storage_by_day = (0..days)
        .map(|i| {
            plans.iter().map(|p| p.storage_by_day.get(i).or(p.storage_by_day.last()).copied().unwrap_or(0.0)).sum()
        })
        .collect();
    let host = DiskPlan {
        name: "host".into(),
        bandwidth_p95: sum(|p| p.bandwidth_p95),
        bandwidth_p99: sum(|p| p.bandwidth_p99),
        achievable_rpo,
        initial_sync_seconds: sum(|p| p.initial_sync_seconds),
        storage_bytes: sum(|p| p.storage_bytes),
        point_bytes: sum(|p| p.point_bytes),
        storage_by_day,
        cores: sum(|p| p.cores),
        copy_memory_bytes: sum(|p| p.copy_memory_bytes),
        // A round: every disk's cycle of one cut.
        cycle_seconds: host_cycles,
        max_rpo_seconds: plans.iter().map(|p| p.max_rpo_seconds).reduce(|a, b| Some(a?.max(b?))).flatten(),
        problems,
        notes: Vec::new(),
    };
    let host_curve = CANDIDATE_RPOS.iter().map(|&rpo| CurvePoint { rpo, bandwidth_p95: host_need(rpo) }).collect();
    Plan { targets: t.clone(), disks: plans, host, host_curve }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: f64 = 1e6;

    /// A disk whose windows change 30, 200 and 400 MB at p95 (mean half).
    fn disk() -> DiskLoad {
        let w = |seconds, p95: f64| WindowLoad { seconds, mean: p95 / 2.0, p95, p99: p95 * 1.5 };
        DiskLoad {
            name: "db".into(),
            disk_bytes: 100e9,
            used_bytes: 40e9,
            windows: vec![w(30, 30.0 * MB), w(300, 200.0 * MB), w(900, 400.0 * MB)],
            ships: 0.5,
            initial_ships: 0.6,
            peak_write_rate: 10.0 * MB,
            write_rate: WindowLoad { seconds: 1, mean: 1.0 * MB, p95: 2.0 * MB, p99: 3.0 * MB },
            recorded_seconds: 7 * 86_400,
            series: Vec::new(),
        }
    }

    fn targets(rpo: f64, link: Option<f64>) -> Targets {
        Targets {
            rpo,
            link,
            growth: 0.3,
            ladder: Ladder { recent: 3600.0, hourly: 24, daily: 15 },
            machine: Some(Machine { pipeline_per_core: 500.0 * MB, cores: 2 }),
        }
    }

    #[test]
    fn windows_of_other_lengths_take_the_tightest_bound() {
        let d = disk();
        let p95 = |w: &WindowLoad| w.p95;
        // 60 s: two 30 s windows (60 MB) beat the 5 min window (200 MB).
        assert_eq!(d.changed(60.0, p95), Some(60.0 * MB));
        // 45 s takes two 30 s windows too: a part window counts whole.
        assert_eq!(d.changed(45.0, p95), Some(60.0 * MB));
        // 600 s: the 15 min window (400) beats two 5 min (400) and 20 x 30 s (600): 400.
        assert_eq!(d.changed(600.0, p95), Some(400.0 * MB));
        // An hour: four 15 min windows.
        assert_eq!(d.changed(3600.0, p95), Some(1600.0 * MB));
        // A day: 96 x 400 MB = 38.4 GB, under the 100 GB disk.
        assert_eq!(d.changed(86_400.0, p95), Some(38_400.0 * MB));
        // Never more than the disk.
        assert_eq!(d.changed(7.0 * 86_400.0, p95), Some(100e9));
        // Under 30 s the write rate bounds it too when smaller: 5 s at
        // 2 MB/s is 10 MB; 20 s would be 40 MB, more than the 30 s window's 30.
        assert_eq!(d.changed(5.0, p95), Some(10.0 * MB));
        assert_eq!(d.changed(20.0, p95), Some(30.0 * MB));
    }

    #[test]
    fn a_hand_computed_plan() {
        let d = disk();
        let p = plan_disk(&d, &targets(300.0, Some(125e6))); // 1 Gbit/s
                                                             // 5 min at p95: 200 MB changed, half ships, 30% headroom: 130 MB in 300 s.
        let want = 200.0 * MB * 0.5 * 1.3 / 300.0;
        assert!((p.bandwidth_p95.unwrap() - want).abs() < 1e-6);
        assert!((p.bandwidth_p99.unwrap() - want * 1.5).abs() < 1e-6);
        // Cores: 200 MB x 1.3 in 300 s at 500 MB/s a core.
        assert!((p.cores.unwrap() - 200.0 * 1.3 / 300.0 / 500.0).abs() < 1e-9);
        // Initial sync: 40 GB x 0.6 over min(link 125 MB/s, pipeline 1000 / 0.5).
        assert!((p.initial_sync_seconds.unwrap() - 40e9 * 0.6 / 125e6).abs() < 1e-6);
        // Storage when the ladder is full, from the means (half the p95s):
        // base 24 GB; 12 recent 5 min points of 100 MB x 0.5; 24 hourly of
        // 4 x 200 MB x 0.5; 15 daily of 96 x 200 MB x 0.5 (9.6 GB each).
        let full = 24e9 + 12.0 * 50.0 * MB + 24.0 * 400.0 * MB + 15.0 * 9600.0 * MB;
        assert!((p.storage_bytes.unwrap() - full).abs() < 1.0, "{:?}", p.storage_bytes);
        // The ladder is full after 1 h + 24 h + 15 days: 17 days listed, the last one full.
        assert_eq!(p.storage_by_day.len(), 17);
        assert!((p.storage_by_day[16] - full).abs() < 1.0);
        assert!(p.storage_by_day.windows(2).all(|w| w[1] >= w[0]));
        // Each recent point: the mean 5 min window, 100 MB, half shipped.
        assert!((p.point_bytes.unwrap() - 50.0 * MB).abs() < 1e-6);
        // Copy memory: the 200 MB window shipped at 125 MB/s takes 0.8 s;
        // 10 MB/s of writes meanwhile: 8 MB.
        assert!((p.copy_memory_bytes.unwrap() - 8.0 * MB).abs() < 1.0);
        // Cycles: the mean, p95 and p99 windows (100, 200, 300 MB) shipped
        // at half over 125 MB/s (the link is slower than the pipeline's
        // 1000 MB/s): 0.4, 0.8 and 1.2 s; the newest point at most 301.2 s old.
        let [a, b, c] = p.cycle_seconds.unwrap();
        assert!((a - 0.4).abs() < 1e-9 && (b - 0.8).abs() < 1e-9 && (c - 1.2).abs() < 1e-9, "{a} {b} {c}");
        assert!((p.max_rpo_seconds.unwrap() - 301.2).abs() < 1e-9);
        assert!(p.problems.is_empty() && p.notes.is_empty(), "{p:?}");
        assert_eq!(p.achievable_rpo, Some(5.0), "5 s: 10 MB x 0.5 x 1.3 in 5 s = 1.3 MB/s fits");
    }

    #[test]
    fn churn_beyond_the_link_is_said_and_no_number_is_promised() {
        let d = disk();
        // 1 Mbit/s = 125 kB/s; hourly points need 1600 MB x 0.5 x 1.3 / 3600 = 289 kB/s.
        let p = plan_disk(&d, &targets(300.0, Some(125_000.0)));
        assert_eq!(p.achievable_rpo, None);
        assert_eq!(p.problems.len(), 1, "{:?}", p.problems);
        // A p99 cycle: 300 MB x 0.5 over 125 kB/s = 1200 s, past the 300 s RPO.
        assert_eq!(p.max_rpo_seconds, None);
        assert!(p.notes[0].contains("longer than the RPO"), "{:?}", p.notes);
        assert!(p.problems[0].contains("exceeds the link at any RPO"), "{}", p.problems[0]);
        // 5 Mbit/s = 625 kB/s. 30 s needs 30 MB x 0.65 / 30 s = 650 kB/s;
        // 1 and 2 min the same (two and four 30 s windows); 5 min needs
        // 200 MB x 0.65 / 300 s = 433 kB/s: the shortest that fits.
        let p = plan_disk(&d, &targets(30.0, Some(625_000.0)));
        assert_eq!(p.achievable_rpo, Some(300.0));
        assert!(p.problems[0].contains("the shortest RPO it holds is 5 min"), "{}", p.problems[0]);
    }

    #[test]
    fn the_host_sums_its_disks_and_finds_the_rpo_for_all() {
        let (a, mut b) = (disk(), disk());
        b.name = "web".into();
        let t = targets(30.0, Some(1_000_000.0));
        let p = plan(&[a, b], &t);
        let one = plan_disk(&disk(), &t);
        assert!((p.host.bandwidth_p95.unwrap() - 2.0 * one.bandwidth_p95.unwrap()).abs() < 1e-6);
        // Each alone holds 30 s (650 kB/s of 1 MB/s); together they need
        // 1.3 MB/s up to 2 min, and 2 x 433 kB/s at 5 min, which fits.
        assert_eq!(one.achievable_rpo, Some(30.0));
        assert_eq!(p.host.achievable_rpo, Some(300.0));
        assert!(p.host.problems[0].contains("together the disks need"), "{:?}", p.host.problems);
        assert_eq!(p.host.storage_by_day.len(), 17);
    }

    #[test]
    fn a_synthetic_disk_and_a_short_or_empty_profile() {
        // 50 GB disk, 20 GB used, 1 MB/s, bursts 3x, ships 0.6.
        let d = DiskLoad::synthetic("new", 50e9, 20e9, 1.0 * MB, None, 3.0, 0.6);
        let t = targets(300.0, None);
        let p = plan_disk(&d, &t);
        // 5 min: 300 MB mean, 900 MB p95; x 0.6 x 1.3 / 300 s = 2.34 MB/s.
        assert!((p.bandwidth_p95.unwrap() - 900.0 * MB * 0.6 * 1.3 / 300.0).abs() < 1e-6);
        assert_eq!(p.achievable_rpo, None, "no link given");
        // A day's changes: 86.4 GB at 1 MB/s, more than the disk; with
        // daily=5 GB the day's points hold 5 GB each (x 0.6 shipped).
        assert_eq!(d.changed(86_400.0, |w| w.mean), Some(50e9));
        let d = DiskLoad::synthetic("new", 50e9, 20e9, 1.0 * MB, Some(5e9), 3.0, 0.6);
        assert_eq!(d.changed(86_400.0, |w| w.mean), Some(5e9));
        assert_eq!(d.changed(300.0, |w| w.mean), Some(300.0 * MB), "short windows unchanged");
        let mut short = disk();
        short.recorded_seconds = 2 * 3600;
        assert!(plan_disk(&short, &t).notes[0].contains("profiled for 2.0 h only"));
        let mut empty = disk();
        empty.windows.clear();
        let p = plan_disk(&empty, &t);
        assert!(p.bandwidth_p95.is_none() && p.problems[0].contains("no whole window"));
    }

    /// A disk whose 30 s windows, ending at `start + 30 k`, change `mb[k]` MB,
    /// all of it shipped: its summary windows from the same numbers.
    fn recorded(name: &str, start: i64, mb: &[f64]) -> DiskLoad {
        let mut v: Vec<f64> = mb.iter().map(|m| m * MB).collect();
        let series = v
            .iter()
            .enumerate()
            .map(|(k, &bytes)| Sample { end: start + 30 * (k as i64 + 1), seconds: 30, bytes, ships: None })
            .collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let (p95, p99) = (nearest_rank(&mut v, 0.95), nearest_rank(&mut v, 0.99));
        DiskLoad {
            name: name.into(),
            disk_bytes: 1e9,
            used_bytes: 0.0,
            windows: vec![WindowLoad { seconds: 30, mean, p95, p99 }],
            ships: 1.0,
            initial_ships: 1.0,
            peak_write_rate: 10.0 * MB,
            write_rate: WindowLoad { seconds: 1, mean: 1.0 * MB, p95: 2.0 * MB, p99: 2.0 * MB },
            recorded_seconds: 120,
            series,
        }
    }

    fn close(got: [f64; 3], want: [f64; 3]) -> bool {
        got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-9)
    }

    #[test]
    fn disks_sharing_the_link_slow_each_other_only_when_busy_together() {
        // 10 MB/s, no pipeline limit. a bursts in the first round, b in the
        // third; their profiles' intervals are 7 s apart.
        let a = recorded("a", 1_000, &[30.0, 1.0, 1.0, 1.0]);
        let b = recorded("b", 1_007, &[1.0, 1.0, 50.0, 1.0]);
        let mut t = targets(30.0, Some(10.0 * MB));
        t.machine = None;
        let p = plan(&[a.clone(), b.clone()], &t);
        // a's cycles: 3 s + 0.1 s of b's (b needs less than a), then 0.1 +
        // 0.1, then 0.1 + 0.1 (b's burst takes only what a takes), 0.2.
        let [ca, cb] = [p.disks[0].cycle_seconds.unwrap(), p.disks[1].cycle_seconds.unwrap()];
        assert!(close(ca, [3.7 / 4.0, 3.1, 3.1]), "{ca:?}");
        assert!(close(cb, [5.7 / 4.0, 5.1, 5.1]), "{cb:?}");
        assert!((p.disks[0].max_rpo_seconds.unwrap() - 33.1).abs() < 1e-9);
        assert!((p.disks[1].max_rpo_seconds.unwrap() - 35.1).abs() < 1e-9);
        // The host's rounds: 3.1, 0.2, 5.1 and 0.2 s.
        assert!(close(p.host.cycle_seconds.unwrap(), [8.6 / 4.0, 5.1, 5.1]), "{:?}", p.host.cycle_seconds);
        // Alone, a disk's cycles are its own windows.
        assert!(close(plan_disk(&a, &t).cycle_seconds.unwrap(), [3.3 / 4.0, 3.0, 3.0]));

        // Without the windows one by one (as for a synthetic spec), the
        // busiest windows are taken as coinciding: a's p95 3 s + 3 s of
        // b's 5 s; b's 5 s + all of a's 3 s.
        let (mut a2, mut b2) = (a, b);
        a2.series.clear();
        b2.series.clear();
        let p = plan(&[a2, b2], &t);
        let [ca, cb] = [p.disks[0].cycle_seconds.unwrap(), p.disks[1].cycle_seconds.unwrap()];
        assert!((ca[1] - 6.0).abs() < 1e-9 && (cb[1] - 8.0).abs() < 1e-9, "{ca:?} {cb:?}");
        assert!((p.host.cycle_seconds.unwrap()[1] - 8.0).abs() < 1e-9);
        // An RPO no profile records whole (60 s) falls back the same way.
        let p = plan(
            &[recorded("a", 0, &[30.0, 1.0, 1.0, 1.0]), recorded("b", 0, &[1.0, 1.0, 50.0, 1.0])],
            &Targets { rpo: 60.0, ..t },
        );
        assert!(p.disks[0].cycle_seconds.unwrap()[1] > 6.0, "{:?}", p.disks[0].cycle_seconds);
    }

    #[test]
    fn a_window_ships_at_the_ratio_its_own_blocks_were_sampled_at() {
        // Five 30 s records; each carries the sample of the window before
        // it. Window 2 (ending at 60) is a burst of fresh data that stores
        // at half; the others store at a tenth.
        let shape = SeriesShape { capacity: 10, interval: 30, block_size: 65536, block_count: 10_000 };
        let rec = |k: u32, distinct: u32, stored_tenths: u64| Record {
            seq: u64::from(k) + 1,
            start: 30 * i64::from(k),
            seconds: 30,
            distinct: [distinct; 5],
            sampled: if k == 0 { 0 } else { 10 },
            sampled_bytes: if k == 0 { 0 } else { 10 * 65536 },
            sampled_stored: stored_tenths * 65536,
            since: 0,
            ..Record::default()
        };
        let records = [rec(0, 100, 0), rec(1, 1000, 1), rec(2, 100, 5), rec(3, 100, 1), rec(4, 100, 1)];
        let s = series(&shape, &records);
        let thirty: Vec<Option<f64>> = s.iter().filter(|s| s.seconds == 30).map(|s| s.ships).collect();
        let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
        assert!(close(thirty[0], 0.1) && close(thirty[1], 0.5) && close(thirty[2], 0.1), "{thirty:?}");
        assert_eq!(thirty[4], None, "the last window's sample is not in yet");
        // The burst's cycle ships at its own half, not the profile's mean.
        let mut d = recorded("a", 0, &[6.5536, 65.536, 6.5536, 6.5536, 6.5536]);
        d.ships = 0.2;
        d.series = s;
        let mut t = targets(30.0, Some(10.0 * MB));
        t.machine = None;
        let p = plan(&[d], &t);
        let [_, _, p99] = p.disks[0].cycle_seconds.unwrap();
        assert!((p99 - 65.536 * 0.5 / 10.0).abs() < 1e-9, "{p99}");
        // So does the link it needs (30% headroom), and each point's growth
        // is the windows' mean as shipped: (4 x 0.65536 + 32.768) / 5 MB
        // (the last window at the profile's 0.2).
        let bw = p.disks[0].bandwidth_p99.unwrap();
        assert!((bw - 65.536 * MB * 0.5 * 1.3 / 30.0).abs() < 1e-6, "{bw}");
        let point = p.disks[0].point_bytes.unwrap();
        let want = (3.0 * 0.65536 + 32.768 + 6.5536 * 0.2) * MB / 5.0;
        assert!((point - want).abs() < 1e-6, "{point} {want}");
    }
}
