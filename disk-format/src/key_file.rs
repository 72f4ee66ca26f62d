//! The key file: one master key in 256 bytes, stored plain or wrapped under a
//! passphrase (Argon2id, then XChaCha20-Poly1305). See FORMAT.md, "Key file".
//!
//! [`KeyFile::parse`] checks the structure without any key derivation, so the
//! caller can read the fingerprint (and compare it with the vault's) before it
//! asks for a passphrase; [`KeyFile::unlock`] then derives and unwraps.

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use zeroize::{Zeroize, Zeroizing};

use crate::codec::{first_nonzero, get_array, get_u16, get_u32, put_u16, put_u32};
use crate::ids::KeyFingerprint;
use crate::keys::{random_bytes, CryptoError, MasterKey, KEY_LEN, NONCE_LEN, TAG_LEN};

/// Size of a key file: exactly this many bytes.
pub const KEY_FILE_LEN: usize = 256;
/// First 8 bytes of BLAKE3("lifeboat key file v1").
pub const KEY_FILE_MAGIC: [u8; 8] = [0x21, 0xa7, 0x8e, 0x95, 0x21, 0x88, 0xda, 0x0c];
/// The key file format this code writes.
pub const KEY_FILE_VERSION: u16 = 1;
/// Length of the Argon2id salt.
pub const SALT_LEN: usize = 16;

/// Kind byte: the master key is stored as is (protect the file: mode 0600).
const KIND_PLAIN: u8 = 1;
/// Kind byte: the master key is wrapped under a passphrase.
const KIND_PASSPHRASE: u8 = 2;

// Field offsets (FORMAT.md, "Key file").
const AT_VERSION: usize = 8;
const AT_KIND: usize = 10;
const AT_M_COST: usize = 12;
const AT_T_COST: usize = 16;
const AT_P_COST: usize = 20;
const AT_SALT: usize = 32;
/// The header, bytes 0..48: authenticated as the AAD of the wrapped key.
const HEADER_END: usize = 48;
const AT_NONCE: usize = 48;
const AT_KEY: usize = AT_NONCE + NONCE_LEN; // 72
const AT_TAG: usize = AT_KEY + KEY_LEN; // 104
const AT_FINGERPRINT: usize = AT_TAG + TAG_LEN; // 120
const RESERVED_END: usize = KEY_FILE_LEN - 32; // 224
const AT_CHECKSUM: usize = RESERVED_END;
const _: () = assert!(AT_FINGERPRINT + 16 <= RESERVED_END && AT_SALT + SALT_LEN == HEADER_END);

/// Argon2id cost parameters of a passphrase-wrapped key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory, KiB.
    pub m_cost_kib: u32,
    /// Passes over the memory.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl KdfParams {
    /// Defaults for an interactive unlock: 64 MiB, 3 passes, 1 lane (about a
    /// quarter of a second on one core of this project's machines).
    pub const DEFAULT: KdfParams = KdfParams { m_cost_kib: 64 * 1024, t_cost: 3, p_cost: 1 };
    /// The most memory a reader will spend on a key file: 4 GiB. A file asking
    /// for more is refused as damaged rather than allowed to exhaust memory.
    pub const MAX_M_COST_KIB: u32 = 4 * 1024 * 1024;
    /// The most passes a reader accepts.
    pub const MAX_T_COST: u32 = 64;
    /// The most lanes a reader accepts.
    pub const MAX_P_COST: u32 = 64;

    fn check(self) -> Result<argon2::Params, KeyFileError> {
        let bad = |field: &'static str, value: u32, why: &str| {
            Err(KeyFileError::Damaged(KeyFileDamage::BadField { field, value: u64::from(value), why: why.to_string() }))
        };
        if self.p_cost == 0 || self.p_cost > Self::MAX_P_COST {
            return bad("kdf_p_cost", self.p_cost, "must be 1 ..= 64");
        }
        if self.t_cost == 0 || self.t_cost > Self::MAX_T_COST {
            return bad("kdf_t_cost", self.t_cost, "must be 1 ..= 64");
        }
        if self.m_cost_kib < 8 * self.p_cost || self.m_cost_kib > Self::MAX_M_COST_KIB {
            return bad("kdf_m_cost", self.m_cost_kib, "must be 8 * p_cost ..= 4194304 KiB");
        }
        argon2::Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(KEY_LEN))
            .map_err(|e| KeyFileError::Kdf(e.to_string()))
    }
}

