//! The immutability a vault was created with (`lifeboat vault init
//! --immutable DAYS`): a promise recorded in the vault, checked against what
//! the store reports now ([`crate::Backend::protection`]).
//!
//! The promise is the small text object `config/protection`:
//!
//! ```text
//! lifeboat protection v1
//! immutable_days=<DAYS>
//! ```
//!
//! It is created once (create-if-absent) by `vault init`, beside the vault
//! config. The store's own report is what protects; the promise only lets
//! `vault check` say when the store's protection has fallen below what the
//! vault was created with (a default retention shortened, a policy removed).
//! A thief who can rewrite the promise can also not lower an S3 COMPLIANCE
//! retention, so nothing trusts the promise to protect.

use crate::backend::{Kind, Protection};
use crate::error::VaultError;
use crate::store::Vault;

/// The promise's object name (of kind [`Kind::Config`]).
pub const PROMISE_NAME: &str = "protection";
const MAGIC_LINE: &str = "lifeboat protection v1";

/// Whether protection `p` keeps every object at least `days` days.
/// A retention whose length the store does not report (Azure) counts: its
/// period is the owner's to set in the management plane.
pub fn holds(p: &Protection, days: u32) -> bool {
    match p {
        Protection::Retention { days: Some(d), .. } => *d >= days,
        Protection::Retention { days: None, .. } => true,
        Protection::None { .. } | Protection::AppendOnly => false,
    }
}

impl Vault {
    /// Records that this vault's store keeps every object at least `days`
    /// days (see the module documentation).
    pub fn promise_immutability(&self, days: u32) -> Result<(), VaultError> {
        let text = format!("{MAGIC_LINE}\nimmutable_days={days}\n");
        self.backend().create(Kind::Config, PROMISE_NAME, text.as_bytes()).map(|_| ())
    }

    /// The days promised at `vault init --immutable`, if any.
    pub fn immutability_promised(&self) -> Result<Option<u32>, VaultError> {
        let bytes = match self.backend().get(Kind::Config, PROMISE_NAME) {
            Ok(b) => b,
            Err(VaultError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let bad = |why: &str| VaultError::Invalid {
            object: format!("config/{PROMISE_NAME}"),
            detail: format!("{why}; it should read \"{MAGIC_LINE}\" then \"immutable_days=N\""),
        };
        let text = std::str::from_utf8(&bytes).map_err(|_| bad("not text"))?;
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC_LINE) {
            return Err(bad("not a Lifeboat protection record"));
        }
        let days = lines
            .find_map(|l| l.strip_prefix("immutable_days="))
            .ok_or_else(|| bad("no immutable_days line"))?
            .parse::<u32>()
            .map_err(|_| bad("immutable_days is not a number of days"))?;
        Ok(Some(days))
    }

    /// What protects the vault now, and, when it falls below the promise
    /// made at init, what is wrong.
    pub fn protection_now(&self) -> Result<(Protection, Option<String>), VaultError> {
        let now = self.backend().protection()?;
        let problem = match self.immutability_promised()? {
            Some(days) if !holds(&now, days) => Some(format!(
                "the vault was created --immutable {days} (every object kept at least {days} days), but its store now \
                 reports: {now}; restore the bucket's retention (or the container's policy) to at least {days} days"
            )),
            _ => None,
        };
        Ok((now, problem))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use disk_format::{Keys, MasterKey};

    #[test]
    fn a_promise_reads_back_and_is_checked_against_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let backend = crate::LocalBackend::create(&dir.path().join("v")).unwrap();
        let keys = Keys::derive(&MasterKey::from_bytes([3u8; 32]));
        let v = Vault::init(Box::new(backend), &keys).unwrap();
        assert_eq!(v.immutability_promised().unwrap(), None);
        let (p, problem) = v.protection_now().unwrap();
        assert!(matches!(p, Protection::None { .. }) && problem.is_none(), "{p:?} {problem:?}");
        v.promise_immutability(30).unwrap();
        assert_eq!(v.immutability_promised().unwrap(), Some(30));
        // A directory keeps nothing: below the promise, and said.
        let (_, problem) = v.protection_now().unwrap();
        assert!(problem.unwrap().contains("created --immutable 30"));
        // A promise is made once.
        assert!(matches!(v.promise_immutability(1), Err(VaultError::AlreadyExists { .. })));
        v.backend().put(Kind::Config, PROMISE_NAME, b"lifeboat protection v1\nimmutable_days=x\n").unwrap();
        assert!(v.immutability_promised().unwrap_err().to_string().contains("not a number"));
    }

    #[test]
    fn what_holds() {
        let r = |days| Protection::Retention { days, detail: String::new() };
        assert!(holds(&r(Some(30)), 30) && holds(&r(Some(31)), 30) && !holds(&r(Some(29)), 30));
        assert!(holds(&r(None), 365));
        assert!(!holds(&Protection::AppendOnly, 1) && !holds(&Protection::None { why: String::new() }, 1));
    }
}
