//! Helpers for end-to-end tests in real network namespaces.
//!
//! Contract: every test gets unique namespace and interface names
//! ([`uniq`]); everything it creates is removed by a guard's `Drop`, also when
//! the test fails; every wait is bounded; processes are ended by PID only.
//! Tests call [`require_root`] first: without root they skip with a visible
//! message, except under `CI=true`, where they fail.

use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// True if the test may run; prints a skip notice (or panics under CI) otherwise.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs root, and CI=true forbids skipping");
    }
    eprintln!("SKIPPED {test}: needs root (run the tests with sudo)");
    false
}

/// A short unique tag (≤ 6 chars) for names in this test process.
pub fn uniq() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{:x}{:x}", std::process::id() % 0xfff, n)
}

/// Path of a workspace binary built next to this test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace binaries first (`cargo build --workspace`)",
        p.display()
    );
    p
}

/// The invalid topology files of the tests (`tests/fixtures/invalid/*.toml`),
/// each with what its error must name (its first line, `# expect: KEY`).
pub fn invalid_fixtures() -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/invalid");
    let mut v: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("read_dir").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("fixture");
            let key = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# expect: "))
                .unwrap_or_else(|| panic!("{}: first line must be `# expect: KEY`", p.display()))
                .to_string();
            (p, key)
        })
        .collect();
    v.sort();
    v
}

/// Programs the tests run and their Debian packages (`tests/programs.txt`,
/// also read by `tests/preflight`).
const PROGRAMS: &str = include_str!("../programs.txt");

/// The Debian package of `program`, if it is one the tests need.
pub fn package_of(program: &str) -> Option<&'static str> {
    PROGRAMS
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(char::is_whitespace))
        .find(|(p, _)| *p == program)
        .map(|(_, pkg)| pkg.trim())
}

/// Panic with `program X missing (Debian package Y)` unless `program` (a
/// name looked up in `PATH`, or a path) can be run.
pub fn need_program(program: &str) {
    let found = if program.contains('/') {
        Path::new(program).exists()
    } else {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
    };
    if !found {
        panic!("{}", missing_message(program));
    }
}

fn missing_message(program: &str) -> String {
    match package_of(program) {
        Some(pkg) => format!(
            "program {program} missing (Debian package {pkg}); as root, `tests/preflight --install` installs what the tests need"
        ),
        None => format!("program {program} missing (not found in PATH)"),
    }
}

/// [`need_program`] for what `cmd` runs: its program and, for `ip netns exec NS
/// PROG ...`, the program run in the namespace.
fn need_programs_of(cmd: &Command) {
    let prog = cmd.get_program().to_string_lossy().into_owned();
    need_program(&prog);
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if prog == "ip" && args.len() > 3 && args[0] == "netns" && args[1] == "exec" {
        need_program(&args[3]);
    }
}

/// Run a command with a time limit, capturing its output. A program that is
/// not installed fails with `program X missing (Debian package Y)`.
pub fn run_timeout(cmd: &mut Command, limit: Duration) -> Output {
    need_programs_of(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// `ip netns exec NS ARGS...`, bounded by `limit`.
pub fn ns_exec(ns: &str, args: &[&str], limit: Duration) -> Output {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(args);
    run_timeout(&mut c, limit)
}

/// Ping `dst` from `ns` `count` times; returns the loss percentage ping reports.
pub fn ping_loss(ns: &str, dst: &str, count: u32) -> f64 {
    ping_loss_with(ns, &[], dst, count)
}

/// Like [`ping_loss`], with extra ping options (e.g. `-M dont -s 1472`).
pub fn ping_loss_with(ns: &str, opts: &[&str], dst: &str, count: u32) -> f64 {
    let c = count.to_string();
    let mut args = vec!["ping", "-c", &c, "-i", "0.2", "-W", "2"];
    args.extend_from_slice(opts);
    args.push(dst);
    let o = ns_exec(ns, &args, Duration::from_secs(u64::from(count) + 15));
    let text = String::from_utf8_lossy(&o.stdout);
    text.split(',')
        .find(|s| s.contains("packet loss"))
        .and_then(|s| s.trim().split('%').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no ping summary from {ns}: {text} {}",
                String::from_utf8_lossy(&o.stderr)
            )
        })
}

/// A topology written to a temp file, removed with everything it made on drop.
pub struct TopoGuard {
    /// The topology file.
    pub path: PathBuf,
    /// The parsed topology.
    pub topo: netns_setup::Topology,
}

