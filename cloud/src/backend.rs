//! [`CloudBackend`]: the `Backend` contract on an object store.
//!
//! Layout: the object `KIND/NAME` is the key `PREFIX/KIND-DIR/NAME` (the
//! local directory's layout without its two-character fan-out: an object
//! store needs none). How each call maps onto the services:
//!
//! | Backend | S3 | Azure Blob |
//! | --- | --- | --- |
//! | `put` | PutObject | Put Blob |
//! | `create` | PutObject `If-None-Match: *` | Put Blob `If-None-Match: *` |
//! | `replace_if` | PutObject `If-Match: ETAG` | Put Blob `If-Match: ETAG` |
//! | `get_range` | GetObject `Range` | Get Blob `x-ms-range` |
//! | `size`, `missing` | HeadObject (many in flight) | Get Blob Properties |
//! | `delete` | HeadObject, DeleteObject | Delete Blob |
//! | streamed packs | PutObject `If-None-Match: *`, or a multipart upload above [`MULTIPART_ABOVE`] | Put Blob, or Put Block and Put Block List |
//!
//! A streamed object's name is known only at its commit (a pack is named by
//! its contents), so the writer keeps the pack's pieces (one copy, as
//! `Bytes` the request body borrows, never concatenated) and sends them at
//! the commit. `object_store` retries a failed request whole from those
//! pieces.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3ConfigKey, Checksum};
use object_store::azure::AzureConfigKey;
use object_store::path::Path as Key;
use object_store::ClientConfigKey;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use vault::backend::check_name;
use vault::{Backend, Kind, Location, ObjectWriter, VaultError, Version};

use crate::s3_checksum::{ChecksumConnector, SharedConnector};
use crate::service::{LazyClient, Service};
use crate::settings::Settings;

/// A streamed object above this many bytes goes up as a multipart upload,
/// in parts of [`PART_SIZE`]: a pack (about 32 MiB) normally goes in one
/// request.
pub const MULTIPART_ABOVE: usize = 64 << 20;
/// The part size of a multipart upload (S3's minimum is 5 MiB).
pub const PART_SIZE: usize = 16 << 20;
/// Requests in flight at once for `missing`'s existence checks.
const HEADS_IN_FLIGHT: usize = 32;

/// A vault in a cloud container or bucket; see the module documentation.
pub struct CloudBackend {
    rt: tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
    /// The keys' common beginning: the vault's prefix and a `/`, or empty.
    root: String,
    location: String,
    multipart_above: usize,
    /// Requests about the bucket or container itself (`service.rs`).
    pub(crate) service: Service,
    /// Said with a failure when no credentials were named (see
    /// `Settings::implicit_credentials`).
    implicit_credentials: Option<&'static str>,
    /// Uploads carry a CRC64NVME (S3 without `AWS_CHECKSUM_ALGORITHM`): an
    /// upload refused over its checksum says how to send a SHA-256 instead.
    crc64nvme: bool,
    pub(crate) client: LazyClient,
}

impl std::fmt::Debug for CloudBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudBackend").field("location", &self.location).finish_non_exhaustive()
    }
}

/// rustls's process-wide provider for reqwest (built without one of its
/// own): ring, as everywhere in Lifeboat. Installing it again is a no-op.
fn install_crypto_provider() {
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
}

/// Set for a vault reached only over plain HTTP (`Settings::plain_http_only`,
/// an emulator or a store on the site's own network): its client loads no
/// root certificates, which costs tens of milliseconds a command with a
/// cold page cache and would never be used.
const NO_ROOTS: ClientConfigKey = ClientConfigKey::NoSystemCertificates;

/// The HTTP client's limits. `object_store`'s default request timeout
/// (30 s) cannot carry a 32 MiB pack over a slow link; a request may take
/// up to 10 minutes, and a connection that moves no byte for 60 s fails
/// (then `object_store` retries it, with backoff, up to 10 times).
fn client_options() -> object_store::ClientOptions {
    object_store::ClientOptions::new()
        .with_timeout(std::time::Duration::from_secs(600))
        .with_connect_timeout(std::time::Duration::from_secs(10))
        .with_read_timeout(std::time::Duration::from_secs(60))
}

