//! What protects a cloud vault's objects against deletion: S3 Object Lock
//! with a default retention, or an Azure container's immutability policy.
//! Read from the service itself, never from the vault (whose config a thief
//! holding the credentials could rewrite).

use std::fmt;

use bytes::Bytes;
use vault::VaultError;

use crate::backend::CloudBackend;
use crate::service::Service;

/// S3 Object Lock's retention modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Nobody can delete a locked version or shorten its retention, not
    /// even the account's root user.
    Compliance,
    /// A user with `s3:BypassGovernanceRetention` can.
    Governance,
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockMode::Compliance => "COMPLIANCE",
            LockMode::Governance => "GOVERNANCE",
        })
    }
}

/// The protection a bucket or container has, as its service reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketProtection {
    /// None: a credential that may delete objects can delete the vault.
    None,
    /// S3 Object Lock is on, but without a default retention: objects are
    /// not locked unless each write asks (Lifeboat's do not).
    ObjectLockWithoutDefault,
    /// S3 Object Lock with a default retention: every object version is
    /// locked for `days` from its write.
    ObjectLock {
        /// The default retention's mode.
        mode: LockMode,
        /// Its length in days (years are counted as 365 days).
        days: u32,
    },
    /// An Azure container with a time-based immutability policy, or with
    /// version-level immutability (its period is set in Azure's management
    /// plane, which storage credentials cannot read).
    AzureImmutable,
}

impl fmt::Display for BucketProtection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BucketProtection::None => {
                f.write_str("none: whoever holds credentials that may delete objects can delete points")
            }
            BucketProtection::ObjectLockWithoutDefault => {
                f.write_str("S3 Object Lock is enabled but has no default retention, so objects are not locked")
            }
            BucketProtection::ObjectLock { mode, days } => {
                write!(f, "S3 Object Lock, {mode} mode, every object locked for {days} days from its write")
            }
            BucketProtection::AzureImmutable => f.write_str("an Azure immutability policy on the container"),
        }
    }
}

/// The text of the first `<tag>...</tag>` in `xml`, trimmed.
fn xml_field<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    crate::service::xml_fields(xml, tag).first().map(|s| s.trim())
}

/// Parses an S3 `ObjectLockConfiguration`.
fn parse_object_lock(xml: &str) -> BucketProtection {
    if xml_field(xml, "ObjectLockEnabled") != Some("Enabled") {
        return BucketProtection::None;
    }
    let mode = match xml_field(xml, "Mode") {
        Some("COMPLIANCE") => LockMode::Compliance,
        Some("GOVERNANCE") => LockMode::Governance,
        _ => return BucketProtection::ObjectLockWithoutDefault,
    };
    let days = xml_field(xml, "Days")
        .and_then(|d| d.parse::<u32>().ok())
        .or_else(|| xml_field(xml, "Years").and_then(|y| y.parse::<u32>().ok()).map(|y| y.saturating_mul(365)));
    match days {
        Some(days) => BucketProtection::ObjectLock { mode, days },
        None => BucketProtection::ObjectLockWithoutDefault,
    }
}

impl CloudBackend {
    fn service_error(&self, what: &str, why: impl fmt::Display) -> VaultError {
        VaultError::Unsupported { location: self.location_string(), why: format!("{what}: {why}") }
    }

    /// The protection the bucket or container has now, asked of the service.
    pub fn bucket_protection(&self) -> Result<BucketProtection, VaultError> {
        let (query, what) = match &self.service {
            Service::S3 { .. } => ("?object-lock", "reading the bucket's Object Lock configuration"),
            Service::Azure { .. } => ("?restype=container", "reading the container's properties"),
        };
        let reply = self
            .rt()
            .block_on(self.service.send(&self.client, http::Method::GET, query, &[], Bytes::new()))
            .map_err(|e| self.service_error(what, e))?;
        match &self.service {
            Service::S3 { .. } if reply.status.is_success() => Ok(parse_object_lock(&reply.text())),
            // No configuration: Object Lock was never enabled.
            Service::S3 { .. }
                if reply.status == http::StatusCode::NOT_FOUND
                    && reply.text().contains("ObjectLockConfigurationNotFound") =>
            {
                Ok(BucketProtection::None)
            }
            Service::Azure { .. } if reply.status.is_success() => {
                let on = |h: &str| reply.header(h).is_some_and(|v| v.eq_ignore_ascii_case("true"));
                Ok(if on("x-ms-has-immutability-policy") || on("x-ms-immutable-storage-with-versioning-enabled") {
                    BucketProtection::AzureImmutable
                } else {
                    BucketProtection::None
                })
            }
            _ => Err(self.service_error(what, format!("{} {}", reply.status, reply.text().trim()))),
        }
    }

