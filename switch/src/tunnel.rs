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
use crate::sys::{RxDatagram, UNDERLAY_MSGS, Underlay};
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

    /// Remove `vtep` from the flood list; false if it was not there.
    pub fn remove_flood(&mut self, vtep: Ipv4Addr) -> bool {
        let n = self.flood.len();
        self.flood.retain(|v| *v != vtep);
        n != self.flood.len()
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
    fn queue(&mut self, batch: &Batch, k: usize, fdb: &Fdb, now: u64) -> Result<usize, DropReason> {
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
        match vxlan::segment(vnet, frame, self.cfg.mtu as usize, &mut self.segs) {
            Ok(()) => {}
            Err(SegError::TooBig) => return Err(DropReason::VxlanTooBig),
            Err(_) => return Err(DropReason::VxlanGso),
        }
        if self.segs.len() > 1 {
            self.counters.segmented += 1;
        }
        let n = self.segs.len() * targets;
        if n > UNDERLAY_MSGS {
            return Err(DropReason::VxlanGso);
        }
        if self.msgs.len() + n > UNDERLAY_MSGS {
            return Ok(0); // the caller flushes and asks again
        }
        let sport = vxlan::entropy(frame);
        let df = match self.cfg.df {
            Df::Unset => false,
            Df::Set => true,
            Df::Inherit => vxlan::inner_df(frame),
        };
        if known.is_none() {
            self.counters.replicated += targets as u64;
        }
        for si in 0..self.segs.len() {
            let s = &self.segs[si];
            // The inner headers of the datagram: the segment's, or none
            // (the frame as it is); a trunk's tag comes off either way.
            let mut inner = [0u8; vxlan::MAX_SEG_HDR];
            let (mut ilen, mut pay) = (0, s.payload);
            if s.hdr_len > 0 {
                inner[..s.hdr_len].copy_from_slice(&s.hdr[..s.hdr_len]);
                ilen = s.hdr_len;
            } else if tagged {
                inner[..12].copy_from_slice(&frame[..12]);
                ilen = 12;
                pay = (16, frame.len());
            }
            if tagged && s.hdr_len > 0 {
                inner.copy_within(16..ilen, 12);
                ilen -= 4;
            }
            let inner_len = ilen + (pay.1 - pay.0);
            let (src, port) = (self.cfg.local, self.cfg.port);
            let each = |dst: Ipv4Addr, msgs: &mut Vec<Msg>, id: u16| {
                let mut m = Msg {
                    dst,
                    head: [0; OUTER_HLEN + vxlan::MAX_SEG_HDR],
                    head_len: OUTER_HLEN + ilen,
                    frame: k as u16,
                    payload: pay,
                };
                let mut outer = [0u8; OUTER_HLEN];
                vxlan::write_outer(&mut outer, src, dst, sport, port, vni, df, id, inner_len);
                m.head[..OUTER_HLEN].copy_from_slice(&outer);
                m.head[OUTER_HLEN..OUTER_HLEN + ilen].copy_from_slice(&inner[..ilen]);
                msgs.push(m);
            };
            match known {
                Some(v) => {
                    self.ip_id = self.ip_id.wrapping_add(1);
                    each(v, &mut self.msgs, self.ip_id)
                }
                None => {
                    for j in 0..self.flood.len() {
                        self.ip_id = self.ip_id.wrapping_add(1);
                        each(self.flood[j], &mut self.msgs, self.ip_id);
                    }
                }
            }
        }
        Ok(n)
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
        // The datagram lands so that its VXLAN header fills the end of the
        // vnet header's room: the inner frame is then where a frame belongs.
        const OFF: usize = VNET_HDR_LEN - VXLAN_HLEN;
        let n = self.under.recv(batch, OFF, &mut self.meta)?;
        let mut kept = 0;
        for i in 0..n {
            let m = self.meta[i];
            if m.truncated {
                self.drop(DropReason::Truncated);
                continue;
            }
            let vni = {
                let area = batch.rx_area(i);
                match vxlan::parse(&area[OFF..OFF + m.len]) {
                    Ok(v) => v,
                    Err(_) => {
                        self.drop(DropReason::VxlanBadHeader);
                        continue;
                    }
                }
            };
            let Some(vlan) = self.vlan_of(vni) else {
                self.drop(DropReason::VxlanUnknownVni);
                continue;
            };
            if !self.cfg.accept_any && !self.accept.contains(&m.src) {
                self.drop(DropReason::VxlanUnknownVtep);
                continue;
            }
            self.counters.rx_datagrams += 1;
            let len = VNET_HDR_LEN + m.len - VXLAN_HLEN;
            if kept != i {
                batch.move_rx(i, kept, len);
            }
            let area = batch.rx_area(kept);
            let v = vxlan::rx_vnet(&area[VNET_HDR_LEN..len], self.cfg.mtu as usize);
            if v[0] != 0 {
                self.counters.rx_offloaded += 1;
            }
            area[..VNET_HDR_LEN].copy_from_slice(&v);
            batch.set_filled(kept, len, false);
            if let Some(vid) = vlan
                && !batch.insert_vlan_tag(kept, 0x8100, vid)
            {
                self.drop(DropReason::Truncated);
                continue;
            }
            self.rx_src[kept] = Some(m.src);
            kept += 1;
        }
        // Slots past `kept` may hold refused datagrams: not frames of this batch.
        batch.truncate(kept);
        Ok(kept)
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
            match self.queue(batch, idx[i] as usize, fdb, now) {
                Ok(0) if !self.msgs.is_empty() => {
                    let (s, r, b) = self.flush(batch);
                    self.account(&mut o, s, r, b);
                    continue; // the same frame again, with room
                }
                Ok(_) => o.sent += 1,
                Err(r) => self.drop(r),
            }
            o.bytes += batch.frame(idx[i] as usize).len() as u64;
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
