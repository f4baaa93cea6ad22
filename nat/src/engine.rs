//! The NAT engine: MASQUERADE/SNAT and DNAT over the connection table.
//!
//! Contract: [`Nat::process`] takes `now` (ms), the side a packet came from,
//! the IP packet bytes (rewritten in place; `Nat<Ipv4Addr>` for NAT44,
//! `Nat<Ipv6Addr>` for NAT66, the same semantics over [`Family`]) and whether its L4 checksum is
//! partial (CHECKSUM_PARTIAL), plus a routing oracle, and returns a
//! [`Verdict`]. It does no I/O and reads no clock.
//!
//! Model (as netfilter): an entry's original tuple is what the initiator sent,
//! its reply tuple what replies look like on arrival. A packet matching the
//! original tuple is rewritten to `inv(reply)`, one matching the reply tuple to
//! `inv(orig)`. New connections:
//! - from the LAN: DNAT if the destination is a published external port; then
//!   SNAT (masquerade) if the route leaves through the WAN and the source is
//!   masqueraded, or if DNAT sent it back into the LAN (hairpin: the server sees
//!   the external address and port, RFC 4787 REQ-9);
//! - from the WAN to the external address: DNAT rules, else an existing
//!   endpoint-independent mapping if the filtering mode admits the sender.
//!
//! Mappings are endpoint independent (RFC 4787 REQ-1, RFC 5382 REQ-1): one
//! external port per internal (address, port), shared by all its sessions,
//! kept while any session uses it. Ports are preserved when free, keep their
//! class (< 1024 or not, REQ-3a), and are otherwise chosen at random
//! (RFC 6056) or sequentially (deterministic mode).
//!
//! Hairpinning (REQ-9): a LAN packet to `external:P`, where `P` is a DNAT
//! rule or another host's mapping (TCP, UDP port; ICMP echo identifier),
//! goes to that host with its source translated to the sender's own mapping.
//! Hairpinned packets pass endpoint-independent and address-dependent
//! filtering (the sender could reach the host directly); address-and-port-
//! dependent filtering admits only existing sessions. A host sending to its
//! own mapping (the RFC 5780 hairpinning test) gets the packet back from
//! `external:P` without state (its two tuples would be the same).
//!
//! Conntrack semantics (netfilter as reference): an entry is assured only
//! after traffic both ways (SEEN_REPLY; TCP also ESTABLISHED). A TCP
//! connection opens with a SYN, or with an ACK as a mid-stream pickup
//! (ESTABLISHED but unreplied: [`Timeouts::tcp_unreplied`]); a FIN, SYN+ACK,
//! RST or flagless segment opens nothing. A RST leaves the entry CLOSE,
//! unassured, for [`Timeouts::tcp_close`]. UDP never answered lives
//! [`Timeouts::udp_unreplied`]. Timeouts are capped at [`MAX_TIMEOUT_SECS`].
//!
//! Fairness (RFC 6888): entries and mappings are charged to an internal host
//! (the LAN host that opened the connection; connections opened from the WAN
//! go to one pseudo-host, [`OUTSIDE`] = 0.0.0.0). A host at its entry limit gives up its
//! own oldest unassured entry, else gets `nat-host-limit`; at its port limit
//! it gives up its oldest unassured mapping holders (up to 8 tried). A full
//! table gives up its oldest unassured entry; an exhausted port range the
//! oldest unassured mapping holders (up to 16 tried). Under a flood these
//! are the flooder's. Port allocation scans a bitmap by 64-bit words from a
//! random (or sequential) start: at most 1,024 word reads per attempt.
//! References on a mapping are taken before any eviction, so making room
//! never frees the mapping the new entry needs.
//!
//! ICMP errors are translated in both directions with their embedded header
//! (RFC 5508 REQ-4/5) and never create, refresh or remove state. IPv4
//! fragments follow the translation of their first fragment; later fragments
//! that arrive first wait in a bounded pool (REQ-14); IPv6 fragments (the
//! fragment header's identification) the same way.
//!
//! NAT66 differences: ICMPv6 checksums cover the pseudo-header, so echo and
//! error translation update them for address changes too; the transport
//! header is found after the extension headers; state snapshots
//! ([`Nat::export`]) and `explain` are IPv4-only for now.

use crate::checksum::{self, update16, update32, update32_partial};
use crate::conntrack::{
    Dir, Entry, HostId, Insert, MapKey, MapRef, Table, TcpEvent, TcpState, Tuple, tcp_next,
    tcp_open,
};
use crate::family::{Family, Hdr, Net};
pub use crate::family::{Ipv4Net, Ipv6Net};
use crate::snapshot::{ImportReport, NatSnapshot, SavedEntry, SavedHost, SnapshotError};
use crate::wire::tcp::TcpPacket;
use crate::wire::udp::UdpPacket;
use crate::wire::{FlowHeader, proto};
use std::collections::HashMap;
use std::net::Ipv4Addr;

/// Which side a packet came from, or where a route leads.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Side {
    /// The internal network.
    Lan,
    /// The external network (through the uplink).
    Wan,
    /// The gateway itself.
    Local,
}

/// A DNAT (port forwarding) rule on the external address.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DnatRule<A = Ipv4Addr> {
    /// `proto::TCP` or `proto::UDP`.
    pub proto: u8,
    /// External port range, inclusive.
    pub ports: (u16, u16),
    /// Internal address.
    pub to_addr: A,
    /// Internal port of the first external port (the range maps one to one).
    pub to_port: u16,
}

/// Inbound filtering of endpoint-independent mappings (RFC 4787 §5).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Filtering {
    /// Anyone may reach a mapped port.
    EndpointIndependent,
    /// Only addresses the internal endpoint has sent to.
    AddressDependent,
    /// Only address:port pairs the internal endpoint has sent to.
    AddressAndPortDependent,
}

impl Filtering {
    /// Name as in RFC 4787.
    pub fn name(self) -> &'static str {
        match self {
            Filtering::EndpointIndependent => "endpoint-independent",
            Filtering::AddressDependent => "address-dependent",
            Filtering::AddressAndPortDependent => "address-and-port-dependent",
        }
    }
}

/// Port allocation for new mappings.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PortAlloc {
    /// Random (RFC 6056 algorithm 1-like) from this seed.
    Random(u64),
    /// Sequential from the start of the range (tests).
    Sequential,
}

/// Largest timeout accepted anywhere (s): one week. Topology validation
/// refuses more; the engine also uses saturating arithmetic.
pub const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;

/// Timeouts in seconds. Defaults meet RFC 4787/5382/5508 where those set a
/// minimum; the short ones follow netfilter for state that was never answered.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Timeouts {
    /// UDP after a reply was seen (REQ-5: ≥ 120, 300 recommended).
    pub udp: u64,
    /// UDP never answered (at most `udp`; 120 s, the REQ-5 floor; netfilter: 30).
    pub udp_unreplied: u64,
    /// TCP established (RFC 5382 REQ-5: ≥ 7440).
    pub tcp_established: u64,
    /// TCP opening/closing (SYN_SENT, SYN_RECV, FIN_WAIT .. TIME_WAIT; RFC 5382: ≥ 240).
    pub tcp_transitory: u64,
    /// TCP picked up mid-stream (first segment an ACK) until the other side
    /// answers (netfilter `unacknowledged`: 300; here 60).
    pub tcp_unreplied: u64,
    /// TCP after a RST (netfilter `close`: 10).
    pub tcp_close: u64,
    /// ICMP query (RFC 5508 REQ-2: ≥ 60).
    pub icmp: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            udp: 300,
            udp_unreplied: 120,
            tcp_established: 7440,
            tcp_transitory: 240,
            tcp_unreplied: 60,
            tcp_close: 10,
            icmp: 60,
        }
    }
}

/// Default per-host port limit (per protocol): a quarter of the 64,512
/// ports above 1023, so at least four hosts are needed to exhaust them, and
/// far above what one host uses in practice (RFC 6888 REQ-4: limit per subscriber).
pub const DEFAULT_PORTS_PER_HOST: u32 = 16_384;

/// NAT configuration.
#[derive(Clone, Debug)]
pub struct NatConfig<A = Ipv4Addr> {
    /// The external (uplink) address.
    pub external: A,
    /// Sources to masquerade behind `external`.
    pub masquerade: Vec<Net<A>>,
    /// Port range for masquerade mappings of ports ≥ 1024 (inclusive).
    pub port_range: (u16, u16),
    /// Port forwarding rules.
    pub dnat: Vec<DnatRule<A>>,
    /// Inbound filtering.
    pub filtering: Filtering,
    /// Table bound (default 262,144).
    pub max_entries: usize,
    /// Entries per internal host; `None`: a quarter of `max_entries` (so at
    /// least four hosts are needed to fill the table), or all of it for
    /// tables under 64 entries.
    pub max_entries_per_host: Option<usize>,
    /// EIM mappings (external ports) per internal host and protocol
    /// (default [`DEFAULT_PORTS_PER_HOST`]).
    pub max_ports_per_host: u32,
    /// New flows per second an internal host may open (token bucket, burst
    /// one second's worth; 0 = unlimited; default
    /// [`DEFAULT_NEW_FLOWS_PER_HOST`]). Beyond it, new flows are dropped
    /// (`nat-host-rate`) before any state or port is touched, so a flood
    /// costs the worker a lookup per packet and the other hosts nothing.
    /// Connections opened from outside (the [`OUTSIDE`] pseudo-host) are
    /// not rate-limited.
    pub new_flows_per_host: u32,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Port allocation (its seed comes from the caller).
    pub alloc: PortAlloc,
    /// Hash seed.
    pub hash_seed: u64,
    /// Slots for out-of-order fragments.
    pub frag_slots: usize,
}

impl<A: Family> NatConfig<A> {
    /// Defaults for `external`, masquerading nothing yet.
    pub fn new(external: A) -> NatConfig<A> {
        NatConfig {
            external,
            masquerade: Vec::new(),
            port_range: (1024, 65535),
            dnat: Vec::new(),
            filtering: Filtering::AddressDependent,
            max_entries: 262_144,
            max_entries_per_host: None,
            max_ports_per_host: DEFAULT_PORTS_PER_HOST,
            new_flows_per_host: DEFAULT_NEW_FLOWS_PER_HOST,
            timeouts: Timeouts::default(),
            alloc: PortAlloc::Random(0x9e37_79b9_7f4a_7c15),
            hash_seed: 0x5eed,
            frag_slots: 64,
        }
    }

