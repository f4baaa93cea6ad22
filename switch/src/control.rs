//! The control socket: a Unix stream socket (mode 0600) speaking one JSON
//! line per request and per answer: `{"cmd":"fdb"}` → `{"ok":true,...}`.
//!
//! Contract: the server thread never touches forwarding state; it hands each
//! request to the worker ([`crate::worker::Request`]) and waits (bounded) for
//! the answer. Clients ([`query`]) get a clear error when no switch runs.

use crate::worker::Request;
use nix::sys::eventfd::EventFd;
use serde_json::{Value, json};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
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

/// Serve `listener` on a background thread, forwarding requests to the worker.
pub fn serve(listener: UnixListener, to_worker: Sender<Request>, wake: Arc<EventFd>) {
    std::thread::Builder::new()
        .name("vswitch-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (to_worker, wake) = (to_worker.clone(), wake.clone());
                // One thread per client: a capture streams for as long as it runs.
                let _ = std::thread::Builder::new()
                    .name("vswitch-client".into())
                    .spawn(move || handle(conn, &to_worker, &wake));
            }
        })
        .expect("spawn control thread");
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
    tap: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
) -> Value {
    let (tx, rx) = sync_channel(1);
    if to_worker
        .send(Request {
            cmd: cmd.to_string(),
            args,
            tap,
            reply: tx,
        })
        .is_err()
    {
        return json!({"ok": false, "error": "the switch is shutting down"});
    }
    let _ = wake.write(1);
    rx.recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|_| json!({"ok": false, "error": "the worker did not answer within 5 s"}))
}

fn handle(conn: UnixStream, to_worker: &Sender<Request>, wake: &EventFd) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(&conn).take_line(&mut line)?;
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
    let (tx, rx) = sync_channel(4096);
    let answer = ask(to_worker, wake, &cmd, req, Some(tx));
    let mut w = std::io::BufWriter::new(&conn);
    writeln!(w, "{answer}")?;
    if answer["ok"] != true {
        return w.flush();
    }
    conn.set_write_timeout(None)?;
    pcap_header(&mut w)?;
    w.flush()?;
    let mut n = 0;
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
                if n % 32 == 0 {
                    w.flush()?;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                w.flush()?;
                // Notice a client that went away even when no traffic flows.
                if conn.peer_addr().is_err() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    w.flush()
}

trait TakeLine {
    fn take_line(&mut self, s: &mut String) -> io::Result<usize>;
}

impl<R: io::Read> TakeLine for BufReader<R> {
    /// Read one line of at most 64 KiB.
    fn take_line(&mut self, s: &mut String) -> io::Result<usize> {
        use std::io::Read;
        self.by_ref().take(65_536).read_line(s)
    }
}

/// Send `cmd` to the switch serving `path` and return its JSON answer.
pub fn query(path: &Path, cmd: &str) -> Result<Value, String> {
    request(path, json!({"cmd": cmd})).map(|(v, _)| v)
}

/// Send a request object; returns the answer and the connection (for streams).
pub fn request(path: &Path, req: Value) -> Result<(Value, BufReader<UnixStream>), String> {
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
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut w = &conn;
    writeln!(w, "{req}").map_err(|e| e.to_string())?;
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(|e| format!("reading the answer: {e}"))?;
    let v: Value =
        serde_json::from_str(&line).map_err(|e| format!("bad answer from the switch: {e}"))?;
    if v.get("ok") != Some(&Value::Bool(true)) {
        return Err(v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("request failed")
            .to_string());
    }
    Ok((v, r))
}
