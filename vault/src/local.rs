//! The local directory backend: the embedded default vault, a directory that
//! may be a mounted share at the recovery site.
//!
//! ```text
//! DIR/config/config
//! DIR/packs/ab/abcdef...     packs and pages fan out by the first two
//! DIR/pages/ab/abcdef...     characters of their name
//! DIR/roots/DISK/SEQUENCE
//! DIR/audit/...
//! DIR/tmp/                   objects being written (never listed; `gc` removes
//!                            those a dead writer left, once a day old)
//! DIR/trash/                 objects garbage collection discarded (never
//!                            listed; unlinked after the collection ends)
//! ```
//!
//! Garbage collection *discards* an object by renaming it into `trash/` —
//! a metadata operation — and unlinks it after its lease is released,
//! because an unlink is not cheap: on this project's test machine (ext4
//! mounted `-o discard`) unlinking a 32 MiB pack took 6 ms of wall time, so
//! deleting a few hundred packs held off every cycle for seconds.
//!
//! A put writes a temporary file, syncs it, renames it into place and syncs
//! the directory (`system::file::install`, the one durability policy), so an
//! object is either whole and durable or absent.
//!
//! Conditional writes (the contract in `backend.rs`):
//! - `create` links the fully written and synced temporary to the object's
//!   name with link(2) (`system::file::install_new`), which refuses,
//!   atomically and across processes, a name that exists: never a partial
//!   object, never an overwrite.
//! - An object's [`Version`] is a digest of its contents
//!   ([`Version::of_contents`]), like an object store's ETag of a
//!   single-part upload: nothing more is stored, and no on-disk format
//!   changes. Objects are never written in place (each write is a new file
//!   renamed in), so the bytes read and the version are of one object.
//! - `replace_if` needs a compare-and-rename, which POSIX does not have, so
//!   it compares and renames holding an exclusive `flock` (`system::lock`)
//!   on the object directory's lock file, `.lock` (never listed: names do not
//!   start with '.'). Every other change of a mutable object (`put`,
//!   `delete`, `discard` of configs, roots, leases and audit objects) takes
//!   the same lock, so none slips between the comparison and the rename. A
//!   lock, not a generation scheme, because the kernel drops it when its
//!   holder dies (no stale lock to judge) and it is held only for one
//!   comparison and one rename. Packs and pages are content-addressed and
//!   never replaced: they take no lock.
//!
//! Streamed objects ([`Backend::writer`], packs) take the same path; their
//! pieces aligned to [`DIRECT_ALIGN`] are written with O_DIRECT, so the
//! shipper's packs go from its buffers to the device without a copy into the
//! page cache (on this project's test machine a buffered write of 1 GiB to
//! ext4 cost 1.0 s of CPU, an O_DIRECT one 0.1 s). Where the filesystem
//! refuses O_DIRECT (at open or at the first write), the writer falls back
//! to buffered writes for that object.

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::backend::{check_name, Backend, Kind, ObjectWriter, Version, DIRECT_ALIGN};
use crate::error::VaultError;

/// The directory of discarded objects ([`Backend::discard`]).
const TRASH: &str = "trash";

/// Sequence numbers of temporary and trash object names, for the whole
/// process.
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A vault in a local directory.
pub struct LocalBackend {
    root: PathBuf,
}

fn fans_out(kind: Kind) -> bool {
    matches!(kind, Kind::Pack | Kind::Page)
}

fn sync_dir(dir: &Path) -> Result<(), VaultError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(VaultError::io("syncing directory", dir))
}

impl LocalBackend {
    /// Opens an existing vault directory (see `create` for a new one).
    pub fn open(root: &Path) -> Result<LocalBackend, VaultError> {
        let meta = fs::metadata(root).map_err(VaultError::io("opening vault directory", root))?;
        if !meta.is_dir() {
            return Err(VaultError::Io {
                what: "opening vault directory",
                path: root.to_owned(),
                source: std::io::Error::new(ErrorKind::NotADirectory, "not a directory"),
            });
        }
        Ok(LocalBackend { root: root.to_owned() })
    }

