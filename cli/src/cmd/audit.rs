//! `lifeboat audit`: verify and list the tamper-evident audit log, and
//! [`record`], which every state-changing command calls to add a record.
//!
//! The log itself (format, locking, vault copy, checks) is the `audit`
//! crate ([`audit::record`], [`audit::check`]); this file finds the keys and
//! vaults a home uses, and reports.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use audit::{CheckFailure, CheckPlan, HomeLog, KeyToCheck, LogReport, Problem, VaultCheck};
use disk_format::{KeyFingerprint, Keys};
use serde_json::json;

use crate::home::Home;
use crate::keyfile;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Check that the audit log is whole: no record edited, dropped,
    /// reordered or cut off, in the home and in the vault's copy.
    ///
    /// Every action that changes something (protect, each replication cycle,
    /// prune, garbage collection, restore, each use of the key) appends a
    /// record to HOME/audit/<key fingerprint>.log. Each record carries a MAC
    /// made with the audit subkey of your customer key over the record and
    /// the MAC of the record before it, so nobody without the key can change,
    /// remove or reorder records unnoticed. Each record is also copied to the
    /// vault, so a log cut short in the home is caught by the vault's copy.
    ///
    /// Without --key, checks the log of every key the home's disks replicate
    /// with, and the copy in each of those disks' vaults. With --key, that
    /// key's log; with --vault, that vault's copy (also works with no home,
    /// at the recovery site: `lifeboat audit verify --key KEY --vault DIR`).
    ///
    /// Exit status 0 when everything checks out, 1 when anything is wrong:
    /// each problem is printed with the file or vault object, the record's
    /// number and byte offset, and what happened (edited, dropped,
    /// reordered, torn tail, truncated, differs from the vault's copy).
    ///
    /// The points and the log vouch for each other: each point names the
    /// log's newest record at its cut, each record about a disk names the
    /// disk's newest point. Deleted roots (lost point), deleted audit
    /// segments (lost records; copy lost, when this home had copied them)
    /// and a home log deleted while its disks have points (missing) are
    /// problems.
    Verify(VerifyArgs),
    /// List the audit log's records, oldest first.
    ///
    /// Each line: record number, time (UTC), what happened, the disk, who
    /// (user@host) and the details. Records that fail their check are marked
    /// NOT AUTHENTIC, and the command then exits 1 (run `lifeboat audit
    /// verify` for the full story).
    Show(ShowArgs),
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The customer key file whose log to check (default: every key the
    /// home's disks replicate with).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Check this vault's copy (default: the vaults of the home's disks).
    /// VAULT: a directory, or lifeboat://HOST:PORT/VAULT for a vault server.
    #[arg(long, value_name = "VAULT", value_parser = crate::vault_open::location_parser())]
    vault: Option<vault::Location>,
    /// Print one JSON document: {"ok", "logs": [...], "vaults": [...], "links": [{"vault", "points", "heads",
    /// "commits", "problems"}], "skipped": [...]}.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ShowArgs {
    /// The customer key file whose log to list (default: the key of --disk,
    /// else every key the home's disks replicate with).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Only records about this disk.
    #[arg(long)]
    disk: Option<String>,
    /// Only the last N records (after --disk).
    #[arg(long, value_name = "N")]
    last: Option<usize>,
    /// Print a JSON array of records: [{"fingerprint", "log_id", "seq",
    /// "authentic", "time", "time_ns", "kind", "disk", "host", "uid", "user",
    /// "pid", "details"}].
    #[arg(long)]
    json: bool,
}

/// `HOME/audit`, where the logs are.
pub fn audit_dir(home: &Home) -> PathBuf {
    home.root().join("audit")
}

