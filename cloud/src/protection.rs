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

/// The text between `<tag>` and `</tag>`, the first such.
fn xml_field<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let start = xml.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    Some(xml[start..end].trim())
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
        use base64::Engine as _;
        use md5::Digest as _;
        let xml = format!(
            "<ObjectLockConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><ObjectLockEnabled>Enabled\
             </ObjectLockEnabled><Rule><DefaultRetention><Mode>{mode}</Mode><Days>{days}</Days></DefaultRetention>\
             </Rule></ObjectLockConfiguration>"
        );
        // S3 requires the configuration's MD5.
        let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(xml.as_bytes()));
        let headers = [("content-md5", md5)];
        let what = "setting the bucket's Object Lock retention";
        let reply = self
            .rt()
            .block_on(self.service.send(&self.client, http::Method::PUT, "?object-lock", &headers, Bytes::from(xml)))
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
