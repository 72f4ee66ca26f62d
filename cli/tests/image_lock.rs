//! Issue 12, holes 3 and 4 and the minor ones: the image a filter serves is
//! its alone, and a command never puts another file in its place.
//!
//! * While `lifeboat filter` serves an image, real `qemu-io` cannot write the
//!   image file directly (QEMU's own `Failed to get "write" lock`), a reader
//!   that tolerates writers still can, and once the filter stops the same
//!   write goes through (the lock went with the filter).
//! * A second filter serving the same file under another name (a hard link
//!   made after `protect`) is refused, naming the image and the disk.
//! * `protect` refuses an image already protected under another name, through
//!   a symlink or a hard link.
//! * `restore --force` (and `snapshot --force`) over a served, protected image
//!   is refused, and so is a restore over an image another home's filter
//!   serves (it holds QEMU's lock); the image is left as it was.
//! * A file put in place of the protected image is refused by the filter
//!   until `protect --reset-state`; a config from before identities were
//!   recorded gets them at the next open.
//! * The minor ones: a directory, an immutable image and a disk name whose
//!   socket path is too long are refused by `protect`, before anything is
//!   recorded; `vault init` refuses a non-empty directory and an existing vault.
//!
//! The binary is `$LIFEBOAT_BIN` if set (to watch these fail on an older
//! build), else the one cargo built.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use vm_tests::clients::{nbd_uri, qemu_io};
use vm_tests::lifeboat::{Home, Scratch};
use vm_tests::paths::tool;
use vm_tests::process::assert_ok;
use vm_tests::replicate::{arg, assert_refused};
use vm_tests::Rng;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

fn bin() -> PathBuf {
    std::env::var_os("LIFEBOAT_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_lifeboat")), PathBuf::from)
}

fn scratch() -> Scratch {
    Scratch::new(bin(), "lb-lock-")
}

/// A 4 MiB image of random bytes at `path`.
fn image(path: &Path, seed: u64) -> Vec<u8> {
    let data = Rng::new(seed).bytes(usize::try_from(4 * MIB).unwrap());
    fs::write(path, &data).unwrap();
    data
}

