//! The kernel fast path for established flows: the switch decides, eBPF
//! forwards (`[switch] fastpath = "ebpf"`).
//!
//! Contract:
//! - The slow path stays the source of truth. An entry is never computed
//!   here: it is what the pipeline did to a frame, read off the frame before
//!   and after [`crate::pipeline::Pipeline::decide`] ([`derive`]): the MACs,
//!   addresses and ports as sent, whether the TTL went down. Only a plain
//!   unicast verdict between two attached ports, leaving the frame's length,
//!   protocol, ID and ToS alone, qualifies.
//! - A flow is installed when it was seen both ways: a candidate waits (at
//!   most [`PENDING_MS`], bounded in total and per port) until a frame
//!   arrives whose key is the candidate's expected reply and whose own reply
//!   is the candidate. Both directions are then installed together.
//! - An entry leaves when its flow sends FIN or RST (those always reach the
//!   switch), after [`IDLE_MS`] without traffic, after [`REVALIDATE_MS`]
//!   in any case (the slow path then decides the flow again, so policy,
//!   FDB and neighbour changes reach it within that bound), when the NAT
//!   entry it belongs to is gone, on reload, and when one of its ports goes
//!   down or is captured.
//! - Entries are bounded in total ([`bpf::MAX_FLOWS`]) and per ingress port
//!   ([`PER_PORT_MAX`]); a flow that does not fit stays in the slow path
//!   (counted).
//! - [`FastPath::sweep`] merges the kernel's per-flow counters and last-seen
//!   times back (into the NAT entry and the FDB, through the caller), so an
//!   active flow never expires in the slow path's tables.
//!
//! Flows: IPv4 TCP and UDP, and ICMP echo (keyed by its identifier as the
//! NAT keys it).
//!
//! What the kernel programs do is in `bpf/fastpath.bpf.c`; this module holds
//! no `unsafe` (the maps are in [`crate::sys::bpf`]).

use crate::sys::bpf::{self, FP_PEER, FP_TTL, FpAction, FpKey, FpValue, Loaded};
use crate::wire::MacAddr;
use serde_json::{Value, json};
use std::collections::HashMap;

/// The programs, built by `build.rs` (empty when clang was missing).
pub static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fastpath.bpf.o"));

/// An entry without traffic for this long goes back to the slow path.
pub const IDLE_MS: u64 = 5_000;
/// An entry lives at most this long; its flow is then decided again.
pub const REVALIDATE_MS: u64 = 10_000;
/// How long a one-way candidate waits for its reply.
pub const PENDING_MS: u64 = 2_000;
/// Candidates waiting, in total.
pub const PENDING_MAX: usize = 4_096;
/// Candidates waiting per ingress port.
pub const PENDING_PER_PORT: usize = 1_024;
/// Installed entries per ingress port.
pub const PER_PORT_MAX: usize = 16_384;

const ICMP: u8 = 1;
const TCP: u8 = 6;
const UDP: u8 = 17;

/// A port the fast path can use: a veth (or other netdev) end in the
/// switch's namespace that the programs are attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortInfo {
    /// Its ifindex (in the switch's namespace).
    pub ifindex: u32,
    /// A veth: redirect into its peer's namespace directly.
    pub peer: bool,
    /// Its MTU (largest IP packet it takes).
    pub mtu: u16,
}

/// The header fields of a received frame, copied before the pipeline may
/// rewrite it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    len: usize,
    dmac: [u8; 6],
    smac: [u8; 6],
    tos: u8,
    id: u16,
    ttl: u8,
    proto: u8,
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
}

/// What a received frame means to the fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Nothing (not IPv4 TCP/UDP without options, or a fragment).
    None,
    /// A frame of a flow that could be offloaded.
    Candidate(Seen),
    /// A TCP SYN (`false`), FIN or RST (`true`): the flow (re)starts or
    /// ends; any entry goes, and after FIN/RST its frames are not offered
    /// again for [`ENDED_MS`].
    Ends(Seen, bool),
}

/// After FIN or RST, a flow's last frames (the closing ACKs) are not
/// offloaded for this long.
pub const ENDED_MS: u64 = 5_000;
/// Ended flows remembered at once (beyond: not remembered, so a closing
/// flow may be installed again, until idle). About 6,500 closes a second
/// over [`ENDED_MS`]; 2 MB.
pub const ENDED_MAX: usize = 65_536;

/// Read what the fast path needs from a frame as received.
pub fn observe(frame: &[u8]) -> Observed {
    let Some(s) = parse(frame) else {
        return Observed::None;
    };
    if s.0.proto == TCP && s.1 & 0x07 != 0 {
        return Observed::Ends(s.0, s.1 & 0x05 != 0);
    }
    Observed::Candidate(s.0)
}

