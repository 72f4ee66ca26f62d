//! The persisted form of a failover job (`SITE/VM/job.json`), separate from
//! the runtime [`Job`], and what the job and run files share: the format
//! version and the error that refuses a file.
//!
//! `job.json` is JSON with `format_version` first and then the job's fields
//! under the names they have always had. A file without `format_version`
//! was written before the field existed and is format 1 (the fields are the
//! same). A reader looks at the version before anything else: a version it
//! does not know, a file that is not that version's JSON, or one that
//! contradicts itself (points chosen but no definition) is refused with an
//! error naming the file and what to do, and nothing is changed.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::RecoveryError;
use crate::failover::{DiskPoint, HealthResult, Job, JobState, Kind, Origin};
use crate::launch::Running;
use crate::step_log::Step;
use crate::vmdef::VmDefinition;

/// The format of a job or run file; independent of Lifeboat's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(into = "u64", try_from = "u64")]
pub enum FormatVersion {
    /// The first: also every file without a `format_version`.
    #[default]
    V1,
}

impl FormatVersion {
    /// The version this Lifeboat writes.
    pub const CURRENT: FormatVersion = FormatVersion::V1;
}

impl From<FormatVersion> for u64 {
    fn from(v: FormatVersion) -> u64 {
        match v {
            FormatVersion::V1 => 1,
        }
    }
}

impl TryFrom<u64> for FormatVersion {
    type Error = FileProblem;

    fn try_from(v: u64) -> Result<FormatVersion, FileProblem> {
        match v {
            1 => Ok(FormatVersion::V1),
            found => Err(FileProblem::UnknownVersion { found }),
        }
    }
}

/// What is wrong with a job or run file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileProblem {
    /// Not JSON, or not the fields of its version.
    #[error("is damaged ({0})")]
    Malformed(#[source] serde_json::Error),
    /// A `format_version` this Lifeboat does not know.
    #[error(
        "is format version {found}, which this Lifeboat does not read (it reads format 1): it was written by a \
         newer Lifeboat; use that one"
    )]
    UnknownVersion {
        /// The version in the file.
        found: u64,
    },
    /// Well-formed, but its fields contradict each other.
    #[error("is damaged ({0})")]
    Inconsistent(String),
}

impl fmt::Display for FormatVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", u64::from(*self))
    }
}

/// What the user can do about a refused file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Remedy {
    /// A failover job: look at the VM's directory, remove it to start over.
    RemoveJobDir(PathBuf),
    /// A plan run: remove the run's directory to forget it.
    RemoveRunDir(PathBuf),
}

impl fmt::Display for Remedy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Remedy::RemoveJobDir(dir) => {
                write!(f, "Look at the VM's files in {} and remove the directory to start over", dir.display())
            }
            Remedy::RemoveRunDir(dir) => write!(
                f,
                "Remove {} to forget the run (each VM's failover stays; `lifeboat failover cleanup VM` ends it)",
                dir.display()
            ),
        }
    }
}

/// A job or run file that cannot be read as one.
#[derive(Debug, thiserror::Error)]
#[error("{} {problem}; nothing was changed. {remedy}", path.display())]
pub struct StateFileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: FileProblem,
    /// What to do.
    pub remedy: Remedy,
}

/// Only the version, read first so a file of an unknown version is refused
/// as that, not as a damaged file of this one.
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    format_version: Option<u64>,
}

/// Reads the persisted file `F` at `path` and converts it to `T`; `None`
/// when there is no file.
pub(crate) fn load<F, T>(path: &Path, remedy: impl FnOnce() -> Remedy) -> Result<Option<T>, RecoveryError>
where
    F: DeserializeOwned,
    T: TryFrom<F, Error = FileProblem>,
{
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RecoveryError::io("reading", path, e)),
    };
    parse::<F, T>(&text)
        .map(Some)
        .map_err(|problem| StateFileError { path: path.to_path_buf(), problem, remedy: remedy() }.into())
}

fn parse<F, T>(text: &str) -> Result<T, FileProblem>
where
    F: DeserializeOwned,
    T: TryFrom<F, Error = FileProblem>,
{
    let probe: Probe = serde_json::from_str(text).map_err(FileProblem::Malformed)?;
    FormatVersion::try_from(probe.format_version.unwrap_or(1))?;
    let file: F = serde_json::from_str(text).map_err(FileProblem::Malformed)?;
    T::try_from(file)
}

/// Writes `file` at `path` atomically (durably replaced, see `system::file`).
pub(crate) fn save<F: Serialize>(path: &Path, file: &F) -> Result<(), RecoveryError> {
    let text = serde_json::to_vec_pretty(file).expect("a state file serializes");
    system::file::replace(path, &text).map_err(|e| RecoveryError::io("writing", path, e))
}

