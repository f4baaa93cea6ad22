//! `vswitch run`: bring the topology up, attach the ports, forward until
//! SIGINT/SIGTERM, then remove what this run created.
//!
//! Contract: one `vswitch run` per topology name: the topology lock
//! ([`netns_setup::lock`]) is taken before anything is touched, and a second
//! run is refused naming the owner. On any start-up failure nothing this run
//! created is left behind and the error says what failed. On exit the
//! topology is removed (also one adopted from a crashed run) unless `--keep`. The worker runs on the calling thread.

use crate::control;
use crate::gateway::{GatewayConfig, UplinkConfig};
use crate::pipeline::{Pipeline, PipelineConfig, VlanPorts};
use crate::policy::{AclRule, Chain, IpNet, NoPolicy, Policy, Range, RateLimit, Reloaded};
use crate::port::{PortIo, TapPort};
use crate::stats::PortStats;
use crate::steer::Insn;
use crate::sys::PacketPort;
use crate::wire::MacAddr;
use crate::worker::{Port, Worker};
use anyhow::{Context, Result, anyhow, bail};
use nat::{DnatRule, Filtering, Ipv4Net, NatConfig, PortAlloc, Timeouts};
use netns_setup::lock::{LockError, Owner, TopologyLock};
use netns_setup::netns::in_netns;
use netns_setup::setup::open_netns;
use netns_setup::topology::{SwitchIo, UplinkKind};
use netns_setup::{EndpointKind, Topology};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::channel;

/// Options of `vswitch run`.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Leave the topology up on exit.
    pub keep: bool,
    /// Control socket path (default `/run/vswitch/TOPOLOGY.sock`).
    pub socket: Option<PathBuf>,
    /// The topology file, re-read by `vswitch reload` / SIGHUP (None: the built-in seed).
    pub file: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (in the switch's namespace).
    pub metrics: Option<std::net::SocketAddr>,
    /// The state file (default `/var/lib/vswitch/TOPOLOGY.state`, see [`crate::state`]).
    pub state_file: Option<PathBuf>,
    /// Periodic state save interval (`None`: the topology's
    /// `[switch] state_save_interval`, else [`DEFAULT_SAVE_INTERVAL`]; zero:
    /// only on exit and `vswitch upgrade`).
    pub save_interval: Option<std::time::Duration>,
}

/// Default periodic state save interval.
pub const DEFAULT_SAVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// 802.1Q roles of the ports, if any port is configured (a VLAN-aware switch).
/// Unconfigured ports are access ports of VLAN 1; the uplink belongs to VLAN 1.
pub fn vlan_ports(t: &Topology, ports: usize) -> Option<VlanPorts> {
    use netns_setup::topology::VlanMode;
    if t.switch_ports().all(|n| n.vlan == VlanMode::Unset) {
        return None;
    }
    let mut v = VlanPorts::default();
    for n in t.switch_ports() {
        let (a, m) = match &n.vlan {
            VlanMode::Unset => (Some(1), vec![1]),
            VlanMode::Access(x) => (Some(*x), vec![*x]),
            VlanMode::Trunk(l) => (None, l.clone()),
        };
        v.access.push(a);
        v.members.push(m);
    }
    for tn in &t.tunnels {
        let (a, m) = tunnel_vlan_role(tn);
        v.access.push(a);
        v.members.push(m);
    }
    while v.access.len() < ports {
        v.access.push(Some(1));
        v.members.push(vec![1]);
    }
    Some(v)
}

/// The 802.1Q role of a tunnel port on a VLAN-aware switch: an access port
/// of its VLAN (default 1), or a trunk of its VLAN→VNI map's VLANs
/// (access VLAN, member VLANs).
pub fn tunnel_vlan_role(tn: &netns_setup::topology::TunnelSpec) -> (Option<u16>, Vec<u16>) {
    if tn.vlan_vni.is_empty() {
        let x = tn.vlan.unwrap_or(1);
        (Some(x), vec![x])
    } else {
        (None, tn.vlan_vni.iter().map(|(x, _)| *x).collect())
    }
}

/// The port id `vswitch run` gives the port of namespace (or port name) `name`:
/// LAN ports in topology order, then the tunnels, then the uplink.
pub fn port_id(t: &Topology, name: &str) -> Option<usize> {
    let mut names: Vec<(String, String)> = t
        .switch_ports()
        .map(|n| {
            (
                n.name.clone(),
                n.switch_ifname.clone().unwrap_or_else(|| n.ifname.clone()),
            )
        })
        .collect();
    for tn in &t.tunnels {
        names.push((String::new(), tn.name.clone()));
    }
    if let Some(u) = &t.uplink {
        names.push((String::new(), u.port_name().to_string()));
    }
    names
        .iter()
        .position(|(ns, port)| ns == name || port == name)
}

/// What the policy needs to know of a port: its name, its namespace, whether it is a LAN port.
#[derive(Debug, Clone)]
pub struct PortInfo {
    /// Port name.
    pub name: String,
    /// Namespace of the endpoint.
    pub netns: String,
    /// LAN (switched) port, not the uplink.
    pub lan: bool,
}

impl PortInfo {
    /// What the policy needs of each of `ports`.
    pub fn of(ports: &[Port]) -> Vec<PortInfo> {
        ports
            .iter()
            .map(|p| PortInfo {
                name: p.name.clone(),
                netns: p.netns.clone(),
                lan: p.lan,
            })
            .collect()
    }
}

