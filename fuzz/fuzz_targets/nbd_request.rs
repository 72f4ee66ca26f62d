//! NBD transmission-phase parsing: arbitrary bytes as a request header (then
//! judged against an export size taken from the following bytes) and as a
//! simple reply header. Must never panic; accepted messages must serialize
//! back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = filter::nbd::proto::fuzz_request_bytes(data);
});
