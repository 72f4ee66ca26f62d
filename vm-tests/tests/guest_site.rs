//! The recovery site end to end with a real guest (issue 14, point 6).
//!
//! Site A protects a QEMU guest through `lifeboat agent` and replicates
//! through a real `lifeboat vault serve` on site B's side (loopback, real
//! TLS, certificates made by `site init` / `site enroll` / `site join`). The
//! guest writes an ext4 workload with checksum manifests, synced each round,
//! and powers off; a point cut after that is shipped. Then site A is lost:
//! its agent is SIGKILLed and its whole home (state, configuration, site
//! credentials) deleted. Only the disk image survives there (its storage),
//! and the customer kept the key file.
//!
//! Who runs what, and why (the server's rights, FORMAT.md "Rights"):
//!
//! * At site B the administrator, holding the key, enrolls a recovery home as
//!   the lost host (`site enroll site-a` + `site join` there: the new
//!   certificate supersedes site A's, which a thief of site A's host key can
//!   no longer use) and runs `failover --unplanned` against the
//!   `lifeboat://` vault with only the key: the VM's definition comes from
//!   the vault. The recovered guest checks every file of its newest manifest
//!   and prints the round on its serial console; then it writes more data.
//!   `failback --prepare --bandwidth` there powers it off and ships the
//!   recovered disk back through the server: only what changed travels, at
//!   the limit.
//!   Acting as the host is what lets failback work over the link: a host
//!   reads only the chains, packs and pages it wrote, so a copy shipped back
//!   by path (outside the server) or by another enrolled identity could not
//!   be seen by site A's new home at all (`failback` there would say the
//!   vault holds no copy of the disk).
//! * A new site-A home rejoins the site as the same host (superseding the
//!   recovery home's certificate), protects the surviving image again and
//!   defines the VM, then `failback --bandwidth` fetches only the blocks that
//!   differ, at the limit, and leaves the image byte for byte the recovered
//!   VM's disk; its next cycle finds nothing to send.
//!
//! Boots two VMs, so `#[ignore]`d in the quick pass; `scripts/test.sh
//! --full` runs it.

// Test code for 64-bit hosts.
#![allow(clippy::cast_possible_truncation)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vm_tests::initramfs::{self, GuestFile};
use vm_tests::lifeboat::{Home, Scratch};
use vm_tests::process::{assert_ok, json, pid_alive};
use vm_tests::qemu::Vm;
use vm_tests::replicate::{arg, PointInfo};
use vm_tests::site::Site;
use vm_tests::{paths, pseudo_random};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const DISK_SIZE: u64 = 64 * MIB;
const ROUNDS: u64 = 3;
const HEALTH: &str = "@@LB HEALTH ok";
const APPEND: &str = "console=ttyS0 quiet loglevel=1 panic=-1 rdinit=/init";
/// The failback's link limit, bytes per second: `--bandwidth 2Mbit`, low
/// enough that the half a megabyte each half moves takes seconds, longer
/// than either half takes unlimited.
const LIMIT: u64 = 250_000;
const BANDWIDTH: &str = "2Mbit";
/// What the limiter lets through before it paces (`vault::throttle`'s burst
/// of 100 ms at the rate).
const BURST: Duration = Duration::from_millis(100);

fn file_data(r: u64, which: &str) -> Vec<u8> {
    let len = if which == "a" { 1024 * KIB + 123 * r } else { 256 * KIB + 7 * r };
    pseudo_random(len as usize, 900 * r + u64::from(which == "b"))
}

/// Round r adds two files, syncs, then writes `manifest-r`: the sha256 of
/// every file so far, synced before and after its rename.
fn workload_script() -> String {
    let mut s = String::from("mount -t ext4 /dev/vda /mnt\nmkdir -p /mnt/lb\n");
    for r in 1..=ROUNDS {
        s.push_str(&format!(
            "cp /data/r{r}a /mnt/lb/r{r}a.bin\ncp /data/r{r}b /mnt/lb/r{r}b.bin\nsync\n\
             (cd /mnt/lb && sha256sum r*.bin > manifest.tmp)\nsync\nmv /mnt/lb/manifest.tmp /mnt/lb/manifest-{r}\n\
             sync\necho '@@LB STEP round{r}'\n"
        ));
    }
    s.push_str("umount /mnt\necho '@@LB STEP done'\n");
    s
}

/// The recovered guest: mounts its disk, checks the newest manifest, prints
/// the health line with the round, writes 256 KiB of new data, syncs, says
/// so, and stays up until its power button is pressed.
const RECOVERED: &str = r#"
if mount -t ext4 /dev/vda /mnt; then
  r=$(ls /mnt/lb 2>/dev/null | sed -n 's/^manifest-//p' | sort -n | tail -1)
  if [ -z "$r" ]; then
    echo "@@LB HEALTH ok round=0"
  elif (cd /mnt/lb && sha256sum -c -s manifest-$r); then
    echo "@@LB HEALTH ok round=$r"
  else
    echo "@@LB HEALTH-FAIL round=$r checksums"
  fi
