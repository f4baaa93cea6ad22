//! Which worker receives a frame: classic BPF steering programs for the
//! AF_PACKET sockets of a switch with `[switch] workers = N > 1`.
//!
//! Contract: each worker opens its own socket on every veth port, and each
//! socket carries the program [`program`] builds for its worker index. The
//! programs of one port accept every frame in exactly one of the N sockets,
//! so no frame is forwarded twice and none is lost to steering:
//!
//! - Unicast IPv4 between LAN hosts (not to the gateway's MAC, not a
//!   broadcast or multicast address) goes to worker `h % N`, where `h` is a
//!   symmetric hash of the addresses and, for TCP and UDP, the ports (IP
//!   fragments hash by the addresses only; with stateful ACL rules every
//!   frame does, so ICMP errors and fragments meet their flow's state).
//!   Both directions of a flow meet the same worker.
//! - Everything else goes to worker 0: ARP, IPv6, frames too short to
//!   carry what the hash reads (the pipeline counts them as malformed),
//!   frames to the gateway (routing and the NAT live on worker 0 only), and
//!   every frame of a port marked `whole` (the uplink, and ports with an
//!   ingress rate limit, whose token bucket must stay in one place).
//!
//! Why per-socket filters and not one `PACKET_FANOUT_CBPF` group: a fanout
//! program returns an index into the group's member array, and the kernel
//! orders that array by join order and compacts it when a member leaves
//! (`__fanout_unlink`), so after a port is re-opened (link down and up) the
//! index that meant worker 0 could mean another worker. A socket filter
//! names its worker explicitly; the price is one short program run per
//! socket per frame (N runs instead of one), a few dozen instructions.
//!
//! The programs are pure data here (and unit-tested with a small cBPF
//! interpreter); [`crate::sys`] attaches them with `SO_ATTACH_FILTER` before
//! the socket is bound, so no frame slips in unfiltered.

use crate::wire::MacAddr;

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u16,
    /// Jump offset if true.
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// Constant operand.
    pub k: u32,
}

// Opcode parts (linux/bpf_common.h, linux/filter.h).
const LD: u16 = 0x00;
const LDX: u16 = 0x01;
const ST: u16 = 0x02;
const ALU: u16 = 0x04;
const JMP: u16 = 0x05;
const RET: u16 = 0x06;
const MISC: u16 = 0x07;
const W: u16 = 0x00;
const H: u16 = 0x08;
const B: u16 = 0x10;
const IMM: u16 = 0x00;
const ABS: u16 = 0x20;
const IND: u16 = 0x40;
const MEM: u16 = 0x60;
const LEN: u16 = 0x80;
const MSH: u16 = 0xa0;
const AND: u16 = 0x50;
const RSH: u16 = 0x70;
const MOD: u16 = 0x90;
const XOR: u16 = 0xa0;
const ADD: u16 = 0x00;
const JA: u16 = 0x00;
const JEQ: u16 = 0x10;
const JGE: u16 = 0x30;
const JSET: u16 = 0x40;
const K: u16 = 0x00;
const X: u16 = 0x08;
const TAX: u16 = 0x00;

/// A program's verdict for an accepted frame: the whole frame.
pub const ACCEPT: u32 = u32::MAX;

/// Where one port's frames go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steer {
    /// This socket's worker.
    pub worker: usize,
    /// Number of workers (> 1).
    pub workers: usize,
    /// The gateway's MAC: frames to it go to worker 0.
    pub gateway: Option<MacAddr>,
    /// Every frame of the port goes to worker 0 (uplink, rate-limited port).
    pub whole: bool,
    /// Hash TCP and UDP ports too (spreads the connections of one host
    /// pair). Off when the ACL has stateful rules: an ICMP error or a later
    /// fragment of a flow has no ports to hash, and must meet the worker
    /// that holds the flow's state, so then every frame hashes by its
    /// addresses only.
    pub ports: bool,
}

