//! The scale-out lab's scenarios, shared by the ECMP tests and `cargo xtask bench ecmp`:
//! two agents with their BIRDs and guards, the shared table's answer for a flow, the
//! router's next hops, held connections.
#![allow(dead_code)]

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use gateway::config::Config;
use gateway_common::{
    PROTO_TCP,
    hash::{flow_hash, slot_of},
};
use lab::Lab;

use super::{
    agent::*,
    scenario::{client, vip},
    status_at,
    world::flow_key,
};

/// How long one new connection may take.
pub const TIMEOUT: Duration = Duration::from_millis(500);

/// The backend (its lab name) that the shared table names for a flow from the client.
pub struct Table {
    pub config: Config,
}

impl Table {
    pub fn new(text: &str) -> Table {
        Table {
            config: Config::parse(text, Path::new("ecmp.toml")).expect("config"),
        }
    }

    pub fn backend(&self, lab: &Lab, client: IpAddr, vip: SocketAddr, sport: u16) -> String {
        let plan = gateway::preview::planned(&self.config);
        let svc = &plan.services[0];
        let table = &plan.desired.services[&svc.key].table;
        let key = flow_key(client, vip.ip(), sport, vip.port(), PROTO_TCP);
        let id = table[slot_of(flow_hash(&key), table.len() as u32) as usize];
        let addr = svc
            .backends
            .iter()
            .find(|b| b.id == id)
            .expect("the slot names a planned backend")
            .address;
        lab.backends
            .iter()
            .find(|b| IpAddr::from(b.ipv4) == addr || IpAddr::from(b.ipv6) == addr)
            .expect("a lab backend")
            .name
            .clone()
    }
}

/// The prefix of the VIP's route.
pub fn prefix(lab: &Lab, v6: bool) -> String {
    if v6 {
        format!("{}/128", lab.vip(true))
    } else {
        format!("{}/32", lab.vip(false))
    }
}