impl CloudBackend {
    /// Opens the vault at the cloud location `at` with `settings` (see
    /// [`Settings`]). Nothing is requested yet: a wrong credential or a
    /// missing bucket shows at the first request, which names them.
    pub fn open(at: &Location, settings: &Settings) -> Result<CloudBackend, VaultError> {
        install_crypto_provider();
        let location = at.to_string();
        let unsupported = |why: String| VaultError::Unsupported { location: location.clone(), why };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("lifeboat-cloud")
            .enable_all()
            .build()
            .map_err(|e| unsupported(format!("cannot start the cloud client's threads: {e}")))?;
        let _in_runtime = rt.enter();
        let mut crc64nvme = false;
        let (store, service, prefix): (Arc<dyn ObjectStore>, Service, &str) = match at {
            Location::S3 { bucket, prefix } => {
                // One DELETE per object, not the bulk DeleteObjects POST:
                // Lifeboat deletes one object at a time, and the bulk call
                // is authorized differently by some S3-compatible stores
                // (moto checks it against the bucket, not the key, so a
                // host allowed to delete only its leases could not).
                let mut builder = settings.s3(bucket, client_options()).with_disable_bulk_delete(true);
                // Uploads carry a CRC64NVME over an unsigned payload
                // (`s3_checksum.rs`), unless AWS_CHECKSUM_ALGORITHM says
                // otherwise: `sha256` for a store that predates CRC64NVME
                // (the payload is then signed too).
                if builder.get_config_value(&AmazonS3ConfigKey::Checksum).is_none() {
                    builder = builder.with_checksum_algorithm(Checksum::CRC64NVME).with_unsigned_payload(true);
                    crc64nvme = true;
                }
                let endpoint = builder.get_config_value(&AmazonS3ConfigKey::Endpoint);
                if settings.plain_http_only(true, endpoint.as_deref()) {
                    builder = builder.with_config(AmazonS3ConfigKey::Client(NO_ROOTS), "true");
                }
                let bad = |e: object_store::Error| {
                    unsupported(format!("the S3 settings (AWS_* variables, ~/.aws files) are not usable: {e}"))
                };
                // Built twice: the first store's credential provider signs
                // the checksum header again (`s3_checksum.rs`), and the
                // second store shares it.
                // Both builds share one HTTP client (`SharedConnector`).
                let shared = SharedConnector::default();
                let credentials =
                    Arc::clone(builder.clone().with_http_connector(shared.clone()).build().map_err(bad)?.credentials());
                let region = builder.get_config_value(&AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".into());
                let connector = ChecksumConnector { credentials: Arc::clone(&credentials), region, shared };
                let s3 = Arc::new(
                    builder
                        .clone()
                        .with_credentials(credentials)
                        .with_http_connector(connector)
                        .build()
                        .map_err(bad)?,
                );
                (s3.clone(), Service::s3(&builder, s3, bucket), prefix)
            }
            Location::Azure { account, container, prefix } => {
                let mut builder = settings.azure(account, container, client_options());
                let endpoint = builder.get_config_value(&AzureConfigKey::Endpoint);
                if settings.plain_http_only(false, endpoint.as_deref()) {
                    builder = builder.with_config(AzureConfigKey::Client(NO_ROOTS), "true");
                }
                let az =
                    Arc::new(builder.clone().build().map_err(|e| {
                        unsupported(format!("the Azure settings (AZURE_* variables) are not usable: {e}"))
                    })?);
                (az.clone(), Service::azure(&builder, az, account, container), prefix)
            }
            _ => return Err(unsupported("not a cloud vault (az:// or s3://)".into())),
        };
        let root = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
        drop(_in_runtime);
        let implicit_credentials = settings.implicit_credentials(matches!(at, Location::S3 { .. }));
        Ok(CloudBackend {
            rt,
            store,
            root,
            location,
            multipart_above: MULTIPART_ABOVE,
            service,
            client: LazyClient::default(),
            implicit_credentials,
            crc64nvme,
        })
    }

    /// Runs `f` on the backend's runtime. A failure the contract has no
    /// kind for may be a missing bucket or container (S3 and Azure answer
    /// a listing of one with a 404 that `object_store` keeps untyped): that
    /// is asked of the service, and said.
    fn run<T>(&self, f: impl std::future::Future<Output = Result<T, VaultError>>) -> Result<T, VaultError> {
        match self.rt.block_on(f) {
            Err(e @ VaultError::Cloud { .. }) => Err(self.explain(e)),
            r => r,
        }
    }

    fn explain(&self, e: VaultError) -> VaultError {
        match self.rt.block_on(self.service.bucket_exists(&self.client)) {
            Ok(false) => self.no_bucket(),
            _ => e,
        }
    }

    fn no_bucket(&self) -> VaultError {
        VaultError::Unsupported {
            location: self.location.clone(),
            why:
                "the bucket or container does not exist; create it first (README, \"Replicate to Azure Blob or S3\"): \
                  Lifeboat never creates one, because its settings (Object Lock, immutability, region) are its owner's"
                    .into(),
        }
    }

    /// The key of `kind/name` as text (for requests made by hand).
    pub(crate) fn key_of(&self, kind: Kind, name: &str) -> Result<String, VaultError> {
        self.key(kind, name).map(|k| k.as_ref().to_string())
    }

    /// The runtime the backend's requests run on.
    pub(crate) fn rt(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    /// The vault's URL (for messages).
    pub(crate) fn location_string(&self) -> String {
        self.location.clone()
    }

    /// The same backend sending streamed objects above `bytes` as multipart
    /// uploads (for tests of that path with small objects).
    pub fn with_multipart_above(mut self, bytes: usize) -> CloudBackend {
        self.multipart_above = bytes;
        self
    }

    /// The key of `kind/name`, the name checked as the local directory
    /// checks it.
    fn key(&self, kind: Kind, name: &str) -> Result<Key, VaultError> {
        check_name(name)?;
        if matches!(kind, Kind::Pack | Kind::Page) && (name.len() < 3 || name.contains('/')) {
            return Err(VaultError::BadName { name: name.into(), why: "pack and page names are single hex ids" });
        }
        let key = format!("{}{}/{}", self.root, kind.prefix(), name);
        Key::parse(&key).map_err(|_| VaultError::BadName { name: name.into(), why: "not a valid object key" })
    }

    /// The vault's error for a failed request about `kind/name`: the
    /// contract's kinds where the service said so, otherwise the cause
    /// (which never holds a credential: `object_store` redacts them).
    fn error(&self, kind: Kind, name: &str, what: &str, e: object_store::Error) -> VaultError {
        use object_store::Error as E;
        match e {
            // A write cannot miss its object: what is missing is the
            // bucket or container.
            E::NotFound { .. } if what != "read" && what != "delete" => self.no_bucket(),
            E::NotFound { .. } => VaultError::NotFound { kind, name: name.to_string() },
            E::AlreadyExists { .. } => VaultError::AlreadyExists { kind, name: name.to_string() },
            E::Precondition { .. } => VaultError::Conflict { kind, name: name.to_string() },
            E::PermissionDenied { source, .. } | E::Unauthenticated { source, .. } => VaultError::Refused {
                location: self.location.clone(),
                request: format!("{what} {kind}/{name}"),
                why: format!(
                    "{source}; check the credentials in the environment (AWS_* or AZURE_* variables, ~/.aws) and \
                     that they may {what} objects there"
                ),
            },
            // A store from before 2025 may not know CRC64NVME (MinIO and
            // Ceph RGW learnt it that year): its refusal names the checksum
            // header, or the functionality the header implies.
            other
                if self.crc64nvme
                    && matches!(what, "write" | "create" | "replace")
                    && refuses_checksum(&other.to_string()) =>
            {
                VaultError::Cloud {
                    location: self.location.clone(),
                    source: format!(
                        "{other}; the store may not know CRC64NVME upload checksums (S3-compatible stores from before \
                         2025): set AWS_CHECKSUM_ALGORITHM=sha256 to send a SHA-256 instead (README, \"Replicate to \
                         Azure Blob or S3\")"
                    )
                    .into(),
                }
            }
            other => match self.implicit_credentials {
                Some(hint) => VaultError::Cloud {
                    location: self.location.clone(),
                    source: format!("{hint}, and it failed: {other}").into(),
                },
                None => VaultError::Cloud { location: self.location.clone(), source: Box::new(other) },
            },
        }
    }

    fn put_mode(&self, kind: Kind, name: &str, data: PutPayload, mode: PutMode) -> Result<Version, VaultError> {
        let key = self.key(kind, name)?;
        let what = match mode {
            PutMode::Overwrite => "write",
            PutMode::Create => "create",
            PutMode::Update(_) => "replace",
        };
        let put = self.run(async {
            self.store.put_opts(&key, data, PutOptions::from(mode)).await.map_err(|e| self.error(kind, name, what, e))
        })?;
        Ok(Version::new(put.e_tag.unwrap_or_default()))
    }

    async fn head(&self, kind: Kind, name: &str) -> Result<Option<u64>, VaultError> {
        let key = self.key(kind, name)?;
        match self.store.head(&key).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(kind, name, "read", e)),
        }
    }

