//! Little-endian field helpers shared by the vault formats (crate-private).
//!
//! Every caller has already checked that the slice is long enough: these
//! helpers panic on a short slice, which would be a bug in a parser, never a
//! reaction to bad input.

pub(crate) fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
pub(crate) fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
pub(crate) fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
pub(crate) fn get_array<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    b[at..at + N].try_into().expect("fixed-size field")
}

/// The offset (within `b`) of the first non-zero byte of `b[range]`, if any.
pub(crate) fn first_nonzero(b: &[u8], range: std::ops::Range<usize>) -> Option<usize> {
    let start = range.start;
    b[range].iter().position(|&x| x != 0).map(|i| start + i)
}

/// `usize` from a `u64` that the caller has already bounded by a slice length.
pub(crate) fn to_usize(v: u64) -> usize {
    usize::try_from(v).expect("bounded by a slice length")
}

/// Pseudo-random bytes for the stable fuzz-harness tests (xorshift64).
#[cfg(test)]
pub(crate) struct XorShift(pub(crate) u64);

#[cfg(test)]
impl XorShift {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n as u64).max(1)).expect("below n")
    }
    pub(crate) fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next().to_le_bytes()[0]).collect()
    }
    /// Up to `max - 1` random bytes.
    pub(crate) fn some_bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max);
        self.bytes(len)
    }
    /// A copy of `good` with a few random mutations: flipped bits, changed
    /// bytes, a truncation or an extension.
    pub(crate) fn mutate(&mut self, good: &[u8]) -> Vec<u8> {
        let mut v = good.to_vec();
        for _ in 0..=self.below(3) {
            match self.below(5) {
                0 | 1 if !v.is_empty() => {
                    let i = self.below(v.len());
                    v[i] ^= 1 << self.below(8);
                }
                2 if !v.is_empty() => {
                    let i = self.below(v.len());
                    v[i] = self.next().to_le_bytes()[0];
                }
                3 => {
                    let n = self.below(v.len() + 1);
                    v.truncate(n);
                }
                _ => {
                    let extra = self.below(64);
                    let tail = self.bytes(extra);
                    v.extend_from_slice(&tail);
                }
            }
        }
        v
    }
}
