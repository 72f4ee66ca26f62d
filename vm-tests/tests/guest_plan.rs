//! Recovery plans with real guests (issue 4: "a recovery plan with three
//! groups (a database, an app tier of two VMs, a web VM), a script between
//! groups and a manual step, run in test mode end to end with real guests;
//! and a plan whose script fails, showing the report").
//!
//! Four protected disks, each with a VM defined and one point shipped. At a
//! recovery site (its own home, vault and key only):
//!
//! * `plan run --test --instant` fails the database over (instant recovery:
//!   every VM boots straight from the vault), runs a script that must see
//!   the database VM already running and gets the plan, kind and recovered
//!   VMs in its environment, fails both app VMs over in parallel, and pauses
//!   at the manual step with the web VM not yet touched; `plan resume` (no
//!   --vault or --key: the run remembers them) finishes it. Every VM's health
//!   passed, each group started after the one before had booted, and the
//!   plan and every VM report an RTO. `plan cleanup` stops all four VMs.
//! * A plan (restoring first this time) whose script exits 3 stops there: exit 1 naming the step and the
//!   script's own output, `plan status` says failed, the VMs after it are
//!   never failed over.
//! * The audit log holds the plan's records.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use vm_tests::initramfs;
use vm_tests::lifeboat::{Home, Scratch};
use vm_tests::paths;
use vm_tests::process::{assert_ok, json, pid_alive};
use vm_tests::replicate::arg;

const HEALTH: &str = "@@LB HEALTH ok";
const APPEND: &str = "console=ttyS0 quiet loglevel=1 panic=-1 rdinit=/init";
const VMS: [&str; 4] = ["db", "app1", "app2", "web"];

const GUEST: &str = "mount -t ext4 /dev/vda /mnt && echo \"@@LB HEALTH ok $(cat /mnt/who)\"\nsleep 3600\n";

fn script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A VM's failover job at the site.
fn job(site_dir: &Path, vm: &str) -> serde_json::Value {
    serde_json::from_slice(&fs::read(site_dir.join("failovers").join(vm).join("job.json")).unwrap()).unwrap()
}

/// Kills any QEMU left when the test ends.
struct Reaper(std::path::PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        for vm in VMS {
            if let Ok(pid) = fs::read_to_string(self.0.join(vm).join("qemu.pid")) {
                let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
            }
        }
    }
}

