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

use crate::pipeline::{Gen, Pipeline, Target, Verdict};
use crate::policy::{NoPolicy, Policy, Reload, Reloaded};
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
    /// A LAN port (switched, flooded); false for the routed uplink.
    pub lan: bool,
    /// Isolated: its frames reach only non-isolated ports and the gateway.
    pub isolated: bool,
    /// Counters.
    pub stats: PortStats,
}

/// A control-plane request, answered by the worker between batches.
pub struct Request {
    /// `fdb`, `arp`, `stats`, `conntrack`, `reload`, `capture` or `trace`.
    pub cmd: String,
    /// The whole request (arguments of `capture` and `trace`).
    pub args: Value,
    /// For `capture`: where copies of the port's frames go.
    pub tap: Option<SyncSender<Vec<u8>>>,
    /// Where the JSON answer goes.
    pub reply: SyncSender<Value>,
}

/// Copy a received slot (`vnet + frame`) into `b` with an 802.1Q tag for `vid`
/// added (`tag`) or removed, fixing the offsets of partial checksums and GSO.
fn retag(src: &[u8], vid: u16, tag: bool, b: &mut [u8]) -> usize {
    use crate::wire::{VNET_F_NEEDS_CSUM, VNET_HDR_LEN};
    let (vnet, f) = src.split_at(VNET_HDR_LEN);
    if f.len() < 12 + usize::from(!tag) * 4 {
        return 0;
    }
    b[..VNET_HDR_LEN].copy_from_slice(vnet);
    b[VNET_HDR_LEN..VNET_HDR_LEN + 12].copy_from_slice(&f[..12]);
    let n = if tag {
        let o = VNET_HDR_LEN + 12;
        b[o..o + 2].copy_from_slice(&[0x81, 0x00]);
        b[o + 2..o + 4].copy_from_slice(&(vid & 0x0fff).to_be_bytes());
        b[o + 4..o + 4 + f.len() - 12].copy_from_slice(&f[12..]);
        f.len() + 4
    } else {
        b[VNET_HDR_LEN + 12..VNET_HDR_LEN + f.len() - 4].copy_from_slice(&f[16..]);
        f.len() - 4
    };
    let shift = |x: u16| if tag { x + 4 } else { x.saturating_sub(4) };
    let flags = b[0];
    let hdr_len = u16::from_le_bytes([b[2], b[3]]);
    if hdr_len != 0 {
        b[2..4].copy_from_slice(&shift(hdr_len).to_le_bytes());
    }
    if flags & VNET_F_NEEDS_CSUM != 0 {
        let cs = u16::from_le_bytes([b[6], b[7]]);
        b[6..8].copy_from_slice(&shift(cs).to_le_bytes());
    }
    VNET_HDR_LEN + n
}

/// A capture of one port's frames (both directions). Each message is an
/// 8-byte little-endian timestamp (µs since the Unix epoch) and the frame.
pub struct Tap {
    /// The port.
    pub port: usize,
    /// The receiving side (a capture client or a pcap writer).
    pub tx: SyncSender<Vec<u8>>,
    /// Frames not delivered because the receiver lagged.
    pub lost: u64,
}

fn tap_send(taps: &mut Vec<Tap>, port: usize, ts: u64, frame: &[u8]) {
    let mut i = 0;
    while i < taps.len() {
        if taps[i].port == port {
            let mut v = Vec::with_capacity(8 + frame.len());
            v.extend_from_slice(&ts.to_le_bytes());
            v.extend_from_slice(frame);
            match taps[i].tx.try_send(v) {
                Ok(()) => {}
                Err(std::sync::mpsc::TrySendError::Full(_)) => taps[i].lost += 1,
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                    taps.swap_remove(i);
                    continue;
                }
            }
        }
        i += 1;
    }
}

const TOKEN_WAKE: u64 = u64::MAX;
const TOKEN_STOP: u64 = u64::MAX - 1;
/// Batches taken from one port before looking at the others (fairness).
const BATCHES_PER_WAKE: usize = 8;

/// Re-reads the policy (for `vswitch reload` and SIGHUP).
pub type Reloader = Box<dyn FnMut() -> Result<Reloaded, String>>;

