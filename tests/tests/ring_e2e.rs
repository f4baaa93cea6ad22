//! End to end: the switch with `[switch] io = "ring"` (TPACKET_V2 rings)
//! forwards, routes through the NAT and passes TSO super-frames whole, also
//! after a link went down with super-frames queued; and the kernel's receive
//! drops show per port in `vswitch stats`, for both port I/O kinds. The
//! kernel fast path is off here: these tests are about the switch's own I/O.

use e2e::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use std::time::{Duration, Instant};

/// These tests move bulk data or flood: one at a time (2 cores).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn port<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["ports"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no port {name} in {stats}"))
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"))
}

#[test]
fn ring_io_forwards_routes_and_passes_super_frames_whole() {
    if !require_root("ring_io_forwards_routes_and_passes_super_frames_whole") {
        return;
    }
    let _s = serial();
    let nt = nat_topo_with(2, "io = \"ring\"\nfastpath = \"off\"\n", "", "", "");
    let sw = SwitchProc::start(&nt.topo);
    // Each AF_PACKET port (red, blue, uplink) maps its 5 MiB of rings.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", sw.pid())).unwrap();
    let rings = maps
        .lines()
        .filter(|l| l.contains("socket:"))
        .filter(|l| {
            let r = l.split_whitespace().next().unwrap();
            let (a, b) = r.split_once('-').unwrap();
            let len = u64::from_str_radix(b, 16).unwrap() - u64::from_str_radix(a, 16).unwrap();
            len == 5 << 20
        })
        .count();
    assert_eq!(rings, 3, "ring mappings in {maps}");
    let (red, blue, wan) = (&nt.red, &nt.blue, &nt.wan);
    assert_eq!(ping_loss(&red.ns, &blue.ip, 3), 0.0, "red -> blue");
    assert_eq!(ping_loss(&blue.ns, &red.ip, 3), 0.0, "blue -> red");
    assert_eq!(ping_loss(&red.ns, WAN_HOST, 3), 0.0, "red -> wan via NAT");

    // Bulk TCP with TSO on (the veth default): bytes arrive intact, switched
    // and through the NAT.
    let before = sw.cli_json("stats");
    tcp_transfer(red, blue, 5201, 64 << 20);
    tcp_transfer(red, wan, 5202, 32 << 20);
    let after = sw.cli_json("stats");

    // The frames the switch received from red were TSO super-frames, not
    // 1514-byte segments: the mean received frame is several MTUs long, and
    // as many bytes left towards blue and the uplink as came in.
    let d = |k: &str, p: &str| u(port(&after, p), k) - u(port(&before, p), k);
    let (pkts, bytes) = (d("rx_packets", &red.port), d("rx_bytes", &red.port));
    assert!(bytes >= 96 << 20, "red sent {bytes} bytes");
    let mean = bytes / pkts.max(1);
    eprintln!("red -> switch: {pkts} frames, {bytes} bytes, mean {mean} bytes");
    assert!(
        mean > 3 * 1514,
        "mean frame {mean} bytes: super-frames did not pass whole"
    );
    let tx = d("tx_bytes", &blue.port) + d("tx_bytes", &wan.port);
    assert!(tx >= 96 << 20, "only {tx} bytes sent on");
    // Red's port received the bulk (TSO super-frames through the RX ring's
    // copy path) and lost none of it; blue's and the uplink's ports sent it
    // through their TX rings and refused none.
    let red_drops = &port(&after, &red.port)["drops"];
    assert_eq!(red_drops["truncated"], 0, "{red_drops}");
    let lost = red_drops["kernel-rx-dropped"].as_u64().unwrap_or(0);
    assert!(lost <= 16, "red's port lost {lost} frames: {red_drops}");
    for p in [&blue.port, &wan.port] {
        let drops = &port(&after, p)["drops"];
        assert_eq!(drops["tx-error"], 0, "{p}: {drops}");
    }
}

