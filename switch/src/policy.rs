//! The forwarding policy hook: your own code sees every frame and decides.
//!
//! Contract: [`Policy::classify`] is called once per received frame on a LAN
//! port, before MAC learning, with the ingress port, `now` (ms) and a
//! [`Frame`] whose headers are parsed on first use. It returns an [`Action`]:
//! continue with normal forwarding, drop (counted under the policy's reason),
//! redirect to one port, or mirror a copy to a port and continue. It must not
//! block; it runs on the forwarding thread.
//!
//! The pipeline is generic over the policy, so [`NoPolicy`] compiles away.
//! Policies compose: `(A, B)` asks `A` first and `B` only if `A` continues.
//! Built-ins configured in the topology (ACL rules, rate limits) form a
//! [`Chain`]; `vswitch run` uses it, and [`crate::daemon::run_with`] puts your
//! policy after it.

use crate::PortId;
use crate::wire::{EthernetFrame, MacAddr, ethertype};
use nat::{Ipv4Net, Ipv6Net};
use std::cell::OnceCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What a policy decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Normal forwarding.
    Continue,
    /// Drop the frame; the string names the reason (e.g. the rule).
    Drop(&'static str),
    /// Send it out of this port only.
    Redirect(PortId),
    /// Send a copy to this port, and forward the frame normally.
    Mirror(PortId),
    /// Add an 802.1Q tag with this VLAN id, then forward normally (VLAN-unaware switch only).
    PushVlan(u16),
    /// Remove the outer 802.1Q tag, then forward normally (VLAN-unaware switch only).
    PopVlan,
}

/// A policy's account of a frame (see [`Policy::explain`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    /// What it would do.
    pub action: Action,
    /// Why, in words (a rule's name, a fragment's fate).
    pub why: String,
}

/// Where a frame came from.
#[derive(Debug, Clone, Copy)]
pub struct FrameMeta {
    /// Ingress port.
    pub in_port: PortId,
    /// Time (ms).
    pub now: u64,
}

/// Fragment fields of an IPv4 or IPv6 packet that is part of a fragmented datagram.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fragment {
    /// Identification (16 bits for IPv4, 32 for IPv6).
    pub id: u32,
    /// Offset in 8-byte units (0: the first fragment).
    pub offset: u16,
    /// More fragments follow.
    pub more: bool,
}

/// Parsed headers of a frame (the fields ACLs match on).
///
/// IPv4 and IPv6 are parsed; for IPv6 the extension headers (hop-by-hop,
/// routing, fragment, destination options, AH) are walked, at most
/// [`MAX_EXT_HEADERS`] of them, to the upper-layer protocol. Ports and TCP
/// flags come from the first fragment (or an unfragmented packet) only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Headers {
    /// Destination MAC.
    pub dst: MacAddr,
    /// Source MAC.
    pub src: MacAddr,
    /// 802.1Q VLAN id, if tagged.
    pub vlan: Option<u16>,
    /// EtherType after any VLAN tag.
    pub ethertype: u16,
    /// IPv4 source, destination and protocol.
    pub ipv4: Option<(Ipv4Addr, Ipv4Addr, u8)>,
    /// IPv6 source, destination and upper-layer protocol (after extension headers).
    pub ipv6: Option<(Ipv6Addr, Ipv6Addr, u8)>,
    /// Transport ports (first fragment only; ICMP echo id as a port).
    pub ports: Option<(u16, u16)>,
    /// TCP flags.
    pub tcp_flags: Option<u8>,
    /// Set when the packet is a fragment.
    pub fragment: Option<Fragment>,
    /// An IP packet (or first fragment) whose transport header is cut short of
    /// what rules read (TCP 20 bytes, UDP 8, ICMP 8), a TCP fragment at offset
    /// 1 or 2 (RFC 1858 overlap), or an IPv6 header chain that cannot be
    /// walked within the bound. Such packets cannot be classified reliably.
    pub incomplete: bool,
}

/// Most IPv6 extension headers walked before giving up (the packet is then `incomplete`).
pub const MAX_EXT_HEADERS: usize = nat::wire::ipv6::MAX_EXT_HEADERS;

impl Headers {
    /// Parse what is there; missing layers stay `None`.
    pub fn parse(b: &[u8]) -> Headers {
        let Ok(eth) = EthernetFrame::new_checked(b) else {
            return Headers::default();
        };
        let mut h = Headers {
            dst: eth.dst(),
            src: eth.src(),
            ..Headers::default()
        };
        h.vlan = eth.vlan();
        let et = eth.inner_ethertype();
        h.ethertype = et;
        let l3 = b.get(eth.header_len()..).unwrap_or(&[]);
        if et == ethertype::IPV4 {
            if let Ok(ip) = nat::wire::Ipv4Packet::new_checked(l3) {
                let proto = ip.protocol();
                h.ipv4 = Some((ip.src(), ip.dst(), proto));
                if ip.is_fragment() {
                    h.fragment = Some(Fragment {
                        id: u32::from(ip.ident()),
                        offset: (ip.frag_offset() / 8) as u16,
                        more: ip.more_frags(),
                    });
                }
                h.transport(proto, 1, (ip.frag_offset() / 8) as u16, ip.payload());
            } else {
                h.incomplete = true;
            }
        } else if et == ethertype::IPV6 {
            h.parse_ipv6(l3, false);
        }
        h
    }

    /// An IPv6 header and its extension headers, walked by the wire layer
    /// ([`nat::wire::ipv6::Ipv6Packet::upper`], bounded): a chain it cannot
    /// walk leaves the packet `incomplete`, with the first next header.
    /// `quoted`: the packet an ICMPv6 error quotes, which may be cut short.
    fn parse_ipv6(&mut self, b: &[u8], quoted: bool) {
        use nat::wire::ipv6::Ipv6Packet;
        let p = if quoted {
            Ipv6Packet::new_quoted(b)
        } else {
            Ipv6Packet::new_checked(b)
        };
        let Ok(p) = p else {
            self.incomplete = true;
            return;
        };
        let (src, dst) = (p.src(), p.dst());
        let Ok(u) = p.upper() else {
            self.ipv6 = Some((src, dst, p.next_header()));
            self.incomplete = true;
            return;
        };
        self.ipv6 = Some((src, dst, u.proto));
        let offset = u.frag.map_or(0, |f| (f.offset / 8) as u16);
        if let Some(f) = u.frag {
            self.fragment = Some(Fragment {
                id: f.ident,
                offset,
                more: f.more,
            });
        }
        self.transport(u.proto, 58, offset, &p.packet()[u.offset..]);
    }

    /// Ports and flags of the transport header `l4` of protocol `proto` at
    /// fragment `offset`, in the family whose ICMP is `icmp` (read by the
    /// wire layer's [`nat::wire::flow_ports`], as the NAT reads them).
    fn transport(&mut self, proto: u8, icmp: u8, offset: u16, l4: &[u8]) {
        if offset != 0 {
            // RFC 1858: a TCP fragment at offset 1 or 2 overlaps (rewrites) the header.
            self.incomplete |= proto == 6 && offset < 3;
            return;
        }
        let need = match proto {
            6 => 20,
            17 | 1 | 58 => 8,
            _ => 0,
        };
        if l4.len() < need {
            self.incomplete = true;
            return;
        }
        // Echo request/reply (ICMP 8/0, ICMPv6 128/129): the id as a port.
        if let Some((sp, dp, x)) = nat::wire::flow_ports(proto, icmp, l4) {
            self.ports = Some((sp, dp));
            if proto == 6 {
                self.tcp_flags = Some(x);
            }
        }
    }

    /// Source, destination and (upper-layer) protocol of an IPv4 or IPv6 packet.
    pub fn ip(&self) -> Option<(IpAddr, IpAddr, u8)> {
        match (self.ipv4, self.ipv6) {
            (Some((s, d, p)), _) => Some((s.into(), d.into(), p)),
            (None, Some((s, d, p))) => Some((s.into(), d.into(), p)),
            _ => None,
        }
    }

    /// Whether this is a fragment other than the first.
    pub fn later_fragment(&self) -> bool {
        self.fragment.is_some_and(|f| f.offset != 0)
    }
}

/// A received frame: its bytes and, on demand, its parsed headers.
pub struct Frame<'a> {
    bytes: &'a [u8],
    parsed: OnceCell<Headers>,
}

