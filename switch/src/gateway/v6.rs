//! IPv6 in the gateway: Neighbor Discovery for its addresses, router
//! advertisements, echo, ICMPv6 errors, and routing between the LAN
//! prefixes and the uplink.
//!
//! Contract, as for IPv4 (see the parent module) with these IPv6 rules:
//! - NDP (RFC 4861): neighbor solicitations for our addresses (LAN
//!   addresses, our link-local addresses, the uplink address) are answered
//!   with a solicited advertisement; a DAD probe for one is defended with an
//!   advertisement to all-nodes. Only NDP with hop limit 255 and a valid
//!   checksum is believed. Senders are learned into bounded [`NdTable`]s
//!   (on-link prefixes only, hints never rebind a confirmed entry); next
//!   hops are resolved with solicitations through the same bounded queue,
//!   outstanding-request bound and per-port share as ARP.
//! - Routers never fragment IPv6: a packet larger than its egress MTU gets
//!   Packet Too Big (with that MTU) and is dropped, so path MTU discovery
//!   works through the gateway.
//! - The hop limit is checked before routing (time exceeded); link-local,
//!   multicast, unspecified and loopback destinations are never routed.
//! - ICMPv6 errors follow RFC 4443 2.4 (e): none about an ICMPv6 error, a
//!   multicast destination (Packet Too Big aside) or an unspecified or
//!   multicast source; they share the ICMP rate limits and quote at most
//!   what fits in 1,280 bytes.
//! - With `ra`, a router advertisement (the /64 prefixes for SLAAC, the
//!   gateway as default router, the LAN MTU) goes to all-nodes every
//!   [`RA_INTERVAL_MS`] and answers each router solicitation.

use super::*;
use crate::arp::NdTable;
use nat::Ipv6Net;
use nat::wire::icmpv6::{
    self, Icmpv6Packet, RouterAdvert, icmp6_is_error, icmp6_type, na_flags, unreach_code,
};
use nat::wire::ipv6::{self as ip6, Ipv6Packet, next_header};
use std::net::Ipv6Addr;

/// How often an unsolicited router advertisement goes out (ms); RFC 4861
/// allows 4–1,800 s, a short interval lets namespaces created after the
/// switch get their prefix without waiting.
pub const RA_INTERVAL_MS: u64 = 10_000;
/// Least time between two advertisements (RFC 4861 10: MIN_DELAY_BETWEEN_RAS, 3 s).
const MIN_DELAY_BETWEEN_RAS_MS: u64 = 3_000;
/// Router lifetime announced (s).
const RA_LIFETIME_S: u16 = 1800;
/// Valid and preferred lifetime of announced prefixes (s).
const RA_PREFIX_LIFETIME_S: u32 = 86_400;

/// `fe80::/64`: where link-local neighbours are.
pub const LINK_LOCAL: Ipv6Net = Ipv6Net {
    addr: Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
    prefix: 64,
};

/// The gateway's IPv6 settings.
#[derive(Debug, Clone)]
pub struct Gw6Config {
    /// Our LAN addresses, each with its on-link prefix.
    pub lan: Vec<Ipv6Net>,
    /// Send router advertisements on the LAN.
    pub ra: bool,
    /// Our uplink address and the uplink prefix.
    pub uplink: Option<Ipv6Net>,
    /// Next hop beyond the uplink prefix.
    pub next_hop: Option<Ipv6Addr>,
    /// NAT66 (masquerade and forwards on the uplink address), if any.
    pub nat: Option<nat::NatConfig<Ipv6Addr>>,
    /// Static routes: destination prefix → next hop on the LAN.
    pub routes: Vec<(Ipv6Net, Ipv6Addr)>,
    /// NPTv6 translations (stateless; their internal prefixes bypass NAT66).
    pub npt: Vec<nat::npt::Npt66>,
}

/// The gateway's IPv6 state.
#[derive(Clone)]
pub struct Gw6 {
    cfg: Gw6Config,
    /// Our LAN link-local address (from the gateway MAC).
    ll: Ipv6Addr,
    /// Our uplink link-local address (from the uplink MAC).
    up_ll: Option<Ipv6Addr>,
    /// LAN neighbours (IPv6 → MAC).
    pub neigh_lan: NdTable,
    /// Uplink neighbours.
    pub neigh_wan: NdTable,
    /// The NAT66 engine (the same engine as NAT44, over IPv6).
    pub nat: Option<Nat<Ipv6Addr>>,
    last_ra: Option<u64>,
}

impl Gw6 {
    /// The state for `cfg`, with empty caches bounded like the IPv4 ones.
    pub fn new(cfg: Gw6Config, gw: &GatewayConfig) -> Gw6 {
        let ll = ip6::link_local(gw.mac.0);
        let up_ll = gw.uplink.as_ref().map(|u| ip6::link_local(u.mac.0));
        let mut neigh_lan =
            NdTable::with_limits(gw.neigh_max, default_per_port(gw.neigh_max), gw.ageing_ms);
        let mut on: Vec<Ipv6Net> = cfg.lan.clone();
        on.push(LINK_LOCAL);
        neigh_lan.set_on_link(&on);
        neigh_lan.set_hints_rebind(false);
        let mut neigh_wan = NdTable::with_limits(gw.neigh_max, gw.neigh_max, gw.ageing_ms);
        let mut on: Vec<Ipv6Net> = cfg.uplink.into_iter().collect();
        on.push(LINK_LOCAL);
        neigh_wan.set_on_link(&on);
        neigh_wan.set_hints_rebind(false);
        Gw6 {
            nat: cfg.nat.clone().map(Nat::new),
            cfg,
            ll,
            up_ll,
            neigh_lan,
            neigh_wan,
            last_ra: None,
        }
    }

    /// Replace the static routes (`vswitch reload`).
    pub fn set_routes(&mut self, routes: Vec<(Ipv6Net, Ipv6Addr)>) {
        self.cfg.routes = routes;
    }

    /// The NPTv6 translation whose internal prefix holds `a`.
    fn npt_of_internal(&self, a: Ipv6Addr) -> Option<nat::npt::Npt66> {
        self.cfg
            .npt
            .iter()
            .find(|n| n.internal().contains(a))
            .copied()
    }

    /// The NPTv6 translation whose external prefix holds `a`.
    fn npt_of_external(&self, a: Ipv6Addr) -> Option<nat::npt::Npt66> {
        self.cfg
            .npt
            .iter()
            .find(|n| n.external().contains(a))
            .copied()
    }

    /// Whether a LAN host may send from `a`: an address of a LAN prefix or behind a static route.
    fn lan_source(&self, a: Ipv6Addr) -> bool {
        self.cfg.lan.iter().any(|p| p.contains(a))
            || self.cfg.routes.iter().any(|(p, _)| p.contains(a))
    }

    /// The uplink's MAC changed: so did its link-local address.
    pub(super) fn set_uplink_mac(&mut self, mac: MacAddr) {
        self.up_ll = Some(ip6::link_local(mac.0));
    }

    /// The configuration.
    pub fn config(&self) -> &Gw6Config {
        &self.cfg
    }

    /// Whether `a` is one of our LAN-side addresses.
    fn lan_own(&self, a: Ipv6Addr) -> bool {
        a == self.ll || self.cfg.lan.iter().any(|p| p.addr == a)
    }

    /// Whether `a` is our uplink address (or uplink link-local).
    fn up_own(&self, a: Ipv6Addr) -> bool {
        Some(a) == self.up_ll || self.cfg.uplink.is_some_and(|p| p.addr == a)
    }

    /// Our LAN address to speak to `to` from: one on its prefix, else the first, else link-local.
    fn lan_src_for(&self, to: Ipv6Addr) -> Ipv6Addr {
        if ip6::is_link_local(to) {
            return self.ll;
        }
        self.cfg
            .lan
            .iter()
            .find(|p| p.contains(to))
            .or(self.cfg.lan.first())
            .map_or(self.ll, |p| p.addr)
    }

    /// Where `dst` leads.
    pub fn route(&self, dst: Ipv6Addr) -> Egress6 {
        route6(&self.cfg, self.ll, self.up_ll, dst)
    }

    /// Translate (or not) the IPv6 packet `pkt` from `from` with NAT66:
    /// `Ok(true)` translated, `Ok(false)` not for the NAT, `Err` its verdict
    /// (a drop, or a fragment held until its first fragment).
    fn nat_step(
        &mut self,
        now: u64,
        from: Side,
        pkt: &mut [u8],
        partial: bool,
        port: PortId,
    ) -> Result<bool, Verdict> {
        let Gw6 {
            cfg,
            nat,
            ll,
            up_ll,
            ..
        } = self;
        let Some(nat) = nat.as_mut() else {
            return Ok(false);
        };
        let side = |a: Ipv6Addr| match route6(cfg, *ll, *up_ll, a) {
            Egress6::Lan(_) => Side::Lan,
            Egress6::Uplink(_) => Side::Wan,
            Egress6::Local | Egress6::None => Side::Local,
        };
        let v = if from == Side::Lan {
            nat.process_as(now, from, pkt, partial, &side, port_subscriber(port))
        } else {
            nat.process(now, from, pkt, partial, &side)
        };
        match v {
            nat::Verdict::Translated => Ok(true),
            nat::Verdict::NotNatted => Ok(false),
            nat::Verdict::Stolen => Err(Verdict::Consumed),
            nat::Verdict::Drop(_) => Err(Verdict::Drop(DropReason::Nat)),
        }
    }
}

