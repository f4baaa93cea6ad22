//! The address family the NAT engine and the connection table are generic
//! over: IPv4 ([`Ipv4Addr`]) or IPv6 ([`Ipv6Addr`]).
//!
//! Contract: [`Family::parse`] validates a packet and finds its transport
//! header (through IPv6 extension headers, see [`crate::wire::ipv6`]);
//! [`Family::set_src`]/[`Family::set_dst`] rewrite addresses in a buffer
//! that `parse` accepted, keeping the IPv4 header checksum right (IPv6 has
//! none). Transport checksums are the caller's: the address bytes
//! ([`Family::bytes`]) enter them through the pseudo-header for TCP and UDP
//! in both families, and for ICMP only in IPv6 ([`Family::ICMP_PSEUDO`]).

use crate::wire::icmpv6::icmp6_type;
use crate::wire::ipv6::{Ipv6Packet, next_header};
use crate::wire::{Ipv4Packet, Malformed, icmp_type, proto};
use std::fmt::{Debug, Display};
use std::hash::Hash;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Where a fragment's data sits, and which datagram it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragInfo {
    /// Offset of the data, bytes (0: the first fragment).
    pub offset: usize,
    /// More fragments follow.
    pub more: bool,
    /// Identification (16 bits in IPv4, 32 in IPv6).
    pub id: u32,
    /// The protocol every fragment of the datagram carries in its header
    /// (IPv4's protocol; IPv6's fragment header's next header): the
    /// datagram's key, with the addresses and the identification.
    pub proto: u8,
}

/// What the NAT needs of an IP header.
#[derive(Debug, Clone, Copy)]
pub struct Hdr<A> {
    /// Source address.
    pub src: A,
    /// Destination address.
    pub dst: A,
    /// Transport protocol (after IPv6 extension headers).
    pub proto: u8,
    /// Offset of the transport header (for a later fragment: of its data).
    pub l4: usize,
    /// Length of the packet (header and payload).
    pub total: usize,
    /// Fragment information, if a fragment.
    pub frag: Option<FragInfo>,
}

/// An IP address family.
pub trait Family:
    Copy + Eq + Ord + Hash + Debug + Display + Into<std::net::IpAddr> + Send + Sync + 'static
{
    /// The unspecified address (the NAT's pseudo-host for connections opened from outside).
    const UNSPECIFIED: Self;
    /// The family's ICMP protocol number (1, or 58 for ICMPv6).
    const ICMP: u8;
    /// Echo request type.
    const ECHO_REQUEST: u8;
    /// Echo reply type.
    const ECHO_REPLY: u8;
    /// Whether the ICMP checksum covers the pseudo-header (ICMPv6 does).
    const ICMP_PSEUDO: bool;
    /// Address length in bytes.
    const LEN: usize;
    /// The address bytes (the first [`Family::LEN`] of the array).
    fn bytes(self) -> [u8; 16];
    /// The address whose bytes are the first [`Family::LEN`] of `b`.
    fn from_bytes(b: [u8; 16]) -> Self;
    /// Whether an ICMP type is an error that embeds the offending packet.
    fn icmp_is_error(t: u8) -> bool;
    /// Whether `self` lies in `net`/`prefix`.
    fn in_prefix(self, net: Self, prefix: u8) -> bool;

    /// Validate the packet at the start of `buf` (`partial`: a CHECKSUM_PARTIAL
    /// GSO frame, whose length field may be 0).
    fn parse(buf: &[u8], partial: bool) -> Result<Hdr<Self>, Malformed>;
    /// The header of an embedded, possibly truncated packet (in an ICMP
    /// error): source, destination, protocol, transport offset.
    fn parse_inner(buf: &[u8]) -> Option<(Self, Self, u8, usize)>;
    /// Set the source address of the packet at the start of `buf`.
    fn set_src(buf: &mut [u8], a: Self);
    /// Set the destination address.
    fn set_dst(buf: &mut [u8], a: Self);
    /// Set both addresses of an embedded, possibly truncated header that
    /// [`Family::parse_inner`] accepted (IPv4: keeping its header checksum).
    fn set_inner(inner: &mut [u8], src: Self, dst: Self);
}

