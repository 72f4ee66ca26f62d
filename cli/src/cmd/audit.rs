//! `lifeboat audit`: verify and list the tamper-evident audit log, and
//! [`record`], which every state-changing command calls to add a record.
//!
//! The log itself (format, locking, vault copy, checks) is the `audit`
//! crate; this file finds the keys and vaults a home uses and reports.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use audit::{AuditLog, Event, LogReport, Problem, ProblemKind};
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
    #[arg(long)]
    vault: Option<PathBuf>,
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
/// [`audit_dir`]) and copies the log to `vault` (if given). A failed append
/// is an error (the action must not pass unrecorded); a failed copy is a
/// warning on stderr, retried by the next record. Never put a secret in
/// `details`: records are not encrypted.
pub fn record(
    dir: &Path,
    keys: &Keys,
    vault: Option<&vault::Vault>,
    kind: &str,
    disk: Option<&str>,
    details: serde_json::Value,
) -> Result<()> {
    let log = AuditLog::open(dir, keys)?;
    log.append(&Event::new(kind, disk, details))
        .with_context(|| format!("recording `{kind}` in the audit log {}", log.path().display()))?;
    if let Some(v) = vault {
        let copied = if v.config().key_fingerprint != keys.fingerprint() {
            Err(anyhow::anyhow!("the vault belongs to key {}", v.config().key_fingerprint))
        } else {
            log.sync_to(v.backend()).map(|_| ()).map_err(anyhow::Error::from)
        };
        if let Err(e) = copied {
            filter::log_line!(
                "lifeboat: warning: the audit record is kept in {} but could not be copied to the vault {}: {e:#}; \
                 the next record retries",
                log.path().display(),
                v.backend().location()
            );
        }
    }
    Ok(())
}

/// One key to check, with the vaults that hold its copy.
struct Target {
    keys: Keys,
    /// Where the key came from, for messages.
    key_file: PathBuf,
    vaults: Vec<PathBuf>,
}