    /// Creates the vault directory (and its parents) if needed and opens it.
    /// Refuses a directory that holds anything but a vault's own
    /// directories (and a new filesystem's `lost+found`): a vault is not
    /// mixed into a directory that has other files. A directory that is
    /// already a vault is opened, for [`crate::Vault::init`] to refuse.
    /// Every directory and object of the vault is private (0700 and 0600),
    /// whatever the umask.
    pub fn create(root: &Path) -> Result<LocalBackend, VaultError> {
        match fs::read_dir(root) {
            Ok(entries) => {
                let own: Vec<&str> = Kind::ALL.iter().map(|k| k.prefix()).chain(["tmp", TRASH, "lost+found"]).collect();
                for e in entries {
                    let e = e.map_err(VaultError::io("listing vault directory", root))?;
                    let name = e.file_name();
                    if !own.iter().any(|o| name == *o) {
                        return Err(VaultError::DirectoryNotEmpty {
                            path: root.to_owned(),
                            entry: name.to_string_lossy().into_owned(),
                        });
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(VaultError::Io { what: "opening vault directory", path: root.to_owned(), source: e }),
        }
        private_dir_all(root).map_err(VaultError::io("creating vault directory", root))?;
        for kind in Kind::ALL {
            let d = root.join(kind.prefix());
            private_dir_all(&d).map_err(VaultError::io("creating vault directory", &d))?;
        }
        private_dir_all(&root.join("tmp")).map_err(VaultError::io("creating vault directory", root))?;
        sync_dir(root)?;
        LocalBackend::open(root)
    }

    fn path(&self, kind: Kind, name: &str) -> Result<PathBuf, VaultError> {
        check_name(name)?;
        let dir = self.root.join(kind.prefix());
        Ok(if fans_out(kind) {
            if name.len() < 3 || name.contains('/') {
                return Err(VaultError::BadName { name: name.into(), why: "pack and page names are single hex ids" });
            }
            dir.join(&name[..2]).join(name)
        } else {
            dir.join(name)
        })
    }

    /// Creates `dir` (0700) and any missing parents below the vault root, syncing
    /// each parent whose entries changed so the new directories are durable.
    fn make_dirs(&self, dir: &Path) -> Result<(), VaultError> {
        if dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            if parent != self.root {
                self.make_dirs(parent)?;
            }
            match fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => sync_dir(parent)?,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(VaultError::Io { what: "creating vault directory", path: dir.into(), source: e }),
            }
        }
        Ok(())
    }

    /// Starts an object of `kind` in `tmp/`, with an O_DIRECT handle on it
    /// where the filesystem allows one.
    fn local_writer(&self, kind: Kind) -> Result<LocalWriter<'_>, VaultError> {
        let tmp_dir = self.root.join("tmp");
        self.make_dirs(&tmp_dir)?;
        // Unique in this process (every backend instance shares the
        // counter); a name left by a crashed process with the same pid is
        // skipped.
        let (file, tmp) = loop {
            let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
            let tmp = tmp_dir.join(format!("{}.{}.{seq}", std::process::id(), kind.prefix()));
            match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp) {
                Ok(f) => break (f, tmp),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(VaultError::Io { what: "creating temporary vault object", path: tmp, source: e }),
            }
        };
        Ok(LocalWriter { backend: self, kind, tmp, file, direct: Direct::Untried, len: 0, done: false })
    }

    /// Takes the exclusive lock of the directory holding `path` (see the
    /// module documentation), creating its lock file if needed; released when
    /// the returned file is dropped. A directory that does not exist is
    /// `NotFound` (as an `Io` error whose source says so).
    fn lock_dir_of(&self, path: &Path) -> Result<File, VaultError> {
        let lock = path.parent().expect("object paths have a parent").join(".lock");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock)
            .map_err(VaultError::io("opening the vault directory's lock", &lock))?;
        system::lock::lock(&f, true).map_err(VaultError::io("locking", &lock))?;
        Ok(f)
    }

    /// The lock of an existing object's directory, for a delete or discard
    /// of a mutable object; `Err(None)` when the directory does not exist
    /// (nor, then, the object).
    fn lock_existing(&self, kind: Kind, path: &Path) -> Result<Option<File>, Option<VaultError>> {
        if fans_out(kind) {
            return Ok(None);
        }
        match self.lock_dir_of(path) {
            Ok(l) => Ok(Some(l)),
            Err(VaultError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => Err(None),
            Err(e) => Err(Some(e)),
        }
    }

    /// [`Self::lock_dir_of`] for an object of a mutable kind (not packs and
    /// pages, which are never replaced), creating its directory first.
    fn lock_mutable(&self, kind: Kind, path: &Path) -> Result<Option<File>, VaultError> {
        if fans_out(kind) {
            return Ok(None);
        }
        self.make_dirs(path.parent().expect("object paths have a parent"))?;
        self.lock_dir_of(path).map(Some)
    }

    fn not_found(kind: Kind, name: &str) -> VaultError {
        VaultError::NotFound { kind, name: name.to_string() }
    }

    fn open_object(&self, kind: Kind, name: &str) -> Result<(File, PathBuf), VaultError> {
        let path = self.path(kind, name)?;
        match File::open(&path) {
            Ok(f) => Ok((f, path)),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(Self::not_found(kind, name)),
            Err(e) => Err(VaultError::Io { what: "opening vault object", path, source: e }),
        }
    }
}

