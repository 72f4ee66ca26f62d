//! Checking a home's audit logs and their copies in its vaults, all at once
//! ([`check`]): what `lifeboat audit verify` reports.
//!
//! For each key: the home's log ([`verify_home`]), or, when there is none
//! although the home's disks committed points with the key, a
//! [`ProblemKind::LogMissing`]; then each vault of the key: its copies
//! ([`verify_vault`]), the cross-links between its points and the copies
//! ([`check_links`]), and each copy of the home's own log compared with it
//! ([`cross_check`], [`ProblemKind::CopyLost`], [`not_copied`]). What the
//! home knows beyond the audit directory (how to open a vault, which disks
//! committed points) comes in through [`HomeView`]. Damage is a [`Problem`];
//! a check that could not be made is a [`CheckFailure`]; both are kept in
//! the order found, so one run reports everything.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};

use disk_format::{KeyFingerprint, Keys};
use vault::{Location, Vault};

use crate::error::AuditError;
use crate::links::{check_links, LinkReport};
use crate::log::{copied_through, log_path};
use crate::verify::{cross_check, not_copied, verify_home, verify_vault, LogReport, Problem, ProblemKind};

/// An error of the caller's (opening a vault), kept with its causes.
pub type CallerError = Box<dyn StdError + Send + Sync>;

/// What the caller knows about the home that the audit crate does not.
pub trait HomeView {
    /// Opens the vault at `at` (a directory or a vault server).
    fn open_vault(&self, at: &Location) -> Result<Vault, CallerError>;
    /// The home's disks that committed points with the key of `fingerprint`,
    /// as (disk, last committed point): a home with such disks must have
    /// the key's log.
    fn committed_disks(&self, fingerprint: KeyFingerprint) -> Vec<(String, u64)>;
}

/// One key to check, with the vaults that hold its copy.
pub struct KeyToCheck {
    /// The key.
    pub keys: Keys,
    /// Where the key came from, for messages.
    pub key_file: PathBuf,
    /// The vaults to check its copy in (vaults of other keys are passed over).
    pub vaults: Vec<Location>,
}

/// What to check.
pub struct CheckPlan<'a> {
    /// The home's audit directory (`HOME/audit`).
    pub dir: &'a Path,
    /// The keys.
    pub keys: &'a [KeyToCheck],
    /// The user named the key: finding no log of it anywhere is a failure
    /// ([`CheckFailure::NoLog`]).
    pub key_named: bool,
    /// The user named the vault: with one key, a vault of another key is a
    /// failure ([`CheckFailure::OtherKey`]) rather than passed over.
    pub vault_named: bool,
}

/// A check that could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckFailure {
    /// A log or a vault's copies could not be read, or the links not checked.
    #[error(transparent)]
    Audit(AuditError),
    /// The vault could not be opened.
    #[error("cannot check the audit copy in vault {vault}: {}", Causes(cause.as_ref()))]
    VaultUnopened {
        /// The vault.
        vault: Location,
        /// Why (the caller's error, shown with its causes).
        cause: CallerError,
    },
    /// The vault named was created with another key than the one given.
    #[error(
        "vault {vault} was created with the key {vault_fingerprint}, not with {key_fingerprint} ({}); pass that vault's \
         key with --key",
        key_file.display()
    )]
    OtherKey {
        /// The vault.
        vault: Location,
        /// Its key's fingerprint.
        vault_fingerprint: KeyFingerprint,
        /// The fingerprint of the key given.
        key_fingerprint: KeyFingerprint,
        /// The key file given.
        key_file: PathBuf,
    },
    /// The key named has no log in the home nor a copy in the vaults checked.
    #[error(
        "there is no audit log of the key in {} ({fingerprint}) in {} nor in the vaults checked; is it the right key?",
        key_file.display(),
        dir.display()
    )]
    NoLog {
        /// The key file.
        key_file: PathBuf,
        /// Its fingerprint.
        fingerprint: KeyFingerprint,
        /// The home's audit directory.
        dir: PathBuf,
    },
}

