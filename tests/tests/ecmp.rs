//! Scale-out: two balancers behind a router that spreads flows over them with ECMP, from the
//! routes each balancer's BIRD announces for the agent (`[bgp]`). Both balancers build the
//! same Maglev table from the same config, so a flow reaches the backend that table names
//! whichever balancer the router picks - also when a balancer dies and its flows move.
mod common;

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use common::{agent::*, ecmp::*, scenario::vip, status_at};

/// Hold time of the lab's sessions: a balancer whose BIRD vanishes without a word is
/// withdrawn at most this long after its last keepalive.
const HOLD: Duration = Duration::from_secs(3);
/// `agent_grace` in the failover test.
const GRACE: Duration = Duration::from_secs(1);

fn both_balancers_place_every_flow_by_the_shared_table(mode: &'static str, v6: bool) {
    let test = format!("ecmp::placement::{}", label(mode, v6));
    if !common::privileged(&test) {
        return;
    }
    let _serial = common::serial();
    let lab = common::lab_of("ecmp", 3, 2);
    let pair = Pair::start(&lab, Cfg::new(mode, v6, 3));
    let table = Table::new(&pair.texts[0]);
    let client_addr: IpAddr = if v6 {
        lab.client.ipv6.into()
    } else {
        lab.client.ipv4.into()
    };
    let before = pair.new_flows(&lab);
    let results = connect_all(&lab, v6, 20_000, 300);
    let vip = vip(&lab, v6);
    let mut wrong = Vec::new();
    for (port, got) in &results {
        let want = table.backend(&lab, client_addr, vip, *port);
        if got.as_deref() != Ok(want.as_str()) {
            wrong.push(format!("port {port}: got {got:?}, the table names {want}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of 300 flows:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    let after = pair.new_flows(&lab);
    let carried: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    // With L4 hashing, 300 flows over two paths: each carries far more than a few.
    assert!(
        carried.iter().all(|c| *c >= 60) && carried.iter().sum::<u64>() >= 300,
        "new flows per balancer: {carried:?}"
    );
    eprintln!("{test}: 300 flows, each on the table's backend; per balancer {carried:?}");
}

/// A balancer's agent dies: its guard withdraws the VIP after `agent_grace` (1 s here), the
/// router then sends its flows to the other balancer, where established ones carry on (same
/// table, same backend) and new ones all land right; its data plane removed and the agent
/// back, flows move back and none breaks.
fn a_dead_balancer_is_withdrawn_and_no_flow_breaks(mode: &'static str, v6: bool) {
    let test = format!("ecmp::failover::{}", label(mode, v6));
    if !common::privileged(&test) {
        return;
    }
    let _serial = common::serial();
    let lab = common::lab_of("ecmpf", 3, 2);
    let mut cfg = Cfg::new(mode, v6, 3);
    cfg.bgp_extra = format!("agent_grace = \"{}ms\"", GRACE.as_millis());
    let mut pair = Pair::start(&lab, cfg);
    let table = Table::new(&pair.texts[0]);
    let before = pair.new_flows(&lab);
    let mut held = Held::open(&lab, v6, 24);
    let via_lb2 = pair.new_flows(&lab)[1] - before[1];
    assert!(
        via_lb2 >= 3,
        "only {via_lb2} of 24 connections went through lb2"
    );

    let killed = Instant::now();
    pair.agents[1].take().unwrap().kill();
    // The data plane still forwards: the route stays for the grace (a restart would be
    // back by then), then the guard withdraws it.
    std::thread::sleep(GRACE / 2);
    assert_eq!(lab.router_next_hops(&prefix(&lab, v6)).unwrap().len(), 2);
    wait_next_hops(&lab, v6, 1, GRACE + Duration::from_secs(1) + HOLD);
    let took = killed.elapsed();
    // The bound: a second plus the hold time after the grace. Only the guard can
    // withdraw here (BIRD and the data plane live on), so meeting it shows the guard works.
    assert!(
        took >= GRACE && took <= GRACE + Duration::from_secs(1) + HOLD,
        "withdrawn {took:?} after the agent died (agent_grace {GRACE:?})"
    );
    let path = config_path(&lab, 1);
    gateway_on(
        &lab,
        1,
        &["stop", "--detach", "--config", path.to_str().unwrap()],
    );
    let hops = lab.router_next_hops(&prefix(&lab, v6)).unwrap();
    let lb1: IpAddr = if v6 {
        lab.lbs[0].ipv6.into()
    } else {
        lab.lbs[0].ipv4.into()
    };
    assert_eq!(hops, [lb1]);
    let broken = held.check(&lab);
    assert!(
        broken.is_empty(),
        "{via_lb2} moved to lb1:\n{}",
        broken.join("\n")
    );
    assert_placed(&lab, &table, v6, 30_000, 100);

    pair.restart_agent(&lab, 1);
    wait_next_hops(&lab, v6, 2, Duration::from_secs(10));
    let broken = held.check(&lab);
    assert!(broken.is_empty(), "moving back:\n{}", broken.join("\n"));
    assert_placed(&lab, &table, v6, 31_000, 100);
    eprintln!(
        "{test}: withdrawn {took:?} after the agent died (grace {GRACE:?}); {via_lb2} of 24 \
         held connections moved and back, none broke"
    );
}

/// A hitless restart of one agent (`on_exit = "keep"`): the router never loses the
/// balancer's route, and no connection breaks.
fn a_hitless_restart_keeps_the_route(mode: &'static str, v6: bool) {
    let test = format!("ecmp::hitless::{}", label(mode, v6));
    if !common::privileged(&test) {
        return;
    }
    let _serial = common::serial();
    let lab = common::lab_of("ecmph", 3, 2);
    let mut cfg = Cfg::new(mode, v6, 3);
    cfg.on_exit = "keep";
    let mut pair = Pair::start(&lab, cfg);
    let mut held = Held::open(&lab, v6, 16);
    let vips_before = std::fs::read_to_string(bird_dir(&lab, 1).join("vips.conf")).unwrap();
    let watching = std::sync::atomic::AtomicBool::new(true);
    let fewest = std::thread::scope(|s| {
        let watch = s.spawn(|| {
            let mut fewest = usize::MAX;
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                fewest = fewest.min(lab.router_next_hops(&prefix(&lab, v6)).unwrap().len());
                std::thread::sleep(Duration::from_millis(10));
            }
            fewest
        });
        let status = pair.agents[1].take().unwrap().stop();
        assert!(status.success(), "{status:?}");
        pair.restart_agent(&lab, 1);
        // Past the first announcements and a heartbeat.
        std::thread::sleep(Duration::from_millis(1500));
        watching.store(false, std::sync::atomic::Ordering::Relaxed);
        watch.join().unwrap()
    });
    assert_eq!(fewest, 2, "the router lost a path during the restart");
    let vips_now = std::fs::read_to_string(bird_dir(&lab, 1).join("vips.conf")).unwrap();
    assert_eq!(
        vips_now, vips_before,
        "the restarted agent changed what BIRD announces"
    );
    let broken = held.check(&lab);
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// Every backend of one VIP in maint on one balancer: only that VIP, and only from that
/// balancer, is withdrawn.
fn maint_on_one_balancer_withdraws_only_that_vip_there(mode: &'static str, v6: bool) {
    let test = format!("ecmp::maint::{}", label(mode, v6));
    if !common::privileged(&test) {
        return;
    }
    let _serial = common::serial();
    let lab = common::lab_of("ecmpm", 2, 2);
    // A second service on the other family's VIP.
    let other = lab.vip(!v6);
    let backends: String = lab
        .backends
        .iter()
        .map(|b| {
            let a: IpAddr = if v6 { b.ipv4.into() } else { b.ipv6.into() };
            format!("[[service.backend]]\naddress = \"{a}\"\n")
        })
        .collect();
    let second = format!(
        "\n[[service]]\nname = \"other\"\nvip = \"{other}\"\nport = 80\nprotocol = \"tcp\"\n\
         mode = \"{mode}\"\n[service.health]\nkind = \"none\"\n{backends}"
    );
    let pair = Pair::start_with(&lab, Cfg::new(mode, v6, 2), |_, text| text + &second);
    wait_next_hops(&lab, !v6, 2, Duration::from_secs(10));
    for b in &lab.backends {
        let a: IpAddr = if v6 { b.ipv6.into() } else { b.ipv4.into() };
        gateway_on(&lab, 1, &["backend", "maint", "web", &a.to_string()]);
    }
    wait_next_hops(&lab, v6, 1, Duration::from_secs(5));
    // The other VIP keeps both paths, a while after.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(lab.router_next_hops(&prefix(&lab, !v6)).unwrap().len(), 2);
    assert_eq!(lab.router_next_hops(&prefix(&lab, v6)).unwrap().len(), 1);
    let s = status_at(&lab.lbs[1].netns, &pair.cfg.admin_listen);
    let bgp = s.bgp.expect("bgp status");
    let web = bgp
        .vips
        .iter()
        .find(|v| v.vip == lab.vip(v6).to_string())
        .unwrap();
    assert!(
        !web.announced && web.reason == "no usable backend",
        "{web:?}"
    );
    // Ready again: announced again.
    for b in &lab.backends {
        let a: IpAddr = if v6 { b.ipv6.into() } else { b.ipv4.into() };
        gateway_on(&lab, 1, &["backend", "ready", "web", &a.to_string()]);
    }
    wait_next_hops(&lab, v6, 2, Duration::from_secs(10));
}

/// BIRD dies under a running agent: the router withdraws the balancer, the agent reports
/// the error and keeps balancing; BIRD back, the routes are back and the error clears.
fn a_dead_bird_is_reported_and_recovered(mode: &'static str, v6: bool) {
    let test = format!("ecmp::bird::{}", label(mode, v6));
    if !common::privileged(&test) {
        return;
    }
    let _serial = common::serial();
    let lab = common::lab_of("ecmpb", 3, 2);
    let mut pair = Pair::start(&lab, Cfg::new(mode, v6, 3));
    let table = Table::new(&pair.texts[0]);
    let mut bird = pair.birds[1].take().unwrap();
    bird.kill().unwrap();
    bird.wait().unwrap();
    wait_next_hops(&lab, v6, 1, Duration::from_secs(1) + HOLD);
    assert_placed(&lab, &table, v6, 30_000, 100);
    let admin = pair.cfg.admin_listen.clone();
    lab::wait_for(
        "the agent to report BIRD's death",
        Duration::from_secs(5),
        || {
            let s = status_at(&lab.lbs[1].netns, &admin);
            s.bgp
                .is_some_and(|b| b.errors > 0 && b.last_error.is_some())
        },
    )
    .unwrap();
    assert!(
        pair.agent(1).wait_log("bgp: ", Duration::from_secs(1))
            && pair.agent(1).count_log("BIRD") > 0,
        "{}",
        pair.agent(1).log_text()
    );
    pair.birds[1] = Some(start_balancer_bird(&lab, 1));
    wait_next_hops(&lab, v6, 2, Duration::from_secs(10));
    lab::wait_for("the error to clear", Duration::from_secs(5), || {
        let s = status_at(&lab.lbs[1].netns, &admin);
        s.bgp.is_some_and(|b| b.last_error.is_none())
    })
    .unwrap();
    assert!(
        pair.agent(1)
            .wait_log("BIRD answers again", Duration::from_secs(3)),
        "{}",
        pair.agent(1).log_text()
    );
}

/// The data plane goes while the agent runs (its pinned link removed behind its back): the
/// agent notices within its one-second tick and withdraws the VIP itself.
#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn a_lost_data_plane_is_withdrawn_by_its_agent() {
    if !common::privileged("ecmp::a_lost_data_plane_is_withdrawn_by_its_agent") {
        return;
    }
    let _serial = common::serial();
    let lab = common::lab_of("ecmpd", 2, 2);
    let pair = Pair::start(&lab, Cfg::new("l2dsr", false, 2));
    let lost = Instant::now();
    // --pin-dir, not --config: this removes the link without withdrawing anything.
    let dir = pin_dir_of(&lab, 1);
    gateway_on(
        &lab,
        1,
        &["stop", "--detach", "--pin-dir", dir.to_str().unwrap()],
    );
    wait_next_hops(&lab, false, 1, Duration::from_secs(3));
    let took = lost.elapsed();
    assert!(
        took <= Duration::from_secs(2),
        "withdrawn {took:?} after the link went"
    );
    assert!(
        pair.agent(1)
            .wait_log("not announced: data plane gone", Duration::from_secs(1)),
        "{}",
        pair.agent(1).log_text()
    );
    eprintln!("withdrawn {took:?} after the data plane went");
}

/// `gateway stop --detach --config` on a balancer whose agent is gone withdraws its VIPs
/// first and detaches `withdraw_wait` later: the router has moved the flows before the
/// program goes.
#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn stop_detach_withdraws_before_the_program_goes() {
    if !common::privileged("ecmp::stop_detach_withdraws_before_the_program_goes") {
        return;
    }
    let _serial = common::serial();
    let lab = common::lab_of("ecmps", 2, 2);
    let mut cfg = Cfg::new("l2dsr", false, 2);
    cfg.bgp_extra = "withdraw_wait = \"1s\"".into();
    let mut pair = Pair::start(&lab, cfg);
    pair.agents[1].take().unwrap().kill();
    let path = config_path(&lab, 1);
    let (withdrawn, stopped) = std::thread::scope(|s| {
        let watch = s.spawn(|| {
            wait_next_hops(&lab, false, 1, Duration::from_secs(5));
            Instant::now()
        });
        let out = gateway_on(
            &lab,
            1,
            &["stop", "--detach", "--config", path.to_str().unwrap()],
        );
        assert!(out.contains("withdrew every VIP"), "{out}");
        (watch.join().unwrap(), Instant::now())
    });
    assert!(!pin_dir_of(&lab, 1).join("link").exists(), "still attached");
    let ahead = stopped.saturating_duration_since(withdrawn);
    assert!(
        ahead >= Duration::from_millis(800),
        "the route went only {ahead:?} before the program"
    );
}

/// Full-NAT behind ECMP: each balancer announces its own SNAT addresses (the router learns
/// each with that balancer as its only next hop, which is where the backends' answers must
/// go), both place every flow by the shared table, and the router loses a balancer's SNAT
/// addresses with its VIP when its data plane goes.
#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn fullnat_balancers_announce_their_own_snat_addresses() {
    let test = "ecmp::fullnat_balancers_announce_their_own_snat_addresses";
    if !common::privileged(test) {
        return;
    }
    let _serial = common::serial();
    let lab = common::lab_of("ecmpn", 3, 2);
    lab.make_fullnat().expect("full-NAT lab");
    let pair = Pair::start(&lab, Cfg::new("fullnat", false, 3));
    let hops_of = |prefix: &str, n: usize| {
        let start = Instant::now();
        loop {
            let hops = lab.router_next_hops(prefix).unwrap();
            if hops.len() == n || start.elapsed() > Duration::from_secs(10) {
                return hops;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    for i in 0..2 {
        let (a4, a6) = lab::snat_addrs(i);
        let lb = &lab.lbs[i];
        assert_eq!(
            hops_of(&format!("{a4}/32"), 1),
            [IpAddr::from(lb.ipv4)],
            "the router's route to lb{}'s SNAT address {a4}",
            i + 1
        );
        let six = hops_of(&format!("{a6}/128"), 1);
        let other = &lab.lbs[1 - i];
        assert!(
            six.len() == 1 && six[0] != IpAddr::from(other.ipv6),
            "the router's route to lb{}'s SNAT address {a6}: {six:?}",
            i + 1
        );
    }

    let table = Table::new(&pair.texts[0]);
    let before = pair.new_flows(&lab);
    assert_placed(&lab, &table, false, 20_000, 200);
    let after = pair.new_flows(&lab);
    let carried: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert!(
        carried.iter().all(|c| *c >= 40),
        "new flows per balancer: {carried:?}"
    );

    // lb2's data plane goes: its agent withdraws the VIP and its SNAT addresses.
    let dir = pin_dir_of(&lab, 1);
    gateway_on(
        &lab,
        1,
        &["stop", "--detach", "--pin-dir", dir.to_str().unwrap()],
    );
    let (a4, _) = lab::snat_addrs(1);
    assert_eq!(
        hops_of(&format!("{a4}/32"), 0),
        Vec::<IpAddr>::new(),
        "lb2's SNAT address after its data plane went"
    );
    wait_next_hops(&lab, false, 1, Duration::from_secs(3));
    eprintln!(
        "{test}: SNAT addresses routed to their balancers; 200 flows placed; per balancer {carried:?}"
    );
}

macro_rules! variants {
    ($name:ident) => {
        mod $name {
            #[test]
            #[ignore = "privileged: run by `cargo xtask test`"]
            fn l2dsr_v4() {
                super::$name("l2dsr", false);
            }
            #[test]
            #[ignore = "privileged: run by `cargo xtask test`"]
            fn l2dsr_v6() {
                super::$name("l2dsr", true);
            }
            #[test]
            #[ignore = "privileged: run by `cargo xtask test`"]
            fn ipip_v4() {
                super::$name("ipip", false);
            }
            #[test]
            #[ignore = "privileged: run by `cargo xtask test`"]
            fn ipip_v6() {
                super::$name("ipip", true);
            }
        }
    };
}

variants!(both_balancers_place_every_flow_by_the_shared_table);
variants!(a_dead_balancer_is_withdrawn_and_no_flow_breaks);
variants!(a_hitless_restart_keeps_the_route);
variants!(maint_on_one_balancer_withdraws_only_that_vip_there);
variants!(a_dead_bird_is_reported_and_recovered);
