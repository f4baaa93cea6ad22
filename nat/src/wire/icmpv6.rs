//! ICMPv6 (RFC 4443) and Neighbor Discovery (RFC 4861): views and emitters.
//!
//! Contract: [`Icmpv6Packet::new_checked`] needs the 4-byte header; every
//! accessor past it is bounds-checked and returns `None` when the message is
//! too short. The ICMPv6 checksum covers the IPv6 pseudo-header (unlike
//! ICMPv4), so [`Icmpv6Packet::checksum_ok`] and [`Icmpv6Packet::fill_checksum`]
//! take the addresses. NDP options are walked with [`ndp_options`]; an option
//! of length 0 or past the end makes the message [`Malformed`] (RFC 4861 4.6:
//! such messages are discarded). Emitters write a whole IPv6 packet (header
//! included, checksum filled) into a caller's buffer and return its length,
//! or `None` when the buffer is too small.

use super::Malformed;
use super::ipv6::{IPV6_HLEN, emit_header, next_header};
use crate::checksum::{fold, pseudo_header6, sum};
use std::net::Ipv6Addr;

/// ICMPv6 types used here.
pub mod icmp6_type {
    /// Destination unreachable.
    pub const DEST_UNREACH: u8 = 1;
    /// Packet too big.
    pub const PACKET_TOO_BIG: u8 = 2;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 3;
    /// Parameter problem.
    pub const PARAM_PROBLEM: u8 = 4;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 128;
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 129;
    /// Router solicitation.
    pub const ROUTER_SOLICIT: u8 = 133;
    /// Router advertisement.
    pub const ROUTER_ADVERT: u8 = 134;
    /// Neighbor solicitation.
    pub const NEIGHBOR_SOLICIT: u8 = 135;
    /// Neighbor advertisement.
    pub const NEIGHBOR_ADVERT: u8 = 136;
    /// Redirect.
    pub const REDIRECT: u8 = 137;
}

/// Destination-unreachable codes used here.
pub mod unreach_code {
    /// No route to destination.
    pub const NO_ROUTE: u8 = 0;
    /// Communication administratively prohibited.
    pub const ADMIN_PROHIBITED: u8 = 1;
    /// Address unreachable (neighbour resolution failed).
    pub const ADDRESS: u8 = 3;
    /// Port unreachable.
    pub const PORT: u8 = 4;
}

/// Whether an ICMPv6 type is an error that embeds the offending packet (types 0–127).
pub fn icmp6_is_error(t: u8) -> bool {
    t < 128
}

/// The minimum IPv6 MTU: an ICMPv6 error is at most this long (RFC 4443 2.4 (c)).
pub const MIN_MTU: usize = 1280;

/// NDP option types used here.
pub mod ndp_opt {
    /// Source link-layer address.
    pub const SOURCE_LL: u8 = 1;
    /// Target link-layer address.
    pub const TARGET_LL: u8 = 2;
    /// Prefix information.
    pub const PREFIX_INFO: u8 = 3;
    /// MTU.
    pub const MTU: u8 = 5;
}

/// Neighbor-advertisement flags.
pub mod na_flags {
    /// Sent by a router.
    pub const ROUTER: u8 = 0x80;
    /// In response to a solicitation.
    pub const SOLICITED: u8 = 0x40;
    /// Override an existing cache entry.
    pub const OVERRIDE: u8 = 0x20;
}

