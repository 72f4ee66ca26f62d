//! Map page parsing: arbitrary bytes as a map page. Must never panic; an
//! accepted page must encode back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = disk_format::map_page::fuzz_map_page_bytes(data);
});
