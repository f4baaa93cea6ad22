//! The typed wire layer: Ethernet (802.1Q), ARP, the `virtio_net_hdr`,
//! IPv4, IPv6 (with its extension headers), TCP, UDP, ICMP, ICMPv6 and NDP
//! fields, read and rewritten in place, and emitters for the messages
//! vswitch generates.
//!
//! It lives in `nat` (sans-I/O, no `unsafe`) so that both the NAT engine and
//! the switch use one set of views without a fourth crate.
//!
//! Contract: [`Ipv4Packet::new_checked`] validates version, header length and
//! total length against the buffer, so accessors never panic afterwards.
//! Setters keep the IPv4 header checksum right by incremental update.

use crate::checksum::{update16, update32};
use std::net::Ipv4Addr;

pub mod ethernet;
pub mod icmpv6;
pub mod ipv6;

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
    fn b(&self) -> &[u8] {
        self.buf.as_ref()
    }
    /// Header length in bytes.
    pub fn header_len(&self) -> usize {
        usize::from(self.b()[0] & 0xf) * 4
    }
    /// Total length as used here: the header's, or the buffer's if the header says 0.
    pub fn total_len(&self) -> usize {
        let t = usize::from(u16::from_be_bytes([self.b()[2], self.b()[3]]));
        if t == 0 { self.b().len() } else { t }
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
    /// ACK.
    pub const ACK: u8 = 0x10;
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
}
