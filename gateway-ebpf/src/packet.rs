//! Packet memory: bounds-checked pointers into the frame and unaligned reads through them.
//! Every access the program makes to the frame goes through `at`, so every one carries a
//! check against `data_end` that the verifier can see.
use aya_ebpf::programs::XdpContext;

/// Offsets are masked to this: no header the program reads lies further in (Ethernet, VLAN,
/// IPv6 and four extension headers of at most 2 KiB each). The mask gives the verifier a
/// bound it cannot lose when the compiler spills an offset.
const OFF_MASK: usize = 0x3fff;

/// `len` bytes at `off` from the start of the frame, if the frame has them.
#[inline(always)]
pub fn at(ctx: &XdpContext, off: usize, len: usize) -> Option<*mut u8> {
    let off = off & OFF_MASK;
    let start = ctx.data();
    if start + off + len > ctx.data_end() {
        return None;
    }
    Some((start + off) as *mut u8)
}

/// Frame length in bytes.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

/// Frame length as a plain number. The compiler would otherwise fold `n - frame_len` into
/// `(n + data) - data_end`, arithmetic on `data_end` that the verifier rejects.
#[inline(always)]
pub fn frame_len_opaque(ctx: &XdpContext) -> usize {
    core::hint::black_box(ctx.data_end() - ctx.data())
}

#[inline(always)]
pub fn rd8(p: *const u8, i: usize) -> u8 {
    // SAFETY: callers obtained `p` from `at` with a length covering `i`.
    unsafe { *p.add(i) }
}

/// A big-endian 16-bit field as a number.
#[inline(always)]
pub fn rd16(p: *const u8, i: usize) -> u16 {
    u16::from_be_bytes([rd8(p, i), rd8(p, i + 1)])
}

#[inline(always)]
pub fn copy<const N: usize>(p: *const u8, i: usize) -> [u8; N] {
    // SAFETY: as for `rd8`; unaligned because packet fields are.
    unsafe { core::ptr::read_unaligned(p.add(i) as *const [u8; N]) }
}

/// Writes `v` at `p + i`.
///
/// # Safety
/// `p` must come from `at` with a length covering `i + N`.
#[inline(always)]
pub unsafe fn put<const N: usize>(p: *mut u8, i: usize, v: [u8; N]) {
    // SAFETY: the caller guarantees the range; unaligned because packet fields are.
    unsafe { core::ptr::write_unaligned(p.add(i) as *mut [u8; N], v) }
}
