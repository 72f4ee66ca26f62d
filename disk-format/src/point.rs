//! Point roots: the top of a recovery point's Merkle map.
//!
//! A root names the disk, the cut, and every map page of the point (by
//! [`PageId`], all-zero for an all-zero page), carries an extension blob
//! (the VM definition, cut group and audit head), and ends with a MAC keyed
//! by the root-MAC subkey. The vault can read a root's structure and follow
//! its page ids without the key ([`Root::decode_unauthenticated`], for GC
//! and keyless checks); anything that trusts a root's contents uses
//! [`Root::decode`], which verifies the MAC. A root is named by BLAKE3 of its
//! bytes ([`RootId`]). See FORMAT.md, "Point root".
//!
//! Format 2 (written since 2026-12-04) seals what names the disk: its name,
//! identity, host and cut generation are encrypted under the key, and the
//! root carries instead the disk's **namespace**, a keyed id of its identity
//! ([`Keys::disk_namespace`]) under which the vault stores its chain. What
//! stays readable without the key is what keyless checks and retention
//! need: sizes, sequence, cut time, bytes shipped and the links (parent and
//! page ids). Format 1 roots (name and identity in the clear) are still read.

use std::ops::Range;

use crate::codec::{first_nonzero, get_array, get_u32, get_u64, put_u32, put_u64, to_usize};
use crate::geometry::{Geometry, GeometryError};
use crate::ids::{PageId, RootId};
use crate::keys::Keys;
use crate::map_page::{page_blocks, page_count, MapPage, PageError};

/// First 8 bytes of BLAKE3("lifeboat point root v1").
pub const ROOT_MAGIC: [u8; 8] = [0x40, 0x55, 0xd8, 0xfc, 0x4f, 0xb8, 0x31, 0x66];
/// The root format this code writes (format 2 for a point whose pages are
/// all stored alone: see [`Root::page_packs`]).
pub const ROOT_VERSION: u16 = 3;
/// [`Root::page_pack_of`] for a page not in a page pack: an all-zero page,
/// or one stored alone as `pages/ID`.
pub const NO_PAGE_PACK: u32 = u32::MAX;
/// Length of the disk metadata a format-2 root seals (before sealing).
pub const METADATA_LEN: usize = 160;
/// Length of the sealed metadata after a format-2 root's header.
pub const SEALED_METADATA_LEN: usize = METADATA_LEN + crate::keys::SEAL_OVERHEAD;
/// Longest host name a root records, in bytes of UTF-8 (Linux's HOST_NAME_MAX).
pub const MAX_HOST_NAME: usize = 64;
/// Size of the fixed root header.
pub const ROOT_HEADER_LEN: usize = 192;
/// Longest disk name, in bytes of UTF-8.
pub const MAX_DISK_NAME: usize = 64;
/// Largest extension blob a root may carry.
pub const MAX_EXTENSION: u32 = 16 << 20;
/// Size of the MAC at the end of a root.
pub const MAC_LEN: usize = 32;
/// The shortest possible root: header, one page id, empty extension, MAC.
pub const MIN_ROOT_LEN: usize = ROOT_HEADER_LEN + 32 + 4 + MAC_LEN;

const AT_VERSION: usize = 8;
const AT_CONSISTENCY: usize = 10;
const AT_NAME_LEN: usize = 11;
const AT_PAGE_COUNT: usize = 12;
const AT_DISK_ID: usize = 16;
const AT_NAMESPACE: usize = 16; // format 2: where format 1 has the disk id
const AT_NAME: usize = 32;
const AT_SEQUENCE: usize = 96;
const AT_CUT_TIME: usize = 104;
const AT_CUT_GENERATION: usize = 112;
const AT_DISK_SIZE: usize = 120;
const AT_BLOCK_SIZE: usize = 128;
const AT_BYTES_SHIPPED: usize = 136;
const AT_PARENT: usize = 144;
const _: () = assert!(AT_NAME + MAX_DISK_NAME == AT_SEQUENCE && AT_PARENT + 32 + 16 == ROOT_HEADER_LEN);

/// How consistent a point is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// The disk as a power cut would have left it.
    Crash = 1,
    /// Taken while the guest agent had the file systems frozen.
    App = 2,
}

impl TryFrom<u8> for Consistency {
    type Error = RootError;
    fn try_from(v: u8) -> Result<Consistency, RootError> {
        match v {
            1 => Ok(Consistency::Crash),
            2 => Ok(Consistency::App),
            other => Err(RootError::BadField {
                field: "consistency",
                value: u64::from(other),
                why: "must be 1 (crash) or 2 (app)".to_string(),
            }),
        }
    }
}

