//! NPTv6 (RFC 6296): stateless, checksum-neutral IPv6-to-IPv6 network
//! prefix translation, an alternative to NAT66 for a LAN prefix.
//!
//! Contract: an [`Npt66`] maps the internal prefix onto the external one,
//! one address to one address, with no state. Each mapped address keeps its
//! one's-complement sum (RFC 6296 3.2): the prefix is replaced and one
//! 16-bit word is adjusted, so no transport checksum changes (nor a
//! CHECKSUM_PARTIAL seed) and a translated ICMPv6 error stays valid with
//! its quote translated too. The adjusted word is the last word of the
//! prefix for prefixes of /48 and shorter, else the first word of the
//! interface identifier that is not `0xffff` (RFC 6296 3.7). Prefix lengths
//! are multiples of 16 up to 64 (the ones sites use: /48, /56 being the
//! exception, is refused rather than half-done). An address whose word to
//! adjust is `0xffff` cannot be mapped reversibly and is refused (`None`).

use crate::family::Net;
use crate::wire::icmpv6::{Icmpv6Packet, icmp6_is_error};
use crate::wire::ipv6::{Ipv6Packet, next_header};
use std::net::Ipv6Addr;

/// One's-complement 16-bit sum.
fn add(a: u16, b: u16) -> u16 {
    let s = u32::from(a) + u32::from(b);
    ((s & 0xffff) + (s >> 16)) as u16
}

/// The one's-complement sum of the first `n` words of `a`.
fn sum_words(a: &[u16; 8], n: usize) -> u16 {
    a[..n].iter().fold(0, |s, w| add(s, *w))
}

/// Why a packet was not translated (it is left untouched).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NptError {
    /// Not a well-formed IPv6 packet.
    Malformed,
    /// Its address has no word left to adjust (RFC 6296 3.5).
    Unmappable,
}

/// A prefix translation: internal prefix ↔ external prefix of one length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Npt66 {
    internal: Net<Ipv6Addr>,
    external: Net<Ipv6Addr>,
    /// Added (one's complement) to the adjusted word going out.
    adj: u16,
}

impl Npt66 {
    /// The translation of `internal` onto `external`: equal prefix lengths,
    /// a multiple of 16 between 16 and 64, prefixes that do not overlap.
    pub fn new(internal: Net<Ipv6Addr>, external: Net<Ipv6Addr>) -> Result<Npt66, String> {
        let p = internal.prefix;
        if p != external.prefix {
            return Err(format!(
                "NPTv6 maps prefixes of one length: {}/{} and {}/{}",
                internal.addr, p, external.addr, external.prefix
            ));
        }
        if p == 0 || p > 64 || !p.is_multiple_of(16) {
            return Err(format!(
                "NPTv6 prefix length /{p}: this translator takes /16, /32, /48 or /64"
            ));
        }
        let (i, e) = (masked(internal), masked(external));
        if i.contains(e.addr) || e.contains(i.addr) {
            return Err(format!(
                "NPTv6 prefixes {}/{p} and {}/{p} overlap",
                i.addr, e.addr
            ));
        }
        let n = usize::from(p / 16);
        let adj = add(
            sum_words(&i.addr.segments(), n),
            !sum_words(&e.addr.segments(), n),
        );
        Ok(Npt66 {
            internal: i,
            external: e,
            adj,
        })
    }

    /// The internal prefix.
    pub fn internal(&self) -> Net<Ipv6Addr> {
        self.internal
    }

    /// The external prefix.
    pub fn external(&self) -> Net<Ipv6Addr> {
        self.external
    }

    /// `a` (in `from`) moved into `to`, its word adjusted by `adj`.
    fn map(
        &self,
        a: Ipv6Addr,
        from: Net<Ipv6Addr>,
        to: Net<Ipv6Addr>,
        adj: u16,
    ) -> Option<Ipv6Addr> {
        if !from.contains(a) {
            return None;
        }
        let n = usize::from(from.prefix / 16);
        let mut w = a.segments();
        let to_w = to.addr.segments();
        w[..n].copy_from_slice(&to_w[..n]);
        let k = if n <= 3 {
            3
        } else {
            (n..8).find(|&k| w[k] != 0xffff)?
        };
        if w[k] == 0xffff {
            return None;
        }
        w[k] = match add(w[k], adj) {
            0xffff => 0,
            x => x,
        };
        Some(Ipv6Addr::from(w))
    }