impl<'a> Frame<'a> {
    /// Wrap frame bytes.
    pub fn new(bytes: &'a [u8]) -> Frame<'a> {
        Frame {
            bytes,
            parsed: OnceCell::new(),
        }
    }
    /// The Ethernet frame.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// Its headers (parsed once).
    pub fn headers(&self) -> &Headers {
        self.parsed.get_or_init(|| Headers::parse(self.bytes))
    }
}

/// A forwarding policy.
pub trait Policy {
    /// Decide about one frame.
    fn classify(&mut self, meta: &FrameMeta, frame: &Frame) -> Action;
    /// Named counters to show in `vswitch stats` (e.g. rule hits).
    fn counters(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
    /// What this policy would do with `frame`, and why, without changing
    /// any state (for `vswitch trace`, which then runs the switch's own
    /// forwarding code on a copy of its tables with this action). `None`:
    /// the policy cannot say; `trace` assumes [`Action::Continue`] and says so.
    fn explain(&self, _meta: &FrameMeta, _frame: &Frame) -> Option<Explained> {
        None
    }
    /// Periodic work from the worker's once-a-second sweep (age state at `now`).
    fn expire(&mut self, _now: u64) {}
    /// Whether the flow of `frame` (an IPv4 TCP or UDP packet as received)
    /// may be forwarded by the kernel fast path once established, so that
    /// this policy no longer sees its frames. Default: no. A policy that
    /// wants every frame (a fault injector, a sampler) keeps the default; a
    /// policy whose verdict is the same for every frame of a flow may say
    /// yes.
    fn offload(&self, _meta: &FrameMeta, _frame: &Frame) -> bool {
        false
    }
}

/// No policy: everything continues. Costs nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoPolicy;

impl Policy for NoPolicy {
    #[inline(always)]
    fn classify(&mut self, _: &FrameMeta, _: &Frame) -> Action {
        Action::Continue
    }
    fn offload(&self, _: &FrameMeta, _: &Frame) -> bool {
        true
    }
}

impl<A: Policy, B: Policy> Policy for (A, B) {
    #[inline]
    fn classify(&mut self, meta: &FrameMeta, frame: &Frame) -> Action {
        match self.0.classify(meta, frame) {
            Action::Continue => self.1.classify(meta, frame),
            a => a,
        }
    }
    fn counters(&self) -> Vec<(String, u64)> {
        let mut v = self.0.counters();
        v.extend(self.1.counters());
        v
    }
    fn explain(&self, meta: &FrameMeta, frame: &Frame) -> Option<Explained> {
        // As `classify`: the first policy's action unless it continues.
        match (self.0.explain(meta, frame), self.1.explain(meta, frame)) {
            (Some(a), _) if a.action != Action::Continue => Some(a),
            (Some(a), Some(b)) => Some(Explained {
                action: b.action,
                why: format!("{}; {}", a.why, b.why),
            }),
            (a, b) => a.or(b),
        }
    }
    fn expire(&mut self, now: u64) {
        self.0.expire(now);
        self.1.expire(now);
    }
    fn offload(&self, meta: &FrameMeta, frame: &Frame) -> bool {
        self.0.offload(meta, frame) && self.1.offload(meta, frame)
    }
}

impl<P: Policy + ?Sized> Policy for Box<P> {
    #[inline]
    fn classify(&mut self, meta: &FrameMeta, frame: &Frame) -> Action {
        (**self).classify(meta, frame)
    }
    fn counters(&self) -> Vec<(String, u64)> {
        (**self).counters()
    }
    fn explain(&self, meta: &FrameMeta, frame: &Frame) -> Option<Explained> {
        (**self).explain(meta, frame)
    }
    fn expire(&mut self, now: u64) {
        (**self).expire(now)
    }
    fn offload(&self, meta: &FrameMeta, frame: &Frame) -> bool {
        (**self).offload(meta, frame)
    }
}

/// An inclusive range of values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range(pub u16, pub u16);

impl Range {
    fn has(&self, v: u16) -> bool {
        self.0 <= v && v <= self.1
    }
}

/// An IPv4 or IPv6 network. A network of one family never contains an
/// address of the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpNet {
    /// IPv4 network.
    V4(Ipv4Net),
    /// IPv6 network.
    V6(Ipv6Net),
}

impl IpNet {
    /// Whether `ip` lies in this network (never, if of the other family).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self, ip) {
            (IpNet::V4(n), IpAddr::V4(a)) => n.contains(a),
            (IpNet::V6(n), IpAddr::V6(a)) => n.contains(a),
            _ => false,
        }
    }
}

impl From<Ipv4Net> for IpNet {
    fn from(n: Ipv4Net) -> IpNet {
        IpNet::V4(n)
    }
}

impl From<Ipv6Net> for IpNet {
    fn from(n: Ipv6Net) -> IpNet {
        IpNet::V6(n)
    }
}

/// One ACL rule: every field set must match.
///
/// Rules with L3/L4 fields (`src`, `dst`, `protocol`, ports, `tcp_flags`)
/// match IPv4 and IPv6 alike (a CIDR only its own family) and never match
/// non-IP frames; rules with only L2 fields (ports, MACs, VLAN, EtherType)
/// match any frame. Fragments: see [`Chain`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclRule {
    /// Shown in counters and traces.
    pub name: String,
    /// Drop (true) or allow (false).
    pub drop: bool,
    /// Ingress ports.
    pub in_ports: Option<Vec<PortId>>,
    /// Source MAC.
    pub src_mac: Option<MacAddr>,
    /// Destination MAC.
    pub dst_mac: Option<MacAddr>,
    /// VLAN id.
    pub vlan: Option<u16>,
    /// EtherType.
    pub ethertype: Option<u16>,
    /// Source network (IPv4 or IPv6).
    pub src: Option<IpNet>,
    /// Destination network (IPv4 or IPv6).
    pub dst: Option<IpNet>,
    /// IP protocol (for IPv6: the upper-layer protocol after extension headers).
    pub protocol: Option<u8>,
    /// Source ports.
    pub sport: Option<Range>,
    /// Destination ports.
    pub dport: Option<Range>,
    /// TCP flags that must all be set, and the mask they are compared under.
    pub tcp_flags: Option<(u8, u8)>,
    /// Connection state: `Some(true)` only frames of connections already seen
    /// (replies and related ICMP errors included), `Some(false)` only frames
    /// that would start one.
    pub state: Option<bool>,
}

impl AclRule {
    /// Whether the rule reads IP or transport fields.
    pub fn needs_ip(&self) -> bool {
        self.src.is_some()
            || self.dst.is_some()
            || self.protocol.is_some()
            || self.sport.is_some()
            || self.dport.is_some()
            || self.tcp_flags.is_some()
            || self.state.is_some()
    }

    /// Whether the rule matches.
    pub fn matches(&self, in_port: PortId, h: &Headers) -> bool {
        if self
            .in_ports
            .as_ref()
            .is_some_and(|p| !p.contains(&in_port))
            || self.src_mac.is_some_and(|m| m != h.src)
            || self.dst_mac.is_some_and(|m| m != h.dst)
            || self.vlan.is_some_and(|v| h.vlan != Some(v))
            || self.ethertype.is_some_and(|e| e != h.ethertype)
        {
            return false;
        }
        let needs_ip = self.src.is_some() || self.dst.is_some() || self.protocol.is_some();
        if needs_ip {
            let Some((s, d, p)) = h.ip() else {
                return false;
            };
            if self.src.is_some_and(|n| !n.contains(s))
                || self.dst.is_some_and(|n| !n.contains(d))
                || self.protocol.is_some_and(|x| x != p)
            {
                return false;
            }
        }
        if self.sport.is_some() || self.dport.is_some() {
            let Some((sp, dp)) = h.ports else {
                return false;
            };
            if self.sport.is_some_and(|r| !r.has(sp)) || self.dport.is_some_and(|r| !r.has(dp)) {
                return false;
            }
        }
        if let Some((want, mask)) = self.tcp_flags {
            let Some(f) = h.tcp_flags else { return false };
            if f & mask != want {
                return false;
            }
        }
        true
    }
}

/// A token bucket per port (packets/s and bits/s).
#[derive(Debug, Clone)]
pub struct RateLimit {
    /// The port.
    pub port: PortId,
    /// Packets per second (0: unlimited).
    pub pps: u64,
    /// Bits per second (0: unlimited).
    pub bps: u64,
    /// Burst in bytes (and the same number of ms of packets).
    pub burst_bytes: u64,
    tokens_bytes: f64,
    tokens_pkts: f64,
    last: u64,
    /// Frames dropped.
    pub dropped: u64,
}

impl RateLimit {
    /// A limiter for `port`.
    pub fn new(port: PortId, pps: u64, bps: u64, burst_bytes: u64) -> RateLimit {
        RateLimit {
            port,
            pps,
            bps,
            burst_bytes,
            tokens_bytes: burst_bytes as f64,
            tokens_pkts: (pps as f64 / 10.0).max(1.0),
            last: 0,
            dropped: 0,
        }
    }

