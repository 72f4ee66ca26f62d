//! Map pages: the lower level of a recovery point's Merkle map, and the
//! builder that makes a new point's pages from the previous point's.
//!
//! Page `i` of a disk names blocks `512 i .. 512 i + count` by [`BlockId`]
//! (all-zero id: a zero block). A page is named by BLAKE3 of its bytes
//! ([`PageId`]); a page whose every entry is zero is not stored and is named
//! by the all-zero page id. A point shares every page it did not change with
//! its parent, so a point costs its root plus the pages it changed. See
//! FORMAT.md, "Map page".

use std::collections::BTreeMap;
use std::ops::Range;

use crate::codec::{first_nonzero, get_array, get_u16, get_u32, get_u64, put_u16, put_u32, put_u64, to_usize};
use crate::geometry::Geometry;
use crate::ids::{BlockId, PageId};

/// Blocks named by one map page.
pub const PAGE_ENTRIES: usize = 512;
/// Size of a map page header.
pub const PAGE_HEADER_LEN: usize = 32;
/// Size of a full map page.
pub const PAGE_LEN: usize = PAGE_HEADER_LEN + 32 * PAGE_ENTRIES;
/// First 8 bytes of BLAKE3("lifeboat map page v1").
pub const PAGE_MAGIC: [u8; 8] = [0xbf, 0x5c, 0xb5, 0x81, 0x9c, 0x32, 0xa6, 0x35];
/// The map page format this code writes.
pub const PAGE_VERSION: u16 = 1;

const ENTRIES: u64 = PAGE_ENTRIES as u64;
const _: () = assert!(PAGE_LEN == 16_416 && PAGE_ENTRIES.is_power_of_two());

/// Number of map pages of a disk: `ceil(block_count / 512)`.
pub fn page_count(geometry: &Geometry) -> u64 {
    geometry.block_count.div_ceil(ENTRIES)
}

/// The blocks page `index` of a disk covers.
pub fn page_blocks(geometry: &Geometry, index: u64) -> Range<u64> {
    let start = index * ENTRIES;
    start..(start + ENTRIES).min(geometry.block_count)
}

/// Why a map page was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PageError {
    /// Shorter than a header.
    #[error("the map page is {len} bytes, shorter than its 32-byte header (truncated)")]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// Wrong magic.
    #[error("not a Lifeboat map page (wrong magic)")]
    BadMagic,
    /// A version this build does not know.
    #[error("map page format version {0} is not supported by this build (it knows version 1)")]
    UnsupportedVersion(u16),
    /// A reserved byte is not zero.
    #[error("byte {offset} of the map page (reserved) is {value:#04x}, not zero")]
    Reserved {
        /// Byte offset.
        offset: usize,
        /// The byte found.
        value: u8,
    },
    /// The entry count is 0 or above 512.
    #[error("the map page says {count} entries; a page has 1 ..= 512")]
    BadCount {
        /// The count found.
        count: u32,
    },
    /// The first block is not a multiple of 512.
    #[error("the map page starts at block {first_block}, not a multiple of 512")]
    Misaligned {
        /// The first block found.
        first_block: u64,
    },
    /// The length does not match the entry count.
    #[error("the map page is {len} bytes; with {count} entries it must be {expected} (truncated or extended)")]
    LengthMismatch {
        /// Its length.
        len: usize,
        /// Its entry count.
        count: u32,
        /// The length the count implies.
        expected: usize,
    },
    /// Every entry is zero: such a page is named by the zero id, never stored.
    #[error("the map page at block {first_block} has only zero entries; such a page is never stored")]
    AllZero {
        /// The page's first block.
        first_block: u64,
    },
    /// The page does not hash to the id it was fetched under.
    #[error("map page {expected} hashes to {got} (damaged or swapped)")]
    IdMismatch {
        /// The id it was referenced by.
        expected: PageId,
        /// What its bytes hash to.
        got: PageId,
    },
    /// The page is valid but covers other blocks than the root says.
    #[error("map page {id} covers blocks {got:?}; the point needs blocks {want:?} there")]
    WrongPlace {
        /// The page.
        id: PageId,
        /// Blocks it covers.
        got: Range<u64>,
        /// Blocks it should cover.
        want: Range<u64>,
    },
    /// A block index past the end of the disk.
    #[error("block {block} is past the end of the disk ({block_count} blocks)")]
    BlockOutOfRange {
        /// The block.
        block: u64,
        /// Blocks on the disk.
        block_count: u64,
    },
    /// The previous point's page list does not fit the disk.
    #[error("the previous point has {got} map pages; this disk has {want} (did the disk change size?)")]
    PageCount {
        /// Pages given.
        got: usize,
        /// Pages the geometry has.
        want: u64,
    },
}

