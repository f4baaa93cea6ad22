//! The gateway's neighbours: ARP for its addresses, the caches it learns,
//! and the bounded queue of packets awaiting resolution (by ARP request or
//! neighbor solicitation: one queue and one budget scheme for both families).

use super::*;

#[derive(Clone)]
pub(super) struct Pending {
    pub(super) used: bool,
    /// The ingress port it came from ([`GENERATED`] for generated frames).
    pub(super) owner: PortId,
    pub(super) nh: IpAddr,
    pub(super) wan: bool,
    pub(super) since: u64,
    pub(super) data: Vec<u8>,
}

/// How long a packet waits for its next hop's MAC (ms); also how long an ARP
/// reply counts as the answer to our request.
pub(super) const RESOLVE_WAIT_MS: u64 = 3_000;

/// Bound on outstanding resolutions per family (addresses asked for by ARP
/// request or neighbor solicitation in the last 3 s); beyond it no new
/// address of that family is asked for.
pub const MAX_OUTSTANDING: usize = 4096;

/// Learn `ip` at `mac` on `port` into neighbour table `t` (either family),
/// counting evictions and refusals in `c`; true if it is in the table.
pub(super) fn learn_into<A: crate::arp::NeighAddr>(
    c: &mut GwCounters,
    t: &mut crate::arp::NeighTable<A>,
    ip: A,
    mac: MacAddr,
    port: PortId,
    now: u64,
    how: Heard,
) -> bool {
    let evicted = |t: &crate::arp::NeighTable<A>| {
        t.counters.evicted_unconfirmed + t.counters.evicted_aged + t.counters.evicted_confirmed
    };
    let before = evicted(t);
    let r = t.observe(ip, mac, port, now, how, true);
    c.neigh_evicted += evicted(t) - before;
    if r == Learned::Refused {
        c.neigh_refused += 1;
        return false;
    }
    true
}

impl Gateway {
    /// Learn a neighbour heard in ARP addressed to us; true if it is in the table.
    pub(super) fn learn_neigh(
        &mut self,
        wan: bool,
        ip: Ipv4Addr,
        mac: MacAddr,
        port: PortId,
        now: u64,
        how: Heard,
    ) -> bool {
        let t = if wan {
            &mut self.neigh_wan
        } else {
            &mut self.neigh_lan
        };
        learn_into(&mut self.counters, t, ip, mac, port, now, how)
    }

    /// Whether an ARP reply from `ip` answers a request of ours.
    pub(super) fn solicited(&self, ip: IpAddr, now: u64) -> bool {
        self.last_req
            .get(&ip)
            .is_some_and(|&t| now.saturating_sub(t) < RESOLVE_WAIT_MS)
    }

