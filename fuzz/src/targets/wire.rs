//! Target `wire`: the typed views of `switch::wire`, `nat::wire` and
//! `switch::policy::Headers::parse` on structure-aware Ethernet / 802.1Q /
//! ARP / IPv4 / IPv6 / TCP / UDP / ICMP frames with mutated fields.
//!
//! Invariants: no view panics on any bytes; an accepted IPv4 view is
//! self-consistent (`20 <= header_len <= total_len <= buffer`, the payload is
//! `total_len - header_len` bytes); `fill_checksum` makes `checksum_ok`
//! true; `set_src`/`set_dst`/`dec_ttl` keep a valid header checksum valid.
//! Raw inputs also go through the state file parser (`switch::state`),
//! wrapped in a valid header: no panic, and what parses round-trips.

use super::build::{self, Pool};
use crate::input::Input;
use nat::wire::Ipv4Packet;
use std::net::Ipv4Addr;
use switch::policy::Headers;
use switch::wire::{ArpPacket, ETH_HLEN, EthernetFrame, VnetHdr};

fn pool() -> Pool {
    Pool {
        macs: vec![
            [0x02, 0, 0, 0, 0, 1],
            [0x02, 0, 0, 0, 0, 2],
            [0x02, 0x76, 0x73, 1, 2, 3],
        ],
        ips: vec![
            Ipv4Addr::new(192, 168, 15, 1),
            Ipv4Addr::new(192, 168, 15, 5),
            Ipv4Addr::new(203, 0, 113, 1),
            Ipv4Addr::new(203, 0, 113, 10),
        ],
    }
}

/// Run one case.
pub fn run(data: &[u8]) -> Result<(), String> {
    let mut i = Input::new(data);
    let raw = i.below(8) == 0;
    let f = if raw {
        i.rest().to_vec()
    } else {
        build::frame(&mut i, &pool(), 9300)
    };
    check_frame(&f)?;
    if raw {
        check_state_file(&f)?;
    }
    // The IPv4 view on the frame's L3 offset and on every short suffix.
    for off in [ETH_HLEN, ETH_HLEN + 4, ETH_HLEN + 8, 0] {
        if let Some(b) = f.get(off..) {
            check_ipv4(b)?;
        }
    }
    // The vnet header view on the first bytes.
    if let Ok(v) = VnetHdr::new_checked(&f[..]) {
        let _ = (v.flags(), v.gso_type(), v.hdr_len(), v.gso_size());
        let _ = (v.csum_start(), v.csum_offset());
    }
    Ok(())
}

/// The state file parser on `body` wrapped in a valid header and checksum
/// (so the body parser, not the checksum, sees the bytes), and on the raw
/// bytes: no panic; what parses encodes back to a file that parses the same.
fn check_state_file(body: &[u8]) -> Result<(), String> {
    use switch::state::{VERSION, crc32, decode, encode};
    let _ = decode(body, "t");
    let mut file = b"VSWSTATE".to_vec();
    file.extend_from_slice(&VERSION.to_le_bytes());
    file.extend_from_slice(&(body.len() as u64).to_le_bytes());
    file.extend_from_slice(&crc32(body).to_le_bytes());
    file.extend_from_slice(body);
    let name = body
        .get(
            2..2 + usize::from(u16::from_le_bytes([
                body.first().copied().unwrap_or(0),
                body.get(1).copied().unwrap_or(0),
            ])),
        )
        .and_then(|n| std::str::from_utf8(n).ok())
        .unwrap_or("t");
    if let Ok(st) = decode(&file, name) {
        let again =
            decode(&encode(&st), name).map_err(|e| format!("re-encoded state refused: {e}"))?;
        if again != st {
            return Err("state file: decode(encode(x)) != x".into());
        }
    }
    Ok(())
}

fn check_frame(f: &[u8]) -> Result<(), String> {
    let h = Headers::parse(f);
    let Ok(eth) = EthernetFrame::new_checked(f) else {
        if f.len() >= ETH_HLEN {
            return Err("EthernetFrame refused a frame of 14+ bytes".into());
        }
        return Ok(());
    };
    if f.len() < ETH_HLEN {
        return Err(format!("EthernetFrame took {} bytes", f.len()));
    }
    let _ = (
        eth.dst(),
        eth.src(),
        eth.ethertype(),
        eth.vlan(),
        eth.as_bytes(),
    );
    if eth.payload().len() != f.len() - ETH_HLEN {
        return Err("Ethernet payload length".into());
    }
    if h.src != eth.src() || h.dst != eth.dst() {
        return Err("Headers::parse MACs differ from the Ethernet view".into());
    }
    if let Ok(mut a) = ArpPacket::new_checked(eth.payload().to_vec()) {
        let _ = (a.op(), a.sha(), a.spa(), a.tha(), a.tpa());
        let (sha, spa, tpa) = (a.sha(), a.spa(), a.tpa());
        let me = switch::wire::MacAddr([2, 0, 0, 0, 0, 9]);
        a.make_reply(me);
        if a.op() != 2 || a.sha() != me || a.spa() != tpa || a.tha() != sha || a.tpa() != spa {
            return Err("ArpPacket::make_reply".into());
        }
    }
    let mut copy = f.to_vec();
    if let Ok(mut e) = EthernetFrame::new_checked(&mut copy[..]) {
        let m = e.src();
        e.set_dst(m);
        let _ = e.payload_mut();
    }
    Ok(())
}

fn check_ipv4(b: &[u8]) -> Result<(), String> {
    let Ok(ip) = Ipv4Packet::new_checked(b) else {
        return Ok(());
    };
    let (hl, tl) = (ip.header_len(), ip.total_len());
    if hl < 20 || hl > tl || tl > b.len() {
        return Err(format!(
            "Ipv4Packet accepted header_len {hl}, total_len {tl}, buffer {}",
            b.len()
        ));
    }
    if ip.payload().len() != tl - hl {
        return Err("Ipv4Packet payload length".into());
    }
    let _ = (
        ip.ident(),
        ip.dont_frag(),
        ip.more_frags(),
        ip.frag_offset(),
    );
    let _ = (ip.is_fragment(), ip.ttl(), ip.protocol(), ip.checksum());
    let _ = nat::wire::l4_checksum_offset(ip.protocol());
    if ip.protocol() == 1 {
        let _ = ip.payload().first().map(|t| nat::wire::icmp_is_error(*t));
    }
    let was_ok = ip.checksum_ok();
    let mut m = b.to_vec();
    let mut ip = Ipv4Packet::new_checked(&mut m[..]).map_err(|_| "mutable view refused")?;
    ip.set_src(Ipv4Addr::new(203, 0, 113, 1));
    ip.set_dst(Ipv4Addr::new(10, 1, 2, 3));
    ip.dec_ttl();
    if was_ok && !ip.checksum_ok() {
        return Err("set_src/set_dst/dec_ttl broke a valid header checksum".into());
    }
    if ip.src() != Ipv4Addr::new(203, 0, 113, 1) || ip.dst() != Ipv4Addr::new(10, 1, 2, 3) {
        return Err("set_src/set_dst".into());
    }
    let _ = ip.payload_mut().len();
    ip.fill_checksum();
    if !ip.checksum_ok() {
        return Err("fill_checksum did not make checksum_ok".into());
    }
    Ok(())
}
