//! The agent over in-memory maps ([`FakeDataplane`]) and a fixed neighbour table
//! ([`FixedHops`]): API changes, failed writes, reloads, slow start and adoption, without a
//! kernel.
//!
//! Probed backends get a check in the agent's prober, whose tasks would probe the backends'
//! (test-net) addresses; these tests stop every check right after the agent starts and
//! never yield to the runtime before that, so nothing is sent. Probe results are fed to
//! the agent by hand (`verdict`).
use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use gateway_common::{BACKEND_DOWN, BACKEND_DRAIN, BACKEND_UP};

use super::*;
use crate::{
    config::AdminState,
    health::{ProbeResult, Transition},
    overrides::BackendChange,
    testing::{FakeDataplane, FixedHops},
};

const B1: &str = "198.18.0.11";
const B2: &str = "198.18.0.12";
const B3: &str = "198.18.0.13";

type TestAgent = Agent<FakeDataplane, FixedHops>;

/// A scratch directory for one test's config and state files.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("gateway-agent-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }

    fn config(&self) -> PathBuf {
        self.0.join("gateway.toml")
    }

    /// Writes the config file: one l2dsr service `web` with `service` extra lines (health
    /// included) and the given backends (`address` plus extra lines each).
    fn write(&self, conntrack: u32, service: &str, backends: &[(&str, &str)]) {
        let mut text = format!(
            "[dataplane]\ninterface = \"eth0\"\nconntrack_size = {conntrack}\n\
             [admin]\nstate_file = \"{}\"\n\
             [[service]]\nname = \"web\"\nvip = \"198.18.1.1\"\nport = 80\n\
             protocol = \"tcp\"\nmode = \"l2dsr\"\n{service}\n",
            self.0.join("overrides.json").display()
        );
        for (addr, extra) in backends {
            text += &format!("[[service.backend]]\naddress = \"{addr}\"\n{extra}\n");
        }
        std::fs::write(self.config(), text).unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const UNPROBED: &str = "[service.health]\nkind = \"none\"";
const PROBED: &str = "slowstart = \"20s\"\n[service.health]\nkind = \"tcp\"\ninterval = \"1s\"";

fn hops() -> FixedHops {
    let mut h = FixedHops::default();
    for (i, b) in [B1, B2, B3].iter().enumerate() {
        h.macs.insert(b.parse().unwrap(), [2, 0, 0, 0, 0, i as u8]);
    }
    h
}

/// An agent started from the scratch config over `dp` and `hops`, first plan applied.
fn start(s: &Scratch, dp: FakeDataplane, hops: FixedHops) -> TestAgent {
    let config = Config::load(&s.config()).unwrap();
    let dp = FakeDataplane {
        options: load_options(&config),
        ..dp
    };
    let mut a = Agent::new(config, s.config(), dp, hops);
    for id in a.by_check.keys() {
        a.prober.remove(*id);
    }
    a.resolve();
    a.try_replan("start").unwrap();
    a
}

/// The default test agent: two unprobed backends.
fn agent(s: &Scratch) -> TestAgent {
    s.write(100_000, UNPROBED, &[(B1, ""), (B2, "")]);
    start(s, FakeDataplane::default(), hops())
}

/// `[bgp]` towards one neighbour, announcing at once, with BIRD's files in `bird_dir`.
fn bgp_section(bird_dir: &std::path::Path) -> String {
    format!(
        "[bgp]\nlocal_as = 65010\nrouter_id = \"198.18.0.2\"\nannounce_after = \"0s\"\n\
         bird_dir = \"{}\"\n[[bgp.neighbor]]\naddress = \"198.18.0.1\"\nas = 65000\n",
        bird_dir.display()
    )
}

/// A full-NAT flow's forward entry: `client:cport` to the VIP 198.18.1.1:80, mapped to
/// `snat:sport` towards B1, established, last seen at second `seen`.
fn nat_flow(
    client: &str,
    cport: u16,
    snat: &str,
    sport: u16,
    seen: u32,
) -> (gateway_common::FlowKey, gateway_common::NatValue) {
    let a = |t: &str| crate::model::addr16(ip(t));
    let key = gateway_common::FlowKey {
        src: a(client),
        dst: a("198.18.1.1"),
        sport_be: cport.to_be(),
        dport_be: 80u16.to_be(),
        proto: gateway_common::PROTO_TCP,
        family: gateway_common::FAMILY_V4,
        _pad: [0; 2],
    };
    let fwd = gateway_common::NatValue {
        src: a(snat),
        dst: a(B1),
        sport_be: sport.to_be(),
        dport_be: 80u16.to_be(),
        backend: 1,
        state: gateway_common::NAT_TCP_ESTABLISHED,
        dir: gateway_common::NAT_DIR_FORWARD,
        seen,
        ..Default::default()
    };
    (key, fwd)
}

/// What BIRD was last given (`vips.conf` in `bird_dir`), once the speaker's thread has
/// handled what it was sent.
fn announced(a: &TestAgent, bird_dir: &std::path::Path) -> Vec<IpAddr> {
    a.speaker.as_ref().unwrap().barrier();
    let text = std::fs::read_to_string(bird_dir.join("vips.conf")).unwrap_or_default();
    crate::bgp::announced_in(&text)
}

fn ip(a: &str) -> IpAddr {
    a.parse().unwrap()
}

/// The state byte of the backend at `addr` in the maps, if it is there.
fn in_maps(a: &TestAgent, addr: &str) -> Option<u8> {
    let key = crate::model::addr16(ip(addr));
    a.dp.maps
        .backends
        .values()
        .find(|b| b.addr == key)
        .map(|b| b.state)
}

/// How many slots of the service's live table name the backend at `addr`.
fn slots_in_maps(a: &TestAgent, addr: &str) -> usize {
    let key = crate::model::addr16(ip(addr));
    let id =
        a.dp.maps
            .backends
            .iter()
            .find(|(_, b)| b.addr == key)
            .map(|(id, _)| *id);
    let (svc, _) = a.dp.maps.services.iter().next().expect("a service");
    let table = a.dp.maps.table_of(svc).unwrap();
    table.iter().filter(|s| Some(**s) == id).count()
}

/// The plan's view of the backend at `addr`.
fn planned<'a>(a: &'a TestAgent, addr: &str) -> &'a plan::BackendPlan {
    let p = a.last_plan.as_ref().expect("planned");
    p.services[0]
        .backends
        .iter()
        .find(|b| b.address == ip(addr))
        .expect("backend planned")
}

