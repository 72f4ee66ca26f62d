//! Bandwidth limits (issue 14, point 3): `--bandwidth RATE`, or a weekly
//! schedule of rates, on whatever a command sends to or reads from a vault.
//!
//! A [`Schedule`] says which [`Rate`] holds when: `100Mbit`, or
//! `mon-fri 08:00-18:00=100Mbit,*=1Gbit` (rules separated by commas, the
//! first that matches the host's local time wins, no match is unlimited).
//! A [`Limiter`] paces transfers to the rate of the moment; [`Throttled`]
//! wraps any [`Backend`] so that every byte put, created, streamed or read
//! passes through one limiter: one link, both directions.
//!
//! Pacing is a virtual clock. Each transfer of `n` bytes reserves the
//! interval `n / rate` after the previous reservation ends (or after now,
//! less a small burst allowance, if the link has been idle), and goes once
//! its reservation has ended (paid before sent): so the bytes sent by time
//! `T` are at most `rate × T` plus one burst, whatever the number of threads
//! sharing the limiter or the size of a transfer, and a sender that keeps
//! up sends exactly at the rate.
//! Reserving under a mutex and sleeping outside it keeps threads from
//! serialising on the lock. Time comes from a [`Pace`], so tests run on a
//! virtual clock and the schedule's switch at 18:00 is tested without
//! waiting for it.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backend::{Backend, Kind, ObjectWriter, Version};
use crate::error::VaultError;

/// A transfer rate in bytes per second (never zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    bytes_per_second: u64,
    /// How it was written, in bits (`Mbit`) or bytes (`MB/s`), for display.
    bits: bool,
}

impl Rate {
    /// A rate of `bytes_per_second` (at least 1).
    pub fn bytes_per_second(bytes_per_second: u64) -> Rate {
        Rate { bytes_per_second: bytes_per_second.max(1), bits: false }
    }

    /// The rate in bytes per second.
    pub fn get(self) -> u64 {
        self.bytes_per_second
    }
}

const RATE_HELP: &str = "a rate is a number and a unit: 100Mbit, 1Gbit, 500kbit (bits per second, \
                         decimal), 50MB/s, 20MiB/s (bytes per second), or `unlimited`";

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Rate, String> {
        let t = s.trim();
        let t = t.strip_suffix("/s").or_else(|| t.strip_suffix("ps")).unwrap_or(t);
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let number: f64 = number.parse().map_err(|_| format!("{s:?} is not a rate: {RATE_HELP}"))?;
        let (scale, bits) = match unit.trim() {
            "bit" | "b" => (1.0, true),
            "kbit" | "Kbit" | "kb" => (1e3, true),
            "Mbit" | "mbit" | "Mb" => (1e6, true),
            "Gbit" | "gbit" | "Gb" => (1e9, true),
            "B" => (1.0, false),
            "kB" | "KB" => (1e3, false),
            "MB" => (1e6, false),
            "GB" => (1e9, false),
            "KiB" => (1024.0, false),
            "MiB" => (1024.0 * 1024.0, false),
            "GiB" => (1024.0 * 1024.0 * 1024.0, false),
            _ => return Err(format!("{s:?} has no unit I know: {RATE_HELP}")),
        };
        let per_second = number * scale / if bits { 8.0 } else { 1.0 };
        if !per_second.is_finite() || per_second < 1.0 {
            return Err(format!("{s:?} is below one byte per second: {RATE_HELP}"));
        }
        if per_second > 1e15 {
            return Err(format!("{s:?} is more than a petabyte per second: {RATE_HELP}"));
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // checked above
        Ok(Rate { bytes_per_second: per_second.round() as u64, bits })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.bytes_per_second;
        if self.bits {
            let bits = b.saturating_mul(8);
            for (scale, unit) in [(1_000_000_000, "Gbit"), (1_000_000, "Mbit"), (1_000, "kbit")] {
                if bits >= scale && bits.is_multiple_of(scale) {
                    return write!(f, "{}{unit}", bits / scale);
                }
            }
            write!(f, "{bits}bit")
        } else {
            for (scale, unit) in [(1 << 30, "GiB/s"), (1 << 20, "MiB/s"), (1_000_000_000, "GB/s"), (1_000_000, "MB/s")]
            {
                if b >= scale && b.is_multiple_of(scale) {
                    return write!(f, "{}{unit}", b / scale);
                }
            }
            write!(f, "{b}B/s")
        }
    }
}

