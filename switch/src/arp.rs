//! IP→MAC tables learned from ARP and NDP: the switch's (ARP and ND
//! suppression) and the gateway's neighbour caches, one type for both
//! families ([`NeighTable`], [`ArpTable`] for IPv4, [`NdTable`] for IPv6).
//!
//! Contract:
//! - Bounded in total (`max`) and per port (`max_per_port`); `now` in ms is
//!   passed in; entries older than the ageing time are ignored by
//!   [`ArpTable::lookup`] and removed by [`ArpTable::sweep`].
//! - Only senders with a valid unicast MAC and a unicast address are
//!   learned (ARP probes, sender 0.0.0.0, DAD from `::`, teach nothing). When on-link
//!   networks are set ([`ArpTable::set_on_link`]), only addresses inside one
//!   of them (not its network or broadcast address) are learned.
//! - An entry is *unconfirmed* when it was only heard as a hint (an ARP
//!   request or an unsolicited announcement) and *confirmed* by an ARP reply
//!   ([`ArpTable::confirm`]). Both kinds answer lookups; they differ in what
//!   is evicted when the table or the port is full: the oldest unconfirmed
//!   entry first, then an aged one, then (only for a confirmation) the least
//!   recently confirmed entry. A hint never evicts a live confirmed entry, so
//!   a flood of requests with made-up senders cannot push out a real
//!   neighbour, and a real neighbour's reply can always get in.
//! - Every learn is O(1) (amortised): the entries sit in intrusive
//!   doubly-linked lists, ordered by when they were last heard, per state
//!   globally and per port; a refused learn looks at two list heads only.
//!   [`ArpTable::sweep`] pops aged entries from the list heads.

use crate::PortId;
use crate::wire::MacAddr;
use nat::{Ipv4Net, Ipv6Net};
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{Ipv4Addr, Ipv6Addr};

/// An address family a [`NeighTable`] can hold.
pub trait NeighAddr: Copy + Eq + Ord + Hash + std::fmt::Debug {
    /// A network of this family (for the on-link check).
    type Net: Clone + std::fmt::Debug;
    /// Whether the address is unicast and specified (anything else is
    /// refused silently: probes, broadcasts, groups).
    fn unicast(self) -> bool;
    /// Whether the address may be learned at all: unicast, not unspecified,
    /// loopback or multicast (refusals counted as off-link).
    fn learnable(self) -> bool;
    /// Whether the address is a host address of `net`.
    fn host_of(self, net: &Self::Net) -> bool;
}

impl NeighAddr for Ipv4Addr {
    type Net = Ipv4Net;
    fn unicast(self) -> bool {
        !(self.is_unspecified() || self.is_broadcast() || self.is_multicast())
    }
    fn learnable(self) -> bool {
        let o = self.octets()[0];
        !(self.is_unspecified() || self.is_broadcast() || o == 0 || o == 127 || o >= 224)
    }
    fn host_of(self, net: &Ipv4Net) -> bool {
        is_host_of(net, self)
    }
}

impl NeighAddr for Ipv6Addr {
    type Net = Ipv6Net;
    fn unicast(self) -> bool {
        !(self.is_unspecified() || self.is_multicast())
    }
    fn learnable(self) -> bool {
        !(self.is_unspecified() || self.is_loopback() || self.is_multicast())
    }
    /// Inside the prefix, and not its subnet-router anycast address (all zeros).
    fn host_of(self, net: &Ipv6Net) -> bool {
        let len = u32::from(net.prefix.min(128));
        let host = if len == 128 {
            0
        } else {
            u128::from(self) & (u128::MAX >> len)
        };
        net.contains(self) && (len >= 127 || host != 0)
    }
}

/// One IP→MAC binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpEntry {
    /// The MAC the IP was last announced with.
    pub mac: MacAddr,
    /// The port it was learned on.
    pub port: PortId,
    /// When it was last heard (ms).
    pub last_seen: u64,
    /// Whether an ARP reply confirmed it (see the module docs).
    pub confirmed: bool,
}