/// Feeds the agent a probe verdict for the backend at `addr` that changes its state, and
/// replans as the loop would.
fn verdict(a: &mut TestAgent, addr: &str, up: bool) {
    let (&id, _) = a
        .by_check
        .iter()
        .find(|(_, k)| k.addr == ip(addr))
        .expect("a probed backend");
    let result = if up {
        ProbeResult::pass(Duration::from_millis(1), "connected")
    } else {
        ProbeResult::fail(Duration::from_millis(1), "connection refused")
    };
    let ev = health::Event {
        id,
        target: SocketAddr::new(ip(addr), 80),
        result,
        transition: Some(Transition { up, after: 2 }),
        up,
        passive: false,
    };
    assert!(a.on_event(ev), "the verdict changes the backend's health");
    a.replan("health change");
}

#[tokio::test]
async fn an_api_change_reaches_the_maps_and_survives_in_the_state_file() {
    let s = Scratch::new("change");
    let mut a = agent(&s);
    assert_eq!(in_maps(&a, B1), Some(BACKEND_UP));
    let c = a
        .api_change("web", ip(B1), BackendChange::State(AdminState::Drain))
        .unwrap();
    assert_eq!((c.from.as_str(), c.to.as_str()), ("ready", "drain"));
    assert_eq!(in_maps(&a, B1), Some(BACKEND_DRAIN));
    assert_eq!(in_maps(&a, B2), Some(BACKEND_UP));
    let saved = std::fs::read_to_string(s.0.join("overrides.json")).unwrap();
    assert!(saved.contains("drain"), "{saved}");
    // Back to the file's value: the override goes.
    a.api_change("web", ip(B1), BackendChange::State(AdminState::Ready))
        .unwrap();
    assert_eq!(in_maps(&a, B1), Some(BACKEND_UP));
    assert!(a.overrides.get("web", ip(B1)).is_none());
}

