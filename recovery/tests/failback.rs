//! Failback and a planned failover's source side against a fake host
//! (issue 13): the order of the steps, what a failure half-way leaves, and
//! that running again finishes the job without redoing what was done.
//!
//! The fake host keeps its disks in a map and its images in a temporary
//! directory; it records every call in order. Its vault is real (built
//! with vault's own test writers, the way the shipper writes points), so
//! `bring_back` converges real images against real points. Faults it can
//! suffer: a replication cycle that fails for one disk, a disk whose state
//! lock is held.

#![allow(clippy::cast_possible_truncation)]

#[path = "../../vault/tests/common/mod.rs"]
mod vault_fixture;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use disk_format::keys::Keys;
use recovery::failback::{self, BringBack, FailbackError};
use recovery::failover::{Job, Site, Step};
use recovery::planned::{self, PlannedError, SourceStop};
use recovery::{HostError, HostSide, LocalDisk, ProtectRequest, Shipped, VmDefinition};
use serde_json::{json, Value};
use vault::{BlockIndex, LocalBackend, Location, Vault};
use vault_fixture::{master, test_host, Disk};

const BLOCK: u64 = 4096;
const BLOCKS: u64 = 16;

/// The fake host. `calls` is shared with its locks, which record their
/// release.
struct Fake {
    home: PathBuf,
    vault_dir: PathBuf,
    vms: Vec<VmDefinition>,
    /// Protected disks: name -> image.
    disks: RefCell<BTreeMap<String, PathBuf>>,
    busy: BTreeSet<String>,
    fail_cycle: RefCell<Option<String>>,
    next_point: Cell<u64>,
    calls: Rc<RefCell<Vec<String>>>,
}

/// A fake state lock: says when it is released.
struct Lock(String, Rc<RefCell<Vec<String>>>);

impl Drop for Lock {
    fn drop(&mut self) {
        self.1.borrow_mut().push(format!("unlock {}", self.0));
    }
}

impl Fake {
    fn new(dir: &Path, vms: &[(&str, &[&str])]) -> Fake {
        let vms = vms
            .iter()
            .map(|(vm, disks)| {
                let list: Vec<String> = disks.iter().map(|d| format!("{d:?}")).collect();
                VmDefinition::parse(&format!("name = {vm:?}\ndisks = [{}]\n", list.join(", ")), "test").unwrap()
            })
            .collect();
        vault_fixture::new_vault(dir);
        Fake {
            home: dir.join("home"),
            vault_dir: dir.to_path_buf(),
            vms,
            disks: RefCell::default(),
            busy: BTreeSet::new(),
            fail_cycle: RefCell::default(),
            next_point: Cell::new(1),
            calls: Rc::default(),
        }
    }

    fn call(&self, c: String) {
        self.calls.borrow_mut().push(c);
    }

    fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }

    fn marker(&self, disk: &str) -> PathBuf {
        self.vault_dir.join(format!("{disk}.failback"))
    }

    fn vault(&self) -> Vault {
        Vault::open(Box::new(LocalBackend::open(&self.vault_dir.join("vault")).unwrap()))
            .unwrap()
            .with_host_identity(test_host())
    }
}

impl HostSide for Fake {
    type Lock = Lock;

    fn home(&self) -> &Path {
        &self.home
    }

    fn say(&self, _line: &str) {}

    fn vm(&self, name: &str) -> Result<Option<VmDefinition>, HostError> {
        Ok(self.vms.iter().find(|d| d.name == name).cloned())
    }

    fn disk(&self, name: &str) -> Result<LocalDisk, HostError> {
        let image = self.disks.borrow().get(name).cloned().ok_or_else(|| format!("disk {name:?} is not protected"))?;
        Ok(LocalDisk { image, failback_marker: self.marker(name) })
    }

    fn disk_identity(&self, name: &str) -> Result<[u8; 16], HostError> {
        self.disk(name)?;
        Ok(*b"original-disk-id")
    }

    fn disk_vault(&self, name: &str) -> Result<(Keys, Vault), HostError> {
        self.disk(name)?;
        Ok((master().keys(), self.vault()))
    }

    fn open_vault(&self, vault: &Location, _key: &Path) -> Result<(Keys, Vault), HostError> {
        self.call(format!("open vault {vault}"));
        Ok((master().keys(), self.vault()))
    }

    fn lock_state(&self, name: &str) -> Result<Option<Lock>, HostError> {
        if self.busy.contains(name) {
            self.call(format!("busy {name}"));
            return Ok(None);
        }
        self.call(format!("lock {name}"));
        Ok(Some(Lock(name.to_string(), self.calls.clone())))
    }

