//! `xdp_floor`: swaps the MACs and bounces the frame (XDP_TX). The least any forwarding
//! program does; the data-plane benchmark measures it in the same run as the floor.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

    #[xdp]
    pub fn xdp_floor(ctx: XdpContext) -> u32 {
        let start = ctx.data();
        if start + 12 > ctx.data_end() {
            return xdp_action::XDP_PASS;
        }
        let eth = start as *mut [u8; 6];
        // SAFETY: 12 bytes are in bounds.
        unsafe {
            let dst = core::ptr::read_unaligned(eth);
            let src = core::ptr::read_unaligned(eth.add(1));
            core::ptr::write_unaligned(eth, src);
            core::ptr::write_unaligned(eth.add(1), dst);
        }
        xdp_action::XDP_TX
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
