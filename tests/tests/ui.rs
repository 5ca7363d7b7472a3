//! The status page (`GET /ui`) in a real browser: headless Chromium over WebDriver, in the
//! lab with the real agent and live traffic.
mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use common::{admin_get, agent::*, browser::Browser, scenario::*};

/// The backends of service `web` as the page shows them: address, row class, state text.
const ROWS: &str = "return Array.from(document.querySelectorAll(\
    '.service[data-service=\"web\"] tbody tr')).map(r => \
    [r.dataset.backend, r.className, r.cells[1].textContent]);";

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn the_status_page_shows_live_state_and_drains_a_backend() {
    if !common::privileged("the_status_page_shows_live_state_and_drains_a_backend") {
        return;
    }
    assert!(
        common::browser::available(),
        "chromium and chromedriver are missing: `cargo xtask setup` installs them"
    );
    let _g = common::serial();
    let mut lab = common::lab("ui", 3);
    let cfg = Cfg::new("l2dsr", false, 3);
    let agent = start(&lab, &cfg, 3);

    // Steady new connections, so that rates are not zero.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, v) = (stop.clone(), vip(&lab, false));
        lab::client::in_netns(&lab.client.netns, move || {
            let mut port = 40_000u16;
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                let _ = tcp_name(v, port, Duration::from_millis(300));
                port = if port == 60_000 { 40_000 } else { port + 1 };
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    let browser = Browser::start(&lab.lb.netns);
    browser.goto("http://127.0.0.1:9180/ui");
    browser.wait_true(
        "three polls",
        "return Number(document.body.dataset.polls || 0) >= 3;",
        Duration::from_secs(15),
    );

    // The rate arithmetic: a counter that goes back (a restart) or has no earlier sample
    // has no rate.
    let r = browser.eval(
        "return [gatewayUi.rate(15, 5, 2), gatewayUi.rate(3, 5, 1), \
         gatewayUi.rate(5, undefined, 1), gatewayUi.rate(5, 4, 0), gatewayUi.fmtRate(null), \
         gatewayUi.fmtRate(1500, 'b/s'), gatewayUi.fmtSeconds(3725)];",
    );
    assert_eq!(
        r,
        serde_json::json!([5, null, null, null, "-", "1.5 kb/s", "1h02m"])
    );

    // Services, backends, states and a live rate.
    let rows = browser.eval(ROWS);
    let want: Vec<serde_json::Value> = lab
        .backends
        .iter()
        .map(|b| serde_json::json!([b.ipv4.to_string(), "up", "up"]))
        .collect();
    assert_eq!(rows, serde_json::Value::Array(want), "backend rows");
    let endpoint = browser.eval(
        "return document.querySelector('.service[data-service=\"web\"] .endpoint').textContent;",
    );
    assert_eq!(endpoint, "198.18.1.1:80/tcp");
    browser.wait_true(
        "a non-zero forwarding rate",
        "const r = document.querySelector('#verdicts tr[data-counter=\"forwarded\"]'); \
         return !!r && r.cells[1].textContent !== '-' && parseFloat(r.cells[1].textContent) > 0;",
        Duration::from_secs(10),
    );

    // Drain b2 through the page's own button; the agent's status changes, and the row.
    let b2 = lab.backends[1].ipv4.to_string();
    browser.eval(&format!(
        "document.querySelector('.service[data-service=\"web\"] tr[data-backend=\"{b2}\"] \
         button[data-state=\"drain\"]').click(); return true;"
    ));
    lab::wait_for("the agent drains b2", Duration::from_secs(5), || {
        let (_, body) = admin_get(&lab.lb.netns, "/status");
        let s: gateway::admin::Snapshot = serde_json::from_str(&body).expect("status");
        s.services[0]
            .backends
            .iter()
            .any(|b| b.address == b2 && b.state == "drain")
    })
    .expect("drained through the page");
    browser.wait_true(
        "b2's row shows drain",
        &format!(
            "const r = document.querySelector('tr[data-backend=\"{b2}\"]'); \
             return !!r && r.className === 'drain';"
        ),
        Duration::from_secs(5),
    );
    let message = browser.eval("return document.getElementById('message').textContent;");
    assert!(
        message.as_str().is_some_and(|m| m.ends_with("done")),
        "{message}"
    );

    // b3's server dies: its row turns down.
    let b3 = lab.backends[2].ipv4.to_string();
    lab.stop_server(2).expect("stop b3's server");
    browser.wait_true(
        "b3's row shows down",
        &format!(
            "const r = document.querySelector('tr[data-backend=\"{b3}\"]'); \
             return !!r && r.className === 'down';"
        ),
        Duration::from_secs(10),
    );
    let shot = browser.screenshot();
    assert!(shot.starts_with(b"\x89PNG"), "a PNG screenshot");
    let artifact =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ui-screenshot.png");
    std::fs::write(&artifact, &shot).expect("write the screenshot");
    println!("screenshot: {}", artifact.display());

    // An API error is shown: a state that is not one, sent past the buttons.
    browser.eval(&format!(
        "gatewayUi.setState('web', '{b2}', 'nonsense'); return true;"
    ));
    browser.wait_true(
        "the API's error on the page",
        "const m = document.getElementById('message'); \
         return m.classList.contains('error') && m.textContent.includes('400');",
        Duration::from_secs(5),
    );

    stop.store(true, Ordering::Relaxed);
    traffic.join().expect("traffic");
    // The agent goes away: the page says so instead of showing stale numbers as live.
    agent.stop();
    browser.wait_true(
        "the unreachable banner",
        "const b = document.getElementById('banner'); \
         return !b.hidden && b.textContent.includes('unreachable');",
        Duration::from_secs(10),
    );

    // With the agent gone nothing overwrites the page: render 16 services of 1,000
    // backends into it. Services that large start collapsed (their rows are not built);
    // opening one builds its thousand rows.
    let big = browser.eval(BIG);
    println!(
        "16 x 1,000 backends (count, collapsed, rows, ms to render twice, ms to open one): {big}"
    );
    assert_eq!(big[0], 16);
    assert_eq!(big[1], 15);
    assert_eq!(big[2], 1000);
}

const BIG: &str = "\
    const mk = (i) => ({ name: 's' + i, vip: '198.18.1.' + i, port: 80, protocol: 'tcp', \
      mode: 'l2dsr', table_size: 65537, changed_slots: 0, panic: false, \
      traffic: { packets: 0, bytes: 0, new_flows: 0 }, protection_mode: 'off', \
      protection: {}, backends: Array.from({ length: 1000 }, (_, j) => ({ \
        address: '10.' + i + '.' + (j >> 8) + '.' + (j & 255), id: j, state: 'up', \
        reason: 'ready, up', weight: 100, effective_weight: 100, backup: false, slots: 65, \
        share: 0.1, health_up: true, transitions: [], transitions_total: 0, \
        traffic: { packets: j, bytes: j, new_flows: j } })) }); \
    const snap = { uptime_seconds: 1, table_rebuilds: 0, reloads_ok: 0, reloads_error: 0, \
      dataplane: { interface: 'eth0', conntrack_capacity: 1, counters: [] }, \
      services: Array.from({ length: 16 }, (_, i) => mk(i)) }; \
    const t0 = performance.now(); \
    gatewayUi.render(snap); gatewayUi.render(snap); \
    const t1 = performance.now(); \
    document.querySelector('.service[data-service=\"s3\"] .head').click(); \
    const t2 = performance.now(); \
    return [document.querySelectorAll('.service').length, \
      document.querySelectorAll('.service.collapsed').length, \
      document.querySelectorAll('.service[data-service=\"s3\"] tbody tr').length, \
      Math.round(t1 - t0), Math.round(t2 - t1)];";
