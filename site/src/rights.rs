//! What each host may do in each vault ("Rights" in FORMAT.md), and the
//! grants journal that records what each host wrote.
//!
//! The vault is append-only from the hosts' side: a host creates packs,
//! pages, roots of its own chains and audit segments it then only extends,
//! takes and releases its own leases, and reads what it wrote. It never
//! deletes or replaces a root, a pack, a page or the config. Prune and GC run
//! at the site, by path.
//!
//! What a host wrote is journaled in `GRANTS/VAULT/HOST`, one `KIND/NAME` a
//! line, appended and fdatasync'ed before the object becomes visible (so
//! before the write is acknowledged); the
//! server loads a vault's journals the first time it serves that vault. A
//! chain (`DISK` of a root `DISK/SEQUENCE`) belongs to the first host whose
//! root named it.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use vault::Kind;

/// What a request does to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// GET or HEAD (or asking whether it is missing).
    Read,
    /// PUT with `If-None-Match: *`, or a stream.
    Create,
    /// PUT without a condition.
    Put,
    /// PUT with `If-Match`.
    Replace,
    /// DELETE.
    Delete,
}

/// Why a host may not do something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// A failure of the grants journal.
#[derive(Debug, thiserror::Error)]
#[error("the grants journal {}: {source}", path.display())]
pub struct GrantsError {
    /// The journal file.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

fn chain_of(name: &str) -> &str {
    name.split_once('/').map_or(name, |(disk, _)| disk)
}

const APPEND_ONLY: &str = "the vault is append-only for hosts: prune and garbage collection run at the site \
                           (`lifeboat vault gc PATH`, `lifeboat prune --vault PATH`), never from a host";

/// The grants of one vault.
#[derive(Default)]
struct VaultGrants {
    by_host: HashMap<String, HashSet<String>>,
    chain_owner: HashMap<String, String>,
    files: HashMap<String, File>,
}

/// The rights table over the grants journal of every served vault.
pub struct Grants {
    dir: PathBuf,
    vaults: Mutex<HashMap<String, VaultGrants>>,
}

impl Grants {
    /// The journal kept in `dir` (created if needed; `SITE/grants`).
    pub fn open(dir: &Path) -> Result<Grants, GrantsError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| GrantsError { path: dir.into(), source })?;
        Ok(Grants { dir: dir.into(), vaults: Mutex::new(HashMap::new()) })
    }

    fn load(&self, vault: &str) -> Result<VaultGrants, GrantsError> {
        let dir = self.dir.join(vault);
        let mut g = VaultGrants::default();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(g),
            Err(source) => return Err(GrantsError { path: dir, source }),
        };
        let mut hosts: Vec<(String, PathBuf)> = Vec::new();
        for e in entries {
            let e = e.map_err(|source| GrantsError { path: dir.clone(), source })?;
            if let Some(host) = e.file_name().to_str() {
                hosts.push((host.to_string(), e.path()));
            }
        }
        hosts.sort();
        for (host, path) in hosts {
            let text = fs::read_to_string(&path).map_err(|source| GrantsError { path: path.clone(), source })?;
            let set = g.by_host.entry(host.clone()).or_default();
            // A torn last line (a crash mid-append) was never acknowledged.
            let complete =
                if text.ends_with('\n') { &text[..] } else { &text[..text.rfind('\n').map_or(0, |i| i + 1)] };
            for line in complete.lines() {
                if let Some(root) = line.strip_prefix("roots/") {
                    let _ = g.chain_owner.entry(chain_of(root).to_string()).or_insert_with(|| host.clone());
                }
                let _ = set.insert(line.to_string());
            }
        }
        Ok(g)
    }

    fn with<T>(&self, vault: &str, f: impl FnOnce(&mut VaultGrants) -> T) -> Result<T, GrantsError> {
        let mut vaults = self.vaults.lock().unwrap_or_else(|p| p.into_inner());
        if !vaults.contains_key(vault) {
            let g = self.load(vault)?;
            let _ = vaults.insert(vault.to_string(), g);
        }
        Ok(f(vaults.get_mut(vault).expect("loaded above")))
    }

    /// Whether `host` may do `op` to `kind/name` in `vault`; `exists` says
    /// whether the object is there now (for a put that is a create).
    pub fn check(
        &self,
        vault: &str,
        host: &str,
        op: Op,
        kind: Kind,
        name: &str,
        exists: bool,
    ) -> Result<Result<(), Refusal>, GrantsError> {
        let object = format!("{}/{name}", kind.prefix());
        self.with(vault, |g| {
            let mine = g.by_host.get(host).is_some_and(|s| s.contains(&object));
            decide(op, kind, name, exists, mine, g.chain_owner.get(chain_of(name)).map(String::as_str), host)
        })
    }

    /// Whether `host` may read `kind/name` (for listings and missing).
    pub fn readable(&self, vault: &str, host: &str, kind: Kind, name: &str) -> Result<bool, GrantsError> {
        Ok(self.check(vault, host, Op::Read, kind, name, true)?.is_ok())
    }

    /// Records that `host` wrote `kind/name` in `vault`, durably (append,
    /// fdatasync) unless it is recorded already.
    pub fn record(&self, vault: &str, host: &str, kind: Kind, name: &str) -> Result<(), GrantsError> {
        let object = format!("{}/{name}", kind.prefix());
        let dir = self.dir.join(vault);
        self.with(vault, |g| {
            if g.by_host.get(host).is_some_and(|s| s.contains(&object)) {
                return Ok(());
            }
            let path = dir.join(host);
            if !g.files.contains_key(host) {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)
                    .map_err(|source| GrantsError { path: dir.clone(), source })?;
                let f = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|source| GrantsError { path: path.clone(), source })?;
                // The new journal's directory entry, durable before its first grant.
                File::open(&dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|source| GrantsError { path: dir.clone(), source })?;
                let _ = g.files.insert(host.to_string(), f);
            }
            let f = g.files.get_mut(host).expect("opened above");
            f.write_all(format!("{object}\n").as_bytes())
                .and_then(|()| f.sync_data())
                .map_err(|source| GrantsError { path: path.clone(), source })?;
            if kind == Kind::Root {
                let _ = g.chain_owner.entry(chain_of(name).to_string()).or_insert_with(|| host.to_string());
            }
            let _ = g.by_host.entry(host.to_string()).or_default().insert(object);
            Ok(())
        })?
    }
}

