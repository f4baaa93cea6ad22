//! UDP (RFC 768) header, read and rewritten in place.
//!
//! Contract: [`UdpPacket::new_checked`] validates the 8-byte header, so
//! accessors never panic afterwards. The length field is read, not checked
//! against `buf`: the IP header's length governs, and a GSO super-frame's
//! UDP length is that of one datagram. A checksum of 0 means "none" in IPv4
//! (a computed 0 is sent as `0xffff`); setters write fields as they are, the
//! checksum is the caller's.

use super::Malformed;

/// Length of the UDP header.
pub const UDP_HLEN: usize = 8;

/// A view of a UDP header (and its payload) at the start of `buf`.
#[derive(Debug)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Check that the 8-byte header is there.
    #[inline]
    pub fn new_checked(buf: T) -> Result<Self, Malformed> {
        if buf.as_ref().len() < UDP_HLEN {
            return Err(Malformed);
        }
        Ok(UdpPacket { buf })
    }
    #[inline]
    fn u16_at(&self, i: usize) -> u16 {
        let b = self.buf.as_ref();
        u16::from_be_bytes([b[i], b[i + 1]])
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
    /// The length field (header and data).
    #[inline]
    pub fn length(&self) -> u16 {
        self.u16_at(4)
    }
    /// Checksum field (0: none, in IPv4).
    #[inline]
    pub fn checksum(&self) -> u16 {
        self.u16_at(6)
    }
    /// The data after the header, to the end of `buf`.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[UDP_HLEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    /// Set both ports (the checksum is the caller's).
    #[inline]
    pub fn set_ports(&mut self, src: u16, dst: u16) {
        let b = self.buf.as_mut();
        b[0..2].copy_from_slice(&src.to_be_bytes());
        b[2..4].copy_from_slice(&dst.to_be_bytes());
    }
    /// Set the length field.
    #[inline]
    pub fn set_length(&mut self, len: u16) {
        self.buf.as_mut()[4..6].copy_from_slice(&len.to_be_bytes());
    }
    /// Set the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, c: u16) {
        self.buf.as_mut()[6..8].copy_from_slice(&c.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{PacketBuilder, UdpSlice};

    fn datagram(payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(5353, 53)
            .write(&mut v, payload)
            .unwrap();
        v.drain(..20);
        v
    }

    #[test]
    fn fields_match_etherparse() {
        let d = datagram(b"query");
        let u = UdpPacket::new_checked(&d[..]).unwrap();
        let o = UdpSlice::from_slice(&d).unwrap();
        assert_eq!(
            (u.src_port(), u.dst_port(), u.length(), u.checksum()),
            (
                o.source_port(),
                o.destination_port(),
                o.length(),
                o.checksum()
            )
        );
        assert_eq!(u.payload(), o.payload());
    }

    #[test]
    fn setters_and_short_headers() {
        let mut d = datagram(b"abc");
        let mut u = UdpPacket::new_checked(&mut d[..]).unwrap();
        u.set_ports(1000, 2000);
        u.set_length(11);
        u.set_checksum(0);
        let o = UdpSlice::from_slice(&d).unwrap();
        assert_eq!(
            (
                o.source_port(),
                o.destination_port(),
                o.length(),
                o.checksum()
            ),
            (1000, 2000, 11, 0)
        );
        assert!(UdpPacket::new_checked(&d[..7]).is_err());
        assert!(
            UdpPacket::new_checked(&d[..8])
                .unwrap()
                .payload()
                .is_empty()
        );
    }
}
