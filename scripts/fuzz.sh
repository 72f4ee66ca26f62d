#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/fuzz_targets for real, on the stable
# toolchain, one after another, and prints how many inputs each one ran.
#
#   scripts/fuzz.sh                      # every target, 10^7 executions each
#   FUZZ_RUNS=100000 scripts/fuzz.sh     # fewer executions
#   scripts/fuzz.sh control_request pack # only these targets
#   FUZZ_MAX_SECONDS=600 scripts/fuzz.sh # also stop each target after 600 s
#
# How it runs on stable: with `--sanitizer none` cargo-fuzz (0.13, installed
# with `cargo install cargo-fuzz --locked` if absent) passes rustc only stable
# flags (`-Cpasses=sancov-module`, `-Cllvm-args=-sanitizer-coverage-*`,
# `--cfg fuzzing`) and no `-Z` flag, so no nightly and no RUSTC_BOOTSTRAP is
# needed (checked on rustc 1.95: the targets build and are instrumented).
# A real sanitizer (`--sanitizer address`, cargo-fuzz's default) would pass
# `-Zsanitizer` and need a nightly-built std, hence `--sanitizer none`; the
# targets are safe Rust, so what the fuzzer looks for is panics (failed
# round-trip asserts, overflow, out-of-range slicing). The build is optimized
# with debug assertions and overflow checks ON (cargo-fuzz's default without
# -O), so an arithmetic overflow is a crash too. libFuzzer itself is built from C++ source
# by libfuzzer-sys with the system C++ compiler (g++).
#
# Seed corpora go to fuzz/corpus/TARGET (gitignored): the golden fixtures of
# disk-format/tests/fixtures for the vault formats, a few hand-written inputs
# for the others. libFuzzer adds what it finds there, so a second run starts
# where the first left off.
#
# Exit status: non-zero if any target crashed (the artifact path is printed;
# reproduce with `cargo fuzz run TARGET ARTIFACT --sanitizer none`) or did not
# finish. Not part of scripts/test.sh; CI does not run it.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
runs=${FUZZ_RUNS:-10000000}
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$root/fuzz/target}
fuzz_flags=(--sanitizer none --fuzz-dir "$root/fuzz")

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz is not installed; installing it with cargo install cargo-fuzz --locked" >&2
    cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    targets=()
    for f in fuzz/fuzz_targets/*.rs; do
        targets+=("$(basename "$f" .rs)")
    done
fi

fixtures=disk-format/tests/fixtures
seed() {
    local target=$1 dir=fuzz/corpus/$1
    mkdir -p "$dir"
    case $target in
        pack) cp "$fixtures"/vault-v1/*.pack "$dir"/ ;;
        map_page) cp "$fixtures"/vault-v1/*.page "$dir"/ ;;
        page_pack) cp "$fixtures"/vault-v1/*.pagepack "$dir"/ ;;
        root | root_ext) cp "$fixtures"/vault-v1/*.root "$dir"/ ;;
        key_file) cp "$fixtures"/vault-v1/*.key "$dir"/ ;;
        control_request)
            local point=00112233445566778899aabbccddeeff:7:$(printf '5c%.0s' {1..32}):3
            printf 'info\n' >"$dir/info"
            printf 'cut dirty\n' >"$dir/cut-dirty"
            printf 'cut full\n' >"$dir/cut-full"
            printf 'blocks\nread 0 16\n' >"$dir/read"
            printf 'finish %s\n' "$point" >"$dir/finish"
            printf 'finish verified %s\nabort\n' "$point" >"$dir/finish-verified"
            ;;
        site_request)
            printf 'GET /v1/vaults/v/packs/abcdef\nbytes=0-99\n"b3-00ff"\npacks/abcdef\nroots/web/00000000000000000001\n' >"$dir/get"
            printf 'GET /v1/vaults/v/list/roots?prefix=web/&after=web/1\n\n\n' >"$dir/list"
            ;;
        nbd_request)
            # NBD_REQUEST_MAGIC, flags 0, type READ, cookie, offset 0, length 4096, then a size.
            printf '\x25\x60\x95\x13\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x10\x00\x00\x00\x00\x00\x00\x10\x00\x00' >"$dir/read"
            ;;
        nbd_option)
            # IHAVEOPT, NBD_OPT_GO, length 10: name length 4 "disk", no info requests.
            printf 'IHAVEOPT\x00\x00\x00\x07\x00\x00\x00\x0a\x00\x00\x00\x04disk\x00\x00' >"$dir/go"
            ;;
    esac
}

# Build every target once before the clock starts.
nice -n 10 cargo fuzz build "${fuzz_flags[@]}" >&2

declare -a rows
status=0
for target in "${targets[@]}"; do
    seed "$target"
    log=$(mktemp "/tmp/fuzz-$target.XXXXXX.log")
    extra=()
    case $target in
        # The filter reads request lines of at most 256 bytes; a few lines per
        # input is plenty, and 4 KiB inputs of garbage ran ~10x slower.
        control_request | site_request) extra+=(-max_len=1024) ;;
    esac
    if [ -n "${FUZZ_MAX_SECONDS:-}" ]; then
        extra+=("-max_total_time=$FUZZ_MAX_SECONDS")
    fi
    echo "fuzz.sh: $target: $runs runs (log $log)" >&2
    set +e
    nice -n 10 cargo fuzz run "${fuzz_flags[@]}" "$target" -- -runs="$runs" "${extra[@]}" >"$log" 2>&1
    rc=$?
    set -e
    done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1 || true)
    crashes=0
    if [ $rc -ne 0 ] || [ -z "$done_line" ]; then
        status=1
        crashes=1
        tail -40 "$log" >&2
        artifact=$(grep -oE "Test unit written to [^ ]+" "$log" | tail -1 | sed 's/Test unit written to //' || true)
        echo "fuzz.sh: $target FAILED (exit $rc); artifact: ${artifact:-none}; full log $log" >&2
    fi
    if [ -n "$done_line" ]; then
        n=$(echo "$done_line" | awk '{print $2}')
        s=$(echo "$done_line" | awk '{print $5}')
    else
        n=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#' || true)
        n=${n:-0}
        s=?
    fi
    if [ "$s" != "?" ] && [ "$s" -gt 0 ]; then
        rate=$((n / s))
    else
        rate=-
    fi
    rows+=("$(printf '%-16s %12s %8s %10s %8s' "$target" "$n" "$s" "$rate" "$crashes")")
done

printf '\n%-16s %12s %8s %10s %8s\n' TARGET executions seconds exec/s crashes
for r in "${rows[@]}"; do
    echo "$r"
done
exit $status
