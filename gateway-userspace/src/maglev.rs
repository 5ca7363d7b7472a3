//! Weighted Maglev (Eisenbud et al., NSDI 2016): a pure function from (backends, weights,
//! table size) to a lookup table of backend ids.
//!
//! Each backend walks its own permutation of the slots, `(offset + j * skip) mod M`, and
//! takes its next free preferred slot whenever it has a turn. Weights decide how often a
//! backend gets a turn: in round `r` a backend of weight `w` takes a turn while
//! `r * w >= turns_taken * max_weight`, so over the fill it gets turns in proportion to `w`.
//!
//! Offsets and skips come from a fixed hash of the backend's key (its address), and the
//! backends are visited in key order, so equal inputs give an identical table on every
//! machine and every run: balancers behind ECMP agree on every flow's placement.

/// One backend's part in a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// What the permutation is derived from: the backend's address (16 bytes, IPv4 in the
    /// first 4). Independent of `id`, so renumbering backends does not move slots.
    pub key: [u8; 16],
    /// The value written into the slots.
    pub id: u32,
    /// Relative weight; 0 takes no slots.
    pub weight: u32,
}

/// FNV-1a followed by the splitmix64 finalizer: stable, portable and well mixed.
fn hash64(key: &[u8; 16], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

const SEED_OFFSET: u64 = 0x9e37_79b9_7f4a_7c15;
const SEED_SKIP: u64 = 0xc2b2_ae3d_27d4_eb4f;

/// Builds a table of `m` slots (`m` prime; the caller validates it). With no backend of
/// positive weight every slot is 0, "no backend".
pub fn build(entries: &[Entry], m: u32) -> Vec<u32> {
    let m64 = u64::from(m);
    let mut table = vec![0u32; m as usize];
    let mut live: Vec<&Entry> = entries.iter().filter(|e| e.weight > 0).collect();
    if live.is_empty() || m < 2 {
        return table;
    }
    live.sort_by(|a, b| a.key.cmp(&b.key).then(a.id.cmp(&b.id)));
    let max_w = u64::from(live.iter().map(|e| e.weight).max().unwrap_or(1));

    struct Walk {
        id: u32,
        weight: u64,
        offset: u64,
        skip: u64,
        next: u64,
        turns: u64,
    }
    let mut walks: Vec<Walk> = live
        .iter()
        .map(|e| Walk {
            id: e.id,
            weight: u64::from(e.weight),
            offset: hash64(&e.key, SEED_OFFSET) % m64,
            skip: hash64(&e.key, SEED_SKIP) % (m64 - 1) + 1,
            next: 0,
            turns: 0,
        })
        .collect();

    let mut filled = 0u64;
    let mut round = 0u64;
    while filled < m64 {
        round += 1;
        for w in walks.iter_mut() {
            if round * w.weight < w.turns * max_w {
                continue;
            }
            w.turns += 1;
            let mut c = (w.offset + w.next * w.skip) % m64;
            while table[c as usize] != 0 {
                w.next += 1;
                c = (w.offset + w.next * w.skip) % m64;
            }
            table[c as usize] = w.id;
            w.next += 1;
            filled += 1;
            if filled == m64 {
                break;
            }
        }
    }
    table
}

/// Slots per backend id, for reports and tests.
pub fn shares(table: &[u32]) -> std::collections::BTreeMap<u32, usize> {
    let mut m = std::collections::BTreeMap::new();
    for id in table {
        *m.entry(*id).or_insert(0) += 1;
    }
    m
}

/// Fraction of slots whose backend differs between two tables of equal size.
pub fn moved_fraction(a: &[u32], b: &[u32]) -> f64 {
    if a.is_empty() || a.len() != b.len() {
        return 1.0;
    }
    let moved = a.iter().zip(b).filter(|(x, y)| x != y).count();
    moved as f64 / a.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..4].copy_from_slice(&[10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        k
    }

    fn entries(weights: &[u32]) -> Vec<Entry> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Entry {
                key: key(i as u32),
                id: i as u32 + 1,
                weight: *w,
            })
            .collect()
    }

    fn assert_shares(weights: &[u32], m: u32, tolerance: f64) {
        let t = build(&entries(weights), m);
        let s = shares(&t);
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        for (i, w) in weights.iter().enumerate() {
            let want = f64::from(m) * f64::from(*w) / total as f64;
            let got = *s.get(&(i as u32 + 1)).unwrap_or(&0) as f64;
            let err = (got - want).abs() / want;
            assert!(
                err <= tolerance,
                "backend {i} (w {w}) got {got} slots, want {want:.1}: {err:.4}"
            );
        }
        assert!(!s.contains_key(&0), "table has empty slots");
    }

    #[test]
    fn equal_weights_share_within_one_percent_up_to_650_backends() {
        for n in [1usize, 2, 3, 10, 100, 650] {
            assert_shares(&vec![100; n], 65537, 0.01);
        }
    }

    #[test]
    fn unequal_weights_share_within_one_percent() {
        assert_shares(&[1, 2, 3], 65537, 0.01);
        let w: Vec<u32> = (0..60).map(|i| 100 + (i % 3) * 100).collect();
        assert_shares(&w, 65537, 0.01);
        assert_shares(&[1, 100], 65537, 0.01);
    }

    #[test]
    fn same_input_gives_the_same_table_whatever_the_order() {
        let e = entries(&[5, 1, 7, 3]);
        let mut rev = e.clone();
        rev.reverse();
        assert_eq!(build(&e, 251), build(&rev, 251));
        // A fixed fingerprint: the table must not change across runs, machines or releases
        // without anyone noticing (it would re-place every flow in a mixed-version cluster).
        let t = build(&e, 13);
        assert_eq!(t, FINGERPRINT);
    }

    /// `build(&entries(&[5, 1, 7, 3]), 13)` as first computed; see the test above.
    const FINGERPRINT: [u32; 13] = [1, 3, 3, 3, 1, 3, 4, 1, 1, 3, 2, 4, 4];

    #[test]
    fn removing_one_backend_moves_about_one_nth() {
        for n in [10u32, 100] {
            let all = entries(&vec![1; n as usize]);
            let before = build(&all, 65537);
            let after = build(&all[1..], 65537);
            let moved = moved_fraction(&before, &after);
            let bound = 1.0 / f64::from(n) + 0.01;
            assert!(moved <= bound, "n={n}: moved {moved:.4} > {bound:.4}");
            // Slots of the removed backend must all move; the rest mostly stay.
            let removed_slots = before.iter().filter(|id| **id == 1).count() as f64 / 65537.0;
            assert!(moved >= removed_slots);
        }
    }

    #[test]
    fn empty_or_zero_weight_gives_an_empty_table() {
        assert!(build(&[], 7).iter().all(|s| *s == 0));
        assert!(build(&entries(&[0, 0]), 7).iter().all(|s| *s == 0));
    }
}
