//! ICMP of the IPv4 router: what the gateway answers for its own addresses
//! (echo, TCP reset, port unreachable) and the errors it sends about packets
//! it routes, under a token bucket in total and per destination (RFC 1812
//! 4.3.2.8), quoting at most what RFC 1812 allows.

use super::*;
use nat::wire::icmp::{self as wicmp, IcmpPacket};
use nat::wire::tcp::{self, TcpPacket};
use nat::wire::{Ipv4Repr, tcp_flags};

/// A token bucket holding time credit (ms): a token costs `ms_per_token`.
#[derive(Clone, Copy)]
pub(super) struct Bucket {
    pub(super) credit: u64,
    pub(super) last: u64,
}

impl Bucket {
    pub(super) const FULL: Bucket = Bucket {
        credit: u64::MAX,
        last: 0,
    };

    /// The credit at `now`, capped at `cap`.
    pub(super) fn credit(&self, now: u64, cap: u64) -> u64 {
        self.credit
            .saturating_add(now.saturating_sub(self.last))
            .min(cap)
    }

    pub(super) fn take(&mut self, now: u64, cost: u64, cap: u64) {
        self.credit = self.credit(now, cap) - cost;
        self.last = self.last.max(now);
    }
}

/// A copy of the first bytes of a packet, to quote it in an ICMP error
/// after it has been rewritten (NAT).
pub(super) struct Quote {
    pub(super) buf: [u8; ICMP_QUOTE],
    pub(super) len: usize,
}

impl Quote {
    pub(super) fn of(ip: &[u8]) -> Quote {
        let len = ip.len().min(ICMP_QUOTE);
        let mut buf = [0u8; ICMP_QUOTE];
        buf[..len].copy_from_slice(&ip[..len]);
        Quote { buf, len }
    }
    pub(super) fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Push an IPv4 packet built by `emit` (into the buffer after the Ethernet
/// header, returning its length) to `target`, from `src_mac` to `dst_mac`;
/// false if the batch is full (or `emit` found no room).
pub(super) fn push4(
    out: &mut Gen,
    target: Target,
    dst_mac: MacAddr,
    src_mac: MacAddr,
    emit: impl FnOnce(&mut [u8]) -> Option<usize>,
) -> bool {
    out.push(target, |b| {
        b[..VNET_HDR_LEN].fill(0);
        let f = &mut b[VNET_HDR_LEN..];
        write_eth(f, dst_mac, src_mac, ethertype::IPV4);
        match emit(&mut f[ETH_HLEN..]) {
            Some(n) => VNET_HDR_LEN + ETH_HLEN + n,
            None => 0,
        }
    })
}

/// Quote of the offending packet in ICMP errors (RFC 1812: fit in 576 bytes).
pub(super) const ICMP_QUOTE: usize = 576 - 20 - 8;

/// ICMP error rate limit (RFC 1812 4.3.2.8), as in Linux's defaults in
/// spirit: 100/s with a burst of 50 in total, 10/s with a burst of 10 per
/// destination.
pub(super) const ICMP_ALL_MS_PER_TOKEN: u64 = 10;

pub(super) const ICMP_ALL_BURST: u64 = 50;

pub(super) const ICMP_DST_MS_PER_TOKEN: u64 = 100;

pub(super) const ICMP_DST_BURST: u64 = 10;

/// Per-destination buckets, indexed by a hash of the destination.
pub(super) const ICMP_DST_SLOTS: usize = 256;

impl Gateway {
    /// Deliver to the gateway itself: answer pings (with a fresh TTL),
    /// refuse UDP with port unreachable and TCP with a reset (it listens on
    /// nothing), both under the ICMP error rate limit.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn local(
        &mut self,
        now: u64,
        frame: &mut [u8],
        in_port: PortId,
        src_mac: MacAddr,
        out: &mut Gen,
        my_mac: MacAddr,
        my_ip: Ipv4Addr,
    ) -> Verdict {
        let Ok(ip) = Ipv4Packet::new_checked(&frame[ETH_HLEN..]) else {
            return self.drop(GwDrop::Malformed);
        };
        let end = ETH_HLEN + ip.total_len();
        match ip.protocol() {
            proto::ICMP
                if IcmpPacket::new_checked(ip.payload())
                    .is_ok_and(|m| m.msg_type() == icmp_type::ECHO_REQUEST)
                    && !ip.is_fragment() =>
            {
                let Ok(mut ip) = Ipv4Packet::new_checked(&mut frame[ETH_HLEN..end]) else {
                    return self.drop(GwDrop::Malformed);
                };
                // A new packet of ours: a fresh TTL, not the request's.
                if wicmp::make_echo_reply(&mut ip, my_ip, OWN_TTL).is_err() {
                    return self.drop(GwDrop::Malformed);
                }
                write_eth(frame, src_mac, my_mac, ethertype::IPV4);
                self.counters.echo_replies += 1;
                Verdict::Reply
            }
            proto::UDP => {
                self.icmp_error(
                    now,
                    out,
                    Target::Port(in_port),
                    src_mac,
                    my_mac,
                    my_ip,
                    &frame[ETH_HLEN..end],
                    icmp_type::DEST_UNREACH,
                    3,
                    0,
                );
                self.counters.unreachable += 1;
                Verdict::Consumed
            }
            proto::TCP if !ip.is_fragment() => {
                let peer = ip.src();
                if self.tcp_reset(
                    now,
                    out,
                    in_port,
                    src_mac,
                    my_mac,
                    my_ip,
                    peer,
                    ip.payload(),
                ) {
                    self.counters.tcp_resets += 1;
                    Verdict::Consumed
                } else {
                    self.counters.drop_local += 1;
                    Verdict::Drop(DropReason::GwLocal)
                }
            }
            _ => {
                self.counters.drop_local += 1;
                Verdict::Drop(DropReason::GwLocal)
            }
        }
    }

    /// Answer TCP segment `seg` from `peer` with a reset (RFC 9293 3.10.7.1:
    /// `<SEQ=SEG.ACK><CTL=RST>` if it carried an ACK, else
    /// `<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>`) out of `in_port`. Nothing
    /// answers a reset, a malformed segment, a martian peer, or a segment over
    /// the ICMP error rate limit (counted there); returns whether one was sent.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn tcp_reset(
        &mut self,
        now: u64,
        out: &mut Gen,
        in_port: PortId,
        to_mac: MacAddr,
        my_mac: MacAddr,
        my_ip: Ipv4Addr,
        peer: Ipv4Addr,
        seg: &[u8],
    ) -> bool {
        let Ok(seg) = TcpPacket::new_checked(seg) else {
            return false;
        };
        if seg.flags() & tcp_flags::RST != 0 || is_martian(peer) {
            return false;
        }
        if !self.icmp_allowed(now, peer) {
            return false;
        }
        let ip = Ipv4Repr {
            src: my_ip,
            dst: peer,
            proto: proto::TCP,
            ttl: OWN_TTL,
            tos: 0,
            dont_frag: true,
        };
        let ok = push4(out, Target::Port(in_port), to_mac, my_mac, |b| {
            tcp::emit_rst_v4(b, &ip, &seg)
        });
        if !ok {
            self.counters.drop_gen_full += 1;
        }
        ok
    }

