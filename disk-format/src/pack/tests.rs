//! Unit tests of the pack format: round trips, named damage, bit flips, and
//! the fuzz harness on pseudo-random input.
#![allow(clippy::cast_possible_truncation)] // test sizes are small
use super::*;
use crate::keys::{Cipher, CryptoError, Keys, MasterKey};
use proptest::prelude::*;

fn keys() -> Keys {
    MasterKey::from_bytes([1; 32]).keys()
}

fn build(k: &Keys, blocks: &[Vec<u8>]) -> FinishedPack<Vec<u8>> {
    build_with(k, Cipher::XChaCha20Poly1305, blocks)
}

fn build_with(k: &Keys, cipher: Cipher, blocks: &[Vec<u8>]) -> FinishedPack<Vec<u8>> {
    let mut w = PackWriter::for_cipher(Vec::new(), cipher).unwrap();
    assert_eq!(w.cipher(), cipher);
    for (i, b) in blocks.iter().enumerate() {
        let id = k.block_id(b);
        if i % 2 == 0 {
            w.add_blob(&id, &k.seal_block(cipher, &id, b).unwrap()).unwrap();
        } else {
            let mut buf = b.clone();
            let frame = k.seal_detached(cipher, &id, &mut buf).unwrap();
            w.add_sealed(&id, &frame, &buf).unwrap();
        }
    }
    w.finish().unwrap()
}

/// The same blobs as a version 1 pack (which this code no longer writes):
/// 48-byte entries without CRCs, version 1 in header and trailer.
fn as_v1(v2: &[u8]) -> Vec<u8> {
    let t = PackIndex::parse_trailer(v2, v2.len() as u64).unwrap();
    let r = t.index_range();
    let mut out = v2[..r.start as usize].to_vec();
    put_u16(&mut out, 8, 1);
    for e in v2[r.start as usize..r.end as usize].chunks_exact(INDEX_ENTRY_LEN) {
        out.extend_from_slice(&e[..INDEX_ENTRY_LEN_V1]);
    }
    let index_hash = blake3::hash(&out[r.start as usize..]);
    let mut trailer = v2[v2.len() - 64..].to_vec();
    put_u16(&mut trailer, T_VERSION, 1);
    trailer[T_INDEX_HASH..T_INDEX_HASH + 32].copy_from_slice(index_hash.as_bytes());
    out.extend_from_slice(&trailer);
    out
}

fn sample_blocks() -> Vec<Vec<u8>> {
    vec![b"first block".to_vec(), vec![7u8; 300], b"third".to_vec()]
}

#[test]
fn magic_is_derived_from_the_versioned_string() {
    assert_eq!(&blake3::hash(b"lifeboat pack v1").as_bytes()[..8], &PACK_MAGIC);
}

#[test]
fn write_parse_open() {
    let k = keys();
    let blocks = sample_blocks();
    let done = build(&k, &blocks);
    assert_eq!(done.len, done.out.len() as u64);
    let pack = Pack::verify(&done.out, &done.id).unwrap();
    assert_eq!(pack.index(), &done.index);
    assert_eq!(pack.index().version(), PackVersion::V2);
    // Named by header, index and trailer: the blobs are not hashed.
    let tail = &done.out[done.index.index_offset() as usize..];
    assert_eq!(Some(done.id), pack_id_from_tail(PackVersion::V2, tail));
    let mut outside_blobs = done.out[..32].to_vec();
    outside_blobs.extend_from_slice(tail);
    assert_eq!(done.id, PackId::of(&outside_blobs));
    assert_eq!(pack.id(), done.id);
    for (n, b) in blocks.iter().enumerate() {
        let (e, blob) = pack.blob(n).unwrap();
        assert_eq!(&k.open_block(pack.index().cipher(), &e.id, blob).unwrap(), b);
        assert_eq!(pack.index().find(&e.id).unwrap().0 as usize, n);
        assert_eq!(e.checksum, Some(crc32fast::hash(blob)), "entry {n}: the blob's CRC-32, also for add_sealed");
    }
    assert_eq!(pack.blob(3).unwrap_err(), PackError::NoSuchEntry { entry: 3, count: 3 });
    // The ranged-read path: trailer from the tail, then the index.
    let len = done.out.len() as u64;
    let t = PackIndex::parse_trailer(&done.out[done.out.len() - 64..], len).unwrap();
    let r = t.index_range();
    let idx = PackIndex::parse_index(&done.out[r.start as usize..r.end as usize], &t).unwrap();
    assert_eq!(idx, done.index);
    let e = idx.entries()[1];
    let blob = &done.out[e.range().start as usize..e.range().end as usize];
    e.check_blob(1, blob).unwrap();
    assert!(matches!(e.check_blob(1, &blob[1..]), Err(PackError::BlobLength { entry: 1, .. })));
    e.check_checksum(1, blob).unwrap();
    let mut bad = blob.to_vec();
    bad[30] ^= 4;
    assert_eq!(
        e.check_checksum(1, &bad),
        Err(PackError::BlobChecksum {
            entry: 1,
            offset: e.offset,
            len: e.blob_len,
            expected: e.checksum.unwrap(),
            got: crc32fast::hash(&bad)
        })
    );
}

