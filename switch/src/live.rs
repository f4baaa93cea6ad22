//! Live operation of a running switch: the topology diff of `vswitch
//! reload`, ports plugged in and out at run time (`vswitch port add|del`),
//! and the link watch that makes ports follow the kernel.
//!
//! Contract: [`diff`] is pure (two validated topologies in, what changed and
//! what cannot change live out). [`Live`] runs off the forwarding thread: it
//! does every slow or failing step first (reading the file, creating
//! namespaces and links with `netns_setup`, opening ports, pcap files,
//! building the policy), undoes them if any fails, and only then hands the
//! worker one [`Change`] that the worker applies whole between batches. So a
//! refused or failed reload leaves the running state exactly as it was, and
//! the FDB, ARP and NAT tables are always kept.
//!
//! A switch with `[switch] workers > 1` refuses every live change (each
//! worker has its own sockets and policy; restart it instead).
//!
//! What cannot change live (refused, named): the topology `name`, every
//! `[switch]` key (its name, namespace, table bounds, polling, CPU),
//! `[gateway]`, `[uplink]`, `[nat]` behaviour keys (filtering, port range and
//! allocation, bounds, timeouts: they shape the connection table), direct
//! `[[pair]]`s, the switch's VLAN mode (aware or not), and an existing
//! namespace's endpoint (address, default route, kind, interface names, MTU:
//! remove it in one reload and add it back in the next). Everything else
//! changes live: namespaces on the switch added and removed, `[[route]]`,
//! `[[masquerade]]`, `[[dnat]]`, ACLs, rate limits, mirrors (pcap included),
//! isolation and per-port VLAN roles.

use crate::daemon::{PortInfo, build_policy, nat_config};
use crate::pipeline::VlanPorts;
use crate::policy::Reloaded;
use crate::port::{PortIo, TapPort};
use crate::sys::{LinkEvent, LinkMonitor};
use crate::worker::TapSink;
use nat::{DnatRule, Ipv4Net};
use netns_setup::netns::in_netns;
use netns_setup::setup::open_netns;
use netns_setup::topology::VlanMode;
use netns_setup::{EndpointKind, Topology};
use nix::sys::eventfd::EventFd;
use serde_json::{Value, json};
use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Sender, SyncSender, sync_channel};
use std::time::Duration;

/// Opens the AF_PACKET port of a link by name in the switch's namespace.
pub type Opener = Box<dyn FnMut(&str) -> io::Result<Box<dyn PortIo>>>;

/// The worker's link watch: rtnetlink link events of the switch's namespace
/// and how to re-open a port whose link came back.
pub struct LinkWatch {
    /// The event socket.
    pub mon: LinkMonitor,
    /// Re-opens a port by link name.
    pub open: Opener,
    /// Events of one read (kept to reuse the allocation).
    pub events: Vec<LinkEvent>,
}

impl LinkWatch {
    /// A watch over `mon`'s namespace that re-opens ports with `open`.
    pub fn new(mon: LinkMonitor, open: Opener) -> LinkWatch {
        LinkWatch {
            mon,
            open,
            events: Vec::new(),
        }
    }
}

/// A port to attach in slot `slot` (the worker's port id).
pub struct NewPort {
    /// Slot: a tombstone to reuse, or the next free index.
    pub slot: usize,
    /// Port name (the switch-side interface, or the TAP name).
    pub name: String,
    /// Namespace of the endpoint.
    pub netns: String,
    /// `veth`, `tap` or `port` (plugged in with `vswitch port add`).
    pub kind: &'static str,
    /// The opened port.
    pub io: Box<dyn PortIo + Send>,
}

/// One live change, applied whole by the worker between batches.
#[derive(Default)]
pub struct Change {
    /// Slots whose ports are detached (closed; their table entries flushed).
    pub remove: Vec<usize>,
    /// Ports attached.
    pub add: Vec<NewPort>,
    /// The new built-in policy (ACL, rate limits, isolation, mirrors), per slot.
    pub policy: Option<Reloaded>,
    /// New VLAN roles per slot (VLAN-aware switches).
    pub vlans: Option<VlanPorts>,
    /// New static routes.
    pub routes: Option<Vec<(Ipv4Net, Ipv4Addr)>>,
    /// New static IPv6 routes.
    pub routes6: Option<Vec<(nat::Ipv6Net, std::net::Ipv6Addr)>>,
    /// New LAN MTU.
    pub lan_mtu: Option<u32>,
    /// New masquerade sources and DNAT rules.
    pub nat_rules: Option<(Vec<Ipv4Net>, Vec<DnatRule>)>,
    /// New NAT66 masquerade sources and forwards.
    pub nat_rules6: Option<(Vec<nat::Ipv6Net>, Vec<DnatRule<std::net::Ipv6Addr>>)>,
    /// pcap mirrors to stop (by file, as displayed).
    pub pcap_remove: Vec<String>,
    /// pcap mirrors to start: port slot, file (as displayed), writer.
    pub pcap_add: Vec<(usize, String, TapSink)>,
    /// What changed, one line each (the answer of `reload`).
    pub summary: Vec<String>,
}

