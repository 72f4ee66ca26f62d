//! `lifeboat status`: each protected disk's replication health.
//!
//! The achieved RPO is the age of the disk's newest point in the vault (read
//! without the key); the last cycle and the agent's plans come from the
//! disk's status file; the changes waiting come from its state file. None of
//! these needs the agent to be running.

use anyhow::Result;
use filter::StateFile;
use serde_json::{json, Value};

use crate::home::{DiskEntry, Home};
use crate::status_file::{self, CycleOutcome, DiskStatus};
use crate::time::{now_ns, rfc3339};

#[derive(clap::Args)]
pub struct Args {
    /// Only these disks (default: every protected disk in the home).
    #[arg(value_name = "NAME")]
    disks: Vec<String>,
    /// Print a JSON array, one object per disk: name, state ("ok", "late",
    /// "failing", "no-point", "not-replicated" or "error"), rpo_seconds (age
    /// of the newest point), rpo_target_seconds, newest_point, last_cycle
    /// (with "delayed": it took longer than the RPO interval),
    /// consecutive_failures, dirty_blocks, dirty_bytes, suspect, agent,
    /// next_cycle_in_seconds, log_lines_dropped (log lines the agent or filter
    /// serving the disk could not write to its stderr), error.
    #[arg(long)]
    json: bool,
}

/// A disk is "late" when its newest point is older than twice the RPO target
/// (and at least a minute past it): one slow cycle is normal, two missed are not.
fn late(age_s: f64, target_s: u64) -> bool {
    age_s > (2 * target_s).max(target_s + 60) as f64
}

fn pid_alive(pid: u32) -> bool {
    system::process::exists(pid)
}

pub fn run(home: &Home, a: Args) -> Result<()> {
    let names = if a.disks.is_empty() { home.disk_names()? } else { a.disks.clone() };
    if names.is_empty() && !a.json {
        outln!("no protected disks in this home; protect one with `lifeboat protect NAME --image IMAGE --vault DIR --key KEYFILE`");
        return Ok(());
    }
    let mut all = Vec::new();
    let mut failing = false;
    for name in &names {
        let v = match home.disk(name) {
            Ok(entry) => disk_status(home, name, &entry),
            Err(e) => json!({"name": name, "state": "error", "error": crate::error_chain(&e)}),
        };
        failing |= matches!(v["state"].as_str(), Some("failing" | "late" | "error"));
        all.push(v);
    }
    if a.json {
        outln!("{}", Value::Array(all));
    } else {
        for v in &all {
            print_human(v);
        }
    }
    // Scripts and monitors can act on the exit code alone.
    if failing {
        crate::log::flush();
        std::process::exit(3);
    }
    Ok(())
}

fn cycle_json(c: &CycleOutcome, interval_s: Option<u64>) -> Value {
    let millis = c.ended_ns.saturating_sub(c.started_ns) / 1_000_000;
    json!({
        "started": rfc3339(c.started_ns),
        "ended": rfc3339(c.ended_ns),
        "millis": millis,
        "late_ms": c.late_ms,
        "delayed": interval_s.is_some_and(|i| millis > i * 1000),
        "committed": c.error.is_none(),
        "sequence": c.sequence,
        "full": c.full,
        "blocks_read": c.blocks_read,
        "new_blocks": c.new_blocks,
        "bytes_shipped": c.bytes_shipped,
        "requests": c.requests,
        "error": c.error,
        "warnings": c.warnings,
        "throttled_ms": c.throttled_ms,
        "bandwidth_limit": c.bandwidth_limit,
    })
}

/// The chain of `vault` that holds the recorded point (same sequence, same
/// root id), read without the key: one object lookup per chain.
fn chain_of_point(vault: &vault::Vault, r: &disk_format::LastPoint) -> Option<String> {
    if r.vault_id != vault.config().vault_id {
        return None;
    }
    vault
        .disks()
        .ok()?
        .into_iter()
        .find(|chain| vault.load_root_with_id(chain, r.sequence, None).is_ok_and(|(_, id)| id == r.root_id))
}

