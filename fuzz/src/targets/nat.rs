//! Target `nat`: [`nat::Nat::process`] on a sequence of packets with
//! advancing time (jumps included), a small table (`max_entries` 2..64) and a
//! random configuration (filtering mode, sequential or random allocation,
//! port range, DNAT rules, timeouts, fragment slots).
//!
//! Packets are mostly well formed (valid checksums, full or CHECKSUM_PARTIAL),
//! built from a small set of hosts and ports so flows collide; replies and
//! ICMP errors quote earlier translated packets; some are malformed,
//! fragmented or cut. Invariants checked after every packet:
//! - the table stays within its bound (`len() <= max_entries`);
//! - a translated packet whose IPv4 and L4 checksums were valid has valid
//!   checksums, recomputed from scratch (a partial checksum stays the
//!   pseudo-header seed of the new addresses);
//! - translate-then-reverse is the identity: the reply to a translated packet
//!   (its tuple reversed, from the side it went to) is translated back to the
//!   reverse of the original tuple;
//! - no external (protocol, port) is held by two internal endpoints (from
//!   [`nat::Nat::entries`]).
//!
//! Now and then the engine is restarted through its snapshot (export,
//! encode, sometimes corrupted, decode, import after a delay; see
//! `restart`), and the sequence goes on with the restored engine.

use super::build::{l4_checksum, partial_seed};
use crate::input::Input;
use crate::known::{self, avoid};
use nat::checksum::{checksum, fold, pseudo_header, sum};
use nat::wire::Ipv4Packet;
use nat::{DnatRule, Filtering, Ipv4Net, Nat, NatConfig, PortAlloc, Side, Timeouts, Verdict};
use std::collections::HashMap;
use std::net::Ipv4Addr;

const EXT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const LAN: [Ipv4Addr; 4] = [
    Ipv4Addr::new(10, 0, 0, 2),
    Ipv4Addr::new(10, 0, 0, 3),
    Ipv4Addr::new(10, 0, 0, 4),
    Ipv4Addr::new(10, 9, 0, 7), // routed on the LAN side, not masqueraded
];
const WAN: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 51, 100, 1),
    Ipv4Addr::new(198, 51, 100, 2),
    Ipv4Addr::new(203, 0, 113, 10),
];
const PORTS: [u16; 10] = [53, 80, 443, 1000, 1024, 5000, 6000, 40000, 65535, 0];

/// Where an address leads (the gateway's routing, simplified).
fn route(a: Ipv4Addr) -> Side {
    let o = a.octets();
    if a == EXT || a == GW {
        Side::Local
    } else if o[0] == 10 && (o[1] == 0 || o[1] == 9) {
        Side::Lan
    } else {
        Side::Wan
    }
}

/// A packet to build.
#[derive(Debug, Clone, Copy)]
struct Pkt {
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    /// TCP flags or ICMP type.
    kind: u8,
    payload: usize,
    /// Flags and fragment offset field.
    frag: u16,
}

