//! Page packs: the map pages one cycle wrote, stored as one object.
//!
//! A point changes a few map pages per cycle; stored one object each, they
//! cost a request (and on a local vault an fsync and a rename) per page, more
//! than the data on an object store. A page pack holds up to
//! [`MAX_PACK_PAGES`] encoded map pages back to back, an index naming each
//! by its [`PageId`] with its place, and a trailer at the end, so that a
//! reader fetches the index with one suffix-range request and the pages it
//! needs with one range each (adjacent pages coalesced). The object is named
//! by BLAKE3 of all its bytes, like a map page, and lives beside the map
//! pages (`pages/HEX`); a format-3 root says which pack holds each of its
//! pages ([`crate::Root::page_packs`]). See FORMAT.md, "Page pack".
//!
//! Pages inside are not trusted because of where they are: each is checked
//! against the page id the root names ([`crate::Root::check_page`]) like a
//! page stored alone. [`PagePack::verify`] is the keyless scrub.
//!
//! Version 2 adds **block-pack hints** between the pages and the index: for
//! each page, the packs that held its blocks when it was written
//! ([`Hints`]). A restore reads those packs' indexes instead of every pack's
//! in the vault. They are hints, not facts: nothing in them is
//! authenticated on a partial read, and a reader that does not find a
//! block where they point looks in every pack.

use std::ops::Range;

use crate::codec::{first_nonzero, get_array, get_u16, get_u32, get_u64, put_u16, put_u32, put_u64, to_usize};
use crate::ids::{PackId, PageId};
use crate::map_page::{MapPage, PageError, PAGE_HEADER_LEN, PAGE_LEN};

/// First 8 bytes of BLAKE3("lifeboat page pack v1").
pub const PAGE_PACK_MAGIC: [u8; 8] = [0xf3, 0xe7, 0x15, 0x48, 0xea, 0x6d, 0x2e, 0x63];
/// The page pack format this code writes (with hints; version 1, without,
/// is still read, and written by [`PagePack::encode`] given no hints).
pub const PAGE_PACK_VERSION: u16 = 2;
/// Most distinct packs one page pack's hints name (2 MiB of ids: with 512
/// pages and their ordinals the object stays under 12 MiB).
pub const MAX_HINT_PACKS: usize = 65_536;
/// A page's hint count when the packs of its blocks are not known.
pub const HINTS_UNKNOWN: u32 = u32::MAX;
/// Size of the header: magic, version, 6 reserved bytes.
pub const PAGE_PACK_HEADER_LEN: usize = 16;
/// Size of an index entry: page id (32), offset (u64), length (u32), reserved (u32).
pub const PAGE_PACK_ENTRY_LEN: usize = 48;
/// Size of the trailer: index offset (u64), count (u32), version (u16),
/// reserved (u16), magic (8).
pub const PAGE_PACK_TRAILER_LEN: usize = 24;
/// Most pages one pack holds: its largest size is then 8.4 MiB (under the
/// vault server's 16 MiB bound for a page object), and its index 24 KiB.
pub const MAX_PACK_PAGES: usize = 512;
/// A suffix this long always holds the whole index and trailer.
pub const PAGE_PACK_MAX_TAIL: u64 = (MAX_PACK_PAGES * PAGE_PACK_ENTRY_LEN + PAGE_PACK_TRAILER_LEN) as u64;

