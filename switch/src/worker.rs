//! The worker: one thread that owns the ports and the forwarding state.
//!
//! Contract: the worker alone touches the FDB, ARP table, counters and ports.
//! The control plane sends [`Request`]s on a channel and rings an eventfd; the
//! worker answers them between batches, so a request never sees a table in the
//! middle of a batch. Time is read once per wake-up and passed down as `now`.
//!
//! ```text
//! epoll ─► port readable ─► rx_batch (≤32) ─► Pipeline::decide per frame
//!                                         └─► per-egress index lists ─► tx_batch per port
//!       ─► eventfd ─► answer control requests (fdb, arp, stats)
//!       ─► signalfd (SIGINT/SIGTERM) ─► return
//!       ─► every second: age the FDB and ARP tables
//! ```

use crate::pipeline::{Pipeline, Verdict};
use crate::port::{BATCH, Batch, PortIo, is_gone};
use crate::stats::{DropReason, PortStats};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::EventFd;
use nix::sys::signalfd::SignalFd;
use serde_json::{Value, json};
use std::io;
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::Instant;

/// One switch port.
pub struct Port {
    /// Port name: the switch-side interface (veth) or the TAP name.
    pub name: String,
    /// Namespace of the endpoint behind the port.
    pub netns: String,
    /// `veth` (AF_PACKET) or `tap`.
    pub kind: &'static str,
    /// Frame I/O.
    pub io: Box<dyn PortIo>,
    /// False once the device is gone.
    pub up: bool,
    /// Counters.
    pub stats: PortStats,
}

/// A control-plane request, answered by the worker between batches.
pub struct Request {
    /// `fdb`, `arp` or `stats`.
    pub cmd: String,
    /// Where the JSON answer goes.
    pub reply: SyncSender<Value>,
}

const TOKEN_WAKE: u64 = u64::MAX;
const TOKEN_STOP: u64 = u64::MAX - 1;
/// Batches taken from one port before looking at the others (fairness).
const BATCHES_PER_WAKE: usize = 8;

/// The forwarding worker.
pub struct Worker {
    name: String,
    ports: Vec<Port>,
    pipeline: Pipeline,
    batch: Batch,
    out: Vec<Vec<u16>>,
    epoch: Instant,
    gone: Vec<usize>,
}

