//! Target `pipeline`: the worker's forwarding path without sockets
//! ([`switch::worker::Worker::poll_port`] over in-memory ports), so
//! `Pipeline::decide`, the gateway (ARP, routing, ICMP, fragmentation, NAT),
//! VLAN ingress/egress with `retag`, the policy's tag edits
//! (`Batch::insert_vlan_tag` / `remove_vlan_tag`), redirects, mirrors and
//! generated frames all run, on arbitrary frames with arbitrary
//! `virtio_net_hdr` fields (`gso_type`, `hdr_len`, `csum_start`,
//! `csum_offset` near 65535) and frame lengths up to the slot size.
//!
//! The switch is the seed topology's, dual-stack (three LAN ports, the
//! gateway 192.168.15.5/24 and fd00:15::5/64, an uplink 203.0.113.1/24 and
//! 2001:db8:113::1/64 with NAT44 and NAT66; IPv6 frames: NDP, echo, TCP and
//! UDP, to and through the gateway) with a random MTU,
//! NAT table bound, filtering, VLAN roles, isolation, mirrors and a scripted
//! policy. Invariant: nothing panics (overflow checks on), and the worker
//! still answers `stats` afterwards.

use super::build::{self, Pool};
use super::fake::{self, Queue};
use crate::input::Input;
use crate::known::{self, avoid};
use nat::wire::icmpv6::{self, na_flags};
use nat::wire::ipv6::{emit_header, next_header, solicited_node};
use nat::{DnatRule, Filtering, Ipv4Net, NatConfig, PortAlloc};
use netns_setup::Topology;
use std::net::{Ipv4Addr, Ipv6Addr};
use switch::gateway::{Gw6Config, UplinkConfig};
use switch::pipeline::{Pipeline, PipelineConfig, VlanPorts};
use switch::policy::{Action, Chain, Frame, FrameMeta, Policy, Reloaded};
use switch::port::MAX_FRAME;
use switch::wire::MacAddr;
use switch::worker::Worker;

/// The seed topology without its uplink (the uplink is added by hand: its
/// MAC would come from netlink).
const TOPOLOGY: &str = r#"
name = "fuzz"
[switch]
name = "fz0"
fdb_max = 16
fdb_max_per_port = 8
[[namespace]]
name = "red"
address = "192.168.15.1/24"
[[namespace]]
name = "blue"
address = "192.168.15.2/24"
[[namespace]]
name = "green"
address = "192.168.15.3/24"
[gateway]
address = "192.168.15.5/24"
"#;

/// A policy that plays a script of actions, one per frame.
pub struct Script(Vec<Action>, usize);

impl Policy for Script {
    fn classify(&mut self, _: &FrameMeta, _: &Frame) -> Action {
        if self.0.is_empty() {
            return Action::Continue;
        }
        self.1 += 1;
        self.0[self.1 % self.0.len()]
    }
}

const UPLINK_MAC: [u8; 6] = [0x02, 0x75, 0x70, 0, 0, 1];
const PEER_MAC: [u8; 6] = [0x02, 0x70, 0x65, 0x65, 0x72, 1];

fn action(i: &mut Input, ports: usize) -> Action {
    let p = if avoid(
        known::KNOWN_ISSUE_REDIRECT_OUT_OF_RANGE,
        "KNOWN_ISSUE_REDIRECT_OUT_OF_RANGE",
    ) {
        i.below(ports)
    } else {
        i.below(ports + 3)
    };
    match i.below(16) {
        0 => Action::Drop("fuzz"),
        1 => Action::Redirect(p),
        2 => Action::Mirror(i.below(ports + 3)),
        3 | 4 => Action::PushVlan(i.u16_edgy()),
        5 => Action::PopVlan,
        _ => Action::Continue,
    }
}

