//! The gateway: the switch's own router between the LAN and the uplink.
//!
//! Contract: the gateway owns its LAN address (answers ARP and ping for it)
//! and the uplink address. It routes IPv4 between LAN subnets (static routes
//! included, no NAT) and the uplink (through [`nat::Nat`]), decrements TTL,
//! and answers with ICMP: time exceeded (TTL), destination unreachable (no
//! route), fragmentation needed (DF set, next hop MTU too small); non-DF
//! packets that are too big are fragmented. Everything is driven by `now`
//! (ms); no I/O happens here: frames are rewritten in place or generated into
//! a [`Gen`] batch.
//!
//! Hardening (each refusal is counted in [`GwCounters`], see [`GwDrop`]):
//! - Neighbour caches (one per side, [`ArpTable`]) learn only on-link senders
//!   of ARP addressed to us, are bounded in total and per LAN port, and evict
//!   unconfirmed entries first; a reply to our own request confirms, and a
//!   confirmation always finds room (O(1)), so a flood of made-up senders
//!   cannot keep the real next hop out. Outstanding requests are bounded
//!   ([`MAX_OUTSTANDING`]), and one ingress port holds at most a quarter of
//!   the queue of packets awaiting resolution.
//! - Ingress filtering (RFC 3704): from the LAN only sources of a LAN subnet
//!   or of a static route, never our own addresses; from the uplink no
//!   martian, LAN or own source. Martian destinations (0/8, 127/8, multicast,
//!   class E, limited and directed broadcast) are never routed (RFC 1812 5.3.7).
//! - Every routed egress checks the MTU, hairpinned (LAN → external address →
//!   LAN) and inbound (uplink → DNAT → LAN) packets included: DF set → ICMP
//!   fragmentation needed quoting the packet as its sender sent it (before
//!   NAT); DF clear → fragments, none carrying DF, with the transport checksum
//!   completed first when the vnet header left it to offload
//!   (CHECKSUM_PARTIAL). A GSO super-frame whose segments do not fit: DF →
//!   fragmentation needed; otherwise TCPv4 is segmented here (complete
//!   segments), UDP GSO is refused (its datagram boundaries are the sender's).
//! - TTL is checked before NAT; echo replies leave with a fresh TTL (64);
//!   ICMP errors are rate-limited (RFC 1812 4.3.2.8): a token bucket for all,
//!   plus one per destination (hashed into a fixed array).
//! - An IPv4 total length of 0, or shorter than the frame beyond Ethernet
//!   padding, is accepted only on GSO frames.
//!
//! Parts: [`route`] (the IPv4 routing table, source and destination
//! checks, egress MTUs), `neigh` (ARP for our addresses, the neighbour
//! caches, the resolution queue shared with IPv6), `icmp` (answers and
//! errors under rate limits), `frag` (fitting packets to the MTU:
//! fragmentation, GSO segmentation), [`v6`] (the IPv6 router and NAT66);
//! this module ties them together for each frame.
//!
//! ```text
//! LAN frame to gateway MAC ─► IPv4 ok? ─► source ok? ─► martian dst? ─► for us? ─► echo reply / ICMP unreachable
//!                              └─► to the external address ─► TTL ─► NAT (hairpin/DNAT) ─► MTU/DF ─► out
//!                              └─► TTL ≤ 1 ─► time exceeded
//!                              └─► route ─► MTU/DF ─► NAT ─► TTL-1 ─► neighbour ─► out (or queue + ARP)
//! uplink frame ─► ARP for our address ─► learn (on-link) / reply
//!              └─► IPv4 to our address ─► source ok? ─► TTL ─► NAT inbound ─► MTU/DF ─► LAN
//! ```

use crate::PortId;
use crate::arp::{ArpTable, Heard, Learned, default_per_port, is_host_of};
use crate::fdb::Fdb;
use crate::port::BATCH;
use crate::stats::DropReason;
use crate::verdict::{Gen, Target, Verdict};
use crate::wire::{
    ArpPacket, ETH_HLEN, EthernetFrame, MacAddr, VNET_F_NEEDS_CSUM, VNET_HDR_LEN, VnetHdr, arp_op,
    ethertype,
};
use nat::checksum;
use nat::wire::{Ipv4Packet, icmp_is_error, icmp_type, proto};
use nat::{Ipv4Net, Nat, NatConfig, Side};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

mod frag;
mod icmp;
mod neigh;
pub mod route;
pub mod v6;
use frag::*;
use icmp::*;
pub use neigh::MAX_OUTSTANDING;
use neigh::*;
use route::*;
pub use route::{Egress, is_martian};
pub use v6::{Egress6, Gw6, Gw6Config, RA_INTERVAL_MS, port_subscriber, subscriber_port};

/// The uplink side of the gateway.
#[derive(Debug, Clone, Copy)]
pub struct UplinkConfig {
    /// The uplink's port.
    pub port: PortId,
    /// Our external address.
    pub ip: Ipv4Addr,
    /// The uplink subnet's prefix length.
    pub prefix: u8,
    /// Our MAC on the uplink.
    pub mac: MacAddr,
    /// Next hop for destinations beyond the uplink subnet.
    pub next_hop: Option<Ipv4Addr>,
    /// Path MTU towards the uplink.
    pub mtu: u32,
}

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Our LAN address.
    pub ip: Ipv4Addr,
    /// LAN prefix length.
    pub prefix: u8,
    /// Our LAN MAC.
    pub mac: MacAddr,
    /// MTU of the LAN.
    pub lan_mtu: u32,
    /// Static routes: destination network → next hop on the LAN.
    pub routes: Vec<(Ipv4Net, Ipv4Addr)>,
    /// The uplink, if any.
    pub uplink: Option<UplinkConfig>,
    /// NAT, if any.
    pub nat: Option<NatConfig>,
    /// Bound on each neighbour cache (the LAN one also holds at most a
    /// quarter of it per port, [`default_per_port`]).
    pub neigh_max: usize,
    /// Neighbour entry lifetime, ms.
    pub ageing_ms: u64,
    /// Packets that may wait for neighbour resolution.
    pub queue_slots: usize,
    /// IPv6, if the gateway has IPv6 addresses.
    pub v6: Option<Gw6Config>,
}

impl GatewayConfig {
    /// The LAN subnet (the gateway's address and prefix).
    pub fn lan_net(&self) -> Ipv4Net {
        Ipv4Net {
            addr: self.ip,
            prefix: self.prefix.min(32),
        }
    }

    /// Networks whose hosts are on the LAN link: the LAN subnet and the
    /// static routes' next hops (as /32). The switch's ARP table learns only these.
    pub fn lan_on_link(&self) -> Vec<Ipv4Net> {
        let mut v = vec![self.lan_net()];
        v.extend(self.routes.iter().map(|(_, nh)| Ipv4Net {
            addr: *nh,
            prefix: 32,
        }));
        v
    }
}

/// Gateway counters.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct GwCounters {
    /// Packets routed (forwarded at L3).
    pub routed: u64,
    /// ICMP echo requests answered.
    pub echo_replies: u64,
    /// ICMP time exceeded sent.
    pub time_exceeded: u64,
    /// ICMP destination unreachable (no route, port) sent.
    pub unreachable: u64,
    /// TCP resets sent for segments to the gateway's own addresses (no listener).
    pub tcp_resets: u64,
    /// ICMP fragmentation needed sent.
    pub frag_needed: u64,
    /// Fragments made.
    pub fragmented: u64,
    /// Segments made from TCP GSO frames too big for their egress.
    pub segmented: u64,
    /// ARP requests sent.
    pub arp_requests: u64,
    /// ARP requests answered for our addresses.
    pub arp_replies: u64,
    /// IPv6 neighbor solicitations sent (resolving next hops).
    pub nd_solicits: u64,
    /// IPv6 neighbor advertisements sent for our addresses.
    pub nd_adverts: u64,
    /// IPv6 router advertisements sent.
    pub ra_sent: u64,
    /// ICMPv6 Packet Too Big sent (IPv6 routers never fragment).
    pub packet_too_big: u64,
    /// Packets queued awaiting a neighbour.
    pub queued: u64,
    /// Neighbour bindings not learned (off-link sender, or no room for a hint).
    pub neigh_refused: u64,
    /// Neighbour entries evicted to make room.
    pub neigh_evicted: u64,
    /// ARP requests not sent: too many outstanding ([`MAX_OUTSTANDING`]).
    pub arp_requests_limited: u64,
    /// ICMP errors not sent: over the rate limit.
    pub icmp_rate_limited: u64,
    /// Dropped: not IPv4 (to the gateway MAC).
    pub drop_not_ipv4: u64,
    /// Dropped: malformed, bad header checksum, or total length 0 without GSO.
    pub drop_malformed: u64,
    /// Multicast and broadcast frames other than ARP received on the uplink
    /// (IPv6 router solicitations, MLD, ...), ignored as a host would: not drops.
    pub ignored_multicast: u64,
    /// Dropped: on the uplink, to another MAC or to an address we neither own
    /// nor route. The port's `gw-not-for-us` is this plus `drop_spoofed_src`.
    pub drop_not_for_us: u64,
    /// Dropped: for us, but no service (not echo/UDP).
    pub drop_local: u64,
    /// Dropped: the resolution queue was full.
    pub drop_queue_full: u64,
    /// Dropped: the ingress port holds its share (a quarter) of the resolution queue.
    pub drop_queue_share: u64,
    /// Dropped: the neighbour never answered.
    pub drop_unresolved: u64,
    /// Dropped: a GSO frame too big for the next hop without DF.
    pub drop_gso_too_big: u64,
    /// Dropped: no room for a generated frame in this batch.
    pub drop_gen_full: u64,
    /// Dropped: a source address the ingress side may not use (RFC 3704).
    pub drop_spoofed_src: u64,
    /// Dropped: a destination that is never routed (RFC 1812 5.3.7).
    pub drop_martian_dst: u64,
    /// Dropped: a vnet header whose checksum offload points outside the packet.
    pub drop_bad_vnet: u64,
    /// Dropped: after NAT, no route for the new destination.
    pub drop_no_route: u64,
    /// Dropped: too big for its egress with DF set, and no error may be sent (a later fragment).
    pub drop_too_big: u64,
    /// Dropped: hop limit exhausted after NAT66 translated it (hairpinned echo).
    pub drop_hop_limit: u64,
    /// IPv6 packets NPTv6 translated leaving the site (source prefix).
    pub npt_out: u64,
    /// IPv6 packets NPTv6 translated entering the site (destination prefix).
    pub npt_in: u64,
    /// Dropped: an NPTv6 address with no word left to adjust (RFC 6296 3.5).
    pub drop_npt_unmappable: u64,
}

/// Gateway drop reasons finer than [`DropReason`], each with a stable name
/// and a counter in [`GwCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GwDrop {
    /// Not IPv4.
    NotIpv4,
    /// Malformed IPv4, bad header checksum, total length 0 without GSO.
    Malformed,
    /// A source the ingress side may not use.
    SpoofedSrc,
    /// A destination that is never routed.
    MartianDst,
    /// A checksum-offload request outside the packet.
    BadVnet,
    /// A GSO frame whose segments do not fit and may not be fragmented.
    GsoTooBig,
    /// No route for the translated destination.
    NoRoute,
    /// Too big for its egress, DF set, and no error may be sent (a later fragment).
    TooBig,
    /// Hop limit exhausted after translation (no error may quote it as sent).
    HopLimit,
    /// An NPTv6 address that cannot be mapped (its word to adjust is `0xffff`).
    NptUnmappable,
}

impl GwDrop {
    /// Every reason.
    pub const ALL: [GwDrop; 10] = [
        GwDrop::NotIpv4,
        GwDrop::Malformed,
        GwDrop::SpoofedSrc,
        GwDrop::MartianDst,
        GwDrop::BadVnet,
        GwDrop::GsoTooBig,
        GwDrop::NoRoute,
        GwDrop::TooBig,
        GwDrop::HopLimit,
        GwDrop::NptUnmappable,
    ];

