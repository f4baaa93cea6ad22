//! End to end: the built-in policies with real traffic — ACL, isolation, rate
//! limiting, mirroring — and hot reload during a transfer.

use e2e::*;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

fn policy_topo(extra: &str, isolated: &[usize], n: usize) -> (TopoGuard, Vec<Member>) {
    let id = uniq();
    let kinds: Vec<Kind> = (0..n).map(|_| Kind::Veth).collect();
    let (mut toml, m, _) = star(&id, &kinds, "");
    for &i in isolated {
        toml = toml.replace(
            &format!("ifname = \"{}\"\n", m[i].ifname),
            &format!("ifname = \"{}\"\nisolated = true\n", m[i].ifname),
        );
    }
    toml += "[gateway]\naddress = \"192.168.15.254/24\"\n";
    toml += extra;
    (TopoGuard::new(&toml), m)
}

fn counter(stats: &Value, key: &str) -> u64 {
    stats["policy"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("no policy counter {key}: {}", stats["policy"]))
}

#[test]
fn acl_drop_is_ping_loss_and_a_rule_counter_and_reload_swaps_it() {
    if !require_root("acl_drop_is_ping_loss_and_a_rule_counter_and_reload_swaps_it") {
        return;
    }
    let (topo, m) = policy_topo("", &[], 2);
    let (red, blue) = (&m[0], &m[1]);
    let rule = format!(
        "[[acl]]\nname = \"no-ping-to-blue\"\naction = \"drop\"\nin_port = \"{}\"\nprotocol = \"icmp\"\ndst = \"{}/32\"\n",
        red.ns, blue.ip
    );
    let base = std::fs::read_to_string(&topo.path).unwrap();
    std::fs::write(&topo.path, format!("{base}{rule}")).unwrap();
    let sw = SwitchProc::start(&topo);
    assert_eq!(
        ping_loss(&red.ns, &blue.ip, 3),
        100.0,
        "the ACL should drop red's pings to blue"
    );
    let st = sw.cli_json("stats");
    assert!(counter(&st, "acl:no-ping-to-blue") >= 3, "{}", st["policy"]);
    let p = st["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == red.port.as_str())
        .unwrap();
    assert!(p["drops"]["policy"].as_u64().unwrap() >= 3, "{p}");
    assert!(sw.cli_text("stats").contains("acl:no-ping-to-blue="));
    // Other traffic is untouched.
    tcp_transfer(red, blue, 5100, 1_000_000);

    // Hot reload without the rule, during a continuous transfer: nothing lost or duplicated.
    std::fs::write(&topo.path, &base).unwrap();
    let (r, b) = (red.clone(), blue.clone());
    let transfer = std::thread::spawn(move || tcp_transfer(&r, &b, 5101, 150_000_000));
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(100));
        let o = run_timeout(
            Command::new(bin("vswitch"))
                .args(["reload", "--socket"])
                .arg(&sw.socket),
            Duration::from_secs(10),
        );
        assert!(
            o.status.success(),
            "reload: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    transfer
        .join()
        .expect("transfer across reloads (sha256 checked inside)");
    assert_eq!(
        ping_loss(&red.ns, &blue.ip, 3),
        0.0,
        "after reload the rule is gone"
    );
    let st = sw.cli_json("stats");
    assert_eq!(st["reloads"], 5);
    assert!(
        st["policy"].as_object().unwrap().is_empty(),
        "{}",
        st["policy"]
    );
    // SIGHUP reloads too: put the rule back.
    std::fs::write(&topo.path, format!("{base}{rule}")).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sw.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        ping_loss(&red.ns, &blue.ip, 2),
        100.0,
        "SIGHUP brought the rule back"
    );
    // A broken file is refused and the old policy stays.
    std::fs::write(&topo.path, format!("{base}[[acl]]\naction = \"maybe\"\n")).unwrap();
    let o = run_timeout(
        Command::new(bin("vswitch"))
            .args(["reload", "--socket"])
            .arg(&sw.socket),
        Duration::from_secs(10),
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("acl[0].action"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(ping_loss(&red.ns, &blue.ip, 2), 100.0);
}

#[test]
fn isolated_ports_reach_only_others_and_the_gateway() {
    if !require_root("isolated_ports_reach_only_others_and_the_gateway") {
        return;
    }
    let (topo, m) = policy_topo("", &[1, 2], 3);
    let _sw = SwitchProc::start(&topo);
    let (open, iso1, iso2) = (&m[0], &m[1], &m[2]);
    assert_eq!(
        ping_loss(&iso1.ns, &iso2.ip, 3),
        100.0,
        "isolated ports must not reach each other"
    );
    assert_eq!(ping_loss(&iso2.ns, &iso1.ip, 2), 100.0);
    assert_eq!(
        ping_loss(&iso1.ns, &open.ip, 2),
        0.0,
        "isolated -> non-isolated"
    );
    assert_eq!(
        ping_loss(&open.ns, &iso2.ip, 2),
        0.0,
        "non-isolated -> isolated"
    );
    assert_eq!(
        ping_loss(&iso1.ns, "192.168.15.254", 2),
        0.0,
        "isolated -> gateway"
    );
    // Broadcasts from an isolated port reach non-isolated ports only.
    let mac = mac_bytes_of(&iso1.ns, &iso1.ifname);
    let f = [
        &[0xffu8; 6][..],
        &mac,
        &[0x88, 0xb5],
        b"ISOLATED",
        &[0u8; 38],
    ]
    .concat();
    let mut rx_open = packet_socket(&open.ns, &open.ifname);
    let mut rx_iso2 = packet_socket(&iso2.ns, &iso2.ifname);
    assert_eq!(
        send_frames(
            &mut packet_socket(&iso1.ns, &iso1.ifname),
            std::slice::from_ref(&f)
        ),
        1
    );
    let (a, b) = std::thread::scope(|s| {
        let h = s.spawn(|| recv_frames(&mut rx_iso2, Duration::from_millis(400)));
        (
            recv_frames(&mut rx_open, Duration::from_millis(400)),
            h.join().unwrap(),
        )
    });
    assert!(a.contains(&f), "the non-isolated port gets the broadcast");
    assert!(!b.contains(&f), "the other isolated port must not get it");
}

#[test]
fn rate_limit_holds_within_ten_percent() {
    if !require_root("rate_limit_holds_within_ten_percent") {
        return;
    }
    let (topo, m) = policy_topo("", &[], 2);
    let (red, blue) = (&m[0], &m[1]);
    let base = std::fs::read_to_string(&topo.path).unwrap();
    std::fs::write(
        &topo.path,
        format!(
            "{base}[[rate_limit]]\nnamespace = \"{}\"\nbits_per_sec = 50000000\n",
            blue.ns
        ),
    )
    .unwrap();
    let sw = SwitchProc::start(&topo);
    let mut server = Command::new("ip");
    server.args(["netns", "exec", &red.ns, "iperf3", "-s", "-1", "-p", "5301"]);
    let mut server = server
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let o = ns_exec(
        &blue.ns,
        &[
            "iperf3", "-c", &red.ip, "-p", "5301", "-u", "-b", "200M", "-l", "1400", "-t", "4",
            "-J",
        ],
        Duration::from_secs(30),
    );
    let _ = server.kill();
    let _ = server.wait();
    let v: Value = serde_json::from_slice(&o.stdout).expect("iperf3 JSON");
    let sum = &v["end"]["sum"];
    let sent_bps = sum["bits_per_second"].as_f64().unwrap();
    let lost = sum["lost_percent"].as_f64().unwrap();
    let received = sent_bps * (1.0 - lost / 100.0);
    eprintln!(
        "sent {:.1} Mbit/s, lost {lost:.1}%, received {:.1} Mbit/s",
        sent_bps / 1e6,
        received / 1e6
    );
    assert!(
        (45e6..=55e6).contains(&received),
        "received {:.1} Mbit/s, limit 50 Mbit/s",
        received / 1e6
    );
    let st = sw.cli_json("stats");
    assert!(counter(&st, &format!("rate-limit:{}", blue.port)) > 1000);
}

#[test]
fn mirror_copies_a_ports_traffic_both_ways() {
    if !require_root("mirror_copies_a_ports_traffic_both_ways") {
        return;
    }
    let (topo, m) = policy_topo("", &[], 3);
    let (red, blue, spy) = (&m[0], &m[1], &m[2]);
    let base = std::fs::read_to_string(&topo.path).unwrap();
    std::fs::write(
        &topo.path,
        format!(
            "{base}[[mirror]]\nfrom = \"{}\"\nto = \"{}\"\n",
            red.ns, spy.ns
        ),
    )
    .unwrap();
    let _sw = SwitchProc::start(&topo);
    assert_eq!(ping_loss(&red.ns, &blue.ip, 1), 0.0);
    let mut tap = packet_socket(&spy.ns, &spy.ifname);
    let r = red.clone();
    let b = blue.ip.clone();
    let pinger = std::thread::spawn(move || ping_loss(&r.ns, &b, 5));
    let frames = recv_frames(&mut tap, Duration::from_millis(1500));
    assert_eq!(pinger.join().unwrap(), 0.0);
    let red_mac = mac_of(&red.ns, &red.ifname);
    let mac = |s: &str| mac_bytes(s);
    let rm = mac(&red_mac);
    let icmp =
        |f: &Vec<u8>, ty: u8| f.len() > 34 && f[12..14] == [8, 0] && f[23] == 1 && f[34] == ty;
    let requests = frames
        .iter()
        .filter(|f| f[6..12] == rm[..] && icmp(f, 8))
        .count();
    let replies = frames
        .iter()
        .filter(|f| f[0..6] == rm[..] && icmp(f, 0))
        .count();
    assert!(
        requests >= 4,
        "mirror saw {requests} echo requests from red ({} frames)",
        frames.len()
    );
    assert!(replies >= 4, "mirror saw {replies} echo replies to red");
}

/// red, blue on the switch; gateway .254; uplink to a wan namespace; DNAT tcp/80 to blue; an ACL.
fn routed_topo(extra: &str) -> (TopoGuard, Vec<Member>, String) {
    let id = uniq();
    let (mut toml, m, sw_ns) = star(&id, &[Kind::Veth, Kind::Veth], "");
    toml += &format!(
        "[gateway]\naddress = \"192.168.15.254/24\"\n[uplink]\nnetns = \"vs{id}w\"\naddress = \"203.0.113.1/24\"\npeer_addresses = [\"203.0.113.10/24\"]\nifname = \"w{id}\"\nswitch_ifname = \"u{id}\"\n[[masquerade]]\nsource = \"192.168.15.0/24\"\n[[dnat]]\nprotocol = \"tcp\"\nport = 80\nto = \"192.168.15.2:80\"\n{extra}"
    );
    let wan = format!("vs{id}w");
    let _ = sw_ns;
    (TopoGuard::new(&toml), m, wan)
}

#[test]
fn trace_shows_dnat_and_the_dropping_rule() {
    if !require_root("trace_shows_dnat_and_the_dropping_rule") {
        return;
    }
    let (topo, m, wan) = routed_topo(
        "[[acl]]\nname = \"no-ssh\"\naction = \"drop\"\nprotocol = \"tcp\"\ndport = 22\n",
    );
    let sw = SwitchProc::start(&topo);
    // Let the switch learn the hosts (ARP) so the trace can name ports and MACs.
    assert_eq!(ping_loss(&m[0].ns, &m[1].ip, 1), 0.0);
    assert_eq!(ping_loss(&wan, "203.0.113.1", 1), 0.0);
    assert_eq!(ping_loss(&m[1].ns, "203.0.113.10", 1), 0.0);
    let trace = |args: &[&str]| -> String {
        let o = run_timeout(
            Command::new(bin("vswitch"))
                .arg("trace")
                .args(args)
                .arg("--socket")
                .arg(&sw.socket),
            Duration::from_secs(10),
        );
        assert!(
            o.status.success(),
            "trace: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let t = String::from_utf8_lossy(&o.stdout).into_owned();
        eprintln!("TRACE {args:?}\n{t}");
        t
    };
    let t = trace(&[
        "--in-port",
        &wan,
        "--src",
        "203.0.113.10",
        "--dst",
        "203.0.113.1",
        "--proto",
        "tcp",
        "--dport",
        "80",
    ]);
    assert!(t.contains("DNAT") && t.contains("192.168.15.2:80"), "{t}");
    assert!(
        t.lines()
            .any(|l| l.contains("out-port") && l.contains(&m[1].port)),
        "{t}"
    );
    let t = trace(&[
        "--in-port",
        &m[0].ns,
        "--src",
        &m[0].ip,
        "--dst",
        &m[1].ip,
        "--dport",
        "22",
    ]);
    assert!(
        t.contains("\"no-ssh\"") && t.contains("verdict: DROP"),
        "{t}"
    );
    let t = trace(&[
        "--in-port",
        &m[0].ns,
        "--src",
        &m[0].ip,
        "--dst",
        "203.0.113.10",
        "--dport",
        "443",
    ]);
    assert!(t.contains("MASQUERADE") && t.contains("203.0.113.1"), "{t}");
    assert!(t.contains("verdict: FORWARD to "), "{t}");
    // Without --src the source is the address learned on the port: the ACL
    // sees an IP packet and drops it (it used to trace a non-IP frame, allowed).
    let t = trace(&["--in-port", &m[0].ns, "--dst", &m[1].ip, "--dport", "22"]);
    assert!(
        t.contains(&format!("IPv4 {}:", m[0].ip))
            && t.contains("\"no-ssh\"")
            && t.contains("verdict: DROP (policy)"),
        "{t}"
    );
    // IPv6 by name or number; the same rule drops TCP/22 over IPv6.
    for et in ["ipv6", "0x86dd"] {
        let t = trace(&[
            "--in-port",
            &m[0].ns,
            "--ethertype",
            et,
            "--src",
            "fe80::1",
            "--dst",
            "fe80::2",
            "--dport",
            "22",
        ]);
        assert!(
            t.contains("IPv6") && t.contains("verdict: DROP (policy)"),
            "{et}: {t}"
        );
    }
    // A forwarded frame ends with a verdict naming its out-port; JSON is structured.
    let t = trace(&[
        "--in-port",
        &m[0].ns,
        "--src",
        &m[0].ip,
        "--dst",
        &m[1].ip,
        "--dport",
        "80",
    ]);
    assert!(
        t.lines().last().unwrap() == format!("verdict: FORWARD to {}", m[1].port),
        "{t}"
    );
    let j: serde_json::Value = serde_json::from_str(&trace(&[
        "--in-port",
        &m[0].ns,
        "--src",
        &m[0].ip,
        "--dst",
        &m[1].ip,
        "--dport",
        "80",
        "--json",
    ]))
    .unwrap();
    let stages = j["stages"].as_array().unwrap();
    assert!(
        stages.iter().all(|s| s["stage"].is_string()
            && s["decision"].is_string()
            && s["detail"].is_string()),
        "{j}"
    );
    assert!(
        stages
            .iter()
            .any(|s| s["stage"] == "l2" && s["decision"] == "unicast"),
        "{j}"
    );
    assert_eq!(j["verdict"]["action"], "forward", "{j}");
    assert_eq!(
        j["verdict"]["out_ports"],
        serde_json::json!([m[1].port]),
        "{j}"
    );
    // The gateway answers TCP to itself with a reset.
    let t = trace(&[
        "--in-port",
        &m[0].ns,
        "--dst",
        "192.168.15.254",
        "--dport",
        "80",
    ]);
    assert!(
        t.contains(&format!(
            "verdict: ANSWER to {} (TCP reset from the gateway)",
            m[0].port
        )),
        "{t}"
    );
    // The router's own code answers: TTL 1 expires at the gateway (time
    // exceeded back to the sender), and an unknown next hop on the LAN
    // makes the packet wait for ARP.
    let t = trace(&[
        "--in-port",
        &m[0].ns,
        "--src",
        &m[0].ip,
        "--dst",
        "203.0.113.10",
        "--ttl",
        "1",
    ]);
    assert!(
        t.contains(&format!(
            "verdict: ERROR to {} (time exceeded from the gateway)",
            m[0].port
        )) && t.contains("time_exceeded +1"),
        "{t}"
    );
    let t = trace(&[
        "--in-port",
        &wan,
        "--src",
        "203.0.113.10",
        "--dst",
        "203.0.113.1",
        "--proto",
        "tcp",
        "--dport",
        "8080",
    ]);
    assert!(t.contains("verdict: DROP (nat-no-mapping)"), "{t}");
    // Usage errors exit 2, whether clap or the switch finds them.
    for bad in [
        &["--in-port", m[0].ns.as_str(), "--dport", "22"][..],
        &["--in-port", m[0].ns.as_str(), "--proto", "udp"],
        &["--in-port", m[0].ns.as_str(), "--ethertype", "ipx"],
        &["--in-port", "nosuchport", "--dst", m[1].ip.as_str()],
        &[
            "--in-port",
            m[0].ns.as_str(),
            "--src",
            "fe80::1",
            "--dst",
            m[1].ip.as_str(),
        ],
        &[
            "--in-port",
            m[0].ns.as_str(),
            "--src",
            "300.1.1.1",
            "--dst",
            m[1].ip.as_str(),
        ],
    ] {
        let o = run_timeout(
            Command::new(bin("vswitch"))
                .arg("trace")
                .args(bad)
                .arg("--socket")
                .arg(&sw.socket),
            Duration::from_secs(10),
        );
        assert_eq!(
            o.status.code(),
            Some(2),
            "{bad:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // Tracing sends nothing and changes no table.
    let st = sw.cli_json("stats");
    assert_eq!(st["policy"]["acl:no-ssh"], 0, "{}", st["policy"]);
}

#[test]
fn capture_mirror_pcap_and_metrics() {
    if !require_root("capture_mirror_pcap_and_metrics") {
        return;
    }
    let pcap = std::env::temp_dir().join(format!(
        "vswitch-e2e-mirror-{}-{}.pcap",
        std::process::id(),
        uniq()
    ));
    let (topo, m, _wan) = routed_topo("");
    let red_ns = m[0].ns.clone();
    let base = std::fs::read_to_string(&topo.path).unwrap();
    std::fs::write(
        &topo.path,
        format!(
            "{base}[[mirror]]\nfrom = \"{red_ns}\"\npcap = \"{}\"\n",
            pcap.display()
        ),
    )
    .unwrap();
    let port = 19000 + (std::process::id() % 1000) as u16;
    let addr = format!("127.0.0.1:{port}");
    let sw = SwitchProc::start_with(&topo, &["--metrics", &addr]);
    let sw_ns = topo.topo.switch.as_ref().unwrap().netns.clone().unwrap();
    let scrape = || -> String {
        let o = ns_exec(
            &sw_ns,
            &["curl", "-sf", "-m", "5", &format!("http://{addr}/metrics")],
            Duration::from_secs(10),
        );
        assert!(o.status.success(), "metrics scrape failed");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let value = |text: &str, prefix: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
    };
    let key = format!(
        "vswitch_port_rx_packets_total{{port=\"{}\",netns=\"{}\"}}",
        m[0].port, m[0].ns
    );
    let before = scrape();
    assert!(before.contains("# TYPE vswitch_port_rx_packets_total counter"));
    for line in before
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(
            line.rsplit_once(' ')
                .is_some_and(|(_, v)| v.parse::<f64>().is_ok()),
            "bad exposition line {line:?}"
        );
    }
    let rx0 = value(&before, &key);

    // A live capture of red's port, read by tcpdump.
    let cap = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} capture {} -w - -c 200 -d 2 --socket {} | tcpdump -nr - 2>/dev/null",
            bin("vswitch").display(),
            m[0].ns,
            sw.socket.display()
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ping_loss(&m[0].ns, &m[1].ip, 3), 0.0);
    let out = cap.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.matches("ICMP echo request").count() >= 1 && text.contains("ICMP echo reply"),
        "tcpdump read: {text}"
    );

    // The pcap mirror holds red's frames too.
    std::thread::sleep(Duration::from_millis(300));
    let o = run_timeout(
        Command::new("tcpdump").arg("-nr").arg(&pcap),
        Duration::from_secs(10),
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.matches(&format!("{} > {}: ICMP echo request", m[0].ip, m[1].ip))
            .count()
            >= 3,
        "mirror pcap: {text}"
    );
    assert!(
        text.matches(&format!("{} > {}: ICMP echo reply", m[1].ip, m[0].ip))
            .count()
            >= 3,
        "mirror pcap: {text}"
    );

    let after = scrape();
    assert!(value(&after, &key) >= rx0 + 3, "counter did not move");
    drop(sw);
    let _ = std::fs::remove_file(&pcap);
}

#[test]
fn stateful_acl_allows_only_replies_from_blue() {
    if !require_root("stateful_acl_allows_only_replies_from_blue") {
        return;
    }
    let (topo, m) = policy_topo("", &[], 2);
    let (red, blue) = (&m[0], &m[1]);
    let base = std::fs::read_to_string(&topo.path).unwrap();
    // IPv4 from blue passes only when it belongs to a connection seen before
    // (started by red); ARP and everything else from blue pass.
    let rules = format!(
        "[[acl]]\nname = \"blue-replies\"\naction = \"allow\"\nin_port = \"{b}\"\nethertype = \"ipv4\"\nstate = \"established\"\n[[acl]]\nname = \"blue-new\"\naction = \"drop\"\nin_port = \"{b}\"\nethertype = \"ipv4\"\n",
        b = blue.ns
    );
    std::fs::write(&topo.path, format!("{base}{rules}")).unwrap();
    let sw = SwitchProc::start(&topo);
    assert_eq!(
        ping_loss(&red.ns, &blue.ip, 3),
        0.0,
        "red starts, blue's replies pass"
    );
    tcp_transfer(red, blue, 5200, 2_000_000);
    assert_eq!(ping_loss(&blue.ns, &red.ip, 3), 100.0, "blue cannot start");
    let addr: std::net::SocketAddr = format!("{}:5201", red.ip).parse().unwrap();
    let l = in_ns(&red.ns, || std::net::TcpListener::bind(addr)).unwrap();
    let r = in_ns(&blue.ns, || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
    });
    assert!(r.is_err(), "blue connected to red");
    drop(l);
    let st = sw.cli_json("stats");
    assert!(
        counter(&st, "acl:blue-replies") > 0 && counter(&st, "acl:blue-new") >= 3,
        "{}",
        st["policy"]
    );
}

