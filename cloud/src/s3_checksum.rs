//! Every S3 upload carries a CRC64NVME of its body that the store checks
//! (`x-amz-checksum-crc64nvme`, `object_store`'s `Checksum::CRC64NVME`) and
//! says which checksum it is (`x-amz-sdk-checksum-algorithm: CRC64NVME`);
//! the payload itself goes unsigned (`x-amz-content-sha256:
//! UNSIGNED-PAYLOAD`), as the AWS SDKs send uploads since 2025. A SHA-256
//! of every pack, for the signature and a SHA-256 checksum, cost the client
//! about a fifth of its CPU in a full sync; the CRC costs a fiftieth of
//! that and is still checked by the store (docs/DESIGN-NOTES.md, "What an
//! S3 upload is checked with").
//!
//! The second header is what S3 requires on an upload into a bucket with
//! Object Lock and a default retention (the immutable vaults of issue 15):
//! without it, or a `Content-MD5`, the PUT is refused with 400
//! ("Content-MD5 OR x-amz-checksum- HTTP header is required for Put Object
//! requests with Object Lock parameters"; moto says
//! `MissingUploadObjectWithObjectLockHeaders`). `object_store` sends the
//! checksum but not that header, and S3 refuses any `x-amz-*` header that
//! is not signed. So this HTTP service, between `object_store` and reqwest,
//! adds the header to every PUT that carries the checksum and signs the
//! request again with the store's own credentials. `AWS_CHECKSUM_ALGORITHM=sha256`
//! (for a store that predates CRC64NVME) sends a SHA-256 instead, the
//! payload signed with it, as before 2026-12-07.

use std::sync::{Arc, Mutex, PoisonError};

use object_store::aws::{AwsAuthorizer, AwsCredentialProvider};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};
use object_store::ClientOptions;

/// The checksum headers `object_store` sends, with the algorithm each names.
const CHECKSUMS: [(&str, &str); 2] = [("x-amz-checksum-crc64nvme", "CRC64NVME"), ("x-amz-checksum-sha256", "SHA256")];
const ALGORITHM: &str = "x-amz-sdk-checksum-algorithm";
const CONTENT_SHA256: &str = "x-amz-content-sha256";

/// reqwest clients shared by the stores built with this connector: one per
/// distinct set of options. `object_store` makes a client for every store it
/// builds, and making one loads the system's root certificates (hundreds of
/// files; with a cold page cache, tens of milliseconds of every command).
/// The S3 store is built twice (see `CloudBackend::open`): the second build
/// reuses the first's client. Options are told apart by their `Debug` form,
/// which shows every field (`ClientOptions` has no `Eq`): the metadata
/// service's options differ from the store's, and get a client of their own.
#[derive(Debug, Clone, Default)]
pub(crate) struct SharedConnector(Arc<Mutex<Vec<(String, HttpClient)>>>);

impl HttpConnector for SharedConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let key = format!("{options:?}");
        let mut made = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, client)) = made.iter().find(|(k, _)| *k == key) {
            return Ok(client.clone());
        }
        let client = ReqwestConnector::default().connect(options)?;
        made.push((key, client.clone()));
        Ok(client)
    }
}

/// The connector of an S3 store whose uploads say their checksum algorithm.
#[derive(Debug)]
pub(crate) struct ChecksumConnector {
    pub credentials: AwsCredentialProvider,
    pub region: String,
    /// Where the HTTP client underneath comes from.
    pub shared: SharedConnector,
}

impl HttpConnector for ChecksumConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = self.shared.connect(options)?;
        Ok(HttpClient::new(ChecksumService {
            inner,
            credentials: Arc::clone(&self.credentials),
            region: self.region.clone(),
        }))
    }
}

#[derive(Debug)]
struct ChecksumService {
    inner: HttpClient,
    credentials: AwsCredentialProvider,
    region: String,
}

/// The payload digest the request was signed with, to sign it again with
/// the same (`None`: not a hex SHA-256, e.g. `UNSIGNED-PAYLOAD`).
fn signed_digest(req: &HttpRequest) -> Option<[u8; 32]> {
    let hex = req.headers().get(CONTENT_SHA256)?.to_str().ok()?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[async_trait::async_trait]
impl HttpService for ChecksumService {
    async fn call(&self, mut req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let algorithm = CHECKSUMS.iter().find(|(header, _)| req.headers().contains_key(*header)).map(|(_, a)| *a);
        if let Some(algorithm) =
            algorithm.filter(|_| req.method() == http::Method::PUT && !req.headers().contains_key(ALGORITHM))
        {
            let digest = signed_digest(&req);
            req.headers_mut().insert(ALGORITHM, http::HeaderValue::from_static(algorithm));
            req.headers_mut().remove(http::header::AUTHORIZATION);
            let cred =
                self.credentials.get_credential().await.map_err(|e| HttpError::new(HttpErrorKind::Unknown, e))?;
            AwsAuthorizer::new(&cred, "s3", &self.region)
                .with_sign_payload(digest.is_some())
                .try_authorize(&mut req, digest.as_ref().map(|d| d.as_slice()))
                .map_err(|e| HttpError::new(HttpErrorKind::Unknown, e))?;
        }
        self.inner.execute(req).await
    }
}
