//! Golden vectors and corrupt fixtures of the vault formats (key file, vault
//! config, pack, map page, point root), checked in under
//! `tests/fixtures/vault-v1/`. The bytes are what FORMAT.md describes; if
//! `fixtures_are_the_bytes_the_code_writes` fails after a code change, the
//! change altered a format.
//!
//! To regenerate after an intended, versioned format change:
//! `LIFEBOAT_BLESS=1 cargo test -p disk-format --test golden_vault`.
//!
//! The golden vault: one key (bytes 0..32), a disk of 1100 blocks of 4 KiB
//! (the last one 3096 bytes), and two points. Point 1 writes blocks 600, 601,
//! 1023 (same contents as 600: deduplicated), 1030 and 1099; its blocks are in
//! `golden-v2.pack`. Point 2 rewrites block 601 and writes block 700; its new
//! blocks are in `other-v2.pack`, and it shares map page 2 with point 1.
//!
//! `golden.pack` and `other.pack` hold the same blobs as pack format version
//! 1, which this code no longer writes: they are frozen (never regenerated,
//! not even by LIFEBOAT_BLESS) and prove that vaults written before pack
//! version 2 still restore; their corrupt variants are derived from them.
//!
//! Likewise `point-1.root`, `point-2.root` and their damaged variants
//! (`tampered.root`, `truncated.root`, `other-key.root`) are root format 1
//! (disk name and identity in the clear), frozen; `v2-*.root` are format 2,
//! which this code writes: the same points, with name, identity, host and
//! cut generation sealed.
#![allow(clippy::cast_possible_truncation)] // fixture sizes are small

use std::collections::HashMap;
use std::path::PathBuf;

use disk_format::key_file::{KeyFileDamage, SALT_LEN};
use disk_format::map_page::page_blocks;
use disk_format::pack::PackVersion;
use disk_format::pack::PackWriter;
use disk_format::page_pack::Hints;
use disk_format::Cipher;
use disk_format::{
    BlockId, Consistency, CryptoError, Geometry, KdfParams, KeyFile, KeyFileError, Keys, MapBuilder, MapPage,
    MasterKey, Pack, PackError, PackId, PackIndex, PageError, PageId, PagePack, Root, RootError, RootId, VaultConfig,
    VaultConfigError, VaultId, NONCE_LEN,
};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vault-v1")
}

