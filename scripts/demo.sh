#!/usr/bin/env bash
# THE main-job command (README): installs what is needed, builds Lifeboat, and
# protects a demo disk image end to end, replicating it to a local vault:
#
#   1. creates a 256 MiB raw image with some data in it,
#   2. creates a customer key and a local vault, `lifeboat protect demo --image ...
#      --vault ... --key ...`,
#   3. runs Lifeboat's main job, `lifeboat agent` (in the background): it serves
#      the disk over NBD and replicates it every 10 s (the first cycle is the
#      full sync),
#   4. writes through the agent's NBD socket with qemu-io (as a VM would),
#   5. shows `lifeboat dirty demo --json`: exactly the blocks written,
#   6. takes `lifeboat snapshot demo --out ...` while a writer keeps writing, and
#      checks the copy holds the data from before the cut,
#   7. waits for the agent's cycles to ship those writes, shows `lifeboat status`
#      and `lifeboat points demo`,
#   8. restores the latest point and checks it byte for byte against the disk,
#      then scrubs the vault with the key (`lifeboat vault check --read-data`),
#   9. stops the agent with SIGTERM (clean shutdown), shows the churn profile it
#      recorded meanwhile (`lifeboat profile show demo`),
#  10. sets up a recovery site on localhost (site init, enroll, join, vault
#      serve), ships a disk to it through lifeboat://, restores it back,
#  11. prints what to try next.
#
# Demo home: $LIFEBOAT_HOME, else ./.demo in the repo. Re-running starts a
# home this script created over (only such a home is ever cleaned).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
home=${LIFEBOAT_HOME:-$repo/.demo}
name=demo
image=$home/demo.img
sock=$home/disks/demo/nbd.sock
snap=$home/demo-snapshot.raw
key=$home/demo.key
vault=$home/vault
size_mib=256

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

step "Installing what is needed (scripts/setup.sh)"
bash scripts/setup.sh

step "Building lifeboat (release)"
cargo build --release -p cli
lb=${CARGO_TARGET_DIR:-$repo/target}/release/lifeboat
export LIFEBOAT_HOME=$home
lifeboat() { "$lb" --home "$home" "$@"; }

step "Creating a ${size_mib} MiB demo image in $home"
mkdir -p "$home"
if [ -e "$home/disks/$name" ] && [ ! -e "$home/.lifeboat-demo" ]; then
  die "$home/disks/$name exists and was not made by this demo; set LIFEBOAT_HOME to another folder"
fi
if [ -e "$home/.lifeboat-demo" ]; then
  # A home an earlier run made: start it over whole (its second disk, the
  # recovery site's, would otherwise be served again with no server to reach).
  find "${home:?}" -mindepth 1 -delete
fi
touch "$home/.lifeboat-demo"
truncate -s "${size_mib}M" "$image"
# Some data: 8 MiB of random bytes at the start, a text block at 100 MiB.
dd if=/dev/urandom of="$image" bs=1M count=8 conv=notrunc status=none
printf 'Lifeboat demo disk, created %s\n' "$(date -u +%FT%TZ)" |
  dd of="$image" bs=1M seek=100 conv=notrunc status=none
echo "image: $image ($(du -h --apparent-size "$image" | cut -f1), $(du -h "$image" | cut -f1) allocated)"

step "A customer key and a vault: lifeboat key new, lifeboat vault init"
lifeboat key new --out "$key"
lifeboat vault init "$vault" --key "$key"

step "lifeboat protect $name --image $image --vault $vault --key $key --rpo 10s"
lifeboat protect "$name" --image "$image" --vault "$vault" --key "$key" --rpo 10s
ls -l "$home/disks/$name"

step "lifeboat agent   (background: serves every protected disk and replicates it on its RPO)"
log=$home/agent.log
# Run the binary itself in the background (not through the shell function), so
# $! is the agent's own pid and SIGTERM reaches it.
"$lb" --home "$home" agent 2>"$log" &
filter_pid=$!
cleanup() {
  if kill -0 "$filter_pid" 2>/dev/null; then kill -KILL "$filter_pid" 2>/dev/null || true; wait "$filter_pid" 2>/dev/null || true; fi
  [ -n "${writer_pid:-}" ] && kill "$writer_pid" 2>/dev/null || true
  [ -n "${serve_pid:-}" ] && kill "$serve_pid" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 300); do
  grep -q "serving on" "$log" 2>/dev/null && break
  kill -0 "$filter_pid" 2>/dev/null || { cat "$log" >&2; die "the agent exited"; }
  sleep 0.1
