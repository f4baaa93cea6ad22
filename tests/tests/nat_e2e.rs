//! End to end: the gateway and the NAT in the seed topology (red, blue, a
//! `wan` namespace as the external network), checked with ping, curl,
//! traceroute, iperf-like TCP streams, coturn's NAT discovery and hping3.

use e2e::*;
use serde_json::Value;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

fn assert_no_firewall_no_bridge_no_forwarding(t: &NatTopo) {
    for ns in [&t.red.ns, &t.blue.ns, &t.wan.ns, &t.sw_ns] {
        let o = ns_exec(ns, &["nft", "list", "ruleset"], Duration::from_secs(15));
        assert!(
            o.status.success(),
            "nft list ruleset in {ns}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.trim().is_empty(), "nftables rules in {ns}: {out}");
        let o = ns_exec(ns, &["iptables-save"], Duration::from_secs(15));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            !out.lines().any(|l| l.starts_with("-A")),
            "iptables rules in {ns}: {out}"
        );
        for l in links_in(ns) {
            assert_ne!(l.kind, "bridge", "bridge {} in {ns}", l.name);
        }
        let f = in_ns(ns, || {
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap()
        });
        assert_eq!(f.trim(), "0", "ip_forward in {ns}");
    }
}

#[test]
fn gateway_answers_and_both_namespaces_reach_wan_at_once() {
    if !require_root("gateway_answers_and_both_namespaces_reach_wan_at_once") {
        return;
    }
    let t = nat_topo("", "");
    let sw = SwitchProc::start(&t.topo);
    assert_eq!(ping_loss(&t.red.ns, GW, 3), 0.0, "red -> gateway");
    assert_eq!(ping_loss(&t.blue.ns, GW, 3), 0.0, "blue -> gateway");
    let (r, b) = (t.red.ns.clone(), t.blue.ns.clone());
    let a = std::thread::spawn(move || ping_loss(&r, WAN_HOST, 10));
    let c = std::thread::spawn(move || ping_loss(&b, WAN_HOST, 10));
    assert_eq!(a.join().unwrap(), 0.0, "red -> wan");
    assert_eq!(c.join().unwrap(), 0.0, "blue -> wan");
    // Both pings went through the NAT as two ICMP entries from the external address.
    let ct = sw.cli_json("conntrack");
    let icmp: Vec<&Value> = ct["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["proto"] == "icmp")
        .collect();
    assert!(icmp.len() >= 2, "{ct}");
    assert!(icmp.iter().all(|e| e["reply"]["dst"] == EXT), "{ct}");
    let st = sw.cli_json("stats");
    assert!(
        st["gateway"]["counters"]["echo_replies"].as_u64().unwrap() >= 6,
        "{st}"
    );
    assert_no_firewall_no_bridge_no_forwarding(&t);
    // vswitch's own ping (what `vswitch demo` uses instead of iputils-ping):
    // an ICMP socket opened inside the namespace, ping-like output and loss.
    let mut out = Vec::new();
    let dst = WAN_HOST.parse().unwrap();
    let ms = Duration::from_millis;
    let st = switch::ping::ping(&t.red.ns, dst, 3, ms(100), ms(2000), &mut out).unwrap();
    let text = String::from_utf8_lossy(&out);
    assert_eq!((st.sent, st.received), (3, 3), "{text}");
    assert!(
        text.contains("bytes from 203.0.113.10: icmp_seq=3 ttl=63 time=")
            && text.contains("3 packets transmitted, 3 received, 0% packet loss"),
        "{text}"
    );
    let mut out = Vec::new();
    let nobody = "192.168.15.99".parse().unwrap();
    let st = switch::ping::ping(&t.blue.ns, nobody, 2, ms(100), ms(300), &mut out).unwrap();
    let text = String::from_utf8_lossy(&out);
    assert_eq!((st.sent, st.received), (2, 0), "{text}");
    assert!(text.contains("100% packet loss"), "{text}");
}

#[test]
fn http_and_udp_through_masquerade_dnat_and_hairpin() {
    if !require_root("http_and_udp_through_masquerade_dnat_and_hairpin") {
        return;
    }
    let t = nat_topo("", "");
    let sw = SwitchProc::start(&t.topo);
    let (root, sum) = WebRoot::new(3_000_000);
    let wan_http = Bg::start(
        &t.wan.ns,
        &["python3", "-m", "http.server", "8080", "--bind", WAN_HOST],
        Some(&root.0),
    );
    let blue_http = Bg::start(
        &t.blue.ns,
        &["python3", "-m", "http.server", "80", "--bind", &t.blue.ip],
        Some(&root.0),
    );

    // blue fetches from wan through MASQUERADE: the server sees 203.0.113.1.
    assert_eq!(
        curl_sha(&t.blue.ns, &format!("http://{WAN_HOST}:8080/file.bin")),
        sum
    );
    assert!(
        wan_http.log().contains(&format!("{EXT} - -")),
        "wan server log: {}",
        wan_http.log()
    );
    assert!(
        !wan_http.log().contains("192.168.15."),
        "a private address leaked: {}",
        wan_http.log()
    );

    // wan reaches blue's server through the DNAT on 203.0.113.1:80; blue sees the real client.
    assert_eq!(curl_sha(&t.wan.ns, &format!("http://{EXT}/file.bin")), sum);
    assert!(
        blue_http.log().contains(&format!("{WAN_HOST} - -")),
        "blue server log: {}",
        blue_http.log()
    );
    // red reaches it too through the same URL (hairpin); blue sees the external address.
    assert_eq!(curl_sha(&t.red.ns, &format!("http://{EXT}/file.bin")), sum);
    assert!(
        blue_http.log().contains(&format!("{EXT} - -")),
        "blue server log: {}",
        blue_http.log()
    );

    // A UDP request/response through the NAT.
    let server_addr: SocketAddr = format!("{WAN_HOST}:7000").parse().unwrap();
    let server = in_ns(&t.wan.ns, || UdpSocket::bind(server_addr)).unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        let (n, peer) = server.recv_from(&mut buf).expect("UDP request within 5 s");
        server.send_to(&buf[..n], peer).unwrap();
        peer
    });
    let client = in_ns(&t.red.ns, || UdpSocket::bind("0.0.0.0:0")).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client
        .send_to(b"hello through the nat", server_addr)
        .unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = client.recv_from(&mut buf).expect("UDP response within 5 s");
    assert_eq!(&buf[..n], b"hello through the nat");
    assert_eq!(from, server_addr);
    let peer = echo.join().unwrap();
    assert_eq!(peer.ip().to_string(), EXT);

    // A 4000-byte datagram leaves red as IPv4 fragments, the reply comes back
    // fragmented by wan: every fragment is translated both ways.
    let server = in_ns(&t.wan.ns, || UdpSocket::bind(format!("{WAN_HOST}:7001"))).unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 9000];
        let (n, peer) = server
            .recv_from(&mut buf)
            .expect("fragmented UDP request within 5 s");
        server.send_to(&buf[..n], peer).unwrap();
        n
    });
    let big: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
    client.send_to(&big, format!("{WAN_HOST}:7001")).unwrap();
    let mut buf = [0u8; 9000];
    let (n, _) = client
        .recv_from(&mut buf)
        .expect("fragmented UDP response within 5 s");
    assert_eq!(echo.join().unwrap(), 4000);
    assert_eq!(&buf[..n], &big[..]);

    // conntrack shows the flows, with filters.
    let ct = sw.cli_json("conntrack");
    let entries = ct["entries"].as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["proto"] == "tcp"
            && e["original"]["src"] == WAN_HOST
            && e["reply"]["src"] == t.blue.ip.as_str()),
        "DNAT entry: {ct}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["proto"] == "udp" && e["original"]["dport"] == 7000),
        "UDP entry: {ct}"
    );
    let o = run_timeout(
        Command::new(bin("vswitch"))
            .args(["conntrack", "-p", "udp", "--socket"])
            .arg(&sw.socket),
        Duration::from_secs(10),
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.lines().count() >= 1 && text.lines().all(|l| l.starts_with("udp")),
        "{text}"
    );
    assert!(
        text.contains("dport=7000") && text.contains(&format!("dst={EXT}")),
        "{text}"
    );
    let st = sw.cli_json("stats");
    assert!(st["nat"]["hairpins"].as_u64().unwrap() >= 1, "{st}");
}

