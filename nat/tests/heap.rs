//! The NAT's heap stays bounded by its table size, whatever the new-flow rate
//! (issue 8: with `max_entries = 1024` and 250k new flows/s, the old table
//! reached 420 MiB after 420 simulated seconds, still growing).
//!
//! Sans-I/O, simulated time: `max_entries = 1024`, 16 LAN hosts opening TCP
//! connections (SYN, a new source port each: a new mapping each) and UDP
//! flows, a tenth of them answered (assured), to 4,096 remotes.
//! - 0-300 s: 250,000 new flows per simulated second (250 per 1 ms step),
//!   75 M packets, `expire()` once per simulated second as the worker does;
//! - 300-3600 s: 250 new flows per simulated second, in 1 s steps (the full
//!   rate for the whole hour would be 900 M packets, too slow for a test);
//! - then an idle gap of more than one timer-wheel lap and one sweep, which
//!   must empty the table.
//!
//! The heap is measured with a counting global allocator after every
//! simulated second: it must be flat after warm-up (the first 10 s).
//! `NAT_HEAP_FAST_SECS` shortens the 250k/s window (default 300).

use nat::wire::proto;
use nat::{Ipv4Net, Nat, NatConfig, PortAlloc, Side, Verdict};
use std::alloc::{GlobalAlloc, Layout, System};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicIsize, Ordering};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: delegates every call to the system allocator unchanged; it only
// counts the sizes it is asked for.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const EXT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

fn route(ip: Ipv4Addr) -> Side {
    if ip == EXT {
        Side::Local
    } else if ip.octets()[..3] == [192, 168, 15] {
        Side::Lan
    } else {
        Side::Wan
    }
}

/// A TCP SYN or UDP datagram, checksums left as they are (the NAT updates
/// them incrementally and does not verify them).
fn packet(tcp: bool, src: Ipv4Addr, sp: u16, dst: Ipv4Addr, dp: u16) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[..12].copy_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..22].copy_from_slice(&sp.to_be_bytes());
    p[22..24].copy_from_slice(&dp.to_be_bytes());
    if tcp {
        p[32] = 0x50;
        p[33] = 0x02; // SYN
    } else {
        p[9] = proto::UDP;
        p[24..26].copy_from_slice(&20u16.to_be_bytes());
    }
    p
}

struct Gen {
    n: u64,
}

impl Gen {
    /// One new flow; every tenth UDP flow is answered.
    fn flow(&mut self, nat: &mut Nat, now: u64) {
        self.n += 1;
        let x = self.n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let host = Ipv4Addr::new(192, 168, 15, 10 + (x >> 60) as u8);
        let sport = 1024 + (self.n % 64_000) as u16;
        let remote = Ipv4Addr::from(0xc633_6400u32 | ((x >> 20) as u32 & 0xfff));
        let tcp = !self.n.is_multiple_of(4);
        let mut p = packet(tcp, host, sport, remote, 443);
        let v = nat.process(now, Side::Lan, &mut p, false, &route);
        if !tcp && self.n.is_multiple_of(10) && v == Verdict::Translated {
            let ext = u16::from_be_bytes([p[20], p[21]]);
            let mut r = packet(false, remote, 443, EXT, ext);
            nat.process(now, Side::Wan, &mut r, false, &route);
        }
    }
}

#[test]
fn heap_is_bounded_by_the_table_not_the_flow_rate() {
    let fast_secs: u64 = std::env::var("NAT_HEAP_FAST_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let before = LIVE.load(Ordering::Relaxed);
    let mut c = NatConfig::new(EXT);
    c.masquerade = vec![Ipv4Net {
        addr: Ipv4Addr::new(192, 168, 15, 0),
        prefix: 24,
    }];
    c.max_entries = 1024;
    c.alloc = PortAlloc::Random(7);
    // The table's memory is under test, not the per-host rate limit.
    c.new_flows_per_host = 0;
    let mut nat = Nat::new(c);
    let empty = LIVE.load(Ordering::Relaxed) - before;
    let mut g = Gen { n: 0 };
    let (mut warm, mut peak) = (0isize, 0isize);
    let mut now = 0u64;
    let started = std::time::Instant::now();
    for sec in 0..3600u64 {
        if sec < fast_secs {
            for _ms in 0..1000 {
                for _ in 0..250 {
                    g.flow(&mut nat, now);
                }
                now += 1;
            }
        } else {
            for _ in 0..250 {
                g.flow(&mut nat, now);
            }
            now += 1000;
        }
        nat.expire(now);
        let heap = LIVE.load(Ordering::Relaxed) - before;
        assert!(nat.len() <= 1024);
        if sec == 10 {
            warm = heap;
        }
        if sec > 10 {
            peak = peak.max(heap);
        }
        if sec % 60 == 0 || sec + 1 == fast_secs {
            eprintln!(
                "t={sec:>4} s flows={:>10} entries={:>4} mappings={:>4} heap={heap} B",
                g.n,
                nat.len(),
                nat.mappings()
            );
        }
    }
    // An idle gap of more than one wheel lap, then one sweep: all gone.
    now += 5_000_000;
    nat.expire(now);
    let after = LIVE.load(Ordering::Relaxed) - before;
    eprintln!(
        "empty {empty} B, after warm-up {warm} B, peak after warm-up {peak} B, after the idle sweep {after} B; \
         {} flows, {fast_secs} s at 250k/s, wall {:?}",
        g.n,
        started.elapsed()
    );
    assert_eq!((nat.len(), nat.mappings(), nat.hosts().count()), (0, 0, 0));
    assert!(
        peak <= warm + 64 * 1024,
        "heap grew after warm-up: {warm} -> {peak} B"
    );
    assert!(peak < 4 << 20, "heap of {peak} B for 1,024 entries");
}