    /// The effective per-host entry limit.
    pub fn entries_per_host(&self) -> usize {
        let max = self.max_entries.max(1);
        match self.max_entries_per_host {
            Some(n) => n.clamp(1, max),
            None if max >= 64 => max / 4,
            None => max,
        }
    }
}

/// Why the NAT dropped a packet.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NatDrop {
    /// Headers too short or inconsistent.
    Malformed,
    /// Inbound to the external address with no mapping or rule.
    NoMapping,
    /// A mapping exists but the filtering mode refuses this sender.
    Filtered,
    /// The table is full of assured entries.
    TableFull,
    /// No free external port.
    PortsExhausted,
    /// A protocol masquerade cannot translate (no ports).
    UnsupportedProtocol,
    /// A TCP segment that cannot open a connection (e.g. RST, or non-SYN from outside).
    InvalidTcp,
    /// An out-of-order fragment with no room to wait.
    FragmentOverflow,
    /// An out-of-order fragment that waited too long.
    FragmentTimeout,
    /// A tuple clash with an existing entry.
    Clash,
    /// The internal host is at its entry or port limit and has nothing
    /// unassured to give up.
    HostLimit,
    /// An ICMP query message that cannot open a connection (an echo reply
    /// without a request: netfilter's INVALID).
    InvalidIcmp,
    /// The internal host opens new flows faster than its rate
    /// ([`NatConfig::new_flows_per_host`]).
    HostRate,
}

impl NatDrop {
    /// Every reason, in counter order.
    pub const ALL: [NatDrop; 13] = [
        NatDrop::Malformed,
        NatDrop::NoMapping,
        NatDrop::Filtered,
        NatDrop::TableFull,
        NatDrop::PortsExhausted,
        NatDrop::UnsupportedProtocol,
        NatDrop::InvalidTcp,
        NatDrop::FragmentOverflow,
        NatDrop::FragmentTimeout,
        NatDrop::Clash,
        NatDrop::HostLimit,
        NatDrop::InvalidIcmp,
        NatDrop::HostRate,
    ];
    /// Stable name.
    pub fn name(self) -> &'static str {
        match self {
            NatDrop::Malformed => "nat-malformed",
            NatDrop::NoMapping => "nat-no-mapping",
            NatDrop::Filtered => "nat-filtered",
            NatDrop::TableFull => "nat-table-full",
            NatDrop::PortsExhausted => "nat-ports-exhausted",
            NatDrop::UnsupportedProtocol => "nat-unsupported-protocol",
            NatDrop::InvalidTcp => "nat-invalid-tcp",
            NatDrop::FragmentOverflow => "nat-fragment-overflow",
            NatDrop::FragmentTimeout => "nat-fragment-timeout",
            NatDrop::Clash => "nat-clash",
            NatDrop::HostLimit => "nat-host-limit",
            NatDrop::HostRate => "nat-host-rate",
            NatDrop::InvalidIcmp => "nat-invalid-icmp",
        }
    }
}

/// What to do with a packet after [`Nat::process`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Verdict {
    /// Rewritten in place; route it by its (new) destination.
    Translated,
    /// Not subject to NAT (LAN-internal, or for the gateway itself); forward or deliver as is.
    NotNatted,
    /// Drop it.
    Drop(NatDrop),
    /// Kept (an early fragment); it comes back through [`Nat::take_released`].
    Stolen,
}

/// Counters.
#[derive(Clone, Debug, Default)]
pub struct NatCounters {
    /// Entries created.
    pub created: u64,
    /// Entries removed by expiry.
    pub expired: u64,
    /// Unassured entries evicted to make room (table, host or port limit).
    pub early_dropped: u64,
    /// Entries deleted on request ([`Nat::delete_from`], `vswitch conntrack -D/-F`).
    pub deleted: u64,
    /// Packets hairpinned statelessly back to their own mapping (RFC 5780 test).
    pub self_hairpins: u64,
    /// Packets translated.
    pub translated: u64,
    /// ICMP errors translated.
    pub icmp_errors: u64,
    /// Hairpinned connections.
    pub hairpins: u64,
    /// Fragments held until their first fragment.
    pub fragments_held: u64,
    /// Drops by [`NatDrop`] reason.
    pub drops: [u64; NatDrop::ALL.len()],
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct FragKey<A> {
    src: A,
    dst: A,
    proto: u8,
    id: u32,
}

#[derive(Clone, Copy)]
struct FragXlate<A> {
    src: A,
    dst: A,
    expires: u64,
}

#[derive(Clone)]
struct FragSlot<A> {
    key: Option<FragKey<A>>,
    since: u64,
    released: bool,
    data: Vec<u8>,
}

/// Largest held fragment.
const FRAG_MAX: usize = 9216;
/// How long a fragment may wait for its first fragment, and how long a
/// datagram's translation is remembered for its later fragments (ms).
const FRAG_WAIT_MS: u64 = 5_000;
const FRAG_MEMORY_MS: u64 = 30_000;

#[derive(Clone)]
struct MapEntry<A> {
    ext_port: u16,
    refs: u32,
    /// The host record the mapping is charged to.
    host: A,
}

/// One entry as `vswitch conntrack` shows it.
#[derive(Clone, Debug)]
pub struct EntryView<A = Ipv4Addr> {
    /// Protocol number.
    pub proto: u8,
    /// TCP state name, or empty.
    pub state: &'static str,
    /// Seconds left.
    pub secs_left: u64,
    /// Original tuple.
    pub orig: Tuple<A>,
    /// Reply tuple.
    pub reply: Tuple<A>,
    /// Packets per direction.
    pub packets: [u64; 2],
    /// Bytes per direction.
    pub bytes: [u64; 2],
    /// Assured.
    pub assured: bool,
}

impl<A: Copy + Into<std::net::IpAddr>> EntryView<A> {
    /// The same view with family-neutral addresses (for listings of both families).
    pub fn widen(&self) -> EntryView<std::net::IpAddr> {
        let t = |t: &Tuple<A>| Tuple {
            proto: t.proto,
            src: t.src.into(),
            dst: t.dst.into(),
            sport: t.sport,
            dport: t.dport,
        };
        EntryView {
            proto: self.proto,
            state: self.state,
            secs_left: self.secs_left,
            orig: t(&self.orig),
            reply: t(&self.reply),
            packets: self.packets,
            bytes: self.bytes,
            assured: self.assured,
        }
    }
}

/// What a step the NAT notes down (see [`Nat::record_notes`]) does to the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Rewrites it.
    Translate,
    /// Leaves it as it is.
    Pass,
    /// Drops it.
    Drop,
}

/// `a:p`, or `[a]:p` for IPv6.
fn show_ep<A: Family>(a: A, p: u16) -> String {
    std::net::SocketAddr::new(a.into(), p).to_string()
}

/// A tuple as `src:sport -> dst:dport`.
fn show<A: Family>(t: &Tuple<A>) -> String {
    format!("{} -> {}", show_ep(t.src, t.sport), show_ep(t.dst, t.dport))
}

/// The view of entry `e` at `now`.
fn view<A: Family>(e: &Entry<A>, now: u64) -> EntryView<A> {
    EntryView {
        proto: e.orig.proto,
        state: if e.orig.proto == proto::TCP {
            e.tcp.name()
        } else {
            ""
        },
        secs_left: e.expires.saturating_sub(now) / 1000,
        orig: e.orig,
        reply: e.reply,
        packets: [u64::from(e.packets[0]), u64::from(e.packets[1])],
        bytes: e.bytes,
        assured: e.assured(),
    }
}

/// One internal host's share, as `vswitch conntrack`/`stats` show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostView<A = Ipv4Addr> {
    /// The internal address.
    pub addr: A,
    /// Entries charged to it.
    pub entries: u32,
    /// Of which unassured (evictable).
    pub unassured: u32,
    /// EIM mappings (external ports) it holds, all protocols.
    pub mappings: u32,
    /// Its entries evicted to make room.
    pub evicted: u64,
    /// Its packets dropped for want of room, all causes.
    pub drops: u64,
    /// The same by cause: `nat-host-limit`, `nat-table-full`, `nat-ports-exhausted`.
    pub drops_by_reason: [(NatDrop, u64); 4],
}

/// The per-host drop causes, in [`HostView::drops_by_reason`] order.
const HOST_DROPS: [NatDrop; 4] = [
    NatDrop::HostLimit,
    NatDrop::TableFull,
    NatDrop::PortsExhausted,
    NatDrop::HostRate,
];

/// Default [`NatConfig::new_flows_per_host`]: far above what a host opens
/// in normal use (a browser: tens per second), far below a flood (`hping3
/// --flood`: 100k+ packets/s, each a new flow), so that a flood mostly costs
/// a lookup and a drop. Benchmarks of connection rate set it to 0, as the
/// project's harness does (the kernel's MASQUERADE has no such limit).
pub const DEFAULT_NEW_FLOWS_PER_HOST: u32 = 5_000;

/// The pseudo-host that connections opened from the WAN are charged to.
pub const OUTSIDE: Ipv4Addr = Ipv4Addr::UNSPECIFIED;

/// Index of a mapped protocol in per-protocol arrays (TCP, UDP, ICMP or ICMPv6).
fn pidx(p: u8) -> usize {
    match p {
        proto::TCP => 0,
        proto::UDP => 1,
        _ => 2,
    }
}

/// One bit per external port and protocol: set = mapped or reserved (DNAT).
#[derive(Clone)]
struct PortMap {
    bits: [Box<[u64]>; 3],
}