/// Why bytes are not a page pack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PagePackError {
    /// Shorter than header, one entry and trailer.
    #[error("the page pack is {len} bytes, too short to hold a page (truncated)")]
    TooShort {
        /// Its length.
        len: u64,
    },
    /// A magic is not the page pack's.
    #[error("the page pack's {0} does not carry its magic (not a page pack, or damaged)")]
    BadMagic(&'static str),
    /// A version this code does not read.
    #[error("page pack format version {0} is not supported by this build (it knows versions 1 and 2)")]
    UnsupportedVersion(u16),
    /// A reserved byte is not zero.
    #[error("the page pack's {0} has a reserved byte that is not zero")]
    Reserved(&'static str),
    /// The count is 0 or above [`MAX_PACK_PAGES`], or does not fit the length.
    #[error("the page pack says {count} pages at index offset {index_offset} in {len} bytes (truncated or damaged)")]
    BadFraming {
        /// The count found.
        count: u32,
        /// The index offset found.
        index_offset: u64,
        /// The object's length.
        len: u64,
    },
    /// An entry's place is not where the previous one ended, or its length is
    /// not a page's.
    #[error("entry {entry} of the page pack places its page at {offset}+{len}: {why}")]
    BadEntry {
        /// Entry number, 0-based.
        entry: usize,
        /// Offset found.
        offset: u64,
        /// Length found.
        len: u32,
        /// What is wrong.
        why: &'static str,
    },
    /// A page id appears twice.
    #[error("page {0} is in the page pack twice")]
    DuplicatePage(PageId),
    /// The whole pack does not hash to its name.
    #[error("the page pack hashes to {got}, not to its name {expected} (damaged or swapped)")]
    IdMismatch {
        /// The name it was stored under.
        expected: PageId,
        /// What its bytes hash to.
        got: PageId,
    },
    /// A page inside is damaged.
    #[error("page {index} of the page pack ({id}): {error}")]
    Page {
        /// Entry number, 0-based.
        index: usize,
        /// The page id the index gives.
        id: PageId,
        /// What is wrong with it.
        error: PageError,
    },
    /// Nothing to pack, or more than [`MAX_PACK_PAGES`] pages.
    #[error("a page pack holds 1 ..= 512 pages, not {0}")]
    Count(usize),
    /// The hints section (version 2) is malformed.
    #[error("the page pack's block-pack hints are malformed: {0}")]
    BadHints(&'static str),
}

/// One page's place in a page pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PagePackEntry {
    /// The page's id (BLAKE3 of its bytes).
    pub id: PageId,
    /// Its bytes' place in the pack.
    pub range: Range<u64>,
}

/// A page pack's index, parsed from its tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PagePack {
    /// The pages, in pack order.
    pub entries: Vec<PagePackEntry>,
    /// Version 2: where the hints section is (read it with
    /// [`PagePack::hints`]); version 1 has none.
    pub hints_range: Option<Range<u64>>,
}

/// Where the blocks of each page of a page pack were stored when the pack
/// was written: the packs holding them (version 2). Canonical: `packs`
/// strictly ascending, each named by some page; each page's ordinals
/// strictly ascending.
///
/// ```text
/// pack_count (u32) ‖ reserved (u32) ‖ pack ids (32 × pack_count)
/// ‖ per page, in index order: n (u32; HINTS_UNKNOWN: not known) ‖ n × ordinal (u32)
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hints {
    /// Every pack named, ascending.
    pub packs: Vec<PackId>,
    /// Per page (index order): ordinals into `packs`, or `None` if not known.
    pub pages: Vec<Option<Vec<u32>>>,
}

impl Hints {
    /// The hints for pages whose blocks are in the packs `sets` (one per
    /// page, in order; `None`: not known). Errors with
    /// [`PagePackError::BadHints`] past [`MAX_HINT_PACKS`] packs.
    pub fn from_sets(sets: &[Option<Vec<PackId>>]) -> Result<Hints, PagePackError> {
        let mut packs: Vec<PackId> = sets.iter().flatten().flatten().copied().collect();
        packs.sort_unstable();
        packs.dedup();
        if packs.len() > MAX_HINT_PACKS {
            return Err(PagePackError::BadHints("more packs than a page pack names (65,536)"));
        }
        let pages = sets
            .iter()
            .map(|set| {
                set.as_ref().map(|set| {
                    let mut o: Vec<u32> = set
                        .iter()
                        .map(|p| u32::try_from(packs.binary_search(p).expect("collected above")).expect("bounded"))
                        .collect();
                    o.sort_unstable();
                    o.dedup();
                    o
                })
            })
            .collect();
        Ok(Hints { packs, pages })
    }

