//! End-to-end benchmark: the seed topology built once per setup in private
//! namespaces — the kernel reference (bridge `v-net-0` + iptables
//! MASQUERADE/DNAT, as the tutorial does it), vswitch with its default
//! configuration, any number of vswitch variants (`--variant`), and
//! optionally OVS userspace (`--peers ovs`) — measured in the same run,
//! interleaved, for several rounds, with the same clients, sizes and
//! durations for every setup. Prints a table of medians with each setup's
//! ratio to the kernel (median of the per-round ratios) and the spread of
//! those ratios, and writes Markdown, JSON and an SVG chart.
//!
//! `cargo run --release -p benches --bin e2e -- --help`
//!
//! Needs root, iperf3, ping, iptables and trafgen (`--install` installs
//! missing Debian packages with apt-get, without starting any service).
//! Leaves no namespace, process or file behind, also on Ctrl-C.

use benches::{Bg, Cleanup, cpu_busy_jiffies, proc_cpu_ns, sh, sh_ok};
use serde_json::{Value, json};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const RED: &str = "192.168.15.1";
const BLUE: &str = "192.168.15.2";
const WAN: &str = "203.0.113.10";
const RED6: &str = "fd00:15::1";
const BLUE6: &str = "fd00:15::2";
const WAN6: &str = "2001:db8:113::10";
/// Seconds over which the idle CPU of the forwarding processes is measured.
const IDLE_SECS: u64 = 10;

/// What a setup is.
enum Kind {
    /// Bridge + iptables, in the kernel.
    Kernel,
    /// vswitch with these `[switch]` keys added to the seed topology (none: its default).
    Vswitch(Vec<(String, String)>),
    /// OVS userspace (datapath `netdev`, AF_PACKET ports, `ct(nat)` flows).
    Ovs,
}

/// One setup under measurement: its namespaces and its forwarding process.
struct Setup {
    name: String,
    kind: Kind,
    n: Names,
    /// PID of the forwarding process (0: none, the kernel forwards).
    pid: u32,
}

/// Namespace names of one setup.
struct Names {
    red: String,
    blue: String,
    wan: String,
    sw: String,
}

fn names(tag: &str) -> Names {
    Names {
        red: format!("{tag}-red"),
        blue: format!("{tag}-blue"),
        wan: format!("{tag}-wan"),
        sw: format!("{tag}-sw"),
    }
}

/// A vswitch variant from `--variant NAME:key=value,key=value`.
#[derive(Clone, Debug)]
struct Variant {
    name: String,
    keys: Vec<(String, String)>,
}

fn parse_variant(s: &str) -> Result<Variant, String> {
    let (name, rest) = s
        .split_once(':')
        .ok_or("expected NAME:key=value[,key=value...], e.g. busy:busy_poll_us=50000")?;
    let name_ok = (1..=12).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !name_ok || ["kernel", "vswitch", "ovs"].contains(&name) {
        return Err(format!(
            "variant name {name:?}: 1-12 of [A-Za-z0-9_-], not kernel/vswitch/ovs"
        ));
    }
    let mut keys = Vec::new();
    for kv in rest.split(',').filter(|x| !x.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("{kv:?}: expected key=value"))?;
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            return Err(format!("{k:?} is not a [switch] key"));
        }
        keys.push((k.to_string(), v.to_string()));
    }
    if keys.is_empty() {
        return Err("a variant needs at least one key=value".into());
    }
    Ok(Variant {
        name: name.to_string(),
        keys,
    })
}

