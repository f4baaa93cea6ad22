//! A flow-hash load balancer written against vswitch's public policy API.
//!
//! Frames for a virtual IP go to one of two backend ports, chosen by a hash of
//! the flow (addresses, protocol, ports), so every packet of a connection
//! reaches the same backend. Each backend holds the VIP as a /32 and both
//! share one MAC; clients reach the VIP through a static neighbour entry for
//! that MAC (see tests/tests/examples_e2e.rs for the few `ip` commands).
//!
//! `cargo run -p switch --example flow_lb -- TOPOLOGY.toml VIP BACKEND_NS_A BACKEND_NS_B`

use std::net::Ipv4Addr;
use switch::PortId;
use switch::daemon::{RunOptions, port_id, run_with};
use switch::policy::{Action, Frame, FrameMeta, Policy};

struct FlowLb {
    vip: Ipv4Addr,
    backends: [PortId; 2],
    hits: [u64; 2],
}

impl Policy for FlowLb {
    fn classify(&mut self, _meta: &FrameMeta, frame: &Frame) -> Action {
        let h = frame.headers();
        let Some((src, dst, proto)) = h.ipv4 else {
            return Action::Continue;
        };
        if dst != self.vip {
            return Action::Continue;
        }
        let (sport, dport) = h.ports.unwrap_or((0, 0));
        let key = u32::from(src) ^ u32::from(proto) ^ (u32::from(sport) << 16 | u32::from(dport));
        let i = (key.wrapping_mul(0x9e37_79b1) >> 31) as usize; // the top bit picks a backend
        self.hits[i] += 1;
        Action::Redirect(self.backends[i])
    }

    fn counters(&self) -> Vec<(String, u64)> {
        vec![
            ("lb:backend-a".into(), self.hits[0]),
            ("lb:backend-b".into(), self.hits[1]),
        ]
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, file, vip, a, b] = &args[..] else {
        anyhow::bail!("usage: flow_lb TOPOLOGY.toml VIP BACKEND_NS_A BACKEND_NS_B");
    };
    let topo = netns_setup::Topology::load(file.as_ref())?;
    let port =
        |ns: &str| port_id(&topo, ns).ok_or_else(|| anyhow::anyhow!("{ns} is not on the switch"));
    let lb = FlowLb {
        vip: vip.parse()?,
        backends: [port(a)?, port(b)?],
        hits: [0; 2],
    };
    let opts = RunOptions {
        file: Some(file.into()),
        ..RunOptions::default()
    };
    run_with(&topo, &opts, lb)
}
