//! The backend trait: a dumb, durable object store.

use std::fmt;

use crate::error::VaultError;

/// What an object is; each kind has its own namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// The vault's configuration (one object, named `config`).
    Config,
    /// A pack of encrypted blocks, named by the hex of its content hash.
    Pack,
    /// A map page of a recovery point, named by the hex of its content hash.
    Page,
    /// A recovery point's root, named `DISK/SEQUENCE`.
    Root,
    /// Audit log segments.
    Audit,
    /// Leases: a restore, a cycle or a garbage collection in progress (see
    /// `lease.rs`).
    Lease,
}

impl Kind {
    /// Every kind, for listings and checks.
    pub const ALL: [Kind; 6] = [Kind::Config, Kind::Pack, Kind::Page, Kind::Root, Kind::Audit, Kind::Lease];

    /// The kind's directory or key prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            Kind::Config => "config",
            Kind::Pack => "packs",
            Kind::Page => "pages",
            Kind::Root => "roots",
            Kind::Audit => "audit",
            Kind::Lease => "leases",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix())
    }
}

/// Checks an object name: one or more `/`-separated parts of
/// `[A-Za-z0-9._-]`, none empty, `.` or `..`, none starting with `.`.
pub fn check_name(name: &str) -> Result<(), VaultError> {
    let bad = |why| Err(VaultError::BadName { name: name.to_string(), why });
    if name.is_empty() || name.len() > 200 {
        return bad("must be 1 to 200 characters");
    }
    for part in name.split('/') {
        if part.is_empty() || part.starts_with('.') {
            return bad("parts may not be empty or start with '.'");
        }
        if !part.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            return bad("only letters, digits, '.', '_', '-' and '/' are allowed");
        }
    }
    Ok(())
}

/// The version of an object as a backend read or wrote it: opaque to
/// callers, who only hand it back to [`Backend::replace_if`] and compare two
/// for equality. An object store's ETag, the vault server's `ETag` header,
/// and for the local directory a digest of the contents (see `local.rs`).
/// Versions of different objects, or from different backends, mean nothing
/// to each other.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version(String);

impl Version {
    /// A version from the backend's own tag (an ETag, a generation number).
    pub fn new(tag: impl Into<String>) -> Version {
        Version(tag.into())
    }

    /// The version of an object whose whole contents are `data`, for
    /// backends whose version is a digest of the contents (like an object
    /// store's ETag of a single-part upload): BLAKE3, 128 bits, in hex.
    pub fn of_contents(data: &[u8]) -> Version {
        let hash = blake3::hash(data);
        Version(format!("b3-{}", &hash.to_hex()[..32]))
    }

    /// The tag as the backend gave it (for an `If-Match` header).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What keeps a vault's objects from being deleted or overwritten, as its
/// store reports it (`lifeboat vault check` shows it; `vault init
/// --immutable` requires [`Protection::Retention`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protection {
    /// Nothing beyond access control: whoever may delete objects there can
    /// delete points. `why` says what the store is.
    None {
        /// What the store is and why it protects nothing by itself.
        why: String,
    },
    /// Protected hosts may not delete or replace anything (a vault server):
    /// only the site can.
    AppendOnly,
    /// The store itself keeps every object for at least `days` after it is
    /// written, whoever asks to delete it (S3 Object Lock's default
    /// retention, an Azure immutability policy). `days` is `None` when the
    /// store does not say (Azure's period is set in its management plane).
    Retention {
        /// The retention in days, if the store reports it.
        days: Option<u32>,
        /// How, in the store's terms.
        detail: String,
    },
}

impl fmt::Display for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protection::None { why } => write!(f, "none ({why})"),
            Protection::AppendOnly => f.write_str("append-only for protected hosts (only the site deletes)"),
            Protection::Retention { detail, .. } => f.write_str(detail),
        }
    }
}

