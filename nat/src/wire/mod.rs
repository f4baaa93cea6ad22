//! The typed wire layer: Ethernet (802.1Q), ARP, the `virtio_net_hdr`,
//! IPv4, IPv6 (with its extension headers), TCP, UDP, ICMP, ICMPv6 and NDP
//! fields, read and rewritten in place, and emitters for the messages
//! vswitch generates.
//!
//! It lives in `nat` (sans-I/O, no `unsafe`) so that both the NAT engine and
//! the switch use one set of views without a fourth crate.
//!
//! Contract: [`Ipv4Packet::new_checked`] validates version, header length and
//! total length against the buffer ([`Ipv4Packet::new_quoted`] the header
//! only, for a packet quoted in an ICMP error), so accessors never panic
//! afterwards. Setters keep the IPv4 header checksum right by incremental
//! update. Each protocol has its view in its module ([`tcp`], [`udp`],
//! [`icmp`], [`ipv6`], [`icmpv6`], [`ethernet`]); [`FlowHeader`] is the one
//! view of the fields a flow is known by, in whichever transport header;
//! [`Ipv4Repr`] writes the IPv4 headers the switch originates. No code
//! outside this layer reads a protocol field at an offset.

use crate::checksum::{update16, update32};
use std::net::Ipv4Addr;

pub mod ethernet;
pub mod icmp;
pub mod icmpv6;
pub mod ipv6;
pub mod probe;
pub mod tcp;
pub mod udp;

/// Length of an IPv4 header without options.
pub const IPV4_HLEN: usize = 20;

/// IP protocol numbers.
pub mod proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
}

