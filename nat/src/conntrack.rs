//! Connection tracking: tuples, the TCP state machine, and a bounded table
//! that expires entries through a timer wheel.
//!
//! Contract:
//! - An [`Entry`] is indexed under its original tuple (as the initiator sent
//!   it) and its reply tuple (as the reply arrives, before translation).
//! - Time is passed in (`now`, ms). A lookup never returns an expired entry.
//!   [`Table::expire`] removes expired entries by walking only the wheel slots
//!   that came due since the last call (no full-table scan).
//! - The table holds at most `max` entries. When full, [`Table::insert`]
//!   evicts the oldest entry not yet assured (like netfilter's early drop);
//!   assured entries are never evicted. No allocation per packet in steady
//!   state: slots, wheel buckets and the free list are reused.
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

use crate::wire::tcp_flags;
use std::collections::VecDeque;
use std::fmt;
use std::net::Ipv4Addr;

/// A connection tuple. For ICMP queries the identifier plays the port: an
/// echo request is `(src, dst, id, 0)`, an echo reply `(src, dst, 0, id)`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Tuple {
    /// IP protocol.
    pub proto: u8,
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Source port (or ICMP id of a request).
    pub sport: u16,
    /// Destination port (or ICMP id of a reply).
    pub dport: u16,
}

impl Tuple {
    /// The tuple of a packet going the other way.
    pub fn inv(&self) -> Tuple {
        Tuple {
            proto: self.proto,
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
        }
    }
}

impl fmt::Display for Tuple {
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

/// The EIM mapping an entry holds a reference on.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct MapKey {
    /// Protocol.
    pub proto: u8,
    /// Internal address.
    pub ip: Ipv4Addr,
    /// Internal port (or ICMP id).
    pub port: u16,
}

/// The EIM mapping an entry refers to, derived from its tuples instead of stored.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MapRef {
    /// None (DNAT only, or not translated).
    None,
    /// Source-translated: internal endpoint `orig.src:orig.sport`, external port `reply.dport`.
    Outbound,
    /// Opened from outside through a mapping: internal `reply.src:reply.sport`, external `orig.dport`.
    Inbound,
}

impl Entry {
    /// The mapping key and external port this entry refers to.
    pub fn mapping(&self) -> Option<(MapKey, u16)> {
        match self.map {
            MapRef::None => None,
            MapRef::Outbound => Some((
                MapKey {
                    proto: self.orig.proto,
                    ip: self.orig.src,
                    port: self.orig.sport,
                },
                self.reply.dport,
            )),
            MapRef::Inbound => Some((
                MapKey {
                    proto: self.orig.proto,
                    ip: self.reply.src,
                    port: self.reply.sport,
                },
                self.orig.dport,
            )),
        }
    }
}

/// A tracked connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Tuple of the first packet, as the initiator sent it.
    pub orig: Tuple,
    /// Tuple of replies, as they arrive (before translation).
    pub reply: Tuple,
    /// When it expires (ms).
    pub expires: u64,
    /// Bytes per direction.
    pub bytes: [u64; 2],
    /// Packets per direction (saturating).
    pub packets: [u32; 2],
    /// Which EIM mapping this entry holds a reference on (see [`MapRef`]).
    pub map: MapRef,
    /// TCP state (TCP only).
    pub tcp: TcpState,
    /// Direction of the first FIN.
    pub fin_dir: Option<Dir>,
    /// Seen traffic both ways (UDP/ICMP) or established (TCP); never evicted early.
    pub assured: bool,
    generation: u32,
    scheduled: u32,
    live: bool,
}

impl Entry {
    /// A fresh entry.
    pub fn new(orig: Tuple, reply: Tuple, expires: u64) -> Entry {
        Entry {
            orig,
            reply,
            expires,
            bytes: [0; 2],
            packets: [0; 2],
            map: MapRef::None,
            tcp: TcpState::SynSent,
            fin_dir: None,
            assured: false,
            generation: 0,
            scheduled: 0,
            live: false,
        }
    }
}

/// Identifier of an entry (slot index, below 2^24).
pub type EntryId = u32;

/// Largest table (entry ids and wheel references use 24 bits).
pub const MAX_ENTRIES: usize = 1 << 24;

const WHEEL_SLOTS: usize = 4096;
/// Wheel tick in ms.
const TICK_MS: u64 = 1000;

