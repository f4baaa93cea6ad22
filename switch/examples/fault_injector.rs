//! A fault injector written against vswitch's public policy API: every Nth
//! frame received on one port is dropped (and counted), to see how
//! applications cope with loss.
//!
//! `cargo run -p switch --example fault_injector -- TOPOLOGY.toml NAMESPACE N`

use switch::PortId;
use switch::daemon::{RunOptions, port_id, run_with};
use switch::policy::{Action, Frame, FrameMeta, Policy};

struct DropEveryNth {
    port: PortId,
    n: u64,
    seen: u64,
    dropped: u64,
}

impl Policy for DropEveryNth {
    fn classify(&mut self, meta: &FrameMeta, _frame: &Frame) -> Action {
        if meta.in_port != self.port {
            return Action::Continue;
        }
        self.seen += 1;
        if self.seen.is_multiple_of(self.n) {
            self.dropped += 1;
            return Action::Drop("fault-injector");
        }
        Action::Continue
    }

    fn counters(&self) -> Vec<(String, u64)> {
        vec![
            ("faults:dropped".into(), self.dropped),
            ("faults:seen".into(), self.seen),
        ]
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, file, ns, n] = &args[..] else {
        anyhow::bail!("usage: fault_injector TOPOLOGY.toml NAMESPACE N");
    };
    let topo = netns_setup::Topology::load(file.as_ref())?;
    let port = port_id(&topo, ns).ok_or_else(|| anyhow::anyhow!("{ns} is not on the switch"))?;
    let n: u64 = n.parse()?;
    anyhow::ensure!(n >= 1, "N must be at least 1");
    let policy = DropEveryNth {
        port,
        n,
        seen: 0,
        dropped: 0,
    };
    let opts = RunOptions {
        file: Some(file.into()),
        ..RunOptions::default()
    };
    run_with(&topo, &opts, policy)
}
