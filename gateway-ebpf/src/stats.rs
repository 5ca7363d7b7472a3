//! Counting. A packet's run ends in a `Verdict`: the XDP action and the one global counter
//! that says why, which the entry point counts once, at the exit. The other counters say
//! how a backend was found (conntrack hit or miss, rescheduled, relayed ICMP error) and are
//! bumped where that is decided; per-service and per-backend traffic is accounted once the
//! service (and backend) is known.
use aya_ebpf::{bindings::xdp_action, maps::PerCpuArray};
use gateway_common::TrafficStats;

use crate::maps::STATS;

/// How a packet's run ends.
#[derive(Clone, Copy)]
pub struct Verdict {
    /// `xdp_action::*`.
    pub action: u32,
    /// The `STAT_*` counter this outcome moves.
    pub reason: u32,
}

impl Verdict {
    /// To the host stack, untouched.
    #[inline(always)]
    pub const fn pass(reason: u32) -> Verdict {
        Verdict {
            action: xdp_action::XDP_PASS,
            reason,
        }
    }

    #[inline(always)]
    pub const fn drop(reason: u32) -> Verdict {
        Verdict {
            action: xdp_action::XDP_DROP,
            reason,
        }
    }

    /// Out of the interface it came in on (forwarded, or a reply).
    #[inline(always)]
    pub const fn tx(reason: u32) -> Verdict {
        Verdict {
            action: xdp_action::XDP_TX,
            reason,
        }
    }
}

/// Bumps a global counter (`gateway_common::STAT_*`).
#[inline(always)]
pub fn count(stat: u32) {
    if let Some(c) = STATS.get_ptr_mut(stat) {
        // SAFETY: this CPU's slot; XDP runs with preemption off, so nothing races us.
        unsafe { *c += 1 };
    }
}

/// Adds one packet of `bytes` (and `new_flow`) to a service's or backend's traffic.
#[inline(always)]
pub fn account(map: &PerCpuArray<TrafficStats>, index: u32, bytes: u64, new_flow: bool) {
    if let Some(s) = map.get_ptr_mut(index) {
        // SAFETY: as in `count`.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes;
            if new_flow {
                (*s).new_flows += 1;
            }
        }
    }
}