    fn protect(&self, req: &ProtectRequest<'_>) -> Result<(), HostError> {
        let to = req.replicate_to.map_or("-".into(), |(v, k)| format!("{} {}", v, k.display()));
        let marker = self.marker(req.disk).exists();
        self.call(format!(
            "protect {} {} to {to} reset {} marker {marker}",
            req.disk,
            req.image.display(),
            req.reset_state
        ));
        self.disks.borrow_mut().insert(req.disk.to_string(), req.image.to_path_buf());
        Ok(())
    }

    fn run_cycle(&self, name: &str) -> Result<Shipped, HostError> {
        self.call(format!("cycle {name}"));
        if self.fail_cycle.borrow().as_deref() == Some(name) {
            return Err("the vault is full".into());
        }
        let sequence = self.next_point.get();
        self.next_point.set(sequence + 1);
        Ok(Shipped { sequence, blocks_read: 16, new_blocks: 2, bytes_shipped: 100 })
    }

    fn audit(&self, _: &Keys, _: &Vault, kind: &str, disk: Option<&str>, details: Value) -> Result<(), HostError> {
        self.call(format!("audit {kind} {} {details}", disk.unwrap_or("-")));
        Ok(())
    }
}

/// Writes a committed (or `state`) failover of VM `vm` whose disks were
/// restored to `images`, with the vault and key it came from.
fn committed_job(site_root: &Path, vm: &str, state: &str, disks: &[(&str, &Path)], origin: bool) {
    let points: Vec<Value> =
        disks.iter().map(|(d, image)| json!({ "disk": d, "point": 3, "cut_time_ns": 0, "image": image })).collect();
    // A job with points has the definition they were chosen with (a job file
    // without one is refused as contradicting itself).
    let list: Vec<String> = disks.iter().map(|(d, _)| format!("{d:?}")).collect();
    let definition = VmDefinition::parse(&format!("name = {vm:?}\ndisks = [{}]\n", list.join(", ")), "test").unwrap();
    let job = json!({
        "vm": vm, "kind": "unplanned", "state": state, "started_ns": 0, "points": points,
        "definition": serde_json::to_value(&definition).unwrap(),
        "steps": [], "process": null, "health": null, "health_detail": null, "rto_seconds": null,
        "origin": if origin { json!({ "vault": "/v", "key": "/k" }) } else { Value::Null },
    });
    std::fs::create_dir_all(site_root.join(vm)).unwrap();
    std::fs::write(site_root.join(vm).join("job.json"), job.to_string()).unwrap();
}

fn job(site: &Site, vm: &str) -> Job {
    site.load(vm).unwrap().unwrap()
}

#[test]
fn prepare_protects_and_ships_each_disk_then_marks_the_job_and_audits() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path(), &[]);
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    committed_job(&dir.path().join("site"), "web", "committed", &[("web-a", &a), ("web-b", &b)], true);
    let site = Site::new(dir.path().join("site"));
    let done = failback::prepare(&site, &fake, "web", std::time::Duration::from_secs(1)).unwrap();
    let expected_details = json!({
        "vm": "web", "stopped": "already off", "bytes_shipped": 200,
        "points": [
            { "disk": "web-a", "disk_id": "6f726967696e616c2d6469736b2d6964", "point": 1, "blocks_read": 16,
              "new_blocks": 2, "bytes_shipped": 100 },
            { "disk": "web-b", "disk_id": "6f726967696e616c2d6469736b2d6964", "point": 2, "blocks_read": 16,
              "new_blocks": 2, "bytes_shipped": 100 },
        ],
    });
    assert_eq!(
        fake.calls(),
        [
            "open vault /v".to_string(),
            format!("protect web-a {} to /v /k reset false marker false", a.display()),
            "cycle web-a".into(),
            format!("protect web-b {} to /v /k reset false marker false", b.display()),
            "cycle web-b".into(),
            format!("audit failback.prepare - {expected_details}"),
        ]
    );
    assert_eq!((done.stopped.as_str(), done.bytes_shipped, done.disks), ("already off", 200, 2));
    assert_eq!(done.details, expected_details);
    assert!(job(&site, "web").failed_back);
}

