//! Export → bytes → import of the NAT's state (a restart): the same
//! translations both ways, mappings and filter records rebuilt, ports kept
//! reserved, time shifted, garbage refused without a panic.

use etherparse::PacketBuilder;
use nat::snapshot::{self, NatSnapshot, SnapshotError};
use nat::wire::{Ipv4Packet, proto};
use nat::*;
use proptest::prelude::*;
use std::net::Ipv4Addr;

const EXT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const RED: Ipv4Addr = Ipv4Addr::new(192, 168, 15, 1);
const BLUE: Ipv4Addr = Ipv4Addr::new(192, 168, 15, 2);
const GREEN: Ipv4Addr = Ipv4Addr::new(192, 168, 15, 3);
const WAN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const WAN2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
const S: u64 = 1000;

fn cfg(seed: u64) -> NatConfig {
    let mut c = NatConfig::new(EXT);
    c.masquerade = vec![Ipv4Net {
        addr: Ipv4Addr::new(192, 168, 15, 0),
        prefix: 24,
    }];
    c.dnat = vec![DnatRule {
        proto: proto::TCP,
        ports: (80, 80),
        to_addr: BLUE,
        to_port: 8080,
    }];
    c.alloc = PortAlloc::Random(seed);
    c.hash_seed = seed;
    c
}

fn route(ip: Ipv4Addr) -> Side {
    if ip == EXT || ip == Ipv4Addr::new(192, 168, 15, 5) {
        Side::Local
    } else if ip.octets()[..3] == [192, 168, 15] {
        Side::Lan
    } else {
        Side::Wan
    }
}

fn udp(src: Ipv4Addr, sp: u16, dst: Ipv4Addr, dp: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv4(src.octets(), dst.octets(), 64)
        .udp(sp, dp)
        .write(&mut v, b"data")
        .unwrap();
    v
}

fn tcp(src: Ipv4Addr, sp: u16, dst: Ipv4Addr, dp: u16, flags: &str) -> Vec<u8> {
    let mut b = PacketBuilder::ipv4(src.octets(), dst.octets(), 64).tcp(sp, dp, 1000, 65000);
    if flags.contains('S') {
        b = b.syn();
    }
    if flags.contains('A') {
        b = b.ack(5000);
    }
    if flags.contains('F') {
        b = b.fin();
    }
    let mut v = Vec::new();
    b.write(&mut v, b"payload").unwrap();
    v
}

fn echo(src: Ipv4Addr, dst: Ipv4Addr, id: u16, reply: bool) -> Vec<u8> {
    let b = PacketBuilder::ipv4(src.octets(), dst.octets(), 64);
    let b = if reply {
        b.icmpv4_echo_reply(id, 1)
    } else {
        b.icmpv4_echo_request(id, 1)
    };
    let mut v = Vec::new();
    b.write(&mut v, b"ping").unwrap();
    v
}

fn tuple_of(pkt: &[u8]) -> (Ipv4Addr, u16, Ipv4Addr, u16) {
    let ip = Ipv4Packet::new_checked(pkt).unwrap();
    let l4 = ip.payload();
    if ip.protocol() == proto::ICMP {
        let id = u16::from_be_bytes([l4[4], l4[5]]);
        return (ip.src(), id, ip.dst(), id);
    }
    (
        ip.src(),
        u16::from_be_bytes([l4[0], l4[1]]),
        ip.dst(),
        u16::from_be_bytes([l4[2], l4[3]]),
    )
}

fn go(n: &mut Nat, now: u64, from: Side, mut p: Vec<u8>) -> (Verdict, Vec<u8>) {
    let v = n.process(now, from, &mut p, false, &route);
    (v, p)
}

/// A packet in each direction of a flow: (side, packet).
type Flow = [(Side, Vec<u8>); 2];