/// One map page: the ids of blocks `first_block .. first_block + entries.len()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapPage {
    /// First block named, a multiple of 512.
    pub first_block: u64,
    /// One id per block; `BlockId::ZERO` for a zero block. 1 ..= 512 of them.
    pub entries: Vec<BlockId>,
}

impl MapPage {
    /// Whether every entry is a zero block (such a page is never stored).
    pub fn is_zero(&self) -> bool {
        self.entries.iter().all(BlockId::is_zero)
    }

    /// The blocks this page covers.
    pub fn blocks(&self) -> Range<u64> {
        self.first_block..self.first_block + self.entries.len() as u64
    }

    /// Serializes the page. Panics on a page no reader would accept (no
    /// entries, more than 512, a misaligned first block): the builder never
    /// makes one.
    pub fn encode(&self) -> Vec<u8> {
        assert!((1..=PAGE_ENTRIES).contains(&self.entries.len()) && self.first_block.is_multiple_of(ENTRIES));
        let mut b = vec![0u8; PAGE_HEADER_LEN + 32 * self.entries.len()];
        b[..8].copy_from_slice(&PAGE_MAGIC);
        put_u16(&mut b, 8, PAGE_VERSION);
        put_u32(&mut b, 12, u32::try_from(self.entries.len()).expect("at most 512"));
        put_u64(&mut b, 16, self.first_block);
        for (e, out) in self.entries.iter().zip(b[PAGE_HEADER_LEN..].chunks_exact_mut(32)) {
            out.copy_from_slice(&e.0);
        }
        b
    }

    /// Parses and checks a page on its own: magic, version, reserved bytes,
    /// count, alignment, length, not all zero.
    pub fn decode(b: &[u8]) -> Result<MapPage, PageError> {
        if b.len() < PAGE_HEADER_LEN {
            return Err(PageError::TooShort { len: b.len() });
        }
        if b[..8] != PAGE_MAGIC {
            return Err(PageError::BadMagic);
        }
        let version = get_u16(b, 8);
        if version != PAGE_VERSION {
            return Err(PageError::UnsupportedVersion(version));
        }
        for range in [10..12, 24..PAGE_HEADER_LEN] {
            if let Some(at) = first_nonzero(b, range) {
                return Err(PageError::Reserved { offset: at, value: b[at] });
            }
        }
        let count = get_u32(b, 12);
        if count == 0 || count as usize > PAGE_ENTRIES {
            return Err(PageError::BadCount { count });
        }
        let first_block = get_u64(b, 16);
        if !first_block.is_multiple_of(ENTRIES) || first_block.checked_add(ENTRIES).is_none() {
            return Err(PageError::Misaligned { first_block });
        }
        let expected = PAGE_HEADER_LEN + 32 * count as usize;
        if b.len() != expected {
            return Err(PageError::LengthMismatch { len: b.len(), count, expected });
        }
        let entries: Vec<BlockId> = b[PAGE_HEADER_LEN..].chunks_exact(32).map(|c| BlockId(get_array(c, 0))).collect();
        let page = MapPage { first_block, entries };
        if page.is_zero() {
            return Err(PageError::AllZero { first_block });
        }
        Ok(page)
    }