impl PortMap {
    fn new() -> PortMap {
        let words = || vec![0u64; 1024].into_boxed_slice();
        PortMap {
            bits: [words(), words(), words()],
        }
    }
    fn get(&self, p: u8, port: u16) -> bool {
        self.bits[pidx(p)][usize::from(port >> 6)] & (1 << (port & 63)) != 0
    }
    fn set(&mut self, p: u8, port: u16, v: bool) {
        let w = &mut self.bits[pidx(p)][usize::from(port >> 6)];
        if v {
            *w |= 1 << (port & 63);
        } else {
            *w &= !(1 << (port & 63));
        }
    }
    /// The first clear bit in `from..=to`: at most 1,024 word reads.
    fn first_free(&self, p: u8, from: u16, to: u16) -> Option<u16> {
        let bits = &self.bits[pidx(p)];
        let (mut at, to) = (u32::from(from), u32::from(to));
        while at <= to {
            let w = (at / 64) as usize;
            let mut free = !bits[w] & (u64::MAX << (at % 64));
            let word_end = (at / 64) * 64 + 63;
            if to < word_end {
                free &= u64::MAX >> (63 - to % 64);
            }
            if free != 0 {
                return u16::try_from((at / 64) * 64 + free.trailing_zeros()).ok();
            }
            at = word_end + 1;
        }
        None
    }
}

/// The NAT engine.
#[derive(Clone)]
pub struct Nat<A: Family = Ipv4Addr> {
    cfg: NatConfig<A>,
    table: Table<A>,
    maps: HashMap<MapKey<A>, MapEntry<A>, foldhash::fast::FixedState>,
    /// Set by [`Nat::process_as`] for one call: whom a new LAN connection is charged to.
    subscriber: Option<A>,
    by_ext: HashMap<(u8, u16), MapKey<A>, foldhash::fast::FixedState>,
    ports: PortMap,
    adf: HashMap<(u8, u16, A), u32, foldhash::fast::FixedState>,
    frags: HashMap<FragKey<A>, FragXlate<A>, foldhash::fast::FixedState>,
    pool: Vec<FragSlot<A>>,
    /// Hosts whose records may have become idle (collected after each packet).
    gc: Vec<HostId>,
    rng: u64,
    seq: [u16; 3],
    /// Counters.
    pub counters: NatCounters,
    /// What [`Nat::process`] decided and why, in words, when recording
    /// (`vswitch trace` runs the engine on a copy with this on).
    notes: Option<Vec<(Step, String)>>,
}

struct Parsed<A> {
    t: Tuple<A>,
    /// TCP flags (TCP only).
    flags: u8,
    /// Where the transport header is: `(offset, end)` in the packet.
    l4: (usize, usize),
    len: u64,
    /// IPv6 UDP without a checksum: it may pass untranslated (RFC 6935
    /// tunnels), but is never translated (RFC 8200 8.1: the checksum is
    /// mandatory, and an incremental update of a missing one means nothing).
    zero_udp6: bool,
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Parse the tuple of the transport header in `l4` (ICMP: queries only), with
/// the TCP flags (TCP) or the ICMP type (ICMP).
fn l4_tuple<A: Family>(proto: u8, src: A, dst: A, l4: &[u8]) -> Option<(Tuple<A>, u8)> {
    let (sport, dport, x) = crate::wire::flow_ports(proto, A::ICMP, l4)?;
    Some((
        Tuple {
            proto,
            src,
            dst,
            sport,
            dport,
        },
        x,
    ))
}

/// The idle timeout of `e` in its current state, ms (saturating).
fn timeout_ms<A: Family>(t: &Timeouts, e: &Entry<A>) -> u64 {
    let secs = match e.orig.proto {
        proto::TCP => {
            let s = match e.tcp {
                TcpState::Established if e.seen_reply => t.tcp_established,
                TcpState::Close => t.tcp_close,
                _ => t.tcp_transitory,
            };
            // Picked up mid-stream and never answered, whatever it sent since.
            if e.pickup && !e.seen_reply {
                s.min(t.tcp_unreplied)
            } else {
                s
            }
        }
        proto::UDP if e.seen_reply => t.udp,
        proto::UDP => t.udp_unreplied.min(t.udp),
        _ => t.icmp,
    };
    secs.min(MAX_TIMEOUT_SECS).saturating_mul(1000)
}

/// Update checksum field `c` for an address changing `old` → `new` (as a
/// complete checksum, or a CHECKSUM_PARTIAL seed).
fn update_addr<A: Family>(mut c: u16, old: A, new: A, partial: bool) -> u16 {
    let (o, n) = (old.bytes(), new.bytes());
    for (o, n) in o[..A::LEN].chunks_exact(4).zip(n[..A::LEN].chunks_exact(4)) {
        let o = u32::from_be_bytes([o[0], o[1], o[2], o[3]]);
        let n = u32::from_be_bytes([n[0], n[1], n[2], n[3]]);
        c = if partial {
            update32_partial(c, o, n)
        } else {
            update32(c, o, n)
        };
    }
    c
}

/// Rewrite packet `buf` from tuple `from` to `to`: addresses (and the IPv4
/// header checksum), then the transport header at `l4` (`None` for later
/// fragments: addresses only). `partial`: the TCP/UDP checksum holds a
/// pseudo-header seed (only addresses change it). The ICMPv6 checksum covers
/// the pseudo-header, so it follows address changes; ICMPv4's does not.
fn rewrite<A: Family>(
    buf: &mut [u8],
    from: &Tuple<A>,
    to: &Tuple<A>,
    partial: bool,
    l4: Option<(usize, usize)>,
) {
    let (src_changed, dst_changed) = (from.src != to.src, from.dst != to.dst);
    if src_changed {
        A::set_src(buf, to.src);
    }
    if dst_changed {
        A::set_dst(buf, to.dst);
    }
    let Some(l4) = l4.and_then(|(a, b)| buf.get_mut(a..b)) else {
        return;
    };
    let p = from.proto;
    let Ok(mut h) = FlowHeader::new(p, A::ICMP, l4) else {
        return;
    };
    let icmp = h.is_icmp();
    let Some(mut c) = h.checksum() else {
        return;
    };
    let udp_zero = p == proto::UDP && c == 0 && !partial;
    let pseudo = !icmp || A::ICMP_PSEUDO;
    if !udp_zero && pseudo {
        if src_changed {
            c = update_addr(c, from.src, to.src, partial);
        }
        if dst_changed {
            c = update_addr(c, from.dst, to.dst, partial);
        }
    }
    if icmp {
        // The identifier is the "port": sport of a request, dport of a reply.
        let (old, new) = if h.icmp_type() == A::ECHO_REQUEST {
            (from.sport, to.sport)
        } else {
            (from.dport, to.dport)
        };
        if old != new {
            c = update16(c, old, new);
            h.set_echo_ident(new);
        }
    } else {
        if !udp_zero && !partial {
            if from.sport != to.sport {
                c = update16(c, from.sport, to.sport);
            }
            if from.dport != to.dport {
                c = update16(c, from.dport, to.dport);
            }
            if p == proto::UDP && c == 0 {
                c = 0xffff; // 0 means "no checksum" in UDP
            }
        }
        h.set_ports(to.sport, to.dport);
    }
    h.set_checksum(c);
}

impl<A: Family> Nat<A> {
    /// A NAT engine with empty tables.
    pub fn new(cfg: NatConfig<A>) -> Nat<A> {
        let seed = cfg.hash_seed;
        let st = || foldhash::fast::FixedState::with_seed(seed);
        let rng = match cfg.alloc {
            PortAlloc::Random(s) => s,
            PortAlloc::Sequential => 0,
        };
        let pool = (0..cfg.frag_slots)
            .map(|_| FragSlot {
                key: None,
                since: 0,
                released: false,
                data: Vec::with_capacity(FRAG_MAX),
            })
            .collect();
        let mut ports = PortMap::new();
        for r in &cfg.dnat {
            for port in r.ports.0..=r.ports.1 {
                ports.set(r.proto, port, true);
            }
        }
        Nat {
            table: Table::with_host_limit(cfg.max_entries, cfg.entries_per_host(), seed),
            maps: HashMap::with_hasher(st()),
            subscriber: None,
            by_ext: HashMap::with_hasher(st()),
            ports,
            adf: HashMap::with_hasher(st()),
            frags: HashMap::with_hasher(st()),
            pool,
            gc: Vec::new(),
            rng,
            seq: [0; 3],
            counters: NatCounters::default(),
            notes: None,
            cfg,
        }
    }

    /// Note down, from now on, each decision [`Nat::process`] takes and why
    /// (for a dry run on a copy: `vswitch trace`). Off by default: a live
    /// engine pays one untaken branch per decision.
    pub fn record_notes(&mut self) {
        self.notes = Some(Vec::new());
    }

    /// The notes recorded since the last call (see [`Nat::record_notes`]).
    pub fn take_notes(&mut self) -> Vec<(Step, String)> {
        self.notes.as_mut().map(std::mem::take).unwrap_or_default()
    }

    #[inline]
    fn note(&mut self, step: Step, line: impl FnOnce() -> String) {
        if let Some(n) = &mut self.notes {
            n.push((step, line()));
        }
    }

    /// The configuration.
    pub fn config(&self) -> &NatConfig<A> {
        &self.cfg
    }

    /// Replace the masquerade sources and the DNAT rules (`vswitch reload`),
    /// keeping every table: connections already tracked keep their
    /// translation until they end or expire (as netfilter's conntrack does
    /// when a rule is deleted); the new rules apply to new flows. Ports of
    /// new DNAT rules are never handed out to new mappings from now on; a
    /// mapping that already holds one keeps its established sessions, while
    /// new inbound flows to that port follow the rule. Ports of removed
    /// rules become free for mappings. No other setting changes.
    pub fn set_rules(&mut self, masquerade: Vec<Net<A>>, dnat: Vec<DnatRule<A>>) {
        let old = std::mem::replace(&mut self.cfg.dnat, dnat);
        self.cfg.masquerade = masquerade;
        for r in &old {
            for port in r.ports.0..=r.ports.1 {
                if !self.is_dnat_port(r.proto, port) && !self.by_ext.contains_key(&(r.proto, port))
                {
                    self.ports.set(r.proto, port, false);
                }
            }
        }
        for i in 0..self.cfg.dnat.len() {
            let r = self.cfg.dnat[i];
            for port in r.ports.0..=r.ports.1 {
                self.ports.set(r.proto, port, true);
            }
        }
    }