impl TopoGuard {
    /// Write `toml` to a temp file and parse it.
    pub fn new(toml: &str) -> TopoGuard {
        let topo = netns_setup::Topology::parse(toml, "e2e")
            .unwrap_or_else(|e| panic!("test topology invalid: {e}\n{toml}"));
        let path = std::env::temp_dir().join(format!("vswitch-e2e-{}.toml", topo.name));
        std::fs::write(&path, toml).expect("write topology");
        TopoGuard { path, topo }
    }
}

impl Drop for TopoGuard {
    fn drop(&mut self) {
        let r = netns_setup::down(&self.topo);
        for f in &r.failures {
            eprintln!("cleanup of {}: {f}", self.topo.name);
        }
        let _ = std::fs::remove_file(&self.path);
        // A switch run with --keep (or killed) leaves its saved state.
        let _ = std::fs::remove_file(switch::state::default_path(&self.topo.name));
    }
}

/// A running `vswitch run`, stopped (by PID) on drop.
pub struct SwitchProc {
    child: Option<Child>,
    /// Its control socket.
    pub socket: PathBuf,
    log: PathBuf,
}

impl SwitchProc {
    /// Start `vswitch run FILE` and wait (≤ 30 s) until its control socket answers.
    pub fn start(topo: &TopoGuard) -> SwitchProc {
        Self::start_with(topo, &[])
    }

    /// Like [`SwitchProc::start`], with extra `vswitch run` arguments.
    pub fn start_with(topo: &TopoGuard, extra: &[&str]) -> SwitchProc {
        let socket = std::env::temp_dir().join(format!("vswitch-e2e-{}.sock", topo.topo.name));
        let mut c = Command::new(bin("vswitch"));
        c.arg("run")
            .arg(&topo.path)
            .arg("--socket")
            .arg(&socket)
            .args(extra);
        Self::spawn(topo, c, socket)
    }

