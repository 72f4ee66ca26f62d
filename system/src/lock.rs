//! The two kinds of file lock Lifeboat takes, both advisory and both owned
//! by the open file description (released when its last descriptor closes,
//! or its process dies):
//!
//! - `flock(2)` on a whole file ([`lock`], [`try_lock_exclusive`]): the state
//!   file, the vault's locks, the audit log. It excludes other processes and
//!   other descriptors of this process (a second `open` of the same file).
//! - open-file-description byte-range locks (`F_OFD_SETLK`) on single bytes
//!   ([`ofd_lock_shared`], [`ofd_byte_locked`]): QEMU's image locking
//!   protocol, which the filter speaks on the images it serves.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock only reads the descriptor number and the flags;
        // `file` owns the descriptor and outlives the call. No memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Takes the lock, exclusive or shared, waiting for it.
pub fn lock(file: &File, exclusive: bool) -> io::Result<()> {
    flock(file, if exclusive { libc::LOCK_EX } else { libc::LOCK_SH })
}

/// Takes the exclusive lock if nobody holds the file locked: `Ok(false)`
/// when another holder has it.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    match flock(file, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// An open-file-description lock request of `kind` on byte `byte`.
fn ofd_request(kind: libc::c_int, byte: u64) -> io::Result<libc::flock> {
    let start = libc::off_t::try_from(byte).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok(libc::flock {
        l_type: libc::c_short::try_from(kind).expect("lock types fit a short"),
        l_whence: libc::c_short::try_from(libc::SEEK_SET).expect("SEEK_SET fits a short"),
        l_start: start,
        l_len: 1,
        // OFD locks require 0 here; F_OFD_GETLK writes -1 back.
        l_pid: 0,
    })
}

/// Takes a shared (read) open-file-description lock on byte `byte` of
/// `file` (`F_OFD_SETLK`, `F_RDLCK`), as QEMU does. It lasts until every
/// descriptor of this open file description is closed. Fails with
/// `EAGAIN`/`EACCES` if another open file description holds a write lock there.
pub fn ofd_lock_shared(file: &File, byte: u64) -> io::Result<()> {
    let fl = ofd_request(libc::F_RDLCK, byte)?;
    // SAFETY: fcntl(F_OFD_SETLK) only reads the `flock` passed by pointer,
    // which is initialised and lives on our stack across the call; `file`
    // owns the descriptor and outlives the call.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &raw const fl) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether another open file description holds any lock on byte `byte` of
/// `file`: `F_OFD_GETLK` with a write-lock probe, QEMU's `qemu_lock_fd_test`.
/// Locks of this very open file description never count.
pub fn ofd_byte_locked(file: &File, byte: u64) -> io::Result<bool> {
    let mut fl = ofd_request(libc::F_WRLCK, byte)?;
    // SAFETY: fcntl(F_OFD_GETLK) reads the `flock` passed by pointer and
    // overwrites it with another `flock` (the conflicting lock, or l_type
    // F_UNLCK); it is initialised, writable and lives on our stack across
    // the call. `file` owns the descriptor and outlives the call.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &raw mut fl) };
    if rc == 0 {
        Ok(i32::from(fl.l_type) != libc::F_UNLCK)
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_open_file_description_is_excluded_until_the_first_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let a = File::create(&path).unwrap();
        let b = File::open(&path).unwrap();
        assert!(try_lock_exclusive(&a).unwrap());
        assert!(!try_lock_exclusive(&b).unwrap(), "two holders of one exclusive lock");
        drop(a);
        assert!(try_lock_exclusive(&b).unwrap());
        lock(&b, false).unwrap(); // converting the holder's own lock does not wait
    }

    #[test]
    fn an_ofd_byte_lock_is_seen_by_other_open_file_descriptions_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        std::fs::write(&path, [0u8; 512]).unwrap();
        let a = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let b = File::open(&path).unwrap();
        assert!(!ofd_byte_locked(&b, 201).unwrap());
        ofd_lock_shared(&a, 201).unwrap();
        assert!(ofd_byte_locked(&b, 201).unwrap(), "another description's read lock went unseen");
        assert!(!ofd_byte_locked(&a, 201).unwrap(), "a description's own lock counted");
        assert!(!ofd_byte_locked(&b, 200).unwrap() && !ofd_byte_locked(&b, 202).unwrap(), "the lock is one byte");
        let dup = a.try_clone().unwrap();
        drop(a);
        assert!(ofd_byte_locked(&b, 201).unwrap(), "released while a duplicate descriptor is open");
        drop(dup);
        assert!(!ofd_byte_locked(&b, 201).unwrap());
        assert_eq!(ofd_byte_locked(&b, u64::MAX).unwrap_err().raw_os_error(), Some(libc::EINVAL));
    }
}