impl Backend for LocalBackend {
    fn put(&self, kind: Kind, name: &str, data: &[u8]) -> Result<(), VaultError> {
        let path = self.path(kind, name)?;
        let mut w = self.local_writer(kind)?;
        w.write(data)?;
        let _lock = self.lock_mutable(kind, &path)?;
        w.finish(name, Commit::Replace)
    }

    fn create(&self, kind: Kind, name: &str, data: &[u8]) -> Result<Version, VaultError> {
        self.path(kind, name)?;
        let mut w = self.local_writer(kind)?;
        w.write(data)?;
        // No lock: link(2) alone refuses an existing name, atomically.
        w.finish(name, Commit::Create)?;
        Ok(Version::of_contents(data))
    }

    fn get_versioned(&self, kind: Kind, name: &str) -> Result<(Vec<u8>, Version), VaultError> {
        let data = self.get(kind, name)?;
        let version = Version::of_contents(&data);
        Ok((data, version))
    }

    fn replace_if(&self, kind: Kind, name: &str, data: &[u8], version: &Version) -> Result<Version, VaultError> {
        let path = self.path(kind, name)?;
        // Written and synced before the lock is taken: the lock covers one
        // comparison and one rename.
        let mut w = self.local_writer(kind)?;
        w.write(data)?;
        let conflict = || VaultError::Conflict { kind, name: name.to_string() };
        let _lock = match self.lock_dir_of(&path) {
            Ok(l) => l,
            // No directory: no object either.
            Err(VaultError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => return Err(conflict()),
            Err(e) => return Err(e),
        };
        match self.get(kind, name) {
            Ok(now) if Version::of_contents(&now) == *version => {}
            Ok(_) | Err(VaultError::NotFound { .. }) => return Err(conflict()),
            Err(e) => return Err(e),
        }
        w.finish(name, Commit::Replace)?;
        Ok(Version::of_contents(data))
    }

    fn writer(&self, kind: Kind) -> Result<Option<Box<dyn ObjectWriter + '_>>, VaultError> {
        Ok(Some(Box::new(self.local_writer(kind)?)))
    }

    fn get(&self, kind: Kind, name: &str) -> Result<Vec<u8>, VaultError> {
        let path = self.path(kind, name)?;
        match fs::read(&path) {
            Ok(v) => Ok(v),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(Self::not_found(kind, name)),
            Err(e) => Err(VaultError::Io { what: "reading vault object", path, source: e }),
        }
    }

    fn get_range(&self, kind: Kind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, VaultError> {
        let (f, path) = self.open_object(kind, name)?;
        let size = f.metadata().map_err(VaultError::io("reading vault object", &path))?.len();
        let end = offset.saturating_add(len);
        if end > size {
            return Err(VaultError::ShortObject { kind, name: name.into(), size, offset, end });
        }
        let mut buf = vec![
            0u8;
            usize::try_from(len)
                .map_err(|_| VaultError::BadName { name: name.into(), why: "range too large" })?
        ];
        f.read_exact_at(&mut buf, offset).map_err(VaultError::io("reading vault object", &path))?;
        Ok(buf)
    }

    fn size(&self, kind: Kind, name: &str) -> Result<Option<u64>, VaultError> {
        let path = self.path(kind, name)?;
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(VaultError::Io { what: "reading vault object", path, source: e }),
        }
    }

