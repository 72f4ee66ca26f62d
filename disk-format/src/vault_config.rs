//! The vault config object: which vault this is, which key its data is
//! sealed with (by fingerprint only: the vault never stores the key) and
//! with which cipher. See FORMAT.md, "Vault config".

use crate::codec::{first_nonzero, get_array, get_u16, get_u64, put_u16, put_u64};
use crate::ids::{KeyFingerprint, VaultId};
use crate::keys::{Cipher, Keys};

/// Size of the vault config object.
pub const VAULT_CONFIG_LEN: usize = 128;
/// First 8 bytes of BLAKE3("lifeboat vault config v1").
pub const VAULT_CONFIG_MAGIC: [u8; 8] = [0xa8, 0x79, 0xd9, 0xad, 0x3e, 0x6e, 0xc4, 0xf3];
/// The newest vault config format this code writes: version 2, for a vault
/// whose cipher is not XChaCha20-Poly1305. An XChaCha20-Poly1305 vault's
/// config is written as version 1, which every earlier build reads.
pub const VAULT_CONFIG_VERSION: u16 = 2;

const AT_VERSION: usize = 8;
/// Version 2: the cipher's code; reserved in version 1.
const AT_CIPHER: usize = 10;
const AT_VAULT_ID: usize = 16;
const AT_CREATED: usize = 32;
const AT_FINGERPRINT: usize = 40;
const AT_CHECKSUM: usize = VAULT_CONFIG_LEN - 32;
const _: () = assert!(AT_FINGERPRINT + 16 <= AT_CHECKSUM && AT_CHECKSUM == 96);

/// Why a vault config was refused, or a key does not fit the vault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VaultConfigError {
    /// Not 128 bytes.
    #[error("the vault config is {0} bytes, not 128 (truncated or not a vault config); restore it from a copy")]
    WrongLength(usize),
    /// Wrong magic.
    #[error("not a Lifeboat vault config (wrong magic): is this directory a vault?")]
    BadMagic,
    /// A version this build does not know.
    #[error(
        "vault config format version {0} is not supported by this build (it knows versions 1 and 2); use a newer \
         lifeboat"
    )]
    UnsupportedVersion(u16),
    /// The checksum does not match.
    #[error("the vault config is damaged (checksum mismatch); restore it from a copy")]
    ChecksumMismatch,
    /// A reserved byte is not zero.
    #[error("byte {offset} of the vault config (reserved) is {value:#04x}, not zero")]
    Reserved {
        /// Byte offset.
        offset: usize,
        /// The byte found.
        value: u8,
    },
    /// A version 2 config names a cipher this build does not know.
    #[error(
        "the vault config names cipher {0}, which this build does not know (1 and 2 are known); use a newer lifeboat"
    )]
    UnknownCipher(u8),
    /// The key given is not the vault's key.
    #[error(
        "this vault was created with another key: the vault's key fingerprint is {vault}, the key given has \
         fingerprint {given}; use the key file the vault was created with"
    )]
    WrongKey {
        /// The fingerprint recorded in the vault.
        vault: KeyFingerprint,
        /// The fingerprint of the key given.
        given: KeyFingerprint,
    },
}

/// The vault config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VaultConfig {
    /// Random identity of the vault, fixed at creation.
    pub vault_id: VaultId,
    /// When the vault was created, seconds since the Unix epoch.
    pub created_unix: u64,
    /// Fingerprint of the key every object in the vault is sealed with.
    pub key_fingerprint: KeyFingerprint,
    /// The cipher every block stored in the vault is sealed with.
    pub cipher: Cipher,
}

impl VaultConfig {
    /// Serializes, checksum included.
    pub fn encode(&self) -> [u8; VAULT_CONFIG_LEN] {
        let mut b = [0u8; VAULT_CONFIG_LEN];
        b[..8].copy_from_slice(&VAULT_CONFIG_MAGIC);
        if self.cipher == Cipher::XChaCha20Poly1305 {
            put_u16(&mut b, AT_VERSION, 1);
        } else {
            put_u16(&mut b, AT_VERSION, 2);
            b[AT_CIPHER] = self.cipher.code();
        }
        b[AT_VAULT_ID..AT_VAULT_ID + 16].copy_from_slice(&self.vault_id.0);
        put_u64(&mut b, AT_CREATED, self.created_unix);
        b[AT_FINGERPRINT..AT_FINGERPRINT + 16].copy_from_slice(&self.key_fingerprint.0);
        let sum = blake3::hash(&b[..AT_CHECKSUM]);
        b[AT_CHECKSUM..].copy_from_slice(sum.as_bytes());
        b
    }

