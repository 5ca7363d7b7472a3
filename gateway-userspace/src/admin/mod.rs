//! The admin API: a small HTTP server for health, status and Prometheus metrics.
//!
//! The agent stays the only owner of the data plane: a handler sends a [`Request`] to the
//! agent's control loop and waits for the reply, so every answer is read fresh from the maps
//! at request time and nothing here touches aya. [`render_metrics`] is pure and works on a
//! [`Snapshot`], as does `gateway status`'s table ([`crate::report::render_status`]).
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, RawQuery, Request as HttpRequest, State},
    http::{HeaderMap, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use log::{error, info};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

mod client;
mod metrics;
mod snapshot;

pub use client::{Answer, ClientError, request, request_within};
pub use metrics::render_metrics;
pub use snapshot::*;

use crate::{
    config::{AdminConfig, AdminState},
    error::Chain,
    mapsync::SyncError,
    overrides::{BackendChange, Change, OverrideError},
};

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
    /// Change a backend's admin state or weight (an override of the file; see
    /// `crate::overrides`).
    Change {
        service: String,
        addr: IpAddr,
        change: BackendChange,
        reply: oneshot::Sender<Result<Change, ChangeError>>,
    },
    /// Re-read the config file, as SIGHUP does; the error if it is invalid.
    Reload(oneshot::Sender<Result<(), String>>),
    /// The body of `/protection`: limits, their counters, the sources over a limit now.
    Protection(oneshot::Sender<Result<ProtectionReport, String>>),
    /// The body of `/nat`: the full-NAT flows the query asks for.
    Nat {
        query: NatQuery,
        reply: oneshot::Sender<Result<NatReport, String>>,
    },
}

/// What `GET /nat` asks for: flows through a SNAT address (and port), from a client address
/// (and port), at most `limit` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatQuery {
    pub snat: Option<(IpAddr, Option<u16>)>,
    pub client: Option<(IpAddr, Option<u16>)>,
    pub limit: usize,
}

/// Flows `/nat` lists unless `limit` says otherwise, and the most it lists.
pub const NAT_LIMIT_DEFAULT: usize = 100;
pub const NAT_LIMIT_MAX: usize = 10_000;

/// `address` or `address:port` (IPv6 with a port in brackets: `[fd00::100]:40001`).
fn addr_and_port(v: &str) -> Option<(IpAddr, Option<u16>)> {
    if let Ok(a) = v.parse::<IpAddr>() {
        return Some((a, None));
    }
    v.parse::<std::net::SocketAddr>()
        .ok()
        .map(|s| (s.ip().to_canonical(), Some(s.port())))
}

/// `%XX` escapes decoded (a client may encode the brackets and colons of an address).
fn percent_decoded(v: &str) -> Option<String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Parses `/nat`'s query: `snat=ADDR[:PORT]`, `client=ADDR[:PORT]`, `limit=N`
/// (1..=`NAT_LIMIT_MAX`), each at most once; anything else is an error that says what.
pub fn parse_nat_query(q: Option<&str>) -> Result<NatQuery, String> {
    let mut query = NatQuery {
        snat: None,
        client: None,
        limit: NAT_LIMIT_DEFAULT,
    };
    let mut seen = Vec::new();
    for kv in q.unwrap_or("").split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("{kv:?} is not key=value"))?;
        if seen.contains(&k) {
            return Err(format!("{k} is given twice"));
        }
        seen.push(k);
        let v = percent_decoded(v).ok_or_else(|| format!("{k}: bad %-escape in {v:?}"))?;
        let addr = |v: &str| {
            addr_and_port(v).ok_or_else(|| format!("{k}: {v:?} is not an address or address:port"))
        };
        match k {
            "snat" => query.snat = Some(addr(&v)?),
            "client" => query.client = Some(addr(&v)?),
            "limit" => {
                query.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=NAT_LIMIT_MAX).contains(n))
                    .ok_or_else(|| format!("limit: {v:?} is not 1..={NAT_LIMIT_MAX}"))?;
            }
            other => {
                return Err(format!(
                    "unknown key {other:?} (snat, client and limit are known)"
                ));
            }
        }
    }
    Ok(query)
}

/// Whether `addr:port` matches a query's `(address, port)`.
pub fn nat_matches(want: Option<(IpAddr, Option<u16>)>, addr: IpAddr, port: u16) -> bool {
    want.is_none_or(|(a, p)| a == addr && p.is_none_or(|p| p == port))
}

