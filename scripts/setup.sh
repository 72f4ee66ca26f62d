#!/usr/bin/env bash
# Installs every system package Lifeboat's build, tests and benchmarks need,
# unpacks the Debian cloud kernel that the vm-tests boot, and installs the
# cloud-storage emulators the cloud-vault tests run against
# (vm-tests/src/cloud_servers.rs): Azurite (Azure Blob, from npm) and moto's
# server (S3, from PyPI), both pinned and kept in the cache, nothing global.
# Idempotent: a second run installs nothing and finishes in about a second.
#
#   scripts/setup.sh            packages for build + tests + vm-tests + benches
#                               (restic, borgbackup, rsync: benches/replicate-bench.sh)
#
# Environment:
#   LIFEBOAT_CACHE   where the unpacked guest kernel and the emulators live
#                    (default: .cache/ in the repo): kernel/, qga/, azurite/,
#                    node/ (only if the host's Node.js is too old), moto-venv/
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
# python3-venv: the venv of moto's server (below) is made with Debian's python3.
# debootstrap: benches/compress-bench.sh builds a Debian system to compress.
# chromium: cli/tests/profile.rs renders the capacity plan's HTML report headless.
base_pkgs=(libnbd-bin python3-libnbd nbdkit fio busybox-static cpio e2fsprogs gzip iproute2 python3 openssl
  restic borgbackup rsync python3-venv debootstrap chromium)
# npm fetches Azurite (below). A host without it gets Debian's nodejs and npm:
# that Node.js (18) is too old to run Azurite, but npm is all it is needed for.
command -v npm >/dev/null 2>&1 || base_pkgs+=(nodejs npm)
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
# Azurite, the Azure Blob emulator, from npm into the cache. Azurite 3.36 and
# later need Node.js 22 or newer (Debian 12's nodejs is 18): when the node on
# PATH is older, npm's node-linux-* package (the official Node.js binary) is
# unpacked into $cache/node. The harness runs $cache/azurite/azurite-blob, a
# wrapper written here that names the node Azurite runs on.
azurite_version=3.37.0
node_version=22.23.5 # used only when the host's node is older than 22
adir=$cache/azurite
awrap=$adir/azurite-blob
amain=$adir/node_modules/azurite/dist/src/blob/main.js
anode=$(sed -n 's/^node=//p' "$awrap" 2>/dev/null || true)
if ! grep -qsx "# azurite $azurite_version" "$awrap" || [ ! -x "$anode" ] || [ ! -f "$amain" ]; then
  anode=$(command -v node || true)
  major=0
  [ -z "$anode" ] || major=$("$anode" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
  if [ "$major" -lt 22 ]; then
    case $(uname -m) in
      x86_64) narch=x64 ;;
      aarch64) narch=arm64 ;;
      *) say "npm has no Node.js package for $(uname -m): install Node.js >= 22, then run this again"; exit 1 ;;
    esac
    anode=$cache/node/node_modules/node-linux-$narch/bin/node
    if [ ! -x "$anode" ] || [ "$("$anode" --version)" != "v$node_version" ]; then
      say "installing Node.js $node_version from npm into $cache/node (the host's node is older than 22)"
      npm install --prefix "$cache/node" --save-exact --no-audit --no-fund --ignore-scripts --loglevel=error \
        "node-linux-$narch@$node_version"
    fi
  fi
  say "installing azurite $azurite_version from npm into $adir (to run on $anode, $("$anode" --version))"
  # --ignore-scripts: no install script of its ~450 dependencies runs; Azurite needs none.
  npm install --prefix "$adir" --save-exact --no-audit --no-fund --ignore-scripts --loglevel=error "azurite@$azurite_version"
  printf '%s\n' '#!/bin/sh' "# azurite $azurite_version" \
    '# Written by scripts/setup.sh: the Azurite Blob service on the Node.js it needs.' \
    "node=$anode" "exec \"\$node\" \"$amain\" \"\$@\"" >"$awrap"
  chmod +x "$awrap"
fi

# moto's server, the S3 emulator, from PyPI into a venv in the cache. The venv
# is made with Debian's python3 (the python3 first on PATH may be another
# interpreter), as Debian forbids pip installs into its own python (PEP 668).
moto_version=5.2.6
mvenv=$cache/moto-venv
if [ ! -x "$mvenv/bin/moto_server" ] ||
  ! ls -d "$mvenv"/lib/python3*/site-packages/moto-"$moto_version".dist-info >/dev/null 2>&1; then
  say "installing moto[server] $moto_version from PyPI into $mvenv"
  # A venv whose python is gone (Debian's python3 upgraded) is made anew.
  "$mvenv/bin/python" -c '' 2>/dev/null || /usr/bin/python3 -m venv --clear "$mvenv"
  "$mvenv/bin/pip" install -q --disable-pip-version-check "moto[server]==$moto_version"
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
say "ok: azurite $azurite_version ($awrap), moto $moto_version ($mvenv/bin/moto_server)"
