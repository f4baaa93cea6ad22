//! The control socket: a Unix stream socket (mode 0600) speaking one JSON
//! line per request and per answer: `{"cmd":"fdb"}` → `{"ok":true,...}`.
//!
//! Contract: the server thread never touches forwarding state; it hands each
//! request to the worker ([`crate::worker::Request`]) and waits (bounded) for
//! the answer. Clients ([`query`]) get a clear error when no switch runs.

use crate::worker::{ConntrackPage, Request};
use nix::sys::eventfd::EventFd;
use serde_json::{Value, json};
use std::io::{self, BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Sender, sync_channel};
use std::time::Duration;

/// Directory of control sockets.
pub const RUN_DIR: &str = "/run/vswitch";

/// Default control socket of topology `name`.
pub fn default_socket(topology: &str) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{topology}.sock"))
}

/// Bind the control socket at `path` (mode 0600), refusing if a switch is already serving it.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "another vswitch is already serving {} (stop it first)",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)?; // stale, from a crashed run
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Clients served at once; the next one gets a one-line JSON error and is closed.
pub const MAX_CLIENTS: usize = 16;
/// Time a client has to send its request line, and the bound of each write.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound of each write of a capture stream (a client that stops reading is dropped).
pub const CAPTURE_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Serve `listener` on a background thread, forwarding requests to the worker.
/// At most [`MAX_CLIENTS`] clients are served at once, each on its own thread
/// with bounded reads and writes, so no client can pin a thread forever.
pub fn serve(listener: UnixListener, to_worker: Sender<Request>, wake: Arc<EventFd>) {
    serve_limited(
        listener,
        to_worker,
        wake,
        MAX_CLIENTS,
        CLIENT_TIMEOUT,
        None,
        Lanes::default(),
    );
}

/// The request queues of workers 1.. (`[switch] workers > 1`; empty with
/// one worker). Worker 0 holds the gateway, NAT, ARP and the whole MAC
/// table, and answers everything but what the others must see too:
/// `stats` (counters summed, [`stats_all`]), `capture` (each worker copies
/// the frames it handles) and the MAC table edits `fdb-add|del|flush`.
pub type Lanes = Arc<Vec<(Sender<Request>, Arc<EventFd>)>>;

/// Add the counters of `b` into `a`: numbers summed, objects merged key by
/// key (`skip` names top-level keys left as in `a`), anything else kept.
fn add_counts(a: &mut Value, b: &Value, skip: &[&str]) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, bv) in b {
                if skip.contains(&k.as_str()) {
                    continue;
                }
                match a.get_mut(k) {
                    Some(av) => add_counts(av, bv, &[]),
                    None => {
                        a.insert(k.clone(), bv.clone());
                    }
                }
            }
        }
        (a @ Value::Number(_), Value::Number(b)) => {
            if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
                *a = x.saturating_add(y).into();
            }
        }
        _ => {}
    }
}

/// `stats` of the whole switch: worker 0's answer with the port and policy
/// counters of every worker added in, and `workers`, each worker's polling
/// and MAC sharing (`worker` stays worker 0's).
pub fn stats_all(to_worker: &Sender<Request>, wake: &EventFd, lanes: &Lanes) -> Value {
    let mut v = ask(to_worker, wake, "stats", json!({"cmd": "stats"}), None);
    if lanes.is_empty() || v["ok"] != true {
        return v;
    }
    let mut workers = vec![v["worker"].clone()];
    for (k, (tx, w)) in lanes.iter().enumerate() {
        let l = ask(tx, w, "stats", json!({"cmd": "stats"}), None);
        if l["ok"] != true {
            return json!({"ok": false, "error": format!("worker {}: {}", k + 1, l["error"])});
        }
        if let (Some(a), Some(b)) = (v["ports"].as_array_mut(), l["ports"].as_array()) {
            for (pa, pb) in a.iter_mut().zip(b) {
                add_counts(pa, pb, &["fdb_entries"]);
            }
        }
        add_counts(&mut v["policy"], &l["policy"], &[]);
        workers.push(l["worker"].clone());
    }
    v["workers"] = workers.into();
    v
}

/// Answers the requests it owns (`reload`, `port-add`, `port-del`) on the
/// client's thread, `None` for the others (see [`crate::live::Live`]).
pub type LiveHandler = Arc<dyn Fn(&str, &Value) -> Option<Value> + Send + Sync>;

/// Like [`serve`], with `live` answering the live-change requests.
pub fn serve_with(
    listener: UnixListener,
    to_worker: Sender<Request>,
    wake: Arc<EventFd>,
    live: LiveHandler,
    lanes: Lanes,
) {
    serve_limited(
        listener,
        to_worker,
        wake,
        MAX_CLIENTS,
        CLIENT_TIMEOUT,
        Some(live),
        lanes,
    );
}