    fn short(kind: Kind, name: &str, size: u64, offset: u64, len: u64) -> VaultError {
        VaultError::ShortObject { kind, name: name.to_string(), size, offset, end: offset.saturating_add(len) }
    }
}

impl Backend for CloudBackend {
    fn put(&self, kind: Kind, name: &str, data: &[u8]) -> Result<(), VaultError> {
        self.put_mode(kind, name, Bytes::copy_from_slice(data).into(), PutMode::Overwrite).map(|_| ())
    }

    fn create(&self, kind: Kind, name: &str, data: &[u8]) -> Result<Version, VaultError> {
        self.put_mode(kind, name, Bytes::copy_from_slice(data).into(), PutMode::Create)
    }

    fn get_versioned(&self, kind: Kind, name: &str) -> Result<(Vec<u8>, Version), VaultError> {
        let key = self.key(kind, name)?;
        self.run(async {
            let got = self.store.get_opts(&key, GetOptions::default()).await;
            let got = got.map_err(|e| self.error(kind, name, "read", e))?;
            let version = Version::new(got.meta.e_tag.clone().unwrap_or_default());
            let bytes = got.bytes().await.map_err(|e| self.error(kind, name, "read", e))?;
            Ok((bytes.to_vec(), version))
        })
    }

    fn replace_if(&self, kind: Kind, name: &str, data: &[u8], version: &Version) -> Result<Version, VaultError> {
        let mode = PutMode::Update(UpdateVersion { e_tag: Some(version.as_str().to_string()), version: None });
        self.put_mode(kind, name, Bytes::copy_from_slice(data).into(), mode)
    }

