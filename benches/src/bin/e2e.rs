//! End-to-end benchmark: the seed topology built twice in private namespaces —
//! the kernel reference (bridge `v-net-0` + iptables MASQUERADE/DNAT, as the
//! tutorial does it) and vswitch — measured in the same run, interleaved, for
//! several rounds. Prints a table of medians with the vswitch/kernel ratio,
//! writes JSON and an SVG chart.
//!
//! `cargo run --release -p benches --bin e2e -- [--rounds N] [--secs S] [--out DIR] [--busy-poll-us N] [--install]`
//!
//! Needs root, iperf3, ping and iptables (`--install` installs missing Debian
//! packages with apt-get). Leaves no namespace behind, also on Ctrl-C.

use benches::{Bg, Cleanup, cpu_busy_jiffies, proc_cpu_jiffies, sh, sh_ok};
use serde_json::{Value, json};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const RED: &str = "192.168.15.1";
const BLUE: &str = "192.168.15.2";
const WAN: &str = "203.0.113.10";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Setup {
    Kernel,
    Vswitch,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Kernel => "kernel",
            Setup::Vswitch => "vswitch",
        }
    }
}

/// Namespace names of one setup.
struct Names {
    red: String,
    blue: String,
    wan: String,
    sw: String,
}

fn names(tag: &str) -> Names {
    Names {
        red: format!("{tag}-red"),
        blue: format!("{tag}-blue"),
        wan: format!("{tag}-wan"),
        sw: format!("{tag}-sw"),
    }
}