#[test]
fn prepare_failing_half_way_leaves_the_job_unmarked_and_a_rerun_ships_without_protecting_again() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path(), &[]);
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    committed_job(&dir.path().join("site"), "web", "committed", &[("web-a", &a), ("web-b", &b)], true);
    let site = Site::new(dir.path().join("site"));
    *fake.fail_cycle.borrow_mut() = Some("web-b".into());
    let e = failback::prepare(&site, &fake, "web", std::time::Duration::from_secs(1)).unwrap_err();
    assert!(matches!(&e, FailbackError::Shipping { disk, .. } if disk == "web-b"), "{e}");
    assert_eq!(e.to_string(), "shipping disk \"web-b\" of VM \"web\" back");
    assert_eq!(std::error::Error::source(&e).unwrap().to_string(), "the vault is full");
    let calls = fake.calls();
    assert_eq!(calls.last().unwrap(), "cycle web-b");
    assert!(!calls.iter().any(|c| c.starts_with("audit")), "{calls:?}");
    assert!(!job(&site, "web").failed_back);

    fake.calls.borrow_mut().clear();
    *fake.fail_cycle.borrow_mut() = None;
    failback::prepare(&site, &fake, "web", std::time::Duration::from_secs(1)).unwrap();
    let calls = fake.calls();
    assert!(!calls.iter().any(|c| c.starts_with("protect")), "both disks are protected already: {calls:?}");
    assert_eq!(calls[1..3], ["cycle web-a", "cycle web-b"]);
    assert!(calls[3].starts_with("audit failback.prepare"), "{calls:?}");
    assert!(job(&site, "web").failed_back);
}

#[test]
fn prepare_refuses_before_doing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path(), &[]);
    let site_root = dir.path().join("site");
    let site = Site::new(site_root.clone());
    let a = dir.path().join("a.img");
    committed_job(&site_root, "booted", "booted", &[("x", &a)], true);
    committed_job(&site_root, "local", "committed", &[("x", &a)], false);
    let t = std::time::Duration::from_secs(1);
    assert!(matches!(failback::prepare(&site, &fake, "none", t), Err(FailbackError::NoFailover { .. })));
    let e = failback::prepare(&site, &fake, "booted", t).unwrap_err();
    assert!(matches!(e, FailbackError::NotCommitted { .. }), "{e}");
    assert!(e.to_string().contains("`lifeboat failover commit booted` first"), "{e}");
    assert!(matches!(failback::prepare(&site, &fake, "local", t), Err(FailbackError::NoOrigin { .. })));
    assert_eq!(fake.calls(), Vec::<String>::new());
    assert!(!job(&site, "booted").failed_back);
}

/// A vault disk of name `name` as the recovery site shipped it back: a disk
/// of its own (another identity, another host), with `image` as its point.
fn ship_back(vault: &Vault, keys: &Keys, name: &str, image: &[u8]) -> u64 {
    let mut d = Disk::new(name, image.len() as u64, BLOCK, 4);
    d.format = 2;
    d.disk_id.copy_from_slice(format!("{name:-<16}").as_bytes()[..16].as_ref());
    d.host = "dr-site".into();
    d.image.copy_from_slice(image);
    let changed: Vec<u64> = (0..BLOCKS).collect();
    d.ship(vault, keys, &mut BlockIndex::new(), &changed)
}

/// A disk's contents, block 12 all zeros.
fn pattern(seed: u8) -> Vec<u8> {
    let mut v: Vec<u8> = (0..BLOCK * BLOCKS).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1).collect();
    v[(12 * BLOCK) as usize..(13 * BLOCK) as usize].fill(0);
    v
}

/// The original disk's image: `recovered`, except four blocks the
/// recovered VM changed since (one of them to zeros, one from zeros).
fn original_image(recovered: &[u8]) -> Vec<u8> {
    let mut old = recovered.to_vec();
    old[..BLOCK as usize].fill(0xee);
    old[(12 * BLOCK) as usize..(13 * BLOCK) as usize].fill(0x22);
    old[(5 * BLOCK) as usize..(6 * BLOCK) as usize].fill(0x11);
    old[(9 * BLOCK) as usize..(10 * BLOCK) as usize].fill(0);
    old
}

/// A fake original site: VM `web` on the given disks, each protected with
/// an image that differs from what the vault holds of it (when it does).
fn original_site(dir: &Path, disks: &[&str]) -> (Fake, BTreeMap<String, Vec<u8>>) {
    let fake = Fake::new(dir, &[("web", disks)]);
    let mut recovered = BTreeMap::new();
    for (i, d) in disks.iter().enumerate() {
        let want = pattern(i as u8);
        let image = dir.join(format!("{d}.img"));
        std::fs::write(&image, original_image(&want)).unwrap();
        fake.disks.borrow_mut().insert(d.to_string(), image);
        recovered.insert(d.to_string(), want);
    }
    (fake, recovered)
}

