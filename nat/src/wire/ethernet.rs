//! The link layer of the wire layer: typed zero-copy views over frame bytes
//! (Ethernet with 802.1Q, ARP, and the `virtio_net_hdr` that vswitch's
//! ports carry in front of every frame), and the MAC address type.
//!
//! Contract: `new_checked` validates the length a view needs, so accessors
//! never panic afterwards; malformed input is an `Err`, which the pipeline
//! turns into a counted drop. Setters need `AsMut<[u8]>`.

use std::fmt;

/// A malformed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than the header it must hold.
    Truncated,
    /// Fields hold values this view does not handle.
    Unsupported,
}

/// An Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// Group bit set (multicast or broadcast).
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }
    /// All zero.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
    /// A valid unicast source address (not group, not zero).
    pub fn is_unicast(&self) -> bool {
        !self.is_multicast() && !self.is_zero()
    }
    fn from_slice(b: &[u8]) -> MacAddr {
        let mut m = [0u8; 6];
        m.copy_from_slice(&b[..6]);
        MacAddr(m)
    }
}

impl std::str::FromStr for MacAddr {
    type Err = String;
    /// Six hex bytes separated by `:` (`02:00:00:00:00:01`).
    fn from_str(s: &str) -> Result<MacAddr, String> {
        let bad = || format!("{s:?} is not a MAC address (like 02:00:00:00:00:01)");
        let mut m = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut m {
            let h = parts
                .next()
                .filter(|h| (1..=2).contains(&h.len()))
                .ok_or_else(bad)?;
            *b = u8::from_str_radix(h, 16).map_err(|_| bad())?;
        }
        match parts.next() {
            None => Ok(MacAddr(m)),
            Some(_) => Err(bad()),
        }
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// EtherType values used here.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// 802.1Q VLAN tag.
    pub const VLAN: u16 = 0x8100;
    /// 802.1ad service tag.
    pub const QINQ: u16 = 0x88a8;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
}

/// Ethernet header length without tags.
pub const ETH_HLEN: usize = 14;

/// Write an Ethernet II header (with an 802.1Q tag for `vlan`, its
/// priority 0) into `out`; returns its length (14, or 18 tagged), or
/// `None` if `out` is too short.
pub fn emit_header(
    out: &mut [u8],
    dst: MacAddr,
    src: MacAddr,
    vlan: Option<u16>,
    ethertype: u16,
) -> Option<usize> {
    let n = ETH_HLEN + if vlan.is_some() { 4 } else { 0 };
    let b = out.get_mut(..n)?;
    b[0..6].copy_from_slice(&dst.0);
    b[6..12].copy_from_slice(&src.0);
    if let Some(v) = vlan {
        b[12..14].copy_from_slice(&ethertype::VLAN.to_be_bytes());
        b[14..16].copy_from_slice(&(v & 0x0fff).to_be_bytes());
    }
    b[n - 2..n].copy_from_slice(&ethertype.to_be_bytes());
    Some(n)
}

/// A view of an Ethernet II frame.
#[derive(Debug)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wrap `buf`, checking it holds at least the 14-byte header.
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        if buf.as_ref().len() < ETH_HLEN {
            return Err(WireError::Truncated);
        }
        Ok(EthernetFrame { buf })
    }
    /// Destination MAC.
    pub fn dst(&self) -> MacAddr {
        MacAddr::from_slice(&self.buf.as_ref()[0..6])
    }
    /// Source MAC.
    pub fn src(&self) -> MacAddr {
        MacAddr::from_slice(&self.buf.as_ref()[6..12])
    }
    /// The outer EtherType (0x8100 for a tagged frame).
    pub fn ethertype(&self) -> u16 {
        let b = self.buf.as_ref();
        u16::from_be_bytes([b[12], b[13]])
    }
    /// VLAN id of an 802.1Q/802.1ad tagged frame, if the tag is complete.
    pub fn vlan(&self) -> Option<u16> {
        let b = self.buf.as_ref();
        let et = self.ethertype();
        if (et == ethertype::VLAN || et == ethertype::QINQ) && b.len() >= ETH_HLEN + 4 {
            Some(u16::from_be_bytes([b[14], b[15]]) & 0x0fff)
        } else {
            None
        }
    }
    /// Whether an 802.1Q/802.1ad tag follows the addresses, and is complete.
    #[inline]
    fn tagged(&self) -> bool {
        let et = self.ethertype();
        (et == ethertype::VLAN || et == ethertype::QINQ) && self.buf.as_ref().len() >= ETH_HLEN + 4
    }
    /// Header length: 18 with a complete VLAN tag, else 14.
    #[inline]
    pub fn header_len(&self) -> usize {
        if self.tagged() {
            ETH_HLEN + 4
        } else {
            ETH_HLEN
        }
    }
    /// The EtherType of the payload: after a complete VLAN tag, the tag's;
    /// else the outer one.
    #[inline]
    pub fn inner_ethertype(&self) -> u16 {
        let b = self.buf.as_ref();
        if self.tagged() {
            u16::from_be_bytes([b[16], b[17]])
        } else {
            self.ethertype()
        }
    }
    /// Payload after the untagged header.
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[ETH_HLEN..]
    }
    /// The whole frame.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.as_ref()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Set the destination MAC.
    pub fn set_dst(&mut self, m: MacAddr) {
        self.buf.as_mut()[0..6].copy_from_slice(&m.0);
    }
    /// Set the source MAC.
    pub fn set_src(&mut self, m: MacAddr) {
        self.buf.as_mut()[6..12].copy_from_slice(&m.0);
    }
    /// Mutable payload after the untagged header.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buf.as_mut()[ETH_HLEN..]
    }
}

