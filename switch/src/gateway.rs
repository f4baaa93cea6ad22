//! The gateway: the switch's own router between the LAN and the uplink.
//!
//! Contract: the gateway owns its LAN address (answers ARP and ping for it)
//! and the uplink address. It routes IPv4 between LAN subnets (static routes
//! included, no NAT) and the uplink (through [`nat::Nat`]), decrements TTL,
//! and answers with ICMP: time exceeded (TTL), destination unreachable (no
//! route), fragmentation needed (DF set, next hop MTU too small); non-DF
//! packets that are too big are fragmented. Next hops are resolved with its
//! own neighbour caches (one per side); packets wait for resolution in a
//! bounded queue, and ARP requests are rate-limited (one per address per
//! second). Everything is driven by `now` (ms); no I/O happens here: frames
//! are rewritten in place or generated into a [`Gen`] batch.
//!
//! ```text
//! LAN frame to gateway MAC ─► IPv4 ok? ─► for us? ─► echo reply / ICMP unreachable
//!                               └─► TTL ≤ 1 ─► time exceeded
//!                               └─► route ─► MTU/DF ─► NAT ─► TTL-1 ─► neighbour ─► out (or queue + ARP)
//! uplink frame ─► ARP for our address ─► reply │ IPv4 to our address ─► NAT inbound ─► LAN
//! ```

use crate::PortId;
use crate::arp::ArpTable;
use crate::fdb::Fdb;
use crate::pipeline::{Gen, Target, Verdict};
use crate::stats::DropReason;
use crate::wire::{
    ArpPacket, ETH_HLEN, EthernetFrame, MacAddr, VNET_F_NEEDS_CSUM, VNET_HDR_LEN, VnetHdr, arp_op,
    ethertype,
};
use nat::checksum;
use nat::wire::{Ipv4Packet, icmp_is_error, icmp_type, proto};
use nat::{Ipv4Net, Nat, NatConfig, Side};
use std::collections::HashMap;
use std::net::Ipv4Addr;

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
    /// Bound on each neighbour cache.
    pub neigh_max: usize,
    /// Neighbour entry lifetime, ms.
    pub ageing_ms: u64,
    /// Packets that may wait for neighbour resolution.
    pub queue_slots: usize,
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
    /// ICMP fragmentation needed sent.
    pub frag_needed: u64,
    /// Packets fragmented / fragments made.
    pub fragmented: u64,
    /// ARP requests sent.
    pub arp_requests: u64,
    /// ARP requests answered for our addresses.
    pub arp_replies: u64,
    /// Packets queued awaiting a neighbour.
    pub queued: u64,
    /// Dropped: not IPv4 (to the gateway MAC).
    pub drop_not_ipv4: u64,
    /// Dropped: malformed or bad header checksum.
    pub drop_malformed: u64,
    /// Dropped: to an address we neither own nor route (uplink).
    pub drop_not_for_us: u64,
    /// Dropped: for us, but no service (not echo/UDP).
    pub drop_local: u64,
    /// Dropped: the resolution queue was full.
    pub drop_queue_full: u64,
    /// Dropped: the neighbour never answered.
    pub drop_unresolved: u64,
    /// Dropped: a GSO frame too big for the next hop without DF.
    pub drop_gso_too_big: u64,
    /// Dropped: no room for a generated frame in this batch.
    pub drop_gen_full: u64,
}

struct Pending {
    used: bool,
    nh: Ipv4Addr,
    wan: bool,
    since: u64,
    data: Vec<u8>,
}

