//! A small seeded PRNG (SplitMix64): every schedule is a pure function of
//! its seed.

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough to pick
/// schedules; not for cryptography.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// An index into `weights`, chosen with probability proportional to its weight.
    pub fn weighted(&mut self, weights: &[u64]) -> usize {
        let total: u64 = weights.iter().sum();
        let mut x = self.below(total);
        for (i, &w) in weights.iter().enumerate() {
            if x < w {
                return i;
            }
            x -= w;
        }
        unreachable!("x < total")
    }

    /// A child generator, so that one part of a schedule drawing more or
    /// fewer numbers does not shift everything after it.
    pub fn fork(&mut self) -> Rng {
        Rng(self.next_u64())
    }
}

/// The largest block the simulation uses.
pub const BLOCK: usize = 4096;

thread_local! {
    static BLOCKS: std::cell::RefCell<std::collections::HashMap<u32, std::rc::Rc<[u8]>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// The contents of a block holding `pattern` (all zero for pattern 0, else
/// bytes derived from the pattern); a short (last) block holds a prefix.
/// Computed once per pattern and thread.
pub fn block_bytes(pattern: u32) -> std::rc::Rc<[u8]> {
    BLOCKS.with(|m| {
        m.borrow_mut()
            .entry(pattern)
            .or_insert_with(|| {
                let mut out = vec![0u8; BLOCK];
                if pattern != 0 {
                    let mut r = Rng::new(u64::from(pattern).wrapping_mul(0x2545_f491_4f6c_dd1d));
                    for chunk in out.chunks_mut(8) {
                        chunk.copy_from_slice(&r.next_u64().to_le_bytes());
                    }
                }
                out.into()
            })
            .clone()
    })
}

/// Fills `out` (at most [`BLOCK`] bytes) with the contents of a block holding `pattern`.
pub fn fill_block(pattern: u32, out: &mut [u8]) {
    out.copy_from_slice(&block_bytes(pattern)[..out.len()]);
}