    /// The packs hinted for page `i` (pack order), or `None` if not known.
    pub fn of_page(&self, i: usize) -> Option<impl Iterator<Item = &PackId> + '_> {
        let o = self.pages.get(i)?.as_ref()?;
        Some(o.iter().map(|&n| &self.packs[n as usize]))
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&u32::try_from(self.packs.len()).expect("bounded").to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        for p in &self.packs {
            out.extend_from_slice(&p.0);
        }
        for page in &self.pages {
            match page {
                None => out.extend_from_slice(&HINTS_UNKNOWN.to_le_bytes()),
                Some(o) => {
                    out.extend_from_slice(&u32::try_from(o.len()).expect("bounded").to_le_bytes());
                    for n in o {
                        out.extend_from_slice(&n.to_le_bytes());
                    }
                }
            }
        }
    }

    /// Parses a hints section for `pages` pages (the whole section, no more).
    pub fn parse(b: &[u8], pages: usize) -> Result<Hints, PagePackError> {
        let bad = PagePackError::BadHints;
        if b.len() < 8 {
            return Err(bad("shorter than its counts"));
        }
        let count = get_u32(b, 0) as usize;
        if get_u32(b, 4) != 0 {
            return Err(PagePackError::Reserved("hints"));
        }
        if count > MAX_HINT_PACKS || b.len() < 8 + 32 * count {
            return Err(bad("more packs than the section holds"));
        }
        let packs: Vec<PackId> = (0..count).map(|i| PackId(get_array(b, 8 + 32 * i))).collect();
        if packs.windows(2).any(|w| w[0] >= w[1]) {
            return Err(bad("the packs are not in strictly ascending order"));
        }
        let mut used = vec![false; count];
        let mut at = 8 + 32 * count;
        let mut out = Vec::with_capacity(pages);
        for _ in 0..pages {
            if b.len() < at + 4 {
                return Err(bad("a page's count runs past the section"));
            }
            let n = get_u32(b, at);
            at += 4;
            if n == HINTS_UNKNOWN {
                out.push(None);
                continue;
            }
            let n = n as usize;
            if n > crate::map_page::PAGE_ENTRIES || b.len() < at + 4 * n {
                return Err(bad("a page names more packs than it has blocks, or than the section holds"));
            }
            let o: Vec<u32> = (0..n).map(|k| get_u32(b, at + 4 * k)).collect();
            at += 4 * n;
            if o.windows(2).any(|w| w[0] >= w[1]) || o.last().is_some_and(|&l| l as usize >= count) {
                return Err(bad("a page's packs are out of order or out of range"));
            }
            for &k in &o {
                used[k as usize] = true;
            }
            out.push(Some(o));
        }
        if at != b.len() {
            return Err(bad("bytes follow the last page's packs"));
        }
        if used.contains(&false) {
            return Err(bad("a pack no page names"));
        }
        Ok(Hints { packs, pages: out })
    }
}

impl PagePackEntry {
    /// The page's bytes in `pack`, the whole page pack this entry was
    /// parsed from.
    pub fn bytes<'a>(&self, pack: &'a [u8]) -> &'a [u8] {
        &pack[to_usize(self.range.start)..to_usize(self.range.end)]
    }
}