    /// Whether a DNAT rule publishes external `port` of protocol `p`.
    fn is_dnat_port(&self, p: u8, port: u16) -> bool {
        self.cfg
            .dnat
            .iter()
            .any(|r| r.proto == p && (r.ports.0..=r.ports.1).contains(&port))
    }

    /// Number of connection entries.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Number of live EIM mappings.
    pub fn mappings(&self) -> usize {
        self.maps.len()
    }

    /// The internal hosts with state, and their share (RFC 6888 fairness view).
    pub fn hosts(&self) -> impl Iterator<Item = HostView<A>> + '_ {
        self.table.hosts().map(|h| HostView {
            addr: h.addr,
            entries: h.entries,
            unassured: h.unassured,
            mappings: h.mappings.iter().sum(),
            evicted: h.evicted,
            drops: h.drops.iter().sum(),
            drops_by_reason: [0, 1, 2, 3].map(|i| (HOST_DROPS[i], h.drops[i])),
        })
    }

    /// The internal endpoint (proto, address, port) holding external port
    /// `ext` of `proto`, if mapped (tests, `vswitch trace`).
    pub fn mapping_of(&self, proto: u8, ext: u16) -> Option<(A, u16)> {
        self.by_ext.get(&(proto, ext)).map(|k| (k.ip, k.port))
    }

