//! The point root's extension: what a recovery point carries besides its map.
//!
//! Version 1 holds at most one entry, the **VM definition** the disk belonged
//! to when the point was cut (issue 4: "the definition is stored in the vault
//! with each point, encrypted like the blocks"). It is sealed exactly like a
//! block: its id is the keyed BLAKE3 of the plaintext and the AAD of its
//! XChaCha20-Poly1305 seal, so the vault learns nothing about it and a failover
//! at the recovery site gets the definition that matches the point it boots.
//! The root's MAC covers the whole extension as well. See FORMAT.md, "Root
//! extension".
//!
//! The plaintext is opaque here (the `recovery` crate reads it as TOML); this
//! module only frames and seals it.

use crate::codec::{get_array, get_u16, get_u32, put_u16, put_u32};
use crate::ids::BlockId;
#[cfg(test)]
use crate::keys::NONCE_LEN;
use crate::keys::{Cipher, CryptoError, Keys, SEAL_OVERHEAD};

/// The cipher of the sealed VM definition, whatever the vault's block
/// cipher: the extension format fixes it (a few KiB per point, so speed does
/// not matter, and a reader needs no other context to open it).
const DEFINITION_CIPHER: Cipher = Cipher::XChaCha20Poly1305;

/// First 8 bytes of BLAKE3("lifeboat root extension v1").
pub const EXT_MAGIC: [u8; 8] = [0x76, 0x5e, 0x58, 0x4b, 0xd1, 0x98, 0xe5, 0x00];
/// The extension format this code writes.
pub const EXT_VERSION: u8 = 1;
/// The fixed header: magic, version, 3 reserved bytes, entry count.
pub const EXT_HEADER_LEN: usize = 16;
/// Each entry's header: tag (u16), reserved (u16), value length (u32).
pub const ENTRY_HEADER_LEN: usize = 8;
/// Entry tag of the sealed VM definition.
pub const TAG_VM_DEFINITION: u16 = 1;
/// Entry tag of the cut group: the points of several disks cut together.
pub const TAG_CUT_GROUP: u16 = 2;
/// Length of a cut-group entry: id (16) and member count (u32).
pub const CUT_GROUP_LEN: usize = 20;
/// Entry tag of the audit head: the host's audit log as it stood at the cut.
pub const TAG_AUDIT_HEAD: u16 = 3;
/// Length of an audit-head entry: log id (16), seq (u64), MAC (32).
pub const AUDIT_HEAD_LEN: usize = 56;
/// Entry tag of the block cipher: the vault's cipher when the point was cut,
/// one byte ([`Cipher::code`]); written only for a cipher other than
/// XChaCha20-Poly1305, which its absence means.
pub const TAG_BLOCK_CIPHER: u16 = 4;
/// Largest VM definition plaintext, in bytes.
pub const MAX_VM_DEFINITION: usize = 64 << 10;

/// Why an extension was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExtError {
    /// Shorter than its header.
    #[error("the root extension is {len} bytes, shorter than its {EXT_HEADER_LEN}-byte header (truncated)")]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// The magic is not the extension's.
    #[error("the root extension does not start with its magic (not a Lifeboat root extension, or damaged)")]
    BadMagic,
    /// A format version this code does not read.
    #[error("the root extension has format version {0}; this Lifeboat reads version 1 (upgrade Lifeboat)")]
    UnsupportedVersion(u8),
    /// A reserved field is not zero, or the framing does not add up.
    #[error("the root extension is malformed: {0}")]
    Malformed(String),
    /// An entry this version does not know.
    #[error("the root extension holds an entry with tag {0}, unknown to this Lifeboat (upgrade Lifeboat)")]
    UnknownEntry(u16),
    /// The VM definition is larger than [`MAX_VM_DEFINITION`].
    #[error("the VM definition is {len} bytes; at most {MAX_VM_DEFINITION} are allowed")]
    DefinitionTooLarge {
        /// Its length.
        len: usize,
    },
    /// The sealed definition did not open: altered, or another key.
    #[error("the VM definition in the point's root does not decrypt: {0}")]
    Crypto(CryptoError),
}

