//! The customer key: the 32-byte master key, the subkeys derived from it, and
//! block sealing (keyed block ids, and XChaCha20-Poly1305 or AES-256-GCM: a
//! vault's [`Cipher`]).
//!
//! Every subkey is `blake3::derive_key(context, master)` with a context string
//! that names its one use, so no key is ever used for two purposes:
//!
//! | subkey            | context                          | used for |
//! |-------------------|----------------------------------|----------|
//! | block id          | `lifeboat v1 block id`           | BLAKE3 keyed hash of a block's plaintext: its [`BlockId`] |
//! | block encryption  | `lifeboat v1 block encryption`   | XChaCha20-Poly1305 of block contents, AAD = block id |
//! | AES block keys    | `lifeboat v1 block encryption aes-256-gcm` | BLAKE3 key deriving each blob's AES-256-GCM key from its nonce |
//! | root MAC          | `lifeboat v1 point root mac`     | BLAKE3 keyed hash authenticating a point root |
//! | audit MAC         | `lifeboat v1 audit mac`          | the audit log's hash chain |
//! | audit sealing     | `lifeboat v1 audit seal`         | XChaCha20-Poly1305 of an audit record's body, AAD = its header |
//! | audit nonce       | `lifeboat v1 audit nonce`        | BLAKE3 keyed hash of header and body: the body's synthetic nonce |
//! | (fingerprint)     | `lifeboat v1 key fingerprint`    | first 16 bytes identify the key; not a key |
//!
//! A sealed block ("blob") is `nonce (24) ‖ ciphertext ‖ tag (16)` in both
//! ciphers. Nonces are 192 random bits from the operating system for every
//! seal (FORMAT.md argues why they never repeat under one key). AES-256-GCM
//! takes only 96-bit nonces, so an AES blob's 192-bit nonce instead picks its
//! own key: BLAKE3 keyed with the AES subkey over the nonce, used for that one
//! blob with the all-zero GCM nonce. No two blobs share a key unless two
//! 192-bit random nonces collide, the same bound as XChaCha20's. Opening a blob checks the tag *and*
//! that the plaintext's keyed hash is the block id, so a swapped, moved or
//! forged blob is refused, never returned.
//!
//! Speed: chacha20poly1305 0.11 picks its AVX2 code at run time. Built with
//! `RUSTFLAGS="--cfg chacha20_avx512"` it also carries the AVX-512 code (still
//! chosen at run time), which the replicate issue measured at ~2.4 GB/s per
//! core against ~1.6 GB/s; the workspace does not set that flag yet.
//!
//! The key file that stores a master key is in [`crate::key_file`].

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use zeroize::Zeroize;

use crate::ids::{BlockId, KeyFingerprint};

/// Length of a master key.
pub const KEY_LEN: usize = 32;
/// Length of a block nonce (XChaCha20: 192 bits).
pub const NONCE_LEN: usize = 24;
/// Length of a Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed blob adds to its plaintext: the nonce before it, the tag after.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// Subkey derivation contexts, exactly as FORMAT.md lists them.
pub const CONTEXT_BLOCK_ID: &str = "lifeboat v1 block id";
/// Context of the block encryption subkey.
pub const CONTEXT_BLOCK_ENCRYPTION: &str = "lifeboat v1 block encryption";
/// Context of the subkey from which each AES-256-GCM blob's key is derived.
pub const CONTEXT_BLOCK_ENCRYPTION_AES: &str = "lifeboat v1 block encryption aes-256-gcm";
/// Context of the point root MAC subkey.
pub const CONTEXT_ROOT_MAC: &str = "lifeboat v1 point root mac";
/// Context of the audit log MAC subkey.
pub const CONTEXT_AUDIT_MAC: &str = "lifeboat v1 audit mac";
/// Context of the audit body sealing subkey.
pub const CONTEXT_AUDIT_SEAL: &str = "lifeboat v1 audit seal";
/// Context of the audit body nonce subkey.
pub const CONTEXT_AUDIT_NONCE: &str = "lifeboat v1 audit nonce";
/// Context of the disk namespace key: a disk's roots live under a keyed id
/// of its identity, so the vault learns neither its name nor its identity.
pub const CONTEXT_DISK_NAMESPACE: &str = "lifeboat v1 disk namespace";
/// Context of the point root metadata sealing subkey (root format 2).
pub const CONTEXT_ROOT_METADATA: &str = "lifeboat v1 root metadata";
/// Context of the point root metadata nonce subkey (root format 2).
pub const CONTEXT_ROOT_METADATA_NONCE: &str = "lifeboat v1 root metadata nonce";
/// Context of the key fingerprint.
pub const CONTEXT_FINGERPRINT: &str = "lifeboat v1 key fingerprint";