/// Why a root was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RootError {
    /// Shorter than the smallest root.
    #[error("the point root is {len} bytes, shorter than the smallest root (260 bytes; truncated)")]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// Wrong magic.
    #[error("not a Lifeboat point root (wrong magic)")]
    BadMagic,
    /// A version this build does not know.
    #[error("point root format version {0} is not supported by this build (it knows versions 1 to 3)")]
    UnsupportedVersion(u16),
    /// The length does not match the page count and extension length.
    #[error(
        "the point root is {len} bytes; its page count and extension length make it {expected} (truncated or damaged)"
    )]
    LengthMismatch {
        /// Its length.
        len: usize,
        /// The length its fields imply (saturated on overflow).
        expected: u64,
    },
    /// The MAC does not verify.
    #[error(
        "the point root does not authenticate: it was altered, or the key given is not the key the point was made \
         with"
    )]
    BadMac,
    /// A field holds an impossible value.
    #[error("point root field {field} = {value} is invalid: {why}")]
    BadField {
        /// Field name as in FORMAT.md.
        field: &'static str,
        /// The value found.
        value: u64,
        /// What it should have been.
        why: String,
    },
    /// The disk size and block size are not a valid geometry.
    #[error("point root geometry is invalid: {0}")]
    Geometry(#[from] GeometryError),
    /// The disk name is too long or not UTF-8.
    #[error("the point root's disk name is invalid: {0}")]
    BadName(String),
    /// The host name is too long or not UTF-8.
    #[error("the point root's host name is invalid: {0}")]
    BadHost(String),
    /// The extension blob is larger than 16 MiB.
    #[error("the point root's extension is {len} bytes; at most 16 MiB is allowed")]
    ExtensionTooLarge {
        /// Its length.
        len: u64,
    },
}

/// A recovery point root.
///
/// For a format-2 root read **without** the key, the sealed fields
/// (`disk_id`, `disk_name`, `host`, `cut_generation`) read as zero and
/// empty: only [`Root::decode`] opens them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    /// Crash- or app-consistent.
    pub consistency: Consistency,
    /// Random identity of the disk (the state file's `disk_id`). Sealed in format 2.
    pub disk_id: [u8; 16],
    /// The protected disk's name, at most 64 bytes of UTF-8. Sealed in format 2.
    pub disk_name: String,
    /// The host that cut the point, at most 64 bytes of UTF-8; empty in
    /// format 1 (which did not record it). Sealed.
    pub host: String,
    /// Format 2: the disk's namespace as stored in the root (the chain it
    /// belongs to); `None` for format 1, whose chain is the disk name. Set
    /// by decoding; [`Root::encode`] derives it from `disk_id` and the key.
    pub namespace: Option<[u8; 16]>,
    /// Point sequence number, one higher than the parent's.
    pub sequence: u64,
    /// The instant of the cut, nanoseconds since the Unix epoch.
    pub cut_time_ns: u64,
    /// The state file's cut generation of this point's cut. Sealed in format 2.
    pub cut_generation: u64,
    /// Disk size and block size at the cut.
    pub geometry: Geometry,
    /// Bytes of packs and pages this point added to the vault.
    pub bytes_shipped: u64,
    /// The point this one was built on, if any.
    pub parent: Option<RootId>,
    /// One id per map page (`ceil(block_count / 512)`), zero for all-zero pages.
    pub pages: Vec<PageId>,
    /// Format 3: the page packs (named like pages, BLAKE3 of their bytes)
    /// that hold this point's pages, each at least once. Empty: every page
    /// is stored alone as `pages/ID` (format 1 and 2).
    pub page_packs: Vec<PageId>,
    /// Format 3: for each page, the index in `page_packs` of the pack that
    /// holds it, or [`NO_PAGE_PACK`] (an all-zero page, or one stored alone).
    /// Empty exactly when `page_packs` is.
    pub page_pack_of: Vec<u32>,
    /// Opaque extension blob (empty in v1 writers).
    pub extension: Vec<u8>,
}

impl Root {
    /// Serializes and MACs the root, in format 3 (format 2 when no page is
    /// in a page pack): the namespace is derived from `disk_id` under `keys`
    /// (the `namespace` field is ignored), and name, identity, host and cut
    /// generation are sealed.
    pub fn encode(&self, keys: &Keys) -> Result<Vec<u8>, RootError> {
        let version = if self.page_packs.is_empty() { 2 } else { 3 };
        let mut b = self.encode_unmacced(version, Some(keys))?;
        let mac = keys.root_mac(&b);
        b.extend_from_slice(mac.as_bytes());
        Ok(b)
    }

    /// Serializes the root in format 1 (name and identity in the clear, no
    /// host), as Lifeboat wrote before 2026-12-04. Only for tests that need a
    /// vault written by an older version; never for new points.
    #[doc(hidden)]
    pub fn encode_version_1_for_tests(&self, keys: &Keys) -> Result<Vec<u8>, RootError> {
        let mut b = self.encode_unmacced(1, None)?;
        let mac = keys.root_mac(&b);
        b.extend_from_slice(mac.as_bytes());
        Ok(b)
    }

    /// The chain this root belongs to, as the vault names it under `roots/`:
    /// format 2, the namespace in lowercase hex; format 1, the disk name.
    pub fn chain(&self) -> String {
        match &self.namespace {
            Some(ns) => namespace_hex(ns),
            None => self.disk_name.clone(),
        }
    }

    fn metadata(&self) -> Result<[u8; METADATA_LEN], RootError> {
        let (name, host) = (self.disk_name.as_bytes(), self.host.as_bytes());
        if name.len() > MAX_DISK_NAME {
            return Err(RootError::BadName(format!("{} bytes, at most 64", name.len())));
        }
        if host.len() > MAX_HOST_NAME {
            return Err(RootError::BadHost(format!("{} bytes, at most 64", host.len())));
        }
        let mut m = [0u8; METADATA_LEN];
        m[META_VERSION] = 1;
        m[META_NAME_LEN] = u8::try_from(name.len()).expect("at most 64");
        m[META_HOST_LEN] = u8::try_from(host.len()).expect("at most 64");
        m[META_DISK_ID..META_DISK_ID + 16].copy_from_slice(&self.disk_id);
        put_u64(&mut m, META_CUT_GENERATION, self.cut_generation);
        m[META_NAME..META_NAME + name.len()].copy_from_slice(name);
        m[META_HOST..META_HOST + host.len()].copy_from_slice(host);
        Ok(m)
    }

