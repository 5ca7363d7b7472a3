//! The file as written: serde's target, every key with its position.
use std::{fmt, ops::Range};

use serde::{Deserialize, Deserializer};
use toml::Spanned;

use super::types::{AdminState, KernelLog, Mode, OnExit, ProtectMode, Protocol, XdpMode};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) dataplane: Spanned<RawDataplane>,
    pub(super) admin: Option<Spanned<RawAdmin>>,
    pub(super) bgp: Option<Spanned<RawBgp>>,
    pub(super) protection: Option<Spanned<RawProtection>>,
    #[serde(default)]
    pub(super) service: Vec<Spanned<RawService>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProtection {
    pub(super) flood_new_flows_per_cpu: Option<Spanned<i64>>,
    pub(super) fullnat_new_flows_per_cpu: Option<Spanned<i64>>,
    pub(super) sources_size: Option<Spanned<i64>>,
    pub(super) allowlist: Option<Vec<Spanned<String>>>,
    pub(super) mode: Option<Spanned<ProtectMode>>,
    pub(super) new_flows_per_second: Option<Spanned<i64>>,
    pub(super) new_flows_burst: Option<Spanned<i64>>,
    pub(super) packets_per_second: Option<Spanned<i64>>,
    pub(super) packets_burst: Option<Spanned<i64>>,
    pub(super) prefix_v4: Option<Spanned<i64>>,
    pub(super) prefix_v6: Option<Spanned<i64>>,
}

/// The source-limit keys, in `[protection]` (the defaults) and `[service.protection]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) mode: Option<Spanned<ProtectMode>>,
    pub(super) new_flows_per_second: Option<Spanned<i64>>,
    pub(super) new_flows_burst: Option<Spanned<i64>>,
    pub(super) packets_per_second: Option<Spanned<i64>>,
    pub(super) packets_burst: Option<Spanned<i64>>,
    pub(super) prefix_v4: Option<Spanned<i64>>,
    pub(super) prefix_v6: Option<Spanned<i64>>,
}