/// A decoded extension.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootExtension {
    /// The VM definition's plaintext, if the disk belonged to a VM.
    pub vm_definition: Option<Vec<u8>>,
    /// The group cut this point was taken in, with the other disks' points
    /// that carry the same id (authenticated by the root's MAC, not secret).
    pub cut_group: Option<CutGroup>,
    /// The newest record of the writing host's audit log when the point was
    /// cut (authenticated by the root's MAC, not secret). A vault whose copy
    /// of that log ends before it lost audit segments (issue 12, hole 8).
    pub audit_head: Option<AuditHead>,
    /// The vault's block cipher when the point was cut, if not
    /// XChaCha20-Poly1305 (authenticated by the root's MAC): a vault config
    /// that names another cipher later was replaced.
    pub block_cipher: Option<Cipher>,
}

/// Where an audit log stood: its id, the newest record's seq and MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditHead {
    /// The log's id (audit record field `log_id`).
    pub log_id: [u8; 16],
    /// The newest record's seq (at least 1).
    pub seq: u64,
    /// The newest record's MAC.
    pub mac: [u8; 32],
}

/// A group cut: every member disk's point of one cut carries its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutGroup {
    /// Random, one per group cut.
    pub id: [u8; 16],
    /// How many disks were cut together.
    pub members: u32,
}

impl RootExtension {
    /// Encodes and seals the extension; an empty extension encodes as no
    /// bytes at all (a v1 root without one).
    pub fn encode(&self, keys: &Keys) -> Result<Vec<u8>, ExtError> {
        let mut entries: Vec<(u16, Vec<u8>)> = Vec::new();
        if let Some(def) = &self.vm_definition {
            if def.len() > MAX_VM_DEFINITION {
                return Err(ExtError::DefinitionTooLarge { len: def.len() });
            }
            let id = keys.block_id(def);
            let sealed = keys.seal_block(DEFINITION_CIPHER, &id, def).map_err(ExtError::Crypto)?;
            entries.push((TAG_VM_DEFINITION, [&id.0[..], &sealed].concat()));
        }
        if let Some(g) = &self.cut_group {
            entries.push((TAG_CUT_GROUP, [&g.id[..], &g.members.to_le_bytes()].concat()));
        }
        if let Some(h) = &self.audit_head {
            entries.push((TAG_AUDIT_HEAD, [&h.log_id[..], &h.seq.to_le_bytes(), &h.mac[..]].concat()));
        }
        if let Some(c) = self.block_cipher.filter(|&c| c != Cipher::XChaCha20Poly1305) {
            entries.push((TAG_BLOCK_CIPHER, vec![c.code()]));
        }
        Ok(frame_entries(&entries))
    }

    /// [`RootExtension::encode`] with a fixed nonce. **Tests only** (golden
    /// vectors): a nonce used twice under one key breaks the encryption.
    #[cfg(test)]
    pub(crate) fn encode_with_nonce_for_tests(&self, keys: &Keys, nonce: [u8; NONCE_LEN]) -> Vec<u8> {
        let def = self.vm_definition.as_deref().unwrap_or_default();
        let id = keys.block_id(def);
        frame(&id, &keys.seal_block_with_nonce_for_tests(DEFINITION_CIPHER, &id, def, nonce))
    }