    /// Stable name (for `vswitch stats`).
    pub fn name(self) -> &'static str {
        match self {
            GwDrop::NotIpv4 => "gw-not-ipv4",
            GwDrop::Malformed => "gw-malformed",
            GwDrop::SpoofedSrc => "gw-spoofed-src",
            GwDrop::MartianDst => "gw-martian-dst",
            GwDrop::BadVnet => "gw-bad-vnet",
            GwDrop::GsoTooBig => "gw-gso-too-big",
            GwDrop::NoRoute => "gw-no-route",
            GwDrop::TooBig => "gw-too-big",
            GwDrop::HopLimit => "gw-hop-limit",
            GwDrop::NptUnmappable => "gw-npt-unmappable",
        }
    }

    /// The per-port reason it is counted under.
    pub fn port_reason(self) -> DropReason {
        match self {
            GwDrop::NotIpv4 => DropReason::GwNotIpv4,
            GwDrop::Malformed | GwDrop::BadVnet => DropReason::GwMalformed,
            GwDrop::SpoofedSrc => DropReason::GwNotForUs,
            GwDrop::MartianDst | GwDrop::NoRoute | GwDrop::HopLimit | GwDrop::NptUnmappable => {
                DropReason::GwNoRoute
            }
            GwDrop::GsoTooBig | GwDrop::TooBig => DropReason::GwGsoTooBig,
        }
    }
}

/// What to do with a routed packet.
enum Next {
    Out(Target),
    Queue { nh: IpAddr, wan: bool },
    Drop(DropReason),
}

/// The smallest Ethernet payload (60-byte frame without FCS); shorter packets arrive padded.
const ETH_MIN_PAYLOAD: usize = 60 - ETH_HLEN;
/// The owner of generated frames (fragments, released packets) in the resolution queue.
const GENERATED: PortId = PortId::MAX;
/// TTL of the packets the gateway originates (echo replies, ICMP errors).
const OWN_TTL: u8 = 64;

/// The fields of a validated IPv4 header the gateway decides on.
#[derive(Debug, Clone, Copy)]
struct IpInfo {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    /// Length of the packet (the frame's, for a GSO frame with total length 0).
    total: usize,
    df: bool,
    proto: u8,
    hl: usize,
    echo_request: bool,
}

/// Validate the IPv4 packet at the start of `ip` (the rest of the frame):
/// version, lengths, header checksum. Unless the frame is GSO, the total
/// length must be that of the frame, Ethernet padding (to 60 bytes) aside:
/// 0, or a frame with more behind the packet, is malformed.
fn parse_ip(ip: &[u8], gso: bool) -> Option<IpInfo> {
    let p = Ipv4Packet::new_checked(ip).ok()?;
    let raw_total = usize::from(p.total_len_field());
    let padded = raw_total < ip.len() && ip.len() > ETH_MIN_PAYLOAD;
    if !p.checksum_ok() || (!gso && (raw_total == 0 || padded)) {
        return None;
    }
    Some(IpInfo {
        src: p.src(),
        dst: p.dst(),
        ttl: p.ttl(),
        total: p.total_len(),
        df: p.dont_frag(),
        proto: p.protocol(),
        hl: p.header_len(),
        echo_request: p.protocol() == proto::ICMP
            && p.payload().first() == Some(&icmp_type::ECHO_REQUEST)
            && !p.is_fragment(),
    })
}

/// The gateway's state.
#[derive(Clone)]
pub struct Gateway {
    cfg: GatewayConfig,
    lan_net: Ipv4Net,
    up_net: Option<Ipv4Net>,
    /// The NAT engine.
    pub nat: Option<Nat>,
    /// LAN neighbours (IP → MAC).
    pub neigh_lan: ArpTable,
    /// Uplink neighbours.
    pub neigh_wan: ArpTable,
    pending: Vec<Pending>,
    /// Addresses we sent an ARP request or a neighbor solicitation for, and
    /// when (bounded: [`MAX_OUTSTANDING`] per family, so one cannot starve the other).
    last_req: HashMap<IpAddr, u64, foldhash::fast::RandomState>,
    /// How many of `last_req` are IPv6.
    req6: usize,
    icmp_all: Bucket,
    icmp_dst: Box<[Bucket; ICMP_DST_SLOTS]>,
    /// A packet being re-fragmented in [`Gateway::route_gen`].
    scratch: Vec<u8>,
    /// IPv6 state, if configured.
    v6: Option<Gw6>,
    /// Counters.
    pub counters: GwCounters,
}

fn write_eth(b: &mut [u8], dst: MacAddr, src: MacAddr, et: u16) {
    nat::wire::ethernet::emit_header(b, dst, src, None, et);
}

impl Gateway {
    /// A gateway with empty caches.
    pub fn new(cfg: GatewayConfig) -> Gateway {
        let lan_net = cfg.lan_net();
        let up_net = cfg.uplink.as_ref().map(|u| Ipv4Net {
            addr: u.ip,
            prefix: u.prefix.min(32),
        });
        let pending = (0..cfg.queue_slots)
            .map(|_| Pending {
                used: false,
                owner: GENERATED,
                nh: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                wan: false,
                since: 0,
                data: Vec::with_capacity(2048),
            })
            .collect();
        let mut neigh_lan = ArpTable::with_limits(
            cfg.neigh_max,
            default_per_port(cfg.neigh_max),
            cfg.ageing_ms,
        );
        neigh_lan.set_on_link(&cfg.lan_on_link());
        neigh_lan.set_hints_rebind(false);
        // One port: the uplink table's bound is its own.
        let mut neigh_wan = ArpTable::with_limits(cfg.neigh_max, cfg.neigh_max, cfg.ageing_ms);
        neigh_wan.set_hints_rebind(false);
        if let Some(u) = &cfg.uplink {
            let mut nets: Vec<Ipv4Net> = up_net.into_iter().collect();
            nets.extend(u.next_hop.map(|addr| Ipv4Net { addr, prefix: 32 }));
            neigh_wan.set_on_link(&nets);
        }
        Gateway {
            v6: cfg.v6.clone().map(|c| Gw6::new(c, &cfg)),
            nat: cfg.nat.clone().map(Nat::new),
            neigh_lan,
            neigh_wan,
            pending,
            last_req: HashMap::default(),
            req6: 0,
            icmp_all: Bucket::FULL,
            icmp_dst: Box::new([Bucket::FULL; ICMP_DST_SLOTS]),
            scratch: Vec::new(),
            counters: GwCounters::default(),
            lan_net,
            up_net,
            cfg,
        }
    }

    /// Our LAN address.
    pub fn ip(&self) -> Ipv4Addr {
        self.cfg.ip
    }

    /// Our LAN MAC.
    pub fn mac(&self) -> MacAddr {
        self.cfg.mac
    }

    /// The uplink settings, if any.
    pub fn uplink(&self) -> Option<&UplinkConfig> {
        self.cfg.uplink.as_ref()
    }

    /// Have both NAT engines note down their decisions from now on (for a
    /// dry run on a copy: [`crate::pipeline::Pipeline::dry_run`]).
    pub fn record_notes(&mut self) {
        if let Some(n) = &mut self.nat {
            n.record_notes();
        }
        if let Some(n) = self.v6.as_mut().and_then(|v| v.nat.as_mut()) {
            n.record_notes();
        }
    }

    /// NAT drops by reason ([`nat::NatDrop::ALL`] order), both families together.
    pub fn nat_drops(&self) -> [u64; nat::NatDrop::ALL.len()] {
        let mut d = [0; nat::NatDrop::ALL.len()];
        let v6 = self.v6.as_ref().and_then(|v| v.nat.as_ref());
        for n in self
            .nat
            .iter()
            .map(|n| &n.counters)
            .chain(v6.map(|n| &n.counters))
        {
            for (a, b) in d.iter_mut().zip(n.drops) {
                *a += b;
            }
        }
        d
    }

    /// The notes both NAT engines took (see [`Gateway::record_notes`]).
    pub fn take_notes(&mut self) -> Vec<(nat::Step, String)> {
        let mut v = self
            .nat
            .as_mut()
            .map(|n| n.take_notes())
            .unwrap_or_default();
        if let Some(n) = self.v6.as_mut().and_then(|v| v.nat.as_mut()) {
            v.extend(n.take_notes());
        }
        v
    }

    /// The uplink's port, if any.
    pub fn uplink_port(&self) -> Option<PortId> {
        self.cfg.uplink.as_ref().map(|u| u.port)
    }

    /// Set the LAN MTU (the smallest of the LAN ports', after ports change).
    pub fn set_lan_mtu(&mut self, mtu: u32) {
        self.cfg.lan_mtu = mtu;
    }

    /// The uplink's MAC changed (its link was re-created): answer with the new one.
    pub fn set_uplink_mac(&mut self, mac: MacAddr) {
        if let Some(u) = &mut self.cfg.uplink {
            u.mac = mac;
        }
        if let Some(v6) = &mut self.v6 {
            v6.set_uplink_mac(mac);
        }
    }

    /// The configuration (routes, uplink, NAT as configured).
    pub fn config(&self) -> &GatewayConfig {
        &self.cfg
    }

    /// Count a drop and say how the port counts it.
    fn drop(&mut self, d: GwDrop) -> Verdict {
        let c = &mut self.counters;
        match d {
            GwDrop::NotIpv4 => c.drop_not_ipv4 += 1,
            GwDrop::Malformed => c.drop_malformed += 1,
            GwDrop::SpoofedSrc => c.drop_spoofed_src += 1,
            GwDrop::MartianDst => c.drop_martian_dst += 1,
            GwDrop::BadVnet => c.drop_bad_vnet += 1,
            GwDrop::GsoTooBig => c.drop_gso_too_big += 1,
            GwDrop::NoRoute => c.drop_no_route += 1,
            GwDrop::TooBig => c.drop_too_big += 1,
            GwDrop::HopLimit => c.drop_hop_limit += 1,
            GwDrop::NptUnmappable => c.drop_npt_unmappable += 1,
        }
        Verdict::Drop(d.port_reason())
    }

    /// A frame from the LAN addressed to the gateway's MAC.
    pub fn from_lan(
        &mut self,
        now: u64,
        in_port: PortId,
        vnet: &mut [u8],
        frame: &mut [u8],
        out: &mut Gen,
        fdb: &Fdb,
    ) -> Verdict {
        let Ok(eth) = EthernetFrame::new_checked(&*frame) else {
            return Verdict::Drop(DropReason::Runt);
        };
        if eth.ethertype() == ethertype::IPV6 {
            return self.lan_ipv6(now, in_port, vnet, frame, out, fdb);
        }
        if eth.ethertype() != ethertype::IPV4 {
            return self.drop(GwDrop::NotIpv4);
        }
        let src_mac = eth.src();
        let gso = is_gso(vnet);
        let Some(h) = parse_ip(&frame[ETH_HLEN..], gso) else {
            return self.drop(GwDrop::Malformed);
        };
        if !self.lan_source_ok(h.src) || self.source_taken(now, h.src, in_port, src_mac) {
            return self.drop(GwDrop::SpoofedSrc);
        }
        if self.martian_dst(h.dst) {
            return self.drop(GwDrop::MartianDst);
        }
        let end = ETH_HLEN + h.total;
        if h.dst == self.cfg.ip {
            return self.local(now, frame, in_port, src_mac, out, self.cfg.mac, self.cfg.ip);
        }
        if self.cfg.uplink.as_ref().is_some_and(|u| u.ip == h.dst) {
            return self.hairpin(now, in_port, src_mac, vnet, frame, &h, out, fdb);
        }
        if h.ttl <= 1 {
            let q = &frame[ETH_HLEN..end];
            self.lan_error(
                now,
                out,
                in_port,
                src_mac,
                q,
                icmp_type::TIME_EXCEEDED,
                0,
                0,
            );
            self.counters.time_exceeded += 1;
            return Verdict::Consumed;
        }
        let egress = self.route(h.dst);
        if matches!(egress, Egress::None | Egress::Local) {
            let q = &frame[ETH_HLEN..end];
            self.lan_error(now, out, in_port, src_mac, q, icmp_type::DEST_UNREACH, 0, 0);
            self.counters.unreachable += 1;
            return Verdict::Consumed;
        }
        // Path MTU, before NAT: "fragmentation needed" quotes what was sent.
        let mtu = self.egress_mtu(egress);
        let seg = seg_len(vnet, &frame[ETH_HLEN..end], h.hl, h.proto);
        let f = fit(seg, mtu, h.df, gso);
        match f {
            Fit::FragNeeded => {
                let q = &frame[ETH_HLEN..end];
                let m = mtu.min(0xffff) as u16;
                self.lan_error(now, out, in_port, src_mac, q, icmp_type::DEST_UNREACH, 4, m);
                self.counters.frag_needed += 1;
                return Verdict::Consumed;
            }
            Fit::GsoTooBig if !can_segment(vnet, h.proto) => {
                return self.drop(GwDrop::GsoTooBig);
            }
            Fit::Fits | Fit::Fragment | Fit::GsoTooBig => {}
        }
        let partial = vnet[0] & VNET_F_NEEDS_CSUM != 0;
        if let Err(v) = self.nat_step(now, Side::Lan, &mut frame[ETH_HLEN..end], partial) {
            return v;
        }
        match f {
            Fit::Fragment => return self.fragment_out(vnet, &mut frame[..end], mtu, out),
            Fit::GsoTooBig => return self.segment_out(&mut frame[..end], mtu, out),
            _ => {}
        }
        self.forward(now, in_port, vnet, frame, end, out, fdb)
    }

