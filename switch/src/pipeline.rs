//! The forwarding decision for one frame: learn, handle ARP and NDP, forward or flood.
//!
//! Contract: [`Pipeline::decide`] takes the ingress port, the frame bytes and
//! `now`, updates the FDB and ARP tables, and returns a [`Verdict`]. It does no
//! I/O and never panics on any input; a malformed frame is `Drop(reason)`. It
//! may rewrite the frame in place only when it returns [`Verdict::Reply`]
//! (an ARP reply built from the request, or a neighbor advertisement built
//! from a solicitation, sent back out of the ingress port).
//!
//! ND suppression, the IPv6 twin of ARP suppression: the [`NdTable`] learns
//! from neighbor solicitations (their source link-layer address) and
//! advertisements (their target link-layer address; solicited ones
//! confirm); a multicast solicitation for a known host that is alive in the
//! FDB behind another port is answered in place with that host's
//! advertisement. DAD probes (from `::`) teach nothing and are never
//! answered, so duplicate detection still reaches the owner; solicitations
//! without a source link-layer option, and for link-local targets (routers
//! are known by those, and only they can set the router flag), are flooded;
//! a message whose link-layer option differs from its Ethernet source
//! teaches nothing. MLD and other multicast are flooded as before.
//!
//! ```text
//! frame ─► parse ─► src MAC ok? ─► learn(src, in_port) ─► ARP? learn IP→MAC
//!                                                     └─► suppress? ─► Reply
//!          dst multicast/broadcast ─► Flood (all up ports but ingress)
//!          dst known ─► same port? ─► Drop(same-port) : Unicast(port)
//!          dst unknown ─► Flood
//! ```

use crate::PortId;
use crate::arp::{ArpTable, Heard, NdTable};
use crate::fdb::Fdb;
use crate::gateway::Gateway;
use crate::policy::{Action, Frame, FrameMeta, NoPolicy, Policy};
use crate::stats::DropReason;
pub use crate::verdict::{Gen, Target, Verdict};
use crate::wire::{ArpPacket, ETH_HLEN, EthernetFrame, MacAddr, arp_op, ethertype};

/// Switch settings the pipeline needs.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Number of ports.
    pub ports: usize,
    /// MAC table bound.
    pub fdb_max: usize,
    /// MAC table bound per port.
    pub fdb_max_per_port: usize,
    /// Ageing time of MAC and ARP entries, ms.
    pub ageing_ms: u64,
    /// ARP table bound.
    pub arp_max: usize,
    /// ARP table bound per port (see [`crate::arp::default_per_port`]).
    pub arp_max_per_port: usize,
    /// Answer ARP requests for known hosts.
    pub arp_suppress: bool,
    /// The gateway, if the switch routes.
    pub gateway: Option<crate::gateway::GatewayConfig>,
}

/// The switch's forwarding state and logic, generic over the policy.
pub struct Pipeline<P: Policy = NoPolicy> {
    /// MAC table.
    pub fdb: Fdb,
    /// IP→MAC table.
    pub arp: ArpTable,
    /// IPv6→MAC table (ND suppression), bounded as the ARP table.
    pub nd: NdTable,
    arp_suppress: bool,
    /// The gateway (router and NAT), if any.
    pub gateway: Option<Gateway>,
    /// The forwarding policy.
    pub policy: P,
    /// Isolated ports (reach only non-isolated ports and the gateway).
    pub isolated: Vec<bool>,
    /// Set by `decide` when the policy asked for a copy of the frame on a port.
    pub mirror: Option<PortId>,
    /// 802.1Q port roles when the switch is VLAN-aware.
    pub vlans: Option<VlanPorts>,
    /// Set by `decide`: the frame's VLAN and whether it arrived tagged.
    pub frame_vlan: (u16, bool),
    /// Set by `decide` when the policy asked to push (`Some(vid)`) or pop (`None`) a tag.
    pub retag: Option<Option<u16>>,
    /// Set by the worker before `decide` for a frame from a tunnel port: the
    /// remote VTEP it came from, learned with its source MAC.
    pub rx_vtep: Option<std::net::Ipv4Addr>,
    /// Hosts whose port went away (see [`Pipeline::forget_port`]): their next
    /// ARP request is flooded, not suppressed, so that peers holding their
    /// old MAC in their caches learn the new one.
    returning: Vec<std::net::Ipv4Addr>,
}

