//! The churn profile (issue 16, part 1) recorded by the real `lifeboat
//! filter` process under a real NBD client (`qemu-io`): counts exact on a
//! known write pattern, records that survive a SIGKILL and a restart, and
//! recording turned off.

use std::fs;
use std::time::{Duration, Instant};

use serde_json::Value;
use vm_tests::clients::{nbd_uri, qemu_io};
use vm_tests::lifeboat::{unix_listen, Filter, Home, Scratch};

const KIB: u64 = 1024;
const BS: u64 = 64 * KIB;
/// [`BS`] as a length.
const BSZ: usize = 64 << 10;

fn scratch() -> Scratch {
    Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-profile-")
}

/// `lifeboat filter NAME` on `sock`, its profile intervals `interval` s long.
fn filter(home: &Home, name: &str, sock: &std::path::Path, interval: u32) -> Filter {
    let mut f = home.spawn_with(&["filter", name, "--listen", &unix_listen(sock)], |c| {
        c.env("LIFEBOAT_PROFILE_INTERVAL", interval.to_string());
    });
    f.wait_line(&format!("filter {name} listening on"), Duration::from_secs(30));
    f
}

/// `lifeboat profile export NAME`, parsed.
fn export(home: &Home, name: &str) -> Vec<Value> {
    let out = home.run_ok(&["profile", "export", name]);
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn sum(records: &[Value], field: &str) -> u64 {
    records.iter().map(|r| r[field].as_u64().unwrap()).sum()
}

#[test]
fn a_real_client_s_writes_are_counted_exactly() {
    let s = scratch();
    let image = s.path("disk.img");
    fs::write(&image, vec![0x5a; 16 * BSZ]).unwrap();
    s.home.protect("vm1", &image, BS);
    let sock = s.path("f.sock");
    // One interval for the whole test: the stop closes it.
    let f = filter(&s.home, "vm1", &sock, 3600);
    qemu_io(
        &nbd_uri("vm1", &sock),
        &[
            format!("write -P 0 0 {BS}"),           // block 0: zero data, written as data
            format!("write -P 65 {BS} {}", 2 * BS), // blocks 1 and 2: the same text-like contents
            format!("write -P 66 {} {BS}", 3 * BS), // block 3
            format!("write -P 66 {} 4096", 3 * BS), // block 3 again, contents unchanged
            format!("write -z {} {BS}", 10 * BS),   // block 10: write-zeroes
            format!("discard {} {BS}", 11 * BS),    // block 11: trim
        ],
    );
    f.stop();
    let records = export(&s.home, "vm1");
    assert_eq!(records.len(), 1, "one interval, closed by the stop: {records:?}");
    let r = &records[0];
    assert_eq!(r["writes"], 6);
    assert_eq!(r["bytes_written"].as_u64().unwrap(), 4 * BS + 4096);
    assert_eq!(r["bytes_zeroed"].as_u64().unwrap(), 2 * BS);
    assert_eq!(r["distinct"], serde_json::json!([6, 6, 6, 6, 6]), "blocks 0, 1, 2, 3, 10 and 11");
    // The window's changed blocks read back at its end (the stop), each
    // once: 0, 10 (write-zeroes) and 11 (trimmed) zero; 1 new; 2 a repeat
    // of 1; 3 new, however often it was written.
    assert_eq!(
        (r["sampled"].as_u64(), r["sampled_zero"].as_u64(), r["sampled_repeat"].as_u64()),
        (Some(6), Some(3), Some(1))
    );
    assert_eq!(r["sampled_bytes"].as_u64().unwrap(), 2 * BS);
    let stored = r["sampled_stored"].as_u64().unwrap();
    assert!(stored > 0 && stored < BS / 8, "a repeated byte compresses to almost nothing: {stored}");

    let show = s.home.run_ok(&["profile", "show", "vm1", "--json"]);
    let v: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!((v["disk"].as_str(), v["intervals"].as_u64(), v["writes"].as_u64()), (Some("vm1"), Some(1), Some(6)));
    assert!(
        (v["zero_share"].as_f64().unwrap() - 0.5).abs() < 1e-9
            && (v["repeat_share"].as_f64().unwrap() - 1.0 / 6.0).abs() < 1e-9
    );
    let text = String::from_utf8(s.home.run_ok(&["profile", "show", "vm1"]).stdout).unwrap();
    assert!(text.contains("distinct blocks changed per window") && text.contains("6 read back: 50.0% zero"), "{text}");
}

#[test]
fn the_profile_survives_a_sigkill_and_goes_on_after_a_restart() {
    let s = scratch();
    let image = s.path("disk.img");
    fs::write(&image, vec![0u8; 16 * BSZ]).unwrap();
    s.home.protect("vm1", &image, BS);
    let sock = s.path("f.sock");
    let mut f = filter(&s.home, "vm1", &sock, 1);
    qemu_io(&nbd_uri("vm1", &sock), &[format!("write -P 7 0 {BS}")]);
    // Wait for the interval holding the write to be written (1 s intervals).
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        let records = export(&s.home, "vm1");
        if sum(&records, "writes") == 1 {
            break records;
        }
        assert!(Instant::now() < deadline, "no interval with the write within 30 s: {records:?}\n{}", f.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    f.signal(libc::SIGKILL);
    f.wait(Duration::from_secs(30));
    let killed = export(&s.home, "vm1");
    assert_eq!(&killed[..before.len()], &before[..], "records written before the SIGKILL are intact");
    assert_eq!(sum(&killed, "writes"), 1);

    let restart = system::clock::now_ns() / 1_000_000_000;
    let f = filter(&s.home, "vm1", &sock, 1);
    qemu_io(&nbd_uri("vm1", &sock), &[format!("write -P 8 {BS} {BS}"), format!("write -P 9 {BS} {BS}")]);
    f.stop();
    let after = export(&s.home, "vm1");
    assert_eq!(&after[..killed.len()], &killed[..], "the restart kept every record");
    let seqs: Vec<u64> = after.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "sequence numbers go on: {seqs:?}");
    assert_eq!(sum(&after, "writes"), 3);
    let new = &after[killed.len()..];
    assert!(!new.is_empty() && new.iter().all(|r| r["since"].as_u64().unwrap() >= restart), "{new:?}");
    assert_eq!(sum(new, "bytes_written"), 2 * BS);
}

#[test]
fn recording_turned_off_writes_nothing_and_show_says_why() {
    let s = scratch();
    let image = s.path("disk.img");
    fs::write(&image, vec![0u8; 4 * BSZ]).unwrap();
    let img = image.to_str().unwrap();
    s.home.run_ok(&["protect", "vm1", "--image", img, "--profile", "off"]);
    let conf = fs::read_to_string(s.home.dir.join("disks/vm1/disk.toml")).unwrap();
    assert!(conf.contains("profile = false"), "{conf}");
    let sock = s.path("f.sock");
    let f = filter(&s.home, "vm1", &sock, 1);
    qemu_io(&nbd_uri("vm1", &sock), &[format!("write -P 7 0 {BS}")]);
    f.stop();
    assert!(!s.home.dir.join("disks/vm1/churn.profile").exists());
    let out = s.home.run(&["profile", "show", "vm1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("recording is off") && err.contains("--profile on"), "{err}");
    // Turned on again for the disk already protected: only that changes.
    let out = s.home.run_ok(&["protect", "vm1", "--image", img, "--profile", "on"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("churn profile on"));
    let f = filter(&s.home, "vm1", &sock, 1);
    qemu_io(&nbd_uri("vm1", &sock), &[format!("write -P 7 0 {BS}")]);
    f.stop();
    assert_eq!(sum(&export(&s.home, "vm1"), "writes"), 1);
    // A bad value is a usage error that says what to write.
    let out = s.home.run(&["protect", "vm1", "--image", img, "--profile", "maybe"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("say on or off"));
}

/// Writes a day of 30 s records for disk `name` into its churn profile, as
/// the filter would have: 100 distinct blocks in every 30 s window, 500 in
/// every 5 min window, 1,000 in every 15 min window, 2,000 an hour and
/// 5,000 a day, each 30 s interval writing 10 MB in 100 requests.
fn a_day_of_churn(home: &Home, name: &str, block_count: u64) {
    use profile::{Record, Series, SeriesShape, DEFAULT_CAPACITY};
    let shape = SeriesShape { capacity: DEFAULT_CAPACITY, interval: 30, block_size: 65536, block_count };
    let path = home.dir.join(format!("disks/{name}/churn.profile"));
    let (mut series, _) = Series::open_or_create(&path, shape).unwrap();
    let t0 = 1_800_000_000i64; // a multiple of 900
    for i in 0..2880i64 {
        let start = t0 + 30 * i;
        // Running counts: the 5 min window grows by 50 blocks an interval to
        // 500 at its end, the 15 min one by 100/3 to 1,000.
        let in5 = u32::try_from(i % 10 + 1).unwrap();
        let in15 = u32::try_from(i % 30 + 1).unwrap();
        let (in_hour, in_day) = (u32::try_from(i % 120 + 1).unwrap(), u32::try_from(i + 1).unwrap());
        series
            .append(Record {
                start,
                seconds: 30,
                bytes_written: 10_000_000,
                writes: 100,
                distinct: [100, 50 * in5, (1000 * in15) / 30, (2000 * in_hour) / 120, (5000 * in_day) / 2880],
                since: t0,
                ..Record::default()
            })
            .unwrap();
    }
}

#[test]
fn plan_capacity_reads_real_profiles_and_says_what_a_link_cannot_hold() {
    let s = scratch();
    let image = s.path("disk.img");
    // A 1 GiB image holding 256 MiB: what an initial sync reads. Half of
    // it is random, half text, which the vault stores at a sliver.
    let f = fs::File::create(&image).unwrap();
    f.set_len(1 << 30).unwrap();
    drop(f);
    let mut data = vm_tests::pseudo_random(128 << 20, 5);
    data.extend(b"lifeboat keeps a ladder of recovery points. ".iter().cycle().take(128 << 20));
    fs::write(&image, &data).unwrap();
    fs::OpenOptions::new().write(true).open(&image).unwrap().set_len(1 << 30).unwrap();
    s.home.protect("vm1", &image, BS);
    let out = s.home.run(&["plan-capacity"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("has a churn profile yet"), "{out:?}");
    a_day_of_churn(&s.home, "vm1", 16_384);

    let out = s.home.run_ok(&["plan-capacity", "--rpo", "5m", "--link", "100Mbit", "--keep-daily", "15", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = &v["disks"][0];
    assert_eq!(d["name"], "vm1");
    // 5 min at p95: 500 blocks (the 5 min window beats ten 30 s ones), all
    // shipped (no sample), 30% headroom, in 300 s.
    let want = 500.0 * 65536.0 * 1.3 / 300.0;
    assert!((d["bandwidth_p95"].as_f64().unwrap() - want).abs() < 1e-6, "{d}");
    // Initial sync: of the 256 MiB the image holds, what a sample of it
    // says the vault stores (the random half; the churn's sample, empty
    // here, would have said all of it), over 12.5 MB/s. 256 blocks sampled:
    // within 15%.
    let sync = d["initial_sync_seconds"].as_f64().unwrap();
    let half = 134_217_728.0 / 12.5e6;
    assert!((sync - half).abs() < 0.15 * half, "{sync} s, not about {half} s");
    assert_eq!(d["achievable_rpo"], 5.0, "100 Mbit/s holds even 5 s");
    assert!(d["problems"].as_array().unwrap().is_empty(), "{d}");
    assert_eq!(v["host"]["storage_by_day"].as_array().unwrap().len(), 17);

    // A link too slow for any RPO, and a synthetic disk beside the real one.
    let out = s.home.run_ok(&[
        "plan-capacity",
        "vm1",
        "--synthetic",
        "db:size=100G,churn=1MB/s,burst=3,ships=0.5",
        "--rpo",
        "5m",
        "--link",
        "1Mbit",
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("cannot be protected at this target"), "{text}");
    assert!(text.contains("db: its churn exceeds the link at any RPO"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("vm1 ")) && text.lines().any(|l| l.starts_with("host ")), "{text}");
    // A malformed spec is a usage error that shows the form.
    let out = s.home.run(&["plan-capacity", "--synthetic", "db:size=1G"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("churn= is missing"), "{out:?}");
}

#[test]
fn the_html_report_renders_its_charts_in_a_headless_browser() {
    let s = scratch();
    let image = s.path("disk.img");
    fs::write(&image, vec![0u8; 16 * BSZ]).unwrap();
    s.home.protect("vm1", &image, BS);
    a_day_of_churn(&s.home, "vm1", 16);
    let report = s.path("plan.html");
    s.home.run_ok(&[
        "plan-capacity",
        "--synthetic",
        "db:size=100G,churn=1MB/s",
        "vm1",
        "--link",
        "10Mbit",
        "--keep-daily",
        "15",
        "--html",
        report.to_str().unwrap(),
    ]);
    let html = fs::read_to_string(&report).unwrap();
    // Self-contained: nothing fetched from elsewhere.
    for outside in ["<link", " src=", "url(", "@import", "https://", "http://cdn"] {
        assert!(!html.contains(outside), "the report refers to something outside it: {outside}");
    }
    let chromium = vm_tests::paths::tool("chromium");
    let url = format!("file://{}", report.display());
    let browse = |extra: &[&str]| {
        std::process::Command::new(&chromium)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"])
            .arg("--virtual-time-budget=10000")
            .arg(format!("--user-data-dir={}", s.path("chromium-profile").display()))
            .args(extra)
            .arg(&url)
            .output()
            .expect("run chromium")
    };
    let dom = browse(&["--dump-dom"]);
    let (out, err) = (String::from_utf8_lossy(&dom.stdout), String::from_utf8_lossy(&dom.stderr));
    assert!(dom.status.success(), "chromium failed: {err}");
    // Three charts: churn (vm1), the RPO curve (host), storage (vm1, db, host).
    let rendered: usize = out
        .split("data-rendered=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the page's check did not run:\n{out}\n{err}"));
    assert_eq!(rendered, 5, "chart lines drawn with a size");
    assert!(out.matches("<svg class=\"chart\"").count() == 3, "{out}");
    assert!(!err.contains("CONSOLE") && !err.contains("Uncaught"), "the page logged to the console: {err}");
    // A screenshot of it: a PNG of the window's size with something on it.
    let shot = s.path("plan.png");
    let out = browse(&[&format!("--screenshot={}", shot.display()), "--window-size=1000,1800"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let png = fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let be = |i: usize| u32::from_be_bytes(png[i..i + 4].try_into().unwrap());
    assert_eq!((be(16), be(20)), (1000, 1800), "IHDR width and height");
    assert!(png.len() > 20_000, "a nearly blank screenshot: {} bytes", png.len());
}

#[test]
fn bench_measures_this_host_and_plan_capacity_counts_cores_from_it() {
    use std::os::unix::fs::PermissionsExt;
    let s = scratch();
    let dir = s.path("bench-dir");
    let out = s.home.run_ok(&["bench", "--dir", dir.to_str().unwrap(), "--size", "32MiB", "--json"]);
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    let cores = m["cores"].as_u64().unwrap();
    assert!(cores >= 1);
    for list in ["pipeline", "crypto"] {
        let l = m[list].as_array().unwrap();
        let threads: Vec<u64> = l.iter().map(|x| x["threads"].as_u64().unwrap()).collect();
        assert_eq!(threads, (1..=cores).collect::<Vec<_>>(), "{list}: one per thread count");
        assert!(l.iter().all(|x| x["bytes_per_second"].as_f64().unwrap() > 0.0), "{list}");
    }
    for k in ["device_read", "engine_read", "device_write", "restore"] {
        assert!(m[k].as_f64().unwrap() > 0.0, "{k}: {m}");
    }
    assert_eq!(m["pipeline_per_core"], m["pipeline"][0]["bytes_per_second"]);
    // Nothing is left in --dir; the profile is in the home, private.
    assert!(fs::read_dir(&dir).unwrap().next().is_none(), "the bench left files in {}", dir.display());
    let saved = s.home.dir.join("machine.json");
    assert_eq!(fs::metadata(&saved).unwrap().permissions().mode() & 0o777, 0o600);
    let saved: Value = serde_json::from_slice(&fs::read(&saved).unwrap()).unwrap();
    assert_eq!(saved["pipeline_per_core"], m["pipeline_per_core"]);

    // plan-capacity counts cores from it: 5 min at p95 (twice the mean of
    // 300 MB) with 30% headroom, over one worker's rate.
    let out = s.home.run_ok(&["plan-capacity", "--synthetic", "db:size=10G,churn=1MB/s", "--json"]);
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = 600e6 * 1.3 / 300.0 / m["pipeline_per_core"].as_f64().unwrap();
    let got = plan["disks"][0]["cores"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-9 * want, "{got} vs {want}");
    // A size the bench cannot use is refused with the rule.
    let out = s.home.run(&["bench", "--dir", dir.to_str().unwrap(), "--size", "1MiB"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 16 MiB"), "{out:?}");
}
