#!/usr/bin/env bash
# Side-by-side replication benchmark: Lifeboat (`lifeboat ship --once`) against
# restic, borg and rsync on the same raw image, same machine, one run. Prints
# two tables (initial sync, incremental cycle): seconds, MB/s, repository size
# or growth, growth / bytes changed, and each peer's time over Lifeboat's.
#
#   benches/replicate-bench.sh            4 GiB image, 1% of 64 KiB blocks changed
#   SIZE=1G CHANGE_PCT=0.5 REPS=3 benches/replicate-bench.sh
#   benches/replicate-bench.sh --help
#
# The image (SIZE bytes, a multiple of 4 MiB): 4 MiB extents, a seeded 25%
# of them zero (written out, no holes), the rest incompressible pseudo-random
# bytes, every 64 KiB block distinct (benches/replicate-bench/bench.py).
#
# Initial sync, timed per peer (page cache dropped before each: `sync; echo 3 >
# /proc/sys/vm/drop_caches`):
#   lifeboat  lifeboat ship bench --once --json   (after key new, vault init,
#             protect --block-size 64KiB; no filter running: reads the image
#             directly under the disk's lock; encrypts: XChaCha20-Poly1305)
#   restic    restic -r REPO backup IMG           (RESTIC_PASSWORD; AES-256 +
#             Poly1305; repository v2 with its default compression)
#   borg      borg create REPO::init IMG          (init --encryption=repokey-blake2,
#             BORG_PASSPHRASE; default lz4 compression)
#   rsync     rsync --inplace --no-whole-file -t IMG COPY   (a second copy on
#             the same filesystem; no encryption, no history: informational)
# Incremental cycle (REPS times, each with a fresh seeded set of blocks):
#   `lifeboat filter` serves the image on a unix socket; CHANGE_PCT% of the
#   64 KiB blocks are overwritten with random bytes through it (libnbd Python);
#   the filter is stopped with SIGTERM; `lifeboat dirty` must list exactly those
#   blocks. Then each peer brings its copy up to date (same commands; restic and
#   borg find the parent by path and re-read the whole file, rsync compares the
#   whole of both files), timed, with `du -sb` of its repository before and
#   after. Afterwards every copy is checked against the image with cmp:
#   `restic restore latest`, `borg extract`, the rsync copy itself, and
#   `lifeboat restore --point latest`.
# Peers run in a rotating order across repetitions. `uptime` is logged at the
# start and end of every timed run and the 1-minute load shown in the tables.
#
# Environment:
#   SIZE        image size, e.g. 4G, 512M (default 4G; numfmt --from=iec)
#   CHANGE_PCT  percent of the 64 KiB blocks changed per incremental (default 1)
#   REPS        repetitions of the initial sync and of the incremental (default 1);
#               medians reported. Each initial repetition starts from empty repositories.
#   SEED        RNG seed for the image and the changes (default 1)
#   BENCH_DIR   work directory (default /var/tmp/lifeboat-bench: disk-backed);
#               needs about 5.5 x SIZE free (~23 GiB for 4G)
#   LIFEBOAT_BIN  use this lifeboat binary instead of building (the default
#               builds: cargo build --release -p cli); it is copied into BENCH_DIR
#   KEEP=1      keep the image, repositories and vault (otherwise removed at the
#               end; the report, results.jsonl and logs in BENCH_DIR are kept)
# Needs root (drop_caches) and scripts/setup.sh's packages (restic, borgbackup,
# rsync, python3-libnbd). Builds lifeboat (cargo build --release -p cli).
# About 10 minutes per repetition at 4 GiB on 2 cores.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
case ${1:-} in
  -h | --help) usage; exit 0 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
helper=$repo/benches/replicate-bench/bench.py
py=/usr/bin/python3 # Debian's interpreter: it has the nbd module
size_arg=${SIZE:-4G}
change_pct=${CHANGE_PCT:-1}
reps=${REPS:-1}
seed=${SEED:-1}
dir=${BENCH_DIR:-/var/tmp/lifeboat-bench}
keep=${KEEP:-0}
peers=(lifeboat restic borg rsync)