    fn get(&self, kind: Kind, name: &str) -> Result<Vec<u8>, VaultError> {
        self.get_versioned(kind, name).map(|(data, _)| data)
    }

    fn get_range(&self, kind: Kind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, VaultError> {
        let key = self.key(kind, name)?;
        self.run(async {
            let size = || async {
                match self.head(kind, name).await? {
                    Some(size) => Ok(size),
                    None => Err(VaultError::NotFound { kind, name: name.to_string() }),
                }
            };
            let Some(end) = offset.checked_add(len).filter(|_| len > 0) else {
                // An empty range (no request can ask for one) or one past
                // u64: only the object's size can answer.
                let size = size().await?;
                return if len == 0 && offset <= size {
                    Ok(Vec::new())
                } else {
                    Err(Self::short(kind, name, size, offset, len))
                };
            };
            let options = GetOptions { range: Some(GetRange::Bounded(offset..end)), ..GetOptions::default() };
            let got = match self.store.get_opts(&key, options).await {
                Ok(got) => got,
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(VaultError::NotFound { kind, name: name.to_string() })
                }
                // A range starting past the end is refused (416): say so
                // with the object's size.
                Err(e) => {
                    let size = size().await?;
                    return Err(if end > size {
                        Self::short(kind, name, size, offset, len)
                    } else {
                        self.error(kind, name, "read", e)
                    });
                }
            };
            let size = got.meta.size;
            let bytes = got.bytes().await.map_err(|e| self.error(kind, name, "read", e))?;
            if (bytes.len() as u64) < len {
                return Err(Self::short(kind, name, size, offset, len));
            }
            Ok(bytes.to_vec())
        })
    }

    fn size(&self, kind: Kind, name: &str) -> Result<Option<u64>, VaultError> {
        self.run(self.head(kind, name))
    }

