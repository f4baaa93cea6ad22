//! The end-to-end benchmark harness runs, reports both setups and leaves nothing behind.

use e2e::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn e2e_benchmark_runs_and_cleans_up() {
    if !require_root("e2e_benchmark_runs_and_cleans_up") {
        return;
    }
    let out = std::env::temp_dir().join(format!("vswitch-bench-smoke-{}", std::process::id()));
    let before = ip_netns_list();
    let o = run_timeout(
        Command::new(bin("e2e"))
            .args(["--rounds", "1", "--secs", "1", "--out"])
            .arg(&out),
        Duration::from_secs(300),
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "e2e failed: {stderr}");
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("median of the per-round ratios")
            && table.contains("TCP red→blue, 1 stream")
            && table.contains("**vswitch**: vswitch, default configuration"),
        "{table}"
    );
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("e2e.json")).expect("e2e.json"))
            .expect("JSON");
    let rows = v["rows"].as_array().expect("rows");
    let keys: Vec<&str> = rows.iter().filter_map(|r| r["key"].as_str()).collect();
    for k in ["tcp1", "rtt50", "cpusw", "idle"] {
        assert!(keys.contains(&k), "no row {k}: {keys:?}");
    }
    // Every measured row has a positive figure for both setups (the kernel
    // has no forwarding process, and an idle process may use 0).
    for r in rows
        .iter()
        .filter(|r| r["key"] != "cpusw" && r["key"] != "idle")
    {
        for side in ["kernel", "vswitch"] {
            let x = r["median"][side].as_f64().unwrap_or(f64::NAN);
            assert!(
                x.is_finite() && x > 0.0,
                "{} {side} = {x}: {stderr}",
                r["name"]
            );
        }
    }
    let idle = rows.iter().find(|r| r["key"] == "idle").unwrap();
    let x = idle["median"]["vswitch"].as_f64().unwrap_or(f64::NAN);
    assert!(x.is_finite() && x <= 1.0, "idle vswitch {x} % of a core");
    assert!(
        std::fs::read_to_string(out.join("e2e.svg"))
            .unwrap()
            .starts_with("<svg")
    );
    let after = ip_netns_list();
    let leaked: Vec<&String> = after
        .iter()
        .filter(|n| !before.contains(n) && n.starts_with("vb"))
        .collect();
    assert!(leaked.is_empty(), "namespaces left behind: {leaked:?}");
    let _ = std::fs::remove_dir_all(&out);
}

/// `e2e --help` prints usage and exits 0 without building anything; a bad
/// number is a usage error (exit 2), not a silent fall back to the default.
/// Needs no root: the options are parsed before anything else. (The harness
/// announces each step on stderr and writes its results to `--out`: neither
/// may happen.)
#[test]
fn e2e_help_and_bad_values_are_usage() {
    let out_dir = std::env::temp_dir().join(format!("vswitch-bench-help-{}", uniq()));
    let o = run_timeout(
        Command::new(bin("e2e"))
            .arg("--help")
            .arg("--out")
            .arg(&out_dir),
        Duration::from_secs(10),
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("Usage: e2e") && out.contains("--rounds"),
        "{out}"
    );
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for bad in [
        &["--rounds", "abc"][..],
        &["--rounds", "0"],
        &["--secs", "-1"],
        &["--busy-poll-us", "x"],
        &["--no-such-option"],
    ] {
        let o = run_timeout(
            Command::new(bin("e2e"))
                .args(bad)
                .arg("--out")
                .arg(&out_dir),
            Duration::from_secs(10),
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {err}");
        assert!(
            err.starts_with("error:") && !err.contains("e2e: building"),
            "{bad:?}: {err}"
        );
    }
    assert!(!out_dir.exists(), "nothing is written");
}
