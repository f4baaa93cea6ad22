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
use crate::wire::{ETH_HLEN, EthernetFrame, MacAddr, ethertype};
use std::cell::OnceCell;
use std::net::Ipv4Addr;

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

/// Where a frame came from.
#[derive(Debug, Clone, Copy)]
pub struct FrameMeta {
    /// Ingress port.
    pub in_port: PortId,
    /// Time (ms).
    pub now: u64,
}

/// Parsed headers of a frame (the fields ACLs match on).
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
    /// Transport ports (first fragment only).
    pub ports: Option<(u16, u16)>,
    /// TCP flags.
    pub tcp_flags: Option<u8>,
}

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
        let mut off = ETH_HLEN;
        let mut et = eth.ethertype();
        if (et == ethertype::VLAN || et == ethertype::QINQ) && b.len() >= off + 4 {
            h.vlan = eth.vlan();
            et = u16::from_be_bytes([b[off + 2], b[off + 3]]);
            off += 4;
        }
        h.ethertype = et;
        if et == ethertype::IPV4
            && let Ok(ip) = nat::wire::Ipv4Packet::new_checked(&b[off..])
        {
            h.ipv4 = Some((ip.src(), ip.dst(), ip.protocol()));
            let l4 = ip.payload();
            if ip.frag_offset() == 0
                && ip.protocol() == 1
                && l4.len() >= 8
                && (l4[0] == 8 || l4[0] == 0)
            {
                let id = u16::from_be_bytes([l4[4], l4[5]]);
                h.ports = Some(if l4[0] == 8 { (id, 0) } else { (0, id) });
            }
            if ip.frag_offset() == 0 && matches!(ip.protocol(), 6 | 17) && l4.len() >= 4 {
                h.ports = Some((
                    u16::from_be_bytes([l4[0], l4[1]]),
                    u16::from_be_bytes([l4[2], l4[3]]),
                ));
                if ip.protocol() == 6 && l4.len() >= 14 {
                    h.tcp_flags = Some(l4[13]);
                }
            }
        }
        h
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
    /// Describe what this policy would do with `frame` (for `vswitch trace`); default: classify a copy of nothing.
    fn explain(&self, _meta: &FrameMeta, _frame: &Frame) -> Option<String> {
        None
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
    fn explain(&self, meta: &FrameMeta, frame: &Frame) -> Option<String> {
        match (self.0.explain(meta, frame), self.1.explain(meta, frame)) {
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
            (a, b) => a.or(b),
        }
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
    fn explain(&self, meta: &FrameMeta, frame: &Frame) -> Option<String> {
        (**self).explain(meta, frame)
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

/// One ACL rule: every field set must match.
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
    /// IPv4 source network (address, prefix).
    pub src: Option<(Ipv4Addr, u8)>,
    /// IPv4 destination network.
    pub dst: Option<(Ipv4Addr, u8)>,
    /// IP protocol.
    pub protocol: Option<u8>,
    /// Source ports.
    pub sport: Option<Range>,
    /// Destination ports.
    pub dport: Option<Range>,
    /// TCP flags that must all be set, and the mask they are compared under.
    pub tcp_flags: Option<(u8, u8)>,
    /// Connection state: `Some(true)` only frames of connections already seen
    /// (replies included), `Some(false)` only frames that would start one.
    pub state: Option<bool>,
}

fn in_net(ip: Ipv4Addr, (net, prefix): (Ipv4Addr, u8)) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    u32::from(ip) & mask == u32::from(net) & mask
}

impl AclRule {
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
            let Some((s, d, p)) = h.ipv4 else {
                return false;
            };
            if self.src.is_some_and(|n| !in_net(s, n))
                || self.dst.is_some_and(|n| !in_net(d, n))
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

/// Connections the ACL let through, tracked with the NAT's connection table
/// (bounded, aged by a timer wheel), for `state` rules.
pub struct FlowState {
    table: nat::conntrack::Table,
    last_expire: u64,
}

/// Idle lifetime of a tracked connection (ms).
const FLOW_IDLE_MS: u64 = 300_000;

impl FlowState {
    /// An empty tracker of at most `max` connections.
    pub fn new(max: usize) -> FlowState {
        FlowState {
            table: nat::conntrack::Table::new(max, 0x05ee_dac1),
            last_expire: 0,
        }
    }
    /// Number of tracked connections.
    pub fn len(&self) -> usize {
        self.table.len()
    }
    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

impl Clone for FlowState {
    /// A clone starts empty: connection state belongs to one running switch.
    fn clone(&self) -> Self {
        FlowState::new(self.table.max())
    }
}

impl std::fmt::Debug for FlowState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FlowState({} connections)", self.table.len())
    }
}

fn flow_tuple(h: &Headers) -> Option<nat::Tuple> {
    let (src, dst, proto) = h.ipv4?;
    let (sport, dport) = h.ports?;
    Some(nat::Tuple {
        proto,
        src,
        dst,
        sport,
        dport,
    })
}

/// The built-in policies, in order: rate limits, then ACL rules (first match wins, default allow).
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
}

