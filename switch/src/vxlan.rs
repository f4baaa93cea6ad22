//! VXLAN (RFC 7348), sans I/O: the header, the outer IPv4/UDP headers, the
//! outer source port (the inner flow's entropy), and the segmentation of
//! GSO super-frames into frames that fit the tunnel.
//!
//! Contract: pure functions over byte slices; malformed input is an `Err`
//! (the caller counts a drop), never a panic. Outer UDP checksums are zero
//! (RFC 7348 §5: "SHOULD be transmitted as zero" over IPv4); inner
//! checksums of segments are computed in full, so the far VTEP (a Linux
//! `vxlan` device, OVS, a NIC) gets frames it can deliver as they are.

use nat::checksum::{checksum, fold, sum};
use std::net::Ipv4Addr;

/// Size of the VXLAN header.
pub const VXLAN_HLEN: usize = 8;
/// Outer IPv4 (20) + UDP (8) + VXLAN (8) headers in front of the inner frame.
pub const OUTER_HLEN: usize = 20 + 8 + VXLAN_HLEN;
/// What the tunnel adds to an inner IP packet: outer headers and the inner
/// Ethernet header. The overlay MTU is the underlay MTU minus this.
pub const OVERHEAD: u32 = OUTER_HLEN as u32 + 14;
/// The IANA port (RFC 7348 §5).
pub const DEFAULT_PORT: u16 = 4789;
/// Flags byte with the I bit (a valid VNI follows).
const FLAG_I: u8 = 0x08;
/// Largest header block of one segment: Ethernet + 802.1Q + IPv4 with
/// options or IPv6 + TCP with options.
pub const MAX_SEG_HDR: usize = 14 + 4 + 60 + 60;

/// The outer IPv4 DF bit (`df` of a `[[tunnel]]`, as `ip link … df`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Df {
    /// Never set (the Linux default).
    #[default]
    Unset,
    /// Always set.
    Set,
    /// Copied from the inner IPv4 header (unset for other inner packets).
    Inherit,
}

/// Why a datagram is not a frame of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// Shorter than a VXLAN header and an Ethernet header, or without the I flag.
    Header,
}

/// The VNI of a received VXLAN payload (`payload` = VXLAN header + inner frame).
pub fn parse(payload: &[u8]) -> Result<u32, Bad> {
    if payload.len() < VXLAN_HLEN + 14 || payload[0] & FLAG_I == 0 {
        return Err(Bad::Header);
    }
    Ok(u32::from_be_bytes([0, payload[4], payload[5], payload[6]]))
}

/// Write the 36 bytes of outer IPv4, UDP and VXLAN headers for an inner
/// frame of `inner_len` bytes. `id` is the IPv4 identification.
#[allow(clippy::too_many_arguments)]
pub fn write_outer(
    h: &mut [u8; OUTER_HLEN],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    vni: u32,
    df: bool,
    id: u16,
    inner_len: usize,
) {
    let total = (OUTER_HLEN + inner_len) as u16;
    h[0] = 0x45;
    h[1] = 0;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[4..6].copy_from_slice(&id.to_be_bytes());
    h[6..8].copy_from_slice(&(if df { 0x4000u16 } else { 0 }).to_be_bytes());
    h[8] = 64;
    h[9] = 17;
    h[10..12].fill(0);
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&h[..20]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h[20..22].copy_from_slice(&sport.to_be_bytes());
    h[22..24].copy_from_slice(&dport.to_be_bytes());
    h[24..26].copy_from_slice(&(total - 20).to_be_bytes());
    h[26..28].fill(0);
    h[28] = FLAG_I;
    h[29..32].fill(0);
    h[32..35].copy_from_slice(&vni.to_be_bytes()[1..]);
    h[35] = 0;
}

/// Where an Ethernet frame's L3 header starts and its ethertype (one 802.1Q tag skipped).
fn l3(frame: &[u8]) -> Option<(usize, u16)> {
    let et = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    if et == 0x8100 || et == 0x88a8 {
        Some((18, u16::from_be_bytes([*frame.get(16)?, *frame.get(17)?])))
    } else {
        Some((14, et))
    }
}

