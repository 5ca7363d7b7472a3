//! What the XDP binaries share: the layout of the headers they read and write (`hdr`), and
//! the runtime every BPF object needs (`bpf_runtime!`). The programs themselves are the
//! binaries, built for bpfel-unknown-none; on the host this crate is a stub that only
//! holds constants.
#![no_std]

pub mod hdr;

/// The items every XDP binary of this crate needs: a panic handler (the verifier rejects
/// any path that could reach it, so it never runs), the licence section that GPL-only
/// helpers require, and an empty `main` for host builds of the binary.
#[macro_export]
macro_rules! bpf_runtime {
    () => {
        #[cfg(target_arch = "bpf")]
        #[panic_handler]
        fn panic(_info: &core::panic::PanicInfo) -> ! {
            loop {}
        }

        #[cfg(target_arch = "bpf")]
        #[unsafe(link_section = "license")]
        #[unsafe(no_mangle)]
        static LICENSE: [u8; 4] = *b"GPL\0";

        #[cfg(not(target_arch = "bpf"))]
        fn main() {}
    };
}