/// `job.json`, format 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobFile {
    /// Absent in files written before it existed (format 1).
    #[serde(default)]
    pub format_version: FormatVersion,
    /// The VM.
    pub vm: String,
    /// Its kind.
    pub kind: Kind,
    /// Where it is.
    pub state: JobState,
    /// When it started, ns since the epoch.
    pub started_ns: u64,
    /// The chosen point of each disk.
    pub points: Vec<DiskPoint>,
    /// The definition it boots.
    pub definition: Option<VmDefinition>,
    /// The steps so far.
    pub steps: Vec<Step>,
    /// The running VM.
    pub process: Option<Running>,
    /// The health check's result.
    pub health: Option<HealthResult>,
    /// Its detail.
    pub health_detail: Option<String>,
    /// The RTO.
    pub rto_seconds: Option<f64>,
    /// Where the vault and key came from.
    #[serde(default)]
    pub origin: Option<Origin>,
    /// Booted by instant recovery.
    #[serde(default)]
    pub instant: bool,
    /// Its disks were shipped back.
    #[serde(default)]
    pub failed_back: bool,
}

impl From<&Job> for JobFile {
    fn from(j: &Job) -> JobFile {
        JobFile {
            format_version: FormatVersion::CURRENT,
            vm: j.vm.clone(),
            kind: j.kind,
            state: j.state,
            started_ns: j.started_ns,
            points: j.points.clone(),
            definition: j.definition.clone(),
            steps: j.steps.clone(),
            process: j.process.clone(),
            health: j.health,
            health_detail: j.health_detail.clone(),
            rto_seconds: j.rto_seconds,
            origin: j.origin.clone(),
            instant: j.instant,
            failed_back: j.failed_back,
        }
    }
}

impl TryFrom<JobFile> for Job {
    type Error = FileProblem;

