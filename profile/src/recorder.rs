//! Counting a disk's writes as the filter serves them, and the sampler that
//! reads changed blocks back to see what they would cost to ship.
//!
//! **On the write path** ([`Recorder::wrote`], a [`WriteObserver`]) there
//! are only atomics: three counters and, for each candidate RPO window, one
//! bit per block in memory, set with `fetch_or` (after a plain load finds
//! it clear) so a block counts once per window however often it is
//! rewritten. Nothing else: no queue, no wake-up.
//!
//! **The sampler** is a thread of its own. When a 30 s window ends, the
//! recorder picks up to `budget` x 30 of the blocks it changed, at random
//! ([`Recorder::offer_window`]): the blocks a 30 s cycle would read, as
//! they stand when it would read them. (The first sampler took each write's
//! blocks as the write went by. Under sub-block writes that sees a block
//! after its first 4 KiB changed, not after all of them: for fio's 4 KiB
//! random writes it said 0.30 of the changed bytes would ship where cycles
//! shipped 0.37, `benches/plan-validate.sh`.) The sampler reads each picked
//! block back from the image (through the filter's own open file, so the
//! page cache usually has it) and classifies it: all zero (written, zeroed
//! or trimmed: nothing ships); a repeat of a block it saw before (a keyed
//! BLAKE3 of the contents under a key made for this process and never
//! stored, so no hash on disk can be matched against known data); or new,
//! with the bytes the vault would store for it (the vault's own compression
//! rule). It analyses at most `budget` blocks a second (256 by default), so
//! a burst of churn costs a bounded share of a core; a window's picks it has
//! not reached when the next window's arrive are dropped. Repeats are found
//! among the blocks it analysed, so a block repeating one it did not pick
//! counts as new. It looks for picks every 50 ms.
//!
//! **Intervals.** [`Recorder::roll`] closes an interval at a given time and
//! returns its [`Record`]; the caller's clock decides when (the
//! [`crate::Profiler`] thread: every 30 s on the wall clock; tests: an
//! injected clock). Windows are aligned to their length on the Unix clock,
//! so a 5 min window is 00:00-00:05, 00:05-00:10, ...: a window's count is
//! cleared by the roll whose interval ends it. A write that races the
//! clearing of its window's bits may be counted in both windows. A record's
//! sample counts are what the sampler analysed during its interval, that
//! is, mostly the previous window's picks.

use std::collections::HashSet;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use disk_format::Geometry;
use filter::WriteObserver;

use crate::series::{Record, FLAG_PARTIAL, WINDOWS};

/// Windows' picks offered to the sampler and not yet taken; more are dropped.
const QUEUE: usize = 2;
/// Distinct block hashes the sampler remembers; it forgets them all when
/// this many are held (about 10 MB).
const REMEMBERED: usize = 1 << 20;
/// The sampler's default budget, blocks a second: 256 (16 MiB of 64 KiB
/// blocks through BLAKE3, the compression rule and a read from the page
/// cache, well under 1% of a core), 22 million blocks a day. At 2,048 it
/// cost `benches/nbd-bench.sh` measurable write throughput on 2 cores.
pub const DEFAULT_BUDGET: u32 = 256;
/// How often the sampler looks for picks and analyses its budget's worth.
const POLL: Duration = Duration::from_millis(50);

/// What the recorder hands the sampler.
enum Offer {
    /// Blocks a window changed, picked at random.
    Blocks(Vec<u64>),
    /// Analyse everything offered before this, then say so.
    Flush(SyncSender<()>),
}

/// One window's blocks: a bit each, and how many were set.
struct Window {
    bits: Vec<AtomicU64>,
    count: AtomicU64,
}

impl Window {
    fn new(blocks: u64) -> Window {
        let words = usize::try_from(blocks.div_ceil(64)).expect("a bitmap that fits in memory");
        Window { bits: (0..words).map(|_| AtomicU64::new(0)).collect(), count: AtomicU64::new(0) }
    }

