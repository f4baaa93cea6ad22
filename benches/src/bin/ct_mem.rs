//! Bytes of heap per conntrack entry, measured with a counting allocator:
//! a NAT table is filled to its bound with distinct TCP connections and the
//! heap growth is divided by the number of entries.
//!
//! `cargo run --release -p benches --bin ct-mem -- [ENTRIES]`

use nat::{Filtering, Ipv4Net, Nat, NatConfig, PortAlloc, Side};
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

/// Heap bytes per entry with `n` connections of one internal endpoint to `n` remotes.
fn measure(n: usize, filtering: Filtering) -> (f64, usize) {
    let ext = Ipv4Addr::new(203, 0, 113, 1);
    let mut c = NatConfig::new(ext);
    c.masquerade = vec![Ipv4Net {
        addr: Ipv4Addr::new(10, 0, 0, 0),
        prefix: 8,
    }];
    c.alloc = PortAlloc::Sequential;
    c.max_entries = n;
    c.max_entries_per_host = Some(n); // one internal endpoint fills the whole table
    c.filtering = filtering;
    let route = |ip: Ipv4Addr| {
        if ip.octets()[0] == 10 {
            Side::Lan
        } else {
            Side::Wan
        }
    };
    let before = LIVE.load(Ordering::Relaxed);
    let mut nat = Nat::new(c);
    let empty = LIVE.load(Ordering::Relaxed) - before;
    // A TCP SYN template: 10.0.0.1:40000 -> a new remote :443 for every
    // connection (one internal endpoint, one mapping).
    let mut pkt = [0u8; 40];
    pkt[..12].copy_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
    pkt[12..16].copy_from_slice(&[10, 0, 0, 1]);
    pkt[20..22].copy_from_slice(&40000u16.to_be_bytes());
    pkt[22..24].copy_from_slice(&443u16.to_be_bytes());
    pkt[32] = 0x50;
    pkt[33] = 0x02;
    for i in 0..n as u32 {
        let mut p = pkt;
        let d = 0xc600_0000u32 | i;
        p[16..20].copy_from_slice(&d.to_be_bytes());
        let v = nat.process(0, Side::Lan, &mut p, false, &route);
        assert_eq!(v, nat::Verdict::Translated, "flow {i}");
    }
    assert_eq!(nat.len(), n);
    let full = LIVE.load(Ordering::Relaxed) - before;
    drop(nat);
    (full as f64 / n as f64, empty as usize)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(262_144);
    println!("entries: {n} (one internal endpoint, a distinct remote per connection)");
    println!(
        "entry slot: {} bytes",
        std::mem::size_of::<nat::conntrack::Entry>()
    );
    for f in [
        Filtering::EndpointIndependent,
        Filtering::AddressAndPortDependent,
        Filtering::AddressDependent,
    ] {
        let (per, empty) = measure(n, f);
        println!(
            "{:<28} {per:>6.1} bytes per conntrack entry (empty table {empty} bytes)",
            f.name()
        );
    }
}