/// A damaged blob fails its CRC; damage in header, index or trailer fails
/// the name; a pack under another pack's name fails the name. All without
/// the key.
#[test]
fn keyless_verification_names_the_blob_or_the_pack() {
    let k = keys();
    let done = build(&k, &sample_blocks());
    let e2 = done.index.entries()[2];
    let mut p = done.out.clone();
    p[e2.offset as usize + 30] ^= 0x10;
    let err = Pack::verify(&p, &done.id).unwrap_err();
    assert!(matches!(err, PackError::BlobChecksum { entry: 2, .. }), "{err}");
    assert!(err.to_string().contains("index entry 2"), "{err}");
    assert_eq!(Pack::parse(&p).unwrap().check_checksums().len(), 1, "one damaged blob, one error");
    let other = build(&k, &[b"another pack".to_vec()]);
    assert!(matches!(Pack::verify(&other.out, &done.id), Err(PackError::IdMismatch { .. })));
    // A CRC edited to match a damaged blob (index hash fixed too) still
    // changes the name.
    let at = entry_at(&p, 2) + E_CHECKSUM;
    let crc = crc32fast::hash(&p[e2.range().start as usize..e2.range().end as usize]);
    put_u32(&mut p, at, crc);
    rehash_index(&mut p);
    assert!(Pack::parse(&p).unwrap().check_checksums().is_empty());
    assert!(matches!(Pack::verify(&p, &done.id), Err(PackError::IdMismatch { .. })));
    // Reserved bytes of an entry, and versions that disagree.
    let mut p = done.out.clone();
    let at = entry_at(&p, 1) + E_CHECKSUM + 6;
    p[at] = 9;
    rehash_index(&mut p);
    assert_eq!(Pack::parse(&p).unwrap_err(), PackError::Reserved { place: "index entry", offset: at as u64, value: 9 });
    let mut p = done.out.clone();
    put_u16(&mut p, 8, 1);
    assert_eq!(Pack::parse(&p).unwrap_err(), PackError::VersionMismatch { header: 1, trailer: 2 });
    let mut p = done.out.clone();
    put_u16(&mut p, 8, 3);
    assert_eq!(Pack::parse(&p).unwrap_err(), PackError::VersionMismatch { header: 3, trailer: 2 });
    let mut p = done.out.clone();
    put_u16(&mut p, 8, 4);
    assert_eq!(Pack::parse(&p).unwrap_err(), PackError::UnsupportedVersion { place: "header", version: 4 });
}

/// Version 1 packs (48-byte entries, named by all their bytes) still parse,
/// verify and open; every flipped bit is still found without the key.
#[test]
fn version_1_packs_are_still_read() {
    let k = keys();
    let blocks = sample_blocks();
    let v1 = as_v1(&build(&k, &blocks).out);
    let id = PackId::of(&v1);
    let pack = Pack::verify(&v1, &id).unwrap();
    assert_eq!((pack.index().version(), pack.id()), (PackVersion::V1, id));
    for (n, b) in blocks.iter().enumerate() {
        let (e, blob) = pack.blob(n).unwrap();
        assert_eq!(e.checksum, None);
        assert_eq!(&k.open_block(pack.index().cipher(), &e.id, blob).unwrap(), b);
    }
    let t = PackIndex::parse_trailer(&v1[v1.len() - 64..], v1.len() as u64).unwrap();
    assert_eq!((t.version, t.index_range().end - t.index_range().start), (PackVersion::V1, 3 * 48));
    for byte in 0..v1.len() {
        let mut p = v1.clone();
        p[byte] ^= 0x40;
        assert!(Pack::verify(&p, &id).is_err(), "v1 keyless: byte {byte}");
    }
    assert_eq!(fuzz_pack_bytes(&v1), 3);
}

