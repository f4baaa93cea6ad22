// SPDX-License-Identifier: (MIT OR Apache-2.0)
//
// vswitch's kernel fast path for established IPv4 TCP/UDP flows and ICMP
// echo (the identifier plays the port, as in the switch's NAT: a request is
// keyed (id, 0), a reply (0, id)).
//
// Two programs share one flow table that only the switch process fills:
//
//   fp_sock  socket filter on the switch's AF_PACKET socket of a port. The
//            kernel runs AF_PACKET taps (ptype_all) before tc ingress, so this
//            program is where the decision is taken: on a hit it withholds
//            the frame from the switch (returns 0) and leaves the flow's
//            action in a per-CPU slot; on anything else the switch reads the
//            frame as before and the slot says "slow path".
//   fp_tc    tc ingress (tcx) on the same device, run next on the same CPU
//            for the same skb. It obeys the slot: with a "fast" record for
//            this skb it rewrites (MACs, NAT, TTL, checksums) and redirects;
//            without one it lets the frame go (the switch has its copy).
//
// So a frame is either read by the switch or forwarded here, never both,
// and never neither: the action travels with the decision, so removing an
// entry between the two programs cannot lose the frame. fp_tc is attached
// first in the tcx chain (so nothing before it can end the chain on a
// withheld frame) and hands frames that are not its own to the next program
// (TC_ACT_UNSPEC). The only loss is a rewrite helper failing (counted).
//
// Slow path (returned to the switch): not IPv4, IP options, fragments,
// TTL <= 1 on a routed flow, TCP SYN/FIN/RST, 802.1Q tags, frames or GSO
// segments larger than the out port's MTU, a MAC pair other than the one the
// switch decided for, and every flow the switch has not installed.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;
static long (*bpf_skb_load_bytes)(const void *skb, __u32 off, void *to, __u32 len) = (void *)BPF_FUNC_skb_load_bytes;
static long (*bpf_skb_store_bytes)(void *skb, __u32 off, const void *from, __u32 len, __u64 flags) = (void *)BPF_FUNC_skb_store_bytes;
static long (*bpf_l3_csum_replace)(void *skb, __u32 off, __u64 from, __u64 to, __u64 size) = (void *)BPF_FUNC_l3_csum_replace;
static long (*bpf_l4_csum_replace)(void *skb, __u32 off, __u64 from, __u64 to, __u64 flags) = (void *)BPF_FUNC_l4_csum_replace;
static long (*bpf_redirect)(__u32 ifindex, __u64 flags) = (void *)BPF_FUNC_redirect;
static long (*bpf_redirect_peer)(__u32 ifindex, __u64 flags) = (void *)BPF_FUNC_redirect_peer;
static __u64 (*bpf_ktime_get_ns)(void) = (void *)BPF_FUNC_ktime_get_ns;
static void (*bpf_set_hash_invalid)(void *skb) = (void *)BPF_FUNC_set_hash_invalid;

#define IPOFF 14
#define L4OFF (IPOFF + 20)
#define PROTO_ICMP 1
#define PROTO_TCP 6
#define PROTO_UDP 17
#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04

// Action flags (the switch's `sys::bpf::FP_*`).
#define FP_PEER 0x01 // out port is a veth: bpf_redirect_peer into its namespace
#define FP_TTL 0x02  // routed: decrement the TTL

// Layouts shared with switch/src/sys.rs (repr(C), same field order).
struct fp_key {
    __u32 ifindex;
    __u32 saddr; // network order, as received
    __u32 daddr;
    __u16 sport;
    __u16 dport;
    __u8 proto;
    __u8 pad[3];
};

struct fp_action {
    __u32 out_ifindex;
    __u32 saddr; // as sent
    __u32 daddr;
    __u16 sport;
    __u16 dport;
    __u8 dmac[6]; // as sent (dmac then smac: one 12-byte store)
    __u8 smac[6];
    __u8 match_dmac[6]; // as received
    __u8 match_smac[6];
    __u16 mtu; // largest IP packet (or GSO segment) the out port takes
    __u16 port_in;
    __u16 port_out;
    __u8 flags;
    __u8 pad[9];
};

_Static_assert(sizeof(struct fp_key) == 20, "fp_key layout");
_Static_assert(sizeof(struct fp_action) == 56, "fp_action layout");

struct fp_value {
    struct fp_action act;
    __u64 packets;
    __u64 bytes;
    __u64 last_seen; // CLOCK_MONOTONIC ns
};

_Static_assert(sizeof(struct fp_value) == 80, "fp_value layout");

struct fp_slot {
    __u32 ifindex;
    __u32 len;
    __u32 valid;
    __u32 pad;
    struct fp_key key;
    struct fp_action act;
};

struct fp_port_counters {
    __u64 rx_packets;
    __u64 rx_bytes;
    __u64 tx_packets;
    __u64 tx_bytes;
};

