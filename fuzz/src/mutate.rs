//! The seeded byte mutator and its PRNG.

use crate::input::INTERESTING_U16;

/// SplitMix64: small, fast, and the same sequence for the same seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// A value in `0..n` (0 if `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

/// Largest input the mutator makes.
pub const MAX_INPUT: usize = 4096;

/// Apply 1 to 8 random edits to `data`; `other` is a splice partner.
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8]) {
    let n = 1 + rng.below(8);
    for _ in 0..n {
        let len = data.len() as u64;
        let at = rng.below(len.max(1)) as usize;
        match rng.below(11) {
            0 if !data.is_empty() => data[at] ^= 1 << rng.below(8),
            1 if !data.is_empty() => data[at] = rng.next() as u8,
            2 if !data.is_empty() => data[at] = [0, 1, 0x7f, 0x80, 0xff][rng.below(5) as usize],
            3 if data.len() >= 2 => {
                let v = INTERESTING_U16[rng.below(INTERESTING_U16.len() as u64) as usize];
                let b = if rng.below(2) == 0 {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                };
                let at = at.min(data.len() - 2);
                data[at..at + 2].copy_from_slice(&b);
            }
            4 if !data.is_empty() => {
                let d = 1 + rng.below(35) as u8;
                data[at] = if rng.below(2) == 0 {
                    data[at].wrapping_add(d)
                } else {
                    data[at].wrapping_sub(d)
                };
            }
            5 => {
                let k = 1 + rng.below(16) as usize;
                for _ in 0..k {
                    data.insert(at.min(data.len()), rng.next() as u8);
                }
            }
            6 if !data.is_empty() => {
                let k = (1 + rng.below(16) as usize).min(data.len() - at);
                data.drain(at..at + k);
            }
            7 if !data.is_empty() => {
                let k = (1 + rng.below(64) as usize).min(data.len() - at);
                let chunk: Vec<u8> = data[at..at + k].to_vec();
                let to = rng.below(data.len() as u64 + 1) as usize;
                data.splice(to..to, chunk);
            }
            8 if !other.is_empty() => {
                let s = rng.below(other.len() as u64) as usize;
                let k = (1 + rng.below(128) as usize).min(other.len() - s);
                let to = at.min(data.len());
                let end = (to + k).min(data.len());
                data.splice(to..end, other[s..s + k].iter().copied());
            }
            9 if !data.is_empty() => data.truncate(at),
            10 => {
                let k = 1 + rng.below(64) as usize;
                data.extend((0..k).map(|_| rng.next() as u8));
            }
            _ => {}
        }
    }
    data.truncate(MAX_INPUT);
}
