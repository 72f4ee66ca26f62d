//! Pack parsing: arbitrary bytes as a whole pack (header, trailer, index, blob
//! bounds) and as a trailer read from the tail. Must never panic; an accepted
//! pack must be byte for byte what `PackWriter` writes for the same blobs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = disk_format::pack::fuzz_pack_bytes(data);
});
