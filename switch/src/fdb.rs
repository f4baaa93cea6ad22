//! The MAC learning table (forwarding database).
//!
//! Contract: bounded in total and per port; time is passed in (`now`, ms on
//! any monotonic clock), so ageing is deterministic in tests. An entry older
//! than the ageing time is treated as absent by [`Fdb::lookup`] and removed by
//! [`Fdb::sweep`]. When the table or the port is full, new sources are not
//! learned ([`Learn::RefusedTableFull`], [`Learn::RefusedPortFull`]); the caller still floods their frames.
//! Static entries ([`Fdb::add_static`], `vswitch fdb add`) never age, are
//! never moved by learning ([`Learn::Static`]) and are removed only by
//! [`Fdb::remove`]; they count towards the bounds of the table.
//! Behind a VXLAN tunnel port an entry also names the remote VTEP
//! ([`FdbEntry::vtep`]); each VTEP is bounded like a port (a remote host
//! flooding MACs cannot take the table from the others), and a MAC that
//! moves from one VTEP to another is a move.

use crate::PortId;
use crate::wire::MacAddr;
use std::collections::HashMap;
use std::net::Ipv4Addr;

/// Outcome of [`Fdb::learn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learn {
    /// A new entry.
    New,
    /// An existing entry on the same port, refreshed.
    Refreshed,
    /// The station moved from another port.
    Moved {
        /// The port it was on.
        from: PortId,
    },
    /// Not learned: the table is full.
    RefusedTableFull,
    /// Not learned: this port has reached its own bound.
    RefusedPortFull,
    /// Not learned: the MAC has a static entry (on this port or another).
    Static,
}

/// One learned MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbEntry {
    /// Port the MAC was last seen on.
    pub port: PortId,
    /// VLAN it was learned in (0 when the switch is VLAN-unaware).
    pub vlan: u16,
    /// When it was last seen (ms); for a static entry, when it was added.
    pub last_seen: u64,
    /// Added by the operator: never aged, never moved by learning.
    pub is_static: bool,
    /// Behind a tunnel port: the VTEP the MAC is behind.
    pub vtep: Option<Ipv4Addr>,
}

/// Counters of the table.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct FdbCounters {
    /// New entries learned.
    pub learned: u64,
    /// Station moves.
    pub moves: u64,
    /// Entries removed by ageing.
    pub aged: u64,
    /// Sources not learned because the table was full.
    pub refused_table_full: u64,
    /// Sources not learned because their port was at its bound.
    pub refused_port_full: u64,
    /// Frames whose source MAC has a static entry on another port (not moved).
    pub static_moves_refused: u64,
}

/// A learned binding told to the other workers: VLAN, MAC, port.
pub type Learned = (u16, MacAddr, PortId);

/// The MAC table.
#[derive(Clone)]
pub struct Fdb {
    /// With several workers: bindings this table learned or moved, and
    /// refreshes at most once per quarter of the ageing time per entry, for
    /// the worker to pass on (see [`Fdb::share`]).
    outbox: Option<Vec<Learned>>,
    map: HashMap<(u16, MacAddr), FdbEntry, foldhash::fast::RandomState>,
    default_vlan: u16,
    per_port: Vec<usize>,
    /// Entries behind each remote VTEP (bounded by `max_per_port` too).
    per_vtep: HashMap<Ipv4Addr, usize>,
    max: usize,
    max_per_port: usize,
    ageing_ms: u64,
    last_sweep: u64,
    /// Counters.
    pub counters: FdbCounters,
    /// The latest station move: MAC, from port, to port (for the log's summary).
    pub last_move: Option<(MacAddr, PortId, PortId)>,
}

impl Fdb {
    /// The entry of `mac` in `vlan` (0: the default VLAN), aged or not.
    pub fn entry(&self, vlan: u16, mac: &MacAddr) -> Option<FdbEntry> {
        let v = if vlan == 0 { self.default_vlan } else { vlan };
        self.map.get(&(v, *mac)).copied()
    }

