//! `flock(2)`: advisory whole-file locks that belong to the open file
//! description, released when the file closes. They exclude other processes
//! and other descriptors of this process (a second `open` of the same file).
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
}
