//! `up`, `down` and `show`: a validated [`Topology`] made real, removed, inspected.
//!
//! Contract:
//! - [`up`] is idempotent: what already exists and belongs to this topology is
//!   kept as it is; what is missing is created. If any step fails, everything
//!   this call created is removed again, so no half-built topology is left.
//! - [`down`] removes what `up` created (namespaces recorded as ours, switch-side
//!   links carrying our alias), also after a crash or a half-done `up`; it
//!   reports every failure and keeps going.
//! - Ownership: a namespace is ours if `/run/netns-setup/NAME` names this
//!   topology; a switch-side link is ours if its alias is `netns-setup:TOPOLOGY`.
//!   Anything else with a clashing name is an error for `up` and left alone by `down`.

use crate::netlink::{IFF_UP, Link, LinkSettings, Netlink, NlError};
use crate::netns::{self, in_netns};
use crate::sys;
use crate::topology::{EndpointKind, NamespaceSpec, Topology, UplinkKind, UplinkSpec};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// Directory of ownership markers, one file per namespace we created.
pub const OWNER_DIR: &str = "/run/netns-setup";

/// Errors of [`up`] (and of opening namespaces for the switch).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Not running as root.
    #[error(
        "netns-setup needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN to create namespaces and links); run it with sudo"
    )]
    NotRoot,
    /// A namespace with this name exists and is not ours.
    #[error("namespace {name:?} already exists and was not created by topology {topology:?}{}; remove it (`ip netns del {name}`) or rename it in the topology", owner.as_ref().map(|o| format!(" (it belongs to topology {o:?})")).unwrap_or_default())]
    NamespaceExists {
        /// Namespace name.
        name: String,
        /// This topology.
        topology: String,
        /// The topology that owns it, if any.
        owner: Option<String>,
    },
    /// An interface with this name exists and is not ours.
    #[error(
        "interface {name:?} already exists in {netns} and was not created by topology {topology:?}; remove it or set another name in the topology"
    )]
    LinkExists {
        /// Interface name.
        name: String,
        /// Where (`the root namespace` or `namespace X`).
        netns: String,
        /// This topology.
        topology: String,
    },
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] NlError),
    /// Another system call failed.
    #[error("{op}: {source}")]
    Io {
        /// What we were doing.
        op: String,
        /// The error.
        source: io::Error,
    },
}

fn io_err(op: impl Into<String>) -> impl FnOnce(io::Error) -> SetupError {
    let op = op.into();
    move |source| SetupError::Io { op, source }
}

fn marker_path(ns: &str) -> PathBuf {
    PathBuf::from(OWNER_DIR).join(ns)
}

