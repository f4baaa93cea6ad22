//! Adaptive polling (issue 10) with real programs in real namespaces: a TCP
//! stream makes the worker poll instead of sleeping, pings a few ms apart do
//! not, and a switch left idle uses at most 1 % of a core.

use e2e::*;
use serde_json::Value;
use std::time::{Duration, Instant};

fn worker(sw: &SwitchProc) -> Value {
    sw.cli_json("stats")["worker"].clone()
}

#[test]
fn adaptive_polling_spins_for_streams_not_for_sparse_pings_and_idles_at_no_cpu() {
    if !require_root("adaptive_polling_spins_for_streams_not_for_sparse_pings_and_idles_at_no_cpu")
    {
        return;
    }
    need_program("iperf3");
    let id = uniq();
    // The default polling configuration (no polling keys in [switch]).
    // The worker's polling is what is measured: the stream must go
    // through it, not through the kernel fast path.
    let (toml, m, _) = star(&id, &[Kind::Veth, Kind::Veth], "fastpath = \"off\"\n");
    let topo = TopoGuard::new(&toml);
    let sw = SwitchProc::start(&topo);
    let (red, blue) = (&m[0], &m[1]);
    assert_eq!(ping_loss(&red.ns, &blue.ip, 2), 0.0);
    let w = worker(&sw);
    assert_eq!(w["polling"], "adaptive", "{w}");

    // Pings 20 ms apart: sparse traffic, the worker sleeps between them.
    let before = worker(&sw);
    assert_eq!(ping_loss_with(&red.ns, &["-i", "0.02"], &blue.ip, 50), 0.0);
    let after = worker(&sw);
    let spun = after["spun_ms"].as_u64().unwrap() - before["spun_ms"].as_u64().unwrap();
    eprintln!("sparse pings: spun {spun} ms, worker {after}");
    assert!(spun <= 2, "the worker spun {spun} ms for pings 20 ms apart");

    // A TCP stream: dense traffic, the worker polls between batches.
    let _srv = iperf3_server(&blue.ns, &blue.ip, 5301);
    let before = worker(&sw);
    let o = ns_exec(
        &red.ns,
        &["iperf3", "-c", &blue.ip, "-p", "5301", "-t", "2", "-J"],
        Duration::from_secs(30),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).expect("iperf3 JSON");
    let gbps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9;
    std::thread::sleep(Duration::from_millis(50));
    let after = worker(&sw);
    let spun = after["spun_ms"].as_u64().unwrap() - before["spun_ms"].as_u64().unwrap();
    eprintln!("2 s stream at {gbps:.2} Gbit/s: spun {spun} ms, worker {after}");
    assert!(gbps > 0.1, "stream {gbps} Gbit/s");
    assert!(
        spun >= 100,
        "the worker spun only {spun} ms during a 2 s stream"
    );
    // And it really waited less: waits that could sleep per GB moved.
    // Measured here: 133/GB adaptive, 2,165/GB with adaptive_poll_us = 0.
    let waits = after["waits"].as_u64().unwrap() - before["waits"].as_u64().unwrap();
    let per_gb = waits as f64 / (gbps * 2.0 / 8.0);
    eprintln!("{waits} waits during the stream: {per_gb:.0} per GB");
    assert!(per_gb < 700.0, "{per_gb:.0} waits per GB while polling");

    // Then idle: at most 1 % of a core over 10 s (the spinning has ended).
    std::thread::sleep(Duration::from_millis(500));
    let (t0, c0) = (Instant::now(), cpu_ns(sw.pid()));
    std::thread::sleep(Duration::from_secs(10));
    let used = (cpu_ns(sw.pid()) - c0) as f64 / 1e9;
    let pct = 100.0 * used / t0.elapsed().as_secs_f64();
    eprintln!("idle: {pct:.2} % of a core over 10 s");
    assert!(pct <= 1.0, "idle switch used {pct:.2} % of a core");
}