/// The one rule for a failed map write: the API change is undone and answered with an
/// error, the failure counted and a retry planned; the agent goes on.
#[tokio::test]
async fn an_api_change_that_cannot_be_written_is_undone() {
    let s = Scratch::new("fail");
    let mut a = agent(&s);
    a.dp.fail_writes = true;
    let r = a.api_change("web", ip(B1), BackendChange::State(AdminState::Drain));
    let e = r.unwrap_err();
    assert!(matches!(e, admin::ChangeError::Apply(_)), "{e:?}");
    // The answer names what failed and why, once each.
    let text = crate::error::Chain(&e).to_string();
    assert!(text.ends_with(": refused (fail_writes)"), "{text}");
    assert_eq!(text.matches("fail_writes").count(), 1, "{text}");
    assert_eq!(a.map_write_errors, 1);
    assert!(a.retry_at.is_some());
    assert!(a.overrides.get("web", ip(B1)).is_none());
    assert_eq!(a.config.services[0].backends[0].state, AdminState::Ready);
    assert_eq!(in_maps(&a, B1), Some(BACKEND_UP));
    // A refused change is not a write failure.
    let r = a.api_change("nope", ip(B1), BackendChange::Weight(5));
    assert!(matches!(r, Err(admin::ChangeError::Refused(_))), "{r:?}");
    assert_eq!(a.map_write_errors, 1);
    // Once the maps take writes again, the retry rewrites them and changes work.
    a.dp.fail_writes = false;
    a.replan("retry after a failed map write");
    a.api_change("web", ip(B1), BackendChange::State(AdminState::Drain))
        .unwrap();
    assert_eq!(in_maps(&a, B1), Some(BACKEND_DRAIN));
}

/// A reload adds and changes backends in the maps; an invalid file changes nothing and is
/// counted; a load-time setting keeps its running value.
#[tokio::test]
async fn a_reload_applies_a_valid_file_and_keeps_the_running_config_on_a_bad_one() {
    let s = Scratch::new("reload");
    let mut a = agent(&s);
    assert_eq!(in_maps(&a, B3), None);
    s.write(
        100_000,
        UNPROBED,
        &[(B1, ""), (B2, "weight = 300"), (B3, "")],
    );
    a.reload_counted().unwrap();
    assert_eq!(in_maps(&a, B3), Some(BACKEND_UP));
    assert!(slots_in_maps(&a, B3) > 0);
    assert_eq!(planned(&a, B2).weight, 300);
    assert!(slots_in_maps(&a, B2) > 2 * slots_in_maps(&a, B1));
    assert_eq!(a.hops.flushes, 1, "a reload reads routes again");

    // A broken file: an error naming the file, nothing changes.
    let before = a.dp.maps.clone();
    std::fs::write(
        s.config(),
        "[dataplane]\ninterface = \"eth0\"\nx = \"\u{e9}\n",
    )
    .unwrap();
    let e = a.reload_counted().unwrap_err();
    assert!(e.contains("gateway.toml"), "{e}");
    assert_eq!((a.reloads_ok, a.reloads_error), (1, 1));
    assert_eq!(a.dp.maps, before);
    assert_eq!(a.config.services[0].backends.len(), 3);

    // A load-time setting waits for a restart; the rest of the file applies.
    s.write(200_000, UNPROBED, &[(B1, ""), (B2, "weight = 300")]);
    a.reload_counted().unwrap();
    assert_eq!(a.config.dataplane.conntrack_size, 100_000);
    assert_eq!(a.file_config.dataplane.conntrack_size, 200_000);
    assert_eq!(in_maps(&a, B3), None, "the removed backend is cleared");
}

/// API overrides survive a reload of an unchanged file, and yield to the file when it
/// changes the same field.
#[tokio::test]
async fn an_override_survives_a_reload_until_the_file_changes_its_field() {
    let s = Scratch::new("override");
    let mut a = agent(&s);
    a.api_change("web", ip(B1), BackendChange::State(AdminState::Drain))
        .unwrap();
    a.api_change("web", ip(B2), BackendChange::Weight(7))
        .unwrap();
    a.reload_counted().unwrap();
    assert_eq!(in_maps(&a, B1), Some(BACKEND_DRAIN));
    assert_eq!(planned(&a, B2).weight, 7);
    // The file now says something about B1's state: the file wins; B2 keeps its override.
    s.write(100_000, UNPROBED, &[(B1, "state = \"maint\""), (B2, "")]);
    a.reload_counted().unwrap();
    assert!(a.overrides.get("web", ip(B1)).is_none());
    assert_eq!(planned(&a, B1).admin, AdminState::Maint);
    assert_eq!(slots_in_maps(&a, B1), 0);
    assert_eq!(planned(&a, B2).weight, 7);
    let saved = std::fs::read_to_string(s.0.join("overrides.json")).unwrap();
    assert!(!saved.contains("drain"), "{saved}");
}

