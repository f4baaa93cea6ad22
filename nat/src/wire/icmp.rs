//! ICMP for IPv4 (RFC 792): a view, and emitters for the messages the
//! gateway originates (errors quoting the offending packet, echo replies).
//!
//! Contract: [`IcmpPacket::new_checked`] validates the 8-byte header every
//! ICMPv4 message has, so accessors never panic afterwards. The ICMPv4
//! checksum covers the message only (no pseudo-header). Emitters write a
//! whole IPv4 packet (header included, checksums filled) into a caller's
//! buffer and return its length, or `None` when the buffer is too small.

use super::{Ipv4Packet, Ipv4Repr, Malformed, icmp_type, proto};
use crate::checksum::{checksum, update16};
use std::net::Ipv4Addr;

/// Length of the ICMP header (type, code, checksum, and the 4-byte word).
pub const ICMP_HLEN: usize = 8;

/// A view of an ICMPv4 message at the start of `buf`.
#[derive(Debug)]
pub struct IcmpPacket<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    /// Check that the 8-byte header is there.
    #[inline]
    pub fn new_checked(buf: T) -> Result<Self, Malformed> {
        if buf.as_ref().len() < ICMP_HLEN {
            return Err(Malformed);
        }
        Ok(IcmpPacket { buf })
    }
    #[inline]
    fn b(&self) -> &[u8] {
        self.buf.as_ref()
    }
    /// Type ([`icmp_type`]).
    #[inline]
    pub fn msg_type(&self) -> u8 {
        self.b()[0]
    }
    /// Code.
    #[inline]
    pub fn code(&self) -> u8 {
        self.b()[1]
    }
    /// Checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        u16::from_be_bytes([self.b()[2], self.b()[3]])
    }
    /// Whether the checksum verifies over all of `buf`.
    pub fn checksum_ok(&self) -> bool {
        checksum(self.b()) == 0
    }
    /// The 4 bytes after the checksum (echo identifier and sequence, the
    /// next-hop MTU of "fragmentation needed" in the low 16 bits, the pointer
    /// of a parameter problem in the high 8).
    #[inline]
    pub fn word(&self) -> u32 {
        let b = self.b();
        u32::from_be_bytes([b[4], b[5], b[6], b[7]])
    }
    /// Echo identifier (of an echo request or reply).
    #[inline]
    pub fn echo_ident(&self) -> u16 {
        (self.word() >> 16) as u16
    }
    /// Echo sequence number.
    #[inline]
    pub fn echo_seq(&self) -> u16 {
        self.word() as u16
    }
    /// What follows the header: an echo's data, or the packet an error
    /// quotes (its IPv4 header and the start of its payload; see
    /// [`Ipv4Packet::new_quoted`]).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.b()[ICMP_HLEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IcmpPacket<T> {
    /// Set the type, updating the checksum.
    pub fn set_msg_type(&mut self, t: u8) {
        let old = u16::from(self.msg_type()) << 8;
        let c = update16(self.checksum(), old, u16::from(t) << 8);
        let b = self.buf.as_mut();
        b[0] = t;
        b[2..4].copy_from_slice(&c.to_be_bytes());
    }
    /// Recompute the checksum over all of `buf`.
    pub fn fill_checksum(&mut self) {
        let b = self.buf.as_mut();
        b[2..4].fill(0);
        let c = checksum(b);
        b[2..4].copy_from_slice(&c.to_be_bytes());
    }
}

/// Emit an ICMP message (`head`: type, code, zero checksum and word; then
/// `rest`) in an IPv4 packet `ip` (its protocol is set here) into `out`.
fn emit(out: &mut [u8], ip: &Ipv4Repr, head: [u8; ICMP_HLEN], rest: &[u8]) -> Option<usize> {
    let ip = Ipv4Repr {
        proto: proto::ICMP,
        ..*ip
    };
    let len = ICMP_HLEN + rest.len();
    let hl = ip.emit(out, len)?;
    let m = out.get_mut(hl..hl + len)?;
    m[..ICMP_HLEN].copy_from_slice(&head);
    m[ICMP_HLEN..].copy_from_slice(rest);
    IcmpPacket::new_checked(m).ok()?.fill_checksum();
    Some(hl + len)
}

/// An ICMP error (`kind`, `code`, with `word`: the next-hop MTU of
/// "fragmentation needed", the pointer of a parameter problem shifted to the
/// high byte, else 0) quoting all of `quote` (the offending packet's header
/// and the start of its payload: the caller keeps it within what RFC 1812
/// 4.3.2.3 allows), in IPv4 packet `ip`.
pub fn emit_error(
    out: &mut [u8],
    ip: &Ipv4Repr,
    kind: u8,
    code: u8,
    word: u32,
    quote: &[u8],
) -> Option<usize> {
    let w = word.to_be_bytes();
    emit(out, ip, [kind, code, 0, 0, w[0], w[1], w[2], w[3]], quote)
}

/// An echo reply in IPv4 packet `ip` carrying the identifier, sequence and
/// data of `request` (a whole ICMP echo request); `None` if it is shorter
/// than an ICMP header.
pub fn emit_echo_reply(out: &mut [u8], ip: &Ipv4Repr, request: &[u8]) -> Option<usize> {
    let req = IcmpPacket::new_checked(request).ok()?;
    let w = req.word().to_be_bytes();
    let head = [icmp_type::ECHO_REPLY, 0, 0, 0, w[0], w[1], w[2], w[3]];
    emit(out, ip, head, req.payload())
}