/// How a key file is damaged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileDamage {
    /// Not 256 bytes.
    #[error("it is {0} bytes long; a key file is exactly 256 bytes (truncated or not a key file)")]
    WrongLength(usize),
    /// The first 8 bytes are not the key file magic.
    #[error("not a Lifeboat key file (wrong magic)")]
    BadMagic,
    /// The checksum does not match the contents.
    #[error("checksum mismatch")]
    ChecksumMismatch,
    /// A field holds a value no writer produces.
    #[error("field {field} = {value} is invalid: {why}")]
    BadField {
        /// Field name as in FORMAT.md.
        field: &'static str,
        /// The value found.
        value: u64,
        /// What it should have been.
        why: String,
    },
}

/// Why a key file could not be written or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The bytes are not an intact key file.
    #[error("the key file is damaged: {0}; use your backup copy of the key file")]
    Damaged(KeyFileDamage),
    /// Written by a newer Lifeboat.
    #[error("key file format version {0} is not supported by this build (it knows version 1); use a newer lifeboat")]
    UnsupportedVersion(u16),
    /// The key is wrapped and no passphrase was given.
    #[error("the key file is protected by a passphrase; give the passphrase to unlock it")]
    NeedsPassphrase,
    /// The passphrase does not unwrap the key.
    #[error("wrong passphrase for this key file")]
    WrongPassphrase,
    /// The key read does not match the fingerprint recorded beside it.
    #[error(
        "the key file records fingerprint {stored} but its key has fingerprint {derived}: the file was edited or \
         damaged; use your backup copy of the key file"
    )]
    FingerprintMismatch {
        /// The fingerprint in the file.
        stored: KeyFingerprint,
        /// The fingerprint of the key read.
        derived: KeyFingerprint,
    },
    /// Argon2 refused to run (parameters an encoder was given, or no memory).
    #[error("passphrase key derivation failed: {0}")]
    Kdf(String),
    /// No random bytes for a salt or nonce.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

fn damaged(d: KeyFileDamage) -> KeyFileError {
    KeyFileError::Damaged(d)
}

/// A structurally valid key file, not yet unlocked.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyFile {
    fingerprint: KeyFingerprint,
    wrap: Option<Wrap>,
    /// The plain key, or the wrapped key's ciphertext.
    key_field: Zeroizing<[u8; KEY_LEN]>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Wrap {
    params: KdfParams,
    salt: [u8; SALT_LEN],
    nonce: [u8; NONCE_LEN],
    tag: [u8; TAG_LEN],
    header: [u8; HEADER_END],
}

impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFile")
            .field("fingerprint", &self.fingerprint)
            .field("kdf", &self.wrap.map(|w| w.params))
            .finish_non_exhaustive()
    }
}

/// Derives the key-encryption key from a passphrase.
fn kek(params: KdfParams, passphrase: &[u8], salt: &[u8; SALT_LEN]) -> Result<XChaCha20Poly1305, KeyFileError> {
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params.check()?);
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    argon.hash_password_into(passphrase, salt, &mut *out).map_err(|e| KeyFileError::Kdf(e.to_string()))?;
    Ok(XChaCha20Poly1305::new(&(*out).into()))
}

impl KeyFile {
    /// Encodes `master` as a key file: plain when `passphrase` is `None`,
    /// else wrapped with [`KdfParams::DEFAULT`], a fresh salt and nonce.
    pub fn encode(
        master: &MasterKey,
        passphrase: Option<&[u8]>,
    ) -> Result<Zeroizing<[u8; KEY_FILE_LEN]>, KeyFileError> {
        KeyFile::encode_with_params(master, passphrase.map(|p| (p, KdfParams::DEFAULT)))
    }