    /// Decodes an extension and opens its sealed entries with `keys`. No
    /// bytes decode as an empty extension.
    pub fn decode(b: &[u8], keys: &Keys) -> Result<RootExtension, ExtError> {
        if b.is_empty() {
            return Ok(RootExtension::default());
        }
        if b.len() < EXT_HEADER_LEN {
            return Err(ExtError::TooShort { len: b.len() });
        }
        if b[..8] != EXT_MAGIC {
            return Err(ExtError::BadMagic);
        }
        if b[8] != EXT_VERSION {
            return Err(ExtError::UnsupportedVersion(b[8]));
        }
        if b[9..12] != [0; 3] {
            return Err(ExtError::Malformed("reserved header bytes 9..12 are not zero".into()));
        }
        let count = get_u32(b, 12);
        if count == 0 {
            // The empty extension is written as no bytes; a second spelling of
            // it would give one point two root ids.
            return Err(ExtError::Malformed("a header with no entries (an empty extension is no bytes)".into()));
        }
        let mut at = EXT_HEADER_LEN;
        let mut ext = RootExtension::default();
        let mut last_tag = 0;
        for i in 0..count {
            if b.len() - at < ENTRY_HEADER_LEN {
                return Err(ExtError::Malformed(format!("entry {i} of {count} is cut off at byte {at}")));
            }
            let tag = get_u16(b, at);
            if get_u16(b, at + 2) != 0 {
                return Err(ExtError::Malformed(format!("entry {i}'s reserved bytes are not zero")));
            }
            if tag < last_tag {
                return Err(ExtError::Malformed(format!(
                    "entry {i} has tag {tag} after tag {last_tag}: entries are in tag order"
                )));
            }
            last_tag = tag;
            let len = get_u32(b, at + 4) as usize;
            let start = at + ENTRY_HEADER_LEN;
            let Some(value) = start.checked_add(len).and_then(|end| b.get(start..end)) else {
                return Err(ExtError::Malformed(format!(
                    "entry {i} says {len} bytes but only {} follow",
                    b.len() - start
                )));
            };
            match tag {
                TAG_VM_DEFINITION if ext.vm_definition.is_some() => {
                    return Err(ExtError::Malformed("two VM definitions".into()))
                }
                TAG_VM_DEFINITION => ext.vm_definition = Some(open_definition(value, keys)?),
                TAG_CUT_GROUP if ext.cut_group.is_some() => return Err(ExtError::Malformed("two cut groups".into())),
                TAG_CUT_GROUP if value.len() != CUT_GROUP_LEN => {
                    return Err(ExtError::Malformed(format!("the cut group entry is {} bytes, not 20", value.len())))
                }
                TAG_CUT_GROUP => {
                    let members = get_u32(value, 16);
                    if members < 2 {
                        return Err(ExtError::Malformed(format!("a cut group of {members} disk(s)")));
                    }
                    ext.cut_group = Some(CutGroup { id: get_array(value, 0), members });
                }
                TAG_AUDIT_HEAD if ext.audit_head.is_some() => {
                    return Err(ExtError::Malformed("two audit heads".into()))
                }
                TAG_AUDIT_HEAD if value.len() != AUDIT_HEAD_LEN => {
                    return Err(ExtError::Malformed(format!("the audit head entry is {} bytes, not 56", value.len())))
                }
                TAG_AUDIT_HEAD => {
                    let seq = crate::codec::get_u64(value, 16);
                    if seq == 0 {
                        return Err(ExtError::Malformed("an audit head at record 0".into()));
                    }
                    ext.audit_head = Some(AuditHead { log_id: get_array(value, 0), seq, mac: get_array(value, 24) });
                }
                TAG_BLOCK_CIPHER if ext.block_cipher.is_some() => {
                    return Err(ExtError::Malformed("two block ciphers".into()))
                }
                TAG_BLOCK_CIPHER => ext.block_cipher = Some(block_cipher(value)?),
                other => return Err(ExtError::UnknownEntry(other)),
            }
            at = start + len;
        }
        if at != b.len() {
            return Err(ExtError::Malformed(format!("{} bytes follow the last entry", b.len() - at)));
        }
        Ok(ext)
    }
}

/// The cut group of an extension, read **without** the key (for listings:
/// the root's MAC is what authenticates it; nothing that restores data may
/// rely on this). `None` for no extension, no group, or bytes that do not
/// frame.
pub fn cut_group_unauthenticated(b: &[u8]) -> Option<CutGroup> {
    if b.len() < EXT_HEADER_LEN || b[..8] != EXT_MAGIC || b[8] != EXT_VERSION {
        return None;
    }
    let mut at = EXT_HEADER_LEN;
    for _ in 0..get_u32(b, 12) {
        let tag = get_u16(b, at.checked_add(ENTRY_HEADER_LEN).filter(|&e| e <= b.len()).map(|_| at)?);
        let len = get_u32(b, at + 4) as usize;
        let value = b.get(at + ENTRY_HEADER_LEN..(at + ENTRY_HEADER_LEN).checked_add(len)?)?;
        if tag == TAG_CUT_GROUP && value.len() == CUT_GROUP_LEN {
            return Some(CutGroup { id: get_array(value, 0), members: get_u32(value, 16) });
        }
        at += ENTRY_HEADER_LEN + len;
    }
    None
}

/// The value of a block-cipher entry: one byte naming a cipher other than
/// XChaCha20-Poly1305 (whose absence of an entry is its one spelling).
fn block_cipher(value: &[u8]) -> Result<Cipher, ExtError> {
    match value {
        [code] => match Cipher::from_code(*code) {
            Some(c) if c != Cipher::XChaCha20Poly1305 => Ok(c),
            _ => Err(ExtError::Malformed(format!("the block cipher entry names cipher {code}"))),
        },
        _ => Err(ExtError::Malformed(format!("the block cipher entry is {} bytes, not 1", value.len()))),
    }
}