    fn encode_unmacced(&self, version: u16, keys: Option<&Keys>) -> Result<Vec<u8>, RootError> {
        let want = page_count(&self.geometry);
        if self.pages.len() as u64 != want {
            return Err(RootError::BadField {
                field: "page_count",
                value: self.pages.len() as u64,
                why: format!("the geometry has {want} pages"),
            });
        }
        let page_count = u32::try_from(want).map_err(|_| RootError::BadField {
            field: "page_count",
            value: want,
            why: "more than 2^32 - 1 pages: use a larger block size".to_string(),
        })?;
        let metadata = self.metadata()?; // checks name and host lengths for both versions
        if version == 3 {
            check_page_packs(&self.pages, &self.page_packs, &self.page_pack_of)?;
        } else if !self.page_packs.is_empty() || !self.page_pack_of.is_empty() {
            return Err(RootError::BadField {
                field: "page_pack_count",
                value: self.page_packs.len() as u64,
                why: format!("format {version} has no page packs"),
            });
        }
        let ext_len = u32::try_from(self.extension.len())
            .ok()
            .filter(|&l| l <= MAX_EXTENSION)
            .ok_or(RootError::ExtensionTooLarge { len: self.extension.len() as u64 })?;
        let mut b = vec![0u8; ROOT_HEADER_LEN];
        b[..8].copy_from_slice(&ROOT_MAGIC);
        b[AT_VERSION..AT_VERSION + 2].copy_from_slice(&version.to_le_bytes());
        b[AT_CONSISTENCY] = self.consistency as u8;
        put_u32(&mut b, AT_PAGE_COUNT, page_count);
        put_u64(&mut b, AT_SEQUENCE, self.sequence);
        put_u64(&mut b, AT_CUT_TIME, self.cut_time_ns);
        put_u64(&mut b, AT_DISK_SIZE, self.geometry.disk_size);
        put_u32(&mut b, AT_BLOCK_SIZE, self.geometry.block_size);
        put_u64(&mut b, AT_BYTES_SHIPPED, self.bytes_shipped);
        b[AT_PARENT..AT_PARENT + 32].copy_from_slice(&self.parent.unwrap_or(RootId::ZERO).0);
        b.reserve(
            SEALED_METADATA_LEN
                + self.pages.len() * 36
                + 4
                + self.page_packs.len() * 32
                + 4
                + self.extension.len()
                + MAC_LEN,
        );
        match keys {
            Some(keys) => {
                b[AT_NAMESPACE..AT_NAME].copy_from_slice(&keys.disk_namespace(&self.disk_id));
                let sealed = keys.seal_root_metadata(&b[..ROOT_HEADER_LEN], &metadata);
                debug_assert_eq!(sealed.len(), SEALED_METADATA_LEN);
                b.extend_from_slice(&sealed);
            }
            None => {
                let name = self.disk_name.as_bytes();
                b[AT_NAME_LEN] = u8::try_from(name.len()).expect("checked above");
                b[AT_DISK_ID..AT_NAME].copy_from_slice(&self.disk_id);
                b[AT_NAME..AT_NAME + name.len()].copy_from_slice(name);
                put_u64(&mut b, AT_CUT_GENERATION, self.cut_generation);
            }
        }
        for p in &self.pages {
            b.extend_from_slice(&p.0);
        }
        if version == 3 {
            let count = u32::try_from(self.page_packs.len()).expect("at most one per page, checked");
            b.extend_from_slice(&count.to_le_bytes());
            for p in &self.page_packs {
                b.extend_from_slice(&p.0);
            }
            for slot in &self.page_pack_of {
                b.extend_from_slice(&slot.to_le_bytes());
            }
        }
        b.extend_from_slice(&ext_len.to_le_bytes());
        b.extend_from_slice(&self.extension);
        Ok(b)
    }

    /// Parses a root and verifies its MAC under `keys`. A root that was
    /// altered in any way, or made with another key, is [`RootError::BadMac`]
    /// (or a structural error when the alteration breaks its framing).
    pub fn decode(bytes: &[u8], keys: &Keys) -> Result<Root, RootError> {
        let body_len = frame(bytes)?;
        let mac = blake3::Hash::from(get_array::<MAC_LEN>(bytes, body_len));
        if keys.root_mac(&bytes[..body_len]) != mac {
            return Err(RootError::BadMac);
        }
        let mut root = parse_fields(bytes, body_len)?;
        if let Some(namespace) = root.namespace {
            let sealed = &bytes[ROOT_HEADER_LEN..ROOT_HEADER_LEN + SEALED_METADATA_LEN];
            let plain =
                keys.open_root_metadata(&bytes[..ROOT_HEADER_LEN], sealed).ok_or_else(|| RootError::BadField {
                    field: "metadata",
                    value: 0,
                    why: "the sealed metadata does not open under the key that authenticates the root".into(),
                })?;
            parse_metadata(&plain, &mut root)?;
            if keys.disk_namespace(&root.disk_id) != namespace {
                return Err(RootError::BadField {
                    field: "namespace",
                    value: 0,
                    why: "it is not the namespace of the disk identity the root seals".into(),
                });
            }
        }
        Ok(root)
    }

