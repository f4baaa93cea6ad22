//! `vswitch trace`: what the pipeline would do with a described frame, stage
//! by stage, without sending it or changing any table (like
//! `ovs-appctl ofproto/trace`).
//!
//! Contract: read-only over the worker's state; the frame is built from the
//! request (`in_port`, optional `src_mac`, `dst_mac`, `vlan`, `src`, `dst`
//! (IPv4 or IPv6), `proto`, `sport`, `dport`, `ethertype`); missing MACs are
//! filled from the switch's tables (the gateway's MAC when the destination is
//! off the LAN), a missing source address from what the switch learned on the
//! ingress port. A request that describes no consistent frame (ports without
//! addresses, an IP EtherType without addresses, mixed families) is refused.
//! The answer is a list of [`Stage`]s and a final [`Decision`].

use crate::gateway::{Egress, Egress6, Gw6};
use crate::pipeline::Pipeline;
use crate::policy::{Frame, FrameMeta, Headers, Policy};
use crate::wire::MacAddr;
use crate::worker::Port;
use nat::Side;
use serde::Serialize;
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One stage of a trace.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    /// The stage: `in-port`, `frame`, `policy`, `fdb`, `l2`, `gateway`, `nat`,
    /// `uplink`, `route`, `neighbour`.
    pub stage: &'static str,
    /// What it decided, one word: `receive`, `parsed`, `allow`, `drop`,
    /// `learn`, `unicast`, `flood`, `route`, `local`, `translate`, `pass`,
    /// `forward`, `resolved`, `unresolved`, `unreachable`.
    pub decision: &'static str,
    /// Human-readable detail.
    pub detail: String,
}

/// The final verdict of a trace.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// `drop`, `forward` (to `out_ports`), `flood` (to `out_ports`), `answer`
    /// (the gateway answers the sender itself), `queue` (waits for ARP
    /// resolution), `unreachable` (ICMP destination unreachable back),
    /// `ignore` (multicast noise on the uplink; not a drop).
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