    /// Creates the bucket or container this vault is in, for tests and
    /// benchmarks (`lifeboat` never creates one: its settings, such as
    /// Object Lock, are its owner's). With `lock`, an S3 bucket gets Object
    /// Lock and that default retention.
    pub fn create_bucket(&self, lock: Option<(LockMode, u32)>) -> Result<(), VaultError> {
        let send = |method, query: &str, headers: &[(&str, String)], body: Bytes| {
            self.rt()
                .block_on(self.service.send(&self.client, method, query, headers, body))
                .map_err(|e| self.service_error("creating the bucket", e))
        };
        let check = |reply: crate::service::Reply| {
            if reply.status.is_success() {
                Ok(())
            } else {
                Err(self.service_error("creating the bucket", format!("{} {}", reply.status, reply.text().trim())))
            }
        };
        match (&self.service, lock) {
            (Service::Azure { .. }, None) => check(send(http::Method::PUT, "?restype=container", &[], Bytes::new())?),
            (Service::Azure { .. }, Some(_)) => Err(self.service_error(
                "creating the container",
                "an immutability policy is set in Azure's management plane, not with storage credentials",
            )),
            (Service::S3 { .. }, None) => check(send(http::Method::PUT, "", &[], Bytes::new())?),
            (Service::S3 { .. }, Some((mode, days))) => {
                let headers = [("x-amz-bucket-object-lock-enabled", "true".to_string())];
                check(send(http::Method::PUT, "", &headers, Bytes::new())?)?;
                self.set_default_retention(mode, days)
            }
        }
    }

    /// Sets an S3 bucket's default Object Lock retention (the bucket was
    /// made with Object Lock): for tests and benchmarks, as
    /// [`CloudBackend::create_bucket`].
    pub fn set_default_retention(&self, mode: LockMode, days: u32) -> Result<(), VaultError> {
        let xml = format!(
            "<ObjectLockConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><ObjectLockEnabled>Enabled\
             </ObjectLockEnabled><Rule><DefaultRetention><Mode>{mode}</Mode><Days>{days}</Days></DefaultRetention>\
             </Rule></ObjectLockConfiguration>"
        );
        self.rt().block_on(self.put_xml("?object-lock", xml, "setting the bucket's Object Lock retention"))
    }

