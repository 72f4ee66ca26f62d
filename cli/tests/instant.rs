//! Instant recovery's server (`lifeboat instant-serve`, started per disk by
//! `failover --instant`), driven by real NBD clients (`nbdcopy`, `qemu-io`):
//!
//! * what it serves is byte for byte the point, before the background copy
//!   has finished, and once it has, the local image is the point;
//! * a client's writes land on the point's data and survive a SIGKILL of the
//!   server: the restarted server serves them, not the vault's old blocks;
//! * a damaged pack is reported as an I/O error to the client, never as data,
//!   and a wrong key is refused before anything is served.

// Test code for 64-bit hosts.
#![allow(clippy::cast_possible_truncation)]

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vm_tests::clients::{nbd_uri, qemu_io};
use vm_tests::lifeboat::Scratch;
use vm_tests::paths;
use vm_tests::replicate::{arg, flip_bit, Object};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 32 * MIB;

fn setup(prefix: &str) -> (Scratch, Vec<u8>) {
    let s = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), prefix);
    let mut data = vm_tests::pseudo_random(SIZE as usize, 42);
    data[(4 * MIB) as usize..(12 * MIB) as usize].fill(0);
    fs::write(s.path("d.img"), &data).unwrap();
    s.home.key_new(&s.path("k.key"));
    s.home.vault_init(&s.path("vault"), &s.path("k.key"));
    s.home.protect_replicated("d", &s.path("d.img"), 64 * 1024, &s.path("vault"), &s.path("k.key"));
    s.home.ship("d");
    (s, data)
}

fn serve(s: &Scratch, key: &str) -> Child {
    let sock = s.path("i.sock");
    let _ = fs::remove_file(&sock);
    let child = s
        .home
        .command()
        .args(["instant-serve", "--vault", arg(&s.path("vault")), "--key", arg(&s.path(key)), "--disk", "d"])
        .args(["--point", "1", "--image", arg(&s.path("local.img")), "--bitmap", arg(&s.path("local.present"))])
        .args(["--socket", arg(&sock)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(t.elapsed() < Duration::from_secs(30), "instant-serve never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn read_all(sock: &Path, out: &Path) -> Vec<u8> {
    let _ = fs::remove_file(out);
    let o = Command::new(paths::tool("nbdcopy")).arg(nbd_uri("d", sock)).arg(out).output().unwrap();
    assert!(o.status.success(), "nbdcopy: {}", String::from_utf8_lossy(&o.stderr));
    fs::read(out).unwrap()
}

/// Bits set in the present bitmap.
fn present(s: &Scratch) -> u32 {
    fs::read(s.path("local.present")).unwrap().iter().map(|b| b.count_ones()).sum()
}

#[test]
fn serves_the_point_keeps_client_writes_across_a_sigkill_and_fills_the_local_copy() {
    let (s, data) = setup("lb-instant-");
    let sock = s.path("i.sock");
    let mut server = serve(&s, "k.key");
    // A write before anything was read: it lands on the point's data around it.
    qemu_io(&nbd_uri("d", &sock), &["write -P 0xab 1000000 5000"]);
    let mut want = data.clone();
    want[1_000_000..1_005_000].fill(0xab);
    let got = read_all(&sock, &s.path("copy1.img"));
    assert!(got == want, "the served disk is not the point with the client's write");
    server.kill().unwrap();
    let _ = server.wait();

    // The restarted server keeps the write (its bitmap survived the kill).
    let mut server = serve(&s, "k.key");
    qemu_io(&nbd_uri("d", &sock), &["read -P 0xab 1000000 5000"]);
    let t = Instant::now();
    while present(&s) < (SIZE / (64 * 1024)) as u32 {
        assert!(t.elapsed() < Duration::from_secs(60), "the background copy did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = read_all(&sock, &s.path("copy2.img"));
    assert!(got == want, "after the restart the served disk lost the write or the point");
    server.kill().unwrap();
    let _ = server.wait();
    assert!(fs::read(s.path("local.img")).unwrap() == want, "the local copy is not the point plus the write");
}

#[test]
fn a_damaged_pack_is_an_io_error_and_a_wrong_key_serves_nothing() {
    let (s, _) = setup("lb-instant-bad-");
    s.home.key_new(&s.path("other.key"));
    let o = s.home.run(&[
        "instant-serve",
        "--vault",
        arg(&s.path("vault")),
        "--key",
        arg(&s.path("other.key")),
        "--disk",
        "d",
        "--point",
        "1",
        "--image",
        arg(&s.path("x.img")),
        "--bitmap",
        arg(&s.path("x.present")),
        "--socket",
        arg(&s.path("x.sock")),
    ]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("fingerprint"), "{o:?}");
    assert!(!s.path("x.img").exists(), "a refused server created its image");

    let packs = Object::Pack.list(&s.path("vault"));
    let pack = Object::Pack.path(&s.path("vault"), packs.iter().next().unwrap());
    flip_bit(&pack, 4096 + 100, 3);
    let sock = s.path("i.sock");
    let mut server = serve(&s, "k.key");
    let o = Command::new(paths::tool("nbdcopy")).arg(nbd_uri("d", &sock)).arg(s.path("out.img")).output().unwrap();
    assert!(!o.status.success(), "a damaged pack was served as data");
    server.kill().unwrap();
    let _ = server.wait();
    let mut err = String::new();
    use std::io::Read;
    server.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains("serving point 1"), "{err}");
}
