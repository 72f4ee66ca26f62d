#!/usr/bin/env bash
# Sustained churn: the largest write rate through `lifeboat agent` at which an
# RPO (30 s unless RPO says otherwise) holds for the whole run (issue 3:
# ">= 500 MB/s for 10 minutes"; issue 17: 5 s at >= 40% of the ceiling).
#
#   benches/churn-bench.sh                      # RATES="100 250 500", 600 s each
#   RATES="300" DURATION=120 benches/churn-bench.sh
#   RPO=5 RATES="400" benches/churn-bench.sh    # a 5 s RPO
#
# For each rate (MB/s, 10^6 bytes) a fresh home, a SIZE raw image (sparse) and
# a vault in BENCH_DIR; `lifeboat protect --rpo RPO --keep-recent KEEP_RECENT
# --keep-hourly 0` and `lifeboat agent --gc-every GC_EVERY` (so the vault stays
# bounded); once the first (full) cycle has committed, fio writes through the
# agent's NBD socket (`--ioengine=nbd`, sequential 1 MiB writes wrapping around
# the disk, iodepth 8, fresh random buffers for every write so nothing
# deduplicates, `rate=RATE`) for DURATION seconds. Sequential is the hard case:
# every byte written in an interval is a distinct block, up to the disk size.
#
# Every second the achieved RPO (age of the newest point, `lifeboat status
# --json`) is sampled. A rate HOLDS when no cycle overran its interval and
# the newest point was never older than twice the RPO (one interval plus one
# cycle). An RPO under 30 s keeps `protect`'s default thinned recent rung.
# Printed per rate: rate asked, rate fio achieved, cycles, mean and max cycle
# time, mean MB shipped per cycle, max RPO age, the vault's largest size on
# disk (sampled with the RPO: retention and GC keep it bounded), overruns,
# HOLDS.
#
# SERVER=1 puts the vault behind a `lifeboat vault serve` on loopback (TLS
# 1.3, site made by `site init`/`enroll`/`join` in BENCH_DIR; the vault's
# files on the same device): the agent replicates to lifeboat://127.0.0.1:PORT/
# churn, and retention runs at the site as it would there (`prune --all` and
# `vault gc --wait` by path, every 17 s: a collection waits for the next gap
# between cycles; the agent leaves them to the site).
#
# Environment: RATES, RPO (seconds, default 30), DURATION (s, default 600),
# SIZE (default 8G), KEEP_RECENT (default 1m) and GC_EVERY (default 1m): the
# retention that bounds the vault (each point of sequential churn is up to a
# whole disk of new blocks: keep the vault within the free space), SERVER,
# BENCH_DIR (default /var/tmp/lifeboat-churn; disk-backed, needs about 4x SIZE
# free), VAULT_DIR (default BENCH_DIR/vault: where the vault's files go; a
# directory on another device, or /dev/shm/... to stand for a recovery site
# whose disks are not the protected host's; needs about 4x SIZE),
# KEEP=1 keeps the work directory. The writer, the NBD server and the
# shipper share the machine's cores: run it alone.
set -euo pipefail

if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
  sed -n '2,45p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
rates=${RATES:-100 250 500}
rpo=${RPO:-30}
keep_recent=${KEEP_RECENT:-1m}
gc_every=${GC_EVERY:-1m}
case $rpo in *[!0-9]* | '' | 0) echo "RPO is whole seconds, e.g. RPO=5" >&2; exit 2 ;; esac
duration=${DURATION:-600}
size=${SIZE:-8G}
dir=${BENCH_DIR:-/var/tmp/lifeboat-churn}

say() { printf '[churn] %s\n' "$*" >&2; }
need() { command -v "$1" >/dev/null || { say "$1 is missing: run scripts/setup.sh"; exit 1; }; }
for t in fio python3 nbdinfo; do need "$t"; done

say "building lifeboat (release)"
cargo build --release -p cli >&2
lb=${CARGO_TARGET_DIR:-$repo/target}/release/lifeboat

agent_pid=
serve_pid=
site_loop=
cleanup() {
  if [ -n "$agent_pid" ] && kill -0 "$agent_pid" 2>/dev/null; then
    kill -TERM "$agent_pid" 2>/dev/null || true
    wait "$agent_pid" 2>/dev/null || true
  fi
  for p in $site_loop $serve_pid; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  [ "${KEEP:-0}" = 1 ] || rm -rf "$dir" ${VAULT_DIR:+"$VAULT_DIR"}
}
trap cleanup EXIT

