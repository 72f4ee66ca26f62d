//! Root extension parsing: arbitrary bytes as a point root's extension,
//! opened with a fixed key. Must never panic; anything not sealed with that
//! key is refused.
#![no_main]

use disk_format::{MasterKey, RootExtension};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = MasterKey::from_bytes([7; 32]).keys();
    if let Ok(ext) = RootExtension::decode(data, &keys) {
        // Only the empty extension can be accepted without a valid seal.
        assert!(data.is_empty() || ext.vm_definition.is_some());
    }
});
