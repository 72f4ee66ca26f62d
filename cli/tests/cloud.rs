//! A protected host replicating to a cloud vault (issue 15): an S3 bucket on
//! moto's server and an Azure Blob container on Azurite, each a real server
//! process on loopback, named `s3://BUCKET/PREFIX` and
//! `az://ACCOUNT/CONTAINER/PREFIX` everywhere and reached with the settings
//! a user exports (AWS_* and AZURE_* variables). The same commands as for a
//! vault directory: init, protect, ship (full, then incremental through the
//! filter), restore byte for byte, points, check with the key.

use std::fs;

use cloud::{CloudBackend, Settings};
use vm_tests::clients::nbd_uri;
use vm_tests::cloud_servers::{Azurite, Moto};
use vm_tests::lifeboat::{Home, Scratch};
use vm_tests::replicate::{nbd_write, ShipReport};
use vm_tests::Rng;

const MIB: usize = 1 << 20;
const BIN: &str = env!("CARGO_BIN_EXE_lifeboat");

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Makes the bucket or container of `url` (Lifeboat never creates one).
fn make_bucket(vars: &[(String, String)], url: &str) {
    let at = url.parse().unwrap();
    CloudBackend::open(&at, &Settings::from_vars(vars.iter().cloned())).unwrap().create_bucket(None).unwrap();
}

fn replicate_and_restore(vars: Vec<(String, String)>, url: &str, prefix: &str) {
    let s = Scratch::new(BIN, prefix);
    make_bucket(&vars, url);
    let host = Home::new(BIN, s.path("home")).with_env(&vars);
    let key = s.path("k.key");
    let k = key.to_str().unwrap();
    host.run_ok(&["key", "new", "--out", k]);
    let o = host.run_ok(&["vault", "init", url, "--key", k]);
    assert!(stdout(&o).contains(&format!("vault created in {url}")), "{}", stdout(&o));
    // A second init of the same place is refused: the config exists.
    let o = host.run(&["vault", "init", url, "--key", k]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("already a Lifeboat vault"), "{}", stderr(&o));

    let image = s.path("disk.img");
    let original = Rng::new(3).bytes(8 * MIB);
    fs::write(&image, &original).unwrap();
    host.run_ok(&["protect", "d1", "--image", image.to_str().unwrap(), "--vault", url, "--key", k]);
    let first = ShipReport::parse(&host.run_ok(&["ship", "d1", "--once", "--json"]).stdout);
    assert_eq!((first.sequence, first.full), (1, true));

    // Three blocks changed through the filter: the incremental ships those.
    let mut bytes = original.clone();
    let writes: Vec<(usize, Vec<u8>)> =
        [0usize, 3 * MIB, 7 * MIB + 4096].iter().map(|&at| (at, Rng::new(at as u64 + 9).bytes(4096))).collect();
    for (at, data) in &writes {
        bytes[*at..*at + data.len()].copy_from_slice(data);
    }
    let sock = s.path("d1.sock");
    let filter = host.filter("d1", &sock);
    let plan: Vec<(u64, &[u8])> = writes.iter().map(|(at, d)| (*at as u64, d.as_slice())).collect();
    nbd_write(s.dir(), &nbd_uri("d1", &sock), &plan);
    filter.stop();
    let second = ShipReport::parse(&host.run_ok(&["ship", "d1", "--once", "--json"]).stdout);
    assert_eq!((second.sequence, second.full, second.new_blocks), (2, false, 3), "{second:?}");

    let out = s.path("restored.raw");
    host.run_ok(&["restore", "d1", "--out", out.to_str().unwrap()]);
    assert!(fs::read(&out).unwrap() == bytes, "the restore from {url} differs from the disk");
    let first_out = s.path("first.raw");
    host.run_ok(&["restore", "d1", "--point", "1", "--out", first_out.to_str().unwrap()]);
    assert!(fs::read(&first_out).unwrap() == original, "point 1 from {url} differs from the disk as it was");
    let points = stdout(&host.run_ok(&["points", "d1"]));
    assert_eq!(points.lines().count(), 3, "a header and two points: {points}");

    let o = host.run_ok(&["vault", "check", url, "--read-data", "--key", k]);
    assert!(stdout(&o).contains("no problems found"), "{}", stdout(&o));
    // Nothing of the client libraries' chatter reaches the user.
    assert!(!stderr(&o).contains("credential provider"), "{}", stderr(&o));
}

#[test]
fn a_host_replicates_to_s3_and_restores() {
    let moto = Moto::start();
    replicate_and_restore(moto.vars(), "s3://lb-e2e/vaults/main", "lb-cloud-s3-");
}

#[test]
fn a_host_replicates_to_azure_blob_and_restores() {
    let azurite = Azurite::start();
    replicate_and_restore(azurite.vars(), "az://devstoreaccount1/lb-e2e/vaults/main", "lb-cloud-az-");
}

/// A vault named in a bucket that does not exist: `vault init` says so and
/// what to do; a mistyped URL is refused before any request.
#[test]
fn a_missing_bucket_and_a_bad_url_are_explained() {
    let moto = Moto::start();
    let s = Scratch::new(BIN, "lb-cloud-missing-");
    let host = Home::new(BIN, s.path("home")).with_env(&moto.vars());
    let key = s.path("k.key");
    host.run_ok(&["key", "new", "--out", key.to_str().unwrap()]);
    let o = host.run(&["vault", "init", "s3://no-such-bucket/v", "--key", key.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("s3://no-such-bucket/v") && e.contains("does not exist; create it first"), "{e}");
    let o = host.run(&["vault", "init", "s3://Bad_Bucket/v", "--key", key.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "a usage error: {}", stderr(&o));
    assert!(stderr(&o).contains("s3://BUCKET[/PREFIX]"), "{}", stderr(&o));
}