else
  echo "@@LB HEALTH-FAIL mount"
fi
dd if=/dev/urandom of=/mnt/lb/at-dr.bin bs=64k count=4 2>/dev/null && sync && echo '@@LB STEP wrote'
sleep 3600
"#;

/// Kills any QEMU a failover left running when the test ends, pass or fail.
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        let Ok(entries) = fs::read_dir(&self.0) else { return };
        for e in entries.flatten() {
            if let Ok(pid) = fs::read_to_string(e.path().join("qemu.pid")) {
                let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
            }
        }
    }
}

/// The round the recovered guest printed on its console.
fn guest_round(job: &serde_json::Value) -> u64 {
    let console = fs::read_to_string(job["console"].as_str().expect("console path")).unwrap();
    let line = console.lines().find(|l| l.contains(HEALTH)).unwrap_or_else(|| panic!("no health line:\n{console}"));
    line.trim_end_matches('\r').rsplit("round=").next().unwrap().parse().unwrap()
}

/// `lifeboat vm define app` in `home`, booting `initrd`.
fn define_vm(home: &Home, kernel: &Path, initrd: &Path) {
    home.run_ok(&[
        "vm",
        "define",
        "app",
        "--disk",
        "app-root",
        "--memory",
        "256MiB",
        "--nic",
        "prod",
        "--health-serial",
        HEALTH,
        "--health-timeout",
        "4m",
        "--kernel",
        arg(kernel),
        "--initrd",
        arg(initrd),
        "--append",
        APPEND,
    ]);
}

