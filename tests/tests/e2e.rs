//! End to end: the real `gateway` binary with a real config in a namespace lab, real TCP and
//! UDP from the client namespace to the VIP, answered by the backends directly (l2dsr) or
//! after decapsulation (ipip), over IPv4 and IPv6.
mod common;

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use common::agent::*;
use lab::{Lab, SERVER_PORT};

const TIMEOUT: Duration = Duration::from_millis(500);

fn vip(lab: &Lab, v6: bool) -> SocketAddr {
    SocketAddr::new(lab.vip(v6), SERVER_PORT)
}

/// Runs `f` in the client namespace.
fn client<T: Send + 'static>(lab: &Lab, f: impl FnOnce() -> T + Send + 'static) -> T {
    common::in_netns(&lab.client.netns, f)
        .join()
        .expect("client thread")
}

/// `n` new connections from source ports `first..`: backend name -> count, and failures.
fn spread(lab: &Lab, v6: bool, first: u16, n: u16) -> (BTreeMap<String, usize>, usize) {
    let vip = vip(lab, v6);
    client(lab, move || {
        let mut seen = BTreeMap::new();
        let mut failed = 0;
        for p in first..first + n {
            match tcp_name(vip, p, TIMEOUT) {
                Ok(name) => *seen.entry(name).or_insert(0) += 1,
                Err(e) => {
                    failed += 1;
                    eprintln!("connection from port {p}: {e}");
                }
            }
        }
        (seen, failed)
    })
}

/// Fills the neighbour caches of client, balancer and backends (the first IPv6 exchanges
/// wait for neighbour discovery longer than the tests' short timeouts).
fn warm_up(lab: &Lab, v6: bool) {
    let vip = vip(lab, v6);
    let ok = client(lab, move || {
        (0..30)
            .filter(|i| tcp_name(vip, 60_000 + i, Duration::from_secs(3)).is_ok())
            .count()
    });
    assert!(ok > 0, "nothing answered during warm-up");
}

fn assert_shares(seen: &BTreeMap<String, usize>, weights: &[(&str, f64)], tolerance: f64) {
    let total: usize = seen.values().sum();
    let wsum: f64 = weights.iter().map(|w| w.1).sum();
    for (name, w) in weights {
        let want = total as f64 * w / wsum;
        let got = *seen.get(*name).unwrap_or(&0) as f64;
        let err = (got - want).abs() / want;
        assert!(
            err <= tolerance,
            "{name}: {got} of {total}, want {want:.0} ({:.1}% off): {seen:?}",
            err * 100.0
        );
    }
}

/// Deterministic source ports make the placement reproducible: the same ports hash to the
/// same slots on every run, so a pass or a failure is never luck of the draw.
const CONNECTIONS: u16 = 12_000;

fn distribution(mode: &'static str, v6: bool) {
    let name = format!("distribution_{mode}_{}", if v6 { "v6" } else { "v4" });
    if !common::privileged(&name) {
        return;
    }
    let lab = common::lab("d", 3);
    let mut cfg = Cfg::new(mode, v6, 3);
    let agent = Agent::start(&lab, &cfg.render(&lab));
    assert!(
        agent.wait_log_count("UP after", 3, Duration::from_secs(10)),
        "{}",
        agent.log_text()
    );
    warm_up(&lab, v6);

    let (seen, failed) = spread(&lab, v6, 20_000, CONNECTIONS);
    println!("{name} equal weights: {seen:?}, {failed} failed");
    assert_eq!(failed, 0);
    assert_shares(&seen, &[("b1", 1.0), ("b2", 1.0), ("b3", 1.0)], 0.05);

    cfg.backends = vec![
        Some("weight = 100".into()),
        Some("weight = 200".into()),
        Some("weight = 300".into()),
    ];
    agent.reload(&cfg.render(&lab));
    let (seen, failed) = spread(&lab, v6, 40_000, CONNECTIONS);
    println!("{name} weights 1:2:3: {seen:?}, {failed} failed");
    assert_eq!(failed, 0);
    assert_shares(&seen, &[("b1", 1.0), ("b2", 2.0), ("b3", 3.0)], 0.05);
    assert!(agent.stop().success());
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn distribution_l2dsr_v4() {
    distribution("l2dsr", false);
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn distribution_l2dsr_v6() {
    distribution("l2dsr", true);
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn distribution_ipip_v4() {
    distribution("ipip", false);
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn distribution_ipip_v6() {
    distribution("ipip", true);
}