impl PagePack {
    /// Packs encoded map pages (id, bytes) in the order given, with
    /// `hints` for them (version 2; one per page) or none (version 1).
    /// Returns the object's bytes; its name is `PageId::of` them. Each page
    /// must be a valid map page hashing to its id.
    pub fn encode(pages: &[(PageId, &[u8])], hints: Option<&Hints>) -> Result<Vec<u8>, PagePackError> {
        if pages.is_empty() || pages.len() > MAX_PACK_PAGES {
            return Err(PagePackError::Count(pages.len()));
        }
        if hints.is_some_and(|h| h.pages.len() != pages.len()) {
            return Err(PagePackError::BadHints("not one entry per page"));
        }
        let version = if hints.is_some() { 2 } else { 1u16 };
        let data: usize = pages.iter().map(|(_, b)| b.len()).sum();
        let mut out =
            Vec::with_capacity(PAGE_PACK_HEADER_LEN + data + pages.len() * PAGE_PACK_ENTRY_LEN + PAGE_PACK_TRAILER_LEN);
        out.extend_from_slice(&PAGE_PACK_MAGIC);
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&[0; 6]);
        let mut seen = std::collections::HashSet::new();
        for (i, (id, bytes)) in pages.iter().enumerate() {
            if !seen.insert(*id) {
                return Err(PagePackError::DuplicatePage(*id));
            }
            check_page(i, id, bytes)?;
            out.extend_from_slice(bytes);
        }
        if let Some(h) = hints {
            h.encode(&mut out);
        }
        let index_offset = out.len() as u64;
        let mut at = PAGE_PACK_HEADER_LEN as u64;
        for (id, bytes) in pages {
            let mut e = [0u8; PAGE_PACK_ENTRY_LEN];
            e[..32].copy_from_slice(&id.0);
            put_u64(&mut e, 32, at);
            put_u32(&mut e, 40, u32::try_from(bytes.len()).expect("a page is 16 KiB at most"));
            out.extend_from_slice(&e);
            at += bytes.len() as u64;
        }
        let mut t = [0u8; PAGE_PACK_TRAILER_LEN];
        put_u64(&mut t, 0, index_offset);
        put_u32(&mut t, 8, u32::try_from(pages.len()).expect("at most 512"));
        put_u16(&mut t, 12, version);
        t[16..].copy_from_slice(&PAGE_PACK_MAGIC);
        out.extend_from_slice(&t);
        Ok(out)
    }

    /// Parses the index from the last `tail.len()` bytes of a `len`-byte
    /// page pack (the whole object, or a suffix of at least
    /// [`PAGE_PACK_MAX_TAIL`] bytes, or at least the index and trailer).
    /// Checks the framing; not the pages, nor the header unless the tail
    /// holds it. `Ok(None)`: the tail is too short to hold the index; fetch
    /// `needed` bytes instead.
    pub fn parse_tail(tail: &[u8], len: u64) -> Result<Result<PagePack, u64>, PagePackError> {
        let min = (PAGE_PACK_HEADER_LEN + PAGE_HEADER_LEN + 32 + PAGE_PACK_ENTRY_LEN + PAGE_PACK_TRAILER_LEN) as u64;
        if len < min || (tail.len() as u64) < PAGE_PACK_TRAILER_LEN as u64 || tail.len() as u64 > len {
            return Err(PagePackError::TooShort { len });
        }
        let t = &tail[tail.len() - PAGE_PACK_TRAILER_LEN..];
        if t[16..] != PAGE_PACK_MAGIC {
            return Err(PagePackError::BadMagic("trailer"));
        }
        let version = get_u16(t, 12);
        if !(1..=PAGE_PACK_VERSION).contains(&version) {
            return Err(PagePackError::UnsupportedVersion(version));
        }
        if get_u16(t, 14) != 0 {
            return Err(PagePackError::Reserved("trailer"));
        }
        let (index_offset, count) = (get_u64(t, 0), get_u32(t, 8));
        let framing = PagePackError::BadFraming { count, index_offset, len };
        let index_len = u64::from(count) * PAGE_PACK_ENTRY_LEN as u64;
        if count == 0
            || count as usize > MAX_PACK_PAGES
            || index_offset.checked_add(index_len + PAGE_PACK_TRAILER_LEN as u64) != Some(len)
            || index_offset < (PAGE_PACK_HEADER_LEN + PAGE_HEADER_LEN + 32) as u64
        {
            return Err(framing);
        }
        let needed = index_len + PAGE_PACK_TRAILER_LEN as u64;
        if (tail.len() as u64) < needed {
            return Ok(Err(needed));
        }
        let tail_start = len - tail.len() as u64;
        if tail_start == 0 {
            check_header(tail, version)?;
        }
        let index = &tail[to_usize(index_offset - tail_start)..tail.len() - PAGE_PACK_TRAILER_LEN];
        let mut entries = Vec::with_capacity(count as usize);
        let mut seen = std::collections::HashSet::with_capacity(count as usize);
        let mut at = PAGE_PACK_HEADER_LEN as u64;
        for (i, e) in index.chunks_exact(PAGE_PACK_ENTRY_LEN).enumerate() {
            let id = PageId(get_array(e, 0));
            let (offset, plen) = (get_u64(e, 32), get_u32(e, 40));
            let bad = |why| PagePackError::BadEntry { entry: i, offset, len: plen, why };
            if first_nonzero(e, 44..48).is_some() {
                return Err(PagePackError::Reserved("index"));
            }
            if offset != at {
                return Err(bad("each page starts where the one before ends (the first at byte 16)"));
            }
            let plen64 = u64::from(plen);
            if plen64 < (PAGE_HEADER_LEN + 32) as u64 || plen64 > PAGE_LEN as u64 || (plen64 - 32) % 32 != 0 {
                return Err(bad("not the length of a map page"));
            }
            if offset + plen64 > index_offset {
                return Err(bad("it runs into the index"));
            }
            if !seen.insert(id) {
                return Err(PagePackError::DuplicatePage(id));
            }
            at = offset + plen64;
            entries.push(PagePackEntry { id, range: offset..at });
        }
        // Version 1: the pages end at the index. Version 2: the hints
        // section lies between them, at least its two counts long.
        let hints_range = match version {
            1 if at == index_offset => None,
            2 if at + 8 <= index_offset => Some(at..index_offset),
            _ => return Err(PagePackError::BadFraming { count, index_offset, len }),
        };
        Ok(Ok(PagePack { entries, hints_range }))
    }

    /// The hints of a pack parsed from `tail`, the last bytes of its `len`
    /// (`Ok(Ok(None))` for version 1). `Ok(Err(needed))`: the tail does not
    /// reach back to the hints; fetch the last `needed` bytes instead.
    pub fn hints(&self, tail: &[u8], len: u64) -> Result<Result<Option<Hints>, u64>, PagePackError> {
        let Some(range) = &self.hints_range else { return Ok(Ok(None)) };
        let tail_start = len - tail.len() as u64;
        if range.start < tail_start {
            return Ok(Err(len - range.start));
        }
        let b = &tail[to_usize(range.start - tail_start)..to_usize(range.end - tail_start)];
        Hints::parse(b, self.entries.len()).map(|h| Ok(Some(h)))
    }

    /// Parses a whole page pack held in memory (framing and header; the
    /// pages are checked where they are used, against the root's ids).
    pub fn parse(bytes: &[u8]) -> Result<PagePack, PagePackError> {
        let Ok(pack) = PagePack::parse_tail(bytes, bytes.len() as u64)? else {
            unreachable!("the whole object holds its index")
        };
        pack.hints(bytes, bytes.len() as u64)?.expect("the whole object holds its hints");
        Ok(pack)
    }

    /// The keyless scrub: the pack hashes to its name `id`, frames, and every
    /// page inside hashes to the id its index gives and decodes.
    pub fn verify(bytes: &[u8], id: &PageId) -> Result<PagePack, PagePackError> {
        if !id.matches(bytes) {
            return Err(PagePackError::IdMismatch { expected: *id, got: PageId::of(bytes) });
        }
        let pack = PagePack::parse(bytes)?;
        for (i, e) in pack.entries.iter().enumerate() {
            check_page(i, &e.id, e.bytes(bytes))?;
        }
        Ok(pack)
    }

    /// The entry of page `id`, if the pack holds it.
    pub fn find(&self, id: &PageId) -> Option<&PagePackEntry> {
        self.entries.iter().find(|e| e.id == *id)
    }
}

