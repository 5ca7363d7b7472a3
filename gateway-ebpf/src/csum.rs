//! Internet checksums (RFC 1071), and their incremental update (RFC 1624).
use aya_ebpf::helpers::bpf_csum_diff;

/// Folds a 32-bit one's-complement sum to 16 bits.
#[inline(always)]
pub fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Checksum of an IPv4 header held on the stack, its checksum field zero; returned as the
/// numeric value to store big-endian.
#[inline(always)]
pub fn ipv4_header(h: &[u8; 20]) -> u16 {
    let mut sum = 0u64;
    let mut i = 0;
    while i < 20 {
        sum += u64::from(u16::from_be_bytes([h[i], h[i + 1]]));
        i += 2;
    }
    !fold(sum)
}

/// One's-complement sum of `len` bytes of packet memory at `ptr` (len a multiple of 4),
/// in the machine's byte order, added to `seed`. The caller has bounds-checked the range.
#[inline(always)]
pub fn partial(ptr: *const u8, len: u32, seed: u32) -> u64 {
    // SAFETY: the verifier checks the pointer range against the packet bounds.
    let r = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, ptr as *mut u32, len, seed) };
    (r as u64) & 0xffff_ffff
}

/// The one's-complement sum of `a`'s 16-bit words, each complemented (`neg`) or not: what a
/// checksum gains when `a` leaves (`neg`) or enters the summed data (RFC 1624). Words are
/// taken in memory order, as the checksum field is read.
#[inline(always)]
pub fn words<const N: usize>(a: &[u8; N], neg: bool) -> u64 {
    let mut s = 0u64;
    let mut i = 0;
    while i < N {
        let w = u16::from_ne_bytes([a[i], a[i + 1]]);
        s += u64::from(if neg { !w } else { w });
        i += 2;
    }
    s
}

/// A checksum field `old` updated by `delta` (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')).
#[inline(always)]
pub fn updated(old: u16, delta: u64) -> u16 {
    !fold(u64::from(!old) + delta)
}
