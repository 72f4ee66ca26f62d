//! Faults between a protected host and its vault server (issue 14, point 4),
//! with real processes: the server SIGKILLed mid-pack, `lifeboat ship`
//! SIGKILLed mid-pack, connections reset mid-pack and refused.
//! Traffic goes through a fault-injecting proxy, and each kill waits for a
//! given number of bytes of the pack to have crossed it, never for a time.
//! After every fault: the failed cycle keeps its changes dirty, no partial
//! point is listed, the next cycle commits, and its point restores byte for
//! byte to the disk at its cut; the site's scrub finds nothing wrong.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vm_tests::clients::nbd_uri;
use vm_tests::fault_proxy::{Fault, FaultProxy};
use vm_tests::lifeboat::{Home, Scratch};
use vm_tests::replicate::{nbd_write, ShipReport};
use vm_tests::site::{free_port, Site};
use vm_tests::Rng;

const MIB: usize = 1 << 20;
const BIN: &str = env!("CARGO_BIN_EXE_lifeboat");
const DISK: usize = 32 * MIB;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A site whose server the host reaches only through a fault proxy, a
/// protected disk `d1` replicated there with its first point shipped.
struct World {
    s: Scratch,
    site: Site,
    proxy: FaultProxy,
    host: Home,
    vault_dir: PathBuf,
    key: PathBuf,
    image: PathBuf,
    rng: Rng,
}

impl World {
    fn new(prefix: &str) -> World {
        let s = Scratch::new(BIN, prefix);
        let port = free_port();
        let proxy = FaultProxy::start(([127, 0, 0, 1], port).into()).unwrap();
        let mut site = Site::init_on(Path::new(BIN), s.dir(), port, &[proxy.addr().port()]);
        let vault_dir = s.path("vaults/main");
        fs::create_dir_all(&vault_dir).unwrap();
        site.serve(&[("main", &vault_dir)]);
        let host = Home::new(BIN, s.path("host-home"));
        site.join("web1", &["main"], &host);
        let key = s.path("k.key");
        host.run_ok(&["key", "new", "--out", key.to_str().unwrap()]);
        let url = format!("lifeboat://127.0.0.1:{}/main", proxy.addr().port());
        host.run_ok(&["vault", "init", &url, "--key", key.to_str().unwrap()]);
        let image = s.path("disk.img");
        let mut rng = Rng::new(41);
        fs::write(&image, rng.bytes(DISK)).unwrap();
        host.run_ok(&[
            "protect",
            "d1",
            "--image",
            image.to_str().unwrap(),
            "--vault",
            &url,
            "--key",
            key.to_str().unwrap(),
        ]);
        let first = ShipReport::parse(&host.run_ok(&["ship", "d1", "--once", "--json"]).stdout);
        assert_eq!(first.sequence, 1);
        World { s, site, proxy, host, vault_dir, key, image, rng }
    }

    /// Writes `blocks` scattered 64 KiB blocks of new data through the filter.
    fn write(&mut self, blocks: u64) {
        let sock = self.s.path("d1.sock");
        let filter = self.host.filter("d1", &sock);
        let data: Vec<(u64, Vec<u8>)> = (0..blocks)
            .map(|i| ((i * 7 + self.rng.below(5)) % (DISK as u64 / 65536) * 65536, self.rng.bytes(65536)))
            .collect();
        let plan: Vec<(u64, &[u8])> = data.iter().map(|(at, d)| (*at, d.as_slice())).collect();
        nbd_write(self.s.dir(), &nbd_uri("d1", &sock), &plan);
        filter.stop();
    }

    fn points(&self) -> Vec<u64> {
        let out = self.host.run(&["points", "d1", "--json"]);
        let alive = self.site.server_pid().map(system::process::stat);
        assert!(
            out.status.success(),
            "points: {}\nserver (pid state {alive:?}) log:\n{}",
            stderr(&out),
            self.site.log().join("\n")
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array().unwrap().iter().map(|p| p["id"].as_u64().unwrap()).collect()
    }

    fn dirty(&self) -> usize {
        self.host.dirty("d1").dirty_blocks.len()
    }

    /// The next cycle commits, and the newest point is the disk byte for
    /// byte; returns its sequence.
    fn ship_and_verify(&self, what: &str) -> u64 {
        let o = self.host.run(&["ship", "d1", "--once", "--json"]);
        assert!(o.status.success(), "{what}: the cycle after the fault failed: {}", stderr(&o));
        let r = ShipReport::parse(&o.stdout);
        let out = self.s.path("restored.raw");
        self.host.run_ok(&["restore", "d1", "--out", out.to_str().unwrap(), "--force"]);
        assert!(fs::read(&out).unwrap() == fs::read(&self.image).unwrap(), "{what}: point {} differs", r.sequence);
        assert_eq!(self.dirty(), 0, "{what}: dirty blocks left after a committed cycle");
        r.sequence
    }

    /// The site's scrub of the vault, by path, with the key: nothing wrong,
    /// no partial object visible.
    fn scrub(&self) {
        let o = self.site.home.run_ok(&[
            "vault",
            "check",
            self.vault_dir.to_str().unwrap(),
            "--read-data",
            "--key",
            self.key.to_str().unwrap(),
        ]);
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("no problem"), "{text}");
    }
}