    /// Whether a frame of `len` bytes may pass at `now` (ms); consumes tokens if so.
    pub fn admit(&mut self, len: usize, now: u64) -> bool {
        let dt = now.saturating_sub(self.last) as f64 / 1000.0;
        self.last = now;
        if self.bps > 0 {
            self.tokens_bytes =
                (self.tokens_bytes + dt * self.bps as f64 / 8.0).min(self.burst_bytes as f64);
        }
        if self.pps > 0 {
            self.tokens_pkts =
                (self.tokens_pkts + dt * self.pps as f64).min((self.pps as f64 / 10.0).max(1.0));
        }
        let ok_b = self.bps == 0 || self.tokens_bytes >= len as f64;
        let ok_p = self.pps == 0 || self.tokens_pkts >= 1.0;
        if ok_b && ok_p {
            if self.bps > 0 {
                self.tokens_bytes -= len as f64;
            }
            if self.pps > 0 {
                self.tokens_pkts -= 1.0;
            }
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

/// An IPv6 connection's tuple: the NAT's flow tuple, over IPv6.
type Tuple6 = nat::Tuple<Ipv6Addr>;

/// A connection's tuple in either family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlowKey {
    V4(nat::Tuple),
    V6(Tuple6),
}

/// Connections the ACL let through, for `state` rules, in the NAT's
/// connection tables (one per family: bounded, aged by a timer wheel; when
/// full, the least recently seen connection gives way). Both expire from
/// the worker's once-a-second sweep ([`Policy::expire`]), and lookups ignore
/// entries past their time, so an idle period never leaves stale state behind.
pub struct FlowState {
    table: nat::conntrack::Table,
    v6: nat::conntrack::Table<Ipv6Addr>,
    max: usize,
    /// Connections forgotten early to make room for a new one.
    evicted: u64,
}

/// Whether table `t` knows the connection `k` (either direction) at `now`.
fn flow_known<A: nat::family::Family>(
    t: &nat::conntrack::Table<A>,
    k: &nat::Tuple<A>,
    now: u64,
) -> bool {
    t.lookup(k, now).is_some()
}

/// Track `k` in `t` until `exp` (refresh it if known); true if it made room
/// by evicting another connection.
fn flow_track<A: nat::family::Family>(
    t: &mut nat::conntrack::Table<A>,
    k: &nat::Tuple<A>,
    now: u64,
    exp: u64,
) -> bool {
    match t.lookup(k, now) {
        Some((id, _)) => {
            t.set_expires(id, exp);
            false
        }
        None => matches!(
            t.insert(nat::conntrack::Entry::new(*k, k.inv(), exp), now),
            nat::conntrack::Insert::Evicted(..)
        ),
    }
}

/// The connections of `t` live at `now`, as saved.
fn flow_export<A: nat::family::Family + Into<IpAddr>>(
    t: &nat::conntrack::Table<A>,
    now: u64,
) -> impl Iterator<Item = SavedFlow> + '_ {
    t.iter()
        .filter(move |(_, e)| e.expires > now)
        .map(move |(_, e)| SavedFlow {
            proto: e.orig.proto,
            src: e.orig.src.into(),
            dst: e.orig.dst.into(),
            sport: e.orig.sport,
            dport: e.orig.dport,
            remaining_ms: e.expires - now,
        })
}

/// Idle lifetime of a tracked connection (ms).
const FLOW_IDLE_MS: u64 = 300_000;

impl FlowState {
    /// An empty tracker of at most `max` connections per family.
    pub fn new(max: usize) -> FlowState {
        FlowState {
            table: nat::conntrack::Table::new(max, 0x05ee_dac1),
            v6: nat::conntrack::Table::new(max, 0x05ee_dac6),
            max,
            evicted: 0,
        }
    }
    /// Number of tracked connections.
    pub fn len(&self) -> usize {
        self.table.len() + self.v6.len()
    }
    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Forget connections idle past their lifetime at `now`.
    pub fn expire(&mut self, now: u64) {
        self.table.expire(now, |_| {});
        self.v6.expire(now, |_| {});
    }

    fn known(&self, k: &FlowKey, now: u64) -> bool {
        match k {
            FlowKey::V4(t) => flow_known(&self.table, t, now),
            FlowKey::V6(t) => flow_known(&self.v6, t, now),
        }
    }

    /// Track `k` (or refresh it) until `now` plus the idle lifetime.
    fn track(&mut self, k: &FlowKey, now: u64) {
        let exp = now.saturating_add(FLOW_IDLE_MS);
        let evicted = match k {
            FlowKey::V4(t) => flow_track(&mut self.table, t, now, exp),
            FlowKey::V6(t) => flow_track(&mut self.v6, t, now, exp),
        };
        self.evicted += u64::from(evicted);
    }
}

/// A connection tracked for `state` rules, as saved across a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedFlow {
    /// IP protocol.
    pub proto: u8,
    /// Source address (as first seen).
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Time left before it is forgotten, at the save (ms).
    pub remaining_ms: u64,
}

impl FlowState {
    /// The connections live at `now`.
    pub fn export(&self, now: u64) -> Vec<SavedFlow> {
        flow_export(&self.table, now)
            .chain(flow_export(&self.v6, now))
            .collect()
    }

    /// Track `flows` again at `now`, `elapsed_ms` after they were saved
    /// (those whose time ran out are left out; at most the lifetime is
    /// kept). Returns how many were restored.
    pub fn import(&mut self, flows: &[SavedFlow], now: u64, elapsed_ms: u64) -> usize {
        let mut n = 0;
        for f in flows.iter().filter(|f| f.remaining_ms > elapsed_ms) {
            let exp = now.saturating_add((f.remaining_ms - elapsed_ms).min(FLOW_IDLE_MS));
            match (f.src, f.dst) {
                (IpAddr::V4(src), IpAddr::V4(dst)) => {
                    let t = nat::Tuple {
                        proto: f.proto,
                        src,
                        dst,
                        sport: f.sport,
                        dport: f.dport,
                    };
                    let e = nat::conntrack::Entry::new(t, t.inv(), exp);
                    if matches!(self.table.insert(e, now), nat::conntrack::Insert::Ok(_)) {
                        n += 1;
                    }
                }
                (IpAddr::V6(src), IpAddr::V6(dst)) => {
                    let t = Tuple6 {
                        proto: f.proto,
                        src,
                        dst,
                        sport: f.sport,
                        dport: f.dport,
                    };
                    let e = nat::conntrack::Entry::new(t, t.inv(), exp);
                    if matches!(self.v6.insert(e, now), nat::conntrack::Insert::Ok(_)) {
                        n += 1;
                    }
                }
                _ => {}
            }
        }
        n
    }
}

impl Clone for FlowState {
    /// A clone starts empty: connection state belongs to one running switch.
    fn clone(&self) -> Self {
        FlowState::new(self.max)
    }
}

impl std::fmt::Debug for FlowState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FlowState({} connections)", self.len())
    }
}

fn flow_key(h: &Headers) -> Option<FlowKey> {
    let (sport, dport) = h.ports?;
    if let Some((src, dst, proto)) = h.ipv4 {
        return Some(FlowKey::V4(nat::Tuple {
            proto,
            src,
            dst,
            sport,
            dport,
        }));
    }
    let (src, dst, proto) = h.ipv6?;
    Some(FlowKey::V6(Tuple6 {
        proto,
        src,
        dst,
        sport,
        dport,
    }))
}

/// For an ICMP or ICMPv6 error (destination unreachable, packet too big, time
/// exceeded, parameter problem), the tuple of the packet it quotes.
fn related_key(frame: &[u8], h: &Headers) -> Option<FlowKey> {
    if h.fragment.is_some() {
        return None;
    }
    let l3 = frame.get(EthernetFrame::new_checked(frame).ok()?.header_len()..)?;
    if let Some((_, _, 1)) = h.ipv4 {
        use nat::wire::{FlowHeader, Ipv4Packet, icmp::IcmpPacket, icmp_type, proto};
        let ip = Ipv4Packet::new_checked(l3).ok()?;
        let icmp = IcmpPacket::new_checked(ip.payload()).ok()?;
        if !nat::wire::icmp_is_error(icmp.msg_type()) {
            return None;
        }
        // The quoted header and at least the first 4 bytes of its transport header.
        let inner = Ipv4Packet::new_quoted(icmp.payload()).ok()?;
        let l4 = FlowHeader::new(inner.protocol(), proto::ICMP, inner.payload()).ok()?;
        let (sport, dport) = match inner.protocol() {
            proto::TCP | proto::UDP => l4.ports(),
            _ if l4.icmp_type() == icmp_type::ECHO_REQUEST => (l4.echo_ident()?, 0),
            _ => return None,
        };
        return Some(FlowKey::V4(nat::Tuple {
            proto: inner.protocol(),
            src: inner.src(),
            dst: inner.dst(),
            sport,
            dport,
        }));
    }
    if let Some((_, _, 58)) = h.ipv6 {
        let icmp = icmpv6_payload(l3)?;
        if !matches!(icmp.first()?, 1..=4) {
            return None;
        }
        let mut inner = Headers::default();
        inner.parse_ipv6(icmp.get(8..)?, true);
        let (src, dst, proto) = inner.ipv6?;
        if inner.fragment.is_some_and(|f| f.offset != 0) {
            return None;
        }
        let (sport, dport) = match (proto, inner.ports) {
            (6 | 17, Some(p)) => p,
            (58, Some((id, 0))) => (id, 0),
            _ => return None,
        };
        return Some(FlowKey::V6(Tuple6 {
            proto,
            src,
            dst,
            sport,
            dport,
        }));
    }
    None
}