/// Instructions with symbolic jump targets, resolved by [`Asm::finish`].
#[derive(Default)]
struct Asm {
    ins: Vec<(Insn, Option<(usize, usize)>)>,
    labels: Vec<Option<usize>>,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    fn bind(&mut self, l: usize) {
        self.labels[l] = Some(self.ins.len());
    }
    fn op(&mut self, code: u16, k: u32) {
        self.ins.push((
            Insn {
                code,
                jt: 0,
                jf: 0,
                k,
            },
            None,
        ));
    }
    /// A conditional jump to label `t` if true, `f` if false.
    fn jmp(&mut self, code: u16, k: u32, t: usize, f: usize) {
        self.ins.push((
            Insn {
                code: JMP | code | K,
                jt: 0,
                jf: 0,
                k,
            },
            Some((t, f)),
        ));
    }
    fn finish(self) -> Vec<Insn> {
        let at = |l: usize| self.labels[l].expect("every label is bound");
        self.ins
            .iter()
            .enumerate()
            .map(|(i, (insn, targets))| {
                let mut insn = *insn;
                if let Some((t, f)) = targets {
                    let off = |l: usize| {
                        let d = at(l) - (i + 1);
                        u8::try_from(d).expect("programs are short")
                    };
                    if insn.code == JMP | JA {
                        insn.k = (at(*t) - (i + 1)) as u32;
                    } else {
                        insn.jt = off(*t);
                        insn.jf = off(*f);
                    }
                }
                insn
            })
            .collect()
    }
}

/// The steering program of one socket (see the module contract).
pub fn program(s: &Steer) -> Vec<Insn> {
    let zero = if s.worker == 0 { ACCEPT } else { 0 };
    if s.whole || s.workers <= 1 {
        return vec![Insn {
            code: RET | K,
            jt: 0,
            jf: 0,
            k: if s.workers <= 1 { ACCEPT } else { zero },
        }];
    }
    let mut a = Asm::default();
    let (to_zero, frag, ports, ips, accept, reject) = (
        a.label(),
        a.label(),
        a.label(),
        a.label(),
        a.label(),
        a.label(),
    );
    // Long enough for an IPv4 header without options?
    a.op(LD | W | LEN, 0);
    let l1 = a.label();
    a.jmp(JGE, 34, l1, to_zero);
    a.bind(l1);
    // Group (broadcast, multicast) destination?
    a.op(LD | B | ABS, 0);
    let l2 = a.label();
    a.jmp(JSET, 1, to_zero, l2);
    a.bind(l2);
    // To the gateway?
    if let Some(gw) = s.gateway {
        let m = gw.0;
        a.op(LD | H | ABS, 0);
        let (l3, l4) = (a.label(), a.label());
        a.jmp(JEQ, u32::from(u16::from_be_bytes([m[0], m[1]])), l3, l4);
        a.bind(l3);
        a.op(LD | W | ABS, 2);
        a.jmp(
            JEQ,
            u32::from_be_bytes([m[2], m[3], m[4], m[5]]),
            to_zero,
            l4,
        );
        a.bind(l4);
    }
    // IPv4 (version 4) only.
    a.op(LD | H | ABS, 12);
    let l5 = a.label();
    a.jmp(JEQ, 0x0800, l5, to_zero);
    a.bind(l5);
    a.op(LD | B | ABS, 14);
    a.op(ALU | AND | K, 0xf0);
    let l6 = a.label();
    a.jmp(JEQ, 0x40, l6, to_zero);
    a.bind(l6);
    // A fragment (MF or an offset) has no ports to hash.
    a.op(LD | H | ABS, 20);
    let l7 = a.label();
    a.jmp(JSET, 0x3fff, frag, l7);
    a.bind(l7);
    if s.ports {
        a.op(LD | B | ABS, 23);
        let l8 = a.label();
        a.jmp(JEQ, 6, ports, l8);
        a.bind(l8);
        a.jmp(JEQ, 17, ports, frag);
    } else {
        a.jmp(JA, 0, frag, frag);
    }
    // Ports: X = IHL; both ports must be in the frame.
    a.bind(ports);
    a.op(LDX | B | MSH, 14);
    a.op(MISC | 0x80, 0); // TXA
    a.op(ALU | ADD | K, 18);
    a.op(MISC | TAX, 0);
    a.op(LD | W | LEN, 0);
    let l9 = a.label();
    a.jmp_x(JGE, l9, to_zero);
    a.bind(l9);
    a.op(LDX | B | MSH, 14);
    a.op(LD | H | IND, 14);
    a.op(ST, 0);
    a.op(LD | H | IND, 16);
    a.op(LDX | W | MEM, 0);
    a.op(ALU | XOR | X, 0);
    a.op(ST, 0);
    a.jmp(JA, 0, ips, ips);
    a.bind(frag);
    a.op(LD | W | IMM, 0);
    a.op(ST, 0);
    // Addresses, folded with the ports, spread, then the worker.
    a.bind(ips);
    a.op(LD | W | ABS, 26);
    a.op(ST, 1);
    a.op(LD | W | ABS, 30);
    a.op(LDX | W | MEM, 1);
    a.op(ALU | XOR | X, 0);
    a.op(LDX | W | MEM, 0);
    a.op(ALU | XOR | X, 0);
    for shift in [16, 8] {
        a.op(ST, 1);
        a.op(ALU | RSH | K, shift);
        a.op(LDX | W | MEM, 1);
        a.op(ALU | XOR | X, 0);
    }
    a.op(ALU | MOD | K, s.workers as u32);
    a.jmp(JEQ, s.worker as u32, accept, reject);
    a.bind(to_zero);
    a.op(RET | K, zero);
    a.bind(accept);
    a.op(RET | K, ACCEPT);
    a.bind(reject);
    a.op(RET | K, 0);
    a.finish()
}

