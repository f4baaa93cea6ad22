//! `vswitch trace`: what the switch would do with a described frame, stage
//! by stage, without sending it or changing any table (like
//! `ovs-appctl ofproto/trace`).
//!
//! Contract: the frame is built from the request (`in_port`, optional
//! `src_mac`, `dst_mac`, `vlan`, `src`, `dst` (IPv4 or IPv6), `proto`,
//! `sport`, `dport`, `ttl`, `ethertype`); missing MACs are filled from the
//! switch's tables (the gateway's MAC when the destination is off the LAN),
//! a missing source address from what the switch learned on the ingress
//! port. A request that describes no consistent frame (ports without
//! addresses, an IP EtherType without addresses, mixed families) is refused.
//!
//! The decision is the switch's own: the policy's [`Policy::explain`] gives
//! its action, then [`Pipeline::dry_run`] runs the pipeline, the router and
//! the NAT on a copy of the tables, the NAT noting down its decisions. The
//! stages are read off that run (the notes, the gateway counters that moved,
//! the frame as it would leave, the frames the gateway would generate); this
//! module holds no forwarding logic of its own. The answer is a list of
//! [`Stage`]s and a final [`Decision`].

use crate::gateway::{Egress, Egress6};
use crate::pipeline::{DryRun, Pipeline, Target, Verdict};
use crate::policy::{Action, Frame, FrameMeta, Headers, Policy};
use crate::wire::{ArpPacket, EthernetFrame, MacAddr, arp_op, ethertype};
use crate::worker::{Port, floods_to};
use nat::wire::Ipv4Packet;
use nat::wire::ethernet::emit_header as emit_eth;
use nat::wire::icmp::IcmpPacket;
use nat::wire::icmpv6::{self, Icmpv6Packet, icmp6_type};
use nat::wire::ipv6::Ipv6Packet;
use nat::wire::probe::{self, Probe};
use serde::Serialize;
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr};

/// One stage of a trace.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    /// The stage: `in-port`, `frame`, `policy`, `fdb`, `uplink`, `gateway`,
    /// `nat`, `neighbour`, `l2`.
    pub stage: &'static str,
    /// What it decided, one word: `receive`, `parsed`, `allow`, `drop`,
    /// `redirect`, `mirror`, `retag`, `learn`, `refuse`, `route`, `handle`,
    /// `translate`, `pass`, `resolved`, `unicast`, `flood`, `answer`,
    /// `unresolved`, `unreachable`, `error`, `send`.
    pub decision: &'static str,
    /// Human-readable detail.
    pub detail: String,
}

/// The final verdict of a trace.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// `drop`, `forward` (to `out_ports`), `flood` (to `out_ports`), `answer`
    /// (the gateway answers the sender itself), `queue` (waits for ARP or
    /// neighbour discovery), `unreachable` (ICMP destination unreachable
    /// back), `error` (time exceeded, fragmentation needed, packet too big
    /// back), `ignore` (multicast noise on the uplink; not a drop),
    /// `consumed` (taken by the gateway, nothing sent).
    pub action: &'static str,
    /// Egress ports (names), for `forward`, `flood` and `queue` (empty if unknown).
    pub out_ports: Vec<String>,
    /// Why (drop reason, or what answers).
    pub reason: Option<String>,
}

impl Decision {
    fn drop(reason: impl Into<String>) -> Decision {
        Decision {
            action: "drop",
            out_ports: Vec::new(),
            reason: Some(reason.into()),
        }
    }
    fn to(action: &'static str, out_ports: Vec<String>, reason: Option<String>) -> Decision {
        Decision {
            action,
            out_ports,
            reason,
        }
    }
}

/// A whole trace.
#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    /// The stages, in order.
    pub stages: Vec<Stage>,
    /// The final verdict.
    pub verdict: Decision,
}

struct Out(Vec<Stage>);

impl Out {
    fn push(&mut self, stage: &'static str, decision: &'static str, detail: impl Into<String>) {
        self.0.push(Stage {
            stage,
            decision,
            detail: detail.into(),
        });
    }
    fn done(self, verdict: Decision) -> Trace {
        Trace {
            stages: self.0,
            verdict,
        }
    }
}

