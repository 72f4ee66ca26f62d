//! An incremental cycle into a vault of 50,000 packs against the same cycle
//! into an empty vault, side by side (issue 14, point 5: "A cycle whose cost
//! does not grow with the vault"; target: time and backend requests within
//! 1.5×).
//!
//! `cargo bench -p benches --bench index_cache`
//!
//! Four identical disks of `LIFEBOAT_IDX_DISK_MIB` (default 64) MiB, 64 KiB
//! blocks, get the same writes. Disk A replicates into an empty vault, disk B
//! into a vault that also holds `LIFEBOAT_IDX_PACKS` (default 50,000) small
//! synthetic packs of another host (one sealed block each, written straight
//! into the vault directory with the pack writer, without fsync), both with
//! the host's index cache kept in memory between cycles, as the agent keeps
//! it. Disk B2 replicates into B's vault loading the cache file every cycle,
//! as `ship --once` does. Disk C replicates into B's vault without the
//! cache (the index rebuilt from every pack's tail, as before issue 14).
//! After a first full cycle each, `ROUNDS` (default 5) rounds write
//! `LIFEBOAT_IDX_CHANGED` (default 128) random blocks to every disk and run
//! one incremental cycle of each; the medians of the wall time and of the
//! backend requests (counted by `vault::counting`, as the vault server would
//! see them: one per 10,000 names listed) are printed with the ratios. Then
//! the cost of the periodic full listing (every 32 cycles) of B's vault is
//! printed too. Two more lanes run the agent's case through a vault server
//! on loopback (`site::server`, real TLS and certificates): one into an
//! empty vault, one into a vault of as many packs, all this host's (granted
//! to it in the site's journal, since a host lists only what it wrote).
//! Not a test: it asserts only that every point is committed.
//! `LIFEBOAT_IDX_VERBOSE=1` prints each cycle's counts (new and known
//! blocks, listed or not, packs and pages stored), to see what a lane did.

#![allow(clippy::cast_possible_truncation)] // bench sizes fit usize

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use disk_format::keys::{Keys, MasterKey};
use disk_format::pack::PackWriter;
use disk_format::Geometry;
use filter::disk::DiskPaths;
use filter::nbd::Export;
use filter::{Disk, StateFile};
use shipper::{run_cycle, CycleOptions, LocalSource};
use site::client::{Credentials, RemoteBackend};
use site::pki::{fingerprint_pem, hex, Ca, HostKey};
use site::protocol::EnrollRequest;
use site::server::{HostDirectory, HostStatus, Server, ServerConfig};
use vault::counting::{Counting, RequestCount};
use vault::index_cache::{IndexCache, WarmIndex};
use vault::{LocalBackend, Vault};

const BS: u64 = 64 * 1024;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn keys() -> Keys {
    MasterKey::from_bytes([7; 32]).keys()
}

/// A vault counting its requests.
fn counted_vault(dir: &Path, init: bool) -> (Vault, Arc<RequestCount>) {
    let backend = if init { LocalBackend::create(dir) } else { LocalBackend::open(dir) };
    let backend = Counting::new(backend.unwrap());
    let count = backend.count();
    let vault = if init { Vault::init(Box::new(backend), &keys()) } else { Vault::open(Box::new(backend)) };
    (vault.unwrap(), count)
}

/// Writes `n` synthetic one-block packs straight into the local vault at
/// `dir`; returns their names.
fn synthetic_packs(dir: &Path, n: u64) -> Vec<String> {
    let k = keys();
    let items: Vec<u64> = (0..n).collect();
    vault::par::map(&items, |&i| {
        let data = format!("another host's block {i}").into_bytes();
        let id = k.block_id(&data);
        let mut w = PackWriter::new(Vec::new()).unwrap();
        w.add_blob(&id, &k.seal_block(disk_format::Cipher::XChaCha20Poly1305, &id, &data).unwrap()).unwrap();
        let done = w.finish().unwrap();
        let name = done.id.to_string();
        let sub = dir.join("packs").join(&name[..2]);
        std::fs::create_dir_all(&sub)?;
        std::fs::write(sub.join(&name), &done.out)?;
        Ok::<_, std::io::Error>(name)
    })
    .unwrap()
}