/// Extension bytes `ext` (as encoded, sealed entries and all) with a
/// block-cipher entry for `cipher` appended: the shipper records the vault's
/// cipher in every point without opening what the caller sealed. Unchanged
/// for XChaCha20-Poly1305 (recorded by absence) and for bytes that already
/// name a cipher; entries stay in tag order because the tag is the highest.
pub fn with_block_cipher(ext: &[u8], cipher: Cipher) -> Vec<u8> {
    if cipher == Cipher::XChaCha20Poly1305 || block_cipher_unauthenticated(ext).is_some() {
        return ext.to_vec();
    }
    let mut b = ext.to_vec();
    if b.is_empty() {
        b.resize(EXT_HEADER_LEN, 0);
        b[..8].copy_from_slice(&EXT_MAGIC);
        b[8] = EXT_VERSION;
    }
    let count = get_u32(&b, 12);
    put_u32(&mut b, 12, count + 1);
    let mut head = [0u8; ENTRY_HEADER_LEN];
    put_u16(&mut head, 0, TAG_BLOCK_CIPHER);
    put_u32(&mut head, 4, 1);
    b.extend_from_slice(&head);
    b.push(cipher.code());
    b
}

/// The block cipher an extension names, read **without** the key: `None`
/// when it names none (XChaCha20-Poly1305) or does not frame. Trust it only
/// from a root whose MAC was verified.
pub fn block_cipher_unauthenticated(b: &[u8]) -> Option<Cipher> {
    if b.len() < EXT_HEADER_LEN || b[..8] != EXT_MAGIC || b[8] != EXT_VERSION {
        return None;
    }
    let mut at = EXT_HEADER_LEN;
    for _ in 0..get_u32(b, 12) {
        let head = b.get(at..at.checked_add(ENTRY_HEADER_LEN)?)?;
        let (tag, len) = (get_u16(head, 0), get_u32(head, 4) as usize);
        let value = b.get(at + ENTRY_HEADER_LEN..(at + ENTRY_HEADER_LEN).checked_add(len)?)?;
        if tag == TAG_BLOCK_CIPHER {
            return block_cipher(value).ok();
        }
        at += ENTRY_HEADER_LEN + len;
    }
    None
}

/// The v1 extension with one VM-definition entry: `id ‖ sealed blob`.
#[cfg(test)]
fn frame(id: &BlockId, sealed: &[u8]) -> Vec<u8> {
    frame_entries(&[(TAG_VM_DEFINITION, [&id.0[..], sealed].concat())])
}

/// The v1 extension holding `entries` in order; none: no bytes at all.
fn frame_entries(entries: &[(u16, Vec<u8>)]) -> Vec<u8> {
    if entries.is_empty() {
        return Vec::new();
    }
    let mut b = vec![0u8; EXT_HEADER_LEN];
    b[..8].copy_from_slice(&EXT_MAGIC);
    b[8] = EXT_VERSION;
    put_u32(&mut b, 12, u32::try_from(entries.len()).expect("three entries at most"));
    for (tag, value) in entries {
        let at = b.len();
        b.resize(at + ENTRY_HEADER_LEN, 0);
        put_u16(&mut b, at, *tag);
        put_u32(&mut b, at + 4, u32::try_from(value.len()).expect("bounded by MAX_VM_DEFINITION"));
        b.extend_from_slice(value);
    }
    b
}

