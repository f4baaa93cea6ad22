//! End to end: observability of a running switch — levelled, timestamped
//! logs, truthful captures and mirrors, rates, and counters that agree
//! between text, JSON and Prometheus.

use e2e::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// True if `line` is `TIMESTAMP LEVEL TARGET: MESSAGE` with an RFC 3339 UTC timestamp.
fn is_log_line(line: &str) -> Option<&str> {
    let mut it = line.split_whitespace();
    let ts = it.next()?;
    let level = it.next()?;
    let ok_ts = ts.len() >= 20
        && ts.ends_with('Z')
        && ts.as_bytes()[4] == b'-'
        && ts.as_bytes()[10] == b'T'
        && ts[..4].parse::<u32>().is_ok();
    let ok_level = ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level);
    (ok_ts && ok_level).then_some(level)
}

/// Wait (≤ `limit`) until the switch's log has a line containing all of `needles`.
fn wait_log(sw: &SwitchProc, needles: &[&str], limit: Duration) -> Option<String> {
    let deadline = Instant::now() + limit;
    loop {
        let log = sw.log_text();
        if let Some(l) = log.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return Some(l.to_string());
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn log_level_debug_gives_timestamped_levelled_lines_and_port_loss() {
    if !require_root("log_level_debug_gives_timestamped_levelled_lines_and_port_loss") {
        return;
    }
    let n = nat_topo("", "");
    let sw = SwitchProc::start_with(&n.topo, &["--log-level", "debug"]);
    let _ = sw.cli_json("stats");
    let dbg = wait_log(
        &sw,
        &["DEBUG", "control request: stats"],
        Duration::from_secs(5),
    )
    .unwrap_or_else(|| panic!("no debug line: {}", sw.log_text()));
    assert_eq!(is_log_line(&dbg), Some("DEBUG"), "{dbg}");
    let start = wait_log(&sw, &["forwarding between"], Duration::from_secs(1))
        .unwrap_or_else(|| panic!("no start-up line: {}", sw.log_text()));
    assert_eq!(is_log_line(&start), Some("INFO"), "{start}");
    // Every line the switch printed is a log line.
    for l in sw.log_text().lines() {
        assert!(is_log_line(l).is_some(), "not a log line: {l}");
    }
    // A port that goes away gets a warning line.
    let o = ns_exec(
        &n.blue.ns,
        &["ip", "link", "del", &n.blue.ifname],
        Duration::from_secs(10),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let deadline = Instant::now() + Duration::from_secs(10);
    let gone = loop {
        let _ = ping_loss(&n.red.ns, &n.blue.ip, 1);
        if let Some(l) = wait_log(
            &sw,
            &["WARN", &format!("port {} ", n.blue.port), "gone"],
            Duration::from_millis(200),
        ) {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "no line for the lost port: {}",
            sw.log_text()
        );
    };
    assert_eq!(is_log_line(&gone), Some("WARN"), "{gone}");
}

#[test]
fn bad_log_level_is_a_usage_error() {
    // Refused before anything else (no root needed, nothing created).
    let o = run_timeout(
        Command::new(bin("vswitch")).args(["run", "--log-level", "loud"]),
        Duration::from_secs(10),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--log-level") && err.contains("loud"), "{err}");
}

/// Records of a pcap file (Ethernet frames).
fn pcap_frames(b: &[u8]) -> Vec<Vec<u8>> {
    assert!(b.len() >= 24, "no pcap header ({} bytes)", b.len());
    assert_eq!(b[..4], 0xa1b2_c3d4u32.to_le_bytes(), "pcap magic");
    let mut out = Vec::new();
    let mut i = 24;
    while i + 16 <= b.len() {
        let len = u32::from_le_bytes(b[i + 8..i + 12].try_into().unwrap()) as usize;
        assert!(i + 16 + len <= b.len(), "truncated pcap record");
        out.push(b[i + 16..i + 16 + len].to_vec());
        i += 16 + len;
    }
    assert_eq!(i, b.len(), "trailing bytes in the pcap");
    out
}

/// An ICMP echo frame: (src MAC, dst MAC, src IP, dst IP, ICMP type).
type Echo = ([u8; 6], [u8; 6], String, String, u8);

fn echo(f: &[u8]) -> Option<Echo> {
    if f.len() < 42 || f[12..14] != [8, 0] || f[23] != 1 {
        return None;
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let ty = *f.get(14 + ihl)?;
    if ty != 0 && ty != 8 {
        return None;
    }
    let ip = |o: usize| format!("{}.{}.{}.{}", f[o], f[o + 1], f[o + 2], f[o + 3]);
    Some((
        f[6..12].try_into().unwrap(),
        f[0..6].try_into().unwrap(),
        ip(26),
        ip(30),
        ty,
    ))
}

/// IPv4 source and destination of every IPv4 frame.
fn ipv4_addrs(frames: &[Vec<u8>]) -> Vec<(String, String)> {
    frames
        .iter()
        .filter(|f| f.len() >= 34 && f[12..14] == [8, 0])
        .map(|f| {
            let ip = |o: usize| format!("{}.{}.{}.{}", f[o], f[o + 1], f[o + 2], f[o + 3]);
            (ip(26), ip(30))
        })
        .collect()
}

/// Check that `frames` hold at least 4 echo requests `a -> b` from MAC `amac`
/// and 4 replies `b -> a` to it, and that no IPv4 frame carries `never`.
fn assert_echoes(what: &str, frames: &[Vec<u8>], amac: [u8; 6], a: &str, b: &str, never: &str) {
    let echoes: Vec<Echo> = frames.iter().filter_map(|f| echo(f)).collect();
    let req = echoes
        .iter()
        .filter(|e| e.4 == 8 && e.0 == amac && e.2 == a && e.3 == b)
        .count();
    let rep = echoes
        .iter()
        .filter(|e| e.4 == 0 && e.1 == amac && e.2 == b && e.3 == a)
        .count();
    assert!(
        req >= 4 && rep >= 4,
        "{what}: {req} requests {a} -> {b}, {rep} replies; echoes seen: {echoes:?}"
    );
    for (s, d) in ipv4_addrs(frames) {
        assert!(
            s != never && d != never,
            "{what}: a frame {s} -> {d} carries {never}"
        );
    }
}

/// Run `vswitch capture PORT -w OUT -d SECS` in the background; join for (status ok, pcap, stderr).
fn capture_bg(
    sw: &SwitchProc,
    port: &str,
    secs: &str,
) -> std::thread::JoinHandle<(bool, Vec<u8>, String)> {
    let mut c = Command::new(bin("vswitch"));
    c.args(["capture", port, "-w", "-", "-d", secs, "--socket"])
        .arg(&sw.socket);
    std::thread::spawn(move || {
        let o = run_timeout(&mut c, Duration::from_secs(30));
        (
            o.status.success(),
            o.stdout,
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    })
}

#[test]
fn captures_and_mirrors_show_the_frames_on_the_wire() {
    if !require_root("captures_and_mirrors_show_the_frames_on_the_wire") {
        return;
    }
    let n = nat_topo("", "");
    let pcap = std::env::temp_dir().join(format!("vswitch-e2e-obs-{}.pcap", uniq()));
    let base = std::fs::read_to_string(&n.topo.path).unwrap();
    std::fs::write(
        &n.topo.path,
        format!(
            "{base}[[mirror]]\nfrom = \"{red}\"\nto = \"{blue}\"\n[[mirror]]\nfrom = \"{red}\"\npcap = \"{}\"\n",
            pcap.display(),
            red = n.red.ns,
            blue = n.blue.ns
        ),
    )
    .unwrap();
    let sw = SwitchProc::start_with(&n.topo, &["-v"]);
    // -v gives debug lines, timestamped.
    let _ = sw.cli_json("stats");
    let dbg = wait_log(&sw, &["DEBUG"], Duration::from_secs(5))
        .unwrap_or_else(|| panic!("-v gave no debug line: {}", sw.log_text()));
    assert_eq!(is_log_line(&dbg), Some("DEBUG"), "{dbg}");
    assert_eq!(ping_loss(&n.red.ns, WAN_HOST, 1), 0.0, "warm-up");

    let up = capture_bg(&sw, &n.wan.port, "3");
    let red = capture_bg(&sw, &n.red.port, "3");
    let mut spy = packet_socket(&n.blue.ns, &n.blue.ifname);
    std::thread::sleep(Duration::from_millis(500));
    let r = n.red.ns.clone();
    let pinger = std::thread::spawn(move || ping_loss(&r, WAN_HOST, 6));
    let spied = recv_frames(&mut spy, Duration::from_millis(2000));
    assert_eq!(pinger.join().unwrap(), 0.0);
    let (ok_up, up_pcap, up_err) = up.join().unwrap();
    let (ok_red, red_pcap, red_err) = red.join().unwrap();
    assert!(ok_up && ok_red, "{up_err} {red_err}");
    for e in [&up_err, &red_err] {
        assert!(
            e.contains("packets captured") && e.contains("0 packets dropped by the switch"),
            "{e}"
        );
    }

    let red_mac = mac_bytes_of(&n.red.ns, &n.red.ifname);
    let up_mac = mac_bytes_of(&n.sw_ns, &n.wan.port);
    let wan_mac = mac_bytes_of(&n.wan.ns, &n.wan.ifname);
    // The uplink: the translated frames, from the uplink's address and MAC.
    let up_frames = pcap_frames(&up_pcap);
    assert_echoes(
        "uplink capture",
        &up_frames,
        up_mac,
        EXT,
        WAN_HOST,
        &n.red.ip,
    );
    assert!(
        up_frames
            .iter()
            .filter_map(|f| echo(f))
            .filter(|e| e.4 == 8)
            .all(|e| e.1 == wan_mac),
        "outbound echo requests are addressed to wan's MAC"
    );
    // red: its own addresses both ways, never the uplink's.
    let red_frames = pcap_frames(&red_pcap);
    assert_echoes(
        "capture of red",
        &red_frames,
        red_mac,
        &n.red.ip,
        WAN_HOST,
        EXT,
    );
    // The mirrors: the same as the capture of red.
    assert_echoes("mirror to blue", &spied, red_mac, &n.red.ip, WAN_HOST, EXT);
    drop(sw); // stops the switch: the pcap writer flushes and closes
    let mirrored = std::fs::read(&pcap).unwrap_or_default();
    let _ = std::fs::remove_file(&pcap);
    assert_echoes(
        "pcap mirror",
        &pcap_frames(&mirrored),
        red_mac,
        &n.red.ip,
        WAN_HOST,
        EXT,
    );
}

#[test]
fn a_slow_capture_reader_is_told_its_losses() {
    if !require_root("a_slow_capture_reader_is_told_its_losses") {
        return;
    }
    use std::io::Read;
    use std::process::Stdio;
    let n = nat_topo("", "");
    let sw = SwitchProc::start(&n.topo);
    assert_eq!(ping_loss(&n.red.ns, &n.blue.ip, 1), 0.0);
    let mut child = Command::new(bin("vswitch"))
        .args(["capture", &n.red.port, "-w", "-", "-d", "4", "--socket"])
        .arg(&sw.socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    // A reader that reads nothing for 2.5 s, then everything.
    let reader = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(2500));
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let errs = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    std::thread::sleep(Duration::from_millis(300));
    // A flood of large echoes: far more copies than the capture's queue holds.
    let _ = ns_exec(
        &n.red.ns,
        &[
            "ping", "-f", "-q", "-c", "8000", "-s", "1200", "-w", "2", &n.blue.ip,
        ],
        Duration::from_secs(10),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vswitch capture did not end");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let pcap = reader.join().unwrap();
    let err = errs.join().unwrap();
    assert!(status.success(), "{err}");
    let num = |suffix: &str| -> u64 {
        err.lines()
            .find_map(|l| l.strip_suffix(suffix).and_then(|n| n.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no '{suffix}' line: {err}"))
    };
    let dropped = num(" packets dropped by the switch");
    let captured = num(" packets captured");
    assert!(dropped > 0, "the slow reader lost nothing: {err}");
    assert_eq!(pcap_frames(&pcap).len() as u64, captured, "{err}");
    // The same count in the port's stats, and a line in the switch's log.
    let st = sw.cli_json("stats");
    let port = st["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == n.red.port.as_str())
        .unwrap()
        .clone();
    assert_eq!(port["capture_dropped"].as_u64(), Some(dropped), "{port}");
    assert!(
        wait_log(
            &sw,
            &["WARN", "capture of", &format!("{dropped} dropped")],
            Duration::from_secs(2)
        )
        .is_some(),
        "{}",
        sw.log_text()
    );
}

/// `vswitch stats ARGS --socket S` (bounded), asserting success; its stdout.
fn stats_cli(sw: &SwitchProc, args: &[&str], limit: u64) -> String {
    let o = run_timeout(
        Command::new(bin("vswitch"))
            .arg("stats")
            .args(args)
            .arg("--socket")
            .arg(&sw.socket),
        Duration::from_secs(limit),
    );
    assert!(
        o.status.success(),
        "vswitch stats {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn port_rate(r: &serde_json::Value, port: &str, k: &str) -> f64 {
    r["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == port)
        .unwrap_or_else(|| panic!("no port {port} in {r}"))[k]
        .as_f64()
        .unwrap()
}

#[test]
fn stats_interval_prints_rates_that_follow_traffic() {
    if !require_root("stats_interval_prints_rates_that_follow_traffic") {
        return;
    }
    let n = nat_topo("", "");
    // RUST_LOG chooses the level when neither --log-level nor -v is given.
    let socket = std::env::temp_dir().join(format!("vswitch-e2e-{}.sock", n.topo.topo.name));
    let mut cmd = Command::new(bin("vswitch"));
    cmd.arg("run")
        .arg(&n.topo.path)
        .arg("--socket")
        .arg(&socket)
        .env("RUST_LOG", "warn,switch::control=debug");
    let sw = SwitchProc::spawn(&n.topo, cmd, socket);
    assert_eq!(ping_loss(&n.red.ns, &n.blue.ip, 1), 0.0);
    assert!(
        wait_log(
            &sw,
            &["DEBUG", "control request: stats"],
            Duration::from_secs(3)
        )
        .is_some(),
        "{}",
        sw.log_text()
    );
    assert!(
        !sw.log_text().contains(" INFO "),
        "RUST_LOG=warn,...: no info lines: {}",
        sw.log_text()
    );
    // Quiet: two one-second reports, as JSON lines.
    let quiet = stats_cli(&sw, &["--interval", "1", "--count", "2", "--json"], 15);
    let lines: Vec<serde_json::Value> = quiet
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{quiet}");
    for r in &lines {
        assert!(port_rate(r, &n.red.port, "rx_pps") < 20.0, "{r}");
        assert!(
            (0.9..1.5).contains(&r["interval_s"].as_f64().unwrap()),
            "{r}"
        );
    }
    // Loaded: a flood of 1000-byte echoes from red to blue, and new NAT flows.
    let red = n.red.ns.clone();
    let blue = n.blue.ip.clone();
    let flood = std::thread::spawn(move || {
        ns_exec(
            &red,
            &["ping", "-f", "-q", "-s", "1000", "-w", "3", &blue],
            Duration::from_secs(10),
        )
    });
    let wan = WAN_HOST.to_string();
    let red = n.red.ns.clone();
    let flows = std::thread::spawn(move || {
        // UDP datagrams from 100 source ports: 100 new NAT flows in about 2 s.
        in_ns(&red, move || {
            for i in 0..100u16 {
                if let Ok(s) = std::net::UdpSocket::bind(("0.0.0.0", 40000 + i)) {
                    let _ = s.send_to(b"x", (wan.as_str(), 9));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    });
    std::thread::sleep(Duration::from_millis(500));
    let busy = stats_cli(&sw, &["--interval", "1", "-c", "1", "--json"], 15);
    let text = stats_cli(&sw, &["-i", "1", "-c", "1"], 15);
    flood.join().unwrap();
    flows.join().unwrap();
    let r: serde_json::Value = serde_json::from_str(busy.trim()).unwrap();
    let rx = port_rate(&r, &n.red.port, "rx_pps");
    let bps = port_rate(&r, &n.red.port, "rx_bps");
    assert!(rx > 300.0, "red's receive rate under a flood: {r}");
    assert!(bps > rx * 8.0 * 1000.0, "1000-byte payloads: {r}");
    assert!(port_rate(&r, &n.blue.port, "tx_pps") > 300.0, "{r}");
    assert!(
        r["nat_new_flows_ps"].as_f64().unwrap() >= 10.0,
        "about 50 new flows/s: {r}"
    );
    assert!(
        text.contains("RX-PKT/S") && text.contains(&n.red.port) && text.contains("new flows/s"),
        "{text}"
    );
}

/// Prometheus text from `--metrics` in the switch's namespace.
fn scrape(sw_ns: &str, addr: &str) -> String {
    let addr = addr.to_string();
    in_ns(sw_ns, move || {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(&addr).expect("metrics endpoint");
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        s.split_once("\r\n\r\n").expect("HTTP body").1.to_string()
    })
}

/// The value of exposition line `key` (metric name with labels).
fn prom(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in\n{text}"))
}

/// Every counter of the text `stats`, `--json` and Prometheus, compared;
/// `Err` names the first disagreement.
fn agree(json: &serde_json::Value, text: &str, metrics: &str) -> Result<(), String> {
    let check = |what: String, a: u64, b: u64| {
        if a == b {
            Ok(())
        } else {
            Err(format!("{what}: {a} vs {b}"))
        }
    };
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    for p in json["ports"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let netns = p["netns"].as_str().unwrap();
        let row = rows
            .iter()
            .find(|r| r.len() == 10 && r[0] == name)
            .ok_or(format!("no row for {name}"))?;
        for (i, k) in [
            (4, "rx_packets"),
            (5, "rx_bytes"),
            (6, "tx_packets"),
            (7, "tx_bytes"),
            (8, "flooded"),
        ] {
            let j = p[k].as_u64().unwrap();
            check(format!("{name} {k} text"), j, row[i].parse().unwrap())?;
            let key = format!("vswitch_port_{k}_total{{port=\"{name}\",netns=\"{netns}\"}}");
            check(format!("{name} {k} prometheus"), j, prom(metrics, &key))?;
        }
        let key =
            format!("vswitch_port_capture_dropped_total{{port=\"{name}\",netns=\"{netns}\"}}");
        check(
            format!("{name} capture_dropped"),
            p["capture_dropped"].as_u64().unwrap(),
            prom(metrics, &key),
        )?;
        let mut total = 0;
        for (reason, c) in p["drops"].as_object().unwrap() {
            let c = c.as_u64().unwrap();
            total += c;
            let key = format!("vswitch_port_drops_total{{port=\"{name}\",reason=\"{reason}\"}}");
            check(
                format!("{name} drop {reason} prometheus"),
                c,
                prom(metrics, &key),
            )?;
            let line = format!("{name}: {reason} {c}");
            if c > 0 && !text.contains(&line) {
                return Err(format!("text lacks {line:?}"));
            }
        }
        check(format!("{name} drops text"), total, row[9].parse().unwrap())?;
    }
    let g = &json["gateway"]["counters"];
    for (k, c) in g.as_object().unwrap() {
        let c = c.as_u64().unwrap();
        let key = format!("vswitch_gateway_events_total{{event=\"{k}\"}}");
        check(format!("gateway {k} prometheus"), c, prom(metrics, &key))?;
        if let Some(d) = k.strip_prefix("drop_")
            && c > 0
            && !text.contains(&format!("{d}={c}"))
        {
            return Err(format!("text lacks gateway drop {d}={c}"));
        }
    }
    for (k, label) in [
        ("routed", "routed"),
        ("echo_replies", "echo replies"),
        ("ignored_multicast", "ignored multicast"),
    ] {
        let c = g[k].as_u64().unwrap();
        if !text.contains(&format!("{label} {c}")) {
            return Err(format!("text lacks gateway {label} {c}"));
        }
    }
    let nat = &json["nat"];
    for k in ["created", "expired", "translated"] {
        let key = format!("vswitch_nat_events_total{{event=\"{k}\"}}");
        check(
            format!("nat {k}"),
            nat[k].as_u64().unwrap(),
            prom(metrics, &key),
        )?;
        if !text.contains(&format!("{k} {}", nat[k])) {
            return Err(format!("text lacks nat {k} {}", nat[k]));
        }
    }
    check(
        "conntrack entries".into(),
        nat["entries"].as_u64().unwrap(),
        prom(metrics, "vswitch_conntrack_entries"),
    )?;
    check(
        "fdb entries".into(),
        json["fdb"]["entries"].as_u64().unwrap(),
        prom(metrics, "vswitch_fdb_entries"),
    )?;
    Ok(())
}

#[test]
fn counters_agree_and_ipv6_noise_is_not_a_drop() {
    if !require_root("counters_agree_and_ipv6_noise_is_not_a_drop") {
        return;
    }
    let n = nat_topo("", "");
    let addr = "127.0.0.1:9100";
    let sw = SwitchProc::start_with(&n.topo, &["--metrics", addr]);
    // Traffic: switched, routed through the NAT, and IPv6 multicast noise
    // from the external network and the LAN (echoes to all nodes, ff02::1).
    assert_eq!(ping_loss(&n.red.ns, &n.blue.ip, 3), 0.0);
    assert_eq!(ping_loss(&n.blue.ns, WAN_HOST, 3), 0.0);
    let up_rx = |v: &serde_json::Value| {
        v["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == n.wan.port.as_str())
            .unwrap()["rx_packets"]
            .as_u64()
            .unwrap()
    };
    let before = up_rx(&sw.cli_json("stats"));
    for (ns, ifname) in [(&n.wan.ns, &n.wan.ifname), (&n.red.ns, &n.red.ifname)] {
        let _ = ns_exec(
            ns,
            &[
                "ping",
                "-6",
                "-c",
                "3",
                "-i",
                "0.2",
                "-W",
                "1",
                &format!("ff02::1%{ifname}"),
            ],
            Duration::from_secs(10),
        );
    }
    let v = sw.cli_json("stats");
    assert!(
        up_rx(&v) >= before + 3,
        "the IPv6 multicast echoes did not reach the uplink port: {v}"
    );
    // A healthy run: no drops anywhere, the noise counted as ignored.
    for p in v["ports"].as_array().unwrap() {
        let total: u64 = p["drops"]
            .as_object()
            .unwrap()
            .values()
            .map(|c| c.as_u64().unwrap())
            .sum();
        assert_eq!(total, 0, "drops on {}: {}", p["name"], p["drops"]);
    }
    let g = &v["gateway"]["counters"];
    assert!(g["ignored_multicast"].as_u64().unwrap() >= 3, "{g}");
    for (k, c) in g.as_object().unwrap() {
        if k.starts_with("drop_") {
            assert_eq!(c.as_u64(), Some(0), "gateway {k}: {g}");
        }
    }
    // `trace` says the same of such a frame.
    let o = run_timeout(
        Command::new(bin("vswitch"))
            .args([
                "trace",
                "--in-port",
                &n.wan.port,
                "--dst-mac",
                "33:33:00:00:00:01",
            ])
            .args([
                "--src", "fe80::1", "--dst", "ff02::1", "--proto", "udp", "--json", "--socket",
            ])
            .arg(&sw.socket),
        Duration::from_secs(10),
    );
    let t: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("trace: {e}: {}", String::from_utf8_lossy(&o.stderr)));
    assert_eq!(t["verdict"]["action"], "ignore", "{t}");
    // A frame to another MAC on the uplink is a drop, counted on the port
    // and by the gateway alike.
    let mut tap = packet_socket(&n.wan.ns, &n.wan.ifname);
    let wan_mac = mac_bytes_of(&n.wan.ns, &n.wan.ifname);
    let mut f = vec![0x02, 0, 0, 0, 0, 0x77];
    f.extend_from_slice(&wan_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&[
        0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 203, 0, 113, 10, 203, 0, 113, 1,
    ]);
    f.resize(60, 0);
    assert_eq!(send_frames(&mut tap, &[f]), 1);
    std::thread::sleep(Duration::from_millis(200));
    // Text, JSON and Prometheus agree (read until a quiet moment: two equal JSON reads).
    let mut last = String::new();
    for _ in 0..10 {
        let j1 = sw.cli_json("stats");
        let text = sw.cli_text("stats");
        let metrics = scrape(&n.sw_ns, addr);
        let j2 = sw.cli_json("stats");
        // The uptime and the worker's own wait counters move with every
        // request (each one wakes the worker).
        let strip = |mut j: serde_json::Value| {
            j["uptime_ms"] = 0.into();
            j["worker"] = serde_json::Value::Null;
            j
        };
        let (j1, j2) = (strip(j1), strip(j2));
        if j1 != j2 {
            last = "counters moved during the reads".into();
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        let up = j1["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == n.wan.port.as_str())
            .unwrap()
            .clone();
        assert_eq!(up["drops"]["gw-not-for-us"], 1, "{up}");
        assert_eq!(
            j1["gateway"]["counters"]["drop_not_for_us"], 1,
            "{}",
            j1["gateway"]
        );
        match agree(&j1, &text, &metrics) {
            Ok(()) => return,
            Err(e) => panic!("text, JSON and Prometheus disagree: {e}\n{text}\n{j1}\n{metrics}"),
        }
    }
    panic!("no quiet moment to compare the counters: {last}");
}

#[test]
fn station_moves_and_a_full_mac_table_get_summary_lines() {
    if !require_root("station_moves_and_a_full_mac_table_get_summary_lines") {
        return;
    }
    let n = nat_topo("", "max_entries = 16");
    let sw = SwitchProc::start(&n.topo);
    assert_eq!(ping_loss(&n.red.ns, &n.blue.ip, 1), 0.0);
    // 40 UDP flows through a NAT of 16 entries: refusals or evictions.
    let wan = WAN_HOST.to_string();
    in_ns(&n.red.ns, move || {
        for i in 0..40u16 {
            if let Ok(s) = std::net::UdpSocket::bind(("0.0.0.0", 41000 + i)) {
                let _ = s.send_to(b"x", (wan.as_str(), 9));
            }
        }
    });
    let nat = wait_log(&sw, &["WARN", "NAT under pressure"], Duration::from_secs(3))
        .unwrap_or_else(|| panic!("no line for the full NAT: {}", sw.log_text()));
    assert!(nat.contains("/16 entries"), "{nat}");
    let red_mac = mac_bytes_of(&n.red.ns, &n.red.ifname);
    let frame = |src: [u8; 6]| {
        let mut f = vec![0x02, 0, 0, 0, 0x0e, 0x0e];
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x88, 0xb5]);
        f.resize(60, 0);
        f
    };
    // red's MAC seen on blue's port (a move), then 1,100 new sources there:
    // more than the 1,024 a port may hold.
    let mut frames = vec![frame(red_mac); 20];
    frames.extend((0..1100u32).map(|i| {
        let b = i.to_be_bytes();
        frame([0x02, 0x77, b[0], b[1], b[2], b[3]])
    }));
    let mut tap = packet_socket(&n.blue.ns, &n.blue.ifname);
    assert_eq!(send_frames(&mut tap, &frames), frames.len());
    let moved = wait_log(&sw, &["INFO", "station move"], Duration::from_secs(3))
        .unwrap_or_else(|| panic!("no line for the move: {}", sw.log_text()));
    let red_mac_s = mac_of(&n.red.ns, &n.red.ifname);
    assert!(
        moved.contains(&red_mac_s) && moved.contains(&n.blue.port),
        "{moved}"
    );
    let full = wait_log(&sw, &["WARN", "MAC table refusing"], Duration::from_secs(3))
        .unwrap_or_else(|| panic!("no line for the full table: {}", sw.log_text()));
    assert!(full.contains("port at its bound"), "{full}");
    // One line per interval, not one per frame: more refusals now add no line.
    send_frames(&mut tap, &frames[20..]);
    std::thread::sleep(Duration::from_millis(1500));
    let lines = sw
        .log_text()
        .lines()
        .filter(|l| l.contains("MAC table refusing"))
        .count();
    assert_eq!(lines, 1, "{}", sw.log_text());
}

#[test]
fn ctrl_c_ends_a_capture_with_its_totals() {
    if !require_root("ctrl_c_ends_a_capture_with_its_totals") {
        return;
    }
    use std::process::Stdio;
    let n = nat_topo("", "");
    let sw = SwitchProc::start(&n.topo);
    let out = std::env::temp_dir().join(format!("vswitch-e2e-obs-cc-{}.pcap", uniq()));
    let mut child = Command::new(bin("vswitch"))
        .args(["capture", &n.red.port, "-w"])
        .arg(&out)
        .arg("--socket")
        .arg(&sw.socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ping_loss(&n.red.ns, &n.blue.ip, 3), 0.0);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&out);
            panic!("vswitch capture ignored Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    let pcap = std::fs::read(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    assert!(status.success(), "{err}");
    let frames = pcap_frames(&pcap);
    assert!(frames.len() >= 6, "{} frames: {err}", frames.len());
    assert!(
        err.contains(&format!("{} packets captured", frames.len()))
            && err.contains("0 packets dropped by the switch"),
        "{err}"
    );
}

#[test]
fn a_lagging_pcap_mirror_logs_its_losses() {
    if !require_root("a_lagging_pcap_mirror_logs_its_losses") {
        return;
    }
    let n = nat_topo("", "");
    // The mirror writes into a FIFO that this test reads only after a flood.
    let fifo = std::env::temp_dir().join(format!("vswitch-e2e-obs-fifo-{}", uniq()));
    let o = run_timeout(Command::new("mkfifo").arg(&fifo), Duration::from_secs(5));
    assert!(o.status.success());
    let base = std::fs::read_to_string(&n.topo.path).unwrap();
    std::fs::write(
        &n.topo.path,
        format!(
            "{base}[[mirror]]\nfrom = \"{}\"\npcap = \"{}\"\n",
            n.red.ns,
            fifo.display()
        ),
    )
    .unwrap();
    let f2 = fifo.clone();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut f = std::fs::File::open(&f2).unwrap(); // meets the switch's open
        let _ = go_rx.recv_timeout(Duration::from_secs(30));
        let mut v = Vec::new();
        let _ = f.read_to_end(&mut v);
        v
    });
    let mut sw = SwitchProc::start(&n.topo);
    let _ = ns_exec(
        &n.red.ns,
        &[
            "ping", "-f", "-q", "-c", "8000", "-s", "1200", "-w", "2", &n.blue.ip,
        ],
        Duration::from_secs(10),
    );
    let line = wait_log(
        &sw,
        &["WARN", "pcap mirror of", "frames dropped"],
        Duration::from_secs(3),
    );
    let st = sw.cli_json("stats");
    go_tx.send(()).unwrap();
    assert!(sw.stop());
    let _ = reader.join();
    let _ = std::fs::remove_file(&fifo);
    let line = line.unwrap_or_else(|| panic!("no line for the mirror's losses: {}", sw.log_text()));
    assert!(line.contains(&n.red.port), "{line}");
    let red = st["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == n.red.port.as_str())
        .unwrap()
        .clone();
    assert!(red["capture_dropped"].as_u64().unwrap() > 0, "{red}");
}

#[test]
fn the_demo_reports_no_drops() {
    if !require_root("the_demo_reports_no_drops") {
        return;
    }
    let o = run_timeout(
        Command::new(bin("vswitch")).arg("demo"),
        Duration::from_secs(120),
    );
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    if err.contains("already served") {
        eprintln!("SKIPPED the_demo_reports_no_drops: a seed switch runs on this machine");
        return;
    }
    assert!(o.status.success(), "{out}\n{err}");
    let header = out
        .lines()
        .position(|l| l.starts_with("PORT") && l.ends_with("DROPS"))
        .unwrap_or_else(|| panic!("no stats table: {out}"));
    let rows: Vec<&str> = out.lines().skip(header + 1).take(3).collect();
    for r in &rows {
        assert_eq!(
            r.split_whitespace().last(),
            Some("0"),
            "drops in {r:?}:\n{out}"
        );
    }
    assert!(
        !out.contains("drops by reason") && !out.contains("gateway drops"),
        "{out}"
    );
    assert!(out.contains("ignored multicast"), "{out}");
}
