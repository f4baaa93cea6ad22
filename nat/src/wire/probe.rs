//! Probe packets: the TCP SYN, UDP datagram or ICMP/ICMPv6 echo request
//! that `vswitch trace` feeds to the switch's own code.
//!
//! Contract: [`emit`] writes one whole IPv4 or IPv6 packet (header,
//! transport header, no payload) with every checksum right, so that the
//! NAT and the router treat it exactly as a host's packet; `None` if `out`
//! is too small or the addresses are of two families.

use super::icmpv6::{Icmpv6Packet, icmp6_type};
use super::ipv6::{IPV6_HLEN, emit_header, next_header};
use super::tcp::{TCP_HLEN, TcpPacket};
use super::udp::{UDP_HLEN, UdpPacket};
use super::{Ipv4Repr, icmp::IcmpPacket, icmp_type, proto, tcp_flags};
use crate::checksum::{fold, pseudo_header, pseudo_header6, sum};
use std::net::IpAddr;

/// What a probe carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// A TCP SYN from `sport` to `dport`.
    Syn {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
    },
    /// An empty UDP datagram.
    Udp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
    },
    /// An echo request (ICMP, or ICMPv6 between IPv6 addresses), sequence 1.
    Echo {
        /// Identifier.
        ident: u16,
    },
}