/// The NAT66 subscriber of LAN port `port`: connections are charged to the
/// ingress port, not to source addresses (a host picks any number of them in
/// its /64), shown as `100::<port>` (RFC 6666's discard-only prefix: never
/// an address on the wire).
pub fn port_subscriber(port: PortId) -> Ipv6Addr {
    Ipv6Addr::from((0x0100u128 << 112) | port as u128)
}

/// The port of a NAT66 subscriber address made by [`port_subscriber`].
pub fn subscriber_port(a: Ipv6Addr) -> Option<PortId> {
    let v = u128::from(a);
    (v >> 64 == 0x0100 << 48).then_some((v & 0xffff_ffff) as PortId)
}

/// Where `dst` leads, given the gateway's IPv6 addresses, prefixes and next hop.
fn route6(cfg: &Gw6Config, ll: Ipv6Addr, up_ll: Option<Ipv6Addr>, dst: Ipv6Addr) -> Egress6 {
    if dst == ll
        || Some(dst) == up_ll
        || cfg.lan.iter().any(|p| p.addr == dst)
        || cfg.uplink.is_some_and(|p| p.addr == dst)
    {
        return Egress6::Local;
    }
    if cfg.lan.iter().any(|p| p.contains(dst)) {
        return Egress6::Lan(dst);
    }
    if let Some((_, via)) = cfg
        .routes
        .iter()
        .filter(|(p, _)| p.contains(dst))
        .max_by_key(|(p, _)| p.prefix)
    {
        return Egress6::Lan(*via);
    }
    match (cfg.uplink, cfg.next_hop) {
        (Some(p), _) if p.contains(dst) => Egress6::Uplink(dst),
        (Some(_), Some(nh)) => Egress6::Uplink(nh),
        _ => Egress6::None,
    }
}

/// Where an IPv6 destination leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Egress6 {
    /// On the LAN via this next hop.
    Lan(Ipv6Addr),
    /// Through the uplink via this next hop.
    Uplink(Ipv6Addr),
    /// The gateway itself.
    Local,
    /// No route.
    None,
}

/// Never routed: unspecified, loopback, multicast, link-local, IPv4-mapped.
fn unroutable(a: Ipv6Addr) -> bool {
    a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        || ip6::is_link_local(a)
        || a.to_ipv4_mapped().is_some()
}

/// An NDP message in `ip` (see [`icmpv6::parse_ndp`]), with typed MACs.
#[derive(Clone)]
struct Nd {
    kind: u8,
    src: Ipv6Addr,
    target: Option<Ipv6Addr>,
    /// The source or target link-layer address option.
    lladdr: Option<MacAddr>,
    flags: u8,
}

fn parse_nd(ip: &[u8]) -> Option<Nd> {
    let n = icmpv6::parse_ndp(ip)?;
    Some(Nd {
        kind: n.kind,
        src: n.src,
        target: n.target,
        lladdr: n.lladdr.map(MacAddr),
        flags: n.flags,
    })
}

/// The hop limit of the IPv6 packet in `frame` (up to `end`, validated by
/// the caller) and whether its upper layer `u` is an ICMPv6 echo request.
fn hop_and_echo(frame: &[u8], end: usize, u: &ip6::Upper) -> Option<(u8, bool)> {
    let p = Ipv6Packet::new_checked(frame.get(ETH_HLEN..end)?).ok()?;
    let echo = u.proto == next_header::ICMPV6
        && p.packet()
            .get(u.offset..)
            .and_then(|m| Icmpv6Packet::new_checked(m).ok())
            .is_some_and(|m| m.msg_type() == icmp6_type::ECHO_REQUEST);
    Some((p.hop_limit(), echo))
}

/// Push an IPv6 packet built by `emit` (into the buffer after the Ethernet
/// header, returning its length) to `target`, from `src_mac` to `dst_mac`.
fn push6(
    out: &mut Gen,
    target: Target,
    dst_mac: MacAddr,
    src_mac: MacAddr,
    emit: impl FnOnce(&mut [u8]) -> Option<usize>,
) -> bool {
    out.push(target, |b| {
        b[..VNET_HDR_LEN].fill(0);
        let f = &mut b[VNET_HDR_LEN..];
        write_eth(f, dst_mac, src_mac, ethertype::IPV6);
        match emit(&mut f[ETH_HLEN..]) {
            Some(n) => VNET_HDR_LEN + ETH_HLEN + n,
            None => 0,
        }
    })
}

impl Gateway {
    /// The IPv6 state, if the gateway has IPv6 addresses.
    pub fn v6(&self) -> Option<&Gw6> {
        self.v6.as_ref()
    }

    /// The IPv6 state, mutable (its NAT66 table for `conntrack -D`).
    pub fn v6_mut(&mut self) -> Option<&mut Gw6> {
        self.v6.as_mut()
    }

    /// The live IPv6 neighbour `ip` on the LAN (`wan` false) or uplink side.
    pub(super) fn neigh6(&self, wan: bool, ip: Ipv6Addr, now: u64) -> Option<crate::arp::ArpEntry> {
        let v6 = self.v6.as_ref()?;
        let t = if wan { &v6.neigh_wan } else { &v6.neigh_lan };
        t.lookup(ip, now)
    }

    /// Learn an IPv6 neighbour; true if it is in the table.
    fn learn6(
        &mut self,
        wan: bool,
        ip: Ipv6Addr,
        mac: MacAddr,
        port: PortId,
        now: u64,
        how: Heard,
    ) -> bool {
        let Some(v6) = self.v6.as_mut() else {
            return false;
        };
        let t = if wan {
            &mut v6.neigh_wan
        } else {
            &mut v6.neigh_lan
        };
        learn_into(&mut self.counters, t, ip, mac, port, now, how)
    }

    /// Send a neighbor solicitation for `ip` (LAN or uplink side); true if sent.
    pub(super) fn solicit6(&mut self, ip: Ipv6Addr, wan: bool, out: &mut Gen) -> bool {
        let Some(v6) = self.v6.as_ref() else {
            return false;
        };
        let (mac, src, target) = match (wan, self.cfg.uplink.as_ref()) {
            (true, Some(u)) => {
                let src = match v6.cfg.uplink {
                    Some(p) if !ip6::is_link_local(ip) => p.addr,
                    _ => v6.up_ll.unwrap_or(v6.ll),
                };
                (u.mac, src, Target::Port(u.port))
            }
            _ => (self.cfg.mac, v6.lan_src_for(ip), Target::Lan),
        };
        let group = ip6::solicited_node(ip);
        let ok = push6(out, target, MacAddr(ip6::multicast_mac(group)), mac, |b| {
            icmpv6::emit_ns(b, src, group, ip, mac.0)
        });
        if ok {
            self.counters.nd_solicits += 1;
        } else {
            self.counters.drop_gen_full += 1;
        }
        ok
    }

