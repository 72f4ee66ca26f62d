//! The churn profile (issue 16, part 1): what each disk's writes would cost
//! to replicate, recorded by the filter while it serves the disk, with or
//! without a vault.
//!
//! - [`recorder`]: counts on the write path (bytes, requests, distinct
//!   blocks per candidate RPO window) and a sampler that reads written
//!   blocks back to tell zero, repeated and compressible data;
//! - [`series`]: the bounded time series on disk, one record per interval;
//! - [`summary`]: what `lifeboat profile show` prints;
//! - [`data`]: a sample of an image's data, for the initial sync;
//! - [`plan`]: the capacity plan's arithmetic (`lifeboat plan-capacity`),
//!   and [`report`], its HTML page with charts;
//! - [`Profiler`]: the recorder, the sampler and the thread that closes an
//!   interval every 30 s on the wall clock, for one served disk.

#![deny(missing_docs)]

pub mod data;
pub mod plan;
pub mod recorder;
pub mod report;
pub mod series;
pub mod summary;

use std::path::Path;
use std::sync::mpsc::{RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use filter::Disk;

pub use recorder::{Recorder, Sampler, DEFAULT_BUDGET};
pub use series::{Record, Series, SeriesError, SeriesShape, DEFAULT_CAPACITY, WINDOWS};
pub use summary::Summary;

/// The interval a served disk's profile is recorded at, in seconds.
pub const INTERVAL: u32 = 30;

/// The wall clock, Unix seconds (and the fraction, for waiting).
fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Records one served disk's churn until stopped or dropped.
#[derive(Debug)]
pub struct Profiler {
    stop: Option<Sender<()>>,
    ticker: Option<JoinHandle<()>>,
}

impl Profiler {
    /// Starts recording `disk`'s writes into the series at `path`, an
    /// interval every `interval` seconds on the wall clock (aligned to
    /// multiples of it), its written blocks sampled at most `budget` a
    /// second. A disk already observed is refused. The note says why an
    /// older profile was set aside, if one was.
    pub fn start(disk: &Disk, path: &Path, interval: u32, budget: u32) -> Result<(Profiler, Option<String>), String> {
        let g = disk.geometry();
        let shape =
            SeriesShape { capacity: DEFAULT_CAPACITY, interval, block_size: g.block_size, block_count: g.block_count };
        let (mut series, note) = Series::open_or_create(path, shape).map_err(|e| e.to_string())?;
        let image = disk.image_reader().map_err(|e| format!("{}: {e}", disk.image_path().display()))?;
        let (recorder, sampler) = Recorder::with_sampler(g, secs(unix_now()), image, budget)
            .map_err(|e| format!("starting the churn sampler: {e}"))?;
        let recorder = Arc::new(recorder);
        if !disk.observe(Arc::clone(&recorder) as Arc<dyn filter::WriteObserver>) {
            return Err("the disk's writes are already observed".into());
        }
        // The sampler ends when the disk (which holds the recorder) is dropped.
        std::thread::Builder::new()
            .name("churn-sampler".into())
            .spawn(move || sampler.run())
            .map_err(|e| format!("starting the churn sampler: {e}"))?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let every = u64::from(interval.max(1));
        let ticker = std::thread::Builder::new()
            .name("churn-ticker".into())
            .spawn(move || loop {
                let now = unix_now();
                let boundary = (now.as_secs() / every + 1) * every;
                let wait = Duration::from_secs(boundary).saturating_sub(now);
                let (at, last) = match stopped.recv_timeout(wait) {
                    Err(RecvTimeoutError::Timeout) => (i64::try_from(boundary).unwrap_or(i64::MAX), false),
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                        // The last interval: its window's picks analysed
                        // now, with what the sampler still holds.
                        recorder.offer_window();
                        recorder.flush(Duration::from_secs(2));
                        (secs(unix_now()), true)
                    }
                };
                if let Err(e) = series.append(recorder.roll(at)) {
                    tracing::warn!("churn profile: {e}");
                }
                if last {
                    return;
                }
            })
            .map_err(|e| format!("starting the churn profile's clock: {e}"))?;
        Ok((Profiler { stop: Some(stop), ticker: Some(ticker) }, note))
    }

    /// Closes the open interval (short, up to now) and stops recording.
    pub fn stop(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Profiler {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use disk_format::Geometry;
    use filter::WriteObserver;

    #[test]
    fn a_month_and_more_stays_within_the_bound_and_keeps_the_newest_month() {
        // 40 days of 30 s intervals with an injected clock, one block
        // written in each: the file never passes its bound, and what is
        // read back is the newest 31 days, in order.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("churn.profile");
        let g = Geometry::new(1 << 30, 65536).unwrap();
        let shape =
            SeriesShape { capacity: DEFAULT_CAPACITY, interval: 30, block_size: 65536, block_count: g.block_count };
        let (mut series, _) = Series::open_or_create(&path, shape).unwrap();
        let t0 = 1_800_000_000i64; // a multiple of 900
        let r = Recorder::new(g, t0);
        let intervals = 40 * 24 * 120;
        for i in 1..=intervals {
            r.wrote(i % 100..i % 100 + 1, 4096, false);
            series.append(r.roll(t0 + 30 * i64::try_from(i).unwrap())).unwrap();
            if i % 10_000 == 0 {
                assert!(std::fs::metadata(&path).unwrap().len() <= Series::max_len(DEFAULT_CAPACITY));
            }
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), Series::max_len(DEFAULT_CAPACITY));
        let (_, records) = Series::read(&path).unwrap();
        assert_eq!(records.len(), DEFAULT_CAPACITY as usize);
        let newest = records.last().unwrap();
        assert_eq!(newest.seq, intervals);
        assert_eq!(newest.end(), t0 + 30 * i64::try_from(intervals).unwrap());
        assert!(records.windows(2).all(|w| w[1].seq == w[0].seq + 1 && w[1].start == w[0].end()));
        let s = Summary::of(shape, &records);
        assert_eq!(s.bytes_written, 4096 * u64::from(DEFAULT_CAPACITY));
        // Each 5 min window saw 10 distinct blocks (i mod 100, ten in a row).
        assert_eq!((s.windows[1].p50_bytes, s.windows[1].max_bytes), (10 * 65536, 10 * 65536));
        assert_eq!(s.windows[2].max_bytes, 30 * 65536);
        assert_eq!((s.windows[3].max_bytes, s.windows[4].max_bytes), (100 * 65536, 100 * 65536), "all of i mod 100");
    }
}