/// What differs between the running topology and the file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Differences that cannot be applied live, named.
    pub refused: Vec<String>,
    /// Namespaces added to the switch.
    pub added: Vec<String>,
    /// Namespaces removed from the switch.
    pub removed: Vec<String>,
    /// Static routes changed.
    pub routes: bool,
    /// Masquerade or DNAT rules changed.
    pub nat_rules: bool,
    /// Policy (ACL, rate limits, mirrors, isolation, VLAN roles) changed.
    pub policy: bool,
    /// Every change, one line each.
    pub changes: Vec<String>,
}

fn vlan_aware(t: &Topology) -> bool {
    t.switch_ports().any(|n| n.vlan != VlanMode::Unset)
}

/// Compare the running topology `old` with `new` (see the module contract
/// for what is refused).
pub fn diff(old: &Topology, new: &Topology) -> Diff {
    let mut d = Diff::default();
    if old.name != new.name {
        d.refused.push(format!(
            "name: {:?} -> {:?} (a different topology; start it separately)",
            old.name, new.name
        ));
    }
    match (&old.switch, &new.switch) {
        (Some(a), Some(b)) if a != b => {
            let mut keys = Vec::new();
            if a.name != b.name {
                keys.push("name");
            }
            if a.netns != b.netns {
                keys.push("netns");
            }
            if a.ageing != b.ageing {
                keys.push("ageing_secs");
            }
            if (a.fdb_max, a.fdb_max_per_port) != (b.fdb_max, b.fdb_max_per_port) {
                keys.push("fdb_max/fdb_max_per_port");
            }
            if (a.arp_max, a.arp_max_per_port, a.arp_suppress)
                != (b.arp_max, b.arp_max_per_port, b.arp_suppress)
            {
                keys.push("arp_*");
            }
            if (a.busy_poll, a.adaptive_poll, a.cpu) != (b.busy_poll, b.adaptive_poll, b.cpu) {
                keys.push("busy_poll_us/adaptive_poll_us/cpu");
            }
            if a.io != b.io {
                keys.push("io");
            }
            if a.workers != b.workers {
                keys.push("workers");
            }
            d.refused.push(format!(
                "[switch] {}: cannot change while running (restart the switch)",
                keys.join(", ")
            ));
        }
        (a, b) if a.is_some() != b.is_some() => {
            d.refused.push("[switch]: added or removed".into());
        }
        _ => {}
    }
    if old.gateway != new.gateway {
        d.refused
            .push("[gateway]: the gateway address cannot change while running".into());
    }
    if old.uplink != new.uplink {
        d.refused
            .push("[uplink]: the uplink cannot change while running".into());
    }
    if old.tunnels != new.tunnels {
        d.refused.push(
            "[[tunnel]]: tunnels cannot change while running (restart the switch; `vswitch fdb add … dst` changes VTEPs live)".into(),
        );
    }
    if old.nat.nptv6 != new.nat.nptv6 {
        d.refused.push(
            "[[nptv6]]: translations cannot change while running (restart the switch)".into(),
        );
    }
    let (mut a, mut b) = (old.nat.clone(), new.nat.clone());
    a.nptv6.clear();
    b.nptv6.clear();
    a.masquerade.clear();
    a.dnat.clear();
    a.masquerade6.clear();
    a.dnat6.clear();
    b.masquerade.clear();
    b.dnat.clear();
    b.masquerade6.clear();
    b.dnat6.clear();
    if a != b {
        d.refused.push(
            "[nat]: behaviour keys (filtering, ports, bounds, timeouts) cannot change while running; [[masquerade]] and [[dnat]] can"
                .into(),
        );
    }
    let pairs = |t: &Topology| -> Vec<NamespaceKey> {
        t.namespaces
            .iter()
            .filter(|n| n.pair.is_some())
            .map(NamespaceKey::of)
            .collect()
    };
    if pairs(old) != pairs(new) || old.pairs.len() != new.pairs.len() {
        d.refused
            .push("[[pair]]: direct pairs cannot change while running".into());
    }
    if vlan_aware(old) != vlan_aware(new) {
        d.refused.push(format!(
            "VLAN mode: the switch would become VLAN-{} (restart the switch)",
            if vlan_aware(new) { "aware" } else { "unaware" }
        ));
    }
    for n in new.switch_ports() {
        match old.switch_ports().find(|o| o.name == n.name) {
            None => {
                d.added.push(n.name.clone());
                d.changes
                    .push(format!("namespace {} added ({})", n.name, n.address));
            }
            Some(o) => {
                if NamespaceKey::of(o) != NamespaceKey::of(n) {
                    d.refused.push(format!(
                        "namespace {}: its endpoint (address, gateway, kind, interface names, MTU) cannot change while running (remove it in one reload, add it back in the next)",
                        n.name
                    ));
                }
                if o.isolated != n.isolated {
                    d.policy = true;
                    d.changes.push(format!(
                        "namespace {}: isolated {} -> {}",
                        n.name, o.isolated, n.isolated
                    ));
                }
                if o.vlan != n.vlan {
                    d.policy = true;
                    d.changes.push(format!(
                        "namespace {}: VLAN {:?} -> {:?}",
                        n.name, o.vlan, n.vlan
                    ));
                }
            }
        }
    }
    for o in old.switch_ports() {
        if !new.switch_ports().any(|n| n.name == o.name) {
            d.removed.push(o.name.clone());
            d.changes.push(format!("namespace {} removed", o.name));
        }
    }
    if old.routes != new.routes {
        d.routes = true;
        d.changes.push(format!(
            "routes: {} -> {}",
            old.routes.len(),
            new.routes.len()
        ));
    }
    if old.routes6 != new.routes6 {
        d.routes = true;
        d.changes.push(format!(
            "IPv6 routes: {} -> {}",
            old.routes6.len(),
            new.routes6.len()
        ));
    }
    if old.nat.masquerade != new.nat.masquerade {
        d.nat_rules = true;
        d.changes.push(format!(
            "masquerade: {} -> {} sources",
            old.nat.masquerade.len(),
            new.nat.masquerade.len()
        ));
    }
    if old.nat.masquerade6 != new.nat.masquerade6 {
        d.nat_rules = true;
        d.changes.push(format!(
            "masquerade (IPv6): {} -> {} sources",
            old.nat.masquerade6.len(),
            new.nat.masquerade6.len()
        ));
    }
    if old.nat.dnat6 != new.nat.dnat6 {
        d.nat_rules = true;
        d.changes.push(format!(
            "dnat (IPv6): {} -> {} rules",
            old.nat.dnat6.len(),
            new.nat.dnat6.len()
        ));
    }
    let rule = |r: &netns_setup::topology::DnatSpec| {
        let ports = if r.ports.0 == r.ports.1 {
            r.ports.0.to_string()
        } else {
            format!("{}-{}", r.ports.0, r.ports.1)
        };
        format!("{} {ports} -> {}:{}", r.protocol, r.to_addr, r.to_port)
    };
    for r in &new.nat.dnat {
        if !old.nat.dnat.contains(r) {
            d.nat_rules = true;
            d.changes.push(format!("dnat added: {}", rule(r)));
        }
    }
    for r in &old.nat.dnat {
        if !new.nat.dnat.contains(r) {
            d.nat_rules = true;
            d.changes.push(format!("dnat removed: {}", rule(r)));
        }
    }
    if old.nat.dnat != new.nat.dnat && !d.nat_rules {
        d.nat_rules = true;
        d.changes.push("dnat: rules reordered".into());
    }
    let (p, q) = (&old.policy, &new.policy);
    if p.acl != q.acl {
        d.policy = true;
        d.changes
            .push(format!("acl: {} -> {} rules", p.acl.len(), q.acl.len()));
    }
    if p.rate_limits != q.rate_limits {
        d.policy = true;
        d.changes.push(format!(
            "rate limits: {} -> {}",
            p.rate_limits.len(),
            q.rate_limits.len()
        ));
    }
    if p.mirrors != q.mirrors {
        d.policy = true;
        d.changes.push(format!(
            "mirrors: {} -> {}",
            p.mirrors.len(),
            q.mirrors.len()
        ));
    }
    // Ports come and go: the per-slot policy must be rebuilt.
    if !d.added.is_empty() || !d.removed.is_empty() {
        d.policy = true;
    }
    d
}

