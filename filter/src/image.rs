//! The disk image as a file: which file it is ([`ImageId`]), and the lock a
//! process serving it holds so that nothing else writes it meanwhile.
//!
//! **The lock is QEMU's.** A VM started on the image, `qemu-io`, `qemu-img`
//! and a second filter must all see that the image is taken, so the filter
//! takes the very locks QEMU's `file-posix` driver takes (`raw_apply_lock_bytes`
//! and `raw_check_lock_bytes` in QEMU's block/file-posix.c): shared
//! open-file-description locks (`F_OFD_SETLK`, `F_RDLCK`) on single bytes,
//! byte [`PERM_BASE`]` + bit` for each permission the holder *uses* and byte
//! [`SHARED_BASE`]` + bit` for each permission it does *not* share with others.
//! Before taking a permission, a process checks (`F_OFD_GETLK` with a
//! write-lock probe) that no one else holds the "not shared" byte of a
//! permission it wants, nor the "uses" byte of a permission it refuses to
//! share. The filter uses consistent read, write and resize, and shares only
//! consistent read: `qemu-img info` and a reader that tolerates writers
//! (`qemu-io -r -U`) still open the image, every writer is refused with
//! QEMU's own `Failed to get "write" lock`.
//!
//! Like QEMU, the filter first takes its bytes and then checks for conflicts:
//! of two processes racing for one image, at least one sees the other. The
//! locks belong to the open file description of the image, so they last as
//! long as the [`crate::Disk`] that opened it and go with it, even when the
//! process is killed. A reopen of the image (`/proc/self/fd`) is another open
//! file description that holds no lock and so conflicts with nothing.

use std::fmt;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;

use crate::sys::{ofd_byte_locked, ofd_lock_shared};

/// First byte of the "permission used" locks.
pub const PERM_BASE: u64 = 100;
/// First byte of the "permission not shared" locks.
pub const SHARED_BASE: u64 = 200;

/// QEMU's block permissions (`BLK_PERM_*`), by bit number, with the names
/// QEMU prints for them.
const PERMS: [(u64, &str); 4] = [(0, "consistent read"), (1, "write"), (2, "write unchanged"), (3, "resize")];
/// What the filter uses: consistent read, write, resize.
const USED: u64 = 0b1011;
/// What the filter shares with others: consistent read only.
const SHARED: u64 = 0b0001;

/// How another process's lock conflicts with serving the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The locked byte.
    pub byte: u64,
    /// What it means, in QEMU's terms.
    pub meaning: String,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (byte {})", self.meaning, self.byte)
    }
}

fn meaning(byte: u64) -> String {
    let (base, what) = if byte >= SHARED_BASE { (SHARED_BASE, "does not share") } else { (PERM_BASE, "uses") };
    let name = PERMS.iter().find(|(bit, _)| base + bit == byte).map_or("an unknown permission", |(_, n)| n);
    format!("another process {what} \"{name}\"")
}

/// Takes the filter's locks on `image` and checks that no one else holds
/// a conflicting one. `Ok(Err(conflict))`: someone does; the caller drops
/// the file, which releases what was taken.
pub(crate) fn lock_for_serving(image: &File) -> io::Result<Result<(), Conflict>> {
    for (bit, _) in PERMS {
        if USED & (1 << bit) != 0 {
            lock_byte(image, PERM_BASE + bit)?;
        }
        if SHARED & (1 << bit) == 0 {
            lock_byte(image, SHARED_BASE + bit)?;
        }
    }
    for (bit, _) in PERMS {
        let mut check = Vec::new();
        if USED & (1 << bit) != 0 {
            check.push(SHARED_BASE + bit);
        }
        if SHARED & (1 << bit) == 0 {
            check.push(PERM_BASE + bit);
        }
        for byte in check {
            if ofd_byte_locked(image, byte)? {
                return Ok(Err(Conflict { byte, meaning: meaning(byte) }));
            }
        }
    }
    Ok(Ok(()))
}

fn lock_byte(image: &File, byte: u64) -> io::Result<()> {
    match ofd_lock_shared(image, byte) {
        // Someone holds a write lock there: not QEMU (which only takes read
        // locks), but a conflict all the same; the check below reports it.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => Ok(()),
        other => other,
    }
}

/// The first QEMU image-lock byte another process holds on `file`, if any:
/// something (a VM, `qemu-io`, a Lifeboat filter) has the image open. For
/// commands that must not replace or overwrite an image in use. `file` may
/// be open read-only.
pub fn lock_holder(file: &File) -> io::Result<Option<Conflict>> {
    for base in [PERM_BASE, SHARED_BASE] {
        for (bit, _) in PERMS {
            let byte = base + bit;
            if ofd_byte_locked(file, byte)? {
                return Ok(Some(Conflict { byte, meaning: meaning(byte) }));
            }
        }
    }
    Ok(None)
}

/// Which file an image is: its device and inode. A path may come to name
/// another file (a restore renamed over it, a copy moved into place); this
/// does not change with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageId {
    /// `st_dev` of the file.
    pub device: u64,
    /// `st_ino` of the file.
    pub inode: u64,
}

impl ImageId {
    /// The identity of the file `meta` describes.
    pub fn of(meta: &Metadata) -> ImageId {
        ImageId { device: meta.dev(), inode: meta.ino() }
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", libc::major(self.device), libc::minor(self.device), self.inode)
    }
}
