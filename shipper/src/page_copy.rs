//! The host's copy of its disks' newest map pages (`HOME/cache/pages`).
//!
//! An incremental cycle builds its map pages on the previous point's, and
//! this host built those pages itself: it keeps them, instead of reading
//! them back from the vault (a page pack's index, then its pages: two
//! requests and two round trips a cycle on a cloud vault).
//!
//! A copy is a file named by the page's id, the hash the root names the
//! page by, under a directory of the vault and the disk's namespace. It is
//! used only if it decodes to the id the previous root names
//! ([`Root::check_page`]), so a stale, torn or foreign copy costs only its
//! fetch from the vault, never a wrong map. Nothing here is synced: a copy
//! lost in a crash is fetched the next time. After each committed point
//! the copies of pages it replaced are removed (all others, after a full
//! cycle), so the directory holds one point's pages: 16 KiB per 32 MiB of
//! disk at a 64 KiB block size, like the index cache's 32 bytes per block.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use disk_format::ids::PageId;
use disk_format::point::Root;

/// One disk's page copies in one vault.
pub(crate) struct PageCopy {
    dir: PathBuf,
}

impl PageCopy {
    /// The copies of the disk whose points live under `chain` in the vault
    /// `vault_id`, kept under `base` (`HOME/cache/pages`).
    pub(crate) fn new(base: &Path, vault_id: &str, chain: &str) -> PageCopy {
        PageCopy { dir: base.join(vault_id).join(chain) }
    }

    fn path(&self, id: &PageId) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// The copies of pages `wanted` (indexes) of `root` that check against
    /// it, by index; and the indexes of the rest (all-zero pages left out
    /// of both: there is nothing to read).
    pub(crate) fn load(&self, root: &Root, wanted: &[u64]) -> (HashMap<u64, Vec<u8>>, Vec<u64>) {
        let mut have = HashMap::new();
        let mut missing = Vec::new();
        for &p in wanted {
            let Some(id) = usize::try_from(p).ok().and_then(|i| root.pages.get(i)) else { continue };
            if id.is_zero() {
                continue;
            }
            match std::fs::read(self.path(id)) {
                Ok(bytes) if root.check_page(p, &bytes).is_ok() => {
                    have.insert(p, bytes);
                }
                _ => missing.push(p),
            }
        }
        (have, missing)
    }

    /// Keeps the pages of a newly committed point: its `new` pages are
    /// written, and the copies of pages it no longer names are removed,
    /// those of `previous` it replaced or, without a previous point (a full
    /// cycle), every other one in the directory.
    pub(crate) fn keep(
        &self,
        new: &[(PageId, Vec<u8>)],
        pages: &[PageId],
        previous: Option<&[PageId]>,
    ) -> std::io::Result<()> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir)?;
        for (id, bytes) in new {
            let tmp = self.dir.join(format!("{id}.tmp"));
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            f.write_all(bytes)?;
            std::fs::rename(&tmp, self.path(id))?;
        }
        let named: HashSet<&PageId> = pages.iter().collect();
        let gone: Vec<PathBuf> = match previous {
            Some(previous) => {
                previous.iter().filter(|id| !id.is_zero() && !named.contains(id)).map(|id| self.path(id)).collect()
            }
            None => std::fs::read_dir(&self.dir)?
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_str().and_then(PageId::from_hex).is_none_or(|id| !named.contains(&id)))
                .map(|e| e.path())
                .collect(),
        };
        for path in gone {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}
