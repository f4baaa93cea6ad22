//! What the forwarding decision returns, and the batch of frames the
//! gateway generates: the types the pipeline and the router share, in a
//! module of their own so that the router (`crate::gateway`) does not depend
//! on the pipeline that calls it.

use crate::PortId;
use crate::port::{BATCH, Batch};
use crate::stats::DropReason;

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Drop it, for this reason.
    Drop(DropReason),
    /// Send it out of this one port.
    Unicast(PortId),
    /// Send it out of every up LAN port except the ingress one.
    Flood,
    /// A routed frame for an unknown MAC: every up LAN port, the ingress one included.
    FloodAll,
    /// The frame was rewritten into a reply: send it back out of the ingress port.
    Reply,
    /// Taken by the gateway (queued, or answered with a generated frame).
    Consumed,
}

/// Where a generated frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Out of this port.
    Port(PortId),
    /// Out of every up LAN port.
    Lan,
    /// Still to be routed by the gateway.
    Route,
    /// Nowhere (resolved into a drop or a queue).
    Discard,
}

/// Frames the gateway generates while a batch is processed (ICMP errors, ARP
/// requests, fragments, packets released from the resolution queue), in a
/// batch allocated once.
pub struct Gen {
    batch: Batch,
    targets: [Target; BATCH],
}

impl Default for Gen {
    fn default() -> Self {
        Self::new()
    }
}

impl Gen {
    /// An empty generator batch.
    pub fn new() -> Gen {
        Gen {
            batch: Batch::new(),
            targets: [Target::Discard; BATCH],
        }
    }
    /// Forget all frames.
    pub fn clear(&mut self) {
        self.batch.clear();
    }
    /// Number of frames.
    pub fn len(&self) -> usize {
        self.batch.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }
    /// Add a frame built by `build` (writes vnet header + frame, returns the length); false if full.
    pub fn push(&mut self, t: Target, build: impl FnOnce(&mut [u8]) -> usize) -> bool {
        match self.batch.push_with(build) {
            Some(i) => {
                self.targets[i] = t;
                true
            }
            None => false,
        }
    }
    /// Target of frame `i`.
    pub fn target(&self, i: usize) -> Target {
        self.targets[i]
    }
    /// Set the target of frame `i`.
    pub fn set_target(&mut self, i: usize, t: Target) {
        self.targets[i] = t;
    }
    /// Vnet header and frame `i`.
    pub fn parts_mut(&mut self, i: usize) -> (&mut [u8], &mut [u8]) {
        self.batch.parts_mut(i)
    }
    /// The frames.
    pub fn batch(&self) -> &Batch {
        &self.batch
    }
}
