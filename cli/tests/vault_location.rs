//! Issue 14, point 1: a vault is named by a path or by a vault server's URL
//! (`lifeboat://HOST:PORT/VAULT`) everywhere, through the real binary.
//!
//! * Every command that names a vault takes a server URL as a vault, and
//!   fails with the one clear error of the opener (this build has no vault
//!   client yet), never with a path error about a directory of that name.
//! * A malformed `az://` or `s3://` URL (issue 15) is refused with the
//!   form it takes, another scheme by its name, a malformed URL with what
//!   is wrong, before anything runs.
//! * A `disk.toml` written when vaults were only paths loads and replicates,
//!   and a vault's path is stored exactly as before.

use std::fs;
use std::time::Duration;

use vm_tests::lifeboat::Scratch;
use vm_tests::replicate::arg;

const URL: &str = "lifeboat://127.0.0.1:1/v";
const CANNOT_REACH: &str = "this host has not joined the site at 127.0.0.1:1";

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The opener's error, naming the URL, and no sign the URL was taken for a
/// directory.
fn assert_cannot_reach(what: &str, text: &str) {
    assert!(text.contains(CANNOT_REACH) && text.contains(URL), "{what}: not the opener's error:\n{text}");
    for path_error in ["No such file", "does not exist", "not a directory", "Not a directory", "lifeboat:/"] {
        let stray = text.replace(URL, "");
        assert!(!stray.contains(path_error), "{what}: the URL was taken for a path ({path_error:?}):\n{text}");
    }
}

/// A home with a key, a protected disk `d1` whose replication names the
/// vault server (written the way `protect` writes it once servers are
/// reachable), and a VM `web` of it.
fn site() -> (Scratch, std::path::PathBuf) {
    let s = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-vault-url-");
    let key = s.path("k.key");
    s.home.key_new(&key);
    let img = s.path("d1.img");
    fs::write(&img, vec![7u8; 1 << 20]).unwrap();
    s.home.protect("d1", &img, 64 * 1024);
    let conf = s.dir().join("home/disks/d1/disk.toml");
    let mut text = fs::read_to_string(&conf).unwrap();
    text.push_str(&format!("\n[replication]\nvault = \"{URL}\"\nkey = \"{}\"\nrpo_seconds = 300\n", arg(&key)));
    fs::write(&conf, text).unwrap();
    s.home.run_ok(&["vm", "define", "web", "--disk", "d1"]);
    (s, key)
}

#[test]
fn every_command_that_names_a_vault_takes_a_server_url_and_says_it_cannot_reach_it() {
    let (s, key) = site();
    let k = arg(&key);
    let plan = s.path("plan.toml");
    fs::write(&plan, "name = \"p\"\n[[step]]\ngroup = \"g\"\nvms = [\"web\"]\n").unwrap();
    let (p, out) = (arg(&plan), s.path("out.img"));
    let o = arg(&out);
    let table: &[&[&str]] = &[
        &["vault", "init", URL, "--key", k],
        &["vault", "check", URL],
        &["vault", "check", URL, "--read-data", "--key", k],
        &["points", "--vault", URL, "--key", k],
        &["points", "d1", "--vault", URL, "--key", k],
        // The disk's own vault, from disk.toml.
        &["points", "d1"],
        &["restore", "d1", "--out", o, "--vault", URL, "--key", k],
        &["restore", "d1", "--out", o],
        &["ship", "d1", "--once"],
        &["failover", "web", "--unplanned", "--vault", URL, "--key", k],
        &["failover", "web", "--test", "--instant", "--vault", URL, "--key", k],
        &["failover", "web", "--test"],
        &["plan", "validate", p, "--vault", URL, "--key", k],
        &["plan", "run", p, "--test", "--vault", URL, "--key", k],
        &["vm", "show", "web", "--vault", URL, "--key", k],
        &["audit", "verify", "--vault", URL, "--key", k],
        &["audit", "verify"],
        &[
            "instant-serve",
            "--vault",
            URL,
            "--key",
            k,
            "--disk",
            "d1",
            "--point",
            "1",
            "--image",
            o,
            "--bitmap",
            o,
            "--socket",
            o,
        ],
        &["protect", "d2", "--image", o, "--vault", URL, "--key", k],
    ];
    fs::write(&out, vec![0u8; 1 << 20]).unwrap();
    for args in table {
        // In the scratch directory: a URL taken for a relative path would
        // make its directories there.
        let r = s.home.command().current_dir(s.dir()).args(*args).output().unwrap();
        let what = format!("lifeboat {}", args.join(" "));
        assert!(!r.status.success(), "{what} succeeded");
        assert_eq!(r.status.code(), Some(1), "{what}: {}", stderr(&r));
        assert_cannot_reach(&what, &stderr(&r));
    }
    // What deletes runs at the site, by path: refused before connecting.
    let deleting: &[&[&str]] = &[
        &["vault", "gc", URL, "--dry-run"],
        &["prune", "d1", "--vault", URL, "--key", k],
        &["prune", "d1"],
        &["prune", "--all", "--vault", URL],
    ];
    for args in deleting {
        let r = s.home.command().current_dir(s.dir()).args(*args).output().unwrap();
        let what = format!("lifeboat {}", args.join(" "));
        assert_eq!(r.status.code(), Some(1), "{what}: {}", stderr(&r));
        let e = stderr(&r);
        assert!(e.contains("append-only") && e.contains("at the site, by path") && e.contains(URL), "{what}: {e}");
    }
    // The failed cycle is recorded with the same cause.
    // (`status` exits 3: a disk is failing.)
    let status = s.home.run(&["status", "--json"]);
    assert_eq!(status.status.code(), Some(3), "{}", stderr(&status));
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v[0]["vault"], URL, "{v}");
    assert_cannot_reach("status", v[0]["last_cycle"]["error"].as_str().unwrap_or_default());
    assert_cannot_reach("status", v[0]["error"].as_str().unwrap_or_default());
    // The agent serves the disk and fails its cycles with that error.
    let mut agent = s.home.agent(&[], &["d1"]);
    let line = agent.wait_line("d1: cycle failed", Duration::from_secs(30));
    assert_cannot_reach("agent", &line);
    agent.stop();
}

