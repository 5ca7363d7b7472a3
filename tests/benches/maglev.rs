//! `cargo xtask bench maglev`: how long `maglev::build` takes, and how many slots move when
//! one backend leaves or joins, against the ideal 1/N.
//!
//! Backends have equal weights and addresses 10.0.x.y, as a service's would. Each build is
//! timed on its own (the table allocation included, as the agent pays it too); the
//! median and the spread of `RUNS` builds are reported, after one untimed warm-up.
//!
//! Output: a Markdown table on stdout, also written to `$GATEWAY_BENCH_OUT` if set.
use std::{
    fmt::Write as _,
    hint::black_box,
    time::{Duration, Instant},
};

use gateway::maglev::{self, Entry};

const RUNS: usize = 9;
const BACKENDS: [usize; 3] = [10, 100, 1000];
/// The default table size, and a prime ten times larger.
const SIZES: [u32; 2] = [65537, 655373];
/// From the Maglev issue: N = 1000, M = 65537 builds in under 5 ms.
const TARGET: (usize, u32, Duration) = (1000, 65537, Duration::from_millis(5));

fn backend(i: usize) -> Entry {
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&[10, 0, (i >> 8) as u8, i as u8]);
    Entry {
        key,
        id: i as u32 + 1,
        weight: 1,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let mut md = String::new();
    writeln!(
        md,
        "| backends N | table M | build median ms | spread (min-max) | moved, 1 removed | \
         moved, 1 added | ideal 1/N |"
    )
    .unwrap();
    writeln!(md, "|---|---|---|---|---|---|---|").unwrap();
    let mut target_met = None;
    for &m in &SIZES {
        for &n in &BACKENDS {
            // One spare backend for the "added" table.
            let all: Vec<Entry> = (0..=n).map(backend).collect();
            let entries = &all[..n];
            let table = maglev::build(entries, m);
            let mut times: Vec<Duration> = (0..RUNS)
                .map(|_| {
                    let start = Instant::now();
                    let t = maglev::build(black_box(entries), black_box(m));
                    let took = start.elapsed();
                    assert_eq!(t, table, "N={n} M={m}: two builds differ");
                    took
                })
                .collect();
            times.sort();
            let median = times[RUNS / 2];
            if (n, m) == (TARGET.0, TARGET.1) {
                target_met = Some(median < TARGET.2);
            }
            // The middle backend in key order leaves; a new one (next address) joins.
            let mut fewer = entries.to_vec();
            fewer.remove(n / 2);
            let removed = maglev::moved_fraction(&table, &maglev::build(&fewer, m));
            let added = maglev::moved_fraction(&table, &maglev::build(&all, m));
            writeln!(
                md,
                "| {n} | {m} | {:.2} | {:.2}-{:.2} | {:.2}% | {:.2}% | {:.2}% |",
                ms(median),
                ms(times[0]),
                ms(times[RUNS - 1]),
                removed * 100.0,
                added * 100.0,
                100.0 / n as f64,
            )
            .unwrap();
        }
    }
    let (n, m, limit) = TARGET;
    let verdict = match target_met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "not measured",
    };
    writeln!(
        md,
        "\n{RUNS} builds per row (release build), equal weights. Moved: the share of slots \
         whose backend changes when the middle backend of N is removed, or when one is added \
         to N (ideal 1/(N+1) there).\n\nTarget: N = {n}, M = {m} builds in under {} ms: \
         {verdict}.",
        limit.as_millis()
    )
    .unwrap();
    print!("{md}");
    if let Ok(path) = std::env::var("GATEWAY_BENCH_OUT") {
        std::fs::write(&path, &md).expect("write bench output");
    }
    if target_met != Some(true) {
        eprintln!("target missed: N = {n}, M = {m} takes {limit:?} or more");
    }
}