/// The pipeline of switch `t` over `ports` ports with `gateway` and
/// `policy`: table bounds and ageing from `[switch]`, VLAN roles if any.
fn new_pipeline<P: Policy>(
    t: &Topology,
    ports: usize,
    gateway: Option<GatewayConfig>,
    policy: P,
) -> Result<Pipeline<P>> {
    let sw = t
        .switch
        .as_ref()
        .ok_or_else(|| anyhow!("topology {:?} has no [switch]", t.name))?;
    let cfg = PipelineConfig {
        gateway,
        ports,
        fdb_max: sw.fdb_max,
        fdb_max_per_port: sw.fdb_max_per_port,
        ageing_ms: sw.ageing.as_millis() as u64,
        arp_max: sw.arp_max,
        arp_max_per_port: sw.arp_max_per_port,
        arp_suppress: sw.arp_suppress,
    };
    let mut pipeline = Pipeline::with_policy(&cfg, policy);
    if let Some(v) = vlan_ports(t, ports) {
        pipeline.vlans = Some(v);
        pipeline.fdb.set_default_vlan(1);
    }
    Ok(pipeline)
}

fn ip_net(c: netns_setup::topology::IpCidr) -> IpNet {
    match c {
        netns_setup::topology::IpCidr::V4(c) => IpNet::V4(c),
        netns_setup::topology::IpCidr::V6(c) => IpNet::V6(c),
    }
}

/// The built-in policy of `t` for ports named `ports` (the switch's port order).
pub fn build_policy(t: &Topology, ports: &[PortInfo]) -> Result<Reloaded, String> {
    let names: Vec<String> = ports.iter().map(|p| p.name.clone()).collect();
    let by_ns = |ns: &str| -> Result<usize, String> {
        ports
            .iter()
            .position(|p| p.lan && p.netns == ns)
            .ok_or_else(|| format!("namespace {ns:?} has no port on this switch"))
    };
    let mut acl = Vec::new();
    for a in &t.policy.acl {
        let in_ports = match &a.in_port {
            None => None,
            Some(v) => Some(v.iter().map(|n| by_ns(n)).collect::<Result<Vec<_>, _>>()?),
        };
        acl.push(AclRule {
            name: a.name.clone(),
            drop: a.drop,
            in_ports,
            src_mac: a.src_mac.map(MacAddr),
            dst_mac: a.dst_mac.map(MacAddr),
            vlan: a.vlan,
            ethertype: a.ethertype,
            src: a.src.map(ip_net),
            dst: a.dst.map(ip_net),
            protocol: a.protocol,
            sport: a.sport.map(|(x, y)| Range(x, y)),
            dport: a.dport.map(|(x, y)| Range(x, y)),
            tcp_flags: a.tcp_flags,
            state: a.state,
        });
    }
    let mut limits = Vec::new();
    for l in &t.policy.rate_limits {
        limits.push(RateLimit::new(
            by_ns(&l.namespace)?,
            l.packets_per_sec,
            l.bits_per_sec,
            l.burst_bytes,
        ));
    }
    let mut mirrors = vec![None; ports.len()];
    for m in &t.policy.mirrors {
        if let Some(to) = &m.to {
            mirrors[by_ns(&m.from)?] = Some(by_ns(to)?);
        }
    }
    let isolated = ports
        .iter()
        .map(|p| p.lan && t.namespaces.iter().any(|n| n.name == p.netns && n.isolated))
        .collect();
    Ok(Reloaded {
        chain: Chain::new(acl, limits, names),
        isolated,
        mirrors,
    })
}

/// `vswitch check`: what `vswitch run` would derive from a parsed `t`
/// (policy by port, VLAN roles), checked without touching the system or
/// needing root. Returns a one-line summary, or the first error.
pub fn check(t: &Topology) -> Result<String, String> {
    if t.switch.is_none() {
        return Ok(format!(
            "topology {:?}: {} namespaces, no [switch] (for `netns-setup up`; nothing for `vswitch run`)",
            t.name,
            t.namespaces.len()
        ));
    }
    let mut ports: Vec<PortInfo> = t
        .switch_ports()
        .map(|n| PortInfo {
            name: n.switch_ifname.clone().unwrap_or_else(|| n.ifname.clone()),
            netns: n.name.clone(),
            lan: true,
        })
        .collect();
    if let Some(u) = &t.uplink {
        ports.push(PortInfo {
            name: u.port_name().to_string(),
            netns: String::new(),
            lan: false,
        });
    }
    build_policy(t, &ports)?;
    Ok(format!(
        "topology {:?}: {} ports{}{}, {} ACL rules",
        t.name,
        ports.len(),
        if t.gateway.is_some() { ", gateway" } else { "" },
        if t.uplink.is_some() { ", uplink" } else { "" },
        t.policy.acl.len()
    ))
}

/// Open an AF_PACKET port on `name` (calling thread's namespace) with the
/// switch's frame I/O: `recvmmsg`/`sendmmsg` or TPACKET_V2 rings, with a
/// worker's steering program if given ([`steer_for`]).
pub fn open_packet_port(
    io: SwitchIo,
    name: &str,
    steer: Option<&[Insn]>,
) -> std::io::Result<Box<dyn PortIo + Send>> {
    Ok(match io {
        SwitchIo::Mmsg => Box::new(PacketPort::open_steered(name, steer)?),
        SwitchIo::Ring => Box::new(crate::sys::RingPort::open_steered(name, steer)?),
    })
}

/// Open the switch's ports for `t` (namespaces and links must exist).
pub fn open_ports(t: &Topology) -> Result<Vec<Port>> {
    open_ports_for(t, 0)
}