/// `io = "mmsg"` (no longer the default) still switches, routes and passes
/// super-frames whole, and maps no ring.
#[test]
fn mmsg_io_forwards_routes_and_passes_super_frames_whole() {
    if !require_root("mmsg_io_forwards_routes_and_passes_super_frames_whole") {
        return;
    }
    let _s = serial();
    let nt = nat_topo_with(2, "io = \"mmsg\"\nfastpath = \"off\"\n", "", "", "");
    let sw = SwitchProc::start(&nt.topo);
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", sw.pid())).unwrap();
    assert!(
        !maps.lines().any(|l| l.contains("socket:")),
        "a ring is mapped with io = mmsg: {maps}"
    );
    let (red, blue, wan) = (&nt.red, &nt.blue, &nt.wan);
    assert_eq!(ping_loss(&red.ns, &blue.ip, 2), 0.0, "red -> blue");
    assert_eq!(ping_loss(&red.ns, WAN_HOST, 2), 0.0, "red -> wan via NAT");
    let before = sw.cli_json("stats");
    tcp_transfer(red, blue, 5211, 16 << 20);
    tcp_transfer(red, wan, 5212, 16 << 20);
    let after = sw.cli_json("stats");
    let d = |k: &str, p: &str| u(port(&after, p), k) - u(port(&before, p), k);
    let (pkts, bytes) = (d("rx_packets", &red.port), d("rx_bytes", &red.port));
    let mean = bytes / pkts.max(1);
    eprintln!("mmsg: red -> switch: {pkts} frames, {bytes} bytes, mean {mean} bytes");
    assert!(bytes >= 32 << 20, "red sent {bytes} bytes");
    assert!(mean > 3 * 1514, "mean frame {mean} bytes");
}

/// Sends SIGCONT to the stopped switch when dropped, whatever happens.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

/// Stop the switch (SIGSTOP, our own child) for 1 s while red floods UDP
/// towards blue: the port's queue or ring overflows in the kernel, and
/// `stats` names those drops on red's port.
fn kernel_drops_are_counted(io: &str) {
    let test = format!("kernel_rx_drops_are_visible_per_port ({io})");
    if !require_root(&test) {
        return;
    }
    let _s = serial();
    let id = uniq();
    let (toml, m, _) = star(
        &id,
        &[Kind::Veth, Kind::Veth],
        &format!("io = \"{io}\"\nfastpath = \"off\"\n"),
    );
    let topo = TopoGuard::new(&toml);
    let sw = SwitchProc::start(&topo);
    let (red, blue) = (&m[0], &m[1]);
    assert_eq!(ping_loss(&red.ns, &blue.ip, 2), 0.0, "red -> blue");
    let st = sw.cli_json("stats");
    assert_eq!(
        port(&st, &red.port)["drops"]["kernel-rx-dropped"],
        0,
        "{io}: no drops before the flood"
    );
    let dst: std::net::SocketAddr = format!("{}:9", blue.ip).parse().unwrap();
    let sent = {
        let pid = sw.pid() as i32;
        kill(Pid::from_raw(pid), Signal::SIGSTOP).expect("SIGSTOP the switch");
        let _resume = Resume(pid);
        in_ns(&red.ns, move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_nonblocking(true).unwrap();
            let (t, mut n) = (Instant::now(), 0u64);
            while t.elapsed() < Duration::from_secs(1) {
                for _ in 0..64 {
                    n += u64::from(s.send_to(&[0u8; 18], dst).is_ok());
                }
            }
            n
        })
    };
    // Resumed: the worker reads what was queued, then answers.
    std::thread::sleep(Duration::from_millis(300));
    let st = sw.cli_json("stats");
    let dropped = port(&st, &red.port)["drops"]["kernel-rx-dropped"]
        .as_u64()
        .unwrap();
    eprintln!("{io}: {sent} datagrams sent while stopped, kernel dropped {dropped}");
    assert!(
        dropped > 0,
        "{io}: {sent} sent while stopped, no kernel drop counted: {st}"
    );
    assert!(dropped <= sent, "{io}: {dropped} > {sent}");
    let text = sw.cli_text("stats");
    assert!(
        text.lines()
            .any(|l| l.contains(&red.port) && l.contains("kernel-rx-dropped")),
        "{text}"
    );
    // Counted once: asking again adds nothing while nothing is dropped.
    let again = sw.cli_json("stats");
    assert_eq!(
        port(&again, &red.port)["drops"]["kernel-rx-dropped"],
        dropped,
        "{io}"
    );
}

#[test]
fn kernel_rx_drops_are_visible_per_port_mmsg() {
    kernel_drops_are_counted("mmsg");
}