/// A backend that comes back after being down starts at a fraction of its weight and
/// reaches it in steps; one that was never up does not.
#[tokio::test]
async fn a_recovered_backend_ramps_up_over_its_slow_start() {
    let s = Scratch::new("slowstart");
    s.write(
        100_000,
        PROBED,
        &[(B1, "weight = 100"), (B2, "weight = 100")],
    );
    let mut a = start(&s, FakeDataplane::default(), hops());
    // Probed backends start down until their first verdict; the first rise is no recovery.
    assert_eq!(in_maps(&a, B1), Some(BACKEND_DOWN));
    verdict(&mut a, B1, true);
    verdict(&mut a, B2, true);
    assert_eq!(planned(&a, B1).effective_weight, 100);
    assert!(a.next_step.is_none());
    let full = slots_in_maps(&a, B1);

    verdict(&mut a, B1, false);
    assert_eq!(in_maps(&a, B1), Some(BACKEND_DOWN));
    assert_eq!(slots_in_maps(&a, B1), 0);
    verdict(&mut a, B1, true);
    let ramp = planned(&a, B1).effective_weight;
    assert!((1..50).contains(&ramp), "effective weight {ramp}");
    assert!(slots_in_maps(&a, B1) < full / 2);
    assert!(a.next_step.is_some(), "a slow-start step is scheduled");

    // The slow start over: full weight, no more steps.
    a.started -= Duration::from_secs(21);
    a.replan("slow start step");
    assert_eq!(planned(&a, B1).effective_weight, 100);
    assert_eq!(slots_in_maps(&a, B1), full);
    assert!(a.next_step.is_none());
}

/// A restarted agent adopts the maps it finds: same ids, each backend's last health, the
/// pinned MAC while its next hop is being learnt - and its first plan writes nothing.
#[tokio::test]
async fn an_adopting_agent_changes_nothing_that_works() {
    let s = Scratch::new("adopt");
    s.write(100_000, PROBED, &[(B1, ""), (B2, "")]);
    let mut first = start(&s, FakeDataplane::default(), hops());
    verdict(&mut first, B1, true);
    let maps = first.dp.maps.clone();
    assert_eq!(in_maps(&first, B1), Some(BACKEND_UP));
    assert_eq!(in_maps(&first, B2), Some(BACKEND_DOWN));
    drop(first);

    // The new agent does not know B1's next hop yet.
    let mut hops = hops();
    hops.macs.remove(&ip(B1));
    let dp = FakeDataplane {
        maps: maps.clone(),
        adopted: true,
        ..FakeDataplane::default()
    };
    let a = start(&s, dp, hops);
    assert_eq!(a.table_rebuilds, 0, "the first plan wrote nothing");
    assert_eq!(a.dp.maps, maps);
    assert!(a.records[&BackendKey::new("web", ip(B1))].up);
    assert!(!a.records[&BackendKey::new("web", ip(B2))].up);
    assert_eq!(planned(&a, B1).effective_weight, 100, "no slow start");
}

/// Health and next-hop changes are paced by the cost of the last replan: one that comes
/// too soon waits (its reason kept), one after the pause is planned at once.
#[tokio::test]
async fn changes_of_facts_are_paced_by_the_last_replans_cost() {
    let s = Scratch::new("paced");
    let mut a = agent(&s);
    let rebuilds = a.table_rebuilds;
    a.hops.macs.insert(ip(B1), [2, 0, 0, 0, 0, 9]);
    assert!(a.resolve(), "the MAC changed");
    // As if the last replan had just ended after taking a minute.
    a.last_replan = Some((Instant::now(), Duration::from_secs(60)));
    let mut pending = None;
    a.facts_changed(&mut pending, "next hops changed");
    a.facts_changed(&mut pending, "health change");
    assert_eq!(pending, Some("next hops changed"));
    assert_eq!(a.table_rebuilds, rebuilds, "nothing planned yet");
    // The pause is over.
    a.last_replan = Some((
        Instant::now() - Duration::from_secs(2),
        Duration::from_secs(1),
    ));
    a.facts_changed(&mut pending, "health change");
    assert_eq!(pending, None);
    assert_eq!(a.table_rebuilds, rebuilds + 1);
    let mac =
        a.dp.maps
            .backends
            .values()
            .find(|b| b.addr == crate::model::addr16(ip(B1)));
    assert_eq!(mac.unwrap().mac, [2, 0, 0, 0, 0, 9]);
}

