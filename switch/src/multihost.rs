//! The multi-host story of `vswitch demo multihost`, also used by the tests
//! and the benchmark: three "hosts" as namespaces on one underlay network.
//!
//! ```text
//!   host A ({p}-a)               host B ({p}-b)            host C ({p}-c)
//!   vswitch: red, gateway,       vswitch: blue             Linux: vxlan42 + bridge br0
//!   uplink to {p}-wan, NAT                                  with green
//!        ul0 10.200.0.1             ul0 10.200.0.2            ul0 10.200.0.3
//!         \__________________________|_________________________/
//!                    underlay {p}-ul: a Linux bridge (the "physical" switch)
//! ```
//!
//! Contract: [`World::build`] makes everything or nothing (a failure tears
//! down what was made); dropping the [`World`] stops the two switches (by
//! PID) and removes every namespace it made. Host C and the underlay are
//! configured with iproute2, as their administrator would ([`host_c_commands`]
//! prints the same commands); hosts A and B are vswitch topologies.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The VNI of the demo's overlay.
pub const VNI: u32 = 42;
/// Overlay addresses: red (A), blue (B), green (C), the gateway (A).
pub const RED: &str = "192.168.50.1";
/// Blue's address.
pub const BLUE: &str = "192.168.50.2";
/// Green's address.
pub const GREEN: &str = "192.168.50.3";
/// The gateway, on host A.
pub const GATEWAY: &str = "192.168.50.5";
/// The external host in `{p}-wan`.
pub const WAN_HOST: &str = "203.0.113.10";
/// Underlay addresses of hosts A, B and C.
pub const VTEPS: [&str; 3] = ["10.200.0.1", "10.200.0.2", "10.200.0.3"];

/// The topology of host `h` (0: A, 1: B) for prefix `p`.
pub fn topology(p: &str, h: usize) -> String {
    let others = |me: usize| {
        VTEPS
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != me)
            .map(|(_, a)| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match h {
        0 => format!(
            r#"# Host A: red, the gateway and the NAT; a VXLAN tunnel to B and C.
name = "{p}-a"

[switch]
name = "vsw-a"
netns = "{p}-a"

[[namespace]]
name = "{p}-red"
address = "{RED}/24"
gateway = "{GATEWAY}"
ifname = "eth0"
switch_ifname = "sw-red"

[gateway]
address = "{GATEWAY}/24"

[uplink]
netns = "{p}-wan"
address = "203.0.113.1/24"
peer_addresses = ["{WAN_HOST}/24"]
ifname = "eth0"
switch_ifname = "sw-wan"

[[masquerade]]
source = "192.168.50.0/24"

# A forward to blue, on host B: DNAT'd here, carried over the tunnel.
[[dnat]]
protocol = "udp"
port = 9000
to = "{BLUE}:9000"

[[tunnel]]
kind = "vxlan"
name = "vxlan0"
vni = {VNI}
local = "{a}/24"
device = "ul0"
remotes = [{r}]
"#,
            a = VTEPS[0],
            r = others(0)
        ),
        _ => format!(
            r#"# Host B: blue; the same VNI, its gateway is on host A.
name = "{p}-b"

[switch]
name = "vsw-b"
netns = "{p}-b"

[[namespace]]
name = "{p}-blue"
address = "{BLUE}/24"
gateway = "{GATEWAY}"
ifname = "eth0"
switch_ifname = "sw-blue"

[[tunnel]]
kind = "vxlan"
name = "vxlan0"
vni = {VNI}
local = "{a}/24"
device = "ul0"
remotes = [{r}]
"#,
            a = VTEPS[1],
            r = others(1)
        ),
    }
}

/// A Linux host's VTEP as its administrator makes it with iproute2: a
/// kernel `vxlan{vni}` device on `ul0` flooding to `remotes`, a bridge `br0`
/// with it and a veth (`veth` on the host side) to namespace `endpoint`,
/// which gets `address` (and a default route via `gateway`), MTU 1450.
pub struct KernelVtep<'a> {
    /// The host's namespace (holds `ul0`).
    pub host: &'a str,
    /// The namespace behind the bridge.
    pub endpoint: &'a str,
    /// Host-side name of the endpoint's veth.
    pub veth: &'a str,
    /// VNI.
    pub vni: u32,
    /// UDP port.
    pub port: u16,
    /// The host's underlay address.
    pub local: &'a str,
    /// VTEPs to flood to.
    pub remotes: &'a [&'a str],
    /// The endpoint's address/prefix.
    pub address: &'a str,
    /// The endpoint's default route, if any.
    pub gateway: Option<&'a str>,
}

