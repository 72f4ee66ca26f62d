//! The state file header: two checksummed copies ("slots") in the first 4 KiB
//! page of a protected disk's state file.
//!
//! The filter rewrites the header rarely (open, cut, clean close). Each write
//! goes to the slot that does not hold the newest valid copy, with a sequence
//! number one higher, so a crash in the middle of a header write always leaves
//! the previous header intact. A reader takes the valid slot with the highest
//! sequence number. See `FORMAT.md` for the byte layout.

use crate::geometry::{Geometry, GeometryError};
use crate::ids::{RootId, VaultId};

/// Size of the header page at the start of the state file.
pub const HEADER_PAGE: usize = 4096;
/// Size of one header slot.
pub const SLOT_SIZE: usize = 256;
/// Byte offsets of the two header slots in the header page. They sit in
/// different 512-byte sectors so a torn sector write can damage only one.
pub const SLOT_OFFSETS: [usize; 2] = [0, 2048];
/// First 8 bytes of BLAKE3("lifeboat state file v1").
pub const STATE_MAGIC: [u8; 8] = [0xe2, 0x45, 0xbe, 0x79, 0x10, 0xb3, 0x3a, 0xf8];
/// The state file format this code writes (version 1 is still read).
pub const FORMAT_VERSION: u16 = 2;

const CHECKSUM_AT: usize = SLOT_SIZE - 32;
const _: () = assert!(SLOT_SIZE * 2 <= HEADER_PAGE && SLOT_OFFSETS[1] + SLOT_SIZE <= HEADER_PAGE);

/// Known state file format versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatVersion {
    /// The first format: two header slots, live and cut bitmaps.
    V1 = 1,
    /// Adds the last committed point (bytes 152..216 of a slot, zero in v1).
    V2 = 2,
}

impl TryFrom<u16> for FormatVersion {
    type Error = HeaderError;
    fn try_from(v: u16) -> Result<Self, HeaderError> {
        match v {
            1 => Ok(FormatVersion::V1),
            2 => Ok(FormatVersion::V2),
            other => Err(HeaderError::UnsupportedVersion(other)),
        }
    }
}

/// Header flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StateFlags {
    /// A filter has the disk open. Found set when no filter runs, the filter
    /// stopped without a clean shutdown.
    pub open: bool,
    /// The bitmaps cannot be trusted (the host may have lost their pages): the
    /// whole disk must be verified before the next incremental cycle.
    pub suspect: bool,
}

const FLAG_OPEN: u32 = 1 << 0;
const FLAG_SUSPECT: u32 = 1 << 1;
const KNOWN_FLAGS: u32 = FLAG_OPEN | FLAG_SUSPECT;

impl StateFlags {
    fn to_bits(self) -> u32 {
        (if self.open { FLAG_OPEN } else { 0 }) | (if self.suspect { FLAG_SUSPECT } else { 0 })
    }
    fn from_bits(bits: u32) -> Result<Self, HeaderError> {
        if bits & !KNOWN_FLAGS != 0 {
            return Err(HeaderError::UnknownFlags(bits));
        }
        Ok(StateFlags { open: bits & FLAG_OPEN != 0, suspect: bits & FLAG_SUSPECT != 0 })
    }
}

/// One header, as the program uses it. Serialized by [`StateHeader::encode`]
/// into a 256-byte slot; the field order on disk is fixed by `FORMAT.md`, not
/// by this struct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateHeader {
    /// Slot sequence number; the valid slot with the highest one is current.
    pub seq: u64,
    /// Open / suspect flags.
    pub flags: StateFlags,
    /// Disk size and block size, with everything derived from them.
    pub geometry: Geometry,
    /// Incremented by every cut.
    pub cut_generation: u64,
    /// When the protection was created, seconds since the Unix epoch.
    pub created_unix: u64,
    /// Random identity of the protected disk, fixed at creation.
    pub disk_id: [u8; 16],
    /// Kernel boot id (`/proc/sys/kernel/random/boot_id`) of the last open:
    /// tells a filter crash (same boot, page cache intact) from a host crash.
    pub boot_id: [u8; 16],
    /// BLAKE3 of the live bitmap followed by the cut bitmap, written at clean
    /// close; meaningful only when `flags.open` is false.
    pub bitmaps_checksum: [u8; 32],
    /// The recovery point the dirty bitmaps are relative to: the last one a
    /// cycle of this disk committed. `None` for a new state file (or one
    /// written by format version 1): the next cycle must verify the whole disk.
    pub last_point: Option<LastPoint>,
}