/// Parse an EtherType: a name (`ipv4`, `arp`, `ipv6`, `vlan`, `lldp`), hex
/// (`0x86dd`) or decimal.
pub fn parse_ethertype(s: &str) -> Result<u16, String> {
    let l = s.to_ascii_lowercase();
    match l.as_str() {
        "ipv4" | "ip" => Ok(0x0800),
        "arp" => Ok(0x0806),
        "ipv6" => Ok(0x86dd),
        "vlan" | "802.1q" => Ok(0x8100),
        "lldp" => Ok(0x88cc),
        _ => match l.strip_prefix("0x") {
            Some(h) => u16::from_str_radix(h, 16).ok(),
            None => l.parse().ok(),
        }
        .ok_or_else(|| {
            format!("{s:?} is not an EtherType (ipv4, arp, ipv6, vlan, lldp, 0x86dd or a number)")
        }),
    }
}

fn mac_arg(v: &Value) -> Result<Option<MacAddr>, String> {
    v.as_str().map(str::parse).transpose()
}

fn ip_arg(v: &Value, what: &str) -> Result<Option<IpAddr>, String> {
    v.as_str()
        .map(|s| {
            s.parse()
                .map_err(|_| format!("{what} {s:?} is not an IP address"))
        })
        .transpose()
}

/// The probe a trace request describes (`proto`: tcp, a SYN; udp; icmp: an
/// echo request, ICMPv6 between IPv6 addresses).
fn probe_of(args: &Value) -> Result<Probe, String> {
    let sport = args["sport"].as_u64().unwrap_or(40000) as u16;
    let dport = args["dport"].as_u64().unwrap_or(80) as u16;
    Ok(match args["proto"].as_str().unwrap_or("tcp") {
        "tcp" => Probe::Syn { sport, dport },
        "udp" => Probe::Udp { sport, dport },
        "icmp" | "icmpv6" => Probe::Echo { ident: sport },
        p => return Err(format!("unknown protocol {p:?} (tcp, udp, icmp)")),
    })
}

/// Build the frame a trace request describes.
fn build(
    args: &Value,
    src_mac: MacAddr,
    dst_mac: MacAddr,
    addrs: Option<(IpAddr, IpAddr)>,
) -> Result<Vec<u8>, String> {
    let vlan = args["vlan"].as_u64().map(|v| v as u16 & 0x0fff);
    let et = args["ethertype"].as_u64().map(|e| e as u16);
    let mut f = vec![0u8; 256];
    let Some((s, d)) = addrs else {
        let n = emit_eth(&mut f, dst_mac, src_mac, vlan, et.unwrap_or(0x88b5)).unwrap_or(0);
        f.truncate(n.max(60));
        return Ok(f);
    };
    if s.is_ipv4() != d.is_ipv4() {
        return Err("--src and --dst must be of one family (IPv4 or IPv6)".into());
    }
    let et = if s.is_ipv4() {
        ethertype::IPV4
    } else {
        ethertype::IPV6
    };
    let n = emit_eth(&mut f, dst_mac, src_mac, vlan, et).ok_or("no room for the header")?;
    let ttl = args["ttl"].as_u64().unwrap_or(64).min(255) as u8;
    let m = probe::emit(&mut f[n..], s, d, ttl, probe_of(args)?)
        .ok_or("the described packet cannot be built")?;
    f.truncate(n + m);
    Ok(f)
}

/// The source address of a trace without `--src`: the address the switch
/// learned (ARP) on the ingress port, for an IPv4 destination.
fn learned_src<P: Policy>(p: &Pipeline<P>, in_port: usize, now: u64) -> Option<Ipv4Addr> {
    p.arp
        .entries(now)
        .into_iter()
        .find(|(_, e)| e.port == in_port)
        .map(|(ip, _)| ip)
}

