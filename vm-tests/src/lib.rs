//! The end-to-end test harness: the real `lifeboat` binary, its `filter`
//! child process, the real NBD clients, and QEMU guests whose virtio disk goes
//! through the filter.
//!
//! This crate is the one copy of that plumbing. Its users are the tests in
//! `cli/tests/` (a dev-dependency; they pass `env!("CARGO_BIN_EXE_lifeboat")`)
//! and the VM tests in `tests/` here (they find the binary with
//! [`paths::lifeboat_bin`]). It owns:
//!
//! * [`paths`]: where the `lifeboat` binary, the cache, the guest kernel, the
//!   cloud emulators and host tools are (`LIFEBOAT_BIN`, `LIFEBOAT_CACHE`;
//!   `scripts/setup.sh` unpacks the Debian cloud kernel into `.cache/kernel`),
//! * [`lifeboat`]: a scratch directory with a lifeboat home, `lifeboat
//!   protect` / `dirty --json`, and the `lifeboat filter` child process, killed
//!   and reaped on drop,
//! * [`clients`]: the host NBD clients (`qemu-io`, libnbd's Python module),
//! * [`cloud_servers`]: the cloud-storage emulators for the cloud-vault
//!   tests, Azurite (Azure Blob) and moto's server (S3), each in memory on a
//!   free loopback port, killed and reaped on drop (`scripts/setup.sh`
//!   installs both into `.cache/`),
//! * [`replicate`]: key files, vaults, `ship` / `points` / `restore` /
//!   `snapshot`, block writes and a recorded writer through libnbd, and the
//!   vault directory as files to list, copy and damage,
//! * [`process`]: waiting for child processes with a deadline, and checking
//!   their exit,
//! * [`initramfs`]: a busybox initramfs (busybox-static + cpio) whose `/init`
//!   loads the virtio modules, runs the test's guest script and powers off,
//! * [`serial`]: strict parsing of the markers the guest prints on its serial
//!   console (CRLF lines),
//! * [`qemu`]: `qemu-system-x86_64` under TCG with the disk served over NBD on a
//!   unix socket, with a timeout.
//!
//! It must not: skip when a tool is missing (it fails saying "run
//! scripts/setup.sh"), run a booting test in the default quick pass (those are
//! `#[ignore]`d and run by `scripts/test.sh --full`), or leave a QEMU, filter
//! or emulator process behind when a test fails.
#![deny(missing_docs)]

pub mod clients;
pub mod cloud_servers;
pub mod fault_proxy;
pub mod initramfs;
pub mod lifeboat;
pub mod paths;
pub mod process;
pub mod qemu;
pub mod replicate;
pub mod serial;
pub mod site;

use std::ops::RangeInclusive;

/// Deterministic pseudo-random numbers (xorshift64*), so a failing run can be
/// replayed exactly.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose sequence depends only on `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// `len` bytes: the next numbers, little-endian.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(len);
        v
    }
}

/// `len` deterministic pseudo-random bytes: [`Rng::new`]`(seed).bytes(len)`.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    Rng::new(seed).bytes(len)
}

/// The indexes of the `bs`-byte blocks a request `[off, off + len)` touches.
/// A zero-length request touches none and is a bug in the test.
pub fn blocks_of(off: u64, len: u64, bs: u64) -> RangeInclusive<u64> {
    assert!(len > 0, "a zero-length request at {off} touches no block");
    (off / bs)..=((off + len - 1) / bs)
}

#[cfg(test)]
mod tests {
    use super::{blocks_of, pseudo_random, Rng};

    #[test]
    fn pseudo_random_is_deterministic_and_seed_dependent() {
        assert_eq!(pseudo_random(100, 7), pseudo_random(100, 7));
        assert_ne!(pseudo_random(100, 7), pseudo_random(100, 8));
        assert_eq!(pseudo_random(13, 1).len(), 13);
    }

    #[test]
    fn rng_numbers_and_bytes_are_one_stream() {
        let mut a = Rng::new(3);
        let words: Vec<u8> = (0..4).flat_map(|_| a.next_u64().to_le_bytes()).collect();
        assert_eq!(pseudo_random(32, 3), words);
        assert_eq!(pseudo_random(13, 3), words[..13]);
        let mut b = Rng::new(3);
        assert!((0..100).all(|_| b.below(10) < 10));
    }

    #[test]
    fn blocks_of_covers_first_to_last_byte() {
        assert_eq!(blocks_of(0, 1, 4096), 0..=0);
        assert_eq!(blocks_of(4095, 2, 4096), 0..=1);
        assert_eq!(blocks_of(8192, 4096, 4096), 2..=2);
    }
}