    /// A table for `ports` ports with the given bounds and ageing time.
    pub fn new(ports: usize, max: usize, max_per_port: usize, ageing_ms: u64) -> Fdb {
        Fdb {
            outbox: None,
            map: HashMap::with_capacity_and_hasher(max.min(1 << 16), Default::default()),
            per_port: vec![0; ports],
            per_vtep: HashMap::new(),
            default_vlan: 0,
            max,
            max_per_port,
            ageing_ms,
            last_sweep: 0,
            counters: FdbCounters::default(),
            last_move: None,
        }
    }

    fn expired(&self, e: &FdbEntry, now: u64) -> bool {
        !e.is_static && now.saturating_sub(e.last_seen) >= self.ageing_ms
    }

    /// The VLAN `learn`/`lookup` use (0: VLAN-unaware; VLAN-aware switches route in VLAN 1).
    pub fn set_default_vlan(&mut self, vlan: u16) {
        self.default_vlan = vlan;
    }

    /// Learn that `mac` was seen on `port` at `now`, in the default VLAN.
    pub fn learn(&mut self, mac: MacAddr, port: PortId, now: u64) -> Learn {
        self.learn_in(self.default_vlan, mac, port, now)
    }

    /// The port `mac` is behind in the default VLAN.
    pub fn lookup(&self, mac: &MacAddr, now: u64) -> Option<PortId> {
        self.lookup_in(self.default_vlan, mac, now)
    }

    /// `mac` in `vlan` was active on `port` at `at` (reported later, by the
    /// kernel fast path): refresh its entry if it is still on that port,
    /// never backwards; never create or move one (a newer move wins).
    pub fn refresh(&mut self, vlan: u16, mac: MacAddr, port: PortId, at: u64) {
        if let Some(e) = self.map.get_mut(&(vlan, mac))
            && e.port == port
            && !e.is_static
        {
            e.last_seen = e.last_seen.max(at);
        }
    }

    /// Learn that `mac` was seen on `port` in `vlan` at `now`.
    pub fn learn_in(&mut self, vlan: u16, mac: MacAddr, port: PortId, now: u64) -> Learn {
        self.learn_via(vlan, mac, port, None, now)
    }

    fn vtep_full(&self, vtep: Option<Ipv4Addr>) -> bool {
        vtep.is_some_and(|v| self.per_vtep.get(&v).copied().unwrap_or(0) >= self.max_per_port)
    }

    fn vtep_add(&mut self, vtep: Option<Ipv4Addr>) {
        if let Some(v) = vtep {
            *self.per_vtep.entry(v).or_insert(0) += 1;
        }
    }

    fn vtep_sub(per_vtep: &mut HashMap<Ipv4Addr, usize>, vtep: Option<Ipv4Addr>) {
        if let Some(v) = vtep
            && let Some(n) = per_vtep.get_mut(&v)
        {
            *n -= 1;
            if *n == 0 {
                per_vtep.remove(&v);
            }
        }
    }

