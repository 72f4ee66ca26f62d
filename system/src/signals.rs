//! SIGTERM / SIGINT as an ordinary event: blocked in every thread and taken by
//! one waiting thread, so shutdown runs as normal code, not in a handler.
#![allow(unsafe_code)]

use std::io;

fn term_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise a sigset_t we own on the stack;
    // zeroed memory is a valid starting value for them to overwrite.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}

/// Blocks SIGTERM and SIGINT in the calling thread and in every thread it
/// spawns afterwards. Call first thing, before any thread exists.
pub fn block_termination() -> io::Result<()> {
    let set = term_set();
    // SAFETY: pthread_sigmask with a valid, initialised set and a null old-set pointer.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Waits for SIGTERM or SIGINT (which must be blocked) and returns its name.
pub fn wait_termination() -> &'static str {
    let set = term_set();
    let mut sig: libc::c_int = 0;
    // SAFETY: sigwait with a valid set and a pointer to a local int.
    let rc = unsafe { libc::sigwait(&set, &mut sig) };
    match (rc, sig) {
        (0, libc::SIGINT) => "SIGINT",
        _ => "SIGTERM",
    }
}
