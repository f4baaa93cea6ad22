//! The topology file: serde edge types, converted once into validated types.
//!
//! Contract: [`Topology::parse`] either returns a topology whose every name,
//! address and reference has been checked, or a [`TopologyError`] naming the
//! offending key (`namespace[1].address`, `switch.name`, ...). Nothing outside
//! this module sees the raw serde structs.

use nat::{Ipv4Net, Ipv6Net};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

/// Default fixed busy-poll window of the switch worker, µs (0: adaptive polling).
pub const DEFAULT_BUSY_POLL_US: u64 = 0;
/// Largest `[switch] workers`.
pub const MAX_WORKERS: usize = 64;

/// Default `[switch] adaptive_poll_us`: the cap of the adaptive polling
/// window (chosen from the end-to-end benchmark; see the README).
pub const DEFAULT_ADAPTIVE_POLL_US: u64 = 200;

/// Linux limit on interface names (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// The built-in default topology: the classic tutorial's seed network.
pub const SEED_TOML: &str = include_str!("../../examples/seed.toml");

/// An error in a topology file, naming the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyError {
    /// Dotted path of the offending key, e.g. `namespace[1].address`; empty for syntax errors.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "`{}`: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for TopologyError {}

fn err(key: impl Into<String>, message: impl Into<String>) -> TopologyError {
    TopologyError {
        key: key.into(),
        message: message.into(),
    }
}

/// Whether `ip` may be a namespace's own IPv6 address or a routed next
/// hop: unicast, not unspecified, loopback, link-local, IPv4-mapped or
/// IPv4-compatible.
fn global_unicast6(ip: std::net::Ipv6Addr) -> bool {
    let s = ip.segments();
    !(ip.is_multicast()
        || s[..6] == [0; 6]
        || ip.to_ipv4_mapped().is_some()
        || (s[0] & 0xffc0) == 0xfe80)
}

/// Split a list of addresses into the IPv4 ones (as written) and the IPv6
/// prefixes, which must be global or unique-local unicast with a prefix in
/// 1..=128 and listed once.
fn split_families(
    key: &str,
    list: Vec<String>,
) -> Result<(Vec<String>, Vec<Ipv6Net>), TopologyError> {
    let (mut v4, mut v6) = (Vec::new(), Vec::<Ipv6Net>::new());
    for a in list {
        if !a.contains(':') {
            v4.push(a);
            continue;
        }
        let c: Ipv6Net = a.parse().map_err(|e| err(key, e))?;
        if c.prefix == 0 || !global_unicast6(c.addr) {
            return Err(err(
                key,
                format!(
                    "{c} is not a global or unique-local unicast IPv6 address with a prefix in 1..=128 (link-local addresses are automatic)"
                ),
            ));
        }
        if v6.iter().any(|o| o.addr == c.addr) {
            return Err(err(key, format!("{} is listed twice", c.addr)));
        }
        v6.push(c);
    }
    Ok((v4, v6))
}

/// The one IPv4 address of a list split by [`split_families`].
fn one_ipv4(key: &str, v4: &[String], example: &str) -> Result<Ipv4Net, TopologyError> {
    match v4 {
        [a] => a.parse().map_err(|e| err(key, e)),
        [] => Err(err(
            key,
            format!("needs one IPv4 address (e.g. \"{example}\"), IPv6 ones optional"),
        )),
        _ => Err(err(key, "takes one IPv4 address, not several")),
    }
}

impl OneOrMany {
    /// The values, one or many.
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// An IPv4 or IPv6 network with a prefix length (ACL `src`/`dst`):
/// `192.168.15.0/24`, `fe80::/10`; a bare address means a host (/32, /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpCidr {
    /// IPv4.
    V4(Ipv4Net),
    /// IPv6.
    V6(Ipv6Net),
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpCidr::V4(c) => c.fmt(f),
            IpCidr::V6(c) => c.fmt(f),
        }
    }
}

impl FromStr for IpCidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        if let Ok(addr) = a.parse::<std::net::Ipv6Addr>() {
            if p.is_empty() {
                return Ok(IpCidr::V6(Ipv6Net { addr, prefix: 128 }));
            }
            return s.parse::<Ipv6Net>().map(IpCidr::V6);
        }
        if p.is_empty() {
            let addr: Ipv4Addr = a.parse().map_err(|_| {
                format!("{s:?} is not a CIDR (expected a.b.c.d/len or an IPv6 prefix)")
            })?;
            return Ok(IpCidr::V4(Ipv4Net { addr, prefix: 32 }));
        }
        s.parse::<Ipv4Net>().map(IpCidr::V4)
    }
}

/// How a namespace is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointKind {
    /// A veth pair: one end in the namespace, the other on the switch side (read with AF_PACKET).
    Veth,
    /// A TAP device in the namespace; the switch holds its queue file descriptor.
    Tap,
}

/// Frame I/O of the switch's AF_PACKET ports (`[switch] io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SwitchIo {
    /// `"mmsg"`: `recvmmsg`/`sendmmsg` batches over the socket queues.
    Mmsg,
    /// `"ring"` (default, the end-to-end benchmark's winner): TPACKET_V2 RX
    /// and TX rings mapped into the switch.
    #[default]
    Ring,
}

impl SwitchIo {
    /// The topology spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SwitchIo::Mmsg => "mmsg",
            SwitchIo::Ring => "ring",
        }
    }
}

/// Validated switch settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchSpec {
    /// Name of the switch (`v-net-0`), used in messages and for the control socket.
    pub name: String,
    /// Namespace holding the switch-side ends; `None` = the namespace netns-setup runs in.
    pub netns: Option<String>,
    /// MAC ageing time (default 300 s, as the Linux bridge).
    pub ageing: Duration,
    /// Total bound on the MAC table.
    pub fdb_max: usize,
    /// Bound on MAC entries learned on one port.
    pub fdb_max_per_port: usize,
    /// Answer ARP requests for known hosts instead of flooding them.
    pub arp_suppress: bool,
    /// Bound on the IP→MAC table.
    pub arp_max: usize,
    /// IP→MAC table bound per port (and for the gateway's LAN neighbour cache).
    pub arp_max_per_port: usize,
    /// After traffic, keep polling this long before sleeping (0: adapt, see
    /// `adaptive_poll`).
    pub busy_poll: Duration,
    /// Cap of the adaptive polling window: while traffic is dense (passes
    /// closer than this on average), poll up to this long after the last
    /// frame before sleeping (0: always sleep between bursts).
    pub adaptive_poll: Duration,
    /// Pin the forwarding worker to this CPU.
    pub cpu: Option<usize>,
    /// How the AF_PACKET ports move frames (`io`); TAP ports are unaffected.
    pub io: SwitchIo,
    /// Forwarding threads (`workers`, default 1). Worker 0 handles the
    /// gateway, the NAT, ARP and every frame that is not unicast IPv4
    /// between LAN hosts; those are spread over all workers by a symmetric
    /// flow hash. More than one needs veth ports only (TAPs are single-queue).
    pub workers: usize,
    /// Periodic state save interval of `vswitch run` (`None`: its default;
    /// zero: only on exit and upgrade).
    pub state_save_interval: Option<Duration>,
    /// The kernel fast path for established flows (`fastpath`, default
    /// `"ebpf"`): eBPF programs on the switch's veth ports forward flows the
    /// switch has decided and installed. `"off"`: every frame in user space.
    pub fastpath: Fastpath,
}

/// `[switch] fastpath`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fastpath {
    /// Established IPv4 TCP/UDP flows between veth ports are forwarded by eBPF.
    #[default]
    Ebpf,
    /// Every frame goes through the switch process.
    Off,
}

/// Validated namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceSpec {
    /// Namespace name, as in `ip netns list`.
    pub name: String,
    /// IPv4 address of the namespace's interface.
    pub address: Ipv4Net,
    /// IPv6 addresses of the interface (`address = ["…/24", "fd00::1/64"]`),
    /// added without duplicate address detection (usable at once).
    pub address6: Vec<Ipv6Net>,
    /// Default route via this address, if any.
    pub gateway: Option<Ipv4Addr>,
    /// IPv6 default route via this address (on one of `address6`'s
    /// prefixes, or link-local), if any.
    pub gateway6: Option<std::net::Ipv6Addr>,
    /// Endpoint kind.
    pub kind: EndpointKind,
    /// Interface name inside the namespace.
    pub ifname: String,
    /// Switch-side interface name (veth attached to the switch only).
    pub switch_ifname: Option<String>,
    /// MTU of the link, if set.
    pub mtu: Option<u32>,
    /// Index into [`Topology::pairs`] if this namespace is on a direct pair.
    pub pair: Option<usize>,
    /// Isolated port: reaches only non-isolated ports and the gateway.
    pub isolated: bool,
    /// 802.1Q role of the switch port.
    pub vlan: VlanMode,
}

/// The 802.1Q role of a switch port.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum VlanMode {
    /// Not configured: a VLAN-unaware switch passes tags through; a VLAN-aware
    /// one (any port configured) treats the port as an access port of VLAN 1.
    #[default]
    Unset,
    /// Access port: untagged on the wire, member of this VLAN.
    Access(u16),
    /// Trunk port: tagged frames of these VLANs.
    Trunk(Vec<u16>),
}

/// The outer DF bit of a tunnel (`df`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TunnelDf {
    /// `"unset"` (default, as Linux vxlan).
    #[default]
    Unset,
    /// `"set"`.
    Set,
    /// `"inherit"`: from the inner IPv4 header.
    Inherit,
}

/// A validated `[[tunnel]]`: a VXLAN port of the switch (RFC 7348).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelSpec {
    /// Port name (`name`, default `vxlan0`, `vxlan1`, …).
    pub name: String,
    /// VNI of untagged frames (`vni`, 0..=16777215).
    pub vni: u32,
    /// On a VLAN-aware switch: the VLAN `vni` belongs to (`vlan`, default 1).
    pub vlan: Option<u16>,
    /// On a VLAN-aware switch: VLAN → VNI (`vlan_vni`); the tunnel is then a
    /// trunk of these VLANs and `vni` is unused.
    pub vlan_vni: Vec<(u16, u32)>,
    /// The underlay address (`local`), with a prefix when `up` is to add it.
    pub local: Ipv4Addr,
    /// Its prefix length, if given (`local = "10.200.0.1/24"`).
    pub local_prefix: Option<u8>,
    /// The underlay interface in the switch's namespace (`device`).
    pub device: String,
    /// VTEPs for broadcast, multicast and unknown unicast (`remotes`).
    pub remotes: Vec<Ipv4Addr>,
    /// UDP port (`port`, default 4789).
    pub port: u16,
    /// Overlay MTU (`mtu`; default: the device's MTU minus 50).
    pub mtu: Option<u32>,
    /// Outer DF (`df`).
    pub df: TunnelDf,
    /// Accept datagrams from any VTEP (`accept = "any"`); default only from
    /// `remotes` and the VTEPs of static `fdb … dst` entries.
    pub accept_any: bool,
}

/// A validated topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Topology name; recorded as the owner of everything `up` creates.
    pub name: String,
    /// The switch, if any namespace is attached to one.
    pub switch: Option<SwitchSpec>,
    /// All namespaces.
    pub namespaces: Vec<NamespaceSpec>,
    /// Direct veth pairs, as indices into `namespaces`.
    pub pairs: Vec<(usize, usize)>,
    /// VXLAN tunnel ports of the switch.
    pub tunnels: Vec<TunnelSpec>,
    /// The switch's gateway (router) on the LAN, if any.
    pub gateway: Option<GatewaySpec>,
    /// The routed, NAT'd uplink, if any.
    pub uplink: Option<UplinkSpec>,
    /// Static routes via next hops on the LAN.
    pub routes: Vec<RouteSpec>,
    /// Static IPv6 routes via next hops on the LAN (`[[route]]` with IPv6 `to` and `via`).
    pub routes6: Vec<Route6Spec>,
    /// NAT settings (masquerade sources, port forwards, behaviour).
    pub nat: NatSpec,
    /// The forwarding policy: ACL rules, rate limits, mirrors.
    pub policy: PolicySpec,
}

