//! `check`: scrub the whole vault and report every problem found, by name.
//!
//! Without the key (anyone holding the vault can run it):
//! - the config decodes;
//! - every pack's index parses and its bytes hash to its name;
//! - every map page hashes to its name and decodes; every page pack hashes to
//!   its name, its index parses, and each page in it hashes to its own id and
//!   decodes;
//! - every root decodes (unauthenticated) and is stored under its own disk and
//!   sequence; every page it names exists (alone, or in the page pack the root
//!   says), is sound and covers the blocks the
//!   root needs there; every block a page names is in some pack, with the
//!   length the disk's geometry gives the block.
//!
//! With the key, also: every root's MAC, and every blob of every pack opens
//! (AEAD tag with the block id as AAD, plaintext hashing to the id), so every
//! block of every point is known to be restorable.
//!
//! Each object is read once: packs whole (one at a time), pages and roots
//! whole; what a point needs is then looked up in what was found. Problems
//! are collected, not returned as the first error; a point with many damaged
//! blocks reports the first [`BLOCK_PROBLEMS_PER_POINT`] and a count.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

use disk_format::page_pack::is_page_pack;
use disk_format::{BlockId, Keys, MapPage, Pack, PackError, PackId, PageId, PagePack};

use crate::backend::Kind;
use crate::error::VaultError;
use crate::index::BlockIndex;
use crate::progress::Progress;
use crate::store::{decode_root, parse_root_name, point_label, read_config, root_name, Vault};

/// At most this many block-level problems are listed per point.
pub const BLOCK_PROBLEMS_PER_POINT: usize = 20;

/// One thing wrong with the vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The object, as `KIND/NAME`: `config/config`, `packs/ab12…`,
    /// `pages/cd34…`, `roots/web/00000000000000000007`.
    pub object: String,
    /// The point concerned, as `DISK/SEQUENCE`, if any.
    pub point: Option<String>,
    /// The block index in that point's disk, if one block is concerned.
    pub block: Option<u64>,
    /// What is wrong.
    pub detail: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(point) = &self.point {
            write!(f, "point {point}")?;
            if let Some(block) = self.block {
                write!(f, ", block {block}")?;
            }
            f.write_str(": ")?;
        }
        write!(f, "{}: {}", self.object, self.detail)
    }
}

/// What [`Vault::check`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Packs read.
    pub packs: u64,
    /// Map pages read.
    pub pages: u64,
    /// Roots read.
    pub roots: u64,
    /// Blobs opened and authenticated with the key (0 without the key).
    pub blocks_verified: u64,
    /// Everything wrong, in the order found.
    pub problems: Vec<Problem>,
}

impl CheckReport {
    /// Whether no problem was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, object: String, point: Option<&str>, block: Option<u64>, detail: String) {
        self.problems.push(Problem { object, point: point.map(str::to_string), block, detail });
    }
}

/// Blocks whose blob does not open: the pack and what was wrong.
type BadBlocks = HashMap<BlockId, (PackId, String)>;

/// What the page pass found: each page by (the object holding it, its id);
/// a page stored alone is its own holder.
#[derive(Default)]
struct Pages {
    found: HashMap<(PageId, PageId), Result<PageInfo, String>>,
    /// Page packs whose index does not parse, with why.
    broken_packs: HashMap<PageId, String>,
}

/// What the page pass learnt about one stored page.
struct PageInfo {
    blocks: Range<u64>,
    /// Slots naming a block that is missing or does not open: (slot, object, detail).
    bad: Vec<(u16, String, String)>,
    /// The stored plaintext length most non-zero slots have.
    usual_len: u32,
    /// Non-zero slots whose stored length differs from `usual_len`.
    odd_lens: Vec<(u16, u32)>,
    /// Which slots are non-zero and located (bit per slot).
    located: [u64; 8],
}

impl Vault {
    /// Scrubs the vault (see the module documentation). With `keys`, the key
    /// is checked against the vault first (a wrong key is an error, not a
    /// problem per object). `progress` counts packs, pages and roots
    /// (a phase each). Only backend failures are errors; everything wrong
    /// with the vault's contents is in [`CheckReport::problems`].
    pub fn check(&self, keys: Option<&Keys>, progress: &mut dyn Progress) -> Result<CheckReport, VaultError> {
        if let Some(keys) = keys {
            self.check_key(keys)?;
        }
        // Roots are listed first: a point's packs and pages were stored
        // before its root, so everything a listed root names was there when
        // the packs and pages are listed below, even while a shipper adds
        // points.
        let roots = self.backend().list(Kind::Root, "")?;
        let mut report = CheckReport::default();
        match read_config(self.backend()) {
            Ok(c) if c == *self.config() => {}
            Ok(_) => report.problem("config/config".into(), None, None, "the config changed while open".into()),
            Err(e) => report.problem("config/config".into(), None, None, e.to_string()),
        }
        let (index, bad_blocks) = self.check_packs(keys, &mut report, progress)?;
        let pages = self.check_pages(&index, &bad_blocks, &mut report, progress)?;
        self.check_roots(&roots, keys, &pages, &mut report, progress)?;
        Ok(report)
    }