/// Why a block could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The blob cannot even hold a nonce and a tag.
    #[error("block {id}: the sealed blob is {len} bytes, shorter than its 40 bytes of nonce and tag (truncated)")]
    BlobTooShort {
        /// The block the blob was read for.
        id: BlockId,
        /// Its length.
        len: usize,
    },
    /// The tag does not verify: the blob was altered, belongs to another
    /// block, or was sealed under another key.
    #[error(
        "block {id}: authentication failed: the blob was altered, belongs to another block, or was sealed with \
         another key"
    )]
    Inauthentic {
        /// The block the blob was read for.
        id: BlockId,
    },
    /// The tag verified but the plaintext does not hash to the id: a blob
    /// sealed by a key holder under the wrong id.
    #[error("block {id}: the decrypted data does not hash to its block id (a forged or mislabelled block)")]
    IdMismatch {
        /// The block the blob was read for.
        id: BlockId,
    },
    /// The caller's buffer has no room for the nonce and tag.
    #[error("a buffer of {have} bytes cannot hold the {need}-byte sealed blob")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        have: usize,
    },
    /// The operating system's random source failed (no nonce, no key).
    #[error("the operating system's random source failed: {0}")]
    Random(String),
}

/// Fills `buf` from the operating system's random source.
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::fill(buf).map_err(|e| CryptoError::Random(e.to_string()))
}

/// The AEAD that seals a vault's blocks, chosen once per vault at `vault
/// init` and recorded in its config (and in each pack it seals, from
/// pack version 3). Every build reads both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cipher {
    /// XChaCha20-Poly1305: fast in software, the suite of every vault made
    /// before AES-256-GCM existed (code 1).
    XChaCha20Poly1305,
    /// AES-256-GCM with a key per blob derived from its 192-bit nonce: about
    /// six times faster on a CPU with AES and carry-less multiply
    /// instructions (code 2).
    Aes256Gcm,
}

impl Cipher {
    /// Both ciphers, in code order.
    pub const ALL: [Cipher; 2] = [Cipher::XChaCha20Poly1305, Cipher::Aes256Gcm];

    /// The name `vault init --cipher` takes and reports print.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::XChaCha20Poly1305 => "xchacha20-poly1305",
            Cipher::Aes256Gcm => "aes-256-gcm",
        }
    }

    /// The cipher named `name` (as [`Cipher::name`] prints it).
    pub fn from_name(name: &str) -> Option<Cipher> {
        Cipher::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The byte that records the cipher in a vault config and a pack.
    pub fn code(self) -> u8 {
        match self {
            Cipher::XChaCha20Poly1305 => 1,
            Cipher::Aes256Gcm => 2,
        }
    }

    /// The cipher recorded as `code`, if there is one.
    pub fn from_code(code: u8) -> Option<Cipher> {
        Cipher::ALL.into_iter().find(|c| c.code() == code)
    }

    /// Whether this CPU has the instructions that make AES-256-GCM fast
    /// (x86-64: AES-NI and PCLMULQDQ; AArch64: AES and PMULL). Without them
    /// AES runs in constant-time software several times slower than
    /// XChaCha20-Poly1305.
    pub fn aes_is_fast_here() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
        }
        #[cfg(target_arch = "aarch64")]
        {
            std::arch::is_aarch64_feature_detected!("aes") && std::arch::is_aarch64_feature_detected!("pmull")
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            false
        }
    }

    /// The default for a new vault on this machine: AES-256-GCM where the
    /// CPU accelerates it, otherwise XChaCha20-Poly1305.
    pub fn preferred() -> Cipher {
        if Cipher::aes_is_fast_here() {
            Cipher::Aes256Gcm
        } else {
            Cipher::XChaCha20Poly1305
        }
    }
}

impl std::fmt::Display for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The 256-bit customer key. Zeroized when dropped; `Debug` shows only the
/// fingerprint. Deliberately not `Clone`: one copy, held where it is used.
pub struct MasterKey([u8; KEY_LEN]);

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey(fingerprint {})", self.fingerprint())
    }
}

