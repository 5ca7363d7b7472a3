//! The Prometheus text of a [`Snapshot`] (`GET /metrics`).
use std::fmt::Write as _;

use super::{BackendStatus, Snapshot, Traffic};

/// A label value in the text exposition format: backslash, double quote and newline escaped.
pub(super) fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// One metric family: its HELP and TYPE lines, then a sample per (labels, value).
struct Family<'a> {
    name: &'a str,
    help: &'a str,
    kind: &'a str,
    samples: Vec<(Vec<(&'a str, &'a str)>, u64)>,
}

impl Family<'_> {
    fn write(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (labels, value) in &self.samples {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            if labels.is_empty() {
                let _ = writeln!(out, "{} {value}", self.name);
            } else {
                let _ = writeln!(out, "{}{{{}}} {value}", self.name, labels.join(","));
            }
        }
    }
}

/// The Prometheus text format (0.0.4) for a snapshot.
pub fn render_metrics(s: &Snapshot) -> String {
    // Each family is written as soon as it is built: with thousands of backends, holding
    // every family's samples at once (and growing the text by doubling) cost the agent
    // more memory per scrape than its steady state has to spare.
    let backends: usize = s.services.iter().map(|svc| svc.backends.len()).sum();
    let mut out = String::with_capacity(4096 + 512 * s.services.len() + 400 * backends);
    Family {
        name: "gateway_packets_total",
        help: "Packets seen by the XDP program, by outcome.",
        kind: "counter",
        samples: s
            .dataplane
            .counters
            .iter()
            .map(|c| (vec![("reason", c.name.as_str())], c.value))
            .collect(),
    }
    .write(&mut out);
    type Pick = fn(&Traffic) -> u64;
    let traffic: [(&str, &str, Pick); 3] = [
        ("packets_total", "Packets forwarded", |t| t.packets),
        ("bytes_total", "Bytes forwarded", |t| t.bytes),
        ("new_flows_total", "New flows placed", |t| t.new_flows),
    ];
    let names: Vec<(String, String, String, String)> = traffic
        .iter()
        .map(|(suffix, help, _)| {
            (
                format!("gateway_service_{suffix}"),
                format!("{help} for the service."),
                format!("gateway_backend_{suffix}"),
                format!("{help} to the backend."),
            )
        })
        .collect();
    for ((_, _, pick), (sname, shelp, _, _)) in traffic.iter().zip(&names) {
        Family {
            name: sname,
            help: shelp,
            kind: "counter",
            samples: s
                .services
                .iter()
                .map(|svc| (vec![("service", svc.name.as_str())], pick(&svc.traffic)))
                .collect(),
        }
        .write(&mut out);
    }
    // Source limits, per service: what enforce mode dropped and monitor mode let through.
    for (name, help, dropped) in [
        (
            "gateway_service_limit_dropped_total",
            "Packets dropped over a source limit, by limit.",
            true,
        ),
        (
            "gateway_service_limit_monitored_total",
            "Packets over a source limit let through in monitor mode, by limit.",
            false,
        ),
    ] {
        let mut samples = Vec::new();
        for svc in &s.services {
            let p = &svc.protection;
            let (new, packets) = if dropped {
                (p.dropped_new_flows, p.dropped_packets)
            } else {
                (p.monitored_new_flows, p.monitored_packets)
            };
            samples.push((
                vec![("service", svc.name.as_str()), ("limit", "new_flows")],
                new,
            ));
            samples.push((
                vec![("service", svc.name.as_str()), ("limit", "packets")],
                packets,
            ));
        }
        Family {
            name,
            help,
            kind: "counter",
            samples,
        }
        .write(&mut out);
    }
    let per_backend = |f: &dyn Fn(&BackendStatus) -> u64| {
        s.services
            .iter()
            .flat_map(|svc| {
                svc.backends.iter().map(move |b| {
                    (
                        vec![
                            ("service", svc.name.as_str()),
                            ("backend", b.address.as_str()),
                        ],
                        f(b),
                    )
                })
            })
            .collect::<Vec<_>>()
    };
    for ((_, _, pick), (_, _, bname, bhelp)) in traffic.iter().zip(&names) {
        Family {
            name: bname,
            help: bhelp,
            kind: "counter",
            samples: per_backend(&|b| pick(&b.traffic)),
        }
        .write(&mut out);
    }
    // Full-NAT backends only: their answers to SYNs, by result.
    let syns: Vec<_> = s
        .services
        .iter()
        .flat_map(|svc| {
            svc.backends.iter().filter_map(move |b| {
                let a = b.syns?;
                Some(
                    [
                        ("answered", a.answered),
                        ("refused", a.refused),
                        ("unanswered", a.unanswered),
                    ]
                    .map(|(result, n)| {
                        (
                            vec![
                                ("service", svc.name.as_str()),
                                ("backend", b.address.as_str()),
                                ("result", result),
                            ],
                            n,
                        )
                    }),
                )
            })
        })
        .flatten()
        .collect();
    if !syns.is_empty() {
        Family {
            name: "gateway_backend_syns_total",
            help: "Full-NAT: SYNs the backend answered, refused with a reset, or left \
                   unanswered until the client sent them again.",
            kind: "counter",
            samples: syns,
        }
        .write(&mut out);
    }
    Family {
        name: "gateway_backend_up",
        help: "Whether the backend's health check passes (1) or not (0).",
        kind: "gauge",
        samples: per_backend(&|b| u64::from(b.health_up)),
    }
    .write(&mut out);
    Family {
        name: "gateway_backend_transitions_total",
        help: "Health transitions (up or down) of the backend.",
        kind: "counter",
        samples: per_backend(&|b| b.transitions_total),
    }
    .write(&mut out);
    Family {
        name: "gateway_table_rebuilds_total",
        help: "Replans that changed the data plane's maps.",
        kind: "counter",
        samples: vec![(vec![], s.table_rebuilds)],
    }
    .write(&mut out);
    Family {
        name: "gateway_reloads_total",
        help: "Configuration reloads (SIGHUP or the API), by result.",
        kind: "counter",
        samples: vec![
            (vec![("result", "ok")], s.reloads_ok),
            (vec![("result", "error")], s.reloads_error),
        ],
    }
    .write(&mut out);
    Family {
        name: "gateway_map_write_errors_total",
        help: "Replans whose map write failed (the agent keeps running and retries).",
        kind: "counter",
        samples: vec![(vec![], s.map_write_errors)],
    }
    .write(&mut out);
    Family {
        name: "gateway_service_changed_slots",
        help: "Table slots whose backend changed while flows on them may live (conntrack \
               decides their TCP packets until they settle).",
        kind: "gauge",
        samples: s
            .services
            .iter()
            .map(|svc| {
                (
                    vec![("service", svc.name.as_str())],
                    u64::from(svc.changed_slots),
                )
            })
            .collect(),
    }
    .write(&mut out);
    if let Some(b) = &s.bgp {
        Family {
            name: "gateway_bgp_announced",
            help: "Whether the VIP (or full-NAT SNAT address) is announced to the routers through BIRD (1) or not (0).",
            kind: "gauge",
            samples: b
                .vips
                .iter()
                .map(|v| (vec![("vip", v.vip.as_str())], u64::from(v.announced)))
                .collect(),
        }
        .write(&mut out);
        Family {
            name: "gateway_bgp_errors_total",
            help: "Failed writes of BIRD's files or commands to BIRD (each retried).",
            kind: "counter",
            samples: vec![(vec![], b.errors)],
        }
        .write(&mut out);
    }
    let name = "gateway_probe_duration_seconds";
    let _ = writeln!(out, "# HELP {name} Health-check duration per service.");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for h in &s.probe_latency {
        let svc = escape(&h.service);
        let mut cumulative = 0;
        for (i, c) in h.counts.iter().enumerate() {
            cumulative += c;
            let le = h.le.get(i).map_or("+Inf".to_string(), |v| v.to_string());
            let _ = writeln!(
                out,
                "{name}_bucket{{service=\"{svc}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(out, "{name}_sum{{service=\"{svc}\"}} {}", h.sum_seconds);
        let _ = writeln!(out, "{name}_count{{service=\"{svc}\"}} {cumulative}");
    }
    out
}