/// The ICMPv6 message of an IPv6 packet (after its extension headers, as
/// the wire layer walks them; not in a fragment).
fn icmpv6_payload(b: &[u8]) -> Option<&[u8]> {
    let p = nat::wire::ipv6::Ipv6Packet::new_checked(b).ok()?;
    let u = p.upper().ok()?;
    if u.proto != nat::wire::ipv6::next_header::ICMPV6 || u.frag.is_some() {
        return None;
    }
    let end = p.total_len();
    b.get(u.offset..end)
}

/// Key of a fragmented datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FragKey {
    src: IpAddr,
    dst: IpAddr,
    /// The protocol for IPv4; 0 for IPv6 (the id is per address pair).
    proto: u8,
    id: u32,
}

#[derive(Debug, Clone, Copy)]
struct FragSlot {
    key: FragKey,
    allow: bool,
    expires: u64,
}

/// Verdicts of first fragments, for the fragments that follow them: a
/// set-associative table of [`FRAG_SETS`] × [`FRAG_WAYS`] slots (bounded,
/// O(1) per lookup and insert; a full set gives up its oldest slot).
#[derive(Debug, Clone)]
struct FragTable {
    slots: Vec<Option<FragSlot>>,
    hasher: std::hash::RandomState,
}

/// Sets of the fragment table.
pub const FRAG_SETS: usize = 256;
/// Slots per set.
pub const FRAG_WAYS: usize = 4;
/// How long a first fragment's verdict is remembered (ms), like a reassembly timeout.
pub const FRAG_TIMEOUT_MS: u64 = 30_000;

impl Default for FragTable {
    fn default() -> Self {
        FragTable {
            slots: vec![None; FRAG_SETS * FRAG_WAYS],
            hasher: std::hash::RandomState::new(),
        }
    }
}

impl FragTable {
    fn set(&self, k: &FragKey) -> std::ops::Range<usize> {
        use std::hash::BuildHasher;
        let s = (self.hasher.hash_one(k) as usize) % FRAG_SETS * FRAG_WAYS;
        s..s + FRAG_WAYS
    }
    fn lookup(&self, k: &FragKey, now: u64) -> Option<bool> {
        self.slots[self.set(k)]
            .iter()
            .flatten()
            .find(|s| s.key == *k && s.expires > now)
            .map(|s| s.allow)
    }
    fn remember(&mut self, k: FragKey, allow: bool, now: u64) {
        let r = self.set(&k);
        let set = &mut self.slots[r];
        let i = set
            .iter()
            .position(|s| s.is_some_and(|s| s.key == k))
            .or_else(|| set.iter().position(|s| s.is_none_or(|s| s.expires <= now)))
            .unwrap_or_else(|| {
                (0..FRAG_WAYS)
                    .min_by_key(|&i| set[i].map_or(0, |s| s.expires))
                    .unwrap_or(0)
            });
        set[i] = Some(FragSlot {
            key: k,
            allow,
            expires: now.saturating_add(FRAG_TIMEOUT_MS),
        });
    }
    fn expire(&mut self, now: u64) {
        for s in &mut self.slots {
            if s.is_some_and(|x| x.expires <= now) {
                *s = None;
            }
        }
    }
}

fn frag_key(h: &Headers) -> Option<FragKey> {
    let f = h.fragment?;
    let (src, dst, proto) = h.ip()?;
    Some(FragKey {
        src,
        dst,
        proto: if h.ipv4.is_some() { proto } else { 0 },
        id: f.id,
    })
}

/// Drops the chain makes besides rule hits (shown as `acl-drop:NAME` counters).
#[derive(Debug, Clone, Copy, Default)]
struct ChainDrops {
    /// First fragments too short for the transport header, TCP fragments at offset 1 or 2.
    tiny_fragment: u64,
    /// Later fragments whose first fragment was not seen (or was forgotten).
    fragment_unknown: u64,
    /// Unfragmented IP packets with a cut-short transport header or an
    /// IPv6 header chain too long to walk.
    bad_header: u64,
    /// Later fragments dropped because their first fragment was dropped.
    fragment_follows_drop: u64,
}

/// What the ACL makes of a frame ([`Chain`]'s one decision).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Judgement {
    /// A first fragment too short for the fields the rules read.
    TinyFragment,
    /// A packet whose transport header is cut short or unwalkable.
    BadHeader,
    /// A later fragment: its first fragment's verdict (allowed?), if known.
    LaterFragment(Option<bool>),
    /// The first matching rule, if any (none: default allow).
    Rule(Option<usize>),
}

impl Judgement {
    /// The action this judgement stands for under `acl`.
    fn action(self, acl: &[AclRule]) -> Action {
        match self {
            Judgement::TinyFragment => Action::Drop("acl-tiny-fragment"),
            Judgement::BadHeader => Action::Drop("acl-bad-header"),
            Judgement::LaterFragment(Some(true)) | Judgement::Rule(None) => Action::Continue,
            Judgement::LaterFragment(Some(false)) => Action::Drop("acl"),
            Judgement::LaterFragment(None) => Action::Drop("acl-fragment-unknown"),
            Judgement::Rule(Some(i)) if acl[i].drop => Action::Drop("acl"),
            Judgement::Rule(Some(_)) => Action::Continue,
        }
    }
}

/// The built-in policies, in order: rate limits, then ACL rules (first match wins, default allow).
///
/// Fragments (when a rule reads IP or transport fields): the first fragment
/// is classified like any packet and its verdict remembered for
/// [`FRAG_TIMEOUT_MS`]; later fragments get that verdict, or are dropped
/// (`acl-drop:fragment-unknown`) when it is unknown (reordered before the
/// first, or forgotten). A first fragment too short to hold the transport
/// header the rules read, or a TCP fragment at offset 1 or 2 (RFC 1858), is
/// dropped (`acl-drop:tiny-fragment`); so is an unfragmented packet with a
/// cut-short transport header or an unwalkable IPv6 header chain
/// (`acl-drop:bad-header`). Non-IP frames only match rules without IP fields.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    /// Ingress rate limits.
    pub limits: Vec<RateLimit>,
    /// ACL rules.
    pub acl: Vec<AclRule>,
    /// Hits per ACL rule.
    pub hits: Vec<u64>,
    /// Port names, for messages.
    pub port_names: Vec<String>,
    /// Connection tracking for `state` rules (only when a rule uses it).
    pub flows: Option<FlowState>,
    frags: FragTable,
    drops: ChainDrops,
    ip_rules: bool,
}

impl Chain {
    /// A chain of these rules and limits.
    pub fn new(acl: Vec<AclRule>, limits: Vec<RateLimit>, port_names: Vec<String>) -> Chain {
        let hits = vec![0; acl.len()];
        let flows = acl
            .iter()
            .any(|r| r.state.is_some())
            .then(|| FlowState::new(65_536));
        let ip_rules = acl.iter().any(AclRule::needs_ip);
        Chain {
            limits,
            acl,
            hits,
            port_names,
            flows,
            frags: FragTable::default(),
            drops: ChainDrops::default(),
            ip_rules,
        }
    }

    /// Take over the run-time state of `old` (the chain this one replaces on a
    /// reload): tracked connections, if this chain tracks any, and the
    /// verdicts of first fragments in flight.
    pub fn adopt_state(&mut self, old: &mut Chain) {
        if self.flows.is_some()
            && let Some(f) = old.flows.take()
        {
            self.flows = Some(f);
        }
        self.frags = std::mem::take(&mut old.frags);
    }

    /// The ACL's judgement of `frame`, without changing any state: the one
    /// decision [`Policy::classify`] applies (with its counters and
    /// connection tracking) and [`Policy::explain`] describes.
    fn judge(&self, meta: &FrameMeta, frame: &Frame) -> (Judgement, Option<FlowKey>) {
        let h = frame.headers();
        if self.ip_rules && (h.ip().is_some() || h.incomplete) {
            if h.incomplete {
                let j = if h.fragment.is_some() {
                    Judgement::TinyFragment
                } else {
                    Judgement::BadHeader
                };
                return (j, None);
            }
            if h.later_fragment() {
                let first = frag_key(h).and_then(|k| self.frags.lookup(&k, meta.now));
                return (Judgement::LaterFragment(first), None);
            }
        }
        let (key, known) = self.known(frame, meta.now);
        let rule = self
            .acl
            .iter()
            .position(|r| r.state.is_none_or(|est| est == known) && r.matches(meta.in_port, h));
        (Judgement::Rule(rule), key)
    }

