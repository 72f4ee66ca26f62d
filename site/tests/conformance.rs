//! The backend conformance suite (`vault::conformance`) against
//! `RemoteBackend` and a real vault server over TLS on loopback, with the
//! server's profile: contents checked against names, append-only for hosts.

mod common;

use common::{tmp_count, TestSite};
use vault::conformance::{suite, Profile};
use vault::{Backend, Kind};

#[test]
fn remote_backend_conforms() {
    let site = TestSite::start(&["v"]);
    let b = site.connect(&site.enroll("alpha", &["v"]), "v");
    suite(&b, Profile::Server);
    // Nothing is left staged, and the vault served is an ordinary vault
    // directory holding what the suite stored.
    assert_eq!(tmp_count(&site.vault_dir("v")), 0);
    let local = vault::LocalBackend::open(&site.vault_dir("v")).unwrap();
    assert_eq!(local.list(Kind::Pack, "").unwrap(), b.list(Kind::Pack, "").unwrap());
}
