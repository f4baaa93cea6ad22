//! Shared helpers of the vswitch benchmarks: bounded shell-outs, background
//! processes, cleanup that also runs on Ctrl-C, CPU accounting, the SVG chart.
//!
//! The end-to-end harness builds its kernel reference with `ip`/`iptables`
//! (that is what the reference *is*); vswitch's own setup never shells out.

use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Run a command (bounded by `limit`), returning its stdout (empty on failure).
pub fn sh(args: &[&str], limit: Duration) -> String {
    let Ok(mut c) = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        return String::new();
    };
    let mut out = c.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = c.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    reader.join().unwrap_or_default()
}

/// Run a command that must succeed (bounded to 30 s); exits with a message otherwise.
pub fn sh_ok(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "e2e: `{}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr).trim()
            );
            cleanup_now();
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("e2e: cannot run `{}`: {e}", args[0]);
            cleanup_now();
            std::process::exit(1);
        }
    }
}

/// Exit with a clear message (or install with apt-get) when a tool is missing.
pub fn require_tools(tools: &[(&str, &str)], install: bool) {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(c, _)| {
            sh(
                &["sh", "-c", &format!("command -v {c}")],
                Duration::from_secs(5),
            )
            .trim()
            .is_empty()
        })
        .map(|(_, p)| *p)
        .collect();
    if missing.is_empty() {
        return;
    }
    if install {
        eprintln!("e2e: installing {}", missing.join(" "));
        if install_no_services(&missing) {
            return;
        }
    }
    eprintln!(
        "e2e: missing tools; install them with:\n    apt-get install -y {}\nor rerun with --install",
        missing.join(" ")
    );
    std::process::exit(2);
}

/// `apt-get install` the packages with every service start refused (a
/// temporary `policy-rc.d` that answers 101, the Debian way for chroots and
/// containers), so installing e.g. openvswitch-switch never starts the
/// system's OVS; the harness runs its own private daemons instead. An
/// existing `policy-rc.d` is left alone (it already decides).
fn install_no_services(pkgs: &[&str]) -> bool {
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists()
        && std::fs::write(
            policy,
            "#!/bin/sh\n# e2e benchmark: no service starts during its install\nexit 101\n",
        )
        .is_ok();
    if ours {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755));
    }
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(pkgs)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    ok
}

/// A background process, killed (SIGKILL, by PID) on drop unless it exited.
pub struct Bg(Option<Child>, bool);

impl Bg {
    /// Spawn `cmd` with its output discarded.
    pub fn spawn(cmd: &mut Command) -> Bg {
        Bg::spawn_to(cmd, Stdio::inherit())
    }
    /// Spawn `cmd` with its stdout discarded and its stderr sent to `stderr`.
    pub fn spawn_to(cmd: &mut Command, stderr: Stdio) -> Bg {
        let c = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| {
                eprintln!("e2e: cannot start {cmd:?}: {e}");
                cleanup_now();
                std::process::exit(1);
            });
        Bg(Some(c), true)
    }
    /// Spawn a helper (e.g. an iperf3 server) that is simply killed at the end.
    /// Children inherit the harness's blocked SIGINT/SIGTERM, so only SIGKILL ends them.
    pub fn spawn_helper(cmd: &mut Command) -> Bg {
        let mut b = Bg::spawn(cmd);
        b.1 = false;
        b
    }
    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, |c| c.id())
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            if !self.1 {
                let _ = c.kill();
                let _ = c.wait();
                return;
            }
            // SIGTERM first (vswitch removes its namespaces), then SIGKILL after 10 s.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[derive(Default)]
struct CleanState {
    netns: Vec<String>,
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    pids: Vec<u32>,
    helpers: Vec<u32>,
}

static CLEAN: Mutex<CleanState> = Mutex::new(CleanState {
    netns: Vec::new(),
    files: Vec::new(),
    dirs: Vec::new(),
    pids: Vec::new(),
    helpers: Vec::new(),
});

/// Remove everything registered: stop processes, delete namespaces and files.
pub fn cleanup_now() {
    let st = std::mem::take(&mut *CLEAN.lock().unwrap_or_else(|e| e.into_inner()));
    for pid in st.helpers {
        let p = nix::unistd::Pid::from_raw(pid as i32);
        if nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL).is_ok() {
            // Reap it (a child of ours; ECHILD otherwise), leaving no zombie.
            let _ = nix::sys::wait::waitpid(p, None);
        }
    }
    for pid in st.pids {
        let p = nix::unistd::Pid::from_raw(pid as i32);
        if nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM).is_ok() {
            for _ in 0..500 {
                if nix::sys::signal::kill(p, None).is_err()
                    || !Path::new(&format!("/proc/{pid}/cmdline")).exists()
                {
                    break;
                }
                let _ = nix::sys::wait::waitpid(p, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
                std::thread::sleep(Duration::from_millis(20));
            }
            if nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL).is_ok() {
                let _ = nix::sys::wait::waitpid(p, None);
            }
        }
    }
    for ns in st.netns {
        if netns_setup::netns::path(&ns).exists() {
            let _ = netns_setup::netns::delete(&ns);
        }
    }
    for f in st.files {
        let _ = std::fs::remove_file(f);
    }
    for d in st.dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Cleanup registry: what it holds is removed on drop, on SIGINT and on SIGTERM.
pub struct Cleanup;