/// Counters of an ARP table (and, for the switch's, of suppression).
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct ArpCounters {
    /// Bindings learned (new or changed).
    pub learned: u64,
    /// Bindings not learned: the table is full of live confirmed entries.
    pub refused_table_full: u64,
    /// Bindings not learned: the port holds its share of live confirmed entries.
    pub refused_port_full: u64,
    /// Bindings not learned: the address is not on a link of ours.
    pub refused_off_link: u64,
    /// Unconfirmed entries evicted to make room.
    pub evicted_unconfirmed: u64,
    /// Aged entries evicted to make room.
    pub evicted_aged: u64,
    /// Live confirmed entries evicted to make room for a confirmation.
    pub evicted_confirmed: u64,
    /// Requests answered by the switch instead of flooded.
    pub suppressed: u64,
    /// Gratuitous ARPs seen (always passed on).
    pub gratuitous: u64,
    /// Hints refused because they would rebind a live confirmed entry.
    pub refused_rebind: u64,
}

/// How a binding was heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// An ARP request, a gratuitous ARP or an unsolicited reply: unconfirmed.
    Hint,
    /// An ARP reply (to our request, or answering someone's): confirmed.
    Reply,
}

/// What a learn did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// A new binding.
    New,
    /// An existing binding, heard again.
    Refreshed,
    /// An existing IP, now at another MAC or port.
    Changed,
    /// Not learned (counted in [`ArpCounters`]).
    Refused,
}

const NIL: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
}

const UNLINKED: Link = Link {
    prev: NIL,
    next: NIL,
};

#[derive(Clone, Copy)]
struct Slot<A> {
    ip: A,
    e: ArpEntry,
    /// Links in the global list of its state.
    g: Link,
    /// Links in its port's list of its state.
    p: Link,
}

#[derive(Clone, Copy, Default)]
struct List {
    head: u32,
    tail: u32,
    len: usize,
}

const EMPTY: List = List {
    head: NIL,
    tail: NIL,
    len: 0,
};

/// Which chain of links.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Chain {
    Global,
    Port,
}

/// The IP→MAC table of one address family.
#[derive(Clone)]
pub struct NeighTable<A: NeighAddr> {
    map: HashMap<A, u32, foldhash::fast::RandomState>,
    slots: Vec<Slot<A>>,
    free: Vec<u32>,
    /// Global lists: `[unconfirmed, confirmed]`, oldest first.
    global: [List; 2],
    /// Per-port lists, indexed by port: `[unconfirmed, confirmed]`.
    ports: Vec<[List; 2]>,
    on_link: Vec<A::Net>,
    max: usize,
    max_per_port: usize,
    ageing_ms: u64,
    hints_rebind: bool,
    /// Counters.
    pub counters: ArpCounters,
}

/// The IPv4 table, learned from ARP.
pub type ArpTable = NeighTable<Ipv4Addr>;
/// The IPv6 table, learned from NDP.
pub type NdTable = NeighTable<Ipv6Addr>;

/// The default per-port bound for a table of `max` entries: a quarter, at least 1.
pub fn default_per_port(max: usize) -> usize {
    (max / 4).max(1)
}

/// Whether `ip` is a host address of `net`: inside it, and (for prefixes up
/// to /30) neither its network nor its broadcast address.
pub fn is_host_of(net: &Ipv4Net, ip: Ipv4Addr) -> bool {
    let m = net.mask();
    let (a, n) = (u32::from(ip), u32::from(net.addr));
    if a & m != n & m {
        return false;
    }
    net.prefix > 30 || (a & !m != 0 && a & !m != !m)
}

impl<A: NeighAddr> NeighTable<A> {
    /// A table of at most `max` bindings (a quarter of them per port), aged after `ageing_ms`.
    pub fn new(max: usize, ageing_ms: u64) -> NeighTable<A> {
        NeighTable::with_limits(max, default_per_port(max), ageing_ms)
    }

    /// A table of at most `max` bindings, `max_per_port` of them learned on
    /// any one port, aged after `ageing_ms`.
    pub fn with_limits(max: usize, max_per_port: usize, ageing_ms: u64) -> NeighTable<A> {
        let max = max.min(NIL as usize - 1);
        NeighTable {
            map: HashMap::with_capacity_and_hasher(max.min(1 << 12), Default::default()),
            slots: Vec::with_capacity(max.min(1 << 12)),
            free: Vec::new(),
            global: [EMPTY; 2],
            ports: Vec::new(),
            on_link: Vec::new(),
            max,
            max_per_port: max_per_port.clamp(1, max.max(1)),
            ageing_ms,
            hints_rebind: true,
            counters: ArpCounters::default(),
        }
    }

