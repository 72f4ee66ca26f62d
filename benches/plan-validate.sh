#!/usr/bin/env bash
# Is `lifeboat plan-capacity` right? (issue 16, point 4.) Records a churn
# profile of two disks under a fio job with bursts and idle stretches, asks
# the planner what a link will do with them, replays the same job through a
# real `lifeboat agent` limited to that link, and prints predicted and
# measured side by side with their ratios.
#
#   benches/plan-validate.sh                    # 600 s job, 30 s RPO, 10MB/s link
#   DURATION=120 benches/plan-validate.sh       # a quick look (4 windows)
#
# 1. Two raw images of SIZE (default 1G), each with USED (default 128M) of
#    data written by fio, half compressible (as the job's writes are).
# 2. Record: a home with both disks protected (no vault), each served by
#    `lifeboat filter` on a unix socket, which records its churn profile
#    (30 s intervals). The job runs DURATION seconds:
#    - db: 4 KiB random writes, 20 a second, zipf(1.2) over the disk, the
#      whole time; and two bursts of 64 KiB random writes at 4 MiB/s into a
#      256 MiB region (rewrites within a window), at 20-30% and 60-70% of
#      the run.
#    - app: idle but for two bursts of sequential 1 MiB writes at 8 MiB/s,
#      at 40-50% and 80-90% of the run.
#    fio's offsets repeat from run to run (fixed seeds); its buffers are
#    fresh random data, half compressible.
# 3. Plan: `lifeboat bench` (HOME/machine.json), then, with the images put
#    back as they were before the job (what the replay starts from),
#    `lifeboat plan-capacity db app --rpo RPO --link LINK --growth 0
#    --keep-recent 1h --json`.
# 4. Replay: a fresh home, fresh copies of the images, a vault in BENCH_DIR,
#    both disks protected with the same RPO and ladder, `lifeboat agent
#    --bandwidth LINK`. Once both full syncs are in, the same job runs
#    through the agent's sockets; `lifeboat status --json` is sampled every
#    half second for the age of each disk's newest point; the run ends when
#    both disks have committed a point cut after the job ended.
#
# Compared, per disk: the mean, p95 (nearest rank) and largest cycle time
# (against the plan's mean, p95 and p99 cycles), the newest point's largest
# age (against max_rpo_seconds), and the bytes its points shipped (against
# point_bytes times the job's length in intervals); for the host: the
# vault directory's growth over the job (apparent size, metadata included)
# and the initial sync of both disks at once (against the host's
# initial_sync_seconds: the link carries both). Target (issue 16): within
# 20% on each, that is measured/predicted in [0.8, 1.2].
#
# Environment: DURATION (s, default 600, at least 120), RPO (s, default
# 30), LINK (default 10MB/s), SIZE, USED, BENCH_DIR (default
# /var/tmp/lifeboat-plan; about 4x SIZE free), LIFEBOAT_BIN (skip the
# build), KEEP=1 keeps the work directory. Takes about 2 x DURATION plus a
# minute; run it alone: the job, the filter and the shipper share the cores.
set -euo pipefail

if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
  sed -n '2,48p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
dir=${BENCH_DIR:-/var/tmp/lifeboat-plan}
duration=${DURATION:-600}
rpo=${RPO:-30}
link=${LINK:-10MB/s}
size=${SIZE:-1G}
used=${USED:-128M}
say() { printf '[plan] %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }
case $duration in *[!0-9]* | '') die "DURATION is whole seconds" ;; esac
[ "$duration" -ge 120 ] || die "DURATION is at least 120 s (the job's bursts are a tenth of it)"
case $rpo in *[!0-9]* | '' | 0) die "RPO is whole seconds, e.g. RPO=30" ;; esac
for t in fio python3; do command -v "$t" >/dev/null || die "$t is missing: run scripts/setup.sh"; done
. "$repo/benches/lib.sh"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  [ "${KEEP:-0}" = 1 ] || rm -rf "${dir:?}"
}
trap cleanup EXIT
bench_workdir .plan-validate
bench_lifeboat