/// The policy of a dry run ([`Pipeline::dry_run`]): answers every frame
/// with the action the live policy's [`Policy::explain`] gave, and notes
/// whether the pipeline asked at all (frames from the uplink skip policies).
#[derive(Debug, Clone, Copy)]
pub struct Fixed {
    action: Action,
    asked: bool,
}

impl Policy for Fixed {
    fn classify(&mut self, _: &FrameMeta, _: &Frame) -> Action {
        self.asked = true;
        self.action
    }
}

/// What the switch would do with one frame ([`Pipeline::dry_run`]).
#[derive(Debug, Clone)]
pub struct DryRun {
    /// The verdict.
    pub verdict: Verdict,
    /// Whether the pipeline consulted the policy.
    pub policy_asked: bool,
    /// What MAC learning did with the source: `learn`, `move`, `refresh`,
    /// or `refused: …` (none: nothing, e.g. a policy drop).
    pub learned: Option<&'static str>,
    /// The frame as it would leave (rewritten by the router and the NAT, or
    /// into a reply).
    pub frame: Vec<u8>,
    /// Frames the gateway would send besides (errors, answers, ARP requests
    /// and neighbor solicitations), with where they would go.
    pub generated: Vec<(Target, Vec<u8>)>,
    /// The port the policy asked for a copy on.
    pub mirror: Option<PortId>,
    /// The policy's tag edit: push `Some(vid)`, pop `None`.
    pub retag: Option<Option<u16>>,
    /// The NAT's decisions, in words ([`nat::Nat::record_notes`]).
    pub nat_notes: Vec<(nat::Step, String)>,
    /// The gateway's counters that moved, and by how much.
    pub gateway_moved: Vec<(String, u64)>,
    /// The NAT's reason, when it dropped the packet.
    pub nat_drop: Option<nat::NatDrop>,
}

/// Bound of the hosts remembered by [`Pipeline::forget_port`].
const RETURNING_MAX: usize = 1024;

/// Port roles of a VLAN-aware switch.
#[derive(Debug, Clone, Default)]
pub struct VlanPorts {
    /// Access VLAN of each port (`None`: trunk).
    pub access: Vec<Option<u16>>,
    /// VLANs each port carries (its access VLAN, or the trunk's list).
    pub members: Vec<Vec<u16>>,
}

impl VlanPorts {
    /// Whether `port` carries `vlan`.
    pub fn member(&self, port: PortId, vlan: u16) -> bool {
        self.members.get(port).is_some_and(|m| m.contains(&vlan))
    }
    /// Whether frames leave `port` tagged.
    pub fn tagged(&self, port: PortId) -> bool {
        self.access.get(port).is_some_and(Option::is_none)
    }
}

impl Pipeline<NoPolicy> {
    /// A pipeline with empty tables and no policy.
    pub fn new(c: &PipelineConfig) -> Pipeline<NoPolicy> {
        Pipeline::with_policy(c, NoPolicy)
    }
}

impl<P: Policy> Pipeline<P> {
    /// A pipeline with empty tables and `policy`.
    pub fn with_policy(c: &PipelineConfig, policy: P) -> Pipeline<P> {
        Pipeline {
            policy,
            isolated: vec![false; c.ports],
            mirror: None,
            vlans: None,
            frame_vlan: (0, false),
            retag: None,
            rx_vtep: None,
            returning: Vec::new(),
            fdb: Fdb::new(c.ports, c.fdb_max, c.fdb_max_per_port, c.ageing_ms),
            arp: {
                // With a gateway, the switch knows its LAN subnet: learn only hosts on it.
                let mut t = ArpTable::with_limits(c.arp_max, c.arp_max_per_port, c.ageing_ms);
                if let Some(g) = &c.gateway {
                    t.set_on_link(&g.lan_on_link());
                }
                t
            },
            nd: {
                let mut t = NdTable::with_limits(c.arp_max, c.arp_max_per_port, c.ageing_ms);
                if let Some(v6) = c.gateway.as_ref().and_then(|g| g.v6.as_ref()) {
                    let mut on = v6.lan.clone();
                    on.push(crate::gateway::v6::LINK_LOCAL);
                    t.set_on_link(&on);
                }
                t
            },
            arp_suppress: c.arp_suppress,
            gateway: c.gateway.clone().map(Gateway::new),
        }
    }

