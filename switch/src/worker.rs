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
//!       ─► rtnetlink link events ─► port gone at once / re-attached when back
//!       ─► live changes (reload, port add/del) ─► applied whole, between batches
//!       ─► every second: age the FDB and ARP tables
//! ```
//!
//! Ports live in stable slots: a port's id never changes while it exists; a
//! removed port leaves a tombstone (kind `removed`) that the next added port
//! reuses, so per-port tables (FDB bounds, VLAN roles, policy) stay indexed
//! by slot.

use crate::live::{Change, LinkWatch};
use crate::pipeline::{Gen, Pipeline, Target, Verdict};
use crate::policy::{NoPolicy, Policy, Reload, Reloaded};
use crate::port::{BATCH, Batch, PortIo, is_gone};
use crate::stats::{DropReason, PortStats};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::EventFd;
use nix::sys::signalfd::SignalFd;
use serde_json::{Value, json};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};

use std::time::Instant;

/// `kind` of a removed port's slot (a tombstone, reused by the next added port).
pub const REMOVED: &str = "removed";

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

impl Port {
    /// Whether this slot is a tombstone of a removed port.
    pub fn is_removed(&self) -> bool {
        self.kind == REMOVED
    }
}

/// Whether a frame from `in_port` with verdict `v` ([`Verdict::Flood`] or
/// [`Verdict::FloodAll`]) goes out of port `p`: up LAN ports, not the
/// ingress one unless routed (`FloodAll`), and never from one isolated port
/// to another (routed frames are not bound by isolation).
pub fn floods_to(ports: &[Port], in_port: crate::PortId, v: Verdict, p: crate::PortId) -> bool {
    let blocked = v == Verdict::Flood && ports[in_port].isolated && ports[p].isolated;
    (p != in_port || v == Verdict::FloodAll) && ports[p].up && ports[p].lan && !blocked
}

/// A control-plane request, answered by the worker between batches.
pub struct Request {
    /// `fdb`, `arp`, `stats`, `conntrack`, `reload`, `capture` or `trace`.
    pub cmd: String,
    /// The whole request (arguments of `capture` and `trace`).
    pub args: Value,
    /// For `capture`: where copies of the port's frames go.
    pub tap: Option<TapSink>,
    /// Where the JSON answer goes.
    pub reply: SyncSender<Value>,
    /// For `conntrack-page`: where the page goes (plain structs, formatted by
    /// the caller off the forwarding thread). `reply` then gets nothing.
    pub page: Option<SyncSender<ConntrackPage>>,
    /// For `fdb-snapshot` and `arp-snapshot`: where the copy goes (plain
    /// structs, formatted by the caller). `reply` then gets nothing.
    pub snapshot: Option<SyncSender<TableSnapshot>>,
}

/// A copy of the MAC table (`fdb-snapshot`) or the ARP table (`arp-snapshot`)
/// in plain structs; the other table's list is left empty.
#[derive(Debug, Default)]
pub struct TableSnapshot {
    /// Switch name.
    pub switch: String,
    /// Name and namespace of each port.
    pub ports: Vec<(String, String)>,
    /// When the copy was taken (ms).
    pub now: u64,
    /// MAC table ageing time (ms).
    pub ageing_ms: u64,
    /// MAC table entries.
    pub fdb: Vec<(crate::wire::MacAddr, crate::fdb::FdbEntry)>,
    /// MAC table counters.
    pub fdb_counters: crate::fdb::FdbCounters,
    /// ARP table entries.
    pub arp: Vec<(std::net::Ipv4Addr, crate::arp::ArpEntry)>,
    /// ARP table counters.
    pub arp_counters: crate::arp::ArpCounters,
    /// IPv6 neighbour (ND suppression) table entries.
    pub nd: Vec<(std::net::Ipv6Addr, crate::arp::ArpEntry)>,
    /// IPv6 neighbour table counters.
    pub nd_counters: crate::arp::ArpCounters,
}

/// One page of the NAT's connection table (`conntrack-page` request, args
/// `cursor` and `max`), as plain structs: the worker only copies entries, the
/// control thread filters and formats them.
#[derive(Debug, Default)]
pub struct ConntrackPage {
    /// Switch name.
    pub switch: String,
    /// Whether the switch has a NAT at all.
    pub nat: bool,
    /// Live entries, in slot order from the cursor (of the family asked for).
    pub entries: Vec<nat::EntryView<std::net::IpAddr>>,
    /// Cursor of the next page; `None` after the last.
    pub next: Option<usize>,
    /// Entries in the table when the page was taken.
    pub total: usize,
}

/// Largest page the worker copies in one go (its cost bounds the pause in forwarding).
pub const MAX_PAGE: usize = 2048;

/// Most entries one `conntrack-delete-page` request visits: deleting costs
/// several times a copy (index, mapping, filter and host bookkeeping), about
/// 1 ms for this many on the 2-core test machine under load.
pub const DELETE_PAGE: usize = 512;

/// Copy a received slot (`vnet + frame`) into `b` with an 802.1Q tag for `vid`
/// added (`tag`) or removed, fixing the offsets of partial checksums and GSO.
/// Returns the length written, or 0 (nothing sent) when the frame is too short,
/// the result would not fit in `b`, or an offset would pass 65,535.
fn retag(src: &[u8], vid: u16, tag: bool, b: &mut [u8]) -> usize {
    use crate::wire::{VNET_F_NEEDS_CSUM, VNET_HDR_LEN};
    let Some((vnet, f)) = src.split_at_checked(VNET_HDR_LEN) else {
        return 0;
    };
    if f.len() < 12 + usize::from(!tag) * 4 {
        return 0;
    }
    let n = if tag { f.len() + 4 } else { f.len() - 4 };
    if b.len() < VNET_HDR_LEN + n {
        return 0;
    }
    let shift = |x: u16| {
        if tag {
            x.checked_add(4)
        } else {
            Some(x.saturating_sub(4))
        }
    };
    let hdr_len = u16::from_le_bytes([vnet[2], vnet[3]]);
    let hdr_len = match hdr_len {
        0 => 0,
        h => match shift(h) {
            Some(x) => x,
            None => return 0,
        },
    };
    let needs_csum = vnet[0] & VNET_F_NEEDS_CSUM != 0;
    let cs = u16::from_le_bytes([vnet[6], vnet[7]]);
    let cs = if needs_csum {
        match shift(cs) {
            Some(x) => x,
            None => return 0,
        }
    } else {
        cs
    };
    let (head, body) = b.split_at_mut(VNET_HDR_LEN);
    head.copy_from_slice(vnet);
    head[2..4].copy_from_slice(&hdr_len.to_le_bytes());
    head[6..8].copy_from_slice(&cs.to_le_bytes());
    body[..12].copy_from_slice(&f[..12]);
    if tag {
        body[12..14].copy_from_slice(&[0x81, 0x00]);
        body[14..16].copy_from_slice(&(vid & 0x0fff).to_be_bytes());
        body[16..n].copy_from_slice(&f[12..]);
    } else {
        body[12..n].copy_from_slice(&f[16..]);
    }
    VNET_HDR_LEN + n
}

/// Where a capture or pcap mirror of a port's frames goes: each message is
/// an 8-byte little-endian timestamp (µs since the Unix epoch) and the frame,
/// received frames as they arrived (before any rewrite), sent frames as sent.
#[derive(Debug, Clone)]
pub struct TapSink {
    /// The receiving side (a capture client or a pcap writer).
    pub tx: SyncSender<Vec<u8>>,
    /// Frames not delivered because the receiver lagged (its queue was full),
    /// shared with the receiver so that it can report them at its end.
    pub lost: Arc<AtomicU64>,
}

impl TapSink {
    /// A sink with a queue of `depth` frames; the receiver gets the other end.
    pub fn new(depth: usize) -> (TapSink, Receiver<Vec<u8>>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(depth);
        (
            TapSink {
                tx,
                lost: Arc::new(AtomicU64::new(0)),
            },
            rx,
        )
    }
}

/// A capture of one port's frames (both directions).
pub struct Tap {
    /// The port.
    pub port: usize,
    /// Where the copies go.
    pub sink: TapSink,
    /// A pcap mirror's file (its losses are logged); `None` for a capture.
    pub mirror: Option<String>,
    /// Losses already logged.
    pub reported: u64,
}

fn tap_send(taps: &mut Vec<Tap>, ports: &mut [Port], port: usize, ts: u64, frame: &[u8]) {
    let mut i = 0;
    while i < taps.len() {
        if taps[i].port == port {
            let mut v = Vec::with_capacity(8 + frame.len());
            v.extend_from_slice(&ts.to_le_bytes());
            v.extend_from_slice(frame);
            match taps[i].sink.tx.try_send(v) {
                Ok(()) => {}
                Err(std::sync::mpsc::TrySendError::Full(_)) => {
                    taps[i].sink.lost.fetch_add(1, Ordering::Relaxed);
                    ports[port].stats.capture_dropped += 1;
                }
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                    taps.swap_remove(i);
                    continue;
                }
            }
        }
        i += 1;
    }
}

/// Shortest time between two log lines about the same kind of event
/// (station moves, a table refusing entries), ms: the first is logged within
/// a second, later ones are summed up into one line per interval.
pub const SUMMARY_MS: u64 = 10_000;

/// Counters the log summarises, each with what was last logged.
#[derive(Default)]
struct Summaries {
    /// (total at the last line, time of the last line) per kind.
    seen: [(u64, Option<u64>); 6],
}

impl Summaries {
    /// The increase of counter `kind` since its last line, if a line is due at `now`.
    fn due(&mut self, kind: usize, total: u64, now: u64) -> Option<u64> {
        let (last, at) = &mut self.seen[kind];
        if total <= *last || at.is_some_and(|t| now.saturating_sub(t) < SUMMARY_MS) {
            return None;
        }
        let d = total - *last;
        *last = total;
        *at = Some(now);
        Some(d)
    }
}

/// Wall-clock time in µs since the Unix epoch (pcap timestamps).
fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Kinds of ports opened by name on a link of the switch's namespace
/// (AF_PACKET), which the link watch can re-open.
fn reattachable(kind: &str) -> bool {
    matches!(kind, "veth" | "uplink" | "port")
}

const TOKEN_WAKE: u64 = u64::MAX;
/// `conv_of` marker: the frame could not be converted (counted per egress port).
const CONV_FAILED: u16 = u16::MAX - 1;
const TOKEN_STOP: u64 = u64::MAX - 1;
const TOKEN_LINKS: u64 = u64::MAX - 2;
/// Empty wake-ups per second above which a port is logged as stuck
/// readable (the worker would burn a core).
const STUCK_WAKEUPS_PER_S: u64 = 10_000;
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
    /// Copies of received frames of a mirrored port, taken before any rewrite
    /// (allocated when the first mirror is configured), and where they go.
    span_rx: Option<Box<Batch>>,
    span_of: [u16; BATCH],
    out_span: Vec<u16>,
    taps: Vec<Tap>,
    reloader: Option<Reloader>,
    reloads: u64,
    batch: Batch,
    generated: Gen,
    /// VLAN and tagged-on-arrival of each frame of the batch.
    fv: [(u16, bool); BATCH],
    /// Whether each frame of the batch was flooded (VLAN scoping is then not a drop).
    flooded: [bool; BATCH],
    /// Frames re-tagged or untagged for ports that want the other form.
    conv: Batch,
    conv_of: [u16; BATCH],
    out_conv: Vec<Vec<u16>>,
    keep: Vec<u16>,
    out: Vec<Vec<u16>>,
    epoch: Instant,
    summaries: Summaries,
    gone: Vec<usize>,
    saver: Option<crate::state::Saver>,
    last_save: u64,
    /// A periodic save being copied, page by page between batches.
    saving: Option<crate::state::PagedCapture>,
    /// The NAT's expiry has work left (done in bounded steps between batches).
    expiring: bool,
    upgrade: Option<Value>,
    pacer: crate::pace::Pacer,
    /// The last port that reported readable and yielded nothing.
    last_empty_port: usize,
    /// Empty wake-ups at the last sweep, and those of sweeps above
    /// [`STUCK_WAKEUPS_PER_S`] in all (logged as a stuck port).
    empty_seen: (u64, u64),
    links: Option<LinkWatch>,
    changes: Option<Receiver<(Box<Change>, SyncSender<Value>)>>,
    on_sighup: Option<Box<dyn FnMut()>>,
    /// With several workers: this worker's index and the MAC learning it
    /// shares with the others.
    share: Option<Share>,
    /// The kernel fast path (off unless [`Worker::set_fastpath`]).
    fast: crate::fastpath::FastPath,
}