    /// Check the engine's invariants (tests, fuzzing; O(entries), allocates):
    /// the table's, and that mappings, reverse index, port bitmap and
    /// reference counts agree, so no external port is held by two endpoints.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.table.check_invariants()?;
        if self.maps.len() != self.by_ext.len() {
            return Err(format!(
                "{} mappings, {} external ports",
                self.maps.len(),
                self.by_ext.len()
            ));
        }
        let mut refs: HashMap<MapKey<A>, u32> = HashMap::new();
        for (_, e) in self.table.iter() {
            for (k, ext) in e.mappings().into_iter().flatten() {
                match self.maps.get(&k) {
                    Some(m) if m.ext_port == ext => *refs.entry(k).or_insert(0) += 1,
                    _ => return Err(format!("entry {} holds a lost mapping {k:?}", e.orig)),
                }
            }
        }
        for (k, m) in &self.maps {
            if self.by_ext.get(&(k.proto, m.ext_port)) != Some(k) {
                return Err(format!(
                    "external port {} of {k:?} held by another",
                    m.ext_port
                ));
            }
            if !self.ports.get(k.proto, m.ext_port) {
                return Err(format!("port {} not marked used", m.ext_port));
            }
            if refs.get(k).copied().unwrap_or(0) != m.refs {
                return Err(format!("{k:?}: {} refs, {:?} users", m.refs, refs.get(k)));
            }
        }
        // Each host record counts exactly the mappings charged to it.
        let mut per_host: HashMap<(A, usize), u32> = HashMap::new();
        for (k, m) in &self.maps {
            if self.table.find_host(m.host).is_none() {
                return Err(format!(
                    "{k:?} is charged to {}, which has no record",
                    m.host
                ));
            }
            *per_host.entry((m.host, pidx(k.proto))).or_insert(0) += 1;
        }
        for h in self.table.hosts() {
            for pi in 0..3 {
                let n = per_host.get(&(h.addr, pi)).copied().unwrap_or(0);
                if n != h.mappings[pi] {
                    return Err(format!(
                        "host {} holds {n} mappings of protocol {pi}, counts {}",
                        h.addr, h.mappings[pi]
                    ));
                }
            }
        }
        Ok(())
    }

    fn drop(&mut self, r: NatDrop) -> Verdict {
        self.counters.drops[r as usize] += 1;
        self.note(Step::Drop, || format!("drop ({})", r.name()));
        Verdict::Drop(r)
    }

    /// A drop for want of room, also counted on the host.
    /// Whether host `h` may open one more flow at `now`: a token bucket of
    /// `new_flows_per_host` per second, holding one second's worth.
    fn admit_new_flow(&mut self, h: HostId, now: u64) -> bool {
        let rate = u64::from(self.cfg.new_flows_per_host);
        if rate == 0 {
            return true;
        }
        let cap = rate.saturating_mul(1000); // milli-flows
        let rec = self.table.host_rec_mut(h);
        let tokens = match rec.bucket_at {
            None => cap,
            Some(t) => rec
                .tokens
                .saturating_add(now.saturating_sub(t).saturating_mul(rate))
                .min(cap),
        };
        rec.bucket_at = Some(now);
        let ok = tokens >= 1000;
        rec.tokens = if ok { tokens - 1000 } else { tokens };
        ok
    }

    fn host_drop(&mut self, h: HostId, r: NatDrop) -> Verdict {
        let rec = self.table.host_rec_mut(h);
        if let Some(i) = HOST_DROPS.iter().position(|x| *x == r) {
            rec.drops[i] = rec.drops[i].saturating_add(1);
        }
        self.gc.push(h);
        self.drop(r)
    }

    fn timeout_ms(&self, e: &Entry<A>) -> u64 {
        timeout_ms(&self.cfg.timeouts, e)
    }

    /// Translate (or not) one IPv4 packet that arrived from `from`.
    /// `route` tells where a destination address leads.
    ///
    /// `partial`: the L4 checksum is CHECKSUM_PARTIAL. A total length of 0
    /// in the IPv4 header is accepted only then (a GSO super-frame, which
    /// always carries a partial checksum; the length is then the buffer's);
    /// otherwise the total length must be at least the header and fit the buffer.
    /// TCP and UDP packets that carry their header (not later fragments) must
    /// carry all of it (20 bytes and a sane data offset; 8 bytes), else they
    /// are dropped as `nat-malformed`.
    pub fn process(
        &mut self,
        now: u64,
        from: Side,
        buf: &mut [u8],
        partial: bool,
        route: &dyn Fn(A) -> Side,
    ) -> Verdict {
        let noted = self.notes.as_ref().map(Vec::len);
        let v = self.process_inner(now, from, buf, partial, route);
        self.flush_gc();
        // Every outcome has a note (the paths that take no decision of their own).
        if noted.is_some() && self.notes.as_ref().map(Vec::len) == noted {
            self.note(Step::Pass, || {
                match v {
                    Verdict::Translated => "translated (an ICMP error, with its embedded packet)",
                    Verdict::NotNatted => "not the NAT's: passes untranslated",
                    Verdict::Stolen => "held until its first fragment comes",
                    Verdict::Drop(_) => "dropped",
                }
                .into()
            });
        }
        v
    }

    /// [`Nat::process`], charging a connection the packet opens from the LAN
    /// to `subscriber` instead of to its source address (per-host entry,
    /// mapping and new-flow limits; `hosts` shows the subscriber). For IPv6,
    /// where one host may use any number of addresses in its prefix (privacy
    /// addresses, or a flooder picking a new one per packet), vswitch charges
    /// NAT66 connections to the ingress port.
    pub fn process_as(
        &mut self,
        now: u64,
        from: Side,
        buf: &mut [u8],
        partial: bool,
        route: &dyn Fn(A) -> Side,
        subscriber: A,
    ) -> Verdict {
        self.subscriber = Some(subscriber);
        let v = self.process(now, from, buf, partial, route);
        self.subscriber = None;
        v
    }

    fn process_inner(
        &mut self,
        now: u64,
        from: Side,
        buf: &mut [u8],
        partial: bool,
        route: &dyn Fn(A) -> Side,
    ) -> Verdict {
        let Ok(h) = A::parse(buf, partial) else {
            return self.drop(NatDrop::Malformed);
        };
        let Hdr {
            src,
            dst,
            proto: p,
            l4: l4_at,
            total,
            frag,
        } = h;
        let len = total as u64;
        let frag_key = frag.map(|f| FragKey {
            src,
            dst,
            proto: f.proto,
            id: f.id,
        });
        if let (Some(f), Some(k)) = (frag, frag_key)
            && f.offset != 0
        {
            return self.later_fragment(now, buf, k);
        }
        let more_frags = frag.is_some_and(|f| f.more);
        let l4 = &buf[l4_at..total];
        // A first fragment may end inside the TCP options; a whole packet may not.
        let malformed = match p {
            proto::TCP if more_frags => TcpPacket::new_head(l4).is_err(),
            proto::TCP => TcpPacket::new_checked(l4).is_err(),
            proto::UDP => UdpPacket::new_checked(l4).is_err(),
            _ => false,
        };
        if malformed {
            return self.drop(NatDrop::Malformed);
        }
        if p == A::ICMP && l4.first().is_some_and(|t| A::icmp_is_error(*t)) {
            return self.icmp_error(now, from, buf, &h);
        }
        let parsed = match l4_tuple(p, src, dst, l4) {
            Some((t, flags)) => Parsed {
                t,
                flags,
                l4: (l4_at, total),
                len,
                zero_udp6: A::LEN == 16
                    && p == proto::UDP
                    && !partial
                    && UdpPacket::new_checked(l4).is_ok_and(|u| u.checksum() == 0),
            },
            None => {
                // No ports to translate: fine inside the LAN or for us; never masquerade it.
                return match from {
                    Side::Lan if route(dst) == Side::Wan && self.masqueraded(src) => {
                        self.drop(NatDrop::UnsupportedProtocol)
                    }
                    Side::Lan => Verdict::NotNatted,
                    _ if dst == self.cfg.external && p != A::ICMP => self.drop(NatDrop::NoMapping),
                    _ => Verdict::NotNatted,
                };
            }
        };
        let v = match self.table.lookup(&parsed.t, now) {
            Some((id, dir)) => self.existing(now, id, dir, &parsed, buf, partial),
            None => {
                // Expired but not swept yet (the sweep runs once a second):
                // removed now, as the sweep would, so the flow can start over.
                if let Some(id) = self.table.find_expired(&parsed.t, now)
                    && let Some(e) = self.table.remove(id)
                {
                    self.counters.expired += 1;
                    self.release(&e); // its host record is collected after the packet
                }
                self.new_flow(now, from, &parsed, buf, partial, route)
            }
        };
        if let Some(k) = frag_key {
            self.first_fragment_done(now, k, buf, v);
        }
        v
    }

    fn masqueraded(&self, ip: A) -> bool {
        self.cfg.masquerade.iter().any(|n| n.contains(ip))
    }

    fn existing(
        &mut self,
        now: u64,
        id: u32,
        dir: Dir,
        pk: &Parsed<A>,
        buf: &mut [u8],
        partial: bool,
    ) -> Verdict {
        if pk.zero_udp6 {
            return self.drop(NatDrop::Malformed);
        }
        let e = self.table.get_mut(id);
        let d = dir as usize;
        e.packets[d] = e.packets[d].saturating_add(1);
        e.bytes[d] = e.bytes[d].saturating_add(pk.len);
        if dir == Dir::Reply {
            e.seen_reply = true;
        }
        let mut assured = e.assured();
        if e.orig.proto == proto::TCP {
            let ev = TcpEvent::of(pk.flags);
            let (s, f) = tcp_next(e.tcp, dir, ev, e.fin_dir);
            if s == TcpState::SynSent && e.tcp != TcpState::SynSent {
                // Reopened after TIME_WAIT/CLOSE: a new connection on the same tuple.
                e.seen_reply = false;
                e.pickup = false;
                assured = false;
            }
            e.tcp = s;
            e.fin_dir = f;
            if ev == TcpEvent::Rst {
                assured = false; // evictable again, and short-lived (tcp_close)
            } else if s == TcpState::Established && e.seen_reply {
                assured = true; // SEEN_REPLY and ESTABLISHED, as netfilter
            }
        } else if e.seen_reply {
            assured = true;
        }
        let target = match dir {
            Dir::Original => e.reply.inv(),
            Dir::Reply => e.orig.inv(),
        };
        let ttl = timeout_ms(&self.cfg.timeouts, e);
        let (e_proto, e_state) = (e.orig.proto, e.tcp);
        self.table.set_assured(id, assured);
        self.table.set_expires(id, now.saturating_add(ttl));
        rewrite(buf, &pk.t, &target, partial, Some(pk.l4));
        self.counters.translated += 1;
        let state = (e_proto == proto::TCP).then_some(e_state);
        self.note(Step::Translate, || {
            format!(
                "existing connection ({dir:?} direction{}): {} => {}",
                state.map(|s| format!(", {}", s.name())).unwrap_or_default(),
                show(&pk.t),
                show(&target)
            )
        });
        Verdict::Translated
    }

    fn dnat_match(&self, t: &Tuple<A>) -> Option<(A, u16)> {
        if t.dst != self.cfg.external {
            return None;
        }
        self.cfg
            .dnat
            .iter()
            .find(|r| r.proto == t.proto && (r.ports.0..=r.ports.1).contains(&t.dport))
            .map(|r| (r.to_addr, r.to_port.wrapping_add(t.dport - r.ports.0)))
    }

    /// Whether external `port` of `p` is taken (mapped, or published by DNAT).
    fn reserved(&self, p: u8, port: u16) -> bool {
        port == 0 || self.ports.get(p, port)
    }

    /// The port range a mapping of `key` draws from.
    fn range_of(&self, key: &MapKey<A>) -> (u16, u16) {
        if key.proto == A::ICMP {
            (1, 65535)
        } else if key.port < 1024 {
            (1, 1023)
        } else {
            let (a, b) = (
                self.cfg.port_range.0.max(1024),
                self.cfg.port_range.1.max(1024),
            );
            (a.min(b), a.max(b))
        }
    }

    /// A free external port for `key`: its own if free and in range (port
    /// preservation), else one of the same class from a random (RFC 6056) or
    /// sequential start. Cost: at most one pass over the range's bitmap words.
    fn alloc_port(&mut self, key: &MapKey<A>) -> Option<u16> {
        let (lo, hi) = self.range_of(key);
        if (lo..=hi).contains(&key.port) && !self.reserved(key.proto, key.port) {
            return Some(key.port);
        }
        let n = u32::from(hi - lo) + 1;
        let class = if key.proto == A::ICMP {
            2
        } else {
            usize::from(key.port >= 1024)
        };
        let off = match self.cfg.alloc {
            PortAlloc::Random(_) => (splitmix(&mut self.rng) % u64::from(n)) as u32,
            PortAlloc::Sequential => u32::from(self.seq[class]) % n,
        };
        let start = lo + off as u16;
        let found = self
            .ports
            .first_free(key.proto, start, hi)
            .or_else(|| {
                (start > lo)
                    .then(|| self.ports.first_free(key.proto, lo, start - 1))
                    .flatten()
            })
            .filter(|&p| p != 0)?;
        if self.cfg.alloc == PortAlloc::Sequential {
            self.seq[class] = ((u32::from(found - lo) + 1) % n) as u16;
        }
        Some(found)
    }

    /// Evict up to `budget` oldest unassured entries of `proto` that hold an
    /// outbound mapping, from host `h`'s FIFO (or the whole table's), until
    /// one mapping of `proto` is freed. Returns whether one was.
    fn reclaim(&mut self, h: Option<HostId>, proto_: u8, budget: usize) -> bool {
        // Success is a mapping of `h` itself freed (an entry charged to `h`
        // may hold another subscriber's mapping), or any for a full range.
        let pi = pidx(proto_);
        let held = |s: &Self| match h {
            Some(h) => s.table.host_rec(h).mappings[pi] as usize,
            None => s.maps.len(),
        };
        let before = held(self);
        let mut cur = self.table.oldest_unassured(h);
        let mut steps = 0;
        while let Some(id) = cur {
            if steps >= budget || held(self) < before {
                break;
            }
            steps += 1;
            cur = self.table.next_unassured(id, h);
            let e = self.table.get(id);
            if e.orig.proto == proto_
                && matches!(e.map, MapRef::Outbound | MapRef::Hairpin)
                && let Some(old) = self.table.remove(id)
            {
                {
                    if let Some(oh) = old.host() {
                        let r = self.table.host_rec_mut(oh);
                        r.evicted = r.evicted.saturating_add(1);
                    }
                    self.counters.early_dropped += 1;
                    self.release(&old);
                }
            }
        }
        held(self) < before
    }

    /// The external port of the EIM mapping of `key` (owned by host `h`),
    /// made if needed, with one more reference taken (so no eviction can
    /// delete it before the entry that needs it is in the table).
    fn map_ref(&mut self, key: MapKey<A>, h: HostId) -> Result<u16, NatDrop> {
        if let Some(m) = self.maps.get_mut(&key) {
            m.refs += 1;
            return Ok(m.ext_port);
        }
        let pi = pidx(key.proto);
        if self.table.host_rec(h).mappings[pi] >= self.cfg.max_ports_per_host
            && !self.reclaim(Some(h), key.proto, 8)
        {
            return Err(NatDrop::HostLimit);
        }
        let pick = match self.alloc_port(&key) {
            Some(p) => p,
            None => {
                // Out of ports: give up the oldest unassured mappings first.
                self.reclaim(None, key.proto, 16);
                self.alloc_port(&key).ok_or(NatDrop::PortsExhausted)?
            }
        };
        self.maps.insert(
            key,
            MapEntry {
                ext_port: pick,
                refs: 1,
                host: self.table.host_rec(h).addr,
            },
        );
        self.by_ext.insert((key.proto, pick), key);
        self.ports.set(key.proto, pick, true);
        self.table.host_rec_mut(h).mappings[pi] += 1;
        Ok(pick)
    }

    /// Drop one reference on mapping `key`; remove it when unused.
    fn unref(&mut self, key: MapKey<A>, ext: u16) {
        let Some(m) = self.maps.get_mut(&key) else {
            return;
        };
        m.refs = m.refs.saturating_sub(1);
        if m.refs > 0 {
            return;
        }
        let host = m.host;
        self.maps.remove(&key);
        if self.by_ext.get(&(key.proto, ext)) == Some(&key) {
            self.by_ext.remove(&(key.proto, ext));
            // A port a DNAT rule published since the mapping was made stays reserved.
            if !self.is_dnat_port(key.proto, ext) {
                self.ports.set(key.proto, ext, false);
            }
        }
        if let Some(h) = self.table.find_host(host) {
            let r = self.table.host_rec_mut(h);
            let pi = pidx(key.proto);
            r.mappings[pi] = r.mappings[pi].saturating_sub(1);
            self.gc.push(h);
        }
    }

    /// Forget host records left without entries or mappings.
    fn flush_gc(&mut self) {
        while let Some(h) = self.gc.pop() {
            self.table.host_gc(h);
        }
    }

    fn new_flow(
        &mut self,
        now: u64,
        from: Side,
        pk: &Parsed<A>,
        buf: &mut [u8],
        partial: bool,
        route: &dyn Fn(A) -> Side,
    ) -> Verdict {
        let t = pk.t;
        // Whether a packet that cannot open a connection was meant for the NAT
        // (ours to drop) or is LAN-internal (not ours to judge).
        let meant_for_nat = |s: &Self| match from {
            Side::Wan => t.dst == s.cfg.external,
            _ => {
                (route(t.dst) == Side::Wan && s.masqueraded(t.src))
                    || s.dnat_match(&t).is_some()
                    || (t.dst == s.cfg.external
                        && t.proto != A::ICMP
                        && s.by_ext.contains_key(&(t.proto, t.dport)))
            }
        };
        let mut tcp_state = TcpState::SynSent;
        if t.proto == proto::TCP {
            let ev = TcpEvent::of(pk.flags);
            let open = match from {
                Side::Wan if ev != TcpEvent::Syn => None,
                _ => tcp_open(ev),
            };
            match open {
                Some(s) => tcp_state = s,
                None if meant_for_nat(self) => return self.drop(NatDrop::InvalidTcp),
                None => return Verdict::NotNatted,
            }
        }
        // An echo reply never opens a connection.
        if t.proto == A::ICMP && pk.flags == A::ECHO_REPLY {
            return match from {
                Side::Lan | Side::Local if meant_for_nat(self) => self.drop(NatDrop::InvalidIcmp),
                _ => Verdict::NotNatted,
            };
        }
        let mut target = t;
        let mut out_key = None; // the sender's mapping (source translation)
        let mut in_map = None; // a mapping the packet enters through
        let mut adf_remote = None;
        let mut via_map = false; // hairpinned through a mapping
        let host_addr;
        match from {
            Side::Lan | Side::Local => {
                let dnat = self.dnat_match(&t);
                if let Some((a, p)) = dnat {
                    target.dst = a;
                    target.dport = p;
                } else if t.dst == self.cfg.external && from == Side::Lan {
                    // Hairpin through another host's mapping (RFC 4787 REQ-9).
                    let ext = if t.proto == A::ICMP { t.sport } else { t.dport };
                    if let Some(&k) = self.by_ext.get(&(t.proto, ext)) {
                        in_map = Some((k, ext));
                        target.dst = k.ip;
                        target.dport = if t.proto == A::ICMP { 0 } else { k.port };
                    }
                }
                let egress = route(target.dst);
                if egress == Side::Local {
                    return Verdict::NotNatted;
                }
                let hairpin = (dnat.is_some() || in_map.is_some()) && egress == Side::Lan;
                let snat = (egress == Side::Wan && self.masqueraded(t.src)) || hairpin;
                if dnat.is_none() && !snat {
                    return Verdict::NotNatted;
                }
                host_addr = self.subscriber.unwrap_or(t.src);
                if snat {
                    let key = MapKey {
                        proto: t.proto,
                        ip: t.src,
                        port: t.sport,
                    };
                    if let Some((k, ext)) = in_map {
                        if k == key && t.proto == A::ICMP {
                            // An echo request to the external address with
                            // its own mapping's id: the gateway answers it
                            // (a reflected request would never be answered).
                            return Verdict::NotNatted;
                        }
                        if k == key {
                            // To its own mapping (the RFC 5780 hairpin test):
                            // reflected without state, source = its mapping.
                            let mut to = t;
                            to.src = self.cfg.external;
                            to.sport = ext;
                            to.dst = t.src;
                            to.dport = t.sport;
                            if pk.zero_udp6 {
                                return self.drop(NatDrop::Malformed);
                            }
                            self.counters.self_hairpins += 1;
                            self.counters.translated += 1;
                            rewrite(buf, &t, &to, partial, Some(pk.l4));
                            return Verdict::Translated;
                        }
                        // Filtering of hairpinned packets: the sender is a LAN
                        // host, which reaches the target directly anyway, so
                        // endpoint-independent and address-dependent filtering
                        // admit it (the external address counts as one every
                        // mapping has sent to); address-and-port-dependent
                        // filtering admits only existing sessions (above).
                        if self.cfg.filtering == Filtering::AddressAndPortDependent {
                            return self.drop(NatDrop::Filtered);
                        }
                    }
                    out_key = Some(key);
                    if t.proto == A::ICMP && in_map.is_some() {
                        // One identifier field: the target's own id cannot be
                        // recovered from the tuples, so the entry holds the
                        // sender's mapping only (it still reaches the target).
                        in_map = None;
                        via_map = true;
                    }
                    adf_remote = Some(if hairpin {
                        self.cfg.external
                    } else {
                        target.dst
                    });
                }
            }
            Side::Wan => {
                if t.dst != self.cfg.external {
                    return Verdict::NotNatted;
                }
                if let Some((a, p)) = self.dnat_match(&t) {
                    target.dst = a;
                    target.dport = p;
                } else {
                    if t.proto == A::ICMP {
                        return Verdict::NotNatted; // echo to the gateway: answered locally
                    }
                    let ext_port = t.dport;
                    let Some(&key) = self.by_ext.get(&(t.proto, ext_port)) else {
                        return self.drop(NatDrop::NoMapping);
                    };
                    let allowed = match self.cfg.filtering {
                        Filtering::EndpointIndependent => true,
                        Filtering::AddressDependent => {
                            self.adf.contains_key(&(t.proto, ext_port, t.src))
                        }
                        Filtering::AddressAndPortDependent => false,
                    };
                    if !allowed {
                        return self.drop(NatDrop::Filtered);
                    }
                    target.dst = key.ip;
                    target.dport = key.port;
                    in_map = Some((key, ext_port));
                }
                // Connections opened from outside are charged to one pseudo-host,
                // the outside (0.0.0.0): an inbound flood gets one host's share
                // and evicts its own entries, not the LAN hosts' own.
                host_addr = A::UNSPECIFIED;
            }
        }
        if pk.zero_udp6 {
            return self.drop(NatDrop::Malformed);
        }
        let Some(h) = self.table.host(host_addr) else {
            return self.drop(NatDrop::TableFull);
        };
        self.gc.push(h); // collected after the packet if it ends up with nothing
        if host_addr != A::UNSPECIFIED && !self.admit_new_flow(h, now) {
            return self.host_drop(h, NatDrop::HostRate);
        }
        // Take the references first: evictions below (making room for the
        // sender's mapping or for the entry) cannot free these mappings.
        if let Some((k, _)) = in_map {
            match self.maps.get_mut(&k) {
                Some(m) => m.refs += 1,
                None => return self.drop(NatDrop::NoMapping),
            }
        }
        let mut out_map = None;
        if let Some(key) = out_key {
            match self.map_ref(key, h) {
                Ok(ext) => {
                    target.src = self.cfg.external;
                    target.sport = ext;
                    out_map = Some((key, ext));
                }
                Err(r) => {
                    if let Some((k, ext)) = in_map {
                        self.unref(k, ext);
                    }
                    return self.host_drop(h, r);
                }
            }
        }
        let mut e = Entry::new(t, target.inv(), 0);
        e.map = match (out_map.is_some(), in_map.is_some()) {
            (false, false) => MapRef::None,
            (true, false) => MapRef::Outbound,
            (false, true) => MapRef::Inbound,
            (true, true) => MapRef::Hairpin,
        };
        debug_assert_eq!(e.mappings(), {
            let m: [Option<(MapKey<A>, u16)>; 2] = match (out_map, in_map) {
                (Some(o), i) => [Some(o), i],
                (None, i) => [i, None],
            };
            m
        });
        e.packets[0] = 1;
        e.bytes[0] = pk.len;
        if t.proto == proto::TCP {
            e.tcp = tcp_state;
            e.pickup = tcp_state != TcpState::SynSent;
        }
        e.expires = now.saturating_add(self.timeout_ms(&e));
        let failed = match self.table.insert_for(e.clone(), Some(h), now) {
            Insert::Ok(_) => None,
            Insert::Evicted(_, old) => {
                self.counters.early_dropped += 1;
                self.release(&old);
                None
            }
            Insert::Full => Some(NatDrop::TableFull),
            Insert::HostFull => Some(NatDrop::HostLimit),
            Insert::Clash => Some(NatDrop::Clash),
        };
        if let Some(r) = failed {
            for (k, ext) in e.mappings().into_iter().flatten() {
                self.unref(k, ext);
            }
            return if r == NatDrop::Clash {
                self.drop(r)
            } else {
                self.host_drop(h, r)
            };
        }
        if let (Some((key, ext)), Some(r)) = (out_map, adf_remote)
            && self.cfg.filtering == Filtering::AddressDependent
        {
            // Only address-dependent filtering needs to know whom each mapping has talked to.
            *self.adf.entry((key.proto, ext, r)).or_insert(0) += 1;
        }
        if via_map
            || (in_map.is_some() && from != Side::Wan)
            || (out_map.is_some() && self.dnat_match(&t).is_some())
        {
            self.counters.hairpins += 1;
        }
        self.counters.created += 1;
        self.counters.translated += 1;
        rewrite(buf, &t, &target, partial, Some(pk.l4));
        let filtering = self.cfg.filtering;
        self.note(Step::Translate, || {
            let how = match (from, in_map, out_map) {
                (Side::Wan, Some((k, ext)), _) => format!(
                    "the mapping of {} (external port {ext}) admits {} ({} filtering)",
                    show_ep(k.ip, k.port),
                    t.src,
                    filtering.name()
                ),
                (Side::Wan, None, _) => "DNAT rule".into(),
                (_, Some((k, ext)), _) => format!(
                    "hairpin through the mapping of {} (external port {ext})",
                    show_ep(k.ip, k.port)
                ),
                (_, None, Some(_)) if via_map => {
                    "hairpin through an echo mapping, MASQUERADE".into()
                }
                (_, None, Some(_)) if target.dst != t.dst => "DNAT rule, hairpinned".into(),
                (_, None, Some(_)) => "MASQUERADE".into(),
                (_, None, None) => "DNAT rule".into(),
            };
            format!("new connection, {how}: {} => {}", show(&t), show(&target))
        });
        Verdict::Translated
    }

    /// Drop the mapping and filter references a removed entry held.
    fn release(&mut self, e: &Entry<A>) {
        if let Some(h) = e.host() {
            self.gc.push(h);
        }
        let [first, second] = e.mappings();
        let Some((key, ext)) = first else {
            return;
        };
        // An outbound entry recorded its remote for address-dependent filtering:
        // the reply's source, or the external address for a hairpin through a mapping.
        if matches!(e.map, MapRef::Outbound | MapRef::Hairpin)
            && self.cfg.filtering == Filtering::AddressDependent
        {
            // (Hairpinned entries were sent to the external address.)
            let remote = if e.orig.dst == self.cfg.external {
                self.cfg.external
            } else {
                e.reply.src
            };
            let k = (key.proto, ext, remote);
            if let Some(n) = self.adf.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    self.adf.remove(&k);
                }
            }
        }
        self.unref(key, ext);
        if let Some((k2, ext2)) = second {
            self.unref(k2, ext2);
        }
    }

    /// Traffic that a fast path outside the engine forwarded for the
    /// connection whose packets arrive with tuple `t` (as received on their
    /// side, before translation): adds `packets` and `bytes` to that
    /// direction's counters and restarts the entry's timeout from `at`
    /// (ms, when the fast path last saw it; never moved backwards). False
    /// when no live entry at `now` has that tuple: the connection is gone and
    /// the fast path must forget it.
    pub fn offloaded(&mut self, t: &Tuple<A>, packets: u64, bytes: u64, at: u64, now: u64) -> bool {
        let Some((id, dir)) = self.table.lookup(t, now) else {
            return false;
        };
        let e = self.table.get_mut(id);
        let d = dir as usize;
        e.packets[d] = e.packets[d].saturating_add(packets.min(u32::MAX as u64) as u32);
        e.bytes[d] = e.bytes[d].saturating_add(bytes);
        let until = at.saturating_add(timeout_ms(&self.cfg.timeouts, e));
        if until > e.expires {
            self.table.set_expires(id, until);
        }
        true
    }

    /// Remove expired entries and stale fragment state (no full-table scan;
    /// at most one lap of the timer wheel whatever the time since the last call).
    pub fn expire(&mut self, now: u64) {
        while !self.expire_some(now, usize::MAX) {}
    }

    /// [`Nat::expire`] visiting at most `budget` entries of the timer wheel:
    /// true when everything due by `now` is done, false when work is left
    /// (call again soon; a datapath calls it between batches so that a
    /// flood's entries timing out together never pause forwarding long).
    pub fn expire_some(&mut self, now: u64, budget: usize) -> bool {
        let mut removed = Vec::new();
        let done = self.table.expire_some(now, budget, |e| removed.push(e));
        self.counters.expired += removed.len() as u64;
        for e in &removed {
            self.release(e);
        }
        self.flush_gc();
        self.frags.retain(|_, x| x.expires > now);
        for s in &mut self.pool {
            if s.key.is_some() && !s.released && now.saturating_sub(s.since) >= FRAG_WAIT_MS {
                s.key = None;
                self.counters.drops[NatDrop::FragmentTimeout as usize] += 1;
            }
        }
        done
    }

    fn icmp_error(&mut self, now: u64, from: Side, buf: &mut [u8], h: &Hdr<A>) -> Verdict {
        let (outer_src, icmp_at, total) = (h.src, h.l4, h.total);
        let icmp = &buf[icmp_at..total];
        // The embedded packet: its header and at least 8 bytes of transport.
        let Some((isrc, idst, iproto, ihl)) = icmp.get(8..).and_then(A::parse_inner) else {
            return self.drop(NatDrop::Malformed);
        };
        let inner = &icmp[8..];
        let Some((te, _)) = l4_tuple(iproto, isrc, idst, &inner[ihl..]) else {
            return if from == Side::Wan {
                self.drop(NatDrop::NoMapping)
            } else {
                Verdict::NotNatted
            };
        };
        let q = te.inv();
        let Some((id, dir)) = self.table.lookup(&q, now) else {
            return if from == Side::Wan {
                self.drop(NatDrop::NoMapping)
            } else {
                Verdict::NotNatted
            };
        };
        let e = self.table.get(id);
        let target = match dir {
            Dir::Original => e.reply.inv(),
            Dir::Reply => e.orig.inv(),
        };
        let new_inner = target.inv();
        // Outer header: the destination always, the source only if the error
        // came from the peer itself (not from a router on the way).
        let new_src = if outer_src == q.src {
            target.src
        } else {
            outer_src
        };
        A::set_src(buf, new_src);
        A::set_dst(buf, target.dst);
        // Embedded header: as the other side originally saw it. Its transport
        // checksum is updated when present, not validated (RFC 5508 REQ-3).
        let inner_at = icmp_at + 8;
        {
            let inner = &mut buf[inner_at..total];
            A::set_inner(inner, new_inner.src, new_inner.dst);
            // `l4_tuple` found ports in it: TCP, UDP or ICMP, 8 bytes at least.
            let l4 = FlowHeader::new(te.proto, A::ICMP, &mut inner[ihl..]);
            if let Ok(mut l4) = l4 {
                if l4.is_icmp() {
                    let (old, new) = if l4.icmp_type() == A::ECHO_REQUEST {
                        (te.sport, new_inner.sport)
                    } else {
                        (te.dport, new_inner.dport)
                    };
                    if let Some(mut c) = l4.checksum() {
                        if A::ICMP_PSEUDO {
                            c = update_addr(c, te.src, new_inner.src, false);
                            c = update_addr(c, te.dst, new_inner.dst, false);
                        }
                        c = update16(c, old, new);
                        l4.set_checksum(c);
                    }
                    l4.set_echo_ident(new);
                } else {
                    if let Some(mut c) = l4.checksum()
                        && !(te.proto == proto::UDP && c == 0)
                    {
                        c = update_addr(c, te.src, new_inner.src, false);
                        c = update_addr(c, te.dst, new_inner.dst, false);
                        c = update16(c, te.sport, new_inner.sport);
                        c = update16(c, te.dport, new_inner.dport);
                        l4.set_checksum(c);
                    }
                    l4.set_ports(new_inner.sport, new_inner.dport);
                }
            }
        }
        // The ICMP checksum covers the embedded bytes (and, in ICMPv6, the
        // pseudo-header): recompute it (errors are rare and short).
        let Ok(mut icmp) = FlowHeader::new(A::ICMP, A::ICMP, &mut buf[icmp_at..total]) else {
            return self.drop(NatDrop::Malformed);
        };
        icmp.set_checksum(0);
        let mut s = checksum::sum(icmp.as_bytes());
        if A::ICMP_PSEUDO {
            let (a, b) = (new_src.bytes(), target.dst.bytes());
            s += checksum::pseudo_header6(a, b, A::ICMP, icmp.as_bytes().len() as u32);
        }
        icmp.set_checksum(!checksum::fold(s));
        self.counters.icmp_errors += 1;
        Verdict::Translated
    }

    fn first_fragment_done(&mut self, now: u64, k: FragKey<A>, buf: &[u8], v: Verdict) {
        let (src, dst) = match (v, A::parse(buf, true)) {
            (Verdict::Translated, Ok(h)) => (h.src, h.dst),
            (Verdict::NotNatted, _) => (k.src, k.dst),
            _ => return,
        };
        let cap = 4 * self.pool.len().max(64);
        if self.frags.len() >= cap && !self.frags.contains_key(&k) {
            self.frags.retain(|_, x| x.expires > now);
            // Still full: the oldest translation makes room (a bounded scan),
            // so one host's stream of first fragments cannot leave everyone
            // else's later fragments without a translation.
            if self.frags.len() >= cap
                && let Some(old) = self
                    .frags
                    .iter()
                    .min_by_key(|(_, x)| x.expires)
                    .map(|(k, _)| *k)
            {
                self.frags.remove(&old);
            }
        }
        self.frags.insert(
            k,
            FragXlate {
                src,
                dst,
                expires: now.saturating_add(FRAG_MEMORY_MS),
            },
        );
        // Release fragments of this datagram that came early.
        for s in 0..self.pool.len() {
            if self.pool[s].key == Some(k) && !self.pool[s].released {
                let data = &mut self.pool[s].data;
                A::set_src(data, src);
                A::set_dst(data, dst);
                self.pool[s].released = true;
            }
        }
    }

    fn later_fragment(&mut self, now: u64, buf: &mut [u8], k: FragKey<A>) -> Verdict {
        if let Some(x) = self.frags.get(&k).copied().filter(|x| x.expires > now) {
            if k.src != x.src {
                A::set_src(buf, x.src);
            }
            if k.dst != x.dst {
                A::set_dst(buf, x.dst);
            }
            self.counters.translated += 1;
            self.note(Step::Translate, || {
                format!(
                    "a later fragment: rewritten as its first fragment was, {} -> {} => {} -> {}",
                    k.src, k.dst, x.src, x.dst
                )
            });
            return Verdict::Translated;
        }
        if buf.len() > FRAG_MAX {
            return self.drop(NatDrop::FragmentOverflow);
        }
        let Some(slot) = self.pool.iter_mut().find(|s| s.key.is_none()) else {
            return self.drop(NatDrop::FragmentOverflow);
        };
        slot.key = Some(k);
        slot.since = now;
        slot.released = false;
        slot.data.clear();
        slot.data.extend_from_slice(buf);
        self.counters.fragments_held += 1;
        self.note(Step::Pass, || {
            "a later fragment before its first: held until the first fragment comes".into()
        });
        Verdict::Stolen
    }

    /// Hand each fragment released by its first fragment to `f` (already translated).
    pub fn take_released(&mut self, mut f: impl FnMut(&[u8])) {
        for s in &mut self.pool {
            if s.key.is_some() && s.released {
                f(&s.data);
                s.key = None;
                s.released = false;
            }
        }
    }

    /// Whether fragments wait to be taken.
    pub fn has_released(&self) -> bool {
        self.pool.iter().any(|s| s.key.is_some() && s.released)
    }

    /// The entries, for display.
    pub fn entries(&self, now: u64) -> Vec<EntryView<A>> {
        self.entries_from(now, 0, usize::MAX).0
    }

    /// One page of [`Nat::entries`]: up to `max` entries live at `now` whose
    /// slot id is `cursor` or more, in slot order, and the cursor of the next
    /// page (`None` after the last). For listing a large table in pages between
    /// batches; an entry created or removed between two pages may be missed or
    /// shown as it was. Cost: the slots from `cursor` to the last entry returned.
    pub fn entries_from(
        &self,
        now: u64,
        cursor: usize,
        max: usize,
    ) -> (Vec<EntryView<A>>, Option<usize>) {
        let max = max.max(1);
        let mut out = Vec::with_capacity(max.min(4096));
        let live = self
            .table
            .iter_from(cursor)
            .filter(|(_, e)| e.expires > now);
        for (id, e) in live {
            if out.len() == max {
                return (out, Some(id as usize));
            }
            out.push(view(e, now));
        }
        (out, None)
    }

    /// Delete, like `conntrack -D`, the entries live at `now` for which
    /// `pred` holds, among at most `max` live entries from slot `cursor` on
    /// (the pages of [`Nat::entries_from`]); returns how many were deleted and
    /// the cursor of the next page (`None` after the last). A deleted entry
    /// gives back what it held, as expiry does: its reference to its EIM
    /// mapping (the external port is free again once no entry uses it), its
    /// address-dependent filter record and its host's share (a host left with
    /// nothing is forgotten); the flow's next packet starts a new entry.
    /// Counted in [`NatCounters::deleted`]. Cost: the slots visited.
    pub fn delete_from(
        &mut self,
        now: u64,
        cursor: usize,
        max: usize,
        mut pred: impl FnMut(&EntryView<A>) -> bool,
    ) -> (usize, Option<usize>) {
        let max = max.max(1);
        let mut victims = Vec::new();
        let mut next = None;
        let live = self
            .table
            .iter_from(cursor)
            .filter(|(_, e)| e.expires > now);
        for (seen, (id, e)) in live.enumerate() {
            if seen == max {
                next = Some(id as usize);
                break;
            }
            if pred(&view(e, now)) {
                victims.push(id);
            }
        }
        for &id in &victims {
            if let Some(e) = self.table.remove(id) {
                self.release(&e);
            }
        }
        self.flush_gc();
        self.counters.deleted += victims.len() as u64;
        (victims.len(), next)
    }
}