/// The last recovery point committed from this state file: which vault, which
/// point, which root. The live and cut bitmaps hold every block written since
/// that point's cut, so a cycle may build on that point and on no other
/// (DESIGN.md invariant 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastPoint {
    /// The vault's identity (its config's `vault_id`).
    pub vault_id: VaultId,
    /// The point's sequence number (never 0).
    pub sequence: u64,
    /// The point's root id: BLAKE3 of its encoded root.
    pub root_id: RootId,
    /// The cut generation the point was cut at.
    pub cut_generation: u64,
}

/// Why a header slot or page was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// Fewer bytes than a header page.
    #[error("the file is {0} bytes, shorter than the 4096-byte header page (truncated?)")]
    TooShort(usize),
    /// Neither slot starts with the state file magic.
    #[error("not a Lifeboat state file (wrong magic)")]
    BadMagic,
    /// A version this build does not know.
    #[error("state file format version {0} is not supported by this build (it knows versions 1 and 2)")]
    UnsupportedVersion(u16),
    /// The slot's checksum does not match its contents.
    #[error("header checksum mismatch")]
    ChecksumMismatch,
    /// Flag bits this build does not know.
    #[error("unknown header flags {0:#x}")]
    UnknownFlags(u32),
    /// A field holds a value that cannot be right.
    #[error("header field {field} = {value} is invalid: {why}")]
    BadField {
        /// Field name as in FORMAT.md.
        field: &'static str,
        /// The value found.
        value: u64,
        /// What it should have been.
        why: String,
    },
    /// The stored geometry is impossible.
    #[error("header geometry is invalid: {0}")]
    Geometry(#[from] GeometryError),
    /// Both slots are damaged; the errors of slot A and slot B.
    #[error("both header copies are damaged (copy A: {0}; copy B: {1})")]
    BothSlotsBad(Box<HeaderError>, Box<HeaderError>),
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn expect_field(field: &'static str, found: u64, want: u64) -> Result<(), HeaderError> {
    if found == want {
        Ok(())
    } else {
        Err(HeaderError::BadField { field, value: found, why: format!("expected {want} for this geometry") })
    }
}

impl StateHeader {
    /// A fresh header for a newly protected disk: clean, not suspect, generation 0.
    pub fn new(geometry: Geometry, disk_id: [u8; 16], created_unix: u64) -> StateHeader {
        StateHeader {
            seq: 1,
            flags: StateFlags::default(),
            geometry,
            cut_generation: 0,
            created_unix,
            disk_id,
            boot_id: [0; 16],
            bitmaps_checksum: [0; 32],
            last_point: None,
        }
    }

    /// Serializes into one 256-byte slot, checksum included.
    pub fn encode(&self) -> [u8; SLOT_SIZE] {
        let g = &self.geometry;
        let mut b = [0u8; SLOT_SIZE];
        b[0..8].copy_from_slice(&STATE_MAGIC);
        put_u16(&mut b, 8, FORMAT_VERSION);
        put_u16(&mut b, 10, u16::try_from(SLOT_SIZE).expect("256 fits u16"));
        put_u32(&mut b, 12, self.flags.to_bits());
        put_u64(&mut b, 16, self.seq);
        put_u64(&mut b, 24, g.disk_size);
        put_u32(&mut b, 32, g.block_size);
        // 36..40 reserved, zero.
        put_u64(&mut b, 40, g.block_count);
        put_u64(&mut b, 48, g.bitmap_len);
        put_u64(&mut b, 56, g.live_offset());
        put_u64(&mut b, 64, g.cut_offset());
        put_u64(&mut b, 72, self.cut_generation);
        put_u64(&mut b, 80, self.created_unix);
        b[88..104].copy_from_slice(&self.disk_id);
        b[104..120].copy_from_slice(&self.boot_id);
        b[120..152].copy_from_slice(&self.bitmaps_checksum);
        if let Some(p) = &self.last_point {
            b[152..168].copy_from_slice(p.vault_id.as_bytes());
            put_u64(&mut b, 168, p.sequence);
            b[176..208].copy_from_slice(p.root_id.as_bytes());
            put_u64(&mut b, 208, p.cut_generation);
        }
        // 216..224 reserved, zero.
        let sum = blake3::hash(&b[..CHECKSUM_AT]);
        b[CHECKSUM_AT..].copy_from_slice(sum.as_bytes());
        b
    }

    /// Parses and checks one slot: magic, version, checksum, flags, and that
    /// every derived field agrees with the disk size and block size.
    pub fn decode(b: &[u8; SLOT_SIZE]) -> Result<StateHeader, HeaderError> {
        if b[0..8] != STATE_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let version = FormatVersion::try_from(get_u16(b, 8))?;
        let sum = blake3::hash(&b[..CHECKSUM_AT]);
        if sum.as_bytes() != &b[CHECKSUM_AT..] {
            return Err(HeaderError::ChecksumMismatch);
        }
        expect_field("slot_size", u64::from(get_u16(b, 10)), SLOT_SIZE as u64)?;
        let flags = StateFlags::from_bits(get_u32(b, 12))?;
        let geometry = Geometry::new(get_u64(b, 24), u64::from(get_u32(b, 32)))?;
        expect_field("reserved0", u64::from(get_u32(b, 36)), 0)?;
        expect_field("block_count", get_u64(b, 40), geometry.block_count)?;
        expect_field("bitmap_len", get_u64(b, 48), geometry.bitmap_len)?;
        expect_field("live_offset", get_u64(b, 56), geometry.live_offset())?;
        expect_field("cut_offset", get_u64(b, 64), geometry.cut_offset())?;
        // Version 1 reserved bytes 152..224; version 2 keeps 216..224.
        let reserved_from = if version == FormatVersion::V1 { 152 } else { 216 };
        if let Some(i) = b[reserved_from..CHECKSUM_AT].iter().position(|&x| x != 0) {
            return Err(HeaderError::BadField {
                field: "reserved1",
                value: u64::from(b[reserved_from + i]),
                why: format!("byte {} of the slot must be zero", reserved_from + i),
            });
        }
        let sequence = get_u64(b, 168);
        let last_point = if sequence == 0 {
            if let Some(i) = b[152..216].iter().position(|&x| x != 0) {
                return Err(HeaderError::BadField {
                    field: "last_point",
                    value: u64::from(b[152 + i]),
                    why: format!("byte {} must be zero when last_point_sequence is 0", 152 + i),
                });
            }
            None
        } else {
            Some(LastPoint {
                vault_id: VaultId(b[152..168].try_into().expect("16 bytes")),
                sequence,
                root_id: RootId(b[176..208].try_into().expect("32 bytes")),
                cut_generation: get_u64(b, 208),
            })
        };
        Ok(StateHeader {
            seq: get_u64(b, 16),
            flags,
            geometry,
            cut_generation: get_u64(b, 72),
            created_unix: get_u64(b, 80),
            disk_id: b[88..104].try_into().expect("16 bytes"),
            boot_id: b[104..120].try_into().expect("16 bytes"),
            bitmaps_checksum: b[120..152].try_into().expect("32 bytes"),
            last_point,
        })
    }

    /// Reads the current header from a header page: the valid slot with the
    /// highest sequence number. Returns it with the index of its slot.
    pub fn read_page(page: &[u8]) -> Result<(StateHeader, usize), HeaderError> {
        if page.len() < HEADER_PAGE {
            return Err(HeaderError::TooShort(page.len()));
        }
        let slot = |i: usize| -> Result<StateHeader, HeaderError> {
            let at = SLOT_OFFSETS[i];
            StateHeader::decode(page[at..at + SLOT_SIZE].try_into().expect("slot size"))
        };
        match (slot(0), slot(1)) {
            (Ok(a), Ok(b)) => Ok(if b.seq > a.seq { (b, 1) } else { (a, 0) }),
            (Ok(a), Err(_)) => Ok((a, 0)),
            (Err(_), Ok(b)) => Ok((b, 1)),
            (Err(HeaderError::BadMagic), Err(HeaderError::BadMagic)) => Err(HeaderError::BadMagic),
            (Err(ea), Err(eb)) => Err(HeaderError::BothSlotsBad(Box::new(ea), Box::new(eb))),
        }
    }

    /// Writes this header into the slot *not* holding `current_slot`, as the
    /// next sequence number. Returns the slot written. The other slot is left
    /// untouched, so a torn write leaves the previous header readable.
    pub fn write_next(&mut self, page: &mut [u8], current_slot: usize) -> usize {
        self.seq += 1;
        let next = 1 - current_slot;
        let at = SLOT_OFFSETS[next];
        page[at..at + SLOT_SIZE].copy_from_slice(&self.encode());
        next
    }

    /// The first header page of a new state file: the header in slot A, slot B zero.
    pub fn initial_page(&self) -> Vec<u8> {
        let mut page = vec![0u8; HEADER_PAGE];
        page[..SLOT_SIZE].copy_from_slice(&self.encode());
        page
    }
}

/// The checksum recorded at clean close: BLAKE3 over the meaningful words of
/// the live bitmap then the cut bitmap, each word little-endian.
pub fn bitmaps_checksum(live: &[u64], cut: &[u64]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for w in live.iter().chain(cut) {
        h.update(&w.to_le_bytes());
    }
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StateHeader {
        let g = Geometry::new(10 * 65536 + 123, 65536).unwrap();
        let mut h = StateHeader::new(g, *b"disk-identity-01", 1_790_000_000);
        h.boot_id = *b"boot-identity-01";
        h.cut_generation = 7;
        h.flags.open = true;
        h
    }

    #[test]
    fn magic_is_derived_from_the_versioned_string() {
        assert_eq!(&blake3::hash(b"lifeboat state file v1").as_bytes()[..8], &STATE_MAGIC);
    }

    #[test]
    fn round_trip() {
        let h = sample();
        assert_eq!(StateHeader::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn last_point_round_trips() {
        let mut h = sample();
        h.last_point =
            Some(LastPoint { vault_id: VaultId([7; 16]), sequence: 42, root_id: RootId([9; 32]), cut_generation: 6 });
        assert_eq!(StateHeader::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn a_version_1_slot_is_read_without_a_last_point_and_refused_with_bytes_there() {
        let mut b = sample().encode();
        put_u16(&mut b, 8, 1);
        let sum = blake3::hash(&b[..CHECKSUM_AT]);
        b[CHECKSUM_AT..].copy_from_slice(sum.as_bytes());
        let h = StateHeader::decode(&b).unwrap();
        assert_eq!(h.last_point, None);
        // Version 1 reserved the bytes version 2 uses for the last point.
        b[170] = 1;
        let sum = blake3::hash(&b[..CHECKSUM_AT]);
        b[CHECKSUM_AT..].copy_from_slice(sum.as_bytes());
        assert!(matches!(StateHeader::decode(&b), Err(HeaderError::BadField { field: "reserved1", .. })));
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let b = sample().encode();
        for byte in 0..SLOT_SIZE {
            for bit in 0..8 {
                let mut c = b;
                c[byte] ^= 1 << bit;
                assert!(StateHeader::decode(&c).is_err(), "flip of byte {byte} bit {bit} accepted");
            }
        }
    }

    #[test]
    fn newest_valid_slot_wins_and_a_torn_write_falls_back() {
        let mut h = sample();
        let mut page = h.initial_page();
        let (got, slot) = StateHeader::read_page(&page).unwrap();
        assert_eq!((got.seq, slot), (1, 0));
        h.cut_generation = 8;
        let slot = h.write_next(&mut page, slot);
        assert_eq!(slot, 1);
        let (got, s) = StateHeader::read_page(&page).unwrap();
        assert_eq!((got.cut_generation, got.seq, s), (8, 2, 1));
        // Tear the newest slot: the previous header is still there.
        page[SLOT_OFFSETS[1] + 30] ^= 0xff;
        let (got, s) = StateHeader::read_page(&page).unwrap();
        assert_eq!((got.cut_generation, got.seq, s), (7, 1, 0));
    }

    #[test]
    fn damage_is_named() {
        assert_eq!(StateHeader::read_page(&[0u8; 100]), Err(HeaderError::TooShort(100)));
        assert_eq!(StateHeader::read_page(&vec![0u8; HEADER_PAGE]), Err(HeaderError::BadMagic));
        let mut page = sample().initial_page();
        page[40] ^= 1;
        match StateHeader::read_page(&page) {
            Err(HeaderError::BothSlotsBad(a, b)) => {
                assert_eq!(*a, HeaderError::ChecksumMismatch);
                assert_eq!(*b, HeaderError::BadMagic);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn inconsistent_geometry_is_refused_even_with_a_good_checksum() {
        let mut b = sample().encode();
        b[40..48].copy_from_slice(&12u64.to_le_bytes()); // block_count should be 11
        let sum = blake3::hash(&b[..CHECKSUM_AT]);
        b[CHECKSUM_AT..].copy_from_slice(sum.as_bytes());
        assert!(matches!(StateHeader::decode(&b), Err(HeaderError::BadField { field: "block_count", value: 12, .. })));
    }
}