/// One ACL rule as written (ports by namespace name), checked for syntax.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AclSpec {
    /// Name shown in counters (default `acl[N]`).
    pub name: String,
    /// Drop (true) or allow.
    pub drop: bool,
    /// Ingress namespaces.
    pub in_port: Option<Vec<String>>,
    /// Source MAC.
    pub src_mac: Option<[u8; 6]>,
    /// Destination MAC.
    pub dst_mac: Option<[u8; 6]>,
    /// VLAN id.
    pub vlan: Option<u16>,
    /// EtherType.
    pub ethertype: Option<u16>,
    /// Source network (IPv4 or IPv6).
    pub src: Option<IpCidr>,
    /// Destination network (IPv4 or IPv6).
    pub dst: Option<IpCidr>,
    /// IP protocol number.
    pub protocol: Option<u8>,
    /// Source ports.
    pub sport: Option<(u16, u16)>,
    /// Destination ports.
    pub dport: Option<(u16, u16)>,
    /// TCP flags: (must be set, mask).
    pub tcp_flags: Option<(u8, u8)>,
    /// `Some(true)`: established connections only; `Some(false)`: new ones only.
    pub state: Option<bool>,
}

/// An ingress rate limit on a namespace's port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitSpec {
    /// The namespace whose port is limited.
    pub namespace: String,
    /// Bits per second (0: unlimited).
    pub bits_per_sec: u64,
    /// Packets per second (0: unlimited).
    pub packets_per_sec: u64,
    /// Burst, bytes.
    pub burst_bytes: u64,
}

/// A SPAN mirror: everything a port receives and sends, copied to another port or a pcap file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorSpec {
    /// Mirrored namespace.
    pub from: String,
    /// Namespace whose port gets the copies.
    pub to: Option<String>,
    /// Or a pcap file that gets them.
    pub pcap: Option<std::path::PathBuf>,
}

/// The policy part of a topology (reloadable with `vswitch reload`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicySpec {
    /// ACL rules, first match wins, default allow.
    pub acl: Vec<AclSpec>,
    /// Rate limits.
    pub rate_limits: Vec<RateLimitSpec>,
    /// Mirrors.
    pub mirrors: Vec<MirrorSpec>,
}

/// The gateway address owned by the switch on the LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySpec {
    /// Address and LAN subnet, e.g. 192.168.15.5/24.
    pub address: Ipv4Net,
    /// IPv6 addresses and LAN prefixes, e.g. fd00:15::5/64 (may be empty).
    pub address6: Vec<Ipv6Net>,
    /// Send router advertisements (the /64 prefixes of `address6` for
    /// SLAAC, the gateway as default router).
    pub ra: bool,
}

/// Where the uplink port is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UplinkKind {
    /// A veth pair to a namespace that simulates the external network.
    Veth {
        /// The external namespace (created by `up`).
        netns: String,
        /// Interface inside it.
        ifname: String,
        /// Switch-side interface.
        switch_ifname: String,
        /// Addresses of the simulated external host(s) in that namespace.
        peer_addresses: Vec<Ipv4Net>,
        /// Their IPv6 addresses (on the uplink's IPv6 prefix).
        peer_addresses6: Vec<Ipv6Net>,
    },
    /// An existing interface in the switch namespace (e.g. a macvlan on a NIC); not created.
    Interface {
        /// Its name.
        name: String,
    },
}

/// The uplink: a routed port whose traffic goes through the NAT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkSpec {
    /// Our external address (owned by the switch) and the uplink subnet.
    pub address: Ipv4Net,
    /// Our external IPv6 address and the uplink's IPv6 prefix, if any.
    pub address6: Option<Ipv6Net>,
    /// IPv6 next hop for destinations outside that prefix.
    pub next_hop6: Option<std::net::Ipv6Addr>,
    /// The port.
    pub kind: UplinkKind,
    /// Next hop for destinations outside the uplink subnet (none: unreachable).
    pub next_hop: Option<Ipv4Addr>,
    /// Path MTU towards the uplink, used for fragmentation decisions.
    pub mtu: u32,
}

impl UplinkSpec {
    /// Name of the switch's port for the uplink.
    pub fn port_name(&self) -> &str {
        match &self.kind {
            UplinkKind::Veth { switch_ifname, .. } => switch_ifname,
            UplinkKind::Interface { name } => name,
        }
    }
}

/// A static route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Destination network.
    pub to: Ipv4Net,
    /// Next hop on the LAN.
    pub via: Ipv4Addr,
}

/// A static IPv6 route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route6Spec {
    /// Destination prefix.
    pub to: Ipv6Net,
    /// Next hop on the LAN (on one of the gateway's IPv6 prefixes, or link-local).
    pub via: std::net::Ipv6Addr,
}

/// A port forward on the external address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnatSpec<A = Ipv4Addr> {
    /// `tcp` or `udp`.
    pub protocol: String,
    /// External ports, inclusive.
    pub ports: (u16, u16),
    /// Internal address (IPv4 rules: on the uplink's IPv4 address; IPv6
    /// rules: on its IPv6 address).
    pub to_addr: A,
    /// Internal port of the first external port.
    pub to_port: u16,
}

/// Largest `[nat]` timeout (s): one week (the NAT engine caps at the same value).
pub const MAX_NAT_TIMEOUT: u64 = 7 * 24 * 3600;

/// One `[[nptv6]]` translation: a LAN prefix and the external prefix of
/// the same length it maps onto, address for address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NptSpec {
    /// The LAN prefix (inside a `[gateway]` IPv6 prefix).
    pub internal: Ipv6Net,
    /// The external prefix (routed to, or on-link at, the uplink).
    pub external: Ipv6Net,
}

/// NAT behaviour and rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatSpec {
    /// Source networks masqueraded behind the uplink address.
    pub masquerade: Vec<Ipv4Net>,
    /// Port forwards.
    pub dnat: Vec<DnatSpec>,
    /// IPv6 sources masqueraded behind the uplink's IPv6 address (NAT66).
    pub masquerade6: Vec<Ipv6Net>,
    /// IPv6 port forwards on the uplink's IPv6 address.
    pub dnat6: Vec<DnatSpec<std::net::Ipv6Addr>>,
    /// NPTv6 (RFC 6296) prefix translations, `[[nptv6]]`: stateless, instead
    /// of NAT66 for their internal prefixes.
    pub nptv6: Vec<NptSpec>,
    /// `endpoint-independent`, `address-dependent` (default) or `address-and-port-dependent`.
    pub filtering: String,
    /// Ports for masquerade mappings of source ports ≥ 1024.
    pub port_range: (u16, u16),
    /// Connection table bound.
    pub max_entries: usize,
    /// Entries per internal host (`None`: a quarter of `max_entries`).
    pub max_entries_per_host: Option<usize>,
    /// Mappings (external ports) per internal host and protocol.
    pub max_ports_per_host: u32,
    /// New flows per second per internal host (0: unlimited).
    pub new_flows_per_host: u32,
    /// `random` (default) or `sequential`.
    pub port_allocation: String,
    /// UDP timeout, s.
    pub udp_timeout: u64,
    /// TCP established timeout, s.
    pub tcp_established_timeout: u64,
    /// TCP transitory timeout, s.
    pub tcp_transitory_timeout: u64,
    /// ICMP query timeout, s.
    pub icmp_timeout: u64,
}