    /// A LAN packet to our external address: answered by us, or (NAT)
    /// hairpinned back to the LAN. TTL is checked before NAT, the MTU after
    /// it (the egress is known only then), quoting the packet as sent.
    #[allow(clippy::too_many_arguments)]
    fn hairpin(
        &mut self,
        now: u64,
        in_port: PortId,
        src_mac: MacAddr,
        vnet: &mut [u8],
        frame: &mut [u8],
        h: &IpInfo,
        out: &mut Gen,
        fdb: &Fdb,
    ) -> Verdict {
        let end = ETH_HLEN + h.total;
        // An echo request is ours to answer whatever its TTL; anything else
        // with TTL ≤ 1 would expire on the way back out.
        if h.ttl <= 1 && !h.echo_request {
            let q = &frame[ETH_HLEN..end];
            self.lan_error(
                now,
                out,
                in_port,
                src_mac,
                q,
                icmp_type::TIME_EXCEEDED,
                0,
                0,
            );
            self.counters.time_exceeded += 1;
            return Verdict::Consumed;
        }
        let gso = is_gso(vnet);
        let seg = seg_len(vnet, &frame[ETH_HLEN..end], h.hl, h.proto);
        let quote = (seg > self.min_mtu() || h.ttl <= 1).then(|| Quote::of(&frame[ETH_HLEN..end]));
        let partial = vnet[0] & VNET_F_NEEDS_CSUM != 0;
        match self.nat_step(now, Side::Lan, &mut frame[ETH_HLEN..end], partial) {
            Ok(true) => {}
            Ok(false) => {
                let my = self.cfg.uplink.as_ref().map_or(self.cfg.ip, |u| u.ip);
                return self.local(now, frame, in_port, src_mac, out, self.cfg.mac, my);
            }
            Err(v) => return v,
        }
        if h.ttl <= 1 {
            if let Some(q) = &quote {
                self.lan_error(
                    now,
                    out,
                    in_port,
                    src_mac,
                    q.bytes(),
                    icmp_type::TIME_EXCEEDED,
                    0,
                    0,
                );
            }
            self.counters.time_exceeded += 1;
            return Verdict::Consumed;
        }
        let dst = Ipv4Packet::new_checked(&frame[ETH_HLEN..end]).map_or(h.dst, |p| p.dst());
        let egress = self.route(dst);
        if matches!(egress, Egress::None | Egress::Local) {
            return self.drop(GwDrop::NoRoute);
        }
        let mtu = self.egress_mtu(egress);
        match fit(seg, mtu, h.df, gso) {
            Fit::Fits => self.forward(now, in_port, vnet, frame, end, out, fdb),
            Fit::Fragment => self.fragment_out(vnet, &mut frame[..end], mtu, out),
            Fit::GsoTooBig if can_segment(vnet, h.proto) => {
                self.segment_out(&mut frame[..end], mtu, out)
            }
            Fit::GsoTooBig => self.drop(GwDrop::GsoTooBig),
            Fit::FragNeeded => {
                if let Some(q) = &quote {
                    let m = mtu.min(0xffff) as u16;
                    let b = q.bytes();
                    self.lan_error(now, out, in_port, src_mac, b, icmp_type::DEST_UNREACH, 4, m);
                }
                self.counters.frag_needed += 1;
                Verdict::Consumed
            }
        }
    }

    /// Run the NAT on an IPv4 packet. `Ok(true)`: translated; `Ok(false)`: not NAT'd.
    fn nat_step(
        &mut self,
        now: u64,
        from: Side,
        ip: &mut [u8],
        partial: bool,
    ) -> Result<bool, Verdict> {
        // Disjoint borrows: the routing view for the NAT, and the NAT itself.
        let (cfg, lan, up) = (&self.cfg, &self.lan_net, &self.up_net);
        let Some(nat) = self.nat.as_mut() else {
            return Ok(false);
        };
        let v = nat.process(now, from, ip, partial, &|a| side_in(cfg, lan, up, a));
        match v {
            nat::Verdict::Translated => Ok(true),
            nat::Verdict::NotNatted => Ok(false),
            nat::Verdict::Stolen => Err(Verdict::Consumed),
            nat::Verdict::Drop(_) => Err(Verdict::Drop(DropReason::Nat)),
        }
    }

    /// Decrement TTL, resolve the next hop, rewrite the Ethernet header and choose where to send.
    fn next_hop(&mut self, now: u64, frame: &mut [u8], end: usize, fdb: &Fdb) -> Next {
        let dst = match frame
            .get_mut(ETH_HLEN..end)
            .and_then(|b| Ipv4Packet::new_checked(b).ok())
        {
            Some(mut ip) if ip.ttl() > 1 => {
                ip.dec_ttl();
                ip.dst()
            }
            _ => {
                self.counters.drop_malformed += 1;
                return Next::Drop(DropReason::GwMalformed);
            }
        };
        let (nh, wan) = match self.route(dst) {
            Egress::Lan(nh) => (nh, false),
            Egress::Uplink(nh) => (nh, true),
            Egress::Local | Egress::None => {
                self.counters.drop_no_route += 1;
                return Next::Drop(DropReason::GwNoRoute);
            }
        };
        self.counters.routed += 1;
        let table = if wan {
            &self.neigh_wan
        } else {
            &self.neigh_lan
        };
        let Some(n) = table.lookup(nh, now) else {
            return Next::Queue { nh: nh.into(), wan };
        };
        match (wan, self.cfg.uplink.as_ref()) {
            (true, Some(u)) => {
                write_eth(frame, n.mac, u.mac, ethertype::IPV4);
                Next::Out(Target::Port(u.port))
            }
            _ => {
                write_eth(frame, n.mac, self.cfg.mac, ethertype::IPV4);
                Next::Out(fdb.lookup(&n.mac, now).map_or(Target::Lan, Target::Port))
            }
        }
    }

    /// Forward a frame received on `in_port` in place (or queue it for resolution).
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &mut self,
        now: u64,
        in_port: PortId,
        vnet: &[u8],
        frame: &mut [u8],
        end: usize,
        out: &mut Gen,
        fdb: &Fdb,
    ) -> Verdict {
        match self.next_hop(now, frame, end, fdb) {
            Next::Out(Target::Port(p)) => Verdict::Unicast(p),
            Next::Out(_) => Verdict::FloodAll,
            Next::Queue { nh, wan } => {
                self.enqueue(now, in_port, nh, wan, vnet, &frame[..end], out)
            }
            Next::Drop(r) => Verdict::Drop(r),
        }
    }

    /// Resolve generated frames that need routing (fragments, released
    /// fragments). A frame too big for its egress is fragmented again
    /// (the NAT releases held fragments as they arrived).
    pub fn route_gen(&mut self, now: u64, out: &mut Gen, fdb: &Fdb) {
        let mut i = 0;
        while i < out.len() {
            if out.target(i) == Target::Route && self.route_gen6(i, now, out, fdb) {
                i += 1;
                continue;
            }
            if out.target(i) == Target::Route {
                let (vnet, frame) = out.parts_mut(i);
                let end = frame.len();
                let too_big = Ipv4Packet::new_checked(&frame[ETH_HLEN.min(end)..])
                    .ok()
                    .map(|ip| (ip.total_len(), ip.dst(), ip.dont_frag()))
                    .and_then(|(len, dst, df)| {
                        let mtu = self.egress_mtu(self.route(dst));
                        (len > mtu).then_some((mtu, df))
                    });
                if let Some((mtu, df)) = too_big {
                    out.set_target(i, Target::Discard);
                    if df {
                        self.drop(GwDrop::TooBig); // a later fragment: no error about it
                    } else {
                        let mut s = std::mem::take(&mut self.scratch);
                        let (vnet, frame) = out.parts_mut(i);
                        let mut v = [0u8; VNET_HDR_LEN];
                        v.copy_from_slice(&vnet[..VNET_HDR_LEN]);
                        s.clear();
                        s.extend_from_slice(frame);
                        self.fragment_out(&mut v, &mut s, mtu, out);
                        self.scratch = s;
                    }
                    i += 1;
                    continue;
                }
                match self.next_hop(now, frame, end, fdb) {
                    Next::Out(t) => out.set_target(i, t),
                    Next::Drop(_) => out.set_target(i, Target::Discard),
                    Next::Queue { nh, wan } => {
                        let mut v = [0u8; VNET_HDR_LEN];
                        v.copy_from_slice(&vnet[..VNET_HDR_LEN]);
                        let (_, frame) = out.parts_mut(i);
                        let copy = self.park(now, GENERATED, nh, wan, &v, frame);
                        out.set_target(i, Target::Discard);
                        if copy {
                            self.request(now, nh, wan, out);
                        }
                    }
                }
            }
            i += 1;
        }
    }

    /// A frame received on the uplink port.
    pub fn from_uplink(
        &mut self,
        now: u64,
        vnet: &mut [u8],
        frame: &mut [u8],
        out: &mut Gen,
        fdb: &Fdb,
    ) -> Verdict {
        let Some(up) = self.cfg.uplink else {
            self.counters.drop_not_for_us += 1;
            return Verdict::Drop(DropReason::GwNotForUs);
        };
        let Ok(eth) = EthernetFrame::new_checked(&*frame) else {
            return Verdict::Drop(DropReason::Runt);
        };
        let (dst_mac, src_mac, et) = (eth.dst(), eth.src(), eth.ethertype());
        if et == ethertype::IPV6 {
            return self.uplink_ipv6(now, vnet, frame, out, fdb);
        }
        // Multicast and broadcast other than ARP (IPv6 router solicitations,
        // MLD, mDNS, ...): the external network's noise, which a host ignores.
        if dst_mac.0[0] & 1 == 1 && et != ethertype::ARP {
            self.counters.ignored_multicast += 1;
            return Verdict::Consumed;
        }
        if et == ethertype::ARP {
            let Ok(a) = ArpPacket::new_checked(&frame[ETH_HLEN..]) else {
                return self.drop(GwDrop::Malformed);
            };
            let (op, sha, spa, tpa) = (a.op(), a.sha(), a.spa(), a.tpa());
            if tpa != up.ip {
                return Verdict::Consumed; // someone else's ARP on the external network
            }
            if !spa.is_unspecified() && spa != up.ip {
                let how = if op == arp_op::REPLY && self.solicited(spa.into(), now) {
                    Heard::Reply
                } else {
                    Heard::Hint
                };
                if self.learn_neigh(true, spa, sha, up.port, now, how) {
                    self.release(now, spa.into(), true, out, fdb);
                }
            }
            if op == arp_op::REQUEST && !spa.is_unspecified() {
                let Ok(mut eth) = EthernetFrame::new_checked(&mut *frame) else {
                    return Verdict::Drop(DropReason::Runt);
                };
                eth.set_dst(sha);
                eth.set_src(up.mac);
                let Ok(mut a) = ArpPacket::new_checked(eth.payload_mut()) else {
                    return self.drop(GwDrop::Malformed);
                };
                a.make_reply(up.mac);
                self.counters.arp_replies += 1;
                return Verdict::Reply;
            }
            return Verdict::Consumed;
        }
        if dst_mac != up.mac {
            self.counters.drop_not_for_us += 1;
            return Verdict::Drop(DropReason::GwNotForUs);
        }
        if et != ethertype::IPV4 {
            return self.drop(GwDrop::NotIpv4);
        }
        let gso = is_gso(vnet);
        let Some(h) = parse_ip(&frame[ETH_HLEN..], gso) else {
            return self.drop(GwDrop::Malformed);
        };
        let end = ETH_HLEN + h.total;
        if h.dst != up.ip {
            self.counters.drop_not_for_us += 1;
            return Verdict::Drop(DropReason::GwNotForUs);
        }
        if !self.uplink_source_ok(h.src) {
            return self.drop(GwDrop::SpoofedSrc);
        }
        let err_to = Target::Port(up.port);
        if h.ttl <= 1 && !h.echo_request {
            let q = &frame[ETH_HLEN..end];
            let ty = icmp_type::TIME_EXCEEDED;
            self.icmp_error(now, out, err_to, src_mac, up.mac, up.ip, q, ty, 0, 0);
            self.counters.time_exceeded += 1;
            return Verdict::Consumed;
        }
        let seg = seg_len(vnet, &frame[ETH_HLEN..end], h.hl, h.proto);
        let quote = (seg > self.min_mtu()).then(|| Quote::of(&frame[ETH_HLEN..end]));
        let partial = vnet[0] & VNET_F_NEEDS_CSUM != 0;
        match self.nat_step(now, Side::Wan, &mut frame[ETH_HLEN..end], partial) {
            Ok(true) => {}
            Ok(false) => return self.local(now, frame, up.port, src_mac, out, up.mac, up.ip),
            Err(v) => return v,
        }
        let dst = Ipv4Packet::new_checked(&frame[ETH_HLEN..end]).map_or(h.dst, |p| p.dst());
        let egress = self.route(dst);
        if matches!(egress, Egress::None | Egress::Local) {
            return self.drop(GwDrop::NoRoute);
        }
        let mtu = self.egress_mtu(egress);
        match fit(seg, mtu, h.df, gso) {
            Fit::Fits => self.forward(now, up.port, vnet, frame, end, out, fdb),
            Fit::Fragment => self.fragment_out(vnet, &mut frame[..end], mtu, out),
            Fit::GsoTooBig if can_segment(vnet, h.proto) => {
                self.segment_out(&mut frame[..end], mtu, out)
            }
            Fit::GsoTooBig => self.drop(GwDrop::GsoTooBig),
            Fit::FragNeeded => {
                // Back to the sender, about what it sent (before DNAT).
                if let Some(q) = &quote {
                    let (ty, m) = (icmp_type::DEST_UNREACH, mtu.min(0xffff) as u16);
                    self.icmp_error(
                        now,
                        out,
                        err_to,
                        src_mac,
                        up.mac,
                        up.ip,
                        q.bytes(),
                        ty,
                        4,
                        m,
                    );
                }
                self.counters.frag_needed += 1;
                Verdict::Consumed
            }
        }
    }

    /// Hand fragments the NAT released (their first fragment arrived) to `out` for routing.
    pub fn flush_released(&mut self, out: &mut Gen) {
        self.flush_released6(out);
        let Some(nat) = self.nat.as_mut() else { return };
        if !nat.has_released() {
            return;
        }
        let mut full = 0;
        nat.take_released(|pkt| {
            let ok = out.push(Target::Route, |b| {
                b[..VNET_HDR_LEN].fill(0);
                write_eth(
                    &mut b[VNET_HDR_LEN..],
                    MacAddr::default(),
                    MacAddr::default(),
                    ethertype::IPV4,
                );
                b[VNET_HDR_LEN + ETH_HLEN..VNET_HDR_LEN + ETH_HLEN + pkt.len()]
                    .copy_from_slice(pkt);
                VNET_HDR_LEN + ETH_HLEN + pkt.len()
            });
            if !ok {
                full += 1;
            }
        });
        self.counters.drop_gen_full += full;
    }

    /// Age caches, expire NAT state, drop packets whose neighbour never
    /// answered, forget requests older than 3 s (`RESOLVE_WAIT_MS`). Returns
    /// false when NAT expiry has work left ([`Gateway::expire_more`]).
    pub fn expire(&mut self, now: u64) -> bool {
        let done = self.expire_more(now);
        self.neigh_lan.sweep(now);
        self.neigh_wan.sweep(now);
        if let Some(v6) = &mut self.v6 {
            v6.neigh_lan.sweep(now);
            v6.neigh_wan.sweep(now);
        }
        self.last_req
            .retain(|_, t| now.saturating_sub(*t) < RESOLVE_WAIT_MS);
        self.req6 = self.last_req.keys().filter(|a| a.is_ipv6()).count();
        for p in &mut self.pending {
            if p.used && now.saturating_sub(p.since) >= RESOLVE_WAIT_MS {
                p.used = false;
                self.counters.drop_unresolved += 1;
            }
        }
        done
    }

    /// Go on removing the NAT's expired entries, at most [`EXPIRE_BUDGET`]
    /// of its timer wheel's entries per call: true when nothing due is left.
    pub fn expire_more(&mut self, now: u64) -> bool {
        let v4 = self
            .nat
            .as_mut()
            .is_none_or(|n| n.expire_some(now, EXPIRE_BUDGET));
        let v6 = self
            .v6
            .as_mut()
            .and_then(|v| v.nat.as_mut())
            .is_none_or(|n| n.expire_some(now, EXPIRE_BUDGET));
        v4 && v6
    }
}