/// A moment of the week in the host's local time: 0 = Monday 00:00.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeekTime {
    /// 0 = Monday … 6 = Sunday.
    pub weekday: u8,
    /// Minutes since local midnight, 0..1440.
    pub minute: u16,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// One rule of a schedule: on these days, in this window, this rate.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    /// Days it applies on (bit 0 = Monday); all for `*` or a bare window.
    days: u8,
    /// Minutes `[start, end)`; `end < start` runs past midnight into the
    /// next day (the part after midnight belongs to the rule's days too:
    /// `fri 22:00-02:00` covers Friday 22:00 to Saturday 02:00).
    window: Option<(u16, u16)>,
    /// `None` is unlimited.
    rate: Option<Rate>,
    /// The text of the rule, for display.
    text: String,
}

impl Rule {
    fn matches(&self, t: WeekTime) -> bool {
        let on = |day: u8| self.days & (1 << (day % 7)) != 0;
        match self.window {
            None => on(t.weekday),
            Some((start, end)) if start < end => on(t.weekday) && (start..end).contains(&t.minute),
            Some((start, end)) => (on(t.weekday) && t.minute >= start) || (on((t.weekday + 6) % 7) && t.minute < end),
        }
    }
}

/// When which rate holds; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    rules: Vec<Rule>,
}

const SCHEDULE_HELP: &str = "a bandwidth limit is a rate (100Mbit, 50MB/s, unlimited) or a weekly schedule of \
                             rules WHEN=RATE separated by commas, the first match winning, e.g. \
                             `mon-fri 08:00-18:00=100Mbit,*=1Gbit`; WHEN is `*`, days (mon, mon-fri, sat-sun), \
                             a window (08:00-18:00, 22:00-06:00 runs past midnight), or days and a window, in \
                             the host's local time";

fn parse_rate_or_unlimited(s: &str) -> Result<Option<Rate>, String> {
    if s.trim() == "unlimited" {
        Ok(None)
    } else {
        s.parse().map(Some)
    }
}

fn parse_minute(s: &str, whole: &str) -> Result<u16, String> {
    let bad = || format!("{s:?} in {whole:?} is not a time of day HH:MM: {SCHEDULE_HELP}");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 || h > 24 || (h == 24 && m != 0) || h == 0 && m == 0 && s.starts_with("24") {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn parse_days(s: &str, whole: &str) -> Result<u8, String> {
    let day = |d: &str| {
        DAYS.iter()
            .position(|x| x.eq_ignore_ascii_case(d))
            .ok_or_else(|| format!("{d:?} in {whole:?} is not a day (mon … sun): {SCHEDULE_HELP}"))
    };
    let mut mask = 0u8;
    for part in s.split('+') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                let mut d = a;
                loop {
                    mask |= 1 << d;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => mask |= 1 << day(part)?,
        }
    }
    Ok(mask)
}

impl FromStr for Schedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Schedule, String> {
        if !s.contains('=') {
            let rate = parse_rate_or_unlimited(s).map_err(|e| format!("{e}; or {SCHEDULE_HELP}"))?;
            return Ok(Schedule { rules: vec![Rule { days: 0x7f, window: None, rate, text: s.trim().to_string() }] });
        }
        let mut rules = Vec::new();
        for text in s.split(',').map(str::trim) {
            let (when, rate) = text
                .split_once('=')
                .ok_or_else(|| format!("{text:?} in {s:?} is not a rule WHEN=RATE: {SCHEDULE_HELP}"))?;
            let rate = parse_rate_or_unlimited(rate)?;
            let when = when.trim();
            let (mut days, mut window) = (0x7f, None);
            if when != "*" {
                for word in when.split_whitespace() {
                    if word.starts_with(|c: char| c.is_ascii_digit()) {
                        let (a, b) = word
                            .split_once('-')
                            .ok_or_else(|| format!("{word:?} in {s:?} is not a window HH:MM-HH:MM: {SCHEDULE_HELP}"))?;
                        let (a, b) = (parse_minute(a, s)?, parse_minute(b, s)?);
                        if a == b {
                            return Err(format!("the window {word:?} in {s:?} is empty: {SCHEDULE_HELP}"));
                        }
                        window = Some((a, b));
                    } else {
                        days = parse_days(word, s)?;
                    }
                }
            }
            rules.push(Rule { days, window, rate, text: text.to_string() });
        }
        Ok(Schedule { rules })
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let texts: Vec<&str> = self.rules.iter().map(|r| r.text.as_str()).collect();
        f.write_str(&texts.join(","))
    }
}

