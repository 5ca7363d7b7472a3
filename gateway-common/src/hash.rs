//! The flow hash: the same function in the kernel (placing flows, varying outer headers) and
//! in user space (tests and tools that predict a flow's backend). No per-node seed, so every
//! balancer behind ECMP places a flow the same way.
use crate::FlowKey;

/// One odd constant per 64-bit word of the key (the fractional parts of square roots and
/// splitmix64's, all odd): multiplying by an odd number is a bijection on 64-bit words.
const K_SRC_LO: u64 = 0x9e37_79b9_7f4a_7c15;
const K_SRC_HI: u64 = 0xbb67_ae85_84ca_a73b;
const K_DST_LO: u64 = 0x3c6e_f372_fe94_f82b;
const K_DST_HI: u64 = 0xa54f_f53a_5f1d_36f1;
const K_PORTS: u64 = 0x510e_527f_ade6_82d1;

#[inline(always)]
fn word(b: &[u8; 16], i: usize) -> u64 {
    u64::from_le_bytes([
        b[i],
        b[i + 1],
        b[i + 2],
        b[i + 3],
        b[i + 4],
        b[i + 5],
        b[i + 6],
        b[i + 7],
    ])
}

/// Murmur3's 64-bit finalizer: a bijection in which every input bit changes each output
/// bit with probability close to one half.
#[inline(always)]
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The hash of a flow's 5-tuple (words read little-endian on every host). Each 64-bit word
/// of the key is multiplied by its own odd constant, the products are summed and
/// [`fmix64`] mixes the sum; the upper half is the hash. Built for the data plane: the
/// multiplications do not depend on each other, so the CPU overlaps them, where a
/// Murmur3-style chain (what this was up to layout 9) is one long dependency of rounds with
/// rotates, which BPF spells as three instructions each: an established packet cost ~9 ns
/// more with it on the benchmark machine (docs/datapath.md, "Profiling the program"). Keys
/// that differ in one word never reach the finalizer equal. An IPv4 key's upper words are
/// zero, so leaving them out changes nothing.
#[inline(always)]
pub fn flow_hash(k: &FlowKey) -> u32 {
    let ports = u64::from(k.sport_be)
        | (u64::from(k.dport_be) << 16)
        | (u64::from(k.proto) << 32)
        | (u64::from(k.family) << 40);
    let mut h = word(&k.src, 0)
        .wrapping_mul(K_SRC_LO)
        .wrapping_add(word(&k.dst, 0).wrapping_mul(K_DST_LO))
        .wrapping_add(ports.wrapping_mul(K_PORTS));
    if k.family != crate::FAMILY_V4 {
        h = h
            .wrapping_add(word(&k.src, 8).wrapping_mul(K_SRC_HI))
            .wrapping_add(word(&k.dst, 8).wrapping_mul(K_DST_HI));
    }
    (fmix64(h) >> 32) as u32
}

