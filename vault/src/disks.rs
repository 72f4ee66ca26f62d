//! Disks by name and identity, read with the key.
//!
//! The vault stores a disk's points under its **namespace** (root format 2:
//! a keyed id of the disk's identity, `Keys::disk_namespace`), so it never
//! sees a disk's name and two disks of one name never share a chain. Points
//! written before that (root format 1) sit under the disk's name, with the
//! name and identity in the clear, and are still read: a disk's points are
//! those of its namespace plus the format-1 points under its name that carry
//! its identity (a format-1 chain may interleave two disks of one name;
//! they are told apart here by identity).
//!
//! Mapping a name to its disks needs the key: one authenticated root per
//! namespace chain (its newest readable one) tells the chain's name and
//! host. Without the key the vault shows chains, never names.

use disk_format::{namespace_hex, Keys};

use crate::error::VaultError;
use crate::store::{PointSummary, Vault};

/// The points of one disk identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPoints {
    /// The disk's name.
    pub name: String,
    /// The disk's identity (the state file's `disk_id`).
    pub disk_id: [u8; 16],
    /// The host that cut its newest readable format-2 point; empty when it
    /// has only format-1 points (which did not record the host).
    pub host: String,
    /// Its points, ascending by sequence; each names the chain it is in.
    pub points: Vec<PointSummary>,
}

impl DiskPoints {
    /// The newest point (highest sequence), damaged or not.
    pub fn newest(&self) -> Option<&PointSummary> {
        self.points.last()
    }

    /// Point `sequence`.
    pub fn point(&self, sequence: u64) -> Option<&PointSummary> {
        self.points.iter().find(|p| p.sequence == sequence)
    }

    /// The identity as lowercase hex, as `points --json` shows it.
    pub fn disk_id_hex(&self) -> String {
        disk_format::ids::hex(&self.disk_id)
    }
}

/// A chain of the vault that the key could not tell the disk of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadableChain {
    /// The chain's name under `roots/`.
    pub chain: String,
    /// Why (every root damaged, or made with another key).
    pub detail: String,
}

/// Every disk of a vault, by identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Disks {
    /// One entry per disk identity, sorted by name, then newest point.
    pub disks: Vec<DiskPoints>,
    /// Chains whose disk could not be read.
    pub unreadable: Vec<UnreadableChain>,
}

/// Which of several disks of one name is meant: by identity, or by the
/// host that cut its points. Empty: the only one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskChoice {
    /// The disk's identity (`points --json` shows it as `disk_id`).
    pub disk_id: Option<[u8; 16]>,
    /// The host that cut its newest point.
    pub host: Option<String>,
}

impl DiskChoice {
    /// Whether `d` is acceptable.
    pub fn accepts(&self, d: &DiskPoints) -> bool {
        self.disk_id.is_none_or(|id| id == d.disk_id) && self.host.as_deref().is_none_or(|h| h == d.host)
    }
}

impl Disks {
    /// The disks named `name`.
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a DiskPoints> + 'a {
        self.disks.iter().filter(move |d| d.name == name)
    }

    /// The one disk named `name` that `choice` accepts; an error naming the
    /// candidates when there are several, and what the vault holds when
    /// there is none.
    pub fn pick(&self, name: &str, choice: &DiskChoice, location: &str) -> Result<&DiskPoints, VaultError> {
        let named: Vec<&DiskPoints> = self.disks.iter().filter(|d| d.name == name).collect();
        let fits: Vec<&DiskPoints> = named.iter().copied().filter(|d| choice.accepts(d)).collect();
        match fits.as_slice() {
            [one] => Ok(one),
            [] => Err(VaultError::NoSuchDisk {
                name: name.to_string(),
                location: location.to_string(),
                detail: if named.is_empty() {
                    let unreadable = match self.unreadable.len() {
                        0 => String::new(),
                        n => format!("; {n} chain(s) could not be read with this key (see `lifeboat vault check`)"),
                    };
                    format!(" (`lifeboat points --vault DIR --key KEY`, without a name, lists the disks it holds){unreadable}")
                } else {
                    format!(" that matches {}; it holds: {}", describe_choice(choice), describe(&named))
                },
            }),
            many => Err(VaultError::AmbiguousDisk {
                name: name.to_string(),
                location: location.to_string(),
                count: many.len(),
                candidates: describe(many),
            }),
        }
    }
}

fn describe_choice(c: &DiskChoice) -> String {
    let mut parts = Vec::new();
    if let Some(id) = &c.disk_id {
        parts.push(format!("--disk-id {}", disk_format::ids::hex(id)));
    }
    if let Some(h) = &c.host {
        parts.push(format!("--from-host {h}"));
    }
    parts.join(" ")
}

