//! Benchmarks live in `benches/` (criterion) and `nbd-bench.sh` (side-by-side against qemu-nbd).