    fn list(&self, kind: Kind, prefix: &str) -> Result<Vec<String>, VaultError> {
        let base = self.root.join(kind.prefix());
        let mut out = Vec::new();
        let mut stack = vec![(base.clone(), String::new())];
        while let Some((dir, rel)) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(VaultError::Io { what: "listing vault directory", path: dir, source: e }),
            };
            for entry in entries {
                let entry = entry.map_err(VaultError::io("listing vault directory", &dir))?;
                let Some(file_name) = entry.file_name().to_str().map(str::to_string) else { continue };
                let ty = entry.file_type().map_err(VaultError::io("listing vault directory", entry.path()))?;
                if ty.is_dir() {
                    // Fan-out directories do not appear in names.
                    let rel = if fans_out(kind) { rel.clone() } else { format!("{rel}{file_name}/") };
                    stack.push((entry.path(), rel));
                } else if ty.is_file() {
                    let name = format!("{rel}{file_name}");
                    if name.starts_with(prefix) && check_name(&name).is_ok() {
                        out.push(name);
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, kind: Kind, name: &str) -> Result<(), VaultError> {
        let path = self.path(kind, name)?;
        let _lock = match self.lock_existing(kind, &path) {
            Ok(l) => l,
            Err(None) => return Err(Self::not_found(kind, name)),
            Err(Some(e)) => return Err(e),
        };
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(path.parent().expect("object paths have a parent")),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(Self::not_found(kind, name)),
            Err(e) => Err(VaultError::Io { what: "deleting vault object", path, source: e }),
        }
    }

    fn discard(&self, kind: Kind, name: &str) -> Result<(), VaultError> {
        let path = self.path(kind, name)?;
        let trash = self.root.join(TRASH);
        self.make_dirs(&trash)?;
        let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let to = trash.join(format!("{}.{}.{seq}.{}", std::process::id(), kind.prefix(), name.replace('/', "~")));
        let _lock = match self.lock_existing(kind, &path) {
            Ok(l) => l,
            Err(None) => return Err(Self::not_found(kind, name)),
            Err(Some(e)) => return Err(e),
        };
        match fs::rename(&path, &to) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(Self::not_found(kind, name)),
            Err(e) => Err(VaultError::Io { what: "moving vault object to the trash", path, source: e }),
        }
    }

    fn empty_trash(&self) -> Result<(u64, u64), VaultError> {
        let (mut objects, mut bytes) = (0, 0);
        for entry in dir_entries(&self.root.join(TRASH))? {
            let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
            // Gone: another collection emptied it first.
            if remove_unless_gone(&entry.path(), "emptying the vault's trash")? {
                (objects, bytes) = (objects + 1, bytes + len);
            }
        }
        Ok((objects, bytes))
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn protection(&self) -> Result<crate::backend::Protection, VaultError> {
        Ok(crate::backend::Protection::None {
            why: "a directory: whoever can write it can delete points; replicate to a vault server or a locked \
                  bucket for protection from a stolen host"
                .into(),
        })
    }

    fn sweep_unfinished(
        &self,
        older_than: std::time::Duration,
        dry_run: bool,
    ) -> Result<Vec<(String, u64)>, VaultError> {
        let now = std::time::SystemTime::now();
        let mut out = Vec::new();
        for entry in dir_entries(&self.root.join("tmp"))? {
            let path = entry.path();
            let meta = match entry.metadata() {
                Ok(m) if m.is_file() => m,
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::NotFound => continue, // committed meanwhile
                Err(e) => return Err(VaultError::Io { what: "reading vault object", path, source: e }),
            };
            // A clock in the future (or a share's skewed clock) reads as young.
            let age = meta.modified().ok().and_then(|m| now.duration_since(m).ok()).unwrap_or_default();
            if age <= older_than {
                continue;
            }
            if !dry_run && !remove_unless_gone(&path, "deleting vault object")? {
                continue;
            }
            out.push((format!("tmp/{}", entry.file_name().to_string_lossy()), meta.len()));
        }
        out.sort();
        Ok(out)
    }
}

/// The entries of a vault directory; none if it does not exist.
fn dir_entries(dir: &Path) -> Result<Vec<fs::DirEntry>, VaultError> {
    match fs::read_dir(dir) {
        Ok(entries) => entries.collect::<Result<_, _>>().map_err(VaultError::io("listing vault directory", dir)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(VaultError::Io { what: "listing vault directory", path: dir.into(), source: e }),
    }
}

/// Removes a file; `false` if it was already gone.
fn remove_unless_gone(path: &Path, what: &'static str) -> Result<bool, VaultError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(VaultError::Io { what, path: path.into(), source: e }),
    }
}

/// An object streamed into the vault's `tmp/` that its writer reads back
/// and checks before it gets a name: the vault server's path for an upload
/// (`site/src/checks.rs`), so nothing unchecked is ever visible. Dropped
/// without [`StagedObject::create`], it leaves nothing behind.
pub struct StagedObject<'a> {
    writer: LocalWriter<'a>,
    reader: Option<File>,
    /// Bytes whose writeback was started ([`WRITEBACK_STEP`]).
    written_back: u64,
}

