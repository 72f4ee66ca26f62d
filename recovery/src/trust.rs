//! What Lifeboat runs as root must be as private as the key file, and what it
//! writes is private whatever the umask.
//!
//! [`check_private_executable`] is the one rule for every file Lifeboat hands
//! to the kernel or a shell with root's rights: app-consistency hooks, plan
//! scripts, and the kernel and initrd a failover boots. Each is checked when
//! it is configured (`vm define`, loading a plan) and again right before each
//! use, since a file made loose later is as dangerous as one loose from the
//! start.
//!
//! The rule: the file, every directory above it, and every symbolic link on
//! the way (with the directories above each link) are owned by root or by the
//! user Lifeboat runs as, and are not writable by group or others. Anyone who
//! can write one of them can replace what runs. One exception: a directory
//! owned by root with the sticky bit set (like `/tmp`) may be writable by
//! all, because there a user can rename or delete only the entries they own;
//! an entry owned by root or by us stays ours. The entry itself is still
//! checked, so `/tmp/hook.sh` owned by `nobody` is refused.
//!
//! [`private_dir_all`] and [`private_file`] create directories (0700) and
//! files (0600) that only their owner can read, whatever the umask.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Symbolic links followed before giving up (the kernel's own limit).
const MAX_LINKS: usize = 40;

/// Why a file cannot be trusted to run (or boot) as root.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The file or a directory above it is writable by group or others.
    #[error(
        "refusing {what} {given}: {path} is writable by {who} (mode {mode:04o}, owner uid {uid}), so another user could \
         change what Lifeboat runs as root; run `chmod go-w {path}`"
    )]
    Writable {
        /// What the file is for (`pre-cut hook`, `plan script`, `boot kernel`).
        what: String,
        /// The path as configured.
        given: PathBuf,
        /// The offending file, directory or link.
        path: PathBuf,
        /// Its mode (permission bits).
        mode: u32,
        /// Its owner.
        uid: u32,
        /// `group`, `others`, or `group and others`.
        who: &'static str,
    },
    /// The file or a directory above it belongs to another user.
    #[error(
        "refusing {what} {given}: {path} is owned by uid {uid} (mode {mode:04o}), not by root or uid {euid} who runs \
         Lifeboat, so that user could change what Lifeboat runs as root; run `chown root {path}`"
    )]
    Owner {
        /// What the file is for.
        what: String,
        /// The path as configured.
        given: PathBuf,
        /// The offending file, directory or link.
        path: PathBuf,
        /// Its mode (permission bits).
        mode: u32,
        /// Its owner.
        uid: u32,
        /// The user Lifeboat runs as.
        euid: u32,
    },
    /// A component could not be examined (missing, unreadable, a link loop).
    #[error("refusing {what} {given}: cannot check {}: {source}", path.display())]
    Io {
        /// What the file is for.
        what: String,
        /// The path as configured.
        given: PathBuf,
        /// The component that failed.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// Checks that `path` (absolute) may be run or booted as root: see the
/// module's rule. `what` names its role in messages (`pre-cut hook`).
pub fn check_private_executable(path: &Path, what: &str) -> Result<(), TrustError> {
    let euid = effective_uid();
    let mut walk = Walk { what, given: path, euid, seen: HashSet::new(), links: 0 };
    let start = if path.is_absolute() { path.to_path_buf() } else { Path::new("/").join(path) };
    walk.check(&start)
}

struct Walk<'a> {
    what: &'a str,
    given: &'a Path,
    euid: u32,
    seen: HashSet<PathBuf>,
    links: usize,
}

impl Walk<'_> {
    /// Checks `p` and, first, everything its resolution goes through: its
    /// directory (recursively up to `/`), and if `p` is a link, its target.
    fn check(&mut self, p: &Path) -> Result<(), TrustError> {
        if !self.seen.insert(p.to_path_buf()) {
            return Ok(());
        }
        let parent = match p.components().next_back() {
            Some(Component::RootDir) | None => None,
            _ => p.parent(),
        };
        if let Some(parent) = parent {
            self.check(parent)?;
        }
        let meta = fs::symlink_metadata(p).map_err(|e| self.io(p, e))?;
        if meta.file_type().is_symlink() {
            // A link's own mode means nothing (always 0777); who can replace
            // it is decided by its directory, checked above. Follow it.
            self.links += 1;
            if self.links > MAX_LINKS {
                return Err(self.io(p, io::Error::other("too many levels of symbolic links")));
            }
            let target = fs::read_link(p).map_err(|e| self.io(p, e))?;
            let next = match (target.is_absolute(), parent) {
                (true, _) | (false, None) => target,
                (false, Some(dir)) => dir.join(target),
            };
            return self.check(&next);
        }
        self.entry(p, &meta)
    }

    fn entry(&self, p: &Path, meta: &fs::Metadata) -> Result<(), TrustError> {
        let (uid, mode) = (meta.uid(), meta.mode() & 0o7777);
        if uid != 0 && uid != self.euid {
            return Err(TrustError::Owner {
                what: self.what.into(),
                given: self.given.into(),
                path: p.into(),
                mode,
                uid,
                euid: self.euid,
            });
        }
        // Root's sticky directories (/tmp): others may create entries but not
        // replace ours, so writable-by-all is safe there.
        let sticky_root_dir = meta.is_dir() && uid == 0 && mode & 0o1000 != 0;
        let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
            _ if sticky_root_dir => None,
            (true, true) => Some("group and others"),
            (true, false) => Some("group"),
            (false, true) => Some("others"),
            (false, false) => None,
        };
        match who {
            Some(who) => Err(TrustError::Writable {
                what: self.what.into(),
                given: self.given.into(),
                path: p.into(),
                mode,
                uid,
                who,
            }),
            None => Ok(()),
        }
    }

    fn io(&self, p: &Path, source: io::Error) -> TrustError {
        TrustError::Io { what: self.what.into(), given: self.given.into(), path: p.into(), source }
    }
}

