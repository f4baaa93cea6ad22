//! [`Input`]: structured values drawn from fuzz bytes (zeros once exhausted).

/// Boundary values for 16-bit fields (lengths, ports, offsets).
pub const INTERESTING_U16: &[u16] = &[
    0, 1, 2, 3, 4, 7, 8, 13, 14, 17, 18, 19, 20, 21, 22, 24, 28, 34, 38, 42, 53, 54, 60, 64, 80,
    127, 128, 443, 255, 256, 576, 1023, 1024, 1400, 1472, 1480, 1500, 1514, 1518, 4096, 9000, 9216,
    32767, 32768, 65279, 65507, 65515, 65527, 65531, 65532, 65533, 65534, 65535,
];

/// A cursor over fuzz bytes that decodes structured values.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    /// Decode from `data`.
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data, pos: 0 }
    }
    /// Whether every byte was used.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }
    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }
    /// One byte (0 when exhausted).
    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    /// A big-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    /// A big-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    /// A big-endian u64.
    pub fn u64(&mut self) -> u64 {
        (u64::from(self.u32()) << 32) | u64::from(self.u32())
    }
    /// A boolean.
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    /// A value in `0..n` (0 if `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let v = if n <= 256 {
            usize::from(self.u8())
        } else {
            self.u32() as usize
        };
        v % n
    }
    /// A value in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        let span = hi.saturating_sub(lo);
        if span == u64::MAX {
            return self.u64();
        }
        lo + self.u64() % (span + 1)
    }
    /// One of `xs` (which must not be empty).
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
    /// A u16 that is a boundary value half of the time.
    pub fn u16_edgy(&mut self) -> u16 {
        if self.bool() {
            self.pick(INTERESTING_U16)
        } else {
            self.u16()
        }
    }
    /// `v` most of the time, an arbitrary value otherwise: keeps structure
    /// while letting every field take every value now and then.
    pub fn mostly<T: Copy>(&mut self, v: T, other: impl FnOnce(&mut Self) -> T) -> T {
        if self.u8() < 224 { v } else { other(self) }
    }
    /// Up to `n` raw bytes (fewer when exhausted).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let s = self.pos.min(self.data.len());
        let e = self.pos.saturating_add(n).min(self.data.len());
        self.pos = self.pos.saturating_add(n);
        &self.data[s..e]
    }
    /// The bytes not used yet.
    pub fn rest(&mut self) -> &'a [u8] {
        let s = self.pos.min(self.data.len());
        self.pos = self.data.len();
        &self.data[s..]
    }
}