/// The kernel reference: bridge + iptables inside private namespaces.
fn build_kernel(n: &Names, cleanup: &Cleanup) {
    for ns in [&n.red, &n.blue, &n.wan, &n.sw] {
        sh_ok(&["ip", "netns", "add", ns]);
        cleanup.add_netns(ns);
        sh_ok(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    let sw = n.sw.as_str();
    sh_ok(&["ip", "-n", sw, "link", "add", "v-net-0", "type", "bridge"]);
    sh_ok(&["ip", "-n", sw, "link", "set", "v-net-0", "up"]);
    sh_ok(&[
        "ip",
        "-n",
        sw,
        "addr",
        "add",
        "192.168.15.5/24",
        "dev",
        "v-net-0",
    ]);
    for (ns, ip, short) in [(&n.red, RED, "red"), (&n.blue, BLUE, "blue")] {
        let br_end = format!("veth-{short}-br");
        let end = format!("veth-{short}");
        sh_ok(&[
            "ip", "-n", sw, "link", "add", &br_end, "type", "veth", "peer", "name", &end, "netns",
            ns,
        ]);
        sh_ok(&[
            "ip", "-n", sw, "link", "set", &br_end, "master", "v-net-0", "up",
        ]);
        sh_ok(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            &end,
        ]);
        sh_ok(&["ip", "-n", ns, "link", "set", &end, "up"]);
        sh_ok(&[
            "ip",
            "-n",
            ns,
            "route",
            "add",
            "default",
            "via",
            "192.168.15.5",
        ]);
    }
    sh_ok(&[
        "ip",
        "-n",
        sw,
        "link",
        "add",
        "veth-wan-br",
        "type",
        "veth",
        "peer",
        "name",
        "veth-wan",
        "netns",
        &n.wan,
    ]);
    sh_ok(&[
        "ip",
        "-n",
        sw,
        "addr",
        "add",
        "203.0.113.1/24",
        "dev",
        "veth-wan-br",
    ]);
    sh_ok(&["ip", "-n", sw, "link", "set", "veth-wan-br", "up"]);
    sh_ok(&[
        "ip",
        "-n",
        &n.wan,
        "addr",
        "add",
        &format!("{WAN}/24"),
        "dev",
        "veth-wan",
    ]);
    sh_ok(&["ip", "-n", &n.wan, "link", "set", "veth-wan", "up"]);
    // Inside the private bridge namespace only: forwarding and the tutorial's NAT rules.
    sh_ok(&[
        "ip",
        "netns",
        "exec",
        sw,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    sh_ok(&[
        "ip",
        "netns",
        "exec",
        sw,
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "192.168.15.0/24",
        "-j",
        "MASQUERADE",
    ]);
    sh_ok(&[
        "ip",
        "netns",
        "exec",
        sw,
        "iptables",
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-p",
        "tcp",
        "--dport",
        "80",
        "-j",
        "DNAT",
        "--to-destination",
        "192.168.15.2:80",
    ]);
}

fn vswitch_toml(n: &Names, tag: &str, busy_poll_us: Option<u64>) -> String {
    let busy = busy_poll_us
        .map(|b| format!("busy_poll_us = {b}\n"))
        .unwrap_or_default();
    format!(
        r#"name = "{tag}"
[switch]
netns = "{sw}"
{busy}[[namespace]]
name = "{red}"
address = "{RED}/24"
gateway = "192.168.15.5"
ifname = "veth-red"
switch_ifname = "veth-red-br"
[[namespace]]
name = "{blue}"
address = "{BLUE}/24"
gateway = "192.168.15.5"
ifname = "veth-blue"
switch_ifname = "veth-blue-br"
[gateway]
address = "192.168.15.5/24"
[uplink]
netns = "{wan}"
address = "203.0.113.1/24"
peer_addresses = ["{WAN}/24"]
ifname = "veth-wan"
switch_ifname = "veth-wan-br"
[[masquerade]]
source = "192.168.15.0/24"
[[dnat]]
protocol = "tcp"
port = 80
to = "192.168.15.2:80"
[nat]
# The kernel's MASQUERADE has no per-host rate limit: measure on the same footing.
new_flows_per_host = 0
"#,
        sw = n.sw,
        red = n.red,
        blue = n.blue,
        wan = n.wan
    )
}

/// iperf3 from `ns` to `dst` for `secs` with `streams`; Gbit/s received.
fn iperf(ns: &str, dst: &str, secs: u64, streams: u32) -> f64 {
    let out = sh(
        &[
            "ip",
            "netns",
            "exec",
            ns,
            "iperf3",
            "-c",
            dst,
            "-t",
            &secs.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
            "--connect-timeout",
            "3000",
        ],
        Duration::from_secs(secs + 20),
    );
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .unwrap_or(0.0)
}

/// 64-byte frames from red to blue for `secs`; frames per second received at blue.
fn frame_rate(n: &Names, secs: u64) -> f64 {
    let rx = |ns: &str| -> u64 {
        sh(
            &[
                "ip",
                "netns",
                "exec",
                ns,
                "cat",
                "/sys/class/net/veth-blue/statistics/rx_packets",
            ],
            Duration::from_secs(10),
        )
        .trim()
        .parse()
        .unwrap_or(0)
    };
    let mac = |ns: &str, ifname: &str| -> [u8; 6] {
        let s = sh(
            &[
                "ip",
                "netns",
                "exec",
                ns,
                "cat",
                &format!("/sys/class/net/{ifname}/address"),
            ],
            Duration::from_secs(10),
        );
        let v: Vec<u8> = s
            .trim()
            .split(':')
            .filter_map(|h| u8::from_str_radix(h, 16).ok())
            .collect();
        v.try_into().unwrap_or([0; 6])
    };
    let (src, dst) = (mac(&n.red, "veth-red"), mac(&n.blue, "veth-blue"));
    // Ethernet + IPv4 + UDP to blue's discard port, 60 bytes (64 on the wire with FCS).
    let mut f = vec![0u8; 60];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..34];
    ip.copy_from_slice(&[
        0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, 17, 0, 0, 192, 168, 15, 1, 192, 168, 15, 2,
    ]);
    let c = nat::checksum::checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f[34..42].copy_from_slice(&[0x30, 0x39, 0, 9, 0, 26, 0, 0]); // UDP 12345 -> 9, no checksum
    let before = rx(&n.blue);
    let red = n.red.clone();
    let sent = netns_setup::netns::in_netns(
        Some(&netns_setup::setup::open_netns(&red).expect("red")),
        move || {
            use switch::port::{BATCH, Batch, PortIo};
            let mut port = switch::sys::PacketPort::open("veth-red").expect("packet socket in red");
            let mut batch = Batch::new();
            for i in 0..BATCH {
                let a = batch.rx_area(i);
                a[..10].fill(0);
                a[10..70].copy_from_slice(&f);
                batch.set_filled(i, 70, false);
            }
            let idx: Vec<u16> = (0..BATCH as u16).collect();
            let end = Instant::now() + Duration::from_secs(secs);
            let mut sent = 0u64;
            while Instant::now() < end {
                sent += port
                    .tx_batch(&batch, &idx)
                    .map(|o| o.sent as u64)
                    .unwrap_or(0);
            }
            sent
        },
    )
    .expect("enter red");
    std::thread::sleep(Duration::from_millis(300));
    let got = rx(&n.blue).saturating_sub(before);
    let _ = sent;
    got as f64 / secs as f64
}

/// RTT percentiles (µs) of `count` pings at 5 ms intervals, red → blue.
fn rtt(ns: &str, count: u32) -> (f64, f64) {
    let out = sh(
        &[
            "ip",
            "netns",
            "exec",
            ns,
            "ping",
            "-i",
            "0.005",
            "-c",
            &count.to_string(),
            "-W",
            "1",
            BLUE,
        ],
        Duration::from_secs(30),
    );
    let mut v: Vec<f64> = out
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .map(|ms| ms * 1000.0)
        .collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (pct(0.5), pct(0.99))
}

/// New TCP connections per second red → wan through the NAT (client closes with RST).
fn conn_rate(n: &Names, secs: u64) -> f64 {
    let wan = netns_setup::setup::open_netns(&n.wan).expect("wan");
    let red = netns_setup::setup::open_netns(&n.red).expect("red");
    let addr: SocketAddr = format!("{WAN}:5999").parse().unwrap();
    let listener = netns_setup::netns::in_netns(Some(&wan), || TcpListener::bind(addr))
        .expect("enter wan")
        .expect("listen in wan");
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let server = std::thread::spawn(move || {
        while !st.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((c, _)) => drop(c),
                Err(_) => std::thread::sleep(Duration::from_micros(50)),
            }
        }
    });
    let done = Arc::new(AtomicU64::new(0));
    let d = done.clone();
    netns_setup::netns::in_netns(Some(&red), move || {
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                let _ = nix::sys::socket::setsockopt(
                    &s,
                    nix::sys::socket::sockopt::Linger,
                    &libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    },
                );
                d.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
    .expect("enter red");
    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    done.load(Ordering::Relaxed) as f64 / secs as f64
}

struct Row {
    key: &'static str,
    name: &'static str,
    unit: &'static str,
    higher_is_better: bool,
    kernel: Vec<f64>,
    vswitch: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// The harness's options (parsed with clap like the other binaries: `--help`
/// prints usage and exits 0, a bad value exits 2 before anything is built).
#[derive(clap::Parser)]
#[command(
    name = "e2e",
    about = "End-to-end benchmark: vswitch against the kernel bridge + iptables on the seed topology, in private namespaces (needs root)"
)]
struct Opts {
    /// Rounds; each measures both setups, interleaved (medians are reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    rounds: u32,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=3600))]
    secs: u64,
    /// Directory for e2e.json and e2e.svg.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// vswitch's busy_poll_us (0 measures the default, no busy polling).
    #[arg(long, default_value_t = 50_000)]
    busy_poll_us: u64,
    /// Install missing Debian packages (iperf3, iputils-ping, iptables) with apt-get.
    #[arg(long)]
    install: bool,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__vswitch") {
        // The switch runs in a child process of this harness (same code as `vswitch run`).
        let t = netns_setup::Topology::load(std::path::Path::new(&args[2])).expect("topology");
        let opts = switch::daemon::RunOptions {
            keep: false,
            socket: Some(PathBuf::from(&args[3])),
            file: Some(PathBuf::from(&args[2])),
            metrics: None,
            // No periodic state saves during measurements.
            save_interval: Some(std::time::Duration::ZERO),
            ..switch::daemon::RunOptions::default()
        };
        if let Err(e) = switch::daemon::run(&t, &opts) {
            eprintln!("vswitch: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let opts = <Opts as clap::Parser>::parse();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("e2e: needs root (it builds namespaces); run it with sudo");
        std::process::exit(2);
    }
    let rounds = opts.rounds as usize;
    let secs = opts.secs;
    let out_dir = opts.out.clone();
    benches::require_tools(
        &[
            ("iperf3", "iperf3"),
            ("ping", "iputils-ping"),
            ("iptables", "iptables"),
        ],
        opts.install,
    );

    let cleanup = Cleanup::install();
    let tag = format!("vb{}", std::process::id() % 100_000);
    let kn = names(&format!("{tag}k"));
    let vn = names(&format!("{tag}v"));
    eprintln!(
        "e2e: building the kernel reference (bridge + iptables) in {}-*",
        kn.sw.trim_end_matches("-sw")
    );
    build_kernel(&kn, &cleanup);
    eprintln!(
        "e2e: starting vswitch on the same topology in {}-*",
        vn.sw.trim_end_matches("-sw")
    );
    let topo_path = std::env::temp_dir().join(format!("{tag}.toml"));
    // Adaptive busy polling for 50 ms after traffic (see README); `--busy-poll-us 0` measures the default.
    let busy = opts.busy_poll_us;
    std::fs::write(
        &topo_path,
        vswitch_toml(&vn, &format!("{tag}v"), Some(busy)),
    )
    .expect("write topology");
    for ns in [&vn.red, &vn.blue, &vn.wan, &vn.sw] {
        cleanup.add_netns(ns);
    }
    cleanup.add_file(&topo_path);
    let sock = std::env::temp_dir().join(format!("{tag}.sock"));
    cleanup.add_file(&sock);
    let exe = std::env::current_exe().expect("current exe");
    let vs = Bg::spawn(
        std::process::Command::new(&exe)
            .arg("__vswitch")
            .arg(&topo_path)
            .arg(&sock),
    );
    cleanup.add_pid(vs.pid());
    let deadline = Instant::now() + Duration::from_secs(30);
    while switch::control::query(&sock, "stats").is_err() {
        assert!(Instant::now() < deadline, "vswitch did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let sets = [(Setup::Kernel, &kn), (Setup::Vswitch, &vn)];
    let mut servers = Vec::new();
    for (_, n) in &sets {
        servers
            .push(Bg::spawn_helper(std::process::Command::new("ip").args([
                "netns", "exec", &n.blue, "iperf3", "-s", "-p", "5201",
            ])));
        servers
            .push(Bg::spawn_helper(std::process::Command::new("ip").args([
                "netns", "exec", &n.wan, "iperf3", "-s", "-p", "5201",
            ])));
        for s in servers.iter().rev().take(2) {
            cleanup.add_helper(s.pid());
        }
        // Warm up ARP/FDB/NAT paths.
        sh(
            &[
                "ip", "netns", "exec", &n.red, "ping", "-c", "2", "-i", "0.2", BLUE,
            ],
            Duration::from_secs(10),
        );
        sh(
            &[
                "ip", "netns", "exec", &n.red, "ping", "-c", "2", "-i", "0.2", WAN,
            ],
            Duration::from_secs(10),
        );
    }
    std::thread::sleep(Duration::from_millis(500));

    let mut rows = vec![
        Row {
            key: "tcp1",
            name: "TCP red→blue, 1 stream",
            unit: "Gbit/s",
            higher_is_better: true,
            kernel: vec![],
            vswitch: vec![],
        },
        Row {
            key: "tcp4",
            name: "TCP red→blue, 4 streams",
            unit: "Gbit/s",
            higher_is_better: true,
            kernel: vec![],
            vswitch: vec![],
        },
        Row {
            key: "tcpnat",
            name: "TCP red→wan via NAT",
            unit: "Gbit/s",
            higher_is_better: true,
            kernel: vec![],
            vswitch: vec![],
        },
        Row {
            key: "pps64",
            name: "64-byte frames red→blue",
            unit: "kframes/s",
            higher_is_better: true,
            kernel: vec![],
            vswitch: vec![],
        },
        Row {
            key: "rtt50",
            name: "RTT p50 red→blue",
            unit: "µs",
            higher_is_better: false,
            kernel: vec![],
            vswitch: vec![],
        },
        Row {
            key: "rtt99",
            name: "RTT p99 red→blue",
            unit: "µs",
            higher_is_better: false,
            kernel: vec![],
            vswitch: vec![],
        },
        Row {
            key: "cps",
            name: "new TCP conns/s via NAT",
            unit: "conn/s",
            higher_is_better: true,
            kernel: vec![],
            vswitch: vec![],
        },
        Row {
            key: "cpu",
            name: "CPU during TCP 1 stream (all cores)",
            unit: "% of a core",
            higher_is_better: false,
            kernel: vec![],
            vswitch: vec![],
        },
        Row {
            key: "cpusw",
            name: "  of which the forwarding process",
            unit: "% of a core",
            higher_is_better: false,
            kernel: vec![],
            vswitch: vec![],
        },
    ];
    let started = Instant::now();
    let vs_pid = vs.pid();
    for r in 0..rounds {
        // Alternate which setup goes first, so drift hits both alike.
        let order: Vec<&(Setup, &Names)> = if r % 2 == 0 {
            sets.iter().collect()
        } else {
            sets.iter().rev().collect()
        };
        for (setup, n) in order {
            let push = |rows: &mut Vec<Row>, key: &str, v: f64| {
                let row = rows.iter_mut().find(|x| x.key == key).expect("row");
                eprintln!(
                    "  [round {}/{rounds}] {:<7} {:<38} {:>10.2} {}",
                    r + 1,
                    setup.name(),
                    row.name,
                    v,
                    row.unit
                );
                match setup {
                    Setup::Kernel => row.kernel.push(v),
                    Setup::Vswitch => row.vswitch.push(v),
                }
            };
            let (busy0, total0) = cpu_busy_jiffies();
            let p0 = proc_cpu_jiffies(vs_pid);
            let t0 = Instant::now();
            let g = iperf(&n.red, BLUE, secs, 1);
            let el = t0.elapsed().as_secs_f64();
            let (busy1, total1) = cpu_busy_jiffies();
            let p1 = proc_cpu_jiffies(vs_pid);
            let ncpu = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1) as f64;
            let sys_pct = if total1 > total0 {
                (busy1 - busy0) as f64 / (total1 - total0) as f64 * ncpu * 100.0
            } else {
                f64::NAN
            };
            let hz = 100.0;
            let sw_pct = if *setup == Setup::Vswitch {
                (p1 - p0) as f64 / hz / el * 100.0
            } else {
                0.0
            };
            push(&mut rows, "tcp1", g);
            push(&mut rows, "cpu", sys_pct);
            push(&mut rows, "cpusw", sw_pct);
            push(&mut rows, "tcp4", iperf(&n.red, BLUE, secs, 4));
            push(&mut rows, "tcpnat", iperf(&n.red, WAN, secs, 1));
            push(&mut rows, "pps64", frame_rate(n, secs) / 1000.0);
            let (p50, p99) = rtt(&n.red, 400);
            push(&mut rows, "rtt50", p50);
            push(&mut rows, "rtt99", p99);
            push(&mut rows, "cps", conn_rate(n, secs));
        }
        eprintln!(
            "e2e: round {}/{rounds} done after {:.0} s",
            r + 1,
            started.elapsed().as_secs_f64()
        );
    }
    drop(servers);
    drop(vs);

    // Report.
    let mut json_rows = Vec::new();
    let mut table = String::new();
    table += &format!(
        "| {:<38} | {:>12} | {:>12} | {:>16} | {:<24} |\n",
        "measurement (median of rounds)",
        "kernel",
        "vswitch",
        "vswitch/kernel",
        "ratio spread (min–max)"
    );
    table += &format!(
        "|{}|{}|{}|{}|{}|\n",
        "-".repeat(40),
        "-".repeat(14),
        "-".repeat(14),
        "-".repeat(18),
        "-".repeat(26)
    );
    for row in &rows {
        let (k, v) = (median(&row.kernel), median(&row.vswitch));
        let ratios: Vec<f64> = row
            .kernel
            .iter()
            .zip(&row.vswitch)
            .map(|(k, v)| v / k)
            .filter(|x| x.is_finite())
            .collect();
        let ratio = v / k;
        let (lo, hi) = ratios
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
                (a.min(*x), b.max(*x))
            });
        let ratio_s = if row.key == "cpusw" {
            "—".to_string()
        } else {
            format!("{ratio:.2}×")
        };
        let spread = if row.key == "cpusw" || ratios.is_empty() {
            "—".to_string()
        } else {
            format!("{lo:.2}–{hi:.2}")
        };
        table += &format!(
            "| {:<38} | {:>12} | {:>12} | {:>16} | {:<24} |\n",
            format!("{} ({})", row.name, row.unit),
            fmt(k),
            fmt(v),
            ratio_s,
            spread
        );
        json_rows.push(json!({
            "key": row.key, "name": row.name, "unit": row.unit, "higher_is_better": row.higher_is_better,
            "kernel": row.kernel, "vswitch": row.vswitch, "kernel_median": k, "vswitch_median": v,
            "ratio": ratio, "ratio_min": lo, "ratio_max": hi,
        }));
    }
    println!("\n{table}");
    let setting = format!(
        "vswitch with busy_poll_us = {}; rounds {rounds}, {secs} s per measurement, {} CPUs, total {:.0} s",
        busy,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        started.elapsed().as_secs_f64()
    );
    println!("{setting}");
    table += &format!("\n{setting}\n");
    std::fs::create_dir_all(&out_dir).expect("out dir");
    let report = json!({
        "rounds": rounds, "secs": secs, "busy_poll_us": busy,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "kernel": sh(&["uname", "-r"], Duration::from_secs(5)).trim(),
        "rows": json_rows,
    });
    std::fs::write(
        out_dir.join("e2e.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .expect("write json");
    std::fs::write(out_dir.join("e2e.md"), &table).expect("write table");
    std::fs::write(out_dir.join("e2e.svg"), benches::svg_chart(&report)).expect("write svg");
    let _ = std::io::stdout().flush();
    eprintln!(
        "e2e: wrote {0}/e2e.json, {0}/e2e.md and {0}/e2e.svg",
        out_dir.display()
    );
    drop(cleanup);
}

fn fmt(x: f64) -> String {
    if !x.is_finite() {
        "n/a".into()
    } else if x >= 1000.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}
