#!/usr/bin/env bash
# Side-by-side NBD benchmark: `lifeboat filter` against `qemu-nbd`, same image
# size, same clients, same machine, one run. Prints a table of
# metric | lifeboat | qemu-nbd | ratio (lifeboat / qemu-nbd; > 1 is better for
# every metric here).
#
#   benches/nbd-bench.sh
#
# Servers (each on a unix socket, each serving a fresh sparse 1 GiB raw image):
#   lifeboat   `lifeboat protect` (default 64 KiB blocks) + `lifeboat filter`
#              (release build); PROFILE=off protects with `--profile off`
#              (no churn profile recorded: what recording costs is the
#              difference between a run with and one without)
#   qemu-nbd   `qemu-nbd -f raw -t -k SOCK IMG`, its defaults otherwise:
#              cache=writeback (page cache, flushes on FLUSH), aio=threads,
#              one client at a time (no multi-conn), no discard
# Clients, in this order, against each server:
#   nbdcopy write   1 GiB of random data from a file into the export (no --flush)
#   nbdcopy read    the whole export to /dev/null
#   the same two with `nbdcopy -C 1` (one connection to each server: nbdcopy
#   opens several to a server that offers multi-conn, as the filter does)
#   fio randwrite   --ioengine=nbd, 4 KiB random writes, iodepth 32, time based
#   fio randread    --ioengine=nbd, 4 KiB random reads, iodepth 32, time based
# Each metric is the median over REPS repetitions; the server order alternates
# between repetitions so neither always runs on a warmer machine.
#
# Environment: PROFILE (on or off, default on), REPS (default 2), FIO_RUNTIME seconds (default 8), SIZE_MIB
# (default 1024), BENCH_DIR (default target/nbd-bench). About 2-3 minutes with
# the defaults. Other load on the machine skews the figures: run it alone.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
reps=${REPS:-2}
fio_runtime=${FIO_RUNTIME:-8}
size_mib=${SIZE_MIB:-1024}
dir=${BENCH_DIR:-$repo/target/nbd-bench}

say() { printf '[bench] %s\n' "$*" >&2; }
need() { command -v "$1" >/dev/null || { say "$1 is missing: run scripts/setup.sh"; exit 1; }; }
for t in nbdcopy nbdinfo fio qemu-nbd python3; do need "$t"; done

say "building lifeboat (release)"
cargo build --release -p cli >&2
lb=${CARGO_TARGET_DIR:-$repo/target}/release/lifeboat

rm -rf "$dir"
mkdir -p "$dir"
results=$dir/results.tsv
: >"$results"
server_pid=
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT

say "writing ${size_mib} MiB of random data"
head -c "$((size_mib * 1024 * 1024))" /dev/urandom >"$dir/data.bin"

now() { date +%s.%N; }

wait_socket() { # SOCK PID
  for _ in $(seq 300); do
    [ -S "$1" ] && nbdinfo --size "nbd+unix:///?socket=$1" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || { say "server exited early"; return 1; }
    sleep 0.1
  done
  say "server did not come up on $1"
  return 1
}

start_server() { # NAME -> sets server_pid, sock
  local name=$1 img=$dir/$1.img
  sock=$dir/$name.sock
  rm -f "$img" "$sock"
  truncate -s "${size_mib}M" "$img"
  case $name in
    lifeboat)
      rm -rf "$dir/home"
      "$lb" --home "$dir/home" protect bench --image "$img" --profile "${PROFILE:-on}" >/dev/null
      "$lb" --home "$dir/home" filter bench --listen "unix:$sock" 2>>"$dir/lifeboat.log" &
      ;;
    qemu-nbd)
      qemu-nbd -f raw -t -k "$sock" "$img" 2>>"$dir/qemu-nbd.log" &
      ;;
  esac
  server_pid=$!
  wait_socket "$sock" "$server_pid"
}