    /// Parses a root **without verifying its MAC**: for the vault's garbage
    /// collection and keyless structure checks, which only follow page ids
    /// (and would at worst keep too much). Nothing read this way may be
    /// trusted for a restore.
    pub fn decode_unauthenticated(bytes: &[u8]) -> Result<Root, RootError> {
        let body_len = frame(bytes)?;
        parse_fields(bytes, body_len)
    }

    /// The page pack that holds page `index` (format 3), or `None`: the
    /// page is all zero or stored alone as `pages/ID`.
    pub fn page_pack(&self, index: u64) -> Option<&PageId> {
        let slot = *usize::try_from(index).ok().and_then(|i| self.page_pack_of.get(i))?;
        self.page_packs.get(slot as usize)
    }

    /// The blocks map page `index` covers.
    pub fn page_blocks(&self, index: u64) -> Range<u64> {
        page_blocks(&self.geometry, index)
    }

    /// Checks a fetched map page for page `index` of this point (id, format,
    /// place). Not for a zero page id, which names no stored page.
    pub fn check_page(&self, index: u64, bytes: &[u8]) -> Result<MapPage, PageError> {
        let id = usize::try_from(index).ok().and_then(|i| self.pages.get(i)).copied().unwrap_or(PageId::ZERO);
        MapPage::decode_expected(bytes, &id, &self.geometry, index)
    }
}

/// Checks magic, version and that the length matches the page count and
/// extension length. Returns the length of everything before the MAC.
fn frame(b: &[u8]) -> Result<usize, RootError> {
    if b.len() < MIN_ROOT_LEN {
        return Err(RootError::TooShort { len: b.len() });
    }
    if b[..8] != ROOT_MAGIC {
        return Err(RootError::BadMagic);
    }
    let version = u16::from_le_bytes([b[AT_VERSION], b[AT_VERSION + 1]]);
    if !(1..=3).contains(&version) {
        return Err(RootError::UnsupportedVersion(version));
    }
    let page_count = u64::from(get_u32(b, AT_PAGE_COUNT));
    let mut pages_end = pages_start(version) as u64 + 32 * page_count;
    let mismatch = |expected: u64| RootError::LengthMismatch { len: b.len(), expected };
    if version == 3 {
        // The page pack section: count, pack ids, one slot per page.
        if pages_end + 4 > b.len() as u64 {
            return Err(mismatch(pages_end + 4 + 4 * page_count + 4 + MAC_LEN as u64));
        }
        let packs = u64::from(get_u32(b, to_usize(pages_end)));
        pages_end += 4 + 32 * packs + 4 * page_count;
    }
    if pages_end + 4 + MAC_LEN as u64 > b.len() as u64 {
        return Err(mismatch(pages_end + 4 + MAC_LEN as u64));
    }
    let ext_len = get_u32(b, to_usize(pages_end));
    let expected = pages_end + 4 + u64::from(ext_len) + MAC_LEN as u64;
    if expected != b.len() as u64 {
        return Err(mismatch(expected));
    }
    if ext_len > MAX_EXTENSION {
        return Err(RootError::ExtensionTooLarge { len: u64::from(ext_len) });
    }
    Ok(b.len() - MAC_LEN)
}

/// Checks a format-3 page pack section: at least one pack, no pack twice,
/// each named by some page, one slot per page in range, and a zero page in
/// none.
fn check_page_packs(pages: &[PageId], packs: &[PageId], slots: &[u32]) -> Result<(), RootError> {
    let bad = |field: &'static str, value: u64, why: String| RootError::BadField { field, value, why };
    if packs.is_empty() {
        return Err(bad("page_pack_count", 0, "format 3 names at least one page pack (else it is format 2)".into()));
    }
    if slots.len() != pages.len() {
        return Err(bad("page_pack_of", slots.len() as u64, format!("one per page: {}", pages.len())));
    }
    let mut used = vec![false; packs.len()];
    for (p, (&slot, id)) in slots.iter().zip(pages).enumerate() {
        if slot == NO_PAGE_PACK {
            continue;
        }
        if id.is_zero() {
            return Err(bad("page_pack_of", u64::from(slot), format!("page {p} is all zero and stored nowhere")));
        }
        match used.get_mut(slot as usize) {
            Some(u) => *u = true,
            None => return Err(bad("page_pack_of", u64::from(slot), format!("page {p}: {} packs", packs.len()))),
        }
    }
    if let Some(unused) = used.iter().position(|u| !u) {
        return Err(bad("page_packs", unused as u64, "a page pack no page is in".into()));
    }
    let distinct: std::collections::HashSet<&PageId> = packs.iter().collect();
    if distinct.len() != packs.len() {
        return Err(bad("page_packs", packs.len() as u64, "a page pack is named twice".into()));
    }
    Ok(())
}

/// Where the page ids start: after the header, and in formats 2 and 3
/// after the sealed metadata.
fn pages_start(version: u16) -> usize {
    if version == 1 {
        ROOT_HEADER_LEN
    } else {
        ROOT_HEADER_LEN + SEALED_METADATA_LEN
    }
}

/// The namespace as the vault names its chain: 32 lowercase hex digits.
pub fn namespace_hex(ns: &[u8; 16]) -> String {
    crate::ids::hex(ns)
}

const META_VERSION: usize = 0;
const META_NAME_LEN: usize = 1;
const META_HOST_LEN: usize = 2;
const META_DISK_ID: usize = 8;
const META_CUT_GENERATION: usize = 24;
const META_NAME: usize = 32;
const META_HOST: usize = 96;
const _: () = assert!(META_NAME + MAX_DISK_NAME == META_HOST && META_HOST + MAX_HOST_NAME == METADATA_LEN);