    /// Start a program that runs the switch (e.g. an example policy) with its control socket at `socket`.
    pub fn spawn(topo: &TopoGuard, mut cmd: Command, socket: PathBuf) -> SwitchProc {
        let log = std::env::temp_dir().join(format!("vswitch-e2e-{}.log", topo.topo.name));
        let logf = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("spawn vswitch");
        let mut s = SwitchProc {
            child: Some(child),
            socket,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if switch::control::query(&s.socket, "stats").is_ok() {
                return s;
            }
            if let Some(st) = s.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("vswitch exited early ({st}): {}", s.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "vswitch did not answer within 30 s: {}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// PID of the switch process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// What the switch printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Run `vswitch SUB [EXTRA..] --socket S` (bounded), asserting success; its stdout.
    fn cli(&self, sub: &str, extra: &[&str]) -> Vec<u8> {
        let o = run_timeout(
            Command::new(bin("vswitch"))
                .arg(sub)
                .args(extra)
                .arg("--socket")
                .arg(&self.socket),
            Duration::from_secs(15),
        );
        assert!(
            o.status.success(),
            "vswitch {sub} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o.stdout
    }

    /// Run a `vswitch` query subcommand with `--json` and parse its output.
    pub fn cli_json(&self, sub: &str) -> Value {
        self.cli_json_with(sub, &[])
    }

    /// Like [`SwitchProc::cli_json`], with extra arguments (filters).
    pub fn cli_json_with(&self, sub: &str, extra: &[&str]) -> Value {
        let mut args = extra.to_vec();
        args.push("--json");
        serde_json::from_slice(&self.cli(sub, &args))
            .unwrap_or_else(|e| panic!("vswitch {sub} --json printed no JSON ({e})"))
    }

    /// Run a `vswitch` query subcommand and return its text output.
    pub fn cli_text(&self, sub: &str) -> String {
        String::from_utf8_lossy(&self.cli(sub, &[])).into_owned()
    }

    /// Send SIGKILL and reap the process (a crash, for cleanup tests).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stop with SIGTERM and wait (≤ 20 s); returns the exit status success.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SwitchProc {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Links of a namespace (kind, name, mac), through our own netlink client.
pub fn links_in(ns: &str) -> Vec<netns_setup::netlink::Link> {
    let f = netns_setup::setup::open_netns(ns).unwrap_or_else(|e| panic!("open {ns}: {e}"));
    netns_setup::setup::netlink_in(Some(&f))
        .expect("netlink")
        .links()
        .expect("dump links")
}

/// MAC of interface `ifname` in namespace `ns`, as bytes.
pub fn mac_bytes_of(ns: &str, ifname: &str) -> [u8; 6] {
    mac_bytes(&mac_of(ns, ifname))
}

/// `aa:bb:cc:dd:ee:ff` as bytes.
pub fn mac_bytes(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).expect("hex MAC"))
        .collect();
    v.try_into().expect("six bytes")
}

/// MAC of interface `ifname` in namespace `ns`.
pub fn mac_of(ns: &str, ifname: &str) -> String {
    links_in(ns)
        .into_iter()
        .find(|l| l.name == ifname)
        .unwrap_or_else(|| panic!("{ifname} not in {ns}"))
        .mac
}

/// Run `f` on a thread inside namespace `ns`.
pub fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let file = netns_setup::setup::open_netns(ns).expect("open netns");
    netns_setup::netns::in_netns(Some(&file), f).expect("enter netns")
}

/// sha256 of a byte stream, computed by `sha256sum` fed from `fill`.
pub fn sha256_of(fill: impl FnOnce(&mut dyn Write)) -> String {
    need_program("sha256sum");
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    {
        let mut stdin = c.stdin.take().unwrap();
        fill(&mut stdin);
    }
    let o = c.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Deterministic pseudo-random bytes (xorshift64*), `len` of them, written in chunks.
pub fn write_pattern(w: &mut dyn Write, seed: u64, len: usize) -> std::io::Result<()> {
    let mut x = seed | 1;
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        for c in buf.chunks_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
        let n = left.min(buf.len());
        w.write_all(&buf[..n])?;
        left -= n;
    }
    Ok(())
}

/// Endpoint kinds of a star topology.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// veth pair, AF_PACKET on the switch side.
    Veth,
    /// TAP device.
    Tap,
}

/// Names of one namespace in a [`star`] topology.
#[derive(Clone, Debug)]
pub struct Member {
    /// Namespace name.
    pub ns: String,
    /// Interface inside the namespace.
    pub ifname: String,
    /// The switch port's name (switch-side veth, or the TAP name).
    pub port: String,
    /// IPv4 address (no prefix).
    pub ip: String,
}

/// A seed-like star: `kinds.len()` namespaces on 192.168.15.0/24 (host i+1),
/// joined by a switch living in its own namespace. `extra_switch` adds lines to `[switch]`.
pub fn star(id: &str, kinds: &[Kind], extra_switch: &str) -> (String, Vec<Member>, String) {
    let sw_ns = format!("vs{id}sw");
    let mut toml = format!(
        "name = \"t{id}\"\n[switch]\nname = \"vsw{id}\"\nnetns = \"{sw_ns}\"\n{extra_switch}\n"
    );
    let mut members = Vec::new();
    for (i, k) in kinds.iter().enumerate() {
        let ns = format!("vs{id}n{i}");
        let ifname = format!("e{id}n{i}");
        let ip = format!("192.168.15.{}", i + 1);
        toml += &format!(
            "[[namespace]]\nname = \"{ns}\"\naddress = \"{ip}/24\"\ngateway = \"192.168.15.254\"\nifname = \"{ifname}\"\n"
        );
        let port = match k {
            Kind::Veth => {
                let b = format!("b{id}n{i}");
                toml += &format!("switch_ifname = \"{b}\"\n");
                b
            }
            Kind::Tap => {
                toml += "kind = \"tap\"\n";
                ifname.clone()
            }
        };
        members.push(Member {
            ns,
            ifname,
            port,
            ip,
        });
    }
    (toml, members, sw_ns)
}

/// Namespace names currently listed by `ip netns list`.
pub fn ip_netns_list() -> Vec<String> {
    let o = run_timeout(
        Command::new("ip").args(["netns", "list"]),
        Duration::from_secs(10),
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

/// An AF_PACKET socket on `ifname` inside namespace `ns` (vswitch's own port
/// type, used here as a raw frame injector and observer).
pub fn packet_socket(ns: &str, ifname: &str) -> switch::sys::PacketPort {
    let name = ifname.to_string();
    in_ns(ns, move || switch::sys::PacketPort::open(&name))
        .unwrap_or_else(|e| panic!("packet socket on {ifname} in {ns}: {e}"))
}

/// Send raw Ethernet frames (no offload) through `port`; returns how many the kernel took.
pub fn send_frames(port: &mut switch::sys::PacketPort, frames: &[Vec<u8>]) -> usize {
    use switch::port::{BATCH, Batch, PortIo};
    let mut batch = Batch::new();
    let mut sent = 0;
    for chunk in frames.chunks(BATCH) {
        batch.clear();
        for (i, f) in chunk.iter().enumerate() {
            let area = batch.rx_area(i);
            area[..10].fill(0); // plain virtio_net_hdr: no GSO, checksum complete
            area[10..10 + f.len()].copy_from_slice(f);
            batch.set_filled(i, 10 + f.len(), false);
        }
        let idx: Vec<u16> = (0..chunk.len() as u16).collect();
        sent += port.tx_batch(&batch, &idx).expect("send").sent;
    }
    sent
}

/// Collect frames arriving at `port` for `window`.
pub fn recv_frames(port: &mut switch::sys::PacketPort, window: Duration) -> Vec<Vec<u8>> {
    use switch::port::{Batch, PortIo};
    let mut batch = Batch::new();
    let mut out = Vec::new();
    let end = Instant::now() + window;
    while Instant::now() < end {
        let n = port.rx_batch(&mut batch).expect("receive");
        if n == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
        for i in 0..n {
            out.push(batch.frame(i).to_vec());
        }
    }
    out
}

/// Send `len` pattern bytes from `from` to `to` over TCP and compare sha256 on both ends.
pub fn tcp_transfer(from: &Member, to: &Member, port: u16, len: usize) {
    let ip: std::net::IpAddr = to.ip.parse().expect("an IPv4 or IPv6 address");
    let addr = std::net::SocketAddr::new(ip, port);
    tcp_transfer_via(&from.ns, &to.ns, addr, addr, len);
}

/// Send `len` pattern bytes over TCP from namespace `from_ns` to `connect`,
/// accepted in namespace `to_ns` on `listen` (the same address, or another
/// one behind DNAT), and compare sha256 on both ends.
pub fn tcp_transfer_via(
    from_ns: &str,
    to_ns: &str,
    listen: std::net::SocketAddr,
    connect: std::net::SocketAddr,
    len: usize,
) {
    let seed = 0x5eed_0000 + u64::from(listen.port());
    let expected = sha256_of(|w| write_pattern(w, seed, len).unwrap());
    let addr = connect;
    let listener =
        in_ns(to_ns, || std::net::TcpListener::bind(listen)).expect("listen in namespace");
    listener.set_nonblocking(true).unwrap();
    let receiver = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut conn = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "no connection within 30 s");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut got = 0usize;
        let sum = sha256_of(|w| {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = conn.read(&mut buf).expect("receive (30 s timeout)");
                if n == 0 {
                    break;
                }
                got += n;
                w.write_all(&buf[..n]).unwrap();
            }
        });
        (got, sum)
    });
    let mut stream = in_ns(from_ns, || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))
    })
    .expect("connect from namespace");
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let started = Instant::now();
    write_pattern(&mut stream, seed, len).expect("send");
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let (got, sum) = receiver.join().expect("receiver");
    eprintln!(
        "{} bytes {} -> {} in {:?}",
        got,
        from_ns,
        to_ns,
        started.elapsed()
    );
    assert_eq!(got, len);
    assert_eq!(sum, expected, "sha256 differs");
}