done
grep -q "serving on" "$log" || { cat "$log" >&2; die "the agent did not start within 30 s"; }
cat "$log"
# Wait for the first cycle (the full sync of the image as it is) to commit.
wait_log() { # PATTERN SECONDS
  for _ in $(seq $(($2 * 10))); do
    grep -q "$1" "$log" && return 0
    kill -0 "$filter_pid" 2>/dev/null || { cat "$log" >&2; die "the agent exited"; }
    sleep 0.1
  done
  cat "$log" >&2; die "the agent did not log '$1' within $2 s"
}
wait_log "point 1 committed" 120
uri="nbd+unix:///$name?socket=$sock"

step "Writing through the filter with qemu-io (what a VM would do)"
qemu-io -f raw "$uri" \
  -c 'write -P 0xab 0 1M' \
  -c 'write -P 0xcd 100M 4096' \
  -c 'write -P 0xef 200M 300000' \
  -c 'write -z 250M 64k' \
  -c 'read -P 0xab 0 1M' | grep -E '^(wrote|read)'
nbdinfo "$uri" | grep -E 'export-size|block_size|can_(flush|fua|trim|zero)' || true

step "lifeboat dirty $name --json"
lifeboat dirty "$name" --json | tee "$home/dirty.json" | head -c 400; echo
python3 - "$home/dirty.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
bs = d["block_size"]
print(f"{d['dirty_count']} of {(d['disk_size'] + bs - 1) // bs} blocks of {bs // 1024} KiB are dirty "
      f"(suspect: {d['suspect']}): {d['dirty_blocks'][:6]}{' ...' if d['dirty_count'] > 6 else ''}")
# 1 MiB at 0 -> blocks 0-15; 4 KiB at 100 MiB -> 1600; 300000 B at 200 MiB -> 3200-3204; 64 KiB at 250 MiB -> 4000
want = set(range(16)) | {1600} | set(range(3200, 3205)) | {4000}
got = set(d["dirty_blocks"])
if bs == 65536 and got != want:
    # The agent's 10 s cycle may have shipped some of them already; it must
    # never have lost or invented any.
    if not got <= want:
        sys.exit(f"unexpected dirty blocks: {sorted(got - want)}")
    print(f"(the agent's last cycle already shipped {len(want - got)} of the {len(want)} blocks written)")
PY

step "lifeboat snapshot $name --out $snap   (while a writer keeps writing)"
# Keep the first 8 MiB as they are now, then let a writer overwrite them with
# 0x11, 64 KiB at a time in ascending order, while the snapshot runs.
dd if="$image" of="$home/before.bin" bs=1M count=8 status=none
cmds=()
for i in $(seq 0 127); do cmds+=(-c "write -P 0x11 $((i * 65536)) 65536"); done
qemu-io -f raw "$uri" "${cmds[@]}" >/dev/null &
writer_pid=$!
sleep 0.05
time lifeboat snapshot "$name" --out "$snap"
wait "$writer_pid"; writer_pid=
ls -l "$snap"
# The snapshot is the disk at the instant of the cut: the writer's blocks that
# made it are a prefix (it wrote in order), each block is wholly old or wholly
# new, and everything the writer did not touch matches the image.
python3 - "$snap" "$image" "$home/before.bin" <<'PY'
import sys
B, N = 65536, 128
snap, img, before = open(sys.argv[1], "rb"), open(sys.argv[2], "rb"), open(sys.argv[3], "rb").read()
kinds = []
for i in range(N):
    a = snap.read(B)
    if a == bytes([0x11]) * B:
        kinds.append("new")
    elif a == before[i * B:(i + 1) * B]:
        kinds.append("old")
    else:
        sys.exit(f"block {i}: neither the data before the cut nor the writer's (torn copy)")
k = kinds.count("new")
if kinds != ["new"] * k + ["old"] * (N - k):
    sys.exit(f"not crash-consistent: the writer wrote in order, but the copy holds {kinds}")
img.seek(N * B)
while True:
    a, b = snap.read(1 << 20), img.read(1 << 20)
    if a != b:
        sys.exit("the snapshot differs from the image where nobody wrote")
    if not a:
        break
print(f"snapshot check ok: the cut fell after the writer's block {k} of {N}; "
      f"all other {N - k} blocks hold their data from before the cut, the rest of the disk matches")
PY