    /// Reads every pack whole: name, structure, hash; with the key, opens
    /// every blob. Returns the block index of the packs that parse, and the
    /// blocks whose blob does not open.
    fn check_packs(
        &self,
        keys: Option<&Keys>,
        report: &mut CheckReport,
        progress: &mut dyn Progress,
    ) -> Result<(BlockIndex, BadBlocks), VaultError> {
        let mut index = BlockIndex::new();
        let mut bad_blocks = HashMap::new();
        let names = self.backend().list(Kind::Pack, "")?;
        progress.start("checking packs", names.len() as u64);
        // Where compressed blocks are inflated to be checked (with the key).
        let mut inflated = if keys.is_some() { vec![0u8; disk_format::MAX_BLOCK_SIZE as usize] } else { Vec::new() };
        for name in &names {
            progress.advance(1);
            let object = format!("packs/{name}");
            let Some(id) = PackId::from_hex(name) else {
                index.note_unreadable(name.clone(), "not a pack name (64 hex digits)".into());
                continue;
            };
            let mut bytes = match self.backend().get(Kind::Pack, name) {
                Err(VaultError::NotFound { .. }) => continue, // deleted meanwhile (GC)
                other => other?,
            };
            report.packs += 1;
            let (entries, damaged) = match Pack::parse(&bytes) {
                Ok(pack) => {
                    if let Err(PackError::IdMismatch { got, .. }) = pack.check_id(&id) {
                        report.problem(
                            object.clone(),
                            None,
                            None,
                            format!(
                                "its contents hash to {got}, not to its name (damaged, or swapped with another pack)"
                            ),
                        );
                    }
                    // Version 2: each blob against its CRC, without the key.
                    (pack.index().clone(), pack.check_checksums())
                }
                Err(e) => {
                    index.note_unreadable(name.clone(), e.to_string());
                    continue;
                }
            };
            for e in damaged {
                if let PackError::BlobChecksum { entry, .. } = e {
                    let detail = e.to_string();
                    report.problem(object.clone(), None, None, detail.clone());
                    if let Some(block) = entries.entries().get(entry as usize) {
                        bad_blocks.insert(block.id, (id, detail));
                    }
                }
            }
            index.add_pack(&id, &entries);
            let Some(keys) = keys else { continue };
            for (entry, e) in (0u32..).zip(entries.entries()) {
                let r = e.range();
                let blob = &mut bytes[usize::try_from(r.start).expect("in memory")..usize::try_from(r.end).expect("")];
                let opened = match e.compressed {
                    false => keys.open_in_place(entries.cipher(), &e.id, blob).map(drop).map_err(|e| e.to_string()),
                    true => keys.decrypt_in_place(entries.cipher(), &e.id, blob).map_err(|e| e.to_string()).and_then(
                        |sealed| {
                            let n = crate::compress::inflate(sealed, &mut inflated)?;
                            keys.check_block_id(&e.id, &inflated[..n]).map_err(|e| e.to_string())
                        },
                    ),
                };
                match opened {
                    Ok(()) => report.blocks_verified += 1,
                    Err(err) => {
                        let detail = format!("entry {entry} does not open: {err}");
                        report.problem(object.clone(), None, None, detail.clone());
                        bad_blocks.insert(e.id, (id, detail));
                    }
                }
            }
        }
        for u in index.unreadable() {
            report.problem(format!("packs/{}", u.name), None, None, u.detail.clone());
        }
        Ok((index, bad_blocks))
    }

