//! Structure-aware generators: frames and packets built layer by layer from
//! [`Input`], with every field usually consistent (lengths, checksums) and
//! sometimes any value at all.

use crate::input::Input;
use nat::checksum::{checksum, fold, pseudo_header, sum};
use std::net::Ipv4Addr;

/// EtherTypes.
pub const ET_IPV4: u16 = 0x0800;
/// ARP.
pub const ET_ARP: u16 = 0x0806;
/// 802.1Q.
pub const ET_VLAN: u16 = 0x8100;
/// 802.1ad.
pub const ET_QINQ: u16 = 0x88a8;
/// IPv6.
pub const ET_IPV6: u16 = 0x86dd;

/// Addresses the generators draw from, so that packets of one case relate
/// (hosts that exist, the gateway, the external address).
#[derive(Debug, Clone)]
pub struct Pool {
    /// MAC addresses.
    pub macs: Vec<[u8; 6]>,
    /// IPv4 addresses.
    pub ips: Vec<Ipv4Addr>,
}

impl Pool {
    /// A MAC: from the pool, broadcast, multicast, zero or random.
    pub fn mac(&self, i: &mut Input) -> [u8; 6] {
        match i.below(16) {
            0 => [0xff; 6],
            1 => [0x01, 0x00, 0x5e, 0, 0, i.u8()],
            2 => [0; 6],
            3 => {
                let b = i.bytes(6);
                let mut m = [0u8; 6];
                m[..b.len()].copy_from_slice(b);
                m
            }
            _ => self.macs[i.below(self.macs.len())],
        }
    }
    /// An IPv4 address: from the pool, special or random.
    pub fn ip(&self, i: &mut Input) -> Ipv4Addr {
        match i.below(16) {
            0 => Ipv4Addr::BROADCAST,
            1 => Ipv4Addr::UNSPECIFIED,
            2 => Ipv4Addr::new(224, 0, 0, i.u8()),
            3 => Ipv4Addr::from(i.u32()),
            _ => self.ips[i.below(self.ips.len())],
        }
    }
}