/// The forwarding worker, generic over the policy.
pub struct Worker<P: Policy + Reload = NoPolicy> {
    name: String,
    ports: Vec<Port>,
    pipeline: Pipeline<P>,
    mirrors: Vec<Option<usize>>,
    taps: Vec<Tap>,
    reloader: Option<Reloader>,
    reloads: u64,
    batch: Batch,
    generated: Gen,
    /// VLAN and tagged-on-arrival of each frame of the batch.
    fv: [(u16, bool); BATCH],
    /// Frames re-tagged or untagged for ports that want the other form.
    conv: Batch,
    conv_of: [u16; BATCH],
    out_conv: Vec<Vec<u16>>,
    keep: Vec<u16>,
    out: Vec<Vec<u16>>,
    epoch: Instant,
    gone: Vec<usize>,
    busy_poll: std::time::Duration,
}

impl<P: Policy + Reload> Worker<P> {
    /// A worker for switch `name` over `ports`.
    pub fn new(name: String, ports: Vec<Port>, pipeline: Pipeline<P>) -> Worker<P> {
        let out = (0..ports.len())
            .map(|_| Vec::with_capacity(BATCH))
            .collect();
        let mirrors = vec![None; ports.len()];
        let out_conv = (0..ports.len())
            .map(|_| Vec::with_capacity(BATCH))
            .collect();
        Worker {
            mirrors,
            taps: Vec::new(),
            reloader: None,
            reloads: 0,
            name,
            ports,
            pipeline,
            batch: Batch::new(),
            generated: Gen::new(),
            fv: [(0, false); BATCH],
            conv: Batch::new(),
            conv_of: [u16::MAX; BATCH],
            out_conv,
            keep: Vec::with_capacity(BATCH),
            out,
            epoch: Instant::now(),
            gone: Vec::new(),
            busy_poll: std::time::Duration::ZERO,
        }
    }

    /// Copy every frame received or sent on `port` to `tx` (a capture or pcap mirror).
    pub fn add_tap(&mut self, port: usize, tx: SyncSender<Vec<u8>>) {
        self.taps.push(Tap { port, tx, lost: 0 });
    }

    /// The index of the port called `name` (or the port of namespace `name`).
    pub fn port_index(&self, name: &str) -> Option<usize> {
        self.ports
            .iter()
            .position(|p| p.name == name)
            .or_else(|| self.ports.iter().position(|p| p.netns == name))
    }

    /// Install the policy re-reader and apply its first result.
    pub fn set_reloader(&mut self, mut r: Reloader) -> Result<(), String> {
        let first = r()?;
        self.apply(first);
        self.reloader = Some(r);
        Ok(())
    }

    fn apply(&mut self, r: Reloaded) {
        self.pipeline.policy.set_chain(r.chain);
        self.pipeline.isolated = r.isolated;
        for (p, iso) in self.ports.iter_mut().zip(&self.pipeline.isolated) {
            p.isolated = *iso;
        }
        self.mirrors = r.mirrors;
    }

    /// Re-read the policy and swap it in (called between batches).
    fn reload(&mut self) -> Value {
        let Some(r) = self.reloader.as_mut() else {
            return json!({"ok": false, "error": "this switch has no reloadable policy"});
        };
        match r() {
            Ok(new) => {
                let rules = new.chain.acl.len();
                self.apply(new);
                self.reloads += 1;
                eprintln!("vswitch: policy reloaded ({rules} ACL rules); tables kept");
                json!({"ok": true, "acl_rules": rules, "reloads": self.reloads})
            }
            Err(e) => {
                eprintln!("vswitch: reload failed, old policy kept: {e}");
                json!({"ok": false, "error": format!("reload failed, old policy kept: {e}")})
            }
        }
    }