/// Path of a workspace example binary (`cargo test` and `cargo build --examples` build them).
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("examples");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the examples first (`cargo build --workspace --examples`)",
        p.display()
    );
    p
}

/// The gateway's LAN address in [`nat_topo`] topologies.
pub const GW: &str = "192.168.15.5";
/// The uplink (external) address in [`nat_topo`] topologies.
pub const EXT: &str = "203.0.113.1";
/// A host in `wan` that answers.
pub const WAN_HOST: &str = "203.0.113.10";
/// A host in `wan` that silently drops everything sent to it ([`NatTopo::silence`]).
pub const SILENT_HOST: &str = "203.0.113.12";

/// A seed-like topology with a gateway, an uplink to a `wan` namespace and NAT rules.
pub struct NatTopo {
    /// The topology (removed on drop).
    pub topo: TopoGuard,
    /// LAN hosts, 192.168.15.1, .2, ...
    pub hosts: Vec<Member>,
    /// First LAN host (192.168.15.1).
    pub red: Member,
    /// Second LAN host (192.168.15.2), the DNAT target.
    pub blue: Member,
    /// The external network (203.0.113.10, .11 and the silent .12).
    pub wan: Member,
    /// The switch's namespace.
    pub sw_ns: String,
}

/// [`nat_topo_n`] with two LAN hosts.
pub fn nat_topo(uplink_extra: &str, nat_extra: &str) -> NatTopo {
    nat_topo_n(2, uplink_extra, nat_extra, "")
}