/// An AES-256-GCM pack is version 3 and names its cipher in the trailer;
/// it verifies, opens and round-trips like version 2, and a changed cipher
/// byte is caught without the key (the name) and with it (the AEAD).
#[test]
fn version_3_packs_record_their_cipher() {
    let k = keys();
    let blocks = sample_blocks();
    let done = build_with(&k, Cipher::Aes256Gcm, &blocks);
    let pack = Pack::verify(&done.out, &done.id).unwrap();
    assert_eq!((pack.index().version(), pack.index().cipher()), (PackVersion::V3, Cipher::Aes256Gcm));
    assert_eq!(&done.out[..10], &[&PACK_MAGIC[..], &[3, 0]].concat()[..]);
    let t_at = done.out.len() - PACK_TRAILER_LEN;
    assert_eq!(done.out[t_at + T_CIPHER], 2);
    let tail = &done.out[done.index.index_offset() as usize..];
    assert_eq!(pack_id_from_tail(PackVersion::V3, tail), Some(done.id));
    assert_ne!(pack_id_from_tail(PackVersion::V2, tail), Some(done.id), "the header's version is part of the name");
    for (n, b) in blocks.iter().enumerate() {
        let (e, blob) = pack.blob(n).unwrap();
        assert_eq!(&k.open_block(Cipher::Aes256Gcm, &e.id, blob).unwrap(), b);
        assert!(k.open_block(Cipher::XChaCha20Poly1305, &e.id, blob).is_err());
    }
    assert_eq!(fuzz_pack_bytes(&done.out), 3);

    // The cipher byte set to XChaCha20-Poly1305 (a downgrade): the name no
    // longer matches, and a reader that trusted it could not open a blob.
    let mut p = done.out.clone();
    p[t_at + T_CIPHER] = Cipher::XChaCha20Poly1305.code();
    assert!(matches!(Pack::verify(&p, &done.id), Err(PackError::IdMismatch { .. })));
    let forged = Pack::parse(&p).unwrap();
    assert_eq!(forged.index().cipher(), Cipher::XChaCha20Poly1305);
    let (e, blob) = forged.blob(0).unwrap();
    assert_eq!(k.open_block(forged.index().cipher(), &e.id, blob), Err(CryptoError::Inauthentic { id: e.id }));
    // No cipher, or one this build does not know.
    for code in [0u8, 3, 0xff] {
        let mut p = done.out.clone();
        p[t_at + T_CIPHER] = code;
        assert_eq!(Pack::parse(&p).unwrap_err(), PackError::UnknownCipher { code, offset: (t_at + T_CIPHER) as u64 });
    }
    // A version 2 trailer keeps the byte reserved.
    let v2 = build(&k, &blocks).out;
    let mut p = v2.clone();
    p[v2.len() - PACK_TRAILER_LEN + T_CIPHER] = 2;
    assert!(matches!(Pack::parse(&p).unwrap_err(), PackError::Reserved { place: "trailer", .. }));
}

/// Version 3 entries say which blobs hold their block compressed; the flag
/// round-trips, is covered by the index hash and the name, and a version 2
/// writer cannot record it.
#[test]
fn version_3_entries_record_compression() {
    let k = keys();
    let mut w = PackWriter::v3(Vec::new(), Cipher::XChaCha20Poly1305).unwrap();
    for (i, b) in sample_blocks().iter().enumerate() {
        let id = k.block_id(b);
        let blob = k.seal_block(Cipher::XChaCha20Poly1305, &id, b).unwrap();
        w.add_encoded(&id, &blob, blob_checksum(&blob), i == 1).unwrap();
    }
    let done = w.finish().unwrap();
    let pack = Pack::verify(&done.out, &done.id).unwrap();
    assert_eq!((pack.index().version(), pack.index().cipher()), (PackVersion::V3, Cipher::XChaCha20Poly1305));
    let flags: Vec<bool> = pack.index().entries().iter().map(|e| e.compressed).collect();
    assert_eq!(flags, [false, true, false]);
    assert_eq!(fuzz_pack_bytes(&done.out), 3);
    // The flag is a byte of the index: flipping it fails the index hash;
    // with the hash recomputed, the name.
    let at = entry_at(&done.out, 1) + E_ENCODING;
    assert_eq!(done.out[at], 1);
    let mut p = done.out.clone();
    p[at] = 0;
    assert!(matches!(Pack::parse(&p), Err(PackError::IndexHashMismatch { .. })));
    rehash_index(&mut p);
    assert!(!Pack::parse(&p).unwrap().index().entries()[1].compressed);
    assert!(matches!(Pack::verify(&p, &done.id), Err(PackError::IdMismatch { .. })));
    // No encoding but 0 and 1.
    let mut p = done.out.clone();
    p[at] = 2;
    rehash_index(&mut p);
    let offset = pack.index().entries()[1].offset;
    assert_eq!(Pack::parse(&p).unwrap_err(), PackError::BadEncoding { entry: 1, offset, value: 2 });
    // A version 2 pack cannot say a blob is compressed.
    let mut v2 = PackWriter::new(Vec::new()).unwrap();
    let id = k.block_id(b"x");
    let blob = k.seal_block(Cipher::XChaCha20Poly1305, &id, b"x").unwrap();
    assert!(matches!(
        v2.add_encoded(&id, &blob, blob_checksum(&blob), true),
        Err(PackWriteError::Invalid(PackError::BadEncoding { entry: 0, value: 1, .. }))
    ));
}