    /// Checks a page fetched by id for page `index` of a disk: that its bytes
    /// hash to `id`, that it decodes, and that it covers exactly the blocks
    /// that page must cover.
    pub fn decode_expected(b: &[u8], id: &PageId, geometry: &Geometry, index: u64) -> Result<MapPage, PageError> {
        if !id.matches(b) {
            return Err(PageError::IdMismatch { expected: *id, got: PageId::of(b) });
        }
        let page = MapPage::decode(b)?;
        let want = page_blocks(geometry, index);
        if page.blocks() != want {
            return Err(PageError::WrongPlace { id: *id, got: page.blocks(), want });
        }
        Ok(page)
    }
}

/// A changed page being built: its entries, with the ones set this cycle marked.
struct Draft {
    entries: Box<[BlockId]>,
    set: [u64; PAGE_ENTRIES / 64],
}

/// Builds a point's map pages from the previous point's page ids plus the
/// blocks changed since. Pages with no changed block keep their id (and are
/// not rewritten); a changed page whose result is all zero gets the zero id.
///
/// Memory: one 16 KiB draft per page touched, so an initial sync of a disk
/// holds about 1/2048 of the disk's size (32 bytes per 64 KiB block).
pub struct MapBuilder {
    geometry: Geometry,
    previous: Vec<PageId>,
    drafts: BTreeMap<u64, Draft>,
}

/// What [`MapBuilder::finish`] produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltMap {
    /// Every page id of the new point, in order (zero for all-zero pages):
    /// the root's page list.
    pub pages: Vec<PageId>,
    /// Pages to store before the root: new ids only, encoded.
    pub new_pages: Vec<(PageId, Vec<u8>)>,
}

impl MapBuilder {
    /// A builder for a disk with no previous point: every block starts zero.
    pub fn new(geometry: Geometry) -> MapBuilder {
        let n = to_usize(page_count(&geometry));
        MapBuilder { geometry, previous: vec![PageId::ZERO; n], drafts: BTreeMap::new() }
    }

    /// A builder starting from the previous point's pages (its root's page
    /// list) on the same geometry. A disk that changed size starts over with
    /// [`MapBuilder::new`] and a full resync.
    pub fn from_previous(previous: &[PageId], geometry: Geometry) -> Result<MapBuilder, PageError> {
        let want = page_count(&geometry);
        if previous.len() as u64 != want {
            return Err(PageError::PageCount { got: previous.len(), want });
        }
        Ok(MapBuilder { geometry, previous: previous.to_vec(), drafts: BTreeMap::new() })
    }

    /// Puts the previous point's pages under a builder made with
    /// [`MapBuilder::new`], once they are known (a cycle that cut before
    /// the vault named its newest point): the blocks set so far stay set,
    /// and the result is [`MapBuilder::from_previous`]'s with those blocks.
    pub fn set_previous(&mut self, previous: &[PageId]) -> Result<(), PageError> {
        let want = page_count(&self.geometry);
        if previous.len() as u64 != want {
            return Err(PageError::PageCount { got: previous.len(), want });
        }
        self.previous = previous.to_vec();
        Ok(())
    }

    /// Records that `block` now holds the block named `id` (`BlockId::ZERO`
    /// for a zero or trimmed block).
    pub fn set(&mut self, block: u64, id: BlockId) -> Result<(), PageError> {
        if block >= self.geometry.block_count {
            return Err(PageError::BlockOutOfRange { block, block_count: self.geometry.block_count });
        }
        let index = block / ENTRIES;
        let len = to_usize(page_blocks(&self.geometry, index).end - index * ENTRIES);
        let draft = self.drafts.entry(index).or_insert_with(|| Draft {
            entries: vec![BlockId::ZERO; len].into_boxed_slice(),
            set: [0; PAGE_ENTRIES / 64],
        });
        let slot = to_usize(block % ENTRIES);
        draft.entries[slot] = id;
        draft.set[slot / 64] |= 1 << (slot % 64);
        Ok(())
    }

