//! Push and pop 802.1Q tags with a policy: frames entering from one namespace
//! get a VLAN tag, tagged frames entering from another lose theirs — a
//! minimal "Q-in-the-middle" for experiments on a VLAN-unaware switch.
//!
//! `cargo run -p switch --example vlan_tagger -- TOPOLOGY.toml PUSH_NS VLAN POP_NS`

use switch::PortId;
use switch::daemon::{RunOptions, port_id, run_with};
use switch::policy::{Action, Frame, FrameMeta, Policy};

struct Tagger {
    push_on: PortId,
    vlan: u16,
    pop_on: PortId,
    edits: u64,
}

impl Policy for Tagger {
    fn classify(&mut self, meta: &FrameMeta, frame: &Frame) -> Action {
        if meta.in_port == self.push_on {
            self.edits += 1;
            Action::PushVlan(self.vlan)
        } else if meta.in_port == self.pop_on && frame.headers().vlan.is_some() {
            self.edits += 1;
            Action::PopVlan
        } else {
            Action::Continue
        }
    }

    fn counters(&self) -> Vec<(String, u64)> {
        vec![("tagger:edits".into(), self.edits)]
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, file, push, vlan, pop] = &args[..] else {
        anyhow::bail!("usage: vlan_tagger TOPOLOGY.toml PUSH_NS VLAN POP_NS");
    };
    let topo = netns_setup::Topology::load(file.as_ref())?;
    let port =
        |ns: &str| port_id(&topo, ns).ok_or_else(|| anyhow::anyhow!("{ns} is not on the switch"));
    let policy = Tagger {
        push_on: port(push)?,
        vlan: vlan.parse()?,
        pop_on: port(pop)?,
        edits: 0,
    };
    let opts = RunOptions {
        file: Some(file.into()),
        ..RunOptions::default()
    };
    run_with(&topo, &opts, policy)
}