/// Parse an untagged IPv4 TCP/UDP frame without options or fragmentation:
/// the fields and the TCP flags.
fn parse(f: &[u8]) -> Option<(Seen, u8)> {
    if f.len() < 14 + 20 + 8 || f[12..14] != [0x08, 0x00] || f[14] != 0x45 {
        return None;
    }
    let ip = &f[14..];
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return None;
    }
    let proto = ip[9];
    let flags = match proto {
        TCP if f.len() >= 14 + 20 + 14 => ip[20 + 13],
        UDP | ICMP => 0,
        _ => return None,
    };
    let word = |o: usize| u32::from_ne_bytes([ip[o], ip[o + 1], ip[o + 2], ip[o + 3]]);
    let half = |o: usize| u16::from_ne_bytes([ip[o], ip[o + 1]]);
    // ICMP echo: the identifier plays the port, as in the NAT (a request
    // is (id, 0), a reply (0, id)); other ICMP stays in the slow path.
    let (sport, dport) = match (proto, ip[20], ip[21]) {
        (ICMP, 8, 0) => (half(24), 0),
        (ICMP, 0, 0) => (0, half(24)),
        (ICMP, _, _) => return None,
        _ => (half(20), half(22)),
    };
    Some((
        Seen {
            len: f.len(),
            dmac: f[0..6].try_into().expect("6 bytes"),
            smac: f[6..12].try_into().expect("6 bytes"),
            tos: ip[1],
            id: half(4),
            ttl: ip[8],
            proto,
            saddr: word(12),
            daddr: word(16),
            sport,
            dport,
        },
        flags,
    ))
}

impl Seen {
    /// The fast path's key for this frame received on `ifindex`.
    pub fn key(&self, ifindex: u32) -> FpKey {
        FpKey {
            ifindex,
            saddr: self.saddr,
            daddr: self.daddr,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            pad: [0; 3],
        }
    }

    /// The NAT tuple of this frame (host byte order), as received.
    pub fn tuple(&self) -> nat::Tuple {
        nat::Tuple {
            proto: self.proto,
            src: u32::from_be(self.saddr).into(),
            dst: u32::from_be(self.daddr).into(),
            sport: u16::from_be(self.sport),
            dport: u16::from_be(self.dport),
        }
    }

    /// The source MAC as received.
    pub fn src_mac(&self) -> MacAddr {
        MacAddr(self.smac)
    }
}

/// An offloadable decision: a frame's key, the action that reproduces what
/// the pipeline did to it, and the key its replies will arrive with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    key: FpKey,
    act: FpAction,
    reply: FpKey,
    in_port: usize,
    out_port: usize,
    seen: Seen,
    routed: bool,
    translated: bool,
    vlan: u16,
}

impl Candidate {
    /// The frame's VLAN (0 on a VLAN-unaware switch): its FDB entries'.
    pub fn set_vlan(&mut self, vid: u16) {
        self.vlan = vid;
    }

    /// Whether the gateway routed the frame (its TTL went down).
    pub fn routed(&self) -> bool {
        self.routed
    }

    /// Offload only frames (or GSO segments) up to `mtu` bytes of IP packet.
    pub fn cap_mtu(&mut self, mtu: u32) {
        self.act.mtu = self.act.mtu.min(mtu.min(u32::from(u16::MAX)) as u16);
    }
}

/// The candidate for a frame received on `in_port` as `seen` and, after the
/// pipeline, about to leave on `out_port` as `after`; `None` when the
/// rewrite is not one the fast path reproduces.
pub fn derive(
    seen: &Seen,
    after: &[u8],
    in_port: (usize, PortInfo),
    out_port: (usize, PortInfo),
) -> Option<Candidate> {
    let (a, _) = parse(after)?;
    if a.len != seen.len || a.proto != seen.proto || a.id != seen.id || a.tos != seen.tos {
        return None;
    }
    // An echo request stays a request (the identifier in the same place).
    if a.proto == ICMP && (a.sport == 0) != (seen.sport == 0) {
        return None;
    }
    let routed = match seen.ttl.checked_sub(a.ttl)? {
        0 => false,
        1 => true,
        _ => return None,
    };
    let (ip, op) = (in_port.1, out_port.1);
    let mut flags = 0;
    if op.peer {
        flags |= FP_PEER;
    }
    if routed {
        flags |= FP_TTL;
    }
    let act = FpAction {
        out_ifindex: op.ifindex,
        saddr: a.saddr,
        daddr: a.daddr,
        sport: a.sport,
        dport: a.dport,
        dmac: a.dmac,
        smac: a.smac,
        match_dmac: seen.dmac,
        match_smac: seen.smac,
        mtu: op.mtu,
        port_in: u16::try_from(in_port.0).ok()?,
        port_out: u16::try_from(out_port.0).ok()?,
        flags,
        pad: [0; 9],
    };
    let reply = FpKey {
        ifindex: op.ifindex,
        saddr: a.daddr,
        daddr: a.saddr,
        sport: a.dport,
        dport: a.sport,
        proto: a.proto,
        pad: [0; 3],
    };
    if usize::from(act.port_in) >= bpf::MAX_PORTS || usize::from(act.port_out) >= bpf::MAX_PORTS {
        return None;
    }
    Some(Candidate {
        key: seen.key(ip.ifindex),
        act,
        reply,
        in_port: in_port.0,
        out_port: out_port.0,
        seen: *seen,
        routed,
        translated: (a.saddr, a.daddr, a.sport, a.dport)
            != (seen.saddr, seen.daddr, seen.sport, seen.dport),
        vlan: 0,
    })
}