    /// NDP on the LAN: answer solicitations for our addresses, learn
    /// senders (an advertisement answering our solicitation confirms),
    /// answer router solicitations when advertising. `None`: not ours, switch it.
    pub fn lan_nd(
        &mut self,
        now: u64,
        in_port: PortId,
        frame: &[u8],
        out: &mut Gen,
        fdb: &Fdb,
    ) -> Option<Verdict> {
        let v6 = self.v6.as_ref()?;
        let eth = EthernetFrame::new_checked(frame).ok()?;
        let nd = parse_nd(eth.payload())?;
        let src_mac = eth.src();
        let to_us = eth.dst() == self.cfg.mac;
        match nd.kind {
            icmp6_type::NEIGHBOR_SOLICIT => {
                let target = nd.target?;
                if !v6.lan_own(target) {
                    if let (Some(m), Some(v6)) = (nd.lladdr, self.v6.as_mut()) {
                        v6.neigh_lan.refresh(nd.src, m, in_port, now);
                    }
                    return None;
                }
                let mac = self.cfg.mac;
                if nd.src.is_unspecified() {
                    // Someone's DAD probe for our address: defend it.
                    let all = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
                    let ok = push6(
                        out,
                        Target::Port(in_port),
                        MacAddr(ip6::multicast_mac(all)),
                        mac,
                        |b| {
                            icmpv6::emit_na(
                                b,
                                target,
                                all,
                                target,
                                mac.0,
                                na_flags::ROUTER | na_flags::OVERRIDE,
                            )
                        },
                    );
                    self.count_na(ok);
                    return Some(Verdict::Consumed);
                }
                let peer_mac = nd.lladdr.unwrap_or(src_mac);
                if nd.lladdr.is_some()
                    && self.learn6(false, nd.src, peer_mac, in_port, now, Heard::Hint)
                {
                    self.release(now, nd.src.into(), false, out, fdb);
                }
                let flags = na_flags::ROUTER | na_flags::SOLICITED | na_flags::OVERRIDE;
                let ok = push6(out, Target::Port(in_port), peer_mac, mac, |b| {
                    icmpv6::emit_na(b, target, nd.src, target, mac.0, flags)
                });
                self.count_na(ok);
                Some(Verdict::Consumed)
            }
            icmp6_type::NEIGHBOR_ADVERT => {
                let target = nd.target?;
                if v6.lan_own(target) {
                    return Some(Verdict::Drop(DropReason::GwArp)); // someone claims our address
                }
                let how =
                    if nd.flags & na_flags::SOLICITED != 0 && self.solicited(target.into(), now) {
                        Heard::Reply
                    } else {
                        Heard::Hint
                    };
                if let Some(m) = nd.lladdr
                    && self.learn6(false, target, m, in_port, now, how)
                {
                    self.release(now, target.into(), false, out, fdb);
                }
                to_us.then_some(Verdict::Consumed)
            }
            icmp6_type::ROUTER_SOLICIT => {
                if let Some(m) = nd.lladdr
                    && !nd.src.is_unspecified()
                {
                    self.learn6(false, nd.src, m, in_port, now, Heard::Hint);
                }
                // Answered with the all-nodes advertisement, at most one per
                // MIN_DELAY_BETWEEN_RAS (RFC 4861 6.2.6): a host soliciting
                // in a loop gets nothing more, and the others lose nothing.
                let due = self.v6.as_ref().is_some_and(|v| {
                    v.cfg.ra
                        && v.last_ra
                            .is_none_or(|t| now.saturating_sub(t) >= MIN_DELAY_BETWEEN_RAS_MS)
                });
                if due {
                    self.advertise(now, Target::Lan, out);
                }
                to_us.then_some(Verdict::Consumed)
            }
            _ => None,
        }
    }

    fn count_na(&mut self, ok: bool) {
        if ok {
            self.counters.nd_adverts += 1;
        } else {
            self.counters.drop_gen_full += 1;
        }
    }

    /// Send a router advertisement to all-nodes out of `target`.
    fn advertise(&mut self, now: u64, target: Target, out: &mut Gen) {
        let Some(v6) = self.v6.as_mut() else { return };
        v6.last_ra = Some(now);
        let prefix = v6
            .cfg
            .lan
            .iter()
            .find(|p| p.prefix == 64)
            .map(|p| (Ipv6Addr::from(u128::from(p.addr) & (u128::MAX << 64)), 64));
        let ra = RouterAdvert {
            lifetime: RA_LIFETIME_S,
            prefix,
            prefix_lifetime: RA_PREFIX_LIFETIME_S,
            mtu: Some(self.cfg.lan_mtu),
            mac: self.cfg.mac.0,
        };
        let (ll, mac) = (v6.ll, self.cfg.mac);
        let all = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
        let ok = push6(out, target, MacAddr(ip6::multicast_mac(all)), mac, |b| {
            icmpv6::emit_ra(b, ll, all, &ra)
        });
        if ok {
            self.counters.ra_sent += 1;
        } else {
            self.counters.drop_gen_full += 1;
        }
    }

    /// Periodic work between batches: the unsolicited router advertisement.
    pub fn periodic(&mut self, now: u64, out: &mut Gen) {
        let due = self.v6.as_ref().is_some_and(|v| {
            v.cfg.ra
                && v.last_ra
                    .is_none_or(|t| now.saturating_sub(t) >= RA_INTERVAL_MS)
        });
        if due {
            self.advertise(now, Target::Lan, out);
        }
    }

    /// An ICMPv6 error about `orig` (an IPv6 packet, or its start) from
    /// `my_ip`, unless RFC 4443 2.4 (e) forbids it or the rate limit holds it back.
    #[allow(clippy::too_many_arguments)]
    fn error6(
        &mut self,
        now: u64,
        out: &mut Gen,
        target: Target,
        eth_dst: MacAddr,
        eth_src: MacAddr,
        my_ip: Ipv6Addr,
        orig: &[u8],
        kind: u8,
        code: u8,
        word: u32,
    ) -> bool {
        let Ok(p) = Ipv6Packet::new_checked(orig) else {
            return false;
        };
        let (src, dst) = (p.src(), p.dst());
        if src.is_unspecified() || src.is_multicast() {
            return false;
        }
        if dst.is_multicast() && kind != icmp6_type::PACKET_TOO_BIG {
            return false;
        }
        if let Ok(u) = p.upper()
            && u.proto == next_header::ICMPV6
            && u.frag.is_none_or(|f| f.offset == 0)
            && p.packet().get(u.offset).is_none_or(|&t| icmp6_is_error(t))
        {
            return false;
        }
        let o = src.octets();
        let key = u32::from_be_bytes([o[12], o[13], o[14], o[15]])
            ^ u32::from_be_bytes([o[4], o[5], o[6], o[7]]);
        if !self.icmp_allowed_key(now, key) {
            return false;
        }
        let q = p.packet();
        let ok = push6(out, target, eth_dst, eth_src, |b| {
            icmpv6::emit_error(b, my_ip, src, kind, code, word, q)
        });
        if !ok {
            self.counters.drop_gen_full += 1;
        }
        ok
    }

    /// A frame from the LAN to the gateway's MAC carrying IPv6.
    pub(super) fn lan_ipv6(
        &mut self,
        now: u64,
        in_port: PortId,
        vnet: &mut [u8],
        frame: &mut [u8],
        out: &mut Gen,
        fdb: &Fdb,
    ) -> Verdict {
        let Some(v6) = self.v6.as_ref() else {
            return self.drop(GwDrop::NotIpv4);
        };
        let src_mac = EthernetFrame::new_checked(&*frame).map_or(MacAddr::default(), |e| e.src());
        let Ok(p) = Ipv6Packet::new_checked(&frame[ETH_HLEN..]) else {
            return self.drop(GwDrop::Malformed);
        };
        let Ok(u) = p.upper() else {
            return self.drop(GwDrop::Malformed);
        };
        let (src, dst, hop) = (p.src(), p.dst(), p.hop_limit());
        let end = ETH_HLEN + p.total_len();
        let on_lan = v6.lan_source(src);
        if unroutable(src) && !ip6::is_link_local(src) || v6.lan_own(src) || v6.up_own(src) {
            return self.drop(GwDrop::SpoofedSrc);
        }
        let taken = v6
            .neigh_lan
            .lookup(src, now)
            .is_some_and(|e| e.confirmed && (e.port != in_port || e.mac != src_mac));
        if taken {
            return self.drop(GwDrop::SpoofedSrc); // another host's confirmed address
        }
        if v6.lan_own(dst) || (v6.up_own(dst) && v6.nat.is_none()) {
            return self.local6(now, frame, end, in_port, src_mac, out, self.cfg.mac, u);
        }
        if !on_lan {
            return self.drop(GwDrop::SpoofedSrc); // link-local sources are neither routed nor translated
        }
        if v6.up_own(dst) {
            return self.hairpin6(now, in_port, src_mac, vnet, frame, end, u, out, fdb);
        }
        if unroutable(dst) {
            return self.drop(GwDrop::MartianDst);
        }
        let my = v6.lan_src_for(src);
        if hop <= 1 {
            let q = &frame[ETH_HLEN..end];
            if self.error6(
                now,
                out,
                Target::Port(in_port),
                src_mac,
                self.cfg.mac,
                my,
                q,
                icmp6_type::TIME_EXCEEDED,
                0,
                0,
            ) {
                self.counters.time_exceeded += 1;
            }
            return Verdict::Consumed;
        }
        // NPTv6 hairpin: to another LAN host's external address. Routed (and
        // checked, errors quoting the packet as sent) as its internal
        // address; translated just before it leaves, the source too, so that
        // replies come back the same way. A source outside every NPTv6
        // prefix could not be answered at the address it used: refused.
        let hairpin = v6.npt_of_external(dst);
        let src_npt = v6.npt_of_internal(src);
        let dst = match hairpin.map(|n| n.inbound(dst)) {
            None => dst,
            Some(Some(d)) if src_npt.is_some() => d,
            Some(Some(_)) => {
                let code = unreach_code::ADMIN_PROHIBITED;
                return self.unreachable6(now, out, in_port, src_mac, my, &frame[..end], code);
            }
            Some(None) => return self.drop(GwDrop::NptUnmappable),
        };
        let Some(v6) = self.v6.as_ref() else {
            return self.drop(GwDrop::NotIpv4);
        };
        let egress = v6.route(dst);
        let (nh, wan) = match egress {
            Egress6::Lan(nh) => (nh, false),
            Egress6::Uplink(nh) => (nh, true),
            Egress6::Local | Egress6::None => {
                let code = unreach_code::NO_ROUTE;
                return self.unreachable6(now, out, in_port, src_mac, my, &frame[..end], code);
            }
        };
        let mtu = if wan {
            self.cfg.uplink.as_ref().map_or(self.cfg.lan_mtu, |x| x.mtu)
        } else {
            self.cfg.lan_mtu
        } as usize;
        if seg_len(vnet, &frame[ETH_HLEN..end], u.offset, u.proto) > mtu {
            let q = &frame[ETH_HLEN..end];
            let k = icmp6_type::PACKET_TOO_BIG;
            let m = mtu as u32;
            self.error6(
                now,
                out,
                Target::Port(in_port),
                src_mac,
                self.cfg.mac,
                my,
                q,
                k,
                0,
                m,
            );
            self.counters.packet_too_big += 1;
            return Verdict::Consumed;
        }
        let partial = vnet[0] & VNET_F_NEEDS_CSUM != 0;
        // Leaving the site: NPTv6 for its internal prefixes (stateless,
        // checksum-neutral), NAT66 for the rest; a hairpin both ways.
        if let (Some(n), Some(m)) = (hairpin, src_npt) {
            let pkt = &mut frame[ETH_HLEN..end];
            if n.translate_in(pkt).is_err() || m.translate_out(pkt).is_err() {
                return self.drop(GwDrop::NptUnmappable);
            }
            self.counters.npt_in += 1;
            self.counters.npt_out += 1;
            return self.forward6(now, in_port, nh, wan, vnet, frame, end, out, fdb);
        }
        match src_npt.filter(|_| wan) {
            Some(n) => {
                if n.translate_out(&mut frame[ETH_HLEN..end]).is_err() {
                    return self.drop(GwDrop::NptUnmappable);
                }
                self.counters.npt_out += 1;
            }
            None => {
                if let Some(v6) = self.v6.as_mut()
                    && let Err(v) =
                        v6.nat_step(now, Side::Lan, &mut frame[ETH_HLEN..end], partial, in_port)
                {
                    return v;
                }
            }
        }
        self.forward6(now, in_port, nh, wan, vnet, frame, end, out, fdb)
    }

