//! The admin API: a small HTTP server for health, status and Prometheus metrics.
//!
//! The agent stays the only owner of the data plane: a handler sends a [`Request`] to the
//! agent's control loop and waits for the reply, so every answer is read fresh from the maps
//! at request time and nothing here touches aya. Rendering ([`render_metrics`],
//! [`render_status`]) is pure and works on a [`Snapshot`].
use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr, time::Duration};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use log::{error, info};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::check::{Align, columns};

/// How long a handler waits for the control loop before answering 503.
const LOOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What a handler asks the control loop for.
#[derive(Debug)]
pub enum Request {
    /// Whether the first plan has been applied (the loop answering at all means it runs).
    Ready(oneshot::Sender<bool>),
    /// Everything `/status` and `/metrics` show, read now. Counting conntrack entries
    /// walks the whole map (one syscall per entry, so about a second for a million flows,
    /// during which the loop does nothing else): only `/status` asks for it, not every
    /// scrape.
    Snapshot {
        conntrack: bool,
        reply: oneshot::Sender<Result<Snapshot, String>>,
    },
}

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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeStatus {
    pub ok: bool,
    pub reason: String,
    pub latency_ms: f64,
}

/// Binds `listen` and serves until the runtime stops. A failure to bind is logged and the
/// agent keeps balancing without the API.
pub async fn spawn(listen: SocketAddr, agent: mpsc::Sender<Request>) {
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            error!("admin API: cannot listen on {listen}: {e}; running without it");
            return;
        }
    };
    info!("admin API listening on {listen}");
    let app = router(agent);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            error!("admin API stopped: {e}");
        }
    });
}

fn router(agent: mpsc::Sender<Request>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(agent)
}

fn json(code: StatusCode, body: String) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn error_body(code: StatusCode, message: &str) -> Response {
    json(code, serde_json::json!({ "error": message }).to_string())
}

async fn not_found() -> Response {
    error_body(StatusCode::NOT_FOUND, "not found")
}