impl MasterKey {
    /// A new random key from the operating system's random source.
    pub fn generate() -> Result<MasterKey, CryptoError> {
        let mut k = MasterKey([0; KEY_LEN]);
        random_bytes(&mut k.0)?;
        Ok(k)
    }

    /// A key from its bytes (a key file, a test vector). The caller should
    /// zeroize its own copy.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> MasterKey {
        MasterKey(bytes)
    }

    /// The key bytes, for the key file encoder only.
    pub(crate) fn secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Identifies this key without revealing it.
    pub fn fingerprint(&self) -> KeyFingerprint {
        let mut full = blake3::derive_key(CONTEXT_FINGERPRINT, &self.0);
        let fp = KeyFingerprint(full[..16].try_into().expect("16 bytes"));
        full.zeroize();
        fp
    }

    /// Derives every subkey.
    pub fn keys(&self) -> Keys {
        Keys::derive(self)
    }
}

/// The nonce and tag that frame a block sealed by [`Keys::seal_detached`]: the
/// blob is `nonce ‖ ciphertext ‖ tag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealFrame {
    /// The random nonce, written before the ciphertext.
    pub nonce: [u8; NONCE_LEN],
    /// The Poly1305 tag, written after the ciphertext.
    pub tag: [u8; TAG_LEN],
}

/// The subkeys of one master key. Cheap to share between worker threads
/// (`Send + Sync`, methods take `&self`); zeroized when dropped.
pub struct Keys {
    id_key: [u8; 32],
    aead: XChaCha20Poly1305,
    aes_blob_key: [u8; 32],
    root_mac_key: [u8; 32],
    audit_mac_key: [u8; 32],
    audit_aead: XChaCha20Poly1305,
    audit_nonce_key: [u8; 32],
    namespace_key: [u8; 32],
    root_meta_aead: XChaCha20Poly1305,
    root_meta_nonce_key: [u8; 32],
    fingerprint: KeyFingerprint,
}

impl Drop for Keys {
    fn drop(&mut self) {
        // The AEAD zeroizes its own key (chacha20poly1305's `zeroize` feature).
        self.id_key.zeroize();
        self.aes_blob_key.zeroize();
        self.root_mac_key.zeroize();
        self.audit_mac_key.zeroize();
        self.audit_nonce_key.zeroize();
        self.namespace_key.zeroize();
        self.root_meta_nonce_key.zeroize();
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys(fingerprint {})", self.fingerprint)
    }
}

impl Keys {
    /// Derives the subkeys of `master`.
    pub fn derive(master: &MasterKey) -> Keys {
        let mut enc = blake3::derive_key(CONTEXT_BLOCK_ENCRYPTION, &master.0);
        let aead = XChaCha20Poly1305::new(&enc.into());
        enc.zeroize();
        let mut seal = blake3::derive_key(CONTEXT_AUDIT_SEAL, &master.0);
        let audit_aead = XChaCha20Poly1305::new(&seal.into());
        seal.zeroize();
        let mut meta = blake3::derive_key(CONTEXT_ROOT_METADATA, &master.0);
        let root_meta_aead = XChaCha20Poly1305::new(&meta.into());
        meta.zeroize();
        Keys {
            id_key: blake3::derive_key(CONTEXT_BLOCK_ID, &master.0),
            aead,
            aes_blob_key: blake3::derive_key(CONTEXT_BLOCK_ENCRYPTION_AES, &master.0),
            root_mac_key: blake3::derive_key(CONTEXT_ROOT_MAC, &master.0),
            audit_mac_key: blake3::derive_key(CONTEXT_AUDIT_MAC, &master.0),
            audit_aead,
            audit_nonce_key: blake3::derive_key(CONTEXT_AUDIT_NONCE, &master.0),
            namespace_key: blake3::derive_key(CONTEXT_DISK_NAMESPACE, &master.0),
            root_meta_aead,
            root_meta_nonce_key: blake3::derive_key(CONTEXT_ROOT_METADATA_NONCE, &master.0),
            fingerprint: master.fingerprint(),
        }
    }

    /// The master key's fingerprint.
    pub fn fingerprint(&self) -> KeyFingerprint {
        self.fingerprint
    }

    /// A block's id: BLAKE3 keyed with the block-id subkey over its plaintext.
    pub fn block_id(&self, plaintext: &[u8]) -> BlockId {
        BlockId(*blake3::keyed_hash(&self.id_key, plaintext).as_bytes())
    }