/// What [`Table::insert`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Insert {
    /// Inserted.
    Ok(EntryId),
    /// Inserted after evicting an unassured entry (returned for cleanup).
    Evicted(EntryId, Entry),
    /// Table full of assured entries.
    Full,
    /// A tuple is already indexed (a clash).
    Clash,
}

/// A 4-byte reference to an entry: id (24 bits) and the low 8 bits of its
/// generation, so references that outlived their entry are recognised.
#[derive(Clone, Copy)]
struct Ref(u32);

impl Ref {
    fn new(id: EntryId, generation: u32) -> Ref {
        Ref(id | (generation & 0xff) << 24)
    }
    fn id(self) -> EntryId {
        self.0 & 0x00ff_ffff
    }
    fn matches(self, e: &Entry) -> bool {
        e.live && (e.generation & 0xff) == self.0 >> 24
    }
}

/// The bounded connection table.
///
/// Memory per entry: the slot (`Entry`, 80 bytes), two 4-byte index slots in
/// a SwissTable (`id << 1 | direction`; the tuples live in the slot), a 4-byte
/// wheel reference and, while unassured, a 4-byte FIFO reference.
pub struct Table {
    slots: Vec<Entry>,
    free: Vec<EntryId>,
    index: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::FixedState,
    wheel: Vec<Vec<Ref>>,
    tick: u64,
    unassured: VecDeque<Ref>,
    len: usize,
    max: usize,
}

impl Table {
    /// An empty table of at most `max` entries (capped at [`MAX_ENTRIES`]); `seed` keys the hash.
    pub fn new(max: usize, seed: u64) -> Table {
        Table {
            slots: Vec::new(),
            free: Vec::new(),
            index: hashbrown::HashTable::new(),
            hasher: foldhash::fast::FixedState::with_seed(seed),
            wheel: (0..WHEEL_SLOTS).map(|_| Vec::new()).collect(),
            tick: u64::MAX,
            unassured: VecDeque::new(),
            len: 0,
            max: max.clamp(1, MAX_ENTRIES),
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

    fn hash(&self, t: &Tuple) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(t)
    }

    fn tuple_of(slots: &[Entry], v: u32) -> &Tuple {
        let e = &slots[(v >> 1) as usize];
        if v & 1 == 0 { &e.orig } else { &e.reply }
    }

    fn find(&self, t: &Tuple) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(self.hash(t), |&v| Self::tuple_of(slots, v) == t)
            .copied()
    }