/// Where `dst` leads, given the gateway's addresses, subnets and routes.
fn route_in(cfg: &GatewayConfig, lan: &Ipv4Net, up: &Option<Ipv4Net>, dst: Ipv4Addr) -> Egress {
    if dst == cfg.ip || cfg.uplink.as_ref().is_some_and(|u| u.ip == dst) {
        return Egress::Local;
    }
    if lan.contains(dst) {
        return Egress::Lan(dst);
    }
    if let Some((_, via)) = cfg
        .routes
        .iter()
        .filter(|(n, _)| n.contains(dst))
        .max_by_key(|(n, _)| n.prefix)
    {
        return Egress::Lan(*via);
    }
    match (&cfg.uplink, up) {
        (Some(_), Some(n)) if n.contains(dst) => Egress::Uplink(dst),
        (Some(u), _) => u.next_hop.map_or(Egress::None, Egress::Uplink),
        _ => Egress::None,
    }
}

/// The NAT's view of where `dst` leads.
fn side_in(cfg: &GatewayConfig, lan: &Ipv4Net, up: &Option<Ipv4Net>, dst: Ipv4Addr) -> Side {
    match route_in(cfg, lan, up, dst) {
        Egress::Lan(_) => Side::Lan,
        Egress::Uplink(_) => Side::Wan,
        Egress::Local | Egress::None => Side::Local,
    }
}

/// What to do with a routed packet.
enum Next {
    Out(Target),
    Queue { nh: Ipv4Addr, wan: bool },
    Drop(DropReason),
}

/// Where a destination leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Egress {
    /// On the LAN via this next hop.
    Lan(Ipv4Addr),
    /// Through the uplink via this next hop.
    Uplink(Ipv4Addr),
    /// The gateway itself.
    Local,
    /// No route.
    None,
}

/// How long a packet waits for its next hop's MAC (ms).
const RESOLVE_WAIT_MS: u64 = 3_000;
/// Quote of the offending packet in ICMP errors (RFC 1812: fit in 576 bytes).
const ICMP_QUOTE: usize = 576 - 20 - 8;

/// The gateway's state.
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
    last_req: HashMap<Ipv4Addr, u64>,
    /// Counters.
    pub counters: GwCounters,
}

fn may_send_error(ip: &Ipv4Packet<&[u8]>) -> bool {
    let src = ip.src();
    if src.is_unspecified() || src.is_broadcast() || src.is_multicast() || ip.frag_offset() != 0 {
        return false;
    }
    // Never an error about an error.
    !(ip.protocol() == proto::ICMP && ip.payload().first().is_some_and(|t| icmp_is_error(*t)))
}

fn write_eth(b: &mut [u8], dst: MacAddr, src: MacAddr, et: u16) {
    b[0..6].copy_from_slice(&dst.0);
    b[6..12].copy_from_slice(&src.0);
    b[12..14].copy_from_slice(&et.to_be_bytes());
}