    /// Parses and checks: length, magic, version, checksum, reserved bytes.
    pub fn decode(b: &[u8]) -> Result<VaultConfig, VaultConfigError> {
        if b.len() != VAULT_CONFIG_LEN {
            return Err(VaultConfigError::WrongLength(b.len()));
        }
        if b[..8] != VAULT_CONFIG_MAGIC {
            return Err(VaultConfigError::BadMagic);
        }
        let version = get_u16(b, AT_VERSION);
        if version != 1 && version != 2 {
            return Err(VaultConfigError::UnsupportedVersion(version));
        }
        if blake3::hash(&b[..AT_CHECKSUM]) != blake3::Hash::from(get_array::<32>(b, AT_CHECKSUM)) {
            return Err(VaultConfigError::ChecksumMismatch);
        }
        // Version 1 is XChaCha20-Poly1305 and reserves byte 10; version 2
        // names any other cipher there (one encoding per config).
        let (cipher, reserved_from) = if version == 1 {
            (Cipher::XChaCha20Poly1305, AT_CIPHER)
        } else {
            match Cipher::from_code(b[AT_CIPHER]) {
                Some(c) if c != Cipher::XChaCha20Poly1305 => (c, AT_CIPHER + 1),
                _ => return Err(VaultConfigError::UnknownCipher(b[AT_CIPHER])),
            }
        };
        for range in [reserved_from..AT_VAULT_ID, AT_FINGERPRINT + 16..AT_CHECKSUM] {
            if let Some(at) = first_nonzero(b, range) {
                return Err(VaultConfigError::Reserved { offset: at, value: b[at] });
            }
        }
        Ok(VaultConfig {
            vault_id: VaultId(get_array(b, AT_VAULT_ID)),
            created_unix: get_u64(b, AT_CREATED),
            key_fingerprint: KeyFingerprint(get_array(b, AT_FINGERPRINT)),
            cipher,
        })
    }

    /// Refuses a key that is not the one this vault was created with.
    pub fn check_key(&self, keys: &Keys) -> Result<(), VaultConfigError> {
        if keys.fingerprint() != self.key_fingerprint {
            return Err(VaultConfigError::WrongKey { vault: self.key_fingerprint, given: keys.fingerprint() });
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test sizes are small
mod tests {
    use super::*;
    use crate::keys::MasterKey;

    fn sample() -> VaultConfig {
        let key = MasterKey::from_bytes([1; 32]);
        VaultConfig {
            vault_id: VaultId(*b"vault-identity-1"),
            created_unix: 1_790_000_000,
            key_fingerprint: key.fingerprint(),
            cipher: Cipher::XChaCha20Poly1305,
        }
    }

    #[test]
    fn magic_is_derived_from_the_versioned_string() {
        assert_eq!(&blake3::hash(b"lifeboat vault config v1").as_bytes()[..8], &VAULT_CONFIG_MAGIC);
    }

    #[test]
    fn round_trip_and_key_check() {
        let c = sample();
        assert_eq!(VaultConfig::decode(&c.encode()).unwrap(), c);
        c.check_key(&MasterKey::from_bytes([1; 32]).keys()).unwrap();
        let other = MasterKey::from_bytes([2; 32]).keys();
        let err = c.check_key(&other).unwrap_err();
        assert_eq!(err, VaultConfigError::WrongKey { vault: c.key_fingerprint, given: other.fingerprint() });
        let msg = err.to_string();
        assert!(msg.contains("this vault was created with another key"), "{msg}");
        assert!(msg.contains(&c.key_fingerprint.to_string()) && msg.contains(&other.fingerprint().to_string()));
    }

    #[test]
    fn the_cipher_round_trips_and_xchacha_keeps_version_1() {
        let x = sample();
        let b = x.encode();
        assert_eq!(get_u16(&b, AT_VERSION), 1, "an XChaCha20-Poly1305 config is what earlier builds wrote");
        assert_eq!(b[AT_CIPHER], 0);
        let a = VaultConfig { cipher: Cipher::Aes256Gcm, ..x };
        let b = a.encode();
        assert_eq!((get_u16(&b, AT_VERSION), b[AT_CIPHER]), (2, 2));
        assert_eq!(VaultConfig::decode(&b).unwrap(), a);
        // Version 2 naming XChaCha (a second encoding) or no known cipher.
        for code in [0u8, 1, 3, 0xff] {
            let mut c = b;
            c[AT_CIPHER] = code;
            let sum = blake3::hash(&c[..AT_CHECKSUM]);
            c[AT_CHECKSUM..].copy_from_slice(sum.as_bytes());
            assert_eq!(VaultConfig::decode(&c), Err(VaultConfigError::UnknownCipher(code)));
        }
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        for cipher in Cipher::ALL {
            let b = VaultConfig { cipher, ..sample() }.encode();
            for byte in 0..VAULT_CONFIG_LEN {
                for bit in 0..8 {
                    let mut c = b;
                    c[byte] ^= 1 << bit;
                    assert!(VaultConfig::decode(&c).is_err(), "{cipher}: flip of byte {byte} bit {bit} accepted");
                }
            }
        }
    }

    #[test]
    fn damage_is_named() {
        let b = sample().encode();
        assert_eq!(VaultConfig::decode(&b[..127]), Err(VaultConfigError::WrongLength(127)));
        let mut c = b;
        c[3] ^= 1;
        assert_eq!(VaultConfig::decode(&c), Err(VaultConfigError::BadMagic));
        let mut c = b;
        c[AT_VERSION] = 3;
        assert_eq!(VaultConfig::decode(&c), Err(VaultConfigError::UnsupportedVersion(3)));
        let mut c = b;
        c[AT_CREATED] ^= 1;
        assert_eq!(VaultConfig::decode(&c), Err(VaultConfigError::ChecksumMismatch));
        let mut c = b;
        c[60] = 5;
        let sum = blake3::hash(&c[..AT_CHECKSUM]);
        c[AT_CHECKSUM..].copy_from_slice(sum.as_bytes());
        assert_eq!(VaultConfig::decode(&c), Err(VaultConfigError::Reserved { offset: 60, value: 5 }));
    }
}