/// A malformed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// A view of an IPv4 packet at the start of `buf`.
#[derive(Debug)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Check version 4, IHL ≥ 5, and that the header and total length fit `buf`.
    /// A total length of 0 (as in some GSO super-frames) is taken as "the buffer".
    pub fn new_checked(buf: T) -> Result<Self, Malformed> {
        let b = buf.as_ref();
        if b.len() < 20 || b[0] >> 4 != 4 {
            return Err(Malformed);
        }
        let ihl = usize::from(b[0] & 0xf) * 4;
        let total = usize::from(u16::from_be_bytes([b[2], b[3]]));
        if ihl < 20 || ihl > b.len() || (total != 0 && (total < ihl || total > b.len())) {
            return Err(Malformed);
        }
        Ok(Ipv4Packet { buf })
    }
    /// A packet quoted in an ICMP error: version 4 and a whole header (IHL
    /// ≥ 5, within `buf`), but the payload may be cut short of the total
    /// length; the payload is what is there.
    pub fn new_quoted(buf: T) -> Result<Self, Malformed> {
        let b = buf.as_ref();
        if b.len() < IPV4_HLEN || b[0] >> 4 != 4 {
            return Err(Malformed);
        }
        let ihl = usize::from(b[0] & 0xf) * 4;
        if ihl < IPV4_HLEN || ihl > b.len() {
            return Err(Malformed);
        }
        Ok(Ipv4Packet { buf })
    }
    #[inline]
    fn b(&self) -> &[u8] {
        self.buf.as_ref()
    }
    /// Header length in bytes.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.b()[0] & 0xf) * 4
    }
    /// Type of service (DSCP and ECN).
    #[inline]
    pub fn tos(&self) -> u8 {
        self.b()[1]
    }
    /// The total length field as it is (0 in some GSO super-frames).
    #[inline]
    pub fn total_len_field(&self) -> u16 {
        u16::from_be_bytes([self.b()[2], self.b()[3]])
    }
    /// Total length as used here: the header's, or the buffer's if the
    /// header says 0 (in a quote: at most the buffer, at least the header).
    #[inline]
    pub fn total_len(&self) -> usize {
        let t = usize::from(self.total_len_field());
        let len = self.b().len();
        if t == 0 {
            len
        } else {
            t.clamp(self.header_len(), len)
        }
    }
    /// The header, options included.
    #[inline]
    pub fn header(&self) -> &[u8] {
        &self.b()[..self.header_len()]
    }
    /// Identification.
    pub fn ident(&self) -> u16 {
        u16::from_be_bytes([self.b()[4], self.b()[5]])
    }
    /// Don't-fragment flag.
    pub fn dont_frag(&self) -> bool {
        self.b()[6] & 0x40 != 0
    }
    /// More-fragments flag.
    pub fn more_frags(&self) -> bool {
        self.b()[6] & 0x20 != 0
    }
    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> usize {
        usize::from(u16::from_be_bytes([self.b()[6] & 0x1f, self.b()[7]])) * 8
    }
    /// Whether this is a fragment (first or later).
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }
    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.b()[8]
    }
    /// Protocol.
    pub fn protocol(&self) -> u8 {
        self.b()[9]
    }
    /// Header checksum field.
    pub fn checksum(&self) -> u16 {
        u16::from_be_bytes([self.b()[10], self.b()[11]])
    }
    /// Whether the header checksum verifies.
    pub fn checksum_ok(&self) -> bool {
        crate::checksum::checksum(&self.b()[..self.header_len()]) == 0
    }
    /// Source address.
    pub fn src(&self) -> Ipv4Addr {
        let b = self.b();
        Ipv4Addr::new(b[12], b[13], b[14], b[15])
    }
    /// Destination address.
    pub fn dst(&self) -> Ipv4Addr {
        let b = self.b();
        Ipv4Addr::new(b[16], b[17], b[18], b[19])
    }
    /// The transport payload (after the header, up to the total length).
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    fn m(&mut self) -> &mut [u8] {
        self.buf.as_mut()
    }
    fn set_csum(&mut self, v: u16) {
        self.m()[10..12].copy_from_slice(&v.to_be_bytes());
    }
    /// Set the source address, updating the header checksum.
    pub fn set_src(&mut self, a: Ipv4Addr) {
        let old = u32::from(self.src());
        let c = update32(self.checksum(), old, u32::from(a));
        self.m()[12..16].copy_from_slice(&a.octets());
        self.set_csum(c);
    }
    /// Set the destination address, updating the header checksum.
    pub fn set_dst(&mut self, a: Ipv4Addr) {
        let old = u32::from(self.dst());
        let c = update32(self.checksum(), old, u32::from(a));
        self.m()[16..20].copy_from_slice(&a.octets());
        self.set_csum(c);
    }
    /// Decrement the TTL, updating the header checksum.
    pub fn dec_ttl(&mut self) {
        let b = self.b();
        let old = u16::from_be_bytes([b[8], b[9]]);
        let new = old.wrapping_sub(0x100);
        let c = update16(self.checksum(), old, new);
        self.m()[8] = (new >> 8) as u8;
        self.set_csum(c);
    }
    /// Set the TTL, updating the header checksum.
    pub fn set_ttl(&mut self, ttl: u8) {
        let b = self.b();
        let old = u16::from_be_bytes([b[8], b[9]]);
        let new = u16::from_be_bytes([ttl, b[9]]);
        let c = update16(self.checksum(), old, new);
        self.m()[8] = ttl;
        self.set_csum(c);
    }
    /// Set the identification, updating the header checksum.
    pub fn set_ident(&mut self, id: u16) {
        let c = update16(self.checksum(), self.ident(), id);
        self.m()[4..6].copy_from_slice(&id.to_be_bytes());
        self.set_csum(c);
    }
    /// Set the fragment field: MF if `more`, offset `offset` bytes (a
    /// multiple of 8, below 65,536), DF and the reserved bit cleared;
    /// updating the header checksum.
    pub fn set_frag(&mut self, more: bool, offset: usize) {
        let b = self.b();
        let old = u16::from_be_bytes([b[6], b[7]]);
        let new = if more { 0x2000 } else { 0 } | ((offset / 8) as u16 & 0x1fff);
        let c = update16(self.checksum(), old, new);
        self.m()[6..8].copy_from_slice(&new.to_be_bytes());
        self.set_csum(c);
    }
    /// Recompute the header checksum from scratch.
    pub fn fill_checksum(&mut self) {
        self.set_csum(0);
        let hl = self.header_len();
        let c = crate::checksum::checksum(&self.b()[..hl]);
        self.set_csum(c);
    }
    /// The transport payload, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (h, t) = (self.header_len(), self.total_len());
        &mut self.m()[h..t]
    }
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// The header of a later fragment of this packet (RFC 791 3.1): the
    /// fixed header with only the options whose "copied" flag is set, padded
    /// to 32 bits, written into `out`; returns its length. Its total length,
    /// fragment field and checksum are still this packet's: see
    /// [`emit_with_payload`]. A malformed option ends the copy.
    pub fn copied_options_header(&self, out: &mut [u8; 60]) -> usize {
        let hdr = self.header();
        out[..IPV4_HLEN].copy_from_slice(&hdr[..IPV4_HLEN]);
        let mut n = IPV4_HLEN;
        let mut i = IPV4_HLEN;
        while i < hdr.len() {
            let t = hdr[i];
            if t == 0 {
                break; // end of option list
            }
            if t == 1 {
                i += 1; // NOP: not copied
                continue;
            }
            let Some(&l) = hdr.get(i + 1) else { break };
            let l = usize::from(l);
            if l < 2 || i + l > hdr.len() {
                break; // malformed: copy no more
            }
            if t & 0x80 != 0 {
                out[n..n + l].copy_from_slice(&hdr[i..i + l]);
                n += l;
            }
            i += l;
        }
        while !n.is_multiple_of(4) {
            out[n] = 0;
            n += 1;
        }
        out[0] = 0x40 | (n / 4) as u8;
        n
    }
}