/// A vnet header: usually plain or a consistent NEEDS_CSUM/GSO one, sometimes anything.
/// `vlan_aware`: `retag` runs (VLAN-aware switch); otherwise the policy's
/// tag push (`insert_vlan_tag`) is what adds 4 to the offsets.
fn vnet(i: &mut Input, frame_len: usize, vlan_aware: bool) -> [u8; 10] {
    let mut v = [0u8; 10];
    let clamp = if vlan_aware {
        avoid(
            known::KNOWN_ISSUE_RETAG_OVERFLOW,
            "KNOWN_ISSUE_RETAG_OVERFLOW",
        )
    } else {
        avoid(
            known::KNOWN_ISSUE_INSERT_VLAN_OVERFLOW,
            "KNOWN_ISSUE_INSERT_VLAN_OVERFLOW",
        )
    };
    let fix = |x: u16| if clamp { x.min(65531) } else { x };
    match i.below(4) {
        0 | 1 => {}
        2 => {
            // A TCP/UDP checksum to finish, maybe with TSO.
            v[0] = 1;
            v[1] = i.pick(&[0u8, 0, 1, 4, 5, 0x81]);
            let start: u16 = i.pick(&[34u16, 38, 54]);
            v[2..4].copy_from_slice(&fix(i.mostly(start + 20, |i| i.u16_edgy())).to_le_bytes());
            v[4..6].copy_from_slice(&i.pick(&[0u16, 1448, 1460, 536, 1, 65535]).to_le_bytes());
            v[6..8].copy_from_slice(&fix(i.mostly(start, |i| i.u16_edgy())).to_le_bytes());
            let off = i.pick(&[16u16, 6]);
            v[8..10].copy_from_slice(&i.mostly(off, |i| i.u16_edgy()).to_le_bytes());
        }
        _ => {
            v[0] = i.u8();
            v[1] = i.u8();
            let len = frame_len.min(65535) as u16;
            for at in [2usize, 4, 6, 8] {
                let x = match i.below(4) {
                    0 => len.saturating_sub(i.below(8) as u16),
                    _ => i.u16_edgy(),
                };
                let x = if at == 2 || at == 6 { fix(x) } else { x };
                v[at..at + 2].copy_from_slice(&x.to_le_bytes());
            }
        }
    }
    v
}

/// A frame for the gateway as a host or the uplink's peer would send it:
/// ARP for its addresses, or IPv4 to be routed (and NATed) or answered.
fn routed_frame(
    i: &mut Input,
    port: usize,
    uplink: usize,
    gw_mac: [u8; 6],
    pool: &Pool,
) -> Vec<u8> {
    let on_uplink = port == uplink;
    let host = [2, 0, 0, 0, 0, port as u8 + 1];
    if i.below(3) == 0 {
        return routed_frame6(i, port, uplink, gw_mac, host);
    }
    let (smac, dmac) = if on_uplink {
        (PEER_MAC, UPLINK_MAC)
    } else {
        (host, gw_mac)
    };
    let dmac = i.mostly(dmac, |i| pool.mac(i));
    let mut f = Vec::with_capacity(128);
    f.extend_from_slice(&dmac);
    f.extend_from_slice(&smac);
    let lan_ip = Ipv4Addr::new(192, 168, 15, port as u8 + 1);
    let (me, peer) = if on_uplink {
        (
            Ipv4Addr::new(203, 0, 113, 1),
            i.pick(&[
                Ipv4Addr::new(203, 0, 113, 10),
                Ipv4Addr::new(203, 0, 113, 254),
            ]),
        )
    } else {
        (Ipv4Addr::new(192, 168, 15, 5), lan_ip)
    };
    if i.below(4) == 0 {
        // ARP: a request for our address, or a reply telling us the peer's MAC.
        f.extend_from_slice(&build::ET_ARP.to_be_bytes());
        let reply = i.bool();
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, if reply { 2 } else { 1 }]);
        f.extend_from_slice(&smac);
        f.extend_from_slice(&peer.octets());
        f.extend_from_slice(&if reply { dmac } else { [0; 6] });
        f.extend_from_slice(&me.octets());
        return f;
    }
    f.extend_from_slice(&build::ET_IPV4.to_be_bytes());
    let (src, dst) = if on_uplink {
        let d = i.pick(&[
            Ipv4Addr::new(203, 0, 113, 1),
            Ipv4Addr::new(203, 0, 113, 1),
            Ipv4Addr::new(192, 168, 15, 2),
        ]);
        (i.mostly(peer, |i| pool.ip(i)), d)
    } else {
        let d = i.pick(&[
            Ipv4Addr::new(203, 0, 113, 10),
            Ipv4Addr::new(8, 8, 8, 8),
            Ipv4Addr::new(203, 0, 113, 1),
            Ipv4Addr::new(192, 168, 15, 5),
            Ipv4Addr::new(192, 168, 15, 2),
        ]);
        (i.mostly(lan_ip, |i| pool.ip(i)), d)
    };
    let proto = i.pick(&[6u8, 17, 1, 17, 6, 1, 47]);
    f.extend_from_slice(&build::ipv4(
        i,
        build::Ip4 { src, dst, proto },
        0,
        pool,
        9000,
    ));
    f
}

