//! Image files the CLI writes (snapshots, restores): written under a
//! `.partial` name and renamed into place only when complete and synced, so
//! a failed or interrupted run never leaves something that looks finished.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// An output image being written.
pub struct PartialFile {
    file: File,
    tmp: PathBuf,
    out: PathBuf,
    committed: bool,
}

impl PartialFile {
    /// Creates `OUT.partial`; refuses if `out` exists, unless `force`.
    pub fn create(out: &Path, force: bool) -> Result<PartialFile> {
        if out.exists() && !force {
            bail!("{} already exists; pass --force to overwrite it", out.display());
        }
        let tmp = out.with_extension("partial");
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        Ok(PartialFile { file, tmp, out: out.to_owned(), committed: false })
    }

    /// The file being written.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Its temporary path, for messages.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Syncs the file and renames it to its final name.
    pub fn commit(mut self) -> Result<()> {
        self.file.sync_all().with_context(|| format!("syncing {}", self.tmp.display()))?;
        std::fs::rename(&self.tmp, &self.out)
            .with_context(|| format!("renaming {} to {}", self.tmp.display(), self.out.display()))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