/// Open worker `w`'s sockets on the switch's ports for `t`, each with the
/// worker's steering program when `[switch] workers > 1`.
pub fn open_ports_for(t: &Topology, w: usize) -> Result<Vec<Port>> {
    let sw = t
        .switch
        .as_ref()
        .ok_or_else(|| anyhow!("topology {:?} has no [switch]", t.name))?;
    let sw_ns = match &sw.netns {
        Some(n) => Some(open_netns(n)?),
        None => None,
    };
    let mut ports = Vec::new();
    for ns in t.switch_ports() {
        let (name, kind, io): (String, &'static str, Box<dyn PortIo>) = match ns.kind {
            EndpointKind::Veth => {
                let ifname = ns.switch_ifname.clone().expect("validated");
                let steer = steer_for(t, w, &ifname);
                let p = in_netns(sw_ns.as_ref(), || {
                    open_packet_port(sw.io, &ifname, steer.as_deref())
                })?
                .with_context(|| format!("attach AF_PACKET port to {ifname}"))?;
                (ifname, "veth", p as Box<dyn PortIo>)
            }
            EndpointKind::Tap => {
                let f = open_netns(&ns.name)?;
                let p = in_netns(Some(&f), || TapPort::open(&ns.ifname))?
                    .with_context(|| format!("attach to TAP {} in {}", ns.ifname, ns.name))?;
                (ns.ifname.clone(), "tap", Box::new(p))
            }
        };
        ports.push(Port {
            name,
            netns: ns.name.clone(),
            kind,
            io,
            up: true,
            lan: true,
            isolated: ns.isolated,
            stats: PortStats::default(),
        });
    }
    for c in tunnel_configs(t)? {
        let name = c.name.clone();
        let index = ports.len();
        let p = in_netns(sw_ns.as_ref(), || crate::tunnel::VxlanPort::open(c, index))?
            .with_context(|| format!("open the underlay sockets of tunnel {name}"))?;
        ports.push(Port {
            name,
            netns: sw.netns.clone().unwrap_or_else(|| "(root)".into()),
            kind: "vxlan",
            io: Box::new(p),
            up: true,
            lan: true,
            isolated: false,
            stats: PortStats::default(),
        });
    }
    if let Some(u) = &t.uplink {
        let ifname = u.port_name().to_string();
        let steer = steer_for(t, w, &ifname);
        let p = in_netns(sw_ns.as_ref(), || {
            open_packet_port(sw.io, &ifname, steer.as_deref())
        })?
        .with_context(|| format!("attach AF_PACKET port to uplink {ifname}"))?;
        let netns = match &u.kind {
            UplinkKind::Veth { netns, .. } => netns.clone(),
            UplinkKind::Interface { .. } => sw.netns.clone().unwrap_or_else(|| "(root)".into()),
        };
        ports.push(Port {
            name: ifname,
            netns,
            kind: "uplink",
            io: p as Box<dyn PortIo>,
            up: true,
            lan: false,
            isolated: false,
            stats: PortStats::default(),
        });
    }
    Ok(ports)
}

/// The tunnel ports of `t`: each `[[tunnel]]` with its overlay MTU (given,
/// or its underlay device's MTU minus 50, read in the switch's namespace).
pub fn tunnel_configs(t: &Topology) -> Result<Vec<crate::tunnel::TunnelConfig>> {
    use netns_setup::topology::TunnelDf;
    let mut v = Vec::new();
    if t.tunnels.is_empty() {
        return Ok(v);
    }
    let sw_ns = match t.switch.as_ref().and_then(|s| s.netns.as_ref()) {
        Some(n) => Some(open_netns(n)?),
        None => None,
    };
    for tn in &t.tunnels {
        let mtu = match tn.mtu {
            Some(m) => m,
            None => {
                let l = netns_setup::setup::netlink_in(sw_ns.as_ref())?
                    .link(&tn.device)?
                    .ok_or_else(|| {
                        anyhow!(
                            "tunnel {}: underlay device {} is missing",
                            tn.name,
                            tn.device
                        )
                    })?;
                l.mtu.saturating_sub(netns_setup::setup::VXLAN_OVERHEAD)
            }
        };
        v.push(crate::tunnel::TunnelConfig {
            name: tn.name.clone(),
            local: tn.local,
            port: tn.port,
            vni: tn.vni,
            pvid: tn.vlan.unwrap_or(0),
            vlan_vni: tn.vlan_vni.clone(),
            remotes: tn.remotes.clone(),
            accept_any: tn.accept_any,
            df: match tn.df {
                TunnelDf::Unset => crate::vxlan::Df::Unset,
                TunnelDf::Set => crate::vxlan::Df::Set,
                TunnelDf::Inherit => crate::vxlan::Df::Inherit,
            },
            mtu,
        });
    }
    Ok(v)
}

/// The kernel fast path for worker 0's `ports` (see [`crate::fastpath`]):
/// loaded and attached to every AF_PACKET port in the switch's namespace, or
/// off with the reason, said once (`fastpath = "off"`, several workers,
/// BPF unavailable: no privilege, an old kernel, a verifier rejection). A
/// port it cannot attach to stays in the slow path, with a warning.
pub fn fastpath_for(t: &Topology, ports: &[Port]) -> crate::fastpath::FastPath {
    use crate::fastpath::{FastPath, OBJECT};
    use netns_setup::topology::Fastpath;
    let Some(sw) = &t.switch else {
        return FastPath::off("no [switch]");
    };
    if sw.fastpath == Fastpath::Off {
        tracing::info!("fast path off (fastpath = \"off\"): every frame goes through the switch");
        return FastPath::off("fastpath = \"off\" in the topology");
    }
    if sw.workers > 1 {
        let why = "it needs workers = 1 (each port's socket carries one filter)";
        tracing::warn!("fast path off: {why}; running in the slow path");
        return FastPath::off(why);
    }
    let loaded = match crate::sys::bpf::Loaded::load(OBJECT) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("fast path unavailable ({e}); running in the slow path");
            return FastPath::off(format!("unavailable: {e}"));
        }
    };
    let mut fp = FastPath::on(loaded, ports.len());
    match sw.netns.as_ref().map(|n| open_netns(n)) {
        Some(Err(e)) => {
            tracing::warn!("fast path unavailable ({e}); running in the slow path");
            return FastPath::off(format!("unavailable: {e}"));
        }
        Some(Ok(f)) => fp.set_netns(f),
        None => {}
    }
    let mut attached = 0;
    for (i, p) in ports.iter().enumerate() {
        if p.kind == "tap" || p.kind == "vxlan" {
            continue;
        }
        let peer = match &t.uplink {
            Some(u) if !p.lan => matches!(u.kind, UplinkKind::Veth { .. }),
            _ => p.kind == "veth",
        };
        match fp.attach_port(i, &p.name, peer, p.io.fd()) {
            Ok(()) => attached += 1,
            Err(e) => tracing::warn!("fast path: port {} stays in the slow path: {e}", p.name),
        }
    }
    tracing::info!(
        "fast path on: eBPF attached to {attached} of {} ports",
        ports.len()
    );
    fp
}