fn disk_status(home: &Home, name: &str, entry: &DiskEntry) -> Value {
    let now = now_ns();
    let st: DiskStatus = status_file::read(&entry.status_path());
    let mut v = json!({"name": name, "image": entry.config.image});
    let mut errors = Vec::new();
    match StateFile::report(&entry.state_path()) {
        Ok(r) => {
            v["dirty_blocks"] = json!(r.dirty_blocks.len());
            v["dirty_bytes"] = json!(r.dirty_blocks.len() as u64 * u64::from(r.block_size));
            v["suspect"] = json!(r.suspect);
        }
        Err(e) => errors.push(format!("state file: {e}")),
    }
    let agent_running = st.agent_pid.is_some_and(pid_alive);
    v["agent"] = json!({"running": agent_running, "pid": st.agent_pid.filter(|_| agent_running)});
    v["log_lines_dropped"] = json!(st.log_lines_dropped);
    let Some(repl) = &entry.config.replication else {
        v["state"] = json!(if errors.is_empty() { "not-replicated" } else { "error" });
        v["error"] = json!(errors.first());
        return v;
    };
    let target = repl.rpo_seconds;
    v["rpo_target_seconds"] = json!(target);
    v["vault"] = json!(repl.vault);
    if agent_running {
        if let Some(next) = st.next_cycle_ns {
            v["next_cycle_in_seconds"] = json!(next.saturating_sub(now) / 1_000_000_000);
        }
    }
    v["last_cycle"] = st.last_cycle.as_ref().map_or(Value::Null, |c| cycle_json(c, Some(target)));
    v["consecutive_failures"] = json!(st.consecutive_failures);
    let recorded = filter::StateFile::header_of(&entry.state_path()).ok().and_then(|h| h.last_point);
    let newest = crate::cmd::vault::open(home, &repl.vault).and_then(|vault| {
        // Without the key: the chain is the one holding the point this host
        // recorded last (the vault seals which disk a chain is).
        let Some(chain) = recorded.as_ref().and_then(|r| chain_of_point(&vault, r)) else { return Ok(None) };
        let Some(&seq) = vault.sequences(&chain)?.last() else { return Ok(None) };
        Ok(Some(vault.load_root(&chain, seq, None)?))
    });
    let mut age_s = None;
    match newest {
        Ok(Some(root)) => {
            let age = now.saturating_sub(root.cut_time_ns) as f64 / 1e9;
            age_s = Some(age);
            v["rpo_seconds"] = json!((age * 10.0).round() / 10.0);
            v["newest_point"] = json!({"sequence": root.sequence, "cut_time": rfc3339(root.cut_time_ns)});
        }
        Ok(None) => v["newest_point"] = Value::Null,
        Err(e) => errors.push(format!("vault {}: {}", repl.vault, crate::error_chain(&e))),
    }
    let last_failed = st.last_cycle.as_ref().and_then(|c| c.error.clone());
    if let Some(e) = &last_failed {
        errors.push(format!("last cycle failed: {e}"));
    }
    let state = if !errors.is_empty() && last_failed.is_none() {
        "error"
    } else if last_failed.is_some() {
        "failing"
    } else {
        match age_s {
            None => "no-point",
            Some(age) if late(age, target) => "late",
            Some(_) => "ok",
        }
    };
    v["state"] = json!(state);
    v["error"] = json!(errors.first());
    v
}

fn print_human(v: &Value) {
    let name = v["name"].as_str().unwrap_or("?");
    let state = v["state"].as_str().unwrap_or("?");
    let rpo = match (v["rpo_seconds"].as_f64(), v["rpo_target_seconds"].as_u64()) {
        (Some(age), Some(t)) => format!("RPO {age:.0} s (target {t} s)"),
        (None, Some(t)) => format!("no point yet (target {t} s)"),
        _ => "not replicated (no vault)".to_string(),
    };
    outln!("{name}: {state} - {rpo}");
    if let Some(p) = v["newest_point"].as_object() {
        outln!("  newest point: {} cut {}", p["sequence"], p["cut_time"].as_str().unwrap_or("?"));
    }
    if let Some(c) = v["last_cycle"].as_object() {
        let secs = c["millis"].as_u64().unwrap_or(0) as f64 / 1000.0;
        if c["committed"].as_bool() == Some(true) {
            outln!(
                "  last cycle: point {} ({}), {:.1} s, {} bytes shipped{}, ended {}{}",
                c["sequence"],
                if c["full"].as_bool() == Some(true) { "full sync" } else { "incremental" },
                secs,
                c["bytes_shipped"],
                c["requests"].as_u64().map(|n| format!(" in {n} vault requests")).unwrap_or_default(),
                c["ended"].as_str().unwrap_or("?"),
                if c["delayed"].as_bool() == Some(true) { "; took longer than the RPO interval" } else { "" }
            );
        } else {
            outln!(
                "  last cycle: FAILED after {secs:.1} s at {} ({} in a row)",
                c["ended"].as_str().unwrap_or("?"),
                v["consecutive_failures"]
            );
        }
    }
    if let Some(c) = v["last_cycle"].as_object() {
        let waited = c["throttled_ms"].as_u64().unwrap_or(0);
        let took = c["millis"].as_u64().unwrap_or(0);
        if let Some(limit) = c["bandwidth_limit"].as_str().filter(|_| waited > 0) {
            let slowed = state == "late" || c["delayed"].as_bool() == Some(true);
            outln!(
                "  bandwidth limit {limit}: the last cycle waited {:.1} s of its {:.1} s for it{}",
                waited as f64 / 1000.0,
                took as f64 / 1000.0,
                if slowed {
                    "; the disk is late because of the limit (raise --bandwidth, or widen its schedule)"
                } else {
                    ""
                }
            );
        }
    }
    if let Some(n) = v["dirty_blocks"].as_u64() {
        outln!(
            "  waiting: {n} dirty blocks ({} bytes){}",
            v["dirty_bytes"],
            if v["suspect"].as_bool() == Some(true) { "; suspect: the next cycle verifies every block" } else { "" }
        );
    }
    match (v["agent"]["running"].as_bool(), v["next_cycle_in_seconds"].as_u64()) {
        (Some(true), Some(n)) => outln!("  agent: running (pid {}), next cycle in {n} s", v["agent"]["pid"]),
        (Some(true), None) => outln!("  agent: running (pid {})", v["agent"]["pid"]),
        _ => outln!("  agent: not running"),
    }
    if let Some(n) = v["log_lines_dropped"].as_u64().filter(|&n| n > 0) {
        outln!(
            "  log: {n} line(s) the agent or filter serving the disk could not write to its stderr (full, or a pipe \
             nobody reads); check where its stderr goes"
        );
    }
    if let Some(e) = v["error"].as_str() {
        outln!("  error: {e}");
    }
}