/// An installed entry, as the switch remembers it.
#[derive(Debug, Clone, Copy)]
pub struct Flow {
    /// The other direction's key.
    pub pair: FpKey,
    /// Ingress port.
    pub in_port: usize,
    /// Egress port.
    pub out_port: usize,
    /// The frame's fields as received (its NAT tuple, its source MAC).
    pub seen: Seen,
    /// Routed by the gateway.
    pub routed: bool,
    /// Its addresses or ports are rewritten (NAT): its NAT entry follows
    /// the fast path's counters.
    pub translated: bool,
    /// Its VLAN (0 on a VLAN-unaware switch).
    pub vlan: u16,
    installed: u64,
    active: u64,
    packets: u64,
    bytes: u64,
}

/// Why entries left the fast path, and why flows never entered it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Flows installed (each direction counts).
    pub installed: u64,
    /// Removed after FIN or RST.
    pub removed_end: u64,
    /// Removed after [`IDLE_MS`] without traffic.
    pub removed_idle: u64,
    /// Removed after [`REVALIDATE_MS`] to be decided again.
    pub removed_revalidate: u64,
    /// Removed because their NAT entry was gone.
    pub removed_nat_gone: u64,
    /// Removed by reload, port down, or capture.
    pub removed_flush: u64,
    /// Not installed: the table or the port's share was full.
    pub full: u64,
    /// Not installed: the kernel refused the map update.
    pub install_errors: u64,
    /// Candidates dropped unanswered or for lack of room.
    pub pending_dropped: u64,
    /// Frames forwarded by the kernel (merged at each sweep).
    pub packets: u64,
    /// Bytes forwarded by the kernel.
    pub bytes: u64,
}

/// The fast path of one switch: the loaded programs and what is installed.
pub struct FastPath {
    bpf: Option<Loaded>,
    /// The switch's namespace (`None`: the process's own), where the ports' devices are.
    netns: Option<std::fs::File>,
    /// Ports attached once, and whether each is a veth (to attach again
    /// when its link comes back).
    attachable: Vec<Option<bool>>,
    /// Offers are taken (the programs are loaded; or a unit test).
    enabled: bool,
    status: String,
    ports: Vec<Option<PortInfo>>,
    flows: HashMap<FpKey, Flow>,
    pending: HashMap<FpKey, (Candidate, u64)>,
    pending_per_port: Vec<usize>,
    per_port: Vec<usize>,
    port_seen: Vec<bpf::FpPortCounters>,
    keys: Vec<FpKey>,
    /// Removed entries' last traffic (flow, packets, bytes, last-seen ns),
    /// reported at the next sweep.
    retired: Vec<(Flow, u64, u64, u64)>,
    /// Keys of flows that sent FIN or RST, and when.
    ended: HashMap<FpKey, u64>,
    /// The last candidate that went to wait: (its key, its reply key).
    last_waiting: Option<(FpKey, FpKey)>,
    /// Counters.
    pub counters: Counters,
}

impl FastPath {
    /// A fast path that is off, saying why (`"off"` in the topology, BPF
    /// unavailable...).
    pub fn off(why: impl Into<String>) -> FastPath {
        FastPath {
            bpf: None,
            netns: None,
            attachable: Vec::new(),
            enabled: false,
            status: why.into(),
            ports: Vec::new(),
            flows: HashMap::new(),
            pending: HashMap::new(),
            pending_per_port: Vec::new(),
            per_port: Vec::new(),
            port_seen: Vec::new(),
            keys: Vec::new(),
            retired: Vec::new(),
            ended: HashMap::new(),
            last_waiting: None,
            counters: Counters::default(),
        }
    }

    /// A loaded fast path with no port attached yet.
    pub fn on(bpf: Loaded, nports: usize) -> FastPath {
        let mut f = FastPath::off("on");
        f.bpf = Some(bpf);
        f.enabled = true;
        f.ports = vec![None; nports];
        f.attachable = vec![None; nports];
        f.pending_per_port = vec![0; nports];
        f.per_port = vec![0; nports];
        f.port_seen = vec![bpf::FpPortCounters::default(); nports];
        f
    }

    /// `"on"`, or why it is off.
    pub fn status(&self) -> String {
        if self.is_on() {
            "on".into()
        } else {
            format!("off: {}", self.status)
        }
    }

    /// Whether the programs are loaded.
    pub fn is_on(&self) -> bool {
        self.bpf.is_some()
    }