/// A secret seed for port allocation and table hashing (RFC 6056: external
/// ports must not be predictable), from the kernel's CSPRNG. Falls back to
/// the clock only if /dev/urandom cannot be read, and says so.
fn random_seed() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)) {
        Ok(()) => u64::from_ne_bytes(b),
        Err(e) => {
            tracing::warn!("/dev/urandom unreadable ({e}): NAT ports are seeded from the clock");
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            t ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15
        }
    }
}

/// The NAT configuration of `t`'s `[nat]`, `[[masquerade]]` and `[[dnat]]`
/// for the external address `external`; `seed` keys port allocation and
/// hashing (the daemon passes a secret one).
pub fn nat_config(t: &Topology, external: std::net::Ipv4Addr, seed: u64) -> NatConfig {
    let n = &t.nat;
    let mut c = nat_behaviour(t, external, seed);
    c.masquerade = n.masquerade.clone();
    c.dnat = n.dnat.iter().map(dnat_rule).collect();
    c
}

/// The NAT66 configuration: the same `[nat]` behaviour, the IPv6
/// `[[masquerade]]` sources and `[[dnat]]` forwards, on `external`.
pub fn nat_config6(
    t: &Topology,
    external: std::net::Ipv6Addr,
    seed: u64,
) -> NatConfig<std::net::Ipv6Addr> {
    let n = &t.nat;
    let mut c = nat_behaviour(t, external, seed);
    c.masquerade = n.masquerade6.clone();
    c.dnat = n.dnat6.iter().map(dnat_rule).collect();
    c
}

fn dnat_rule<A: Copy>(d: &netns_setup::topology::DnatSpec<A>) -> DnatRule<A> {
    DnatRule {
        proto: if d.protocol == "tcp" {
            nat::wire::proto::TCP
        } else {
            nat::wire::proto::UDP
        },
        ports: d.ports,
        to_addr: d.to_addr,
        to_port: d.to_port,
    }
}

/// `[nat]`'s behaviour (filtering, ports, bounds, timeouts) for either family.
fn nat_behaviour<A: nat::family::Family>(t: &Topology, external: A, seed: u64) -> NatConfig<A> {
    let n = &t.nat;
    let mut c = NatConfig::new(external);
    c.port_range = n.port_range;
    c.filtering = match n.filtering.as_str() {
        "endpoint-independent" => Filtering::EndpointIndependent,
        "address-and-port-dependent" => Filtering::AddressAndPortDependent,
        _ => Filtering::AddressDependent,
    };
    c.max_entries = n.max_entries;
    c.max_entries_per_host = n.max_entries_per_host;
    c.max_ports_per_host = n.max_ports_per_host;
    c.new_flows_per_host = n.new_flows_per_host;
    c.timeouts = Timeouts {
        udp: n.udp_timeout,
        tcp_established: n.tcp_established_timeout,
        tcp_transitory: n.tcp_transitory_timeout,
        icmp: n.icmp_timeout,
        ..Timeouts::default()
    };
    c.alloc = if n.port_allocation == "sequential" {
        PortAlloc::Sequential
    } else {
        PortAlloc::Random(seed)
    };
    c.hash_seed = seed.rotate_left(17);
    c
}

/// The gateway's static IPv6 routes of `t`'s `[[route]]`s: (destination, next hop).
pub fn gateway_routes6(t: &Topology) -> Vec<(nat::Ipv6Net, std::net::Ipv6Addr)> {
    t.routes6.iter().map(|r| (r.to, r.via)).collect()
}

/// The gateway's static routes of `t`'s `[[route]]`s: (destination, next hop).
pub fn gateway_routes(t: &Topology) -> Vec<(Ipv4Net, std::net::Ipv4Addr)> {
    t.routes.iter().map(|r| (r.to, r.via)).collect()
}