/// The parts of a namespace that cannot change live.
#[derive(PartialEq, Eq)]
struct NamespaceKey {
    name: String,
    address: Ipv4Net,
    address6: Vec<nat::Ipv6Net>,
    gateway: Option<Ipv4Addr>,
    gateway6: Option<std::net::Ipv6Addr>,
    kind: EndpointKind,
    ifname: String,
    switch_ifname: Option<String>,
    mtu: Option<u32>,
}

impl NamespaceKey {
    fn of(n: &netns_setup::NamespaceSpec) -> NamespaceKey {
        NamespaceKey {
            name: n.name.clone(),
            address: n.address,
            // The order of the list does not matter.
            address6: {
                let mut v = n.address6.clone();
                v.sort_by_key(|c| (c.addr, c.prefix));
                v
            },
            gateway: n.gateway,
            gateway6: n.gateway6,
            kind: n.kind,
            ifname: n.ifname.clone(),
            switch_ifname: n.switch_ifname.clone(),
            mtu: n.mtu,
        }
    }
}

/// 802.1Q roles per slot for a VLAN-aware `t` (`None` when VLAN-unaware):
/// each slot takes its namespace's role; ports plugged in at run time and
/// unconfigured ports are access ports of VLAN 1, as is the uplink.
pub fn vlan_table(t: &Topology, slots: &[PortInfo]) -> Option<VlanPorts> {
    if !vlan_aware(t) {
        return None;
    }
    let mut v = VlanPorts::default();
    for s in slots {
        // A tunnel slot: its VLAN, or its VLAN→VNI map's VLANs (a trunk).
        if let Some(tn) = t.tunnels.iter().find(|tn| s.lan && tn.name == s.name) {
            let (a, m) = crate::daemon::tunnel_vlan_role(tn);
            v.access.push(a);
            v.members.push(m);
            continue;
        }
        let mode = t
            .switch_ports()
            .find(|n| s.lan && n.name == s.netns)
            .map(|n| n.vlan.clone())
            .unwrap_or_default();
        let (a, m) = match mode {
            VlanMode::Unset => (Some(1), vec![1]),
            VlanMode::Access(x) => (Some(x), vec![x]),
            VlanMode::Trunk(l) => (None, l),
        };
        v.access.push(a);
        v.members.push(m);
    }
    Some(v)
}

