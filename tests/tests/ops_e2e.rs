//! End to end: operating a long-running switch (issue 9): one owner per
//! topology, finding the running switches, adoption after a crash, `check`
//! without root, and the packaging outputs (completions, man pages).

use e2e::*;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Duration;

/// The tests that start switches run one at a time: `vswitch list` and the
/// default target (the one running switch) look at every switch on the machine.
static SWITCHES: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SWITCHES.lock().unwrap_or_else(|e| e.into_inner())
}

fn vswitch(args: &[&str]) -> Output {
    run_timeout(
        Command::new(bin("vswitch")).args(args),
        Duration::from_secs(20),
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Ping `dst` from `ns` 5 times: the output, asserted free of losses and duplicates.
fn ping_clean(ns: &str, dst: &str) -> String {
    let o = ns_exec(
        ns,
        &["ping", "-c", "5", "-i", "0.2", "-W", "2", dst],
        Duration::from_secs(20),
    );
    let out = text(&o.stdout);
    assert!(out.contains(" 0% packet loss"), "{out}");
    assert!(!out.contains("DUP!"), "duplicated replies: {out}");
    out
}

#[test]
fn second_run_is_refused_and_down_waits_for_the_switch() {
    if !require_root("second_run_is_refused_and_down_waits_for_the_switch") {
        return;
    }
    let _serial = serial();
    let id = uniq();
    let (toml, m, sw_ns) = star(&id, &[Kind::Veth, Kind::Veth], "");
    let topo = TopoGuard::new(&toml);
    let mut sw = SwitchProc::start(&topo);
    let pid = sw.pid();
    ping_clean(&m[0].ns, &m[1].ip);

    // Same topology, another socket: refused before anything is touched.
    let other = std::env::temp_dir().join(format!("vswitch-e2e-other-{id}.sock"));
    let o = run_timeout(
        Command::new(bin("vswitch"))
            .arg("run")
            .arg(&topo.path)
            .arg("--socket")
            .arg(&other),
        Duration::from_secs(20),
    );
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("PID {pid}")), "{err}");
    assert!(!other.exists(), "the refused run bound {}", other.display());
    // The first one still forwards, once per packet.
    ping_clean(&m[0].ns, &m[1].ip);

    // `netns-setup down` is refused while it runs, naming it.
    let o = run_timeout(
        Command::new(bin("netns-setup")).arg("down").arg(&topo.path),
        Duration::from_secs(20),
    );
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("PID {pid}")) && err.contains("--force"),
        "{err}"
    );
    assert!(ip_netns_list().contains(&m[0].ns));
    ping_clean(&m[0].ns, &m[1].ip);

    // `vswitch list` shows it, with its (non-default) socket and file.
    let o = vswitch(&["list", "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).expect("list --json");
    let me = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["topology"] == topo.topo.name.as_str())
        .unwrap_or_else(|| panic!("{} not listed: {list}", topo.topo.name));
    assert_eq!(me["pid"], pid);
    assert_eq!(me["socket"], sw.socket.to_str().unwrap());
    assert_eq!(me["file"], topo.path.to_str().unwrap());
    assert!(me["uptime_ms"].as_u64().unwrap() > 0, "{me}");
    let o = vswitch(&["list"]);
    let out = text(&o.stdout);
    assert!(
        out.contains(&topo.topo.name) && out.contains(&pid.to_string()),
        "{out}"
    );

    // -t takes the file or the name, and finds the socket through the lock.
    for t in [topo.path.to_str().unwrap(), &topo.topo.name] {
        let o = vswitch(&["stats", "-t", t, "--json"]);
        assert!(o.status.success(), "stats -t {t}: {}", text(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["switch"], format!("vsw{id}"));
    }
    // No -t: the one running switch, or a clear error listing them all.
    let running = netns_setup::lock::running().unwrap();
    let o = vswitch(&["stats", "--json"]);
    if running.len() == 1 {
        assert!(o.status.success(), "{}", text(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["switch"], format!("vsw{id}"));
    } else {
        eprintln!("other switches run on this machine: the single-switch default is not checked");
    }
    // A second topology running: no -t names both, exit 1.
    let id2 = uniq();
    let (toml2, _, _) = star(&id2, &[Kind::Veth, Kind::Veth], "");
    let topo2 = TopoGuard::new(&toml2);
    let sw2 = SwitchProc::start(&topo2);
    let o = vswitch(&["stats"]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    for (name, p) in [(&topo.topo.name, pid), (&topo2.topo.name, sw2.pid())] {
        assert!(
            err.contains(name.as_str()) && err.contains(&format!("PID {p}")),
            "{err}"
        );
    }
    drop(sw2);
    drop(topo2);

    // --force removes it from under the switch.
    let o = run_timeout(
        Command::new(bin("netns-setup"))
            .args(["down", "--force"])
            .arg(&topo.path),
        Duration::from_secs(30),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let left = ip_netns_list();
    for ns in [&m[0].ns, &m[1].ns, &sw_ns] {
        assert!(!left.contains(ns), "{ns} left after down --force");
    }
    assert!(sw.stop(), "{}", sw.log_text());
    // Its lock went with it.
    assert_eq!(netns_setup::lock::holder(&topo.topo.name).unwrap(), None);
}

#[test]
fn kill9_then_a_new_run_adopts_and_removes_on_exit() {
    if !require_root("kill9_then_a_new_run_adopts_and_removes_on_exit") {
        return;
    }
    let _serial = serial();
    let id = uniq();
    let (toml, m, sw_ns) = star(&id, &[Kind::Veth, Kind::Tap], "");
    let topo = TopoGuard::new(&toml);
    let name = topo.topo.name.clone();
    let all = [&m[0].ns, &m[1].ns, &sw_ns];

    let mut sw = SwitchProc::start(&topo);
    sw.kill9();
    drop(sw);
    // The crashed switch's lock is free (the kernel released it) and not listed.
    assert_eq!(netns_setup::lock::holder(&name).unwrap(), None);

    // A run with --keep adopts and leaves it up.
    let mut sw = SwitchProc::start_with(&topo, &["--keep"]);
    ping_clean(&m[0].ns, &m[1].ip);
    assert!(sw.stop(), "{}", sw.log_text());
    let log = sw.log_text();
    assert!(log.contains("adopted"), "{log}");
    let left = ip_netns_list();
    for ns in all {
        assert!(left.contains(ns), "--keep removed {ns}: {log}");
    }
    drop(sw);

    // A run without it adopts, and on SIGTERM removes everything and says so.
    let mut sw = SwitchProc::start(&topo);
    ping_clean(&m[0].ns, &m[1].ip);
    assert!(sw.stop(), "{}", sw.log_text());
    let log = sw.log_text();
    assert!(log.contains("adopted") && log.contains("removed"), "{log}");
    let left = ip_netns_list();
    for ns in all {
        assert!(
            !left.contains(ns),
            "{ns} left after the adopting run ended: {log}"
        );
        assert!(
            log.contains(ns.as_str()),
            "removal of {ns} not reported: {log}"
        );
    }
}

#[test]
fn check_validates_as_nobody_and_changes_nothing() {
    if !require_root("check_validates_as_nobody_and_changes_nothing") {
        return; // root is needed to drop to another user
    }
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = std::env::temp_dir().join(format!("vswitch-e2e-check-{}", uniq()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(dir.clone());
    let copy = |src: &std::path::Path, name: String| {
        let dst = dir.join(name);
        std::fs::copy(src, &dst).unwrap();
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o644)).unwrap();
        dst
    };
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut cases: Vec<(std::path::PathBuf, Option<String>)> = Vec::new();
    for e in std::fs::read_dir(&examples).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            cases.push((copy(&p, n), None));
        }
    }
    assert!(cases.len() >= 2, "examples missing");
    for (p, key) in invalid_fixtures() {
        let n = format!("bad-{}", p.file_name().unwrap().to_string_lossy());
        cases.push((copy(&p, n), Some(key)));
    }
    let before = ip_netns_list();
    let nobody = |args: &[&std::ffi::OsStr]| {
        let mut c = Command::new(bin("vswitch"));
        c.arg("check").args(args).uid(65534).gid(65534);
        run_timeout(&mut c, Duration::from_secs(20))
    };
    for (p, key) in &cases {
        let o = nobody(&[p.as_os_str()]);
        let (out, err) = (text(&o.stdout), text(&o.stderr));
        match key {
            None => {
                assert_eq!(o.status.code(), Some(0), "{}: {err}", p.display());
                assert!(out.contains("ok"), "{out}");
            }
            Some(k) => {
                assert_eq!(o.status.code(), Some(2), "{}: {out}{err}", p.display());
                assert!(
                    err.contains(k.as_str()),
                    "{}: {err:?} does not name {k}",
                    p.display()
                );
            }
        }
    }
    // Several at once: 2 if any is invalid, and each valid one is still reported.
    let all: Vec<&std::ffi::OsStr> = cases.iter().map(|(p, _)| p.as_os_str()).collect();
    let o = nobody(&all);
    assert_eq!(o.status.code(), Some(2));
    let valid = cases.iter().filter(|(_, k)| k.is_none()).count();
    assert_eq!(
        text(&o.stdout).lines().count(),
        valid,
        "{}",
        text(&o.stdout)
    );
    // Nothing of the checked topologies appeared (other tests may create their own meanwhile).
    let after = ip_netns_list();
    for (p, key) in &cases {
        if key.is_none() {
            let t = netns_setup::Topology::load(p).unwrap();
            for ns in t.all_netns() {
                assert!(
                    before.contains(&ns) || !after.contains(&ns),
                    "check created namespace {ns}"
                );
            }
        }
    }
}

#[test]
fn packaging_both_binaries_a_unit_completions_and_man_pages() {
    // Needs no root. `cargo install --path switch` installs the bin targets of
    // the switch package: both binaries must be there, and no other package
    // may build a binary of the same name.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let o = run_timeout(
        Command::new(cargo)
            .args([
                "metadata",
                "--no-deps",
                "--format-version",
                "1",
                "--offline",
            ])
            .current_dir(&root),
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut bins: Vec<(String, String)> = Vec::new();
    for p in meta["packages"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            if t["kind"].as_array().unwrap().iter().any(|k| k == "bin") {
                bins.push((
                    p["name"].as_str().unwrap().into(),
                    t["name"].as_str().unwrap().into(),
                ));
            }
        }
    }
    for b in ["vswitch", "netns-setup"] {
        let owners: Vec<&String> = bins
            .iter()
            .filter(|(_, n)| n == b)
            .map(|(p, _)| p)
            .collect();
        assert_eq!(owners, vec!["switch"], "binary {b}: {bins:?}");
    }

    // The systemd template runs the file of its instance and reloads with SIGHUP.
    let unit = std::fs::read_to_string(root.join("dist/vswitch@.service")).unwrap();
    for line in [
        "ExecStart=/usr/local/bin/vswitch run /etc/vswitch/%i.toml",
        "ExecStartPre=/usr/local/bin/vswitch check /etc/vswitch/%i.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WantedBy=multi-user.target",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "unit lacks {line:?}:\n{unit}"
        );
    }

    // Completions and man pages from both binaries.
    let dir = std::env::temp_dir().join(format!("vswitch-e2e-man-{}", uniq()));
    for b in ["vswitch", "netns-setup"] {
        for shell in ["bash", "zsh", "fish"] {
            let o = run_timeout(
                Command::new(bin(b)).args(["completions", shell]),
                Duration::from_secs(10),
            );
            assert!(
                o.status.success(),
                "{b} completions {shell}: {}",
                text(&o.stderr)
            );
            assert!(text(&o.stdout).contains(b), "{b} completions {shell}");
        }
        let o = run_timeout(Command::new(bin(b)).arg("man"), Duration::from_secs(10));
        assert!(o.status.success());
        assert!(text(&o.stdout).contains(&format!(".TH {b} 1")), "{b} man");
        let o = run_timeout(
            Command::new(bin(b)).args(["man", "--dir"]).arg(&dir),
            Duration::from_secs(10),
        );
        assert!(o.status.success(), "{}", text(&o.stderr));
        assert!(
            dir.join(format!("{b}.1")).exists()
                && dir.join(format!("{b}-up.1")).exists() == (b == "netns-setup")
        );
    }
    assert!(dir.join("vswitch-run.1").exists() && dir.join("vswitch-list.1").exists());
    let _ = std::fs::remove_dir_all(&dir);
    let o = run_timeout(
        Command::new(bin("vswitch")).args(["completions", "tcsh"]),
        Duration::from_secs(10),
    );
    assert_eq!(o.status.code(), Some(2), "unknown shell is a usage error");
}

#[test]
fn demo_refuses_while_a_seed_switch_runs() {
    if !require_root("demo_refuses_while_a_seed_switch_runs") {
        return;
    }
    let _serial = serial();
    // This test process plays the running seed switch: it holds the seed's lock.
    let sock = std::env::temp_dir().join(format!("vswitch-e2e-seed-{}.sock", uniq()));
    let owner = netns_setup::lock::Owner::this_process("seed", &sock, None);
    let lock = match netns_setup::lock::TopologyLock::acquire(&owner) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("a seed switch runs on this machine ({e}): not checked");
            return;
        }
    };
    let before = ip_netns_list();
    let o = run_timeout(
        Command::new(bin("vswitch")).arg("demo"),
        Duration::from_secs(20),
    );
    drop(lock);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("PID {}", std::process::id())),
        "{err}"
    );
    assert!(
        !ip_netns_list()
            .iter()
            .any(|n| !before.contains(n) && (n == "red" || n == "blue"))
    );
}
