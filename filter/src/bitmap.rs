//! A bitmap of blocks over shared words: bit `i` is bit `i % 64` of word `i / 64`.
//!
//! All operations are atomic per word, so writers on many threads may set bits
//! while a cut moves them, and a reader in another process may `pread` the
//! words at any time.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

/// A view of `len` bits over atomic words. Every index is checked against
/// `len` before it reaches a word.
#[derive(Clone, Copy)]
pub struct Bitmap<'a> {
    words: &'a [AtomicU64],
    len: u64,
}

/// Words and the mask of bits within each that a block range covers.
fn word_masks(r: Range<u64>) -> impl Iterator<Item = (usize, u64)> {
    let (start, end) = (r.start, r.end);
    let first = start / 64;
    let last = if end > start { (end - 1) / 64 } else { first };
    (first..=last).filter(move |_| end > start).map(move |w| {
        let lo = if w == first { start % 64 } else { 0 };
        let hi = if w == last { (end - 1) % 64 } else { 63 };
        let mask = (u64::MAX >> (63 - hi)) & (u64::MAX << lo);
        (usize::try_from(w).expect("word index fits usize"), mask)
    })
}

impl<'a> Bitmap<'a> {
    /// A bitmap of `len` bits over `words`, which must hold at least `len` bits.
    pub fn new(words: &'a [AtomicU64], len: u64) -> Bitmap<'a> {
        assert!(len <= words.len() as u64 * 64, "bitmap of {len} bits over {} words", words.len());
        Bitmap { words, len }
    }

    /// Number of bits.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the bitmap has no bits at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, r: &Range<u64>) {
        assert!(r.start <= r.end && r.end <= self.len, "block range {r:?} outside bitmap of {} bits", self.len);
    }

    /// Sets bit `i`.
    pub fn set(&self, i: u64) {
        self.set_range(i..i + 1);
    }

    /// Is bit `i` set?
    pub fn get(&self, i: u64) -> bool {
        self.check(&(i..i + 1));
        let w = usize::try_from(i / 64).expect("word index fits usize");
        self.words[w].load(Ordering::Acquire) & (1 << (i % 64)) != 0
    }

    /// Sets every bit in `r`. A word whose bits are already set is only read,
    /// so concurrent writers to the same blocks do not fight over the cache line.
    pub fn set_range(&self, r: Range<u64>) {
        self.check(&r);
        for (w, mask) in word_masks(r) {
            let word = &self.words[w];
            if word.load(Ordering::Relaxed) & mask != mask {
                word.fetch_or(mask, Ordering::SeqCst);
            }
        }
    }

    /// Clears bit `i`; returns whether it was set.
    pub fn clear(&self, i: u64) -> bool {
        self.check(&(i..i + 1));
        let w = usize::try_from(i / 64).expect("word index fits usize");
        let bit = 1 << (i % 64);
        self.words[w].fetch_and(!bit, Ordering::SeqCst) & bit != 0
    }

    /// Sets every bit (`0..len`).
    pub fn fill(&self) {
        self.set_range(0..self.len);
    }

    /// Clears every bit.
    pub fn clear_all(&self) {
        for w in self.words {
            w.store(0, Ordering::SeqCst);
        }
    }

    /// Number of set bits.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.load(Ordering::Acquire).count_ones())).sum()
    }

    /// Indexes of the set bits, in order.
    pub fn ones(&self) -> impl Iterator<Item = u64> + 'a {
        let words = self.words;
        words.iter().enumerate().flat_map(|(wi, w)| {
            let mut v = w.load(Ordering::Acquire);
            std::iter::from_fn(move || {
                if v == 0 {
                    return None;
                }
                let b = v.trailing_zeros();
                v &= v - 1;
                Some(wi as u64 * 64 + u64::from(b))
            })
        })
    }

    /// Moves every set bit of `self` into `into` and clears it here. Bits are
    /// added to `into` before they are removed from `self`, so a crash in the
    /// middle leaves a bit in both maps, never in neither. Returns the number
    /// of bits moved. Callers exclude concurrent setters of `self` if they need
    /// the move to be one instant.
    pub fn move_into(&self, into: &Bitmap<'_>) -> u64 {
        assert_eq!(self.len, into.len, "bitmaps of different sizes");
        let mut moved = 0;
        for (src, dst) in self.words.iter().zip(into.words) {
            let v = src.load(Ordering::Acquire);
            if v != 0 {
                dst.fetch_or(v, Ordering::SeqCst);
                src.fetch_and(!v, Ordering::SeqCst);
                moved += u64::from(v.count_ones());
            }
        }
        moved
    }

    /// The first word index holding a set bit at or past `len`, if any: such a
    /// bit names a block the disk does not have.
    pub fn first_bit_past_end(&self) -> Option<usize> {
        let full = usize::try_from(self.len / 64).expect("fits");
        let rem = self.len % 64;
        self.words.iter().enumerate().skip(full).find_map(|(i, w)| {
            let v = w.load(Ordering::Acquire);
            let outside = if i == full && rem != 0 { v & (u64::MAX << rem) } else { v };
            (outside != 0).then_some(i)
        })
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test sizes are small
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn words(n: usize) -> Vec<AtomicU64> {
        (0..n).map(|_| AtomicU64::new(0)).collect()
    }

    #[test]
    fn bits_past_the_end_are_found() {
        let w = words(3);
        let b = Bitmap::new(&w, 130);
        assert_eq!(b.first_bit_past_end(), None);
        b.set(129);
        assert_eq!(b.first_bit_past_end(), None);
        w[2].fetch_or(1 << 2, Ordering::SeqCst); // bit 130
        assert_eq!(b.first_bit_past_end(), Some(2));
    }

    #[test]
    #[should_panic(expected = "outside bitmap")]
    fn out_of_range_index_is_caught() {
        let w = words(2);
        Bitmap::new(&w, 100).set(100);
    }

    proptest! {
        /// set_range, clear, count, ones and move_into agree with a set model.
        #[test]
        fn matches_a_set_model(
            len in 1u64..1000,
            ops in proptest::collection::vec((0u8..3, 0u64..1000, 0u64..200), 1..50),
        ) {
            let w = words(len.div_ceil(64) as usize);
            let b = Bitmap::new(&w, len);
            let mut model = BTreeSet::new();
            for (op, a, n) in ops {
                let start = a % len;
                let end = (start + n).min(len);
                match op {
                    0 => { b.set_range(start..end); model.extend(start..end); }
                    1 => { prop_assert_eq!(b.clear(start), model.remove(&start)); }
                    _ => { prop_assert_eq!(b.get(start), model.contains(&start)); }
                }
            }
            prop_assert_eq!(b.count(), model.len() as u64);
            prop_assert_eq!(b.ones().collect::<BTreeSet<_>>(), model.clone());
            prop_assert_eq!(b.first_bit_past_end(), None);
            let w2 = words(len.div_ceil(64) as usize);
            let other = Bitmap::new(&w2, len);
            other.set(len - 1);
            let moved = b.move_into(&other);
            prop_assert_eq!(moved, model.len() as u64);
            prop_assert_eq!(b.count(), 0);
            model.insert(len - 1);
            prop_assert_eq!(other.ones().collect::<BTreeSet<_>>(), model);
        }
    }
}