/// Start a thread writing tap messages to a new pcap file at `path`.
pub fn spawn_pcap_writer(path: &std::path::Path) -> io::Result<TapSink> {
    let file = std::fs::File::create(path)?;
    let (tx, rx) = TapSink::new(crate::control::CAPTURE_QUEUE);
    std::thread::Builder::new()
        .name("vswitch-pcap".into())
        .spawn(move || {
            let mut w = std::io::BufWriter::new(file);
            if crate::control::pcap_header(&mut w).is_err() {
                return;
            }
            let _ = std::io::Write::flush(&mut w);
            while let Ok(msg) = rx.recv() {
                if crate::control::pcap_record(&mut w, &msg).is_err() {
                    return;
                }
                // Flush whenever the queue runs dry, so the file is readable while it grows.
                while let Ok(msg) = rx.try_recv() {
                    if crate::control::pcap_record(&mut w, &msg).is_err() {
                        return;
                    }
                }
                let _ = std::io::Write::flush(&mut w);
            }
        })?;
    Ok(tx)
}

/// A slot with no port (a tombstone).
fn tombstone() -> PortInfo {
    PortInfo {
        name: String::new(),
        netns: String::new(),
        lan: false,
    }
}

/// The reload and port manager of a running switch (behind a mutex, so one
/// live change runs at a time; see the module contract).
pub struct Live {
    /// The topology as applied (what `reload` diffs the file against, and
    /// what is removed on exit).
    pub current: Topology,
    file: Option<PathBuf>,
    /// The worker's port slots.
    slots: Vec<PortInfo>,
    /// Slots plugged in with `vswitch port add` (not the topology's).
    plugged: Vec<usize>,
    /// Running pcap mirrors: slot and file.
    pcaps: Vec<(usize, PathBuf)>,
    to_worker: Sender<(Box<Change>, SyncSender<Value>)>,
    wake: Arc<EventFd>,
}

/// The failure of a live change: a message and the exit status `vswitch`
/// should end with (1 runtime, 2 bad topology or refused change).
fn fail(code: u8, msg: String) -> Value {
    json!({"ok": false, "error": msg, "exit": code})
}

impl Live {
    /// A manager for a switch started from `t` (`file`: where `reload`
    /// reads it; `None`: the built-in seed), with ports `slots` and pcap
    /// mirrors `pcaps`, sending changes to the worker on `to_worker` + `wake`.
    pub fn new(
        t: Topology,
        file: Option<PathBuf>,
        slots: Vec<PortInfo>,
        pcaps: Vec<(usize, PathBuf)>,
        to_worker: Sender<(Box<Change>, SyncSender<Value>)>,
        wake: Arc<EventFd>,
    ) -> Live {
        Live {
            current: t,
            file,
            slots,
            plugged: Vec::new(),
            pcaps,
            to_worker,
            wake,
        }
    }