#[test]
fn vlans_separate_access_ports_and_a_trunk_carries_both() {
    vlan_case("vlans_separate_access_ports_and_a_trunk_carries_both", "");
}

/// The same with `io = "ring"`: the tags the kernel strips on receive come
/// back from the ring's `tp_vlan_tci` instead of `PACKET_AUXDATA`.
#[test]
fn vlans_with_ring_io() {
    vlan_case("vlans_with_ring_io", "io = \"ring\"\n");
}

fn vlan_case(test: &str, switch_extra: &str) {
    if !require_root(test) {
        return;
    }
    let id = uniq();
    let (mut toml, m, _) = star(
        &id,
        &[Kind::Veth, Kind::Veth, Kind::Veth, Kind::Tap, Kind::Veth],
        switch_extra,
    );
    for (i, cfg) in [
        (0, "vlan = 10"),
        (1, "vlan = 10"),
        (2, "vlan = 20"),
        (3, "vlan = 20"),
        (4, "trunk = [10, 20]"),
    ] {
        toml = toml.replace(
            &format!("ifname = \"{}\"\n", m[i].ifname),
            &format!("ifname = \"{}\"\n{cfg}\n", m[i].ifname),
        );
    }
    let topo = TopoGuard::new(&toml);
    let sw = SwitchProc::start(&topo);
    let (a10, b10, a20, b20, trunk) = (&m[0], &m[1], &m[2], &m[3], &m[4]);
    assert_eq!(ping_loss(&a10.ns, &b10.ip, 2), 0.0, "same VLAN 10");
    assert_eq!(
        ping_loss(&a20.ns, &b20.ip, 2),
        0.0,
        "same VLAN 20 (veth and TAP)"
    );
    assert_eq!(
        ping_loss(&a10.ns, &a20.ip, 2),
        100.0,
        "VLAN 10 must not reach VLAN 20"
    );
    assert_eq!(
        ping_loss(&b20.ns, &b10.ip, 2),
        100.0,
        "VLAN 20 must not reach VLAN 10"
    );
    // Two access ports of one VLAN: the flow goes by the kernel fast path
    // (no tag to push or pop). Where BPF is unavailable (an old kernel, a
    // build without clang) the switch runs the slow path; CI must have it.
    let fp = sw.cli_json("stats")["fastpath"].clone();
    if fp["state"] == "on" || std::env::var("CI").as_deref() == Ok("true") {
        let fwd =
            |sw: &SwitchProc| sw.cli_json("stats")["fastpath"]["kernel"]["forwarded"].as_u64();
        let before = fwd(&sw).unwrap_or_else(|| panic!("fast path off: {fp}"));
        assert_eq!(ping_loss_with(&a10.ns, &["-i", "0.01"], &b10.ip, 50), 0.0);
        assert!(
            fwd(&sw).unwrap() >= before + 40,
            "{}",
            sw.cli_json("stats")["fastpath"]
        );
    } else {
        eprintln!("fast path {}: its VLAN check skipped", fp["state"]);
    }

    // The trunk (this kernel has no 802.1Q interfaces, so raw frames stand in
    // for a trunk host): tagged frames in, the right access ports get them
    // untagged; access frames come out on the trunk tagged with their VLAN.
    let t = &trunk.ns;
    let tmac = mac_bytes_of(t, &trunk.ifname);
    let frame = |vid: Option<u16>, tag: u8| -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&tmac);
        if let Some(v) = vid {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&[0x88, 0xb5]);
        f.extend_from_slice(b"VLANTEST");
        f.push(tag);
        f.resize(if vid.is_some() { 64 } else { 60 }, 0x5a);
        f
    };
    let untagged = |f: &[u8]| -> Vec<u8> { [&f[..12], &f[16..]].concat() };
    let mut tx = packet_socket(t, &trunk.ifname);
    let mut rx: Vec<_> = m[..4]
        .iter()
        .map(|h| packet_socket(&h.ns, &h.ifname))
        .collect();
    let mut rx_trunk = packet_socket(t, &trunk.ifname);
    let (f10, f20, f0) = (frame(Some(10), 1), frame(Some(20), 2), frame(None, 3));
    assert_eq!(
        send_frames(&mut tx, &[f10.clone(), f20.clone(), f0.clone()]),
        3
    );
    let got: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
        let hs: Vec<_> = rx
            .iter_mut()
            .map(|p| s.spawn(move || recv_frames(p, Duration::from_millis(500))))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, want10) in [(0, true), (1, true), (2, false), (3, false)] {
        assert_eq!(
            got[i].contains(&untagged(&f10)),
            want10,
            "host {i}: VLAN 10 frame from the trunk"
        );
        assert_eq!(
            got[i].contains(&untagged(&f20)),
            !want10,
            "host {i}: VLAN 20 frame from the trunk"
        );
        assert!(
            !got[i]
                .iter()
                .any(|g| g.windows(9).any(|w| w == b"VLANTEST\x03")),
            "host {i} got the untagged trunk frame"
        );
    }
    // From the access side: a broadcast from a10 and one from b20 reach the trunk tagged 10 and 20.
    let from = |h: &Member, tag: u8| {
        let mac = mac_bytes_of(&h.ns, &h.ifname);
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&mac);
        f.extend_from_slice(&[0x88, 0xb5]);
        f.extend_from_slice(b"VLANTEST");
        f.push(tag);
        f.resize(60, 0x5a);
        let mut p = packet_socket(&h.ns, &h.ifname);
        assert_eq!(send_frames(&mut p, std::slice::from_ref(&f)), 1);
        f
    };
    let (fa, fb) = (from(a10, 4), from(b20, 5));
    let at_trunk = recv_frames(&mut rx_trunk, Duration::from_millis(500));
    let tagged = |f: &[u8], vid: u16| -> Vec<u8> {
        [
            &f[..12],
            &[0x81, 0x00][..],
            &vid.to_be_bytes()[..],
            &f[12..],
        ]
        .concat()
    };
    assert!(
        at_trunk.contains(&tagged(&fa, 10)),
        "a10's frame on the trunk, tagged 10"
    );
    assert!(
        at_trunk.contains(&tagged(&fb, 20)),
        "b20's frame on the trunk, tagged 20"
    );
    // Learning is per VLAN: the trunk's MAC is learned in both VLANs on the trunk port.
    let fdb = sw.cli_json("fdb");
    let trunk_mac = mac_of(t, &trunk.ifname);
    let vlans: Vec<u64> = fdb["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["mac"] == trunk_mac.as_str())
        .map(|e| e["vlan"].as_u64().unwrap())
        .collect();
    assert!(
        vlans.contains(&10) && vlans.contains(&20),
        "trunk MAC learned in {vlans:?}: {fdb}"
    );
    let st = sw.cli_json("stats");
    let tp = st["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == trunk.port.as_str())
        .unwrap()
        .clone();
    assert!(
        tp["drops"]["vlan"].as_u64().unwrap() >= 1,
        "untagged frames on the trunk are dropped: {tp}"
    );
}
