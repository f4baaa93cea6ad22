//! Adaptive polling: when the worker spins and when it sleeps in `epoll_wait`.
//!
//! An AF_PACKET socket on a veth has no NAPI id, so the kernel's busy-poll
//! options do nothing for it; a worker that sleeps pays one wake-up per
//! burst (tens of µs on a VM whose idle vCPU halts). Polling has to be
//! done in user space, as OVS's PMD threads
//! (`pmd-sleep-max`), Snabb's breathing loop and VPP's adaptive RX mode do.
//!
//! Contract: [`Pacer`] is pure logic over a monotonic clock in nanoseconds
//! passed in by the caller. After each pass that moved frames the worker
//! calls [`Pacer::traffic`]; before waiting it asks [`Pacer::spin`].
//! - Adaptive mode (the default): the pacer keeps an average of the gaps
//!   between passes that moved frames. While that average is below the cap
//!   (`adaptive_poll_us`), traffic is dense enough that the next frame
//!   probably comes before a sleep would pay off, so the worker keeps
//!   polling for up to one cap after the last frame; sparse traffic (a ping
//!   every few ms) never makes it spin, so an idle or lightly used switch
//!   sleeps in `epoll_wait` and costs no CPU.
//! - Fixed mode (`busy_poll_us` > 0): always poll that long after traffic,
//!   for those who trade a core for latency.
//!
//! A spinning worker yields the CPU on every empty pass (`sched_yield`), so
//! on a small machine the hosts' own threads (an iperf3 sender, say) still
//! run on its core; the vCPU never halts, which is what saves the wake-up.

/// How the worker waits for traffic; see the module docs.
#[derive(Debug, Clone)]
pub struct Pacer {
    fixed_ns: u64,
    cap_ns: u64,
    last_ns: Option<u64>,
    gap_ns: u64,
    spin_until: u64,
    spun_ns: u64,
    spin_started: Option<u64>,
    waits: u64,
    empty: u64,
}

impl Pacer {
    /// A pacer that polls for `busy_poll_us` after traffic when that is
    /// non-zero, and otherwise adapts with a window of up to
    /// `adaptive_poll_us` (zero: never spin, always sleep).
    pub fn new(busy_poll_us: u64, adaptive_poll_us: u64) -> Pacer {
        let cap_ns = adaptive_poll_us.saturating_mul(1000);
        Pacer {
            fixed_ns: busy_poll_us.saturating_mul(1000),
            cap_ns,
            last_ns: None,
            // Start as "sparse": the first frames do not make it spin.
            gap_ns: cap_ns.saturating_mul(2),
            spin_until: 0,
            spun_ns: 0,
            spin_started: None,
            waits: 0,
            empty: 0,
        }
    }

    /// A pass that started at `woke_ns` (when the wait returned) and ended
    /// at `now_ns` moved frames. The gap is the time the worker waited for
    /// them since the last such pass ended: a busy pass is not a gap.
    pub fn traffic(&mut self, woke_ns: u64, now_ns: u64) {
        if let Some(last) = self.last_ns {
            // One long silence must not stop a dense flow from spinning for
            // long: a gap counts at most four caps (a request and its reply
            // a few ms later then average two caps: sparse).
            let gap = woke_ns
                .saturating_sub(last)
                .min(self.cap_ns.saturating_mul(4));
            // Exponential average, weight 1/8 (as TCP's SRTT).
            self.gap_ns = self.gap_ns - self.gap_ns / 8 + gap / 8;
        }
        self.last_ns = Some(now_ns);
        let window = if self.fixed_ns > 0 {
            self.fixed_ns
        } else if self.cap_ns > 0 && self.gap_ns < self.cap_ns {
            self.cap_ns
        } else {
            0
        };
        self.spin_until = now_ns.saturating_add(window);
    }

    /// Whether the worker should poll (wait with a zero timeout) at `now_ns`
    /// rather than sleep until a port is readable.
    pub fn spin(&mut self, now_ns: u64) -> bool {
        let spin = now_ns < self.spin_until;
        match (spin, self.spin_started) {
            (true, None) => self.spin_started = Some(now_ns),
            (false, Some(s)) => {
                self.spun_ns += now_ns.saturating_sub(s);
                self.spin_started = None;
            }
            _ => {}
        }
        spin
    }