    fn switch_ns(&self) -> io::Result<Option<std::fs::File>> {
        match self
            .current
            .switch
            .as_ref()
            .and_then(|s| s.netns.as_deref())
        {
            Some(n) => open_netns(n).map(Some).map_err(io::Error::other),
            None => Ok(None),
        }
    }

    /// A free slot: the first tombstone, else a new one.
    fn free_slot(slots: &mut Vec<PortInfo>) -> usize {
        match slots.iter().position(|s| s.name.is_empty() && !s.lan) {
            Some(i) => i,
            None => {
                slots.push(tombstone());
                slots.len() - 1
            }
        }
    }

    fn send(&self, c: Change) -> Value {
        let (tx, rx) = sync_channel(1);
        if self.to_worker.send((Box::new(c), tx)).is_err() {
            return fail(1, "the switch is shutting down".into());
        }
        let _ = self.wake.write(1);
        rx.recv_timeout(Duration::from_secs(8))
            .unwrap_or_else(|_| fail(1, "the worker did not answer within 8 s".into()))
    }

    /// Open the port of switch namespace `name` of `t`.
    fn open_port(t: &Topology, sw_ns: Option<&std::fs::File>, name: &str) -> io::Result<NewPort> {
        let ns = t
            .switch_ports()
            .find(|n| n.name == name)
            .ok_or_else(|| io::Error::other(format!("no namespace {name}")))?;
        match ns.kind {
            EndpointKind::Veth => {
                let ifname = ns.switch_ifname.clone().unwrap_or_default();
                let io_kind = t.switch.as_ref().map(|s| s.io).unwrap_or_default();
                let p = in_netns(sw_ns, || {
                    crate::daemon::open_packet_port(io_kind, &ifname, None)
                })
                .and_then(|r| r)
                .map_err(|e| io::Error::other(format!("attach to {ifname}: {e}")))?;
                Ok(NewPort {
                    slot: 0,
                    name: ifname,
                    netns: ns.name.clone(),
                    kind: "veth",
                    io: p,
                })
            }
            EndpointKind::Tap => {
                let f = open_netns(&ns.name).map_err(io::Error::other)?;
                let p = in_netns(Some(&f), || TapPort::open(&ns.ifname))
                    .and_then(|r| r)
                    .map_err(|e| io::Error::other(format!("attach to TAP {}: {e}", ns.ifname)))?;
                Ok(NewPort {
                    slot: 0,
                    name: ns.ifname.clone(),
                    netns: ns.name.clone(),
                    kind: "tap",
                    io: Box::new(p),
                })
            }
        }
    }

