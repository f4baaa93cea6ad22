//! A VXLAN tunnel as a switch port: frames to it are encapsulated to remote
//! VTEPs, datagrams from them are decapsulated into the switch.
//!
//! Contract: the port speaks the same [`PortIo`] as the others. Received
//! datagrams are checked (VXLAN I flag, a VNI of ours, a VTEP it accepts:
//! `remotes` and those of static `fdb … dst` entries, or any with
//! `accept = "any"`); everything else is a counted drop. The source VTEP of
//! each received frame ([`PortIo::rx_vtep`]) lets the MAC table learn
//! `MAC → VTEP`. On send, a frame whose destination the table knows behind
//! this port goes to that VTEP alone; broadcast, multicast and unknown
//! unicast are replicated to every flood VTEP (head-end replication).
//! Super-frames are cut into segments that fit the tunnel's MTU, pending
//! checksums finished, and sent with `sendmmsg` on a raw socket
//! ([`crate::sys::Underlay`]); no underlay datagram exceeds the underlay MTU.

use crate::PortId;
use crate::fdb::Fdb;
use crate::port::{BATCH, Batch, PortIo, TxOutcome};
use crate::stats::DropReason;
use crate::sys::{GSO_MAX_SEGS, RxDatagram, UNDERLAY_MSGS, UNDERLAY_POOL, Underlay};
use crate::vxlan::{self, Df, OUTER_HLEN, SegError, Segment, VXLAN_HLEN};
use crate::wire::{MacAddr, VNET_HDR_LEN};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::BorrowedFd;

/// What a tunnel port is (from a `[[tunnel]]` of the topology).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelConfig {
    /// Port name.
    pub name: String,
    /// Our underlay address (the outer source).
    pub local: Ipv4Addr,
    /// UDP port, ours and the remotes' (4789).
    pub port: u16,
    /// VNI of untagged frames (VLAN-unaware switch, or an access tunnel).
    pub vni: u32,
    /// VLAN of the MAC table for `vni` (0 on a VLAN-unaware switch).
    pub pvid: u16,
    /// On a VLAN-aware switch: VLAN → VNI; the port is then a trunk of these VLANs.
    pub vlan_vni: Vec<(u16, u32)>,
    /// VTEPs that get broadcast, multicast and unknown unicast.
    pub remotes: Vec<Ipv4Addr>,
    /// Accept datagrams from any VTEP (else: `remotes` and static entries' VTEPs).
    pub accept_any: bool,
    /// Outer DF bit.
    pub df: Df,
    /// Overlay MTU: the largest inner IP packet.
    pub mtu: u32,
}

/// Counters of a tunnel port (beyond the port's own).
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct TunnelCounters {
    /// Datagrams received and accepted.
    pub rx_datagrams: u64,
    /// Datagrams sent.
    pub tx_datagrams: u64,
    /// Their bytes (UDP payload: VXLAN header + inner frame).
    pub tx_bytes: u64,
    /// Super-frames cut into segments here.
    pub segmented: u64,
    /// Copies sent for flooding (one per flood VTEP).
    pub replicated: u64,
    /// Received frames whose checksum or segmentation was left to the egress.
    pub rx_offloaded: u64,
    /// `UDP_SEGMENT` sends (each a super-frame's datagrams in one call).
    pub tx_gso_sends: u64,
    /// Coalesced receives (`UDP_GRO`) merged back into one super-frame.
    pub rx_coalesced: u64,
    /// Coalesced receives that were not one flow's segments: taken apart.
    pub rx_split: u64,
}

/// One segment's datagram: VXLAN header + inner headers, and its payload range.
#[derive(Clone, Copy)]
struct Head {
    bytes: [u8; VXLAN_HLEN + vxlan::MAX_SEG_HDR],
    len: usize,
    payload: (usize, usize),
}

/// Drops a tunnel port counts itself, by reason.
const REASONS: [DropReason; 7] = [
    DropReason::VxlanBadHeader,
    DropReason::VxlanUnknownVni,
    DropReason::VxlanUnknownVtep,
    DropReason::VxlanTooBig,
    DropReason::VxlanGso,
    DropReason::VxlanNoRemote,
    DropReason::Truncated,
];