impl KernelVtep<'_> {
    /// The commands, in order.
    pub fn commands(&self) -> Vec<String> {
        let KernelVtep {
            host: h,
            endpoint: e,
            veth,
            vni,
            port,
            local,
            ..
        } = *self;
        let mut v = vec![format!(
            "ip -n {h} link add vxlan{vni} type vxlan id {vni} local {local} dstport {port} dev ul0"
        )];
        for r in self.remotes {
            v.push(format!(
                "bridge -n {h} fdb append 00:00:00:00:00:00 dev vxlan{vni} dst {r}"
            ));
        }
        v.extend([
            format!("ip -n {h} link add br0 type bridge"),
            format!("ip -n {h} link set vxlan{vni} master br0 up"),
            format!("ip -n {h} link add {veth} type veth peer name eth0 netns {e}"),
            format!("ip -n {h} link set {veth} mtu 1450 master br0 up"),
            format!("ip -n {h} link set br0 up"),
            format!("ip -n {e} link set lo up"),
            format!("ip -n {e} link set eth0 mtu 1450 up"),
            format!("ip -n {e} addr add {} dev eth0", self.address),
        ]);
        if let Some(g) = self.gateway {
            v.push(format!("ip -n {e} route add default via {g}"));
        }
        v
    }
}

/// The iproute2 commands that make host C (plain Linux: a kernel VXLAN
/// device and a bridge with namespace green), as run by its administrator.
pub fn host_c_commands(p: &str) -> Vec<String> {
    let (c, g) = (format!("{p}-c"), format!("{p}-green"));
    KernelVtep {
        host: &c,
        endpoint: &g,
        veth: "sw-green",
        vni: VNI,
        port: 4789,
        local: VTEPS[2],
        remotes: &VTEPS[..2],
        address: &format!("{GREEN}/24"),
        gateway: Some(GATEWAY),
    }
    .commands()
}

/// The underlay: a bridge in `{p}-ul` and one veth to each host's `ul0`
/// (addresses of A and B are added by their topologies, C's here).
fn underlay_commands(p: &str) -> Vec<String> {
    let ul = format!("{p}-ul");
    let mut v = vec![
        format!("ip -n {ul} link add ulbr type bridge"),
        format!("ip -n {ul} link set ulbr up"),
    ];
    for h in ["a", "b", "c"] {
        v.push(format!(
            "ip -n {ul} link add ul{h} type veth peer name ul0 netns {p}-{h}"
        ));
        v.push(format!("ip -n {ul} link set ul{h} master ulbr up"));
        v.push(format!("ip -n {p}-{h} link set lo up"));
    }
    v.push(format!("ip -n {p}-c addr add {}/24 dev ul0", VTEPS[2]));
    v.push(format!("ip -n {p}-c link set ul0 up"));
    v
}

