//! The vault's cipher and block compression end to end, through the real
//! `lifeboat` binary (issue 17, points 1 and 2): `vault init --cipher` for
//! each of the two, a full and an incremental cycle, every point restored
//! byte for byte, the packs written in format 3, `vault check --read-data`
//! opening every block, a config whose cipher was changed after points were
//! cut refused before anything is shipped; text shipped compressed to under a
//! quarter of its size and restored exactly, and `protect --no-compress`.

// Test code for 64-bit hosts: offsets and sizes fit usize.
#![allow(clippy::cast_possible_truncation)]

use std::fs;
use std::path::Path;

use vm_tests::clients::{nbd_uri, qemu_io};
use vm_tests::lifeboat::Scratch;
use vm_tests::replicate::{first_difference, tree};
use vm_tests::Rng;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

fn scratch() -> Scratch {
    Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-cipher-")
}

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The format version in the header of every pack in `vault`.
fn pack_versions(vault: &Path) -> Vec<u16> {
    tree(vault)
        .into_keys()
        .filter(|rel| rel.starts_with("packs/") && !rel.rsplit('/').next().unwrap().starts_with('.'))
        .map(|rel| {
            let b = fs::read(vault.join(rel)).unwrap();
            u16::from_le_bytes([b[8], b[9]])
        })
        .collect()
}

#[test]
fn both_ciphers_replicate_and_restore_exactly() {
    // Compression (on by default) needs pack format 3 whatever the cipher.
    for (cipher, version) in [("aes-256-gcm", 3u16), ("xchacha20-poly1305", 3)] {
        let sc = scratch();
        let home = &sc.home;
        let bs = 64 * KIB;
        let size = 8 * MIB + 12 * KIB;
        let (key, vault, image) = (sc.path("k.key"), sc.path("vault"), sc.path("disk.img"));
        home.key_new(&key);
        let (k, v) = (key.to_str().unwrap(), vault.to_str().unwrap());
        let o = home.run_ok(&["vault", "init", v, "--key", k, "--cipher", cipher]);
        assert!(text(&o).contains(&format!("cipher {cipher}")), "{cipher}: {}", text(&o));
        let mut disk = Rng::new(17).bytes(size as usize);
        fs::write(&image, &disk).unwrap();
        home.protect_replicated("c", &image, bs, &vault, &key);
        let one = home.ship("c");
        assert!(one.full, "{one:?}");

        // The VM writes two blocks through the filter; an incremental cycle ships them.
        let sock = sc.path("c.sock");
        let filter = home.filter("c", &sock);
        qemu_io(&nbd_uri("c", &sock), &[&format!("write -P 0x5a {} {}", 5 * bs, 2 * bs)]);
        filter.stop();
        disk[(5 * bs) as usize..(7 * bs) as usize].fill(0x5a);
        let two = home.ship("c");
        assert_eq!((two.sequence, two.full, two.blocks_read), (2, false, 2), "{two:?}");

        assert!(!pack_versions(&vault).is_empty());
        assert!(
            pack_versions(&vault).iter().all(|&n| n == version),
            "{cipher}: pack versions {:?}, want {version}",
            pack_versions(&vault)
        );
        let latest = home.restore("c", "latest", &sc.path("two.img"));
        assert!(latest == disk, "{cipher}: point 2 differs at block {:?}", first_difference(&latest, &disk, bs));
        assert!(latest == fs::read(&image).unwrap(), "{cipher}: point 2 is not the image");
        let first = home.restore("c", "1", &sc.path("one.img"));
        assert!(first != latest && first[..(5 * bs) as usize] == disk[..(5 * bs) as usize], "{cipher}: point 1");
        let o = home.run_ok(&["vault", "check", v, "--read-data", "--key", k]);
        let t = text(&o);
        assert!(t.contains(&format!("cipher: {cipher}")) && t.contains("no problems found"), "{cipher}: {t}");
    }
}

#[test]
fn an_unknown_cipher_is_refused_with_the_names_that_work() {
    let sc = scratch();
    let key = sc.path("k.key");
    sc.home.key_new(&key);
    let vault = sc.path("vault");
    let o = sc.home.run(&["vault", "init", vault.to_str().unwrap(), "--key", key.to_str().unwrap(), "--cipher", "aes"]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("aes-256-gcm") && t.contains("xchacha20-poly1305"), "{t}");
    assert!(!vault.join("config").exists(), "nothing was created");
}

/// The config file of the local vault at `vault`.
fn config_path(vault: &Path) -> std::path::PathBuf {
    let rel = tree(vault).into_iter().find(|(rel, (len, _))| rel.rsplit('/').next() == Some("config") && *len == 128);
    vault.join(rel.unwrap_or_else(|| panic!("no vault config under {}", vault.display())).0)
}