/// One datagram waiting to be sent: outer headers (+ inner headers of a
/// segment, or the MACs of an untagged copy) and a range of a frame.
#[derive(Clone, Copy)]
struct Msg {
    dst: Ipv4Addr,
    head: [u8; OUTER_HLEN + vxlan::MAX_SEG_HDR],
    head_len: usize,
    frame: u16,
    payload: (usize, usize),
}

/// Where a datagram lands in a slot's receive area: its VXLAN header fills
/// the end of the vnet header's room, so the inner frame is where a frame belongs.
const OFF: usize = VNET_HDR_LEN - VXLAN_HLEN;

/// A VXLAN tunnel port.
pub struct VxlanPort {
    cfg: TunnelConfig,
    index: PortId,
    under: Underlay,
    meta: [RxDatagram; BATCH],
    rx_src: [Option<Ipv4Addr>; BATCH],
    accept: HashSet<Ipv4Addr>,
    flood: Vec<Ipv4Addr>,
    msgs: Vec<Msg>,
    segs: Vec<Segment>,
    heads: Vec<Head>,
    /// After the kernel refused a `UDP_SEGMENT` send: datagrams go one by
    /// one until this time (ms), then `UDP_SEGMENT` is tried again.
    gso_retry_at: u64,
    /// Datagrams of coalesced receives still to hand out: bytes, and runs of
    /// (start, end, datagram size, source VTEP).
    pending: Vec<u8>,
    runs: Vec<(usize, usize, usize, Ipv4Addr)>,
    ip_id: u16,
    drops: [u64; REASONS.len()],
    /// Counters.
    pub counters: TunnelCounters,
}

fn reason_slot(r: DropReason) -> usize {
    REASONS
        .iter()
        .position(|x| *x == r)
        .expect("a tunnel reason")
}

