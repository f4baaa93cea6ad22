//! The link-layer views (Ethernet, ARP, `virtio_net_hdr`, MAC addresses)
//! belong to the one wire layer in [`nat::wire::ethernet`]; re-exported here
//! for the switch, with the frame fixtures of the switch's own tests.

pub use nat::wire::ethernet::*;

/// Frame builders for unit tests (Ethernet II and RFC 826 ARP layouts).
#[cfg(test)]
pub(crate) mod tests_fixtures {
    use super::MacAddr;

    /// An Ethernet frame `len` bytes long with a counting payload.
    pub fn eth_frame(dst: MacAddr, src: MacAddr, ethertype: u16, len: usize) -> Vec<u8> {
        let mut f = Vec::with_capacity(len);
        f.extend_from_slice(&dst.0);
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&ethertype.to_be_bytes());
        while f.len() < len {
            f.push(f.len() as u8);
        }
        f
    }

    fn arp(
        op: u16,
        dst: MacAddr,
        sha: MacAddr,
        spa: [u8; 4],
        tha: MacAddr,
        tpa: [u8; 4],
    ) -> Vec<u8> {
        let mut f = eth_frame(dst, sha, 0x0806, 14);
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
        f.extend_from_slice(&op.to_be_bytes());
        f.extend_from_slice(&sha.0);
        f.extend_from_slice(&spa);
        f.extend_from_slice(&tha.0);
        f.extend_from_slice(&tpa);
        f.resize(60, 0); // padded to the Ethernet minimum, as on the wire
        f
    }

    /// A broadcast ARP request.
    pub fn arp_request(sha: MacAddr, spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
        arp(1, MacAddr::BROADCAST, sha, spa, MacAddr::default(), tpa)
    }

    /// A unicast ARP reply.
    pub fn arp_reply(sha: MacAddr, spa: [u8; 4], tha: MacAddr, tpa: [u8; 4]) -> Vec<u8> {
        arp(2, tha, sha, spa, tha, tpa)
    }
}