# jobfile DB_SOCKET APP_SOCKET: the job, at $dir/job.fio.
jobfile() {
  local d=$duration burst=$((duration / 10))
  cat >"$dir/job.fio" <<EOF
[global]
ioengine=nbd
time_based=1
randrepeat=1
refill_buffers=1
buffer_compress_percentage=50
iodepth=4

[db-background]
uri=nbd+unix:///db?socket=$1
rw=randwrite
bs=4k
rate_iops=20
random_distribution=zipf:1.2
runtime=$d
randseed=11

[db-burst-1]
uri=nbd+unix:///db?socket=$1
rw=randwrite
bs=64k
size=256m
rate=4m
startdelay=$((d * 2 / 10))
runtime=$burst
randseed=12

[db-burst-2]
uri=nbd+unix:///db?socket=$1
rw=randwrite
bs=64k
size=256m
rate=4m
startdelay=$((d * 6 / 10))
runtime=$burst
randseed=13

[app-burst-1]
uri=nbd+unix:///app?socket=$2
rw=write
bs=1m
offset=256m
size=480m
rate=8m
startdelay=$((d * 4 / 10))
runtime=$burst

[app-burst-2]
uri=nbd+unix:///app?socket=$2
rw=write
bs=1m
offset=512m
size=480m
rate=8m
startdelay=$((d * 8 / 10))
runtime=$burst
EOF
}

say "images: 2 x $size, $used of data each"
for d in db app; do
  truncate -s "$size" "$dir/$d.pristine"
  fio --name=fill --filename="$dir/$d.pristine" --rw=write --bs=1m --size="$used" --refill_buffers \
    --buffer_compress_percentage=50 --output=/dev/null
done

# 2. Record.
rec=$dir/record
lbr() { "$lb" --home "$rec" "$@"; }
for d in db app; do
  cp --sparse=always "$dir/$d.pristine" "$dir/$d.record.img"
  lbr protect "$d" --image "$dir/$d.record.img" --rpo "${rpo}s" >/dev/null
  rm -f "$dir/$d.sock"
  # Not through lbr: a function run with & is a subshell, and a signal to
  # it would not reach lifeboat.
  "$lb" --home "$rec" filter "$d" --listen "unix:$dir/$d.sock" 2>"$dir/filter-$d.log" &
  pids+=($!)
done
for d in db app; do
  for _ in $(seq 300); do grep -q "listening on" "$dir/filter-$d.log" && break; sleep 0.1; done
  grep -q "listening on" "$dir/filter-$d.log" || die "the filter of $d did not start: $(tail -3 "$dir/filter-$d.log")"
done
jobfile "$dir/db.sock" "$dir/app.sock"
say "recording: the job for $duration s through lifeboat filter"
fio "$dir/job.fio" --output-format=json --output="$dir/fio-record.json" >/dev/null
for p in "${pids[@]}"; do kill -TERM "$p"; wait "$p" || die "a filter did not stop cleanly: $(tail -3 "$dir"/filter-*.log)"; done
pids=()
for d in db app; do lbr profile show "$d" >&2; done

# 3. Plan, for the images as the replay starts them.
say "lifeboat bench"
mkdir -p "$dir/bench"
lbr bench --dir "$dir/bench" --size 256MiB >&2
for d in db app; do cp --sparse=always "$dir/$d.pristine" "$dir/$d.record.img"; done
plan_args=(db app --rpo "${rpo}s" --link "$link" --growth 0 --keep-recent 1h --keep-hourly 0 --keep-daily 0)
lbr plan-capacity "${plan_args[@]}" >&2
lbr plan-capacity "${plan_args[@]}" --json >"$dir/plan.json"

# 4. Replay.
rep=$dir/replay
lbp() { "$lb" --home "$rep" "$@"; }
lbp key new --out "$dir/k.key" >/dev/null
lbp vault init "$dir/vault" --key "$dir/k.key" >/dev/null
for d in db app; do
  cp --sparse=always "$dir/$d.pristine" "$dir/$d.replay.img"
  lbp protect "$d" --image "$dir/$d.replay.img" --vault "$dir/vault" --key "$dir/k.key" --rpo "${rpo}s" \
    --keep-recent 1h --keep-hourly 0 --keep-daily 0 >/dev/null
done
log=$dir/agent.log
say "replay: lifeboat agent --bandwidth $link"
"$lb" --home "$rep" agent --bandwidth "$link" 2>"$log" &
agent_pid=$!
pids+=("$agent_pid")
commits() { grep -c "lifeboat agent: $1: point [0-9]* committed" "$log" || true; }
for _ in $(seq 6000); do
  [ "$(commits db)" -ge 1 ] && [ "$(commits app)" -ge 1 ] && break
  kill -0 "$agent_pid" 2>/dev/null || die "the agent exited: $(tail -5 "$log")"
  sleep 0.1