    /// The previous pages [`MapBuilder::finish`] will ask for: changed pages
    /// that were not all zero, as (page index, id).
    pub fn pages_to_load(&self) -> Vec<(u64, PageId)> {
        self.drafts.keys().map(|&i| (i, self.previous[to_usize(i)])).filter(|(_, id)| !id.is_zero()).collect()
    }

    /// Makes the new pages. `load` fetches a previous page's bytes by id; each
    /// one is checked ([`MapPage::decode_expected`]) before its entries are
    /// used.
    pub fn finish<E: From<PageError>>(
        self,
        mut load: impl FnMut(&PageId) -> Result<Vec<u8>, E>,
    ) -> Result<BuiltMap, E> {
        let MapBuilder { geometry, mut previous, drafts } = self;
        let mut new_pages = Vec::new();
        for (index, mut draft) in drafts {
            let old = previous[to_usize(index)];
            if !old.is_zero() {
                let page = MapPage::decode_expected(&load(&old)?, &old, &geometry, index)?;
                for (slot, (e, prev)) in draft.entries.iter_mut().zip(page.entries).enumerate() {
                    if draft.set[slot / 64] & (1 << (slot % 64)) == 0 {
                        *e = prev;
                    }
                }
            }
            let page = MapPage { first_block: index * ENTRIES, entries: draft.entries.into_vec() };
            let id = if page.is_zero() {
                PageId::ZERO
            } else {
                let bytes = page.encode();
                let id = PageId::of(&bytes);
                if id != old {
                    new_pages.push((id, bytes));
                }
                id
            };
            previous[to_usize(index)] = id;
        }
        Ok(BuiltMap { pages: previous, new_pages })
    }
}