/// ARP operation codes.
pub mod arp_op {
    /// Request.
    pub const REQUEST: u16 = 1;
    /// Reply.
    pub const REPLY: u16 = 2;
}

/// Length of an Ethernet/IPv4 ARP packet.
pub const ARP_LEN: usize = 28;

/// A view of an Ethernet/IPv4 ARP packet (htype 1, ptype 0x0800, hlen 6, plen 4).
#[derive(Debug)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Wrap `buf`, checking length and the Ethernet/IPv4 address formats.
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < ARP_LEN {
            return Err(WireError::Truncated);
        }
        if b[0..6] != [0, 1, 0x08, 0x00, 6, 4] {
            return Err(WireError::Unsupported);
        }
        Ok(ArpPacket { buf })
    }
    /// Operation.
    pub fn op(&self) -> u16 {
        let b = self.buf.as_ref();
        u16::from_be_bytes([b[6], b[7]])
    }
    /// Sender hardware address.
    pub fn sha(&self) -> MacAddr {
        MacAddr::from_slice(&self.buf.as_ref()[8..14])
    }
    /// Sender protocol address.
    pub fn spa(&self) -> std::net::Ipv4Addr {
        let b = self.buf.as_ref();
        std::net::Ipv4Addr::new(b[14], b[15], b[16], b[17])
    }
    /// Target hardware address.
    pub fn tha(&self) -> MacAddr {
        MacAddr::from_slice(&self.buf.as_ref()[18..24])
    }
    /// Target protocol address.
    pub fn tpa(&self) -> std::net::Ipv4Addr {
        let b = self.buf.as_ref();
        std::net::Ipv4Addr::new(b[24], b[25], b[26], b[27])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    /// Turn this request into the reply `target_mac` would send, in place.
    pub fn make_reply(&mut self, target_mac: MacAddr) {
        let (sha, spa, tpa) = (self.sha(), self.spa(), self.tpa());
        let b = self.buf.as_mut();
        b[6..8].copy_from_slice(&arp_op::REPLY.to_be_bytes());
        b[8..14].copy_from_slice(&target_mac.0);
        b[14..18].copy_from_slice(&tpa.octets());
        b[18..24].copy_from_slice(&sha.0);
        b[24..28].copy_from_slice(&spa.octets());
    }
}

/// Size of the `virtio_net_hdr` every port carries in front of a frame.
pub const VNET_HDR_LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum from `csum_start` is still to be done.
pub const VNET_F_NEEDS_CSUM: u8 = 1;

