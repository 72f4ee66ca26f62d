#!/usr/bin/env bash
# Cloud vaults (issue 15) against a local vault and against restic, side by
# side in one run, on the emulators the cloud tests use: Azurite (Azure Blob)
# and moto (S3), both in memory on free loopback ports, installed in .cache/
# by scripts/setup.sh (vm-tests/src/cloud_servers.rs runs them the same way).
#
#   benches/cloud-bench.sh                 # SIZE=1G: about 5-6 minutes on 2 cores
#   SIZE=64M PACKS_SMALL=200 PACKS_LARGE=1000 benches/cloud-bench.sh   # under a minute
#   KEEP=1 benches/cloud-bench.sh | tee cloud-bench.txt
#   benches/cloud-bench.sh --help
#
# One image (SIZE bytes, benches/replicate-bench/bench.py gen-image: 4 MiB
# extents, a seeded 25% zero, the rest incompressible, every 64 KiB block
# distinct), copied to three disks protected with --block-size 64KiB into
# az://devstoreaccount1/lbbench, s3://lbbench-s3 and a vault directory.
#
#   1. Incremental cycle. The full sync of each disk (`lifeboat ship NAME
#      --once --json`, no filter running: the image is read under its lock),
#      then CHANGE_PCT% of the 64 KiB blocks overwritten through `lifeboat
#      filter` (bench.py change, libnbd: the same blocks and bytes on all
#      three disks; `lifeboat dirty` must list exactly them), then the
#      incremental cycle of each. Per cycle: wall seconds, `requests` from
#      the JSON report (backend calls as lifeboat counts them,
#      vault/src/counting.rs) and the HTTP requests the server logged while
#      the command ran (every request, also the audit log's), with the S3
#      incremental's requests by method and object kind. Ratios cloud /
#      local. No target: the local vault is the floor.
#   2. Requests against vault size. A 4 KiB disk (--block-size 4KiB) is
#      shipped into the S3 vault: its one small pack (about 5 KB) is then
#      PUT again under random pack names until packs/ holds PACKS_SMALL,
#      later PACKS_LARGE objects. They are valid packs (a pack's tail is
#      read without checking its name against its bytes), so the index cache
#      takes them in like real ones; no point references them. At each size
#      the host's index cache is deleted, so the next cycle lists the vault
#      and reads every pack's tail (a "relist" cycle, as every 32nd cycle
#      does), and then a CHANGE_PCT% incremental is measured. Target: its
#      requests at PACKS_LARGE / at PACKS_SMALL = 1.00 (+-5%). Printed
#      beside it, informational: the relist cycle's cost, and a restore of
#      another 4 KiB disk (one block) at each size: restore reads the
#      indexes of the packs its page packs hint at (vault/src/pages.rs,
#      `hinted_index`), so its requests should not follow the vault's pack
#      count (also timed through the delay line at PACKS_SMALL; before the
#      hints it read every pack's tail). Runs last: it grows the S3
#      vault, whose restore section 3 measures.
#   3. Restore throughput: `lifeboat restore NAME --point latest` of the
#      incremental's point from each server directly, and through a delay
#      line adding ONE_WAY_MS each way (vm-tests' delay_proxy example, as
#      benches/site-bench.sh; this kernel has no netem): the endpoint
#      variable points at the proxy. MB/s of the disk's size; every restored
#      image is compared with cmp. Target: delayed / direct >= 0.50 per
#      server. A restore from the vault directory is printed as the floor.
#   4. Against restic, same moto server: `restic -r
#      s3:http://127.0.0.1:PORT/lbbench-restic backup --json IMAGE` (after
#      `restic init`, untimed) of the S3 disk's image, against that disk's
#      full sync from section 1 (bucket lbbench-s3); then, after the same
#      changes, restic's second backup (it sees the file changed and re-reads
#      all of it; the bench checks it reported 1 changed file) against the
#      S3 disk's incremental. Targets: restic / lifeboat >= 3.0 (initial),
#      >= 50 (incremental). Printed beside: CPU seconds of each client and
#      of moto meanwhile (an emulator in Python is slow to take objects in,
#      and both tools wait on it), and restic against lifeboat's local-vault
#      runs, for scale. And moto's own floor, what no client could beat on
#      this machine: the full sync's bytes PUT by a stdlib client in objects
#      of the packs' mean size, two in flight, with a checksum header as
#      lifeboat sends one; for the incremental, a cold `lifeboat --version`,
#      its packs' bytes PUT at once in as many objects (two since an
#      incremental splits across the upload lanes), and for each of its
#      other requests (kinds from moto's log) moto's own CPU time for one of
#      that kind (60 of each, a connection each as moto closes them, CPU
#      from /proc). moto's Python serves one request at a time, so however
#      a client overlaps them this is a lower bound, and a generous one
#      (the pages' PUT and a ranged GET count as small requests). restic /
#      floor is printed as information, a bound on what the emulator
#      allows: the first leaves out the client's own reading and sealing
#      (which share the cores with moto).
#
# Page cache dropped before every timed command (`sync; echo 3 >
# /proc/sys/vm/drop_caches`), lifeboat's and restic's alike: the image is
# read cold; the emulators keep their objects in memory either way. The
# servers, the proxy and the client share the machine's cores, and other
# work on the machine shows: the load average is printed at the start and
# the end, and every figure that matters is a ratio within this run. CPU
# seconds: the command's own (GNU time, user + system) and the emulator
# process's (/proc/PID/stat) over the same interval.
#
# Environment:
#   SIZE          image size, a multiple of 4 MiB (default 1G; numfmt --from=iec)
#   CHANGE_PCT    percent of the 64 KiB blocks changed per incremental (default 1)
#   ONE_WAY_MS    delay added each way for section 3 (default 10: 20 ms round trip)
#   PACKS_SMALL   packs in the S3 vault for the first count (default 1000)
#   PACKS_LARGE   and for the second (default 20000)
#   SEED          RNG seed of the image and the changes (default 1)
#   BENCH_DIR     work directory (default: a new /var/tmp/lifeboat-cloud-bench.XXXXXX,
#                 disk-backed); needs about 5 x SIZE free; removed at the end
#   KEEP=1        keep BENCH_DIR (images, logs, results.txt)
#   LIFEBOAT_BIN  use this lifeboat binary instead of building (the default
#                 builds: cargo build --release -p cli); DELAY_PROXY_BIN likewise
#                 (default: cargo build --release -p vm-tests --example delay_proxy)
# Needs root (drop_caches), restic, curl, python3-libnbd (scripts/setup.sh) and
# the emulators in .cache/ (scripts/setup.sh).
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
case ${1:-} in
  -h | --help) usage; exit 0 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