#[test]
#[ignore = "boots four VMs (full pass only): scripts/test.sh --full"]
fn a_three_group_plan_runs_in_order_pauses_for_its_manual_step_and_a_failing_script_stops_it() {
    let scratch = Scratch::new(paths::lifeboat_bin(), "lb-vmplan3-");
    let dir = scratch.dir();
    let home = &scratch.home;
    let (key, vault) = (dir.join("k.key"), dir.join("vault"));
    home.key_new(&key);
    home.vault_init(&vault, &key);
    let kernel = paths::kernel();
    let initrd = initramfs::build(&kernel, dir, GUEST, &[]);
    for vm in VMS {
        let image = dir.join(format!("{vm}.img"));
        fs::File::create(&image).unwrap().set_len(16 << 20).unwrap();
        // `mkfs.ext4 -d DIR` fills the file system from DIR: a file naming the VM.
        let root = dir.join(format!("root-{vm}"));
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join("who"), vm).unwrap();
        let mkfs =
            Command::new(paths::tool("mkfs.ext4")).args(["-q", "-F", "-d"]).arg(&root).arg(&image).output().unwrap();
        assert_ok(&mkfs, "mkfs.ext4 -d");
        let disk = format!("{vm}-root");
        home.protect_replicated(&disk, &image, 64 * 1024, &vault, &key);
        home.run_ok(&[
            "vm",
            "define",
            vm,
            "--disk",
            &disk,
            "--memory",
            "192MiB",
            "--health-serial",
            &format!("{HEALTH} {vm}"),
            "--kernel",
            arg(&kernel.vmlinuz),
            "--initrd",
            arg(&initrd),
            "--append",
            APPEND,
        ]);
        home.ship(&disk);
    }

    let site_dir = dir.join("site");
    let site = Home::new(paths::lifeboat_bin(), site_dir.clone());
    let _reaper = Reaper(site_dir.join("failovers"));
    let seen = dir.join("script-saw");
    let db_up = dir.join("db-up.sh");
    script(
        &db_up,
        &format!(
            "kill -0 $(cat {}/failovers/db/qemu.pid) || {{ echo 'the database VM is not running' >&2; exit 1; }}\n\
             echo \"$LIFEBOAT_PLAN $LIFEBOAT_PLAN_KIND $LIFEBOAT_PLAN_STEP [$LIFEBOAT_PLAN_VMS]\" > {}\n",
            site_dir.display(),
            seen.display()
        ),
    );
    let plan = dir.join("shop.toml");
    fs::write(
        &plan,
        format!(
            "name = \"shop\"\n\n[[step]]\ngroup = \"database\"\nvms = [\"db\"]\n\n[[step]]\nscript = \"{}\"\n\n\
             [[step]]\ngroup = \"app\"\nvms = [\"app1\", \"app2\"]\n\n[[step]]\nmanual = \"Check the shop's app tier, then resume\"\n\n\
             [[step]]\ngroup = \"web\"\nvms = [\"web\"]\n",
            db_up.display()
        ),
    )
    .unwrap();
    let kv = ["--vault", arg(&vault), "--key", arg(&key)];
    let mut validate = vec!["plan", "validate", arg(&plan)];
    validate.extend(kv);
    let v = site.run_ok(&validate);
    assert!(String::from_utf8_lossy(&v.stdout).contains("db: point 1"), "{}", String::from_utf8_lossy(&v.stdout));

    let mut run = vec!["plan", "run", arg(&plan), "--test", "--json", "--instant"];
    run.extend(kv);
    let out = site.run(&run);
    assert!(out.status.success(), "plan run: {}", String::from_utf8_lossy(&out.stderr));
    let r = json(&out);
    assert_eq!(r["state"], "paused", "{r}");
    assert_eq!(r["steps"].as_array().unwrap().len(), 4, "{r}");
    assert_eq!(fs::read_to_string(&seen).unwrap(), "shop test 2 [db]\n", "the script's environment");
    assert!(!site_dir.join("failovers/web").exists(), "the web VM was failed over before the manual step");
    let status = json(&site.run_ok(&["plan", "status", "shop", "--json"]));
    assert_eq!(status["state"], "paused");

    let out = site.run(&["plan", "resume", "shop", "--json"]);
    assert!(out.status.success(), "plan resume: {}", String::from_utf8_lossy(&out.stderr));
    let r = json(&out);
    assert_eq!(r["state"], "done", "{r}");
    assert!(r["rto_seconds"].as_f64().unwrap() > 0.0, "{r}");
    let steps = r["steps"].as_array().unwrap();
    let states: Vec<&str> = steps.iter().map(|s| s["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["done"; 5], "{r}");
    for s in steps.iter().filter(|s| !s["vms"].as_array().unwrap_or(&vec![]).is_empty()) {
        for v in s["vms"].as_array().unwrap() {
            assert_eq!(v["health"], "passed", "{r}");
            assert_eq!(v["instant"], true, "the plan was run with --instant: {r}");
            assert!(v["rto_seconds"].as_f64().unwrap() > 0.0, "{r}");
        }
    }
    // Order: every group's VMs started after the group before had booted.
    let booted = |vm: &str| {
        let j = job(&site_dir, vm);
        let boot = j["steps"].as_array().unwrap().iter().find(|s| s["name"] == "health check").unwrap().clone();
        (j["started_ns"].as_u64().unwrap(), boot["ended_ns"].as_u64().unwrap(), j["process"]["pid"].as_u64().unwrap())
    };
    let (_, db_done, db_pid) = booted("db");
    let (a1_start, a1_done, a1_pid) = booted("app1");
    let (a2_start, a2_done, a2_pid) = booted("app2");
    let (web_start, _, web_pid) = booted("web");
    assert!(a1_start > db_done && a2_start > db_done, "the app tier started before the database was healthy");
    assert!(web_start > a1_done.max(a2_done), "the web VM started before the app tier was healthy");
    // Both app VMs were in flight together (parallel within a group).
    assert!(a1_start < a2_done && a2_start < a1_done, "the app group's VMs ran one after the other");
    for pid in [db_pid, a1_pid, a2_pid, web_pid] {
        assert!(pid_alive(pid));
    }
    let console = fs::read_to_string(site_dir.join("failovers/app2/console.log")).unwrap();
    assert!(console.contains(&format!("{HEALTH} app2")), "app2 booted someone else's disk:\n{console}");

    site.run_ok(&["plan", "cleanup", "shop"]);
    for pid in [db_pid, a1_pid, a2_pid, web_pid] {
        assert!(!pid_alive(pid), "plan cleanup left pid {pid} running");
    }
    assert!(!site_dir.join("failovers/db").exists() && !site_dir.join("plans/shop").exists());

    // A plan whose script fails stops there, with the script's own words.
    let bad = dir.join("bad.sh");
    script(&bad, "echo 'replica lag too high' >&2\nexit 3\n");
    let broken = dir.join("broken.toml");
    fs::write(
        &broken,
        format!(
            "name = \"broken\"\n[[step]]\ngroup = \"database\"\nvms = [\"db\"]\n[[step]]\nscript = \"{}\"\n\
             [[step]]\ngroup = \"web\"\nvms = [\"web\"]\n",
            bad.display()
        ),
    )
    .unwrap();
    let mut run = vec!["plan", "run", arg(&broken), "--test"];
    run.extend(kv);
    let out = site.run(&run);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("stopped at step 2") && err.contains("replica lag too high") && err.contains("exit status: 3"),
        "{err}"
    );
    let status = json(&site.run_ok(&["plan", "status", "broken", "--json"]));
    assert_eq!(status["state"], "failed", "{status}");
    assert!(!site_dir.join("failovers/web").exists(), "a VM after the failed script was failed over");
    site.run_ok(&["plan", "cleanup", "broken"]);

    let audit = site.run_ok(&["audit", "show", "--json", "--key", arg(&key)]);
    let text = String::from_utf8_lossy(&audit.stdout);
    for kind in
        ["plan.start", "plan.step.start", "plan.paused", "plan.resume", "plan.done", "plan.failed", "plan.cleanup"]
    {
        assert!(text.contains(&format!("\"{kind}\"")), "no {kind} record");
    }
}