#define FP_MAX_PORTS 256

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __type(key, struct fp_key);
    __type(value, struct fp_value);
} fp_flows SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct fp_slot);
} fp_slot SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, FP_MAX_PORTS);
    __type(key, __u32);
    __type(value, struct fp_port_counters);
} fp_ports SEC(".maps");

// The IPv4 header without options and the first 4 bytes of TCP/UDP, at
// their natural alignment (loaded from offset 14).
// Counters of the programs (the switch's `sys::bpf::STAT_NAMES`, same order).
enum {
    ST_HIT,       // the filter withheld a frame for the fast path
    ST_MISS,      // IPv4 TCP/UDP frame with no entry
    ST_SLOW_MAC,  // entry, but another MAC pair
    ST_SLOW_TTL,  // entry, TTL would expire
    ST_SLOW_MTU,  // entry, too big for the out port
    ST_FORWARDED, // tc rewrote and redirected
    ST_NO_SLOT,   // tc ran without the filter's record (not ours: passed on)
    ST_ERROR,     // a rewrite helper failed: the frame is dropped
    ST_MAX,
};

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, ST_MAX);
    __type(key, __u32);
    __type(value, __u64);
} fp_stats SEC(".maps");

static __always_inline void count(__u32 i)
{
    __u64 *c = bpf_map_lookup_elem(&fp_stats, &i);
    if (c)
        *c += 1;
}

struct hdr {
    __u8 vihl;
    __u8 tos;
    __u16 tot_len;
    __u16 id;
    __u16 frag;
    __u8 ttl;
    __u8 proto;
    __u16 check;
    __u32 saddr;
    __u32 daddr;
    __u16 sport;
    __u16 dport;
};

static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
    return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] && a[5] == b[5];
}

SEC("socket")
int fp_sock(struct __sk_buff *skb)
{
    __u32 zero = 0;
    struct fp_slot *slot = bpf_map_lookup_elem(&fp_slot, &zero);
    if (!slot)
        return -1;
    slot->valid = 0;
    if (skb->pkt_type == 4 /* PACKET_OUTGOING */ || skb->vlan_present)
        return -1;
    if (skb->protocol != __builtin_bswap16(ETH_P_IP))
        return -1;
    __u8 eth[14];
    struct hdr h;
    __u8 tcp[2]; // data offset, flags
    __u32 l4len;
    if (bpf_skb_load_bytes(skb, 0, eth, 14) < 0 || bpf_skb_load_bytes(skb, IPOFF, &h, 24) < 0)
        return -1;
    if (eth[12] != 0x08 || eth[13] != 0x00 || h.vihl != 0x45)
        return -1;
    if (h.frag & __builtin_bswap16(0x3fff)) // MF or an offset: a fragment
        return -1;
    if (h.proto == PROTO_TCP) {
        if (bpf_skb_load_bytes(skb, L4OFF + 12, tcp, 2) < 0)
            return -1;
        if (tcp[1] & (TCP_SYN | TCP_FIN | TCP_RST))
            return -1;
        l4len = (tcp[0] >> 4) * 4;
    } else if (h.proto == PROTO_UDP) {
        l4len = 8;
    } else if (h.proto == PROTO_ICMP) {
        __u16 id;
        if (bpf_skb_load_bytes(skb, L4OFF + 4, &id, 2) < 0)
            return -1;
        // h.sport holds type and code (network order): echo request 8/0, reply 0/0.
        if (h.sport == __builtin_bswap16(0x0800)) {
            h.sport = id;
            h.dport = 0;
        } else if (h.sport == 0) {
            h.sport = 0;
            h.dport = id;
        } else {
            return -1;
        }
        l4len = 8;
    } else {
        return -1;
    }
    struct fp_key key = {
        .ifindex = skb->ifindex,
        .saddr = h.saddr,
        .daddr = h.daddr,
        .sport = h.sport,
        .dport = h.dport,
        .proto = h.proto,
    };
    struct fp_value *v = bpf_map_lookup_elem(&fp_flows, &key);
    if (!v) {
        count(ST_MISS);
        return -1;
    }
    if (!mac_eq(eth, v->act.match_dmac) || !mac_eq(eth + 6, v->act.match_smac)) {
        count(ST_SLOW_MAC);
        return -1;
    }
    if ((v->act.flags & FP_TTL) && h.ttl <= 1) {
        count(ST_SLOW_TTL);
        return -1;
    }
    if (skb->gso_size) {
        if (skb->gso_size + 20 + l4len > v->act.mtu) {
            count(ST_SLOW_MTU);
            return -1;
        }
    } else if (skb->len - 14 > v->act.mtu) {
        count(ST_SLOW_MTU);
        return -1;
    }
    count(ST_HIT);
    __builtin_memcpy(&slot->key, &key, sizeof(key));
    __builtin_memcpy(&slot->act, &v->act, sizeof(v->act));
    slot->ifindex = skb->ifindex;
    slot->len = skb->len;
    slot->valid = 1;
    __sync_fetch_and_add(&v->packets, 1);
    __sync_fetch_and_add(&v->bytes, skb->len);
    v->last_seen = bpf_ktime_get_ns();
    __u32 pin = v->act.port_in, pout = v->act.port_out;
    struct fp_port_counters *c = bpf_map_lookup_elem(&fp_ports, &pin);
    if (c) {
        c->rx_packets++;
        c->rx_bytes += skb->len;
    }
    c = bpf_map_lookup_elem(&fp_ports, &pout);
    if (c) {
        c->tx_packets++;
        c->tx_bytes += skb->len;
    }
    return 0;
}

