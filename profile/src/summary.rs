//! What a churn profile says, summarised (`lifeboat profile show`).

use serde::Serialize;

use crate::series::{Record, SeriesShape, WINDOWS};

/// The distribution of one window's changed data over the whole profile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowChurn {
    /// The window, seconds (a candidate RPO).
    pub seconds: u32,
    /// Whole windows recorded.
    pub windows: usize,
    /// Mean bytes of distinct blocks changed in a window.
    pub mean_bytes: f64,
    /// Bytes of distinct blocks changed in a window: median, 95th and 99th
    /// percentile (nearest rank) and the largest.
    pub p50_bytes: u64,
    /// 95th percentile.
    pub p95_bytes: u64,
    /// 99th percentile.
    pub p99_bytes: u64,
    /// The largest.
    pub max_bytes: u64,
}

/// A profile in numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The disk's geometry and the interval.
    pub shape: SeriesShape,
    /// Intervals recorded.
    pub intervals: usize,
    /// First interval's start and last one's end, Unix seconds.
    pub from: Option<i64>,
    /// Last interval's end.
    pub to: Option<i64>,
    /// Seconds covered by intervals (gaps while nothing served the disk are
    /// not counted).
    pub seconds: u64,
    /// Bytes written by write requests.
    pub bytes_written: u64,
    /// Bytes zeroed or trimmed.
    pub bytes_zeroed: u64,
    /// Write, write-zeroes and trim requests.
    pub writes: u64,
    /// Mean write rate over the seconds covered, bytes a second.
    pub mean_write_rate: f64,
    /// The busiest interval's write rate, bytes a second.
    pub peak_write_rate: f64,
    /// 95th percentile of the intervals' write rates, bytes a second.
    pub p95_write_rate: f64,
    /// 99th percentile.
    pub p99_write_rate: f64,
    /// Mean write requests a second.
    pub mean_iops: f64,
    /// 95th percentile of the intervals' write requests a second.
    pub p95_iops: f64,
    /// The busiest interval's.
    pub peak_iops: f64,
    /// Distinct blocks changed per candidate RPO window.
    pub windows: Vec<WindowChurn>,
    /// Written blocks analysed.
    pub sampled: u64,
    /// Share of them all zero (never shipped).
    pub zero_share: f64,
    /// Share of them equal to a block analysed before (deduplicated).
    pub repeat_share: f64,
    /// The rest, as stored against as written: compressed size over size.
    pub compressed_ratio: f64,
    /// Changed bytes to bytes shipped: (1 - zero - repeat) x compressed.
    pub ships_ratio: f64,
}