impl Schedule {
    /// The rate at `t`: `None` is unlimited (no rule matches, or the
    /// matching rule says `unlimited`).
    pub fn rate_at(&self, t: WeekTime) -> Option<Rate> {
        self.rules.iter().find(|r| r.matches(t)).and_then(|r| r.rate)
    }
}

/// Where a [`Limiter`] gets time from.
pub trait Pace: Send + Sync {
    /// A monotonic clock.
    fn now(&self) -> Duration;
    /// The moment of the week in the host's local time.
    fn week_time(&self) -> WeekTime;
    /// Waits `d`.
    fn sleep(&self, d: Duration);
}

/// The real clocks: `Instant`, the local time zone (`TZ`, else
/// `/etc/localtime`; UTC if neither says), and `thread::sleep`.
pub struct RealPace {
    start: Instant,
}

impl Default for RealPace {
    fn default() -> RealPace {
        RealPace { start: Instant::now() }
    }
}

impl Pace for RealPace {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }
    fn week_time(&self) -> WeekTime {
        let now = jiff::ZonedDateTime::now();
        let weekday = u8::try_from(now.weekday().to_monday_zero_offset()).unwrap_or(0);
        let minute = u16::try_from(now.hour()).unwrap_or(0) * 60 + u16::try_from(now.minute()).unwrap_or(0);
        WeekTime { weekday, minute }
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// How long an idle link may bank credit for: a transfer after a pause may
/// go this much earlier than the rate alone allows. Small against any
/// measurement window (0.3% of 30 s), large enough that a sender that
/// pauses between pieces does not fall behind the rate.
const BURST: Duration = Duration::from_millis(100);

/// The most a transfer reserves of the link at once (26 ms at 10 MB/s).
pub const SLICE: u64 = 256 << 10;

/// Paces transfers to a schedule; shared by every thread of one link.
pub struct Limiter {
    schedule: Schedule,
    pace: Arc<dyn Pace>,
    /// When the last reservation ends, on the pace's clock.
    next: Mutex<Duration>,
    waited_ns: AtomicU64,
    bytes: AtomicU64,
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter").field("schedule", &self.schedule.to_string()).finish()
    }
}

impl Limiter {
    /// A limiter on the real clocks.
    pub fn new(schedule: Schedule) -> Limiter {
        Limiter::with_pace(schedule, Arc::new(RealPace::default()))
    }

