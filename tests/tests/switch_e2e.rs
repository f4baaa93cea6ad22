//! End to end: `vswitch run` joining real namespaces, checked with ping, TCP
//! sockets opened inside the namespaces, and the switch's own views.

use e2e::*;
use serde_json::Value;
use std::time::Duration;

fn ip_forward() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        .expect("read ip_forward")
        .trim()
        .to_string()
}

fn fdb_port_of(fdb: &Value, mac: &str) -> Option<String> {
    fdb["entries"]
        .as_array()?
        .iter()
        .find(|e| e["mac"] == mac)
        .map(|e| e["port"].as_str().unwrap_or("").to_string())
}

fn port_stats<'a>(stats: &'a Value, port: &str) -> &'a Value {
    stats["ports"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == port))
        .unwrap_or_else(|| panic!("no port {port} in {stats}"))
}

/// The seed (red 192.168.15.1, blue 192.168.15.2) through `vswitch run`.
fn seed_through_switch(test: &str, kinds: [Kind; 2]) {
    if !require_root(test) {
        return;
    }
    let id = uniq();
    let (toml, m, sw_ns) = star(&id, &kinds, "");
    let topo = TopoGuard::new(&toml);
    let fwd_before = ip_forward();
    let mut sw = SwitchProc::start(&topo);
    let (red, blue) = (&m[0], &m[1]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sw.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "control socket mode {mode:o}");

    assert_eq!(ping_loss(&red.ns, &blue.ip, 5), 0.0, "red -> blue");
    assert_eq!(ping_loss(&blue.ns, &red.ip, 5), 0.0, "blue -> red");

    // No kernel bridge anywhere, no enslaved port, and no IP forwarding.
    for ns in [&red.ns, &blue.ns, &sw_ns] {
        for l in links_in(ns) {
            assert_ne!(l.kind, "bridge", "bridge {} in {ns}", l.name);
            assert!(l.master.is_none(), "{} in {ns} is enslaved", l.name);
        }
        let f = in_ns(ns, || {
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap()
        });
        assert_eq!(f.trim(), "0", "ip_forward in {ns}");
    }
    assert_eq!(ip_forward(), fwd_before, "root ip_forward changed");

    // red's neighbour table holds blue's real MAC.
    let red_mac = mac_of(&red.ns, &red.ifname);
    let blue_mac = mac_of(&blue.ns, &blue.ifname);
    let neigh = ns_exec(
        &red.ns,
        &["ip", "neigh", "show", &blue.ip],
        Duration::from_secs(10),
    );
    let neigh = String::from_utf8_lossy(&neigh.stdout);
    assert!(
        neigh.contains(&blue_mac),
        "red's neighbour entry for blue is {neigh:?}, blue's MAC is {blue_mac}"
    );

    // ARP suppression: with red's cache flushed, the switch answers red's
    // request for blue itself, with blue's real MAC.
    let o = ns_exec(
        &red.ns,
        &["ip", "neigh", "flush", "all"],
        Duration::from_secs(10),
    );
    assert!(o.status.success());
    assert_eq!(
        ping_loss(&red.ns, &blue.ip, 2),
        0.0,
        "red -> blue after flushing red's neighbours"
    );
    let arp = sw.cli_json("arp");
    assert!(
        arp["counters"]["suppressed"].as_u64().unwrap() >= 1,
        "no ARP request was answered by the switch: {arp}"
    );
    let neigh = ns_exec(
        &red.ns,
        &["ip", "neigh", "show", &blue.ip],
        Duration::from_secs(10),
    );
    assert!(String::from_utf8_lossy(&neigh.stdout).contains(&blue_mac));

    // The FDB has both MACs on the right ports, in JSON and in the table.
    let fdb = sw.cli_json("fdb");
    assert_eq!(
        fdb_port_of(&fdb, &red_mac).as_deref(),
        Some(red.port.as_str()),
        "{fdb}"
    );
    assert_eq!(
        fdb_port_of(&fdb, &blue_mac).as_deref(),
        Some(blue.port.as_str()),
        "{fdb}"
    );
    let text = sw.cli_text("fdb");
    assert!(
        text.lines()
            .any(|l| l.contains(&red_mac) && l.contains(&red.port)),
        "{text}"
    );
    let arp = sw.cli_json("arp");
    assert!(
        arp["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["ip"] == blue.ip.as_str() && e["mac"] == blue_mac.as_str()),
        "{arp}"
    );

    // Stats count the frames: 10 echo requests + 10 replies at least, both ways.
    let st = sw.cli_json("stats");
    for p in [&red.port, &blue.port] {
        let s = port_stats(&st, p);
        assert!(s["rx_packets"].as_u64().unwrap() >= 10, "{p}: {s}");
        assert!(s["tx_packets"].as_u64().unwrap() >= 10, "{p}: {s}");
        assert!(s["rx_bytes"].as_u64().unwrap() >= 10 * 98, "{p}: {s}");
    }
    assert!(sw.cli_text("stats").contains(&red.port));

    // SIGTERM: the switch stops cleanly and removes what it created.
    assert!(sw.stop(), "vswitch did not exit cleanly: {}", sw.log_text());
    let left = ip_netns_list();
    for ns in [&red.ns, &blue.ns, &sw_ns] {
        assert!(!left.contains(ns), "{ns} left behind");
    }
}

#[test]
fn seed_veth() {
    seed_through_switch("seed_veth", [Kind::Veth, Kind::Veth]);
}

#[test]
fn seed_tap() {
    seed_through_switch("seed_tap", [Kind::Tap, Kind::Tap]);
}

#[test]
fn seed_mixed_veth_and_tap() {
    seed_through_switch("seed_mixed_veth_and_tap", [Kind::Veth, Kind::Tap]);
}

#[test]
fn sixteen_namespaces_on_one_switch() {
    if !require_root("sixteen_namespaces_on_one_switch") {
        return;
    }
    let id = uniq();
    let kinds: Vec<Kind> = (0..16)
        .map(|i| if i % 4 == 3 { Kind::Tap } else { Kind::Veth })
        .collect();
    let (toml, m, _) = star(&id, &kinds, "");
    let topo = TopoGuard::new(&toml);
    let sw = SwitchProc::start(&topo);
    for (a, b) in [(0, 15), (15, 0), (3, 7), (8, 12), (1, 2), (11, 4), (13, 6)] {
        assert_eq!(
            ping_loss(&m[a].ns, &m[b].ip, 3),
            0.0,
            "{} -> {}",
            m[a].ns,
            m[b].ns
        );
    }
    // 100 MB over TCP between a veth namespace and a TAP namespace.
    tcp_transfer(&m[5], &m[11], 5001, 100 * 1000 * 1000);
    let st = sw.cli_json("stats");
    assert_eq!(st["ports"].as_array().unwrap().len(), 16);
    assert!(port_stats(&st, &m[5].port)["rx_bytes"].as_u64().unwrap() >= 100_000_000);
}

/// Raw frames written into a port from a hostile namespace.
fn hostile_frames() -> Vec<Vec<u8>> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut frames = Vec::new();
    // Malformed: runts, a truncated ARP, zero and multicast sources.
    frames.push(vec![0xff; 5]);
    frames.push(vec![0xff; 13]);
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 0x99, 0x08, 0x06, 0, 1, 8, 0, 6, 4]);
    frames.push(arp);
    let mut zero_src = vec![0xff; 6];
    zero_src.extend_from_slice(&[0; 6]);
    zero_src.extend_from_slice(&[0x08, 0x00]);
    zero_src.resize(60, 0);
    frames.push(zero_src.clone());
    let mut mc_src = zero_src.clone();
    mc_src[6] = 0x01;
    frames.push(mc_src);
    // Random bytes of random lengths.
    for _ in 0..2000 {
        let len = 14 + (rnd() % 1500) as usize;
        frames.push((0..len).map(|_| rnd() as u8).collect());
    }
    // A flood of random unicast source MACs.
    for _ in 0..20_000 {
        let r = rnd().to_le_bytes();
        let mut f = vec![0x02, 0, 0, 0, 0, 0x01]; // to a MAC nobody has: flooded
        f.extend_from_slice(&[r[0] & 0xfe, r[1], r[2], r[3], r[4], r[5]]);
        f.extend_from_slice(&[0x88, 0xb5]); // local experimental ethertype
        f.resize(64, 0xab);
        frames.push(f);
    }
    frames
}

