//! A protected host replicating to a cloud vault (issue 15): an S3 bucket on
//! moto's server and an Azure Blob container on Azurite, each a real server
//! process on loopback, named `s3://BUCKET/PREFIX` and
//! `az://ACCOUNT/CONTAINER/PREFIX` everywhere and reached with the settings
//! a user exports (AWS_* and AZURE_* variables). The same commands as for a
//! vault directory: init, protect, ship (full, then incremental through the
//! filter), restore byte for byte, points, check with the key.

use std::fs;
use std::time::Duration;

use cloud::{CloudBackend, LockMode, Settings};
use vault::Backend;
use vm_tests::clients::nbd_uri;
use vm_tests::cloud_servers::{Azurite, Moto, RequestLog};
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

fn replicate_and_restore(vars: Vec<(String, String)>, url: &str, prefix: &str, server: &dyn RequestLog) {
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
    let before = server.requests_logged();
    let second = ShipReport::parse(&host.run_ok(&["ship", "d1", "--once", "--json"]).stdout);
    assert_eq!((second.sequence, second.full, second.new_blocks), (2, false, 3), "{second:?}");
    // A request of the test's own after the cycle's: once it is logged, so
    // are theirs (each is logged when answered, and all were answered).
    let marker = format!("{}/after-the-cycle", std::process::id());
    let at: vault::Location = url.parse().unwrap();
    let probe = CloudBackend::open(&at, &Settings::from_vars(vars.iter().cloned())).unwrap();
    assert_eq!(probe.size(vault::Kind::Audit, &marker).unwrap(), None);
    assert!(server.logged(&marker), "the probe's request was never logged");
    let logged = (server.requests_logged() - before - 1) as u64;

    // The cycle's requests to the store, in `status` (what a cloud vault
    // costs grows with what changed), are what the store was sent: the
    // audit record of the cycle, its listing pages and, on Azure, the two
    // requests of each tail read included.
    let st: serde_json::Value = serde_json::from_slice(&host.run_ok(&["status", "--json"]).stdout).unwrap();
    let requests = st[0]["last_cycle"]["requests"].as_u64().expect("requests in status --json");
    assert!((3..200).contains(&requests), "{requests} requests for 3 changed blocks");
    assert_eq!(requests, logged, "requests counted against requests the server logged");
    assert_eq!(second.requests, Some(requests), "ship --json and status agree");
    let text = stdout(&host.run_ok(&["status", "d1"]));
    assert!(text.contains(&format!("in {requests} vault requests")), "{text}");

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
    replicate_and_restore(moto.vars(), "s3://lb-e2e/vaults/main", "lb-cloud-s3-", &moto);
}

