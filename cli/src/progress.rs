//! The one progress reporter (issue 13, part 4): every long piece of work
//! the binary runs — a replication cycle (the initial sync too), a restore,
//! a snapshot, `vault check`, a failback's block comparison — reports
//! through a [`Reporter`] handed to the library as its `vault::Progress`
//! (`shipper::Progress` is the same trait).
//!
//! On a terminal it is an `indicatif` bar on stderr, redrawn in place (at
//! most 20 times a second; a failed draw is ignored, never a panic); log
//! lines written meanwhile clear it and draw it again ([`suspend_bars`]).
//! Otherwise (a pipe, a file, the journal) it is a log line through
//! `tracing` every 5 s and, unless [`Reporter::quiet_when_done`], one when
//! the phase reaches its total, so a daemon's log shows a long initial sync
//! moving without a line per block.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How often the log-line mode reports.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// The bar on the terminal now, if any, so that log lines can be written
/// around it. One at a time: the commands that draw run one long piece of
/// work at a time. (Not `indicatif::MultiProgress`: its `suspend` panics
/// when the terminal write fails, a single bar's ignores the error.)
static SHOWN: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Runs `write` with the progress bar cleared from the terminal, then draws
/// it again: a log line does not land in the middle of a bar.
pub fn suspend_bars<R>(write: impl FnOnce() -> R) -> R {
    let shown = SHOWN.lock().unwrap_or_else(PoisonError::into_inner).clone();
    match shown {
        Some(bar) => bar.suspend(write),
        None => write(),
    }
}

/// What the units of work are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    /// Bytes: shown in MiB with a rate and the time left.
    Bytes,
    /// Objects or blocks: shown as a count.
    Items,
}

/// A bar on a terminal, log lines otherwise (see the module docs).
pub struct Reporter {
    prefix: String,
    unit: Unit,
    /// `Some` on a terminal: the bar of the current phase, once started.
    bar: Option<Option<ProgressBar>>,
    quiet_when_done: bool,
    what: String,
    total: u64,
    done: u64,
    started: Instant,
    last: Instant,
}

impl Reporter {
    /// Progress in bytes whose lines start with `prefix`: a bar when `tty`,
    /// a log line every 5 s otherwise.
    pub fn new(prefix: &str, tty: bool) -> Reporter {
        Reporter::with_unit(prefix, tty, Unit::Bytes)
    }

    /// Progress counted in objects or blocks (`vault check`, a failback's
    /// comparison), otherwise as [`Reporter::new`].
    pub fn counting(prefix: &str, tty: bool) -> Reporter {
        Reporter::with_unit(prefix, tty, Unit::Items)
    }

    fn with_unit(prefix: &str, tty: bool, unit: Unit) -> Reporter {
        let now = Instant::now();
        Reporter {
            prefix: prefix.to_string(),
            unit,
            bar: tty.then_some(None),
            quiet_when_done: false,
            what: String::new(),
            total: 0,
            done: 0,
            started: now,
            last: now,
        }
    }

    /// No final line for work that finished before its first periodic
    /// report, and no bar left on the terminal when it is done (the agent
    /// logs each cycle's outcome anyway).
    pub fn quiet_when_done(mut self) -> Reporter {
        self.quiet_when_done = true;
        self
    }

    fn start_at(&mut self, what: &str, total: u64, now: Instant) {
        self.finish_bar();
        what.clone_into(&mut self.what);
        (self.total, self.done, self.started, self.last) = (total, 0, now, now);
        if let Some(slot) = &mut self.bar {
            let bar = ProgressBar::new(total).with_style(style(self.unit)).with_prefix(self.prefix.clone());
            bar.set_message(self.what.clone());
            *SHOWN.lock().unwrap_or_else(PoisonError::into_inner) = Some(bar.clone());
            *slot = Some(bar);
        }
    }

    fn advance_at(&mut self, units: u64, now: Instant) {
        self.done += units;
        if let Some(slot) = &self.bar {
            if let Some(bar) = slot {
                bar.inc(units);
            }
            return;
        }
        let due = now.duration_since(self.last) >= LINE_EVERY;
        if !due && (self.done < self.total || self.quiet_when_done) {
            return;
        }
        self.last = now;
        tracing::info!(target: "lifeboat::progress", "{}", self.line(now));
    }

