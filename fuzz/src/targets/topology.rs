//! Target `topology`: [`netns_setup::Topology::parse`] on mutated valid files
//! (token-level edits: values replaced by boundary numbers and odd strings,
//! lines deleted, duplicated, swapped, keys and sections inserted) and on
//! random bytes. It must return `Ok` or `Err`, never panic. An accepted
//! topology then goes through what `vswitch run` derives from it without
//! touching the system (VLAN roles, port ids, the policy, the gateway
//! configuration when there is no uplink) and its `[nat]` keys configure a
//! NAT that translates a first packet.

use crate::input::Input;
use crate::known::{self, avoid};
use nat::{Nat, Side};
use netns_setup::Topology;
use std::net::Ipv4Addr;
use switch::daemon::{PortInfo, build_policy, gateway_config, port_id, vlan_ports};

const SEED: &str = include_str!("../../../examples/seed.toml");
const PAIR: &str = include_str!("../../../examples/pair.toml");
const FULL: &str = r#"name = "full"
[switch]
name = "v-net-0"
ageing_secs = 300
fdb_max = 4096
fdb_max_per_port = 1024
arp_suppress = true
arp_max = 4096
busy_poll_us = 0
[[namespace]]
name = "red"
address = "192.168.15.1/24"
gateway = "192.168.15.5"
kind = "veth"
mtu = 1500
[[namespace]]
name = "blue"
address = "192.168.15.2/24"
kind = "tap"
[[namespace]]
name = "green"
address = "192.168.15.3/24"
isolated = true
vlan = 10
[[namespace]]
name = "grey"
address = "192.168.15.4/24"
trunk = [10, 20]
[gateway]
address = "192.168.15.5/24"
[[route]]
to = "10.9.0.0/16"
via = "192.168.15.9"
[[acl]]
name = "no-ssh-to-blue"
action = "drop"
in_port = ["red", "green"]
src_mac = "02:00:00:00:00:01"
dst_mac = "02:00:00:00:00:02"
vlan = 10
ethertype = "ipv4"
src = "192.168.15.0/24"
dst = "192.168.15.2/32"
protocol = "tcp"
sport = "1024-65535"
dport = 22
tcp_flags = "syn,!ack"
state = "new"
[[rate_limit]]
namespace = "blue"
bits_per_sec = 50000000
packets_per_sec = 1000
burst_bytes = 625000
[[mirror]]
from = "red"
to = "blue"
"#;
const NAT: &str = r#"name = "natted"
[switch]
name = "v-net-0"
[[namespace]]
name = "red"
address = "192.168.15.1/24"
[gateway]
address = "192.168.15.5/24"
[uplink]
netns = "wan"
address = "203.0.113.1/24"
peer_addresses = ["203.0.113.10/24"]
next_hop = "203.0.113.254"
mtu = 1500
[[masquerade]]
source = "192.168.15.0/24"
[[dnat]]
protocol = "udp"
port = "8000-8010"
to = "192.168.15.1:53"
[nat]
filtering = "endpoint-independent"
port_allocation = "sequential"
port_range = "1024-65535"
max_entries = 16
udp_timeout = 300
tcp_established_timeout = 7440
tcp_transitory_timeout = 240
icmp_timeout = 60
"#;

const FILES: [&str; 4] = [SEED, PAIR, FULL, NAT];

const VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "15",
    "16",
    "63",
    "64",
    "4094",
    "4095",
    "4096",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551614",
    "1e400",
    "nan",
    "-0",
    "0x10",
    "true",
    "false",
    "\"\"",
    "\"aaaaaaaaaaaaaaaa\"",
    "\"0.0.0.0/0\"",
    "\"255.255.255.255/32\"",
    "\"10.0.0.1/33\"",
    "\"192.168.15.5/24\"",
    "\"192.168.15.0/24\"",
    "\"192.168.15.255/24\"",
    "\"203.0.113.1/24\"",
    "\"1-65535\"",
    "\"65535-1\"",
    "\"0-0\"",
    "\"1024-1086\"",
    "\"1024-1087\"",
    "\"65535\"",
    "\"::1\"",
    "\"02:00:00:00:00:01\"",
    "\"ff:ff:ff:ff:ff:ff\"",
    "\"syn,!ack\"",
    "\"!\"",
    "\"tcp\"",
    "\"udp\"",
    "\"icmp\"",
    "\"ipv4\"",
    "\"new\"",
    "\"established\"",
    "\"sequential\"",
    "\"endpoint-independent\"",
    "\"address-and-port-dependent\"",
    "\"192.168.15.2:80\"",
    "\"192.168.15.2:65536\"",
    "\"red\"",
    "\"blue\"",
    "\"wan\"",
    "\"tap\"",
    "[]",
    "[1, 4095]",
    "[4096]",
    "[0]",
    "[\"red\"]",
    "{}",
    "\"x-very-long-interface-name\"",
];

const KEYS: &[&str] = &[
    "name",
    "netns",
    "ageing_secs",
    "fdb_max",
    "fdb_max_per_port",
    "arp_suppress",
    "arp_max",
    "busy_poll_us",
    "cpu",
    "address",
    "gateway",
    "kind",
    "ifname",
    "switch_ifname",
    "mtu",
    "a",
    "b",
    "peer_addresses",
    "interface",
    "next_hop",
    "to",
    "via",
    "source",
    "protocol",
    "port",
    "filtering",
    "port_allocation",
    "port_range",
    "max_entries",
    "udp_timeout",
    "tcp_established_timeout",
    "tcp_transitory_timeout",
    "icmp_timeout",
    "isolated",
    "vlan",
    "trunk",
    "action",
    "in_port",
    "src_mac",
    "dst_mac",
    "ethertype",
    "src",
    "dst",
    "sport",
    "dport",
    "tcp_flags",
    "state",
    "namespace",
    "bits_per_sec",
    "packets_per_sec",
    "burst_bytes",
    "from",
    "pcap",
];