impl Asm {
    /// A conditional jump comparing A with X.
    fn jmp_x(&mut self, code: u16, t: usize, f: usize) {
        self.ins.push((
            Insn {
                code: JMP | code | X,
                jt: 0,
                jf: 0,
                k: 0,
            },
            Some((t, f)),
        ));
    }
}

/// Run a program over `pkt` the way the kernel's classic BPF does (the
/// subset [`program`] uses; panics on other instructions): a load past the
/// end returns 0 (drop). [`ACCEPT`] means the socket takes the frame.
pub fn run(prog: &[Insn], pkt: &[u8]) -> u32 {
    let (mut a, mut x, mut m) = (0u32, 0u32, [0u32; 16]);
    let load = |off: usize, size: usize| -> Option<u32> {
        let b = pkt.get(off..off.checked_add(size)?)?;
        Some(b.iter().fold(0u32, |v, &c| (v << 8) | u32::from(c)))
    };
    let mut pc = 0;
    while let Some(i) = prog.get(pc) {
        pc += 1;
        let size = match i.code & 0x18 {
            W => 4,
            H => 2,
            _ => 1,
        };
        match i.code & 0x07 {
            LD => match i.code & 0xe0 {
                IMM => a = i.k,
                LEN => a = pkt.len() as u32,
                MEM => a = m[i.k as usize],
                ABS => match load(i.k as usize, size) {
                    Some(v) => a = v,
                    None => return 0,
                },
                IND => match load((x + i.k) as usize, size) {
                    Some(v) => a = v,
                    None => return 0,
                },
                _ => panic!("unsupported load {:#x}", i.code),
            },
            LDX => match i.code & 0xe0 {
                MEM => x = m[i.k as usize],
                MSH => match load(i.k as usize, 1) {
                    Some(v) => x = (v & 0xf) * 4,
                    None => return 0,
                },
                _ => panic!("unsupported ldx {:#x}", i.code),
            },
            ST => m[i.k as usize] = a,
            ALU => {
                let v = if i.code & X != 0 { x } else { i.k };
                a = match i.code & 0xf0 {
                    ADD => a.wrapping_add(v),
                    AND => a & v,
                    RSH => a >> v,
                    MOD => a % v,
                    XOR => a ^ v,
                    _ => panic!("unsupported alu {:#x}", i.code),
                }
            }
            JMP => {
                let v = if i.code & X != 0 { x } else { i.k };
                let taken = match i.code & 0xf0 {
                    JA => {
                        pc += i.k as usize;
                        continue;
                    }
                    JEQ => a == v,
                    JGE => a >= v,
                    JSET => a & v != 0,
                    _ => panic!("unsupported jump {:#x}", i.code),
                };
                pc += usize::from(if taken { i.jt } else { i.jf });
            }
            RET => return i.k,
            MISC => {
                if i.code & 0x80 != 0 {
                    a = x;
                } else {
                    x = a;
                }
            }
            _ => panic!("unsupported class {:#x}", i.code),
        }
    }
    panic!("fell off the end of the program")
}

