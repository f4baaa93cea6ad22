//! netns-setup: a topology file made real as named network namespaces, veth
//! pairs, TAP devices, addresses and routes, over netlink (no `ip` subprocess).
//!
//! - [`topology`]: the TOML format, parsed into serde types and validated once.
//! - [`netns`]: named namespaces exactly as `ip netns add` makes them.
//! - [`cli`]: the `netns-setup` command line.
//! - [`docgen`]: shell completions and man pages from the clap definitions.
//! - [`lock`]: one owner per topology (`/run/vswitch/NAME.lock`).
//! - [`netlink`]: a small synchronous rtnetlink client.
//! - [`setup`]: idempotent `up`, crash-tolerant `down`, and `show`.
//! - [`sys`]: TAP ioctls, the crate's only `unsafe` code.

pub mod cli;
pub mod docgen;
pub mod lock;
pub mod netlink;
pub mod netns;
pub mod setup;
pub mod sys;
pub mod topology;

pub use setup::{DownReport, SetupError, ShowReport, UpReport, down, show, up};
pub use topology::{EndpointKind, NamespaceSpec, SwitchSpec, Topology, TopologyError};
