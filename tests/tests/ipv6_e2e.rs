//! IPv6 through the gateway, end to end in real namespaces: neighbour
//! discovery, ping, routing to the uplink, traceroute, ICMPv6 errors, path
//! MTU discovery with Packet Too Big, and SLAAC from router advertisements.

use e2e::*;
use serde_json::Value;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

const GW6: &str = "fd00:15::5";
const EXT6: &str = "2001:db8:113::1";
const WAN6: &str = "2001:db8:113::10";

/// A dual-stack seed: red (`fd00:15::1`) and, unless `blue_slaac`, blue
/// (`fd00:15::2`) with the gateway `fd00:15::5` as IPv6 default route;
/// uplink `2001:db8:113::1/64` to `wan` (`2001:db8:113::10`). `gateway_extra`
/// and `uplink_extra` add lines to `[gateway]` and `[uplink]`. IPv6 is routed
/// (no NAT66 rule): `wan` gets a route back to the LAN prefix.
fn dual(gateway_extra: &str, uplink_extra: &str, blue_slaac: bool) -> NatTopo {
    let id = uniq();
    let (mut toml, m, sw_ns) = star(&id, &[Kind::Veth, Kind::Veth], "");
    toml = toml
        .replacen(
            "address = \"192.168.15.1/24\"\ngateway = \"192.168.15.254\"",
            "address = [\"192.168.15.1/24\", \"fd00:15::1/64\"]\ngateway = [\"192.168.15.5\", \"fd00:15::5\"]",
            1,
        )
        .replacen(
            "address = \"192.168.15.2/24\"\ngateway = \"192.168.15.254\"",
            if blue_slaac {
                "address = \"192.168.15.2/24\"\ngateway = \"192.168.15.5\""
            } else {
                "address = [\"192.168.15.2/24\", \"fd00:15::2/64\"]\ngateway = [\"192.168.15.5\", \"fd00:15::5\"]"
            },
            1,
        );
    let wan_ns = format!("vs{id}w");
    toml += &format!(
        "[gateway]\naddress = [\"192.168.15.5/24\", \"{GW6}/64\"]\n{gateway_extra}\n[uplink]\nnetns = \"{wan_ns}\"\naddress = [\"203.0.113.1/24\", \"{EXT6}/64\"]\npeer_addresses = [\"203.0.113.10/24\", \"{WAN6}/64\"]\nifname = \"w{id}\"\nswitch_ifname = \"u{id}\"\n{uplink_extra}\n[[masquerade]]\nsource = \"192.168.15.0/24\"\n"
    );
    let topo = TopoGuard::new(&toml);
    let wan = Member {
        ns: wan_ns,
        ifname: format!("w{id}"),
        port: format!("u{id}"),
        ip: WAN6.into(),
    };
    let mut red = m[0].clone();
    red.ip = "fd00:15::1".into();
    let mut blue = m[1].clone();
    blue.ip = "fd00:15::2".into();
    NatTopo {
        topo,
        red,
        blue,
        hosts: m,
        wan,
        sw_ns,
    }
}

/// Start the switch (which builds the topology), then give `wan` its route
/// back to the LAN prefix (IPv6 is routed, not translated, here).
fn start(t: &NatTopo) -> SwitchProc {
    let sw = SwitchProc::start(&t.topo);
    let o = ns_exec(
        &t.wan.ns,
        &["ip", "-6", "route", "add", "fd00:15::/64", "via", EXT6],
        Duration::from_secs(5),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    sw
}

fn counter(st: &Value, name: &str) -> u64 {
    st["gateway"]["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no gateway counter {name} in {st}"))
}