/// Records an action in the audit log of `keys` in `dir` (the home's
/// [`audit_dir`]) and copies the log to `vault` (if given), through
/// [`audit::record`]. A failed append is an error (the action must not pass
/// unrecorded); a failed copy is a warning on stderr, retried by the next
/// record. Never put a secret in `details`: records are not encrypted.
pub fn record(
    dir: &Path,
    keys: &Keys,
    vault: Option<&vault::Vault>,
    kind: &str,
    disk: Option<&str>,
    details: serde_json::Value,
) -> Result<()> {
    Ok(agent::audit_record(dir, keys, vault, kind, disk, details)?)
}

/// The home's disks as (name, key file, vault) for those that replicate.
fn replicated_disks(home: &Home) -> Result<Vec<(String, PathBuf, vault::Location)>> {
    let dir = home.root().join("disks");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        let Some(name) = e.file_name().to_str().map(str::to_string) else { continue };
        if crate::home::check_name(&name).is_err() || !e.path().join("disk.toml").is_file() {
            continue;
        }
        if let Some(r) = &home.disk(&name)?.config.replication {
            out.push((name, r.key.clone(), r.vault.clone()));
        }
    }
    out.sort();
    Ok(out)
}

/// What `audit::check` needs from the home: its vaults and its disks' record
/// of their last committed points.
struct HomeDisks<'h>(&'h Home);

impl audit::HomeView for HomeDisks<'_> {
    fn open_vault(&self, at: &vault::Location) -> Result<vault::Vault, audit::CallerError> {
        Ok(super::vault::open(self.0, at)?)
    }

    /// From the state files' record of the last committed point, in a vault
    /// of that key.
    fn committed_disks(&self, fp: KeyFingerprint) -> Vec<(String, u64)> {
        let home = self.0;
        let mut out = Vec::new();
        for (name, _, vault_dir) in replicated_disks(home).unwrap_or_default() {
            let Ok(vault) = super::vault::open(home, &vault_dir) else { continue };
            let Ok(entry) = home.disk(&name) else { continue };
            let Ok(header) = filter::StateFile::header_of(&entry.state_path()) else { continue };
            if let Some(p) = header.last_point {
                if vault.config().key_fingerprint == fp && p.vault_id == vault.config().vault_id {
                    out.push((name, p.sequence));
                }
            }
        }
        out
    }
}

/// The keys to use: `--key`, else the key of `disk`, else every key the
/// home's disks replicate with (one per fingerprint). Key files that cannot
/// be loaded are returned as errors to report.
fn targets(
    home: &Home,
    key: Option<&Path>,
    disk: Option<&str>,
    vault: Option<&vault::Location>,
) -> Result<(Vec<KeyToCheck>, Vec<String>)> {
    let disks = replicated_disks(home)?;
    let all_vaults: Vec<vault::Location> = match vault {
        Some(v) => vec![v.to_owned()],
        None => {
            let mut v: Vec<vault::Location> = disks.iter().map(|d| d.2.clone()).collect();
            v.sort();
            v.dedup();
            v
        }
    };
    let key_files: Vec<PathBuf> = match (key, disk) {
        (Some(k), _) => vec![k.to_owned()],
        (None, Some(d)) => vec![home.disk(d)?.replication(d)?.key.clone()],
        (None, None) => {
            let mut k: Vec<PathBuf> = disks.iter().map(|d| d.1.clone()).collect();
            k.sort();
            k.dedup();
            k
        }
    };
    if key_files.is_empty() {
        bail!(
            "no key to check the audit log with: no disk in {} replicates to a vault; pass --key FILE (and \
             --vault DIR to check a vault's copy)",
            home.root().display()
        );
    }
    let mut out: Vec<KeyToCheck> = Vec::new();
    let mut errors = Vec::new();
    for f in key_files {
        match keyfile::load(&f) {
            Ok(keys) if out.iter().any(|t| t.keys.fingerprint() == keys.fingerprint()) => {}
            Ok(keys) => out.push(KeyToCheck { keys, key_file: f, vaults: all_vaults.clone() }),
            Err(e) => errors.push(format!("cannot check the audit log of key file {}: {e:#}", f.display())),
        }
    }
    Ok((out, errors))
}