/// A staged object's writeback is started every this many bytes: the data
/// arrives in pieces too small and unaligned for O_DIRECT, goes through
/// the page cache (where the checks read it back), and reaches the device
/// while the rest is still arriving, instead of all at the final fsync.
const WRITEBACK_STEP: u64 = 8 << 20;

impl LocalBackend {
    /// Starts a [`StagedObject`] of `kind` in `tmp/`.
    pub fn stage(&self, kind: Kind) -> Result<StagedObject<'_>, VaultError> {
        Ok(StagedObject { writer: self.local_writer(kind)?, reader: None, written_back: 0 })
    }
}

impl StagedObject<'_> {
    /// Appends `data` (as [`ObjectWriter::write`]).
    pub fn write(&mut self, data: &[u8]) -> Result<(), VaultError> {
        self.writer.write(data)?;
        let len = self.writer.len;
        if len - self.written_back >= WRITEBACK_STEP {
            // A hint: an error here shows again at the fsync of `create`.
            let _ = system::file::start_writeback(&self.writer.file, self.written_back, len - self.written_back);
            self.written_back = len;
        }
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.writer.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.writer.len == 0
    }

    /// Reads `buf.len()` bytes written at `offset`.
    pub fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), VaultError> {
        let tmp = self.writer.tmp.clone();
        if self.reader.is_none() {
            self.reader = Some(File::open(&tmp).map_err(VaultError::io("reading temporary vault object", &tmp))?);
        }
        let f = self.reader.as_ref().expect("opened above");
        f.read_exact_at(buf, offset).map_err(VaultError::io("reading temporary vault object", &tmp))
    }

    /// Makes the object durable as `name` only if no object of that name
    /// exists (link(2), as [`Backend::create`]): [`VaultError::AlreadyExists`]
    /// otherwise, and the temporary is removed.
    pub fn create(mut self, name: &str) -> Result<(), VaultError> {
        self.writer.finish(name, Commit::Create)?;
        self.drop_cached();
        Ok(())
    }

    /// Makes the object durable as `name`, replacing one of that name
    /// (taking the directory's lock like [`Backend::put`]).
    pub fn replace(mut self, name: &str) -> Result<(), VaultError> {
        let path = self.writer.backend.path(self.writer.kind, name)?;
        let _lock = self.writer.backend.lock_mutable(self.writer.kind, &path)?;
        self.writer.finish(name, Commit::Replace)?;
        self.drop_cached();
        Ok(())
    }

    /// Once the object is durable, its pages leave the page cache: a
    /// server receives object after object that nobody reads soon, and the
    /// memory they held is the next upload's at once. (Memory never
    /// touched, or handed back to a hypervisor, costs several times more
    /// to write into: on this project's test VMs a first 2 GiB buffered
    /// write spent 5.4 s in the kernel, a second one into freed pages 0.6
    /// s.)
    fn drop_cached(&self) {
        let _ = system::file::drop_cached(&self.writer.file);
    }
}

/// An object being written to `tmp/` (see [`LocalBackend::local_writer`]).
struct LocalWriter<'a> {
    backend: &'a LocalBackend,
    kind: Kind,
    tmp: PathBuf,
    /// Buffered handle: unaligned pieces, and the sync at commit.
    file: File,
    /// O_DIRECT handle on the same file, opened at the first aligned piece
    /// (small objects never need one).
    direct: Direct,
    /// Bytes written so far.
    len: u64,
    /// Committed (renamed away) or abandoned after a failure.
    done: bool,
}

