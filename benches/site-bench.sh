#!/usr/bin/env bash
# The vault server against a local vault, side by side in one run (issue 14):
#
#   1. Pipeline: the full sync of one SIZE image (`lifeboat ship --once`, no
#      filter running) into a vault directory, and the same into a vault
#      server on loopback whose vault directory is on the same device
#      (lifeboat vault serve: HTTP/2 over TLS 1.3, mutual authentication).
#      Target: the server run at >= 90% of the local run's MB/s.
#   2. Restore: `lifeboat restore --point latest` from the server directly,
#      and through a delay line adding ONE_WAY_MS each way (a 2 x ONE_WAY_MS
#      round trip; vm-tests' delay_proxy, since this kernel has no netem).
#      Target: the delayed restore at >= 50% of the undelayed one.
#   3. Bandwidth limit: the full sync of a fresh BW_SECS-second image (at
#      BANDWIDTH) into the server with `ship --bandwidth BANDWIDTH`; the rate
#      (bytes shipped / wall time of the whole command) against the limit.
#      Target: within +-10% over at least 30 s.
#
# Page cache dropped before every timed run (`sync; echo 3 >
# /proc/sys/vm/drop_caches`), so each figure is cold; the local run is the
# floor the server run is measured against. Prints a table and the ratios,
# and the CPU seconds of both full syncs (host command, and server process):
# on loopback host and server share the machine's cores, so where the local
# run is CPU-bound the TLS and copying on both ends cap the ratio, and the
# bench prints that cap beside it.
#
#   benches/site-bench.sh                 # SIZE=1G ONE_WAY_MS=10
#   SIZE=4G benches/site-bench.sh
#
# Environment: SIZE (default 1G), ONE_WAY_MS (default 10), BANDWIDTH (default
# 100Mbit), BW_SECS (default 30), BENCH_DIR (default
# /var/tmp/lifeboat-site-bench), LIFEBOAT_BIN (default: build release).
# Needs root (drop_caches).
set -euo pipefail

if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 0
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
size=${SIZE:-1G}
one_way=${ONE_WAY_MS:-10}
bandwidth=${BANDWIDTH:-100Mbit}
bw_secs=${BW_SECS:-30}
dir=${BENCH_DIR:-/var/tmp/lifeboat-site-bench}

if [ -z "${LIFEBOAT_BIN:-}" ]; then
  cargo build --release -p cli -q
  LIFEBOAT_BIN=${CARGO_TARGET_DIR:-$repo/target}/release/lifeboat
fi
cargo build --release -p vm-tests --example delay_proxy -q
proxy_bin=${CARGO_TARGET_DIR:-$repo/target}/release/examples/delay_proxy

rm -rf "$dir"
mkdir -p "$dir"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

host() { "$LIFEBOAT_BIN" --home "$dir/host" "$@"; }
site() { "$LIFEBOAT_BIN" --home "$dir/site-home" "$@"; }
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
mbs() { python3 -c "import sys; b,t=float(sys.argv[1]),float(sys.argv[2]); print(f'{b/t/1e6:.0f}')" "$1" "$2"; }

bytes=$(numfmt --from=iec "$size")
echo "image: $size of incompressible random bytes in $dir (device: $(df --output=source "$dir" | tail -1))"
head -c "$bytes" /dev/urandom > "$dir/disk.img"
host key new --out "$dir/k.key" > /dev/null

# The site, on a free loopback port.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$dir/vaults/main"
site site init "$dir/site" --address "127.0.0.1:$port" > /dev/null
site site enroll bench --vault main --out "$dir/bench.enroll" --site "$dir/site" > /dev/null
"$LIFEBOAT_BIN" --home "$dir/site-home" vault serve --site "$dir/site" --listen "127.0.0.1:$port" main="$dir/vaults/main" 2> "$dir/serve.log" &
pids+=($!)
for _ in $(seq 200); do grep -q 'serving vaults' "$dir/serve.log" && break; sleep 0.05; done
host site join "$dir/bench.enroll" > /dev/null
url="lifeboat://127.0.0.1:$port/main"
host vault init "$url" --key "$dir/k.key" > /dev/null
host vault init "$dir/local-vault" --key "$dir/k.key" > /dev/null