    fn mark(&self, blocks: Range<u64>) {
        let mut b = blocks.start;
        let mut new = 0u64;
        while b < blocks.end {
            let word = b / 64;
            let lo = b % 64;
            let hi = (blocks.end - word * 64).min(64);
            let mask = if hi - lo == 64 { u64::MAX } else { ((1u64 << (hi - lo)) - 1) << lo };
            let w = &self.bits[usize::try_from(word).expect("in the bitmap")];
            if w.load(Relaxed) & mask != mask {
                let old = w.fetch_or(mask, Relaxed);
                new += u64::from((mask & !old).count_ones());
            }
            b = word * 64 + hi;
        }
        if new > 0 {
            self.count.fetch_add(new, Relaxed);
        }
    }

    /// Up to `want` of the window's blocks, each set block as likely as
    /// any other (reservoir sampling; `rng` is an xorshift64 state).
    fn pick(&self, want: usize, rng: &mut u64) -> Vec<u64> {
        let mut picked = Vec::with_capacity(want.min(usize::try_from(self.count.load(Relaxed)).unwrap_or(want)));
        let mut seen = 0u64;
        for (i, w) in self.bits.iter().enumerate() {
            let mut word = w.load(Relaxed);
            while word != 0 {
                let b = i as u64 * 64 + u64::from(word.trailing_zeros());
                word &= word - 1;
                if picked.len() < want {
                    picked.push(b);
                } else {
                    *rng ^= *rng << 13;
                    *rng ^= *rng >> 7;
                    *rng ^= *rng << 17;
                    let j = *rng % (seen + 1);
                    if let Some(slot) = usize::try_from(j).ok().and_then(|j| picked.get_mut(j)) {
                        *slot = b;
                    }
                }
                seen += 1;
            }
        }
        picked
    }

    fn clear(&self) {
        self.count.store(0, Relaxed);
        for w in &self.bits {
            w.store(0, Relaxed);
        }
    }
}

/// The sampler's findings since the last roll.
#[derive(Default)]
struct SampleStats {
    sampled: AtomicU64,
    zero: AtomicU64,
    repeat: AtomicU64,
    bytes: AtomicU64,
    stored: AtomicU64,
}

/// Counts one disk's writes into intervals ([`Recorder::roll`]).
pub struct Recorder {
    geometry: Geometry,
    windows: [Window; WINDOWS.len()],
    bytes_written: AtomicU64,
    bytes_zeroed: AtomicU64,
    writes: AtomicU64,
    offers: Option<SyncSender<Offer>>,
    /// Blocks a second the sampler analyses: a window's picks are 30 s of it.
    budget: u32,
    /// The picks' xorshift64 state.
    rng: Mutex<u64>,
    stats: Arc<SampleStats>,
    /// Start of the open interval, Unix seconds.
    start: Mutex<i64>,
    since: i64,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("geometry", &self.geometry).field("since", &self.since).finish()
    }
}

impl Recorder {
    /// A recorder for a disk of `geometry`, its first interval starting at
    /// `now` (Unix seconds), without a sampler: the sample counts stay 0.
    pub fn new(geometry: Geometry, now: i64) -> Recorder {
        Recorder {
            geometry,
            windows: [(); WINDOWS.len()].map(|()| Window::new(geometry.block_count)),
            bytes_written: AtomicU64::new(0),
            bytes_zeroed: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            offers: None,
            budget: 0,
            rng: Mutex::new(0x9e37_79b9_7f4a_7c15),
            stats: Arc::new(SampleStats::default()),
            start: Mutex::new(now),
            since: now,
        }
    }