py=/usr/bin/python3 # Debian's interpreter: it has the nbd module
bench_py=$repo/benches/replicate-bench/bench.py
size_arg=${SIZE:-1G}
change_pct=${CHANGE_PCT:-1}
one_way=${ONE_WAY_MS:-10}
packs_small=${PACKS_SMALL:-1000}
packs_large=${PACKS_LARGE:-20000}
seed=${SEED:-1}
keep=${KEEP:-0}
cache=${LIFEBOAT_CACHE:-$repo/.cache}
azurite_bin=$cache/azurite/azurite-blob
moto_bin=$cache/moto-venv/bin/moto_server

say() { printf '[cloud-bench] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
need() { command -v "$1" >/dev/null || die "$1 is missing: run scripts/setup.sh"; }
for t in restic curl cmp numfmt cargo setsid; do need "$t"; done
$py -c 'import nbd' 2>/dev/null || die "python3-libnbd is missing: run scripts/setup.sh"
[ -x "$azurite_bin" ] || die "$azurite_bin is missing (Azurite): run scripts/setup.sh"
[ -x "$moto_bin" ] || die "$moto_bin is missing (moto's server): run scripts/setup.sh"
[ "$(id -u)" -eq 0 ] || die "run as root: every timed run starts with echo 3 > /proc/sys/vm/drop_caches"
size=$(numfmt --from=iec "$size_arg") || die "SIZE=$size_arg: not a size (e.g. 1G, 256M)"
[ "$size" -gt 0 ] && [ $((size % (4 << 20))) -eq 0 ] || die "SIZE must be a positive multiple of 4 MiB (got $size_arg)"
for v in one_way packs_small packs_large seed; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "${v^^} must be a non-negative integer (got ${!v})"
done
[ "$packs_large" -gt "$packs_small" ] || die "PACKS_LARGE must be larger than PACKS_SMALL"
$py -c "import sys; p=float(sys.argv[1]); sys.exit(not 0 < p <= 100)" "$change_pct" 2>/dev/null ||
  die "CHANGE_PCT must be a number in (0, 100]"

if [ -n "${BENCH_DIR:-}" ]; then
  dir=$BENCH_DIR
  [ ! -e "$dir" ] || [ -z "$(ls -A "$dir")" ] || die "$dir exists and is not empty: set BENCH_DIR to a new folder"
  mkdir -p "$dir"
else
  dir=$(mktemp -d /var/tmp/lifeboat-cloud-bench.XXXXXX)
fi
avail=$(df --output=avail -B1 "$dir" | tail -1 | tr -d ' ')
[ "$avail" -gt $((size * 5 + (1 << 30))) ] || die "$dir has $(numfmt --to=iec "$avail") free; SIZE=$size_arg needs about $(numfmt --to=iec $((size * 5 + (1 << 30))))"

# Everything this script starts, stopped by pid at exit (servers in process
# groups of their own, stopped by group id: the pid it was started as).
groups=()
pids=()
filter_pid=
cleanup() {
  local rc=$?
  if [ -n "$filter_pid" ]; then kill -TERM "$filter_pid" 2>/dev/null || true; wait "$filter_pid" 2>/dev/null || true; fi
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  for g in "${groups[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; wait "$g" 2>/dev/null || true; done
  if [ "$keep" = 1 ]; then say "kept $dir"; else rm -rf "${dir:?}"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- helpers (Python, stdlib only; nbd only for bench.py change) ----
helper=$dir/helper.py
cat >"$helper" <<'PY'
"""cloud-bench.sh's helpers: ports, an Azure container, S3 objects, results."""
import base64, hashlib, hmac, http.client, json, os, queue, re, socket, sys, threading, time
from email.utils import formatdate

AZ_ACCOUNT = "devstoreaccount1"
AZ_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
# moto checks no signature, but an unsigned request is anonymous (403 on
# private objects): a well-formed SigV4 header does.
S3_AUTH = ("AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, "
           "SignedHeaders=host, Signature=00")


def s3(c, method, path, body=b"", headers=None):
    c.request(method, path, body=body,
              headers={"Authorization": S3_AUTH, "Content-Length": str(len(body)), **(headers or {})})
    r = c.getresponse()
    return r.status, r.read()


def put_each(port, paths, body, threads, headers=None):
    """PUTs `body` at every path of `paths` over `threads` connections at once;
    exits with the first failure."""
    q, errors = queue.Queue(), []
    for path in paths:
        q.put(path)

    def work():
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while not errors:
            try:
                path = q.get_nowait()
            except queue.Empty:
                return
            status, data = s3(c, "PUT", path, body, headers)
            if status != 200:
                errors.append(f"PUT {path}: HTTP {status}: {data[:200]!r}")

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    if errors:
        sys.exit(errors[0])


def s3_keys(port, bucket, prefix):
    c, keys, token = http.client.HTTPConnection("127.0.0.1", port, timeout=120), [], None
    while True:
        q = f"/{bucket}?list-type=2&prefix={prefix}" + (f"&continuation-token={token}" if token else "")
        status, data = s3(c, "GET", q)
        if status != 200:
            sys.exit(f"listing s3://{bucket}/{prefix}: HTTP {status}: {data[:300]!r}")
        text = data.decode()
        keys += re.findall(r"<Key>([^<]+)</Key>", text)
        m = re.search(r"<NextContinuationToken>([^<]+)</NextContinuationToken>", text)
        if not m:
            return keys
        token = m.group(1)


def main(cmd, *a):
    if cmd == "free-port":
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])
    elif cmd == "az-container":  # PORT NAME: Create Container, SharedKey-signed
        port, name = int(a[0]), a[1]
        date = formatdate(usegmt=True)
        sts = (f"PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:2021-08-06\n"
               f"/{AZ_ACCOUNT}/{AZ_ACCOUNT}/{name}\nrestype:container")
        sig = base64.b64encode(hmac.new(base64.b64decode(AZ_KEY), sts.encode(), hashlib.sha256).digest()).decode()
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("PUT", f"/{AZ_ACCOUNT}/{name}?restype=container", headers={
            "x-ms-date": date, "x-ms-version": "2021-08-06", "Content-Length": "0",
            "Authorization": f"SharedKey {AZ_ACCOUNT}:{sig}"})
        r = c.getresponse()
        if r.status != 201:
            sys.exit(f"creating container {name}: HTTP {r.status}: {r.read()[:300]!r}")
    elif cmd == "s3-keys":  # PORT BUCKET PREFIX
        print("\n".join(s3_keys(int(a[0]), a[1], a[2])))
    elif cmd == "s3-fill":  # PORT BUCKET SRC_KEY TOTAL: PUT copies of SRC under packs/RANDOM until TOTAL packs
        port, bucket, src, total = int(a[0]), a[1], a[2], int(a[3])
        status, body = s3(http.client.HTTPConnection("127.0.0.1", port, timeout=120), "GET", f"/{bucket}/{src}")
        if status != 200:
            sys.exit(f"reading {src}: HTTP {status}")
        todo = total - len(s3_keys(port, bucket, "packs/"))
        put_each(port, [f"/{bucket}/packs/{os.urandom(32).hex()}" for _ in range(max(0, todo))], body, 8)
        print(len(s3_keys(port, bucket, "packs/")))
    elif cmd == "intake":  # PORT BUCKET OBJECTS SIZE INFLIGHT: seconds for moto to take OBJECTS x SIZE random bytes
        port, bucket, objects, size, inflight = int(a[0]), a[1], int(a[2]), int(a[3]), int(a[4])
        status, data = s3(http.client.HTTPConnection("127.0.0.1", port, timeout=60), "PUT", f"/{bucket}")
        if status != 200:
            sys.exit(f"creating bucket {bucket}: HTTP {status}: {data[:300]!r}")
        body = os.urandom(size)
        # A checksum header, as lifeboat sends one with every PUT (moto keeps it and never checks it: its cost is the same whatever the algorithm).
        checksum = {"x-amz-checksum-sha256": base64.b64encode(hashlib.sha256(body).digest()).decode(),
                    "x-amz-sdk-checksum-algorithm": "SHA256"}
        paths = [f"/{bucket}/floor/{i:064x}" for i in range(objects)]
        t0 = time.time()
        put_each(port, paths, body, inflight, checksum)
        print(time.time() - t0)
    elif cmd == "request-cpu":  # PORT PID: moto's CPU seconds for one request of each kind a cycle sends
        port, pid, hz, bucket = int(a[0]), int(a[1]), os.sysconf("SC_CLK_TCK"), "lbbench-cpu"

        def ticks():
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])

        def one(method, path, body=b"", headers=None):
            # A connection each, as moto closes every one after its answer.
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            status, data = s3(c, method, path, body, headers)
            c.close()
            if status >= 300 and not (method == "HEAD" and status == 404):
                sys.exit(f"{method} {path}: HTTP {status}: {data[:200]!r}")

        one("PUT", f"/{bucket}")
        one("PUT", f"/{bucket}/small", b"x" * 300)
        for i in range(20):
            one("PUT", f"/{bucket}/roots/c/{i:020}", b"r" * 300)
        checksum = {"x-amz-checksum-sha256": base64.b64encode(hashlib.sha256(b"x" * 300).digest()).decode(),
                    "x-amz-sdk-checksum-algorithm": "SHA256", "If-None-Match": "*"}
        kinds = {
            "LIST": lambda i: one("GET", f"/{bucket}?list-type=2&prefix=roots/c/"),
            "GET": lambda i: one("GET", f"/{bucket}/small"),
            "HEAD": lambda i: one("HEAD", f"/{bucket}/missing-{i}"),
            "PUT": lambda i: one("PUT", f"/{bucket}/put-{i}", b"x" * 300, checksum),
            "DELETE": lambda i: one("DELETE", f"/{bucket}/put-{i}"),
        }
        out, reps = {}, 60
        for kind, request in kinds.items():
            t0 = ticks()
            for i in range(reps):
                request(i)
            out[kind] = (ticks() - t0) / hz / reps
        print(json.dumps(out))
    elif cmd == "request-kinds":  # LOG FROM TO: a run's requests in moto's log (lines FROM+1..TO) by kind
        with open(a[0], "rb") as f:
            lines = [l.decode(errors="replace") for l in f if b" HTTP/1." in l][int(a[1]):int(a[2])]
        kinds = {}
        for line in lines:
            # (moto colours the line of a 4xx answer: an escape follows the quote)
            m = re.search(r'"(?:\x1b\[[0-9;]*m)*([A-Z]+) (\S+) HTTP/1', line)
            method, path = m.group(1), m.group(2)
            kind = ("LIST" if method == "GET" and "list-type" in path else
                    "PACK" if method == "PUT" and "/packs/" in path else method)
            kinds[kind] = kinds.get(kind, 0) + 1
        print(json.dumps(kinds))
    elif cmd == "settle":  # FILE...: HTTP request lines per file, once no new one came for 0.3 s
        def count():
            out = []
            for f in a:
                with open(f, "rb") as fh:
                    out.append(sum(1 for line in fh if b" HTTP/1." in line))
            return out
        last, stable = count(), 0
        while stable < 3:
            time.sleep(0.1)
            now = count()
            stable = stable + 1 if now == last else 0
            last = now
        print(*last)
    elif cmd == "field":  # FILE KEY: a field of the JSON object on the file's last line
        with open(a[0]) as f:
            lines = [l for l in f.read().splitlines() if l.strip().startswith("{")]
        v = json.loads(lines[-1])[a[1]]
        print(json.dumps(v) if isinstance(v, (bool, type(None))) else v)
    elif cmd == "restic-summary":  # FILE: files_changed files_new from restic backup --json
        with open(a[0]) as f:
            s = [json.loads(l) for l in f if l.startswith("{") and '"summary"' in l]
        if not s:
            sys.exit(f"no summary in {a[0]}")
        print(s[-1]["files_new"], s[-1]["files_changed"], s[-1]["data_added"])
    elif cmd == "report":  # RESULTS
        report(a[0])
    else:
        sys.exit(f"unknown helper command {cmd}")