/// Options of an IPv4 packet to build.
#[derive(Debug, Clone, Copy)]
pub struct Ip4 {
    /// Source.
    pub src: Ipv4Addr,
    /// Destination.
    pub dst: Ipv4Addr,
    /// Protocol.
    pub proto: u8,
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// A payload length: mostly small, sometimes at an MTU or size boundary.
pub fn payload_len(i: &mut Input, max: usize) -> usize {
    let n = match i.below(8) {
        0..=3 => i.below(64),
        4 => i.below(600),
        5 => usize::from(i.pick(&[0u16, 1, 7, 8, 9, 1372, 1380, 1472, 1473, 1480, 2000, 4000])),
        6 => i.below(9300),
        _ => usize::from(i.u16_edgy()),
    };
    n.min(max)
}

/// The L4 checksum over `l4` with the pseudo-header of `src`/`dst`/`proto`.
pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> u16 {
    let ph = pseudo_header(src.octets(), dst.octets(), proto, l4.len() as u16);
    !fold(ph + sum(l4))
}

/// The partial (CHECKSUM_PARTIAL) seed: the folded pseudo-header sum.
pub fn partial_seed(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u16 {
    fold(pseudo_header(src.octets(), dst.octets(), proto, len as u16))
}

/// A transport header and payload for `proto`, checksum left zero (the
/// caller fills it). Returns the bytes and the checksum offset, if any.
pub fn l4(
    i: &mut Input,
    proto: u8,
    depth: u8,
    pool: &Pool,
    max: usize,
) -> (Vec<u8>, Option<usize>) {
    let plen = payload_len(i, max);
    match proto {
        6 => {
            let doff = i.mostly(5u8, |i| i.u8() & 0xf);
            let hl = usize::from(doff.max(5)) * 4;
            let mut b = vec![0u8; hl + plen];
            put16(&mut b, 0, i.u16_edgy());
            put16(&mut b, 2, i.u16_edgy());
            let seq = i.bytes(8);
            b[4..4 + seq.len()].copy_from_slice(seq);
            b[12] = doff << 4;
            let any = i.u8();
            b[13] = i.pick(&[
                0x02u8, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0x01, 0x00, 0xff, any,
            ]);
            put16(&mut b, 14, i.u16());
            let cut = i.mostly(b.len(), |i| i.below(24));
            b.truncate(cut);
            (b, Some(16))
        }
        17 => {
            let mut b = vec![0u8; 8 + plen];
            put16(&mut b, 0, i.u16_edgy());
            put16(&mut b, 2, i.u16_edgy());
            let l = b.len() as u16;
            let l = i.mostly(l, |i| i.u16_edgy());
            put16(&mut b, 4, l);
            let cut = i.mostly(b.len(), |i| i.below(10));
            b.truncate(cut);
            (b, Some(6))
        }
        1 => {
            let any = i.u8();
            let ty = i.pick(&[8u8, 0, 8, 0, 3, 11, 12, 5, 4, 13, any]);
            let code = i.mostly(0, |i| i.u8());
            let mut b = vec![ty, if ty == 3 { i.below(16) as u8 } else { code }, 0, 0];
            let id = i.u16_edgy();
            b.extend_from_slice(&id.to_be_bytes());
            b.extend_from_slice(&i.u16().to_be_bytes());
            if matches!(ty, 3 | 11 | 12 | 4 | 5) && depth == 0 {
                // An error quoting a packet: an inner IPv4 header and 8+ bytes.
                let any = i.u8();
                let inner = Ip4 {
                    src: pool.ip(i),
                    dst: pool.ip(i),
                    proto: i.pick(&[6u8, 17, 1, 6, 17, any]),
                };
                let mut q = ipv4(i, inner, 1, pool, 64);
                let cut = i.mostly(q.len().min(28 + 20), |i| i.below(q.len() + 1));
                q.truncate(cut);
                b.extend_from_slice(&q);
            } else {
                b.extend(std::iter::repeat_n(0x5a, plen));
            }
            (b, Some(2))
        }
        _ => (vec![0xa5; plen], None),
    }
}

/// An IPv4 packet (header, transport, payload), consistent most of the time.
pub fn ipv4(i: &mut Input, o: Ip4, depth: u8, pool: &Pool, max: usize) -> Vec<u8> {
    let ihl = i.mostly(5u8, |i| i.u8() & 0xf);
    let hl = usize::from(ihl.max(5)) * 4;
    let (mut l4b, csum_at) = l4(i, o.proto, depth, pool, max);
    if let Some(at) = csum_at
        && l4b.len() >= at + 2
    {
        let c = match i.below(16) {
            0 => i.u16(),
            1 if o.proto == 17 => 0,
            _ if o.proto == 1 => checksum(&l4b),
            _ => l4_checksum(o.src, o.dst, o.proto, &l4b),
        };
        let c = if o.proto == 17 && c == 0 && i.bool() {
            0xffff
        } else {
            c
        };
        put16(&mut l4b, at, c);
    }
    let mut h = vec![0u8; hl];
    h[0] = 0x40 | ihl;
    h[1] = i.mostly(0, |i| i.u8());
    let total = (hl + l4b.len()).min(65535) as u16;
    let total = i.mostly(total, |i| i.u16_edgy());
    put16(&mut h, 2, total);
    put16(&mut h, 4, i.u16());
    let frag: u16 = match i.below(8) {
        0 => 0x2000,                      // MF, first fragment
        1 => 0x2000 | (i.u16() & 0x1fff), // middle
        2 => i.u16() & 0x1fff,            // last
        3 => i.u16(),                     // anything
        4..=5 => 0x4000,                  // DF
        _ => 0,
    };
    put16(&mut h, 6, frag);
    h[8] = i.pick(&[64u8, 64, 64, 1, 2, 0, 255]);
    h[9] = o.proto;
    h[12..16].copy_from_slice(&o.src.octets());
    h[16..20].copy_from_slice(&o.dst.octets());
    for x in h.iter_mut().skip(20) {
        *x = i.u8();
    }
    let c = checksum(&h);
    let c = i.mostly(c, |i| i.u16());
    put16(&mut h, 10, c);
    h.extend_from_slice(&l4b);
    h
}

/// An ARP packet, valid most of the time.
pub fn arp(i: &mut Input, pool: &Pool) -> Vec<u8> {
    let mut b = vec![0, 1, 8, 0, 6, 4];
    if i.u8() >= 240 {
        b = i.bytes(6).to_vec();
        b.resize(6, 0);
    }
    let op = i.pick(&[1u16, 1, 2, 2, 0, 3, 0xffff]);
    b.extend_from_slice(&op.to_be_bytes());
    b.extend_from_slice(&pool.mac(i));
    b.extend_from_slice(&pool.ip(i).octets());
    b.extend_from_slice(&pool.mac(i));
    b.extend_from_slice(&pool.ip(i).octets());
    let cut = i.mostly(b.len(), |i| i.below(28));
    b.truncate(cut);
    b
}

/// An IPv6 packet (40-byte header, then TCP/UDP/ICMPv6/anything).
pub fn ipv6(i: &mut Input, max: usize) -> Vec<u8> {
    let any = i.u8();
    let nh = i.pick(&[6u8, 17, 58, 0, 43, 44, 60, any]);
    let plen = payload_len(i, max);
    let mut b = vec![0u8; 40 + plen];
    b[0] = 0x60;
    let pl = i.mostly(plen as u16, |i| i.u16_edgy());
    put16(&mut b, 4, pl);
    b[6] = nh;
    b[7] = 64;
    // fe80::/10 or 2001:db8::/32, with a random tail.
    for at in [8usize, 24] {
        let pre: [u8; 2] = if i.bool() { [0xfe, 0x80] } else { [0x20, 0x01] };
        b[at..at + 2].copy_from_slice(&pre);
        let t = i.bytes(6);
        b[at + 10..at + 10 + t.len()].copy_from_slice(t);
    }
    if plen >= 4 {
        put16(&mut b, 40, i.u16_edgy());
        put16(&mut b, 42, i.u16_edgy());
    }
    if plen >= 14 {
        b[53] = i.u8();
    }
    b
}

/// An Ethernet frame (0-2 VLAN tags) carrying IPv4, ARP, IPv6 or anything,
/// with up to a few raw byte edits and a possible truncation at the end.
pub fn frame(i: &mut Input, pool: &Pool, max: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(128);
    f.extend_from_slice(&pool.mac(i));
    f.extend_from_slice(&pool.mac(i));
    let tags = i.pick(&[0u8, 0, 0, 0, 1, 1, 2]);
    for _ in 0..tags {
        f.extend_from_slice(&i.pick(&[ET_VLAN, ET_VLAN, ET_QINQ]).to_be_bytes());
        let tci = i.mostly(1u16, |i| i.u16_edgy());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    let kind = i.below(16);
    let (et, payload) = match kind {
        0..=8 => {
            let any = i.u8();
            let o = Ip4 {
                src: pool.ip(i),
                dst: pool.ip(i),
                proto: i.pick(&[6u8, 17, 1, 6, 17, 1, 47, any]),
            };
            (ET_IPV4, ipv4(i, o, 0, pool, max))
        }
        9..=11 => (ET_ARP, arp(i, pool)),
        12..=13 => (ET_IPV6, ipv6(i, max)),
        _ => {
            let n = i.below(80);
            (i.u16(), i.bytes(n).to_vec())
        }
    };
    f.extend_from_slice(&et.to_be_bytes());
    f.extend_from_slice(&payload);
    // Ethernet padding to 60 bytes, usually.
    if f.len() < 60 && i.bool() {
        f.resize(60, 0);
    }
    let edits = i.mostly(0, |i| i.below(4));
    for _ in 0..edits {
        if !f.is_empty() {
            let at = i.below(f.len());
            f[at] = i.u8();
        }
    }
    let cut = i.mostly(f.len(), |i| i.below(f.len() + 1));
    f.truncate(cut.min(max));
    f
}