/// With `[bgp]`, the SNAT addresses are announced while the data plane forwards, with or
/// without a usable backend (they carry the answers of flows already mapped), and
/// withdrawn with the VIPs when the data plane is gone.
#[tokio::test]
async fn snat_addresses_are_announced_while_the_data_plane_forwards() {
    let s = Scratch::new("bgp-snat");
    let bird_dir = s.0.join("bird");
    s.write(
        100_000,
        &format!("{UNPROBED}\n{}", bgp_section(&bird_dir)),
        &[(B1, "")],
    );
    let text = std::fs::read_to_string(s.config()).unwrap().replace(
        "conntrack_size = 100000\n",
        "conntrack_size = 100000\nsnat_v4 = [\"198.18.0.100\"]\nsnat_v6 = [\"fd00::100\"]\n",
    );
    std::fs::write(s.config(), text).unwrap();
    std::fs::create_dir_all(&bird_dir).unwrap();
    let _bird = crate::testing::FakeBird::start(&bird_dir.join("bird.ctl"));
    let mut a = start(&s, FakeDataplane::default(), hops());
    let announced = |a: &TestAgent| announced(a, &bird_dir);
    let (snat4, snat6, vip) = (ip("198.18.0.100"), ip("fd00::100"), ip("198.18.1.1"));
    a.announce(true);
    assert_eq!(announced(&a), [snat4, vip, snat6]);

    a.api_change("web", ip(B1), BackendChange::State(AdminState::Maint))
        .unwrap();
    assert_eq!(
        announced(&a),
        [snat4, snat6],
        "no backend: only the VIP goes"
    );

    a.dp.gone = true;
    a.announce(true);
    assert!(
        announced(&a).is_empty(),
        "a data plane that is gone answers nothing"
    );
    a.dp.gone = false;
    a.announce(false);
    assert!(announced(&a).is_empty(), "maps not synced");
    a.announce(true);
    assert_eq!(announced(&a), [snat4, snat6]);

    // Removed from the config while a flow uses it: announced until the flow ends.
    let now = crate::sys::monotonic_secs();
    let flow = gateway_common::NatValue {
        src: crate::model::addr16(snat4),
        dir: gateway_common::NAT_DIR_FORWARD,
        state: gateway_common::NAT_TCP_ESTABLISHED,
        seen: now,
        ..Default::default()
    };
    let key = gateway_common::FlowKey {
        family: gateway_common::FAMILY_V4,
        ..Default::default()
    };
    a.dp.nat = vec![(key, flow)];
    let text = std::fs::read_to_string(s.config()).unwrap();
    std::fs::write(
        s.config(),
        text.replace("snat_v4 = [\"198.18.0.100\"]\n", ""),
    )
    .unwrap();
    a.reload().unwrap();
    assert_eq!(announced(&a), [snat4, snat6], "draining: still announced");
    a.dp.nat[0].1.seen = now.wrapping_sub(7201);
    assert!(a.look_at_snat_draining());
    a.replan("test");
    assert_eq!(announced(&a), [snat6], "drained: withdrawn");
}