    /// Decide what to do with `frame` (and its vnet header), received on
    /// `in_port` at `now` (ms). Frames the gateway generates go to `out`.
    pub fn decide(
        &mut self,
        in_port: PortId,
        vnet: &mut [u8],
        frame: &mut [u8],
        now: u64,
        out: &mut Gen,
    ) -> Verdict {
        // Routed frames are untagged and belong to VLAN 1 on a VLAN-aware switch.
        self.frame_vlan = (if self.vlans.is_some() { 1 } else { 0 }, false);
        if let Some(gw) = &mut self.gateway
            && gw.uplink_port() == Some(in_port)
        {
            return gw.from_uplink(now, vnet, frame, out, &self.fdb);
        }
        let Ok(eth) = EthernetFrame::new_checked(&*frame) else {
            return Verdict::Drop(DropReason::Runt);
        };
        let (src, dst, et) = (eth.src(), eth.dst(), eth.ethertype());
        if !src.is_unicast() {
            return Verdict::Drop(DropReason::BadSrcMac);
        }
        // 802.1Q ingress: access ports take untagged frames, trunks their tagged VLANs.
        let vlan = match &self.vlans {
            None => 0,
            Some(v) => {
                let tag = eth.vlan().filter(|_| eth.ethertype() == ethertype::VLAN);
                let vid = match (v.access.get(in_port).copied().flatten(), tag) {
                    (Some(pvid), None) => pvid,
                    (None, Some(t)) if v.member(in_port, t) => t,
                    _ => return Verdict::Drop(DropReason::Vlan),
                };
                self.frame_vlan = (vid, tag.is_some());
                vid
            }
        };
        let to_gateway = self.vlans.is_none() || self.frame_vlan == (1, false);
        let action = self
            .policy
            .classify(&FrameMeta { in_port, now }, &Frame::new(frame));
        if let Action::Drop(_) = action {
            return Verdict::Drop(DropReason::Policy);
        }
        self.fdb.learn_via(vlan, src, in_port, self.rx_vtep, now);
        match action {
            Action::Redirect(p) if p >= self.isolated.len() => {
                return Verdict::Drop(DropReason::PolicyBadPort);
            }
            Action::Redirect(p) => return Verdict::Unicast(p),
            Action::Mirror(p) => self.mirror = Some(p),
            // Tag edits change the frame's length: the worker applies them to the slot.
            Action::PushVlan(v) if self.vlans.is_none() => self.retag = Some(Some(v)),
            Action::PopVlan if self.vlans.is_none() && eth.ethertype() == ethertype::VLAN => {
                self.retag = Some(None)
            }
            _ => {}
        }

        if eth.ethertype() == ethertype::ARP {
            if let Some(gw) = &mut self.gateway
                && to_gateway
                && let Some(v) = gw.lan_arp(now, in_port, frame, out, &self.fdb)
            {
                if let Ok(a) = ArpPacket::new_checked(&frame[ETH_HLEN..]) {
                    let (sha, spa) = if v == Verdict::Reply {
                        (a.tha(), a.tpa())
                    } else {
                        (a.sha(), a.spa())
                    };
                    self.arp.learn(spa, sha, in_port, now);
                }
                return v;
            }
            if let Some(v) = self.arp(in_port, frame, src, vlan, now) {
                return v;
            }
        }

        if et == ethertype::IPV6 {
            if to_gateway
                && let Some(gw) = &mut self.gateway
                && let Some(v) = gw.lan_nd(now, in_port, frame, out, &self.fdb)
            {
                return v;
            }
            if let Some(v) = self.nd(in_port, frame, src, vlan, now) {
                return v;
            }
        }
        if let Some(gw) = &mut self.gateway
            && dst == gw.mac()
            && to_gateway
        {
            return gw.from_lan(now, in_port, vnet, frame, out, &self.fdb);
        }
        if dst.is_multicast() {
            return Verdict::Flood;
        }
        match self.fdb.lookup_in(vlan, &dst, now) {
            Some(p) if p == in_port => Verdict::Drop(DropReason::SamePort),
            Some(p)
                if self.isolated.get(in_port).copied().unwrap_or(false)
                    && self.isolated.get(p).copied().unwrap_or(false) =>
            {
                Verdict::Drop(DropReason::Isolated)
            }
            Some(p) => Verdict::Unicast(p),
            None => Verdict::Flood,
        }
    }