/// `qemu-io -f raw -c CMD IMAGE` on the image file itself (not through NBD).
fn qemu_io_file(image: &Path, extra: &[&str], cmd: &str) -> Output {
    Command::new(tool("qemu-io")).args(extra).args(["-f", "raw", "-c", cmd]).arg(image).output().expect("run qemu-io")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn issue12_qemu_io_cannot_write_an_image_the_filter_serves() {
    let s = scratch();
    let img = s.path("disk.img");
    let data = image(&img, 1);
    s.home.protect("lk", &img, 64 * KIB);
    let sock = s.path("nbd.sock");
    let filter = s.home.filter("lk", &sock);

    let o = qemu_io_file(&img, &[], "write -P 0x77 0 4k");
    let said = text(&o);
    assert!(!o.status.success(), "qemu-io wrote the served image directly:\n{said}");
    assert!(said.contains("Failed to get \"write\" lock"), "qemu-io failed, but not on QEMU's image lock:\n{said}");
    assert_eq!(fs::read(&img).unwrap(), data, "the refused qemu-io changed the image");
    assert!(s.home.dirty("lk").dirty_blocks.is_empty(), "nothing was written, yet blocks are dirty");

    // A reader that tolerates writers (-U, force-share) still reads it.
    let o = qemu_io_file(&img, &["-r", "-U"], "read 0 4k");
    assert_ok(&o, "qemu-io -r -U on the served image");
    // Writes through the filter go on.
    qemu_io(&nbd_uri("lk", &sock), &["write -P 0x55 0 4k"]);
    filter.stop();

    // The lock went with the filter: the same direct write now succeeds.
    let o = qemu_io_file(&img, &[], "write -P 0x77 65536 4k");
    assert_ok(&o, "qemu-io on the image after the filter stopped");
    let now = fs::read(&img).unwrap();
    assert!(now[..4096].iter().all(|&b| b == 0x55) && now[65536..69632].iter().all(|&b| b == 0x77));
}

#[test]
fn issue12_a_second_filter_on_the_same_file_is_refused() {
    let s = scratch();
    let img = s.path("disk.img");
    image(&img, 2);
    let other = s.path("other.img");
    image(&other, 3);
    s.home.protect("first", &img, 64 * KIB);
    s.home.protect("second", &other, 64 * KIB);
    // After `protect` checked it, `second`'s path comes to name the same
    // file, and its config predates recorded identities (so the identity
    // check adopts the file): only the image lock is left to refuse it.
    fs::remove_file(&other).unwrap();
    fs::hard_link(&img, &other).unwrap();
    forget_image_identity(&s.home.dir.join("disks/second/disk.toml"));

    let first = s.home.filter("first", &s.path("a.sock"));
    let mut second = s.home.spawn_filter("second", &[format!("unix:{}", s.path("b.sock").display())]);
    let status = second.wait(Duration::from_secs(30));
    let log = second.log();
    assert_eq!(status.code(), Some(1), "a second filter served the image the first serves:\n{log}");
    for needle in ["disk \"second\"", arg(&other), "is in use by another process", "QEMU's image lock", "stop it first"]
    {
        assert!(log.contains(needle), "the refusal does not mention {needle:?}:\n{log}");
    }
    assert!(!s.path("b.sock").exists(), "the refused filter left a socket behind");
    // The refusal left the second disk's state clean.
    assert!(!s.home.dirty("second").suspect);
    first.stop();

    // One agent given both names serves the first and refuses the second.
    let mut agent = s.home.agent(&[], &["first"]);
    let line = agent.wait_line("is in use by another process", Duration::from_secs(30));
    assert!(line.contains("error: second:") && line.contains(arg(&other)), "{line}");
    assert!(!agent.log().contains("second: serving on"), "the agent served both names:\n{}", agent.log());
    agent.stop();
}

#[test]
fn issue12_protect_refuses_an_image_protected_under_another_name() {
    let s = scratch();
    let img = s.path("disk.img");
    image(&img, 4);
    s.home.protect("orig", &img, 64 * KIB);
    let link = s.path("link.img");
    std::os::unix::fs::symlink(&img, &link).unwrap();
    let hard = s.path("hard.img");
    fs::hard_link(&img, &hard).unwrap();
    for (name, path) in [("viasym", &link), ("viahard", &hard)] {
        let o = s.home.run(&["protect", name, "--image", arg(path)]);
        assert_refused(&o, &format!("protect {name}"), &["already protected as disk \"orig\"", arg(&img)]);
        assert!(!s.home.dir.join("disks").join(name).exists(), "a refused protect created disk {name}");
    }
}

/// A disk replicated to a vault, with one point shipped.
struct Replicated {
    s: Scratch,
    img: PathBuf,
    data: Vec<u8>,
}

fn replicated(name: &str) -> Replicated {
    let s = scratch();
    let key = s.path("k.key");
    let vault = s.path("vault");
    let img = s.path("disk.img");
    let data = image(&img, 5);
    s.home.key_new(&key);
    s.home.vault_init(&vault, &key);
    s.home.protect_replicated(name, &img, 64 * KIB, &vault, &key);
    let _ = s.home.ship(name);
    Replicated { s, img, data }
}

#[test]
fn issue12_restore_over_a_served_image_is_refused() {
    let r = replicated("rs");
    let home = &r.s.home;
    let inode = fs::metadata(&r.img).unwrap().ino();
    let filter = home.filter("rs", &r.s.path("nbd.sock"));
    for (what, args) in [
        ("restore --force", vec!["restore", "rs", "--out", arg(&r.img), "--force"]),
        ("snapshot --force", vec!["snapshot", "rs", "--out", arg(&r.img), "--force"]),
    ] {
        let o = home.run_env(&[], &args);
        assert_refused(&o, what, &[arg(&r.img), "protected disk \"rs\"", "new file", "--reset-state"]);
        assert_eq!(fs::metadata(&r.img).unwrap().ino(), inode, "{what} replaced the served image");
    }
    assert_eq!(fs::read(&r.img).unwrap(), r.data);
    filter.stop();
}

#[test]
fn issue12_restore_over_an_image_another_home_serves_is_refused() {
    let r = replicated("rs");
    let home = &r.s.home;
    // An image this home does not protect, but another home's filter serves.
    let other = r.s.path("other.img");
    let other_data = image(&other, 6);
    let home2 = Home::new(bin(), r.s.path("home2"));
    home2.protect("o", &other, 64 * KIB);
    let filter2 = home2.filter("o", &r.s.path("o.sock"));
    let o = home.run_env(&[], &["restore", "rs", "--out", arg(&other), "--force"]);
    assert_refused(&o, "restore over an image another home serves", &[arg(&other), "QEMU's image lock"]);
    assert_eq!(fs::read(&other).unwrap(), other_data, "the refused restore changed the image");
    filter2.stop();
    // Unlocked and unprotected, --force does overwrite it.
    let o = home.run_env(&[], &["restore", "rs", "--out", arg(&other), "--force"]);
    assert_ok(&o, "restore --force over an image nothing uses");
    assert_eq!(fs::read(&other).unwrap(), r.data);
}

#[test]
fn issue12_a_replaced_image_is_refused_until_protected_again() {
    let s = scratch();
    let img = s.path("disk.img");
    let data = image(&img, 7);
    s.home.protect("rp", &img, 64 * KIB);
    // What `restore --force` did: a new file renamed over the image.
    let new = s.path("new.img");
    fs::write(&new, &data).unwrap();
    fs::rename(&new, &img).unwrap();

    let state = s.home.dir.join("disks/rp/state");
    let state_before = fs::read(&state).unwrap();
    let mut f = s.home.spawn_filter("rp", &[format!("unix:{}", s.path("nbd.sock").display())]);
    let status = f.wait(Duration::from_secs(30));
    let log = f.log();
    assert_eq!(status.code(), Some(1), "the filter served a replaced image:\n{log}");
    for needle in ["is not the file that was protected", arg(&img), "lifeboat protect rp --image", "--reset-state"] {
        assert!(log.contains(needle), "the refusal does not mention {needle:?}:\n{log}");
    }
    assert_eq!(fs::read(&state).unwrap(), state_before, "the refused filter changed the state file");
    s.home.run_ok(&["protect", "rp", "--image", arg(&img), "--reset-state"]);
    s.home.filter("rp", &s.path("nbd.sock")).stop();

    // A config written before identities were recorded: the next open records them.
    let conf = s.home.dir.join("disks/rp/disk.toml");
    forget_image_identity(&conf);
    let f = s.home.filter("rp", &s.path("nbd.sock"));
    assert!(f.log().contains("recorded the image's identity"), "no log line says so:\n{}", f.log());
    f.stop();
    let now = fs::read_to_string(&conf).unwrap();
    let ino = fs::metadata(&img).unwrap().ino();
    assert!(now.contains(&format!("image_inode = {ino}")), "disk.toml did not get the image's inode {ino}:\n{now}");
}

/// Clears the immutable flag it set, so the scratch directory can go.
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: &Path) -> Immutable {
        let o = Command::new("chattr").arg("+i").arg(path).output().expect("run chattr");
        assert_ok(&o, "chattr +i");
        Immutable(path.to_owned())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).output();
    }
}