#[test]
fn kernel_rx_drops_are_visible_per_port_ring() {
    kernel_drops_are_counted("ring");
}

/// Bytes queued on the switch's packet sockets (`Rmem` of
/// `/proc/net/packet` in its namespace).
fn queued_bytes(sw_ns: &str) -> u64 {
    let o = ns_exec(sw_ns, &["cat", "/proc/net/packet"], Duration::from_secs(10));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(6)?.parse::<u64>().ok())
        .sum()
}

/// Percent of a core the switch used over `secs` seconds.
fn idle_pct(sw: &SwitchProc, secs: u64) -> f64 {
    let (t0, c0) = (Instant::now(), cpu_ns(sw.pid()));
    std::thread::sleep(Duration::from_secs(secs));
    let used = (cpu_ns(sw.pid()) - c0) as f64 / 1e9;
    100.0 * used / t0.elapsed().as_secs_f64()
}

/// A link that goes down while super-frame copies wait on the ring port's
/// socket: the kernel sets a socket error (ENETDOWN), which the next `recv`
/// returns before taking anything off the queue. The switch must still take
/// each copy for its own slot: afterwards nothing stays queued, the idle
/// switch costs nothing, and a transfer arrives intact.
#[test]
fn ring_link_down_with_queued_super_frames_leaves_nothing_stale() {
    if !require_root("ring_link_down_with_queued_super_frames_leaves_nothing_stale") {
        return;
    }
    need_program("iperf3");
    let _s = serial();
    let id = uniq();
    let (toml, m, sw_ns) = star(
        &id,
        &[Kind::Veth, Kind::Veth],
        "io = \"ring\"\nfastpath = \"off\"\n",
    );
    let topo = TopoGuard::new(&toml);
    let sw = SwitchProc::start(&topo);
    let (red, blue) = (&m[0], &m[1]);
    assert_eq!(ping_loss(&red.ns, &blue.ip, 2), 0.0, "red -> blue");

    let srv = iperf3_server(&blue.ns, &blue.ip, 5311);
    let mut cli = Bg::start(
        &red.ns,
        &["iperf3", "-c", &blue.ip, "-p", "5311", "-t", "3"],
        None,
    );
    std::thread::sleep(Duration::from_millis(800));
    let ip = |state: &str| {
        let o = ns_exec(
            &sw_ns,
            &["ip", "link", "set", &red.port, state],
            Duration::from_secs(10),
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    {
        // Stopped under the stream, red's ring fills with super-frames whose
        // copies wait on the socket; the link goes down before the switch
        // reads them.
        let pid = sw.pid() as i32;
        kill(Pid::from_raw(pid), Signal::SIGSTOP).expect("SIGSTOP the switch");
        let _resume = Resume(pid);
        std::thread::sleep(Duration::from_millis(300));
        ip("down");
    }
    std::thread::sleep(Duration::from_millis(100));
    ip("up");
    let deadline = Instant::now() + Duration::from_secs(20);
    while cli.running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!cli.running(), "iperf3 client still running: {}", cli.log());
    drop(cli);
    drop(srv);
    assert_eq!(
        ping_loss(&red.ns, &blue.ip, 3),
        0.0,
        "red -> blue after down/up"
    );

    std::thread::sleep(Duration::from_millis(500));
    let queued = queued_bytes(&sw_ns);
    let pct = idle_pct(&sw, 3);
    eprintln!("after down/up: {queued} bytes queued, idle {pct:.2} % of a core");
    assert_eq!(queued, 0, "copies left queued on the switch's sockets");
    assert!(pct <= 1.0, "idle switch used {pct:.2} % of a core");
    // Each copy went to its own slot: the backstop that drops copies of no
    // slot had nothing to do.
    let log = sw.log_text();
    assert!(!log.contains("belonged to no ring slot"), "{log}");

    // Super-frames still pass whole and in order.
    tcp_transfer(red, blue, 5312, 32 << 20);
    std::thread::sleep(Duration::from_millis(300));
    let queued = queued_bytes(&sw_ns);
    let pct = idle_pct(&sw, 2);
    eprintln!("after a transfer: {queued} bytes queued, idle {pct:.2} % of a core");
    assert_eq!(queued, 0, "copies left queued after the transfer");
    assert!(pct <= 1.0, "idle switch used {pct:.2} % of a core");
}
