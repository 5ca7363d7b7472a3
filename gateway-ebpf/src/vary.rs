//! `xdp-vary`: the live-frames benchmark's front program. `BPF_PROG_TEST_RUN` with
//! `BPF_F_TEST_XDP_LIVE_FRAMES` repeats one frame; `xdp_vary` gives each run its own flow by
//! writing the TCP source port from a per-CPU counter (modulo `FLOWS[0]`, a power of two),
//! then tail-calls the program under test in `NEXT[0]` (the floor or the balancer). The
//! port is in neither the IP header nor any checksum the balancer checks. It also writes
//! the Ethernet header afresh: page-pool frames keep what the last run wrote, and an
//! encapsulating program writes its outer header over the original Ethernet header.
//! `xdp_sink` drops what the veth peer receives.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{
        bindings::xdp_action,
        macros::{map, xdp},
        maps::{Array, PerCpuArray, ProgramArray},
        programs::XdpContext,
    };
    use gateway_ebpf::hdr::{ETH_LEN, ETH_P_IP, IPV4_LEN};

    #[map(name = "NEXT")]
    static NEXT: ProgramArray = ProgramArray::with_max_entries(1, 0);

    #[map(name = "FLOWS")]
    static FLOWS: Array<u32> = Array::with_max_entries(1, 0);

    #[map(name = "COUNTER")]
    static COUNTER: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

    /// Where the TCP source port is in an untagged IPv4 frame without options.
    const SPORT: usize = ETH_LEN + IPV4_LEN;

    #[xdp]
    pub fn xdp_vary(ctx: XdpContext) -> u32 {
        let start = ctx.data();
        if start + SPORT + 2 > ctx.data_end() {
            return xdp_action::XDP_ABORTED;
        }
        let flows = FLOWS.get(0).copied().unwrap_or(1).max(1);
        if let Some(c) = COUNTER.get_ptr_mut(0) {
            // SAFETY: this CPU's counter; the port's two bytes are in bounds.
            unsafe {
                let port = (*c & (flows - 1)) as u16;
                *c = (*c).wrapping_add(1);
                core::ptr::write_unaligned((start + SPORT) as *mut [u8; 2], port.to_be_bytes());
                let [hi, lo] = ETH_P_IP.to_be_bytes();
                let eth: [u8; ETH_LEN] = [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, hi, lo];
                core::ptr::write_unaligned(start as *mut [u8; ETH_LEN], eth);
            }
        }
        // SAFETY: a tail call either runs NEXT[0] in our place or returns an error.
        let _ = unsafe { NEXT.tail_call(&ctx, 0) };
        xdp_action::XDP_ABORTED
    }

    #[xdp]
    pub fn xdp_sink(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_DROP
    }
}

gateway_ebpf::bpf_runtime!();