/// Runs the map page parser on `data` the way the `map_page` fuzz target
/// does; an accepted page must encode back to the same bytes. Returns whether
/// it was accepted. Panics only on a real bug.
pub fn fuzz_map_page_bytes(data: &[u8]) -> bool {
    let Ok(page) = MapPage::decode(data) else { return false };
    assert_eq!(page.encode(), data, "map page round trip");
    assert!(!page.is_zero() && page.first_block.is_multiple_of(ENTRIES));
    true
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test sizes are small
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn id(n: u64) -> BlockId {
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(&(n + 1).to_le_bytes());
        BlockId(b)
    }

    #[test]
    fn magic_is_derived_from_the_versioned_string() {
        assert_eq!(&blake3::hash(b"lifeboat map page v1").as_bytes()[..8], &PAGE_MAGIC);
    }

    #[test]
    fn round_trip_and_damage() {
        let page = MapPage { first_block: 1024, entries: (0..512).map(id).collect() };
        let b = page.encode();
        assert_eq!(b.len(), PAGE_LEN);
        assert_eq!(MapPage::decode(&b).unwrap(), page);
        assert_eq!(MapPage::decode(&b[..31]), Err(PageError::TooShort { len: 31 }));
        assert_eq!(
            MapPage::decode(&b[..b.len() - 1]),
            Err(PageError::LengthMismatch { len: PAGE_LEN - 1, count: 512, expected: PAGE_LEN })
        );
        let mut c = b.clone();
        c[16] = 1;
        assert_eq!(MapPage::decode(&c), Err(PageError::Misaligned { first_block: 1025 }));
        let mut c = b.clone();
        c[12..16].copy_from_slice(&513u32.to_le_bytes());
        assert_eq!(MapPage::decode(&c), Err(PageError::BadCount { count: 513 }));
        let zero = MapPage { first_block: 0, entries: vec![BlockId::ZERO; 3] }.encode();
        assert_eq!(MapPage::decode(&zero), Err(PageError::AllZero { first_block: 0 }));
    }

    #[test]
    fn a_page_is_checked_against_its_id_and_place() {
        let g = Geometry::new(3 * 512 * 4096 + 4096 * 5, 4096).unwrap(); // pages of 512, 512, 512, 5
        let last = MapPage { first_block: 1536, entries: (0..5).map(id).collect() };
        let b = last.encode();
        let pid = PageId::of(&b);
        assert_eq!(MapPage::decode_expected(&b, &pid, &g, 3).unwrap(), last);
        assert!(matches!(MapPage::decode_expected(&b, &pid, &g, 2), Err(PageError::WrongPlace { .. })));
        for byte in 0..b.len() {
            for bit in 0..8 {
                let mut c = b.clone();
                c[byte] ^= 1 << bit;
                assert!(
                    matches!(MapPage::decode_expected(&c, &pid, &g, 3), Err(PageError::IdMismatch { .. })),
                    "byte {byte} bit {bit}"
                );
            }
        }
    }

    /// A builder given the previous pages after its blocks were set builds
    /// the same map as one that started from them.
    #[test]
    fn previous_pages_given_late_build_the_same_map() {
        let g = Geometry::new(4 * 512 * 4096 - 4096, 4096).unwrap();
        let mut b = MapBuilder::new(g);
        for blk in [0, 600, 1200, 2046] {
            b.set(blk, id(blk)).unwrap();
        }
        let first = b.finish(|_| -> Result<Vec<u8>, PageError> { unreachable!() }).unwrap();
        let store: HashMap<PageId, Vec<u8>> = first.new_pages.into_iter().collect();
        let load = |pid: &PageId| Ok::<_, PageError>(store[pid].clone());
        let changes = |b: &mut MapBuilder| {
            b.set(601, id(601)).unwrap();
            b.set(2046, BlockId::ZERO).unwrap();
        };
        let mut late = MapBuilder::new(g);
        changes(&mut late);
        assert_eq!(late.set_previous(&first.pages[..3]), Err(PageError::PageCount { got: 3, want: 4 }));
        late.set_previous(&first.pages).unwrap();
        let mut from = MapBuilder::from_previous(&first.pages, g).unwrap();
        changes(&mut from);
        assert_eq!(late.pages_to_load(), from.pages_to_load());
        let (late, from) = (late.finish(load).unwrap(), from.finish(load).unwrap());
        assert_eq!(late, from);
        assert_eq!(late.pages[0], first.pages[0], "the untouched page is the previous one");
    }

    #[test]
    fn unchanged_pages_keep_their_id() {
        let g = Geometry::new(4 * 512 * 4096 - 4096, 4096).unwrap(); // 4 pages, the last with 511 entries
        let mut store: HashMap<PageId, Vec<u8>> = HashMap::new();
        let mut b = MapBuilder::new(g);
        for blk in [0, 1, 600, 2047 - 1] {
            b.set(blk, id(blk)).unwrap();
        }
        assert!(b.pages_to_load().is_empty());
        assert_eq!(b.set(2047, id(0)), Err(PageError::BlockOutOfRange { block: 2047, block_count: 2047 }));
        let first = b.finish(|_| -> Result<Vec<u8>, PageError> { unreachable!() }).unwrap();
        assert_eq!(first.pages.len(), 4);
        assert!(first.pages[2].is_zero() && !first.pages[0].is_zero());
        assert_eq!(first.new_pages.len(), 3);
        store.extend(first.new_pages.iter().cloned());

        // Next point: change a block of page 1 and zero the only block of page 3.
        let mut b = MapBuilder::from_previous(&first.pages, g).unwrap();
        b.set(601, id(601)).unwrap();
        b.set(2046, BlockId::ZERO).unwrap();
        assert_eq!(b.pages_to_load(), vec![(1, first.pages[1]), (3, first.pages[3])]);
        let mut loads = 0;
        let second = b
            .finish(|pid| {
                loads += 1;
                Ok::<_, PageError>(store[pid].clone())
            })
            .unwrap();
        assert_eq!(loads, 2);
        assert_eq!(second.pages[0], first.pages[0], "untouched page shared");
        assert_ne!(second.pages[1], first.pages[1]);
        assert!(second.pages[3].is_zero(), "a page that became all zero is not stored");
        assert_eq!(second.new_pages.len(), 1);
        let page1 = MapPage::decode(&second.new_pages[0].1).unwrap();
        assert_eq!((page1.entries[600 - 512], page1.entries[601 - 512]), (id(600), id(601)));

        // Rewriting a block with the same id makes no new page.
        let mut b = MapBuilder::from_previous(&second.pages, g).unwrap();
        b.set(600, id(600)).unwrap();
        store.extend(second.new_pages.iter().cloned());
        let third = b.finish(|pid| Ok::<_, PageError>(store[pid].clone())).unwrap();
        assert_eq!(third.pages, second.pages);
        assert!(third.new_pages.is_empty());

        // A damaged previous page is refused, not merged.
        let mut b = MapBuilder::from_previous(&second.pages, g).unwrap();
        b.set(0, id(9)).unwrap();
        let err = b.finish(|pid| {
            let mut bytes = store[pid].clone();
            bytes[40] ^= 1;
            Ok::<_, PageError>(bytes)
        });
        assert!(matches!(err, Err(PageError::IdMismatch { .. })));
        assert!(matches!(
            MapBuilder::from_previous(&second.pages[..3], g),
            Err(PageError::PageCount { got: 3, want: 4 })
        ));
    }

    #[test]
    fn fuzz_harness_on_pseudo_random_input() {
        let mut rng = crate::codec::XorShift(0xdead_beef_cafe_f00d);
        let good = MapPage { first_block: 512, entries: (0..7).map(id).collect() }.encode();
        assert!(fuzz_map_page_bytes(&good));
        let mut accepted = 0;
        for i in 0..3000 {
            let data = if i % 2 == 0 { rng.some_bytes(300) } else { rng.mutate(&good) };
            accepted += usize::from(fuzz_map_page_bytes(&data));
        }
        // Entry bytes are free-form: flips there still parse (the page id catches them).
        assert!(accepted > 0);
    }

    proptest! {
        #[test]
        fn builder_matches_a_flat_map(
            blocks in 1u64..3000,
            writes in proptest::collection::vec((any::<u64>(), 0u64..50), 0..200),
            rounds in 1usize..4,
        ) {
            let g = Geometry::new(blocks * 4096, 4096).unwrap();
            let mut flat = vec![BlockId::ZERO; blocks as usize];
            let mut store: HashMap<PageId, Vec<u8>> = HashMap::new();
            let mut pages = MapBuilder::new(g).finish(|_| Ok::<_, PageError>(Vec::new())).unwrap().pages;
            for r in 0..rounds {
                let mut b = MapBuilder::from_previous(&pages, g).unwrap();
                for (i, (blk, v)) in writes.iter().enumerate().filter(|(i, _)| i % rounds == r) {
                    let blk = blk % blocks;
                    let v = if v % 5 == 0 { BlockId::ZERO } else { id(*v + i as u64) };
                    b.set(blk, v).unwrap();
                    flat[blk as usize] = v;
                }
                let built = b.finish(|pid| Ok::<_, PageError>(store[pid].clone())).unwrap();
                store.extend(built.new_pages);
                pages = built.pages;
            }
            for (i, pid) in pages.iter().enumerate() {
                let range = page_blocks(&g, i as u64);
                let want = &flat[range.start as usize..range.end as usize];
                if pid.is_zero() {
                    prop_assert!(want.iter().all(BlockId::is_zero));
                } else {
                    let page = MapPage::decode_expected(&store[pid], pid, &g, i as u64).unwrap();
                    prop_assert_eq!(&page.entries[..], want);
                }
            }
        }
    }
}
