//! The topology file: serde edge types, converted once into validated types.
//!
//! Contract: [`Topology::parse`] either returns a topology whose every name,
//! address and reference has been checked, or a [`TopologyError`] naming the
//! offending key (`namespace[1].address`, `switch.name`, ...). Nothing outside
//! this module sees the raw serde structs.

use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

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

/// An IPv4 address with a prefix length, `192.168.15.1/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    /// The host address.
    pub addr: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// The network mask as a host-order integer.
    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    /// The directed broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    /// Whether `ip` lies in this subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (expected a.b.c.d/len)"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("prefix length {p:?} is not in 0..=32"))?;
        Ok(Ipv4Cidr { addr, prefix })
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
}

/// Validated namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceSpec {
    /// Namespace name, as in `ip netns list`.
    pub name: String,
    /// Address of the namespace's interface.
    pub address: Ipv4Cidr,
    /// Default route via this address, if any.
    pub gateway: Option<Ipv4Addr>,
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamespaceFile {
    name: String,
    address: String,
    gateway: Option<String>,
    kind: Option<String>,
    ifname: Option<String>,
    switch_ifname: Option<String>,
    mtu: Option<u32>,
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
                Some(SwitchSpec {
                    name: sname,
                    netns: s.netns,
                    ageing: Duration::from_secs(ageing),
                    fdb_max,
                    fdb_max_per_port: per_port,
                    arp_suppress: s.arp_suppress.unwrap_or(true),
                    arp_max,
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
        let mut switch_side: HashMap<String, usize> = HashMap::new();
        for (i, ns) in file.namespace.into_iter().enumerate() {
            let k = |f: &str| format!("namespace[{i}].{f}");
            let address: Ipv4Cidr = ns.address.parse().map_err(|e| err(k("address"), e))?;
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
            let gateway = match ns.gateway {
                None => None,
                Some(g) => {
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
                    Some(g)
                }
            };
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
            namespaces.push(NamespaceSpec {
                name: ns.name,
                address,
                gateway,
                kind,
                ifname,
                switch_ifname,
                mtu: ns.mtu,
                pair,
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
        Ok(Topology {
            name,
            switch,
            namespaces,
            pairs,
        })
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
        v
    }
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
        let c: Ipv4Cidr = "192.168.15.7/24".parse().unwrap();
        assert_eq!(c.network(), Ipv4Addr::new(192, 168, 15, 0));
        assert_eq!(c.broadcast(), Ipv4Addr::new(192, 168, 15, 255));
        assert!(c.contains(Ipv4Addr::new(192, 168, 15, 200)));
        assert!(!c.contains(Ipv4Addr::new(192, 168, 16, 1)));
    }
}