    /// The programs, to attach ports (`None` when off).
    pub fn loaded_mut(&mut self) -> Option<&mut Loaded> {
        self.bpf.as_mut()
    }

    /// The switch's namespace, where [`FastPath::attach_port`] finds devices.
    pub fn set_netns(&mut self, f: std::fs::File) {
        self.netns = Some(f);
    }

    /// Attach the programs to port `i`: the tc program to its device `name`
    /// (a veth when `peer`) in the switch's namespace, the socket filter to
    /// the switch's socket `sock` for it. On success the port's flows may be
    /// offloaded; on failure it stays in the slow path.
    pub fn attach_port(
        &mut self,
        i: usize,
        name: &str,
        peer: bool,
        sock: std::os::fd::BorrowedFd<'_>,
    ) -> Result<(), String> {
        if i >= self.ports.len() || i >= bpf::MAX_PORTS {
            return Err("beyond the fast path's port slots".into());
        }
        let ns = self.netns.as_ref();
        let Some(m) = self.bpf.as_mut() else {
            return Err("the fast path is off".into());
        };
        let info = netns_setup::netns::in_netns(ns, || -> Result<PortInfo, String> {
            let mut nl = netns_setup::netlink::Netlink::open().map_err(|e| e.to_string())?;
            let link = nl
                .link(name)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no link {name}"))?;
            m.attach_tc(name, link.index)?;
            Ok(PortInfo {
                ifindex: link.index,
                peer,
                mtu: link.mtu.min(u32::from(u16::MAX)) as u16,
            })
        })
        .map_err(|e| e.to_string())??;
        if let Err(e) = m.attach_socket(sock) {
            m.detach(info.ifindex);
            return Err(e);
        }
        self.ports[i] = Some(info);
        self.attachable[i] = Some(peer);
        Ok(())
    }

    /// Make room for `n` ports (a live change added some).
    pub fn ensure_ports(&mut self, n: usize) {
        if self.ports.len() < n {
            self.ports.resize(n, None);
            self.attachable.resize(n, None);
            self.per_port.resize(n, 0);
            self.pending_per_port.resize(n, 0);
            self.port_seen.resize(n, bpf::FpPortCounters::default());
        }
    }

    /// Port `i` went down: its entries go, and it takes no offers until
    /// [`FastPath::reattach`] (its device and socket are new then).
    pub fn port_down(&mut self, i: usize) {
        self.flush_port(i);
        if let Some(p) = self.ports.get_mut(i)
            && let Some(info) = p.take()
            && let Some(m) = self.bpf.as_mut()
        {
            m.detach(info.ifindex);
        }
    }