impl Cleanup {
    /// Install the signal handler (call before starting threads).
    pub fn install() -> Cleanup {
        let mut mask = nix::sys::signal::SigSet::empty();
        mask.add(nix::sys::signal::Signal::SIGINT);
        mask.add(nix::sys::signal::Signal::SIGTERM);
        let _ = mask.thread_block();
        std::thread::spawn(move || {
            if mask.wait().is_ok() {
                eprintln!("\ne2e: interrupted, cleaning up");
                cleanup_now();
                std::process::exit(130);
            }
        });
        Cleanup
    }
    /// Remove namespace `ns` at the end.
    pub fn add_netns(&self, ns: &str) {
        CLEAN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .netns
            .push(ns.to_string());
    }
    /// Remove file `f` at the end.
    pub fn add_file(&self, f: &Path) {
        CLEAN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .files
            .push(f.to_path_buf());
    }
    /// Remove directory `d` and its contents at the end (after the processes stopped).
    pub fn add_dir(&self, d: &Path) {
        CLEAN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .dirs
            .push(d.to_path_buf());
    }
    /// Kill helper process `pid` (SIGKILL) at the end.
    pub fn add_helper(&self, pid: u32) {
        CLEAN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .helpers
            .push(pid);
    }
    /// Stop process `pid` at the end.
    pub fn add_pid(&self, pid: u32) {
        CLEAN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pids
            .push(pid);
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        cleanup_now();
    }
}

/// Namespaces of one setup (for callers that want them grouped).
pub type NsSet = Vec<String>;

/// (busy, total) jiffies over all CPUs, from /proc/stat.
pub fn cpu_busy_jiffies() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// CPU time (ns) used so far by process `pid` and all its threads, from
/// `/proc/PID/task/*/schedstat` (falls back to utime + stime at 100 Hz);
/// 0 for PID 0 (no process: the kernel forwards).
pub fn proc_cpu_ns(pid: u32) -> u64 {
    if pid == 0 {
        return 0;
    }
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut total = 0u64;
    let mut any = false;
    for t in tasks {
        if let Some(ns) = std::fs::read_to_string(t.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        {
            total += ns;
            any = true;
        }
    }
    if any {
        return total;
    }
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ") ".
    let rest = s.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // state is not numeric, so utime/stime (fields 14/15) land at 10/11 here.
    (f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0)) * 10_000_000
}

/// A horizontal bar chart of each setup's ratio to the kernel (median of the
/// per-round ratios; 1.0 = parity), one group of bars per measurement, as SVG.
/// Reads the report written by the e2e harness (`setups`, `rows[].ratio`).
pub fn svg_chart(report: &Value) -> String {
    const COLORS: [&str; 6] = [
        "#1565c0", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#757575",
    ];
    let setups: Vec<&str> = report["setups"]
        .as_array()
        .map(|a| {
            a.iter()
                .skip(1)
                .filter_map(|s| s["name"].as_str())
                .collect()
        })
        .unwrap_or_default();
    let rows: Vec<&Value> = report["rows"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|r| r["ratio"].as_object().is_some_and(|o| !o.is_empty()))
                .collect()
        })
        .unwrap_or_default();
    let ratio = |r: &Value, s: &str| r["ratio"][s]["median"].as_f64().filter(|x| x.is_finite());
    let (w, left, bar_h, gap) = (900.0, 300.0, 14.0, 12.0);
    let group_h = bar_h * setups.len().max(1) as f64 + gap;
    let top = 70.0;
    let h = top + rows.len() as f64 * group_h + 40.0;
    let max = rows
        .iter()
        .flat_map(|r| setups.iter().filter_map(|s| ratio(r, s)))
        .fold(2.0f64, f64::max)
        .min(6.0);
    let x_of = |r: f64| left + (w - left - 60.0) * (r / max);
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    s += &format!(
        r#"<rect width="{w}" height="{h}" fill="white"/><text x="10" y="22" font-size="15" font-weight="bold">Ratio to the kernel (median of {} per-round ratios; higher is better for rates, lower for RTT and CPU)</text>"#,
        report["rounds"]
    );
    for (i, name) in setups.iter().enumerate() {
        let x = 10.0 + i as f64 * 140.0;
        s += &format!(
            r#"<rect x="{x}" y="34" width="12" height="12" fill="{}"/><text x="{}" y="45">{}</text>"#,
            COLORS[i % COLORS.len()],
            x + 16.0,
            xml(name)
        );
    }
    for (g, r) in rows.iter().enumerate() {
        let y0 = top + g as f64 * group_h;
        s += &format!(
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 8.0,
            y0 + group_h / 2.0,
            xml(r["name"].as_str().unwrap_or("").trim())
        );
        for (i, name) in setups.iter().enumerate() {
            let y = y0 + i as f64 * bar_h;
            let Some(v) = ratio(r, name) else {
                s += &format!(
                    r#"<text x="{}" y="{:.1}">n/a</text>"#,
                    left + 4.0,
                    y + bar_h - 3.0
                );
                continue;
            };
            let wbar = (x_of(v.min(max)) - left).max(1.0);
            s += &format!(
                r#"<rect x="{left}" y="{y:.1}" width="{wbar:.1}" height="{:.1}" fill="{}"/><text x="{:.1}" y="{:.1}">{v:.2}×</text>"#,
                bar_h - 2.0,
                COLORS[i % COLORS.len()],
                left + wbar + 4.0,
                y + bar_h - 3.0
            );
        }
    }
    let x1 = x_of(1.0);
    s += &format!(
        r#"<line x1="{x1:.1}" y1="{}" x2="{x1:.1}" y2="{:.1}" stroke="black" stroke-dasharray="4 3"/><text x="{x1:.1}" y="{:.1}" text-anchor="middle">1.0 = kernel</text>"#,
        top - 6.0,
        h - 30.0,
        h - 12.0
    );
    s + "</svg>\n"
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
