//! `gateway-tracked`: the balancer's program with every TCP packet going through conntrack,
//! as before settled table slots answered alone (every slot treated as changed: a SYN is
//! recorded, any other packet looked up, a miss placed by the table and recorded). Only
//! `cargo xtask bench xdp` loads it, to report the before and after of that design in the
//! same run; never attach it in front of traffic.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
const VALIDATE: bool = true;
#[cfg(target_arch = "bpf")]
const SETTLED_SLOTS: bool = false;

include!("program.rs");

gateway_ebpf::bpf_runtime!();