#[test]
fn len_with_is_the_finished_length_one_blob_on() {
    let k = keys();
    let blocks = sample_blocks();
    let mut w = PackWriter::new(Vec::new()).unwrap();
    for (n, b) in blocks.iter().enumerate() {
        let id = k.block_id(b);
        let blob = k.seal_block(Cipher::XChaCha20Poly1305, &id, b).unwrap();
        let predicted = w.len_with(blob.len());
        w.add_blob(&id, &blob).unwrap();
        let done = build(&k, &blocks[..=n]);
        assert_eq!((predicted, done.out.len() as u64), (done.len, done.len), "after blob {n}");
    }
}

#[test]
fn writer_refuses_bad_blobs() {
    let k = keys();
    let mut w = PackWriter::new(Vec::new()).unwrap();
    let id = k.block_id(b"x");
    let blob = k.seal_block(Cipher::XChaCha20Poly1305, &id, b"x").unwrap();
    w.add_blob(&id, &blob).unwrap();
    assert!(w.contains(&id));
    assert!(matches!(
        w.add_blob(&id, &blob),
        Err(PackWriteError::Invalid(PackError::DuplicateId { entry: 1, first: 0, .. }))
    ));
    assert!(matches!(w.add_blob(&BlockId::ZERO, &blob), Err(PackWriteError::Invalid(PackError::ZeroId { .. }))));
    assert!(matches!(
        w.add_blob(&BlockId([3; 32]), &blob[..40]),
        Err(PackWriteError::Invalid(PackError::BadLength { .. }))
    ));
    assert!(matches!(
        w.add_blob(&BlockId([3; 32]), &blob[..39]),
        Err(PackWriteError::Invalid(PackError::BadLength { .. }))
    ));
    assert_eq!((w.count(), w.bytes_written()), (1, 32 + 41));
    assert!(matches!(PackWriter::new(Vec::new()).unwrap().finish(), Err(PackWriteError::Invalid(PackError::Empty))));
}

/// Rewrites the trailer's index hash after an edit of the index.
fn rehash_index(p: &mut [u8]) {
    let len = p.len();
    let t = PackIndex::parse_trailer(p, len as u64).unwrap();
    let r = t.index_range();
    let h = blake3::hash(&p[r.start as usize..r.end as usize]);
    p[len - 64 + T_INDEX_HASH..len - 64 + T_INDEX_HASH + 32].copy_from_slice(h.as_bytes());
}

fn entry_at(p: &[u8], n: usize) -> usize {
    let t = PackIndex::parse_trailer(p, p.len() as u64).unwrap();
    t.index_offset as usize + n * INDEX_ENTRY_LEN
}