impl VxlanPort {
    /// Open the underlay sockets (in the calling thread's namespace) for
    /// port `index` of the switch.
    pub fn open(cfg: TunnelConfig, index: PortId) -> io::Result<VxlanPort> {
        let under = Underlay::open(cfg.local, cfg.port)?;
        Ok(VxlanPort {
            accept: cfg.remotes.iter().copied().collect(),
            flood: cfg.remotes.clone(),
            cfg,
            index,
            under,
            meta: [RxDatagram::default(); BATCH],
            rx_src: [None; BATCH],
            msgs: Vec::with_capacity(UNDERLAY_MSGS),
            segs: Vec::with_capacity(64),
            heads: Vec::with_capacity(64),
            gso_retry_at: 0,
            pending: Vec::with_capacity(1 << 16),
            runs: Vec::with_capacity(BATCH),
            ip_id: 0,
            drops: [0; REASONS.len()],
            counters: TunnelCounters::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TunnelConfig {
        &self.cfg
    }

    /// Accept datagrams from `vtep` (a static `fdb … dst` entry names it).
    pub fn allow(&mut self, vtep: Ipv4Addr) {
        self.accept.insert(vtep);
    }

    /// Add `vtep` to the VTEPs that get flooded frames (`fdb add
    /// 00:00:00:00:00:00 dst VTEP`, as for a Linux vxlan device); false if it was.
    pub fn add_flood(&mut self, vtep: Ipv4Addr) -> bool {
        self.accept.insert(vtep);
        if self.flood.contains(&vtep) {
            return false;
        }
        self.flood.push(vtep);
        true
    }

    /// Flood VTEPs added at run time (not configured `remotes`).
    pub fn flood_added(&self) -> Vec<Ipv4Addr> {
        self.flood
            .iter()
            .filter(|v| !self.cfg.remotes.contains(v))
            .copied()
            .collect()
    }

    /// Remove `vtep` from the flood list; false if it was not there. Its
    /// datagrams are refused from then on unless it is a configured remote
    /// or `in_use` (a static entry still names it).
    pub fn remove_flood(&mut self, vtep: Ipv4Addr, in_use: bool) -> bool {
        let n = self.flood.len();
        self.flood.retain(|v| *v != vtep);
        self.disallow(vtep, in_use);
        n != self.flood.len()
    }

    /// Stop accepting `vtep` unless it is a configured remote, a flood VTEP
    /// or `in_use` (named by a static entry).
    pub fn disallow(&mut self, vtep: Ipv4Addr, in_use: bool) {
        if !in_use && !self.cfg.remotes.contains(&vtep) && !self.flood.contains(&vtep) {
            self.accept.remove(&vtep);
        }
    }

    /// The `stats` view of this tunnel.
    pub fn json(&self) -> Value {
        json!({
            "name": self.cfg.name,
            "kind": "vxlan",
            "local": self.cfg.local.to_string(),
            "port": self.cfg.port,
            "vni": self.cfg.vni,
            "vlan_vni": self.cfg.vlan_vni,
            "mtu": self.cfg.mtu,
            "flood": self.flood.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "accept": if self.cfg.accept_any { "any" } else { "remotes" },
            "counters": self.counters,
        })
    }

    fn drop(&mut self, r: DropReason) {
        self.drops[reason_slot(r)] += 1;
    }

    /// The VLAN of a received VNI (`None`: not ours).
    fn vlan_of(&self, vni: u32) -> Option<Option<u16>> {
        if self.cfg.vlan_vni.is_empty() {
            return (vni == self.cfg.vni).then_some(None);
        }
        self.cfg
            .vlan_vni
            .iter()
            .find(|(_, n)| *n == vni)
            .map(|(v, _)| Some(*v))
    }

    /// The VNI and MAC-table VLAN of a frame to send (its tag on a trunk tunnel).
    fn vni_of(&self, frame: &[u8]) -> Option<(u32, u16, bool)> {
        if self.cfg.vlan_vni.is_empty() {
            return Some((self.cfg.vni, self.cfg.pvid, false));
        }
        let tagged = frame.len() >= 18 && frame[12..14] == [0x81, 0x00];
        let vid = if tagged {
            u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff
        } else {
            return None;
        };
        self.cfg
            .vlan_vni
            .iter()
            .find(|(v, _)| *v == vid)
            .map(|(_, n)| (*n, vid, true))
    }

    /// Queue one frame: its segments, to its VTEP or to every flood VTEP.
    fn queue(
        &mut self,
        batch: &Batch,
        k: usize,
        (fdb, now): (&Fdb, u64),
        o: &mut TxOutcome,
    ) -> Result<usize, DropReason> {
        let wire = batch.wire(k);
        let (vnet, frame) = wire.split_at(VNET_HDR_LEN);
        let Some((vni, vlan, tagged)) = self.vni_of(frame) else {
            return Err(DropReason::VlanEgress);
        };
        let dst = MacAddr(frame[..6].try_into().expect("a frame has MACs"));
        let known = if dst.is_multicast() {
            None
        } else {
            fdb.lookup_in(vlan, &dst, now)
                .filter(|p| *p == self.index)
                .and_then(|_| fdb.entry(vlan, &dst))
                .and_then(|e| e.vtep)
        };
        let targets = match known {
            Some(_) => 1,
            None => self.flood.len(),
        };
        if targets == 0 {
            return Err(DropReason::VxlanNoRemote);
        }
        // A tag that stays on the inner frame (a VLAN-unaware switch passing
        // tagged frames) takes 4 bytes of the overlay MTU.
        let keep_tag =
            !tagged && frame.len() >= 18 && matches!(frame[12..14], [0x81, 0] | [0x88, 0xa8]);
        let max_l3 = self.cfg.mtu as usize - if keep_tag { 4 } else { 0 };
        match vxlan::segment(vnet, frame, max_l3, &mut self.segs) {
            Ok(()) => {}
            Err(SegError::TooBig) => return Err(DropReason::VxlanTooBig),
            Err(_) => return Err(DropReason::VxlanGso),
        }
        // A trunk's tag comes off after the MACs: the headers must hold it.
        if tagged && self.segs.iter().any(|s| s.hdr_len > 0 && s.hdr_len < 16) {
            return Err(DropReason::VxlanGso);
        }
        let n = self.segs.len() * targets;
        let gso = self.segs.len() > 1 && now >= self.gso_retry_at;
        if !gso && n > UNDERLAY_MSGS {
            return Err(DropReason::VxlanGso);
        }
        if !gso && self.msgs.len() + n > UNDERLAY_MSGS {
            return Ok(0); // the caller flushes and asks again
        }
        if self.segs.len() > 1 {
            self.counters.segmented += 1;
        }
        // One pool socket (and its port) per flow: the outer source port.
        let pi = usize::from(vxlan::entropy(frame)) % UNDERLAY_POOL;
        let sport = self.under.pool_port(pi);
        let df = match self.cfg.df {
            Df::Unset => false,
            Df::Set => true,
            Df::Inherit => vxlan::inner_df(frame),
        };
        if known.is_none() {
            self.counters.replicated += targets as u64;
        }
        // Each segment's datagram: VXLAN header, then the segment's headers
        // or none (the frame as it is); a trunk's tag comes off either way.
        self.heads.clear();
        for s in &self.segs {
            let mut h = Head {
                bytes: [0; VXLAN_HLEN + vxlan::MAX_SEG_HDR],
                len: VXLAN_HLEN,
                payload: s.payload,
            };
            h.bytes[0] = 0x08;
            h.bytes[4..7].copy_from_slice(&vni.to_be_bytes()[1..]);
            let inner = &mut h.bytes[VXLAN_HLEN..];
            if s.hdr_len > 0 {
                inner[..s.hdr_len].copy_from_slice(&s.hdr[..s.hdr_len]);
                h.len += s.hdr_len;
                if tagged {
                    inner.copy_within(16..s.hdr_len, 12);
                    h.len -= 4;
                }
            } else if tagged {
                inner[..12].copy_from_slice(&frame[..12]);
                h.len += 12;
                h.payload = (16, frame.len());
            }
            self.heads.push(h);
        }
        // A super-frame: its datagrams in one UDP_SEGMENT send per VTEP
        // (the kernel, or the NIC, cuts them), after what is staged.
        if gso {
            if !self.msgs.is_empty() {
                let (s, r, b) = self.flush(batch);
                self.account(o, s, r, b);
            }
            let mut refused = false;
            let seg = self.heads[0].len + self.heads[0].payload.1 - self.heads[0].payload.0;
            let per = GSO_MAX_SEGS.min(65_000 / seg).max(1);
            'all: for t in 0..targets {
                let dst = known.unwrap_or_else(|| self.flood[t]);
                for c in (0..self.heads.len()).step_by(per) {
                    let hs = &self.heads[c..(c + per).min(self.heads.len())];
                    let r = self.under.send_gso(
                        pi,
                        (dst, self.cfg.port),
                        df,
                        seg as u16,
                        2 * hs.len(),
                        |p| {
                            let h = &hs[p / 2];
                            if p % 2 == 0 {
                                &h.bytes[..h.len]
                            } else {
                                &frame[h.payload.0..h.payload.1]
                            }
                        },
                    );
                    match r {
                        Ok(()) => {
                            self.counters.tx_gso_sends += 1;
                            self.counters.tx_datagrams += hs.len() as u64;
                            self.counters.tx_bytes += hs
                                .iter()
                                .map(|h| (h.len + h.payload.1 - h.payload.0) as u64)
                                .sum::<u64>();
                        }
                        Err(e)
                            if matches!(
                                e.raw_os_error(),
                                Some(libc::EINVAL)
                                    | Some(libc::EOPNOTSUPP)
                                    | Some(libc::EIO)
                                    | Some(libc::EMSGSIZE)
                            ) =>
                        {
                            // (A path MTU below the segment size, a kernel
                            // without UDP GSO.) This frame goes one by one,
                            // and so do the next ones for 10 s.
                            tracing::warn!(
                                "tunnel {}: the kernel refused a UDP_SEGMENT send ({e}): datagrams one by one for 10 s",
                                self.cfg.name
                            );
                            self.gso_retry_at = now + 10_000;
                            refused = true;
                            break 'all;
                        }
                        Err(_) => o.failed += 1,
                    }
                }
            }
            if !refused {
                return Ok(n);
            }
            if n > UNDERLAY_MSGS {
                return Err(DropReason::VxlanGso);
            }
        }
        for hi in 0..self.heads.len() {
            let h = self.heads[hi];
            let inner_len = h.len - VXLAN_HLEN + (h.payload.1 - h.payload.0);
            for t in 0..targets {
                let dst = known.unwrap_or_else(|| self.flood[t]);
                self.ip_id = self.ip_id.wrapping_add(1);
                let mut m = Msg {
                    dst,
                    head: [0; OUTER_HLEN + vxlan::MAX_SEG_HDR],
                    head_len: OUTER_HLEN + h.len - VXLAN_HLEN,
                    frame: k as u16,
                    payload: h.payload,
                };
                let mut outer = [0u8; OUTER_HLEN];
                let (src, port) = (self.cfg.local, self.cfg.port);
                vxlan::write_outer(
                    &mut outer, src, dst, sport, port, vni, df, self.ip_id, inner_len,
                );
                m.head[..OUTER_HLEN].copy_from_slice(&outer);
                m.head[OUTER_HLEN..m.head_len].copy_from_slice(&h.bytes[VXLAN_HLEN..h.len]);
                self.msgs.push(m);
            }
        }
        Ok(n)
    }

    /// Check the datagram (`len` bytes from [`OFF`] of `slot`'s area) from
    /// `src` and make it the slot's frame: its vnet header `pre`, or what
    /// [`vxlan::rx_vnet`] finds. False (a counted drop) when it is not ours.
    fn take(
        &mut self,
        batch: &mut Batch,
        slot: usize,
        len: usize,
        src: Ipv4Addr,
        pre: Option<[u8; VNET_HDR_LEN]>,
    ) -> bool {
        let vni = match vxlan::parse(&batch.rx_area(slot)[OFF..OFF + len]) {
            Ok(v) => v,
            Err(_) => {
                self.drop(DropReason::VxlanBadHeader);
                return false;
            }
        };
        let Some(vlan) = self.vlan_of(vni) else {
            self.drop(DropReason::VxlanUnknownVni);
            return false;
        };
        if !self.cfg.accept_any && !self.accept.contains(&src) {
            self.drop(DropReason::VxlanUnknownVtep);
            return false;
        }
        self.counters.rx_datagrams += 1;
        let end = VNET_HDR_LEN + len - VXLAN_HLEN;
        let area = batch.rx_area(slot);
        let v =
            pre.unwrap_or_else(|| vxlan::rx_vnet(&area[VNET_HDR_LEN..end], self.cfg.mtu as usize));
        if v[0] != 0 {
            self.counters.rx_offloaded += 1;
        }
        area[..VNET_HDR_LEN].copy_from_slice(&v);
        batch.set_filled(slot, end, false);
        if let Some(vid) = vlan
            && !batch.insert_vlan_tag(slot, 0x8100, vid)
        {
            self.drop(DropReason::Truncated);
            return false;
        }
        self.rx_src[slot] = Some(src);
        true
    }

    fn account(&mut self, o: &mut TxOutcome, sent: usize, refused: usize, bytes: u64) {
        self.counters.tx_datagrams += sent as u64;
        self.counters.tx_bytes += bytes;
        o.failed += refused;
    }

    /// Send the queued datagrams of `batch`; returns (sent, refused, bytes).
    fn flush(&mut self, batch: &Batch) -> (usize, usize, u64) {
        let msgs = &self.msgs;
        let (sent, refused) = self.under.send(msgs.len(), |i| {
            let m = &msgs[i];
            let f = batch.frame(m.frame as usize);
            (
                m.dst,
                [&m.head[..m.head_len], &f[m.payload.0..m.payload.1], &[]],
            )
        });
        let bytes = msgs
            .iter()
            .map(|m| (m.head_len - OUTER_HLEN + VXLAN_HLEN + m.payload.1 - m.payload.0) as u64)
            .sum();
        self.msgs.clear();
        (sent, refused, bytes)
    }
}

impl PortIo for VxlanPort {
    fn rx_batch(&mut self, batch: &mut Batch) -> io::Result<usize> {
        batch.clear();
        let mut kept = 0;
        // First what a coalesced receive left over (taken apart).
        while kept < BATCH && !self.runs.is_empty() {
            let (a, b, seg, src) = self.runs[0];
            let len = seg.min(b - a);
            batch.rx_area(kept)[OFF..OFF + len].copy_from_slice(&self.pending[a..a + len]);
            if a + len >= b {
                self.runs.remove(0);
            } else {
                self.runs[0].0 = a + len;
            }
            if self.take(batch, kept, len, src, None) {
                kept += 1;
            }
        }
        if self.runs.is_empty() {
            self.pending.clear();
        }
        if kept == BATCH {
            return Ok(kept);
        }
        let from = kept;
        let n = self.under.recv(batch, OFF, from, &mut self.meta)?;
        for j in 0..n {
            let m = self.meta[j];
            if m.truncated {
                self.drop(DropReason::Truncated);
                continue;
            }
            // Behind a coalesced receive taken apart, the rest of this batch
            // waits its turn too: a flow's datagrams keep their order.
            if !self.runs.is_empty() {
                let area = batch.rx_area(from + j);
                let a = self.pending.len();
                self.pending.extend_from_slice(&area[OFF..OFF + m.len]);
                let seg = if m.gro > 0 { m.gro } else { m.len };
                self.runs.push((a, self.pending.len(), seg, m.src));
                continue;
            }
            if kept != from + j {
                batch.move_rx(from + j, kept, OFF + m.len);
            }
            let (mut len, mut pre) = (m.len, None);
            if m.gro > 0 && m.len > m.gro {
                let area = batch.rx_area(kept);
                match vxlan::coalesce(&mut area[OFF..OFF + m.len], m.gro) {
                    Some((flen, v)) => {
                        self.counters.rx_coalesced += 1;
                        self.counters.rx_datagrams += (m.len.div_ceil(m.gro) - 1) as u64;
                        len = VXLAN_HLEN + flen;
                        pre = Some(v);
                    }
                    None => {
                        // Not one flow's segments: the first here, the rest
                        // from the next call on (the worker comes back: rx_pending).
                        self.counters.rx_split += 1;
                        let a = self.pending.len();
                        self.pending
                            .extend_from_slice(&area[OFF + m.gro..OFF + m.len]);
                        self.runs.push((a, self.pending.len(), m.gro, m.src));
                        len = m.gro;
                    }
                }
            }
            if self.take(batch, kept, len, m.src, pre) {
                kept += 1;
            }
        }
        // Slots past `kept` may hold refused datagrams: not frames of this batch.
        batch.truncate(kept);
        Ok(kept)
    }

    fn rx_pending(&self) -> bool {
        !self.runs.is_empty()
    }

    fn tx_batch(&mut self, batch: &Batch, idx: &[u16]) -> io::Result<TxOutcome> {
        // Without the MAC table every frame is flooded.
        let fdb = Fdb::new(self.index + 1, 1, 1, 1);
        self.tx_batch_via(batch, idx, &fdb, 0)
    }

    fn tx_batch_via(
        &mut self,
        batch: &Batch,
        idx: &[u16],
        fdb: &Fdb,
        now: u64,
    ) -> io::Result<TxOutcome> {
        let mut o = TxOutcome::default();
        let mut i = 0;
        while i < idx.len() {
            match self.queue(batch, idx[i] as usize, (fdb, now), &mut o) {
                Ok(0) if !self.msgs.is_empty() => {
                    let (s, r, b) = self.flush(batch);
                    self.account(&mut o, s, r, b);
                    continue; // the same frame again, with room
                }
                Ok(_) => {
                    o.sent += 1;
                    o.bytes += batch.frame(idx[i] as usize).len() as u64;
                }
                Err(r) => self.drop(r),
            }
            i += 1;
        }
        if !self.msgs.is_empty() {
            let (s, r, b) = self.flush(batch);
            self.account(&mut o, s, r, b);
        }
        Ok(o)
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.under.fd()
    }

    fn rx_vtep(&self, i: usize) -> Option<Ipv4Addr> {
        self.rx_src.get(i).copied().flatten()
    }

    fn take_drops(&mut self, add: &mut dyn FnMut(DropReason, u64)) {
        for (j, r) in REASONS.iter().enumerate() {
            if self.drops[j] > 0 {
                add(*r, self.drops[j]);
                self.drops[j] = 0;
            }
        }
    }

    fn tunnel(&mut self) -> Option<&mut VxlanPort> {
        Some(self)
    }

    fn tunnel_ref(&self) -> Option<&VxlanPort> {
        Some(self)
    }
}
