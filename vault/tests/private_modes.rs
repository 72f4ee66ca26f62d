//! Issue 12, hole 6: a local vault is private whatever the umask. Under
//! `umask 000` (this test binary holds only this test, so the umask it sets
//! touches nothing else), every directory the backend creates is 0700 and
//! every object 0600, written whole or through a writer.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use vault::backend::{Backend, Kind};
use vault::local::LocalBackend;

/// Every entry under `root` that is not 0700 (directory) or 0600 (file).
fn loose(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        let (mode, want) = (m.permissions().mode() & 0o7777, if m.is_dir() { 0o700 } else { 0o600 });
        if mode != want {
            out.push(format!("{} {mode:04o}", p.display()));
        }
        if m.is_dir() {
            stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    out
}

#[test]
fn under_umask_000_every_vault_directory_and_object_is_private() {
    // SAFETY: umask(2) takes no pointers and cannot fail.
    unsafe { libc::umask(0) };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("a/vault");
    let b = LocalBackend::create(&root).unwrap();
    b.put(Kind::Config, "config", b"config").unwrap();
    b.put(Kind::Pack, "dd01", b"pack").unwrap();
    b.put(Kind::Page, "ee01", b"page").unwrap();
    b.put(Kind::Root, "disk/00000000000000000001", b"root").unwrap();
    b.put(Kind::Audit, "0001", b"audit").unwrap();
    if let Some(mut w) = b.writer(Kind::Pack).unwrap() {
        w.write(&[7u8; 4096]).unwrap();
        w.commit("ff02").unwrap();
    }
    let found = loose(&dir.path().join("a"));
    assert!(found.is_empty(), "vault entries created under umask 000 and not private:\n{}", found.join("\n"));
}