say() { printf '[bench] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
need() { command -v "$1" >/dev/null || die "$1 is missing: run scripts/setup.sh"; }
for t in restic borg rsync cmp numfmt uptime cargo; do need "$t"; done
$py -c 'import nbd' 2>/dev/null || die "python3-libnbd is missing: run scripts/setup.sh"
[ "$(id -u)" -eq 0 ] || die "run as root: every timed run starts with echo 3 > /proc/sys/vm/drop_caches"
size=$(numfmt --from=iec "$size_arg") || die "SIZE=$size_arg: not a size (e.g. 4G, 512M)"
[ $((size % (4 << 20))) -eq 0 ] && [ "$size" -gt 0 ] || die "SIZE must be a positive multiple of 4 MiB (got $size_arg)"
[[ $reps =~ ^[1-9][0-9]*$ ]] || die "REPS must be a positive integer"
$py -c "import sys; p=float(sys.argv[1]); sys.exit(not 0 < p <= 100)" "$change_pct" 2>/dev/null ||
  die "CHANGE_PCT must be a number in (0, 100]"

# The work directory: ours (marker) or new/empty; never someone else's.
if [ -e "$dir" ] && [ ! -e "$dir/.replicate-bench" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
  die "$dir exists, is not empty and was not made by this script: set BENCH_DIR to another folder"
fi
mkdir -p "$dir"
touch "$dir/.replicate-bench"
big=(lifeboat image.img rsync-copy.img restic-repo borg-repo borg-base restic-cache lb-home lb-vault lb.key verify)
for b in "${big[@]}"; do rm -rf "${dir:?}/$b"; done
rm -rf "$dir/logs" "$dir/results.jsonl" "$dir/report.txt"
need_bytes=$((size * 11 / 2 + (1 << 30)))
avail=$(df --output=avail -B1 "$dir" | tail -1 | tr -d ' ')
if [ "$avail" -lt "$need_bytes" ]; then
  die "$dir has $(numfmt --to=iec "$avail") free; SIZE=$size_arg needs about $(numfmt --to=iec "$need_bytes") (image, rsync copy, three repositories, one restored image). Free space or set BENCH_DIR/SIZE"
fi

img=$dir/image.img
copy=$dir/rsync-copy.img
results=$dir/results.jsonl
logs=$dir/logs
sock=$dir/filter.sock
mkdir -p "$logs"
export RESTIC_REPOSITORY=$dir/restic-repo RESTIC_PASSWORD=bench-restic-password RESTIC_CACHE_DIR=$dir/restic-cache
export BORG_REPO=$dir/borg-repo BORG_PASSPHRASE=bench-borg-passphrase BORG_BASE_DIR=$dir/borg-base
export BORG_DISPLAY_PASSPHRASE=no BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
export LIFEBOAT_HOME=$dir/lb-home
key=$dir/lb.key
vault=$dir/lb-vault

filter_pid=
stop_filter() {
  if [ -n "$filter_pid" ] && kill -0 "$filter_pid" 2>/dev/null; then
    kill -TERM "$filter_pid" 2>/dev/null || true
    wait "$filter_pid" 2>/dev/null || true
  fi
  filter_pid=
}
cleanup() {
  local rc=$?
  stop_filter
  if [ "$keep" != 1 ]; then
    for b in "${big[@]}"; do rm -rf "${dir:?}/$b"; done
    rm -f "$sock"
    say "removed the image, copies and repositories (KEEP=1 keeps them); report and logs stay in $dir"
  else
    say "kept everything in $dir"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "start: $(uptime)"
if [ -n "${LIFEBOAT_BIN:-}" ]; then
  say "using LIFEBOAT_BIN=$LIFEBOAT_BIN (not building)"
  built=$LIFEBOAT_BIN
else
  say "building lifeboat (release)"
  cargo build --release -p cli >&2 || die "cargo build --release -p cli failed (the working tree may be mid-edit: retry, or set LIFEBOAT_BIN)"
  built=${CARGO_TARGET_DIR:-$repo/target}/release/lifeboat
fi
[ -x "$built" ] || die "no binary at $built"
# A private copy: another build in the same tree must not swap the binary mid-run.
lb=$dir/lifeboat
cp "$built" "$lb"
say "versions: $("$lb" --version 2>/dev/null || echo lifeboat), $(restic version | cut -d' ' -f1-2), $(borg --version), $(rsync --version | head -1 | cut -d' ' -f1-4)"

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
bytes() { du -sb "$1" 2>/dev/null | cut -f1; }
fact() { $py "$helper" fact "$results" "$@"; } # PHASE REP PEER k=v...
$py "$helper" meta "$results" "$size" "$change_pct" "$reps" "$(IFS=,; echo "${peers[*]}")"

say "generating the ${size_arg} image (seed $seed): $img"
$py "$helper" gen-image "$img" "$size" "$seed" >&2

repo_of() {
  case $1 in
    lifeboat) echo "$vault" ;;
    restic) echo "$RESTIC_REPOSITORY" ;;
    borg) echo "$BORG_REPO" ;;
    rsync) echo "$copy" ;;
  esac
}

