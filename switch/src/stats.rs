//! Counters: per port rx/tx packets and bytes, and drops by named reason.
//!
//! Contract: owned by the worker and updated without atomics; the control
//! plane only sees snapshots taken between batches.

/// Why a frame was dropped. Every drop in the datapath has one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than an Ethernet header.
    Runt,
    /// Larger than the receive buffer (cut by the kernel).
    Truncated,
    /// Source MAC is multicast, broadcast or zero.
    BadSrcMac,
    /// The destination is behind the ingress port itself.
    SamePort,
    /// Flooded, but no other port is up.
    NoEgress,
    /// The egress port refused the frame (queue full, link down).
    TxError,
    /// The egress port is down or gone.
    PortDown,
    /// An ARP probe for the gateway's own address (left unanswered).
    GwArp,
    /// Not IPv4, sent to the gateway.
    GwNotIpv4,
    /// A malformed IPv4 packet or bad header checksum, sent to the gateway.
    GwMalformed,
    /// On the uplink, for an address that is not ours.
    GwNotForUs,
    /// For the gateway itself, but no service answers it.
    GwLocal,
    /// No route (after NAT).
    GwNoRoute,
    /// The queue of packets awaiting ARP resolution is full.
    GwQueueFull,
    /// A GSO frame without DF, bigger than the next hop's MTU.
    GwGsoTooBig,
    /// Dropped by the NAT (reasons in `nat` counters).
    Nat,
    /// Dropped by the forwarding policy (rule hits in `policy` counters).
    Policy,
    /// Between two isolated ports.
    Isolated,
    /// Not allowed on the port's VLANs (wrong tag, or untagged on a trunk).
    Vlan,
    /// A policy redirected or mirrored the frame to a port that does not exist.
    PolicyBadPort,
    /// Sent to one port (unicast, redirect, mirror) that does not carry the
    /// frame's VLAN; counted on that egress port. Flooded frames are only
    /// scoped to their VLAN's members and are not counted here.
    VlanEgress,
    /// The tag could not be added or removed for the egress port (the frame
    /// would exceed the largest slot, or a vnet header offset would overflow).
    VlanRetag,
    /// Dropped by the kernel before the switch saw it: the port's socket
    /// queue (`io = "mmsg"`) or RX ring (`io = "ring"`) was full because the
    /// worker did not read in time (`PACKET_STATISTICS` `tp_drops`).
    KernelRx,
    /// A datagram on the tunnel's UDP port that is not VXLAN (no I flag, too short).
    VxlanBadHeader,
    /// A VXLAN datagram with a VNI the tunnel does not carry.
    VxlanUnknownVni,
    /// A VXLAN datagram from a VTEP the tunnel does not accept.
    VxlanUnknownVtep,
    /// A frame larger than the tunnel's MTU (not a TCP super-frame, which is cut to fit).
    VxlanTooBig,
    /// A super-frame the tunnel cannot segment (GSO type or headers).
    VxlanGso,
    /// A frame to flood with no flood VTEP configured.
    VxlanNoRemote,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 29] = [
        DropReason::Runt,
        DropReason::Truncated,
        DropReason::BadSrcMac,
        DropReason::SamePort,
        DropReason::NoEgress,
        DropReason::TxError,
        DropReason::PortDown,
        DropReason::GwArp,
        DropReason::GwNotIpv4,
        DropReason::GwMalformed,
        DropReason::GwNotForUs,
        DropReason::GwLocal,
        DropReason::GwNoRoute,
        DropReason::GwQueueFull,
        DropReason::GwGsoTooBig,
        DropReason::Nat,
        DropReason::Policy,
        DropReason::Isolated,
        DropReason::Vlan,
        DropReason::PolicyBadPort,
        DropReason::VlanEgress,
        DropReason::VlanRetag,
        DropReason::KernelRx,
        DropReason::VxlanBadHeader,
        DropReason::VxlanUnknownVni,
        DropReason::VxlanUnknownVtep,
        DropReason::VxlanTooBig,
        DropReason::VxlanGso,
        DropReason::VxlanNoRemote,
    ];

    /// Stable name used in `vswitch stats` and JSON.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Runt => "runt",
            DropReason::Truncated => "truncated",
            DropReason::BadSrcMac => "bad-src-mac",
            DropReason::SamePort => "same-port",
            DropReason::NoEgress => "no-egress",
            DropReason::TxError => "tx-error",
            DropReason::PortDown => "port-down",
            DropReason::GwArp => "gw-arp-probe",
            DropReason::GwNotIpv4 => "gw-not-ipv4",
            DropReason::GwMalformed => "gw-malformed",
            DropReason::GwNotForUs => "gw-not-for-us",
            DropReason::GwLocal => "gw-local",
            DropReason::GwNoRoute => "gw-no-route",
            DropReason::GwQueueFull => "gw-queue-full",
            DropReason::GwGsoTooBig => "gw-gso-too-big",
            DropReason::Nat => "nat",
            DropReason::Policy => "policy",
            DropReason::Isolated => "isolated",
            DropReason::Vlan => "vlan",
            DropReason::PolicyBadPort => "policy-bad-port",
            DropReason::VlanEgress => "vlan-egress",
            DropReason::VlanRetag => "vlan-retag",
            DropReason::KernelRx => "kernel-rx-dropped",
            DropReason::VxlanBadHeader => "vxlan-bad-header",
            DropReason::VxlanUnknownVni => "vxlan-unknown-vni",
            DropReason::VxlanUnknownVtep => "vxlan-unknown-vtep",
            DropReason::VxlanTooBig => "vxlan-too-big",
            DropReason::VxlanGso => "vxlan-gso",
            DropReason::VxlanNoRemote => "vxlan-no-remote",
        }
    }
}