async fn method_not_allowed() -> Response {
    error_body(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

/// Sends a request built around a fresh reply channel and waits for the answer.
async fn ask<T>(
    agent: &mpsc::Sender<Request>,
    make: impl FnOnce(oneshot::Sender<T>) -> Request,
) -> Result<T, Response> {
    let unavailable = |m: &str| error_body(StatusCode::SERVICE_UNAVAILABLE, m);
    let (tx, rx) = oneshot::channel();
    agent
        .send(make(tx))
        .await
        .map_err(|_| unavailable("the control loop has stopped"))?;
    match tokio::time::timeout(LOOP_TIMEOUT, rx).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => Err(unavailable("the control loop has stopped")),
        Err(_) => Err(unavailable("the control loop did not answer in time")),
    }
}

async fn healthz(State(agent): State<mpsc::Sender<Request>>) -> Response {
    match ask(&agent, Request::Ready).await {
        Ok(_) => json(StatusCode::OK, r#"{"ok":true}"#.into()),
        Err(r) => r,
    }
}

async fn readyz(State(agent): State<mpsc::Sender<Request>>) -> Response {
    match ask(&agent, Request::Ready).await {
        Ok(true) => json(StatusCode::OK, r#"{"ready":true}"#.into()),
        Ok(false) => json(StatusCode::SERVICE_UNAVAILABLE, r#"{"ready":false}"#.into()),
        Err(r) => r,
    }
}

async fn snapshot(agent: &mpsc::Sender<Request>, conntrack: bool) -> Result<Snapshot, Response> {
    ask(agent, |reply| Request::Snapshot { conntrack, reply })
        .await?
        .map_err(|e| error_body(StatusCode::INTERNAL_SERVER_ERROR, &e))
}

async fn status(State(agent): State<mpsc::Sender<Request>>) -> Response {
    match snapshot(&agent, true).await {
        Ok(s) => match serde_json::to_string(&s) {
            Ok(body) => json(StatusCode::OK, body),
            Err(e) => error_body(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        Err(r) => r,
    }
}

async fn metrics(State(agent): State<mpsc::Sender<Request>>) -> Response {
    match snapshot(&agent, false).await {
        Ok(s) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            render_metrics(&s),
        )
            .into_response(),
        Err(r) => r,
    }
}

/// A label value in the text exposition format: backslash, double quote and newline escaped.
fn escape(v: &str) -> String {
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
    let mut families = vec![Family {
        name: "gateway_packets_total",
        help: "Packets seen by the XDP program, by outcome.",
        kind: "counter",
        samples: s
            .dataplane
            .counters
            .iter()
            .map(|c| (vec![("reason", c.name.as_str())], c.value))
            .collect(),
    }];
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
        families.push(Family {
            name: sname,
            help: shelp,
            kind: "counter",
            samples: s
                .services
                .iter()
                .map(|svc| (vec![("service", svc.name.as_str())], pick(&svc.traffic)))
                .collect(),
        });
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
        families.push(Family {
            name: bname,
            help: bhelp,
            kind: "counter",
            samples: per_backend(&|b| pick(&b.traffic)),
        });
    }
    families.push(Family {
        name: "gateway_backend_up",
        help: "Whether the backend's health check passes (1) or not (0).",
        kind: "gauge",
        samples: per_backend(&|b| u64::from(b.health_up)),
    });
    families.push(Family {
        name: "gateway_backend_transitions_total",
        help: "Health transitions (up or down) of the backend.",
        kind: "counter",
        samples: per_backend(&|b| b.transitions_total),
    });
    families.push(Family {
        name: "gateway_table_rebuilds_total",
        help: "Replans that changed the data plane's maps.",
        kind: "counter",
        samples: vec![(vec![], s.table_rebuilds)],
    });
    families.push(Family {
        name: "gateway_reloads_total",
        help: "Configuration reloads (SIGHUP), by result.",
        kind: "counter",
        samples: vec![
            (vec![("result", "ok")], s.reloads_ok),
            (vec![("result", "error")], s.reloads_error),
        ],
    });
    let mut out = String::new();
    for f in &families {
        f.write(&mut out);
    }
    out
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
                vec![
                    b.address.clone(),
                    b.state.clone(),
                    b.weight.to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(address: &str, up: bool, packets: u64) -> BackendStatus {
        BackendStatus {
            address: address.into(),
            id: 1,
            state: if up { "up" } else { "down" }.into(),
            reason: if up { "ready, up" } else { "health check down" }.into(),
            weight: 100,
            effective_weight: 100,
            backup: false,
            slots: if up { 251 } else { 0 },
            share: if up { 100.0 } else { 0.0 },
            health_up: up,
            last_probe: Some(ProbeStatus {
                ok: up,
                reason: if up {
                    "connected"
                } else {
                    "connection refused"
                }
                .into(),
                latency_ms: 0.25,
            }),
            transitions: vec![],
            transitions_total: 3,
            traffic: Traffic {
                packets,
                bytes: packets * 60,
                new_flows: packets / 2,
            },
        }
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            dataplane: DataplaneStatus {
                interface: "eth0".into(),
                xdp_mode: Some("native".into()),
                program_id: Some(42),
                conntrack_entries: Some(7),
                conntrack_capacity: 65536,
                counters: vec![
                    Counter {
                        name: "forwarded".into(),
                        value: 10,
                    },
                    Counter {
                        name: "conntrack_miss_syn".into(),
                        value: 4,
                    },
                ],
            },
            services: vec![ServiceStatus {
                name: "we\"b\\x\n".into(),
                vip: "198.18.1.1".into(),
                port: 80,
                protocol: "tcp".into(),
                mode: "l2dsr".into(),
                table_size: 251,
                panic: false,
                traffic: Traffic {
                    packets: 10,
                    bytes: 600,
                    new_flows: 5,
                },
                backends: vec![
                    backend("198.18.0.11", true, 10),
                    backend("198.18.0.12", false, 0),
                ],
            }],
            table_rebuilds: 2,
            reloads_ok: 1,
            reloads_error: 0,
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("a\nb"), "a\\nb");
        let m = render_metrics(&snapshot());
        assert!(
            m.contains(r#"gateway_service_packets_total{service="we\"b\\x\n"} 10"#),
            "{m}"
        );
    }

    #[test]
    fn every_family_has_help_and_type_before_its_samples() {
        let m = render_metrics(&snapshot());
        let mut declared = Vec::new();
        for line in m.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                declared.push(rest.split(' ').next().unwrap().to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                assert_eq!(Some(declared.last().unwrap().as_str()), it.next(), "{line}");
                assert!(matches!(it.next(), Some("counter" | "gauge")), "{line}");
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(declared.last().map(String::as_str), Some(name), "{line}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<u64>().is_ok(), "{line}");
            }
        }
        for name in [
            "gateway_packets_total",
            "gateway_service_packets_total",
            "gateway_service_bytes_total",
            "gateway_service_new_flows_total",
            "gateway_backend_packets_total",
            "gateway_backend_bytes_total",
            "gateway_backend_new_flows_total",
            "gateway_backend_up",
            "gateway_backend_transitions_total",
            "gateway_table_rebuilds_total",
            "gateway_reloads_total",
        ] {
            assert_eq!(
                declared.iter().filter(|d| *d == name).count(),
                1,
                "{name}: {m}"
            );
        }
    }

    #[test]
    fn metric_values() {
        let m = render_metrics(&snapshot());
        let has = |l: &str| assert!(m.lines().any(|x| x == l), "missing {l:?} in\n{m}");
        has(r#"gateway_packets_total{reason="forwarded"} 10"#);
        has(r#"gateway_packets_total{reason="conntrack_miss_syn"} 4"#);
        has(r#"gateway_backend_packets_total{service="we\"b\\x\n",backend="198.18.0.11"} 10"#);
        has(r#"gateway_backend_bytes_total{service="we\"b\\x\n",backend="198.18.0.11"} 600"#);
        has(r#"gateway_backend_new_flows_total{service="we\"b\\x\n",backend="198.18.0.11"} 5"#);
        has(r#"gateway_backend_up{service="we\"b\\x\n",backend="198.18.0.11"} 1"#);
        has(r#"gateway_backend_up{service="we\"b\\x\n",backend="198.18.0.12"} 0"#);
        has(r#"gateway_backend_transitions_total{service="we\"b\\x\n",backend="198.18.0.12"} 3"#);
        has("gateway_table_rebuilds_total 2");
        has(r#"gateway_reloads_total{result="ok"} 1"#);
        has(r#"gateway_reloads_total{result="error"} 0"#);
    }

    #[test]
    fn status_table() {
        let mut s = snapshot();
        s.services[0].name = "web".into();
        let text = render_status(&s);
        let want = "\
dataplane  interface eth0  xdp native  program 42  conntrack 7/65536 entries

service web  198.18.1.1:80/tcp  l2dsr  table 251 slots  10 packets  5 new flows
  backend      state  weight  slots   share  health                            reason
  198.18.0.11  up        100    251  100.0%  up (connected, 0.2ms)             ready, up
  198.18.0.12  down      100      0    0.0%  down (connection refused, 0.2ms)  health check down
";
        assert_eq!(text, want, "\n{text}");
    }

    /// GET `path` from `addr`: status code and body.
    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        (
            head.split(' ').nth(1).unwrap().parse().unwrap(),
            body.into(),
        )
    }

    fn free_port() -> SocketAddr {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    #[tokio::test]
    async fn endpoints_answer_from_the_loop_and_errors_are_json() {
        let addr = free_port();
        let (tx, mut rx) = mpsc::channel(8);
        spawn(addr, tx).await;
        // Stands in for the agent's loop: not ready yet, then a snapshot.
        let agent = tokio::spawn(async move {
            let mut ready = false;
            while let Some(req) = rx.recv().await {
                match req {
                    Request::Ready(r) => {
                        let _ = r.send(ready);
                        ready = true;
                    }
                    Request::Snapshot { reply, .. } => {
                        let _ = reply.send(Ok(snapshot()));
                    }
                }
            }
        });
        assert_eq!(get(addr, "/readyz").await.0, 503);
        assert_eq!(get(addr, "/readyz").await.0, 200);
        assert_eq!(get(addr, "/healthz").await, (200, r#"{"ok":true}"#.into()));
        let (code, body) = get(addr, "/status").await;
        assert_eq!(code, 200);
        assert_eq!(serde_json::from_str::<Snapshot>(&body).unwrap(), snapshot());
        let (code, body) = get(addr, "/metrics").await;
        assert_eq!((code, body), (200, render_metrics(&snapshot())));
        assert_eq!(
            get(addr, "/nope").await,
            (404, r#"{"error":"not found"}"#.into())
        );
        agent.abort();
        let _ = agent.await;
        let (code, body) = get(addr, "/healthz").await;
        assert_eq!(code, 503);
        assert!(body.contains("\"error\""), "{body}");
    }

    #[tokio::test]
    async fn an_address_in_use_is_logged_not_fatal() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (tx, _rx) = mpsc::channel(1);
        spawn(taken.local_addr().unwrap(), tx).await;
    }

    #[test]
    fn snapshot_round_trips_through_json() {
        let s = snapshot();
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Snapshot>(&text).unwrap(), s);
    }
}
