//! Requests about the bucket or container itself, which `object_store`
//! does not make: creating one (for tests and benchmarks; `lifeboat` never
//! creates one), reading the protection it has (S3 Object Lock, an Azure
//! immutability policy), and listing and aborting the multipart uploads a
//! crash left behind. Signed with `object_store`'s own signers and the
//! store's own credentials, sent with reqwest.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, AwsAuthorizer};
use object_store::azure::{AzureAuthorizer, AzureConfigKey, MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::client::HttpRequestBody;

/// Which service, with what its signed requests need.
pub(crate) enum Service {
    /// An S3 bucket.
    S3 {
        /// The store (for its credentials).
        store: Arc<AmazonS3>,
        /// The bucket's URL, path-style: `ENDPOINT/BUCKET`.
        bucket_url: String,
        /// The region requests are signed for.
        region: String,
    },
    /// An Azure Blob container.
    Azure {
        /// The store (for its credentials).
        store: Arc<MicrosoftAzure>,
        /// The container's URL: `ENDPOINT/CONTAINER`.
        container_url: String,
        /// The storage account (SharedKey signs with it).
        account: String,
    },
}

/// An answer: status, headers, body.
pub(crate) struct Reply {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as text, for XML answers and messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The store's time when it answered, from the `Date` header (so that
    /// no lock or age is judged by this host's clock).
    pub fn date(&self) -> Option<jiff::Timestamp> {
        self.header("date").and_then(|d| jiff::fmt::rfc2822::parse(d).ok()).map(|z| z.timestamp())
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The HTTP client of the service requests, made at the first of them:
/// making one loads the system's root certificates (hundreds of files,
/// tens of milliseconds with a cold page cache), and a replication cycle
/// sends no service request.
#[derive(Debug, Default)]
pub(crate) struct LazyClient(OnceLock<reqwest::Client>);

impl LazyClient {
    fn get(&self) -> Result<&reqwest::Client, reqwest::Error> {
        if let Some(c) = self.0.get() {
            return Ok(c);
        }
        let c = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(120))
            .build()?;
        Ok(self.0.get_or_init(|| c))
    }
}

/// Why a request got no answer, or could not be made.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct RequestFailed(pub String);

impl Service {
    /// The S3 service of `bucket` as `builder` configures it.
    pub(crate) fn s3(builder: &AmazonS3Builder, store: Arc<AmazonS3>, bucket: &str) -> Service {
        let region = builder.get_config_value(&AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".into());
        let endpoint = builder
            .get_config_value(&AmazonS3ConfigKey::Endpoint)
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let bucket_url = format!("{}/{bucket}", endpoint.trim_end_matches('/'));
        Service::S3 { store, bucket_url, region }
    }

    /// The Azure service of `container` in `account` as `builder`
    /// configures it.
    pub(crate) fn azure(
        builder: &MicrosoftAzureBuilder,
        store: Arc<MicrosoftAzure>,
        account: &str,
        container: &str,
    ) -> Service {
        let endpoint = builder
            .get_config_value(&AzureConfigKey::Endpoint)
            .unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"));
        let container_url = format!("{}/{container}", endpoint.trim_end_matches('/'));
        Service::Azure { store, container_url, account: account.to_string() }
    }

    /// Sends a signed `method` to the bucket or container's URL followed by
    /// `query` (`?object-lock`, `?restype=container`...), with `headers`
    /// and `body`.
    pub(crate) async fn send(
        &self,
        client: &LazyClient,
        method: http::Method,
        query: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<Reply, RequestFailed> {
        let failed = |what: &str, e: &dyn std::fmt::Display| RequestFailed(format!("{what}: {e}"));
        let url = match self {
            Service::S3 { bucket_url, .. } => format!("{bucket_url}{query}"),
            Service::Azure { container_url, .. } => format!("{container_url}{query}"),
        };
        let mut req = http::Request::builder().method(method).uri(&url);
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        if let Service::Azure { .. } = self {
            req = req
                .header("x-ms-version", "2023-11-03")
                .header("x-ms-date", httpdate(jiff::Timestamp::now()))
                .header("content-length", body.len().to_string());
        }
        let mut req: http::Request<HttpRequestBody> =
            req.body(HttpRequestBody::from(body.clone())).map_err(|e| failed("building a request", &e))?;
        match self {
            Service::S3 { store, region, .. } => {
                let cred = store.credentials().get_credential().await.map_err(|e| failed("S3 credentials", &e))?;
                AwsAuthorizer::new(&cred, "s3", region)
                    .try_authorize(&mut req, None)
                    .map_err(|e| failed("signing an S3 request", &e))?;
            }
            Service::Azure { store, account, .. } => {
                let cred = store.credentials().get_credential().await.map_err(|e| failed("Azure credentials", &e))?;
                AzureAuthorizer::new(&cred, account)
                    .try_authorize(&mut req)
                    .map_err(|e| failed("signing an Azure request", &e))?;
            }
        }
        let (parts, _) = req.into_parts();
        let r = client
            .get()
            .map_err(|e| failed("making an HTTP client", &e))?
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body)
            .send()
            .await
            .map_err(|e| failed("sending a request", &e))?;
        let (status, headers) = (r.status(), r.headers().clone());
        let body = r.bytes().await.map_err(|e| failed("reading an answer", &e))?;
        Ok(Reply { status, headers, body })
    }
}

impl Service {
    /// Whether the bucket or container exists (a HEAD of the bucket, the
    /// container's properties): `Ok(false)` only on a 404.
    pub(crate) async fn bucket_exists(&self, client: &LazyClient) -> Result<bool, RequestFailed> {
        let (method, query) = match self {
            Service::S3 { .. } => (http::Method::HEAD, ""),
            Service::Azure { .. } => (http::Method::GET, "?restype=container"),
        };
        let reply = self.send(client, method, query, &[], Bytes::new()).await?;
        Ok(reply.status != http::StatusCode::NOT_FOUND)
    }
}

/// An HTTP date (RFC 7231's IMF-fixdate) for `x-ms-date`.
fn httpdate(t: jiff::Timestamp) -> String {
    t.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates() {
        let at = |s| jiff::Timestamp::from_second(s).unwrap();
        assert_eq!(httpdate(at(0)), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(httpdate(at(784_111_777)), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(httpdate(at(1_796_515_200)), "Sun, 06 Dec 2026 00:00:00 GMT");
        assert_eq!(httpdate(at(951_782_400)), "Tue, 29 Feb 2000 00:00:00 GMT");
    }
}

/// A multipart upload not completed nor aborted: its key, its id, and when
/// it started (by the store's clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OpenUpload {
    pub key: String,
    pub id: String,
    pub initiated: jiff::Timestamp,
}

/// `s` percent-encoded for a URL's query or path (RFC 3986 unreserved
/// characters kept).
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Every `<tag>...</tag>` field's text in `xml`, in order.
pub(crate) fn xml_fields<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(at) = rest.find(&open) {
        let after = &rest[at + open.len()..];
        let Some(end) = after.find(&close) else { break };
        out.push(&after[..end]);
        rest = &after[end + close.len()..];
    }
    out
}

impl Service {
    /// S3's multipart uploads under `prefix` that were started and never
    /// completed nor aborted, and the store's time now (ListMultipartUploads,
    /// every page).
    pub(crate) async fn open_uploads(
        &self,
        client: &LazyClient,
        prefix: &str,
    ) -> Result<(Vec<OpenUpload>, jiff::Timestamp), RequestFailed> {
        let mut uploads = Vec::new();
        let mut markers: Option<(String, String)> = None;
        loop {
            let mut query = format!("?uploads&prefix={}", encode(prefix));
            if let Some((key, id)) = &markers {
                query.push_str(&format!("&key-marker={}&upload-id-marker={}", encode(key), encode(id)));
            }
            let reply = self.send(client, http::Method::GET, &query, &[], Bytes::new()).await?;
            if !reply.status.is_success() {
                return Err(RequestFailed(format!("listing multipart uploads: {} {}", reply.status, reply.text())));
            }
            let now = reply
                .date()
                .ok_or_else(|| RequestFailed("listing multipart uploads: the answer has no Date header".into()))?;
            let text = reply.text();
            for upload in xml_fields(&text, "Upload") {
                let field = |t| xml_fields(upload, t).first().map(|s| s.trim().to_string());
                let (Some(key), Some(id), Some(initiated)) = (field("Key"), field("UploadId"), field("Initiated"))
                else {
                    continue;
                };
                let Ok(initiated) = initiated.parse::<jiff::Timestamp>() else { continue };
                uploads.push(OpenUpload { key, id, initiated });
            }
            let truncated = xml_fields(&text, "IsTruncated").first().is_some_and(|t| t.trim() == "true");
            let next = (
                xml_fields(&text, "NextKeyMarker").first().map(|s| s.trim().to_string()),
                xml_fields(&text, "NextUploadIdMarker").first().map(|s| s.trim().to_string()),
            );
            match (truncated, next) {
                (true, (Some(k), Some(i))) if markers.as_ref() != Some(&(k.clone(), i.clone())) => {
                    markers = Some((k, i))
                }
                _ => return Ok((uploads, now)),
            }
        }
    }

    /// Aborts S3 multipart upload `id` of `key` (the parts it holds are
    /// freed).
    pub(crate) async fn abort_upload(&self, client: &LazyClient, key: &str, id: &str) -> Result<(), RequestFailed> {
        let path: Vec<String> = key.split('/').map(encode).collect();
        let query = format!("/{}?uploadId={}", path.join("/"), encode(id));
        let reply = self.send(client, http::Method::DELETE, &query, &[], Bytes::new()).await?;
        // Gone already (another collection aborted it): as good.
        if reply.status.is_success() || reply.status == http::StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(RequestFailed(format!("aborting upload {id} of {key}: {} {}", reply.status, reply.text())))
        }
    }
}
