//! A measurement, not a test (ignored; run by hand in release):
//!
//! `cargo test -p site --release --test upload_throughput -- --ignored --nocapture`
//!
//! Streams one pack (`LIFEBOAT_UPLOAD_MIB`, default 256 MiB, of 64 KiB
//! blobs) through `Backend::writer` into a local vault directory (the floor)
//! and into a vault server on loopback (TLS 1.3, HTTP/2, the server's
//! checks), both on the temporary directory's device, median of 3 each, and
//! prints MB/s and the ratio.

mod common;

use std::time::Instant;

use common::{pack, TestSite};
use vault::{Backend, Kind, LocalBackend};

fn upload(b: &dyn Backend, name: &str, bytes: &[u8]) -> f64 {
    let t = Instant::now();
    let mut w = b.writer(Kind::Pack).unwrap().expect("a streaming writer");
    for chunk in bytes.chunks(1 << 20) {
        w.write(chunk).unwrap();
    }
    w.commit(name).unwrap();
    t.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
#[ignore = "a measurement to run by hand in release mode"]
fn upload_throughput() {
    let mib: usize = std::env::var("LIFEBOAT_UPLOAD_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let site = TestSite::start(&["v"]);
    let remote = site.connect(&site.enroll("alpha", &["v"]), "v");
    let dir = tempfile::tempdir().unwrap();
    let local = LocalBackend::create(&dir.path().join("local")).unwrap();
    let (mut l, mut r) = (Vec::new(), Vec::new());
    for seed in 0..3u64 {
        let (name, bytes) = pack(seed, mib * 16, 65536);
        l.push(upload(&local, &name, &bytes));
        r.push(upload(&remote, &name, &bytes));
    }
    let size = (mib << 20) as f64;
    let (l, r) = (median(l), median(r));
    println!("one {mib} MiB pack, median of 3:");
    println!("  local vault directory: {:>7.0} MB/s", size / l / 1e6);
    println!("  vault server (loopback TLS): {:>7.0} MB/s", size / r / 1e6);
    println!("  server / local: {:.2}", l / r);
}