    /// Keep polling without sleeping for `d` after each burst of traffic
    /// (lower latency for the price of CPU; zero disables).
    pub fn set_busy_poll(&mut self, d: std::time::Duration) {
        self.busy_poll = d;
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Receive and forward what port `i` has waiting, at `now`: what [`Worker::run`]
    /// does when the port is readable (for tests and the fuzz harness, without epoll).
    pub fn poll_port(&mut self, i: usize, now: u64) {
        self.service(i, now);
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
        let mut last_busy = Instant::now() - std::time::Duration::from_secs(1);
        loop {
            // Adaptive busy polling: right after traffic, poll without sleeping
            // for `busy_poll` so the next frame does not pay for a wake-up.
            let spin = !self.busy_poll.is_zero() && last_busy.elapsed() < self.busy_poll;
            let timeout = if spin {
                EpollTimeout::ZERO
            } else {
                EpollTimeout::from(1000u16)
            };
            let n = match epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => 0,
                Err(e) => return Err(e.into()),
            };
            let now = self.now();
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_STOP => match stop.read_signal() {
                        Ok(Some(si)) if si.ssi_signo == nix::sys::signal::Signal::SIGHUP as u32 => {
                            self.reload();
                        }
                        Ok(None) => {}
                        _ => return Ok(()),
                    },
                    TOKEN_WAKE => {
                        let _ = wake.read();
                        while let Ok(req) = control.try_recv() {
                            let v = match req.cmd.as_str() {
                                "reload" => self.reload(),
                                "capture" => match (
                                    req.tap,
                                    req.args["port"].as_str().and_then(|n| self.port_index(n)),
                                ) {
                                    (Some(tx), Some(p)) => {
                                        self.add_tap(p, tx);
                                        json!({"ok": true, "port": self.ports[p].name})
                                    }
                                    _ => {
                                        json!({"ok": false, "error": format!("no port {} (use a port or namespace name from `vswitch stats`)", req.args["port"])})
                                    }
                                },
                                "trace" => self.trace(&req.args, now),
                                _ => self.answer(&req.cmd, now),
                            };
                            let _ = req.reply.send(v);
                        }
                    }
                    i => {
                        self.service(i as usize, now);
                        last_busy = Instant::now();
                    }
                }
            }
            for i in std::mem::take(&mut self.gone) {
                let _ = epoll.delete(self.ports[i].io.fd());
            }
            if now.saturating_sub(last_sweep) >= 1000 {
                self.pipeline.expire(now);
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
        self.generated.clear();
        for k in 0..self.batch.len() {
            if self.batch.is_truncated(k) {
                self.ports[in_port].stats.drop(DropReason::Truncated);
                continue;
            }
            let len = self.batch.frame(k).len() as u64;
            let st = &mut self.ports[in_port].stats;
            st.rx_packets += 1;
            st.rx_bytes += len;
            let (vnet, frame) = self.batch.parts_mut(k);
            let verdict = self
                .pipeline
                .decide(in_port, vnet, frame, now, &mut self.generated);
            self.fv[k] = self.pipeline.frame_vlan;
            // A policy's tag edit (push needs the slot's headroom; a frame whose
            // tag was already restored into it keeps its form).
            match self.pipeline.retag.take() {
                Some(Some(vid)) if self.batch.has_headroom(k) => {
                    self.batch.insert_vlan_tag(k, 0x8100, vid)
                }
                Some(None) => self.batch.remove_vlan_tag(k),
                _ => {}
            }
            // A policy's Mirror action: a copy to that port, besides normal forwarding.
            if let Some(m) = self.pipeline.mirror.take()
                && m < self.ports.len()
                && m != in_port
                && self.ports[m].up
            {
                self.out[m].push(k as u16);
            }
            match verdict {
                Verdict::Drop(r) => self.ports[in_port].stats.drop(r),
                Verdict::Unicast(p) => {
                    if self.ports[p].up {
                        self.out[p].push(k as u16);
                    } else {
                        self.ports[p].stats.drop(DropReason::PortDown);
                    }
                }
                v @ (Verdict::Flood | Verdict::FloodAll) => {
                    self.ports[in_port].stats.flooded += 1;
                    let mut any = false;
                    // Isolated ports never flood to each other (routed frames are not bound by it).
                    let from_isolated = v == Verdict::Flood && self.ports[in_port].isolated;
                    for p in 0..self.ports.len() {
                        let blocked = from_isolated && self.ports[p].isolated;
                        if (p != in_port || v == Verdict::FloodAll)
                            && self.ports[p].up
                            && self.ports[p].lan
                            && !blocked
                        {
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
                Verdict::Consumed => {}
            }
        }
        self.vlan_egress();
        self.span(in_port);
        if !self.taps.is_empty() {
            let ts = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0);
            for k in 0..self.batch.len() {
                if !self.batch.is_truncated(k) {
                    tap_send(&mut self.taps, in_port, ts, self.batch.frame(k));
                }
            }
            for p in 0..self.ports.len() {
                for &k in &self.out[p] {
                    tap_send(&mut self.taps, p, ts, self.batch.frame(k as usize));
                }
            }
        }
        Self::send(&mut self.ports, &self.batch, &self.out, &mut self.gone);
        if !self.conv.is_empty() {
            Self::send(&mut self.ports, &self.conv, &self.out_conv, &mut self.gone);
        }
        // Frames the gateway generated or released, routed, then sent the same way.
        self.pipeline.finish_batch(now, &mut self.generated);
        if !self.generated.is_empty() {
            for o in &mut self.out {
                o.clear();
            }
            for k in 0..self.generated.len() {
                match self.generated.target(k) {
                    // On a VLAN-aware switch the gateway serves untagged VLAN 1 (its access ports).
                    Target::Port(p) if self.ports[p].up && self.gateway_reaches(p) => {
                        self.out[p].push(k as u16)
                    }
                    Target::Lan => {
                        for p in 0..self.ports.len() {
                            if self.ports[p].up && self.ports[p].lan && self.gateway_reaches(p) {
                                self.out[p].push(k as u16);
                            }
                        }
                    }
                    _ => {}
                }
            }
            if !self.taps.is_empty() {
                let ts = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_micros() as u64)
                    .unwrap_or(0);
                for p in 0..self.ports.len() {
                    for &k in &self.out[p] {
                        tap_send(
                            &mut self.taps,
                            p,
                            ts,
                            self.generated.batch().frame(k as usize),
                        );
                    }
                }
            }
            Self::send(
                &mut self.ports,
                self.generated.batch(),
                &self.out,
                &mut self.gone,
            );
        }
        for i in self.gone.clone() {
            if self.ports[i].up {
                self.ports[i].up = false;
                self.pipeline.fdb.flush_port(i);
                self.pipeline.arp.flush_port(i);
            }
        }
    }

    fn gateway_reaches(&self, p: usize) -> bool {
        match &self.pipeline.vlans {
            None => true,
            Some(v) => !self.ports[p].lan || v.access.get(p).copied().flatten() == Some(1),
        }
    }

    /// VLAN-aware egress: keep a frame only on ports of its VLAN, and give
    /// each port the form it wants (untagged on access ports, tagged on trunks),
    /// converting into `conv` when the received form differs.
    fn vlan_egress(&mut self) {
        for o in &mut self.out_conv {
            o.clear();
        }
        self.conv.clear();
        let Some(v) = self.pipeline.vlans.take() else {
            return;
        };
        self.conv_of = [u16::MAX; BATCH];
        for p in 0..self.ports.len() {
            if !self.ports[p].lan || self.out[p].is_empty() {
                continue;
            }
            let want_tagged = v.tagged(p);
            self.keep.clear();
            for i in 0..self.out[p].len() {
                let k = self.out[p][i] as usize;
                let (vid, tagged) = self.fv[k];
                if !v.member(p, vid) {
                    continue;
                }
                if tagged == want_tagged {
                    self.keep.push(k as u16);
                    continue;
                }
                if self.conv_of[k] == u16::MAX {
                    let src = self.batch.wire(k);
                    if let Some(c) = self.conv.push_with(|b| retag(src, vid, want_tagged, b)) {
                        self.conv_of[k] = c as u16;
                    }
                }
                if self.conv_of[k] != u16::MAX {
                    self.out_conv[p].push(self.conv_of[k]);
                }
            }
            std::mem::swap(&mut self.out[p], &mut self.keep);
        }
        self.pipeline.vlans = Some(v);
    }

    /// SPAN: copy what a mirrored port received and what it is about to send.
    fn span(&mut self, in_port: usize) {
        if self.mirrors.iter().all(Option::is_none) {
            return;
        }
        for x in 0..self.ports.len() {
            let Some(y) = self.mirrors[x] else { continue };
            if y >= self.ports.len() || !self.ports[y].up {
                continue;
            }
            if x == in_port {
                for k in 0..self.batch.len() as u16 {
                    if !self.batch.is_truncated(k as usize) && !self.out[y].contains(&k) {
                        self.out[y].push(k);
                    }
                }
            }
            for i in 0..self.out[x].len() {
                let k = self.out[x][i];
                if !self.out[y].contains(&k) {
                    self.out[y].push(k);
                }
            }
        }
    }

    fn send(ports: &mut [Port], batch: &Batch, out: &[Vec<u16>], gone: &mut Vec<usize>) {
        for p in 0..ports.len() {
            if out[p].is_empty() || !ports[p].up {
                continue;
            }
            match ports[p].io.tx_batch(batch, &out[p]) {
                Ok(o) => {
                    let st = &mut ports[p].stats;
                    st.tx_packets += o.sent as u64;
                    st.tx_bytes += o.bytes;
                    st.drops[DropReason::TxError as usize] += o.failed as u64;
                }
                Err(e) => {
                    ports[p].stats.drops[DropReason::PortDown as usize] += out[p].len() as u64;
                    if !gone.contains(&p) {
                        eprintln!(
                            "vswitch: port {} ({}) is gone: {e}; forwarding continues on the other ports",
                            ports[p].name, ports[p].netns
                        );
                        gone.push(p);
                    }
                }
            }
        }
    }

    /// Describe what the pipeline would do with a frame, without sending it.
    fn trace(&self, args: &Value, now: u64) -> Value {
        match crate::trace::trace(&self.pipeline, &self.ports, args, now) {
            Ok(lines) => json!({"ok": true, "trace": lines}),
            Err(e) => json!({"ok": false, "error": e}),
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
                            "vlan": e.vlan,
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
                    .enumerate()
                    .map(|(i, p)| {
                        let mut v = p.stats.to_json();
                        v["name"] = p.name.clone().into();
                        v["netns"] = p.netns.clone().into();
                        v["kind"] = p.kind.into();
                        v["state"] = if p.up { "up" } else { "gone" }.into();
                        v["fdb_entries"] = self.pipeline.fdb.port_len(i).into();
                        v["role"] = if p.lan { "lan" } else { "uplink" }.into();
                        v["isolated"] = p.isolated.into();
                        v
                    })
                    .collect();
                let policy: serde_json::Map<String, Value> = self
                    .pipeline
                    .policy
                    .counters()
                    .into_iter()
                    .map(|(k, n)| (k, n.into()))
                    .collect();
                let mut v = json!({
                    "ok": true,
                    "policy": policy,
                    "reloads": self.reloads,
                    "switch": self.name,
                    "uptime_ms": now,
                    "ports": ports,
                    "fdb": {"entries": self.pipeline.fdb.len(), "counters": self.pipeline.fdb.counters},
                    "arp": {"entries": self.pipeline.arp.len(), "counters": self.pipeline.arp.counters},
                });
                if let Some(gw) = &self.pipeline.gateway {
                    v["gateway"] = json!({
                        "address": gw.ip().to_string(),
                        "mac": gw.mac().to_string(),
                        "neighbours_lan": gw.neigh_lan.len(),
                        "neighbours_uplink": gw.neigh_wan.len(),
                        "counters": gw.counters,
                    });
                    if let Some(nat) = &gw.nat {
                        let c = &nat.counters;
                        let drops: serde_json::Map<String, Value> = nat::NatDrop::ALL
                            .iter()
                            .map(|r| (r.name().to_string(), c.drops[*r as usize].into()))
                            .collect();
                        v["nat"] = json!({
                            "entries": nat.len(),
                            "max_entries": nat.config().max_entries,
                            "mappings": nat.mappings(),
                            "filtering": nat.config().filtering.name(),
                            "created": c.created,
                            "expired": c.expired,
                            "early_dropped": c.early_dropped,
                            "translated": c.translated,
                            "icmp_errors_translated": c.icmp_errors,
                            "hairpins": c.hairpins,
                            "fragments_held": c.fragments_held,
                            "drops": drops,
                        });
                    }
                }
                v
            }
            "conntrack" => {
                let entries: Vec<Value> = match self.pipeline.gateway.as_ref().and_then(|g| g.nat.as_ref()) {
                    None => Vec::new(),
                    Some(nat) => nat
                        .entries(now)
                        .into_iter()
                        .map(|e| {
                            let t = |t: &nat::Tuple| json!({"src": t.src.to_string(), "dst": t.dst.to_string(), "sport": t.sport, "dport": t.dport});
                            json!({
                                "proto": match e.proto { 6 => "tcp", 17 => "udp", 1 => "icmp", _ => "other" },
                                "proto_num": e.proto,
                                "state": e.state,
                                "timeout": e.secs_left,
                                "original": t(&e.orig),
                                "reply": t(&e.reply),
                                "packets": e.packets,
                                "bytes": e.bytes,
                                "assured": e.assured,
                            })
                        })
                        .collect(),
                };
                json!({"ok": true, "switch": self.name, "entries": entries})
            }
            other => {
                json!({"ok": false, "error": format!("unknown request {other:?} (fdb, arp, stats)")})
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::retag;

    #[test]
    fn retag_adds_and_removes_a_tag_and_shifts_offsets() {
        // vnet: NEEDS_CSUM, gso none, hdr_len 0, csum_start 34, csum_offset 16; then a 60-byte frame.
        let mut src = vec![1u8, 0, 0, 0, 0, 0, 34, 0, 16, 0];
        src.extend((0..60u8).map(|i| i + 1));
        let mut b = vec![0u8; 100];
        let n = retag(&src, 10, true, &mut b);
        assert_eq!(n, 10 + 64);
        assert_eq!(&b[10..22], &src[10..22]);
        assert_eq!(&b[22..26], &[0x81, 0x00, 0x00, 0x0a]);
        assert_eq!(&b[26..74], &src[22..70]);
        assert_eq!(u16::from_le_bytes([b[6], b[7]]), 38);
        let mut back = vec![0u8; 100];
        let m = retag(&b[..n], 10, false, &mut back);
        assert_eq!(&back[..m], &src[..]);
    }
}