    /// Learn that `mac` was seen on `port` in `vlan` at `now`, behind the
    /// remote VTEP `vtep` when the port is a tunnel. Another VTEP on the same
    /// port is a move; each VTEP is bounded like a port.
    pub fn learn_via(
        &mut self,
        vlan: u16,
        mac: MacAddr,
        port: PortId,
        vtep: Option<Ipv4Addr>,
        now: u64,
    ) -> Learn {
        let vtep_full = self.vtep_full(vtep);
        if let Some(e) = self.map.get_mut(&(vlan, mac)) {
            if e.is_static {
                if e.port != port || e.vtep != vtep {
                    self.counters.static_moves_refused += 1;
                }
                return Learn::Static;
            }
            if e.port == port && e.vtep != vtep {
                if vtep_full {
                    self.counters.refused_port_full += 1;
                    return Learn::RefusedPortFull;
                }
                let old = e.vtep;
                e.vtep = vtep;
                e.last_seen = now;
                Self::vtep_sub(&mut self.per_vtep, old);
                self.vtep_add(vtep);
                self.counters.moves += 1;
                self.last_move = Some((mac, port, port));
                return Learn::Moved { from: port };
            }
            if e.port == port {
                let q = (self.ageing_ms / 4).max(1);
                let told = e.last_seen / q == now / q;
                e.last_seen = now;
                if !told && let Some(o) = self.outbox.as_mut() {
                    o.push((vlan, mac, port));
                }
                return Learn::Refreshed;
            }
            let from = e.port;
            if (vtep.is_none() && self.per_port[port] >= self.max_per_port) || vtep_full {
                self.counters.refused_port_full += 1;
                return Learn::RefusedPortFull;
            }
            let old = e.vtep;
            e.port = port;
            e.vtep = vtep;
            e.last_seen = now;
            Self::vtep_sub(&mut self.per_vtep, old);
            self.vtep_add(vtep);
            self.per_port[from] -= 1;
            self.per_port[port] += 1;
            self.counters.moves += 1;
            self.last_move = Some((mac, from, port));
            if let Some(o) = self.outbox.as_mut() {
                o.push((vlan, mac, port));
            }
            return Learn::Moved { from };
        }
        if self.map.len() >= self.max {
            // Reclaim aged entries, at most once a second so a flood of new
            // sources cannot make every frame pay for a scan.
            if now.saturating_sub(self.last_sweep) >= 1000 {
                self.sweep(now);
            }
            if self.map.len() >= self.max {
                self.counters.refused_table_full += 1;
                return Learn::RefusedTableFull;
            }
        }
        // Behind a tunnel the source is the VTEP: bounded per VTEP, not per port.
        if (vtep.is_none() && self.per_port[port] >= self.max_per_port) || vtep_full {
            self.counters.refused_port_full += 1;
            return Learn::RefusedPortFull;
        }
        self.map.insert(
            (vlan, mac),
            FdbEntry {
                port,
                vlan,
                last_seen: now,
                is_static: false,
                vtep,
            },
        );
        self.vtep_add(vtep);
        self.per_port[port] += 1;
        self.counters.learned += 1;
        if let Some(o) = self.outbox.as_mut() {
            o.push((vlan, mac, port));
        }
        Learn::New
    }

    /// Keep what this table learns for other tables ([`Fdb::take_learned`]):
    /// new entries, moves, and a refresh when an entry's last-seen time
    /// enters a new quarter of the ageing time, so that copies stay fresh
    /// while any worker sees the station.
    pub fn share(&mut self) {
        self.outbox.get_or_insert_with(Vec::new);
    }

    /// What was learned since the last call (empty unless [`Fdb::share`]).
    pub fn take_learned(&mut self, into: &mut Vec<Learned>) {
        if let Some(o) = self.outbox.as_mut() {
            into.append(o);
        }
    }

    /// Learn a binding another worker's table learned, with the same
    /// bounds, without passing it on again.
    pub fn learn_shared(&mut self, (vlan, mac, port): Learned, now: u64) -> Learn {
        if port >= self.per_port.len() {
            return Learn::RefusedPortFull;
        }
        let o = self.outbox.take();
        let r = self.learn_in(vlan, mac, port, now);
        self.outbox = o;
        r
    }

    /// The port `mac` is behind in `vlan`, if learned and not aged out.
    pub fn lookup_in(&self, vlan: u16, mac: &MacAddr, now: u64) -> Option<PortId> {
        self.map
            .get(&(vlan, *mac))
            .filter(|e| !self.expired(e, now))
            .map(|e| e.port)
    }

    /// Remove aged entries; returns how many.
    pub fn sweep(&mut self, now: u64) -> usize {
        self.last_sweep = now;
        let ageing = self.ageing_ms;
        let (per_port, per_vtep) = (&mut self.per_port, &mut self.per_vtep);
        let before = self.map.len();
        self.map.retain(|_, e| {
            let keep = e.is_static || now.saturating_sub(e.last_seen) < ageing;
            if !keep {
                per_port[e.port] -= 1;
                Self::vtep_sub(per_vtep, e.vtep);
            }
            keep
        });
        let n = before - self.map.len();
        self.counters.aged += n as u64;
        n
    }

    /// Make room for ports `0..n` (ports added at run time).
    pub fn ensure_ports(&mut self, n: usize) {
        if self.per_port.len() < n {
            self.per_port.resize(n, 0);
        }
    }