    fn try_from(f: JobFile) -> Result<Job, FileProblem> {
        if !f.points.is_empty() && f.definition.is_none() {
            return Err(FileProblem::Inconsistent(format!(
                "it holds the points of VM {:?} but not the definition they boot",
                f.vm
            )));
        }
        Ok(Job {
            vm: f.vm,
            kind: f.kind,
            state: f.state,
            started_ns: f.started_ns,
            points: f.points,
            definition: f.definition,
            steps: f.steps,
            process: f.process,
            health: f.health,
            health_detail: f.health_detail,
            rto_seconds: f.rto_seconds,
            origin: f.origin,
            instant: f.instant,
            failed_back: f.failed_back,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::step_log::{StepName, StepState};

    /// A job file as the code before `format_version` wrote it (pretty JSON,
    /// fields in this order): a test failover that restored one disk,
    /// booted and passed its health check.
    const OLD_JOB: &str = r#"{
  "vm": "web",
  "kind": "test",
  "state": "booted",
  "started_ns": 1000,
  "points": [
    {
      "disk": "web-root",
      "point": 3,
      "cut_time_ns": 900,
      "image": "/site/failovers/web/disks/web-root.raw"
    }
  ],
  "definition": {
    "name": "web",
    "memory_mib": 512,
    "cpus": 1,
    "disks": [
      "web-root"
    ],
    "health": {
      "serial": "login:",
      "timeout_seconds": 300
    }
  },
  "steps": [
    {
      "name": "choose point",
      "state": "done",
      "started_ns": 1000,
      "ended_ns": 1001,
      "detail": "point 3"
    },
    {
      "name": "restore disk web-root",
      "state": "done",
      "started_ns": 1001,
      "ended_ns": 1002,
      "detail": "restored"
    },
    {
      "name": "health check",
      "state": "failed",
      "started_ns": 1002,
      "ended_ns": 1003,
      "detail": "failed: no pass"
    }
  ],
  "process": null,
  "health": "failed",
  "health_detail": "failed: no pass",
  "rto_seconds": 1.5,
  "origin": null,
  "instant": false,
  "failed_back": false
}"#;

    fn old_job() -> String {
        OLD_JOB.to_string()
    }

    /// The same job with its definition (which its points need) left out.
    fn no_definition() -> String {
        let start = OLD_JOB.find("  \"definition\": {").unwrap();
        let end = OLD_JOB.find("  \"steps\"").unwrap();
        format!("{}  \"definition\": null,\n{}", &OLD_JOB[..start], &OLD_JOB[end..])
    }

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.json");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn load_job(path: &Path) -> Result<Option<Job>, RecoveryError> {
        load::<JobFile, Job>(path, || Remedy::RemoveJobDir(path.parent().unwrap().to_path_buf()))
    }

    #[test]
    fn a_job_file_without_a_version_loads_as_format_1_and_is_rewritten_the_same_plus_the_version() {
        let old = old_job();
        let (_dir, path) = write(&old);
        let job = load_job(&path).unwrap().unwrap();
        assert_eq!((job.kind, job.state, job.health), (Kind::Test, JobState::Booted, Some(HealthResult::Failed)));
        assert_eq!(job.steps[1].name, StepName::RestoreDisk("web-root".into()));
        assert_eq!(job.steps[2].state, StepState::Failed);
        save(&path, &JobFile::from(&job)).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert_eq!(new, old.replacen("{\n", "{\n  \"format_version\": 1,\n", 1), "the bytes on disk changed");
        assert_eq!(load_job(&path).unwrap().unwrap(), job);
    }

    #[test]
    fn a_job_file_of_an_unknown_version_is_refused_naming_the_file_and_what_to_do() {
        let (dir, path) = write(&old_job().replacen("{\n", "{\n  \"format_version\": 2,\n", 1));
        let e = load_job(&path).unwrap_err();
        let RecoveryError::StateFile(StateFileError { path: p, problem, remedy }) = &e else { panic!("{e:?}") };
        assert!(matches!(problem, FileProblem::UnknownVersion { found: 2 }), "{problem:?}");
        assert_eq!((p, remedy), (&path, &Remedy::RemoveJobDir(dir.path().to_path_buf())));
        let text = e.to_string();
        assert!(text.contains(&path.display().to_string()) && text.contains("format version 2"), "{text}");
        assert!(text.contains("nothing was changed") && text.contains("remove the directory"), "{text}");
        // A later version whose fields this one cannot parse is refused as
        // unknown, not as damaged.
        let (_d, path) = write("{\"format_version\": 7, \"vm\": 1}");
        let e = load_job(&path).unwrap_err();
        assert!(
            matches!(&e, RecoveryError::StateFile(s) if matches!(s.problem, FileProblem::UnknownVersion { found: 7 })),
            "{e:?}"
        );
    }

    #[test]
    fn a_malformed_job_file_is_refused_as_damaged() {
        for (text, why) in [
            ("{\"vm\": \"web\", \"kind\": \"test\"", "EOF"),
            (&old_job().replace("\"state\": \"booted\"", "\"state\": \"asleep\""), "unknown variant"),
            (&old_job().replace("\"restore disk web-root\"", "\"defragment\""), "not a failover step"),
            (&old_job().replace("\"health\": \"failed\"", "\"health\": \"so-so\""), "unknown variant"),
            (&old_job().replacen("{\n", "{\n  \"format_version\": \"one\",\n", 1), "invalid type"),
            (&no_definition(), "not the definition"),
        ] {
            let (_dir, path) = write(text);
            let e = load_job(&path).unwrap_err();
            assert!(matches!(&e, RecoveryError::StateFile(_)), "{e:?}");
            let msg = e.to_string();
            assert!(msg.contains("is damaged") && msg.contains(why) && msg.contains("job.json"), "{msg}");
        }
    }

    /// Issue 14, point 1: a job's origin is a vault location, stored as the
    /// same string its directory's path always was, or as a server's URL.
    #[test]
    fn a_job_origin_is_the_vault_path_or_url_as_written() {
        for (vault, want) in [
            ("/srv/dr vault", vault::Location::Path("/srv/dr vault".into())),
            (
                "lifeboat://[::1]:7443/main",
                vault::Location::Server { host: "::1".into(), port: 7443, vault: "main".into() },
            ),
            ("s3://dr-vaults/web", vault::Location::S3 { bucket: "dr-vaults".into(), prefix: "web".into() }),
        ] {
            let text = old_job().replacen("{\n", "{\n  \"format_version\": 1,\n", 1).replace(
                "\"origin\": null",
                &format!("\"origin\": {{\n    \"vault\": \"{vault}\",\n    \"key\": \"/k\"\n  }}"),
            );
            let (_dir, path) = write(&text);
            let job = load_job(&path).unwrap().unwrap();
            assert_eq!(job.origin.as_ref().map(|o| &o.vault), Some(&want));
            save(&path, &JobFile::from(&job)).unwrap();
            assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "the bytes on disk changed");
        }
        let (_dir, path) =
            write(&old_job().replace("\"origin\": null", "\"origin\": {\"vault\": \"az://A/b\", \"key\": \"/k\"}"));
        let msg = load_job(&path).unwrap_err().to_string();
        assert!(msg.contains("is damaged") && msg.contains("not a cloud vault URL"), "{msg}");
    }

    #[test]
    fn no_job_file_is_no_job() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_job(&dir.path().join("job.json")).unwrap().is_none());
    }
}
