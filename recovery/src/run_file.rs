//! The persisted form of a plan run (`PLANS/NAME/run.json`), separate from
//! the runtime [`PlanRun`]: `format_version` first (absent: format 1, as
//! written before it existed), then the run's fields under the names they
//! have always had. Read and refused like a job file (see
//! [`crate::job_file`]).

use serde::{Deserialize, Serialize};

use crate::failover::{Kind, Origin};
use crate::job_file::{FileProblem, FormatVersion};
use crate::plan::{Plan, PlanRun, RunState, StepRecord};

/// `run.json`, format 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunFile {
    /// Absent in files written before it existed (format 1).
    #[serde(default)]
    pub format_version: FormatVersion,
    /// The plan as it was when the run started.
    pub plan: Plan,
    /// The failover kind of every VM.
    pub kind: Kind,
    /// Where it is.
    pub state: RunState,
    /// When it started.
    pub started_ns: u64,
    /// Steps started so far.
    pub steps: Vec<StepRecord>,
    /// The plan's RTO.
    pub rto_seconds: Option<f64>,
    /// Where the vault and key came from.
    #[serde(default)]
    pub origin: Option<Origin>,
    /// Every VM is booted by instant recovery.
    #[serde(default)]
    pub instant: bool,
}

impl From<&PlanRun> for RunFile {
    fn from(r: &PlanRun) -> RunFile {
        RunFile {
            format_version: FormatVersion::CURRENT,
            plan: r.plan.clone(),
            kind: r.kind,
            state: r.state,
            started_ns: r.started_ns,
            steps: r.steps.clone(),
            rto_seconds: r.rto_seconds,
            origin: r.origin.clone(),
            instant: r.instant,
        }
    }
}

impl TryFrom<RunFile> for PlanRun {
    type Error = FileProblem;

    fn try_from(f: RunFile) -> Result<PlanRun, FileProblem> {
        let mut seen = std::collections::BTreeSet::new();
        for s in &f.steps {
            if !(1..=f.plan.steps.len()).contains(&s.number) || !seen.insert(s.number) {
                return Err(FileProblem::Inconsistent(format!(
                    "it records step {} of plan {:?}, which has {} steps, {}",
                    s.number,
                    f.plan.name,
                    f.plan.steps.len(),
                    if seen.contains(&s.number) { "twice" } else { "out of range" }
                )));
            }
        }
        Ok(PlanRun {
            plan: f.plan,
            kind: f.kind,
            state: f.state,
            started_ns: f.started_ns,
            steps: f.steps,
            rto_seconds: f.rto_seconds,
            origin: f.origin,
            instant: f.instant,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::error::RecoveryError;
    use crate::job_file::{load, save, Remedy, StateFileError};
    use crate::plan::PlanStepState;

    /// A run file as the code before `format_version` wrote it: a test run
    /// paused at its manual step after its group booted.
    const OLD_RUN: &str = r#"{
  "plan": {
    "name": "shop",
    "step": [
      {
        "group": "db",
        "vms": [
          "db"
        ],
        "optional": false,
        "timeout_seconds": 600
      },
      {
        "optional": false,
        "timeout_seconds": 600,
        "manual": "check the database"
      }
    ]
  },
  "kind": "test",
  "state": "paused",
  "started_ns": 5,
  "steps": [
    {
      "number": 1,
      "what": "group db (db)",
      "state": "done",
      "started_ns": 5,
      "ended_ns": 9,
      "detail": "1 VM(s) booted, health passed",
      "vms": [
        {
          "health": "passed",
          "instant": false,
          "point": 4,
          "rto_seconds": 3.5,
          "vm": "db"
        }
      ]
    },
    {
      "number": 2,
      "what": "manual: check the database",
      "state": "waiting",
      "started_ns": 9,
      "ended_ns": null,
      "detail": "check the database"
    }
  ],
  "rto_seconds": 4.0,
  "origin": null,
  "instant": false
}"#;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.json");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn load_run(path: &Path) -> Result<Option<PlanRun>, RecoveryError> {
        load::<RunFile, PlanRun>(path, || Remedy::RemoveRunDir(path.parent().unwrap().to_path_buf()))
    }

    #[test]
    fn a_run_file_without_a_version_loads_as_format_1_and_is_rewritten_the_same_plus_the_version() {
        let (_dir, path) = write(OLD_RUN);
        let run = load_run(&path).unwrap().unwrap();
        assert_eq!((run.state, run.steps[1].state), (RunState::Paused, PlanStepState::Waiting));
        save(&path, &RunFile::from(&run)).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert_eq!(new, OLD_RUN.replacen("{\n", "{\n  \"format_version\": 1,\n", 1), "the bytes on disk changed");
    }

    #[test]
    fn a_run_file_of_an_unknown_version_or_malformed_is_refused_naming_the_file() {
        for (text, why) in [
            (OLD_RUN.replacen("{\n", "{\n  \"format_version\": 3,\n", 1), "format version 3"),
            (OLD_RUN.replace("\"state\": \"waiting\"", "\"state\": \"sleeping\""), "unknown variant"),
            (OLD_RUN.replace("\"number\": 2", "\"number\": 5"), "step 5 of plan \"shop\", which has 2 steps"),
            (OLD_RUN.replace("\"number\": 2", "\"number\": 1"), "twice"),
            ("[]".to_string(), "is damaged"),
        ] {
            let (dir, path) = write(&text);
            let e = load_run(&path).unwrap_err();
            let RecoveryError::StateFile(StateFileError { remedy, .. }) = &e else { panic!("{e:?}") };
            assert_eq!(remedy, &Remedy::RemoveRunDir(dir.path().to_path_buf()));
            let msg = e.to_string();
            assert!(msg.contains(why) && msg.contains("run.json") && msg.contains("nothing was changed"), "{msg}");
            assert!(msg.contains(&format!("Remove {}", dir.path().display())), "{msg}");
        }
    }
}
