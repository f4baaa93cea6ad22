//! vswitch: a userspace MAC-learning switch with ARP handling for network
//! namespaces, over AF_PACKET (veth) and TAP ports.
//!
//! A frame's path: a port ([`port`], [`sys`]) receives a batch into buffers
//! allocated once; the [`worker`] runs each frame through the [`pipeline`]
//! (typed views from [`wire`], MAC learning in [`fdb`], ARP handling in
//! [`arp`]) and sends it out of the chosen ports in one batch per port,
//! counting every drop by reason ([`stats`]). The [`control`] socket answers
//! `fdb`, `arp` and `stats` between batches; [`daemon`] ties it together.

pub mod arp;
pub mod control;
pub mod daemon;
pub mod fastpath;
pub mod fdb;
pub mod gateway;
pub mod live;
pub mod log;
pub mod metrics;
pub mod multihost;
pub mod pace;
pub mod ping;
pub mod pipeline;
pub mod policy;
pub mod port;
pub mod state;
pub mod stats;
pub mod steer;
pub mod sys;
pub mod trace;
pub mod tunnel;
pub mod verdict;
pub mod vxlan;
pub mod wire;
pub mod worker;

/// Index of a port in the switch.
pub type PortId = usize;