/// The bench's site: one host, enrolled for every vault.
struct OneHost {
    fingerprint: String,
    vaults: Vec<String>,
}

impl HostDirectory for OneHost {
    fn lookup(&self, fingerprint: &str) -> HostStatus {
        if fingerprint == self.fingerprint {
            HostStatus::Enrolled { host: "bench".into(), vaults: self.vaults.clone() }
        } else {
            HostStatus::Unknown
        }
    }
    fn redeem(&self, _: &EnrollRequest) -> Result<String, String> {
        Err("no enrollment in the bench".into())
    }
    fn record_contact(&self, _: &str, _: u64) {}
}

/// A vault server on loopback (real TLS, certificates from `site::pki`)
/// serving `vaults` (name, directory), and the one host's credentials.
fn start_site(dir: &Path, vaults: Vec<(String, PathBuf)>) -> (Server, Credentials) {
    let ca = Ca::new("bench").unwrap();
    let (cert, key) = ca.issue_server(&["localhost".to_string()]).unwrap();
    let tls = site::tls::server_config(ca.cert_pem(), &cert, &key).unwrap();
    let host_key = HostKey::generate().unwrap();
    let host_cert = ca.issue_host("bench", &host_key.public_key_der(), Duration::from_secs(86_400)).unwrap();
    let hosts = OneHost {
        fingerprint: hex(&fingerprint_pem(&host_cert).unwrap()),
        vaults: vaults.iter().map(|(n, _)| n.clone()).collect(),
    };
    let config = ServerConfig { tls, vaults, grants: dir.join("grants"), hosts: Arc::new(hosts) };
    let server = Server::start("127.0.0.1:0".parse().unwrap(), config).unwrap();
    let creds = Credentials { ca_pem: ca.cert_pem().to_string(), cert_pem: host_cert, key_pem: host_key.key_pem() };
    (server, creds)
}

/// A vault through the server, counting its requests.
fn counted_remote(port: u16, vault: &str, creds: &Credentials, init: bool) -> (Vault, Arc<RequestCount>) {
    let backend = Counting::new(RemoteBackend::connect("localhost", port, vault, creds).unwrap());
    let count = backend.count();
    let vault = if init { Vault::init(Box::new(backend), &keys()) } else { Vault::open(Box::new(backend)) };
    (vault.unwrap(), count)
}

/// How a lane keeps its index.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cache {
    /// No cache: the index rebuilt from every pack's tail.
    None,
    /// The cache file, loaded by every cycle (`ship --once`).
    File,
    /// The cache kept in memory between cycles (the agent).
    Warm,
}

struct Lane {
    name: &'static str,
    paths: DiskPaths,
    disk_id: [u8; 16],
    vault: Vault,
    count: Arc<RequestCount>,
    cache: Option<PathBuf>,
    /// The cache kept in memory between cycles, as the agent does.
    warm: Option<WarmIndex>,
    times: Vec<Duration>,
    requests: Vec<u64>,
}

impl Lane {
    fn new(name: &'static str, dir: &Path, image: &[u8], vault: (Vault, Arc<RequestCount>), cache: Cache) -> Lane {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let paths = DiskPaths { image: d.join("disk.img"), state: d.join("state"), scratch: d.join("scratch") };
        std::fs::write(&paths.image, image).unwrap();
        // One chain per lane (two lanes into one vault with one disk id
        // would each see the other's points as a chain moved under them).
        let disk_id: [u8; 16] = blake3::hash(name.as_bytes()).as_bytes()[..16].try_into().unwrap();
        StateFile::create(&paths.state, Geometry::new(image.len() as u64, BS).unwrap(), disk_id, false).unwrap();
        let warm = (cache == Cache::Warm).then(WarmIndex::default);
        let cache = (cache != Cache::None).then(|| d.join("cache"));
        Lane {
            name,
            paths,
            disk_id,
            vault: vault.0,
            count: vault.1,
            cache,
            warm,
            times: Vec::new(),
            requests: Vec::new(),
        }
    }