rows=()
for rate in $rates; do
  rm -rf "$dir"
  mkdir -p "$dir"
  home=$dir/home
  lbh() { "$lb" --home "$home" "$@"; }
  truncate -s "$size" "$dir/disk.img"
  lbh key new --out "$dir/k.key" >/dev/null
  vault_dir=${VAULT_DIR:-$dir/vault}
  rm -rf "$vault_dir"
  vault=$vault_dir
  if [ "${SERVER:-0}" = 1 ]; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    site() { "$lb" --home "$dir/site-home" "$@"; }
    mkdir -p "$vault_dir"
    site site init "$dir/site" --address "127.0.0.1:$port" >/dev/null
    site site enroll bench --vault churn --out "$dir/bench.enroll" --site "$dir/site" >/dev/null
    "$lb" --home "$dir/site-home" vault serve --site "$dir/site" --listen "127.0.0.1:$port" churn="$vault_dir" 2>"$dir/serve.log" &
    serve_pid=$!
    for _ in $(seq 200); do grep -q 'serving vaults' "$dir/serve.log" && break; sleep 0.05; done
    lbh site join "$dir/bench.enroll" >/dev/null
    vault=lifeboat://127.0.0.1:$port/churn
    # Retention at the site, by path, without the key. GC waits for a gap
    # between cycles (its lease and theirs exclude each other); a round that
    # still fails tries again (`|| true`, or `set -e` would end the loop).
    ( while sleep 17; do
        site prune --all --vault "$vault_dir" --recent 1m --hourly 0 >>"$dir/site-retention.log" 2>&1 || true
        site vault gc "$vault_dir" --wait 5m >>"$dir/site-retention.log" 2>&1 || true
      done ) &
    site_loop=$!
  fi
  lbh vault init "$vault" --key "$dir/k.key" >/dev/null
  lbh protect churn --image "$dir/disk.img" --vault "$vault" --key "$dir/k.key" \
    --rpo "${rpo}s" --keep-recent "$keep_recent" --keep-hourly 0 --keep-daily 0 >/dev/null
  log=$dir/agent.log
  "$lb" --home "$home" agent --gc-every "$gc_every" 2>"$log" &
  agent_pid=$!
  for _ in $(seq 600); do
    grep -q "point 1 committed" "$log" && break
    kill -0 "$agent_pid" 2>/dev/null || { cat "$log" >&2; say "the agent exited"; exit 1; }
    sleep 0.1
  done
  grep -q "point 1 committed" "$log" || { cat "$log" >&2; say "no first point within 60 s"; exit 1; }
  sock=$home/disks/churn/nbd.sock
  say "rate ${rate} MB/s for ${duration} s on a ${size} disk (load: $(cut -d' ' -f1-3 /proc/loadavg))"
  python3 - "$lb" "$home" "$duration" "$vault_dir" "$rpo" >"$dir/rpo.txt" <<'PY' &
import json, os, subprocess, sys, time
lb, home, duration, vault_dir = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
rpo = float(sys.argv[5])
def used(top):
    n = 0
    for root, _, files in os.walk(top):
        for f in files:
            try:
                n += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return n
end = time.time() + duration + rpo + 5
while time.time() < end:
    out = subprocess.run([lb, "--home", home, "status", "churn", "--json"], capture_output=True, text=True).stdout
    try:
        print(json.loads(out)[0].get("rpo_seconds"), used(vault_dir), flush=True)
    except Exception:
        pass
    time.sleep(1)
PY
  sampler=$!
  fio --name=churn --ioengine=nbd --uri="nbd+unix:///churn?socket=$sock" --rw=write --bs=1m --iodepth=8 \
    --rate="${rate}m" --rate_process=linear --time_based --runtime="$duration" --refill_buffers \
    --output-format=json --output="$dir/fio.json" >/dev/null
  # One more interval, so the cycle that ships the last writes is counted.
  sleep $((rpo + 5))
  wait "$sampler" || true
  kill -TERM "$agent_pid"
  wait "$agent_pid" || { cat "$log" >&2; say "the agent did not stop cleanly"; exit 1; }
  agent_pid=
  for p in $site_loop $serve_pid; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  site_loop= serve_pid=
  row=$(python3 - "$rate" "$dir/fio.json" "$log" "$dir/rpo.txt" "$rpo" <<'PY'
import json, re, sys
rate, fio, log, rpo, interval = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
bw = json.load(open(fio))["jobs"][0]["write"]["bw_bytes"] / 1e6
cycles = [(float(m.group(2)), int(m.group(1)))
          for m in re.finditer(r"point \d+ committed \(incremental\): .*? (\d+) bytes shipped in ([\d.]+) s", open(log).read())]
overruns = open(log).read().count("longer than the")
failed = open(log).read().count("cycle failed")
samples = [line.split() for line in open(rpo) if len(line.split()) == 2]
ages = [float(a) for a, _ in samples if a not in ("None", "null")]
max_vault = max((int(b) for _, b in samples), default=0) / 1e9
n = len(cycles)
mean_t = sum(t for t, _ in cycles) / n if n else 0
max_t = max((t for t, _ in cycles), default=0)
mean_mb = sum(b for _, b in cycles) / n / 1e6 if n else 0
max_age = max(ages, default=float("nan"))
holds = n > 0 and overruns == 0 and failed == 0 and max_age <= 2 * interval
print(f"{rate}\t{bw:.0f}\t{n}\t{mean_t:.1f}\t{max_t:.1f}\t{mean_mb:.0f}\t{max_age:.1f}\t{max_vault:.1f}\t{overruns}+{failed}\t{'yes' if holds else 'NO'}")
PY
)
  rows+=("$row")
  say "$row"
  say "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
done

echo
vault_files=${VAULT_DIR:-$dir/vault}
vault_fs=$(df --output=source,fstype "$(dirname "$vault_files")" | tail -1 | tr -s ' ')
where="a vault directory ($vault_files on $vault_fs)"
[ "${SERVER:-0}" = 1 ] && where="a vault server on loopback (vault files in $vault_files on $vault_fs)"
echo "Sustained churn through lifeboat agent into $where, ${rpo} s RPO, ${duration} s per rate, ${size} disk, sequential 1 MiB writes"
printf '%-9s %-9s %-7s %-11s %-10s %-12s %-11s %-13s %-16s %s\n' "asked MB/s" "fio MB/s" cycles "mean cycle s" "max cycle s" "MB/cycle" "max RPO s" "max vault GB" "overrun+failed" HOLDS
for r in "${rows[@]}"; do
  IFS=$'\t' read -r a b c d e f g h i j <<<"$r"
  printf '%-10s %-9s %-7s %-12s %-11s %-12s %-11s %-13s %-16s %s\n' "$a" "$b" "$c" "$d" "$e" "$f" "$g" "$h" "$i" "$j"
done