impl Worker {
    /// A worker for switch `name` over `ports`.
    pub fn new(name: String, ports: Vec<Port>, pipeline: Pipeline) -> Worker {
        let out = (0..ports.len())
            .map(|_| Vec::with_capacity(BATCH))
            .collect();
        Worker {
            name,
            ports,
            pipeline,
            batch: Batch::new(),
            out,
            epoch: Instant::now(),
            gone: Vec::new(),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Forward until a signal arrives on `stop`.
    pub fn run(
        &mut self,
        control: &Receiver<Request>,
        wake: &EventFd,
        stop: &SignalFd,
    ) -> io::Result<()> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        for (i, p) in self.ports.iter().enumerate() {
            epoll.add(p.io.fd(), EpollEvent::new(EpollFlags::EPOLLIN, i as u64))?;
        }
        epoll.add(wake, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_WAKE))?;
        epoll.add(stop, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_STOP))?;
        let mut events = [EpollEvent::empty(); 64];
        let mut last_sweep = 0;
        loop {
            let n = match epoll.wait(&mut events, EpollTimeout::from(1000u16)) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => 0,
                Err(e) => return Err(e.into()),
            };
            let now = self.now();
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_STOP => {
                        let _ = stop.read_signal();
                        return Ok(());
                    }
                    TOKEN_WAKE => {
                        let _ = wake.read();
                        while let Ok(req) = control.try_recv() {
                            let _ = req.reply.send(self.answer(&req.cmd, now));
                        }
                    }
                    i => self.service(i as usize, now),
                }
            }
            for i in std::mem::take(&mut self.gone) {
                let _ = epoll.delete(self.ports[i].io.fd());
            }
            if now.saturating_sub(last_sweep) >= 1000 {
                self.pipeline.fdb.sweep(now);
                self.pipeline.arp.sweep(now);
                last_sweep = now;
            }
        }
    }

    fn mark_gone(&mut self, i: usize, e: &io::Error) {
        if !self.ports[i].up {
            return;
        }
        eprintln!(
            "vswitch: port {} ({}) is gone: {e}; forwarding continues on the other ports",
            self.ports[i].name, self.ports[i].netns
        );
        self.ports[i].up = false;
        self.pipeline.fdb.flush_port(i);
        self.pipeline.arp.flush_port(i);
        self.gone.push(i);
    }

    /// Receive and forward what port `i` has waiting.
    fn service(&mut self, i: usize, now: u64) {
        if !self.ports[i].up {
            return;
        }
        for _ in 0..BATCHES_PER_WAKE {
            let n = match self.ports[i].io.rx_batch(&mut self.batch) {
                Ok(n) => n,
                Err(e) if is_gone(&e) => {
                    self.mark_gone(i, &e);
                    return;
                }
                Err(e) => {
                    eprintln!("vswitch: receive on {}: {e}", self.ports[i].name);
                    return;
                }
            };
            if n == 0 {
                return;
            }
            self.forward(i, now);
            if n < BATCH {
                return;
            }
        }
    }

    /// Run the batch through the pipeline and send it out.
    pub fn forward(&mut self, in_port: usize, now: u64) {
        for o in &mut self.out {
            o.clear();
        }
        for k in 0..self.batch.len() {
            if self.batch.is_truncated(k) {
                self.ports[in_port].stats.drop(DropReason::Truncated);
                continue;
            }
            let len = self.batch.frame(k).len() as u64;
            let st = &mut self.ports[in_port].stats;
            st.rx_packets += 1;
            st.rx_bytes += len;
            match self.pipeline.decide(in_port, self.batch.frame_mut(k), now) {
                Verdict::Drop(r) => self.ports[in_port].stats.drop(r),
                Verdict::Unicast(p) => {
                    if self.ports[p].up {
                        self.out[p].push(k as u16);
                    } else {
                        self.ports[p].stats.drop(DropReason::PortDown);
                    }
                }
                Verdict::Flood => {
                    self.ports[in_port].stats.flooded += 1;
                    let mut any = false;
                    for p in 0..self.ports.len() {
                        if p != in_port && self.ports[p].up {
                            self.out[p].push(k as u16);
                            any = true;
                        }
                    }
                    if !any {
                        self.ports[in_port].stats.drop(DropReason::NoEgress);
                    }
                }
                Verdict::Reply => {
                    crate::wire::VnetHdr::new_checked(self.batch.vnet_mut(k))
                        .expect("slot holds a vnet header")
                        .clear();
                    self.out[in_port].push(k as u16);
                }
            }
        }
        for p in 0..self.ports.len() {
            if self.out[p].is_empty() {
                continue;
            }
            match self.ports[p].io.tx_batch(&self.batch, &self.out[p]) {
                Ok(o) => {
                    let st = &mut self.ports[p].stats;
                    st.tx_packets += o.sent as u64;
                    st.tx_bytes += o.bytes;
                    st.drops[DropReason::TxError as usize] += o.failed as u64;
                }
                Err(e) => {
                    self.ports[p].stats.drops[DropReason::PortDown as usize] +=
                        self.out[p].len() as u64;
                    self.mark_gone(p, &e);
                }
            }
        }
    }

    /// Answer a control request.
    pub fn answer(&self, cmd: &str, now: u64) -> Value {
        match cmd {
            "fdb" => {
                let entries: Vec<Value> = self
                    .pipeline
                    .fdb
                    .entries(now)
                    .into_iter()
                    .map(|(mac, e)| {
                        json!({
                            "mac": mac.to_string(),
                            "port": self.ports[e.port].name,
                            "netns": self.ports[e.port].netns,
                            "age_ms": now.saturating_sub(e.last_seen),
                        })
                    })
                    .collect();
                json!({"ok": true, "switch": self.name, "ageing_ms": self.pipeline.fdb.ageing_ms(), "entries": entries, "counters": self.pipeline.fdb.counters})
            }
            "arp" => {
                let entries: Vec<Value> = self
                    .pipeline
                    .arp
                    .entries(now)
                    .into_iter()
                    .map(|(ip, e)| {
                        json!({
                            "ip": ip.to_string(),
                            "mac": e.mac.to_string(),
                            "port": self.ports[e.port].name,
                            "age_ms": now.saturating_sub(e.last_seen),
                        })
                    })
                    .collect();
                json!({"ok": true, "switch": self.name, "entries": entries, "counters": self.pipeline.arp.counters})
            }
            "stats" => {
                let ports: Vec<Value> = self
                    .ports
                    .iter()
                    .map(|p| {
                        let mut v = p.stats.to_json();
                        v["name"] = p.name.clone().into();
                        v["netns"] = p.netns.clone().into();
                        v["kind"] = p.kind.into();
                        v["state"] = if p.up { "up" } else { "gone" }.into();
                        v["fdb_entries"] = self
                            .pipeline
                            .fdb
                            .port_len(
                                self.ports
                                    .iter()
                                    .position(|q| q.name == p.name)
                                    .unwrap_or(0),
                            )
                            .into();
                        v
                    })
                    .collect();
                json!({
                    "ok": true,
                    "switch": self.name,
                    "uptime_ms": now,
                    "ports": ports,
                    "fdb": {"entries": self.pipeline.fdb.len(), "counters": self.pipeline.fdb.counters},
                    "arp": {"entries": self.pipeline.arp.len(), "counters": self.pipeline.arp.counters},
                })
            }
            other => {
                json!({"ok": false, "error": format!("unknown request {other:?} (fdb, arp, stats)")})
            }
        }
    }
}
