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
                let _ = handle(conn, &to_worker, &wake);
            }
        })
        .expect("spawn control thread");
}

fn handle(conn: UnixStream, to_worker: &Sender<Request>, wake: &EventFd) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(&conn).take_line(&mut line)?;
    let answer = match serde_json::from_str::<Value>(&line) {
        Ok(v) => {
            match v.get("cmd").and_then(Value::as_str) {
                Some(cmd) => {
                    let (tx, rx) = sync_channel(1);
                    if to_worker
                        .send(Request {
                            cmd: cmd.to_string(),
                            reply: tx,
                        })
                        .is_err()
                    {
                        json!({"ok": false, "error": "the switch is shutting down"})
                    } else {
                        let _ = wake.write(1);
                        rx.recv_timeout(Duration::from_secs(5)).unwrap_or_else(|_| json!({"ok": false, "error": "the worker did not answer within 5 s"}))
                    }
                }
                None => json!({"ok": false, "error": "request lacks \"cmd\""}),
            }
        }
        Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
    };
    let mut w = &conn;
    writeln!(w, "{answer}")
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
    writeln!(w, "{}", json!({"cmd": cmd})).map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&conn)
        .read_line(&mut line)
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
    Ok(v)
}
