//! Sans-I/O connection tracking and NAT for vswitch (issue 3 builds it here).
#![deny(unsafe_code)]
