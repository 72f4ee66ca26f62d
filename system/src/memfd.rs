//! Anonymous in-memory files (`memfd_create(2)`).
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;

/// A new anonymous file in memory, closed on exec; `name` only shows in
/// `/proc/PID/fd`. Fails where the kernel has no `memfd_create`.
pub fn create(name: &CStr) -> io::Result<File> {
    // SAFETY: memfd_create reads the NUL-terminated `name`, which `CStr`
    // guarantees and which outlives the call; the flags are plain integers.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create, is open, and nothing
    // else owns it: the File is its only owner and closes it exactly once.
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    #[test]
    fn a_memfd_holds_what_is_written_and_is_named_in_proc() {
        use std::os::fd::AsRawFd;
        let f = super::create(c"lifeboat-test").unwrap();
        f.write_all_at(b"kept", 4096).unwrap();
        let mut back = [0u8; 4];
        f.read_exact_at(&mut back, 4096).unwrap();
        assert_eq!(&back, b"kept");
        let link = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap();
        assert!(link.to_string_lossy().contains("memfd:lifeboat-test"), "{}", link.display());
    }
}
