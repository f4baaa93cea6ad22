//! End to end: the kernel fast path (`[switch] fastpath = "ebpf"`, the
//! default). Bulk TCP through L2, MASQUERADE and DNAT with sha256 checks
//! (offloads at their defaults, and with the sender's checksum offload off
//! so that the receiver verifies every rewritten checksum); numbered UDP
//! datagrams counted at the receiver (none lost, none twice); flows leaving
//! the fast path on FIN and when idle, a quiet UDP mapping expiring on time
//! while an active one stays; nothing left attached after SIGKILL; a capture
//! keeping its port in the slow path.

use e2e::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

fn fast(sw: &SwitchProc) -> Value {
    sw.cli_json("stats")["fastpath"].clone()
}

fn forwarded(sw: &SwitchProc) -> u64 {
    fast(sw)["kernel"]["forwarded"].as_u64().unwrap_or(0)
}

/// Wait (at most `limit`) until `f` holds; false if it never did.
fn until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// `n` numbered datagrams from `from` (bound to `bind`) to `to`, where a
/// socket in `to_ns` on `listen` answers each one (so the flow is seen both
/// ways and offloaded). Returns (received, distinct, answers received).
fn numbered_udp(
    from: &str,
    bind: SocketAddr,
    to: SocketAddr,
    to_ns: &str,
    listen: SocketAddr,
    n: u32,
) -> (u32, u32, u32) {
    let srv = in_ns(to_ns, || UdpSocket::bind(listen)).expect("bind server");
    // As root, past rmem_max: 8 MiB of slack for a busy runner.
    nix::sys::socket::setsockopt(&srv, nix::sys::socket::sockopt::RcvBufForce, &(8 << 20))
        .expect("SO_RCVBUFFORCE");
    srv.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let rx = std::thread::spawn(move || {
        let mut seen = vec![0u8; n as usize];
        let (mut total, mut b) = (0u32, [0u8; 2048]);
        while let Ok((len, peer)) = srv.recv_from(&mut b) {
            if len >= 4 {
                let i = u32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
                if i < seen.len() {
                    seen[i] = seen[i].saturating_add(1);
                }
                total += 1;
                let _ = srv.send_to(&b[..4], peer);
            }
        }
        let distinct = seen.iter().filter(|&&c| c > 0).count() as u32;
        (total, distinct)
    });
    let c = in_ns(from, || UdpSocket::bind(bind)).expect("bind client");
    c.connect(to).unwrap();
    c.set_nonblocking(true).unwrap();
    let mut answers = 0u32;
    let mut b = [0u8; 64];
    let payload = vec![0x5a; 1000];
    for i in 0..n {
        let mut d = i.to_be_bytes().to_vec();
        d.extend_from_slice(&payload);
        c.send(&d).expect("send");
        // Paced (about 10,000/s): the receiver must not lose any to its buffer.
        if i % 10 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        while c.recv(&mut b).is_ok() {
            answers += 1;
        }
    }
    let end = Instant::now() + Duration::from_secs(3);
    while answers < n && Instant::now() < end {
        match c.recv(&mut b) {
            Ok(_) => answers += 1,
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    let (total, distinct) = rx.join().unwrap();
    (total, distinct, answers)
}

fn snmp(ns: &str, proto: &str, field: &str) -> u64 {
    let text = in_ns(ns, || std::fs::read_to_string("/proc/net/snmp").unwrap());
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with(proto)).collect();
    let names: Vec<&str> = rows[0].split_whitespace().collect();
    let vals: Vec<&str> = rows[1].split_whitespace().collect();
    let i = names.iter().position(|n| *n == field).expect("field");
    vals[i].parse().unwrap()
}

#[test]
fn bulk_tcp_and_numbered_udp_through_l2_nat_and_dnat_arrive_once() {
    if !require_root("bulk_tcp_and_numbered_udp_through_l2_nat_and_dnat_arrive_once") {
        return;
    }
    need_program("ethtool");
    let t = nat_topo("", "");
    let sw = SwitchProc::start(&t.topo);
    assert_eq!(fast(&sw)["state"], "on", "{}", fast(&sw));
    let a = |ip: &str, port: u16| SocketAddr::new(ip.parse().unwrap(), port);
    let red = t.red.ip.as_str();
    let blue = t.blue.ip.as_str();
    const MB200: usize = 200 * 1000 * 1000;
    let cases = [
        ("L2", &t.red.ns, &t.blue.ns, a(blue, 5101), a(blue, 5101)),
        (
            "NAT",
            &t.red.ns,
            &t.wan.ns,
            a(WAN_HOST, 5102),
            a(WAN_HOST, 5102),
        ),
        ("DNAT", &t.wan.ns, &t.blue.ns, a(blue, 80), a(EXT, 80)),
    ];
    for (what, from, to, listen, connect) in cases {
        let before = forwarded(&sw);
        tcp_transfer_via(from, to, listen, connect, MB200);
        let moved = forwarded(&sw) - before;
        // 200 MB is at least 3,000 GSO super-frames; most go by the kernel.
        assert!(
            moved >= 1000,
            "{what}: only {moved} frames by the fast path: {}",
            fast(&sw)
        );
    }
    // The sender's checksum offload off: every segment carries a full
    // checksum that the fast path's NAT rewrite must keep right, and the
    // receiver verifies it (a wrong one is an InCsumErrors drop and a stall).
    let o = ns_exec(
        &t.red.ns,
        &["ethtool", "-K", &t.red.ifname, "tx", "off"],
        Duration::from_secs(10),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let csum_before = snmp(&t.wan.ns, "Tcp:", "InCsumErrors");
    let before = forwarded(&sw);
    tcp_transfer_via(
        &t.red.ns,
        &t.wan.ns,
        a(WAN_HOST, 5103),
        a(WAN_HOST, 5103),
        20 * 1000 * 1000,
    );
    assert!(forwarded(&sw) - before >= 1000, "{}", fast(&sw));
    assert_eq!(snmp(&t.wan.ns, "Tcp:", "InCsumErrors"), csum_before);
    // Numbered datagrams, answered: every one arrives, none twice, and most
    // went by the fast path (L2, then through the NAT).
    const N: u32 = 20_000;
    for (what, to_ns, listen, to) in [
        ("L2", &t.blue.ns, a(blue, 7000), a(blue, 7000)),
        ("NAT", &t.wan.ns, a(WAN_HOST, 7001), a(WAN_HOST, 7001)),
    ] {
        let before = forwarded(&sw);
        let (total, distinct, answers) = numbered_udp(&t.red.ns, a(red, 0), to, to_ns, listen, N);
        let moved = forwarded(&sw) - before;
        assert_eq!((total, distinct), (N, N), "{what}: received, distinct");
        assert_eq!(answers, N, "{what}: answers");
        assert!(
            moved >= u64::from(N),
            "{what}: {moved} frames by the fast path: {}",
            fast(&sw)
        );
    }
    let f = fast(&sw);
    assert_eq!(f["install_errors"], 0, "{f}");
    // `stats` counts the fast path's frames in the ports' counters.
    let st = sw.cli_json("stats");
    let up = st["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == "uplink")
        .unwrap()
        .clone();
    assert!(up["tx_bytes"].as_u64().unwrap() >= MB200 as u64, "{up}");
}

#[test]
fn offloaded_flows_leave_on_fin_and_a_quiet_udp_mapping_expires_on_time() {
    if !require_root("offloaded_flows_leave_on_fin_and_a_quiet_udp_mapping_expires_on_time") {
        return;
    }
    let t = nat_topo("", "udp_timeout = 120");
    let sw = SwitchProc::start(&t.topo);
    let a = |ip: &str, port: u16| SocketAddr::new(ip.parse().unwrap(), port);
    // A TCP connection through the NAT, offloaded once data went both ways.
    let l = in_ns(&t.wan.ns, || TcpListener::bind(a(WAN_HOST, 5201))).unwrap();
    let mut c = in_ns(&t.red.ns, || {
        TcpStream::connect_timeout(&a(WAN_HOST, 5201), Duration::from_secs(5))
    })
    .unwrap();
    let (mut s, _) = l.accept().unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 4];
    for _ in 0..20 {
        c.write_all(b"ping").unwrap();
        s.read_exact(&mut b).unwrap();
        s.write_all(b"pong").unwrap();
        c.read_exact(&mut b).unwrap();
    }
    assert!(
        until(Duration::from_secs(3), || fast(&sw)["flows"].as_u64()
            == Some(2)),
        "not offloaded: {}",
        fast(&sw)
    );
    let sport = c.local_addr().unwrap().port().to_string();
    let tr = sw.cli_json_with(
        "trace",
        &[
            "--in-port",
            &t.red.port,
            "--src",
            &t.red.ip,
            "--dst",
            WAN_HOST,
            "--proto",
            "tcp",
            "--sport",
            &sport,
            "--dport",
            "5201",
        ],
    );
    // A traced TCP probe is a SYN (always the slow path); the stage says so.
    assert!(tr.to_string().contains("SYN, FIN and RST"), "{tr}");
    let ended = fast(&sw)["removed_end"].as_u64().unwrap();
    drop(c);
    drop(s);
    assert!(
        until(Duration::from_secs(3), || fast(&sw)["flows"].as_u64()
            == Some(0)),
        "still offloaded after FIN: {}",
        fast(&sw)
    );
    assert!(
        fast(&sw)["removed_end"].as_u64().unwrap() >= ended + 2,
        "{}",
        fast(&sw)
    );

    // Two UDP flows through the NAT (timeout 120 s, the RFC 4787 minimum):
    // one keeps talking every second for 128 s, the other goes quiet at
    // once. Both are offloaded, so the NAT sees neither.
    let srv = in_ns(&t.wan.ns, || UdpSocket::bind(a(WAN_HOST, 7100))).unwrap();
    srv.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let echo = std::thread::spawn(move || {
        let mut b = [0u8; 64];
        let end = Instant::now() + Duration::from_secs(135);
        while Instant::now() < end {
            if let Ok((n, p)) = srv.recv_from(&mut b) {
                let _ = srv.send_to(&b[..n], p);
            }
        }
    });
    let mk = |port| {
        let u = in_ns(&t.red.ns, || UdpSocket::bind(a(&t.red.ip, port))).unwrap();
        u.connect(a(WAN_HOST, 7100)).unwrap();
        u.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        u
    };
    let (active, quiet) = (mk(7201), mk(7202));
    let mut b = [0u8; 64];
    for u in [&active, &quiet] {
        for _ in 0..3 {
            u.send(b"hello").unwrap();
            u.recv(&mut b).expect("echo");
        }
    }
    let mapped = |sport: u16| -> bool {
        let ct = sw.cli_json("conntrack");
        ct["entries"].as_array().unwrap().iter().any(|e| {
            e["proto"] == "udp" && e["original"]["sport"] == sport && e["original"]["dport"] == 7100
        })
    };
    assert!(
        until(Duration::from_secs(3), || fast(&sw)["flows"].as_u64()
            == Some(4)),
        "{}",
        fast(&sw)
    );
    let tr = sw.cli_json_with(
        "trace",
        &[
            "--in-port",
            &t.red.port,
            "--src",
            &t.red.ip,
            "--dst",
            WAN_HOST,
            "--proto",
            "udp",
            "--sport",
            "7201",
            "--dport",
            "7100",
        ],
    );
    assert!(tr.to_string().contains("\"offloaded\""), "{tr}");
    let quiet_since = Instant::now();
    let mut quiet_gone = None;
    let mut last_ext = None;
    let mut ticks = 0u64;
    while quiet_since.elapsed() < Duration::from_secs(128) {
        active.send(b"tick").unwrap();
        ticks += 1;
        active
            .recv(&mut b)
            .expect("the active flow is answered throughout");
        assert!(mapped(7201), "the active flow's mapping expired");
        if quiet_gone.is_none() && !mapped(7202) {
            quiet_gone = Some(quiet_since.elapsed());
        }
        let ct = sw.cli_json("conntrack");
        let ext = ct["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["original"]["sport"] == 7201)
            .map(|e| e["reply"]["dport"].clone());
        if let (Some(l), Some(e)) = (&last_ext, &ext) {
            assert_eq!(l, e, "the active flow's external port changed");
        }
        last_ext = ext;
        std::thread::sleep(Duration::from_millis(1000));
    }
    let gone = quiet_gone.expect("the quiet flow's mapping never expired");
    // The NAT entry counted the active flow's datagrams although most went
    // by the kernel: 3 + every tick each way (the last second's merged by the
    // next sweep; one frame of slack).
    std::thread::sleep(Duration::from_millis(1500));
    let ct = sw.cli_json("conntrack");
    let e = ct["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["original"]["sport"] == 7201)
        .expect("the active flow's entry")
        .clone();
    assert!(
        e["packets"][0].as_u64().unwrap() >= 3 + ticks - 1,
        "{ticks} ticks: {e}"
    );
    assert!(
        e["packets"][1].as_u64().unwrap() >= 3 + ticks - 1,
        "{ticks} ticks: {e}"
    );
    assert!(
        fast(&sw)["packets"].as_u64().unwrap() >= 200,
        "{}",
        fast(&sw)
    );
    assert!(
        gone >= Duration::from_secs(115) && gone <= Duration::from_secs(126),
        "quiet UDP mapping expired after {gone:?} (timeout 120 s)"
    );
    echo.join().unwrap();
}

#[test]
fn nothing_stays_attached_after_sigkill_and_a_capture_keeps_its_port_slow() {
    if !require_root("nothing_stays_attached_after_sigkill_and_a_capture_keeps_its_port_slow") {
        return;
    }
    let t = nat_topo("", "");
    let mut sw = SwitchProc::start(&t.topo);
    let ports = [t.red.port.clone(), t.blue.port.clone(), t.wan.port.clone()];
    let attached = |ns: &str| -> Vec<usize> {
        ports
            .iter()
            .map(|p| {
                let p = p.clone();
                in_ns(ns, move || switch::sys::bpf::tcx_ingress_programs(&p)).unwrap()
            })
            .collect()
    };
    assert_eq!(attached(&t.sw_ns), vec![1, 1, 1]);
    // A capture of red's port: red's flows stay in the slow path.
    let cap = std::env::temp_dir().join(format!("vs-fp-{}.pcap", uniq()));
    let mut capture = std::process::Command::new(bin("vswitch"));
    capture
        .args(["capture", "-s"])
        .arg(&sw.socket)
        .args([&t.red.port, "-c", "100000", "-w"])
        .arg(&cap);
    let mut child = capture.spawn().unwrap();
    // The capture is registered once its pcap header is written.
    assert!(
        until(Duration::from_secs(10), || std::fs::metadata(&cap)
            .is_ok_and(|m| m.len() >= 24)),
        "the capture did not start"
    );
    let a = |ip: &str, port: u16| SocketAddr::new(ip.parse().unwrap(), port);
    let before = forwarded(&sw);
    let (total, _, answers) = numbered_udp(
        &t.red.ns,
        a(&t.red.ip, 0),
        a(&t.blue.ip, 7300),
        &t.blue.ns,
        a(&t.blue.ip, 7300),
        500,
    );
    assert_eq!((total, answers), (500, 500));
    assert_eq!(
        forwarded(&sw),
        before,
        "a captured port's flow went by the fast path"
    );
    assert_eq!(fast(&sw)["flows"], 0);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&cap);
    // Without the capture the same traffic is offloaded...
    let (total, _, _) = numbered_udp(
        &t.red.ns,
        a(&t.red.ip, 0),
        a(&t.blue.ip, 7301),
        &t.blue.ns,
        a(&t.blue.ip, 7301),
        2000,
    );
    assert_eq!(total, 2000);
    assert!(forwarded(&sw) > before, "{}", fast(&sw));
    // ...and a crash leaves nothing attached: the tcx links died with the process.
    sw.kill9();
    assert_eq!(attached(&t.sw_ns), vec![0, 0, 0]);
    // A new run attaches again and forwards.
    let sw = SwitchProc::start(&t.topo);
    assert_eq!(attached(&t.sw_ns), vec![1, 1, 1]);
    assert_eq!(ping_loss(&t.red.ns, &t.blue.ip, 3), 0.0);
    drop(sw);
}

/// The socket filter on a plain AF_PACKET socket (`io = "mmsg"`, the
/// `packet_rcv` path) decides as on a ring: numbered datagrams arrive once.
#[test]
fn numbered_udp_through_the_fast_path_with_mmsg_io() {
    if !require_root("numbered_udp_through_the_fast_path_with_mmsg_io") {
        return;
    }
    let t = nat_topo_with(2, "io = \"mmsg\"\n", "", "", "");
    let sw = SwitchProc::start(&t.topo);
    assert_eq!(fast(&sw)["state"], "on", "{}", fast(&sw));
    let a = |ip: &str, port: u16| SocketAddr::new(ip.parse().unwrap(), port);
    let before = forwarded(&sw);
    let (total, distinct, answers) = numbered_udp(
        &t.red.ns,
        a(&t.red.ip, 0),
        a(&t.blue.ip, 7400),
        &t.blue.ns,
        a(&t.blue.ip, 7400),
        5_000,
    );
    assert_eq!((total, distinct, answers), (5_000, 5_000, 5_000));
    assert!(forwarded(&sw) - before >= 5_000, "{}", fast(&sw));
}
