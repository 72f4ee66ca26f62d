//! Root extension parsing: arbitrary bytes as a point root's extension,
//! opened with a fixed key. Must never panic; a VM definition not sealed with
//! that key is refused, and every accepted extension without one (cut group,
//! audit head, block cipher: authenticated by the root's MAC, not sealed) has
//! exactly one encoding: it encodes back to the same bytes, and the keyless
//! reader of the block cipher agrees with the decoder.
#![no_main]

use disk_format::{MasterKey, RootExtension};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = MasterKey::from_bytes([7; 32]).keys();
    if let Ok(ext) = RootExtension::decode(data, &keys) {
        assert!(ext.vm_definition.is_none(), "opened a VM definition the fuzzer sealed");
        assert_eq!(ext.encode(&keys).expect("encode"), data, "a second encoding of {ext:?}");
        assert_eq!(disk_format::root_ext::block_cipher_unauthenticated(data), ext.block_cipher);
    }
});