/// Whether a [`LocalWriter`] writes aligned pieces with O_DIRECT.
enum Direct {
    /// No aligned piece yet.
    Untried,
    /// Open, and the filesystem has taken every direct write so far.
    Open(File),
    /// The filesystem refused O_DIRECT (at open or at a write).
    Refused,
}

fn aligned(n: u64) -> bool {
    n.is_multiple_of(DIRECT_ALIGN as u64)
}

impl LocalWriter<'_> {
    fn failed(&mut self, what: &'static str, e: std::io::Error) -> VaultError {
        let _ = fs::remove_file(&self.tmp);
        self.done = true;
        VaultError::Io { what, path: self.tmp.clone(), source: e }
    }
}

impl ObjectWriter for LocalWriter<'_> {
    fn write(&mut self, data: &[u8]) -> Result<(), VaultError> {
        if self.done {
            return Err(VaultError::Io {
                what: "writing vault object",
                path: self.tmp.clone(),
                source: std::io::Error::other("an earlier write to this object failed"),
            });
        }
        let fits = aligned(data.as_ptr() as u64) && aligned(data.len() as u64) && aligned(self.len);
        if fits && matches!(self.direct, Direct::Untried) {
            self.direct = match OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(&self.tmp) {
                Ok(f) => Direct::Open(f),
                Err(_) => Direct::Refused,
            };
        }
        if let (true, Direct::Open(direct)) = (fits, &self.direct) {
            match direct.write_all_at(data, self.len) {
                Ok(()) => {
                    self.len += data.len() as u64;
                    return Ok(());
                }
                // The filesystem opened O_DIRECT but does not write it: the
                // range is written again below, buffered, as is all the rest.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.direct = Direct::Refused,
                Err(e) => return Err(self.failed("writing vault object", e)),
            }
        }
        if let Err(e) = self.file.write_all_at(data, self.len) {
            return Err(self.failed("writing vault object", e));
        }
        self.len += data.len() as u64;
        Ok(())
    }

    fn commit(mut self: Box<Self>, name: &str) -> Result<(), VaultError> {
        let path = self.backend.path(self.kind, name)?;
        let _lock = self.backend.lock_mutable(self.kind, &path)?;
        self.finish(name, Commit::Replace)
    }
}

/// How a [`LocalWriter`] puts its object in place.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Commit {
    /// Over any object of that name (rename).
    Replace,
    /// Only where there is none (link).
    Create,
}

impl LocalWriter<'_> {
    /// Makes the object durable as `name` (through `system::file`). The
    /// caller holds the directory's lock if the object is mutable and may
    /// exist. On an error before the object is in place, the temporary is
    /// removed when the writer is dropped.
    fn finish(&mut self, name: &str, how: Commit) -> Result<(), VaultError> {
        let path = self.backend.path(self.kind, name)?;
        let dir = path.parent().expect("object paths have a parent").to_owned();
        self.backend.make_dirs(&dir)?;
        // Leases too are durable: the vault server keeps its hosts' leases
        // in a local backend, and a lease lost in a crash of the site would
        // let a GC there delete the packs of a host's cycle still running.
        let installed = match how {
            Commit::Replace => system::file::install(&self.tmp, &path),
            Commit::Create => system::file::install_new(&self.tmp, &path),
        };
        let e = match installed {
            Ok(()) => {
                self.done = true;
                return Ok(());
            }
            Err(e) => e,
        };
        Err(match e.step {
            system::file::Step::SyncFile => {
                VaultError::Io { what: "writing vault object", path: self.tmp.clone(), source: e.source }
            }
            system::file::Step::Rename if how == Commit::Create && e.source.kind() == ErrorKind::AlreadyExists => {
                VaultError::AlreadyExists { kind: self.kind, name: name.to_string() }
            }
            system::file::Step::Rename => {
                VaultError::Io { what: "renaming vault object into place", path, source: e.source }
            }
            system::file::Step::SyncDir => {
                // In place already: the temporary is gone (or is the object).
                self.done = true;
                VaultError::Io { what: "syncing directory", path: e.dir, source: e.source }
            }
        })
    }
}

impl Drop for LocalWriter<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Creates `dir` and its missing parents with mode 0700, whatever the umask
/// (an existing directory is left as it is).
fn private_dir_all(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}