    /// A recorder whose changed blocks are read back from `image` and
    /// analysed, at most `budget` a second, by the [`Sampler`] returned (to
    /// run on a thread of its own: [`Sampler::run`], which ends when the
    /// recorder is dropped).
    pub fn with_sampler(
        geometry: Geometry,
        now: i64,
        image: File,
        budget: u32,
    ) -> std::io::Result<(Recorder, Sampler)> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let mut r = Recorder::new(geometry, now);
        r.offers = Some(tx);
        r.budget = budget.max(1);
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).map_err(std::io::Error::other)?;
        r.rng = Mutex::new(u64::from_le_bytes(seed) | 1);
        let sampler = Sampler::new(geometry, image, Arc::clone(&r.stats), rx, budget)?;
        Ok((r, sampler))
    }

    /// Offers the sampler up to `budget` x 30 blocks picked at random among
    /// those the 30 s window changed so far ([`Recorder::roll`] does when
    /// the window ends; a stop, before [`Recorder::flush`]).
    pub fn offer_window(&self) {
        let Some(tx) = &self.offers else { return };
        let want = usize::try_from(u64::from(self.budget) * u64::from(WINDOWS[0])).unwrap_or(usize::MAX);
        let picks = self.windows[0].pick(want, &mut self.rng.lock().expect("recorder rng"));
        if !picks.is_empty() {
            match tx.try_send(Offer::Blocks(picks)) {
                Ok(()) | Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {}
            }
        }
    }

    /// Waits, up to `limit`, until the sampler has analysed every block
    /// offered so far, without its budget (before the last interval of a
    /// stop, so that its counts are complete). False if it did not finish
    /// in time.
    pub fn flush(&self, limit: Duration) -> bool {
        let Some(offers) = &self.offers else { return true };
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        offers.send(Offer::Flush(done)).is_ok() && wait.recv_timeout(limit).is_ok()
    }

    /// Closes the open interval at `now` and opens the next: the interval's
    /// counts, and each window's so far. Windows that this interval ends
    /// start again from zero.
    pub fn roll(&self, now: i64) -> Record {
        let mut start = self.start.lock().expect("recorder lock");
        let take = |a: &AtomicU64| a.swap(0, Relaxed);
        let small = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        let mut record = Record {
            seq: 0,
            start: *start,
            seconds: small(u64::try_from(now - *start).unwrap_or(0)),
            flags: 0,
            bytes_written: take(&self.bytes_written),
            bytes_zeroed: take(&self.bytes_zeroed),
            writes: take(&self.writes),
            distinct: std::array::from_fn(|w| small(self.windows[w].count.load(Relaxed))),
            sampled: small(take(&self.stats.sampled)),
            sampled_zero: small(take(&self.stats.zero)),
            sampled_repeat: small(take(&self.stats.repeat)),
            sampled_bytes: take(&self.stats.bytes),
            sampled_stored: take(&self.stats.stored),
            since: self.since,
        };
        if (0..WINDOWS.len()).any(|w| !record.window_whole(w)) {
            record.flags |= FLAG_PARTIAL;
        }
        if record.ends_window(0) {
            self.offer_window();
        }
        for (w, window) in self.windows.iter().enumerate() {
            if record.ends_window(w) {
                window.clear();
            }
        }
        *start = now;
        record
    }
}

impl WriteObserver for Recorder {
    fn wrote(&self, blocks: Range<u64>, len: u64, zeroes: bool) {
        self.writes.fetch_add(1, Relaxed);
        if zeroes {
            self.bytes_zeroed.fetch_add(len, Relaxed);
        } else {
            self.bytes_written.fetch_add(len, Relaxed);
        }
        let blocks = blocks.start..blocks.end.min(self.geometry.block_count);
        for w in &self.windows {
            w.mark(blocks.clone());
        }
    }
}

/// Reads written blocks back and classifies them ([`Recorder::with_sampler`]).
pub struct Sampler {
    geometry: Geometry,
    image: File,
    stats: Arc<SampleStats>,
    offers: Receiver<Offer>,
    budget: u32,
    key: [u8; 32],
    seen: HashSet<u64>,
    compressor: vault::compress::Compressor,
    block: Vec<u8>,
    out: Vec<u8>,
}

