//! Replacing a file atomically and durably, with one policy for every file
//! Lifeboat keeps (`disk.toml`, VM definitions, failover jobs, plan runs):
//!
//! 1. write the new contents to a private temporary beside the file
//!    (`NAME.tmp`, mode 0600 whatever the umask),
//! 2. fsync it,
//! 3. rename it over the file,
//! 4. fsync the directory.
//!
//! A crash at any point leaves the old contents or the new, never an empty
//! or partial file: without step 2 the rename can reach the disk before
//! the data (the file is then empty after a crash, as ext4 and XFS allow),
//! and without step 4 the rename itself can be lost (the old file comes
//! back, which is safe, but the caller was told it was written). The steps
//! go through [`Steps`], so a test can crash between any two of them
//! ([`replace_with`] and the model in this module's tests).
//!
//! Files that only summarise what is kept durably elsewhere (the status
//! file, the audit log's sync state) skip the two fsyncs
//! ([`replace_unsynced`]): a crash may leave them old, new or empty, and
//! their readers take an unreadable file for an absent one.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Starts writing `len` bytes of `file` from `offset` back to the device
/// without waiting for them (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so
/// that a later fsync has little left to do and the device works while the
/// writer still receives. A hint, not a durability point: only fsync is.
#[allow(unsafe_code)]
pub fn start_writeback(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let too_far = |_| io::Error::from(io::ErrorKind::InvalidInput);
    let (offset, len) = (i64::try_from(offset).map_err(too_far)?, i64::try_from(len).map_err(too_far)?);
    // SAFETY: the descriptor is `file`'s, open for the whole call; the other
    // arguments are integers. The call reads or writes none of our memory.
    let r = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Drops `file`'s clean pages from the page cache
/// (`posix_fadvise(POSIX_FADV_DONTNEED)`): for data written once and not
/// read again soon, so its memory goes back to the next writer at once
/// instead of pushing out what readers use. Call it after an fsync: dirty
/// pages are not dropped. A hint: nothing is lost if it fails.
#[allow(unsafe_code)]
pub fn drop_cached(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is `file`'s, open for the whole call; the other
    // arguments are integers. The call reads or writes none of our memory.
    let r = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

/// The temporary a replacement of `path` writes first: `NAME.tmp` beside it.
pub fn temporary(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// The file-system operations a replacement is made of.
pub trait Steps {
    /// Creates (or truncates) `tmp`, private, and writes `bytes` to it.
    fn write_new(&mut self, tmp: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Makes `tmp`'s contents durable.
    fn sync_file(&mut self, tmp: &Path) -> io::Result<()>;
    /// Renames `tmp` over `path`.
    fn rename(&mut self, tmp: &Path, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries durable.
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()>;
}

/// The real file system.
pub struct RealFs;

impl Steps for RealFs {
    fn write_new(&mut self, tmp: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(tmp)?;
        // An existing temporary (a crash's leftover) keeps its mode: make it private.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        f.write_all(bytes)
    }

    fn sync_file(&mut self, tmp: &Path) -> io::Result<()> {
        OpenOptions::new().write(true).open(tmp)?.sync_all()
    }

    fn rename(&mut self, tmp: &Path, path: &Path) -> io::Result<()> {
        std::fs::rename(tmp, path)
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// Replaces `path` with `bytes` atomically and durably (see the module
/// documentation); the file is private (0600). On error the file is as it
/// was (or, if only the last fsync failed, already replaced).
pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_with(&mut RealFs, path, bytes)
}

/// [`replace`] through `steps`.
pub fn replace_with(steps: &mut dyn Steps, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temporary(path);
    steps.write_new(&tmp, bytes)?;
    install_with(steps, &tmp, path).map_err(|e| e.source)
}

/// Replaces `path` with `bytes` atomically but not durably: [`replace`]
/// without its two fsyncs (private temporary, rename). For files that only
/// repeat or summarise what is kept durably elsewhere (the status file, the
/// audit log's sync state), whose readers take an unreadable file for an
/// absent one. After a crash the file may hold the old contents, the new,
/// or nothing (an empty file, or none), never a mixture. Each fsync left
/// out is a device flush a replication cycle does not wait for.
pub fn replace_unsynced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_unsynced_with(&mut RealFs, path, bytes)
}

/// [`replace_unsynced`] through `steps`.
pub fn replace_unsynced_with(steps: &mut dyn Steps, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temporary(path);
    steps.write_new(&tmp, bytes)?;
    steps.rename(&tmp, path)
}

/// The step of a replacement that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Making the temporary's contents durable (it is named by `tmp`).
    SyncFile,
    /// Renaming the temporary over the file.
    Rename,
    /// Making the directory's entries durable (the file is already replaced).
    SyncDir,
}

/// Why [`install`] failed: the step, and the file system's error.
#[derive(Debug)]
pub struct InstallError {
    /// The step that failed.
    pub step: Step,
    /// The directory, for [`Step::SyncDir`] (the one fsynced).
    pub dir: PathBuf,
    /// The error.
    pub source: io::Error,
}

impl std::fmt::Display for InstallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.step {
            Step::SyncFile => write!(f, "syncing the new file: {}", self.source),
            Step::Rename => write!(f, "renaming the new file into place: {}", self.source),
            Step::SyncDir => write!(f, "syncing directory {}: {}", self.dir.display(), self.source),
        }
    }
}

impl std::error::Error for InstallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Puts `tmp`, a new file written in full (for files too large to hand over
/// as bytes, such as a state file), in place of `path` by the same policy
/// as [`replace`]: fsync it, rename it over `path`, fsync the directory.
pub fn install(tmp: &Path, path: &Path) -> Result<(), InstallError> {
    install_with(&mut RealFs, tmp, path)
}

/// Puts `tmp`, a new file written in full, at `path` only if nothing is
/// there yet (create-if-absent), by the same policy as [`install`]: fsync
/// it, link it to `path` with link(2) — which fails with `AlreadyExists`,
/// atomically, when `path` exists, even against other processes — remove
/// `tmp`, fsync the directory. A failed link is reported as
/// [`Step::Rename`] (the step that puts the file in place) and leaves `tmp`
/// to the caller; after the link, `path` holds the whole file.
pub fn install_new(tmp: &Path, path: &Path) -> Result<(), InstallError> {
    let dir = parent_dir(path);
    let failed = |step: Step| {
        let dir = &dir;
        move |source| InstallError { step, dir: dir.clone(), source }
    };
    RealFs.sync_file(tmp).map_err(failed(Step::SyncFile))?;
    std::fs::hard_link(tmp, path).map_err(failed(Step::Rename))?;
    // The file is in place under its name; the temporary's entry is only
    // space, and whoever sweeps temporaries removes it if this fails.
    let _ = std::fs::remove_file(tmp);
    RealFs.sync_dir(&dir).map_err(failed(Step::SyncDir))
}

/// The directory holding `path` (`.` for a bare name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn install_with(steps: &mut dyn Steps, tmp: &Path, path: &Path) -> Result<(), InstallError> {
    let dir = parent_dir(path);
    let failed = |step: Step| {
        let dir = &dir;
        move |source| InstallError { step, dir: dir.clone(), source }
    };
    steps.sync_file(tmp).map_err(failed(Step::SyncFile))?;
    steps.rename(tmp, path).map_err(failed(Step::Rename))?;
    steps.sync_dir(&dir).map_err(failed(Step::SyncDir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, HashMap};
    use std::os::unix::fs::PermissionsExt;

    /// A file system that loses what was not made durable when it crashes,
    /// as POSIX allows: a file's data survives only once fsynced, and a
    /// rename (a directory entry) only once the directory is fsynced; until
    /// then a crash may or may not keep it.
    #[derive(Default, Clone)]
    struct CrashFs {
        /// Inode contents, as written and as durable (`None`: never synced).
        data: HashMap<u32, (Vec<u8>, Option<Vec<u8>>)>,
        /// Directory entries now, and as durable on disk.
        names: HashMap<PathBuf, u32>,
        durable_names: HashMap<PathBuf, u32>,
        /// Renames made since the last directory sync (entries a crash may keep or lose).
        pending: Vec<(PathBuf, PathBuf, u32)>,
        next: u32,
        /// Operations allowed before the crash.
        budget: usize,
    }

    impl CrashFs {
        fn with_file(path: &Path, contents: &[u8]) -> CrashFs {
            let mut fs = CrashFs { next: 1, budget: usize::MAX, ..CrashFs::default() };
            fs.data.insert(1, (contents.to_vec(), Some(contents.to_vec())));
            fs.names.insert(path.to_path_buf(), 1);
            fs.durable_names.insert(path.to_path_buf(), 1);
            fs
        }

        fn step(&mut self) -> io::Result<()> {
            if self.budget == 0 {
                return Err(io::Error::other("crashed"));
            }
            self.budget -= 1;
            Ok(())
        }

        /// Every contents `path` may have after a crash now: each pending
        /// rename kept or lost, each inode's data as synced (or, never
        /// synced, empty: the data blocks were not written).
        fn after_crash(&self, path: &Path) -> BTreeSet<Option<Vec<u8>>> {
            let mut out = BTreeSet::new();
            for kept in 0..=self.pending.len() {
                let mut names = self.durable_names.clone();
                for (from, to, ino) in &self.pending[..kept] {
                    names.remove(from);
                    names.insert(to.clone(), *ino);
                }
                out.insert(names.get(path).map(|ino| self.data[ino].1.clone().unwrap_or_default()));
            }
            out
        }
    }

    impl Steps for CrashFs {
        fn write_new(&mut self, tmp: &Path, bytes: &[u8]) -> io::Result<()> {
            self.step()?;
            self.next += 1;
            self.data.insert(self.next, (bytes.to_vec(), None));
            self.names.insert(tmp.to_path_buf(), self.next);
            self.pending.push((PathBuf::new(), tmp.to_path_buf(), self.next));
            Ok(())
        }
        fn sync_file(&mut self, tmp: &Path) -> io::Result<()> {
            self.step()?;
            let ino = self.names[tmp];
            let d = self.data.get_mut(&ino).unwrap();
            d.1 = Some(d.0.clone());
            Ok(())
        }
        fn rename(&mut self, tmp: &Path, path: &Path) -> io::Result<()> {
            self.step()?;
            let ino = self.names.remove(tmp).unwrap();
            self.names.insert(path.to_path_buf(), ino);
            self.pending.push((tmp.to_path_buf(), path.to_path_buf(), ino));
            Ok(())
        }
        fn sync_dir(&mut self, _dir: &Path) -> io::Result<()> {
            self.step()?;
            self.durable_names = self.names.clone();
            self.pending.clear();
            Ok(())
        }
    }

    /// A crash after any number of steps leaves the old or the new
    /// contents, never an empty or partial file; a finished replacement
    /// leaves only the new.
    fn crash_at_every_step(replace: fn(&mut dyn Steps, &Path, &[u8]) -> io::Result<()>) -> Result<(), String> {
        let path = Path::new("/home/disks/d1/disk.toml");
        let (old, new) = (b"name = \"old\"\n".to_vec(), b"name = \"new\"\n".to_vec());
        for budget in 0..=4 {
            let mut fs = CrashFs { budget, ..CrashFs::with_file(path, &old) };
            let finished = replace(&mut fs, path, &new).is_ok();
            let possible = fs.after_crash(path);
            let allowed: BTreeSet<_> =
                if finished { [Some(new.clone())].into() } else { [Some(old.clone()), Some(new.clone())].into() };
            if !possible.is_subset(&allowed) {
                let shown: Vec<String> = possible
                    .iter()
                    .map(|p| p.as_ref().map_or("no file".into(), |b| format!("{:?}", String::from_utf8_lossy(b))))
                    .collect();
                return Err(format!("a crash after {budget} steps may leave {shown:?}"));
            }
        }
        Ok(())
    }

    #[test]
    fn an_unsynced_replacement_leaves_old_new_or_nothing_and_never_syncs() {
        let path = Path::new("/home/disks/d1/status.json");
        let (old, new) = (b"{\"old\": 1}".to_vec(), b"{\"new\": 2}".to_vec());
        for budget in 0..=2 {
            let mut fs = CrashFs { budget, ..CrashFs::with_file(path, &old) };
            let _ = replace_unsynced_with(&mut fs, path, &new);
            let allowed: BTreeSet<_> = [Some(old.clone()), Some(new.clone()), Some(Vec::new()), None].into();
            assert!(fs.after_crash(path).is_subset(&allowed), "after {budget} steps");
        }
        // Two steps, neither a sync: a third would find the budget spent.
        let mut fs = CrashFs { budget: 2, ..CrashFs::with_file(path, &old) };
        replace_unsynced_with(&mut fs, path, &new).unwrap();
        assert_eq!(fs.names.get(path).map(|i| fs.data[i].0.clone()), Some(new));
    }

    #[test]
    fn a_crash_at_any_step_leaves_the_old_or_the_new_contents() {
        crash_at_every_step(replace_with).unwrap();
    }

    #[test]
    fn the_model_catches_a_replacement_that_skips_a_sync() {
        // The model would let these through if it did not model durability.
        fn no_file_sync(s: &mut dyn Steps, path: &Path, bytes: &[u8]) -> io::Result<()> {
            let tmp = temporary(path);
            s.write_new(&tmp, bytes)?;
            s.rename(&tmp, path)?;
            s.sync_dir(path.parent().unwrap())
        }
        fn no_dir_sync(s: &mut dyn Steps, path: &Path, bytes: &[u8]) -> io::Result<()> {
            let tmp = temporary(path);
            s.write_new(&tmp, bytes)?;
            s.sync_file(&tmp)?;
            s.rename(&tmp, path)
        }
        let e = crash_at_every_step(no_file_sync).unwrap_err();
        assert!(e.contains(r#""\"\"""#), "an unsynced file's rename must be able to leave it empty: {e}");
        let e = crash_at_every_step(no_dir_sync).unwrap_err();
        assert!(e.contains("after 3 steps") && e.contains("old"), "a rename reported done may come back old: {e}");
    }

    #[test]
    fn replace_writes_a_private_file_over_a_loose_one_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(temporary(&path), b"a crash's leftover").unwrap();
        std::fs::set_permissions(temporary(&path), std::fs::Permissions::from_mode(0o666)).unwrap();
        replace(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!temporary(&path).exists());
        let e = replace(&dir.path().join("missing-dir/x"), b"x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn install_puts_a_written_file_in_place_and_names_the_step_that_failed() {
        let dir = tempfile::tempdir().unwrap();
        let (tmp, path) = (dir.path().join("state.new"), dir.path().join("state"));
        std::fs::write(&path, b"old").unwrap();
        std::fs::write(&tmp, b"new").unwrap();
        install(&tmp, &path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert!(!tmp.exists());
        let e = install(&tmp, &path).unwrap_err();
        assert_eq!((e.step, e.source.kind()), (Step::SyncFile, io::ErrorKind::NotFound), "{e}");
        let e = install_with(&mut BrokenAt(Step::Rename), &tmp, &path).unwrap_err();
        assert_eq!(e.step, Step::Rename, "{e}");
        let e = install_with(&mut BrokenAt(Step::SyncDir), &tmp, &path).unwrap_err();
        assert_eq!((e.step, e.dir.as_path()), (Step::SyncDir, dir.path()), "{e}");
        assert!(e.to_string().starts_with(&format!("syncing directory {}: ", dir.path().display())), "{e}");
    }

    #[test]
    fn install_new_puts_a_file_in_place_only_where_there_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let (tmp, path) = (dir.path().join("obj.tmp"), dir.path().join("obj"));
        std::fs::write(&tmp, b"first").unwrap();
        install_new(&tmp, &path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        assert!(!tmp.exists());
        std::fs::write(&tmp, b"second").unwrap();
        let e = install_new(&tmp, &path).unwrap_err();
        assert_eq!((e.step, e.source.kind()), (Step::Rename, io::ErrorKind::AlreadyExists), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"first", "an existing file was replaced");
        assert!(tmp.exists(), "a refused temporary is the caller's");
    }

    /// Steps that all succeed but one.
    struct BrokenAt(Step);

    impl Steps for BrokenAt {
        fn write_new(&mut self, _: &Path, _: &[u8]) -> io::Result<()> {
            Ok(())
        }
        fn sync_file(&mut self, _: &Path) -> io::Result<()> {
            self.fail(Step::SyncFile)
        }
        fn rename(&mut self, _: &Path, _: &Path) -> io::Result<()> {
            self.fail(Step::Rename)
        }
        fn sync_dir(&mut self, _: &Path) -> io::Result<()> {
            self.fail(Step::SyncDir)
        }
    }

    impl BrokenAt {
        fn fail(&self, step: Step) -> io::Result<()> {
            if step == self.0 {
                Err(io::Error::other("broken"))
            } else {
                Ok(())
            }
        }
    }
}