fn open_definition(value: &[u8], keys: &Keys) -> Result<Vec<u8>, ExtError> {
    if value.len() < 32 + SEAL_OVERHEAD {
        return Err(ExtError::Malformed(format!("the VM definition entry is only {} bytes", value.len())));
    }
    let id = BlockId(get_array(value, 0));
    let plain = keys.open_block(DEFINITION_CIPHER, &id, &value[32..]).map_err(ExtError::Crypto)?;
    if plain.len() > MAX_VM_DEFINITION {
        return Err(ExtError::DefinitionTooLarge { len: plain.len() });
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::XorShift;
    use crate::keys::MasterKey;

    fn keys(b: u8) -> Keys {
        MasterKey::from_bytes([b; 32]).keys()
    }

    fn ext() -> RootExtension {
        RootExtension {
            vm_definition: Some(b"name = \"web1\"\ndisks = [\"web1-root\"]\n".to_vec()),
            cut_group: None,
            audit_head: None,
            block_cipher: None,
        }
    }

    #[test]
    fn an_audit_head_round_trips_with_the_other_entries_and_bad_ones_are_refused() {
        let k = keys(7);
        let h = AuditHead { log_id: [4; 16], seq: 77, mac: [5; 32] };
        let g = CutGroup { id: [9; 16], members: 2 };
        let all = RootExtension { cut_group: Some(g), audit_head: Some(h), ..ext() };
        for e in [RootExtension { audit_head: Some(h), ..RootExtension::default() }, all] {
            let bytes = e.encode(&k).unwrap();
            assert_eq!(RootExtension::decode(&bytes, &k).unwrap(), e);
        }
        let zero = RootExtension { audit_head: Some(AuditHead { seq: 0, ..h }), ..RootExtension::default() };
        assert!(matches!(RootExtension::decode(&zero.encode(&k).unwrap(), &k), Err(ExtError::Malformed(_))));
    }

    #[test]
    fn a_cut_group_round_trips_alone_and_with_a_definition_and_bad_ones_are_refused() {
        let k = keys(7);
        let g = CutGroup { id: [9; 16], members: 3 };
        for e in [
            RootExtension { cut_group: Some(g), ..RootExtension::default() },
            RootExtension { cut_group: Some(g), ..ext() },
        ] {
            let bytes = e.encode(&k).unwrap();
            assert_eq!(RootExtension::decode(&bytes, &k).unwrap(), e);
            assert_eq!(cut_group_unauthenticated(&bytes), Some(g));
        }
        assert_eq!(cut_group_unauthenticated(&ext().encode(&k).unwrap()), None);
        let mut one =
            RootExtension { cut_group: Some(CutGroup { id: [1; 16], members: 1 }), ..RootExtension::default() }
                .encode(&k)
                .unwrap();
        assert!(matches!(RootExtension::decode(&one, &k), Err(ExtError::Malformed(_))), "a group of one disk");
        one.truncate(one.len() - 1);
        assert!(RootExtension::decode(&one, &k).is_err());
    }

    #[test]
    fn the_block_cipher_entry_is_appended_read_and_checked() {
        let k = keys(1);
        let h = AuditHead { log_id: [3; 16], seq: 9, mac: [4; 32] };
        for base in [RootExtension::default(), ext(), RootExtension { audit_head: Some(h), ..ext() }] {
            let bytes = base.encode(&k).unwrap();
            assert_eq!(block_cipher_unauthenticated(&bytes), None);
            assert_eq!(with_block_cipher(&bytes, Cipher::XChaCha20Poly1305), bytes, "recorded by absence");
            let aes = with_block_cipher(&bytes, Cipher::Aes256Gcm);
            assert_eq!(block_cipher_unauthenticated(&aes), Some(Cipher::Aes256Gcm));
            assert_eq!(with_block_cipher(&aes, Cipher::Aes256Gcm), aes, "appended once");
            let want = RootExtension { block_cipher: Some(Cipher::Aes256Gcm), ..base.clone() };
            assert_eq!(RootExtension::decode(&aes, &k).unwrap(), want);
            // Sealed entries get fresh nonces, so compare the tail only.
            assert_eq!(want.encode(&k).unwrap().len(), aes.len(), "appending and encoding agree");
        }
        // One spelling: XChaCha20-Poly1305 named, an unknown code, two entries.
        let aes = with_block_cipher(&[], Cipher::Aes256Gcm);
        assert_eq!(
            aes,
            RootExtension { block_cipher: Some(Cipher::Aes256Gcm), ..Default::default() }.encode(&k).unwrap()
        );
        for code in [0u8, 1, 9] {
            let mut b = aes.clone();
            *b.last_mut().unwrap() = code;
            assert!(matches!(RootExtension::decode(&b, &k), Err(ExtError::Malformed(_))), "code {code}");
            assert_eq!(block_cipher_unauthenticated(&b), None);
        }
        let mut two = aes.clone();
        put_u32(&mut two, 12, 2);
        two.extend_from_slice(&aes[EXT_HEADER_LEN..]);
        assert!(matches!(RootExtension::decode(&two, &k), Err(ExtError::Malformed(_))));
    }

    #[test]
    fn magic_is_derived_from_the_versioned_string() {
        assert_eq!(&blake3::hash(b"lifeboat root extension v1").as_bytes()[..8], &EXT_MAGIC);
    }

    #[test]
    fn round_trips_and_hides_the_definition() {
        let k = keys(7);
        let bytes = ext().encode(&k).unwrap();
        assert_eq!(RootExtension::decode(&bytes, &k).unwrap(), ext());
        let text = b"web1-root";
        assert!(!bytes.windows(text.len()).any(|w| w == text), "the definition is stored in the clear");
        assert!(RootExtension::default().encode(&k).unwrap().is_empty());
        assert_eq!(RootExtension::decode(&[], &k).unwrap(), RootExtension::default());
    }

    #[test]
    fn two_seals_of_one_definition_differ() {
        let k = keys(7);
        assert_ne!(ext().encode(&k).unwrap(), ext().encode(&k).unwrap(), "a nonce was reused");
    }

    #[test]
    fn the_wrong_key_and_any_flipped_bit_are_refused() {
        let k = keys(7);
        let bytes = ext().encode(&k).unwrap();
        assert!(matches!(RootExtension::decode(&bytes, &keys(8)), Err(ExtError::Crypto(_))));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(RootExtension::decode(&bad, &k).is_err(), "a flipped bit at byte {i} was accepted");
        }
        for n in 0..bytes.len() {
            assert!(RootExtension::decode(&bytes[..n], &k).is_err() || n == 0, "truncated to {n} was accepted");
        }
    }

    #[test]
    fn oversized_definitions_are_refused_on_encode() {
        let big = RootExtension { vm_definition: Some(vec![b'x'; MAX_VM_DEFINITION + 1]), ..RootExtension::default() };
        assert!(matches!(big.encode(&keys(1)), Err(ExtError::DefinitionTooLarge { .. })));
    }

    #[test]
    fn golden_vector() {
        let k = keys(0x42);
        let bytes = ext().encode_with_nonce_for_tests(&k, [0x24; NONCE_LEN]);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            include_str!("../tests/fixtures/vault-v1/root-extension.hex").trim(),
            "the extension's bytes changed"
        );
        assert_eq!(RootExtension::decode(&bytes, &k).unwrap(), ext());
    }

    /// The stable part of the fuzz target: random and mutated inputs never
    /// panic.
    /// Found by the `root_ext` fuzz target: a bare header with an entry count
    /// of 0 decoded as the empty extension, a second encoding of it.
    #[test]
    fn a_header_with_no_entries_is_refused() {
        let k = keys(3);
        let mut b = vec![0u8; EXT_HEADER_LEN];
        b[..8].copy_from_slice(&EXT_MAGIC);
        b[8] = EXT_VERSION;
        assert!(
            matches!(RootExtension::decode(&b, &k), Err(ExtError::Malformed(m)) if m.contains("no entries")),
            "{:?}",
            RootExtension::decode(&b, &k)
        );
        assert_eq!(RootExtension::default().encode(&k).unwrap(), Vec::<u8>::new());
    }

    /// FORMAT.md says the entries are in tag order; the decoder took any order,
    /// so one extension had several encodings.
    #[test]
    fn entries_out_of_tag_order_are_refused() {
        let k = keys(3);
        let group = [&[9u8; 16][..], &2u32.to_le_bytes()].concat();
        let head = [&[8u8; 16][..], &5u64.to_le_bytes(), &[7u8; 32]].concat();
        let ordered = frame_entries(&[(TAG_CUT_GROUP, group.clone()), (TAG_AUDIT_HEAD, head.clone())]);
        let ext = RootExtension::decode(&ordered, &k).unwrap();
        assert_eq!(ext.encode(&k).unwrap(), ordered);
        let swapped = frame_entries(&[(TAG_AUDIT_HEAD, head), (TAG_CUT_GROUP, group)]);
        assert!(
            matches!(RootExtension::decode(&swapped, &k), Err(ExtError::Malformed(m)) if m.contains("tag order")),
            "{:?}",
            RootExtension::decode(&swapped, &k)
        );
    }

    #[test]
    fn random_and_mutated_inputs_never_panic() {
        let k = keys(3);
        let good = ext().encode(&k).unwrap();
        let mut rng = XorShift(0x5eed);
        for _ in 0..5000 {
            let _ = RootExtension::decode(&rng.mutate(&good), &k);
            let _ = cut_group_unauthenticated(&rng.mutate(&good));
            let _ = RootExtension::decode(&rng.some_bytes(200), &k);
        }
    }
}
