//! Criterion micro-benchmarks of the datapath without I/O:
//! - a batch of 32 frames through parse + FDB + forwarding decision;
//! - NAT of established flows (TCP, 64-byte and 1500-byte packets);
//! - NAT new-flow setup (one internal endpoint, new destinations; the table
//!   runs at its bound and evicts the oldest unassured entry);
//! - `vswitch trace`'s dry run (`Pipeline::dry_run`) with the NAT table
//!   full at its default bound (the copy of the tables it pauses a worker for);
//!
//! `cargo bench -p benches --bench datapath`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nat::wire::proto;
use nat::{Ipv4Net, Nat, NatConfig, PortAlloc, Side};
use std::hint::black_box;
use std::net::Ipv4Addr;
use switch::pipeline::{Gen, Pipeline, PipelineConfig, Verdict};
use switch::policy::{AclRule, Chain, NoPolicy, Policy, Range};
use switch::port::BATCH;
use switch::wire::MacAddr;

const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
const B: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);
const EXT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

/// Ethernet + IPv4 + TCP (ACK) frame of `len` bytes, checksums filled.
fn tcp_frame(
    dst: MacAddr,
    src: MacAddr,
    sip: [u8; 4],
    dip: [u8; 4],
    sport: u16,
    dport: u16,
    len: usize,
) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = len - 14;
    let ip = &mut f[14..];
    ip[..12].copy_from_slice(&[
        0x45,
        0,
        (ip_len >> 8) as u8,
        ip_len as u8,
        0,
        0,
        0x40,
        0,
        64,
        proto::TCP,
        0,
        0,
    ]);
    ip[12..16].copy_from_slice(&sip);
    ip[16..20].copy_from_slice(&dip);
    let c = nat::checksum::checksum(&ip[..20]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let tcp = &mut ip[20..];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 0x50;
    tcp[13] = 0x10; // ACK
    let seed = nat::checksum::pseudo_header(sip, dip, proto::TCP, (ip_len - 20) as u16);
    let c = !nat::checksum::fold(seed + nat::checksum::sum(tcp));
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    f
}

/// Decide a batch of frames from port 0, collecting those unicast to port 1.
fn bench_batch<P: Policy>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    p: &mut Pipeline<P>,
    frames: &mut [Vec<u8>],
    out: &mut Vec<u16>,
) {
    let mut g = Gen::new();
    let mut vnet = [0u8; 10];
    group.bench_function(name, |b| {
        b.iter(|| {
            out.clear();
            for (k, f) in frames.iter_mut().enumerate() {
                if let Verdict::Unicast(1) = p.decide(0, &mut vnet, f, 1, &mut g) {
                    out.push(k as u16);
                }
            }
            black_box(out.len())
        })
    });
}

fn switching(c: &mut Criterion) {
    let mut p = Pipeline::new(&PipelineConfig {
        ports: 2,
        fdb_max: 4096,
        fdb_max_per_port: 1024,
        ageing_ms: 300_000,
        arp_max: 4096,
        arp_max_per_port: switch::arp::default_per_port(4096),
        arp_suppress: true,
        gateway: None,
    });
    let mut g = Gen::new();
    let mut vnet = [0u8; 10];
    let mut back = tcp_frame(A, B, [10, 0, 0, 2], [10, 0, 0, 1], 80, 1000, 64);
    p.decide(1, &mut vnet, &mut back, 0, &mut g);
    let mut frames: Vec<Vec<u8>> = (0..BATCH)
        .map(|i| tcp_frame(B, A, [10, 0, 0, 1], [10, 0, 0, 2], 1000 + i as u16, 80, 64))
        .collect();
    let mut out: Vec<u16> = Vec::with_capacity(BATCH);
    let mut group = c.benchmark_group("switch");
    group.throughput(Throughput::Elements(BATCH as u64));
    bench_batch(
        &mut group,
        "batch of 32: parse + fdb + forward",
        &mut p,
        &mut frames,
        &mut out,
    );
    // The same with the policy `vswitch run` always has: the built-in chain
    // (no rules configured) followed by an empty user policy.
    let cfg = PipelineConfig {
        ports: 2,
        fdb_max: 4096,
        fdb_max_per_port: 1024,
        ageing_ms: 300_000,
        arp_max: 4096,
        arp_max_per_port: switch::arp::default_per_port(4096),
        arp_suppress: true,
        gateway: None,
    };
    let mut q = Pipeline::with_policy(&cfg, (Chain::default(), NoPolicy));
    q.decide(1, &mut vnet, &mut back, 0, &mut g);
    bench_batch(
        &mut group,
        "batch of 32 with the default policy chain",
        &mut q,
        &mut frames,
        &mut out,
    );
    // And with one ACL rule that is evaluated (and does not match) on every frame.
    let rule = AclRule {
        name: "no-ssh".into(),
        drop: true,
        protocol: Some(6),
        dport: Some(Range(22, 22)),
        ..AclRule::default()
    };
    let mut r = Pipeline::with_policy(
        &cfg,
        (
            Chain::new(vec![rule], vec![], vec!["a".into(), "b".into()]),
            NoPolicy,
        ),
    );
    r.decide(1, &mut vnet, &mut back, 0, &mut g);
    bench_batch(
        &mut group,
        "batch of 32 with one ACL rule",
        &mut r,
        &mut frames,
        &mut out,
    );
    group.finish();
}