    /// ICMPv6 destination unreachable (`code`) from `my` back to the LAN
    /// sender of `frame` (on `in_port`, from `src_mac`), counted.
    #[allow(clippy::too_many_arguments)]
    fn unreachable6(
        &mut self,
        now: u64,
        out: &mut Gen,
        in_port: PortId,
        src_mac: MacAddr,
        my: Ipv6Addr,
        frame: &[u8],
        code: u8,
    ) -> Verdict {
        let (k, mac) = (icmp6_type::DEST_UNREACH, self.cfg.mac);
        let q = &frame[ETH_HLEN..];
        if self.error6(
            now,
            out,
            Target::Port(in_port),
            src_mac,
            mac,
            my,
            q,
            k,
            code,
            0,
        ) {
            self.counters.unreachable += 1;
        }
        Verdict::Consumed
    }

    /// A LAN packet to our uplink address with NAT66: a forward or another
    /// host's mapping hairpins it back to the LAN (the target sees the
    /// external address); otherwise it is for the gateway itself. The hop
    /// limit is checked before NAT.
    #[allow(clippy::too_many_arguments)]
    fn hairpin6(
        &mut self,
        now: u64,
        in_port: PortId,
        src_mac: MacAddr,
        vnet: &mut [u8],
        frame: &mut [u8],
        end: usize,
        u: ip6::Upper,
        out: &mut Gen,
        fdb: &Fdb,
    ) -> Verdict {
        let Some(v6) = self.v6.as_ref() else {
            return self.drop(GwDrop::NotIpv4);
        };
        let my = v6.cfg.uplink.map_or(v6.ll, |p| p.addr);
        let Some((hop, echo)) = hop_and_echo(frame, end, &u) else {
            return self.drop(GwDrop::Malformed);
        };
        if hop <= 1 && !echo {
            let q = &frame[ETH_HLEN..end];
            let (k, mac) = (icmp6_type::TIME_EXCEEDED, self.cfg.mac);
            if self.error6(
                now,
                out,
                Target::Port(in_port),
                src_mac,
                mac,
                my,
                q,
                k,
                0,
                0,
            ) {
                self.counters.time_exceeded += 1;
            }
            return Verdict::Consumed;
        }
        let partial = vnet[0] & VNET_F_NEEDS_CSUM != 0;
        let pkt = &mut frame[ETH_HLEN..end];
        let translated = match self
            .v6
            .as_mut()
            .map(|v| v.nat_step(now, Side::Lan, pkt, partial, in_port))
        {
            Some(Ok(t)) => t,
            Some(Err(v)) => return v,
            None => false,
        };
        if !translated {
            return self.local6(now, frame, end, in_port, src_mac, out, self.cfg.mac, u);
        }
        self.after_nat6(now, in_port, vnet, frame, end, out, fdb)
    }

    /// Route a packet NAT66 just translated towards its new destination
    /// (DNAT, hairpin): the LAN MTU is checked, the hop limit decremented.
    #[allow(clippy::too_many_arguments)]
    fn after_nat6(
        &mut self,
        now: u64,
        in_port: PortId,
        vnet: &mut [u8],
        frame: &mut [u8],
        end: usize,
        out: &mut Gen,
        fdb: &Fdb,
    ) -> Verdict {
        let (dst, hop) = match Ipv6Packet::new_checked(&frame[ETH_HLEN..end]) {
            Ok(p) => (p.dst(), p.hop_limit()),
            Err(_) => return self.drop(GwDrop::Malformed),
        };
        if unroutable(dst) {
            return self.drop(GwDrop::MartianDst);
        }
        if hop <= 1 {
            // An echo request hairpinned through a mapping: it may not leave with hop limit 0.
            return self.drop(GwDrop::HopLimit);
        }
        let (nh, wan) = match self.v6.as_ref().map(|v| v.route(dst)) {
            Some(Egress6::Lan(nh)) => (nh, false),
            Some(Egress6::Uplink(nh)) => (nh, true),
            _ => return self.drop(GwDrop::NoRoute),
        };
        if !wan && end - ETH_HLEN > self.cfg.lan_mtu as usize && !is_gso(vnet) {
            return self.drop(GwDrop::TooBig);
        }
        self.forward6(now, in_port, nh, wan, vnet, frame, end, out, fdb)
    }

    /// Route an IPv6 packet whose checks passed: hop limit − 1, neighbour, out (or queue).
    #[allow(clippy::too_many_arguments)]
    fn forward6(
        &mut self,
        now: u64,
        in_port: PortId,
        nh: Ipv6Addr,
        wan: bool,
        vnet: &[u8],
        frame: &mut [u8],
        end: usize,
        out: &mut Gen,
        fdb: &Fdb,
    ) -> Verdict {
        match Ipv6Packet::new_checked(&mut frame[ETH_HLEN..end]) {
            Ok(mut p) => p.dec_hop_limit(),
            Err(_) => return self.drop(GwDrop::Malformed),
        }
        self.counters.routed += 1;
        let Some(n) = self.neigh6(wan, nh, now) else {
            return self.enqueue(now, in_port, nh.into(), wan, vnet, &frame[..end], out);
        };
        match (wan, self.cfg.uplink.as_ref()) {
            (true, Some(u)) => {
                write_eth(frame, n.mac, u.mac, ethertype::IPV6);
                Verdict::Unicast(u.port)
            }
            _ => {
                write_eth(frame, n.mac, self.cfg.mac, ethertype::IPV6);
                match fdb.lookup(&n.mac, now) {
                    Some(p) => Verdict::Unicast(p),
                    None => Verdict::FloodAll,
                }
            }
        }
    }