/// The seed with `n` veth hosts and the switch side in its own namespace:
/// hosts .1, .2, ..., gateway .5 (hosts must not reach .5: `n` <= 4), uplink
/// 203.0.113.1 to `wan` (203.0.113.10, .11, .12), masquerade
/// 192.168.15.0/24, DNAT tcp/80 → .2:80. `uplink_extra`, `nat_extra` and
/// `tail` add lines to `[uplink]`, `[nat]` and the end of the file.
pub fn nat_topo_n(n: usize, uplink_extra: &str, nat_extra: &str, tail: &str) -> NatTopo {
    nat_topo_with(n, "", uplink_extra, nat_extra, tail)
}

/// [`nat_topo_n`] with `switch_extra` added to `[switch]` (e.g. `io = "ring"`).
pub fn nat_topo_with(
    n: usize,
    switch_extra: &str,
    uplink_extra: &str,
    nat_extra: &str,
    tail: &str,
) -> NatTopo {
    assert!((2..=4).contains(&n), "2..=4 hosts");
    let id = uniq();
    let (mut toml, m, sw_ns) = star(&id, &vec![Kind::Veth; n], switch_extra);
    toml = toml.replace("192.168.15.254", GW);
    let wan_ns = format!("vs{id}w");
    toml += &format!(
        "[gateway]\naddress = \"{GW}/24\"\n[uplink]\nnetns = \"{wan_ns}\"\naddress = \"{EXT}/24\"\npeer_addresses = [\"{WAN_HOST}/24\", \"203.0.113.11/24\", \"{SILENT_HOST}/24\"]\nifname = \"w{id}\"\nswitch_ifname = \"u{id}\"\n{uplink_extra}\n[[masquerade]]\nsource = \"192.168.15.0/24\"\n[[dnat]]\nprotocol = \"tcp\"\nport = 80\nto = \"192.168.15.2:80\"\n[nat]\n{nat_extra}\n{tail}\n"
    );
    let topo = TopoGuard::new(&toml);
    let wan = Member {
        ns: wan_ns,
        ifname: format!("w{id}"),
        port: format!("u{id}"),
        ip: WAN_HOST.into(),
    };
    NatTopo {
        topo,
        red: m[0].clone(),
        blue: m[1].clone(),
        hosts: m,
        wan,
        sw_ns,
    }
}