#[test]
fn malformed_cloud_urls_unknown_schemes_and_malformed_urls_are_refused_by_name() {
    let s = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-vault-url-bad-");
    let run = |args: &[&str]| s.home.command().current_dir(s.dir()).args(args).output().unwrap();
    for (url, says) in [
        ("az://Account/container", "write az://ACCOUNT/CONTAINER[/PREFIX]"),
        ("s3://b/prefix", "write s3://BUCKET[/PREFIX]"),
        ("https://dr1/v", "unknown vault URL scheme \"https\""),
        ("lifeboat://dr1/v", "no :PORT after the host"),
        ("lifeboat://dr1:7443", "no /VAULT after the port"),
    ] {
        for args in [
            vec!["vault", "check", url],
            vec!["vault", "init", url, "--key", "/k"],
            vec!["points", "--vault", url, "--key", "/k"],
            vec!["restore", "d1", "--out", "/o", "--vault", url, "--key", "/k"],
            vec!["protect", "d1", "--image", "/i", "--vault", url, "--key", "/k"],
            vec!["failover", "web", "--test", "--vault", url, "--key", "/k"],
            vec!["audit", "verify", "--vault", url, "--key", "/k"],
        ] {
            let r = run(&args);
            let text = stderr(&r);
            // A usage error (2), with the value and why, before anything ran.
            assert_eq!(r.status.code(), Some(2), "lifeboat {}: {text}", args.join(" "));
            assert!(text.contains(url) && text.contains(says), "lifeboat {}: {text}", args.join(" "));
        }
    }
    assert!(!s.dir().join("home/disks").exists(), "a refused command left a disk behind");
}

/// `disk.toml` as `lifeboat protect` wrote it before vault URLs (a
/// canonical path), with no retention table: it loads, the disk
/// replicates, and a change of its settings writes the path back the same.
#[test]
fn a_disk_toml_written_with_a_vault_path_still_loads_and_keeps_its_path() {
    let s = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-vault-url-old-");
    let (key, vault, img) = (s.path("k.key"), s.path("vault"), s.path("d1.img"));
    s.home.key_new(&key);
    s.home.vault_init(&vault, &key);
    fs::write(&img, vec![9u8; 1 << 20]).unwrap();
    s.home.protect("d1", &img, 64 * 1024);
    let conf = s.dir().join("home/disks/d1/disk.toml");
    let vault = fs::canonicalize(&vault).unwrap();
    let key = fs::canonicalize(&key).unwrap();
    let old = format!(
        "{}\n[replication]\nvault = \"{}\"\nkey = \"{}\"\nrpo_seconds = 300\n",
        fs::read_to_string(&conf).unwrap(),
        arg(&vault),
        arg(&key)
    );
    fs::write(&conf, &old).unwrap();
    let shipped: serde_json::Value =
        serde_json::from_slice(&s.home.run_ok(&["ship", "d1", "--once", "--json"]).stdout).unwrap();
    assert_eq!(shipped["sequence"], 1, "{shipped}");
    assert_eq!(s.home.restore("d1", "latest", &s.path("r.img")), fs::read(&img).unwrap());
    // Re-pointing the disk at the same vault by a relative path stores the
    // canonical path, as a string, as before.
    let mut cmd = s.home.command();
    cmd.current_dir(s.dir()).args(["protect", "d1", "--image", arg(&img), "--vault", "vault", "--key", arg(&key)]);
    let r = cmd.output().unwrap();
    assert!(r.status.success(), "{}", stderr(&r));
    let new = fs::read_to_string(&conf).unwrap();
    assert!(new.contains(&format!("\nvault = \"{}\"\n", arg(&vault))), "{new}");
    let v: serde_json::Value = serde_json::from_slice(&s.home.run_ok(&["status", "--json"]).stdout).unwrap();
    assert_eq!(v[0]["vault"], arg(&vault), "{v}");
}
