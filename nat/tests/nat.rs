//! NAT engine tests. Packets are built with etherparse, which is also the
//! checksum oracle: every rewritten checksum must equal a full recompute.

use etherparse::{IpNumber, Ipv4Header, PacketBuilder, TcpHeader, UdpHeader};
use nat::checksum;
use nat::conntrack::Tuple;
use nat::wire::{Ipv4Packet, proto};
use nat::*;
use proptest::prelude::*;
use std::net::Ipv4Addr;

const EXT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const RED: Ipv4Addr = Ipv4Addr::new(192, 168, 15, 1);
const BLUE: Ipv4Addr = Ipv4Addr::new(192, 168, 15, 2);
const WAN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const WAN2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);

fn cfg() -> NatConfig {
    let mut c = NatConfig::new(EXT);
    c.masquerade = vec![Ipv4Net {
        addr: Ipv4Addr::new(192, 168, 15, 0),
        prefix: 24,
    }];
    c.dnat = vec![DnatRule {
        proto: proto::TCP,
        ports: (80, 80),
        to_addr: BLUE,
        to_port: 80,
    }];
    c.alloc = PortAlloc::Sequential;
    c
}

/// LAN is 192.168.15.0/24, our own addresses are local, the rest is WAN.
fn route(ip: Ipv4Addr) -> Side {
    if ip == EXT || ip == Ipv4Addr::new(192, 168, 15, 5) {
        Side::Local
    } else if ip.octets()[..3] == [192, 168, 15] {
        Side::Lan
    } else {
        Side::Wan
    }
}

fn udp(src: Ipv4Addr, sp: u16, dst: Ipv4Addr, dp: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv4(src.octets(), dst.octets(), 64)
        .udp(sp, dp)
        .write(&mut v, payload)
        .unwrap();
    v
}

fn tcp(src: Ipv4Addr, sp: u16, dst: Ipv4Addr, dp: u16, flags: &str, payload: &[u8]) -> Vec<u8> {
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
    if flags.contains('R') {
        b = b.rst();
    }
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
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
    b.write(&mut v, b"ping payload").unwrap();
    v
}

/// Every checksum in `pkt` equals a full recompute.
fn assert_checksums(pkt: &[u8]) {
    let (ip, rest) = Ipv4Header::from_slice(pkt).unwrap();
    assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "IPv4 header checksum"
    );
    if ip.fragment_offset.value() != 0 || ip.more_fragments {
        return;
    }
    match ip.protocol {
        IpNumber::TCP => {
            let (t, data) = TcpHeader::from_slice(rest).unwrap();
            assert_eq!(
                t.checksum,
                t.calc_checksum_ipv4(&ip, data).unwrap(),
                "TCP checksum"
            );
        }
        IpNumber::UDP => {
            let (u, data) = UdpHeader::from_slice(rest).unwrap();
            if u.checksum != 0 {
                assert_eq!(
                    u.checksum,
                    u.calc_checksum_ipv4(&ip, data).unwrap(),
                    "UDP checksum"
                );
            }
        }
        IpNumber::ICMP => assert_eq!(checksum::checksum(rest), 0, "ICMP checksum"),
        _ => {}
    }
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

#[test]
fn masquerade_preserves_port_and_reverses() {
    let mut n = Nat::new(cfg());
    let mut p = udp(RED, 40000, WAN, 53, b"query");
    assert_eq!(
        n.process(0, Side::Lan, &mut p, false, &route),
        Verdict::Translated
    );
    assert_eq!(tuple_of(&p), (EXT, 40000, WAN, 53));
    assert_checksums(&p);
    let mut r = udp(WAN, 53, EXT, 40000, b"answer");
    assert_eq!(
        n.process(1, Side::Wan, &mut r, false, &route),
        Verdict::Translated
    );
    assert_eq!(tuple_of(&r), (WAN, 53, RED, 40000));
    assert_checksums(&r);
}

#[test]
fn endpoint_independent_mapping_and_port_class() {
    let mut n = Nat::new(cfg());
    let mut a = udp(RED, 5000, WAN, 1, b"x");
    let mut b = udp(RED, 5000, WAN2, 2, b"x");
    n.process(0, Side::Lan, &mut a, false, &route);
    n.process(0, Side::Lan, &mut b, false, &route);
    assert_eq!(
        tuple_of(&a).1,
        tuple_of(&b).1,
        "one external port per internal endpoint (REQ-1)"
    );
    // blue wants the same port: it gets another one of the same class.
    let mut c = udp(BLUE, 5000, WAN, 1, b"x");
    n.process(0, Side::Lan, &mut c, false, &route);
    let pc = tuple_of(&c).1;
    assert_ne!(pc, 5000);
    assert!(pc >= 1024);
    // A privileged source port keeps a privileged external port (REQ-3a).
    let mut d = udp(RED, 500, WAN, 1, b"x");
    let mut e = udp(BLUE, 500, WAN, 1, b"x");
    n.process(0, Side::Lan, &mut d, false, &route);
    n.process(0, Side::Lan, &mut e, false, &route);
    assert_eq!(tuple_of(&d).1, 500);
    let pe = tuple_of(&e).1;
    assert!(pe < 1024 && pe != 500, "{pe}");
    assert_eq!(n.mappings(), 4);
}

#[test]
fn random_allocation_differs_from_sequential() {
    let mut c = cfg();
    c.alloc = PortAlloc::Random(42);
    let mut n = Nat::new(c);
    let mut ports = Vec::new();
    for i in 0..20u8 {
        let src = Ipv4Addr::new(192, 168, 15, 10 + i);
        let mut p = udp(src, 80, WAN, 1, b"x"); // all want port 80 → only the first keeps it
        n.process(0, Side::Lan, &mut p, false, &route);
        ports.push(tuple_of(&p).1);
    }
    assert_eq!(ports[0], 80, "UDP 80 is free (DNAT reserves TCP 80 only)");
    let increasing = ports.windows(2).filter(|w| w[1] == w[0] + 1).count();
    assert!(increasing < 5, "ports look sequential: {ports:?}");
    assert!(ports.iter().all(|p| *p < 1024));
}

fn filtering_case(f: Filtering) -> (Verdict, Verdict, Verdict) {
    let mut c = cfg();
    c.filtering = f;
    let mut n = Nat::new(c);
    let mut p = udp(RED, 6000, WAN, 3478, b"x");
    n.process(0, Side::Lan, &mut p, false, &route);
    let ext = tuple_of(&p).1;
    let mut same_addr_other_port = udp(WAN, 3479, EXT, ext, b"x");
    let mut other_addr = udp(WAN2, 3478, EXT, ext, b"x");
    let mut same = udp(WAN, 3478, EXT, ext, b"x");
    (
        n.process(1, Side::Wan, &mut same, false, &route),
        n.process(1, Side::Wan, &mut same_addr_other_port, false, &route),
        n.process(1, Side::Wan, &mut other_addr, false, &route),
    )
}

#[test]
fn filtering_modes() {
    use Verdict::*;
    let filtered = Drop(NatDrop::Filtered);
    assert_eq!(
        filtering_case(Filtering::EndpointIndependent),
        (Translated, Translated, Translated)
    );
    assert_eq!(
        filtering_case(Filtering::AddressDependent),
        (Translated, Translated, filtered)
    );
    assert_eq!(
        filtering_case(Filtering::AddressAndPortDependent),
        (Translated, filtered, filtered)
    );
}

#[test]
fn unsolicited_inbound_is_dropped() {
    let mut n = Nat::new(cfg());
    let mut p = udp(WAN, 1, EXT, 7777, b"x");
    assert_eq!(
        n.process(0, Side::Wan, &mut p, false, &route),
        Verdict::Drop(NatDrop::NoMapping)
    );
    let mut s = tcp(WAN, 1, EXT, 22, "S", b"");
    assert_eq!(
        n.process(0, Side::Wan, &mut s, false, &route),
        Verdict::Drop(NatDrop::NoMapping)
    );
    assert_eq!(n.counters.drops[NatDrop::NoMapping as usize], 2);
    assert!(n.is_empty());
}

#[test]
fn dnat_publishes_blue_port_80() {
    let mut n = Nat::new(cfg());
    let mut syn = tcp(WAN, 55555, EXT, 80, "S", b"");
    assert_eq!(
        n.process(0, Side::Wan, &mut syn, false, &route),
        Verdict::Translated
    );
    assert_eq!(
        tuple_of(&syn),
        (WAN, 55555, BLUE, 80),
        "blue sees the real client"
    );
    assert_checksums(&syn);
    let mut synack = tcp(BLUE, 80, WAN, 55555, "SA", b"");
    assert_eq!(
        n.process(1, Side::Lan, &mut synack, false, &route),
        Verdict::Translated
    );
    assert_eq!(tuple_of(&synack), (EXT, 80, WAN, 55555));
    assert_checksums(&synack);
}