def breakdown(log, span):
    """moto's request lines in span ("FROM TO") by method and object kind."""
    start, end = map(int, span.split())
    with open(log, "rb") as fh:
        lines = [l.decode(errors="replace") for l in fh if b" HTTP/1." in l][start:end]
    counts = {}
    for line in lines:
        m = re.search(r'"(?:\x1b\[[0-9;]*m)*([A-Z]+) /[^/ ?]+(/[a-z]+/|\?[^ ]*)?', line)
        if not m:
            continue
        what = m.group(2) or ""
        if "list-type" in what:
            key = "LIST"
        elif "delete" in what:
            key = "POST ?delete"
        else:
            key = f"{m.group(1)} {what.strip('/') or 'bucket'}"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def report(path):
    r = {}
    with open(path) as f:
        for line in f:
            k, v = line.rstrip("\n").split("\t", 1)
            r[k] = v
    num = lambda k: float(r[k])
    size = num("size")
    mb = lambda secs: size / secs / 1e6
    verdict = lambda ok: "info" if ok is None else "PASS" if ok else "MISS"
    out = []
    P = out.append
    P(f"\nCloud vaults, one run: image {r['size_h']} ({int(size)} bytes), {r['change_pct']}% of the 64 KiB blocks "
      f"changed per incremental ({r['changed_blocks']} blocks); load average {r['load0']} at the start, "
      f"{r['load_end']} at the end; {r['cores']} cores; page cache dropped before every timed command.")
    P("CPU s: user + system seconds of the command itself (client) and of the emulator process (server) meanwhile;"
      " client and server share the cores.")

    P("\n1. Full sync and incremental cycle, same image and same changes into each vault")
    P(f"   command: {r['cmd_ship']}")
    P(f"   {'vault':<26}{'full s':>8}{'MB/s':>6}{'CPU s cl/srv':>14}{'incr s':>8}{'requests':>10}{'HTTP':>6}"
      f"{'s / local':>11}{'req / local':>13}")
    for v, label in (("local", "local directory (floor)"), ("az", "Azurite (az://)"), ("s3", "moto (s3://)")):
        cpu = f"{num(f'cpu.full.{v}'):.1f}/{num(f'servercpu.full.{v}'):.1f}"
        P(f"   {label:<26}{num(f'secs.full.{v}'):8.2f}{mb(num(f'secs.full.{v}')):6.0f}{cpu:>14}"
          f"{num(f'secs.incr.{v}'):8.2f}{r[f'req.incr.{v}']:>10}{r[f'http.incr.{v}']:>6}"
          f"{num(f'secs.incr.{v}') / num('secs.incr.local'):11.2f}"
          f"{num(f'req.incr.{v}') / num('req.incr.local'):13.2f}")
    P("   requests: the cycle's report (backend calls as lifeboat counts them); HTTP: request lines the server logged"
      " during the command (the audit log's included). No target: the local vault is the floor.")
    P(f"   full-sync requests: local {r['req.full.local']}, Azurite {r['req.full.az']} ({r['http.full.az']} HTTP), "
      f"moto {r['req.full.s3']} ({r['http.full.s3']} HTTP)")
    P(f"   the S3 incremental's HTTP requests ({r['pages.incr.s3']} map pages written): "
      f"{breakdown(r['s3log'], r['s3lines.incr.s3'])}")

    P(f"\n2. Incremental requests against the S3 vault's size (packs/ topped up with copies of a real ~5 KB pack)")
    P(f"   command: {r['cmd_ship']} (after `rm -r HOME/cache/index` and one relist cycle)")
    P(f"   {'packs in the vault':<24}{'incr s':>7}{'requests':>10}{'HTTP':>6}{'listed':>8}"
      f"{'relist s':>10}{'relist req':>12}{'relist HTTP':>13}{'1-block restore s':>19}{'its HTTP':>10}")
    base = r["packs.base"]
    P(f"   {base + ' (before topping up)':<24}{'':>7}{'':>10}{'':>6}{'':>8}{'':>10}{'':>12}{'':>13}"
      f"{num('secs.probe.base'):19.2f}{r['http.probe.base']:>10}")
    for s in ("small", "large"):
        P(f"   {r[f'packs.{s}']:<24}{num(f'secs.incr.{s}'):7.2f}{r[f'req.incr.{s}']:>10}{r[f'http.incr.{s}']:>6}"
          f"{r[f'listed.incr.{s}']:>8}{num(f'secs.relist.{s}'):10.2f}{r[f'req.relist.{s}']:>12}"
          f"{r[f'http.relist.{s}']:>13}{num(f'secs.probe.{s}'):19.2f}{r[f'http.probe.{s}']:>10}")
    req_ratio = num("req.incr.large") / num("req.incr.small")
    http_ratio = num("http.incr.large") / num("http.incr.small")
    ok2 = abs(req_ratio - 1) <= 0.05 and r["listed.incr.small"] == "false" and r["listed.incr.large"] == "false"
    P(f"   incremental requests at {r['packs.large']} / at {r['packs.small']} packs: {req_ratio:.2f} "
      f"(HTTP {http_ratio:.2f}; seconds {num('secs.incr.large') / num('secs.incr.small'):.2f})"
      f"   target 1.00 +-5%: {verdict(ok2)}")
    P(f"   relist cycle (every 32nd cycle, and the first after a new or discarded cache): requests x"
      f"{num('req.relist.large') / num('req.relist.small'):.1f}, HTTP x{num('http.relist.large') / num('http.relist.small'):.1f}"
      f" for x{num('packs.large') / num('packs.small'):.1f} packs (informational; its HTTP: "
      f"{breakdown(r['s3log'], r['s3lines.relist.large'])})")
    P(f"   restore of a 4 KiB disk (one block): HTTP x{num('http.probe.large') / num('http.probe.small'):.1f}, "
      f"seconds x{num('secs.probe.large') / num('secs.probe.small'):.1f} from {r['packs.small']} to "
      f"{r['packs.large']} packs; at {r['packs.small']} packs through the {2 * int(r['one_way'])} ms delay line: "
      f"{num('secs.probe.small.delayed'):.2f} s (direct {num('secs.probe.small'):.2f} s). Informational: restore"
      f" reads the indexes of the packs its page packs hint at")

    P(f"\n3. Restore of the {r['size_h']} point, direct and through a {2 * int(r['one_way'])} ms round trip "
      f"({r['one_way']} ms added each way)")
    P(f"   command: {r['cmd_restore']}")
    P(f"   {'vault':<26}{'direct s':>9}{'MB/s':>6}{'CPU s cl/srv':>14}{'delayed s':>11}{'MB/s':>6}"
      f"{'delayed / direct':>18}   target >= 0.50")
    cpu = lambda k: f"{num('cpu.' + k):.1f}/{num('servercpu.' + k):.1f}"
    P(f"   {'local directory (floor)':<26}{num('secs.restore.local'):9.2f}{mb(num('secs.restore.local')):6.0f}"
      f"{cpu('restore.local'):>14}")
    ok3 = {}
    for v, label in (("az", "Azurite (az://)"), ("s3", "moto (s3://)")):
        d, l = num(f"secs.restore.{v}"), num(f"secs.restore.{v}.delayed")
        ok3[v] = d / l >= 0.5
        P(f"   {label:<26}{d:9.2f}{mb(d):6.0f}{cpu('restore.' + v):>14}{l:11.2f}{mb(l):6.0f}{d / l:18.2f}"
          f"   {verdict(ok3[v])}")

    P("\n4. Against restic, into the same moto server (a bucket each)")
    P(f"   lifeboat: {r['cmd_ship']}")
    P(f"   restic:   {r['cmd_restic']}")
    P(f"   {'run':<14}{'lifeboat s':>11}{'restic s':>10}{'lb CPU s cl/srv':>17}{'restic CPU s cl/srv':>21}"
      f"{'lb HTTP':>9}{'restic HTTP':>13}{'restic / lifeboat':>19}   target")
    ok4 = {}
    for phase, label, target in (("full", "initial sync", 3.0), ("incr", "incremental", 50.0)):
        lb_s, rs_s = num(f"secs.{phase}.s3"), num(f"secs.restic.{phase}")
        ratio = rs_s / lb_s
        ok4[phase] = ratio >= target
        P(f"   {label:<14}{lb_s:11.2f}{rs_s:10.2f}{cpu(phase + '.s3'):>17}{cpu('restic.' + phase):>21}"
          f"{r[f'http.{phase}.s3']:>9}{r[f'http.restic.{phase}']:>13}{ratio:18.1f}x   >= {target:.0f}x: {verdict(ok4[phase])}")
    P(f"   restic's second backup: {r['restic.incr.changed']} file changed, re-read whole; "
      f"added {int(r['restic.incr.added']) / 1e6:.1f} MB (lifeboat shipped {int(r['bytes.incr.s3']) / 1e6:.1f} MB)")
    floor_full = num("floor.full")
    incr_packs = int(r["floor.incr_packs"])
    # The incremental's requests other than its packs, each at moto's own
    # CPU time for one of its kind (its Python serves one at a time): a
    # lower bound whatever a client overlaps, as the pages' and a ranged
    # GET's bodies are counted as small ones.
    kinds, cost = json.loads(r["floor.incr_kinds"]), json.loads(r["floor.request_cpu"])
    others = {k: n for k, n in kinds.items() if k != "PACK"}
    others_s = sum(n * cost.get(k, min(cost.values())) for k, n in others.items())
    floor_incr = num("floor.start") + num("floor.incr") + others_s
    P(f"   moto's own floor (a stdlib client, a checksum header as lifeboat's): the full sync's "
      f"{int(r['bytes.full.s3']) / 1e6:.0f} MB in as many PUTs as its packs, 2 in flight: "
      f"{floor_full:.2f} s, restic / that = {num('secs.restic.full') / floor_full:.1f}x; "
      f"the incremental as a cold process start ({num('floor.start') * 1000:.0f} ms), its {incr_packs} pack PUT(s) "
      f"at once ({num('floor.incr') * 1000:.0f} ms) and moto's CPU time for its other requests "
      f"({', '.join(f'{n} {k} x {cost.get(k, 0) * 1000:.1f} ms' for k, n in sorted(others.items()))}: "
      f"{others_s * 1000:.0f} ms): {floor_incr:.3f} s, restic / floor = "
      f"{num('secs.restic.incr') / floor_incr:.1f}x; the emulators' CPU while lifeboat's incremental ran: "
      f"{num('servercpu.incr.s3') * 1000:.0f} ms")
    P(f"   for scale, the same runs against the local vault: restic-on-moto / lifeboat-local = "
      f"{num('secs.restic.full') / num('secs.full.local'):.1f}x initial, "
      f"{num('secs.restic.incr') / num('secs.incr.local'):.1f}x incremental (not the target's peer)")

    P("\nSummary against the targets:")
    rows = [(f"2. incremental requests, {r['packs.large']} / {r['packs.small']} packs", ok2, f"{req_ratio:.2f}, target 1.00")]
    for v in ("az", "s3"):
        d, l = num(f"secs.restore.{v}"), num(f"secs.restore.{v}.delayed")
        rows.append((f"3. restore from {v}, delayed / direct", ok3[v], f"{d / l:.2f}, target >= 0.50"))
    for phase, label, target in (("full", "initial", 3.0), ("incr", "incremental", 50.0)):
        ratio = num(f"secs.restic.{phase}") / num(f"secs.{phase}.s3")
        rows.append((f"4. restic / lifeboat, {label}", ok4[phase], f"{ratio:.1f}x, target >= {target:.0f}x"))
    rows.append(("4. restic / moto's intake alone, initial", None,
                 f"{num('secs.restic.full') / floor_full:.1f}x: the client's reading and sealing left out"))
    rows.append(("4. restic / moto's floor for these requests", None,
                 f"{num('secs.restic.incr') / floor_incr:.1f}x: start, packs, moto's CPU for the rest"))
    for label, ok, detail in rows:
        P(f"   {label:<44}{verdict(ok)}  ({detail})")
    print("\n".join(out))


