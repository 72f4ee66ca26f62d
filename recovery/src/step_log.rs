//! The step log: how a failover job and a plan run record what they do.
//!
//! Both keep a list of steps in a file rewritten atomically after every
//! change, show each step to the live view as it starts and ends, and
//! append audit records. [`StepLog`] is that sequence, once: `begin`
//! (push, save, show), `end` (finish the step, save, show) and `record`
//! (an audit record; one that cannot be written stops the job). The
//! failover's [`Step`] and the plan's [`crate::plan::StepRecord`] are its
//! two kinds of entry.
//!
//! The names and states of steps are enums here; on disk and in JSON they
//! keep the words they always had ("running", "done", "restore disk d1").

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::RecoveryError;

/// Where a failover step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    /// Started and not ended (or Lifeboat died while it ran).
    Running,
    /// Ended well.
    Done,
    /// Ended with the job's error.
    Failed,
}

impl StepState {
    /// The word in JSON and in the live view.
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Running => "running",
            StepState::Done => "done",
            StepState::Failed => "failed",
        }
    }
}

impl fmt::Display for StepState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a failover step does. Kept in `job.json` and printed as the words
/// in each variant's documentation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum StepName {
    /// "stop source VM" (a planned failover's source side).
    StopSource,
    /// "final cycle of disk DISK" (a planned failover's source side).
    FinalCycle(String),
    /// "choose point".
    ChoosePoint,
    /// "serve disk DISK from the vault" (instant recovery).
    ServeDisk(String),
    /// "restore disk DISK".
    RestoreDisk(String),
    /// "boot".
    Boot,
    /// "health check".
    HealthCheck,
}

impl fmt::Display for StepName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepName::StopSource => f.write_str("stop source VM"),
            StepName::FinalCycle(d) => write!(f, "final cycle of disk {d}"),
            StepName::ChoosePoint => f.write_str("choose point"),
            StepName::ServeDisk(d) => write!(f, "serve disk {d} from the vault"),
            StepName::RestoreDisk(d) => write!(f, "restore disk {d}"),
            StepName::Boot => f.write_str("boot"),
            StepName::HealthCheck => f.write_str("health check"),
        }
    }
}

impl FromStr for StepName {
    type Err = String;

    fn from_str(s: &str) -> Result<StepName, String> {
        let disk = |d: &str| (!d.is_empty() && !d.contains(' ')).then(|| d.to_string());
        let named = match s {
            "stop source VM" => Some(StepName::StopSource),
            "choose point" => Some(StepName::ChoosePoint),
            "boot" => Some(StepName::Boot),
            "health check" => Some(StepName::HealthCheck),
            _ => None,
        };
        named
            .or_else(|| s.strip_prefix("final cycle of disk ").and_then(disk).map(StepName::FinalCycle))
            .or_else(|| {
                s.strip_prefix("serve disk ")
                    .and_then(|r| r.strip_suffix(" from the vault"))
                    .and_then(disk)
                    .map(StepName::ServeDisk)
            })
            .or_else(|| s.strip_prefix("restore disk ").and_then(disk).map(StepName::RestoreDisk))
            .ok_or_else(|| format!("{s:?} is not a failover step this Lifeboat knows"))
    }
}

impl From<StepName> for String {
    fn from(n: StepName) -> String {
        n.to_string()
    }
}

impl TryFrom<String> for StepName {
    type Error = String;

    fn try_from(s: String) -> Result<StepName, String> {
        s.parse()
    }
}

/// One step of a failover job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// What it does.
    pub name: StepName,
    /// Where it is.
    pub state: StepState,
    /// When it started, ns since the epoch.
    pub started_ns: u64,
    /// When it ended.
    pub ended_ns: Option<u64>,
    /// What it found or did.
    pub detail: String,
}

impl Step {
    /// A step starting now.
    pub fn start(name: StepName) -> Step {
        Step { name, state: StepState::Running, started_ns: now_ns(), ended_ns: None, detail: String::new() }
    }

    /// A step that ran from `started_ns` until now and did `detail` (a
    /// step the caller ran before the job, e.g. a planned failover's).
    pub fn done_since(name: StepName, started_ns: u64, detail: String) -> Step {
        Step { name, state: StepState::Done, started_ns, ended_ns: Some(now_ns()), detail }
    }
}

/// An entry of a step log: started, then ended in some state.
pub trait Entry {
    /// Its states.
    type State: Copy;

    /// Ends it at `now_ns` in `state` with `detail`.
    fn finish(&mut self, state: Self::State, detail: String, now_ns: u64);

    /// Whether it has started and not ended.
    fn running(&self) -> bool;
}

impl Entry for Step {
    type State = StepState;

    fn finish(&mut self, state: StepState, detail: String, now_ns: u64) {
        self.state = state;
        self.ended_ns = Some(now_ns);
        self.detail = detail;
    }

    fn running(&self) -> bool {
        self.state == StepState::Running
    }
}

/// Something kept as a list of steps (a job, a run).
pub trait Steps {
    /// Its kind of step.
    type Entry: Entry;

    /// The steps so far.
    fn steps(&mut self) -> &mut Vec<Self::Entry>;
}

/// Saves a document (atomically, see `system::file::replace`).
pub type Save<'a, D> = &'a dyn Fn(&D) -> Result<(), RecoveryError>;

/// A document's steps being written: every change is saved, then shown.
pub struct StepLog<'a, D: Steps> {
    /// The job or run.
    pub doc: &'a mut D,
    save: Save<'a, D>,
    show: &'a mut dyn FnMut(&D::Entry),
    audit: &'a mut dyn FnMut(&str, Value) -> Result<(), String>,
}

