//! Point root parsing: arbitrary bytes as a root, with and without the MAC
//! check. Must never panic; an accepted root must re-encode to the same bytes
//! (MAC aside) and its re-encoding must authenticate.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = disk_format::point::fuzz_root_bytes(data);
});