/// The home's disks as (name, key file, vault) for those that replicate.
fn replicated_disks(home: &Home) -> Result<Vec<(String, PathBuf, PathBuf)>> {
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

/// The home's disks that committed points with the key of fingerprint `fp`:
/// (disk, last point), from their state files' record of the last committed
/// point, in a vault of that key. A home with such disks must have the log.
fn committed_disks(home: &Home, fp: KeyFingerprint) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for (name, _, vault_dir) in replicated_disks(home).unwrap_or_default() {
        let Ok(vault) = super::vault::open(&vault_dir) else { continue };
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

/// The keys to use: `--key`, else the key of `disk`, else every key the
/// home's disks replicate with (one per fingerprint). Key files that cannot
/// be loaded are returned as errors to report.
fn targets(
    home: &Home,
    key: Option<&Path>,
    disk: Option<&str>,
    vault: Option<&Path>,
) -> Result<(Vec<Target>, Vec<String>)> {
    let disks = replicated_disks(home)?;
    let all_vaults: Vec<PathBuf> = match vault {
        Some(v) => vec![v.to_owned()],
        None => {
            let mut v: Vec<PathBuf> = disks.iter().map(|d| d.2.clone()).collect();
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
    let mut out: Vec<Target> = Vec::new();
    let mut errors = Vec::new();
    for f in key_files {
        match keyfile::load(&f) {
            Ok(keys) if out.iter().any(|t| t.keys.fingerprint() == keys.fingerprint()) => {}
            Ok(keys) => out.push(Target { keys, key_file: f, vaults: all_vaults.clone() }),
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
    let (targets, mut failures) = targets(home, a.key.as_deref(), None, a.vault.as_deref())?;
    let dir = audit_dir(home);
    let mut problems: Vec<Problem> = Vec::new();
    let (mut logs_json, mut vaults_json, mut links_json, mut skipped) = (vec![], vec![], vec![], vec![]);
    let mut lines = Vec::new();
    let mut checked: Vec<KeyFingerprint> = Vec::new();
    for t in &targets {
        let fp = t.keys.fingerprint();
        checked.push(fp);
        let path = audit::log_path(&dir, fp);
        let home_report = match audit::verify_home(&dir, &t.keys) {
            Ok(Some(r)) => {
                let state = if !path.exists() {
                    "missing".to_string()
                } else if r.is_ok() {
                    format!("{}, intact", range(&r))
                } else {
                    format!("{}, {} problem(s)", range(&r), r.problems.len())
                };
                lines.push(format!("audit log {} (key {fp}): {state}", path.display()));
                logs_json.push(json!({
                    "path": path, "fingerprint": fp.to_string(), "key_file": t.key_file,
                    "log_id": r.log_id.map(|i| i.to_string()), "records": r.records, "last_seq": r.last_seq,
                    "problems": r.problems.iter().map(problem_json).collect::<Vec<_>>(),
                }));
                problems.extend(r.problems.iter().cloned());
                Some(r)
            }
            Ok(None) => match committed_disks(home, fp).into_iter().next() {
                // Disks committed points with this key: the log was deleted.
                Some((disk, point)) => {
                    let p = Problem {
                        place: path.display().to_string(),
                        seq: None,
                        offset: None,
                        kind: ProblemKind::LogMissing { disk, point },
                    };
                    lines.push(format!("audit log {} (key {fp}): missing", path.display()));
                    logs_json.push(json!({
                        "path": path, "fingerprint": fp.to_string(), "key_file": t.key_file, "log_id": null,
                        "records": 0, "last_seq": 0, "problems": [problem_json(&p)],
                    }));
                    problems.push(p);
                    None
                }
                None => {
                    lines.push(format!("no audit log for key {fp} in {} yet", dir.display()));
                    None
                }
            },
            Err(e) => {
                failures.push(format!("{e}"));
                None
            }
        };
        for vdir in &t.vaults {
            let v = match super::vault::open(vdir) {
                Ok(v) => v,
                Err(e) => {
                    failures.push(format!("cannot check the audit copy in vault {}: {e:#}", vdir.display()));
                    continue;
                }
            };
            if v.config().key_fingerprint != fp {
                if a.vault.is_some() && targets.len() == 1 {
                    failures.push(format!(
                        "vault {} was created with the key {}, not with {fp} ({}); pass that vault's key with --key",
                        vdir.display(),
                        v.config().key_fingerprint,
                        t.key_file.display()
                    ));
                }
                continue;
            }
            let reports = match audit::verify_vault(v.backend(), &t.keys) {
                Ok(r) => r,
                Err(e) => {
                    failures.push(format!("{e}"));
                    continue;
                }
            };
            if reports.is_empty() {
                lines.push(format!("  vault {}: no audit records copied yet", vdir.display()));
            }
            // The points and the logs vouch for each other (issue 12, hole 8).
            match audit::check_links(&v, &t.keys) {
                Ok(l) => {
                    lines.push(format!(
                        "  vault {}: {} point(s) checked against the audit copy ({} name its head), {} committed \
                         point(s) in the log checked against the vault: {}",
                        vdir.display(),
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
                    problems.extend(l.problems);
                }
                Err(e) => failures.push(format!("{e}")),
            }
            for r in &reports {
                let mut extra = Vec::new();
                let mut not_copied = None;
                if let Some(h) = home_report.as_ref().filter(|h| h.log_id.is_some() && h.log_id == r.log_id) {
                    extra = audit::cross_check(h, r);
                    // Records this home copied there that the vault no longer
                    // holds were removed, not "not copied yet".
                    let copied = audit::copied_through(&path, &v.backend().location());
                    if copied > r.last_seq {
                        extra.push(Problem {
                            place: r.place.clone(),
                            seq: Some(r.last_seq + 1),
                            offset: None,
                            kind: ProblemKind::CopyLost { copied, vault_last: r.last_seq },
                        });
                    }
                    let n = audit::not_copied(h, r);
                    not_copied = Some(n);
                    lines.push(format!(
                        "  vault {}: {}, {}; {}",
                        vdir.display(),
                        range(r),
                        if r.is_ok() { "intact" } else { "damaged" },
                        match (extra.is_empty(), n) {
                            (false, _) => "disagrees with the home's log".to_string(),
                            (true, 0) => "the same as the home's log".to_string(),
                            (true, n) => format!("the same as the home's log, {n} newer record(s) not copied yet"),
                        }
                    ));
                } else {
                    lines.push(format!(
                        "  vault {}: log {}: {}, {} (a log this home does not hold)",
                        vdir.display(),
                        r.log_id.map_or_else(|| "?".to_string(), |i| i.to_string()),
                        range(r),
                        if r.is_ok() { "intact" } else { "damaged" }
                    ));
                }
                vaults_json.push(json!({
                    "vault": vdir, "fingerprint": fp.to_string(), "log_id": r.log_id.map(|i| i.to_string()),
                    "records": r.records, "last_seq": r.last_seq, "not_copied": not_copied,
                    "problems": r.problems.iter().chain(&extra).map(problem_json).collect::<Vec<_>>(),
                }));
                problems.extend(r.problems.iter().cloned());
                problems.extend(extra);
            }
        }
    }
    if a.key.is_some() && logs_json.is_empty() && vaults_json.is_empty() && failures.is_empty() {
        failures.push(format!(
            "there is no audit log of the key in {} ({}) in {} nor in the vaults checked; is it the right key?",
            targets[0].key_file.display(),
            targets[0].keys.fingerprint(),
            dir.display()
        ));
    }
    // Logs in the home whose key was not given.
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut names: Vec<String> = entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
        names.sort();
        for n in names {
            let Some(fp) = n.strip_suffix(".log").and_then(KeyFingerprint::from_hex) else { continue };
            if !checked.contains(&fp) {
                skipped.push(dir.join(&n));
                filter::log_line!(
                    "lifeboat: note: not checked: {} (no key with fingerprint {fp} given; pass --key FILE)",
                    dir.join(&n).display()
                );
            }
        }
    }
    if a.json {
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
            filter::log_line!("lifeboat: error: {f}");
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
}