impl<A: Family> Nat<A> {
    /// Copy the state live at `now` into plain structs (see [`crate::snapshot`]).
    /// Cost: one pass over the table's slots; nothing is changed. For a copy
    /// that must not pause a datapath, see [`Nat::export_meta`] and
    /// [`Nat::export_page`].
    pub fn export(&self, now: u64) -> NatSnapshot<A> {
        let mut snap = self.export_meta();
        self.export_page(now, now, 0, usize::MAX, &mut snap.entries);
        snap
    }

    /// The snapshot without its entries (hosts and allocator state): the
    /// first step of a paged copy, whose entries [`Nat::export_page`] adds.
    pub fn export_meta(&self) -> NatSnapshot<A> {
        let hosts = self
            .table
            .hosts()
            .map(|h| SavedHost {
                addr: h.addr,
                evicted: h.evicted,
                drops: h.drops,
            })
            .collect();
        NatSnapshot {
            external: self.cfg.external,
            entries: Vec::new(),
            hosts,
            rng: self.rng,
            seq: self.seq,
        }
    }

    /// Append to `out` the entries live at `now` among at most `max` live
    /// entries from slot `cursor` on, their remaining time counted from
    /// `base` (the time the paged copy began, `base <= now`, so that every
    /// page shares the snapshot's one save time); returns the cursor of the
    /// next page (`None` after the last). An entry created or deleted
    /// between two pages may be missing or present: each entry is whole,
    /// and [`Nat::import`] skips one that contradicts another. Cost: the
    /// slots visited; nothing is changed.
    pub fn export_page(
        &self,
        now: u64,
        base: u64,
        cursor: usize,
        max: usize,
        out: &mut Vec<SavedEntry<A>>,
    ) -> Option<usize> {
        let max = max.max(1);
        let live = self
            .table
            .iter_from(cursor)
            .filter(|(_, e)| e.expires > now);
        for (seen, (id, e)) in live.enumerate() {
            if seen == max {
                return Some(id as usize);
            }
            out.push(SavedEntry {
                orig: e.orig,
                reply: e.reply,
                remaining_ms: e.expires.saturating_sub(base.min(now)),
                bytes: e.bytes,
                packets: e.packets,
                map: e.map,
                tcp: e.tcp,
                fin_dir: e.fin_dir,
                seen_reply: e.seen_reply,
                pickup: e.pickup,
                assured: e.assured(),
                host: e.host().map(|h| self.table.host_rec(h).addr),
            });
        }
        None
    }