/// The gateway's LAN MAC, if `t` has a gateway: stable and locally
/// administered ("vs" + a hash of the topology and switch names).
pub fn gateway_mac(t: &Topology) -> Option<MacAddr> {
    t.gateway.as_ref()?;
    let sw = t.switch.as_ref()?;
    let h = t
        .name
        .bytes()
        .chain(sw.name.bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    Some(MacAddr([
        0x02,
        0x76,
        0x73,
        (h >> 16) as u8,
        (h >> 8) as u8,
        h as u8,
    ]))
}

/// The steering program of worker `w` for the switch's AF_PACKET port
/// `ifname` ([`crate::steer`]); `None` with one worker. The uplink and the
/// ports of namespaces with an ingress rate limit go whole to worker 0.
pub fn steer_for(t: &Topology, w: usize, ifname: &str) -> Option<Vec<Insn>> {
    let n = t.switch.as_ref()?.workers;
    if n <= 1 {
        return None;
    }
    let ns = t
        .switch_ports()
        .find(|ns| ns.switch_ifname.as_deref() == Some(ifname));
    let whole = ns.is_none_or(|ns| t.policy.rate_limits.iter().any(|l| l.namespace == ns.name));
    Some(crate::steer::program(&crate::steer::Steer {
        worker: w,
        workers: n,
        gateway: gateway_mac(t),
        whole,
        ports: !t.policy.acl.iter().any(|a| a.state.is_some()),
    }))
}

/// The gateway configuration of `t` (the uplink is the last port, `ports - 1`).
pub fn gateway_config(t: &Topology, ports: usize) -> Result<Option<GatewayConfig>> {
    let Some(g) = &t.gateway else { return Ok(None) };
    let sw = t
        .switch
        .as_ref()
        .expect("validated: gateway needs a switch");
    let mac = gateway_mac(t).expect("the topology has a gateway");
    // Routed frames must fit every LAN port, the tunnels' overlays included.
    let tunnels = tunnel_configs(t)?.into_iter().map(|c| c.mtu);
    let lan_mtu = t
        .switch_ports()
        .filter_map(|n| n.mtu)
        .chain(tunnels)
        .min()
        .unwrap_or(1500);
    let routes = gateway_routes(t);
    let uplink = match &t.uplink {
        None => None,
        Some(u) => {
            let sw_ns = match &sw.netns {
                Some(n) => Some(open_netns(n)?),
                None => None,
            };
            let link = netns_setup::setup::netlink_in(sw_ns.as_ref())?
                .link(u.port_name())?
                .ok_or_else(|| anyhow!("uplink interface {} is missing", u.port_name()))?;
            let umac = link.mac.parse::<MacAddr>().ok().ok_or_else(|| {
                anyhow!("uplink interface {} has no Ethernet address", u.port_name())
            })?;
            Some(UplinkConfig {
                port: ports - 1,
                ip: u.address.addr,
                prefix: u.address.prefix,
                mac: umac,
                next_hop: u.next_hop,
                mtu: u.mtu,
            })
        }
    };
    // Validated with the topology; a failure here names the translation.
    let npt = t
        .nat
        .nptv6
        .iter()
        .map(|n| {
            nat::npt::Npt66::new(n.internal, n.external)
                .map_err(|e| anyhow!("[[nptv6]] {} -> {}: {e}", n.internal, n.external))
        })
        .collect::<Result<Vec<_>>>()?;
    let nat = t
        .uplink
        .as_ref()
        .map(|u| nat_config(t, u.address.addr, random_seed()));
    Ok(Some(GatewayConfig {
        ip: g.address.addr,
        prefix: g.address.prefix,
        mac,
        lan_mtu,
        routes,
        uplink,
        nat,
        neigh_max: sw.arp_max,
        ageing_ms: sw.ageing.as_millis() as u64,
        queue_slots: 64,
        v6: (!g.address6.is_empty()).then(|| crate::gateway::Gw6Config {
            lan: g.address6.clone(),
            ra: g.ra,
            uplink: t.uplink.as_ref().and_then(|u| u.address6),
            next_hop: t.uplink.as_ref().and_then(|u| u.next_hop6),
            routes: gateway_routes6(t),
            npt: npt.clone(),
            nat: t
                .uplink
                .as_ref()
                .and_then(|u| u.address6)
                .map(|c| nat_config6(t, c.addr, random_seed())),
        }),
    }))
}

/// Worker `w`'s link watch over the switch's namespace: re-opened ports get
/// the worker's steering program. `Err` names what failed (the switch's
/// namespace, or the event socket).
fn link_watch(t: &Topology, w: usize) -> std::result::Result<crate::live::LinkWatch, String> {
    let sw = t.switch.as_ref().ok_or("no [switch]")?;
    let sw_ns_file = match &sw.netns {
        Some(n) => Some(open_netns(n).map_err(|e| format!("switch namespace: {e}"))?),
        None => None,
    };
    let mon = in_netns(sw_ns_file.as_ref(), crate::sys::LinkMonitor::open)
        .and_then(|r| r)
        .map_err(|e| {
            format!(
                "cannot watch link events ({e}); a deleted port is noticed on its next send only"
            )
        })?;
    let io = sw.io;
    let t = t.clone();
    let open: crate::live::Opener = Box::new(move |name: &str| {
        let steer = steer_for(&t, w, name);
        in_netns(sw_ns_file.as_ref(), || {
            open_packet_port(io, name, steer.as_deref())
        })
        .and_then(|r| r)
        .map(|p| p as Box<dyn PortIo>)
    });
    Ok(crate::live::LinkWatch::new(mon, open))
}

/// Handles of one of workers 1.. (`[switch] workers > 1`).
struct Lane {
    to: std::sync::mpsc::Sender<crate::worker::Request>,
    wake: Arc<EventFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Start worker `k` of `t` on its own thread: its own steered sockets on
/// every port, a pipeline without gateway (routed frames are steered to
/// worker 0), the built-in policy, and `taps` (pcap mirrors). Returns once
/// the worker is ready, or with what failed.
fn spawn_lane(
    t: &Topology,
    k: usize,
    control: std::sync::mpsc::Receiver<crate::worker::Request>,
    wake: Arc<EventFd>,
    share: crate::worker::Share,
    taps: Vec<(usize, crate::worker::TapSink, String)>,
    statics: Vec<(u16, MacAddr, usize)>,
) -> Result<std::thread::JoinHandle<()>> {
    let t = t.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<()>>(1);
    let thread = std::thread::Builder::new()
        .name(format!("vswitch-w{k}"))
        .spawn(move || {
            let built = (|| -> Result<Worker<(Chain, NoPolicy)>> {
                let sw = t.switch.clone().ok_or_else(|| anyhow!("no [switch]"))?;
                let ports = open_ports_for(&t, k)?;
                let infos = PortInfo::of(&ports);
                let pipeline = new_pipeline(&t, ports.len(), None, (Chain::default(), NoPolicy))?;
                let mut w = Worker::new(sw.name.clone(), ports, pipeline);
                let t2 = t.clone();
                w.set_reloader(Box::new(move || build_policy(&t2, &infos)))
                    .map_err(|e| anyhow!("policy: {e}"))?;
                for (p, sink, name) in taps {
                    w.add_tap(p, sink, Some(name));
                }
                w.set_share(share);
                // Static entries restored into worker 0 (`fdb add` pins).
                let now = w.now();
                for (vlan, mac, port) in statics {
                    let _ = w.parts_mut().1.fdb.add_static(vlan, mac, port, now);
                }
                w.set_polling(sw.busy_poll, sw.adaptive_poll);
                match link_watch(&t, k) {
                    Ok(l) => w.set_link_watch(l),
                    Err(e) => tracing::warn!("worker {k}: {e}"),
                }
                if let Some(cpu) = sw.cpu {
                    let mut set = nix::sched::CpuSet::new();
                    set.set(cpu + k)
                        .and_then(|()| {
                            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                        })
                        .map_err(|e| anyhow!("cannot pin worker {k} to CPU {}: {e}", cpu + k))?;
                }
                Ok(w)
            })();
            match built {
                Ok(mut w) => {
                    let _ = ready_tx.send(Ok(()));
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        w.run(&control, &wake, None)
                    }));
                    let failed = match r {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => Some(e.to_string()),
                        Err(_) => Some("panicked".to_string()),
                    };
                    // Its share of the flows would be lost: stop the whole
                    // switch (cleanly, as on SIGTERM) rather than run degraded.
                    if let Some(e) = failed {
                        tracing::error!("worker {k} failed ({e}): stopping the switch");
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::this(),
                            nix::sys::signal::Signal::SIGTERM,
                        );
                    }
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })
        .context("spawn a worker thread")?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e.context(format!("start worker {k}")))
        }
        Err(_) => {
            let _ = thread.join();
            Err(anyhow!("worker {k} ended while starting"))
        }
    }
}

