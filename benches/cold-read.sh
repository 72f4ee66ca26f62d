#!/usr/bin/env bash
# A scattered incremental's reads with the image cold and warm, beside what
# the device does for the same reads (issue 17, point 0: "keep >= 32 reads
# in flight whatever the page cache holds"; target: the cold cycle's extra
# time at most 1.5x the device's own time for those reads).
#
#   benches/cold-read.sh                      # SIZE=2G, 1% of the 64 KiB blocks, 4 rounds: ~1 minute
#   SIZE=4G CHANGE_PCT=0.5 ROUNDS=6 benches/cold-read.sh
#   benches/cold-read.sh --help
#
# One image (benches/replicate-bench/bench.py gen-image: 25% zero extents,
# the rest incompressible), protected with --block-size 64KiB into a vault
# directory beside it, fully synced once. Then ROUNDS rounds, alternating
# cold and warm: CHANGE_PCT% of the blocks, scattered, are overwritten
# through `lifeboat filter` (bench.py change, libnbd), the filter stops,
# `sync`, and for a cold round the image's pages are evicted from the page
# cache (posix_fadvise DONTNEED on the image alone: the binary, the home
# and the vault stay as warm as in the warm round, so the difference is the
# image's reads). Timed: `lifeboat ship NAME --once --json`, its "millis"
# (the cycle) and wall time.
#
# The floor: fio reading the same number of 64 KiB blocks at scattered
# offsets of the same image (a replayed iolog, seeded), O_DIRECT, io_uring,
# QD32, the image evicted first; three runs, the median shown.
#
# Printed: each round; the medians; cold - warm (the time the cycle waits
# for the device) and its ratio to the floor. Target <= 1.50.
#
# Environment: SIZE (default 2G), CHANGE_PCT (1), ROUNDS (4, even), SEED
# (1), BENCH_DIR (default /var/tmp/lifeboat-cold-read, removed at the end
# unless KEEP=1), LIFEBOAT_BIN (default: cargo build --release -p cli).
# Needs root (nothing else evicts another process's page cache reliably),
# fio and python3-libnbd (scripts/setup.sh).
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
pct=${CHANGE_PCT:-1}
rounds=${ROUNDS:-4}
seed=${SEED:-1}
dir=${BENCH_DIR:-/var/tmp/lifeboat-cold-read}

say() { printf '[cold-read] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root"
command -v fio >/dev/null || die "fio is missing: run scripts/setup.sh"
$py -c 'import nbd' 2>/dev/null || die "python3-libnbd is missing: run scripts/setup.sh"
[[ $rounds =~ ^[1-9][0-9]*$ ]] && [ $((rounds % 2)) -eq 0 ] || die "ROUNDS must be a positive even number"
[ $((size % (4 << 20))) -eq 0 ] && [ "$size" -gt 0 ] || die "SIZE must be a positive multiple of 4 MiB"
img=$dir/image.img
source "$repo/benches/lib.sh"
bench_workdir .cold-read
bench_lifeboat
export LIFEBOAT_HOME=$dir/home
filter_pid=
trap bench_cleanup EXIT

evict() { $py -c 'import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$img"; }

say "image: $(numfmt --to=iec "$size"), seed $seed"
$py "$helper" gen-image "$img" "$size" "$seed" >&2
bench_protect

declare -a cold_ms warm_ms
for round in $(seq "$rounds"); do
  sock=$dir/filter.sock
  bench_filter "$sock"
  $py "$helper" change "nbd+unix:///bench?socket=$sock" "$size" "$pct" 1 $((seed * 100 + round)) "$dir/change.json" 2>/dev/null >&2
  kill -TERM "$filter_pid" && wait "$filter_pid" || true
  filter_pid=
  sync
  if [ $((round % 2)) -eq 1 ]; then mode=cold; evict; else mode=warm; fi
  t0=$(date +%s%N)
  "$lb" ship bench --once --json >"$dir/ship.json"
  t1=$(date +%s%N)
  millis=$($py -c 'import json,sys; print(json.load(open(sys.argv[1]))["millis"])' "$dir/ship.json")
  blocks=$($py -c 'import json,sys; print(json.load(open(sys.argv[1]))["blocks_read"])' "$dir/ship.json")
  printf 'round %d  %-4s  blocks %5d  cycle %4d ms  wall %4d ms\n' "$round" "$mode" "$blocks" "$millis" $(((t1 - t0) / 1000000))
  if [ "$mode" = cold ]; then cold_ms+=("$millis"); else warm_ms+=("$millis"); fi
done

# The floor: the same count of 64 KiB reads, scattered, straight from the device.
$py - "$img" "$size" "$pct" "$seed" >"$dir/iolog" <<'PY'
import random, sys
img, size, pct, seed = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
n = size // 65536
random.seed(seed)
blocks = sorted(random.sample(range(n), max(1, round(n * pct / 100))))
print("fio version 2 iolog"); print(f"{img} add"); print(f"{img} open")
for b in blocks:
    print(f"{img} read {b * 65536} 65536")
print(f"{img} close")
PY
declare -a floor_ms
for _ in 1 2 3; do
  evict
  fio --name=floor --read_iolog="$dir/iolog" --ioengine=io_uring --iodepth=32 --direct=1 \
    --filename="$img" --output-format=json >"$dir/fio.json" 2>/dev/null || die "fio failed"
  floor_ms+=("$($py -c 'import json,sys; print(json.load(open(sys.argv[1]))["jobs"][0]["read"]["runtime"])' "$dir/fio.json")")
done

cold=$(median "${cold_ms[@]}")
warm=$(median "${warm_ms[@]}")
floor=$(median "${floor_ms[@]}")
$py - "$cold" "$warm" "$floor" <<'PY'
import sys
cold, warm, floor = (float(x) for x in sys.argv[1:])
extra = cold - warm
ratio = extra / floor if floor > 0 else float("inf")
print(f"median cycle: cold {cold:.0f} ms, warm {warm:.0f} ms; waiting for the device (cold - warm) {extra:.0f} ms")
print(f"floor: fio, same count of scattered 64 KiB reads, QD32, O_DIRECT: {floor:.0f} ms")
print(f"(cold - warm) / floor = {ratio:.2f}   target <= 1.50: {'PASS' if ratio <= 1.5 else 'MISS'}")
PY