/// Checks an opened format-2 metadata block and fills the sealed fields.
fn parse_metadata(m: &[u8], root: &mut Root) -> Result<(), RootError> {
    let bad = |field: &'static str, value: u64, why: &str| RootError::BadField { field, value, why: why.into() };
    if m.len() != METADATA_LEN {
        return Err(bad("metadata", m.len() as u64, "the metadata must be 160 bytes"));
    }
    if m[META_VERSION] != 1 {
        return Err(bad("metadata version", u64::from(m[META_VERSION]), "must be 1"));
    }
    if let Some(at) = first_nonzero(m, META_HOST_LEN + 1..META_DISK_ID) {
        return Err(bad("metadata reserved", u64::from(m[at]), "must be zero"));
    }
    let text = |len_at: usize, at: usize, max: usize, what: fn(String) -> RootError| {
        let len = usize::from(m[len_at]);
        if len > max {
            return Err(what(format!("length {len}, at most {max}")));
        }
        if let Some(z) = first_nonzero(m, at + len..at + max) {
            return Err(what(format!("metadata byte {z} past its length must be zero")));
        }
        std::str::from_utf8(&m[at..at + len]).map(str::to_string).map_err(|e| what(format!("not UTF-8: {e}")))
    };
    root.disk_name = text(META_NAME_LEN, META_NAME, MAX_DISK_NAME, RootError::BadName)?;
    root.host = text(META_HOST_LEN, META_HOST, MAX_HOST_NAME, RootError::BadHost)?;
    root.disk_id = get_array(m, META_DISK_ID);
    root.cut_generation = get_u64(m, META_CUT_GENERATION);
    Ok(())
}

/// Decodes and checks every field of a framed root that can be read
/// without the key (for format 2, the sealed fields stay zero and empty).
fn parse_fields(b: &[u8], body_len: usize) -> Result<Root, RootError> {
    let version = u16::from_le_bytes([b[AT_VERSION], b[AT_VERSION + 1]]);
    let consistency = Consistency::try_from(b[AT_CONSISTENCY])?;
    let (disk_id, disk_name, cut_generation, namespace) = if version == 1 {
        let name_len = usize::from(b[AT_NAME_LEN]);
        if name_len > MAX_DISK_NAME {
            return Err(RootError::BadName(format!("length {name_len}, at most 64")));
        }
        if let Some(at) = first_nonzero(b, AT_NAME + name_len..AT_SEQUENCE) {
            return Err(RootError::BadName(format!("byte {at} past the name's length must be zero")));
        }
        let disk_name = std::str::from_utf8(&b[AT_NAME..AT_NAME + name_len])
            .map_err(|e| RootError::BadName(format!("not UTF-8: {e}")))?
            .to_string();
        (get_array(b, AT_DISK_ID), disk_name, get_u64(b, AT_CUT_GENERATION), None)
    } else {
        for (field, range) in [
            ("reserved (format 2)", AT_NAME_LEN..AT_NAME_LEN + 1),
            ("reserved (format 2)", AT_NAME..AT_SEQUENCE),
            ("reserved (format 2)", AT_CUT_GENERATION..AT_DISK_SIZE),
        ] {
            if let Some(at) = first_nonzero(b, range) {
                return Err(RootError::BadField {
                    field,
                    value: u64::from(b[at]),
                    why: format!("byte {at} must be zero"),
                });
            }
        }
        ([0; 16], String::new(), 0, Some(get_array(b, AT_NAMESPACE)))
    };
    for (field, range) in
        [("reserved0", AT_BLOCK_SIZE + 4..AT_BYTES_SHIPPED), ("reserved1", AT_PARENT + 32..ROOT_HEADER_LEN)]
    {
        if let Some(at) = first_nonzero(b, range) {
            return Err(RootError::BadField { field, value: u64::from(b[at]), why: format!("byte {at} must be zero") });
        }
    }
    let geometry = Geometry::new(get_u64(b, AT_DISK_SIZE), u64::from(get_u32(b, AT_BLOCK_SIZE)))?;
    let count = get_u32(b, AT_PAGE_COUNT);
    let want = page_count(&geometry);
    if u64::from(count) != want {
        return Err(RootError::BadField {
            field: "page_count",
            value: u64::from(count),
            why: format!("a {}-byte disk of {}-byte blocks has {want} pages", geometry.disk_size, geometry.block_size),
        });
    }
    let start = pages_start(version);
    let mut pages_end = start + 32 * count as usize;
    let pages: Vec<PageId> = b[start..pages_end].chunks_exact(32).map(|c| PageId(get_array(c, 0))).collect();
    let (mut page_packs, mut page_pack_of) = (Vec::new(), Vec::new());
    if version == 3 {
        let packs = get_u32(b, pages_end) as usize;
        let ids_end = pages_end + 4 + 32 * packs;
        page_packs = b[pages_end + 4..ids_end].chunks_exact(32).map(|c| PageId(get_array(c, 0))).collect();
        pages_end = ids_end + 4 * count as usize;
        page_pack_of = b[ids_end..pages_end].chunks_exact(4).map(|c| get_u32(c, 0)).collect();
        check_page_packs(&pages, &page_packs, &page_pack_of)?;
    }
    let parent = RootId(get_array(b, AT_PARENT));
    Ok(Root {
        consistency,
        disk_id,
        disk_name,
        host: String::new(),
        namespace,
        sequence: get_u64(b, AT_SEQUENCE),
        cut_time_ns: get_u64(b, AT_CUT_TIME),
        cut_generation,
        geometry,
        bytes_shipped: get_u64(b, AT_BYTES_SHIPPED),
        parent: (!parent.is_zero()).then_some(parent),
        pages,
        page_packs,
        page_pack_of,
        extension: b[pages_end + 4..body_len].to_vec(),
    })
}

