//! CI: every target for a short, bounded run with a fixed seed (dev profile:
//! overflow checks on). A failure prints the input as hex for `--replay`.

use std::time::Duration;

fn short_run(name: &str, secs: u64) {
    let t = fuzz::target(name).expect("target exists");
    let r = fuzz::fuzz(
        t,
        &fuzz::seeds(name),
        fuzz::Budget {
            time: Duration::from_secs(secs),
            execs: u64::MAX,
            seed: 0x5eed,
        },
    );
    eprintln!("{name}: {} execs, {:.0} exec/s", r.execs, r.rate());
    assert!(r.execs > 0, "{name}: nothing ran");
    if let Some(f) = r.failure {
        let hex: String = f.input.iter().map(|b| format!("{b:02x}")).collect();
        panic!(
            "{name}: {}\ninput (hex, write it to a file for --replay): {hex}",
            f.message
        );
    }
}

#[test]
fn fuzz_wire_short() {
    short_run("wire", 3);
}

#[test]
fn fuzz_nat_short() {
    short_run("nat", 5);
}

#[test]
fn fuzz_pipeline_short() {
    short_run("pipeline", 5);
}

#[test]
fn fuzz_topology_short() {
    short_run("topology", 3);
}

#[test]
fn fuzz_control_short() {
    short_run("control", 3);
}