/// Whether the traced frame's flow is offloaded, and if not, why.
fn fastpath_stage<P: Policy>(
    out: &mut Out,
    p: &Pipeline<P>,
    fast: &crate::fastpath::FastPath,
    in_port: usize,
    frame: &[u8],
    now: u64,
) {
    use crate::fastpath::Observed;
    if !fast.is_on() {
        out.push("fastpath", "off", fast.status());
        return;
    }
    let (decision, why) = match crate::fastpath::observe(frame) {
        _ if fast.port(in_port).is_none() => ("slow path", "the in-port has no fast path (a TAP, or attaching failed)".to_string()),
        Observed::None => ("slow path", "only IPv4 TCP/UDP without options or fragments is offloaded".into()),
        Observed::Ends(..) => ("slow path", "TCP SYN, FIN and RST always go through the switch".into()),
        Observed::Candidate(s) if fast.offloaded(in_port, &s) => (
            "offloaded",
            "this flow is forwarded by the kernel (eBPF); the switch sees its SYN/FIN/RST and merges its counters".into(),
        ),
        Observed::Candidate(_)
            if !p.policy.offload(&FrameMeta { in_port, now }, &Frame::new(frame)) =>
        {
            ("slow path", "the policy keeps this flow in the switch".into())
        }
        Observed::Candidate(_) => (
            "slow path",
            "not offloaded (yet): a flow is installed once seen both ways, unless captured, mirrored or VLAN-aware".into(),
        ),
    };
    out.push("fastpath", decision, why);
}