/// An IPv6 frame for the gateway's IPv6 path: neighbor discovery for its
/// addresses, echo, UDP and TCP to it, through it and through NAT66, from
/// the LAN host of `port` or from the uplink's peer; built with the wire
/// layer's emitters, then left to the input to cut or overwrite.
fn routed_frame6(
    i: &mut Input,
    port: usize,
    uplink: usize,
    gw_mac: [u8; 6],
    host: [u8; 6],
) -> Vec<u8> {
    let a = |s: &str| -> Ipv6Addr { s.parse().expect("literal") };
    let on_uplink = port == uplink;
    let (smac, dmac) = if on_uplink {
        (PEER_MAC, UPLINK_MAC)
    } else {
        (host, gw_mac)
    };
    let me = if on_uplink {
        a("2001:db8:113::1")
    } else {
        a("fd00:15::5")
    };
    let src = if on_uplink {
        i.pick(&[a("2001:db8:113::10"), a("fe80::10"), a("fd00:15::1")])
    } else {
        let lan = Ipv6Addr::new(0xfd00, 0x15, 0, 0, 0, 0, 0, port as u16 + 1);
        i.pick(&[
            lan,
            lan,
            a("fe80::1"),
            a("fd00:99::7"),
            a("2001:db8:113::1"),
        ])
    };
    let dst = i.pick(&[
        me,
        a("2001:db8:113::10"),
        a("2001:db8:113::1"),
        a("fd00:15::2"),
        a("2001:db8:999::1"),
        a("ff02::1"),
        a("fe80::99"),
    ]);
    let mut f = vec![0u8; 1600];
    let len = match i.below(6) {
        0 => icmpv6::emit_ns(&mut f[14..], src, solicited_node(me), me, smac),
        1 => icmpv6::emit_na(
            &mut f[14..],
            src,
            me,
            src,
            smac,
            i.pick(&[0, na_flags::SOLICITED | na_flags::OVERRIDE]),
        ),
        2 => icmpv6::emit_ns(
            &mut f[14..],
            Ipv6Addr::UNSPECIFIED,
            solicited_node(me),
            me,
            smac,
        ),
        k => {
            let (nh, l4) = match k {
                3 => (next_header::ICMPV6, vec![128u8, 0, 0, 0, 0x12, 0x34, 0, 1]),
                4 => (
                    next_header::UDP,
                    vec![0x9c, 0x40, 0, 53, 0, 12, 0x12, 0x34, 1, 2, 3, 4],
                ),
                _ => {
                    let mut t = vec![0u8; 20];
                    t[..4].copy_from_slice(&[0x9c, 0x41, 0, 80]);
                    t[12] = 0x50;
                    t[13] = i.pick(&[0x02u8, 0x10, 0x12, 0x11, 0x04]);
                    (next_header::TCP, t)
                }
            };
            let size = l4.len() + i.pick(&[0usize, 0, 100, 1300, 1452]);
            emit_header(
                &mut f[14..],
                src,
                dst,
                nh,
                i.pick(&[64u8, 64, 1, 255]),
                size as u16,
            );
            f[54..54 + l4.len()].copy_from_slice(&l4);
            Some(40 + size)
        }
    };
    f.truncate(14 + len.unwrap_or(0));
    f[..6].copy_from_slice(&i.mostly(dmac, |i| {
        i.pick(&[[0x33, 0x33, 0, 0, 0, 1], [0x33, 0x33, 0xff, 0, 0, 5]])
    }));
    f[6..12].copy_from_slice(&smac);
    f[12..14].copy_from_slice(&[0x86, 0xdd]);
    // The input may cut the frame or overwrite a few bytes.
    for _ in 0..i.below(3) {
        let at = i.below(f.len().max(1));
        if let Some(b) = f.get_mut(at) {
            *b = i.pick(&[0u8, 1, 0xff, 58, 44, 60, 0x80]);
        }
    }
    if i.below(8) == 0 {
        let cut = i.below(f.len().max(1));
        f.truncate(cut);
    }
    f
}