    /// ARP on the LAN for our address: answer requests, learn on-link
    /// senders (a reply to our request confirms). `None`: not for us.
    pub fn lan_arp(
        &mut self,
        now: u64,
        in_port: PortId,
        frame: &mut [u8],
        out: &mut Gen,
        fdb: &Fdb,
    ) -> Option<Verdict> {
        let (op, sha, spa, tpa) = {
            let a = ArpPacket::new_checked(frame.get(ETH_HLEN..)?).ok()?;
            (a.op(), a.sha(), a.spa(), a.tpa())
        };
        if tpa != self.cfg.ip || spa == tpa {
            // Not about us: keep what we know of others fresh, never rebind.
            self.neigh_lan.refresh(spa, sha, in_port, now);
            return None;
        }
        if !spa.is_unspecified() {
            let how = if op == arp_op::REPLY && self.solicited(spa.into(), now) {
                Heard::Reply
            } else {
                Heard::Hint
            };
            if self.learn_neigh(false, spa, sha, in_port, now, how) {
                self.release(now, spa.into(), false, out, fdb);
            }
        }
        if op == arp_op::REQUEST {
            let mut eth = EthernetFrame::new_checked(&mut *frame).ok()?;
            eth.set_dst(sha);
            eth.set_src(self.cfg.mac);
            ArpPacket::new_checked(eth.payload_mut())
                .ok()?
                .make_reply(self.cfg.mac);
            if spa.is_unspecified() {
                return Some(Verdict::Drop(DropReason::GwArp)); // a probe for our address: it is taken, stay quiet
            }
            self.counters.arp_replies += 1;
            return Some(Verdict::Reply);
        }
        Some(Verdict::Consumed)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn enqueue(
        &mut self,
        now: u64,
        in_port: PortId,
        nh: IpAddr,
        wan: bool,
        vnet: &[u8],
        frame: &[u8],
        out: &mut Gen,
    ) -> Verdict {
        self.request(now, nh, wan, out);
        if self.park(now, in_port, nh, wan, vnet, frame) {
            Verdict::Consumed
        } else {
            Verdict::Drop(DropReason::GwQueueFull)
        }
    }

    /// Keep a copy of a packet from `owner` until `nh` is resolved; false if
    /// the queue is full, or `owner` holds its share of it (a quarter), so
    /// that one port cannot keep the others' packets out.
    pub(super) fn park(
        &mut self,
        now: u64,
        owner: PortId,
        nh: IpAddr,
        wan: bool,
        vnet: &[u8],
        frame: &[u8],
    ) -> bool {
        let share = (self.pending.len() / 4).max(1);
        let (mut held, mut free) = (0, None);
        for (i, p) in self.pending.iter().enumerate() {
            if !p.used {
                free = free.or(Some(i));
            } else if p.owner == owner {
                held += 1;
            }
        }
        if held >= share {
            self.counters.drop_queue_share += 1;
            return false;
        }
        let Some(i) = free else {
            self.counters.drop_queue_full += 1;
            return false;
        };
        let slot = &mut self.pending[i];
        slot.used = true;
        slot.owner = owner;
        slot.nh = nh;
        slot.wan = wan;
        slot.since = now;
        slot.data.clear();
        slot.data.extend_from_slice(&vnet[..VNET_HDR_LEN]);
        slot.data.extend_from_slice(frame);
        self.counters.queued += 1;
        true
    }

    /// Send an ARP request (IPv4) or a neighbor solicitation (IPv6) for
    /// `ip` unless one went out in the last second, or [`MAX_OUTSTANDING`]
    /// other addresses are being asked for.
    pub(super) fn request(&mut self, now: u64, ip: IpAddr, wan: bool, out: &mut Gen) {
        let of_family = if ip.is_ipv6() {
            self.req6
        } else {
            self.last_req.len() - self.req6
        };
        match self.last_req.get(&ip) {
            Some(&t) if now.saturating_sub(t) < 1000 => return,
            None if of_family >= MAX_OUTSTANDING => {
                self.counters.arp_requests_limited += 1;
                return;
            }
            _ => {}
        }
        let ip = match ip {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(ip6) => {
                if self.solicit6(ip6, wan, out) && self.last_req.insert(ip, now).is_none() {
                    self.req6 += 1;
                }
                return;
            }
        };
        let (mac, my_ip, target) = match (&self.cfg.uplink, wan) {
            (Some(u), true) => (u.mac, u.ip, Target::Port(u.port)),
            _ => (self.cfg.mac, self.cfg.ip, Target::Lan),
        };
        let ok = out.push(target, |b| {
            b[..VNET_HDR_LEN].fill(0);
            let f = &mut b[VNET_HDR_LEN..];
            write_eth(f, MacAddr::BROADCAST, mac, ethertype::ARP);
            f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
            f[22..28].copy_from_slice(&mac.0);
            f[28..32].copy_from_slice(&my_ip.octets());
            f[32..38].fill(0);
            f[38..42].copy_from_slice(&ip.octets());
            f[42..60].fill(0);
            VNET_HDR_LEN + 60
        });
        if ok {
            self.last_req.insert(ip.into(), now);
            self.counters.arp_requests += 1;
        } else {
            self.counters.drop_gen_full += 1;
        }
    }

    /// Send packets that waited for `ip` (now resolved).
    pub(super) fn release(&mut self, now: u64, ip: IpAddr, wan: bool, out: &mut Gen, fdb: &Fdb) {
        let (n, et) = match ip {
            IpAddr::V4(v4) => {
                let table = if wan {
                    &self.neigh_wan
                } else {
                    &self.neigh_lan
                };
                (table.lookup(v4, now), ethertype::IPV4)
            }
            IpAddr::V6(v6) => (self.neigh6(wan, v6, now), ethertype::IPV6),
        };
        let Some(n) = n else {
            return;
        };
        let src_mac = if wan {
            self.cfg.uplink.as_ref().map_or(self.cfg.mac, |u| u.mac)
        } else {
            self.cfg.mac
        };
        let target = if wan {
            Target::Port(self.cfg.uplink.as_ref().map_or(0, |u| u.port))
        } else {
            fdb.lookup(&n.mac, now).map_or(Target::Lan, Target::Port)
        };
        for i in 0..self.pending.len() {
            let p = &self.pending[i];
            if !p.used || p.nh != ip || p.wan != wan {
                continue;
            }
            let data = &p.data;
            let ok = out.push(target, |b| {
                b[..data.len()].copy_from_slice(data);
                write_eth(&mut b[VNET_HDR_LEN..], n.mac, src_mac, et);
                data.len()
            });
            if !ok {
                self.counters.drop_gen_full += 1;
            }
            self.pending[i].used = false;
        }
    }
}