    /// Reads every map page: name, hash, format; looks up every block it
    /// names. Returns what each sound page covers and which of its blocks are
    /// missing or damaged; a damaged page maps to its problem.
    fn check_pages(
        &self,
        index: &BlockIndex,
        bad_blocks: &BadBlocks,
        report: &mut CheckReport,
        progress: &mut dyn Progress,
    ) -> Result<Pages, VaultError> {
        let mut pages = Pages::default();
        let names = self.backend().list(Kind::Page, "")?;
        progress.start("checking map pages", names.len() as u64);
        for name in &names {
            progress.advance(1);
            let object = format!("pages/{name}");
            let Some(id) = PageId::from_hex(name) else {
                report.problem(object, None, None, "not a page name (64 hex digits)".into());
                continue;
            };
            let bytes = match self.backend().get(Kind::Page, name) {
                Err(VaultError::NotFound { .. }) => continue,
                other => other?,
            };
            if is_page_pack(&bytes) {
                self.check_page_pack(id, &bytes, index, bad_blocks, report, &mut pages);
                continue;
            }
            report.pages += 1;
            let page = if id.matches(&bytes) {
                MapPage::decode(&bytes).map_err(|e| e.to_string())
            } else {
                Err(format!("its contents hash to {}, not to its name (damaged or swapped)", PageId::of(&bytes)))
            };
            let info = match page {
                Ok(page) => Ok(page_info(&page, index, bad_blocks)),
                Err(detail) => {
                    report.problem(object, None, None, detail.clone());
                    Err(detail)
                }
            };
            pages.found.insert((id, id), info);
        }
        Ok(pages)
    }

    /// A page pack: its name and index, then each page inside on its own
    /// (named by its own hash, a page is sound even when a neighbour is not).
    fn check_page_pack(
        &self,
        id: PageId,
        bytes: &[u8],
        index: &BlockIndex,
        bad_blocks: &BadBlocks,
        report: &mut CheckReport,
        pages: &mut Pages,
    ) {
        let object = format!("pages/{id}");
        if !id.matches(bytes) {
            let got = PageId::of(bytes);
            report.problem(object.clone(), None, None, format!("the page pack hashes to {got}, not to its name"));
        }
        let pack = match PagePack::parse(bytes) {
            Ok(pack) => pack,
            Err(e) => {
                report.problem(object, None, None, format!("the page pack is unreadable: {e}"));
                pages.broken_packs.insert(id, e.to_string());
                return;
            }
        };
        for (i, e) in pack.entries.iter().enumerate() {
            report.pages += 1;
            let b = e.bytes(bytes);
            let page = if e.id.matches(b) {
                MapPage::decode(b).map_err(|err| err.to_string())
            } else {
                Err(format!("page {i} ({}) of the page pack hashes to {} (damaged)", e.id, PageId::of(b)))
            };
            let info = match page {
                Ok(page) => Ok(page_info(&page, index, bad_blocks)),
                Err(detail) => {
                    report.problem(object.clone(), None, None, detail.clone());
                    Err(detail)
                }
            };
            pages.found.insert((id, e.id), info);
        }
    }