if __name__ == "__main__":
    main(*sys.argv[1:])
PY
h() { $py "$helper" "$@"; }
results=$dir/results.txt
: >"$results"
put() { printf '%s\t%s\n' "$1" "$2" >>"$results"; }
logs=$dir/logs
mkdir -p "$logs"

load0=$(cut -d' ' -f1-3 /proc/loadavg)
say "start: load average $load0, work directory $dir"
if [ -n "${LIFEBOAT_BIN:-}" ]; then
  built=$LIFEBOAT_BIN
else
  say "building lifeboat (release)"
  cargo build --release -p cli >&2 || die "cargo build --release -p cli failed (the tree may be mid-edit: retry, or set LIFEBOAT_BIN)"
  built=${CARGO_TARGET_DIR:-$repo/target}/release/lifeboat
fi
if [ -n "${DELAY_PROXY_BIN:-}" ]; then
  proxy_built=$DELAY_PROXY_BIN
else
  cargo build --release -p vm-tests --example delay_proxy >&2 || die "building the delay_proxy example failed"
  proxy_built=${CARGO_TARGET_DIR:-$repo/target}/release/examples/delay_proxy
fi
# Private copies: another build in the same tree must not swap them mid-run.
lb=$dir/lifeboat
proxy_bin=$dir/delay_proxy
cp "$built" "$lb"
cp "$proxy_built" "$proxy_bin"
say "versions: $("$lb" --version), $(restic version | cut -d' ' -f1-2)"

