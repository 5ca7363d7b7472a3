//! `xdp_floor`: swaps the MACs and bounces the frame (XDP_TX). The least any forwarding
//! program does; the data-plane benchmark measures it in the same run as the floor.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
    use gateway_ebpf::hdr::{ETH_ALEN, ETH_DST, ETH_SRC};

    #[xdp]
    pub fn xdp_floor(ctx: XdpContext) -> u32 {
        let start = ctx.data();
        if start + 2 * ETH_ALEN > ctx.data_end() {
            return xdp_action::XDP_PASS;
        }
        let eth = start as *mut u8;
        // SAFETY: both MACs are in bounds.
        unsafe {
            let dst = core::ptr::read_unaligned(eth.add(ETH_DST) as *const [u8; ETH_ALEN]);
            let src = core::ptr::read_unaligned(eth.add(ETH_SRC) as *const [u8; ETH_ALEN]);
            core::ptr::write_unaligned(eth.add(ETH_DST) as *mut [u8; ETH_ALEN], src);
            core::ptr::write_unaligned(eth.add(ETH_SRC) as *mut [u8; ETH_ALEN], dst);
        }
        xdp_action::XDP_TX
    }
}

gateway_ebpf::bpf_runtime!();