#[test]
fn set_rules_changes_new_flows_and_keeps_the_table() {
    let mut n = Nat::new(cfg());
    // An established DNAT'd connection to blue:80 and a masqueraded one from red.
    let mut syn = tcp(WAN, 55555, EXT, 80, "S", b"");
    assert_eq!(
        n.process(0, Side::Wan, &mut syn, false, &route),
        Verdict::Translated
    );
    let mut synack = tcp(BLUE, 80, WAN, 55555, "SA", b"");
    assert_eq!(
        n.process(1, Side::Lan, &mut synack, false, &route),
        Verdict::Translated
    );
    let mut out = udp(RED, 7000, WAN, 53, b"q");
    assert_eq!(
        n.process(2, Side::Lan, &mut out, false, &route),
        Verdict::Translated
    );
    assert_eq!(tuple_of(&out).1, 7000, "port preserved");
    let before = n.len();

    // New rules: port 80 goes, 8080 -> red:8000 comes, red is no longer masqueraded.
    n.set_rules(
        vec![Ipv4Net {
            addr: BLUE,
            prefix: 32,
        }],
        vec![DnatRule {
            proto: proto::TCP,
            ports: (8080, 8080),
            to_addr: RED,
            to_port: 8000,
        }],
    );
    assert_eq!(n.len(), before, "tables kept");
    n.check_invariants().unwrap();
    // Tracked connections keep their translation, both ways.
    let mut data = tcp(WAN, 55555, EXT, 80, "A", b"more");
    assert_eq!(
        n.process(3, Side::Wan, &mut data, false, &route),
        Verdict::Translated
    );
    assert_eq!(tuple_of(&data), (WAN, 55555, BLUE, 80));
    assert_checksums(&data);
    let mut again = udp(RED, 7000, WAN, 53, b"q2");
    assert_eq!(
        n.process(4, Side::Lan, &mut again, false, &route),
        Verdict::Translated
    );
    // New flows follow the new rules.
    let mut syn2 = tcp(WAN2, 40000, EXT, 8080, "S", b"");
    assert_eq!(
        n.process(5, Side::Wan, &mut syn2, false, &route),
        Verdict::Translated
    );
    assert_eq!(tuple_of(&syn2), (WAN2, 40000, RED, 8000));
    assert_checksums(&syn2);
    let mut syn3 = tcp(WAN2, 40001, EXT, 80, "S", b"");
    assert_ne!(
        n.process(6, Side::Wan, &mut syn3, false, &route),
        Verdict::Translated,
        "the removed rule no longer admits new connections"
    );
    let mut red_new = udp(RED, 7001, WAN2, 53, b"q");
    assert_eq!(
        n.process(7, Side::Lan, &mut red_new, false, &route),
        Verdict::NotNatted,
        "red is no longer masqueraded"
    );
    // Port 80 is free for a mapping again; 8080 is never handed out.
    let mut blue80 = tcp(BLUE, 80, WAN2, 9, "S", b"");
    assert_eq!(
        n.process(8, Side::Lan, &mut blue80, false, &route),
        Verdict::Translated
    );
    let mut blue8080 = tcp(BLUE, 8080, WAN2, 9, "S", b"");
    assert_eq!(
        n.process(9, Side::Lan, &mut blue8080, false, &route),
        Verdict::Translated
    );
    assert_ne!(
        tuple_of(&blue8080).1,
        8080,
        "a published port is not handed out"
    );
    n.check_invariants().unwrap();
}

#[test]
fn hairpin_reaches_blue_with_external_source() {
    let mut n = Nat::new(cfg());
    let mut syn = tcp(RED, 41000, EXT, 80, "S", b"");
    assert_eq!(
        n.process(0, Side::Lan, &mut syn, false, &route),
        Verdict::Translated
    );
    let (s, sp, d, dp) = tuple_of(&syn);
    assert_eq!(
        (s, d, dp),
        (EXT, BLUE, 80),
        "REQ-9: the server sees the external address"
    );
    assert_eq!(sp, 41000, "and the mapped (preserved) port");
    assert_checksums(&syn);
    let mut back = tcp(BLUE, 80, EXT, sp, "SA", b"");
    assert_eq!(
        n.process(1, Side::Lan, &mut back, false, &route),
        Verdict::Translated
    );
    assert_eq!(tuple_of(&back), (EXT, 80, RED, 41000));
    assert_eq!(n.counters.hairpins, 1);
}

#[test]
fn lan_internal_and_local_traffic_is_not_natted() {
    let mut n = Nat::new(cfg());
    let mut p = udp(RED, 1, BLUE, 2, b"x");
    assert_eq!(
        n.process(0, Side::Lan, &mut p, false, &route),
        Verdict::NotNatted
    );
    let mut ping_gw = echo(RED, EXT, 9, false);
    assert_eq!(
        n.process(0, Side::Lan, &mut ping_gw, false, &route),
        Verdict::NotNatted
    );
    let mut ping_from_wan = echo(WAN, EXT, 9, false);
    assert_eq!(
        n.process(0, Side::Wan, &mut ping_from_wan, false, &route),
        Verdict::NotNatted
    );
    assert!(n.is_empty());
}

#[test]
fn icmp_echo_identifier_is_the_port() {
    let mut n = Nat::new(cfg());
    let mut a = echo(RED, WAN, 77, false);
    let mut b = echo(BLUE, WAN, 77, false);
    n.process(0, Side::Lan, &mut a, false, &route);
    n.process(0, Side::Lan, &mut b, false, &route);
    let (ia, ib) = (tuple_of(&a).1, tuple_of(&b).1);
    assert_eq!(ia, 77);
    assert_ne!(ib, 77);
    assert_checksums(&b);
    let mut rb = echo(WAN, EXT, ib, true);
    assert_eq!(
        n.process(1, Side::Wan, &mut rb, false, &route),
        Verdict::Translated
    );
    assert_eq!(tuple_of(&rb), (WAN, 77, BLUE, 77));
    assert_checksums(&rb);
}

/// An ICMP error from `from` to `to` quoting `orig` (header + 8 bytes), as routers send it.
fn icmp_error(from: Ipv4Addr, to: Ipv4Addr, ty: u8, code: u8, orig: &[u8]) -> Vec<u8> {
    let quoted = &orig[..(20 + 8).min(orig.len())];
    let mut icmp = vec![ty, code, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(quoted);
    let c = checksum::checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut v = Vec::new();
    let mut h = Ipv4Header::new(
        icmp.len() as u16,
        64,
        IpNumber::ICMP,
        from.octets(),
        to.octets(),
    )
    .unwrap();
    h.header_checksum = h.calc_header_checksum();
    h.write(&mut v).unwrap();
    v.extend_from_slice(&icmp);
    v
}

#[test]
fn icmp_errors_are_translated_back_and_touch_no_state() {
    let mut n = Nat::new(cfg());
    // blue's UDP 33000 -> a closed port in wan; blue itself already holds port
    // 33000? No: red holds it first, so blue's mapping differs from its port.
    let mut first = udp(RED, 33000, WAN, 1, b"x");
    n.process(0, Side::Lan, &mut first, false, &route);
    let orig = udp(BLUE, 33000, WAN, 9999, b"hello");
    let mut out = orig.clone();
    n.process(0, Side::Lan, &mut out, false, &route);
    let ext_port = tuple_of(&out).1;
    assert_ne!(ext_port, 33000);
    let before = n.entries(1);
    let mut err = icmp_error(WAN, EXT, 3, 3, &out);
    assert_eq!(
        n.process(1, Side::Wan, &mut err, false, &route),
        Verdict::Translated
    );
    assert_checksums(&err);
    let ip = Ipv4Packet::new_checked(&err[..]).unwrap();
    assert_eq!((ip.src(), ip.dst()), (WAN, BLUE));
    let inner = &ip.payload()[8..];
    assert_eq!(
        &inner[12..16],
        &BLUE.octets(),
        "embedded source is blue again"
    );
    assert_eq!(
        u16::from_be_bytes([inner[20], inner[21]]),
        33000,
        "embedded source port is blue's"
    );
    assert_eq!(
        checksum::checksum(&inner[..20]),
        0,
        "embedded IPv4 header checksum"
    );
    assert_eq!(
        &inner[..28],
        &orig[..28],
        "embedded header is what blue sent"
    );
    // Errors never create, refresh or kill state.
    let after = n.entries(1);
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!((b.secs_left, b.packets), (a.secs_left, a.packets));
    }
    // An error about nothing we know is dropped.
    let stray = udp(EXT, 1234, WAN, 1, b"x");
    let mut e2 = icmp_error(WAN, EXT, 3, 3, &stray);
    assert_eq!(
        n.process(1, Side::Wan, &mut e2, false, &route),
        Verdict::Drop(NatDrop::NoMapping)
    );
}

#[test]
fn icmp_error_from_a_router_on_the_way_keeps_its_source() {
    let mut n = Nat::new(cfg());
    let mut out = udp(RED, 33434, WAN, 33434, b"traceroute");
    n.process(0, Side::Lan, &mut out, false, &route);
    let router = Ipv4Addr::new(198, 51, 100, 1);
    let mut err = icmp_error(router, EXT, 11, 0, &out);
    assert_eq!(
        n.process(1, Side::Wan, &mut err, false, &route),
        Verdict::Translated
    );
    let ip = Ipv4Packet::new_checked(&err[..]).unwrap();
    assert_eq!((ip.src(), ip.dst()), (router, RED));
    assert_checksums(&err);
}

