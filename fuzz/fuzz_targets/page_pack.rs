//! Page pack parsing: arbitrary bytes as a page pack, whole and as a tail
//! of a longer object. Must never panic; an accepted pack must encode back
//! to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = disk_format::page_pack::fuzz_page_pack_bytes(data);
});