/// One line per disk: identity, host, newest point.
pub fn describe(disks: &[&DiskPoints]) -> String {
    disks
        .iter()
        .map(|d| {
            let host = if d.host.is_empty() { "host not recorded (points from before 2026-12-04)" } else { &d.host };
            let newest = d.newest().map_or("no point".to_string(), |p| format!("newest point {}", p.sequence));
            format!("identity {} (host {host}, {newest})", d.disk_id_hex())
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl Vault {
    /// The chain a disk of identity `disk_id` writes its points to under `keys`.
    pub fn chain_of(keys: &Keys, disk_id: &[u8; 16]) -> String {
        namespace_hex(&keys.disk_namespace(disk_id))
    }

    /// The points of the disk named `name` with identity `disk_id` (the
    /// protected site knows both): its namespace chain, and the format-1
    /// points under its name that carry its identity.
    pub fn disk_points(&self, keys: &Keys, name: &str, disk_id: &[u8; 16]) -> Result<DiskPoints, VaultError> {
        self.check_key(keys)?;
        let chain = Vault::chain_of(keys, disk_id);
        let mut points = self.points(&chain)?;
        let host = self.chain_metadata(&chain, &points, keys).map(|(_, _, host)| host).unwrap_or_default();
        for p in &mut points {
            p.disk_id = *disk_id;
        }
        // Only format-1 points of this identity (a damaged one is kept: it
        // may be this disk's, and listing it hides nothing).
        let legacy = self.format_1_points(name)?;
        points.extend(legacy.into_iter().filter(|p| p.damage.is_some() || p.disk_id == *disk_id));
        points.sort_by_key(|p| p.sequence);
        Ok(DiskPoints { name: name.to_string(), disk_id: *disk_id, host, points })
    }

    /// Every disk in the vault, read with `keys`: one entry per identity.
    pub fn disks_by_identity(&self, keys: &Keys) -> Result<Disks, VaultError> {
        self.check_key(keys)?;
        let mut out = Disks::default();
        for chain in self.disks()? {
            let points = self.points(&chain)?;
            if self.chain_is_format_1(&chain, &points) {
                // Group by identity; a damaged point goes with every identity
                // of its chain (it cannot say whose it is).
                let mut ids: Vec<[u8; 16]> = points.iter().filter(|p| p.damage.is_none()).map(|p| p.disk_id).collect();
                ids.sort_unstable();
                ids.dedup();
                if ids.is_empty() {
                    out.unreadable.push(UnreadableChain {
                        chain: chain.clone(),
                        detail: "every root of this format-1 chain is damaged".into(),
                    });
                }
                for id in ids {
                    let mine = points.iter().filter(|p| p.damage.is_some() || p.disk_id == id).cloned().collect();
                    merge(
                        &mut out.disks,
                        DiskPoints { name: chain.clone(), disk_id: id, host: String::new(), points: mine },
                    );
                }
                continue;
            }
            match self.chain_metadata(&chain, &points, keys) {
                Ok((name, disk_id, host)) => {
                    let mut points = points;
                    for p in &mut points {
                        p.disk_id = disk_id;
                    }
                    merge(&mut out.disks, DiskPoints { name, disk_id, host, points });
                }
                Err(detail) => out.unreadable.push(UnreadableChain { chain, detail }),
            }
        }
        out.disks.sort_by(|a, b| {
            a.name.cmp(&b.name).then_with(|| {
                let newest = |d: &DiskPoints| d.newest().map_or(0, |p| p.cut_time_ns);
                newest(b).cmp(&newest(a))
            })
        });
        Ok(out)
    }

    /// The points stored under `name` in format 1 (before 2026-12-04 a
    /// disk's chain was its name), listed without the key: each carries its
    /// disk's identity in the clear. Empty when there are none, or when
    /// `name` is not a format-1 chain (a namespace, or no valid chain name).
    pub fn format_1_points(&self, name: &str) -> Result<Vec<PointSummary>, VaultError> {
        if crate::store::check_disk(name).is_err() {
            return Ok(Vec::new());
        }
        let points = self.points(name)?;
        if points.is_empty() || !self.chain_is_format_1(name, &points) {
            return Ok(Vec::new());
        }
        Ok(points)
    }

    /// Whether the chain's points are format 1 (named by the disk): its
    /// newest undamaged root has no namespace. A chain with no readable
    /// root is taken as format 1 only if its name is not a namespace.
    fn chain_is_format_1(&self, chain: &str, points: &[PointSummary]) -> bool {
        for p in points.iter().rev().filter(|p| p.damage.is_none()) {
            if let Ok(root) = self.load_root(chain, p.sequence, None) {
                return root.namespace.is_none();
            }
        }
        !(chain.len() == 32 && chain.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    }

    /// Name, identity and host of a format-2 chain, from its newest root
    /// that authenticates under `keys`.
    fn chain_metadata(
        &self,
        chain: &str,
        points: &[PointSummary],
        keys: &Keys,
    ) -> Result<(String, [u8; 16], String), String> {
        let mut last = "it holds no point".to_string();
        for p in points.iter().rev() {
            match self.load_root(chain, p.sequence, Some(keys)) {
                Ok(root) => return Ok((root.disk_name, root.disk_id, root.host)),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }
}

/// Adds `d` to `disks`, merging it with an entry of the same name and
/// identity (a disk's format-1 and format-2 points).
fn merge(disks: &mut Vec<DiskPoints>, d: DiskPoints) {
    match disks.iter_mut().find(|e| e.name == d.name && e.disk_id == d.disk_id) {
        Some(e) => {
            if e.host.is_empty() {
                e.host = d.host;
            }
            e.points.extend(d.points);
            e.points.sort_by_key(|p| p.sequence);
        }
        None => disks.push(d),
    }
}

impl Vault {
    /// Prunes the points of the disk named `name` with identity `disk_id`
    /// under `policy`: its namespace chain, and the format-1 chain under its
    /// name if there is one (each chain keeps its own ladder, so the older
    /// chain's points age out as retention says).
    pub fn prune_disk(
        &self,
        keys: &Keys,
        name: &str,
        disk_id: &[u8; 16],
        policy: &crate::retention::Policy,
        now_ns: u64,
    ) -> Result<crate::retention::PruneReport, VaultError> {
        self.check_key(keys)?;
        let chain = Vault::chain_of(keys, disk_id);
        let mut report = self.prune(&chain, policy, now_ns)?;
        if !self.format_1_points(name)?.is_empty() {
            let r = self.prune(name, policy, now_ns)?;
            for (to, from) in [(&mut report.kept, r.kept), (&mut report.pruned, r.pruned), (&mut report.held, r.held)] {
                to.extend(from);
                to.sort_unstable();
            }
            report.stale_leases_removed.extend(r.stale_leases_removed);
        }
        Ok(report)
    }
}