#[test]
fn tcp_lifecycle_and_timeouts() {
    let mut n = Nat::new(cfg());
    let t = |f: &str, from_red: bool| {
        if from_red {
            tcp(RED, 42000, WAN, 443, f, b"")
        } else {
            tcp(WAN, 443, EXT, 42000, f, b"")
        }
    };
    let step = |n: &mut Nat, now: u64, f: &str, from_red: bool| {
        let mut p = t(f, from_red);
        let side = if from_red { Side::Lan } else { Side::Wan };
        assert_eq!(
            n.process(now, side, &mut p, false, &route),
            Verdict::Translated,
            "{f}"
        );
        let e = &n.entries(now)[0];
        (e.state, e.secs_left)
    };
    assert_eq!(step(&mut n, 0, "S", true), ("SYN_SENT", 240));
    assert_eq!(step(&mut n, 0, "SA", false), ("SYN_RECV", 240));
    assert_eq!(step(&mut n, 0, "A", true), ("ESTABLISHED", 7440));
    assert!(n.entries(0)[0].assured);
    assert_eq!(step(&mut n, 1000, "FA", true), ("FIN_WAIT", 240));
    assert_eq!(step(&mut n, 1000, "A", false), ("CLOSE_WAIT", 240));
    assert_eq!(step(&mut n, 1000, "FA", false), ("LAST_ACK", 240));
    assert_eq!(step(&mut n, 1000, "A", true), ("TIME_WAIT", 240));
    // Expiry with explicit time: still there at 240 s, gone at 241 s, mapping released.
    n.expire(240_000);
    assert_eq!(n.len(), 1);
    n.expire(241_001);
    assert_eq!((n.len(), n.mappings()), (0, 0));
}

#[test]
fn rst_closes_and_inbound_non_syn_cannot_open() {
    let mut n = Nat::new(cfg());
    let mut s = tcp(RED, 42001, WAN, 80, "S", b"");
    n.process(0, Side::Lan, &mut s, false, &route);
    let mut r = tcp(WAN, 80, EXT, 42001, "RA", b"");
    assert_eq!(
        n.process(0, Side::Wan, &mut r, false, &route),
        Verdict::Translated
    );
    assert_eq!(n.entries(0)[0].state, "CLOSE");
    let mut stray = tcp(WAN, 80, EXT, 50000, "A", b"");
    assert_eq!(
        n.process(0, Side::Wan, &mut stray, false, &route),
        Verdict::Drop(NatDrop::InvalidTcp)
    );
}

#[test]
fn simultaneous_open_through_the_mapping() {
    let mut c = cfg();
    c.filtering = Filtering::AddressDependent;
    let mut n = Nat::new(c);
    let mut s = tcp(RED, 42002, WAN, 5000, "S", b"");
    n.process(0, Side::Lan, &mut s, false, &route);
    let mut peer_syn = tcp(WAN, 5000, EXT, 42002, "S", b"");
    assert_eq!(
        n.process(0, Side::Wan, &mut peer_syn, false, &route),
        Verdict::Translated
    );
    assert_eq!(n.entries(0)[0].state, "SYN_SENT2");
    let mut sa = tcp(RED, 42002, WAN, 5000, "SA", b"");
    n.process(0, Side::Lan, &mut sa, false, &route);
    let mut ack = tcp(WAN, 5000, EXT, 42002, "A", b"");
    n.process(0, Side::Wan, &mut ack, false, &route);
    assert_eq!(n.entries(0)[0].state, "ESTABLISHED");
}

#[test]
fn udp_expiry_and_refresh_with_explicit_time() {
    let mut n = Nat::new(cfg());
    let mut p = udp(RED, 1, WAN, 2, b"x");
    n.process(0, Side::Lan, &mut p, false, &route);
    // Never answered: the short timeout (120 s, the RFC 4787 REQ-5 floor).
    assert_eq!(n.entries(0)[0].secs_left, 120);
    let mut r = udp(WAN, 2, EXT, 1, b"y");
    n.process(0, Side::Wan, &mut r, false, &route);
    assert_eq!(n.entries(0)[0].secs_left, 300);
    let mut p = udp(RED, 1, WAN, 2, b"x");
    n.process(200_000, Side::Lan, &mut p, false, &route); // outbound refresh (REQ-6)
    n.expire(499_999);
    assert_eq!(n.len(), 1);
    n.expire(500_001);
    assert_eq!(n.len(), 0);
    assert_eq!(n.counters.expired, 1);
}

/// A fast path outside the engine forwarded a flow's packets: `offloaded`
/// adds them to the right direction and restarts the timeout from when they
/// were last seen, never backwards; a gone entry says so.
#[test]
fn offloaded_traffic_counts_and_refreshes_from_its_last_packet() {
    let mut n = Nat::new(cfg());
    let mut p = udp(RED, 1, WAN, 2, b"x");
    n.process(0, Side::Lan, &mut p, false, &route);
    let mut r = udp(WAN, 2, EXT, 1, b"y");
    n.process(0, Side::Wan, &mut r, false, &route);
    // The reply direction, as it arrives (to the external address and port).
    let reply = Tuple {
        proto: proto::UDP,
        src: WAN,
        dst: EXT,
        sport: 2,
        dport: 1,
    };
    let orig = Tuple {
        proto: proto::UDP,
        src: RED,
        dst: WAN,
        sport: 1,
        dport: 2,
    };
    assert!(n.offloaded(&orig, 10, 1000, 250_000, 251_000));
    assert!(n.offloaded(&reply, 3, 300, 250_000, 251_000));
    let e = &n.entries(251_000)[0];
    assert_eq!(e.packets, [11, 4]);
    assert_eq!(e.bytes[0], 1000 + 29);
    // Timeout (300 s, assured) restarted at 250 s: alive at 549.9 s.
    assert_eq!(e.secs_left, 299);
    // An older report never moves the expiry back.
    assert!(n.offloaded(&orig, 1, 1, 100_000, 251_000));
    n.expire(549_999);
    assert_eq!(n.len(), 1);
    n.expire(550_001);
    assert_eq!(n.len(), 0);
    // Gone: the fast path must forget the flow.
    assert!(!n.offloaded(&orig, 1, 1, 550_001, 550_001));
}

#[test]
fn full_table_evicts_unassured_and_never_assured() {
    let mut c = cfg();
    c.max_entries = 4;
    let mut n = Nat::new(c);
    // Two assured UDP flows (replies seen).
    for port in [1000u16, 1001] {
        let mut p = udp(RED, port, WAN, 53, b"q");
        n.process(0, Side::Lan, &mut p, false, &route);
        let mut r = udp(WAN, 53, EXT, port, b"a");
        n.process(0, Side::Wan, &mut r, false, &route);
    }
    // A SYN flood: unassured entries evict each other, never the assured ones.
    for port in 2000u16..2100 {
        let mut s = tcp(RED, port, WAN, 80, "S", b"");
        assert_eq!(
            n.process(1, Side::Lan, &mut s, false, &route),
            Verdict::Translated
        );
    }
    assert_eq!(n.len(), 4);
    assert_eq!(n.counters.early_dropped, 98);
    let assured: Vec<_> = n.entries(1).into_iter().filter(|e| e.assured).collect();
    assert_eq!(assured.len(), 2);
    // Only assured entries left: a new flow is refused and counted.
    for port in [1002u16, 1003] {
        let mut p = udp(RED, port, WAN, 53, b"q");
        n.process(2, Side::Lan, &mut p, false, &route);
        let mut r = udp(WAN, 53, EXT, port, b"a");
        n.process(2, Side::Wan, &mut r, false, &route);
    }
    // Red is at its own limit (tables under 64 entries: the whole table)
    // with nothing unassured: host limit. Blue finds the table full.
    let mut s = tcp(RED, 3000, WAN, 80, "S", b"");
    assert_eq!(
        n.process(3, Side::Lan, &mut s, false, &route),
        Verdict::Drop(NatDrop::HostLimit)
    );
    let mut s = tcp(BLUE, 3000, WAN, 80, "S", b"");
    assert_eq!(
        n.process(3, Side::Lan, &mut s, false, &route),
        Verdict::Drop(NatDrop::TableFull)
    );
    assert_eq!(n.counters.drops[NatDrop::TableFull as usize], 1);
    let red = n.hosts().find(|h| h.addr == RED).unwrap();
    assert_eq!((red.entries, red.drops, red.evicted), (4, 1, 100));
    assert_eq!(red.drops_by_reason[0], (NatDrop::HostLimit, 1));
    assert!(
        n.hosts().all(|h| h.addr != BLUE),
        "no record for a host without state"
    );
    n.check_invariants().unwrap();
}

#[test]
fn udp_zero_checksum_stays_zero() {
    let mut n = Nat::new(cfg());
    let mut p = udp(RED, 1, WAN, 2, b"x");
    p[26] = 0;
    p[27] = 0;
    n.process(0, Side::Lan, &mut p, false, &route);
    assert_eq!(&p[26..28], &[0, 0]);
}

/// The kernel's seed for CHECKSUM_PARTIAL: the folded pseudo-header sum, uncomplemented.
fn partial_seed(pkt: &[u8]) -> u16 {
    let ip = Ipv4Packet::new_checked(pkt).unwrap();
    checksum::fold(checksum::pseudo_header(
        ip.src().octets(),
        ip.dst().octets(),
        ip.protocol(),
        ip.payload().len() as u16,
    ))
}

#[test]
fn checksum_partial_frames_only_change_the_seed_for_addresses() {
    let mut n = Nat::new(cfg());
    let mut p = tcp(RED, 43000, WAN, 443, "S", b"data");
    let seed = partial_seed(&p);
    p[36..38].copy_from_slice(&seed.to_be_bytes());
    // blue's port collides later; use a fresh source to force a port change too.
    assert_eq!(
        n.process(0, Side::Lan, &mut p, true, &route),
        Verdict::Translated
    );
    assert_eq!(
        u16::from_be_bytes([p[36], p[37]]),
        partial_seed(&p),
        "seed follows the new addresses only"
    );
    let mut q = tcp(BLUE, 43000, WAN, 443, "S", b"data");
    let seed = partial_seed(&q);
    q[36..38].copy_from_slice(&seed.to_be_bytes());
    n.process(0, Side::Lan, &mut q, true, &route);
    assert_ne!(tuple_of(&q).1, 43000, "port changed");
    assert_eq!(
        u16::from_be_bytes([q[36], q[37]]),
        partial_seed(&q),
        "a port change leaves the seed alone"
    );
}

