//! The switch's IP→MAC table, learned from ARP traffic, used for ARP suppression.
//!
//! Contract: bounded; `now` in ms is passed in; entries older than the ageing
//! time are ignored by [`ArpTable::lookup`] and removed by [`ArpTable::sweep`].
//! Only senders with a valid unicast MAC and a non-zero IPv4 address are learned
//! (ARP probes, sender 0.0.0.0, teach nothing).

use crate::PortId;
use crate::wire::MacAddr;
use std::collections::HashMap;
use std::net::Ipv4Addr;

/// One IP→MAC binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpEntry {
    /// The MAC the IP was last announced with.
    pub mac: MacAddr,
    /// The port it was learned on.
    pub port: PortId,
    /// When (ms).
    pub last_seen: u64,
}

/// Counters of the ARP table and suppression.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct ArpCounters {
    /// Bindings learned (new or changed).
    pub learned: u64,
    /// Bindings not learned: table full.
    pub refused_table_full: u64,
    /// Requests answered by the switch instead of flooded.
    pub suppressed: u64,
    /// Gratuitous ARPs seen (always passed on).
    pub gratuitous: u64,
}

/// The IP→MAC table.
pub struct ArpTable {
    map: HashMap<Ipv4Addr, ArpEntry, foldhash::fast::RandomState>,
    max: usize,
    ageing_ms: u64,
    /// Counters.
    pub counters: ArpCounters,
}

impl ArpTable {
    /// A table of at most `max` bindings, aged after `ageing_ms`.
    pub fn new(max: usize, ageing_ms: u64) -> ArpTable {
        ArpTable {
            map: HashMap::with_capacity_and_hasher(max.min(1 << 12), Default::default()),
            max,
            ageing_ms,
            counters: ArpCounters::default(),
        }
    }

    /// Record that `ip` is at `mac`, seen on `port` at `now`.
    pub fn learn(&mut self, ip: Ipv4Addr, mac: MacAddr, port: PortId, now: u64) {
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || !mac.is_unicast() {
            return;
        }
        if let Some(e) = self.map.get_mut(&ip) {
            if e.mac != mac || e.port != port {
                self.counters.learned += 1;
            }
            *e = ArpEntry {
                mac,
                port,
                last_seen: now,
            };
            return;
        }
        if self.map.len() >= self.max {
            self.sweep(now);
            if self.map.len() >= self.max {
                self.counters.refused_table_full += 1;
                return;
            }
        }
        self.counters.learned += 1;
        self.map.insert(
            ip,
            ArpEntry {
                mac,
                port,
                last_seen: now,
            },
        );
    }

    /// The live binding of `ip`.
    pub fn lookup(&self, ip: Ipv4Addr, now: u64) -> Option<ArpEntry> {
        self.map
            .get(&ip)
            .filter(|e| now.saturating_sub(e.last_seen) < self.ageing_ms)
            .copied()
    }

    /// Remove aged bindings; returns how many.
    pub fn sweep(&mut self, now: u64) -> usize {
        let before = self.map.len();
        let a = self.ageing_ms;
        self.map.retain(|_, e| now.saturating_sub(e.last_seen) < a);
        before - self.map.len()
    }

    /// Forget bindings learned on `port`.
    pub fn flush_port(&mut self, port: PortId) {
        self.map.retain(|_, e| e.port != port);
    }

    /// Live bindings, sorted by IP.
    pub fn entries(&self, now: u64) -> Vec<(Ipv4Addr, ArpEntry)> {
        let mut v: Vec<_> = self
            .map
            .iter()
            .filter(|(_, e)| now.saturating_sub(e.last_seen) < self.ageing_ms)
            .map(|(i, e)| (*i, *e))
            .collect();
        v.sort_by_key(|(i, _)| *i);
        v
    }

    /// Number of bindings (aged ones not yet swept included).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);

    #[test]
    fn learns_and_ages() {
        let mut t = ArpTable::new(2, 1000);
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        t.learn(ip, M, 0, 0);
        assert_eq!(t.lookup(ip, 999).unwrap().mac, M);
        assert!(t.lookup(ip, 1000).is_none());
        assert_eq!(t.sweep(1000), 1);
    }

    #[test]
    fn ignores_probes_and_bad_macs() {
        let mut t = ArpTable::new(2, 1000);
        t.learn(Ipv4Addr::UNSPECIFIED, M, 0, 0);
        t.learn(Ipv4Addr::new(10, 0, 0, 1), MacAddr::BROADCAST, 0, 0);
        assert!(t.is_empty());
    }

    #[test]
    fn bounded() {
        let mut t = ArpTable::new(2, 1000);
        for i in 0..5 {
            t.learn(Ipv4Addr::new(10, 0, 0, i), M, 0, 0);
        }
        assert_eq!(t.len(), 2);
        assert_eq!(t.counters.refused_table_full, 3);
    }
}