    /// An ICMP error from the gateway's LAN address, back out of `in_port` to `to_mac`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn lan_error(
        &mut self,
        now: u64,
        out: &mut Gen,
        in_port: PortId,
        to_mac: MacAddr,
        orig: &[u8],
        ty: u8,
        code: u8,
        mtu: u16,
    ) {
        let (mac, ip) = (self.cfg.mac, self.cfg.ip);
        self.icmp_error(
            now,
            out,
            Target::Port(in_port),
            to_mac,
            mac,
            ip,
            orig,
            ty,
            code,
            mtu,
        );
    }

    /// Whether an ICMP error to `to` may go out at `now`: takes a token from
    /// the total and from `to`'s bucket, or counts a suppression.
    pub(super) fn icmp_allowed(&mut self, now: u64, to: Ipv4Addr) -> bool {
        self.icmp_allowed_key(now, u32::from(to))
    }

    /// [`Gateway::icmp_allowed`] for a destination hashed to `key`.
    pub(super) fn icmp_allowed_key(&mut self, now: u64, key: u32) -> bool {
        let h = (key.wrapping_mul(0x9e37_79b1) >> 24) as usize % ICMP_DST_SLOTS;
        let all_cap = ICMP_ALL_MS_PER_TOKEN * ICMP_ALL_BURST;
        let dst_cap = ICMP_DST_MS_PER_TOKEN * ICMP_DST_BURST;
        if self.icmp_all.credit(now, all_cap) < ICMP_ALL_MS_PER_TOKEN
            || self.icmp_dst[h].credit(now, dst_cap) < ICMP_DST_MS_PER_TOKEN
        {
            self.counters.icmp_rate_limited += 1;
            return false;
        }
        self.icmp_all.take(now, ICMP_ALL_MS_PER_TOKEN, all_cap);
        self.icmp_dst[h].take(now, ICMP_DST_MS_PER_TOKEN, dst_cap);
        true
    }

    /// Build an ICMP error about `orig` (an IPv4 packet, or the start of
    /// one) into `out`, unless RFC 1812 forbids it or the rate limit holds it back.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn icmp_error(
        &mut self,
        now: u64,
        out: &mut Gen,
        target: Target,
        eth_dst: MacAddr,
        eth_src: MacAddr,
        my_ip: Ipv4Addr,
        orig: &[u8],
        ty: u8,
        code: u8,
        mtu: u16,
    ) {
        // A quote may be cut short of the total length.
        let Ok(o) = Ipv4Packet::new_quoted(orig) else {
            return;
        };
        let to = o.src();
        let is_err =
            o.protocol() == proto::ICMP && o.payload().first().copied().is_some_and(icmp_is_error);
        if is_martian(to) || o.frag_offset() != 0 || is_err {
            return;
        }
        if !self.icmp_allowed(now, to) {
            return;
        }
        // The quote fits 576 bytes (RFC 1812 4.3.2.3) and the MTU towards the
        // sender, which the topology may set below 576.
        let room = self.egress_mtu(self.route(to)).saturating_sub(20 + 8);
        let quote = &orig[..orig.len().min(ICMP_QUOTE).min(room.max(20))];
        let ip = Ipv4Repr {
            src: my_ip,
            dst: to,
            proto: proto::ICMP,
            ttl: OWN_TTL,
            tos: 0xc0,
            dont_frag: false,
        };
        let ok = push4(out, target, eth_dst, eth_src, |b| {
            wicmp::emit_error(b, &ip, ty, code, u32::from(mtu), quote)
        });
        if !ok {
            self.counters.drop_gen_full += 1;
        }
    }
}