fn serve_limited(
    listener: UnixListener,
    to_worker: Sender<Request>,
    wake: Arc<EventFd>,
    max_clients: usize,
    timeout: Duration,
    live: Option<LiveHandler>,
    lanes: Lanes,
) {
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("vswitch-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                if active.fetch_add(1, Ordering::AcqRel) >= max_clients {
                    active.fetch_sub(1, Ordering::AcqRel);
                    tracing::warn!("control: more than {max_clients} clients at once; one refused");
                    // One short line into an empty socket buffer: never blocks for long.
                    let _ = conn.set_write_timeout(Some(Duration::from_millis(100)));
                    let mut w = &conn;
                    let _ = writeln!(
                        w,
                        "{}",
                        json!({"ok": false, "error": format!("too many control clients (at most {max_clients}); try again")})
                    );
                    continue;
                }
                let (to_worker, wake, active2) = (to_worker.clone(), wake.clone(), active.clone());
                let live = live.clone();
                let lanes = lanes.clone();
                // One thread per client: a capture streams for as long as it runs.
                let spawned = std::thread::Builder::new()
                    .name("vswitch-client".into())
                    .spawn(move || {
                        let _ =
                            handle(conn, &to_worker, &wake, timeout, live.as_ref(), &lanes);
                        active2.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    active.fetch_sub(1, Ordering::AcqRel);
                }
            }
        })
        .expect("spawn control thread");
}

/// Ask the worker for one page of the connection table.
fn ask_page(
    to_worker: &Sender<Request>,
    wake: &EventFd,
    family: u8,
    cursor: usize,
    max: usize,
) -> Result<ConntrackPage, String> {
    let (tx, _rx) = sync_channel(1);
    let (ptx, prx) = sync_channel(1);
    to_worker
        .send(Request {
            cmd: "conntrack-page".into(),
            args: json!({"family": family, "cursor": cursor, "max": max}),
            tap: None,
            reply: tx,
            page: Some(ptx),
            snapshot: None,
        })
        .map_err(|_| "the switch is shutting down".to_string())?;
    let _ = wake.write(1);
    prx.recv_timeout(Duration::from_secs(5))
        .map_err(|_| "the worker did not answer within 5 s".to_string())
}

/// Answer `fdb` or `arp`: the worker copies the table in plain structs, this
/// (control) thread formats it.
fn table_listing(to_worker: &Sender<Request>, wake: &EventFd, fdb: bool) -> Value {
    let (tx, _rx) = sync_channel(1);
    let (stx, srx) = sync_channel(1);
    let sent = to_worker.send(Request {
        cmd: if fdb { "fdb-snapshot" } else { "arp-snapshot" }.into(),
        args: json!({}),
        tap: None,
        reply: tx,
        page: None,
        snapshot: Some(stx),
    });
    if sent.is_err() {
        return json!({"ok": false, "error": "the switch is shutting down"});
    }
    let _ = wake.write(1);
    let Ok(s) = srx.recv_timeout(Duration::from_secs(5)) else {
        return json!({"ok": false, "error": "the worker did not answer within 5 s"});
    };
    let port = |i: usize| s.ports.get(i).cloned().unwrap_or_default();
    if fdb {
        let entries: Vec<Value> = s
            .fdb
            .iter()
            .map(|(mac, e)| {
                let (name, netns) = port(e.port);
                json!({
                    "mac": mac.to_string(),
                    "vlan": e.vlan,
                    "port": name,
                    "netns": netns,
                    "age_ms": s.now.saturating_sub(e.last_seen),
                    "static": e.is_static,
                    "dst": e.vtep.map(|v| v.to_string()),
                })
            })
            .collect();
        json!({"ok": true, "switch": s.switch, "ageing_ms": s.ageing_ms, "entries": entries, "counters": s.fdb_counters})
    } else {
        let entry = |ip: String, e: &crate::arp::ArpEntry| {
            json!({
                "ip": ip,
                "mac": e.mac.to_string(),
                "port": port(e.port).0,
                "age_ms": s.now.saturating_sub(e.last_seen),
            })
        };
        let entries: Vec<Value> = s
            .arp
            .iter()
            .map(|(ip, e)| entry(ip.to_string(), e))
            .collect();
        let nd: Vec<Value> =
            s.nd.iter()
                .map(|(ip, e)| entry(ip.to_string(), e))
                .collect();
        json!({"ok": true, "switch": s.switch, "entries": entries, "counters": s.arp_counters,
               "neighbours6": nd, "nd_counters": s.nd_counters})
    }
}