/// Trace a described frame through `p`, and say whether its flow is in
/// the kernel fast path `fast`.
pub fn trace<P: Policy>(
    p: &Pipeline<P>,
    ports: &[Port],
    fast: &crate::fastpath::FastPath,
    args: &Value,
    now: u64,
) -> Result<Trace, String> {
    let name = args["in_port"].as_str().ok_or("trace needs --in-port")?;
    let in_port = ports
        .iter()
        .position(|x| x.name == name)
        .or_else(|| ports.iter().position(|x| x.netns == name))
        .ok_or_else(|| {
            format!("no port {name:?} (use a port or namespace name from `vswitch stats`)")
        })?;
    let port = &ports[in_port];
    let (src, dst) = (
        ip_arg(&args["src"], "source")?,
        ip_arg(&args["dst"], "destination")?,
    );
    let et = args["ethertype"].as_u64();
    let l4_given = ["sport", "dport", "proto"]
        .iter()
        .any(|k| !args[k].is_null());
    let src = match (src, dst) {
        (None, Some(IpAddr::V4(_))) => Some(IpAddr::V4(learned_src(p, in_port, now).ok_or_else(
            || {
                format!(
                    "--dst without --src: no IPv4 address was learned on port {} yet; give --src",
                    port.name
                )
            },
        )?)),
        (None, Some(IpAddr::V6(_))) => return Err("an IPv6 --dst needs --src".into()),
        (Some(_), None) => return Err("--src needs --dst".into()),
        (s, _) => s,
    };
    let addrs = src.zip(dst);
    match (addrs, et) {
        (None, _) if l4_given => return Err("--proto/--sport/--dport need --dst".into()),
        (None, Some(0x0800 | 0x86dd)) => {
            return Err("an IP --ethertype needs --dst (and --src) to build the packet".into());
        }
        (Some((IpAddr::V4(_), _)), Some(e)) if e != 0x0800 => {
            return Err(format!(
                "--ethertype 0x{e:04x} does not match IPv4 addresses"
            ));
        }
        (Some((IpAddr::V6(_), _)), Some(e)) if e != 0x86dd => {
            return Err(format!(
                "--ethertype 0x{e:04x} does not match IPv6 addresses"
            ));
        }
        _ => {}
    }
    let (src4, dst4) = match addrs {
        Some((IpAddr::V4(s), IpAddr::V4(d))) => (Some(s), Some(d)),
        _ => (None, None),
    };
    let (src6, dst6) = match addrs {
        Some((IpAddr::V6(s), IpAddr::V6(d))) => (Some(s), Some(d)),
        _ => (None, None),
    };
    let gw = p.gateway.as_ref();
    let uplink = gw.and_then(|g| g.uplink());
    let on_uplink = uplink.is_some_and(|u| u.port == in_port);
    let src_mac = match mac_arg(&args["src_mac"])? {
        Some(m) => m,
        None => src4
            .and_then(|s| {
                if on_uplink {
                    gw.and_then(|g| g.neigh_wan.lookup(s, now))
                } else {
                    p.arp.lookup(s, now)
                }
            })
            .map(|e| e.mac)
            .or_else(|| src6.and_then(|s| p.nd.lookup(s, now)).map(|e| e.mac))
            .or_else(|| {
                p.fdb
                    .entries(now)
                    .into_iter()
                    .find(|(_, e)| e.port == in_port)
                    .map(|(m, _)| m)
            })
            .unwrap_or(MacAddr([2, 0, 0, 0, 0, 1])),
    };
    let dst_mac = match mac_arg(&args["dst_mac"])? {
        Some(m) => m,
        None => match (dst4, gw) {
            (_, Some(g)) if on_uplink => g.uplink().map_or(MacAddr::BROADCAST, |u| u.mac),
            (Some(d), Some(g)) if !matches!(g.route(d), Egress::Lan(x) if x == d) => g.mac(),
            (Some(d), _) => p.arp.lookup(d, now).map_or(MacAddr::BROADCAST, |e| e.mac),
            (None, _) => match (dst6, gw.and_then(|g| g.v6())) {
                (Some(d), Some(v6)) if !matches!(v6.route(d), Egress6::Lan(x) if x == d) => {
                    gw.map_or(MacAddr::BROADCAST, |g| g.mac())
                }
                (Some(d), _) => p.nd.lookup(d, now).map_or(MacAddr::BROADCAST, |e| e.mac),
                (None, _) => MacAddr::BROADCAST,
            },
        },
    };
    let frame = build(args, src_mac, dst_mac, addrs)?;
    let h = Headers::parse(&frame);
    let mut out = Out(Vec::new());
    out.push(
        "in-port",
        "receive",
        format!(
            "{} ({} {}{})",
            port.name,
            port.kind,
            port.netns,
            if port.isolated { ", isolated" } else { "" }
        ),
    );
    let l3 = match (h.ipv4, h.ports) {
        (Some((s, d, pr)), Some((sp, dp))) => format!(", IPv4 {s}:{sp} -> {d}:{dp} proto {pr}"),
        (Some((s, d, pr)), None) => format!(", IPv4 {s} -> {d} proto {pr}"),
        _ => match (h.ipv6, h.ports) {
            (Some((s, d, pr)), Some((sp, dp))) => {
                format!(", IPv6 [{s}]:{sp} -> [{d}]:{dp} proto {pr}")
            }
            (Some((s, d, pr)), None) => format!(", IPv6 {s} -> {d} proto {pr}"),
            _ => format!(", ethertype 0x{:04x}", h.ethertype),
        },
    };
    let inferred = if args["src"].is_null() && addrs.is_some() {
        " (source address as learned on the port)"
    } else {
        ""
    };
    out.push(
        "frame",
        "parsed",
        format!(
            "{} -> {}{}{l3}{inferred}",
            h.src,
            h.dst,
            h.vlan.map(|v| format!(", vlan {v}")).unwrap_or_default()
        ),
    );

    // The policy's own account, then the switch's own code on a copy.
    let meta = FrameMeta { in_port, now };
    let told = p.policy.explain(&meta, &Frame::new(&frame));
    let action = told.as_ref().map_or(Action::Continue, |e| e.action);
    let run = p.dry_run(in_port, &frame, now, action);
    if run.policy_asked {
        match &told {
            Some(e) => {
                let word = match e.action {
                    Action::Drop(_) => "drop",
                    Action::Continue => "allow",
                    Action::Redirect(_) => "redirect",
                    Action::Mirror(_) => "mirror",
                    Action::PushVlan(_) | Action::PopVlan => "retag",
                };
                out.push("policy", word, e.why.clone());
            }
            None if !p.policy.counters().is_empty() => out.push(
                "policy",
                "allow",
                "the policy does not explain itself: traced as if it let the frame continue",
            ),
            None => {}
        }
    }
    if on_uplink {
        if let Some(u) = uplink {
            out.push(
                "uplink",
                "route",
                format!("routed port, our address {} ({})", u.ip, u.mac),
            );
        }
    } else if let Some(l) = run.learned {
        let (word, line) = match l {
            "learn" => ("learn", format!("learn {} on {}", h.src, port.name)),
            "move" => ("learn", format!("{} moves to {}", h.src, port.name)),
            "refresh" => ("learn", format!("{} seen again on {}", h.src, port.name)),
            why => ("refuse", format!("{} not learned: {why}", h.src)),
        };
        out.push("fdb", word, line);
    }
    if !run.gateway_moved.is_empty() {
        let moved: Vec<String> = run
            .gateway_moved
            .iter()
            .map(|(k, n)| format!("{k} +{n}"))
            .collect();
        out.push(
            "gateway",
            if run.gateway_moved.iter().any(|(k, _)| k == "routed") {
                "route"
            } else {
                "handle"
            },
            format!("the gateway takes it: {}", moved.join(", ")),
        );
    }
    for (step, line) in &run.nat_notes {
        let decision = match step {
            nat::Step::Translate => "translate",
            nat::Step::Pass => "pass",
            nat::Step::Drop => "drop",
        };
        out.push("nat", decision, line.clone());
    }
    if let Some(m) = run.mirror.and_then(|m| ports.get(m)) {
        out.push("policy", "mirror", format!("a copy to {}", m.name));
    }
    match run.retag {
        Some(Some(v)) => out.push("policy", "retag", format!("push an 802.1Q tag, VLAN {v}")),
        Some(None) => out.push("policy", "retag", "pop the outer 802.1Q tag"),
        None => {}
    }
    let routed = run.gateway_moved.iter().any(|(k, _)| k == "routed");
    let name = |q: usize| {
        ports
            .get(q)
            .map_or_else(|| format!("port {q}"), |x| x.name.clone())
    };
    let v = match run.verdict {
        Verdict::Drop(r) => {
            // The NAT's own reason is the finer one (the port counts `nat`).
            let why = run.nat_drop.map_or(r.name(), |n| n.name());
            let by_gateway =
                on_uplink || !run.gateway_moved.is_empty() || !run.nat_notes.is_empty();
            out.push(
                if by_gateway { "gateway" } else { "l2" },
                "drop",
                format!("dropped: {why}"),
            );
            Decision::drop(why)
        }
        Verdict::Unicast(q) if ports.get(q).is_some_and(|p| !p.up) => {
            out.push("l2", "drop", format!("out-port {} is down", name(q)));
            Decision::drop("port-down")
        }
        Verdict::Unicast(q) => {
            if routed {
                out.push(
                    "neighbour",
                    "resolved",
                    format!("out-port {}: {}", name(q), describe(&run.frame)),
                );
            } else {
                out.push(
                    "l2",
                    "unicast",
                    format!("fdb hit {} -> out-port {}", h.dst, name(q)),
                );
            }
            Decision::to("forward", vec![name(q)], None)
        }
        v @ (Verdict::Flood | Verdict::FloodAll) => {
            let to: Vec<String> = (0..ports.len())
                .filter(|&q| floods_to(ports, in_port, v, q))
                .map(name)
                .collect();
            let why = if routed {
                format!("next hop not in the fdb: {}", describe(&run.frame))
            } else if h.dst.is_multicast() {
                "broadcast/multicast".to_string()
            } else {
                format!("fdb miss for {}", h.dst)
            };
            out.push("l2", "flood", format!("{why}: flood to {}", shown(&to)));
            flood(to)
        }
        Verdict::Reply => {
            let what = answer(&run.frame);
            out.push("gateway", "answer", describe(&run.frame));
            Decision::to("answer", vec![port.name.clone()], Some(what))
        }
        Verdict::Consumed => consumed(&mut out, &run, ports),
    };
    if v.action == "forward" {
        fastpath_stage(&mut out, p, fast, in_port, &frame, now);
    }
    Ok(out.done(v))
}

