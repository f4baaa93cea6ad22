//! VXLAN overlays across "hosts": two vswitch VTEPs and a Linux kernel VTEP
//! (`ip link add … type vxlan` + a bridge) on one underlay, as built by
//! `vswitch demo multihost` ([`switch::multihost`]).

use e2e::*;
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;
use switch::multihost::{self, BLUE, GATEWAY, GREEN, RED, VTEPS, WAN_HOST, World};

fn world(test: &str) -> Option<World> {
    if !require_root(test) {
        return None;
    }
    need_program("tcpdump");
    let p = format!("vx{}", uniq());
    Some(
        World::build(&p, &bin("vswitch"), &std::env::temp_dir())
            .unwrap_or_else(|e| panic!("build the multi-host world: {e}")),
    )
}

fn query(w: &World, h: usize, what: &str) -> Value {
    switch::control::query(&w.sockets[h], what).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// The DST (remote VTEP) of `mac` in host `h`'s MAC table.
fn fdb_dst(w: &World, h: usize, mac: &str) -> Option<String> {
    let v = query(w, h, "fdb");
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["mac"] == mac)
        .map(|e| e["dst"].as_str().unwrap_or("-").to_string())
}

fn tunnel_drops(w: &World, h: usize, reason: &str) -> u64 {
    let v = query(w, h, "stats");
    v["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "vxlan0")
        .and_then(|p| p["drops"][reason].as_u64())
        .unwrap_or_else(|| panic!("no vxlan0 drop counter {reason}: {v}"))
}

/// Host C's kernel VTEP table (`bridge fdb show dev vxlan42`).
fn kernel_fdb(w: &World) -> String {
    multihost::sh(&format!(
        "bridge -n {} fdb show dev vxlan{}",
        w.ns("c"),
        multihost::VNI
    ))
    .expect("bridge fdb show")
}

/// One pcap record: the captured bytes and the frame's length on the wire.
struct Rec {
    data: Vec<u8>,
    orig_len: usize,
}

/// Read a classic pcap file (the format `tcpdump -w` writes).
fn read_pcap(path: &std::path::Path) -> Vec<Rec> {
    let b = std::fs::read(path).expect("read pcap");
    assert!(b.len() >= 24, "pcap too short");
    let le = u32::from_le_bytes(b[0..4].try_into().unwrap()) == 0xa1b2_c3d4
        || u32::from_le_bytes(b[0..4].try_into().unwrap()) == 0xa1b2_3c4d;
    let u32_at = |o: usize| {
        let x: [u8; 4] = b[o..o + 4].try_into().unwrap();
        if le {
            u32::from_le_bytes(x)
        } else {
            u32::from_be_bytes(x)
        }
    };
    let mut v = Vec::new();
    let mut o = 24;
    while o + 16 <= b.len() {
        let incl = u32_at(o + 8) as usize;
        let orig = u32_at(o + 12) as usize;
        if o + 16 + incl > b.len() {
            break; // the last record, cut by the kill
        }
        v.push(Rec {
            data: b[o + 16..o + 16 + incl].to_vec(),
            orig_len: orig,
        });
        o += 16 + incl;
    }
    v
}

/// A VXLAN datagram (VNI `vni`) carrying a broadcast ARP request from `mac`.
fn vxlan_arp(vni: u32, mac: [u8; 6]) -> Vec<u8> {
    let mut d = vec![0x08, 0, 0, 0];
    d.extend_from_slice(&(vni << 8).to_be_bytes());
    // Ethernet broadcast, ARP request "who-has 192.168.50.1 tell 192.168.50.77" (RFC 826 layout).
    d.extend_from_slice(&[0xff; 6]);
    d.extend_from_slice(&mac);
    d.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    d.extend_from_slice(&mac);
    d.extend_from_slice(&[192, 168, 50, 77, 0, 0, 0, 0, 0, 0, 192, 168, 50, 1]);
    d
}

#[test]
fn multihost_overlay_pings_learns_moves_and_carries_200mb_within_the_underlay_mtu() {
    let Some(w) =
        world("multihost_overlay_pings_learns_moves_and_carries_200mb_within_the_underlay_mtu")
    else {
        return;
    };
    let (red, blue, green, wan) = (w.ns("red"), w.ns("blue"), w.ns("green"), w.ns("wan"));
    // Capture host A's underlay link (headers only; the wire length is kept).
    let pcap = std::env::temp_dir().join(format!("{}-ul.pcap", w.prefix));
    let pcap_s = pcap.to_string_lossy().to_string();
    let cap = Bg::start(
        &w.ns("ul"),
        &[
            "tcpdump", "-i", "ula", "-n", "-s", "128", "-U", "-w", &pcap_s, "udp", "port", "4789",
        ],
        None,
    );
    assert!(
        cap.wait_for("listening on", Duration::from_secs(10)),
        "tcpdump: {}",
        cap.log()
    );

    // Every pair, the gateway, and wan through host A's NAT: 0 % loss.
    for (from, to) in [
        (&red, BLUE),
        (&red, GREEN),
        (&blue, GREEN),
        (&green, RED),
        (&blue, RED),
        (&green, BLUE),
        (&blue, GATEWAY),
        (&green, GATEWAY),
        (&blue, WAN_HOST),
        (&green, WAN_HOST),
        (&red, WAN_HOST),
    ] {
        assert_eq!(ping_loss(from, to, 5), 0.0, "{from} -> {to}");
    }

    // Learning both ways: vswitch learned C's MACs behind C's VTEP, the
    // kernel VTEP on C learned vswitch's MACs behind A and B.
    let (mr, mb, mg) = (
        mac_of(&red, "eth0"),
        mac_of(&blue, "eth0"),
        mac_of(&green, "eth0"),
    );
    assert_eq!(
        fdb_dst(&w, 0, &mg).as_deref(),
        Some(VTEPS[2]),
        "A: green behind C"
    );
    assert_eq!(
        fdb_dst(&w, 0, &mb).as_deref(),
        Some(VTEPS[1]),
        "A: blue behind B"
    );
    assert_eq!(
        fdb_dst(&w, 1, &mg).as_deref(),
        Some(VTEPS[2]),
        "B: green behind C"
    );
    assert_eq!(
        fdb_dst(&w, 1, &mr).as_deref(),
        Some(VTEPS[0]),
        "B: red behind A"
    );
    let k = kernel_fdb(&w);
    assert!(
        k.contains(&format!("{mr} dst {}", VTEPS[0])),
        "C learned red behind A:\n{k}"
    );
    assert!(
        k.contains(&format!("{mb} dst {}", VTEPS[1])),
        "C learned blue behind B:\n{k}"
    );
    let text = Command::new(bin("vswitch"))
        .args(["fdb", "--socket"])
        .arg(&w.sockets[0])
        .output()
        .expect("vswitch fdb");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("DST") && text.contains(VTEPS[2]),
        "vswitch fdb shows remote VTEPs:\n{text}"
    );

    // ARP suppression covers remote hosts: red's next request for green
    // (behind C) is answered by A itself, not flooded over the tunnel.
    let arp = query(&w, 0, "arp");
    assert!(
        arp["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["ip"] == GREEN && e["port"] == "vxlan0"),
        "A knows green's address behind the tunnel: {arp}"
    );
    let suppressed = |w: &World| {
        query(w, 0, "stats")["arp"]["counters"]["suppressed"]
            .as_u64()
            .unwrap()
    };
    let s0 = suppressed(&w);
    let o = ns_exec(
        &red,
        &["ip", "neigh", "flush", "all"],
        Duration::from_secs(5),
    );
    assert!(o.status.success());
    assert_eq!(ping_loss(&red, GREEN, 2), 0.0);
    assert!(
        suppressed(&w) > s0,
        "red's ARP request for green was answered by A"
    );

    // 200 MB red (A) → blue (B), offloads at their defaults everywhere: red's
    // TSO super-frames leave A in UDP_SEGMENT sends, and the veth underlay
    // carries them whole to B, whose socket gets them coalesced (UDP_GRO).
    let to = |ip: &str, port: u16| SocketAddr::new(ip.parse().unwrap(), port);
    tcp_transfer_via(&red, &blue, to(BLUE, 5001), to(BLUE, 5001), 200 << 20);
    let ta = query(&w, 0, "stats")["tunnels"][0]["counters"].clone();
    let tb = query(&w, 1, "stats")["tunnels"][0]["counters"].clone();
    assert!(
        ta["segmented"].as_u64().unwrap() > 100,
        "super-frames were cut on A: {ta}"
    );
    assert!(
        ta["tx_gso_sends"].as_u64().unwrap() > 100,
        "and sent with UDP_SEGMENT: {ta}"
    );
    assert!(
        tb["rx_coalesced"].as_u64().unwrap() > 100,
        "B merged coalesced receives: {tb}"
    );
    std::thread::sleep(Duration::from_millis(300));
    drop(cap);

    // The first capture: VXLAN with VNI 42, outer source ports per flow.
    let o = run_timeout(
        Command::new("tcpdump").args(["-nn", "-r", &pcap_s, "-c", "50"]),
        Duration::from_secs(20),
    );
    let decoded = String::from_utf8_lossy(&o.stdout);
    assert!(
        decoded.contains("VXLAN") && decoded.contains(&format!("vni {}", multihost::VNI)),
        "tcpdump decodes VXLAN with VNI 42:\n{decoded}"
    );
    let from_vswitch = |recs: &[Rec]| -> Vec<(usize, u16)> {
        recs.iter()
            .filter(|r| r.data.len() >= 38 && r.data[12..14] == [8, 0])
            .filter(|r| {
                let src = Ipv4Addr::new(r.data[26], r.data[27], r.data[28], r.data[29]);
                src.to_string() == VTEPS[0] || src.to_string() == VTEPS[1]
            })
            .map(|r| (r.orig_len, u16::from_be_bytes([r.data[34], r.data[35]])))
            .collect()
    };
    let ours = from_vswitch(&read_pcap(&pcap));
    let sports: std::collections::HashSet<u16> = ours.iter().map(|x| x.1).collect();
    assert!(
        sports.len() >= 4,
        "outer source ports vary across flows: {sports:?}"
    );
    let _ = std::fs::remove_file(&pcap);

    // 200 MB red (A) → green (C) and again to blue, with the underlay as a
    // wire: A's and B's ul0 without UDP segmentation offload, so the kernel
    // cuts each UDP_SEGMENT send at the device and the capture sees every
    // frame as it would leave a NIC: none larger than the underlay MTU.
    for h in ["a", "b"] {
        let o = ns_exec(
            &w.ns(h),
            &["ethtool", "-K", "ul0", "tx-udp-segmentation", "off"],
            Duration::from_secs(10),
        );
        assert!(
            o.status.success(),
            "ethtool: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let cap = Bg::start(
        &w.ns("ul"),
        &[
            "tcpdump", "-i", "ula", "-n", "-s", "64", "-U", "-w", &pcap_s, "udp", "port", "4789",
        ],
        None,
    );
    assert!(
        cap.wait_for("listening on", Duration::from_secs(10)),
        "tcpdump: {}",
        cap.log()
    );
    tcp_transfer_via(&red, &green, to(GREEN, 5002), to(GREEN, 5002), 200 << 20);
    tcp_transfer_via(&red, &blue, to(BLUE, 5003), to(BLUE, 5003), 50 << 20);
    std::thread::sleep(Duration::from_millis(300));
    drop(cap);
    let ours = from_vswitch(&read_pcap(&pcap));
    assert!(
        ours.len() > 20_000,
        "captured {} datagrams from vswitch VTEPs",
        ours.len()
    );
    let biggest = ours.iter().map(|x| x.0).max().unwrap();
    assert!(
        biggest <= 1514,
        "a {biggest}-byte frame on a 1500-MTU underlay"
    );
    assert!(
        biggest >= 1500,
        "bulk datagrams fill the underlay MTU ({biggest})"
    );
    let _ = std::fs::remove_file(&pcap);

    // A MAC moves from host A to host B: blue takes red's MAC and address.
    let ok = |ns: &str, args: &[&str]| {
        let o = ns_exec(ns, args, Duration::from_secs(10));
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    ok(&red, &["ip", "link", "set", "eth0", "down"]);
    ok(&blue, &["ip", "link", "set", "eth0", "down"]);
    ok(&blue, &["ip", "link", "set", "eth0", "address", &mr]);
    ok(&blue, &["ip", "addr", "flush", "dev", "eth0"]);
    ok(
        &blue,
        &["ip", "addr", "add", &format!("{RED}/24"), "dev", "eth0"],
    );
    ok(&blue, &["ip", "link", "set", "eth0", "up"]);
    ok(&blue, &["ip", "route", "add", "default", "via", GATEWAY]);
    // As soon as the moved station talks, A, B and C follow: no ageing wait.
    assert_eq!(ping_loss(&blue, GREEN, 5), 0.0, "moved station -> green");
    assert_eq!(
        ping_loss(&blue, GATEWAY, 5),
        0.0,
        "moved station -> gateway on A"
    );
    assert_eq!(
        ping_loss(&blue, WAN_HOST, 5),
        0.0,
        "moved station -> wan through A"
    );
    assert_eq!(ping_loss(&green, RED, 5), 0.0, "green -> the moved address");
    assert_eq!(
        fdb_dst(&w, 0, &mr).as_deref(),
        Some(VTEPS[1]),
        "A: red's MAC now behind B"
    );
    assert_eq!(
        fdb_dst(&w, 1, &mr).as_deref(),
        Some("-"),
        "B: a local port now"
    );
    let k = kernel_fdb(&w);
    assert!(
        k.contains(&format!("{mr} dst {}", VTEPS[1])),
        "C follows the move:\n{k}"
    );
    let _ = wan;
}

#[test]
fn foreign_vnis_and_vteps_are_dropped_and_counted_and_oversize_frames_too() {
    let Some(w) = world("foreign_vnis_and_vteps_are_dropped_and_counted_and_oversize_frames_too")
    else {
        return;
    };
    let a = SocketAddr::new(VTEPS[0].parse().unwrap(), 4789);
    // From host C (a listed remote) with VNI 99: not ours.
    let vni0 = tunnel_drops(&w, 0, "vxlan-unknown-vni");
    let s = in_ns(&w.ns("c"), || std::net::UdpSocket::bind((VTEPS[2], 0))).unwrap();
    for _ in 0..3 {
        s.send_to(&vxlan_arp(99, [2, 0, 0, 0, 0x99, 1]), a).unwrap();
    }
    // From 10.200.0.9, on the underlay but not in `remotes`, with VNI 42.
    let o = ns_exec(
        &w.ns("ul"),
        &["ip", "addr", "add", "10.200.0.9/24", "dev", "ulbr"],
        Duration::from_secs(5),
    );
    assert!(o.status.success());
    let vtep0 = tunnel_drops(&w, 0, "vxlan-unknown-vtep");
    let s9 = in_ns(&w.ns("ul"), || std::net::UdpSocket::bind(("10.200.0.9", 0))).unwrap();
    for _ in 0..4 {
        s9.send_to(&vxlan_arp(multihost::VNI, [2, 0, 0, 0, 0x99, 2]), a)
            .unwrap();
    }
    // Not VXLAN at all.
    let bad0 = tunnel_drops(&w, 0, "vxlan-bad-header");
    s.send_to(b"hello", a).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while (tunnel_drops(&w, 0, "vxlan-unknown-vtep") < vtep0 + 4
        || tunnel_drops(&w, 0, "vxlan-unknown-vni") < vni0 + 3
        || tunnel_drops(&w, 0, "vxlan-bad-header") < bad0 + 1)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(tunnel_drops(&w, 0, "vxlan-unknown-vni"), vni0 + 3);
    assert_eq!(tunnel_drops(&w, 0, "vxlan-unknown-vtep"), vtep0 + 4);
    assert_eq!(tunnel_drops(&w, 0, "vxlan-bad-header"), bad0 + 1);
    assert_eq!(
        fdb_dst(&w, 0, "02:00:00:00:99:01"),
        None,
        "nothing learned from them"
    );
    assert_eq!(fdb_dst(&w, 0, "02:00:00:00:99:02"), None);
    // A static entry names a VTEP; its datagrams are then accepted.
    let o = Command::new(bin("vswitch"))
        .args([
            "fdb",
            "add",
            "02:00:00:00:99:03",
            "dst",
            "10.200.0.9",
            "--socket",
        ])
        .arg(&w.sockets[0])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        fdb_dst(&w, 0, "02:00:00:00:99:03").as_deref(),
        Some("10.200.0.9")
    );
    // Refused: our own address as a VTEP (frames would loop back to us),
    // deleting an entry under another VTEP, a tunnel entry without its VTEP.
    for (args, says) in [
        (
            &["fdb", "add", "00:00:00:00:00:00", "dst", VTEPS[0]][..],
            "own VTEP",
        ),
        (
            &["fdb", "add", "02:00:00:00:99:05", "dst", VTEPS[0]][..],
            "own VTEP",
        ),
        (
            &["fdb", "del", "02:00:00:00:99:03", "dst", "10.200.0.5"][..],
            "not 10.200.0.5",
        ),
        (
            &["fdb", "add", "02:00:00:00:99:06", "dev", "vxlan0"][..],
            "dst VTEP",
        ),
        (
            &["fdb", "del", "00:00:00:00:00:00", "dst", "10.200.0.77"][..],
            "not a flood VTEP",
        ),
    ] {
        let o = Command::new(bin("vswitch"))
            .args(args)
            .arg("--socket")
            .arg(&w.sockets[0])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(says), "{args:?}: {err}");
    }
    s9.send_to(&vxlan_arp(multihost::VNI, [2, 0, 0, 0, 0x99, 4]), a)
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while fdb_dst(&w, 0, "02:00:00:00:99:04").is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        fdb_dst(&w, 0, "02:00:00:00:99:04").as_deref(),
        Some("10.200.0.9")
    );

    // Switched: a 1500-byte IP packet (no GSO) from red cannot cross a
    // 1450-byte overlay: dropped and counted, never fragmented or sent.
    let (red, blue) = (w.ns("red"), w.ns("blue"));
    assert_eq!(ping_loss(&red, BLUE, 2), 0.0);
    let mb = mac_bytes(&mac_of(&blue, "eth0"));
    let mr = mac_bytes(&mac_of(&red, "eth0"));
    let mut f = vec![0u8; 14 + 1500];
    f[..6].copy_from_slice(&mb);
    f[6..12].copy_from_slice(&mr);
    f[12..14].copy_from_slice(&[8, 0]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&1500u16.to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[192, 168, 50, 1]);
    f[30..34].copy_from_slice(&[192, 168, 50, 2]);
    // (red's link takes 1500 bytes for this: an MTU misconfigured on one end.)
    for (ns, dev) in [(&red, "eth0"), (&w.ns("a"), "sw-red")] {
        let o = ns_exec(
            ns,
            &["ip", "link", "set", dev, "mtu", "1500"],
            Duration::from_secs(5),
        );
        assert!(o.status.success());
    }
    let big0 = tunnel_drops(&w, 0, "vxlan-too-big");
    let mut port = packet_socket(&red, "eth0");
    assert_eq!(send_frames(&mut port, &[f.clone(), f]), 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while tunnel_drops(&w, 0, "vxlan-too-big") < big0 + 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(tunnel_drops(&w, 0, "vxlan-too-big"), big0 + 2);

    // Routed: a DF datagram from wan forwarded (DNAT) to blue behind the
    // tunnel is too big for the overlay: the gateway answers "fragmentation needed".
    let fn0 = query(&w, 0, "stats")["gateway"]["counters"]["frag_needed"]
        .as_u64()
        .unwrap();
    // python's socket with IP_MTU_DISCOVER (10) = IP_PMTUDISC_DO (2): the
    // first datagram leaves, the gateway's answer lowers the path MTU, the
    // second send is refused by the sender's own kernel (EMSGSIZE).
    let script = r#"
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 10, 2)
s.connect(('203.0.113.1', 9000))
s.send(bytes(1472))
for i in range(40):
    time.sleep(0.1)
    try:
        s.send(bytes(1472))
    except OSError as e:
        print('refused', e.errno, s.getsockopt(socket.IPPROTO_IP, 14))
        break
"#;
    let o = ns_exec(
        &w.ns("wan"),
        &["python3", "-c", script],
        Duration::from_secs(15),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    // errno 90 is EMSGSIZE; option 14 is IP_MTU, the path MTU the kernel learned.
    assert_eq!(
        out.trim(),
        "refused 90 1450",
        "the sender learned the overlay's MTU"
    );
    let fnd = query(&w, 0, "stats")["gateway"]["counters"]["frag_needed"]
        .as_u64()
        .unwrap();
    assert!(fnd > fn0, "the gateway sent fragmentation needed");
}

/// An underlay: a bridge in `{p}-ul` and hosts `{p}-ha`, `-hb`, `-hc`
/// (namespaces the caller made), each with `ul0` at `{net}.1`, `.2`, `.3`/24.
fn underlay(p: &str, net: &str) {
    let sh = |l: String| multihost::sh(&l).unwrap_or_else(|e| panic!("{e}"));
    sh(format!("ip -n {p}-ul link add ulbr type bridge"));
    sh(format!("ip -n {p}-ul link set ulbr up"));
    for (h, a) in [("ha", 1), ("hb", 2), ("hc", 3)] {
        sh(format!(
            "ip -n {p}-ul link add u{h} type veth peer name ul0 netns {p}-{h}"
        ));
        sh(format!("ip -n {p}-ul link set u{h} master ulbr up"));
        sh(format!("ip -n {p}-{h} addr add {net}.{a}/24 dev ul0"));
        sh(format!("ip -n {p}-{h} link set ul0 up"));
    }
}

/// Namespaces a test made itself, deleted on drop.
struct Netns(Vec<String>);

impl Drop for Netns {
    fn drop(&mut self) {
        for n in self.0.iter().rev() {
            let _ = netns_setup::netns::delete(n);
            let _ =
                std::fs::remove_file(std::path::Path::new(netns_setup::setup::OWNER_DIR).join(n));
        }
    }
}

#[test]
fn a_vlan_to_vni_map_carries_each_vlan_in_its_own_vni() {
    if !require_root("a_vlan_to_vni_map_carries_each_vlan_in_its_own_vni") {
        return;
    }
    let p = format!("vv{}", uniq());
    let ns = |s: &str| format!("{p}-{s}");
    let mut made = Netns(Vec::new());
    for n in ["ul", "ha", "hb", "hc", "c20"] {
        netns_setup::netns::create(&ns(n)).unwrap();
        made.0.push(ns(n));
    }
    let sh = |l: String| multihost::sh(&l).unwrap_or_else(|e| panic!("{e}"));
    underlay(&p, "10.201.0");
    // Host C: a kernel VTEP for VNI 5020 only, with c20 (VLAN 20's subnet).
    let (c, c20) = (ns("hc"), ns("c20"));
    let k = multihost::KernelVtep {
        host: &c,
        endpoint: &c20,
        veth: "sw-c20",
        vni: 5020,
        port: 4789,
        local: "10.201.0.3",
        remotes: &["10.201.0.1", "10.201.0.2"],
        address: "10.9.0.5/24",
        gateway: None,
    };
    for l in k.commands() {
        sh(l);
    }
    // Hosts A and B: one namespace in VLAN 10 and one in VLAN 20 each, all
    // on one subnet (only the VLANs keep them apart); one trunk tunnel.
    let topo = |h: &str, me: u8, peer: u8, a: u8| {
        format!(
            r#"name = "{p}-{h}"
[switch]
name = "vsw-{h}"
netns = "{p}-h{h}"
[[namespace]]
name = "{p}-{h}10"
address = "10.9.0.{a}/24"
ifname = "eth0"
switch_ifname = "sw-10"
vlan = 10
[[namespace]]
name = "{p}-{h}20"
address = "10.9.0.{b}/24"
ifname = "eth0"
switch_ifname = "sw-20"
vlan = 20
[[tunnel]]
kind = "vxlan"
local = "10.201.0.{me}"
device = "ul0"
remotes = ["10.201.0.{peer}", "10.201.0.3"]
vlan_vni = {{ 10 = 5010, 20 = 5020 }}
"#,
            b = a + 1
        )
    };
    let ta = TopoGuard::new(&topo("a", 1, 2, 1));
    let tb = TopoGuard::new(&topo("b", 2, 1, 3));
    netns_setup::setup::adopt(&ns("ha"), &ta.topo.name).unwrap();
    netns_setup::setup::adopt(&ns("hb"), &tb.topo.name).unwrap();
    made.0.retain(|n| *n != ns("ha") && *n != ns("hb"));
    let state = std::env::temp_dir().join(format!("vswitch-e2e-{p}-a.state"));
    let keep = ["--keep", "--state-file", state.to_str().unwrap()];
    let mut sa = SwitchProc::start_with(&ta, &keep);
    let _sb = SwitchProc::start(&tb);
    // a10 .1, a20 .2, b10 .3, b20 .4, c20 .5: each VLAN reaches its own, in its VNI.
    assert_eq!(
        ping_loss(&ns("a10"), "10.9.0.3", 4),
        0.0,
        "VLAN 10 across A and B"
    );
    assert_eq!(
        ping_loss(&ns("a20"), "10.9.0.4", 4),
        0.0,
        "VLAN 20 across A and B"
    );
    assert_eq!(
        ping_loss(&ns("b20"), "10.9.0.5", 4),
        0.0,
        "VLAN 20 is VNI 5020 on the wire: C's kernel VTEP"
    );
    assert_eq!(
        ping_loss(&ns("a10"), "10.9.0.4", 2),
        100.0,
        "VLAN 10 does not reach VLAN 20"
    );
    assert_eq!(
        ping_loss(&ns("a10"), "10.9.0.5", 2),
        100.0,
        "nor VNI 5020 on C"
    );
    // Offloads across the trunk too: TCP with equal sha256 both VLANs.
    let to = |ip: &str, port: u16| SocketAddr::new(ip.parse().unwrap(), port);
    tcp_transfer_via(
        &ns("a10"),
        &ns("b10"),
        to("10.9.0.3", 5010),
        to("10.9.0.3", 5010),
        20 << 20,
    );
    tcp_transfer_via(
        &ns("b20"),
        &ns("c20"),
        to("10.9.0.5", 5020),
        to("10.9.0.5", 5020),
        20 << 20,
    );

    // A live reload (a new ACL) keeps the tunnel's VLAN roles: both VLANs still cross.
    let mut text = std::fs::read_to_string(&ta.path).unwrap();
    text.push_str("[[acl]]\nname = \"allow-all\"\naction = \"allow\"\n");
    std::fs::write(&ta.path, text).unwrap();
    let o = Command::new(bin("vswitch"))
        .args(["reload", "--socket"])
        .arg(&sa.socket)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "reload: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        ping_loss(&ns("a10"), "10.9.0.3", 3),
        0.0,
        "VLAN 10 after a reload"
    );
    assert_eq!(
        ping_loss(&ns("a20"), "10.9.0.4", 3),
        0.0,
        "VLAN 20 after a reload"
    );

    // What a control plane set survives a restart: a static MAC behind a
    // VTEP (in VLAN 20) and a flood VTEP added at run time.
    for args in [
        &[
            "fdb",
            "add",
            "02:00:00:00:00:77",
            "dst",
            "10.201.0.9",
            "vlan",
            "20",
        ][..],
        &["fdb", "add", "00:00:00:00:00:00", "dst", "10.201.0.8"][..],
    ] {
        let o = Command::new(bin("vswitch"))
            .args(args)
            .arg("--socket")
            .arg(&sa.socket)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert!(sa.stop(), "SIGTERM with --keep: a clean exit, state saved");
    let sa = SwitchProc::start_with(&ta, &keep);
    let fdb = sa.cli_json("fdb");
    let e = fdb["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["mac"] == "02:00:00:00:00:77");
    assert_eq!(
        e.map(|e| (e["dst"].clone(), e["static"].clone(), e["vlan"].clone())),
        Some(("10.201.0.9".into(), true.into(), 20.into())),
        "{fdb}"
    );
    let st = sa.cli_json("stats");
    let flood = &st["tunnels"][0]["flood"];
    assert!(
        flood.as_array().unwrap().iter().any(|v| v == "10.201.0.8"),
        "{flood}"
    );
    assert_eq!(
        ping_loss(&ns("a20"), "10.9.0.4", 3),
        0.0,
        "forwarding after the restart"
    );
    drop(sa);
    let _ = std::fs::remove_file(&state);
}

#[test]
fn the_underlay_address_up_adds_is_removed_by_down_and_by_a_failed_up() {
    if !require_root("the_underlay_address_up_adds_is_removed_by_down_and_by_a_failed_up") {
        return;
    }
    let p = format!("vu{}", uniq());
    let host = format!("{p}-h");
    let _made = Netns(vec![host.clone(), format!("{p}-x")]);
    netns_setup::netns::create(&host).unwrap();
    netns_setup::netns::create(&format!("{p}-x")).unwrap();
    multihost::sh(&format!(
        "ip -n {host} link add ul0 type veth peer name ul1 netns {p}-x"
    ))
    .unwrap();
    let topo = |extra: &str| {
        netns_setup::Topology::parse(
            &format!(
                r#"name = "{p}"
[switch]
netns = "{host}"
[[namespace]]
name = "{p}-n"
address = "10.9.1.1/24"
ifname = "eth0"
switch_ifname = "sw-n"
[[tunnel]]
kind = "vxlan"
vni = 7
local = "10.202.0.1/24"
device = "ul0"
remotes = ["10.202.0.2"]
{extra}
"#
            ),
            "t",
        )
        .unwrap()
    };
    let has = || {
        let o = ns_exec(
            &host,
            &["ip", "-4", "-o", "addr", "show", "dev", "ul0"],
            Duration::from_secs(5),
        );
        String::from_utf8_lossy(&o.stdout).contains("10.202.0.1/24")
    };
    // A failed `up` (an overlay MTU the underlay cannot carry) leaves nothing.
    netns_setup::setup::adopt(&host, &p).unwrap();
    let e = netns_setup::up(&topo("mtu = 9000")).expect_err("mtu 9000 over a 1500 underlay");
    assert!(e.to_string().contains("at most 1450"), "{e}");
    assert!(!has(), "a failed up removed the address it added");
    // `up` adds it; `down` removes it and leaves the device (the host's).
    netns_setup::setup::adopt(&host, &p).unwrap();
    let t = topo("");
    netns_setup::up(&t).expect("up");
    assert!(has(), "up added local to ul0");
    let mtu = links_in(&format!("{p}-n"))
        .into_iter()
        .find(|l| l.name != "lo")
        .unwrap()
        .mtu;
    assert_eq!(mtu, 1450, "the overlay MTU on the namespace up created");
    // Keep the switch namespace (ours, not the topology's) to look at it after `down`.
    let _ = std::fs::remove_file(std::path::Path::new(netns_setup::setup::OWNER_DIR).join(&host));
    let r = netns_setup::down(&t);
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    assert!(!has(), "down removed the address: {:?}", r.removed);
    assert!(
        links_in(&host).iter().any(|l| l.name == "ul0"),
        "the device stays"
    );
}

#[test]
fn two_tunnels_on_one_switch_bridge_two_kernel_vteps() {
    if !require_root("two_tunnels_on_one_switch_bridge_two_kernel_vteps") {
        return;
    }
    let p = format!("vt{}", uniq());
    let ns = |s: &str| format!("{p}-{s}");
    let mut made = Netns(Vec::new());
    for n in ["ul", "ha", "hb", "hc", "b1", "c1"] {
        netns_setup::netns::create(&ns(n)).unwrap();
        made.0.push(ns(n));
    }
    let sh = |l: String| multihost::sh(&l).unwrap_or_else(|e| panic!("{e}"));
    underlay(&p, "10.203.0");
    // Two Linux hosts: VNI 7 on the IANA port (B), VNI 8 on port 4790 (C).
    for (h, n, vni, port, addr) in [("hb", "b1", 7, 4789, 2), ("hc", "c1", 8, 4790, 3)] {
        let (h, n) = (ns(h), ns(n));
        let k = multihost::KernelVtep {
            host: &h,
            endpoint: &n,
            veth: "sw-n",
            vni,
            port,
            local: &format!("10.203.0.{addr}"),
            remotes: &["10.203.0.1"],
            address: &format!("10.9.2.{addr}/24"),
            gateway: None,
        };
        for l in k.commands() {
            sh(l);
        }
    }
    // Host A: vswitch with a1 and two tunnels, one to each.
    let t = TopoGuard::new(&format!(
        r#"name = "{p}-a"
[switch]
name = "vsw-a"
netns = "{p}-ha"
[[namespace]]
name = "{p}-a1"
address = "10.9.2.1/24"
ifname = "eth0"
switch_ifname = "sw-a1"
[[tunnel]]
kind = "vxlan"
name = "to-b"
vni = 7
local = "10.203.0.1"
device = "ul0"
remotes = ["10.203.0.2"]
[[tunnel]]
kind = "vxlan"
name = "to-c"
vni = 8
port = 4790
local = "10.203.0.1"
device = "ul0"
remotes = ["10.203.0.3"]
"#
    ));
    netns_setup::setup::adopt(&ns("ha"), &t.topo.name).unwrap();
    made.0.retain(|n| *n != ns("ha"));
    let sw = SwitchProc::start(&t);
    assert_eq!(
        ping_loss(&ns("a1"), "10.9.2.2", 4),
        0.0,
        "a1 -> b1 over to-b (VNI 7)"
    );
    assert_eq!(
        ping_loss(&ns("a1"), "10.9.2.3", 4),
        0.0,
        "a1 -> c1 over to-c (VNI 8, port 4790)"
    );
    // The switch joins the two overlays as one segment, as a bridge with two vxlan devices would.
    assert_eq!(
        ping_loss(&ns("b1"), "10.9.2.3", 4),
        0.0,
        "b1 -> c1 through host A"
    );
    let fdb = sw.cli_json("fdb");
    let port_of = |ip: &str| -> String {
        let mac = mac_of(&ns(ip), "eth0");
        let e = fdb["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["mac"] == mac.as_str())
            .cloned();
        e.map(|e| {
            format!(
                "{} {}",
                e["port"].as_str().unwrap(),
                e["dst"].as_str().unwrap_or("-")
            )
        })
        .unwrap_or_default()
    };
    assert_eq!(port_of("b1"), "to-b 10.203.0.2");
    assert_eq!(port_of("c1"), "to-c 10.203.0.3");
    let st = sw.cli_json("stats");
    let names: Vec<&str> = st["tunnels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["to-b", "to-c"]);
}