    /// S3: one GET with a suffix range, the tail and (from the answer) the
    /// object's size. Azure has no suffix ranges (`object_store` refuses
    /// them): the size, then the range.
    fn get_tail(&self, kind: Kind, name: &str, max_len: u64) -> Result<Option<(Vec<u8>, u64)>, VaultError> {
        let key = self.key(kind, name)?;
        if max_len == 0 || matches!(self.service, Service::Azure { .. }) {
            return vault::backend::tail_by_size(self, kind, name, max_len);
        }
        self.run(async {
            let options = GetOptions { range: Some(GetRange::Suffix(max_len)), ..GetOptions::default() };
            let got = match self.store.get_opts(&key, options).await {
                Ok(got) => got,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(self.error(kind, name, "read", e)),
            };
            let size = got.meta.size;
            let bytes = got.bytes().await.map_err(|e| self.error(kind, name, "read", e))?;
            if bytes.len() as u64 != size.min(max_len) {
                return Err(Self::short(kind, name, size, size.saturating_sub(max_len), max_len));
            }
            Ok(Some((bytes.to_vec(), size)))
        })
    }

    fn list(&self, kind: Kind, prefix: &str) -> Result<Vec<String>, VaultError> {
        // List from the deepest whole directory of the prefix: object
        // stores list by key prefix, `object_store` by directory.
        let dir = match prefix.rfind('/') {
            Some(at) => format!("{}{}/{}", self.root, kind.prefix(), &prefix[..at]),
            None => format!("{}{}", self.root, kind.prefix()),
        };
        let dir =
            Key::parse(&dir).map_err(|_| VaultError::BadName { name: prefix.into(), why: "not a valid prefix" })?;
        let strip = format!("{}{}/", self.root, kind.prefix());
        let mut names: Vec<String> = self.run(async {
            self.store
                .list(Some(&dir))
                .map_err(|e| self.error(kind, prefix, "list", e))
                .try_filter_map(|meta| {
                    let name = meta.location.as_ref().strip_prefix(strip.as_str()).map(str::to_string);
                    std::future::ready(Ok(name.filter(|n| n.starts_with(prefix))))
                })
                .try_collect()
                .await
        })?;
        names.sort();
        Ok(names)
    }

    fn delete(&self, kind: Kind, name: &str) -> Result<(), VaultError> {
        let key = self.key(kind, name)?;
        self.run(async {
            // S3 answers a delete of a missing key with success; the
            // contract says NotFound, so ask first (Azure says 404 itself).
            if self.head(kind, name).await?.is_none() {
                return Err(VaultError::NotFound { kind, name: name.to_string() });
            }
            match self.store.delete(&key).await {
                Ok(()) => Ok(()),
                // 409 to a delete: Azure's answer for a blob an
                // immutability policy keeps (S3 makes a delete marker).
                Err(object_store::Error::AlreadyExists { .. }) => {
                    Err(VaultError::Locked { location: self.location.clone(), kind, name: name.to_string() })
                }
                Err(e) => Err(self.error(kind, name, "delete", e)),
            }
        })
    }