    /// Seals a block in place with `cipher`, in a buffer laid out as the
    /// blob will be.
    ///
    /// On entry `buf[NONCE_LEN .. NONCE_LEN + plain_len]` holds the plaintext
    /// and `buf` has at least `plain_len + SEAL_OVERHEAD` bytes. On return
    /// `buf[..n]` is the blob (`nonce ‖ ciphertext ‖ tag`), `n` the returned
    /// length. Nothing is copied: a shipper whose reads must land at an
    /// aligned address (O_DIRECT) reads to `pool[4096..]` and passes
    /// `&mut pool[4096 - NONCE_LEN..]`.
    pub fn seal_in_place(
        &self,
        cipher: Cipher,
        id: &BlockId,
        buf: &mut [u8],
        plain_len: usize,
    ) -> Result<usize, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce)?;
        self.seal_in_place_inner(cipher, id, buf, plain_len, nonce)
    }

    /// Encrypts `data` in place with `cipher` and returns the nonce and tag
    /// that frame it, for a caller that writes the three parts itself (see
    /// [`crate::pack::PackWriter::add_sealed`]).
    pub fn seal_detached(&self, cipher: Cipher, id: &BlockId, data: &mut [u8]) -> Result<SealFrame, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce)?;
        Ok(self.seal_detached_inner(cipher, id, data, nonce))
    }

    /// Seals a copy of `plaintext` into a new blob (convenience; the shipper
    /// uses the in-place forms).
    pub fn seal_block(&self, cipher: Cipher, id: &BlockId, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce)?;
        Ok(self.seal_block_inner(cipher, id, plaintext, nonce))
    }

    /// [`Keys::seal_block`] with a caller-chosen nonce. **Tests only** (golden
    /// vectors need fixed bytes): a nonce used twice breaks the encryption.
    /// Not part of the public API: it exists only in this crate's own tests
    /// and with the `test-support` feature, which only its dev-dependency on
    /// itself enables (for `tests/golden_vault.rs`).
    #[cfg(any(test, feature = "test-support"))]
    #[doc(hidden)]
    pub fn seal_block_with_nonce_for_tests(
        &self,
        cipher: Cipher,
        id: &BlockId,
        plaintext: &[u8],
        nonce: [u8; NONCE_LEN],
    ) -> Vec<u8> {
        self.seal_block_inner(cipher, id, plaintext, nonce)
    }

    /// The AES-256-GCM key of the blob whose nonce is `nonce`: BLAKE3 keyed
    /// with the AES subkey over the nonce. Each key seals one blob, under
    /// the all-zero 96-bit GCM nonce.
    fn aes_key(&self, nonce: &[u8; NONCE_LEN]) -> LessSafeKey {
        let mut k = *blake3::keyed_hash(&self.aes_blob_key, nonce).as_bytes();
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &k).expect("a 32-byte AES-256 key"));
        k.zeroize();
        key
    }

    fn seal_detached_inner(&self, cipher: Cipher, id: &BlockId, data: &mut [u8], nonce: [u8; NONCE_LEN]) -> SealFrame {
        let tag: [u8; TAG_LEN] = match cipher {
            Cipher::XChaCha20Poly1305 => self
                .aead
                .encrypt_inout_detached(&XNonce::from(nonce), &id.0, data.into())
                .expect("XChaCha20-Poly1305 seals any message below 256 GiB")
                .into(),
            Cipher::Aes256Gcm => self
                .aes_key(&nonce)
                .seal_in_place_separate_tag(Nonce::assume_unique_for_key([0; 12]), Aad::from(&id.0), data)
                .expect("AES-256-GCM seals any message below 64 GiB")
                .as_ref()
                .try_into()
                .expect("16-byte tag"),
        };
        SealFrame { nonce, tag }
    }

    fn seal_in_place_inner(
        &self,
        cipher: Cipher,
        id: &BlockId,
        buf: &mut [u8],
        plain_len: usize,
        nonce: [u8; NONCE_LEN],
    ) -> Result<usize, CryptoError> {
        let need = plain_len
            .checked_add(SEAL_OVERHEAD)
            .ok_or(CryptoError::BufferTooSmall { need: usize::MAX, have: buf.len() })?;
        if buf.len() < need {
            return Err(CryptoError::BufferTooSmall { need, have: buf.len() });
        }
        let frame = self.seal_detached_inner(cipher, id, &mut buf[NONCE_LEN..NONCE_LEN + plain_len], nonce);
        buf[..NONCE_LEN].copy_from_slice(&frame.nonce);
        buf[NONCE_LEN + plain_len..need].copy_from_slice(&frame.tag);
        Ok(need)
    }

    fn seal_block_inner(&self, cipher: Cipher, id: &BlockId, plaintext: &[u8], nonce: [u8; NONCE_LEN]) -> Vec<u8> {
        let mut blob = vec![0u8; plaintext.len() + SEAL_OVERHEAD];
        blob[NONCE_LEN..NONCE_LEN + plaintext.len()].copy_from_slice(plaintext);
        self.seal_in_place_inner(cipher, id, &mut blob, plaintext.len(), nonce).expect("sized for the blob");
        blob
    }

    /// Opens a blob sealed with `cipher` in place: verifies the tag (AAD =
    /// `id`), decrypts, and checks that the plaintext hashes to `id`.
    /// Returns the plaintext, a sub-slice of `blob`. On error the blob's
    /// contents are unspecified. A blob opened with the other cipher than
    /// the one that sealed it is *Inauthentic*: the two use different keys.
    pub fn open_in_place<'a>(
        &self,
        cipher: Cipher,
        id: &BlockId,
        blob: &'a mut [u8],
    ) -> Result<&'a mut [u8], CryptoError> {
        let data = self.decrypt_in_place(cipher, id, blob)?;
        self.check_block_id(id, data)?;
        Ok(data)
    }

    /// The first half of [`Keys::open_in_place`]: verifies the tag (AAD =
    /// `id`) and decrypts, **without** checking that the result hashes to
    /// `id`. For a blob that holds its block compressed: inflate what this
    /// returns, then [`Keys::check_block_id`] the block.
    pub fn decrypt_in_place<'a>(
        &self,
        cipher: Cipher,
        id: &BlockId,
        blob: &'a mut [u8],
    ) -> Result<&'a mut [u8], CryptoError> {
        let len = blob.len();
        if len < SEAL_OVERHEAD {
            return Err(CryptoError::BlobTooShort { id: *id, len });
        }
        let (nonce, rest) = blob.split_at_mut(NONCE_LEN);
        let (data, tag) = rest.split_at_mut(len - SEAL_OVERHEAD);
        let authentic = match cipher {
            Cipher::XChaCha20Poly1305 => {
                let nonce = XNonce::try_from(&*nonce).expect("24 bytes");
                let tag = chacha20poly1305::Tag::try_from(&*tag).expect("16 bytes");
                self.aead.decrypt_inout_detached(&nonce, &id.0, (&mut *data).into(), &tag).is_ok()
            }
            Cipher::Aes256Gcm => {
                let key = self.aes_key(&(*nonce).try_into().expect("24 bytes"));
                let tag = ring::aead::Tag::try_from(&*tag).expect("16 bytes");
                key.open_in_place_separate_tag(Nonce::assume_unique_for_key([0; 12]), Aad::from(&id.0), tag, data, 0..)
                    .is_ok()
            }
        };
        if !authentic {
            return Err(CryptoError::Inauthentic { id: *id });
        }
        Ok(data)
    }

    /// Checks that `plain` hashes to `id` (*IdMismatch* otherwise): a blob a
    /// key holder sealed under the wrong id.
    pub fn check_block_id(&self, id: &BlockId, plain: &[u8]) -> Result<(), CryptoError> {
        if blake3::keyed_hash(&self.id_key, plain) != blake3::Hash::from(id.0) {
            return Err(CryptoError::IdMismatch { id: *id });
        }
        Ok(())
    }

    /// Opens a copy of `blob`; see [`Keys::open_in_place`].
    pub fn open_block(&self, cipher: Cipher, id: &BlockId, blob: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut buf = blob.to_vec();
        let plain = self.open_in_place(cipher, id, &mut buf)?.len();
        buf.copy_within(NONCE_LEN..NONCE_LEN + plain, 0);
        buf.truncate(plain);
        Ok(buf)
    }

    /// The MAC of a point root's bytes (keyed BLAKE3, root-MAC subkey).
    pub(crate) fn root_mac(&self, bytes: &[u8]) -> blake3::Hash {
        blake3::keyed_hash(&self.root_mac_key, bytes)
    }

    /// The audit-log MAC of `bytes` (keyed BLAKE3, audit subkey).
    pub fn audit_mac(&self, bytes: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.audit_mac_key, bytes).as_bytes()
    }

    /// Seals an audit record's body: `nonce (24) ‖ ciphertext ‖ tag (16)`,
    /// XChaCha20-Poly1305 under the audit sealing subkey with the record's
    /// `header` as associated data. The nonce is synthetic: the first 24
    /// bytes of BLAKE3 keyed with the audit nonce subkey over `header ‖
    /// body`. Two seals share a nonce only if header and body are equal,
    /// and then the sealed bytes are equal too (nothing leaks but that
    /// equality); a header holds the log id, seq and previous MAC, so even a
    /// torn record rewritten at the same seq with another body gets another
    /// nonce. Deterministic, so golden vectors need no test-only path.
    pub fn seal_audit_body(&self, header: &[u8], body: &[u8]) -> Vec<u8> {
        seal_synthetic(&self.audit_aead, &self.audit_nonce_key, header, body)
    }

    /// Opens a body sealed by [`Keys::seal_audit_body`] under `header`;
    /// `None` if it is too short or does not authenticate.
    pub fn open_audit_body(&self, header: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        open_synthetic(&self.audit_aead, header, sealed)
    }

    /// The namespace of the disk whose identity is `disk_id`: the first 16
    /// bytes of BLAKE3 keyed with the namespace subkey over the identity.
    /// Roots of format 2 live under it (as lowercase hex), so two disks of
    /// one name never share a chain and the vault never sees a name.
    pub fn disk_namespace(&self, disk_id: &[u8; 16]) -> [u8; 16] {
        blake3::keyed_hash(&self.namespace_key, disk_id).as_bytes()[..16].try_into().expect("16 bytes")
    }

    /// Seals a format-2 root's metadata (`nonce ‖ ciphertext ‖ tag`) with
    /// the root's `header` as associated data; the nonce is synthetic, as
    /// for audit bodies ([`Keys::seal_audit_body`]), from its own subkey.
    pub fn seal_root_metadata(&self, header: &[u8], plain: &[u8]) -> Vec<u8> {
        seal_synthetic(&self.root_meta_aead, &self.root_meta_nonce_key, header, plain)
    }

    /// Opens what [`Keys::seal_root_metadata`] sealed under `header`; `None`
    /// if it does not authenticate.
    pub fn open_root_metadata(&self, header: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        open_synthetic(&self.root_meta_aead, header, sealed)
    }

    /// A streaming hasher keyed with the audit subkey, for records hashed in
    /// pieces; its output equals [`Keys::audit_mac`] of the concatenation.
    pub fn audit_hasher(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.audit_mac_key)
    }
}

