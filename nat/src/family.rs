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
//!
//! [`Net`] is the prefix of either family ([`Ipv4Net`], [`Ipv6Net`]), the
//! one the whole workspace uses: parsed from and displayed as `addr/len`.

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

/// A prefix of family `A`: an address and a prefix length, written
/// `addr/prefix` (`192.168.15.1/24`, `fd00:15::/64`).
///
/// `addr` may have host bits set (an interface's address with its subnet);
/// every method masks it as needed. A `prefix` beyond the family's width
/// (never produced by parsing) is taken as the full width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Net<A> {
    /// An address in the prefix (host bits may be set).
    pub addr: A,
    /// Prefix length, 0..=32 (IPv4) or 0..=128 (IPv6).
    pub prefix: u8,
}

impl<A: Family> Net<A> {
    /// Whether `ip` is inside: its first `prefix` bits are `addr`'s.
    pub fn contains(&self, ip: A) -> bool {
        ip.in_prefix(self.addr, self.prefix)
    }
}

impl Net<Ipv4Addr> {
    /// The network mask as a host-order integer (`prefix` leading ones; 0 for /0).
    pub fn mask(&self) -> u32 {
        match self.prefix.min(32) {
            0 => 0,
            p => u32::MAX << (32 - u32::from(p)),
        }
    }

    /// The network address: `addr` with the host bits cleared.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    /// The directed broadcast address: `addr` with the host bits set.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }
}

impl Net<Ipv6Addr> {
    /// The network mask (`prefix` leading ones; 0 for /0).
    pub fn mask(&self) -> u128 {
        match self.prefix.min(128) {
            0 => 0,
            p => u128::MAX << (128 - u32::from(p)),
        }
    }

    /// The network address: `addr` with the host bits cleared.
    pub fn network(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.addr) & self.mask())
    }
}

/// `addr/prefix`.
impl<A: Display> Display for Net<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Parse `addr/len` with `addr` of type `A` and `len` in `0..=max`; the
/// messages name `expected` (the form) and `family` (in "is not an ... address").
fn parse_net<A: std::str::FromStr>(
    s: &str,
    expected: &str,
    family: &str,
    max: u8,
) -> Result<Net<A>, String> {
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a CIDR (expected {expected})"))?;
    let addr: A = a
        .parse()
        .map_err(|_| format!("{a:?} is not an {family} address"))?;
    let prefix: u8 = p
        .parse()
        .ok()
        .filter(|p| *p <= max)
        .ok_or_else(|| format!("prefix length {p:?} is not in 0..={max}"))?;
    Ok(Net { addr, prefix })
}

/// Parses `a.b.c.d/len`, `len` in 0..=32; the length is required. Host bits
/// are kept. The error is a message for the user.
impl std::str::FromStr for Net<Ipv4Addr> {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_net(s, "a.b.c.d/len", "IPv4", 32)
    }
}

/// Parses `addr/len` (any IPv6 text form), `len` in 0..=128; the length is
/// required. Host bits are kept. The error is a message for the user.
impl std::str::FromStr for Net<Ipv6Addr> {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_net(s, "an IPv6 address/len", "IPv6", 128)
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

