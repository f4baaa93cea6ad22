//! Fitting IPv4 packets to the next hop's MTU: the fit decision (fits,
//! fragment, fragmentation needed, GSO too big), fragmentation with the
//! offloaded checksum completed first, and segmentation of TCP GSO frames.

use super::*;
use nat::wire::tcp::TcpPacket;
use nat::wire::{emit_with_payload, tcp_flags};

/// What the MTU asks of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fit {
    Fits,
    Fragment,
    FragNeeded,
    GsoTooBig,
}

pub(super) fn fit(seg: usize, mtu: usize, df: bool, gso: bool) -> Fit {
    if seg <= mtu {
        Fit::Fits
    } else if df {
        Fit::FragNeeded
    } else if gso {
        Fit::GsoTooBig
    } else {
        Fit::Fragment
    }
}

/// Whether the gateway segments this GSO frame itself when its segments do
/// not fit (TCPv4 only; UDP GSO keeps its datagram boundaries, so it is refused).
pub(super) fn can_segment(vnet: &[u8], p: u8) -> bool {
    p == proto::TCP && VnetHdr::new_checked(vnet).is_ok_and(|v| v.gso_type() == VNET_GSO_TCPV4)
}

/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub(super) const VNET_GSO_TCPV4: u8 = 1;

/// Whether the vnet header asks for segmentation (GSO).
pub(super) fn is_gso(vnet: &[u8]) -> bool {
    VnetHdr::new_checked(vnet).is_ok_and(|v| v.gso_type() != 0)
}

/// Complete the transport checksum a CHECKSUM_PARTIAL frame left to offload
/// (`csum_start`/`csum_offset` of its vnet header, counted from the Ethernet
/// header), and clear the request. `frame` ends where the IP packet does.
/// Errs if the offsets do not point inside the transport payload.
pub(super) fn complete_checksum(
    vnet: &mut [u8],
    frame: &mut [u8],
    l4_start: usize,
    p: u8,
) -> Result<(), ()> {
    let Ok(v) = VnetHdr::new_checked(&*vnet) else {
        return Ok(());
    };
    if v.flags() & VNET_F_NEEDS_CSUM == 0 {
        return Ok(());
    }
    let start = usize::from(v.csum_start());
    let field = start + usize::from(v.csum_offset());
    if start < l4_start || field + 2 > frame.len() {
        return Err(());
    }
    let mut c = checksum::checksum(&frame[start..]);
    if c == 0 && p == proto::UDP {
        c = 0xffff; // RFC 768: a computed 0 is sent as all ones
    }
    frame[field..field + 2].copy_from_slice(&c.to_be_bytes());
    vnet[0] &= !VNET_F_NEEDS_CSUM;
    Ok(())
}

/// Length of the largest IP packet this frame becomes on the wire (a GSO
/// super-frame: headers + one segment).
pub(super) fn seg_len(vnet: &[u8], ip: &[u8], hl: usize, p: u8) -> usize {
    let Ok(v) = VnetHdr::new_checked(vnet) else {
        return ip.len();
    };
    if v.gso_type() == 0 || v.gso_size() == 0 {
        return ip.len();
    }
    let l4h = match p {
        proto::TCP => ip
            .get(hl..)
            .and_then(|t| TcpPacket::new_head(t).ok())
            .map_or(20, |t| t.header_len()),
        proto::UDP => 8,
        _ => 0,
    };
    (hl + l4h + usize::from(v.gso_size())).min(ip.len())
}