    /// Port `i` was re-opened on device `name` with socket `sock`: attach
    /// again if it was attached before. False if it stays in the slow path.
    pub fn reattach(&mut self, i: usize, name: &str, sock: std::os::fd::BorrowedFd<'_>) -> bool {
        let Some(peer) = self.attachable.get(i).copied().flatten() else {
            return false;
        };
        match self.attach_port(i, name, peer, sock) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("fast path: port {name} is back but stays in the slow path: {e}");
                false
            }
        }
    }

    /// Port `i`'s attachment.
    pub fn port(&self, i: usize) -> Option<PortInfo> {
        self.ports.get(i).copied().flatten()
    }

    /// Whether the flow of `seen`, received on `in_port`, is installed.
    pub fn offloaded(&self, in_port: usize, seen: &Seen) -> bool {
        self.port(in_port)
            .is_some_and(|p| self.flows.contains_key(&seen.key(p.ifindex)))
    }

    /// Installed entries.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// No entry installed.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Whether the frame `seen` on port `p` belongs to the candidate that
    /// went to wait last (then nothing is to be derived or offered: a
    /// one-way stream costs one lookup per frame).
    pub fn waiting(&self, p: PortInfo, seen: &Seen) -> bool {
        self.last_waiting
            .is_some_and(|(k, r)| k == seen.key(p.ifindex) && self.pending.contains_key(&r))
    }

    /// A candidate from the slow path at `now` (ms): install it with its
    /// waiting reply, or let it wait for one.
    pub fn offer(&mut self, c: Candidate, now: u64) {
        if !self.enabled || self.flows.contains_key(&c.key) {
            return;
        }
        let ended = |k: &FpKey| {
            self.ended
                .get(k)
                .is_some_and(|&t| now.saturating_sub(t) < ENDED_MS)
        };
        if ended(&c.key) || ended(&c.reply) {
            return;
        }
        if let Some((p, _)) = self.pending.remove(&c.key) {
            self.pending_per_port[p.in_port] -= 1;
            if p.key == c.reply {
                self.install(&c, &p, now);
                return;
            }
        }
        if self.pending.contains_key(&c.reply) {
            self.last_waiting = Some((c.key, c.reply));
            return;
        }
        if self.pending.len() >= PENDING_MAX {
            self.prune_pending(now);
        }
        if self.pending.len() >= PENDING_MAX || self.pending_per_port[c.in_port] >= PENDING_PER_PORT
        {
            self.counters.pending_dropped += 1;
            return;
        }
        self.pending_per_port[c.in_port] += 1;
        self.pending.insert(c.reply, (c, now));
        self.last_waiting = Some((c.key, c.reply));
    }

    fn prune_pending(&mut self, now: u64) {
        let before = self.pending.len();
        let per = &mut self.pending_per_port;
        self.pending.retain(|_, (c, t)| {
            let keep = now.saturating_sub(*t) < PENDING_MS;
            if !keep {
                per[c.in_port] -= 1;
            }
            keep
        });
        self.counters.pending_dropped += (before - self.pending.len()) as u64;
    }

    fn install(&mut self, a: &Candidate, b: &Candidate, now: u64) {
        if self.flows.contains_key(&a.key) || self.flows.contains_key(&b.key) {
            return; // one direction is installed with another pairing
        }
        let room = |f: &FastPath, c: &Candidate| f.per_port[c.in_port] < PER_PORT_MAX;
        if self.flows.len() + 2 > bpf::MAX_FLOWS || !room(self, a) || !room(self, b) {
            self.counters.full += 1;
            return;
        }
        for (c, other) in [(a, b), (b, a)] {
            let v = FpValue {
                act: c.act,
                ..FpValue::default()
            };
            if let Some(m) = self.bpf.as_mut()
                && let Err(e) = m.insert(&c.key, &v)
            {
                tracing::debug!("fast path: {e}");
                self.counters.install_errors += 1;
                // Undo the direction installed before this one, if any.
                if self.flows.remove(&other.key).is_some() {
                    m.remove(&other.key);
                }
                return;
            }
            self.flows.insert(
                c.key,
                Flow {
                    pair: other.key,
                    in_port: c.in_port,
                    out_port: c.out_port,
                    seen: c.seen,
                    routed: c.routed,
                    translated: c.translated,
                    vlan: c.vlan,
                    installed: now,
                    active: now,
                    packets: 0,
                    bytes: 0,
                },
            );
        }
        self.per_port[a.in_port] += 1;
        self.per_port[b.in_port] += 1;
        self.counters.installed += 2;
    }

    /// Remove the entry `k` and its other direction, keeping their last
    /// traffic for the next sweep.
    fn remove(&mut self, k: &FpKey) -> bool {
        let Some(f) = self.flows.remove(k) else {
            return false;
        };
        self.per_port[f.in_port] -= 1;
        let g = self.flows.remove(&f.pair);
        if let Some(g) = &g {
            self.per_port[g.in_port] -= 1;
        }
        if let Some(m) = self.bpf.as_mut() {
            for (key, fl) in [(*k, Some(f)), (f.pair, g)] {
                if let (Some(v), Some(fl)) = (m.get(&key), fl)
                    && v.packets > fl.packets
                {
                    self.retired.push((
                        fl,
                        v.packets - fl.packets,
                        v.bytes.saturating_sub(fl.bytes),
                        v.last_seen,
                    ));
                }
                m.remove(&key);
            }
        }
        true
    }

    /// A FIN or RST (`end`), or a SYN, of the flow `seen` arrived on
    /// `in_port` at `now`: its entries leave the fast path; after FIN or
    /// RST its closing frames are not offered again for [`ENDED_MS`] (they
    /// are refused in [`FastPath::offer`], whichever direction they take).
    pub fn ends(&mut self, in_port: usize, seen: &Seen, end: bool, now: u64) {
        let Some(p) = self.port(in_port) else {
            return;
        };
        let k = seen.key(p.ifindex);
        if self.remove(&k) {
            self.counters.removed_end += 2;
        }
        if !end {
            self.ended.remove(&k);
            return;
        }
        if self.ended.len() >= ENDED_MAX && !self.ended.contains_key(&k) {
            self.ended.retain(|_, t| now.saturating_sub(*t) < ENDED_MS);
        }
        if self.ended.len() < ENDED_MAX || self.ended.contains_key(&k) {
            self.ended.insert(k, now);
        }
    }

    /// Forget the last counts of removed entries (their NAT entries were
    /// deleted: they must not be credited to new ones with the same tuple).
    pub fn discard_retired(&mut self) {
        self.retired.clear();
    }

    /// Port `i` is gone for good (a live change removed it): a new port in
    /// its slot is attached on its own terms.
    pub fn port_removed(&mut self, i: usize) {
        if let Some(a) = self.attachable.get_mut(i) {
            *a = None;
        }
    }

    /// Remove every entry that enters or leaves by port `i` (port down,
    /// capture started), and its waiting candidates.
    pub fn flush_port(&mut self, i: usize) {
        let keys: Vec<FpKey> = self
            .flows
            .iter()
            .filter(|(_, f)| f.in_port == i || f.out_port == i)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            if self.remove(&k) {
                self.counters.removed_flush += 2;
            }
        }
        let per = &mut self.pending_per_port;
        self.pending.retain(|_, (c, _)| {
            let keep = c.in_port != i && c.out_port != i;
            if !keep {
                per[c.in_port] -= 1;
            }
            keep
        });
    }

    /// Remove every entry (reload).
    pub fn flush(&mut self) {
        let keys: Vec<FpKey> = self.flows.keys().copied().collect();
        for k in keys {
            if self.remove(&k) {
                self.counters.removed_flush += 2;
            }
        }
        self.pending.clear();
        self.pending_per_port.iter_mut().for_each(|n| *n = 0);
    }

    /// Port `i`'s fast-path counters since the last call (to add to its
    /// `stats`).
    pub fn port_delta(&mut self, i: usize) -> bpf::FpPortCounters {
        let (Some(m), Some(last)) = (self.bpf.as_ref(), self.port_seen.get_mut(i)) else {
            return bpf::FpPortCounters::default();
        };
        let now = m.port(i);
        let d = bpf::FpPortCounters {
            rx_packets: now.rx_packets.saturating_sub(last.rx_packets),
            rx_bytes: now.rx_bytes.saturating_sub(last.rx_bytes),
            tx_packets: now.tx_packets.saturating_sub(last.tx_packets),
            tx_bytes: now.tx_bytes.saturating_sub(last.tx_bytes),
        };
        *last = now;
        d
    }

    /// Between batches, about once a second, at `now` (ms; `mono_ns` is
    /// CLOCK_MONOTONIC now): read every entry's counters and last-seen time
    /// from the kernel; report the new traffic of each active entry to
    /// `touch(flow, packets, bytes, at_ms)`, which refreshes the slow
    /// path's tables and says whether the flow still exists there (asked
    /// for translated flows even without new traffic); remove entries that
    /// are idle, due for revalidation, or gone. Entries removed since the
    /// last sweep report their last traffic here too.
    pub fn sweep(
        &mut self,
        now: u64,
        mono_ns: u64,
        mut touch: impl FnMut(&Flow, u64, u64, u64) -> bool,
    ) {
        if !self.enabled {
            return;
        }
        self.prune_pending(now);
        self.ended.retain(|_, t| now.saturating_sub(*t) < ENDED_MS);
        for (f, dp, db, seen) in std::mem::take(&mut self.retired) {
            let at = now.saturating_sub(mono_ns.saturating_sub(seen) / 1_000_000);
            self.counters.packets += dp;
            self.counters.bytes += db;
            touch(&f, dp, db, at);
        }
        let mut keys = std::mem::take(&mut self.keys);
        keys.clear();
        keys.extend(self.flows.keys().copied());
        for k in &keys {
            let v = match self.bpf.as_ref() {
                Some(m) => match m.get(k) {
                    Some(v) => v,
                    None if self.flows.contains_key(k) => {
                        // Not in the kernel's map (cannot happen unless
                        // someone else deleted it): forget it here too.
                        self.counters.removed_flush += 2;
                        self.remove(k);
                        continue;
                    }
                    None => continue,
                },
                None => FpValue::default(), // a unit test: no traffic
            };
            let Some(f) = self.flows.get_mut(k) else {
                continue; // removed with its pair
            };
            let (dp, db) = (
                v.packets.saturating_sub(f.packets),
                v.bytes.saturating_sub(f.bytes),
            );
            if dp > 0 {
                f.packets = v.packets;
                f.bytes = v.bytes;
                let ago = mono_ns.saturating_sub(v.last_seen) / 1_000_000;
                f.active = f.active.max(now.saturating_sub(ago));
                self.counters.packets += dp;
                self.counters.bytes += db;
            }
            // A translated flow asks its NAT entry even when quiet: once that
            // expires, the mapping may go to another flow at once.
            let f = *f;
            let alive = if dp > 0 || f.translated {
                touch(&f, dp, db, f.active)
            } else {
                true
            };
            let f = self.flows[k];
            // Idle only when both directions are (a one-way stream keeps its pair).
            let active = self
                .flows
                .get(&f.pair)
                .map_or(f.active, |g| g.active.max(f.active));
            let why = if !alive {
                Some(&mut self.counters.removed_nat_gone)
            } else if now.saturating_sub(active) >= IDLE_MS {
                Some(&mut self.counters.removed_idle)
            } else if now.saturating_sub(f.installed) >= REVALIDATE_MS {
                Some(&mut self.counters.removed_revalidate)
            } else {
                None
            };
            if let Some(c) = why {
                *c += 2;
                self.remove(k);
            }
        }
        self.keys = keys;
    }

    /// The `fastpath` section of `vswitch stats --json`.
    pub fn json(&self) -> Value {
        let c = &self.counters;
        let kernel: serde_json::Map<String, Value> = match &self.bpf {
            Some(m) => bpf::STAT_NAMES
                .iter()
                .zip(m.stats())
                .map(|(k, v)| (k.to_string(), v.into()))
                .collect(),
            None => serde_json::Map::new(),
        };
        json!({
            "kernel": kernel,
            "state": self.status(),
            "flows": self.flows.len(),
            "pending": self.pending.len(),
            "packets": c.packets,
            "bytes": c.bytes,
            "installed": c.installed,
            "removed_end": c.removed_end,
            "removed_idle": c.removed_idle,
            "removed_revalidate": c.removed_revalidate,
            "removed_nat_gone": c.removed_nat_gone,
            "removed_flush": c.removed_flush,
            "full": c.full,
            "install_errors": c.install_errors,
            "pending_dropped": c.pending_dropped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP frame built by hand: red (10.0.0.1:40000, MAC 02::01) to blue
    /// (10.0.0.2:80, MAC 02::02), ACK only, TTL 64, no checksums (the
    /// fast path's bookkeeping never reads them).
    fn tcp(src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16, ttl: u8, flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&40u16.to_be_bytes());
        f[18..20].copy_from_slice(&7u16.to_be_bytes());
        f[22] = ttl;
        f[23] = 6;
        f[26..30].copy_from_slice(&src);
        f[30..34].copy_from_slice(&dst);
        f[34..36].copy_from_slice(&sp.to_be_bytes());
        f[36..38].copy_from_slice(&dp.to_be_bytes());
        f[46] = 0x50;
        f[47] = flags;
        f
    }

    fn port(ifindex: u32) -> PortInfo {
        PortInfo {
            ifindex,
            peer: true,
            mtu: 1500,
        }
    }

    /// The embedded programs load (the kernel's verifier accepts them).
    /// Needs root; under `CI=true` it must run.
    #[test]
    fn the_programs_pass_the_verifier() {
        if !nix::unistd::geteuid().is_root() {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "CI needs root");
            eprintln!("SKIP the_programs_pass_the_verifier: needs root");
            return;
        }
        if let Err(e) = Loaded::load(OBJECT) {
            panic!("{e}");
        }
    }

    #[test]
    fn syn_fin_rst_end_flows_and_fragments_are_ignored() {
        let a = tcp([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, 64, 0x10);
        assert!(matches!(observe(&a), Observed::Candidate(_)));
        for fl in [0x02, 0x11, 0x04] {
            let f = tcp([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, 64, fl);
            assert!(
                matches!(observe(&f), Observed::Ends(_, e) if e == (fl != 0x02)),
                "{fl:#x}"
            );
        }
        let mut frag = a.clone();
        frag[20] = 0x20; // MF
        assert_eq!(observe(&frag), Observed::None);
        let mut opts = a.clone();
        opts[14] = 0x46;
        assert_eq!(observe(&opts), Observed::None);
        assert_eq!(observe(&a[..40]), Observed::None);
    }

    #[test]
    fn icmp_echo_is_keyed_by_its_identifier_and_other_icmp_is_not_offloaded() {
        let icmp = |ty: u8| {
            let mut f = tcp([10, 0, 0, 1], [10, 0, 0, 2], 0, 0, 64, 0);
            f[23] = 1;
            f[34] = ty;
            f[35] = 0;
            f[38..40].copy_from_slice(&0x1234u16.to_be_bytes());
            f
        };
        let Observed::Candidate(req) = observe(&icmp(8)) else {
            panic!()
        };
        assert_eq!((u16::from_be(req.sport), req.dport), (0x1234, 0));
        let Observed::Candidate(rep) = observe(&icmp(0)) else {
            panic!()
        };
        assert_eq!((rep.sport, u16::from_be(rep.dport)), (0, 0x1234));
        assert_eq!(req.tuple().sport, 0x1234);
        // Errors and other types: slow path.
        assert_eq!(observe(&icmp(3)), Observed::None);
        assert_eq!(observe(&icmp(11)), Observed::None);
        // A request that would leave as a reply is not reproduced.
        assert!(derive(&req, &icmp(0), (0, port(11)), (1, port(12))).is_none());
        assert!(derive(&req, &icmp(8), (0, port(11)), (1, port(12))).is_some());
    }

    #[test]
    fn derive_reads_the_rewrite_off_the_frame() {
        let before = tcp([10, 0, 0, 1], [203, 0, 113, 9], 40000, 80, 64, 0x10);
        let Observed::Candidate(s) = observe(&before) else {
            panic!()
        };
        // What a MASQUERADE gateway makes of it: new MACs, source, port, TTL-1.
        let mut after = tcp([203, 0, 113, 1], [203, 0, 113, 9], 1024, 80, 63, 0x10);
        after[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        after[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 8]);
        let c = derive(&s, &after, (0, port(11)), (3, port(14))).expect("offloadable");
        assert_eq!(c.key.ifindex, 11);
        assert_eq!(c.act.out_ifindex, 14);
        assert_eq!(c.act.flags, FP_PEER | FP_TTL);
        assert_eq!(c.act.saddr.to_ne_bytes(), [203, 0, 113, 1]);
        assert_eq!(u16::from_be(c.act.sport), 1024);
        assert_eq!(c.act.dmac, [2, 0, 0, 0, 0, 9]);
        assert_eq!(c.act.match_smac, [2, 0, 0, 0, 0, 1]);
        assert_eq!(c.reply.ifindex, 14);
        assert_eq!(c.reply.daddr.to_ne_bytes(), [203, 0, 113, 1]);
        assert_eq!(u16::from_be(c.reply.dport), 1024);
        // A changed length or ID, or a TTL down by 2, is not reproduced.
        let mut id = after.clone();
        id[19] = 8;
        assert!(derive(&s, &id, (0, port(11)), (3, port(14))).is_none());
        let ttl = tcp([203, 0, 113, 1], [203, 0, 113, 9], 1024, 80, 62, 0x10);
        assert!(derive(&s, &ttl, (0, port(11)), (3, port(14))).is_none());
        assert!(derive(&s, &after[..50], (0, port(11)), (3, port(14))).is_none());
    }

    #[test]
    fn a_flow_waits_for_its_reply_and_both_directions_leave_together() {
        let mut fp = FastPath::off("test");
        fp.enabled = true; // the bookkeeping without kernel maps
        fp.ports = vec![Some(port(11)), Some(port(12))];
        fp.pending_per_port = vec![0; 2];
        fp.per_port = vec![0; 2];
        let cand = |src, dst, sp, dp, inp: usize| {
            let f = tcp(src, dst, sp, dp, 64, 0x10);
            let Observed::Candidate(s) = observe(&f) else {
                panic!()
            };
            let (i, o) = (inp, 1 - inp);
            (
                s,
                derive(&s, &f, (i, port(11 + i as u32)), (o, port(11 + o as u32))).unwrap(),
            )
        };
        let (s1, out) = cand([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, 0);
        fp.offer(out, 0);
        fp.offer(out, 1); // the same direction again: still waiting
        assert!(fp.is_empty() && fp.pending.len() == 1);
        // A reply of another flow does not complete it.
        let (_, other) = cand([10, 0, 0, 2], [10, 0, 0, 1], 2, 9, 1);
        fp.offer(other, 2);
        assert!(fp.is_empty());
        let (s2, back) = cand([10, 0, 0, 2], [10, 0, 0, 1], 2, 1, 1);
        fp.offer(back, 3);
        assert_eq!(fp.len(), 2);
        assert!(fp.offloaded(0, &s1) && fp.offloaded(1, &s2));
        assert_eq!(fp.per_port, vec![1, 1]);
        // A FIN of either direction removes both.
        fp.ends(1, &s2, true, 4);
        assert!(fp.is_empty() && fp.per_port == vec![0, 0]);
        assert_eq!(fp.counters.removed_end, 2);
        fp.flush(); // the other flow's candidate goes; the FIN's mark stays
        // The closing ACKs, either direction, are not installed again...
        fp.offer(out, 5);
        fp.offer(back, 6);
        assert!(fp.is_empty() && fp.pending.is_empty());
        // ...until ENDED_MS has passed, or a SYN restarts the flow.
        let t = 4 + ENDED_MS;
        fp.offer(out, t);
        assert_eq!(fp.pending.len(), 1);
        assert!(fp.waiting(port(11), &s1));
        // Unanswered candidates leave after PENDING_MS.
        fp.sweep(t + PENDING_MS, 0, |_, _, _, _| true);
        assert!(fp.pending.is_empty() && fp.pending_per_port == vec![0, 0]);
        assert!(!fp.waiting(port(11), &s1));
        fp.ends(1, &s2, true, 30_000);
        fp.offer(out, 30_001);
        assert!(fp.pending.is_empty());
        fp.ends(0, &s1, false, 30_002); // a SYN from the same side
        fp.ends(1, &s2, false, 30_002); // and the SYN+ACK
        fp.offer(out, 30_003);
        assert_eq!(fp.pending.len(), 1);
        fp.flush();
        // Installed entries without traffic leave after IDLE_MS.
        fp.offer(out, 40_000);
        fp.offer(back, 40_000);
        assert_eq!(fp.len(), 2);
        // An install never overwrites: the same pair again changes nothing.
        fp.offer(out, 40_001);
        fp.offer(back, 40_001);
        assert_eq!(fp.len(), 2);
        assert_eq!(fp.per_port, vec![1, 1]);
        fp.sweep(40_000 + IDLE_MS - 1, 0, |_, _, _, _| true);
        assert_eq!(fp.len(), 2);
        // One direction active keeps the pair (idle is pair-wise).
        fp.flows.get_mut(&out.key).unwrap().active = 40_000 + IDLE_MS - 1;
        fp.sweep(40_000 + IDLE_MS, 0, |_, _, _, _| true);
        assert_eq!(fp.len(), 2);
        fp.sweep(40_000 + 2 * IDLE_MS, 0, |_, _, _, _| true);
        assert!(fp.is_empty());
        assert_eq!(fp.counters.removed_idle, 2);
    }
}
