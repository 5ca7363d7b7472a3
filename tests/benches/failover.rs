//! `cargo xtask bench failover`: the end-to-end failover test's measurement, repeated. Each
//! run builds a fresh lab (3 backends), starts the release `gateway` with TCP checks every
//! 100 ms (fall 2, timeout 100 ms, the default fast_interval of 25 ms), streams new connections from the client and kills
//! backend b1's server 700-950 ms in (a random point of the check cycle); the failover time is from the kill to the last new
//! connection that failed, after which new connections all went to b2 and b3. Every third run
//! is full-NAT, which should fail no new connection at all.
//!
//! Output: Markdown on stdout, also written to `$GATEWAY_BENCH_OUT` if set.
#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use common::{agent::Cfg, scenario};

const RUNS: usize = 20;
/// The config's default fast_interval (interval / 4): no failover can be faster.
const FAST_INTERVAL: Duration = Duration::from_millis(25);
/// Each run takes about 5 s; stop early rather than run past this.
const BUDGET: Duration = Duration::from_secs(170);

fn main() {
    if !lab::is_root() {
        eprintln!(
            "bench failover: needs root (namespaces, XDP); run `cargo xtask bench failover` as root"
        );
        std::process::exit(1);
    }
    let gateway = common::agent::gateway_bin();
    assert!(
        gateway.parent().is_some_and(|d| d.ends_with("release")),
        "bench failover wants the release agent, found {}",
        gateway.display()
    );
    let started = Instant::now();
    // Modes alternate; the time is the control plane's (probes, plan, map writes), the same
    // for both, and the alternation shows that. Full-NAT runs give each new connection 3 s
    // (see its paragraph below).
    let modes = ["l2dsr", "ipip", "fullnat"];
    let mut fullnat: Vec<(usize, usize, usize, Duration)> = Vec::new();
    let mut took: Vec<(&str, Duration, usize, usize)> = Vec::new();
    let mut gaps: Vec<Duration> = Vec::new();
    let mut problems = Vec::new();
    let mut bound = Duration::ZERO;
    for run in 0..RUNS {
        if started.elapsed() > BUDGET {
            problems.push(format!(
                "stopped after {run} runs: over the {BUDGET:?} budget"
            ));
            break;
        }
        let mode = modes[run % modes.len()];
        let mut lab = common::lab("fb", 3);
        let cfg = Cfg::new(mode, false, 3);
        bound = cfg.probe_bound();
        let agent = scenario::start(&lab, &cfg, 3);
        let f = if mode == "fullnat" {
            scenario::failover_with(&mut lab, false, Duration::from_secs(3))
        } else {
            scenario::failover(&mut lab, false)
        };
        let down = agent.wait_log("DOWN after 2 failures", Duration::from_secs(2));
        eprintln!(
            "run {run} {mode}: {} ms, {} of {} new connections failed, longest pause {} ms",
            f.took.as_millis(),
            f.failed,
            f.total,
            f.max_gap.as_millis()
        );
        gaps.push(f.max_gap);
        if !down || f.failed_before > 0 || !f.other_errors.is_empty() {
            problems.push(format!(
                "run {run} ({mode}): DOWN logged: {down}, failures before the kill: {}, \
                 errors on other backends' connections: {:?}",
                f.failed_before, f.other_errors
            ));
        }
        if mode == "fullnat" {
            let unopened = f
                .errors
                .iter()
                .filter(|e| e.1.starts_with("connect: "))
                .count();
            fullnat.push((f.total, unopened, f.failed - unopened, f.slowest));
        } else {
            took.push((mode, f.took, f.failed, f.total));
        }
        drop(agent);
        drop(lab);
    }

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let stats = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        (v[0], at(0.5), at(0.9), v[v.len() - 1])
    };
    let mut md = String::from(
        "| runs | min ms | median ms | p90 ms | max ms | bound: fall x interval + timeout |\n\
         |---|---|---|---|---|---|\n",
    );
    let mut row = |label: String, v: &[Duration]| {
        if v.is_empty() {
            return;
        }
        let (min, med, p90, max) = stats(v);
        writeln!(
            md,
            "| {label} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} ms |",
            ms(min),
            ms(med),
            ms(p90),
            ms(max),
            ms(bound)
        )
        .unwrap();
    };
    let all: Vec<Duration> = took.iter().map(|t| t.1).collect();
    row(format!("{} (all)", all.len()), &all);
    for mode in modes.iter().filter(|m| **m != "fullnat") {
        let v: Vec<Duration> = took.iter().filter(|t| t.0 == *mode).map(|t| t.1).collect();
        row(format!("{} ({mode})", v.len()), &v);
    }
    let failed: Vec<usize> = took.iter().map(|t| t.2).collect();
    let total: usize = took.iter().map(|t| t.3).sum();
    let over = all.iter().filter(|t| **t > bound).count();
    writeln!(
        md,
        "\nIPv4, TCP health checks every 100 ms, timeout 100 ms, fall 2, no jitter; release \
         `gateway`. Failover time: from the kill of b1's server to the last new connection that \
         failed (the same figure the end-to-end test prints and bounds). A new connection is \
         one connect-send-answer exchange at a time from the client, with a 300 ms timeout; \
         each run opened {} on average, and {}-{} of them failed per run (refused by b1's \
         kernel once its server is gone). Runs over the bound: {over} of {}.\n",
        total / took.len().max(1),
        failed.iter().min().unwrap_or(&0),
        failed.iter().max().unwrap_or(&0),
        took.len()
    )
    .unwrap();
    let (_, gap_med, _, gap_max) = stats(&gaps);
    writeln!(
        md,
        "Why well under the bound: the kill lands at a random point of the 100 ms check \
         cycle; the next check fails at once (refused), and with one failure pending the \
         agent checks again after `fast_interval` (default interval / 4 = 25 ms), whose \
         failure makes fall = 2 and takes b1 out of the table within a few ms (see the sync \
         benchmark). So failover should take between 25 and 125 ms plus that; the bound \
         allows for checks that time out instead of being refused, and for a slow machine. \
         The figure is the last failure the client saw, so it is only as fine as the client's \
         stream: the longest pause between two new connections in the 300 ms after the kill \
         was {:.0} ms in the median run and {:.0} ms at most.\n",
        ms(gap_med),
        ms(gap_max)
    )
    .unwrap();
    let early: Vec<String> = took
        .iter()
        .filter(|t| t.1 < FAST_INTERVAL)
        .map(|t| format!("{:.0} ms ({}, {} failed)", ms(t.1), t.0, t.2))
        .collect();
    if !early.is_empty() {
        problems.push(format!(
            "runs that ended sooner than the fast check interval allows: {}. The client saw \
             no failed connection after that although b1 cannot have been out of the table \
             yet; not explained (seen now and then on this busy machine)",
            early.join(", ")
        ));
    }
    if !fullnat.is_empty() {
        let n = fullnat.len();
        let opened: usize = fullnat.iter().map(|r| r.0).sum();
        let unopened: usize = fullnat.iter().map(|r| r.1).sum();
        let reset: usize = fullnat.iter().map(|r| r.2).sum();
        let slowest: Vec<String> = fullnat.iter().map(|r| format!("{:.0}", ms(r.3))).collect();
        writeln!(
            md,
            "Full-NAT, {n} runs of the same kill (each new connection given 3 s): {unopened} of \
             {opened} new connections failed to open, and {reset} that b1's server had already \
             accepted was reset by its death (at most the one in flight, per run). A backend's \
             reset to a SYN is kept from the client and its SYN retransmission, a second later, \
             placed on another backend: the slowest new connection after the kill took (ms, per \
             run) {}. The failover-time rows above are l2dsr's and ipip's.\n",
            slowest.join(", ")
        )
        .unwrap();
    }
    for p in &problems {
        writeln!(md, "- problem: {p}").unwrap();
    }
    writeln!(
        md,
        "Bench run took {:.0} s.",
        started.elapsed().as_secs_f64()
    )
    .unwrap();
    print!("{md}");
    if let Ok(path) = std::env::var("GATEWAY_BENCH_OUT") {
        std::fs::write(&path, &md).expect("write bench output");
    }
}