fn problem_json(p: &Problem) -> serde_json::Value {
    json!({ "place": p.place, "seq": p.seq, "offset": p.offset, "kind": p.kind.name(), "message": p.to_string() })
}

fn range(r: &LogReport) -> String {
    match r.last_seq {
        0 => "no records".to_string(),
        n => format!("records 1 to {n}"),
    }
}

pub fn run(home: &Home, c: Command) -> Result<()> {
    match c {
        Command::Verify(a) => verify(home, a),
        Command::Show(a) => show(home, a),
    }
}

fn verify(home: &Home, a: VerifyArgs) -> Result<()> {
    let (targets, mut failures) = targets(home, a.key.as_deref(), None, a.vault.as_ref())?;
    let dir = audit_dir(home);
    let plan = CheckPlan { dir: &dir, keys: &targets, key_named: a.key.is_some(), vault_named: a.vault.is_some() };
    let report = audit::check(&plan, &HomeDisks(home));
    let (mut logs_json, mut vaults_json, mut links_json) = (vec![], vec![], vec![]);
    let mut lines = Vec::new();
    for k in &report.keys {
        let (fp, path) = (k.fingerprint, &k.log_path);
        match &k.home {
            HomeLog::Checked { report: r, file_missing } => {
                let state = if *file_missing {
                    "missing".to_string()
                } else if r.is_ok() {
                    format!("{}, intact", range(r))
                } else {
                    format!("{}, {} problem(s)", range(r), r.problems.len())
                };
                lines.push(format!("audit log {} (key {fp}): {state}", path.display()));
                logs_json.push(json!({
                    "path": path, "fingerprint": fp.to_string(), "key_file": k.key_file,
                    "log_id": r.log_id.map(|i| i.to_string()), "records": r.records, "last_seq": r.last_seq,
                    "problems": r.problems.iter().map(problem_json).collect::<Vec<_>>(),
                }));
            }
            // Disks committed points with this key: the log was deleted.
            HomeLog::Deleted(p) => {
                lines.push(format!("audit log {} (key {fp}): missing", path.display()));
                logs_json.push(json!({
                    "path": path, "fingerprint": fp.to_string(), "key_file": k.key_file, "log_id": null,
                    "records": 0, "last_seq": 0, "problems": [problem_json(p)],
                }));
            }
            HomeLog::Absent => lines.push(format!("no audit log for key {fp} in {} yet", dir.display())),
            HomeLog::Failed(_) => {}
        }
        for (vdir, v) in &k.vaults {
            let VaultCheck::Checked { links, copies } = v else { continue };
            if copies.is_empty() {
                lines.push(format!("  vault {vdir}: no audit records copied yet"));
            }
            // The points and the logs vouch for each other (issue 12, hole 8).
            if let Ok(l) = links {
                lines.push(format!(
                    "  vault {}: {} point(s) checked against the audit copy ({} name its head), {} committed \
                     point(s) in the log checked against the vault: {}",
                    vdir,
                    l.points,
                    l.heads,
                    l.commits,
                    if l.problems.is_empty() { "they agree" } else { "THEY DISAGREE" }
                ));
                links_json.push(json!({
                    "vault": vdir, "fingerprint": fp.to_string(), "points": l.points,
                    "heads": l.heads, "commits": l.commits,
                    "problems": l.problems.iter().map(problem_json).collect::<Vec<_>>(),
                }));
            }
            for c in copies {
                let r = &c.report;
                match &c.home {
                    Some(cmp) => lines.push(format!(
                        "  vault {}: {}, {}; {}",
                        vdir,
                        range(r),
                        if r.is_ok() { "intact" } else { "damaged" },
                        match (cmp.problems.is_empty(), cmp.not_copied) {
                            (false, _) => "disagrees with the home's log".to_string(),
                            (true, 0) => "the same as the home's log".to_string(),
                            (true, n) => format!("the same as the home's log, {n} newer record(s) not copied yet"),
                        }
                    )),
                    None => lines.push(format!(
                        "  vault {}: log {}: {}, {} (a log this home does not hold)",
                        vdir,
                        r.log_id.map_or_else(|| "?".to_string(), |i| i.to_string()),
                        range(r),
                        if r.is_ok() { "intact" } else { "damaged" }
                    )),
                }
                vaults_json.push(json!({
                    "vault": vdir, "fingerprint": fp.to_string(), "log_id": r.log_id.map(|i| i.to_string()),
                    "records": r.records, "last_seq": r.last_seq, "not_copied": c.home.as_ref().map(|h| h.not_copied),
                    "problems": c.problems().map(problem_json).collect::<Vec<_>>(),
                }));
            }
        }
    }
    let problems = report.problems();
    failures.extend(report.failures().into_iter().map(CheckFailure::to_string));
    // Logs in the home whose key was not given.
    for (path, fp) in &report.skipped {
        tracing::info!(
            "lifeboat: note: not checked: {} (no key with fingerprint {fp} given; pass --key FILE)",
            path.display()
        );
    }
    if a.json {
        let skipped: Vec<&PathBuf> = report.skipped.iter().map(|(p, _)| p).collect();
        let doc = json!({
            "ok": problems.is_empty() && failures.is_empty(),
            "logs": logs_json, "vaults": vaults_json, "links": links_json, "skipped": skipped,
            "errors": failures,
        });
        outln!("{doc}");
    } else {
        for l in &lines {
            outln!("{l}");
        }
        for p in &problems {
            outln!("PROBLEM {p}");
        }
    }
    if !failures.is_empty() {
        for f in &failures[1..] {
            tracing::error!("lifeboat: error: {f}");
        }
        bail!("{}", failures[0]);
    }
    if let Some(first) = problems.first() {
        bail!(
            "{} problem(s) in the audit log; the first: {first}. Keep the log and the vault's copy as evidence",
            problems.len()
        );
    }
    if !a.json {
        outln!("no problems found");
    }
    Ok(())
}