# ---- the servers ----
# start_server NAME READY_TEXT CMD...: CMD's "PORT" replaced by a free port;
# in a process group of its own, stdin from /dev/null; waits for READY_TEXT.
# Sets server_port (not a $(...): the server must stay this shell's child).
start_server() {
  local name=$1 ready=$2 port log pid
  shift 2
  for attempt in 1 2 3; do
    port=$(h free-port)
    log=$logs/$name.log
    setsid "${@//PORT/$port}" </dev/null >"$log" 2>&1 &
    pid=$!
    for _ in $(seq 600); do
      grep -q "$ready" "$log" 2>/dev/null && break
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if grep -q "$ready" "$log"; then
      groups+=("$pid")
      server_port=$port
      return 0
    fi
    kill -TERM -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    grep -qiE 'EADDRINUSE|already in use|is in use' "$log" || { cat "$log" >&2; die "$name did not start"; }
  done
  die "$name: no free port in 3 attempts"
}
start_server azurite "successfully listens" "$azurite_bin" --blobHost 127.0.0.1 --blobPort PORT \
  --inMemoryPersistence --loose --skipApiVersionCheck --disableTelemetry
az_port=$server_port
PYTHONUNBUFFERED=1 start_server moto "Running on http://127.0.0.1" "$moto_bin" -H 127.0.0.1 -p PORT
s3_port=$server_port
az_log=$logs/azurite.log
s3_log=$logs/moto.log
say "Azurite on 127.0.0.1:$az_port, moto on 127.0.0.1:$s3_port"

