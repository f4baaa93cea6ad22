//! Target `control`: the control protocol end to end, in process. One
//! worker ([`switch::worker::Worker::run`], over in-memory ports, its tables
//! filled by a little traffic first) serves [`switch::control::serve`] on a
//! Unix socket in a private temporary directory, as `vswitch run` does. Each
//! input is one connection: a request line (structured JSON for every
//! command — `fdb`, `arp`, `stats`, `conntrack`, `reload`, `capture`,
//! `trace` with odd arguments — or raw bytes, cut, repeated, over the 64 KiB
//! line limit), then the answer is read.
//!
//! Invariants: the socket answers one JSON object with a boolean `ok`, or
//! closes, within 8 s; the worker thread is alive afterwards.

use super::fake::{self, Queue};
use crate::input::{INTERESTING_U16, Input};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::Duration;
use switch::pipeline::{Pipeline, PipelineConfig};
use switch::policy::{Chain, Reloaded};
use switch::worker::Worker;

static WORKER_DEAD: AtomicBool = AtomicBool::new(false);
static SOCKET: OnceLock<Result<PathBuf, String>> = OnceLock::new();

struct DeathFlag;
impl Drop for DeathFlag {
    fn drop(&mut self) {
        WORKER_DEAD.store(true, Ordering::SeqCst);
    }
}

/// A frame from `src` (MAC, IP) to `dst`, UDP 5000 → 53.
fn udp_frame(smac: [u8; 6], dmac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0u8; 10];
    f.extend_from_slice(&dmac);
    f.extend_from_slice(&smac);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 28, 0, 1, 0, 0, 64, 17, 0, 0];
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = nat::checksum::checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&[0x13, 0x88, 0, 53, 0, 8, 0, 0]);
    f.extend_from_slice(&ip);
    f
}