/// The topology recorded as owner of namespace `ns`, if any.
pub fn owner(ns: &str) -> Option<String> {
    std::fs::read_to_string(marker_path(ns))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Record `topology` as the owner of namespace `ns`, created by someone
/// else (a multi-host demo that put an underlay interface in it first):
/// `up` then adopts it, and `down` removes it.
pub fn adopt(ns: &str, topology: &str) -> io::Result<()> {
    set_owner(ns, topology)
}

fn set_owner(ns: &str, topology: &str) -> io::Result<()> {
    std::fs::create_dir_all(OWNER_DIR)?;
    std::fs::write(marker_path(ns), format!("{topology}\n"))
}

/// Alias carried by switch-side links of `topology`.
pub fn link_alias(topology: &str) -> String {
    format!("netns-setup:{topology}")
}

/// Open the named namespace for use by the switch or tests.
pub fn open_netns(name: &str) -> Result<File, SetupError> {
    netns::open(name).map_err(io_err(format!("open namespace {name}")))
}

/// Open a netlink socket inside `ns` (`None`: the caller's namespace).
pub fn netlink_in(ns: Option<&File>) -> Result<Netlink, SetupError> {
    in_netns(ns, Netlink::open)
        .map_err(io_err("enter namespace"))?
        .map_err(Into::into)
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// What [`up`] did.
#[derive(Debug, Default)]
pub struct UpReport {
    /// One line per change; empty when everything already existed.
    pub changes: Vec<String>,
}

struct Undo {
    namespaces: Vec<String>,
    links: Vec<String>,
    /// Underlay addresses added in the switch's namespace: device, address, prefix.
    addrs: Vec<(String, std::net::Ipv4Addr, u8)>,
}

/// Where `up` notes the underlay addresses it added for `topology` (one
/// `device address/prefix` per line), for `down` to remove.
fn underlay_marker(topology: &str) -> PathBuf {
    PathBuf::from(OWNER_DIR).join("underlay").join(topology)
}

fn note_underlay(topology: &str, added: &[(String, std::net::Ipv4Addr, u8)]) -> io::Result<()> {
    let path = underlay_marker(topology);
    if added.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    // Kept from an earlier `up` of the same topology, plus this one's.
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    for (d, a, p) in added {
        let line = format!("{d} {a}/{p}");
        if !text.lines().any(|l| l == line) {
            text.push_str(&line);
            text.push('\n');
        }
    }
    std::fs::write(path, text)
}

/// Bring `t` up (see the module contract).
pub fn up(t: &Topology) -> Result<UpReport, SetupError> {
    if !is_root() {
        return Err(SetupError::NotRoot);
    }
    let mut report = UpReport::default();
    let mut undo = Undo {
        namespaces: Vec::new(),
        links: Vec::new(),
        addrs: Vec::new(),
    };
    match up_inner(t, &mut report, &mut undo) {
        Ok(()) => Ok(report),
        Err(e) => {
            // Roll back what this call created; best effort, the first error wins.
            if let Ok(sw_ns) = switch_ns(t)
                && let Ok(mut nl) = netlink_in(sw_ns.as_ref())
            {
                for l in undo.links.iter().rev() {
                    if let Ok(Some(link)) = nl.link(l) {
                        let _ = nl.delete_link(link.index, l);
                    }
                }
                for (d, a, p) in &undo.addrs {
                    if let Ok(Some(link)) = nl.link(d) {
                        let _ = nl.del_addr(link.index, d, *a, *p);
                    }
                }
                let _ = std::fs::remove_file(underlay_marker(&t.name));
            }
            for ns in undo.namespaces.iter().rev() {
                let _ = netns::delete(ns);
                let _ = std::fs::remove_file(marker_path(ns));
            }
            Err(e)
        }
    }
}

fn switch_ns(t: &Topology) -> Result<Option<File>, SetupError> {
    match t.switch.as_ref().and_then(|s| s.netns.as_deref()) {
        Some(n) => Ok(Some(open_netns(n)?)),
        None => Ok(None),
    }
}

fn where_is(t: &Topology) -> String {
    match t.switch.as_ref().and_then(|s| s.netns.as_deref()) {
        Some(n) => format!("namespace {n}"),
        None => "the root namespace".into(),
    }
}

fn up_inner(t: &Topology, report: &mut UpReport, undo: &mut Undo) -> Result<(), SetupError> {
    // 1. Namespaces: ours are adopted, foreign ones are an error.
    for name in t.all_netns() {
        if netns::exists(&name) {
            let o = owner(&name);
            if o.as_deref() != Some(t.name.as_str()) {
                return Err(SetupError::NamespaceExists {
                    name,
                    topology: t.name.clone(),
                    owner: o,
                });
            }
            continue;
        }
        netns::create(&name).map_err(io_err(format!("create namespace {name}")))?;
        undo.namespaces.push(name.clone());
        set_owner(&name, &t.name).map_err(io_err(format!("record owner of {name}")))?;
        report.changes.push(format!("created namespace {name}"));
    }

    let sw_ns = switch_ns(t)?;
    if let Some(ns) = &sw_ns {
        loopback_up(&mut netlink_in(Some(ns))?)?;
    }

    // 1b. Tunnels: the underlay device is up and holds `local`; the overlay
    // MTU (the device's minus 50, or the tunnel's) goes to the namespaces.
    let overlay = ensure_underlay(t, sw_ns.as_ref(), report, undo)?;

    // 2. Endpoints attached to the switch.
    for ns in t.switch_ports() {
        let mut ns = ns.clone();
        ns.mtu = ns.mtu.or(overlay);
        let ns = &ns;
        let ns_file = open_netns(&ns.name)?;
        match ns.kind {
            EndpointKind::Veth => {
                let sw_if = ns
                    .switch_ifname
                    .as_deref()
                    .expect("validated: veth on switch has a switch-side name");
                let end = VethEnd {
                    netns: &ns.name,
                    file: &ns_file,
                    ifname: &ns.ifname,
                };
                ensure_switch_veth(t, sw_ns.as_ref(), sw_if, &end, ns.mtu, report, undo)?;
            }
            EndpointKind::Tap => {
                let name = ns.ifname.clone();
                let created = in_netns(Some(&ns_file), || -> Result<bool, SetupError> {
                    let mut nl = Netlink::open()?;
                    if nl.link(&name)?.is_some() {
                        return Ok(false);
                    }
                    let f = sys::tap_open(&name, sys::IFF_VNET_HDR)
                        .map_err(io_err(format!("create TAP {name}")))?;
                    sys::tap_set_persist(&f, true)
                        .map_err(io_err(format!("make TAP {name} persistent")))?;
                    Ok(true)
                })
                .map_err(io_err("enter namespace"))??;
                if created {
                    report
                        .changes
                        .push(format!("created TAP {}:{}", ns.name, ns.ifname));
                }
            }
        }
        configure_inside(&ns_file, ns, report)?;
    }

    // 3. The uplink to a simulated external network.
    if let Some(UplinkSpec {
        kind:
            UplinkKind::Veth {
                netns: un,
                ifname,
                switch_ifname,
                peer_addresses,
                peer_addresses6,
            },
        ..
    }) = &t.uplink
    {
        let f = open_netns(un)?;
        let end = VethEnd {
            netns: un,
            file: &f,
            ifname,
        };
        ensure_switch_veth(t, sw_ns.as_ref(), switch_ifname, &end, None, report, undo)?;
        let mut nl = netlink_in(Some(&f))?;
        for name in ["lo", ifname.as_str()] {
            let l = nl.link(name)?.ok_or_else(|| {
                io_err(format!("find {name} in namespace {un}"))(io::ErrorKind::NotFound.into())
            })?;
            if l.flags & IFF_UP == 0 {
                nl.set_link(
                    l.index,
                    name,
                    &LinkSettings {
                        up: Some(true),
                        ..Default::default()
                    },
                )?;
                report.changes.push(format!("{un}: {name} up"));
            }
            if name != "lo" {
                for a in peer_addresses {
                    if nl.add_addr(l.index, name, a.addr, a.prefix)? {
                        report.changes.push(format!("{un}: address {a} on {name}"));
                    }
                }
                for a in peer_addresses6 {
                    if nl.add_addr6(l.index, name, a.addr, a.prefix)? {
                        report.changes.push(format!("{un}: address {a} on {name}"));
                    }
                }
            }
        }
    }

    // 4. Direct pairs.
    for &(a, b) in &t.pairs {
        let (na, nb) = (&t.namespaces[a], &t.namespaces[b]);
        let fa = open_netns(&na.name)?;
        let fb = open_netns(&nb.name)?;
        let mut nla = netlink_in(Some(&fa))?;
        let mut nlb = netlink_in(Some(&fb))?;
        let la = nla.link(&na.ifname)?;
        let lb = nlb.link(&nb.ifname)?;
        match (la, lb) {
            (Some(_), Some(_)) => {}
            (None, None) => {
                nla.create_veth(&na.ifname, &nb.ifname, Some(fb.as_raw_fd()))?;
                report.changes.push(format!(
                    "created veth {}:{} <-> {}:{}",
                    na.name, na.ifname, nb.name, nb.ifname
                ));
            }
            (Some(l), None) | (None, Some(l)) => {
                return Err(SetupError::LinkExists {
                    name: l.name,
                    netns: "one end of a pair".into(),
                    topology: t.name.clone(),
                });
            }
        }
        configure_inside(&fa, na, report)?;
        configure_inside(&fb, nb, report)?;
    }
    Ok(())
}

/// What a tunnel adds to an inner IP packet (outer IPv4, UDP, VXLAN, inner Ethernet).
pub const VXLAN_OVERHEAD: u32 = 50;

/// Each tunnel's underlay device: present in the switch's namespace, up,
/// with the tunnel's local address (added when the topology gives its
/// prefix). Returns the smallest overlay MTU, if there are tunnels.
fn ensure_underlay(
    t: &Topology,
    sw_ns: Option<&File>,
    report: &mut UpReport,
    undo: &mut Undo,
) -> Result<Option<u32>, SetupError> {
    let mut overlay: Option<u32> = None;
    for tn in &t.tunnels {
        let mut nl = netlink_in(sw_ns)?;
        let l = nl.link(&tn.device)?.ok_or_else(|| {
            io_err(format!(
                "tunnel {}: find its underlay device {} in {} (create it first: it is the host's network)",
                tn.name,
                tn.device,
                where_is(t)
            ))(io::ErrorKind::NotFound.into())
        })?;
        if l.flags & IFF_UP == 0 {
            nl.set_link(
                l.index,
                &tn.device,
                &LinkSettings {
                    up: Some(true),
                    ..Default::default()
                },
            )?;
            report.changes.push(format!("{} up (underlay)", tn.device));
        }
        let most = l.mtu.saturating_sub(VXLAN_OVERHEAD);
        let m = tn.mtu.unwrap_or(most);
        if m > most {
            return Err(io_err(format!(
                "tunnel {}: mtu {m} does not fit the underlay: {} has mtu {}, so at most {most}",
                tn.name, tn.device, l.mtu
            ))(io::ErrorKind::InvalidInput.into()));
        }
        let has = nl
            .addrs()?
            .iter()
            .any(|a| a.index == l.index && a.addr == tn.local);
        if !has {
            let Some(prefix) = tn.local_prefix else {
                return Err(io_err(format!(
                    "tunnel {}: {} is not an address of {} (give local as address/prefix to add it)",
                    tn.name, tn.local, tn.device
                ))(io::ErrorKind::NotFound.into()));
            };
            nl.add_addr(l.index, &tn.device, tn.local, prefix)?;
            undo.addrs.push((tn.device.clone(), tn.local, prefix));
            note_underlay(&t.name, &undo.addrs)
                .map_err(io_err(format!("note the underlay address of {}", t.name)))?;
            report.changes.push(format!(
                "address {}/{prefix} on {} (underlay)",
                tn.local, tn.device
            ));
        }
        overlay = Some(overlay.map_or(m, |o| o.min(m)));
    }
    Ok(overlay)
}

/// The namespace end of a veth whose other end is on the switch side.
struct VethEnd<'a> {
    netns: &'a str,
    file: &'a File,
    ifname: &'a str,
}

/// Create (or adopt) the veth `sw_if` (switch side) <-> `end`, and keep the switch side quiet.
fn ensure_switch_veth(
    t: &Topology,
    sw_ns: Option<&File>,
    sw_if: &str,
    end: &VethEnd,
    mtu: Option<u32>,
    report: &mut UpReport,
    undo: &mut Undo,
) -> Result<(), SetupError> {
    let alias = link_alias(&t.name);
    let mut nl = netlink_in(sw_ns)?;
    let inside = netlink_in(Some(end.file))?.link(end.ifname)?;
    let mut sw_link = nl.link(sw_if)?;
    if let Some(l) = &sw_link {
        if l.alias != alias {
            return Err(SetupError::LinkExists {
                name: sw_if.into(),
                netns: where_is(t),
                topology: t.name.clone(),
            });
        }
        if inside.is_none() {
            // Half of an old pair: replace it.
            nl.delete_link(l.index, sw_if)?;
            sw_link = None;
        }
    }
    if sw_link.is_none() {
        if inside.is_some() {
            return Err(SetupError::LinkExists {
                name: end.ifname.into(),
                netns: format!("namespace {}", end.netns),
                topology: t.name.clone(),
            });
        }
        nl.create_veth(sw_if, end.ifname, Some(end.file.as_raw_fd()))?;
        undo.links.push(sw_if.to_string());
        report.changes.push(format!(
            "created veth {sw_if} <-> {}:{}",
            end.netns, end.ifname
        ));
    }
    let l = nl
        .link(sw_if)?
        .ok_or_else(|| io_err(format!("find {sw_if}"))(io::ErrorKind::NotFound.into()))?;
    configure_switch_side(&mut nl, &l, &alias, mtu, report)
}

fn configure_switch_side(
    nl: &mut Netlink,
    l: &Link,
    alias: &str,
    mtu: Option<u32>,
    report: &mut UpReport,
) -> Result<(), SetupError> {
    let want_mtu = mtu.filter(|m| *m != l.mtu);
    let up = l.flags & IFF_UP != 0;
    if l.alias == alias && up && want_mtu.is_none() {
        return Ok(());
    }
    // Quiet settings must precede `up` so no IPv6 link-local address is made.
    nl.set_link(
        l.index,
        &l.name,
        &LinkSettings {
            alias: Some(alias.into()),
            quiet: true,
            noarp: Some(true),
            mtu: want_mtu,
            ..Default::default()
        },
    )?;
    nl.set_link(
        l.index,
        &l.name,
        &LinkSettings {
            up: Some(true),
            ..Default::default()
        },
    )?;
    report
        .changes
        .push(format!("configured switch side {}", l.name));
    Ok(())
}

/// Bring `lo` up if it is down; true if it was changed.
fn loopback_up(nl: &mut Netlink) -> Result<bool, SetupError> {
    match nl.link("lo")? {
        Some(lo) if lo.flags & IFF_UP == 0 => {
            nl.set_link(
                lo.index,
                "lo",
                &LinkSettings {
                    up: Some(true),
                    ..Default::default()
                },
            )?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

fn configure_inside(
    ns_file: &File,
    ns: &NamespaceSpec,
    report: &mut UpReport,
) -> Result<(), SetupError> {
    let mut nl = netlink_in(Some(ns_file))?;
    let mut changes = Vec::new();
    if loopback_up(&mut nl)? {
        changes.push(format!("{}: lo up", ns.name));
    }
    let l = nl.link(&ns.ifname)?.ok_or_else(|| {
        io_err(format!("find {} in namespace {}", ns.ifname, ns.name))(
            io::ErrorKind::NotFound.into(),
        )
    })?;
    if let Some(m) = ns.mtu
        && m != l.mtu
    {
        nl.set_link(
            l.index,
            &l.name,
            &LinkSettings {
                mtu: Some(m),
                ..Default::default()
            },
        )?;
        changes.push(format!("{}: {} mtu {m}", ns.name, l.name));
    }
    if l.flags & IFF_UP == 0 {
        nl.set_link(
            l.index,
            &l.name,
            &LinkSettings {
                up: Some(true),
                ..Default::default()
            },
        )?;
        changes.push(format!("{}: {} up", ns.name, l.name));
    }
    if nl.add_addr(l.index, &l.name, ns.address.addr, ns.address.prefix)? {
        changes.push(format!("{}: address {} on {}", ns.name, ns.address, l.name));
    }
    if let Some(gw) = ns.gateway
        && nl.add_default_route(gw)?
    {
        changes.push(format!("{}: default via {gw}", ns.name));
    }
    for a in &ns.address6 {
        if nl.add_addr6(l.index, &l.name, a.addr, a.prefix)? {
            changes.push(format!("{}: address {a} on {}", ns.name, l.name));
        }
    }
    if let Some(gw) = ns.gateway6
        && nl.add_default_route6(gw, l.index)?
    {
        changes.push(format!("{}: default via {gw}", ns.name));
    }
    report.changes.extend(changes);
    Ok(())
}

/// What [`down`] did and what failed.
#[derive(Debug, Default)]
pub struct DownReport {
    /// Objects removed.
    pub removed: Vec<String>,
    /// Objects left alone because they are not ours.
    pub skipped: Vec<String>,
    /// Failures (down kept going after each).
    pub failures: Vec<String>,
}

/// Remove what `up` created for `t` (see the module contract).
pub fn down(t: &Topology) -> DownReport {
    down_only(t, None)
}

/// Remove what `up` created for the namespaces `names` of `t` only (their
/// switch-side links, then the namespaces), with the same ownership checks
/// as [`down`]: for a switch that drops namespaces from a running topology.
pub fn down_namespaces(t: &Topology, names: &[String]) -> DownReport {
    down_only(t, Some(names))
}

fn down_only(t: &Topology, only: Option<&[String]>) -> DownReport {
    let picked = |n: &str| only.is_none_or(|o| o.iter().any(|x| x == n));
    let mut r = DownReport::default();
    if !is_root() {
        r.failures.push(SetupError::NotRoot.to_string());
        return r;
    }
    let alias = link_alias(&t.name);
    // Switch-side links first: in the root namespace they would otherwise
    // live as long as anything keeps their peer's namespace alive.
    let sw = t.switch.as_ref().and_then(|s| s.netns.as_deref());
    let sw_ns = match sw {
        Some(n) if netns::exists(n) => match open_netns(n) {
            Ok(f) => Some(Some(f)),
            Err(e) => {
                r.failures.push(e.to_string());
                None
            }
        },
        Some(_) => None, // already gone, and its links with it
        None => Some(None),
    };
    if let Some(sw_ns) = sw_ns {
        match netlink_in(sw_ns.as_ref()) {
            Err(e) => r.failures.push(e.to_string()),
            Ok(mut nl) => {
                let mut names: Vec<&str> = t
                    .switch_ports()
                    .filter(|n| picked(&n.name))
                    .filter_map(|n| n.switch_ifname.as_deref())
                    .collect();
                if let Some(UplinkSpec {
                    kind: UplinkKind::Veth { switch_ifname, .. },
                    ..
                }) = &t.uplink
                    && only.is_none()
                {
                    names.push(switch_ifname);
                }
                for name in names {
                    match nl.link(name) {
                        Ok(Some(l)) if l.alias == alias => match nl.delete_link(l.index, name) {
                            Ok(()) => r.removed.push(format!("link {name}")),
                            Err(e) if e.errno == nix::errno::Errno::ENODEV => {}
                            Err(e) => r.failures.push(e.to_string()),
                        },
                        Ok(Some(_)) => r.skipped.push(format!(
                            "link {name} (not created by topology {:?})",
                            t.name
                        )),
                        Ok(None) => {}
                        Err(e) => r.failures.push(e.to_string()),
                    }
                }
            }
        }
    }
    // Underlay addresses `up` added (the devices are the host's: they stay).
    if only.is_none()
        && let Ok(text) = std::fs::read_to_string(underlay_marker(&t.name))
    {
        let ns = match sw {
            Some(n) if netns::exists(n) => open_netns(n).ok().map(Some),
            Some(_) => None,
            None => Some(None),
        };
        if let Some(ns) = ns
            && let Ok(mut nl) = netlink_in(ns.as_ref())
        {
            for line in text.lines() {
                let Some((d, net)) = line.split_once(' ') else {
                    continue;
                };
                let Ok(net) = net.parse::<nat::Ipv4Net>() else {
                    continue;
                };
                match nl.link(d) {
                    Ok(Some(l)) => match nl.del_addr(l.index, d, net.addr, net.prefix) {
                        Ok(true) => r.removed.push(format!("address {net} on {d}")),
                        Ok(false) => {}
                        Err(e) => r.failures.push(e.to_string()),
                    },
                    Ok(None) => {}
                    Err(e) => r.failures.push(e.to_string()),
                }
            }
        }
        let _ = std::fs::remove_file(underlay_marker(&t.name));
    }
    for name in t.all_netns().into_iter().filter(|n| picked(n)) {
        let o = owner(&name);
        let ours = o.as_deref() == Some(t.name.as_str());
        if netns::path(&name).exists() {
            if !ours {
                r.skipped.push(format!(
                    "namespace {name} (not created by topology {:?})",
                    t.name
                ));
                continue;
            }
            match netns::delete(&name) {
                Ok(()) => r.removed.push(format!("namespace {name}")),
                Err(e) => {
                    r.failures.push(format!("delete namespace {name}: {e}"));
                    continue;
                }
            }
        }
        if ours
            && let Err(e) = std::fs::remove_file(marker_path(&name))
            && e.kind() != io::ErrorKind::NotFound
        {
            r.failures
                .push(format!("remove {}: {e}", marker_path(&name).display()));
        }
    }
    r
}

/// One interface in `show`.
#[derive(Debug, serde::Serialize)]
pub struct ShowLink {
    /// Where it lives: a namespace name, or `(root)`.
    pub netns: String,
    /// Its role: `endpoint`, `switch-side`, `loopback`.
    pub role: String,
    /// The link, if present.
    pub link: Option<Link>,
    /// Its addresses in CIDR form: IPv4, then IPv6 (not link-local).
    pub addresses: Vec<String>,
    /// Default gateways of its namespace, if any: IPv4, then IPv6, comma-separated.
    pub default_via: Option<String>,
}

/// The state of a topology on this machine.
#[derive(Debug, serde::Serialize)]
pub struct ShowReport {
    /// Topology name.
    pub topology: String,
    /// Namespaces the topology defines.
    pub namespaces: Vec<ShowNamespace>,
    /// Interfaces the topology defines.
    pub links: Vec<ShowLink>,
}

/// One namespace in a [`ShowReport`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShowNamespace {
    /// Namespace name.
    pub name: String,
    /// Whether it exists.
    pub exists: bool,
    /// The topology recorded as its owner, if any.
    pub owner: Option<String>,
}

/// Inspect the current state of `t`.
pub fn show(t: &Topology) -> Result<ShowReport, SetupError> {
    if !is_root() {
        return Err(SetupError::NotRoot);
    }
    let mut rep = ShowReport {
        topology: t.name.clone(),
        namespaces: t
            .all_netns()
            .into_iter()
            .map(|n| ShowNamespace {
                exists: netns::exists(&n),
                owner: owner(&n),
                name: n,
            })
            .collect(),
        links: Vec::new(),
    };
    let mut look = |ns_name: Option<&str>, ifname: &str, role: &str| -> Result<(), SetupError> {
        let label = ns_name.unwrap_or("(root)").to_string();
        let file = match ns_name {
            Some(n) if !netns::exists(n) => {
                rep.links.push(ShowLink {
                    netns: label,
                    role: role.into(),
                    link: None,
                    addresses: vec![],
                    default_via: None,
                });
                return Ok(());
            }
            Some(n) => Some(open_netns(n)?),
            None => None,
        };
        let mut nl = netlink_in(file.as_ref())?;
        let mut link = nl.link(ifname)?;
        // The kernel calls both TUN and TAP devices `tun`; a TAP has an Ethernet address.
        if let Some(l) = link.as_mut()
            && l.kind == "tun"
            && !l.mac.is_empty()
        {
            l.kind = "tap".into();
        }
        let (addresses, default_via) = match &link {
            Some(l) => {
                // IPv4, then the IPv6 ones that are not link-local.
                let mut addresses: Vec<String> = nl
                    .addrs()?
                    .into_iter()
                    .filter(|a| a.index == l.index)
                    .map(|a| format!("{}/{}", a.addr, a.prefix))
                    .collect();
                addresses.extend(
                    nl.addrs6()?
                        .into_iter()
                        .filter(|a| a.index == l.index && a.scope != 253)
                        .map(|a| format!("{}/{}", a.addr, a.prefix)),
                );
                let v4 = nl
                    .routes()?
                    .into_iter()
                    .find(|r| r.dst_len == 0)
                    .and_then(|r| r.gateway)
                    .map(|g| g.to_string());
                let v6 = nl.default_route6()?.map(|g| g.to_string());
                let via: Vec<String> = v4.into_iter().chain(v6).collect();
                (addresses, (!via.is_empty()).then(|| via.join(",")))
            }
            None => (vec![], None),
        };
        rep.links.push(ShowLink {
            netns: label,
            role: role.into(),
            link,
            addresses,
            default_via: if role == "endpoint" {
                default_via
            } else {
                None
            },
        });
        Ok(())
    };
    let sw = t.switch.as_ref().and_then(|s| s.netns.as_deref());
    if let Some(UplinkSpec {
        kind:
            UplinkKind::Veth {
                netns: un,
                ifname,
                switch_ifname,
                ..
            },
        ..
    }) = &t.uplink
    {
        look(Some(un), ifname, "external")?;
        look(sw, switch_ifname, "uplink")?;
    }
    for ns in &t.namespaces {
        look(Some(&ns.name), &ns.ifname, "endpoint")?;
        if let Some(s) = &ns.switch_ifname {
            look(sw, s, "switch-side")?;
        }
    }
    Ok(rep)
}

impl ShowReport {
    /// Render as an aligned text table.
    pub fn table(&self) -> String {
        let mut rows = vec![
            [
                "NETNS",
                "ROLE",
                "INTERFACE",
                "KIND",
                "STATE",
                "MTU",
                "MAC",
                "ADDRESS",
                "DEFAULT VIA",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for l in &self.links {
            let (name, kind, state, mtu, mac) = match &l.link {
                Some(k) => (
                    k.name.clone(),
                    if k.kind.is_empty() {
                        "-".into()
                    } else {
                        k.kind.clone()
                    },
                    if k.flags & IFF_UP == 0 {
                        "DOWN".to_string()
                    } else if k.flags & crate::netlink::IFF_LOWER_UP != 0 {
                        "UP".into()
                    } else {
                        "NO-CARRIER".into()
                    },
                    k.mtu.to_string(),
                    k.mac.clone(),
                ),
                None => (
                    "-".into(),
                    "-".into(),
                    "MISSING".into(),
                    "-".into(),
                    "-".into(),
                ),
            };
            rows.push(vec![
                l.netns.clone(),
                l.role.clone(),
                name,
                kind,
                state,
                mtu,
                mac,
                if l.addresses.is_empty() {
                    "-".into()
                } else {
                    l.addresses.join(",")
                },
                l.default_via.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        let mut out = format!("topology {}\n", self.topology);
        for n in &self.namespaces {
            out += &format!(
                "namespace {}: {}{}\n",
                n.name,
                if n.exists { "present" } else { "absent" },
                n.owner
                    .as_ref()
                    .map(|o| format!(" (owner {o})"))
                    .unwrap_or_default()
            );
        }
        out + &render_table(&rows)
    }
}

/// Render rows as left-aligned columns separated by two spaces.
pub fn render_table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{s:<w$}", w = widths[i]))
            .collect();
        out += line.join("  ").trim_end();
        out.push('\n');
    }
    out
}
