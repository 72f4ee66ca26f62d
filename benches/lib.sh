# Shared by the bench scripts that protect one image and replicate it into a
# local vault (cold-read.sh, rpo-bench.sh). Source it after defining
# `say`/`die` and setting `repo`, `dir` and `img`.

# bench_workdir MARKER: makes $dir the script's work directory, refusing a
# non-empty one it did not make (MARKER names the file that says it did).
bench_workdir() {
  if [ -e "$dir" ] && [ ! -e "$dir/$1" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
    die "$dir exists, is not empty and was not made by this script: set BENCH_DIR"
  fi
  rm -rf "${dir:?}"/* && mkdir -p "$dir" && touch "$dir/$1"
}

# bench_lifeboat: sets `lb` to $LIFEBOAT_BIN, or builds the release binary.
bench_lifeboat() {
  if [ -n "${LIFEBOAT_BIN:-}" ]; then
    lb=$LIFEBOAT_BIN
  else
    (cd "$repo" && cargo build --release -p cli >&2) || die "cargo build --release -p cli failed"
    lb=$repo/target/release/lifeboat
  fi
}

# bench_protect [PROTECT ARGS...]: a key, a vault in $dir/vault and disk
# `bench` on $img (64 KiB blocks), fully synced once.
bench_protect() {
  "$lb" key new --out "$dir/k.key" >/dev/null
  "$lb" vault init "$dir/vault" --key "$dir/k.key" >/dev/null
  "$lb" protect bench --image "$img" --vault "$dir/vault" --key "$dir/k.key" --block-size 64KiB "$@" >/dev/null
  "$lb" ship bench --once --json >/dev/null 2>"$dir/full.log" || die "the full sync failed: $(tail -3 "$dir/full.log")"
}

# bench_filter SOCK: serves disk `bench` on the unix socket SOCK with
# `lifeboat filter`; sets `filter_pid` once it listens.
bench_filter() {
  rm -f "$1"
  "$lb" filter bench --listen "unix:$1" 2>"$dir/filter.log" &
  filter_pid=$!
  for _ in $(seq 300); do grep -q "listening on" "$dir/filter.log" && return 0; sleep 0.1; done
  die "the filter did not start: $(tail -3 "$dir/filter.log")"
}

# bench_cleanup: the EXIT trap: stops the filter, removes $dir unless KEEP=1.
bench_cleanup() {
  [ -n "${filter_pid:-}" ] && kill "$filter_pid" 2>/dev/null || true
  [ "${KEEP:-0}" = 1 ] || rm -rf "${dir:?}"
}

# median NUMBERS...: their median.
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