    /// The external address of internal address `a` (`None`: not internal,
    /// or not mappable).
    pub fn outbound(&self, a: Ipv6Addr) -> Option<Ipv6Addr> {
        self.map(a, self.internal, self.external, self.adj)
    }

    /// The internal address of external address `a`.
    pub fn inbound(&self, a: Ipv6Addr) -> Option<Ipv6Addr> {
        self.map(a, self.external, self.internal, !self.adj)
    }

    /// Translate a packet leaving the site: its source, and in an ICMPv6
    /// error the quoted packet's destination (the packet the internal host
    /// received). `Ok(false)`: the source is not internal (untouched);
    /// `Err`: malformed, or internal but not mappable (untouched).
    pub fn translate_out(&self, pkt: &mut [u8]) -> Result<bool, NptError> {
        self.translate(pkt, true)
    }

    /// Translate a packet entering the site: its destination, and in an
    /// ICMPv6 error the quoted packet's source (the packet the internal host
    /// sent, as it left translated).
    pub fn translate_in(&self, pkt: &mut [u8]) -> Result<bool, NptError> {
        self.translate(pkt, false)
    }

    fn translate(&self, pkt: &mut [u8], out: bool) -> Result<bool, NptError> {
        let (addr, u) = {
            let p = Ipv6Packet::new_checked(&*pkt).map_err(|_| NptError::Malformed)?;
            let a = if out { p.src() } else { p.dst() };
            (a, p.upper().map_err(|_| NptError::Malformed)?)
        };
        let (from, f): (_, fn(&Npt66, Ipv6Addr) -> Option<Ipv6Addr>) = if out {
            (self.internal, Npt66::outbound)
        } else {
            (self.external, Npt66::inbound)
        };
        if !from.contains(addr) {
            return Ok(false);
        }
        let new = f(self, addr).ok_or(NptError::Unmappable)?;
        // The quote of an ICMPv6 error, translated the other way round.
        let error = u.proto == next_header::ICMPV6
            && u.frag.is_none_or(|x| x.offset == 0)
            && pkt
                .get(u.offset..)
                .and_then(|b| Icmpv6Packet::new_checked(b).ok())
                .is_some_and(|m| icmp6_is_error(m.msg_type()));
        if error
            && let Some(inner) = pkt.get_mut(u.offset + 8..)
            && let Ok(mut q) = Ipv6Packet::new_quoted(inner)
        {
            let back = if out {
                f(self, q.dst())
            } else {
                f(self, q.src())
            };
            match (back, out) {
                (Some(b), true) => q.set_dst(b),
                (Some(b), false) => q.set_src(b),
                (None, _) => {}
            }
        }
        let mut p = Ipv6Packet::new_checked(&mut *pkt).map_err(|_| NptError::Malformed)?;
        if out {
            p.set_src(new);
        } else {
            p.set_dst(new);
        }
        Ok(true)
    }
}

