//! The body of `GET /status`: what the agent serialises and the CLI and the tests read, and
//! `gateway status`'s table of it.
use std::{collections::BTreeMap, fmt::Write as _};

use serde::{Deserialize, Serialize};

use crate::{
    check::{Align, columns},
    overrides::Override,
};

/// The balancer's state at one moment: the body of `GET /status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub dataplane: DataplaneStatus,
    pub services: Vec<ServiceStatus>,
    /// Replans that changed the maps.
    pub table_rebuilds: u64,
    /// SIGHUP reloads by outcome.
    pub reloads_ok: u64,
    pub reloads_error: u64,
    /// Replans whose map write failed (each retried; see `Agent::replan`).
    #[serde(default)]
    pub map_write_errors: u64,
    /// Health-check latency per service.
    #[serde(default)]
    pub probe_latency: Vec<LatencyHistogram>,
}

/// A latency histogram: `counts[i]` probes took at most `le[i]` seconds (and more than the
/// bucket before); the last count is above every bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyHistogram {
    pub service: String,
    pub le: Vec<f64>,
    pub counts: Vec<u64>,
    pub sum_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataplaneStatus {
    pub interface: String,
    /// `native` or `generic`; absent when not attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program_id: Option<u32>,
    /// Absent when not asked for (metrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrack_entries: Option<usize>,
    pub conntrack_capacity: u32,
    /// Global counters by name (`gateway_common::STAT_NAMES`), in that order.
    pub counters: Vec<Counter>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counter {
    pub name: String,
    pub value: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub vip: String,
    pub port: u16,
    pub protocol: String,
    pub mode: String,
    pub table_size: u32,
    pub panic: bool,
    pub traffic: Traffic,
    pub backends: Vec<BackendStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub address: String,
    pub id: u32,
    /// [`crate::plan::BackendPlan::state_word`].
    pub state: String,
    pub reason: String,
    pub weight: u32,
    pub effective_weight: u32,
    pub backup: bool,
    pub slots: usize,
    /// Percent of the service's table.
    pub share: f64,
    pub health_up: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe: Option<ProbeStatus>,
    /// The most recent transitions, oldest first.
    pub transitions: Vec<String>,
    /// Every transition since the agent started.
    pub transitions_total: u64,
    pub traffic: Traffic,
    /// Values set through the API that override the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_override: Option<Override>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeStatus {
    pub ok: bool,
    pub reason: String,
    pub latency_ms: f64,
}

/// `gateway status`: a table per service, laid out like `gateway check`.
pub fn render_status(s: &Snapshot) -> String {
    let d = &s.dataplane;
    let mut out = format!("dataplane  interface {}", d.interface);
    match &d.xdp_mode {
        Some(m) => {
            let _ = write!(out, "  xdp {m}");
        }
        None => out += "  not attached",
    }
    if let Some(id) = d.program_id {
        let _ = write!(out, "  program {id}");
    }
    match d.conntrack_entries {
        Some(n) => {
            let _ = writeln!(out, "  conntrack {n}/{} entries", d.conntrack_capacity);
        }
        None => {
            let _ = writeln!(out, "  conntrack {} entries", d.conntrack_capacity);
        }
    }
    for svc in &s.services {
        let endpoint = if svc.vip.contains(':') {
            format!("[{}]:{}/{}", svc.vip, svc.port, svc.protocol)
        } else {
            format!("{}:{}/{}", svc.vip, svc.port, svc.protocol)
        };
        let _ = writeln!(
            out,
            "\nservice {}  {endpoint}  {}  table {} slots{}  {} packets  {} new flows",
            svc.name,
            svc.mode,
            svc.table_size,
            if svc.panic { "  PANIC" } else { "" },
            svc.traffic.packets,
            svc.traffic.new_flows,
        );
        let rows: Vec<Vec<String>> = svc
            .backends
            .iter()
            .map(|b| {
                let health = match (&b.last_probe, b.health_up) {
                    (Some(p), up) => format!(
                        "{} ({}, {:.1}ms)",
                        if up { "up" } else { "down" },
                        p.reason,
                        p.latency_ms
                    ),
                    (None, true) => "up".into(),
                    (None, false) => "down".into(),
                };
                // Values set through the API rather than the config file are marked `*`.
                let o = b.api_override.as_ref();
                let mark = |set: bool| if set { "*" } else { "" };
                vec![
                    b.address.clone(),
                    format!("{}{}", b.state, mark(o.is_some_and(|o| o.state.is_some()))),
                    format!(
                        "{}{}",
                        b.weight,
                        mark(o.is_some_and(|o| o.weight.is_some()))
                    ),
                    b.slots.to_string(),
                    format!("{:.1}%", b.share),
                    health,
                    b.reason.clone(),
                ]
            })
            .collect();
        if !rows.is_empty() {
            out += &columns(
                &[
                    ("backend", Align::Left),
                    ("state", Align::Left),
                    ("weight", Align::Right),
                    ("slots", Align::Right),
                    ("share", Align::Right),
                    ("health", Align::Left),
                    ("reason", Align::Left),
                ],
                &rows,
                "  ",
            );
        }
    }
    if s.services
        .iter()
        .flat_map(|svc| &svc.backends)
        .any(|b| b.api_override.is_some())
    {
        out += "\n* set through the API (gateway backend ...), overriding the config file\n";
    }
    out
}

/// Counters by name, for tests and tools reading a snapshot.
pub fn counters(s: &Snapshot) -> BTreeMap<&str, u64> {
    s.dataplane
        .counters
        .iter()
        .map(|c| (c.name.as_str(), c.value))
        .collect()
}