/// Turn the echo request in `ip` into its reply, in place: from `src` back
/// to the requester, with TTL `ttl`, type echo reply (the ICMP checksum
/// updated) and the header checksum recomputed. `Malformed` (nothing
/// changed) if `ip` does not hold an unfragmented ICMP echo request.
pub fn make_echo_reply<T: AsRef<[u8]> + AsMut<[u8]>>(
    ip: &mut Ipv4Packet<T>,
    src: Ipv4Addr,
    ttl: u8,
) -> Result<(), Malformed> {
    let is_request = IcmpPacket::new_checked(ip.payload())
        .is_ok_and(|m| m.msg_type() == icmp_type::ECHO_REQUEST);
    if ip.protocol() != proto::ICMP || ip.is_fragment() || !is_request {
        return Err(Malformed);
    }
    let peer = ip.src();
    ip.set_src(src);
    ip.set_dst(peer);
    IcmpPacket::new_checked(ip.payload_mut())?.set_msg_type(icmp_type::ECHO_REPLY);
    ip.set_ttl(ttl);
    ip.fill_checksum();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{Icmpv4Slice, Icmpv4Type, Ipv4Slice, PacketBuilder};

    const A: Ipv4Addr = Ipv4Addr::new(192, 168, 15, 1);
    const B: Ipv4Addr = Ipv4Addr::new(192, 168, 15, 2);

    fn repr() -> Ipv4Repr {
        Ipv4Repr {
            src: A,
            dst: B,
            proto: 0,
            ttl: 64,
            tos: 0xc0,
            dont_frag: false,
        }
    }

    fn echo_request() -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ipv4(B.octets(), A.octets(), 9)
            .icmpv4_echo_request(0x1234, 7)
            .write(&mut v, b"ping data")
            .unwrap();
        v
    }

    /// Parse `p` with etherparse (the oracle), checking both checksums.
    fn oracle(p: &[u8]) -> (Ipv4Addr, Ipv4Addr, u8, Icmpv4Type, Vec<u8>) {
        let s = Ipv4Slice::from_slice(p).unwrap();
        let h = s.header();
        assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
        let m = Icmpv4Slice::from_slice(s.payload().payload).unwrap();
        assert_eq!(m.checksum(), m.icmp_type().calc_checksum(m.payload()));
        (
            h.source_addr(),
            h.destination_addr(),
            h.ttl(),
            m.icmp_type(),
            m.payload().to_vec(),
        )
    }

    #[test]
    fn fields_match_etherparse() {
        let p = echo_request();
        let m = IcmpPacket::new_checked(&p[20..]).unwrap();
        let o = Icmpv4Slice::from_slice(&p[20..]).unwrap();
        assert_eq!((m.msg_type(), m.code()), (o.type_u8(), o.code_u8()));
        assert_eq!(m.checksum(), o.checksum());
        assert_eq!(m.word().to_be_bytes(), o.bytes5to8());
        assert_eq!((m.echo_ident(), m.echo_seq()), (0x1234, 7));
        assert_eq!(m.payload(), o.payload());
        assert!(m.checksum_ok());
        assert!(IcmpPacket::new_checked(&p[20..27]).is_err());
    }

    #[test]
    fn errors_round_trip_through_etherparse() {
        let quoted = echo_request();
        let mut b = [0u8; 128];
        let n = emit_error(
            &mut b,
            &repr(),
            icmp_type::DEST_UNREACH,
            4,
            1400,
            &quoted[..28],
        )
        .unwrap();
        assert_eq!(n, 20 + 8 + 28);
        let (s, d, ttl, t, payload) = oracle(&b[..n]);
        assert_eq!((s, d, ttl), (A, B, 64));
        match t {
            Icmpv4Type::DestinationUnreachable(h) => assert_eq!(
                h,
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: 1400
                }
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(payload, &quoted[..28]);
        let ip = Ipv4Packet::new_checked(&b[..n]).unwrap();
        assert_eq!(ip.tos(), 0xc0);
        let m = IcmpPacket::new_checked(ip.payload()).unwrap();
        let q = Ipv4Packet::new_quoted(m.payload()).unwrap();
        assert_eq!((q.src(), q.dst(), q.protocol()), (B, A, proto::ICMP));
        assert!(emit_error(&mut b[..50], &repr(), 3, 3, 0, &quoted).is_none());
    }

    #[test]
    fn echo_replies_keep_ident_sequence_and_data() {
        let req = echo_request();
        let mut b = [0u8; 128];
        let n = emit_echo_reply(&mut b, &repr(), &req[20..]).unwrap();
        let (_, _, _, t, payload) = oracle(&b[..n]);
        match t {
            Icmpv4Type::EchoReply(h) => assert_eq!((h.id, h.seq), (0x1234, 7)),
            other => panic!("{other:?}"),
        }
        assert_eq!(payload, b"ping data");
        // In place: the same reply, addresses swapped, a fresh TTL.
        let mut p = req.clone();
        let mut ip = Ipv4Packet::new_checked(&mut p[..]).unwrap();
        make_echo_reply(&mut ip, A, 64).unwrap();
        let (s, d, ttl, t, payload) = oracle(&p);
        assert_eq!((s, d, ttl), (A, B, 64));
        assert!(matches!(t, Icmpv4Type::EchoReply(h) if (h.id, h.seq) == (0x1234, 7)));
        assert_eq!(payload, b"ping data");
        // Not a request (any more): refused, untouched.
        let before = p.clone();
        let mut ip = Ipv4Packet::new_checked(&mut p[..]).unwrap();
        assert_eq!(make_echo_reply(&mut ip, A, 64), Err(Malformed));
        assert_eq!(p, before);
    }
}