/// Write the IPv4 header `hdr` (of a packet being split: a fragment's or a
/// segment's) and the payload `parts` after it into `out`, with the total
/// length set to theirs; the other fields, and the header checksum, are the
/// caller's to set (see [`Ipv4Packet::fill_checksum`]). `None` if `hdr` is
/// not an IPv4 header of its own length, `out` is too small, or the packet
/// would pass 65,535 bytes.
pub fn emit_with_payload<'a>(
    out: &'a mut [u8],
    hdr: &[u8],
    parts: &[&[u8]],
) -> Option<Ipv4Packet<&'a mut [u8]>> {
    let h = hdr.len();
    let total = h + parts.iter().map(|p| p.len()).sum::<usize>();
    let t = u16::try_from(total).ok()?;
    let b = out.get_mut(..total)?;
    if h < IPV4_HLEN {
        return None;
    }
    b[..h].copy_from_slice(hdr);
    let mut at = h;
    for p in parts {
        b[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    b[2..4].copy_from_slice(&t.to_be_bytes());
    let p = Ipv4Packet::new_checked(b).ok()?;
    (p.header_len() == h).then_some(p)
}

/// The fields of an IPv4 header the switch originates (no options,
/// identification 0): [`Ipv4Repr::emit`] writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Repr {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol ([`proto`]).
    pub proto: u8,
    /// Time to live.
    pub ttl: u8,
    /// Type of service (0xc0, internetwork control, for ICMP errors).
    pub tos: u8,
    /// Don't-fragment flag.
    pub dont_frag: bool,
}

impl Ipv4Repr {
    /// Write the 20-byte header of a packet with `payload_len` bytes of
    /// payload into `out`, its checksum filled; returns the header length.
    /// `None` if `out` is shorter than the header or the total length would
    /// pass 65,535.
    pub fn emit(&self, out: &mut [u8], payload_len: usize) -> Option<usize> {
        let total = u16::try_from(IPV4_HLEN + payload_len).ok()?;
        let b = out.get_mut(..IPV4_HLEN)?;
        let t = total.to_be_bytes();
        let df = if self.dont_frag { 0x40 } else { 0 };
        b[..12].copy_from_slice(&[
            0x45, self.tos, t[0], t[1], 0, 0, df, 0, self.ttl, self.proto, 0, 0,
        ]);
        b[12..16].copy_from_slice(&self.src.octets());
        b[16..20].copy_from_slice(&self.dst.octets());
        let c = crate::checksum::checksum(b);
        b[10..12].copy_from_slice(&c.to_be_bytes());
        Some(IPV4_HLEN)
    }
}

/// ICMP types used here.
pub mod icmp_type {
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 0;
    /// Destination unreachable.
    pub const DEST_UNREACH: u8 = 3;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 8;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 11;
    /// Parameter problem.
    pub const PARAM_PROBLEM: u8 = 12;
}