/// Whether `bytes` start like a page pack (its header magic); a map page
/// starts with its own.
pub fn is_page_pack(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..8] == PAGE_PACK_MAGIC
}

fn check_header(b: &[u8], trailer_version: u16) -> Result<(), PagePackError> {
    if b[..8] != PAGE_PACK_MAGIC {
        return Err(PagePackError::BadMagic("header"));
    }
    let version = get_u16(b, 8);
    if version != trailer_version {
        return Err(PagePackError::UnsupportedVersion(version));
    }
    if first_nonzero(b, 10..PAGE_PACK_HEADER_LEN).is_some() {
        return Err(PagePackError::Reserved("header"));
    }
    Ok(())
}

fn check_page(index: usize, id: &PageId, bytes: &[u8]) -> Result<(), PagePackError> {
    let error = if !id.matches(bytes) {
        PageError::IdMismatch { expected: *id, got: PageId::of(bytes) }
    } else {
        match MapPage::decode(bytes) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        }
    };
    Err(PagePackError::Page { index, id: *id, error })
}

/// Runs the page pack parser on `data` the way a fuzz target would: an
/// accepted pack must re-encode to the same bytes. Returns whether it was
/// accepted. Panics only on a real bug.
pub fn fuzz_page_pack_bytes(data: &[u8]) -> bool {
    // As the tail of a longer object: framing only, never a panic.
    for extra in [0u64, 1, 4096] {
        let _ = PagePack::parse_tail(data, data.len() as u64 + extra);
    }
    let Ok(pack) = PagePack::verify(data, &PageId::of(data)) else { return false };
    let pages: Vec<(PageId, &[u8])> = pack.entries.iter().map(|e| (e.id, e.bytes(data))).collect();
    let hints = pack.hints(data, data.len() as u64).expect("verified").expect("whole");
    if let Some(h) = &hints {
        let sets: Vec<Option<Vec<PackId>>> =
            (0..pages.len()).map(|i| h.of_page(i).map(|it| it.copied().collect())).collect();
        assert_eq!(&Hints::from_sets(&sets).expect("accepted hints rebuild"), h, "hints round trip");
    }
    assert_eq!(
        PagePack::encode(&pages, hints.as_ref()).expect("accepted pages re-encode"),
        data,
        "page pack round trip"
    );
    true
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test sizes are small
mod tests {
    use super::*;
    use crate::ids::BlockId;

    fn page(first_block: u64, entries: usize, seed: u8) -> (PageId, Vec<u8>) {
        let bytes = MapPage { first_block, entries: (0..entries).map(|i| BlockId([seed ^ i as u8 | 1; 32])).collect() }
            .encode();
        (PageId::of(&bytes), bytes)
    }

    /// Page `i` is hinted to packs `[i + 1; 32]` and `[200; 32]`, but the
    /// third page, whose packs are not known.
    fn sets(n: usize) -> Vec<Option<Vec<PackId>>> {
        (0..n).map(|i| (i != 2).then(|| vec![PackId([200; 32]), PackId([i as u8 + 1; 32])])).collect()
    }

    fn pack_of(pages: &[(PageId, Vec<u8>)]) -> Vec<u8> {
        let refs: Vec<(PageId, &[u8])> = pages.iter().map(|(id, b)| (*id, b.as_slice())).collect();
        PagePack::encode(&refs, Some(&Hints::from_sets(&sets(pages.len())).unwrap())).unwrap()
    }

    fn v1_pack_of(pages: &[(PageId, Vec<u8>)]) -> Vec<u8> {
        let refs: Vec<(PageId, &[u8])> = pages.iter().map(|(id, b)| (*id, b.as_slice())).collect();
        PagePack::encode(&refs, None).unwrap()
    }

    #[test]
    fn hints_name_each_pages_packs_and_are_read_from_the_tail() {
        let pages = vec![page(0, 512, 1), page(512, 512, 2), page(1024, 7, 3)];
        let b = pack_of(&pages);
        let len = b.len() as u64;
        let pack = PagePack::parse(&b).unwrap();
        let hints = pack.hints(&b, len).unwrap().unwrap().unwrap();
        let of = |i| hints.of_page(i).map(|it| it.copied().collect::<Vec<_>>());
        assert_eq!(of(0), Some(vec![PackId([1; 32]), PackId([200; 32])]));
        assert_eq!(of(1), Some(vec![PackId([2; 32]), PackId([200; 32])]));
        assert_eq!(of(2), None, "not known");
        assert_eq!(hints.packs.len(), 3, "[200; 32] named once");
        // A suffix holding the index but not the hints asks for them.
        let need = 3 * PAGE_PACK_ENTRY_LEN + PAGE_PACK_TRAILER_LEN;
        let from_tail = PagePack::parse_tail(&b[b.len() - need..], len).unwrap().unwrap();
        let hints_at = pack.hints_range.clone().unwrap().start;
        assert_eq!(from_tail.hints(&b[b.len() - need..], len).unwrap(), Err(len - hints_at));
        let tail = &b[usize::try_from(hints_at).unwrap()..];
        assert_eq!(from_tail.hints(tail, len).unwrap(), Ok(Some(hints)));
        // Version 1 packs have none, and still read and round-trip.
        let v1 = v1_pack_of(&pages);
        let p1 = PagePack::verify(&v1, &PageId::of(&v1)).unwrap();
        assert_eq!((p1.hints_range.clone(), p1.hints(&v1, v1.len() as u64).unwrap()), (None, Ok(None)));
        assert_eq!(p1.entries, pack.entries, "same pages, same places");
        assert!(fuzz_page_pack_bytes(&v1) && fuzz_page_pack_bytes(&b));
    }

    #[test]
    fn malformed_hints_are_refused() {
        let pages = vec![page(0, 3, 1), page(512, 2, 2)];
        let b = pack_of(&pages);
        let pack = PagePack::parse(&b).unwrap();
        let at = usize::try_from(pack.hints_range.clone().unwrap().start).unwrap();
        // packs [1;32], [2;32], [200;32]; page 0 -> 0, 2; page 1 -> 1, 2.
        let hints_of = |c: &[u8]| {
            let p = PagePack::parse_tail(c, c.len() as u64)?.unwrap();
            p.hints(c, c.len() as u64).map(|h| h.unwrap())
        };
        let mut c = b.clone();
        c[at + 8] = 3; // first pack id above the second
        assert!(matches!(hints_of(&c), Err(PagePackError::BadHints(_))));
        let mut c = b.clone();
        c[at + 8 + 96 + 4] = 7; // page 0's first ordinal out of range
        assert!(matches!(hints_of(&c), Err(PagePackError::BadHints(_))));
        let mut c = b.clone();
        c[at + 4] = 1; // reserved
        assert!(matches!(hints_of(&c), Err(PagePackError::Reserved("hints"))));
        let mut c = b.clone();
        c[at + 8 + 96 + 4] = 2; // page 0 -> 2, 2: not strictly ascending, and pack 0 unnamed
        assert!(matches!(hints_of(&c), Err(PagePackError::BadHints(_))));
        let too_many: Vec<Option<Vec<PackId>>> = vec![Some(
            (0..=MAX_HINT_PACKS as u32)
                .map(|n| {
                    let mut id = [0u8; 32];
                    id[..4].copy_from_slice(&n.to_le_bytes());
                    PackId(id)
                })
                .collect(),
        )];
        assert!(matches!(Hints::from_sets(&too_many), Err(PagePackError::BadHints(_))));
        let refs: Vec<(PageId, &[u8])> = pages.iter().map(|(id, b)| (*id, b.as_slice())).collect();
        let one = Hints::from_sets(&sets(1)).unwrap();
        assert!(matches!(PagePack::encode(&refs, Some(&one)), Err(PagePackError::BadHints(_))));
    }

    #[test]
    fn magic_is_derived_from_the_versioned_string() {
        assert_eq!(PAGE_PACK_MAGIC, blake3::hash(b"lifeboat page pack v1").as_bytes()[..8]);
    }

    #[test]
    fn round_trip_and_ranged_reads() {
        let pages = vec![page(0, 512, 1), page(512, 512, 2), page(1024, 7, 3)];
        let b = pack_of(&pages);
        let id = PageId::of(&b);
        let pack = PagePack::verify(&b, &id).unwrap();
        assert_eq!(pack.entries.len(), 3);
        for ((pid, bytes), e) in pages.iter().zip(&pack.entries) {
            assert_eq!(e.id, *pid);
            assert_eq!(e.bytes(&b), bytes.as_slice());
        }
        // From a suffix: the index alone is enough; a shorter one asks for more.
        let need = 3 * PAGE_PACK_ENTRY_LEN + PAGE_PACK_TRAILER_LEN;
        assert_eq!(PagePack::parse_tail(&b[b.len() - need..], b.len() as u64).unwrap(), Ok(pack.clone()));
        assert_eq!(PagePack::parse_tail(&b[b.len() - 30..], b.len() as u64).unwrap(), Err(need as u64));
        assert!(is_page_pack(&b) && !is_page_pack(&pages[0].1));
        assert!(fuzz_page_pack_bytes(&b));
    }

    #[test]
    fn every_flipped_bit_is_refused_by_the_scrub() {
        let pages = vec![page(0, 3, 1), page(512, 2, 2)];
        for b in [pack_of(&pages), v1_pack_of(&pages)] {
            let id = PageId::of(&b);
            // The hints' pack ids: any 32 bytes in ascending order frame, so
            // only the name catches a changed one (and a wrong hint costs a
            // reader a look in every pack, nothing else).
            let ids = PagePack::parse(&b)
                .unwrap()
                .hints_range
                .map_or(0..0, |r| r.start as usize + 8..r.start as usize + 8 + 96);
            for bit in 0..b.len() * 8 {
                let mut c = b.clone();
                c[bit / 8] ^= 1 << (bit % 8);
                assert!(PagePack::verify(&c, &id).is_err(), "bit {bit}");
                // Without the name, the structure or a page's own id still catches it.
                let parsed = PagePack::verify(&c, &PageId::of(&c));
                assert!(parsed.is_err() || ids.contains(&(bit / 8)), "bit {bit} passed the structural scrub");
            }
        }
    }

    #[test]
    fn damage_is_named() {
        let pages = vec![page(0, 3, 1), page(512, 2, 2)];
        let b = pack_of(&pages);
        let len = b.len() as u64;
        assert!(matches!(PagePack::parse(&b[..b.len() - 1]), Err(PagePackError::BadMagic("trailer"))));
        let mut c = b.clone();
        c[0] ^= 1;
        assert!(matches!(PagePack::parse(&c), Err(PagePackError::BadMagic("header"))));
        let mut c = b.clone();
        let at = b.len() - PAGE_PACK_TRAILER_LEN + 8;
        c[at] = 3; // count
        assert!(matches!(PagePack::parse(&c), Err(PagePackError::BadFraming { count: 3, .. })));
        let mut c = b.clone();
        let e1 = b.len() - PAGE_PACK_TRAILER_LEN - PAGE_PACK_ENTRY_LEN;
        c[e1 + 32] ^= 0x20; // second entry's offset
        assert!(matches!(PagePack::parse(&c), Err(PagePackError::BadEntry { entry: 1, .. })));
        let twice = [pages[0].clone(), pages[0].clone()];
        let refs: Vec<(PageId, &[u8])> = twice.iter().map(|(id, b)| (*id, b.as_slice())).collect();
        assert_eq!(PagePack::encode(&refs, None), Err(PagePackError::DuplicatePage(pages[0].0)));
        assert_eq!(PagePack::encode(&[], None), Err(PagePackError::Count(0)));
        let wrong = [(pages[1].0, pages[0].1.as_slice())];
        assert!(matches!(PagePack::encode(&wrong, None), Err(PagePackError::Page { index: 0, .. })));
        assert!(matches!(PagePack::verify(&b, &pages[0].0), Err(PagePackError::IdMismatch { .. })));
        assert!(matches!(PagePack::parse_tail(&b[..10], len), Err(PagePackError::TooShort { .. })));
    }

    #[test]
    fn fuzz_harness_on_pseudo_random_input() {
        let good = pack_of(&[page(0, 5, 9)]);
        let mut rng = crate::codec::XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2000 {
            let mut c = good.clone();
            for _ in 0..=rng.below(3) {
                let i = rng.below(c.len());
                c[i] = rng.next().to_le_bytes()[0];
            }
            if rng.below(4) == 0 {
                c.truncate(rng.below(c.len()));
            }
            fuzz_page_pack_bytes(&c);
        }
    }
}