/// A failed cycle: exit 1, its changes still dirty, no new point.
fn assert_failed_cleanly(w: &World, o: &std::process::Output, points_before: &[u64], dirty_before: usize, what: &str) {
    assert_eq!(o.status.code(), Some(1), "{what}: {}", stderr(o));
    assert!(stderr(o).contains("stay marked dirty"), "{what}: {}", stderr(o));
    assert_eq!(w.points(), points_before, "{what}: a point was listed for a failed cycle");
    assert!(w.dirty() >= dirty_before, "{what}: dirty bits lost ({} < {dirty_before})", w.dirty());
}

#[test]
fn the_server_sigkilled_mid_pack_ten_times_loses_nothing() {
    let mut w = World::new("lb-site-kill-server-");
    for round in 0..10 {
        let what = format!("round {round}");
        w.write(48);
        let (points, dirty) = (w.points(), w.dirty());
        let ship = w.host.spawn_ship("d1");
        // Kill the server once 1 MiB (plus the round's offset) of this
        // cycle's pack has crossed the link.
        let at = w.proxy.up() + (1 << 20) + round * 65536;
        assert!(w.proxy.wait_up(at, Duration::from_secs(120)), "{what}: the pack never started");
        w.site.kill();
        let o = ship.wait_with_output().unwrap();
        w.site.serve(&[("main", &w.vault_dir.clone())]);
        assert_failed_cleanly(&w, &o, &points, dirty, &what);
        w.ship_and_verify(&what);
    }
    w.scrub();
}

#[test]
fn ship_sigkilled_mid_pack_ten_times_loses_nothing() {
    let mut w = World::new("lb-site-kill-ship-");
    for round in 0..10 {
        let what = format!("round {round}");
        w.write(48);
        let (points, dirty) = (w.points(), w.dirty());
        let mut ship = w.host.spawn_ship("d1");
        let at = w.proxy.up() + (1 << 20) + round * 65536;
        assert!(w.proxy.wait_up(at, Duration::from_secs(120)), "{what}: the pack never started");
        system::process::kill9(ship.id()).unwrap();
        let _ = ship.wait();
        assert_eq!(w.points(), points, "{what}: a point was listed for a killed cycle");
        assert!(w.dirty() >= dirty, "{what}: dirty bits lost");
        w.ship_and_verify(&what);
    }
    w.scrub();
}

#[test]
fn resets_mid_pack_and_refused_connections_fail_the_cycle_cleanly_and_the_next_commits() {
    let mut w = World::new("lb-site-reset-");
    // Reset every connection once 512 KiB more have gone up.
    for round in 0..3 {
        let what = format!("reset {round}");
        w.write(48);
        let (points, dirty) = (w.points(), w.dirty());
        let resets = w.proxy.resets();
        w.proxy.set(Fault::ResetAfterUp(512 << 10));
        let o = w.host.run(&["ship", "d1", "--once", "--json"]);
        assert!(w.proxy.resets() > resets, "{what}: the reset never fired");
        assert_failed_cleanly(&w, &o, &points, dirty, &what);
        w.ship_and_verify(&what);
    }
    // A link that takes connections and closes them at once: a clear error,
    // then the next cycle commits.
    w.write(8);
    let (points, dirty) = (w.points(), w.dirty());
    w.proxy.set(Fault::Refuse);
    let o = w.host.run(&["ship", "d1", "--once"]);
    w.proxy.set(Fault::None);
    assert_failed_cleanly(&w, &o, &points, dirty, "refused");
    assert!(stderr(&o).contains("127.0.0.1"), "the error names the server: {}", stderr(&o));
    w.ship_and_verify("after refusals");
    w.scrub();
}