/// A view of the 10-byte `virtio_net_hdr` (little-endian fields, as on x86/arm hosts).
#[derive(Debug)]
pub struct VnetHdr<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> VnetHdr<T> {
    /// Wrap `buf`, checking it holds 10 bytes.
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        if buf.as_ref().len() < VNET_HDR_LEN {
            return Err(WireError::Truncated);
        }
        Ok(VnetHdr { buf })
    }
    fn u16_at(&self, i: usize) -> u16 {
        let b = self.buf.as_ref();
        u16::from_le_bytes([b[i], b[i + 1]])
    }
    /// Flags (`NEEDS_CSUM`, `DATA_VALID`).
    pub fn flags(&self) -> u8 {
        self.buf.as_ref()[0]
    }
    /// GSO type (0 = none, 1 = TCPv4, 4 = TCPv6, 5 = UDP L4).
    pub fn gso_type(&self) -> u8 {
        self.buf.as_ref()[1]
    }
    /// Header length hint.
    pub fn hdr_len(&self) -> u16 {
        self.u16_at(2)
    }
    /// Segment size for GSO frames.
    pub fn gso_size(&self) -> u16 {
        self.u16_at(4)
    }
    /// Start of the checksummed region.
    pub fn csum_start(&self) -> u16 {
        self.u16_at(6)
    }
    /// Offset of the checksum field from `csum_start`.
    pub fn csum_offset(&self) -> u16 {
        self.u16_at(8)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VnetHdr<T> {
    /// Zero the header: a plain, fully checksummed frame.
    pub fn clear(&mut self) {
        self.buf.as_mut()[..VNET_HDR_LEN].fill(0);
    }
    /// Set `csum_start`.
    pub fn set_csum_start(&mut self, v: u16) {
        self.buf.as_mut()[6..8].copy_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ARP request "who-has 192.168.15.2 tell 192.168.15.1" as red sends it in
    /// the seed topology; written by hand after RFC 826's layout, with the MAC
    /// that red's veth had in one run of `netns-setup show`.
    #[rustfmt::skip]
    pub(crate) const ARP_REQUEST: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff,             // dst: broadcast
        0xca, 0x92, 0x85, 0xa6, 0x43, 0x57,             // src: red
        0x08, 0x06,                                     // ARP
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // Ethernet/IPv4, request
        0xca, 0x92, 0x85, 0xa6, 0x43, 0x57,             // sha: red
        192, 168, 15, 1,                                // spa
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00,             // tha
        192, 168, 15, 2,                                // tpa
    ];

    #[test]
    fn vlan_tags_move_the_payload() {
        let mut f = [0u8; 22];
        f[12..14].copy_from_slice(&ethertype::VLAN.to_be_bytes());
        f[14..16].copy_from_slice(&0x0064u16.to_be_bytes());
        f[16..18].copy_from_slice(&ethertype::IPV6.to_be_bytes());
        let e = EthernetFrame::new_checked(&f[..]).unwrap();
        assert_eq!(
            (e.vlan(), e.header_len(), e.inner_ethertype()),
            (Some(100), 18, ethertype::IPV6)
        );
        // A cut tag is not a tag.
        let e = EthernetFrame::new_checked(&f[..17]).unwrap();
        assert_eq!(
            (e.vlan(), e.header_len(), e.inner_ethertype()),
            (None, 14, ethertype::VLAN)
        );
        f[12..14].copy_from_slice(&ethertype::IPV4.to_be_bytes());
        let e = EthernetFrame::new_checked(&f[..]).unwrap();
        assert_eq!((e.header_len(), e.inner_ethertype()), (14, ethertype::IPV4));
    }

    #[test]
    fn ethernet_fields() {
        let f = EthernetFrame::new_checked(&ARP_REQUEST[..]).unwrap();
        assert_eq!(f.dst(), MacAddr::BROADCAST);
        assert_eq!(f.src().to_string(), "ca:92:85:a6:43:57");
        assert_eq!(f.ethertype(), ethertype::ARP);
        assert_eq!(f.vlan(), None);
        assert!(EthernetFrame::new_checked(&ARP_REQUEST[..13]).is_err());
    }

    #[test]
    fn arp_reply_in_place() {
        let mut buf = ARP_REQUEST;
        let blue = MacAddr([0xb2, 0x65, 0xf0, 0x0a, 0x24, 0xc9]);
        let mut arp = ArpPacket::new_checked(&mut buf[14..]).unwrap();
        assert_eq!(arp.op(), arp_op::REQUEST);
        arp.make_reply(blue);
        assert_eq!(arp.op(), arp_op::REPLY);
        assert_eq!(arp.sha(), blue);
        assert_eq!(arp.spa(), std::net::Ipv4Addr::new(192, 168, 15, 2));
        assert_eq!(arp.tha().to_string(), "ca:92:85:a6:43:57");
        assert_eq!(arp.tpa(), std::net::Ipv4Addr::new(192, 168, 15, 1));
    }

    #[test]
    fn arp_rejects_other_formats() {
        let mut buf = ARP_REQUEST;
        buf[14 + 4] = 8; // hlen 8
        assert_eq!(
            ArpPacket::new_checked(&buf[14..]).unwrap_err(),
            WireError::Unsupported
        );
        assert_eq!(
            ArpPacket::new_checked(&ARP_REQUEST[14..40]).unwrap_err(),
            WireError::Truncated
        );
    }

    #[test]
    fn vlan_tag() {
        let mut f = [0u8; 18];
        f[12] = 0x81;
        f[14] = 0x20;
        f[15] = 0x0a; // vid 10, pcp 1
        assert_eq!(EthernetFrame::new_checked(&f[..]).unwrap().vlan(), Some(10));
        assert_eq!(EthernetFrame::new_checked(&f[..16]).unwrap().vlan(), None);
    }

    #[test]
    fn mac_classes() {
        assert!(MacAddr::BROADCAST.is_multicast());
        assert!(MacAddr([0x33, 0x33, 0, 0, 0, 1]).is_multicast());
        assert!(!MacAddr::default().is_unicast());
        assert!(MacAddr([2, 0, 0, 0, 0, 1]).is_unicast());
    }

    /// Frames built by etherparse (the oracle) read the same through the views.
    #[test]
    fn ethernet_and_vlan_round_trip_through_etherparse() {
        use etherparse::{EtherType, Ethernet2Header, SingleVlanHeader};
        let (dst, src) = ([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]);
        let mut f = Ethernet2Header {
            source: src,
            destination: dst,
            ether_type: EtherType::VLAN_TAGGED_FRAME,
        }
        .to_bytes()
        .to_vec();
        let vlan = SingleVlanHeader {
            pcp: etherparse::VlanPcp::ZERO,
            drop_eligible_indicator: false,
            vlan_id: etherparse::VlanId::try_new(100).unwrap(),
            ether_type: EtherType::IPV6,
        };
        f.extend_from_slice(&vlan.to_bytes());
        f.extend_from_slice(&[0u8; 46]);
        let e = EthernetFrame::new_checked(&f[..]).unwrap();
        assert_eq!((e.dst().0, e.src().0), (dst, src));
        assert_eq!(e.ethertype(), ethertype::VLAN);
        assert_eq!(e.vlan(), Some(100));
        let s = etherparse::Ethernet2Slice::from_slice_without_fcs(&f).unwrap();
        assert_eq!(s.destination(), e.dst().0);
        assert_eq!(s.ether_type().0, e.ethertype());
    }

    #[test]
    fn arp_round_trips_through_etherparse() {
        use etherparse::{ArpHardwareId, ArpOperation, ArpPacket as Oracle, EtherType};
        let (sha, tha) = ([2u8, 0, 0, 0, 0, 1], [0u8; 6]);
        let a = Oracle::new(
            ArpHardwareId::ETHERNET,
            EtherType::IPV4,
            ArpOperation::REQUEST,
            &sha,
            &[192, 168, 15, 1],
            &tha,
            &[192, 168, 15, 2],
        )
        .unwrap();
        let mut b = a.to_bytes().to_vec();
        let v = ArpPacket::new_checked(&b[..]).unwrap();
        assert_eq!(v.op(), arp_op::REQUEST);
        assert_eq!(
            (v.sha().0, v.spa()),
            (sha, std::net::Ipv4Addr::new(192, 168, 15, 1))
        );
        assert_eq!(v.tpa(), std::net::Ipv4Addr::new(192, 168, 15, 2));
        // Our reply, read back by etherparse.
        let mac = MacAddr([2, 0, 0, 0, 0, 2]);
        ArpPacket::new_checked(&mut b[..]).unwrap().make_reply(mac);
        let r = etherparse::ArpPacketSlice::from_slice(&b)
            .unwrap()
            .to_packet();
        assert_eq!(r.operation, ArpOperation::REPLY);
        assert_eq!(r.sender_hw_addr(), &mac.0);
        assert_eq!(r.sender_protocol_addr(), &[192, 168, 15, 2]);
        assert_eq!(r.target_hw_addr(), &sha);
        assert_eq!(r.target_protocol_addr(), &[192, 168, 15, 1]);
    }
}
