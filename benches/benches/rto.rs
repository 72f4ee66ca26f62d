//! RTO of one VM, full restore against instant recovery, side by side
//! (issue 4: "RTO for a 4 GiB VM, full restore vs instant recovery").
//!
//! `cargo build --release -p cli && LIFEBOAT_BIN=$PWD/target/release/lifeboat cargo bench -p benches --bench rto`
//!
//! A raw disk of `LIFEBOAT_RTO_SIZE_MIB` (default 4096) holding an ext4 file
//! system whose data fill `LIFEBOAT_RTO_FILL_MIB` (default 3072) of random
//! bytes, plus the small manifest-checked files the recovered guest verifies.
//! It is protected, its VM defined (Debian cloud kernel + busybox initramfs
//! booted directly, as in the vm-tests), and shipped once. Then, `REPS`
//! times (default 2), alternating the order, the page cache dropped before
//! each: `lifeboat failover --test --json` (restore every block, then boot)
//! and `lifeboat failover --test --instant --json` (boot on the vault),
//! each cleaned up after. RTO = from the command's start to the guest's
//! health line (the job's `rto_seconds`). Prints both and their ratio.
//! Not a test: it asserts only that every failover's health check passed.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use vm_tests::initramfs;
use vm_tests::lifeboat::Home;
use vm_tests::paths;
use vm_tests::replicate::arg;

const CHECK: &str = r#"
if mount -t ext4 /dev/vda /mnt && (cd /mnt/lb && sha256sum -c -s manifest); then echo "@@LB HEALTH ok"; else echo "@@LB HEALTH-FAIL"; fi
sleep 3600
"#;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn sh(cmd: &str, dir: &Path) {
    let st = Command::new("bash").args(["-eo", "pipefail", "-c", cmd]).current_dir(dir).status().unwrap();
    assert!(st.success(), "{cmd}");
}

fn drop_caches() {
    let _ = Command::new("sync").status();
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench` / nextest discovery: nothing to list.
    }
    let size_mib = env_u64("LIFEBOAT_RTO_SIZE_MIB", 4096);
    let fill_mib = env_u64("LIFEBOAT_RTO_FILL_MIB", 3072);
    let reps = env_u64("REPS", 2);
    let work = tempfile::Builder::new().prefix("lb-rto-").tempdir_in("/var/tmp").unwrap();
    let dir = work.path();
    let bin = paths::lifeboat_bin();
    eprintln!("rto bench: {size_mib} MiB disk, {fill_mib} MiB of data, {reps} reps, binary {}", bin.display());

    let t = Instant::now();
    fs::create_dir_all(dir.join("root/lb")).unwrap();
    sh(&format!("head -c {fill_mib}M /dev/urandom > root/bulk.bin"), dir);
    sh("head -c 300000 /dev/urandom > root/lb/a.bin; head -c 70000 /dev/urandom > root/lb/b.bin", dir);
    sh("cd root/lb && sha256sum a.bin b.bin > manifest", dir);
    sh(&format!("truncate -s {size_mib}M disk.img && mkfs.ext4 -q -F -d root disk.img && rm -rf root"), dir);
    let home = Home::new(&bin, dir.join("home"));
    let (key, vault) = (dir.join("k.key"), dir.join("vault"));
    let run = |h: &Home, args: &[&str]| {
        let o = h.run(args);
        assert!(o.status.success(), "lifeboat {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        o
    };
    run(&home, &["key", "new", "--out", arg(&key)]);
    run(&home, &["vault", "init", arg(&vault), "--key", arg(&key)]);
    run(
        &home,
        &["protect", "rto-root", "--image", arg(&dir.join("disk.img")), "--vault", arg(&vault), "--key", arg(&key)],
    );
    let kernel = paths::kernel();
    let initrd = initramfs::build(&kernel, dir, CHECK, &[]);
    run(
        &home,
        &[
            "vm",
            "define",
            "rto",
            "--disk",
            "rto-root",
            "--memory",
            "256MiB",
            "--health-serial",
            "@@LB HEALTH ok",
            "--kernel",
            arg(&kernel.vmlinuz),
            "--initrd",
            arg(&initrd),
            "--append",
            "console=ttyS0 quiet loglevel=1 panic=-1 rdinit=/init",
        ],
    );
    run(&home, &["ship", "rto-root", "--once"]);
    eprintln!("set up (image, full sync) in {:.0} s", t.elapsed().as_secs_f64());

    let site = Home::new(&bin, dir.join("site"));
    let mut results: Vec<(&str, f64)> = Vec::new();
    for rep in 0..reps {
        let order: [bool; 2] = if rep % 2 == 0 { [false, true] } else { [true, false] };
        for instant in order {
            drop_caches();
            let mut args = vec!["failover", "rto", "--test", "--json", "--vault", arg(&vault), "--key", arg(&key)];
            if instant {
                args.push("--instant");
            }
            let o = run(&site, &args);
            let job: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(job["health"], "passed", "{job}");
            let rto = job["rto_seconds"].as_f64().unwrap();
            let mode = if instant { "instant recovery" } else { "full restore" };
            eprintln!("rep {}: {mode}: RTO {rto:.2} s", rep + 1);
            results.push((mode, rto));
            run(&site, &["failover", "cleanup", "rto"]);
        }
    }
    let median = |mode: &str| {
        let mut v: Vec<f64> = results.iter().filter(|r| r.0 == mode).map(|r| r.1).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (full, instant) = (median("full restore"), median("instant recovery"));
    println!("\nRTO of a {size_mib} MiB VM ({fill_mib} MiB of data), median of {reps}, {}:", vm_tests::qemu::accel());
    println!("| mode | RTO (s) | vs instant |");
    println!("| --- | ---: | ---: |");
    println!("| full restore, then boot | {full:.2} | {:.1}x |", full / instant);
    println!("| instant recovery (boot on the vault) | {instant:.2} | 1.0x |");
}
