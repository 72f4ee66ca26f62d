#!/usr/bin/env bash
# THE test command (README, .ci/run): installs what the tests need, checks the
# formatting (cargo fmt), builds, and
# runs the test suite with cargo-nextest.
#
#   scripts/test.sh           quick pass: every test that is not #[ignore]d
#                             (unit, property, golden-vector, and the real-client
#                             interop / crash / snapshot tests in cli/tests);
#                             a few minutes
#   scripts/test.sh --full    also the long suites: tests marked #[ignore] (the
#                             vm-tests that boot a QEMU guest through the filter),
#                             run with `cargo nextest run --run-ignored all`
#   LIFEBOAT_FULL=1           same as --full
#
# Any other arguments are passed to `cargo nextest run` (e.g. a filter:
# `scripts/test.sh -E 'test(/snapshot/)'`).
#
# Environment: LIFEBOAT_CACHE (guest kernel + initramfs cache, default .cache/),
# LIFEBOAT_VM_TIMEOUT (seconds per VM boot, default 300).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

full=${LIFEBOAT_FULL:-0}
args=()
for a in "$@"; do
  case "$a" in
    --full) full=1 ;;
    *) args+=("$a") ;;
  esac
done

say() { printf '[test] %s\n' "$*" >&2; }
start=$(date +%s)

bash scripts/setup.sh

# Formatting first: it takes a second, and a red run says so before the build.
if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --all -- --check >/dev/null || { say "unformatted code: run cargo fmt --all"; exit 1; }
else
  say "rustfmt is not installed: formatting not checked"
fi

# The vm-tests crate cannot depend on the binary, so build it first; its
# harness finds it at target/debug/lifeboat (or $LIFEBOAT_BIN).
say "building"
cargo build --workspace
export LIFEBOAT_BIN=${LIFEBOAT_BIN:-${CARGO_TARGET_DIR:-$repo/target}/debug/lifeboat}

nextest=(cargo nextest run --workspace --no-fail-fast)
if [ "$full" = 1 ]; then
  say "full pass: quick tests + #[ignore]d long suites (vm-tests)"
  nextest+=(--run-ignored all)
else
  say "quick pass (add --full for the vm-tests)"
fi
# `${args[@]+...}`: bash < 4.4 treats an empty array as unset under `set -u`.
"${nextest[@]}" ${args[@]+"${args[@]}"}

say "done in $(( $(date +%s) - start )) s"