#[test]
fn structural_damage_is_named() {
    let good = build(&keys(), &sample_blocks()).out;
    let first_len = 11 + 40u64;
    // Overlap: entry 1 starts 8 bytes early.
    let mut p = good.clone();
    let at = entry_at(&p, 1) + 32;
    put_u64(&mut p, at, 32 + first_len - 8);
    rehash_index(&mut p);
    assert_eq!(
        Pack::parse(&p).unwrap_err(),
        PackError::Overlap { entry: 1, offset: 32 + first_len - 8, expected: 32 + first_len }
    );
    // Gap.
    put_u64(&mut p, at, 32 + first_len + 8);
    rehash_index(&mut p);
    assert_eq!(
        Pack::parse(&p).unwrap_err(),
        PackError::Gap { entry: 1, offset: 32 + first_len + 8, expected: 32 + first_len }
    );
    // Lengths that disagree.
    let mut p = good.clone();
    let at = entry_at(&p, 2);
    put_u32(&mut p, at + 44, 6);
    rehash_index(&mut p);
    assert!(matches!(Pack::parse(&p).unwrap_err(), PackError::BadLength { entry: 2, plain_len: 6, .. }));
    // The last blob claims more than there is.
    put_u32(&mut p, at + 40, 46 + 1);
    put_u32(&mut p, at + 44, 6 + 1);
    rehash_index(&mut p);
    assert!(matches!(Pack::parse(&p).unwrap_err(), PackError::OutOfRange { entry: 2, .. }));
    // ...or less.
    put_u32(&mut p, at + 40, 45 - 1);
    put_u32(&mut p, at + 44, 5 - 1);
    rehash_index(&mut p);
    assert!(matches!(Pack::parse(&p).unwrap_err(), PackError::Unaccounted { .. }));
    // Same id twice.
    let mut p = good.clone();
    let (a, b) = (entry_at(&p, 0), entry_at(&p, 2));
    let id0: [u8; 32] = p[a..a + 32].try_into().unwrap();
    p[b..b + 32].copy_from_slice(&id0);
    rehash_index(&mut p);
    assert!(matches!(Pack::parse(&p).unwrap_err(), PackError::DuplicateId { entry: 2, first: 0, .. }));
    // Index byte flipped, hash not updated.
    let mut p = good.clone();
    let at = entry_at(&p, 0);
    p[at + 3] ^= 1;
    assert_eq!(Pack::parse(&p).unwrap_err(), PackError::IndexHashMismatch { offset: at as u64 });
    // Truncated by one byte.
    let cut = good.len() - 1;
    assert_eq!(Pack::parse(&good[..cut]).unwrap_err(), PackError::Truncated { len: cut as u64 });
    assert!(matches!(
        PackIndex::parse_trailer(&good[..cut], cut as u64),
        Err(PackError::BadMagic { place: "trailer", .. })
    ));
    assert_eq!(Pack::parse(&good[..95]).unwrap_err(), PackError::TooShort { len: 95 });
    // Header damage.
    let mut p = good.clone();
    p[20] = 1;
    assert_eq!(Pack::parse(&p).unwrap_err(), PackError::Reserved { place: "header", offset: 20, value: 1 });
}

#[test]
fn every_flipped_bit_is_detected() {
    let k = keys();
    let done = build(&k, &sample_blocks());
    for byte in 0..done.out.len() {
        for bit in 0..8 {
            let mut p = done.out.clone();
            p[byte] ^= 1 << bit;
            // Without the key: the pack id or a blob's CRC catches every flip.
            assert!(Pack::verify(&p, &done.id).is_err(), "keyless: byte {byte} bit {bit}");
            // With the key and no id: structure or the AEAD catches it.
            let keyed_ok = Pack::parse(&p).is_ok_and(|pack| {
                (0..pack.index().entries().len()).all(|n| {
                    let (e, blob) = pack.blob(n).unwrap();
                    k.open_block(pack.index().cipher(), &e.id, blob).is_ok()
                })
            });
            assert!(!keyed_ok, "keyed: byte {byte} bit {bit}");
        }
    }
}

#[test]
fn fuzz_harness_on_pseudo_random_input() {
    let mut rng = crate::codec::XorShift(0x2545_f491_4f6c_dd1d);
    let good = build(&keys(), &sample_blocks()).out;
    assert_eq!(fuzz_pack_bytes(&good), 3);
    let mut accepted = 0;
    for i in 0..3000 {
        let data = if i % 2 == 0 { rng.some_bytes(400) } else { rng.mutate(&good) };
        accepted += fuzz_pack_bytes(&data);
    }
    // Blob bytes (and CRCs) are not covered by the structure: some mutations parse.
    assert!(accepted > 0);
}

proptest! {
    #[test]
    fn round_trip(blocks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..2000), 1..8)) {
        let k = keys();
        let mut blocks = blocks;
        blocks.sort();
        blocks.dedup();
        let done = build(&k, &blocks);
        let pack = Pack::verify(&done.out, &done.id).unwrap();
        prop_assert_eq!(pack.index().entries().len(), blocks.len());
        for (n, b) in blocks.iter().enumerate() {
            let (e, blob) = pack.blob(n).unwrap();
            prop_assert_eq!(&k.open_block(pack.index().cipher(), &e.id, blob).unwrap(), b);
        }
        prop_assert_eq!(fuzz_pack_bytes(&done.out), blocks.len());
    }
}