fn vm_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

#[test]
fn hostile_input_keeps_forwarding_and_bounds() {
    if !require_root("hostile_input_keeps_forwarding_and_bounds") {
        return;
    }
    let id = uniq();
    let (toml, m, _) = star(
        &id,
        &[Kind::Veth, Kind::Tap, Kind::Veth],
        "fdb_max = 256\nfdb_max_per_port = 64\ncpu = 0\nbusy_poll_us = 20000\n",
    );
    let topo = TopoGuard::new(&toml);
    let sw = SwitchProc::start(&topo);
    let (red, blue, evil) = (&m[0], &m[1], &m[2]);
    assert_eq!(ping_loss(&red.ns, &blue.ip, 3), 0.0);
    let rss_before = vm_rss_kib(sw.pid());
    let status = std::fs::read_to_string(format!("/proc/{}/status", sw.pid())).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Cpus_allowed_list:") && l.trim_end().ends_with("\t0")),
        "worker not pinned to CPU 0: {status}"
    );

    // Ping red -> blue during the whole flood.
    let red_ns = red.ns.clone();
    let blue_ip = blue.ip.clone();
    let pinger = std::thread::spawn(move || ping_loss(&red_ns, &blue_ip, 30));

    let frames = hostile_frames();
    let evil_if = evil.ifname.clone();
    let sent = in_ns(&evil.ns, move || {
        use switch::port::{BATCH, Batch, PortIo};
        let mut port = switch::sys::PacketPort::open(&evil_if)
            .expect("packet socket in the hostile namespace");
        let mut batch = Batch::new();
        let mut sent = 0;
        for chunk in frames.chunks(BATCH) {
            batch.clear();
            for (i, f) in chunk.iter().enumerate() {
                let area = batch.rx_area(i);
                area[..10].fill(0); // plain virtio_net_hdr: no offload
                area[10..10 + f.len()].copy_from_slice(f);
                batch.set_filled(i, 10 + f.len(), false);
            }
            let idx: Vec<u16> = (0..chunk.len() as u16).collect();
            sent += port.tx_batch(&batch, &idx).expect("send").sent;
            std::thread::sleep(Duration::from_micros(200));
        }
        sent
    });
    assert!(sent > 20_000, "only {sent} hostile frames were sent");
    let loss_during = pinger.join().unwrap();
    assert!(
        loss_during <= 10.0,
        "red -> blue lost {loss_during}% during the flood"
    );
    assert_eq!(
        ping_loss(&red.ns, &blue.ip, 5),
        0.0,
        "red -> blue after the flood"
    );
    assert_eq!(
        ping_loss(&blue.ns, &red.ip, 5),
        0.0,
        "blue -> red after the flood"
    );

    let st = sw.cli_json("stats");
    let fdb_entries = st["fdb"]["entries"].as_u64().unwrap();
    assert!(
        fdb_entries <= 256,
        "fdb has {fdb_entries} entries, bound 256"
    );
    let ev = port_stats(&st, &evil.port);
    assert!(ev["fdb_entries"].as_u64().unwrap() <= 64, "{ev}");
    assert!(
        st["fdb"]["counters"]["refused_port_full"].as_u64().unwrap() > 1000,
        "{st}"
    );
    assert!(ev["drops"]["bad-src-mac"].as_u64().unwrap() >= 2, "{ev}");
    assert!(ev["rx_packets"].as_u64().unwrap() >= 20_000, "{ev}");
    let rss_after = vm_rss_kib(sw.pid());
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    let log = sw.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn kill9_then_netns_setup_down_removes_everything() {
    if !require_root("kill9_then_netns_setup_down_removes_everything") {
        return;
    }
    let id = uniq();
    let (toml, m, sw_ns) = star(&id, &[Kind::Veth, Kind::Tap], "");
    let topo = TopoGuard::new(&toml);
    let mut sw = SwitchProc::start(&topo);
    assert_eq!(ping_loss(&m[0].ns, &m[1].ip, 2), 0.0);
    sw.kill9();
    let o = run_timeout(
        std::process::Command::new(bin("netns-setup"))
            .arg("down")
            .arg(&topo.path),
        Duration::from_secs(30),
    );
    assert!(
        o.status.success(),
        "down failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let left = ip_netns_list();
    for ns in [&m[0].ns, &m[1].ns, &sw_ns] {
        assert!(!left.contains(ns), "{ns} left behind after kill -9 + down");
        assert!(!std::path::Path::new("/run/netns").join(ns).exists());
    }
    // A new run on the same topology starts cleanly (stale control socket and all).
    let sw2 = SwitchProc::start(&topo);
    assert_eq!(ping_loss(&m[0].ns, &m[1].ip, 2), 0.0);
    drop(sw2);
}

/// A frame `dst, src, ethertype(s), marker, filler` of exactly `len` bytes.
fn frame(dst: [u8; 6], src: [u8; 6], types: &[u16], tag: u8, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    for (i, t) in types.iter().enumerate() {
        f.extend_from_slice(&t.to_be_bytes());
        if i + 1 < types.len() {
            f.extend_from_slice(&(0x2000u16 | (100 + i as u16)).to_be_bytes()); // pcp 1, vid 100+
        }
    }
    f.extend_from_slice(b"VSWT");
    f.push(tag);
    while f.len() < len {
        f.push((f.len() * 7) as u8);
    }
    f
}

#[test]
fn frames_pass_byte_for_byte_and_never_back_out() {
    if !require_root("frames_pass_byte_for_byte_and_never_back_out") {
        return;
    }
    let id = uniq();
    let (mut toml, m, _) = star(&id, &[Kind::Veth, Kind::Veth, Kind::Tap], "");
    toml = toml.replace("\nifname = \"", "\nmtu = 9000\nifname = \"");
    let topo = TopoGuard::new(&toml);
    let sw = SwitchProc::start(&topo);
    let (red, blue, green) = (&m[0], &m[1], &m[2]);
    // Let the switch learn blue (ping makes blue send); then observe.
    assert_eq!(ping_loss(&red.ns, &blue.ip, 1), 0.0);
    let red_mac = mac_bytes(&mac_of(&red.ns, &red.ifname));
    let blue_mac = mac_bytes(&mac_of(&blue.ns, &blue.ifname));
    let mut tx = packet_socket(&red.ns, &red.ifname);
    let mut rx_red = packet_socket(&red.ns, &red.ifname);
    let mut rx_blue = packet_socket(&blue.ns, &blue.ifname);
    let mut rx_green = packet_socket(&green.ns, &green.ifname);

    let bcast = [0xff; 6];
    let unknown = [0x02, 0, 0, 0, 0, 0x99];
    // (frame, expected at blue, expected at green)
    let cases: Vec<(Vec<u8>, bool, bool)> = vec![
        (frame(bcast, red_mac, &[0x88b5], 1, 60), true, true),
        (
            frame([0x01, 0x00, 0x5e, 0, 0, 0xfb], red_mac, &[0x0800], 2, 80),
            true,
            true,
        ),
        (
            frame([0x33, 0x33, 0, 0, 0, 1], red_mac, &[0x86dd], 3, 90),
            true,
            true,
        ),
        (frame(unknown, red_mac, &[0x0800], 4, 100), true, true),
        (frame(blue_mac, red_mac, &[0x0800], 5, 1514), true, false),
        (frame(blue_mac, red_mac, &[0x88b5], 6, 9014), true, false),
        (
            frame(blue_mac, red_mac, &[0x8100, 0x88b5], 7, 200),
            true,
            false,
        ),
        (
            frame(blue_mac, red_mac, &[0x88a8, 0x8100, 0x0800], 8, 300),
            true,
            false,
        ),
        (frame(bcast, red_mac, &[0x8100, 0x0806], 9, 64), true, true),
        (
            frame(unknown, red_mac, &[0x8100, 0x86dd], 10, 1518),
            true,
            true,
        ),
    ];
    let frames: Vec<Vec<u8>> = cases.iter().map(|c| c.0.clone()).collect();
    assert_eq!(send_frames(&mut tx, &frames), frames.len());
    let window = Duration::from_millis(700);
    let (got_blue, got_green, got_red) = std::thread::scope(|s| {
        let b = s.spawn(|| recv_frames(&mut rx_blue, window));
        let g = s.spawn(|| recv_frames(&mut rx_green, window));
        let r = recv_frames(&mut rx_red, window);
        (b.join().unwrap(), g.join().unwrap(), r)
    });
    for (f, at_blue, at_green) in &cases {
        let tag = f
            .windows(4)
            .position(|w| w == b"VSWT")
            .map(|p| f[p + 4])
            .unwrap();
        assert_eq!(
            got_blue.contains(f),
            *at_blue,
            "frame {tag} ({} bytes) at blue",
            f.len()
        );
        assert_eq!(
            got_green.contains(f),
            *at_green,
            "frame {tag} ({} bytes) at green",
            f.len()
        );
        let marker_at_red = got_red
            .iter()
            .any(|g| g.windows(5).any(|w| w[..4] == *b"VSWT" && w[4] == tag));
        assert!(
            !marker_at_red,
            "frame {tag} came back out of the ingress port"
        );
    }
    let st = sw.cli_json("stats");
    assert_eq!(port_stats(&st, &red.port)["drops"]["truncated"], 0);
}

#[test]
fn vanished_ports_are_reported_and_the_rest_keep_forwarding() {
    vanished_ports(
        "vanished_ports_are_reported_and_the_rest_keep_forwarding",
        "",
    );
}

/// The same with TPACKET rings: a removed device's socket error takes the
/// ring port out of service (its ring alone would just stay empty).
#[test]
fn vanished_ports_with_ring_io() {
    vanished_ports("vanished_ports_with_ring_io", "io = \"ring\"\n");
}

fn vanished_ports(test: &str, switch_extra: &str) {
    if !require_root(test) {
        return;
    }
    let id = uniq();
    let (toml, m, _) = star(
        &id,
        &[Kind::Veth, Kind::Veth, Kind::Tap, Kind::Veth],
        switch_extra,
    );
    let topo = TopoGuard::new(&toml);
    let sw = SwitchProc::start(&topo);
    let (red, blue, green, gray) = (&m[0], &m[1], &m[2], &m[3]);
    assert_eq!(ping_loss(&red.ns, &green.ip, 2), 0.0);
    assert_eq!(ping_loss(&red.ns, &gray.ip, 2), 0.0);
    // Remove the TAP and one veth pair under the running switch.
    for who in [green, gray] {
        let o = ns_exec(
            &who.ns,
            &["ip", "link", "del", &who.ifname],
            Duration::from_secs(10),
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // Traffic that floods (ARP for an absent host) reaches the dead ports too.
    let _ = ping_loss(&red.ns, "192.168.15.77", 2);
    assert_eq!(
        ping_loss(&red.ns, &blue.ip, 3),
        0.0,
        "red -> blue after two ports vanished"
    );
    assert_eq!(
        ping_loss(&blue.ns, &red.ip, 3),
        0.0,
        "blue -> red after two ports vanished"
    );
    let st = sw.cli_json("stats");
    for who in [green, gray] {
        assert_eq!(port_stats(&st, &who.port)["state"], "gone", "{}", st);
    }
    assert_eq!(port_stats(&st, &red.port)["state"], "up");
    let log = sw.log_text();
    assert!(
        log.contains(&format!("port {} ", green.port)) && log.contains("is gone"),
        "{log}"
    );
}

#[test]
fn without_root_the_error_is_clear() {
    if !require_root("without_root_the_error_is_clear") {
        return; // we need root to drop to another user
    }
    use std::os::unix::process::CommandExt;
    let id = uniq();
    let (toml, _, _) = star(&id, &[Kind::Veth, Kind::Veth], "");
    let topo = TopoGuard::new(&toml);
    for (b, sub) in [("netns-setup", "up"), ("vswitch", "run")] {
        let mut c = std::process::Command::new(bin(b));
        c.arg(sub).arg(&topo.path).uid(65534).gid(65534);
        let o = run_timeout(&mut c, Duration::from_secs(20));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{b}: {err}");
        assert!(err.contains("needs root"), "{b}: {err}");
    }
    assert!(!ip_netns_list().iter().any(|n| n.contains(&id)));
    // Querying a switch that is not running says so.
    let o = run_timeout(
        std::process::Command::new(bin("vswitch")).args(["stats", "-t", &format!("absent{id}")]),
        Duration::from_secs(10),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no vswitch is running"));
}

#[test]
fn keep_leaves_the_topology_up() {
    if !require_root("keep_leaves_the_topology_up") {
        return;
    }
    let id = uniq();
    let (toml, m, sw_ns) = star(&id, &[Kind::Veth, Kind::Tap], "");
    let topo = TopoGuard::new(&toml);
    let mut sw = SwitchProc::start_with(&topo, &["--keep"]);
    assert_eq!(ping_loss(&m[0].ns, &m[1].ip, 1), 0.0);
    assert!(sw.stop(), "vswitch did not exit cleanly: {}", sw.log_text());
    let left = ip_netns_list();
    for ns in [&m[0].ns, &m[1].ns, &sw_ns] {
        assert!(left.contains(ns), "--keep removed {ns}");
    }
    // A second run adopts the kept topology (nothing to create) and forwards again.
    let _sw2 = SwitchProc::start(&topo);
    assert_eq!(ping_loss(&m[0].ns, &m[1].ip, 1), 0.0);
    // TopoGuard removes it at the end.
}

#[test]
fn dual_stack_namespaces_reach_each_other_over_ipv6_at_once() {
    if !require_root("dual_stack_namespaces_reach_each_other_over_ipv6_at_once") {
        return;
    }
    // The topology gives each namespace an IPv6 address too (no DAD wait)
    // and red an IPv6 default route via a link-local next hop; the switch
    // carries IPv6 at L2 (neighbour discovery is multicast, flooded).
    let id = uniq();
    let (mut toml, m, _) = star(&id, &[Kind::Veth, Kind::Veth], "");
    toml = toml
        .replacen(
            "address = \"192.168.15.1/24\"\ngateway = \"192.168.15.254\"",
            "address = [\"192.168.15.1/24\", \"fd00:15::1/64\"]\ngateway = [\"192.168.15.254\", \"fe80::5\"]",
            1,
        )
        .replacen(
            "address = \"192.168.15.2/24\"",
            "address = [\"192.168.15.2/24\", \"fd00:15::2/64\"]",
            1,
        );
    let topo = TopoGuard::new(&toml);
    let _sw = SwitchProc::start(&topo);
    let (red, blue) = (&m[0], &m[1]);
    let addr = ns_exec(
        &red.ns,
        &["ip", "-6", "addr", "show", "dev", &red.ifname],
        Duration::from_secs(5),
    );
    let addr = String::from_utf8_lossy(&addr.stdout);
    let ours = addr
        .lines()
        .find(|l| l.contains("fd00:15::1/64"))
        .unwrap_or_else(|| panic!("no fd00:15::1/64 in {addr}"));
    assert!(!ours.contains("tentative"), "DAD was not skipped: {addr}");
    let route = ns_exec(
        &red.ns,
        &["ip", "-6", "route", "show", "default"],
        Duration::from_secs(5),
    );
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(route.contains("via fe80::5"), "{route}");
    // `netns-setup show` lists both families.
    let show = run_timeout(
        std::process::Command::new(bin("netns-setup"))
            .args(["show", "--json"])
            .arg(&topo.path),
        Duration::from_secs(30),
    );
    let v: Value = serde_json::from_slice(&show.stdout).expect("show --json");
    let red_end = v["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["netns"] == red.ns.as_str() && l["role"] == "endpoint")
        .unwrap_or_else(|| panic!("no endpoint of {} in {v}", red.ns));
    assert_eq!(
        red_end["addresses"],
        serde_json::json!(["192.168.15.1/24", "fd00:15::1/64"]),
        "{red_end}"
    );
    assert_eq!(
        red_end["default_via"], "192.168.15.254,fe80::5",
        "{red_end}"
    );
    assert_eq!(
        ping_loss_with(&red.ns, &["-6"], "fd00:15::2", 3),
        0.0,
        "red -> blue"
    );
    assert_eq!(
        ping_loss_with(&blue.ns, &["-6"], "fd00:15::1", 3),
        0.0,
        "blue -> red"
    );
    assert_eq!(ping_loss(&red.ns, &blue.ip, 2), 0.0, "IPv4 as before");
}