    /// `PREFIX WHAT: 12/100 MiB (12%), 40 MiB/s, 2 s left` (bytes) or
    /// `PREFIX WHAT: 12/100 (12%)` (a count).
    fn line(&self, now: Instant) -> String {
        let percent = self.done as f64 * 100.0 / self.total.max(1) as f64;
        let (prefix, what) = (&self.prefix, &self.what);
        match self.unit {
            Unit::Items => format!("{prefix}{what}: {}/{} ({percent:.0}%)", self.done, self.total),
            Unit::Bytes => {
                let secs = now.duration_since(self.started).as_secs_f64().max(1e-3);
                let rate = self.done as f64 / secs;
                let left = if rate > 0.0 { self.total.saturating_sub(self.done) as f64 / rate } else { 0.0 };
                let mib = |b: f64| b / (1u64 << 20) as f64;
                format!(
                    "{prefix}{what}: {:.0}/{:.0} MiB ({percent:.0}%), {:.0} MiB/s, {left:.0} s left",
                    mib(self.done as f64),
                    mib(self.total as f64),
                    mib(rate),
                )
            }
        }
    }

    /// Leaves the finished bar on the terminal (or clears it when quiet).
    fn finish_bar(&mut self) {
        if let Some(bar) = self.bar.as_mut().and_then(Option::take) {
            if self.quiet_when_done {
                bar.finish_and_clear();
            } else {
                bar.finish();
            }
            let mut shown = SHOWN.lock().unwrap_or_else(PoisonError::into_inner);
            if shown.as_ref().is_some_and(ProgressBar::is_finished) {
                *shown = None;
            }
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.finish_bar();
    }
}

impl vault::Progress for Reporter {
    fn start(&mut self, what: &str, total: u64) {
        self.start_at(what, total, Instant::now());
    }
    fn advance(&mut self, units: u64) {
        self.advance_at(units, Instant::now());
    }
}

/// The bar's look; a template that does not parse falls back to
/// indicatif's plain bar rather than failing the work.
fn style(unit: Unit) -> ProgressStyle {
    let template = match unit {
        Unit::Bytes => BYTES_TEMPLATE,
        Unit::Items => ITEMS_TEMPLATE,
    };
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

const BYTES_TEMPLATE: &str =
    "{prefix}{msg}: {binary_bytes}/{binary_total_bytes} ({percent}%), {binary_bytes_per_sec}, {eta} left";
const ITEMS_TEMPLATE: &str = "{prefix}{msg}: {pos}/{len} ({percent}%)";

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::log::{subscriber, Sink};

    const MIB: u64 = 1 << 20;

    /// Runs `f` with log lines captured; the lines' messages (stamps cut).
    fn logged(f: impl FnOnce()) -> Vec<String> {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let out = Arc::clone(&buf);
        let sink = Sink::Lines(Box::new(move |line| {
            out.lock().unwrap().extend_from_slice(line);
            Ok(())
        }));
        tracing::subscriber::with_default(subscriber(sink), f);
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        text.lines().map(|l| l.split_once(' ').unwrap().1.to_string()).collect()
    }

    #[test]
    fn without_a_terminal_progress_is_a_log_line_every_5_s_and_one_at_the_end() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let lines = logged(|| {
            let mut r = Reporter::new("web1: ", false);
            r.start_at("full sync", 100 * MIB, t0);
            r.advance_at(10 * MIB, at(1)); // not due
            r.advance_at(10 * MIB, at(5)); // due
            r.advance_at(10 * MIB, at(6)); // not due
            r.advance_at(10 * MIB, at(9)); // not due (4 s after the last)
            r.advance_at(10 * MIB, at(10)); // due
            r.advance_at(50 * MIB, at(11)); // done: the final line
        });
        assert_eq!(
            lines,
            [
                "web1: full sync: 20/100 MiB (20%), 4 MiB/s, 20 s left",
                "web1: full sync: 50/100 MiB (50%), 5 MiB/s, 10 s left",
                "web1: full sync: 100/100 MiB (100%), 9 MiB/s, 0 s left",
            ]
        );
    }

    #[test]
    fn quiet_when_done_leaves_out_the_final_line_but_not_the_periodic_ones() {
        let t0 = Instant::now();
        let lines = logged(|| {
            let mut r = Reporter::counting("", false).quiet_when_done();
            r.start_at("checking packs", 4, t0);
            r.advance_at(1, t0 + Duration::from_secs(6));
            r.advance_at(3, t0 + Duration::from_secs(7));
            r.start_at("checking point roots", 2, t0 + Duration::from_secs(7));
            r.advance_at(2, t0 + Duration::from_secs(8));
        });
        assert_eq!(lines, ["checking packs: 1/4 (25%)"]);
    }

    #[test]
    fn a_phase_done_at_once_gets_its_final_line() {
        let t0 = Instant::now();
        let lines = logged(|| {
            let mut r = Reporter::counting("", false);
            r.start_at("checking packs", 2, t0);
            r.advance_at(1, t0);
            r.advance_at(1, t0);
            r.start_at("checking point roots", 0, t0);
        });
        assert_eq!(lines, ["checking packs: 2/2 (100%)"]);
    }

    #[test]
    fn bar_templates_parse() {
        for t in [BYTES_TEMPLATE, ITEMS_TEMPLATE] {
            assert!(ProgressStyle::with_template(t).is_ok(), "{t}");
        }
    }
}
