//! IPv6 header and its extension-header chain, read and rewritten in place.
//!
//! Contract: [`Ipv6Packet::new_checked`] validates version and payload length
//! against the buffer, so accessors never panic afterwards.
//! [`Ipv6Packet::upper`] walks the extension-header chain (hop-by-hop,
//! routing, fragment, authentication, destination options) with a bound on the number of
//! headers ([`MAX_EXT_HEADERS`]) and checks every length against the payload,
//! so a hostile chain (too long, lengths past the end, a fragment header in
//! a later fragment) is [`Malformed`], never a panic or an unbounded walk.
//! IPv6 has no header checksum: address setters only write; the transport
//! checksum is the caller's (see [`crate::checksum::update128`]).

use super::Malformed;
use std::net::Ipv6Addr;

/// Length of the fixed IPv6 header.
pub const IPV6_HLEN: usize = 40;

/// The most extension headers [`Ipv6Packet::upper`] walks before calling the
/// chain malformed (RFC 8200 recommends an order with each at most once, two
/// destination options headers: six; a little slack for real stacks).
pub const MAX_EXT_HEADERS: usize = 8;

/// IPv6 next-header numbers used here.
pub mod next_header {
    /// Hop-by-hop options.
    pub const HOP_BY_HOP: u8 = 0;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// Routing header.
    pub const ROUTING: u8 = 43;
    /// Fragment header.
    pub const FRAGMENT: u8 = 44;
    /// Authentication header.
    pub const AUTH: u8 = 51;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// No next header.
    pub const NONE: u8 = 59;
    /// Destination options.
    pub const DEST_OPTS: u8 = 60;
}

/// What a fragment header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frag {
    /// Offset of this fragment's data, in bytes.
    pub offset: usize,
    /// More fragments follow.
    pub more: bool,
    /// Identification.
    pub ident: u32,
    /// The fragment header's next header (the same in every fragment of a datagram).
    pub next: u8,
}

/// Where the upper-layer header of an IPv6 packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upper {
    /// The upper-layer protocol (after the last extension header).
    pub proto: u8,
    /// Offset of the upper-layer header from the start of the IPv6 header.
    pub offset: usize,
    /// The fragment header, if the packet is a fragment. For a later
    /// fragment (`offset != 0`) the bytes at `offset` are not a header.
    pub frag: Option<Frag>,
    /// Offset of the fragment header from the start of the IPv6 header.
    pub frag_at: Option<usize>,
}