    /// `vswitch reload`: read the file, diff it against the running
    /// topology and apply what changed (see the module contract).
    pub fn reload(&mut self) -> Value {
        let new = match &self.file {
            Some(f) => match Topology::load(f) {
                Ok(t) => t,
                Err(e) => return fail(2, format!("bad topology, nothing changed: {e}")),
            },
            None => Topology::seed(),
        };
        let d = diff(&self.current, &new);
        if !d.refused.is_empty() {
            return json!({
                "ok": false,
                "exit": 2,
                "error": format!("cannot change while running, nothing changed: {}", d.refused.join("; ")),
                "refused": d.refused,
            });
        }
        let mut undo_ns: Vec<String> = Vec::new();
        let undo = |names: &[String]| {
            if !names.is_empty() {
                let r = netns_setup::setup::down_namespaces(&new, names);
                for f in r.failures {
                    tracing::warn!("reload: undo: {f}");
                }
            }
        };
        if !d.added.is_empty() {
            match netns_setup::up(&new) {
                Ok(r) => {
                    for c in &r.changes {
                        tracing::info!("reload: {c}");
                    }
                    // Only what this reload created is undone on failure.
                    undo_ns = d
                        .added
                        .iter()
                        .filter(|n| {
                            r.changes
                                .iter()
                                .any(|c| c == &format!("created namespace {n}"))
                        })
                        .cloned()
                        .collect();
                }
                Err(e) => {
                    return fail(
                        1,
                        format!("reload: bring up the new namespaces, nothing changed: {e}"),
                    );
                }
            }
        }
        let sw_ns = match self.switch_ns() {
            Ok(f) => f,
            Err(e) => {
                undo(&undo_ns);
                return fail(1, format!("reload: switch namespace: {e}"));
            }
        };
        let mut slots = self.slots.clone();
        let mut change = Change {
            summary: d.changes.clone(),
            ..Change::default()
        };
        for name in &d.removed {
            if let Some(i) = slots.iter().position(|s| s.lan && &s.netns == name) {
                change.remove.push(i);
                slots[i] = tombstone();
            }
        }
        for name in &d.added {
            let mut p = match Self::open_port(&new, sw_ns.as_ref(), name) {
                Ok(p) => p,
                Err(e) => {
                    undo(&undo_ns);
                    return fail(1, format!("reload: namespace {name}: {e}; nothing changed"));
                }
            };
            p.slot = Self::free_slot(&mut slots);
            slots[p.slot] = PortInfo {
                name: p.name.clone(),
                netns: p.netns.clone(),
                lan: true,
            };
            change.add.push(p);
        }
        if d.policy {
            match build_policy(&new, &slots) {
                Ok(r) => change.policy = Some(r),
                Err(e) => {
                    undo(&undo_ns);
                    return fail(2, format!("reload: policy: {e}; nothing changed"));
                }
            }
            change.vlans = vlan_table(&new, &slots);
        }
        if d.routes {
            change.routes = Some(crate::daemon::gateway_routes(&new));
            change.routes6 = Some(crate::daemon::gateway_routes6(&new));
        }
        if d.nat_rules
            && let Some(u) = &new.uplink
        {
            let c = nat_config(&new, u.address.addr, 0);
            change.nat_rules = Some((c.masquerade, c.dnat));
            if let Some(a6) = u.address6 {
                let c = crate::daemon::nat_config6(&new, a6.addr, 0);
                change.nat_rules6 = Some((c.masquerade, c.dnat));
            }
        }
        // As at start (`daemon::gateway_config`): the tunnels' overlays too.
        let overlay = crate::daemon::tunnel_configs(&new)
            .map(|v| v.into_iter().map(|c| c.mtu).min())
            .unwrap_or(None);
        change.lan_mtu = Some(
            new.switch_ports()
                .filter_map(|n| n.mtu)
                .chain(overlay)
                .min()
                .unwrap_or(1500),
        );
        // pcap mirrors: keep the unchanged ones running, stop and start the rest.
        let want: Vec<(usize, PathBuf)> = new
            .policy
            .mirrors
            .iter()
            .filter_map(|m| {
                let slot = slots.iter().position(|s| s.lan && s.netns == m.from)?;
                Some((slot, m.pcap.clone()?))
            })
            .collect();
        for (slot, f) in &self.pcaps {
            if !want.contains(&(*slot, f.clone())) {
                change.pcap_remove.push(f.display().to_string());
                change
                    .summary
                    .push(format!("pcap mirror to {} stopped", f.display()));
            }
        }
        for (slot, f) in &want {
            if self.pcaps.contains(&(*slot, f.clone())) {
                continue;
            }
            match spawn_pcap_writer(f) {
                Ok(tx) => {
                    change.pcap_add.push((*slot, f.display().to_string(), tx));
                    change.summary.push(format!(
                        "pcap mirror of {} to {} started",
                        slots[*slot].netns,
                        f.display()
                    ));
                }
                Err(e) => {
                    undo(&undo_ns);
                    return fail(
                        1,
                        format!(
                            "reload: mirror: cannot create {}: {e}; nothing changed",
                            f.display()
                        ),
                    );
                }
            }
        }
        let summary = change.summary.clone();
        let v = self.send(change);
        if v["ok"] != true {
            undo(&undo_ns);
            return v;
        }
        // The worker has let go of removed ports: remove their namespaces and links.
        let mut notes = Vec::new();
        if !d.removed.is_empty() {
            let r = netns_setup::setup::down_namespaces(&self.current, &d.removed);
            for x in r.removed {
                notes.push(format!("removed {x}"));
            }
            for x in r.failures {
                notes.push(format!("failed: {x}"));
            }
        }
        self.plugged
            .retain(|i| !d.removed.iter().any(|n| *n == self.slots[*i].netns));
        self.pcaps = want;
        self.slots = slots;
        self.current = new;
        for l in &summary {
            tracing::info!("reload: {l}");
        }
        json!({"ok": true, "changes": summary, "notes": notes, "reloads": v["reloads"]})
    }