/// The rights table. `mine`: `host` wrote this object (it is in its
/// grants); `owner`: the host owning the chain a root name belongs to.
pub fn decide(
    op: Op,
    kind: Kind,
    name: &str,
    exists: bool,
    mine: bool,
    owner: Option<&str>,
    host: &str,
) -> Result<(), Refusal> {
    let refuse = |why: String| Err(Refusal(why));
    let object = format!("{}/{name}", kind.prefix());
    match (kind, op) {
        (_, Op::Delete) if kind != Kind::Lease => refuse(format!("hosts may not delete {object}: {APPEND_ONLY}")),
        (Kind::Config, Op::Read) => Ok(()),
        (Kind::Config, Op::Create) => Ok(()),
        (Kind::Config, Op::Put) if !exists => Ok(()),
        (Kind::Config, _) => {
            refuse(format!("hosts may not replace the vault config {object}; it is changed at the site"))
        }
        (Kind::Lease, Op::Read | Op::Create) => Ok(()),
        (Kind::Lease, Op::Put) if !exists => Ok(()),
        // The store answers: a replacement of no object is a conflict.
        (Kind::Lease, Op::Replace) if !exists => Ok(()),
        (Kind::Lease, _) if mine => Ok(()),
        (Kind::Lease, _) => {
            refuse(format!("{object} is another host's lease (or the site's); a host changes only its own"))
        }
        (Kind::Root, Op::Read) if mine || owner == Some(host) => Ok(()),
        (Kind::Root, Op::Read) => refuse(format!("{object} is a point of another host's disk chain")),
        (Kind::Root, Op::Create | Op::Put) if owner.is_some_and(|o| o != host) => refuse(format!(
            "disk chain {:?} belongs to another host; a host writes only its own chains",
            chain_of(name)
        )),
        (Kind::Root, Op::Create) => Ok(()),
        (Kind::Root, Op::Put) if !exists => Ok(()),
        (Kind::Root, _) => refuse(format!("hosts never replace a point's root ({object}); {APPEND_ONLY}")),
        (Kind::Pack | Kind::Page, Op::Create | Op::Put) => Ok(()),
        (Kind::Pack | Kind::Page | Kind::Audit, Op::Read) if mine => Ok(()),
        (Kind::Pack | Kind::Page | Kind::Audit, Op::Read) => {
            refuse(format!("{object} was not written by this host; a host reads only what it wrote"))
        }
        (Kind::Pack | Kind::Page, _) => refuse(format!("hosts never replace {object}: it is content-addressed")),
        (Kind::Audit, Op::Create) => Ok(()),
        (Kind::Audit, Op::Put) if !exists || mine => Ok(()),
        (Kind::Audit, Op::Replace) if mine => Ok(()),
        (Kind::Audit, _) => refuse(format!("{object} is another host's audit segment")),
        _ => refuse(format!("{op:?} of {object} is not something a host may do")),
    }
}