step "The agent ships those writes in its next cycle (every 10 s)"
qemu-io -f raw "$uri" -c 'write -P 0x5a 10M 256k' -c 'write -P 0x77 180M 4096' | grep -E '^wrote'
lifeboat dirty "$name" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print("dirty blocks waiting:", len(d["dirty_blocks"]))'
lifeboat snapshot "$name" --out "$home/at-next-point.raw" >/dev/null   # the disk as the next cut will see it (no writer runs)
next=$(( $(lifeboat points "$name" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])') + 1 ))
wait_log "point $next committed" 60
grep "committed" "$log"

step "lifeboat status   (RPO achieved, last cycle, changes waiting)"
lifeboat status

step "lifeboat points $name"
lifeboat points "$name"

step "lifeboat restore $name --point latest   (every block decrypted and verified)"
lifeboat restore "$name" --point latest --out "$home/restored-latest.raw"
cmp "$home/restored-latest.raw" "$home/at-next-point.raw" && echo "restored point is byte-identical to the disk at its cut"
rm -f "$home/at-next-point.raw"

step "lifeboat vault check $vault --read-data   (scrub: hashes, MACs, every block)"
lifeboat vault check "$vault" --read-data --key "$key" 2>/dev/null
echo "vault size: $(du -sh "$vault" | cut -f1) for $(lifeboat points "$name" --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))') points (the vault holds no key and no plaintext)"

step "Stopping the agent (SIGTERM: cancel a cycle in progress, finish in-flight requests, mark the state clean)"
kill -TERM "$filter_pid"
wait "$filter_pid" && echo "agent exited 0" || die "agent exited with $?"
tail -n 2 "$log"
lifeboat dirty "$name" --json | python3 -c '
import json, sys
d = json.load(sys.stdin)
print("after the stop: %d dirty blocks (kept for the next cycle), suspect: %s" % (d["dirty_count"], d["suspect"]))'

step "lifeboat profile show $name   (the churn the agent recorded while it served the disk)"
lifeboat profile show "$name"

step "A recovery site on localhost: lifeboat site init / enroll / join, lifeboat vault serve"
# In real life the site is another machine; here it is a second home on
# loopback. The server never sees the key; the host reaches it as lifeboat://.
site_home=$home/site-home
rm -rf "$site_home" "$home/sites" "$home/remote.img" "$home/disks/remote"
mkdir -p "$site_home/vaults/main"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
site_lb() { "$lb" --home "$site_home" "$@"; }
site_lb site init "$site_home/site" --address "127.0.0.1:$port"
site_lb site enroll demo-host --vault main --out "$home/demo-host.enroll" --site "$site_home/site"
# The binary itself in the background, as for the agent above: through the
# shell function, $! was a subshell's pid, SIGTERM stopped only the subshell,
# and the server outlived the demo.
"$lb" --home "$site_home" vault serve --site "$site_home/site" --listen "127.0.0.1:$port" \
  main="$site_home/vaults/main" 2>"$site_home/serve.log" &
serve_pid=$!
for _ in $(seq 100); do grep -q 'serving vaults' "$site_home/serve.log" && break; sleep 0.1; done
grep -q 'serving vaults' "$site_home/serve.log" || die "vault serve did not start: $(cat "$site_home/serve.log")"
lifeboat site join "$home/demo-host.enroll"
url="lifeboat://127.0.0.1:$port/main"
lifeboat vault init "$url" --key "$key"
cp "$home/restored-latest.raw" "$home/remote.img"
lifeboat protect remote --image "$home/remote.img" --vault "$url" --key "$key"
lifeboat ship remote --once --bandwidth 400MB/s
lifeboat restore remote --point latest --out "$home/restored-remote.raw"
cmp "$home/restored-remote.raw" "$home/remote.img" && echo "restored through the vault server: byte-identical"
site_lb site hosts --site "$site_home/site"
kill -TERM "$serve_pid"
wait "$serve_pid" || die "vault serve did not exit 0 on SIGTERM: $(cat "$site_home/serve.log")"
echo "vault serve exited 0 on SIGTERM"
rm -f "$home/restored-remote.raw"

step "Try next"
cat <<EOF
  export LIFEBOAT_HOME=$home
  $lb --help                                # every command, with examples
  $lb agent &                               # serve and replicate again (Ctrl-C / SIGTERM stops)
  qemu-io -f raw '$uri' -c 'write -P 7 1G 4k'   # (out of range: an error, not a crash)
  qemu-io -f raw '$uri' -c 'write -P 7 64M 4k'
  $lb dirty $name --json
  $lb status --json                         # RPO achieved, last cycle, errors
  $lb points $name --json
  $lb restore $name --point 1 --out /tmp/demo-point-1.raw
  $lb profile show $name                    # the disk's churn, as the filter recorded it
  $lb bench --dir /var/tmp                  # this host's ceilings beside their floors, ~10 s
  $lb plan-capacity --rpo 5m --link 100Mbit --html /tmp/plan.html   # bandwidth, RPO, storage
  nbdinfo '$uri'
  # boot a VM on it:
  #   qemu-system-x86_64 ... -blockdev driver=nbd,node-name=d0,server.type=unix,server.path=$sock,export=$name \\
  #                          -device virtio-blk-pci,drive=d0
  scripts/test.sh --full                    # the whole test suite, VM boots included
EOF
