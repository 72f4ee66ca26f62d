//! `lifeboat bench`: this host's own ceilings, each beside its floor, in
//! well under a minute (issue 16, part 2). The results go to
//! HOME/machine.json, which `lifeboat plan-capacity` reads for the cores a
//! disk needs.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use disk_format::keys::{Cipher, Keys, MasterKey, NONCE_LEN, SEAL_OVERHEAD};
use disk_format::Geometry;
use filter::disk::DiskPaths;
use filter::StateFile;
use serde::{Deserialize, Serialize};
use shipper::engine::{BlockPool, Engine, EngineChoice};
use shipper::{run_cycle, CycleOptions, LocalSource};
use vault::{LocalBackend, Vault};

use crate::home::Home;
use crate::size::parse_size;

const BS: usize = 64 << 10;

#[derive(clap::Args)]
pub struct Args {
    /// Where to put the test image and vault (a directory, created if
    /// missing; everything the bench writes there is removed at the end):
    /// one on the file system your images, or your local vault, live on.
    /// Default: the home.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Size of the test image (random, incompressible data).
    #[arg(long, default_value = "512MiB", value_parser = parse_size)]
    size: u64,
    /// Print the results as JSON (the machine profile written to
    /// HOME/machine.json).
    #[arg(long)]
    json: bool,
}

/// A rate measured with a number of threads.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Measured {
    /// Threads (or pipeline workers).
    pub threads: u32,
    /// Bytes a second.
    pub bytes_per_second: f64,
}

/// What `lifeboat bench` measured: HOME/machine.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineProfile {
    /// When, RFC 3339.
    pub measured_at: String,
    /// Where the test image and vault were.
    pub dir: PathBuf,
    /// Test image bytes.
    pub size: u64,
    /// Cores.
    pub cores: u32,
    /// The cipher a new vault gets here.
    pub cipher: String,
    /// Block id and seal alone, on 1..=cores threads (the crypto floor).
    pub crypto: Vec<Measured>,
    /// The image read with O_DIRECT, 4 MiB pieces from four threads, nothing else (the device's floor).
    pub device_read: f64,
    /// The image read by the cycle's read engine, its cache dropped first.
    pub engine_read: f64,
    /// A whole cycle (read, id, compress, seal, pack, store into a local
    /// vault in the directory), 1..=cores workers, the image's cache dropped first.
    pub pipeline: Vec<Measured>,
    /// One worker's pipeline rate: what plan-capacity counts per core.
    pub pipeline_per_core: f64,
    /// A file as large as the image written with O_DIRECT, 4 MiB pieces
    /// from four threads, and fsynced (the floor of restore).
    pub device_write: f64,
    /// The point restored from the local vault into a new file, fsynced.
    pub restore: f64,
}

/// Where the machine profile is kept.
pub fn machine_path(home: &Home) -> PathBuf {
    home.root().join("machine.json")
}

/// The machine profile `lifeboat bench` wrote, if any.
pub fn load_machine(home: &Home) -> Result<Option<MachineProfile>> {
    let path = machine_path(home);
    match std::fs::read(&path) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b)
                .with_context(|| format!("{} is not a machine profile: run `lifeboat bench` again", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The bench's work directory, removed when dropped.
struct Work(PathBuf);

impl Drop for Work {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[allow(clippy::cast_precision_loss)]
fn rate(bytes: u64, since: Instant) -> f64 {
    bytes as f64 / since.elapsed().as_secs_f64().max(1e-9)
}

fn drop_cache(path: &Path) -> Result<()> {
    let f = File::open(path)?;
    system::file::drop_cached(&f).with_context(|| format!("dropping {} from the page cache", path.display()))
}

/// Which way [`device_floor`] moves the data.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Read,
    Write,
}

/// The device's rate for `size` bytes of `f` moved in 4 MiB pieces from
/// four threads, each taking every fourth piece (16 MiB in flight, like the
/// engine's 64 blocks of 64 KiB); writes are fsynced before the clock stops.
fn device_floor(f: &File, size: u64, way: Direction) -> Result<f64> {
    const THREADS: u64 = 4;
    const PIECE: u64 = 4 << 20;
    let (_pool, bigs) = BlockPool::new(usize::try_from(PIECE).expect("4 MiB"), usize::try_from(THREADS).expect("4"))?;
    let t = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let movers: Vec<_> = bigs
            .into_iter()
            .zip(0..THREADS)
            .map(|(mut big, n)| {
                s.spawn(move || -> std::io::Result<()> {
                    let mut at = n * PIECE;
                    while at < size {
                        let len = usize::try_from(PIECE.min(size - at)).expect("4 MiB");
                        match way {
                            Direction::Read => f.read_exact_at(&mut big.data_mut()[..len], at)?,
                            Direction::Write => f.write_all_at(&big.data()[..len], at)?,
                        }
                        at += THREADS * PIECE;
                    }
                    Ok(())
                })
            })
            .collect();
        for m in movers {
            m.join().expect("device floor thread")?;
        }
        Ok(())
    })?;
    if way == Direction::Write {
        f.sync_all()?;
    }
    Ok(rate(size, t))
}

