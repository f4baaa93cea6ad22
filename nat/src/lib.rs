//! Sans-I/O connection tracking and NAT (MASQUERADE/SNAT, DNAT) for vswitch.
//!
//! Bytes and `now` in, verdict out: no syscalls, no clock reads, no `unsafe`.
//!
//! - [`checksum`]: RFC 1071 sums and RFC 1624 incremental updates, including
//!   the CHECKSUM_PARTIAL (pseudo-header seed) variant.
//! - [`wire`]: the typed wire layer: Ethernet/802.1Q, ARP and the
//!   `virtio_net_hdr`, IPv4, IPv6 and its extension headers,
//!   TCP/UDP/ICMP/ICMPv6/NDP views read and rewritten in place, emitters.
//! - [`family`]: the address family ([`family::Family`]) the table and the
//!   engine are generic over: one engine for NAT44 and NAT66.
//! - [`conntrack`]: tuples, the TCP state machine, the bounded table with a
//!   timer wheel and early drop of unassured entries.
//! - [`npt`]: NPTv6 (RFC 6296), stateless checksum-neutral prefix
//!   translation, the alternative to NAT66 for a LAN prefix.
//! - [`snapshot`]: the state as plain structs and versioned bytes, and its
//!   restore (`Nat::export` / `Nat::import`), for a restart.
//! - [`engine`]: [`Nat`], the translation itself (see its module docs for the
//!   model, RFC 4787/5382/5508 behaviour and fragment handling).
#![deny(unsafe_code)]

pub mod checksum;
pub mod conntrack;
pub mod engine;
pub mod family;
pub mod npt;
pub mod snapshot;
pub mod wire;

pub use conntrack::{Dir, TcpState, Tuple};
pub use engine::{
    DEFAULT_NEW_FLOWS_PER_HOST, DEFAULT_PORTS_PER_HOST, DnatRule, EntryView, Filtering, HostView,
    Ipv4Net, Ipv6Net, MAX_TIMEOUT_SECS, Nat, NatConfig, NatCounters, NatDrop, OUTSIDE, PortAlloc,
    Side, Step, Timeouts, Verdict,
};