impl RawProtection {
    /// Its source-limit keys, as a service's section holds them.
    pub(super) fn limits(&self) -> RawLimits {
        RawLimits {
            mode: self.mode.clone(),
            new_flows_per_second: self.new_flows_per_second.clone(),
            new_flows_burst: self.new_flows_burst.clone(),
            packets_per_second: self.packets_per_second.clone(),
            packets_burst: self.packets_burst.clone(),
            prefix_v4: self.prefix_v4.clone(),
            prefix_v6: self.prefix_v6.clone(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBgp {
    pub(super) local_as: Spanned<i64>,
    pub(super) router_id: Spanned<String>,
    pub(super) next_hop_v4: Option<Spanned<String>>,
    pub(super) next_hop_v6: Option<Spanned<String>>,
    pub(super) communities: Option<Vec<Spanned<String>>>,
    pub(super) announce_after: Option<Spanned<String>>,
    pub(super) withdraw_after: Option<Spanned<String>>,
    pub(super) agent_grace: Option<Spanned<String>>,
    pub(super) withdraw_wait: Option<Spanned<String>>,
    pub(super) bird_dir: Option<Spanned<String>>,
    pub(super) bird_socket: Option<Spanned<String>>,
    pub(super) announce_snat: Option<bool>,
    #[serde(default)]
    pub(super) neighbor: Vec<Spanned<RawNeighbor>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNeighbor {
    pub(super) address: Spanned<String>,
    #[serde(rename = "as")]
    pub(super) asn: Spanned<i64>,
    pub(super) password: Option<Spanned<String>>,
    pub(super) hold_time: Option<Spanned<String>>,
    pub(super) keepalive: Option<Spanned<String>>,
}

// Integers are read as i64 and ranges checked here, so that `port = 0` and `port = 70000`
// are collected like every other problem instead of stopping serde.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDataplane {
    pub(super) interface: Spanned<String>,
    pub(super) xdp_mode: Option<XdpMode>,
    pub(super) conntrack_size: Option<Spanned<i64>>,
    pub(super) mtu: Option<Spanned<i64>>,
    pub(super) idle_timeout: Option<Spanned<String>>,
    pub(super) max_services: Option<Spanned<i64>>,
    pub(super) max_table_size: Option<Spanned<i64>>,
    pub(super) ipip_source_v4: Option<Spanned<String>>,
    pub(super) ipip_source_v4_vary_bits: Option<Spanned<i64>>,
    pub(super) ipip_source_v6: Option<Spanned<String>>,
    pub(super) skip_checks: Option<Vec<Spanned<String>>>,
    pub(super) extra_macs: Option<Vec<Spanned<String>>>,
    pub(super) nat_size: Option<Spanned<i64>>,
    pub(super) snat_v4: Option<Vec<Spanned<String>>>,
    pub(super) snat_v6: Option<Vec<Spanned<String>>>,
    pub(super) snat_ports: Option<Spanned<String>>,
    pub(super) kernel_log: Option<KernelLog>,
    pub(super) pin_dir: Option<Spanned<String>>,
    pub(super) on_exit: Option<OnExit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) token_file: Option<Spanned<String>>,
    pub(super) token_for_reads: Option<bool>,
    pub(super) state_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: Spanned<String>,
    pub(super) vip: Spanned<String>,
    pub(super) port: Spanned<i64>,
    pub(super) protocol: Protocol,
    pub(super) mode: Spanned<Mode>,
    pub(super) table_size: Option<Spanned<i64>>,
    pub(super) slowstart: Option<Spanned<String>>,
    pub(super) panic_threshold: Option<Spanned<Number>>,
    pub(super) health: Option<Spanned<RawHealth>>,
    pub(super) communities: Option<Vec<Spanned<String>>>,
    pub(super) med: Option<Spanned<i64>>,
    pub(super) protection: Option<Spanned<RawLimits>>,
    #[serde(default)]
    pub(super) backend: Vec<Spanned<RawBackend>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub(super) address: Spanned<String>,
    pub(super) weight: Option<Spanned<i64>>,
    pub(super) backup: Option<bool>,
    pub(super) state: Option<AdminState>,
    pub(super) health: Option<Spanned<RawHealth>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) kind: Option<Spanned<RawKind>>,
    pub(super) port: Option<Spanned<i64>>,
    pub(super) interval: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) rise: Option<Spanned<i64>>,
    pub(super) fall: Option<Spanned<i64>>,
    pub(super) passive_fall: Option<Spanned<i64>>,
    pub(super) fast_interval: Option<Spanned<String>>,
    pub(super) down_interval: Option<Spanned<String>>,
    pub(super) jitter: Option<Spanned<Number>>,
    pub(super) initial: Option<Spanned<Initial>>,
    pub(super) path: Option<Spanned<String>>,
    pub(super) host: Option<Spanned<String>>,
    pub(super) expect_status: Option<Spanned<Vec<Spanned<StatusSpec>>>>,
    pub(super) body_contains: Option<Spanned<String>>,
}

impl RawHealth {
    /// The keys that only an HTTP check may have, with where they are.
    pub(super) fn http_keys(&self) -> Vec<(&'static str, Range<usize>)> {
        let spans = [
            ("path", self.path.as_ref().map(Spanned::span)),
            ("host", self.host.as_ref().map(Spanned::span)),
            (
                "expect_status",
                self.expect_status.as_ref().map(Spanned::span),
            ),
            (
                "body_contains",
                self.body_contains.as_ref().map(Spanned::span),
            ),
        ];
        spans
            .into_iter()
            .filter_map(|(k, s)| Some((k, s?)))
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawKind {
    Tcp,
    Http,
    None,
}

impl fmt::Display for RawKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RawKind::Tcp => "tcp",
            RawKind::Http => "http",
            RawKind::None => "none",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Initial {
    Down,
    Up,
}

/// A float that may be written as an integer (`jitter = 0`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Number(pub(super) f64);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Number;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_f64<E>(self, v: f64) -> Result<Number, E> {
                Ok(Number(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Number, E> {
                Ok(Number(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Number, E> {
                Ok(Number(v as f64))
            }
        }
        d.deserialize_any(V)
    }
}

/// One `expect_status` entry: `"200-299"`, `"204"` or `204`.
#[derive(Debug, Clone)]
pub(super) struct StatusSpec(pub(super) String);

impl<'de> Deserialize<'de> for StatusSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = StatusSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a status (\"200\", 200) or a range of them (\"200-299\")")
            }
            fn visit_str<E>(self, v: &str) -> Result<StatusSpec, E> {
                Ok(StatusSpec(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<StatusSpec, E> {
                Ok(StatusSpec(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<StatusSpec, E> {
                Ok(StatusSpec(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}