# Untimed per-peer setup before the initial sync: empty repositories.
prepare() {
  case $1 in
    lifeboat)
      rm -rf "$LIFEBOAT_HOME" "$vault" "$key"
      "$lb" key new --out "$key" >/dev/null
      "$lb" vault init "$vault" --key "$key" >/dev/null
      "$lb" protect bench --image "$img" --vault "$vault" --key "$key" --block-size 64KiB >/dev/null
      ;;
    restic)
      rm -rf "$RESTIC_REPOSITORY" "$RESTIC_CACHE_DIR"
      restic init >/dev/null
      ;;
    borg)
      rm -rf "$BORG_REPO" "$BORG_BASE_DIR"
      borg init --encryption=repokey-blake2 >/dev/null 2>&1
      ;;
    rsync) rm -f "$copy" ;;
  esac
}

# The timed command of each peer (same for the initial sync and the incremental).
cmd_of() { # PEER PHASE REP
  case $1 in
    lifeboat) echo "$lb" ship bench --once --json ;;
    restic) echo restic backup --host bench "$img" ;;
    borg) echo borg create --stats "::$2-$3" "$img" ;;
    rsync) echo rsync --inplace --no-whole-file -t "$img" "$copy" ;;
  esac
}

timed() { # PHASE REP PEER -> runs the peer's command, records it
  local phase=$1 rep=$2 peer=$3 before after log rc=0
  local -a cmd
  read -r -a cmd <<<"$(cmd_of "$peer" "$phase" "$rep")"
  log=$logs/$phase-$rep-$peer
  before=$(bytes "$(repo_of "$peer")" || echo 0)
  drop_caches
  $py "$helper" run "$results" "$phase" "$rep" "$peer" "$log" -- "${cmd[@]}" || rc=$?
  if [ "$rc" -ne 0 ]; then
    # borg exits 1 for warnings only; anything else is a failed run.
    if [ "$peer" = borg ] && [ "$rc" -eq 1 ]; then say "borg warned (rc 1): $(tail -3 "$log.err")"
    else cat "$log.err" >&2; die "$peer failed in the $phase (rc $rc): ${cmd[*]}"; fi
  fi
  after=$(bytes "$(repo_of "$peer")")
  fact "$phase" "$rep" "$peer" "repo_before=${before:-0}" "repo_after=$after" "growth=$((after - ${before:-0}))"
  if [ "$peer" = lifeboat ]; then fact "$phase" "$rep" "$peer" "ship=$(tail -1 "$log.out")"; fi
}