/// A hash of `frame`'s flow (IP addresses, protocol and ports, else the
/// MACs and ethertype), in the dynamic range 49152–65535 that RFC 7348 §5
/// recommends for the outer UDP source port. Every frame of one flow hashes
/// alike (no reordering in the underlay); the tunnel uses it to pick the
/// flow's send socket, whose port is the source port.
pub fn entropy(frame: &[u8]) -> u16 {
    // FNV-1a over the fields that name the flow.
    let mut h: u32 = 0x811c_9dc5;
    let mut eat = |b: &[u8]| {
        for &x in b {
            h = (h ^ u32::from(x)).wrapping_mul(0x0100_0193);
        }
    };
    let flow = l3(frame).and_then(|(o, et)| match et {
        0x0800 => {
            let ip = frame.get(o..o + 20)?;
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            Some((&ip[12..20], ip[9], o + ihl, ip[6] & 0x3f == 0 && ip[7] == 0))
        }
        0x86dd => {
            let ip = frame.get(o..o + 40)?;
            Some((&ip[8..40], ip[6], o + 40, true))
        }
        _ => None,
    });
    match flow {
        Some((addrs, proto, l4, first)) => {
            eat(addrs);
            eat(&[proto]);
            // Ports only where every fragment would have them (not fragments).
            if first
                && matches!(proto, 6 | 17)
                && let Some(p) = frame.get(l4..l4 + 4)
            {
                eat(p);
            }
        }
        None => eat(frame.get(..14).unwrap_or(frame)),
    }
    h ^= h >> 16;
    49152 + (h % 16384) as u16
}

/// The DF bit of the inner packet, for [`Df::Inherit`].
pub fn inner_df(frame: &[u8]) -> bool {
    match l3(frame) {
        Some((o, 0x0800)) => frame.get(o + 6).is_some_and(|b| b & 0x40 != 0),
        _ => false,
    }
}

/// Why a super-frame cannot be segmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegError {
    /// A GSO type other than TCPv4, TCPv6 and UDP L4, or a zero segment size.
    Unsupported,
    /// Headers cut short or inconsistent with the frame.
    Malformed,
    /// Larger than the tunnel's MTU and not a TCP super-frame (which is cut
    /// to fit): an unsegmented frame, or a UDP GSO segment size.
    TooBig,
}

/// One segment: its headers (copied and fixed up) and the range of the
/// super-frame's payload that follows them.
#[derive(Clone, Copy)]
pub struct Segment {
    /// Ethernet, IP and L4 headers of this segment.
    pub hdr: [u8; MAX_SEG_HDR],
    /// How many bytes of `hdr` are used.
    pub hdr_len: usize,
    /// Payload range within the super-frame.
    pub payload: (usize, usize),
}

impl Default for Segment {
    fn default() -> Self {
        Segment {
            hdr: [0; MAX_SEG_HDR],
            hdr_len: 0,
            payload: (0, 0),
        }
    }
}

/// Most segments one super-frame may become (a 64 KB frame with an MSS of
/// 536, the smallest TCP's default, is 123).
pub const MAX_SEGS: usize = 128;

/// `VIRTIO_NET_HDR_GSO_*` types.
const GSO_TCPV4: u8 = 1;
const GSO_UDP_L4: u8 = 5;
const GSO_TCPV6: u8 = 4;
const GSO_ECN: u8 = 0x80;

/// The L4 pseudo-header sum of an IP header at `ip` for `l4_len` bytes of `proto`.
fn pseudo(ip: &[u8], v6: bool, proto: u8, l4_len: usize) -> u32 {
    let addrs = if v6 { &ip[8..40] } else { &ip[12..20] };
    sum(addrs) + u32::from(proto) + (l4_len as u32 & 0xffff) + (l4_len as u32 >> 16)
}

