//! The vault proper: the config, and packs, map pages and point roots stored
//! through a [`Backend`] under the names FORMAT.md gives them.
//!
//! ```text
//! config/config                  the vault config (key fingerprint, never the key)
//! packs/HEX(PackId)              packs of sealed blocks
//! pages/HEX(PageId)              map pages
//! roots/CHAIN/SEQUENCE           point roots; SEQUENCE is 20 zero-padded digits,
//!                                so names sort in sequence order. CHAIN is the
//!                                disk's namespace (32 hex digits, a keyed id of
//!                                its identity: root format 2) or, for points
//!                                written before 2026-12-04, its name (format 1)
//! leases/...                     restores, cycles and garbage collections in
//!                                progress (see `lease.rs`)
//! ```
//!
//! Everything here names a chain as the vault does (the `disk` arguments):
//! [`crate::disks`] maps a disk's name and identity to its chains, with the
//! key. The shipper writes a point's packs, then its pages, then its root, each
//! durably ([`Backend::put`]), so a root in the vault means the whole point is
//! (invariant 4). Reading a root with the key verifies its MAC and that it is
//! stored under its own disk and sequence; reading one without the key
//! ([`Vault::points`], garbage collection, [`Vault::check`] without a key)
//! trusts nothing it says beyond listing.

use disk_format::{
    Cipher, Consistency, Keys, MapPage, Pack, PackId, PageId, Root, RootError, RootId, VaultConfig, VaultId,
};

use crate::backend::{check_name, Backend, Buffered, Kind, ObjectWriter};
use crate::error::{Damage, VaultError};
use crate::lease::HostIdentity;

/// The name of the vault config object.
pub const CONFIG_NAME: &str = "config";

/// The object name of point `sequence` of `disk`: `DISK/SEQUENCE`, the
/// sequence as 20 zero-padded digits.
pub fn root_name(disk: &str, sequence: u64) -> String {
    format!("{disk}/{sequence:020}")
}

/// Splits a root object name into disk and sequence; `None` for a name that
/// is not `DISK/` followed by exactly 20 digits.
pub fn parse_root_name(name: &str) -> Option<(&str, u64)> {
    let (disk, seq) = name.split_once('/')?;
    if disk.is_empty() || seq.len() != 20 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((disk, seq.parse().ok()?))
}

/// How a point is named in messages and [`crate::Problem`]s: `DISK/SEQUENCE`.
pub(crate) fn point_label(disk: &str, sequence: u64) -> String {
    format!("{disk}/{sequence}")
}

/// Checks that `disk` can name roots: a single object-name part (no `/`).
pub(crate) fn check_disk(disk: &str) -> Result<(), VaultError> {
    check_name(disk)?;
    if disk.contains('/') {
        return Err(VaultError::BadName { name: disk.to_string(), why: "a disk name may not contain '/'" });
    }
    Ok(())
}

/// One recovery point as listed by [`Vault::points`].
///
/// Read **without** the key ([`Root::decode_unauthenticated`]): these fields
/// are what the root says, not yet authenticated. Good for listing and
/// choosing a point; a restore of the point verifies the root's MAC before
/// using any of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointSummary {
    /// The point's sequence number.
    pub sequence: u64,
    /// The instant of the cut, nanoseconds since the Unix epoch.
    pub cut_time_ns: u64,
    /// Crash- or app-consistent.
    pub consistency: Consistency,
    /// Bytes of packs and pages this point added to the vault.
    pub bytes_shipped: u64,
    /// Disk size at the cut.
    pub disk_size: u64,
    /// Block size of the disk.
    pub block_size: u32,
    /// The root's object name (`CHAIN/SEQUENCE`, kind [`Kind::Root`]).
    pub root_name: String,
    /// The chain it is stored under (the namespace, or a format-1 disk name).
    pub chain: String,
    /// Why the root could not be read, if it is damaged (the other fields
    /// are then zero). A damaged point is listed, never restored or pruned.
    pub damage: Option<String>,
    /// The id of the group cut it was taken in with other disks, if any
    /// (read without the key; informational).
    pub cut_group: Option<[u8; 16]>,
    /// The identity of the disk the point was cut from (zero for a damaged
    /// root). Read without the key from a format-1 root; sealed in format 2,
    /// so zero here until [`crate::disks`] fills it in from the chain's
    /// identity. Two disks of one name have different identities.
    pub disk_id: [u8; 16],
}