/// A view of an IPv6 packet at the start of `buf`.
#[derive(Debug)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Check version 6 and that the payload length fits `buf`. A payload
    /// length of 0 (a GSO super-frame, or a jumbogram) is taken as "the buffer".
    pub fn new_checked(buf: T) -> Result<Self, Malformed> {
        let b = buf.as_ref();
        if b.len() < IPV6_HLEN || b[0] >> 4 != 6 {
            return Err(Malformed);
        }
        let pl = usize::from(u16::from_be_bytes([b[4], b[5]]));
        if IPV6_HLEN + pl > b.len() {
            return Err(Malformed);
        }
        Ok(Ipv6Packet { buf })
    }
    /// A packet quoted in an ICMPv6 error: version 6 and a whole fixed
    /// header, but the payload may be cut short of its length (RFC 4443
    /// keeps the whole error within 1,280 bytes); the payload is what is there.
    pub fn new_quoted(buf: T) -> Result<Self, Malformed> {
        let b = buf.as_ref();
        if b.len() < IPV6_HLEN || b[0] >> 4 != 6 {
            return Err(Malformed);
        }
        Ok(Ipv6Packet { buf })
    }
    fn b(&self) -> &[u8] {
        self.buf.as_ref()
    }
    /// Traffic class.
    pub fn traffic_class(&self) -> u8 {
        let b = self.b();
        (b[0] << 4) | (b[1] >> 4)
    }
    /// Flow label (20 bits).
    pub fn flow_label(&self) -> u32 {
        let b = self.b();
        u32::from_be_bytes([0, b[1] & 0xf, b[2], b[3]])
    }
    /// Payload length as used here: the header's, or the rest of the buffer
    /// if 0 (or if the header's runs past it, in a quote).
    pub fn payload_len(&self) -> usize {
        let b = self.b();
        let pl = usize::from(u16::from_be_bytes([b[4], b[5]]));
        let rest = b.len() - IPV6_HLEN;
        if pl == 0 { rest } else { pl.min(rest) }
    }
    /// Header length plus payload length.
    pub fn total_len(&self) -> usize {
        IPV6_HLEN + self.payload_len()
    }
    /// The first next-header field.
    pub fn next_header(&self) -> u8 {
        self.b()[6]
    }
    /// Hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.b()[7]
    }
    /// Source address.
    pub fn src(&self) -> Ipv6Addr {
        Ipv6Addr::from(<[u8; 16]>::try_from(&self.b()[8..24]).unwrap_or([0; 16]))
    }
    /// Destination address.
    pub fn dst(&self) -> Ipv6Addr {
        Ipv6Addr::from(<[u8; 16]>::try_from(&self.b()[24..40]).unwrap_or([0; 16]))
    }
    /// The payload: extension headers and upper layer, up to the payload length.
    pub fn payload(&self) -> &[u8] {
        &self.b()[IPV6_HLEN..self.total_len()]
    }
    /// The packet: header and payload, without link padding.
    pub fn packet(&self) -> &[u8] {
        &self.b()[..self.total_len()]
    }

    /// Walk the extension headers to the upper layer (see the module docs).
    pub fn upper(&self) -> Result<Upper, Malformed> {
        let end = self.total_len();
        let b = &self.b()[..end];
        let mut nh = self.next_header();
        let mut at = IPV6_HLEN;
        let mut frag = None;
        let mut frag_at = None;
        for _ in 0..=MAX_EXT_HEADERS {
            match nh {
                next_header::HOP_BY_HOP | next_header::ROUTING | next_header::DEST_OPTS => {
                    // Hop-by-hop only directly after the fixed header (RFC 8200 4.3).
                    if nh == next_header::HOP_BY_HOP && at != IPV6_HLEN {
                        return Err(Malformed);
                    }
                    let h = b.get(at..at + 2).ok_or(Malformed)?;
                    let len = (usize::from(h[1]) + 1) * 8;
                    if at + len > end {
                        return Err(Malformed);
                    }
                    nh = h[0];
                    at += len;
                }
                next_header::AUTH => {
                    let h = b.get(at..at + 2).ok_or(Malformed)?;
                    let len = (usize::from(h[1]) + 2) * 4;
                    if at + len > end {
                        return Err(Malformed);
                    }
                    nh = h[0];
                    at += len;
                }
                next_header::FRAGMENT => {
                    if frag.is_some() {
                        return Err(Malformed);
                    }
                    let h = b.get(at..at + 8).ok_or(Malformed)?;
                    let fo = u16::from_be_bytes([h[2], h[3]]);
                    frag = Some(Frag {
                        offset: usize::from(fo >> 3) * 8,
                        more: fo & 1 != 0,
                        ident: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
                        next: h[0],
                    });
                    frag_at = Some(at);
                    nh = h[0];
                    at += 8;
                    if frag.is_some_and(|f| f.offset != 0) {
                        // A later fragment: what follows is data, not headers.
                        return Ok(Upper {
                            proto: nh,
                            offset: at,
                            frag,
                            frag_at,
                        });
                    }
                }
                _ => {
                    return Ok(Upper {
                        proto: nh,
                        offset: at,
                        frag,
                        frag_at,
                    });
                }
            }
        }
        Err(Malformed)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    fn m(&mut self) -> &mut [u8] {
        self.buf.as_mut()
    }
    /// Set the source address (no header checksum in IPv6).
    pub fn set_src(&mut self, a: Ipv6Addr) {
        self.m()[8..24].copy_from_slice(&a.octets());
    }
    /// Set the destination address.
    pub fn set_dst(&mut self, a: Ipv6Addr) {
        self.m()[24..40].copy_from_slice(&a.octets());
    }
    /// Set the hop limit.
    pub fn set_hop_limit(&mut self, h: u8) {
        self.m()[7] = h;
    }
    /// Decrement the hop limit (saturating at 0).
    pub fn dec_hop_limit(&mut self) {
        let h = self.hop_limit().saturating_sub(1);
        self.set_hop_limit(h);
    }
    /// The payload, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = self.total_len();
        &mut self.m()[IPV6_HLEN..end]
    }
}

/// Write a fixed IPv6 header (traffic class and flow label 0) into `b[..40]`.
pub fn emit_header(b: &mut [u8], src: Ipv6Addr, dst: Ipv6Addr, next: u8, hop: u8, payload: u16) {
    b[0] = 0x60;
    b[1..4].fill(0);
    b[4..6].copy_from_slice(&payload.to_be_bytes());
    b[6] = next;
    b[7] = hop;
    b[8..24].copy_from_slice(&src.octets());
    b[24..40].copy_from_slice(&dst.octets());
}

