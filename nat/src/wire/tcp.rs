//! TCP (RFC 9293) header, read and rewritten in place, and the reset the
//! gateway sends for a closed port.
//!
//! Contract: [`TcpPacket::new_checked`] validates the 20-byte fixed header
//! and a data offset within `20..=len`; [`TcpPacket::new_head`] only the
//! fixed header and a data offset of at least 20 (a first fragment may end
//! inside the options). Accessors read the fixed header only, so they never
//! panic after either. Setters write fields as they are: the checksum is the
//! caller's (incremental updates in [`crate::checksum`], or
//! [`TcpPacket::fill_checksum_v4`] to recompute).

use super::{Ipv4Repr, Malformed, proto, tcp_flags};
use crate::checksum::{fold, pseudo_header, sum};
use std::net::Ipv4Addr;

/// Length of the fixed TCP header.
pub const TCP_HLEN: usize = 20;

/// A view of a TCP header (and its payload) at the start of `buf`.
#[derive(Debug)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Check the fixed header and that the data offset is in `20..=buf.len()`.
    #[inline]
    pub fn new_checked(buf: T) -> Result<Self, Malformed> {
        let p = Self::new_head(buf)?;
        if p.header_len() > p.b().len() {
            return Err(Malformed);
        }
        Ok(p)
    }
    /// Check the fixed header and a data offset of at least 20, but not that
    /// the options fit `buf` (a first fragment may end inside them).
    #[inline]
    pub fn new_head(buf: T) -> Result<Self, Malformed> {
        let b = buf.as_ref();
        if b.len() < TCP_HLEN || usize::from(b[12] >> 4) * 4 < TCP_HLEN {
            return Err(Malformed);
        }
        Ok(TcpPacket { buf })
    }
    #[inline]
    fn b(&self) -> &[u8] {
        self.buf.as_ref()
    }
    #[inline]
    fn u16_at(&self, i: usize) -> u16 {
        u16::from_be_bytes([self.b()[i], self.b()[i + 1]])
    }
    #[inline]
    fn u32_at(&self, i: usize) -> u32 {
        let b = self.b();
        u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
    }
    /// Source port.
    #[inline]
    pub fn src_port(&self) -> u16 {
        self.u16_at(0)
    }
    /// Destination port.
    #[inline]
    pub fn dst_port(&self) -> u16 {
        self.u16_at(2)
    }
    /// Sequence number.
    #[inline]
    pub fn seq(&self) -> u32 {
        self.u32_at(4)
    }
    /// Acknowledgment number.
    #[inline]
    pub fn ack(&self) -> u32 {
        self.u32_at(8)
    }
    /// Header length (data offset) in bytes, options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.b()[12] >> 4) * 4
    }
    /// The flags byte (CWR … FIN, see [`tcp_flags`]).
    #[inline]
    pub fn flags(&self) -> u8 {
        self.b()[13]
    }
    /// Window.
    #[inline]
    pub fn window(&self) -> u16 {
        self.u16_at(14)
    }
    /// Checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        self.u16_at(16)
    }
    /// Urgent pointer.
    #[inline]
    pub fn urgent(&self) -> u16 {
        self.u16_at(18)
    }
    /// The data after the header (empty if the options run past `buf`).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        self.b().get(self.header_len()..).unwrap_or(&[])
    }
    /// Sequence space the segment occupies: its data, plus one each for SYN and FIN.
    pub fn seg_len(&self) -> u32 {
        let f = self.flags();
        (self.payload().len() as u32)
            .wrapping_add(u32::from(f & tcp_flags::SYN != 0))
            .wrapping_add(u32::from(f & tcp_flags::FIN != 0))
    }
    /// Whether the checksum verifies for a segment (all of `buf`) from `src` to `dst`.
    pub fn checksum_ok_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        let b = self.b();
        let Ok(len) = u16::try_from(b.len()) else {
            return false;
        };
        fold(pseudo_header(src.octets(), dst.octets(), proto::TCP, len) + sum(b)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    #[inline]
    fn m(&mut self) -> &mut [u8] {
        self.buf.as_mut()
    }
    /// Set both ports (the checksum is the caller's).
    #[inline]
    pub fn set_ports(&mut self, src: u16, dst: u16) {
        self.m()[0..2].copy_from_slice(&src.to_be_bytes());
        self.m()[2..4].copy_from_slice(&dst.to_be_bytes());
    }
    /// Set the sequence number.
    #[inline]
    pub fn set_seq(&mut self, v: u32) {
        self.m()[4..8].copy_from_slice(&v.to_be_bytes());
    }
    /// Set the acknowledgment number.
    #[inline]
    pub fn set_ack(&mut self, v: u32) {
        self.m()[8..12].copy_from_slice(&v.to_be_bytes());
    }
    /// Set the flags byte.
    #[inline]
    pub fn set_flags(&mut self, f: u8) {
        self.m()[13] = f;
    }
    /// Set the window field.
    #[inline]
    pub fn set_window(&mut self, w: u16) {
        self.m()[14..16].copy_from_slice(&w.to_be_bytes());
    }
    /// Set the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, c: u16) {
        self.m()[16..18].copy_from_slice(&c.to_be_bytes());
    }
    /// Recompute the checksum of a segment (all of `buf`) from `src` to `dst`.
    pub fn fill_checksum_v4(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let b = self.b();
        let len = u16::try_from(b.len()).unwrap_or(u16::MAX);
        let c = !fold(pseudo_header(src.octets(), dst.octets(), proto::TCP, len) + sum(b));
        self.set_checksum(c);
    }
}

