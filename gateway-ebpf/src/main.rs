//! The gateway XDP program.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{
        bindings::xdp_action, macros::map, macros::xdp, maps::PerCpuArray, programs::XdpContext,
    };
    use gateway_common::{STAT_COUNT, STAT_RX_PACKETS};

    #[map(name = "STATS")]
    static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

    #[inline(always)]
    fn count(index: u32) {
        if let Some(c) = STATS.get_ptr_mut(index) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            unsafe { *c += 1 };
        }
    }

    #[xdp]
    pub fn gateway(_ctx: XdpContext) -> u32 {
        count(STAT_RX_PACKETS);
        xdp_action::XDP_PASS
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 4] = *b"GPL\0";
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
