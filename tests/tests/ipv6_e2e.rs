//! IPv6 end to end on `examples/dualstack.toml` (with unique names): the
//! gateway's neighbour discovery and ping, NAT66 masquerade, forwards and
//! hairpinning, ICMPv6 errors through the NAT, traceroute, path MTU
//! discovery with Packet Too Big, SLAAC from router advertisements, and a
//! 200 MB transfer through NAT66.

use e2e::*;
use serde_json::Value;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

const GW6: &str = "fd00:15::5";
const EXT6: &str = "2001:db8:113::1";
const WAN6: &str = "2001:db8:113::10";

/// The example with unique names.
struct Dual {
    topo: TopoGuard,
    red: Member,
    blue: Member,
    wan: Member,
}

/// `examples/dualstack.toml` with unique namespace, interface and switch
/// names (the switch side in its own namespace), after `edit` changes its text.
fn dualstack(edit: impl Fn(String) -> String) -> Dual {
    let id = uniq();
    let member = |ns: String, tag: &str, ip: &str| Member {
        ifname: format!("e{id}{tag}"),
        port: format!("b{id}{tag}"),
        ns,
        ip: ip.into(),
    };
    let red = member(format!("vs{id}r"), "r", "fd00:15::1");
    let blue = member(format!("vs{id}b"), "b", "fd00:15::2");
    let wan = Member {
        ns: format!("vs{id}w"),
        ifname: format!("w{id}"),
        port: format!("u{id}"),
        ip: WAN6.into(),
    };
    let text = include_str!("../../examples/dualstack.toml")
        .replace("name = \"dualstack\"", &format!("name = \"ds{id}\""))
        .replace("name = \"v-net-0\"", &format!("name = \"vsw{id}\""))
        .replace(
            "# netns = \"vsw-dualstack\"",
            &format!("netns = \"vs{id}sw\" #"),
        );
    let mut text = edit(text);
    for m in [&red, &blue] {
        let name = if m.ns.ends_with('r') { "red" } else { "blue" };
        text = text.replace(
            &format!("name = \"{name}\"\n"),
            &format!(
                "name = \"{}\"\nifname = \"{}\"\nswitch_ifname = \"{}\"\n",
                m.ns, m.ifname, m.port
            ),
        );
    }
    text = text.replace(
        "netns = \"wan\"\n",
        &format!(
            "netns = \"{}\"\nifname = \"{}\"\nswitch_ifname = \"{}\"\n",
            wan.ns, wan.ifname, wan.port
        ),
    );
    Dual {
        topo: TopoGuard::new(&text),
        red,
        blue,
        wan,
    }
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
fn dualstack_example_nat66_masquerade_forward_and_hairpin() {
    if !require_root("dualstack_example_nat66_masquerade_forward_and_hairpin") {
        return;
    }
    need_program("curl");
    let t = dualstack(|s| s);
    let sw = SwitchProc::start(&t.topo);
    // Neighbour discovery and ping on the LAN and to the gateway.
    assert_eq!(ping_loss_with(&t.red.ns, &["-6"], "fd00:15::2", 3), 0.0);
    assert_eq!(ping_loss_with(&t.blue.ns, &["-6"], "fd00:15::1", 3), 0.0);
    for h in [&t.red, &t.blue] {
        assert_eq!(
            ping_loss_with(&h.ns, &["-6"], GW6, 3),
            0.0,
            "{} -> gateway",
            h.ns
        );
    }
    // The switch learned both hosts from neighbour discovery (ND suppression's table).
    let arp = sw.cli_json("arp");
    let nd = arp["neighbours6"].as_array().expect("neighbours6");
    for ip in ["fd00:15::1", "fd00:15::2"] {
        assert!(nd.iter().any(|e| e["ip"] == ip), "{ip} not in {arp}");
    }
    // red and blue reach wan at the same time (NAT66: wan has no route to fd00:15::/64).
    let (r, b) = (t.red.ns.clone(), t.blue.ns.clone());
    let a = std::thread::spawn(move || ping_loss_with(&r, &["-6", "-i", "0.2"], WAN6, 10));
    let c = std::thread::spawn(move || ping_loss_with(&b, &["-6", "-i", "0.2"], WAN6, 10));
    assert_eq!(a.join().unwrap(), 0.0, "red -> wan");
    assert_eq!(c.join().unwrap(), 0.0, "blue -> wan");

    // blue fetches a file from wan: the server sees the uplink address.
    let (root, sum) = WebRoot::new(3_000_000);
    let wan_http = Bg::start(
        &t.wan.ns,
        &["python3", "-m", "http.server", "8080", "--bind", WAN6],
        Some(&root.0),
    );
    let blue_http = Bg::start(
        &t.blue.ns,
        &["python3", "-m", "http.server", "80", "--bind", "fd00:15::2"],
        Some(&root.0),
    );
    assert_eq!(
        curl_sha(&t.blue.ns, &format!("http://[{WAN6}]:8080/file.bin")),
        sum
    );
    assert!(
        wan_http.log().contains(&format!("{EXT6} - -")),
        "wan server log: {}",
        wan_http.log()
    );
    assert!(!wan_http.log().contains("fd00:15:"), "{}", wan_http.log());
    // wan reaches blue's server through the forward on [2001:db8:113::1]:80.
    assert_eq!(
        curl_sha(&t.wan.ns, &format!("http://[{EXT6}]/file.bin")),
        sum
    );
    assert!(
        blue_http.log().contains(&format!("{WAN6} - -")),
        "blue server log: {}",
        blue_http.log()
    );
    // red: the same URL hairpins to blue, which sees the external address.
    assert_eq!(
        curl_sha(&t.red.ns, &format!("http://[{EXT6}]/file.bin")),
        sum
    );
    assert!(
        blue_http.log().contains(&format!("{EXT6} - -")),
        "blue server log: {}",
        blue_http.log()
    );

    // UDP to a closed port in wan: its port unreachable comes back through NAT66.
    let dst = format!("[{WAN6}]:9");
    assert_eq!(udp_error(&t.red.ns, &dst), ErrorKind::ConnectionRefused);
    // TCP to a closed port in wan: refused in less than a second.
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

    // 200 MB through NAT66, red -> wan, equal sha256.
    let mut wan = t.wan.clone();
    wan.ip = WAN6.into();
    tcp_transfer(&t.red, &wan, 5004, 200 * 1000 * 1000);

    // `trace` follows an IPv6 packet through the gateway and NAT66.
    let tr = sw.cli_json_with(
        "trace",
        &[
            "--in-port",
            &t.red.port,
            "--src",
            "fd00:15::1",
            "--dst",
            WAN6,
            "--proto",
            "tcp",
            "--dport",
            "443",
        ],
    );
    assert_eq!(tr["verdict"]["action"], "forward", "{tr}");
    assert_eq!(tr["verdict"]["out_ports"][0], t.wan.port.as_str(), "{tr}");
    let stages = tr["stages"].as_array().expect("stages");
    assert!(
        stages.iter().any(|s| s["stage"] == "nat"
            && s["detail"]
                .as_str()
                .is_some_and(|d| d.contains("MASQUERADE") && d.contains(EXT6))),
        "{tr}"
    );
    let tr = sw.cli_json_with(
        "trace",
        &[
            "--in-port",
            &t.wan.port,
            "--src",
            WAN6,
            "--dst",
            EXT6,
            "--proto",
            "tcp",
            "--dport",
            "80",
        ],
    );
    assert_eq!(
        tr["verdict"]["out_ports"][0],
        t.blue.port.as_str(),
        "forward to blue: {tr}"
    );

    // conntrack lists the IPv6 flows; stats count NAT66.
    let ct = sw.cli_json("conntrack");
    let entries = ct["entries"].as_array().expect("entries");
    assert!(
        entries.iter().any(|e| e["original"]["src"] == "fd00:15::1"
            && e["reply"]["dst"] == EXT6
            && e["proto"] == "tcp"),
        "{ct}"
    );
    let st = sw.cli_json("stats");
    assert!(st["nat6"]["created"].as_u64().unwrap() >= 4, "{st}");
    assert!(st["nat6"]["hairpins"].as_u64().unwrap() >= 1, "{st}");
    assert!(
        st["nat6"]["icmp_errors_translated"].as_u64().unwrap() >= 1,
        "{st}"
    );
    // NAT66 charges connections to ports: red's port holds its flows.
    let hosts = st["nat6"]["hosts"].as_array().expect("nat6 hosts");
    assert!(
        hosts
            .iter()
            .any(|h| h["port"] == t.red.port.as_str() && h["entries"].as_u64() > Some(0)),
        "{st}"
    );
    let text = sw.cli_text("stats");
    assert!(
        text.contains("nat66: ") && text.contains(&format!("({})", t.red.port)),
        "{text}"
    );
    // IPv4 as before.
    assert_eq!(ping_loss(&t.red.ns, "203.0.113.10", 2), 0.0);
}

#[test]
fn ipv6_traceroute_errors_and_path_mtu_through_the_gateway() {
    if !require_root("ipv6_traceroute_errors_and_path_mtu_through_the_gateway") {
        return;
    }
    need_program("traceroute");
    let t = dualstack(|s| s.replace("peer_addresses =", "mtu = 1280\npeer_addresses ="));
    let sw = SwitchProc::start(&t.topo);
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
    // UDP to the gateway itself: port unreachable.
    let dst = format!("[{GW6}]:9");
    assert_eq!(udp_error(&t.red.ns, &dst), ErrorKind::ConnectionRefused);
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
    // Uplink MTU 1280: a 20 MB TCP upload completes (routers never fragment
    // IPv6) because the gateway sends Packet Too Big, and red learns the MTU.
    let mut wan = t.wan.clone();
    wan.ip = WAN6.into();
    tcp_transfer(&t.red, &wan, 5003, 20 * 1000 * 1000);
    let st = sw.cli_json("stats");
    assert!(counter(&st, "packet_too_big") >= 1, "{st}");
    assert!(counter(&st, "time_exceeded") >= 1, "{st}");
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
}

#[test]
fn slaac_from_the_gateways_router_advertisements() {
    if !require_root("slaac_from_the_gateways_router_advertisements") {
        return;
    }
    // blue has no static IPv6 address: the gateway's advertisements give it
    // one on fd00:15::/64 and a default route, and it reaches wan (NAT66).
    let t = dualstack(|s| {
        s.replace("# ra = true", "ra = true")
            .replace(
                "address = [\"192.168.15.2/24\", \"fd00:15::2/64\"]\ngateway = [\"192.168.15.5\", \"fd00:15::5\"]",
                "address = \"192.168.15.2/24\"\ngateway = \"192.168.15.5\"",
            )
            .replace("to = \"[fd00:15::2]:80\"", "to = \"[fd00:15::1]:80\"")
    });
    let _sw = SwitchProc::start(&t.topo);
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

/// One line each way on `c`/`s` (client and server ends), within 10 s.
fn exchange(c: &TcpStream, s: &TcpStream, msg: &str) {
    use std::io::{BufRead, BufReader, Write};
    for (mut a, b) in [(c, s), (s, c)] {
        a.write_all(format!("{msg}\n").as_bytes()).unwrap();
        let mut line = String::new();
        BufReader::new(b)
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("{msg}: {e}"));
        assert_eq!(line.trim_end(), msg);
    }
}

/// A TCP connection from `from` (namespace) to `to`, accepted by a listener
/// bound in `server_ns` at `bind`: (client end, server end).
fn tcp_pair(from: &str, to: &str, server_ns: &str, bind: &str) -> (TcpStream, TcpStream) {
    let l = in_ns(server_ns, || std::net::TcpListener::bind(bind)).expect("listen");
    let to: SocketAddr = to.parse().unwrap();
    let c = in_ns(from, || {
        TcpStream::connect_timeout(&to, Duration::from_secs(10))
    })
    .expect("connect");
    let (s, _) = l.accept().expect("accept");
    for x in [&c, &s] {
        x.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    (c, s)
}

#[test]
fn nat66_connections_survive_a_restart() {
    if !require_root("nat66_connections_survive_a_restart") {
        return;
    }
    let t = dualstack(|s| s);
    let state = std::env::temp_dir().join(format!("vswitch-e2e-{}.state", t.topo.topo.name));
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _rm = Rm(state.clone());
    let args = ["--keep", "--state-file", state.to_str().unwrap()];
    let mut sw = SwitchProc::start_with(&t.topo, &args);
    // From wan through the forward of [EXT6]:80 to blue (a mid-stream
    // segment from outside never opens a connection: without the state
    // restored, this one would be dropped), and red's masqueraded one out.
    let (fc, fs) = tcp_pair(&t.wan.ns, &format!("[{EXT6}]:80"), &t.blue.ns, "[::]:80");
    let (mc, ms) = tcp_pair(&t.red.ns, &format!("[{WAN6}]:5007"), &t.wan.ns, "[::]:5007");
    exchange(&fc, &fs, "forward, before");
    exchange(&mc, &ms, "masquerade, before");
    let before = sw.cli_json("conntrack");
    assert!(sw.stop(), "SIGTERM: clean exit");
    let mut sw = SwitchProc::start_with(&t.topo, &args);
    let log = sw.log_text();
    assert!(
        log.contains("NAT66: 2 connections restored"),
        "the NAT66 state is restored: {log}"
    );
    // The same translations, listed as before.
    let after = sw.cli_json("conntrack");
    let v6 = |ct: &Value| -> Vec<Value> {
        let mut v: Vec<Value> = ct["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["original"]["src"]
                    .as_str()
                    .is_some_and(|s| s.contains(':'))
            })
            .map(|e| serde_json::json!([e["original"], e["reply"]]))
            .collect();
        v.sort_by_key(|x| x.to_string());
        v
    };
    assert_eq!(v6(&before).len(), 2, "{before}");
    assert_eq!(v6(&after), v6(&before), "{after}");
    exchange(&fc, &fs, "forward, after");
    exchange(&mc, &ms, "masquerade, after");
    assert!(sw.stop(), "clean exit");
}

#[test]
fn nptv6_translates_prefixes_statelessly_both_ways() {
    if !require_root("nptv6_translates_prefixes_statelessly_both_ways") {
        return;
    }
    // The example with NPTv6 of the LAN's /64 instead of its masquerade and
    // forward;
    // the uplink link is a /48, so the external /64 is on-link for wan (the
    // gateway answers neighbour solicitations for it).
    let t = dualstack(|s| {
        s.replace(
            "[[masquerade]]\nsource = \"fd00:15::/64\"\n",
            "[[nptv6]]\ninternal = \"fd00:15::/64\"\nexternal = \"2001:db8:113:1::/64\"\n",
        )
        // A translated host is reached at its external address, not by a forward.
        .replace(
            "[[dnat]]\nprotocol = \"tcp\"\nport = 80\nto = \"[fd00:15::2]:80\"\n",
            "",
        )
        .replace("2001:db8:113::1/64", "2001:db8:113::1/48")
        .replace("2001:db8:113::10/64", "2001:db8:113::10/48")
    });
    assert!(t.topo.topo.nat.masquerade6.is_empty() && t.topo.topo.nat.nptv6.len() == 1);
    let sw = SwitchProc::start(&t.topo);
    let npt = nat::npt::Npt66::new(
        "fd00:15::/64".parse().unwrap(),
        "2001:db8:113:1::/64".parse().unwrap(),
    )
    .unwrap();
    let ext = |a: &str| npt.outbound(a.parse().unwrap()).unwrap().to_string();
    let (red_ext, blue_ext) = (ext("fd00:15::1"), ext("fd00:15::2"));
    // Out: wan sees red's external address (RFC 6296: checksum-neutral, so
    // the transport checksums were not touched and still verify).
    assert_eq!(ping_loss_with(&t.red.ns, &["-6"], WAN6, 3), 0.0);
    let (c, s) = tcp_pair(&t.red.ns, &format!("[{WAN6}]:5009"), &t.wan.ns, "[::]:5009");
    assert_eq!(s.peer_addr().unwrap().ip().to_string(), red_ext);
    exchange(&c, &s, "out through NPTv6");
    // In, with no state: wan opens a connection to red's external address.
    let (c, s) = tcp_pair(
        &t.wan.ns,
        &format!("[{red_ext}]:5010"),
        &t.red.ns,
        "[::]:5010",
    );
    assert_eq!(s.peer_addr().unwrap().ip().to_string(), WAN6);
    exchange(&c, &s, "in through NPTv6");
    // Hairpin: blue reaches red by its external address and is seen by its own.
    let (c, s) = tcp_pair(
        &t.blue.ns,
        &format!("[{red_ext}]:5011"),
        &t.red.ns,
        "[::]:5011",
    );
    assert_eq!(s.peer_addr().unwrap().ip().to_string(), blue_ext);
    exchange(&c, &s, "hairpin through NPTv6");
    // A closed port answers with an ICMPv6 error translated back (its quote too).
    assert_eq!(
        udp_error(&t.red.ns, &format!("[{WAN6}]:9")),
        ErrorKind::ConnectionRefused
    );
    let st = sw.cli_json("stats");
    assert!(counter(&st, "npt_out") >= 4, "{}", st["gateway"]);
    assert!(counter(&st, "npt_in") >= 4, "{}", st["gateway"]);
    assert_eq!(counter(&st, "drop_npt_unmappable"), 0);
    // Stateless: NAT66 tracked none of it.
    let ct = sw.cli_json("conntrack");
    assert!(
        !ct["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["original"]["src"]
                .as_str()
                .is_some_and(|s| s.contains(':'))),
        "{ct}"
    );
    // `trace` runs the same translation.
    let tr = sw.cli_json_with(
        "trace",
        &[
            "--in-port",
            &t.red.port,
            "--src",
            "fd00:15::1",
            "--dst",
            WAN6,
            "--proto",
            "udp",
            "--dport",
            "53",
        ],
    );
    assert_eq!(tr["verdict"]["out_ports"][0], t.wan.port.as_str(), "{tr}");
    let stages = tr["stages"].to_string();
    assert!(
        stages.contains("npt_out +1") && stages.contains(&format!("[{red_ext}]:40000")),
        "{tr}"
    );
}
