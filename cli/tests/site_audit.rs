//! The site's audit log (issue 14: "its actions go to the audit log"): a
//! real site and `vault serve` process record init, enrollment, join,
//! revocation, start and stop and the server's refusals; `lifeboat site
//! audit` lists and verifies them, and finds a record edited at the site.

use std::fs;
use std::path::Path;

use vm_tests::lifeboat::{Home, Scratch};
use vm_tests::site::Site;
use vm_tests::Rng;

const BIN: &str = env!("CARGO_BIN_EXE_lifeboat");

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn kinds(site: &Site) -> Vec<serde_json::Value> {
    let o = site.home.run_ok(&["site", "audit", "--json", "--site", site.dir.to_str().unwrap()]);
    String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn the_site_records_what_it_did_and_refused_and_finds_an_edited_record() {
    let s = Scratch::new(BIN, "lb-site-audit-");
    let mut site = Site::init(Path::new(BIN), s.dir());
    let vault_dir = s.path("vaults/main");
    fs::create_dir_all(&vault_dir).unwrap();
    site.serve(&[("main", &vault_dir)]);
    let host = Home::new(BIN, s.path("host-home"));
    site.join("web1", &["main"], &host);
    let key = s.path("k.key");
    let k = key.to_str().unwrap();
    host.run_ok(&["key", "new", "--out", k]);
    let url = site.url("main");
    host.run_ok(&["vault", "init", &url, "--key", k]);
    let image = s.path("disk.img");
    fs::write(&image, Rng::new(3).bytes(1 << 20)).unwrap();
    host.run_ok(&["protect", "d1", "--image", image.to_str().unwrap(), "--vault", &url, "--key", k]);
    host.run_ok(&["ship", "d1", "--once"]);
    site.home.run_ok(&["site", "revoke", "web1", "--site", site.dir.to_str().unwrap()]);
    // Refused three times: one record (the first), not three.
    for _ in 0..3 {
        assert_eq!(host.run(&["points", "d1"]).status.code(), Some(1));
    }
    assert!(site.stop().success());

    let records = kinds(&site);
    let list: Vec<&str> = records.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(
        list,
        ["site.init", "serve.start", "site.enroll", "site.join", "site.revoke", "serve.refused", "serve.stop"],
        "{records:#?}"
    );
    let refused = &records[5]["details"];
    assert_eq!((refused["host"].as_str(), refused["code"].as_str()), (Some("web1"), Some("revoked")), "{refused}");
    assert_eq!(records[3]["details"]["host"], "web1");
    assert!(records.iter().all(|r| r["authentic"] == true));

    // An administrator (or intruder) edits a record at the site: found.
    let log_dir = site.dir.join("audit");
    let log = fs::read_dir(&log_dir).unwrap().next().unwrap().unwrap().path();
    let mut bytes = fs::read(&log).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    fs::write(&log, &bytes).unwrap();
    let o = site.home.run(&["site", "audit", "--site", site.dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("failed verification") && stderr(&o).contains("edited"), "{}", stderr(&o));
}