    /// [`KeyFile::encode`] with explicit Argon2id costs for a wrapped key.
    pub fn encode_with_params(
        master: &MasterKey,
        wrap: Option<(&[u8], KdfParams)>,
    ) -> Result<Zeroizing<[u8; KEY_FILE_LEN]>, KeyFileError> {
        let mut salt = [0u8; SALT_LEN];
        let mut nonce = [0u8; NONCE_LEN];
        if wrap.is_some() {
            random_bytes(&mut salt)?;
            random_bytes(&mut nonce)?;
        }
        KeyFile::encode_inner(master, wrap, salt, nonce)
    }

    /// [`KeyFile::encode_with_params`] with a fixed salt and nonce. **Tests
    /// only** (golden vectors).
    #[doc(hidden)]
    pub fn encode_with_salt_and_nonce_for_tests(
        master: &MasterKey,
        wrap: Option<(&[u8], KdfParams)>,
        salt: [u8; SALT_LEN],
        nonce: [u8; NONCE_LEN],
    ) -> Result<Zeroizing<[u8; KEY_FILE_LEN]>, KeyFileError> {
        KeyFile::encode_inner(master, wrap, salt, nonce)
    }

    fn encode_inner(
        master: &MasterKey,
        wrap: Option<(&[u8], KdfParams)>,
        salt: [u8; SALT_LEN],
        nonce: [u8; NONCE_LEN],
    ) -> Result<Zeroizing<[u8; KEY_FILE_LEN]>, KeyFileError> {
        let mut b = Zeroizing::new([0u8; KEY_FILE_LEN]);
        b[..8].copy_from_slice(&KEY_FILE_MAGIC);
        put_u16(&mut *b, AT_VERSION, KEY_FILE_VERSION);
        b[AT_KEY..AT_TAG].copy_from_slice(master.secret());
        match wrap {
            None => b[AT_KIND] = KIND_PLAIN,
            Some((passphrase, params)) => {
                b[AT_KIND] = KIND_PASSPHRASE;
                put_u32(&mut *b, AT_M_COST, params.m_cost_kib);
                put_u32(&mut *b, AT_T_COST, params.t_cost);
                put_u32(&mut *b, AT_P_COST, params.p_cost);
                b[AT_SALT..HEADER_END].copy_from_slice(&salt);
                b[AT_NONCE..AT_KEY].copy_from_slice(&nonce);
                let aead = kek(params, passphrase, &salt)?;
                let (header, rest) = b.split_at_mut(HEADER_END);
                let key = &mut rest[AT_KEY - HEADER_END..AT_TAG - HEADER_END];
                let tag = aead
                    .encrypt_inout_detached(&XNonce::from(nonce), header, key.into())
                    .expect("a 32-byte message always seals");
                b[AT_TAG..AT_FINGERPRINT].copy_from_slice(&tag);
            }
        }
        b[AT_FINGERPRINT..AT_FINGERPRINT + 16].copy_from_slice(&master.fingerprint().0);
        let sum = blake3::hash(&b[..AT_CHECKSUM]);
        b[AT_CHECKSUM..].copy_from_slice(sum.as_bytes());
        Ok(b)
    }

