#!/usr/bin/python3
"""Helpers for benches/replicate-bench.sh (run with /usr/bin/python3: the `nbd`
module comes from Debian's python3-libnbd).

  bench.py gen-image IMG SIZE SEED           the initial image (see below)
  bench.py change URI SIZE PCT SEED REP OUT  write PCT% of the 64 KiB blocks through NBD
  bench.py run RESULTS PHASE REP PEER LOG -- CMD...   time one command (wall, CPU, load)
  bench.py report RESULTS                    the two tables, medians over repetitions

Image: SIZE bytes in 4 MiB extents; a seeded 25% of the extents are zero
(written out, allocated: no holes for SEEK_DATA to skip), the other 75% hold
incompressible pseudo-random bytes (Python's Mersenne Twister seeded per extent,
so every 64 KiB block is unique: nothing dedups, nothing compresses).
Changes: round(blocks * PCT / 100) distinct 64 KiB blocks, picked with a seeded
RNG over the whole disk (zero extents included), each overwritten with fresh
random bytes.
"""
import json
import os
import random
import statistics
import subprocess
import sys
import time

EXTENT = 4 << 20
BLOCK = 64 << 10


def gen_image(path, size, seed):
    size, n = int(size), int(size) // EXTENT
    zero = set(random.Random(f"zero-extents:{seed}").sample(range(n), n // 4))
    zeros = bytes(EXTENT)
    with open(path, "wb") as f:
        for e in range(n):
            f.write(zeros if e in zero else random.Random(f"image:{seed}:{e}").randbytes(EXTENT))
        f.flush()
        os.fsync(f.fileno())
    print(f"image {path}: {size} bytes, {n} extents of 4 MiB, {len(zero)} zero "
          f"({100 * len(zero) / n:.1f}%), {n - len(zero)} random")


def change(uri, size, pct, seed, rep, out):
    import nbd

    nblocks = int(size) // BLOCK
    count = max(1, round(nblocks * float(pct) / 100))
    rng = random.Random(f"changes:{seed}:{rep}")
    blocks = sorted(rng.sample(range(nblocks), count))
    h = nbd.NBD()
    h.connect_uri(uri)
    for b in blocks:
        h.pwrite(rng.randbytes(BLOCK), b * BLOCK)
    h.flush()
    h.shutdown()
    json.dump({"blocks": blocks, "block_size": BLOCK, "changed_bytes": count * BLOCK}, open(out, "w"))
    print(f"wrote {count} blocks of 64 KiB ({count * BLOCK} bytes) through {uri}")


def loadavg():
    return open("/proc/loadavg").read().split()[0]


def run(results, phase, rep, peer, log, cmd):
    up0 = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    l0 = loadavg()
    with open(log + ".out", "wb") as out, open(log + ".err", "wb") as err:
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.monotonic() - t0
        # What the command left in the page cache, written back: rsync does not
        # fsync, the others do (some of) it themselves.
        t1 = time.monotonic()
        os.sync()
        sync = time.monotonic() - t1
    rc = os.waitstatus_to_exitcode(status)
    up1 = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    rec = {"phase": phase, "rep": int(rep), "peer": peer, "cmd": " ".join(cmd), "rc": rc,
           "wall": wall, "sync": sync, "user": ru.ru_utime, "sys": ru.ru_stime,
           "maxrss_kib": ru.ru_maxrss, "load0": l0, "load1": loadavg(),
           "uptime_start": up0, "uptime_end": up1}
    with open(results, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(f"  {phase} rep {rep} {peer}: {wall:.2f} s wall (+{sync:.2f} s sync), "
          f"{ru.ru_utime + ru.ru_stime:.1f} s CPU, rc {rc}", file=sys.stderr)
    print(f"    uptime at start: {up0}", file=sys.stderr)
    print(f"    uptime at end:   {up1}", file=sys.stderr)
    sys.exit(rc)


def report(results):
    recs = [json.loads(l) for l in open(results)]
    runs = [r for r in recs if r.get("type") is None]
    facts = {}
    for r in recs:
        if r.get("type") == "fact":
            facts.setdefault((r["phase"], r["rep"], r["peer"]), {}).update(r["data"])
    meta = next(r for r in recs if r.get("type") == "meta")
    size, peers = meta["size"], meta["peers"]
    med = statistics.median

    def by(phase, peer):
        rs = [r for r in runs if r["phase"] == phase and r["peer"] == peer]
        fs = [facts.get((phase, r["rep"], peer), {}) for r in rs]
        return rs, fs

    def loads(rs):
        return " ".join(f"{r['load0']}>{r['load1']}" for r in rs)

    def paired(phase, others):
        rat = []
        for rep in sorted({r["rep"] for r in runs if r["phase"] == phase}):
            w = {r["peer"]: r["wall"] for r in runs if r["phase"] == phase and r["rep"] == rep}
            if "lifeboat" in w and any(o in w for o in others):
                rat.append(min(w[o] for o in others if o in w) / w["lifeboat"])
        return " ".join(f"{x:.1f}x" for x in rat) + (f" (median {med(rat):.1f}x)" if len(rat) > 1 else "")

    out = []
    P = out.append
    reps = meta["reps"]
    P(f"\nImage: {size} bytes ({size / 2**30:.2f} GiB), 75% random / 25% zero in 4 MiB extents; "
      f"{reps} repetition(s), medians shown; page cache dropped before every timed run.")
    P("MB/s = 10^6 bytes of disk brought up to date per second (image size / wall seconds).")
    P("x lifeboat = peer wall seconds / lifeboat wall seconds (> 1: lifeboat is faster).")
    P("load = 1-minute load average at start>end of each run (2 cores; other engineers compiling).\n")

    # Initial sync.
    lb_rs, _ = by("initial", "lifeboat")
    lb_init = med([r["wall"] for r in lb_rs])
    P("INITIAL SYNC (full image)")
    hdr = f"{'peer':<10}{'seconds':>9}{'+sync':>7}{'CPU s':>8}{'MB/s':>8}{'repo bytes':>14}{'repo/data':>10}{'x lifeboat':>11}  load"
    P(hdr)
    P("-" * (len(hdr) + 10))
    data_bytes = size * 3 // 4
    for peer in peers:
        rs, fs = by("initial", peer)
        if not rs:
            continue
        w = med([r["wall"] for r in rs])
        repo = med([f.get("repo_after", 0) for f in fs])
        note = " (no encryption, no history)" if peer == "rsync" else ""
        P(f"{peer:<10}{w:>9.2f}{med([r['sync'] for r in rs]):>7.2f}{med([r['user'] + r['sys'] for r in rs]):>8.1f}"
          f"{size / w / 1e6:>8.1f}{repo:>14.0f}{repo / data_bytes:>10.3f}{w / lb_init:>11.2f}  {loads(rs)}{note}")
    faster = min(med([r["wall"] for r in by("initial", p)[0]]) for p in ("restic", "borg") if by("initial", p)[0])
    ratio = faster / lb_init
    P(f"target: lifeboat >= 3x faster than the faster of restic/borg: {ratio:.2f}x -> "
      f"{'MET' if ratio >= 3 else f'MISSED by {3 / ratio:.2f}x (lifeboat would need <= {faster / 3:.2f} s)'}")
    P(f"  paired per repetition (faster of restic/borg in that rep / lifeboat): {paired('initial', ('restic', 'borg'))}")
    lbj = [f.get("ship") for f in by("initial", "lifeboat")[1] if f.get("ship")]
    if lbj:
        j = lbj[-1]
        P(f"lifeboat ship --json (last rep): millis {j['millis']}, blocks_read {j['blocks_read']}, "
          f"new {j['new_blocks']}, zero {j['zero_blocks']}, bytes_shipped {j['bytes_shipped']}, packs {j['packs']}, pages {j['pages']}")

    # Incremental.
    lb_rs, lb_fs = by("incremental", "lifeboat")
    if lb_rs:
        lb_inc = med([r["wall"] for r in lb_rs])
        P("\nINCREMENTAL CYCLE")
        changed = med([f["changed_bytes"] for f in lb_fs])
        P(f"changed: {changed:.0f} bytes ({changed / 65536:.0f} blocks of 64 KiB, {meta['change_pct']}% of the disk), "
          "written through `lifeboat filter` over NBD")
        hdr = (f"{'peer':<10}{'seconds':>9}{'+sync':>7}{'CPU s':>8}{'MB/s':>9}{'growth bytes':>14}"
               f"{'growth/chg':>11}{'x lifeboat':>11}{'verified':>10}  load")
        P(hdr)
        P("-" * (len(hdr) + 10))
        peer_walls = {}
        growth_lb = None
        for peer in peers:
            rs, fs = by("incremental", peer)
            if not rs:
                continue
            w = med([r["wall"] for r in rs])
            g = med([f["growth"] for f in fs])
            gr = med([f["growth"] / f["changed_bytes"] for f in fs])
            ok = all(f.get("verified") for f in fs)
            if peer != "lifeboat":
                peer_walls[peer] = w
            else:
                growth_lb = gr
            note = " (in place: no history)" if peer == "rsync" else ""
            P(f"{peer:<10}{w:>9.2f}{med([r['sync'] for r in rs]):>7.2f}{med([r['user'] + r['sys'] for r in rs]):>8.1f}"
              f"{size / w / 1e6:>9.1f}{g:>14.0f}{gr:>11.2f}{w / lb_inc:>11.1f}{'yes' if ok else 'NO':>10}  {loads(rs)}{note}")
        if peer_walls:
            fastest = min(peer_walls, key=peer_walls.get)
            ratio = peer_walls[fastest] / lb_inc
            P(f"target: lifeboat >= 50x faster than the fastest peer ({fastest}, {peer_walls[fastest]:.2f} s): "
              f"{ratio:.1f}x -> {'MET' if ratio >= 50 else f'MISSED by {50 / ratio:.2f}x (needs <= {peer_walls[fastest] / 50:.3f} s)'}")
            P(f"  paired per repetition (fastest peer in that rep / lifeboat): {paired('incremental', ('restic', 'borg', 'rsync'))}")
        P(f"target: lifeboat vault growth <= 1.2x the bytes changed: {growth_lb:.3f}x -> "
          f"{'MET' if growth_lb <= 1.2 else 'MISSED'}")
        for f in lb_fs:
            j = f.get("ship")
            if j:
                P(f"lifeboat ship --json (rep {f.get('rep')}): millis {j['millis']}, blocks_read {j['blocks_read']}, "
                  f"new {j['new_blocks']}, known {j['known_blocks']}, zero {j['zero_blocks']}, "
                  f"bytes_shipped {j['bytes_shipped']}, packs {j['packs']}, pages {j['pages']}; "
                  f"dirty before ship {f.get('dirty_count')}")

    P("\nLoad (uptime at the start and end of each timed run):")
    for r in runs:
        la = lambda u: u.split("load average:")[-1].strip()
        P(f"  {r['phase']:<12}rep {r['rep']} {r['peer']:<9} start {la(r['uptime_start'])}  end {la(r['uptime_end'])}")

    P("\nCommands (timed exactly as shown; repositories via RESTIC_REPOSITORY / BORG_REPO / LIFEBOAT_HOME under the work dir):")
    seen = set()
    for r in runs:
        key = (r["phase"], r["peer"])
        if key in seen:
            continue
        seen.add(key)
        P(f"  {r['phase']:<12}{r['peer']:<9} {r['cmd']}")
    P("  (borg archive names are PHASE-REP; every command ran after `sync; echo 3 > /proc/sys/vm/drop_caches`)")
    print("\n".join(out))


def fact(results, phase, rep, peer, kv):
    data = {}
    for item in kv:
        k, v = item.split("=", 1)
        try:
            data[k] = json.loads(v)
        except json.JSONDecodeError:
            data[k] = v
    data["rep"] = int(rep)
    with open(results, "a") as f:
        f.write(json.dumps({"type": "fact", "phase": phase, "rep": int(rep), "peer": peer, "data": data}) + "\n")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "gen-image":
        gen_image(*args)
    elif cmd == "change":
        change(*args)
    elif cmd == "run":
        i = args.index("--")
        run(*args[:i], args[i + 1:])
    elif cmd == "fact":
        fact(args[0], args[1], args[2], args[3], args[4:])
    elif cmd == "meta":
        with open(args[0], "a") as f:
            f.write(json.dumps({"type": "meta", "size": int(args[1]), "change_pct": args[2], "reps": int(args[3]),
                                "peers": args[4].split(",")}) + "\n")
    elif cmd == "report":
        report(*args)
    else:
        sys.exit(f"unknown command {cmd}")