/// Split an IPv4 datagram into fragments of `chunk` payload bytes (multiple of 8).
fn fragment(pkt: &[u8], chunk: usize) -> Vec<Vec<u8>> {
    fragment_id(pkt, chunk, 4242)
}

fn fragment_id(pkt: &[u8], chunk: usize, id: u16) -> Vec<Vec<u8>> {
    let (ip, rest) = Ipv4Header::from_slice(pkt).unwrap();
    let mut out = Vec::new();
    let mut off = 0;
    while off < rest.len() {
        let end = (off + chunk).min(rest.len());
        let mut h = ip.clone();
        h.more_fragments = end < rest.len();
        h.fragment_offset = etherparse::IpFragOffset::try_new((off / 8) as u16).unwrap();
        h.total_len = (20 + end - off) as u16;
        h.identification = id;
        h.header_checksum = h.calc_header_checksum();
        let mut v = Vec::new();
        h.write(&mut v).unwrap();
        v.extend_from_slice(&rest[off..end]);
        out.push(v);
        off = end;
    }
    out
}

fn reassemble(frags: &[Vec<u8>]) -> Vec<u8> {
    let mut parts: Vec<(usize, Vec<u8>)> = frags
        .iter()
        .map(|f| {
            let (h, rest) = Ipv4Header::from_slice(f).unwrap();
            (usize::from(h.fragment_offset.value()) * 8, rest.to_vec())
        })
        .collect();
    parts.sort();
    let (mut h, _) = Ipv4Header::from_slice(&frags[0]).unwrap();
    let payload: Vec<u8> = parts.into_iter().flat_map(|(_, p)| p).collect();
    h.more_fragments = false;
    h.fragment_offset = etherparse::IpFragOffset::ZERO;
    h.total_len = (20 + payload.len()) as u16;
    h.header_checksum = h.calc_header_checksum();
    let mut v = Vec::new();
    h.write(&mut v).unwrap();
    v.extend_from_slice(&payload);
    v
}

fn fragments_case(order: &[usize]) {
    let mut n = Nat::new(cfg());
    let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
    let dgram = udp(RED, 45000, WAN, 9000, &payload);
    let frags = fragment(&dgram, 1480);
    assert_eq!(frags.len(), 3);
    let mut out: Vec<Vec<u8>> = Vec::new();
    for &i in order {
        let mut f = frags[i].clone();
        match n.process(0, Side::Lan, &mut f, false, &route) {
            Verdict::Translated => out.push(f),
            Verdict::Stolen => {}
            v => panic!("fragment {i}: {v:?}"),
        }
        n.take_released(|f| out.push(f.to_vec()));
    }
    assert_eq!(out.len(), 3, "every fragment comes out");
    for f in &out {
        let ip = Ipv4Packet::new_checked(&f[..]).unwrap();
        assert_eq!((ip.src(), ip.dst()), (EXT, WAN));
        assert!(ip.checksum_ok());
    }
    let whole = reassemble(&out);
    assert_checksums(&whole);
    assert_eq!(tuple_of(&whole), (EXT, 45000, WAN, 9000));
}

#[test]
fn fragments_in_order() {
    fragments_case(&[0, 1, 2]);
}

#[test]
fn fragments_out_of_order() {
    fragments_case(&[2, 1, 0]);
    fragments_case(&[1, 0, 2]);
}

#[test]
fn early_fragments_are_bounded_and_time_out() {
    let mut c = cfg();
    c.frag_slots = 2;
    let mut n = Nat::new(c);
    let payload = vec![7u8; 3000];
    let frags = fragment(&udp(RED, 1, WAN, 2, &payload), 1480);
    let mut a = frags[1].clone();
    let mut b = frags[2].clone();
    assert_eq!(
        n.process(0, Side::Lan, &mut a, false, &route),
        Verdict::Stolen
    );
    assert_eq!(
        n.process(0, Side::Lan, &mut b, false, &route),
        Verdict::Stolen
    );
    let mut c2 = frags[2].clone();
    assert_eq!(
        n.process(0, Side::Lan, &mut c2, false, &route),
        Verdict::Drop(NatDrop::FragmentOverflow)
    );
    n.expire(6_000);
    assert_eq!(n.counters.drops[NatDrop::FragmentTimeout as usize], 2);
    let mut d = frags[1].clone();
    assert_eq!(
        n.process(6_000, Side::Lan, &mut d, false, &route),
        Verdict::Stolen,
        "slots are free again"
    );
}

#[test]
fn malformed_input_is_a_counted_drop() {
    let mut n = Nat::new(cfg());
    for bad in [vec![], vec![0x45; 10], vec![0x65; 40], {
        let mut p = udp(RED, 1, WAN, 2, b"x");
        p[3] = 200; // total length beyond the buffer
        p
    }] {
        let mut b = bad.clone();
        assert_eq!(
            n.process(0, Side::Lan, &mut b, false, &route),
            Verdict::Drop(NatDrop::Malformed)
        );
    }
    // Truncated ICMP error.
    let mut e = icmp_error(WAN, EXT, 3, 3, &udp(EXT, 1, WAN, 2, b""));
    e.truncate(40);
    e[2..4].copy_from_slice(&40u16.to_be_bytes());
    assert_eq!(
        n.process(0, Side::Wan, &mut e, false, &route),
        Verdict::Drop(NatDrop::Malformed)
    );
}

proptest! {
    /// Translate-then-reverse is the identity, and every checksum equals a recompute.
    #[test]
    fn round_trip_identity(
        host in 1u8..250, sport in 1u16.., dport in 1u16.., wan_host in 1u8..250,
        is_tcp in any::<bool>(), payload in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut n = Nat::new({ let mut c = cfg(); c.alloc = PortAlloc::Random(7); c });
        let src = Ipv4Addr::new(192, 168, 15, host);
        let dst = Ipv4Addr::new(198, 51, 100, wan_host);
        let mk = |s, sp, d, dp| if is_tcp { tcp(s, sp, d, dp, "S", &payload) } else { udp(s, sp, d, dp, &payload) };
        let mut out = mk(src, sport, dst, dport);
        prop_assert_eq!(n.process(0, Side::Lan, &mut out, false, &route), Verdict::Translated);
        assert_checksums(&out);
        let (es, ep, ed, edp) = tuple_of(&out);
        prop_assert_eq!((es, ed, edp), (EXT, dst, dport));
        // The reply to what left comes back as the reply to what was sent.
        let mut back = if is_tcp { tcp(ed, edp, es, ep, "SA", &payload) } else { udp(ed, edp, es, ep, &payload) };
        prop_assert_eq!(n.process(1, Side::Wan, &mut back, false, &route), Verdict::Translated);
        let expect = if is_tcp { tcp(dst, dport, src, sport, "SA", &payload) } else { udp(dst, dport, src, sport, &payload) };
        prop_assert_eq!(back, expect);
    }

    /// Incremental updates equal a full recompute for any 32-bit change.
    #[test]
    fn incremental_checksum_equals_recompute(data in proptest::collection::vec(any::<u8>(), 8..64), at in 0usize..4, new in any::<u32>()) {
        let mut d = data.clone();
        let i = (at * 2).min(d.len() - 4) & !1;
        let field = checksum::checksum(&d);
        let old = u32::from_be_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]]);
        d[i..i + 4].copy_from_slice(&new.to_be_bytes());
        let inc = checksum::update32(field, old, new);
        let full = checksum::checksum(&d);
        // 0x0000 and 0xffff are the same value in one's complement.
        prop_assert!(inc == full || (inc == 0xffff && full == 0) || (inc == 0 && full == 0xffff), "{inc:04x} vs {full:04x}");
    }
}

#[test]
fn tuple_inverse() {
    let t = Tuple {
        proto: 6,
        src: RED,
        dst: WAN,
        sport: 1,
        dport: 2,
    };
    assert_eq!(t.inv().inv(), t);
}

#[test]
fn mappings_and_filter_state_are_released_with_their_entries() {
    // Outbound, hairpin and inbound-through-mapping entries all expire cleanly.
    let mut c = cfg();
    c.filtering = Filtering::AddressDependent;
    let mut n = Nat::new(c);
    let mut a = udp(RED, 6000, WAN, 1, b"x");
    n.process(0, Side::Lan, &mut a, false, &route);
    let ext = tuple_of(&a).1;
    let mut b = udp(WAN, 2, EXT, ext, b"x"); // same address, other port: admitted (ADF)
    assert_eq!(
        n.process(0, Side::Wan, &mut b, false, &route),
        Verdict::Translated
    );
    let mut h = tcp(RED, 41000, EXT, 80, "S", b"");
    assert_eq!(
        n.process(0, Side::Lan, &mut h, false, &route),
        Verdict::Translated
    );
    assert_eq!(n.len(), 3);
    n.expire(400_000);
    assert_eq!((n.len(), n.mappings()), (0, 0));
    // After expiry the old remote is no longer admitted.
    let mut late = udp(WAN, 2, EXT, ext, b"x");
    assert_eq!(
        n.process(400_000, Side::Wan, &mut late, false, &route),
        Verdict::Drop(NatDrop::NoMapping)
    );
}

// ---- issue 8: conntrack semantics, fairness, hairpinning, fuzz findings ----