/// Filters of a `conntrack` request (all optional): `proto` (name or number),
/// `src`, `dst`, `sport`, `dport` (of the original direction), `state` (TCP).
pub(crate) struct CtFilter {
    proto: Option<String>,
    src: Option<String>,
    dst: Option<String>,
    sport: Option<u64>,
    dport: Option<u64>,
    state: Option<String>,
}

impl CtFilter {
    pub(crate) fn of(req: &Value) -> CtFilter {
        let s = |k: &str| req[k].as_str().map(str::to_string);
        CtFilter {
            proto: s("proto").or_else(|| req["proto"].as_u64().map(|n| n.to_string())),
            src: s("src"),
            dst: s("dst"),
            sport: req["sport"].as_u64(),
            dport: req["dport"].as_u64(),
            state: s("state"),
        }
    }
    fn is_empty(&self) -> bool {
        self.proto.is_none()
            && self.src.is_none()
            && self.dst.is_none()
            && self.sport.is_none()
            && self.dport.is_none()
            && self.state.is_none()
    }
    pub(crate) fn keep(&self, e: &nat::EntryView<IpAddr>) -> bool {
        let name = proto_name(e.proto);
        self.proto
            .as_deref()
            .is_none_or(|p| p.eq_ignore_ascii_case(name) || p == e.proto.to_string())
            && self
                .src
                .as_deref()
                .is_none_or(|a| a == e.orig.src.to_string())
            && self
                .dst
                .as_deref()
                .is_none_or(|a| a == e.orig.dst.to_string())
            && self.sport.is_none_or(|p| p == u64::from(e.orig.sport))
            && self.dport.is_none_or(|p| p == u64::from(e.orig.dport))
            && self
                .state
                .as_deref()
                .is_none_or(|st| e.state.eq_ignore_ascii_case(st))
    }
}

/// The name `conntrack -L` gives a protocol number.
fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "tcp",
        17 => "udp",
        1 => "icmp",
        58 => "icmpv6",
        _ => "other",
    }
}

/// Append the JSON object of one connection-table entry to `o`. Written as
/// text directly: a listing of 262k entries builds no tree of values.
pub fn write_conntrack_entry(o: &mut String, e: &nat::EntryView<IpAddr>) {
    use std::fmt::Write as _;
    let name = proto_name(e.proto);
    let tuple = |o: &mut String, t: &nat::Tuple<IpAddr>| {
        let _ = write!(
            o,
            r#"{{"src":"{}","dst":"{}","sport":{},"dport":{}}}"#,
            t.src, t.dst, t.sport, t.dport
        );
    };
    let _ = write!(
        o,
        r#"{{"proto":"{name}","proto_num":{},"state":{},"timeout":{},"original":"#,
        e.proto,
        Value::from(e.state),
        e.secs_left
    );
    tuple(o, &e.orig);
    o.push_str(r#","reply":"#);
    tuple(o, &e.reply);
    let _ = write!(
        o,
        r#","packets":[{},{}],"bytes":[{},{}],"assured":{}}}"#,
        e.packets[0], e.packets[1], e.bytes[0], e.bytes[1], e.assured
    );
}

/// Answer `conntrack` (one JSON line): the worker hands over the table in
/// pages of [`crate::worker::MAX_PAGE`] plain entries, answered between
/// batches; this (control) thread filters and formats them. With
/// `"count": true`, only the number of (matching) entries: one O(1) request
/// to the worker without filters.
fn conntrack_listing(to_worker: &Sender<Request>, wake: &EventFd, req: &Value) -> String {
    let filter = CtFilter::of(req);
    let count_only = req["count"].as_bool() == Some(true);
    if count_only && filter.is_empty() {
        return ask(to_worker, wake, "conntrack-count", json!({}), None).to_string();
    }
    let mut entries = String::from("[");
    let mut matched = 0usize;
    let (mut switch, mut total) = (String::new(), 0);
    // NAT44's table, then NAT66's.
    for family in [4u8, 6] {
        let mut cursor = 0;
        loop {
            let page = match ask_page(to_worker, wake, family, cursor, crate::worker::MAX_PAGE) {
                Ok(p) => p,
                Err(e) => return json!({"ok": false, "error": e}).to_string(),
            };
            for e in page.entries.iter().filter(|e| filter.keep(e)) {
                if !count_only {
                    if matched > 0 {
                        entries.push(',');
                    }
                    write_conntrack_entry(&mut entries, e);
                }
                matched += 1;
            }
            match page.next {
                Some(c) => cursor = c,
                None => {
                    switch = page.switch;
                    total += page.total;
                    break;
                }
            }
        }
    }
    entries.push(']');
    if count_only {
        json!({"ok": true, "switch": switch, "entries": matched, "total": total}).to_string()
    } else {
        format!(
            r#"{{"ok":true,"switch":{},"total":{total},"entries":{entries}}}"#,
            Value::from(switch)
        )
    }
}

/// Answer `conntrack-delete` (`conntrack -D` with the listing's filters, or
/// `-F` without any): the worker deletes page by page, one bounded request
/// of [`crate::worker::DELETE_PAGE`] entries between batches, so a large
/// deletion never stalls forwarding; answers the number deleted.
fn conntrack_delete(to_worker: &Sender<Request>, wake: &EventFd, req: &Value) -> Value {
    let mut args = req.clone();
    let mut deleted = 0;
    let mut last = Value::Null;
    for family in [4u8, 6] {
        let mut cursor = 0;
        args["family"] = family.into();
        loop {
            args["cursor"] = cursor.into();
            args["max"] = crate::worker::DELETE_PAGE.into();
            let v = ask(to_worker, wake, "conntrack-delete-page", args.clone(), None);
            if v["ok"] != true {
                return v;
            }
            deleted += v["deleted"].as_u64().unwrap_or(0);
            match v["next"].as_u64() {
                Some(c) => cursor = c,
                None => {
                    if family == 4 || v["nat"] == true {
                        last = v;
                    }
                    break;
                }
            }
        }
    }
    json!({"ok": true, "switch": last["switch"], "nat": last["nat"], "deleted": deleted})
}

/// Write the pcap global header (microsecond timestamps, Ethernet).
pub fn pcap_header(w: &mut impl Write) -> io::Result<()> {
    let mut h = Vec::with_capacity(24);
    h.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&4u16.to_le_bytes());
    h.extend_from_slice(&0i32.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&262_144u32.to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
    w.write_all(&h)
}

/// Write one pcap record from a tap message (8-byte µs timestamp + frame).
pub fn pcap_record(w: &mut impl Write, msg: &[u8]) -> io::Result<()> {
    let ts = u64::from_le_bytes(msg[..8].try_into().expect("tap message has a timestamp"));
    let frame = &msg[8..];
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&((ts / 1_000_000) as u32).to_le_bytes());
    h[4..8].copy_from_slice(&((ts % 1_000_000) as u32).to_le_bytes());
    h[8..12].copy_from_slice(&(frame.len() as u32).to_le_bytes());
    h[12..16].copy_from_slice(&(frame.len() as u32).to_le_bytes());
    w.write_all(&h)?;
    w.write_all(frame)
}