/// An engine with one of each kind of connection, and packets that belong
/// to each of them afterwards (the reply direction as it arrives).
fn populated() -> (Nat, Vec<Flow>) {
    let mut n = Nat::new(cfg(1));
    let mut flows: Vec<Flow> = Vec::new();
    // UDP out, answered; green uses the same source port: another external port.
    for host in [RED, GREEN] {
        let (v, p) = go(&mut n, 0, Side::Lan, udp(host, 5353, WAN, 53));
        assert_eq!(v, Verdict::Translated);
        let (_, ep, _, _) = tuple_of(&p);
        assert_eq!(
            go(&mut n, 10, Side::Wan, udp(WAN, 53, EXT, ep)).0,
            Verdict::Translated
        );
        flows.push([
            (Side::Lan, udp(host, 5353, WAN, 53)),
            (Side::Wan, udp(WAN, 53, EXT, ep)),
        ]);
    }
    // TCP out, established.
    let (_, p) = go(&mut n, 20, Side::Lan, tcp(RED, 40000, WAN, 443, "S"));
    let (_, ep, _, _) = tuple_of(&p);
    go(&mut n, 21, Side::Wan, tcp(WAN, 443, EXT, ep, "SA"));
    go(&mut n, 22, Side::Lan, tcp(RED, 40000, WAN, 443, "A"));
    flows.push([
        (Side::Lan, tcp(RED, 40000, WAN, 443, "A")),
        (Side::Wan, tcp(WAN, 443, EXT, ep, "A")),
    ]);
    // DNAT in, established.
    go(&mut n, 30, Side::Wan, tcp(WAN2, 50000, EXT, 80, "S"));
    go(&mut n, 31, Side::Lan, tcp(BLUE, 8080, WAN2, 50000, "SA"));
    go(&mut n, 32, Side::Wan, tcp(WAN2, 50000, EXT, 80, "A"));
    flows.push([
        (Side::Wan, tcp(WAN2, 50000, EXT, 80, "A")),
        (Side::Lan, tcp(BLUE, 8080, WAN2, 50000, "A")),
    ]);
    // Hairpin to blue through the DNAT rule.
    let (_, p) = go(&mut n, 40, Side::Lan, tcp(GREEN, 41000, EXT, 80, "S"));
    let (_, hp, _, _) = tuple_of(&p);
    go(&mut n, 41, Side::Lan, tcp(BLUE, 8080, EXT, hp, "SA"));
    flows.push([
        (Side::Lan, tcp(GREEN, 41000, EXT, 80, "A")),
        (Side::Lan, tcp(BLUE, 8080, EXT, hp, "A")),
    ]);
    // ICMP echo, answered.
    let (_, p) = go(&mut n, 50, Side::Lan, echo(RED, WAN, 7, false));
    let (_, id, _, _) = tuple_of(&p);
    go(&mut n, 51, Side::Wan, echo(WAN, EXT, id, true));
    flows.push([
        (Side::Lan, echo(RED, WAN, 7, false)),
        (Side::Wan, echo(WAN, EXT, id, true)),
    ]);
    n.check_invariants().unwrap();
    (n, flows)
}

fn restore(snap: &NatSnapshot, seed: u64, now: u64, elapsed: u64) -> (Nat, snapshot::ImportReport) {
    let bytes = snapshot::encode(snap);
    let back = snapshot::decode(&bytes).expect("decode");
    assert_eq!(&back, snap);
    let mut m = Nat::new(cfg(seed));
    let rep = m.import(&back, now, elapsed).expect("import");
    m.check_invariants().unwrap();
    (m, rep)
}

#[test]
fn restored_engine_translates_every_flow_both_ways_as_before() {
    let (mut n, flows) = populated();
    let snap = n.export(100);
    assert_eq!(snap.entries.len(), n.len());
    // Another seed and another clock origin: the new process.
    let (mut m, rep) = restore(&snap, 99, 5_000_000, 30 * S);
    assert_eq!(rep.restored, n.len(), "{rep:?}");
    assert_eq!(rep.mappings, n.mappings());
    for (i, flow) in flows.iter().enumerate() {
        for (side, p) in flow {
            let a = go(&mut n, 30 * S + 100, *side, p.clone());
            let b = go(&mut m, 5_000_000, *side, p.clone());
            assert_eq!(a.0, Verdict::Translated, "flow {i} before");
            assert_eq!(
                a, b,
                "flow {i} from {side:?}: another translation after restore"
            );
        }
    }
    assert_eq!(n.len(), m.len(), "no new entries");
    // The listings agree (time left shifted by the 30 s that passed).
    let key = |v: &EntryView| (v.orig.src, v.orig.sport, v.orig.dst, v.orig.dport);
    let mut a = n.entries(30 * S + 100);
    let mut b = m.entries(5_000_000);
    a.sort_by_key(key);
    b.sort_by_key(key);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (x.orig, x.reply, x.state, x.assured),
            (y.orig, y.reply, y.state, y.assured)
        );
        assert_eq!(x.packets, y.packets);
    }
    assert_eq!(
        n.hosts().collect::<Vec<_>>().len(),
        m.hosts().collect::<Vec<_>>().len()
    );
    m.check_invariants().unwrap();
}