/// A vault: a backend holding a valid vault config.
pub struct Vault {
    backend: Box<dyn Backend>,
    config: VaultConfig,
    /// Who this host is for leases; `None`: [`HostIdentity::current`] at each use.
    host: Option<HostIdentity>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Vault({}, id {})", self.backend.location(), self.config.vault_id)
    }
}

impl Vault {
    /// Makes `backend` a vault for `keys`: writes a new config holding the
    /// key's fingerprint (never the key). Refuses a backend that already has
    /// a config, or holds packs or roots without one. The config is created
    /// if absent ([`Backend::create`]): a second init of the same location,
    /// even one running at the same time, is refused
    /// ([`VaultError::AlreadyAVault`]). A later change of the config must go
    /// through [`Backend::replace_if`] from the version read, so that two
    /// writers never overwrite each other.
    ///
    /// The vault's blocks are sealed with [`Cipher::preferred`] on this
    /// machine; [`Vault::init_with_cipher`] chooses.
    pub fn init(backend: Box<dyn Backend>, keys: &Keys) -> Result<Vault, VaultError> {
        Vault::init_with_cipher(backend, keys, Cipher::preferred())
    }

    /// [`Vault::init`], sealing the vault's blocks with `cipher` (recorded
    /// in the config: every host protecting into the vault uses it).
    pub fn init_with_cipher(backend: Box<dyn Backend>, keys: &Keys, cipher: Cipher) -> Result<Vault, VaultError> {
        let location = backend.location();
        if backend.size(Kind::Config, CONFIG_NAME)?.is_some() {
            return Err(VaultError::AlreadyAVault { location });
        }
        for (kind, what) in [(Kind::Root, "point roots"), (Kind::Pack, "packs"), (Kind::Page, "map pages")] {
            if !backend.list(kind, "")?.is_empty() {
                return Err(VaultError::NotEmpty { location, what });
            }
        }
        let mut vault_id = [0u8; 16];
        getrandom::fill(&mut vault_id).map_err(|e| VaultError::Io {
            what: "drawing a random vault id for",
            path: location.clone().into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let created_unix = system::clock::now_ns() / 1_000_000_000;
        let config =
            VaultConfig { vault_id: VaultId(vault_id), created_unix, key_fingerprint: keys.fingerprint(), cipher };
        // Created, never overwritten: of two inits racing on one location,
        // one writes the config and the other is refused.
        match backend.create(Kind::Config, CONFIG_NAME, &config.encode()) {
            Ok(_) => {}
            Err(VaultError::AlreadyExists { .. }) => return Err(VaultError::AlreadyAVault { location }),
            Err(e) => return Err(e),
        }
        Ok(Vault { backend, config, host: None })
    }

    /// Opens the vault on `backend`: reads and checks its config.
    pub fn open(backend: Box<dyn Backend>) -> Result<Vault, VaultError> {
        let config = read_config(backend.as_ref())?;
        Ok(Vault { backend, config, host: None })
    }

    /// The same vault, judging leases as `host` (and writing leases that
    /// name it) instead of [`HostIdentity::current`]: for tests that play
    /// this host, another host, a rebooted host or a crashed process.
    #[must_use]
    pub fn with_host_identity(mut self, host: HostIdentity) -> Vault {
        self.host = Some(host);
        self
    }

    /// Who this host is, as leases are written and judged.
    pub fn host_identity(&self) -> HostIdentity {
        self.host.clone().unwrap_or_else(HostIdentity::current)
    }

    /// The vault config read at open.
    pub fn config(&self) -> &VaultConfig {
        &self.config
    }

    /// The backend.
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// Refuses a key that is not the one the vault was created with; the
    /// message names both fingerprints.
    pub fn check_key(&self, keys: &Keys) -> Result<(), VaultError> {
        self.config.check_key(keys).map_err(|source| VaultError::WrongKey { location: self.backend.location(), source })
    }

    /// Stores a finished pack durably under its id. The pack's structure
    /// (header, index, trailer) is checked first, and for a version 2 pack
    /// its name (BLAKE3 of header, index and trailer: cheap). The blobs'
    /// CRCs are not recomputed here; `check` verifies them.
    pub fn put_pack(&self, id: &PackId, bytes: &[u8]) -> Result<(), VaultError> {
        let invalid =
            |e: disk_format::PackError| VaultError::Invalid { object: format!("packs/{id}"), detail: e.to_string() };
        let pack = Pack::parse(bytes).map_err(invalid)?;
        if pack.index().version() == disk_format::pack::PackVersion::V2 {
            // Cheap for version 2: the name covers header, index and trailer only.
            pack.check_id(id).map_err(invalid)?;
        }
        self.backend.put(Kind::Pack, &id.to_string(), bytes)
    }

    /// A writer for one pack, streamed to the backend while the shipper
    /// builds it (no second copy of tens of MiB in memory; the local
    /// directory writes aligned pieces with O_DIRECT). Name it with
    /// [`Vault::commit_pack`] once [`disk_format::PackWriter::finish`] has
    /// written its index and trailer and computed its id; dropped instead,
    /// it leaves nothing behind. Unlike [`Vault::put_pack`] the structure is
    /// not parsed again here: the `PackWriter` that wrote it guarantees it,
    /// and `check` verifies every pack.
    pub fn pack_writer(&self) -> Result<Box<dyn ObjectWriter + '_>, VaultError> {
        Ok(match self.backend.writer(Kind::Pack)? {
            Some(w) => w,
            None => Box::new(Buffered { backend: self.backend.as_ref(), kind: Kind::Pack, data: Vec::new() }),
        })
    }

    /// Makes the pack written through `writer` durable under its id.
    pub fn commit_pack(&self, writer: Box<dyn ObjectWriter + '_>, id: &PackId) -> Result<(), VaultError> {
        writer.commit(&id.to_string())
    }

    /// Stores an encoded map page durably under its id, after checking that
    /// it hashes to the id and decodes.
    pub fn put_page(&self, id: &PageId, bytes: &[u8]) -> Result<(), VaultError> {
        let invalid = |detail: String| VaultError::Invalid { object: format!("pages/{id}"), detail };
        if !id.matches(bytes) {
            return Err(invalid(format!("the page hashes to {}, not to its id", PageId::of(bytes))));
        }
        MapPage::decode(bytes).map_err(|e| invalid(e.to_string()))?;
        self.backend.put(Kind::Page, &id.to_string(), bytes)
    }

    /// Stores map page `id` where it is not stored yet (create-if-absent:
    /// one request to a cloud vault, where asking first and then writing
    /// is two); whether it was written. Checked as [`Vault::put_page`].
    pub fn create_page(&self, id: &PageId, bytes: &[u8]) -> Result<bool, VaultError> {
        let invalid = |detail: String| VaultError::Invalid { object: format!("pages/{id}"), detail };
        if !id.matches(bytes) {
            return Err(invalid(format!("the page hashes to {}, not to its id", PageId::of(bytes))));
        }
        MapPage::decode(bytes).map_err(|e| invalid(e.to_string()))?;
        match self.backend.create(Kind::Page, &id.to_string(), bytes) {
            Ok(_) => Ok(true),
            // A page is named by its contents: the one there is this one.
            Err(VaultError::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether the map page `id` is stored.
    pub fn has_page(&self, id: &PageId) -> Result<bool, VaultError> {
        Ok(self.backend.size(Kind::Page, &id.to_string())?.is_some())
    }

    /// The bytes of map page `id`, unchecked: check them with
    /// [`MapPage::decode_expected`] or [`Root::check_page`] before use.
    pub fn get_page(&self, id: &PageId) -> Result<Vec<u8>, VaultError> {
        self.backend.get(Kind::Page, &id.to_string())
    }

    /// Stores a point's encoded root as `DISK/SEQUENCE`, durably. The shipper
    /// calls this last, after every pack and page of the point is stored. The
    /// root must decode (structurally) and name this disk and sequence. A
    /// root is created, never overwritten ([`Backend::create`]): if the point
    /// exists (another writer of the same chain stored it first, even at the
    /// same moment) this is [`VaultError::PointExists`] and the stored root is
    /// left as it is.
    pub fn put_root(&self, disk: &str, sequence: u64, bytes: &[u8]) -> Result<(), VaultError> {
        check_disk(disk)?;
        let name = root_name(disk, sequence);
        let invalid = |detail: String| VaultError::Invalid { object: format!("roots/{name}"), detail };
        let root = Root::decode_unauthenticated(bytes).map_err(|e| invalid(e.to_string()))?;
        if root.chain() != disk || root.sequence != sequence {
            return Err(invalid(format!("the root is point {}", point_label(&root.chain(), root.sequence))));
        }
        match self.backend.create(Kind::Root, &name, bytes) {
            Ok(_) => Ok(()),
            Err(VaultError::AlreadyExists { .. }) => {
                Err(VaultError::PointExists { disk: disk.to_string(), sequence, location: self.backend.location() })
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes point `sequence` of `disk` (its root only: what it alone
    /// referenced becomes garbage). For retention pruning.
    pub fn delete_root(&self, disk: &str, sequence: u64) -> Result<(), VaultError> {
        check_disk(disk)?;
        self.backend.delete(Kind::Root, &root_name(disk, sequence))
    }

    /// Reads point `sequence` of `disk`. With `keys`, checks the key against
    /// the vault and the root's MAC (use this for anything that trusts the
    /// root); with `None`, decodes it unauthenticated (listing and garbage
    /// collection only). Either way, a root whose contents name another disk
    /// or sequence than the name it is stored under is refused
    /// ([`Damage::Misplaced`]).
    pub fn load_root(&self, disk: &str, sequence: u64, keys: Option<&Keys>) -> Result<Root, VaultError> {
        self.load_root_with_id(disk, sequence, keys).map(|(root, _)| root)
    }

    /// [`Vault::load_root`], with the root's id (BLAKE3 of its stored bytes).
    pub fn load_root_with_id(
        &self,
        disk: &str,
        sequence: u64,
        keys: Option<&Keys>,
    ) -> Result<(Root, RootId), VaultError> {
        check_disk(disk)?;
        if let Some(keys) = keys {
            self.check_key(keys)?;
        }
        let name = root_name(disk, sequence);
        let bytes = match self.backend.get(Kind::Root, &name) {
            Err(VaultError::NotFound { .. }) => {
                return Err(VaultError::NoSuchPoint {
                    disk: disk.to_string(),
                    sequence,
                    location: self.backend.location(),
                })
            }
            other => other?,
        };
        let root = decode_root(&name, &bytes, keys).map_err(|(damage, detail)| VaultError::Damaged {
            point: point_label(disk, sequence),
            block: None,
            object: format!("roots/{name}"),
            damage,
            detail,
        })?;
        Ok((root, RootId::of(&bytes)))
    }

    /// The sequences of `disk`'s points, ascending (from the root names only).
    pub fn sequences(&self, disk: &str) -> Result<Vec<u64>, VaultError> {
        check_disk(disk)?;
        let prefix = format!("{disk}/");
        let mut seqs: Vec<u64> = self
            .backend
            .list(Kind::Root, &prefix)?
            .iter()
            .filter_map(|n| parse_root_name(n).filter(|(d, _)| *d == disk).map(|(_, s)| s))
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    }

    /// The disks that have at least one point in the vault, sorted.
    pub fn disks(&self) -> Result<Vec<String>, VaultError> {
        let mut disks: Vec<String> = self
            .backend
            .list(Kind::Root, "")?
            .iter()
            .filter_map(|n| parse_root_name(n).map(|(d, _)| d.to_string()))
            .collect();
        disks.sort();
        disks.dedup();
        Ok(disks)
    }

    /// The newest point of `disk` (highest sequence), read as
    /// [`Vault::load_root`] does, or `None` if the disk has no point.
    pub fn latest_root(&self, disk: &str, keys: Option<&Keys>) -> Result<Option<Root>, VaultError> {
        match self.sequences(disk)?.last() {
            None => Ok(None),
            Some(&seq) => self.load_root(disk, seq, keys).map(Some),
        }
    }

    /// Lists `disk`'s points in sequence order. Each root is decoded
    /// **without** the key (see [`PointSummary`]); a root that does not
    /// decode, or names another disk or sequence, is listed with its
    /// `damage`, so one damaged root never hides the other points.
    pub fn points(&self, disk: &str) -> Result<Vec<PointSummary>, VaultError> {
        self.sequences(disk)?
            .into_iter()
            .map(|seq| match self.load_root(disk, seq, None) {
                Ok(root) => Ok(PointSummary {
                    sequence: seq,
                    cut_time_ns: root.cut_time_ns,
                    consistency: root.consistency,
                    bytes_shipped: root.bytes_shipped,
                    disk_size: root.geometry.disk_size,
                    block_size: root.geometry.block_size,
                    root_name: root_name(disk, seq),
                    chain: disk.to_string(),
                    damage: None,
                    cut_group: disk_format::root_ext::cut_group_unauthenticated(&root.extension).map(|g| g.id),
                    disk_id: root.disk_id,
                }),
                Err(e @ VaultError::Damaged { .. }) => Ok(PointSummary {
                    sequence: seq,
                    cut_time_ns: 0,
                    consistency: Consistency::Crash,
                    bytes_shipped: 0,
                    disk_size: 0,
                    block_size: 0,
                    root_name: root_name(disk, seq),
                    chain: disk.to_string(),
                    damage: Some(e.to_string()),
                    cut_group: None,
                    disk_id: [0; 16],
                }),
                Err(e) => Err(e),
            })
            .collect()
    }
}

/// Reads and decodes the config of the vault on `backend`.
pub(crate) fn read_config(backend: &dyn Backend) -> Result<VaultConfig, VaultError> {
    let location = backend.location();
    let bytes = match backend.get(Kind::Config, CONFIG_NAME) {
        Err(VaultError::NotFound { .. }) => return Err(VaultError::NotAVault { location }),
        other => other?,
    };
    VaultConfig::decode(&bytes).map_err(|source| VaultError::BadConfig { location, source })
}

/// Decodes the root stored as `name` (with the MAC when `keys` is given) and
/// checks it is the point its name says. On failure: the kind of damage and
/// what was found.
pub(crate) fn decode_root(name: &str, bytes: &[u8], keys: Option<&Keys>) -> Result<Root, (Damage, String)> {
    let root = match keys {
        Some(keys) => Root::decode(bytes, keys),
        None => Root::decode_unauthenticated(bytes),
    }
    .map_err(|e| {
        let damage = if e == RootError::BadMac { Damage::Inauthentic } else { Damage::Corrupt };
        (damage, e.to_string())
    })?;
    let (disk, sequence) = parse_root_name(name).ok_or((Damage::Misplaced, "not a root name".to_string()))?;
    if root.chain() != disk || root.sequence != sequence {
        return Err((
            Damage::Misplaced,
            format!(
                "the root inside is point {} of chain {:?}: a root moved or swapped between disks or points is refused",
                root.sequence,
                root.chain()
            ),
        ));
    }
    Ok(root)
}