impl Sampler {
    fn new(
        geometry: Geometry,
        image: File,
        stats: Arc<SampleStats>,
        offers: Receiver<Offer>,
        budget: u32,
    ) -> std::io::Result<Sampler> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(std::io::Error::other)?;
        let bs = geometry.block_size as usize;
        Ok(Sampler {
            geometry,
            image,
            stats,
            offers,
            budget,
            key,
            seen: HashSet::new(),
            compressor: vault::compress::Compressor::new()?,
            block: vec![0; bs],
            out: vec![0; bs],
        })
    }

    /// Analyses offered picks until the recorder is gone, at most `budget`
    /// a second (a token bucket holding a second's worth). A window's picks
    /// replace what is left of the previous window's.
    pub fn run(mut self) {
        let rate = f64::from(self.budget.max(1));
        let mut pending: Vec<u64> = Vec::new();
        let mut tokens = 0.0;
        let mut last = Instant::now();
        loop {
            loop {
                match self.offers.try_recv() {
                    Ok(Offer::Blocks(picks)) => pending = picks,
                    Ok(Offer::Flush(done)) => {
                        pending.drain(..).for_each(|b| self.analyse(b));
                        let _ = done.try_send(());
                    }
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                }
            }
            let now = Instant::now();
            tokens = (tokens + now.duration_since(last).as_secs_f64() * rate).min(rate);
            last = now;
            while tokens >= 1.0 {
                let Some(b) = pending.pop() else { break };
                tokens -= 1.0;
                self.analyse(b);
            }
            std::thread::sleep(POLL);
        }
    }

    /// Reads block `b` back and counts what it is. A block that cannot be
    /// read (the image shrank under us) is not counted.
    pub fn analyse(&mut self, b: u64) {
        if b >= self.geometry.block_count {
            return;
        }
        let len = self.geometry.block_len(b);
        let block = &mut self.block[..len];
        if self.image.read_exact_at(block, self.geometry.block_range(b).start).is_err() {
            return;
        }
        self.stats.sampled.fetch_add(1, Relaxed);
        if block.iter().all(|&x| x == 0) {
            self.stats.zero.fetch_add(1, Relaxed);
            return;
        }
        let hash = blake3::keyed_hash(&self.key, block);
        let short = u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"));
        if self.seen.len() >= REMEMBERED {
            self.seen.clear();
        }
        if !self.seen.insert(short) {
            self.stats.repeat.fetch_add(1, Relaxed);
            return;
        }
        let stored = self.compressor.compress(block, &mut self.out[..len]).unwrap_or(len);
        self.stats.bytes.fetch_add(len as u64, Relaxed);
        self.stats.stored.fetch_add(stored as u64, Relaxed);
    }

    /// Analyses every offer already queued, without a budget: what the
    /// tests use in place of [`Sampler::run`]'s clock. (A stop uses
    /// [`Recorder::flush`], which the running sampler answers.)
    #[cfg(test)]
    fn drain(&mut self) {
        while let Ok(offer) = self.offers.try_recv() {
            match offer {
                Offer::Blocks(picks) => picks.into_iter().for_each(|b| self.analyse(b)),
                Offer::Flush(done) => {
                    let _ = done.try_send(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BS: u64 = 64 << 10;

    fn geometry(blocks: u64) -> Geometry {
        Geometry::new(blocks * BS, BS).unwrap()
    }

    #[test]
    fn a_block_counts_once_per_window_and_windows_clear_when_they_end() {
        // 64 + 36 blocks: ranges that cross a bitmap word.
        let r = Recorder::new(geometry(100), 0);
        r.wrote(0..1, 4096, false); // a 4 KiB write into block 0
        r.wrote(0..1, 4096, false); // the same block again
        r.wrote(60..70, 10 * BS, false); // across a word boundary
        r.wrote(65..67, 2 * BS, true); // zeroes over blocks already counted
        let first = r.roll(30);
        assert_eq!((first.start, first.seconds), (0, 30));
        assert_eq!((first.bytes_written, first.bytes_zeroed, first.writes), (8192 + 10 * BS, 2 * BS, 4));
        assert_eq!(first.distinct, [11; 5]);
        assert_eq!(first.flags, 0, "recorded since 0: whole windows");
        // Next 30 s: block 0 again and block 99 (the last).
        r.wrote(0..1, BS, false);
        r.wrote(99..100, BS, false);
        let second = r.roll(60);
        assert_eq!(second.distinct, [2, 12, 12, 12, 12], "30 s window restarted; the longer ones go on");
        // Skip to the interval that ends the first 5 min window.
        for t in (90..=300).step_by(30) {
            r.wrote(5..6, BS, false);
            let rec = r.roll(t);
            if t == 300 {
                assert!(rec.ends_window(1) && !rec.ends_window(2));
                assert_eq!(rec.distinct, [1, 13, 13, 13, 13]);
            }
        }
        r.wrote(7..8, BS, false);
        let after = r.roll(330);
        assert_eq!(after.distinct, [1, 1, 14, 14, 14], "the 5 min window started again at 300");
    }

    #[test]
    fn a_recording_that_starts_mid_window_says_so() {
        let r = Recorder::new(geometry(8), 290);
        let rec = r.roll(300);
        assert_eq!((rec.start, rec.seconds, rec.since), (290, 10, 290));
        assert_ne!(rec.flags & FLAG_PARTIAL, 0);
        assert!(!rec.window_whole(0) && !rec.window_whole(1));
    }

    #[test]
    fn the_sampler_tells_zero_repeated_compressible_and_random_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let blocks = 6u64;
        let bs = 64 << 10;
        let mut img = vec![0u8; 6 * bs];
        // 0: zero. 1: random. 2: text. 3: the same random as 1. 4: random. 5: text again.
        let random = |seed: u8| {
            let mut v = vec![0u8; bs];
            blake3::Hasher::new().update(&[seed]).finalize_xof().fill(&mut v);
            v
        };
        let text: Vec<u8> =
            b"2026-12-07T02:00:00Z host kernel: eth0 link up\n".iter().copied().cycle().take(bs).collect();
        img[bs..2 * bs].copy_from_slice(&random(1));
        img[2 * bs..3 * bs].copy_from_slice(&text);
        img[3 * bs..4 * bs].copy_from_slice(&random(1));
        img[4 * bs..5 * bs].copy_from_slice(&random(2));
        img[5 * bs..6 * bs].copy_from_slice(&text);
        std::fs::write(&path, &img).unwrap();
        let (r, mut s) = Recorder::with_sampler(geometry(blocks), 0, File::open(&path).unwrap(), 1).unwrap();
        r.wrote(0..6, 6 * BS, false);
        // Nothing is offered as the writes go by: the window's end picks.
        s.drain();
        assert_eq!(r.roll(30).sampled, 0);
        s.drain();
        let rec = r.roll(60);
        assert_eq!((rec.sampled, rec.sampled_zero, rec.sampled_repeat), (6, 1, 2));
        assert_eq!(rec.sampled_bytes, 3 * BS, "random 1, text, random 2");
        let text_stored = rec.sampled_stored - 2 * BS;
        assert!(text_stored > 0 && text_stored < BS / 8, "text compresses: {text_stored}");
        // A block rewritten many times in a window is read once, as it
        // stands at the window's end (a repeat of what was analysed before).
        for _ in 0..10 {
            r.wrote(4..5, 4096, false);
        }
        r.offer_window();
        s.drain();
        assert_eq!((r.roll(90).sampled, r.roll(120).sampled), (1, 0));
    }

    #[test]
    fn a_window_s_picks_are_its_blocks_at_random_up_to_thirty_seconds_of_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, vec![1u8; usize::try_from(1000 * BS).unwrap()]).unwrap();
        // Budget 1 a second: 30 of a window's 500 blocks, all different,
        // all among those written (the even ones).
        let (r, mut s) = Recorder::with_sampler(geometry(1000), 0, File::open(&path).unwrap(), 1).unwrap();
        for b in (0..1000).step_by(2) {
            r.wrote(b..b + 1, BS, false);
        }
        let picks = r.windows[0].pick(30, &mut r.rng.lock().unwrap());
        assert_eq!(picks.len(), 30);
        assert!(picks.iter().all(|b| b % 2 == 0));
        assert_eq!(picks.iter().collect::<HashSet<_>>().len(), 30);
        // Spread over the window, not its first 30 blocks.
        assert!(picks.iter().any(|&b| b > 500), "{picks:?}");
        r.roll(30);
        s.drain();
        let rec = r.roll(60);
        assert_eq!((rec.sampled, rec.sampled_repeat), (30, 29), "one content, thirty blocks");
    }
}