    fn remove(&self, kind: Kind, name: &str) -> Result<(), VaultError> {
        let key = self.key(kind, name)?;
        self.run(async {
            // No question first: S3 deletes a missing key with success, and
            // Azure's 404 is what `remove` ignores.
            match self.store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(object_store::Error::AlreadyExists { .. }) => {
                    Err(VaultError::Locked { location: self.location.clone(), kind, name: name.to_string() })
                }
                Err(e) => Err(self.error(kind, name, "delete", e)),
            }
        })
    }

    fn missing(&self, kind: Kind, names: &[String]) -> Result<Vec<String>, VaultError> {
        // One existence check per name, many in flight: the cost is
        // O(names), never O(vault) as a listing would be.
        let found: Vec<Option<u64>> = self.run(
            futures_util::stream::iter(names.iter().map(|n| self.head(kind, n)))
                .buffered(HEADS_IN_FLIGHT)
                .try_collect(),
        )?;
        Ok(names.iter().zip(found).filter(|(_, size)| size.is_none()).map(|(n, _)| n.clone()).collect())
    }

    fn remote(&self) -> bool {
        true
    }

    /// What a listing page holds: S3's ListObjectsV2 returns 1,000 keys at
    /// most, Azure's List Blobs 5,000.
    fn list_page(&self) -> u64 {
        match self.service {
            Service::S3 { .. } => 1_000,
            Service::Azure { .. } => 5_000,
        }
    }

    /// S3 answers a suffix range with the object's size; Azure has none,
    /// and a tail is a HEAD and a range.
    fn tail_requests(&self) -> u64 {
        match self.service {
            Service::S3 { .. } => 1,
            Service::Azure { .. } => 2,
        }
    }

    /// `missing` sends one HEAD per name.
    fn missing_batch(&self) -> u64 {
        1
    }

    fn location(&self) -> String {
        self.location.clone()
    }

    fn protection(&self) -> Result<vault::Protection, VaultError> {
        use crate::protection::BucketProtection as B;
        Ok(match self.bucket_protection()? {
            B::None => vault::Protection::None {
                why: "the bucket has no Object Lock and the container no immutability policy: credentials that may \
                      delete objects can delete points"
                    .into(),
            },
            p @ B::ObjectLockWithoutDefault => vault::Protection::None { why: p.to_string() },
            p @ B::ObjectLock { days, .. } => vault::Protection::Retention { days: Some(days), detail: p.to_string() },
            p @ B::AzureImmutable => vault::Protection::Retention { days: None, detail: p.to_string() },
        })
    }

    /// S3: multipart uploads under the vault's prefix that a crash left
    /// open (never completed nor aborted), started more than `older_than`
    /// ago by the store's clock, are aborted; they are returned as
    /// `multipart upload of KEY (id ID)` with size 0 (their parts' sizes
    /// would cost a request each). Azure discards a blob's uncommitted
    /// blocks itself after 7 days: nothing to do.
    fn sweep_unfinished(
        &self,
        older_than: std::time::Duration,
        dry_run: bool,
    ) -> Result<Vec<(String, u64)>, VaultError> {
        if let Service::Azure { .. } = self.service {
            return Ok(Vec::new());
        }
        let failed = |e: crate::service::RequestFailed| VaultError::Unsupported {
            location: self.location.clone(),
            why: format!("collecting unfinished uploads: {e}"),
        };
        let (uploads, now) = self.rt.block_on(self.service.open_uploads(&self.client, &self.root)).map_err(failed)?;
        let mut swept = Vec::new();
        for u in abandoned(uploads, now, older_than, &self.root) {
            if !dry_run {
                self.rt.block_on(self.service.abort_upload(&self.client, &u.key, &u.id)).map_err(failed)?;
            }
            swept.push((format!("multipart upload of {} (id {})", u.key, u.id), 0));
        }
        Ok(swept)
    }

    fn extend_locks(&self, objects: &[(Kind, String)], min_days: u32, days: u32) -> Result<u64, VaultError> {
        match self.service {
            Service::S3 { .. } => self.extend_s3_locks(objects, min_days, days),
            // An Azure container's time-based policy counts from each
            // blob's creation and cannot be extended per blob with storage
            // credentials (version-level immutability can, but Azurite has
            // none to test it against): not done.
            Service::Azure { .. } => Ok(0),
        }
    }

    fn reads_in_flight(&self) -> usize {
        16
    }

    fn writes_in_flight(&self) -> usize {
        2
    }

    fn writer(&self, kind: Kind) -> Result<Option<Box<dyn ObjectWriter + '_>>, VaultError> {
        Ok(Some(Box::new(CloudWriter { backend: self, kind, pieces: Vec::new(), len: 0 })))
    }
}

/// Whether a failed upload's error text (which holds the store's answer)
/// reads as the store refusing its checksum: it names a checksum or CRC64,
/// or says a header implies something not implemented (S3's
/// `NotImplemented`).
fn refuses_checksum(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("checksum") || t.contains("crc64") || t.contains("notimplemented") || t.contains("not implemented")
}

