//! End-to-end tests that boot QEMU guests whose virtio disk goes through the
//! real `lifeboat filter` process.
//!
//! This crate is the harness; the tests live in `tests/`. It owns:
//!
//! * [`paths`]: where the `lifeboat` binary, the cache and the guest kernel are
//!   (`LIFEBOAT_BIN`, `LIFEBOAT_CACHE`; `scripts/setup.sh` unpacks the Debian
//!   cloud kernel into `.cache/kernel`),
//! * [`initramfs`]: a busybox initramfs (busybox-static + cpio) whose `/init`
//!   loads the virtio modules, runs the test's guest script and powers off,
//! * [`serial`]: strict parsing of the markers the guest prints on its serial
//!   console (CRLF lines),
//! * [`filter`]: `lifeboat protect` / `dirty --json` and the `lifeboat filter`
//!   child process, killed and reaped on drop,
//! * [`qemu`]: `qemu-system-x86_64` under TCG with the disk served over NBD on a
//!   unix socket, with a timeout.
//!
//! It must not: run in the default quick test pass (the booting tests are
//! `#[ignore]`d and run by `scripts/test.sh --full`), or leave a QEMU or filter
//! process behind when a test fails.
#![deny(missing_docs)]

pub mod filter;
pub mod initramfs;
pub mod paths;
pub mod qemu;
pub mod serial;

/// Deterministic pseudo-random bytes (xorshift64*), so a failing run can be
/// replayed exactly.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::pseudo_random;

    #[test]
    fn pseudo_random_is_deterministic_and_seed_dependent() {
        assert_eq!(pseudo_random(100, 7), pseudo_random(100, 7));
        assert_ne!(pseudo_random(100, 7), pseudo_random(100, 8));
        assert_eq!(pseudo_random(13, 1).len(), 13);
    }
}