    /// `vswitch port add IFNAME [--netns NS]`: attach an existing link of
    /// the switch's namespace (the switch end of a veth pair whose other end
    /// is in namespace `netns`, a label for stats and policy).
    pub fn port_add(&mut self, ifname: &str, netns: Option<&str>) -> Value {
        if ifname.is_empty() || ifname.len() > 15 {
            return fail(2, format!("bad interface name {ifname:?} (1 to 15 bytes)"));
        }
        if self.slots.iter().any(|s| s.name == ifname) {
            return fail(2, format!("{ifname} is already a port of this switch"));
        }
        let label = netns.unwrap_or(ifname).to_string();
        if self.slots.iter().any(|s| s.lan && s.netns == label) {
            return fail(
                2,
                format!("a port of namespace {label} is already attached"),
            );
        }
        let sw_ns = match self.switch_ns() {
            Ok(f) => f,
            Err(e) => return fail(1, format!("switch namespace: {e}")),
        };
        let where_ = self
            .current
            .switch
            .as_ref()
            .and_then(|s| s.netns.clone())
            .map_or("the root namespace".to_string(), |n| {
                format!("namespace {n}")
            });
        let io_kind = self
            .current
            .switch
            .as_ref()
            .map(|s| s.io)
            .unwrap_or_default();
        let p = match in_netns(sw_ns.as_ref(), || {
            crate::daemon::open_packet_port(io_kind, ifname, None)
        })
        .and_then(|r| r)
        {
            Ok(p) => p,
            Err(e) => {
                return fail(
                    1,
                    format!("cannot attach {ifname} in {where_} (the switch's namespace): {e}"),
                );
            }
        };
        let mut slots = self.slots.clone();
        let slot = Self::free_slot(&mut slots);
        slots[slot] = PortInfo {
            name: ifname.to_string(),
            netns: label.clone(),
            lan: true,
        };
        let policy = match build_policy(&self.current, &slots) {
            Ok(r) => r,
            Err(e) => return fail(1, format!("policy: {e}")),
        };
        let line = format!("port {ifname} ({label}) added");
        let c = Change {
            add: vec![NewPort {
                slot,
                name: ifname.to_string(),
                netns: label,
                kind: "port",
                io: p,
            }],
            policy: Some(policy),
            vlans: vlan_table(&self.current, &slots),
            summary: vec![line.clone()],
            ..Change::default()
        };
        let v = self.send(c);
        if v["ok"] == true {
            self.slots = slots;
            self.plugged.push(slot);
        }
        v
    }

    /// `vswitch port del NAME`: detach a port plugged in with `port add`
    /// (by interface or namespace label). Its link is left alone.
    pub fn port_del(&mut self, name: &str) -> Value {
        let Some(slot) = self
            .slots
            .iter()
            .position(|s| s.lan && (s.name == name || s.netns == name))
        else {
            return fail(2, format!("no port {name} on this switch"));
        };
        if !self.plugged.contains(&slot) {
            return fail(
                2,
                format!(
                    "port {name} belongs to the topology file: remove its namespace from the file and run `vswitch reload`"
                ),
            );
        }
        let mut slots = self.slots.clone();
        let line = format!("port {} ({}) removed", slots[slot].name, slots[slot].netns);
        slots[slot] = tombstone();
        let policy = match build_policy(&self.current, &slots) {
            Ok(r) => r,
            Err(e) => return fail(1, format!("policy: {e}")),
        };
        let c = Change {
            remove: vec![slot],
            policy: Some(policy),
            vlans: vlan_table(&self.current, &slots),
            summary: vec![line],
            ..Change::default()
        };
        let v = self.send(c);
        if v["ok"] == true {
            self.slots = slots;
            self.plugged.retain(|&s| s != slot);
        }
        v
    }

