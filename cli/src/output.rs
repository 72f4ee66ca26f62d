//! Image files the CLI writes (snapshots, restores): written under a
//! `.partial` name and renamed into place only when complete and synced, so
//! a failed or interrupted run never leaves something that looks finished.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use filter::ImageId;

use crate::home::Home;

/// Refuses to write `out` if it is a disk image in use: the image of a
/// disk protected in `home` (by device and inode, whatever path names it),
/// or a file some process holds QEMU's image lock on (a VM, `qemu-io`, a
/// filter of another home). `--force` does not override this: an output is
/// renamed over `out`, and a process serving the old file would go on
/// writing the VM's data to the deleted file. `what` names the command.
pub fn refuse_image_in_use(home: &Home, out: &Path, what: &str) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::metadata(out) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", out.display())),
    };
    if let Some((disk, image)) = home.disk_with_image(ImageId::of(&meta), None)? {
        bail!(
            "{} is the image of protected disk {disk:?} ({}); a {what} never replaces a protected image, even with \
             --force (a filter serving it would go on writing the VM's data to the replaced file). {what} to a new \
             file instead, then boot it with `lifeboat failover`, or stop the VM and the agent, copy it over the \
             image and run `lifeboat protect {disk} --image {} --reset-state`",
            out.display(),
            image.display(),
            image.display()
        );
    }
    if meta.file_type().is_file() || meta.file_type().is_block_device() {
        let f = File::open(out).with_context(|| format!("opening {}", out.display()))?;
        let holder =
            filter::image::lock_holder(&f).with_context(|| format!("checking the image locks of {}", out.display()))?;
        if let Some(c) = holder {
            bail!(
                "{} is in use: a process holds QEMU's image lock on it ({c}): a VM, qemu-io or a Lifeboat filter; \
                 stop it first, or {what} to a new file",
                out.display()
            );
        }
    }
    Ok(())
}

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

    /// Syncs the file, renames it to its final name and syncs the directory
    /// (`system::file::install`).
    pub fn commit(mut self) -> Result<()> {
        system::file::install(&self.tmp, &self.out).map_err(|e| {
            let what = match e.step {
                system::file::Step::SyncFile => format!("syncing {}", self.tmp.display()),
                system::file::Step::Rename => format!("renaming {} to {}", self.tmp.display(), self.out.display()),
                system::file::Step::SyncDir => format!("syncing directory {}", e.dir.display()),
            };
            anyhow::Error::new(e.source).context(what)
        })?;
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

/// Lowercase hex of `bytes` (disk identities, cut-group ids), as `disk.toml`
/// and `points --json` print them.
pub fn hex(bytes: &[u8]) -> String {
    disk_format::ids::hex(bytes)
}