export AWS_ENDPOINT_URL=http://127.0.0.1:$s3_port AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing AWS_ALLOW_HTTP=true
export AZURE_STORAGE_ENDPOINT=http://127.0.0.1:$az_port/devstoreaccount1 AZURE_ALLOW_HTTP=true
export AZURE_STORAGE_ACCOUNT_KEY=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==
export LIFEBOAT_HOME=$dir/home
export RESTIC_PASSWORD=bench-restic-password RESTIC_CACHE_DIR=$dir/restic-cache
restic_repo=s3:http://127.0.0.1:$s3_port/lbbench-restic

curl -fsS -X PUT "http://127.0.0.1:$s3_port/lbbench-s3" >/dev/null || die "creating bucket lbbench-s3 on moto"
curl -fsS -X PUT "http://127.0.0.1:$s3_port/lbbench-restic" >/dev/null || die "creating bucket lbbench-restic on moto"
h az-container "$az_port" lbbench || die "creating container lbbench on Azurite"

declare -A vault_of=([local]=$dir/local-vault [az]=az://devstoreaccount1/lbbench [s3]=s3://lbbench-s3)
declare -A disk_of=([local]=d-local [az]=d-az [s3]=d-s3)
img_of() { echo "$dir/img-$1.raw"; }

say "generating the $size_arg image (seed $seed) and its copies"
$py "$bench_py" gen-image "$(img_of local)" "$size" "$seed" >&2
cp "$(img_of local)" "$(img_of az)"
cp "$(img_of local)" "$(img_of s3)"
"$lb" key new --out "$dir/k.key" >/dev/null
for v in local az s3; do
  "$lb" vault init "${vault_of[$v]}" --key "$dir/k.key" >/dev/null || die "vault init ${vault_of[$v]}"
  "$lb" protect "${disk_of[$v]}" --image "$(img_of "$v")" --vault "${vault_of[$v]}" --key "$dir/k.key" \
    --block-size 64KiB >/dev/null || die "protect ${disk_of[$v]}"
done

cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }
hz=$(getconf CLK_TCK)
# CPU clock ticks (user + system) of both servers so far (Azurite's wrapper
# execs node, so the pid started is the server's).
# Fields after the command name's closing parenthesis: utime is the 12th.
server_ticks() { cat "/proc/${groups[0]}/stat" "/proc/${groups[1]}/stat" | sed 's/^.*) //' | awk '{t += $12 + $13} END {print t}'; }
now() { date +%s.%N; }
# timed KEY LOG CMD...: runs CMD cold, fails the bench if it fails; records
# secs.KEY and http.KEY (request lines both servers logged meanwhile).
timed() {
  local key=$1 log=$2 t0 t1 az0 s30 az1 s31 c0 c1 rc=0
  shift 2
  read -r az0 s30 <<<"$(h settle "$az_log" "$s3_log")"
  c0=$(server_ticks)
  cold
  t0=$(now)
  /usr/bin/time -f '%U %S' -o "$log.cpu" "$@" >"$log.out" 2>"$log.err" || rc=$?
  t1=$(now)
  [ "$rc" -eq 0 ] || { cat "$log.err" >&2; die "failed (rc $rc): $*"; }
  read -r az1 s31 <<<"$(h settle "$az_log" "$s3_log")"
  c1=$(server_ticks)
  put "secs.$key" "$($py -c "print($t1 - $t0)")"
  put "http.$key" "$((az1 - az0 + s31 - s30))"
  put "s3lines.$key" "$s30 $s31"
  put "cpu.$key" "$(awk '{print $1 + $2}' "$log.cpu")"
  put "servercpu.$key" "$($py -c "print(($c1 - $c0) / $hz)")"
}
# ship KEY DISK: one timed `lifeboat ship DISK --once --json`; records its
# requests, index_listed and bytes_shipped too.
ship() {
  local key=$1 disk=$2
  timed "$key" "$logs/ship-$key" "$lb" ship "$disk" --once --json
  put "req.$key" "$(h field "$logs/ship-$key.out" requests)"
  put "listed.$key" "$(h field "$logs/ship-$key.out" index_listed)"
  put "bytes.$key" "$(h field "$logs/ship-$key.out" bytes_shipped)"
  put "pages.$key" "$(h field "$logs/ship-$key.out" pages)"
  say "  $key: $(tail -1 "$logs/ship-$key.out")"
}
# change DISK REP: CHANGE_PCT% of the 64 KiB blocks through `lifeboat filter`
# (seeded by SEED and REP: the same blocks and bytes for the same REP).
change() {
  local disk=$1 rep=$2 sock=$dir/filter.sock flog=$logs/filter-$1-$2.log
  rm -f "$sock"
  "$lb" filter "$disk" --listen "unix:$sock" 2>"$flog" &
  filter_pid=$!
  for _ in $(seq 300); do
    grep -q "listening on" "$flog" 2>/dev/null && break
    kill -0 "$filter_pid" 2>/dev/null || { cat "$flog" >&2; die "lifeboat filter $disk exited"; }
    sleep 0.1
  done
  grep -q "listening on" "$flog" || die "lifeboat filter $disk did not start within 30 s"
  $py "$bench_py" change "nbd+unix:///$disk?socket=$sock" "$size" "$change_pct" "$seed" "$rep" \
    "$logs/changes-$disk-$rep.json" >&2 || die "writing the changes through lifeboat filter $disk"
  kill -TERM "$filter_pid"
  wait "$filter_pid" || die "lifeboat filter $disk did not stop cleanly: $(tail -3 "$flog")"
  filter_pid=
  "$lb" dirty "$disk" --json >"$logs/dirty-$disk-$rep.json" || die "lifeboat dirty $disk"
  $py -c '
import json, sys
d, c = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
if d["dirty_blocks"] != c["blocks"]:
    sys.exit("lifeboat dirty lists %d blocks, %d were written" % (d["dirty_count"], len(c["blocks"])))' \
    "$logs/dirty-$disk-$rep.json" "$logs/changes-$disk-$rep.json" || die "the dirty map of $disk does not match the writes"
}
restic_backup() { # KEY
  timed "restic.$1" "$logs/restic-$1" restic -r "$restic_repo" backup --json --host bench "$(img_of s3)"
  local summary new changed added
  summary=$(h restic-summary "$logs/restic-$1.out") || die "restic backup ($1) printed no summary"
  read -r new changed added <<<"$summary"
  put "restic.$1.changed" "$changed"
  put "restic.$1.added" "$added"
  say "  restic.$1: $new new, $changed changed, $added bytes added"
}