impl Gateway {
    /// A gateway with empty caches.
    pub fn new(cfg: GatewayConfig) -> Gateway {
        let lan_net = Ipv4Net {
            addr: cfg.ip,
            prefix: cfg.prefix,
        };
        let up_net = cfg.uplink.as_ref().map(|u| Ipv4Net {
            addr: u.ip,
            prefix: u.prefix,
        });
        let pending = (0..cfg.queue_slots)
            .map(|_| Pending {
                used: false,
                nh: Ipv4Addr::UNSPECIFIED,
                wan: false,
                since: 0,
                data: Vec::with_capacity(2048),
            })
            .collect();
        Gateway {
            nat: cfg.nat.clone().map(Nat::new),
            neigh_lan: ArpTable::new(cfg.neigh_max, cfg.ageing_ms),
            neigh_wan: ArpTable::new(cfg.neigh_max, cfg.ageing_ms),
            pending,
            last_req: HashMap::new(),
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

    /// The uplink's port, if any.
    pub fn uplink_port(&self) -> Option<PortId> {
        self.cfg.uplink.as_ref().map(|u| u.port)
    }

    /// Where `dst` leads.
    pub fn route(&self, dst: Ipv4Addr) -> Egress {
        route_in(&self.cfg, &self.lan_net, &self.up_net, dst)
    }

    /// The NAT's view of where `dst` leads.
    pub fn side_of(&self, dst: Ipv4Addr) -> Side {
        side_in(&self.cfg, &self.lan_net, &self.up_net, dst)
    }

    /// ARP on the LAN for our address: answer requests, learn replies. `None`: not for us.
    pub fn lan_arp(
        &mut self,
        now: u64,
        in_port: PortId,
        frame: &mut [u8],
        out: &mut Gen,
        fdb: &Fdb,
    ) -> Option<Verdict> {
        let (op, sha, spa, tpa) = {
            let a = ArpPacket::new_checked(&frame[ETH_HLEN..]).ok()?;
            (a.op(), a.sha(), a.spa(), a.tpa())
        };
        if tpa != self.cfg.ip || spa == tpa {
            // Not about us; keep what we know of others fresh.
            if self.neigh_lan.lookup(spa, now).is_some() {
                self.neigh_lan.learn(spa, sha, in_port, now);
            }
            return None;
        }
        if !spa.is_unspecified() {
            self.neigh_lan.learn(spa, sha, in_port, now);
            self.release(now, spa, false, out, fdb);
        }
        if op == arp_op::REQUEST {
            let mut eth = EthernetFrame::new_checked(&mut *frame).ok()?;
            eth.set_dst(sha);
            eth.set_src(self.cfg.mac);
            ArpPacket::new_checked(eth.payload_mut())
                .ok()?
                .make_reply(self.cfg.mac);
            if spa.is_unspecified() {
                return Some(Verdict::Drop(DropReason::GwArp)); // a probe for our address: it is taken, stay quiet
            }
            self.counters.arp_replies += 1;
            return Some(Verdict::Reply);
        }
        Some(Verdict::Consumed)
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
        if eth.ethertype() != ethertype::IPV4 {
            self.counters.drop_not_ipv4 += 1;
            return Verdict::Drop(DropReason::GwNotIpv4);
        }
        let src_mac = eth.src();
        let (dst, ttl, total, df, proto_, hl) = match Ipv4Packet::new_checked(&frame[ETH_HLEN..]) {
            Ok(ip) if ip.checksum_ok() => (
                ip.dst(),
                ip.ttl(),
                ip.total_len(),
                ip.dont_frag(),
                ip.protocol(),
                ip.header_len(),
            ),
            _ => {
                self.counters.drop_malformed += 1;
                return Verdict::Drop(DropReason::GwMalformed);
            }
        };
        let end = ETH_HLEN + total;
        let partial = vnet[0] & VNET_F_NEEDS_CSUM != 0;
        let uplink_ip = self.cfg.uplink.as_ref().map(|u| u.ip);

        // Traffic to our own addresses: NAT may claim the external one (DNAT, hairpin replies).
        let mut translated = false;
        if dst == self.cfg.ip {
            return self.local(frame, in_port, src_mac, out, self.cfg.mac, self.cfg.ip);
        }
        if Some(dst) == uplink_ip {
            match self.nat_step(now, Side::Lan, &mut frame[ETH_HLEN..end], partial) {
                Ok(true) => translated = true,
                Ok(false) => return self.local(frame, in_port, src_mac, out, self.cfg.mac, dst),
                Err(v) => return v,
            }
        }
        if ttl <= 1 {
            self.lan_error(
                out,
                in_port,
                src_mac,
                &frame[ETH_HLEN..end],
                icmp_type::TIME_EXCEEDED,
                0,
                0,
            );
            self.counters.time_exceeded += 1;
            return Verdict::Consumed;
        }
        if !translated {
            let egress = self.route(dst);
            if egress == Egress::None {
                self.lan_error(
                    out,
                    in_port,
                    src_mac,
                    &frame[ETH_HLEN..end],
                    icmp_type::DEST_UNREACH,
                    0,
                    0,
                );
                self.counters.unreachable += 1;
                return Verdict::Consumed;
            }
            // Path MTU: DF packets too big get "fragmentation needed" about what was sent.
            let mtu = match egress {
                Egress::Uplink(_) => self.cfg.uplink.as_ref().map_or(self.cfg.lan_mtu, |u| u.mtu),
                _ => self.cfg.lan_mtu,
            } as usize;
            let seg = seg_len(vnet, &frame[ETH_HLEN..end], hl, proto_);
            if seg > mtu {
                if df {
                    self.lan_error(
                        out,
                        in_port,
                        src_mac,
                        &frame[ETH_HLEN..end],
                        icmp_type::DEST_UNREACH,
                        4,
                        mtu as u16,
                    );
                    self.counters.frag_needed += 1;
                    return Verdict::Consumed;
                }
                if VnetHdr::new_checked(&*vnet)
                    .map(|v| v.gso_type())
                    .unwrap_or(0)
                    != 0
                {
                    self.counters.drop_gso_too_big += 1;
                    return Verdict::Drop(DropReason::GwGsoTooBig);
                }
            }
            if egress != Egress::Local {
                match self.nat_step(now, Side::Lan, &mut frame[ETH_HLEN..end], partial) {
                    Ok(_) => {}
                    Err(v) => return v,
                }
            }
            if seg > mtu {
                return self.fragment_out(&frame[..end], mtu, out);
            }
        }
        self.forward(now, vnet, frame, end, out, fdb)
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
        let dst = match Ipv4Packet::new_checked(&mut frame[ETH_HLEN..end]) {
            Ok(mut ip) if ip.ttl() > 1 => {
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
                self.counters.drop_not_for_us += 1;
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
            return Next::Queue { nh, wan };
        };
        let src_mac = if wan {
            self.cfg.uplink.as_ref().map_or(self.cfg.mac, |u| u.mac)
        } else {
            self.cfg.mac
        };
        write_eth(frame, n.mac, src_mac, ethertype::IPV4);
        if wan {
            return Next::Out(Target::Port(
                self.cfg
                    .uplink
                    .as_ref()
                    .expect("wan route implies uplink")
                    .port,
            ));
        }
        Next::Out(fdb.lookup(&n.mac, now).map_or(Target::Lan, Target::Port))
    }

    /// Forward a received frame in place (or queue it for resolution).
    fn forward(
        &mut self,
        now: u64,
        vnet: &[u8],
        frame: &mut [u8],
        end: usize,
        out: &mut Gen,
        fdb: &Fdb,
    ) -> Verdict {
        match self.next_hop(now, frame, end, fdb) {
            Next::Out(Target::Port(p)) => Verdict::Unicast(p),
            Next::Out(_) => Verdict::FloodAll,
            Next::Queue { nh, wan } => self.enqueue(now, nh, wan, vnet, &frame[..end], out),
            Next::Drop(r) => Verdict::Drop(r),
        }
    }

    /// Resolve generated frames that need routing (fragments, released fragments).
    pub fn route_gen(&mut self, now: u64, out: &mut Gen, fdb: &Fdb) {
        let mut i = 0;
        while i < out.len() {
            if out.target(i) == Target::Route {
                let (vnet, frame) = out.parts_mut(i);
                let end = frame.len();
                match self.next_hop(now, frame, end, fdb) {
                    Next::Out(t) => out.set_target(i, t),
                    Next::Drop(_) => out.set_target(i, Target::Discard),
                    Next::Queue { nh, wan } => {
                        let mut v = [0u8; VNET_HDR_LEN];
                        v.copy_from_slice(&vnet[..VNET_HDR_LEN]);
                        let (_, frame) = out.parts_mut(i);
                        let copy = self.park(now, nh, wan, &v, frame);
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

    fn enqueue(
        &mut self,
        now: u64,
        nh: Ipv4Addr,
        wan: bool,
        vnet: &[u8],
        frame: &[u8],
        out: &mut Gen,
    ) -> Verdict {
        self.request(now, nh, wan, out);
        if self.park(now, nh, wan, vnet, frame) {
            Verdict::Consumed
        } else {
            Verdict::Drop(DropReason::GwQueueFull)
        }
    }

    /// Keep a copy of a packet until `nh` is resolved; false if the queue is full.
    fn park(&mut self, now: u64, nh: Ipv4Addr, wan: bool, vnet: &[u8], frame: &[u8]) -> bool {
        let Some(slot) = self.pending.iter_mut().find(|p| !p.used) else {
            self.counters.drop_queue_full += 1;
            return false;
        };
        slot.used = true;
        slot.nh = nh;
        slot.wan = wan;
        slot.since = now;
        slot.data.clear();
        slot.data.extend_from_slice(&vnet[..VNET_HDR_LEN]);
        slot.data.extend_from_slice(frame);
        self.counters.queued += 1;
        true
    }

    /// Send an ARP request for `ip` unless one went out in the last second.
    fn request(&mut self, now: u64, ip: Ipv4Addr, wan: bool, out: &mut Gen) {
        if let Some(&t) = self.last_req.get(&ip)
            && now.saturating_sub(t) < 1000
        {
            return;
        }
        if self.last_req.len() > 4096 {
            self.last_req.retain(|_, t| now.saturating_sub(*t) < 1000);
        }
        self.last_req.insert(ip, now);
        let (mac, my_ip, target) = match (&self.cfg.uplink, wan) {
            (Some(u), true) => (u.mac, u.ip, Target::Port(u.port)),
            _ => (self.cfg.mac, self.cfg.ip, Target::Lan),
        };
        let ok = out.push(target, |b| {
            b[..VNET_HDR_LEN].fill(0);
            let f = &mut b[VNET_HDR_LEN..];
            write_eth(f, MacAddr::BROADCAST, mac, ethertype::ARP);
            f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
            f[22..28].copy_from_slice(&mac.0);
            f[28..32].copy_from_slice(&my_ip.octets());
            f[32..38].fill(0);
            f[38..42].copy_from_slice(&ip.octets());
            f[42..60].fill(0);
            VNET_HDR_LEN + 60
        });
        if ok {
            self.counters.arp_requests += 1;
        } else {
            self.counters.drop_gen_full += 1;
        }
    }

    /// Send packets that waited for `ip` (now resolved).
    fn release(&mut self, now: u64, ip: Ipv4Addr, wan: bool, out: &mut Gen, fdb: &Fdb) {
        let table = if wan {
            &self.neigh_wan
        } else {
            &self.neigh_lan
        };
        let Some(n) = table.lookup(ip, now) else {
            return;
        };
        let src_mac = if wan {
            self.cfg.uplink.as_ref().map_or(self.cfg.mac, |u| u.mac)
        } else {
            self.cfg.mac
        };
        let target = if wan {
            Target::Port(self.cfg.uplink.as_ref().map_or(0, |u| u.port))
        } else {
            fdb.lookup(&n.mac, now).map_or(Target::Lan, Target::Port)
        };
        for i in 0..self.pending.len() {
            let p = &self.pending[i];
            if !p.used || p.nh != ip || p.wan != wan {
                continue;
            }
            let data = &p.data;
            let ok = out.push(target, |b| {
                b[..data.len()].copy_from_slice(data);
                write_eth(&mut b[VNET_HDR_LEN..], n.mac, src_mac, ethertype::IPV4);
                data.len()
            });
            if !ok {
                self.counters.drop_gen_full += 1;
            }
            self.pending[i].used = false;
        }
    }

    /// Deliver to the gateway itself: answer pings, refuse UDP with port unreachable.
    fn local(
        &mut self,
        frame: &mut [u8],
        in_port: PortId,
        src_mac: MacAddr,
        out: &mut Gen,
        my_mac: MacAddr,
        my_ip: Ipv4Addr,
    ) -> Verdict {
        let Ok(ip) = Ipv4Packet::new_checked(&frame[ETH_HLEN..]) else {
            return Verdict::Drop(DropReason::GwMalformed);
        };
        let end = ETH_HLEN + ip.total_len();
        match ip.protocol() {
            proto::ICMP
                if ip.payload().first() == Some(&icmp_type::ECHO_REQUEST)
                    && ip.payload().len() >= 8
                    && !ip.is_fragment() =>
            {
                let mut ip = Ipv4Packet::new_checked(&mut frame[ETH_HLEN..end]).expect("checked");
                let peer = ip.src();
                ip.set_src(my_ip);
                ip.set_dst(peer);
                let l4 = ip.payload_mut();
                l4[0] = icmp_type::ECHO_REPLY;
                let c = checksum::update16(
                    u16::from_be_bytes([l4[2], l4[3]]),
                    u16::from(icmp_type::ECHO_REQUEST) << 8,
                    0,
                );
                l4[2..4].copy_from_slice(&c.to_be_bytes());
                write_eth(frame, src_mac, my_mac, ethertype::IPV4);
                self.counters.echo_replies += 1;
                Verdict::Reply
            }
            proto::UDP => {
                self.icmp_error(
                    out,
                    Target::Port(in_port),
                    src_mac,
                    my_mac,
                    my_ip,
                    &frame[ETH_HLEN..end],
                    icmp_type::DEST_UNREACH,
                    3,
                    0,
                );
                self.counters.unreachable += 1;
                Verdict::Consumed
            }
            _ => {
                self.counters.drop_local += 1;
                Verdict::Drop(DropReason::GwLocal)
            }
        }
    }

    /// An ICMP error from the gateway's LAN address, back out of `in_port` to `to_mac`.
    #[allow(clippy::too_many_arguments)]
    fn lan_error(
        &mut self,
        out: &mut Gen,
        in_port: PortId,
        to_mac: MacAddr,
        orig: &[u8],
        ty: u8,
        code: u8,
        mtu: u16,
    ) {
        let (mac, ip) = (self.cfg.mac, self.cfg.ip);
        self.icmp_error(
            out,
            Target::Port(in_port),
            to_mac,
            mac,
            ip,
            orig,
            ty,
            code,
            mtu,
        );
    }

    /// Build an ICMP error about `orig` (an IPv4 packet) into `out`.
    #[allow(clippy::too_many_arguments)]
    fn icmp_error(
        &mut self,
        out: &mut Gen,
        target: Target,
        eth_dst: MacAddr,
        eth_src: MacAddr,
        my_ip: Ipv4Addr,
        orig: &[u8],
        ty: u8,
        code: u8,
        mtu: u16,
    ) {
        let Ok(o) = Ipv4Packet::new_checked(orig) else {
            return;
        };
        if !may_send_error(&o) {
            return;
        }
        let to = o.src();
        let quote = &orig[..orig.len().min(ICMP_QUOTE)];
        let ok = out.push(target, |b| {
            b[..VNET_HDR_LEN].fill(0);
            let f = &mut b[VNET_HDR_LEN..];
            write_eth(f, eth_dst, eth_src, ethertype::IPV4);
            let total = 20 + 8 + quote.len();
            let ip = &mut f[ETH_HLEN..ETH_HLEN + total];
            ip[..12].copy_from_slice(&[
                0x45,
                0xc0,
                (total >> 8) as u8,
                total as u8,
                0,
                0,
                0,
                0,
                64,
                proto::ICMP,
                0,
                0,
            ]);
            ip[12..16].copy_from_slice(&my_ip.octets());
            ip[16..20].copy_from_slice(&to.octets());
            let c = checksum::checksum(&ip[..20]);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            let icmp = &mut ip[20..];
            icmp[..8].copy_from_slice(&[ty, code, 0, 0, 0, 0, (mtu >> 8) as u8, mtu as u8]);
            icmp[8..].copy_from_slice(quote);
            let c = checksum::checksum(icmp);
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            VNET_HDR_LEN + ETH_HLEN + total
        });
        if !ok {
            self.counters.drop_gen_full += 1;
        }
    }

    /// Fragment a non-DF packet for a next hop with a smaller MTU; the
    /// fragments go into `out` to be routed by [`Gateway::route_gen`].
    fn fragment_out(&mut self, frame: &[u8], mtu: usize, out: &mut Gen) -> Verdict {
        let Ok(ip) = Ipv4Packet::new_checked(&frame[ETH_HLEN..]) else {
            return Verdict::Drop(DropReason::GwMalformed);
        };
        let hl = ip.header_len();
        let payload = ip.payload();
        let base_off = ip.frag_offset();
        let last_mf = ip.more_frags();
        let chunk = mtu.saturating_sub(hl) & !7;
        if chunk == 0 {
            return Verdict::Drop(DropReason::GwMalformed);
        }
        let header = &frame[..ETH_HLEN + hl];
        let mut off = 0;
        while off < payload.len() {
            let n = chunk.min(payload.len() - off);
            let more = off + n < payload.len() || last_mf;
            let data = &payload[off..off + n];
            let fo = (((base_off + off) / 8) as u16) & 0x1fff;
            let ok = out.push(Target::Route, |b| {
                b[..VNET_HDR_LEN].fill(0);
                let f = &mut b[VNET_HDR_LEN..];
                f[..ETH_HLEN + hl].copy_from_slice(header);
                f[ETH_HLEN + hl..ETH_HLEN + hl + n].copy_from_slice(data);
                let ipb = &mut f[ETH_HLEN..ETH_HLEN + hl + n];
                ipb[2..4].copy_from_slice(&((hl + n) as u16).to_be_bytes());
                ipb[6] = (ipb[6] & 0x40) | if more { 0x20 } else { 0 } | (fo >> 8) as u8;
                ipb[7] = fo as u8;
                ipb[10] = 0;
                ipb[11] = 0;
                let c = checksum::checksum(&ipb[..hl]);
                ipb[10..12].copy_from_slice(&c.to_be_bytes());
                VNET_HDR_LEN + ETH_HLEN + hl + n
            });
            if !ok {
                self.counters.drop_gen_full += 1;
                return Verdict::Consumed;
            }
            self.counters.fragmented += 1;
            off += n;
        }
        Verdict::Consumed
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
            return Verdict::Drop(DropReason::GwNotForUs);
        };
        let Ok(eth) = EthernetFrame::new_checked(&*frame) else {
            return Verdict::Drop(DropReason::Runt);
        };
        let (dst_mac, src_mac, et) = (eth.dst(), eth.src(), eth.ethertype());
        if et == ethertype::ARP {
            let Ok(a) = ArpPacket::new_checked(&frame[ETH_HLEN..]) else {
                return Verdict::Drop(DropReason::GwMalformed);
            };
            let (op, sha, spa, tpa) = (a.op(), a.sha(), a.spa(), a.tpa());
            if tpa != up.ip {
                return Verdict::Consumed; // someone else's ARP on the external network
            }
            if !spa.is_unspecified() && sha.is_unicast() {
                self.neigh_wan.learn(spa, sha, up.port, now);
                self.release(now, spa, true, out, fdb);
            }
            if op == arp_op::REQUEST && !spa.is_unspecified() {
                let mut eth = EthernetFrame::new_checked(&mut *frame).expect("checked");
                eth.set_dst(sha);
                eth.set_src(up.mac);
                ArpPacket::new_checked(eth.payload_mut())
                    .expect("checked")
                    .make_reply(up.mac);
                self.counters.arp_replies += 1;
                return Verdict::Reply;
            }
            return Verdict::Consumed;
        }
        if dst_mac != up.mac {
            return Verdict::Drop(DropReason::GwNotForUs);
        }
        if et != ethertype::IPV4 {
            self.counters.drop_not_ipv4 += 1;
            return Verdict::Drop(DropReason::GwNotIpv4);
        }
        let (dst, ttl, total, is_echo) = match Ipv4Packet::new_checked(&frame[ETH_HLEN..]) {
            Ok(ip) if ip.checksum_ok() => (
                ip.dst(),
                ip.ttl(),
                ip.total_len(),
                ip.protocol() == proto::ICMP
                    && ip.payload().first() == Some(&icmp_type::ECHO_REQUEST),
            ),
            _ => {
                self.counters.drop_malformed += 1;
                return Verdict::Drop(DropReason::GwMalformed);
            }
        };
        let end = ETH_HLEN + total;
        if dst != up.ip {
            self.counters.drop_not_for_us += 1;
            return Verdict::Drop(DropReason::GwNotForUs);
        }
        if ttl <= 1 && !is_echo {
            self.icmp_error(
                out,
                Target::Port(up.port),
                src_mac,
                up.mac,
                up.ip,
                &frame[ETH_HLEN..end],
                icmp_type::TIME_EXCEEDED,
                0,
                0,
            );
            self.counters.time_exceeded += 1;
            return Verdict::Consumed;
        }
        let partial = vnet[0] & VNET_F_NEEDS_CSUM != 0;
        match self.nat_step(now, Side::Wan, &mut frame[ETH_HLEN..end], partial) {
            Ok(true) => {}
            Ok(false) => return self.local(frame, up.port, src_mac, out, up.mac, up.ip),
            Err(v) => return v,
        }
        let hl = Ipv4Packet::new_checked(&frame[ETH_HLEN..end])
            .map(|p| p.header_len())
            .unwrap_or(20);
        let p = frame[ETH_HLEN + 9];
        let seg = seg_len(vnet, &frame[ETH_HLEN..end], hl, p);
        if seg > self.cfg.lan_mtu as usize {
            return self.fragment_out(&frame[..end], self.cfg.lan_mtu as usize, out);
        }
        self.forward(now, vnet, frame, end, out, fdb)
    }

    /// Hand fragments the NAT released (their first fragment arrived) to `out` for routing.
    pub fn flush_released(&mut self, out: &mut Gen) {
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

    /// Age caches, expire NAT state, drop packets whose neighbour never answered.
    pub fn expire(&mut self, now: u64) {
        if let Some(n) = &mut self.nat {
            n.expire(now);
        }
        self.neigh_lan.sweep(now);
        self.neigh_wan.sweep(now);
        for p in &mut self.pending {
            if p.used && now.saturating_sub(p.since) >= RESOLVE_WAIT_MS {
                p.used = false;
                self.counters.drop_unresolved += 1;
            }
        }
    }
}

/// Length of the largest IP packet this frame becomes on the wire (a GSO
/// super-frame: headers + one segment).
fn seg_len(vnet: &[u8], ip: &[u8], hl: usize, p: u8) -> usize {
    let Ok(v) = VnetHdr::new_checked(vnet) else {
        return ip.len();
    };
    if v.gso_type() == 0 || v.gso_size() == 0 {
        return ip.len();
    }
    let l4h = match p {
        proto::TCP => ip.get(hl + 12).map_or(20, |b| usize::from(b >> 4) * 4),
        proto::UDP => 8,
        _ => 0,
    };
    (hl + l4h + usize::from(v.gso_size())).min(ip.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tests_fixtures::{arp_reply, arp_request};

    const GW_MAC: MacAddr = MacAddr([2, 0x76, 0x73, 0, 0, 5]);
    const UP_MAC: MacAddr = MacAddr([2, 0x76, 0x73, 0, 0, 1]);
    const RED: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const WAN: MacAddr = MacAddr([2, 0, 0, 0, 0, 0x10]);
    const ROUTER9: MacAddr = MacAddr([2, 0, 0, 0, 0, 9]);

    fn gw() -> Gateway {
        let mut nat = NatConfig::new(Ipv4Addr::new(203, 0, 113, 1));
        nat.masquerade = vec![Ipv4Net {
            addr: Ipv4Addr::new(192, 168, 15, 0),
            prefix: 24,
        }];
        nat.alloc = nat::PortAlloc::Sequential;
        Gateway::new(GatewayConfig {
            ip: Ipv4Addr::new(192, 168, 15, 5),
            prefix: 24,
            mac: GW_MAC,
            lan_mtu: 1500,
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
            neigh_max: 64,
            ageing_ms: 300_000,
            queue_slots: 4,
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
}