#[test]
fn mappings_and_filter_records_survive() {
    let (n, _) = populated();
    let snap = n.export(100);
    let (mut m, _) = restore(&snap, 7, 0, 0);
    // EIM: red's UDP 5353 to another remote reuses its external port.
    let red_ext = tuple_of(&go(&mut m, 1, Side::Lan, udp(GREEN, 5353, WAN, 53)).1).1;
    let (v, p) = go(&mut m, 1, Side::Lan, udp(GREEN, 5353, WAN2, 53));
    assert_eq!(v, Verdict::Translated);
    assert_eq!(tuple_of(&p).1, red_ext, "the same mapping for a new remote");
    // Address-dependent filtering: WAN (talked to) may open a new session
    // to the mapping from another port; a stranger may not... (WAN2 was just
    // contacted too, so use a third address).
    let (v, p) = go(&mut m, 2, Side::Wan, udp(WAN, 9999, EXT, red_ext));
    assert_eq!(v, Verdict::Translated);
    assert_eq!(tuple_of(&p).2, GREEN);
    let stranger = Ipv4Addr::new(198, 51, 100, 7);
    assert_eq!(
        go(&mut m, 2, Side::Wan, udp(stranger, 9999, EXT, red_ext)).0,
        Verdict::Drop(NatDrop::Filtered)
    );
    m.check_invariants().unwrap();
}

#[test]
fn restored_ports_stay_reserved_for_new_flows() {
    let mut c = cfg(3);
    c.port_range = (2000, 2063);
    let mut n = Nat::new(c.clone());
    let mut held = Vec::new();
    for i in 0..20u16 {
        let (_, p) = go(&mut n, 0, Side::Lan, udp(RED, 3000 + i, WAN, 53));
        let ext = tuple_of(&p).1;
        // Answered: assured, so not given up when the ports run out.
        go(&mut n, 0, Side::Wan, udp(WAN, 53, EXT, ext));
        held.push(ext);
    }
    let snap = n.export(0);
    let mut c2 = c;
    c2.alloc = PortAlloc::Random(12345);
    let mut m = Nat::new(c2);
    m.import(&snap, 0, 0).unwrap();
    // Other hosts take every port left: none of them is one restored.
    let mut fresh = Vec::new();
    for i in 0..64u16 {
        let (v, p) = go(&mut m, 1, Side::Lan, udp(BLUE, 4000 + i, WAN2, 53));
        if v == Verdict::Translated {
            fresh.push(tuple_of(&p).1);
        }
    }
    // (Past the 44 free ports, blue's new flows give up its own older,
    // unassured ones: the restored, assured ones are never given up.)
    fresh.sort_unstable();
    fresh.dedup();
    assert_eq!(fresh.len(), 64 - held.len(), "the rest of the range");
    assert!(
        fresh.iter().all(|p| !held.contains(p)),
        "a restored port handed out again"
    );
    for (i, p) in held.iter().enumerate() {
        assert_eq!(m.mapping_of(proto::UDP, *p), Some((RED, 3000 + i as u16)));
    }
    m.check_invariants().unwrap();
}

#[test]
fn what_ran_out_while_down_is_not_restored_and_the_rest_keeps_its_time() {
    let mut n = Nat::new(cfg(1));
    go(&mut n, 0, Side::Lan, udp(RED, 1111, WAN, 53)); // unanswered: 120 s
    let (_, p) = go(&mut n, 0, Side::Lan, tcp(RED, 40000, WAN, 443, "S"));
    let ep = tuple_of(&p).1;
    go(&mut n, 0, Side::Wan, tcp(WAN, 443, EXT, ep, "SA"));
    go(&mut n, 0, Side::Lan, tcp(RED, 40000, WAN, 443, "A")); // established: 7440 s
    let snap = n.export(60 * S);
    assert_eq!(snap.entries.len(), 2);
    let (m, rep) = restore(&snap, 2, 10, 61 * S);
    assert_eq!((rep.restored, rep.expired), (1, 1), "{rep:?}");
    let e = &m.entries(10)[0];
    assert_eq!(e.orig.proto, proto::TCP);
    // 7440 s from 0, exported at 60 s, down 61 s: 7319 s left.
    assert_eq!(e.secs_left, 7440 - 60 - 61);
    assert_eq!(m.mappings(), 1, "the UDP mapping went with its entry");
    // And it expires on time in the new engine.
    let mut m = m;
    m.expire(10 + 7318 * S);
    assert_eq!(m.len(), 1);
    m.expire(10 + 7320 * S);
    assert_eq!(m.len(), 0);
    m.check_invariants().unwrap();
}