    /// Whether the frame belongs to a tracked connection (or is an ICMP error about one).
    fn known(&self, frame: &Frame, now: u64) -> (Option<FlowKey>, bool) {
        let Some(f) = &self.flows else {
            return (None, false);
        };
        let h = frame.headers();
        let key = flow_key(h);
        let known = key.as_ref().is_some_and(|k| f.known(k, now))
            || related_key(frame.bytes(), h).is_some_and(|k| f.known(&k, now));
        (key, known)
    }
}

impl Policy for Chain {
    fn classify(&mut self, meta: &FrameMeta, frame: &Frame) -> Action {
        for l in &mut self.limits {
            if l.port == meta.in_port && !l.admit(frame.bytes().len(), meta.now) {
                return Action::Drop("rate-limit");
            }
        }
        if self.acl.is_empty() {
            return Action::Continue;
        }
        let (j, key) = self.judge(meta, frame);
        match j {
            Judgement::TinyFragment => self.drops.tiny_fragment += 1,
            Judgement::BadHeader => self.drops.bad_header += 1,
            Judgement::LaterFragment(Some(false)) => self.drops.fragment_follows_drop += 1,
            Judgement::LaterFragment(None) => self.drops.fragment_unknown += 1,
            Judgement::LaterFragment(Some(true)) => {}
            Judgement::Rule(rule) => {
                if let Some(i) = rule {
                    self.hits[i] += 1;
                }
                let allow = j.action(&self.acl) == Action::Continue;
                if self.ip_rules
                    && let Some(k) = frag_key(frame.headers())
                {
                    self.frags.remember(k, allow, meta.now);
                }
                // Allowed: remember the connection (or keep it alive).
                if allow && let (Some(f), Some(k)) = (&mut self.flows, key) {
                    f.track(&k, meta.now);
                }
            }
        }
        j.action(&self.acl)
    }

    fn counters(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .acl
            .iter()
            .zip(&self.hits)
            .map(|(r, h)| (format!("acl:{}", r.name), *h))
            .collect();
        if !self.acl.is_empty() {
            let d = &self.drops;
            for (name, n) in [
                ("tiny-fragment", d.tiny_fragment),
                ("fragment-unknown", d.fragment_unknown),
                ("fragment-follows-drop", d.fragment_follows_drop),
                ("bad-header", d.bad_header),
            ] {
                v.push((format!("acl-drop:{name}"), n));
            }
            if let Some(f) = &self.flows {
                v.push(("acl-state:evicted-v6".to_string(), f.evicted));
            }
        }
        for l in &self.limits {
            v.push((
                format!(
                    "rate-limit:{}",
                    self.port_names.get(l.port).map_or("?", |s| s.as_str())
                ),
                l.dropped,
            ));
        }
        v
    }

    fn explain(&self, meta: &FrameMeta, frame: &Frame) -> Option<Explained> {
        // The rate limits as classify applies them, on a copy of their buckets.
        for l in &self.limits {
            if l.port == meta.in_port && !l.clone().admit(frame.bytes().len(), meta.now) {
                return Some(Explained {
                    action: Action::Drop("rate-limit"),
                    why: format!(
                        "rate limit on {}: over its budget now: DROP",
                        self.port_names.get(l.port).map_or("?", |s| s.as_str())
                    ),
                });
            }
        }
        if self.acl.is_empty() {
            return None;
        }
        let (j, _) = self.judge(meta, frame);
        let why = match j {
            Judgement::TinyFragment => "acl: DROP (acl-drop:tiny-fragment: the transport header the rules read is missing or cut short)".to_string(),
            Judgement::BadHeader => "acl: DROP (acl-drop:bad-header: the transport header the rules read is missing or cut short)".to_string(),
            Judgement::LaterFragment(Some(true)) => "acl: a later fragment: allow, like its first fragment".to_string(),
            Judgement::LaterFragment(Some(false)) => "acl: a later fragment: DROP, like its first fragment".to_string(),
            Judgement::LaterFragment(None) => "acl: a later fragment whose first was not seen: DROP (acl-drop:fragment-unknown)".to_string(),
            Judgement::Rule(Some(i)) => format!(
                "acl rule {:?} matches: {}",
                self.acl[i].name,
                if self.acl[i].drop { "DROP" } else { "allow" }
            ),
            Judgement::Rule(None) => "no acl rule matches: allow".to_string(),
        };
        Some(Explained {
            action: j.action(&self.acl),
            why,
        })
    }

    fn expire(&mut self, now: u64) {
        if let Some(f) = &mut self.flows {
            f.expire(now);
        }
        self.frags.expire(now);
    }

    /// ACL verdicts are flow-level and may be offloaded, except where the
    /// chain must see every frame: an ingress rate limit on the port (its
    /// token bucket), `state` rules (their connection tracking), and rules
    /// on TCP flags (a verdict that can change within a flow). Rule hit
    /// counters then count a flow's slow-path frames only.
    fn offload(&self, meta: &FrameMeta, _frame: &Frame) -> bool {
        !self.limits.iter().any(|l| l.port == meta.in_port)
            && self.flows.is_none()
            && !self.acl.iter().any(|r| r.tcp_flags.is_some())
    }
}

/// A policy whose built-in part can be replaced between batches (`vswitch reload`).
pub trait Reload {
    /// Replace the built-in chain (keeping its connection and fragment state).
    fn set_chain(&mut self, _chain: Chain) {}
    /// The connections the built-in chain tracks for `state` rules, live at
    /// `now` (saved across a restart, [`crate::state`]).
    fn saved_flows(&self, _now: u64) -> Vec<SavedFlow> {
        Vec::new()
    }
    /// Track saved connections again (see [`FlowState::import`]); how many.
    fn restore_flows(&mut self, _flows: &[SavedFlow], _now: u64, _elapsed_ms: u64) -> usize {
        0
    }
}

impl Reload for NoPolicy {}

impl<U: Policy> Reload for (Chain, U) {
    fn set_chain(&mut self, mut chain: Chain) {
        chain.adopt_state(&mut self.0);
        self.0 = chain;
    }
    fn saved_flows(&self, now: u64) -> Vec<SavedFlow> {
        self.0.flows.as_ref().map_or(Vec::new(), |f| f.export(now))
    }
    fn restore_flows(&mut self, flows: &[SavedFlow], now: u64, elapsed_ms: u64) -> usize {
        self.0
            .flows
            .as_mut()
            .map_or(0, |f| f.import(flows, now, elapsed_ms))
    }
}

/// What a reload produces: the new chain, isolation flags and SPAN mirrors (per port).
pub struct Reloaded {
    /// Built-in policies.
    pub chain: Chain,
    /// Isolated ports.
    pub isolated: Vec<bool>,
    /// Mirror target of each port.
    pub mirrors: Vec<Option<PortId>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ETH_HLEN;
    use crate::wire::tests_fixtures::eth_frame;