/// The reset that answers segment `seg` (RFC 9293 3.10.7.1): `<SEQ=SEG.ACK><CTL=RST>`
/// if it carried an ACK, else `<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>`,
/// with the ports swapped, in an IPv4 packet `ip` (its protocol and length
/// are set here) written into `out`. Returns the packet's length; `None`
/// if `seg` is itself a reset (never answered) or `out` is too small.
pub fn emit_rst_v4<T: AsRef<[u8]>>(
    out: &mut [u8],
    ip: &Ipv4Repr,
    seg: &TcpPacket<T>,
) -> Option<usize> {
    use tcp_flags::{ACK, RST};
    if seg.flags() & RST != 0 {
        return None;
    }
    let (seq, ack, flags) = if seg.flags() & ACK != 0 {
        (seg.ack(), 0, RST)
    } else {
        (0, seg.seq().wrapping_add(seg.seg_len()), RST | ACK)
    };
    let ip = Ipv4Repr {
        proto: proto::TCP,
        ..*ip
    };
    let hl = ip.emit(out, TCP_HLEN)?;
    let t = out.get_mut(hl..hl + TCP_HLEN)?;
    t.fill(0);
    t[12] = (TCP_HLEN as u8 / 4) << 4;
    let mut t = TcpPacket::new_checked(t).ok()?;
    t.set_ports(seg.dst_port(), seg.src_port());
    t.set_seq(seq);
    t.set_ack(ack);
    t.set_flags(flags);
    t.fill_checksum_v4(ip.src, ip.dst);
    Some(hl + TCP_HLEN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Ipv4Packet;
    use etherparse::{PacketBuilder, TcpSlice};

    const SRC: [u8; 4] = [192, 168, 15, 2];
    const DST: [u8; 4] = [192, 168, 15, 1];

    /// A TCP segment built by etherparse (the oracle), after its IPv4 header.
    fn segment(flags: u8, payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ipv4(SRC, DST, 64).tcp(40000, 80, 0x0102_0304, 512);
        let b = if flags & tcp_flags::SYN != 0 {
            b.syn()
        } else {
            b
        };
        let b = if flags & tcp_flags::FIN != 0 {
            b.fin()
        } else {
            b
        };
        let b = if flags & tcp_flags::ACK != 0 {
            b.ack(0x0a0b_0c0d)
        } else {
            b
        };
        let b = b
            .options(&[etherparse::TcpOptionElement::MaximumSegmentSize(1460)])
            .unwrap();
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        v.drain(..20);
        v
    }

    #[test]
    fn fields_match_etherparse() {
        let s = segment(tcp_flags::SYN | tcp_flags::ACK, b"data");
        let t = TcpPacket::new_checked(&s[..]).unwrap();
        let o = TcpSlice::from_slice(&s).unwrap();
        assert_eq!(t.src_port(), o.source_port());
        assert_eq!(t.dst_port(), o.destination_port());
        assert_eq!(t.seq(), o.sequence_number());
        assert_eq!(t.ack(), o.acknowledgment_number());
        assert_eq!(t.header_len(), usize::from(o.data_offset()) * 4);
        assert_eq!(t.header_len(), 24);
        assert_eq!(t.window(), o.window_size());
        assert_eq!(t.checksum(), o.checksum());
        assert_eq!(t.urgent(), o.urgent_pointer());
        assert_eq!(t.payload(), o.payload());
        assert_eq!(
            (
                t.flags() & tcp_flags::SYN != 0,
                t.flags() & tcp_flags::ACK != 0
            ),
            (o.syn(), o.ack())
        );
        assert_eq!(t.seg_len(), 5);
        assert!(t.checksum_ok_v4(SRC.into(), DST.into()));
    }

    #[test]
    fn setters_and_checksum_agree_with_etherparse() {
        let mut s = segment(tcp_flags::ACK, b"hello world");
        let mut t = TcpPacket::new_checked(&mut s[..]).unwrap();
        t.set_ports(1, 2);
        t.set_seq(7);
        t.set_ack(9);
        t.set_flags(tcp_flags::FIN | tcp_flags::ACK);
        t.fill_checksum_v4(SRC.into(), DST.into());
        let o = TcpSlice::from_slice(&s).unwrap();
        assert_eq!((o.source_port(), o.destination_port()), (1, 2));
        assert_eq!((o.sequence_number(), o.acknowledgment_number()), (7, 9));
        assert!(o.fin() && o.ack() && !o.syn());
        assert_eq!(o.calc_checksum_ipv4(SRC, DST).unwrap(), o.checksum());
    }

    #[test]
    fn short_headers_and_bad_offsets_are_malformed() {
        let s = segment(0, b"");
        assert!(TcpPacket::new_checked(&s[..19]).is_err());
        // The options cut: a whole head, not a whole header.
        assert!(TcpPacket::new_checked(&s[..22]).is_err());
        let h = TcpPacket::new_head(&s[..22]).unwrap();
        assert_eq!((h.header_len(), h.payload()), (24, &[][..]));
        let mut s = s;
        s[12] = 0x40; // data offset 16 < 20
        assert!(TcpPacket::new_head(&s[..]).is_err());
        for cut in 0..s.len() {
            if let Ok(t) = TcpPacket::new_head(&s[..cut]) {
                let _ = (t.payload(), t.seg_len(), t.checksum());
            }
        }
    }

    #[test]
    fn resets_follow_rfc_9293() {
        let ip = Ipv4Repr {
            src: DST.into(),
            dst: SRC.into(),
            proto: 0,
            ttl: 64,
            tos: 0,
            dont_frag: true,
        };
        let mut b = [0u8; 64];
        // A SYN: <SEQ=0><ACK=SEG.SEQ+1><CTL=RST,ACK>.
        let syn = segment(tcp_flags::SYN, b"");
        let n = emit_rst_v4(&mut b, &ip, &TcpPacket::new_checked(&syn[..]).unwrap()).unwrap();
        assert_eq!(n, 40);
        let p = etherparse::Ipv4Slice::from_slice(&b[..n]).unwrap();
        let h = p.header();
        assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
        assert!(h.dont_fragment() && h.ttl() == 64);
        assert_eq!(h.protocol(), etherparse::IpNumber::TCP);
        let o = TcpSlice::from_slice(p.payload().payload).unwrap();
        assert_eq!((o.source_port(), o.destination_port()), (80, 40000));
        assert!(o.rst() && o.ack() && !o.syn());
        assert_eq!(o.sequence_number(), 0);
        assert_eq!(o.acknowledgment_number(), 0x0102_0305);
        assert_eq!(o.calc_checksum_ipv4(DST, SRC).unwrap(), o.checksum());
        // With an ACK: <SEQ=SEG.ACK><CTL=RST>.
        let a = segment(tcp_flags::ACK, b"xyz");
        let n = emit_rst_v4(&mut b, &ip, &TcpPacket::new_checked(&a[..]).unwrap()).unwrap();
        let v = Ipv4Packet::new_checked(&b[..n]).unwrap();
        let o = TcpSlice::from_slice(v.payload()).unwrap();
        assert!(o.rst() && !o.ack());
        assert_eq!(o.sequence_number(), 0x0a0b_0c0d);
        // A reset is never answered; a small buffer is None, not a panic.
        let mut r = segment(tcp_flags::ACK, b"");
        r[13] |= tcp_flags::RST;
        assert!(emit_rst_v4(&mut b, &ip, &TcpPacket::new_checked(&r[..]).unwrap()).is_none());
        assert!(emit_rst_v4(&mut b[..39], &ip, &TcpPacket::new_checked(&a[..]).unwrap()).is_none());
    }
}