stop_server() {
  kill -TERM "$server_pid"
  wait "$server_pid" || true
  server_pid=
}

record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$results"; }

fio_iops() { # URI RW -> iops
  local out=$dir/fio.json
  fio --name="$2" --ioengine=nbd --uri="$1" --rw="$2" --bs=4k --iodepth=32 \
    --time_based --runtime="$fio_runtime" --ramp_time=1 --output-format=json --output="$out" >/dev/null
  python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]; print(j[sys.argv[2]]["iops"])' \
    "$out" "$([ "$2" = randwrite ] && echo write || echo read)"
}

run_one() { # SERVER
  local s=$1 uri t0 t1 bytes
  start_server "$s"
  uri="nbd+unix:///?socket=$sock"
  nbdinfo --json "$uri" >"$dir/$s.nbdinfo.json"
  bytes=$((size_mib * 1024 * 1024))

  t0=$(now); nbdcopy "$dir/data.bin" "$uri"; t1=$(now)
  record "$s" "nbdcopy write (MiB/s)" "$(python3 -c "print($bytes / 1048576 / ($t1 - $t0))")"
  t0=$(now); nbdcopy "$uri" null:; t1=$(now)
  record "$s" "nbdcopy read (MiB/s)" "$(python3 -c "print($bytes / 1048576 / ($t1 - $t0))")"
  # One connection each: the like-for-like comparison (qemu-nbd does not offer multi-conn).
  t0=$(now); nbdcopy -C 1 "$dir/data.bin" "$uri"; t1=$(now)
  record "$s" "nbdcopy -C 1 write (MiB/s)" "$(python3 -c "print($bytes / 1048576 / ($t1 - $t0))")"
  t0=$(now); nbdcopy -C 1 "$uri" null:; t1=$(now)
  record "$s" "nbdcopy -C 1 read (MiB/s)" "$(python3 -c "print($bytes / 1048576 / ($t1 - $t0))")"
  record "$s" "fio 4k randwrite QD32 (IOPS)" "$(fio_iops "$uri" randwrite)"
  record "$s" "fio 4k randread QD32 (IOPS)" "$(fio_iops "$uri" randread)"

  stop_server
  rm -f "$dir/$s.img"
  say "$s done"
}

for rep in $(seq "$reps"); do
  say "repetition $rep of $reps"
  if [ $((rep % 2)) -eq 1 ]; then order="lifeboat qemu-nbd"; else order="qemu-nbd lifeboat"; fi
  for s in $order; do run_one "$s"; done
done
rm -f "$dir/data.bin"

python3 - "$results" "$dir" "$reps" "$fio_runtime" "$size_mib" <<'PY'
import json, statistics, sys
path, d, reps, runtime, size = sys.argv[1:6]
rows = {}
for line in open(path):
    server, metric, value = line.rstrip("\n").split("\t")
    rows.setdefault(metric, {}).setdefault(server, []).append(float(value))
def caps(s):
    e = json.load(open(f"{d}/{s}.nbdinfo.json"))["exports"][0]
    return f"multi-conn {e.get('can_multi_conn')}, preferred block {e.get('block_size_preferred')}"
print(f"\nNBD side by side: {size} MiB image, unix socket, median of {reps} runs, fio {runtime} s per run")
print(f"  lifeboat: {caps('lifeboat')}; qemu-nbd: {caps('qemu-nbd')} (cache=writeback, aio=threads)\n")
w = max(len(m) for m in rows) + 2
print(f"{'metric':<{w}}{'lifeboat':>12}{'qemu-nbd':>12}{'ratio':>9}")
print("-" * (w + 33))
for metric, by in rows.items():
    a, b = statistics.median(by["lifeboat"]), statistics.median(by["qemu-nbd"])
    print(f"{metric:<{w}}{a:>12.0f}{b:>12.0f}{a / b:>9.2f}")
print(f"\nall samples: {path}")
PY
