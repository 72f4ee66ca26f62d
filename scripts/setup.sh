#!/usr/bin/env bash
# Installs every system package Lifeboat's build, tests and benchmarks need, and
# unpacks the Debian cloud kernel that the vm-tests boot. Idempotent: a second
# run installs nothing and finishes in about a second.
#
#   scripts/setup.sh            packages for build + tests + vm-tests + benches
#                               (restic, borgbackup, rsync: benches/replicate-bench.sh)
#
# Environment:
#   LIFEBOAT_CACHE   where the unpacked guest kernel lives (default: .cache/ in the repo)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${LIFEBOAT_CACHE:-$repo/.cache}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo

say() { printf '[setup] %s\n' "$*" >&2; }

# Packages from bookworm itself.
# python3-libnbd gives nbdsh (run as PATH=/usr/bin:$PATH nbdsh: the python3 first
# on PATH may be another interpreter without the nbd module).
# restic, borgbackup, rsync: the peers of benches/replicate-bench.sh.
# openssl: cli/tests/nbd_tls.rs makes its CA and certificates with it.
base_pkgs=(libnbd-bin python3-libnbd nbdkit fio busybox-static cpio e2fsprogs gzip iproute2 python3 openssl
  restic borgbackup rsync)
# QEMU must come from bookworm-backports: bookworm's qemu-system-x86 7.2 would
# replace the backports qemu-utils 10.x (qemu-img, qemu-io, qemu-nbd) with 7.2.
bpo_pkgs=(qemu-system-x86 qemu-utils)

missing=()
for p in "${base_pkgs[@]}" "${bpo_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  say "installing: ${missing[*]}"
  bpo_list=/etc/apt/sources.list.d/lifeboat-backports.list
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo 'deb http://deb.debian.org/debian bookworm-backports main' | $SUDO tee "$bpo_list" >/dev/null
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${base_pkgs[@]}"
  $SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports "${bpo_pkgs[@]}"
fi

# The guest kernel for vm-tests: the Debian cloud kernel (ext4 built in, LZ4),
# fetched as a .deb and unpacked into the cache; nothing touches /boot.
kdir=$cache/kernel
if ! ls "$kdir"/boot/vmlinuz-* >/dev/null 2>&1; then
  say "fetching the Debian cloud kernel into $kdir"
  mkdir -p "$kdir" "$cache/deb"
  resolve() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
  ver=$(resolve)
  if [ -z "$ver" ]; then
    # A fresh machine may have no package lists yet.
    $SUDO apt-get update -qq
    ver=$(resolve)
  fi
  [ -n "$ver" ] || { say "cannot resolve linux-image-cloud-amd64 (apt-get update did not help)"; exit 1; }
  (cd "$cache/deb" && apt-get download "$ver")
  dpkg-deb -x "$cache"/deb/"$ver"_*.deb "$kdir"
fi
# The QEMU guest agent for the vm-test guests that freeze their file systems
# (app-consistent points): the package's binary, unpacked into the cache; its
# shared libraries are the host's (the same Debian), copied into the guest's
# initramfs by the test harness. Nothing is installed on the host.
qdir=$cache/qga
if [ ! -x "$qdir/usr/sbin/qemu-ga" ]; then
  say "fetching qemu-guest-agent into $qdir"
  mkdir -p "$qdir" "$cache/deb"
  (cd "$cache/deb" && apt-get download -t bookworm-backports qemu-guest-agent 2>/dev/null || {
    $SUDO apt-get update -qq && apt-get download -t bookworm-backports qemu-guest-agent; })
  dpkg-deb -x "$cache"/deb/qemu-guest-agent_*.deb "$qdir"
fi
# The test runner. The machine image ships it; a machine without it gets it from crates.io.
if ! cargo nextest --version >/dev/null 2>&1; then
  say "installing cargo-nextest from crates.io"
  cargo install --locked cargo-nextest
fi

# Leases name the holder's host by /etc/machine-id (vault/src/lease.rs); a
# container image may ship it empty. Give this host one, as systemd would.
if [ ! -s /etc/machine-id ]; then
  say "writing a machine id to /etc/machine-id (it was missing or empty)"
  tr -d '-' < /proc/sys/kernel/random/uuid > /etc/machine-id
fi

say "ok: $(qemu-system-x86_64 --version | head -1); kernel $(ls "$kdir"/boot/vmlinuz-* | head -1)"