rotate() { # REP -> the peers, rotated by REP-1
  local r=$((($1 - 1) % ${#peers[@]}))
  echo "${peers[@]:$r}" "${peers[@]:0:$r}"
}

# ---- initial sync ----
for rep in $(seq "$reps"); do
  order=$(rotate "$rep")
  say "initial sync, repetition $rep of $reps (order: $order)"
  for p in $order; do prepare "$p"; done
  for p in $order; do timed initial "$rep" "$p"; done
done

# ---- incremental cycles ----
start_filter() {
  rm -f "$sock"
  "$lb" filter bench --listen "unix:$sock" 2>"$logs/filter.log" &
  filter_pid=$!
  for _ in $(seq 300); do
    grep -q "listening on" "$logs/filter.log" 2>/dev/null && return 0
    kill -0 "$filter_pid" 2>/dev/null || { cat "$logs/filter.log" >&2; die "lifeboat filter exited"; }
    sleep 0.1
  done
  die "lifeboat filter did not start within 30 s"
}

verify() { # REP PEER -> cmp of the peer's copy against the image; records verified=
  local rep=$1 peer=$2 out=$dir/verify ok=false
  rm -rf "$out"; mkdir -p "$out"
  case $peer in
    lifeboat) "$lb" restore bench --point latest --out "$out/restored.img" >/dev/null 2>"$logs/verify-$rep-$peer.err"
              f=$out/restored.img ;;
    restic) restic restore latest --target "$out" >"$logs/verify-$rep-$peer.out" 2>&1
            f=$out/$img ;;
    borg) (cd "$out" && borg extract "::incremental-$rep") >"$logs/verify-$rep-$peer.out" 2>&1
          f=$out/${img#/} ;;
    rsync) f=$copy ;;
  esac
  if cmp "$f" "$img"; then ok=true; say "  verified $peer: identical to the changed image"
  else say "  $peer: its copy DIFFERS from the changed image"; fi
  rm -rf "$out"
  fact incremental "$rep" "$peer" "verified=$ok"
  [ "$ok" = true ]
}

failed=0
for rep in $(seq "$reps"); do
  order=$(rotate "$rep")
  say "incremental, repetition $rep of $reps: changing ${change_pct}% of the 64 KiB blocks through lifeboat filter"
  start_filter
  $py "$helper" change "nbd+unix:///bench?socket=$sock" "$size" "$change_pct" "$seed" "$rep" "$logs/changes-$rep.json" >&2
  stop_filter
  "$lb" dirty bench --json >"$logs/dirty-$rep.json"
  dirty=$($py -c '
import json, sys
d, c = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
if d["dirty_blocks"] != c["blocks"]:
    sys.exit("lifeboat dirty lists %d blocks, %d were written" % (d["dirty_count"], len(c["blocks"])))
print(d["dirty_count"])' "$logs/dirty-$rep.json" "$logs/changes-$rep.json") || die "the dirty bitmap does not match the writes"
  changed=$($py -c 'import json,sys; print(json.load(open(sys.argv[1]))["changed_bytes"])' "$logs/changes-$rep.json")
  say "  lifeboat dirty: $dirty blocks, as written ($changed bytes)"
  say "incremental, repetition $rep (order: $order)"
  for p in $order; do
    timed incremental "$rep" "$p"
    fact incremental "$rep" "$p" "changed_bytes=$changed" "dirty_count=$dirty"
  done
  for p in "${peers[@]}"; do verify "$rep" "$p" || failed=1; done
done

say "end: $(uptime)"
$py "$helper" report "$results" | tee "$dir/report.txt"
printf '\nuptime at the end: %s\nall samples: %s (per-run uptime lines in the stderr log above)\n' "$(uptime)" "$results" | tee -a "$dir/report.txt"
[ "$failed" -eq 0 ] || die "a peer's copy did not match the image (see above)"