    /// The worker is about to wait until a port is readable (counted; the
    /// wait sleeps unless something is already waiting).
    pub fn waiting(&mut self) {
        self.waits += 1;
    }

    /// A port reported readable but yielded no frame (counted: a socket that
    /// stays readable without yielding anything would burn a core).
    pub fn empty_wakeup(&mut self) {
        self.empty += 1;
    }

    /// Readiness reports that yielded no frame, in all.
    pub fn empty_wakeups(&self) -> u64 {
        self.empty
    }

    /// The pacer's state at `now_ns` for `stats`: mode, cap, time spent in
    /// polling periods (including the current one; forwarding done within a
    /// period counts too), waits that could sleep, and empty wake-ups.
    pub fn to_json(&self, now_ns: u64) -> serde_json::Value {
        let mode = if self.fixed_ns > 0 {
            "fixed"
        } else if self.cap_ns > 0 {
            "adaptive"
        } else {
            "sleep"
        };
        let current = self.spin_started.map_or(0, |s| now_ns.saturating_sub(s));
        serde_json::json!({
            "polling": mode,
            "busy_poll_us": self.fixed_ns / 1000,
            "adaptive_poll_us": self.cap_ns / 1000,
            "spun_ms": (self.spun_ns + current) / 1_000_000,
            "waits": self.waits,
            "empty_wakeups": self.empty,
            "gap_us": self.gap_ns / 1000,
        })
    }

    /// Nanoseconds spent in spin periods that have ended (for `stats`).
    pub fn spun_ns(&self) -> u64 {
        self.spun_ns
    }

    /// The current average gap between passes that moved frames, in ns.
    pub fn gap_ns(&self) -> u64 {
        self.gap_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1000;

    #[test]
    fn sparse_traffic_never_spins() {
        // A ping every 5 ms: request and reply 30 µs apart.
        let mut p = Pacer::new(0, 200);
        let mut t = 1_000_000;
        for _ in 0..100 {
            p.traffic(t, t);
            assert!(!p.spin(t + US), "spun after a sparse frame");
            p.traffic(t + 30 * US, t + 30 * US);
            t += 5_000 * US;
        }
        assert_eq!(p.spun_ns(), 0);
    }

    #[test]
    fn dense_traffic_spins_and_stops_after_the_cap() {
        let mut p = Pacer::new(0, 200);
        let mut t = 1_000_000;
        // A stream: a pass with frames every 20 µs.
        for _ in 0..50 {
            p.traffic(t, t);
            t += 20 * US;
        }
        assert!(p.gap_ns() < 200 * US);
        p.traffic(t, t);
        assert!(p.spin(t + 150 * US), "dense traffic spins");
        assert!(
            !p.spin(t + 201 * US),
            "the window ends one cap after the last frame"
        );
        assert_eq!(p.spun_ns(), 51 * US);
    }

    #[test]
    fn one_silence_does_not_stop_a_dense_flow_for_long() {
        let mut p = Pacer::new(0, 200);
        let mut t = 0;
        for _ in 0..50 {
            p.traffic(t, t);
            t += 20 * US;
        }
        // A 1 s pause, then the flow resumes.
        t += 1_000_000 * US;
        p.traffic(t, t);
        let mut passes = 0;
        while !p.spin(t + 1) {
            t += 20 * US;
            p.traffic(t, t);
            passes += 1;
        }
        assert!(passes <= 8, "took {passes} passes to spin again");
    }

    #[test]
    fn a_busy_pass_is_not_a_gap() {
        // A flood: every wait returns at once, each pass works 5 ms.
        let mut p = Pacer::new(0, 200);
        let mut t = 0;
        for _ in 0..20 {
            p.traffic(t, t + 5_000 * US);
            t += 5_000 * US;
        }
        assert!(p.gap_ns() < 50 * US, "gap {}", p.gap_ns());
        assert!(p.spin(t + 1));
    }

    #[test]
    fn zero_cap_never_spins_and_fixed_mode_always_does() {
        let mut p = Pacer::new(0, 0);
        for t in 0..100 {
            p.traffic(t * US, t * US);
            assert!(!p.spin(t * US));
        }
        let mut f = Pacer::new(50, 0);
        f.traffic(0, 0);
        assert!(f.spin(49 * US));
        assert!(!f.spin(50 * US));
    }
}
