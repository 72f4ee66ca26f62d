//! Control-socket request lines: arbitrary bytes, whole and split on '\n', as
//! lossy UTF-8 and as raw UTF-8, go to `parse_request`. Must never panic; every
//! accepted request must come back unchanged through `Request::to_line`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = filter::control::fuzz_request_line_bytes(data);
});