    /// Checks everything that needs no passphrase: length, magic, version,
    /// checksum, kind, reserved bytes and KDF parameters.
    pub fn parse(bytes: &[u8]) -> Result<KeyFile, KeyFileError> {
        if bytes.len() != KEY_FILE_LEN {
            return Err(damaged(KeyFileDamage::WrongLength(bytes.len())));
        }
        if bytes[..8] != KEY_FILE_MAGIC {
            return Err(damaged(KeyFileDamage::BadMagic));
        }
        let version = get_u16(bytes, AT_VERSION);
        if version != KEY_FILE_VERSION {
            return Err(KeyFileError::UnsupportedVersion(version));
        }
        if blake3::hash(&bytes[..AT_CHECKSUM]) != blake3::Hash::from(get_array::<32>(bytes, AT_CHECKSUM)) {
            return Err(damaged(KeyFileDamage::ChecksumMismatch));
        }
        let reserved = |field: &'static str, range: std::ops::Range<usize>| match first_nonzero(bytes, range) {
            None => Ok(()),
            Some(at) => Err(damaged(KeyFileDamage::BadField {
                field,
                value: u64::from(bytes[at]),
                why: format!("byte {at} must be zero"),
            })),
        };
        reserved("reserved0", AT_KIND + 1..AT_M_COST)?;
        reserved("reserved1", AT_P_COST + 4..AT_SALT)?;
        reserved("reserved2", AT_FINGERPRINT + 16..AT_CHECKSUM)?;
        let fingerprint = KeyFingerprint(get_array(bytes, AT_FINGERPRINT));
        let key_field = Zeroizing::new(get_array::<KEY_LEN>(bytes, AT_KEY));
        let wrap = match bytes[AT_KIND] {
            KIND_PLAIN => {
                // A plain file has no KDF, salt, nonce or tag: all zero.
                reserved("kdf fields of a plain key file", AT_M_COST..AT_P_COST + 4)?;
                reserved("kdf_salt of a plain key file", AT_SALT..HEADER_END)?;
                reserved("nonce of a plain key file", AT_NONCE..AT_KEY)?;
                reserved("tag of a plain key file", AT_TAG..AT_FINGERPRINT)?;
                None
            }
            KIND_PASSPHRASE => {
                let params = KdfParams {
                    m_cost_kib: get_u32(bytes, AT_M_COST),
                    t_cost: get_u32(bytes, AT_T_COST),
                    p_cost: get_u32(bytes, AT_P_COST),
                };
                params.check()?;
                Some(Wrap {
                    params,
                    salt: get_array(bytes, AT_SALT),
                    nonce: get_array(bytes, AT_NONCE),
                    tag: get_array(bytes, AT_TAG),
                    header: get_array(bytes, 0),
                })
            }
            other => {
                return Err(damaged(KeyFileDamage::BadField {
                    field: "kind",
                    value: u64::from(other),
                    why: "must be 1 (plain) or 2 (passphrase)".to_string(),
                }))
            }
        };
        Ok(KeyFile { fingerprint, wrap, key_field })
    }

    /// The fingerprint recorded in the file (checked against the key itself
    /// by [`KeyFile::unlock`]).
    pub fn fingerprint(&self) -> KeyFingerprint {
        self.fingerprint
    }

    /// Whether [`KeyFile::unlock`] needs a passphrase.
    pub fn needs_passphrase(&self) -> bool {
        self.wrap.is_some()
    }

    /// The Argon2id costs of a wrapped key file.
    pub fn kdf_params(&self) -> Option<KdfParams> {
        self.wrap.map(|w| w.params)
    }

    /// The master key: as stored, or unwrapped with `passphrase` (ignored
    /// for a plain file). Checks it against the recorded fingerprint.
    pub fn unlock(&self, passphrase: Option<&[u8]>) -> Result<MasterKey, KeyFileError> {
        let mut key = self.key_field.clone();
        if let Some(w) = &self.wrap {
            let passphrase = passphrase.ok_or(KeyFileError::NeedsPassphrase)?;
            let aead = kek(w.params, passphrase, &w.salt)?;
            aead.decrypt_inout_detached(&XNonce::from(w.nonce), &w.header, (&mut key[..]).into(), &w.tag.into())
                .map_err(|_| KeyFileError::WrongPassphrase)?;
        }
        let master = MasterKey::from_bytes(*key);
        key.zeroize();
        let derived = master.fingerprint();
        if derived != self.fingerprint {
            return Err(KeyFileError::FingerprintMismatch { stored: self.fingerprint, derived });
        }
        Ok(master)
    }

    /// Parses and unlocks in one step. `passphrase` is called only for a
    /// wrapped file; returning `None` gives [`KeyFileError::NeedsPassphrase`].
    pub fn decode<P: AsRef<[u8]>>(
        bytes: &[u8],
        passphrase: impl FnOnce() -> Option<P>,
    ) -> Result<MasterKey, KeyFileError> {
        let file = KeyFile::parse(bytes)?;
        if file.needs_passphrase() {
            let p = passphrase().ok_or(KeyFileError::NeedsPassphrase)?;
            file.unlock(Some(p.as_ref()))
        } else {
            file.unlock(None)
        }
    }
}