impl NatTopo {
    /// Make [`SILENT_HOST`] drop everything it receives without an answer
    /// (an nftables rule inside `wan`, the simulated remote network; the
    /// switch path itself has no rules).
    pub fn silence(&self) {
        for rule in [
            "add table inet silent",
            "add chain inet silent in { type filter hook input priority 0; }",
            &format!("add rule inet silent in ip daddr {SILENT_HOST} drop"),
        ] {
            let o = ns_exec(&self.wan.ns, &["nft", rule], Duration::from_secs(10));
            assert!(
                o.status.success(),
                "nft {rule}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
}

/// A background program in a namespace, killed by PID on drop.
pub struct Bg {
    child: Child,
    log: PathBuf,
}

impl Bg {
    /// Start `args` inside `ns` (in `cwd` if given), output to a log file.
    pub fn start(ns: &str, args: &[&str], cwd: Option<&Path>) -> Bg {
        let log = std::env::temp_dir().join(format!(
            "vswitch-e2e-bg-{}-{}.log",
            std::process::id(),
            uniq()
        ));
        let f = std::fs::File::create(&log).unwrap();
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f);
        if let Some(d) = cwd {
            c.current_dir(d);
        }
        // Its own process group, so that drop ends what it started too
        // (`timeout hping3 ...` leaves hping3 running if only `timeout` dies).
        std::os::unix::process::CommandExt::process_group(&mut c, 0);
        need_programs_of(&c);
        Bg {
            child: c.spawn().unwrap_or_else(|e| panic!("spawn {args:?}: {e}")),
            log,
        }
    }

    /// What it printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait (bounded) until its output contains `s`.
    pub fn wait_for(&self, s: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.log().contains(s) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        // The group this Bg created (its id is the child's PID).
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Resident set size of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// coturn's STUN server in `ns` on 203.0.113.10 and .11, port 3478 (RFC 5780
/// needs two addresses), waited for (bounded); stopped on drop.
pub fn stun_server(ns: &str) -> Bg {
    let stun = Bg::start(
        ns,
        &[
            "turnserver",
            "-n",
            "--log-file",
            "stdout",
            "--listening-ip",
            WAN_HOST,
            "--listening-ip",
            "203.0.113.11",
            "--listening-port",
            "3478",
            "--stun-only",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--simple-log",
        ],
        None,
    );
    // Its log names the listener once it is up.
    stun.wait_for("3478", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    stun
}

/// CPU time of all threads of process `pid`, in ns (the first field of each
/// thread's `/proc/PID/task/*/schedstat`).
pub fn cpu_ns(pid: u32) -> u64 {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir");
    dir.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// A one-shot iperf3 server on `ip`:`port` in `ns`, listening when this
/// returns (bounded wait; panics with its output otherwise).
pub fn iperf3_server(ns: &str, ip: &str, port: u16) -> Bg {
    let srv = Bg::start(
        ns,
        &[
            "iperf3",
            "-s",
            "-1",
            "--forceflush",
            "-p",
            &port.to_string(),
            "-B",
            ip,
        ],
        None,
    );
    assert!(
        srv.wait_for("listening", Duration::from_secs(10)),
        "iperf3 server: {}",
        srv.log()
    );
    srv
}

/// A directory with a random file, removed on drop.
pub struct WebRoot(pub std::path::PathBuf);

impl WebRoot {
    /// A new root with `file.bin` of `len` pattern bytes, and its sha256.
    pub fn new(len: usize) -> (WebRoot, String) {
        let d =
            std::env::temp_dir().join(format!("vswitch-e2e-www-{}-{}", std::process::id(), uniq()));
        std::fs::create_dir_all(&d).unwrap();
        let mut f = std::fs::File::create(d.join("file.bin")).unwrap();
        write_pattern(&mut f, len as u64, len).unwrap();
        let sum = sha256_of(|w| write_pattern(w, len as u64, len).unwrap());
        (WebRoot(d), sum)
    }
}

impl Drop for WebRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `curl` from `ns`, returning the body's sha256 (empty on failure), retried for up to 10 s.
pub fn curl_sha(ns: &str, url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = ns_exec(
            ns,
            &["curl", "-gsf", "-m", "5", "-o", "-", url],
            Duration::from_secs(15),
        );
        if o.status.success() {
            return sha256_of(|w| w.write_all(&o.stdout).unwrap());
        }
        if Instant::now() > deadline {
            return String::new();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_is_named_with_its_package() {
        assert_eq!(package_of("turnserver"), Some("coturn"));
        assert_eq!(package_of("iptables-save"), Some("iptables"));
        assert_eq!(
            missing_message("hping3"),
            "program hping3 missing (Debian package hping3); as root, `tests/preflight --install` installs what the tests need"
        );
        let e = std::panic::catch_unwind(|| {
            run_timeout(
                Command::new("ip").args(["netns", "exec", "x", "no-such-program-here"]),
                Duration::from_secs(1),
            )
        })
        .expect_err("a missing program panics before anything runs");
        let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            msg.contains("program no-such-program-here missing"),
            "{msg}"
        );
    }

    /// The preflight lists every missing program with its package in one
    /// message: here, with a PATH that holds only the shell tools it uses.
    #[test]
    fn preflight_lists_every_missing_program_at_once() {
        let dir = std::env::temp_dir().join(format!("vswitch-preflight-{}", uniq()));
        std::fs::create_dir_all(&dir).unwrap();
        for tool in ["awk", "sort", "tr", "id", "dirname", "sed"] {
            let at = ["/usr/bin", "/bin"]
                .iter()
                .map(|d| Path::new(d).join(tool))
                .find(|p| p.exists())
                .unwrap_or_else(|| panic!("{tool} not found"));
            std::os::unix::fs::symlink(at, dir.join(tool)).unwrap();
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("preflight");
        let o = Command::new("/bin/bash")
            .arg(&script)
            .env("PATH", &dir)
            .env("CI", "true")
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        for l in PROGRAMS.lines().filter(|l| !l.starts_with('#')) {
            let (prog, pkg) = l.split_once(char::is_whitespace).unwrap();
            assert!(
                err.lines()
                    .any(|x| x.contains(prog)
                        && x.contains(&format!("(Debian package {})", pkg.trim()))),
                "{prog}: {err}"
            );
        }
        assert!(
            err.contains("apt-get install -y --no-install-recommends clang coreutils coturn curl"),
            "{err}"
        );
        // With the real PATH: silent success, or the same kind of message.
        let o = Command::new(&script).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            (o.status.success() && err.is_empty()) || err.contains("(Debian package "),
            "{err}"
        );
    }
}
