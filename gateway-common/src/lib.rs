//! Types and constants shared by the gateway XDP program and its agent.
//!
//! Everything that crosses the kernel/user boundary is defined once here: map names, their
//! capacities, counter indexes, and the `#[repr(C)]` key and value types. Multi-byte fields
//! that hold packet data are in network byte order and say so in their name (`_be`).
#![no_std]

/// Name of the per-CPU array of global counters (`u64`, indexed by the `STAT_*` consts).
pub const MAP_STATS: &str = "STATS";

/// Every packet the program sees.
pub const STAT_RX_PACKETS: u32 = 0;
/// Number of global counters; the size of [`MAP_STATS`].
pub const STAT_COUNT: u32 = 1;

/// Human-readable names of the global counters, indexed like the `STAT_*` consts.
pub const STAT_NAMES: [&str; STAT_COUNT as usize] = ["rx_packets"];

/// Name of the main XDP program in the object.
pub const PROG_GATEWAY: &str = "gateway";
