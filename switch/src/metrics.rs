//! A Prometheus text endpoint (`vswitch run --metrics 127.0.0.1:PORT`).
//!
//! Contract: a small HTTP/1.0 server on its own thread; every scrape asks the
//! worker for a stats snapshot (answered between batches, like the control
//! socket) and renders it in the text exposition format 0.0.4. The listener
//! lives in the switch's namespace (the root one when none is configured).

use crate::worker::Request;
use nix::sys::eventfd::EventFd;
use serde_json::Value;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Render a `stats` answer as Prometheus text.
pub fn render(v: &Value) -> String {
    let mut o = String::new();
    let ports = v["ports"].as_array().cloned().unwrap_or_default();
    for (metric, field, help) in [
        (
            "vswitch_port_rx_packets_total",
            "rx_packets",
            "Frames received on the port.",
        ),
        (
            "vswitch_port_rx_bytes_total",
            "rx_bytes",
            "Bytes received on the port.",
        ),
        (
            "vswitch_port_tx_packets_total",
            "tx_packets",
            "Frames sent on the port.",
        ),
        (
            "vswitch_port_tx_bytes_total",
            "tx_bytes",
            "Bytes sent on the port.",
        ),
        (
            "vswitch_port_flooded_total",
            "flooded",
            "Frames flooded from the port.",
        ),
        (
            "vswitch_port_capture_dropped_total",
            "capture_dropped",
            "Copies for captures and pcap mirrors of the port dropped for a slow reader.",
        ),
    ] {
        family(&mut o, metric, "counter", help);
        for p in &ports {
            let _ = writeln!(
                o,
                "{metric}{{port=\"{}\",netns=\"{}\"}} {}",
                esc(p["name"].as_str().unwrap_or("")),
                esc(p["netns"].as_str().unwrap_or("")),
                p[field].as_u64().unwrap_or(0)
            );
        }
    }
    family(
        &mut o,
        "vswitch_port_drops_total",
        "counter",
        "Frames dropped, by port and named reason.",
    );
    for p in &ports {
        for (reason, n) in p["drops"].as_object().into_iter().flatten() {
            let _ = writeln!(
                o,
                "vswitch_port_drops_total{{port=\"{}\",reason=\"{}\"}} {}",
                esc(p["name"].as_str().unwrap_or("")),
                esc(reason),
                n.as_u64().unwrap_or(0)
            );
        }
    }
    family(
        &mut o,
        "vswitch_port_up",
        "gauge",
        "1 if the port is in service.",
    );
    for p in &ports {
        let _ = writeln!(
            o,
            "vswitch_port_up{{port=\"{}\"}} {}",
            esc(p["name"].as_str().unwrap_or("")),
            u8::from(p["state"] == "up")
        );
    }
    family(&mut o, "vswitch_fdb_entries", "gauge", "MAC table entries.");
    let _ = writeln!(
        o,
        "vswitch_fdb_entries {}",
        v["fdb"]["entries"].as_u64().unwrap_or(0)
    );
    family(
        &mut o,
        "vswitch_fdb_events_total",
        "counter",
        "MAC table events.",
    );
    for (k, n) in v["fdb"]["counters"].as_object().into_iter().flatten() {
        let _ = writeln!(
            o,
            "vswitch_fdb_events_total{{event=\"{}\"}} {}",
            esc(k),
            n.as_u64().unwrap_or(0)
        );
    }
    family(
        &mut o,
        "vswitch_arp_entries",
        "gauge",
        "IP to MAC bindings learned from ARP.",
    );
    let _ = writeln!(
        o,
        "vswitch_arp_entries {}",
        v["arp"]["entries"].as_u64().unwrap_or(0)
    );
    if let Some(n) = v.get("nat") {
        nat_metrics(
            &mut o,
            n,
            [
                "vswitch_conntrack_entries",
                "vswitch_conntrack_max",
                "vswitch_nat_events_total",
                "vswitch_nat_drops_total",
            ],
            "NAT",
        );
    }
    if let Some(n) = v.get("nat6") {
        nat_metrics(
            &mut o,
            n,
            [
                "vswitch_nat66_entries",
                "vswitch_nat66_max",
                "vswitch_nat66_events_total",
                "vswitch_nat66_drops_total",
            ],
            "NAT66",
        );
    }
    if let Some(fp) = v.get("fastpath")
        && fp["state"] == "on"
    {
        family(
            &mut o,
            "vswitch_fastpath_flows",
            "gauge",
            "Flow directions installed in the kernel fast path.",
        );
        let _ = writeln!(
            o,
            "vswitch_fastpath_flows {}",
            fp["flows"].as_u64().unwrap_or(0)
        );
        family(
            &mut o,
            "vswitch_fastpath_events_total",
            "counter",
            "Fast path installs and removals by reason, and its programs' counters (kernel_*).",
        );
        let mut events: Vec<(String, u64)> = [
            "installed",
            "removed_end",
            "removed_idle",
            "removed_revalidate",
            "removed_nat_gone",
            "removed_flush",
            "full",
            "install_errors",
            "pending_dropped",
        ]
        .iter()
        .map(|k| (k.to_string(), fp[*k].as_u64().unwrap_or(0)))
        .collect();
        if let Some(k) = fp["kernel"].as_object() {
            events.extend(
                k.iter()
                    .map(|(n, c)| (format!("kernel_{n}"), c.as_u64().unwrap_or(0))),
            );
        }
        for (k, n) in events {
            let _ = writeln!(
                o,
                "vswitch_fastpath_events_total{{event=\"{}\"}} {n}",
                esc(&k)
            );
        }
    }
    if let Some(ts) = v["tunnels"].as_array()
        && !ts.is_empty()
    {
        family(
            &mut o,
            "vswitch_tunnel_events_total",
            "counter",
            "VXLAN tunnel counters: datagrams, UDP_SEGMENT sends, super-frames cut, coalesced receives, flood copies.",
        );
        for t in ts {
            let name = esc(t["name"].as_str().unwrap_or(""));
            for (k, n) in t["counters"].as_object().into_iter().flatten() {
                let _ = writeln!(
                    o,
                    "vswitch_tunnel_events_total{{tunnel=\"{name}\",event=\"{}\"}} {}",
                    esc(k),
                    n.as_u64().unwrap_or(0)
                );
            }
        }
    }
    if let Some(g) = v["gateway"]["counters"].as_object() {
        family(
            &mut o,
            "vswitch_gateway_events_total",
            "counter",
            "Gateway events and drops.",
        );
        for (k, n) in g {
            let _ = writeln!(
                o,
                "vswitch_gateway_events_total{{event=\"{}\"}} {}",
                esc(k),
                n.as_u64().unwrap_or(0)
            );
        }
    }
    family(
        &mut o,
        "vswitch_policy_hits_total",
        "counter",
        "Hits per policy rule (ACL) and rate-limit drops.",
    );
    for (k, n) in v["policy"].as_object().into_iter().flatten() {
        let _ = writeln!(
            o,
            "vswitch_policy_hits_total{{rule=\"{}\"}} {}",
            esc(k),
            n.as_u64().unwrap_or(0)
        );
    }
    family(
        &mut o,
        "vswitch_policy_reloads_total",
        "counter",
        "Policy reloads.",
    );
    let _ = writeln!(
        o,
        "vswitch_policy_reloads_total {}",
        v["reloads"].as_u64().unwrap_or(0)
    );
    o
}