#[test]
fn bring_back_converges_each_disk_then_resets_its_state_and_audits() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, want) = original_site(dir.path(), &["web-a"]);
    let seq = ship_back(&fake.vault(), &master().keys(), "web-a", &want["web-a"]);
    let done = failback::bring_back(&fake, "web", &BringBack::default()).unwrap();
    let image = dir.path().join("web-a.img");
    assert_eq!(std::fs::read(&image).unwrap(), want["web-a"], "the image is the point, byte for byte");
    // Three blocks fetched, the one the point has as zero zeroed, no other.
    assert_eq!(done.bytes_fetched, 3 * BLOCK);
    let report = &done.details["disks"][0];
    assert_eq!(report["point"], seq);
    assert_eq!(
        report["report"],
        json!({ "blocks": BLOCKS, "fetched_blocks": 3, "fetched_bytes": 3 * BLOCK, "zeroed_blocks": 1 })
    );
    assert_eq!(
        fake.calls(),
        [
            "lock web-a".to_string(),
            "unlock web-a".into(),
            // The marker is still there while the state starts over, gone after.
            format!("protect web-a {} to - reset true marker true", image.display()),
            format!("audit failback.converge web-a {report}"),
        ]
    );
    assert!(!fake.marker("web-a").exists());
    assert_eq!(done.details["bytes_fetched"], 3 * BLOCK);
}

#[test]
fn bring_back_stopping_at_a_disk_with_no_copy_leaves_the_first_done_and_a_rerun_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, want) = original_site(dir.path(), &["web-a", "web-b"]);
    let keys = master().keys();
    ship_back(&fake.vault(), &keys, "web-a", &want["web-a"]);
    let e = failback::bring_back(&fake, "web", &BringBack::default()).unwrap_err();
    assert!(matches!(&e, FailbackError::NoCopy { disk, chosen: false, .. } if disk == "web-b"), "{e}");
    assert!(e.to_string().contains("run `lifeboat failback VM --prepare` at the recovery site first"), "{e}");
    assert_eq!(std::fs::read(dir.path().join("web-a.img")).unwrap(), want["web-a"]);
    let calls = fake.calls();
    assert!(calls[3].starts_with("audit failback.converge web-a"), "{calls:?}");
    // The second disk: locked, released, nothing else.
    assert_eq!(calls[4..], ["lock web-b", "unlock web-b"]);
    assert_eq!(std::fs::read(dir.path().join("web-b.img")).unwrap(), original_image(&want["web-b"]));
    assert!(!fake.marker("web-b").exists());

    ship_back(&fake.vault(), &keys, "web-b", &want["web-b"]);
    fake.calls.borrow_mut().clear();
    let done = failback::bring_back(&fake, "web", &BringBack::default()).unwrap();
    assert_eq!(done.details["disks"][0]["report"]["fetched_blocks"], 0, "web-a already is its point");
    assert_eq!(done.details["disks"][1]["report"]["fetched_blocks"], 3);
    assert_eq!(done.bytes_fetched, 3 * BLOCK);
    assert_eq!(std::fs::read(dir.path().join("web-b.img")).unwrap(), want["web-b"]);
}

#[test]
fn bring_back_refuses_a_disk_in_use_and_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (mut fake, want) = original_site(dir.path(), &["web-a"]);
    ship_back(&fake.vault(), &master().keys(), "web-a", &want["web-a"]);
    fake.busy.insert("web-a".into());
    let e = failback::bring_back(&fake, "web", &BringBack::default()).unwrap_err();
    assert!(matches!(&e, FailbackError::DiskInUse { disk } if disk == "web-a"), "{e}");
    assert_eq!(fake.calls(), ["busy web-a"]);
    assert_eq!(std::fs::read(dir.path().join("web-a.img")).unwrap(), original_image(&want["web-a"]));
    assert!(!fake.marker("web-a").exists());
}

