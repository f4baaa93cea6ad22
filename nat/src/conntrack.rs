//! Connection tracking: tuples, the TCP state machine, and a bounded table
//! that expires entries through a timer wheel.
//!
//! Contract:
//! - An [`Entry`] is indexed under its original tuple (as the initiator sent
//!   it) and its reply tuple (as the reply arrives, before translation).
//! - Time is passed in (`now`, ms). A lookup never returns an expired entry.
//!   [`Table::expire`] removes expired entries by walking only the wheel slots
//!   that came due since the last call (no full-table scan).
//! - The table holds at most `max` entries, and at most `host_max` per
//!   internal host ([`Table::insert_for`]). When a host is at its limit it
//!   gives up its own oldest unassured entry; when the table is full, the
//!   oldest unassured entry goes (like netfilter's early drop); assured
//!   entries are never evicted.
//! - Memory is bounded by the slot count: wheel slots, the free list and the
//!   unassured FIFOs (one for the table, one per host) are intrusive
//!   doubly-linked lists through the entry slots (u32 links), so removal is
//!   O(1), no reference outlives its entry, and nothing grows with the rate
//!   of new flows. `expire` walks at most one lap of the wheel per call, and
//!   every entry in a walked slot is either removed or re-filed, so a long
//!   gap between calls loses nothing.
//!
//! No TCP window tracking (netfilter's `tcp_in_window`): the engine keeps no
//! sequence numbers (8 more bytes per direction per entry, and the
//! gateway's GSO super-frames would need per-segment accounting). What it
//! would buy: refusing out-of-window segments, so an off-path host that
//! knows a tuple could not RST it. Here a RST closes (10 s, unassured) and
//! an ACK never revives a closed entry; the cost of a spoofed RST is that one
//! connection, which a LAN host can cause anyway. Mid-stream pickups and
//! floods are bounded by the SEEN_REPLY rule and the per-host limits instead.
//!
//! TCP states (RFC 6146 §3.5.2 / RFC 7857 style; `O` original direction, `R` reply):
//!
//! ```text
//!  (new) --O:SYN--> SYN_SENT --R:SYN+ACK--> SYN_RECV --ACK--> ESTABLISHED
//!                      |  R:SYN (simultaneous open)  ^            |
//!                      +------> SYN_SENT2 --SYN+ACK--+            | FIN from d
//!  ESTABLISHED --FIN(d)--> FIN_WAIT --ACK(!d)--> CLOSE_WAIT --FIN(!d)--> LAST_ACK
//!  FIN_WAIT --FIN(!d)--> LAST_ACK --ACK--> TIME_WAIT --O:SYN--> SYN_SENT (reopen)
//!  any --RST--> CLOSE --O:SYN--> SYN_SENT
//! ```

use crate::family::Family;
use crate::wire::tcp_flags;
use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;

/// A connection tuple. For ICMP queries the identifier plays the port: an
/// echo request is `(src, dst, id, 0)`, an echo reply `(src, dst, 0, id)`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Tuple<A = Ipv4Addr> {
    /// IP protocol.
    pub proto: u8,
    /// Source address.
    pub src: A,
    /// Destination address.
    pub dst: A,
    /// Source port (or ICMP id of a request).
    pub sport: u16,
    /// Destination port (or ICMP id of a reply).
    pub dport: u16,
}

impl<A: Family> Tuple<A> {
    /// The tuple of a packet going the other way.
    pub fn inv(&self) -> Tuple<A> {
        Tuple {
            proto: self.proto,
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
        }
    }
}

impl<A: Family> fmt::Display for Tuple<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "src={} dst={} sport={} dport={}",
            self.src, self.dst, self.sport, self.dport
        )
    }
}

/// Direction of a packet relative to its connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Dir {
    /// From the initiator.
    Original = 0,
    /// From the responder.
    Reply = 1,
}

/// TCP connection states.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[allow(missing_docs)]
pub enum TcpState {
    SynSent,
    SynSent2,
    SynRecv,
    Established,
    FinWait,
    CloseWait,
    LastAck,
    TimeWait,
    Close,
}

impl TcpState {
    /// Name as `conntrack -L` prints it.
    pub fn name(self) -> &'static str {
        match self {
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynSent2 => "SYN_SENT2",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::Established => "ESTABLISHED",
            TcpState::FinWait => "FIN_WAIT",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
        }
    }
    /// Every state, for tables.
    pub const ALL: [TcpState; 9] = [
        TcpState::SynSent,
        TcpState::SynSent2,
        TcpState::SynRecv,
        TcpState::Established,
        TcpState::FinWait,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::TimeWait,
        TcpState::Close,
    ];
}

/// The TCP event a segment's flags amount to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[allow(missing_docs)]
pub enum TcpEvent {
    Syn,
    SynAck,
    Fin,
    Ack,
    Rst,
    None,
}

impl TcpEvent {
    /// Classify TCP flags.
    pub fn of(flags: u8) -> TcpEvent {
        if flags & tcp_flags::RST != 0 {
            TcpEvent::Rst
        } else if flags & tcp_flags::SYN != 0 {
            if flags & tcp_flags::ACK != 0 {
                TcpEvent::SynAck
            } else {
                TcpEvent::Syn
            }
        } else if flags & tcp_flags::FIN != 0 {
            TcpEvent::Fin
        } else if flags & tcp_flags::ACK != 0 {
            TcpEvent::Ack
        } else {
            TcpEvent::None
        }
    }
    /// Every event, for tables.
    pub const ALL: [TcpEvent; 6] = [
        TcpEvent::Syn,
        TcpEvent::SynAck,
        TcpEvent::Fin,
        TcpEvent::Ack,
        TcpEvent::Rst,
        TcpEvent::None,
    ];
}