#[test]
fn issue12_protect_refuses_a_directory_naming_it() {
    let s = scratch();
    let dir = s.path("adir");
    fs::create_dir(&dir).unwrap();
    let o = s.home.run(&["protect", "d", "--image", arg(&dir)]);
    let err = assert_refused(&o, "protect a directory", &[arg(&dir), "is a directory"]);
    assert!(!err.contains("too large"), "{err}");
    assert!(!s.home.dir.join("disks/d").exists(), "a refused protect created the disk");
}

#[test]
fn issue12_protect_refuses_an_immutable_image() {
    let s = scratch();
    let img = s.path("disk.img");
    image(&img, 8);
    let guard = Immutable::set(&img);
    let o = s.home.run(&["protect", "imm", "--image", arg(&img)]);
    assert_refused(&o, "protect an immutable image", &[arg(&img), "immutable", "chattr -i"]);
    assert!(!s.home.dir.join("disks/imm").exists(), "a refused protect created the disk");
    drop(guard);
    s.home.protect("imm", &img, 64 * KIB);
}

#[test]
fn issue12_protect_refuses_a_socket_path_too_long_for_a_unix_socket() {
    let s = scratch();
    let img = s.path("disk.img");
    image(&img, 9);
    // HOME/disks/NAME/control.sock longer than 107 bytes.
    let home = Home::new(bin(), s.path("a-home-directory-with-a-rather-long-name"));
    let name = "n".repeat(64);
    let control = home.dir.join("disks").join(&name).join("control.sock");
    assert!(control.as_os_str().len() > 107, "the test's path is too short: {}", control.display());
    let o = home.run(&["protect", &name, "--image", arg(&img)]);
    assert_refused(&o, "protect with a too long socket path", &[&control.display().to_string(), "unix socket path"]);
    assert!(!home.dir.join("disks").join(&name).exists(), "a refused protect created the disk");
    // So is a --listen path too long, on a name that fits.
    let long = s.path(&"s".repeat(100));
    let o = home.run(&["protect", "short", "--image", arg(&img), "--listen", &format!("unix:{}", long.display())]);
    assert_refused(&o, "protect with a too long --listen path", &[arg(&long), "unix socket path"]);
    assert!(!home.dir.join("disks/short").exists(), "a refused protect created the disk");
    // A shorter name with the default socket fits and is served.
    home.protect("short", &img, 64 * KIB);
    home.agent(&[], &["short"]).stop();
}