/// A UDP datagram to `dst` from a socket in `ns`: the error the kernel reports.
fn udp_error(ns: &str, dst: &str) -> ErrorKind {
    in_ns(ns, || {
        let s = UdpSocket::bind("[::]:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.connect(dst.parse::<SocketAddr>().unwrap()).unwrap();
        s.send(b"hello").unwrap();
        let mut b = [0u8; 64];
        match s.recv(&mut b) {
            Ok(_) => panic!("{dst} answered"),
            Err(e) => e.kind(),
        }
    })
}

#[test]
fn ipv6_gateway_answers_routes_and_reports_errors() {
    if !require_root("ipv6_gateway_answers_routes_and_reports_errors") {
        return;
    }
    need_program("traceroute");
    let t = dual("", "mtu = 1280", false);
    let sw = start(&t);
    // The gateway's addresses answer ping from both hosts.
    for h in [&t.red, &t.blue] {
        for dst in [GW6, EXT6] {
            assert_eq!(
                ping_loss_with(&h.ns, &["-6"], dst, 3),
                0.0,
                "{} -> {dst}",
                h.ns
            );
        }
    }
    // red and blue reach wan at the same time.
    let (r, b) = (t.red.ns.clone(), t.blue.ns.clone());
    let a = std::thread::spawn(move || ping_loss_with(&r, &["-6", "-i", "0.2"], WAN6, 10));
    let c = std::thread::spawn(move || ping_loss_with(&b, &["-6", "-i", "0.2"], WAN6, 10));
    assert_eq!(a.join().unwrap(), 0.0, "red -> wan");
    assert_eq!(c.join().unwrap(), 0.0, "blue -> wan");
    // traceroute -6: the gateway is the first hop, wan the second.
    let o = ns_exec(
        &t.red.ns,
        &[
            "traceroute",
            "-6",
            "-n",
            "-q",
            "1",
            "-w",
            "2",
            "-m",
            "3",
            WAN6,
        ],
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&o.stdout);
    let hop = |n: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(n))
            .unwrap_or("")
            .to_string()
    };
    assert!(hop("1 ").contains(GW6), "first hop:\n{text}");
    assert!(hop("2 ").contains(WAN6), "second hop:\n{text}");
    // UDP to a closed port, on wan and on the gateway: ECONNREFUSED.
    let dst = format!("[{WAN6}]:9");
    assert_eq!(udp_error(&t.red.ns, &dst), ErrorKind::ConnectionRefused);
    let dst = format!("[{GW6}]:9");
    assert_eq!(udp_error(&t.red.ns, &dst), ErrorKind::ConnectionRefused);
    // TCP to a closed port on wan: refused in less than a second.
    let started = Instant::now();
    let r = in_ns(&t.red.ns, || {
        TcpStream::connect_timeout(
            &format!("[{WAN6}]:9").parse().unwrap(),
            Duration::from_secs(3),
        )
    });
    assert_eq!(
        r.err().map(|e| e.kind()),
        Some(ErrorKind::ConnectionRefused)
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // No route beyond the uplink prefix: the gateway says so.
    let o = ns_exec(
        &t.red.ns,
        &["ping", "-6", "-c", "1", "-W", "2", "2001:db8:999::7"],
        Duration::from_secs(10),
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&format!("From {GW6}")) && text.contains("nreachable"),
        "{text}"
    );
    // Uplink MTU 1280: a 20 MB TCP upload (IPv6 never fragments on the way)
    // completes because the gateway sends Packet Too Big.
    tcp_transfer(&t.red, &t.wan, 5003, 20 * 1000 * 1000);
    let st = sw.cli_json("stats");
    assert!(counter(&st, "packet_too_big") >= 1, "{st}");
    assert!(counter(&st, "time_exceeded") >= 1, "{st}");
    assert!(counter(&st, "nd_adverts") >= 2, "{st}");
    let o = ns_exec(
        &t.red.ns,
        &["ip", "-6", "route", "get", WAN6],
        Duration::from_secs(5),
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("mtu 1280"),
        "red learned the path MTU: {text}"
    );
    // IPv4 as before.
    assert_eq!(ping_loss(&t.red.ns, "203.0.113.10", 2), 0.0);
}

#[test]
fn slaac_from_the_gateways_router_advertisements() {
    if !require_root("slaac_from_the_gateways_router_advertisements") {
        return;
    }
    // blue has no static IPv6 address: the gateway's advertisements give it
    // one on fd00:15::/64 and a default route, and it reaches wan.
    let t = dual("ra = true", "", true);
    let _sw = start(&t);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (addr, route) = loop {
        let a = ns_exec(
            &t.blue.ns,
            &[
                "ip",
                "-6",
                "addr",
                "show",
                "dev",
                &t.blue.ifname,
                "scope",
                "global",
            ],
            Duration::from_secs(5),
        );
        let r = ns_exec(
            &t.blue.ns,
            &["ip", "-6", "route", "show", "default"],
            Duration::from_secs(5),
        );
        let (a, r) = (
            String::from_utf8_lossy(&a.stdout).to_string(),
            String::from_utf8_lossy(&r.stdout).to_string(),
        );
        let ready = a.contains("fd00:15:") && !a.contains("tentative") && r.contains("via fe80::");
        if ready || Instant::now() > deadline {
            break (a, r);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        addr.contains("fd00:15:") && addr.contains("dynamic"),
        "no SLAAC address: {addr}"
    );
    assert!(
        route.contains("via fe80::"),
        "no default route from the RA: {route}"
    );
    assert_eq!(
        ping_loss_with(&t.blue.ns, &["-6"], WAN6, 3),
        0.0,
        "blue -> wan"
    );
    assert_eq!(
        ping_loss_with(&t.blue.ns, &["-6"], "fd00:15::1", 3),
        0.0,
        "blue -> red"
    );
}
