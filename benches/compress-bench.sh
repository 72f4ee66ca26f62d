#!/usr/bin/env bash
# Compression on realistic disks (issue 17, point 2): bytes shipped against
# the bytes that changed, with compression on and off side by side.
#
#   benches/compress-bench.sh            # ~5 minutes (plus ~3 the first time: debootstrap)
#   SCALE=50 TX=50000 benches/compress-bench.sh
#   benches/compress-bench.sh --help
#
# Two disks, as a small VM has them, each written through `lifeboat filter`
# (libnbd, 64 KiB writes, only the blocks that differ from what the disk
# held) and shipped with `lifeboat ship --once --json`:
#
# - os: a Debian 12 system in a 4 GiB ext4 file system, made by
#   `debootstrap --variant=minbase` with the cloud kernel, systemd, openssh,
#   cloud-init, apt's package lists and a few common tools (what a cloud image
#   holds; python3-cffi-backend named because debootstrap does not resolve
#   the virtual package cloud-init needs through it),
#   then `mkfs.ext4 -d`. The root file system is built once and kept in
#   .cache/compress-rootfs (LIFEBOAT_CACHE). One full cycle.
# - db: a 2 GiB ext4 data disk holding a SQLite database in pgbench's shape
#   (SCALE x 100,000 accounts, 84-byte filler as PostgreSQL pads it, tellers,
#   branches), then TX transactions of pgbench's TPC-B-like script (three
#   updates, a select and a history insert each). A full cycle of the loaded
#   database, then an incremental of the blocks the transactions changed
#   (the disk rebuilt with `mkfs.ext4 -d` and compared block by block).
#
# Each disk is protected twice, into two vaults: once with compression (the
# default) and once with `--no-compress`, the peer. "changed" counts the
# non-zero 64 KiB blocks written (zero blocks are never shipped, with or
# without compression); "shipped" is the cycle's `bytes_shipped` (packs,
# map pages and root: everything the vault received). Target: shipped with
# compression <= 0.6 x changed, over both disks.
#
# Environment: SCALE (default 20), TX (default 20000), BENCH_DIR (default
# /var/tmp/lifeboat-compress-bench, removed at the end unless KEEP=1),
# LIFEBOAT_BIN (default: cargo build --release -p cli), LIFEBOAT_CACHE.
# Needs debootstrap, e2fsprogs and python3-libnbd (scripts/setup.sh), and
# root (debootstrap), and the network to the Debian mirror the first time.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
case ${1:-} in
  -h | --help) usage; exit 0 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${LIFEBOAT_CACHE:-$repo/.cache}
py=/usr/bin/python3 # Debian's interpreter: it has the nbd module
scale=${SCALE:-20}
tx=${TX:-20000}
dir=${BENCH_DIR:-/var/tmp/lifeboat-compress-bench}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