/// Cheapest Argon2id costs a reader accepts: what the fuzz harness and the
/// tests use for wrapped files.
#[doc(hidden)]
pub const TEST_KDF: KdfParams = KdfParams { m_cost_kib: 8, t_cost: 1, p_cost: 1 };

/// Runs the key file parser on `data` the way the `key_file` fuzz target
/// does. Unlocks only files whose KDF costs are tiny (so the fuzzer is not
/// stalled by Argon2), with the passphrase `fuzz`. An accepted file must
/// re-encode to the same bytes. Returns whether the file unlocked. Panics
/// only on a real bug.
pub fn fuzz_key_file_bytes(data: &[u8]) -> bool {
    let Ok(file) = KeyFile::parse(data) else { return false };
    if let Some(p) = file.kdf_params() {
        if p.m_cost_kib > 64 || p.t_cost > 2 || p.p_cost > 1 {
            return false;
        }
    }
    let Ok(master) = file.unlock(Some(b"fuzz")) else { return false };
    let (wrap, salt, nonce) = match file.wrap {
        Some(w) => (Some((&b"fuzz"[..], w.params)), w.salt, w.nonce),
        None => (None, [0; SALT_LEN], [0; NONCE_LEN]),
    };
    let again = KeyFile::encode_inner(&master, wrap, salt, nonce).expect("accepted parameters encode");
    assert_eq!(&again[..], data, "key file round trip");
    true
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test sizes are small
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn master(seed: u8) -> MasterKey {
        MasterKey::from_bytes([seed; 32])
    }

    #[test]
    fn magic_is_derived_from_the_versioned_string() {
        assert_eq!(&blake3::hash(b"lifeboat key file v1").as_bytes()[..8], &KEY_FILE_MAGIC);
    }

    #[test]
    fn plain_round_trip() {
        let m = master(1);
        let f = KeyFile::encode(&m, None).unwrap();
        let parsed = KeyFile::parse(&*f).unwrap();
        assert!(!parsed.needs_passphrase());
        assert_eq!(parsed.fingerprint(), m.fingerprint());
        let back =
            KeyFile::decode(&*f, || -> Option<&[u8]> { panic!("no passphrase asked for a plain file") }).unwrap();
        assert_eq!(back.secret(), m.secret());
    }

    #[test]
    fn wrapped_round_trip_and_passphrase_errors() {
        let m = master(2);
        let f = KeyFile::encode_with_params(&m, Some((b"correct horse", TEST_KDF))).unwrap();
        assert_ne!(&f[AT_KEY..AT_TAG], m.secret(), "the key is not stored in the clear");
        let parsed = KeyFile::parse(&*f).unwrap();
        assert_eq!(parsed.kdf_params(), Some(TEST_KDF));
        assert_eq!(KeyFile::decode(&*f, || None::<&[u8]>).unwrap_err(), KeyFileError::NeedsPassphrase);
        assert_eq!(KeyFile::decode(&*f, || Some("wrong horse")).unwrap_err(), KeyFileError::WrongPassphrase);
        let back = KeyFile::decode(&*f, || Some(Zeroizing::new(b"correct horse".to_vec()))).unwrap();
        assert_eq!(back.secret(), m.secret());
        // Two encodings of one key differ (fresh salt and nonce).
        let g = KeyFile::encode_with_params(&m, Some((b"correct horse", TEST_KDF))).unwrap();
        assert_ne!(&f[..], &g[..]);
    }

    #[test]
    fn default_params_are_accepted_by_argon2() {
        KdfParams::DEFAULT.check().unwrap();
        assert!(KdfParams { m_cost_kib: KdfParams::MAX_M_COST_KIB + 1, ..KdfParams::DEFAULT }.check().is_err());
    }

    fn rechecksum(b: &mut [u8]) {
        let sum = blake3::hash(&b[..AT_CHECKSUM]);
        b[AT_CHECKSUM..].copy_from_slice(sum.as_bytes());
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        for wrap in [None, Some((&b"pw"[..], TEST_KDF))] {
            let f = KeyFile::encode_with_params(&master(3), wrap).unwrap();
            for byte in 0..KEY_FILE_LEN {
                for bit in 0..8 {
                    let mut c = *f;
                    c[byte] ^= 1 << bit;
                    assert!(KeyFile::decode(&c, || Some("pw")).is_err(), "flip of byte {byte} bit {bit} accepted");
                }
            }
        }
    }

    #[test]
    fn damage_is_named() {
        let f = KeyFile::encode(&master(4), None).unwrap();
        let none = || None::<&[u8]>;
        assert_eq!(KeyFile::decode(&f[..100], none).unwrap_err(), damaged(KeyFileDamage::WrongLength(100)));
        let mut c = *f;
        c[0] ^= 1;
        assert_eq!(KeyFile::decode(&c, none).unwrap_err(), damaged(KeyFileDamage::BadMagic));
        let mut c = *f;
        c[AT_VERSION] = 2;
        assert_eq!(KeyFile::decode(&c, none).unwrap_err(), KeyFileError::UnsupportedVersion(2));
        let mut c = *f;
        c[AT_KEY] ^= 1;
        assert_eq!(KeyFile::decode(&c, none).unwrap_err(), damaged(KeyFileDamage::ChecksumMismatch));
        // Edited with a recomputed checksum: the fingerprint catches a changed key...
        rechecksum(&mut c);
        assert!(matches!(KeyFile::decode(&c, none), Err(KeyFileError::FingerprintMismatch { .. })));
        // ...and field checks catch the rest.
        let mut c = *f;
        c[AT_KIND] = 3;
        rechecksum(&mut c);
        assert!(matches!(
            KeyFile::decode(&c, none),
            Err(KeyFileError::Damaged(KeyFileDamage::BadField { field: "kind", .. }))
        ));
        let mut c = *f;
        c[AT_SALT] = 1;
        rechecksum(&mut c);
        assert!(matches!(KeyFile::decode(&c, none), Err(KeyFileError::Damaged(KeyFileDamage::BadField { .. }))));
        // A wrapped file asking for 5 GiB of memory is refused before Argon2 runs.
        let mut w = *KeyFile::encode_with_params(&master(4), Some((b"pw", TEST_KDF))).unwrap();
        put_u32(&mut w, AT_M_COST, 5 * 1024 * 1024);
        rechecksum(&mut w);
        assert!(matches!(
            KeyFile::parse(&w),
            Err(KeyFileError::Damaged(KeyFileDamage::BadField { field: "kdf_m_cost", .. }))
        ));
    }

    #[test]
    fn fuzz_harness_on_pseudo_random_input() {
        let mut rng = crate::codec::XorShift(0x9e37_79b9_7f4a_7c15);
        let plain = KeyFile::encode(&master(5), None).unwrap();
        let wrapped = KeyFile::encode_with_params(&master(5), Some((b"fuzz", TEST_KDF))).unwrap();
        assert!(fuzz_key_file_bytes(&*plain) && fuzz_key_file_bytes(&*wrapped));
        let (mut accepted, mut intact) = (0, 0);
        for i in 0..3000 {
            let data = match i % 3 {
                0 => rng.some_bytes(300),
                1 => rng.mutate(&*plain),
                _ => rng.mutate(&*wrapped),
            };
            intact += usize::from(data[..] == plain[..] || data[..] == wrapped[..]);
            accepted += usize::from(fuzz_key_file_bytes(&data));
        }
        // Only the mutations that happened to leave a file intact unlock.
        assert_eq!(accepted, intact);
    }

    proptest! {
        #[test]
        fn round_trip_any_key(key in any::<[u8; 32]>(), wrapped in any::<bool>()) {
            let m = MasterKey::from_bytes(key);
            let wrap = wrapped.then_some((&b"pp"[..], TEST_KDF));
            let f = KeyFile::encode_with_params(&m, wrap).unwrap();
            let back = KeyFile::decode(&*f, || Some("pp")).unwrap();
            prop_assert_eq!(back.secret(), m.secret());
        }
    }
}
