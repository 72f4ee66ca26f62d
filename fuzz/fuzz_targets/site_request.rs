//! The vault server's request parsing: route (method and path), Range,
//! ETag and a missing request's body (`site::protocol::fuzz_request`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    site::protocol::fuzz_request(data);
});
