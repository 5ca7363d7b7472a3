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

/// Builds a table of `m` slots (`m` prime; the caller validates it, and a non-prime `m`
/// may never finish). With no backend of positive weight every slot is 0, "no backend".
pub fn build(entries: &[Entry], m: u32) -> Vec<u32> {
    let m64 = u64::from(m);
    let mut table = vec![0u32; m as usize];
    let mut live: Vec<&Entry> = entries.iter().filter(|e| e.weight > 0).collect();
    if live.is_empty() || m == 0 {
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
            // m = 1 is not prime, but its one slot still gets a backend.
            skip: hash64(&e.key, SEED_SKIP) % (m64 - 1).max(1) + 1,
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
    // Counted in an array indexed by id, then collected: a map lookup per slot cost
    // milliseconds on a 65537-slot table. Ids are backend ids, below MAX_BACKENDS.
    let top = table.iter().copied().max().unwrap_or(0) as usize;
    debug_assert!(top < gateway_common::MAX_BACKENDS as usize, "id {top}");
    let mut counts = vec![0usize; top + 1];
    for id in table {
        counts[*id as usize] += 1;
    }
    counts
        .into_iter()
        .enumerate()
        .filter(|(_, n)| *n > 0)
        .map(|(id, n)| (id as u32, n))
        .collect()
}

/// Fraction of slots whose backend differs between two tables of equal size.
pub fn moved_fraction(a: &[u32], b: &[u32]) -> f64 {
    if a.is_empty() || a.len() != b.len() {
        return 1.0;
    }
    let moved = a.iter().zip(b).filter(|(x, y)| x != y).count();
    moved as f64 / a.len() as f64
}

/// Whether `n` is prime (Maglev table sizes must be).
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let n = u64::from(n);
    let mut d = 5u64;
    while d * d <= n {
        if n % d == 0 || n % (d + 2) == 0 {
            return false;
        }
        d += 6;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table size a service gets by default.
    const M: u32 = 65537;

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

    /// A fixed pseudo-random permutation (xorshift Fisher-Yates): no dependency, same on
    /// every run.
    fn shuffled<T: Clone>(v: &[T], mut seed: u64) -> Vec<T> {
        let mut out = v.to_vec();
        for i in (1..out.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            out.swap(i, (seed % (i as u64 + 1)) as usize);
        }
        out
    }

    /// Worst relative error of any backend's share against its weight's ideal share.
    fn worst_share_error(weights: &[u32], m: u32) -> f64 {
        let t = build(&entries(weights), m);
        let s = shares(&t);
        assert!(!s.contains_key(&0), "table has empty slots");
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        let mut worst = 0.0f64;
        for (i, w) in weights.iter().enumerate() {
            let want = f64::from(m) * f64::from(*w) / total as f64;
            let got = *s.get(&(i as u32 + 1)).unwrap_or(&0) as f64;
            worst = worst.max((got - want).abs() / want);
        }
        worst
    }

    /// Slots (as a fraction of the table) whose owner changed although both the old and the
    /// new owner are in both tables: churn beyond what the change itself forces.
    fn survivor_churn(before: &[u32], after: &[u32], changed: u32) -> f64 {
        let n = before
            .iter()
            .zip(after)
            .filter(|(b, a)| b != a && **b != changed && **a != changed)
            .count();
        n as f64 / before.len() as f64
    }

    #[test]
    fn equal_weights_share_within_one_percent_up_to_650_backends() {
        // Backends take turns in rounds, so each ends with floor(M/N) or ceil(M/N) slots: off
        // by less than one slot, which is under 1% while M/N > 100 (N <= 655 for M = 65537).
        for n in [1usize, 2, 3, 7, 10, 100, 256, 500, 650, 655] {
            let t = build(&entries(&vec![100; n]), M);
            let (lo, hi) = (M as usize / n, (M as usize).div_ceil(n));
            for (id, got) in shares(&t) {
                assert!(
                    (lo..=hi).contains(&got),
                    "n={n}: backend {id} has {got} slots, not {lo} or {hi}"
                );
            }
            let err = worst_share_error(&vec![100; n], M);
            assert!(err <= 0.01, "n={n}: worst share error {err:.4}");
        }
    }

    #[test]
    fn unequal_weights_share_within_one_percent() {
        for w in [&[1, 2, 3][..], &[1, 100], &[5, 1, 7, 3], &[1, 1, 1, 300]] {
            let err = worst_share_error(w, M);
            assert!(err <= 0.01, "weights {w:?}: worst share error {err:.4}");
        }
    }

    /// Weights 1:2:3 repeated, for every N = 3k up to the limit of the 1% bound.
    ///
    /// The limit is integer rounding, not bias: a weight-1 backend's ideal share is
    /// M / (2N) slots, and the turn-taking construction lands up to about two slots off the
    /// ideal (the first turn every backend takes in round one, plus the last round cut short
    /// when the table is full). With M = 65537 every N = 3k up to 342 stays within 1%
    /// (worst 0.94%, N = 315); N = 345 is the first that does not: its weight-1 backends'
    /// ideal is 95.0 slots and one of them is 1.07% off. Beyond that it depends on N (360,
    /// 372, 381, 390 fail, others between pass). Take M larger for more weighted backends.
    #[test]
    fn mixed_weights_share_within_one_percent_up_to_342_backends() {
        for k in 1..=114usize {
            let w: Vec<u32> = (0..3 * k).map(|i| 1 + (i % 3) as u32).collect();
            let err = worst_share_error(&w, M);
            assert!(err <= 0.01, "n={}: worst share error {err:.4}", 3 * k);
        }
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
    fn building_twice_or_in_any_order_gives_the_same_table() {
        let w: Vec<u32> = (0..100).map(|i| 1 + i % 7).collect();
        let e = entries(&w);
        let t = build(&e, M);
        assert_eq!(t, build(&e, M), "two builds differ");
        for seed in [1, 2, 0x5eed] {
            assert_eq!(
                t,
                build(&shuffled(&e, seed), M),
                "order (seed {seed}) matters"
            );
        }
    }

    #[test]
    fn renumbering_backends_does_not_move_slots() {
        let e = entries(&[1, 2, 3, 4, 5, 6, 7]);
        let renumbered: Vec<Entry> = e
            .iter()
            .map(|x| Entry {
                id: x.id + 100,
                ..*x
            })
            .collect();
        let a = build(&e, 251);
        let b = build(&renumbered, 251);
        assert!(a.iter().zip(&b).all(|(x, y)| x + 100 == *y));
    }

    #[test]
    fn removing_one_of_n_moves_its_share_and_little_else() {
        for n in [10usize, 100, 650] {
            let all = entries(&vec![1; n]);
            let before = build(&all, M);
            // The first, a middle and the last backend in key order: each sits at a
            // different place in the turn order.
            for gone in [0, n / 2, n - 1] {
                let mut rest = all.clone();
                let gone_id = rest.remove(gone).id;
                let after = build(&rest, M);
                // The removed backend's slots all move, to survivors; a survivor's slot is
                // either kept or handed to another survivor (never emptied).
                assert!(!after.contains(&gone_id) && !after.contains(&0));
                let moved = moved_fraction(&before, &after);
                let bound = 1.0 / n as f64 + 0.01;
                assert!(moved <= bound, "n={n}: moved {moved:.4} > {bound:.4}");
                // Maglev trades a little churn among survivors for even shares; the paper
                // measures a few percent. Here it grows with N (0.3% at 10, 0.8% at 650).
                let churn = survivor_churn(&before, &after, gone_id);
                assert!(churn <= 0.01, "n={n}: survivors' churn {churn:.4}");
                println!(
                    "remove 1 of {n} (#{gone}): moved {moved:.4}, survivors' churn {churn:.4}"
                );
            }
        }
    }

    #[test]
    fn adding_one_to_n_moves_about_one_n_plus_oneth() {
        for n in [10usize, 100, 650] {
            let all = entries(&vec![1; n + 1]);
            let before = build(&all[..n], M);
            let new_id = all[n].id;
            let after = build(&all, M);
            let moved = moved_fraction(&before, &after);
            let bound = 1.0 / (n + 1) as f64 + 0.01;
            assert!(moved <= bound, "n={n}: moved {moved:.4} > {bound:.4}");
            let taken = after.iter().filter(|id| **id == new_id).count() as f64 / f64::from(M);
            assert!(moved >= taken);
            let churn = survivor_churn(&before, &after, new_id);
            assert!(churn <= 0.01, "n={n}: survivors' churn {churn:.4}");
            println!("add 1 to {n}: moved {moved:.4}, survivors' churn {churn:.4}");
        }
    }

    #[test]
    fn a_table_smaller_than_the_backend_count_is_still_full() {
        let e = entries(&[1; 10]);
        for m in [1, 2, 3, 5, 7] {
            let t = build(&e, m);
            assert_eq!(t.len(), m as usize);
            assert!(t.iter().all(|id| (1..=10).contains(id)), "m={m}: {t:?}");
        }
    }

    #[test]
    fn one_backend_takes_every_slot() {
        for m in [2, 3, 13, M] {
            assert!(build(&entries(&[3]), m).iter().all(|id| *id == 1));
        }
    }

    #[test]
    fn zero_weight_takes_no_slot() {
        let t = build(&entries(&[0, 1, 0, 2]), 251);
        assert_eq!(shares(&t).keys().copied().collect::<Vec<_>>(), [2, 4]);
    }

    #[test]
    fn empty_or_zero_weight_gives_an_empty_table() {
        assert!(build(&[], 7).iter().all(|s| *s == 0));
        assert!(build(&entries(&[0, 0]), 7).iter().all(|s| *s == 0));
    }

    #[test]
    fn primes() {
        let small: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65537) && is_prime(4_294_967_291));
        assert!(!is_prime(65536) && !is_prime(65535) && !is_prime(4_294_967_295) && !is_prime(25));
    }
}