/// With `[bgp]`, the VIP is announced while a backend is usable and withdrawn when none
/// is (here: both put in maint through the API), through the files BIRD reads and a
/// `configure` on its control socket.
#[tokio::test]
async fn the_vip_is_announced_while_a_backend_is_usable() {
    let s = Scratch::new("bgp");
    let bird_dir = s.0.join("bird");
    s.write(
        100_000,
        &format!("{UNPROBED}\n{}", bgp_section(&bird_dir)),
        &[(B1, ""), (B2, "")],
    );
    std::fs::create_dir_all(&bird_dir).unwrap();
    let bird = crate::testing::FakeBird::start(&bird_dir.join("bird.ctl"));
    let mut a = start(&s, FakeDataplane::default(), hops());
    let announced = |a: &TestAgent| announced(a, &bird_dir);
    let view = |a: &TestAgent| a.speaker.as_ref().unwrap().view();
    a.announce(true);
    assert_eq!(announced(&a), [ip("198.18.1.1")]);
    assert_eq!(bird.count(), 1);

    a.api_change("web", ip(B1), BackendChange::State(AdminState::Maint))
        .unwrap();
    assert_eq!(announced(&a), [ip("198.18.1.1")], "B2 still serves");
    a.api_change("web", ip(B2), BackendChange::State(AdminState::Maint))
        .unwrap();
    assert!(announced(&a).is_empty());
    assert_eq!(bird.count(), 2);
    assert_eq!(
        view(&a).states[&ip("198.18.1.1")].servable,
        Err(crate::bgp::Unservable::NoBackend)
    );
    a.api_change("web", ip(B2), BackendChange::State(AdminState::Ready))
        .unwrap();
    assert_eq!(announced(&a), [ip("198.18.1.1")]);
    assert_eq!(bird.count(), 3);

    // The data plane stops forwarding (interface down, program detached): withdrawn at
    // the speaker's next turn, announced again when it is back.
    a.dp.gone = true;
    a.announce(true);
    assert!(announced(&a).is_empty());
    assert_eq!(
        view(&a).states[&ip("198.18.1.1")].servable,
        Err(crate::bgp::Unservable::DataPlaneGone)
    );
    a.dp.gone = false;
    a.announce(true);
    assert_eq!(announced(&a), [ip("198.18.1.1")]);

    // BIRD dies: the speaker's next look (once a second) fails and counts; once BIRD is
    // back it is told again.
    drop(bird);
    std::thread::sleep(crate::bgp::worker::TICK + Duration::from_millis(200));
    a.announce(true);
    announced(&a);
    let v = view(&a);
    // The failed look, and maybe a retry: each attempt counts.
    assert!(v.errors >= 1, "{:?}", v.last_error);
    assert!(
        v.last_error.as_deref().unwrap_or("").contains("bird.ctl"),
        "{v:?}"
    );
    assert!(!v.in_step);
    let bird = crate::testing::FakeBird::start(&bird_dir.join("bird.ctl"));
    a.announce(true);
    announced(&a);
    assert!(view(&a).in_step);
    assert_eq!(bird.count(), 1, "told again: configure");
}

/// An agent on fresh maps announces nothing until every probed backend has had its first
/// verdict: before that its table may hold fewer backends than its peers' do.
#[tokio::test]
async fn a_fresh_agent_announces_once_every_backend_was_checked() {
    let s = Scratch::new("bgp-checked");
    let bird_dir = s.0.join("bird");
    s.write(
        100_000,
        &format!(
            "{}[service.health]\nkind = \"tcp\"\ninterval = \"1s\"",
            bgp_section(&bird_dir)
        ),
        &[(B1, ""), (B2, "")],
    );
    std::fs::create_dir_all(&bird_dir).unwrap();
    let _bird = crate::testing::FakeBird::start(&bird_dir.join("bird.ctl"));
    let mut a = start(&s, FakeDataplane::default(), hops());
    let announced = |a: &TestAgent| announced(a, &bird_dir);
    let why = |a: &TestAgent| a.speaker.as_ref().unwrap().view().states[&ip("198.18.1.1")].servable;
    a.announce(true);
    assert!(announced(&a).is_empty());
    assert_eq!(why(&a), Err(crate::bgp::Unservable::NotChecked));
    verdict(&mut a, B1, true);
    assert!(announced(&a).is_empty(), "B2 has not been checked yet");
    // B2's first probe fails: it stays down, and now every backend has a verdict.
    let (&id, _) = a.by_check.iter().find(|(_, k)| k.addr == ip(B2)).unwrap();
    a.on_event(health::Event {
        id,
        target: SocketAddr::new(ip(B2), 80),
        result: ProbeResult::fail(Duration::from_millis(1), "connection refused"),
        transition: None,
        up: false,
        passive: false,
    });
    a.replan("health change");
    assert_eq!(announced(&a), [ip("198.18.1.1")]);
}

