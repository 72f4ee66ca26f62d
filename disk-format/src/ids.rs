//! The 32-byte names of vault objects and blocks, and the key fingerprint.
//!
//! [`BlockId`] is a *keyed* hash of a block's plaintext (only a key holder can
//! compute one). [`PackId`], [`PageId`] and [`RootId`] are plain BLAKE3 hashes
//! of an object's bytes, so the vault can check and follow them without the
//! key. All print as lowercase hex.

use std::fmt;

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

/// `bytes` as lowercase hex, as every id in Lifeboat prints (disk
/// identities, namespaces, cut groups, object names).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `N` bytes `s` spells in hex (either case); `None` unless it is
/// exactly `2 N` hex digits.
pub fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let nibble = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nibble(s[2 * i])? << 4) | nibble(s[2 * i + 1])?;
    }
    Some(out)
}

macro_rules! byte_id {
    ($(#[$meta:meta])* $name:ident, $len:expr) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// The all-zero value.
            pub const ZERO: $name = $name([0; $len]);

            /// Whether every byte is zero.
            pub fn is_zero(&self) -> bool {
                self.0 == [0; $len]
            }

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Parses the lowercase (or uppercase) hex form that `Display` prints.
            pub fn from_hex(s: &str) -> Option<$name> {
                parse_hex::<$len>(s).map($name)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(f, &self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}(", stringify!($name))?;
                write_hex(f, &self.0)?;
                write!(f, ")")
            }
        }
    };
}

macro_rules! content_id {
    ($name:ident, $what:literal) => {
        impl $name {
            #[doc = concat!("BLAKE3 (unkeyed) of ", $what, "'s bytes.")]
            pub fn of(bytes: &[u8]) -> $name {
                $name(*blake3::hash(bytes).as_bytes())
            }

            /// Whether `bytes` hash to this id (a constant-time comparison).
            pub fn matches(&self, bytes: &[u8]) -> bool {
                blake3::hash(bytes) == blake3::Hash::from(self.0)
            }
        }
    };
}

byte_id!(
    /// A block's name: BLAKE3 keyed with the block-id subkey over the block's
    /// plaintext. Equal blocks have equal ids (dedup); without the key the id
    /// says nothing about the content. The all-zero id means "a zero block"
    /// (unwritten, trimmed or all zeros) and is never stored.
    BlockId,
    32
);
byte_id!(
    /// A pack's name: BLAKE3 of the whole pack file.
    PackId,
    32
);
byte_id!(
    /// A map page's name: BLAKE3 of the encoded page. The all-zero id stands
    /// for a page whose every entry is a zero block, which is never stored.
    PageId,
    32
);
byte_id!(
    /// A recovery point's name: BLAKE3 of the encoded root, MAC included.
    RootId,
    32
);
byte_id!(
    /// Identifies a master key without revealing it: the first 16 bytes of
    /// `blake3::derive_key("lifeboat v1 key fingerprint", master)`.
    KeyFingerprint,
    16
);
byte_id!(
    /// Random identity of a vault, fixed at `vault init`.
    VaultId,
    16
);

content_id!(PackId, "a pack");
content_id!(PageId, "an encoded map page");
content_id!(RootId, "an encoded point root");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_junk() {
        let id = PackId::of(b"x");
        let s = id.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(PackId::from_hex(&s), Some(id));
        assert_eq!(PackId::from_hex(&s.to_uppercase()), Some(id));
        assert_eq!(PackId::from_hex(&s[..62]), None);
        assert_eq!(PackId::from_hex(&format!("{}zz", &s[..62])), None);
        assert!(id.matches(b"x") && !id.matches(b"y"));
        assert_eq!(format!("{:?}", KeyFingerprint([0xab; 16])), format!("KeyFingerprint({})", "ab".repeat(16)));
        assert!(BlockId::ZERO.is_zero() && !BlockId([1; 32]).is_zero());
    }
}
