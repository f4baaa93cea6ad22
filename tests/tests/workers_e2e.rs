//! End to end: a switch with `[switch] workers = 2` spreads the flows
//! between LAN hosts over both workers, hands each frame to exactly one of
//! them (nothing lost, nothing twice), keeps both directions of a flow on one
//! worker (a stateful ACL still sees whole connections), shares MAC learning,
//! routes and NATs on worker 0, and refuses live changes with a clear message.

use e2e::*;
use serde_json::Value;
use std::collections::HashMap;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

/// These tests move bulk data: one at a time (2 cores).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn worker_rx(stats: &Value) -> Vec<u64> {
    stats["workers"]
        .as_array()
        .unwrap_or_else(|| panic!("no workers in {stats}"))
        .iter()
        .map(|w| w["rx_packets"].as_u64().unwrap_or(0))
        .collect()
}

/// Send `per_port` datagrams from each of `sports` source ports of red to
/// blue:`dport`; every (source port, sequence) must arrive exactly once.
/// Rounds are paced (the next starts once the last arrived, or after 1 s),
/// so blue's socket buffer never overflows.
fn udp_each_exactly_once(red: &Member, blue: &Member, dport: u16, sports: u16, per_port: u32) {
    let rx =
        in_ns(&blue.ns, || UdpSocket::bind(format!("{}:{dport}", blue.ip))).expect("bind in blue");
    rx.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let senders: Vec<UdpSocket> = (0..sports)
        .map(|i| {
            in_ns(&red.ns, || {
                UdpSocket::bind(format!("{}:{}", red.ip, 41000 + i))
            })
            .expect("bind in red")
        })
        .collect();
    let to = format!("{}:{dport}", blue.ip);
    let mut seen: HashMap<(u16, u32), u32> = HashMap::new();
    let mut buf = [0u8; 64];
    let mut take = |seen: &mut HashMap<(u16, u32), u32>, until: usize, wait: Duration| {
        let deadline = Instant::now() + wait;
        while seen.len() < until || Instant::now() < deadline {
            match rx.recv(&mut buf) {
                Ok(n) => {
                    assert_eq!(n, 6);
                    let k = (
                        u16::from_be_bytes([buf[0], buf[1]]),
                        u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]),
                    );
                    *seen.entry(k).or_default() += 1;
                }
                Err(_) if Instant::now() >= deadline => break,
                Err(_) => {}
            }
            if seen.len() >= until && wait.is_zero() {
                break;
            }
        }
    };
    for seq in 0..per_port {
        for (i, s) in senders.iter().enumerate() {
            let mut msg = [0u8; 6];
            msg[..2].copy_from_slice(&(i as u16).to_be_bytes());
            msg[2..].copy_from_slice(&seq.to_be_bytes());
            s.send_to(&msg, &to).expect("send");
        }
        let until = (seq as usize + 1) * usize::from(sports);
        let deadline = Instant::now() + Duration::from_secs(1);
        while seen.len() < until && Instant::now() < deadline {
            take(&mut seen, until, Duration::ZERO);
        }
    }
    // A late duplicate would arrive right behind the original.
    take(&mut seen, 0, Duration::from_millis(300));
    let want = usize::from(sports) * per_port as usize;
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "datagrams delivered twice: {twice:?}");
    assert_eq!(
        seen.len(),
        want,
        "datagrams lost: {} of {want} arrived",
        seen.len()
    );
}

/// An Ethernet + IPv4 + UDP frame from `src` (a made-up MAC) on red's
/// subnet to blue, source port `sport` (checksums zero: the switch does not
/// check them, blue's kernel drops it).
fn made_up_station(src: [u8; 6], dst: [u8; 6], sport: u16) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 30, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&[192, 168, 15, 1, 192, 168, 15, 2]);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&[0x1b, 0x58, 0, 10, 0, 0, 0, 0]);
    f.resize(60, 0);
    f
}