#[test]
fn bring_back_to_a_point_the_copy_lacks_is_refused_before_the_image_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, want) = original_site(dir.path(), &["web-a"]);
    ship_back(&fake.vault(), &master().keys(), "web-a", &want["web-a"]);
    let how = BringBack { point: Some(9), ..BringBack::default() };
    let e = failback::bring_back(&fake, "web", &how).unwrap_err();
    assert!(matches!(e, FailbackError::NoSuchPoint { point: 9, .. }), "{e}");
    assert_eq!(fake.calls(), ["lock web-a", "unlock web-a"]);
    assert_eq!(std::fs::read(dir.path().join("web-a.img")).unwrap(), original_image(&want["web-a"]));
    let e = failback::bring_back(&fake, "db", &BringBack::default()).unwrap_err();
    assert!(matches!(e, FailbackError::NotDefinedHere { .. }), "{e}");
}

type Audits = Vec<(String, Value)>;

fn run_source_side(fake: &Fake, site: &Site, stop: &SourceStop) -> (Result<u64, PlannedError>, Vec<Step>, Audits) {
    let mut prelude = Vec::new();
    let mut audits = Vec::new();
    let r = planned::source_side(site, fake, "web", stop, &mut prelude, &mut |kind, details| {
        audits.push((kind.to_string(), details));
        Ok(())
    });
    (r, prelude, audits)
}

#[test]
fn planned_source_side_records_the_stop_then_ships_a_final_cycle_of_every_disk() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path(), &[("web", &["web-a", "web-b"])]);
    let site = Site::new(dir.path().join("site"));
    let (r, prelude, audits) = run_source_side(&fake, &site, &SourceStop::AlreadyStopped);
    assert_eq!(r.unwrap(), 1, "the first disk's final point");
    assert_eq!(fake.calls(), ["cycle web-a", "cycle web-b"]);
    let steps: Vec<(String, &str)> = prelude.iter().map(|s| (s.name.to_string(), s.detail.as_str())).collect();
    assert_eq!(
        steps,
        [
            ("stop source VM".to_string(), "stopped by the user (--source-stopped)"),
            ("final cycle of disk web-a".to_string(), "point 1 committed: 16 blocks read, 2 new, 100 bytes shipped"),
            ("final cycle of disk web-b".to_string(), "point 2 committed: 16 blocks read, 2 new, 100 bytes shipped"),
        ]
    );
    assert!(prelude.iter().all(|s| s.state == recovery::StepState::Done && s.ended_ns.is_some()));
    assert_eq!(
        audits,
        [
            (
                "failover.planned.source-stopped".to_string(),
                json!({ "vm": "web", "how": "stopped by the user (--source-stopped)", "clean_shutdown": null })
            ),
            ("failover.planned.final-cycle".to_string(), json!({ "vm": "web", "point": 1 })),
        ]
    );
}

#[test]
fn planned_source_side_failing_a_final_cycle_keeps_what_was_shipped_and_records_no_final_point() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path(), &[("web", &["web-a", "web-b"])]);
    let site = Site::new(dir.path().join("site"));
    *fake.fail_cycle.borrow_mut() = Some("web-b".into());
    let (r, prelude, audits) = run_source_side(&fake, &site, &SourceStop::AlreadyStopped);
    let e = r.unwrap_err();
    assert!(matches!(&e, PlannedError::FinalCycle { disk, .. } if disk == "web-b"), "{e}");
    assert!(e.to_string().contains("run again to retry"), "{e}");
    assert_eq!(prelude.len(), 2, "the stop and the first disk's cycle");
    assert_eq!(audits.len(), 1, "the stop only: {audits:?}");
    assert!(site.load("web").unwrap().is_none(), "no job");
}

#[test]
fn planned_source_side_refuses_before_stopping_or_shipping_anything() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path(), &[("web", &["web-a"])]);
    let site_root = dir.path().join("site");
    let site = Site::new(site_root.clone());
    let (r, prelude, audits) = run_source_side(&fake, &site, &SourceStop::Unknown);
    assert!(matches!(r, Err(PlannedError::SourceStateUnknown)));
    assert!(prelude.is_empty() && audits.is_empty());
    committed_job(&site_root, "web", "booted", &[("web-a", &dir.path().join("a.img"))], false);
    let (r, prelude, audits) = run_source_side(&fake, &site, &SourceStop::AlreadyStopped);
    assert!(matches!(r, Err(PlannedError::FailoverExists { .. })));
    assert!(prelude.is_empty() && audits.is_empty());
    let elsewhere = tempfile::tempdir().unwrap();
    let (r, _, _) = run_source_side(
        &Fake::new(elsewhere.path(), &[]),
        &Site::new(elsewhere.path().join("site")),
        &SourceStop::Unknown,
    );
    assert!(matches!(r, Err(PlannedError::NotDefinedHere { .. })));
    assert_eq!(fake.calls(), Vec::<String>::new());
}