/// A routed frame (source MAC the gateway's) that leaves port `port` fits
/// the MTU of that side unless it is GSO, and a fragment never has DF set.
/// `oversized_in`: some input exceeded its link's MTU (then the gateway's
/// own answers, e.g. an echo reply as big as the request, are not checked).
fn routed_fits(
    port: usize,
    wire: &[u8],
    uplink: usize,
    gw_mac: [u8; 6],
    lan_mtu: usize,
    up_mtu: usize,
    oversized_in: bool,
) -> Result<(), String> {
    let (Some(v), Some(f)) = (wire.get(..10), wire.get(10..)) else {
        return Ok(());
    };
    let ours = if port == uplink { UPLINK_MAC } else { gw_mac };
    if f.len() < 34 || f[6..12] != ours || f[12..14] != [0x08, 0x00] {
        return Ok(());
    }
    let Ok(ip) = nat::wire::Ipv4Packet::new_checked(&f[14..]) else {
        return Ok(());
    };
    let mtu = if port == uplink { up_mtu } else { lan_mtu };
    let generated_error = ip.protocol() == 1
        && (ip.src() == Ipv4Addr::new(192, 168, 15, 5)
            || ip.src() == Ipv4Addr::new(203, 0, 113, 1))
        && ip
            .payload()
            .first()
            .is_some_and(|t| nat::wire::icmp_is_error(*t));
    let echo_reply = ip.protocol() == 1
        && (ip.src() == Ipv4Addr::new(192, 168, 15, 5)
            || ip.src() == Ipv4Addr::new(203, 0, 113, 1))
        && ip.payload().first() == Some(&0);
    if echo_reply && oversized_in {
        return Ok(());
    }
    if generated_error
        && mtu < 576
        && avoid(
            known::KNOWN_ISSUE_ICMP_ERROR_ABOVE_SMALL_MTU,
            "KNOWN_ISSUE_ICMP_ERROR_ABOVE_SMALL_MTU",
        )
    {
        return Ok(());
    }
    if !generated_error
        && avoid(
            known::KNOWN_ISSUE_GATEWAY_MTU_DF,
            "KNOWN_ISSUE_GATEWAY_MTU_DF",
        )
    {
        return Ok(());
    }
    if v[1] == 0 && ip.total_len() > mtu {
        return Err(format!(
            "a routed packet of {} bytes left port {port} (MTU {mtu}) whole (DF {}, {} -> {}, proto {}, first bytes {:02x?})",
            ip.total_len(),
            ip.dont_frag(),
            ip.src(),
            ip.dst(),
            ip.protocol(),
            &ip.payload()[..ip.payload().len().min(8)]
        ));
    }
    if ip.is_fragment() && ip.dont_frag() {
        return Err(format!("a fragment with DF set left port {port}"));
    }
    Ok(())
}

