#!/usr/bin/env bash
# What a cycle costs when little changed (issue 17, point 3: seconds-level
# RPO): cycles with 0 and with 10 changed blocks, and cycles per second at
# idle, beside the device's floor for durable metadata.
#
#   benches/rpo-bench.sh                  # SIZE=2G, 10 cycles of each kind: ~1 minute
#   SIZE=8G CYCLES=20 benches/rpo-bench.sh
#   benches/rpo-bench.sh --help
#
# One image (benches/replicate-bench/bench.py gen-image: 25% zero extents,
# the rest incompressible), protected with --block-size 64KiB and --rpo 5s
# into a vault directory beside it, fully synced once. `lifeboat filter`
# serves it for the whole run. Then CYCLES cycles with nothing written, and
# CYCLES cycles after 10 scattered 64 KiB blocks were written through the
# filter (bench.py change, libnbd). Timed: `lifeboat ship NAME --once
# --json`, its "millis" (the cycle) and its wall time (process included).
#
# The floor: a small durable write in the vault's directory (4 KiB written
# and fdatasync'd, 20 times, the median): what each of a cycle's fsyncs
# costs on this device at least.
#
# Printed: the medians, cycles per second at idle (1000 / idle cycle ms),
# the cycles in units of the floor, and the target: a 10-block cycle,
# process included, within 10% of a 5 s RPO (<= 500 ms).
#
# Environment: SIZE (default 2G), CYCLES (10), SEED (1), BENCH_DIR
# (default /var/tmp/lifeboat-rpo-bench, removed at the end unless KEEP=1),
# LIFEBOAT_BIN (default: cargo build --release -p cli). Needs
# python3-libnbd (scripts/setup.sh).
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
case ${1:-} in
  -h | --help) usage; exit 0 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac

repo=$(cd "$(dirname "$0")/.." && pwd)
helper=$repo/benches/replicate-bench/bench.py
py=/usr/bin/python3 # Debian's interpreter: it has the nbd module
size=$(numfmt --from=iec "${SIZE:-2G}") || { echo "SIZE=${SIZE:-}: not a size" >&2; exit 2; }
cycles=${CYCLES:-10}
seed=${SEED:-1}
dir=${BENCH_DIR:-/var/tmp/lifeboat-rpo-bench}

say() { printf '[rpo-bench] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
$py -c 'import nbd' 2>/dev/null || die "python3-libnbd is missing: run scripts/setup.sh"
[[ $cycles =~ ^[1-9][0-9]*$ ]] || die "CYCLES must be a positive number"
[ $((size % (4 << 20))) -eq 0 ] && [ "$size" -gt 0 ] || die "SIZE must be a positive multiple of 4 MiB"
img=$dir/image.img
source "$repo/benches/lib.sh"
bench_workdir .rpo-bench
bench_lifeboat
export LIFEBOAT_HOME=$dir/home
filter_pid=
trap bench_cleanup EXIT

say "image: $(numfmt --to=iec "$size"), seed $seed"
$py "$helper" gen-image "$img" "$size" "$seed" >&2
bench_protect --rpo 5s

sock=$dir/filter.sock
bench_filter "$sock"

# 10 blocks of the disk, as a percentage for bench.py change.
pct=$($py -c "import sys; print(10 * 100 / (int(sys.argv[1]) // 65536))" "$size")
declare -a idle_ms idle_wall ten_ms ten_wall
cycle() { # $1: kind; prints and records
  local t0 t1 millis blocks
  t0=$(date +%s%N)
  "$lb" ship bench --once --json >"$dir/ship.json" 2>>"$dir/ship.log"
  t1=$(date +%s%N)
  millis=$($py -c 'import json,sys; print(json.load(open(sys.argv[1]))["millis"])' "$dir/ship.json")
  blocks=$($py -c 'import json,sys; print(json.load(open(sys.argv[1]))["blocks_read"])' "$dir/ship.json")
  printf '%-5s blocks %3d  cycle %4d ms  wall %4d ms\n' "$1" "$blocks" "$millis" $(((t1 - t0) / 1000000))
  if [ "$1" = idle ]; then
    [ "$blocks" -eq 0 ] || die "an idle cycle read $blocks blocks"
    idle_ms+=("$millis"); idle_wall+=($(((t1 - t0) / 1000000)))
  else
    [ "$blocks" -ge 9 ] && [ "$blocks" -le 11 ] || die "a 10-block cycle read $blocks blocks"
    ten_ms+=("$millis"); ten_wall+=($(((t1 - t0) / 1000000)))
  fi
}
for _ in $(seq "$cycles"); do cycle idle; done
for i in $(seq "$cycles"); do
  $py "$helper" change "nbd+unix:///bench?socket=$sock" "$size" "$pct" 1 $((seed * 1000 + i)) "$dir/change.json" \
    2>/dev/null >&2
  cycle ten
done

# The floor: a durable 4 KiB write in the vault's directory.
floor=$($py - "$dir/vault" <<'PY'
import os, statistics, sys, time
path = os.path.join(sys.argv[1], ".rpo-bench-floor")
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
t = []
for i in range(20):
    os.pwrite(fd, os.urandom(4096), 0)
    s = time.perf_counter()
    os.fdatasync(fd)
    t.append((time.perf_counter() - s) * 1000)
os.close(fd)
os.unlink(path)
print(f"{statistics.median(t):.2f}")
PY
)

$py - "$(median "${idle_ms[@]}")" "$(median "${idle_wall[@]}")" "$(median "${ten_ms[@]}")" \
  "$(median "${ten_wall[@]}")" "$floor" <<'PY'
import sys
idle, idle_wall, ten, ten_wall, floor = (float(x) for x in sys.argv[1:])
print(f"median cycle, nothing changed: {idle:.0f} ms ({idle_wall:.0f} ms with the process)")
print(f"median cycle, 10 blocks changed: {ten:.0f} ms ({ten_wall:.0f} ms with the process)")
print(f"cycles per second at idle: {1000 / idle:.1f} (cycle), {1000 / idle_wall:.1f} (with the process)")
print(f"floor: a durable 4 KiB write here (write + fdatasync), median of 20: {floor:.2f} ms")
print(f"idle cycle = {idle / floor:.0f} floors; 10-block cycle = {ten / floor:.0f} floors")
ok = ten_wall <= 500
print(f"target: a 10-block cycle, process included, <= 10% of a 5 s RPO (500 ms): {ten_wall:.0f} ms: {'PASS' if ok else 'MISS'}")
PY