impl<'a, D: Steps> StepLog<'a, D> {
    /// The log of `doc`, saved with `save`, each step shown with `show` and
    /// audit records written with `audit`.
    pub fn new(
        doc: &'a mut D,
        save: Save<'a, D>,
        show: &'a mut dyn FnMut(&D::Entry),
        audit: &'a mut dyn FnMut(&str, Value) -> Result<(), String>,
    ) -> StepLog<'a, D> {
        StepLog { doc, save, show, audit }
    }

    /// Saves the document as it is.
    pub fn save(&self) -> Result<(), RecoveryError> {
        (self.save)(self.doc)
    }

    /// Starts a step: appended, saved, shown.
    pub fn begin(&mut self, entry: D::Entry) -> Result<(), RecoveryError> {
        self.doc.steps().push(entry);
        self.save()?;
        self.show_at(None);
        Ok(())
    }

    /// Ends the last step: finished, saved, shown.
    pub fn end(&mut self, state: <D::Entry as Entry>::State, detail: String) -> Result<(), RecoveryError> {
        let at = self.doc.steps().len().checked_sub(1).expect("a step was begun");
        self.end_at(at, state, detail)
    }

    /// Ends step `at` (by position): finished, saved, shown.
    pub fn end_at(
        &mut self,
        at: usize,
        state: <D::Entry as Entry>::State,
        detail: String,
    ) -> Result<(), RecoveryError> {
        self.doc.steps()[at].finish(state, detail, now_ns());
        self.save()?;
        self.show_at(Some(at));
        Ok(())
    }

    /// The last step, if it is still running.
    pub fn running(&mut self) -> Option<&mut D::Entry> {
        self.doc.steps().last_mut().filter(|s| s.running())
    }

    /// The last step.
    pub fn last(&mut self) -> &mut D::Entry {
        self.doc.steps().last_mut().expect("a step was begun")
    }

    /// Appends an audit record; one that cannot be written stops the job.
    pub fn record(&mut self, kind: &str, details: Value) -> Result<(), RecoveryError> {
        (self.audit)(kind, details).map_err(|why| RecoveryError::Audit { record: kind.to_string(), why })
    }

    /// Appends an audit record on a path that already fails: its own
    /// failure is not reported over the error that is.
    pub fn record_anyway(&mut self, kind: &str, details: Value) {
        let _ = (self.audit)(kind, details);
    }

    fn show_at(&mut self, at: Option<usize>) {
        let steps = self.doc.steps();
        let at = at.unwrap_or(steps.len() - 1);
        (self.show)(&steps[at]);
    }
}

/// Nanoseconds since the Unix epoch.
pub use system::clock::now_ns;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_names_keep_their_words() {
        for (name, words) in [
            (StepName::StopSource, "stop source VM"),
            (StepName::FinalCycle("d1".into()), "final cycle of disk d1"),
            (StepName::ChoosePoint, "choose point"),
            (StepName::ServeDisk("web-root".into()), "serve disk web-root from the vault"),
            (StepName::RestoreDisk("web-root".into()), "restore disk web-root"),
            (StepName::Boot, "boot"),
            (StepName::HealthCheck, "health check"),
        ] {
            assert_eq!(serde_json::to_value(&name).unwrap(), Value::from(words));
            assert_eq!(serde_json::from_value::<StepName>(Value::from(words)).unwrap(), name);
        }
        for bad in ["reboot", "restore disk ", "serve disk d1", "restore disk a b"] {
            assert!(bad.parse::<StepName>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn step_states_keep_their_words() {
        for (state, word) in [(StepState::Running, "running"), (StepState::Done, "done"), (StepState::Failed, "failed")]
        {
            assert_eq!(serde_json::to_value(state).unwrap(), Value::from(word));
            assert_eq!(state.to_string(), word);
        }
    }

    struct Doc {
        steps: Vec<Step>,
    }

    impl Steps for Doc {
        type Entry = Step;
        fn steps(&mut self) -> &mut Vec<Step> {
            &mut self.steps
        }
    }

    /// Every change is saved before it is shown, so the live view never
    /// shows a step the file does not hold.
    #[test]
    fn each_change_is_saved_then_shown() {
        let events = std::cell::RefCell::new(Vec::new());
        let save = |d: &Doc| {
            let last = d.steps.last().unwrap();
            events.borrow_mut().push(format!("save {} {}", last.name, last.state));
            Ok(())
        };
        let mut show = |s: &Step| events.borrow_mut().push(format!("show {} {}", s.name, s.state));
        let mut audit = |kind: &str, _: Value| if kind == "bad" { Err("disk full".to_string()) } else { Ok(()) };
        let mut doc = Doc { steps: Vec::new() };
        let mut log = StepLog::new(&mut doc, &save, &mut show, &mut audit);
        log.begin(Step::start(StepName::Boot)).unwrap();
        log.end(StepState::Done, "QEMU pid 1".into()).unwrap();
        assert!(log.running().is_none());
        log.record("good", Value::Null).unwrap();
        let e = log.record("bad", Value::Null).unwrap_err();
        assert!(matches!(&e, RecoveryError::Audit { record, why } if record == "bad" && why == "disk full"), "{e}");
        assert_eq!(*events.borrow(), ["save boot running", "show boot running", "save boot done", "show boot done"]);
        assert_eq!(doc.steps[0].detail, "QEMU pid 1");
        assert!(doc.steps[0].ended_ns.is_some());
    }
}