#[test]
fn contradictions_are_skipped_and_foreign_or_full_refused() {
    let (n, _) = populated();
    let snap = n.export(100);
    // Another external address.
    let mut c = cfg(1);
    c.external = Ipv4Addr::new(198, 51, 100, 1);
    assert!(matches!(
        Nat::new(c).import(&snap, 0, 0),
        Err(SnapshotError::ForeignExternal { .. })
    ));
    // Not into an engine that already has state.
    let (mut m, _) = restore(&snap, 1, 0, 0);
    assert_eq!(m.import(&snap, 0, 0), Err(SnapshotError::NotEmpty));
    // Two entries claiming one external port for different endpoints, and
    // one on the port DNAT publishes: only the first survives.
    let mut bad = snap.clone();
    let out = bad
        .entries
        .iter()
        .find(|e| e.orig.proto == proto::UDP)
        .unwrap()
        .clone();
    let mut twin = out.clone();
    twin.orig.src = Ipv4Addr::new(192, 168, 15, 77);
    twin.host = Some(twin.orig.src);
    twin.reply.src = WAN2;
    twin.orig.dst = WAN2;
    let mut on_dnat = out.clone();
    on_dnat.orig.proto = proto::TCP;
    on_dnat.reply.proto = proto::TCP;
    on_dnat.orig.sport = 33333;
    on_dnat.reply.dport = 80;
    bad.entries = vec![out, twin, on_dnat];
    let mut m = Nat::new(cfg(1));
    let rep = m.import(&bad, 0, 0).unwrap();
    assert_eq!((rep.restored, rep.inconsistent), (1, 2), "{rep:?}");
    m.check_invariants().unwrap();
    // A smaller table takes what fits.
    let mut c = cfg(1);
    c.max_entries = 2;
    let mut m = Nat::new(c);
    let rep = m.import(&snap, 0, 0).unwrap();
    assert_eq!((rep.restored, rep.no_room), (2, snap.entries.len() - 2));
    m.check_invariants().unwrap();
}

/// A table holding every external UDP port (64,512 mappings, one entry
/// each) round-trips whole; prints the times the README quotes.
#[test]
fn a_full_port_range_round_trips() {
    let mut c = cfg(4);
    c.max_entries_per_host = Some(c.max_entries);
    c.max_ports_per_host = 65_536;
    c.new_flows_per_host = 0;
    let mut n = Nat::new(c.clone());
    for i in 0..64_512u32 {
        let src = Ipv4Addr::from(0xc0a8_0f00 + 1 + i % 4);
        let p = udp(src, 1024 + (i / 4) as u16, WAN, 53);
        assert_eq!(
            go(&mut n, 0, Side::Lan, p).0,
            Verdict::Translated,
            "flow {i}"
        );
    }
    assert_eq!(n.len(), 64_512);
    let t = std::time::Instant::now();
    let snap = n.export(1);
    let t_export = t.elapsed();
    let b = snapshot::encode(&snap);
    let t_encode = t.elapsed() - t_export;
    let d = snapshot::decode(&b).unwrap();
    let mut m = Nat::new(c);
    let t = std::time::Instant::now();
    let r = m.import(&d, 0, 0).unwrap();
    let t_import = t.elapsed();
    eprintln!(
        "{} entries: export {t_export:?}, encode {t_encode:?} ({} bytes), import {t_import:?}",
        n.len(),
        b.len()
    );
    assert_eq!((r.restored, r.mappings), (64_512, 64_512));
    m.check_invariants().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random bytes, and valid snapshots with random bytes overwritten, never
    /// panic; whatever decodes imports into a consistent engine.
    #[test]
    fn garbage_is_refused_or_restored_consistently(
        noise in proptest::collection::vec(any::<u8>(), 0..300),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        cut in any::<usize>(),
    ) {
        let _ = snapshot::decode::<std::net::Ipv4Addr>(&noise);
        let _ = snapshot::decode::<std::net::Ipv6Addr>(&noise);
        let (n, _) = populated();
        let mut b = snapshot::encode(&n.export(100));
        for (at, v) in edits {
            let i = at % b.len();
            b[i] = v;
        }
        if cut % 4 == 0 {
            b.truncate(cut % (b.len() + 1));
        }
        if let Ok(s) = snapshot::decode(&b) {
            let mut m = Nat::new(cfg(5));
            let _ = m.import(&s, 1_000, cut as u64 % 10_000_000);
            prop_assert!(m.check_invariants().is_ok(), "{:?}", m.check_invariants());
            // And it still works.
            let mut p = udp(RED, 60000, WAN, 53);
            let _ = m.process(2_000, Side::Lan, &mut p, false, &route);
            prop_assert!(m.check_invariants().is_ok());
        }
    }
}

/// A paged copy (what the switch's periodic save does between batches) holds
/// the same entries as a whole one, with every remaining time counted from
/// the copy's beginning even when a page is taken later.
#[test]
fn paged_export_equals_the_whole_export() {
    let (n, _) = populated();
    let whole = n.export(100);
    for page in [1, 2, 7, 1000] {
        let mut snap = n.export_meta();
        assert!(snap.entries.is_empty());
        let (mut cursor, mut now, mut steps) = (Some(0), 100, 0);
        while let Some(c) = cursor {
            cursor = n.export_page(now, 100, c, page, &mut snap.entries);
            now += 3; // later pages, the same base
            steps += 1;
        }
        assert_eq!(
            steps,
            whole.entries.len().div_ceil(page).max(1),
            "page {page}"
        );
        assert_eq!(snap, whole, "page {page}");
    }
}