/// A value as a TOML literal: numbers, booleans, quoted strings and arrays
/// stay as written, anything else becomes a string (`io=ring` → `io = "ring"`).
fn toml_value(v: &str) -> String {
    let literal = v.parse::<i64>().is_ok()
        || v.parse::<f64>().is_ok()
        || v == "true"
        || v == "false"
        || v.starts_with('"')
        || v.starts_with('[');
    if literal {
        v.to_string()
    } else {
        format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// The hosts of the seed topology: red, blue, wan and the switch's namespace,
/// with the veth pairs whose switch-side ends (`veth-*-br`) sit in `sw`, up.
fn build_hosts(n: &Names, cleanup: &Cleanup) {
    for ns in [&n.red, &n.blue, &n.wan, &n.sw] {
        sh_ok(&["ip", "netns", "add", ns]);
        cleanup.add_netns(ns);
        sh_ok(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    let sw = n.sw.as_str();
    for (ns, addr, short, gw) in [
        (&n.red, RED, "red", Some("192.168.15.5")),
        (&n.blue, BLUE, "blue", Some("192.168.15.5")),
        (&n.wan, WAN, "wan", None),
    ] {
        let br_end = format!("veth-{short}-br");
        let end = format!("veth-{short}");
        sh_ok(&[
            "ip", "-n", sw, "link", "add", &br_end, "type", "veth", "peer", "name", &end, "netns",
            ns,
        ]);
        sh_ok(&["ip", "-n", sw, "link", "set", &br_end, "up"]);
        sh_ok(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &end,
        ]);
        sh_ok(&["ip", "-n", ns, "link", "set", &end, "up"]);
        if let Some(gw) = gw {
            sh_ok(&["ip", "-n", ns, "route", "add", "default", "via", gw]);
        }
    }
    // IPv6 for the NAT66 row: the same addresses as vswitch's topology gives (no DAD).
    for (ns, short, addr, gw) in [
        (&n.red, "red", RED6, true),
        (&n.blue, "blue", BLUE6, true),
        (&n.wan, "wan", "2001:db8:113::10", false),
    ] {
        let end = format!("veth-{short}");
        let plen = format!("{addr}/64");
        sh_ok(&[
            "ip", "-n", ns, "-6", "addr", "add", &plen, "dev", &end, "nodad",
        ]);
        if gw {
            sh_ok(&[
                "ip",
                "-n",
                ns,
                "-6",
                "route",
                "add",
                "default",
                "via",
                "fd00:15::5",
                "dev",
                &end,
            ]);
        }
    }
}

/// The kernel's VXLAN reference for the multi-host row: two "hosts", each
/// a Linux `vxlan` device and a bridge with one namespace, on an underlay
/// bridge (10.200.0.0/24, MTU 1500; overlay 1450), as host C of
/// `vswitch demo multihost` but on both sides. Returns (sender, receiver
/// address) namespaces: `{t}-n1` sends to 192.168.60.2 in `{t}-n2`.
fn build_kernel_vxlan(t: &str, cleanup: &Cleanup) -> String {
    let ul = format!("{t}-ul");
    for ns in ["ul", "h1", "h2", "n1", "n2"] {
        let ns = format!("{t}-{ns}");
        sh_ok(&["ip", "netns", "add", &ns]);
        cleanup.add_netns(&ns);
        sh_ok(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
    }
    let run = |line: String| {
        let w: Vec<&str> = line.split_whitespace().collect();
        sh_ok(&w);
    };
    run(format!("ip -n {ul} link add ulbr type bridge"));
    run(format!("ip -n {ul} link set ulbr up"));
    for h in 1..=2 {
        let (hn, nn) = (format!("{t}-h{h}"), format!("{t}-n{h}"));
        let other = 3 - h;
        run(format!(
            "ip -n {ul} link add ul{h} type veth peer name ul0 netns {hn}"
        ));
        run(format!("ip -n {ul} link set ul{h} master ulbr up"));
        run(format!("ip -n {hn} addr add 10.200.0.{h}/24 dev ul0"));
        run(format!("ip -n {hn} link set ul0 up"));
        let (local, remote) = (format!("10.200.0.{h}"), format!("10.200.0.{other}"));
        let k = switch::multihost::KernelVtep {
            host: &hn,
            endpoint: &nn,
            veth: "sw-n",
            vni: 42,
            port: 4789,
            local: &local,
            remotes: &[&remote],
            address: &format!("192.168.60.{h}/24"),
            gateway: None,
        };
        for line in k.commands() {
            run(line);
        }
    }
    format!("{t}-n1")
}

/// The kernel reference: bridge + iptables inside private namespaces.
fn build_kernel(n: &Names, cleanup: &Cleanup) {
    build_hosts(n, cleanup);
    let sw = n.sw.as_str();
    sh_ok(&["ip", "-n", sw, "link", "add", "v-net-0", "type", "bridge"]);
    sh_ok(&["ip", "-n", sw, "link", "set", "v-net-0", "up"]);
    sh_ok(&[
        "ip",
        "-n",
        sw,
        "addr",
        "add",
        "192.168.15.5/24",
        "dev",
        "v-net-0",
    ]);
    for br_end in ["veth-red-br", "veth-blue-br"] {
        sh_ok(&["ip", "-n", sw, "link", "set", br_end, "master", "v-net-0"]);
    }
    sh_ok(&[
        "ip",
        "-n",
        sw,
        "addr",
        "add",
        "203.0.113.1/24",
        "dev",
        "veth-wan-br",
    ]);
    // Inside the private bridge namespace only: forwarding and the tutorial's NAT rules.
    let ipt = |args: &[&str]| {
        let mut a = vec!["ip", "netns", "exec", sw];
        a.extend_from_slice(args);
        sh_ok(&a);
    };
    ipt(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    // IPv6: the bridge and uplink addresses, forwarding and `ip6tables` MASQUERADE.
    sh_ok(&[
        "ip",
        "-n",
        sw,
        "-6",
        "addr",
        "add",
        "fd00:15::5/64",
        "dev",
        "v-net-0",
        "nodad",
    ]);
    sh_ok(&[
        "ip",
        "-n",
        sw,
        "-6",
        "addr",
        "add",
        "2001:db8:113::1/64",
        "dev",
        "veth-wan-br",
        "nodad",
    ]);
    ipt(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    ipt(&[
        "ip6tables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "fd00:15::/64",
        "-j",
        "MASQUERADE",
    ]);
    ipt(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "192.168.15.0/24",
        "-j",
        "MASQUERADE",
    ]);
    ipt(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-p",
        "tcp",
        "--dport",
        "80",
        "-j",
        "DNAT",
        "--to-destination",
        "192.168.15.2:80",
    ]);
}

fn vswitch_toml(n: &Names, tag: &str, keys: &[(String, String)]) -> String {
    let extra: String = keys
        .iter()
        .map(|(k, v)| format!("{k} = {}\n", toml_value(v)))
        .collect();
    format!(
        r#"name = "{tag}"
[switch]
netns = "{sw}"
{extra}[[namespace]]
name = "{red}"
address = ["{RED}/24", "{RED6}/64"]
gateway = ["192.168.15.5", "fd00:15::5"]
ifname = "veth-red"
switch_ifname = "veth-red-br"
[[namespace]]
name = "{blue}"
address = ["{BLUE}/24", "{BLUE6}/64"]
gateway = ["192.168.15.5", "fd00:15::5"]
ifname = "veth-blue"
switch_ifname = "veth-blue-br"
[gateway]
address = ["192.168.15.5/24", "fd00:15::5/64"]
[uplink]
netns = "{wan}"
address = ["203.0.113.1/24", "2001:db8:113::1/64"]
peer_addresses = ["{WAN}/24", "{WAN6}/64"]
ifname = "veth-wan"
switch_ifname = "veth-wan-br"
[[masquerade]]
source = "192.168.15.0/24"
[[masquerade]]
source = "fd00:15::/64"
[[dnat]]
protocol = "tcp"
port = 80
to = "192.168.15.2:80"
[nat]
# The kernel's MASQUERADE has no per-host rate limit: measure on the same footing.
new_flows_per_host = 0
"#,
        sw = n.sw,
        red = n.red,
        blue = n.blue,
        wan = n.wan
    )
}

/// Start vswitch (a child of this harness running `vswitch run`'s code) on
/// the seed topology with `keys` in `[switch]`; returns its process once its
/// control socket answers.
fn start_vswitch(
    n: &Names,
    tag: &str,
    keys: &[(String, String)],
    cleanup: &Cleanup,
) -> Result<Bg, String> {
    let topo_path = std::env::temp_dir().join(format!("{tag}.toml"));
    std::fs::write(&topo_path, vswitch_toml(n, tag, keys)).map_err(|e| e.to_string())?;
    cleanup.add_file(&topo_path);
    for ns in [&n.red, &n.blue, &n.wan, &n.sw] {
        cleanup.add_netns(ns);
    }
    let sock = std::env::temp_dir().join(format!("{tag}.sock"));
    cleanup.add_file(&sock);
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let vs = Bg::spawn(
        std::process::Command::new(&exe)
            .arg("__vswitch")
            .arg(&topo_path)
            .arg(&sock),
    );
    cleanup.add_pid(vs.pid());
    let deadline = Instant::now() + Duration::from_secs(30);
    while switch::control::query(&sock, "stats").is_err() {
        if Instant::now() > deadline {
            return Err("vswitch did not come up within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(vs)
}

/// A private OVS: its own database, run directory, pidfiles and sockets in
/// `dir`, both daemons children of this harness running in the switch's
/// namespace, ended by PID (SIGTERM) and the directory removed at the end.
struct Ovs {
    // Declared first: dropped (stopped) before the database.
    vswitchd: Bg,
    _db: Bg,
    dir: PathBuf,
}

impl Drop for Ovs {
    /// Ask both daemons to exit through their own control sockets (they
    /// inherit the harness's blocked SIGTERM); the `Bg` guards then reap
    /// them, or kill them by PID if they did not exit.
    fn drop(&mut self) {
        for ctl in ["ovs-vswitchd.ctl", "ovsdb-server.ctl"] {
            sh(
                &[
                    "ovs-appctl",
                    "-t",
                    &self.dir.join(ctl).to_string_lossy(),
                    "exit",
                ],
                Duration::from_secs(10),
            );
        }
    }
}

const OVS_GW_LAN: &str = "02:00:00:00:00:05";
const OVS_GW_WAN: &str = "02:00:00:00:01:01";

/// The trimmed contents of `/sys/class/net/{ifname}/{file}` seen from `ns`.
fn sysfs(ns: &str, ifname: &str, file: &str) -> String {
    sh(
        &[
            "ip",
            "netns",
            "exec",
            ns,
            "cat",
            &format!("/sys/class/net/{ifname}/{file}"),
        ],
        Duration::from_secs(10),
    )
    .trim()
    .to_string()
}

fn mac_of(ns: &str, ifname: &str) -> String {
    sysfs(ns, ifname, "address")
}

/// OpenFlow flows doing the seed's job: L2 switching (NORMAL) between red
/// and blue; the gateway's ARP answers; routing to/from wan with
/// `ct(commit,nat(src=203.0.113.1))` for MASQUERADE and a DNAT of tcp/80 to
/// blue. Host MACs are static (read from the namespaces), not resolved by ARP.
fn ovs_flows(red: &str, blue: &str, wan: &str) -> String {
    let (gl, gw) = (OVS_GW_LAN, OVS_GW_WAN);
    let hex = |m: &str| m.replace(':', "");
    let arp_reply = |mac: &str, ip: &str| {
        format!(
            "move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],mod_dl_src:{mac},load:0x2->NXM_OF_ARP_OP[],\
             move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],load:0x{}->NXM_NX_ARP_SHA[],\
             move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],load:{ip}->NXM_OF_ARP_SPA[],in_port",
            hex(mac)
        )
    };
    let to_wan = format!("mod_dl_src:{gw},mod_dl_dst:{wan},dec_ttl,output:3");
    let to_red = format!("mod_dl_src:{gl},mod_dl_dst:{red},dec_ttl,output:1");
    let to_blue = format!("mod_dl_src:{gl},mod_dl_dst:{blue},dec_ttl,output:2");
    let lan_arp = arp_reply(gl, "0xc0a80f05");
    let wan_arp = arp_reply(gw, "0xcb007101");
    format!(
        "table=0,priority=100,arp,in_port=1,arp_op=1,arp_tpa=192.168.15.5 actions={lan_arp}
table=0,priority=100,arp,in_port=2,arp_op=1,arp_tpa=192.168.15.5 actions={lan_arp}
table=0,priority=100,arp,in_port=3,arp_op=1,arp_tpa=203.0.113.1 actions={wan_arp}
table=0,priority=90,ip,in_port=1,dl_dst={gl} actions=ct(table=1,zone=1,nat)
table=0,priority=90,ip,in_port=2,dl_dst={gl} actions=ct(table=1,zone=1,nat)
table=0,priority=90,ip,in_port=3,dl_dst={gw},nw_dst=203.0.113.1 actions=ct(table=2,zone=1,nat)
table=0,priority=50,in_port=3 actions=drop
table=0,priority=10 actions=NORMAL
table=1,priority=100,ct_state=+new+trk,ip,nw_src=192.168.15.0/24,nw_dst=203.0.113.0/24 actions=ct(commit,zone=1,nat(src=203.0.113.1)),{to_wan}
table=1,priority=90,ct_state=+est+trk,ip,nw_dst=203.0.113.0/24 actions={to_wan}
table=1,priority=90,ct_state=+rel+trk,ip,nw_dst=203.0.113.0/24 actions={to_wan}
table=2,priority=100,ct_state=+est+trk,ip,nw_dst={RED} actions={to_red}
table=2,priority=100,ct_state=+rel+trk,ip,nw_dst={RED} actions={to_red}
table=2,priority=100,ct_state=+est+trk,ip,nw_dst={BLUE} actions={to_blue}
table=2,priority=100,ct_state=+rel+trk,ip,nw_dst={BLUE} actions={to_blue}
table=2,priority=90,ct_state=+new+trk,tcp,tp_dst=80 actions=ct(commit,zone=1,nat(dst={BLUE}:80)),{to_blue}
"
    )
}

/// Build the hosts and start a private OVS userspace switch on them.
fn start_ovs(n: &Names, tag: &str, cleanup: &Cleanup) -> Result<Ovs, String> {
    build_hosts(n, cleanup);
    let dir = std::env::temp_dir().join(format!("{tag}-ovs"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    cleanup.add_dir(&dir);
    let d = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let env = |c: &mut std::process::Command| {
        for v in ["OVS_RUNDIR", "OVS_LOGDIR", "OVS_DBDIR", "OVS_SYSCONFDIR"] {
            c.env(v, &dir);
        }
    };
    let run = |args: &[&str]| -> Result<(), String> {
        let mut c = std::process::Command::new(args[0]);
        c.args(&args[1..]).stdin(std::process::Stdio::null());
        env(&mut c);
        let o = c.output().map_err(|e| format!("{}: {e}", args[0]))?;
        if o.status.success() {
            Ok(())
        } else {
            Err(format!(
                "`{}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
    };
    // The daemons' own stderr goes to the private directory, beside their logs.
    let log = |p: &str| {
        std::fs::File::create(p)
            .map(std::process::Stdio::from)
            .unwrap_or_else(|_| std::process::Stdio::null())
    };
    let schema = "/usr/share/openvswitch/vswitch.ovsschema";
    run(&["ovsdb-tool", "create", &d("conf.db"), schema])?;
    let db_remote = format!("punix:{}", d("db.sock"));
    let db = format!("unix:{}", d("db.sock"));
    let mut c = std::process::Command::new("ip");
    c.args(["netns", "exec", &n.sw, "ovsdb-server", &d("conf.db")])
        .arg(format!("--remote={db_remote}"))
        .arg(format!("--pidfile={}", d("ovsdb-server.pid")))
        .arg(format!("--unixctl={}", d("ovsdb-server.ctl")))
        .arg(format!("--log-file={}", d("ovsdb-server.log")))
        .args(["--no-chdir", "-vconsole:off"]);
    env(&mut c);
    let db_proc = Bg::spawn_to(&mut c, log(&d("ovsdb-server.stderr")));
    cleanup.add_pid(db_proc.pid());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.join("db.sock").exists() {
        if Instant::now() > deadline {
            return Err("ovsdb-server did not come up within 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Userspace TSO: without it OVS cannot pass the veths' checksum-offloaded
    // TCP at all (it does not fill in partial checksums), and offloads stay
    // at their defaults for every setup.
    run(&[
        "ovs-vsctl",
        &format!("--db={db}"),
        "--no-wait",
        "init",
        "--",
        "set",
        "Open_vSwitch",
        ".",
        "other_config:userspace-tso-enable=true",
    ])?;
    let mut c = std::process::Command::new("ip");
    c.args(["netns", "exec", &n.sw, "ovs-vswitchd", &db])
        .arg(format!("--pidfile={}", d("ovs-vswitchd.pid")))
        .arg(format!("--unixctl={}", d("ovs-vswitchd.ctl")))
        .arg(format!("--log-file={}", d("ovs-vswitchd.log")))
        .args(["--no-chdir", "-vconsole:off"]);
    env(&mut c);
    let vswitchd = Bg::spawn_to(&mut c, log(&d("ovs-vswitchd.stderr")));
    cleanup.add_pid(vswitchd.pid());
    let vsctl = |args: &[&str]| {
        let db_arg = format!("--db={db}");
        let mut a = vec!["ovs-vsctl", db_arg.as_str(), "--timeout=30"];
        a.extend_from_slice(args);
        run(&a)
    };
    vsctl(&[
        "add-br",
        "br0",
        "--",
        "set",
        "bridge",
        "br0",
        "datapath_type=netdev",
        "fail_mode=secure",
    ])?;
    for (port, ofport) in [
        ("veth-red-br", "1"),
        ("veth-blue-br", "2"),
        ("veth-wan-br", "3"),
    ] {
        let req = format!("ofport_request={ofport}");
        let mut a = vec!["add-port", "br0", port];
        // wan in a VLAN of its own: NORMAL switching never floods LAN frames to it.
        if port == "veth-wan-br" {
            a.push("tag=99");
        }
        a.extend_from_slice(&["--", "set", "interface", port, &req]);
        vsctl(&a)?;
    }
    let flows = ovs_flows(
        &mac_of(&n.red, "veth-red"),
        &mac_of(&n.blue, "veth-blue"),
        &mac_of(&n.wan, "veth-wan"),
    );
    std::fs::write(dir.join("flows"), flows).map_err(|e| e.to_string())?;
    let mgmt = format!("unix:{}", d("br0.mgmt"));
    run(&["ovs-ofctl", "del-flows", &mgmt])?;
    run(&["ovs-ofctl", "add-flows", &mgmt, &d("flows")])?;
    Ok(Ovs {
        vswitchd,
        _db: db_proc,
        dir,
    })
}

/// iperf3 from `ns` to `dst` for `secs` with `streams`; Gbit/s received.
fn iperf(ns: &str, dst: &str, secs: u64, streams: u32) -> f64 {
    let out = sh(
        &[
            "ip",
            "netns",
            "exec",
            ns,
            "iperf3",
            "-c",
            dst,
            "-t",
            &secs.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
            "--connect-timeout",
            "3000",
        ],
        Duration::from_secs(secs + 20),
    );
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .unwrap_or(f64::NAN)
}

fn counter(ns: &str, ifname: &str, name: &str) -> u64 {
    sysfs(ns, ifname, &format!("statistics/{name}"))
        .parse()
        .unwrap_or(0)
}

/// 64-byte frames red → blue for `secs` from trafgen (an AF_PACKET TX ring,
/// one core, no gap): (offered, forwarded) frames per second. Offered is what
/// left red's interface (sent + dropped at the veth), forwarded what blue's
/// interface received.
fn frame_rate(n: &Names, secs: u64, cfg_dir: &Path) -> (f64, f64) {
    let byte_list = |m: &str| {
        m.split(':')
            .map(|h| format!("0x{h}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let (src, dst) = (mac_of(&n.red, "veth-red"), mac_of(&n.blue, "veth-blue"));
    // Ethernet + IPv4 + UDP to blue's discard port, 60 bytes (64 on the wire with FCS).
    let cfg = format!(
        "{{ {}, {}, 0x08,0x00, 0x45,0,0,46, 0,0,0x40,0, 64,17, csumip(14,33), 192,168,15,1, 192,168,15,2, \
         0x30,0x39, 0,9, 0,26, 0,0, fill(0,18) }}\n",
        byte_list(&dst),
        byte_list(&src)
    );
    let cfg_path = cfg_dir.join(format!("{}.trafgen", n.red));
    if std::fs::write(&cfg_path, cfg).is_err() {
        return (f64::NAN, f64::NAN);
    }
    let offered =
        || counter(&n.red, "veth-red", "tx_packets") + counter(&n.red, "veth-red", "tx_dropped");
    let (o0, f0) = (offered(), counter(&n.blue, "veth-blue", "rx_packets"));
    sh(
        &[
            "ip",
            "netns",
            "exec",
            &n.red,
            // SIGKILL: the harness's children inherit its blocked SIGINT/SIGTERM.
            "timeout",
            "-s",
            "KILL",
            &secs.to_string(),
            "trafgen",
            "-i",
            &cfg_path.to_string_lossy(),
            "-o",
            "veth-red",
            "-P",
            "1",
            // Touch no sysctl and no IRQ affinity.
            "--no-sock-mem",
            "-Q",
        ],
        Duration::from_secs(secs + 15),
    );
    std::thread::sleep(Duration::from_millis(300));
    let (o1, f1) = (offered(), counter(&n.blue, "veth-blue", "rx_packets"));
    let _ = std::fs::remove_file(&cfg_path);
    (
        o1.saturating_sub(o0) as f64 / secs as f64,
        f1.saturating_sub(f0) as f64 / secs as f64,
    )
}

/// RTT percentiles (µs) of `count` pings at 5 ms intervals, red → blue.
fn rtt(ns: &str, count: u32) -> (f64, f64) {
    let out = sh(
        &[
            "ip",
            "netns",
            "exec",
            ns,
            "ping",
            "-i",
            "0.005",
            "-c",
            &count.to_string(),
            "-W",
            "1",
            BLUE,
        ],
        Duration::from_secs(30),
    );
    let mut v: Vec<f64> = out
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .map(|ms| ms * 1000.0)
        .collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (pct(0.5), pct(0.99))
}

/// New TCP connections per second red → wan through the NAT (client closes with RST).
fn conn_rate(n: &Names, secs: u64) -> f64 {
    let wan = netns_setup::setup::open_netns(&n.wan).expect("wan");
    let red = netns_setup::setup::open_netns(&n.red).expect("red");
    let addr: SocketAddr = format!("{WAN}:5999").parse().unwrap();
    let listener = netns_setup::netns::in_netns(Some(&wan), || TcpListener::bind(addr))
        .expect("enter wan")
        .expect("listen in wan");
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let server = std::thread::spawn(move || {
        while !st.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((c, _)) => drop(c),
                Err(_) => std::thread::sleep(Duration::from_micros(50)),
            }
        }
    });
    let done = Arc::new(AtomicU64::new(0));
    let d = done.clone();
    netns_setup::netns::in_netns(Some(&red), move || {
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                let _ = nix::sys::socket::setsockopt(
                    &s,
                    nix::sys::socket::sockopt::Linger,
                    &libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    },
                );
                d.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
    .expect("enter red");
    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    done.load(Ordering::Relaxed) as f64 / secs as f64
}

/// One measurement: a value per round for each setup (same index as the setups).
struct Row {
    key: &'static str,
    name: &'static str,
    unit: &'static str,
    higher_is_better: bool,
    /// Whether a ratio to the kernel means something for this row.
    ratio: bool,
    values: Vec<Vec<f64>>,
}

fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(|a, b| a.total_cmp(b));
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// Median, min and max of the per-round ratios `v[r] / k[r]` (NaN when none is finite).
fn ratios(k: &[f64], v: &[f64]) -> (f64, f64, f64) {
    let r: Vec<f64> = k
        .iter()
        .zip(v)
        .map(|(k, v)| v / k)
        .filter(|x| x.is_finite())
        .collect();
    if r.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(&r), lo, hi)
}

/// The harness's options (parsed with clap like the other binaries: `--help`
/// prints usage and exits 0, a bad value exits 2 before anything is built).
#[derive(clap::Parser)]
#[command(
    name = "e2e",
    about = "End-to-end benchmark: vswitch (default configuration, plus any variants) against the kernel bridge + iptables, and optionally OVS userspace, on the seed topology in private namespaces, interleaved (needs root)"
)]
struct Opts {
    /// Rounds; each measures every setup, interleaved (medians are reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    rounds: u32,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=3600))]
    secs: u64,
    /// Directory for e2e.md, e2e.json and e2e.svg.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Also measure vswitch with these `[switch]` keys, as NAME:key=value[,key=value...]
    /// (repeatable), e.g. `busy:busy_poll_us=50000`, `ring:io=ring`, `w2:workers=2`.
    #[arg(long = "variant", value_name = "NAME:KEY=VALUE,...", value_parser = parse_variant)]
    variants: Vec<Variant>,
    /// Peers measured alongside: `ovs` (OVS userspace, datapath netdev, AF_PACKET ports, ct(nat) flows; needs openvswitch-switch).
    #[arg(long, value_delimiter = ',', value_parser = ["ovs"])]
    peers: Vec<String>,
    /// Install missing Debian packages (iperf3, iputils-ping, iptables, netsniff-ng, and
    /// openvswitch-switch with `--peers ovs`) with apt-get; no service is started.
    #[arg(long)]
    install: bool,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__vswitch") {
        // The switch runs in a child process of this harness (same code as `vswitch run`).
        let t = match netns_setup::Topology::load(Path::new(&args[2])) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("vswitch: {e}");
                std::process::exit(2);
            }
        };
        let opts = switch::daemon::RunOptions {
            keep: false,
            socket: Some(PathBuf::from(&args[3])),
            file: Some(PathBuf::from(&args[2])),
            metrics: None,
            // No periodic state saves during measurements.
            save_interval: Some(std::time::Duration::ZERO),
            ..switch::daemon::RunOptions::default()
        };
        if let Err(e) = switch::daemon::run(&t, &opts) {
            eprintln!("vswitch: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let opts = <Opts as clap::Parser>::parse();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("e2e: needs root (it builds namespaces); run it with sudo");
        std::process::exit(2);
    }
    let rounds = opts.rounds as usize;
    let secs = opts.secs;
    let out_dir = opts.out.clone();
    let with_ovs = opts.peers.iter().any(|p| p == "ovs");
    let mut names_seen = std::collections::HashSet::new();
    for v in &opts.variants {
        if !names_seen.insert(v.name.clone()) {
            eprintln!("e2e: variant name {:?} given twice", v.name);
            std::process::exit(2);
        }
    }
    let tag = format!("vb{}", std::process::id() % 100_000);
    // Each variant's topology must load before anything is built (exit 2 otherwise).
    for (i, v) in opts.variants.iter().enumerate() {
        let path = std::env::temp_dir().join(format!("{tag}-check{i}.toml"));
        let _ = std::fs::write(&path, vswitch_toml(&names("check"), "check", &v.keys));
        let r = netns_setup::Topology::load(&path);
        let _ = std::fs::remove_file(&path);
        if let Err(e) = r {
            eprintln!("e2e: variant {}: {e}", v.name);
            std::process::exit(2);
        }
    }
    let mut tools = vec![
        ("iperf3", "iperf3"),
        ("ping", "iputils-ping"),
        ("iptables", "iptables"),
        ("trafgen", "netsniff-ng"),
    ];
    if with_ovs {
        tools.extend([
            ("ovs-vswitchd", "openvswitch-switch"),
            ("ovsdb-server", "openvswitch-switch"),
        ]);
    }
    benches::require_tools(&tools, opts.install);

    let cleanup = Cleanup::install();
    let tmp = std::env::temp_dir().join(format!("{tag}-work"));
    std::fs::create_dir_all(&tmp).expect("work dir");
    cleanup.add_dir(&tmp);
    let mut setups = Vec::new();
    let mut procs: Vec<Bg> = Vec::new();
    let mut ovs: Option<Ovs> = None;
    let kn = names(&format!("{tag}k"));
    eprintln!("e2e: building the kernel reference (bridge + iptables) in {tag}k-*");
    build_kernel(&kn, &cleanup);
    setups.push(Setup {
        name: "kernel".into(),
        kind: Kind::Kernel,
        n: kn,
        pid: 0,
    });
    let mut vswitches = vec![Variant {
        name: "vswitch".into(),
        keys: vec![],
    }];
    vswitches.extend(opts.variants.iter().cloned());
    for (i, v) in vswitches.into_iter().enumerate() {
        let t = format!("{tag}v{i}");
        let n = names(&t);
        eprintln!(
            "e2e: starting vswitch `{}` ({}) in {t}-*",
            v.name,
            describe_keys(&v.keys)
        );
        let vs = start_vswitch(&n, &t, &v.keys, &cleanup).unwrap_or_else(|e| {
            eprintln!("e2e: vswitch `{}`: {e}", v.name);
            benches::cleanup_now();
            std::process::exit(1);
        });
        setups.push(Setup {
            name: v.name,
            kind: Kind::Vswitch(v.keys),
            n,
            pid: vs.pid(),
        });
        procs.push(vs);
    }
    if with_ovs {
        let t = format!("{tag}o");
        let n = names(&t);
        eprintln!("e2e: starting a private OVS userspace switch in {t}-*");
        match start_ovs(&n, &t, &cleanup) {
            Ok(o) => {
                setups.push(Setup {
                    name: "ovs".into(),
                    kind: Kind::Ovs,
                    n,
                    pid: o.vswitchd.pid(),
                });
                ovs = Some(o);
            }
            Err(e) => {
                eprintln!("e2e: OVS: {e}");
                benches::cleanup_now();
                std::process::exit(1);
            }
        }
    }
    // The multi-host row: the kernel's VXLAN on both sides, and two vswitch
    // hosts (A: red, B: blue) of `vswitch demo multihost`.
    let kx = format!("{tag}kx");
    eprintln!(
        "e2e: building two kernel VXLAN hosts in {kx}-* and two vswitch VXLAN hosts in {tag}mx-*"
    );
    let kx_from = build_kernel_vxlan(&kx, &cleanup);
    let exe = std::env::current_exe().expect("current_exe");
    let mx = format!("{tag}mx");
    for n in ["ul", "a", "b", "c", "green", "red", "blue", "wan"] {
        cleanup.add_netns(&format!("{mx}-{n}"));
    }
    let world = switch::multihost::World::build_with(&mx, &tmp, &|file, sock| {
        let mut c = std::process::Command::new(&exe);
        c.arg("__vswitch").arg(file).arg(sock);
        c
    })
    .unwrap_or_else(|e| {
        eprintln!("e2e: the vswitch VXLAN hosts: {e}");
        benches::cleanup_now();
        std::process::exit(1);
    });
    for h in 0..2 {
        cleanup.add_pid(world.pid(h));
    }
    let mut servers = Vec::new();
    for (ns, dst, from) in [
        (format!("{kx}-n2"), "192.168.60.2", kx_from.clone()),
        (world.ns("blue"), switch::multihost::BLUE, world.ns("red")),
    ] {
        let b = Bg::spawn_helper(
            std::process::Command::new("ip")
                .args(["netns", "exec", &ns, "iperf3", "-s", "-p", "5201"]),
        );
        cleanup.add_helper(b.pid());
        servers.push(b);
        sh(
            &[
                "ip", "netns", "exec", &from, "ping", "-c", "2", "-i", "0.2", dst,
            ],
            Duration::from_secs(10),
        );
    }
    for s in &setups {
        let n = &s.n;
        for ns in [&n.blue, &n.wan] {
            let b = Bg::spawn_helper(
                std::process::Command::new("ip")
                    .args(["netns", "exec", ns, "iperf3", "-s", "-p", "5201"]),
            );
            cleanup.add_helper(b.pid());
            servers.push(b);
        }
        // Warm up ARP/NDP/FDB/NAT paths.
        for dst in [BLUE, WAN, WAN6] {
            sh(
                &[
                    "ip", "netns", "exec", &n.red, "ping", "-c", "2", "-i", "0.2", dst,
                ],
                Duration::from_secs(10),
            );
        }
    }
    std::thread::sleep(Duration::from_millis(500));

    let ns = setups.len();
    let row = |key, name, unit, higher_is_better, ratio| Row {
        key,
        name,
        unit,
        higher_is_better,
        ratio,
        values: vec![Vec::new(); ns],
    };
    let mut rows = vec![
        row("tcp1", "TCP red→blue, 1 stream", "Gbit/s", true, true),
        row("tcp4", "TCP red→blue, 4 streams", "Gbit/s", true, true),
        row("tcpnat", "TCP red→wan via NAT", "Gbit/s", true, true),
        row(
            "tcpvx",
            "TCP host A→host B over VXLAN, 1 stream",
            "Gbit/s",
            true,
            true,
        ),
        row(
            "tcpnat6",
            "TCP red→wan via NAT66 (IPv6)",
            "Gbit/s",
            true,
            true,
        ),
        row(
            "pps64",
            "64-byte frames red→blue, forwarded",
            "kframes/s",
            true,
            true,
        ),
        row(
            "pps64off",
            "  offered by the sender (trafgen)",
            "kframes/s",
            true,
            false,
        ),
        row("rtt50", "RTT p50 red→blue", "µs", false, true),
        row("rtt99", "RTT p99 red→blue", "µs", false, true),
        row("cps", "new TCP conns/s via NAT", "conn/s", true, true),
        row(
            "cpu",
            "CPU during TCP 1 stream, all cores",
            "% of a core",
            false,
            true,
        ),
        row(
            "cpusw",
            "  of which the forwarding process",
            "% of a core",
            false,
            false,
        ),
        row(
            "idle",
            "idle CPU of the forwarding process, 10 s",
            "% of a core",
            false,
            false,
        ),
    ];
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let started = Instant::now();
    for r in 0..rounds {
        // Alternate the order, so drift hits every setup alike.
        let order: Vec<usize> = if r % 2 == 0 {
            (0..ns).collect()
        } else {
            (0..ns).rev().collect()
        };
        for &si in &order {
            let s = &setups[si];
            let n = &s.n;
            let push = |rows: &mut Vec<Row>, key: &str, v: f64| {
                let row = rows.iter_mut().find(|x| x.key == key).expect("row");
                eprintln!(
                    "  [round {}/{rounds}] {:<8} {:<42} {:>10.2} {}",
                    r + 1,
                    s.name,
                    row.name,
                    v,
                    row.unit
                );
                row.values[si].push(v);
            };
            let (busy0, total0) = cpu_busy_jiffies();
            let p0 = proc_cpu_ns(s.pid);
            let t0 = Instant::now();
            let g = iperf(&n.red, BLUE, secs, 1);
            let el = t0.elapsed().as_secs_f64();
            let (busy1, total1) = cpu_busy_jiffies();
            let p1 = proc_cpu_ns(s.pid);
            let sys_pct = if total1 > total0 {
                (busy1 - busy0) as f64 / (total1 - total0) as f64 * ncpu as f64 * 100.0
            } else {
                f64::NAN
            };
            let sw_pct = p1.saturating_sub(p0) as f64 / 1e9 / el * 100.0;
            push(&mut rows, "tcp1", g);
            push(&mut rows, "cpu", sys_pct);
            push(&mut rows, "cpusw", sw_pct);
            push(&mut rows, "tcp4", iperf(&n.red, BLUE, secs, 4));
            push(&mut rows, "tcpnat", iperf(&n.red, WAN, secs, 1));
            // Kernel VXLAN both sides vs vswitch both sides (the default vswitch only).
            let vx = match (&s.kind, s.name.as_str()) {
                (Kind::Kernel, _) => iperf(&kx_from, "192.168.60.2", secs, 1),
                (Kind::Vswitch(_), "vswitch") => {
                    iperf(&world.ns("red"), switch::multihost::BLUE, secs, 1)
                }
                _ => f64::NAN,
            };
            push(&mut rows, "tcpvx", vx);
            // OVS's flows here translate IPv4 only (`ct(nat)` on `ip`): no IPv6 row for it.
            let v6 = if matches!(s.kind, Kind::Ovs) {
                f64::NAN
            } else {
                iperf(&n.red, WAN6, secs, 1)
            };
            push(&mut rows, "tcpnat6", v6);
            let (offered, fwd) = frame_rate(n, secs, &tmp);
            push(&mut rows, "pps64", fwd / 1000.0);
            push(&mut rows, "pps64off", offered / 1000.0);
            let (p50, p99) = rtt(&n.red, 400);
            push(&mut rows, "rtt50", p50);
            push(&mut rows, "rtt99", p99);
            push(&mut rows, "cps", conn_rate(n, secs));
        }
        // Idle: every forwarding process over the same window, no traffic anywhere.
        std::thread::sleep(Duration::from_secs(2));
        let c0: Vec<u64> = setups.iter().map(|s| proc_cpu_ns(s.pid)).collect();
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(IDLE_SECS));
        let el = t0.elapsed().as_secs_f64();
        let idle = rows.iter_mut().find(|x| x.key == "idle").expect("row");
        for (si, s) in setups.iter().enumerate() {
            let pct = proc_cpu_ns(s.pid).saturating_sub(c0[si]) as f64 / 1e9 / el * 100.0;
            eprintln!(
                "  [round {}/{rounds}] {:<8} {:<42} {:>10.2} % of a core",
                r + 1,
                s.name,
                idle.name,
                pct
            );
            idle.values[si].push(pct);
        }
        eprintln!(
            "e2e: round {}/{rounds} done after {:.0} s",
            r + 1,
            started.elapsed().as_secs_f64()
        );
    }
    drop(servers);
    drop(world);
    drop(procs);
    drop(ovs);

    // Report.
    let kernel_release = sh(&["uname", "-r"], Duration::from_secs(5))
        .trim()
        .to_string();
    let mut table = String::from("| measurement (median of rounds) |");
    let mut sep = String::from("|---|");
    for s in &setups {
        table += &format!(" {} |", s.name);
        sep += "---|";
    }
    table += &format!("\n{sep}\n");
    let mut json_rows = Vec::new();
    for row in &rows {
        let k = &row.values[0];
        table += &format!("| {} ({}) |", row.name, row.unit);
        let mut medians = serde_json::Map::new();
        let mut ratio_j = serde_json::Map::new();
        let mut vals = serde_json::Map::new();
        for (si, s) in setups.iter().enumerate() {
            let v = &row.values[si];
            let m = median(v);
            let (rm, lo, hi) = ratios(k, v);
            let cell = if si == 0 || !row.ratio || !rm.is_finite() {
                fmt(m)
            } else {
                format!("{} · **{rm:.2}×** ({lo:.2}–{hi:.2})", fmt(m))
            };
            table += &format!(" {cell} |");
            medians.insert(s.name.clone(), json!(m));
            vals.insert(s.name.clone(), json!(v));
            if si > 0 && row.ratio {
                ratio_j.insert(s.name.clone(), json!({"median": rm, "min": lo, "max": hi}));
            }
        }
        table += "\n";
        json_rows.push(json!({
            "key": row.key, "name": row.name, "unit": row.unit,
            "higher_is_better": row.higher_is_better,
            "values": vals, "median": medians, "ratio": ratio_j,
        }));
    }
    let mut legend = String::new();
    for s in &setups {
        let what = match &s.kind {
            Kind::Kernel => {
                "bridge `v-net-0` + iptables MASQUERADE/DNAT, ip6tables MASQUERADE".to_string()
            }
            Kind::Vswitch(k) => format!("vswitch, {}", describe_keys(k)),
            Kind::Ovs => format!(
                "OVS {} userspace: datapath `netdev`, AF_PACKET (`system`) ports, userspace TSO on, OpenFlow NORMAL + `ct(nat)` flows; CPU is ovs-vswitchd's",
                ovs_version()
            ),
        };
        legend += &format!("- **{}**: {what}\n", s.name);
    }
    let setting = format!(
        "Cells: median · **median of the per-round ratios to the kernel** (min–max of those ratios). \
         {rounds} rounds, {secs} s per measurement, {ncpu} CPUs, kernel {kernel_release}, total {:.0} s.",
        started.elapsed().as_secs_f64()
    );
    let md = format!("{table}\n{legend}\n{setting}\n");
    println!("\n{md}");
    std::fs::create_dir_all(&out_dir).expect("out dir");
    let report = json!({
        "rounds": rounds, "secs": secs, "cpus": ncpu, "kernel": kernel_release,
        "setups": setups.iter().map(|s| json!({
            "name": s.name,
            "config": match &s.kind {
                Kind::Kernel => json!("kernel"),
                Kind::Vswitch(k) => json!(k.iter().map(|(a, b)| format!("{a}={b}")).collect::<Vec<_>>()),
                Kind::Ovs => json!(format!("ovs {}", ovs_version())),
            },
        })).collect::<Vec<_>>(),
        "rows": json_rows,
    });
    std::fs::write(
        out_dir.join("e2e.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .expect("write json");
    std::fs::write(out_dir.join("e2e.md"), &md).expect("write table");
    std::fs::write(out_dir.join("e2e.svg"), benches::svg_chart(&report)).expect("write svg");
    let _ = std::io::stdout().flush();
    eprintln!(
        "e2e: wrote {0}/e2e.md, {0}/e2e.json and {0}/e2e.svg",
        out_dir.display()
    );
    drop(cleanup);
}

fn describe_keys(keys: &[(String, String)]) -> String {
    if keys.is_empty() {
        "default configuration".into()
    } else {
        keys.iter()
            .map(|(k, v)| format!("`{k} = {}`", toml_value(v)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn ovs_version() -> String {
    sh(&["ovs-vswitchd", "--version"], Duration::from_secs(5))
        .split_whitespace()
        .last()
        .unwrap_or("")
        .to_string()
}

fn fmt(x: f64) -> String {
    if !x.is_finite() {
        "n/a".into()
    } else if x >= 1000.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_parse_and_render_as_switch_keys() {
        let v = parse_variant("w2:workers=2,io=ring").unwrap();
        assert_eq!(v.name, "w2");
        assert_eq!(
            v.keys,
            vec![("workers".into(), "2".into()), ("io".into(), "ring".into())]
        );
        for bad in [
            "busy",
            "kernel:a=1",
            "x:",
            "x:Key=1",
            "x:a",
            "much-too-long-name:a=1",
        ] {
            assert!(parse_variant(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(toml_value("50000"), "50000");
        assert_eq!(toml_value("true"), "true");
        assert_eq!(toml_value("ring"), "\"ring\"");
        assert_eq!(toml_value("a\"b"), "\"a\\\"b\"");
        // The rendered topology loads, with the key in [switch].
        let dir = std::env::temp_dir().join(format!("e2e-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.toml");
        let keys = vec![("busy_poll_us".to_string(), "1234".to_string())];
        std::fs::write(&path, vswitch_toml(&names("u1"), "u1", &keys)).unwrap();
        let t = netns_setup::Topology::load(&path);
        std::fs::write(
            &path,
            vswitch_toml(&names("u1"), "u1", &[("nokey".into(), "1".into())]),
        )
        .unwrap();
        let bad = netns_setup::Topology::load(&path);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            t.unwrap().switch.expect("switch").busy_poll,
            Duration::from_micros(1234)
        );
        assert!(bad.is_err());
    }

    #[test]
    fn ratios_are_medians_of_per_round_ratios() {
        let (m, lo, hi) = ratios(&[10.0, 20.0, 10.0], &[5.0, 30.0, 12.0]);
        assert_eq!((m, lo, hi), (1.2, 0.5, 1.5));
        // A round without a kernel figure (0 or NaN) does not count.
        let (m, lo, hi) = ratios(&[0.0, 4.0], &[1.0, 2.0]);
        assert_eq!((m, lo, hi), (0.5, 0.5, 0.5));
        assert!(ratios(&[0.0], &[0.0]).0.is_nan());
    }
}