    fn net4(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn net6(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    fn tcp_syn() -> Vec<u8> {
        let mut f = eth_frame(
            MacAddr([2, 0, 0, 0, 0, 2]),
            MacAddr([2, 0, 0, 0, 0, 1]),
            0x0800,
            54,
        );
        let ip = &mut f[14..];
        ip[..20].copy_from_slice(&[
            0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 192, 168, 15, 1, 192, 168, 15, 2,
        ]);
        ip[20..24].copy_from_slice(&[0x9c, 0x40, 0, 80]); // 40000 -> 80
        ip[33] = 0x02;
        f
    }

    #[test]
    fn headers_parse_l2_to_l4() {
        let h = Headers::parse(&tcp_syn());
        assert_eq!(h.ethertype, 0x0800);
        assert_eq!(
            h.ipv4,
            Some((
                Ipv4Addr::new(192, 168, 15, 1),
                Ipv4Addr::new(192, 168, 15, 2),
                6
            ))
        );
        assert_eq!(h.ports, Some((40000, 80)));
        assert_eq!(h.tcp_flags, Some(0x02));
        assert_eq!(Headers::parse(&[0u8; 5]), Headers::default());
    }

    #[test]
    fn acl_first_match_wins_and_counts() {
        let drop80 = AclRule {
            name: "no-http".into(),
            drop: true,
            protocol: Some(6),
            dport: Some(Range(80, 80)),
            ..Default::default()
        };
        let allow_all = AclRule {
            name: "rest".into(),
            ..Default::default()
        };
        let mut c = Chain::new(vec![drop80, allow_all], vec![], vec!["a".into()]);
        let f = tcp_syn();
        let meta = FrameMeta { in_port: 0, now: 0 };
        assert_eq!(c.classify(&meta, &Frame::new(&f)), Action::Drop("acl"));
        let arp = eth_frame(MacAddr::BROADCAST, MacAddr([2, 0, 0, 0, 0, 1]), 0x0806, 60);
        assert_eq!(c.classify(&meta, &Frame::new(&arp)), Action::Continue);
        assert_eq!(
            c.counters()[..2],
            [("acl:no-http".to_string(), 1), ("acl:rest".to_string(), 1)]
        );
        // explain gives the action classify took, without counting it.
        let e = c.explain(&meta, &Frame::new(&f)).unwrap();
        assert!(e.why.contains("no-http"), "{e:?}");
        assert_eq!(e.action, Action::Drop("acl"));
        assert_eq!(c.counters()[0], ("acl:no-http".to_string(), 1));
    }

    #[test]
    fn acl_fields() {
        let h = Headers::parse(&tcp_syn());
        let r = |f: fn(&mut AclRule)| {
            let mut a = AclRule::default();
            f(&mut a);
            a.matches(0, &h)
        };
        assert!(r(|a| a.src = Some(net4("192.168.15.0/24").into())));
        assert!(!r(|a| a.dst = Some(net4("10.0.0.0/8").into())));
        assert!(r(|a| a.tcp_flags = Some((0x02, 0x12))), "SYN without ACK");
        assert!(!r(|a| a.tcp_flags = Some((0x12, 0x12))));
        assert!(!r(|a| a.in_ports = Some(vec![1])));
        assert!(r(|a| a.sport = Some(Range(1024, 65535))));
        assert!(!r(|a| a.vlan = Some(10)));
        assert!(r(|a| a.src_mac = Some(MacAddr([2, 0, 0, 0, 0, 1]))));
    }

    #[test]
    fn stateful_rule_allows_replies_of_connections_started_inside() {
        // Port 1 (blue) may answer, not start: allow established, drop the rest from port 1.
        let replies = AclRule {
            name: "replies".into(),
            in_ports: Some(vec![1]),
            state: Some(true),
            ..Default::default()
        };
        let block = AclRule {
            name: "block-blue".into(),
            drop: true,
            in_ports: Some(vec![1]),
            ..Default::default()
        };
        let mut c = Chain::new(
            vec![replies, block],
            vec![],
            vec!["red".into(), "blue".into()],
        );
        let syn = tcp_syn(); // 192.168.15.1:40000 -> .2:80
        let mut reply = syn.clone();
        reply[26..30].copy_from_slice(&[192, 168, 15, 2]);
        reply[30..34].copy_from_slice(&[192, 168, 15, 1]);
        reply[34..38].copy_from_slice(&[0, 80, 0x9c, 0x40]);
        let blue_first = reply.clone();
        let red = FrameMeta { in_port: 0, now: 0 };
        let blue = FrameMeta { in_port: 1, now: 1 };
        assert_eq!(
            c.classify(&blue, &Frame::new(&blue_first)),
            Action::Drop("acl"),
            "blue cannot start"
        );
        assert_eq!(c.classify(&red, &Frame::new(&syn)), Action::Continue);
        assert_eq!(
            c.classify(&blue, &Frame::new(&reply)),
            Action::Continue,
            "blue's reply passes"
        );
        assert_eq!(c.counters()[0], ("acl:replies".to_string(), 1));
        // After the idle lifetime the connection is forgotten.
        let late = FrameMeta {
            in_port: 1,
            now: FLOW_IDLE_MS + 10_000,
        };
        assert_eq!(c.classify(&late, &Frame::new(&reply)), Action::Drop("acl"));
    }

    #[test]
    fn token_bucket_admits_the_rate() {
        let mut l = RateLimit::new(0, 0, 8_000_000, 10_000); // 1 MB/s, 10 kB burst
        let mut passed = 0u64;
        for ms in 0..10_000u64 {
            for _ in 0..10 {
                if l.admit(1000, ms) {
                    passed += 1000;
                }
            }
        }
        // 10 s at 1 MB/s plus the burst.
        assert!((9_900_000..=10_100_000).contains(&passed), "{passed}");
        let mut p = RateLimit::new(0, 100, 0, 0);
        let n = (0..1000u64).filter(|ms| p.admit(60, *ms)).count();
        assert!((95..=115).contains(&n), "{n}");
    }

    #[test]
    fn tuple_composes_in_order() {
        struct DropAll;
        impl Policy for DropAll {
            fn classify(&mut self, _: &FrameMeta, _: &Frame) -> Action {
                Action::Drop("all")
            }
        }
        let meta = FrameMeta { in_port: 0, now: 0 };
        let f = tcp_syn();
        assert_eq!(
            (NoPolicy, DropAll).classify(&meta, &Frame::new(&f)),
            Action::Drop("all")
        );
        assert_eq!(
            (DropAll, NoPolicy).classify(&meta, &Frame::new(&f)),
            Action::Drop("all")
        );
        assert_eq!(
            (NoPolicy, NoPolicy).classify(&meta, &Frame::new(&f)),
            Action::Continue
        );
    }

    // Fixtures below are built field by field from RFC 791 (IPv4), RFC 8200
    // (IPv6 and its extension headers), RFC 793 (TCP) and RFC 792/4443 (ICMP);
    // checksums are left zero (the ACL does not read them).
    const RED_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const BLUE_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);
    const LL_RED: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
    const LL_BLUE: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);
    const RED4: [u8; 4] = [192, 168, 15, 1];
    const BLUE4: [u8; 4] = [192, 168, 15, 2];

    fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = BLUE_MAC.0.to_vec();
        f.extend(RED_MAC.0);
        f.extend(ethertype.to_be_bytes());
        f.extend(payload);
        f
    }

    /// A 20-byte TCP header.
    fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = flags;
        t
    }

    /// IPv4 packet: `frag` is the flags/offset word (0x2000 = MF, offset in 8-byte units).
    fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], id: u16, frag: u16, l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0];
        p.extend(((20 + l4.len()) as u16).to_be_bytes());
        p.extend(id.to_be_bytes());
        p.extend(frag.to_be_bytes());
        p.extend([64, proto, 0, 0]);
        p.extend(src);
        p.extend(dst);
        p.extend(l4);
        eth(0x0800, &p)
    }

    /// IPv6 packet with `next` as the first next-header and `rest` (extension headers and payload).
    fn ipv6(next: u8, src: Ipv6Addr, dst: Ipv6Addr, rest: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend((rest.len() as u16).to_be_bytes());
        p.extend([next, 64]);
        p.extend(src.octets());
        p.extend(dst.octets());
        p.extend(rest);
        eth(0x86dd, &p)
    }

    /// An 8-byte options extension header (hop-by-hop or destination options) with PadN.
    fn opts(next: u8) -> Vec<u8> {
        vec![next, 0, 1, 4, 0, 0, 0, 0]
    }

    /// An IPv6 fragment header.
    fn frag6(next: u8, offset: u16, more: bool, id: u32) -> Vec<u8> {
        let mut f = vec![next, 0];
        f.extend((offset << 3 | u16::from(more)).to_be_bytes());
        f.extend(id.to_be_bytes());
        f
    }

    fn no_ssh() -> AclRule {
        AclRule {
            name: "no-ssh-to-blue".into(),
            drop: true,
            in_ports: Some(vec![0]),
            protocol: Some(6),
            dport: Some(Range(22, 22)),
            ..Default::default()
        }
    }

    fn chain(rules: Vec<AclRule>) -> Chain {
        Chain::new(rules, vec![], vec!["red".into(), "blue".into()])
    }

    fn at(in_port: usize, now: u64) -> FrameMeta {
        FrameMeta { in_port, now }
    }

    fn counter(c: &Chain, name: &str) -> u64 {
        c.counters().into_iter().find(|(n, _)| n == name).unwrap().1
    }

    #[test]
    fn l4_rules_match_ipv6_through_extension_headers() {
        // Issue 8: `no-ssh-to-blue` was evaded over IPv6 link-local addresses.
        let mut c = chain(vec![no_ssh()]);
        let plain = ipv6(6, LL_RED, LL_BLUE, &tcp(40000, 22, 0x02));
        let h = Headers::parse(&plain);
        assert_eq!(h.ipv6, Some((LL_RED, LL_BLUE, 6)));
        assert_eq!((h.ports, h.tcp_flags), (Some((40000, 22)), Some(0x02)));
        assert_eq!(
            c.classify(&at(0, 0), &Frame::new(&plain)),
            Action::Drop("acl")
        );
        // Hop-by-hop, then destination options, then TCP.
        let mut rest = opts(60);
        rest.extend(opts(6));
        rest.extend(tcp(40000, 22, 0x02));
        let ext = ipv6(0, LL_RED, LL_BLUE, &rest);
        assert_eq!(
            c.classify(&at(0, 0), &Frame::new(&ext)),
            Action::Drop("acl")
        );
        let web = ipv6(6, LL_RED, LL_BLUE, &tcp(40000, 80, 0x02));
        assert_eq!(c.classify(&at(0, 0), &Frame::new(&web)), Action::Continue);
        assert_eq!(counter(&c, "acl:no-ssh-to-blue"), 2);
    }

    #[test]
    fn cidrs_match_only_their_own_family() {
        let h4 = Headers::parse(&ipv4(6, RED4, BLUE4, 1, 0, &tcp(1, 22, 2)));
        let h6 = Headers::parse(&ipv6(6, LL_RED, LL_BLUE, &tcp(1, 22, 2)));
        let rule = |src: IpNet| AclRule {
            src: Some(src),
            ..Default::default()
        };
        let v4 = rule(net4("0.0.0.0/0").into());
        let v6 = rule(net6("fe80::/10").into());
        assert!(v4.matches(0, &h4) && !v4.matches(0, &h6));
        assert!(v6.matches(0, &h6) && !v6.matches(0, &h4));
        let host = rule(IpNet::V6(Ipv6Net {
            addr: LL_BLUE,
            prefix: 128,
        }));
        assert!(!host.matches(0, &h6));
        assert!(
            IpNet::V6(Ipv6Net {
                addr: LL_BLUE,
                prefix: 0,
            })
            .contains(LL_RED.into())
        );
        // No CIDR: protocol and ports match both families; non-IP frames never.
        assert!(no_ssh().matches(0, &h4) && no_ssh().matches(0, &h6));
        let arp = Headers::parse(&eth(0x0806, &[0u8; 28]));
        assert!(!no_ssh().matches(0, &arp));
        let by_type = AclRule {
            ethertype: Some(0x0806),
            ..Default::default()
        };
        assert!(by_type.matches(0, &arp));
    }

    #[test]
    fn an_unwalkable_ipv6_header_chain_is_dropped_not_allowed() {
        let mut c = chain(vec![no_ssh()]);
        // MAX_EXT_HEADERS + 1 destination options headers before TCP.
        let mut rest = Vec::new();
        for _ in 0..MAX_EXT_HEADERS {
            rest.extend(opts(60));
        }
        rest.extend(opts(6));
        rest.extend(tcp(40000, 22, 0x02));
        let long = ipv6(60, LL_RED, LL_BLUE, &rest);
        assert!(Headers::parse(&long).incomplete);
        assert_eq!(
            c.classify(&at(0, 0), &Frame::new(&long)),
            Action::Drop("acl-bad-header")
        );
        // An extension header running past the payload.
        let cut = ipv6(0, LL_RED, LL_BLUE, &[6, 9, 0, 0]);
        assert_eq!(
            c.classify(&at(0, 0), &Frame::new(&cut)),
            Action::Drop("acl-bad-header")
        );
        assert_eq!(counter(&c, "acl-drop:bad-header"), 2);
        // Without IP rules, the same frame is not the ACL's business.
        let mut l2 = chain(vec![AclRule {
            src_mac: Some(MacAddr([2, 0, 0, 0, 0, 9])),
            drop: true,
            ..Default::default()
        }]);
        assert_eq!(l2.classify(&at(0, 0), &Frame::new(&long)), Action::Continue);
    }

    #[test]
    fn tiny_and_overlapping_tcp_fragments_are_dropped() {
        // RFC 1858: a first fragment holding only 8 bytes of TCP (no flags), and
        // a TCP fragment at offset 1 (which would rewrite the flags).
        let flags_rule = AclRule {
            name: "no-syn-from-red".into(),
            drop: true,
            in_ports: Some(vec![0]),
            tcp_flags: Some((0x02, 0x12)),
            ..Default::default()
        };
        let mut c = chain(vec![flags_rule]);
        let tiny = ipv4(6, RED4, BLUE4, 7, 0x2000, &tcp(40000, 80, 0x02)[..8]);
        assert!(Headers::parse(&tiny).incomplete);
        assert_eq!(
            c.classify(&at(0, 0), &Frame::new(&tiny)),
            Action::Drop("acl-tiny-fragment")
        );
        let overlap = ipv4(6, RED4, BLUE4, 7, 1, &[0u8; 16]);
        assert_eq!(
            c.classify(&at(0, 0), &Frame::new(&overlap)),
            Action::Drop("acl-tiny-fragment")
        );
        let tiny6 = {
            let mut r = frag6(6, 0, true, 9);
            r.extend(&tcp(40000, 80, 0x02)[..8]);
            ipv6(44, LL_RED, LL_BLUE, &r)
        };
        assert_eq!(
            c.classify(&at(0, 0), &Frame::new(&tiny6)),
            Action::Drop("acl-tiny-fragment")
        );
        assert_eq!(counter(&c, "acl-drop:tiny-fragment"), 3);
    }

    #[test]
    fn later_fragments_follow_the_first_fragments_verdict() {
        let mut c = chain(vec![no_ssh()]);
        let first = |dport, id| ipv4(6, RED4, BLUE4, id, 0x2000, &tcp(40000, dport, 0x18));
        let later = |id| ipv4(6, RED4, BLUE4, id, 3, &[0u8; 100]);
        // Allowed datagram: its later fragment passes (no ports of its own).
        assert_eq!(
            c.classify(&at(0, 0), &Frame::new(&first(80, 1))),
            Action::Continue
        );
        assert_eq!(
            c.classify(&at(0, 1), &Frame::new(&later(1))),
            Action::Continue
        );
        // Dropped datagram: so is its later fragment.
        assert_eq!(
            c.classify(&at(0, 2), &Frame::new(&first(22, 2))),
            Action::Drop("acl")
        );
        assert_eq!(
            c.classify(&at(0, 3), &Frame::new(&later(2))),
            Action::Drop("acl")
        );
        // A later fragment without a first (or after the first was forgotten): dropped.
        assert_eq!(
            c.classify(&at(0, 4), &Frame::new(&later(3))),
            Action::Drop("acl-fragment-unknown")
        );
        c.expire(FRAG_TIMEOUT_MS + 10);
        assert_eq!(
            c.classify(&at(0, FRAG_TIMEOUT_MS + 10), &Frame::new(&later(1))),
            Action::Drop("acl-fragment-unknown")
        );
        // IPv6: the fragment header's id, through to the upper layer.
        let f6 = |dport: u16, offset, id| {
            let mut r = frag6(6, offset, offset == 0, id);
            r.extend(if offset == 0 {
                tcp(40000, dport, 0x18)
            } else {
                vec![0; 64]
            });
            ipv6(44, LL_RED, LL_BLUE, &r)
        };
        let t = FRAG_TIMEOUT_MS + 20;
        assert_eq!(
            c.classify(&at(0, t), &Frame::new(&f6(22, 0, 5))),
            Action::Drop("acl")
        );
        assert_eq!(
            c.classify(&at(0, t), &Frame::new(&f6(0, 8, 5))),
            Action::Drop("acl")
        );
        assert_eq!(
            c.classify(&at(0, t), &Frame::new(&f6(80, 0, 6))),
            Action::Continue
        );
        assert_eq!(
            c.classify(&at(0, t), &Frame::new(&f6(0, 8, 6))),
            Action::Continue
        );
        assert_eq!(counter(&c, "acl-drop:fragment-follows-drop"), 2);
        assert_eq!(counter(&c, "acl-drop:fragment-unknown"), 2);
    }

    /// Blue may answer, not start: allow established, drop the rest from blue (port 1).
    fn replies_only() -> Chain {
        chain(vec![
            AclRule {
                name: "replies".into(),
                in_ports: Some(vec![1]),
                state: Some(true),
                ..Default::default()
            },
            AclRule {
                name: "block-blue".into(),
                drop: true,
                in_ports: Some(vec![1]),
                ..Default::default()
            },
        ])
    }

    #[test]
    fn related_icmp_errors_and_reply_fragments_pass_stateful_rules() {
        let mut c = replies_only();
        let syn = ipv4(17, RED4, BLUE4, 1, 0, &[0x9c, 0x40, 0, 53, 0, 8, 0, 0]);
        assert_eq!(c.classify(&at(0, 0), &Frame::new(&syn)), Action::Continue);
        // Blue's port unreachable quoting red's datagram: related, passes.
        let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend(&syn[14..]);
        let err = ipv4(1, BLUE4, RED4, 2, 0, &icmp);
        assert_eq!(c.classify(&at(1, 1), &Frame::new(&err)), Action::Continue);
        // An error quoting a flow never seen is new: dropped.
        let mut bogus = icmp.clone();
        bogus[8 + 20 + 1] = 99; // another source port
        let err2 = ipv4(1, BLUE4, RED4, 3, 0, &bogus);
        assert_eq!(
            c.classify(&at(1, 1), &Frame::new(&err2)),
            Action::Drop("acl")
        );
        // A fragmented reply: the first fragment is established, the later follows it.
        let first = ipv4(
            17,
            BLUE4,
            RED4,
            9,
            0x2000,
            &[0, 53, 0x9c, 0x40, 0x05, 0xdc, 0, 0],
        );
        let later = ipv4(17, BLUE4, RED4, 9, 1, &[0u8; 64]);
        assert_eq!(c.classify(&at(1, 2), &Frame::new(&first)), Action::Continue);
        assert_eq!(c.classify(&at(1, 2), &Frame::new(&later)), Action::Continue);
        // IPv6: a flow from red, then blue's ICMPv6 destination unreachable about it.
        let syn6 = ipv6(6, LL_RED, LL_BLUE, &tcp(40000, 80, 0x02));
        assert_eq!(c.classify(&at(0, 3), &Frame::new(&syn6)), Action::Continue);
        let mut icmp6 = vec![1, 4, 0, 0, 0, 0, 0, 0];
        icmp6.extend(&syn6[14..]);
        let err6 = ipv6(58, LL_BLUE, LL_RED, &icmp6);
        assert_eq!(c.classify(&at(1, 4), &Frame::new(&err6)), Action::Continue);
        let reply6 = ipv6(6, LL_BLUE, LL_RED, &tcp(80, 40000, 0x12));
        assert_eq!(
            c.classify(&at(1, 4), &Frame::new(&reply6)),
            Action::Continue
        );
        let start6 = ipv6(6, LL_BLUE, LL_RED, &tcp(80, 40001, 0x02));
        assert_eq!(
            c.classify(&at(1, 4), &Frame::new(&start6)),
            Action::Drop("acl")
        );
    }

    #[test]
    fn reload_keeps_the_connection_table() {
        let mut p = (replies_only(), NoPolicy);
        let out = ipv4(17, RED4, BLUE4, 1, 0, &[0x9c, 0x40, 0, 53, 0, 8, 0, 0]);
        let back = ipv4(17, BLUE4, RED4, 1, 0, &[0, 53, 0x9c, 0x40, 0, 8, 0, 0]);
        assert_eq!(p.classify(&at(0, 0), &Frame::new(&out)), Action::Continue);
        p.set_chain(replies_only());
        assert_eq!(p.0.flows.as_ref().unwrap().len(), 1);
        assert_eq!(p.classify(&at(1, 1), &Frame::new(&back)), Action::Continue);
        // A chain without state rules tracks nothing.
        p.set_chain(chain(vec![no_ssh()]));
        assert!(p.0.flows.is_none());
    }

    /// The tracked connections survive a restart through the state file's
    /// export/import: replies pass afterwards, until the time left runs out.
    #[test]
    fn tracked_connections_survive_export_and_import() {
        let mut p = (replies_only(), NoPolicy);
        let out = ipv4(17, RED4, BLUE4, 1, 0, &[0x9c, 0x40, 0, 53, 0, 8, 0, 0]);
        let back = ipv4(17, BLUE4, RED4, 1, 0, &[0, 53, 0x9c, 0x40, 0, 8, 0, 0]);
        assert_eq!(p.classify(&at(0, 0), &Frame::new(&out)), Action::Continue);
        let saved = p.saved_flows(100_000); // 200 s left
        assert_eq!(saved.len(), 1);
        // The new run: nothing known until the import.
        let mut q = (replies_only(), NoPolicy);
        assert_ne!(q.classify(&at(1, 5), &Frame::new(&back)), Action::Continue);
        assert_eq!(q.restore_flows(&saved, 5, 150_000), 1);
        assert_eq!(q.classify(&at(1, 6), &Frame::new(&back)), Action::Continue);
        // 50 s were left (refreshed by that reply, though: a fresh one is not).
        let mut r = (replies_only(), NoPolicy);
        r.restore_flows(&saved, 5, 150_000);
        assert_eq!(
            r.classify(&at(1, 50_004), &Frame::new(&back)),
            Action::Continue
        );
        let mut r = (replies_only(), NoPolicy);
        r.restore_flows(&saved, 5, 150_000);
        assert_ne!(
            r.classify(&at(1, 50_006), &Frame::new(&back)),
            Action::Continue
        );
        // Too late: nothing restored.
        assert_eq!(
            (replies_only(), NoPolicy).restore_flows(&saved, 5, 200_000),
            0
        );
    }

    #[test]
    fn the_sweep_expires_stateful_entries_without_traffic() {
        let mut c = replies_only();
        let out = ipv4(17, RED4, BLUE4, 1, 0, &[0x9c, 0x40, 0, 53, 0, 8, 0, 0]);
        let out6 = ipv6(17, LL_RED, LL_BLUE, &[0x9c, 0x40, 0, 53, 0, 8, 0, 0]);
        c.classify(&at(0, 0), &Frame::new(&out));
        c.classify(&at(0, 0), &Frame::new(&out6));
        assert_eq!(c.flows.as_ref().unwrap().len(), 2);
        // An idle hour, swept once a second with no frame arriving.
        for s in 1..=3600u64 {
            c.expire(s * 1000);
        }
        assert_eq!(c.flows.as_ref().unwrap().len(), 0);
    }

    #[test]
    fn no_header_value_panics_the_classifier() {
        // Seeded xorshift: IPv4/IPv6 frames with random header bytes and lengths
        // (extension-header chains, fragments, ICMP errors quoting junk).
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut c = chain(vec![
            AclRule {
                state: Some(true),
                ..Default::default()
            },
            no_ssh(),
            AclRule {
                name: "v6".into(),
                drop: true,
                src: Some(IpNet::V6(Ipv6Net {
                    addr: LL_RED,
                    prefix: 64,
                })),
                tcp_flags: Some((2, 2)),
                ..Default::default()
            },
        ]);
        for i in 0..200_000u64 {
            let len = (rnd() % 140) as usize;
            let mut body: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
            let et = if i % 2 == 0 { 0x86dd } else { 0x0800 };
            if let Some(b) = body.first_mut() {
                let version = if et == 0x86dd { 0x60 } else { 0x45 };
                *b = version | ((*b & 0x0f) * u8::from(i % 7 == 0));
            }
            if et == 0x86dd && body.len() > 6 {
                body[6] = [0, 43, 44, 60, 51, 58, 6, 17][(rnd() % 8) as usize];
            }
            if et == 0x0800 && body.len() > 9 {
                body[9] = [1, 6, 17][(rnd() % 3) as usize];
                body[2] = 0;
                body[3] = body.len() as u8;
            }
            let f = eth(et, &body);
            let port = (rnd() % 2) as usize;
            let _ = c.classify(&at(port, i / 100), &Frame::new(&f));
            let _ = c.explain(&at(port, i / 100), &Frame::new(&f));
        }
        c.expire(u64::MAX / 2);
    }

    /// A Packet Too Big quotes as much of the packet as fits in 1,280
    /// bytes: the quoted header says more than is there, and it is still
    /// related to its connection (else path MTU discovery breaks behind
    /// stateful rules). Built with the wire layer's emitter.
    #[test]
    fn a_cut_short_icmpv6_quote_is_still_related() {
        use nat::wire::icmpv6::{emit_error, icmp6_type};
        use nat::wire::ipv6::{emit_header, next_header};
        let (a, b): (std::net::Ipv6Addr, std::net::Ipv6Addr) = (
            "fd00:15::1".parse().unwrap(),
            "2001:db8::10".parse().unwrap(),
        );
        let mut quote = [0u8; 60];
        emit_header(&mut quote, a, b, next_header::TCP, 63, 1460);
        quote[40..44].copy_from_slice(&[0x9c, 0x40, 0x01, 0xbb]); // 40000 -> 443
        quote[52] = 0x50;
        let mut f = vec![0u8; 200];
        f[12..14].copy_from_slice(&ethertype::IPV6.to_be_bytes());
        let n = emit_error(
            &mut f[ETH_HLEN..],
            "fd00:15::5".parse().unwrap(),
            a,
            icmp6_type::PACKET_TOO_BIG,
            0,
            1280,
            &quote,
        )
        .unwrap();
        f.truncate(ETH_HLEN + n);
        let h = Headers::parse(&f);
        assert!(!h.incomplete);
        match related_key(&f, &h) {
            Some(FlowKey::V6(t)) => assert_eq!((t.proto, t.sport, t.dport), (6, 40000, 443)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_full_ipv6_state_table_evicts_instead_of_refusing() {
        let mut f = FlowState::new(4);
        let key = |sport| {
            FlowKey::V6(Tuple6 {
                proto: 17,
                src: LL_RED,
                dst: LL_BLUE,
                sport,
                dport: 53,
            })
        };
        for sp in 0..10 {
            f.track(&key(sp), 0);
        }
        assert_eq!(f.len(), 4);
        assert_eq!(f.evicted, 6);
        assert!(f.known(&key(9), 1), "the newest connection is tracked");
    }
}
