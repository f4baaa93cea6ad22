//! End to end: the switch with `[switch] io = "ring"` (TPACKET_V2 rings)
//! forwards, routes through the NAT and passes TSO super-frames whole; and
//! the kernel's receive drops show per port in `vswitch stats`, for both
//! port I/O kinds.

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
    let nt = nat_topo_with(2, "io = \"ring\"\n", "", "", "");
    let sw = SwitchProc::start(&nt.topo);
    // Each AF_PACKET port (red, blue, uplink) maps its 8 MiB of rings.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", sw.pid())).unwrap();
    let rings = maps
        .lines()
        .filter(|l| l.contains("socket:"))
        .filter(|l| {
            let r = l.split_whitespace().next().unwrap();
            let (a, b) = r.split_once('-').unwrap();
            let len = u64::from_str_radix(b, 16).unwrap() - u64::from_str_radix(a, 16).unwrap();
            len == 8 << 20
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
    let red_drops = &port(&after, &red.port)["drops"];
    assert_eq!(red_drops["truncated"], 0, "{red_drops}");
    assert_eq!(red_drops["tx-error"], 0, "{red_drops}");
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
    let (toml, m, _) = star(&id, &[Kind::Veth, Kind::Veth], &format!("io = \"{io}\"\n"));
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