    fn write(&self, writes: &[(u64, Vec<u8>)]) {
        let d = Disk::open(self.paths.clone()).unwrap();
        for (block, data) in writes {
            d.write_at(data, block * BS, false).unwrap();
        }
        d.close().unwrap();
    }

    /// One cycle; records its time and requests when `measure`.
    fn cycle(&mut self, measure: bool) {
        let before = self.count.get().total;
        let t = Instant::now();
        let mut src = LocalSource::open(self.paths.clone()).unwrap();
        let opts = CycleOptions {
            workers: 2,
            index_cache: self.cache.as_deref(),
            warm_index: self.warm.as_ref(),
            ..CycleOptions::new(self.name, self.disk_id)
        };
        let r = run_cycle(&mut src, &self.vault, &keys(), &opts, &mut ()).unwrap();
        src.close().unwrap();
        let took = t.elapsed();
        assert!(r.sequence > 0);
        if std::env::var_os("LIFEBOAT_IDX_VERBOSE").is_some() {
            eprintln!(
                "  {}: {:.1} ms, new {} known {} listed {} packs {} pages {}",
                self.name,
                took.as_secs_f64() * 1e3,
                r.new_blocks,
                r.known_blocks,
                r.index_listed,
                r.packs,
                r.pages
            );
        }
        if measure {
            self.times.push(took);
            self.requests.push(self.count.get().total - before);
        }
    }

    fn median(&self) -> (Duration, u64) {
        let mut t = self.times.clone();
        let mut r = self.requests.clone();
        t.sort();
        r.sort_unstable();
        (t[t.len() / 2], r[r.len() / 2])
    }
}