    /// What [`Pipeline::decide`] would do with `frame` on `in_port` at
    /// `now` if the policy answered `action` (its [`Policy::explain`]): the
    /// same code run on a copy of the tables, with the NAT noting down its
    /// decisions, then dropped. Nothing here changes, nothing is sent. The
    /// copy costs time in proportion to the tables (6.4 ms with a full
    /// NAT table of 262,144 entries), so it serves `vswitch trace`, not the
    /// datapath.
    pub fn dry_run(&self, in_port: PortId, frame: &[u8], now: u64, action: Action) -> DryRun {
        let mut s = Pipeline {
            fdb: self.fdb.clone(),
            arp: self.arp.clone(),
            nd: self.nd.clone(),
            arp_suppress: self.arp_suppress,
            gateway: self.gateway.clone(),
            policy: Fixed {
                action,
                asked: false,
            },
            isolated: self.isolated.clone(),
            mirror: None,
            vlans: self.vlans.clone(),
            frame_vlan: (0, false),
            retag: None,
            rx_vtep: None,
            returning: self.returning.clone(),
        };
        if let Some(g) = &mut s.gateway {
            g.record_notes();
        }
        let counters = |s: &Pipeline<Fixed>| {
            s.gateway
                .as_ref()
                .and_then(|g| serde_json::to_value(&g.counters).ok())
        };
        let before = counters(&s);
        let nat_before = s.gateway.as_ref().map(|g| g.nat_drops());
        let mut vnet = [0u8; crate::wire::VNET_HDR_LEN];
        let mut buf = frame.to_vec();
        let mut made = Gen::new();
        let verdict = s.decide(in_port, &mut vnet, &mut buf, now, &mut made);
        s.finish_batch(now, &mut made);
        let mut moved = Vec::new();
        if let (Some(serde_json::Value::Object(a)), Some(serde_json::Value::Object(b))) =
            (before, counters(&s))
        {
            for (k, v) in b {
                let d = v.as_u64().unwrap_or(0) - a.get(&k).and_then(|x| x.as_u64()).unwrap_or(0);
                if d > 0 {
                    moved.push((k, d));
                }
            }
        }
        let nat_drop = nat_before
            .zip(s.gateway.as_ref().map(|g| g.nat_drops()))
            .and_then(|(a, b)| (0..a.len()).find(|&i| b[i] > a[i]))
            .map(|i| nat::NatDrop::ALL[i]);
        // What learning did: compare the source's entry and the table's counters.
        let src = EthernetFrame::new_checked(frame).map(|e| e.src()).ok();
        let entry = |p: &Fdb| src.and_then(|m| p.entry(s.frame_vlan.0, &m));
        let (c0, c1) = (self.fdb.counters, s.fdb.counters);
        let learned = if c1.learned > c0.learned {
            Some("learn")
        } else if c1.moves > c0.moves {
            Some("move")
        } else if c1.refused_table_full > c0.refused_table_full {
            Some("refused: the table is full")
        } else if c1.refused_port_full > c0.refused_port_full {
            Some("refused: the port is at its bound")
        } else if c1.static_moves_refused > c0.static_moves_refused {
            Some("refused: a static entry holds it on another port")
        } else if entry(&s.fdb) != entry(&self.fdb) {
            Some("refresh")
        } else {
            None
        };
        DryRun {
            verdict,
            policy_asked: s.policy.asked,
            learned,
            frame: buf,
            generated: (0..made.len())
                .map(|i| (made.target(i), made.batch().frame(i).to_vec()))
                .collect(),
            mirror: s.mirror,
            retag: s.retag,
            nat_notes: s
                .gateway
                .as_mut()
                .map(|g| g.take_notes())
                .unwrap_or_default(),
            gateway_moved: moved,
            nat_drop,
        }
    }

    /// Between batches (about once a second): frames the gateway sends on
    /// its own (router advertisements) go to `out`.
    pub fn periodic(&mut self, now: u64, out: &mut Gen) {
        if let Some(gw) = &mut self.gateway {
            gw.periodic(now, out);
        }
    }

    /// After a batch: route what the gateway out or released.
    pub fn finish_batch(&mut self, now: u64, out: &mut Gen) {
        if let Some(gw) = &mut self.gateway {
            gw.flush_released(out);
            gw.route_gen(now, out, &self.fdb);
        }
    }

    /// Periodic work: age tables, expire the policy's and the NAT's state.
    /// Returns false when the NAT's expiry has work left ([`Pipeline::expire_more`]).
    pub fn expire(&mut self, now: u64) -> bool {
        self.fdb.sweep(now);
        self.arp.sweep(now);
        self.nd.sweep(now);
        self.policy.expire(now);
        self.gateway.as_mut().is_none_or(|gw| gw.expire(now))
    }