/// Of `uploads` (listed at the store's time `now`), those of the vault's
/// own keys (under `root`, in a kind's directory: a bucket may hold others'
/// uploads) started more than `older_than` before `now`.
fn abandoned(
    uploads: Vec<crate::service::OpenUpload>,
    now: jiff::Timestamp,
    older_than: std::time::Duration,
    root: &str,
) -> Vec<crate::service::OpenUpload> {
    let age = jiff::SignedDuration::try_from(older_than).unwrap_or(jiff::SignedDuration::MAX);
    let ours = |key: &str| {
        key.strip_prefix(root)
            .and_then(|rest| rest.split_once('/'))
            .is_some_and(|(dir, _)| Kind::ALL.iter().any(|k| k.prefix() == dir))
    };
    uploads.into_iter().filter(|u| ours(&u.key) && now.duration_since(u.initiated) > age).collect()
}

/// A streamed object on its way up; see the module documentation.
struct CloudWriter<'a> {
    backend: &'a CloudBackend,
    kind: Kind,
    pieces: Vec<Bytes>,
    len: usize,
}

impl ObjectWriter for CloudWriter<'_> {
    fn write(&mut self, data: &[u8]) -> Result<(), VaultError> {
        self.pieces.push(Bytes::copy_from_slice(data));
        self.len += data.len();
        Ok(())
    }

    /// Creates the object where absent. A streamed object is named by its
    /// contents, so one already there under that name (this pack, sent
    /// before: a retried cycle, or a request whose answer was lost) is the
    /// same object, and is left as it is.
    fn commit(self: Box<Self>, name: &str) -> Result<(), VaultError> {
        let b = self.backend;
        let key = b.key(self.kind, name)?;
        let payload: PutPayload = self.pieces.into_iter().collect();
        let big = self.len > b.multipart_above;
        b.run(async {
            let r = if big {
                multipart(&*b.store, &key, payload).await
            } else {
                b.store.put_opts(&key, payload, PutOptions::from(PutMode::Create)).await.map(|_| ())
            };
            match r {
                Ok(()) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
                Err(e) => Err(b.error(self.kind, name, "create", e)),
            }
        })
    }
}

/// Sends `payload` as a multipart upload in parts of [`PART_SIZE`], all in
/// flight at once; aborted if a part fails.
async fn multipart(store: &dyn ObjectStore, key: &Key, payload: PutPayload) -> Result<(), object_store::Error> {
    let mut upload = store.put_multipart(key).await?;
    let mut parts = Vec::new();
    let mut part = Vec::new();
    let mut in_part = 0;
    for piece in &payload {
        let mut piece = piece.clone();
        while !piece.is_empty() {
            let take = (PART_SIZE - in_part).min(piece.len());
            part.push(piece.split_to(take));
            in_part += take;
            if in_part == PART_SIZE {
                parts.push(upload.put_part(std::mem::take(&mut part).into_iter().collect()));
                in_part = 0;
            }
        }
    }
    if !part.is_empty() {
        parts.push(upload.put_part(part.into_iter().collect()));
    }
    if let Err(e) = futures_util::future::try_join_all(parts).await {
        let _best_effort = upload.abort().await;
        return Err(e);
    }
    upload.complete().await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::OpenUpload;

    #[test]
    fn abandoned_uploads() {
        let now: jiff::Timestamp = "2026-12-06T12:00:00Z".parse().unwrap();
        let up = |key: &str, at: &str| OpenUpload { key: key.into(), id: "i".into(), initiated: at.parse().unwrap() };
        let uploads = vec![
            up("v/packs/old", "2026-12-04T12:00:00Z"),
            up("v/packs/new", "2026-12-06T11:00:00Z"),
            up("v/notours/old", "2026-12-01T00:00:00Z"),
            up("other/packs/old", "2026-12-01T00:00:00Z"),
            up("v2/packs/old", "2026-12-01T00:00:00Z"),
        ];
        let day = std::time::Duration::from_secs(86_400);
        let keys = |v: Vec<OpenUpload>| v.into_iter().map(|u| u.key).collect::<Vec<_>>();
        assert_eq!(keys(abandoned(uploads.clone(), now, day, "v/")), ["v/packs/old"]);
        assert_eq!(
            keys(abandoned(uploads.clone(), now, std::time::Duration::ZERO, "v/")),
            ["v/packs/old", "v/packs/new"]
        );
        // A vault at the bucket's root: only keys in its kinds' directories.
        assert_eq!(keys(abandoned(uploads, now, day, "")), Vec::<String>::new());
    }
}
