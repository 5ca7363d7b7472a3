//! The body of `GET /status`: what the agent serialises and the CLI and the tests read
//! (`gateway status` prints it with [`crate::report::render_status`]).
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::overrides::Override;

/// The balancer's state at one moment: the body of `GET /status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Since the agent started.
    #[serde(default)]
    pub uptime_seconds: f64,
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
    /// BGP announcements, with `[bgp]`.
    #[serde(default)]
    pub bgp: Option<BgpStatus>,
}

/// What this balancer announces through BIRD, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BgpStatus {
    pub bird_socket: String,
    /// Failed writes of BIRD's files or commands to BIRD, and the last one's message
    /// (cleared once BIRD accepts the files).
    pub errors: u64,
    pub last_error: Option<String>,
    pub vips: Vec<VipStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VipStatus {
    pub vip: String,
    pub announced: bool,
    /// `servable`, or why not (`no usable backend`, `maps not synced`, ...).
    pub reason: String,
    /// Since when (seconds ago) the VIP has been servable or not.
    pub since_seconds: f64,
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
    /// SNAT addresses removed from the config that live full-NAT flows still use: their
    /// answers are still translated, no new flow is given them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snat_draining: Vec<String>,
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
    /// Table slots whose backend changed while flows on them may still live, as of the
    /// agent's last settling pass: their TCP packets go through conntrack.
    #[serde(default)]
    pub changed_slots: u32,
    pub panic: bool,
    pub traffic: Traffic,
    /// Source limits: `off`, `monitor` or `enforce`, and what they refused.
    #[serde(default)]
    pub protection_mode: String,
    #[serde(default)]
    pub protection: ProtectCounters,
    pub backends: Vec<BackendStatus>,
}

/// A service's protection counters (`PROTECT_STATS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProtectCounters {
    /// Dropped over a limit (enforce mode).
    pub dropped_new_flows: u64,
    pub dropped_packets: u64,
    /// Over a limit and forwarded (monitor mode).
    pub monitored_new_flows: u64,
    pub monitored_packets: u64,
}

/// The body of `GET /protection`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProtectionReport {
    pub flood_new_flows_per_cpu: u32,
    pub allowlist: Vec<String>,
    pub services: Vec<ServiceProtection>,
    /// The sources over a limit now (refused within the last few seconds), most refused
    /// first.
    pub sources: Vec<LimitedSource>,
}

/// A service's limits and what they refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceProtection {
    pub service: String,
    pub mode: String,
    pub new_flows_per_second: Option<u32>,
    pub new_flows_burst: Option<u32>,
    pub packets_per_second: Option<u32>,
    pub packets_burst: Option<u32>,
    pub prefix_v4: u8,
    pub prefix_v6: u8,
    pub counters: ProtectCounters,
}

/// A source prefix over a limit of one service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LimitedSource {
    pub prefix: String,
    pub service: String,
    /// `dropped` (enforce) or `counted` (monitor).
    pub action: String,
    pub limited_for_seconds: f64,
    /// Seen from the prefix (refused included) and refused, per second, between the
    /// agent's last two looks.
    pub packets_per_second: f64,
    pub refused_per_second: f64,
    /// Totals since the prefix's bucket was created.
    pub packets: u64,
    pub new_flows: u64,
    pub refused: u64,
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
    /// Since the last transition (none yet: absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_transition_seconds: Option<f64>,
    pub traffic: Traffic,
    /// Full-NAT backends: what their answers to SYNs said (the passive checks' input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syns: Option<SynAnswers>,
    /// Values set through the API that override the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_override: Option<Override>,
}

/// A full-NAT backend's SYNs, as the data plane saw the answers (`PASSIVE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynAnswers {
    pub answered: u64,
    /// Refused with a reset (kept from the client, which retried elsewhere).
    pub refused: u64,
    /// Sent again by the client before any answer.
    pub unanswered: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeStatus {
    pub ok: bool,
    pub reason: String,
    pub latency_ms: f64,
}

/// Counters by name, for tests and tools reading a snapshot.
pub fn counters(s: &Snapshot) -> BTreeMap<&str, u64> {
    s.dataplane
        .counters
        .iter()
        .map(|c| (c.name.as_str(), c.value))
        .collect()
}

/// The body of `GET /nat`: full-NAT flows, each with the client behind its SNAT address and
/// port (backends log the SNAT address; this says who it was).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NatReport {
    /// Flows that match the query; `mappings` holds the first `limit` of them.
    pub matched: usize,
    pub mappings: Vec<NatMapping>,
}

/// One full-NAT flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatMapping {
    pub service: String,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// `address:port` (IPv6 in brackets) of each end: the client, the VIP it connected to,
    /// the SNAT address and port the backend sees, and the backend.
    pub client: String,
    pub vip: String,
    pub snat: String,
    pub backend: String,
    /// `syn`, `established`, `closing`, `reset`, `refused` (TCP) or `udp`.
    pub state: String,
    /// Seconds since the flow's last packet from the client.
    pub idle_seconds: u32,
    /// Placed on another backend after its first one refused or ignored its SYN.
    pub retried: bool,
}
