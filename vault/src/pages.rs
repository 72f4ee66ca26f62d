//! A point's map pages, stored in page packs and fetched together.
//!
//! A cycle stores the pages it changed as one page pack (up to
//! [`disk_format::MAX_PACK_PAGES`] pages each, `pages/ID` like a page alone): one request
//! where one per page cost more than the cycle's data on an object store.
//! A reader fetches a pack's index with one suffix read and the pages it
//! needs with one ranged read per run of nearby pages, every pack at once
//! ([`crate::par`]). Pages of points written before page packs (root
//! formats 1 and 2) are objects of their own and are read as before.
//!
//! A page pack also says, for each page, which packs held its blocks when it
//! was written (page pack version 2, [`disk_format::page_pack::Hints`]):
//! [`Vault::hinted_index`] reads only those packs' indexes, where a restore
//! once read every pack's in the vault.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use disk_format::page_pack::{Hints, PAGE_PACK_MAX_TAIL};
use disk_format::{PackId, PageId, PagePack, Root};

use crate::backend::Kind;
use crate::error::{Damage, VaultError};
use crate::index::{read_tails, BlockIndex};
use crate::store::Vault;

/// How much of a page pack's end [`Vault::hinted_index`] reads at once: the
/// index, the trailer and, for most packs, the hints before them.
const HINTS_TAIL: u64 = 128 << 10;

/// Pages closer than this in a pack are read with one request, the gap
/// with them: a request costs more than 64 KiB on every store we support.
const COALESCE_GAP: u64 = 64 << 10;

impl Vault {
    /// Stores encoded map pages (id, bytes; at most [`disk_format::MAX_PACK_PAGES`]) as
    /// one page pack, created where absent, with each page's block-pack
    /// hints (`packs`: one per page, the packs holding its blocks, `None`
    /// where not known). Returns its id and the bytes written (0 when an
    /// identical pack was already stored). Each page must hash to its id
    /// and decode.
    pub fn create_page_pack(
        &self,
        pages: &[(PageId, &[u8])],
        packs: &[Option<Vec<PackId>>],
    ) -> Result<(PageId, u64), VaultError> {
        let invalid =
            |e: disk_format::PagePackError| VaultError::Invalid { object: "a page pack".into(), detail: e.to_string() };
        // Past the most packs a page pack names, none are hinted: a reader
        // then looks in every pack, as for a page pack of version 1.
        let hints = Hints::from_sets(packs).or_else(|_| Hints::from_sets(&vec![None; pages.len()])).map_err(invalid)?;
        let bytes = PagePack::encode(pages, Some(&hints)).map_err(invalid)?;
        let id = PageId::of(&bytes);
        match self.backend().create(Kind::Page, &id.to_string(), &bytes) {
            Ok(_) => Ok((id, bytes.len() as u64)),
            // Named by its contents: the pack there is this one.
            Err(VaultError::AlreadyExists { .. }) => Ok((id, 0)),
            Err(e) => Err(e),
        }
    }

    /// The bytes of map pages `wanted` (page indexes) of `root`, by index;
    /// all-zero pages are skipped. Fetched together: a page stored alone
    /// with one read, a page pack's pages with one suffix read for its index
    /// and one ranged read per run of nearby pages. The bytes are not
    /// checked: check each with [`Root::check_page`]. A page or pack that is
    /// missing, or a pack whose index is damaged or lacks the page, is
    /// [`VaultError::Damaged`] naming `point` and the object.
    pub fn load_pages(&self, point: &str, root: &Root, wanted: &[u64]) -> Result<HashMap<u64, Vec<u8>>, VaultError> {
        let mut alone = Vec::new();
        let mut in_pack: BTreeMap<PageId, Vec<u64>> = BTreeMap::new();
        for &p in wanted {
            let Some(id) = usize::try_from(p).ok().and_then(|i| root.pages.get(i)) else { continue };
            if id.is_zero() {
                continue;
            }
            match root.page_pack(p) {
                Some(pack) => in_pack.entry(*pack).or_default().push(p),
                None => alone.push(p),
            }
        }
        let jobs: Vec<(Option<PageId>, Vec<u64>)> =
            alone.into_iter().map(|p| (None, vec![p])).chain(in_pack.into_iter().map(|(k, v)| (Some(k), v))).collect();
        let fetched = crate::par::map(&jobs, |(pack, pages)| match pack {
            None => self.load_alone(point, root, pages[0]).map(|b| vec![(pages[0], b)]),
            Some(pack) => self.load_from_pack(point, root, pack, pages),
        })?;
        Ok(fetched.into_iter().flatten().collect())
    }

    /// The block index of the packs `root`'s pages are hinted to (see the
    /// module documentation): their indexes only, read together. `None`
    /// when some page has no hints (stored alone, in a page pack of version
    /// 1, or written without them), or a page pack cannot be read: the
    /// caller then builds the index from every pack ([`Vault::block_index`]).
    /// Hints are not trusted: a block they lead nowhere is for the caller to
    /// look for in every pack.
    pub fn hinted_index(&self, root: &Root) -> Result<Option<BlockIndex>, VaultError> {
        let mut used: BTreeMap<PageId, Vec<PageId>> = BTreeMap::new();
        for (p, id) in (0u64..).zip(&root.pages) {
            if id.is_zero() {
                continue;
            }
            let Some(pack) = root.page_pack(p) else { return Ok(None) };
            used.entry(*pack).or_default().push(*id);
        }
        let jobs: Vec<(PageId, Vec<PageId>)> = used.into_iter().collect();
        let hinted = crate::par::map(&jobs, |(pack, pages)| self.page_hints(pack, pages))?;
        let Some(sets) = hinted.into_iter().collect::<Option<Vec<Vec<PackId>>>>() else { return Ok(None) };
        let mut packs: Vec<PackId> = sets.into_iter().flatten().collect();
        packs.sort_unstable();
        packs.dedup();
        let names: Vec<String> = packs.iter().map(ToString::to_string).collect();
        let tails = read_tails(self.backend(), &names)?;
        let mut index = BlockIndex::new();
        for (name, tail) in names.into_iter().zip(tails) {
            match tail {
                Ok((id, tail)) => index.add_pack(&id, &tail.index),
                Err(detail) => index.note_unreadable(name, detail),
            }
        }
        Ok(Some(index))
    }

