//! App-consistent points through the QEMU guest agent (issue 4, item 5:
//! "freeze guest filesystems through the QEMU guest agent ... such points
//! are marked app-consistent").
//!
//! A real guest runs `qemu-ga` (Debian's, with the host's libraries, in its
//! initramfs) on a virtio-serial channel and writes files to ext4 without
//! syncing, while `lifeboat agent` replicates its disk every second with
//! `--app-every 1s --guest-agent SOCK`. Freezing ext4 flushes its journal and
//! clears `needs_recovery`, so an app-consistent point must be a clean file
//! system as it stands — `e2fsck -fn` passes with no journal replay — while
//! the guest was in the middle of writing. At least two such points must be
//! cut during the workload, and the guest must have finished its work (the
//! thaw always came).
//!
//! Boots a VM, so `#[ignore]`d in the quick pass; `scripts/test.sh --full`
//! runs it.

// Test code for 64-bit hosts.
#![allow(clippy::cast_possible_truncation)]

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vm_tests::initramfs;
use vm_tests::lifeboat::Scratch;
use vm_tests::paths;
use vm_tests::process::assert_ok;
use vm_tests::qemu::Vm;
use vm_tests::replicate::{arg, PointInfo};

const SCRIPT: &str = r#"
chmod 755 /usr/sbin/qemu-ga /lib64/* /lib/x86_64-linux-gnu/*
port=$(ls /dev/vport*p1 | head -1)
/usr/sbin/qemu-ga -m virtio-serial -p $port -t /tmp -f /tmp/qga.pid -d
mount -t ext4 /dev/vda /mnt
mkdir -p /mnt/w
i=1
while [ $i -le 40 ]; do
  dd if=/dev/urandom of=/mnt/w/f$i bs=64k count=4 2>/dev/null
  i=$((i+1))
  sleep 0.2
done
echo '@@LB STEP wrote'
# A freeze may be in progress (umount of a frozen file system is EBUSY);
# the thaw comes within moments.
n=0
until umount /mnt 2>/dev/null; do n=$((n+1)); [ $n -lt 60 ] || exit 1; sleep 0.25; done
"#;

#[test]
#[ignore = "boots a VM (full pass only): scripts/test.sh --full"]
fn guest_agent_frozen_points_are_clean_file_systems_without_journal_replay() {
    let scratch = Scratch::new(paths::lifeboat_bin(), "lb-vmqga-");
    let dir = scratch.dir();
    let home = &scratch.home;
    let image = dir.join("disk.img");
    fs::File::create(&image).unwrap().set_len(64 << 20).unwrap();
    let mkfs = Command::new(paths::tool("mkfs.ext4"))
        .args(["-q", "-F", "-b", "4096", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard"])
        .arg(&image)
        .output()
        .unwrap();
    assert_ok(&mkfs, "mkfs.ext4");
    let (key, vault, sock, qga) = (dir.join("k.key"), dir.join("vault"), dir.join("vm.sock"), dir.join("qga.sock"));
    home.key_new(&key);
    home.vault_init(&vault, &key);
    home.run_ok(&[
        "protect",
        "q-root",
        "--image",
        arg(&image),
        "--block-size",
        "64KiB",
        "--vault",
        arg(&vault),
        "--key",
        arg(&key),
        "--rpo",
        "1s",
        "--listen",
        &format!("unix:{}", sock.display()),
    ]);
    home.run_ok(&[
        "vm",
        "define",
        "q",
        "--disk",
        "q-root",
        "--app-every",
        "1s",
        "--guest-agent",
        arg(&qga),
        "--hook-timeout",
        "3s",
    ]);
    let kernel = paths::kernel();
    let initrd = initramfs::build(&kernel, dir, SCRIPT, &initramfs::guest_agent_files());
    let mut agent = home.agent(&[], &["q-root"]);
    agent.wait_line("q-root: point 1 committed", Duration::from_secs(60));
    let vm = Vm {
        kernel,
        initrd,
        socket: sock,
        export: "q-root".into(),
        timeout: Duration::from_secs(300),
        qmp: None,
        qga: Some(qga),
        ignore_power_button: false,
    };
    let t = vm.run();
    let steps = t.assert_success();
    assert_eq!(steps, ["wrote"], "the guest did not finish its writes (left frozen?)\n{}", t.console_text());
    let off = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    let points = loop {
        let p = PointInfo::parse_list(&home.run_ok(&["points", "q-root", "--json"]).stdout);
        if p.last().is_some_and(|l| l.cut_time_ns > off) {
            break p;
        }
        assert!(Instant::now() < deadline, "no point after the guest stopped:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    agent.stop();

    let mut clean_during = 0;
    let copy = dir.join("p.img");
    for p in points.iter().filter(|p| p.consistency == "app-consistent" && p.cut_time_ns < off) {
        let _ = fs::remove_file(&copy);
        home.run_ok(&["restore", "q-root", "--point", &p.id.to_string(), "--out", arg(&copy)]);
        let header = Command::new(paths::tool("dumpe2fs")).arg("-h").arg(&copy).output().unwrap();
        let header = String::from_utf8_lossy(&header.stdout);
        let features = header.lines().find(|l| l.starts_with("Filesystem features:")).unwrap_or("");
        assert!(
            !features.contains("needs_recovery"),
            "app-consistent point {} needs journal recovery: {features}",
            p.id
        );
        let fsck = Command::new(paths::tool("e2fsck")).arg("-fn").arg(&copy).output().unwrap();
        assert_ok(&fsck, &format!("e2fsck -fn of app-consistent point {} without journal replay", p.id));
        clean_during += 1;
    }
    let apps = points.iter().filter(|p| p.consistency == "app-consistent").count();
    eprintln!("{} points, {apps} app-consistent, {clean_during} of them clean during the workload", points.len());
    assert!(
        clean_during >= 2,
        "only {clean_during} app-consistent points were cut while the guest wrote:\n{}",
        agent_log_hint()
    );
}

fn agent_log_hint() -> &'static str {
    "(see the agent's log above: a freeze that failed says why)"
}