    /// Restore `snap` into this (empty) engine at `now`, `elapsed_ms` after
    /// it was exported: every entry keeps `remaining_ms - elapsed_ms` of its
    /// timeout, those with nothing left are not restored. Mappings, port
    /// reservations and filter records are rebuilt from the entries; an
    /// entry that contradicts another or the configuration is skipped (see
    /// [`crate::snapshot`]). Errors leave the engine as it was.
    pub fn import(
        &mut self,
        snap: &NatSnapshot<A>,
        now: u64,
        elapsed_ms: u64,
    ) -> Result<ImportReport, SnapshotError> {
        if !self.table.is_empty() || !self.maps.is_empty() {
            return Err(SnapshotError::NotEmpty);
        }
        if snap.external != self.cfg.external {
            return Err(SnapshotError::ForeignExternal {
                saved: snap.external.into(),
                configured: self.cfg.external.into(),
            });
        }
        let mut rep = ImportReport::default();
        // Entries that own their sender's mapping first (those that only
        // own it, then hairpins that own one and enter another), entries
        // that only enter through a mapping last: a mapping is then charged
        // to its owner's host (NAT66: the ingress port's subscriber) before
        // entries that only enter through it refer to it.
        let mut order: Vec<&SavedEntry<A>> = snap.entries.iter().collect();
        order.sort_by_key(|s| match s.map {
            MapRef::None | MapRef::Outbound => 0,
            MapRef::Hairpin => 1,
            MapRef::Inbound => 2,
        });
        for s in order {
            if s.remaining_ms <= elapsed_ms {
                rep.expired += 1;
                continue;
            }
            let left = (s.remaining_ms - elapsed_ms).min(MAX_TIMEOUT_SECS * 1000);
            match self.import_entry(s, now, now.saturating_add(left)) {
                Ok(()) => rep.restored += 1,
                Err(NatDrop::Clash | NatDrop::NoMapping) => rep.inconsistent += 1,
                Err(_) => rep.no_room += 1,
            }
            self.flush_gc();
        }
        for h in &snap.hosts {
            if let Some(id) = self.table.find_host(h.addr) {
                let r = self.table.host_rec_mut(id);
                r.evicted = h.evicted;
                r.drops = h.drops;
            }
        }
        match self.cfg.alloc {
            PortAlloc::Random(_) => self.rng = snap.rng,
            PortAlloc::Sequential => self.seq = snap.seq,
        }
        rep.mappings = self.maps.len();
        Ok(rep)
    }