/// The transport header a trace request describes (`proto`: tcp, a SYN;
/// udp; icmp: an echo request), with its checksum left zero for TCP/UDP.
fn l4_of(args: &Value, v6: bool) -> Result<(u8, Vec<u8>), String> {
    let sport = args["sport"].as_u64().unwrap_or(40000) as u16;
    let dport = args["dport"].as_u64().unwrap_or(80) as u16;
    Ok(match args["proto"].as_str().unwrap_or("tcp") {
        "tcp" => {
            let mut t = vec![0u8; 20];
            t[0..2].copy_from_slice(&sport.to_be_bytes());
            t[2..4].copy_from_slice(&dport.to_be_bytes());
            t[12] = 0x50;
            t[13] = 0x02; // SYN
            (6, t)
        }
        "udp" => {
            let mut u = vec![0u8; 8];
            u[0..2].copy_from_slice(&sport.to_be_bytes());
            u[2..4].copy_from_slice(&dport.to_be_bytes());
            u[4..6].copy_from_slice(&8u16.to_be_bytes());
            (17, u)
        }
        "icmp" | "icmpv6" => {
            let mut i = vec![if v6 { 128 } else { 8 }, 0, 0, 0, 0, 0, 0, 1];
            i[4..6].copy_from_slice(&sport.to_be_bytes());
            if !v6 {
                let c = nat::checksum::checksum(&i);
                i[2..4].copy_from_slice(&c.to_be_bytes());
            }
            (if v6 { 58 } else { 1 }, i)
        }
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
    let mut f = Vec::with_capacity(100);
    f.extend_from_slice(&dst_mac.0);
    f.extend_from_slice(&src_mac.0);
    if let Some(v) = args["vlan"].as_u64() {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&(v as u16 & 0x0fff).to_be_bytes());
    }
    let et = args["ethertype"].as_u64().map(|e| e as u16);
    let Some((s, d)) = addrs else {
        f.extend_from_slice(&et.unwrap_or(0x88b5).to_be_bytes());
        f.resize(60, 0);
        return Ok(f);
    };
    match (s, d) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let (proto, l4) = l4_of(args, false)?;
            f.extend_from_slice(&[0x08, 0x00]);
            let total = 20 + l4.len();
            let mut ip = vec![
                0x45,
                0,
                (total >> 8) as u8,
                total as u8,
                0,
                0,
                0x40,
                0,
                args["ttl"].as_u64().unwrap_or(64) as u8,
                proto,
                0,
                0,
            ];
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let c = nat::checksum::checksum(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
            f.extend_from_slice(&l4);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let (proto, l4) = l4_of(args, true)?;
            f.extend_from_slice(&[0x86, 0xdd]);
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            f.push(proto);
            f.push(args["ttl"].as_u64().unwrap_or(64) as u8);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
            f.extend_from_slice(&l4);
        }
        _ => return Err("--src and --dst must be of one family (IPv4 or IPv6)".into()),
    }
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

/// Trace a described frame through `p`.
pub fn trace<P: Policy>(
    p: &Pipeline<P>,
    ports: &[Port],
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

    if on_uplink {
        let g = gw.expect("uplink implies gateway");
        let u = g.uplink().expect("uplink");
        out.push(
            "uplink",
            "route",
            format!("routed port, our address {} ({})", u.ip, u.mac),
        );
        if h.dst.is_multicast() && h.ethertype != 0x0806 {
            return Ok(out.done(Decision::to(
                "ignore",
                Vec::new(),
                Some("multicast on the uplink, ignored as a host would (gateway ignored_multicast, not a drop)".into()),
            )));
        }
        if h.dst != u.mac {
            return Ok(out.done(Decision::drop("gw-not-for-us: not our MAC")));
        }
        if let (Some((s, d, pr)), Some(v6)) = (h.ipv6, g.v6()) {
            return Ok(routed6(
                out,
                p,
                ports,
                now,
                v6,
                (s, d, pr),
                h.ports,
                Side::Wan,
            ));
        }
        if dst4 != Some(u.ip) {
            return Ok(out.done(Decision::drop("gw-not-for-us: not our address")));
        }
        let ipb = &frame[14..];
        let x = g
            .nat
            .as_ref()
            .map(|n| n.explain(now, Side::Wan, ipb, &|a| g.side_of(a)));
        return Ok(finish_routed(out, p, ports, x, ipb, now));
    }

    let meta = FrameMeta { in_port, now };
    if let Some(e) = p.policy.explain(&meta, &Frame::new(&frame)) {
        let drop = e.contains("DROP");
        out.push("policy", if drop { "drop" } else { "allow" }, e);
        if drop {
            return Ok(out.done(Decision::drop("policy")));
        }
    }
    out.push("fdb", "learn", format!("learn {} on {}", h.src, port.name));
    if let Some(g) = gw
        && h.dst == g.mac()
    {
        if let (Some((s, d, pr)), Some(v6)) = (h.ipv6, g.v6()) {
            out.push(
                "gateway",
                "route",
                format!("frame for the gateway's MAC ({}); route IPv6", g.mac()),
            );
            return Ok(routed6(
                out,
                p,
                ports,
                now,
                v6,
                (s, d, pr),
                h.ports,
                Side::Lan,
            ));
        }
        if h.ipv4.is_none() {
            out.push(
                "gateway",
                "drop",
                format!(
                    "frame for the gateway's MAC ({}) but neither IPv4 nor IPv6 it routes",
                    g.ip()
                ),
            );
            return Ok(out.done(Decision::drop("gw-not-ipv4")));
        }
        out.push(
            "gateway",
            "route",
            format!("frame for the gateway's MAC ({}); route IPv4", g.ip()),
        );
        let ipb = &frame[14..];
        if dst4 == Some(g.ip()) {
            return Ok(local(out, h.ipv4.map_or(0, |x| x.2), g.ip().into()));
        }
        let x = g
            .nat
            .as_ref()
            .map(|n| n.explain(now, Side::Lan, ipb, &|a| g.side_of(a)));
        return Ok(finish_routed(out, p, ports, x, ipb, now));
    }
    if h.dst.is_multicast() {
        let to = flood_list(ports, in_port);
        out.push(
            "l2",
            "flood",
            format!("broadcast/multicast: flood to {}", shown(&to)),
        );
        return Ok(out.done(flood(to)));
    }
    let v = match p.fdb.lookup(&h.dst, now) {
        Some(q) if q == in_port => {
            out.push(
                "l2",
                "drop",
                format!("fdb hit {} on the ingress port", h.dst),
            );
            Decision::drop("same-port: the destination is behind the ingress port")
        }
        Some(q)
            if p.isolated.get(in_port).copied().unwrap_or(false)
                && p.isolated.get(q).copied().unwrap_or(false) =>
        {
            out.push(
                "l2",
                "drop",
                format!("fdb hit {} -> {}", h.dst, ports[q].name),
            );
            Decision::drop(format!("isolated: {} is isolated too", ports[q].name))
        }
        Some(q) => {
            out.push(
                "l2",
                "unicast",
                format!("fdb hit {} -> out-port {}", h.dst, ports[q].name),
            );
            Decision::to("forward", vec![ports[q].name.clone()], None)
        }
        None => {
            let to = flood_list(ports, in_port);
            out.push(
                "l2",
                "flood",
                format!("fdb miss for {}: flood to {}", h.dst, shown(&to)),
            );
            flood(to)
        }
    };
    Ok(out.done(v))
}

/// The gateway's answer to a packet for itself (protocol `proto`).
fn local(mut out: Out, proto: u8, me: IpAddr) -> Trace {
    let (detail, reason) = match (me, proto) {
        (IpAddr::V4(_), 1) | (IpAddr::V6(_), 58) => ("echo requests are answered", "echo reply"),
        (IpAddr::V4(_), 6) => ("nothing listens: TCP is answered with a reset", "TCP reset"),
        (IpAddr::V4(_), 17) => (
            "nothing listens: UDP is answered with ICMP port unreachable",
            "ICMP port unreachable",
        ),
        (IpAddr::V6(_), 6 | 17) => (
            "nothing listens: answered with ICMPv6 port unreachable",
            "ICMPv6 port unreachable",
        ),
        _ => ("other protocols are dropped (gw-local)", ""),
    };
    out.push(
        "gateway",
        "local",
        format!("for the gateway itself ({me}): {detail}"),
    );
    if reason.is_empty() {
        return out.done(Decision::drop("gw-local"));
    }
    out.done(Decision::to(
        "answer",
        Vec::new(),
        Some(format!("{reason} from the gateway")),
    ))
}

/// An IPv6 packet to the gateway from `from`: NAT66 (by its rules: a
/// forward on the external address, masquerade of the source), the route,
/// and the neighbour, as the gateway's IPv6 path decides them.
#[allow(clippy::too_many_arguments)]
fn routed6<P: Policy>(
    mut out: Out,
    p: &Pipeline<P>,
    ports: &[Port],
    now: u64,
    v6: &Gw6,
    (src, mut dst, proto): (Ipv6Addr, Ipv6Addr, u8),
    l4: Option<(u16, u16)>,
    from: Side,
) -> Trace {
    let ext = v6.config().uplink.map(|u| u.addr);
    let masqueraded = |d: Ipv6Addr| {
        v6.nat
            .as_ref()
            .is_some_and(|n| n.config().masquerade.iter().any(|m| m.contains(d)))
    };
    if from == Side::Wan && Some(dst) != ext && masqueraded(dst) {
        out.push(
            "gateway",
            "drop",
            format!("{dst} is behind NAT66: reached only through it, never routed from the uplink"),
        );
        return out.done(Decision::drop("gw-not-for-us"));
    }
    if let Some(n) = &v6.nat {
        let c = n.config();
        let fwd = c.dnat.iter().find(|r| {
            Some(dst) == ext
                && r.proto == proto
                && l4.is_some_and(|(_, dp)| (r.ports.0..=r.ports.1).contains(&dp))
        });
        if let (Some(r), Some((_, dp))) = (fwd, l4) {
            let to_port = r.to_port.wrapping_add(dp - r.ports.0);
            out.push(
                "nat",
                "translate",
                format!(
                    "NAT66 forward: destination [{dst}]:{dp} => [{}]:{to_port}",
                    r.to_addr
                ),
            );
            if from == Side::Lan {
                out.push(
                    "nat",
                    "translate",
                    format!("hairpin: source {src} => {}", c.external),
                );
            }
            dst = r.to_addr;
        } else if Some(dst) == ext && from == Side::Wan {
            out.push(
                "nat",
                "pass",
                "NAT66: to our external address: a reply of a known connection is translated back (else nat-no-mapping, or answered by the gateway)",
            );
        } else if from == Side::Lan
            && c.masquerade.iter().any(|m| m.contains(src))
            && matches!(v6.route(dst), Egress6::Uplink(_))
        {
            out.push(
                "nat",
                "translate",
                format!("NAT66 masquerade: source {src} => {}", c.external),
            );
        }
    }
    match v6.route(dst) {
        Egress6::Local => {
            out.push("route", "local", "for the gateway itself");
            local(out, proto, dst.into())
        }
        Egress6::None => {
            out.push(
                "route",
                "unreachable",
                "none: ICMPv6 destination unreachable back to the sender",
            );
            out.done(Decision::to(
                "unreachable",
                Vec::new(),
                Some("no route".into()),
            ))
        }
        e @ (Egress6::Lan(nh) | Egress6::Uplink(nh)) => {
            let wan = matches!(e, Egress6::Uplink(_));
            let side = if wan { "uplink" } else { "LAN" };
            out.push(
                "route",
                "forward",
                format!("{dst} via {nh} on the {side}, hop limit - 1"),
            );
            let n = if wan {
                v6.neigh_wan.lookup(nh, now)
            } else {
                v6.neigh_lan
                    .lookup(nh, now)
                    .or_else(|| p.nd.lookup(nh, now))
            };
            neighbour(out, p, ports, now, nh.into(), n.map(|n| n.mac), wan)
        }
    }
}

/// The neighbour stage of a routed packet: next hop `nh` at `mac` (if
/// known) on the uplink (`wan`) or the LAN, and the out-port; unknown, the
/// packet waits while the gateway asks (ARP, or a neighbor solicitation).
fn neighbour<P: Policy>(
    mut out: Out,
    p: &Pipeline<P>,
    ports: &[Port],
    now: u64,
    nh: IpAddr,
    mac: Option<MacAddr>,
    wan: bool,
) -> Trace {
    let g = p.gateway.as_ref().expect("routed implies gateway");
    let Some(mac) = mac else {
        let (how, what) = match nh {
            IpAddr::V4(_) => ("an ARP request", "ARP resolution"),
            IpAddr::V6(_) => ("a neighbor solicitation", "neighbour discovery"),
        };
        out.push(
            "neighbour",
            "unresolved",
            format!("{nh} unknown: the packet waits while the gateway sends {how}"),
        );
        return out.done(Decision::to(
            "queue",
            Vec::new(),
            Some(format!("waits for {what} of {nh}")),
        ));
    };
    let port = if wan {
        g.uplink().map(|u| u.port)
    } else {
        p.fdb.lookup(&mac, now)
    };
    match port {
        Some(q) => {
            out.push(
                "neighbour",
                "resolved",
                format!("{nh} is {mac}; out-port {}", ports[q].name),
            );
            out.done(Decision::to("forward", vec![ports[q].name.clone()], None))
        }
        None => {
            out.push(
                "neighbour",
                "flood",
                format!("{nh} is {mac}; not in the fdb: flood on the LAN"),
            );
            let to: Vec<String> = ports
                .iter()
                .filter(|q| q.lan && q.up)
                .map(|q| q.name.clone())
                .collect();
            out.done(flood(to))
        }
    }
}

fn flood_list(ports: &[Port], in_port: usize) -> Vec<String> {
    ports
        .iter()
        .enumerate()
        .filter(|(i, q)| *i != in_port && q.lan && q.up && !(ports[in_port].isolated && q.isolated))
        .map(|(_, q)| q.name.clone())
        .collect()
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

/// The NAT's steps as stages, then the route of the (possibly translated)
/// destination and the out-port; `x` is the NAT's explanation (none
/// without a NAT).
fn finish_routed<P: Policy>(
    mut out: Out,
    p: &Pipeline<P>,
    ports: &[Port],
    x: Option<nat::Explanation>,
    ipb: &[u8],
    now: u64,
) -> Trace {
    let g = p.gateway.as_ref().expect("routed implies gateway");
    let orig_dst =
        nat::wire::Ipv4Packet::new_checked(ipb).map_or(Ipv4Addr::UNSPECIFIED, |ip| ip.dst());
    let mut dst = orig_dst;
    if let Some(x) = x {
        for (step, line) in x.steps {
            let decision = match step {
                nat::Step::Translate => "translate",
                nat::Step::Pass => "pass",
                nat::Step::Drop => "drop",
            };
            out.push("nat", decision, line);
        }
        if let Some(r) = x.drop {
            return out.done(Decision::drop(r.name()));
        }
        if x.answered {
            return out.done(Decision::to(
                "answer",
                Vec::new(),
                Some("echo reply from the gateway".into()),
            ));
        }
        dst = x.dst;
    }
    let egress = g.route(dst);
    match egress {
        Egress::Lan(nh) | Egress::Uplink(nh) => {
            let wan = matches!(egress, Egress::Uplink(_));
            out.push(
                "route",
                "forward",
                format!(
                    "{dst} via {nh} on the {}, TTL - 1",
                    if wan { "uplink" } else { "LAN" }
                ),
            );
            let n = if wan {
                g.neigh_wan.lookup(nh, now)
            } else {
                g.neigh_lan
                    .lookup(nh, now)
                    .or_else(|| p.arp.lookup(nh, now))
            };
            neighbour(out, p, ports, now, nh.into(), n.map(|n| n.mac), wan)
        }
        Egress::Local => {
            out.push("route", "local", "for the gateway itself");
            let proto = ipb[9];
            local(out, proto, dst.into())
        }
        Egress::None => {
            out.push(
                "route",
                "unreachable",
                "none: ICMP destination unreachable back to the sender",
            );
            out.done(Decision::to(
                "unreachable",
                Vec::new(),
                Some("no route".into()),
            ))
        }
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