    /// Whether a hint (request, gratuitous ARP) may replace a live confirmed
    /// binding with another MAC or port. True by default (the switch's
    /// suppression table follows hosts that move or are re-created, like a
    /// bridge); the gateway's neighbour caches set it false, so that one
    /// unsolicited request cannot divert a host's routed traffic.
    pub fn set_hints_rebind(&mut self, on: bool) {
        self.hints_rebind = on;
    }

    /// Learn only addresses inside `nets` from now on (empty: any unicast address).
    pub fn set_on_link(&mut self, nets: &[A::Net]) {
        self.on_link = nets.to_vec();
    }

    /// Whether `ip` may be learned: a unicast address, on a link of ours if
    /// those are known.
    pub fn is_on_link(&self, ip: A) -> bool {
        if !ip.learnable() {
            return false;
        }
        self.on_link.is_empty() || self.on_link.iter().any(|n| ip.host_of(n))
    }

    /// Record a hint that `ip` is at `mac`, on `port`, at `now` (unconfirmed
    /// unless already confirmed with the same MAC and port).
    pub fn learn(&mut self, ip: A, mac: MacAddr, port: PortId, now: u64) -> Learned {
        self.observe(ip, mac, port, now, Heard::Hint, true)
    }

    /// Record an ARP reply: `ip` is at `mac` on `port`, confirmed.
    pub fn confirm(&mut self, ip: A, mac: MacAddr, port: PortId, now: u64) -> Learned {
        self.observe(ip, mac, port, now, Heard::Reply, true)
    }

    /// Refresh `ip`'s binding if it is exactly `mac` on `port` (heard in ARP
    /// not addressed to us: keeps it fresh, never rebinds). True if refreshed.
    pub fn refresh(&mut self, ip: A, mac: MacAddr, port: PortId, now: u64) -> bool {
        let Some(&i) = self.map.get(&ip) else {
            return false;
        };
        let e = self.slots[i as usize].e;
        if e.mac != mac || e.port != port {
            return false;
        }
        self.detach(i);
        self.slots[i as usize].e.last_seen = now;
        self.attach(i);
        true
    }

    /// Record a binding heard as `how`. With `on_link_only` false the on-link
    /// networks are not checked (a VLAN whose subnets the table does not know).
    pub fn observe(
        &mut self,
        ip: A,
        mac: MacAddr,
        port: PortId,
        now: u64,
        how: Heard,
        on_link_only: bool,
    ) -> Learned {
        if !mac.is_unicast() || !ip.unicast() {
            return Learned::Refused;
        }
        if on_link_only && !self.is_on_link(ip) {
            self.counters.refused_off_link += 1;
            return Learned::Refused;
        }
        let confirmed = how == Heard::Reply;
        if let Some(&i) = self.map.get(&ip) {
            let e = self.slots[i as usize].e;
            if e.mac == mac && e.port == port {
                self.detach(i);
                let s = &mut self.slots[i as usize];
                s.e.last_seen = now;
                s.e.confirmed |= confirmed;
                self.attach(i);
                return Learned::Refreshed;
            }
            let live = now.saturating_sub(e.last_seen) < self.ageing_ms;
            if !confirmed && !self.hints_rebind && e.confirmed && live {
                self.counters.refused_rebind += 1;
                return Learned::Refused;
            }
            // A new binding for a known address: it starts over.
            self.remove(i);
            return match self.insert(ip, mac, port, now, confirmed) {
                Learned::New => Learned::Changed,
                r => r,
            };
        }
        self.insert(ip, mac, port, now, confirmed)
    }