/// `n` with its host bits cleared.
fn masked(n: Net<Ipv6Addr>) -> Net<Ipv6Addr> {
    Net {
        addr: n.network(),
        prefix: n.prefix,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> Net<Ipv6Addr> {
        let (a, p) = s.split_once('/').unwrap();
        Net {
            addr: a.parse().unwrap(),
            prefix: p.parse().unwrap(),
        }
    }

    fn words_sum(a: Ipv6Addr) -> u16 {
        sum_words(&a.segments(), 8)
    }

    /// RFC 6296 Appendix B's example: fd01:203:405:/48 ↔ 2001:db8:1:/48,
    /// fd01:203:405:1::1234 ↔ 2001:db8:1:d550::1234.
    #[test]
    fn the_rfc_example() {
        let n = Npt66::new(net("fd01:203:405::/48"), net("2001:db8:1::/48")).unwrap();
        let i: Ipv6Addr = "fd01:203:405:1::1234".parse().unwrap();
        let e: Ipv6Addr = "2001:db8:1:d550::1234".parse().unwrap();
        assert_eq!(n.outbound(i), Some(e));
        assert_eq!(n.inbound(e), Some(i));
    }

    #[test]
    fn refusals() {
        let e = |a, b| Npt66::new(net(a), net(b)).unwrap_err();
        assert!(e("fd00::/48", "2001:db8::/64").contains("one length"));
        assert!(e("fd00::/56", "2001:db8::/56").contains("/56"));
        assert!(e("fd00::/64", "fd00::/64").contains("overlap"));
        let n = Npt66::new(net("fd00:15::/64"), net("2001:db8:113:1::/64")).unwrap();
        // An IID of all ones has no word left to adjust.
        assert_eq!(
            n.outbound("fd00:15::ffff:ffff:ffff:ffff".parse().unwrap()),
            None
        );
        assert_eq!(
            n.outbound("2001:db8::1".parse().unwrap()),
            None,
            "not internal"
        );
    }

    /// Packets keep valid checksums untouched: a TCP segment going out, an
    /// ICMPv6 error coming in with its quote translated back (etherparse checks).
    #[test]
    fn packets_keep_their_checksums() {
        use etherparse::{Icmpv6Slice, Ipv6Slice, PacketBuilder, TcpHeader};
        let n = Npt66::new(net("fd00:15::/64"), net("2001:db8:113:1::/64")).unwrap();
        let (red, wan): (Ipv6Addr, Ipv6Addr) = (
            "fd00:15::1".parse().unwrap(),
            "2001:db8:113::10".parse().unwrap(),
        );
        let mut v = Vec::new();
        PacketBuilder::ipv6(red.octets(), wan.octets(), 64)
            .tcp(40000, 443, 1, 65535)
            .write(&mut v, b"hello")
            .unwrap();
        assert_eq!(n.translate_out(&mut v), Ok(true));
        let s = Ipv6Slice::from_slice(&v).unwrap();
        let ext = n.outbound(red).unwrap();
        assert_eq!(s.header().source_addr(), ext);
        let (tcp, data) = TcpHeader::from_slice(s.payload().payload).unwrap();
        assert_eq!(
            tcp.checksum,
            tcp.calc_checksum_ipv6(&s.header().to_header(), data)
                .unwrap()
        );
        // wan answers "port unreachable" about it; coming in, the error goes to red.
        let mut e = Vec::new();
        PacketBuilder::ipv6(wan.octets(), ext.octets(), 64)
            .icmpv6(etherparse::Icmpv6Type::DestinationUnreachable(
                etherparse::icmpv6::DestUnreachableCode::Port,
            ))
            .write(&mut e, &v)
            .unwrap();
        assert_eq!(n.translate_in(&mut e), Ok(true));
        let s = Ipv6Slice::from_slice(&e).unwrap();
        assert_eq!(s.header().destination_addr(), red);
        let m = Icmpv6Slice::from_slice(s.payload().payload).unwrap();
        assert!(m.is_checksum_valid(wan.octets(), red.octets()));
        let q = Ipv6Slice::from_slice(&s.payload().payload[8..]).unwrap();
        assert_eq!(q.header().source_addr(), red, "the quote is as red sent it");
        // Not ours: untouched.
        let mut o = v.clone();
        assert_eq!(n.translate_in(&mut o), Ok(false));
        assert_eq!(o, v);
    }

    proptest! {
        /// Round trip and checksum neutrality for every prefix length taken.
        #[test]
        fn round_trip_keeps_the_sum(host in any::<u128>(), len in 1u8..=4) {
            let p = len * 16;
            let n = Npt66::new(
                net(&format!("fd00:15:2:3::/{p}")),
                net(&format!("2001:db8:113:1::/{p}")),
            ).unwrap();
            let mask = u128::MAX << (128 - u32::from(p));
            let i = Ipv6Addr::from(u128::from(n.internal().addr) | (host & !mask));
            let w = i.segments();
            let k = if p <= 48 { Some(3) } else { (usize::from(p / 16)..8).find(|&k| w[k] != 0xffff) };
            match n.outbound(i) {
                Some(e) => {
                    prop_assert!(n.external().contains(e));
                    // Equal sums, 0 and 0xffff being the one zero.
                    let z = |s: u16| if s == 0xffff { 0 } else { s };
                    prop_assert_eq!(z(words_sum(e)), z(words_sum(i)));
                    prop_assert_eq!(n.inbound(e), Some(i));
                }
                None => prop_assert!(k.is_none_or(|k| w[k] == 0xffff)),
            }
        }
    }
}
