//! NAT66: the same engine over IPv6. Packets are built with etherparse,
//! which is also the checksum oracle (TCP, UDP and ICMPv6 checksums cover
//! the 128-bit pseudo-header): every rewritten checksum must verify.

use etherparse::{
    IpNumber, Ipv6FragmentHeader, Ipv6Header, Ipv6Slice, PacketBuilder, TcpHeader, UdpHeader,
};
use nat::engine::Ipv6Net;
use nat::snapshot;
use nat::wire::proto;
use nat::*;
use proptest::prelude::*;
use std::net::Ipv6Addr;

fn a(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}
fn ext() -> Ipv6Addr {
    a("2001:db8:113::1")
}
fn red() -> Ipv6Addr {
    a("fd00:15::1")
}
fn blue() -> Ipv6Addr {
    a("fd00:15::2")
}
fn wan() -> Ipv6Addr {
    a("2001:db8:113::10")
}

fn cfg() -> NatConfig<Ipv6Addr> {
    let mut c = NatConfig::new(ext());
    c.masquerade = vec![Ipv6Net {
        addr: a("fd00:15::"),
        prefix: 64,
    }];
    c.dnat = vec![DnatRule {
        proto: proto::TCP,
        ports: (80, 80),
        to_addr: blue(),
        to_port: 80,
    }];
    c.alloc = PortAlloc::Sequential;
    c
}

fn route(ip: Ipv6Addr) -> Side {
    if ip == ext() || ip == a("fd00:15::5") {
        Side::Local
    } else if ip.segments()[..4] == [0xfd00, 0x15, 0, 0] {
        Side::Lan
    } else {
        Side::Wan
    }
}

fn udp(src: Ipv6Addr, sp: u16, dst: Ipv6Addr, dp: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv6(src.octets(), dst.octets(), 64)
        .udp(sp, dp)
        .write(&mut v, payload)
        .unwrap();
    v
}