fn build(p: &Pkt, partial: bool) -> Vec<u8> {
    let l4len = match p.proto {
        6 => 20,
        17 | 1 => 8,
        _ => 0,
    } + p.payload;
    let total = 20 + l4len;
    let mut b = vec![0u8; total];
    b[0] = 0x45;
    b[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    b[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    b[6..8].copy_from_slice(&p.frag.to_be_bytes());
    b[8] = 64;
    b[9] = p.proto;
    b[12..16].copy_from_slice(&p.src.octets());
    b[16..20].copy_from_slice(&p.dst.octets());
    let c = checksum(&b[..20]);
    b[10..12].copy_from_slice(&c.to_be_bytes());
    for (k, x) in b[20..].iter_mut().enumerate() {
        *x = k as u8;
    }
    let l4 = &mut b[20..];
    match p.proto {
        6 | 17 => {
            l4[0..2].copy_from_slice(&p.sport.to_be_bytes());
            l4[2..4].copy_from_slice(&p.dport.to_be_bytes());
            let at = if p.proto == 6 {
                l4[12] = 0x50;
                l4[13] = p.kind;
                16
            } else {
                l4[4..6].copy_from_slice(&(l4len as u16).to_be_bytes());
                6
            };
            l4[at..at + 2].fill(0);
            let c = if partial {
                partial_seed(p.src, p.dst, p.proto, l4len)
            } else {
                l4_checksum(p.src, p.dst, p.proto, l4)
            };
            l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        1 => {
            l4[0] = p.kind;
            l4[1] = 0;
            l4[2..4].fill(0);
            let id = if p.kind == 0 { p.dport } else { p.sport };
            l4[4..6].copy_from_slice(&id.to_be_bytes());
            let c = checksum(l4);
            l4[2..4].copy_from_slice(&c.to_be_bytes());
        }
        _ => {}
    }
    b
}

/// An ICMP error from `from` to `to` quoting the first 28 bytes of `quoted`.
fn icmp_error(from: Ipv4Addr, to: Ipv4Addr, ty: u8, quoted: &[u8], n: usize) -> Vec<u8> {
    let q = &quoted[..n.min(quoted.len())];
    let total = 20 + 8 + q.len();
    let mut b = vec![0u8; total];
    b[0] = 0x45;
    b[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    b[8] = 64;
    b[9] = 1;
    b[12..16].copy_from_slice(&from.octets());
    b[16..20].copy_from_slice(&to.octets());
    let c = checksum(&b[..20]);
    b[10..12].copy_from_slice(&c.to_be_bytes());
    b[20] = ty;
    b[21] = if ty == 3 { 3 } else { 0 };
    b[28..].copy_from_slice(q);
    let c = checksum(&b[20..]);
    b[22..24].copy_from_slice(&c.to_be_bytes());
    b
}

/// Ones' complement equality (0 and 0xffff are both zero).
fn csum_eq(a: u16, b: u16) -> bool {
    a == b || (a | b == 0xffff && (a == 0 || b == 0))
}

/// Whether the checksums of `b` are valid: (IPv4 header, Some(L4) if checkable).
fn checksums(b: &[u8], partial: bool) -> Option<(bool, Option<bool>)> {
    let ip = Ipv4Packet::new_checked(b).ok()?;
    let ip_ok = ip.checksum_ok();
    if ip.is_fragment() {
        return Some((ip_ok, None));
    }
    let p = ip.payload();
    let (src, dst) = (ip.src(), ip.dst());
    let full = |p: &[u8]| {
        fold(pseudo_header(src.octets(), dst.octets(), ip.protocol(), p.len() as u16) + sum(p))
            == 0xffff
    };
    let l4 = match ip.protocol() {
        6 if p.len() >= 20 => Some(if partial {
            csum_eq(
                u16::from_be_bytes([p[16], p[17]]),
                partial_seed(src, dst, 6, p.len()),
            )
        } else {
            full(p)
        }),
        17 if p.len() >= 8 => {
            let f = u16::from_be_bytes([p[6], p[7]]);
            if partial {
                Some(csum_eq(f, partial_seed(src, dst, 17, p.len())))
            } else if f == 0 {
                None
            } else {
                Some(full(p))
            }
        }
        1 if p.len() >= 8 => {
            let mut ok = fold(sum(p)) == 0xffff;
            // An error: the quoted header's checksum too.
            if nat::wire::icmp_is_error(p[0]) && p.len() >= 28 {
                let ihl = usize::from(p[8] & 0xf) * 4;
                if ihl >= 20 && p.len() >= 8 + ihl {
                    ok &= checksum(&p[8..8 + ihl]) == 0;
                }
            }
            Some(ok)
        }
        _ => None,
    };
    Some((ip_ok, l4))
}

/// The tuple of a whole, unfragmented packet: (proto, src, sport, dst, dport, ICMP type).
type Tup = (u8, Ipv4Addr, u16, Ipv4Addr, u16, u8);

fn tuple(b: &[u8]) -> Option<Tup> {
    let ip = Ipv4Packet::new_checked(b).ok()?;
    if ip.is_fragment() {
        return None;
    }
    let p = ip.payload();
    let (s, d) = (ip.src(), ip.dst());
    match ip.protocol() {
        6 if p.len() >= 20 => Some((6, s, be(p, 0), d, be(p, 2), 0)),
        17 if p.len() >= 8 => Some((17, s, be(p, 0), d, be(p, 2), 0)),
        1 if p.len() >= 8 && (p[0] == 0 || p[0] == 8) => {
            let id = be(p, 4);
            Some((1, s, id, d, id, p[0]))
        }
        _ => None,
    }
}

fn be(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn config(i: &mut Input) -> NatConfig {
    let mut c = NatConfig::new(EXT);
    c.masquerade = vec![Ipv4Net {
        addr: Ipv4Addr::new(10, 0, 0, 0),
        prefix: 24,
    }];
    if i.u8() < 16 {
        c.masquerade.push(Ipv4Net {
            addr: Ipv4Addr::from(i.u32()),
            prefix: i.u8() % 33,
        });
    }
    c.port_range = match i.below(4) {
        0 => {
            let lo = 1024 + i.below(60000) as u16;
            (lo, lo.saturating_add(i.below(8) as u16))
        }
        1 => {
            let lo = 1024 + i.u16() % 64512;
            let hi = lo.max(1024 + i.u16() % 64512);
            (lo, hi)
        }
        _ => (1024, 65535),
    };
    for _ in 0..i.below(4) {
        let lo = i.pick(&PORTS).max(1);
        let span = i.pick(&[0u16, 0, 1, 10, 1000]);
        c.dnat.push(DnatRule {
            proto: i.pick(&[6u8, 17]),
            ports: (lo, lo.saturating_add(span)),
            to_addr: i.pick(&LAN),
            to_port: i.pick(&PORTS),
        });
    }
    c.filtering = i.pick(&[
        Filtering::EndpointIndependent,
        Filtering::AddressDependent,
        Filtering::AddressAndPortDependent,
    ]);
    c.max_entries = match i.below(4) {
        0 => 2 + i.below(63),
        1 => 8,
        _ => 2 + i.below(3),
    };
    let t = |floor: u64, i: &mut Input| match i.below(8) {
        0 => floor + i.below(100_000) as u64,
        1 if !avoid(
            known::KNOWN_ISSUE_NAT_TIMEOUT_OVERFLOW,
            "KNOWN_ISSUE_NAT_TIMEOUT_OVERFLOW",
        ) =>
        {
            u64::MAX - i.below(1000) as u64
        }
        2 if !avoid(
            known::KNOWN_ISSUE_NAT_TIMEOUT_OVERFLOW,
            "KNOWN_ISSUE_NAT_TIMEOUT_OVERFLOW",
        ) =>
        {
            i.range(floor, u64::MAX)
        }
        _ => floor,
    };
    c.timeouts = Timeouts {
        udp: t(120, i),
        tcp_established: t(7440, i),
        tcp_transitory: t(240, i),
        icmp: t(60, i),
        ..Timeouts::default()
    };
    c.alloc = if i.bool() {
        PortAlloc::Sequential
    } else {
        PortAlloc::Random(i.u64())
    };
    c.hash_seed = i.u64();
    c.frag_slots = i.below(5);
    c
}

fn pick_ip(i: &mut Input, side: Side, narrow: bool) -> Ipv4Addr {
    if narrow {
        return match side {
            Side::Lan => i.pick(&LAN[..3]),
            _ => i.pick(&WAN[..2]),
        };
    }
    match i.below(16) {
        0 => Ipv4Addr::from(i.u32()),
        1 => EXT,
        2 => GW,
        _ if side == Side::Lan => i.pick(&LAN),
        _ => i.pick(&WAN),
    }
}

fn pick_port(i: &mut Input, narrow: bool) -> u16 {
    if narrow {
        i.pick(&[5000, 6000, 53])
    } else if i.below(4) == 0 {
        i.u16_edgy()
    } else {
        i.pick(&PORTS)
    }
}

/// A fresh packet from `from`; `narrow`: few hosts and ports, so flows share them.
fn fresh(i: &mut Input, from: Side, narrow: bool) -> Pkt {
    let proto = if narrow {
        i.pick(&[17u8, 17, 17, 6, 1])
    } else {
        i.pick(&[6u8, 17, 17, 6, 1, 47])
    };
    let src = pick_ip(i, from, narrow);
    let to = if i.below(4) == 0 && !narrow {
        from
    } else if from == Side::Lan {
        Side::Wan
    } else {
        Side::Lan
    };
    let dst = if from == Side::Wan && i.bool() {
        EXT
    } else {
        pick_ip(i, to, narrow)
    };
    let kind = match proto {
        6 => {
            let any = i.u8();
            i.pick(&[0x02u8, 0x02, 0x10, 0x12, 0x18, 0x11, 0x04, 0x14, any])
        }
        1 => i.pick(&[8u8, 8, 0]),
        _ => 0,
    };
    Pkt {
        proto,
        src,
        dst,
        sport: pick_port(i, narrow),
        dport: pick_port(i, narrow),
        kind,
        payload: i.pick(&[0usize, 0, 1, 10, 100, 1400]),
        frag: i.pick(&[0u16, 0, 0, 0x4000, 0x4000, 0x2000, 0x0010, 0x2010]),
    }
}

struct Sent {
    /// The packet after translation.
    out: Vec<u8>,
    /// Where it went.
    to: Side,
}

/// Run one case.
pub fn run(data: &[u8]) -> Result<(), String> {
    let mut i = Input::new(data);
    let cfg = config(&mut i);
    let max = cfg.max_entries;
    let ext_ports_checked = !avoid(
        known::KNOWN_ISSUE_NAT_MAPPING_LOST_ON_EVICTION,
        "KNOWN_ISSUE_NAT_MAPPING_LOST_ON_EVICTION",
    );
    let mut nat = Nat::new(cfg);
    let mut now: u64 = i.pick(&[0u64, 1, 1 << 32]);
    let mut sent: Vec<Sent> = Vec::new();
    let narrow = i.bool();
    let steps = 1 + i.below(48);
    for step in 0..steps {
        if i.is_empty() && step > 0 {
            break;
        }
        now = now.saturating_add(match i.below(16) {
            0..=5 => 0,
            6..=9 => 1 + i.below(1000) as u64,
            10 => 5_001,
            11 => 30_001,
            12 => 60_000 + i.below(250_000) as u64,
            13 => 7_440_000 + i.below(1000) as u64,
            14 => u64::from(i.u32()) * 1000,
            _ => 1000,
        });
        if i.below(8) == 0 {
            nat.expire(now);
        }
        if i.below(16) == 0 {
            nat = restart(&mut i, nat, now).map_err(|e| format!("step {step}: {e}"))?;
        }
        let partial = i.below(4) == 0;
        let (from, mut buf) = match i.below(10) {
            // A reply to something translated earlier, from where it went.
            0..=2 if !sent.is_empty() => {
                let s = &sent[i.below(sent.len())];
                let Some(t) = tuple(&s.out) else { continue };
                let kind = match t.0 {
                    6 => {
                        let any = i.u8();
                        i.pick(&[0x12u8, 0x10, 0x10, 0x11, 0x04, any])
                    }
                    1 => {
                        if t.5 == 8 {
                            0
                        } else {
                            8
                        }
                    }
                    _ => 0,
                };
                let p = Pkt {
                    proto: t.0,
                    src: t.3,
                    dst: t.1,
                    sport: t.4,
                    dport: t.2,
                    kind,
                    payload: i.below(64),
                    frag: 0,
                };
                (s.to, build(&p, partial))
            }
            // An ICMP error about something translated earlier.
            3 if !sent.is_empty() => {
                let s = &sent[i.below(sent.len())];
                let Some(t) = tuple(&s.out) else { continue };
                let from_ip = if i.bool() {
                    t.3
                } else {
                    pick_ip(&mut i, s.to, false)
                };
                let ty = i.pick(&[3u8, 11, 12, 4]);
                let n = i.pick(&[28usize, 28, 48, 576, 27, 20]);
                (s.to, icmp_error(from_ip, t.1, ty, &s.out, n))
            }
            _ => {
                let from = if narrow {
                    i.pick(&[Side::Lan, Side::Lan, Side::Lan, Side::Wan])
                } else {
                    i.pick(&[Side::Lan, Side::Lan, Side::Wan, Side::Wan, Side::Local])
                };
                let p = fresh(&mut i, from, narrow);
                (from, build(&p, partial))
            }
        };
        // Now and then a malformed variant.
        if i.below(10) == 0 {
            match i.below(4) {
                0 => {
                    let n = i.below(buf.len() + 1);
                    buf.truncate(n);
                }
                1 => {
                    if buf.len() > 3 {
                        let v = i.u16_edgy();
                        buf[2..4].copy_from_slice(&v.to_be_bytes());
                    }
                }
                2 => {
                    if !buf.is_empty() {
                        buf[0] = 0x40 | (i.u8() & 0xf);
                    }
                }
                _ => {
                    for _ in 0..1 + i.below(3) {
                        if !buf.is_empty() {
                            let at = i.below(buf.len());
                            buf[at] = i.u8();
                        }
                    }
                }
            }
        }
        let before = checksums(&buf, partial);
        let t_in = tuple(&buf);
        let v = nat.process(now, from, &mut buf, partial, &route);
        if nat.len() > max {
            return Err(format!("table holds {} entries, bound {max}", nat.len()));
        }
        if v == Verdict::Translated {
            if let (Some((ip_ok, l4_ok)), Some((ip_ok2, l4_ok2))) =
                (before, checksums(&buf, partial))
            {
                if ip_ok && !ip_ok2 {
                    return Err(format!(
                        "step {step}: IPv4 header checksum broken by translation"
                    ));
                }
                if l4_ok == Some(true) && l4_ok2 != Some(true) && ip_ok {
                    return Err(format!(
                        "step {step}: L4 checksum broken by translation (partial: {partial})"
                    ));
                }
            }
            if let (Some(a), Some(b)) = (t_in, tuple(&buf)) {
                reverse_is_identity(&mut nat, now, a, b, partial)
                    .map_err(|e| format!("step {step}: {e}"))?;
            }
            let to = tuple(&buf).map(|t| route(t.3)).unwrap_or(Side::Wan);
            if sent.len() >= 8 {
                sent.remove(0);
            }
            sent.push(Sent { out: buf, to });
        }
        nat.take_released(|f| {
            let _ = Ipv4Packet::new_checked(f);
        });
        if ext_ports_checked {
            shared_mappings(&nat, now).map_err(|e| format!("step {step}: {e}"))?;
        }
    }
    Ok(())
}

/// A restart: export, encode, maybe corrupt, decode and import into a new
/// engine with the same configuration, some time later. The engine's own
/// snapshot must decode and restore every entry with time left, and the
/// restored engine carries on; a corrupted one may be refused, must never
/// panic, and what it restores must be consistent (then the old engine
/// carries on: a corrupted translation is not a wrong one).
fn restart(i: &mut Input, nat: Nat, now: u64) -> Result<Nat, String> {
    let snap = nat.export(now);
    let mut bytes = nat::snapshot::encode(&snap);
    let corrupt = i.below(4) == 0;
    if corrupt {
        for _ in 0..1 + i.below(4) {
            let at = i.below(bytes.len());
            bytes[at] = i.u8();
        }
        if i.bool() {
            let n = i.below(bytes.len() + 1);
            bytes.truncate(n);
        }
    }
    let elapsed = i.pick(&[0u64, 0, 999, 60_000, 120_001, 7_440_000]);
    let s = match nat::snapshot::decode(&bytes) {
        Ok(s) => s,
        Err(_) if corrupt => return Ok(nat),
        Err(e) => return Err(format!("own snapshot refused: {e}")),
    };
    let mut fresh = Nat::new(nat.config().clone());
    match fresh.import(&s, now, elapsed) {
        Ok(r) => {
            fresh.check_invariants()?;
            let live = snap
                .entries
                .iter()
                .filter(|e| e.remaining_ms > elapsed)
                .count();
            if corrupt {
                // Consistent, but not the same translations: a corrupted
                // file is caught by the caller's checksum, not here.
                return Ok(nat);
            }
            if r.restored != live || r.expired != snap.entries.len() - live {
                return Err(format!("restored {r:?} of {live} live entries"));
            }
            Ok(fresh)
        }
        Err(_) if corrupt => Ok(nat),
        Err(e) => Err(format!("own snapshot not imported: {e}")),
    }
}

/// The reply to translated packet `b` (the translation of `a`) comes back as the reverse of `a`.
fn reverse_is_identity(
    nat: &mut Nat,
    now: u64,
    a: Tup,
    b: Tup,
    partial: bool,
) -> Result<(), String> {
    let symmetric = |t: &Tup| t.1 == t.3 && t.2 == t.4;
    if symmetric(&a) || symmetric(&b) {
        return Ok(());
    }
    // An echo reply sent outwards: known not to be translated (gated).
    if a.0 == 1
        && a.5 == 0
        && avoid(
            known::KNOWN_ISSUE_NAT_OUTBOUND_ECHO_REPLY,
            "KNOWN_ISSUE_NAT_OUTBOUND_ECHO_REPLY",
        )
    {
        return Ok(());
    }
    let side = route(b.3);
    if side == Side::Local {
        return Ok(());
    }
    let p = Pkt {
        proto: b.0,
        src: b.3,
        dst: b.1,
        sport: b.4,
        dport: b.2,
        kind: match b.0 {
            6 => 0x10,
            1 => {
                if b.5 == 8 {
                    0
                } else {
                    8
                }
            }
            _ => 0,
        },
        payload: 4,
        frag: 0,
    };
    let mut r = build(&p, partial);
    let v = nat.process(now, side, &mut r, partial, &route);
    let back = tuple(&r);
    let want = (a.0, a.3, a.4, a.1, a.2);
    let got = back.map(|t| (t.0, t.1, t.2, t.3, t.4));
    if v != Verdict::Translated || got != Some(want) {
        return Err(format!(
            "translate-then-reverse is not the identity: {a:?} became {b:?}; its reply from {side:?} gave {v:?} {got:?}, want {want:?}"
        ));
    }
    Ok(())
}

/// No external (proto, port) of 203.0.113.1 is held by two internal endpoints (from `Nat::entries`).
pub fn shared_mappings(nat: &Nat, now: u64) -> Result<(), String> {
    let mut held: HashMap<(u8, u16), (Ipv4Addr, u16)> = HashMap::new();
    for e in nat.entries(now) {
        let mut claims = Vec::new();
        if e.reply.dst == EXT && e.orig.src != EXT {
            claims.push(((e.proto, e.reply.dport), (e.orig.src, e.orig.sport)));
        }
        if e.orig.dst == EXT && e.reply.src != EXT && e.proto != 1 {
            claims.push(((e.proto, e.orig.dport), (e.reply.src, e.reply.sport)));
        }
        for (k, who) in claims {
            if let Some(prev) = held.insert(k, who)
                && prev != who
            {
                return Err(format!(
                    "external {}:{} (proto {}) is held by {}:{} and {}:{}",
                    EXT, k.1, k.0, prev.0, prev.1, who.0, who.1
                ));
            }
        }
    }
    Ok(())
}