fn show(home: &Home, a: ShowArgs) -> Result<()> {
    if let Some(d) = &a.disk {
        crate::home::check_name(d)?;
    }
    let (targets, failures) = targets(home, a.key.as_deref(), a.disk.as_deref(), None)?;
    if let Some(f) = failures.first() {
        bail!("{f}");
    }
    let dir = audit_dir(home);
    let mut listed: BTreeMap<String, Vec<(audit::Record, KeyFingerprint)>> = BTreeMap::new();
    let mut bad: Vec<(PathBuf, LogReport)> = Vec::new();
    for t in &targets {
        let fp = t.keys.fingerprint();
        let path = audit::log_path(&dir, fp);
        if !path.exists() {
            if !a.json {
                outln!("no audit log for key {fp} in {} yet", dir.display());
            }
            continue;
        }
        let (records, report) = audit::read_records(&path, &t.keys)?;
        let mut keep: Vec<_> = records
            .into_iter()
            .filter(|r| a.disk.is_none() || r.body.as_ref().and_then(|b| b.disk.as_ref()) == a.disk.as_ref())
            .map(|r| (r, fp))
            .collect();
        if let Some(n) = a.last {
            keep.drain(..keep.len().saturating_sub(n));
        }
        listed.insert(path.display().to_string(), keep);
        if !report.is_ok() {
            bad.push((path, report));
        }
    }
    if a.json {
        let all: Vec<_> = listed
            .values()
            .flatten()
            .map(|(r, fp)| {
                let mut v = json!({
                    "fingerprint": fp.to_string(), "log_id": r.log_id.to_string(), "seq": r.seq,
                    "offset": r.offset, "authentic": r.authentic,
                });
                if let (Some(b), Some(obj)) = (&r.body, v.as_object_mut()) {
                    for (k, val) in serde_json::to_value(b).unwrap_or_default().as_object().into_iter().flatten() {
                        if k != "seq" {
                            obj.insert(k.clone(), val.clone());
                        }
                    }
                }
                v
            })
            .collect();
        outln!("{}", serde_json::Value::Array(all));
    } else {
        let many = listed.len() > 1;
        for (path, records) in &listed {
            if many {
                outln!("audit log {path}:");
            }
            if records.is_empty() {
                outln!("  (no records{})", a.disk.as_ref().map(|d| format!(" about disk {d}")).unwrap_or_default());
            }
            for (r, _) in records {
                let flag = if r.authentic { "" } else { "  NOT AUTHENTIC" };
                match &r.body {
                    Some(b) => outln!(
                        "{:>6}  {}  {:<16}  {:<12}  {}@{}  {}{flag}",
                        r.seq,
                        b.time,
                        b.kind,
                        b.disk.as_deref().unwrap_or("-"),
                        b.user.clone().unwrap_or_else(|| format!("uid {}", b.uid)),
                        b.host,
                        b.details
                    ),
                    None => outln!("{:>6}  (unreadable body){flag}", r.seq),
                }
            }
        }
    }
    if let Some((path, r)) = bad.first() {
        bail!(
            "the audit log {} has {} problem(s); the first: {}. Run `lifeboat audit verify` for all of them",
            path.display(),
            r.problems.len(),
            r.problems[0]
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use disk_format::MasterKey;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lb-audit-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn record_appends_and_copies_to_the_vault() {
        let dir = scratch("record");
        let home = Home::new(dir.join("home"));
        let keys = MasterKey::from_bytes([3; 32]).keys();
        let v = vault::Vault::init(Box::new(vault::LocalBackend::create(&dir.join("vault")).unwrap()), &keys).unwrap();
        record(&audit_dir(&home), &keys, Some(&v), "protect", Some("web1"), json!({ "image": "/x.raw" })).unwrap();
        record(&audit_dir(&home), &keys, Some(&v), "key.use", None, json!({})).unwrap();
        assert_eq!(audit_dir(&home), dir.join("home/audit"));
        let h = audit::verify_home(&audit_dir(&home), &keys).unwrap().unwrap();
        assert!(h.is_ok() && h.last_seq == 2, "{:?}", h.problems);
        let copies = audit::verify_vault(v.backend(), &keys).unwrap();
        assert!(copies[0].is_ok() && copies[0].last_seq == 2);
        assert!(audit::cross_check(&h, &copies[0]).is_empty());

        // A vault of another key gets nothing (a warning), the record is kept.
        let other = MasterKey::from_bytes([4; 32]).keys();
        let w = vault::Vault::init(Box::new(vault::LocalBackend::create(&dir.join("v2")).unwrap()), &other).unwrap();
        record(&audit_dir(&home), &keys, Some(&w), "prune", Some("web1"), json!({})).unwrap();
        assert!(w.backend().list(vault::Kind::Audit, "").unwrap().is_empty());
        assert_eq!(audit::verify_home(&audit_dir(&home), &keys).unwrap().unwrap().last_seq, 3);
        // A bad event is an error and writes nothing.
        assert!(record(&audit_dir(&home), &keys, None, "Bad Kind", None, json!({})).is_err());
        assert_eq!(audit::verify_home(&audit_dir(&home), &keys).unwrap().unwrap().last_seq, 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A vault that cannot be opened is reported with the whole chain of
    /// causes, as `{:#}` of the command's own error shows it.
    #[test]
    fn an_unopened_vault_is_reported_with_its_causes() {
        use audit::HomeView;
        let dir = scratch("unopened");
        let home = Home::new(dir.join("home"));
        let nowhere = dir.join("nowhere");
        let at = vault::Location::Path(nowhere.clone());
        let e = super::super::vault::open(&home, &at).unwrap_err();
        assert!(e.chain().count() > 1, "{e:#}");
        let cause = HomeDisks(&home).open_vault(&at).unwrap_err();
        let f = CheckFailure::VaultUnopened { vault: at, cause };
        assert_eq!(f.to_string(), format!("cannot check the audit copy in vault {}: {e:#}", nowhere.display()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