/// Stop workers 1.. and wait (boundedly) for their threads.
fn stop_lanes(lanes: &mut [Lane]) {
    for l in lanes.iter() {
        let (tx, _rx) = std::sync::mpsc::sync_channel(1);
        let _ = l.to.send(crate::worker::Request {
            cmd: "stop".into(),
            args: serde_json::Value::Null,
            tap: None,
            reply: tx,
            page: None,
            snapshot: None,
        });
        let _ = l.wake.write(1);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    for (k, l) in lanes.iter_mut().enumerate() {
        let Some(h) = l.thread.take() else { continue };
        while !h.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        if h.is_finished() {
            let _ = h.join();
        } else {
            tracing::warn!("worker {} did not stop within 5 s", k + 1);
        }
    }
}

/// Restore the tables saved in `path` into `worker`, if the topology was
/// adopted (not `created` by this run). A file that cannot be used is
/// refused with a message and the switch starts empty.
fn resume_state<P: Policy + crate::policy::Reload>(
    worker: &mut Worker<P>,
    topology: &str,
    path: &std::path::Path,
    created: bool,
) {
    match crate::state::load(path, topology) {
        Ok(None) => {}
        Ok(Some(_)) if created => tracing::info!(
            "state file {} ignored: the topology was created by this run, there is nothing to resume",
            path.display()
        ),
        Ok(Some(st)) => {
            let now = worker.now();
            let r = crate::state::restore(worker, &st, now, crate::state::unix_ms());
            tracing::info!("state restored from {}: {r}", path.display());
        }
        Err(e) => tracing::warn!(
            "state file {} refused: {e}; starting with empty tables",
            path.display()
        ),
    }
}

/// Replace this process by `bin` with the same arguments, at the same PID
/// (`vswitch upgrade`); returns only on failure.
/// The topology lock is handed down (its descriptor kept open across exec),
/// so no other `vswitch run` can take the topology in between.
fn reexec(bin: &std::path::Path, lock: &TopologyLock) -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    tracing::info!("upgrade: state saved; executing {}", bin.display());
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let mut cmd = std::process::Command::new(bin);
    cmd.args(args);
    match lock.keep_across_exec() {
        Ok((k, v)) => {
            cmd.env(k, v);
        }
        Err(e) => tracing::warn!(
            "upgrade: the topology lock cannot be handed down ({e}); it is free until the new binary takes it"
        ),
    }
    let e = cmd.exec();
    anyhow!(e).context(format!(
        "upgrade: cannot execute {} (the topology and the saved state are kept; start `vswitch run` again)",
        bin.display()
    ))
}

/// Run the switch for `t` until SIGINT or SIGTERM, with the topology's built-in policy.
pub fn run(t: &Topology, opts: &RunOptions) -> Result<()> {
    run_with(t, opts, NoPolicy)
}