#[test]
fn issue12_a_filter_that_cannot_bind_its_socket_leaves_the_state_clean() {
    let s = scratch();
    let img = s.path("disk.img");
    image(&img, 10);
    s.home.protect("nb", &img, 64 * KIB);
    let long = s.path(&"s".repeat(100));
    let mut f = s.home.spawn_filter("nb", &[format!("unix:{}", long.display())]);
    let status = f.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "the filter served on a path too long for a socket:\n{}", f.log());
    let f = s.home.filter("nb", &s.path("nbd.sock"));
    let log = f.log();
    assert!(!log.contains("without a clean shutdown"), "the refused filter left the state unclean:\n{log}");
    f.stop();
}

#[test]
fn issue12_vault_init_refuses_a_non_empty_directory_and_an_existing_vault() {
    let s = scratch();
    let key = s.path("k.key");
    s.home.key_new(&key);
    let dir = s.path("stuff");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("notes.txt"), b"mine").unwrap();
    let o = s.home.run_env(&[], &["vault", "init", arg(&dir), "--key", arg(&key)]);
    assert_refused(&o, "vault init into a non-empty directory", &[arg(&dir), "not empty", "notes.txt"]);
    let left: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["notes.txt"], "the refused vault init changed the directory");

    let vault = s.path("vault");
    s.home.vault_init(&vault, &key);
    let o = s.home.run_env(&[], &["vault", "init", arg(&vault), "--key", arg(&key)]);
    assert_refused(&o, "vault init of an existing vault", &["already a Lifeboat vault"]);
}

/// Rewrites a `disk.toml` as a Lifeboat from before recorded image
/// identities wrote it (no `image_device`/`image_inode` lines).
fn forget_image_identity(conf: &std::path::Path) {
    let old: String = fs::read_to_string(conf)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("image_"))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(conf, old).unwrap();
}