impl Default for NatSpec {
    fn default() -> Self {
        NatSpec {
            masquerade: Vec::new(),
            dnat: Vec::new(),
            masquerade6: Vec::new(),
            dnat6: Vec::new(),
            nptv6: Vec::new(),
            filtering: "address-dependent".into(),
            port_range: (1024, 65535),
            max_entries: 262_144,
            max_entries_per_host: None,
            max_ports_per_host: 16_384,
            new_flows_per_host: 5_000, // nat::DEFAULT_NEW_FLOWS_PER_HOST
            port_allocation: "random".into(),
            udp_timeout: 300,
            tcp_established_timeout: 7440,
            tcp_transitory_timeout: 240,
            icmp_timeout: 60,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopologyFile {
    name: Option<String>,
    switch: Option<SwitchFile>,
    #[serde(default)]
    namespace: Vec<NamespaceFile>,
    #[serde(default)]
    pair: Vec<PairFile>,
    gateway: Option<GatewayFile>,
    uplink: Option<UplinkFile>,
    #[serde(default)]
    route: Vec<RouteFile>,
    #[serde(default)]
    masquerade: Vec<MasqueradeFile>,
    #[serde(default)]
    dnat: Vec<DnatFile>,
    #[serde(default)]
    nptv6: Vec<NptFile>,
    nat: Option<NatFile>,
    #[serde(default)]
    acl: Vec<AclFile>,
    #[serde(default)]
    rate_limit: Vec<RateLimitFile>,
    #[serde(default)]
    mirror: Vec<MirrorFile>,
    #[serde(default)]
    tunnel: Vec<TunnelFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TunnelFile {
    name: Option<String>,
    kind: String,
    vni: Option<u32>,
    vlan: Option<u16>,
    vlan_vni: Option<std::collections::BTreeMap<String, u32>>,
    local: String,
    device: String,
    #[serde(default)]
    remotes: Vec<String>,
    port: Option<u16>,
    mtu: Option<u32>,
    df: Option<String>,
    accept: Option<String>,
}

/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

fn validate_tunnels(t: &mut Topology, files: Vec<TunnelFile>) -> Result<(), TopologyError> {
    if files.is_empty() {
        return Ok(());
    }
    let Some(sw) = &t.switch else {
        return Err(err(
            "tunnel",
            "a tunnel is a port of the switch: add [switch]",
        ));
    };
    if sw.workers > 1 {
        return Err(err("tunnel", "tunnels need [switch] workers = 1"));
    }
    let vlan_aware = t.switch_ports().any(|n| n.vlan != VlanMode::Unset);
    let mut names: Vec<String> = t
        .switch_ports()
        .filter_map(|n| n.switch_ifname.clone().or(Some(n.ifname.clone())))
        .collect();
    if let Some(u) = &t.uplink {
        names.push(u.port_name().to_string());
    }
    let mut binds = Vec::new();
    for (i, f) in files.into_iter().enumerate() {
        let k = |x: &str| format!("tunnel[{i}].{x}");
        if f.kind != "vxlan" {
            return Err(err(
                k("kind"),
                format!("{:?} is not a tunnel kind (\"vxlan\")", f.kind),
            ));
        }
        let name = f.name.unwrap_or_else(|| format!("vxlan{i}"));
        check_ifname(&k("name"), &name)?;
        if names.contains(&name) {
            return Err(err(k("name"), format!("{name:?} is already a port name")));
        }
        names.push(name.clone());
        check_ifname(&k("device"), &f.device)?;
        let (local, local_prefix) = match f.local.split_once('/') {
            None => (parse_ip(&k("local"), &f.local)?, None),
            Some(_) => {
                let n: Ipv4Net = f.local.parse().map_err(|_| {
                    err(
                        k("local"),
                        format!("{:?} is not an IPv4 address or address/prefix", f.local),
                    )
                })?;
                (n.addr, Some(n.prefix))
            }
        };
        if local.is_unspecified() || local.is_multicast() || local.is_broadcast() {
            return Err(err(k("local"), "must be a unicast address"));
        }
        let mut remotes = Vec::new();
        for (j, r) in f.remotes.iter().enumerate() {
            let a = parse_ip(&format!("tunnel[{i}].remotes[{j}]"), r)?;
            if a == local || a.is_unspecified() || a.is_multicast() || a.is_broadcast() {
                return Err(err(
                    format!("tunnel[{i}].remotes[{j}]"),
                    "a remote VTEP is a unicast address other than local (multicast underlays are not supported)",
                ));
            }
            if let Some(p) = local_prefix.filter(|p| *p < 31) {
                let mask = u32::MAX << (32 - u32::from(p));
                let (l, r) = (u32::from(local), u32::from(a));
                if l & mask == r & mask && (r & !mask == 0 || r & !mask == !mask) {
                    return Err(err(
                        format!("tunnel[{i}].remotes[{j}]"),
                        format!("{a} is the network or broadcast address of {}/{p}", local),
                    ));
                }
            }
            if remotes.contains(&a) {
                return Err(err(
                    format!("tunnel[{i}].remotes[{j}]"),
                    format!("{a} is listed twice"),
                ));
            }
            remotes.push(a);
        }
        let port = f.port.unwrap_or(4789);
        if port == 0 {
            return Err(err(k("port"), "must be 1..=65535"));
        }
        if binds.contains(&(local, port)) {
            return Err(err(
                k("local"),
                format!(
                    "another tunnel already uses {local}:{port}: carry several VNIs in one tunnel with vlan_vni"
                ),
            ));
        }
        binds.push((local, port));
        if let Some(m) = f.mtu
            && !(68..=65_485).contains(&m)
        {
            return Err(err(k("mtu"), "must be 68..=65485 (the overlay MTU)"));
        }
        let df = match f.df.as_deref() {
            None | Some("unset") => TunnelDf::Unset,
            Some("set") => TunnelDf::Set,
            Some("inherit") => TunnelDf::Inherit,
            Some(o) => {
                return Err(err(
                    k("df"),
                    format!("{o:?} is not \"unset\", \"set\" or \"inherit\""),
                ));
            }
        };
        let accept_any = match f.accept.as_deref() {
            None | Some("remotes") => false,
            Some("any") => true,
            Some(o) => {
                return Err(err(
                    k("accept"),
                    format!("{o:?} is not \"remotes\" or \"any\""),
                ));
            }
        };
        let mut vlan_vni = Vec::new();
        if let Some(m) = f.vlan_vni {
            if !vlan_aware {
                return Err(err(
                    k("vlan_vni"),
                    "a VLAN→VNI map needs a VLAN-aware switch (a namespace with vlan or trunk)",
                ));
            }
            for (v, n) in m {
                let vid: u16 = v
                    .parse()
                    .ok()
                    .filter(|x| (1..=4094).contains(x))
                    .ok_or_else(|| {
                        err(k("vlan_vni"), format!("{v:?} is not a VLAN id (1-4094)"))
                    })?;
                if n > MAX_VNI {
                    return Err(err(
                        k("vlan_vni"),
                        format!("VNI {n} is larger than {MAX_VNI}"),
                    ));
                }
                if vlan_vni.iter().any(|(_, x)| *x == n) {
                    return Err(err(k("vlan_vni"), format!("VNI {n} is mapped twice")));
                }
                vlan_vni.push((vid, n));
            }
            if vlan_vni.is_empty() {
                return Err(err(k("vlan_vni"), "map at least one VLAN"));
            }
            if f.vni.is_some() || f.vlan.is_some() {
                return Err(err(k("vlan_vni"), "give either vni (and vlan) or vlan_vni"));
            }
        }
        let vni = match (f.vni, vlan_vni.is_empty()) {
            (Some(n), _) if n > MAX_VNI => {
                return Err(err(k("vni"), format!("must be 0..={MAX_VNI}")));
            }
            (Some(n), _) => n,
            (None, false) => 0,
            (None, true) => return Err(err(k("vni"), "a tunnel needs a vni (or vlan_vni)")),
        };
        if let Some(v) = f.vlan {
            if !vlan_aware {
                return Err(err(
                    k("vlan"),
                    "vlan needs a VLAN-aware switch (a namespace with vlan or trunk)",
                ));
            }
            if !(1..=4094).contains(&v) {
                return Err(err(k("vlan"), "must be 1..=4094"));
            }
        }
        t.tunnels.push(TunnelSpec {
            name,
            vni,
            vlan: if vlan_aware && vlan_vni.is_empty() {
                Some(f.vlan.unwrap_or(1))
            } else {
                None
            },
            vlan_vni,
            local,
            local_prefix,
            device: f.device,
            remotes,
            port,
            mtu: f.mtu,
            df,
            accept_any,
        });
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AclFile {
    name: Option<String>,
    action: String,
    in_port: Option<OneOrMany>,
    src_mac: Option<String>,
    dst_mac: Option<String>,
    vlan: Option<u16>,
    ethertype: Option<PortSpec>,
    src: Option<String>,
    dst: Option<String>,
    protocol: Option<PortSpec>,
    sport: Option<PortSpec>,
    dport: Option<PortSpec>,
    tcp_flags: Option<String>,
    state: Option<String>,
}

/// One string or a list of them in the file (`in_port = "…"`,
/// `address = ["…", "…"]`).
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitFile {
    namespace: String,
    bits_per_sec: Option<u64>,
    packets_per_sec: Option<u64>,
    burst_bytes: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MirrorFile {
    from: String,
    to: Option<String>,
    pcap: Option<String>,
}

fn parse_mac(key: &str, s: &str) -> Result<[u8; 6], TopologyError> {
    let v: Vec<u8> = s
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| err(key, format!("{s:?} is not a MAC address")))?;
    v.try_into()
        .map_err(|_| err(key, format!("{s:?} is not a MAC address")))
}

fn parse_tcp_flags(key: &str, s: &str) -> Result<(u8, u8), TopologyError> {
    let (mut want, mut mask) = (0u8, 0u8);
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (neg, name) = part.strip_prefix('!').map_or((false, part), |n| (true, n));
        let bit = match name.to_ascii_lowercase().as_str() {
            "fin" => 0x01,
            "syn" => 0x02,
            "rst" => 0x04,
            "psh" => 0x08,
            "ack" => 0x10,
            "urg" => 0x20,
            other => {
                return Err(err(
                    key,
                    format!(
                        "unknown TCP flag {other:?} (fin, syn, rst, psh, ack, urg; prefix ! for unset)"
                    ),
                ));
            }
        };
        mask |= bit;
        if !neg {
            want |= bit;
        }
    }
    Ok((want, mask))
}

fn validate_policy(
    t: &mut Topology,
    acl: Vec<AclFile>,
    limits: Vec<RateLimitFile>,
    mirrors: Vec<MirrorFile>,
) -> Result<(), TopologyError> {
    let on_switch: Vec<String> = t.switch_ports().map(|n| n.name.clone()).collect();
    let check_ns = |key: &str, n: &str| -> Result<(), TopologyError> {
        if on_switch.iter().any(|x| x == n) {
            Ok(())
        } else {
            Err(err(key, format!("{n:?} is not a namespace on the switch")))
        }
    };
    if (!acl.is_empty() || !limits.is_empty() || !mirrors.is_empty()) && t.switch.is_none() {
        return Err(err("acl", "policies need a [switch]"));
    }
    for (i, a) in acl.into_iter().enumerate() {
        let k = |f: &str| format!("acl[{i}].{f}");
        let drop = match a.action.as_str() {
            "drop" => true,
            "allow" => false,
            other => return Err(err(k("action"), format!("{other:?}: use allow or drop"))),
        };
        let in_port = match a.in_port {
            None => None,
            Some(OneOrMany::One(s)) => Some(vec![s]),
            Some(OneOrMany::Many(v)) => Some(v),
        };
        if let Some(ps) = &in_port {
            for p in ps {
                check_ns(&k("in_port"), p)?;
            }
        }
        let num = |key: &str,
                   v: Option<PortSpec>,
                   names: &[(&str, u16)]|
         -> Result<Option<u16>, TopologyError> {
            Ok(match v {
                None => None,
                Some(PortSpec::One(n)) => Some(n),
                Some(PortSpec::Text(s)) => {
                    let s2 = s.trim().to_ascii_lowercase();
                    if let Some((_, n)) = names.iter().find(|(nm, _)| *nm == s2) {
                        Some(*n)
                    } else if let Some(h) = s2.strip_prefix("0x") {
                        Some(
                            u16::from_str_radix(h, 16)
                                .map_err(|_| err(key, format!("{s:?} is not a number")))?,
                        )
                    } else {
                        Some(s2.parse().map_err(|_| {
                            err(key, format!("{s:?} is not a known name or number"))
                        })?)
                    }
                }
            })
        };
        let ethertype = num(
            &k("ethertype"),
            a.ethertype,
            &[
                ("ipv4", 0x0800),
                ("arp", 0x0806),
                ("ipv6", 0x86dd),
                ("vlan", 0x8100),
            ],
        )?;
        let protocol = num(
            &k("protocol"),
            a.protocol,
            &[("icmp", 1), ("tcp", 6), ("udp", 17), ("icmpv6", 58)],
        )?;
        if protocol.is_some_and(|p| p > 255) {
            return Err(err(k("protocol"), "must be 0..=255"));
        }
        let range = |key: &str, v: Option<PortSpec>| -> Result<Option<(u16, u16)>, TopologyError> {
            Ok(match v {
                None => None,
                Some(PortSpec::One(p)) => Some((p, p)),
                Some(PortSpec::Text(s)) => Some(parse_range(key, &s)?),
            })
        };
        t.policy.acl.push(AclSpec {
            name: a.name.unwrap_or_else(|| format!("acl[{i}]")),
            drop,
            in_port,
            src_mac: a
                .src_mac
                .as_deref()
                .map(|m| parse_mac(&k("src_mac"), m))
                .transpose()?,
            dst_mac: a
                .dst_mac
                .as_deref()
                .map(|m| parse_mac(&k("dst_mac"), m))
                .transpose()?,
            vlan: match a.vlan {
                Some(v) if !(1..=4094).contains(&v) => {
                    return Err(err(k("vlan"), "must be 1..=4094"));
                }
                v => v,
            },
            ethertype,
            src: a
                .src
                .as_deref()
                .map(|c| c.parse::<IpCidr>().map_err(|e| err(k("src"), e)))
                .transpose()?,
            dst: a
                .dst
                .as_deref()
                .map(|c| c.parse::<IpCidr>().map_err(|e| err(k("dst"), e)))
                .transpose()?,
            protocol: protocol.map(|p| p as u8),
            sport: range(&k("sport"), a.sport)?,
            dport: range(&k("dport"), a.dport)?,
            state: match a.state.as_deref() {
                None => None,
                Some("established") => Some(true),
                Some("new") => Some(false),
                Some(o) => return Err(err(k("state"), format!("{o:?}: use established or new"))),
            },
            tcp_flags: a
                .tcp_flags
                .as_deref()
                .map(|f| parse_tcp_flags(&k("tcp_flags"), f))
                .transpose()?,
        });
    }
    for (i, l) in limits.into_iter().enumerate() {
        let k = |f: &str| format!("rate_limit[{i}].{f}");
        check_ns(&k("namespace"), &l.namespace)?;
        let (bps, pps) = (l.bits_per_sec.unwrap_or(0), l.packets_per_sec.unwrap_or(0));
        if bps == 0 && pps == 0 {
            return Err(err(
                k("bits_per_sec"),
                "set bits_per_sec and/or packets_per_sec",
            ));
        }
        // Default burst: 10 ms at the rate, at least one 64 KB super-frame.
        let burst = l.burst_bytes.unwrap_or((bps / 8 / 100).max(65_536 + 64));
        t.policy.rate_limits.push(RateLimitSpec {
            namespace: l.namespace,
            bits_per_sec: bps,
            packets_per_sec: pps,
            burst_bytes: burst,
        });
    }
    for (i, m) in mirrors.into_iter().enumerate() {
        check_ns(&format!("mirror[{i}].from"), &m.from)?;
        match (&m.to, &m.pcap) {
            (Some(to), None) => {
                check_ns(&format!("mirror[{i}].to"), to)?;
                if &m.from == to {
                    return Err(err(
                        format!("mirror[{i}].to"),
                        "a port cannot mirror to itself",
                    ));
                }
            }
            (None, Some(p)) if !p.is_empty() => {}
            _ => {
                return Err(err(
                    format!("mirror[{i}]"),
                    "set exactly one of `to` (a namespace) or `pcap` (a file)",
                ));
            }
        }
        t.policy.mirrors.push(MirrorSpec {
            from: m.from,
            to: m.to,
            pcap: m.pcap.map(std::path::PathBuf::from),
        });
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayFile {
    address: OneOrMany,
    ra: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UplinkFile {
    address: OneOrMany,
    netns: Option<String>,
    interface: Option<String>,
    #[serde(default)]
    peer_addresses: Vec<String>,
    ifname: Option<String>,
    switch_ifname: Option<String>,
    next_hop: Option<OneOrMany>,
    mtu: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
    to: String,
    via: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MasqueradeFile {
    source: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NptFile {
    internal: String,
    external: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PortSpec {
    One(u16),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DnatFile {
    protocol: String,
    port: PortSpec,
    to: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NatFile {
    filtering: Option<String>,
    port_range: Option<String>,
    max_entries: Option<usize>,
    max_entries_per_host: Option<usize>,
    max_ports_per_host: Option<u32>,
    new_flows_per_host: Option<u32>,
    port_allocation: Option<String>,
    udp_timeout: Option<u64>,
    tcp_established_timeout: Option<u64>,
    tcp_transitory_timeout: Option<u64>,
    icmp_timeout: Option<u64>,
}

fn parse_range(key: &str, s: &str) -> Result<(u16, u16), TopologyError> {
    let bad = || {
        err(
            key,
            format!("{s:?} is not a port or port range (e.g. 80 or 8000-8010)"),
        )
    };
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: u16 = a.trim().parse().map_err(|_| bad())?;
    let b: u16 = b.trim().parse().map_err(|_| bad())?;
    if a == 0 || b < a {
        return Err(bad());
    }
    Ok((a, b))
}

fn parse_ip(key: &str, s: &str) -> Result<Ipv4Addr, TopologyError> {
    s.parse()
        .map_err(|_| err(key, format!("{s:?} is not an IPv4 address")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchFile {
    name: Option<String>,
    netns: Option<String>,
    ageing_secs: Option<u64>,
    fdb_max: Option<usize>,
    fdb_max_per_port: Option<usize>,
    arp_suppress: Option<bool>,
    arp_max: Option<usize>,
    arp_max_per_port: Option<usize>,
    busy_poll_us: Option<u64>,
    adaptive_poll_us: Option<u64>,
    cpu: Option<usize>,
    state_save_interval: Option<u64>,
    io: Option<String>,
    workers: Option<usize>,
    fastpath: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamespaceFile {
    name: String,
    address: OneOrMany,
    gateway: Option<OneOrMany>,
    kind: Option<String>,
    ifname: Option<String>,
    switch_ifname: Option<String>,
    mtu: Option<u32>,
    isolated: Option<bool>,
    vlan: Option<u16>,
    trunk: Option<Vec<u16>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PairFile {
    a: String,
    b: String,
}

/// Check a namespace name as `ip netns add` would accept it.
fn check_ns_name(key: &str, name: &str) -> Result<(), TopologyError> {
    if name.is_empty() || name.len() > 64 {
        return Err(err(key, "namespace names must be 1..=64 bytes"));
    }
    if name == "."
        || name == ".."
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(err(
            key,
            format!("namespace name {name:?} may only use letters, digits, '-', '_' and '.'"),
        ));
    }
    Ok(())
}

/// Check an interface name against the kernel's rules (`dev_valid_name`).
pub fn check_ifname(key: &str, name: &str) -> Result<(), TopologyError> {
    if name.is_empty() {
        return Err(err(key, "interface name is empty"));
    }
    if name.len() > MAX_IFNAME {
        return Err(err(
            key,
            format!(
                "interface name {name:?} is {} bytes; Linux allows at most {MAX_IFNAME}",
                name.len()
            ),
        ));
    }
    if name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
    {
        return Err(err(key, format!("{name:?} is not a valid interface name")));
    }
    Ok(())
}

impl Topology {
    /// The built-in seed topology (identical to `examples/seed.toml`).
    pub fn seed() -> Topology {
        Topology::parse(SEED_TOML, "seed").expect("built-in seed topology is valid")
    }

    /// Parse and validate TOML text. `default_name` names the topology if it has no `name` key.
    pub fn parse(text: &str, default_name: &str) -> Result<Topology, TopologyError> {
        let file: TopologyFile =
            toml::from_str(text).map_err(|e| err("", e.to_string().trim_end().to_string()))?;
        Self::validate(file, default_name)
    }

    /// Read, parse and validate a topology file.
    pub fn load(path: &std::path::Path) -> Result<Topology, TopologyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err("", format!("cannot read {}: {e}", path.display())))?;
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("topology");
        Self::parse(&text, stem).map_err(|mut e| {
            e.message = format!("{}: {}", path.display(), e.message);
            e
        })
    }

    fn validate(file: TopologyFile, default_name: &str) -> Result<Topology, TopologyError> {
        let name = file.name.unwrap_or_else(|| default_name.to_string());
        if name.is_empty() || name.len() > 64 || name.contains('/') || name.contains('\n') {
            return Err(err(
                "name",
                "topology name must be 1..=64 bytes without '/'",
            ));
        }
        if file.namespace.is_empty() {
            return Err(err("namespace", "the topology has no namespaces"));
        }

        let switch = match file.switch {
            None => None,
            Some(s) => {
                let sname = s.name.unwrap_or_else(|| "v-net-0".into());
                check_ifname("switch.name", &sname)?;
                if let Some(ns) = &s.netns {
                    check_ns_name("switch.netns", ns)?;
                }
                let ageing = s.ageing_secs.unwrap_or(300);
                if ageing == 0 || ageing > 1_000_000 {
                    return Err(err("switch.ageing_secs", "must be in 1..=1000000 seconds"));
                }
                let fdb_max = s.fdb_max.unwrap_or(4096);
                let per_port = s.fdb_max_per_port.unwrap_or(1024);
                if fdb_max == 0 || fdb_max > 1 << 22 {
                    return Err(err("switch.fdb_max", "must be in 1..=4194304"));
                }
                if per_port == 0 || per_port > fdb_max {
                    return Err(err("switch.fdb_max_per_port", "must be in 1..=fdb_max"));
                }
                let arp_max = s.arp_max.unwrap_or(4096);
                if arp_max == 0 || arp_max > 1 << 22 {
                    return Err(err("switch.arp_max", "must be in 1..=4194304"));
                }
                let arp_max_per_port = s.arp_max_per_port.unwrap_or((arp_max / 4).max(1));
                if arp_max_per_port == 0 || arp_max_per_port > arp_max {
                    return Err(err("switch.arp_max_per_port", "must be in 1..=arp_max"));
                }
                let busy = s.busy_poll_us.unwrap_or(DEFAULT_BUSY_POLL_US);
                if busy > 1_000_000 {
                    return Err(err("switch.busy_poll_us", "must be at most 1000000 (1 s)"));
                }
                let adaptive = s.adaptive_poll_us.unwrap_or(DEFAULT_ADAPTIVE_POLL_US);
                if adaptive > 100_000 {
                    return Err(err(
                        "switch.adaptive_poll_us",
                        "must be at most 100000 (100 ms; 0 turns adaptive polling off)",
                    ));
                }
                if let Some(c) = s.cpu
                    && c >= 1024
                {
                    return Err(err("switch.cpu", "must be a CPU number below 1024"));
                }
                if s.state_save_interval.is_some_and(|v| v > 86_400) {
                    return Err(err(
                        "switch.state_save_interval",
                        "must be at most 86400 seconds (0: save only on exit and upgrade)",
                    ));
                }
                let io = match s.io.as_deref() {
                    Some("mmsg") => SwitchIo::Mmsg,
                    None | Some("ring") => SwitchIo::Ring,
                    Some(o) => {
                        return Err(err(
                            "switch.io",
                            format!("{o:?} is not \"mmsg\" or \"ring\""),
                        ));
                    }
                };
                let workers = s.workers.unwrap_or(1);
                if !(1..=MAX_WORKERS).contains(&workers) {
                    return Err(err(
                        "switch.workers",
                        format!("must be in 1..={MAX_WORKERS}"),
                    ));
                }
                let fastpath = match s.fastpath.as_deref() {
                    None | Some("ebpf") => Fastpath::Ebpf,
                    Some("off") => Fastpath::Off,
                    Some(o) => {
                        return Err(err(
                            "switch.fastpath",
                            format!("{o:?} is not \"ebpf\" or \"off\""),
                        ));
                    }
                };
                Some(SwitchSpec {
                    fastpath,
                    cpu: s.cpu,
                    io,
                    workers,
                    state_save_interval: s.state_save_interval.map(Duration::from_secs),
                    busy_poll: Duration::from_micros(busy),
                    adaptive_poll: Duration::from_micros(adaptive),
                    name: sname,
                    netns: s.netns,
                    ageing: Duration::from_secs(ageing),
                    fdb_max,
                    fdb_max_per_port: per_port,
                    arp_suppress: s.arp_suppress.unwrap_or(true),
                    arp_max,
                    arp_max_per_port,
                })
            }
        };

        // Namespace names first, so pairs can refer to them.
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (i, ns) in file.namespace.iter().enumerate() {
            let key = format!("namespace[{i}].name");
            check_ns_name(&key, &ns.name)?;
            if index.insert(&ns.name, i).is_some() {
                return Err(err(key, format!("duplicate namespace {:?}", ns.name)));
            }
            if switch.as_ref().and_then(|s| s.netns.as_deref()) == Some(ns.name.as_str()) {
                return Err(err(
                    key,
                    format!("{:?} is also the switch namespace", ns.name),
                ));
            }
        }

        let mut pairs = Vec::new();
        let mut pair_of: HashMap<usize, usize> = HashMap::new();
        for (p, pf) in file.pair.iter().enumerate() {
            let mut ends = [0usize; 2];
            for (j, (field, n)) in [("a", &pf.a), ("b", &pf.b)].into_iter().enumerate() {
                let key = format!("pair[{p}].{field}");
                let &i = index
                    .get(n.as_str())
                    .ok_or_else(|| err(&key, format!("no namespace named {n:?}")))?;
                if pair_of.insert(i, p).is_some() {
                    return Err(err(
                        key,
                        format!("namespace {n:?} is already on another pair or twice on this one"),
                    ));
                }
                ends[j] = i;
            }
            pairs.push((ends[0], ends[1]));
        }

        let mut namespaces = Vec::new();
        let mut addrs: HashMap<Ipv4Addr, usize> = HashMap::new();
        let mut addrs6: HashMap<std::net::Ipv6Addr, usize> = HashMap::new();
        let mut switch_side: HashMap<String, usize> = HashMap::new();
        for (i, ns) in file.namespace.into_iter().enumerate() {
            let k = |f: &str| format!("namespace[{i}].{f}");
            // One IPv4 address, any number of IPv6 ones.
            let (v4, address6) = split_families(&k("address"), ns.address.into_vec())?;
            for c in &address6 {
                if let Some(j) = addrs6.insert(c.addr, i) {
                    return Err(err(
                        k("address"),
                        format!("{} is already used by namespace[{j}]", c.addr),
                    ));
                }
            }
            let address = one_ipv4(&k("address"), &v4, "192.168.15.1/24")?;
            if address.prefix == 0 || address.prefix > 30 {
                return Err(err(k("address"), "prefix length must be in 1..=30"));
            }
            if address.addr == address.network() || address.addr == address.broadcast() {
                return Err(err(
                    k("address"),
                    format!("{address} is the network or broadcast address of its subnet"),
                ));
            }
            if let Some(j) = addrs.insert(address.addr, i) {
                return Err(err(
                    k("address"),
                    format!("{} is already used by namespace[{j}]", address.addr),
                ));
            }
            let mut gateway = None;
            let mut gateway6 = None;
            for g in ns.gateway.map(OneOrMany::into_vec).unwrap_or_default() {
                if g.contains(':') {
                    let g6: std::net::Ipv6Addr = g
                        .parse()
                        .map_err(|_| err(k("gateway"), format!("{g:?} is not an IPv6 address")))?;
                    let link_local = (g6.segments()[0] & 0xffc0) == 0xfe80;
                    if !link_local && !global_unicast6(g6) {
                        return Err(err(
                            k("gateway"),
                            format!("{g6} is not a unicast IPv6 address"),
                        ));
                    }
                    if !link_local && !address6.iter().any(|c| c.contains(g6)) {
                        return Err(err(
                            k("gateway"),
                            format!(
                                "{g6} is on none of the namespace's IPv6 prefixes (nor link-local)"
                            ),
                        ));
                    }
                    if address6.iter().any(|c| c.addr == g6) || gateway6.replace(g6).is_some() {
                        return Err(err(
                            k("gateway"),
                            format!(
                                "{g6} cannot be the IPv6 gateway (the namespace's own address, or a second one)"
                            ),
                        ));
                    }
                    continue;
                }
                if gateway.is_some() {
                    return Err(err(k("gateway"), "takes one IPv4 gateway, not several"));
                }
                let g: Ipv4Addr = g
                    .parse()
                    .map_err(|_| err(k("gateway"), format!("{g:?} is not an IPv4 address")))?;
                if !address.contains(g) {
                    return Err(err(
                        k("gateway"),
                        format!(
                            "{g} is outside the namespace's subnet {}/{}",
                            address.network(),
                            address.prefix
                        ),
                    ));
                }
                if g == address.addr || g == address.broadcast() || g == address.network() {
                    return Err(err(
                        k("gateway"),
                        format!("{g} cannot be the gateway of {address}"),
                    ));
                }
                gateway = Some(g);
            }
            let kind = match ns.kind.as_deref() {
                None | Some("veth") => EndpointKind::Veth,
                Some("tap") => EndpointKind::Tap,
                Some(other) => {
                    return Err(err(
                        k("kind"),
                        format!("unknown endpoint kind {other:?} (veth or tap)"),
                    ));
                }
            };
            let pair = pair_of.get(&i).copied();
            if pair.is_none() && switch.is_none() {
                return Err(err(
                    k("name"),
                    format!(
                        "namespace {:?} is on no pair and the topology has no [switch]",
                        ns.name
                    ),
                ));
            }
            if pair.is_some() && kind == EndpointKind::Tap {
                return Err(err(
                    k("kind"),
                    "a namespace on a direct pair must use kind = \"veth\"",
                ));
            }
            if kind == EndpointKind::Tap && switch.as_ref().is_some_and(|s| s.workers > 1) {
                return Err(err(
                    k("kind"),
                    "a TAP port needs [switch] workers = 1 (a TAP has one queue; use a veth to spread a port over workers)",
                ));
            }
            let default_if = match kind {
                EndpointKind::Veth => format!("veth-{}", ns.name),
                EndpointKind::Tap => format!("tap-{}", ns.name),
            };
            let ifname = ns.ifname.unwrap_or(default_if);
            check_ifname(&k("ifname"), &ifname)
                .map_err(|e| hint(e, "set `ifname` to a shorter name"))?;
            let switch_ifname = if pair.is_none() && kind == EndpointKind::Veth {
                let n = ns
                    .switch_ifname
                    .unwrap_or_else(|| format!("veth-{}-br", ns.name));
                check_ifname(&k("switch_ifname"), &n)
                    .map_err(|e| hint(e, "set `switch_ifname` to a shorter name"))?;
                if let Some(j) = switch_side.insert(n.clone(), i) {
                    return Err(err(
                        k("switch_ifname"),
                        format!("{n:?} is already the switch-side interface of namespace[{j}]"),
                    ));
                }
                Some(n)
            } else {
                if ns.switch_ifname.is_some() {
                    return Err(err(
                        k("switch_ifname"),
                        "only veth endpoints attached to the switch have a switch-side interface",
                    ));
                }
                None
            };
            if let Some(m) = ns.mtu
                && !(68..=65535).contains(&m)
            {
                return Err(err(k("mtu"), "must be in 68..=65535"));
            }
            if let Some(m) = ns.mtu
                && m < 1280
                && (!address6.is_empty() || gateway6.is_some())
            {
                return Err(err(
                    k("mtu"),
                    "must be at least 1280 with IPv6 addresses (IPv6's minimum link MTU)",
                ));
            }
            namespaces.push(NamespaceSpec {
                name: ns.name,
                address,
                address6,
                gateway,
                gateway6,
                kind,
                ifname,
                switch_ifname,
                mtu: ns.mtu,
                pair,
                isolated: ns.isolated.unwrap_or(false),
                vlan: {
                    let ok = |v: u16| (1..=4094).contains(&v);
                    match (ns.vlan, ns.trunk) {
                        (Some(_), Some(_)) => {
                            return Err(err(
                                k("trunk"),
                                "a port is either an access port (`vlan`) or a trunk (`trunk`)",
                            ));
                        }
                        (Some(_), None) | (None, Some(_)) if pair.is_some() => {
                            return Err(err(
                                k("vlan"),
                                "VLANs are for switch ports, not direct pairs",
                            ));
                        }
                        (Some(v), None) if !ok(v) => {
                            return Err(err(k("vlan"), "must be 1..=4094"));
                        }
                        (Some(v), None) => VlanMode::Access(v),
                        (None, Some(t)) if t.is_empty() || !t.iter().all(|v| ok(*v)) => {
                            return Err(err(k("trunk"), "list VLANs in 1..=4094"));
                        }
                        (None, Some(t)) => VlanMode::Trunk(t),
                        (None, None) => VlanMode::Unset,
                    }
                },
            });
        }
        for (p, &(a, b)) in pairs.iter().enumerate() {
            if namespaces[a].mtu != namespaces[b].mtu {
                return Err(err(
                    format!("pair[{p}]"),
                    "both ends of a pair must have the same mtu",
                ));
            }
        }
        let mut t = Topology {
            name,
            switch,
            namespaces,
            pairs,
            tunnels: Vec::new(),
            gateway: None,
            uplink: None,
            routes: Vec::new(),
            routes6: Vec::new(),
            nat: NatSpec::default(),
            policy: PolicySpec::default(),
        };
        validate_routing(
            &mut t,
            file.gateway,
            file.uplink,
            file.route,
            file.masquerade,
            file.dnat,
            file.nat,
        )?;
        validate_nptv6(&mut t, file.nptv6)?;
        validate_policy(&mut t, file.acl, file.rate_limit, file.mirror)?;
        validate_tunnels(&mut t, file.tunnel)?;
        Ok(t)
    }

    /// Namespaces attached to the switch, in file order.
    pub fn switch_ports(&self) -> impl Iterator<Item = &NamespaceSpec> {
        self.namespaces.iter().filter(|n| n.pair.is_none())
    }

    /// Every namespace name the topology creates, the switch namespace included.
    pub fn all_netns(&self) -> Vec<String> {
        let mut v: Vec<String> = self.namespaces.iter().map(|n| n.name.clone()).collect();
        if let Some(ns) = self.switch.as_ref().and_then(|s| s.netns.clone()) {
            v.push(ns);
        }
        if let Some(UplinkSpec {
            kind: UplinkKind::Veth { netns, .. },
            ..
        }) = &self.uplink
        {
            v.push(netns.clone());
        }
        v
    }
}

/// `[[nptv6]]`: each needs an IPv6 uplink; its internal prefix lies in a
/// `[gateway]` IPv6 prefix, is not masqueraded too (a source is either
/// translated statefully or statelessly) and holds no IPv6 forward's
/// target; its external prefix is routable unicast, has the internal
/// one's length (what [`nat::npt::Npt66::new`] takes), holds neither the
/// uplink's address nor its peers', and overlaps neither the LAN nor
/// another translation.
fn validate_nptv6(t: &mut Topology, npt: Vec<NptFile>) -> Result<(), TopologyError> {
    let overlap = |a: &Ipv6Net, b: &Ipv6Net| a.contains(b.addr) || b.contains(a.addr);
    for (i, n) in npt.into_iter().enumerate() {
        let k = |f: &str| format!("nptv6[{i}].{f}");
        let Some(up) = &t.uplink else {
            return Err(err(k("external"), "NPTv6 needs an [uplink]"));
        };
        let Some(up6) = up.address6 else {
            return Err(err(k("external"), "NPTv6 needs an IPv6 [uplink] address"));
        };
        let internal: Ipv6Net = n.internal.parse().map_err(|e| err(k("internal"), e))?;
        let external: Ipv6Net = n.external.parse().map_err(|e| err(k("external"), e))?;
        let gw = t.gateway.as_ref().expect("uplink implies gateway");
        if !gw
            .address6
            .iter()
            .any(|g| g.contains(internal.addr) && internal.prefix >= g.prefix)
        {
            return Err(err(
                k("internal"),
                format!("{internal} is not inside a [gateway] IPv6 prefix"),
            ));
        }
        let e = external.addr;
        if e.is_multicast() || e.is_unspecified() || (e.segments()[0] & 0xffc0) == 0xfe80 {
            return Err(err(
                k("external"),
                format!("{external} is not a unicast prefix that can be routed"),
            ));
        }
        if gw.address6.iter().any(|g| overlap(g, &external)) {
            return Err(err(k("external"), format!("{external} overlaps the LAN")));
        }
        let mut peers = vec![up6.addr];
        if let UplinkKind::Veth {
            peer_addresses6, ..
        } = &up.kind
        {
            peers.extend(peer_addresses6.iter().map(|c| c.addr));
        }
        if let Some(a) = peers.iter().find(|a| external.contains(**a)) {
            return Err(err(
                k("external"),
                format!("{external} holds {a}, an address of the uplink's link"),
            ));
        }
        // Lengths, overlap: the translator's own checks.
        nat::npt::Npt66::new(internal, external).map_err(|e| err(format!("nptv6[{i}]"), e))?;
        if let Some(d) = t.nat.dnat6.iter().find(|d| internal.contains(d.to_addr)) {
            return Err(err(
                k("internal"),
                format!(
                    "{internal} holds {}, the target of an IPv6 [[dnat]]: a translated host is reached at its external address, not through a forward",
                    d.to_addr
                ),
            ));
        }
        if let Some(m) = t.nat.masquerade6.iter().find(|m| overlap(m, &internal)) {
            return Err(err(
                k("internal"),
                format!(
                    "{internal} overlaps masquerade source {m}: a source is translated by NAT66 or by NPTv6, not both"
                ),
            ));
        }
        if let Some(o) = t
            .nat
            .nptv6
            .iter()
            .find(|o| overlap(&o.internal, &internal) || overlap(&o.external, &external))
        {
            return Err(err(
                k("internal"),
                format!("overlaps the translation {} <-> {}", o.internal, o.external),
            ));
        }
        t.nat.nptv6.push(NptSpec { internal, external });
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn validate_routing(
    t: &mut Topology,
    gateway: Option<GatewayFile>,
    uplink: Option<UplinkFile>,
    routes: Vec<RouteFile>,
    masquerade: Vec<MasqueradeFile>,
    dnat: Vec<DnatFile>,
    nat: Option<NatFile>,
) -> Result<(), TopologyError> {
    if let Some(g) = gateway {
        if t.switch.is_none() {
            return Err(err("gateway", "a gateway needs a [switch]"));
        }
        let (v4, address6) = split_families("gateway.address", g.address.into_vec())?;
        let address = one_ipv4("gateway.address", &v4, "192.168.15.5/24")?;
        if address.prefix == 0
            || address.prefix > 30
            || address.addr == address.network()
            || address.addr == address.broadcast()
        {
            return Err(err(
                "gateway.address",
                format!("{address} is not a usable host address with its subnet"),
            ));
        }
        for (i, ns) in t.namespaces.iter().enumerate() {
            if ns.address.addr == address.addr {
                return Err(err(
                    "gateway.address",
                    format!("{} is already namespace[{i}]'s address", address.addr),
                ));
            }
        }
        for c in &address6 {
            for (i, ns) in t.namespaces.iter().enumerate() {
                if ns.address6.iter().any(|o| o.addr == c.addr) {
                    return Err(err(
                        "gateway.address",
                        format!("{} is already namespace[{i}]'s address", c.addr),
                    ));
                }
            }
        }
        let ra = g.ra.unwrap_or(false);
        if ra && !address6.iter().any(|c| c.prefix == 64) {
            return Err(err(
                "gateway.ra",
                "router advertisements need an IPv6 gateway address with a /64 prefix (SLAAC works on /64 only)",
            ));
        }
        t.gateway = Some(GatewaySpec {
            address,
            address6,
            ra,
        });
    }
    let taken: Vec<String> = t.all_netns();
    if let Some(u) = uplink {
        let gw = t
            .gateway
            .as_ref()
            .ok_or_else(|| err("uplink", "an uplink needs a [gateway] on the LAN"))?;
        let (v4, up6) = split_families("uplink.address", u.address.into_vec())?;
        let address = one_ipv4("uplink.address", &v4, "203.0.113.1/24")?;
        let address6 = match up6.as_slice() {
            [] => None,
            [c] => Some(*c),
            _ => return Err(err("uplink.address", "takes at most one IPv6 address")),
        };
        if let Some(c) = address6 {
            if gw.address6.is_empty() {
                return Err(err(
                    "uplink.address",
                    format!("{c}: an IPv6 uplink needs an IPv6 [gateway] address on the LAN"),
                ));
            }
            if let Some(l) = gw
                .address6
                .iter()
                .find(|l| l.contains(c.addr) || c.contains(l.addr))
            {
                return Err(err(
                    "uplink.address",
                    format!("{c} overlaps the LAN prefix {l}"),
                ));
            }
        }
        if address.prefix == 0
            || address.prefix > 30
            || address.addr == address.network()
            || address.addr == address.broadcast()
        {
            return Err(err(
                "uplink.address",
                format!("{address} is not a usable host address with its subnet"),
            ));
        }
        if gw.address.contains(address.addr) || address.contains(gw.address.addr) {
            return Err(err(
                "uplink.address",
                format!(
                    "{address} overlaps the LAN {}/{}",
                    gw.address.network(),
                    gw.address.prefix
                ),
            ));
        }
        let kind = match (u.netns, u.interface) {
            (Some(netns), None) => {
                check_ns_name("uplink.netns", &netns)?;
                if taken.contains(&netns) {
                    return Err(err(
                        "uplink.netns",
                        format!("namespace {netns:?} is already used by the topology"),
                    ));
                }
                let ifname = u.ifname.unwrap_or_else(|| format!("veth-{netns}"));
                check_ifname("uplink.ifname", &ifname)
                    .map_err(|e| hint(e, "set `ifname` to a shorter name"))?;
                let switch_ifname = u
                    .switch_ifname
                    .unwrap_or_else(|| format!("veth-{netns}-br"));
                check_ifname("uplink.switch_ifname", &switch_ifname)
                    .map_err(|e| hint(e, "set `switch_ifname` to a shorter name"))?;
                if t.namespaces
                    .iter()
                    .any(|n| n.switch_ifname.as_deref() == Some(switch_ifname.as_str()))
                {
                    return Err(err(
                        "uplink.switch_ifname",
                        format!("{switch_ifname:?} is already a switch-side interface"),
                    ));
                }
                let (peer4, peer_addresses6) =
                    split_families("uplink.peer_addresses", u.peer_addresses)?;
                for c in &peer_addresses6 {
                    let up = address6.ok_or_else(|| {
                        err(
                            "uplink.peer_addresses",
                            format!("{c}: IPv6 peers need an IPv6 uplink address"),
                        )
                    })?;
                    if !up.contains(c.addr) || c.prefix != up.prefix || c.addr == up.addr {
                        return Err(err(
                            "uplink.peer_addresses",
                            format!("{c} is not another address of the uplink prefix {up}"),
                        ));
                    }
                }
                let mut peer_addresses = Vec::new();
                for (i, a) in peer4.iter().enumerate() {
                    let k = format!("uplink.peer_addresses[{i}]");
                    let c: Ipv4Net = a.parse().map_err(|e| err(&k, e))?;
                    if !address.contains(c.addr) || c.prefix != address.prefix {
                        return Err(err(
                            k,
                            format!(
                                "{c} is not in the uplink subnet {}/{}",
                                address.network(),
                                address.prefix
                            ),
                        ));
                    }
                    if c.addr == address.addr
                        || peer_addresses.iter().any(|p: &Ipv4Net| p.addr == c.addr)
                    {
                        return Err(err(k, format!("{} is used twice", c.addr)));
                    }
                    peer_addresses.push(c);
                }
                if peer_addresses.is_empty() {
                    return Err(err(
                        "uplink.peer_addresses",
                        "the external namespace needs at least one address",
                    ));
                }
                UplinkKind::Veth {
                    netns,
                    ifname,
                    switch_ifname,
                    peer_addresses,
                    peer_addresses6,
                }
            }
            (None, Some(name)) => {
                check_ifname("uplink.interface", &name)?;
                if !u.peer_addresses.is_empty() || u.ifname.is_some() || u.switch_ifname.is_some() {
                    return Err(err(
                        "uplink.interface",
                        "an existing interface takes no peer_addresses, ifname or switch_ifname",
                    ));
                }
                UplinkKind::Interface { name }
            }
            _ => {
                return Err(err(
                    "uplink",
                    "set exactly one of `netns` (a simulated external network) or `interface` (an existing one)",
                ));
            }
        };
        let (mut next_hop, mut next_hop6) = (None, None);
        for h in u.next_hop.map(OneOrMany::into_vec).unwrap_or_default() {
            if h.contains(':') {
                let ip: std::net::Ipv6Addr = h
                    .parse()
                    .map_err(|_| err("uplink.next_hop", format!("{h:?} is not an IPv6 address")))?;
                let on = address6.is_some_and(|a| a.contains(ip) && a.addr != ip);
                if !on && (ip.segments()[0] & 0xffc0) != 0xfe80 {
                    return Err(err(
                        "uplink.next_hop",
                        format!(
                            "{ip} is not another host of the uplink's IPv6 prefix (nor link-local)"
                        ),
                    ));
                }
                if address6.is_none() || next_hop6.replace(ip).is_some() {
                    return Err(err(
                        "uplink.next_hop",
                        format!("{ip}: one IPv6 next hop, with an IPv6 uplink address"),
                    ));
                }
                continue;
            }
            if next_hop.is_some() {
                return Err(err("uplink.next_hop", "takes one IPv4 next hop"));
            }
            next_hop = {
                let ip = parse_ip("uplink.next_hop", &h)?;
                if !address.contains(ip) || ip == address.addr {
                    return Err(err(
                        "uplink.next_hop",
                        format!("{ip} is not another host of the uplink subnet"),
                    ));
                }
                Some(ip)
            };
        }
        let mtu = u.mtu.unwrap_or(1500);
        if !(576..=65535).contains(&mtu) {
            return Err(err("uplink.mtu", "must be in 576..=65535"));
        }
        if address6.is_some() && mtu < 1280 {
            return Err(err(
                "uplink.mtu",
                "must be at least 1280 with an IPv6 address (the IPv6 minimum MTU)",
            ));
        }
        t.uplink = Some(UplinkSpec {
            address,
            address6,
            next_hop6,
            kind,
            next_hop,
            mtu,
        });
    }
    for (i, r) in routes.into_iter().enumerate() {
        let gw = t
            .gateway
            .as_ref()
            .ok_or_else(|| err(format!("route[{i}]"), "routes need a [gateway]"))?;
        if r.to.contains(':') {
            let to: Ipv6Net = r.to.parse().map_err(|e| err(format!("route[{i}].to"), e))?;
            let via: std::net::Ipv6Addr = r.via.parse().map_err(|_| {
                err(
                    format!("route[{i}].via"),
                    format!("{:?} is not an IPv6 address", r.via),
                )
            })?;
            let link_local = (via.segments()[0] & 0xffc0) == 0xfe80;
            if !link_local && !gw.address6.iter().any(|c| c.contains(via) && c.addr != via) {
                return Err(err(
                    format!("route[{i}].via"),
                    format!(
                        "{via} is not another host of the gateway's IPv6 prefixes (nor link-local)"
                    ),
                ));
            }
            if to.prefix == 0
                || gw
                    .address6
                    .iter()
                    .any(|c| c.contains(to.addr) || to.contains(c.addr))
            {
                return Err(err(
                    format!("route[{i}].to"),
                    format!("{to} overlaps the LAN (or is a default route: use [uplink] next_hop)"),
                ));
            }
            t.routes6.push(Route6Spec { to, via });
            continue;
        }
        let to: Ipv4Net = r.to.parse().map_err(|e| err(format!("route[{i}].to"), e))?;
        let via = parse_ip(&format!("route[{i}].via"), &r.via)?;
        if !gw.address.contains(via) || via == gw.address.addr {
            return Err(err(
                format!("route[{i}].via"),
                format!(
                    "{via} is not another host of the LAN {}/{}",
                    gw.address.network(),
                    gw.address.prefix
                ),
            ));
        }
        t.routes.push(RouteSpec { to, via });
    }
    let needs_uplink = |k: &str| err(k, "NAT rules need an [uplink]");
    for (i, m) in masquerade.into_iter().enumerate() {
        let k = format!("masquerade[{i}].source");
        let Some(up) = &t.uplink else {
            return Err(needs_uplink(&k));
        };
        if m.source.contains(':') {
            if up.address6.is_none() {
                return Err(err(
                    &k,
                    format!(
                        "{}: IPv6 masquerade needs an IPv6 [uplink] address",
                        m.source
                    ),
                ));
            }
            t.nat
                .masquerade6
                .push(m.source.parse().map_err(|e| err(&k, e))?);
            continue;
        }
        t.nat
            .masquerade
            .push(m.source.parse().map_err(|e| err(&k, e))?);
    }
    for (i, d) in dnat.into_iter().enumerate() {
        let k = |f: &str| format!("dnat[{i}].{f}");
        if t.uplink.is_none() {
            return Err(needs_uplink(&k("to")));
        }
        if d.protocol != "tcp" && d.protocol != "udp" {
            return Err(err(
                k("protocol"),
                format!("{:?}: only tcp and udp can be forwarded", d.protocol),
            ));
        }
        let ports = match d.port {
            PortSpec::One(p) if p > 0 => (p, p),
            PortSpec::One(_) => return Err(err(k("port"), "port 0 cannot be forwarded")),
            PortSpec::Text(s) => parse_range(&k("port"), &s)?,
        };
        let (a, p) = d.to.rsplit_once(':').ok_or_else(|| {
            err(
                k("to"),
                format!("{:?} is not address:port (or [IPv6 address]:port)", d.to),
            )
        })?;
        let v6 = a.strip_prefix('[').and_then(|a| a.strip_suffix(']'));
        let to_port: u16 = p
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| err(k("to"), format!("{p:?} is not a port")))?;
        if u32::from(to_port) + u32::from(ports.1 - ports.0) > 65535 {
            return Err(err(k("to"), "the forwarded range runs past port 65535"));
        }
        let gw = t.gateway.as_ref().expect("uplink implies gateway");
        if let Some(a6) = v6 {
            let to_addr: std::net::Ipv6Addr = a6
                .parse()
                .map_err(|_| err(k("to"), format!("{a6:?} is not an IPv6 address")))?;
            if t.uplink.as_ref().is_some_and(|u| u.address6.is_none()) {
                return Err(err(
                    k("to"),
                    "an IPv6 forward needs an IPv6 [uplink] address",
                ));
            }
            if !gw.address6.iter().any(|c| c.contains(to_addr))
                || gw.address6.iter().any(|c| c.addr == to_addr)
            {
                return Err(err(
                    k("to"),
                    format!("{to_addr} is not a host of the LAN's IPv6 prefixes"),
                ));
            }
            if let Some((j, _)) = t.nat.dnat6.iter().enumerate().find(|(_, o)| {
                o.protocol == d.protocol && o.ports.0 <= ports.1 && ports.0 <= o.ports.1
            }) {
                return Err(err(k("port"), format!("overlaps IPv6 forward {j}")));
            }
            t.nat.dnat6.push(DnatSpec {
                protocol: d.protocol,
                ports,
                to_addr,
                to_port,
            });
            continue;
        }
        let to_addr = parse_ip(&k("to"), a)?;
        if !gw.address.contains(to_addr) && !t.routes.iter().any(|r| r.to.contains(to_addr)) {
            return Err(err(
                k("to"),
                format!("{to_addr} is not on the LAN or behind a route"),
            ));
        }
        if let Some((j, _)) =
            t.nat.dnat.iter().enumerate().find(|(_, o)| {
                o.protocol == d.protocol && o.ports.0 <= ports.1 && ports.0 <= o.ports.1
            })
        {
            return Err(err(k("port"), format!("overlaps dnat[{j}]")));
        }
        t.nat.dnat.push(DnatSpec {
            protocol: d.protocol,
            ports,
            to_addr,
            to_port,
        });
    }
    if let Some(n) = nat {
        if t.uplink.is_none() {
            return Err(needs_uplink("nat"));
        }
        if let Some(f) = n.filtering {
            if ![
                "endpoint-independent",
                "address-dependent",
                "address-and-port-dependent",
            ]
            .contains(&f.as_str())
            {
                return Err(err(
                    "nat.filtering",
                    format!(
                        "{f:?}: use endpoint-independent, address-dependent or address-and-port-dependent"
                    ),
                ));
            }
            t.nat.filtering = f;
        }
        if let Some(r) = n.port_range {
            let pr = parse_range("nat.port_range", &r)?;
            if pr.0 < 1024 || pr.1 - pr.0 < 63 {
                return Err(err(
                    "nat.port_range",
                    "must lie in 1024-65535 and hold at least 64 ports",
                ));
            }
            t.nat.port_range = pr;
        }
        if let Some(m) = n.max_entries {
            if !(16..=1 << 24).contains(&m) {
                return Err(err("nat.max_entries", "must be in 16..=16777216"));
            }
            t.nat.max_entries = m;
        }
        if let Some(m) = n.max_entries_per_host {
            if !(1..=t.nat.max_entries).contains(&m) {
                return Err(err(
                    "nat.max_entries_per_host",
                    format!("must be in 1..={} (nat.max_entries)", t.nat.max_entries),
                ));
            }
            t.nat.max_entries_per_host = Some(m);
        }
        if let Some(m) = n.max_ports_per_host {
            if !(1..=65_535).contains(&m) {
                return Err(err("nat.max_ports_per_host", "must be in 1..=65535"));
            }
            t.nat.max_ports_per_host = m;
        }
        if let Some(m) = n.new_flows_per_host {
            if m > 10_000_000 {
                return Err(err(
                    "nat.new_flows_per_host",
                    "must be in 0..=10000000 (0: unlimited)",
                ));
            }
            t.nat.new_flows_per_host = m;
        }
        if let Some(a) = n.port_allocation {
            if a != "random" && a != "sequential" {
                return Err(err(
                    "nat.port_allocation",
                    format!("{a:?}: use random or sequential"),
                ));
            }
            t.nat.port_allocation = a;
        }
        let min =
            |k: &str, v: Option<u64>, floor: u64, into: &mut u64| -> Result<(), TopologyError> {
                if let Some(v) = v {
                    if v < floor {
                        return Err(err(
                            k,
                            format!("{v} s is below the RFC minimum of {floor} s"),
                        ));
                    }
                    if v > MAX_NAT_TIMEOUT {
                        return Err(err(
                            k,
                            format!("{v} s is above the maximum of {MAX_NAT_TIMEOUT} s (one week)"),
                        ));
                    }
                    *into = v;
                }
                Ok(())
            };
        min(
            "nat.udp_timeout",
            n.udp_timeout,
            120,
            &mut t.nat.udp_timeout,
        )?;
        min(
            "nat.tcp_established_timeout",
            n.tcp_established_timeout,
            7440,
            &mut t.nat.tcp_established_timeout,
        )?;
        min(
            "nat.tcp_transitory_timeout",
            n.tcp_transitory_timeout,
            240,
            &mut t.nat.tcp_transitory_timeout,
        )?;
        min(
            "nat.icmp_timeout",
            n.icmp_timeout,
            60,
            &mut t.nat.icmp_timeout,
        )?;
    }
    Ok(())
}

fn hint(mut e: TopologyError, h: &str) -> TopologyError {
    e.message = format!("{} ({h})", e.message);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_is_valid_and_as_documented() {
        let t = Topology::seed();
        assert_eq!(t.name, "seed");
        let s = t.switch.as_ref().unwrap();
        assert_eq!(s.name, "v-net-0");
        assert_eq!(s.ageing, Duration::from_secs(300));
        assert_eq!(t.namespaces.len(), 2);
        let red = &t.namespaces[0];
        assert_eq!(red.name, "red");
        assert_eq!(red.address.to_string(), "192.168.15.1/24");
        assert_eq!(red.gateway, Some(Ipv4Addr::new(192, 168, 15, 5)));
        assert_eq!(red.ifname, "veth-red");
        assert_eq!(red.switch_ifname.as_deref(), Some("veth-red-br"));
        assert_eq!(t.namespaces[1].address.to_string(), "192.168.15.2/24");
        assert_eq!(
            t.gateway.as_ref().unwrap().address.to_string(),
            "192.168.15.5/24"
        );
        let u = t.uplink.as_ref().unwrap();
        assert_eq!(u.address.to_string(), "203.0.113.1/24");
        assert_eq!(u.port_name(), "veth-wan-br");
        assert_eq!(t.nat.masquerade[0].to_string(), "192.168.15.0/24");
        assert_eq!(
            t.nat.dnat[0],
            DnatSpec {
                protocol: "tcp".into(),
                ports: (80, 80),
                to_addr: Ipv4Addr::new(192, 168, 15, 2),
                to_port: 80
            }
        );
        assert_eq!(t.all_netns(), vec!["red", "blue", "wan"]);
    }

    #[test]
    fn state_save_interval_is_a_bounded_switch_key() {
        let base = "[[namespace]]\nname='a'\naddress='10.0.0.1/24'\n";
        let t =
            Topology::parse(&format!("[switch]\nstate_save_interval = 1\n{base}"), "t").unwrap();
        let s = t.switch.unwrap();
        assert_eq!(s.state_save_interval, Some(Duration::from_secs(1)));
        let t = Topology::parse(&format!("[switch]\n{base}"), "t").unwrap();
        assert_eq!(t.switch.unwrap().state_save_interval, None);
        let e = parse_err(&format!("[switch]\nstate_save_interval = 90000\n{base}"));
        assert!(e.to_string().contains("switch.state_save_interval"), "{e}");
    }

    #[test]
    fn namespaces_take_one_ipv4_and_any_ipv6_addresses() {
        let ns = |a: &str, g: &str| {
            Topology::parse(
                &format!(
                    "[switch]\n[[namespace]]\nname='a'\naddress={a}\n{g}[[namespace]]\nname='b'\naddress=['10.0.0.2/24', 'fd00::2/64']\n"
                ),
                "t",
            )
        };
        let t = ns(
            "['10.0.0.1/24', 'fd00::1/64', '2001:db8::1/48']",
            "gateway=['10.0.0.254', 'fd00::5']\n",
        )
        .unwrap();
        let a = &t.namespaces[0];
        assert_eq!(a.address.to_string(), "10.0.0.1/24");
        let v6: Vec<String> = a.address6.iter().map(ToString::to_string).collect();
        assert_eq!(v6, ["fd00::1/64", "2001:db8::1/48"]);
        assert_eq!(a.gateway, Some("10.0.0.254".parse().unwrap()));
        assert_eq!(a.gateway6, Some("fd00::5".parse().unwrap()));
        assert!(t.namespaces[1].gateway6.is_none());
        // A plain string stays valid; a link-local IPv6 next hop needs no
        // IPv6 prefix (every interface has a link-local address).
        let t = ns("'10.0.0.1/24'", "gateway='fe80::1'\n").unwrap();
        assert!(t.namespaces[0].address6.is_empty());
        assert_eq!(t.namespaces[0].gateway6, Some("fe80::1".parse().unwrap()));
        for (a, g, want) in [
            ("['fd00::1/64']", "", "needs one IPv4 address"),
            ("['10.0.0.1/24', '10.0.0.3/24']", "", "not several"),
            (
                "['10.0.0.1/24', 'fd00::2/64']",
                "",
                "fd00::2 is already used",
            ),
            ("['10.0.0.1/24', 'ff02::1/64']", "", "unicast IPv6 address"),
            ("['10.0.0.1/24', 'fd00::1/0']", "", "unicast IPv6 address"),
            ("['10.0.0.1/24', 'fd00::1']", "", "not a CIDR"),
            ("['10.0.0.1/24', '::ffff:10.0.0.9/96']", "", "not a global"),
            (
                "['10.0.0.1/24', 'fe80::9/64']",
                "",
                "link-local addresses are automatic",
            ),
            (
                "['10.0.0.1/24', 'fd00::1/64', 'fd00::1/64']",
                "",
                "listed twice",
            ),
            (
                "['10.0.0.1/24', 'fd00::1/64']",
                "mtu=1200\n",
                "at least 1280",
            ),
            (
                "['10.0.0.1/24', 'fd00::1/64']",
                "gateway='fd01::5'\n",
                "none of the namespace's IPv6 prefixes",
            ),
            (
                "['10.0.0.1/24', 'fd00::1/64']",
                "gateway='fd00::1'\n",
                "own address",
            ),
            (
                "['10.0.0.1/24', 'fd00::1/64']",
                "gateway=['fd00::5', 'fd00::6']\n",
                "a second one",
            ),
            (
                "['10.0.0.1/24', 'fd00::1/64']",
                "gateway=['10.0.0.5', '10.0.0.6']\n",
                "not several",
            ),
        ] {
            let e = ns(a, g).unwrap_err().to_string();
            assert!(e.contains("namespace[") && e.contains(want), "{a} {g}: {e}");
        }
    }

    #[test]
    fn switch_workers_are_bounded_and_need_veth_ports() {
        let base = "[[namespace]]\nname='a'\naddress='10.0.0.1/24'\n";
        let w = |v: &str, b: &str| {
            Topology::parse(&format!("[switch]\n{v}{b}"), "t").map(|t| t.switch.unwrap().workers)
        };
        assert_eq!(w("", base).unwrap(), 1, "default");
        assert_eq!(w("workers = 2\n", base).unwrap(), 2);
        for bad in ["workers = 0\n", "workers = 65\n"] {
            let e = w(bad, base).unwrap_err().to_string();
            assert!(e.contains("switch.workers") && e.contains("1..=64"), "{e}");
        }
        let e = w("workers = 2\n", &format!("{base}kind = 'tap'\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("kind") && e.contains("workers = 1"), "{e}");
        assert_eq!(w("", &format!("{base}kind = 'tap'\n")).unwrap(), 1);
    }

    #[test]
    fn switch_io_is_mmsg_or_ring() {
        let base = "[[namespace]]\nname='a'\naddress='10.0.0.1/24'\n";
        let io = |v: &str| {
            Topology::parse(&format!("[switch]\n{v}{base}"), "t").map(|t| t.switch.unwrap().io)
        };
        assert_eq!(io("").unwrap(), SwitchIo::Ring, "default");
        assert_eq!(io("io = 'mmsg'\n").unwrap(), SwitchIo::Mmsg);
        assert_eq!(io("io = 'ring'\n").unwrap(), SwitchIo::Ring);
        let e = io("io = 'xdp'\n").unwrap_err().to_string();
        assert!(e.contains("switch.io") && e.contains("\"xdp\""), "{e}");
    }

    #[test]
    fn routing_sections_are_validated() {
        let base = "[switch]\n[[namespace]]\nname='a'\naddress='10.0.0.1/24'\n";
        let gw = "[gateway]\naddress='10.0.0.5/24'\n";
        let up =
            "[uplink]\nnetns='w'\naddress='203.0.113.1/24'\npeer_addresses=['203.0.113.10/24']\n";
        let e = parse_err(&format!("{base}{up}"));
        assert_eq!(e.key, "uplink");
        let e = parse_err(&format!(
            "{base}{gw}[uplink]\nnetns='w'\naddress='10.0.0.9/24'\npeer_addresses=['10.0.0.10/24']\n"
        ));
        assert_eq!(e.key, "uplink.address");
        let e = parse_err(&format!(
            "{base}{gw}[uplink]\nnetns='w'\naddress='203.0.113.1/24'\npeer_addresses=['198.51.100.1/24']\n"
        ));
        assert_eq!(e.key, "uplink.peer_addresses[0]");
        let e = parse_err(&format!(
            "{base}{gw}{up}[[dnat]]\nprotocol='icmp'\nport=1\nto='10.0.0.1:1'\n"
        ));
        assert_eq!(e.key, "dnat[0].protocol");
        let e = parse_err(&format!(
            "{base}{gw}{up}[[dnat]]\nprotocol='tcp'\nport='90-80'\nto='10.0.0.1:1'\n"
        ));
        assert_eq!(e.key, "dnat[0].port");
        let e = parse_err(&format!(
            "{base}{gw}{up}[[dnat]]\nprotocol='tcp'\nport=80\nto='172.16.0.1:80'\n"
        ));
        assert_eq!(e.key, "dnat[0].to");
        let e = parse_err(&format!("{base}{gw}{up}[nat]\nudp_timeout=30\n"));
        assert_eq!(e.key, "nat.udp_timeout");
        let e = parse_err(&format!(
            "{base}{gw}{up}[nat]\ntcp_established_timeout=18446744073709551615\n"
        ));
        assert_eq!(e.key, "nat.tcp_established_timeout");
        assert!(e.message.contains("maximum"), "{}", e.message);
        let e = parse_err(&format!(
            "{base}{gw}{up}[nat]\nmax_entries=64\nmax_entries_per_host=65\n"
        ));
        assert_eq!(e.key, "nat.max_entries_per_host");
        let e = parse_err(&format!("{base}{gw}{up}[nat]\nmax_ports_per_host=0\n"));
        assert_eq!(e.key, "nat.max_ports_per_host");
        let e = parse_err(&format!(
            "{base}{gw}{up}[nat]\nnew_flows_per_host=20000000\n"
        ));
        assert_eq!(e.key, "nat.new_flows_per_host");
        let t =
            Topology::parse(&format!("{base}{gw}{up}[nat]\nnew_flows_per_host=0\n"), "t").unwrap();
        assert_eq!(t.nat.new_flows_per_host, 0, "0 is unlimited");
        let e = parse_err(&base.replace("[switch]\n", "[switch]\narp_max=8\narp_max_per_port=9\n"));
        assert_eq!(e.key, "switch.arp_max_per_port");
        let t =
            Topology::parse(&base.replace("[switch]\n", "[switch]\narp_max=100\n"), "t").unwrap();
        assert_eq!(t.switch.unwrap().arp_max_per_port, 25, "default: a quarter");
        let e = parse_err(&format!("{base}{gw}{up}[nat]\nfiltering='full-cone'\n"));
        assert_eq!(e.key, "nat.filtering");
        let e = parse_err(&format!("{base}[[masquerade]]\nsource='10.0.0.0/24'\n"));
        assert_eq!(e.key, "masquerade[0].source");
        let e = parse_err(&format!(
            "{base}{gw}[[route]]\nto='10.9.0.0/16'\nvia='10.1.0.1'\n"
        ));
        assert_eq!(e.key, "route[0].via");
        let ok = Topology::parse(
            &format!(
                "{base}{gw}{up}[[dnat]]\nprotocol='udp'\nport='5000-5009'\nto='10.0.0.1:6000'\n"
            ),
            "t",
        )
        .unwrap();
        assert_eq!(ok.nat.dnat[0].ports, (5000, 5009));
    }

    #[test]
    fn nptv6_translations_are_validated() {
        let base = include_str!("../../examples/dualstack.toml")
            .replace("[[masquerade]]\nsource = \"fd00:15::/64\"\n", "")
            .replace(
                "[[dnat]]\nprotocol = \"tcp\"\nport = 80\nto = \"[fd00:15::2]:80\"\n",
                "",
            );
        let npt =
            |i: &str, e: &str| format!("{base}[[nptv6]]\ninternal = '{i}'\nexternal = '{e}'\n");
        let t = Topology::parse(&npt("fd00:15::/64", "2001:db8:113:1::/64"), "t").unwrap();
        assert_eq!(t.nat.nptv6.len(), 1);
        assert_eq!(t.nat.nptv6[0].external.to_string(), "2001:db8:113:1::/64");
        for (i, e, key, says) in [
            (
                "fd00:99::/64",
                "2001:db8:113:1::/64",
                "nptv6[0].internal",
                "not inside",
            ),
            (
                "fd00:15::/64",
                "2001:db8:114::/48",
                "nptv6[0]",
                "one length",
            ),
            ("fd00:15::/64", "fe80::/64", "nptv6[0].external", "routed"),
            (
                "fd00:15::/64",
                "2001:db8:113::/64",
                "nptv6[0].external",
                "2001:db8:113::1",
            ),
            (
                "fd00:15::/64",
                "fd00:15::/64",
                "nptv6[0].external",
                "overlaps the LAN",
            ),
            ("fd00:15::/72", "2001:db8:113:1::/72", "nptv6[0]", "/72"),
        ] {
            let e = parse_err(&npt(i, e));
            assert_eq!(e.key, key, "{i} {e:?}");
            assert!(e.message.contains(says), "{i}: {}", e.message);
        }
        // A source is translated by NAT66 or NPTv6, not both.
        let both = format!(
            "{}[[nptv6]]\ninternal = 'fd00:15::/64'\nexternal = '2001:db8:113:1::/64'\n",
            include_str!("../../examples/dualstack.toml").replace(
                "[[dnat]]\nprotocol = \"tcp\"\nport = 80\nto = \"[fd00:15::2]:80\"\n",
                ""
            )
        );
        let e = parse_err(&both);
        assert!(e.message.contains("not both"), "{}", e.message);
        // Nor is a translated host a forward's target.
        let fwd = include_str!("../../examples/dualstack.toml")
            .replace("[[masquerade]]\nsource = \"fd00:15::/64\"\n", "")
            + "[[nptv6]]\ninternal = 'fd00:15::/64'\nexternal = '2001:db8:113:1::/64'\n";
        let e = parse_err(&fwd);
        assert!(e.message.contains("[[dnat]]"), "{}", e.message);
        // Nor is a translated host a forward's target.
        let fwd = include_str!("../../examples/dualstack.toml")
            .replace("[[masquerade]]\nsource = \"fd00:15::/64\"\n", "")
            + "[[nptv6]]\ninternal = 'fd00:15::/64'\nexternal = '2001:db8:113:1::/64'\n";
        let e = parse_err(&fwd);
        assert!(e.message.contains("[[dnat]]"), "{}", e.message);
    }

    #[test]
    fn pair_example_is_valid() {
        let t = Topology::parse(include_str!("../../examples/pair.toml"), "pair").unwrap();
        assert!(t.switch.is_none());
        assert_eq!(t.pairs, vec![(0, 1)]);
        assert_eq!(t.namespaces[0].ifname, "veth-red");
        assert_eq!(t.namespaces[1].ifname, "veth-blue");
    }

    fn parse_err(s: &str) -> TopologyError {
        Topology::parse(s, "t").unwrap_err()
    }

    const SW: &str = "[switch]\n";

    #[test]
    fn unknown_key_is_named() {
        let e = parse_err("[switch]\nbogus = 1\n[[namespace]]\nname='a'\naddress='10.0.0.1/24'\n");
        assert!(e.message.contains("bogus"), "{e}");
    }

    #[test]
    fn bad_cidr_is_named() {
        let e = parse_err(&format!(
            "{SW}[[namespace]]\nname='a'\naddress='10.0.0.300/24'\n"
        ));
        assert_eq!(e.key, "namespace[0].address");
        let e = parse_err(&format!(
            "{SW}[[namespace]]\nname='a'\naddress='10.0.0.3/33'\n"
        ));
        assert_eq!(e.key, "namespace[0].address");
        let e = parse_err(&format!(
            "{SW}[[namespace]]\nname='a'\naddress='10.0.0.3'\n"
        ));
        assert_eq!(e.key, "namespace[0].address");
    }

    #[test]
    fn acl_cidrs_take_both_families() {
        let ns = "[[namespace]]\nname='a'\naddress='10.0.0.1/24'\n";
        let t = Topology::parse(
            &format!(
                "{SW}{ns}[[acl]]\naction='drop'\nsrc='fe80::/10'\ndst='192.168.15.0/24'\nprotocol='icmpv6'\n[[acl]]\naction='allow'\nsrc='2001:db8::1'\ndst='10.0.0.2'\n"
            ),
            "t",
        )
        .unwrap();
        let a = &t.policy.acl;
        assert_eq!(a[0].src, Some(IpCidr::V6("fe80::/10".parse().unwrap())));
        assert_eq!(a[0].dst.unwrap().to_string(), "192.168.15.0/24");
        assert_eq!(a[0].protocol, Some(58));
        assert_eq!(
            a[1].src,
            Some(IpCidr::V6("2001:db8::1/128".parse().unwrap()))
        );
        assert_eq!(a[1].dst.unwrap().to_string(), "10.0.0.2/32");
        for bad in ["fe80::/129", "10.0.0.0/33", "fe80::x/64", "nonsense"] {
            let e = parse_err(&format!("{SW}{ns}[[acl]]\naction='drop'\nsrc='{bad}'\n"));
            assert_eq!(e.key, "acl[0].src", "{bad}");
        }
    }

    #[test]
    fn acl_cidr_messages() {
        let e = |s: &str| s.parse::<IpCidr>().unwrap_err();
        assert_eq!(e("fe80::/129"), "prefix length \"129\" is not in 0..=128");
        assert_eq!(e("10.0.0.0/33"), "prefix length \"33\" is not in 0..=32");
        assert_eq!(e("fe80::x/64"), "\"fe80::x\" is not an IPv4 address");
        assert_eq!(
            e("nonsense"),
            "\"nonsense\" is not a CIDR (expected a.b.c.d/len or an IPv6 prefix)"
        );
        // A bare address, or an empty length, is a host.
        assert_eq!(
            "fe80::/".parse::<IpCidr>().unwrap().to_string(),
            "fe80::/128"
        );
        assert_eq!(
            "10.0.0.1".parse::<IpCidr>().unwrap().to_string(),
            "10.0.0.1/32"
        );
    }

    #[test]
    fn duplicates_are_named() {
        let e = parse_err(&format!(
            "{SW}[[namespace]]\nname='a'\naddress='10.0.0.1/24'\n[[namespace]]\nname='a'\naddress='10.0.0.2/24'\n"
        ));
        assert_eq!(e.key, "namespace[1].name");
        let e = parse_err(&format!(
            "{SW}[[namespace]]\nname='a'\naddress='10.0.0.1/24'\n[[namespace]]\nname='b'\naddress='10.0.0.1/24'\n"
        ));
        assert_eq!(e.key, "namespace[1].address");
    }

    #[test]
    fn gateway_outside_subnet_is_named() {
        let e = parse_err(&format!(
            "{SW}[[namespace]]\nname='a'\naddress='10.0.0.1/24'\ngateway='10.0.1.1'\n"
        ));
        assert_eq!(e.key, "namespace[0].gateway");
        assert!(e.message.contains("outside"), "{e}");
    }

    #[test]
    fn long_interface_name_is_named() {
        let e = parse_err(&format!(
            "{SW}[[namespace]]\nname='verylongname'\naddress='10.0.0.1/24'\n"
        ));
        assert_eq!(e.key, "namespace[0].ifname");
        assert!(e.message.contains("at most 15"), "{e}");
        let e = parse_err(&format!(
            "{SW}[[namespace]]\nname='abcdefgh'\naddress='10.0.0.1/24'\n"
        ));
        assert_eq!(e.key, "namespace[0].switch_ifname");
    }

    #[test]
    fn network_address_is_rejected() {
        let e = parse_err(&format!(
            "{SW}[[namespace]]\nname='a'\naddress='10.0.0.0/24'\n"
        ));
        assert_eq!(e.key, "namespace[0].address");
    }

    #[test]
    fn namespace_without_switch_or_pair_is_rejected() {
        let e = parse_err("[[namespace]]\nname='a'\naddress='10.0.0.1/24'\n");
        assert_eq!(e.key, "namespace[0].name");
    }

    #[test]
    fn unknown_kind_and_bad_pair() {
        let e = parse_err(&format!(
            "{SW}[[namespace]]\nname='a'\naddress='10.0.0.1/24'\nkind='vxlan'\n"
        ));
        assert_eq!(e.key, "namespace[0].kind");
        let e =
            parse_err("[[namespace]]\nname='a'\naddress='10.0.0.1/24'\n[[pair]]\na='a'\nb='zz'\n");
        assert_eq!(e.key, "pair[0].b");
    }

    #[test]
    fn cidr_helpers() {
        let c: Ipv4Net = "192.168.15.7/24".parse().unwrap();
        assert_eq!(c.network(), Ipv4Addr::new(192, 168, 15, 0));
        assert_eq!(c.broadcast(), Ipv4Addr::new(192, 168, 15, 255));
        assert!(c.contains(Ipv4Addr::new(192, 168, 15, 200)));
        assert!(!c.contains(Ipv4Addr::new(192, 168, 16, 1)));
    }
}
