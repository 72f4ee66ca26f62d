//! NBD handshake parsing: arbitrary bytes as client flags, an option header
//! and that option's data (`NBD_OPT_GO`/`NBD_OPT_INFO` payloads included).
//! Must never panic; accepted messages must serialize back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = filter::nbd::proto::fuzz_option_bytes(data);
});
