//! The gateway XDP program: parse, find the service, choose a backend (the Maglev table,
//! and conntrack where a slot changed), forward by L2 DSR or IPIP, count everything.
//!
//! Modules, in the order a packet meets them:
//! - `packet`: bounds-checked access to the frame (`gateway_ebpf::hdr` names the offsets);
//! - `parse`: the frame's headers into a flow key, and the flow an ICMP error quotes;
//! - `protect`: per-source limits (token buckets per prefix, the allowlist, monitor or
//!   enforce) before a backend is chosen, and the conntrack flood guard `select` asks;
//! - `select`: the service's Maglev table slot, and conntrack where the slot changed;
//!   counts how the backend was found;
//! - `forward`: L2 DSR or IPIP/IP6IP6 encapsulation towards the backend;
//! - `reply`: the too-big answer when encapsulation would exceed the MTU;
//! - `csum`: Internet checksums for the headers `forward` and `reply` write;
//! - `maps`, `stats`: the maps, and the `Verdict` every run ends in.
//!
//! `try_gateway` returns the verdict (action and reason); `gateway` counts it, once.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

/// Every packet for a VIP is validated (docs/datapath.md lists the rules).
#[cfg(target_arch = "bpf")]
const VALIDATE: bool = true;
/// A TCP packet on a settled table slot takes the slot's backend without conntrack
/// (`select`; docs/datapath.md).
#[cfg(target_arch = "bpf")]
const SETTLED_SLOTS: bool = true;

include!("program.rs");

gateway_ebpf::bpf_runtime!();