    /// Restore one entry at `now`, expiring at `expires`: `Clash`/`NoMapping`
    /// when it contradicts the table or the configuration, `TableFull` when
    /// it does not fit. Nothing is left behind on failure.
    fn import_entry(&mut self, s: &SavedEntry<A>, now: u64, expires: u64) -> Result<(), NatDrop> {
        let ext = self.cfg.external;
        let (o, r) = (s.orig, s.reply);
        let sane = (matches!(o.proto, proto::TCP | proto::UDP) || o.proto == A::ICMP)
            && r.proto == o.proto
            && o != r
            && (o.proto != A::ICMP || (o.dport == 0 && r.sport == 0))
            && match s.map {
                MapRef::None => true,
                MapRef::Outbound => r.dst == ext,
                MapRef::Inbound => o.dst == ext,
                MapRef::Hairpin => r.dst == ext && o.dst == ext,
            };
        if !sane {
            return Err(NatDrop::NoMapping);
        }
        let host = match s.host {
            Some(a) => Some(self.table.host(a).ok_or(NatDrop::TableFull)?),
            None => None,
        };
        if let Some(h) = host {
            self.gc.push(h);
        }
        if self.table.len() >= self.table.max()
            || host
                .is_some_and(|h| self.table.host_rec(h).entries as usize >= self.table.host_max())
        {
            return Err(NatDrop::TableFull);
        }
        let mut e = Entry::new(o, r, expires);
        e.bytes = s.bytes;
        e.packets = s.packets;
        e.map = s.map;
        e.tcp = s.tcp;
        e.fin_dir = s.fin_dir;
        e.seen_reply = s.seen_reply;
        e.pickup = s.pickup;
        let refs = e.mappings();
        let mut taken = 0;
        // The sender's own mapping belongs to the entry's host; a mapping it
        // only enters through is its owner's, made here (owner = its
        // address) only if no entry of the owner's brought it.
        let own = matches!(s.map, MapRef::Outbound | MapRef::Hairpin);
        for (i, (k, x)) in refs
            .iter()
            .enumerate()
            .filter_map(|(i, r)| Some((i, (*r)?)))
        {
            let owner = match s.host {
                Some(h) if own && i == 0 && h != A::UNSPECIFIED => h,
                _ => k.ip,
            };
            if !self.import_ref(k, x, owner) {
                break;
            }
            taken += 1;
        }
        let insert = if taken == refs.iter().flatten().count() {
            self.table.insert_for(e, host, now)
        } else {
            Insert::Clash
        };
        let id = match insert {
            Insert::Ok(id) => id,
            other => {
                for (k, x) in refs.iter().flatten().take(taken) {
                    self.unref(*k, *x);
                }
                // Pre-checked above: only a clash can be left.
                debug_assert!(matches!(other, Insert::Clash), "{other:?}");
                return Err(NatDrop::Clash);
            }
        };
        self.table.set_assured(id, s.assured);
        if matches!(s.map, MapRef::Outbound | MapRef::Hairpin)
            && self.cfg.filtering == Filtering::AddressDependent
            && let Some((k, x)) = refs[0]
        {
            // The remote `release` will give back (see `new_flow`).
            let remote = if o.dst == ext { ext } else { r.src };
            *self.adf.entry((k.proto, x, remote)).or_insert(0) += 1;
        }
        Ok(())
    }

    /// One more reference on mapping `key` → external port `ext`, made if
    /// needed and charged to host `owner`. False if that contradicts an
    /// existing mapping or reservation.
    fn import_ref(&mut self, key: MapKey<A>, ext: u16, owner: A) -> bool {
        if let Some(m) = self.maps.get_mut(&key) {
            if m.ext_port != ext {
                return false;
            }
            m.refs += 1;
            return true;
        }
        if self.reserved(key.proto, ext) {
            return false;
        }
        let Some(h) = self.table.host(owner) else {
            return false;
        };
        self.gc.push(h);
        self.maps.insert(
            key,
            MapEntry {
                ext_port: ext,
                refs: 1,
                host: owner,
            },
        );
        self.by_ext.insert((key.proto, ext), key);
        self.ports.set(key.proto, ext, true);
        self.table.host_rec_mut(h).mappings[pidx(key.proto)] += 1;
        true
    }
}