/// Scrapes served at once; more get `503` at once and are closed.
pub const MAX_SCRAPERS: usize = 8;
/// Time a scraper has to send its request, and the bound of each write.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// Serve `listener` on a thread: `GET /metrics` (or `/`) returns the current
/// counters. Each connection is served on its own thread (at most
/// [`MAX_SCRAPERS`] at once) with bounded reads and writes, so a silent or
/// slow client never holds up another scrape.
pub fn serve(
    listener: TcpListener,
    to_worker: Sender<Request>,
    wake: Arc<EventFd>,
    lanes: crate::control::Lanes,
) {
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("vswitch-metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                if active.fetch_add(1, Ordering::AcqRel) >= MAX_SCRAPERS {
                    active.fetch_sub(1, Ordering::AcqRel);
                    tracing::warn!("metrics: more than {MAX_SCRAPERS} scrapes at once; one refused");
                    let _ = conn.set_write_timeout(Some(Duration::from_millis(100)));
                    let body = "too many concurrent scrapes\n";
                    let _ = write!(conn, "HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                    continue;
                }
                let (to_worker, wake, active2) = (to_worker.clone(), wake.clone(), active.clone());
                let lanes = lanes.clone();
                let spawned = std::thread::Builder::new()
                    .name("vswitch-scrape".into())
                    .spawn(move || {
                        scrape(conn, &to_worker, &wake, &lanes);
                        active2.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    active.fetch_sub(1, Ordering::AcqRel);
                }
            }
        })
        .expect("spawn metrics thread");
}