/// An error and its causes, joined by `: ` (as `anyhow` shows `{:#}`).
struct Causes<'a>(&'a (dyn StdError + 'static));

impl std::fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

/// The home's log of one key.
#[derive(Debug)]
pub enum HomeLog {
    /// The log was checked (or, missing though this home copied it, read as
    /// an empty log: its report then says it was replaced).
    Checked {
        /// What was found.
        report: LogReport,
        /// The file does not exist.
        file_missing: bool,
    },
    /// There is no log although the home's disks committed points with the
    /// key: it was deleted.
    Deleted(Problem),
    /// There is no log, and nothing says there should be one.
    Absent,
    /// The log could not be read.
    Failed(CheckFailure),
}

/// A vault copy compared with the home's log (the same log id).
#[derive(Debug)]
pub struct Comparison {
    /// Where they disagree, and copied records the vault no longer holds.
    pub problems: Vec<Problem>,
    /// How many of the home's records the vault does not hold yet.
    pub not_copied: u64,
}

/// One log's copy in a vault.
#[derive(Debug)]
pub struct VaultCopy {
    /// What was found in the copy.
    pub report: LogReport,
    /// The comparison with the home's log, when this is a copy of it.
    pub home: Option<Comparison>,
}

impl VaultCopy {
    /// The copy's problems, then those of its comparison with the home.
    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.report.problems.iter().chain(self.home.iter().flat_map(|c| &c.problems))
    }
}

/// What was found in one vault.
#[derive(Debug)]
pub enum VaultCheck {
    /// The vault could not be opened, or belongs to another key named by the
    /// user, or its copies could not be read.
    Failed(CheckFailure),
    /// The vault belongs to another key, and was passed over.
    OtherKey(KeyFingerprint),
    /// The vault's copies and links were checked.
    Checked {
        /// The links between its points and the copies.
        links: Result<LinkReport, CheckFailure>,
        /// Every log copied to it, in log id order.
        copies: Vec<VaultCopy>,
    },
}

/// One key's log and its copies.
#[derive(Debug)]
pub struct KeyCheck {
    /// The key's fingerprint.
    pub fingerprint: KeyFingerprint,
    /// The key file.
    pub key_file: PathBuf,
    /// The home's log file of the key.
    pub log_path: PathBuf,
    /// The home's log.
    pub home: HomeLog,
    /// Each vault, in the plan's order.
    pub vaults: Vec<(Location, VaultCheck)>,
}

/// What [`check`] found.
#[derive(Debug)]
pub struct CheckReport {
    /// Each key, in the plan's order.
    pub keys: Vec<KeyCheck>,
    /// A failure about the plan as a whole ([`CheckFailure::NoLog`]).
    pub overall: Option<CheckFailure>,
    /// Logs in the home's audit directory of keys not in the plan (not
    /// checked), in name order, with their key's fingerprint.
    pub skipped: Vec<(PathBuf, KeyFingerprint)>,
}

impl CheckReport {
    /// Every problem found, in the order found: per key, the home's log,
    /// then per vault the links and the copies.
    pub fn problems(&self) -> Vec<&Problem> {
        let mut out = Vec::new();
        for k in &self.keys {
            match &k.home {
                HomeLog::Checked { report, .. } => out.extend(&report.problems),
                HomeLog::Deleted(p) => out.push(p),
                HomeLog::Absent | HomeLog::Failed(_) => {}
            }
            for (_, v) in &k.vaults {
                if let VaultCheck::Checked { links, copies } = v {
                    if let Ok(l) = links {
                        out.extend(&l.problems);
                    }
                    out.extend(copies.iter().flat_map(VaultCopy::problems));
                }
            }
        }
        out
    }

    /// Every check that could not be made, in the order met.
    pub fn failures(&self) -> Vec<&CheckFailure> {
        let mut out = Vec::new();
        for k in &self.keys {
            if let HomeLog::Failed(f) = &k.home {
                out.push(f);
            }
            for (_, v) in &k.vaults {
                match v {
                    VaultCheck::Failed(f) | VaultCheck::Checked { links: Err(f), .. } => out.push(f),
                    VaultCheck::OtherKey(_) | VaultCheck::Checked { .. } => {}
                }
            }
        }
        out.extend(&self.overall);
        out
    }

    /// No problem, and every check was made.
    pub fn is_ok(&self) -> bool {
        self.problems().is_empty() && self.failures().is_empty()
    }
}