fn ask(
    to_worker: &Sender<Request>,
    wake: &EventFd,
    cmd: &str,
    args: Value,
    tap: Option<crate::worker::TapSink>,
) -> Value {
    let (tx, rx) = sync_channel(1);
    if to_worker
        .send(Request {
            cmd: cmd.to_string(),
            args,
            tap,
            reply: tx,
            page: None,
            snapshot: None,
        })
        .is_err()
    {
        return json!({"ok": false, "error": "the switch is shutting down"});
    }
    let _ = wake.write(1);
    rx.recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|_| json!({"ok": false, "error": "the worker did not answer within 5 s"}))
}

/// Read one request line (at most 64 KiB) within `timeout` in total, however
/// slowly the client trickles it.
fn read_request(conn: &UnixStream, timeout: Duration) -> io::Result<String> {
    use std::io::Read;
    let deadline = std::time::Instant::now() + timeout;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline
            .checked_duration_since(std::time::Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "request line too slow"))?;
        conn.set_read_timeout(Some(left))?;
        let n = (&*conn).read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            buf.truncate(i);
            break;
        }
        if buf.len() > 65_536 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request line over 64 KiB",
            ));
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn handle(
    conn: UnixStream,
    to_worker: &Sender<Request>,
    wake: &EventFd,
    timeout: Duration,
    live: Option<&LiveHandler>,
    lanes: &Lanes,
) -> io::Result<()> {
    conn.set_write_timeout(Some(timeout))?;
    let line = match read_request(&conn, timeout) {
        Ok(l) => l,
        Err(e) => {
            let mut w = &conn;
            return writeln!(
                w,
                "{}",
                json!({"ok": false, "error": format!("reading the request: {e}")})
            );
        }
    };
    let req = match serde_json::from_str::<Value>(&line) {
        Ok(v) => v,
        Err(e) => {
            let mut w = &conn;
            return writeln!(
                w,
                "{}",
                json!({"ok": false, "error": format!("bad request: {e}")})
            );
        }
    };
    let Some(cmd) = req.get("cmd").and_then(Value::as_str).map(str::to_string) else {
        let mut w = &conn;
        return writeln!(
            w,
            "{}",
            json!({"ok": false, "error": "request lacks \"cmd\""})
        );
    };
    tracing::debug!("control request: {cmd}");
    if let Some(answer) = live.and_then(|h| h(&cmd, &req)) {
        let mut w = &conn;
        return writeln!(w, "{answer}");
    }
    if cmd == "fdb" || cmd == "arp" {
        let answer = table_listing(to_worker, wake, cmd == "fdb");
        let mut w = std::io::BufWriter::new(&conn);
        writeln!(w, "{answer}")?;
        return w.flush();
    }
    if cmd == "conntrack" {
        let answer = conntrack_listing(to_worker, wake, &req);
        let mut w = std::io::BufWriter::new(&conn);
        writeln!(w, "{answer}")?;
        return w.flush();
    }
    if cmd == "conntrack-delete" {
        let answer = conntrack_delete(to_worker, wake, &req);
        let mut w = &conn;
        return writeln!(w, "{answer}");
    }
    if cmd == "stats" {
        let answer = stats_all(to_worker, wake, lanes);
        let mut w = std::io::BufWriter::new(&conn);
        writeln!(w, "{answer}")?;
        return w.flush();
    }
    if matches!(cmd.as_str(), "fdb-add" | "fdb-del" | "fdb-flush") && !lanes.is_empty() {
        // Every worker's MAC table takes the edit; workers 1.. first, so
        // that nothing they learned before a flush reaches worker 0 after it.
        let mut failed = Vec::new();
        for (k, (tx, w)) in lanes.iter().enumerate() {
            let l = ask(tx, w, &cmd, req.clone(), None);
            if l["ok"] != true {
                failed.push(format!("worker {}: {}", k + 1, l["error"]));
            }
        }
        let mut answer = ask(to_worker, wake, &cmd, req, None);
        if answer["ok"] == true && !failed.is_empty() {
            answer = json!({"ok": false, "error": format!("applied on worker 0 but not on {}", failed.join("; "))});
        }
        let mut w = &conn;
        return writeln!(w, "{answer}");
    }
    if cmd != "capture" {
        let answer = ask(to_worker, wake, &cmd, req, None);
        let mut w = &conn;
        return writeln!(w, "{answer}");
    }
    // A capture: answer, then stream pcap until the count or duration is reached or the client leaves.
    let count = req["count"].as_u64().unwrap_or(u64::MAX);
    let until = req["duration_ms"]
        .as_u64()
        .map(|ms| std::time::Instant::now() + Duration::from_millis(ms));
    let (sink, rx) = crate::worker::TapSink::new(CAPTURE_QUEUE);
    let lost = sink.lost.clone();
    let answer = ask(to_worker, wake, &cmd, req.clone(), Some(sink.clone()));
    // Every worker copies the frames it handles into the one capture.
    if answer["ok"] == true {
        for (tx, w) in lanes.iter() {
            let _ = ask(tx, w, &cmd, req.clone(), Some(sink.clone()));
        }
    }
    drop(sink);
    let mut w = std::io::BufWriter::new(&conn);
    writeln!(w, "{answer}")?;
    if answer["ok"] != true {
        return w.flush();
    }
    let port = answer["port"].as_str().unwrap_or("?").to_string();
    tracing::info!("capture of {port} started");
    conn.set_write_timeout(Some(CAPTURE_WRITE_TIMEOUT))?;
    pcap_header(&mut w)?;
    w.flush()?;
    let mut n = 0;
    let mut last_check = std::time::Instant::now();
    while n < count {
        let wait = match until {
            Some(t) => match t.checked_duration_since(std::time::Instant::now()) {
                Some(d) => d.min(Duration::from_millis(200)),
                None => break,
            },
            None => Duration::from_millis(200),
        };
        match rx.recv_timeout(wait) {
            Ok(msg) => {
                pcap_record(&mut w, &msg)?;
                n += 1;
                if n % 32 == 0 || last_check.elapsed() >= Duration::from_millis(200) {
                    w.flush()?;
                    last_check = std::time::Instant::now();
                    if client_done(&conn) {
                        break;
                    }
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                w.flush()?;
                // Notice a client that is done (or gone) even when no traffic flows.
                if client_done(&conn) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let dropped = lost.load(std::sync::atomic::Ordering::Relaxed);
    if dropped > 0 {
        tracing::warn!(
            "capture of {port} ended: {n} frames, {dropped} dropped (the reader lagged)"
        );
    } else {
        tracing::info!("capture of {port} ended: {n} frames");
    }
    capture_trailer(&mut w, n, dropped)?;
    w.flush()
}

/// Frames a capture may queue for its client before the worker drops copies.
pub const CAPTURE_QUEUE: usize = 4096;

/// `incl_len` of the record header that ends a capture stream: the client
/// stops there and reads one JSON line, `{"frames": N, "dropped": D}`.
pub const CAPTURE_END: u32 = u32::MAX;

/// End a capture stream: a record header with `incl_len` [`CAPTURE_END`],
/// then the totals as one JSON line (not part of the pcap the client writes).
pub fn capture_trailer(w: &mut impl Write, frames: u64, dropped: u64) -> io::Result<()> {
    let mut h = [0u8; 16];
    h[8..12].copy_from_slice(&CAPTURE_END.to_le_bytes());
    w.write_all(&h)?;
    writeln!(w, "{}", json!({"frames": frames, "dropped": dropped}))
}

/// Whether the client of a stream has shut its side down (it wants the end)
/// or gone away: a non-blocking peek sees end-of-file or an error.
fn client_done(conn: &UnixStream) -> bool {
    use nix::sys::socket::{MsgFlags, recv};
    use std::os::fd::AsRawFd;
    let mut b = [0u8; 1];
    match recv(
        conn.as_raw_fd(),
        &mut b,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(0) => true,
        Ok(_) => false,
        Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => false,
        Err(_) => true,
    }
}

/// Totals at the end of a capture stream (see [`capture_trailer`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureEnd {
    /// Frames written.
    pub frames: u64,
    /// Frames the switch dropped because the capture's queue was full.
    pub dropped: u64,
}

/// Copy a capture stream (after the answer line) from `r` to `out` as a pcap
/// file, flushing whenever the input runs dry. Returns the totals from the
/// trailer, or `None` if the stream ended without one (switch gone).
pub fn copy_capture(
    r: &mut BufReader<impl io::Read>,
    out: &mut impl Write,
) -> io::Result<Option<CaptureEnd>> {
    use std::io::Read;
    let mut head = [0u8; 24];
    r.read_exact(&mut head)?;
    out.write_all(&head)?;
    out.flush()?;
    let mut buf = vec![0u8; 262_144];
    loop {
        let mut h = [0u8; 16];
        match r.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                out.flush()?;
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
        if len == CAPTURE_END {
            out.flush()?;
            let mut line = String::new();
            r.read_line(&mut line)?;
            let v: Value = serde_json::from_str(&line).unwrap_or_default();
            return Ok(Some(CaptureEnd {
                frames: v["frames"].as_u64().unwrap_or(0),
                dropped: v["dropped"].as_u64().unwrap_or(0),
            }));
        }
        let len = len as usize;
        if len > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("capture record of {len} bytes"),
            ));
        }
        r.read_exact(&mut buf[..len])?;
        out.write_all(&h)?;
        out.write_all(&buf[..len])?;
        if r.buffer().is_empty() {
            out.flush()?;
        }
    }
}

