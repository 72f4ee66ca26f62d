//! A point's map pages, stored in page packs and fetched together.
//!
//! A cycle stores the pages it changed as one page pack (up to
//! [`disk_format::MAX_PACK_PAGES`] pages each, `pages/ID` like a page alone): one request
//! where one per page cost more than the cycle's data on an object store.
//! A reader fetches a pack's index with one suffix read and the pages it
//! needs with one ranged read per run of nearby pages, every pack at once
//! ([`crate::par`]). Pages of points written before page packs (root
//! formats 1 and 2) are objects of their own and are read as before.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use disk_format::page_pack::PAGE_PACK_MAX_TAIL;
use disk_format::{PageId, PagePack, Root};

use crate::backend::Kind;
use crate::error::{Damage, VaultError};
use crate::store::Vault;

/// Pages closer than this in a pack are read with one request, the gap
/// with them: a request costs more than 64 KiB on every store we support.
const COALESCE_GAP: u64 = 64 << 10;

impl Vault {
    /// Stores encoded map pages (id, bytes; at most [`disk_format::MAX_PACK_PAGES`]) as
    /// one page pack, created where absent. Returns its id and the bytes
    /// written (0 when an identical pack was already stored). Each page must
    /// hash to its id and decode.
    pub fn create_page_pack(&self, pages: &[(PageId, &[u8])]) -> Result<(PageId, u64), VaultError> {
        let bytes = PagePack::encode(pages)
            .map_err(|e| VaultError::Invalid { object: "a page pack".into(), detail: e.to_string() })?;
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