done
[ "$(commits db)" -ge 1 ] && [ "$(commits app)" -ge 1 ] || die "no full sync within 10 minutes: $(tail -5 "$log")"
vault_size() { find "$dir/vault" -type f -printf '%s\n' | awk '{n += $1} END {print n + 0}'; }
vault_before=$(vault_size)
/usr/bin/python3 - "$lb" "$rep" >"$dir/ages.txt" <<'PY' &
import json, subprocess, sys, time
lb, home = sys.argv[1], sys.argv[2]
while True:
    out = subprocess.run([lb, "--home", home, "status", "--json"], capture_output=True, text=True).stdout
    try:
        for d in json.loads(out):
            if d.get("rpo_seconds") is not None:
                print(d["name"], d["rpo_seconds"], flush=True)
    except ValueError:
        pass
    time.sleep(0.5)
PY
sampler=$!
pids+=("$sampler")
jobfile "$rep/disks/db/nbd.sock" "$rep/disks/app/nbd.sock"
say "replaying the job for $duration s"
fio "$dir/job.fio" --output-format=json --output="$dir/fio-replay.json" >/dev/null
ended_db=$(commits db) ended_app=$(commits app)
# The cycle that ships the job's last writes: one more commit per disk.
for _ in $(seq $((rpo * 40 + 600))); do
  [ "$(commits db)" -gt "$ended_db" ] && [ "$(commits app)" -gt "$ended_app" ] && break
  sleep 0.1
done
[ "$(commits db)" -gt "$ended_db" ] && [ "$(commits app)" -gt "$ended_app" ] || die "no cycle after the job: $(tail -5 "$log")"
kill -TERM "$sampler"
wait "$sampler" 2>/dev/null || true
kill -TERM "$agent_pid"
wait "$agent_pid" || die "the agent did not stop cleanly: $(tail -5 "$log")"
pids=()
vault_after=$(vault_size)

echo
/usr/bin/python3 - "$dir/plan.json" "$log" "$dir/ages.txt" "$duration" "$rpo" "$vault_before" "$vault_after" "$link" <<'PY'
import json, math, re, sys
plan_file, log, ages_file, duration, rpo = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
vault_before, vault_after, link = int(sys.argv[6]), int(sys.argv[7]), sys.argv[8]
plan = json.load(open(plan_file))
text = open(log).read()
cyc = re.compile(r"lifeboat agent: (\w+): point \d+ committed \((full sync|incremental)[^)]*\): .*? (\d+) bytes shipped in ([\d.]+) s")
cycles = {}
for m in cyc.finditer(text):
    cycles.setdefault((m.group(1), m.group(2)), []).append((float(m.group(4)), int(m.group(3))))
ages = {}
for line in open(ages_file):
    name, age = line.split()
    ages.setdefault(name, []).append(float(age))

def nearest_rank(v, q):
    v = sorted(v)
    return v[max(1, math.ceil(q * len(v))) - 1]

rows = []
def row(what, predicted, measured, unit):
    ratio = measured / predicted if predicted else float("nan")
    rows.append((what, predicted, measured, ratio, unit))

for d in plan["disks"]:
    name = d["name"]
    inc = cycles.get((name, "incremental"), [])
    if not inc:
        sys.exit(f"{name}: no incremental cycle in the agent's log")
    times = [t for t, _ in inc]
    mean_c, p95_c, p99_c = d["cycle_seconds"]
    row(f"{name} mean cycle", mean_c, sum(times) / len(times), "s")
    row(f"{name} p95 cycle", p95_c, nearest_rank(times, 0.95), "s")
    row(f"{name} largest cycle (p99)", p99_c, max(times), "s")
    row(f"{name} largest RPO", d["max_rpo_seconds"], max(ages.get(name, [float("nan")])), "s")
    row(f"{name} shipped by its points", d["point_bytes"] * duration / rpo / 1e6, sum(b for _, b in inc) / 1e6, "MB")
host = plan["host"]
row("host vault growth", host["point_bytes"] * duration / rpo / 1e6, (vault_after - vault_before) / 1e6, "MB")
full = [t for d in plan["disks"] for t, _ in cycles.get((d["name"], "full sync"), [])]
row("host initial sync (both disks)", host["initial_sync_seconds"], max(full), "s")

print(f"plan-capacity against a real agent: 2 disks, {duration:.0f} s job, {rpo:.0f} s RPO, --bandwidth {link}")
print(f"{'':34} {'predicted':>10} {'measured':>10} {'ratio':>7}")
ok = True
for what, p, m, r, unit in rows:
    good = 0.8 <= r <= 1.2
    ok = ok and good
    print(f"{what:34} {p:>8.1f} {unit:<2}{m:>8.1f} {unit:<2}{r:>6.2f}  {'within 20%' if good else 'OFF'}")
print("every figure within 20%" if ok else "NOT every figure within 20%")
PY