/// Depth of a worker's queue of MAC bindings from the other workers, in
/// messages (one per sending batch that learned something). A full queue
/// drops the message (counted): the receiver relearns from its own
/// traffic, or from the sender's next refresh.
pub const SHARE_QUEUE: usize = 1024;

/// The MAC learning a worker shares with the others (`[switch] workers > 1`):
/// what its table learns goes to every peer's queue after each pass, and
/// what the peers learned is applied before the next frames are handled.
pub struct Share {
    /// This worker's index (0 handles the gateway, NAT and control state).
    pub index: usize,
    /// Bindings the other workers learned.
    pub rx: Receiver<Vec<crate::fdb::Learned>>,
    /// The other workers' queues.
    pub peers: Vec<SyncSender<Vec<crate::fdb::Learned>>>,
    /// Messages a full peer queue refused.
    pub dropped: u64,
    /// Bindings received and applied.
    pub applied: u64,
    buf: Vec<crate::fdb::Learned>,
}

impl Share {
    /// This worker's side: index, own queue, the peers' queues.
    pub fn new(
        index: usize,
        rx: Receiver<Vec<crate::fdb::Learned>>,
        peers: Vec<SyncSender<Vec<crate::fdb::Learned>>>,
    ) -> Share {
        Share {
            index,
            rx,
            peers,
            dropped: 0,
            applied: 0,
            buf: Vec::new(),
        }
    }
}

/// Origin of the worker's clock ([`Worker::now`]): about 49 days, so that
/// a restored entry's last-seen time (up to the longest ageing, 11.6 days,
/// in the past) is never negative.
pub const CLOCK_BASE_MS: u64 = 1 << 32;

/// How many hosts `stats` lists in `nat.hosts` (the heaviest first).
pub const STATS_HOSTS: usize = 64;

/// The NAT's per-internal-host view: the `max` hosts with the most entries.
/// Bounded work for the worker: one pass over the host records, which are at
/// most as many as the table's entries (usually a handful).
/// The `stats` view of a NAT engine (NAT44 or NAT66).
fn nat_json<A: nat::family::Family>(nat: &nat::Nat<A>) -> Value {
    let c = &nat.counters;
    let drops: serde_json::Map<String, Value> = nat::NatDrop::ALL
        .iter()
        .map(|r| (r.name().to_string(), c.drops[*r as usize].into()))
        .collect();
    json!({
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
        "hosts_total": nat.hosts().count(),
        "hosts": nat_hosts(nat, STATS_HOSTS),
    })
}