    /// Find the entry a packet with tuple `t` belongs to, if live at `now`.
    pub fn lookup(&self, t: &Tuple, now: u64) -> Option<(EntryId, Dir)> {
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
    pub fn get(&self, id: EntryId) -> &Entry {
        &self.slots[id as usize]
    }

    /// The entry `id`, mutable.
    pub fn get_mut(&mut self, id: EntryId) -> &mut Entry {
        &mut self.slots[id as usize]
    }

    fn tick_of(ms: u64) -> u64 {
        ms / TICK_MS
    }

    fn schedule(&mut self, id: EntryId) {
        let e = &mut self.slots[id as usize];
        let now_tick = if self.tick == u64::MAX { 0 } else { self.tick };
        // Beyond the wheel's horizon: park at the horizon and re-check then.
        let t = Self::tick_of(e.expires).clamp(now_tick + 1, now_tick + WHEEL_SLOTS as u64 - 1);
        e.scheduled = t as u32;
        let r = Ref::new(id, e.generation);
        self.wheel[(t as usize) % WHEEL_SLOTS].push(r);
    }

    /// Set `expires` of entry `id`; reschedules only when it moves earlier than planned.
    pub fn set_expires(&mut self, id: EntryId, expires: u64) {
        let e = &mut self.slots[id as usize];
        e.expires = expires;
        if Self::tick_of(expires) < u64::from(e.scheduled) {
            self.schedule(id);
        }
    }

    /// Insert `e` under both tuples, evicting the oldest unassured entry if full.
    pub fn insert(&mut self, mut e: Entry, now: u64) -> Insert {
        if e.orig == e.reply || self.find(&e.orig).is_some() || self.find(&e.reply).is_some() {
            return Insert::Clash;
        }
        let mut evicted = None;
        if self.len >= self.max {
            match self.evict_one() {
                Some(x) => evicted = Some(x),
                None => return Insert::Full,
            }
        }
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.slots.push(Entry::new(e.orig, e.reply, 0));
                (self.slots.len() - 1) as EntryId
            }
        };
        let generation = self.slots[id as usize].generation.wrapping_add(1);
        e.generation = generation;
        e.live = true;
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
        if self.tick == u64::MAX {
            self.tick = Self::tick_of(now);
        }
        self.schedule(id);
        self.unassured.push_back(Ref::new(id, generation));
        if self.unassured.len() > 2 * self.max + 64 {
            let slots = &self.slots;
            self.unassured
                .retain(|r| r.matches(&slots[r.id() as usize]) && !slots[r.id() as usize].assured);
        }
        match evicted {
            Some(x) => Insert::Evicted(id, x),
            None => Insert::Ok(id),
        }
    }

    fn evict_one(&mut self) -> Option<Entry> {
        while let Some(r) = self.unassured.pop_front() {
            let e = &self.slots[r.id() as usize];
            if r.matches(e) && !e.assured {
                return self.remove(r.id());
            }
        }
        None
    }

    fn unindex(&mut self, t: &Tuple) {
        let slots = &self.slots;
        if let Ok(entry) = self
            .index
            .find_entry(self.hasher_hash(t), |&v| Self::tuple_of(slots, v) == t)
        {
            entry.remove();
        }
    }

    fn hasher_hash(&self, t: &Tuple) -> u64 {
        self.hash(t)
    }

    /// Remove entry `id`, returning it.
    pub fn remove(&mut self, id: EntryId) -> Option<Entry> {
        let e = &self.slots[id as usize];
        if !e.live {
            return None;
        }
        let (o, r) = (e.orig, e.reply);
        self.unindex(&o);
        self.unindex(&r);
        let e = &mut self.slots[id as usize];
        e.live = false;
        let out = e.clone();
        self.free.push(id);
        self.len -= 1;
        Some(out)
    }

    /// Remove entries that expired by `now`, walking only the wheel slots that
    /// came due; `on_removed` sees each removed entry.
    pub fn expire(&mut self, now: u64, mut on_removed: impl FnMut(Entry)) {
        let target = Self::tick_of(now);
        if self.tick == u64::MAX {
            self.tick = target;
            return;
        }
        // After a long pause, one lap of the wheel covers every slot.
        let start = if target.saturating_sub(self.tick) > WHEEL_SLOTS as u64 {
            target - WHEEL_SLOTS as u64
        } else {
            self.tick
        };
        let mut t = start;
        while t < target {
            t += 1;
            let slot = (t as usize) % WHEEL_SLOTS;
            let mut bucket = std::mem::take(&mut self.wheel[slot]);
            for &r in &bucket {
                let e = &self.slots[r.id() as usize];
                if !r.matches(e) || u64::from(e.scheduled) != t {
                    continue; // stale reference
                }
                if e.expires <= now {
                    if let Some(x) = self.remove(r.id()) {
                        on_removed(x);
                    }
                } else {
                    self.tick = t;
                    self.schedule(r.id());
                }
            }
            // Give the bucket's allocation back for reuse.
            bucket.clear();
            if self.wheel[slot].is_empty() {
                self.wheel[slot] = bucket;
            }
        }
        self.tick = target;
        while let Some(&r) = self.unassured.front() {
            let e = &self.slots[r.id() as usize];
            if r.matches(e) && !e.assured {
                break;
            }
            self.unassured.pop_front();
        }
    }

    /// Live entries with their ids.
    pub fn iter(&self) -> impl Iterator<Item = (EntryId, &Entry)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, e)| e.live)
            .map(|(i, e)| (i as EntryId, e))
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
        tb.get_mut(a).assured = true;
        match tb.insert(entry(3, 100_000), 1) {
            Insert::Evicted(_, e) => assert_eq!(e.orig.sport, 2),
            other => panic!("{other:?}"),
        }
        let id3 = tb.lookup(&t(3), 2).unwrap().0;
        tb.get_mut(id3).assured = true;
        assert_eq!(tb.insert(entry(4, 100_000), 2), Insert::Full);
        assert_eq!(tb.len(), 2);
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
        let out: String = out.lines().map(|l| format!("{}\n", l.trim_end())).collect();
        let golden = include_str!("../tests/golden/tcp_states.txt");
        assert_eq!(out, golden, "TCP transitions changed; new table:\n{out}");
    }
}