fn tcp(src: Ipv6Addr, sp: u16, dst: Ipv6Addr, dp: u16, syn: bool, payload: &[u8]) -> Vec<u8> {
    let mut b = PacketBuilder::ipv6(src.octets(), dst.octets(), 64).tcp(sp, dp, 1000, 65000);
    b = if syn { b.syn() } else { b.ack(5000) };
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

fn echo(src: Ipv6Addr, dst: Ipv6Addr, id: u16, reply: bool) -> Vec<u8> {
    let b = PacketBuilder::ipv6(src.octets(), dst.octets(), 64);
    let b = if reply {
        b.icmpv6_echo_reply(id, 1)
    } else {
        b.icmpv6_echo_request(id, 1)
    };
    let mut v = Vec::new();
    b.write(&mut v, b"ping payload").unwrap();
    v
}

/// The addresses and ports of `pkt` (ICMPv6: the identifier as both ports),
/// after checking its transport checksum against etherparse's.
fn check(pkt: &[u8]) -> (Ipv6Addr, u16, Ipv6Addr, u16) {
    let s = Ipv6Slice::from_slice(pkt).unwrap();
    let (src, dst) = (s.header().source_addr(), s.header().destination_addr());
    let h = s.header().to_header();
    let body = s.payload().payload;
    match s.payload().ip_number {
        IpNumber::TCP => {
            let (t, data) = TcpHeader::from_slice(body).unwrap();
            assert_eq!(
                t.checksum,
                t.calc_checksum_ipv6(&h, data).unwrap(),
                "TCP checksum"
            );
            (src, t.source_port, dst, t.destination_port)
        }
        IpNumber::UDP => {
            let (u, data) = UdpHeader::from_slice(body).unwrap();
            assert_eq!(
                u.checksum,
                u.calc_checksum_ipv6(&h, data).unwrap(),
                "UDP checksum"
            );
            (src, u.source_port, dst, u.destination_port)
        }
        IpNumber::IPV6_ICMP => {
            let m = etherparse::Icmpv6Slice::from_slice(body).unwrap();
            assert!(
                m.is_checksum_valid(src.octets(), dst.octets()),
                "ICMPv6 checksum"
            );
            let id = u16::from_be_bytes([body[4], body[5]]);
            (src, id, dst, id)
        }
        p => panic!("{p:?}"),
    }
}

#[test]
fn masquerade_and_back_for_tcp_udp_and_echo() {
    let mut n = Nat::new(cfg());
    for (mut out, proto_name) in [
        (tcp(red(), 40000, wan(), 443, true, b""), "tcp"),
        (udp(red(), 40001, wan(), 53, b"query"), "udp"),
        (echo(red(), wan(), 77, false), "echo"),
    ] {
        assert_eq!(
            n.process(0, Side::Lan, &mut out, false, &route),
            Verdict::Translated,
            "{proto_name}"
        );
        let (s, sp, d, dp) = check(&out);
        assert_eq!((s, d), (ext(), wan()), "{proto_name}");
        // The reply, built as wan's kernel would.
        let mut back = match proto_name {
            "tcp" => {
                let mut b =
                    PacketBuilder::ipv6(wan().octets(), ext().octets(), 64).tcp(dp, sp, 9, 65000);
                b = b.syn().ack(1001);
                let mut v = Vec::new();
                b.write(&mut v, b"").unwrap();
                v
            }
            "udp" => udp(wan(), dp, ext(), sp, b"answer"),
            _ => echo(wan(), ext(), sp, true),
        };
        assert_eq!(
            n.process(1, Side::Wan, &mut back, false, &route),
            Verdict::Translated,
            "{proto_name}"
        );
        let (s2, _, d2, _) = check(&back);
        assert_eq!((s2, d2), (wan(), red()), "{proto_name}");
    }
    assert_eq!(n.len(), 3);
    n.check_invariants().unwrap();
}

#[test]
fn dnat_and_hairpin_over_ipv6() {
    let mut n = Nat::new(cfg());
    // wan -> [ext]:80 reaches blue:80, which sees wan.
    let mut syn = tcp(wan(), 50000, ext(), 80, true, b"");
    assert_eq!(
        n.process(0, Side::Wan, &mut syn, false, &route),
        Verdict::Translated
    );
    assert_eq!(check(&syn), (wan(), 50000, blue(), 80));
    // red -> [ext]:80 hairpins to blue, which sees the external address.
    let mut syn = tcp(red(), 50001, ext(), 80, true, b"");
    assert_eq!(
        n.process(0, Side::Lan, &mut syn, false, &route),
        Verdict::Translated
    );
    let (s, _, d, dp) = check(&syn);
    assert_eq!((s, d, dp), (ext(), blue(), 80));
    n.check_invariants().unwrap();
}

#[test]
fn icmpv6_errors_are_translated_with_their_embedded_packet() {
    let mut n = Nat::new(cfg());
    let mut out = udp(red(), 33000, wan(), 9, b"hello");
    n.process(0, Side::Lan, &mut out, false, &route);
    let (_, ext_port, _, _) = check(&out);
    // wan's port unreachable quoting the translated datagram.
    let mut err = Vec::new();
    PacketBuilder::ipv6(wan().octets(), ext().octets(), 64)
        .icmpv6(etherparse::Icmpv6Type::DestinationUnreachable(
            etherparse::icmpv6::DestUnreachableCode::Port,
        ))
        .write(&mut err, &out)
        .unwrap();
    let before = n.entries(1);
    assert_eq!(
        n.process(1, Side::Wan, &mut err, false, &route),
        Verdict::Translated
    );
    let (s, _, d, _) = check(&err);
    assert_eq!((s, d), (wan(), red()));
    // The embedded packet is red's datagram as red sent it, checksum included.
    let inner = &err[48..];
    let (is, isp, id, idp) = check(inner);
    assert_eq!((is, isp, id, idp), (red(), 33000, wan(), 9));
    assert_ne!(ext_port, 0);
    let after = n.entries(1);
    assert_eq!(before.len(), after.len(), "errors touch no state");
}

/// A UDP datagram split into two IPv6 fragments (RFC 8200 4.5) at `at` payload bytes.
fn fragments(
    src: Ipv6Addr,
    sp: u16,
    dst: Ipv6Addr,
    dp: u16,
    payload: &[u8],
    at: usize,
) -> (Vec<u8>, Vec<u8>) {
    let whole = udp(src, sp, dst, dp, payload);
    let body = &whole[40..];
    let (one, two) = body.split_at(at);
    let mk = |part: &[u8], off: u16, more: bool| {
        let f = Ipv6FragmentHeader::new(
            IpNumber::UDP,
            etherparse::IpFragOffset::try_new(off).unwrap(),
            more,
            0xabcd,
        );
        let h = Ipv6Header {
            traffic_class: 0,
            flow_label: Default::default(),
            payload_length: (8 + part.len()) as u16,
            next_header: IpNumber::IPV6_FRAGMENTATION_HEADER,
            hop_limit: 64,
            source: src.octets(),
            destination: dst.octets(),
        };
        let mut v = h.to_bytes().to_vec();
        v.extend_from_slice(&f.to_bytes());
        v.extend_from_slice(part);
        v
    };
    (mk(one, 0, true), mk(two, (at / 8) as u16, false))
}

#[test]
fn later_fragments_follow_their_first_fragment() {
    let mut n = Nat::new(cfg());
    let (mut first, mut second) = fragments(red(), 40000, wan(), 53, &[7u8; 200], 64);
    // The second arrives first: held, then released translated.
    assert_eq!(
        n.process(0, Side::Lan, &mut second, false, &route),
        Verdict::Stolen
    );
    assert_eq!(
        n.process(0, Side::Lan, &mut first, false, &route),
        Verdict::Translated
    );
    let h = Ipv6Slice::from_slice(&first).unwrap();
    assert_eq!(h.header().source_addr(), ext());
    let mut got = Vec::new();
    n.take_released(|p| got.push(p.to_vec()));
    assert_eq!(got.len(), 1);
    let h = Ipv6Slice::from_slice(&got[0]).unwrap();
    assert_eq!(
        (h.header().source_addr(), h.header().destination_addr()),
        (ext(), wan())
    );
    // Reassembled, the datagram's checksum verifies (it was updated in the first fragment).
    let mut whole = udp(ext(), 0, wan(), 53, &[7u8; 200]);
    whole[40..40 + 64].copy_from_slice(&first[48..]);
    whole[40 + 64..].copy_from_slice(&got[0][48..]);
    check(&whole);
}

#[test]
fn a_subscriber_cannot_buy_more_room_by_changing_address() {
    // One host (subscriber a) picks a new source address per flow in its
    // /64; its limits hold all the same, and b's connection stays.
    let mut c = cfg();
    c.max_entries = 64;
    c.max_entries_per_host = Some(4);
    c.new_flows_per_host = 0;
    let mut n = Nat::new(c);
    let (sa, sb) = (a("100::1"), a("100::2"));
    let mut b = tcp(blue(), 40000, wan(), 443, true, b"");
    assert_eq!(
        n.process_as(0, Side::Lan, &mut b, false, &route, sb),
        Verdict::Translated
    );
    for i in 0..200u16 {
        let src = Ipv6Addr::new(0xfd00, 0x15, 0, 0, i, i, i, 7);
        let mut p = tcp(src, 1000 + i, wan(), 443, true, b"");
        n.process_as(1, Side::Lan, &mut p, false, &route, sa);
    }
    let hosts: Vec<_> = n.hosts().collect();
    let of = |s| hosts.iter().find(|h| h.addr == s).map(|h| h.entries);
    assert_eq!(of(sa), Some(4), "{hosts:?}");
    assert_eq!(of(sb), Some(1), "{hosts:?}");
    assert_eq!(n.len(), 5);
    n.check_invariants().unwrap();
    // Without a subscriber, each address is its own host (as in IPv4).
    let mut p = tcp(red(), 2000, wan(), 443, true, b"");
    n.process(2, Side::Lan, &mut p, false, &route);
    assert!(n.hosts().any(|h| h.addr == red()));
}

#[test]
fn zero_udp_checksums_are_never_translated_in_ipv6() {
    let mut n = Nat::new(cfg());
    let mut p = udp(red(), 1000, wan(), 53, b"query");
    p[46] = 0;
    p[47] = 0;
    assert_eq!(
        n.process(0, Side::Lan, &mut p, false, &route),
        Verdict::Drop(NatDrop::Malformed)
    );
    // Untranslated (inside the LAN), it passes: RFC 6935 tunnels may send it.
    let mut p = udp(red(), 1000, blue(), 4789, b"vxlan");
    p[46] = 0;
    p[47] = 0;
    assert_eq!(
        n.process(0, Side::Lan, &mut p, false, &route),
        Verdict::NotNatted
    );
}

#[test]
fn malformed_ipv6_is_a_counted_drop() {
    let mut n = Nat::new(cfg());
    let mut p = udp(red(), 1, wan(), 2, b"x");
    p[6] = 60; // destination options
    p[40 + 1] = 200; // with a length past the end
    assert_eq!(
        n.process(0, Side::Lan, &mut p, false, &route),
        Verdict::Drop(NatDrop::Malformed)
    );
    let mut short = tcp(red(), 1, wan(), 2, true, b"")[..50].to_vec();
    short[5] = 10;
    assert_eq!(
        n.process(0, Side::Lan, &mut short, false, &route),
        Verdict::Drop(NatDrop::Malformed)
    );
}

proptest! {
    /// Translate-then-reverse is the identity for any LAN host, ports and
    /// payload, and every checksum verifies on the way.
    #[test]
    fn round_trip_identity(
        host in 1u16..0xffff,
        sport in 1u16..,
        dport in 1u16..,
        payload in proptest::collection::vec(any::<u8>(), 0..200),
        is_tcp in any::<bool>(),
    ) {
        let mut n = Nat::new(cfg());
        let src = Ipv6Addr::new(0xfd00, 0x15, 0, 0, 0, 0, host, 1);
        let orig = if is_tcp { tcp(src, sport, wan(), dport, true, &payload) } else { udp(src, sport, wan(), dport, &payload) };
        let mut out = orig.clone();
        prop_assert_eq!(n.process(0, Side::Lan, &mut out, false, &route), Verdict::Translated);
        let (s, sp, d, dp) = check(&out);
        prop_assert_eq!((s, d, dp), (ext(), wan(), dport));
        let mut back = if is_tcp {
            let mut b = PacketBuilder::ipv6(wan().octets(), ext().octets(), 64).tcp(dport, sp, 9, 65000);
            b = b.syn().ack(1001);
            let mut v = Vec::new();
            b.write(&mut v, &payload).unwrap();
            v
        } else {
            udp(wan(), dport, ext(), sp, &payload)
        };
        prop_assert_eq!(n.process(1, Side::Wan, &mut back, false, &route), Verdict::Translated);
        let (s2, sp2, d2, dp2) = check(&back);
        prop_assert_eq!((s2, sp2, d2, dp2), (wan(), dport, src, sport));
    }
}

#[test]
fn nat66_state_survives_a_restart() {
    // Flows of two subscribers (masquerade, an inbound DNAT, a hairpin), saved
    // as bytes and restored into a fresh engine: replies are translated as
    // before, mappings stay charged to their subscribers, invariants hold.
    let (sr, sb) = (a("100::1"), a("100::2"));
    let mut n = Nat::new(cfg());
    let mut out = tcp(red(), 40000, wan(), 443, true, b"");
    assert_eq!(
        n.process_as(0, Side::Lan, &mut out, false, &route, sr),
        Verdict::Translated
    );
    let (_, ext_port, _, _) = check(&out);
    let mut q = udp(blue(), 5353, wan(), 53, b"q");
    assert_eq!(
        n.process_as(0, Side::Lan, &mut q, false, &route, sb),
        Verdict::Translated
    );
    let mut inb = tcp(wan(), 50000, ext(), 80, true, b"");
    assert_eq!(
        n.process(0, Side::Wan, &mut inb, false, &route),
        Verdict::Translated
    );
    let mut hp = tcp(red(), 50001, ext(), 80, true, b"");
    assert_eq!(
        n.process_as(0, Side::Lan, &mut hp, false, &route, sr),
        Verdict::Translated
    );
    let before: Vec<_> = n.hosts().map(|h| (h.addr, h.entries, h.mappings)).collect();
    let bytes = snapshot::encode(&n.export(1000));
    // An IPv4 reader refuses NAT66 bytes (and the reverse): their own magic.
    assert_eq!(
        snapshot::decode::<std::net::Ipv4Addr>(&bytes),
        Err(snapshot::SnapshotError::BadMagic)
    );
    let snap = snapshot::decode::<Ipv6Addr>(&bytes).unwrap();
    let mut m = Nat::new(cfg());
    let rep = m.import(&snap, 5000, 2000).unwrap();
    assert_eq!(
        (rep.restored, rep.inconsistent, rep.no_room),
        (4, 0, 0),
        "{rep:?}"
    );
    m.check_invariants().unwrap();
    let mut after: Vec<_> = m.hosts().map(|h| (h.addr, h.entries, h.mappings)).collect();
    let mut before = before;
    before.sort();
    after.sort();
    assert_eq!(before, after, "host accounting");
    // wan's reply to red's connection comes back to red.
    let mut back =
        PacketBuilder::ipv6(wan().octets(), ext().octets(), 64).tcp(443, ext_port, 9, 65000);
    back = back.syn().ack(1001);
    let mut v = Vec::new();
    back.write(&mut v, b"").unwrap();
    assert_eq!(
        m.process(5001, Side::Wan, &mut v, false, &route),
        Verdict::Translated
    );
    assert_eq!(check(&v), (wan(), 443, red(), 40000));
    // A restored engine for another external address refuses the state.
    let mut c = cfg();
    c.external = a("2001:db8:113::99");
    assert!(matches!(
        Nat::new(c).import(&snap, 5000, 2000),
        Err(snapshot::SnapshotError::ForeignExternal { .. })
    ));
}