/// Split a GSO super-frame (`vnet` header, `frame`) into segments of at
/// most `gso_size` payload bytes each, as the kernel's GSO would: IPv4
/// total length, identification (+1 per segment) and header checksum; IPv6
/// payload length; TCP sequence numbers, FIN/PSH only on the last segment
/// and CWR only on the first; a complete L4 checksum on every segment.
/// Appends to `out` (cleared first); frames without GSO become one segment
/// with their pending checksum (`NEEDS_CSUM`) done. No IP packet of the
/// result is longer than `max_l3` (the tunnel's MTU): TCP segments are cut
/// smaller than the sender's `gso_size` if need be; anything else too long
/// is [`SegError::TooBig`].
pub fn segment(
    vnet: &[u8],
    frame: &[u8],
    max_l3: usize,
    out: &mut Vec<Segment>,
) -> Result<(), SegError> {
    out.clear();
    let (flags, gso) = (vnet[0], vnet[1] & !GSO_ECN);
    let mut gso_size = usize::from(u16::from_le_bytes([vnet[4], vnet[5]]));
    if gso == 0 {
        let l2 = l3(frame).map_or(14, |(o, _)| o);
        if frame.len().saturating_sub(l2) > max_l3 {
            return Err(SegError::TooBig);
        }
        let mut s = Segment::default();
        if flags & crate::wire::VNET_F_NEEDS_CSUM != 0 {
            let cs = usize::from(u16::from_le_bytes([vnet[6], vnet[7]]));
            let co = usize::from(u16::from_le_bytes([vnet[8], vnet[9]]));
            let end = cs + co + 2;
            // A checksum starts after an IP header, never in the L2 one.
            if cs < l2 + 20 || end > frame.len() || end > MAX_SEG_HDR {
                return Err(SegError::Malformed);
            }
            s.hdr[..end].copy_from_slice(&frame[..end]);
            // The field holds the pseudo-header seed: the sum over the
            // region with it in place is the checksum's complement.
            let c = !fold(sum(&frame[cs..]));
            s.hdr[cs + co..end].copy_from_slice(&c.to_be_bytes());
            s.hdr_len = end;
            s.payload = (end, frame.len());
        } else {
            s.payload = (0, frame.len());
        }
        out.push(s);
        return Ok(());
    }
    if gso_size == 0 || !matches!(gso, GSO_TCPV4 | GSO_TCPV6 | GSO_UDP_L4) {
        return Err(SegError::Unsupported);
    }
    let (o, et) = l3(frame).ok_or(SegError::Malformed)?;
    let v6 = match et {
        0x0800 => false,
        0x86dd => true,
        _ => return Err(SegError::Malformed),
    };
    if (gso == GSO_TCPV4 && v6) || (gso == GSO_TCPV6 && !v6) {
        return Err(SegError::Malformed);
    }
    let ip = frame.get(o..).ok_or(SegError::Malformed)?;
    let (ihl, proto) = if v6 {
        (40, *ip.get(6).ok_or(SegError::Malformed)?)
    } else {
        let b = *ip.first().ok_or(SegError::Malformed)?;
        (
            usize::from(b & 0x0f) * 4,
            *ip.get(9).ok_or(SegError::Malformed)?,
        )
    };
    let want = if gso == GSO_UDP_L4 { 17 } else { 6 };
    let min_l4 = if want == 6 { 20 } else { 8 };
    if proto != want || ihl < 20 || ip.len() < ihl + min_l4 {
        return Err(SegError::Malformed);
    }
    let l4 = o + ihl;
    let l4_hlen = if proto == 6 {
        usize::from(frame[l4 + 12] >> 4) * 4
    } else {
        8
    };
    let hlen = l4 + l4_hlen;
    if l4_hlen < 8 || hlen > frame.len() || hlen > MAX_SEG_HDR {
        return Err(SegError::Malformed);
    }
    let room = max_l3.saturating_sub(hlen - o);
    if proto == 6 {
        gso_size = gso_size.min(room);
    }
    if gso_size == 0 || gso_size > room {
        return Err(SegError::TooBig);
    }
    let payload = frame.len() - hlen;
    let n = payload.div_ceil(gso_size).max(1);
    if n > MAX_SEGS {
        return Err(SegError::Unsupported);
    }
    let seq0 = u32::from_be_bytes([frame[l4 + 4], frame[l4 + 5], frame[l4 + 6], frame[l4 + 7]]);
    let id0 = u16::from_be_bytes([frame[o + 4], frame[o + 5]]);
    for i in 0..n {
        let (a, b) = (
            hlen + i * gso_size,
            (hlen + (i + 1) * gso_size).min(frame.len()),
        );
        let mut s = Segment {
            hdr_len: hlen,
            payload: (a, b),
            ..Segment::default()
        };
        let h = &mut s.hdr[..hlen];
        h.copy_from_slice(&frame[..hlen]);
        let l4_len = l4_hlen + (b - a);
        if v6 {
            h[o + 4..o + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        } else {
            h[o + 2..o + 4].copy_from_slice(&((ihl + l4_len) as u16).to_be_bytes());
            h[o + 4..o + 6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            h[o + 10..o + 12].fill(0);
            let c = checksum(&h[o..o + ihl]);
            h[o + 10..o + 12].copy_from_slice(&c.to_be_bytes());
        }
        let t = &mut h[l4..];
        if proto == 6 {
            let seq = seq0.wrapping_add((i * gso_size) as u32);
            t[4..8].copy_from_slice(&seq.to_be_bytes());
            if i + 1 < n {
                t[13] &= !(0x01 | 0x08); // FIN, PSH: last segment only
            }
            if i > 0 {
                t[13] &= !0x80; // CWR: first segment only
            }
            t[16..18].fill(0);
        } else {
            t[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            t[6..8].fill(0);
        }
        let ipb = &s.hdr[o..o + ihl];
        let total = pseudo(ipb, v6, proto, l4_len) + sum(&s.hdr[l4..hlen]) + sum(&frame[a..b]);
        let mut c = !fold(total);
        if proto == 17 && c == 0 {
            c = 0xffff;
        }
        let off = if proto == 6 { l4 + 16 } else { l4 + 6 };
        s.hdr[off..off + 2].copy_from_slice(&c.to_be_bytes());
        out.push(s);
    }
    Ok(())
}

/// The vnet header to give a decapsulated frame. A sender on the same
/// machine (a veth underlay) hands over its TCP/UDP checksums unfinished
/// (the field holds the pseudo-header seed, `CHECKSUM_PARTIAL`) and whole
/// TSO super-frames in one datagram: such frames are marked `NEEDS_CSUM`,
/// and a TCP one longer than `mtu` also as GSO with the segment size the
/// overlay MTU allows, so the egress port finishes them. Complete frames
/// (what arrives from a wire) get an all-zero header.
pub fn rx_vnet(frame: &[u8], mtu: usize) -> [u8; 10] {
    let mut v = [0u8; 10];
    let Some((o, et)) = l3(frame) else {
        return v;
    };
    let (v6, ihl, proto, l3_len) = match et {
        0x0800 => {
            let Some(ip) = frame.get(o..o + 20) else {
                return v;
            };
            // Fragments carry no (whole) L4 header to finish.
            if ip[6] & 0x3f != 0 || ip[7] != 0 {
                return v;
            }
            let tot = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            (false, usize::from(ip[0] & 0x0f) * 4, ip[9], tot)
        }
        0x86dd => {
            let Some(ip) = frame.get(o..o + 40) else {
                return v;
            };
            (
                true,
                40,
                ip[6],
                40 + usize::from(u16::from_be_bytes([ip[4], ip[5]])),
            )
        }
        _ => return v,
    };
    let l4 = o + ihl;
    let field = match proto {
        6 => 16,
        17 => 6,
        _ => return v,
    };
    if ihl < 20 || l3_len < ihl + field + 2 || o + l3_len > frame.len() {
        return v;
    }
    let ip = &frame[o..o + ihl];
    let l4_len = l3_len - ihl;
    let seed = fold(pseudo(ip, v6, proto, l4_len));
    let stored = u16::from_be_bytes([frame[l4 + field], frame[l4 + field + 1]]);
    if stored != seed || fold(pseudo(ip, v6, proto, l4_len) + sum(&frame[l4..o + l3_len])) == 0xffff
    {
        return v;
    }
    v[0] = crate::wire::VNET_F_NEEDS_CSUM;
    v[6..8].copy_from_slice(&(l4 as u16).to_le_bytes());
    v[8..10].copy_from_slice(&(field as u16).to_le_bytes());
    if proto == 6 && l3_len > mtu && frame.len() > l4 + 13 {
        let thl = usize::from(frame[l4 + 12] >> 4) * 4;
        if let Some(mss) = mtu.checked_sub(ihl + thl).filter(|m| *m > 0) {
            v[1] = if v6 { GSO_TCPV6 } else { GSO_TCPV4 };
            v[2..4].copy_from_slice(&((l4 + thl) as u16).to_le_bytes());
            v[4..6].copy_from_slice(&(mss as u16).to_le_bytes());
        }
    }
    v
}

/// Merge a coalesced receive (`UDP_GRO`: datagrams of `seg` bytes each,
/// the last possibly shorter, in `buf`) back into one TCP super-frame when
/// it holds consecutive segments of one TCP flow, each with a valid
/// checksum, as the far VTEP cut them: the first datagram's headers, every
/// payload in order, IP lengths fixed, FIN/PSH from the last segment, and
/// the TCP checksum left as the pseudo-header seed. Returns the merged
/// frame's length (it starts at `buf[VXLAN_HLEN]`) and its vnet header
/// (`NEEDS_CSUM`, GSO with the segments' size), or `None` (nothing changed)
/// when the datagrams are anything else.
pub fn coalesce(buf: &mut [u8], seg: usize) -> Option<(usize, [u8; 10])> {
    if seg <= VXLAN_HLEN + 14 || buf.len() <= seg {
        return None;
    }
    let k = buf.len().div_ceil(seg);
    let first = &buf[VXLAN_HLEN..seg];
    let (o, et) = l3(first)?;
    let v6 = match et {
        0x0800 => false,
        0x86dd => true,
        _ => return None,
    };
    let ip = first.get(o..)?;
    let (ihl, proto) = if v6 {
        (40, *ip.get(6)?)
    } else {
        (usize::from(*ip.first()? & 0x0f) * 4, *ip.get(9)?)
    };
    if proto != 6 || ihl < 20 || (!v6 && (ip[6] & 0x3f != 0 || ip[7] != 0)) {
        return None;
    }
    let l4 = o + ihl;
    let thl = usize::from(*first.get(l4 + 12)? >> 4) * 4;
    let hlen = l4 + thl;
    if thl < 20 || hlen >= first.len() {
        return None;
    }
    let pay0 = first.len() - hlen;
    // Header bytes that differ between segments of one super-frame.
    let varies = |i: usize| {
        (!v6 && ((o + 2..o + 6).contains(&i) || (o + 10..o + 12).contains(&i)))
            || (v6 && (o + 4..o + 6).contains(&i))
            || (l4 + 4..l4 + 8).contains(&i)
            || i == l4 + 13
            || (l4 + 16..l4 + 18).contains(&i)
    };
    let mut seq = u32::from_be_bytes(first[l4 + 4..l4 + 8].try_into().ok()?);
    let mut fin_psh = 0;
    for j in 0..k {
        let d = &buf[j * seg..((j + 1) * seg).min(buf.len())];
        if d.len() <= VXLAN_HLEN + hlen || d[..VXLAN_HLEN] != buf[..VXLAN_HLEN] {
            return None;
        }
        let f = &d[VXLAN_HLEN..];
        let pay = f.len() - hlen;
        if (j + 1 < k && pay != pay0) || pay > pay0 {
            return None;
        }
        if (0..hlen).any(|i| !varies(i) && f[i] != buf[VXLAN_HLEN + i]) {
            return None;
        }
        let l3_len = if v6 {
            40 + usize::from(u16::from_be_bytes([f[o + 4], f[o + 5]]))
        } else {
            usize::from(u16::from_be_bytes([f[o + 2], f[o + 3]]))
        };
        if l3_len != f.len() - o {
            return None;
        }
        if u32::from_be_bytes(f[l4 + 4..l4 + 8].try_into().ok()?) != seq {
            return None;
        }
        seq = seq.wrapping_add(pay as u32);
        let flags = f[l4 + 13];
        // SYN, RST, URG never; FIN and PSH on the last segment only.
        if flags & 0x26 != 0 || (j + 1 < k && flags & 0x09 != 0) {
            return None;
        }
        if j + 1 == k {
            fin_psh = flags & 0x09;
        }
        // A segment that does not verify is not hidden under a new checksum.
        let ipb = &f[o..o + ihl];
        if fold(pseudo(ipb, v6, 6, f.len() - l4) + sum(&f[l4..])) != 0xffff {
            return None;
        }
    }
    // Merge in place: payloads move towards the front, never over unread bytes.
    let mut end = VXLAN_HLEN + hlen + pay0;
    for j in 1..k {
        let a = j * seg + VXLAN_HLEN + hlen;
        let b = ((j + 1) * seg).min(buf.len());
        buf.copy_within(a..b, end);
        end += b - a;
    }
    let f = &mut buf[VXLAN_HLEN..end];
    let flen = f.len();
    if v6 {
        f[o + 4..o + 6].copy_from_slice(&((flen - o - 40) as u16).to_be_bytes());
    } else {
        f[o + 2..o + 4].copy_from_slice(&((flen - o) as u16).to_be_bytes());
        f[o + 10..o + 12].fill(0);
        let c = checksum(&f[o..o + ihl]);
        f[o + 10..o + 12].copy_from_slice(&c.to_be_bytes());
    }
    f[l4 + 13] |= fin_psh;
    let seed = fold(pseudo(&f[o..o + ihl], v6, 6, flen - l4));
    f[l4 + 16..l4 + 18].copy_from_slice(&seed.to_be_bytes());
    let mut v = [0u8; 10];
    v[0] = crate::wire::VNET_F_NEEDS_CSUM;
    v[1] = if v6 { GSO_TCPV6 } else { GSO_TCPV4 };
    v[2..4].copy_from_slice(&(hlen as u16).to_le_bytes());
    v[4..6].copy_from_slice(&(pay0 as u16).to_le_bytes());
    v[6..8].copy_from_slice(&(l4 as u16).to_le_bytes());
    v[8..10].copy_from_slice(&16u16.to_le_bytes());
    Some((flen, v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An Ethernet/IPv4/TCP frame with `payload` bytes of data, built by
    /// hand after RFC 791/793 (the addresses of the multi-host demo).
    fn tcp4(payload: &[u8], flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((40 + payload.len()) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        ip[6] = 0x40;
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&[192, 168, 15, 1]);
        ip[16..20].copy_from_slice(&[192, 168, 15, 2]);
        let c = checksum(ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let t = &mut f[34..54];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&5001u16.to_be_bytes());
        t[4..8].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = flags;
        f.extend_from_slice(payload);
        f
    }

    /// Whether the IPv4 header and TCP checksum of a segment verify.
    fn verifies(seg: &[u8]) -> bool {
        let ip = &seg[14..34];
        let l4_len = seg.len() - 34;
        let s = pseudo(ip, false, 6, l4_len) + sum(&seg[34..]);
        checksum(ip) == 0 && fold(s) == 0xffff
    }

    fn join(frame: &[u8], s: &Segment) -> Vec<u8> {
        let mut v = s.hdr[..s.hdr_len].to_vec();
        v.extend_from_slice(&frame[s.payload.0..s.payload.1]);
        v
    }

    #[test]
    fn a_tso_super_frame_splits_like_the_kernels_gso() {
        let data: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
        let f = tcp4(&data, 0x18 | 0x80 | 0x01); // PSH ACK CWR FIN
        let vnet = [1, GSO_TCPV4, 54, 0, 0x78, 0x05, 34, 0, 16, 0]; // gso_size 1400
        let mut out = Vec::new();
        segment(&vnet, &f, 1500, &mut out).unwrap();
        assert_eq!(out.len(), 3);
        let mut got = Vec::new();
        for (i, s) in out.iter().enumerate() {
            let seg = join(&f, s);
            assert!(verifies(&seg), "segment {i} checksums");
            assert_eq!(
                u16::from_be_bytes([seg[16], seg[17]]) as usize,
                seg.len() - 14
            );
            assert_eq!(u16::from_be_bytes([seg[18], seg[19]]), 0x1234 + i as u16);
            let seq = u32::from_be_bytes([seg[38], seg[39], seg[40], seg[41]]);
            assert_eq!(seq, 0xffff_fff0u32.wrapping_add(1400 * i as u32));
            let fl = seg[47];
            assert_eq!(fl & 0x80 != 0, i == 0, "CWR on the first only");
            assert_eq!(fl & 0x09 != 0, i == 2, "FIN/PSH on the last only");
            got.extend_from_slice(&seg[54..]);
        }
        assert_eq!(got, data);
        assert_eq!(out[2].payload.1 - out[2].payload.0, 1200);
    }

    #[test]
    fn a_pending_checksum_is_completed_without_gso() {
        let mut f = tcp4(b"hello, green", 0x18);
        // CHECKSUM_PARTIAL: the field holds the pseudo-header seed.
        let seed = fold(pseudo(&f[14..34], false, 6, 20 + 12));
        f[50..52].copy_from_slice(&seed.to_be_bytes());
        let vnet = [1, 0, 0, 0, 0, 0, 34, 0, 16, 0];
        let mut out = Vec::new();
        segment(&vnet, &f, 1500, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert!(verifies(&join(&f, &out[0])));
        // A complete frame passes untouched.
        segment(&[0; 10], &f, 1500, &mut out).unwrap();
        assert_eq!((out[0].hdr_len, out[0].payload), (0, (0, f.len())));
    }

    #[test]
    fn malformed_or_unknown_super_frames_are_errors_not_panics() {
        let f = tcp4(&[0; 3000], 0x10);
        let mut out = Vec::new();
        let v = |t: u8, size: u16| {
            let s = size.to_le_bytes();
            [1, t, 54, 0, s[0], s[1], 34, 0, 16, 0]
        };
        assert_eq!(
            segment(&v(3, 1400), &f, 9000, &mut out),
            Err(SegError::Unsupported)
        );
        assert_eq!(
            segment(&v(1, 0), &f, 9000, &mut out),
            Err(SegError::Unsupported)
        );
        for cut in 0..60 {
            let _ = segment(&v(1, 1400), &f[..cut], 1500, &mut out);
            let _ = segment(&v(4, 1400), &f[..cut], 1500, &mut out);
            let _ = segment(&v(5, 1400), &f[..cut], 1500, &mut out);
        }
        assert_eq!(
            segment(&v(4, 1400), &f, 9000, &mut out),
            Err(SegError::Malformed)
        );
        let partial = [1, 0, 0, 0, 0, 0, 200, 0, 16, 0];
        assert_eq!(
            segment(&partial, &f, 9000, &mut out),
            Err(SegError::Malformed)
        );
        // A pending checksum that would start inside the Ethernet or IP header.
        for cs in [0u8, 4, 14, 33] {
            let v = [1, 0, 0, 0, 0, 0, cs, 0, 16, 0];
            assert_eq!(
                segment(&v, &f, 9000, &mut out),
                Err(SegError::Malformed),
                "csum_start {cs}"
            );
        }
        // A segment size that would make thousands of segments.
        assert_eq!(
            segment(&v(1, 8), &f, 9000, &mut out),
            Err(SegError::Unsupported)
        );
    }

    #[test]
    fn segments_never_exceed_the_tunnel_mtu() {
        let data = vec![7u8; 10_000];
        let f = tcp4(&data, 0x10);
        // The sender's MSS (1448) is larger than a 1450-byte overlay allows (1410).
        let vnet = [1, GSO_TCPV4, 54, 0, 0xa8, 0x05, 34, 0, 16, 0];
        let mut out = Vec::new();
        segment(&vnet, &f, 1450, &mut out).unwrap();
        assert!(
            out.iter()
                .all(|s| s.hdr_len - 14 + s.payload.1 - s.payload.0 <= 1450)
        );
        assert_eq!(out.len(), 10_000usize.div_ceil(1410));
        // An unsegmented frame larger than the MTU is refused, not cut.
        let big = tcp4(&[0; 1500], 0x10);
        assert_eq!(
            segment(&[0; 10], &big, 1500, &mut out),
            Err(SegError::TooBig)
        );
        assert!(segment(&[0; 10], &tcp4(&[0; 1460], 0x10), 1500, &mut out).is_ok());
    }

    #[test]
    fn received_partial_checksums_and_super_frames_are_marked_for_the_egress() {
        // As a veth underlay hands them over (seen in a probe of a Linux 6.18
        // vxlan sender): the TCP checksum field holds the pseudo-header seed.
        let data = vec![1u8; 3000];
        let mut f = tcp4(&data, 0x10);
        let seed = fold(pseudo(&f[14..34], false, 6, 20 + 3000));
        f[50..52].copy_from_slice(&seed.to_be_bytes());
        let v = rx_vnet(&f, 1450);
        assert_eq!(v[0], 1, "NEEDS_CSUM");
        assert_eq!((v[1], u16::from_le_bytes([v[4], v[5]])), (GSO_TCPV4, 1410));
        assert_eq!(u16::from_le_bytes([v[6], v[7]]), 34);
        // The same frame finished (as from a wire): nothing to do.
        let mut out = Vec::new();
        segment(&[1, 0, 0, 0, 0, 0, 34, 0, 16, 0], &f, 9000, &mut out).unwrap();
        let done = join(&f, &out[0]);
        assert_eq!(rx_vnet(&done, 9000), [0; 10]);
        // ARP, runts and fragments: nothing.
        assert_eq!(rx_vnet(&f[..20], 1450), [0; 10]);
        let mut frag = done.clone();
        frag[20] |= 0x20;
        assert_eq!(rx_vnet(&frag, 9000), [0; 10]);
    }

    #[test]
    fn outer_headers_carry_the_vni_and_a_valid_ipv4_checksum() {
        let mut h = [0u8; OUTER_HLEN];
        let (a, b) = (Ipv4Addr::new(10, 200, 0, 1), Ipv4Addr::new(10, 200, 0, 3));
        write_outer(&mut h, a, b, 50000, 4789, 0x123456, true, 7, 1464);
        assert_eq!(checksum(&h[..20]), 0);
        assert_eq!(u16::from_be_bytes([h[2], h[3]]), 1500);
        assert_eq!(h[6] & 0x40, 0x40);
        assert_eq!(u16::from_be_bytes([h[24], h[25]]), 1480);
        assert_eq!(parse(&[&h[28..], &[0u8; 14][..]].concat()), Ok(0x123456));
        assert_eq!(parse(&[0u8; 22]), Err(Bad::Header));
        assert_eq!(parse(&h[28..]), Err(Bad::Header), "no inner frame");
    }

    #[test]
    fn entropy_is_per_flow_and_in_the_dynamic_range() {
        let a = tcp4(b"x", 0x10);
        let mut b = a.clone();
        b[34..36].copy_from_slice(&40001u16.to_be_bytes());
        let (pa, pb) = (entropy(&a), entropy(&b));
        assert!(pa >= 49152 && pb >= 49152);
        assert_eq!(
            pa,
            entropy(&tcp4(b"other payload", 0x18)),
            "same flow, same port"
        );
        let ports: std::collections::HashSet<u16> = (0..64u16)
            .map(|p| {
                let mut f = a.clone();
                f[34..36].copy_from_slice(&(40000 + p).to_be_bytes());
                entropy(&f)
            })
            .collect();
        assert!(
            ports.len() > 48,
            "64 flows spread over {} ports",
            ports.len()
        );
        assert!(inner_df(&a));
    }

    /// A GRO buffer as a peer VTEP's `UDP_SEGMENT` send makes it: VXLAN
    /// header + segment, each `seg` bytes but the last.
    fn gro_buffer(f: &[u8], mss: u16) -> (Vec<u8>, usize) {
        let m = mss.to_le_bytes();
        let vnet = [1, GSO_TCPV4, 54, 0, m[0], m[1], 34, 0, 16, 0];
        let mut out = Vec::new();
        segment(&vnet, f, 65_535, &mut out).unwrap();
        let mut b = Vec::new();
        for s in &out {
            b.extend_from_slice(&[0x08, 0, 0, 0, 0, 0, 42, 0]);
            b.extend_from_slice(&join(f, s));
        }
        (b, 8 + 54 + usize::from(mss))
    }

    #[test]
    fn coalesced_segments_merge_back_into_the_super_frame() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 13) as u8).collect();
        let f = tcp4(&data, 0x18); // PSH ACK
        let (mut b, seg) = gro_buffer(&f, 1400);
        let (flen, v) = coalesce(&mut b, seg).expect("mergeable");
        let m = &b[8..8 + flen];
        assert_eq!(flen, f.len());
        assert_eq!(&m[54..], &data[..], "payload in order");
        assert_eq!(checksum(&m[14..34]), 0, "IPv4 header checksum");
        assert_eq!(m[47], 0x18, "PSH from the last segment");
        assert_eq!((v[0], v[1]), (1, GSO_TCPV4));
        assert_eq!(u16::from_le_bytes([v[4], v[5]]), 1400);
        // Finishing the checksum as the egress would gives the original's.
        let mut out = Vec::new();
        segment(&[1, 0, 0, 0, 0, 0, 34, 0, 16, 0], m, 65_535, &mut out).unwrap();
        assert!(verifies(&join(m, &out[0])));
    }

    #[test]
    fn anything_but_one_flows_valid_consecutive_segments_stays_apart() {
        let data = vec![5u8; 4200];
        let f = tcp4(&data, 0x10);
        let (b, seg) = gro_buffer(&f, 1400);
        // A corrupted payload byte: not hidden under a new checksum.
        let mut x = b.clone();
        x[seg + 100] ^= 1;
        assert!(coalesce(&mut x, seg).is_none());
        // Another VNI in the second datagram; a gap in the sequence; a SYN.
        let mut y = b.clone();
        y[seg + 6] = 43;
        assert!(coalesce(&mut y, seg).is_none());
        let mut z = b.clone();
        z[2 * seg + 8 + 34 + 7] ^= 1;
        assert!(coalesce(&mut z, seg).is_none());
        let mut w = b.clone();
        w[8 + 47] |= 0x02;
        assert!(coalesce(&mut w, seg).is_none());
        // Cut anywhere: no panic.
        for n in 0..b.len() {
            let _ = coalesce(&mut b[..n].to_vec(), seg);
        }
        assert_eq!(
            x,
            {
                let mut c = b.clone();
                c[seg + 100] ^= 1;
                c
            },
            "a refused buffer is left as it was"
        );
    }

    proptest! {
        /// Any payload and segment size: the segments verify and carry the payload in order.
        #[test]
        fn segments_reassemble_to_the_payload(len in 1usize..20_000, mss in 160usize..9000) {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            let f = tcp4(&data, 0x18);
            let m = (mss as u16).to_le_bytes();
            let vnet = [1, GSO_TCPV4, 54, 0, m[0], m[1], 34, 0, 16, 0];
            let mut out = Vec::new();
            segment(&vnet, &f, 65_535, &mut out).unwrap();
            prop_assert_eq!(out.len(), len.div_ceil(mss));
            let mut got = Vec::new();
            for s in &out {
                let seg = join(&f, s);
                prop_assert!(verifies(&seg));
                prop_assert!(seg.len() - 54 <= mss);
                got.extend_from_slice(&seg[54..]);
            }
            prop_assert_eq!(got, data);
        }
    }
}