/// Whether an ICMP type is an error that embeds the offending packet.
pub fn icmp_is_error(t: u8) -> bool {
    matches!(
        t,
        icmp_type::DEST_UNREACH | icmp_type::TIME_EXCEEDED | icmp_type::PARAM_PROBLEM
    )
}

/// TCP flag bits.
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
    /// CWR.
    pub const CWR: u8 = 0x80;
}

/// The ports of a flow as the transport header `l4` of protocol `proto`
/// gives them, in the family whose ICMP is `icmp` (1, or 58 for ICMPv6):
/// TCP and UDP source and destination ports (with the TCP flags, 0 for
/// UDP); an ICMP echo's identifier as the source port of a request and the
/// destination port of a reply (with the echo's type). `None`: too short
/// for them, or no ports (other ICMP messages, other protocols). The one
/// reading of flow ports, for the NAT and the ACL alike.
pub fn flow_ports(proto: u8, icmp: u8, l4: &[u8]) -> Option<(u16, u16, u8)> {
    let port = |at: usize| Some(u16::from_be_bytes([*l4.get(at)?, *l4.get(at + 1)?]));
    match proto {
        proto::TCP => Some((port(0)?, port(2)?, *l4.get(13)?)),
        proto::UDP => Some((port(0)?, port(2)?, 0)),
        p if p == icmp && l4.len() >= 8 => {
            let (req, rep) = if icmp == proto::ICMP {
                (icmp_type::ECHO_REQUEST, icmp_type::ECHO_REPLY)
            } else {
                (
                    icmpv6::icmp6_type::ECHO_REQUEST,
                    icmpv6::icmp6_type::ECHO_REPLY,
                )
            };
            let id = port(4)?;
            match l4[0] {
                t if t == req => Some((id, 0, t)),
                t if t == rep => Some((0, id, t)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The fields a flow is known by in the transport header of protocol
/// `proto` (TCP, UDP, or the family's ICMP `icmp`: 1, or 58 for ICMPv6,
/// whose header has the same layout), as much of it as `buf` holds: the
/// view through which the NAT rewrites ports, echo identifiers and the
/// checksum alike, in a packet or in the quote of an ICMP error.
///
/// Contract: [`FlowHeader::new`] needs the first 4 bytes (TCP and UDP
/// ports, the ICMP type, code and checksum) and one of those protocols;
/// the fields past them are `Option`s (or setters that write nothing)
/// when `buf` ends before them, so nothing panics on a short quote.
#[derive(Debug)]
pub struct FlowHeader<T: AsRef<[u8]>> {
    buf: T,
    proto: u8,
    icmp: bool,
}

impl<T: AsRef<[u8]>> FlowHeader<T> {
    /// View `buf` as the header of `proto` in the family whose ICMP is `icmp`.
    #[inline]
    pub fn new(proto: u8, icmp: u8, buf: T) -> Result<Self, Malformed> {
        let is_icmp = proto == icmp;
        if buf.as_ref().len() < 4 || !(is_icmp || proto == proto::TCP || proto == proto::UDP) {
            return Err(Malformed);
        }
        Ok(FlowHeader {
            buf,
            proto,
            icmp: is_icmp,
        })
    }
    #[inline]
    fn u16_at(&self, at: usize) -> Option<u16> {
        let b = self.buf.as_ref();
        Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
    }
    /// The bytes viewed.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.as_ref()
    }
    /// Whether this is the family's ICMP.
    #[inline]
    pub fn is_icmp(&self) -> bool {
        self.icmp
    }
    /// Where the checksum field is, if `buf` holds it: TCP 16, UDP 6, and
    /// 2 in an ICMP message (whose 8-byte header must be whole).
    #[inline]
    fn checksum_at(&self) -> Option<usize> {
        let len = self.buf.as_ref().len();
        match self.proto {
            proto::TCP if len >= 18 => Some(16),
            proto::UDP if len >= 8 => Some(6),
            _ if self.icmp && len >= 8 => Some(2),
            _ => None,
        }
    }
    /// The checksum field, if `buf` holds it (see above).
    #[inline]
    pub fn checksum(&self) -> Option<u16> {
        self.u16_at(self.checksum_at()?)
    }
    /// TCP/UDP source and destination ports (the first 4 bytes).
    #[inline]
    pub fn ports(&self) -> (u16, u16) {
        let b = self.buf.as_ref();
        (
            u16::from_be_bytes([b[0], b[1]]),
            u16::from_be_bytes([b[2], b[3]]),
        )
    }
    /// The ICMP type (the first byte).
    #[inline]
    pub fn icmp_type(&self) -> u8 {
        self.buf.as_ref()[0]
    }
    /// The ICMP echo identifier, if the 8-byte header is whole.
    #[inline]
    pub fn echo_ident(&self) -> Option<u16> {
        if self.buf.as_ref().len() < 8 {
            return None;
        }
        self.u16_at(4)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> FlowHeader<T> {
    /// Set the checksum field, if `buf` holds it.
    #[inline]
    pub fn set_checksum(&mut self, c: u16) {
        if let Some(at) = self.checksum_at() {
            self.buf.as_mut()[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
    }
    /// Set the TCP/UDP ports (the checksum is the caller's).
    #[inline]
    pub fn set_ports(&mut self, src: u16, dst: u16) {
        let b = self.buf.as_mut();
        b[0..2].copy_from_slice(&src.to_be_bytes());
        b[2..4].copy_from_slice(&dst.to_be_bytes());
    }
    /// Set the ICMP echo identifier, if the 8-byte header is whole (the
    /// checksum is the caller's).
    #[inline]
    pub fn set_echo_ident(&mut self, id: u16) {
        if self.icmp && self.buf.as_ref().len() >= 8 {
            self.buf.as_mut()[4..6].copy_from_slice(&id.to_be_bytes());
        }
    }
}

/// Offset of the checksum field within a transport header, if it has one we track.
pub fn l4_checksum_offset(proto: u8) -> Option<usize> {
    match proto {
        proto::TCP => Some(16),
        proto::UDP => Some(6),
        proto::ICMP => Some(2),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_headers() {
        assert!(Ipv4Packet::new_checked(&[0x45u8; 10][..]).is_err());
        let mut h = [0u8; 20];
        h[0] = 0x65;
        assert!(Ipv4Packet::new_checked(&h[..]).is_err());
        h[0] = 0x46; // IHL 24 > 20 bytes
        assert!(Ipv4Packet::new_checked(&h[..]).is_err());
        h[0] = 0x45;
        h[3] = 40; // total 40 > 20
        assert!(Ipv4Packet::new_checked(&h[..]).is_err());
        h[3] = 20;
        assert!(Ipv4Packet::new_checked(&h[..]).is_ok());
    }

    #[test]
    fn ttl_and_address_updates_keep_checksum() {
        let mut h = [
            0x45, 0, 0, 20, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        let mut p = Ipv4Packet::new_checked(&mut h[..]).unwrap();
        p.fill_checksum();
        p.dec_ttl();
        p.set_src(Ipv4Addr::new(203, 0, 113, 1));
        p.set_dst(Ipv4Addr::new(198, 51, 100, 7));
        assert_eq!(p.ttl(), 63);
        assert!(p.checksum_ok());
    }

    #[test]
    fn repr_emit_and_setters_agree_with_etherparse() {
        let r = Ipv4Repr {
            src: Ipv4Addr::new(10, 0, 0, 1),
            dst: Ipv4Addr::new(10, 0, 0, 2),
            proto: proto::UDP,
            ttl: 64,
            tos: 0xc0,
            dont_frag: true,
        };
        let mut b = [0u8; 28];
        assert_eq!(r.emit(&mut b, 8), Some(20));
        assert_eq!(r.emit(&mut b[..19], 8), None);
        assert_eq!(r.emit(&mut b, 65_516), None);
        let (h, _) = etherparse::Ipv4Header::from_slice(&b).unwrap();
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        assert_eq!(
            (h.total_len, h.time_to_live, h.dont_fragment),
            (28, 64, true)
        );
        assert_eq!(h.protocol, etherparse::IpNumber::UDP);
        assert_eq!((h.source, h.destination), ([10, 0, 0, 1], [10, 0, 0, 2]));
        let mut p = Ipv4Packet::new_checked(&mut b[..]).unwrap();
        p.set_ttl(3);
        p.set_ident(0xbeef);
        p.set_frag(true, 1480);
        assert!(p.checksum_ok());
        let (h, _) = etherparse::Ipv4Header::from_slice(&b).unwrap();
        assert_eq!((h.time_to_live, h.identification), (3, 0xbeef));
        assert!(h.more_fragments && !h.dont_fragment);
        assert_eq!(h.fragment_offset.value(), 185);
    }

    #[test]
    fn quotes_and_later_fragment_headers() {
        // A header with a copied option (type 0x83, loose source route) and a not copied one (7).
        let mut h = vec![0x48u8, 0, 0x05, 0xdc, 0, 1, 0, 0, 64, 17, 0, 0];
        h.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        h.extend_from_slice(&[7, 3, 0, 1, 0x83, 7, 4, 1, 2, 3, 4, 0]);
        let mut with_data = h.clone();
        with_data.extend_from_slice(&[9; 12]);
        // Cut short of its total length: a quote, not a packet.
        assert!(Ipv4Packet::new_checked(&with_data[..]).is_err());
        let q = Ipv4Packet::new_quoted(&with_data[..]).unwrap();
        assert_eq!(
            (q.header_len(), q.total_len(), q.payload()),
            (32, 44, &[9; 12][..])
        );
        assert!(Ipv4Packet::new_quoted(&with_data[..31]).is_err());
        let mut later = [0u8; 60];
        let n = q.copied_options_header(&mut later);
        assert_eq!(n, 28);
        assert_eq!(&later[20..28], &[0x83, 7, 4, 1, 2, 3, 4, 0]);
        let mut out = [0u8; 64];
        let mut f = emit_with_payload(&mut out, &later[..n], &[b"abcd", b"efgh"]).unwrap();
        f.set_frag(false, 8);
        f.fill_checksum();
        let (e, rest) = etherparse::Ipv4Header::from_slice(&out[..36]).unwrap();
        assert_eq!((e.total_len, e.header_len()), (36, 28));
        assert_eq!(e.header_checksum, e.calc_header_checksum());
        assert_eq!(rest, b"abcdefgh");
        assert!(emit_with_payload(&mut out[..30], &later[..n], &[b"abcdefgh"]).is_none());
        assert!(emit_with_payload(&mut out, &later[..n - 4], &[]).is_none());
    }

    #[test]
    fn flow_headers_read_and_write_what_the_quote_holds() {
        let mut t = [0x9c, 0x40, 0, 80, 0, 0, 0, 1];
        let mut h = FlowHeader::new(proto::TCP, proto::ICMP, &mut t[..]).unwrap();
        assert_eq!((h.ports(), h.checksum()), ((40000, 80), None));
        h.set_ports(1, 2);
        h.set_checksum(7); // not there: nothing written
        h.set_echo_ident(9); // not ICMP: nothing written
        assert_eq!(t, [0, 1, 0, 2, 0, 0, 0, 1]);
        let mut u = [0, 53, 0, 53, 0, 8, 0x12, 0x34];
        let h = FlowHeader::new(proto::UDP, proto::ICMP, &mut u[..]).unwrap();
        assert_eq!(h.checksum(), Some(0x1234));
        let mut e = [8, 0, 0xab, 0xcd, 0x12, 0x34, 0, 1];
        let mut h = FlowHeader::new(proto::ICMP, proto::ICMP, &mut e[..]).unwrap();
        assert_eq!(
            (h.icmp_type(), h.echo_ident(), h.checksum()),
            (8, Some(0x1234), Some(0xabcd))
        );
        h.set_echo_ident(0x4321);
        h.set_checksum(1);
        assert_eq!(e, [8, 0, 0, 1, 0x43, 0x21, 0, 1]);
        let h = FlowHeader::new(proto::ICMP, proto::ICMP, &e[..6]).unwrap();
        assert_eq!((h.echo_ident(), h.checksum()), (None, None));
        assert!(FlowHeader::new(proto::TCP, proto::ICMP, &e[..3]).is_err());
        assert!(FlowHeader::new(47, proto::ICMP, &e[..]).is_err());
    }
}
