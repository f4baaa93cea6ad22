//! The invariant checkers can fail: each known bug's reproducer trips them.

use nat::{Filtering, Ipv4Net, Nat, NatConfig, PortAlloc, Side};
use std::net::Ipv4Addr;

fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[3] = 28;
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let c = nat::checksum::checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[25] = 8;
    p
}

/// Issue 8's reproducer of "a mapping is lost when a full table evicts":
/// max_entries 2, sequential allocation, EIF filtering, four UDP flows.
#[test]
fn shared_mapping_checker_sees_the_eviction_bug() {
    let mut c = NatConfig::new(Ipv4Addr::new(203, 0, 113, 1));
    c.masquerade = vec![Ipv4Net {
        addr: Ipv4Addr::new(10, 0, 0, 0),
        prefix: 24,
    }];
    c.max_entries = 2;
    c.alloc = PortAlloc::Sequential;
    c.filtering = Filtering::EndpointIndependent;
    let mut nat = Nat::new(c);
    let route = |a: Ipv4Addr| {
        if a.octets()[0] == 10 {
            Side::Lan
        } else if a == Ipv4Addr::new(203, 0, 113, 1) {
            Side::Local
        } else {
            Side::Wan
        }
    };
    let flows = [
        udp([10, 0, 0, 1], 5000, [198, 51, 100, 10], 53),
        udp([10, 0, 0, 2], 6000, [198, 51, 100, 10], 53),
        udp([10, 0, 0, 1], 5000, [198, 51, 100, 11], 53),
        udp([10, 0, 0, 3], 5000, [198, 51, 100, 10], 53),
    ];
    let mut broken = None;
    for (t, f) in flows.iter().enumerate() {
        let mut b = f.clone();
        nat.process(t as u64, Side::Lan, &mut b, false, &route);
        if let Err(e) = fuzz::targets::nat::shared_mappings(&nat, t as u64) {
            broken = Some(e);
        }
    }
    if fuzz::known::KNOWN_ISSUE_NAT_MAPPING_LOST_ON_EVICTION {
        assert!(
            broken.is_some(),
            "the bug is gated as known but did not show"
        );
    } else {
        assert_eq!(broken, None, "an external port is shared");
    }
}
