//! A protected host replicating to a real `lifeboat vault serve` process on
//! loopback (issue 14): the site made by `site init`, the host enrolled by
//! `site enroll` / `site join`, the vault named `lifeboat://127.0.0.1:PORT/main`
//! everywhere. Real TLS, real certificates, real processes.

use std::fs;
use std::path::Path;

use vm_tests::clients::nbd_uri;
use vm_tests::lifeboat::{Home, Scratch};
use vm_tests::replicate::{nbd_write, ShipReport};
use vm_tests::site::Site;
use vm_tests::Rng;

const MIB: usize = 1 << 20;
const BIN: &str = env!("CARGO_BIN_EXE_lifeboat");

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A site serving an empty vault directory `main`, and a protected host's
/// home joined to it with a key; the vault initialised through the server.
fn site_and_host(s: &Scratch) -> (Site, Home, std::path::PathBuf, std::path::PathBuf) {
    let mut site = Site::init(Path::new(BIN), s.dir());
    let vault_dir = s.path("vaults/main");
    fs::create_dir_all(&vault_dir).unwrap();
    site.serve(&[("main", &vault_dir)]);
    let host = Home::new(BIN, s.path("host-home"));
    site.join("web1", &["main"], &host);
    let key = s.path("k.key");
    host.run_ok(&["key", "new", "--out", key.to_str().unwrap()]);
    host.run_ok(&["vault", "init", &site.url("main"), "--key", key.to_str().unwrap()]);
    (site, host, vault_dir, key)
}

#[test]
fn a_host_replicates_restores_and_lists_points_through_a_real_vault_server() {
    let s = Scratch::new(BIN, "lb-site-e2e-");
    let (mut site, host, vault_dir, key) = site_and_host(&s);
    let url = site.url("main");
    let image = s.path("disk.img");
    fs::write(&image, Rng::new(1).bytes(8 * MIB)).unwrap();
    let k = key.to_str().unwrap();
    host.run_ok(&["protect", "d1", "--image", image.to_str().unwrap(), "--vault", &url, "--key", k]);

    let first = ShipReport::parse(&host.run_ok(&["ship", "d1", "--once", "--json"]).stdout);
    assert_eq!((first.sequence, first.full), (1, true));
    // Change three blocks through the filter: the incremental ships only those.
    let mut bytes = fs::read(&image).unwrap();
    let writes: Vec<(usize, Vec<u8>)> =
        [0usize, 3 * MIB, 7 * MIB + 4096].iter().map(|&at| (at, Rng::new(at as u64).bytes(4096))).collect();
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

    // Restore from the server, byte for byte.
    let out = s.path("restored.raw");
    host.run_ok(&["restore", "d1", "--out", out.to_str().unwrap()]);
    assert!(fs::read(&out).unwrap() == bytes, "the restore through the server differs from the disk");
    let points = String::from_utf8_lossy(&host.run_ok(&["points", "d1"]).stdout).into_owned();
    assert!(points.contains('1') && points.contains('2'), "{points}");

    // The site scrubs the same vault by path, with the key: every block.
    let o = site.home.run_ok(&["vault", "check", vault_dir.to_str().unwrap(), "--read-data", "--key", k]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("no problem"), "{}", String::from_utf8_lossy(&o.stdout));

    // The host cannot collect garbage (or delete anything) through the server.
    let o = host.run(&["vault", "gc", &url]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("append-only") && stderr(&o).contains("at the site"), "{}", stderr(&o));
    let o = host.run(&["prune", "d1"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("append-only"), "{}", stderr(&o));
    // ... and nothing was lost: the newest point restores again.
    host.run_ok(&["restore", "d1", "--out", out.to_str().unwrap(), "--force"]);
    assert!(fs::read(&out).unwrap() == bytes);

    // SIGTERM: the server finishes and exits 0, logging per connection.
    assert!(site.log().iter().any(|l| l.contains("web1")), "{:#?}", site.log());
    let status = site.stop();
    assert!(status.success(), "vault serve exited with {status}");
}

#[test]
fn a_host_that_never_joined_and_a_revoked_host_are_told_what_to_do() {
    let s = Scratch::new(BIN, "lb-site-e2e-refused-");
    let (site, host, _vault_dir, key) = site_and_host(&s);
    let url = site.url("main");
    let k = key.to_str().unwrap();

    // Another home, never joined.
    let stranger = Home::new(BIN, s.path("stranger-home"));
    let o = stranger.run(&["vault", "check", &url]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("has not joined the site") && stderr(&o).contains("site join"), "{}", stderr(&o));

    // Revoked at the site: the next command is refused, naming the revocation.
    let image = s.path("disk.img");
    fs::write(&image, Rng::new(2).bytes(2 * MIB)).unwrap();
    host.run_ok(&["protect", "d1", "--image", image.to_str().unwrap(), "--vault", &url, "--key", k]);
    host.run_ok(&["ship", "d1", "--once"]);
    site.home.run_ok(&["site", "revoke", "web1", "--site", site.dir.to_str().unwrap()]);
    let o = host.run(&["ship", "d1", "--once"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("revoked"), "{}", stderr(&o));
    assert!(stderr(&o).contains("stay marked dirty"), "{}", stderr(&o));
}