/// Runs `args` in `home`, which must succeed, and returns its JSON output
/// and how long it took.
fn timed_json(home: &Home, args: &[&str]) -> (serde_json::Value, Duration) {
    let t0 = Instant::now();
    let out = home.run(args);
    let took = t0.elapsed();
    assert!(out.status.success(), "lifeboat {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    (json(&out), took)
}

/// The least time `bytes` take through a link limited to [`LIMIT`].
fn at_least(bytes: u64) -> Duration {
    Duration::from_secs_f64(bytes as f64 / LIMIT as f64).saturating_sub(BURST)
}

#[test]
#[ignore = "boots two VMs (full pass only): scripts/test.sh --full"]
fn site_a_lost_fails_over_at_site_b_from_the_server_and_fails_back_throttled() {
    let bin = paths::lifeboat_bin();
    let scratch = Scratch::new(&bin, "lb-vmsite-");
    let dir = scratch.dir();

    // Site B: the site directory, the vault directory, the server.
    let mut site = Site::init(&bin, dir);
    let vault_dir = dir.join("vaults/main");
    fs::create_dir_all(&vault_dir).unwrap();
    site.serve(&[("main", &vault_dir)]);
    let url = site.url("main");

    // Site A: its own home, joined to the site; the customer keeps the key
    // file outside it. The disk image is on site A's storage.
    let home_a = &scratch.home;
    site.join("site-a", &["main"], home_a);
    let key = dir.join("customer.key");
    home_a.key_new(&key);
    home_a.run_ok(&["vault", "init", &url, "--key", arg(&key)]);
    let image = dir.join("disk.img");
    fs::File::create(&image).unwrap().set_len(DISK_SIZE).unwrap();
    let mkfs = Command::new(paths::tool("mkfs.ext4"))
        .args(["-q", "-F", "-b", "4096", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard"])
        .arg(&image)
        .output()
        .unwrap();
    assert_ok(&mkfs, "mkfs.ext4");
    let sock = dir.join("vm.sock");
    let protect = |home: &Home, extra: &[&str]| {
        let mut args =
            vec!["protect", "app-root", "--image", arg(&image), "--block-size", "64KiB", "--vault", &url, "--key"];
        args.push(arg(&key));
        args.extend_from_slice(extra);
        home.run_ok(&args);
    };
    let listen = format!("unix:{}", sock.display());
    protect(home_a, &["--rpo", "1s", "--listen", &listen]);
    let kernel = paths::kernel();
    let files: Vec<GuestFile> = (1..=ROUNDS)
        .flat_map(|r| ["a", "b"].map(|w| GuestFile { path: format!("/data/r{r}{w}"), data: file_data(r, w) }))
        .collect();
    fs::create_dir_all(dir.join("work")).unwrap();
    fs::create_dir_all(dir.join("recovered")).unwrap();
    let workload = initramfs::build(&kernel, &dir.join("work"), &workload_script(), &files);
    let recovered = initramfs::build(&kernel, &dir.join("recovered"), RECOVERED, &[]);
    define_vm(home_a, &kernel.vmlinuz, &recovered);

    // The guest writes its workload through the agent, which replicates.
    let mut agent = home_a.agent(&[], &["app-root"]);
    agent.wait_line("app-root: point 1 committed", Duration::from_secs(60));
    let vm = Vm {
        kernel: kernel.clone(),
        initrd: workload,
        socket: sock.clone(),
        export: "app-root".into(),
        timeout: Duration::from_secs(300),
        qmp: None,
        qga: None,
        ignore_power_button: false,
    };
    let steps = vm.run().assert_success();
    assert_eq!(steps.last().map(String::as_str), Some("done"), "guest steps {steps:?}");
    let off = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = PointInfo::parse_list(&home_a.run_ok(&["points", "app-root", "--json"]).stdout);
        if p.last().is_some_and(|l| l.cut_time_ns > off) {
            break;
        }
        assert!(Instant::now() < deadline, "no point after the guest stopped:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let shipped_by_a = site.log().iter().filter(|l| l.contains("site-a")).count();
    assert!(shipped_by_a > 0, "the server never saw site A:\n{:#?}", site.log());

    // Site A is lost: its agent killed, its home gone. The image survives.
    let agent_pid = agent.pid();
    drop(agent);
    assert!(!pid_alive(u64::from(agent_pid)), "site A's agent still runs");
    fs::remove_dir_all(&home_a.dir).unwrap();
    let image_at_loss = fs::read(&image).unwrap();

    // Site B: a recovery home enrolled as the lost host, with only the key.
    let home_b = Home::new(&bin, dir.join("recovery-home"));
    site.join("site-a", &["main"], &home_b);
    let _reaper = Reaper(home_b.dir.join("failovers"));
    let kv = ["--vault", &url, "--key", arg(&key)];
    let mut args = vec!["failover", "app", "--unplanned", "--network", "prod=none", "--json"];
    args.extend(kv);
    let (job, _) = timed_json(&home_b, &args);
    assert_eq!((job["kind"].as_str(), job["health"].as_str()), (Some("unplanned"), Some("passed")), "{job}");
    assert_eq!(guest_round(&job), ROUNDS, "the recovered guest does not find its last round");
    eprintln!("unplanned failover at site B from the server: point {}, RTO {:.1} s", job["point"], job["rto_seconds"]);
    home_b.run_ok(&["failover", "commit", "app"]);
    let console = home_b.dir.join("failovers/app/console.log");
    let t0 = Instant::now();
    // --prepare presses the power button: the guest must have armed it.
    let ready = |t: &str| t.contains("@@LB STEP wrote") && t.contains("@@LB BUTTON armed");
    while !ready(&fs::read_to_string(&console).unwrap_or_default()) {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the recovered guest never wrote its data and armed its power button:\n{}",
            fs::read_to_string(&console).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Failback, first half at site B: only what the guest changed travels,
    // through the server, at the limit.
    let (prep, prep_took) = timed_json(&home_b, &["failback", "app", "--prepare", "--json", "--bandwidth", BANDWIDTH]);
    let shipped = prep["bytes_shipped"].as_u64().unwrap();
    assert!(!pid_alive(job["pid"].as_u64().unwrap()), "the recovered VM still runs after --prepare");
    assert!(
        (256 * KIB..4 * MIB).contains(&shipped),
        "failback shipped {shipped} bytes for 256 KiB written on a {} MiB disk",
        DISK_SIZE / MIB
    );
    assert!(
        prep_took >= at_least(shipped),
        "--prepare shipped {shipped} bytes in {prep_took:?}: faster than {BANDWIDTH}"
    );
    let recovered_disk = fs::read(home_b.dir.join("failovers/app/disks/app-root.raw")).unwrap();
    assert!(recovered_disk != image_at_loss, "the recovered VM changed nothing: the failback proves nothing");

    // Site A rebuilt: a new home rejoins as the same host, protects the
    // surviving image and defines the VM again, then fetches what differs.
    let home_a2 = Home::new(&bin, dir.join("home"));
    site.join("site-a", &["main"], &home_a2);
    protect(&home_a2, &[]);
    define_vm(&home_a2, &kernel.vmlinuz, &recovered);
    let (done, took) = timed_json(&home_a2, &["failback", "app", "--json", "--bandwidth", BANDWIDTH]);
    let fetched = done["bytes_fetched"].as_u64().unwrap();
    assert!(
        (256 * KIB..4 * MIB).contains(&fetched),
        "failback fetched {fetched} bytes for 256 KiB the recovered VM wrote on a {} MiB disk",
        DISK_SIZE / MIB
    );
    assert!(took >= at_least(fetched), "failback fetched {fetched} bytes in {took:?}: faster than {BANDWIDTH}");
    assert!(fs::read(&image).unwrap() == recovered_disk, "the image at site A is not the recovered VM's disk");
    // Protection resumes at site A: its verify finds nothing to send.
    let r = home_a2.ship("app-root");
    assert_eq!(r.new_blocks, 0, "after failback site A still had something to ship: {r:?}");
    eprintln!(
        "failback over the link at {BANDWIDTH}: {shipped} bytes shipped back from site B in {prep_took:?}, \
         {fetched} bytes fetched at site A in {took:?}"
    );

    // Site B's copy can go now (its home no longer reaches the vault: site A
    // took its identity back).
    home_b.run_ok(&["failover", "cleanup", "app"]);
    assert!(!home_b.dir.join("failovers/app").exists() && !home_b.dir.join("disks/app-root").exists());

    let status = site.stop();
    assert!(status.success(), "vault serve exited with {status}");
}
