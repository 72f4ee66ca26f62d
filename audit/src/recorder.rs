//! Recording an action: append a record to the home's log of the key, then
//! copy the log to the vault the action used ([`record`]).
//!
//! The append must succeed (an action must not pass unrecorded); the copy
//! may fail (the vault is away, or belongs to another key) and is then
//! retried by the next record's copy, so its failure is part of the result,
//! for the caller to warn about, not an error.

use std::path::{Path, PathBuf};

use disk_format::{KeyFingerprint, Keys};
use vault::Vault;

use crate::error::AuditError;
use crate::log::{Appended, AuditLog, Synced};
use crate::record::Event;

/// What [`record`] did.
#[derive(Debug)]
pub struct Recorded {
    /// The log file the record was appended to.
    pub log: PathBuf,
    /// The new record.
    pub appended: Appended,
    /// The copy to the vault: `None` when no vault was given.
    pub copy: Option<Result<Synced, CopyFailure>>,
}

/// Why the log could not be copied to the vault (the record is kept in the
/// home's log; the next record's copy retries).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CopyFailure {
    /// The vault was created with another key: it holds no copy of this
    /// key's log.
    #[error("the vault belongs to key {vault_fingerprint}")]
    OtherKey {
        /// The fingerprint of the vault's key.
        vault_fingerprint: KeyFingerprint,
    },
    /// The copy itself failed.
    #[error(transparent)]
    Copy(AuditError),
}

/// Appends `event` to the log of `keys` in `dir` (`HOME/audit`, created if
/// missing) and copies the log to `vault`, if given. A failed append is an
/// error ([`AuditError::Record`], naming the event's kind and the log); a
/// failed copy is in [`Recorded::copy`]. Never put a secret in the event's
/// details: records are not encrypted.
pub fn record(dir: &Path, keys: &Keys, vault: Option<&Vault>, event: &Event) -> Result<Recorded, AuditError> {
    let log = AuditLog::open(dir, keys)?;
    let appended = log.append(event).map_err(|source| AuditError::Record {
        kind: event.kind.clone(),
        path: log.path().to_owned(),
        source: Box::new(source),
    })?;
    let copy = vault.map(|v| {
        let vault_fingerprint = v.config().key_fingerprint;
        if vault_fingerprint != keys.fingerprint() {
            return Err(CopyFailure::OtherKey { vault_fingerprint });
        }
        log.sync_to(v.backend()).map_err(CopyFailure::Copy)
    });
    Ok(Recorded { log: log.path().to_owned(), appended, copy })
}

#[cfg(test)]
mod tests {
    use super::*;
    use disk_format::MasterKey;
    use serde_json::json;
    use vault::{Kind, LocalBackend};

    fn vault(dir: &Path, keys: &Keys) -> Vault {
        Vault::init(Box::new(LocalBackend::create(dir).unwrap()), keys).unwrap()
    }

    #[test]
    fn record_appends_and_copies_to_the_vault() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("home/audit");
        let keys = MasterKey::from_bytes([3; 32]).keys();
        let v = vault(&tmp.path().join("vault"), &keys);
        let r =
            record(&dir, &keys, Some(&v), &Event::new("protect", Some("web1"), json!({ "image": "/x.raw" }))).unwrap();
        assert_eq!((r.appended.seq, r.log.clone()), (1, crate::log_path(&dir, keys.fingerprint())));
        assert!(matches!(&r.copy, Some(Ok(s)) if s.vault_last == 1), "{:?}", r.copy);
        let r = record(&dir, &keys, Some(&v), &Event::new("key.use", None, json!({}))).unwrap();
        assert!(matches!(&r.copy, Some(Ok(s)) if s.vault_last == 2), "{:?}", r.copy);
        let h = crate::verify_home(&dir, &keys).unwrap().unwrap();
        assert!(h.is_ok() && h.last_seq == 2, "{:?}", h.problems);
        let copies = crate::verify_vault(v.backend(), &keys).unwrap();
        assert!(copies[0].is_ok() && copies[0].last_seq == 2);
        assert!(crate::cross_check(&h, &copies[0]).is_empty());

        // No vault: appended, nothing copied.
        let r = record(&dir, &keys, None, &Event::new("key.use", None, json!({}))).unwrap();
        assert!(r.copy.is_none() && r.appended.seq == 3);
        assert_eq!(crate::verify_vault(v.backend(), &keys).unwrap()[0].last_seq, 2);
    }

    #[test]
    fn a_vault_of_another_key_gets_nothing_and_the_record_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let keys = MasterKey::from_bytes([3; 32]).keys();
        let other = MasterKey::from_bytes([4; 32]).keys();
        let w = vault(&tmp.path().join("v2"), &other);
        let r = record(&dir, &keys, Some(&w), &Event::new("prune", Some("web1"), json!({}))).unwrap();
        match r.copy {
            Some(Err(CopyFailure::OtherKey { vault_fingerprint })) => {
                assert_eq!(vault_fingerprint, other.fingerprint())
            }
            c => panic!("copied to a vault of another key: {c:?}"),
        }
        assert!(w.backend().list(Kind::Audit, "").unwrap().is_empty());
        assert_eq!(crate::verify_home(&dir, &keys).unwrap().unwrap().last_seq, 1);
    }

    #[test]
    fn a_bad_event_is_an_error_naming_it_and_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let keys = MasterKey::from_bytes([3; 32]).keys();
        record(&dir, &keys, None, &Event::new("protect", None, json!({}))).unwrap();
        let e = record(&dir, &keys, None, &Event::new("Bad Kind", None, json!({}))).unwrap_err();
        match &e {
            AuditError::Record { kind, path, source } => {
                assert_eq!((kind.as_str(), path), ("Bad Kind", &crate::log_path(&dir, keys.fingerprint())));
                assert!(matches!(**source, AuditError::BadEvent(_)), "{source:?}");
            }
            e => panic!("{e:?}"),
        }
        assert!(e.to_string().starts_with("recording `Bad Kind` in the audit log "), "{e}");
        assert_eq!(crate::verify_home(&dir, &keys).unwrap().unwrap().last_seq, 1);
    }
}