    /// PUTs the XML document `xml` to the bucket's URL followed by `path`
    /// (a configuration, an object's retention), with the `Content-MD5` S3
    /// requires of them.
    async fn put_xml(&self, path: &str, xml: String, what: &str) -> Result<(), VaultError> {
        use base64::Engine as _;
        use md5::Digest as _;
        let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(xml.as_bytes()));
        let reply = self
            .service
            .send(&self.client, http::Method::PUT, path, &[("content-md5", md5)], Bytes::from(xml))
            .await
            .map_err(|e| self.service_error(what, e))?;
        if reply.status.is_success() {
            Ok(())
        } else {
            Err(self.service_error(what, format!("{} {}", reply.status, reply.text().trim())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_lock_configurations() {
        let cfg = |rule: &str| {
            format!(
                "<?xml version=\"1.0\"?><ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled>{rule}\
                 </ObjectLockConfiguration>"
            )
        };
        let rule = |inner: &str| format!("<Rule><DefaultRetention>{inner}</DefaultRetention></Rule>");
        assert_eq!(
            parse_object_lock(&cfg(&rule("<Mode>COMPLIANCE</Mode><Days>30</Days>"))),
            BucketProtection::ObjectLock { mode: LockMode::Compliance, days: 30 }
        );
        assert_eq!(
            parse_object_lock(&cfg(&rule("<Mode>GOVERNANCE</Mode><Years>2</Years>"))),
            BucketProtection::ObjectLock { mode: LockMode::Governance, days: 730 }
        );
        assert_eq!(parse_object_lock(&cfg("")), BucketProtection::ObjectLockWithoutDefault);
        assert_eq!(parse_object_lock("<ObjectLockConfiguration/>"), BucketProtection::None);
    }
}

/// A timestamp as S3 writes one (`2026-12-13T05:36:32Z`).
fn iso(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// An object's lock as S3 reports it, with the store's time of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLock {
    /// The lock's mode, `None` if the object is not locked.
    pub mode: Option<LockMode>,
    /// Until when, if locked.
    pub until: Option<jiff::Timestamp>,
    /// The store's time when it answered.
    pub now: jiff::Timestamp,
}

impl CloudBackend {
    /// The lock of `kind/name` (S3 only; an Azure container's policy is
    /// not per object here).
    pub fn object_lock(&self, kind: vault::Kind, name: &str) -> Result<ObjectLock, VaultError> {
        self.rt().block_on(self.object_lock_async(kind, name))
    }

    async fn object_lock_async(&self, kind: vault::Kind, name: &str) -> Result<ObjectLock, VaultError> {
        let key = self.key_of(kind, name)?;
        let what = format!("reading the lock of {kind}/{name}");
        let reply = self
            .service
            .send(&self.client, http::Method::HEAD, &format!("/{key}"), &[], Bytes::new())
            .await
            .map_err(|e| self.service_error(&what, e))?;
        if !reply.status.is_success() {
            return Err(if reply.status == http::StatusCode::NOT_FOUND {
                VaultError::NotFound { kind, name: name.to_string() }
            } else {
                self.service_error(&what, reply.status)
            });
        }
        let now = reply.date().ok_or_else(|| self.service_error(&what, "the answer has no Date header"))?;
        let mode = match reply.header("x-amz-object-lock-mode") {
            Some("COMPLIANCE") => Some(LockMode::Compliance),
            Some("GOVERNANCE") => Some(LockMode::Governance),
            _ => None,
        };
        let until = reply.header("x-amz-object-lock-retain-until-date").and_then(|t| t.parse().ok());
        Ok(ObjectLock { mode, until, now })
    }

    /// Locks `kind/name` in `mode` until `until` (S3's PutObjectRetention):
    /// for [`vault::Backend::extend_locks`], and for tests.
    pub fn set_object_lock(
        &self,
        kind: vault::Kind,
        name: &str,
        mode: LockMode,
        until: jiff::Timestamp,
    ) -> Result<(), VaultError> {
        self.rt().block_on(self.set_object_lock_async(kind, name, mode, until))
    }

    async fn set_object_lock_async(
        &self,
        kind: vault::Kind,
        name: &str,
        mode: LockMode,
        until: jiff::Timestamp,
    ) -> Result<(), VaultError> {
        let key = self.key_of(kind, name)?;
        let xml = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{mode}</Mode><RetainUntilDate>{}\
             </RetainUntilDate></Retention>",
            iso(until)
        );
        self.put_xml(&format!("/{key}?retention"), xml, &format!("extending the lock of {kind}/{name}")).await
    }

    /// [`vault::Backend::extend_locks`] on S3: each object's lock is read
    /// (32 at a time) and, where it ends within `min_days` of the store's
    /// now, extended to `days` from then in the bucket's default mode.
    pub(crate) fn extend_s3_locks(
        &self,
        objects: &[(vault::Kind, String)],
        min_days: u32,
        days: u32,
    ) -> Result<u64, VaultError> {
        let mode = match self.bucket_protection()? {
            BucketProtection::ObjectLock { mode, .. } => mode,
            // No default retention: nothing locks, nothing to extend.
            _ => return Ok(0),
        };
        let span = |d: u32| jiff::SignedDuration::from_hours(i64::from(d) * 24);
        let extended: Vec<bool> = self.rt().block_on(async {
            use futures_util::{StreamExt as _, TryStreamExt as _};
            futures_util::stream::iter(objects.iter().map(|(kind, name)| async move {
                let lock = match self.object_lock_async(*kind, name).await {
                    Ok(lock) => lock,
                    // Deleted since it was marked (a prune): nothing to keep.
                    Err(VaultError::NotFound { .. }) => return Ok(false),
                    Err(e) => return Err(e),
                };
                let ends_soon = lock.until.is_none_or(|u| u < lock.now + span(min_days));
                if !ends_soon {
                    return Ok(false);
                }
                self.set_object_lock_async(*kind, name, lock.mode.unwrap_or(mode), lock.now + span(days)).await?;
                Ok(true)
            }))
            .buffer_unordered(32)
            .try_collect()
            .await
        })?;
        Ok(extended.into_iter().filter(|e| *e).count() as u64)
    }
}