/// A small deterministic generator (xorshift), so every lane gets the same writes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n.div_ceil(8)).flat_map(|_| self.next().to_le_bytes()).take(n).collect()
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench` / nextest discovery: nothing to list.
    }
    let disk_mib = env_u64("LIFEBOAT_IDX_DISK_MIB", 64);
    let packs = env_u64("LIFEBOAT_IDX_PACKS", 50_000);
    let changed = env_u64("LIFEBOAT_IDX_CHANGED", 128);
    let rounds = env_u64("ROUNDS", 5);
    let work = tempfile::Builder::new().prefix("lb-idxbench-").tempdir_in("/var/tmp").unwrap();
    let dir = work.path();
    let mut rng = Rng(0x1400_0005);
    let blocks = disk_mib * 1024 * 1024 / BS;
    let image = rng.bytes((disk_mib << 20) as usize);

    let t = Instant::now();
    let empty = counted_vault(&dir.join("vault-empty"), true);
    let big_dir = dir.join("vault-big");
    drop(counted_vault(&big_dir, true));
    synthetic_packs(&big_dir, packs);
    // The same through a vault server, where a host lists only what it
    // wrote: the big vault's packs are this host's (granted to it in the
    // site's journal, as its earlier cycles would have left them).
    let srv_big = dir.join("srv-big");
    drop(counted_vault(&srv_big, true));
    let names = synthetic_packs(&srv_big, packs);
    let journal = dir.join("grants/big");
    std::fs::create_dir_all(&journal).unwrap();
    let lines: String = names.iter().map(|n| format!("packs/{n}\n")).collect();
    std::fs::write(journal.join("bench"), lines).unwrap();
    let srv_empty = dir.join("srv-empty");
    LocalBackend::create(&srv_empty).unwrap();
    eprintln!("index_cache bench: {packs} synthetic packs written twice in {:.1} s", t.elapsed().as_secs_f64());
    let (server, creds) = start_site(dir, vec![("empty".into(), srv_empty), ("big".into(), srv_big)]);
    let port = server.local_addr().port();
    let mut lanes = [
        Lane::new("a-empty", dir, &image, empty, Cache::Warm),
        Lane::new("b-big", dir, &image, counted_vault(&big_dir, false), Cache::Warm),
        Lane::new("b-big-loaded", dir, &image, counted_vault(&big_dir, false), Cache::File),
        Lane::new("c-big-uncached", dir, &image, counted_vault(&big_dir, false), Cache::None),
        Lane::new("d-server-empty", dir, &image, counted_remote(port, "empty", &creds, true), Cache::Warm),
        Lane::new("e-server-big", dir, &image, counted_remote(port, "big", &creds, false), Cache::Warm),
    ];
    for lane in &mut lanes {
        let t = Instant::now();
        lane.cycle(false);
        eprintln!("{}: first (full) cycle {:.2} s", lane.name, t.elapsed().as_secs_f64());
    }
    for round in 0..rounds {
        let mut picked = std::collections::BTreeSet::new();
        while (picked.len() as u64) < changed {
            picked.insert(rng.next() % blocks);
        }
        let writes: Vec<(u64, Vec<u8>)> = picked.into_iter().map(|b| (b, rng.bytes(BS as usize))).collect();
        for lane in &mut lanes {
            lane.write(&writes);
            lane.cycle(true);
        }
        let line: Vec<String> = lanes
            .iter()
            .map(|l| {
                format!(
                    "{} {:.1} ms / {} req",
                    l.name,
                    l.times[round as usize].as_secs_f64() * 1e3,
                    l.requests[round as usize]
                )
            })
            .collect();
        eprintln!("round {round}: {}", line.join(", "));
    }

    // Loading the cache, alone; then the periodic full listing of the big
    // vault (every 32 cycles).
    let (big, count) = counted_vault(&big_dir, false);
    let t = Instant::now();
    let (mut cache, _) = IndexCache::open(lanes[1].cache.as_deref().unwrap(), &big, &keys());
    let load = t.elapsed();
    cache.relist_every = 0;
    let before = count.get();
    let t = Instant::now();
    let synced = cache.sync(&big).unwrap();
    let listing = (t.elapsed(), count.get() - before);

    let (ta, ra) = lanes[0].median();
    let (tb, rb) = lanes[1].median();
    let (tl, rl) = lanes[2].median();
    let (tc, rc) = lanes[3].median();
    let (tse, rse) = lanes[4].median();
    let (tsb, rsb) = lanes[5].median();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "incremental cycle of {changed} changed 64 KiB blocks ({} MiB), {disk_mib} MiB disk, median of {rounds}:",
        (changed * BS) >> 20
    );
    println!("  {:<52} {:>10} {:>10}", "", "time ms", "requests");
    println!("  {:<52} {:>10.1} {:>10}", "empty vault, index cache (agent: kept in memory)", ms(ta), ra);
    println!("  {:<52} {:>10.1} {:>10}", format!("{packs} packs, index cache (agent)"), ms(tb), rb);
    println!("  {:<52} {:>10.1} {:>10}", format!("{packs} packs, index cache loaded (ship --once)"), ms(tl), rl);
    println!("  {:<52} {:>10.1} {:>10}", format!("{packs} packs, no cache (every tail read)"), ms(tc), rc);
    println!("  {:<52} {:>10.1} {:>10}", "vault server, empty vault, index cache (agent)", ms(tse), rse);
    println!("  {:<52} {:>10.1} {:>10}", format!("vault server, {packs} packs, index cache (agent)"), ms(tsb), rsb);
    println!(
        "  ratio with cache (target <= 1.5):  time {:.2}x, requests {:.2}x",
        ms(tb) / ms(ta),
        rb as f64 / ra as f64
    );
    println!(
        "  ratio through the vault server:    time {:.2}x, requests {:.2}x",
        ms(tsb) / ms(tse),
        rsb as f64 / rse as f64
    );
    println!(
        "  ratio, cache loaded per cycle:      time {:.2}x, requests {:.2}x",
        ms(tl) / ms(ta),
        rl as f64 / ra as f64
    );
    println!(
        "  ratio without cache:               time {:.2}x, requests {:.2}x",
        ms(tc) / ms(ta),
        rc as f64 / ra as f64
    );
    println!(
        "  the full listing every 32 cycles: {:.1} ms, {} requests ({} LIST pages), {} tails read, {} packs cached",
        ms(listing.0),
        listing.1.total,
        listing.1.lists,
        synced.read,
        cache.index().pack_count()
    );
    let file = IndexCache::path_in(lanes[1].cache.as_deref().unwrap(), &big);
    let len = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    println!("  loading the cache of {packs} packs ({len} bytes): {:.1} ms", ms(load));
}