/// A view of an ICMPv6 message (the IPv6 payload after any extension headers).
#[derive(Debug)]
pub struct Icmpv6Packet<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> Icmpv6Packet<T> {
    /// Check that the 4-byte header is there.
    pub fn new_checked(buf: T) -> Result<Self, Malformed> {
        if buf.as_ref().len() < 4 {
            return Err(Malformed);
        }
        Ok(Icmpv6Packet { buf })
    }
    fn b(&self) -> &[u8] {
        self.buf.as_ref()
    }
    /// Type.
    pub fn msg_type(&self) -> u8 {
        self.b()[0]
    }
    /// Code.
    pub fn code(&self) -> u8 {
        self.b()[1]
    }
    /// The checksum field.
    pub fn checksum(&self) -> u16 {
        u16::from_be_bytes([self.b()[2], self.b()[3]])
    }
    /// Whether the checksum verifies for a message from `src` to `dst`.
    pub fn checksum_ok(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        let b = self.b();
        let Ok(len) = u32::try_from(b.len()) else {
            return false;
        };
        let p = pseudo_header6(src.octets(), dst.octets(), next_header::ICMPV6, len);
        fold(p + sum(b)) == 0xffff
    }
    /// The 4 bytes after the checksum (echo identifier and sequence, the MTU
    /// of Packet Too Big, the pointer of Parameter Problem), if present.
    pub fn word(&self) -> Option<u32> {
        let w = self.b().get(4..8)?;
        Some(u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
    }
    /// Echo identifier (for echo messages).
    pub fn echo_ident(&self) -> Option<u16> {
        self.word().map(|w| (w >> 16) as u16)
    }
    /// The invoking packet an error message carries (after the 8-byte header).
    pub fn invoking(&self) -> Option<&[u8]> {
        self.b().get(8..)
    }
    /// The NDP target address of a neighbor solicitation or advertisement.
    pub fn nd_target(&self) -> Option<Ipv6Addr> {
        let t = self.b().get(8..24)?;
        Some(Ipv6Addr::from(<[u8; 16]>::try_from(t).ok()?))
    }
    /// The NA flags byte.
    pub fn na_flags(&self) -> Option<u8> {
        self.b().get(4).copied()
    }
    /// NDP options of this message (after its fixed part, by type).
    pub fn options(&self) -> Option<&[u8]> {
        let fixed = match self.msg_type() {
            icmp6_type::ROUTER_SOLICIT => 8,
            icmp6_type::ROUTER_ADVERT => 16,
            icmp6_type::NEIGHBOR_SOLICIT | icmp6_type::NEIGHBOR_ADVERT => 24,
            icmp6_type::REDIRECT => 40,
            _ => return None,
        };
        self.b().get(fixed..)
    }
    /// The link-layer address in the first option of type `kind`
    /// ([`ndp_opt::SOURCE_LL`] or [`ndp_opt::TARGET_LL`]), if any; `Err` for
    /// a malformed option list.
    pub fn link_layer(&self, kind: u8) -> Result<Option<[u8; 6]>, Malformed> {
        let Some(opts) = self.options() else {
            return Ok(None);
        };
        for o in ndp_options(opts) {
            let (t, body) = o?;
            if t == kind && body.len() >= 6 {
                let mut m = [0u8; 6];
                m.copy_from_slice(&body[..6]);
                return Ok(Some(m));
            }
        }
        Ok(None)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv6Packet<T> {
    /// Set the type, updating the checksum (turning an echo request into its
    /// reply keeps it right if the caller swaps the addresses: the
    /// pseudo-header sum is the same).
    pub fn set_msg_type(&mut self, t: u8) {
        let old = u16::from(self.msg_type()) << 8;
        let c = crate::checksum::update16(self.checksum(), old, u16::from(t) << 8);
        let b = self.buf.as_mut();
        b[0] = t;
        b[2..4].copy_from_slice(&c.to_be_bytes());
    }
    /// Compute and store the checksum for a message from `src` to `dst`.
    pub fn fill_checksum(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        let b = self.buf.as_mut();
        b[2] = 0;
        b[3] = 0;
        let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
        let p = pseudo_header6(src.octets(), dst.octets(), next_header::ICMPV6, len);
        let c = !fold(p + sum(b));
        b[2..4].copy_from_slice(&c.to_be_bytes());
    }
}

/// A Neighbor Discovery message, as [`parse_ndp`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ndp {
    /// Router solicitation or advertisement, neighbor solicitation or advertisement.
    pub kind: u8,
    /// The IPv6 source.
    pub src: Ipv6Addr,
    /// The IPv6 destination.
    pub dst: Ipv6Addr,
    /// The target of a neighbor solicitation or advertisement.
    pub target: Option<Ipv6Addr>,
    /// The source (solicitations, RAs) or target (NAs) link-layer address option.
    pub lladdr: Option<[u8; 6]>,
    /// The NA flags ([`na_flags`]), 0 for other messages.
    pub flags: u8,
}

/// The NDP message (types 133–136) in the IPv6 packet `ip`, if it is one
/// that may be believed (RFC 4861 6.1, 7.1): hop limit 255, code 0, a valid
/// checksum, not a fragment, well-formed options, a target that is not
/// multicast; a solicitation from `::` (DAD) only to a solicited-node group
/// and without a source link-layer option; an advertisement to a multicast
/// group not marked solicited. `None` for anything else.
pub fn parse_ndp(ip: &[u8]) -> Option<Ndp> {
    let p = super::ipv6::Ipv6Packet::new_checked(ip).ok()?;
    let u = p.upper().ok()?;
    if u.proto != next_header::ICMPV6 || u.frag.is_some() || p.hop_limit() != 255 {
        return None;
    }
    let m = Icmpv6Packet::new_checked(&p.packet()[u.offset..]).ok()?;
    let kind = m.msg_type();
    if !(icmp6_type::ROUTER_SOLICIT..=icmp6_type::NEIGHBOR_ADVERT).contains(&kind)
        || m.code() != 0
        || !m.checksum_ok(p.src(), p.dst())
    {
        return None;
    }
    let opt = if kind == icmp6_type::NEIGHBOR_ADVERT {
        ndp_opt::TARGET_LL
    } else {
        ndp_opt::SOURCE_LL
    };
    let lladdr = m.link_layer(opt).ok()?;
    let target = match kind {
        icmp6_type::NEIGHBOR_SOLICIT | icmp6_type::NEIGHBOR_ADVERT => {
            Some(m.nd_target().filter(|t| !t.is_multicast())?)
        }
        _ => None,
    };
    let (src, dst) = (p.src(), p.dst());
    let dad = kind == icmp6_type::NEIGHBOR_SOLICIT && src.is_unspecified();
    if dad && (lladdr.is_some() || dst.segments()[..6] != [0xff02, 0, 0, 0, 0, 1]) {
        return None;
    }
    let flags = if kind == icmp6_type::NEIGHBOR_ADVERT {
        m.na_flags().unwrap_or(0)
    } else {
        0
    };
    if flags & na_flags::SOLICITED != 0 && dst.is_multicast() {
        return None;
    }
    Some(Ndp {
        kind,
        src,
        dst,
        target,
        lladdr,
        flags,
    })
}

/// Iterator over NDP options: `(type, body)` where body is the option
/// without its 2-byte type/length; `Err` ends the walk on a bad length.
pub fn ndp_options(b: &[u8]) -> impl Iterator<Item = Result<(u8, &[u8]), Malformed>> {
    let mut at = 0usize;
    let mut bad = false;
    std::iter::from_fn(move || {
        if bad || at >= b.len() {
            return None;
        }
        let len = usize::from(*b.get(at + 1).unwrap_or(&0)) * 8;
        if len == 0 || at + len > b.len() {
            bad = true;
            return Some(Err(Malformed));
        }
        let item = (b[at], &b[at + 2..at + len]);
        at += len;
        Some(Ok(item))
    })
}

/// Emit an ICMPv6 message `body` (type, code, checksum zero, rest) in an IPv6
/// packet from `src` to `dst` with hop limit `hop`, into `out`.
fn emit(out: &mut [u8], src: Ipv6Addr, dst: Ipv6Addr, hop: u8, body: &[&[u8]]) -> Option<usize> {
    let len: usize = body.iter().map(|p| p.len()).sum();
    let total = IPV6_HLEN + len;
    if out.len() < total {
        return None;
    }
    emit_header(
        out,
        src,
        dst,
        next_header::ICMPV6,
        hop,
        u16::try_from(len).ok()?,
    );
    let mut at = IPV6_HLEN;
    for p in body {
        out[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    Icmpv6Packet::new_checked(&mut out[IPV6_HLEN..total])
        .ok()?
        .fill_checksum(src, dst);
    Some(total)
}

fn ll_option(kind: u8, mac: [u8; 6]) -> [u8; 8] {
    [kind, 1, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]]
}

/// A neighbor solicitation for `target` from `src` (hop limit 255), to
/// `dst` (the solicited-node group, or the neighbour itself to probe it),
/// with our link-layer address `mac` unless `src` is unspecified (DAD).
pub fn emit_ns(
    out: &mut [u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    target: Ipv6Addr,
    mac: [u8; 6],
) -> Option<usize> {
    let head = [icmp6_type::NEIGHBOR_SOLICIT, 0, 0, 0, 0, 0, 0, 0];
    let opt = ll_option(ndp_opt::SOURCE_LL, mac);
    let opt: &[u8] = if src.is_unspecified() { &[] } else { &opt };
    emit(out, src, dst, 255, &[&head, &target.octets(), opt])
}

/// A neighbor advertisement for `target` (ours) with link-layer address `mac` and `flags`.
pub fn emit_na(
    out: &mut [u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    target: Ipv6Addr,
    mac: [u8; 6],
    flags: u8,
) -> Option<usize> {
    let head = [icmp6_type::NEIGHBOR_ADVERT, 0, 0, 0, flags, 0, 0, 0];
    let opt = ll_option(ndp_opt::TARGET_LL, mac);
    emit(out, src, dst, 255, &[&head, &target.octets(), &opt])
}

/// What a router advertisement announces.
#[derive(Debug, Clone, Copy)]
pub struct RouterAdvert {
    /// Router lifetime, s (0: not a default router).
    pub lifetime: u16,
    /// The on-link prefix, for SLAAC (autonomous and on-link flags set).
    pub prefix: Option<(Ipv6Addr, u8)>,
    /// Valid and preferred lifetime of the prefix, s.
    pub prefix_lifetime: u32,
    /// The link MTU to announce, if any.
    pub mtu: Option<u32>,
    /// Our link-layer address.
    pub mac: [u8; 6],
}

/// A router advertisement from `src` (our link-local address) to `dst`
/// (all-nodes, or a soliciting host), hop limit 255 (RFC 4861 6.1.2).
pub fn emit_ra(out: &mut [u8], src: Ipv6Addr, dst: Ipv6Addr, ra: &RouterAdvert) -> Option<usize> {
    let lt = ra.lifetime.to_be_bytes();
    // Cur hop limit 64, no M/O flags, reachable time and retrans timer unspecified.
    let head = [
        icmp6_type::ROUTER_ADVERT,
        0,
        0,
        0,
        64,
        0,
        lt[0],
        lt[1],
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    let sll = ll_option(ndp_opt::SOURCE_LL, ra.mac);
    let mut mtu = [0u8; 8];
    let mtu: &[u8] = match ra.mtu {
        Some(m) => {
            mtu[..2].copy_from_slice(&[ndp_opt::MTU, 1]);
            mtu[4..].copy_from_slice(&m.to_be_bytes());
            &mtu
        }
        None => &[],
    };
    let mut pi = [0u8; 32];
    let pi: &[u8] = match ra.prefix {
        Some((p, len)) => {
            let l = ra.prefix_lifetime.to_be_bytes();
            pi[..4].copy_from_slice(&[ndp_opt::PREFIX_INFO, 4, len, 0xc0]); // L and A
            pi[4..8].copy_from_slice(&l);
            pi[8..12].copy_from_slice(&l);
            pi[16..32].copy_from_slice(&p.octets());
            &pi
        }
        None => &[],
    };
    emit(out, src, dst, 255, &[&head, &sll, mtu, pi])
}

/// An ICMPv6 error (`kind`, `code`, with `word`: the MTU of Packet Too Big,
/// the pointer of Parameter Problem, else 0) quoting as much of `invoking`
/// (the offending IPv6 packet) as fits in [`MIN_MTU`] (RFC 4443 2.4 (c)).
pub fn emit_error(
    out: &mut [u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    kind: u8,
    code: u8,
    word: u32,
    invoking: &[u8],
) -> Option<usize> {
    let mut head = [kind, code, 0, 0, 0, 0, 0, 0];
    head[4..].copy_from_slice(&word.to_be_bytes());
    let room = MIN_MTU - IPV6_HLEN - 8;
    let q = &invoking[..invoking.len().min(room)];
    emit(out, src, dst, 64, &[&head, q])
}

/// An echo reply from `src` to `dst` carrying the request's identifier,
/// sequence and data (`request`: the whole ICMPv6 echo request).
pub fn emit_echo_reply(
    out: &mut [u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    request: &[u8],
) -> Option<usize> {
    let rest = request.get(4..)?;
    let head = [icmp6_type::ECHO_REPLY, 0, 0, 0];
    emit(out, src, dst, 64, &[&head, rest])
}

#[cfg(test)]
mod tests {
    use super::super::ipv6::{Ipv6Packet, link_local, solicited_node};
    use super::*;
    use etherparse::{Icmpv6Slice, Icmpv6Type, Ipv6Slice};

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }
    const MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x53, 0x05];

    /// Parse `p` with etherparse (the oracle): the IPv6 header, the ICMPv6
    /// message with a verified checksum.
    fn oracle(p: &[u8]) -> (Ipv6Addr, Ipv6Addr, u8, Icmpv6Type, Vec<u8>) {
        let s = Ipv6Slice::from_slice(p).unwrap();
        let (src, dst) = (s.header().source_addr(), s.header().destination_addr());
        let m = Icmpv6Slice::from_slice(s.payload().payload).unwrap();
        assert!(m.is_checksum_valid(src.octets(), dst.octets()), "checksum");
        (
            src,
            dst,
            s.header().hop_limit(),
            m.icmp_type(),
            m.payload().to_vec(),
        )
    }

    #[test]
    fn ns_and_na_round_trip_through_etherparse() {
        let mut b = [0u8; 128];
        let tgt = a("fd00:15::5");
        let src = link_local(MAC);
        let n = emit_ns(&mut b, src, solicited_node(tgt), tgt, MAC).unwrap();
        let (s, d, hop, t, _) = oracle(&b[..n]);
        assert_eq!((s, d, hop), (src, a("ff02::1:ff00:5"), 255));
        assert!(matches!(t, Icmpv6Type::NeighborSolicitation));
        let v = Ipv6Packet::new_checked(&b[..n]).unwrap();
        let m = Icmpv6Packet::new_checked(v.payload()).unwrap();
        assert_eq!(m.nd_target(), Some(tgt));
        assert_eq!(m.link_layer(ndp_opt::SOURCE_LL), Ok(Some(MAC)));
        assert!(m.checksum_ok(s, d));
        // DAD: no source link-layer option from the unspecified address.
        let n = emit_ns(&mut b, Ipv6Addr::UNSPECIFIED, solicited_node(tgt), tgt, MAC).unwrap();
        assert_eq!(n, IPV6_HLEN + 24);
        oracle(&b[..n]);

        let n = emit_na(
            &mut b,
            tgt,
            a("fd00:15::1"),
            tgt,
            MAC,
            na_flags::ROUTER | na_flags::SOLICITED,
        )
        .unwrap();
        let (_, _, _, t, _) = oracle(&b[..n]);
        match t {
            Icmpv6Type::NeighborAdvertisement(h) => {
                assert!(h.router && h.solicited && !h.r#override);
            }
            other => panic!("{other:?}"),
        }
        let v = Ipv6Packet::new_checked(&b[..n]).unwrap();
        let m = Icmpv6Packet::new_checked(v.payload()).unwrap();
        assert_eq!(m.link_layer(ndp_opt::TARGET_LL), Ok(Some(MAC)));
        assert_eq!(m.nd_target(), Some(tgt));
    }

    #[test]
    fn ra_round_trips_through_etherparse() {
        let mut b = [0u8; 160];
        let ra = RouterAdvert {
            lifetime: 1800,
            prefix: Some((a("fd00:15::"), 64)),
            prefix_lifetime: 86400,
            mtu: Some(1500),
            mac: MAC,
        };
        let n = emit_ra(&mut b, link_local(MAC), a("ff02::1"), &ra).unwrap();
        let (_, _, hop, t, payload) = oracle(&b[..n]);
        assert_eq!(hop, 255);
        let Icmpv6Type::RouterAdvertisement(h) = t else {
            panic!("{t:?}")
        };
        assert_eq!((h.cur_hop_limit, h.router_lifetime), (64, 1800));
        // etherparse leaves the options in the payload: walk them.
        let opts = &payload[8..];
        let mut seen = Vec::new();
        for o in ndp_options(opts) {
            let (k, body) = o.unwrap();
            seen.push(k);
            if k == ndp_opt::PREFIX_INFO {
                assert_eq!(body[0], 64);
                assert_eq!(body[1] & 0xc0, 0xc0);
                assert_eq!(&body[14..30], &a("fd00:15::").octets());
            }
            if k == ndp_opt::MTU {
                assert_eq!(&body[2..6], &1500u32.to_be_bytes());
            }
        }
        assert_eq!(
            seen,
            [ndp_opt::SOURCE_LL, ndp_opt::MTU, ndp_opt::PREFIX_INFO]
        );
    }

    #[test]
    fn errors_quote_at_most_the_minimum_mtu() {
        let big = vec![0x60u8; 3000];
        let mut b = [0u8; 2000];
        let n = emit_error(
            &mut b,
            a("fd00:15::5"),
            a("fd00:15::1"),
            icmp6_type::PACKET_TOO_BIG,
            0,
            1280,
            &big,
        )
        .unwrap();
        assert_eq!(n, MIN_MTU);
        let (_, _, _, t, payload) = oracle(&b[..n]);
        assert!(matches!(t, Icmpv6Type::PacketTooBig { mtu: 1280 }));
        assert_eq!(payload.len(), MIN_MTU - 48);
        let n = emit_error(
            &mut b,
            a("fd00:15::5"),
            a("fd00:15::1"),
            icmp6_type::DEST_UNREACH,
            unreach_code::PORT,
            0,
            &big[..100],
        )
        .unwrap();
        assert_eq!(n, 48 + 100);
        let (_, _, _, t, _) = oracle(&b[..n]);
        assert!(matches!(
            t,
            Icmpv6Type::DestinationUnreachable(etherparse::icmpv6::DestUnreachableCode::Port)
        ));
        assert!(emit_error(&mut b[..100], a("::1"), a("::2"), 1, 0, 0, &big).is_none());
    }

    #[test]
    fn echo_reply_keeps_ident_sequence_and_data() {
        let mut req = vec![icmp6_type::ECHO_REQUEST, 0, 0, 0, 0x12, 0x34, 0, 7];
        req.extend_from_slice(b"abcdefgh");
        let mut b = [0u8; 128];
        let n = emit_echo_reply(&mut b, a("fd00:15::5"), a("fd00:15::1"), &req).unwrap();
        let (_, _, _, t, payload) = oracle(&b[..n]);
        match t {
            Icmpv6Type::EchoReply(h) => assert_eq!((h.id, h.seq), (0x1234, 7)),
            other => panic!("{other:?}"),
        }
        assert_eq!(payload, b"abcdefgh");
    }

    #[test]
    fn ndp_is_believed_only_with_hop_limit_255_and_a_valid_checksum() {
        let mut b = [0u8; 128];
        let t = a("fd00:15::2");
        let n = emit_ns(&mut b, a("fd00:15::1"), solicited_node(t), t, MAC).unwrap();
        let nd = parse_ndp(&b[..n]).unwrap();
        assert_eq!(
            (nd.kind, nd.src, nd.target, nd.lladdr),
            (
                icmp6_type::NEIGHBOR_SOLICIT,
                a("fd00:15::1"),
                Some(t),
                Some(MAC)
            )
        );
        let mut c = b;
        c[7] = 64; // forwarded from elsewhere
        assert_eq!(parse_ndp(&c[..n]), None);
        let mut c = b;
        c[n - 1] ^= 1; // checksum no longer matches
        assert_eq!(parse_ndp(&c[..n]), None);
        let n = emit_na(&mut b, t, a("fd00:15::1"), t, MAC, na_flags::SOLICITED).unwrap();
        let nd = parse_ndp(&b[..n]).unwrap();
        assert_eq!(
            (nd.kind, nd.flags, nd.lladdr),
            (icmp6_type::NEIGHBOR_ADVERT, na_flags::SOLICITED, Some(MAC))
        );
        // A solicited advertisement to all nodes is not believed.
        let n = emit_na(&mut b, t, a("ff02::1"), t, MAC, na_flags::SOLICITED).unwrap();
        assert_eq!(parse_ndp(&b[..n]), None);
        // A DAD probe: from ::, to the solicited-node group, no source option.
        let n = emit_ns(&mut b, Ipv6Addr::UNSPECIFIED, solicited_node(t), t, MAC).unwrap();
        assert!(parse_ndp(&b[..n]).is_some());
        let n = emit_ns(&mut b, Ipv6Addr::UNSPECIFIED, t, t, MAC).unwrap();
        assert_eq!(
            parse_ndp(&b[..n]),
            None,
            "DAD must go to the solicited-node group"
        );
        // An echo request is not NDP.
        let n = emit_echo_reply(
            &mut b,
            a("fd00::1"),
            a("fd00::2"),
            &[128, 0, 0, 0, 0, 1, 0, 1],
        )
        .unwrap();
        assert_eq!(parse_ndp(&b[..n]), None);
    }

    #[test]
    fn bad_options_are_malformed_not_a_loop() {
        let mut b = [0u8; 128];
        let n = emit_na(&mut b, a("fd00::5"), a("fd00::1"), a("fd00::5"), MAC, 0).unwrap();
        let mut p = b[..n].to_vec();
        let opt_len_at = IPV6_HLEN + 24 + 1;
        p[opt_len_at] = 0; // length 0 would loop forever
        let m = Icmpv6Packet::new_checked(&p[IPV6_HLEN..]).unwrap();
        assert_eq!(m.link_layer(ndp_opt::TARGET_LL), Err(Malformed));
        p[opt_len_at] = 3; // past the end
        let m = Icmpv6Packet::new_checked(&p[IPV6_HLEN..]).unwrap();
        assert_eq!(m.link_layer(ndp_opt::TARGET_LL), Err(Malformed));
        // Too short for a target: None, not a panic.
        let m = Icmpv6Packet::new_checked(&p[IPV6_HLEN..IPV6_HLEN + 10]).unwrap();
        assert_eq!(m.nd_target(), None);
        assert!(Icmpv6Packet::new_checked(&p[..3]).is_err());
    }

    proptest::proptest! {
        /// The checksum we fill verifies with etherparse for any addresses
        /// and body, and ours verifies what etherparse computes.
        #[test]
        fn checksum_agrees_with_etherparse(
            src in proptest::array::uniform16(0u8..),
            dst in proptest::array::uniform16(0u8..),
            body in proptest::collection::vec(0u8.., 8..300),
        ) {
            let (s, d) = (Ipv6Addr::from(src), Ipv6Addr::from(dst));
            let mut m = body.clone();
            m[0] = icmp6_type::ECHO_REQUEST;
            m[1] = 0;
            Icmpv6Packet::new_checked(&mut m[..]).unwrap().fill_checksum(s, d);
            let sl = Icmpv6Slice::from_slice(&m).unwrap();
            proptest::prop_assert!(sl.is_checksum_valid(src, dst));
            let v = Icmpv6Packet::new_checked(&m[..]).unwrap();
            proptest::prop_assert!(v.checksum_ok(s, d));
            let c = sl.icmp_type().calc_checksum(src, dst, sl.payload()).unwrap();
            proptest::prop_assert_eq!(c, v.checksum());
        }

        /// An incremental 128-bit address update equals a recompute.
        #[test]
        fn address_update_equals_recompute(
            src in proptest::array::uniform16(0u8..),
            dst in proptest::array::uniform16(0u8..),
            new in proptest::array::uniform16(0u8..),
            body in proptest::collection::vec(0u8.., 4..64),
        ) {
            let (s, d, n) = (Ipv6Addr::from(src), Ipv6Addr::from(dst), Ipv6Addr::from(new));
            let mut m = body.clone();
            Icmpv6Packet::new_checked(&mut m[..]).unwrap().fill_checksum(s, d);
            let old = Icmpv6Packet::new_checked(&m[..]).unwrap().checksum();
            let inc = crate::checksum::update128(old, src, new);
            Icmpv6Packet::new_checked(&mut m[..]).unwrap().fill_checksum(n, d);
            let re = Icmpv6Packet::new_checked(&m[..]).unwrap().checksum();
            // 0x0000 and 0xffff are the same value in one's complement.
            proptest::prop_assert!(inc == re || (inc ^ re) == 0xffff && (inc == 0 || re == 0));
        }
    }
}
