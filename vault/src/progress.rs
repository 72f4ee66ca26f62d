//! Progress of long work, reported to whoever runs it (issue 13, part 4).
//!
//! A restore, a vault check, a replication cycle (`shipper`, which
//! re-exports this trait) and a failback (`recovery`) report through one
//! trait that the binary implements once: a bar on a terminal, a log line
//! every few seconds otherwise. The libraries never draw or print progress
//! themselves. Calls come on the thread that runs the work; an
//! implementation must be cheap (it is called per block or per batch) and
//! must not fail.

/// Where long work reports how far it has got.
pub trait Progress {
    /// A phase of `total` units starts (bytes for a restore or a cycle,
    /// objects for a check); `what` names it ("restoring", "full sync",
    /// "checking packs"). Units done so far start again at 0.
    fn start(&mut self, what: &str, total: u64);
    /// `units` more are done in the current phase.
    fn advance(&mut self, units: u64);
}

/// No progress report.
impl Progress for () {
    fn start(&mut self, _: &str, _: u64) {}
    fn advance(&mut self, _: u64) {}
}

/// Forwards to the progress behind the reference.
impl<P: Progress + ?Sized> Progress for &mut P {
    fn start(&mut self, what: &str, total: u64) {
        (**self).start(what, total);
    }
    fn advance(&mut self, units: u64) {
        (**self).advance(units);
    }
}

/// Progress as a closure called with (phase, units done, phase total) at
/// every report: for callers that watch rather than draw (tests, a caller
/// that records the last count).
pub struct Callback<F: FnMut(&str, u64, u64)> {
    f: F,
    what: String,
    done: u64,
    total: u64,
}

impl<F: FnMut(&str, u64, u64)> Callback<F> {
    /// Calls `f` at every `start` and `advance`.
    pub fn new(f: F) -> Self {
        Callback { f, what: String::new(), done: 0, total: 0 }
    }
}

impl<F: FnMut(&str, u64, u64)> Progress for Callback<F> {
    fn start(&mut self, what: &str, total: u64) {
        what.clone_into(&mut self.what);
        (self.done, self.total) = (0, total);
        (self.f)(what, 0, total);
    }
    fn advance(&mut self, units: u64) {
        self.done += units;
        (self.f)(&self.what, self.done, self.total);
    }
}

#[cfg(test)]
mod tests {
    use super::{Callback, Progress};

    #[test]
    fn callback_sees_running_totals_per_phase() {
        let mut seen = Vec::new();
        let mut p = Callback::new(|what: &str, done, total| seen.push((what.to_string(), done, total)));
        p.start("a", 10);
        p.advance(4);
        p.advance(6);
        p.start("b", 2);
        p.advance(1);
        let want = [("a", 0, 10), ("a", 4, 10), ("a", 10, 10), ("b", 0, 2), ("b", 1, 2)];
        assert_eq!(seen, want.map(|(w, d, t)| (w.to_string(), d, t)));
    }
}
