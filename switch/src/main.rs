//! `vswitch`: run the switch, query it, or run the seed demo.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 bad topology or usage.

use clap::{Args, Parser, Subcommand};
use netns_setup::Topology;
use netns_setup::lock;
use netns_setup::setup::render_table;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use switch::control;
use switch::daemon::{RunOptions, run};

#[derive(Parser)]
#[command(
    name = "vswitch",
    version,
    about = "Userspace virtual switch for network namespaces"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Target {
    /// Switch to ask: a topology name, or a topology file (a path with a `/` or
    /// ending in .toml). Default: the one running switch.
    #[arg(short, long)]
    topology: Option<String>,
    /// Control socket path (overrides --topology).
    #[arg(short, long)]
    socket: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl Target {
    /// The control socket to ask; on failure the message is printed and the
    /// process exits (1: no such switch or several, 2: a bad topology file).
    fn path(&self) -> PathBuf {
        match resolve_socket(self.topology.as_deref(), self.socket.as_deref()) {
            Ok(p) => p,
            Err((msg, code)) => {
                eprintln!("vswitch: {msg}");
                std::process::exit(code);
            }
        }
    }
}

/// The socket of the switch named by `-s`, else `-t` (a name or a file: the
/// lock's record gives its socket, whatever `--socket` it was started with),
/// else the one running switch.
fn resolve_socket(topology: Option<&str>, socket: Option<&Path>) -> Result<PathBuf, (String, i32)> {
    if let Some(s) = socket {
        return Ok(s.to_path_buf());
    }
    let name = match topology {
        Some(t) if t.contains('/') || t.ends_with(".toml") => {
            Topology::load(Path::new(t))
                .map_err(|e| (format!("bad topology: {e}"), 2))?
                .name
        }
        Some(t) => t.to_string(),
        None => {
            let running = lock::running().map_err(|e| {
                (
                    format!("cannot list running switches in {}: {e}", lock::LOCK_DIR),
                    1,
                )
            })?;
            return match running.as_slice() {
                [one] => Ok(one.socket.clone()),
                [] => Err((
                    "no vswitch is running (start one with `vswitch run`, or name one with -t/-s)"
                        .into(),
                    1,
                )),
                many => Err((
                    format!(
                        "{} switches are running; choose one with -t NAME:\n{}",
                        many.len(),
                        many.iter()
                            .map(|o| format!("  {}: {o}", o.topology))
                            .collect::<Vec<_>>()
                            .join("\n")
                    ),
                    1,
                )),
            };
        }
    };
    match lock::holder(&name) {
        Ok(Some(o)) if o.pid != 0 => Ok(o.socket),
        _ => Ok(control::default_socket(&name)),
    }
}

/// `vswitch list`: the running switches, from their topology locks.
fn list(json: bool) -> ExitCode {
    let running = match lock::running() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vswitch list: {}: {e}", lock::LOCK_DIR);
            return ExitCode::FAILURE;
        }
    };
    if json {
        let v: Vec<Value> = running
            .iter()
            .map(|o| {
                serde_json::json!({
                    "topology": o.topology, "pid": o.pid, "socket": o.socket,
                    "file": o.file, "started_unix_ms": o.started_unix_ms, "uptime_ms": o.uptime_ms(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        return ExitCode::SUCCESS;
    }
    let mut rows = vec![
        ["TOPOLOGY", "PID", "SOCKET", "FILE", "UPTIME"]
            .map(String::from)
            .to_vec(),
    ];
    for o in &running {
        rows.push(vec![
            o.topology.clone(),
            o.pid.to_string(),
            o.socket.display().to_string(),
            o.file
                .as_ref()
                .map_or("(seed)".into(), |f| f.display().to_string()),
            secs(&Value::from(o.uptime_ms())),
        ]);
    }
    print!("{}", render_table(&rows));
    ExitCode::SUCCESS
}

/// `vswitch check FILE...`: validate without root, change nothing; 0 all valid, 2 any invalid.
fn check(files: &[PathBuf]) -> ExitCode {
    let mut bad = false;
    for f in files {
        match Topology::load(f)
            .map_err(|e| e.to_string())
            .and_then(|t| switch::daemon::check(&t).map_err(|e| format!("{}: {e}", f.display())))
        {
            Ok(summary) => println!("{}: ok, {summary}", f.display()),
            Err(e) => {
                eprintln!("vswitch check: {e}");
                bad = true;
            }
        }
    }
    if bad {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Bring the topology up, forward until SIGINT/SIGTERM, then remove what was created.
    Run {
        /// Topology file (TOML); the built-in seed topology if omitted.
        file: Option<PathBuf>,
        /// Leave the topology up on exit.
        #[arg(long)]
        keep: bool,
        /// Control socket path (default /run/vswitch/TOPOLOGY.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Serve Prometheus metrics here, e.g. 127.0.0.1:9100 (in the switch's namespace).
        #[arg(long)]
        metrics: Option<std::net::SocketAddr>,
        /// State file: tables saved on exit with the topology kept, periodically
        /// and on `upgrade`; restored by the next run (default /var/lib/vswitch/TOPOLOGY.state).
        #[arg(long, value_name = "PATH")]
        state_file: Option<PathBuf>,
        /// Save the state every SECS seconds (0: only on exit and upgrade;
        /// default: the topology's [switch] state_save_interval, else 10).
        #[arg(long, value_name = "SECS")]
        save_interval: Option<u64>,
        /// Log level (error, warn, info, debug, trace, off) or RUST_LOG-style directives
        /// (`info,switch::worker=debug`); overrides -v and RUST_LOG. Default: info.
        #[arg(long, value_name = "LEVEL")]
        log_level: Option<String>,
        /// More log detail: -v debug, -vv trace.
        #[arg(short, long, action = clap::ArgAction::Count)]
        verbose: u8,
    },
    /// Save the tables and re-execute the switch in place (same PID, same
    /// arguments; a new binary if given), which restores them: connections continue.
    Upgrade {
        #[command(flatten)]
        target: Target,
        /// The binary to execute (default: the running one's path, e.g. after a package update).
        #[arg(long)]
        binary: Option<PathBuf>,
    },
    /// Show the MAC table, like `bridge fdb show`; or change it, like `bridge fdb`:
    /// `fdb add MAC dev PORT [vlan V]` (a static entry: never aged, not moved by
    /// learning), `fdb add MAC dst VTEP [dev TUNNEL]` (behind a remote VTEP;
    /// MAC 00:00:00:00:00:00 adds a flood VTEP), `fdb del MAC [vlan V]`,
    /// `fdb flush [dev PORT]` (learned entries).
    Fdb {
        #[command(flatten)]
        target: Target,
        /// Nothing (show), or `add MAC (dev PORT | dst VTEP) [vlan V]`, `del MAC [vlan V]`, `flush [dev PORT]`.
        #[arg(value_name = "OPERATION")]
        words: Vec<String>,
    },
    /// Show the IP→MAC tables learned from ARP and NDP (IPv4, then IPv6), like `ip neigh`.
    Arp(Target),
    /// Show per-port counters and drops by reason; with --interval, rates.
    Stats {
        #[command(flatten)]
        target: Target,
        /// Print per-second rates (per port rx/tx packets and bits, drops, NAT
        /// new flows) every SECONDS until Ctrl-C.
        #[arg(short, long, value_name = "SECONDS")]
        interval: Option<f64>,
        /// With --interval: stop after this many reports.
        #[arg(short, long, requires = "interval")]
        count: Option<u64>,
    },
    /// List NAT connection tracking entries, like `conntrack -L`; delete the
    /// matching ones with -D, all of them with -F.
    Conntrack {
        #[command(flatten)]
        target: Target,
        /// Delete the entries matching the filters (like `conntrack -D`); their
        /// NAT mappings are released.
        #[arg(short = 'D', long, conflicts_with_all = ["count", "flush"])]
        delete: bool,
        /// Delete every entry (like `conntrack -F`).
        #[arg(short = 'F', long, conflicts_with_all = ["count", "proto", "src", "dst", "sport", "dport", "state"])]
        flush: bool,
        /// Only this protocol (tcp, udp, icmp).
        #[arg(short, long)]
        proto: Option<String>,
        /// Only this original source address.
        #[arg(long = "src")]
        src: Option<String>,
        /// Only this original destination address.
        #[arg(long = "dst")]
        dst: Option<String>,
        /// Only this original source port.
        #[arg(long)]
        sport: Option<u16>,
        /// Only this original destination port.
        #[arg(long)]
        dport: Option<u16>,
        /// Only this TCP state (e.g. ESTABLISHED).
        #[arg(long)]
        state: Option<String>,
        /// Print only the number of (matching) entries.
        #[arg(long)]
        count: bool,
    },
    /// Capture a port's frames (both directions) as pcap: `-w FILE`, or `-w -` for stdout
    /// (`vswitch capture red -w - | tcpdump -r -`).
    Capture {
        /// Port name or namespace name.
        port: String,
        /// Output file, `-` for stdout.
        #[arg(short = 'w', long)]
        write: String,
        /// Stop after this many frames.
        #[arg(short = 'c', long)]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(short = 'd', long)]
        duration: Option<f64>,
        #[command(flatten)]
        target: Target,
    },
    /// Show each stage's decision for a described frame, without sending it,
    /// and the final verdict (`--json`: stages with stage/decision/detail and a
    /// verdict object).
    Trace {
        /// Ingress port (port or namespace name).
        #[arg(long)]
        in_port: String,
        /// Source MAC (default: from the switch's tables).
        #[arg(long)]
        src_mac: Option<String>,
        /// Destination MAC (default: the host's MAC, or the gateway's when off the LAN).
        #[arg(long)]
        dst_mac: Option<String>,
        /// 802.1Q VLAN id.
        #[arg(long, value_parser = clap::value_parser!(u16).range(0..=4095))]
        vlan: Option<u16>,
        /// Source IPv4 or IPv6 address (default, for IPv4: the address the
        /// switch learned on the ingress port).
        #[arg(long)]
        src: Option<std::net::IpAddr>,
        /// Destination IPv4 or IPv6 address.
        #[arg(long)]
        dst: Option<std::net::IpAddr>,
        /// tcp (a SYN), udp or icmp (an echo request; ICMPv6 with IPv6 addresses).
        #[arg(long, value_parser = ["tcp", "udp", "icmp"])]
        proto: Option<String>,
        /// Source port (ICMP: identifier).
        #[arg(long)]
        sport: Option<u16>,
        /// Destination port.
        #[arg(long)]
        dport: Option<u16>,
        /// EtherType: ipv4, arp, ipv6, vlan, lldp, hex (0x86dd) or a number;
        /// for non-IP frames (IP frames take it from the addresses).
        #[arg(long, value_parser = parse_ethertype)]
        ethertype: Option<u16>,
        /// IPv4 TTL or IPv6 hop limit (default 64).
        #[arg(long)]
        ttl: Option<u8>,
        #[command(flatten)]
        target: Target,
    },
    /// Re-read the topology file and apply what changed live (namespaces, routes, NAT and DNAT
    /// rules, ACLs, rate limits, mirrors, isolation); tables are kept. A change that cannot be
    /// made live is refused (exit 2) and nothing changes. SIGHUP does the same.
    Reload(Target),
    /// Plug a link into the running switch, or unplug it.
    #[command(subcommand)]
    Port(PortCmd),
    /// Run the seed topology, ping red<->blue through vswitch, print the tables, clean up.
    /// `demo multihost`: three hosts on a VXLAN overlay (two vswitch, one plain Linux).
    Demo {
        /// `multihost` for the VXLAN story; nothing for the seed demo.
        which: Option<String>,
        /// Name prefix of the multihost demo's namespaces.
        #[arg(long, default_value = "mh")]
        prefix: String,
        /// Keep the multihost demo up this many seconds before removing it
        /// (look around: `vswitch fdb --socket /tmp/mh-a.sock`, `ip netns exec mh-red ...`).
        #[arg(long, default_value_t = 0, value_name = "SECS")]
        hold: u64,
    },
    /// Print the shell completion script (e.g. `vswitch completions bash > /etc/bash_completion.d/vswitch`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        #[arg(value_enum)]
        shell: netns_setup::docgen::Shell,
    },
    /// Print the man page, or with --dir write one page per subcommand there.
    Man {
        /// Directory for vswitch.1, vswitch-run.1, ... (e.g. /usr/local/share/man/man1).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// List the running switches (topology, PID, socket, file, uptime).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate topology files without root, changing nothing (exit 0 valid, 2 invalid).
    Check {
        /// Topology files (TOML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn parse_ethertype(s: &str) -> Result<u16, String> {
    switch::trace::parse_ethertype(s)
}

/// The text form of a trace answer: `stage: detail` lines, then the verdict.
fn print_trace(v: &Value) {
    for st in v["stages"].as_array().into_iter().flatten() {
        println!("{}: {}", s(&st["stage"]), s(&st["detail"]));
    }
    let d = &v["verdict"];
    let ports: Vec<String> = d["out_ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(s)
        .collect();
    let to = if ports.is_empty() {
        String::new()
    } else {
        format!(" to {}", ports.join(", "))
    };
    let why = d["reason"]
        .as_str()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    println!(
        "verdict: {}{to}{why}",
        d["action"].as_str().unwrap_or("?").to_uppercase()
    );
}

#[derive(Subcommand)]
enum PortCmd {
    /// Attach IFNAME, an existing link in the switch's namespace (`[switch] netns`), e.g. the
    /// switch end of a veth pair whose other end is in a container's namespace.
    Add {
        /// The link (at most 15 bytes).
        ifname: String,
        /// Name of the namespace behind it (shown in stats; default: IFNAME).
        #[arg(long)]
        netns: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Detach a port attached with `port add` (by link or namespace name); the link is kept.
    Del {
        /// Link or namespace name.
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

/// Print the answer of a live change (`reload`, `port add|del`) and turn it into an exit code.
fn live_answer(what: &str, t: &Target, r: Result<Value, String>) -> ExitCode {
    match r {
        Ok(v) => {
            if t.json {
                println!("{}", serde_json::to_string_pretty(&v).expect("json"));
            } else if v["ok"] == true {
                let changes = v["changes"].as_array().cloned().unwrap_or_default();
                if changes.is_empty() {
                    println!("nothing changed");
                }
                for c in changes {
                    println!("{}", s(&c));
                }
                for n in v["notes"].as_array().into_iter().flatten() {
                    println!("  {}", s(n));
                }
            } else {
                eprintln!("vswitch {what}: {}", s(&v["error"]));
            }
            if v["ok"] == true {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(v["exit"].as_u64().map_or(1, |c| c as u8))
            }
        }
        Err(e) => {
            eprintln!("vswitch {what}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load(file: &Option<PathBuf>) -> Result<Topology, ExitCode> {
    match file {
        None => Ok(Topology::seed()),
        Some(p) => Topology::load(p).map_err(|e| {
            eprintln!("vswitch: bad topology: {e}");
            ExitCode::from(2)
        }),
    }
}

/// `vswitch upgrade`: the switch saves its state and re-executes; wait
/// (at most 30 s) until the same PID answers on the socket again.
fn upgrade(target: &Target, binary: Option<PathBuf>) -> ExitCode {
    let path = target.path();
    let mut req = serde_json::json!({"cmd": "upgrade"});
    if let Some(b) = &binary {
        let abs = std::fs::canonicalize(b).unwrap_or_else(|_| b.clone());
        req["binary"] = abs.display().to_string().into();
    }
    let v = match control::request(&path, req) {
        Ok((v, _)) if v["ok"] == true => v,
        Ok((v, _)) => {
            eprintln!("vswitch upgrade: {}", s(&v["error"]));
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("vswitch upgrade: {e}");
            return ExitCode::FAILURE;
        }
    };
    let pid = v["pid"].as_u64().unwrap_or(0);
    eprintln!(
        "vswitch upgrade: {} entries saved to {}; pid {pid} re-executing",
        v["entries"],
        s(&v["file"])
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        if let Ok(st) = control::query(&path, "stats") {
            if st["pid"].as_u64() == Some(pid) {
                println!("upgraded: pid {pid} forwards again (state restored, see its log)");
                return ExitCode::SUCCESS;
            }
            eprintln!(
                "vswitch upgrade: another process (pid {}) answers on {}",
                st["pid"],
                path.display()
            );
            return ExitCode::FAILURE;
        }
    }
    eprintln!(
        "vswitch upgrade: pid {pid} did not answer on {} within 30 s (see its log)",
        path.display()
    );
    ExitCode::FAILURE
}

fn secs(ms: &Value) -> String {
    format!("{:.1}s", ms.as_u64().unwrap_or(0) as f64 / 1000.0)
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_fdb(v: &Value) {
    let mut rows = vec![
        ["MAC", "VLAN", "PORT", "NETNS", "DST", "AGE"]
            .map(String::from)
            .to_vec(),
    ];
    for e in v["entries"].as_array().into_iter().flatten() {
        let vlan = match e["vlan"].as_u64() {
            Some(0) | None => "-".to_string(),
            Some(v) => v.to_string(),
        };
        rows.push(vec![
            s(&e["mac"]),
            vlan,
            s(&e["port"]),
            s(&e["netns"]),
            e["dst"].as_str().unwrap_or("-").to_string(),
            if e["static"] == true {
                "static".into()
            } else {
                secs(&e["age_ms"])
            },
        ]);
    }
    print!("{}", render_table(&rows));
    let c = &v["counters"];
    println!(
        "switch {} ageing {} learned {} moves {} aged {} refused(table-full) {} refused(port-full) {} static-moves-refused {}",
        s(&v["switch"]),
        secs(&v["ageing_ms"]),
        c["learned"],
        c["moves"],
        c["aged"],
        c["refused_table_full"],
        c["refused_port_full"],
        c["static_moves_refused"]
    );
}

fn print_arp(v: &Value) {
    // IPv4 (ARP), then IPv6 (NDP) if any, each with its counters.
    let table = |title: &str, entries: &[Value]| {
        let mut rows = vec![[title, "MAC", "PORT", "AGE"].map(String::from).to_vec()];
        for e in entries {
            rows.push(vec![
                s(&e["ip"]),
                s(&e["mac"]),
                s(&e["port"]),
                secs(&e["age_ms"]),
            ]);
        }
        print!("{}", render_table(&rows));
    };
    table("IP", v["entries"].as_array().map_or(&[][..], Vec::as_slice));
    let c = &v["counters"];
    println!(
        "learned {} suppressed {} gratuitous {} refused(table-full) {}",
        c["learned"], c["suppressed"], c["gratuitous"], c["refused_table_full"]
    );
    let nd = v["neighbours6"].as_array().map_or(&[][..], Vec::as_slice);
    if !nd.is_empty() {
        table("IPV6", nd);
        let c = &v["nd_counters"];
        println!(
            "learned {} suppressed {} refused(table-full) {}",
            c["learned"], c["suppressed"], c["refused_table_full"]
        );
    }
}

fn print_stats(v: &Value) {
    let mut rows = vec![
        [
            "PORT", "KIND", "NETNS", "STATE", "RX-PKTS", "RX-BYTES", "TX-PKTS", "TX-BYTES",
            "FLOODED", "DROPS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let mut drops = Vec::new();
    let mut captures = Vec::new();
    for p in v["ports"].as_array().into_iter().flatten() {
        let total: u64 = p["drops"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        rows.push(vec![
            s(&p["name"]),
            s(&p["kind"]),
            s(&p["netns"]),
            s(&p["state"]),
            s(&p["rx_packets"]),
            s(&p["rx_bytes"]),
            s(&p["tx_packets"]),
            s(&p["tx_bytes"]),
            s(&p["flooded"]),
            total.to_string(),
        ]);
        for (reason, n) in p["drops"].as_object().into_iter().flatten() {
            if n.as_u64().unwrap_or(0) > 0 {
                drops.push(format!("  {}: {reason} {n}", s(&p["name"])));
            }
        }
        if p["capture_dropped"].as_u64().unwrap_or(0) > 0 {
            captures.push(format!(
                "  {}: {} copies dropped (slow capture or mirror reader)",
                s(&p["name"]),
                p["capture_dropped"]
            ));
        }
    }
    println!("switch {} up {}", s(&v["switch"]), secs(&v["uptime_ms"]));
    // One line per worker (`workers` with `[switch] workers > 1`).
    let workers = match v["workers"].as_array() {
        Some(ws) => ws.iter().collect(),
        None => vec![&v["worker"]],
    };
    for (k, w) in workers.iter().enumerate().filter(|(_, w)| w.is_object()) {
        let shared = if w["index"].is_null() {
            String::new()
        } else {
            format!(
                ", {} frames received, {} MAC bindings from the other workers ({} updates dropped)",
                w["rx_packets"], w["fdb_shared_applied"], w["fdb_shared_dropped"]
            )
        };
        println!(
            "worker{}: polling {} (busy_poll_us {}, adaptive_poll_us {}), polled {} ms, {} waits, {} empty wake-ups{shared}",
            if workers.len() > 1 {
                format!(" {k}")
            } else {
                String::new()
            },
            s(&w["polling"]),
            w["busy_poll_us"],
            w["adaptive_poll_us"],
            w["spun_ms"],
            w["waits"],
            w["empty_wakeups"]
        );
    }
    print!("{}", render_table(&rows));
    if !drops.is_empty() {
        println!("drops by reason:");
        for d in drops {
            println!("{d}");
        }
    }
    if !captures.is_empty() {
        println!("captures:");
        for c in captures {
            println!("{c}");
        }
    }
    let f = &v["fdb"];
    println!(
        "fdb: {} entries, learned {}, moves {}, refused {} (table full) {} (port full)",
        f["entries"],
        f["counters"]["learned"],
        f["counters"]["moves"],
        f["counters"]["refused_table_full"],
        f["counters"]["refused_port_full"]
    );
    let a = &v["arp"];
    println!(
        "arp: {} entries, suppressed {} requests",
        a["entries"], a["counters"]["suppressed"]
    );
    let fp = &v["fastpath"];
    if fp["state"] == "on" {
        println!(
            "fast path: on, {} flow directions offloaded ({} waiting for a reply), {} frames forwarded by the kernel; installed {}, removed {} (end) {} (idle) {} (revalidate) {} (nat gone) {} (flush), full {}",
            fp["flows"],
            fp["pending"],
            fp["kernel"]["forwarded"],
            fp["installed"],
            fp["removed_end"],
            fp["removed_idle"],
            fp["removed_revalidate"],
            fp["removed_nat_gone"],
            fp["removed_flush"],
            fp["full"]
        );
    } else if let Some(st) = fp["state"].as_str() {
        println!("fast path: {st}");
    }
    for t in v["tunnels"].as_array().into_iter().flatten() {
        let c = &t["counters"];
        println!(
            "tunnel {}: vxlan vni {} local {}:{} mtu {}, flood to [{}]; datagrams rx {} tx {} ({} UDP_SEGMENT sends), super-frames cut {}, coalesced rx merged {} split {}, flood copies {}",
            s(&t["name"]),
            t["vni"],
            s(&t["local"]),
            t["port"],
            t["mtu"],
            t["flood"]
                .as_array()
                .map(|a| a.iter().map(s).collect::<Vec<_>>().join(", "))
                .unwrap_or_default(),
            c["rx_datagrams"],
            c["tx_datagrams"],
            c["tx_gso_sends"],
            c["segmented"],
            c["rx_coalesced"],
            c["rx_split"],
            c["replicated"]
        );
    }
    if let Some(p) = v["policy"].as_object()
        && !p.is_empty()
    {
        let hits: Vec<String> = p.iter().map(|(k, n)| format!("{k}={n}")).collect();
        println!("policy: {}", hits.join(" "));
    }
    if let Some(g) = v.get("gateway") {
        let c = &g["counters"];
        println!(
            "gateway {} ({}): routed {}, echo replies {}, time exceeded {}, unreachable {}, frag needed {}, fragmented {}, arp requests {}, queued {}, ignored multicast {}",
            s(&g["address"]),
            s(&g["mac"]),
            c["routed"],
            c["echo_replies"],
            c["time_exceeded"],
            c["unreachable"],
            c["frag_needed"],
            c["fragmented"],
            c["arp_requests"],
            c["queued"],
            c["ignored_multicast"]
        );
        let gd: Vec<String> = c
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, n)| k.starts_with("drop_") && n.as_u64().unwrap_or(0) > 0)
            .map(|(k, n)| format!("{}={n}", &k[5..]))
            .collect();
        if !gd.is_empty() {
            println!("gateway drops: {}", gd.join(" "));
        }
    }
    if let Some(n) = v.get("nat") {
        print_nat("nat", n, &nat::OUTSIDE.to_string());
    }
    if let Some(n) = v.get("nat6") {
        print_nat("nat66", n, "::");
    }
}

/// The text view of one NAT engine's `stats` (`what`: "nat" or "nat66";
/// `outside`: the pseudo-host of inbound connections).
fn print_nat(what: &str, n: &Value, outside: &str) {
    println!(
        "{what}: {}/{} entries, {} mappings, filtering {}, created {}, expired {}, early-dropped {}, translated {}, icmp errors {}, hairpins {}",
        n["entries"],
        n["max_entries"],
        n["mappings"],
        s(&n["filtering"]),
        n["created"],
        n["expired"],
        n["early_dropped"],
        n["translated"],
        n["icmp_errors_translated"],
        n["hairpins"]
    );
    let nd: Vec<String> = n["drops"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, c)| c.as_u64().unwrap_or(0) > 0)
        .map(|(k, c)| format!("{k}={c}"))
        .collect();
    if !nd.is_empty() {
        println!("{what} drops: {}", nd.join(" "));
    }
    let hosts = n["hosts"].as_array().cloned().unwrap_or_default();
    if !hosts.is_empty() {
        println!(
            "{what} hosts ({} in all, heaviest first; {outside} is inbound):",
            n["hosts_total"]
        );
        println!(
            "  {:<24} {:>8} {:>10} {:>8} {:>9} {:>8}",
            "address (port)", "entries", "unassured", "mappings", "evicted", "drops"
        );
        for h in hosts.iter().take(16) {
            let n = |k: &str| h[k].as_u64().unwrap_or(0);
            let who = match h["port"].as_str() {
                Some(p) => format!("{} ({p})", s(&h["addr"])),
                None => s(&h["addr"]),
            };
            println!(
                "  {:<24} {:>8} {:>10} {:>8} {:>9} {:>8}",
                who,
                n("entries"),
                n("unassured"),
                n("mappings"),
                n("evicted"),
                n("drops")
            );
        }
    }
}

/// Per-second rates between two `stats` answers (`a` earlier), by port name.
/// `None` when the switch's clock did not advance.
fn rates(a: &Value, b: &Value) -> Option<Value> {
    let dt = b["uptime_ms"]
        .as_u64()?
        .checked_sub(a["uptime_ms"].as_u64()?)
        .filter(|d| *d > 0)? as f64
        / 1000.0;
    let drops = |p: &Value| -> u64 {
        p["drops"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0)
    };
    let per_s = |x: u64, y: u64| y.saturating_sub(x) as f64 / dt;
    let mut ports = Vec::new();
    for p in b["ports"].as_array().into_iter().flatten() {
        let Some(q) = a["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|q| q["name"] == p["name"])
        else {
            continue;
        };
        let d = |k: &str| per_s(q[k].as_u64().unwrap_or(0), p[k].as_u64().unwrap_or(0));
        ports.push(serde_json::json!({
            "name": p["name"],
            "state": p["state"],
            "rx_pps": d("rx_packets"),
            "rx_bps": d("rx_bytes") * 8.0,
            "tx_pps": d("tx_packets"),
            "tx_bps": d("tx_bytes") * 8.0,
            "drops_ps": per_s(drops(q), drops(p)),
        }));
    }
    let nat_new = b.get("nat").map(|n| {
        per_s(
            a["nat"]["created"].as_u64().unwrap_or(0),
            n["created"].as_u64().unwrap_or(0),
        )
    });
    Some(serde_json::json!({
        "switch": b["switch"],
        "interval_s": dt,
        "ports": ports,
        "nat_new_flows_ps": nat_new,
        "nat_entries": b["nat"]["entries"],
    }))
}

/// A rate with a k/M/G suffix.
fn si(x: f64) -> String {
    match x {
        x if x >= 1e9 => format!("{:.2}G", x / 1e9),
        x if x >= 1e6 => format!("{:.2}M", x / 1e6),
        x if x >= 1e3 => format!("{:.1}k", x / 1e3),
        x => format!("{x:.0}"),
    }
}

/// The text report of [`rates`].
fn rates_text(r: &Value) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let mut rows = vec![
        [
            "PORT", "STATE", "RX-PKT/S", "RX-BIT/S", "TX-PKT/S", "TX-BIT/S", "DROPS/S",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let f = |v: &Value| si(v.as_f64().unwrap_or(0.0));
    for p in r["ports"].as_array().into_iter().flatten() {
        rows.push(vec![
            s(&p["name"]),
            s(&p["state"]),
            f(&p["rx_pps"]),
            f(&p["rx_bps"]),
            f(&p["tx_pps"]),
            f(&p["tx_bps"]),
            f(&p["drops_ps"]),
        ]);
    }
    let _ = writeln!(
        o,
        "switch {}: rates over {:.1}s",
        s(&r["switch"]),
        r["interval_s"].as_f64().unwrap_or(0.0)
    );
    o += &render_table(&rows);
    if !r["nat_new_flows_ps"].is_null() {
        let _ = writeln!(
            o,
            "nat: {} new flows/s, {} entries",
            f(&r["nat_new_flows_ps"]),
            r["nat_entries"]
        );
    }
    o
}

/// `vswitch stats --interval SECS [--count N]`: rates every SECS until Ctrl-C.
fn stats_rates(t: &Target, secs: f64, count: Option<u64>) -> ExitCode {
    if !(secs.is_finite() && secs >= 0.1) {
        eprintln!("vswitch stats: --interval must be at least 0.1 (seconds)");
        return ExitCode::from(2);
    }
    let ask = || control::query(&t.path(), "stats");
    let mut prev = match ask() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("vswitch stats: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut shown = 0;
    while count.is_none_or(|c| shown < c) {
        std::thread::sleep(Duration::from_secs_f64(secs));
        let cur = match ask() {
            Ok(v) => v,
            Err(e) => {
                eprintln!("vswitch stats: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(r) = rates(&prev, &cur) {
            use std::io::Write;
            let text = if t.json {
                r.to_string() + "\n"
            } else {
                rates_text(&r)
            };
            let mut out = std::io::stdout().lock();
            if out
                .write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .is_err()
            {
                return ExitCode::SUCCESS; // stdout closed (e.g. piped into head)
            }
            shown += 1;
        }
        prev = cur;
    }
    ExitCode::SUCCESS
}

fn print_conntrack(v: &Value) {
    use std::io::Write;
    let entries = v["entries"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    // One buffered writer: a listing can hold hundreds of thousands of lines.
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    for e in entries {
        let t = |t: &Value, d: usize| {
            format!(
                "src={} dst={} sport={} dport={} packets={} bytes={}",
                s(&t["src"]),
                s(&t["dst"]),
                t["sport"],
                t["dport"],
                e["packets"][d],
                e["bytes"][d]
            )
        };
        let state = e["state"]
            .as_str()
            .filter(|x| !x.is_empty())
            .map(|x| format!("{x} "))
            .unwrap_or_default();
        let line = writeln!(
            out,
            "{:<8} {:<2} {} {state}{} {}{}",
            s(&e["proto"]),
            e["proto_num"],
            e["timeout"],
            t(&e["original"], 0),
            t(&e["reply"], 1),
            if e["assured"] == true {
                " [ASSURED]"
            } else {
                ""
            }
        );
        if line.is_err() {
            return; // stdout closed (e.g. piped into head)
        }
    }
    let _ = out.flush();
    drop(out);
    eprintln!(
        "vswitch conntrack: {} flow entries have been shown.",
        entries.len()
    );
}

fn show(t: &Target, cmd: &str, print: fn(&Value)) -> ExitCode {
    match control::query(&t.path(), cmd) {
        Ok(v) => {
            if t.json {
                println!("{}", serde_json::to_string_pretty(&v).expect("json"));
            } else {
                print(&v);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vswitch {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn capture(
    t: &Target,
    port: &str,
    write: &str,
    count: Option<u64>,
    duration: Option<f64>,
) -> ExitCode {
    use nix::sys::signal::{SigSet, Signal};
    // Ctrl-C (or SIGTERM) asks the switch to end the stream, so that its
    // totals (frames dropped for a slow reader) still arrive, as with tcpdump.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    let _ = mask.thread_block();
    let req = serde_json::json!({"cmd": "capture", "port": port, "count": count, "duration_ms": duration.map(|d| (d * 1000.0) as u64)});
    let (_, mut stream) = match control::request(&t.path(), req) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("vswitch capture: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _ = stream.get_ref().set_read_timeout(None);
    if let Ok(conn) = stream.get_ref().try_clone() {
        let _ = std::thread::Builder::new()
            .name("capture-signal".into())
            .spawn(move || {
                if mask.wait().is_ok() {
                    let _ = conn.shutdown(std::net::Shutdown::Write);
                    // The switch answers within its poll interval; do not wait forever.
                    std::thread::sleep(Duration::from_secs(3));
                    let _ = conn.shutdown(std::net::Shutdown::Both);
                }
            });
    }
    let res = if write == "-" {
        control::copy_capture(&mut stream, &mut std::io::stdout().lock())
    } else {
        match std::fs::File::create(write) {
            Ok(f) => control::copy_capture(&mut stream, &mut std::io::BufWriter::new(f)),
            Err(e) => {
                eprintln!("vswitch capture: cannot create {write}: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    match res {
        Ok(Some(end)) => {
            eprintln!("{} packets captured", end.frames);
            eprintln!("{} packets dropped by the switch", end.dropped);
            ExitCode::SUCCESS
        }
        Ok(None) => {
            eprintln!("vswitch capture: the stream ended early (the switch stopped)");
            ExitCode::SUCCESS
        }
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vswitch capture: {e}");
            ExitCode::FAILURE
        }
    }
}

const FDB_USAGE: &str = "usage: vswitch fdb [add MAC (dev PORT | dst VTEP [dev TUNNEL]) [vlan V] | del MAC [dst VTEP] [vlan V] | flush [dev PORT]]";

/// The request of a `vswitch fdb` operation (`words` as `bridge fdb` takes them).
fn fdb_request(words: &[String]) -> Result<Value, String> {
    let (op, rest) = words.split_first().ok_or(FDB_USAGE)?;
    let (mac, rest) = match op.as_str() {
        "add" | "del" => {
            let (m, r) = rest
                .split_first()
                .ok_or_else(|| format!("fdb {op} needs a MAC; {FDB_USAGE}"))?;
            let mac: switch::wire::MacAddr = m.parse()?;
            (Some(mac.to_string()), r)
        }
        "flush" => (None, rest),
        other => return Err(format!("unknown operation {other:?}; {FDB_USAGE}")),
    };
    let mut req = serde_json::json!({"cmd": format!("fdb-{op}"), "mac": mac});
    let mut it = rest.iter();
    while let Some(k) = it.next() {
        let v = it
            .next()
            .ok_or_else(|| format!("{k} needs a value; {FDB_USAGE}"))?;
        match (k.as_str(), op.as_str()) {
            ("dev", "add" | "flush" | "del") => req["port"] = v.clone().into(),
            ("dst", "add" | "del") => {
                let a: std::net::Ipv4Addr = v
                    .parse()
                    .ok()
                    .filter(|a: &std::net::Ipv4Addr| {
                        !a.is_unspecified() && !a.is_multicast() && !a.is_broadcast()
                    })
                    .ok_or_else(|| format!("dst {v:?} is not a unicast IPv4 VTEP address"))?;
                req["dst"] = a.to_string().into();
            }
            ("vlan", "add" | "del") => {
                let n: u16 = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=4094).contains(n))
                    .ok_or_else(|| format!("vlan {v:?} is not a VLAN id (1-4094)"))?;
                req["vlan"] = n.into();
            }
            _ => return Err(format!("unexpected {k:?} for fdb {op}; {FDB_USAGE}")),
        }
    }
    if op == "add" && req["port"].is_null() && req["dst"].is_null() {
        return Err(format!("fdb add needs dev PORT or dst VTEP; {FDB_USAGE}"));
    }
    Ok(req)
}

/// `vswitch fdb add|del|flush`: exit 2 for a usage error, 1 when the switch refuses.
fn fdb_edit(t: &Target, words: &[String]) -> ExitCode {
    let req = match fdb_request(words) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vswitch fdb: {e}");
            return ExitCode::from(2);
        }
    };
    match control::request(&t.path(), req).map(|(v, _)| v) {
        Ok(v) => {
            if t.json {
                println!("{}", serde_json::to_string_pretty(&v).expect("json"));
            } else if let Some(n) = v["flushed"].as_u64() {
                println!("{n} learned entries flushed");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vswitch fdb: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `vswitch demo multihost`: hosts A and B run vswitch, host C plain Linux;
/// red, blue and green share VNI 42; blue and green reach `wan` through A's NAT.
fn demo_multihost(prefix: &str, hold: u64) -> ExitCode {
    use switch::multihost::{self, World};
    if prefix.is_empty() || prefix.len() > 20 {
        eprintln!("vswitch demo: --prefix must be 1..=20 characters");
        return ExitCode::from(2);
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("vswitch demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let p = prefix;
    println!(
        "== host A ({p}-a): vswitch with red, the gateway {} and NAT to {p}-wan",
        multihost::GATEWAY
    );
    println!("== host B ({p}-b): vswitch with blue");
    println!("== host C ({p}-c): plain Linux, configured with iproute2:");
    for l in multihost::host_c_commands(p) {
        println!("   {l}");
    }
    println!(
        "== underlay {p}-ul: 10.200.0.0/24, VXLAN VNI {} on UDP 4789",
        multihost::VNI
    );
    let dir = std::env::temp_dir();
    let world = match World::build(p, &exe, &dir) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("vswitch demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut ok = true;
    let (r, b, g) = (world.ns("red"), world.ns("blue"), world.ns("green"));
    for (from, to, what) in [
        (
            &r,
            multihost::BLUE,
            "red (A) -> blue (B), over VXLAN between two vswitches",
        ),
        (
            &r,
            multihost::GREEN,
            "red (A) -> green (C), vswitch to the Linux kernel's VTEP",
        ),
        (&b, multihost::GREEN, "blue (B) -> green (C)"),
        (&g, multihost::RED, "green (C) -> red (A)"),
        (
            &b,
            multihost::WAN_HOST,
            "blue (B) -> wan, through host A's gateway and NAT",
        ),
        (
            &g,
            multihost::WAN_HOST,
            "green (C) -> wan, through host A's gateway and NAT",
        ),
    ] {
        println!("== ping {what}");
        let dst: std::net::Ipv4Addr = to.parse().expect("demo addresses are IPv4");
        let mut out = std::io::stdout().lock();
        match switch::ping::ping(
            from,
            dst,
            3,
            Duration::from_millis(200),
            Duration::from_secs(3),
            &mut out,
        ) {
            Ok(st) => ok &= st.received == st.sent,
            Err(e) => {
                println!("vswitch demo: ping from {from} failed: {e}");
                ok = false;
            }
        }
    }
    for (h, name) in ["A", "B"].iter().enumerate() {
        println!("== vswitch fdb on host {name} (DST: the remote VTEP)");
        if let Ok(v) = control::query(&world.sockets[h], "fdb") {
            print_fdb(&v);
        }
    }
    println!(
        "== bridge fdb show dev vxlan{} on host C (the kernel learned vswitch's MACs)",
        multihost::VNI
    );
    match multihost::sh(&format!(
        "bridge -n {p}-c fdb show dev vxlan{}",
        multihost::VNI
    )) {
        Ok(o) => print!("{o}"),
        Err(e) => println!("{e}"),
    }
    if hold > 0 {
        println!(
            "== holding for {hold} s: control sockets {} and {}",
            world.sockets[0].display(),
            world.sockets[1].display()
        );
        std::thread::sleep(Duration::from_secs(hold));
    }
    drop(world);
    println!("== removed every namespace of the demo");
    if ok {
        println!(
            "demo OK: red, blue and green share one L2 segment across three hosts; blue and green reached wan through host A"
        );
        ExitCode::SUCCESS
    } else {
        println!("demo FAILED: see the ping output above");
        ExitCode::FAILURE
    }
}

/// The newcomer's demo: the seed topology through vswitch, checked with ping.
fn demo() -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("vswitch demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let sock = control::default_socket("seed");
    // A seed switch already running would answer in place of the demo's own.
    if let Ok(Some(owner)) = lock::holder("seed") {
        eprintln!("vswitch demo: the seed topology is already served by {owner}; stop it first");
        return ExitCode::FAILURE;
    }
    println!(
        "== starting `vswitch run` on the built-in seed topology (red 192.168.15.1, blue 192.168.15.2, switch v-net-0)"
    );
    let mut child = match Command::new(&exe).arg("run").stdin(Stdio::null()).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vswitch demo: cannot start {}: {e}", exe.display());
            return ExitCode::FAILURE;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while control::query(&sock, "stats").is_err() {
        if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
            eprintln!("vswitch demo: the switch did not come up");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
            return ExitCode::FAILURE;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut ok = true;
    for (from, to, what) in [
        ("red", "192.168.15.2", "blue, through the switch"),
        ("blue", "192.168.15.1", "red, through the switch"),
        ("red", "192.168.15.5", "the gateway, answered by vswitch"),
        (
            "blue",
            "203.0.113.10",
            "the external host in `wan`, through vswitch's NAT",
        ),
    ] {
        println!("== ping from {from} to {to}   ({what})");
        let dst: std::net::Ipv4Addr = to.parse().expect("demo addresses are IPv4");
        let mut out = std::io::stdout().lock();
        match switch::ping::ping(
            from,
            dst,
            3,
            Duration::from_millis(200),
            Duration::from_secs(2),
            &mut out,
        ) {
            Ok(st) => ok &= st.received == st.sent,
            Err(e) => {
                println!("vswitch demo: ping from {from} failed: {e}");
                ok = false;
            }
        }
    }
    println!("== vswitch fdb");
    if let Ok(v) = control::query(&sock, "fdb") {
        print_fdb(&v);
    }
    println!("== vswitch arp");
    if let Ok(v) = control::query(&sock, "arp") {
        print_arp(&v);
    }
    println!("== vswitch conntrack");
    if let Ok(v) = control::query(&sock, "conntrack") {
        print_conntrack(&v);
    }
    println!("== vswitch stats");
    if let Ok(v) = control::query(&sock, "stats") {
        print_stats(&v);
    }
    println!("== stopping the switch (it removes the namespaces it created)");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    if ok {
        println!(
            "demo OK: red and blue reached each other, the gateway and the external network through vswitch"
        );
        ExitCode::SUCCESS
    } else {
        println!("demo FAILED: see the ping output above");
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run {
            file,
            keep,
            socket,
            metrics,
            log_level,
            verbose,
            state_file,
            save_interval,
        } => {
            if let Err(e) = switch::log::init(log_level.as_deref(), verbose) {
                eprintln!("vswitch run: {e}");
                return ExitCode::from(2);
            }
            let t = match load(&file) {
                Ok(t) => t,
                Err(c) => return c,
            };
            match run(
                &t,
                &RunOptions {
                    keep,
                    socket,
                    file: file.clone(),
                    metrics,
                    state_file,
                    save_interval: save_interval.map(std::time::Duration::from_secs),
                },
            ) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("vswitch run: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Fdb { target, words } if words.is_empty() => show(&target, "fdb", print_fdb),
        Cmd::Fdb { target, words } => fdb_edit(&target, &words),
        Cmd::Arp(t) => show(&t, "arp", print_arp),
        Cmd::Stats {
            target,
            interval: None,
            ..
        } => show(&target, "stats", print_stats),
        Cmd::Stats {
            target,
            interval: Some(secs),
            count,
        } => stats_rates(&target, secs, count),
        Cmd::Conntrack {
            target,
            delete,
            flush,
            proto,
            src,
            dst,
            sport,
            dport,
            state,
            count,
        } => {
            // Filtered by the control thread as the worker hands over pages
            // (deleted by the worker, page by page, with the same filters).
            let req = serde_json::json!({
                "cmd": if delete || flush { "conntrack-delete" } else { "conntrack" },
                "proto": proto,
                "src": src,
                "dst": dst,
                "sport": sport,
                "dport": dport,
                "state": state,
                "count": count,
            });
            match control::request(&target.path(), req).map(|(v, _)| v) {
                Ok(v) => {
                    if target.json {
                        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
                    } else if v["nat"] == false && (delete || flush) {
                        eprintln!("vswitch conntrack: this switch has no NAT: nothing to delete");
                    } else if flush {
                        eprintln!(
                            "vswitch conntrack: connection tracking table has been emptied ({} flow entries deleted).",
                            v["deleted"]
                        );
                    } else if delete {
                        eprintln!(
                            "vswitch conntrack: {} flow entries have been deleted.",
                            v["deleted"]
                        );
                    } else if count {
                        println!("{}", v["entries"]);
                    } else {
                        print_conntrack(&v);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("vswitch conntrack: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Demo { which: None, .. } => demo(),
        Cmd::Demo {
            which: Some(w),
            prefix,
            hold,
        } if w == "multihost" => demo_multihost(&prefix, hold),
        Cmd::Demo { which: Some(w), .. } => {
            eprintln!("vswitch demo: unknown demo {w:?} (there are: the seed demo, `multihost`)");
            ExitCode::from(2)
        }
        Cmd::Completions { shell } => {
            let cmd = <Cli as clap::CommandFactory>::command();
            netns_setup::docgen::completions(cmd, shell, &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Cmd::Man { dir } => {
            let cmd = <Cli as clap::CommandFactory>::command();
            netns_setup::cli::man(cmd, dir.as_deref(), "vswitch")
        }
        Cmd::List { json } => list(json),
        Cmd::Check { files } => check(&files),
        Cmd::Capture {
            port,
            write,
            count,
            duration,
            target,
        } => capture(&target, &port, &write, count, duration),
        Cmd::Trace {
            in_port,
            src_mac,
            dst_mac,
            vlan,
            src,
            dst,
            proto,
            sport,
            dport,
            ethertype,
            ttl,
            target,
        } => {
            let req = serde_json::json!({
                "cmd": "trace", "in_port": in_port, "src_mac": src_mac, "dst_mac": dst_mac, "vlan": vlan,
                "src": src, "dst": dst, "proto": proto, "sport": sport, "dport": dport, "ethertype": ethertype,
                "ttl": ttl,
            });
            // The switch refusing the described frame is a usage error (2);
            // no answer at all is a runtime failure (1).
            match control::exchange(&target.path(), req) {
                Ok((v, _)) if v["ok"] == true => {
                    if target.json {
                        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
                    } else {
                        print_trace(&v);
                    }
                    ExitCode::SUCCESS
                }
                Ok((v, _)) => {
                    eprintln!("vswitch trace: {}", s(&v["error"]));
                    ExitCode::from(2)
                }
                Err(e) => {
                    eprintln!("vswitch trace: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Upgrade { target, binary } => upgrade(&target, binary),
        Cmd::Reload(t) => {
            let r = control::exchange(&t.path(), serde_json::json!({"cmd": "reload"}));
            live_answer("reload", &t, r.map(|(v, _)| v))
        }
        Cmd::Port(PortCmd::Add {
            ifname,
            netns,
            target,
        }) => {
            let req = serde_json::json!({"cmd": "port-add", "ifname": ifname, "netns": netns});
            let r = control::exchange(&target.path(), req);
            live_answer("port add", &target, r.map(|(v, _)| v))
        }
        Cmd::Port(PortCmd::Del { name, target }) => {
            let req = serde_json::json!({"cmd": "port-del", "name": name});
            let r = control::exchange(&target.path(), req);
            live_answer("port del", &target, r.map(|(v, _)| v))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    #[test]
    fn completions_and_man_pages_cover_the_subcommands() {
        use clap::CommandFactory;
        use netns_setup::docgen::{Shell, completions, man_dir, man_page};
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            completions(super::Cli::command(), shell, &mut out);
            let s = String::from_utf8(out).unwrap();
            for w in ["vswitch", "conntrack", "capture", "socket", "list", "check"] {
                assert!(s.contains(w), "{shell} completions lack {w}");
            }
        }
        let mut out = Vec::new();
        man_page(super::Cli::command(), &mut out).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains(".TH vswitch 1") && s.contains("reload"), "{s}");
        let dir = std::env::temp_dir().join(format!("vswitch-man-{}", std::process::id()));
        let files = man_dir(super::Cli::command(), &dir).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        let _ = std::fs::remove_dir_all(&dir);
        for n in [
            "vswitch.1",
            "vswitch-run.1",
            "vswitch-stats.1",
            "vswitch-list.1",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} not in {names:?}");
        }
    }
}