/// The TCP transition function. `fin_dir` is the direction of the first FIN, if any.
pub fn tcp_next(
    s: TcpState,
    dir: Dir,
    ev: TcpEvent,
    fin_dir: Option<Dir>,
) -> (TcpState, Option<Dir>) {
    use TcpEvent as E;
    use TcpState as S;
    if ev == E::Rst {
        return (S::Close, fin_dir);
    }
    let other = |d: Dir| fin_dir.is_some_and(|f| f != d);
    let next = match (s, dir, ev) {
        (S::SynSent, Dir::Reply, E::SynAck) => S::SynRecv,
        (S::SynSent, Dir::Reply, E::Syn) => S::SynSent2,
        (S::SynSent2, _, E::SynAck) => S::SynRecv,
        (S::SynRecv, _, E::Ack) => S::Established,
        (S::SynRecv, d, E::Fin) | (S::Established, d, E::Fin) => return (S::FinWait, Some(d)),
        (S::FinWait, d, E::Ack) if other(d) => S::CloseWait,
        (S::FinWait, d, E::Fin) if other(d) => S::LastAck,
        (S::CloseWait, d, E::Fin) if other(d) => S::LastAck,
        (S::LastAck, _, E::Ack) => S::TimeWait,
        (S::TimeWait, Dir::Original, E::Syn) | (S::Close, Dir::Original, E::Syn) => {
            return (S::SynSent, None);
        }
        (s, _, _) => s,
    };
    (next, fin_dir)
}

/// The state a first TCP segment (no entry yet) opens, or `None` if it cannot
/// open one (netfilter's INVALID in state NONE).
///
/// - SYN: `SYN_SENT`.
/// - ACK without SYN/FIN/RST: a connection picked up mid-stream (e.g. after a
///   restart): `ESTABLISHED`, but unreplied, so unassured and short-lived
///   until the other side answers (see the engine's timeouts).
/// - FIN, RST, SYN+ACK or no flag at all: `None` (a FIN first must not create
///   an established connection; a SYN+ACK first is the answer to a SYN we never saw).
pub fn tcp_open(ev: TcpEvent) -> Option<TcpState> {
    match ev {
        TcpEvent::Syn => Some(TcpState::SynSent),
        TcpEvent::Ack => Some(TcpState::Established),
        _ => None,
    }
}

/// The EIM mapping an entry holds a reference on.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct MapKey<A = Ipv4Addr> {
    /// Protocol.
    pub proto: u8,
    /// Internal address.
    pub ip: A,
    /// Internal port (or ICMP id).
    pub port: u16,
}

/// The EIM mapping(s) an entry refers to, derived from its tuples instead of stored.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MapRef {
    /// None (DNAT only, or not translated).
    None,
    /// Source-translated: internal endpoint `orig.src:orig.sport`, external port `reply.dport`.
    Outbound,
    /// Opened from outside through a mapping: internal `reply.src:reply.sport`, external `orig.dport`.
    Inbound,
    /// Hairpinned from the LAN through another host's mapping: both of the
    /// above (the sender's outbound mapping and the target's mapping).
    Hairpin,
}

/// Sentinel for "no entry" in the intrusive lists.
const NIL: u32 = u32::MAX;

/// A doubly-linked list link (slot indices).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Link {
    prev: u32,
    next: u32,
}

const UNLINKED: Link = Link {
    prev: NIL,
    next: NIL,
};

/// A tracked connection.
///
/// 104 bytes: the two tuples, counters, expiry, and three intrusive list
/// links (timer wheel slot, global unassured FIFO, its host's unassured FIFO).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<A = Ipv4Addr> {
    /// Tuple of the first packet, as the initiator sent it.
    pub orig: Tuple<A>,
    /// Tuple of replies, as they arrive (before translation).
    pub reply: Tuple<A>,
    /// When it expires (ms). Change it through [`Table::set_expires`].
    pub expires: u64,
    /// Bytes per direction (saturating).
    pub bytes: [u64; 2],
    /// Packets per direction (saturating).
    pub packets: [u32; 2],
    wheel: Link,
    fifo: Link,
    host_fifo: Link,
    host: u32,
    wslot: u16,
    /// Which EIM mapping(s) this entry holds a reference on (see [`MapRef`]).
    pub map: MapRef,
    /// TCP state (TCP only).
    pub tcp: TcpState,
    /// Direction of the first FIN.
    pub fin_dir: Option<Dir>,
    /// A packet was seen in the reply direction (netfilter's SEEN_REPLY).
    pub seen_reply: bool,
    /// TCP picked up mid-stream (first packet not a SYN).
    pub pickup: bool,
    assured: bool,
    live: bool,
}

impl<A: Family> Entry<A> {
    /// A fresh entry.
    pub fn new(orig: Tuple<A>, reply: Tuple<A>, expires: u64) -> Entry<A> {
        Entry {
            orig,
            reply,
            expires,
            bytes: [0; 2],
            packets: [0; 2],
            wheel: UNLINKED,
            fifo: UNLINKED,
            host_fifo: UNLINKED,
            host: NIL,
            wslot: 0,
            map: MapRef::None,
            tcp: TcpState::SynSent,
            fin_dir: None,
            seen_reply: false,
            pickup: false,
            assured: false,
            live: false,
        }
    }

    /// Assured: traffic was seen both ways (and, for TCP, the connection is
    /// established). Assured entries are never evicted early. Set through
    /// [`Table::set_assured`].
    pub fn assured(&self) -> bool {
        self.assured
    }

    /// The host this entry is charged to ([`Table::host`]), if any.
    pub fn host(&self) -> Option<HostId> {
        (self.host != NIL).then_some(self.host)
    }

    /// The mapping keys and external ports this entry holds references on.
    pub fn mappings(&self) -> [Option<(MapKey<A>, u16)>; 2] {
        let out = (
            MapKey {
                proto: self.orig.proto,
                ip: self.orig.src,
                port: self.orig.sport,
            },
            self.reply.dport,
        );
        let inb = (
            MapKey {
                proto: self.orig.proto,
                ip: self.reply.src,
                port: self.reply.sport,
            },
            self.orig.dport,
        );
        match self.map {
            MapRef::None => [None, None],
            MapRef::Outbound => [Some(out), None],
            MapRef::Inbound => [Some(inb), None],
            MapRef::Hairpin => [Some(out), Some(inb)],
        }
    }

