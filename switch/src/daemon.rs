//! `vswitch run`: bring the topology up, attach the ports, forward until
//! SIGINT/SIGTERM, then remove what this run created.
//!
//! Contract: on any start-up failure nothing this run created is left behind
//! and the error says what failed. The worker runs on the calling thread.

use crate::control;
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::port::{PortIo, TapPort};
use crate::stats::PortStats;
use crate::sys::PacketPort;
use crate::worker::{Port, Worker};
use anyhow::{Context, Result, anyhow, bail};
use netns_setup::netns::in_netns;
use netns_setup::setup::open_netns;
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
}

/// Open the switch's ports for `t` (namespaces and links must exist).
pub fn open_ports(t: &Topology) -> Result<Vec<Port>> {
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
                let p = in_netns(sw_ns.as_ref(), || PacketPort::open(&ifname))?
                    .with_context(|| format!("attach AF_PACKET port to {ifname}"))?;
                (ifname, "veth", Box::new(p))
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
            stats: PortStats::default(),
        });
    }
    Ok(ports)
}

/// Run the switch for `t` until SIGINT or SIGTERM.
pub fn run(t: &Topology, opts: &RunOptions) -> Result<()> {
    let sw = t.switch.clone().ok_or_else(|| {
        anyhow!("topology {:?} has no [switch]: nothing for vswitch to forward (a pair-only topology needs just `netns-setup up`)", t.name)
    })?;
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "vswitch run needs root (to create namespaces and open AF_PACKET/TAP ports); run it with sudo"
        );
    }
    // Signals go to a signalfd the worker polls; block them before any thread starts.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    mask.thread_block().context("block signals")?;
    let stop = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .context("signalfd")?;

    let sock_path = opts
        .socket
        .clone()
        .unwrap_or_else(|| control::default_socket(&t.name));
    let listener = control::bind(&sock_path)
        .with_context(|| format!("control socket {}", sock_path.display()))?;

    let report = match netns_setup::up(t) {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&sock_path);
            return Err(anyhow!(e).context(format!("bring topology {:?} up", t.name)));
        }
    };
    let created = !report.changes.is_empty();
    let cleanup = |why: &str| {
        let _ = std::fs::remove_file(&sock_path);
        if created && !opts.keep {
            let r = netns_setup::down(t);
            for f in &r.failures {
                eprintln!("vswitch: cleanup ({why}): {f}");
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
    eprintln!(
        "vswitch: {} forwarding between {} ports: {}; control socket {}; Ctrl-C to stop",
        sw.name,
        ports.len(),
        ports
            .iter()
            .map(|p| format!("{} ({} {})", p.name, p.kind, p.netns))
            .collect::<Vec<_>>()
            .join(", "),
        sock_path.display()
    );
    let cfg = PipelineConfig {
        ports: ports.len(),
        fdb_max: sw.fdb_max,
        fdb_max_per_port: sw.fdb_max_per_port,
        ageing_ms: sw.ageing.as_millis() as u64,
        arp_max: sw.arp_max,
        arp_suppress: sw.arp_suppress,
    };
    let wake = Arc::new(
        EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).context("eventfd")?,
    );
    let (tx, rx) = channel();
    control::serve(listener, tx, wake.clone());
    let mut worker = Worker::new(sw.name.clone(), ports, Pipeline::new(&cfg));
    let res = worker.run(&rx, &wake, &stop);
    drop(worker); // close ports before removing the namespaces
    cleanup("exit");
    match res {
        Ok(()) => {
            eprintln!(
                "vswitch: stopped{}",
                if created && !opts.keep {
                    "; topology removed"
                } else {
                    ""
                }
            );
            Ok(())
        }
        Err(e) => Err(anyhow!(e).context("worker failed")),
    }
}