/// Write the probe from `src` to `dst` with TTL / hop limit `ttl` into
/// `out`; returns the packet's length.
pub fn emit(out: &mut [u8], src: IpAddr, dst: IpAddr, ttl: u8, probe: Probe) -> Option<usize> {
    let v6 = src.is_ipv6();
    let (l4_proto, l4_len) = match probe {
        Probe::Syn { .. } => (proto::TCP, TCP_HLEN),
        Probe::Udp { .. } => (proto::UDP, UDP_HLEN),
        Probe::Echo { .. } if v6 => (next_header::ICMPV6, 8),
        Probe::Echo { .. } => (proto::ICMP, 8),
    };
    let hl = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Ipv4Repr {
            src: s,
            dst: d,
            proto: l4_proto,
            ttl,
            tos: 0,
            dont_frag: true,
        }
        .emit(out, l4_len)?,
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            emit_header(
                out.get_mut(..IPV6_HLEN)?,
                s,
                d,
                l4_proto,
                ttl,
                l4_len as u16,
            );
            IPV6_HLEN
        }
        _ => return None,
    };
    let l4 = out.get_mut(hl..hl + l4_len)?;
    l4.fill(0);
    match probe {
        Probe::Syn { sport, dport } => {
            l4[12] = (TCP_HLEN as u8 / 4) << 4;
            let mut t = TcpPacket::new_checked(&mut *l4).ok()?;
            t.set_ports(sport, dport);
            t.set_flags(tcp_flags::SYN);
            t.set_window(65_535);
        }
        Probe::Udp { sport, dport } => {
            let mut u = UdpPacket::new_checked(&mut *l4).ok()?;
            u.set_ports(sport, dport);
            u.set_length(UDP_HLEN as u16);
        }
        Probe::Echo { ident } => {
            let t = if v6 {
                icmp6_type::ECHO_REQUEST
            } else {
                icmp_type::ECHO_REQUEST
            };
            l4[0] = t;
            l4[4..6].copy_from_slice(&ident.to_be_bytes());
            l4[6..8].copy_from_slice(&1u16.to_be_bytes());
        }
    }
    // The transport checksum over the pseudo-header (ICMPv4: without one).
    let pseudo = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo_header(s.octets(), d.octets(), l4_proto, l4_len as u16)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo_header6(s.octets(), d.octets(), l4_proto, l4_len as u32)
        }
        _ => return None,
    };
    match probe {
        Probe::Echo { .. } if !v6 => IcmpPacket::new_checked(&mut *l4).ok()?.fill_checksum(),
        Probe::Echo { .. } => {
            let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) else {
                return None;
            };
            Icmpv6Packet::new_checked(&mut *l4)
                .ok()?
                .fill_checksum(s, d);
        }
        Probe::Syn { .. } => {
            let c = !fold(pseudo + sum(l4));
            TcpPacket::new_checked(&mut *l4).ok()?.set_checksum(c);
        }
        Probe::Udp { .. } => {
            let c = match !fold(pseudo + sum(l4)) {
                0 => 0xffff,
                c => c,
            };
            UdpPacket::new_checked(&mut *l4).ok()?.set_checksum(c);
        }
    }
    Some(hl + l4_len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    /// Every probe, both families, parsed by etherparse with valid checksums.
    #[test]
    fn probes_parse_with_valid_checksums() {
        let v4: (IpAddr, IpAddr) = (
            "192.168.15.1".parse().unwrap(),
            "203.0.113.10".parse().unwrap(),
        );
        let v6: (IpAddr, IpAddr) = (
            "fd00:15::1".parse().unwrap(),
            "2001:db8:113::10".parse().unwrap(),
        );
        for (s, d) in [v4, v6] {
            for p in [
                Probe::Syn {
                    sport: 40000,
                    dport: 80,
                },
                Probe::Udp {
                    sport: 40000,
                    dport: 53,
                },
                Probe::Echo { ident: 7 },
            ] {
                let mut b = [0u8; 128];
                let n = emit(&mut b, s, d, 9, p).unwrap();
                let pk = SlicedPacket::from_ip(&b[..n]).unwrap();
                let (src, dst, ttl) = match pk.net.unwrap() {
                    NetSlice::Ipv4(i) => {
                        let h = i.header();
                        assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
                        (
                            IpAddr::from(h.source_addr()),
                            IpAddr::from(h.destination_addr()),
                            h.ttl(),
                        )
                    }
                    NetSlice::Ipv6(i) => {
                        let h = i.header();
                        (
                            IpAddr::from(h.source_addr()),
                            IpAddr::from(h.destination_addr()),
                            h.hop_limit(),
                        )
                    }
                    other => panic!("{other:?}"),
                };
                assert_eq!((src, dst, ttl), (s, d, 9));
                let ok = |c: u16, want: u16| assert_eq!(c, want, "{p:?} from {s}");
                let body = &b[n - match p {
                    Probe::Syn { .. } => 20,
                    _ => 8,
                }..n];
                match (pk.transport.unwrap(), s, d) {
                    (TransportSlice::Tcp(t), IpAddr::V4(a), IpAddr::V4(z)) => {
                        assert!(t.syn() && !t.ack());
                        ok(
                            t.checksum(),
                            t.to_header()
                                .calc_checksum_ipv4_raw(a.octets(), z.octets(), &[])
                                .unwrap(),
                        );
                    }
                    (TransportSlice::Tcp(t), IpAddr::V6(a), IpAddr::V6(z)) => {
                        ok(
                            t.checksum(),
                            t.to_header()
                                .calc_checksum_ipv6_raw(a.octets(), z.octets(), &[])
                                .unwrap(),
                        );
                    }
                    (TransportSlice::Udp(u), IpAddr::V4(a), IpAddr::V4(z)) => {
                        ok(
                            u.checksum(),
                            u.to_header()
                                .calc_checksum_ipv4_raw(a.octets(), z.octets(), &[])
                                .unwrap(),
                        );
                    }
                    (TransportSlice::Udp(u), IpAddr::V6(a), IpAddr::V6(z)) => {
                        ok(
                            u.checksum(),
                            u.to_header()
                                .calc_checksum_ipv6_raw(a.octets(), z.octets(), &[])
                                .unwrap(),
                        );
                    }
                    (TransportSlice::Icmpv4(m), ..) => {
                        assert!(
                            matches!(m.icmp_type(), etherparse::Icmpv4Type::EchoRequest(e) if e.id == 7)
                        );
                        ok(sum_check(body), 0);
                    }
                    (TransportSlice::Icmpv6(m), IpAddr::V6(a), IpAddr::V6(z)) => {
                        assert!(m.is_checksum_valid(a.octets(), z.octets()));
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        let mixed = emit(&mut [0u8; 128], v4.0, v6.1, 9, Probe::Echo { ident: 1 });
        assert_eq!(mixed, None);
        assert_eq!(
            emit(&mut [0u8; 30], v6.0, v6.1, 9, Probe::Echo { ident: 1 }),
            None
        );
    }

    fn sum_check(b: &[u8]) -> u16 {
        !fold(sum(b))
    }
}
