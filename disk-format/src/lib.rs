//! Every byte layout Lifeboat persists, and nothing else.
//!
//! This crate owns the on-disk formats: the per-disk **state file**
//! ([`state`]), the customer **key file** ([`key_file`]) and the subkeys and
//! block sealing derived from it ([`keys`]), and the vault's objects: **packs**
//! of encrypted blocks ([`pack`]), **map pages** ([`map_page`]), recovery-point
//! **roots** ([`point`]) with their sealed extension ([`root_ext`]: the VM
//! definition) and the **vault config** ([`vault_config`]). It
//! parses, serializes, hashes and seals; it never opens a file, maps memory or
//! touches a socket. Every format starts with a magic derived from a versioned
//! string, carries a format version independent of the crate version, and a
//! checksum; `FORMAT.md` beside this file specifies every field, and the tests
//! hold golden vectors and corrupt fixtures.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod codec;
pub mod geometry;
pub mod ids;
pub mod key_file;
pub mod keys;
pub mod map_page;
pub mod pack;
pub mod page_pack;
pub mod point;
pub mod root_ext;
pub mod state;
pub mod time;
pub mod vault_config;

pub use geometry::{blocks_touched, Geometry, GeometryError, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};
pub use ids::{BlockId, KeyFingerprint, PackId, PageId, RootId, VaultId};
pub use key_file::{KdfParams, KeyFile, KeyFileDamage, KeyFileError, KEY_FILE_LEN};
pub use keys::{Cipher, CryptoError, Keys, MasterKey, SealFrame, NONCE_LEN, SEAL_OVERHEAD, TAG_LEN};
pub use map_page::{BuiltMap, MapBuilder, MapPage, PageError, PAGE_ENTRIES};
pub use pack::{FinishedPack, Pack, PackEntry, PackError, PackIndex, PackTrailer, PackWriteError, PackWriter};
pub use page_pack::{PagePack, PagePackEntry, PagePackError, MAX_PACK_PAGES};
pub use point::{namespace_hex, Consistency, Root, RootError, NO_PAGE_PACK};
pub use root_ext::{AuditHead, CutGroup, ExtError, RootExtension};
pub use state::{HeaderError, LastPoint, StateFlags, StateHeader, HEADER_PAGE, SLOT_SIZE, STATE_MAGIC};
pub use vault_config::{VaultConfig, VaultConfigError};
