//! Cost of recording a write: marking the blocks it touches in the live
//! bitmap of a real, memory-mapped state file (the only work besides the data
//! write that the filter adds to a VM write outside a cut).
//!
//! Run: `cargo bench -p benches --bench bitmap`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use disk_format::Geometry;
use filter::StateFile;

fn mark(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("lifeboat-bench-bitmap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("state");
    // A 1 TiB disk in 64 KiB blocks: 16 Mi blocks, a 2 MiB bitmap.
    let g = Geometry::new(1 << 40, 64 << 10).unwrap();
    StateFile::create(&path, g, [7; 16], false).unwrap();
    let state = StateFile::open(&path).unwrap();
    let live = state.live();
    let mut group = c.benchmark_group("mark");
    group.throughput(Throughput::Elements(1));
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    group.bench_function("4k write, random block, 1 TiB disk", |b| {
        b.iter(|| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let blk = x % g.block_count;
            live.set_range(black_box(blk..blk + 1));
        })
    });
    group.bench_function("4k write, same block (already set)", |b| b.iter(|| live.set_range(black_box(5..6))));
    group.bench_function("1 MiB write spanning 16 blocks", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i = (i + 16) % (g.block_count - 16);
            live.set_range(black_box(i..i + 16));
        })
    });
    group.finish();
    drop(state);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, mark);
criterion_main!(benches);