/// The solicited-node multicast address of `a` (RFC 4291 2.7.1): `ff02::1:ffXX:XXXX`.
pub fn solicited_node(a: Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// The Ethernet address an IPv6 multicast address maps to (RFC 2464 7): `33:33` and its low 32 bits.
pub fn multicast_mac(a: Ipv6Addr) -> [u8; 6] {
    let o = a.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// The link-local address with the modified EUI-64 interface identifier of `mac` (RFC 4291 2.5.1).
pub fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o[0] = 0xfe;
    o[1] = 0x80;
    o[8..11].copy_from_slice(&[mac[0] ^ 2, mac[1], mac[2]]);
    o[11] = 0xff;
    o[12] = 0xfe;
    o[13..16].copy_from_slice(&mac[3..6]);
    Ipv6Addr::from(o)
}

/// Whether `a` is link-local unicast (`fe80::/10`).
pub fn is_link_local(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{IpNumber, Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader, PacketBuilder};

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// A UDP packet built by etherparse (the oracle), through `exts` (each a
    /// next-header number with 6 bytes of options, or a fragment header).
    fn with_exts(exts: &[u8], frag_offset: u16, payload: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        let mut next = Vec::new();
        next.extend(exts.iter().skip(1));
        next.push(next_header::UDP);
        for (i, &e) in exts.iter().enumerate() {
            let n = IpNumber(next[i]);
            if e == next_header::FRAGMENT {
                let f = Ipv6FragmentHeader::new(
                    n,
                    etherparse::IpFragOffset::try_new(frag_offset).unwrap(),
                    true,
                    0x1234_5678,
                );
                body.extend_from_slice(&f.to_bytes());
            } else {
                let h = Ipv6RawExtHeader::new_raw(n, &[1, 4, 0, 0, 0, 0]).unwrap();
                body.extend_from_slice(&h.to_bytes());
            }
        }
        let mut udp = Vec::new();
        PacketBuilder::ipv6([0; 16], [0; 16], 1)
            .udp(1000, 2000)
            .write(&mut udp, payload)
            .unwrap();
        body.extend_from_slice(&udp[IPV6_HLEN..]);
        let h = Ipv6Header {
            traffic_class: 0xb8,
            flow_label: 0x12345.try_into().unwrap(),
            payload_length: body.len() as u16,
            next_header: IpNumber(*exts.first().unwrap_or(&next_header::UDP)),
            hop_limit: 9,
            source: a("fd00:15::1").octets(),
            destination: a("2001:db8:113::10").octets(),
        };
        let mut v = h.to_bytes().to_vec();
        v.extend_from_slice(&body);
        v
    }

    #[test]
    fn fixed_header_fields_match_etherparse() {
        let p = with_exts(&[], 0, b"hello");
        let v = Ipv6Packet::new_checked(&p[..]).unwrap();
        let (h, _) = Ipv6Header::from_slice(&p).unwrap();
        assert_eq!(v.traffic_class(), h.traffic_class);
        assert_eq!(v.flow_label(), h.flow_label.value());
        assert_eq!(v.payload_len(), usize::from(h.payload_length));
        assert_eq!(v.hop_limit(), h.hop_limit);
        assert_eq!(v.src().octets(), h.source);
        assert_eq!(v.dst().octets(), h.destination);
        let u = v.upper().unwrap();
        assert_eq!(
            (u.proto, u.offset, u.frag),
            (next_header::UDP, IPV6_HLEN, None)
        );
    }

    #[test]
    fn the_chain_is_walked_as_etherparse_walks_it() {
        use next_header::*;
        for exts in [
            &[HOP_BY_HOP][..],
            &[HOP_BY_HOP, DEST_OPTS, ROUTING, FRAGMENT, DEST_OPTS],
            &[ROUTING, FRAGMENT],
            &[FRAGMENT],
        ] {
            let p = with_exts(exts, 0, b"payload!");
            let s = etherparse::Ipv6Slice::from_slice(&p).unwrap();
            let want = p.len() - s.payload().payload.len();
            let u = Ipv6Packet::new_checked(&p[..]).unwrap().upper().unwrap();
            assert_eq!(u.proto, next_header::UDP, "{exts:?}");
            assert_eq!(u.offset, want, "{exts:?}");
            assert_eq!(u.frag.is_some(), exts.contains(&FRAGMENT));
            if let Some(f) = u.frag {
                assert_eq!((f.offset, f.more, f.ident), (0, true, 0x1234_5678));
                assert_eq!(
                    f.next,
                    exts[exts.iter().position(|&e| e == FRAGMENT).unwrap() + 1..]
                        .first()
                        .copied()
                        .unwrap_or(next_header::UDP)
                );
            }
        }
    }

    #[test]
    fn a_later_fragment_stops_at_its_fragment_header() {
        let p = with_exts(&[next_header::FRAGMENT], 185, b"data data data");
        let u = Ipv6Packet::new_checked(&p[..]).unwrap().upper().unwrap();
        assert_eq!(u.frag.unwrap().offset, 185 * 8);
        assert_eq!(u.offset, IPV6_HLEN + 8);
        assert_eq!(u.frag_at, Some(IPV6_HLEN));
    }

    #[test]
    fn hostile_chains_are_malformed() {
        use next_header::*;
        // Too many headers (a "loop" of destination options).
        let p = with_exts(&[DEST_OPTS; MAX_EXT_HEADERS + 1], 0, b"x");
        assert_eq!(
            Ipv6Packet::new_checked(&p[..]).unwrap().upper(),
            Err(Malformed)
        );
        // Exactly the bound is fine.
        let p = with_exts(&[DEST_OPTS; MAX_EXT_HEADERS], 0, b"x");
        assert!(Ipv6Packet::new_checked(&p[..]).unwrap().upper().is_ok());
        // Hop-by-hop not first.
        let p = with_exts(&[DEST_OPTS, HOP_BY_HOP], 0, b"x");
        assert_eq!(
            Ipv6Packet::new_checked(&p[..]).unwrap().upper(),
            Err(Malformed)
        );
        // Two fragment headers.
        let p = with_exts(&[FRAGMENT, FRAGMENT], 0, b"x");
        assert_eq!(
            Ipv6Packet::new_checked(&p[..]).unwrap().upper(),
            Err(Malformed)
        );
        // An extension length past the end of the payload.
        let mut p = with_exts(&[DEST_OPTS], 0, b"x");
        p[IPV6_HLEN + 1] = 200;
        assert_eq!(
            Ipv6Packet::new_checked(&p[..]).unwrap().upper(),
            Err(Malformed)
        );
        // The chain cut in the middle of a header.
        let mut p = with_exts(&[ROUTING], 0, b"");
        let cut = IPV6_HLEN + 1;
        p.truncate(cut);
        p[4..6].copy_from_slice(&1u16.to_be_bytes());
        assert_eq!(
            Ipv6Packet::new_checked(&p[..]).unwrap().upper(),
            Err(Malformed)
        );
    }

    #[test]
    fn bad_fixed_headers_are_refused() {
        let mut p = with_exts(&[], 0, b"abc");
        assert!(Ipv6Packet::new_checked(&p[..39]).is_err());
        p[0] = 0x45;
        assert!(Ipv6Packet::new_checked(&p[..]).is_err());
        p[0] = 0x60;
        p[5] = p[5].wrapping_add(1); // payload length one past the buffer
        assert!(Ipv6Packet::new_checked(&p[..]).is_err());
    }

    #[test]
    fn every_cut_and_every_byte_value_is_safe() {
        use next_header::*;
        let p = with_exts(
            &[HOP_BY_HOP, ROUTING, FRAGMENT, DEST_OPTS],
            0,
            b"0123456789",
        );
        for cut in 0..p.len() {
            if let Ok(v) = Ipv6Packet::new_checked(&p[..cut]) {
                let _ = v.upper();
            }
        }
        for i in 0..p.len() {
            for x in [0u8, 1, 6, 17, 43, 44, 58, 60, 0xff] {
                let mut q = p.clone();
                q[i] = x;
                if let Ok(v) = Ipv6Packet::new_checked(&q[..])
                    && let Ok(u) = v.upper()
                {
                    assert!(u.offset <= v.total_len());
                }
            }
        }
    }

    #[test]
    fn setters_and_emit_round_trip() {
        let mut b = [0u8; 48];
        emit_header(
            &mut b,
            a("fe80::1"),
            a("ff02::1"),
            next_header::ICMPV6,
            255,
            8,
        );
        let (h, _) = Ipv6Header::from_slice(&b).unwrap();
        assert_eq!(h.source, a("fe80::1").octets());
        assert_eq!(h.next_header, IpNumber(58));
        assert_eq!((h.hop_limit, h.payload_length), (255, 8));
        let mut v = Ipv6Packet::new_checked(&mut b[..]).unwrap();
        v.set_src(a("fd00::1"));
        v.set_dst(a("fd00::2"));
        v.dec_hop_limit();
        assert_eq!(
            (v.src(), v.dst(), v.hop_limit()),
            (a("fd00::1"), a("fd00::2"), 254)
        );
    }

    #[test]
    fn address_helpers() {
        assert_eq!(solicited_node(a("fd00:15::1:2:3")), a("ff02::1:ff02:3"));
        assert_eq!(
            multicast_mac(a("ff02::1:ff02:3")),
            [0x33, 0x33, 0xff, 0x02, 0, 3]
        );
        assert_eq!(
            link_local([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
            a("fe80::5054:ff:fe12:3456")
        );
        assert!(is_link_local(a("fe80::1")) && !is_link_local(a("fd00::1")));
    }
}