    /// Deliver IPv6 to the gateway itself: answer echo requests (in place,
    /// with a fresh hop limit), refuse UDP and TCP with port unreachable (it
    /// listens on nothing), under the ICMP error rate limit.
    #[allow(clippy::too_many_arguments)]
    fn local6(
        &mut self,
        now: u64,
        frame: &mut [u8],
        end: usize,
        in_port: PortId,
        src_mac: MacAddr,
        out: &mut Gen,
        my_mac: MacAddr,
        u: ip6::Upper,
    ) -> Verdict {
        // Answers come from the address the packet was sent to (global,
        // link-local or the uplink's): the echo's pseudo-header stays the same.
        let Ok(my_ip) = Ipv6Packet::new_checked(&frame[ETH_HLEN..end]).map(|p| p.dst()) else {
            return self.drop(GwDrop::Malformed);
        };
        let first = u.frag.is_none_or(|f| f.offset == 0);
        let l4 = ETH_HLEN + u.offset;
        let echo = frame
            .get(l4..end)
            .and_then(|m| Icmpv6Packet::new_checked(m).ok())
            .is_some_and(|m| m.msg_type() == icmp6_type::ECHO_REQUEST && m.word().is_some());
        match u.proto {
            next_header::ICMPV6 if first && echo && u.frag.is_none() => {
                let Ok(mut p) = Ipv6Packet::new_checked(&mut frame[ETH_HLEN..end]) else {
                    return self.drop(GwDrop::Malformed);
                };
                let peer = p.src();
                // The pseudo-header sum is the same with the addresses swapped.
                p.set_src(my_ip);
                p.set_dst(peer);
                p.set_hop_limit(OWN_TTL);
                if let Ok(mut m) = Icmpv6Packet::new_checked(&mut frame[l4..end]) {
                    m.set_msg_type(icmp6_type::ECHO_REPLY);
                }
                write_eth(frame, src_mac, my_mac, ethertype::IPV6);
                self.counters.echo_replies += 1;
                Verdict::Reply
            }
            next_header::UDP | next_header::TCP if first => {
                let q = &frame[ETH_HLEN..end];
                let (k, c) = (icmp6_type::DEST_UNREACH, unreach_code::PORT);
                if self.error6(
                    now,
                    out,
                    Target::Port(in_port),
                    src_mac,
                    my_mac,
                    my_ip,
                    q,
                    k,
                    c,
                    0,
                ) {
                    self.counters.unreachable += 1;
                }
                Verdict::Consumed
            }
            _ => {
                self.counters.drop_local += 1;
                Verdict::Drop(DropReason::GwLocal)
            }
        }
    }

    /// An IPv6 frame from the uplink: NDP for our uplink address, packets
    /// for our uplink address, packets routed to the LAN prefixes.
    pub(super) fn uplink_ipv6(
        &mut self,
        now: u64,
        vnet: &mut [u8],
        frame: &mut [u8],
        out: &mut Gen,
        fdb: &Fdb,
    ) -> Verdict {
        let (Some(up), Some(v6)) = (self.cfg.uplink, self.v6.as_ref()) else {
            self.counters.ignored_multicast += 1;
            return Verdict::Consumed;
        };
        let Ok(eth) = EthernetFrame::new_checked(&*frame) else {
            return Verdict::Drop(DropReason::Runt);
        };
        let (dst_mac, src_mac) = (eth.dst(), eth.src());
        if let Some(nd) = parse_nd(eth.payload()) {
            match (nd.kind, nd.target) {
                (icmp6_type::NEIGHBOR_SOLICIT, Some(t))
                    if (v6.up_own(t) || v6.npt_of_external(t).is_some())
                        && !nd.src.is_unspecified() =>
                {
                    let peer = nd.lladdr.unwrap_or(src_mac);
                    // A sender claiming one of our LAN's or translated
                    // addresses teaches nothing (as its data would be dropped).
                    let spoofed = v6.lan_source(nd.src)
                        || v6.npt_of_external(nd.src).is_some()
                        || v6.lan_own(nd.src)
                        || v6.up_own(nd.src);
                    // A proxied target (NPTv6) is answered without Override
                    // (RFC 4861 7.2.8): a real owner's advertisement wins.
                    let proxied = !v6.up_own(t);
                    if nd.lladdr.is_some()
                        && !spoofed
                        && self.learn6(true, nd.src, peer, up.port, now, Heard::Hint)
                    {
                        self.release(now, nd.src.into(), true, out, fdb);
                    }
                    let flags = if proxied {
                        na_flags::ROUTER | na_flags::SOLICITED
                    } else {
                        na_flags::ROUTER | na_flags::SOLICITED | na_flags::OVERRIDE
                    };
                    let ok = push6(out, Target::Port(up.port), peer, up.mac, |b| {
                        icmpv6::emit_na(b, t, nd.src, t, up.mac.0, flags)
                    });
                    self.count_na(ok);
                }
                (icmp6_type::NEIGHBOR_ADVERT, Some(t)) if !v6.up_own(t) => {
                    let how =
                        if nd.flags & na_flags::SOLICITED != 0 && self.solicited(t.into(), now) {
                            Heard::Reply
                        } else {
                            Heard::Hint
                        };
                    if let Some(m) = nd.lladdr
                        && self.learn6(true, t, m, up.port, now, how)
                    {
                        self.release(now, t.into(), true, out, fdb);
                    }
                }
                _ => {}
            }
            return Verdict::Consumed;
        }
        if dst_mac.0[0] & 1 == 1 {
            self.counters.ignored_multicast += 1;
            return Verdict::Consumed;
        }
        if dst_mac != up.mac {
            self.counters.drop_not_for_us += 1;
            return Verdict::Drop(DropReason::GwNotForUs);
        }
        let Ok(p) = Ipv6Packet::new_checked(&frame[ETH_HLEN..]) else {
            return self.drop(GwDrop::Malformed);
        };
        let Ok(u) = p.upper() else {
            return self.drop(GwDrop::Malformed);
        };
        let (src, dst, hop) = (p.src(), p.dst(), p.hop_limit());
        let end = ETH_HLEN + p.total_len();
        let lan_src = v6.lan_source(src) || v6.npt_of_external(src).is_some();
        if (unroutable(src) && !ip6::is_link_local(src))
            || lan_src
            || v6.lan_own(src)
            || v6.up_own(src)
        {
            return self.drop(GwDrop::SpoofedSrc);
        }
        let my = v6.cfg.uplink.map_or(v6.ll, |p| p.addr);
        if v6.up_own(dst) && v6.nat.is_some() && !ip6::is_link_local(src) {
            return self.inbound6(now, vnet, frame, end, u, src_mac, out, fdb);
        }
        if v6.up_own(dst) {
            return self.local6(now, frame, end, up.port, src_mac, out, up.mac, u);
        }
        // To an NPTv6 external address: routed as its internal address.
        let npt = v6.npt_of_external(dst);
        let dst = match npt.map(|n| n.inbound(dst)) {
            None => dst,
            Some(Some(d)) => d,
            Some(None) => return self.drop(GwDrop::NptUnmappable),
        };
        let Egress6::Lan(nh) = v6.route(dst) else {
            self.counters.drop_not_for_us += 1;
            return Verdict::Drop(DropReason::GwNotForUs);
        };
        // Hosts behind NAT66 are reached only through it (its filtering, its
        // state), never routed to from outside: as in IPv4.
        if v6
            .nat
            .as_ref()
            .is_some_and(|n| n.config().masquerade.iter().any(|m| m.contains(dst)))
        {
            self.counters.drop_not_for_us += 1;
            return Verdict::Drop(DropReason::GwNotForUs);
        }
        if ip6::is_link_local(src) {
            return self.drop(GwDrop::SpoofedSrc); // link-local sources are not routed
        }
        let err_to = Target::Port(up.port);
        if hop <= 1 {
            let q = &frame[ETH_HLEN..end];
            if self.error6(
                now,
                out,
                err_to,
                src_mac,
                up.mac,
                my,
                q,
                icmp6_type::TIME_EXCEEDED,
                0,
                0,
            ) {
                self.counters.time_exceeded += 1;
            }
            return Verdict::Consumed;
        }
        let mtu = self.cfg.lan_mtu as usize;
        if seg_len(vnet, &frame[ETH_HLEN..end], u.offset, u.proto) > mtu {
            let q = &frame[ETH_HLEN..end];
            self.error6(
                now,
                out,
                err_to,
                src_mac,
                up.mac,
                my,
                q,
                icmp6_type::PACKET_TOO_BIG,
                0,
                mtu as u32,
            );
            self.counters.packet_too_big += 1;
            return Verdict::Consumed;
        }
        if let Some(n) = npt {
            if n.translate_in(&mut frame[ETH_HLEN..end]).is_err() {
                return self.drop(GwDrop::NptUnmappable);
            }
            self.counters.npt_in += 1;
        }
        self.forward6(now, up.port, nh, false, vnet, frame, end, out, fdb)
    }