/// The user this process runs as.
pub fn effective_uid() -> u32 {
    system::host::effective_uid()
}

/// Creates `dir` and its missing parents with mode 0700, whatever the umask
/// (an existing directory keeps its mode).
pub fn private_dir_all(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Creates or truncates `path` for writing, mode 0600 whatever the umask
/// (also when it existed with a looser mode).
pub fn private_file(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// Writes `bytes` to `path` as [`private_file`] creates it (mode 0600).
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    io::Write::write_all(&mut private_file(path)?, bytes)
}

/// One mode [`make_private`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tightened {
    /// The file, directory or socket.
    pub path: PathBuf,
    /// Its mode before.
    pub from: u32,
    /// Its mode now.
    pub to: u32,
}

impl std::fmt::Display for Tightened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} from {:04o} to {:04o}", self.path.display(), self.from, self.to)
    }
}

/// Takes group's and others' permission bits off `root` and, if `recursive`,
/// everything below it (links are not followed: a link's mode means
/// nothing). For a home or vault created by an older Lifeboat under a loose
/// umask. A missing `root` is not an error. Returns what it changed.
pub fn make_private(root: &Path, recursive: bool) -> io::Result<Vec<Tightened>> {
    let mut changed = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = match fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", p.display()))),
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        let from = meta.mode() & 0o7777;
        if from & 0o077 != 0 {
            let to = from & !0o077;
            fs::set_permissions(&p, fs::Permissions::from_mode(to))
                .map_err(|e| io::Error::new(e.kind(), format!("chmod {to:o} {}: {e}", p.display())))?;
            changed.push(Tightened { path: p.clone(), from, to });
        }
        if recursive && meta.is_dir() {
            for entry in fs::read_dir(&p).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn chmod(p: &Path, mode: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn private_files_pass_and_loose_ones_are_refused_naming_the_fix() {
        let dir = tempfile::tempdir().unwrap(); // under /tmp: root's sticky dir
        chmod(dir.path(), 0o700);
        let hook = dir.path().join("hook.sh");
        fs::write(&hook, "#!/bin/sh\n").unwrap();
        chmod(&hook, 0o700);
        check_private_executable(&hook, "pre-cut hook").unwrap();

        chmod(&hook, 0o722);
        let e = check_private_executable(&hook, "pre-cut hook").unwrap_err().to_string();
        assert!(e.contains("group and others") && e.contains(&format!("chmod go-w {}", hook.display())), "{e}");

        chmod(&hook, 0o700);
        chmod(dir.path(), 0o770);
        let e = check_private_executable(&hook, "pre-cut hook").unwrap_err().to_string();
        assert!(e.contains(&format!("{} is writable by group", dir.path().display())), "{e}");
    }

    #[test]
    fn a_link_is_followed_and_its_directory_checked_too() {
        let dir = tempfile::tempdir().unwrap();
        let (safe, loose) = (dir.path().join("safe"), dir.path().join("loose"));
        fs::create_dir(&safe).unwrap();
        fs::create_dir(&loose).unwrap();
        chmod(&safe, 0o755);
        chmod(&loose, 0o777);
        let hook = safe.join("hook.sh");
        fs::write(&hook, "#!/bin/sh\n").unwrap();
        chmod(&hook, 0o755);
        // The link lives in a world-writable directory: anyone can re-point it.
        let link = loose.join("hook.sh");
        symlink(&hook, &link).unwrap();
        let e = check_private_executable(&link, "plan script").unwrap_err().to_string();
        assert!(e.contains(&format!("{} is writable by group and others", loose.display())), "{e}");
        // A link in a private directory to a loose target: the target is checked.
        let link2 = safe.join("to-loose");
        let target = loose.join("x");
        fs::write(&target, "").unwrap();
        symlink(&target, &link2).unwrap();
        let e = check_private_executable(&link2, "plan script").unwrap_err().to_string();
        assert!(e.contains(&format!("{} is writable by group and others", loose.display())), "{e}");
        // And a relative link to a private file is fine.
        let link3 = safe.join("rel");
        symlink("hook.sh", &link3).unwrap();
        check_private_executable(&link3, "plan script").unwrap();
    }

    #[test]
    fn private_creation_ignores_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("a/b");
        private_dir_all(&d).unwrap();
        let f = d.join("f");
        fs::write(&f, "").unwrap();
        chmod(&f, 0o666);
        drop(private_file(&f).unwrap());
        assert_eq!(fs::metadata(dir.path().join("a")).unwrap().mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
    }
}