    fn insert(&mut self, ip: A, mac: MacAddr, port: PortId, now: u64, confirmed: bool) -> Learned {
        if self.ports.len() <= port {
            self.ports.resize(port + 1, [EMPTY; 2]);
        }
        let on_port = self.ports[port][0].len + self.ports[port][1].len;
        if on_port >= self.max_per_port {
            let lists = self.ports[port];
            if !self.make_room(lists, now, confirmed) {
                self.counters.refused_port_full += 1;
                return Learned::Refused;
            }
        } else if self.map.len() >= self.max {
            let lists = self.global;
            if !self.make_room(lists, now, confirmed) {
                self.counters.refused_table_full += 1;
                return Learned::Refused;
            }
        }
        let slot = Slot {
            ip,
            e: ArpEntry {
                mac,
                port,
                last_seen: now,
                confirmed,
            },
            g: UNLINKED,
            p: UNLINKED,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        self.map.insert(ip, i);
        self.attach(i);
        self.counters.learned += 1;
        Learned::New
    }

    /// Evict one entry of `lists` (`[unconfirmed, confirmed]`, global or one
    /// port's): the oldest unconfirmed one, else the oldest confirmed one if
    /// it has aged or `for_confirmed` is set. O(1).
    fn make_room(&mut self, lists: [List; 2], now: u64, for_confirmed: bool) -> bool {
        if lists[0].head != NIL {
            self.remove(lists[0].head);
            self.counters.evicted_unconfirmed += 1;
            return true;
        }
        let h = lists[1].head;
        if h == NIL {
            return false;
        }
        let aged = now.saturating_sub(self.slots[h as usize].e.last_seen) >= self.ageing_ms;
        if aged {
            self.counters.evicted_aged += 1;
        } else if for_confirmed {
            self.counters.evicted_confirmed += 1;
        } else {
            return false;
        }
        self.remove(h);
        true
    }

    fn link_mut(&mut self, i: u32, c: Chain) -> &mut Link {
        let s = &mut self.slots[i as usize];
        match c {
            Chain::Global => &mut s.g,
            Chain::Port => &mut s.p,
        }
    }

    fn list_mut(&mut self, i: u32, c: Chain) -> &mut List {
        let e = self.slots[i as usize].e;
        let k = usize::from(e.confirmed);
        match c {
            Chain::Global => &mut self.global[k],
            Chain::Port => &mut self.ports[e.port][k],
        }
    }

    /// Append slot `i` to the tails of its global and port lists.
    fn attach(&mut self, i: u32) {
        for c in [Chain::Global, Chain::Port] {
            let tail = self.list_mut(i, c).tail;
            *self.link_mut(i, c) = Link {
                prev: tail,
                next: NIL,
            };
            if tail == NIL {
                self.list_mut(i, c).head = i;
            } else {
                self.link_mut(tail, c).next = i;
            }
            let l = self.list_mut(i, c);
            l.tail = i;
            l.len += 1;
        }
    }

    /// Unlink slot `i` from its global and port lists.
    fn detach(&mut self, i: u32) {
        for c in [Chain::Global, Chain::Port] {
            let Link { prev, next } = *self.link_mut(i, c);
            if prev == NIL {
                self.list_mut(i, c).head = next;
            } else {
                self.link_mut(prev, c).next = next;
            }
            if next == NIL {
                self.list_mut(i, c).tail = prev;
            } else {
                self.link_mut(next, c).prev = prev;
            }
            self.list_mut(i, c).len -= 1;
            *self.link_mut(i, c) = UNLINKED;
        }
    }

    fn remove(&mut self, i: u32) {
        self.detach(i);
        let ip = self.slots[i as usize].ip;
        self.map.remove(&ip);
        self.free.push(i);
    }

    /// The live binding of `ip`.
    pub fn lookup(&self, ip: A, now: u64) -> Option<ArpEntry> {
        self.map
            .get(&ip)
            .map(|&i| self.slots[i as usize].e)
            .filter(|e| now.saturating_sub(e.last_seen) < self.ageing_ms)
    }

    /// Remove aged bindings; returns how many. Costs O(removed): the lists
    /// are ordered by when each entry was last heard.
    pub fn sweep(&mut self, now: u64) -> usize {
        let mut n = 0;
        for k in 0..2 {
            loop {
                let h = self.global[k].head;
                if h == NIL
                    || now.saturating_sub(self.slots[h as usize].e.last_seen) < self.ageing_ms
                {
                    break;
                }
                self.remove(h);
                n += 1;
            }
        }
        n
    }

    /// Forget bindings learned on `port`. Costs O(bindings of the port).
    pub fn flush_port(&mut self, port: PortId) {
        let Some(lists) = self.ports.get(port).copied() else {
            return;
        };
        for l in lists {
            let mut i = l.head;
            while i != NIL {
                let next = self.slots[i as usize].p.next;
                self.remove(i);
                i = next;
            }
        }
    }

    /// Live bindings, sorted by IP.
    pub fn entries(&self, now: u64) -> Vec<(A, ArpEntry)> {
        let mut v: Vec<_> = self
            .map
            .iter()
            .map(|(ip, &i)| (*ip, self.slots[i as usize].e))
            .filter(|(_, e)| now.saturating_sub(e.last_seen) < self.ageing_ms)
            .collect();
        v.sort_by_key(|(i, _)| *i);
        v
    }

    /// Bindings learned on `port` (aged ones not yet swept included).
    pub fn len_on_port(&self, port: PortId) -> usize {
        self.ports.get(port).map_or(0, |l| l[0].len + l[1].len)
    }

    /// Number of bindings (aged ones not yet swept included).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// The ageing time in ms.
    pub fn ageing_ms(&self) -> u64 {
        self.ageing_ms
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The total bound.
    pub fn max(&self) -> usize {
        self.max
    }

    /// The per-port bound.
    pub fn max_per_port(&self) -> usize {
        self.max_per_port
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tests_fixtures::{arp_reply, arp_request};
    use crate::wire::{ArpPacket, ETH_HLEN, arp_op};

    const M: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const LAN: Ipv4Net = Ipv4Net {
        addr: Ipv4Addr::new(192, 168, 15, 0),
        prefix: 24,
    };

    /// Every list is consistent with the map, and the bounds hold.
    fn check(t: &ArpTable) {
        let mut seen = 0;
        for k in 0..2 {
            let (mut i, mut prev, mut n) = (t.global[k].head, NIL, 0);
            while i != NIL {
                let s = &t.slots[i as usize];
                assert_eq!(s.g.prev, prev);
                assert_eq!(usize::from(s.e.confirmed), k);
                assert_eq!(t.map.get(&s.ip), Some(&i));
                (prev, i, n) = (i, s.g.next, n + 1);
            }
            assert_eq!((t.global[k].tail, t.global[k].len), (prev, n));
            seen += n;
        }
        assert_eq!(seen, t.map.len());
        assert!(t.len() <= t.max);
        let mut on_ports = 0;
        for (port, lists) in t.ports.iter().enumerate() {
            for (k, l) in lists.iter().enumerate() {
                let (mut i, mut n) = (l.head, 0);
                while i != NIL {
                    let s = &t.slots[i as usize];
                    assert_eq!((s.e.port, usize::from(s.e.confirmed)), (port, k));
                    (i, n) = (s.p.next, n + 1);
                }
                assert_eq!(n, l.len);
            }
            assert!(t.len_on_port(port) <= t.max_per_port);
            on_ports += t.len_on_port(port);
        }
        assert_eq!(on_ports, t.len());
    }

    /// Learn from ARP frame bytes as the pipeline does: replies confirm.
    fn hear(t: &mut ArpTable, frame: &[u8], port: PortId, now: u64) -> Learned {
        let a = ArpPacket::new_checked(&frame[ETH_HLEN..]).unwrap();
        let how = if a.op() == arp_op::REPLY {
            Heard::Reply
        } else {
            Heard::Hint
        };
        t.observe(a.spa(), a.sha(), port, now, how, true)
    }

    /// A deterministic xorshift generator for made-up senders.
    fn rng(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    #[test]
    fn learns_and_ages() {
        let mut t = ArpTable::new(2, 1000);
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        assert_eq!(t.learn(ip, M, 0, 0), Learned::New);
        assert_eq!(t.lookup(ip, 999).unwrap().mac, M);
        assert!(t.lookup(ip, 1000).is_none());
        assert_eq!(t.sweep(1000), 1);
        check(&t);
    }

    #[test]
    fn ignores_probes_and_bad_macs() {
        let mut t = ArpTable::new(2, 1000);
        t.learn(Ipv4Addr::UNSPECIFIED, M, 0, 0);
        t.learn(Ipv4Addr::new(10, 0, 0, 1), MacAddr::BROADCAST, 0, 0);
        t.learn(Ipv4Addr::new(224, 0, 0, 1), M, 0, 0);
        t.learn(Ipv4Addr::new(127, 0, 0, 1), M, 0, 0);
        assert!(t.is_empty());
    }

    #[test]
    fn bounded_per_port_and_in_total() {
        // 8 in total, 2 per port: a port that floods only replaces its own hints.
        let mut t = ArpTable::with_limits(8, 2, 1000);
        t.learn(Ipv4Addr::new(10, 0, 1, 1), M, 1, 0);
        t.learn(Ipv4Addr::new(10, 0, 1, 2), M, 1, 0);
        for i in 0..50 {
            t.learn(Ipv4Addr::new(10, 0, 0, i), M, 0, 0);
            check(&t);
        }
        assert_eq!(t.len_on_port(0), 2);
        assert_eq!(t.counters.evicted_unconfirmed, 48);
        assert!(t.lookup(Ipv4Addr::new(10, 0, 1, 1), 0).is_some());
        assert!(
            t.lookup(Ipv4Addr::new(10, 0, 0, 49), 0).is_some(),
            "newest kept"
        );
        // Four ports fill the total; the fifth's hints evict the oldest hint anywhere.
        for p in 2..5 {
            for i in 0..2 {
                t.learn(Ipv4Addr::new(10, 0, p as u8, i), M, p, 1);
            }
        }
        assert_eq!(t.len(), 8);
        t.learn(Ipv4Addr::new(10, 0, 9, 9), M, 5, 2);
        assert_eq!(t.len(), 8);
        assert!(
            t.lookup(Ipv4Addr::new(10, 0, 1, 1), 2).is_none(),
            "oldest hint went"
        );
        check(&t);
    }

    #[test]
    fn a_hint_never_evicts_a_live_confirmed_entry() {
        let mut t = ArpTable::with_limits(2, 2, 1000);
        t.confirm(Ipv4Addr::new(10, 0, 0, 1), M, 0, 0);
        t.confirm(Ipv4Addr::new(10, 0, 0, 2), M, 0, 0);
        assert_eq!(
            t.learn(Ipv4Addr::new(10, 0, 0, 3), M, 0, 10),
            Learned::Refused
        );
        assert_eq!(t.counters.refused_port_full, 1);
        assert_eq!(
            t.learn(Ipv4Addr::new(10, 0, 0, 3), M, 1, 10),
            Learned::Refused
        );
        assert_eq!(t.counters.refused_table_full, 1);
        // Once aged, it goes to make room, without a sweep.
        assert_eq!(
            t.learn(Ipv4Addr::new(10, 0, 0, 3), M, 1, 1000),
            Learned::New
        );
        assert_eq!(t.counters.evicted_aged, 1);
        check(&t);
    }

    #[test]
    fn a_confirmation_evicts_the_least_recently_confirmed() {
        let mut t = ArpTable::with_limits(3, 3, 10_000);
        for i in 1..=3 {
            t.confirm(Ipv4Addr::new(10, 0, 0, i), M, 0, u64::from(i));
        }
        t.confirm(Ipv4Addr::new(10, 0, 0, 1), M, 0, 5); // .1 confirmed again: now newest
        assert_eq!(t.confirm(Ipv4Addr::new(10, 0, 0, 4), M, 0, 6), Learned::New);
        assert!(t.lookup(Ipv4Addr::new(10, 0, 0, 2), 6).is_none());
        assert!(t.lookup(Ipv4Addr::new(10, 0, 0, 1), 6).is_some());
        assert_eq!(t.counters.evicted_confirmed, 1);
        check(&t);
    }

    #[test]
    fn only_on_link_host_addresses_are_learned() {
        let mut t = ArpTable::new(16, 1000);
        t.set_on_link(&[LAN]);
        for ip in [
            [10, 0, 0, 1],
            [192, 168, 15, 0],
            [192, 168, 15, 255],
            [203, 0, 113, 1],
        ] {
            assert_eq!(t.learn(ip.into(), M, 0, 0), Learned::Refused, "{ip:?}");
        }
        assert_eq!(t.counters.refused_off_link, 4);
        assert_eq!(
            t.learn(Ipv4Addr::new(192, 168, 15, 7), M, 0, 0),
            Learned::New
        );
        // A table that is told not to check (another VLAN) takes any unicast address.
        assert_eq!(
            t.observe(Ipv4Addr::new(10, 0, 0, 1), M, 0, 0, Heard::Hint, false),
            Learned::New
        );
    }

    /// A flood of ARP requests (frames built after RFC 826 by
    /// `tests_fixtures::arp_request`) with random senders, on- and off-link,
    /// from two ports: the table stays within its bounds, and the real
    /// neighbour's reply (also a built frame) is learned afterwards.
    #[test]
    fn flood_of_made_up_senders_leaves_room_for_a_real_reply() {
        let mut t = ArpTable::with_limits(64, 16, 300_000);
        t.set_on_link(&[Ipv4Net {
            addr: Ipv4Addr::new(10, 1, 0, 0),
            prefix: 16,
        }]);
        let mut s = 0x9e37_79b9_7f4a_7c15;
        for n in 0..20_000u64 {
            let r = rng(&mut s);
            let spa = if r & 1 == 0 {
                [10, 1, (r >> 8) as u8, (r >> 16) as u8]
            } else {
                ((r >> 32) as u32).to_be_bytes()
            };
            let sha = MacAddr([2, 0, (r >> 40) as u8, (r >> 48) as u8, 0, 1]);
            let f = arp_request(sha, spa, [10, 1, 0, 1]);
            hear(&mut t, &f, (n % 2) as PortId, n / 100);
        }
        check(&t);
        assert!(t.len_on_port(0) <= 16 && t.len_on_port(1) <= 16);
        assert!(t.counters.refused_off_link > 9_000);
        assert!(t.counters.evicted_unconfirmed > 9_000);
        // The real neighbour answers on port 0, where the flood came from.
        let real = MacAddr([2, 0, 0, 0, 0, 0x10]);
        let rep = arp_reply(real, [10, 1, 0, 254], M, [10, 1, 0, 1]);
        assert_eq!(hear(&mut t, &rep, 0, 200), Learned::New);
        let e = t.lookup(Ipv4Addr::new(10, 1, 0, 254), 200).unwrap();
        assert!(e.confirmed && e.mac == real);
        // And further hints do not push it out.
        for i in 0..100u8 {
            let f = arp_request(M, [10, 1, 9, i], [10, 1, 0, 1]);
            hear(&mut t, &f, 0, 201);
        }
        assert!(t.lookup(Ipv4Addr::new(10, 1, 0, 254), 201).is_some());
        check(&t);
    }

    #[test]
    fn sweep_and_flush_keep_the_lists_consistent() {
        let mut t = ArpTable::with_limits(32, 8, 1000);
        let mut s = 7;
        for n in 0..5_000u64 {
            let r = rng(&mut s);
            let ip = Ipv4Addr::new(10, 0, 0, (r % 48) as u8 + 1);
            let mac = MacAddr([2, 0, 0, 0, 0, (r >> 8) as u8 % 3 + 1]);
            let port = (r >> 16) as usize % 5;
            let now = n * 3;
            match (r >> 24) % 10 {
                0 => {
                    t.sweep(now);
                }
                1 => t.flush_port(port),
                2..=4 => {
                    t.confirm(ip, mac, port, now);
                }
                _ => {
                    t.learn(ip, mac, port, now);
                }
            }
            check(&t);
        }
        let now = 5_000 * 3;
        t.sweep(now);
        assert!(t.entries(now).len() == t.len());
        t.sweep(now + 1000);
        assert!(t.is_empty());
        check(&t);
    }

    #[test]
    fn refresh_never_rebinds() {
        let mut t = ArpTable::new(16, 1000);
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        t.confirm(ip, M, 0, 0);
        assert!(!t.refresh(ip, MacAddr([2, 0, 0, 0, 0, 9]), 0, 500));
        assert!(!t.refresh(ip, M, 1, 500));
        assert!(t.refresh(ip, M, 0, 900));
        let e = t.lookup(ip, 1500).unwrap();
        assert_eq!((e.mac, e.port, e.last_seen), (M, 0, 900));
        assert!(
            !t.refresh(Ipv4Addr::new(10, 0, 0, 2), M, 0, 900),
            "never creates"
        );
        check(&t);
    }
}