/// The outcome of a frame the switch took (the gateway answered it,
/// queued it while it resolves the next hop, or ignored it), from what the
/// gateway generated and which of its counters moved.
fn consumed(out: &mut Out, run: &DryRun, ports: &[Port]) -> Decision {
    let targets = |t: Target| -> Vec<String> {
        match t {
            Target::Port(q) => ports.get(q).map(|x| x.name.clone()).into_iter().collect(),
            Target::Lan => ports
                .iter()
                .filter(|x| x.lan && x.up)
                .map(|x| x.name.clone())
                .collect(),
            Target::Route | Target::Discard => Vec::new(),
        }
    };
    let mut decision = None;
    for (t, f) in &run.generated {
        let kind = generated(f);
        out.push("gateway", kind.word(), format!("sends {}", describe(f)));
        if decision.is_none() {
            decision = Some(match kind {
                Made::Resolve(nh) => Decision::to(
                    "queue",
                    targets(*t),
                    Some(format!("waits for the resolution of {nh}")),
                ),
                Made::Answer(what) => Decision::to("answer", targets(*t), Some(what)),
                Made::Unreachable(what) => Decision::to("unreachable", targets(*t), Some(what)),
                Made::Error(what) => Decision::to("error", targets(*t), Some(what)),
                Made::Other => continue,
            });
        }
    }
    let moved = |k: &str| run.gateway_moved.iter().any(|(m, _)| m == k);
    decision.unwrap_or_else(|| {
        if moved("ignored_multicast") {
            Decision::to(
                "ignore",
                Vec::new(),
                Some("multicast on the uplink, ignored as a host would (gateway ignored_multicast, not a drop)".into()),
            )
        } else if moved("queued") {
            Decision::to(
                "queue",
                Vec::new(),
                Some("waits for the resolution already asked for".into()),
            )
        } else if run.verdict == Verdict::Consumed && !run.generated.is_empty() {
            Decision::to("consumed", Vec::new(), None)
        } else {
            Decision::to("consumed", Vec::new(), Some("taken by the gateway".into()))
        }
    })
}