fn nat_cfg() -> NatConfig {
    let mut c = NatConfig::new(EXT);
    c.masquerade = vec![Ipv4Net {
        addr: Ipv4Addr::new(192, 168, 15, 0),
        prefix: 24,
    }];
    c.alloc = PortAlloc::Random(1);
    c
}

fn route(ip: Ipv4Addr) -> Side {
    if ip.octets()[..3] == [192, 168, 15] {
        Side::Lan
    } else if ip == EXT {
        Side::Local
    } else {
        Side::Wan
    }
}

fn nat_established(c: &mut Criterion) {
    let mut group = c.benchmark_group("nat");
    for len in [64usize, 1500] {
        let mut n = Nat::new(nat_cfg());
        // 32 established flows.
        let tmpl: Vec<Vec<u8>> = (0..BATCH)
            .map(|i| {
                let mut f = tcp_frame(
                    B,
                    A,
                    [192, 168, 15, 1],
                    [198, 51, 100, 7],
                    20000 + i as u16,
                    443,
                    len,
                );
                f[14 + 33] = 0x02; // SYN to open
                let mut s = f[14..].to_vec();
                let _ = n.process(0, Side::Lan, &mut s, false, &route);
                f[14 + 33] = 0x10;
                f[14..].to_vec()
            })
            .collect();
        let mut bufs = tmpl.clone();
        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_function(
            format!("established TCP, 32 packets of {len} B (incl. copy-in)"),
            |b| {
                b.iter(|| {
                    for (buf, t) in bufs.iter_mut().zip(&tmpl) {
                        buf[..40].copy_from_slice(&t[..40]); // headers back to untranslated
                        black_box(n.process(1, Side::Lan, buf, false, &route));
                    }
                })
            },
        );
    }
    let mut n = Nat::new(nat_cfg());
    let mut i: u32 = 0;
    let mut pkt =
        tcp_frame(B, A, [192, 168, 15, 1], [198, 51, 100, 7], 30000, 443, 64)[14..].to_vec();
    pkt[33] = 0x02;
    let tmpl = pkt.clone();
    group.throughput(Throughput::Elements(1));
    group.bench_function("new flow setup (table at its bound, early drop)", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            pkt.copy_from_slice(&tmpl);
            // New destination address and port for every flow, same internal endpoint.
            let d = 0x0a00_0000u32 | (i & 0x00ff_ffff);
            pkt[16..20].copy_from_slice(&d.to_be_bytes());
            pkt[22..24].copy_from_slice(&((i >> 24) as u16 | 1).to_be_bytes());
            black_box(n.process(u64::from(i / 1000), Side::Lan, &mut pkt, false, &route))
        })
    });
    group.finish();
}

fn trace_dry_run(c: &mut Criterion) {
    use switch::gateway::{GatewayConfig, UplinkConfig};
    let mut nat = nat_cfg();
    nat.new_flows_per_host = 0;
    let max = nat.max_entries;
    let gw = GatewayConfig {
        ip: Ipv4Addr::new(192, 168, 15, 5),
        prefix: 24,
        mac: MacAddr([2, 0, 0, 0, 0, 5]),
        lan_mtu: 1500,
        routes: Vec::new(),
        uplink: Some(UplinkConfig {
            port: 1,
            ip: EXT,
            prefix: 24,
            mac: MacAddr([2, 0, 0, 0, 0, 6]),
            next_hop: None,
            mtu: 1500,
        }),
        nat: Some(nat),
        neigh_max: 1024,
        ageing_ms: 300_000,
        queue_slots: 64,
        v6: None,
    };
    let mut p = Pipeline::new(&PipelineConfig {
        ports: 2,
        fdb_max: 4096,
        fdb_max_per_port: 1024,
        ageing_ms: 300_000,
        arp_max: 4096,
        arp_max_per_port: switch::arp::default_per_port(4096),
        arp_suppress: true,
        gateway: Some(gw),
    });
    // Fill the NAT to its bound: four hosts (each may hold a quarter), one
    // source port each (one mapping), a new destination per connection.
    let n = p.gateway.as_mut().unwrap().nat.as_mut().unwrap();
    let mut syn = tcp_frame(B, A, [192, 168, 15, 1], [10, 0, 0, 1], 30000, 443, 64)[14..].to_vec();
    syn[33] = 0x02;
    for i in 0..max as u32 {
        let mut s = syn.clone();
        s[15] = 1 + (i % 4) as u8;
        s[16..20].copy_from_slice(&(0x0a00_0000u32 | (i / 4)).to_be_bytes());
        let _ = n.process(0, Side::Lan, &mut s, false, &route);
    }
    assert_eq!(n.len(), max, "the table is full");
    let frame = tcp_frame(B, A, [192, 168, 15, 1], [198, 51, 100, 7], 40000, 443, 64);
    let mut group = c.benchmark_group("trace");
    group.sample_size(20);
    group.bench_function(format!("dry run, NAT table full ({max} entries)"), |b| {
        b.iter(|| {
            black_box(
                p.dry_run(0, &frame, 1, switch::policy::Action::Continue)
                    .verdict,
            )
        })
    });
    group.finish();
}

criterion_group!(benches, switching, nat_established, trace_dry_run);
criterion_main!(benches);