/// Waits until the router has `n` next hops for the VIP; returns how long it took.
pub fn wait_next_hops(lab: &Lab, v6: bool, n: usize, timeout: Duration) -> Duration {
    let start = Instant::now();
    let p = prefix(lab, v6);
    let mut last = Vec::new();
    while start.elapsed() < timeout {
        last = lab.router_next_hops(&p).unwrap();
        if last.len() == n {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the router has {last:?} for {p}, not {n} next hops, after {timeout:?}");
}

/// Two agents, their BIRDs and guards on the scale-out lab, the VIP announced by both.
pub struct Pair {
    pub agents: Vec<Option<Agent>>,
    pub birds: Vec<Option<std::process::Child>>,
    pub guards: Vec<std::process::Child>,
    pub cfg: Cfg,
    pub texts: Vec<String>,
}

pub fn config_path(lab: &Lab, i: usize) -> std::path::PathBuf {
    lab_dir(lab).join(format!("gateway-lb{}.toml", i + 1))
}

impl Pair {
    pub fn start(lab: &Lab, cfg: Cfg) -> Pair {
        Pair::start_with(lab, cfg, |_, text| text)
    }

    /// [`Pair::start`] with each balancer's config text passed through `edit`.
    pub fn start_with(lab: &Lab, cfg: Cfg, edit: impl Fn(usize, String) -> String) -> Pair {
        let mut agents = Vec::new();
        let mut texts = Vec::new();
        for i in 0..2 {
            let text = edit(i, cfg.render_on(lab, i));
            agents.push(Some(Agent::start_on(lab, i, &config_path(lab, i), &text)));
            texts.push(text);
        }
        let birds = (0..2).map(|i| Some(start_balancer_bird(lab, i))).collect();
        let guards = (0..2)
            .map(|i| {
                lab::ns_command(&lab.lbs[i].netns, gateway_bin())
                    .arg("bgp-guard")
                    .arg("--config")
                    .arg(config_path(lab, i))
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .expect("gateway bgp-guard")
            })
            .collect();
        for (i, a) in agents.iter().flatten().enumerate() {
            assert!(
                a.wait_log("bgp: announcing [", Duration::from_secs(10)),
                "lb{} announced nothing:\n{}",
                i + 1,
                a.log_text()
            );
        }
        wait_next_hops(lab, cfg.v6, 2, Duration::from_secs(15));
        Pair {
            agents,
            birds,
            guards,
            cfg,
            texts,
        }
    }

    pub fn agent(&self, i: usize) -> &Agent {
        self.agents[i].as_ref().expect("agent running")
    }

    /// Starts balancer `i`'s agent again (adopting what its last one left pinned).
    pub fn restart_agent(&mut self, lab: &Lab, i: usize) {
        assert!(self.agents[i].is_none(), "agent {i} still runs");
        self.agents[i] = Some(Agent::start_on(
            lab,
            i,
            &config_path(lab, i),
            &self.texts[i],
        ));
    }

    /// New flows each balancer placed (its service's counter).
    pub fn new_flows(&self, lab: &Lab) -> Vec<u64> {
        (0..2)
            .map(|i| {
                status_at(&lab.lbs[i].netns, &self.cfg.admin_listen).services[0]
                    .traffic
                    .new_flows
            })
            .collect()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for c in self.birds.iter_mut().flatten().chain(&mut self.guards) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `n` new connections from ports `first..`: for each, the backend that answered and the
/// one the table names (or the error).
pub fn connect_all(lab: &Lab, v6: bool, first: u16, n: u16) -> Vec<(u16, Result<String, String>)> {
    let vip = vip(lab, v6);
    client(lab, move || {
        (first..first + n)
            .map(|p| (p, tcp_name(vip, p, TIMEOUT).map_err(|e| e.to_string())))
            .collect()
    })
}

/// Runs `gateway ARGS` in balancer `i`'s namespace; panics unless it succeeds.
pub fn gateway_on(lab: &Lab, i: usize, args: &[&str]) -> String {
    let (ok, out, err) = gateway_cli_in(&lab.lbs[i].netns, args);
    assert!(ok, "gateway {args:?}: {err}");
    out
}

/// Long-lived connections through the VIP, each with the backend it first reached.
pub struct Held(pub Vec<(Conn, String)>);

impl Held {
    pub fn open(lab: &Lab, v6: bool, n: usize) -> Held {
        let vip = vip(lab, v6);
        Held(client(lab, move || {
            (0..n)
                .map(|_| {
                    let mut c = Conn::open(vip).expect("connection");
                    let name = c.ask().expect("first answer");
                    (c, name)
                })
                .collect()
        }))
    }

    /// Asks on every connection; the errors and changed backends, if any.
    pub fn check(&mut self, lab: &Lab) -> Vec<String> {
        let conns = std::mem::take(&mut self.0);
        let (conns, broken) = client(lab, move || {
            let mut conns = conns;
            let broken: Vec<String> = conns
                .iter_mut()
                .enumerate()
                .filter_map(|(i, (c, name))| match c.ask() {
                    Ok(n) if n == *name => None,
                    Ok(n) => Some(format!("connection {i}: moved from {name} to {n}")),
                    Err(e) => Some(format!("connection {i} ({name}): {e}")),
                })
                .collect();
            (conns, broken)
        });
        self.0 = conns;
        broken
    }
}

/// Every one of `n` new flows from ports `first..` answered by the backend the table names.
pub fn assert_placed(lab: &Lab, table: &Table, v6: bool, first: u16, n: u16) {
    let client_addr: IpAddr = if v6 {
        lab.client.ipv6.into()
    } else {
        lab.client.ipv4.into()
    };
    let vip = vip(lab, v6);
    let wrong: Vec<String> = connect_all(lab, v6, first, n)
        .into_iter()
        .filter_map(|(port, got)| {
            let want = table.backend(lab, client_addr, vip, port);
            (got.as_deref() != Ok(want.as_str()))
                .then(|| format!("port {port}: got {got:?}, the table names {want}"))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {n} flows:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

pub fn label(mode: &str, v6: bool) -> String {
    format!("{mode}_{}", if v6 { "v6" } else { "v4" })
}