    #[test]
    fn ipv4_nets_parse_and_display() {
        let n: Ipv4Net = "192.168.15.7/24".parse().unwrap();
        assert_eq!(n.addr, Ipv4Addr::new(192, 168, 15, 7));
        assert_eq!(n.prefix, 24);
        assert_eq!(n.to_string(), "192.168.15.7/24");
        assert_eq!(n.mask(), 0xffff_ff00);
        assert_eq!(n.network(), Ipv4Addr::new(192, 168, 15, 0));
        assert_eq!(n.broadcast(), Ipv4Addr::new(192, 168, 15, 255));
        assert!(n.contains(Ipv4Addr::new(192, 168, 15, 200)));
        assert!(!n.contains(Ipv4Addr::new(192, 168, 16, 1)));

        let all: Ipv4Net = "10.1.2.3/0".parse().unwrap();
        assert_eq!(all.mask(), 0);
        assert_eq!(all.network(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(all.broadcast(), Ipv4Addr::BROADCAST);
        assert!(all.contains(Ipv4Addr::new(203, 0, 113, 9)));
        assert_eq!(all.to_string(), "10.1.2.3/0");

        let host: Ipv4Net = "10.1.2.3/32".parse().unwrap();
        assert_eq!(host.mask(), u32::MAX);
        assert_eq!(host.network(), host.addr);
        assert_eq!(host.broadcast(), host.addr);
        assert!(host.contains(host.addr));
        assert!(!host.contains(Ipv4Addr::new(10, 1, 2, 4)));

        // Out of range (hand-built) prefixes count as the full width.
        let wide = Ipv4Net {
            addr: Ipv4Addr::new(10, 1, 2, 3),
            prefix: 40,
        };
        assert_eq!(wide.mask(), u32::MAX);
        assert!(wide.contains(wide.addr));
    }

    #[test]
    fn ipv4_net_errors_are_messages() {
        let e = |s: &str| s.parse::<Ipv4Net>().unwrap_err();
        assert_eq!(
            e("10.0.0.3"),
            "\"10.0.0.3\" is not a CIDR (expected a.b.c.d/len)"
        );
        assert_eq!(e("10.0.0.300/24"), "\"10.0.0.300\" is not an IPv4 address");
        assert_eq!(e("fd00::1/64"), "\"fd00::1\" is not an IPv4 address");
        assert_eq!(e("10.0.0.3/33"), "prefix length \"33\" is not in 0..=32");
        assert_eq!(e("10.0.0.3/"), "prefix length \"\" is not in 0..=32");
        assert_eq!(e("10.0.0.3/x"), "prefix length \"x\" is not in 0..=32");
        assert_eq!(e("10.0.0.3/-1"), "prefix length \"-1\" is not in 0..=32");
    }

    #[test]
    fn ipv6_nets_parse_and_display() {
        let n: Ipv6Net = "fd00:15::1/64".parse().unwrap();
        assert_eq!(n.addr, "fd00:15::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(n.prefix, 64);
        assert_eq!(n.to_string(), "fd00:15::1/64");
        assert!(n.contains("fd00:15::ffff:1".parse().unwrap()));
        assert!(!n.contains("fd00:16::1".parse().unwrap()));
        // Display uses the canonical text form.
        let long: Ipv6Net = "FD00:0015:0:0:0:0:0:0/48".parse().unwrap();
        assert_eq!(long.to_string(), "fd00:15::/48");

        let all: Ipv6Net = "::/0".parse().unwrap();
        assert!(all.contains("2001:db8::1".parse().unwrap()));
        assert_eq!(all.to_string(), "::/0");

        let host: Ipv6Net = "2001:db8::1/128".parse().unwrap();
        assert!(host.contains(host.addr));
        assert!(!host.contains("2001:db8::2".parse().unwrap()));
        assert_eq!(host.to_string(), "2001:db8::1/128");
    }

    #[test]
    fn ipv6_net_errors_are_messages() {
        let e = |s: &str| s.parse::<Ipv6Net>().unwrap_err();
        assert_eq!(
            e("2001:db8::1"),
            "\"2001:db8::1\" is not a CIDR (expected an IPv6 address/len)"
        );
        assert_eq!(e("fe80::x/64"), "\"fe80::x\" is not an IPv6 address");
        assert_eq!(e("10.0.0.1/24"), "\"10.0.0.1\" is not an IPv6 address");
        assert_eq!(e("fe80::/129"), "prefix length \"129\" is not in 0..=128");
        assert_eq!(e("fe80::/"), "prefix length \"\" is not in 0..=128");
        assert_eq!(e("fe80::/64/1"), "prefix length \"64/1\" is not in 0..=128");
    }
}