/// A replaced config (the same vault and key, another cipher) is refused by
/// the next cycle, which ships nothing: the newest point records the cipher
/// under the root's MAC. Both directions: a downgrade to XChaCha20-Poly1305,
/// and an AES-256-GCM config put over an XChaCha20-Poly1305 vault.
#[test]
fn a_config_whose_cipher_was_replaced_is_refused_and_nothing_is_shipped() {
    use disk_format::{Cipher, VaultConfig};
    for (made, forged) in
        [(Cipher::Aes256Gcm, Cipher::XChaCha20Poly1305), (Cipher::XChaCha20Poly1305, Cipher::Aes256Gcm)]
    {
        let sc = scratch();
        let home = &sc.home;
        let (key, vault, image) = (sc.path("k.key"), sc.path("vault"), sc.path("disk.img"));
        home.key_new(&key);
        let (k, v) = (key.to_str().unwrap(), vault.to_str().unwrap());
        home.run_ok(&["vault", "init", v, "--key", k, "--cipher", made.name()]);
        fs::write(&image, Rng::new(3).bytes(MIB as usize)).unwrap();
        home.protect_replicated("d", &image, 64 * KIB, &vault, &key);
        assert_eq!(home.ship("d").sequence, 1);

        let path = config_path(&vault);
        let good = fs::read(&path).unwrap();
        let config = VaultConfig::decode(&good).unwrap();
        assert_eq!(config.cipher, made);
        fs::write(&path, VaultConfig { cipher: forged, ..config }.encode()).unwrap();
        let packs = pack_versions(&vault).len();
        let o = home.run(&["ship", "d", "--once"]);
        let t = text(&o);
        assert!(!o.status.success(), "{made} -> {forged}: {t}");
        assert!(
            t.contains("config was replaced") && t.contains(forged.name()) && t.contains(made.name()),
            "{made} -> {forged}: {t}"
        );
        assert_eq!(pack_versions(&vault).len(), packs, "{made} -> {forged}: a pack was stored");
        // The config put back, replication goes on from point 1.
        fs::write(&path, &good).unwrap();
        assert_eq!(home.ship("d").sequence, 2, "{made}: after the config was restored");
    }
}

/// `lifeboat ship --once --json`, parsed.
fn ship_json(home: &vm_tests::lifeboat::Home, name: &str) -> serde_json::Value {
    let o = home.run_ok(&["ship", name, "--once", "--json"]);
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Compression (issue 17 point 2) through the binary: a disk of text ships
/// compressed and restores exactly, `vault check --read-data` inflates and
/// verifies every block, and `protect --no-compress` stores blocks as they
/// are (recorded in disk.toml).
#[test]
fn text_ships_compressed_and_no_compress_stores_blocks_as_they_are() {
    let sc = scratch();
    let home = &sc.home;
    let (key, vault) = (sc.path("k.key"), sc.path("vault"));
    home.key_new(&key);
    let (k, v) = (key.to_str().unwrap(), vault.to_str().unwrap());
    home.run_ok(&["vault", "init", v, "--key", k]);
    // 4 MiB of log-like text with a counter, so no two blocks are equal.
    let text_from = |mut n: u64| {
        let mut text = Vec::new();
        while text.len() < 4 * MIB as usize {
            text.extend_from_slice(format!("{n:>10} lifeboat: cycle committed, 3 blocks shipped\n").as_bytes());
            n += 1;
        }
        text.truncate(4 * MIB as usize);
        text
    };
    for (name, extra, first) in [("on", &[][..], 0), ("off", &["--no-compress"][..], 1 << 40)] {
        // Each disk its own text: no block of one deduplicates against the other's.
        let text = text_from(first);
        let image = sc.path(&format!("{name}.img"));
        fs::write(&image, &text).unwrap();
        home.protect_replicated_with(name, &image, 64 * KIB, &vault, &key, extra);
        let r = ship_json(home, name);
        let (new, compressed) = (r["new_blocks"].as_u64().unwrap(), r["compressed_blocks"].as_u64().unwrap());
        let (shipped, plain) = (r["bytes_shipped"].as_u64().unwrap(), r["new_bytes"].as_u64().unwrap());
        assert_eq!((new, plain), (64, 4 * MIB), "{name}: {r}");
        if name == "on" {
            assert_eq!(compressed, 64, "{r}");
            assert!(shipped * 4 < plain, "text shrinks to less than a quarter: {r}");
        } else {
            assert_eq!(compressed, 0, "{r}");
            assert!(shipped > plain, "{r}");
            let conf = fs::read_to_string(home.dir.join("disks").join(name).join("disk.toml")).unwrap();
            assert!(conf.contains("compress = false"), "{conf}");
        }
        let back = home.restore(name, "latest", &sc.path(&format!("{name}.back")));
        assert!(back == text, "{name}: the restored image differs");
    }
    let o = home.run_ok(&["vault", "check", v, "--read-data", "--key", k]);
    let t = text(&o);
    assert!(t.contains("128 blocks decrypted and verified") && t.contains("no problems found"), "{t}");
}