/// What a frame the gateway generates is, for the verdict.
enum Made {
    /// A request for a next hop's link-layer address (ARP or NS).
    Resolve(IpAddr),
    /// An answer to the sender (echo reply, TCP reset, port unreachable, ARP reply, NA).
    Answer(String),
    /// Destination (not port) unreachable.
    Unreachable(String),
    /// Another ICMP error: time exceeded, fragmentation needed, packet too big.
    Error(String),
    /// Anything else (a router advertisement, a released packet).
    Other,
}

impl Made {
    fn word(&self) -> &'static str {
        match self {
            Made::Resolve(_) => "unresolved",
            Made::Answer(_) => "answer",
            Made::Unreachable(_) => "unreachable",
            Made::Error(_) => "error",
            Made::Other => "send",
        }
    }
}

/// Classify a frame the gateway generated.
fn generated(f: &[u8]) -> Made {
    let Ok(eth) = EthernetFrame::new_checked(f) else {
        return Made::Other;
    };
    if eth.ethertype() == ethertype::ARP {
        return match ArpPacket::new_checked(eth.payload()) {
            Ok(a) if a.op() == arp_op::REQUEST => Made::Resolve(a.tpa().into()),
            Ok(a) => Made::Answer(format!("ARP reply: {} is at {}", a.spa(), a.sha())),
            Err(_) => Made::Other,
        };
    }
    if eth.ethertype() == ethertype::IPV6
        && let Some(n) = icmpv6::parse_ndp(eth.payload())
    {
        return match (n.kind, n.target) {
            (icmp6_type::NEIGHBOR_SOLICIT, Some(t)) => Made::Resolve(t.into()),
            (icmp6_type::NEIGHBOR_ADVERT, Some(t)) => {
                Made::Answer(format!("neighbor advertisement for {t}"))
            }
            _ => Made::Other,
        };
    }
    let a = answer(f);
    match icmp_of(f) {
        Some((true, 3, 3) | (false, 1, 4)) => Made::Answer(a),
        Some((true, 3, 4) | (false, 2, _)) | Some((true, 11, _) | (false, 3, _)) => Made::Error(a),
        Some((true, 3, _) | (false, 1, _)) => Made::Unreachable(a),
        Some((true, 0, _) | (false, 129, _)) => Made::Answer(a),
        _ if a.starts_with("TCP reset") => Made::Answer(a),
        _ => Made::Other,
    }
}

/// `(IPv4?, type, code)` of an ICMP or ICMPv6 packet in `f`.
fn icmp_of(f: &[u8]) -> Option<(bool, u8, u8)> {
    let eth = EthernetFrame::new_checked(f).ok()?;
    match eth.ethertype() {
        ethertype::IPV4 => {
            let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
            let m = IcmpPacket::new_checked(ip.payload()).ok()?;
            (ip.protocol() == nat::wire::proto::ICMP).then(|| (true, m.msg_type(), m.code()))
        }
        ethertype::IPV6 => {
            let ip = Ipv6Packet::new_checked(eth.payload()).ok()?;
            let u = ip.upper().ok()?;
            let m = Icmpv6Packet::new_checked(eth.payload().get(u.offset..)?).ok()?;
            (u.proto == nat::wire::ipv6::next_header::ICMPV6)
                .then(|| (false, m.msg_type(), m.code()))
        }
        _ => None,
    }
}

