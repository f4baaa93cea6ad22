//! The IPv4 routing table: where a destination leads (the gateway itself,
//! a LAN next hop by subnet or static route, the uplink), which sources each
//! side may use (RFC 3704) and which destinations are never routed (RFC 1812
//! 5.3.7), and the MTU of each egress.

use super::*;

/// Where `dst` leads, given the gateway's addresses, subnets and routes.
pub(super) fn route_in(
    cfg: &GatewayConfig,
    lan: &Ipv4Net,
    up: &Option<Ipv4Net>,
    dst: Ipv4Addr,
) -> Egress {
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
pub(super) fn side_in(
    cfg: &GatewayConfig,
    lan: &Ipv4Net,
    up: &Option<Ipv4Net>,
    dst: Ipv4Addr,
) -> Side {
    match route_in(cfg, lan, up, dst) {
        Egress::Lan(_) => Side::Lan,
        Egress::Uplink(_) => Side::Wan,
        Egress::Local | Egress::None => Side::Local,
    }
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

/// An address that is never a valid source or routed destination: 0/8,
/// 127/8, multicast, class E and the limited broadcast (RFC 1812 5.3.7).
pub fn is_martian(a: Ipv4Addr) -> bool {
    let o = a.octets()[0];
    o == 0 || o == 127 || o >= 224
}

/// Whether `a` is the directed broadcast (or the all-zeros host) of `net`.
pub(super) fn is_subnet_broadcast(net: &Ipv4Net, a: Ipv4Addr) -> bool {
    net.prefix <= 30 && net.contains(a) && !is_host_of(net, a)
}

impl Gateway {
    /// Where `dst` leads.
    pub fn route(&self, dst: Ipv4Addr) -> Egress {
        route_in(&self.cfg, &self.lan_net, &self.up_net, dst)
    }

    /// The NAT's view of where `dst` leads.
    pub fn side_of(&self, dst: Ipv4Addr) -> Side {
        side_in(&self.cfg, &self.lan_net, &self.up_net, dst)
    }

    /// Replace the static routes (`vswitch reload`); the LAN neighbour cache
    /// then learns the new next hops. Caches, queue and NAT are kept.
    pub fn set_routes(&mut self, routes: Vec<(Ipv4Net, Ipv4Addr)>) {
        self.cfg.routes = routes;
        self.neigh_lan.set_on_link(&self.cfg.lan_on_link());
    }

    /// Whether a LAN host may send from `src`: a host address of the LAN
    /// subnet or an address behind a static route, never one of ours.
    pub(super) fn lan_source_ok(&self, src: Ipv4Addr) -> bool {
        if is_martian(src)
            || src == self.cfg.ip
            || self.cfg.uplink.as_ref().is_some_and(|u| u.ip == src)
        {
            return false;
        }
        is_host_of(&self.lan_net, src) || self.cfg.routes.iter().any(|(n, _)| n.contains(src))
    }

    /// Whether an on-link `src` is bound, by a live confirmed neighbour entry
    /// (an answer to the gateway's own request), to another port or MAC than
    /// the frame's: then the frame is spoofed (a LAN host using another's
    /// address, to have its flows charged to it). Unknown sources pass.
    pub(super) fn source_taken(&self, now: u64, src: Ipv4Addr, port: PortId, mac: MacAddr) -> bool {
        is_host_of(&self.lan_net, src)
            && self
                .neigh_lan
                .lookup(src, now)
                .is_some_and(|e| e.confirmed && (e.port != port || e.mac != mac))
    }

    /// Whether the uplink may send from `src`: not martian, not ours, not a LAN address.
    pub(super) fn uplink_source_ok(&self, src: Ipv4Addr) -> bool {
        !(is_martian(src)
            || src == self.cfg.ip
            || self.cfg.uplink.as_ref().is_some_and(|u| u.ip == src)
            || self.up_net.is_some_and(|n| is_subnet_broadcast(&n, src))
            || self.lan_net.contains(src)
            || self.cfg.routes.iter().any(|(n, _)| n.contains(src)))
    }

    /// Whether `dst` is never routed: martian, or a broadcast of a connected subnet.
    pub(super) fn martian_dst(&self, dst: Ipv4Addr) -> bool {
        is_martian(dst)
            || is_subnet_broadcast(&self.lan_net, dst)
            || self.up_net.is_some_and(|n| is_subnet_broadcast(&n, dst))
    }

    /// MTU towards `e`.
    pub(super) fn egress_mtu(&self, e: Egress) -> usize {
        let m = match e {
            Egress::Uplink(_) => self.cfg.uplink.as_ref().map_or(self.cfg.lan_mtu, |u| u.mtu),
            _ => self.cfg.lan_mtu,
        };
        m as usize
    }

    /// The MTU the gateway routes with towards port `p` (the uplink's
    /// configured path MTU, or the LAN's), for the fast path's routed flows.
    pub fn mtu_towards(&self, p: crate::PortId) -> u32 {
        match self.cfg.uplink.as_ref() {
            Some(u) if self.uplink_port() == Some(p) => u.mtu,
            _ => self.cfg.lan_mtu,
        }
    }

    /// The smallest MTU of any egress (below it, nothing needs a quote kept).
    pub(super) fn min_mtu(&self) -> usize {
        let up = self.cfg.uplink.as_ref().map_or(u32::MAX, |u| u.mtu);
        self.cfg.lan_mtu.min(up) as usize
    }
}
