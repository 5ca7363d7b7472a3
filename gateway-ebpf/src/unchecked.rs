//! `gateway-unchecked`: the balancer's program with packet validation compiled out (no
//! MAC, length, checksum, option or martian-source checks; parsing, selection and
//! forwarding unchanged). Only `cargo xtask bench xdp` loads it, to report what validation
//! costs per packet in the same run; never attach it in front of traffic.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
const VALIDATE: bool = false;
#[cfg(target_arch = "bpf")]
const SETTLED_SLOTS: bool = true;

include!("program.rs");

gateway_ebpf::bpf_runtime!();