    /// Forget everything learned on `port` (it went away), static entries included.
    pub fn flush_port(&mut self, port: PortId) {
        let per_vtep = &mut self.per_vtep;
        self.map.retain(|_, e| {
            if e.port == port {
                Self::vtep_sub(per_vtep, e.vtep);
            }
            e.port != port
        });
        self.per_port[port] = 0;
    }

    /// Add (or replace) a static entry: `mac` in `vlan` is behind `port`
    /// (`vswitch fdb add`). It replaces a learned entry of the same MAC and
    /// VLAN; a new one needs room in the table (else `Err`), not on the port.
    pub fn add_static(
        &mut self,
        vlan: u16,
        mac: MacAddr,
        port: PortId,
        now: u64,
    ) -> Result<(), &'static str> {
        self.add_static_via(vlan, mac, port, None, now)
    }

    /// [`Fdb::add_static`] behind the remote VTEP `vtep` of tunnel port
    /// `port` (`vswitch fdb add MAC dst VTEP`).
    pub fn add_static_via(
        &mut self,
        vlan: u16,
        mac: MacAddr,
        port: PortId,
        vtep: Option<Ipv4Addr>,
        now: u64,
    ) -> Result<(), &'static str> {
        if port >= self.per_port.len() {
            return Err("no such port");
        }
        let e = FdbEntry {
            port,
            vlan,
            last_seen: now,
            is_static: true,
            vtep,
        };
        match self.map.insert((vlan, mac), e) {
            Some(old) => {
                self.per_port[old.port] -= 1;
                Self::vtep_sub(&mut self.per_vtep, old.vtep);
            }
            None if self.map.len() > self.max => {
                self.map.remove(&(vlan, mac));
                return Err("the MAC table is full");
            }
            None => {}
        }
        self.per_port[port] += 1;
        self.vtep_add(vtep);
        Ok(())
    }

    /// Remove the entry of `mac` in `vlan`, static or learned (`vswitch fdb
    /// del`); returns it.
    pub fn remove(&mut self, vlan: u16, mac: MacAddr) -> Option<FdbEntry> {
        let e = self.map.remove(&(vlan, mac))?;
        self.per_port[e.port] -= 1;
        Self::vtep_sub(&mut self.per_vtep, e.vtep);
        Some(e)
    }

    /// Remove the learned (not static) entries, of `port` only if given
    /// (`vswitch fdb flush`); returns how many.
    pub fn flush_learned(&mut self, port: Option<PortId>) -> usize {
        let (per_port, per_vtep) = (&mut self.per_port, &mut self.per_vtep);
        let before = self.map.len();
        self.map.retain(|_, e| {
            let keep = e.is_static || port.is_some_and(|p| p != e.port);
            if !keep {
                per_port[e.port] -= 1;
                Self::vtep_sub(per_vtep, e.vtep);
            }
            keep
        });
        before - self.map.len()
    }

    /// The VLAN of [`Fdb::learn`] and [`Fdb::lookup`] (0 on a VLAN-unaware switch).
    pub fn default_vlan(&self) -> u16 {
        self.default_vlan
    }

    /// Number of entries (aged ones not yet swept included).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Entries learned on `port`.
    pub fn port_len(&self, port: PortId) -> usize {
        self.per_port[port]
    }

    /// Live entries, sorted by port then MAC.
    pub fn entries(&self, now: u64) -> Vec<(MacAddr, FdbEntry)> {
        let mut v: Vec<_> = self
            .map
            .iter()
            .filter(|(_, e)| !self.expired(e, now))
            .map(|((_, m), e)| (*m, *e))
            .collect();
        v.sort_by_key(|(m, e)| (e.port, e.vlan, *m));
        v
    }

    /// The ageing time in ms.
    pub fn ageing_ms(&self) -> u64 {
        self.ageing_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, n])
    }

    #[test]
    fn learn_lookup_refresh_move() {
        let mut f = Fdb::new(3, 10, 10, 300_000);
        assert_eq!(f.learn(mac(1), 0, 0), Learn::New);
        assert_eq!(f.lookup(&mac(1), 1), Some(0));
        assert_eq!(f.learn(mac(1), 0, 5), Learn::Refreshed);
        assert_eq!(f.learn(mac(1), 2, 6), Learn::Moved { from: 0 });
        assert_eq!(f.lookup(&mac(1), 7), Some(2));
        assert_eq!((f.port_len(0), f.port_len(2)), (0, 1));
    }

    #[test]
    fn ageing_is_deterministic() {
        let mut f = Fdb::new(1, 10, 10, 300_000);
        f.learn(mac(1), 0, 1_000);
        assert_eq!(f.lookup(&mac(1), 300_999), Some(0));
        assert_eq!(f.lookup(&mac(1), 301_000), None);
        assert_eq!(f.sweep(301_000), 1);
        assert!(f.is_empty());
        assert_eq!(f.port_len(0), 0);
    }

    #[test]
    fn bounds_in_total_and_per_port() {
        let mut f = Fdb::new(2, 4, 3, 300_000);
        for n in 0..3 {
            assert_eq!(f.learn(mac(n), 0, 0), Learn::New);
        }
        assert_eq!(f.learn(mac(3), 0, 0), Learn::RefusedPortFull);
        assert_eq!(f.learn(mac(4), 1, 0), Learn::New);
        assert_eq!(f.learn(mac(5), 1, 0), Learn::RefusedTableFull);
        assert_eq!(f.len(), 4);
        assert_eq!(f.counters.refused_port_full, 1);
        assert_eq!(f.counters.refused_table_full, 1);
        // A move onto a full port is refused too and keeps the old entry.
        assert_eq!(f.learn(mac(4), 0, 1), Learn::RefusedPortFull);
        assert_eq!(f.lookup(&mac(4), 1), Some(1));
    }

    #[test]
    fn full_table_reclaims_aged_entries() {
        let mut f = Fdb::new(1, 2, 2, 1_000);
        f.learn(mac(1), 0, 0);
        f.learn(mac(2), 0, 0);
        assert_eq!(f.learn(mac(3), 0, 500), Learn::RefusedTableFull);
        assert_eq!(f.learn(mac(3), 0, 1_500), Learn::New);
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn static_entries_never_age_move_or_flush() {
        let mut f = Fdb::new(3, 3, 3, 1_000);
        f.learn(mac(1), 0, 0);
        f.learn(mac(2), 1, 0);
        // A static entry replaces the learned one and never ages.
        f.add_static(0, mac(1), 2, 0).unwrap();
        assert_eq!((f.port_len(0), f.port_len(2), f.len()), (0, 1, 2));
        assert_eq!(f.lookup(&mac(1), 1_000_000), Some(2));
        assert_eq!(f.sweep(1_000_000), 1, "only the learned entry aged");
        assert_eq!(f.lookup(&mac(1), 1_000_000), Some(2));
        // A frame from it on another port does not move it; nor on its own port does it refresh.
        assert_eq!(f.learn(mac(1), 0, 1_000_001), Learn::Static);
        assert_eq!(f.counters.static_moves_refused, 1);
        assert_eq!(f.counters.moves, 0);
        assert_eq!(f.learn(mac(1), 2, 1_000_001), Learn::Static);
        assert_eq!(f.counters.static_moves_refused, 1);
        assert_eq!(f.lookup(&mac(1), 1_000_002), Some(2));
        // Flush removes learned entries only (of one port, or all).
        f.learn(mac(3), 0, 1_000_002);
        f.learn(mac(4), 1, 1_000_002);
        assert_eq!(f.flush_learned(Some(0)), 1);
        assert_eq!(f.lookup(&mac(4), 1_000_003), Some(1));
        assert_eq!(f.flush_learned(None), 1);
        assert_eq!((f.len(), f.port_len(1), f.port_len(2)), (1, 0, 1));
        let e = f.entries(1_000_003);
        assert!(e.len() == 1 && e[0].1.is_static);
        // A new static entry needs room in the table.
        f.learn(mac(5), 0, 1_000_003);
        f.learn(mac(6), 1, 1_000_003);
        assert_eq!(
            f.add_static(0, mac(7), 0, 1_000_003),
            Err("the MAC table is full")
        );
        assert_eq!(f.len(), 3);
        // Delete.
        assert!(f.remove(0, mac(1)).unwrap().is_static);
        assert_eq!((f.lookup(&mac(1), 1_000_004), f.port_len(2)), (None, 0));
        assert!(f.remove(0, mac(1)).is_none());
    }

    #[test]
    fn flush_port() {
        let mut f = Fdb::new(2, 10, 10, 1_000);
        f.learn(mac(1), 0, 0);
        f.learn(mac(2), 1, 0);
        f.flush_port(0);
        assert_eq!(f.lookup(&mac(1), 0), None);
        assert_eq!(f.lookup(&mac(2), 0), Some(1));
    }

    #[test]
    fn shared_learning_passes_news_moves_and_quarterly_refreshes_once() {
        let mac = MacAddr([2, 0, 0, 0, 0, 9]);
        let mut a = Fdb::new(3, 16, 8, 4000);
        let mut b = Fdb::new(3, 16, 8, 4000);
        a.share();
        let mut out = Vec::new();
        a.learn(mac, 1, 10);
        a.learn(mac, 1, 20); // same quarter: not passed on
        a.take_learned(&mut out);
        assert_eq!(out, vec![(0, mac, 1)]);
        for l in out.drain(..) {
            assert_eq!(b.learn_shared(l, 30), Learn::New);
        }
        assert_eq!(b.lookup(&mac, 30), Some(1), "the copy forwards");
        a.learn(mac, 1, 1000); // a new quarter of 4 s: refreshed copies
        a.learn(mac, 2, 1100); // moved
        a.take_learned(&mut out);
        assert_eq!(out, vec![(0, mac, 1), (0, mac, 2)]);
        for l in out.drain(..) {
            b.learn_shared(l, 1100);
        }
        assert_eq!(b.lookup(&mac, 1100), Some(2));
        b.take_learned(&mut out);
        assert!(out.is_empty(), "a table not sharing keeps nothing");
        assert_eq!(
            b.learn_shared((0, mac, 7), 1200),
            Learn::RefusedPortFull,
            "a port this table does not have"
        );
    }

    #[test]
    fn remote_macs_move_between_vteps_and_each_vtep_is_bounded() {
        let (a, b) = (Ipv4Addr::new(10, 200, 0, 1), Ipv4Addr::new(10, 200, 0, 2));
        let mut f = Fdb::new(2, 8, 2, 1000);
        let m = |i: u8| MacAddr([2, 0, 0, 0, 0, i]);
        assert_eq!(f.learn_via(0, m(1), 1, Some(a), 0), Learn::New);
        assert_eq!(f.learn_via(0, m(1), 1, Some(a), 1), Learn::Refreshed);
        assert_eq!(
            f.learn_via(0, m(1), 1, Some(b), 2),
            Learn::Moved { from: 1 }
        );
        assert_eq!(f.entry(0, &m(1)).unwrap().vtep, Some(b));
        assert_eq!(f.counters.moves, 1);
        // Two per VTEP (the port bound): a third behind b is refused ...
        assert_eq!(f.learn_via(0, m(2), 1, Some(b), 3), Learn::New);
        assert_eq!(f.per_vtep[&b], 2);
        assert_eq!(f.learn_via(0, m(3), 1, Some(b), 3), Learn::RefusedPortFull);
        // ... while a still learns: the tunnel port is bounded per VTEP, so
        // one VTEP cannot take the others' room.
        assert_eq!(f.learn_via(0, m(5), 1, Some(a), 3), Learn::New);
        assert_eq!(f.port_len(1), 3);
        f.remove(0, m(5));
        // Moving to a local port frees the VTEP's share; ageing frees the rest.
        assert_eq!(f.learn_via(0, m(1), 0, None, 4), Learn::Moved { from: 1 });
        assert_eq!(f.per_vtep[&b], 1);
        f.sweep(5000);
        assert!(f.per_vtep.is_empty() && f.is_empty());
        // A static entry keeps its VTEP against learning.
        f.add_static_via(0, m(4), 1, Some(a), 6).unwrap();
        assert_eq!(f.learn_via(0, m(4), 1, Some(b), 7), Learn::Static);
        assert_eq!(f.entry(0, &m(4)).unwrap().vtep, Some(a));
        f.remove(0, m(4));
        assert!(f.per_vtep.is_empty());
    }
}
