//! `vswitch trace`: what the pipeline would do with a described frame, stage
//! by stage, without sending it or changing any table (like
//! `ovs-appctl ofproto/trace`).
//!
//! Contract: read-only over the worker's state; the frame is built from the
//! request (`in_port`, optional `src_mac`, `dst_mac`, `vlan`, `src`, `dst`,
//! `proto`, `sport`, `dport`); missing MACs are filled from the switch's
//! tables (the gateway's MAC when the destination is off the LAN).

use crate::gateway::Egress;
use crate::pipeline::Pipeline;
use crate::policy::{Frame, FrameMeta, Headers, Policy};
use crate::wire::MacAddr;
use crate::worker::Port;
use nat::Side;
use serde_json::Value;
use std::net::Ipv4Addr;

fn mac_arg(v: &Value) -> Result<Option<MacAddr>, String> {
    let Some(s) = v.as_str() else { return Ok(None) };
    let b: Vec<u8> = s
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{s:?} is not a MAC address"))?;
    b.try_into()
        .map(|a| Some(MacAddr(a)))
        .map_err(|_| format!("{s:?} is not a MAC address"))
}

fn ip_arg(v: &Value, what: &str) -> Result<Option<Ipv4Addr>, String> {
    v.as_str()
        .map(|s| {
            s.parse()
                .map_err(|_| format!("{what} {s:?} is not an IPv4 address"))
        })
        .transpose()
}

/// Build the frame a trace request describes.
fn build(
    args: &Value,
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Option<Ipv4Addr>,
    dst: Option<Ipv4Addr>,
) -> Result<Vec<u8>, String> {
    let mut f = Vec::with_capacity(80);
    f.extend_from_slice(&dst_mac.0);
    f.extend_from_slice(&src_mac.0);
    if let Some(v) = args["vlan"].as_u64() {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&(v as u16 & 0x0fff).to_be_bytes());
    }
    let (Some(s), Some(d)) = (src, dst) else {
        let et = args["ethertype"].as_u64().unwrap_or(0x88b5) as u16;
        f.extend_from_slice(&et.to_be_bytes());
        f.resize(60, 0);
        return Ok(f);
    };
    f.extend_from_slice(&[0x08, 0x00]);
    let proto = match args["proto"].as_str().unwrap_or("tcp") {
        "tcp" => 6u8,
        "udp" => 17,
        "icmp" => 1,
        p => return Err(format!("unknown protocol {p:?} (tcp, udp, icmp)")),
    };
    let sport = args["sport"].as_u64().unwrap_or(40000) as u16;
    let dport = args["dport"].as_u64().unwrap_or(80) as u16;
    let l4: Vec<u8> = match proto {
        6 => {
            let mut t = vec![0u8; 20];
            t[0..2].copy_from_slice(&sport.to_be_bytes());
            t[2..4].copy_from_slice(&dport.to_be_bytes());
            t[12] = 0x50;
            t[13] = 0x02; // SYN
            t
        }
        17 => {
            let mut u = vec![0u8; 8];
            u[0..2].copy_from_slice(&sport.to_be_bytes());
            u[2..4].copy_from_slice(&dport.to_be_bytes());
            u[4..6].copy_from_slice(&8u16.to_be_bytes());
            u
        }
        _ => {
            let mut i = vec![8u8, 0, 0, 0, 0, 0, 0, 1];
            i[4..6].copy_from_slice(&sport.to_be_bytes());
            let c = nat::checksum::checksum(&i);
            i[2..4].copy_from_slice(&c.to_be_bytes());
            i
        }
    };
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
    Ok(f)
}