/// The key the root fuzz harness MACs with.
fn fuzz_keys() -> Keys {
    crate::keys::MasterKey::from_bytes([0x5a; 32]).keys()
}

/// Runs the root parsers on `data` the way the `root` fuzz target does. An
/// input accepted with the MAC must re-encode to the same bytes; one accepted
/// without it must agree with the authenticated decode on every field it can
/// read, and a format-1 root must re-encode (MAC aside) to the same bytes.
/// Returns whether the structure was accepted. Panics only on a real bug.
pub fn fuzz_root_bytes(data: &[u8]) -> bool {
    let keys = fuzz_keys();
    let authentic = Root::decode(data, &keys);
    let Ok(root) = Root::decode_unauthenticated(data) else {
        assert!(authentic.is_err(), "MAC-checked decode accepted what the structural decode refused");
        return false;
    };
    if root.namespace.is_none() {
        let again = root.encode_version_1_for_tests(&keys).expect("an accepted format-1 root encodes");
        assert_eq!(again[..again.len() - MAC_LEN], data[..data.len() - MAC_LEN], "root round trip");
        assert_eq!(Root::decode(&again, &keys).expect("own encoding authenticates"), root);
    }
    if let Ok(r) = authentic {
        let sealed_fields_cleared = Root {
            disk_id: root.disk_id,
            disk_name: root.disk_name.clone(),
            host: root.host.clone(),
            cut_generation: root.cut_generation,
            ..r.clone()
        };
        assert_eq!(sealed_fields_cleared, root, "the keyless decode disagrees with the keyed one");
        if r.namespace.is_some() {
            assert_eq!(r.encode(&keys).expect("an authentic root encodes"), data, "format-2/3 round trip");
        }
    }
    true
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test sizes are small
mod tests {
    use super::*;
    use crate::ids::BlockId;
    use crate::keys::MasterKey;
    use proptest::prelude::*;

    fn keys(seed: u8) -> Keys {
        MasterKey::from_bytes([seed; 32]).keys()
    }

    fn sample() -> Root {
        let geometry = Geometry::new(3 * 512 * 65536 + 100, 65536).unwrap(); // 4 pages
        Root {
            consistency: Consistency::App,
            disk_id: *b"disk-identity-01",
            disk_name: "web-01-système".to_string(),
            host: "hv-07.example".to_string(),
            namespace: None,
            sequence: 42,
            cut_time_ns: 1_790_000_000_123_456_789,
            cut_generation: 41,
            geometry,
            bytes_shipped: 123_456,
            parent: Some(RootId([9; 32])),
            pages: vec![PageId([1; 32]), PageId::ZERO, PageId([3; 32]), PageId([4; 32])],
            page_packs: Vec::new(),
            page_pack_of: Vec::new(),
            extension: b"ext".to_vec(),
        }
    }

    #[test]
    fn magic_is_derived_from_the_versioned_string() {
        assert_eq!(&blake3::hash(b"lifeboat point root v1").as_bytes()[..8], &ROOT_MAGIC);
    }

    /// `r` as a keyed decode of its format-2 encoding under `k` returns it.
    fn as_read(r: &Root, k: &Keys) -> Root {
        Root { namespace: Some(k.disk_namespace(&r.disk_id)), ..r.clone() }
    }

    #[test]
    fn round_trip() {
        let (k, r) = (keys(1), sample());
        let b = r.encode(&k).unwrap();
        assert_eq!(b.len(), 192 + 200 + 4 * 32 + 4 + 3 + 32);
        assert_eq!(Root::decode(&b, &k).unwrap(), as_read(&r, &k));
        assert_eq!(r.page_blocks(3), 1536..1537);
        let mut no_parent = r.clone();
        no_parent.parent = None;
        no_parent.extension.clear();
        let b = no_parent.encode(&k).unwrap();
        assert_eq!(Root::decode(&b, &k).unwrap(), as_read(&no_parent, &k));
    }

    #[test]
    fn format_2_seals_name_identity_host_and_generation_and_shows_the_rest() {
        let (k, r) = (keys(1), sample());
        let b = r.encode(&k).unwrap();
        for secret in [&b"web-01"[..], b"hv-07", b"disk-identity-01"] {
            assert!(!b.windows(secret.len()).any(|w| w == secret), "{:?} is readable in the root", secret);
        }
        let keyless = Root::decode_unauthenticated(&b).unwrap();
        assert_eq!((keyless.disk_name.as_str(), keyless.host.as_str(), keyless.disk_id), ("", "", [0; 16]));
        assert_eq!(keyless.cut_generation, 0);
        assert_eq!(keyless.namespace, Some(k.disk_namespace(b"disk-identity-01")));
        assert_eq!(keyless.chain(), namespace_hex(&k.disk_namespace(b"disk-identity-01")));
        assert_eq!(keyless.chain().len(), 32);
        assert_eq!((keyless.sequence, keyless.cut_time_ns, keyless.parent), (r.sequence, r.cut_time_ns, r.parent));
        assert_eq!((keyless.pages, keyless.geometry, keyless.extension), (r.pages.clone(), r.geometry, r.extension));
        // Another identity is another namespace; another key too.
        assert_ne!(k.disk_namespace(b"disk-identity-02"), k.disk_namespace(b"disk-identity-01"));
        assert_ne!(keys(2).disk_namespace(b"disk-identity-01"), k.disk_namespace(b"disk-identity-01"));
    }

    #[test]
    fn format_1_is_still_read_with_its_name_in_the_clear() {
        let (k, r) = (keys(1), sample());
        let b = r.encode_version_1_for_tests(&k).unwrap();
        assert_eq!(b.len(), 192 + 4 * 32 + 4 + 3 + 32);
        let v1 = Root { host: String::new(), ..r.clone() };
        assert_eq!(Root::decode(&b, &k).unwrap(), v1);
        assert_eq!(Root::decode_unauthenticated(&b).unwrap(), v1);
        assert_eq!(v1.chain(), "web-01-système");
    }

    #[test]
    fn a_root_whose_namespace_is_not_its_identitys_is_refused() {
        // A key holder's writer bug (or a forged root): the namespace in the
        // clear must be the one the sealed identity gives.
        let (k, r) = (keys(1), sample());
        let mut b = r.encode(&k).unwrap();
        b[AT_NAMESPACE] ^= 1;
        b.truncate(b.len() - MAC_LEN);
        // Re-seal the metadata under the changed header so only the namespace check can see it.
        let meta = r.metadata().unwrap();
        let sealed = k.seal_root_metadata(&b[..ROOT_HEADER_LEN], &meta);
        b[ROOT_HEADER_LEN..ROOT_HEADER_LEN + SEALED_METADATA_LEN].copy_from_slice(&sealed);
        let mac = k.root_mac(&b);
        b.extend_from_slice(mac.as_bytes());
        assert!(matches!(Root::decode(&b, &k), Err(RootError::BadField { field: "namespace", .. })));
    }

    #[test]
    fn wrong_key_and_every_flipped_bit_are_refused() {
        let (k, r) = (keys(1), sample());
        let b = r.encode(&k).unwrap();
        assert_eq!(Root::decode(&b, &keys(2)), Err(RootError::BadMac));
        for byte in 0..b.len() {
            for bit in 0..8 {
                let mut c = b.clone();
                c[byte] ^= 1 << bit;
                assert!(Root::decode(&c, &k).is_err(), "flip of byte {byte} bit {bit} accepted");
            }
        }
        // A flip inside a well-framed field is a MAC failure, whatever the field.
        let mut c = b.clone();
        c[AT_SEQUENCE] ^= 1;
        assert_eq!(Root::decode(&c, &k), Err(RootError::BadMac));
        assert_eq!(Root::decode_unauthenticated(&c).unwrap().sequence, 43);
    }

    #[test]
    fn structural_damage_is_named() {
        let (k, r) = (keys(1), sample());
        let b = r.encode(&k).unwrap();
        assert_eq!(Root::decode(&b[..100], &k), Err(RootError::TooShort { len: 100 }));
        assert!(matches!(Root::decode(&b[..b.len() - 1], &k), Err(RootError::LengthMismatch { .. })));
        let mut c = b.clone();
        c[AT_VERSION] = 9;
        assert_eq!(Root::decode(&c, &k), Err(RootError::UnsupportedVersion(9)));
        // Fields are checked even on an authentic root (a writer bug).
        let mut bad = r.clone();
        bad.pages.pop();
        assert!(matches!(bad.encode(&k), Err(RootError::BadField { field: "page_count", .. })));
        bad.disk_name = "x".repeat(65);
        bad.pages.push(PageId::ZERO);
        assert!(matches!(bad.encode(&k), Err(RootError::BadName(_))));
        bad.disk_name = "x".into();
        bad.host = "h".repeat(65);
        assert!(matches!(bad.encode(&k), Err(RootError::BadHost(_))));
        let mut c = r.encode_unmacced(2, Some(&k)).unwrap();
        c[AT_CONSISTENCY] = 3;
        let mac = k.root_mac(&c);
        c.extend_from_slice(mac.as_bytes());
        assert!(matches!(Root::decode(&c, &k), Err(RootError::BadField { field: "consistency", value: 3, .. })));
    }

    /// `sample` with pages 0 and 3 in one page pack, page 2 stored alone.
    fn in_page_packs() -> Root {
        Root {
            page_packs: vec![PageId([7; 32]), PageId([8; 32])],
            page_pack_of: vec![1, NO_PAGE_PACK, NO_PAGE_PACK, 0],
            ..sample()
        }
    }

    #[test]
    fn format_3_names_the_page_pack_of_each_page() {
        let (k, r) = (keys(1), in_page_packs());
        let b = r.encode(&k).unwrap();
        assert_eq!(u16::from_le_bytes([b[8], b[9]]), 3);
        assert_eq!(b.len(), sample().encode(&k).unwrap().len() + 4 + 2 * 32 + 4 * 4);
        let back = Root::decode(&b, &k).unwrap();
        assert_eq!(back, as_read(&r, &k));
        assert_eq!(back.page_pack(0), Some(&PageId([8; 32])));
        assert_eq!(back.page_pack(2), None);
        assert_eq!(back.page_pack(3), Some(&PageId([7; 32])));
        let keyless = Root::decode_unauthenticated(&b).unwrap();
        assert_eq!((keyless.page_packs, keyless.page_pack_of), (r.page_packs.clone(), r.page_pack_of.clone()));
        assert!(fuzz_root_bytes(&b));
        // Every flipped bit of the section is refused (MAC, or framing).
        let section = ROOT_HEADER_LEN + SEALED_METADATA_LEN + 4 * 32;
        for bit in section * 8..(section + 4 + 64 + 16) * 8 {
            let mut c = b.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(Root::decode(&c, &k).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn a_page_pack_section_that_does_not_add_up_is_refused() {
        let k = keys(1);
        let field = |r: Root| match r.encode(&k) {
            Err(RootError::BadField { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let r = in_page_packs();
        assert_eq!(field(Root { page_pack_of: vec![1, NO_PAGE_PACK, NO_PAGE_PACK], ..r.clone() }), "page_pack_of");
        assert_eq!(field(Root { page_pack_of: vec![1, 0, NO_PAGE_PACK, 0], ..r.clone() }), "page_pack_of"); // zero page
        assert_eq!(field(Root { page_pack_of: vec![2, NO_PAGE_PACK, NO_PAGE_PACK, 0], ..r.clone() }), "page_pack_of");
        assert_eq!(field(Root { page_pack_of: vec![1, NO_PAGE_PACK, NO_PAGE_PACK, 1], ..r.clone() }), "page_packs");
        let twice = Root { page_packs: vec![PageId([7; 32]), PageId([7; 32])], ..r.clone() };
        assert_eq!(field(twice), "page_packs");
        // An empty section is written as format 2, and a format-3 root without one is refused.
        let mut b = sample().encode_unmacced(2, Some(&k)).unwrap();
        b[8] = 3;
        let at = ROOT_HEADER_LEN + SEALED_METADATA_LEN + 4 * 32;
        b.splice(at..at, [0u8; 4 + 16]);
        let mac = k.root_mac(&b);
        b.extend_from_slice(mac.as_bytes());
        assert!(matches!(Root::decode(&b, &k), Err(RootError::BadField { field: "page_pack_count", .. })));
        assert!(matches!(r.encode_version_1_for_tests(&k), Err(RootError::BadField { .. })));
    }

    #[test]
    fn check_page_uses_the_roots_page_id() {
        let k = keys(1);
        let mut r = sample();
        let page = MapPage { first_block: 1536, entries: vec![BlockId([7; 32])] };
        let bytes = page.encode();
        r.pages[3] = PageId::of(&bytes);
        let r = Root::decode(&r.encode(&k).unwrap(), &k).unwrap();
        assert_eq!(r.check_page(3, &bytes).unwrap(), page);
        assert!(matches!(r.check_page(2, &bytes), Err(PageError::IdMismatch { .. })));
    }

    #[test]
    fn fuzz_harness_on_pseudo_random_input() {
        let mut rng = crate::codec::XorShift(0x1234_5678_9abc_def1);
        let good = sample().encode(&fuzz_keys()).unwrap();
        assert!(fuzz_root_bytes(&good));
        assert!(fuzz_root_bytes(&sample().encode_version_1_for_tests(&fuzz_keys()).unwrap()));
        let mut accepted = 0;
        for i in 0..3000 {
            let data = if i % 2 == 0 { rng.some_bytes(500) } else { rng.mutate(&good) };
            accepted += usize::from(fuzz_root_bytes(&data));
        }
        assert!(accepted > 0);
    }

    proptest! {
        #[test]
        fn round_trip_any(
            blocks in 1u64..5000,
            name in "[a-z0-9-]{0,64}",
            seq in any::<u64>(),
            time in any::<u64>(),
            shipped in any::<u64>(),
            ext in proptest::collection::vec(any::<u8>(), 0..100),
            app in any::<bool>(),
        ) {
            let geometry = Geometry::new(blocks * 4096 - 1, 4096).unwrap();
            let n = page_count(&geometry);
            let r = Root {
                consistency: if app { Consistency::App } else { Consistency::Crash },
                disk_id: [3; 16],
                disk_name: name,
                host: "h".into(),
                namespace: None,
                sequence: seq,
                cut_time_ns: time,
                cut_generation: seq / 2,
                geometry,
                bytes_shipped: shipped,
                parent: (seq % 2 == 0).then_some(RootId([seq as u8 | 1; 32])),
                pages: (0..n).map(|i| if i % 3 == 0 { PageId::ZERO } else { PageId([i as u8; 32]) }).collect(),
                page_packs: Vec::new(),
                page_pack_of: Vec::new(),
                extension: ext,
            };
            // Odd sequences: every other non-zero page in one of two page packs (format 3).
            let r = if seq % 2 == 1 && n > 1 {
                let slots: Vec<u32> = (0..n).map(|i| if i % 3 == 0 { NO_PAGE_PACK } else { (i % 2) as u32 }).collect();
                let used: Vec<PageId> = [PageId([0xa0; 32]), PageId([0xa1; 32])]
                    .into_iter()
                    .enumerate()
                    .filter(|(k, _)| slots.contains(&(*k as u32)))
                    .map(|(_, id)| id)
                    .collect();
                let renumber: Vec<u32> = slots
                    .iter()
                    .map(|&s| if s == NO_PAGE_PACK || used.len() == 2 { s } else { 0 })
                    .collect();
                Root { page_packs: used, page_pack_of: renumber, ..r }
            } else {
                r
            };
            let k = keys(7);
            let b = r.encode(&k).unwrap();
            prop_assert_eq!(Root::decode(&b, &k).unwrap(), as_read(&r, &k));
            prop_assert!(fuzz_root_bytes(&b));
        }
    }
}