impl Gateway {
    /// Fragment a non-DF packet (`frame` ends where it does) for a next hop
    /// of `mtu`; the fragments go into `out` to be routed by
    /// [`Gateway::route_gen`]. The transport checksum is completed first if
    /// offload was asked for; no fragment carries DF; non-first fragments
    /// carry only the options to be copied. All or none: a packet that would
    /// not fit the batch is dropped whole.
    pub(super) fn fragment_out(
        &mut self,
        vnet: &mut [u8],
        frame: &mut [u8],
        mtu: usize,
        out: &mut Gen,
    ) -> Verdict {
        let Some(info) = frame
            .get(ETH_HLEN..)
            .and_then(|b| Ipv4Packet::new_checked(b).ok())
            .map(|ip| {
                (
                    ip.header_len(),
                    ip.total_len(),
                    ip.protocol(),
                    ip.frag_offset(),
                    ip.more_frags(),
                )
            })
        else {
            return self.drop(GwDrop::Malformed);
        };
        let (hl, total, p, base_off, last_mf) = info;
        let end = ETH_HLEN + total;
        if complete_checksum(vnet, &mut frame[..end], ETH_HLEN + hl, p).is_err() {
            return self.drop(GwDrop::BadVnet);
        }
        let payload_len = total - hl;
        let chunk = mtu.saturating_sub(hl) & !7;
        if chunk == 0 || base_off + payload_len > 0xffff {
            return self.drop(GwDrop::Malformed);
        }
        let room = BATCH.saturating_sub(out.len());
        if payload_len.div_ceil(chunk) > room {
            self.counters.drop_gen_full += 1;
            return Verdict::Consumed;
        }
        let Ok(ip) = Ipv4Packet::new_checked(&frame[ETH_HLEN..end]) else {
            return self.drop(GwDrop::Malformed);
        };
        let first_hdr = ip.header();
        let mut later = [0u8; 60];
        let later_hl = ip.copied_options_header(&mut later);
        let eth = &frame[..ETH_HLEN];
        let payload = ip.payload();
        let mut off = 0;
        while off < payload.len() {
            let n = chunk.min(payload.len() - off);
            let more = off + n < payload.len() || last_mf;
            let data = &payload[off..off + n];
            let hdr = if base_off + off == 0 {
                first_hdr
            } else {
                &later[..later_hl]
            };
            let at = base_off + off;
            let ok = out.push(Target::Route, |b| {
                b[..VNET_HDR_LEN].fill(0);
                let f = &mut b[VNET_HDR_LEN..];
                f[..ETH_HLEN].copy_from_slice(eth);
                let Some(mut p) = emit_with_payload(&mut f[ETH_HLEN..], hdr, &[data]) else {
                    return 0;
                };
                // DF never survives on a fragment; MF on all but the last.
                p.set_frag(more, at);
                p.fill_checksum();
                VNET_HDR_LEN + ETH_HLEN + hdr.len() + n
            });
            if !ok {
                self.counters.drop_gen_full += 1;
                return Verdict::Consumed;
            }
            self.counters.fragmented += 1;
            off += n;
        }
        Verdict::Consumed
    }

    /// Segment a TCPv4 GSO super-frame without DF (`frame` ends where its IP
    /// packet does) into segments that fit `mtu`, each a complete packet with
    /// its checksums computed (RFC 793 sequence numbers; CWR on the first
    /// segment only, FIN and PSH on the last only); they go into `out` to be
    /// routed by [`Gateway::route_gen`]. All or none, as for fragments.
    pub(super) fn segment_out(&mut self, frame: &mut [u8], mtu: usize, out: &mut Gen) -> Verdict {
        let Some((hl, total, ident)) = frame
            .get(ETH_HLEN..)
            .and_then(|b| Ipv4Packet::new_checked(b).ok())
            .filter(|ip| ip.protocol() == proto::TCP && !ip.is_fragment())
            .map(|ip| (ip.header_len(), ip.total_len(), ip.ident()))
        else {
            return self.drop(GwDrop::GsoTooBig);
        };
        let ip = &frame[ETH_HLEN..ETH_HLEN + total];
        let Some(tcp) = ip.get(hl..).and_then(|t| TcpPacket::new_checked(t).ok()) else {
            return self.drop(GwDrop::Malformed);
        };
        let hdrs = hl + tcp.header_len();
        let data = &ip[hdrs..];
        let seg = mtu.saturating_sub(hdrs);
        if seg == 0 {
            return self.drop(GwDrop::GsoTooBig);
        }
        let n = data.len().div_ceil(seg).max(1);
        if n > BATCH.saturating_sub(out.len()) {
            self.counters.drop_gen_full += 1;
            return Verdict::Consumed;
        }
        let eth = &frame[..ETH_HLEN];
        let (seq0, flags) = (tcp.seq(), tcp.flags());
        for k in 0..n {
            let d = &data[(k * seg).min(data.len())..((k + 1) * seg).min(data.len())];
            let mut fl = flags;
            if k > 0 {
                fl &= !tcp_flags::CWR;
            }
            if k + 1 < n {
                fl &= !(tcp_flags::FIN | tcp_flags::PSH);
            }
            let seq = seq0.wrapping_add((k * seg) as u32);
            let ok = out.push(Target::Route, |b| {
                b[..VNET_HDR_LEN].fill(0);
                let f = &mut b[VNET_HDR_LEN..];
                f[..ETH_HLEN].copy_from_slice(eth);
                let len = hdrs + d.len();
                // The IP header, then the TCP header and this segment's data.
                let parts = [&ip[hl..hdrs], d];
                let Some(mut p) = emit_with_payload(&mut f[ETH_HLEN..], &ip[..hl], &parts) else {
                    return 0;
                };
                p.set_ident(ident.wrapping_add(k as u16));
                p.fill_checksum();
                let (src, dst) = (p.src(), p.dst());
                let Ok(mut tcp) = TcpPacket::new_checked(p.payload_mut()) else {
                    return 0;
                };
                tcp.set_seq(seq);
                tcp.set_flags(fl);
                tcp.fill_checksum_v4(src, dst);
                VNET_HDR_LEN + ETH_HLEN + len
            });
            if !ok {
                self.counters.drop_gen_full += 1;
                return Verdict::Consumed;
            }
            self.counters.segmented += 1;
        }
        Verdict::Consumed
    }
}