/// `nonce (24) ‖ ciphertext ‖ tag (16)` of `body` under `aead`, with
/// `header` as associated data and a synthetic nonce: the first 24 bytes of
/// BLAKE3 keyed with `nonce_key` over `len(header) as u64 LE ‖ header ‖ body`.
fn seal_synthetic(aead: &XChaCha20Poly1305, nonce_key: &[u8; 32], header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut h = blake3::Hasher::new_keyed(nonce_key);
    h.update(&(header.len() as u64).to_le_bytes());
    h.update(header);
    h.update(body);
    let nonce: [u8; NONCE_LEN] = h.finalize().as_bytes()[..NONCE_LEN].try_into().expect("24 bytes");
    let mut out = vec![0u8; body.len() + SEAL_OVERHEAD];
    out[..NONCE_LEN].copy_from_slice(&nonce);
    out[NONCE_LEN..NONCE_LEN + body.len()].copy_from_slice(body);
    let tag = aead
        .encrypt_inout_detached(&XNonce::from(nonce), header, (&mut out[NONCE_LEN..NONCE_LEN + body.len()]).into())
        .expect("XChaCha20-Poly1305 seals any message below 256 GiB");
    out[NONCE_LEN + body.len()..].copy_from_slice(tag.as_slice());
    out
}