// Rewrite a 16-bit port (or ICMP identifier) at `off`, updating the L4
// checksum at `csum` (no pseudo-header part).
static __always_inline int set_port(struct __sk_buff *skb, __u32 off, __u16 old, __u16 new, __u32 csum,
                                    __u64 l4f)
{
    if (bpf_l4_csum_replace(skb, csum, old, new, l4f | 2) < 0)
        return -1;
    return bpf_skb_store_bytes(skb, off, &new, 2, 0);
}

// Rewrite an IPv4 address at `off`: the IP header checksum, and the L4
// checksum's pseudo-header part at `csum` (0: none, as for ICMP).
static __always_inline int set_addr(struct __sk_buff *skb, __u32 off, __u32 old, __u32 new, __u32 csum,
                                    __u64 l4f)
{
    if (csum && bpf_l4_csum_replace(skb, csum, old, new, l4f | BPF_F_PSEUDO_HDR | 4) < 0)
        return -1;
    if (bpf_l3_csum_replace(skb, IPOFF + 10, old, new, 4) < 0)
        return -1;
    return bpf_skb_store_bytes(skb, off, &new, 4, 0);
}

SEC("classifier")
int fp_tc(struct __sk_buff *skb)
{
    __u32 zero = 0;
    struct fp_slot *slot = bpf_map_lookup_elem(&fp_slot, &zero);
    if (!slot || !slot->valid || slot->ifindex != skb->ifindex || slot->len != skb->len) {
        if (slot)
            slot->valid = 0;
        count(ST_NO_SLOT);
        return TC_ACT_UNSPEC; // tcx: the next program, or the stack
    }
    slot->valid = 0;
    struct fp_key k;
    struct fp_action a;
    __builtin_memcpy(&k, &slot->key, sizeof(k));
    __builtin_memcpy(&a, &slot->act, sizeof(a));
    __u32 csum = k.proto == PROTO_TCP ? L4OFF + 16 : k.proto == PROTO_UDP ? L4OFF + 6 : L4OFF + 2;
    __u64 l4f = k.proto == PROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
    int nat = 0;
    if (k.proto == PROTO_ICMP) {
        // No pseudo-header in the ICMP checksum: only the identifier counts.
        __u16 old = k.sport | k.dport, new = a.sport | a.dport;
        if (old != new) {
            if (set_port(skb, L4OFF + 4, old, new, csum, 0) < 0)
                goto fail;
            nat = 1;
        }
        csum = 0; // addresses: the IP header checksum only
    } else {
        if (a.sport != k.sport) {
            if (set_port(skb, L4OFF, k.sport, a.sport, csum, l4f) < 0)
                goto fail;
            nat = 1;
        }
        if (a.dport != k.dport) {
            if (set_port(skb, L4OFF + 2, k.dport, a.dport, csum, l4f) < 0)
                goto fail;
            nat = 1;
        }
    }
    if (a.saddr != k.saddr) {
        if (set_addr(skb, IPOFF + 12, k.saddr, a.saddr, csum, l4f) < 0)
            goto fail;
        nat = 1;
    }
    if (a.daddr != k.daddr) {
        if (set_addr(skb, IPOFF + 16, k.daddr, a.daddr, csum, l4f) < 0)
            goto fail;
        nat = 1;
    }
    if (a.flags & FP_TTL) {
        __u16 old, new;
        if (bpf_skb_load_bytes(skb, IPOFF + 8, &old, 2) < 0)
            goto fail;
        // TTL is the first byte of the (network-order) word: minus 0x0100 in big-endian.
        new = __builtin_bswap16(__builtin_bswap16(old) - 0x0100);
        if (bpf_l3_csum_replace(skb, IPOFF + 10, old, new, 2) < 0)
            goto fail;
        if (bpf_skb_store_bytes(skb, IPOFF + 8, &new, 2, 0) < 0)
            goto fail;
    }
    if (bpf_skb_store_bytes(skb, 0, a.dmac, 12, 0) < 0)
        goto fail;
    if (nat)
        bpf_set_hash_invalid(skb);
    count(ST_FORWARDED);
    if (a.flags & FP_PEER)
        return bpf_redirect_peer(a.out_ifindex, 0);
    return bpf_redirect(a.out_ifindex, 0);
fail:
    // Half rewritten (a helper could not make the skb writable): never
    // forward it; the switch did not get it either, so it is a counted drop
    // (rewrite_failed). fp_sock already counted it as forwarded in the
    // flow's and the ports' counters.
    count(ST_ERROR);
    return TC_ACT_SHOT;
}

char _license[] SEC("license") = "Dual MIT/GPL";