/// A NAT with endpoint-independent filtering.
fn eif() -> Nat {
    let mut c = cfg();
    c.filtering = Filtering::EndpointIndependent;
    Nat::new(c)
}

fn lan(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 15, i)
}

/// Fuzz finding (reproducer as found): with a full table, evicting the last
/// user of the mapping the new entry needs deleted that mapping, and the
/// next host got the same external port.
#[test]
fn eviction_never_loses_the_mapping_the_new_entry_needs() {
    let mut c = cfg();
    c.max_entries = 2;
    c.filtering = Filtering::EndpointIndependent;
    let mut n = Nat::new(c);
    let x = Ipv4Addr::new(203, 0, 113, 10);
    let y = Ipv4Addr::new(203, 0, 113, 11);
    let flows = [
        (lan(1), 5000, x),
        (lan(2), 6000, x),
        (lan(1), 5000, y),
        (lan(3), 5000, x),
    ];
    let mut ext = Vec::new();
    for (i, (src, sp, dst)) in flows.into_iter().enumerate() {
        let mut p = udp(src, sp, dst, 53, b"q");
        assert_eq!(
            n.process(i as u64 * 1000, Side::Lan, &mut p, false, &route),
            Verdict::Translated
        );
        ext.push((src, tuple_of(&p).1));
        n.check_invariants().unwrap();
    }
    assert_eq!(ext[0].1, ext[2].1, "EIM: one port for .1:5000");
    assert_ne!(ext[3].1, ext[2].1, ".3 must not share .1's external port");
    // Unsolicited inbound to .1's port reaches .1, not .3.
    let mut inb = udp(WAN2, 9, EXT, ext[2].1, b"i");
    assert_eq!(
        n.process(4000, Side::Wan, &mut inb, false, &route),
        Verdict::Translated
    );
    assert_eq!(tuple_of(&inb).2, lan(1));
}

/// Fuzz finding: an outbound echo reply without state created a mapping for
/// id 0 and went out untranslated. It is INVALID (as netfilter): dropped, counted.
#[test]
fn outbound_echo_reply_without_state_is_dropped() {
    let mut n = Nat::new(cfg());
    let mut r = echo(RED, WAN, 77, true);
    assert_eq!(
        n.process(0, Side::Lan, &mut r, false, &route),
        Verdict::Drop(NatDrop::InvalidIcmp)
    );
    assert_eq!((n.len(), n.mappings()), (0, 0));
    assert_eq!(n.counters.drops[NatDrop::InvalidIcmp as usize], 1);
    // Inside the LAN it is not the NAT's business.
    let mut r = echo(RED, BLUE, 77, true);
    assert_eq!(
        n.process(0, Side::Lan, &mut r, false, &route),
        Verdict::NotNatted
    );
    // An echo *request* with identifier 0 is fine: it gets a non-zero one.
    let mut q = echo(RED, WAN, 0, false);
    assert_eq!(
        n.process(0, Side::Lan, &mut q, false, &route),
        Verdict::Translated
    );
    let id = tuple_of(&q).1;
    assert_ne!(id, 0);
    assert_checksums(&q);
    let mut a = echo(WAN, EXT, id, true);
    assert_eq!(
        n.process(0, Side::Wan, &mut a, false, &route),
        Verdict::Translated
    );
    assert_eq!(tuple_of(&a), (WAN, 0, RED, 0));
}

/// Fuzz finding: TCP headers of 14-17 bytes and UDP headers of 4-7 bytes got
/// their addresses rewritten but not their ports or checksum.
#[test]
fn short_transport_headers_are_malformed() {
    let mut n = Nat::new(cfg());
    let full_tcp = tcp(RED, 1000, WAN, 80, "S", b"");
    for cut in 14..20 {
        let mut p = full_tcp[..20 + cut].to_vec();
        p[2..4].copy_from_slice(&((20 + cut) as u16).to_be_bytes());
        fix_ip_checksum(&mut p);
        assert_eq!(
            n.process(0, Side::Lan, &mut p, false, &route),
            Verdict::Drop(NatDrop::Malformed),
            "TCP header of {cut} bytes"
        );
    }
    // A data offset below 5 words, or beyond the segment.
    for doff in [0u8, 4, 6] {
        let mut p = full_tcp.clone();
        p[32] = doff << 4;
        assert_eq!(
            n.process(0, Side::Lan, &mut p, false, &route),
            Verdict::Drop(NatDrop::Malformed),
            "data offset {doff}"
        );
    }
    let full_udp = udp(RED, 1000, WAN, 53, b"");
    for cut in 4..8 {
        let mut p = full_udp[..20 + cut].to_vec();
        p[2..4].copy_from_slice(&((20 + cut) as u16).to_be_bytes());
        fix_ip_checksum(&mut p);
        assert_eq!(
            n.process(0, Side::Lan, &mut p, false, &route),
            Verdict::Drop(NatDrop::Malformed),
            "UDP header of {cut} bytes"
        );
    }
    // A tiny first fragment (MF set, 16 bytes of TCP): also refused (RFC 1858).
    let mut p = full_tcp[..36].to_vec();
    p[2..4].copy_from_slice(&36u16.to_be_bytes());
    p[6] = 0x20;
    fix_ip_checksum(&mut p);
    assert_eq!(
        n.process(0, Side::Lan, &mut p, false, &route),
        Verdict::Drop(NatDrop::Malformed)
    );
    assert!(n.is_empty());
}

fn fix_ip_checksum(p: &mut [u8]) {
    let mut ip = Ipv4Packet::new_checked(&mut *p).unwrap();
    ip.fill_checksum();
}

/// `total_len == 0` is a GSO super-frame's convention only (partial checksum).
#[test]
fn zero_total_length_only_with_partial_checksum() {
    let mut n = Nat::new(cfg());
    let mut p = udp(RED, 1000, WAN, 53, b"q");
    p[2] = 0;
    p[3] = 0;
    fix_ip_checksum(&mut p);
    assert_eq!(
        n.process(0, Side::Lan, &mut p.clone(), false, &route),
        Verdict::Drop(NatDrop::Malformed)
    );
    assert_eq!(
        n.process(0, Side::Lan, &mut p, true, &route),
        Verdict::Translated
    );
}

/// A FIN (or SYN+ACK, RST, no flag) as first segment opens nothing; a pickup
/// (ACK first) is ESTABLISHED but unassured and short-lived until answered:
/// three ACKs of one tuple no longer make an assured 7,440 s entry.
#[test]
fn first_segments_and_mid_stream_pickup() {
    let mut n = Nat::new(cfg());
    for f in ["F", "FA", "SA", "R", ""] {
        let mut p = tcp(RED, 2000, WAN, 80, f, b"");
        assert_eq!(
            n.process(0, Side::Lan, &mut p, false, &route),
            Verdict::Drop(NatDrop::InvalidTcp),
            "first segment {f:?}"
        );
    }
    assert!(n.is_empty());
    for _ in 0..3 {
        let mut p = tcp(RED, 2001, WAN, 80, "A", b"");
        assert_eq!(
            n.process(0, Side::Lan, &mut p, false, &route),
            Verdict::Translated
        );
    }
    let e = &n.entries(0)[0];
    assert_eq!(
        (e.state, e.secs_left, e.assured),
        ("ESTABLISHED", 60, false)
    );
    // The far side answers: now assured, with the established timeout.
    let mut r = tcp(WAN, 80, EXT, 2001, "A", b"");
    assert_eq!(
        n.process(1000, Side::Wan, &mut r, false, &route),
        Verdict::Translated
    );
    let e = &n.entries(1000)[0];
    assert_eq!(
        (e.state, e.secs_left, e.assured),
        ("ESTABLISHED", 7440, true)
    );
    // An unanswered pickup is gone after 60 s, even if it sends a FIN.
    let mut p = tcp(RED, 2002, WAN, 80, "A", b"");
    n.process(0, Side::Lan, &mut p, false, &route);
    let mut p = tcp(RED, 2002, WAN, 80, "FA", b"");
    n.process(0, Side::Lan, &mut p, false, &route);
    let e = n
        .entries(0)
        .into_iter()
        .find(|e| e.orig.sport == 2002)
        .unwrap();
    assert_eq!((e.state, e.secs_left, e.assured), ("FIN_WAIT", 60, false));
    n.expire(61_000);
    assert_eq!(n.len(), 1);
}

/// A RST makes an assured connection unassured and short-lived (10 s).
#[test]
fn rst_unassures_and_shortens() {
    let mut n = Nat::new(cfg());
    let mut go = |now, from_red: bool, f: &str| {
        let mut p = if from_red {
            tcp(RED, 2100, WAN, 443, f, b"")
        } else {
            tcp(WAN, 443, EXT, 2100, f, b"")
        };
        let side = if from_red { Side::Lan } else { Side::Wan };
        assert_eq!(
            n.process(now, side, &mut p, false, &route),
            Verdict::Translated
        );
        let e = n.entries(now)[0].clone();
        (e.state, e.secs_left, e.assured)
    };
    go(0, true, "S");
    go(0, false, "SA");
    assert_eq!(go(0, true, "A"), ("ESTABLISHED", 7440, true));
    assert_eq!(go(0, false, "R"), ("CLOSE", 10, false));
    assert_eq!(
        go(0, true, "A"),
        ("CLOSE", 10, false),
        "no resurrection by ACK"
    );
}