/// The slot, in a table of `size` slots, of a flow of hash `hash`: the hash scaled to the
/// table (`hash * size / 2^32`), as uniform as `hash % size` for a well-mixed hash but a
/// multiply instead of a divide (a 32-bit divide costs the data plane tens of cycles per
/// packet). Every balancer and every tool that predicts a flow's slot must use this.
#[inline(always)]
pub fn slot_of(hash: u32, size: u32) -> u32 {
    ((u64::from(hash) * u64::from(size)) >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_of_stays_in_the_table_and_covers_it() {
        for size in [1, 2, 7, 251, 65_537, 1 << 20, u32::MAX] {
            assert_eq!(slot_of(0, size), 0);
            assert_eq!(slot_of(u32::MAX, size), size - 1, "size {size}");
            let mut h = 0x9e37_79b9u32;
            for _ in 0..1000 {
                h = h.wrapping_mul(0x0101_0101).wrapping_add(0x7f4a_7c15);
                assert!(slot_of(h, size) < size, "hash {h:#x} size {size}");
            }
        }
    }

    /// Keys from a fixed-seed generator (xorshift), v4 or v6.
    fn keys(family: u8, n: usize) -> impl Iterator<Item = FlowKey> {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        (0..n).map(move |_| {
            let mut k = FlowKey {
                family,
                proto: crate::PROTO_TCP,
                ..FlowKey::default()
            };
            let len = if family == crate::FAMILY_V4 { 4 } else { 16 };
            for i in 0..len {
                k.src[i] = next() as u8;
                k.dst[i] = next() as u8;
            }
            k.sport_be = next() as u16;
            k.dport_be = next() as u16;
            k
        })
    }

    #[test]
    fn every_input_bit_moves_about_half_the_output_bits() {
        // Flip each bit of the addresses and ports of 2,000 keys: each output bit must
        // change in 40-60% of the flips (a weak mix leaves some output bit near 0% or
        // 100% for some input bit; 2,000 fair coins stay within 45-55% with a wide
        // margin).
        for family in [crate::FAMILY_V4, crate::FAMILY_V6] {
            let len = if family == crate::FAMILY_V4 { 4 } else { 16 };
            let flips = |k: &mut FlowKey, bit: usize| {
                let (byte, b) = (bit / 8, 1u8 << (bit % 8));
                match byte {
                    x if x < len => k.src[x] ^= b,
                    x if x < 2 * len => k.dst[x - len] ^= b,
                    x if x < 2 * len + 2 => k.sport_be ^= u16::from(b) << (8 * (x - 2 * len)),
                    x => k.dport_be ^= u16::from(b) << (8 * (x - 2 * len - 2)),
                }
            };
            for bit in 0..(2 * len + 4) * 8 {
                let mut changed = [0u32; 32];
                let mut n = 0;
                for key in keys(family, 2000) {
                    let mut other = key;
                    flips(&mut other, bit);
                    let d = flow_hash(&key) ^ flow_hash(&other);
                    for (o, c) in changed.iter_mut().enumerate() {
                        *c += (d >> o) & 1;
                    }
                    n += 1;
                }
                for (o, &c) in changed.iter().enumerate() {
                    assert!(
                        (n * 2 / 5..=n * 3 / 5).contains(&c),
                        "family {family}, input bit {bit}: output bit {o} changed {c} of {n}"
                    );
                }
            }
        }
    }

    #[test]
    fn families_and_directions_hash_apart() {
        // The same bytes as IPv4 and as IPv6, and a flow and its reverse, are different
        // keys and should not share a hash.
        for key in keys(crate::FAMILY_V4, 1000) {
            let v6 = FlowKey {
                family: crate::FAMILY_V6,
                ..key
            };
            assert_ne!(flow_hash(&key), flow_hash(&v6));
            let back = FlowKey {
                src: key.dst,
                dst: key.src,
                sport_be: key.dport_be,
                dport_be: key.sport_be,
                ..key
            };
            assert_ne!(flow_hash(&key), flow_hash(&back));
        }
    }

    #[test]
    fn flows_spread_evenly_over_slots() {
        // 400 flows a slot on average over a prime-sized table: every slot within 35% of
        // that (a binomial count's spread is 20, so this holds with a wide margin unless
        // the hash or the scaling is biased).
        const SIZE: u32 = 251;
        let mut counts = [0u32; SIZE as usize];
        let mut key = FlowKey {
            family: crate::FAMILY_V4,
            proto: crate::PROTO_TCP,
            dport_be: 443u16.to_be(),
            ..FlowKey::default()
        };
        for client in 0..400u32 {
            key.src[..4].copy_from_slice(&(0xc612_0000 | client).to_be_bytes());
            for port in 0..SIZE {
                key.sport_be = (20_000 + port as u16).to_be();
                counts[slot_of(flow_hash(&key), SIZE) as usize] += 1;
            }
        }
        for (slot, &n) in counts.iter().enumerate() {
            assert!((260..=540).contains(&n), "slot {slot} holds {n} flows");
        }
    }
}