/// Trace a described frame through `p`; one line per stage.
pub fn trace<P: Policy>(
    p: &Pipeline<P>,
    ports: &[Port],
    args: &Value,
    now: u64,
) -> Result<Vec<String>, String> {
    let name = args["in_port"].as_str().ok_or("trace needs --in-port")?;
    let in_port = ports
        .iter()
        .position(|x| x.name == name)
        .or_else(|| ports.iter().position(|x| x.netns == name))
        .ok_or_else(|| format!("no port {name:?}"))?;
    let port = &ports[in_port];
    let (src, dst) = (
        ip_arg(&args["src"], "source")?,
        ip_arg(&args["dst"], "destination")?,
    );
    let gw = p.gateway.as_ref();
    let uplink = gw.and_then(|g| g.uplink());
    let on_uplink = uplink.is_some_and(|u| u.port == in_port);
    let src_mac = match mac_arg(&args["src_mac"])? {
        Some(m) => m,
        None => src
            .and_then(|s| {
                if on_uplink {
                    gw.and_then(|g| g.neigh_wan.lookup(s, now))
                } else {
                    p.arp.lookup(s, now)
                }
            })
            .map(|e| e.mac)
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
        None => match (dst, gw) {
            (_, Some(g)) if on_uplink => g.uplink().map_or(MacAddr::BROADCAST, |u| u.mac),
            (Some(d), Some(g)) if !matches!(g.route(d), Egress::Lan(x) if x == d) => g.mac(),
            (Some(d), _) => p.arp.lookup(d, now).map_or(MacAddr::BROADCAST, |e| e.mac),
            (None, _) => MacAddr::BROADCAST,
        },
    };
    let frame = build(args, src_mac, dst_mac, src, dst)?;
    let h = Headers::parse(&frame);
    let mut out = vec![format!(
        "in-port: {} ({} {}{})",
        port.name,
        port.kind,
        port.netns,
        if port.isolated { ", isolated" } else { "" }
    )];
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
    out.push(format!(
        "frame: {} -> {}{}{l3}",
        h.src,
        h.dst,
        h.vlan.map(|v| format!(", vlan {v}")).unwrap_or_default()
    ));

    if on_uplink {
        let g = gw.expect("uplink implies gateway");
        let u = g.uplink().expect("uplink");
        out.push(format!(
            "uplink: routed port, our address {} ({})",
            u.ip, u.mac
        ));
        if h.dst != u.mac {
            out.push("verdict: DROP (gw-not-for-us: not our MAC)".into());
            return Ok(out);
        }
        if dst != Some(u.ip) {
            out.push("verdict: DROP (gw-not-for-us: not our address)".into());
            return Ok(out);
        }
        let ipb = &frame[14..];
        if let Some(n) = &g.nat {
            out.extend(n.explain(now, Side::Wan, ipb, &|a| g.side_of(a)));
        }
        return Ok(finish_routed(out, p, ports, now, ipb, Side::Wan));
    }

    let meta = FrameMeta { in_port, now };
    if let Some(e) = p.policy.explain(&meta, &Frame::new(&frame)) {
        let drop = e.contains("DROP");
        out.push(format!("policy: {e}"));
        if drop {
            out.push("verdict: DROP (policy)".into());
            return Ok(out);
        }
    }
    out.push(format!("fdb: learn {} on {}", h.src, port.name));
    if let Some(g) = gw
        && h.dst == g.mac()
    {
        out.push(format!(
            "gateway: frame for the gateway's MAC ({}); route IPv4",
            g.ip()
        ));
        let ipb = &frame[14..];
        if dst == Some(g.ip()) {
            out.push(
                "gateway: for the gateway itself: echo is answered, UDP gets port unreachable"
                    .into(),
            );
            return Ok(out);
        }
        if let Some(n) = &g.nat {
            out.extend(n.explain(now, Side::Lan, ipb, &|a| g.side_of(a)));
        }
        return Ok(finish_routed(out, p, ports, now, ipb, Side::Lan));
    }
    if h.dst.is_multicast() {
        out.push(format!(
            "l2: broadcast/multicast: flood to {}",
            flood_list(ports, in_port)
        ));
        return Ok(out);
    }
    match p.fdb.lookup(&h.dst, now) {
        Some(q) if q == in_port => {
            out.push("verdict: DROP (same-port: the destination is behind the ingress port)".into())
        }
        Some(q)
            if p.isolated.get(in_port).copied().unwrap_or(false)
                && p.isolated.get(q).copied().unwrap_or(false) =>
        {
            out.push(format!(
                "verdict: DROP (isolated: {} is isolated too)",
                ports[q].name
            ))
        }
        Some(q) => out.push(format!(
            "l2: fdb hit {} -> out-port {}",
            h.dst, ports[q].name
        )),
        None => out.push(format!(
            "l2: fdb miss for {}: flood to {}",
            h.dst,
            flood_list(ports, in_port)
        )),
    }
    Ok(out)
}