/// Read the request line (within [`SCRAPE_TIMEOUT`] in total) and answer it.
fn scrape(
    mut conn: TcpStream,
    to_worker: &Sender<Request>,
    wake: &EventFd,
    lanes: &crate::control::Lanes,
) {
    let _ = conn.set_write_timeout(Some(SCRAPE_TIMEOUT));
    let deadline = Instant::now() + SCRAPE_TIMEOUT;
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while n < buf.len() && !buf[..n].contains(&b'\n') {
        let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            return;
        };
        let _ = conn.set_read_timeout(Some(left));
        match conn.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
    let req = String::from_utf8_lossy(&buf[..n]);
    let path = req.split_whitespace().nth(1).unwrap_or("/");
    tracing::debug!("metrics scrape: {path}");
    let (status, body) = if path == "/metrics" || path == "/" {
        let v = crate::control::stats_all(to_worker, wake, lanes);
        if v["ok"] != false {
            ("200 OK", render(&v))
        } else {
            (
                "503 Service Unavailable",
                "the switch did not answer\n".to_string(),
            )
        }
    } else {
        ("404 Not Found", "try /metrics\n".to_string())
    };
    let _ = write!(
        conn,
        "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
}

/// The HELP and TYPE lines of metric family `name`.
fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The families of one NAT engine's `stats` view `n` (NAT44 or NAT66),
/// under the metric names `names` (entries, bound, events, drops).
fn nat_metrics(o: &mut String, n: &Value, names: [&str; 4], what: &str) {
    let [entries, max, events, drops] = names;
    family(
        o,
        entries,
        "gauge",
        &format!("{what} connection tracking entries."),
    );
    let _ = writeln!(o, "{entries} {}", n["entries"].as_u64().unwrap_or(0));
    family(
        o,
        max,
        "gauge",
        &format!("Bound of the {what} connection table."),
    );
    let _ = writeln!(o, "{max} {}", n["max_entries"].as_u64().unwrap_or(0));
    family(o, events, "counter", &format!("{what} events."));
    for k in [
        "created",
        "expired",
        "early_dropped",
        "translated",
        "icmp_errors_translated",
        "hairpins",
        "fragments_held",
    ] {
        let _ = writeln!(
            o,
            "{events}{{event=\"{k}\"}} {}",
            n[k].as_u64().unwrap_or(0)
        );
    }
    family(
        o,
        drops,
        "counter",
        &format!("Packets the {what} dropped, by reason."),
    );
    for (k, c) in n["drops"].as_object().into_iter().flatten() {
        let _ = writeln!(
            o,
            "{drops}{{reason=\"{}\"}} {}",
            esc(k),
            c.as_u64().unwrap_or(0)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_valid_exposition_lines() {
        let v = json!({
            "ports": [{"name": "veth-red-br", "netns": "red", "state": "up", "rx_packets": 3, "rx_bytes": 300, "tx_packets": 2, "tx_bytes": 200, "flooded": 1, "drops": {"runt": 0, "acl": 2}}],
            "fdb": {"entries": 2, "counters": {"learned": 2}},
            "arp": {"entries": 1},
            "policy": {"acl:no-\"x\"": 5},
            "reloads": 1,
            "fastpath": {"state": "on", "flows": 4, "installed": 6, "kernel": {"forwarded": 77}},
            "tunnels": [{"name": "vxlan0", "counters": {"rx_datagrams": 9, "tx_gso_sends": 3}}],
        });
        let t = render(&v);
        assert!(t.contains("vswitch_port_rx_packets_total{port=\"veth-red-br\",netns=\"red\"} 3"));
        assert!(t.contains("vswitch_port_drops_total{port=\"veth-red-br\",reason=\"acl\"} 2"));
        assert!(
            t.contains(r#"vswitch_policy_hits_total{rule="acl:no-\"x\""} 5"#),
            "{t}"
        );
        assert!(t.contains("vswitch_fastpath_flows 4"), "{t}");
        assert!(t.contains(r#"vswitch_fastpath_events_total{event="installed"} 6"#));
        assert!(t.contains(r#"vswitch_fastpath_events_total{event="kernel_forwarded"} 77"#));
        assert!(
            t.contains(r#"vswitch_tunnel_events_total{tunnel="vxlan0",event="tx_gso_sends"} 3"#)
        );
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(name.starts_with("vswitch_"), "{line}");
        }
    }

    /// A stand-in worker: answers `stats` requests with a fixed snapshot.
    fn fake_worker() -> (Sender<Request>, Arc<EventFd>) {
        let (tx, rx) = std::sync::mpsc::channel::<Request>();
        std::thread::spawn(move || {
            for r in rx {
                let _ = r.reply.send(json!({"ports": [], "reloads": 3}));
            }
        });
        (tx, Arc::new(EventFd::new().unwrap()))
    }

    fn get(addr: std::net::SocketAddr) -> String {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        write!(c, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut s = String::new();
        let _ = c.read_to_string(&mut s);
        s
    }

    #[test]
    fn a_silent_client_does_not_block_scrapes() {
        // Issue 8: the server was single-threaded; one silent client stalled every scrape.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, wake) = fake_worker();
        serve(l, tx, wake, Default::default());
        let _silent = TcpStream::connect(addr).unwrap();
        let _silent2 = TcpStream::connect(addr).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        let body = get(addr);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert!(body.starts_with("HTTP/1.0 200 OK"), "{body}");
        assert!(body.contains("vswitch_policy_reloads_total 3"), "{body}");
    }

    #[test]
    fn scrapers_over_the_bound_get_503_at_once() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, wake) = fake_worker();
        serve(l, tx, wake, Default::default());
        let silent: Vec<TcpStream> = (0..MAX_SCRAPERS)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        assert!(get(addr).starts_with("HTTP/1.0 503"));
        assert!(t.elapsed() < Duration::from_secs(1));
        drop(silent);
        // The silent ones time out or close; then scrapes are served again.
        let deadline = Instant::now() + SCRAPE_TIMEOUT + Duration::from_secs(2);
        loop {
            if get(addr).starts_with("HTTP/1.0 200") {
                break;
            }
            assert!(Instant::now() < deadline, "never recovered");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
