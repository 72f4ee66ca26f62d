//! Freeing and zeroing ranges of a file in place (`fallocate(2)`), keeping
//! its size.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let invalid = |_| io::Error::from_raw_os_error(libc::EINVAL);
    let (off, len) = (libc::off_t::try_from(offset).map_err(invalid)?, libc::off_t::try_from(len).map_err(invalid)?);
    // SAFETY: fallocate(2) takes a descriptor and integers, no memory of
    // ours; `file` owns the descriptor and outlives the call.
    if unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Frees `len` bytes at `offset` (they read back as zeroes) without
/// changing the file's size. Fails where the file system cannot punch
/// holes (`EOPNOTSUPP`), and with `EINVAL` for a range past `i64::MAX`.
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    fallocate(file, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset, len)
}

/// Zeroes `len` bytes at `offset`, keeping them allocated and the file's
/// size unchanged. Fails where the file system cannot (`EOPNOTSUPP`, a
/// block device on some kernels), and with `EINVAL` for a range past
/// `i64::MAX`.
pub fn zero_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    fallocate(file, libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE, offset, len)
}

/// Where the first data at or after `offset` lies (`lseek(2)`'s
/// `SEEK_DATA`): `None` past the last data. Where the file system or
/// device does not tell holes from data, every offset is data.
pub fn next_data(file: &File, offset: u64) -> io::Result<Option<u64>> {
    let off = libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: lseek(2) takes a descriptor and integers, no memory of ours;
    // `file` owns the descriptor and outlives the call.
    let at = unsafe { libc::lseek(file.as_raw_fd(), off, libc::SEEK_DATA) };
    if at >= 0 {
        return Ok(Some(u64::try_from(at).unwrap_or(offset)));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENXIO) => Ok(None),
        Some(libc::EINVAL | libc::EOPNOTSUPP) => Ok(Some(offset)),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileExt, MetadataExt};

    #[test]
    fn holes_and_zeroed_ranges_read_as_zeroes_and_keep_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(dir.path().join("f")).unwrap();
        f.write_all_at(&[7u8; 1 << 20], 0).unwrap();
        f.sync_all().unwrap();
        let blocks = f.metadata().unwrap().blocks();
        punch_hole(&f, 0, 512 << 10).unwrap();
        zero_range(&f, 512 << 10, 4096).unwrap();
        let mut back = vec![1u8; 1 << 20];
        f.read_exact_at(&mut back, 0).unwrap();
        assert!(back[..(512 << 10) + 4096].iter().all(|&b| b == 0));
        assert!(back[(512 << 10) + 4096..].iter().all(|&b| b == 7));
        assert_eq!(f.metadata().unwrap().len(), 1 << 20);
        assert!(f.metadata().unwrap().blocks() < blocks, "the hole freed nothing");
        assert_eq!(punch_hole(&f, u64::MAX, 1).unwrap_err().raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn next_data_skips_holes_and_ends_after_the_last_data() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(dir.path().join("f")).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&[7u8; 1 << 20], 32 << 20).unwrap();
        assert_eq!(next_data(&f, 0).unwrap(), Some(32 << 20));
        assert_eq!(next_data(&f, (32 << 20) + 4096).unwrap(), Some((32 << 20) + 4096));
        assert_eq!(next_data(&f, 40 << 20).unwrap(), None);
    }
}