/// Run the switch with your own `policy`, asked after the built-in one.
pub fn run_with<U: Policy + 'static>(t: &Topology, opts: &RunOptions, policy: U) -> Result<()> {
    let sw = t.switch.clone().ok_or_else(|| {
        anyhow!("topology {:?} has no [switch]: nothing for vswitch to forward (a pair-only topology needs just `netns-setup up`)", t.name)
    })?;
    // The binary `vswitch upgrade` executes again, as it was when started
    // (the file may be replaced while we run).
    let exe = std::env::current_exe().ok();
    if sw.workers > 1
        && !t.policy.rate_limits.is_empty()
        && t.policy.acl.iter().any(|a| a.state.is_some())
    {
        bail!(
            "[switch] workers = {}: a rate-limited port's frames all go to worker 0 while replies to it are spread, so stateful ACL rules would miss them; use workers = 1, or drop the rate limits or the `state` rules",
            sw.workers
        );
    }
    if sw.workers > 1 && std::any::TypeId::of::<U>() != std::any::TypeId::of::<NoPolicy>() {
        bail!(
            "[switch] workers = {}: a custom policy runs on one worker only; set workers = 1",
            sw.workers
        );
    }
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "vswitch run needs root (to create namespaces and open AF_PACKET/TAP ports); run it with sudo"
        );
    }
    // Signals go to a signalfd the worker polls; block them before any thread starts.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGHUP);
    mask.thread_block().context("block signals")?;
    let stop = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .context("signalfd")?;

    let sock_path = opts
        .socket
        .clone()
        .unwrap_or_else(|| control::default_socket(&t.name));
    // One owner per topology, whatever its socket: taken before anything is
    // touched, held until the topology is removed (dropped last).
    let owner = Owner::this_process(&t.name, &sock_path, opts.file.as_deref());
    let _lock = TopologyLock::acquire(&owner).map_err(|e| match e {
        LockError::Held(_) => {
            anyhow!("{e}; stop it first (`vswitch list` shows the running switches)")
        }
        LockError::Io { .. } => anyhow!(e),
    })?;
    if _lock.inherited() {
        tracing::info!("topology lock taken over from the previous binary (upgrade)");
    }
    let listener = control::bind(&sock_path)
        .with_context(|| format!("control socket {}", sock_path.display()))?;

    let report = match netns_setup::up(t) {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&sock_path);
            return Err(anyhow!(e).context(format!("bring topology {:?} up", t.name)));
        }
    };
    // What this run found already there (a crashed run's, or `netns-setup up`'s)
    // it adopts: on exit it is removed like what this run created, unless --keep.
    let adopted = report.changes.is_empty();
    if adopted {
        tracing::info!(
            "topology {:?} was already up: adopted{}",
            t.name,
            if opts.keep {
                ""
            } else {
                " (removed on exit; --keep leaves it)"
            }
        );
    }
    // The topology as applied: `vswitch reload` changes it; exit removes what it holds.
    let applied = Arc::new(std::sync::Mutex::new(t.clone()));
    let cleanup = |why: &str| {
        let _ = std::fs::remove_file(&sock_path);
        // A failed start leaves what it found as it was; a clean exit removes it too.
        if !opts.keep && (!adopted || why == "exit") {
            let now = applied
                .lock()
                .map(|t| t.clone())
                .unwrap_or_else(|e| e.into_inner().clone());
            let r = netns_setup::down(&now);
            if !r.removed.is_empty() {
                tracing::info!("removed ({why}): {}", r.removed.join(", "));
            }
            for f in &r.failures {
                tracing::warn!("cleanup ({why}): {f}");
            }
        }
    };
    let ports = match open_ports(t) {
        Ok(p) => p,
        Err(e) => {
            cleanup("start-up failed");
            return Err(e);
        }
    };
    tracing::info!(
        "{} forwarding between {} ports: {}; control socket {}; Ctrl-C to stop",
        sw.name,
        ports.len(),
        ports
            .iter()
            .map(|p| format!("{} ({} {})", p.name, p.kind, p.netns))
            .collect::<Vec<_>>()
            .join(", "),
        sock_path.display()
    );
    let gateway = match gateway_config(t, ports.len()) {
        Ok(g) => g,
        Err(e) => {
            cleanup("start-up failed");
            return Err(e);
        }
    };
    let wake = Arc::new(
        EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).context("eventfd")?,
    );
    let (tx, rx) = channel();
    // Workers 1.. (`[switch] workers`): their request queues and eventfds
    // exist from here (the control thread needs them); the threads start
    // just before worker 0 runs.
    let mut lane_ends = Vec::new();
    let mut lane_handles = Vec::new();
    for _ in 1..sw.workers {
        let (ltx, lrx) = channel();
        let lwake = Arc::new(
            EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .context("eventfd")?,
        );
        lane_handles.push((ltx, lwake.clone()));
        lane_ends.push((lrx, lwake));
    }
    let lanes_h: control::Lanes = Arc::new(lane_handles);
    // MAC learning shared between workers: one bounded queue each.
    let mut shares = Vec::new();
    if sw.workers > 1 {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..sw.workers)
            .map(|_| std::sync::mpsc::sync_channel(crate::worker::SHARE_QUEUE))
            .unzip();
        for (i, rx) in rxs.into_iter().enumerate() {
            let peers = txs
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, t)| t.clone())
                .collect();
            shares.push(crate::worker::Share::new(i, rx, peers));
        }
    }
    let mut shares = shares.into_iter();
    if let Some(addr) = opts.metrics {
        let sw_ns = match &sw.netns {
            Some(n) => Some(open_netns(n)?),
            None => None,
        };
        match in_netns(sw_ns.as_ref(), || std::net::TcpListener::bind(addr)) {
            Ok(Ok(l)) => crate::metrics::serve(l, tx.clone(), wake.clone(), lanes_h.clone()),
            Ok(Err(e)) | Err(e) => {
                cleanup("start-up failed");
                bail!("metrics endpoint {addr}: {e}");
            }
        }
    }
    let port_snapshot = PortInfo::of(&ports);
    let pipeline = match new_pipeline(t, ports.len(), gateway, (Chain::default(), policy)) {
        Ok(p) => p,
        Err(e) => {
            cleanup("start-up failed");
            return Err(e);
        }
    };
    let mut worker = Worker::<(Chain, U)>::new(sw.name.clone(), ports, pipeline);
    worker.set_fastpath(fastpath_for(t, worker.parts().0));
    let slots0 = port_snapshot.clone();
    let file = opts.file.clone();
    let mut first = Some(t.clone());
    let reloader = Box::new(move || -> Result<Reloaded, String> {
        let topo = match first.take() {
            Some(t) => t,
            None => match &file {
                Some(f) => Topology::load(f).map_err(|e| e.to_string())?,
                None => Topology::seed(),
            },
        };
        let ports = &port_snapshot;
        build_policy(&topo, ports)
    });
    if let Err(e) = worker.set_reloader(reloader) {
        cleanup("start-up failed");
        bail!("policy: {e}");
    }
    // Mirrors to pcap files: a writer thread per file, fed like a capture
    // (by every worker).
    let mut pcaps = Vec::new();
    let mut lane_taps = Vec::new();
    for m in t.policy.mirrors.iter().filter(|m| m.pcap.is_some()) {
        let path = m.pcap.clone().expect("filtered");
        let Some(port) = worker.port_index(&m.from) else {
            cleanup("start-up failed");
            bail!("mirror: namespace {:?} has no port", m.from);
        };
        let tx = match crate::live::spawn_pcap_writer(&path) {
            Ok(tx) => tx,
            Err(e) => {
                cleanup("start-up failed");
                bail!("mirror: cannot create {}: {e}", path.display());
            }
        };
        lane_taps.push((port, tx.clone(), path.display().to_string()));
        worker.add_tap(port, tx, Some(path.display().to_string()));
        tracing::info!("mirroring {} to {}", m.from, path.display());
        pcaps.push((port, path));
    }
    // Live changes (reload, port add/del) are prepared off the forwarding
    // thread and handed to the worker whole; SIGHUP starts a reload too.
    let (ctx, crx) = channel();
    worker.set_changes(crx);
    let live = Arc::new(std::sync::Mutex::new(crate::live::Live::new(
        t.clone(),
        opts.file.clone(),
        slots0,
        pcaps,
        ctx,
        wake.clone(),
    )));
    {
        let live = live.clone();
        let applied = applied.clone();
        let handler: control::LiveHandler = Arc::new(move |cmd: &str, req: &serde_json::Value| {
            let mut l = live.lock().unwrap_or_else(|e| e.into_inner());
            let v = l.handle(cmd, req);
            if v.is_some()
                && let Ok(mut a) = applied.lock()
            {
                *a = l.current.clone();
            }
            v
        });
        let h = handler.clone();
        worker.set_on_sighup(Box::new(move || {
            let h = h.clone();
            let _ = std::thread::Builder::new()
                .name("vswitch-reload".into())
                .spawn(move || {
                    let v = h("reload", &serde_json::Value::Null).unwrap_or_default();
                    if v["ok"] != true {
                        tracing::warn!("reload (SIGHUP) refused: {}", v["error"]);
                    }
                });
        }));
        control::serve_with(listener, tx, wake.clone(), handler, lanes_h.clone());
    }
    // Ports follow the kernel: link events of the switch's namespace.
    match link_watch(t, 0) {
        Ok(l) => worker.set_link_watch(l),
        Err(e) if e.starts_with("switch namespace") => {
            cleanup("start-up failed");
            bail!("{e}");
        }
        Err(e) => tracing::warn!("{e}"),
    }
    worker.set_polling(sw.busy_poll, sw.adaptive_poll);
    if let Some(cpu) = sw.cpu {
        // The worker runs on this thread; the control thread is not pinned.
        let mut set = nix::sched::CpuSet::new();
        let pinned = set
            .set(cpu)
            .and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set));
        if let Err(e) = pinned {
            cleanup("start-up failed");
            bail!("cannot pin the worker to CPU {cpu}: {e}");
        }
    }
    // State: resume what a previous run of this topology saved (only when
    // adopting its namespaces: a topology created now has no connections to resume).
    let state_path = opts
        .state_file
        .clone()
        .unwrap_or_else(|| crate::state::default_path(&t.name));
    resume_state(&mut worker, &t.name, &state_path, !adopted);
    let interval = opts
        .save_interval
        .or(sw.state_save_interval)
        .unwrap_or(DEFAULT_SAVE_INTERVAL);
    match crate::state::Saver::new(&t.name, state_path.clone(), interval.as_millis() as u64) {
        Ok(s) => worker.set_saver(s),
        Err(e) => {
            cleanup("start-up failed");
            bail!("cannot start the state writer: {e}");
        }
    }
    if let Some(sh) = shares.next() {
        worker.set_share(sh);
    }
    let statics: Vec<(u16, MacAddr, usize)> = {
        let now = worker.now();
        let (_, p) = worker.parts();
        p.fdb
            .entries(now)
            .into_iter()
            .filter(|(_, e)| e.is_static)
            .map(|(m, e)| (e.vlan, m, e.port))
            .collect()
    };
    let mut lanes = Vec::new();
    for (k, ((lrx, lwake), sh)) in lane_ends.into_iter().zip(shares).enumerate() {
        match spawn_lane(
            t,
            k + 1,
            lrx,
            lwake.clone(),
            sh,
            lane_taps.clone(),
            statics.clone(),
        ) {
            Ok(h) => lanes.push(Lane {
                to: lanes_h[k].0.clone(),
                wake: lwake,
                thread: Some(h),
            }),
            Err(e) => {
                stop_lanes(&mut lanes);
                drop(worker);
                cleanup("start-up failed");
                return Err(e);
            }
        }
    }
    if !lanes.is_empty() {
        tracing::info!(
            "{} workers: unicast IPv4 between LAN hosts spread by flow, the rest on worker 0",
            lanes.len() + 1
        );
    }
    let res = worker.run(&rx, &wake, Some(&stop));
    stop_lanes(&mut lanes);
    drop(lanes);
    let removes = !opts.keep; // the topology goes on exit: nothing to resume
    if res.is_ok() && worker.upgrade_request().is_none() {
        if removes {
            let _ = std::fs::remove_file(&state_path);
        } else if let Some(sv) = worker.saver() {
            // The topology stays: save for the next run.
            match sv.save_blocking(crate::state::capture(&worker, worker.now())) {
                Ok(n) => tracing::info!("state saved to {} ({n} entries)", state_path.display()),
                Err(e) => tracing::warn!("state not saved: {e}"),
            }
        }
    }
    if let Some(req) = worker.upgrade_request().cloned() {
        drop(worker);
        let _ = std::fs::remove_file(&sock_path);
        // The control thread writes the answer to `vswitch upgrade` (already
        // handed over): give it a moment before exec ends every thread.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let bin = req["binary"]
            .as_str()
            .map(PathBuf::from)
            .or(exe)
            .ok_or_else(|| anyhow!("upgrade: the path of this binary is unknown"))?;
        return Err(reexec(&bin, &_lock));
    }
    drop(worker); // close ports before removing the namespaces
    cleanup("exit");
    match res {
        Ok(()) => {
            tracing::info!(
                "stopped{}",
                if opts.keep {
                    "; topology left up (--keep)"
                } else {
                    "; topology removed"
                }
            );
            Ok(())
        }
        Err(e) => Err(anyhow!(e).context("worker failed")),
    }
}