/// A store of whole objects, keyed by kind and name.
///
/// Contract (checked for every implementation by the conformance suite in
/// `conformance.rs`, feature `conformance`, run by `tests/conformance.rs` and
/// by the vault server's tests in `site/tests/conformance.rs`):
/// - `put` is atomic and durable: when it returns, the whole object survives a
///   crash of the host; before, a reader sees the old object or none, never a
///   part. Putting an existing name replaces it atomically.
/// - `get`/`get_range` return exactly the bytes put, or `NotFound`; a range
///   past the end is `ShortObject`, never a short read.
/// - `list` returns every name of a kind under a prefix, sorted; names of
///   objects being written are never listed.
/// - `delete` of a missing object is `NotFound`.
/// - Names are checked with [`check_name`]; nothing escapes the vault.
/// - Conditional writes (see "Conditional writes" in docs/DESIGN-NOTES.md):
///   `create` stores an object only if none of that name exists
///   ([`VaultError::AlreadyExists`] otherwise, the existing object
///   untouched); `replace_if` replaces an object only if it is still at the
///   [`Version`] `get_versioned` or the last conditional write returned
///   ([`VaultError::Conflict`] otherwise, the object untouched). Both are
///   atomic against every other writer, in this process or any other,
///   on this host or another, and durable like `put`. They map directly onto
///   an object store's `PUT` with `If-None-Match: *` and `If-Match: ETAG`
///   (the `object_store` crate's `PutMode::Create` and
///   `PutMode::Update`), and onto the vault server's HTTP equivalents.
pub trait Backend: Send + Sync {
    /// Stores `data` as the object `kind/name`, atomically and durably.
    fn put(&self, kind: Kind, name: &str, data: &[u8]) -> Result<(), VaultError>;
    /// Stores `data` as the object `kind/name` only if no object of that
    /// name exists: create-if-absent, atomically and durably. Of several
    /// writers creating one name at once, exactly one succeeds; the others
    /// get [`VaultError::AlreadyExists`] and the winner's object is whole.
    /// Returns the new object's version (for a later [`Backend::replace_if`]).
    fn create(&self, kind: Kind, name: &str, data: &[u8]) -> Result<Version, VaultError>;
    /// Reads the whole object and the version it is at.
    fn get_versioned(&self, kind: Kind, name: &str) -> Result<(Vec<u8>, Version), VaultError>;
    /// Replaces the object `kind/name` with `data` only if it is still at
    /// `version` (replace-if-unchanged), atomically and durably; returns the
    /// new version. An object changed, replaced or deleted since `version`
    /// was read is [`VaultError::Conflict`], and is left as it is.
    fn replace_if(&self, kind: Kind, name: &str, data: &[u8], version: &Version) -> Result<Version, VaultError>;
    /// Reads the whole object.
    fn get(&self, kind: Kind, name: &str) -> Result<Vec<u8>, VaultError>;
    /// Reads `len` bytes at `offset`.
    fn get_range(&self, kind: Kind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, VaultError>;
    /// The object's size, or `None` if it does not exist.
    fn size(&self, kind: Kind, name: &str) -> Result<Option<u64>, VaultError>;
    /// The last `max_len` bytes of the object (all of it if shorter) and
    /// its whole size, or `None` if it does not exist: a pack's index and
    /// trailer. The default asks [`Backend::size`], then reads the range;
    /// a cloud store answers both with one suffix-range request.
    fn get_tail(&self, kind: Kind, name: &str, max_len: u64) -> Result<Option<(Vec<u8>, u64)>, VaultError> {
        tail_by_size(self, kind, name, max_len)
    }
    /// Names of all objects of `kind` whose name starts with `prefix`, sorted.
    fn list(&self, kind: Kind, prefix: &str) -> Result<Vec<String>, VaultError>;
    /// Removes the object.
    fn delete(&self, kind: Kind, name: &str) -> Result<(), VaultError>;
    /// Deletes the object if it is there; a missing object is not an error.
    /// For objects whose owner only needs them gone (a released lease): on
    /// an object store, whose delete succeeds for a missing key, it is one
    /// request where `delete` needs two (it asks first, to say `NotFound`).
    /// The default deletes and ignores `NotFound`.
    fn remove(&self, kind: Kind, name: &str) -> Result<(), VaultError> {
        match self.delete(kind, name) {
            Ok(()) | Err(VaultError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
    /// Whether each request is a network round trip (an object store, the
    /// vault server). Callers then send independent requests at once: a
    /// cycle takes its lease while it reads the newest point. The default,
    /// `false`, is for a local directory, whose requests are system calls
    /// taking microseconds; there callers keep their requests in one order,
    /// which the shipper's seeded simulation replays.
    fn remote(&self) -> bool {
        false
    }
    /// Removes the object from the vault's namespace at once — like
    /// `delete`, it is no longer listed or readable, and a missing object is
    /// `NotFound` — but may leave freeing its space to [`Backend::empty_trash`].
    /// Garbage collection discards under its lease, where every second holds
    /// off the cycles, and empties the trash after. It need not be durable:
    /// an object back after a crash is garbage the next collection finds
    /// again. The default deletes.
    fn discard(&self, kind: Kind, name: &str) -> Result<(), VaultError> {
        self.delete(kind, name)
    }
    /// Frees the space of every discarded object; returns how many and
    /// their bytes. Safe at any time, alongside anything else: nothing
    /// refers to a discarded object. The default (a backend whose `discard`
    /// deletes) has nothing to free.
    fn empty_trash(&self) -> Result<(u64, u64), VaultError> {
        Ok((0, 0))
    }
    /// Of `names` (objects of `kind`), those this backend does not hold, in
    /// the order given: one request to the vault server (which answers for
    /// what the asking host may read), whatever the count. The default asks
    /// [`Backend::size`] of each.
    fn missing(&self, kind: Kind, names: &[String]) -> Result<Vec<String>, VaultError> {
        let mut out = Vec::new();
        for name in names {
            if self.size(kind, name)?.is_none() {
                out.push(name.clone());
            }
        }
        Ok(out)
    }
    /// Where the vault is, for messages (a path or URL, never a secret).
    fn location(&self) -> String;
    /// What protects the objects against deletion, asked of the store now
    /// (see [`Protection`]). The default, a store that says nothing, is
    /// [`Protection::None`].
    fn protection(&self) -> Result<Protection, VaultError> {
        Ok(Protection::None { why: "the store reports no protection".into() })
    }
    /// For a store that locks each object for a time after its write
    /// ([`Protection::Retention`]): makes sure each of `objects` stays
    /// locked at least `min_days` more days, extending a lock that ends
    /// sooner to `days` days from now (the store's now, not this host's).
    /// Returns how many locks were extended. Garbage collection calls it
    /// with every object a point uses, so that a point stays protected
    /// however old the packs it shares are. The default, a store without
    /// locks, extends nothing.
    fn extend_locks(&self, objects: &[(Kind, String)], min_days: u32, days: u32) -> Result<u64, VaultError> {
        let _ = (objects, min_days, days);
        Ok(0)
    }
    /// Requests one [`Backend::get_tail`] sends, for counting requests: 1
    /// where the store answers a suffix range with the object's size (the
    /// default; S3, the vault server), 2 where it needs the size first
    /// (Azure: a HEAD, then the range).
    fn tail_requests(&self) -> u64 {
        1
    }
    /// Names one listing request returns at most, for counting requests
    /// ([`crate::counting`]): the vault server's page, 10,000 (the default);
    /// S3 pages at 1,000 and Azure at 5,000.
    fn list_page(&self) -> u64 {
        crate::counting::LIST_PAGE
    }
    /// Names one [`Backend::missing`] request asks about at most, for
    /// counting requests: the vault server's batch, 100,000 (the default);
    /// a cloud store sends one HEAD per name (1).
    fn missing_batch(&self) -> u64 {
        crate::counting::MISSING_PAGE
    }
    /// Reads worth keeping in flight at once for throughput (restore,
    /// instant recovery's background copy, failback's fetches), beyond
    /// what the readers' own threads give. A local directory: 1 (the
    /// default; a restore still runs a thread per core); a remote vault
    /// hides its round trip behind more.
    fn reads_in_flight(&self) -> usize {
        1
    }
    /// Streamed objects ([`Backend::writer`]) worth having in flight at
    /// once: a cycle streams the next pack while this many before it are
    /// still being committed. A local directory: 1 (the default; its
    /// writes go straight to the device, and a commit is two quick
    /// flushes); a vault server: 2, so that its fsyncs of one pack overlap
    /// the transfer of the next instead of stopping the stream.
    fn writes_in_flight(&self) -> usize {
        1
    }
    /// A writer that streams one object of `kind` to the store piece by
    /// piece and names it when complete, for objects too large to hold
    /// twice (packs). `None` (the default) means this backend has no such
    /// path; [`crate::Vault::object_writer`] then buffers the object and
    /// `put`s it. A streamed object obeys `put`'s contract: it is listed,
    /// readable and durable only once committed, whole.
    fn writer(&self, kind: Kind) -> Result<Option<Box<dyn ObjectWriter + '_>>, VaultError> {
        let _ = kind;
        Ok(None)
    }
    /// Objects whose writer never committed (its process died mid-write)
    /// and that were last written more than `older_than` ago: removed
    /// (unless `dry_run`) and returned with their sizes. The default, for a
    /// backend that leaves nothing unfinished behind, finds none.
    fn sweep_unfinished(
        &self,
        older_than: std::time::Duration,
        dry_run: bool,
    ) -> Result<Vec<(String, u64)>, VaultError> {
        let _ = (older_than, dry_run);
        Ok(Vec::new())
    }
}

/// [`Backend::get_tail`] in two requests: the size, then the range (the
/// default, and a store without suffix ranges).
pub fn tail_by_size<B: Backend + ?Sized>(
    b: &B,
    kind: Kind,
    name: &str,
    max_len: u64,
) -> Result<Option<(Vec<u8>, u64)>, VaultError> {
    let Some(len) = b.size(kind, name)? else { return Ok(None) };
    let n = len.min(max_len);
    match b.get_range(kind, name, len - n, n) {
        Ok(bytes) => Ok(Some((bytes, len))),
        // Gone between the two requests.
        Err(VaultError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Alignment at which an [`ObjectWriter`] may send data to the device
/// without copying it through the page cache (O_DIRECT): a piece whose
/// address and length are multiples of it, written at an offset that is.
pub const DIRECT_ALIGN: usize = 4096;

/// One object being written; see [`Backend::writer`]. Dropped without
/// [`commit`](ObjectWriter::commit), it leaves nothing behind.
pub trait ObjectWriter: Send {
    /// Appends `data`. A piece aligned to [`DIRECT_ALIGN`] (address, length
    /// and the bytes written before it) may go straight to the device.
    fn write(&mut self, data: &[u8]) -> Result<(), VaultError>;
    /// Makes everything written durable as the object `name`, atomically:
    /// like `put`, an existing object of that name is replaced whole.
    fn commit(self: Box<Self>, name: &str) -> Result<(), VaultError>;
}

/// The writer of a backend without a streaming path: collects the object in
/// memory and `put`s it on commit.
pub(crate) struct Buffered<'a> {
    pub backend: &'a dyn Backend,
    pub kind: Kind,
    pub data: Vec<u8>,
}

impl ObjectWriter for Buffered<'_> {
    fn write(&mut self, data: &[u8]) -> Result<(), VaultError> {
        self.data.extend_from_slice(data);
        Ok(())
    }
    fn commit(self: Box<Self>, name: &str) -> Result<(), VaultError> {
        self.backend.put(self.kind, name, &self.data)
    }
}

/// A boxed backend is a backend (so decorators such as
/// [`crate::counting::Counting`] wrap whatever an `Opener` returned). Every
/// method forwards, the provided ones too, so the box never falls back to a
/// default the backend inside overrides.
impl<B: Backend + ?Sized> Backend for Box<B> {
    fn put(&self, kind: Kind, name: &str, data: &[u8]) -> Result<(), VaultError> {
        (**self).put(kind, name, data)
    }
    fn create(&self, kind: Kind, name: &str, data: &[u8]) -> Result<Version, VaultError> {
        (**self).create(kind, name, data)
    }
    fn get_versioned(&self, kind: Kind, name: &str) -> Result<(Vec<u8>, Version), VaultError> {
        (**self).get_versioned(kind, name)
    }
    fn replace_if(&self, kind: Kind, name: &str, data: &[u8], version: &Version) -> Result<Version, VaultError> {
        (**self).replace_if(kind, name, data, version)
    }
    fn get(&self, kind: Kind, name: &str) -> Result<Vec<u8>, VaultError> {
        (**self).get(kind, name)
    }
    fn get_range(&self, kind: Kind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, VaultError> {
        (**self).get_range(kind, name, offset, len)
    }
    fn size(&self, kind: Kind, name: &str) -> Result<Option<u64>, VaultError> {
        (**self).size(kind, name)
    }
    fn get_tail(&self, kind: Kind, name: &str, max_len: u64) -> Result<Option<(Vec<u8>, u64)>, VaultError> {
        (**self).get_tail(kind, name, max_len)
    }
    fn list(&self, kind: Kind, prefix: &str) -> Result<Vec<String>, VaultError> {
        (**self).list(kind, prefix)
    }
    fn delete(&self, kind: Kind, name: &str) -> Result<(), VaultError> {
        (**self).delete(kind, name)
    }
    fn remove(&self, kind: Kind, name: &str) -> Result<(), VaultError> {
        (**self).remove(kind, name)
    }
    fn remote(&self) -> bool {
        (**self).remote()
    }
    fn discard(&self, kind: Kind, name: &str) -> Result<(), VaultError> {
        (**self).discard(kind, name)
    }
    fn empty_trash(&self) -> Result<(u64, u64), VaultError> {
        (**self).empty_trash()
    }
    fn missing(&self, kind: Kind, names: &[String]) -> Result<Vec<String>, VaultError> {
        (**self).missing(kind, names)
    }
    fn location(&self) -> String {
        (**self).location()
    }
    fn protection(&self) -> Result<Protection, VaultError> {
        (**self).protection()
    }
    fn extend_locks(&self, objects: &[(Kind, String)], min_days: u32, days: u32) -> Result<u64, VaultError> {
        (**self).extend_locks(objects, min_days, days)
    }
    fn tail_requests(&self) -> u64 {
        (**self).tail_requests()
    }
    fn list_page(&self) -> u64 {
        (**self).list_page()
    }
    fn missing_batch(&self) -> u64 {
        (**self).missing_batch()
    }
    fn reads_in_flight(&self) -> usize {
        (**self).reads_in_flight()
    }
    fn writes_in_flight(&self) -> usize {
        (**self).writes_in_flight()
    }
    fn writer(&self, kind: Kind) -> Result<Option<Box<dyn ObjectWriter + '_>>, VaultError> {
        (**self).writer(kind)
    }
    fn sweep_unfinished(
        &self,
        older_than: std::time::Duration,
        dry_run: bool,
    ) -> Result<Vec<(String, u64)>, VaultError> {
        (**self).sweep_unfinished(older_than, dry_run)
    }
}