#[test]
fn closed_ports_are_refused_fast() {
    if !require_root("closed_ports_are_refused_fast") {
        return;
    }
    let t = nat_topo("", "");
    let sw = SwitchProc::start(&t.topo);
    assert_eq!(ping_loss(&t.red.ns, WAN_HOST, 1), 0.0);
    // UDP: the port-unreachable from wan is translated back, so the socket sees ECONNREFUSED.
    let sock = in_ns(&t.red.ns, || UdpSocket::bind("0.0.0.0:0")).unwrap();
    sock.connect(format!("{WAN_HOST}:9")).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    sock.send(b"anyone?").unwrap();
    let mut buf = [0u8; 16];
    let e = sock.recv(&mut buf).expect_err("no answer expected");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    // TCP: the RST comes back through the NAT at once.
    let started = Instant::now();
    let addr: SocketAddr = format!("{WAN_HOST}:9").parse().unwrap();
    let e = in_ns(&t.red.ns, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    })
    .expect_err("port 9 is closed");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refusal took {:?}",
        started.elapsed()
    );
    // The gateway's own addresses listen on nothing: TCP gets a RST from the
    // gateway itself (a real curl and a socket connect), UDP port unreachable.
    for dst in [GW, EXT] {
        let started = Instant::now();
        let o = ns_exec(
            &t.red.ns,
            &["curl", "-s", "-m", "5", &format!("http://{dst}:81/")],
            Duration::from_secs(10),
        );
        assert_eq!(
            o.status.code(),
            Some(7),
            "curl {dst}:81 must be refused (exit 7): {o:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "curl {dst}: refusal took {:?}",
            started.elapsed()
        );
    }
    let started = Instant::now();
    let addr: SocketAddr = format!("{GW}:80").parse().unwrap();
    let e = in_ns(&t.red.ns, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    })
    .expect_err("the gateway listens on nothing");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let sock = in_ns(&t.red.ns, || UdpSocket::bind("0.0.0.0:0")).unwrap();
    sock.connect(format!("{GW}:9")).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    sock.send(b"anyone?").unwrap();
    let e = sock.recv(&mut buf).expect_err("no answer expected");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    let st = sw.cli_json("stats");
    assert!(
        st["nat"]["icmp_errors_translated"].as_u64().unwrap() >= 1,
        "{st}"
    );
    assert!(
        st["gateway"]["counters"]["tcp_resets"].as_u64().unwrap() >= 3,
        "{st}"
    );
}