/// Why a backend change through the API did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// No such service or backend, or a value out of range.
    #[error(transparent)]
    Refused(#[from] OverrideError),
    /// The maps could not be written: the change was undone, and the agent keeps running.
    #[error("the data plane's maps could not be written, so the change was undone")]
    Apply(#[source] SyncError),
}

/// Why the API's token could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("reading admin.token_file {}", .path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("admin.token_file {} is empty", .0.display())]
    Empty(std::path::PathBuf),
}

/// Who may call the API: with a token, writes (and reads, if `reads`) must carry
/// `Authorization: Bearer <token>`.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    pub token: Option<String>,
    pub reads: bool,
}

impl Auth {
    /// Reads `[admin] token_file`. An unreadable or empty file is an error: the API would
    /// otherwise be open, or closed to everyone.
    pub fn from_config(c: &AdminConfig) -> Result<Auth, TokenFileError> {
        let Some(path) = &c.token_file else {
            return Ok(Auth::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: path.clone(),
            source,
        })?;
        let token = text.trim().to_string();
        if token.is_empty() {
            return Err(TokenFileError::Empty(path.clone()));
        }
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(m) = std::fs::metadata(path)
            && m.permissions().mode() & 0o077 != 0
        {
            log::warn!(
                "admin.token_file {} is readable by others than its owner (chmod 600)",
                path.display()
            );
        }
        Ok(Auth {
            token: Some(token),
            reads: c.token_for_reads,
        })
    }

    fn allows(&self, write: bool, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        if !write && !self.reads {
            return true;
        }
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Compare in time independent of where the first difference is.
        given.len() == token.len()
            && given
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// Binds `listen` and serves until the runtime stops. A failure to bind is logged and the
/// agent keeps balancing without the API.
pub async fn spawn(listen: SocketAddr, auth: Auth, agent: mpsc::Sender<Request>) {
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            error!("admin API: cannot listen on {listen}: {e}; running without it");
            return;
        }
    };
    info!("admin API listening on {listen}");
    let app = router(agent, auth);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            error!("admin API stopped: {e}");
        }
    });
}

fn router(agent: mpsc::Sender<Request>, auth: Auth) -> Router {
    let auth = Arc::new(auth);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/protection", get(protection))
        .route("/nat", get(nat))
        .route("/ui", get(ui_page))
        .route("/ui/app.js", get(ui_script))
        .route("/ui/app.css", get(ui_style))
        .route("/backends/{service}/{addr}/state", post(set_state))
        .route("/backends/{service}/{addr}/weight", post(set_weight))
        .route("/reload", post(reload))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(move |req: HttpRequest, next: Next| {
            let auth = auth.clone();
            async move {
                let write = req.method() != Method::GET && req.method() != Method::HEAD;
                // Health probes stay open: a load balancer in front of the balancer checks them.
                // So does the status page's code (it holds no data; what it reads from the
                // API carries the token the operator typed into it).
                let open = matches!(
                    req.uri().path(),
                    "/healthz" | "/readyz" | "/ui" | "/ui/app.js" | "/ui/app.css"
                );
                if !open && !auth.allows(write, req.headers()) {
                    let mut r =
                        error_body(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
                    r.headers_mut()
                        .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
                    return r;
                }
                next.run(req).await
            }
        }))
        .with_state(agent)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateBody {
    state: AdminState,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightBody {
    weight: u32,
}

/// A JSON body of type `T`, or what is wrong with it.
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("bad request body: {e}"))
}

fn backend_addr(addr: &str) -> Result<IpAddr, String> {
    addr.parse()
        .map_err(|_| format!("{addr:?} is not an IP address"))
}