fn read(name: &str) -> Vec<u8> {
    let path = fixtures().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const BLOCK: u64 = 4096;
const DISK_SIZE: u64 = 1100 * BLOCK - 1000;
const PASSPHRASE: &[u8] = b"lifeboat golden passphrase";
const GOLDEN_KDF: KdfParams = KdfParams { m_cost_kib: 256, t_cost: 2, p_cost: 1 };

fn master() -> MasterKey {
    MasterKey::from_bytes(std::array::from_fn(|i| i as u8))
}

fn other_master() -> MasterKey {
    MasterKey::from_bytes([0xee; 32])
}

fn geometry() -> Geometry {
    Geometry::new(DISK_SIZE, BLOCK).unwrap()
}

/// The contents of `block` in point `point` (1 or 2).
fn contents(block: u64, point: u32) -> Vec<u8> {
    let g = geometry();
    let text = match (block, point) {
        (600 | 1023, _) => "the same data in two places ".to_string(),
        (601, 2) => "block 601, rewritten by point 2 ".to_string(),
        _ => format!("block {block} "),
    };
    text.bytes().cycle().take(g.block_len(block)).collect()
}

const POINT1: [u64; 5] = [600, 601, 1023, 1030, 1099];
const POINT2: [u64; 2] = [601, 700];

/// Seals `blocks` of `point` into a pack, nonces `first_nonce, first_nonce + 1, …`.
fn pack(keys: &Keys, blocks: &[u64], point: u32, first_nonce: u8) -> (PackId, Vec<u8>) {
    pack_with(keys, Cipher::XChaCha20Poly1305, blocks, point, first_nonce)
}

fn pack_with(keys: &Keys, cipher: Cipher, blocks: &[u64], point: u32, first_nonce: u8) -> (PackId, Vec<u8>) {
    let mut w = PackWriter::for_cipher(Vec::new(), cipher).unwrap();
    let mut nonce = first_nonce;
    for &b in blocks {
        let data = contents(b, point);
        let id = keys.block_id(&data);
        if w.contains(&id) {
            continue; // dedup within the pack
        }
        w.add_blob(&id, &keys.seal_block_with_nonce_for_tests(cipher, &id, &data, [nonce; NONCE_LEN])).unwrap();
        nonce += 1;
    }
    let done = w.finish().unwrap();
    (done.id, done.out)
}

/// Everything the golden vault holds, by fixture name.
fn golden() -> Vec<(&'static str, Vec<u8>)> {
    let keys = master().keys();
    let g = geometry();
    let mut files: Vec<(&'static str, Vec<u8>)> = Vec::new();

    files.push((
        "plain.key",
        KeyFile::encode_with_salt_and_nonce_for_tests(&master(), None, [0; SALT_LEN], [0; NONCE_LEN]).unwrap().to_vec(),
    ));
    let wrapped = KeyFile::encode_with_salt_and_nonce_for_tests(
        &master(),
        Some((PASSPHRASE, GOLDEN_KDF)),
        [0x5a; SALT_LEN],
        [0xa5; NONCE_LEN],
    )
    .unwrap();
    files.push(("passphrase.key", wrapped.to_vec()));

    let config = VaultConfig {
        vault_id: VaultId(*b"golden-vault-001"),
        created_unix: 1_790_000_000,
        key_fingerprint: keys.fingerprint(),
        cipher: Cipher::XChaCha20Poly1305,
    };
    files.push(("vault.config", config.encode().to_vec()));
    let aes = VaultConfig { vault_id: VaultId(*b"golden-vault-aes"), cipher: Cipher::Aes256Gcm, ..config };
    files.push(("aes-vault.config", aes.encode().to_vec()));
    files.push(("golden-v3-aes.pack", pack_with(&keys, Cipher::Aes256Gcm, &POINT1, 1, 21).1));

    let (golden_id, golden_pack) = pack(&keys, &POINT1, 1, 1);
    let (other_id, other_pack) = pack(&keys, &POINT2, 2, 11);
    files.push(("golden-v2.pack", golden_pack));
    files.push(("other-v2.pack", other_pack));

    let mut store: HashMap<PageId, Vec<u8>> = HashMap::new();
    let mut b = MapBuilder::new(g);
    for blk in POINT1 {
        b.set(blk, keys.block_id(&contents(blk, 1))).unwrap();
    }
    let map1 = b.finish(|_| -> Result<Vec<u8>, PageError> { unreachable!("no previous point") }).unwrap();
    assert_eq!(map1.new_pages.len(), 2, "page 0 is all zero");
    store.extend(map1.new_pages.iter().cloned());
    let root1 = Root {
        consistency: Consistency::Crash,
        disk_id: *b"golden-disk-0001",
        disk_name: "golden".to_string(),
        host: "golden-host".to_string(),
        namespace: None,
        sequence: 1,
        cut_time_ns: 1_790_000_000_000_000_000,
        cut_generation: 1,
        geometry: g,
        bytes_shipped: 0,
        parent: None,
        pages: map1.pages.clone(),
        page_packs: Vec::new(),
        page_pack_of: Vec::new(),
        extension: Vec::new(),
    };
    let root1_bytes = root1.encode(&keys).unwrap();

    let mut b = MapBuilder::from_previous(&map1.pages, g).unwrap();
    for blk in POINT2 {
        b.set(blk, keys.block_id(&contents(blk, 2))).unwrap();
    }
    let map2 = b.finish(|id| Ok::<_, PageError>(store[id].clone())).unwrap();
    assert_eq!(map2.new_pages.len(), 1, "only page 1 changed");
    assert_eq!(map2.pages[2], map1.pages[2], "page 2 is shared");
    let root2 = Root {
        consistency: Consistency::App,
        sequence: 2,
        cut_time_ns: 1_790_000_030_000_000_000,
        cut_generation: 2,
        bytes_shipped: 12_345,
        parent: Some(RootId::of(&root1_bytes)),
        pages: map2.pages.clone(),
        ..root1.clone()
    };
    files.push(("point-1.page-1", map1.new_pages[0].1.clone()));
    files.push(("point-1.page-2", map1.new_pages[1].1.clone()));
    files.push(("point-2.page-1", map2.new_pages[0].1.clone()));
    files.push(("v2-point-2.root", root2.encode(&keys).unwrap()));
    files.push(("v2-point-1.root", root1_bytes));

    // Format 3: each point's new pages in a page pack; point 2 keeps page 2
    // in point 1's pack.
    let pack_of = |pages: &[(PageId, Vec<u8>)]| {
        let refs: Vec<(PageId, &[u8])> = pages.iter().map(|(id, b)| (*id, b.as_slice())).collect();
        PagePack::encode(&refs, None).unwrap()
    };
    let (pack1, pack2) = (pack_of(&map1.new_pages), pack_of(&map2.new_pages));
    let (id1, id2) = (PageId::of(&pack1), PageId::of(&pack2));
    let none = disk_format::NO_PAGE_PACK;
    let v3_root1 =
        Root { page_packs: vec![id1], page_pack_of: vec![none, 0, 0], ..root1.clone() }.encode(&keys).unwrap();
    let v3_root2 = Root {
        parent: Some(RootId::of(&v3_root1)),
        page_packs: vec![id2, id1],
        page_pack_of: vec![none, 0, 1],
        ..root2.clone()
    };
    // Page pack version 2: point 2's page with the packs of its blocks
    // (600 and 1023 in point 1's pack, 601 and 700 in point 2's).
    let refs: Vec<(PageId, &[u8])> = map2.new_pages.iter().map(|(id, b)| (*id, b.as_slice())).collect();
    let hints = Hints::from_sets(&[Some(vec![other_id, golden_id])]).unwrap();
    files.push(("v2-hints.pagepack", PagePack::encode(&refs, Some(&hints)).unwrap()));
    files.push(("v3-point-1.pagepack", pack1));
    files.push(("v3-point-2.pagepack", pack2));
    files.push(("v3-point-2.root", v3_root2.encode(&keys).unwrap()));
    files.push(("v3-point-1.root", v3_root1));

    // Corrupt fixtures.
    let mut out = corrupt(&files, &root2);
    files.append(&mut out);
    files
}

fn rechecksum(b: &mut [u8]) {
    let at = b.len() - 32;
    let sum = blake3::hash(&b[..at]);
    b[at..].copy_from_slice(sum.as_bytes());
}

fn corrupt(files: &[(&'static str, Vec<u8>)], root2: &Root) -> Vec<(&'static str, Vec<u8>)> {
    let get = |name: &str| files.iter().find(|(n, _)| *n == name).unwrap().1.clone();
    let mut out = Vec::new();

    let plain = get("plain.key");
    out.push(("truncated.key", plain[..200].to_vec()));
    let mut f = plain.clone();
    f[80] ^= 0x04; // a bit of the key itself
    out.push(("bit-flip.key", f));
    let mut f = plain.clone();
    f[8] = 2;
    rechecksum(&mut f);
    out.push(("version-2.key", f));
    let mut f = plain.clone();
    f[120] ^= 0xff; // the fingerprint, with the checksum made to match
    rechecksum(&mut f);
    out.push(("fingerprint-edited.key", f));

    let config = get("vault.config");
    let mut f = config.clone();
    f[40] ^= 0x10; // the key fingerprint
    out.push(("bit-flip.config", f));
    out.push(("truncated.config", config[..100].to_vec()));

    // Version 1 packs: frozen fixtures, damaged the same way as ever.
    out.append(&mut corrupt_packs(&read("golden.pack"), &read("other.pack"), V1_NAMES));
    out.append(&mut corrupt_packs(&get("golden-v2.pack"), &get("other-v2.pack"), V2_NAMES));

    let page = get("point-2.page-1");
    let mut f = page.clone();
    f[32 + 32 * 89 + 7] ^= 0x80; // entry of block 601
    out.push(("bit-flip.page", f));
    out.push(("truncated.page", page[..page.len() - 32].to_vec()));

    // Format 1 roots are frozen: only their format 2 namesakes are made here.
    let root = get("v2-point-2.root");
    let mut f = root.clone();
    f[96] ^= 0x01; // sequence 2 -> 3
    out.push(("v2-tampered.root", f));
    out.push(("v2-truncated.root", root[..root.len() - 1].to_vec()));
    out.push(("v2-other-key.root", root2.encode(&other_master().keys()).unwrap()));
    out
}

/// Fixture names of the damaged packs: truncated, a blob bit flipped, an
/// index bit flipped, a blob swapped for another pack's, entries overlapping.
type PackNames = [&'static str; 5];
const V1_NAMES: PackNames =
    ["truncated.pack", "blob-bit-flip.pack", "index-bit-flip.pack", "swapped-blob.pack", "index-overlap.pack"];
const V2_NAMES: PackNames = [
    "v2-truncated.pack",
    "v2-blob-bit-flip.pack",
    "v2-index-bit-flip.pack",
    "v2-swapped-blob.pack",
    "v2-index-overlap.pack",
];

fn corrupt_packs(good: &[u8], other: &[u8], names: PackNames) -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let good = good.to_vec();
    let gi = Pack::parse(&good).unwrap().index().clone();
    let oi = Pack::parse(other).unwrap().index().clone();
    let stride = gi.version().entry_len();
    out.push((names[0], good[..good.len() - 10].to_vec()));
    let mut f = good.clone();
    let e1 = gi.entries()[1];
    f[e1.offset as usize + 100] ^= 0x01; // inside blob 1's ciphertext
    out.push((names[1], f));
    let mut f = good.clone();
    f[gi.index_offset() as usize + stride + 5] ^= 0x20; // entry 1's block id
    out.push((names[2], f));
    // Blob 1 of golden.pack replaced by blob 0 of other.pack (same length).
    let (g1, o0) = (gi.entries()[1], oi.entries()[0]);
    assert_eq!(g1.blob_len, o0.blob_len);
    let mut f = good.clone();
    f[g1.range().start as usize..g1.range().end as usize]
        .copy_from_slice(&other[o0.range().start as usize..o0.range().end as usize]);
    out.push((names[3], f));
    // Entry 1 made to start 16 bytes inside blob 0, index hash recomputed.
    let mut f = good.clone();
    let at = gi.index_offset() as usize + stride + 32;
    f[at..at + 8].copy_from_slice(&(g1.offset - 16).to_le_bytes());
    let index_end = f.len() - 64;
    let h = blake3::hash(&f[gi.index_offset() as usize..index_end]);
    f[index_end + 16..index_end + 48].copy_from_slice(h.as_bytes());
    out.push((names[4], f));
    out
}

#[test]
fn fixtures_are_the_bytes_the_code_writes() {
    let bless = std::env::var_os("LIFEBOAT_BLESS").is_some();
    if bless {
        std::fs::create_dir_all(fixtures()).unwrap();
    }
    for (name, bytes) in golden() {
        let path = fixtures().join(name);
        if bless {
            std::fs::write(&path, &bytes).unwrap();
        }
        let on_disk = read(name);
        assert!(on_disk == bytes, "{name} differs from what the code writes: the format changed");
    }
}

#[test]
fn a_version_2_page_pack_hints_the_packs_of_its_pages_blocks() {
    let b = read("v2-hints.pagepack");
    let pack = PagePack::verify(&b, &PageId::of(&b)).unwrap();
    let hints = pack.hints(&b, b.len() as u64).unwrap().unwrap().expect("version 2 has hints");
    let mut named: Vec<PackId> = hints.of_page(0).unwrap().copied().collect();
    let mut want: Vec<PackId> = ["golden-v2.pack", "other-v2.pack"]
        .iter()
        .map(|n| {
            let bytes = read(n);
            Pack::parse(&bytes).unwrap().id()
        })
        .collect();
    named.sort_unstable();
    want.sort_unstable();
    assert_eq!(named, want, "point 2's page 1: 600 and 1023 in point 1's pack, 601 and 700 in point 2's");
    // The same page, in the same place, as in the version 1 pack.
    let v1 = read("v3-point-2.pagepack");
    let old = PagePack::parse(&v1).unwrap();
    assert_eq!(pack.entries, old.entries);
    assert_eq!(pack.entries[0].bytes(&b), old.entries[0].bytes(&v1));
}

#[test]
fn key_files_decode_and_damage_is_named() {
    let want = master().fingerprint();
    let plain = KeyFile::decode(&read("plain.key"), || -> Option<&[u8]> { panic!("plain") }).unwrap();
    assert_eq!(plain.fingerprint(), want);
    let f = read("passphrase.key");
    let parsed = KeyFile::parse(&f).unwrap();
    assert_eq!((parsed.fingerprint(), parsed.kdf_params()), (want, Some(GOLDEN_KDF)));
    assert_eq!(KeyFile::decode(&f, || Some(PASSPHRASE)).unwrap().fingerprint(), want);
    assert_eq!(KeyFile::decode(&f, || None::<&[u8]>).unwrap_err(), KeyFileError::NeedsPassphrase);
    assert_eq!(KeyFile::decode(&f, || Some("not it")).unwrap_err(), KeyFileError::WrongPassphrase);
    // Field offsets as FORMAT.md gives them.
    assert_eq!(&f[0..8], &disk_format::key_file::KEY_FILE_MAGIC);
    assert_eq!((u16::from_le_bytes([f[8], f[9]]), f[10]), (1, 2));
    assert_eq!(u32::from_le_bytes(f[12..16].try_into().unwrap()), 256);
    assert_eq!(&f[32..48], &[0x5a; 16]);
    assert_eq!(&f[48..72], &[0xa5; 24]);
    assert_eq!(&f[120..136], &want.0);
    assert_eq!(&f[224..256], blake3::hash(&f[..224]).as_bytes());
    let p = read("plain.key");
    assert_eq!(&p[72..104], &std::array::from_fn::<u8, 32, _>(|i| i as u8));

    let none = || None::<&[u8]>;
    let damaged = |d| KeyFileError::Damaged(d);
    assert_eq!(KeyFile::decode(&read("truncated.key"), none).unwrap_err(), damaged(KeyFileDamage::WrongLength(200)));
    assert_eq!(KeyFile::decode(&read("bit-flip.key"), none).unwrap_err(), damaged(KeyFileDamage::ChecksumMismatch));
    assert_eq!(KeyFile::decode(&read("version-2.key"), none).unwrap_err(), KeyFileError::UnsupportedVersion(2));
    match KeyFile::decode(&read("fingerprint-edited.key"), none).unwrap_err() {
        KeyFileError::FingerprintMismatch { derived, .. } => assert_eq!(derived, want),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn vault_config_decodes_and_refuses_damage_and_the_wrong_key() {
    let c = VaultConfig::decode(&read("vault.config")).unwrap();
    assert_eq!(c.vault_id, VaultId(*b"golden-vault-001"));
    assert_eq!(c.created_unix, 1_790_000_000);
    c.check_key(&master().keys()).unwrap();
    let other = other_master().keys();
    assert_eq!(
        c.check_key(&other),
        Err(VaultConfigError::WrongKey { vault: master().fingerprint(), given: other.fingerprint() })
    );
    assert_eq!(VaultConfig::decode(&read("bit-flip.config")), Err(VaultConfigError::ChecksumMismatch));
    assert_eq!(VaultConfig::decode(&read("truncated.config")), Err(VaultConfigError::WrongLength(100)));
}

/// Restores both golden points from the fixtures alone, the way a restore
/// does: root (MAC) -> pages (id, place) -> packs (index) -> blobs (AEAD, id);
/// once from the version 2 packs, once from the frozen version 1 packs.
#[test]
fn golden_points_restore_to_the_expected_disks() {
    for packs in [["golden-v2.pack", "other-v2.pack"], ["golden.pack", "other.pack"]] {
        for roots in [
            ["v3-point-1.root", "v3-point-2.root"],
            ["v2-point-1.root", "v2-point-2.root"],
            ["point-1.root", "point-2.root"],
        ] {
            restore_golden_points(packs, roots);
        }
    }
}

fn restore_golden_points(packs: [&str; 2], roots: [&str; 2]) {
    let keys = master().keys();
    let g = geometry();
    let mut blobs: HashMap<BlockId, Vec<u8>> = HashMap::new();
    for name in packs {
        let bytes = read(name);
        let pack = Pack::parse(&bytes).unwrap();
        let want = if name.contains("v2") { PackVersion::V2 } else { PackVersion::V1 };
        assert_eq!(pack.index().version(), want, "{name}");
        let pack = Pack::verify(&bytes, &pack.id()).unwrap();
        for n in 0..pack.index().entries().len() {
            let (e, blob) = pack.blob(n).unwrap();
            blobs.insert(e.id, blob.to_vec());
        }
    }
    assert_eq!(blobs.len(), 4 + 2, "block 600 and 1023 share one blob");
    let pages: HashMap<PageId, Vec<u8>> = ["point-1.page-1", "point-1.page-2", "point-2.page-1"]
        .iter()
        .map(|n| {
            let b = read(n);
            (PageId::of(&b), b)
        })
        .collect();
    // Format 3 roots find their pages in the page packs they name.
    let page_packs: HashMap<PageId, Vec<u8>> = ["v3-point-1.pagepack", "v3-point-2.pagepack"]
        .iter()
        .map(|n| {
            let b = read(n);
            let id = PageId::of(&b);
            PagePack::verify(&b, &id).unwrap();
            (id, b)
        })
        .collect();
    let root1 = read(roots[0]);
    for (name, point, written) in [(roots[0], 1, &POINT1[..]), (roots[1], 2, &[600, 601, 700, 1023, 1030, 1099][..])] {
        let root = Root::decode(&read(name), &keys).unwrap();
        assert_eq!(
            (root.disk_name.as_str(), root.disk_id, root.cut_generation),
            ("golden", *b"golden-disk-0001", point)
        );
        let format_2 = name.starts_with("v2-") || name.starts_with("v3-");
        assert_eq!(root.page_packs.len(), if name.starts_with("v3-") { point as usize } else { 0 }, "{name}");
        assert_eq!(root.host, if format_2 { "golden-host" } else { "" }, "{name}");
        assert_eq!((root.sequence, root.geometry, root.pages.len()), (point, g, 3));
        assert_eq!(root.parent, (point == 2).then(|| RootId::of(&root1)));
        let mut disk = vec![0u8; DISK_SIZE as usize];
        for (i, pid) in root.pages.iter().enumerate() {
            if pid.is_zero() {
                continue;
            }
            let bytes = match root.page_pack(i as u64) {
                Some(pack) => {
                    let b = &page_packs[pack];
                    PagePack::parse(b).unwrap().find(pid).expect("the page is in its pack").bytes(b).to_vec()
                }
                None => pages[pid].clone(),
            };
            let page = root.check_page(i as u64, &bytes).unwrap();
            for (blk, id) in page_blocks(&g, i as u64).zip(&page.entries) {
                if !id.is_zero() {
                    let data = keys.open_block(Cipher::XChaCha20Poly1305, id, &blobs[id]).unwrap();
                    let r = g.block_range(blk);
                    disk[r.start as usize..r.end as usize].copy_from_slice(&data);
                }
            }
        }
        let mut want = vec![0u8; DISK_SIZE as usize];
        for &blk in written {
            let p = if point == 2 && POINT2.contains(&blk) { 2 } else { 1 };
            let r = g.block_range(blk);
            want[r.start as usize..r.end as usize].copy_from_slice(&contents(blk, p));
        }
        assert!(disk == want, "{name} restores to the wrong disk");
    }
}

/// Field offsets of both root formats as FORMAT.md gives them.
#[test]
fn root_fields_sit_where_the_format_says() {
    let keys = master().keys();
    let root1 = read("point-1.root");
    let r = read("point-2.root");
    assert_eq!(&r[0..8], &disk_format::point::ROOT_MAGIC);
    assert_eq!((r[10], r[11]), (2, 6));
    assert_eq!(u32::from_le_bytes(r[12..16].try_into().unwrap()), 3);
    assert_eq!(&r[32..38], b"golden");
    assert_eq!(u64::from_le_bytes(r[96..104].try_into().unwrap()), 2);
    assert_eq!(u64::from_le_bytes(r[120..128].try_into().unwrap()), DISK_SIZE);
    assert_eq!(&r[144..176], RootId::of(&root1).as_bytes());
    assert_eq!(&r[192..224], &[0; 32], "page 0 is all zero");
    assert_eq!(u32::from_le_bytes(r[288..292].try_into().unwrap()), 0, "empty extension");
    assert_eq!(r.len(), 292 + 32);

    // Format 2: the namespace at 16, nothing at 11, 32..96 or 112..120,
    // the 200 sealed metadata bytes at 192, the page ids after them.
    let root1 = read("v2-point-1.root");
    let r = read("v2-point-2.root");
    assert_eq!(&r[0..8], &disk_format::point::ROOT_MAGIC);
    assert_eq!((u16::from_le_bytes([r[8], r[9]]), r[10], r[11]), (2, 2, 0));
    assert_eq!(u32::from_le_bytes(r[12..16].try_into().unwrap()), 3);
    assert_eq!(&r[16..32], &keys.disk_namespace(b"golden-disk-0001"));
    assert_eq!(&r[32..96], &[0; 64]);
    assert_eq!(u64::from_le_bytes(r[96..104].try_into().unwrap()), 2);
    assert_eq!(&r[112..120], &[0; 8]);
    assert_eq!(u64::from_le_bytes(r[120..128].try_into().unwrap()), DISK_SIZE);
    assert_eq!(&r[144..176], RootId::of(&root1).as_bytes());
    let plain = keys.open_root_metadata(&r[..192], &r[192..392]).expect("the metadata opens");
    assert_eq!((plain[0], plain[1], plain[2]), (1, 6, 11));
    assert_eq!(&plain[8..24], b"golden-disk-0001");
    assert_eq!(u64::from_le_bytes(plain[24..32].try_into().unwrap()), 2);
    assert_eq!((&plain[32..38], &plain[96..107]), (&b"golden"[..], &b"golden-host"[..]));
    assert_eq!(&r[392..424], &[0; 32], "page 0 is all zero");
    assert_eq!(u32::from_le_bytes(r[488..492].try_into().unwrap()), 0, "empty extension");
    assert_eq!(r.len(), 492 + 32);
    for secret in [&b"golden"[..], b"golden-disk-0001"] {
        assert!(!r.windows(secret.len()).any(|w| w == secret), "{secret:?} is in the clear");
    }
}

#[test]
fn corrupt_packs_are_refused_with_the_right_error() {
    corrupt_packs_refused("golden.pack", V1_NAMES);
    corrupt_packs_refused("golden-v2.pack", V2_NAMES);
    // Version 2 field offsets as FORMAT.md gives them: 56-byte entries, the
    // blob's CRC-32 at 48, the name over header, index and trailer.
    let good = read("golden-v2.pack");
    let pack = Pack::parse(&good).unwrap();
    let at = pack.index().index_offset() as usize;
    assert_eq!(good.len() - 64 - at, 4 * 56);
    assert_eq!((good[8], good[good.len() - 64 + 12]), (2, 2), "version in header and trailer");
    let (e1, blob1) = pack.blob(1).unwrap();
    assert_eq!(u32::from_le_bytes(good[at + 56 + 48..at + 56 + 52].try_into().unwrap()), crc32(blob1));
    assert_eq!(e1.checksum, Some(crc32(blob1)));
    let mut named = good[..32].to_vec();
    named.extend_from_slice(&good[at..]);
    assert_eq!(pack.id(), PackId::of(&named));
}

/// CRC-32 (ISO-HDLC), bit by bit: an independent check of the checksum the
/// format names.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn corrupt_packs_refused(good_name: &str, names: PackNames) {
    let keys = master().keys();
    let good = read(good_name);
    let id = Pack::parse(&good).unwrap().id();
    let len = good.len() as u64;
    assert_eq!(Pack::parse(&read(names[0])).unwrap_err(), PackError::Truncated { len: len - 10 });
    let index_offset = Pack::parse(&good).unwrap().index().index_offset();
    assert_eq!(Pack::parse(&read(names[2])).unwrap_err(), PackError::IndexHashMismatch { offset: index_offset });
    let g1 = Pack::parse(&good).unwrap().index().entries()[1];
    assert_eq!(
        Pack::parse(&read(names[4])).unwrap_err(),
        PackError::Overlap { entry: 1, offset: g1.offset - 16, expected: g1.offset }
    );
    // A flipped or swapped blob keeps a valid structure: the keyless scrub
    // catches it by the pack id (v1) or the blob's CRC (v2), a keyed read by
    // the AEAD.
    for name in [names[1], names[3]] {
        let bytes = read(name);
        let err = Pack::verify(&bytes, &id).unwrap_err();
        if good_name.contains("v2") {
            assert!(matches!(err, PackError::BlobChecksum { entry: 1, offset, .. } if offset == g1.offset), "{name}");
            assert_eq!(Pack::parse(&bytes).unwrap().id(), id, "{name}: the name does not cover blob bytes");
        } else {
            assert!(matches!(err, PackError::IdMismatch { expected, .. } if expected == id), "{name}: {err}");
        }
        let pack = Pack::parse(&bytes).unwrap();
        let (e, blob) = pack.blob(1).unwrap();
        let cipher = pack.index().cipher();
        assert_eq!(keys.open_block(cipher, &e.id, blob), Err(CryptoError::Inauthentic { id: e.id }), "{name}");
        let (e, blob) = pack.blob(0).unwrap();
        keys.open_block(cipher, &e.id, blob).unwrap();
    }
    // Field offsets as FORMAT.md gives them.
    assert_eq!(&good[0..8], &disk_format::pack::PACK_MAGIC);
    assert_eq!(&good[good.len() - 8..], &disk_format::pack::PACK_MAGIC);
    let t = PackIndex::parse_trailer(&good[good.len() - 64..], len).unwrap();
    assert_eq!(t.count, 4);
    assert_eq!(u64::from_le_bytes(good[good.len() - 64..good.len() - 56].try_into().unwrap()), index_offset);
    assert_eq!(&good[32..32 + 24], &[1; 24], "blob 0 starts with its nonce");
}

#[test]
fn corrupt_pages_and_roots_are_refused_with_the_right_error() {
    corrupt_roots_refused("");
    corrupt_roots_refused("v2-");
}

fn corrupt_roots_refused(v: &str) {
    let read = |name: &str| read(&format!("{v}{name}"));
    let keys = master().keys();
    let root = Root::decode(&read("point-2.root"), &keys).unwrap();
    let page = self::read("point-2.page-1");
    assert_eq!(root.check_page(1, &page).unwrap().first_block, 512);
    assert!(matches!(root.check_page(1, &self::read("bit-flip.page")), Err(PageError::IdMismatch { .. })));
    assert!(matches!(root.check_page(2, &page), Err(PageError::IdMismatch { .. })));
    assert!(matches!(
        MapPage::decode(&self::read("truncated.page")),
        Err(PageError::LengthMismatch { count: 512, .. })
    ));
    assert_eq!(Root::decode(&read("tampered.root"), &keys), Err(RootError::BadMac));
    assert_eq!(Root::decode_unauthenticated(&read("tampered.root")).unwrap().sequence, 3);
    assert!(matches!(Root::decode(&read("truncated.root"), &keys), Err(RootError::LengthMismatch { .. })));
    assert_eq!(Root::decode(&read("other-key.root"), &keys), Err(RootError::BadMac));
    assert_eq!(Root::decode(&read("point-2.root"), &other_master().keys()), Err(RootError::BadMac));
    // Without the key, GC can still follow the other-key root's pages.
    assert_eq!(Root::decode_unauthenticated(&read("other-key.root")).unwrap().pages, root.pages);
}

/// The AES-256-GCM fixtures: a version 2 vault config naming the cipher,
/// and point 1's blocks as a version 3 pack. Each blob opens with AES-256-GCM
/// to the block written, and with XChaCha20-Poly1305 not at all.
#[test]
fn aes_256_gcm_config_and_pack() {
    let keys = master().keys();
    let c = VaultConfig::decode(&read("aes-vault.config")).unwrap();
    assert_eq!((c.cipher, c.vault_id), (Cipher::Aes256Gcm, VaultId(*b"golden-vault-aes")));
    assert_eq!(&read("aes-vault.config")[8..11], &[2, 0, 2], "version 2, cipher 2");
    assert_eq!(VaultConfig::decode(&read("vault.config")).unwrap().cipher, Cipher::XChaCha20Poly1305);

    let bytes = read("golden-v3-aes.pack");
    let pack = Pack::parse(&bytes).unwrap();
    pack.check_checksums().is_empty().then_some(()).expect("every CRC matches");
    assert_eq!((pack.index().version(), pack.index().cipher()), (PackVersion::V3, Cipher::Aes256Gcm));
    let mut opened = 0;
    for n in 0..pack.index().entries().len() {
        let (e, blob) = pack.blob(n).unwrap();
        assert_eq!(&blob[..NONCE_LEN], &[21 + n as u8; NONCE_LEN]);
        let data = keys.open_block(Cipher::Aes256Gcm, &e.id, blob).unwrap();
        assert!(POINT1.iter().any(|&b| contents(b, 1) == data), "entry {n} is one of point 1's blocks");
        assert!(keys.open_block(Cipher::XChaCha20Poly1305, &e.id, blob).is_err());
        opened += 1;
    }
    assert_eq!(opened, 4, "five blocks written, two with the same contents");
}