#[test]
fn two_hundred_megabytes_through_the_nat() {
    if !require_root("two_hundred_megabytes_through_the_nat") {
        return;
    }
    let t = nat_topo("", "");
    let sw = SwitchProc::start(&t.topo);
    tcp_transfer(&t.red, &t.wan, 5002, 200 * 1000 * 1000);
    let st = sw.cli_json("stats");
    let up = st["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == "uplink")
        .unwrap()
        .clone();
    assert!(up["tx_bytes"].as_u64().unwrap() >= 200_000_000, "{up}");
}

#[test]
fn ttl_expiry_and_path_mtu_discovery() {
    if !require_root("ttl_expiry_and_path_mtu_discovery") {
        return;
    }
    // The link beyond the gateway has a smaller MTU than the LAN.
    let t = nat_topo("mtu = 1400", "");
    let sw = SwitchProc::start(&t.topo);
    assert_eq!(ping_loss(&t.red.ns, WAN_HOST, 1), 0.0);
    let o = ns_exec(
        &t.red.ns,
        &[
            "traceroute",
            "-n",
            "-q",
            "1",
            "-w",
            "2",
            "-m",
            "3",
            WAN_HOST,
        ],
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&o.stdout);
    let hop1 = text
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .unwrap_or("");
    assert!(
        hop1.contains(GW),
        "traceroute's first hop is not the gateway:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("2 ") && l.contains(WAN_HOST)),
        "{text}"
    );
    // No route beyond the uplink subnet (no next hop configured): the gateway says so.
    let o = ns_exec(
        &t.red.ns,
        &["ping", "-c", "1", "-W", "2", "198.51.100.7"],
        Duration::from_secs(10),
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&format!("From {GW}")) && text.contains("Unreachable"),
        "{text}"
    );
    // A DF transfer (TCP) of 20 MB red -> wan completes; the gateway told red the MTU.
    tcp_transfer(&t.red, &t.wan, 5003, 20 * 1000 * 1000);
    let st = sw.cli_json("stats");
    assert!(
        st["gateway"]["counters"]["time_exceeded"].as_u64().unwrap() >= 1,
        "{st}"
    );
    assert!(
        st["gateway"]["counters"]["frag_needed"].as_u64().unwrap() >= 1,
        "{st}"
    );
    let o = ns_exec(
        &t.red.ns,
        &["ip", "route", "get", WAN_HOST],
        Duration::from_secs(10),
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("mtu 1400"),
        "red learned no path MTU: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    // Without DF, a packet too big for the next hop is fragmented by the gateway (RFC 4787 REQ-13).
    assert_eq!(
        ping_loss_with(&t.blue.ns, &["-M", "dont", "-s", "1472"], WAN_HOST, 3),
        0.0
    );
    let st = sw.cli_json("stats");
    assert!(
        st["gateway"]["counters"]["fragmented"].as_u64().unwrap() >= 6,
        "{st}"
    );
}

fn nat_discovery(filtering: &str) -> String {
    let t = nat_topo("", &format!("filtering = \"{filtering}\""));
    let _sw = SwitchProc::start(&t.topo);
    let _stun = stun_server(&t.wan.ns);
    let o = ns_exec(
        &t.red.ns,
        &["turnutils_natdiscovery", "-m", "-f", WAN_HOST],
        Duration::from_secs(60),
    );
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

#[test]
fn rfc5780_discovery_sees_eim_and_the_configured_filtering() {
    if !require_root("rfc5780_discovery_sees_eim_and_the_configured_filtering") {
        return;
    }
    for (mode, expect) in [
        ("address-dependent", "NAT with Address Dependent Filtering"),
        (
            "endpoint-independent",
            "NAT with Endpoint Independent Filtering",
        ),
        (
            "address-and-port-dependent",
            "NAT with Address and Port Dependent Filtering",
        ),
    ] {
        let out = nat_discovery(mode);
        assert!(
            out.contains("NAT with Endpoint Independent Mapping"),
            "{mode}: {out}"
        );
        assert!(
            out.contains(expect),
            "{mode}: expected {expect:?} in\n{out}"
        );
    }
}

#[test]
fn syn_flood_keeps_the_table_bounded() {
    if !require_root("syn_flood_keeps_the_table_bounded") {
        return;
    }
    let t = nat_topo("", "max_entries = 1024");
    let sw = SwitchProc::start(&t.topo);
    assert_eq!(ping_loss(&t.red.ns, WAN_HOST, 1), 0.0);
    let listener = in_ns(&t.wan.ns, || {
        std::net::TcpListener::bind(format!("{WAN_HOST}:8443"))
    })
    .unwrap();
    // hping3 changes the source port of every SYN (to closed port 80 in wan).
    let flood = Bg::start(
        &t.red.ns,
        &[
            "timeout", "8", "hping3", "-S", "-p", "80", "-i", "u40", WAN_HOST,
        ],
        None,
    );
    std::thread::sleep(Duration::from_secs(3));
    let started = Instant::now();
    let addr: SocketAddr = format!("{WAN_HOST}:8443").parse().unwrap();
    // From another host: the flooder's own new flows are held to its
    // per-host rate ([nat] new_flows_per_host), by design.
    let conn = in_ns(&t.blue.ns, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2))
    });
    let took = started.elapsed();
    let st = sw.cli_json("stats");
    drop(flood);
    assert!(
        conn.is_ok(),
        "legitimate connection during the flood failed after {took:?}: {conn:?}"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let nat = &st["nat"];
    assert!(nat["entries"].as_u64().unwrap() <= 1024, "{nat}");
    assert!(
        nat["early_dropped"].as_u64().unwrap() > 1000,
        "the flood did not fill the table: {nat}"
    );
    drop(listener);
}