#[tokio::test]
async fn drained_slots_that_flows_used_are_changed_and_settle_after_the_idle_timeout() {
    let s = Scratch::new("settle");
    let mut a = agent(&s);
    let (key, value) =
        a.dp.maps
            .services
            .iter()
            .next()
            .map(|(k, v)| (*k, *v))
            .unwrap();
    // Flows used every slot (the program marks them as packets arrive).
    for i in value.table_offset..value.table_offset + value.table_size {
        let slot = a.dp.maps.tables.get_mut(&i).unwrap();
        *slot = gateway_common::Slot::used(slot.cur());
    }
    a.dp.maps.now = 1000;
    a.api_change("web", ip(B1), BackendChange::State(AdminState::Drain))
        .unwrap();
    let b1_slots =
        a.dp.maps
            .slots_of(&key)
            .unwrap()
            .iter()
            .filter(|s| s.prev() != 0)
            .count();
    assert!(b1_slots > 1000, "{b1_slots} slots changed");
    // Within the idle timeout (1h by default) nothing settles; the count is reported.
    a.dp.maps.now = 1000 + 3599;
    a.settle_slots();
    assert_eq!(a.changed_slots.get(&key), Some(&(b1_slots as u32)));
    assert_eq!(
        a.snapshot(false).unwrap().services[0].changed_slots,
        b1_slots as u32
    );
    // An hour after the change they all settle, keeping their (new) backends.
    let before = a.dp.maps.table_of(&key).unwrap();
    a.dp.maps.now = 1000 + 3600;
    a.settle_slots();
    assert_eq!(a.changed_slots.get(&key), Some(&0));
    assert_eq!(a.dp.maps.table_of(&key).unwrap(), before);
    assert!(
        a.dp.maps
            .slots_of(&key)
            .unwrap()
            .iter()
            .all(|s| s.prev() == 0 && s.seen != 0)
    );
}

/// A SNAT address removed from the config by a reload drains: its live flows' answers
/// still go to the full-NAT program (LOCAL_SNAT) while NAT_POOL no longer offers it, and it
/// is let go once no unexpired mapping uses it.
#[tokio::test]
async fn a_removed_snat_address_drains_until_its_flows_end() {
    use gateway_common::LOCAL_SNAT;
    let s = Scratch::new("snat-drain");
    s.write(100_000, UNPROBED, &[(B1, "")]);
    let with = |list: &str| {
        let text = std::fs::read_to_string(s.config()).unwrap();
        let text = match text.find("snat_v4 = ") {
            Some(at) => {
                let end = at + text[at..].find('\n').unwrap();
                format!("{}snat_v4 = [{list}]{}", &text[..at], &text[end..])
            }
            None => text.replace(
                "conntrack_size = 100000\n",
                &format!("conntrack_size = 100000\nsnat_v4 = [{list}]\n"),
            ),
        };
        std::fs::write(s.config(), text).unwrap();
    };
    with("\"198.18.0.100\", \"198.18.0.101\"");
    let mut a = start(&s, FakeDataplane::default(), hops());
    let snat_bit = |a: &TestAgent, t: &str| {
        a.dp.maps
            .local
            .get(&crate::model::local_key(ip(t)))
            .is_some_and(|w| w & LOCAL_SNAT != 0)
    };
    assert!(snat_bit(&a, "198.18.0.100") && snat_bit(&a, "198.18.0.101"));
    assert_eq!(a.dp.maps.nat_pool.v4_count, 2);
    // A live flow on .100 and one on .101.
    let now = crate::sys::monotonic_secs();
    a.dp.nat = vec![
        nat_flow("198.18.5.1", 1000, "198.18.0.100", 40000, now),
        nat_flow("198.18.5.1", 1001, "198.18.0.101", 40000, now),
    ];

    with("\"198.18.0.101\"");
    a.reload().unwrap();
    assert!(
        snat_bit(&a, "198.18.0.100"),
        "answers to .100 still reach full-NAT"
    );
    let pool = a.dp.maps.nat_pool;
    assert_eq!(
        (pool.v4_count, pool.v4[0]),
        (1, [198, 18, 0, 101]),
        "new flows only get .101"
    );
    // Nothing changed: no replan needed.
    assert!(!a.look_at_snat_draining());

    // The flow's mapping outlives its timeout (2 h established): .100 goes.
    a.dp.nat[0].1.seen = now.wrapping_sub(7201);
    assert!(a.look_at_snat_draining());
    a.replan("test");
    assert!(!snat_bit(&a, "198.18.0.100"), "drained");
    assert!(snat_bit(&a, "198.18.0.101"));

    // An address removed with no live flow on it goes at once.
    a.dp.nat[1].1.seen = now.wrapping_sub(7201);
    with("");
    a.reload().unwrap();
    assert!(!snat_bit(&a, "198.18.0.101"));
}