fn change_response(r: Result<Change, ChangeError>) -> Response {
    match r {
        Ok(c) => match serde_json::to_string(&c) {
            Ok(body) => json(StatusCode::OK, body),
            Err(e) => error_body(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        Err(ChangeError::Refused(
            e @ (OverrideError::NoService(_) | OverrideError::NoBackend { .. }),
        )) => error_body(StatusCode::NOT_FOUND, &e.to_string()),
        Err(ChangeError::Refused(e @ OverrideError::Weight(_))) => {
            error_body(StatusCode::BAD_REQUEST, &e.to_string())
        }
        Err(e @ ChangeError::Apply(_)) => {
            error_body(StatusCode::INTERNAL_SERVER_ERROR, &Chain(&e).to_string())
        }
    }
}

/// The one path of both backend endpoints: the address and the body (read by `parse`)
/// checked here, the change made by the control loop.
async fn change_backend(
    agent: &mpsc::Sender<Request>,
    service: String,
    addr: &str,
    change: Result<BackendChange, String>,
) -> Response {
    let (addr, change) = match (backend_addr(addr), change) {
        (Ok(a), Ok(c)) => (a, c),
        (Err(e), _) | (_, Err(e)) => return error_body(StatusCode::BAD_REQUEST, &e),
    };
    match ask(agent, |reply| Request::Change {
        service,
        addr,
        change,
        reply,
    })
    .await
    {
        Ok(r) => change_response(r),
        Err(r) => r,
    }
}

/// The body of `POST .../state`.
fn state_change(bytes: &[u8]) -> Result<BackendChange, String> {
    body::<StateBody>(bytes).map(|b| BackendChange::State(b.state))
}

/// The body of `POST .../weight`.
fn weight_change(bytes: &[u8]) -> Result<BackendChange, String> {
    body::<WeightBody>(bytes).map(|b| BackendChange::Weight(b.weight))
}

async fn set_state(
    State(agent): State<mpsc::Sender<Request>>,
    Path((service, addr)): Path<(String, String)>,
    bytes: Bytes,
) -> Response {
    change_backend(&agent, service, &addr, state_change(&bytes)).await
}

async fn set_weight(
    State(agent): State<mpsc::Sender<Request>>,
    Path((service, addr)): Path<(String, String)>,
    bytes: Bytes,
) -> Response {
    change_backend(&agent, service, &addr, weight_change(&bytes)).await
}

async fn reload(State(agent): State<mpsc::Sender<Request>>) -> Response {
    match ask(&agent, Request::Reload).await {
        Ok(Ok(())) => json(StatusCode::OK, r#"{"reloaded":true}"#.into()),
        // The file is wrong, not the request: 422 with the config errors.
        Ok(Err(e)) => error_body(StatusCode::UNPROCESSABLE_ENTITY, &e),
        Err(r) => r,
    }
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

/// `GET /status`; `?conntrack=0` leaves out the conntrack count (a walk of the whole map,
/// which the status page asks for only now and then).
async fn status(State(agent): State<mpsc::Sender<Request>>, RawQuery(q): RawQuery) -> Response {
    let count = !q.is_some_and(|q| q.split('&').any(|kv| kv == "conntrack=0"));
    match snapshot(&agent, count).await {
        Ok(s) => match serde_json::to_string(&s) {
            Ok(body) => json(StatusCode::OK, body),
            Err(e) => error_body(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        Err(r) => r,
    }
}

/// The status page's Content-Security-Policy: its own script and style only, requests to
/// this API only, no frames, no forms, no plugins.
pub const UI_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                          connect-src 'self'; img-src 'self'; base-uri 'none'; \
                          form-action 'none'; frame-ancestors 'none'";

/// One of the status page's files, embedded in the binary.
fn ui_asset(body: &'static str, content_type: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, UI_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn ui_page() -> Response {
    ui_asset(include_str!("ui/index.html"), "text/html; charset=utf-8")
}

async fn ui_script() -> Response {
    ui_asset(include_str!("ui/app.js"), "text/javascript; charset=utf-8")
}

async fn ui_style() -> Response {
    ui_asset(include_str!("ui/app.css"), "text/css; charset=utf-8")
}

async fn protection(State(agent): State<mpsc::Sender<Request>>) -> Response {
    match ask(&agent, Request::Protection).await {
        Ok(Ok(r)) => match serde_json::to_string(&r) {
            Ok(body) => json(StatusCode::OK, body),
            Err(e) => error_body(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        Ok(Err(e)) => error_body(StatusCode::INTERNAL_SERVER_ERROR, &e),
        Err(r) => r,
    }
}

/// `GET /nat?snat=ADDR[:PORT]&client=ADDR[:PORT]&limit=N`: full-NAT flows (a walk of the
/// NAT map).
async fn nat(State(agent): State<mpsc::Sender<Request>>, RawQuery(q): RawQuery) -> Response {
    let query = match parse_nat_query(q.as_deref()) {
        Ok(q) => q,
        Err(e) => return error_body(StatusCode::BAD_REQUEST, &e),
    };
    match ask(&agent, |reply| Request::Nat { query, reply }).await {
        Ok(Ok(r)) => match serde_json::to_string(&r) {
            Ok(body) => json(StatusCode::OK, body),
            Err(e) => error_body(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        Ok(Err(e)) => error_body(StatusCode::INTERNAL_SERVER_ERROR, &e),
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

#[cfg(test)]
mod tests {
    use super::{metrics::escape, *};
    use crate::testing::snapshot;

    #[test]
    fn the_probe_histogram_is_cumulative() {
        let m = render_metrics(&snapshot());
        for line in [
            "# TYPE gateway_probe_duration_seconds histogram",
            r#"gateway_probe_duration_seconds_bucket{service="web",le="0.001"} 3"#,
            r#"gateway_probe_duration_seconds_bucket{service="web",le="0.01"} 4"#,
            r#"gateway_probe_duration_seconds_bucket{service="web",le="+Inf"} 5"#,
            r#"gateway_probe_duration_seconds_sum{service="web"} 2.5"#,
            r#"gateway_probe_duration_seconds_count{service="web"} 5"#,
        ] {
            assert!(m.lines().any(|l| l == line), "{line} missing in\n{m}");
        }
    }

    #[test]
    fn announcements_are_gauges_per_vip() {
        let m = render_metrics(&snapshot());
        for line in [
            "# TYPE gateway_bgp_announced gauge",
            r#"gateway_bgp_announced{vip="198.18.1.1"} 1"#,
            r#"gateway_bgp_announced{vip="fd00:1::1"} 0"#,
            "gateway_bgp_errors_total 3",
        ] {
            assert!(m.lines().any(|l| l == line), "{line} missing in\n{m}");
        }
        let mut without = snapshot();
        without.bgp = None;
        assert!(!render_metrics(&without).contains("gateway_bgp"));
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
                assert!(
                    matches!(it.next(), Some("counter" | "gauge" | "histogram")),
                    "{line}"
                );
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = declared.last().map(String::as_str).unwrap();
                // A histogram's samples are <family>_bucket, _sum and _count.
                let ok = name == family
                    || ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|suffix| name == format!("{family}{suffix}"));
                assert!(ok, "{line} after family {family}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
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
            "gateway_backend_syns_total",
            "gateway_table_rebuilds_total",
            "gateway_reloads_total",
            "gateway_map_write_errors_total",
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
        has(r#"gateway_service_changed_slots{service="we\"b\\x\n"} 7"#);
        has(r#"gateway_backend_packets_total{service="we\"b\\x\n",backend="198.18.0.11"} 10"#);
        has(r#"gateway_backend_bytes_total{service="we\"b\\x\n",backend="198.18.0.11"} 600"#);
        has(r#"gateway_backend_new_flows_total{service="we\"b\\x\n",backend="198.18.0.11"} 5"#);
        has(r#"gateway_backend_up{service="we\"b\\x\n",backend="198.18.0.11"} 1"#);
        has(r#"gateway_backend_up{service="we\"b\\x\n",backend="198.18.0.12"} 0"#);
        has(r#"gateway_backend_transitions_total{service="we\"b\\x\n",backend="198.18.0.12"} 3"#);
        has(
            r#"gateway_backend_syns_total{service="we\"b\\x\n",backend="198.18.0.12",result="refused"} 4"#,
        );
        has(
            r#"gateway_backend_syns_total{service="we\"b\\x\n",backend="198.18.0.11",result="answered"} 10"#,
        );
        has("gateway_table_rebuilds_total 2");
        has(r#"gateway_reloads_total{result="ok"} 1"#);
        has(r#"gateway_reloads_total{result="error"} 0"#);
        has(r#"gateway_service_limit_dropped_total{service="we\"b\\x\n",limit="new_flows"} 3"#);
        has(r#"gateway_service_limit_monitored_total{service="we\"b\\x\n",limit="packets"} 0"#);
    }

    /// GET `path` from `addr`: status code and body.
    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        request(addr, "GET", path, "", "").await
    }

    /// Any request through the API's one client (on a blocking thread), with an
    /// `Authorization` value and a body.
    async fn request(
        addr: SocketAddr,
        method: &str,
        path: &str,
        authorization: &str,
        body: &str,
    ) -> (u16, String) {
        let (method, path) = (method.to_string(), path.to_string());
        let (authorization, body) = (authorization.to_string(), body.to_string());
        tokio::task::spawn_blocking(move || {
            let auth = (!authorization.is_empty()).then_some(authorization.as_str());
            let body = (method != "GET").then_some(body.as_str());
            let a = super::request(addr, &method, &path, auth, body).unwrap();
            (a.code, a.body)
        })
        .await
        .unwrap()
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
        spawn(addr, Auth::default(), tx).await;
        // Stands in for the agent's loop: not ready yet, then a snapshot.
        let agent = tokio::spawn(async move {
            let mut ready = false;
            while let Some(req) = rx.recv().await {
                match req {
                    Request::Ready(r) => {
                        let _ = r.send(ready);
                        ready = true;
                    }
                    Request::Snapshot { reply, conntrack } => {
                        let mut s = snapshot();
                        if !conntrack {
                            s.dataplane.conntrack_entries = None;
                        }
                        let _ = reply.send(Ok(s));
                    }
                    Request::Protection(reply) => {
                        let _ = reply.send(Ok(crate::testing::protection_report()));
                    }
                    // Echoes the query it was given, so the test sees it parsed.
                    Request::Nat { query, reply } => {
                        let _ = reply.send(Ok(NatReport {
                            matched: query.limit,
                            mappings: vec![NatMapping {
                                service: "web".into(),
                                protocol: "tcp".into(),
                                client: format!("{:?}", query.client),
                                vip: String::new(),
                                snat: format!("{:?}", query.snat),
                                backend: String::new(),
                                state: "established".into(),
                                idle_seconds: 0,
                                retried: false,
                            }],
                        }));
                    }
                    other => panic!("unexpected {other:?}"),
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
        // /nat parses its query (escaped or not) or says what is wrong with it.
        let (code, body) = get(addr, "/nat?snat=%5Bfd00%3A%3A100%5D%3A40001&limit=7").await;
        assert_eq!(code, 200, "{body}");
        let r: NatReport = serde_json::from_str(&body).unwrap();
        assert_eq!(r.matched, 7);
        assert_eq!(r.mappings[0].snat, "Some((fd00::100, Some(40001)))");
        let (code, body) = get(addr, "/nat?client=198.18.5.1").await;
        assert_eq!(code, 200, "{body}");
        let (code, body) = get(addr, "/nat?clinet=198.18.5.1").await;
        assert_eq!(code, 400);
        assert!(
            body.contains("unknown key") && body.contains("clinet"),
            "{body}"
        );
        let (code, body) = get(addr, "/nat?limit=0").await;
        assert!(code == 400 && body.contains("limit"), "{body}");
        // The status page leaves the conntrack walk out of most polls.
        let (code, body) = get(addr, "/status?conntrack=0").await;
        assert_eq!(code, 200);
        let light: Snapshot = serde_json::from_str(&body).unwrap();
        assert_eq!(light.dataplane.conntrack_entries, None);
        assert!(snapshot().dataplane.conntrack_entries.is_some());
        let (code, body) = get(addr, "/protection").await;
        assert_eq!(code, 200);
        assert_eq!(
            serde_json::from_str::<ProtectionReport>(&body).unwrap(),
            crate::testing::protection_report()
        );
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
        let (tx, mut rx) = mpsc::channel(1);
        spawn(taken.local_addr().unwrap(), Auth::default(), tx).await;
        // The API gave up: its side of the channel is gone, which tells the loop to stop
        // listening for requests (and nothing else stops).
        let closed = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert!(
            matches!(closed, Ok(None)),
            "the API still holds the channel"
        );
        assert!(taken.local_addr().is_ok());
    }

    /// A stand-in loop for write requests: knows service "web" with backend 198.18.0.11;
    /// a reload fails while `bad` is set.
    fn write_loop(mut rx: mpsc::Receiver<Request>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let file: crate::config::Config = crate::config::Config::parse(
                "[dataplane]\ninterface = \"eth0\"\n[[service]]\nname = \"web\"\n\
                 vip = \"198.18.1.1\"\nport = 80\nprotocol = \"tcp\"\nmode = \"l2dsr\"\n\
                 [[service.backend]]\naddress = \"198.18.0.11\"\n",
                std::path::Path::new("t.toml"),
            )
            .unwrap();
            let mut o = crate::overrides::Overrides::default();
            let mut reloads = 0;
            while let Some(req) = rx.recv().await {
                match req {
                    Request::Change {
                        service,
                        addr,
                        change,
                        reply,
                    } => {
                        let _ = reply.send(
                            o.set(&file, &service, addr, change)
                                .map_err(ChangeError::from),
                        );
                    }
                    Request::Reload(reply) => {
                        reloads += 1;
                        let _ = reply.send(if reloads == 1 {
                            Ok(())
                        } else {
                            Err("t.toml:3: service.port: 0 is outside 1..=65535".into())
                        });
                    }
                    Request::Ready(r) => {
                        let _ = r.send(true);
                    }
                    Request::Snapshot { reply, .. } => {
                        let _ = reply.send(Ok(snapshot()));
                    }
                    Request::Protection(reply) => {
                        let _ = reply.send(Err("not here".into()));
                    }
                    Request::Nat { reply, .. } => {
                        let _ = reply.send(Err("not here".into()));
                    }
                }
            }
        })
    }

    #[tokio::test]
    async fn writes_change_backends_and_bad_requests_get_4xx_json() {
        let addr = free_port();
        let (tx, rx) = mpsc::channel(8);
        spawn(addr, Auth::default(), tx).await;
        let agent = write_loop(rx);
        let post = |path: &'static str, body: &'static str| request(addr, "POST", path, "", body);
        let (code, body) = post("/backends/web/198.18.0.11/state", r#"{"state":"drain"}"#).await;
        assert_eq!(code, 200, "{body}");
        let c: Change = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (c.from.as_str(), c.to.as_str(), c.source.as_str()),
            ("ready", "drain", "api")
        );
        let (code, body) = post("/backends/web/198.18.0.11/weight", r#"{"weight":7}"#).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(
            post("/reload", "").await,
            (200, r#"{"reloaded":true}"#.into())
        );

        // Every bad request: a 4xx with a JSON error, and the API keeps serving.
        for (path, body, want) in [
            (
                "/backends/web/198.18.0.11/state",
                r#"{"state":"sleep"}"#,
                400,
            ),
            (
                "/backends/web/198.18.0.11/state",
                r#"{"state":"drain","x":1}"#,
                400,
            ),
            ("/backends/web/198.18.0.11/state", "not json", 400),
            ("/backends/web/198.18.0.11/state", "", 400),
            ("/backends/web/198.18.0.11/weight", r#"{"weight":0}"#, 400),
            ("/backends/web/198.18.0.11/weight", r#"{"weight":-1}"#, 400),
            (
                "/backends/web/198.18.0.11/weight",
                r#"{"weight":"10"}"#,
                400,
            ),
            ("/backends/web/not-an-ip/state", r#"{"state":"drain"}"#, 400),
            (
                "/backends/nope/198.18.0.11/state",
                r#"{"state":"drain"}"#,
                404,
            ),
            ("/backends/web/198.18.0.99/weight", r#"{"weight":5}"#, 404),
            ("/backends/web/state", r#"{"state":"drain"}"#, 404),
            ("/reload", "", 422),
        ] {
            let (code, text) = post(path, body).await;
            assert_eq!(code, want, "{path} {body}: {text}");
            let v: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{path} {body}: not JSON ({e}): {text}"));
            assert!(v["error"].is_string(), "{path} {body}: {text}");
        }
        let (code, text) = request(addr, "GET", "/reload", "", "").await;
        assert_eq!(code, 405, "{text}");
        let (code, text) = request(addr, "DELETE", "/status", "", "").await;
        assert_eq!(code, 405, "{text}");
        assert_eq!(get(addr, "/healthz").await.0, 200);
        agent.abort();
    }

    #[tokio::test]
    async fn a_token_guards_writes_and_optionally_reads() {
        for reads in [false, true] {
            let addr = free_port();
            let (tx, rx) = mpsc::channel(8);
            let auth = Auth {
                token: Some("s3cret-token".into()),
                reads,
            };
            spawn(addr, auth, tx).await;
            let agent = write_loop(rx);
            let path = "/backends/web/198.18.0.11/state";
            let body = r#"{"state":"drain"}"#;
            for bad in ["", "Bearer wrong", "s3cret-token", "Bearer s3cret-tokenX"] {
                let (code, text) = request(addr, "POST", path, bad, body).await;
                assert_eq!(code, 401, "{bad:?}: {text}");
                assert!(text.contains("\"error\""), "{text}");
            }
            let good = "Bearer s3cret-token";
            assert_eq!(request(addr, "POST", path, good, body).await.0, 200);
            // Reads: open unless `reads`; health checks always open.
            let want = if reads { 401 } else { 200 };
            assert_eq!(get(addr, "/status").await.0, want);
            assert_eq!(get(addr, "/metrics").await.0, want);
            assert_eq!(request(addr, "GET", "/status", good, "").await.0, 200);
            assert_eq!(get(addr, "/healthz").await.0, 200);
            // The status page's files hold no data: open, so a browser can load them.
            for page in ["/ui", "/ui/app.js", "/ui/app.css"] {
                assert_eq!(get(addr, page).await.0, 200, "{page}");
            }
            agent.abort();
        }
    }

    /// The page and its files come with a strict policy and their types; the page loads
    /// its script and style from this server only, and nothing inline.
    #[tokio::test]
    async fn the_status_page_is_served_with_its_policy() {
        let addr = free_port();
        let (tx, _rx) = mpsc::channel(8);
        spawn(addr, Auth::default(), tx).await;
        let raw = |path: &'static str| {
            tokio::task::spawn_blocking(move || {
                use std::io::{Read as _, Write as _};
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                write!(
                    s,
                    "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                .unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).unwrap();
                out
            })
        };
        for (path, ctype) in [
            ("/ui", "text/html"),
            ("/ui/app.js", "text/javascript"),
            ("/ui/app.css", "text/css"),
        ] {
            let text = raw(path).await.unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let head = head.to_ascii_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
            assert!(
                head.contains(&format!("content-type: {ctype}")),
                "{path}: {head}"
            );
            assert!(
                head.contains(&format!(
                    "content-security-policy: {}",
                    UI_CSP.to_ascii_lowercase()
                )),
                "{path}: {head}"
            );
            assert!(head.contains("x-content-type-options: nosniff"), "{head}");
            assert!(!body.is_empty());
        }
        let page = raw("/ui").await.unwrap();
        assert!(page.contains(r#"<script src="/ui/app.js" defer></script>"#));
        assert!(
            !page.contains("<script>") && !page.contains("style="),
            "nothing inline"
        );
    }

    #[test]
    fn the_token_file_must_hold_a_token() {
        let dir = std::env::temp_dir().join(format!("gateway-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token");
        let cfg = |p: &std::path::Path| AdminConfig {
            token_file: Some(p.to_path_buf()),
            ..AdminConfig::default()
        };
        assert!(Auth::from_config(&cfg(&f)).is_err(), "missing file");
        std::fs::write(&f, "  \n").unwrap();
        let e = Auth::from_config(&cfg(&f)).unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
        std::fs::write(&f, "abc\n").unwrap();
        assert_eq!(
            Auth::from_config(&cfg(&f)).unwrap().token.as_deref(),
            Some("abc")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn snapshot_round_trips_through_json() {
        let s = snapshot();
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Snapshot>(&text).unwrap(), s);
    }

    /// Random and mutated request bodies for the backend endpoints (fixed seed).
    fn mutated_bodies(n: usize) -> Vec<Vec<u8>> {
        const SEEDS: &[&str] = &[
            r#"{"state":"drain"}"#,
            r#"{"state":"ready"}"#,
            r#"{"weight":7}"#,
            r#"{"weight":10000}"#,
            r#"{"state":"maint","weight":1}"#,
            "",
            "null",
            "[]",
        ];
        const ODD: &[&str] = &[
            "\"",
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            "\0",
            "é",
            "\u{1F600}",
            "\\u0000",
            "-1",
            "1e999",
            "4294967296",
            "null",
            "true",
            "\"\"",
            "\\",
            " ",
            "\n",
        ];
        let mut x = 0x5eed_0fb0_d1e5_u64;
        let mut next = move |m: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % m as u64) as usize
        };
        (0..n)
            .map(|_| {
                let mut b = SEEDS[next(SEEDS.len())].as_bytes().to_vec();
                for _ in 0..1 + next(4) {
                    let at = next(b.len() + 1);
                    match next(4) {
                        0 if !b.is_empty() => {
                            b.remove(at.min(b.len() - 1));
                        }
                        1 => {
                            let o = ODD[next(ODD.len())].as_bytes();
                            b.splice(at..at, o.iter().copied());
                        }
                        2 => b.insert(at, next(256) as u8),
                        _ => b.truncate(at),
                    }
                }
                b
            })
            .collect()
    }

    /// The body parsers return a change or an error for any bytes, never panic.
    #[test]
    fn mutated_bodies_are_a_change_or_an_error() {
        let (mut ok, mut err) = (0, 0);
        for b in mutated_bodies(5000) {
            for parse in [state_change, weight_change] {
                match parse(&b) {
                    // The range of a weight is the override's to check (a 400 there).
                    Ok(_) => ok += 1,
                    Err(e) => {
                        assert!(e.starts_with("bad request body"), "{e}");
                        err += 1;
                    }
                }
            }
        }
        assert!(ok > 20 && err > 5000, "ok {ok}, errors {err}");
    }

    /// The same bodies through the HTTP server: every answer is JSON with a 2xx or 4xx
    /// status, and the server keeps answering.
    #[tokio::test]
    async fn mutated_bodies_over_http_get_json_answers() {
        let addr = free_port();
        let (tx, rx) = mpsc::channel(8);
        spawn(addr, Auth::default(), tx).await;
        let agent = write_loop(rx);
        for (i, b) in mutated_bodies(300).into_iter().enumerate() {
            let path = if i % 2 == 0 {
                "/backends/web/198.18.0.11/state"
            } else {
                "/backends/web/198.18.0.11/weight"
            };
            let body = String::from_utf8_lossy(&b).into_owned();
            let (code, text) = request(addr, "POST", path, "", &body).await;
            assert!(
                code == 200 || (400..500).contains(&code),
                "{path} {body:?}: {code} {text}"
            );
            let v: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{path} {body:?}: not JSON ({e}): {text}"));
            assert!(code == 200 || v["error"].is_string(), "{text}");
        }
        assert_eq!(get(addr, "/healthz").await.0, 200);
        agent.abort();
    }

    #[test]
    fn nat_queries_parse_or_say_what_is_wrong() {
        let q = parse_nat_query(Some("snat=198.18.0.100:40001&client=fd00:5::1&limit=3")).unwrap();
        assert_eq!(
            q,
            NatQuery {
                snat: Some(("198.18.0.100".parse().unwrap(), Some(40001))),
                client: Some(("fd00:5::1".parse().unwrap(), None)),
                limit: 3,
            }
        );
        assert_eq!(parse_nat_query(None).unwrap().limit, NAT_LIMIT_DEFAULT);
        for (bad, says) in [
            ("snat=1.2.3", "not an address"),
            ("snat=[fd00::1]", "not an address"),
            ("limit=10001", "limit"),
            ("limit=-1", "limit"),
            ("snat=1.2.3.4&snat=1.2.3.4", "twice"),
            ("snat", "key=value"),
            ("snat=%zz", "escape"),
            ("snat=%c3", "escape"),
            ("port=80", "unknown key"),
        ] {
            let e = parse_nat_query(Some(bad)).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(nat_matches(None, "1.2.3.4".parse().unwrap(), 9));
        let want = Some(("1.2.3.4".parse().unwrap(), Some(9)));
        assert!(nat_matches(want, "1.2.3.4".parse().unwrap(), 9));
        assert!(!nat_matches(want, "1.2.3.4".parse().unwrap(), 8));
    }

    /// Random queries (a fixed seed) from the characters queries are made of: parsed or
    /// refused with a message, never a panic, and what parses is in range.
    #[test]
    fn mutated_nat_queries_never_panic() {
        const PIECES: [&str; 16] = [
            "snat=",
            "client=",
            "limit=",
            "&",
            "=",
            "%",
            "%5B",
            "%3A",
            "[",
            "]",
            ":",
            "::",
            "198.18.0.100",
            "fd00::1",
            "40001",
            "99999999999999999999",
        ];
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        let (mut ok, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let q: String = (0..next(8)).map(|_| PIECES[next(PIECES.len())]).collect();
            match parse_nat_query(Some(&q)) {
                Ok(p) => {
                    ok += 1;
                    assert!((1..=NAT_LIMIT_MAX).contains(&p.limit), "{q}");
                }
                Err(e) => {
                    refused += 1;
                    assert!(!e.is_empty(), "{q}");
                }
            }
        }
        assert!(ok > 100 && refused > 100, "ok {ok}, refused {refused}");
    }
}
