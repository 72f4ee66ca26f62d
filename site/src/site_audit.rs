//! The site's own audit log: what the recovery site did and refused, in
//! the same tamper-evident format as a protected host's (`audit` crate,
//! FORMAT.md "Audit log"), under a key of the site's own.
//!
//! The site never holds the customer key, so its records are MAC'd under
//! `SITE/audit.key` (32 random bytes, 0600, made by `site init`, or on first
//! use by a site made before it existed) taken as an audit key: the log is
//! `SITE/audit/FINGERPRINT.log`, hash-chained, every record MAC'd over the
//! one before. `lifeboat site audit` lists and verifies it. Anyone with the
//! site directory can read it (records are authenticated, not encrypted)
//! and only a holder of `audit.key` can add a record that verifies; a
//! record edited, dropped or reordered fails verification.
//!
//! Recorded: `site.init`, `site.enroll` (host, vaults, expiry), `site.join`
//! (the host's certificate issued: host, fingerprint), `site.revoke`,
//! `serve.start` / `serve.stop` (listen address, vaults), and the server's
//! refusals (`serve.refused`: host or peer, request, code, why), at most
//! one record per host and code every [`REFUSAL_INTERVAL`], with the count
//! of refusals folded into it, so that a hostile peer cannot fill the disk
//! through the log. Successful object requests are not recorded one by one:
//! the grants journal (`SITE/grants/`) and `site hosts` (bytes received)
//! say what each host wrote.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use disk_format::keys::{Keys, MasterKey};

use crate::site_dir::{io_at, SiteError};

/// Refusals of one host (or unauthenticated peer address) with one code
/// are recorded at most once per this interval; the others are counted.
pub const REFUSAL_INTERVAL: Duration = Duration::from_secs(60);

/// Refusals of one (who, code): when last recorded, and how many since.
type Held = (Option<Instant>, u64);

/// The site's audit log (see the module documentation).
pub struct SiteAudit {
    dir: PathBuf,
    keys: Keys,
    /// Per (who, code): when last recorded, and refusals not yet recorded.
    refusals: Mutex<HashMap<(String, String), Held>>,
}

impl std::fmt::Debug for SiteAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteAudit").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl SiteAudit {
    /// The audit log of the site in `site_dir`; its key is made if the site
    /// has none yet.
    pub fn open(site_dir: &Path) -> Result<SiteAudit, SiteError> {
        let key = read_or_make_key(&site_dir.join("audit.key"))?;
        Ok(SiteAudit {
            dir: site_dir.join("audit"),
            keys: MasterKey::from_bytes(key).keys(),
            refusals: Mutex::default(),
        })
    }

    /// The log file.
    pub fn path(&self) -> PathBuf {
        audit::log_path(&self.dir, self.keys.fingerprint())
    }

    /// The key the log is MAC'd under.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Appends a record of `kind` with `details` (a JSON object), durably.
    pub fn record(&self, kind: &str, details: serde_json::Value) -> Result<(), SiteError> {
        let log = audit::AuditLog::open(&self.dir, &self.keys).map_err(|e| audit_error(&self.dir, e))?;
        let _ = log.append(&audit::Event::new(kind, None, details)).map_err(|e| audit_error(&self.dir, e))?;
        Ok(())
    }

    /// Records a refusal by the server, at most once per `who` and `code`
    /// every [`REFUSAL_INTERVAL`] (the record says how many refusals it
    /// stands for). Failing to record is logged, never fatal: the server
    /// keeps refusing.
    pub fn refusal(&self, who: &str, code: &str, details: serde_json::Value) {
        self.refusal_at(who, code, details, Instant::now());
    }

    /// [`SiteAudit::refusal`] at `now` (tests).
    pub fn refusal_at(&self, who: &str, code: &str, mut details: serde_json::Value, now: Instant) {
        let count = {
            let mut seen = self.refusals.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let slot = seen.entry((who.to_owned(), code.to_owned())).or_insert((None, 0));
            slot.1 += 1;
            // The first refusal is recorded at once; later ones when the
            // interval has passed, counting those held back meanwhile.
            if slot.0.is_some_and(|last| now.duration_since(last) < REFUSAL_INTERVAL) {
                return;
            }
            let n = slot.1;
            *slot = (Some(now), 0);
            n
        };
        if let Some(o) = details.as_object_mut() {
            let _ = o.insert("refusals".into(), count.into());
        }
        if let Err(e) = self.record("serve.refused", details) {
            tracing::warn!("lifeboat vault serve: the site's audit log: {e}");
        }
    }
}

fn audit_error(dir: &Path, e: audit::AuditError) -> SiteError {
    SiteError::Io { path: dir.to_path_buf(), source: io::Error::other(e.to_string()) }
}

/// The 32-byte key in `path`, made (random, 0600, `O_EXCL` so that two
/// processes agree on one) if missing.
fn read_or_make_key(path: &Path) -> Result<[u8; 32], SiteError> {
    let mut bytes = Vec::new();
    match OpenOptions::new().read(true).open(path) {
        Ok(mut f) => {
            let _ = f.read_to_end(&mut bytes).map_err(io_at(path))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).map_err(|e| SiteError::Pki(crate::pki::PkiError::Random(e)))?;
            match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
                Ok(mut f) => {
                    f.write_all(&key).and_then(|()| f.sync_all()).map_err(io_at(path))?;
                    return Ok(key);
                }
                // Another process made it first: use its key.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return read_or_make_key(path),
                Err(e) => return Err(SiteError::Io { path: path.to_path_buf(), source: e }),
            }
        }
        Err(e) => return Err(SiteError::Io { path: path.to_path_buf(), source: e }),
    }
    bytes.try_into().map_err(|b: Vec<u8>| SiteError::Damaged {
        path: path.to_path_buf(),
        detail: format!("{} bytes; the site's audit key is 32", b.len()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds_and_counts(a: &SiteAudit) -> Vec<(String, Option<u64>)> {
        let (records, report) = audit::read_records(&a.path(), a.keys()).unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        records
            .iter()
            .map(|r| {
                let b = r.body.as_ref().unwrap();
                (b.kind.clone(), b.details["refusals"].as_u64())
            })
            .collect()
    }

    #[test]
    fn refusals_are_recorded_once_per_interval_with_their_count() {
        let dir = tempfile::tempdir().unwrap();
        let a = SiteAudit::open(dir.path()).unwrap();
        let t0 = Instant::now();
        for i in 0..5 {
            a.refusal_at("web1", "forbidden", serde_json::json!({ "host": "web1" }), t0 + Duration::from_secs(i));
        }
        a.refusal_at("web2", "forbidden", serde_json::json!({ "host": "web2" }), t0);
        a.refusal_at("web1", "forbidden", serde_json::json!({ "host": "web1" }), t0 + REFUSAL_INTERVAL);
        assert_eq!(
            kinds_and_counts(&a),
            vec![
                ("serve.refused".into(), Some(1)),
                ("serve.refused".into(), Some(1)),
                ("serve.refused".into(), Some(5)),
            ]
        );
    }

    #[test]
    fn the_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = SiteAudit::open(dir.path()).unwrap();
        a.record("site.init", serde_json::json!({})).unwrap();
        let b = SiteAudit::open(dir.path()).unwrap();
        b.record("site.revoke", serde_json::json!({ "host": "x" })).unwrap();
        assert_eq!(a.path(), b.path());
        assert_eq!(kinds_and_counts(&b).len(), 2);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("audit.key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