#[test]
fn two_workers_spread_flows_deliver_each_frame_once_and_share_learning() {
    if !require_root("two_workers_spread_flows_deliver_each_frame_once_and_share_learning") {
        return;
    }
    let _s = serial();
    let nt = nat_topo_with(3, "workers = 2\n", "", "", "");
    let sw = SwitchProc::start(&nt.topo);
    let (red, blue, green) = (&nt.red, &nt.blue, &nt.hosts[2]);

    let s0 = sw.cli_json("stats");
    assert_eq!(worker_rx(&s0).len(), 2, "two workers in {s0}");
    assert_eq!(ping_loss(&red.ns, &green.ip, 3), 0.0, "red -> green");
    assert_eq!(ping_loss(&green.ns, &red.ip, 3), 0.0, "green -> red");
    assert_eq!(ping_loss(&red.ns, WAN_HOST, 3), 0.0, "red -> wan via NAT");

    // 64 UDP flows red -> blue (one host pair: spread by ports): each
    // datagram exactly once.
    let r = std::panic::catch_unwind(|| udp_each_exactly_once(red, blue, 7000, 64, 20));
    if r.is_err() {
        let st = sw.cli_json("stats");
        for p in st["ports"].as_array().unwrap() {
            let d: Vec<_> = p["drops"]
                .as_object()
                .unwrap()
                .iter()
                .filter(|(_, v)| v.as_u64() != Some(0))
                .collect();
            eprintln!(
                "{} rx {} tx {} drops {d:?}",
                p["name"], p["rx_packets"], p["tx_packets"]
            );
        }
        panic!("UDP flows: see above; workers {}", st["workers"]);
    }
    let before = worker_rx(&sw.cli_json("stats"));
    // 8 TCP connections red -> blue at once, bytes intact.
    let threads: Vec<_> = (0..8u16)
        .map(|i| {
            let (r, bl) = (red.clone(), blue.clone());
            std::thread::spawn(move || tcp_transfer(&r, &bl, 6000 + i, 4 << 20))
        })
        .collect();
    for t in threads {
        t.join().expect("a TCP connection failed");
    }
    let moved: Vec<u64> = worker_rx(&sw.cli_json("stats"))
        .iter()
        .zip(&before)
        .map(|(a, b)| a - b)
        .collect();
    eprintln!("frames of the 8 red -> blue connections per worker: {moved:?}");
    assert!(
        moved.iter().all(|&n| n > 100),
        "one host pair's connections did not use both workers: {moved:?}"
    );
    // NAT on worker 0, bytes intact.
    tcp_transfer(red, &nt.wan, 6100, 8 << 20);
    // Stations only one worker sees: 32 made-up source MACs behind red,
    // each in one frame to blue; worker 0's table (what `vswitch fdb`
    // lists) must learn every one, also those steered to worker 1.
    let blue_mac = mac_bytes_of(&blue.ns, &blue.ifname);
    let frames: Vec<Vec<u8>> = (0..32u8)
        .map(|i| made_up_station([0x02, 0x77, 0, 0, 0, i], blue_mac, 50_000 + u16::from(i)))
        .collect();
    let on_w1 = switch::daemon::steer_for(&nt.topo.topo, 1, &red.port).expect("two workers");
    let to_w1 = frames
        .iter()
        .filter(|f| switch::steer::run(&on_w1, f) == switch::steer::ACCEPT)
        .count();
    assert!(
        to_w1 > 0 && to_w1 < 32,
        "{to_w1} of 32 made-up stations steered to worker 1"
    );
    let mut inj = packet_socket(&red.ns, &red.ifname);
    assert_eq!(send_frames(&mut inj, &frames), 32);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let fdb = sw.cli_json("fdb").to_string();
        let missing: Vec<String> = (0..32u8)
            .map(|i| format!("02:77:00:00:00:{i:02x}"))
            .filter(|m| !fdb.contains(m.as_str()))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "worker 0 never learned {missing:?} ({to_w1} were steered to worker 1)"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let s1 = sw.cli_json("stats");
    let rx = worker_rx(&s1);
    eprintln!("frames received per worker: {rx:?}");
    let port_rx: u64 = s1["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["rx_packets"].as_u64().unwrap())
        .sum();
    assert_eq!(
        port_rx,
        rx.iter().sum::<u64>(),
        "merged port counters are the workers' sum"
    );
    // Learning is shared both ways, and no update was lost.
    for w in s1["workers"].as_array().unwrap() {
        assert!(
            w["fdb_shared_applied"].as_u64().unwrap() > 0,
            "{}",
            s1["workers"]
        );
        assert_eq!(w["fdb_shared_dropped"], 0, "{w}");
    }
    let fdb = sw.cli_json("fdb");
    let text = fdb.to_string();
    for m in [red, blue, green] {
        let mac = mac_of(&m.ns, &m.ifname);
        assert!(text.contains(&mac), "{} ({mac}) not in {fdb}", m.ns);
    }

    let text = sw.cli_text("stats");
    assert!(
        text.contains("worker 0: polling") && text.contains("worker 1: polling"),
        "{text}"
    );
    // Live changes are refused, named, nothing changed.
    let o = run_timeout(
        std::process::Command::new(bin("vswitch"))
            .arg("reload")
            .arg("--socket")
            .arg(&sw.socket),
        Duration::from_secs(15),
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("workers = 1"), "{err}");
    assert_eq!(ping_loss(&red.ns, &green.ip, 2), 0.0, "still forwarding");
}

#[test]
fn with_two_workers_a_stateful_acl_sees_whole_connections() {
    if !require_root("with_two_workers_a_stateful_acl_sees_whole_connections") {
        return;
    }
    let _s = serial();
    // blue accepts only replies: a connection whose SYN and SYN-ACK met
    // different workers would be dropped. With `state` rules the workers
    // split by host pair (red-blue and red-green land on different ones).
    let nt = nat_topo_with(3, "workers = 2\n", "", "", "");
    let (red, blue, green) = (&nt.red, &nt.blue, &nt.hosts[2]);
    let acl = format!(
        "[[acl]]\nname = \"blue-answers\"\nin_port = \"{}\"\nstate = \"established\"\naction = \"allow\"\n[[acl]]\nname = \"blue-opens-nothing-to-red\"\nin_port = \"{}\"\nethertype = \"ipv4\"\ndst = \"{}/32\"\naction = \"drop\"\n",
        blue.ns, blue.ns, red.ip
    );
    let mut toml = std::fs::read_to_string(&nt.topo.path).unwrap();
    toml += &acl;
    std::fs::write(&nt.topo.path, &toml).unwrap();
    let sw = SwitchProc::start(&nt.topo);
    let threads: Vec<_> = (0..16u16)
        .map(|i| {
            let (r, bl) = (red.clone(), blue.clone());
            std::thread::spawn(move || tcp_transfer(&r, &bl, 6000 + i, 2 << 20))
        })
        .collect();
    for t in threads {
        t.join()
            .expect("a TCP connection through the stateful ACL failed");
    }
    tcp_transfer(red, green, 6200, 8 << 20);
    let o = ns_exec(
        &blue.ns,
        &["ping", "-c", "2", "-W", "1", "-i", "0.2", &red.ip],
        Duration::from_secs(10),
    );
    assert!(!o.status.success(), "blue reached red past the ACL");
    let rx = worker_rx(&sw.cli_json("stats"));
    eprintln!("frames received per worker: {rx:?}");
    assert!(
        rx.iter().all(|&n| n > 100),
        "a worker carried no host pair: {rx:?}"
    );
}