/// Run one case.
pub fn run(data: &[u8]) -> Result<(), String> {
    let mut i = Input::new(data);
    let t = Topology::parse(TOPOLOGY, "fuzz").map_err(|e| format!("built-in topology: {e}"))?;
    let lan_ports = 3;
    let ports = lan_ports + 1;
    let mut gw = switch::daemon::gateway_config(&t, ports)
        .map_err(|e| e.to_string())?
        .ok_or("no gateway")?;
    gw.lan_mtu = i.pick(&[1500u32, 1500, 1400, 9000, 576, 68]);
    let lan_mtu = gw.lan_mtu as usize;
    gw.neigh_max = 1 + i.below(8);
    gw.queue_slots = i.below(5);
    gw.uplink = Some(UplinkConfig {
        port: ports - 1,
        ip: Ipv4Addr::new(203, 0, 113, 1),
        prefix: i.pick(&[24u8, 24, 0, 32, 31]),
        mac: MacAddr(UPLINK_MAC),
        next_hop: i.pick(&[Some(Ipv4Addr::new(203, 0, 113, 254)), None]),
        mtu: i.pick(&[1500u32, 1500, 1400, 576, 9000, 65535]), // topology: 576..=65535
    });
    let up_mtu = gw.uplink.as_ref().map_or(1500, |u| u.mtu as usize);
    let mut n = NatConfig::new(Ipv4Addr::new(203, 0, 113, 1));
    n.masquerade = vec![Ipv4Net {
        addr: Ipv4Addr::new(192, 168, 15, 0),
        prefix: 24,
    }];
    n.dnat = vec![DnatRule {
        proto: 6,
        ports: (80, 80),
        to_addr: Ipv4Addr::new(192, 168, 15, 2),
        to_port: 80,
    }];
    n.filtering = i.pick(&[
        Filtering::EndpointIndependent,
        Filtering::AddressDependent,
        Filtering::AddressAndPortDependent,
    ]);
    n.max_entries = 2 + i.below(30);
    n.alloc = PortAlloc::Sequential;
    n.frag_slots = i.below(4);
    gw.nat = Some(n);
    let net6 = |a: &str, prefix| nat::Ipv6Net {
        addr: a.parse().expect("literal"),
        prefix,
    };
    let mut n6 = NatConfig::<Ipv6Addr>::new("2001:db8:113::1".parse().expect("literal"));
    n6.masquerade = vec![net6("fd00:15::", 64)];
    n6.dnat = vec![DnatRule {
        proto: 6,
        ports: (80, 80),
        to_addr: "fd00:15::2".parse().expect("literal"),
        to_port: 80,
    }];
    n6.max_entries = 2 + i.below(30);
    n6.alloc = PortAlloc::Sequential;
    n6.frag_slots = i.below(4);
    gw.v6 = Some(Gw6Config {
        lan: vec![net6("fd00:15::5", 64)],
        ra: i.bool(),
        uplink: Some(net6("2001:db8:113::1", 64)),
        next_hop: i.pick(&[None, Some("2001:db8:113::fe".parse().expect("literal"))]),
        nat: Some(n6),
        routes: vec![(
            net6("fd00:99::", 64),
            "fd00:15::9".parse().expect("literal"),
        )],
        // NPTv6 of the LAN prefix (taking precedence over its masquerade).
        npt: if i.bool() {
            vec![
                nat::npt::Npt66::new(net6("fd00:15::", 64), net6("2001:db8:113:1::", 64))
                    .expect("valid prefixes"),
            ]
        } else {
            Vec::new()
        },
    });
    let arp_max = 1 + i.below(16);
    let cfg = PipelineConfig {
        ports,
        fdb_max: 16,
        fdb_max_per_port: 8,
        ageing_ms: 300_000,
        arp_max,
        arp_max_per_port: 1 + i.below(arp_max),
        arp_suppress: i.bool(),
        gateway: Some(gw),
    };
    let script: Vec<Action> = (0..i.below(6)).map(|_| action(&mut i, ports)).collect();
    let mut pipeline = Pipeline::with_policy(&cfg, (Chain::default(), Script(script, 0)));
    let gw_mac = pipeline
        .gateway
        .as_ref()
        .map(|g| g.mac().0)
        .ok_or("no gateway")?;
    if i.below(3) == 0 {
        let mut v = VlanPorts::default();
        for _ in 0..ports {
            if i.bool() {
                v.access.push(Some(i.pick(&[1u16, 1, 10, 20, 4095, 0])));
            } else {
                v.access.push(None);
            }
            let vid = v.access.last().copied().flatten();
            v.members.push(match vid {
                Some(x) => vec![x],
                None => vec![1, 10, 20],
            });
        }
        pipeline.vlans = Some(v);
        pipeline.fdb.set_default_vlan(1);
    }
    let vlan_aware = pipeline.vlans.is_some();
    let queues: Vec<Queue> = (0..ports).map(|_| Queue::default()).collect();
    let names = ["red-p", "blue-p", "green-p", "uplink-p"];
    let nss = ["red", "blue", "green", "wan"];
    let sent = fake::Sent::default();
    let wports = (0..ports)
        .map(|p| {
            fake::recording_port(
                names[p],
                nss[p],
                p < lan_ports,
                queues[p].clone(),
                Some((sent.clone(), p)),
            )
        })
        .collect();
    let mut w = Worker::new("fz0".into(), wports, pipeline);
    let isolated: Vec<bool> = (0..ports)
        .map(|p| p < lan_ports && i.below(4) == 0)
        .collect();
    let mirrors: Vec<Option<usize>> = (0..ports)
        .map(|_| {
            if i.below(6) == 0 {
                Some(i.below(ports + 2))
            } else {
                None
            }
        })
        .collect();
    let pnames: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    w.set_reloader(Box::new(move || {
        Ok(Reloaded {
            chain: Chain::new(Vec::new(), Vec::new(), pnames.clone()),
            isolated: isolated.clone(),
            mirrors: mirrors.clone(),
        })
    }))?;

    let pool = Pool {
        macs: vec![
            [0x02, 0, 0, 0, 0, 1],
            [0x02, 0, 0, 0, 0, 2],
            [0x02, 0, 0, 0, 0, 3],
            gw_mac,
            gw_mac,
            UPLINK_MAC,
            PEER_MAC,
        ],
        ips: vec![
            Ipv4Addr::new(192, 168, 15, 1),
            Ipv4Addr::new(192, 168, 15, 2),
            Ipv4Addr::new(192, 168, 15, 3),
            Ipv4Addr::new(192, 168, 15, 5),
            Ipv4Addr::new(203, 0, 113, 1),
            Ipv4Addr::new(203, 0, 113, 10),
            Ipv4Addr::new(203, 0, 113, 254),
            Ipv4Addr::new(8, 8, 8, 8),
        ],
    };
    let max_frame = if avoid(
        known::KNOWN_ISSUE_RETAG_OVERFLOW,
        "KNOWN_ISSUE_RETAG_OVERFLOW",
    ) {
        65_596
    } else {
        MAX_FRAME + 8
    };
    let mut now = 0u64;
    let mut unchecked = false;
    let mut oversized_in = false;
    for _ in 0..1 + i.below(12) {
        if i.is_empty() {
            break;
        }
        let p = i.below(ports);
        for _ in 0..1 + i.below(6) {
            let mut f = if i.bool() {
                routed_frame(&mut i, p, ports - 1, gw_mac, &pool)
            } else {
                build::frame(&mut i, &pool, 9300)
            };
            if i.below(32) == 0 {
                let big = [
                    1515usize,
                    9000,
                    65_535,
                    65_549,
                    65_596,
                    65_597,
                    65_600,
                    MAX_FRAME,
                    MAX_FRAME + 1,
                ];
                f.resize(i.pick(&big).min(max_frame), 0);
            }
            // Routed output is checked against the MTUs unless the input was
            // already too big for its link or spoofed the gateway's MACs.
            let mtu_in = if p == ports - 1 { up_mtu } else { lan_mtu };
            let src_mac = f.get(6..12).unwrap_or(&[]);
            if src_mac == gw_mac || src_mac == UPLINK_MAC {
                unchecked = true;
            }
            if f.len() > mtu_in + 14 {
                oversized_in = true;
            }
            let mut slot = vnet(&mut i, f.len(), vlan_aware).to_vec();
            slot.extend_from_slice(&f);
            if i.below(64) == 0 {
                slot.truncate(i.below(10));
            }
            queues[p].borrow_mut().push_back(slot);
        }
        w.poll_port(p, now);
        if !unchecked {
            for (port, wire) in sent.borrow().iter() {
                routed_fits(
                    *port,
                    wire,
                    ports - 1,
                    gw_mac,
                    lan_mtu,
                    up_mtu,
                    oversized_in,
                )?;
            }
        }
        sent.borrow_mut().clear();
        now += i.pick(&[0u64, 1, 10, 1000, 3001, 300_001]);
    }
    let s = w.answer("stats", now);
    if s["ok"] != true {
        return Err(format!("stats after the batches: {s}"));
    }
    for cmd in ["fdb", "arp", "conntrack"] {
        let _ = w.answer(cmd, now);
    }
    Ok(())
}