    /// A packet from the uplink to our uplink address with NAT66: translated
    /// to a LAN host (a reply, a forward), or for the gateway itself. The hop
    /// limit and the LAN MTU are checked before NAT (errors quote it as sent).
    #[allow(clippy::too_many_arguments)]
    fn inbound6(
        &mut self,
        now: u64,
        vnet: &mut [u8],
        frame: &mut [u8],
        end: usize,
        u: ip6::Upper,
        src_mac: MacAddr,
        out: &mut Gen,
        fdb: &Fdb,
    ) -> Verdict {
        let (Some(up), Some(v6)) = (self.cfg.uplink, self.v6.as_ref()) else {
            return self.drop(GwDrop::NotIpv4);
        };
        let my = v6.cfg.uplink.map_or(v6.ll, |p| p.addr);
        let Some((hop, echo)) = hop_and_echo(frame, end, &u) else {
            return self.drop(GwDrop::Malformed);
        };
        let err_to = Target::Port(up.port);
        if hop <= 1 && !echo {
            let q = &frame[ETH_HLEN..end];
            let k = icmp6_type::TIME_EXCEEDED;
            if self.error6(now, out, err_to, src_mac, up.mac, my, q, k, 0, 0) {
                self.counters.time_exceeded += 1;
            }
            return Verdict::Consumed;
        }
        let mtu = self.cfg.lan_mtu as usize;
        if seg_len(vnet, &frame[ETH_HLEN..end], u.offset, u.proto) > mtu && !echo {
            let q = &frame[ETH_HLEN..end];
            let k = icmp6_type::PACKET_TOO_BIG;
            self.error6(now, out, err_to, src_mac, up.mac, my, q, k, 0, mtu as u32);
            self.counters.packet_too_big += 1;
            return Verdict::Consumed;
        }
        let partial = vnet[0] & VNET_F_NEEDS_CSUM != 0;
        let pkt = &mut frame[ETH_HLEN..end];
        let translated = match self
            .v6
            .as_mut()
            .map(|v| v.nat_step(now, Side::Wan, pkt, partial, up.port))
        {
            Some(Ok(t)) => t,
            Some(Err(v)) => return v,
            None => false,
        };
        if !translated {
            return self.local6(now, frame, end, up.port, src_mac, out, up.mac, u);
        }
        self.after_nat6(now, up.port, vnet, frame, end, out, fdb)
    }
}

impl Gateway {
    /// Hand IPv6 fragments NAT66 released (their first fragment arrived) to
    /// `out` for routing.
    pub(super) fn flush_released6(&mut self, out: &mut Gen) {
        let Some(nat) = self.v6.as_mut().and_then(|v| v.nat.as_mut()) else {
            return;
        };
        if !nat.has_released() {
            return;
        }
        let mut full = 0;
        nat.take_released(|pkt| {
            let ok = out.push(Target::Route, |b| {
                b[..VNET_HDR_LEN].fill(0);
                let f = &mut b[VNET_HDR_LEN..];
                write_eth(f, MacAddr::default(), MacAddr::default(), ethertype::IPV6);
                f[ETH_HLEN..ETH_HLEN + pkt.len()].copy_from_slice(pkt);
                VNET_HDR_LEN + ETH_HLEN + pkt.len()
            });
            if !ok {
                full += 1;
            }
        });
        self.counters.drop_gen_full += full;
    }

