//! The reproducers in `fuzz/repro/` (`GATE-TARGET.bin`, found by the driver
//! with `--strict=GATE`): while a `KNOWN_ISSUE_*` gate is `true` its input
//! must still fail (the harness reaches the bug); once the fix is merged and
//! the gate flipped to `false`, it must pass (a regression test).
//!
//! The inputs are decoded by the targets' generators: a change to a
//! generator's decoding can make them miss; regenerate them then.

#[test]
fn known_issue_reproducers() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("repro");
    let mut seen = 0;
    let mut wrong = Vec::new();
    for e in std::fs::read_dir(&dir).expect("fuzz/repro") {
        let path = e.expect("entry").path();
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 name")
            .to_string();
        let (gate, target) = name.rsplit_once('-').expect("GATE-TARGET.bin");
        let present = fuzz::known::ALL
            .iter()
            .find(|(n, _)| *n == gate)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("{name}: no gate {gate}"));
        let t = fuzz::target(target).unwrap_or_else(|| panic!("{name}: no target {target}"));
        let data = std::fs::read(&path).expect("read");
        fuzz::known::set_strict_only(&[gate]);
        let r = fuzz::run_one(t, &data);
        fuzz::known::set_strict_only(&[]);
        seen += 1;
        match (present, r) {
            (true, Ok(())) => wrong.push(format!(
                "{name}: passes, but {gate} is true: flip it to false if the fix is merged"
            )),
            (false, Err(f)) => wrong.push(format!("{name}: {gate} is false but: {}", f.message)),
            _ => {}
        }
    }
    assert!(seen >= 8, "only {seen} reproducers in {}", dir.display());
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
