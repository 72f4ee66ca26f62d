//! Key file parsing: arbitrary bytes as a key file (Argon2 runs only for tiny
//! costs, so the fuzzer is not stalled). Must never panic; a file that
//! unlocks must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = disk_format::key_file::fuzz_key_file_bytes(data);
});