    /// The packs page pack `pack` hints for pages `pages`, or `None` if it
    /// has no hints for one of them or cannot be read.
    fn page_hints(&self, pack: &PageId, pages: &[PageId]) -> Result<Option<Vec<PackId>>, VaultError> {
        let name = pack.to_string();
        let Some((mut tail, len)) = self.backend().get_tail(Kind::Page, &name, HINTS_TAIL)? else { return Ok(None) };
        let hints = loop {
            let index = match PagePack::parse_tail(&tail, len) {
                Ok(Ok(index)) => index,
                Ok(Err(needed)) if (tail.len() as u64) < needed => {
                    tail = self.backend().get_range(Kind::Page, &name, len - needed, needed)?;
                    continue;
                }
                Ok(Err(_)) | Err(_) => return Ok(None),
            };
            match index.hints(&tail, len) {
                Ok(Ok(Some(hints))) => break (index, hints),
                Ok(Err(needed)) if (tail.len() as u64) < needed => {
                    tail = self.backend().get_range(Kind::Page, &name, len - needed, needed)?;
                }
                Ok(Ok(None) | Err(_)) | Err(_) => return Ok(None),
            }
        };
        let (index, hints): (PagePack, Hints) = hints;
        let mut out = Vec::new();
        for id in pages {
            let Some(i) = index.entries.iter().position(|e| e.id == *id) else { return Ok(None) };
            let Some(packs) = hints.of_page(i) else { return Ok(None) };
            out.extend(packs.copied());
        }
        Ok(Some(out))
    }

    fn load_alone(&self, point: &str, root: &Root, p: u64) -> Result<Vec<u8>, VaultError> {
        let id = root.pages[ix(p)];
        match self.get_page(&id) {
            Err(VaultError::NotFound { .. }) => {
                Err(page_damage(point, root, p, format!("pages/{id}"), Damage::Missing, "is not in the vault".into()))
            }
            other => other,
        }
    }

    fn load_from_pack(
        &self,
        point: &str,
        root: &Root,
        pack: &PageId,
        pages: &[u64],
    ) -> Result<Vec<(u64, Vec<u8>)>, VaultError> {
        let object = format!("pages/{pack}");
        let first = pages[0];
        let damage =
            |p: u64, damage: Damage, detail: String| page_damage(point, root, p, object.clone(), damage, detail);
        let Some((mut tail, len)) = self.backend().get_tail(Kind::Page, &pack.to_string(), PAGE_PACK_MAX_TAIL)? else {
            return Err(damage(first, Damage::Missing, format!("is in page pack {object}, which is not in the vault")));
        };
        let index = loop {
            match PagePack::parse_tail(&tail, len) {
                Ok(Ok(index)) => break index,
                Ok(Err(needed)) if (tail.len() as u64) < needed => {
                    tail = self.backend().get_range(Kind::Page, &pack.to_string(), len - needed, needed)?;
                }
                Ok(Err(_)) => unreachable!("parse_tail asks for more than it was given"),
                Err(e) => return Err(damage(first, Damage::Corrupt, format!("is in page pack {object}, which {e}"))),
            }
        };
        let by_id: HashMap<PageId, Range<u64>> = index.entries.into_iter().map(|e| (e.id, e.range)).collect();
        let mut places = Vec::with_capacity(pages.len());
        for &p in pages {
            let id = root.pages[ix(p)];
            let Some(range) = by_id.get(&id) else {
                return Err(damage(
                    p,
                    Damage::Corrupt,
                    format!("({id}) is not in page pack {object}, as the point says"),
                ));
            };
            places.push((range.clone(), p));
        }
        places.sort_unstable_by_key(|(r, _)| r.start);
        let tail_start = len - tail.len() as u64;
        let mut out = Vec::with_capacity(places.len());
        let mut i = 0;
        while i < places.len() {
            // A run of pages, each within COALESCE_GAP of the one before.
            let start = places[i].0.start;
            let mut end = places[i].0.end;
            let mut j = i + 1;
            while j < places.len() && places[j].0.start <= end + COALESCE_GAP {
                end = end.max(places[j].0.end);
                j += 1;
            }
            let run = if start >= tail_start {
                tail[ix(start - tail_start)..ix(end - tail_start)].to_vec()
            } else {
                self.backend().get_range(Kind::Page, &pack.to_string(), start, end - start)?
            };
            for (range, p) in &places[i..j] {
                out.push((*p, run[ix(range.start - start)..ix(range.end - start)].to_vec()));
            }
            i = j;
        }
        Ok(out)
    }
}

fn page_damage(point: &str, root: &Root, p: u64, object: String, damage: Damage, detail: String) -> VaultError {
    let blocks = root.page_blocks(p);
    VaultError::Damaged {
        point: point.to_string(),
        block: Some(blocks.start),
        object,
        damage,
        detail: format!("map page {p} (blocks {}..{}) {detail}", blocks.start, blocks.end),
    }
}

/// `usize` from a `u64` already bounded by a slice's length (a page index,
/// an offset in bytes held in memory).
pub(crate) fn ix(v: u64) -> usize {
    usize::try_from(v).expect("bounded by a slice length")
}
