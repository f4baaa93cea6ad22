//! End to end: observability of a running switch — levelled, timestamped
//! logs, truthful captures and mirrors, rates, and counters that agree
//! between text, JSON and Prometheus.

use e2e::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// True if `line` is `TIMESTAMP LEVEL TARGET: MESSAGE` with an RFC 3339 UTC timestamp.
fn is_log_line(line: &str) -> Option<&str> {
    let mut it = line.split_whitespace();
    let ts = it.next()?;
    let level = it.next()?;
    let ok_ts = ts.len() >= 20
        && ts.ends_with('Z')
        && ts.as_bytes()[4] == b'-'
        && ts.as_bytes()[10] == b'T'
        && ts[..4].parse::<u32>().is_ok();
    let ok_level = ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level);
    (ok_ts && ok_level).then_some(level)
}

/// Wait (≤ `limit`) until the switch's log has a line containing all of `needles`.
fn wait_log(sw: &SwitchProc, needles: &[&str], limit: Duration) -> Option<String> {
    let deadline = Instant::now() + limit;
    loop {
        let log = sw.log_text();
        if let Some(l) = log.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return Some(l.to_string());
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn log_level_debug_gives_timestamped_levelled_lines_and_port_loss() {
    if !require_root("log_level_debug_gives_timestamped_levelled_lines_and_port_loss") {
        return;
    }
    let n = nat_topo("", "");
    let sw = SwitchProc::start_with(&n.topo, &["--log-level", "debug"]);
    let _ = sw.cli_json("stats");
    let dbg = wait_log(
        &sw,
        &["DEBUG", "control request: stats"],
        Duration::from_secs(5),
    )
    .unwrap_or_else(|| panic!("no debug line: {}", sw.log_text()));
    assert_eq!(is_log_line(&dbg), Some("DEBUG"), "{dbg}");
    let start = wait_log(&sw, &["forwarding between"], Duration::from_secs(1))
        .unwrap_or_else(|| panic!("no start-up line: {}", sw.log_text()));
    assert_eq!(is_log_line(&start), Some("INFO"), "{start}");
    // Every line the switch printed is a log line.
    for l in sw.log_text().lines() {
        assert!(is_log_line(l).is_some(), "not a log line: {l}");
    }
    // A port that goes away gets a warning line.
    let o = ns_exec(
        &n.blue.ns,
        &["ip", "link", "del", &n.blue.ifname],
        Duration::from_secs(10),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let deadline = Instant::now() + Duration::from_secs(10);
    let gone = loop {
        let _ = ping_loss(&n.red.ns, &n.blue.ip, 1);
        if let Some(l) = wait_log(
            &sw,
            &["WARN", &format!("port {} ", n.blue.port), "gone"],
            Duration::from_millis(200),
        ) {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "no line for the lost port: {}",
            sw.log_text()
        );
    };
    assert_eq!(is_log_line(&gone), Some("WARN"), "{gone}");
}

#[test]
fn bad_log_level_is_a_usage_error() {
    // Refused before anything else (no root needed, nothing created).
    let o = run_timeout(
        Command::new(bin("vswitch")).args(["run", "--log-level", "loud"]),
        Duration::from_secs(10),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--log-level") && err.contains("loud"), "{err}");
}