    /// The first mapping key and external port this entry refers to.
    pub fn mapping(&self) -> Option<(MapKey<A>, u16)> {
        self.mappings()[0]
    }
}

/// Identifier of an entry (slot index, below [`MAX_ENTRIES`]).
pub type EntryId = u32;
/// Identifier of a host record (slot index).
pub type HostId = u32;

/// Largest table.
pub const MAX_ENTRIES: usize = 1 << 24;

const WHEEL_SLOTS: usize = 4096;
/// Wheel tick in ms.
const TICK_MS: u64 = 1000;

/// What [`Table::insert`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Insert<A = Ipv4Addr> {
    /// Inserted.
    Ok(EntryId),
    /// Inserted after evicting an unassured entry (returned for cleanup).
    Evicted(EntryId, Entry<A>),
    /// Table full of assured entries.
    Full,
    /// The host is at its entry limit and has no unassured entry to give up.
    HostFull,
    /// A tuple is already indexed (a clash).
    Clash,
}

/// Per-internal-host accounting (RFC 6888 REQ-4 style limits).
///
/// A record lives while its host has entries or mappings; its counters
/// (`evicted`, `drops`) go with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host<A = Ipv4Addr> {
    /// The internal address.
    pub addr: A,
    /// Entries charged to this host.
    pub entries: u32,
    /// Of which unassured.
    pub unassured: u32,
    /// EIM mappings held, per protocol (TCP, UDP, ICMP).
    pub mappings: [u32; 3],
    /// This host's entries evicted to make room (for itself or others).
    pub evicted: u64,
    /// This host's packets dropped for want of room, by cause: its own
    /// limit, a full table, no free port, its new-flow rate (the engine's
    /// `nat-host-limit`, `nat-table-full`, `nat-ports-exhausted`, `nat-host-rate`).
    pub drops: [u64; 4],
    /// New-flow token bucket (milli-flows) and when it was last filled (ms);
    /// `None`: never used, full.
    pub tokens: u64,
    /// See `tokens`.
    pub bucket_at: Option<u64>,
    head: u32,
    tail: u32,
    live: bool,
}

/// Which intrusive FIFO of unassured entries.
#[derive(Clone, Copy)]
enum Fifo {
    Global,
    Host(HostId),
}

/// The bounded connection table.
///
/// Memory: `max` entry slots (104 B each, grown on demand, never beyond
/// `max`), two 4-byte index slots per entry in a SwissTable (`id << 1 |
/// direction`; the tuples live in the slot), 4096 wheel heads, and one
/// [`Host`] record per internal host with state. Every list (wheel slots,
/// free slots, unassured FIFOs) is intrusive, so nothing grows with the rate
/// of new flows and removal is O(1).
///
/// Eviction when an entry cannot be added: a host at its own limit
/// (`host_max`) gives up its oldest unassured entry, else gets
/// [`Insert::HostFull`]; a full table gives up its oldest unassured entry
/// (which, under a flood, belongs to the flooding host), else [`Insert::Full`].
#[derive(Clone)]
pub struct Table<A: Family = Ipv4Addr> {
    slots: Vec<Entry<A>>,
    free: u32,
    index: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::FixedState,
    wheel: Box<[u32]>,
    tick: u64,
    started: bool,
    fifo_head: u32,
    fifo_tail: u32,
    hosts: Vec<Host<A>>,
    hosts_free: Vec<HostId>,
    host_index: HashMap<A, HostId, foldhash::fast::FixedState>,
    len: usize,
    max: usize,
    host_max: usize,
}

impl<A: Family> Table<A> {
    /// An empty table of at most `max` entries (capped at [`MAX_ENTRIES`]); `seed` keys the hash.
    pub fn new(max: usize, seed: u64) -> Table<A> {
        Table::with_host_limit(max, max, seed)
    }

    /// As [`Table::new`], with at most `host_max` entries per host.
    pub fn with_host_limit(max: usize, host_max: usize, seed: u64) -> Table<A> {
        let max = max.clamp(1, MAX_ENTRIES);
        Table {
            slots: Vec::new(),
            free: NIL,
            index: hashbrown::HashTable::new(),
            hasher: foldhash::fast::FixedState::with_seed(seed),
            wheel: vec![NIL; WHEEL_SLOTS].into_boxed_slice(),
            tick: 0,
            started: false,
            fifo_head: NIL,
            fifo_tail: NIL,
            hosts: Vec::new(),
            hosts_free: Vec::new(),
            host_index: HashMap::with_hasher(foldhash::fast::FixedState::with_seed(seed ^ 0x4057)),
            len: 0,
            max,
            host_max: host_max.clamp(1, max),
        }
    }

    /// Number of live entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bound.
    pub fn max(&self) -> usize {
        self.max
    }

    /// The per-host bound.
    pub fn host_max(&self) -> usize {
        self.host_max
    }