#[test]
fn a_host_replicates_to_azure_blob_and_restores() {
    let azurite = Azurite::start();
    replicate_and_restore(azurite.vars(), "az://devstoreaccount1/lb-e2e/vaults/main", "lb-cloud-az-", &azurite);
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
    // Credentials forgotten: said, with where they come from.
    let mut none = moto.vars();
    none.retain(|(k, _)| !k.starts_with("AWS_ACCESS") && !k.starts_with("AWS_SECRET"));
    let bare = Home::new(BIN, s.path("home")).with_env(&none);
    let o = bare.command().env("HOME", s.dir()).args(["vault", "check", "s3://lb-any/v"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no S3 credentials were given (AWS_ACCESS_KEY_ID"), "{}", stderr(&o));
    let o = host.run(&["vault", "init", "s3://Bad_Bucket/v", "--key", key.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "a usage error: {}", stderr(&o));
    assert!(stderr(&o).contains("s3://BUCKET[/PREFIX]"), "{}", stderr(&o));
}

fn backend(vars: &[(String, String)], url: &str) -> CloudBackend {
    CloudBackend::open(&url.parse().unwrap(), &Settings::from_vars(vars.iter().cloned())).unwrap()
}

/// `vault init --immutable DAYS` (issue 15, point 3): refused, creating
/// nothing, unless the bucket itself locks every object at least DAYS days;
/// then every upload goes into the locked bucket, and `vault check` says
/// what protects the vault, and when the bucket's retention is lowered
/// below what the vault was made with.
#[test]
fn an_immutable_vault_needs_a_locked_bucket_and_check_says_what_protects_it() {
    let moto = Moto::start();
    let vars = moto.vars();
    let s = Scratch::new(BIN, "lb-cloud-immutable-");
    let host = Home::new(BIN, s.path("home")).with_env(&vars);
    let key = s.path("k.key");
    let k = key.to_str().unwrap();
    host.run_ok(&["key", "new", "--out", k]);

    // A bucket without Object Lock, and one locked for fewer days.
    backend(&vars, "s3://lb-plain").create_bucket(None).unwrap();
    backend(&vars, "s3://lb-short").create_bucket(Some((LockMode::Compliance, 3))).unwrap();
    for (url, says) in [("s3://lb-plain/v", "none ("), ("s3://lb-short/v", "locked for 3 days")] {
        let o = host.run(&["vault", "init", url, "--key", k, "--immutable", "7"]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(&format!("{url} cannot be an immutable vault of 7 days")) && e.contains(says), "{e}");
        assert!(e.contains("Object Lock and a default retention of at least 7 days"), "{e}");
        assert_eq!(backend(&vars, url).size(vault::Kind::Config, "config").unwrap(), None, "{url}: a config");
    }
    // Not for a directory (nor a vault server): say why.
    let o = host.run(&["vault", "init", s.path("dir").to_str().unwrap(), "--key", k, "--immutable", "7"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--immutable is for a cloud vault"), "{}", stderr(&o));

    // A bucket locked for 7 days, COMPLIANCE: the vault is made, replicates
    // (every upload says its checksum, as a locked bucket requires) and
    // restores; check reports the lock.
    let url = "s3://lb-locked/v";
    backend(&vars, "s3://lb-locked").create_bucket(Some((LockMode::Compliance, 7))).unwrap();
    let o = host.run_ok(&["vault", "init", url, "--key", k, "--immutable", "7"]);
    assert!(stdout(&o).contains("immutable: S3 Object Lock, COMPLIANCE mode, every object locked for 7 days"));
    let image = s.path("disk.img");
    let data = Rng::new(5).bytes(4 * MIB);
    fs::write(&image, &data).unwrap();
    host.run_ok(&["protect", "d1", "--image", image.to_str().unwrap(), "--vault", url, "--key", k]);
    host.run_ok(&["ship", "d1", "--once"]);
    let out = s.path("r.raw");
    host.run_ok(&["restore", "d1", "--out", out.to_str().unwrap()]);
    assert!(fs::read(&out).unwrap() == data);
    let o = host.run_ok(&["vault", "check", url]);
    assert!(stdout(&o).contains("protection: S3 Object Lock, COMPLIANCE mode, every object locked for 7 days"));
    assert!(stdout(&o).contains("no problems found"), "{}", stdout(&o));

    // Locks count from each object's write, and a new point shares the
    // packs of the first: gc keeps every object a point uses locked,
    // extending a lock that ends within half the immutable days. (A lock
    // shortened by hand stands for a pack written days ago: moto lets a
    // COMPLIANCE lock be shortened, AWS does not.)
    let locked = backend(&vars, "s3://lb-locked/v");
    let pack = locked.list(vault::Kind::Pack, "").unwrap().remove(0);
    let before = locked.object_lock(vault::Kind::Pack, &pack).unwrap();
    assert_eq!(before.mode, Some(LockMode::Compliance));
    assert!(before.until.unwrap() > before.now + jiff::SignedDuration::from_hours(6 * 24), "{before:?}");
    let soon = before.now + jiff::SignedDuration::from_hours(24);
    locked.set_object_lock(vault::Kind::Pack, &pack, LockMode::Compliance, soon).unwrap();
    let o = host.run_ok(&["vault", "gc", url]);
    assert!(stdout(&o).contains("extended the locks of 1 objects"), "{}", stdout(&o));
    let after = locked.object_lock(vault::Kind::Pack, &pack).unwrap();
    assert!(after.until.unwrap() > after.now + jiff::SignedDuration::from_hours(6 * 24), "{after:?}");
    let o = host.run_ok(&["vault", "gc", url]);
    assert!(!stdout(&o).contains("extended the locks"), "nothing ends soon now: {}", stdout(&o));
    host.run_ok(&["restore", "d1", "--out", out.to_str().unwrap(), "--force"]);
    assert!(fs::read(&out).unwrap() == data);

    // A careless (or hostile) owner lowers a bucket's retention below what
    // its vault was made with: check says so, and fails. (moto refuses to
    // change the Object Lock configuration of a bucket that holds objects,
    // which AWS allows; so the vault here was made --immutable 7 while its
    // bucket said 7, and the bucket says 1 day now.)
    let lowered = backend(&vars, "s3://lb-lowered");
    lowered.create_bucket(Some((LockMode::Compliance, 7))).unwrap();
    host.run_ok(&["vault", "init", "s3://lb-lowered/v", "--key", k, "--immutable", "7"]);
    let fresh = backend(&vars, "s3://lb-lowered2");
    fresh.create_bucket(Some((LockMode::Governance, 1))).unwrap();
    for name in ["config", "protection"] {
        let bytes = backend(&vars, "s3://lb-lowered/v").get(vault::Kind::Config, name).unwrap();
        backend(&vars, "s3://lb-lowered2/v").create(vault::Kind::Config, name, &bytes).unwrap();
    }
    let o = host.run(&["vault", "check", "s3://lb-lowered2/v"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let text = stdout(&o);
    assert!(text.contains("PROBLEM config/protection: the vault was created --immutable 7"), "{text}");
    assert!(text.contains("GOVERNANCE mode, every object locked for 1 days"), "{text}");

    // Azure: Azurite has no immutability policies, so a container there is
    // refused as unprotected.
    let azurite = Azurite::start();
    let az = azurite.vars();
    backend(&az, "az://devstoreaccount1/lb-plain").create_bucket(None).unwrap();
    let host = Home::new(BIN, s.path("home-az")).with_env(&az);
    host.run_ok(&["key", "new", "--out", s.path("a.key").to_str().unwrap()]);
    let o = host.run(&[
        "vault",
        "init",
        "az://devstoreaccount1/lb-plain",
        "--key",
        s.path("a.key").to_str().unwrap(),
        "--immutable",
        "7",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("container with a time-based immutability policy"), "{}", stderr(&o));
}

/// The least-privilege credentials of a protected host: no right to delete
/// anything but its own leases. The README gives the policy for AWS
/// (`s3:ListBucket` and `s3:GetBucketObjectLockConfiguration` on the bucket,
/// `s3:GetObject` and `s3:PutObject` on the vault's keys, `s3:DeleteObject`
/// on its leases only); moto names some requests' actions differently from
/// AWS (a HEAD is `s3:HeadObject`, not `s3:GetObject`), so this policy
/// grants every read, list and put by wildcard, and still no delete.
const HOST_POLICY: &str = r#"{"Version": "2012-10-17", "Statement": [
  {"Effect": "Allow", "Action": ["s3:List*", "s3:Get*", "s3:Head*", "s3:Put*"],
   "Resource": ["arn:aws:s3:::lb-least", "arn:aws:s3:::lb-least/main/*"]},
  {"Effect": "Allow", "Action": ["s3:DeleteObject"], "Resource": "arn:aws:s3:::lb-least/main/leases/*"}
]}"#;

/// The vault the least-privilege hosts replicate into.
const LEAST_URL: &str = "s3://lb-least/main";

/// moto enforcing IAM, and a host's home holding only HOST_POLICY's rights
/// (its variables too), with a key `k.key` and the vault LEAST_URL made.
fn least_privilege_host(prefix: &str) -> (Moto, Vec<(String, String)>, Scratch, Home) {
    // Free requests: the bucket, then the user, its policy and its key.
    let moto = Moto::start_with_iam(4);
    make_bucket(&moto.vars(), "s3://lb-least");
    let mut vars = moto.user_vars("web1", HOST_POLICY);
    // moto checks the signature of a GET or HEAD wrongly when its payload
    // hash is signed (it hashes the query as a form body); an unsigned
    // payload, a setting S3 accepts, avoids that.
    vars.push(("AWS_UNSIGNED_PAYLOAD".into(), "true".into()));
    let s = Scratch::new(BIN, prefix);
    let host = Home::new(BIN, s.path("home")).with_env(&vars);
    let key = s.path("k.key");
    host.run_ok(&["key", "new", "--out", key.to_str().unwrap()]);
    host.run_ok(&["vault", "init", LEAST_URL, "--key", key.to_str().unwrap()]);
    (moto, vars, s, host)
}

/// A host holding only HOST_POLICY's rights (moto enforcing IAM)
/// replicates, incrementally too, and restores; it cannot delete a point
/// (prune and gc are refused, naming the credentials, and nothing is lost),
/// and a thief with its key cannot delete an object by hand either.
#[test]
fn a_host_that_may_write_but_not_delete_replicates_and_cannot_delete_points() {
    let (_moto, vars, s, host) = least_privilege_host("lb-cloud-least-");
    let (url, key) = (LEAST_URL, s.path("k.key"));
    let k = key.to_str().unwrap();
    let image = s.path("disk.img");
    let original = Rng::new(8).bytes(4 * MIB);
    fs::write(&image, &original).unwrap();
    host.run_ok(&["protect", "d1", "--image", image.to_str().unwrap(), "--vault", url, "--key", k]);
    host.run_ok(&["ship", "d1", "--once"]);
    let change = Rng::new(9).bytes(4096);
    let sock = s.path("d1.sock");
    let filter = host.filter("d1", &sock);
    nbd_write(s.dir(), &nbd_uri("d1", &sock), &[(MIB as u64, change.as_slice())]);
    filter.stop();
    let second = ShipReport::parse(&host.run_ok(&["ship", "d1", "--once", "--json"]).stdout);
    assert_eq!((second.sequence, second.new_blocks), (2, 1), "{second:?}");
    let mut now = original.clone();
    now[MIB..MIB + 4096].copy_from_slice(&change);
    let out = s.path("r.raw");
    host.run_ok(&["restore", "d1", "--out", out.to_str().unwrap()]);
    assert!(fs::read(&out).unwrap() == now);
    // Its cycles' leases were deleted (it may delete those): none is left.
    let as_host = backend(&vars, url);
    assert_eq!(as_host.list(vault::Kind::Lease, "").unwrap(), Vec::<String>::new());

    // Collecting garbage needs delete rights: refused, naming them, and
    // nothing is lost. (A stray page, which the host may write, is the
    // garbage.)
    as_host.put(vault::Kind::Page, &"ab".repeat(32), b"not a page any point uses").unwrap();
    let o = host.run(&["vault", "gc", url]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let e = stderr(&o);
    assert!(e.contains("refused delete") && e.contains("credentials"), "{e}");
    let roots = as_host.list(vault::Kind::Root, "").unwrap();
    assert_eq!(roots.len(), 2, "{roots:?}");
    // By hand, with the host's credentials: refused.
    let e = as_host.delete(vault::Kind::Root, &roots[0]).unwrap_err();
    assert!(matches!(e, vault::VaultError::Refused { .. }), "{e:?}");
    host.run_ok(&["restore", "d1", "--point", "1", "--out", out.to_str().unwrap(), "--force"]);
    assert!(fs::read(&out).unwrap() == original);

    // No secret is written anywhere: not in the home (disk.toml, the audit
    // log, the status files), not in any object of the vault.
    let secret = vars.iter().find(|(k, _)| k == "AWS_SECRET_ACCESS_KEY").map(|(_, v)| v.clone()).unwrap();
    assert!(secret.len() >= 20, "moto made a real-looking secret: {secret}");
    let mut files = vec![s.path("home")];
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if p.is_file() {
            let bytes = fs::read(&p).unwrap();
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "{} holds the secret", p.display());
        }
    }
    for kind in vault::Kind::ALL {
        for name in as_host.list(kind, "").unwrap() {
            let bytes = as_host.get(kind, &name).unwrap();
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "{kind}/{name} holds the secret");
        }
    }
}

/// The agent of a host whose credentials may not delete (HOST_POLICY):
/// its retention is refused by the store; it says so once, naming where
/// retention must run, stops trying, and keeps replicating.
#[test]
fn an_agent_that_may_not_delete_says_so_once_and_keeps_replicating() {
    let (_moto, _vars, s, host) = least_privilege_host("lb-cloud-least-agent-");
    let (url, key) = (LEAST_URL, s.path("k.key"));
    let k = key.to_str().unwrap();
    let image = s.path("disk.img");
    fs::write(&image, Rng::new(12).bytes(2 * MIB)).unwrap();
    // Every point but the newest is past retention a second after its cut.
    let img = image.to_str().unwrap();
    let retention = ["--rpo", "1s", "--keep-recent", "1s", "--keep-hourly", "0"];
    host.run_ok(&[&["protect", "d1", "--image", img, "--vault", url, "--key", k][..], &retention[..]].concat());
    let mut agent = host.agent(&[], &["d1"]);
    agent.wait_line("refuses this host's deletes", Duration::from_secs(60));
    let later = agent.wait_line("committed", Duration::from_secs(60));
    agent.wait_line("committed", Duration::from_secs(60));
    let log = agent.log();
    agent.stop();
    assert_eq!(log.matches("refuses this host's deletes").count(), 1, "{log}");
    assert!(log.contains(&format!("lifeboat prune --all --vault {url}")), "{log}");
    assert!(!log.contains("pruning old points failed"), "{log}");
    assert!(later.contains("point"), "{later}");
}