    /// Route generated frame `i` if it is IPv6 (a released fragment): hop
    /// limit, MTU (too big: dropped, no error about a later fragment),
    /// neighbour (or the resolution queue). False if it is not IPv6.
    pub(super) fn route_gen6(&mut self, i: usize, now: u64, out: &mut Gen, fdb: &Fdb) -> bool {
        let (vnet, frame) = out.parts_mut(i);
        if frame.get(12..14) != Some(&ethertype::IPV6.to_be_bytes()) {
            return false;
        }
        let end = frame.len();
        let dst = Ipv6Packet::new_checked(&frame[ETH_HLEN..]).map(|p| (p.dst(), p.hop_limit()));
        let route = match (dst, self.v6.as_ref()) {
            (Ok((d, hop)), Some(v6)) if hop > 1 => v6.route(d),
            _ => Egress6::None,
        };
        let (nh, wan) = match route {
            Egress6::Lan(nh) => (nh, false),
            Egress6::Uplink(nh) => (nh, true),
            _ => {
                out.set_target(i, Target::Discard);
                self.drop(GwDrop::NoRoute);
                return true;
            }
        };
        let mtu = if wan {
            self.cfg.uplink.as_ref().map_or(self.cfg.lan_mtu, |u| u.mtu)
        } else {
            self.cfg.lan_mtu
        } as usize;
        if end - ETH_HLEN > mtu {
            out.set_target(i, Target::Discard);
            self.drop(GwDrop::TooBig);
            return true;
        }
        let mut v = [0u8; VNET_HDR_LEN];
        v.copy_from_slice(&vnet[..VNET_HDR_LEN]);
        if let Ok(mut p) = Ipv6Packet::new_checked(&mut frame[ETH_HLEN..]) {
            p.dec_hop_limit();
        }
        self.counters.routed += 1;
        match self.neigh6(wan, nh, now) {
            Some(n) => {
                let (src_mac, t) = match (wan, self.cfg.uplink.as_ref()) {
                    (true, Some(u)) => (u.mac, Target::Port(u.port)),
                    _ => (
                        self.cfg.mac,
                        fdb.lookup(&n.mac, now).map_or(Target::Lan, Target::Port),
                    ),
                };
                write_eth(frame, n.mac, src_mac, ethertype::IPV6);
                out.set_target(i, t);
            }
            None => {
                let (_, frame) = out.parts_mut(i);
                let copy = self.park(now, GENERATED, nh.into(), wan, &v, frame);
                out.set_target(i, Target::Discard);
                if copy {
                    self.request(now, nh.into(), wan, out);
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{GW_MAC, RED, UP_MAC, WAN, gw_with};
    use super::*;
    use nat::wire::icmpv6::{Icmpv6Packet, ndp_opt};
    use nat::wire::ipv6::{IPV6_HLEN, emit_header};

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }
    const RED6: &str = "fd00:15::1";
    const WAN6: &str = "2001:db8:113::10";

    fn fdb() -> Fdb {
        Fdb::new(4, 64, 64, 300_000)
    }

    /// An Ethernet frame around an IPv6 packet written by `emit` (the
    /// wire layer's emitters, themselves checked against etherparse).
    fn frame(dst: MacAddr, src: MacAddr, emit: impl FnOnce(&mut [u8]) -> Option<usize>) -> Vec<u8> {
        let mut f = vec![0u8; 2000];
        write_eth(&mut f, dst, src, ethertype::IPV6);
        let n = emit(&mut f[ETH_HLEN..]).unwrap();
        f.truncate(ETH_HLEN + n);
        f
    }

    /// An echo request of `size` data bytes after RFC 4443 4.1.
    fn echo(src: &str, dst: &str, hop: u8, size: usize) -> Vec<u8> {
        frame(GW_MAC, RED, |b| {
            let len = 8 + size;
            emit_header(b, a(src), a(dst), next_header::ICMPV6, hop, len as u16);
            let m = &mut b[IPV6_HLEN..IPV6_HLEN + len];
            m[..8].copy_from_slice(&[icmp6_type::ECHO_REQUEST, 0, 0, 0, 0x12, 0x34, 0, 1]);
            Icmpv6Packet::new_checked(&mut *m)
                .unwrap()
                .fill_checksum(a(src), a(dst));
            Some(IPV6_HLEN + len)
        })
    }

    /// A UDP datagram (RFC 768 header, checksum left 0: nothing here checks it).
    fn udp(src: &str, dst: &str, hop: u8) -> Vec<u8> {
        frame(GW_MAC, RED, |b| {
            emit_header(b, a(src), a(dst), next_header::UDP, hop, 12);
            b[IPV6_HLEN..IPV6_HLEN + 12]
                .copy_from_slice(&[0x30, 0x39, 0, 53, 0, 12, 0, 0, 1, 2, 3, 4]);
            Some(IPV6_HLEN + 12)
        })
    }

    /// The ICMPv6 message of an IPv6 frame, its checksum verified: (src, dst, type, code, word).
    fn icmp6(f: &[u8]) -> (Ipv6Addr, Ipv6Addr, u8, u8, u32) {
        let p = Ipv6Packet::new_checked(&f[ETH_HLEN..]).unwrap();
        let u = p.upper().unwrap();
        assert_eq!(u.proto, next_header::ICMPV6);
        let m = Icmpv6Packet::new_checked(&p.packet()[u.offset..]).unwrap();
        assert!(m.checksum_ok(p.src(), p.dst()), "ICMPv6 checksum");
        (
            p.src(),
            p.dst(),
            m.msg_type(),
            m.code(),
            m.word().unwrap_or(0),
        )
    }

    fn lan(g: &mut Gateway, f: &mut [u8], out: &mut Gen) -> Verdict {
        let mut vnet = [0u8; VNET_HDR_LEN];
        if let Some(v) = g.lan_nd(0, 0, f, out, &fdb()) {
            return v;
        }
        g.from_lan(0, 0, &mut vnet, f, out, &fdb())
    }

    /// red solicits the gateway's address, as its kernel does before the first packet.
    fn red_solicits(g: &mut Gateway, out: &mut Gen) {
        let t = a("fd00:15::5");
        let group = ip6::solicited_node(t);
        let mut f = frame(MacAddr(ip6::multicast_mac(group)), RED, |b| {
            icmpv6::emit_ns(b, a(RED6), group, t, RED.0)
        });
        assert_eq!(lan(g, &mut f, out), Verdict::Consumed);
    }

    #[test]
    fn answers_neighbor_solicitations_and_learns_the_sender() {
        let mut g = gw_with(1500, 64);
        let mut out = Gen::new();
        red_solicits(&mut g, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out.target(0), Target::Port(0));
        let f = out.batch().frame(0);
        assert_eq!(&f[..6], &RED.0);
        let (src, dst, t, _, _) = icmp6(f);
        assert_eq!(
            (src, dst, t),
            (a("fd00:15::5"), a(RED6), icmp6_type::NEIGHBOR_ADVERT)
        );
        let m = Icmpv6Packet::new_checked(&f[ETH_HLEN + IPV6_HLEN..]).unwrap();
        assert_eq!(m.link_layer(ndp_opt::TARGET_LL), Ok(Some(GW_MAC.0)));
        assert_eq!(
            m.na_flags().unwrap() & na_flags::SOLICITED,
            na_flags::SOLICITED
        );
        assert_eq!(g.neigh6(false, a(RED6), 0).unwrap().mac, RED);
        assert_eq!(g.counters.nd_adverts, 1);
        // Our link-local address is answered too; others' solicitations are not ours.
        let mut out = Gen::new();
        let ll = ip6::link_local(GW_MAC.0);
        let mut f = frame(
            MacAddr(ip6::multicast_mac(ip6::solicited_node(ll))),
            RED,
            |b| icmpv6::emit_ns(b, a("fe80::1"), ip6::solicited_node(ll), ll, RED.0),
        );
        assert_eq!(lan(&mut g, &mut f, &mut out), Verdict::Consumed);
        let mut out = Gen::new();
        let mut f = frame(MacAddr::BROADCAST, RED, |b| {
            icmpv6::emit_ns(b, a(RED6), a("ff02::1:ff00:2"), a("fd00:15::2"), RED.0)
        });
        assert_eq!(g.lan_nd(0, 0, &f, &mut out, &fdb()), None);
        // A forged hop limit (routed from elsewhere) is not believed.
        f[ETH_HLEN + 7] = 64;
        assert_eq!(g.lan_nd(0, 0, &f, &mut out, &fdb()), None);
        assert_eq!(out.len(), 0);
    }

    #[test]
    fn answers_ping_for_its_address_with_a_fresh_hop_limit() {
        let mut g = gw_with(1500, 64);
        let mut out = Gen::new();
        let mut f = echo(RED6, "fd00:15::5", 3, 56);
        assert_eq!(lan(&mut g, &mut f, &mut out), Verdict::Reply);
        let (src, dst, t, _, w) = icmp6(&f);
        assert_eq!(
            (src, dst, t, w),
            (
                a("fd00:15::5"),
                a(RED6),
                icmp6_type::ECHO_REPLY,
                0x1234_0001
            )
        );
        assert_eq!(f[ETH_HLEN + 7], OWN_TTL);
        assert_eq!(&f[..6], &RED.0);
        // The uplink address answers from the LAN too.
        let mut f = echo(RED6, "2001:db8:113::1", 3, 8);
        assert_eq!(lan(&mut g, &mut f, &mut out), Verdict::Reply);
        assert_eq!(icmp6(&f).0, a("2001:db8:113::1"));
    }

    #[test]
    fn routes_to_the_uplink_after_resolving_the_next_hop() {
        let mut g = gw_with(1500, 64);
        let mut out = Gen::new();
        let mut f = echo(RED6, WAN6, 64, 56);
        assert_eq!(lan(&mut g, &mut f, &mut out), Verdict::Consumed);
        // A solicitation for the next hop went out of the uplink.
        assert_eq!(out.len(), 1);
        assert_eq!(out.target(0), Target::Port(2));
        let ns = &out.batch().frame(0);
        let (src, dst, t, _, _) = icmp6(ns);
        assert_eq!(
            (src, dst, t),
            (
                a("2001:db8:113::1"),
                ip6::solicited_node(a(WAN6)),
                icmp6_type::NEIGHBOR_SOLICIT
            )
        );
        // wan answers: the queued packet leaves with hop limit 63.
        let mut out = Gen::new();
        let mut na = frame(UP_MAC, WAN, |b| {
            icmpv6::emit_na(
                b,
                a(WAN6),
                a("2001:db8:113::1"),
                a(WAN6),
                WAN.0,
                na_flags::SOLICITED,
            )
        });
        let mut vnet = [0u8; VNET_HDR_LEN];
        assert_eq!(
            g.from_uplink(0, &mut vnet, &mut na, &mut out, &fdb()),
            Verdict::Consumed
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out.target(0), Target::Port(2));
        let p = &out.batch().frame(0);
        assert_eq!(&p[..6], &WAN.0);
        assert_eq!(&p[6..12], &UP_MAC.0);
        assert_eq!(p[ETH_HLEN + 7], 63);
        assert!(g.neigh6(true, a(WAN6), 0).unwrap().confirmed);
        // Now the next packet goes straight out.
        let mut out = Gen::new();
        let mut f = echo(RED6, WAN6, 64, 56);
        assert_eq!(lan(&mut g, &mut f, &mut out), Verdict::Unicast(2));
        // And the reply comes back to red (learned from its solicitation).
        red_solicits(&mut g, &mut out);
        let mut back = frame(UP_MAC, WAN, |b| {
            emit_header(b, a(WAN6), a(RED6), next_header::UDP, 64, 8);
            Some(IPV6_HLEN + 8)
        });
        let v = g.from_uplink(0, &mut vnet, &mut back, &mut out, &fdb());
        assert_eq!(v, Verdict::FloodAll, "red's MAC is not in the (empty) FDB");
        assert_eq!(&back[..6], &RED.0);
    }

    /// NPTv6 hairpin: errors quote the packet as it was sent (routed as the
    /// internal address, translated only when it leaves), and a source
    /// outside every NPTv6 prefix is refused ("administratively prohibited").
    #[test]
    fn nptv6_hairpin_errors_quote_the_sent_packet_and_foreign_sources_are_refused() {
        let mut g = gw_with(1500, 64);
        let npt = nat::npt::Npt66::new(
            "fd00:15::/64".parse().unwrap(),
            "2001:db8:113:1::/64".parse().unwrap(),
        )
        .unwrap();
        g.v6.as_mut().unwrap().cfg.npt = vec![npt];
        let blue_ext = npt.outbound(a("fd00:15::2")).unwrap().to_string();
        // Too big for the LAN: Packet Too Big to red, quoting red's own packet.
        g.cfg.lan_mtu = 1280;
        let mut out = Gen::new();
        let mut f = echo(RED6, &blue_ext, 64, 1400);
        let sent = f.clone();
        assert_eq!(lan(&mut g, &mut f, &mut out), Verdict::Consumed);
        let e = out.batch().frame(0);
        let (_, dst, t, _, _) = icmp6(e);
        assert_eq!((dst, t), (a(RED6), icmp6_type::PACKET_TOO_BIG));
        let quote = &e[ETH_HLEN + IPV6_HLEN + 8..];
        assert_eq!(quote[..IPV6_HLEN], sent[ETH_HLEN..ETH_HLEN + IPV6_HLEN]);
        assert_eq!(g.counters.npt_in, 0, "nothing translated");
        // From behind the static route (fd00:99::/64, not translated): refused.
        let mut out = Gen::new();
        let mut f = echo("fd00:99::5", &blue_ext, 64, 56);
        assert_eq!(lan(&mut g, &mut f, &mut out), Verdict::Consumed);
        let (_, dst, t, c, _) = icmp6(out.batch().frame(0));
        assert_eq!(
            (dst, t, c),
            (
                a("fd00:99::5"),
                icmp6_type::DEST_UNREACH,
                unreach_code::ADMIN_PROHIBITED
            )
        );
    }

    #[test]
    fn hop_limit_size_and_route_errors() {
        let mut g = gw_with(1500, 64);
        let mut out = Gen::new();
        // Hop limit 1: time exceeded from our LAN address.
        let mut f = echo(RED6, WAN6, 1, 56);
        assert_eq!(lan(&mut g, &mut f, &mut out), Verdict::Consumed);
        let (src, dst, t, _, _) = icmp6(out.batch().frame(0));
        assert_eq!(
            (src, dst, t),
            (a("fd00:15::5"), a(RED6), icmp6_type::TIME_EXCEEDED)
        );
        // Bigger than the uplink's 1,400: Packet Too Big with the MTU, quoting ≤ 1,280 bytes.
        let mut out = Gen::new();
        let mut f = echo(RED6, WAN6, 64, 1500 - 48);
        assert_eq!(lan(&mut g, &mut f, &mut out), Verdict::Consumed);
        let e = &out.batch().frame(0);
        let (_, _, t, _, mtu) = icmp6(e);
        assert_eq!((t, mtu), (icmp6_type::PACKET_TOO_BIG, 1400));
        assert_eq!(e.len() - ETH_HLEN, icmpv6::MIN_MTU);
        assert_eq!(g.counters.packet_too_big, 1);
        // No route beyond the uplink prefix (no next hop): unreachable, code 0.
        let mut out = Gen::new();
        let mut f = udp(RED6, "2001:db8:999::1", 64);
        assert_eq!(lan(&mut g, &mut f, &mut out), Verdict::Consumed);
        let (_, _, t, c, _) = icmp6(out.batch().frame(0));
        assert_eq!((t, c), (icmp6_type::DEST_UNREACH, unreach_code::NO_ROUTE));
        // UDP to the gateway: port unreachable.
        let mut out = Gen::new();
        let mut f = udp(RED6, "fd00:15::5", 64);
        assert_eq!(lan(&mut g, &mut f, &mut out), Verdict::Consumed);
        let (_, _, t, c, _) = icmp6(out.batch().frame(0));
        assert_eq!((t, c), (icmp6_type::DEST_UNREACH, unreach_code::PORT));
    }

    #[test]
    fn no_error_about_an_error_and_spoofed_sources_are_dropped() {
        let mut g = gw_with(1500, 64);
        let mut out = Gen::new();
        let mut f = frame(GW_MAC, RED, |b| {
            icmpv6::emit_error(
                b,
                a(RED6),
                a(WAN6),
                icmp6_type::DEST_UNREACH,
                4,
                0,
                &[0x60; 48],
            )
        });
        f[ETH_HLEN + 7] = 1;
        assert_eq!(lan(&mut g, &mut f, &mut out), Verdict::Consumed);
        assert_eq!(out.len(), 0, "no time exceeded about an ICMPv6 error");
        let mut f = echo("fd00:98::1", WAN6, 64, 8);
        assert_eq!(
            lan(&mut g, &mut f, &mut out),
            Verdict::Drop(DropReason::GwNotForUs)
        );
        let mut f = echo("fd00:15::5", WAN6, 64, 8);
        assert_eq!(
            lan(&mut g, &mut f, &mut out),
            Verdict::Drop(DropReason::GwNotForUs)
        );
        let mut f = echo(RED6, "fe80::99", 64, 8);
        assert_eq!(
            lan(&mut g, &mut f, &mut out),
            Verdict::Drop(DropReason::GwNoRoute)
        );
        assert_eq!(g.counters.drop_spoofed_src, 2);
        // From the uplink, a LAN source is spoofed.
        let mut vnet = [0u8; VNET_HDR_LEN];
        let mut f = echo(RED6, "2001:db8:113::1", 64, 8);
        f[..6].copy_from_slice(&UP_MAC.0);
        let v = g.from_uplink(0, &mut vnet, &mut f, &mut out, &fdb());
        assert_eq!(v, Verdict::Drop(DropReason::GwNotForUs));
    }

    #[test]
    fn router_advertisements_are_periodic_and_answer_solicitations() {
        let mut g = gw_with(1500, 64);
        let mut out = Gen::new();
        g.periodic(1_000, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out.target(0), Target::Lan);
        let ra = &out.batch().frame(0);
        let (src, dst, t, _, _) = icmp6(ra);
        assert_eq!(
            (src, dst, t),
            (
                ip6::link_local(GW_MAC.0),
                a("ff02::1"),
                icmp6_type::ROUTER_ADVERT
            )
        );
        assert_eq!(ra[ETH_HLEN + 7], 255);
        let m = Icmpv6Packet::new_checked(&ra[ETH_HLEN + IPV6_HLEN..]).unwrap();
        let mut prefix = None;
        for o in icmpv6::ndp_options(m.options().unwrap()) {
            let (k, body) = o.unwrap();
            if k == ndp_opt::PREFIX_INFO {
                prefix = Some((
                    body[0],
                    Ipv6Addr::from(<[u8; 16]>::try_from(&body[14..30]).unwrap()),
                ));
            }
        }
        assert_eq!(prefix, Some((64, a("fd00:15::"))));
        let mut out = Gen::new();
        g.periodic(1_000 + RA_INTERVAL_MS - 1, &mut out);
        assert_eq!(out.len(), 0);
        g.periodic(1_000 + RA_INTERVAL_MS, &mut out);
        assert_eq!(out.len(), 1);
        // A solicitation is answered at once, to the soliciting port.
        let mut out = Gen::new();
        let all_routers = a("ff02::2");
        let rs = frame(MacAddr(ip6::multicast_mac(all_routers)), RED, |b| {
            emit_header(b, a("fe80::1"), all_routers, next_header::ICMPV6, 255, 16);
            let m = &mut b[IPV6_HLEN..IPV6_HLEN + 16];
            m[..8].copy_from_slice(&[icmp6_type::ROUTER_SOLICIT, 0, 0, 0, 0, 0, 0, 0]);
            m[8..16].copy_from_slice(&[ndp_opt::SOURCE_LL, 1, 2, 0, 0, 0, 0, 1]);
            Icmpv6Packet::new_checked(&mut *m)
                .unwrap()
                .fill_checksum(a("fe80::1"), all_routers);
            Some(IPV6_HLEN + 16)
        });
        // Multicast: answered (to all nodes, at most once per 3 s), and
        // still switched to the other hosts.
        let t = 1_000 + RA_INTERVAL_MS + MIN_DELAY_BETWEEN_RAS_MS;
        assert_eq!(g.lan_nd_at(t, &rs, &mut out), None);
        assert_eq!(out.len(), 1);
        assert_eq!(out.target(0), Target::Lan);
        let mut out = Gen::new();
        assert_eq!(g.lan_nd_at(t + 1, &rs, &mut out), None);
        assert_eq!(
            out.len(),
            0,
            "a second solicitation within 3 s gets nothing"
        );
        assert_eq!(g.counters.ra_sent, 3);
    }

    #[test]
    fn static_routes_go_via_their_next_hop_and_admit_their_sources() {
        let mut g = gw_with(1500, 64);
        let mut out = Gen::new();
        let mut f = echo(RED6, "fd00:99::7", 64, 8);
        assert_eq!(lan(&mut g, &mut f, &mut out), Verdict::Consumed, "queued");
        let (_, dst, t, _, _) = icmp6(out.batch().frame(0));
        assert_eq!(
            (dst, t),
            (
                ip6::solicited_node(a("fd00:15::9")),
                icmp6_type::NEIGHBOR_SOLICIT
            )
        );
        assert_eq!(out.target(0), Target::Lan);
        // A host behind the route may send through the gateway; others may not.
        let mut out = Gen::new();
        red_solicits(&mut g, &mut out);
        let mut f = echo("fd00:99::7", RED6, 64, 8);
        assert_eq!(
            lan(&mut g, &mut f, &mut out),
            Verdict::FloodAll,
            "red is not in the FDB"
        );
        let mut f = echo("fd00:98::7", RED6, 64, 8);
        assert_eq!(
            lan(&mut g, &mut f, &mut out),
            Verdict::Drop(DropReason::GwNotForUs)
        );
    }

    impl Gateway {
        fn lan_nd_at(&mut self, now: u64, f: &[u8], out: &mut Gen) -> Option<Verdict> {
            self.lan_nd(now, 0, f, out, &fdb())
        }
    }

    #[test]
    fn mutated_ipv6_frames_never_panic() {
        let mut g = gw_with(1500, 8);
        let seeds = [echo(RED6, WAN6, 64, 40), udp(RED6, "fd00:15::5", 2), {
            let t = a("fd00:15::5");
            frame(MacAddr::BROADCAST, RED, |b| {
                icmpv6::emit_ns(b, a(RED6), ip6::solicited_node(t), t, RED.0)
            })
        }];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for s in &seeds {
            for _ in 0..3000 {
                let mut f = s.clone();
                for _ in 0..3 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let i = ETH_HLEN + (x as usize >> 8) % (f.len() - ETH_HLEN);
                    f[i] = x as u8;
                }
                if x & 0x100 != 0 {
                    f.truncate(ETH_HLEN + (x as usize >> 20) % (f.len() - ETH_HLEN));
                }
                let mut out = Gen::new();
                let _ = lan(&mut g, &mut f, &mut out);
                let mut vnet = [0u8; VNET_HDR_LEN];
                f[..6].copy_from_slice(&UP_MAC.0);
                let _ = g.from_uplink(0, &mut vnet, &mut f, &mut out, &fdb());
            }
        }
    }
}