/// The issue's ACK flood: one host sends ACK-only segments on many tuples to
/// a silent remote and fills its share; another host's SYN still gets an
/// entry, its connection becomes assured, and only the flooder's entries go.
#[test]
fn ack_flood_cannot_starve_another_host() {
    let mut c = cfg();
    c.max_entries = 256; // per host: 64
    let mut n = Nat::new(c);
    let mut now = 0;
    for i in 0..5000u32 {
        let mut p = tcp(RED, 10_000 + (i % 50_000) as u16, WAN, 80, "A", b"");
        assert_eq!(
            n.process(now, Side::Lan, &mut p, false, &route),
            Verdict::Translated
        );
        now += 1;
    }
    let red = n.hosts().find(|h| h.addr == RED).unwrap();
    assert_eq!(red.entries, 64, "red holds its share, not the table");
    assert!(red.evicted >= 5000 - 64);
    // Three more hosts flood too: the table is full.
    for h in 20..23 {
        for i in 0..100u16 {
            let mut p = tcp(lan(h), 10_000 + i, WAN, 80, "A", b"");
            n.process(now, Side::Lan, &mut p, false, &route);
        }
    }
    assert_eq!(n.len(), 256);
    let mut syn = tcp(BLUE, 5555, WAN2, 443, "S", b"");
    assert_eq!(
        n.process(now, Side::Lan, &mut syn, false, &route),
        Verdict::Translated
    );
    let mut sa = tcp(WAN2, 443, EXT, tuple_of(&syn).1, "SA", b"");
    assert_eq!(
        n.process(now, Side::Wan, &mut sa, false, &route),
        Verdict::Translated
    );
    let mut a = tcp(BLUE, 5555, WAN2, 443, "A", b"");
    assert_eq!(
        n.process(now, Side::Lan, &mut a, false, &route),
        Verdict::Translated
    );
    let blue = n
        .entries(now)
        .into_iter()
        .find(|e| e.orig.src == BLUE)
        .unwrap();
    assert!(blue.assured);
    // The flood goes on; blue's connection stays.
    for i in 0..2000u16 {
        let mut p = tcp(RED, 100 + i, WAN, 80, "A", b"");
        n.process(now, Side::Lan, &mut p, false, &route);
    }
    assert!(
        n.entries(now)
            .iter()
            .any(|e| e.orig.src == BLUE && e.assured)
    );
    let blue = n.hosts().find(|h| h.addr == BLUE).unwrap();
    assert_eq!((blue.evicted, blue.drops), (0, 0));
    n.check_invariants().unwrap();
}

/// The issue's SYN flood with a new source port per packet: the flooder runs
/// out of its own ports (or, with no per-host limit, the port space), and
/// another host still gets a mapping.
#[test]
fn syn_flood_exhausting_ports_leaves_room_for_others() {
    // Per-host port limit: red recycles its own oldest mappings.
    let mut c = cfg();
    c.max_ports_per_host = 100;
    let mut n = Nat::new(c);
    for i in 0..3000u16 {
        let mut p = tcp(RED, 20_000 + i, WAN, 80, "S", b"");
        // Source ports collide with nothing: each is a new mapping.
        assert_eq!(
            n.process(0, Side::Lan, &mut p, false, &route),
            Verdict::Translated
        );
    }
    assert_eq!(n.mappings(), 100);
    // No per-host limit but a small port range: red takes every port, then
    // the oldest unassured mappings are reclaimed for blue.
    let mut c = cfg();
    c.port_range = (1024, 1087);
    let mut n = Nat::new(c);
    for i in 0..64u16 {
        let mut p = tcp(RED, 1024 + i, WAN, 80, "S", b"");
        assert_eq!(
            n.process(0, Side::Lan, &mut p, false, &route),
            Verdict::Translated
        );
    }
    let mut p = tcp(RED, 2000, WAN, 80, "S", b"");
    assert_eq!(
        n.process(0, Side::Lan, &mut p, false, &route),
        Verdict::Translated
    );
    let mut b = tcp(BLUE, 3000, WAN, 80, "S", b"");
    assert_eq!(
        n.process(1, Side::Lan, &mut b, false, &route),
        Verdict::Translated
    );
    assert_eq!(n.mappings(), 64);
    assert!(n.counters.early_dropped >= 2);
    n.check_invariants().unwrap();
}

/// Regression (timer wheel): no expire() for more than one lap (4096 s),
/// then one call: every expired entry goes, mappings are released and the
/// tuple can be tracked again.
#[test]
fn expiry_after_a_gap_of_several_wheel_laps() {
    let mut n = Nat::new(cfg());
    for i in 0..50u16 {
        let mut p = udp(RED, 7000 + i, WAN, 53, b"q");
        n.process(u64::from(i) * 1000, Side::Lan, &mut p, false, &route);
    }
    n.expire(60_000);
    assert_eq!(n.len(), 50);
    n.expire(60_000 + 3 * 4096 * 1000);
    assert_eq!((n.len(), n.mappings()), (0, 0));
    assert_eq!(n.hosts().count(), 0);
    let mut p = udp(RED, 7000, WAN, 53, b"q");
    assert_eq!(
        n.process(60_000 + 3 * 4096 * 1000, Side::Lan, &mut p, false, &route),
        Verdict::Translated
    );
    assert_eq!(n.len(), 1);
}

/// RFC 4787 REQ-9: a LAN host reaches another LAN host through its
/// endpoint-independent mapping (UDP, TCP, ICMP), and sees the sender's
/// own external mapping as the source.
#[test]
fn hairpin_through_every_mapping() {
    for proto_ in ["udp", "tcp", "icmp"] {
        let mut n = eif();
        // Blue talks to the outside: its mapping.
        let mut out = match proto_ {
            "udp" => udp(BLUE, 6000, WAN, 3478, b"x"),
            "tcp" => tcp(BLUE, 6000, WAN, 443, "S", b""),
            _ => echo(BLUE, WAN, 6000, false),
        };
        n.process(0, Side::Lan, &mut out, false, &route);
        let blue_ext = tuple_of(&out).1;
        // Red talks to the outside too (its own mapping), from port 7000.
        let mut r = udp(RED, 7000, WAN, 3478, b"x");
        n.process(0, Side::Lan, &mut r, false, &route);
        // Red sends to external:blue_ext.
        let mut hp = match proto_ {
            "udp" => udp(RED, 7000, EXT, blue_ext, b"hello"),
            "tcp" => tcp(RED, 7000, EXT, blue_ext, "S", b""),
            _ => echo(RED, EXT, blue_ext, false),
        };
        assert_eq!(
            n.process(1, Side::Lan, &mut hp, false, &route),
            Verdict::Translated,
            "{proto_}"
        );
        assert_checksums(&hp);
        let (s, sp, d, dp) = tuple_of(&hp);
        assert_eq!((s, d), (EXT, BLUE), "{proto_}");
        let red_ext = sp;
        if proto_ != "icmp" {
            assert_eq!(dp, 6000);
            assert_eq!(
                Some((RED, 7000)),
                n.mapping_of(hp[9], red_ext),
                "{proto_}: red's own mapping"
            );
        }
        // Blue answers to what it saw; red gets it from external:blue_ext.
        let mut back = match proto_ {
            "udp" => udp(BLUE, 6000, EXT, red_ext, b"hi"),
            "tcp" => tcp(BLUE, 6000, EXT, red_ext, "SA", b""),
            _ => echo(BLUE, EXT, red_ext, true),
        };
        assert_eq!(
            n.process(2, Side::Lan, &mut back, false, &route),
            Verdict::Translated,
            "{proto_} back"
        );
        assert_checksums(&back);
        let (s, sp, d, dp) = tuple_of(&back);
        assert_eq!((s, sp, d), (EXT, blue_ext, RED), "{proto_} back");
        if proto_ != "icmp" {
            assert_eq!(dp, 7000);
        }
        n.check_invariants().unwrap();
        n.expire(10_000_000);
        assert_eq!((n.len(), n.mappings()), (0, 0), "{proto_}: all released");
    }
}

/// Hairpinning and filtering. Address-dependent (the default) admits
/// hairpinned packets (the sender, a LAN host, reaches the target directly
/// anyway), including the RFC 5780 test: a client sending from its mapping
/// to its own mapping gets its packet back, from its mapping, without state.
/// Address-and-port-dependent filtering admits only the self-hairpin.
#[test]
fn hairpin_filtering() {
    for f in [
        Filtering::AddressDependent,
        Filtering::AddressAndPortDependent,
    ] {
        let mut c = cfg();
        c.filtering = f;
        let mut n = Nat::new(c);
        let mut stun = udp(RED, 40000, WAN, 3478, b"binding");
        n.process(0, Side::Lan, &mut stun, false, &route);
        let mapped = tuple_of(&stun).1;
        // turnutils_natdiscovery -H: the same socket sends to its own mapped address.
        let mut me = udp(RED, 40000, EXT, mapped, b"binding");
        assert_eq!(
            n.process(1, Side::Lan, &mut me, false, &route),
            Verdict::Translated
        );
        assert_eq!(tuple_of(&me), (EXT, mapped, RED, 40000));
        assert_checksums(&me);
        assert_eq!((n.counters.self_hairpins, n.len()), (1, 1));
        // Blue to red's mapping.
        let mut b = udp(BLUE, 5000, WAN, 1, b"x");
        n.process(0, Side::Lan, &mut b, false, &route);
        let mut b2r = udp(BLUE, 5000, EXT, mapped, b"x");
        let v = n.process(2, Side::Lan, &mut b2r, false, &route);
        if f == Filtering::AddressDependent {
            assert_eq!(v, Verdict::Translated);
            let (s, sp, d, dp) = tuple_of(&b2r);
            assert_eq!((s, d, dp), (EXT, RED, 40000));
            assert_eq!(n.mapping_of(proto::UDP, sp), Some((BLUE, 5000)));
        } else {
            assert_eq!(v, Verdict::Drop(NatDrop::Filtered));
        }
        n.check_invariants().unwrap();
    }
}