/// Nearest-rank percentile `q` (0..=1) of sorted `v`.
fn percentile(v: &[u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

#[allow(clippy::cast_precision_loss)]
fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

impl Summary {
    /// Summarises `records` (oldest first) of a series of `shape`.
    pub fn of(shape: SeriesShape, records: &[Record]) -> Summary {
        let bs = u64::from(shape.block_size);
        let seconds: u64 = records.iter().map(|r| u64::from(r.seconds)).sum();
        let sum = |f: fn(&Record) -> u64| records.iter().map(f).sum::<u64>();
        let rate = |r: &Record, v: u64| if r.seconds == 0 { 0.0 } else { ratio(v, u64::from(r.seconds)) };
        let mut iops: Vec<u64> = Vec::new();
        let mut rates: Vec<u64> = Vec::new();
        let mut peak_write_rate: f64 = 0.0;
        let mut peak_iops: f64 = 0.0;
        for r in records.iter().filter(|r| r.seconds > 0) {
            peak_write_rate = peak_write_rate.max(rate(r, r.bytes_written));
            peak_iops = peak_iops.max(rate(r, r.writes));
            // Per-second rates to the millisecond, as integers for the percentile.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            iops.push((rate(r, r.writes) * 1000.0) as u64);
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            rates.push(rate(r, r.bytes_written) as u64);
        }
        iops.sort_unstable();
        rates.sort_unstable();
        #[allow(clippy::cast_precision_loss)]
        let p95_iops = percentile(&iops, 0.95) as f64 / 1000.0;
        let windows = (0..WINDOWS.len())
            .map(|w| {
                let mut v: Vec<u64> = records
                    .iter()
                    .filter(|r| r.ends_window(w) && r.window_whole(w))
                    .map(|r| u64::from(r.distinct[w]) * bs)
                    .collect();
                v.sort_unstable();
                WindowChurn {
                    seconds: WINDOWS[w],
                    windows: v.len(),
                    mean_bytes: if v.is_empty() { 0.0 } else { ratio(v.iter().sum(), v.len() as u64) },
                    p50_bytes: percentile(&v, 0.50),
                    p95_bytes: percentile(&v, 0.95),
                    p99_bytes: percentile(&v, 0.99),
                    max_bytes: v.last().copied().unwrap_or(0),
                }
            })
            .collect();
        let sampled = sum(|r| u64::from(r.sampled));
        let zero_share = ratio(sum(|r| u64::from(r.sampled_zero)), sampled);
        let repeat_share = ratio(sum(|r| u64::from(r.sampled_repeat)), sampled);
        let (sbytes, sstored) = (sum(|r| r.sampled_bytes), sum(|r| r.sampled_stored));
        let compressed_ratio = if sbytes == 0 { 1.0 } else { ratio(sstored, sbytes) };
        let ships_ratio = if sampled == 0 { 1.0 } else { (1.0 - zero_share - repeat_share) * compressed_ratio };
        Summary {
            shape,
            intervals: records.len(),
            from: records.first().map(|r| r.start),
            to: records.last().map(Record::end),
            seconds,
            bytes_written: sum(|r| r.bytes_written),
            bytes_zeroed: sum(|r| r.bytes_zeroed),
            writes: sum(|r| r.writes),
            mean_write_rate: ratio(sum(|r| r.bytes_written), seconds),
            peak_write_rate,
            p95_write_rate: percentile(&rates, 0.95) as f64,
            p99_write_rate: percentile(&rates, 0.99) as f64,
            mean_iops: ratio(sum(|r| r.writes), seconds),
            p95_iops,
            peak_iops,
            windows,
            sampled,
            zero_share,
            repeat_share,
            compressed_ratio,
            ships_ratio,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: SeriesShape = SeriesShape { capacity: 100, interval: 30, block_size: 65536, block_count: 1000 };

    fn rec(start: i64, distinct: [u32; 3], bytes: u64, writes: u64) -> Record {
        let distinct = [distinct[0], distinct[1], distinct[2], distinct[2], distinct[2]];
        Record { start, seconds: 30, bytes_written: bytes, writes, distinct, since: 0, ..Record::default() }
    }

    #[test]
    fn hand_computed_profile() {
        // Ten 30 s intervals from 0 to 300: one 5 min window, ten 30 s ones.
        // Distinct blocks per 30 s: 1..=10; the 5 min window's running
        // count ends at 40.
        let records: Vec<Record> = (0..10)
            .map(|i| {
                rec(
                    i * 30,
                    [u32::try_from(i).unwrap() + 1, 4 * u32::try_from(i).unwrap() + 4, 0],
                    3_000_000,
                    30 * (i as u64 + 1),
                )
            })
            .collect();
        let s = Summary::of(SHAPE, &records);
        assert_eq!((s.intervals, s.from, s.to, s.seconds), (10, Some(0), Some(300), 300));
        assert_eq!(s.bytes_written, 30_000_000);
        assert!((s.mean_write_rate - 100_000.0).abs() < 1e-6);
        assert!((s.peak_write_rate - 100_000.0).abs() < 1e-6);
        // Requests per interval 30, 60, ..., 300 (1 to 10 a second): 1650
        // in 300 s, a mean of 5.5 a second; p95 = rank 10 = 10.
        assert!((s.mean_iops - 5.5).abs() < 1e-9);
        assert!((s.p95_iops - 10.0).abs() < 1e-9 && (s.peak_iops - 10.0).abs() < 1e-9);
        let w30 = &s.windows[0];
        assert_eq!((w30.windows, w30.p50_bytes, w30.p95_bytes, w30.max_bytes), (10, 5 * 65536, 10 * 65536, 10 * 65536));
        assert!((w30.mean_bytes - 5.5 * 65536.0).abs() < 1e-6);
        let w5 = &s.windows[1];
        assert_eq!((w5.windows, w5.max_bytes), (1, 40 * 65536), "only the interval ending at 300 ends it");
        assert_eq!(s.windows[2].windows, 0, "no 15 min window ended");
        assert_eq!(s.ships_ratio, 1.0, "nothing sampled: assume every byte ships");
    }

    #[test]
    fn partial_windows_are_left_out_and_samples_combine() {
        let mut r = rec(270, [3, 9, 9], 0, 0);
        r.since = 270; // recording began mid-window
        let mut r2 = rec(300, [1, 1, 10], 0, 0);
        r2.since = 270;
        r.sampled = 10;
        r.sampled_zero = 2;
        r.sampled_repeat = 3;
        r.sampled_bytes = 5 * 65536;
        r.sampled_stored = 2 * 65536;
        let s = Summary::of(SHAPE, &[r, r2]);
        assert_eq!(s.windows[0].windows, 2, "30 s windows are whole");
        assert_eq!(s.windows[1].windows, 0, "the 5 min window ending at 300 began before the recording");
        assert!((s.zero_share - 0.2).abs() < 1e-9 && (s.repeat_share - 0.3).abs() < 1e-9);
        assert!((s.compressed_ratio - 0.4).abs() < 1e-9);
        assert!((s.ships_ratio - 0.2).abs() < 1e-9, "half the blocks are new, stored at 0.4");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!((percentile(&v, 0.5), percentile(&v, 0.95), percentile(&v, 0.99)), (50, 95, 99));
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }
}
