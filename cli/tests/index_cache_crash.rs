//! The host's index cache survives a `lifeboat ship` SIGKILLed mid-cycle
//! (issue 14, point 5): the cache is written only after the point is
//! committed, so a cycle killed before that leaves it byte for byte as it
//! was, and a cycle killed after leaves a cache that still loads. The next
//! cycle uses it (it does not fall back to listing the vault) and its point
//! restores to the disk byte for byte.
//!
//! A 32 MiB disk of random data served by the real filter; 64 random blocks
//! written through NBD before each attempt; kills spread across the cycle
//! (a cycle that beats its kill becomes the new estimate and the kill is
//! tried again earlier, as in `ship_crash.rs`). The seed is fixed.

#![allow(clippy::cast_possible_truncation)] // test sizes fit usize

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vm_tests::clients::nbd_uri;
use vm_tests::lifeboat::Scratch;
use vm_tests::process::wait_for;
use vm_tests::replicate::{arg, fingerprint, nbd_write};
use vm_tests::Rng;

const NAME: &str = "cached";
const BS: u64 = 64 * 1024;
const SIZE: u64 = 32 << 20;
const BLOCKS: u64 = SIZE / BS;
const SEED: u64 = 0x14_0005;
const KILLS: usize = 6;

struct Run {
    s: Scratch,
    rng: Rng,
    sock: PathBuf,
    model: Vec<u8>,
}

impl Run {
    fn write_blocks(&mut self, n: usize) {
        let mut picked = BTreeSet::new();
        while picked.len() < n {
            picked.insert(self.rng.below(BLOCKS));
        }
        let data: Vec<(u64, Vec<u8>)> = picked.iter().map(|&b| (b, self.rng.bytes(BS as usize))).collect();
        let writes: Vec<(u64, &[u8])> = data.iter().map(|(b, d)| (b * BS, d.as_slice())).collect();
        nbd_write(self.s.dir(), &nbd_uri(NAME, &self.sock), &writes);
        for (b, d) in &data {
            self.model[(b * BS) as usize..((b + 1) * BS) as usize].copy_from_slice(d);
        }
    }

    /// `ship --once --json`, which must succeed: its report.
    fn ship(&self) -> serde_json::Value {
        let o = self.s.home.run_env(&[], &["ship", NAME, "--once", "--json"]);
        assert!(o.status.success(), "seed {SEED:#x}: ship failed: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    fn points(&self) -> u64 {
        self.s.home.points(NAME).len() as u64
    }

    fn latest_restores_to_the_disk(&self, ctx: &str) {
        let restored = self.s.home.restore(NAME, "latest", &self.s.path("latest.img"));
        assert!(fingerprint(&restored) == fingerprint(&self.model), "seed {SEED:#x}, {ctx}: the point differs");
    }
}

/// The one index cache file of the home.
fn cache_file(home: &Path) -> PathBuf {
    let dir = home.join("cache").join("index");
    let files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "idx"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

#[test]
fn a_ship_killed_mid_cycle_leaves_a_cache_the_next_cycle_uses() {
    let s = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-idxkill-");
    let mut rng = Rng::new(SEED);
    let model = rng.bytes(SIZE as usize);
    let image = s.path("disk.img");
    fs::write(&image, &model).unwrap();
    let key = s.path("k.key");
    s.home.key_new(&key);
    s.home.vault_init(&s.path("vault"), &key);
    s.home.protect_replicated(NAME, &image, BS, &s.path("vault"), &key);
    let sock = s.path("c.sock");
    let filter = s.home.filter(NAME, &sock);
    let mut run = Run { s, rng, sock, model };

    let first = run.ship();
    assert_eq!((first["full"].as_bool(), first["index_listed"].as_bool()), (Some(true), Some(true)), "{first}");
    let cache = cache_file(&run.s.home.dir);
    run.write_blocks(64);
    let t = Instant::now();
    let r = run.ship();
    let mut span = t.elapsed();
    assert_eq!(r["index_listed"].as_bool(), Some(false), "the second cycle uses the cache: {r}");
    assert!(r["requests"].as_u64().is_some_and(|n| n > 0), "{r}");

    let (mut killed, mut tries) = (0, 0);
    let mut fractions: Vec<f64> = (0..KILLS).map(|i| (i as f64 + 0.5) / KILLS as f64).collect();
    while let Some(f) = fractions.pop() {
        tries += 1;
        assert!(tries <= 4 * KILLS, "seed {SEED:#x}: every cycle beat its kill");
        run.write_blocks(64);
        let before = (fs::read(&cache).unwrap(), run.points());
        let mut child = run.s.home.spawn_ship(NAME);
        let started = Instant::now();
        let kill_at = started + span.mul_f64(f);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= kill_at {
                child.kill().unwrap();
                break wait_for(&mut child, Duration::from_secs(60), "lifeboat ship");
            }
            assert!(started.elapsed() < Duration::from_secs(120), "seed {SEED:#x}: the cycle ran for 120 s");
            std::thread::sleep(Duration::from_micros(300));
        };
        let ctx = format!("kill at {f:.2} of {span:?}");
        if status.signal() == Some(libc::SIGKILL) {
            killed += 1;
            if run.points() == before.1 {
                assert!(
                    fs::read(&cache).unwrap() == before.0,
                    "seed {SEED:#x}, {ctx}: an uncommitted cycle changed the cache"
                );
            }
        } else {
            assert!(status.success(), "seed {SEED:#x}, {ctx}: {status}");
            span = started.elapsed();
            fractions.push(f * 0.75);
        }
        // The next cycle loads the cache (a damaged one would be discarded
        // and the vault listed) and its point is whole.
        let r = run.ship();
        assert_eq!(r["index_listed"].as_bool(), Some(false), "seed {SEED:#x}, {ctx}: {r}");
        run.latest_restores_to_the_disk(&ctx);
    }
    assert_eq!(killed, KILLS);
    let o = run.s.home.run_env(&[], &["vault", "check", arg(&run.s.path("vault"))]);
    assert!(o.status.success(), "vault check:\n{}", String::from_utf8_lossy(&o.stdout));
    filter.stop();
}