put size "$size"
put size_h "$size_arg"
put change_pct "$change_pct"
put one_way "$one_way"
put cores "$(nproc)"
put load0 "$load0"
put s3log "$s3_log"
put cmd_ship "lifeboat ship NAME --once --json"
put cmd_restore "lifeboat restore NAME --point latest --out FILE (AWS_ENDPOINT_URL / AZURE_STORAGE_ENDPOINT at the server or the delay line)"
put cmd_restic "restic -r $restic_repo backup --json --host bench IMAGE (RESTIC_PASSWORD; restic init first, untimed)"

# ---- 1 and 4: full syncs, restic's first backup ----
say "1. full syncs (and restic's first backup, section 4)"
for v in local az s3; do ship "full.$v" "${disk_of[$v]}"; done
restic -r "$restic_repo" init >"$logs/restic-init.log" 2>&1 || { cat "$logs/restic-init.log" >&2; die "restic init"; }
restic_backup full

# ---- 1 and 4: the same changes on every disk, the incrementals ----
say "1. ${change_pct}% changed through lifeboat filter on each disk; the incrementals"
for v in local az s3; do change "${disk_of[$v]}" 1; done
put changed_blocks "$($py -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["blocks"]))' "$logs/changes-d-s3-1.json")"
for v in local az s3; do ship "incr.$v" "${disk_of[$v]}"; done
restic_backup incr
[ "$(grep -P '^restic\.incr\.changed\t' "$results" | cut -f2)" = 1 ] ||
  die "restic's second backup did not see the image changed: its time would not be a re-read"