/// Send `cmd` to the switch serving `path` and return its JSON answer.
pub fn query(path: &Path, cmd: &str) -> Result<Value, String> {
    request(path, json!({"cmd": cmd})).map(|(v, _)| v)
}

/// Send a request object; returns the answer and the connection (for streams).
/// An answer with `"ok": false` is an `Err` with the switch's message.
pub fn request(path: &Path, req: Value) -> Result<(Value, BufReader<UnixStream>), String> {
    let (v, r) = exchange(path, req)?;
    if v.get("ok") != Some(&Value::Bool(true)) {
        return Err(v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("request failed")
            .to_string());
    }
    Ok((v, r))
}

/// Send a request object and return the switch's answer as it is, `"ok":
/// false` included; `Err` only when no answer came (no switch, permissions, I/O).
pub fn exchange(path: &Path, req: Value) -> Result<(Value, BufReader<UnixStream>), String> {
    let conn = UnixStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            format!(
                "no vswitch is running at {} ({e}); start one with `vswitch run`",
                path.display()
            )
        }
        io::ErrorKind::PermissionDenied => format!(
            "{}: permission denied (the control socket is root-only; use sudo)",
            path.display()
        ),
        _ => format!("{}: {e}", path.display()),
    })?;
    conn.set_read_timeout(Some(Duration::from_secs(15)))
        .map_err(|e| e.to_string())?;
    let mut w = &conn;
    // A switch that refuses the connection (too many clients) answers and
    // closes at once: the write may then fail, but its answer is still there.
    let sent = writeln!(w, "{req}");
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    match (r.read_line(&mut line), sent) {
        (Ok(n), _) if n > 0 => {}
        (_, Err(e)) => return Err(e.to_string()),
        (Err(e), _) => return Err(format!("reading the answer: {e}")),
        (Ok(_), Ok(())) => return Err("the switch closed the connection".into()),
    }
    let v: Value =
        serde_json::from_str(&line).map_err(|e| format!("bad answer from the switch: {e}"))?;
    Ok((v, r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::Ipv4Addr;
    use std::time::Instant;

    /// A NAT holding `n` UDP flows 192.168.15.x:(1000+i) -> 203.0.113.10:53.
    fn nat_with(n: usize) -> nat::Nat {
        let mut c = nat::NatConfig::new(Ipv4Addr::new(203, 0, 113, 1));
        c.masquerade = vec![nat::engine::Ipv4Net {
            addr: Ipv4Addr::new(192, 168, 15, 0),
            prefix: 24,
        }];
        let mut nat = nat::Nat::new(c);
        let route = |ip: Ipv4Addr| {
            if ip.octets()[..3] == [192, 168, 15] {
                nat::engine::Side::Lan
            } else {
                nat::engine::Side::Wan
            }
        };
        for i in 0..n {
            // IPv4 + UDP (checksum 0: none), built by hand.
            let mut p = vec![
                0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 192, 168, 15, 0, 203, 0, 113, 10,
            ];
            p[15] = 2 + (i % 7) as u8;
            let sp = 1000 + (i % 5000) as u16;
            p[19] = (i / 5000) as u8;
            p.extend(sp.to_be_bytes());
            p.extend([0, 53, 0, 8, 0, 0]);
            let c = nat::checksum::checksum(&p[..20]);
            p[10..12].copy_from_slice(&c.to_be_bytes());
            nat.process(0, nat::engine::Side::Lan, &mut p, false, &route);
        }
        assert_eq!(nat.len(), n);
        nat
    }

    /// A stand-in worker serving pages of `nat` like [`crate::worker::Worker`] does,
    /// counting the requests it answered.
    fn fake_worker(mut nat: nat::Nat) -> (Sender<Request>, Arc<EventFd>, Arc<AtomicUsize>) {
        let (tx, rx) = std::sync::mpsc::channel::<Request>();
        let asked = Arc::new(AtomicUsize::new(0));
        let a = asked.clone();
        std::thread::spawn(move || {
            for r in rx {
                a.fetch_add(1, Ordering::SeqCst);
                match r.cmd.as_str() {
                    "conntrack-page" => {
                        let max = r.args["max"].as_u64().unwrap() as usize;
                        assert!(max <= crate::worker::MAX_PAGE);
                        let (entries, next) = if r.args["family"] == 6 {
                            (Vec::new(), None)
                        } else {
                            let (e, n) = nat.entries_from(
                                1,
                                r.args["cursor"].as_u64().unwrap() as usize,
                                max,
                            );
                            (e.iter().map(nat::EntryView::widen).collect(), n)
                        };
                        let _ = r.page.unwrap().send(ConntrackPage {
                            switch: "sw".into(),
                            nat: r.args["family"] != 6,
                            entries,
                            next,
                            total: if r.args["family"] == 6 { 0 } else { nat.len() },
                        });
                    }
                    "fdb-snapshot" => {
                        let _ = r.snapshot.unwrap().send(crate::worker::TableSnapshot {
                            switch: "sw".into(),
                            ports: vec![("p0".into(), "red".into())],
                            now: 5000,
                            fdb: vec![(
                                crate::wire::MacAddr([2, 0, 0, 0, 0, 1]),
                                crate::fdb::FdbEntry {
                                    port: 0,
                                    vlan: 0,
                                    last_seen: 1000,
                                    is_static: false,
                                    vtep: None,
                                },
                            )],
                            ..Default::default()
                        });
                    }
                    "conntrack-delete-page" => {
                        let max = r.args["max"].as_u64().unwrap() as usize;
                        assert!(max <= crate::worker::DELETE_PAGE);
                        let f = CtFilter::of(&r.args);
                        let cursor = r.args["cursor"].as_u64().unwrap() as usize;
                        if r.args["family"] == 6 {
                            let _ = r.reply.send(json!({"ok": true, "switch": "sw", "nat": false, "deleted": 0, "next": null}));
                            continue;
                        }
                        let (d, next) = nat.delete_from(1, cursor, max, |e| f.keep(&e.widen()));
                        let _ = r.reply.send(json!({"ok": true, "switch": "sw", "nat": true, "deleted": d, "next": next}));
                    }
                    "conntrack-count" => {
                        let _ = r.reply.send(json!({"ok": true, "entries": nat.len()}));
                    }
                    _ => {
                        let _ = r.reply.send(json!({"ok": true, "cmd": r.cmd}));
                    }
                }
            }
        });
        (tx, Arc::new(EventFd::new().unwrap()), asked)
    }

    fn socket(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("vswitch-test-{}-{name}.sock", std::process::id()))
    }

    #[test]
    fn conntrack_is_listed_in_pages_and_filtered_off_the_worker() {
        let (tx, wake, asked) = fake_worker(nat_with(5000));
        let listing = |req: Value| -> Value {
            serde_json::from_str(&conntrack_listing(&tx, &wake, &req)).unwrap()
        };
        let v = listing(json!({"cmd": "conntrack"}));
        let entries = v["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 5000);
        assert_eq!(v["total"], 5000);
        let mut ports: Vec<u64> = entries
            .iter()
            .map(|e| e["original"]["sport"].as_u64().unwrap())
            .collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 5000, "every entry exactly once");
        let e = &entries[0];
        assert_eq!(
            (e["proto"].as_str(), e["proto_num"].as_u64()),
            (Some("udp"), Some(17))
        );
        assert_eq!(e["original"]["dst"], "203.0.113.0");
        assert_eq!(e["reply"]["src"], "203.0.113.0");
        assert_eq!(e["reply"]["dst"], "203.0.113.1");
        assert_eq!(e["packets"], json!([1, 0]));
        assert_eq!(
            (e["assured"].as_bool(), e["state"].as_str()),
            (Some(false), Some(""))
        );
        assert!(e["timeout"].as_u64().unwrap() > 0);
        // 5000 entries in pages of MAX_PAGE: the worker answered three
        // bounded requests, and one for the (empty) NAT66 table.
        assert_eq!(
            asked.load(Ordering::SeqCst),
            5000_usize.div_ceil(crate::worker::MAX_PAGE) + 1
        );
        let v = listing(
            json!({"cmd": "conntrack", "proto": "udp", "src": "192.168.15.3", "dport": 53}),
        );
        let n = (0..5000).filter(|i| i % 7 == 1).count();
        assert_eq!(v["entries"].as_array().unwrap().len(), n);
        let v = listing(json!({"proto": "tcp"}));
        assert_eq!(v["entries"].as_array().unwrap().len(), 0);
        let v = listing(json!({"count": true, "src": "192.168.15.3"}));
        assert_eq!(v["entries"], n);
        let before = asked.load(Ordering::SeqCst);
        let v = listing(json!({"count": true}));
        assert_eq!(v["entries"], 5000);
        assert_eq!(asked.load(Ordering::SeqCst), before + 1, "one O(1) request");
    }

    #[test]
    fn conntrack_is_deleted_in_bounded_pages() {
        let (tx, wake, asked) = fake_worker(nat_with(5000));
        let pages = 5000_usize.div_ceil(crate::worker::DELETE_PAGE);
        // Filters as for the listing: 192.168.15.3 holds every 7th flow.
        let v = conntrack_delete(&tx, &wake, &json!({"src": "192.168.15.3", "proto": "udp"}));
        let n = (0..5000).filter(|i| i % 7 == 1).count();
        assert_eq!(v["deleted"], n as u64, "{v}");
        assert_eq!(
            asked.load(Ordering::SeqCst),
            pages + 1,
            "one bounded request per page, and one for the (empty) NAT66 table"
        );
        let left = conntrack_listing(&tx, &wake, &json!({"count": true, "src": "192.168.15.3"}));
        assert!(left.contains(r#""entries":0"#), "{left}");
        // No filter: a flush.
        let v = conntrack_delete(&tx, &wake, &json!({}));
        assert_eq!(v["deleted"], (5000 - n) as u64, "{v}");
        let v = conntrack_delete(&tx, &wake, &json!({}));
        assert_eq!(v["deleted"], 0, "{v}");
    }

    #[test]
    fn fdb_is_copied_by_the_worker_and_formatted_here() {
        let (tx, wake, _) = fake_worker(nat_with(1));
        let v = table_listing(&tx, &wake, true);
        assert_eq!(v["entries"][0]["mac"], "02:00:00:00:00:01");
        assert_eq!(v["entries"][0]["netns"], "red");
        assert_eq!(v["entries"][0]["age_ms"], 4000);
    }

    #[test]
    fn clients_are_bounded_and_silent_ones_time_out() {
        let path = socket("bound");
        let _ = std::fs::remove_file(&path);
        let l = bind(&path).unwrap();
        let (tx, wake, _) = fake_worker(nat_with(1));
        serve_limited(
            l,
            tx,
            wake,
            2,
            Duration::from_millis(400),
            None,
            Lanes::default(),
        );
        let silent: Vec<UnixStream> = (0..2)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        let err = query(&path, "stats").unwrap_err();
        assert!(err.contains("too many control clients"), "{err}");
        assert!(t.elapsed() < Duration::from_millis(300));
        // A silent client is answered with an error and closed at the deadline.
        let mut s = String::new();
        (&silent[0]).read_to_string(&mut s).unwrap();
        assert!(s.contains("reading the request"), "{s}");
        assert!(t.elapsed() < Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(query(&path, "stats").unwrap()["cmd"], "stats");
        // A client trickling its request byte by byte is cut off at the same deadline.
        let c = UnixStream::connect(&path).unwrap();
        let t = Instant::now();
        let mut w = &c;
        while t.elapsed() < Duration::from_secs(2) && w.write_all(b" ").is_ok() {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        let _ = std::fs::remove_file(&path);
    }
}
