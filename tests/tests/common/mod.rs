//! Helpers shared by the privileged integration tests.
#![allow(dead_code)]

pub mod agent;
pub mod browser;
pub mod ecmp;
pub mod procfs;
pub mod scenario;
pub mod world;

use std::path::PathBuf;

use lab::{Lab, LabSpec};

/// One lab at a time within a test binary: failover timing and next-hop latency must not
/// compete with another lab for the CPU.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Returns false (after printing why) when the test cannot run here.
pub fn privileged(test: &str) -> bool {
    if !lab::is_root() {
        gateway::testing::skip(
            test,
            "needs root for namespaces and XDP (CI runs it as root)",
        );
        return false;
    }
    true
}

/// Builds a lab. The map-less objects it hands to iproute2 are written to a directory of
/// their own, read while the lab comes up and removed after.
pub fn lab(prefix: &str, backends: usize) -> Lab {
    lab_of(prefix, backends, 1)
}

/// [`lab`] with `balancers` balancers (2: the scale-out lab, a router running BIRD in front).
pub fn lab_of(prefix: &str, backends: usize, balancers: usize) -> Lab {
    let name = lab::unique_name(prefix);
    let dir = std::env::temp_dir().join(format!("gateway-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let object = |file: &str, bytes: &[u8]| {
        let path = dir.join(file);
        std::fs::write(&path, bytes).expect("write object");
        path
    };
    let spec = LabSpec {
        name,
        backends,
        pass_object: object("xdp-pass.o", gateway::object::XDP_PASS),
        decap_object: object("xdp-decap.o", gateway::object::XDP_DECAP),
        server_bin: PathBuf::from(env!("CARGO_BIN_EXE_lab-server")),
        balancers,
    };
    let lab = Lab::up(spec);
    let _ = std::fs::remove_dir_all(&dir);
    lab.expect("lab up")
}

#[allow(unused_imports)]
pub use lab::client::in_netns;

/// A plain HTTP/1.1 GET of the agent's admin API (127.0.0.1:9180) from inside `netns`: status code and body.
pub fn admin_get(netns: &str, path: &'static str) -> (u16, String) {
    admin_get_at(netns, "127.0.0.1:9180", path)
}

/// [`admin_get`] of an API listening on `addr`, through the API's one client.
pub fn admin_get_at(netns: &str, addr: &str, path: &'static str) -> (u16, String) {
    let addr: std::net::SocketAddr = addr.parse().expect("admin address");
    in_netns(netns, move || {
        let a = gateway::admin::request(addr, "GET", path, None, None).expect("admin API");
        (a.code, a.body)
    })
    .join()
    .expect("admin client thread")
}

/// The agent's `/status` (its API on `addr` in `netns`), read into the snapshot type the
/// agent serialises; panics unless it is 200.
pub fn status_at(netns: &str, addr: &str) -> gateway::admin::Snapshot {
    let (code, body) = admin_get_at(netns, addr, "/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("status JSON ({e}): {body}"))
}

/// Sums the samples of `metric` in a Prometheus text body whose labels contain `labels`.
pub fn metric_sum(text: &str, metric: &str, labels: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(metric) && l.contains(labels))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}
