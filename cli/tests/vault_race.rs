//! Issue 15, part 2 (conditional writes), across real processes: two admins
//! (or two hosts' scripts) running `lifeboat vault init` on one directory at
//! the same moment make one vault, never a config of one key over packs of
//! another. The vault's config is created if absent (link(2) of a synced
//! temporary file), so exactly one process wins and the others are refused
//! with an error that names the vault; the vault then takes only the
//! winner's key.

use std::process::{Command, Stdio};

use vm_tests::lifeboat::Scratch;

const RACERS: usize = 6;

#[test]
fn processes_racing_vault_init_on_one_directory_make_one_vault_of_the_winners_key() {
    let s = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-vault-race-");
    let vault = s.path("vault");
    let keys: Vec<_> = (0..RACERS)
        .map(|i| {
            let key = s.path(&format!("k{i}"));
            s.home.run_ok(&["key", "new", "--out", key.to_str().unwrap()]);
            key
        })
        .collect();
    // Every racer is started before any is waited for; each has its own home
    // (its own audit log), as two hosts would.
    let racers: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            Command::new(env!("CARGO_BIN_EXE_lifeboat"))
                .arg("--home")
                .arg(s.path(&format!("home{i}")))
                .args(["vault", "init"])
                .arg(&vault)
                .arg("--key")
                .arg(key)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn lifeboat vault init")
        })
        .collect();
    let outs: Vec<_> = racers.into_iter().map(|c| c.wait_with_output().expect("wait")).collect();
    let winners: Vec<usize> = (0..RACERS).filter(|&i| outs[i].status.success()).collect();
    assert_eq!(winners.len(), 1, "exactly one init wins: {outs:?}");
    let winner = winners[0];
    for (i, out) in outs.iter().enumerate().filter(|(i, _)| *i != winner) {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(vault.to_str().unwrap()), "racer {i}'s refusal names the vault: {err}");
    }
    // The vault is whole and is the winner's: it takes that key and no other.
    let check = |key: &std::path::Path| {
        s.home.run(&["vault", "check", vault.to_str().unwrap(), "--read-data", "--key", key.to_str().unwrap()])
    };
    let ok = check(&keys[winner]);
    assert!(ok.status.success(), "the winner's key: {}", String::from_utf8_lossy(&ok.stderr));
    for (i, key) in keys.iter().enumerate().filter(|(i, _)| *i != winner) {
        let out = check(key);
        assert!(!out.status.success(), "racer {i}'s key must not open the winner's vault");
    }
}