/// Remove the socket directories of fuzz runs that have ended (the socket
/// lives as long as its process, which cannot remove it at exit).
fn remove_stale_dirs() {
    let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("vswitch-fuzz-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn start() -> Result<PathBuf, String> {
    remove_stale_dirs();
    let dir = std::env::temp_dir().join(format!("vswitch-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join("ctl.sock");
    let listener = switch::control::bind(&path).map_err(|e| e.to_string())?;
    let wake = Arc::new(
        EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(|e| e.to_string())?,
    );
    let (tx, rx) = mpsc::channel();
    switch::control::serve(listener, tx, wake.clone());
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("fuzz-worker".into())
        .spawn(move || {
            let _flag = DeathFlag;
            let t = netns_setup::Topology::seed();
            let ports = 3;
            let mut gw = match switch::daemon::gateway_config(
                &netns_setup::Topology::parse(
                    "[switch]\n[[namespace]]\nname = \"red\"\naddress = \"192.168.15.1/24\"\n[gateway]\naddress = \"192.168.15.5/24\"\n",
                    "ctl",
                )
                .expect("valid"),
                ports,
            ) {
                Ok(Some(g)) => g,
                _ => return,
            };
            gw.uplink = Some(switch::gateway::UplinkConfig {
                port: ports - 1,
                ip: Ipv4Addr::new(203, 0, 113, 1),
                prefix: 24,
                mac: switch::wire::MacAddr([2, 0x75, 0x70, 0, 0, 1]),
                next_hop: None,
                mtu: 1500,
            });
            let mut n = nat::NatConfig::new(Ipv4Addr::new(203, 0, 113, 1));
            n.masquerade = vec![nat::Ipv4Net {
                addr: Ipv4Addr::new(192, 168, 15, 0),
                prefix: 24,
            }];
            n.max_entries = 64;
            gw.nat = Some(n);
            let gw_mac = gw.mac.0;
            let cfg = PipelineConfig {
                ports,
                fdb_max: 64,
                fdb_max_per_port: 32,
                ageing_ms: 300_000,
                arp_max: 64,
                arp_max_per_port: switch::arp::default_per_port(64),
                arp_suppress: true,
                gateway: Some(gw),
            };
            let pipeline = Pipeline::with_policy(&cfg, (Chain::default(), switch::policy::NoPolicy));
            let queues: Vec<Queue> = (0..ports).map(|_| Queue::default()).collect();
            let names = ["veth-red-br", "veth-blue-br", "veth-wan-br"];
            let nss = ["red", "blue", "wan"];
            let wports = (0..ports)
                .map(|p| fake::port(names[p], nss[p], p < ports - 1, queues[p].clone()))
                .collect();
            let mut w = Worker::new("v-net-0".into(), wports, pipeline);
            let pnames: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            let topo = t.clone();
            let infos: Vec<switch::daemon::PortInfo> = (0..ports)
                .map(|p| switch::daemon::PortInfo {
                    name: names[p].into(),
                    netns: nss[p].into(),
                    lan: p < ports - 1,
                })
                .collect();
            let mut first = true;
            let reloader = Box::new(move || -> Result<Reloaded, String> {
                // Alternate between the seed's policy and an empty one.
                first = !first;
                if first {
                    build_or_empty(&topo, &infos, &pnames)
                } else {
                    Ok(Reloaded {
                        chain: Chain::new(Vec::new(), Vec::new(), pnames.clone()),
                        isolated: vec![false; ports],
                        mirrors: vec![None; ports],
                    })
                }
            });
            if w.set_reloader(reloader).is_err() {
                return;
            }
            // Some state to list: hosts on both LAN ports, a NAT entry.
            for (p, (mac, ip)) in [([2, 0, 0, 0, 0, 1], 1u8), ([2, 0, 0, 0, 0, 2], 2)].iter().enumerate() {
                let f = udp_frame(*mac, gw_mac, Ipv4Addr::new(192, 168, 15, *ip), Ipv4Addr::new(203, 0, 113, 10));
                queues[p].borrow_mut().push_back(f);
                w.poll_port(p, 1);
            }
            let mut mask = SigSet::empty();
            mask.add(Signal::SIGUSR2); // never blocked, so never read: the worker runs until exit
            let Ok(stop) = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK) else {
                return;
            };
            let _ = ready_tx.send(());
            let _ = w.run(&rx, &wake, Some(&stop));
        })
        .map_err(|e| e.to_string())?;
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| "the fuzz worker did not start".to_string())?;
    Ok(path)
}

fn build_or_empty(
    t: &netns_setup::Topology,
    infos: &[switch::daemon::PortInfo],
    names: &[String],
) -> Result<Reloaded, String> {
    switch::daemon::build_policy(t, infos).or_else(|_| {
        Ok(Reloaded {
            chain: Chain::new(Vec::new(), Vec::new(), names.to_vec()),
            isolated: vec![false; infos.len()],
            mirrors: vec![None; infos.len()],
        })
    })
}

fn odd_value(i: &mut Input) -> Value {
    match i.below(12) {
        0 => Value::Null,
        1 => json!(-1),
        2 => json!(u64::MAX),
        3 => json!(1e300),
        4 => json!("80"),
        5 => json!([1, 2]),
        6 => json!({"x": 1}),
        7 => json!(i.pick(INTERESTING_U16)),
        8 => json!(true),
        9 => json!(""),
        10 => json!(i64::MIN),
        _ => json!(u64::from(i.u32())),
    }
}

fn maybe(i: &mut Input, good: Value) -> Value {
    if i.below(4) == 0 { odd_value(i) } else { good }
}

/// A request line.
fn request(i: &mut Input) -> Vec<u8> {
    if i.below(8) == 0 {
        return i.rest().to_vec();
    }
    let cmds = [
        "fdb",
        "arp",
        "stats",
        "conntrack",
        "reload",
        "trace",
        "trace",
        "trace",
        "capture",
        "",
        "FDB",
        "nope",
        "conntrack-delete",
        "conntrack-delete-page",
        "fdb-add",
        "fdb-del",
        "fdb-flush",
    ];
    let cmd = i.pick(&cmds);
    let mut r = json!({"cmd": cmd});
    if i.below(16) == 0 {
        r["cmd"] = odd_value(i);
    }
    match cmd {
        "trace" => {
            let port = i.pick(&[
                "red",
                "veth-red-br",
                "veth-wan-br",
                "wan",
                "blue",
                "nobody",
                "",
            ]);
            r["in_port"] = maybe(i, json!(port));
            let ips = [
                "192.168.15.1",
                "192.168.15.2",
                "192.168.15.5",
                "203.0.113.1",
                "203.0.113.10",
                "8.8.8.8",
                "255.255.255.255",
                "0.0.0.0",
                "1.2.3",
                "::1",
                "fe80::2",
                "x",
            ];
            let s = i.pick(&ips);
            r["src"] = maybe(i, json!(s));
            let d = i.pick(&ips);
            r["dst"] = maybe(i, json!(d));
            let proto = i.pick(&["tcp", "udp", "icmp", "47", "TCP", "", "256"]);
            r["proto"] = maybe(i, json!(proto));
            for k in ["sport", "dport", "vlan", "ttl", "ethertype"] {
                if i.bool() {
                    let v = i.pick(INTERESTING_U16);
                    r[k] = maybe(i, json!(v));
                }
            }
            for k in ["src_mac", "dst_mac"] {
                if i.below(4) == 0 {
                    let m = i.pick(&[
                        "02:00:00:00:00:01",
                        "ff:ff:ff:ff:ff:ff",
                        "00:00:00:00:00:00",
                        "zz",
                        "02:00:00:00:00",
                    ]);
                    r[k] = maybe(i, json!(m));
                }
            }
        }
        "fdb-add" | "fdb-del" | "fdb-flush" => {
            let m = i.pick(&[
                "02:00:00:00:00:09",
                "ff:ff:ff:ff:ff:ff",
                "zz",
                "02:00:00:00:00",
            ]);
            r["mac"] = maybe(i, json!(m));
            let port = i.pick(&["red", "veth-red-br", "wan", "veth-wan-br", "nobody"]);
            if i.bool() {
                r["port"] = maybe(i, json!(port));
            }
            if i.bool() {
                let v = i.pick(INTERESTING_U16);
                r["vlan"] = maybe(i, json!(v));
            }
        }
        "conntrack-delete" | "conntrack-delete-page" => {
            for k in ["cursor", "max", "sport", "dport"] {
                if i.bool() {
                    let v = i.pick(INTERESTING_U16);
                    r[k] = maybe(i, json!(v));
                }
            }
            if i.bool() {
                let a = i.pick(&["192.168.15.1", "203.0.113.10", "x"]);
                r["src"] = maybe(i, json!(a));
            }
            if i.bool() {
                let p = i.pick(&["tcp", "udp", "icmp", "17", "x"]);
                r["proto"] = maybe(i, json!(p));
            }
        }
        "capture" => {
            let port = i.pick(&["red", "veth-red-br", "wan", "nobody"]);
            r["port"] = maybe(i, json!(port));
            // Bounded: a capture with neither bound streams until the client leaves.
            if i.bool() {
                r["count"] = json!(0);
            } else {
                r["duration_ms"] = json!(i.below(20));
            }
        }
        _ => {
            if i.below(4) == 0 {
                r["args"] = odd_value(i);
            }
        }
    }
    let mut line = r.to_string().into_bytes();
    match i.below(16) {
        0 => {
            let n = i.below(line.len() + 1);
            line.truncate(n);
        }
        1 => line.extend(std::iter::repeat_n(b' ', 70_000)),
        2 => {
            let at = i.below(line.len());
            line[at] = i.u8();
        }
        3 => line.extend_from_slice(b"\n{\"cmd\":\"stats\"}"),
        _ => {}
    }
    if i.below(8) != 0 {
        line.push(b'\n');
    }
    line
}

/// Seed requests: one of each command.
pub fn seeds() -> Vec<Vec<u8>> {
    (0..17u8).map(|k| vec![1, k, 0, 0, 0, 0]).collect()
}

/// Run one case.
pub fn run(data: &[u8]) -> Result<(), String> {
    let path = SOCKET.get_or_init(start).clone()?;
    if WORKER_DEAD.load(Ordering::SeqCst) {
        return Err("the worker thread died (panicked) on an earlier request".into());
    }
    let mut i = Input::new(data);
    let line = request(&mut i);
    let mut c = UnixStream::connect(&path).map_err(|e| format!("connect: {e}"))?;
    c.set_read_timeout(Some(Duration::from_secs(8)))
        .map_err(|e| e.to_string())?;
    c.set_write_timeout(Some(Duration::from_secs(8)))
        .map_err(|e| e.to_string())?;
    // The server reads one line (at most 64 KiB) and may close before the rest is written.
    let _ = c.write_all(&line);
    let _ = c.shutdown(std::net::Shutdown::Write);
    let mut r = BufReader::new(&c);
    let mut answer = Vec::new();
    match r.by_ref().take(1 << 20).read_until(b'\n', &mut answer) {
        Ok(_) => {}
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut =>
        {
            return Err("no answer and no close within 8 s".into());
        }
        Err(_) => {} // reset: closed
    }
    if !answer.is_empty() {
        let v: Value = serde_json::from_slice(&answer).map_err(|e| {
            format!(
                "answer is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&answer)
            )
        })?;
        if !v["ok"].is_boolean() {
            return Err(format!("answer lacks a boolean \"ok\": {v}"));
        }
    }
    drop(r);
    drop(c);
    let stuck = String::from_utf8_lossy(&answer).contains("did not answer");
    if stuck {
        std::thread::sleep(Duration::from_millis(100));
    }
    if WORKER_DEAD.load(Ordering::SeqCst) {
        return Err("the worker thread died (panicked)".into());
    }
    if stuck {
        return Err("the worker did not answer within 5 s".into());
    }
    if false {
        return Err("the worker thread died (panicked)".into());
    }
    Ok(())
}