# ---- 4: the emulator's floor, for the restic targets ----
# What moto itself needs, with no client work but the socket's: the full
# sync's bytes in objects of its packs' mean size, two PUTs in flight, with
# a checksum header as lifeboat sends one; the incremental's packs, all at once; a request
# round trip; and a cold process start.
say "4. moto's own floor: the same bytes from a minimal client"
full_packs=$(h field "$logs/ship-full.s3.out" packs)
full_bytes=$(h field "$logs/ship-full.s3.out" bytes_shipped)
incr_bytes=$(h field "$logs/ship-incr.s3.out" bytes_shipped)
cold
put floor.full "$(h intake "$s3_port" lbbench-floor "$full_packs" "$((full_bytes / full_packs))" 2)"
incr_packs=$(h field "$logs/ship-incr.s3.out" packs)
put floor.incr_packs "$incr_packs"
put floor.incr "$(h intake "$s3_port" lbbench-floor "$incr_packs" "$((incr_bytes / incr_packs))" "$incr_packs")"
put floor.request_cpu "$(h request-cpu "$s3_port" "${groups[1]}")"
read -r incr_from incr_to <<<"$(grep -P '^s3lines\.incr\.s3\t' "$results" | cut -f2)"
put floor.incr_kinds "$(h request-kinds "$s3_log" "$incr_from" "$incr_to")"
cold
t0=$(now)
"$lb" --version >/dev/null
put floor.start "$($py -c "print($(now) - $t0)")"

# ---- 3: restores, direct and through the delay line ----
say "3. restores (direct, then through ${one_way} ms each way)"
az_proxy_port=
s3_proxy_port=
for v in az s3; do
  port_var=${v}_port
  "$proxy_bin" "${!port_var}" "$one_way" >"$logs/proxy-$v.port" &
  pids+=($!)
  for _ in $(seq 200); do [ -s "$logs/proxy-$v.port" ] && break; sleep 0.05; done
  [ -s "$logs/proxy-$v.port" ] || die "delay_proxy for $v did not start"
  printf -v "${v}_proxy_port" '%s' "$(cat "$logs/proxy-$v.port")"
done
restore() { # KEY V [ENV=VALUE]: restore disk V's latest point, compare with its image
  local key=$1 v=$2 out=$dir/restored.raw
  shift 2
  rm -f "$out"
  timed "$key" "$logs/$key" env "$@" "$lb" restore "${disk_of[$v]}" --point latest --out "$out"
  cmp "$out" "$(img_of "$v")" || die "$key: the restored image differs from ${disk_of[$v]}'s image"
  rm -f "$out"
  say "  $key: $(tail -1 "$logs/$key.out")"
}
restore restore.local local
restore restore.az az
restore restore.az.delayed az "AZURE_STORAGE_ENDPOINT=http://127.0.0.1:$az_proxy_port/devstoreaccount1"
restore restore.s3 s3
restore restore.s3.delayed s3 "AWS_ENDPOINT_URL=http://127.0.0.1:$s3_proxy_port"

# ---- 2: requests against the vault's size ----
say "2. the S3 vault at $packs_small, then $packs_large packs"
head -c 4096 /dev/urandom >"$dir/img-seed.raw"
h s3-keys "$s3_port" lbbench-s3 packs/ | sort >"$logs/packs-before"
"$lb" protect d-seed --image "$dir/img-seed.raw" --vault s3://lbbench-s3 --key "$dir/k.key" --block-size 4KiB >/dev/null ||
  die "protect d-seed"
"$lb" ship d-seed --once --json >"$logs/ship-seed.out" 2>"$logs/ship-seed.err" || die "ship d-seed: $(cat "$logs/ship-seed.err")"
h s3-keys "$s3_port" lbbench-s3 packs/ | sort >"$logs/packs-after"
seed_pack=$(comm -13 "$logs/packs-before" "$logs/packs-after")
[ "$(echo "$seed_pack" | wc -l)" -eq 1 ] && [ -n "$seed_pack" ] || die "expected one new pack from d-seed, got: $seed_pack"
# The restore probe: another one-block disk, whose pack is not copied (a
# restore refuses a copy: its bytes do not hash to its name).
head -c 4096 /dev/urandom >"$dir/img-probe.raw"
"$lb" protect d-probe --image "$dir/img-probe.raw" --vault s3://lbbench-s3 --key "$dir/k.key" --block-size 4KiB >/dev/null ||
  die "protect d-probe"
"$lb" ship d-probe --once --json >"$logs/ship-probe.out" 2>"$logs/ship-probe.err" || die "ship d-probe: $(cat "$logs/ship-probe.err")"
put packs.base "$(h s3-keys "$s3_port" lbbench-s3 packs/ | wc -l)"
restore_probe() { # KEY [ENV=VALUE]: restore the one-block disk d-probe
  local key=$1
  shift
  rm -f "$dir/probe.raw"
  timed "probe.$key" "$logs/probe-$key" env "$@" "$lb" restore d-probe --point latest --out "$dir/probe.raw"
  cmp "$dir/probe.raw" "$dir/img-probe.raw" || die "the restored d-probe differs from its image"
}
restore_probe base
rep=2
for s in small large; do
  target_var=packs_$s
  t0=$(now)
  packs=$(h s3-fill "$s3_port" lbbench-s3 "$seed_pack" "${!target_var}") || die "topping up packs/"
  say "  packs/ holds $packs objects (topped up in $($py -c "print(round($(now) - $t0, 1))") s)"
  put "packs.$s" "$packs"
  rm -rf "$LIFEBOAT_HOME/cache/index"
  ship "relist.$s" d-s3
  [ "$(grep -P "^listed\.relist\.$s\t" "$results" | cut -f2)" = true ] || die "the cycle after deleting the index cache did not list the vault"
  change d-s3 "$rep"
  ship "incr.$s" d-s3
  restore_probe "$s"
  if [ "$s" = small ]; then restore_probe small.delayed "AWS_ENDPOINT_URL=http://127.0.0.1:$s3_proxy_port"; fi
  rep=$((rep + 1))
done

put load_end "$(cut -d' ' -f1-3 /proc/loadavg)"
say "end: load average $(cut -d' ' -f1-3 /proc/loadavg)"
h report "$results"