#[cfg(test)]
mod tests {
    use super::*;

    const RED: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
    const BLUE: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
    const GW: [u8; 6] = [0x02, 0x56, 0x53, 0, 0, 5];

    /// An Ethernet + IPv4 frame as the kernel's IP stack emits it (20-byte
    /// header unless `ihl` says more) with `proto`, ports and the fragment field.
    fn ipv4(
        dst: [u8; 6],
        src: [u8; 6],
        ips: ([u8; 4], [u8; 4]),
        l4: (u8, u16, u16),
        frag: u16,
        ihl: u8,
    ) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x00]);
        let hl = usize::from(ihl) * 4;
        let mut ip = vec![0u8; hl];
        ip[0] = 0x40 | ihl;
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip[8] = 64;
        ip[9] = l4.0;
        ip[12..16].copy_from_slice(&ips.0);
        ip[16..20].copy_from_slice(&ips.1);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&l4.1.to_be_bytes());
        f.extend_from_slice(&l4.2.to_be_bytes());
        f.extend_from_slice(&[0; 16]);
        f
    }

    fn steer(worker: usize, workers: usize, whole: bool) -> Vec<Insn> {
        program(&Steer {
            worker,
            workers,
            gateway: Some(MacAddr(GW)),
            whole,
            ports: true,
        })
    }

    /// The workers whose socket accepts `pkt`.
    fn takers(pkt: &[u8], workers: usize, whole: bool) -> Vec<usize> {
        (0..workers)
            .filter(|&w| run(&steer(w, workers, whole), pkt) == ACCEPT)
            .collect()
    }

    /// xorshift, for reproducible pseudo-random frames.
    fn rng(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    #[test]
    fn every_frame_goes_to_exactly_one_worker_and_flows_are_symmetric() {
        let mut seed = 0x5eed_u64;
        for workers in 2..=5 {
            let mut seen = vec![0; workers];
            for _ in 0..2000 {
                let r = rng(&mut seed);
                let a = [10, 0, (r >> 8) as u8, r as u8];
                let b = [10, 0, (r >> 16) as u8, (r >> 24) as u8];
                let proto = [6, 17, 1, 47][(r >> 32) as usize % 4];
                let (sp, dp) = ((r >> 36) as u16, (r >> 52) as u16);
                let frag = if (r >> 40).is_multiple_of(7) {
                    0x2000
                } else {
                    0x4000
                }; // MF / DF
                let ihl = if (r >> 44).is_multiple_of(5) { 6 } else { 5 };
                let fwd = ipv4(BLUE, RED, (a, b), (proto, sp, dp), frag, ihl);
                let rev = ipv4(RED, BLUE, (b, a), (proto, dp, sp), frag, ihl);
                let t = takers(&fwd, workers, false);
                assert_eq!(t.len(), 1, "{workers} workers, frame {fwd:02x?}");
                assert_eq!(t, takers(&rev, workers, false), "reverse direction");
                seen[t[0]] += 1;
            }
            assert!(
                seen.iter().all(|&n| n > 2000 / workers / 2),
                "spread over {workers} workers: {seen:?}"
            );
        }
    }

    #[test]
    fn a_flow_of_one_host_pair_spreads_over_workers_by_ports() {
        let ips = ([192, 168, 15, 1], [192, 168, 15, 2]);
        let hit: std::collections::HashSet<usize> = (40000..40016)
            .map(|sp| takers(&ipv4(BLUE, RED, ips, (6, sp, 5201), 0x4000, 5), 2, false)[0])
            .collect();
        assert_eq!(
            hit.len(),
            2,
            "16 TCP connections of red→blue use both workers"
        );
        // Fragments hash by the addresses: every fragment of a datagram together.
        let first = ipv4(BLUE, RED, ips, (17, 1000, 53), 0x2000, 5);
        let later = ipv4(BLUE, RED, ips, (17, 0x4142, 0x4344), 0x0010, 5);
        assert_eq!(takers(&first, 2, false), takers(&later, 2, false));
    }

    #[test]
    fn gateway_group_non_ipv4_short_and_whole_ports_go_to_worker_zero() {
        let ips = ([192, 168, 15, 1], [203, 0, 113, 10]);
        for sp in 1000..1040 {
            let to_gw = ipv4(GW, RED, ips, (6, sp, 80), 0x4000, 5);
            assert_eq!(takers(&to_gw, 3, false), vec![0], "to the gateway");
            let tcp = ipv4(BLUE, RED, ips, (6, sp, 80), 0x4000, 5);
            assert_eq!(takers(&tcp, 3, true), vec![0], "a whole port");
            let mut bcast = tcp.clone();
            bcast[..6].copy_from_slice(&[0xff; 6]);
            assert_eq!(takers(&bcast, 3, false), vec![0], "broadcast");
            let mut mcast = tcp.clone();
            mcast[..6].copy_from_slice(&[0x01, 0x00, 0x5e, 0, 0, 1]);
            assert_eq!(takers(&mcast, 3, false), vec![0], "multicast");
            let mut v6 = tcp.clone();
            v6[12..14].copy_from_slice(&[0x86, 0xdd]);
            assert_eq!(takers(&v6, 3, false), vec![0], "IPv6");
            let mut arp = tcp.clone();
            arp[12..14].copy_from_slice(&[0x08, 0x06]);
            assert_eq!(takers(&arp, 3, false), vec![0], "ARP");
            let mut bad_version = tcp.clone();
            bad_version[14] = 0x65;
            assert_eq!(takers(&bad_version, 3, false), vec![0], "not version 4");
            // Too short to hold what the hash reads: worker 0 counts it as malformed.
            for cut in [13, 20, 33, 34, 37] {
                assert_eq!(takers(&tcp[..cut], 3, false), vec![0], "cut at {cut}");
            }
            // An IHL that puts the ports past the end.
            let mut long_ihl = tcp[..40].to_vec();
            long_ihl[14] = 0x4f;
            assert_eq!(takers(&long_ihl, 3, false), vec![0], "ports past the end");
        }
        // One worker: no filtering at all.
        let one = program(&Steer {
            worker: 0,
            workers: 1,
            gateway: None,
            whole: false,
            ports: true,
        });
        assert_eq!(run(&one, &[0u8; 3]), ACCEPT);
    }

    #[test]
    fn with_stateful_rules_icmp_errors_and_fragments_meet_their_flow() {
        let ips = ([192, 168, 15, 1], [192, 168, 15, 2]);
        let by_addr = |w| {
            program(&Steer {
                worker: w,
                workers: 2,
                gateway: Some(MacAddr(GW)),
                whole: false,
                ports: false,
            })
        };
        let take = |f: &[u8]| -> Vec<usize> {
            (0..2).filter(|&w| run(&by_addr(w), f) == ACCEPT).collect()
        };
        let flow = take(&ipv4(BLUE, RED, ips, (17, 4000, 53), 0x4000, 5));
        assert_eq!(flow.len(), 1);
        for sp in 4001..4040 {
            let other = ipv4(BLUE, RED, ips, (6, sp, 80), 0x4000, 5);
            assert_eq!(take(&other), flow, "every flow of the pair together");
        }
        // An ICMP port unreachable about it, from blue, and a later fragment.
        let icmp = ipv4(RED, BLUE, (ips.1, ips.0), (1, 0x0303, 0), 0x0000, 5);
        assert_eq!(take(&icmp), flow);
        let frag = ipv4(BLUE, RED, ips, (17, 0, 0), 0x00b9, 5);
        assert_eq!(take(&frag), flow);
    }

    #[test]
    fn programs_are_valid_classic_bpf() {
        // Every jump lands inside the program and it ends in a return
        // (what the kernel's `bpf_check_classic` demands).
        for (w, n, whole, gw) in [
            (0, 2, false, true),
            (1, 4, false, false),
            (1, 2, true, true),
        ] {
            let p = program(&Steer {
                worker: w,
                workers: n,
                gateway: gw.then_some(MacAddr(GW)),
                whole,
                ports: gw,
            });
            assert!(p.len() < 4096);
            for (i, insn) in p.iter().enumerate() {
                if insn.code & 0x07 == JMP {
                    let far = if insn.code & 0xf0 == JA {
                        insn.k as usize
                    } else {
                        usize::from(insn.jt.max(insn.jf))
                    };
                    assert!(i + 1 + far < p.len(), "jump {i} out of the program");
                }
            }
            assert_eq!(p.last().unwrap().code & 0x07, RET);
        }
    }
}