#[allow(clippy::cast_precision_loss, clippy::too_many_lines)]
pub fn run(home: &Home, a: Args) -> Result<()> {
    if a.size < (16 << 20) || !a.size.is_multiple_of(BS as u64) {
        bail!("--size {}: at least 16 MiB, a multiple of 64 KiB", a.size);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
    let base = a.dir.clone().unwrap_or_else(|| home.root().to_path_buf());
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let work = Work(base.join(format!(".lifeboat-bench-{}", std::process::id())));
    recovery::trust::private_dir_all(&work.0).with_context(|| format!("creating {}", work.0.display()))?;
    let say = |m: &str| {
        if !a.json {
            tracing::info!("lifeboat bench: {m}");
        }
    };

    // The image: random blocks, written sequentially and fsynced (the
    // write floor), then dropped from the cache.
    say(&format!("writing a {} MiB test image in {}", a.size >> 20, base.display()));
    let image = work.0.join("disk.img");
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let mut xof = blake3::Hasher::new_keyed(&seed).finalize_xof();
    {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&image)?;
        let mut chunk = vec![0u8; 4 << 20];
        let mut left = a.size;
        while left > 0 {
            let n = usize::try_from(left.min(chunk.len() as u64)).expect("<= 4 MiB");
            xof.fill(&mut chunk[..n]);
            f.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        f.sync_all()?;
    }
    drop_cache(&image)?;

    // Crypto alone over the same kind of data, in memory.
    let keys: Keys = MasterKey::generate().map_err(|e| anyhow::anyhow!("{e}"))?.keys();
    let cipher = Cipher::preferred();
    let mem_blocks = usize::try_from((a.size.min(256 << 20)) / BS as u64).expect("small");
    let mut bufs: Vec<Vec<u8>> = (0..mem_blocks)
        .map(|_| {
            let mut b = vec![0u8; NONCE_LEN + BS + SEAL_OVERHEAD];
            xof.fill(&mut b[NONCE_LEN..NONCE_LEN + BS]);
            b
        })
        .collect();
    let mut crypto = Vec::new();
    for threads in 1..=cores {
        let per = bufs.len().div_ceil(threads as usize);
        let t = Instant::now();
        std::thread::scope(|s| {
            for share in bufs.chunks_mut(per) {
                let keys = &keys;
                s.spawn(move || {
                    for b in share {
                        let id = keys.block_id(&b[NONCE_LEN..NONCE_LEN + BS]);
                        let _ = std::hint::black_box(keys.seal_in_place(cipher, &id, b, BS));
                    }
                });
            }
        });
        crypto.push(Measured { threads, bytes_per_second: rate((mem_blocks * BS) as u64, t) });
    }
    drop(bufs);
    say("crypto floor measured; reading the image");

    // The device alone: O_DIRECT reads of the image, then writes of a new
    // file as large (fsynced), each from four threads of 4 MiB pieces.
    let f = OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(&image).or_else(|_| File::open(&image))?;
    let device_read = device_floor(&f, a.size, Direction::Read)?;
    drop(f);
    let floor_path = work.0.join("write-floor");
    let out =
        OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_DIRECT).open(&floor_path)?;
    let device_write = device_floor(&out, a.size, Direction::Write)?;
    drop(out);
    std::fs::remove_file(&floor_path)?;

    // The cycle's read engine, the same reads.
    drop_cache(&image)?;
    let g = Geometry::new(a.size, BS as u64)?;
    let choice = EngineChoice::from_env()?;
    let depth = shipper::engine::default_depth(BS);
    let (pool, mut free) = BlockPool::new(BS, depth + 8)?;
    let mut engine = Engine::open_path(choice, &image, &pool, depth)?;
    let t = Instant::now();
    let (mut next, mut done) = (0, Vec::new());
    while next < g.block_count || engine.in_flight() > 0 {
        while next < g.block_count && engine.in_flight() < engine.capacity() {
            let Some(buf) = free.pop() else { break };
            if let Err(buf) = engine.push(next, g.block_range(next).start, g.block_len(next), buf) {
                free.push(buf);
                break;
            }
            next += 1;
        }
        engine.reap(true, &mut done)?;
        for d in done.drain(..) {
            d.result?;
            free.push(d.buf);
        }
    }
    let engine_read = rate(a.size, t);
    drop(engine);
    drop(free);
    drop(pool);

    // Whole cycles into a local vault beside the image.
    let vault_dir = work.0.join("vault");
    let state = work.0.join("state");
    let mut pipeline = Vec::new();
    let mut last = None;
    for workers in 1..=cores {
        say(&format!("a full cycle with {workers} worker(s)"));
        let _ = std::fs::remove_dir_all(&vault_dir);
        let _ = std::fs::remove_file(&state);
        drop_cache(&image)?;
        let vault = Vault::init_with_cipher(Box::new(LocalBackend::create(&vault_dir)?), &keys, cipher)?;
        StateFile::create(&state, g, [7; 16], false)?;
        let mut src = LocalSource::open(DiskPaths {
            image: image.clone(),
            state: state.clone(),
            scratch: work.0.join("scratch"),
        })?;
        let opts = CycleOptions { workers: workers as usize, ..CycleOptions::new("bench", [7; 16]) };
        let t = Instant::now();
        let report = run_cycle(&mut src, &vault, &keys, &opts, &mut ())?;
        pipeline.push(Measured { threads: workers, bytes_per_second: rate(a.size, t) });
        src.close()?;
        last = Some((vault, report.sequence));
    }
    let (vault, sequence) = last.expect("at least one core");

    // Restore that point into a new file.
    say("restoring the point");
    let out_path = work.0.join("restored.img");
    let out = OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&out_path)?;
    let t = Instant::now();
    vault.restore(&Vault::chain_of(&keys, &[7; 16]), sequence, &keys, &out, &mut ())?;
    out.sync_all()?;
    let restore = rate(a.size, t);

    let m = MachineProfile {
        measured_at: crate::time::rfc3339(crate::time::now_ns()),
        dir: base.clone(),
        size: a.size,
        cores,
        cipher: cipher.to_string(),
        pipeline_per_core: pipeline[0].bytes_per_second,
        crypto,
        device_read,
        engine_read,
        pipeline,
        device_write,
        restore,
    };
    let path = machine_path(home);
    recovery::trust::private_dir_all(home.root()).with_context(|| format!("creating {}", home.root().display()))?;
    let text = serde_json::to_string_pretty(&m)?;
    system::file::replace(&path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    if a.json {
        outln!("{}", serde_json::to_string(&m)?);
        return Ok(());
    }
    let mb = |b: f64| format!("{:.0}", b / 1e6);
    outln!(
        "lifeboat bench: {} MiB of random data in {}, {} cores, {} (MB/s; ratio = measured / floor)",
        a.size >> 20,
        base.display(),
        cores,
        m.cipher
    );
    outln!("  {:<44} {:>8}   {:<36} {:>8} {:>6}", "measured", "MB/s", "floor", "MB/s", "ratio");
    let line = |what: &str, v: f64, floor: &str, f: f64| {
        outln!("  {:<44} {:>8}   {:<36} {:>8} {:>6.2}", what, mb(v), floor, mb(f), v / f);
    };
    line("read engine, cache dropped", m.engine_read, "O_DIRECT reads, 4 x 4 MiB in flight", m.device_read);
    for (p, c) in m.pipeline.iter().zip(&m.crypto) {
        line(
            &format!("full cycle into a local vault, {} worker(s)", p.threads),
            p.bytes_per_second,
            &format!("block id + seal alone, {} thread(s)", c.threads),
            c.bytes_per_second,
        );
    }
    line("restore into a new file, fsynced", m.restore, "O_DIRECT writes, 4 x 4 MiB, fsync", m.device_write);
    outln!(
        "machine profile written to {}: plan-capacity counts {} MB/s of pipeline per core",
        path.display(),
        mb(m.pipeline_per_core)
    );
    std::io::stdout().flush().ok();
    Ok(())
}