    /// Answer a control request this manager owns (`reload`, `port-add`,
    /// `port-del`); `None` for the others.
    pub fn handle(&mut self, cmd: &str, req: &Value) -> Option<Value> {
        let workers = self.current.switch.as_ref().map_or(1, |s| s.workers);
        if workers > 1 && matches!(cmd, "reload" | "port-add" | "port-del") {
            return Some(fail(
                2,
                format!(
                    "{cmd} needs [switch] workers = 1 (this switch runs {workers} workers, each with its own sockets and policy); nothing changed: restart the switch to apply the file"
                ),
            ));
        }
        Some(match cmd {
            "reload" => self.reload(),
            "port-add" => {
                self.port_add(req["ifname"].as_str().unwrap_or(""), req["netns"].as_str())
            }
            "port-del" => self.port_del(req["name"].as_str().unwrap_or("")),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
name = "lv"
[switch]
netns = "lv-sw"
[[namespace]]
name = "red"
address = "192.168.15.1/24"
gateway = "192.168.15.5"
[[namespace]]
name = "blue"
address = "192.168.15.2/24"
gateway = "192.168.15.5"
[gateway]
address = "192.168.15.5/24"
[uplink]
netns = "lv-wan"
peer_addresses = ["203.0.113.10/24"]
address = "203.0.113.1/24"
[[masquerade]]
source = "192.168.15.0/24"
"#;

    fn topo(extra: &str) -> Topology {
        Topology::parse(&format!("{BASE}{extra}"), "lv").unwrap()
    }

    #[test]
    fn same_file_changes_nothing() {
        let d = diff(&topo(""), &topo(""));
        assert_eq!(d, Diff::default());
    }

    #[test]
    fn added_namespace_and_dnat_are_live() {
        let new = topo(
            r#"
[[namespace]]
name = "green"
address = "192.168.15.3/24"
gateway = "192.168.15.5"
[[dnat]]
protocol = "tcp"
port = 8080
to = "192.168.15.3:80"
"#,
        );
        let d = diff(&topo(""), &new);
        assert!(d.refused.is_empty(), "{:?}", d.refused);
        assert_eq!(d.added, vec!["green".to_string()]);
        assert!(d.removed.is_empty());
        assert!(d.nat_rules && d.policy && !d.routes);
        assert!(
            d.changes
                .iter()
                .any(|c| c == "dnat added: tcp 8080 -> 192.168.15.3:80"),
            "{:?}",
            d.changes
        );
        // And back: removed.
        let back = diff(&new, &topo(""));
        assert_eq!(back.removed, vec!["green".to_string()]);
        assert!(back.changes.iter().any(|c| c.starts_with("dnat removed")));
    }

    #[test]
    fn routes_policy_and_isolation_are_live() {
        let new = topo(
            r#"
[[route]]
to = "10.9.0.0/16"
via = "192.168.15.2"
[[acl]]
action = "drop"
in_port = "red"
protocol = "tcp"
dport = 22
"#,
        );
        let d = diff(&topo(""), &new);
        assert!(d.refused.is_empty(), "{:?}", d.refused);
        assert!(d.routes && d.policy && !d.nat_rules);
        let iso = BASE.replacen("name = \"blue\"", "name = \"blue\"\nisolated = true", 1);
        let d = diff(&topo(""), &Topology::parse(&iso, "lv").unwrap());
        assert!(d.refused.is_empty() && d.policy);
        assert_eq!(
            d.changes,
            vec!["namespace blue: isolated false -> true".to_string()]
        );
    }

    #[test]
    fn unchangeable_differences_are_refused_and_named() {
        let cases = [
            (
                BASE.replace("192.168.15.5/24", "192.168.15.6/24"),
                "[gateway]",
            ),
            (
                BASE.replace("netns = \"lv-sw\"", "netns = \"lv-sw2\""),
                "[switch] netns",
            ),
            (BASE.replace("name = \"lv\"", "name = \"lv2\""), "name:"),
            (BASE.replace("203.0.113.1/24", "203.0.113.2/24"), "[uplink]"),
            (
                format!("{BASE}[nat]\nfiltering = \"endpoint-independent\"\n"),
                "[nat]",
            ),
            (
                BASE.replace("192.168.15.1/24", "192.168.15.9/24"),
                "namespace red",
            ),
            (
                BASE.replacen("name = \"red\"", "name = \"red\"\nvlan = 10", 1),
                "VLAN mode",
            ),
            (
                BASE.replace("netns = \"lv-sw\"", "netns = \"lv-sw\"\nio = \"mmsg\""),
                "[switch] io:",
            ),
        ];
        for (text, want) in cases {
            let new = Topology::parse(&text, "lv").unwrap();
            let d = diff(&topo(""), &new);
            assert!(
                d.refused.iter().any(|r| r.starts_with(want)),
                "{want}: {:?}",
                d.refused
            );
        }
    }

    #[test]
    fn vlan_table_follows_slots() {
        let t = Topology::parse(
            &BASE.replacen("name = \"red\"", "name = \"red\"\nvlan = 10", 1),
            "lv",
        )
        .unwrap();
        let slots = vec![
            tombstone(),
            PortInfo {
                name: "veth-red-br".into(),
                netns: "red".into(),
                lan: true,
            },
            PortInfo {
                name: "c1".into(),
                netns: "c1".into(),
                lan: true,
            },
        ];
        let v = vlan_table(&t, &slots).unwrap();
        assert_eq!(v.access, vec![Some(1), Some(10), Some(1)]);
        assert!(vlan_table(&topo(""), &slots).is_none());
    }
}