/// The answer a frame from the gateway gives, in words.
fn answer(f: &[u8]) -> String {
    match icmp_of(f) {
        Some((_, 0 | 129, _)) => "echo reply from the gateway".into(),
        Some((true, 3, 3) | (false, 1, 4)) => "port unreachable from the gateway".into(),
        Some((true, 3, 4)) => "fragmentation needed from the gateway".into(),
        Some((false, 2, _)) => "packet too big from the gateway".into(),
        Some((true, 11, _) | (false, 3, _)) => "time exceeded from the gateway".into(),
        Some((true, 3, c)) => format!("destination unreachable (code {c}) from the gateway"),
        Some((false, 1, c)) => format!("destination unreachable (code {c}) from the gateway"),
        _ => {
            let h = Headers::parse(f);
            if h.ip().is_some() && h.tcp_flags.is_some_and(|fl| fl & 0x04 != 0) {
                "TCP reset from the gateway".into()
            } else if let Some(a) = EthernetFrame::new_checked(f)
                .ok()
                .filter(|e| e.ethertype() == ethertype::ARP)
                .and_then(|e| {
                    ArpPacket::new_checked(e.payload())
                        .ok()
                        .map(|a| (a.spa(), a.sha()))
                })
            {
                format!("ARP reply: {} is at {} (suppression)", a.0, a.1)
            } else {
                describe(f)
            }
        }
    }
}

/// A frame as it would leave, in one line.
fn describe(f: &[u8]) -> String {
    let h = Headers::parse(f);
    let l3 = match (h.ipv4, h.ipv6, h.ports) {
        (Some((s, d, pr)), _, Some((sp, dp))) => format!("IPv4 {s}:{sp} -> {d}:{dp} proto {pr}"),
        (Some((s, d, pr)), _, None) => format!("IPv4 {s} -> {d} proto {pr}"),
        (_, Some((s, d, pr)), Some((sp, dp))) => {
            format!("IPv6 [{s}]:{sp} -> [{d}]:{dp} proto {pr}")
        }
        (_, Some((s, d, pr)), None) => format!("IPv6 {s} -> {d} proto {pr}"),
        _ => format!("ethertype 0x{:04x}", h.ethertype),
    };
    let hops = EthernetFrame::new_checked(f)
        .ok()
        .and_then(|e| match e.ethertype() {
            ethertype::IPV4 => Ipv4Packet::new_checked(e.payload())
                .ok()
                .map(|p| format!(", TTL {}", p.ttl())),
            ethertype::IPV6 => Ipv6Packet::new_checked(e.payload())
                .ok()
                .map(|p| format!(", hop limit {}", p.hop_limit())),
            _ => None,
        });
    format!("{l3}{}, {} -> {}", hops.unwrap_or_default(), h.src, h.dst)
}

fn shown(ports: &[String]) -> String {
    if ports.is_empty() {
        "(no other port)".into()
    } else {
        ports.join(", ")
    }
}

fn flood(to: Vec<String>) -> Decision {
    if to.is_empty() {
        Decision::drop("no-egress: no other port")
    } else {
        Decision::to("flood", to, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ethertypes_by_name_hex_or_number() {
        assert_eq!(parse_ethertype("ipv6"), Ok(0x86dd));
        assert_eq!(parse_ethertype("IPv4"), Ok(0x0800));
        assert_eq!(parse_ethertype("0x86dd"), Ok(0x86dd));
        assert_eq!(parse_ethertype("0x88B5"), Ok(0x88b5));
        assert_eq!(parse_ethertype("2054"), Ok(0x0806));
        assert!(parse_ethertype("0x1ffff").is_err());
        assert!(
            parse_ethertype("ipx")
                .unwrap_err()
                .contains("not an EtherType")
        );
    }

    #[test]
    fn an_ipv6_frame_is_built_and_parsed() {
        let args = serde_json::json!({"proto": "tcp", "dport": 22});
        let a: IpAddr = "fe80::1".parse().unwrap();
        let b: IpAddr = "fe80::2".parse().unwrap();
        let f = build(
            &args,
            MacAddr([2, 0, 0, 0, 0, 1]),
            MacAddr([2, 0, 0, 0, 0, 2]),
            Some((a, b)),
        )
        .unwrap();
        let h = Headers::parse(&f);
        assert_eq!(h.ethertype, 0x86dd);
        let (s, d, p) = h.ipv6.unwrap();
        assert_eq!((IpAddr::V6(s), IpAddr::V6(d), p), (a, b, 6));
        assert_eq!(h.ports, Some((40000, 22)));
        let c: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(build(&args, MacAddr::BROADCAST, MacAddr::BROADCAST, Some((a, c))).is_err());
    }
}