# 1. Pipeline: the same image, protected twice under two names.
cp --reflink=auto "$dir/disk.img" "$dir/disk2.img"
host protect local --image "$dir/disk.img" --vault "$dir/local-vault" --key "$dir/k.key" > /dev/null
host protect remote --image "$dir/disk2.img" --vault "$url" --key "$dir/k.key" > /dev/null
# CPU seconds (user + system) of the host's command (bash's `time`) and of
# the server process (/proc/PID/stat, in clock ticks) for each run.
TIMEFORMAT='%U %S'
cpu_of() { tail -1 "$1" | awk '{print $1 + $2}'; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
cold; t0=$(now); { time host ship local --once > /dev/null 2>> "$dir/ship.log"; } 2> "$dir/local.cpu"; t1=$(now)
local_s=$(python3 -c "print($t1-$t0)")
local_cpu=$(cpu_of "$dir/local.cpu")
cold; s0=$(ticks "${pids[0]}"); t0=$(now); { time host ship remote --once > /dev/null 2>> "$dir/ship.log"; } 2> "$dir/remote.cpu"; t1=$(now)
s1=$(ticks "${pids[0]}")
remote_s=$(python3 -c "print($t1-$t0)")
remote_cpu=$(cpu_of "$dir/remote.cpu")
server_cpu=$(python3 -c "print(($s1-$s0)/$hz)")

# 2. Restore from the server, then through the delay line.
"$proxy_bin" "$port" "$one_way" > "$dir/proxy.port" &
pids+=($!)
for _ in $(seq 200); do [ -s "$dir/proxy.port" ] && break; sleep 0.05; done
proxy_port=$(cat "$dir/proxy.port")
cold; t0=$(now); host restore remote --point latest --out "$dir/r0.raw" > /dev/null; t1=$(now)
restore_s=$(python3 -c "print($t1-$t0)")
cmp "$dir/r0.raw" "$dir/disk2.img"
rm -f "$dir/r0.raw"
# The host reaches the site through the delay line with the same
# credentials (same CA, same server name 127.0.0.1).
cp -r "$dir/host/sites/127.0.0.1_$port" "$dir/host/sites/127.0.0.1_$proxy_port"
delayed_url="lifeboat://127.0.0.1:$proxy_port/main"
cold; t0=$(now); host restore remote --point latest --vault "$delayed_url" --key "$dir/k.key" --out "$dir/r1.raw" > /dev/null; t1=$(now)
delayed_s=$(python3 -c "print($t1-$t0)")
cmp "$dir/r1.raw" "$dir/disk2.img"
rm -f "$dir/r1.raw"

# 3. Bandwidth limit: BW_SECS worth of new data at the limit, into the server.
limit_bps=$(python3 -c "
import re,sys
m=re.fullmatch(r'(\d+(?:\.\d+)?)\s*([KMG]?)(bit|B)', sys.argv[1])
n=float(m.group(1))*{'':1,'K':1e3,'M':1e6,'G':1e9}[m.group(2)]
print(n/8 if m.group(3)=='bit' else n)" "$bandwidth")
bw_bytes=$(python3 -c "print(int($limit_bps*$bw_secs)//65536*65536)")
head -c "$bw_bytes" /dev/urandom > "$dir/bw.img"
host protect bw --image "$dir/bw.img" --vault "$url" --key "$dir/k.key" > /dev/null
cold; t0=$(now); host ship bw --once --json --bandwidth "$bandwidth" > "$dir/bw.json"; t1=$(now)
bw_s=$(python3 -c "print($t1-$t0)")
bw_shipped=$(python3 -c "import json; print(json.load(open('$dir/bw.json'))['bytes_shipped'])")

printf '\n%-44s %10s %10s\n' "run ($size, cold cache)" seconds MB/s
printf '%-44s %10.2f %10s\n' "full sync into a local vault (floor)" "$local_s" "$(mbs "$bytes" "$local_s")"
printf '%-44s %10.2f %10s\n' "full sync into the vault server (loopback)" "$remote_s" "$(mbs "$bytes" "$remote_s")"
printf '%-44s %10.2f %10s\n' "restore from the vault server" "$restore_s" "$(mbs "$bytes" "$restore_s")"
printf '%-44s %10.2f %10s\n' "restore through a $((2 * one_way)) ms round trip" "$delayed_s" "$(mbs "$bytes" "$delayed_s")"
printf '%-44s %10.2f %10s\n' "full sync at --bandwidth $bandwidth" "$bw_s" "$(mbs "$bw_shipped" "$bw_s")"
python3 - "$local_s" "$remote_s" "$restore_s" "$delayed_s" "$bw_shipped" "$bw_s" "$limit_bps" \
  "$local_cpu" "$remote_cpu" "$server_cpu" "$(nproc)" <<'EOF'
import sys
l, r, rs, d, bb, bs, lim, lc, rc, sc, cores = map(float, sys.argv[1:])
print(f"\nCPU seconds of the full syncs: local vault {lc:.2f} (ship); vault server {rc:.2f} (ship) + {sc:.2f} (serve)")
print(f"  so on these {cores:.0f} cores, sharing them, the server run takes at least {(rc + sc) / cores:.2f} s:")
print(f"  the CPU allows server / local at most {min(1.0, l / ((rc + sc) / cores)):.2f}")
print(f"\nserver pipeline / local pipeline: {l / r:.2f}  (target >= 0.90)")
print(f"restore with delay / without:     {rs / d:.2f}  (target >= 0.50)")
print(f"rate / bandwidth limit:           {bb / bs / lim:.2f}  over {bs:.0f} s (target 0.90 to 1.10)")
EOF
