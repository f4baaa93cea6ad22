//! Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! Contract: `update*` take the checksum *field* as stored in the packet.
//! For a complete checksum the field is the complement of the sum (RFC 1624
//! eqn. 3: `HC' = ~(~HC + ~m + m')`). For a CHECKSUM_PARTIAL packet the field
//! holds the uncomplemented pseudo-header seed, updated as a plain one's
//! complement sum (`HC' = HC - m + m'`), as the kernel's
//! `inet_proto_csum_replace*` does.

/// One's complement sum of `data` (big-endian 16-bit words, odd byte
/// padded), folded to 16 bits but not complemented (at most 0xffff).
pub fn sum(data: &[u8]) -> u32 {
    // Eight bytes at a time as two 32-bit big-endian halves: 2^16 ≡ 1
    // (mod 0xffff), so this is congruent to the sum of 16-bit words, and
    // `fold` gives the same result (an all-zero input stays zero).
    let mut s: u64 = 0;
    let mut wide = data.chunks_exact(8);
    for c in &mut wide {
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        s += (w >> 32) + (w & 0xffff_ffff);
    }
    let mut chunks = wide.remainder().chunks_exact(2);
    for c in &mut chunks {
        s += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        s += u64::from(*b) << 8;
    }
    // Folded to 16 bits (end-around carry), so that callers may add many
    // sums in a u32: the same value `fold` would give, 0 only for all zeros.
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u32
}

/// Fold a 32-bit sum to 16 bits.
pub fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The checksum field value for `data` (complement of the folded sum).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data))
}

/// One's complement add of two 16-bit values.
#[inline]
fn add(a: u16, b: u16) -> u16 {
    let s = u32::from(a) + u32::from(b);
    ((s & 0xffff) + (s >> 16)) as u16
}

/// Update a complete checksum field for a 16-bit word changing `old` → `new`.
#[inline]
pub fn update16(field: u16, old: u16, new: u16) -> u16 {
    !add(add(!field, !old), new)
}

/// Update a complete checksum field for a 32-bit value changing `old` → `new`.
#[inline]
pub fn update32(field: u16, old: u32, new: u32) -> u16 {
    let f = update16(field, (old >> 16) as u16, (new >> 16) as u16);
    update16(f, old as u16, new as u16)
}

/// Update a partial (uncomplemented pseudo-header seed) field for `old` → `new`.
#[inline]
pub fn update32_partial(field: u16, old: u32, new: u32) -> u16 {
    let f = add(add(field, !((old >> 16) as u16)), (new >> 16) as u16);
    add(add(f, !(old as u16)), new as u16)
}

/// Pseudo-header sum for IPv4 TCP/UDP (`src`, `dst`, protocol, L4 length), unfolded.
pub fn pseudo_header(src: [u8; 4], dst: [u8; 4], proto: u8, len: u16) -> u32 {
    sum(&src) + sum(&dst) + u32::from(proto) + u32::from(len)
}

/// Pseudo-header sum for IPv6 upper layers (RFC 8200 8.1: `src`, `dst`,
/// upper-layer length, next header), unfolded.
pub fn pseudo_header6(src: [u8; 16], dst: [u8; 16], next: u8, len: u32) -> u32 {
    sum(&src) + sum(&dst) + (len >> 16) + (len & 0xffff) + u32::from(next)
}

/// Update a complete checksum field for a 128-bit address changing `old` → `new`.
pub fn update128(field: u16, old: [u8; 16], new: [u8; 16]) -> u16 {
    let mut f = field;
    for (o, n) in old.chunks_exact(4).zip(new.chunks_exact(4)) {
        let o = u32::from_be_bytes([o[0], o[1], o[2], o[3]]);
        let n = u32::from_be_bytes([n[0], n[1], n[2], n[3]]);
        f = update32(f, o, n);
    }
    f
}

/// Update a partial (uncomplemented seed) field for a 128-bit address changing `old` → `new`.
pub fn update128_partial(field: u16, old: [u8; 16], new: [u8; 16]) -> u16 {
    let mut f = field;
    for (o, n) in old.chunks_exact(4).zip(new.chunks_exact(4)) {
        let o = u32::from_be_bytes([o[0], o[1], o[2], o[3]]);
        let n = u32::from_be_bytes([n[0], n[1], n[2], n[3]]);
        f = update32_partial(f, o, n);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The IPv4 header example of RFC 1071 section 3 / Wikipedia "IPv4 header checksum":
    /// 4500 0073 0000 4000 4011 [b861] c0a8 0001 c0a8 00c7.
    #[rustfmt::skip]
    const HDR: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11,
        0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    proptest::proptest! {
        /// The wide sum folds to what RFC 1071's 16-bit loop gives, for any
        /// bytes and any split of them into added parts.
        #[test]
        fn wide_sum_matches_the_16_bit_reference(
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..3000),
            cut in 0usize..3000,
        ) {
            let reference = |d: &[u8]| {
                let mut s: u64 = 0;
                for c in d.chunks(2) {
                    s += u64::from(c[0]) << 8 | u64::from(*c.get(1).unwrap_or(&0));
                }
                while s > 0xffff {
                    s = (s & 0xffff) + (s >> 16);
                }
                s as u16
            };
            proptest::prop_assert_eq!(fold(sum(&data)), reference(&data));
            let cut = cut.min(data.len()) & !1;
            let (a, b) = data.split_at(cut);
            proptest::prop_assert_eq!(fold(sum(a) + sum(b)), reference(&data));
        }
    }

    #[test]
    fn known_header_checksum() {
        let mut h = HDR;
        h[10] = 0;
        h[11] = 0;
        assert_eq!(checksum(&h), 0xb861);
        assert_eq!(checksum(&HDR), 0);
    }

    #[test]
    fn incremental_equals_recompute_on_fixture() {
        let mut h = HDR;
        let field = u16::from_be_bytes([h[10], h[11]]);
        // Change the source address 192.168.0.1 -> 203.0.113.1.
        let old = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
        let new = u32::from_be_bytes([203, 0, 113, 1]);
        h[12..16].copy_from_slice(&new.to_be_bytes());
        let inc = update32(field, old, new);
        h[10] = 0;
        h[11] = 0;
        assert_eq!(inc, checksum(&h));
    }

    #[test]
    fn partial_update_matches_seed_recompute() {
        let (s, d, s2) = ([192, 168, 15, 1], [203, 0, 113, 10], [203, 0, 113, 1]);
        let seed = fold(pseudo_header(s, d, 6, 0));
        let upd = update32_partial(seed, u32::from_be_bytes(s), u32::from_be_bytes(s2));
        assert_eq!(upd, fold(pseudo_header(s2, d, 6, 0)));
    }
}