fn flood_list(ports: &[Port], in_port: usize) -> String {
    let v: Vec<&str> = ports
        .iter()
        .enumerate()
        .filter(|(i, q)| *i != in_port && q.lan && q.up && !(ports[in_port].isolated && q.isolated))
        .map(|(_, q)| q.name.as_str())
        .collect();
    if v.is_empty() {
        "(no other port)".into()
    } else {
        v.join(", ")
    }
}

/// Route the (possibly translated) destination and name the out-port.
fn finish_routed<P: Policy>(
    mut out: Vec<String>,
    p: &Pipeline<P>,
    ports: &[Port],
    now: u64,
    ipb: &[u8],
    from: Side,
) -> Vec<String> {
    let g = p.gateway.as_ref().expect("routed implies gateway");
    // Where the packet goes after translation: recompute the destination as the NAT would set it.
    let orig_dst = Ipv4Addr::new(ipb[16], ipb[17], ipb[18], ipb[19]);
    let translated = out.iter().rev().find_map(|l| {
        l.split(" => ")
            .nth(1)
            .and_then(|t| t.split(" -> ").nth(1))
            .and_then(|d| d.split(':').next())
            .and_then(|d| d.parse::<Ipv4Addr>().ok())
    });
    let dnat_to = out.iter().rev().find_map(|l| {
        l.strip_prefix("nat: DNAT rule: destination ")
            .and_then(|r| r.split(" => ").nth(1))
            .and_then(|d| d.split(':').next())
            .and_then(|d| d.parse::<Ipv4Addr>().ok())
    });
    let dst = dnat_to.or(translated).unwrap_or(orig_dst);
    if out.iter().any(|l| l.contains(": drop (")) {
        out.push("verdict: DROP (nat)".into());
        return out;
    }
    if from == Side::Wan
        && dst == orig_dst
        && out.iter().any(|l| l.contains("answered by the gateway"))
    {
        out.push("verdict: answered by the gateway (echo reply)".into());
        return out;
    }
    match g.route(dst) {
        Egress::Lan(nh) | Egress::Uplink(nh) => {
            let wan = matches!(g.route(dst), Egress::Uplink(_));
            out.push(format!(
                "route: {dst} via {nh} on the {}, TTL - 1",
                if wan { "uplink" } else { "LAN" }
            ));
            let n = if wan {
                g.neigh_wan.lookup(nh, now)
            } else {
                g.neigh_lan
                    .lookup(nh, now)
                    .or_else(|| p.arp.lookup(nh, now))
            };
            match (n, wan) {
                (Some(n), true) => out.push(format!("neighbour: {nh} is {}; out-port {}", n.mac, g.uplink().map_or("?", |u| ports[u.port].name.as_str()))),
                (Some(n), false) => match p.fdb.lookup(&n.mac, now) {
                    Some(q) => out.push(format!("neighbour: {nh} is {}; out-port {}", n.mac, ports[q].name)),
                    None => out.push(format!("neighbour: {nh} is {}; not in the fdb: flood on the LAN", n.mac)),
                },
                (None, _) => out.push(format!("neighbour: {nh} unknown: the packet waits while the gateway sends an ARP request")),
            }
        }
        Egress::Local => out.push("route: for the gateway itself".into()),
        Egress::None => {
            out.push("route: none: ICMP destination unreachable back to the sender".into())
        }
    }
    out
}