impl Chain {
    /// A chain of these rules and limits.
    pub fn new(acl: Vec<AclRule>, limits: Vec<RateLimit>, port_names: Vec<String>) -> Chain {
        let hits = vec![0; acl.len()];
        let flows = acl
            .iter()
            .any(|r| r.state.is_some())
            .then(|| FlowState::new(65_536));
        Chain {
            limits,
            acl,
            hits,
            port_names,
            flows,
        }
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
        let h = frame.headers();
        let now = meta.now;
        let tuple = if self.flows.is_some() {
            flow_tuple(h)
        } else {
            None
        };
        let known = match (&mut self.flows, &tuple) {
            (Some(f), Some(t)) => {
                if now.saturating_sub(f.last_expire) >= 1000 {
                    f.table.expire(now, |_| {});
                    f.last_expire = now;
                }
                f.table.lookup(t, now).map(|(id, _)| id)
            }
            _ => None,
        };
        for (i, r) in self.acl.iter().enumerate() {
            if r.state.is_some_and(|est| est != known.is_some()) || !r.matches(meta.in_port, h) {
                continue;
            }
            self.hits[i] += 1;
            if r.drop {
                return Action::Drop("acl");
            }
            break;
        }
        // Allowed: remember the connection (or keep it alive).
        if let (Some(f), Some(t)) = (&mut self.flows, tuple) {
            match known {
                Some(id) => f.table.set_expires(id, now + FLOW_IDLE_MS),
                None => {
                    let _ = f.table.insert(
                        nat::conntrack::Entry::new(t, t.inv(), now + FLOW_IDLE_MS),
                        now,
                    );
                }
            }
        }
        Action::Continue
    }

    fn counters(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .acl
            .iter()
            .zip(&self.hits)
            .map(|(r, h)| (format!("acl:{}", r.name), *h))
            .collect();
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

    fn explain(&self, meta: &FrameMeta, frame: &Frame) -> Option<String> {
        let h = frame.headers();
        let known = match (&self.flows, flow_tuple(h)) {
            (Some(f), Some(t)) => f.table.lookup(&t, meta.now).is_some(),
            _ => false,
        };
        for r in &self.acl {
            if r.state.is_some_and(|est| est != known) {
                continue;
            }
            if r.matches(meta.in_port, h) {
                return Some(format!(
                    "acl rule {:?} matches: {}",
                    r.name,
                    if r.drop { "DROP" } else { "allow" }
                ));
            }
        }
        (!self.acl.is_empty()).then(|| "no acl rule matches: allow".to_string())
    }
}

/// A policy whose built-in part can be replaced between batches (`vswitch reload`).
pub trait Reload {
    /// Replace the built-in chain.
    fn set_chain(&mut self, _chain: Chain) {}
}

impl Reload for NoPolicy {}

impl<U: Policy> Reload for (Chain, U) {
    fn set_chain(&mut self, chain: Chain) {
        self.0 = chain;
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
    use crate::wire::tests_fixtures::eth_frame;

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
            c.counters(),
            vec![("acl:no-http".to_string(), 1), ("acl:rest".to_string(), 1)]
        );
        assert!(
            c.explain(&meta, &Frame::new(&f))
                .unwrap()
                .contains("no-http")
        );
    }

    #[test]
    fn acl_fields() {
        let h = Headers::parse(&tcp_syn());
        let r = |f: fn(&mut AclRule)| {
            let mut a = AclRule::default();
            f(&mut a);
            a.matches(0, &h)
        };
        assert!(r(|a| a.src = Some((Ipv4Addr::new(192, 168, 15, 0), 24))));
        assert!(!r(|a| a.dst = Some((Ipv4Addr::new(10, 0, 0, 0), 8))));
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
}