fn nat_hosts<A: nat::family::Family>(nat: &nat::Nat<A>, max: usize) -> Vec<Value> {
    let mut hosts: Vec<nat::HostView<A>> = nat.hosts().collect();
    let order = |a: &nat::HostView<A>, b: &nat::HostView<A>| {
        b.entries.cmp(&a.entries).then(a.addr.cmp(&b.addr))
    };
    // O(hosts) selection of the heaviest `max`, then a sort of those only.
    if max > 0 && hosts.len() > max {
        hosts.select_nth_unstable_by(max - 1, order);
    }
    hosts.truncate(max);
    hosts.sort_unstable_by(order);
    hosts
        .iter()
        .map(|h| {
            let drops: serde_json::Map<String, Value> = h
                .drops_by_reason
                .iter()
                .map(|(r, n)| (r.name().to_string(), (*n).into()))
                .collect();
            json!({
                "addr": h.addr.to_string(),
                "entries": h.entries,
                "unassured": h.unassured,
                "mappings": h.mappings,
                "evicted": h.evicted,
                "drops": h.drops,
                "drops_by_reason": drops,
            })
        })
        .collect()
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
            span_rx: None,
            span_of: [u16::MAX; BATCH],
            out_span: Vec::with_capacity(BATCH),
            taps: Vec::new(),
            reloader: None,
            reloads: 0,
            name,
            ports,
            pipeline,
            batch: Batch::new(),
            generated: Gen::new(),
            fv: [(0, false); BATCH],
            flooded: [false; BATCH],
            conv: Batch::new(),
            conv_of: [u16::MAX; BATCH],
            out_conv,
            keep: Vec::with_capacity(BATCH),
            out,
            epoch: Instant::now(),
            summaries: Summaries::default(),
            gone: Vec::new(),
            saver: None,
            last_save: 0,
            saving: None,
            expiring: false,
            upgrade: None,
            pacer: crate::pace::Pacer::new(0, 0),
            last_empty_port: 0,
            empty_seen: (0, 0),
            links: None,
            changes: None,
            on_sighup: None,
            share: None,
            fast: crate::fastpath::FastPath::off("not set up"),
        }
    }

    /// Use the kernel fast path `fp` (attached to this worker's ports).
    pub fn set_fastpath(&mut self, fp: crate::fastpath::FastPath) {
        self.fast = fp;
    }

    /// The kernel fast path.
    pub fn fastpath(&self) -> &crate::fastpath::FastPath {
        &self.fast
    }

    /// Whether flows entering or leaving by port `p` may be offloaded: not
    /// while it is captured or mirrored (those see every frame); on a
    /// VLAN-aware switch only if the frame, of VLAN `vid`, is untagged there
    /// (a LAN port's access VLAN, or the uplink): the fast path does not
    /// push or pop tags.
    fn offload_port(&self, p: usize, vid: u16) -> bool {
        let vlan_ok = match &self.pipeline.vlans {
            None => true,
            Some(v) => !self.ports[p].lan || v.access.get(p).copied().flatten() == Some(vid),
        };
        vlan_ok
            && self.fast.port(p).is_some()
            && !self.taps.iter().any(|t| t.port == p)
            && self.mirrors.get(p).copied().flatten().is_none()
            && !self.mirrors.contains(&Some(p))
    }

    /// Merge the fast path's port counters into the ports' stats.
    fn fast_ports(&mut self) {
        if !self.fast.is_on() {
            return;
        }
        for i in 0..self.ports.len() {
            let d = self.fast.port_delta(i);
            let st = &mut self.ports[i].stats;
            st.rx_packets += d.rx_packets;
            st.rx_bytes += d.rx_bytes;
            st.tx_packets += d.tx_packets;
            st.tx_bytes += d.tx_bytes;
        }
    }

    /// The fast path's once-a-second sweep: its traffic refreshes the FDB
    /// and the NAT entries (so active flows never age out here), and idle,
    /// ended or stale entries leave it.
    fn fast_sweep(&mut self, now: u64) {
        if !self.fast.is_on() {
            return;
        }
        self.fast_ports();
        let mono = crate::sys::bpf::monotonic_ns();
        let pl = &mut self.pipeline;
        self.fast.sweep(now, mono, |f, packets, bytes, at| {
            if packets > 0 {
                pl.fdb.refresh(f.vlan, f.seen.src_mac(), f.in_port, at);
            }
            if !f.translated {
                return true;
            }
            match pl.gateway.as_mut().and_then(|g| g.nat.as_mut()) {
                Some(n) => n.offloaded(&f.seen.tuple(), packets, bytes, at, now),
                None => false,
            }
        });
    }

    /// Share MAC learning with the other workers (`[switch] workers > 1`).
    pub fn set_share(&mut self, share: Share) {
        self.pipeline.fdb.share();
        self.share = Some(share);
    }

    /// Apply the bindings the other workers learned (before handling frames).
    fn take_shared(&mut self, now: u64) {
        let Some(sh) = self.share.as_mut() else {
            return;
        };
        while let Ok(v) = sh.rx.try_recv() {
            for l in v {
                self.pipeline.fdb.learn_shared(l, now);
                sh.applied += 1;
            }
        }
    }

    /// Pass what this worker's table learned to the other workers.
    fn publish(&mut self) {
        let Some(sh) = self.share.as_mut() else {
            return;
        };
        self.pipeline.fdb.take_learned(&mut sh.buf);
        if sh.buf.is_empty() {
            return;
        }
        for p in &sh.peers {
            if p.try_send(sh.buf.clone()).is_err() {
                sh.dropped += 1;
            }
        }
        sh.buf.clear();
    }

    /// Copy every frame received or sent on `port` to `sink`: received frames
    /// as they arrived, sent ones as sent. `mirror` names a pcap mirror's file
    /// (its losses are logged once per interval); `None` for a capture (whose
    /// client reports them).
    pub fn add_tap(&mut self, port: usize, sink: TapSink, mirror: Option<String>) {
        // A captured port's frames all pass through the switch.
        self.fast.flush_port(port);
        self.taps.push(Tap {
            port,
            sink,
            mirror,
            reported: 0,
        });
    }

    /// Log station moves and tables refusing entries: one line per kind at
    /// most every [`SUMMARY_MS`], with the counts since the previous line.
    fn summarise(&mut self, now: u64) {
        fn name(ports: &[Port], i: usize) -> &str {
            ports.get(i).map_or("?", |p| p.name.as_str())
        }
        let empty = self.pacer.empty_wakeups();
        let d = empty.saturating_sub(self.empty_seen.0);
        self.empty_seen.0 = empty;
        if d > STUCK_WAKEUPS_PER_S {
            self.empty_seen.1 += d;
        }
        if let Some(d) = self.summaries.due(5, self.empty_seen.1, now) {
            tracing::warn!(
                "the worker was woken {d} times with nothing to read (the latest by port {}): a socket stuck readable costs a core",
                name(&self.ports, self.last_empty_port)
            );
        }
        let p = &self.pipeline;
        let f = p.fdb.counters;
        if let Some(d) = self.summaries.due(0, f.moves, now) {
            let eg = p
                .fdb
                .last_move
                .map(|(m, a, b)| {
                    format!(
                        ", the latest {m} from {} to {}",
                        name(&self.ports, a),
                        name(&self.ports, b)
                    )
                })
                .unwrap_or_default();
            tracing::info!("MAC table: {d} station moves{eg} ({} in all)", f.moves);
        }
        if let Some(d) = self
            .summaries
            .due(1, f.refused_table_full + f.refused_port_full, now)
        {
            tracing::warn!(
                "MAC table refusing entries: {d} sources not learned ({} in all: {} table full, {} port at its bound); {} entries",
                f.refused_table_full + f.refused_port_full,
                f.refused_table_full,
                f.refused_port_full,
                p.fdb.len()
            );
        }
        let a = p.arp.counters;
        if let Some(d) = self
            .summaries
            .due(2, a.refused_table_full + a.refused_port_full, now)
        {
            tracing::warn!(
                "ARP table refusing entries: {d} bindings not learned ({} table full, {} port at its bound in all)",
                a.refused_table_full,
                a.refused_port_full
            );
        }
        if let Some(g) = &p.gateway {
            let c = &g.counters;
            if let Some(d) = self
                .summaries
                .due(3, c.drop_queue_full + c.drop_queue_share, now)
            {
                tracing::warn!(
                    "gateway: {d} packets dropped, the queue awaiting ARP resolution is full ({} in all)",
                    c.drop_queue_full + c.drop_queue_share
                );
            }
            if let Some(nat) = &g.nat {
                let c = &nat.counters;
                let n = |r: nat::NatDrop| c.drops[r as usize];
                let (full, ports, host) = (
                    n(nat::NatDrop::TableFull),
                    n(nat::NatDrop::PortsExhausted),
                    n(nat::NatDrop::HostLimit),
                );
                if let Some(d) = self
                    .summaries
                    .due(4, full + ports + host + c.early_dropped, now)
                {
                    tracing::warn!(
                        "NAT under pressure: {d} new flows refused or unassured entries evicted ({full} table full, {ports} ports exhausted, {host} per-host limit, {} evicted in all); {}/{} entries",
                        c.early_dropped,
                        nat.len(),
                        nat.config().max_entries
                    );
                }
            }
        }
    }

    /// Log the losses of pcap mirrors since the last call (at most once per
    /// sweep interval, one line per mirror that lost frames).
    fn report_tap_losses(&mut self) {
        for t in &mut self.taps {
            let lost = t.sink.lost.load(Ordering::Relaxed);
            if let Some(file) = &t.mirror
                && lost > t.reported
            {
                tracing::warn!(
                    "pcap mirror of {} to {file}: {} frames dropped (the writer lags; {lost} in all)",
                    self.ports[t.port].name,
                    lost - t.reported
                );
                t.reported = lost;
            }
        }
    }

    /// Follow the kernel's link events: a port whose link is deleted is
    /// taken out of service at once; when a link of the same name comes back,
    /// the port is re-opened (tables are kept).
    pub fn set_link_watch(&mut self, w: LinkWatch) {
        self.links = Some(w);
    }

    /// Take live changes (`vswitch reload`, `port add|del`) from `rx`; each
    /// is applied whole between batches and answered on its sender. The
    /// sender rings the control eventfd after sending.
    pub fn set_changes(&mut self, rx: Receiver<(Box<Change>, SyncSender<Value>)>) {
        self.changes = Some(rx);
    }

    /// Call `f` on SIGHUP instead of re-reading the policy in place (the
    /// daemon starts a full reload off the forwarding thread).
    pub fn set_on_sighup(&mut self, f: Box<dyn FnMut()>) {
        self.on_sighup = Some(f);
    }

    /// The index of the port called `name` (or the port of namespace `name`).
    pub fn port_index(&self, name: &str) -> Option<usize> {
        let live = |p: &&Port| !p.is_removed();
        self.ports
            .iter()
            .position(|p| live(&p) && p.name == name)
            .or_else(|| self.ports.iter().position(|p| live(&p) && p.netns == name))
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
        if self.span_rx.is_none() && self.mirrors.iter().any(Option::is_some) {
            self.span_rx = Some(Box::new(Batch::new()));
        }
    }

    /// Re-read the policy and swap it in (called between batches).
    fn reload(&mut self) -> Value {
        let Some(r) = self.reloader.as_mut() else {
            return json!({"ok": false, "error": "this switch has no reloadable policy"});
        };
        match r() {
            Ok(new) => {
                let rules = new.chain.acl.len();
                self.fast.flush();
                self.apply(new);
                self.reloads += 1;
                tracing::info!("policy reloaded ({rules} ACL rules); tables kept");
                json!({"ok": true, "acl_rules": rules, "reloads": self.reloads})
            }
            Err(e) => {
                tracing::warn!("reload failed, old policy kept: {e}");
                json!({"ok": false, "error": format!("reload failed, old policy kept: {e}")})
            }
        }
    }

    /// How the worker waits for traffic (see [`crate::pace`]): poll for
    /// `busy_poll` after each burst when non-zero, else adapt with a window
    /// of up to `adaptive_poll` (zero: always sleep between bursts).
    pub fn set_polling(
        &mut self,
        busy_poll: std::time::Duration,
        adaptive_poll: std::time::Duration,
    ) {
        self.pacer = crate::pace::Pacer::new(
            busy_poll.as_micros() as u64,
            adaptive_poll.as_micros() as u64,
        );
    }

    /// The worker's clock: ms since it started, plus [`CLOCK_BASE_MS`].
    pub fn now(&self) -> u64 {
        CLOCK_BASE_MS + self.epoch.elapsed().as_millis() as u64
    }

    /// Save the tables through `saver`: every `saver.interval_ms` from
    /// [`Worker::run`], and on a `upgrade` request.
    pub fn set_saver(&mut self, saver: crate::state::Saver) {
        self.saver = Some(saver);
    }

    /// The saver, if any (the daemon's save on exit).
    pub fn saver(&self) -> Option<&crate::state::Saver> {
        self.saver.as_ref()
    }

    /// The `upgrade` request [`Worker::run`] returned for (the state is saved), if any.
    pub fn upgrade_request(&self) -> Option<&Value> {
        self.upgrade.as_ref()
    }

    /// The ports and the pipeline (state capture and restore).
    pub fn parts(&self) -> (&[Port], &Pipeline<P>) {
        (&self.ports, &self.pipeline)
    }

    /// The ports and the pipeline, mutable (state restore, before [`Worker::run`]).
    pub fn parts_mut(&mut self) -> (&[Port], &mut Pipeline<P>) {
        (&self.ports, &mut self.pipeline)
    }

    /// Receive and forward what port `i` has waiting, at `now`: what [`Worker::run`]
    /// does when the port is readable (for tests and the fuzz harness, without epoll).
    pub fn poll_port(&mut self, i: usize, now: u64) {
        let _ = self.service(i, now);
    }

    /// Forward until a signal arrives on `stop`.
    pub fn run(
        &mut self,
        control: &Receiver<Request>,
        wake: &EventFd,
        stop: Option<&SignalFd>,
    ) -> io::Result<()> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        for (i, p) in self.ports.iter().enumerate() {
            epoll.add(p.io.fd(), EpollEvent::new(EpollFlags::EPOLLIN, i as u64))?;
        }
        epoll.add(wake, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_WAKE))?;
        if let Some(stop) = stop {
            epoll.add(stop, EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_STOP))?;
        }
        if let Some(l) = &self.links {
            epoll.add(
                l.mon.fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, TOKEN_LINKS),
            )?;
        }
        let mut events = [EpollEvent::empty(); 64];
        let mut last_sweep = 0;
        self.last_save = self.now();
        // The pacer's clock: the worker's epoch, as `stats` reads it.
        let epoch = self.epoch;
        let ns = move || epoch.elapsed().as_nanos() as u64;
        let mut idle_pass = false;
        loop {
            // Polling (see `crate::pace`): while traffic is dense, wait with a
            // zero timeout so the next frame does not pay for a wake-up, and
            // give the core to other threads on each empty pass.
            let spin = self.pacer.spin(ns());
            if spin && idle_pass {
                std::thread::yield_now();
            }
            let pending = self.ports.iter().any(|p| p.up && p.io.rx_pending());
            let timeout = if spin || pending || self.saving.is_some() || self.expiring {
                EpollTimeout::ZERO
            } else {
                self.pacer.waiting();
                EpollTimeout::from(1000u16)
            };
            let n = match epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => 0,
                Err(e) => return Err(e.into()),
            };
            let woke = ns();
            let now = self.now();
            self.take_shared(now);
            let mut moved = 0;
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_STOP => match stop.map(SignalFd::read_signal).unwrap_or(Ok(None)) {
                        Ok(Some(si)) if si.ssi_signo == nix::sys::signal::Signal::SIGHUP as u32 => {
                            match self.on_sighup.as_mut() {
                                Some(f) => f(),
                                None => {
                                    self.reload();
                                }
                            }
                        }
                        Ok(None) => {}
                        _ => {
                            self.report_tap_losses();
                            return Ok(());
                        }
                    },
                    TOKEN_LINKS => self.link_events(&epoll),
                    TOKEN_WAKE => {
                        let _ = wake.read();
                        while let Some(Ok((c, reply))) =
                            self.changes.as_ref().map(|rx| rx.try_recv())
                        {
                            let v = self.apply_change(*c, &epoll);
                            let _ = reply.send(v);
                        }
                        while let Ok(req) = control.try_recv() {
                            let v = match req.cmd.as_str() {
                                "fdb-snapshot" | "arp-snapshot" => {
                                    if let Some(tx) = &req.snapshot {
                                        let _ =
                                            tx.send(self.snapshot(req.cmd == "fdb-snapshot", now));
                                    }
                                    continue;
                                }
                                "conntrack-page" => {
                                    if let Some(tx) = &req.page {
                                        let _ = tx.send(self.conntrack_page(&req.args, now));
                                    }
                                    continue;
                                }
                                "reload" => self.reload(),
                                // A second worker ends when worker 0 does
                                // (worker 0 takes no "stop": it stops on a signal).
                                "stop" if self.share.as_ref().is_some_and(|s| s.index > 0) => {
                                    let _ = req.reply.send(json!({"ok": true}));
                                    self.report_tap_losses();
                                    return Ok(());
                                }
                                "conntrack-delete-page" => self.conntrack_delete(&req.args, now),
                                "fdb-add" | "fdb-del" | "fdb-flush" => {
                                    // Bindings the other workers sent before
                                    // they flushed (they flush first) are
                                    // older than the flush: dropped.
                                    if req.cmd == "fdb-flush"
                                        && let Some(sh) = self.share.as_mut()
                                    {
                                        while sh.rx.try_recv().is_ok() {}
                                    }
                                    self.fdb_edit(&req.cmd, &req.args, now)
                                }
                                "upgrade" => {
                                    let v = self.save_for_upgrade(&req.args, now);
                                    let ok = v["ok"] == true;
                                    let _ = req.reply.send(v);
                                    if ok {
                                        self.upgrade = Some(req.args);
                                        return Ok(());
                                    }
                                    continue;
                                }
                                "capture" => match (
                                    req.tap,
                                    req.args["port"].as_str().and_then(|n| self.port_index(n)),
                                ) {
                                    (Some(sink), Some(p)) => {
                                        self.add_tap(p, sink, None);
                                        json!({"ok": true, "port": self.ports[p].name})
                                    }
                                    _ => {
                                        json!({"ok": false, "error": format!("no port {} (use a port or namespace name from `vswitch stats`)", req.args["port"])})
                                    }
                                },
                                "trace" => self.trace(&req.args, now),
                                "stats" => {
                                    self.collect_kernel_drops();
                                    self.fast_ports();
                                    self.answer(&req.cmd, now)
                                }
                                _ => self.answer(&req.cmd, now),
                            };
                            let _ = req.reply.send(v);
                        }
                    }
                    i => {
                        let got = self.service(i as usize, now);
                        if got == 0 {
                            self.pacer.empty_wakeup();
                            self.last_empty_port = i as usize;
                        }
                        moved += got;
                    }
                }
            }
            if pending {
                for i in 0..self.ports.len() {
                    if self.ports[i].up && self.ports[i].io.rx_pending() {
                        moved += self.service(i, now);
                    }
                }
            }
            idle_pass = moved == 0;
            self.publish();
            if moved > 0 {
                self.pacer.traffic(woke, ns());
            }
            for i in std::mem::take(&mut self.gone) {
                let _ = epoll.delete(self.ports[i].io.fd());
            }
            if self.expiring {
                self.expiring = !self.pipeline.expire_more(now);
            }
            if now.saturating_sub(last_sweep) >= 1000 {
                self.collect_kernel_drops();
                self.fast_sweep(now);
                self.expiring = !self.pipeline.expire(now);
                self.generated.clear();
                self.pipeline.periodic(now, &mut self.generated);
                if !self.generated.is_empty() {
                    self.send_generated(now);
                }
                self.report_tap_losses();
                self.summarise(now);
                last_sweep = now;
            }
            // The periodic save: a copy taken in pages between batches (a
            // whole pass over a full NAT table would pause forwarding for
            // tens of milliseconds); encoding and writing happen on the
            // saver's thread.
            if let Some(mut pc) = self.saving.take() {
                if pc.step(self, now) {
                    if let Some(sv) = &self.saver {
                        sv.offer(pc.finish());
                    }
                } else {
                    self.saving = Some(pc);
                }
            } else if let Some(sv) = &self.saver
                && sv.interval_ms > 0
                && now.saturating_sub(self.last_save) >= sv.interval_ms
            {
                self.saving = Some(crate::state::PagedCapture::begin(self, now));
                self.last_save = now;
            }
        }
    }

    /// Save the tables for `vswitch upgrade` (waits for the write), after
    /// checking that the new binary (`args.binary`, if given) is executable.
    fn save_for_upgrade(&mut self, args: &Value, now: u64) -> Value {
        let Some(sv) = &self.saver else {
            return json!({"ok": false, "error": "this switch saves no state"});
        };
        if let Some(b) = args["binary"].as_str() {
            use std::os::unix::fs::PermissionsExt;
            match std::fs::metadata(b) {
                Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {}
                Ok(_) => {
                    return json!({"ok": false, "error": format!("{b} is not an executable file; nothing changed")});
                }
                Err(e) => {
                    return json!({"ok": false, "error": format!("{b}: {e}; nothing changed")});
                }
            }
        }
        let st = crate::state::capture(self, now);
        match sv.save_blocking(st) {
            Ok(n) => {
                json!({"ok": true, "entries": n, "file": sv.path.display().to_string(), "pid": std::process::id()})
            }
            Err(e) => {
                json!({"ok": false, "error": format!("state not saved, upgrade refused: {e}")})
            }
        }
    }

    /// Flood to `vtep` on tunnel port `port` too (a restored flood VTEP).
    pub fn add_flood(&mut self, port: usize, vtep: std::net::Ipv4Addr) {
        if let Some(t) = self.ports.get_mut(port).and_then(|p| p.io.tunnel()) {
            t.add_flood(vtep);
        }
    }

    /// Accept datagrams from `vtep` on tunnel port `port` (a restored static entry names it).
    pub fn allow_vtep(&mut self, port: usize, vtep: std::net::Ipv4Addr) {
        if let Some(t) = self.ports.get_mut(port).and_then(|p| p.io.tunnel()) {
            t.allow(vtep);
        }
    }

    /// Add the kernel's receive drops of every port since the last call to
    /// its `kernel-rx-dropped` counter (at the 1 s sweep and before `stats`).
    fn collect_kernel_drops(&mut self) {
        for p in self.ports.iter_mut().filter(|p| p.up) {
            p.stats.drops[DropReason::KernelRx as usize] += p.io.take_kernel_rx_drops();
            let st = &mut p.stats;
            p.io.take_drops(&mut |r, n| st.drops[r as usize] += n);
        }
    }

    fn mark_gone(&mut self, i: usize, e: &dyn std::fmt::Display) {
        if !self.ports[i].up {
            return;
        }
        tracing::warn!(
            "port {} ({}) is gone: {e}; forwarding continues on the other ports",
            self.ports[i].name,
            self.ports[i].netns
        );
        self.take_down(i);
        self.gone.push(i);
    }

    /// Out of service: forget what was learned on port `i` (its hosts may
    /// come back with other MACs), the gateway's neighbours on it included.
    fn take_down(&mut self, i: usize) {
        self.ports[i].up = false;
        self.fast.port_down(i);
        let now = self.now();
        self.pipeline.forget_port(i, now);
    }

    /// Read the kernel's link events: ports whose link was deleted go out
    /// of service at once, gone ports whose link is back are re-opened.
    fn link_events(&mut self, epoll: &Epoll) {
        let Some(mut l) = self.links.take() else {
            return;
        };
        let mut evs = std::mem::take(&mut l.events);
        evs.clear();
        let lost = match l.mon.read(&mut evs) {
            Ok(()) => false,
            Err(e) => {
                tracing::warn!("link events lost ({e}); re-checking gone ports");
                true
            }
        };
        for ev in &evs {
            for i in 0..self.ports.len() {
                let p = &self.ports[i];
                if !reattachable(p.kind) || p.name != ev.name {
                    continue;
                }
                if !ev.new && p.up {
                    self.mark_gone(i, &"link deleted");
                } else if ev.new && !p.up {
                    self.reattach(i, &mut l, epoll, ev.mac);
                }
            }
        }
        if lost {
            for i in 0..self.ports.len() {
                if reattachable(self.ports[i].kind) && !self.ports[i].up {
                    self.reattach(i, &mut l, epoll, None);
                }
            }
        }
        l.events = evs;
        self.links = Some(l);
    }

    /// Re-open gone port `i` on the link of the same name (tables are kept).
    fn reattach(&mut self, i: usize, l: &mut LinkWatch, epoll: &Epoll, mac: Option<[u8; 6]>) {
        let io = match (l.open)(&self.ports[i].name) {
            Ok(io) => io,
            Err(e) => {
                tracing::warn!(
                    "port {} ({}) is back but cannot be re-attached: {e}",
                    self.ports[i].name,
                    self.ports[i].netns
                );
                return;
            }
        };
        self.gone.retain(|&g| g != i);
        let _ = epoll.delete(self.ports[i].io.fd());
        self.ports[i].io = io;
        if let Err(e) = epoll.add(
            self.ports[i].io.fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, i as u64),
        ) {
            tracing::warn!("port {}: epoll: {e}", self.ports[i].name);
            return;
        }
        self.ports[i].up = true;
        if self.fast.is_on() {
            let p = &self.ports[i];
            self.fast.reattach(i, &p.name, p.io.fd());
        }
        if !self.ports[i].lan
            && let (Some(gw), Some(m)) = (&mut self.pipeline.gateway, mac)
            && gw.uplink_port() == Some(i)
        {
            gw.set_uplink_mac(crate::wire::MacAddr(m));
        }
        tracing::info!(
            "port {} ({}) is back; forwarding resumes on it",
            self.ports[i].name,
            self.ports[i].netns
        );
    }

    /// Apply a live change whole (called between batches): detach removed
    /// ports, attach new ones in their slots, then swap in the policy, VLAN
    /// roles, routes, NAT rules and pcap mirrors. FDB, ARP and NAT tables are
    /// kept (entries of removed ports are flushed).
    fn apply_change(&mut self, c: Change, epoll: &Epoll) -> Value {
        self.fast.flush();
        for &i in &c.remove {
            if i >= self.ports.len() || self.ports[i].is_removed() {
                continue;
            }
            let _ = epoll.delete(self.ports[i].io.fd());
            self.gone.retain(|&g| g != i);
            self.take_down(i);
            self.fast.port_removed(i);
            self.taps.retain(|t| t.port != i);
            tracing::info!(
                "port {} ({}) removed",
                self.ports[i].name,
                self.ports[i].netns
            );
            let p = &mut self.ports[i];
            if let Ok(d) = crate::sys::Detached::new() {
                p.io = Box::new(d); // closes the port's socket
            }
            p.kind = REMOVED;
            p.name.clear();
            p.netns.clear();
            p.lan = false;
            p.isolated = false;
            p.stats = PortStats::default();
        }
        for np in c.add {
            let port = Port {
                name: np.name,
                netns: np.netns,
                kind: np.kind,
                io: np.io,
                up: true,
                lan: true,
                isolated: false,
                stats: PortStats::default(),
            };
            let slot = np.slot.min(self.ports.len());
            if let Err(e) = epoll.add(
                port.io.fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, slot as u64),
            ) {
                tracing::warn!("port {}: epoll: {e}", port.name);
            }
            tracing::info!("port {} ({}) added", port.name, port.netns);
            if slot == self.ports.len() {
                self.ports.push(port);
            } else {
                self.ports[slot] = port;
            }
            if self.fast.is_on() && self.ports[slot].kind == "veth" {
                self.fast.ensure_ports(self.ports.len());
                let p = &self.ports[slot];
                if let Err(e) = self.fast.attach_port(slot, &p.name, true, p.io.fd()) {
                    tracing::warn!("fast path: port {} stays in the slow path: {e}", p.name);
                }
            }
        }
        let n = self.ports.len();
        self.out.resize_with(n, || Vec::with_capacity(BATCH));
        self.out_conv.resize_with(n, || Vec::with_capacity(BATCH));
        self.mirrors.resize(n, None);
        self.pipeline.isolated.resize(n, false);
        self.pipeline.fdb.ensure_ports(n);
        if let Some(v) = c.vlans {
            self.pipeline.vlans = Some(v);
        }
        if let Some(r) = c.policy {
            self.apply(r);
        }
        if let Some(gw) = &mut self.pipeline.gateway {
            if let (Some(r), Some(v6)) = (c.routes6, gw.v6_mut()) {
                v6.set_routes(r);
            }
            if let Some(r) = c.routes {
                gw.set_routes(r);
                let on_link = gw.config().lan_on_link();
                self.pipeline.arp.set_on_link(&on_link);
            }
            if let Some(m) = c.lan_mtu {
                gw.set_lan_mtu(m);
            }
            if let (Some((m, d)), Some(nat)) = (c.nat_rules, gw.nat.as_mut()) {
                nat.set_rules(m, d);
            }
            if let (Some((m, d)), Some(nat)) =
                (c.nat_rules6, gw.v6_mut().and_then(|v| v.nat.as_mut()))
            {
                nat.set_rules(m, d);
            }
        }
        self.taps
            .retain(|t| t.mirror.as_ref().is_none_or(|f| !c.pcap_remove.contains(f)));
        for (port, file, sink) in c.pcap_add {
            self.add_tap(port, sink, Some(file));
        }
        // A gone port whose link exists again (an event missed) comes back now.
        if let Some(mut l) = self.links.take() {
            for i in 0..self.ports.len() {
                if reattachable(self.ports[i].kind) && !self.ports[i].up {
                    self.reattach(i, &mut l, epoll, None);
                }
            }
            self.links = Some(l);
        }
        self.reloads += 1;
        json!({"ok": true, "changes": c.summary, "reloads": self.reloads})
    }

    /// Receive and forward up to [`BATCHES_PER_WAKE`] batches from port `i`;
    /// returns the number of frames received.
    fn service(&mut self, i: usize, now: u64) -> usize {
        let mut got = 0;
        if !self.ports[i].up {
            return got;
        }
        for _ in 0..BATCHES_PER_WAKE {
            let n = match self.ports[i].io.rx_batch(&mut self.batch) {
                Ok(n) => n,
                Err(e) if is_gone(&e) => {
                    self.mark_gone(i, &e);
                    return got;
                }
                Err(e) => {
                    tracing::warn!("receive on {}: {e}", self.ports[i].name);
                    return got;
                }
            };
            if n == 0 {
                return got;
            }
            got += n;
            self.forward(i, now);
            if n < BATCH {
                return got;
            }
        }
        got
    }

    /// Run the batch through the pipeline and send it out.
    pub fn forward(&mut self, in_port: usize, now: u64) {
        for o in &mut self.out {
            o.clear();
        }
        self.generated.clear();
        // Captures and mirrors see received frames as they arrived, before
        // the pipeline rewrites them (VLAN, gateway, NAT).
        let ts = if self.taps.is_empty() { 0 } else { unix_us() };
        let span_to = self.mirrors.get(in_port).copied().flatten();
        if let Some(sp) = self.span_rx.as_deref_mut() {
            sp.clear();
        }
        for k in 0..self.batch.len() {
            self.span_of[k] = u16::MAX;
            if self.batch.is_truncated(k) {
                self.ports[in_port].stats.drop(DropReason::Truncated);
                continue;
            }
            let len = self.batch.frame(k).len() as u64;
            let st = &mut self.ports[in_port].stats;
            st.rx_packets += 1;
            st.rx_bytes += len;
            if !self.taps.is_empty() {
                tap_send(
                    &mut self.taps,
                    &mut self.ports,
                    in_port,
                    ts,
                    self.batch.frame(k),
                );
            }
            if span_to.is_some()
                && let Some(sp) = self.span_rx.as_deref_mut()
            {
                let src = self.batch.wire(k);
                // A frame whose VLAN tag was restored into the headroom may
                // not fit a slot's receive area: it gets no copy (counted).
                let copied = sp.push_with(|b| match b.get_mut(..src.len()) {
                    Some(d) => {
                        d.copy_from_slice(src);
                        src.len()
                    }
                    None => 0,
                });
                if copied.is_none() {
                    self.ports[in_port].stats.capture_dropped += 1;
                }
                if let Some(c) = copied {
                    self.span_of[k] = c as u16;
                }
            }
            // The fast path reads the frame as received; the pipeline may rewrite it.
            let seen = if self.fast.port(in_port).is_some() {
                match crate::fastpath::observe(self.batch.frame(k)) {
                    crate::fastpath::Observed::Candidate(s) => self
                        .pipeline
                        .policy
                        .offload(
                            &crate::policy::FrameMeta { in_port, now },
                            &crate::policy::Frame::new(self.batch.frame(k)),
                        )
                        .then_some(s),
                    crate::fastpath::Observed::Ends(s, end) => {
                        self.fast.ends(in_port, &s, end, now);
                        None
                    }
                    crate::fastpath::Observed::None => None,
                }
            } else {
                None
            };
            let (vnet, frame) = self.batch.parts_mut(k);
            self.pipeline.rx_vtep = self.ports[in_port].io.rx_vtep(k);
            let mut verdict = self
                .pipeline
                .decide(in_port, vnet, frame, now, &mut self.generated);
            self.pipeline.rx_vtep = None;
            let mut plain = self.pipeline.retag.is_none() && self.pipeline.mirror.is_none();
            self.fv[k] = self.pipeline.frame_vlan;
            self.flooded[k] = matches!(verdict, Verdict::Flood | Verdict::FloodAll);
            // A policy's tag edit (push needs the slot's headroom; a frame whose
            // tag was already restored into it keeps its form). A push refused
            // for a malformed vnet header drops the frame: it must not leave untagged.
            match self.pipeline.retag.take() {
                Some(Some(vid)) if self.batch.has_headroom(k) => {
                    let pushed = self.batch.insert_vlan_tag(k, 0x8100, vid);
                    verdict = if pushed {
                        verdict
                    } else {
                        Verdict::Drop(DropReason::VlanRetag)
                    };
                }
                Some(None) => self.batch.remove_vlan_tag(k),
                _ => {}
            }
            // A policy's Mirror action: a copy to that port, besides normal forwarding.
            if let Some(m) = self.pipeline.mirror.take()
                && !matches!(verdict, Verdict::Drop(_))
            {
                match self.ports.get(m) {
                    None => self.ports[in_port].stats.drop(DropReason::PolicyBadPort),
                    Some(p) if m != in_port && p.up => self.out[m].push(k as u16),
                    Some(_) => {}
                }
            }
            match verdict {
                Verdict::Drop(r) => self.ports[in_port].stats.drop(r),
                Verdict::Unicast(p) => match self.ports.get_mut(p) {
                    None => self.ports[in_port].stats.drop(DropReason::PolicyBadPort),
                    Some(port) if port.up => {
                        self.out[p].push(k as u16);
                        plain &= p != in_port;
                        let (vid, tagged) = self.fv[k];
                        if let Some(s) = seen
                            && plain
                            && !tagged
                            && self.offload_port(in_port, vid)
                            && self.offload_port(p, vid)
                            && let (Some(ip), Some(op)) =
                                (self.fast.port(in_port), self.fast.port(p))
                            && !self.fast.waiting(ip, &s)
                            && let Some(mut c) = crate::fastpath::derive(
                                &s,
                                self.batch.frame(k),
                                (in_port, ip),
                                (p, op),
                            )
                        {
                            // A routed flow's frames must fit the gateway's MTU too.
                            if c.routed()
                                && let Some(gw) = &self.pipeline.gateway
                            {
                                c.cap_mtu(gw.mtu_towards(p));
                            }
                            c.set_vlan(vid);
                            self.fast.offer(c, now);
                        }
                    }
                    Some(port) => port.stats.drop(DropReason::PortDown),
                },
                v @ (Verdict::Flood | Verdict::FloodAll) => {
                    self.ports[in_port].stats.flooded += 1;
                    let mut any = false;
                    for p in 0..self.ports.len() {
                        if floods_to(&self.ports, in_port, v, p) {
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
        self.span(in_port, span_to);
        if !self.taps.is_empty() {
            // The send side as sent: the rewritten frame, or its VLAN conversion.
            for p in 0..self.ports.len() {
                for &k in &self.out[p] {
                    tap_send(
                        &mut self.taps,
                        &mut self.ports,
                        p,
                        ts,
                        self.batch.frame(k as usize),
                    );
                }
                for &c in &self.out_conv[p] {
                    tap_send(
                        &mut self.taps,
                        &mut self.ports,
                        p,
                        ts,
                        self.conv.frame(c as usize),
                    );
                }
            }
        }
        let fdb = (&self.pipeline.fdb, now);
        Self::send(&mut self.ports, &self.batch, &self.out, &mut self.gone, fdb);
        if !self.conv.is_empty() {
            Self::send(
                &mut self.ports,
                &self.conv,
                &self.out_conv,
                &mut self.gone,
                fdb,
            );
        }
        if let (Some(y), Some(sp)) = (span_to, self.span_rx.as_deref())
            && !self.out_span.is_empty()
        {
            Self::send_one(&mut self.ports, sp, y, &self.out_span, &mut self.gone, fdb);
        }
        self.send_generated(now);
    }

    /// Frames the gateway generated or released, routed, then sent the same
    /// way as forwarded ones (mirrors and captures included).
    fn send_generated(&mut self, now: u64) {
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
            // A mirrored port's generated frames go to its mirror port too.
            for x in 0..self.ports.len() {
                if let Some(y) = self.mirrors.get(x).copied().flatten()
                    && y != x
                    && y < self.ports.len()
                    && self.ports[y].up
                {
                    for i in 0..self.out[x].len() {
                        let k = self.out[x][i];
                        if !self.out[y].contains(&k) {
                            self.out[y].push(k);
                        }
                    }
                }
            }
            if !self.taps.is_empty() {
                let ts = unix_us();
                for p in 0..self.ports.len() {
                    for &k in &self.out[p] {
                        tap_send(
                            &mut self.taps,
                            &mut self.ports,
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
                (&self.pipeline.fdb, now),
            );
        }
        for i in self.gone.clone() {
            if self.ports[i].up {
                self.take_down(i);
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
                    // Flooding is scoped to the VLAN's members; a frame sent to
                    // this port alone (unicast, redirect, mirror) is a drop.
                    if !self.flooded[k] {
                        self.ports[p].stats.drop(DropReason::VlanEgress);
                    }
                    continue;
                }
                if tagged == want_tagged {
                    self.keep.push(k as u16);
                    continue;
                }
                if self.conv_of[k] == u16::MAX {
                    let src = self.batch.wire(k);
                    // At most one conversion per frame of the batch: `conv` never fills.
                    match self.conv.push_with(|b| retag(src, vid, want_tagged, b)) {
                        Some(c) => self.conv_of[k] = c as u16,
                        None => self.conv_of[k] = CONV_FAILED,
                    }
                }
                match self.conv_of[k] {
                    CONV_FAILED => self.ports[p].stats.drop(DropReason::VlanRetag),
                    c => self.out_conv[p].push(c),
                }
            }
            std::mem::swap(&mut self.out[p], &mut self.keep);
        }
        self.pipeline.vlans = Some(v);
    }

    /// SPAN: copy what a mirrored port received (as it arrived: `span_rx`,
    /// when `span_to` is its mirror port) and what it is about to send (as sent).
    /// A frame the mirror port gets anyway, unchanged, is not sent twice.
    fn span(&mut self, in_port: usize, span_to: Option<usize>) {
        self.out_span.clear();
        if self.mirrors.iter().all(Option::is_none) {
            return;
        }
        if let (Some(y), Some(sp)) = (span_to, self.span_rx.as_deref())
            && y < self.ports.len()
            && y != in_port
            && self.ports[y].up
        {
            for k in 0..self.batch.len() {
                let c = self.span_of[k];
                if c == u16::MAX {
                    continue;
                }
                let dup =
                    self.out[y].contains(&(k as u16)) && sp.wire(c as usize) == self.batch.wire(k);
                if !dup {
                    self.out_span.push(c);
                }
            }
        }
        for x in 0..self.ports.len() {
            let Some(y) = self.mirrors.get(x).copied().flatten() else {
                continue;
            };
            if y >= self.ports.len() || !self.ports[y].up || y == x {
                continue;
            }
            for i in 0..self.out[x].len() {
                let k = self.out[x][i];
                if !self.out[y].contains(&k) {
                    self.out[y].push(k);
                }
            }
            for i in 0..self.out_conv[x].len() {
                let c = self.out_conv[x][i];
                if !self.out_conv[y].contains(&c) {
                    self.out_conv[y].push(c);
                }
            }
        }
    }

    /// Send `idx` of `batch` on port `p` alone.
    fn send_one(
        ports: &mut [Port],
        batch: &Batch,
        p: usize,
        idx: &[u16],
        gone: &mut Vec<usize>,
        (fdb, now): (&crate::fdb::Fdb, u64),
    ) {
        if !ports[p].up {
            return;
        }
        match ports[p].io.tx_batch_via(batch, idx, fdb, now) {
            Ok(o) => {
                let st = &mut ports[p].stats;
                st.tx_packets += o.sent as u64;
                st.tx_bytes += o.bytes;
                st.drops[DropReason::TxError as usize] += o.failed as u64;
            }
            Err(e) => {
                ports[p].stats.drops[DropReason::PortDown as usize] += idx.len() as u64;
                if !gone.contains(&p) {
                    tracing::warn!(
                        "port {} ({}) is gone: {e}; forwarding continues on the other ports",
                        ports[p].name,
                        ports[p].netns
                    );
                    gone.push(p);
                }
            }
        }
    }

    fn send(
        ports: &mut [Port],
        batch: &Batch,
        out: &[Vec<u16>],
        gone: &mut Vec<usize>,
        (fdb, now): (&crate::fdb::Fdb, u64),
    ) {
        for p in 0..ports.len() {
            if out[p].is_empty() || !ports[p].up {
                continue;
            }
            match ports[p].io.tx_batch_via(batch, &out[p], fdb, now) {
                Ok(o) => {
                    let st = &mut ports[p].stats;
                    st.tx_packets += o.sent as u64;
                    st.tx_bytes += o.bytes;
                    st.drops[DropReason::TxError as usize] += o.failed as u64;
                }
                Err(e) => {
                    ports[p].stats.drops[DropReason::PortDown as usize] += out[p].len() as u64;
                    if !gone.contains(&p) {
                        tracing::warn!(
                            "port {} ({}) is gone: {e}; forwarding continues on the other ports",
                            ports[p].name,
                            ports[p].netns
                        );
                        gone.push(p);
                    }
                }
            }
        }
    }

    /// Describe what the pipeline would do with a frame, without sending it.
    fn trace(&self, args: &Value, now: u64) -> Value {
        match crate::trace::trace(&self.pipeline, &self.ports, &self.fast, args, now) {
            Ok(t) => json!({"ok": true, "stages": t.stages, "verdict": t.verdict}),
            Err(e) => json!({"ok": false, "error": e}),
        }
    }

    /// Copy the MAC table (`fdb`) or the ARP table.
    pub fn snapshot(&self, fdb: bool, now: u64) -> TableSnapshot {
        let p = &self.pipeline;
        TableSnapshot {
            switch: self.name.clone(),
            ports: self
                .ports
                .iter()
                .map(|p| (p.name.clone(), p.netns.clone()))
                .collect(),
            now,
            ageing_ms: p.fdb.ageing_ms(),
            fdb: if fdb { p.fdb.entries(now) } else { Vec::new() },
            fdb_counters: p.fdb.counters,
            arp: if fdb { Vec::new() } else { p.arp.entries(now) },
            arp_counters: p.arp.counters,
            nd: if fdb { Vec::new() } else { p.nd.entries(now) },
            nd_counters: p.nd.counters,
        }
    }

    /// Copy one page of the NAT's connection table (`args`: `cursor`, `max`
    /// capped at [`MAX_PAGE`]).
    /// Copy one page of the NAT's connection table (`args`: `family` 4
    /// (default) or 6, `cursor`, `max` capped at [`MAX_PAGE`]).
    pub fn conntrack_page(&self, args: &Value, now: u64) -> ConntrackPage {
        let gw = self.pipeline.gateway.as_ref();
        let cursor = usize::try_from(args["cursor"].as_u64().unwrap_or(0)).unwrap_or(usize::MAX);
        let max = args["max"]
            .as_u64()
            .unwrap_or(MAX_PAGE as u64)
            .clamp(1, MAX_PAGE as u64) as usize;
        fn widen<A: Copy + Into<std::net::IpAddr>>(
            (v, next): (Vec<nat::EntryView<A>>, Option<usize>),
        ) -> (Vec<nat::EntryView<std::net::IpAddr>>, Option<usize>) {
            (v.iter().map(nat::EntryView::widen).collect(), next)
        }
        let (has, (entries, next), total) = if args["family"].as_u64() == Some(6) {
            match gw.and_then(|g| g.v6()).and_then(|v| v.nat.as_ref()) {
                Some(n) => (true, widen(n.entries_from(now, cursor, max)), n.len()),
                None => (false, (Vec::new(), None), 0),
            }
        } else {
            match gw.and_then(|g| g.nat.as_ref()) {
                Some(n) => (true, widen(n.entries_from(now, cursor, max)), n.len()),
                None => (false, (Vec::new(), None), 0),
            }
        };
        ConntrackPage {
            switch: self.name.clone(),
            nat: has,
            entries,
            next,
            total,
        }
    }

    /// Delete one page of the NAT's connection table (`conntrack -D/-F`):
    /// the entries matching the request's filters among at most `max`
    /// ([`DELETE_PAGE`]) from `cursor`; answers `deleted` and `next`.
    pub fn conntrack_delete(&mut self, args: &Value, now: u64) -> Value {
        // A deleted entry's mapping must stop admitting at once: the fast
        // path merges its counts so far, then forgets everything
        // (established flows that remain are installed again once seen both
        // ways), with the counts of that last moment, which may belong to
        // entries that are about to go.
        self.fast_sweep(now);
        self.fast.flush();
        self.fast.discard_retired();
        let filter = crate::control::CtFilter::of(args);
        let cursor = args["cursor"].as_u64().unwrap_or(0);
        let max = args["max"]
            .as_u64()
            .unwrap_or(DELETE_PAGE as u64)
            .clamp(1, DELETE_PAGE as u64) as usize;
        let cursor = usize::try_from(cursor).unwrap_or(usize::MAX);
        let gw = self.pipeline.gateway.as_mut();
        let done = if args["family"].as_u64() == Some(6) {
            gw.and_then(|g| g.v6_mut())
                .and_then(|v| v.nat.as_mut())
                .map(|n| n.delete_from(now, cursor, max, |e| filter.keep(&e.widen())))
        } else {
            gw.and_then(|g| g.nat.as_mut())
                .map(|n| n.delete_from(now, cursor, max, |e| filter.keep(&e.widen())))
        };
        let Some((deleted, next)) = done else {
            return json!({"ok": true, "switch": self.name, "nat": false, "deleted": 0, "next": null});
        };
        json!({"ok": true, "switch": self.name, "nat": true, "deleted": deleted, "next": next})
    }

    /// `fdb-add` (`mac`, `port`, optional `vlan`): a static entry;
    /// `fdb-del` (`mac`, optional `vlan`); `fdb-flush` (optional `port`):
    /// the learned entries. The VLAN defaults to the switch's (none when
    /// VLAN-unaware, where a VLAN is refused).
    fn fdb_edit(&mut self, cmd: &str, args: &Value, now: u64) -> Value {
        let port = match args["port"].as_str() {
            None => None,
            Some(n) => match self.port_index(n) {
                Some(i) if self.ports[i].lan => Some(i),
                Some(_) => {
                    return json!({"ok": false, "error": format!("{n} is the routed uplink, not a switch port")});
                }
                None => {
                    return json!({"ok": false, "error": format!("no port {n:?} (use a port or namespace name from `vswitch stats`)")});
                }
            },
        };
        if cmd == "fdb-flush" {
            let n = self.pipeline.fdb.flush_learned(port);
            return json!({"ok": true, "switch": self.name, "flushed": n});
        }
        // `dst VTEP`: an entry behind a tunnel port (the only tunnel, or `dev`).
        let dst = match args["dst"].as_str() {
            None => None,
            Some(d) => match d.parse::<std::net::Ipv4Addr>() {
                Ok(a) if !a.is_unspecified() && !a.is_multicast() && !a.is_broadcast() => Some(a),
                _ => {
                    return json!({"ok": false, "error": format!("dst {d:?} is not a unicast IPv4 VTEP address")});
                }
            },
        };
        let port = match (dst, port) {
            (Some(_), Some(p)) if self.ports[p].io.tunnel_ref().is_none() => {
                return json!({"ok": false, "error": format!("{} is not a tunnel port: dst needs one", self.ports[p].name)});
            }
            (None, Some(p)) if cmd == "fdb-add" && self.ports[p].io.tunnel_ref().is_some() => {
                return json!({"ok": false, "error": format!("{} is a tunnel: give the MAC's VTEP (dst VTEP)", self.ports[p].name)});
            }
            (Some(_), None) => {
                let t: Vec<usize> = (0..self.ports.len())
                    .filter(|&i| self.ports[i].io.tunnel_ref().is_some())
                    .collect();
                match t[..] {
                    [one] => Some(one),
                    [] => {
                        return json!({"ok": false, "error": "this switch has no tunnel: dst needs one"});
                    }
                    _ => {
                        return json!({"ok": false, "error": "several tunnels: name one with dev TUNNEL"});
                    }
                }
            }
            (_, p) => p,
        };
        let mac: crate::wire::MacAddr = match args["mac"].as_str().unwrap_or("").parse() {
            Ok(m) => m,
            Err(e) => return json!({"ok": false, "error": e}),
        };
        if let (Some(v), Some(p)) = (dst, port)
            && self.ports[p]
                .io
                .tunnel_ref()
                .is_some_and(|t| t.config().local == v)
        {
            return json!({"ok": false, "error": format!("{v} is this switch's own VTEP address (local of {})", self.ports[p].name)});
        }
        // 00:00:00:00:00:00 dst VTEP: a flood VTEP of the tunnel, as for Linux vxlan.
        if let (Some(v), Some(p)) = (dst, port)
            && mac.0 == [0; 6]
            && let Some(t) = self.ports[p].io.tunnel()
        {
            let changed = if cmd == "fdb-del" {
                let in_use = self
                    .pipeline
                    .fdb
                    .entries(now)
                    .iter()
                    .any(|(_, e)| e.is_static && e.vtep == Some(v));
                t.remove_flood(v, in_use)
            } else {
                t.add_flood(v)
            };
            if !changed && cmd == "fdb-del" {
                return json!({"ok": false, "error": format!("{v} is not a flood VTEP of {}", self.ports[p].name)});
            }
            return json!({"ok": true, "switch": self.name, "flood": v.to_string(), "port": self.ports[p].name, "changed": changed});
        }
        if mac.0 == [0; 6] {
            return json!({"ok": false, "error": "00:00:00:00:00:00 names the flood list of a tunnel: give dst VTEP"});
        }
        let vlan = match (args["vlan"].as_u64(), &self.pipeline.vlans) {
            (None, _) => self.pipeline.fdb.default_vlan(),
            (Some(_), None) => {
                return json!({"ok": false, "error": "this switch is VLAN-unaware (no port has a vlan or trunk): give no vlan"});
            }
            (Some(v), Some(_)) if (1..=4094).contains(&v) => v as u16,
            (Some(v), Some(_)) => {
                return json!({"ok": false, "error": format!("vlan {v} is not in 1-4094")});
            }
        };
        if cmd == "fdb-del" {
            if let Some(d) = dst
                && let Some(e) = self.pipeline.fdb.entry(vlan, &mac)
                && e.vtep != Some(d)
            {
                let at = e
                    .vtep
                    .map_or_else(|| "a local port".to_string(), |x| x.to_string());
                return json!({"ok": false, "error": format!("{mac} is behind {at}, not {d}: nothing deleted")});
            }
            return match self.pipeline.fdb.remove(vlan, mac) {
                Some(e) => {
                    // A VTEP no static entry names any more is not accepted
                    // any more (unless configured or a flood VTEP).
                    if let (true, Some(v)) = (e.is_static, e.vtep) {
                        let in_use = self
                            .pipeline
                            .fdb
                            .entries(now)
                            .iter()
                            .any(|(_, x)| x.is_static && x.vtep == Some(v));
                        if let Some(t) = self.ports.get_mut(e.port).and_then(|p| p.io.tunnel()) {
                            t.disallow(v, in_use);
                        }
                    }
                    json!({"ok": true, "switch": self.name, "deleted": mac.to_string(), "static": e.is_static})
                }
                None => json!({"ok": false, "error": format!("no entry for {mac} in vlan {vlan}")}),
            };
        }
        let Some(port) = port else {
            return json!({"ok": false, "error": "fdb add needs a port (dev PORT)"});
        };
        if !mac.is_unicast() {
            return json!({"ok": false, "error": format!("{mac} is not a unicast MAC")});
        }
        if let Some(v) = &self.pipeline.vlans
            && !v.member(port, vlan)
        {
            return json!({"ok": false, "error": format!("port {} is not in vlan {vlan}", self.ports[port].name)});
        }
        if let (Some(v), Some(t)) = (dst, self.ports[port].io.tunnel()) {
            t.allow(v);
        }
        match self.pipeline.fdb.add_static_via(vlan, mac, port, dst, now) {
            Ok(()) => {
                json!({"ok": true, "switch": self.name, "added": mac.to_string(), "port": self.ports[port].name, "vlan": vlan, "dst": dst.map(|d| d.to_string())})
            }
            Err(e) => json!({"ok": false, "error": e}),
        }
    }

    /// The `worker` object of `stats`: polling, and with several workers
    /// its index, the frames it received and the MAC learning it shared.
    fn worker_json(&self) -> Value {
        let mut v = self.pacer.to_json(self.epoch.elapsed().as_nanos() as u64);
        if let Some(sh) = &self.share {
            v["index"] = sh.index.into();
            v["rx_packets"] = self
                .ports
                .iter()
                .map(|p| p.stats.rx_packets)
                .sum::<u64>()
                .into();
            v["fdb_shared_applied"] = sh.applied.into();
            v["fdb_shared_dropped"] = sh.dropped.into();
        }
        v
    }

    /// Answer a control request.
    pub fn answer(&self, cmd: &str, now: u64) -> Value {
        match cmd {
            "stats" => {
                let ports: Vec<Value> = self
                    .ports
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| !p.is_removed())
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
                    "uptime_ms": now.saturating_sub(CLOCK_BASE_MS),
                    "pid": std::process::id(),
                    "worker": self.worker_json(),
                    "ports": ports,
                    "fdb": {"entries": self.pipeline.fdb.len(), "counters": self.pipeline.fdb.counters},
                    "arp": {"entries": self.pipeline.arp.len(), "counters": self.pipeline.arp.counters},
                    "fastpath": self.fast.json(),
                });
                let tunnels: Vec<Value> = self
                    .ports
                    .iter()
                    .filter_map(|p| p.io.tunnel_ref().map(|t| t.json()))
                    .collect();
                if !tunnels.is_empty() {
                    v["tunnels"] = tunnels.into();
                }
                if let Some(gw) = &self.pipeline.gateway {
                    v["gateway"] = json!({
                        "address": gw.ip().to_string(),
                        "mac": gw.mac().to_string(),
                        "neighbours_lan": gw.neigh_lan.len(),
                        "neighbours_uplink": gw.neigh_wan.len(),
                        "neighbour_counters": {"lan": gw.neigh_lan.counters, "uplink": gw.neigh_wan.counters},
                        "counters": gw.counters,
                    });
                    if let Some(nat) = &gw.nat {
                        v["nat"] = nat_json(nat);
                    }
                    if let Some(v6) = gw.v6() {
                        v["gateway"]["neighbours6_lan"] = v6.neigh_lan.len().into();
                        v["gateway"]["neighbours6_uplink"] = v6.neigh_wan.len().into();
                        if let Some(nat) = &v6.nat {
                            v["nat6"] = nat_json(nat);
                            // NAT66 charges connections to ingress ports: name them.
                            for h in v["nat6"]["hosts"].as_array_mut().into_iter().flatten() {
                                let port = h["addr"]
                                    .as_str()
                                    .and_then(|a| a.parse().ok())
                                    .and_then(crate::gateway::subscriber_port)
                                    .and_then(|p| self.ports.get(p));
                                if let Some(p) = port {
                                    h["port"] = p.name.clone().into();
                                    h["netns"] = p.netns.clone().into();
                                }
                            }
                        }
                    }
                }
                v
            }
            "conntrack-count" => {
                let nat = self.pipeline.gateway.as_ref().and_then(|g| g.nat.as_ref());
                json!({
                    "ok": true,
                    "switch": self.name,
                    "nat": nat.is_some(),
                    "entries": nat.map_or(0, |n| n.len()),
                    "max_entries": nat.map_or(0, |n| n.config().max_entries),
                })
            }
            other => {
                json!({"ok": false, "error": format!("unknown request {other:?} (fdb, arp, stats, conntrack, conntrack-count, reload, trace, capture)")})
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_log_the_first_event_then_one_line_per_interval() {
        let mut s = Summaries::default();
        assert_eq!(s.due(0, 0, 1_000), None, "nothing happened");
        assert_eq!(s.due(0, 3, 2_000), Some(3), "the first at once");
        assert_eq!(s.due(0, 9, 3_000), None, "then quiet within the interval");
        assert_eq!(
            s.due(0, 12, 2_000 + SUMMARY_MS),
            Some(9),
            "the sum since the last line"
        );
        assert_eq!(
            s.due(0, 12, 5_000 + 2 * SUMMARY_MS),
            None,
            "no change, no line"
        );
        assert_eq!(s.due(1, 1, 3_000), Some(1), "kinds are independent");
    }
    use crate::pipeline::{PipelineConfig, VlanPorts};
    use crate::policy::{Action, Frame, FrameMeta};
    use crate::port::{HEADROOM, SLOT, TxOutcome};
    use crate::wire::MacAddr;
    use std::cell::RefCell;
    use std::os::fd::{AsFd, BorrowedFd};
    use std::rc::Rc;

    /// A port in memory: frames sent are recorded (vnet header included).
    struct MemPort {
        fd: std::fs::File,
        sent: Rc<RefCell<Vec<Vec<u8>>>>,
    }

    impl PortIo for MemPort {
        fn rx_batch(&mut self, _: &mut Batch) -> io::Result<usize> {
            Ok(0)
        }
        fn tx_batch(&mut self, batch: &Batch, idx: &[u16]) -> io::Result<TxOutcome> {
            for &i in idx {
                self.sent.borrow_mut().push(batch.wire(i as usize).to_vec());
            }
            Ok(TxOutcome {
                sent: idx.len(),
                bytes: 0,
                failed: 0,
            })
        }
        fn fd(&self) -> BorrowedFd<'_> {
            self.fd.as_fd()
        }
    }

    type Sent = Rc<RefCell<Vec<Vec<u8>>>>;

    fn worker<P: Policy + Reload>(n: usize, policy: P) -> (Worker<P>, Vec<Sent>) {
        let mut sent = Vec::new();
        let ports = (0..n)
            .map(|i| {
                let s: Sent = Rc::default();
                sent.push(s.clone());
                Port {
                    name: format!("p{i}"),
                    netns: format!("ns{i}"),
                    kind: "mem",
                    io: Box::new(MemPort {
                        fd: std::fs::File::open("/dev/null").unwrap(),
                        sent: s,
                    }),
                    up: true,
                    lan: true,
                    isolated: false,
                    stats: PortStats::default(),
                }
            })
            .collect();
        let cfg = PipelineConfig {
            ports: n,
            fdb_max: 64,
            fdb_max_per_port: 16,
            ageing_ms: 300_000,
            arp_max: 16,
            arp_max_per_port: crate::arp::default_per_port(16),
            arp_suppress: false,
            gateway: None,
        };
        let p = Pipeline::with_policy(&cfg, policy);
        (Worker::new("t".into(), ports, p), sent)
    }

    /// A memory port that can cross threads (a live change hands ports over).
    struct SendPort {
        fd: std::fs::File,
        sent: std::sync::Arc<std::sync::Mutex<usize>>,
    }

    impl PortIo for SendPort {
        fn rx_batch(&mut self, _: &mut Batch) -> io::Result<usize> {
            Ok(0)
        }
        fn tx_batch(&mut self, _: &Batch, idx: &[u16]) -> io::Result<TxOutcome> {
            *self.sent.lock().unwrap() += idx.len();
            Ok(TxOutcome {
                sent: idx.len(),
                bytes: 0,
                failed: 0,
            })
        }
        fn fd(&self) -> BorrowedFd<'_> {
            self.fd.as_fd()
        }
    }

    fn new_port(
        slot: usize,
        name: &str,
    ) -> (
        crate::live::NewPort,
        std::sync::Arc<std::sync::Mutex<usize>>,
    ) {
        let sent = std::sync::Arc::new(std::sync::Mutex::new(0));
        let p = crate::live::NewPort {
            slot,
            name: name.into(),
            netns: name.into(),
            kind: "port",
            io: Box::new(SendPort {
                fd: std::fs::File::open("/dev/null").unwrap(),
                sent: sent.clone(),
            }),
        };
        (p, sent)
    }

    #[test]
    fn live_changes_add_ports_in_new_slots_and_reuse_tombstones() {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
        let (mut w, sent) = worker(2, NoPolicy);
        // A third port: flooded to, and its sources learned (per-port bounds grew).
        let (p, s2) = new_port(2, "c2");
        let v = w.apply_change(
            Change {
                add: vec![p],
                summary: vec!["port c2 added".into()],
                ..Change::default()
            },
            &epoll,
        );
        assert_eq!(v["changes"][0], "port c2 added");
        load(&mut w, 0, &frame([0; 10], B, A, 64));
        w.forward(0, 0);
        assert_eq!((sent[1].borrow().len(), *s2.lock().unwrap()), (1, 1));
        load(&mut w, 0, &frame([0; 10], A, B, 64));
        w.forward(2, 1);
        assert_eq!(w.pipeline.fdb.port_len(2), 1);
        assert_eq!(w.pipeline.fdb.lookup(&B, 2), Some(2));
        // Port 1 removed: a tombstone, not flooded, not listed; port 2 keeps its id.
        w.apply_change(
            Change {
                remove: vec![1],
                ..Change::default()
            },
            &epoll,
        );
        assert!(w.ports[1].is_removed() && !w.ports[1].up);
        load(
            &mut w,
            0,
            &frame([0; 10], MacAddr([2, 0, 0, 0, 0, 9]), A, 64),
        );
        w.forward(0, 3);
        assert_eq!((sent[1].borrow().len(), *s2.lock().unwrap()), (1, 2));
        let st = w.answer("stats", 4);
        let names: Vec<&str> = st["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["p0", "c2"]);
        assert_eq!(w.port_index("c2"), Some(2));
        // The next port reuses the tombstone.
        let (p, s1) = new_port(1, "c1");
        w.apply_change(
            Change {
                add: vec![p],
                ..Change::default()
            },
            &epoll,
        );
        assert_eq!((w.ports.len(), w.ports[1].name.as_str()), (3, "c1"));
        load(
            &mut w,
            0,
            &frame([0; 10], MacAddr([2, 0, 0, 0, 0, 8]), A, 64),
        );
        w.forward(0, 5);
        assert_eq!(*s1.lock().unwrap(), 1);
    }

    /// The tables go through a capture and a restore by port name (another
    /// port order in the new run), with their ages grown by the time that
    /// passed; what aged out meanwhile or sits on a port gone is left out.
    #[test]
    fn state_restores_by_port_name_and_shifts_time() {
        use crate::state::{capture, decode, encode, restore};
        let (a, b, c) = (
            MacAddr([2, 0, 0, 0, 0, 0xa]),
            MacAddr([2, 0, 0, 0, 0, 0xb]),
            MacAddr([2, 0, 0, 0, 0, 0xc]),
        );
        let ip = std::net::Ipv4Addr::new(10, 0, 0, 9);
        let (mut w1, _) = worker(3, NoPolicy);
        let n = CLOCK_BASE_MS + 1_000_000;
        w1.pipeline.fdb.learn(a, 1, n);
        w1.pipeline.fdb.learn(b, 2, n - 200_000); // 200 s old
        w1.pipeline.fdb.learn(c, 0, n);
        w1.pipeline
            .arp
            .observe(ip, b, 2, n - 10_000, crate::arp::Heard::Reply, false);
        let mut st = capture(&w1, n);
        st.topology = "t".into();
        let st = decode(&encode(&st), "t").unwrap();
        // The new run: ports in another order, p0 gone.
        let (mut w2, _) = worker(3, NoPolicy);
        w2.ports.swap(0, 2); // p2, p1, p0
        w2.ports[2].name = "other".into();
        let m = CLOCK_BASE_MS + 5;
        let r = restore(&mut w2, &st, m, st.saved_unix_ms + 50_000);
        assert_eq!((r.fdb, r.neighbours, r.dropped), (2, 1, 1), "{r}");
        let fdb = &w2.pipeline.fdb;
        assert_eq!(fdb.lookup(&a, m), Some(1));
        assert_eq!(fdb.lookup(&b, m), Some(0), "by name: p2 is index 0 now");
        assert_eq!(fdb.lookup(&c, m), None, "its port is gone");
        // b was 250 s old at the restore: 50 s more and it has aged out.
        assert_eq!(fdb.lookup(&b, m + 49_999), Some(0));
        assert_eq!(fdb.lookup(&b, m + 50_000), None);
        let e = w2.pipeline.arp.lookup(ip, m).unwrap();
        assert_eq!((e.port, e.confirmed, m - e.last_seen), (0, true, 60_000));
        // Too late for b: 60 s more down and it is not restored at all.
        let (mut w3, _) = worker(3, NoPolicy);
        let r = restore(&mut w3, &st, m, st.saved_unix_ms + 100_000);
        assert_eq!((r.fdb, r.dropped), (2, 1));
    }

    /// Put `wire` (vnet header + frame) into slot `k` of the worker's batch.
    fn load<P: Policy + Reload>(w: &mut Worker<P>, k: usize, wire: &[u8]) {
        w.batch.rx_area(k)[..wire.len()].copy_from_slice(wire);
        w.batch.set_filled(k, wire.len(), false);
    }

    fn frame(vnet: [u8; 10], dst: MacAddr, src: MacAddr, len: usize) -> Vec<u8> {
        let mut v = vnet.to_vec();
        v.extend(crate::wire::tests_fixtures::eth_frame(
            dst, src, 0x0800, len,
        ));
        v
    }

    const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const B: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);

    struct Always(Action);
    impl Policy for Always {
        fn classify(&mut self, _: &FrameMeta, _: &Frame) -> Action {
            self.0
        }
    }
    impl Reload for Always {}

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

    #[test]
    fn retag_refuses_overflowing_offsets_and_oversized_frames() {
        // Fuzz findings (issue 8): `x + 4` overflowed for hdr_len or NEEDS_CSUM
        // csum_start >= 65532, and frames of 65,597..=65,600 bytes sliced out of range.
        let mut b = vec![0u8; SLOT - HEADROOM];
        for vnet in [
            [0u8, 0, 0xfc, 0xff, 0, 0, 0, 0, 0, 0],     // hdr_len 65532
            [0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0],       // hdr_len 65535
            [1, 0, 0, 0, 0, 0, 0xfc, 0xff, 0, 0],       // NEEDS_CSUM, csum_start 65532
            [1, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff], // NEEDS_CSUM, csum_start 65535
        ] {
            let mut src = vnet.to_vec();
            src.extend([0u8; 60]);
            assert_eq!(retag(&src, 10, true, &mut b), 0, "{vnet:?}");
        }
        // Without NEEDS_CSUM, csum_start is not an offset and is left as it is.
        let mut src = vec![0u8, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0];
        src.extend([0u8; 60]);
        assert_eq!(retag(&src, 10, true, &mut b), 74);
        assert_eq!(&b[6..8], &[0xff, 0xff]);
        for len in [65_597usize, 65_598, 65_600] {
            let mut src = vec![0u8; 10];
            src.extend(vec![0u8; len]);
            assert_eq!(retag(&src, 10, true, &mut b), 0, "{len}");
        }
        let mut src = vec![0u8; 10];
        src.extend(vec![7u8; 65_596]);
        assert_eq!(retag(&src, 10, true, &mut b), 10 + 65_600);
        // Removal never underflows on a short frame or small offsets.
        assert_eq!(retag(&src[..25], 10, false, &mut b), 0);
        let mut src = vec![1u8, 0, 2, 0, 0, 0, 3, 0, 0, 0];
        src.extend([0u8; 60]);
        assert_eq!(retag(&src, 10, false, &mut b), 66);
        assert_eq!((b[2], b[6]), (0, 0));
    }

    #[test]
    fn redirect_or_mirror_to_a_missing_port_is_a_counted_drop() {
        // Fuzz finding (issue 8): `Redirect` to a port that does not exist indexed out of bounds.
        let (mut w, sent) = worker(2, Always(Action::Redirect(7)));
        load(&mut w, 0, &frame([0; 10], B, A, 64));
        w.batch.set_filled(0, 74, false);
        w.forward(0, 0);
        assert_eq!(
            w.ports[0].stats.drops[DropReason::PolicyBadPort as usize],
            1
        );
        assert!(sent.iter().all(|s| s.borrow().is_empty()));

        let (mut w, sent) = worker(2, Always(Action::Mirror(usize::MAX)));
        load(&mut w, 0, &frame([0; 10], B, A, 64));
        w.forward(0, 0);
        assert_eq!(
            w.ports[0].stats.drops[DropReason::PolicyBadPort as usize],
            1
        );
        assert_eq!(
            sent[1].borrow().len(),
            1,
            "the frame itself is still flooded"
        );
    }

    /// A mirror port and a capture get a received frame as it arrived, before
    /// the policy's rewrite; a capture of the egress port gets it as sent.
    #[test]
    fn mirrors_and_captures_see_received_frames_before_rewrite() {
        let (mut w, sent) = worker(3, Always(Action::PushVlan(100)));
        w.mirrors = vec![Some(2), None, None];
        w.span_rx = Some(Box::new(Batch::new()));
        let (sink0, rx0) = TapSink::new(16);
        let (sink1, rx1) = TapSink::new(16);
        w.add_tap(0, sink0, None);
        w.add_tap(1, sink1, None);
        w.pipeline.fdb.learn(B, 1, 0);
        let orig = frame([0; 10], B, A, 64);
        w.batch.clear();
        load(&mut w, 0, &orig);
        w.forward(0, 0);
        let out1 = sent[1].borrow()[0].clone();
        assert_eq!(out1.len(), orig.len() + 4, "tagged on its way out");
        assert_eq!(
            *sent[2].borrow(),
            vec![orig.clone()],
            "the mirror: as received"
        );
        assert_eq!(&rx0.try_recv().unwrap()[8..], &orig[10..]);
        assert_eq!(&rx1.try_recv().unwrap()[8..], &out1[10..]);
        // A truncated slot gets no stale mirror copy from an earlier batch.
        for trunc in [false, true] {
            sent[2].borrow_mut().clear();
            w.batch.clear();
            load(&mut w, 0, &orig);
            load(&mut w, 1, &orig);
            w.batch.set_filled(1, orig.len(), trunc);
            w.forward(0, 1);
            assert_eq!(sent[2].borrow().len(), if trunc { 1 } else { 2 });
        }
        // A full capture queue is counted on the port and for its reader.
        let (sink, _rx) = TapSink::new(1);
        let lost = sink.lost.clone();
        w.add_tap(0, sink, None);
        w.batch.clear();
        load(&mut w, 0, &orig);
        load(&mut w, 1, &orig);
        w.forward(0, 2);
        assert_eq!(lost.load(Ordering::Relaxed), 1);
        assert_eq!(w.ports[0].stats.capture_dropped, 1);
    }

    /// Ports 0 and 1: access VLAN 10; port 2: trunk of VLAN 10; port 3: access VLAN 20.
    fn vlan_worker<P: Policy + Reload>(policy: P) -> (Worker<P>, Vec<Sent>) {
        let (mut w, sent) = worker(4, policy);
        w.pipeline.vlans = Some(VlanPorts {
            access: vec![Some(10), Some(10), None, Some(20)],
            members: vec![vec![10], vec![10], vec![10], vec![20]],
        });
        (w, sent)
    }

    #[test]
    fn vlan_egress_drops_are_counted_by_reason() {
        // Access -> trunk with a csum_start that cannot be shifted: vlan-retag on the trunk,
        // while the untagged copy still reaches the other access port.
        let (mut w, sent) = vlan_worker(NoPolicy);
        load(
            &mut w,
            0,
            &frame([1, 0, 0, 0, 0, 0, 0xfe, 0xff, 0, 0], B, A, 64),
        );
        w.forward(0, 0);
        assert_eq!(w.ports[2].stats.drops[DropReason::VlanRetag as usize], 1);
        assert_eq!(sent[1].borrow().len(), 1);
        assert!(sent[2].borrow().is_empty());
        // Flooding stays within VLAN 10 and is not a drop on port 3.
        assert_eq!(w.ports[3].stats.total_drops(), 0);
        assert!(sent[3].borrow().is_empty());
        // A normal frame is tagged for the trunk.
        load(&mut w, 0, &frame([0; 10], B, A, 64));
        w.forward(0, 1);
        assert_eq!(&sent[2].borrow()[0][22..26], &[0x81, 0, 0, 10]);

        // A redirect to a port outside the frame's VLAN: vlan-egress on that port.
        let (mut w, sent) = vlan_worker(Always(Action::Redirect(3)));
        load(&mut w, 0, &frame([0; 10], B, A, 64));
        w.forward(0, 0);
        assert_eq!(w.ports[3].stats.drops[DropReason::VlanEgress as usize], 1);
        assert!(sent[3].borrow().is_empty());
    }

    #[test]
    fn a_policy_tag_push_with_a_bad_vnet_header_is_dropped_not_sent_untagged() {
        let (mut w, sent) = worker(2, Always(Action::PushVlan(5)));
        load(
            &mut w,
            0,
            &frame([1, 0, 0, 0, 0, 0, 0xfd, 0xff, 0, 0], B, A, 64),
        );
        w.forward(0, 0);
        assert_eq!(w.ports[0].stats.drops[DropReason::VlanRetag as usize], 1);
        assert!(sent[1].borrow().is_empty());
        load(&mut w, 0, &frame([0; 10], B, A, 64));
        w.forward(0, 1);
        assert_eq!(&sent[1].borrow()[0][22..26], &[0x81, 0, 0, 5]);
    }

    #[test]
    fn static_fdb_entries_survive_a_saved_restart_and_learned_ones_age() {
        let (mut w, _) = worker(2, NoPolicy);
        w.pipeline.fdb.add_static(0, A, 1, 0).unwrap();
        w.pipeline.fdb.learn(B, 0, 0);
        let st = crate::state::capture(&w, 1_000);
        let (mut w2, _) = worker(2, NoPolicy);
        // Down for an hour: past the 300 s ageing time.
        let r = crate::state::restore(&mut w2, &st, 0, st.saved_unix_ms + 3_600_000);
        assert_eq!(r.fdb, 1);
        let e = w2.pipeline.fdb.entries(0);
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].0, e[0].1.port, e[0].1.is_static), (A, 1, true));
    }

    /// A policy answering from a seeded sequence of actions, ports included.
    struct Random(u64);
    impl Policy for Random {
        fn classify(&mut self, _: &FrameMeta, _: &Frame) -> Action {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let p = (self.0 >> 8) as usize % 6;
            match self.0 % 6 {
                0 => Action::Redirect(p),
                1 => Action::Mirror(p),
                2 => Action::PushVlan((self.0 >> 20) as u16 & 0xfff),
                3 => Action::PopVlan,
                4 => Action::Drop("x"),
                _ => Action::Continue,
            }
        }
    }
    impl Reload for Random {}

    #[test]
    fn no_vnet_header_or_frame_length_panics_forwarding() {
        // Seeded: random vnet headers (offsets up to 65535), frames from 0 bytes
        // to the largest slot, tagged or not, through VLAN and plain switches.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let sizes = [
            0usize, 10, 13, 14, 17, 18, 60, 1514, 65_530, 65_596, 65_597, 65_600,
        ];
        for vlan_aware in [true, false] {
            let (mut w, _) = if vlan_aware {
                vlan_worker(Random(7))
            } else {
                worker(4, Random(7))
            };
            for i in 0..3000u64 {
                let n = 1 + (rnd() % 4) as usize;
                w.batch.clear();
                for k in 0..n {
                    let len = if i % 3 == 0 {
                        sizes[(rnd() % sizes.len() as u64) as usize]
                    } else {
                        (rnd() % 200) as usize
                    };
                    let mut wire: Vec<u8> = (0..10).map(|_| rnd() as u8).collect();
                    let mut f = vec![0u8; len];
                    for b in f.iter_mut().take(64) {
                        *b = rnd() as u8;
                    }
                    if f.len() >= 16 {
                        f[..6].copy_from_slice(&B.0);
                        f[6..12].copy_from_slice(&A.0);
                        if rnd() % 2 == 0 {
                            f[12..16].copy_from_slice(&[0x81, 0, 0, 10]);
                        }
                    }
                    wire.extend(f);
                    load(&mut w, k, &wire);
                }
                w.forward((rnd() % 4) as usize, i);
            }
        }
    }
}
