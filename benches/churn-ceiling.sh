#!/usr/bin/env bash
# The churn ceiling: how fast this machine absorbs sustained sequential writes
# through an NBD server at all, with nothing replicating: `lifeboat filter`
# against `qemu-nbd`, the same fio job as benches/churn-bench.sh (1 MiB
# sequential writes wrapping around a SIZE disk, iodepth 8, fresh random
# buffers, RATE MB/s asked) for DURATION seconds each, page cache dropped
# between them. A churn the filter alone cannot absorb cannot hold an RPO
# with replication on top of it; the qemu-nbd row says whether the limit is
# the filter's or the machine's. Also printed: the CPU seconds each server
# process used (user + system, from /proc/PID/stat), which is what the
# server leaves for the VMs and the shipper on the same host.
#
#   benches/churn-ceiling.sh                 # RATE=500 DURATION=120 SIZE=8G
#   RATE=800 DURATION=60 benches/churn-ceiling.sh
#
# Environment: RATE, DURATION, SIZE, BENCH_DIR (default /var/tmp/lifeboat-ceiling).
set -euo pipefail

if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
rate=${RATE:-500}
duration=${DURATION:-120}
size=${SIZE:-8G}
dir=${BENCH_DIR:-/var/tmp/lifeboat-ceiling}

say() { printf '[ceiling] %s\n' "$*" >&2; }
for t in fio qemu-nbd python3; do command -v "$t" >/dev/null || { say "$t is missing: run scripts/setup.sh"; exit 1; }; done
say "building lifeboat (release)"
cargo build --release -p cli >&2
lb=${CARGO_TARGET_DIR:-$repo/target}/release/lifeboat

server=
cleanup() {
  if [ -n "$server" ]; then kill -TERM "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT
rm -rf "$dir"
mkdir -p "$dir"
truncate -s "$size" "$dir/disk.img"
"$lb" --home "$dir/home" protect c --image "$dir/disk.img" >/dev/null

# CPU seconds (user + system) process $1 has used so far.
cpu_s() { awk -v t="$(getconf CLK_TCK)" '{printf "%.1f", ($14 + $15) / t}' "/proc/$1/stat"; }
wait_sock() { for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done; say "no socket $1"; exit 1; }
run_fio() {
  fio --name=churn --ioengine=nbd --uri="$1" --rw=write --bs=1m --iodepth=8 --rate="${rate}m" \
    --rate_process=linear --time_based --runtime="$duration" --refill_buffers \
    --output-format=json --output="$dir/fio.json" >/dev/null
  python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['jobs'][0]['write']['bw_bytes'] / 1e6))" "$dir/fio.json"
}

say "lifeboat filter, ${rate} MB/s asked for ${duration} s on a ${size} disk (load: $(cut -d' ' -f1-3 /proc/loadavg))"
"$lb" --home "$dir/home" filter c --listen "unix:$dir/f.sock" 2>"$dir/filter.log" &
server=$!
wait_sock "$dir/f.sock"
lifeboat=$(run_fio "nbd+unix:///c?socket=$dir/f.sock")
lifeboat_cpu=$(cpu_s "$server")
kill -TERM "$server"; wait "$server" || { cat "$dir/filter.log" >&2; say "the filter did not stop cleanly"; exit 1; }
server=
sync
echo 3 >/proc/sys/vm/drop_caches

say "qemu-nbd (-f raw -t, cache=writeback), same job"
qemu-nbd -f raw -t -k "$dir/q.sock" "$dir/disk.img" &
server=$!
wait_sock "$dir/q.sock"
qemu=$(run_fio "nbd+unix:///?socket=$dir/q.sock")
qemu_cpu=$(cpu_s "$server")

echo
echo "Sustained sequential 1 MiB writes, ${rate} MB/s asked, ${duration} s, ${size} disk, no replication"
printf '%-18s %-14s %s\n' "server" "MB/s written" "server CPU s"
printf '%-18s %-14s %s\n' "lifeboat filter" "$lifeboat" "$lifeboat_cpu"
printf '%-18s %-14s %s\n' "qemu-nbd" "$qemu" "$qemu_cpu"
python3 -c "import sys; print(f'ratio lifeboat / qemu-nbd: {int(sys.argv[1]) / max(1, int(sys.argv[2])):.2f} MB/s, {float(sys.argv[3]) / max(0.1, float(sys.argv[4])):.2f} CPU')" "$lifeboat" "$qemu" "$lifeboat_cpu" "$qemu_cpu"