    /// Go on with the NAT's expiry (bounded work per call); true when done.
    pub fn expire_more(&mut self, now: u64) -> bool {
        self.gateway.as_mut().is_none_or(|gw| gw.expire_more(now))
    }

    /// Port `port` went out of service (its link vanished, or it was removed):
    /// forget what was learned on it. Hosts behind it may come back with
    /// another MAC (a re-created namespace), so their next ARP request is
    /// flooded rather than answered, and their peers learn the new MAC
    /// (bounded memory, oldest forgotten first).
    pub fn forget_port(&mut self, port: PortId, now: u64) {
        for (ip, e) in self.arp.entries(now) {
            if e.port == port && !self.returning.contains(&ip) {
                if self.returning.len() >= RETURNING_MAX {
                    self.returning.remove(0);
                }
                self.returning.push(ip);
            }
        }
        self.fdb.flush_port(port);
        self.arp.flush_port(port);
        self.nd.flush_port(port);
        if let Some(gw) = &mut self.gateway {
            gw.neigh_lan.flush_port(port);
            if let Some(v6) = gw.v6_mut() {
                v6.neigh_lan.flush_port(port);
            }
        }
    }

    /// Learn from an ARP packet; answer it if suppression applies.
    fn arp(
        &mut self,
        in_port: PortId,
        frame: &mut [u8],
        src: MacAddr,
        vlan: u16,
        now: u64,
    ) -> Option<Verdict> {
        let (op, sha, spa, tpa) = {
            let arp = ArpPacket::new_checked(&frame[ETH_HLEN..]).ok()?;
            (arp.op(), arp.sha(), arp.spa(), arp.tpa())
        };
        // A reply confirms; the gateway's subnet is that of the untagged LAN (VLAN 1).
        let how = if op == arp_op::REPLY {
            Heard::Reply
        } else {
            Heard::Hint
        };
        self.arp.observe(spa, sha, in_port, now, how, vlan <= 1);
        if spa == tpa {
            self.arp.counters.gratuitous += 1;
            return None;
        }
        let broadcast = EthernetFrame::new_checked(&*frame).ok()?.dst() == MacAddr::BROADCAST;
        if !self.arp_suppress || op != arp_op::REQUEST || !broadcast || spa.is_unspecified() {
            return None;
        }
        if let Some(i) = self.returning.iter().position(|&ip| ip == spa) {
            self.returning.swap_remove(i);
            return None;
        }
        // Answer only for a host we know, that is alive in the FDB, and not
        // behind the asking port (there it answers for itself).
        let target = self.arp.lookup(tpa, now)?;
        match self.fdb.lookup_in(vlan, &target.mac, now) {
            Some(p) if p != in_port => {}
            _ => return None,
        }
        let mut eth = EthernetFrame::new_checked(&mut *frame).ok()?;
        eth.set_dst(src);
        eth.set_src(target.mac);
        ArpPacket::new_checked(eth.payload_mut())
            .ok()?
            .make_reply(target.mac);
        self.arp.counters.suppressed += 1;
        Some(Verdict::Reply)
    }