#[tokio::test]
async fn the_nat_report_names_the_client_behind_a_snat_address_and_port() {
    use gateway_common::{FlowKey, NAT_DIR_REPLY, NAT_RETRY, NatValue};
    let s = Scratch::new("nat-report");
    let mut a = agent(&s);
    let a4 = |t: &str| crate::model::addr16(ip(t));
    let now = crate::sys::monotonic_secs();
    let flow = |client: &str, cport: u16, sport: u16| {
        let (key, mut fwd) = nat_flow(client, cport, "198.18.0.100", sport, now.saturating_sub(5));
        fwd.flags = if cport == 1001 { NAT_RETRY } else { 0 };
        // The answer direction is not listed.
        let back = (
            FlowKey {
                src: a4(B1),
                dst: a4("198.18.0.100"),
                sport_be: 80u16.to_be(),
                dport_be: sport.to_be(),
                ..key
            },
            NatValue {
                dir: NAT_DIR_REPLY,
                ..fwd
            },
        );
        [(key, fwd), back]
    };
    a.dp.nat = [
        flow("198.18.5.1", 1000, 40000),
        flow("198.18.5.1", 1001, 40001),
        flow("198.18.5.2", 1000, 40002),
    ]
    .concat();
    let q = |snat: Option<&str>, client: Option<&str>, limit| crate::admin::NatQuery {
        snat: snat.map(|v| {
            crate::admin::parse_nat_query(Some(&format!("snat={v}")))
                .unwrap()
                .snat
                .unwrap()
        }),
        client: client.map(|v| {
            crate::admin::parse_nat_query(Some(&format!("client={v}")))
                .unwrap()
                .client
                .unwrap()
        }),
        limit,
    };
    let r = a
        .nat_report(&q(Some("198.18.0.100:40001"), None, 100))
        .unwrap();
    assert_eq!(r.matched, 1);
    let m = &r.mappings[0];
    assert_eq!(
        (
            m.client.as_str(),
            m.vip.as_str(),
            m.snat.as_str(),
            m.backend.as_str()
        ),
        (
            "198.18.5.1:1001",
            "198.18.1.1:80",
            "198.18.0.100:40001",
            "198.18.0.11:80"
        )
    );
    assert_eq!((m.service.as_str(), m.protocol.as_str()), ("web", "tcp"));
    assert_eq!(m.state, "established");
    assert!(m.retried);
    assert!((5..=7).contains(&m.idle_seconds), "{}", m.idle_seconds);
    assert_eq!(
        a.nat_report(&q(None, Some("198.18.5.1"), 100))
            .unwrap()
            .matched,
        2
    );
    assert_eq!(
        a.nat_report(&q(Some("198.18.0.100"), None, 100))
            .unwrap()
            .matched,
        3
    );
    let limited = a.nat_report(&q(None, None, 2)).unwrap();
    assert_eq!((limited.matched, limited.mappings.len()), (3, 2));
    let all = a.nat_report(&q(None, None, 100)).unwrap();
    let clients = |r: &crate::admin::NatReport| -> Vec<String> {
        r.mappings.iter().map(|m| m.client.clone()).collect()
    };
    assert_eq!(
        clients(&limited),
        clients(&all)[..2],
        "the first two in order"
    );
    assert_eq!(
        clients(&all),
        ["198.18.5.1:1000", "198.18.5.1:1001", "198.18.5.2:1000"]
    );
    assert_eq!(
        a.nat_report(&q(Some("198.18.0.101"), None, 100))
            .unwrap()
            .matched,
        0
    );
}