/// Opens what [`seal_synthetic`] sealed; `None` if too short or inauthentic.
fn open_synthetic(aead: &XChaCha20Poly1305, header: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    let len = sealed.len();
    if len < SEAL_OVERHEAD {
        return None;
    }
    let nonce = XNonce::try_from(&sealed[..NONCE_LEN]).expect("24 bytes");
    let tag = chacha20poly1305::Tag::try_from(&sealed[len - TAG_LEN..]).expect("16 bytes");
    let mut data = sealed[NONCE_LEN..len - TAG_LEN].to_vec();
    aead.decrypt_inout_detached(&nonce, header, (&mut data[..]).into(), &tag).ok()?;
    Some(data)
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test sizes are small
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys(seed: u8) -> Keys {
        MasterKey::from_bytes([seed; 32]).keys()
    }

    #[test]
    fn keys_are_shareable_between_threads() {
        fn check<T: Send + Sync>() {}
        check::<Keys>();
    }

    #[test]
    fn subkeys_are_distinct_and_fixed() {
        let master = MasterKey::from_bytes([7; 32]);
        let k = master.keys();
        let subkeys = [k.id_key, k.root_mac_key, k.audit_mac_key];
        for (i, a) in subkeys.iter().enumerate() {
            for b in &subkeys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(k.id_key, blake3::derive_key("lifeboat v1 block id", &[7; 32]));
        assert_eq!(k.fingerprint().0[..], blake3::derive_key("lifeboat v1 key fingerprint", &[7; 32])[..16]);
        assert_eq!(format!("{k:?}"), format!("Keys(fingerprint {})", k.fingerprint()));
        assert!(!format!("{master:?}").contains("0707"));
    }

    #[test]
    fn generated_keys_differ() {
        let a = MasterKey::generate().unwrap();
        let b = MasterKey::generate().unwrap();
        assert_ne!(a.secret(), b.secret());
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn seal_then_open_in_every_form() {
        let k = keys(1);
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let id = k.block_id(&data);
        for c in Cipher::ALL {
            let blob = k.seal_block(c, &id, &data).unwrap();
            assert_eq!(blob.len(), data.len() + SEAL_OVERHEAD);
            assert_ne!(&blob[NONCE_LEN..NONCE_LEN + data.len()], &data[..], "{c}: encrypted");
            assert_eq!(k.open_block(c, &id, &blob).unwrap(), data, "{c}");

            // In place, with headroom in front as an aligned reader would leave it.
            let mut pool = vec![0u8; 4096 + data.len() + 4096];
            pool[4096..4096 + data.len()].copy_from_slice(&data);
            let n = k.seal_in_place(c, &id, &mut pool[4096 - NONCE_LEN..], data.len()).unwrap();
            let blob2 = pool[4096 - NONCE_LEN..4096 - NONCE_LEN + n].to_vec();
            assert_ne!(blob2, blob, "{c}: fresh nonce each time");
            assert_eq!(k.open_block(c, &id, &blob2).unwrap(), data, "{c}");

            // Detached.
            let mut buf = data.clone();
            let frame = k.seal_detached(c, &id, &mut buf).unwrap();
            let mut blob3 = frame.nonce.to_vec();
            blob3.extend_from_slice(&buf);
            blob3.extend_from_slice(&frame.tag);
            assert_eq!(k.open_in_place(c, &id, &mut blob3).unwrap(), &data[..], "{c}");
        }
    }

    #[test]
    fn a_blob_opens_only_with_the_cipher_that_sealed_it() {
        let k = keys(6);
        let data = b"sealed with one cipher, opened with the other".to_vec();
        let id = k.block_id(&data);
        for c in Cipher::ALL {
            let other = Cipher::ALL.into_iter().find(|o| *o != c).unwrap();
            let blob = k.seal_block(c, &id, &data).unwrap();
            assert_eq!(k.open_block(other, &id, &blob), Err(CryptoError::Inauthentic { id }), "{c} opened as {other}");
            assert_eq!(k.open_block(c, &id, &blob).unwrap(), data);
        }
    }

    #[test]
    fn an_aes_blob_is_aes_256_gcm_under_the_key_its_nonce_derives() {
        // Checks the construction FORMAT.md states against ring's AES-256-GCM
        // used directly: key = BLAKE3-keyed(AES subkey, nonce), GCM nonce 0.
        let master = MasterKey::from_bytes([9; 32]);
        let k = master.keys();
        let data = b"the per-blob key construction".to_vec();
        let id = k.block_id(&data);
        let nonce = [0x42; NONCE_LEN];
        let blob = k.seal_block_with_nonce_for_tests(Cipher::Aes256Gcm, &id, &data, nonce);
        let subkey = blake3::derive_key("lifeboat v1 block encryption aes-256-gcm", &[9; 32]);
        let key = blake3::keyed_hash(&subkey, &nonce);
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key.as_bytes()).unwrap());
        let mut expect = data.clone();
        let tag = key.seal_in_place_separate_tag(Nonce::assume_unique_for_key([0; 12]), Aad::from(&id.0), &mut expect);
        expect.extend_from_slice(tag.unwrap().as_ref());
        assert_eq!(&blob[..NONCE_LEN], &nonce);
        assert_eq!(&blob[NONCE_LEN..], &expect[..]);
        // Another nonce, another key: the same plaintext seals differently
        // beyond what a changed GCM nonce alone would give.
        let blob2 = k.seal_block_with_nonce_for_tests(Cipher::Aes256Gcm, &id, &data, [0x43; NONCE_LEN]);
        assert_ne!(blob2[NONCE_LEN..], blob[NONCE_LEN..]);
    }

    #[test]
    fn cipher_names_and_codes_round_trip() {
        for c in Cipher::ALL {
            assert_eq!(Cipher::from_name(c.name()), Some(c));
            assert_eq!(Cipher::from_code(c.code()), Some(c));
            assert_eq!(c.to_string(), c.name());
        }
        assert_eq!(Cipher::from_code(0), None);
        assert_eq!(Cipher::from_name("aes-128-gcm"), None);
        assert_eq!(Cipher::preferred() == Cipher::Aes256Gcm, Cipher::aes_is_fast_here());
    }

    #[test]
    fn seal_in_place_refuses_a_small_buffer() {
        let k = keys(1);
        let mut buf = [0u8; 50];
        assert_eq!(
            k.seal_in_place(Cipher::Aes256Gcm, &BlockId::ZERO, &mut buf, 11),
            Err(CryptoError::BufferTooSmall { need: 51, have: 50 })
        );
    }

    #[test]
    fn swapped_forged_and_wrong_key_blobs_are_refused() {
        let (k, other) = (keys(1), keys(2));
        let (a, b) = (b"block a".to_vec(), b"block b".to_vec());
        let (ida, idb) = (k.block_id(&a), k.block_id(&b));
        for c in Cipher::ALL {
            let blob_a = k.seal_block(c, &ida, &a).unwrap();
            let blob_b = k.seal_block(c, &idb, &b).unwrap();
            // Blob of b presented as a: the AAD differs.
            assert_eq!(k.open_block(c, &ida, &blob_b), Err(CryptoError::Inauthentic { id: ida }));
            // The right blob under another key.
            assert_eq!(other.open_block(c, &ida, &blob_a), Err(CryptoError::Inauthentic { id: ida }));
            // A key holder sealing b's data under a's id: tag fine, id check fails.
            let forged = k.seal_block_with_nonce_for_tests(c, &ida, &b, [9; 24]);
            assert_eq!(k.open_block(c, &ida, &forged), Err(CryptoError::IdMismatch { id: ida }));
            assert_eq!(k.open_block(c, &ida, &blob_a[..39]), Err(CryptoError::BlobTooShort { id: ida, len: 39 }));
        }
    }

    #[test]
    fn every_flipped_bit_of_a_blob_is_refused() {
        let k = keys(3);
        let data = b"a short block of data for bit flipping".to_vec();
        let id = k.block_id(&data);
        for cipher in Cipher::ALL {
            let blob = k.seal_block(cipher, &id, &data).unwrap();
            for byte in 0..blob.len() {
                for bit in 0..8 {
                    let mut c = blob.clone();
                    c[byte] ^= 1 << bit;
                    let got = k.open_block(cipher, &id, &c);
                    assert_eq!(got, Err(CryptoError::Inauthentic { id }), "{cipher} byte {byte} bit {bit}");
                }
            }
            // And a flipped bit of the id it is opened under.
            for bit in 0..256 {
                let mut other = id;
                other.0[bit / 8] ^= 1 << (bit % 8);
                assert!(k.open_block(cipher, &other, &blob).is_err());
            }
        }
    }

    #[test]
    fn audit_hasher_matches_audit_mac() {
        let k = keys(4);
        let mut h = k.audit_hasher();
        h.update(b"record one, ");
        h.update(b"record two");
        assert_eq!(*h.finalize().as_bytes(), k.audit_mac(b"record one, record two"));
        assert_ne!(k.audit_mac(b"x"), *k.root_mac(b"x").as_bytes());
    }

    proptest! {
        #[test]
        fn round_trip(data in proptest::collection::vec(any::<u8>(), 0..5000), seed in any::<u8>()) {
            let k = keys(seed);
            let id = k.block_id(&data);
            for c in Cipher::ALL {
                let blob = k.seal_block(c, &id, &data).unwrap();
                prop_assert_eq!(&k.open_block(c, &id, &blob).unwrap(), &data);
            }
        }
    }
}
