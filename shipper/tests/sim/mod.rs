//! The deterministic simulation of replication cycles (see `simulation.rs`).

pub mod disk;
pub mod rng;
pub mod store;
pub mod world;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

pub use world::{Options, Sim, Stats};

/// The command that replays one seed with a trace.
pub fn replay_command(seed: u64, opts: Options) -> String {
    let steps = if opts.max_steps > 0 { format!("LIFEBOAT_SIM_STEPS={} ", opts.max_steps) } else { String::new() };
    let strict = if opts.strict_after_damage { " (with Options::strict_after_damage)" } else { "" };
    format!("{steps}LIFEBOAT_SIM_SEED={seed} cargo test -p shipper --test simulation -- --nocapture{strict}")
}

/// Runs one seed: `Err` names the seed, the step and what was violated.
pub fn run_seed(seed: u64, opts: Options) -> Result<Stats, String> {
    let step = AtomicU64::new(0);
    let doing = Mutex::new(String::from("setting up"));
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut sim = Sim::new(seed, opts);
        let r = sim.run();
        step.store(sim.step as u64, Ordering::Relaxed);
        *doing.lock().unwrap_or_else(|p| p.into_inner()) = sim.doing.clone();
        (r, sim.stats)
    }));
    let (result, stats) = match outcome {
        Ok(x) => x,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "a panic".into());
            (Err(format!("panicked: {msg}")), Stats::default())
        }
    };
    result.map(|()| stats).map_err(|e| {
        let doing = doing.into_inner().unwrap_or_else(|p| p.into_inner());
        format!(
            "simulation failed: seed {seed}, step {} ({doing}): {e}\n  replay: {}",
            step.load(Ordering::Relaxed),
            replay_command(seed, opts)
        )
    })
}

/// Runs seeds `first..first + count` on `threads` threads. Returns the
/// summed stats, or the failure of the lowest failing seed (and how many
/// seeds failed before the run stopped).
pub fn run_seeds(first: u64, count: u64, threads: usize, opts: Options) -> Result<Stats, (String, usize)> {
    let next = AtomicU64::new(first);
    let stop = AtomicBool::new(false);
    let failures: Mutex<Vec<(u64, String)>> = Mutex::new(Vec::new());
    let total = Mutex::new(Stats::default());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= first + count || stop.load(Ordering::Relaxed) {
                    break;
                }
                match run_seed(seed, opts) {
                    Ok(st) => total.lock().unwrap_or_else(|p| p.into_inner()).add(&st),
                    Err(e) => {
                        stop.store(true, Ordering::Relaxed);
                        failures.lock().unwrap_or_else(|p| p.into_inner()).push((seed, e));
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    failures.sort();
    match failures.first() {
        None => Ok(total.into_inner().unwrap_or_else(|p| p.into_inner())),
        Some((_, e)) => Err((e.clone(), failures.len())),
    }
}