    /// Learn from an NDP message; answer a solicitation if suppression applies.
    fn nd(
        &mut self,
        in_port: PortId,
        frame: &mut [u8],
        src: MacAddr,
        vlan: u16,
        now: u64,
    ) -> Option<Verdict> {
        use nat::wire::icmpv6::{self, icmp6_type, na_flags};
        let n = icmpv6::parse_ndp(frame.get(ETH_HLEN..)?)?;
        let on_link = vlan <= 1;
        // Only a sender speaking for its own link-layer address teaches anything.
        if n.lladdr.is_some_and(|m| m != src.0) {
            return None;
        }
        match (n.kind, n.target, n.lladdr) {
            (icmp6_type::NEIGHBOR_ADVERT, Some(t), Some(m)) => {
                // A hint, solicited or not: the switch saw no solicitation of
                // its own, so nothing here confirms (as for gratuitous ARP).
                self.nd
                    .observe(t, MacAddr(m), in_port, now, Heard::Hint, on_link);
                return None;
            }
            (icmp6_type::NEIGHBOR_SOLICIT, Some(_), Some(m)) if !n.src.is_unspecified() => {
                self.nd
                    .observe(n.src, MacAddr(m), in_port, now, Heard::Hint, on_link);
            }
            _ => return None,
        }
        let target = n.target?;
        let multicast = EthernetFrame::new_checked(&*frame)
            .ok()?
            .dst()
            .is_multicast();
        // Link-local targets are never answered for: routers are known by
        // them, and an advertisement without their router flag would take
        // them off the hosts' default router lists (RFC 4861 7.2.5).
        if !self.arp_suppress || !multicast || nat::wire::ipv6::is_link_local(target) {
            return None;
        }
        // Answer only for a host we know, alive in the FDB, not behind the asking port.
        let t = self.nd.lookup(target, now)?;
        match self.fdb.lookup_in(vlan, &t.mac, now) {
            Some(p) if p != in_port => {}
            _ => return None,
        }
        let flags = na_flags::SOLICITED | na_flags::OVERRIDE;
        let len = frame.len();
        let b = frame.get_mut(ETH_HLEN..)?;
        // A solicitation with its source option is exactly as long as the advertisement.
        let mut na = [0u8; 72];
        let n_len = icmpv6::emit_na(&mut na, target, n.src, target, t.mac.0, flags)?;
        if len != ETH_HLEN + n_len || b.len() < n_len {
            return None;
        }
        b[..n_len].copy_from_slice(&na[..n_len]);
        let mut eth = EthernetFrame::new_checked(&mut *frame).ok()?;
        eth.set_dst(src);
        eth.set_src(t.mac);
        self.nd.counters.suppressed += 1;
        Some(Verdict::Reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tests_fixtures::{arp_reply, arp_request, eth_frame};

    const RED: MacAddr = MacAddr([0xca, 0x92, 0x85, 0xa6, 0x43, 0x57]);
    const BLUE: MacAddr = MacAddr([0xb2, 0x65, 0xf0, 0x0a, 0x24, 0xc9]);

    fn pipe(suppress: bool) -> Pipeline {
        Pipeline::new(&PipelineConfig {
            ports: 3,
            fdb_max: 16,
            fdb_max_per_port: 8,
            ageing_ms: 300_000,
            arp_max: 16,
            arp_max_per_port: crate::arp::default_per_port(16),
            arp_suppress: suppress,
            gateway: None,
        })
    }

    /// `decide` without offload metadata and generated frames.
    trait Decide {
        fn d(&mut self, port: PortId, frame: &mut [u8], now: u64) -> Verdict;
    }
    impl Decide for Pipeline {
        fn d(&mut self, port: PortId, frame: &mut [u8], now: u64) -> Verdict {
            let mut vnet = [0u8; 10];
            let mut generated = Gen::new();
            self.decide(port, &mut vnet, frame, now, &mut generated)
        }
    }

    /// An IPv6 NDP frame from `src_mac` built by the wire layer's emitters
    /// (checked against etherparse in `nat::wire::icmpv6`).
    fn ndp(
        dst: MacAddr,
        src_mac: MacAddr,
        emit: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> Vec<u8> {
        let mut f = vec![0u8; 200];
        f[..6].copy_from_slice(&dst.0);
        f[6..12].copy_from_slice(&src_mac.0);
        f[12..14].copy_from_slice(&ethertype::IPV6.to_be_bytes());
        let n = emit(&mut f[ETH_HLEN..]).unwrap();
        f.truncate(ETH_HLEN + n);
        f
    }

    #[test]
    fn neighbor_solicitations_for_known_hosts_are_answered() {
        use nat::wire::icmpv6::{self, icmp6_type, na_flags};
        use nat::wire::ipv6::{multicast_mac, solicited_node};
        let a = |s: &str| -> std::net::Ipv6Addr { s.parse().unwrap() };
        let (r6, b6) = (a("fd00:15::1"), a("fd00:15::2"));
        let mut p = pipe(true);
        // blue answers red's first solicitation itself (flooded, unknown), and is learned.
        let group = solicited_node(b6);
        let mut ns = ndp(MacAddr(multicast_mac(group)), RED, |b| {
            icmpv6::emit_ns(b, r6, group, b6, RED.0)
        });
        assert_eq!(p.d(0, &mut ns, 0), Verdict::Flood);
        let mut na = ndp(RED, BLUE, |b| {
            icmpv6::emit_na(b, b6, r6, b6, BLUE.0, na_flags::SOLICITED)
        });
        assert_eq!(p.d(1, &mut na, 1), Verdict::Unicast(0));
        assert_eq!(p.nd.lookup(b6, 1).unwrap().mac, BLUE);
        assert_eq!(p.nd.lookup(r6, 1).unwrap().mac, RED);
        // The next solicitation for blue is answered by the switch, as blue would.
        let mut ns = ndp(MacAddr(multicast_mac(group)), RED, |b| {
            icmpv6::emit_ns(b, r6, group, b6, RED.0)
        });
        assert_eq!(p.d(0, &mut ns, 2), Verdict::Reply);
        assert_eq!((&ns[..6], &ns[6..12]), (&RED.0[..], &BLUE.0[..]));
        let n = icmpv6::parse_ndp(&ns[ETH_HLEN..]).expect("a valid advertisement");
        assert_eq!(
            (n.kind, n.src, n.dst, n.target, n.lladdr),
            (icmp6_type::NEIGHBOR_ADVERT, b6, r6, Some(b6), Some(BLUE.0))
        );
        assert_eq!(p.nd.counters.suppressed, 1);
        // A DAD probe for blue's address is never answered (duplicate
        // detection must reach blue) and teaches nothing.
        let mut dad = ndp(MacAddr(multicast_mac(group)), RED, |b| {
            icmpv6::emit_ns(b, std::net::Ipv6Addr::UNSPECIFIED, group, b6, RED.0)
        });
        assert_eq!(p.d(0, &mut dad, 3), Verdict::Flood);
        assert_eq!(p.nd.lookup(b6, 3).unwrap().mac, BLUE);
        // Without suppression, solicitations are flooded.
        let mut p = pipe(false);
        p.d(1, &mut na, 1);
        let mut ns = ndp(MacAddr(multicast_mac(group)), RED, |b| {
            icmpv6::emit_ns(b, r6, group, b6, RED.0)
        });
        assert_eq!(p.d(0, &mut ns, 2), Verdict::Flood);
    }

    #[test]
    fn unknown_unicast_floods_then_known_is_unicast() {
        let mut p = pipe(true);
        let mut f = eth_frame(BLUE, RED, 0x0800, 64);
        assert_eq!(p.d(0, &mut f, 0), Verdict::Flood);
        let mut back = eth_frame(RED, BLUE, 0x0800, 64);
        assert_eq!(p.d(1, &mut back, 1), Verdict::Unicast(0));
        assert_eq!(p.d(0, &mut f, 2), Verdict::Unicast(1));
    }

    #[test]
    fn a_dry_run_decides_as_decide_and_changes_nothing() {
        let mut p = pipe(true);
        let f = eth_frame(BLUE, RED, 0x0800, 64);
        // Unknown destination: both flood; the dry run learns RED only in its copy.
        let r = p.dry_run(0, &f, 0, Action::Continue);
        assert_eq!((r.verdict, r.learned), (Verdict::Flood, Some("learn")));
        assert_eq!(p.fdb.lookup(&RED, 0), None, "the live table is untouched");
        assert_eq!(p.d(0, &mut f.clone(), 0), Verdict::Flood);
        let mut back = eth_frame(RED, BLUE, 0x0800, 64);
        assert_eq!(p.d(1, &mut back, 1), Verdict::Unicast(0));
        let r = p.dry_run(0, &f, 2, Action::Continue);
        assert_eq!(r.learned, Some("refresh"));
        assert_eq!(r.verdict, p.d(0, &mut f.clone(), 2));
        assert_eq!(r.verdict, Verdict::Unicast(1));
        assert!(r.policy_asked);
        // The policy's action is the one the dry run applies; a frame the
        // policy drops teaches nothing.
        let r = p.dry_run(0, &f, 3, Action::Drop("acl"));
        assert_eq!(
            (r.verdict, r.learned),
            (Verdict::Drop(DropReason::Policy), None)
        );
    }

    #[test]
    fn broadcast_and_multicast_flood() {
        let mut p = pipe(true);
        let mut f = eth_frame(MacAddr::BROADCAST, RED, 0x86dd, 80);
        assert_eq!(p.d(0, &mut f, 0), Verdict::Flood);
        let mut m = eth_frame(MacAddr([0x33, 0x33, 0, 0, 0, 1]), RED, 0x86dd, 80);
        assert_eq!(p.d(0, &mut m, 0), Verdict::Flood);
    }

    #[test]
    fn malformed_frames_are_named_drops() {
        let mut p = pipe(true);
        let mut short = [0u8; 13];
        assert_eq!(p.d(0, &mut short, 0), Verdict::Drop(DropReason::Runt));
        let mut f = eth_frame(BLUE, MacAddr::BROADCAST, 0x0800, 64);
        assert_eq!(p.d(0, &mut f, 0), Verdict::Drop(DropReason::BadSrcMac));
        let mut z = eth_frame(BLUE, MacAddr::default(), 0x0800, 64);
        assert_eq!(p.d(0, &mut z, 0), Verdict::Drop(DropReason::BadSrcMac));
        // An ARP frame cut short is switched as a plain frame, never a panic.
        let mut a = arp_request(RED, [192, 168, 15, 1], [192, 168, 15, 2]);
        assert_eq!(p.d(0, &mut a[..30], 0), Verdict::Flood);
    }

    #[test]
    fn same_port_destination_is_dropped() {
        let mut p = pipe(true);
        let mut a = eth_frame(BLUE, RED, 0x0800, 64);
        p.d(0, &mut a, 0);
        let mut b = eth_frame(RED, BLUE, 0x0800, 64);
        assert_eq!(p.d(0, &mut b, 0), Verdict::Drop(DropReason::SamePort));
    }

    #[test]
    fn arp_suppression_answers_for_known_hosts() {
        let mut p = pipe(true);
        // Blue announces itself (a reply to someone), red asks for blue.
        let mut r = arp_reply(BLUE, [192, 168, 15, 2], RED, [192, 168, 15, 1]);
        assert_eq!(p.d(1, &mut r, 0), Verdict::Flood); // red not learned yet
        let mut req = arp_request(RED, [192, 168, 15, 1], [192, 168, 15, 2]);
        assert_eq!(p.d(0, &mut req, 1), Verdict::Reply);
        let eth = EthernetFrame::new_checked(&req[..]).unwrap();
        assert_eq!((eth.dst(), eth.src()), (RED, BLUE));
        let arp = ArpPacket::new_checked(eth.payload()).unwrap();
        assert_eq!((arp.op(), arp.sha(), arp.tha()), (arp_op::REPLY, BLUE, RED));
        assert_eq!(p.arp.counters.suppressed, 1);
    }

    #[test]
    fn arp_suppression_off_or_unknown_floods() {
        let mut p = pipe(false);
        let mut r = arp_reply(BLUE, [192, 168, 15, 2], RED, [192, 168, 15, 1]);
        p.d(1, &mut r, 0);
        let mut req = arp_request(RED, [192, 168, 15, 1], [192, 168, 15, 2]);
        assert_eq!(p.d(0, &mut req, 1), Verdict::Flood);
        let mut p = pipe(true);
        let mut req = arp_request(RED, [192, 168, 15, 1], [192, 168, 15, 9]);
        assert_eq!(p.d(0, &mut req, 1), Verdict::Flood);
    }

    #[test]
    fn gratuitous_arp_passes() {
        let mut p = pipe(true);
        let mut g = arp_request(BLUE, [192, 168, 15, 2], [192, 168, 15, 2]);
        assert_eq!(p.d(1, &mut g, 0), Verdict::Flood);
        assert_eq!(p.arp.counters.gratuitous, 1);
        assert_eq!(p.arp.lookup([192, 168, 15, 2].into(), 1).unwrap().mac, BLUE);
    }

    #[test]
    fn a_host_behind_a_gone_port_is_not_suppressed_once() {
        let mut p = pipe(true);
        let mut r = arp_reply(BLUE, [192, 168, 15, 2], RED, [192, 168, 15, 1]);
        p.d(1, &mut r, 0);
        let mut req = arp_request(RED, [192, 168, 15, 1], [192, 168, 15, 2]);
        assert_eq!(p.d(0, &mut req, 1), Verdict::Reply);
        // Red's port goes away; red comes back with another MAC.
        p.forget_port(0, 2);
        let red2 = MacAddr([2, 0, 0, 0, 0, 0x99]);
        let mut req = arp_request(red2, [192, 168, 15, 1], [192, 168, 15, 2]);
        assert_eq!(
            p.d(0, &mut req, 3),
            Verdict::Flood,
            "blue must hear red's new MAC"
        );
        let mut req = arp_request(red2, [192, 168, 15, 1], [192, 168, 15, 2]);
        assert_eq!(
            p.d(0, &mut req, 4),
            Verdict::Reply,
            "then suppression resumes"
        );
    }

    #[test]
    fn station_move_follows_the_source() {
        let mut p = pipe(true);
        let mut a = eth_frame(BLUE, RED, 0x0800, 64);
        p.d(0, &mut a, 0);
        p.d(2, &mut a, 1);
        let mut b = eth_frame(RED, BLUE, 0x0800, 64);
        assert_eq!(p.d(1, &mut b, 2), Verdict::Unicast(2));
    }
}
