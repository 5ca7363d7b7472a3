//! The flow hash: the same function in the kernel (placing flows, varying outer headers) and
//! in user space (tests and tools that predict a flow's backend). No per-node seed, so every
//! balancer behind ECMP places a flow the same way.
use crate::FlowKey;

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline(always)]
fn mix(h: u32, w: u32) -> u32 {
    let k = w.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn word(b: &[u8; 16], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Murmur3-style hash of a flow's 5-tuple (words read little-endian on every host).
#[inline(always)]
pub fn flow_hash(k: &FlowKey) -> u32 {
    let mut h = 0x6a09_e667u32;
    h = mix(h, word(&k.src, 0));
    h = mix(h, word(&k.dst, 0));
    if k.family != crate::FAMILY_V4 {
        h = mix(h, word(&k.src, 4));
        h = mix(h, word(&k.src, 8));
        h = mix(h, word(&k.src, 12));
        h = mix(h, word(&k.dst, 4));
        h = mix(h, word(&k.dst, 8));
        h = mix(h, word(&k.dst, 12));
    }
    h = mix(h, u32::from(k.sport_be) | (u32::from(k.dport_be) << 16));
    h = mix(h, u32::from(k.proto) | (u32::from(k.family) << 8));
    // fmix32
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}