    fn hash(&self, t: &Tuple<A>) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(t)
    }

    fn tuple_of(slots: &[Entry<A>], v: u32) -> &Tuple<A> {
        let e = &slots[(v >> 1) as usize];
        if v & 1 == 0 { &e.orig } else { &e.reply }
    }

    fn find(&self, t: &Tuple<A>) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(self.hash(t), |&v| Self::tuple_of(slots, v) == t)
            .copied()
    }

    /// The entry indexed under `t` if it has expired by `now` but was not
    /// swept yet (it would make a new entry for `t` a clash).
    pub fn find_expired(&self, t: &Tuple<A>, now: u64) -> Option<EntryId> {
        let id = self.find(t)? >> 1;
        let e = &self.slots[id as usize];
        (e.live && e.expires <= now).then_some(id)
    }

    /// Find the entry a packet with tuple `t` belongs to, if live at `now`.
    pub fn lookup(&self, t: &Tuple<A>, now: u64) -> Option<(EntryId, Dir)> {
        let v = self.find(t)?;
        let id = v >> 1;
        let e = &self.slots[id as usize];
        let dir = if v & 1 == 0 {
            Dir::Original
        } else {
            Dir::Reply
        };
        (e.live && e.expires > now).then_some((id, dir))
    }

    /// The entry `id` (live or not).
    pub fn get(&self, id: EntryId) -> &Entry<A> {
        &self.slots[id as usize]
    }

    /// The entry `id`, mutable. Use [`Table::set_expires`] and
    /// [`Table::set_assured`] for the fields the table's lists depend on.
    pub fn get_mut(&mut self, id: EntryId) -> &mut Entry<A> {
        &mut self.slots[id as usize]
    }

    // ---- hosts -------------------------------------------------------------

    /// The record of host `addr`, created if needed. `None` if the host table
    /// is full (it holds at most `max` + 1 records: a record lives only while
    /// its host has entries or mappings).
    pub fn host(&mut self, addr: A) -> Option<HostId> {
        if let Some(&h) = self.host_index.get(&addr) {
            return Some(h);
        }
        if self.host_index.len() > self.max {
            return None;
        }
        let rec = Host {
            addr,
            entries: 0,
            unassured: 0,
            mappings: [0; 3],
            evicted: 0,
            drops: [0; 4],
            tokens: 0,
            bucket_at: None,
            head: NIL,
            tail: NIL,
            live: true,
        };
        let h = match self.hosts_free.pop() {
            Some(h) => {
                self.hosts[h as usize] = rec;
                h
            }
            None => {
                self.hosts.push(rec);
                (self.hosts.len() - 1) as HostId
            }
        };
        self.host_index.insert(addr, h);
        Some(h)
    }

    /// The record of host `addr`, if it has one.
    pub fn find_host(&self, addr: A) -> Option<HostId> {
        self.host_index.get(&addr).copied()
    }

    /// Host record `h`.
    pub fn host_rec(&self, h: HostId) -> &Host<A> {
        &self.hosts[h as usize]
    }

    /// Host record `h`, mutable (for its mapping and drop counters).
    pub fn host_rec_mut(&mut self, h: HostId) -> &mut Host<A> {
        &mut self.hosts[h as usize]
    }

    /// Forget host `h` if it has neither entries nor mappings left.
    pub fn host_gc(&mut self, h: HostId) {
        let Some(rec) = self.hosts.get_mut(h as usize) else {
            return;
        };
        if rec.live && rec.entries == 0 && rec.mappings == [0; 3] {
            rec.live = false;
            let addr = rec.addr;
            self.host_index.remove(&addr);
            self.hosts_free.push(h);
        }
    }

    /// Live host records.
    pub fn hosts(&self) -> impl Iterator<Item = &Host<A>> {
        self.hosts.iter().filter(|h| h.live)
    }

    /// The oldest unassured entry of host `h` (or of the whole table).
    pub fn oldest_unassured(&self, h: Option<HostId>) -> Option<EntryId> {
        let id = match h {
            Some(h) => self.hosts[h as usize].head,
            None => self.fifo_head,
        };
        (id != NIL).then_some(id)
    }

    /// The next (younger) unassured entry after `id` in the same FIFO.
    pub fn next_unassured(&self, id: EntryId, h: Option<HostId>) -> Option<EntryId> {
        let e = &self.slots[id as usize];
        let n = match h {
            Some(_) => e.host_fifo.next,
            None => e.fifo.next,
        };
        (n != NIL).then_some(n)
    }

    // ---- intrusive lists ---------------------------------------------------

    fn fifo_link(&mut self, id: EntryId, f: Fifo) -> &mut Link {
        let e = &mut self.slots[id as usize];
        match f {
            Fifo::Global => &mut e.fifo,
            Fifo::Host(_) => &mut e.host_fifo,
        }
    }

    fn fifo_ends(&mut self, f: Fifo) -> (&mut u32, &mut u32) {
        match f {
            Fifo::Global => (&mut self.fifo_head, &mut self.fifo_tail),
            Fifo::Host(h) => {
                let r = &mut self.hosts[h as usize];
                (&mut r.head, &mut r.tail)
            }
        }
    }

    fn fifo_push(&mut self, id: EntryId, f: Fifo) {
        let tail = *self.fifo_ends(f).1;
        *self.fifo_link(id, f) = Link {
            prev: tail,
            next: NIL,
        };
        if tail == NIL {
            *self.fifo_ends(f).0 = id;
        } else {
            self.fifo_link(tail, f).next = id;
        }
        *self.fifo_ends(f).1 = id;
    }

    fn fifo_unlink(&mut self, id: EntryId, f: Fifo) {
        let l = std::mem::replace(self.fifo_link(id, f), UNLINKED);
        if l.prev == NIL {
            *self.fifo_ends(f).0 = l.next;
        } else {
            self.fifo_link(l.prev, f).next = l.next;
        }
        if l.next == NIL {
            *self.fifo_ends(f).1 = l.prev;
        } else {
            self.fifo_link(l.next, f).prev = l.prev;
        }
    }

    fn unassured_push(&mut self, id: EntryId) {
        self.fifo_push(id, Fifo::Global);
        let h = self.slots[id as usize].host;
        if h != NIL {
            self.fifo_push(id, Fifo::Host(h));
            self.hosts[h as usize].unassured += 1;
        }
    }

    fn unassured_unlink(&mut self, id: EntryId) {
        self.fifo_unlink(id, Fifo::Global);
        let h = self.slots[id as usize].host;
        if h != NIL {
            self.fifo_unlink(id, Fifo::Host(h));
            let r = &mut self.hosts[h as usize];
            r.unassured = r.unassured.saturating_sub(1);
        }
    }

    fn wheel_unlink(&mut self, id: EntryId) {
        let (l, slot) = {
            let e = &mut self.slots[id as usize];
            (std::mem::replace(&mut e.wheel, UNLINKED), e.wslot as usize)
        };
        if l.prev == NIL {
            self.wheel[slot] = l.next;
        } else {
            self.slots[l.prev as usize].wheel.next = l.next;
        }
        if l.next != NIL {
            self.slots[l.next as usize].wheel.prev = l.prev;
        }
    }

    fn tick_of(ms: u64) -> u64 {
        ms / TICK_MS
    }

    /// Put entry `id` (not in the wheel) into the slot of its expiry, as
    /// seen from tick `base`: within (base, base + slots); later expiries
    /// are parked at the horizon and re-checked then.
    fn wheel_insert(&mut self, id: EntryId, base: u64) {
        let t = Self::tick_of(self.slots[id as usize].expires).clamp(
            base.saturating_add(1),
            base.saturating_add(WHEEL_SLOTS as u64 - 1),
        );
        let slot = (t % WHEEL_SLOTS as u64) as usize;
        let head = self.wheel[slot];
        {
            let e = &mut self.slots[id as usize];
            e.wslot = slot as u16;
            e.wheel = Link {
                prev: NIL,
                next: head,
            };
        }
        if head != NIL {
            self.slots[head as usize].wheel.prev = id;
        }
        self.wheel[slot] = id;
    }

    /// Set `expires` of entry `id`. Moving it later costs nothing (the wheel
    /// re-checks when the old slot comes due); moving it earlier reschedules.
    pub fn set_expires(&mut self, id: EntryId, expires: u64) {
        let e = &mut self.slots[id as usize];
        let old = e.expires;
        e.expires = expires;
        if e.live && Self::tick_of(expires) < Self::tick_of(old) {
            self.wheel_unlink(id);
            self.wheel_insert(id, self.tick);
        }
    }

    /// Mark entry `id` assured (taken off the unassured FIFOs) or not (put
    /// back at their young end, evictable again).
    pub fn set_assured(&mut self, id: EntryId, assured: bool) {
        let e = &self.slots[id as usize];
        if !e.live || e.assured == assured {
            return;
        }
        if assured {
            self.unassured_unlink(id);
        } else {
            self.unassured_push(id);
        }
        self.slots[id as usize].assured = assured;
    }

    /// Insert `e` under both tuples, charged to no host (see [`Table::insert_for`]).
    pub fn insert(&mut self, e: Entry<A>, now: u64) -> Insert<A> {
        self.insert_for(e, None, now)
    }

    /// Insert `e` (unassured) under both tuples, charged to host `host`.
    /// Makes room first if needed: a host at its limit gives up its own
    /// oldest unassured entry; a full table its oldest unassured entry.
    pub fn insert_for(&mut self, mut e: Entry<A>, host: Option<HostId>, now: u64) -> Insert<A> {
        if e.orig == e.reply || self.find(&e.orig).is_some() || self.find(&e.reply).is_some() {
            return Insert::Clash;
        }
        let mut evicted = None;
        if let Some(h) = host
            && self.hosts[h as usize].entries as usize >= self.host_max
        {
            match self.oldest_unassured(Some(h)) {
                Some(old) => evicted = self.remove(old),
                None => return Insert::HostFull,
            }
        }
        if evicted.is_none() && self.len >= self.max {
            match self.oldest_unassured(None) {
                Some(old) => evicted = self.remove(old),
                None => return Insert::Full,
            }
        }
        if let Some(x) = &evicted
            && x.host != NIL
        {
            self.hosts[x.host as usize].evicted += 1;
        }
        let id = if self.free != NIL {
            let id = self.free;
            self.free = self.slots[id as usize].wheel.next;
            id
        } else {
            if self.slots.len() == self.slots.capacity() {
                // Grow by doubling, but never beyond the bound.
                let want = (self.slots.len() * 2).max(16).min(self.max) - self.slots.len();
                self.slots.reserve_exact(want);
            }
            self.slots.push(Entry::new(e.orig, e.reply, 0));
            (self.slots.len() - 1) as EntryId
        };
        e.live = true;
        e.assured = false;
        e.wheel = UNLINKED;
        e.fifo = UNLINKED;
        e.host_fifo = UNLINKED;
        e.host = host.unwrap_or(NIL);
        let (ho, hr) = (self.hash(&e.orig), self.hash(&e.reply));
        self.slots[id as usize] = e;
        let (slots, hasher) = (&self.slots, &self.hasher);
        let rehash = |v: &u32| {
            use std::hash::BuildHasher;
            hasher.hash_one(Self::tuple_of(slots, *v))
        };
        self.index.insert_unique(ho, id << 1, rehash);
        self.index.insert_unique(hr, id << 1 | 1, rehash);
        self.len += 1;
        if let Some(h) = host {
            self.hosts[h as usize].entries += 1;
        }
        if !self.started {
            self.started = true;
            self.tick = Self::tick_of(now);
        }
        self.wheel_insert(id, self.tick);
        self.unassured_push(id);
        match evicted {
            Some(x) => Insert::Evicted(id, x),
            None => Insert::Ok(id),
        }
    }

    fn unindex(&mut self, t: &Tuple<A>) {
        let slots = &self.slots;
        if let Ok(entry) = self
            .index
            .find_entry(self.hash(t), |&v| Self::tuple_of(slots, v) == t)
        {
            entry.remove();
        }
    }

    /// Remove entry `id`, returning it (its host record stays until [`Table::host_gc`]).
    pub fn remove(&mut self, id: EntryId) -> Option<Entry<A>> {
        let e = self.slots.get(id as usize)?;
        if !e.live {
            return None;
        }
        let (o, r, assured, h) = (e.orig, e.reply, e.assured, e.host);
        self.unindex(&o);
        self.unindex(&r);
        self.wheel_unlink(id);
        if !assured {
            self.unassured_unlink(id);
        }
        if h != NIL {
            let rec = &mut self.hosts[h as usize];
            rec.entries = rec.entries.saturating_sub(1);
        }
        let e = &mut self.slots[id as usize];
        e.live = false;
        let out = e.clone();
        // The free list reuses the wheel link.
        e.wheel = Link {
            prev: NIL,
            next: self.free,
        };
        self.free = id;
        self.len -= 1;
        Some(out)
    }

    /// Remove entries that expired by `now`, walking only the wheel slots that
    /// came due (at most one lap, whatever the gap since the last call);
    /// `on_removed` sees each removed entry.
    pub fn expire(&mut self, now: u64, on_removed: impl FnMut(Entry<A>)) {
        self.expire_some(now, usize::MAX, on_removed);
    }

    /// [`Table::expire`] visiting at most `budget` entries (at least one):
    /// returns true when everything due by `now` was walked, false when work
    /// is left for the next call (the partly walked slot is walked again, so
    /// nothing is skipped). Bounds the pause when many entries fall due in
    /// the same tick (a flood's entries all time out together).
    pub fn expire_some(
        &mut self,
        now: u64,
        budget: usize,
        mut on_removed: impl FnMut(Entry<A>),
    ) -> bool {
        let target = Self::tick_of(now);
        if !self.started {
            self.started = true;
            self.tick = target;
            return true;
        }
        if target <= self.tick {
            return true;
        }
        let mut budget = budget.max(1);
        // After a pause of a lap or more, one lap visits every slot once:
        // every entry is checked, and rescheduled relative to the tick walked.
        let mut t = if target - self.tick > WHEEL_SLOTS as u64 {
            target - WHEEL_SLOTS as u64
        } else {
            self.tick
        };
        while t < target {
            t += 1;
            let slot = (t % WHEEL_SLOTS as u64) as usize;
            // Detach the slot's list, then re-home or remove each entry.
            let mut id = std::mem::replace(&mut self.wheel[slot], NIL);
            while id != NIL {
                if budget == 0 {
                    // Out of budget: the rest of the list goes back to its
                    // slot (walked entries were removed or re-homed to other
                    // slots, so the slot is empty) and the tick stays before
                    // it, so the next call walks it again.
                    self.slots[id as usize].wheel.prev = NIL;
                    self.wheel[slot] = id;
                    self.tick = t - 1;
                    return false;
                }
                budget -= 1;
                let next = self.slots[id as usize].wheel.next;
                self.slots[id as usize].wheel = UNLINKED;
                if self.slots[id as usize].expires <= now {
                    // Not in any wheel list now: give remove() a consistent view.
                    self.slots[id as usize].wslot = slot as u16;
                    let head = self.wheel[slot];
                    self.slots[id as usize].wheel = Link {
                        prev: NIL,
                        next: head,
                    };
                    if head != NIL {
                        self.slots[head as usize].wheel.prev = id;
                    }
                    self.wheel[slot] = id;
                    if let Some(x) = self.remove(id) {
                        on_removed(x);
                    }
                } else {
                    self.wheel_insert(id, t);
                }
                id = next;
            }
        }
        self.tick = target;
        true
    }

    /// Live entries with their ids.
    pub fn iter(&self) -> impl Iterator<Item = (EntryId, &Entry<A>)> {
        self.iter_from(0)
    }

    /// Live entries with their ids, from slot `first` on (for paged listings).
    pub fn iter_from(&self, first: usize) -> impl Iterator<Item = (EntryId, &Entry<A>)> {
        self.slots
            .iter()
            .enumerate()
            .skip(first)
            .filter(|(_, e)| e.live)
            .map(|(i, e)| (i as EntryId, e))
    }

    /// Check every internal invariant (tests): list membership matches the
    /// entries' state, counts match, no entry is lost by the wheel.
    pub fn check_invariants(&self) -> Result<(), String> {
        let live = self.slots.iter().filter(|e| e.live).count();
        if live != self.len || self.len > self.max {
            return Err(format!("len {} live {live} max {}", self.len, self.max));
        }
        let mut in_wheel = 0;
        for (s, &head) in self.wheel.iter().enumerate() {
            let (mut id, mut prev) = (head, NIL);
            while id != NIL {
                let e = &self.slots[id as usize];
                if !e.live || e.wslot as usize != s || e.wheel.prev != prev {
                    return Err(format!("wheel slot {s}: bad entry {id}"));
                }
                in_wheel += 1;
                prev = id;
                id = e.wheel.next;
            }
        }
        if in_wheel != self.len {
            return Err(format!(
                "{in_wheel} entries in the wheel, {} live",
                self.len
            ));
        }
        let unassured = self.slots.iter().filter(|e| e.live && !e.assured).count();
        let (mut n, mut id) = (0, self.fifo_head);
        while id != NIL {
            n += 1;
            id = self.slots[id as usize].fifo.next;
        }
        if n != unassured {
            return Err(format!("{n} in the FIFO, {unassured} unassured"));
        }
        for (h, rec) in self.hosts.iter().enumerate().filter(|(_, r)| r.live) {
            let ents = self
                .slots
                .iter()
                .filter(|e| e.live && e.host == h as u32)
                .count();
            if ents != rec.entries as usize || ents > self.host_max {
                return Err(format!(
                    "host {}: {} entries, counted {}",
                    rec.addr, ents, rec.entries
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(sport: u16) -> Tuple {
        Tuple {
            proto: 17,
            src: Ipv4Addr::new(10, 0, 0, 1),
            dst: Ipv4Addr::new(10, 0, 0, 2),
            sport,
            dport: 53,
        }
    }

    fn entry(sport: u16, expires: u64) -> Entry {
        let o = t(sport);
        Entry::new(o, o.inv(), expires)
    }

    #[test]
    fn lookup_both_directions_and_expiry() {
        let mut tb = Table::new(8, 1);
        let Insert::Ok(id) = tb.insert(entry(1000, 5_000), 0) else {
            panic!()
        };
        assert_eq!(tb.lookup(&t(1000), 1), Some((id, Dir::Original)));
        assert_eq!(tb.lookup(&t(1000).inv(), 1), Some((id, Dir::Reply)));
        assert_eq!(
            tb.lookup(&t(1000), 5_000),
            None,
            "expired entries are never returned"
        );
        let mut removed = 0;
        tb.expire(4_000, |_| removed += 1);
        assert_eq!((removed, tb.len()), (0, 1));
        tb.expire(6_000, |_| removed += 1);
        assert_eq!((removed, tb.len()), (1, 0));
    }

    /// Many entries due in the same tick (a flood timing out together) are
    /// removed a budget at a time; nothing due is skipped, nothing early is
    /// removed, and the wheel stays consistent between the steps.
    #[test]
    fn bounded_expiry_removes_a_tick_in_steps() {
        let mut tb = Table::new(1000, 1);
        tb.expire(0, |_| {}); // start the wheel at tick 0
        for p in 0..300 {
            assert!(matches!(tb.insert(entry(p, 5_500), 0), Insert::Ok(_)));
        }
        for p in 300..310 {
            assert!(matches!(tb.insert(entry(p, 9_500), 0), Insert::Ok(_)));
        }
        let (mut removed, mut calls) = (0, 0);
        loop {
            let mut now_removed = 0;
            let done = tb.expire_some(6_000, 64, |_| now_removed += 1);
            assert!(now_removed <= 64);
            removed += now_removed;
            calls += 1;
            tb.check_invariants().unwrap();
            if done {
                break;
            }
            assert!(calls < 100, "no progress");
        }
        assert_eq!((removed, tb.len()), (300, 10));
        assert!(calls >= 300 / 64, "{calls} calls");
        let mut late = 0;
        assert!(tb.expire_some(10_000, 64, |_| late += 1));
        assert_eq!((late, tb.len()), (10, 0));
    }

    #[test]
    fn refresh_keeps_entry_beyond_first_schedule() {
        let mut tb = Table::new(8, 1);
        let Insert::Ok(id) = tb.insert(entry(1, 2_000), 0) else {
            panic!()
        };
        tb.set_expires(id, 10_000);
        tb.expire(5_000, |_| panic!("refreshed entry removed"));
        assert!(tb.lookup(&t(1), 5_000).is_some());
        // Shortening is honoured at the new, earlier time.
        tb.set_expires(id, 6_500);
        let mut n = 0;
        tb.expire(7_000, |_| n += 1);
        assert_eq!(n, 1);
    }

    #[test]
    fn long_timeouts_survive_the_wheel_horizon() {
        let mut tb = Table::new(8, 1);
        let long = 7_440_000; // 2 h 4 min, beyond the 4096 s wheel
        tb.insert(entry(1, long), 0);
        for s in (0..=7_439).step_by(97) {
            tb.expire(s * 1000, |_| panic!("removed early at {s} s"));
        }
        assert_eq!(tb.len(), 1);
        let mut n = 0;
        tb.expire(long + 1000, |_| n += 1);
        assert_eq!(n, 1);
    }

    #[test]
    fn full_table_evicts_oldest_unassured_never_assured() {
        let mut tb = Table::new(2, 1);
        let Insert::Ok(a) = tb.insert(entry(1, 100_000), 0) else {
            panic!()
        };
        let Insert::Ok(_b) = tb.insert(entry(2, 100_000), 0) else {
            panic!()
        };
        tb.set_assured(a, true);
        match tb.insert(entry(3, 100_000), 1) {
            Insert::Evicted(_, e) => assert_eq!(e.orig.sport, 2),
            other => panic!("{other:?}"),
        }
        let id3 = tb.lookup(&t(3), 2).unwrap().0;
        tb.set_assured(id3, true);
        assert_eq!(tb.insert(entry(4, 100_000), 2), Insert::Full);
        assert_eq!(tb.len(), 2);
    }

    /// Regression: after a gap of more than one wheel lap between `expire()`
    /// calls, entries scheduled before the gap were skipped as "stale" and
    /// stayed in the index forever (their tuple could never be tracked again).
    #[test]
    fn wheel_lap_gap_loses_nothing() {
        let mut tb = Table::new(64, 1);
        for i in 0..32u16 {
            tb.insert(entry(i, 1_000 * (1 + u64::from(i) * 300)), 0);
        }
        tb.expire(500, |_| {});
        // Nothing for three laps of the wheel (12,288 s), then one call.
        let mut n = 0;
        tb.expire(3 * 4096 * 1000, |_| n += 1);
        assert_eq!((n, tb.len()), (32, 0));
        tb.check_invariants().unwrap();
        // The tuples can be tracked again.
        assert!(matches!(
            tb.insert(entry(0, 20_000_000), 12_300_000),
            Insert::Ok(_)
        ));
        // Entries that outlive a gap are kept and still expire on time.
        let mut tb = Table::new(8, 1);
        tb.insert(entry(1, 20_000_000), 0);
        tb.expire(10_000_000, |_| panic!("early"));
        tb.expire(19_999_000, |_| panic!("early"));
        let mut n = 0;
        tb.expire(20_000_000, |_| n += 1);
        assert_eq!(n, 1);
    }

    /// Memory is bounded by the slot count whatever the churn: slots are
    /// reused and the wheel holds only live entries.
    #[test]
    fn churn_reuses_slots() {
        let mut tb = Table::new(16, 1);
        for i in 0..10_000u16 {
            let _ = tb.insert(entry(i, 100_000_000 + u64::from(i)), u64::from(i));
            if i % 7 == 0 {
                tb.expire(u64::from(i) * 1000, |_| {});
            }
        }
        assert_eq!(tb.len(), 16);
        assert!(tb.slots.capacity() <= 16, "{}", tb.slots.capacity());
        tb.check_invariants().unwrap();
    }

    #[test]
    fn host_at_its_limit_evicts_its_own_oldest() {
        let mut tb = Table::with_host_limit(8, 2, 1);
        let a = tb.host(Ipv4Addr::new(10, 0, 0, 1)).unwrap();
        let b = tb.host(Ipv4Addr::new(10, 0, 0, 2)).unwrap();
        let Insert::Ok(b1) = tb.insert_for(entry(100, 100_000), Some(b), 0) else {
            panic!()
        };
        tb.insert_for(entry(1, 100_000), Some(a), 0);
        tb.insert_for(entry(2, 100_000), Some(a), 0);
        match tb.insert_for(entry(3, 100_000), Some(a), 0) {
            Insert::Evicted(_, e) => assert_eq!(e.orig.sport, 1),
            other => panic!("{other:?}"),
        }
        assert!(
            tb.lookup(&t(100), 1).is_some(),
            "the other host keeps its entry"
        );
        assert_eq!(tb.host_rec(a).evicted, 1);
        // Assured entries are not given up: the host is refused instead.
        for s in [2, 3] {
            let id = tb.lookup(&t(s), 1).unwrap().0;
            tb.set_assured(id, true);
        }
        assert_eq!(
            tb.insert_for(entry(4, 100_000), Some(a), 0),
            Insert::HostFull
        );
        tb.set_assured(b1, true);
        tb.check_invariants().unwrap();
        tb.remove(b1);
        tb.host_gc(b);
        assert_eq!(tb.hosts().count(), 1);
    }

    /// Random operations (inserts charged to a few hosts, removals,
    /// assurance changes, expiry moved both ways, sweeps after gaps of up to
    /// three wheel laps) against a model: the lists stay consistent, nothing
    /// outlives a sweep past its expiry, nothing is removed before it.
    #[test]
    fn random_operations_keep_the_lists_consistent() {
        use proptest::prelude::*;
        use std::collections::HashMap as Model;
        let op = (0u8..6, 0u16..40, 0u64..20_000_000, 0u8..4);
        proptest!(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() },
            |(ops in proptest::collection::vec(op, 1..200), max in 3usize..24, host_max in 1usize..24)| {
            let mut tb = Table::with_host_limit(max, host_max, 7);
            let hosts: Vec<HostId> = (0..4).map(|i| tb.host(Ipv4Addr::new(10, 0, 0, i)).unwrap()).collect();
            let mut model: Model<u16, u64> = Model::new();
            let mut now = 0u64;
            for (kind, port, x, h) in ops {
                match kind {
                    0 | 1 => {
                        let exp = now + 1 + x % 10_000_000;
                        match tb.insert_for(entry(port, exp), Some(hosts[usize::from(h)]), now) {
                            Insert::Ok(_) => { model.insert(port, exp); }
                            Insert::Evicted(_, old) => {
                                prop_assert!(!old.assured());
                                prop_assert!(model.remove(&old.orig.sport).is_some());
                                model.insert(port, exp);
                            }
                            Insert::Clash => prop_assert!(model.contains_key(&port)),
                            Insert::Full | Insert::HostFull => {}
                        }
                    }
                    2 => {
                        if let Some((id, _)) = tb.lookup(&t(port), now) {
                            tb.remove(id);
                            model.remove(&port);
                        }
                    }
                    3 => {
                        if let Some((id, _)) = tb.lookup(&t(port), now) {
                            tb.set_assured(id, x % 2 == 0);
                        }
                    }
                    4 => {
                        if let Some((id, _)) = tb.lookup(&t(port), now) {
                            let exp = now + 1 + x % 10_000_000;
                            tb.set_expires(id, exp);
                            model.insert(port, exp);
                        }
                    }
                    _ => {
                        now += x % 3 * 4_096_000 + x % 5000;
                        tb.expire(now, |e| {
                            let m = model.remove(&e.orig.sport);
                            assert!(m.is_some_and(|m| m <= now), "removed early");
                        });
                        for (p, &exp) in &model {
                            prop_assert!(exp + 2000 > now, "port {} expired at {} still there at {}", p, exp, now);
                        }
                    }
                }
                tb.check_invariants().map_err(TestCaseError::fail)?;
                prop_assert_eq!(tb.len(), model.len());
            }
        });
    }

    #[test]
    fn clash_is_refused() {
        let mut tb = Table::new(4, 1);
        tb.insert(entry(1, 100), 0);
        assert_eq!(tb.insert(entry(1, 100), 0), Insert::Clash);
    }

    /// The TCP transition table, as readable golden text (state × event per direction).
    #[test]
    fn tcp_transitions_golden() {
        let mut out = String::new();
        for dir in [Dir::Original, Dir::Reply] {
            out += &format!("{dir:?}:\n{:<12}", "");
            for ev in TcpEvent::ALL {
                out += &format!("{:<12}", format!("{ev:?}"));
            }
            out += "\n";
            for s in TcpState::ALL {
                out += &format!("{:<12}", s.name());
                for ev in TcpEvent::ALL {
                    // FIN-related states: the first FIN came from the other side.
                    let fin = match s {
                        TcpState::FinWait | TcpState::CloseWait | TcpState::LastAck => {
                            Some(if dir == Dir::Original {
                                Dir::Reply
                            } else {
                                Dir::Original
                            })
                        }
                        _ => None,
                    };
                    out += &format!("{:<12}", tcp_next(s, dir, ev, fin).0.name());
                }
                out += "\n";
            }
        }
        out += "New (first segment, no entry):\n";
        for ev in TcpEvent::ALL {
            let s = tcp_open(ev).map_or("INVALID", TcpState::name);
            out += &format!("{:<12}{s}\n", format!("{ev:?}"));
        }
        let out: String = out.lines().map(|l| format!("{}\n", l.trim_end())).collect();
        let golden = include_str!("../tests/golden/tcp_states.txt");
        assert_eq!(out, golden, "TCP transitions changed; new table:\n{out}");
    }
}