/// Checks the logs of `plan`'s keys in the home and in their vaults.
pub fn check(plan: &CheckPlan<'_>, home: &dyn HomeView) -> CheckReport {
    let mut keys = Vec::new();
    for t in plan.keys {
        let fp = t.keys.fingerprint();
        let path = log_path(plan.dir, fp);
        let home_log = match verify_home(plan.dir, &t.keys) {
            Ok(Some(report)) => HomeLog::Checked { report, file_missing: !path.exists() },
            Ok(None) => match home.committed_disks(fp).into_iter().next() {
                Some((disk, point)) => HomeLog::Deleted(Problem {
                    place: path.display().to_string(),
                    seq: None,
                    offset: None,
                    kind: ProblemKind::LogMissing { disk, point },
                }),
                None => HomeLog::Absent,
            },
            Err(e) => HomeLog::Failed(CheckFailure::Audit(e)),
        };
        let home_report = match &home_log {
            HomeLog::Checked { report, .. } => Some(report),
            _ => None,
        };
        let vaults =
            t.vaults.iter().map(|vdir| (vdir.clone(), check_vault(plan, t, vdir, &path, home_report, home))).collect();
        keys.push(KeyCheck { fingerprint: fp, key_file: t.key_file.clone(), log_path: path, home: home_log, vaults });
    }
    let mut report = CheckReport { keys, overall: None, skipped: skipped(plan) };
    let found_any = report.keys.iter().any(|k| {
        matches!(k.home, HomeLog::Checked { .. } | HomeLog::Deleted(_))
            || k.vaults.iter().any(|(_, v)| matches!(v, VaultCheck::Checked { copies, .. } if !copies.is_empty()))
    });
    if let (true, false, Some(t)) = (plan.key_named, found_any, plan.keys.first()) {
        if report.failures().is_empty() {
            report.overall = Some(CheckFailure::NoLog {
                key_file: t.key_file.clone(),
                fingerprint: t.keys.fingerprint(),
                dir: plan.dir.to_owned(),
            });
        }
    }
    report
}

fn check_vault(
    plan: &CheckPlan<'_>,
    t: &KeyToCheck,
    vdir: &Location,
    log: &Path,
    home_report: Option<&LogReport>,
    home: &dyn HomeView,
) -> VaultCheck {
    let fp = t.keys.fingerprint();
    let v = match home.open_vault(vdir) {
        Ok(v) => v,
        Err(cause) => return VaultCheck::Failed(CheckFailure::VaultUnopened { vault: vdir.to_owned(), cause }),
    };
    let vault_fingerprint = v.config().key_fingerprint;
    if vault_fingerprint != fp {
        if plan.vault_named && plan.keys.len() == 1 {
            return VaultCheck::Failed(CheckFailure::OtherKey {
                vault: vdir.to_owned(),
                vault_fingerprint,
                key_fingerprint: fp,
                key_file: t.key_file.clone(),
            });
        }
        return VaultCheck::OtherKey(vault_fingerprint);
    }
    let reports = match verify_vault(v.backend(), &t.keys) {
        Ok(r) => r,
        Err(e) => return VaultCheck::Failed(CheckFailure::Audit(e)),
    };
    // The points and the logs vouch for each other (issue 12, hole 8).
    let links = check_links(&v, &t.keys).map_err(CheckFailure::Audit);
    let copies = reports
        .into_iter()
        .map(|r| {
            let home = home_report.filter(|h| h.log_id.is_some() && h.log_id == r.log_id).map(|h| {
                let mut problems = cross_check(h, &r);
                // Records this home copied there that the vault no longer
                // holds were removed, not "not copied yet".
                let copied = copied_through(log, &v.backend().location());
                if copied > r.last_seq {
                    problems.push(Problem {
                        place: r.place.clone(),
                        seq: Some(r.last_seq + 1),
                        offset: None,
                        kind: ProblemKind::CopyLost { copied, vault_last: r.last_seq },
                    });
                }
                Comparison { problems, not_copied: not_copied(h, &r) }
            });
            VaultCopy { report: r, home }
        })
        .collect();
    VaultCheck::Checked { links, copies }
}

/// The logs in the audit directory whose key is not in the plan.
fn skipped(plan: &CheckPlan<'_>) -> Vec<(PathBuf, KeyFingerprint)> {
    let Ok(entries) = std::fs::read_dir(plan.dir) else { return vec![] };
    let mut names: Vec<String> = entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    names.sort();
    names
        .into_iter()
        .filter_map(|n| {
            let fp = n.strip_suffix(".log").and_then(KeyFingerprint::from_hex)?;
            let given = plan.keys.iter().any(|t| t.keys.fingerprint() == fp);
            (!given).then(|| (plan.dir.join(&n), fp))
        })
        .collect()
}