say() { printf '[compress-bench] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
[[ $scale =~ ^[1-9][0-9]*$ ]] || die "SCALE must be a positive number"
[[ $tx =~ ^[0-9]+$ ]] || die "TX must be a number"
for t in debootstrap mkfs.ext4; do command -v "$t" >/dev/null || die "$t is missing: run scripts/setup.sh"; done
$py -c 'import nbd' 2>/dev/null || die "python3-libnbd is missing: run scripts/setup.sh"
[ "$(id -u)" -eq 0 ] || die "debootstrap needs root"
img=$dir/unused.img # lib.sh's name; each disk has its own image here
source "$repo/benches/lib.sh"
bench_workdir .compress-bench
bench_lifeboat
filter_pid=
trap bench_cleanup EXIT

# The OS: built once, kept.
rootfs=$cache/compress-rootfs
if [ ! -e "$rootfs/.complete" ]; then
  say "debootstrap of Debian 12 into $rootfs (once; a few minutes)"
  rm -rf "$rootfs"
  mkdir -p "$rootfs"
  debootstrap --variant=minbase \
    --include=linux-image-cloud-amd64,systemd-sysv,openssh-server,apt-utils,ca-certificates,curl,less,nano,iproute2,ifupdown,cloud-init,python3-cffi-backend,unattended-upgrades \
    bookworm "$rootfs" "$mirror" >"$dir/debootstrap.log" 2>&1 ||
    die "debootstrap failed: $(tail -3 "$dir/debootstrap.log")"
  # apt's package lists, as a cloud image ships them.
  chroot "$rootfs" apt-get update -qq >>"$dir/debootstrap.log" 2>&1 || die "apt-get update in the root failed"
  touch "$rootfs/.complete"
fi
say "os: $(du -sh --exclude=proc --exclude=sys "$rootfs" | cut -f1) of files"
mkfs.ext4 -q -F -E lazy_itable_init=0,nodiscard -L root -d "$rootfs" "$dir/os.img" 4G

# The database: pgbench's schema and its TPC-B-like transactions, in SQLite.
mkdir -p "$dir/db"
say "db: loading scale $scale"
$py - "$dir/db/bench.sqlite" "$scale" load <<'PY'
import random, sqlite3, sys
path, scale = sys.argv[1], int(sys.argv[2])
db = sqlite3.connect(path)
db.executescript("""
create table pgbench_branches (bid integer primary key, bbalance integer, filler char(88));
create table pgbench_tellers (tid integer primary key, bid integer, tbalance integer, filler char(84));
create table pgbench_accounts (aid integer primary key, bid integer, abalance integer, filler char(84));
create table pgbench_history (tid integer, bid integer, aid integer, delta integer, mtime timestamp, filler char(22));
""")
pad = lambda n: " " * n  # PostgreSQL pads char(n) with spaces
db.executemany("insert into pgbench_branches values (?, 0, ?)", ((b, pad(88)) for b in range(1, scale + 1)))
db.executemany("insert into pgbench_tellers values (?, ?, 0, ?)", ((t, (t - 1) // 10 + 1, pad(84)) for t in range(1, 10 * scale + 1)))
db.executemany("insert into pgbench_accounts values (?, ?, 0, ?)",
               ((a, (a - 1) // 100000 + 1, pad(84)) for a in range(1, 100000 * scale + 1)))
db.commit()
PY
mkfs.ext4 -q -F -E lazy_itable_init=0,nodiscard -L data -d "$dir/db" "$dir/db1.img" 2G
say "db: $tx transactions"
$py - "$dir/db/bench.sqlite" "$scale" "$tx" <<'PY'
import random, sqlite3, sys, time
path, scale, tx = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(1)
db = sqlite3.connect(path)
for _ in range(tx):
    aid, tid, bid = rng.randint(1, 100000 * scale), rng.randint(1, 10 * scale), rng.randint(1, scale)
    delta = rng.randint(-5000, 5000)
    db.execute("update pgbench_accounts set abalance = abalance + ? where aid = ?", (delta, aid))
    db.execute("select abalance from pgbench_accounts where aid = ?", (aid,)).fetchone()
    db.execute("update pgbench_tellers set tbalance = tbalance + ? where tid = ?", (delta, tid))
    db.execute("update pgbench_branches set bbalance = bbalance + ? where bid = ?", (delta, bid))
    db.execute("insert into pgbench_history (tid, bid, aid, delta, mtime) values (?, ?, ?, ?, ?)",
               (tid, bid, aid, delta, time.strftime("%Y-%m-%d %H:%M:%S")))
    db.commit()
PY
mkfs.ext4 -q -F -E lazy_itable_init=0,nodiscard -L data -d "$dir/db" "$dir/db2.img" 2G

# write_diff SOCK NEW [OLD]: writes through the filter on SOCK every 64 KiB
# block of NEW that differs from OLD (from zeros without OLD); prints the
# count of non-zero blocks written.
write_diff() {
  $py - "$@" <<'PY'
import sys, nbd
sock, new, old = sys.argv[1], sys.argv[2], (sys.argv[3] if len(sys.argv) > 3 else None)
BS = 64 << 10
zero = bytes(BS)
h = nbd.NBD()
h.connect_unix(sock)
nonzero = 0
with open(new, "rb") as n, (open(old, "rb") if old else open("/dev/zero", "rb")) as o:
    off = 0
    while True:
        a = n.read(BS)
        if not a:
            break
        b = o.read(BS)
        if a != b:
            h.pwrite(a, off)
            nonzero += a != zero
        off += BS
h.flush()
h.shutdown()
print(nonzero)
PY
}

# field JSON KEY
field() { $py -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

declare -A changed shipped
for mode in on off; do
  export LIFEBOAT_HOME=$dir/home-$mode
  flag=()
  [ "$mode" = off ] && flag=(--no-compress)
  "$lb" key new --out "$dir/k-$mode.key" >/dev/null
  "$lb" vault init "$dir/vault-$mode" --key "$dir/k-$mode.key" >/dev/null
  for disk in os db; do
    size=4G
    [ "$disk" = db ] && size=2G
    truncate -s "$size" "$dir/$disk-$mode.img"
    "$lb" protect "$disk" --image "$dir/$disk-$mode.img" --vault "$dir/vault-$mode" --key "$dir/k-$mode.key" \
      --block-size 64KiB "${flag[@]}" >/dev/null
    "$lb" ship "$disk" --once --json >/dev/null 2>"$dir/ship.log" || die "the first (empty) sync failed: $(tail -3 "$dir/ship.log")"
    sock=$dir/$disk-$mode.sock
    rm -f "$sock"
    "$lb" filter "$disk" --listen "unix:$sock" 2>"$dir/filter.log" &
    filter_pid=$!
    for _ in $(seq 300); do grep -q "listening on" "$dir/filter.log" && break; sleep 0.1; done
    grep -q "listening on" "$dir/filter.log" || die "the filter did not start: $(tail -3 "$dir/filter.log")"
    steps=("$dir/os.img")
    [ "$disk" = db ] && steps=("$dir/db1.img" "$dir/db2.img")
    prev=()
    for step in "${steps[@]}"; do
      name="$disk $( [ ${#prev[@]} -eq 0 ] && echo full || echo incremental)"
      n=$(write_diff "$sock" "$step" "${prev[@]}")
      out=$("$lb" ship "$disk" --once --json 2>"$dir/ship.log") || die "ship $disk failed: $(tail -3 "$dir/ship.log")"
      changed[$name]=$((n * 65536))
      shipped[$name,$mode]=$(field "$out" bytes_shipped)
      say "$name, compression $mode: $n non-zero blocks changed, $(field "$out" compressed_blocks) compressed, ${shipped[$name,$mode]} bytes shipped"
      prev=("$step")
    done
    kill "$filter_pid" && wait "$filter_pid" || true
    filter_pid=
  done
done

echo
echo "Compression on realistic disks: bytes shipped against bytes changed (non-zero 64 KiB blocks written through the filter)"
printf '%-18s %12s %16s %16s %10s %10s\n' cycle "changed MB" "shipped MB (on)" "shipped MB (off)" "on/changed" "on/off"
tc=0 ton=0 toff=0
for name in "os full" "db full" "db incremental"; do
  c=${changed[$name]} on=${shipped[$name,on]} off=${shipped[$name,off]}
  tc=$((tc + c)) ton=$((ton + on)) toff=$((toff + off))
  awk -v n="$name" -v c="$c" -v on="$on" -v off="$off" \
    'BEGIN { printf "%-18s %12.1f %16.1f %16.1f %10.2f %10.2f\n", n, c/1e6, on/1e6, off/1e6, on/c, on/off }'
done
awk -v c="$tc" -v on="$ton" -v off="$toff" \
  'BEGIN { r = on/c; printf "%-18s %12.1f %16.1f %16.1f %10.2f %10.2f\n", "all", c/1e6, on/1e6, off/1e6, r, on/off;
           printf "target: shipped with compression <= 0.60 x changed: %.2f %s\n", r, (r <= 0.60 ? "PASS" : "MISS") }'