/// Counters of one port.
#[derive(Debug, Default, Clone, Copy)]
pub struct PortStats {
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes received (Ethernet frames, without the vnet header).
    pub rx_bytes: u64,
    /// Frames sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Drops, indexed by `DropReason as usize`. Receive-side reasons count on
    /// the ingress port, transmit-side ones on the egress port.
    pub drops: [u64; DropReason::ALL.len()],
    /// Frames flooded from this port (broadcast, multicast, unknown unicast).
    pub flooded: u64,
    /// Copies for captures and mirrors of this port that were dropped: the
    /// reader lagged, or a received frame grown by its restored VLAN tag did
    /// not fit a mirror copy's slot (the frames themselves were forwarded).
    pub capture_dropped: u64,
}

impl PortStats {
    /// Count a drop.
    #[inline]
    pub fn drop(&mut self, r: DropReason) {
        self.drops[r as usize] += 1;
    }

    /// Sum of all drops.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// JSON view with named drop reasons.
    pub fn to_json(&self) -> serde_json::Value {
        let drops: serde_json::Map<String, serde_json::Value> = DropReason::ALL
            .iter()
            .map(|r| (r.name().to_string(), self.drops[*r as usize].into()))
            .collect();
        serde_json::json!({
            "rx_packets": self.rx_packets,
            "rx_bytes": self.rx_bytes,
            "tx_packets": self.tx_packets,
            "tx_bytes": self.tx_bytes,
            "flooded": self.flooded,
            "capture_dropped": self.capture_dropped,
            "drops": drops,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_listed_once_in_counter_order_with_a_unique_name() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?} out of order");
        }
        let mut names: Vec<&str> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::ALL.len());
        let mut s = PortStats::default();
        s.drop(DropReason::VlanRetag);
        s.drop(DropReason::PolicyBadPort);
        let v = s.to_json();
        assert_eq!(v["drops"]["vlan-retag"], 1);
        assert_eq!(v["drops"]["policy-bad-port"], 1);
        assert_eq!(v["drops"]["vlan-egress"], 0);
        assert_eq!(s.total_drops(), 2);
    }
}