/// NAT entries the expiry visits per call between batches (about a
/// millisecond): a flood's entries that time out together are removed over
/// several batches, not in one pause.
pub const EXPIRE_BUDGET: usize = 2048;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tests_fixtures::{arp_reply, arp_request};

    pub(super) const GW_MAC: MacAddr = MacAddr([2, 0x76, 0x73, 0, 0, 5]);
    pub(super) const UP_MAC: MacAddr = MacAddr([2, 0x76, 0x73, 0, 0, 1]);
    pub(super) const RED: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    pub(super) const WAN: MacAddr = MacAddr([2, 0, 0, 0, 0, 0x10]);
    const ROUTER9: MacAddr = MacAddr([2, 0, 0, 0, 0, 9]);

    fn gw() -> Gateway {
        gw_with(1500, 64)
    }

    /// The seed topology's gateway (LAN 192.168.15.0/24, uplink
    /// 203.0.113.0/24 of MTU 1400, static route 10.9/16 via .9), with a LAN
    /// MTU, a neighbour cache bound, and DNAT of UDP 203.0.113.1:5353 to blue.
    fn net6(a: &str, prefix: u8) -> nat::Ipv6Net {
        nat::Ipv6Net {
            addr: a.parse().unwrap(),
            prefix,
        }
    }

    pub(super) fn gw_with(lan_mtu: u32, neigh_max: usize) -> Gateway {
        let mut nat = NatConfig::new(Ipv4Addr::new(203, 0, 113, 1));
        nat.dnat = vec![nat::DnatRule {
            proto: proto::UDP,
            ports: (5353, 5353),
            to_addr: Ipv4Addr::new(192, 168, 15, 2),
            to_port: 5353,
        }];
        nat.masquerade = vec![Ipv4Net {
            addr: Ipv4Addr::new(192, 168, 15, 0),
            prefix: 24,
        }];
        nat.alloc = nat::PortAlloc::Sequential;
        Gateway::new(GatewayConfig {
            ip: Ipv4Addr::new(192, 168, 15, 5),
            prefix: 24,
            mac: GW_MAC,
            lan_mtu,
            routes: vec![(
                Ipv4Net {
                    addr: Ipv4Addr::new(10, 9, 0, 0),
                    prefix: 16,
                },
                Ipv4Addr::new(192, 168, 15, 9),
            )],
            uplink: Some(UplinkConfig {
                port: 2,
                ip: Ipv4Addr::new(203, 0, 113, 1),
                prefix: 24,
                mac: UP_MAC,
                next_hop: None,
                mtu: 1400,
            }),
            nat: Some(nat),
            neigh_max,
            ageing_ms: 300_000,
            queue_slots: 16,
            v6: Some(Gw6Config {
                lan: vec![net6("fd00:15::5", 64)],
                ra: true,
                uplink: Some(net6("2001:db8:113::1", 64)),
                next_hop: None,
                nat: None,
                routes: vec![(net6("fd00:99::", 64), "fd00:15::9".parse().unwrap())],
                npt: Vec::new(),
            }),
        })
    }

    /// Ethernet + IPv4 + ICMP echo request of `size` IP bytes, built after RFC 791/792.
    fn ping(
        dst_mac: MacAddr,
        src: [u8; 4],
        dst: [u8; 4],
        ttl: u8,
        size: usize,
        df: bool,
    ) -> Vec<u8> {
        let mut f = vec![0u8; ETH_HLEN + size];
        write_eth(&mut f, dst_mac, RED, ethertype::IPV4);
        let ip = &mut f[ETH_HLEN..];
        ip[..12].copy_from_slice(&[
            0x45,
            0,
            (size >> 8) as u8,
            size as u8,
            0x12,
            0x34,
            if df { 0x40 } else { 0 },
            0,
            ttl,
            1,
            0,
            0,
        ]);
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        let c = checksum::checksum(&ip[..20]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ip[20] = 8;
        ip[24..26].copy_from_slice(&0x4242u16.to_be_bytes());
        let c = checksum::checksum(&ip[20..]);
        ip[22..24].copy_from_slice(&c.to_be_bytes());
        f
    }

    fn run(g: &mut Gateway, port: PortId, f: &mut [u8], out: &mut Gen) -> Verdict {
        let fdb = Fdb::new(4, 64, 64, 300_000);
        let mut vnet = [0u8; VNET_HDR_LEN];
        if Some(port) == g.uplink_port() {
            g.from_uplink(0, &mut vnet, f, out, &fdb)
        } else {
            g.from_lan(0, port, &mut vnet, f, out, &fdb)
        }
    }

    fn icmp_of(frame: &[u8]) -> (Ipv4Addr, Ipv4Addr, u8, u8, u16) {
        let ip = Ipv4Packet::new_checked(&frame[ETH_HLEN..]).unwrap();
        assert!(ip.checksum_ok());
        let l4 = ip.payload();
        assert_eq!(checksum::checksum(l4), 0, "ICMP checksum");
        (
            ip.src(),
            ip.dst(),
            l4[0],
            l4[1],
            u16::from_be_bytes([l4[6], l4[7]]),
        )
    }

    #[test]
    fn answers_arp_and_ping_for_its_address() {
        let mut g = gw();
        let mut out = Gen::new();
        let fdb = Fdb::new(4, 64, 64, 300_000);
        let mut req = arp_request(RED, [192, 168, 15, 1], [192, 168, 15, 5]);
        assert_eq!(
            g.lan_arp(0, 0, &mut req, &mut out, &fdb),
            Some(Verdict::Reply)
        );
        let a = ArpPacket::new_checked(&req[ETH_HLEN..]).unwrap();
        assert_eq!((a.op(), a.sha(), a.tha()), (arp_op::REPLY, GW_MAC, RED));
        let mut p = ping(GW_MAC, [192, 168, 15, 1], [192, 168, 15, 5], 64, 84, true);
        assert_eq!(run(&mut g, 0, &mut p, &mut out), Verdict::Reply);
        let (s, d, ty, _, _) = icmp_of(&p);
        assert_eq!(
            (s, d, ty),
            (
                Ipv4Addr::new(192, 168, 15, 5),
                Ipv4Addr::new(192, 168, 15, 1),
                0
            )
        );
        assert_eq!(EthernetFrame::new_checked(&p[..]).unwrap().dst(), RED);
    }

    #[test]
    fn tcp_to_the_gateway_gets_a_reset_and_udp_port_unreachable() {
        let mut g = gw();
        let mut out = Gen::new();
        let to_gw = |p, l4: &[u8]| {
            ipv4(
                GW_MAC,
                [192, 168, 15, 1],
                [192, 168, 15, 5],
                64,
                p,
                true,
                l4,
            )
        };
        // A SYN (seq 1000) to 192.168.15.5:80: RST+ACK with ack 1001 from port 80.
        let mut syn = [0u8; 20];
        syn[0..2].copy_from_slice(&40000u16.to_be_bytes());
        syn[2..4].copy_from_slice(&80u16.to_be_bytes());
        syn[4..8].copy_from_slice(&1000u32.to_be_bytes());
        syn[12] = 0x50;
        syn[13] = 0x02;
        let mut f = to_gw(proto::TCP, &syn);
        assert_eq!(run(&mut g, 0, &mut f, &mut out), Verdict::Consumed);
        assert_eq!((out.len(), out.target(0)), (1, Target::Port(0)));
        let (_, r) = out.parts_mut(0);
        assert_eq!(EthernetFrame::new_checked(&r[..]).unwrap().dst(), RED);
        let ip = Ipv4Packet::new_checked(&r[ETH_HLEN..]).unwrap();
        assert!(ip.checksum_ok());
        assert_eq!(
            (ip.src(), ip.dst(), ip.protocol()),
            (
                Ipv4Addr::new(192, 168, 15, 5),
                Ipv4Addr::new(192, 168, 15, 1),
                proto::TCP
            )
        );
        let t = ip.payload();
        let ph = checksum::pseudo_header([192, 168, 15, 5], [192, 168, 15, 1], proto::TCP, 20);
        assert_eq!(
            checksum::fold(ph + checksum::sum(t)),
            0xffff,
            "TCP checksum"
        );
        assert_eq!(u16::from_be_bytes([t[0], t[1]]), 80);
        assert_eq!(u16::from_be_bytes([t[2], t[3]]), 40000);
        assert_eq!(u32::from_be_bytes([t[4], t[5], t[6], t[7]]), 0);
        assert_eq!(u32::from_be_bytes([t[8], t[9], t[10], t[11]]), 1001);
        assert_eq!(t[13], 0x14, "RST+ACK");
        assert_eq!(g.counters.tcp_resets, 1);
        // A segment with ACK (ack 7777): RST with seq 7777. A RST is never answered.
        out.clear();
        syn[8..12].copy_from_slice(&7777u32.to_be_bytes());
        syn[13] = 0x10;
        let mut f = to_gw(proto::TCP, &syn);
        assert_eq!(run(&mut g, 0, &mut f, &mut out), Verdict::Consumed);
        let (_, r) = out.parts_mut(0);
        let t = &r[ETH_HLEN + 20..];
        assert_eq!(
            (u32::from_be_bytes([t[4], t[5], t[6], t[7]]), t[13]),
            (7777, 0x04)
        );
        out.clear();
        syn[13] = 0x04;
        let mut f = to_gw(proto::TCP, &syn);
        assert_eq!(
            run(&mut g, 0, &mut f, &mut out),
            Verdict::Drop(DropReason::GwLocal)
        );
        assert_eq!(out.len(), 0);
        // UDP: port unreachable.
        let mut f = to_gw(proto::UDP, &[0, 1, 0, 2, 0, 8, 0, 0]);
        assert_eq!(run(&mut g, 0, &mut f, &mut out), Verdict::Consumed);
        let (_, r) = out.parts_mut(0);
        assert_eq!(icmp_of(r).2..=icmp_of(r).3, 3..=3);
        // Resets share the ICMP error rate limit: at most a burst per destination.
        out.clear();
        syn[13] = 0x02;
        let mut sent = 0;
        for _ in 0..100 {
            let mut f = to_gw(proto::TCP, &syn);
            if run(&mut g, 0, &mut f, &mut out) == Verdict::Consumed {
                sent += 1;
            }
            out.clear();
        }
        assert!(sent < 20, "{sent} resets at one instant");
        assert!(g.counters.icmp_rate_limited > 0);
    }

    #[test]
    fn ttl_one_gets_time_exceeded_from_the_gateway() {
        let mut g = gw();
        let mut out = Gen::new();
        let mut p = ping(GW_MAC, [192, 168, 15, 1], [203, 0, 113, 10], 1, 84, true);
        assert_eq!(run(&mut g, 0, &mut p, &mut out), Verdict::Consumed);
        assert_eq!(out.len(), 1);
        assert_eq!(out.target(0), Target::Port(0));
        let (_, f) = out.parts_mut(0);
        let (s, d, ty, code, _) = icmp_of(f);
        assert_eq!(
            (s, d, ty, code),
            (
                Ipv4Addr::new(192, 168, 15, 5),
                Ipv4Addr::new(192, 168, 15, 1),
                11,
                0
            )
        );
        // The quote is the packet as red sent it.
        assert_eq!(
            &f[ETH_HLEN + 28..ETH_HLEN + 28 + 20],
            &p[ETH_HLEN..ETH_HLEN + 20]
        );
    }

    #[test]
    fn df_too_big_gets_frag_needed_and_no_df_is_fragmented() {
        let mut g = gw();
        let mut out = Gen::new();
        g.neigh_wan.learn(Ipv4Addr::new(203, 0, 113, 10), WAN, 2, 0);
        let mut p = ping(GW_MAC, [192, 168, 15, 1], [203, 0, 113, 10], 64, 1500, true);
        assert_eq!(run(&mut g, 0, &mut p, &mut out), Verdict::Consumed);
        let (_, f) = out.parts_mut(0);
        let (_, _, ty, code, mtu) = icmp_of(f);
        assert_eq!((ty, code, mtu), (3, 4, 1400));
        let mut out = Gen::new();
        let mut p = ping(
            GW_MAC,
            [192, 168, 15, 1],
            [203, 0, 113, 10],
            64,
            1500,
            false,
        );
        assert_eq!(run(&mut g, 0, &mut p, &mut out), Verdict::Consumed);
        let fdb = Fdb::new(4, 64, 64, 300_000);
        g.route_gen(0, &mut out, &fdb);
        assert_eq!(out.len(), 2, "two fragments");
        let mut total = 0;
        for i in 0..2 {
            assert_eq!(out.target(i), Target::Port(2));
            let (_, f) = out.parts_mut(i);
            let ip = Ipv4Packet::new_checked(&f[ETH_HLEN..]).unwrap();
            assert!(ip.checksum_ok() && ip.total_len() <= 1400);
            assert_eq!(
                (ip.src(), ip.ttl()),
                (Ipv4Addr::new(203, 0, 113, 1), 63),
                "translated and TTL-1"
            );
            assert_eq!(EthernetFrame::new_checked(&f[..]).unwrap().dst(), WAN);
            total += ip.payload().len();
        }
        assert_eq!(total, 1480);
    }

    #[test]
    fn no_route_gets_net_unreachable() {
        let mut g = gw();
        let mut out = Gen::new();
        let mut p = ping(GW_MAC, [192, 168, 15, 1], [198, 51, 100, 7], 64, 84, true);
        assert_eq!(run(&mut g, 0, &mut p, &mut out), Verdict::Consumed);
        let (_, f) = out.parts_mut(0);
        assert_eq!(icmp_of(f).2, 3);
        assert_eq!(icmp_of(f).3, 0);
    }

    #[test]
    fn unresolved_next_hop_queues_then_releases_on_arp_reply() {
        let mut g = gw();
        let mut out = Gen::new();
        let mut p = ping(GW_MAC, [192, 168, 15, 1], [203, 0, 113, 10], 64, 84, true);
        assert_eq!(run(&mut g, 0, &mut p, &mut out), Verdict::Consumed);
        assert_eq!(out.len(), 1, "one ARP request");
        assert_eq!(out.target(0), Target::Port(2));
        let (_, req) = out.parts_mut(0);
        let a = ArpPacket::new_checked(&req[ETH_HLEN..]).unwrap();
        assert_eq!(
            (a.op(), a.sha(), a.spa(), a.tpa()),
            (
                arp_op::REQUEST,
                UP_MAC,
                Ipv4Addr::new(203, 0, 113, 1),
                Ipv4Addr::new(203, 0, 113, 10)
            )
        );
        // A second packet waits too; no second request within a second.
        let mut out = Gen::new();
        let mut p2 = ping(GW_MAC, [192, 168, 15, 1], [203, 0, 113, 10], 64, 84, true);
        assert_eq!(run(&mut g, 0, &mut p2, &mut out), Verdict::Consumed);
        assert!(out.is_empty());
        // The reply releases both, translated and addressed to the neighbour.
        let mut out = Gen::new();
        let mut rep = arp_reply(WAN, [203, 0, 113, 10], UP_MAC, [203, 0, 113, 1]);
        assert_eq!(run(&mut g, 2, &mut rep, &mut out), Verdict::Consumed);
        assert_eq!(out.len(), 2);
        for i in 0..2 {
            let (_, f) = out.parts_mut(i);
            assert_eq!(EthernetFrame::new_checked(&f[..]).unwrap().dst(), WAN);
            assert_eq!(
                Ipv4Packet::new_checked(&f[ETH_HLEN..]).unwrap().src(),
                Ipv4Addr::new(203, 0, 113, 1)
            );
        }
    }

    #[test]
    fn static_route_goes_via_its_next_hop() {
        let mut g = gw();
        g.neigh_lan
            .learn(Ipv4Addr::new(192, 168, 15, 9), ROUTER9, 1, 0);
        let mut fdb = Fdb::new(4, 64, 64, 300_000);
        fdb.learn(ROUTER9, 1, 0);
        let mut out = Gen::new();
        let mut vnet = [0u8; VNET_HDR_LEN];
        let mut p = ping(GW_MAC, [192, 168, 15, 1], [10, 9, 1, 1], 64, 84, true);
        assert_eq!(
            g.from_lan(0, 0, &mut vnet, &mut p, &mut out, &fdb),
            Verdict::Unicast(1)
        );
        let eth = EthernetFrame::new_checked(&p[..]).unwrap();
        assert_eq!((eth.dst(), eth.src()), (ROUTER9, GW_MAC));
        let ip = Ipv4Packet::new_checked(&p[ETH_HLEN..]).unwrap();
        assert_eq!(
            (ip.src(), ip.ttl()),
            (Ipv4Addr::new(192, 168, 15, 1), 63),
            "LAN routing: no NAT"
        );
        assert!(ip.checksum_ok());
    }

    #[test]
    fn uplink_ignores_what_is_not_ours() {
        let mut g = gw();
        let mut out = Gen::new();
        let mut p = ping(UP_MAC, [203, 0, 113, 10], [203, 0, 113, 99], 64, 84, true);
        assert_eq!(
            run(&mut g, 2, &mut p, &mut out),
            Verdict::Drop(DropReason::GwNotForUs)
        );
        let mut p = ping(UP_MAC, [203, 0, 113, 10], [203, 0, 113, 1], 64, 84, true);
        assert_eq!(
            run(&mut g, 2, &mut p, &mut out),
            Verdict::Reply,
            "ping to our external address"
        );
        let mut short = vec![0u8; 20];
        assert_eq!(
            run(&mut g, 2, &mut short, &mut out),
            Verdict::Drop(DropReason::GwNotForUs)
        );
    }

    #[test]
    fn uplink_multicast_noise_is_ignored_not_dropped() {
        let mut g = gw();
        let mut out = Gen::new();
        // An IPv6 router solicitation (to 33:33:00:00:00:02) and an IPv4 broadcast.
        let mut rs = vec![0u8; 14 + 48];
        rs[..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 2]);
        rs[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        rs[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(run(&mut g, 2, &mut rs, &mut out), Verdict::Consumed);
        let mut bc = ping(
            MacAddr([0xff; 6]),
            [203, 0, 113, 10],
            [203, 0, 113, 255],
            64,
            84,
            true,
        );
        assert_eq!(run(&mut g, 2, &mut bc, &mut out), Verdict::Consumed);
        assert_eq!(g.counters.ignored_multicast, 2);
        assert_eq!(g.counters.drop_not_for_us, 0);
        // Unicast to another MAC is a drop, counted by the gateway too.
        let mut other = ping(
            MacAddr([2, 0, 0, 0, 0, 0x77]),
            [203, 0, 113, 10],
            [203, 0, 113, 1],
            64,
            84,
            true,
        );
        assert_eq!(
            run(&mut g, 2, &mut other, &mut out),
            Verdict::Drop(DropReason::GwNotForUs)
        );
        assert_eq!(g.counters.drop_not_for_us, 1);
    }

    const BLUE: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);

    /// Ethernet + IPv4 (RFC 791, 20-byte header) around `l4`, header checksum filled.
    fn ipv4(
        dst_mac: MacAddr,
        src: [u8; 4],
        dst: [u8; 4],
        ttl: u8,
        p: u8,
        df: bool,
        l4: &[u8],
    ) -> Vec<u8> {
        let size = 20 + l4.len();
        let mut f = vec![0u8; ETH_HLEN + size];
        write_eth(&mut f, dst_mac, RED, ethertype::IPV4);
        let ip = &mut f[ETH_HLEN..];
        ip[..12].copy_from_slice(&[
            0x45,
            0,
            (size >> 8) as u8,
            size as u8,
            0x56,
            0x78,
            if df { 0x40 } else { 0 },
            0,
            ttl,
            p,
            0,
            0,
        ]);
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        let c = checksum::checksum(&ip[..20]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ip[20..].copy_from_slice(l4);
        f
    }

    /// A UDP datagram (RFC 768) with a counting payload. With `partial`, the
    /// checksum field holds the uncomplemented pseudo-header seed, as a Linux
    /// sender with tx checksum offload hands it over (CHECKSUM_PARTIAL),
    /// and the vnet header asks for it (csum_start 34, csum_offset 6).
    #[allow(clippy::too_many_arguments)]
    fn udp(
        dst_mac: MacAddr,
        src: [u8; 4],
        sport: u16,
        dst: [u8; 4],
        dport: u16,
        len: usize,
        df: bool,
        partial: bool,
    ) -> ([u8; VNET_HDR_LEN], Vec<u8>) {
        let ul = 8 + len;
        let mut l4 = vec![0u8; ul];
        l4[0..2].copy_from_slice(&sport.to_be_bytes());
        l4[2..4].copy_from_slice(&dport.to_be_bytes());
        l4[4..6].copy_from_slice(&(ul as u16).to_be_bytes());
        for (i, b) in l4[8..].iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        let seed = checksum::fold(checksum::pseudo_header(src, dst, proto::UDP, ul as u16));
        let mut vnet = [0u8; VNET_HDR_LEN];
        if partial {
            l4[6..8].copy_from_slice(&seed.to_be_bytes());
            vnet[0] = VNET_F_NEEDS_CSUM;
            vnet[6..8].copy_from_slice(&34u16.to_le_bytes());
            vnet[8..10].copy_from_slice(&6u16.to_le_bytes());
        } else {
            let c = !checksum::fold(u32::from(seed) + checksum::sum(&l4));
            l4[6..8].copy_from_slice(&c.to_be_bytes());
        }
        (vnet, ipv4(dst_mac, src, dst, 64, proto::UDP, df, &l4))
    }

    /// Whether the UDP/TCP checksum of a whole IPv4 packet verifies.
    fn l4_ok(ip: &[u8]) -> bool {
        let p = Ipv4Packet::new_checked(ip).unwrap();
        let l4 = p.payload();
        let ph = checksum::pseudo_header(
            p.src().octets(),
            p.dst().octets(),
            p.protocol(),
            l4.len() as u16,
        );
        checksum::fold(ph + checksum::sum(l4)) == 0xffff
    }

    /// The IPv4 packets in `out` for `t`, reassembled by offset (RFC 791).
    fn reassemble(out: &mut Gen, t: Target) -> (Vec<u8>, usize) {
        let mut parts = Vec::new();
        let mut hdr = Vec::new();
        for i in 0..out.len() {
            if out.target(i) != t {
                continue;
            }
            let (_, f) = out.parts_mut(i);
            let ip = Ipv4Packet::new_checked(&f[ETH_HLEN..]).unwrap();
            assert!(ip.checksum_ok());
            assert!(!ip.dont_frag(), "a fragment carries DF");
            if ip.frag_offset() == 0 {
                hdr = f[ETH_HLEN..ETH_HLEN + ip.header_len()].to_vec();
            }
            parts.push((ip.frag_offset(), ip.more_frags(), ip.payload().to_vec()));
        }
        parts.sort_by_key(|p| p.0);
        let mut data = Vec::new();
        for (off, _, d) in &parts {
            assert_eq!(*off, data.len(), "contiguous");
            data.extend_from_slice(d);
        }
        assert!(!parts.last().unwrap().1, "last fragment without MF");
        let n = parts.len();
        let mut ip = hdr;
        let total = ip.len() + data.len();
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[6] = 0;
        ip[7] = 0;
        ip.extend_from_slice(&data);
        (ip, n)
    }

    fn fdb() -> Fdb {
        Fdb::new(4, 64, 64, 300_000)
    }

    #[test]
    fn fragments_complete_an_offloaded_checksum_and_never_carry_df() {
        // 1,450 bytes of UDP payload: fits the LAN (1500), not the uplink
        // (1400), as in the issue; and a 4,000-byte datagram in one frame.
        for (len, frags) in [(1450, 2), (4000, 3)] {
            let mut g = gw();
            g.neigh_wan
                .confirm(Ipv4Addr::new(203, 0, 113, 10), WAN, 2, 0);
            let (mut vnet, mut f) = udp(
                GW_MAC,
                [192, 168, 15, 1],
                4000,
                [203, 0, 113, 10],
                9,
                len,
                false,
                true,
            );
            let mut out = Gen::new();
            assert_eq!(
                g.from_lan(0, 0, &mut vnet, &mut f, &mut out, &fdb()),
                Verdict::Consumed
            );
            g.route_gen(0, &mut out, &fdb());
            let (ip, n) = reassemble(&mut out, Target::Port(2));
            assert_eq!(n, frags, "{len}");
            assert_eq!(ip.len(), 20 + 8 + len);
            assert_eq!(&ip[12..16], &[203, 0, 113, 1], "translated");
            assert!(l4_ok(&ip), "UDP checksum complete after reassembly");
            assert_eq!(g.counters.fragmented, frags as u64);
        }
    }

    #[test]
    fn a_bad_checksum_offset_is_a_counted_drop() {
        let mut g = gw();
        let (mut vnet, mut f) = udp(
            GW_MAC,
            [192, 168, 15, 1],
            4000,
            [203, 0, 113, 10],
            9,
            2000,
            false,
            true,
        );
        vnet[6..8].copy_from_slice(&0xfff0u16.to_le_bytes()); // csum_start beyond the packet
        let mut out = Gen::new();
        assert_eq!(
            g.from_lan(0, 0, &mut vnet, &mut f, &mut out, &fdb()),
            Verdict::Drop(DropReason::GwMalformed)
        );
        assert!(out.is_empty());
        assert_eq!(g.counters.drop_bad_vnet, 1);
    }

    #[test]
    fn inbound_df_too_big_gets_frag_needed_quoting_the_packet_as_sent() {
        let mut g = gw_with(1300, 64);
        let mut out = Gen::new();
        let (mut vnet, mut f) = udp(
            UP_MAC,
            [203, 0, 113, 10],
            777,
            [203, 0, 113, 1],
            5353,
            1372,
            true,
            false,
        );
        let sent = f.clone();
        assert_eq!(
            g.from_uplink(0, &mut vnet, &mut f, &mut out, &fdb()),
            Verdict::Consumed
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out.target(0), Target::Port(2));
        let (_, e) = out.parts_mut(0);
        let (s, d, ty, code, mtu) = icmp_of(e);
        assert_eq!(
            (s, d, ty, code, mtu),
            (
                Ipv4Addr::new(203, 0, 113, 1),
                Ipv4Addr::new(203, 0, 113, 10),
                3,
                4,
                1300
            )
        );
        assert_eq!(EthernetFrame::new_checked(&e[..]).unwrap().dst(), RED);
        // The quote is the packet before DNAT: to 203.0.113.1:5353.
        assert_eq!(
            &e[ETH_HLEN + 28..ETH_HLEN + 28 + 28],
            &sent[ETH_HLEN..ETH_HLEN + 28]
        );
        assert_eq!(g.counters.frag_needed, 1);
    }

    #[test]
    fn inbound_without_df_is_fragmented_for_the_lan() {
        let mut g = gw_with(1300, 64);
        g.neigh_lan
            .confirm(Ipv4Addr::new(192, 168, 15, 2), BLUE, 1, 0);
        let mut fdb = fdb();
        fdb.learn(BLUE, 1, 0);
        let mut out = Gen::new();
        let (mut vnet, mut f) = udp(
            UP_MAC,
            [203, 0, 113, 10],
            777,
            [203, 0, 113, 1],
            5353,
            1372,
            false,
            false,
        );
        assert_eq!(
            g.from_uplink(0, &mut vnet, &mut f, &mut out, &fdb),
            Verdict::Consumed
        );
        g.route_gen(0, &mut out, &fdb);
        let (ip, n) = reassemble(&mut out, Target::Port(1));
        assert_eq!(n, 2);
        assert_eq!(&ip[16..20], &[192, 168, 15, 2], "DNAT'd");
        assert!(l4_ok(&ip));
    }

    /// The fuzz finding: LAN → 203.0.113.1 (DNAT hairpin) was forwarded
    /// whole at 1,600 bytes onto a 1,400-byte path.
    #[test]
    fn hairpin_checks_the_mtu() {
        let mut g = gw_with(1400, 64);
        let mut out = Gen::new();
        let (mut vnet, mut f) = udp(
            GW_MAC,
            [192, 168, 15, 1],
            4000,
            [203, 0, 113, 1],
            5353,
            1558,
            true,
            false,
        );
        assert_eq!(f.len(), ETH_HLEN + 1586);
        let sent = f.clone();
        assert_eq!(
            g.from_lan(0, 0, &mut vnet, &mut f, &mut out, &fdb()),
            Verdict::Consumed
        );
        assert_eq!(out.len(), 1);
        let (_, e) = out.parts_mut(0);
        let (s, d, ty, code, mtu) = icmp_of(e);
        assert_eq!(
            (s, d, ty, code, mtu),
            (
                Ipv4Addr::new(192, 168, 15, 5),
                Ipv4Addr::new(192, 168, 15, 1),
                3,
                4,
                1400
            )
        );
        assert_eq!(
            &e[ETH_HLEN + 28..ETH_HLEN + 28 + 28],
            &sent[ETH_HLEN..ETH_HLEN + 28],
            "pre-NAT quote"
        );
        // Without DF: fragments, none bigger than the path.
        g.neigh_lan
            .confirm(Ipv4Addr::new(192, 168, 15, 2), BLUE, 1, 0);
        let mut fdb = fdb();
        fdb.learn(BLUE, 1, 0);
        let mut out = Gen::new();
        let (mut vnet, mut f) = udp(
            GW_MAC,
            [192, 168, 15, 1],
            4000,
            [203, 0, 113, 1],
            5353,
            1558,
            false,
            false,
        );
        assert_eq!(
            g.from_lan(0, 0, &mut vnet, &mut f, &mut out, &fdb),
            Verdict::Consumed
        );
        g.route_gen(0, &mut out, &fdb);
        for i in 0..out.len() {
            let (_, f) = out.parts_mut(i);
            assert!(f.len() - ETH_HLEN <= 1400);
        }
        let (ip, n) = reassemble(&mut out, Target::Port(1));
        assert_eq!(n, 2);
        assert_eq!(&ip[16..20], &[192, 168, 15, 2]);
        assert!(l4_ok(&ip));
    }

    #[test]
    fn hairpin_ttl_is_checked_before_nat() {
        let mut g = gw();
        let mut out = Gen::new();
        let (mut vnet, mut f) = udp(
            GW_MAC,
            [192, 168, 15, 1],
            4000,
            [203, 0, 113, 1],
            5353,
            20,
            false,
            false,
        );
        f[ETH_HLEN + 8] = 1;
        f[ETH_HLEN + 10..ETH_HLEN + 12].fill(0);
        let c = checksum::checksum(&f[ETH_HLEN..ETH_HLEN + 20]);
        f[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&c.to_be_bytes());
        let sent = f.clone();
        assert_eq!(
            g.from_lan(0, 0, &mut vnet, &mut f, &mut out, &fdb()),
            Verdict::Consumed
        );
        let (_, e) = out.parts_mut(0);
        assert_eq!(icmp_of(e).2, icmp_type::TIME_EXCEEDED);
        assert_eq!(
            &e[ETH_HLEN + 28..ETH_HLEN + 28 + 28],
            &sent[ETH_HLEN..ETH_HLEN + 28]
        );
        assert_eq!(
            g.nat.as_ref().unwrap().len(),
            0,
            "no NAT state for an expired packet"
        );
    }

    #[test]
    fn gso_frames_that_do_not_fit_are_segmented_refused_or_get_frag_needed() {
        // Routed on the LAN (static route 10.9/16 via .9, no NAT), LAN MTU 1300.
        let mut g = gw_with(1300, 64);
        g.neigh_lan
            .confirm(Ipv4Addr::new(192, 168, 15, 9), ROUTER9, 1, 0);
        let mut fdb = fdb();
        fdb.learn(ROUTER9, 1, 0);
        // A TCPv4 GSO super-frame as a Linux sender with TSO hands it over
        // (virtio_net_hdr gso_type 1, gso_size 1448, NEEDS_CSUM, the TCP
        // checksum field left to offload): 3 segments of 1448 bytes, each
        // 1488 bytes > 1300. Seq 1000, ACK|PSH|FIN|CWR, counting payload.
        let mut tcp = vec![0u8; 20 + 3 * 1448];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&1000u32.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x80 | 0x10 | 0x08 | 0x01;
        for (i, b) in tcp[20..].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let data = tcp[20..].to_vec();
        let gso = |t: u8| {
            let mut vnet = [0u8; VNET_HDR_LEN];
            vnet[0] = VNET_F_NEEDS_CSUM;
            vnet[1] = t;
            vnet[4..6].copy_from_slice(&1448u16.to_le_bytes());
            vnet[6..8].copy_from_slice(&34u16.to_le_bytes());
            vnet[8..10].copy_from_slice(&16u16.to_le_bytes());
            vnet
        };
        let (src, dst) = ([192, 168, 15, 1], [10, 9, 1, 1]);
        // DF: fragmentation needed, with the path's MTU.
        let mut f = ipv4(GW_MAC, src, dst, 64, proto::TCP, true, &tcp);
        let mut out = Gen::new();
        let v = g.from_lan(0, 0, &mut gso(1), &mut f, &mut out, &fdb);
        assert_eq!(v, Verdict::Consumed);
        let (_, e) = out.parts_mut(0);
        assert_eq!((icmp_of(e).3, icmp_of(e).4), (4, 1300));
        // No DF: segments of 1260 bytes, complete packets.
        let mut f = ipv4(GW_MAC, src, dst, 64, proto::TCP, false, &tcp);
        let mut out = Gen::new();
        let v = g.from_lan(0, 0, &mut gso(1), &mut f, &mut out, &fdb);
        assert_eq!(v, Verdict::Consumed);
        g.route_gen(0, &mut out, &fdb);
        assert_eq!(out.len(), 4);
        let mut got = Vec::new();
        for i in 0..4 {
            assert_eq!(out.target(i), Target::Port(1));
            let (_, f) = out.parts_mut(i);
            let ip = Ipv4Packet::new_checked(&f[ETH_HLEN..]).unwrap();
            assert!(ip.checksum_ok() && ip.total_len() <= 1300 && ip.ttl() == 63);
            assert!(l4_ok(&f[ETH_HLEN..]), "TCP checksum of segment {i}");
            let t = ip.payload();
            let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
            assert_eq!(seq, 1000 + got.len() as u32);
            let want = match i {
                0 => 0x80 | 0x10,
                3 => 0x10 | 0x08 | 0x01,
                _ => 0x10,
            };
            assert_eq!(t[13], want, "flags of segment {i}");
            got.extend_from_slice(&t[20..]);
        }
        assert_eq!(got, data);
        assert_eq!(g.counters.segmented, 4);
        // UDP GSO keeps datagram boundaries: refused, counted.
        let mut udp = vec![0u8; 8 + 3 * 1448];
        udp[4..6].copy_from_slice(&((8 + 3 * 1448) as u16).to_be_bytes());
        let mut f = ipv4(GW_MAC, src, dst, 64, proto::UDP, false, &udp);
        let mut out = Gen::new();
        let v = g.from_lan(0, 0, &mut gso(5), &mut f, &mut out, &fdb);
        assert_eq!(v, Verdict::Drop(DropReason::GwGsoTooBig));
        assert!(out.is_empty());
        assert_eq!(
            (g.counters.frag_needed, g.counters.drop_gso_too_big),
            (1, 1)
        );
    }

    #[test]
    fn total_length_zero_is_malformed_unless_gso() {
        let mut g = gw();
        let mut p = ping(GW_MAC, [192, 168, 15, 1], [192, 168, 15, 5], 64, 84, true);
        p[ETH_HLEN + 2..ETH_HLEN + 4].fill(0);
        p[ETH_HLEN + 10..ETH_HLEN + 12].fill(0);
        let c = checksum::checksum(&p[ETH_HLEN..ETH_HLEN + 20]);
        p[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&c.to_be_bytes());
        let mut out = Gen::new();
        let mut q = p.clone();
        assert_eq!(
            run(&mut g, 0, &mut q, &mut out),
            Verdict::Drop(DropReason::GwMalformed)
        );
        assert_eq!(g.counters.drop_malformed, 1);
        let mut vnet = [0u8; VNET_HDR_LEN];
        vnet[1] = 1;
        vnet[4..6].copy_from_slice(&1448u16.to_le_bytes());
        assert_ne!(
            g.from_lan(0, 0, &mut vnet, &mut p, &mut out, &fdb()),
            Verdict::Drop(DropReason::GwMalformed),
            "a GSO frame may say 0"
        );
    }

    #[test]
    fn echo_replies_get_a_fresh_ttl() {
        let mut g = gw();
        let mut out = Gen::new();
        let mut p = ping(GW_MAC, [192, 168, 15, 1], [192, 168, 15, 5], 3, 84, true);
        assert_eq!(run(&mut g, 0, &mut p, &mut out), Verdict::Reply);
        let ip = Ipv4Packet::new_checked(&p[ETH_HLEN..]).unwrap();
        assert_eq!(ip.ttl(), 64);
        icmp_of(&p); // checksums
    }

    #[test]
    fn icmp_errors_are_rate_limited_per_destination_and_in_total() {
        let mut g = gw();
        let mut out = Gen::new();
        for _ in 0..30 {
            let mut p = ping(GW_MAC, [192, 168, 15, 1], [198, 51, 100, 7], 64, 84, true);
            run(&mut g, 0, &mut p, &mut out);
        }
        assert_eq!(out.len(), 10, "burst of 10 per destination");
        assert_eq!(g.counters.icmp_rate_limited, 20);
        // A second later, 10 more for the same destination.
        let fdb = fdb();
        let mut out = Gen::new();
        for _ in 0..30 {
            let mut p = ping(GW_MAC, [192, 168, 15, 1], [198, 51, 100, 7], 64, 84, true);
            let mut vnet = [0u8; VNET_HDR_LEN];
            g.from_lan(1000, 0, &mut vnet, &mut p, &mut out, &fdb);
        }
        assert_eq!(out.len(), 10);
        // Many destinations: the total burst of 50 (20 already spent, 10 ms per token since).
        let mut g = gw();
        let mut sent = 0;
        for h in 1..=100u8 {
            let mut out = Gen::new();
            let mut p = ping(
                GW_MAC,
                [192, 168, 15, h.min(4) + (h / 4)],
                [198, 51, 100, 7],
                64,
                84,
                true,
            );
            p[ETH_HLEN + 15] = h;
            p[ETH_HLEN + 10..ETH_HLEN + 12].fill(0);
            let c = checksum::checksum(&p[ETH_HLEN..ETH_HLEN + 20]);
            p[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&c.to_be_bytes());
            if h == 5 || h == 255 {
                continue; // the gateway's own address and the broadcast
            }
            run(&mut g, 0, &mut p, &mut out);
            sent += out.len();
        }
        assert_eq!(sent, 50);
    }

    #[test]
    fn martian_destinations_are_never_routed() {
        let mut g = gw();
        let mut out = Gen::new();
        let dsts = [
            [255, 255, 255, 255],
            [192, 168, 15, 255],
            [203, 0, 113, 255],
            [224, 0, 0, 5],
            [0, 1, 2, 3],
            [127, 0, 0, 1],
            [240, 0, 0, 1],
        ];
        for d in dsts {
            let mut p = ping(GW_MAC, [192, 168, 15, 1], d, 64, 84, false);
            assert_eq!(
                run(&mut g, 0, &mut p, &mut out),
                Verdict::Drop(DropReason::GwNoRoute),
                "{d:?}"
            );
        }
        assert!(out.is_empty(), "no ICMP about them either");
        assert_eq!(g.counters.drop_martian_dst, dsts.len() as u64);
    }

    #[test]
    fn spoofed_sources_are_dropped_on_both_sides() {
        let mut g = gw();
        let mut out = Gen::new();
        for s in [
            [203, 0, 113, 1],
            [192, 168, 15, 5],
            [8, 8, 8, 8],
            [127, 0, 0, 1],
            [192, 168, 15, 255],
        ] {
            let mut p = ping(GW_MAC, s, [203, 0, 113, 10], 64, 84, false);
            assert_eq!(
                run(&mut g, 0, &mut p, &mut out),
                Verdict::Drop(DropReason::GwNotForUs),
                "{s:?}"
            );
        }
        assert_eq!(g.counters.drop_spoofed_src, 5);
        // Behind the static route: a valid source.
        let mut p = ping(GW_MAC, [10, 9, 3, 3], [192, 168, 15, 5], 64, 84, false);
        assert_eq!(run(&mut g, 0, &mut p, &mut out), Verdict::Reply);
        // From the uplink, a LAN or our own source is spoofed.
        for s in [[192, 168, 15, 1], [203, 0, 113, 1], [10, 9, 1, 1]] {
            let mut p = ping(UP_MAC, s, [203, 0, 113, 1], 64, 84, false);
            assert_eq!(
                run(&mut g, 2, &mut p, &mut out),
                Verdict::Drop(DropReason::GwNotForUs),
                "{s:?}"
            );
        }
        assert_eq!(g.counters.drop_spoofed_src, 8);
    }

    #[test]
    fn arp_teaches_only_on_link_senders() {
        let mut g = gw();
        let mut out = Gen::new();
        let fdb = fdb();
        let mut req = arp_request(RED, [10, 0, 0, 7], [192, 168, 15, 5]);
        assert_eq!(
            g.lan_arp(0, 0, &mut req, &mut out, &fdb),
            Some(Verdict::Reply)
        );
        let mut req = arp_request(RED, [10, 0, 0, 7], [203, 0, 113, 1]);
        assert_eq!(run(&mut g, 2, &mut req, &mut out), Verdict::Reply);
        assert!(g.neigh_lan.is_empty() && g.neigh_wan.is_empty());
        assert_eq!(g.counters.neigh_refused, 2);
        let mut req = arp_request(RED, [192, 168, 15, 1], [192, 168, 15, 5]);
        g.lan_arp(0, 0, &mut req, &mut out, &fdb);
        let e = g
            .neigh_lan
            .lookup(Ipv4Addr::new(192, 168, 15, 1), 0)
            .unwrap();
        assert!(!e.confirmed, "a request is a hint");
    }

    /// Review finding: one ARP request claiming blue's address from red's
    /// port must not divert blue's routed traffic to red.
    #[test]
    fn an_unsolicited_request_cannot_rebind_a_confirmed_neighbour() {
        let mut g = gw();
        let mut out = Gen::new();
        let fdb = fdb();
        g.neigh_lan
            .confirm(Ipv4Addr::new(192, 168, 15, 2), BLUE, 1, 0);
        let mut req = arp_request(RED, [192, 168, 15, 2], [192, 168, 15, 5]);
        g.lan_arp(10, 0, &mut req, &mut out, &fdb);
        let e = g
            .neigh_lan
            .lookup(Ipv4Addr::new(192, 168, 15, 2), 20)
            .unwrap();
        assert_eq!((e.mac, e.port), (BLUE, 1), "rebound to {e:?}");
        assert_eq!(g.neigh_lan.counters.refused_rebind, 1);
    }

    /// Review finding: red sending with blue's (confirmed) address is
    /// dropped as spoofed, so its flows cannot be charged to blue.
    #[test]
    fn a_host_cannot_send_from_another_hosts_confirmed_address() {
        let mut g = gw();
        let mut out = Gen::new();
        g.neigh_lan
            .confirm(Ipv4Addr::new(192, 168, 15, 2), BLUE, 1, 0);
        let mut p = ping(GW_MAC, [192, 168, 15, 2], [203, 0, 113, 10], 64, 84, false);
        let v = run(&mut g, 0, &mut p, &mut out);
        assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
        assert_eq!(
            g.nat.as_ref().unwrap().hosts().count(),
            0,
            "nothing charged"
        );
    }

    /// The issue's attack: ARP requests to the gateway with random senders,
    /// on- and off-link (on-link ones in .100-.254, more than the tables
    /// hold), on both sides (frames built after RFC 826 by `tests_fixtures`),
    /// then real traffic: the next hops are asked for,
    /// their replies are learned, and the queued packets go out.
    #[test]
    fn arp_flood_cannot_keep_the_real_next_hops_out() {
        let mut g = gw_with(1500, 64);
        let fdb = fdb();
        let mut s: u64 = 0x2545_f491_4f6c_dd1d;
        let mut out = Gen::new();
        for n in 0..20_000u64 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let mac = MacAddr([2, 1, (s >> 8) as u8, (s >> 16) as u8, (s >> 24) as u8, 1]);
            let off_link = ((s >> 32) as u32).to_be_bytes();
            out.clear();
            if n % 2 == 0 {
                let spa = if s & 4 == 0 {
                    [203, 0, 113, 100 + ((s >> 40) % 155) as u8]
                } else {
                    off_link
                };
                let mut f = arp_request(mac, spa, [203, 0, 113, 1]);
                g.from_uplink(n / 10, &mut [0u8; VNET_HDR_LEN], &mut f, &mut out, &fdb);
            } else {
                let spa = if s & 4 == 0 {
                    [192, 168, 15, 100 + ((s >> 40) % 155) as u8]
                } else {
                    off_link
                };
                let mut f = arp_request(mac, spa, [192, 168, 15, 5]);
                g.lan_arp(n / 10, (s >> 48) as usize % 2, &mut f, &mut out, &fdb);
            }
        }
        assert!(g.neigh_wan.len() <= 64 && g.neigh_lan.len() <= 64);
        assert!(g.neigh_lan.len_on_port(0) <= 16 && g.neigh_lan.len_on_port(1) <= 16);
        assert!(g.counters.neigh_refused > 4_000, "{:?}", g.counters);
        assert!(g.counters.neigh_evicted > 4_000, "{:?}", g.counters);
        let now = 2_000;
        // Out through the uplink to 203.0.113.10, and via the static route's router.
        for (dst, port, nh, mac) in [
            ([203, 0, 113, 10], 2, [203, 0, 113, 10], WAN),
            ([10, 9, 1, 1], 1, [192, 168, 15, 9], ROUTER9),
        ] {
            let mut out = Gen::new();
            let mut p = ping(GW_MAC, [192, 168, 15, 1], dst, 64, 84, true);
            let mut vnet = [0u8; VNET_HDR_LEN];
            assert_eq!(
                g.from_lan(now, 0, &mut vnet, &mut p, &mut out, &fdb),
                Verdict::Consumed
            );
            assert_eq!(out.len(), 1, "an ARP request");
            let mut out = Gen::new();
            let tpa = if port == 2 {
                [203, 0, 113, 1]
            } else {
                [192, 168, 15, 5]
            };
            let tha = if port == 2 { UP_MAC } else { GW_MAC };
            let mut rep = arp_reply(mac, nh, tha, tpa);
            if port == 2 {
                g.from_uplink(now, &mut vnet, &mut rep, &mut out, &fdb);
            } else {
                g.lan_arp(now, port, &mut rep, &mut out, &fdb);
            }
            assert_eq!(out.len(), 1, "the queued packet is released");
            let (_, f) = out.parts_mut(0);
            assert_eq!(EthernetFrame::new_checked(&f[..]).unwrap().dst(), mac);
            let e = if port == 2 {
                g.neigh_wan.lookup(nh.into(), now)
            } else {
                g.neigh_lan.lookup(nh.into(), now)
            };
            assert!(e.unwrap().confirmed);
        }
    }

    #[test]
    fn later_fragments_carry_only_copied_options() {
        // A 32-byte header with Record Route (type 7, not copied, 7 bytes)
        // and Loose Source Route (type 0x83, copied, 3+4 bytes = 7), then
        // EOL padding; layouts from RFC 791 3.1.
        let mut h = [0u8; 32];
        h[0] = 0x48;
        h[20..27].copy_from_slice(&[7, 7, 4, 0, 0, 0, 0]);
        h[27..31].copy_from_slice(&[0x83, 7, 4, 10]);
        let mut h2 = [0u8; 36];
        h2[..27].copy_from_slice(&h[..27]);
        h2[0] = 0x49;
        h2[27..34].copy_from_slice(&[0x83, 7, 4, 10, 9, 1, 1]);
        let mut out = [0u8; 60];
        let later = |h: &[u8], out: &mut [u8; 60]| {
            Ipv4Packet::new_quoted(h)
                .unwrap()
                .copied_options_header(out)
        };
        let n = later(&h2, &mut out);
        assert_eq!(n, 28);
        assert_eq!(out[0], 0x47);
        assert_eq!(&out[20..27], &[0x83, 7, 4, 10, 9, 1, 1]);
        assert_eq!(out[27], 0);
        // A malformed option length stops the copy, never panics.
        h2[28] = 200;
        assert_eq!(later(&h2, &mut out), 20);
    }

    #[test]
    fn a_frame_longer_than_its_packet_is_malformed_unless_padding() {
        let mut g = gw();
        let mut out = Gen::new();
        let mut p = ping(GW_MAC, [192, 168, 15, 1], [192, 168, 15, 5], 64, 84, true);
        p.extend_from_slice(&[0xee; 100]);
        assert_eq!(
            run(&mut g, 0, &mut p, &mut out),
            Verdict::Drop(DropReason::GwMalformed)
        );
        // A 28-byte echo request padded to the 60-byte Ethernet minimum is fine.
        let mut p = ping(GW_MAC, [192, 168, 15, 1], [192, 168, 15, 5], 64, 28, true);
        p.resize(60, 0);
        assert_eq!(run(&mut g, 0, &mut p, &mut out), Verdict::Reply);
    }

    /// A packet handed to `route_gen` (as the NAT's released fragments are,
    /// by `flush_released`) bigger than its egress is fragmented again.
    #[test]
    fn route_gen_fragments_what_does_not_fit() {
        let mut g = gw();
        g.neigh_wan
            .confirm(Ipv4Addr::new(203, 0, 113, 10), WAN, 2, 0);
        // A later fragment (offset 1480, MF set) of 1480 bytes, from 203.0.113.1 after NAT.
        let mut l4 = vec![0u8; 1480];
        for (i, b) in l4.iter_mut().enumerate() {
            *b = i as u8;
        }
        let mut f = ipv4(
            MacAddr::default(),
            [203, 0, 113, 1],
            [203, 0, 113, 10],
            64,
            proto::UDP,
            false,
            &l4,
        );
        f[ETH_HLEN + 6] = 0x20; // MF, offset 1480 / 8 = 185
        f[ETH_HLEN + 7] = 185;
        f[ETH_HLEN + 10..ETH_HLEN + 12].fill(0);
        let c = checksum::checksum(&f[ETH_HLEN..ETH_HLEN + 20]);
        f[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&c.to_be_bytes());
        let mut out = Gen::new();
        assert!(out.push(Target::Route, |b| {
            b[..VNET_HDR_LEN].fill(0);
            b[VNET_HDR_LEN..VNET_HDR_LEN + f.len()].copy_from_slice(&f);
            VNET_HDR_LEN + f.len()
        }));
        g.route_gen(0, &mut out, &fdb());
        assert_eq!(out.target(0), Target::Discard);
        let mut offs = Vec::new();
        for i in 1..out.len() {
            assert_eq!(out.target(i), Target::Port(2));
            let (_, f) = out.parts_mut(i);
            let ip = Ipv4Packet::new_checked(&f[ETH_HLEN..]).unwrap();
            assert!(ip.checksum_ok() && ip.total_len() <= 1400 && ip.more_frags());
            assert_eq!(&ip.payload()[..4], &l4[ip.frag_offset() - 1480..][..4]);
            offs.push((ip.frag_offset(), ip.payload().len()));
        }
        assert_eq!(offs, vec![(1480, 1376), (2856, 104)]);
    }

    #[test]
    fn outstanding_arp_requests_are_bounded() {
        let mut g = gw();
        g.cfg.prefix = 16; // a /16 LAN: more next hops than requests may be outstanding
        g.lan_net.prefix = 16;
        let fdb = fdb();
        let mut out = Gen::new();
        for i in 0..(MAX_OUTSTANDING + 10) as u32 {
            out.clear();
            let d = (u32::from(Ipv4Addr::new(192, 168, 100, 0)) + i).to_be_bytes();
            let mut p = ping(GW_MAC, [192, 168, 15, 1], d, 64, 84, true);
            let mut vnet = [0u8; VNET_HDR_LEN];
            g.from_lan(0, 0, &mut vnet, &mut p, &mut out, &fdb);
        }
        assert_eq!(g.counters.arp_requests, MAX_OUTSTANDING as u64);
        assert_eq!(g.counters.arp_requests_limited, 10);
        // Forgotten once they are older than the resolution wait.
        g.expire(RESOLVE_WAIT_MS);
        out.clear();
        let mut p = ping(GW_MAC, [192, 168, 15, 1], [192, 168, 200, 1], 64, 84, true);
        let mut vnet = [0u8; VNET_HDR_LEN];
        g.from_lan(RESOLVE_WAIT_MS, 0, &mut vnet, &mut p, &mut out, &fdb);
        assert_eq!(g.counters.arp_requests, MAX_OUTSTANDING as u64 + 1);
    }

    /// Malformed input is a counted drop, never a panic (overflow checks are
    /// on in test builds): valid fixtures (the builders above) with a few
    /// bytes changed, random vnet headers and lengths, through every entry
    /// point, then `route_gen`, `flush_released` and `expire`.
    #[test]
    fn mutated_frames_and_vnet_headers_never_panic() {
        let mut g = gw_with(1280, 32);
        let fdb = fdb();
        let mut s: u64 = 0x0123_4567_89ab_cdef;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let fixtures: Vec<Vec<u8>> = vec![
            ping(
                GW_MAC,
                [192, 168, 15, 1],
                [203, 0, 113, 10],
                64,
                1500,
                false,
            ),
            ping(GW_MAC, [192, 168, 15, 1], [192, 168, 15, 5], 2, 84, true),
            udp(
                GW_MAC,
                [192, 168, 15, 1],
                9,
                [203, 0, 113, 1],
                5353,
                1600,
                false,
                true,
            )
            .1,
            udp(
                UP_MAC,
                [203, 0, 113, 10],
                9,
                [203, 0, 113, 1],
                5353,
                1400,
                false,
                false,
            )
            .1,
            arp_request(RED, [192, 168, 15, 1], [192, 168, 15, 5]),
            arp_reply(WAN, [203, 0, 113, 10], UP_MAC, [203, 0, 113, 1]),
        ];
        g.neigh_wan
            .confirm(Ipv4Addr::new(203, 0, 113, 10), WAN, 2, 0);
        let mut out = Gen::new();
        for n in 0..30_000u64 {
            let r = next();
            let mut f = fixtures[(r % fixtures.len() as u64) as usize].clone();
            for _ in 0..1 + (r >> 8) % 4 {
                let x = next();
                let i = if x & 1 == 0 {
                    (x >> 8) as usize % 40.min(f.len()) // headers, most of the time
                } else {
                    (x >> 8) as usize % f.len()
                };
                f[i] = (x >> 32) as u8;
            }
            if r & (1 << 20) != 0 {
                f.truncate((next() as usize) % (f.len() + 1));
            }
            let mut vnet = [0u8; VNET_HDR_LEN];
            if r & (1 << 21) != 0 {
                vnet[..8].copy_from_slice(&next().to_le_bytes());
                vnet[8..].copy_from_slice(&next().to_le_bytes()[..2]);
                vnet[0] &= 3;
                vnet[1] = [0, 1, 4, 5, 0x80][(next() % 5) as usize];
            }
            let now = n;
            out.clear();
            match (r >> 24) % 3 {
                0 => {
                    g.from_lan(
                        now,
                        (r >> 30) as usize % 2,
                        &mut vnet,
                        &mut f,
                        &mut out,
                        &fdb,
                    );
                }
                1 => {
                    g.from_uplink(now, &mut vnet, &mut f, &mut out, &fdb);
                }
                _ => {
                    g.lan_arp(now, 0, &mut f, &mut out, &fdb);
                }
            }
            g.flush_released(&mut out);
            g.route_gen(now, &mut out, &fdb);
            if n % 1000 == 0 {
                g.expire(now);
            }
            assert!(g.neigh_lan.len() <= 32 && g.neigh_wan.len() <= 32);
        }
        assert!(
            g.counters.drop_malformed > 0 && g.counters.routed > 0,
            "{:?}",
            g.counters
        );
    }

    #[test]
    fn one_port_cannot_fill_the_resolution_queue() {
        let mut g = gw(); // 16 slots: 4 per port
        let fdb = fdb();
        let mut out = Gen::new();
        for i in 0..10u8 {
            out.clear();
            let mut p = ping(
                GW_MAC,
                [192, 168, 15, 1],
                [203, 0, 113, 20 + i],
                64,
                84,
                true,
            );
            let v = g.from_lan(0, 0, &mut [0u8; VNET_HDR_LEN], &mut p, &mut out, &fdb);
            let want = if i < 4 {
                Verdict::Consumed
            } else {
                Verdict::Drop(DropReason::GwQueueFull)
            };
            assert_eq!(v, want, "{i}");
        }
        assert_eq!(g.counters.drop_queue_share, 6);
        let mut p = ping(GW_MAC, [192, 168, 15, 3], [203, 0, 113, 40], 64, 84, true);
        assert_eq!(
            g.from_lan(0, 1, &mut [0u8; VNET_HDR_LEN], &mut p, &mut out, &fdb),
            Verdict::Consumed,
            "another port still gets in"
        );
    }
}