/// Run one command line (words split on spaces), bounded to 10 s.
pub fn sh(line: &str) -> Result<String, String> {
    let w: Vec<&str> = line.split_whitespace().collect();
    let mut child = Command::new(w[0])
        .args(&w[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{line}: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{line}: no answer within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let o = child.wait_with_output().map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!(
            "{line}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The running world.
pub struct World {
    /// Name prefix of everything it made.
    pub prefix: String,
    /// Topology files of hosts A and B.
    pub files: [PathBuf; 2],
    /// Control sockets of the switches on A and B.
    pub sockets: [PathBuf; 2],
    /// Logs of the switches.
    pub logs: [PathBuf; 2],
    children: Vec<Child>,
    made: Vec<String>,
    topologies: Vec<netns_setup::Topology>,
}

impl World {
    /// Namespace of `what` (`a`, `b`, `c`, `ul`, `red`, `blue`, `green`, `wan`).
    pub fn ns(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }

    /// Build it all with names starting `prefix` and start `vswitch run`
    /// (the binary at `vswitch`) on hosts A and B; files and logs go to `dir`.
    pub fn build(prefix: &str, vswitch: &Path, dir: &Path) -> Result<World, String> {
        let exe = vswitch.to_path_buf();
        Self::build_with(prefix, dir, &move |file, socket| {
            let mut c = Command::new(&exe);
            c.arg("run").arg(file).arg("--socket").arg(socket);
            c
        })
    }

    /// [`World::build`] with the command that runs a switch on topology
    /// `file` with its control socket at `socket` (a benchmark runs its own build).
    pub fn build_with(
        prefix: &str,
        dir: &Path,
        run: &dyn Fn(&Path, &Path) -> Command,
    ) -> Result<World, String> {
        let p = prefix;
        let mut w = World {
            prefix: p.to_string(),
            files: [0, 1].map(|h| dir.join(format!("{p}-{}.toml", ["a", "b"][h]))),
            sockets: [0, 1].map(|h| dir.join(format!("{p}-{}.sock", ["a", "b"][h]))),
            logs: [0, 1].map(|h| dir.join(format!("{p}-{}.log", ["a", "b"][h]))),
            children: Vec::new(),
            made: Vec::new(),
            topologies: Vec::new(),
        };
        match w.build_inner(run) {
            Ok(()) => Ok(w),
            Err(e) => Err(e), // `w` drops here: everything made is removed
        }
    }

    fn build_inner(&mut self, run: &dyn Fn(&Path, &Path) -> Command) -> Result<(), String> {
        let p = self.prefix.clone();
        for n in ["ul", "a", "b", "c", "green"] {
            let name = format!("{p}-{n}");
            if netns_setup::netns::exists(&name) {
                return Err(format!(
                    "namespace {name} exists: is another demo running? (`ip netns del {name}`)"
                ));
            }
        }
        for n in ["ul", "a", "b", "c", "green"] {
            let name = format!("{p}-{n}");
            netns_setup::netns::create(&name)
                .map_err(|e| format!("create namespace {name}: {e}"))?;
            self.made.push(name);
        }
        for l in underlay_commands(&p).iter().chain(&host_c_commands(&p)) {
            sh(l)?;
        }
        for h in 0..2 {
            let text = topology(&p, h);
            let t = netns_setup::Topology::parse(&text, "multihost").map_err(|e| e.to_string())?;
            std::fs::write(&self.files[h], &text).map_err(|e| e.to_string())?;
            // The switch namespace holds the underlay already: hand it over.
            let host = format!("{p}-{}", ["a", "b"][h]);
            netns_setup::setup::adopt(&host, &t.name).map_err(|e| e.to_string())?;
            self.topologies.push(t);
            let log = std::fs::File::create(&self.logs[h]).map_err(|e| e.to_string())?;
            let child = run(&self.files[h], &self.sockets[h])
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log)
                .spawn()
                .map_err(|e| format!("start the switch of host {h}: {e}"))?;
            self.children.push(child);
            let deadline = Instant::now() + Duration::from_secs(30);
            while crate::control::query(&self.sockets[h], "stats").is_err() {
                let exited = self.children[h].try_wait().ok().flatten().is_some();
                if exited || Instant::now() > deadline {
                    let log = std::fs::read_to_string(&self.logs[h]).unwrap_or_default();
                    return Err(format!(
                        "the switch of host {} did not come up:\n{log}",
                        ["A", "B"][h]
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// PID of the switch on host `h` (0: A, 1: B).
    pub fn pid(&self, h: usize) -> u32 {
        self.children[h].id()
    }

    /// Stop everything and remove what was made (also on drop).
    pub fn teardown(&mut self) {
        for c in &mut self.children {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        for c in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.children.clear();
        // `vswitch run` removes its topology on exit; after a kill, do it here.
        for t in self.topologies.drain(..) {
            let _ = netns_setup::down(&t);
        }
        for n in self.made.drain(..).rev() {
            if netns_setup::netns::exists(&n) {
                let _ = netns_setup::netns::delete(&n);
            }
            let _ = std::fs::remove_file(PathBuf::from(netns_setup::setup::OWNER_DIR).join(&n));
        }
        for f in self.files.iter().chain(&self.sockets).chain(&self.logs) {
            let _ = std::fs::remove_file(f);
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.teardown();
    }
}