    /// A limiter on the given clocks.
    pub fn with_pace(schedule: Schedule, pace: Arc<dyn Pace>) -> Limiter {
        Limiter {
            schedule,
            pace,
            next: Mutex::new(Duration::ZERO),
            waited_ns: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    /// The schedule it paces to.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The rate now (`None`: unlimited).
    pub fn rate_now(&self) -> Option<Rate> {
        self.schedule.rate_at(self.pace.week_time())
    }

    /// Accounts for `n` bytes, waiting first as long as the rate requires;
    /// returns how long it waited. A transfer larger than [`SLICE`] is paid
    /// for a slice at a time, so that the other transfers sharing the link
    /// take their turns between its slices instead of waiting behind all of
    /// it: a disk's small cycle beside another's 4 MiB pack pieces waited
    /// about 0.4 s a piece for each of its objects (`benches/plan-validate.sh`).
    pub fn take(&self, n: u64) -> Duration {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        let mut waited = Duration::ZERO;
        let mut left = n;
        loop {
            let slice = left.min(SLICE);
            waited += self.take_slice(slice);
            left -= slice;
            if left == 0 {
                return waited;
            }
        }
    }

    fn take_slice(&self, n: u64) -> Duration {
        let Some(rate) = self.rate_now() else { return Duration::ZERO };
        let now = self.pace.now();
        let cost = Duration::from_secs_f64(n as f64 / rate.get() as f64);
        let end = {
            let mut next = self.next.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            *next = (*next).max(now.saturating_sub(BURST)) + cost;
            *next
        };
        // Paid before sent: the transfer goes once its reservation has
        // ended, so what has gone by any time is at most the rate times the
        // time, plus the burst, never plus a whole unpaid transfer.
        if end > now {
            let wait = end - now;
            self.waited_ns.fetch_add(u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
            self.pace.sleep(wait);
            wait
        } else {
            Duration::ZERO
        }
    }

    /// Time spent waiting for the limit so far.
    pub fn waited(&self) -> Duration {
        Duration::from_nanos(self.waited_ns.load(Ordering::Relaxed))
    }

    /// Bytes accounted for so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Time some transfers waited for a limit, shared by the backends that add
/// to it and the caller that reports it (a cycle: "late because of the
/// bandwidth limit").
#[derive(Debug, Clone, Default)]
pub struct WaitCounter(Arc<AtomicU64>);

impl WaitCounter {
    /// The time counted so far.
    pub fn get(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }

    fn add(&self, d: Duration) {
        self.0.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// A link's limiter and the wait counter of one user of it: what a command
/// given `--bandwidth` hands to whatever opens its vaults.
#[derive(Debug, Clone)]
pub struct Throttle {
    /// The link's limiter (shared by every disk of an agent).
    pub limiter: Arc<Limiter>,
    /// This user's time waited.
    pub waited: WaitCounter,
}

impl Throttle {
    /// A new link limited by `schedule`, on the real clocks.
    pub fn new(schedule: Schedule) -> Throttle {
        Throttle { limiter: Arc::new(Limiter::new(schedule)), waited: WaitCounter::default() }
    }

    /// Another user of the same link, with its own wait counter.
    pub fn share(&self) -> Throttle {
        Throttle { limiter: self.limiter.clone(), waited: WaitCounter::default() }
    }

    /// `backend`, paced by the limiter, its waits counted here.
    pub fn wrap(&self, backend: Box<dyn Backend>) -> Box<dyn Backend> {
        Box::new(Throttled::counted(backend, self.limiter.clone(), self.waited.clone()))
    }
}

/// A backend whose every transfer passes through a [`Limiter`].
pub struct Throttled {
    inner: Box<dyn Backend>,
    limiter: Arc<Limiter>,
    /// Time this backend's transfers waited for the limit (the limiter's
    /// own total counts every backend sharing the link).
    waited: WaitCounter,
}

impl Throttled {
    /// `inner`, paced by `limiter`.
    pub fn new(inner: Box<dyn Backend>, limiter: Arc<Limiter>) -> Throttled {
        Throttled::counted(inner, limiter, WaitCounter::default())
    }

    /// `inner`, paced by `limiter`, its waits added to `waited`.
    pub fn counted(inner: Box<dyn Backend>, limiter: Arc<Limiter>, waited: WaitCounter) -> Throttled {
        Throttled { inner, limiter, waited }
    }

    /// The limiter this backend shares.
    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }

    /// Time this backend's own transfers have waited for the limit.
    pub fn waited(&self) -> Duration {
        self.waited.get()
    }

    fn take(&self, n: u64) {
        self.waited.add(self.limiter.take(n));
    }
}

/// An [`Opener`](crate::Opener) whose vaults are all paced by one
/// [`Throttle`] (a command given `--bandwidth`).
pub struct ThrottledOpener {
    /// The opener wrapped.
    pub inner: Arc<dyn crate::Opener>,
    /// The link.
    pub throttle: Throttle,
}

impl crate::Opener for ThrottledOpener {
    fn open(&self, at: &crate::Location) -> Result<Box<dyn Backend>, VaultError> {
        Ok(self.throttle.wrap(self.inner.open(at)?))
    }
    fn create(&self, at: &crate::Location) -> Result<Box<dyn Backend>, VaultError> {
        Ok(self.throttle.wrap(self.inner.create(at)?))
    }
}

fn len(data: &[u8]) -> u64 {
    u64::try_from(data.len()).unwrap_or(u64::MAX)
}

impl Backend for Throttled {
    fn put(&self, kind: Kind, name: &str, data: &[u8]) -> Result<(), VaultError> {
        self.take(len(data));
        self.inner.put(kind, name, data)
    }
    fn create(&self, kind: Kind, name: &str, data: &[u8]) -> Result<Version, VaultError> {
        self.take(len(data));
        self.inner.create(kind, name, data)
    }
    fn get_versioned(&self, kind: Kind, name: &str) -> Result<(Vec<u8>, Version), VaultError> {
        let got = self.inner.get_versioned(kind, name)?;
        self.take(len(&got.0));
        Ok(got)
    }
    fn replace_if(&self, kind: Kind, name: &str, data: &[u8], version: &Version) -> Result<Version, VaultError> {
        self.take(len(data));
        self.inner.replace_if(kind, name, data, version)
    }
    fn get(&self, kind: Kind, name: &str) -> Result<Vec<u8>, VaultError> {
        let got = self.inner.get(kind, name)?;
        self.take(len(&got));
        Ok(got)
    }
    fn get_range(&self, kind: Kind, name: &str, offset: u64, length: u64) -> Result<Vec<u8>, VaultError> {
        let got = self.inner.get_range(kind, name, offset, length)?;
        self.take(len(&got));
        Ok(got)
    }
    fn size(&self, kind: Kind, name: &str) -> Result<Option<u64>, VaultError> {
        self.inner.size(kind, name)
    }
    fn get_tail(&self, kind: Kind, name: &str, max_len: u64) -> Result<Option<(Vec<u8>, u64)>, VaultError> {
        let got = self.inner.get_tail(kind, name, max_len)?;
        if let Some((bytes, _)) = &got {
            self.take(len(bytes));
        }
        Ok(got)
    }
    fn list(&self, kind: Kind, prefix: &str) -> Result<Vec<String>, VaultError> {
        self.inner.list(kind, prefix)
    }
    fn delete(&self, kind: Kind, name: &str) -> Result<(), VaultError> {
        self.inner.delete(kind, name)
    }
    fn remove(&self, kind: Kind, name: &str) -> Result<(), VaultError> {
        self.inner.remove(kind, name)
    }
    fn remote(&self) -> bool {
        self.inner.remote()
    }
    fn discard(&self, kind: Kind, name: &str) -> Result<(), VaultError> {
        self.inner.discard(kind, name)
    }
    fn empty_trash(&self) -> Result<(u64, u64), VaultError> {
        self.inner.empty_trash()
    }
    fn missing(&self, kind: Kind, names: &[String]) -> Result<Vec<String>, VaultError> {
        self.inner.missing(kind, names)
    }
    fn location(&self) -> String {
        self.inner.location()
    }
    fn protection(&self) -> Result<crate::backend::Protection, VaultError> {
        self.inner.protection()
    }
    fn extend_locks(&self, objects: &[(Kind, String)], min_days: u32, days: u32) -> Result<u64, VaultError> {
        self.inner.extend_locks(objects, min_days, days)
    }
    fn tail_requests(&self) -> u64 {
        self.inner.tail_requests()
    }
    fn list_page(&self) -> u64 {
        self.inner.list_page()
    }
    fn missing_batch(&self) -> u64 {
        self.inner.missing_batch()
    }
    fn reads_in_flight(&self) -> usize {
        self.inner.reads_in_flight()
    }
    fn writes_in_flight(&self) -> usize {
        self.inner.writes_in_flight()
    }
    fn writer(&self, kind: Kind) -> Result<Option<Box<dyn ObjectWriter + '_>>, VaultError> {
        Ok(self
            .inner
            .writer(kind)?
            .map(|inner| Box::new(ThrottledWriter { inner, throttled: self }) as Box<dyn ObjectWriter + '_>))
    }
    fn sweep_unfinished(&self, older_than: Duration, dry_run: bool) -> Result<Vec<(String, u64)>, VaultError> {
        self.inner.sweep_unfinished(older_than, dry_run)
    }
}

struct ThrottledWriter<'a> {
    inner: Box<dyn ObjectWriter + 'a>,
    throttled: &'a Throttled,
}

impl ObjectWriter for ThrottledWriter<'_> {
    fn write(&mut self, data: &[u8]) -> Result<(), VaultError> {
        self.throttled.take(len(data));
        self.inner.write(data)
    }
    fn commit(self: Box<Self>, name: &str) -> Result<(), VaultError> {
        self.inner.commit(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A virtual clock: `sleep` advances it; the week time is fixed until
    /// set.
    struct Virtual {
        now: Mutex<Duration>,
        week: Mutex<WeekTime>,
    }

    impl Virtual {
        fn at(weekday: u8, minute: u16) -> Arc<Virtual> {
            Arc::new(Virtual { now: Mutex::new(Duration::ZERO), week: Mutex::new(WeekTime { weekday, minute }) })
        }
        fn advance(&self, d: Duration) {
            *self.now.lock().unwrap() += d;
        }
    }

    impl Pace for Virtual {
        fn now(&self) -> Duration {
            *self.now.lock().unwrap()
        }
        fn week_time(&self) -> WeekTime {
            *self.week.lock().unwrap()
        }
        fn sleep(&self, d: Duration) {
            self.advance(d);
        }
    }

    fn rate(s: &str) -> u64 {
        s.parse::<Rate>().unwrap().get()
    }

    #[test]
    fn rates_in_bits_and_bytes() {
        assert_eq!(rate("100Mbit"), 12_500_000);
        assert_eq!(rate("1Gbit"), 125_000_000);
        assert_eq!(rate("500kbit"), 62_500);
        assert_eq!(rate("50MB/s"), 50_000_000);
        assert_eq!(rate("20MiB/s"), 20 << 20);
        assert_eq!(rate("1.5Gbit"), 187_500_000);
        assert_eq!(rate("100Mbps"), 12_500_000);
        assert_eq!("100Mbit".parse::<Rate>().unwrap().to_string(), "100Mbit");
        assert_eq!("20MiB/s".parse::<Rate>().unwrap().to_string(), "20MiB/s");
        for bad in ["", "100", "fast", "100Mbits", "-5Mbit", "0Mbit", "0.1bit"] {
            let e = bad.parse::<Rate>().unwrap_err();
            assert!(e.contains("100Mbit"), "{bad:?}: {e}");
        }
    }

    fn sched(s: &str) -> Schedule {
        s.parse().unwrap()
    }

    fn at(s: &Schedule, weekday: u8, h: u16, m: u16) -> Option<u64> {
        s.rate_at(WeekTime { weekday, minute: h * 60 + m }).map(Rate::get)
    }

    #[test]
    fn a_weekly_schedule_picks_the_first_matching_rule() {
        let s = sched("mon-fri 08:00-18:00=100Mbit,*=1Gbit");
        assert_eq!(at(&s, 0, 8, 0), Some(12_500_000), "Monday 08:00 is business hours");
        assert_eq!(at(&s, 4, 17, 59), Some(12_500_000), "Friday 17:59");
        assert_eq!(at(&s, 4, 18, 0), Some(125_000_000), "the window ends at 18:00");
        assert_eq!(at(&s, 2, 7, 59), Some(125_000_000));
        assert_eq!(at(&s, 5, 12, 0), Some(125_000_000), "Saturday is not mon-fri");
        assert_eq!(s.to_string(), "mon-fri 08:00-18:00=100Mbit,*=1Gbit");
    }

    #[test]
    fn windows_past_midnight_and_wrapping_days() {
        let s = sched("fri 22:00-02:00=10MB/s,sat-sun=unlimited,*=1MB/s");
        assert_eq!(at(&s, 4, 23, 0), Some(10_000_000), "Friday night");
        assert_eq!(at(&s, 5, 1, 59), Some(10_000_000), "Saturday 01:59 is still Friday's window");
        assert_eq!(at(&s, 5, 2, 0), None, "then the weekend is unlimited");
        assert_eq!(at(&s, 0, 1, 0), Some(1_000_000), "Monday 01:00 is not Sunday's window");
        let wrap = sched("sat-mon=1MB/s");
        assert_eq!(at(&wrap, 6, 0, 0), Some(1_000_000));
        assert_eq!(at(&wrap, 0, 0, 0), Some(1_000_000));
        assert_eq!(at(&wrap, 1, 0, 0), None, "no rule for Tuesday: unlimited");
        let end_of_day = sched("00:00-24:00=1MB/s");
        assert_eq!(at(&end_of_day, 3, 23, 59), Some(1_000_000));
    }

    #[test]
    fn bad_schedules_say_what_is_wrong() {
        for (bad, says) in [
            ("mon-fri 08:00-18:00", "is not a rate"),
            ("mon-fry 08:00-18:00=1MB/s", "\"fry\""),
            ("mon 8-18=1MB/s", "HH:MM"),
            ("mon 08:00-08:00=1MB/s", "empty"),
            ("mon 25:00-26:00=1MB/s", "HH:MM"),
            ("mon=1MB/s,tue", "WHEN=RATE"),
            ("*=1 parsec", "unit"),
        ] {
            let e = bad.parse::<Schedule>().unwrap_err();
            assert!(e.contains(says), "{bad:?} gave {e:?}, wanted {says:?}");
        }
    }

    #[test]
    fn a_sender_that_keeps_up_sends_at_the_rate() {
        let pace = Virtual::at(0, 0);
        let l = Limiter::with_pace(sched("100Mbit"), pace.clone());
        let mut sent = 0u64;
        while pace.now() < Duration::from_secs(30) {
            l.take(64 << 10);
            sent += 64 << 10;
        }
        let measured = sent as f64 / pace.now().as_secs_f64();
        let ratio = measured / 12_500_000.0;
        assert!((0.99..=1.01).contains(&ratio), "measured {measured} B/s, ratio {ratio}");
        assert!(l.waited() > Duration::from_secs(29));
    }

    #[test]
    fn an_idle_link_banks_no_more_than_a_burst() {
        let pace = Virtual::at(0, 0);
        let l = Limiter::with_pace(sched("1MB/s"), pace.clone());
        pace.advance(Duration::from_secs(3600));
        let before = pace.now();
        l.take(1_000_000); // 1 s of transfer
        l.take(1_000_000);
        let took = pace.now() - before;
        assert!(took >= Duration::from_millis(1900), "two seconds of data after an hour idle took {took:?}");
    }

    #[test]
    fn the_rate_follows_the_schedule() {
        let pace = Virtual::at(4, 17 * 60 + 59);
        let l = Limiter::with_pace(sched("mon-fri 08:00-18:00=1MB/s,*=unlimited"), pace.clone());
        l.take(1_000_000);
        l.take(1_000_000);
        assert!(pace.now() >= Duration::from_millis(900), "limited in the window");
        *pace.week.lock().unwrap() = WeekTime { weekday: 4, minute: 18 * 60 };
        let before = pace.now();
        l.take(100_000_000);
        assert_eq!(pace.now(), before, "unlimited after 18:00");
    }

    /// A virtual clock that, the first time the limiter makes a transfer
    /// wait, starts another small one on the same link (another disk's
    /// cycle) and notes how long that one waited.
    struct Interrupting {
        clock: Arc<Virtual>,
        limiter: std::sync::OnceLock<std::sync::Weak<Limiter>>,
        small: Mutex<Option<Duration>>,
        inside: std::sync::atomic::AtomicBool,
    }

    impl Pace for Interrupting {
        fn now(&self) -> Duration {
            self.clock.now()
        }
        fn week_time(&self) -> WeekTime {
            self.clock.week_time()
        }
        fn sleep(&self, d: Duration) {
            if !self.inside.swap(true, Ordering::SeqCst) {
                let l = self.limiter.get().unwrap().upgrade().unwrap();
                let start = self.clock.now();
                l.take(10_000);
                *self.small.lock().unwrap() = Some(self.clock.now() - start);
            }
            self.clock.advance(d);
        }
    }

    #[test]
    fn a_small_transfer_waits_for_a_slice_of_a_large_one_not_all_of_it() {
        let pace = Arc::new(Interrupting {
            clock: Virtual::at(0, 0),
            limiter: std::sync::OnceLock::new(),
            small: Mutex::new(None),
            inside: std::sync::atomic::AtomicBool::new(false),
        });
        let l = Arc::new(Limiter::with_pace(sched("10MB/s"), pace.clone()));
        pace.limiter.set(Arc::downgrade(&l)).unwrap();
        // A 4 MiB pack piece (0.42 s of this link) after an idle hour.
        pace.clock.advance(Duration::from_secs(3600));
        l.take(4 << 20);
        // The small one went after the big one's first slice (26 ms), not
        // after all of it.
        let small = pace.small.lock().unwrap().unwrap();
        assert!(small < Duration::from_millis(30), "the small transfer waited {small:?}");
        assert_eq!(l.bytes(), (4 << 20) + 10_000);
    }

    #[test]
    fn threads_share_one_link() {
        let pace = Virtual::at(0, 0);
        let l = Arc::new(Limiter::with_pace(sched("10MB/s"), pace.clone()));
        std::thread::scope(|s| {
            for _ in 0..4 {
                let l = l.clone();
                s.spawn(move || {
                    for _ in 0..250 {
                        l.take(100_000);
                    }
                });
            }
        });
        // 100 MB at 10 MB/s: the virtual clock has advanced 10 s less one
        // burst, whichever thread slept when.
        let secs = pace.now().as_secs_f64();
        assert!(secs >= 9.8, "4 threads sent 100 MB in {secs} s of a 10 MB/s link");
        assert_eq!(l.bytes(), 100_000_000);
    }

    #[test]
    fn a_throttled_backend_paces_puts_streams_and_reads() {
        let dir = tempfile::tempdir().unwrap();
        let inner = crate::LocalBackend::create(&dir.path().join("v")).unwrap();
        let pace = Virtual::at(0, 0);
        let l = Arc::new(Limiter::with_pace(sched("1MB/s"), pace.clone()));
        let b = Throttled::new(Box::new(inner), l.clone());
        let data = vec![7u8; 500_000];
        b.put(Kind::Audit, "a", &data).unwrap();
        b.create(Kind::Lease, "l", &data).unwrap();
        assert_eq!(b.get(Kind::Audit, "a").unwrap(), data);
        assert_eq!(b.get_range(Kind::Audit, "a", 0, 250_000).unwrap().len(), 250_000);
        let mut w = b.writer(Kind::Pack).unwrap().expect("the local backend streams packs");
        w.write(&data).unwrap();
        w.commit(&"ab".repeat(32)).unwrap();
        assert_eq!(l.bytes(), 2_250_000);
        assert!(b.waited() >= Duration::from_millis(2_100), "the backend's own wait: {:?}", b.waited());
        assert!(pace.now() >= Duration::from_millis(2_100), "2.25 MB at 1 MB/s took {:?}", pace.now());
    }
}
