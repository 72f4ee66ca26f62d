//! `--bandwidth` (issue 14, point 3) with the real binary: a limited cycle
//! cannot ship faster than its limit, `status` says the disk waited for it,
//! and a limit that does not parse is a usage error naming the value. The
//! limiter's accuracy over 30 s is measured on a virtual clock in
//! `vault::throttle`'s unit tests (and, against wall time, by the benchmark);
//! here only the lower bound is asserted, which no slow machine can break.

use std::fs;
use std::time::Instant;

use vm_tests::lifeboat::Scratch;
use vm_tests::replicate::ShipReport;
use vm_tests::Rng;

const MIB: usize = 1 << 20;

fn scratch() -> Scratch {
    Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-bw-")
}

#[test]
fn a_limited_cycle_ships_no_faster_than_its_limit_and_status_says_it_waited() {
    let s = scratch();
    let (key, vault, image) = (s.path("k.key"), s.path("vault"), s.path("disk.img"));
    s.home.key_new(&key);
    s.home.vault_init(&vault, &key);
    fs::write(&image, Rng::new(14).bytes(8 * MIB)).unwrap();
    s.home.protect_replicated("bw", &image, 64 * 1024, &vault, &key);

    let rate = 4_000_000.0; // 4MB/s
    let t = Instant::now();
    let o = s.home.run_env(&[], &["ship", "bw", "--once", "--json", "--bandwidth", "4MB/s"]);
    let took = t.elapsed().as_secs_f64();
    assert!(o.status.success(), "ship --bandwidth: {}", String::from_utf8_lossy(&o.stderr));
    let r = ShipReport::parse(&o.stdout);
    assert!(r.bytes_shipped >= 8 * MIB as u64, "the full sync shipped {} bytes", r.bytes_shipped);
    // Paid before sent, with at most a 100 ms burst banked: the cycle cannot
    // have taken less than its bytes at the rate, less the burst.
    let floor = r.bytes_shipped as f64 / rate - 0.1;
    assert!(
        took >= floor,
        "{} bytes at 4MB/s took {took:.2} s, under the {floor:.2} s the limit allows",
        r.bytes_shipped
    );

    let o = s.home.run_env(&[], &["status", "bw", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let c = &v[0]["last_cycle"];
    assert_eq!(c["bandwidth_limit"], "4MB/s", "{v}");
    let waited = c["throttled_ms"].as_u64().unwrap();
    assert!(waited as f64 >= (floor - 0.5) * 1000.0, "status says the cycle waited {waited} ms of {took:.2} s");
    let o = s.home.run_env(&[], &["status", "bw"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("bandwidth limit 4MB/s: the last cycle waited"), "{text}");

    // Without a limit, nothing is said about one.
    fs::write(&image, Rng::new(15).bytes(8 * MIB)).unwrap();
    let r = ShipReport::parse(&s.home.run_env(&[], &["ship", "bw", "--once", "--json"]).stdout);
    assert_eq!(r.sequence, 2);
    let o = s.home.run_env(&[], &["status", "bw", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["last_cycle"]["throttled_ms"], 0, "{v}");
    assert!(v[0]["last_cycle"]["bandwidth_limit"].is_null(), "{v}");
}

#[test]
fn a_limit_that_does_not_parse_is_a_usage_error_naming_it() {
    let s = scratch();
    for (args, says) in [
        (vec!["ship", "x", "--once", "--bandwidth", "fast"], "\"fast\""),
        (vec!["agent", "--bandwidth", "mon-fry 08:00-18:00=1MB/s"], "\"fry\""),
        (vec!["failback", "vm", "--bandwidth", "mon 8-18=1MB/s"], "HH:MM"),
    ] {
        let o = s.home.run_env(&[], &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says) && err.contains("--bandwidth"), "{args:?}: {err}");
    }
}