impl Family for Ipv4Addr {
    const UNSPECIFIED: Self = Ipv4Addr::UNSPECIFIED;
    const ICMP: u8 = proto::ICMP;
    const ECHO_REQUEST: u8 = icmp_type::ECHO_REQUEST;
    const ECHO_REPLY: u8 = icmp_type::ECHO_REPLY;
    const ICMP_PSEUDO: bool = false;
    const LEN: usize = 4;
    fn bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&self.octets());
        b
    }
    fn from_bytes(b: [u8; 16]) -> Self {
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }
    fn icmp_is_error(t: u8) -> bool {
        crate::wire::icmp_is_error(t)
    }
    fn in_prefix(self, net: Self, prefix: u8) -> bool {
        let m = match prefix.min(32) {
            0 => 0,
            p => u32::MAX << (32 - u32::from(p)),
        };
        u32::from(self) & m == u32::from(net) & m
    }
    fn parse(buf: &[u8], partial: bool) -> Result<Hdr<Self>, Malformed> {
        let ip = Ipv4Packet::new_checked(buf)?;
        if !partial && buf.get(2..4) == Some(&[0, 0]) {
            return Err(Malformed);
        }
        Ok(Hdr {
            src: ip.src(),
            dst: ip.dst(),
            proto: ip.protocol(),
            l4: ip.header_len(),
            total: ip.total_len(),
            frag: ip.is_fragment().then(|| FragInfo {
                offset: ip.frag_offset(),
                more: ip.more_frags(),
                id: u32::from(ip.ident()),
                proto: ip.protocol(),
            }),
        })
    }
    fn parse_inner(inner: &[u8]) -> Option<(Self, Self, u8, usize)> {
        let ip = Ipv4Packet::new_quoted(inner).ok()?;
        let ihl = ip.header_len();
        if inner.len() < ihl + 8 {
            return None;
        }
        Some((ip.src(), ip.dst(), ip.protocol(), ihl))
    }
    fn set_src(buf: &mut [u8], a: Self) {
        if let Ok(mut ip) = Ipv4Packet::new_checked(buf) {
            ip.set_src(a);
        }
    }
    fn set_dst(buf: &mut [u8], a: Self) {
        if let Ok(mut ip) = Ipv4Packet::new_checked(buf) {
            ip.set_dst(a);
        }
    }
    fn set_inner(inner: &mut [u8], src: Self, dst: Self) {
        if let Ok(mut ip) = Ipv4Packet::new_quoted(inner) {
            ip.set_src(src);
            ip.set_dst(dst);
        }
    }
}

impl Family for Ipv6Addr {
    const UNSPECIFIED: Self = Ipv6Addr::UNSPECIFIED;
    const ICMP: u8 = next_header::ICMPV6;
    const ECHO_REQUEST: u8 = icmp6_type::ECHO_REQUEST;
    const ECHO_REPLY: u8 = icmp6_type::ECHO_REPLY;
    const ICMP_PSEUDO: bool = true;
    const LEN: usize = 16;
    fn bytes(self) -> [u8; 16] {
        self.octets()
    }
    fn from_bytes(b: [u8; 16]) -> Self {
        Ipv6Addr::from(b)
    }
    fn icmp_is_error(t: u8) -> bool {
        crate::wire::icmpv6::icmp6_is_error(t)
    }
    fn in_prefix(self, net: Self, prefix: u8) -> bool {
        let m = match prefix.min(128) {
            0 => 0,
            p => u128::MAX << (128 - u32::from(p)),
        };
        u128::from(self) & m == u128::from(net) & m
    }
    fn parse(buf: &[u8], partial: bool) -> Result<Hdr<Self>, Malformed> {
        let ip = Ipv6Packet::new_checked(buf)?;
        if !partial && buf.get(4..6) == Some(&[0, 0]) {
            return Err(Malformed);
        }
        let u = ip.upper()?;
        Ok(Hdr {
            src: ip.src(),
            dst: ip.dst(),
            proto: u.proto,
            l4: u.offset,
            total: ip.total_len(),
            frag: u.frag.map(|f| FragInfo {
                offset: f.offset,
                more: f.more,
                id: f.ident,
                proto: f.next,
            }),
        })
    }
    fn parse_inner(inner: &[u8]) -> Option<(Self, Self, u8, usize)> {
        // The quote may be cut anywhere: its extension headers are walked
        // (bounded) as far as it goes; a quoted later fragment carries no
        // transport header.
        let ip = Ipv6Packet::new_quoted(inner).ok()?;
        let u = ip.upper().ok()?;
        if u.frag.is_some_and(|f| f.offset != 0) || inner.len() < u.offset + 8 {
            return None;
        }
        Some((ip.src(), ip.dst(), u.proto, u.offset))
    }
    fn set_src(buf: &mut [u8], a: Self) {
        if let Ok(mut p) = Ipv6Packet::new_quoted(buf) {
            p.set_src(a);
        }
    }
    fn set_dst(buf: &mut [u8], a: Self) {
        if let Ok(mut p) = Ipv6Packet::new_quoted(buf) {
            p.set_dst(a);
        }
    }
    fn set_inner(inner: &mut [u8], src: Self, dst: Self) {
        Self::set_src(inner, src);
        Self::set_dst(inner, dst);
    }
}

/// A prefix of family `A`: an address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Net<A> {
    /// Network address.
    pub addr: A,
    /// Prefix length.
    pub prefix: u8,
}

impl<A: Family> Net<A> {
    /// Whether `ip` is inside.
    pub fn contains(&self, ip: A) -> bool {
        ip.in_prefix(self.addr, self.prefix)
    }
}

/// An IPv4 prefix.
pub type Ipv4Net = Net<Ipv4Addr>;
/// An IPv6 prefix.
pub type Ipv6Net = Net<Ipv6Addr>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_of_both_families() {
        let n = Ipv4Net {
            addr: Ipv4Addr::new(192, 168, 15, 0),
            prefix: 24,
        };
        assert!(n.contains(Ipv4Addr::new(192, 168, 15, 200)));
        assert!(!n.contains(Ipv4Addr::new(192, 168, 16, 1)));
        let n6 = Ipv6Net {
            addr: "fd00:15::".parse().unwrap(),
            prefix: 64,
        };
        assert!(n6.contains("fd00:15::ffff:1".parse().unwrap()));
        assert!(!n6.contains("fd00:16::1".parse().unwrap()));
        assert!(
            Net {
                addr: Ipv6Addr::UNSPECIFIED,
                prefix: 0
            }
            .contains("2001:db8::1".parse().unwrap())
        );
    }
}