/// After every packet of random small-table traffic (few hosts and ports,
/// random time steps including jumps beyond a wheel lap): no external
/// (proto, port) is held by two internal endpoints, the table is within its
/// bound, mappings and references agree, and what goes out comes back to the
/// sender (translate-then-reverse identity).
mod small_tables {
    use super::*;

    #[derive(Debug, Clone)]
    struct Step {
        host: u8,
        sport: u16,
        remote: u8,
        dport: u16,
        proto_: u8,
        flags: u8,
        dt: u64,
        answer: bool,
    }

    fn step() -> impl Strategy<Value = Step> {
        (
            1u8..5,
            prop_oneof![
                Just(1000u16),
                Just(1001),
                Just(500),
                Just(40000),
                1024u16..1040
            ],
            0u8..4, // 3: hairpin to the external address
            prop_oneof![Just(53u16), Just(80), Just(443)],
            0u8..3,
            0u8..4,
            prop_oneof![
                4 => 0u64..2_000,
                2 => 0u64..400_000,
                1 => 4_000_000u64..20_000_000,
            ],
            any::<bool>(),
        )
            .prop_map(
                |(host, sport, remote, dport, proto_, flags, dt, answer)| Step {
                    host,
                    sport,
                    remote,
                    dport,
                    proto_,
                    flags,
                    dt,
                    answer,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn no_shared_mappings(
            max in 2usize..16,
            per_host in prop_oneof![Just(None), (1usize..8).prop_map(Some)],
            ports in prop_oneof![Just(u32::MAX), 1u32..4],
            filtering in prop_oneof![Just(Filtering::EndpointIndependent), Just(Filtering::AddressDependent)],
            steps in proptest::collection::vec(step(), 1..120),
        ) {
            let mut c = cfg();
            c.max_entries = max;
            c.max_entries_per_host = per_host;
            c.max_ports_per_host = ports;
            c.filtering = filtering;
            c.port_range = (1024, 1087);
            let mut n = Nat::new(c);
            let mut now = 0u64;
            for s in steps {
                now += s.dt;
                if s.dt > 1000 {
                    n.expire(now);
                }
                let src = lan(s.host);
                if s.dt % 5 == 1 {
                    // `conntrack -D`: one small page of this host's or this port's entries.
                    let cursor = usize::from(s.sport % 4);
                    let (d, _) = n.delete_from(now, cursor, 3, |e| e.orig.src == src || e.orig.dport == s.dport);
                    n.check_invariants().map_err(TestCaseError::fail)?;
                    prop_assert!(d <= 3);
                }
                if s.remote == 3 {
                    // To external:P, P = a port that may be someone's mapping.
                    let pn = [proto::UDP, proto::TCP, proto::ICMP][usize::from(s.proto_)];
                    let port = 1024 + s.sport % 16;
                    let owner = n.mapping_of(pn, port);
                    let mut p = match s.proto_ {
                        0 => udp(src, s.sport, EXT, port, b"h"),
                        1 => tcp(src, s.sport, EXT, port, "S", b""),
                        _ => echo(src, EXT, port, false),
                    };
                    let v = n.process(now, Side::Lan, &mut p, false, &route);
                    n.check_invariants().map_err(TestCaseError::fail)?;
                    prop_assert!(n.len() <= max);
                    if v == Verdict::Translated {
                        assert_checksums(&p);
                        let (hs, _, hd, _) = tuple_of(&p);
                        prop_assert_eq!(hs, EXT);
                        prop_assert_eq!(Some(hd), owner.map(|o| o.0), "reaches the mapping's owner");
                    }
                    continue;
                }
                let dst = Ipv4Addr::new(203, 0, 113, 10 + s.remote);
                let mut p = match s.proto_ {
                    0 => udp(src, s.sport, dst, s.dport, b"q"),
                    1 => tcp(src, s.sport, dst, s.dport, ["S", "A", "SA", "F"][usize::from(s.flags)], b""),
                    _ => echo(src, dst, s.sport, false),
                };
                let v = n.process(now, Side::Lan, &mut p, false, &route);
                n.check_invariants().map_err(TestCaseError::fail)?;
                prop_assert!(n.len() <= max);
                if v != Verdict::Translated {
                    continue;
                }
                assert_checksums(&p);
                let (es, ep, ed, edp) = tuple_of(&p);
                prop_assert_eq!(es, EXT);
                if s.proto_ != 2 {
                    prop_assert_eq!(n.mapping_of(p[9], ep), Some((src, s.sport)));
                }
                if s.answer {
                    let mut r = match s.proto_ {
                        0 => udp(ed, edp, EXT, ep, b"a"),
                        1 => tcp(ed, edp, EXT, ep, "SA", b""),
                        _ => echo(ed, EXT, ep, true),
                    };
                    let v = n.process(now, Side::Wan, &mut r, false, &route);
                    n.check_invariants().map_err(TestCaseError::fail)?;
                    if s.proto_ == 1 && s.flags == 2 {
                        continue; // a SYN+ACK first opens nothing
                    }
                    prop_assert_eq!(v, Verdict::Translated);
                    assert_checksums(&r);
                    let (rs, _, rd, rdp) = tuple_of(&r);
                    prop_assert_eq!((rs, rd), (dst, src));
                    if s.proto_ != 2 {
                        prop_assert_eq!(rdp, s.sport);
                    } else {
                        prop_assert_eq!(rdp, s.sport, "echo id restored");
                    }
                }
            }
        }
    }
}

/// A SYN flood from outside to a published port is charged to the outside
/// pseudo-host: it evicts its own entries, and a LAN host's connections
/// (outbound, or earlier inbound ones that were answered) stay.
#[test]
fn inbound_flood_is_charged_to_the_outside() {
    let mut c = cfg();
    c.max_entries = 256; // a quarter each
    let mut n = Nat::new(c);
    let mut s = tcp(BLUE, 7000, WAN, 443, "S", b"");
    n.process(0, Side::Lan, &mut s, false, &route);
    for i in 0..5000u32 {
        let src = Ipv4Addr::from(0xc633_6400 | i);
        let mut p = tcp(src, 1024 + (i % 60_000) as u16, EXT, 80, "S", b"");
        assert_eq!(
            n.process(1, Side::Wan, &mut p, false, &route),
            Verdict::Translated
        );
    }
    let out = n.hosts().find(|h| h.addr == OUTSIDE).unwrap();
    assert_eq!(out.entries, 64);
    let blue = n.hosts().find(|h| h.addr == BLUE).unwrap();
    assert_eq!(
        (blue.entries, blue.evicted),
        (1, 0),
        "blue's own SYN_SENT stays"
    );
    n.check_invariants().unwrap();
}

/// Fuzz finding: a timeout near `u64::MAX` overflowed on the first packet.
/// Timeouts are capped (one week) and time arithmetic saturates, at any `now`.
#[test]
fn huge_timeouts_and_times_do_not_overflow() {
    let mut c = cfg();
    c.timeouts = Timeouts {
        udp: u64::MAX,
        udp_unreplied: u64::MAX,
        tcp_established: u64::MAX,
        tcp_transitory: u64::MAX,
        tcp_unreplied: u64::MAX,
        tcp_close: u64::MAX,
        icmp: u64::MAX,
    };
    let mut n = Nat::new(c);
    for now in [0, 1 << 40, u64::MAX - 1000, u64::MAX] {
        let mut p = udp(RED, 1, WAN, 2, b"x");
        n.process(now, Side::Lan, &mut p, false, &route);
        let mut s = tcp(RED, 2, WAN, 2, "S", b"");
        n.process(now, Side::Lan, &mut s, false, &route);
        let frags = fragment(&udp(RED, 3, WAN, 2, &[7u8; 3000]), 1480);
        for f in &frags {
            n.process(now, Side::Lan, &mut f.clone(), false, &route);
        }
        n.expire(now);
        n.check_invariants().unwrap();
    }
    assert!(n.entries(0).iter().all(|e| e.secs_left <= MAX_TIMEOUT_SECS));
}

/// Making room for the sender's mapping of a hairpinned packet must not free
/// the target's mapping the packet goes through (its last user may be the
/// oldest unassured entry that is reclaimed).
#[test]
fn hairpin_keeps_the_target_mapping_while_making_room() {
    let mut c = cfg();
    c.filtering = Filtering::EndpointIndependent;
    c.port_range = (1024, 1087); // 64 ports
    let mut n = Nat::new(c);
    // Blue's mapping first (the oldest unassured entry), then red takes every other port.
    let mut b = udp(BLUE, 3000, WAN, 53, b"q");
    n.process(0, Side::Lan, &mut b, false, &route);
    let blue_ext = tuple_of(&b).1;
    for i in 0..63u16 {
        let mut p = udp(RED, 1024 + i, WAN, 53, b"q");
        n.process(0, Side::Lan, &mut p, false, &route);
    }
    assert_eq!(n.mappings(), 64);
    // A third host hairpins to blue's mapping: its own mapping needs a port.
    let mut h = udp(lan(9), 5000, EXT, blue_ext, b"hi");
    assert_eq!(
        n.process(1, Side::Lan, &mut h, false, &route),
        Verdict::Translated
    );
    assert_eq!(tuple_of(&h).2, BLUE);
    assert_eq!(n.mapping_of(proto::UDP, blue_ext), Some((BLUE, 3000)));
    n.check_invariants().unwrap();
}

/// Segments that cannot open a connection are the NAT's to drop only when
/// meant for it: towards the WAN from a masqueraded source, or to a
/// published or mapped external port. To the gateway's own address they pass
/// (the gateway answers), and inside the LAN they are not the NAT's business.
#[test]
fn invalid_first_segments_are_dropped_only_when_meant_for_the_nat() {
    let mut n = Nat::new(cfg());
    let mut to_gw = tcp(RED, 2000, EXT, 22, "A", b"");
    assert_eq!(
        n.process(0, Side::Lan, &mut to_gw, false, &route),
        Verdict::NotNatted
    );
    let mut lan_fin = tcp(RED, 2000, BLUE, 22, "F", b"");
    assert_eq!(
        n.process(0, Side::Lan, &mut lan_fin, false, &route),
        Verdict::NotNatted
    );
    let mut to_dnat = tcp(RED, 2000, EXT, 80, "F", b"");
    assert_eq!(
        n.process(0, Side::Lan, &mut to_dnat, false, &route),
        Verdict::Drop(NatDrop::InvalidTcp)
    );
    let mut out = tcp(RED, 2000, WAN, 80, "F", b"");
    assert_eq!(
        n.process(0, Side::Lan, &mut out, false, &route),
        Verdict::Drop(NatDrop::InvalidTcp)
    );
    assert!(n.is_empty());
}

/// A host opening new flows faster than `new_flows_per_host` gets counted
/// `nat-host-rate` drops before any state is made; other hosts, existing
/// flows and connections from outside are not limited.
#[test]
fn new_flow_rate_is_limited_per_host() {
    let mut c = cfg();
    c.new_flows_per_host = 1000;
    let mut n = Nat::new(c);
    // A burst: one second's worth (1000) passes, the rest of 3000 in 1 ms is dropped.
    let mut v = Vec::new();
    for i in 0..3000u16 {
        let mut p = udp(RED, 10_000 + i, WAN, 53, b"q");
        v.push(n.process(0, Side::Lan, &mut p, false, &route));
    }
    let passed = v.iter().filter(|x| **x == Verdict::Translated).count();
    assert_eq!(passed, 1000);
    assert!(
        v.iter()
            .all(|x| matches!(x, Verdict::Translated | Verdict::Drop(NatDrop::HostRate)))
    );
    assert_eq!(n.len(), 1000, "dropped flows made no entries");
    let red = n.hosts().find(|h| h.addr == RED).unwrap();
    assert_eq!(red.drops, 2000);
    assert!(
        red.drops_by_reason
            .iter()
            .any(|(r, k)| *r == NatDrop::HostRate && *k == 2000)
    );
    // An existing flow still passes; blue is not affected.
    let mut p = udp(RED, 10_000, WAN, 53, b"again");
    assert_eq!(
        n.process(1, Side::Lan, &mut p, false, &route),
        Verdict::Translated
    );
    let mut p = udp(BLUE, 7000, WAN, 53, b"q");
    assert_eq!(
        n.process(1, Side::Lan, &mut p, false, &route),
        Verdict::Translated
    );
    // Tokens come back at the rate: 100 ms later, 100 more new flows.
    let passed = (0..300u16)
        .filter(|i| {
            let mut p = udp(RED, 20_000 + i, WAN, 53, b"q");
            n.process(100, Side::Lan, &mut p, false, &route) == Verdict::Translated
        })
        .count();
    assert_eq!(passed, 100);
    // 0 is unlimited.
    let mut c = cfg();
    c.new_flows_per_host = 0;
    let mut n = Nat::new(c);
    for i in 0..3000u16 {
        let mut p = udp(RED, 10_000 + i, WAN, 53, b"q");
        assert_eq!(
            n.process(0, Side::Lan, &mut p, false, &route),
            Verdict::Translated
        );
    }
}

/// Found by the fuzzer: an echo request to the external address with the id
/// of the sender's own ICMP mapping is the gateway's to answer, not reflected
/// back to the sender as a request that nobody would answer.
#[test]
fn echo_to_the_external_address_with_own_mapping_id_is_local() {
    let mut n = Nat::new(cfg());
    let mut out = echo(RED, WAN, 4242, false);
    assert_eq!(
        n.process(0, Side::Lan, &mut out, false, &route),
        Verdict::Translated
    );
    let ext_id = u16::from_be_bytes([out[24], out[25]]);
    let mut own = echo(RED, EXT, ext_id, false);
    let before = own.clone();
    assert_eq!(
        n.process(1, Side::Lan, &mut own, false, &route),
        Verdict::NotNatted
    );
    assert_eq!(own, before, "left for the gateway as it was");
}

/// Review finding: one host sending first fragments (and never the rest)
/// must not leave another host's later fragments without a translation.
#[test]
fn first_fragments_of_one_host_cannot_crowd_out_anothers() {
    let mut n = Nat::new(cfg());
    for i in 0..256u16 {
        let mut f = fragment_id(&udp(RED, 4000, WAN, 9, &[7u8; 200]), 96, i).remove(0);
        assert_eq!(
            n.process(10, Side::Lan, &mut f, false, &route),
            Verdict::Translated
        );
    }
    let blue = Ipv4Addr::new(192, 168, 15, 2);
    let mut fr = fragment_id(&udp(blue, 5000, WAN, 9, &[7u8; 200]), 96, 777);
    assert_eq!(
        n.process(1000, Side::Lan, &mut fr[0], false, &route),
        Verdict::Translated
    );
    assert_eq!(
        n.process(1001, Side::Lan, &mut fr[1], false, &route),
        Verdict::Translated,
        "blue's second fragment"
    );
}

/// Review finding: a flow whose entry expired but was not swept yet (the
/// sweep runs once a second) starts over instead of clashing with it.
#[test]
fn an_expired_unswept_entry_does_not_block_its_tuple() {
    let mut n = Nat::new(cfg());
    let mut p = udp(RED, 5000, WAN, 53, b"q");
    assert_eq!(
        n.process(0, Side::Lan, &mut p, false, &route),
        Verdict::Translated
    );
    // Unanswered UDP lives 120 s; no sweep in between.
    let mut p = udp(RED, 5000, WAN, 53, b"q");
    assert_eq!(
        n.process(120_500, Side::Lan, &mut p, false, &route),
        Verdict::Translated
    );
    assert_eq!(n.len(), 1);
    assert_eq!(n.counters.drops[NatDrop::Clash as usize], 0);
}

#[test]
fn delete_releases_mappings_filters_and_hosts_and_pages() {
    let mut c = cfg();
    c.filtering = Filtering::AddressDependent;
    let mut n = Nat::new(c);
    // RED: UDP 5000 -> WAN:53 and WAN:123 (one mapping, two entries); BLUE: 30 flows to WAN:53.
    for dp in [53, 123] {
        let mut p = udp(RED, 5000, WAN, dp, b"x");
        assert_eq!(
            n.process(0, Side::Lan, &mut p, false, &route),
            Verdict::Translated
        );
    }
    for sp in 0..30 {
        let mut p = udp(BLUE, 6000 + sp, WAN, 53, b"x");
        n.process(0, Side::Lan, &mut p, false, &route);
    }
    assert_eq!((n.len(), n.mappings()), (32, 31));
    // Delete the dport 123 entry only: RED keeps its mapping (still used by :53).
    let (d, next) = n.delete_from(1, 0, usize::MAX, |e| e.orig.dport == 123);
    assert_eq!((d, next), (1, None));
    assert_eq!((n.len(), n.mappings()), (31, 31));
    assert_eq!(n.mapping_of(proto::UDP, 5000), Some((RED, 5000)));
    // Address-dependent filtering forgot WAN for :123 only if no entry remains; :53 still admits.
    let mut r = udp(WAN, 53, EXT, 5000, b"r");
    assert_eq!(
        n.process(2, Side::Wan, &mut r, false, &route),
        Verdict::Translated
    );
    n.check_invariants().unwrap();
    // Delete RED's last entry: its mapping and its host record go, the port is free.
    let (d, _) = n.delete_from(3, 0, usize::MAX, |e| e.orig.src == RED);
    assert_eq!(d, 1);
    assert_eq!(n.mapping_of(proto::UDP, 5000), None);
    assert!(n.hosts().all(|h| h.addr != RED));
    let mut r = udp(WAN, 53, EXT, 5000, b"r");
    assert_eq!(
        n.process(4, Side::Wan, &mut r, false, &route),
        Verdict::Drop(NatDrop::NoMapping)
    );
    n.check_invariants().unwrap();
    // The flow's next packet makes a new entry.
    let created = n.counters.created;
    let mut p = udp(RED, 5000, WAN, 53, b"x");
    assert_eq!(
        n.process(5, Side::Lan, &mut p, false, &route),
        Verdict::Translated
    );
    assert_eq!(n.counters.created, created + 1);
    // Flush in pages of 7 entries: every entry visited once, all gone.
    let (mut cursor, mut pages, mut total) = (0, 0, 0);
    loop {
        let (d, next) = n.delete_from(6, cursor, 7, |_| true);
        assert!(d <= 7);
        total += d;
        pages += 1;
        match next {
            Some(c) => cursor = c,
            None => break,
        }
    }
    assert_eq!((total, pages), (31, 5));
    assert_eq!((n.len(), n.mappings(), n.hosts().count()), (0, 0, 0));
    assert_eq!(n.counters.deleted, 33);
    n.check_invariants().unwrap();
}