const SECTIONS: &[&str] = &[
    "[switch]",
    "[[namespace]]",
    "[[pair]]",
    "[gateway]",
    "[uplink]",
    "[[route]]",
    "[[masquerade]]",
    "[[dnat]]",
    "[nat]",
    "[[acl]]",
    "[[rate_limit]]",
    "[[mirror]]",
];

/// Valid files (as inputs: a mode byte that selects "edit file N" with no edits).
pub fn seeds() -> Vec<Vec<u8>> {
    (0..FILES.len() as u8).map(|k| vec![1, k, 0]).collect()
}

fn edited(i: &mut Input) -> String {
    let mut lines: Vec<String> = FILES[i.below(FILES.len())]
        .lines()
        .map(str::to_string)
        .collect();
    for _ in 0..i.below(6) {
        let n = lines.len();
        let at = i.below(n.max(1));
        match i.below(8) {
            0..=2 if n > 0 => {
                let v = i.pick(VALUES);
                if let Some((k, _)) = lines[at].split_once('=') {
                    lines[at] = format!("{k}= {v}");
                }
            }
            3 if n > 0 => {
                lines.remove(at);
            }
            4 if n > 0 => {
                let l = lines[at].clone();
                lines.insert(i.below(n + 1), l);
            }
            5 if n > 1 => {
                let b = i.below(n);
                lines.swap(at, b);
            }
            6 => {
                let l = format!("{} = {}", i.pick(KEYS), i.pick(VALUES));
                lines.insert(at.min(n), l);
            }
            _ => {
                let s = i.pick(SECTIONS).to_string();
                lines.insert(at.min(n), s);
            }
        }
    }
    let mut s = lines.join("\n");
    // A few raw byte edits now and then.
    if i.below(4) == 0 && !s.is_empty() {
        let mut b = s.into_bytes();
        for _ in 0..1 + i.below(3) {
            let at = i.below(b.len());
            b[at] = i.u8();
        }
        s = String::from_utf8_lossy(&b).into_owned();
    }
    s
}

/// Run one case.
pub fn run(data: &[u8]) -> Result<(), String> {
    let mut i = Input::new(data);
    let text = if i.u8().is_multiple_of(8) {
        String::from_utf8_lossy(i.rest()).into_owned()
    } else {
        edited(&mut i)
    };
    let Ok(t) = Topology::parse(&text, "fuzz") else {
        return Ok(());
    };
    let _ = (t.switch_ports().count(), t.all_netns());
    let mut ports: Vec<PortInfo> = t
        .switch_ports()
        .map(|n| PortInfo {
            name: n.switch_ifname.clone().unwrap_or_else(|| n.ifname.clone()),
            netns: n.name.clone(),
            lan: true,
        })
        .collect();
    if let Some(u) = &t.uplink {
        ports.push(PortInfo {
            name: u.port_name().to_string(),
            netns: String::new(),
            lan: false,
        });
    }
    let _ = vlan_ports(&t, ports.len());
    for p in &ports {
        let _ = port_id(&t, &p.name);
        let _ = port_id(&t, &p.netns);
    }
    let _ = build_policy(&t, &ports);
    if t.uplink.is_none() && t.switch.is_some() {
        // Without an uplink this reads nothing from the system.
        let _ = gateway_config(&t, ports.len()).map_err(|e| e.to_string())?;
    }
    if let Some(u) = &t.uplink {
        nat_from(&t, u.address.addr)?;
    }
    Ok(())
}

/// The daemon's mapping of `[nat]` to a [`NatConfig`] ([`switch::daemon::nat_config`]), then a first packet.
fn nat_from(t: &Topology, external: Ipv4Addr) -> Result<(), String> {
    let n = &t.nat;
    let huge = [
        n.udp_timeout,
        n.tcp_established_timeout,
        n.tcp_transitory_timeout,
        n.icmp_timeout,
    ]
    .iter()
    .any(|&s| s > u64::MAX / 4000);
    if huge
        && avoid(
            known::KNOWN_ISSUE_NAT_TIMEOUT_OVERFLOW,
            "KNOWN_ISSUE_NAT_TIMEOUT_OVERFLOW",
        )
    {
        return Ok(());
    }
    // The daemon's own mapping, with a small table to keep the run quick.
    let mut c = switch::daemon::nat_config(t, external, 1);
    c.max_entries = c.max_entries.min(4096);
    let src = c
        .masquerade
        .first()
        .map_or(Ipv4Addr::new(192, 168, 15, 1), |m| m.addr);
    let mut nat = Nat::new(c);
    let route = |a: Ipv4Addr| {
        if a == external {
            Side::Local
        } else {
            Side::Wan
        }
    };
    for (k, proto) in [17u8, 6, 1].into_iter().enumerate() {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[3] = 40;
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&src.octets());
        p[16..20].copy_from_slice(&[198, 51, 100, 1]);
        p[20..24].copy_from_slice(&[0x13, 0x88, 0, 53]);
        p[32] = 0x50;
        p[33] = 0x02;
        if proto == 1 {
            p[20] = 8;
        }
        let now = [0u64, 1000, u64::from(u32::MAX)][k];
        let _ = nat.process(now, Side::Lan, &mut p, false, &route);
        nat.expire(now + 1);
    }
    Ok(())
}