    /// Reads every root and checks what each point needs against what the
    /// pack and page passes found.
    fn check_roots(
        &self,
        roots: &[String],
        keys: Option<&Keys>,
        pages: &Pages,
        report: &mut CheckReport,
        progress: &mut dyn Progress,
    ) -> Result<(), VaultError> {
        // (disk, sequence) -> (BLAKE3 of the root's bytes, the parent it names):
        // a root's child records its hash, which checks it without the key.
        let mut chain: HashMap<(String, u64), ([u8; 32], Option<disk_format::RootId>)> = HashMap::new();
        progress.start("checking point roots", roots.len() as u64);
        for name in roots {
            progress.advance(1);
            let object = format!("roots/{name}");
            let Some((disk, sequence)) = parse_root_name(name) else {
                report.problem(object, None, None, "not a root name (DISK/ and 20 digits)".into());
                continue;
            };
            let point = point_label(disk, sequence);
            let bytes = match self.backend().get(Kind::Root, name) {
                Err(VaultError::NotFound { .. }) => continue, // pruned meanwhile
                other => other?,
            };
            report.roots += 1;
            let root = match decode_root(name, &bytes, keys) {
                Ok(root) => root,
                Err((damage, detail)) => {
                    report.problem(object, Some(&point), None, format!("{damage}: {detail}"));
                    continue;
                }
            };
            let _ = chain.insert((disk.to_string(), sequence), (*blake3::hash(&bytes).as_bytes(), root.parent));
            // With the key the point is named by its disk (a format-2 chain
            // is a keyed id); without, by its chain.
            let point = if root.disk_name.is_empty() { point } else { point_label(&root.disk_name, sequence) };
            let g = root.geometry;
            let mut block_problems = 0usize;
            let mut note = |report: &mut CheckReport, object: String, block: u64, detail: String| {
                block_problems += 1;
                if block_problems <= BLOCK_PROBLEMS_PER_POINT {
                    report.problem(object, Some(&point), Some(block), detail);
                }
            };
            for (p, page_id) in (0u64..).zip(&root.pages) {
                if page_id.is_zero() {
                    continue;
                }
                let want = root.page_blocks(p);
                let home = *root.page_pack(p).unwrap_or(page_id);
                let object = format!("pages/{home}");
                let info = match pages.found.get(&(home, *page_id)) {
                    None if home != *page_id => {
                        let why = match pages.broken_packs.get(&home) {
                            Some(e) => format!("its page pack is unreadable: {e}"),
                            None => format!("page {page_id} is not in page pack {home}, or the pack is missing"),
                        };
                        note(report, object, want.start, format!("map page {p} (blocks {want:?}): {why}"));
                        continue;
                    }
                    None => {
                        note(report, object, want.start, format!("map page {p} (blocks {want:?}) is missing"));
                        continue;
                    }
                    Some(Err(detail)) => {
                        note(report, object, want.start, format!("map page {p} (blocks {want:?}): {detail}"));
                        continue;
                    }
                    Some(Ok(info)) => info,
                };
                if info.blocks != want {
                    note(
                        report,
                        object,
                        want.start,
                        format!("map page {p} covers blocks {:?}, not {want:?}", info.blocks),
                    );
                    continue;
                }
                for (slot, obj, detail) in &info.bad {
                    note(report, obj.clone(), want.start + u64::from(*slot), detail.clone());
                }
                for slot in 0..info.blocks.end - info.blocks.start {
                    let s = usize::try_from(slot).expect("< 512");
                    if info.located[s / 64] & (1 << (s % 64)) == 0 {
                        continue;
                    }
                    let stored =
                        info.odd_lens.iter().find(|(o, _)| usize::from(*o) == s).map_or(info.usual_len, |x| x.1);
                    let block = want.start + slot;
                    if stored != COMPRESSED && stored as usize != g.block_len(block) {
                        let detail =
                            format!("stored with {stored} bytes; this block of the disk is {}", g.block_len(block));
                        note(report, object.clone(), block, detail);
                    }
                }
            }
            if block_problems > BLOCK_PROBLEMS_PER_POINT {
                let more = block_problems - BLOCK_PROBLEMS_PER_POINT;
                report.problem(object, Some(&point), None, format!("and {more} more damaged blocks or pages"));
            }
        }
        let mut links: Vec<_> = chain.iter().collect();
        links.sort_by(|a, b| a.0.cmp(b.0));
        for ((disk, sequence), (_, parent)) in links {
            let Some(parent) = parent.filter(|p| !p.is_zero()) else { continue };
            let Some(before) = sequence.checked_sub(1) else { continue };
            if let Some((hash, _)) = chain.get(&(disk.clone(), before)) {
                if *hash != parent.0 {
                    report.problem(
                        format!("roots/{}", root_name(disk, before)),
                        Some(&point_label(disk, before)),
                        None,
                        format!(
                            "altered: its bytes no longer hash to the parent id that point {} recorded",
                            point_label(disk, *sequence)
                        ),
                    );
                }
            }
        }
        Ok(())
    }
}

/// The stored length `page_info` records for a compressed blob.
const COMPRESSED: u32 = u32::MAX;

/// Looks up every block a sound page names.
fn page_info(page: &MapPage, index: &BlockIndex, bad_blocks: &BadBlocks) -> PageInfo {
    let mut info =
        PageInfo { blocks: page.blocks(), bad: Vec::new(), usual_len: 0, odd_lens: Vec::new(), located: [0; 8] };
    let mut lens: Vec<(u16, u32)> = Vec::with_capacity(page.entries.len());
    for (slot, id) in (0u16..).zip(&page.entries) {
        if id.is_zero() {
            continue;
        }
        match (index.get(id), bad_blocks.get(id)) {
            (None, _) => {
                let detail = match index.unreadable() {
                    [] => format!("block id {id} is in no pack: the pack that held it is missing (deleted?)"),
                    u => format!(
                        "block id {id} is in no readable pack; {} unreadable pack(s) may hold it, e.g. packs/{}",
                        u.len(),
                        u[0].name
                    ),
                };
                info.bad.push((slot, format!("the pack holding block id {id}"), detail));
            }
            (Some(_), Some((pack, detail))) => info.bad.push((slot, format!("packs/{pack}"), detail.clone())),
            (Some(loc), None) => {
                info.located[usize::from(slot) / 64] |= 1 << (slot % 64);
                // A compressed blob's length says nothing of its block's
                // (the key opens and inflates it to check that).
                lens.push((slot, if loc.compressed { COMPRESSED } else { loc.plain_len }));
            }
        }
    }
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for (_, len) in &lens {
        *counts.entry(*len).or_default() += 1;
    }
    info.usual_len = counts.into_iter().max_by_key(|(len, n)| (*n, *len)).map_or(0, |(len, _)| len);
    info.odd_lens = lens.into_iter().filter(|(_, len)| *len != info.usual_len).collect();
    info
}
