//! Reading a point one block at a time, for serving it before it is
//! restored (instant recovery).
//!
//! [`Vault::point_reader`] does steps 1 to 3 of a restore up front (key,
//! root MAC and place, every map page, every block located in the block
//! index), so a damaged point is refused before anything is served; then
//! [`PointReader::read_block`] fetches one blob by range and opens it with the
//! key (AEAD tag with the id as AAD, keyed hash of the plaintext): only
//! authenticated bytes are ever returned. Packs are not hashed whole here
//! (`vault check` does that).

use std::sync::Arc;

use disk_format::{BlockId, CryptoError, Geometry, Keys};

use crate::backend::Kind;
use crate::error::{Damage, VaultError};
use crate::index::BlockLocation;
use crate::store::{point_label, Vault};

/// One point of one disk, readable block by block. Owns what it needs
/// (`Send + Sync`, shareable between threads).
pub struct PointReader {
    vault: Arc<Vault>,
    keys: Arc<Keys>,
    point: String,
    geometry: Geometry,
    /// Per block: its id and where its blob is; `None` for a zero block.
    blocks: Vec<Option<(BlockId, BlockLocation)>>,
}

impl Vault {
    /// Locates every block of point `sequence` of `disk` (see the module
    /// documentation). The caller holds the point ([`Vault::hold`]) for as
    /// long as it reads from it.
    pub fn point_reader(
        vault: &Arc<Vault>,
        disk: &str,
        sequence: u64,
        keys: &Arc<Keys>,
    ) -> Result<PointReader, VaultError> {
        let root = vault.load_root(disk, sequence, Some(keys))?;
        // Named by the disk the key shows (its chain is a keyed id).
        let point = point_label(&root.disk_name, sequence);
        // Planned against the packs the point's page packs hint at where
        // they can be: a cold start reads a few indexes, not the vault's.
        let count = usize::try_from(root.geometry.block_count).expect("a block map fits in memory");
        let blocks = vault.with_plan(&point, &root, |(jobs, _), _| {
            let mut blocks = vec![None; count];
            for item in jobs.iter().flat_map(|j| &j.items) {
                blocks[usize::try_from(item.block).expect("fits")] = Some((*item.id, item.loc.clone()));
            }
            Ok(blocks)
        })?;
        Ok(PointReader { vault: Arc::clone(vault), keys: Arc::clone(keys), point, geometry: root.geometry, blocks })
    }
}

impl PointReader {
    /// Reads worth keeping in flight from this point's vault
    /// ([`crate::Backend::reads_in_flight`]).
    pub fn reads_in_flight(&self) -> usize {
        self.vault.backend().reads_in_flight()
    }

    /// The disk's geometry at the point's cut.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Whether `block` is all zero in the point (nothing to fetch).
    pub fn is_zero(&self, block: u64) -> bool {
        usize::try_from(block).ok().and_then(|b| self.blocks.get(b)).is_none_or(Option::is_none)
    }

    /// The keyed id of `block`'s contents in the point (`None`: all zero).
    pub fn block_id(&self, block: u64) -> Option<&BlockId> {
        usize::try_from(block).ok().and_then(|b| self.blocks.get(b)).and_then(|e| e.as_ref()).map(|(id, _)| id)
    }

    /// The point's contents of `block` into `out` (exactly the block's
    /// length), fetched and authenticated.
    pub fn read_block(&self, block: u64, out: &mut [u8]) -> Result<(), VaultError> {
        let want = self.geometry.block_len(block);
        assert_eq!(out.len(), want, "read_block needs a buffer of the block's length");
        let slot = usize::try_from(block).ok().and_then(|b| self.blocks.get(b));
        let Some(Some((id, loc))) = slot else {
            out.fill(0);
            return Ok(());
        };
        let damaged = |damage, detail: String| VaultError::Damaged {
            point: self.point.clone(),
            block: Some(block),
            object: format!("packs/{}", loc.pack),
            damage,
            detail,
        };
        let mut blob = self
            .vault
            .backend()
            .get_range(Kind::Pack, &loc.pack.to_string(), loc.range.start, loc.range.end - loc.range.start)
            .map_err(|e| match e {
                VaultError::NotFound { .. } => damaged(Damage::Missing, "the pack is gone from the vault".into()),
                VaultError::ShortObject { .. } => damaged(Damage::Corrupt, "the pack is truncated".into()),
                other => other,
            })?;
        let crypto = |e: CryptoError| {
            let damage = match e {
                CryptoError::Inauthentic { .. } | CryptoError::IdMismatch { .. } => Damage::Inauthentic,
                _ => Damage::Corrupt,
            };
            damaged(damage, format!("entry {}: {e}", loc.entry))
        };
        if loc.compressed {
            let sealed = self.keys.decrypt_in_place(loc.cipher, id, &mut blob).map_err(crypto)?;
            crate::compress::decompress(sealed, out)
                .map_err(|detail| damaged(Damage::Inauthentic, format!("entry {}: {detail}", loc.entry)))?;
            return self.keys.check_block_id(id, out).map_err(crypto);
        }
        let plain = self.keys.open_in_place(loc.cipher, id, &mut blob).map_err(crypto)?;
        if plain.len() != want {
            return Err(damaged(
                Damage::Misplaced,
                format!("the blob holds {} bytes, the block is {want}", plain.len()),
            ));
        }
        out.copy_from_slice(plain);
        Ok(())
    }
}
