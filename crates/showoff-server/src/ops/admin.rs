//! The admin listener, for operators and probes (loopback by default). Endpoints:
//!
//! | method and path | answer |
//! | --- | --- |
//! | `GET /healthz` | 200 `ok` once every listener is bound (liveness) |
//! | `GET /readyz` | 200 `ready` once the server accepts and metrics are registered; 503 `draining` during a drain (readiness); 200 `ready, degraded: <why>` while the registry (a cluster's Redis) does not answer; 503 `partitioned: <why>` while this instance alone cannot reach it and fenced itself off |
//! | `GET /version` | JSON: version, commit, build date, rustc |
//! | `GET /metrics` | Prometheus text format; needs the admin token with `metrics_auth` |
//! | `GET /api/v1/sessions` | JSON list of sessions: id, principal, peer, age, tunnels; needs the admin token |
//! | `GET /api/v1/tunnels` | JSON list of tunnels: name, kind, public URL, port, session, target, idle time; needs the admin token |
//! | `PUT /api/v1/log-level` | body: a level or filter (`debug`, `showoff_server=trace`); needs the admin token |
//! | `GET /debug/pprof/profile?seconds=N` | CPU profile of N seconds (1–60) in pprof format; needs the admin token |
//! | `GET /dashboard` | the operator dashboard page ([`dashboard`]); the admin token as bearer or basic auth password |
//! | `GET /dashboard/data`, `GET /api/v1/dashboard` | JSON: sessions, tunnels with rates, errors, latency and bytes over the last 5 minutes, refused sessions by code; needs the admin token |
//!
//! Token-guarded endpoints answer 401 unless an admin token is configured and presented as
//! `Authorization: Bearer <admin token>` (with no token configured they are off, and say so).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::config::{BuildInfo, Secret};
use crate::drain::Drain;
use crate::state::{Routes, Sessions};
use crate::stats::Stats;

mod dashboard;

/// What the admin endpoints read, and nothing else.
pub(crate) struct AdminContext {
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) routes: Arc<Routes>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) build: BuildInfo,
    /// Bearer token of the guarded endpoints; `None` turns them off.
    pub(crate) token: Option<Secret>,
    /// `/metrics` is guarded too.
    pub(crate) metrics_auth: bool,
    pub(crate) log_control: Option<LogControl>,
    pub(crate) drain: Drain,
    /// Asked whether it serves claims, for `/readyz`.
    pub(crate) registry: Arc<dyn showoff_core::Registry>,
    /// Whether this instance fenced itself off its cluster, for `/readyz`.
    pub(crate) partition: Arc<crate::state::partition::Partition>,
}

/// Changes the process's log filter at run time (`PUT /api/v1/log-level`). The binary owns the
/// logger and hands this in; the library never touches global state itself.
#[derive(Clone)]
pub struct LogControl(std::sync::Arc<SetFilter>);

/// Applies a log filter, or says why it is not one.
type SetFilter = dyn Fn(&str) -> Result<(), String> + Send + Sync;

impl LogControl {
    /// Wraps a function that applies a filter such as `debug` or `showoff_server=trace`.
    pub fn new(set: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(set))
    }

    /// Applies `filter`.
    pub fn set(&self, filter: &str) -> Result<(), String> {
        (self.0)(filter)
    }
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogControl")
    }
}

/// Longest CPU profile one request may ask for.
pub const MAX_PROFILE_SECS: u64 = 60;

/// Serves the admin endpoints until the server stops.
pub(crate) async fn serve(listener: TcpListener, ctx: Arc<AdminContext>) {
    let stop = ctx.drain.stopping().clone();
    let app = router(ctx);
    let served =
        axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await });
    if let Err(error) = served.await {
        tracing::warn!(%error, "admin listener failed");
    }
}

fn router(ctx: Arc<AdminContext>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .route("/api/v1/sessions", get(sessions))
        .route("/api/v1/tunnels", get(tunnels))
        .route("/api/v1/log-level", put(log_level))
        .route("/debug/pprof/profile", get(profile))
        .route("/dashboard", get(dashboard::page))
        .route("/dashboard/app.js", get(dashboard::script))
        .route("/dashboard/data", get(dashboard::data))
        .route("/api/v1/dashboard", get(dashboard::data))
        .with_state(ctx)
}

async fn readyz(State(ctx): State<Arc<AdminContext>>) -> Response {
    if ctx.drain.is_leaving() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    if !ctx.drain.is_ready() {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response();
    }
    // Cut off alone: the other instances serve this one's names now.
    if let Some(why) = ctx.partition.reason() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response();
    }
    // Still ready: the tunnels already up serve every visitor that reaches this instance, and
    // a failing probe on every instance at once would take them all out of the balancer.
    if let Some(reason) = ctx.registry.unavailable() {
        let body = format!("ready, degraded: {reason}; new tunnels are refused until it answers\n");
        return (StatusCode::OK, body).into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

async fn version(State(ctx): State<Arc<AdminContext>>) -> Response {
    axum::Json(&ctx.build).into_response()
}

async fn metrics(State(ctx): State<Arc<AdminContext>>, headers: HeaderMap) -> Response {
    if ctx.metrics_auth
        && let Err(denied) = authorize(&ctx, &headers)
    {
        return *denied;
    }
    match ctx.stats.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("metrics encoding failed: {error}\n"),
        )
            .into_response(),
    }
}

/// One session as the API shows it.
#[derive(Debug, Serialize)]
struct SessionView {
    id: String,
    principal: String,
    peer: String,
    connected_secs: u64,
    tunnels: Vec<String>,
    /// `tcp` (dial-back), `mux` or `quic`.
    transport: &'static str,
}

async fn sessions(State(ctx): State<Arc<AdminContext>>, headers: HeaderMap) -> Response {
    if let Err(denied) = authorize(&ctx, &headers) {
        return *denied;
    }
    let views: Vec<SessionView> = ctx.sessions.all().iter().map(|s| session_view(s)).collect();
    axum::Json(views).into_response()
}

/// How `/api/v1/sessions` and the dashboard show a session.
fn session_view(s: &crate::state::Session) -> SessionView {
    SessionView {
        id: s.id.to_string(),
        principal: s.principal.id.clone(),
        peer: s.peer.to_string(),
        connected_secs: s.started.elapsed().as_secs(),
        tunnels: s.tunnel_names(),
        transport: s.transport.as_str(),
    }
}

/// One tunnel as the API shows it.
#[derive(Debug, Serialize)]
struct TunnelView {
    name: String,
    kind: &'static str,
    public_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    session: String,
    target: String,
    idle_secs: u64,
}

async fn tunnels(State(ctx): State<Arc<AdminContext>>, headers: HeaderMap) -> Response {
    if let Err(denied) = authorize(&ctx, &headers) {
        return *denied;
    }
    let mut views: Vec<TunnelView> = ctx.routes.all().iter().map(|t| tunnel_view(t)).collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    axum::Json(views).into_response()
}

/// How `/api/v1/tunnels` and the dashboard show a tunnel.
fn tunnel_view(t: &crate::state::Tunnel) -> TunnelView {
    TunnelView {
        name: t.info.name.clone(),
        kind: t.info.kind.as_str(),
        public_url: t.info.public_url.clone(),
        port: t.info.port,
        session: t.session_id.to_string(),
        target: t.spec.target.clone(),
        idle_secs: t.idle_for().as_secs(),
    }
}

/// Checks `Authorization: Bearer <admin token>`; `Err` is the response to send instead.
fn authorize(ctx: &AdminContext, headers: &HeaderMap) -> Result<(), Box<Response>> {
    check_token(ctx, headers, false)
}

/// Checks the admin token as a bearer token or, when `basic`, as HTTP basic auth's password
/// (any user name; a refusal then asks the browser for it). Basic auth is for the dashboard's
/// reads only: a browser sends it on its own, so nothing that changes state may take it.
fn check_token(ctx: &AdminContext, headers: &HeaderMap, basic: bool) -> Result<(), Box<Response>> {
    let Some(token) = &ctx.token else {
        let off = (
            StatusCode::UNAUTHORIZED,
            "disabled: no admin token is configured\n",
        );
        return Err(Box::new(off.into_response()));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| match v.split_once(' ') {
            Some(("Bearer", token)) => Some(token.as_bytes().to_vec()),
            Some(("Basic", encoded)) if basic => basic_password(encoded),
            _ => None,
        })
        .unwrap_or_default();
    if showoff_proto::id::constant_time_eq(&presented, token.expose().as_bytes()) {
        return Ok(());
    }
    let challenge = if basic {
        "Basic realm=\"showoff admin\", charset=\"UTF-8\""
    } else {
        "Bearer"
    };
    let mut denied = (StatusCode::UNAUTHORIZED, "admin token required\n").into_response();
    denied.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static(challenge),
    );
    Err(Box::new(denied))
}

/// The password of a basic auth value (`base64(user:password)`); any user name.
fn basic_password(encoded: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    Some(decoded[colon + 1..].to_vec())
}

async fn log_level(
    State(ctx): State<Arc<AdminContext>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(denied) = authorize(&ctx, &headers) {
        return *denied;
    }
    let Some(control) = &ctx.log_control else {
        return (
            StatusCode::NOT_IMPLEMENTED,
            "this server cannot change its log level\n",
        )
            .into_response();
    };
    let filter = String::from_utf8_lossy(&body).trim().to_string();
    match control.set(&filter) {
        Ok(()) => {
            tracing::info!(filter, "log level changed through the admin API");
            (StatusCode::OK, format!("log level set to {filter}\n")).into_response()
        }
        Err(error) => (
            StatusCode::BAD_REQUEST,
            format!("invalid log filter: {error}\n"),
        )
            .into_response(),
    }
}

/// Query of the profile endpoint.
#[derive(Debug, serde::Deserialize)]
struct ProfileQuery {
    seconds: Option<u64>,
}

async fn profile(
    State(ctx): State<Arc<AdminContext>>,
    headers: HeaderMap,
    Query(query): Query<ProfileQuery>,
) -> Response {
    if let Err(denied) = authorize(&ctx, &headers) {
        return *denied;
    }
    let seconds = query.seconds.unwrap_or(10);
    if !(1..=MAX_PROFILE_SECS).contains(&seconds) {
        return (
            StatusCode::BAD_REQUEST,
            format!("seconds must be 1 to {MAX_PROFILE_SECS}\n"),
        )
            .into_response();
    }
    match cpu_profile(Duration::from_secs(seconds)).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"showoff-cpu.pb\"",
                ),
            ],
            bytes,
        )
            .into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("profiling failed: {error}\n"),
        )
            .into_response(),
    }
}

/// Samples every thread at 99 Hz for `duration`; returns the pprof protobuf.
async fn cpu_profile(duration: Duration) -> Result<Vec<u8>, String> {
    use pprof::protos::Message;
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(99)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|e| e.to_string())?;
    tokio::time::sleep(duration).await;
    let report = guard.report().build().map_err(|e| e.to_string())?;
    let profile = report.pprof().map_err(|e| e.to_string())?;
    Ok(profile.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_gives_its_password() {
        // "admin:s3cret:with:colons"
        let encoded = "YWRtaW46czNjcmV0OndpdGg6Y29sb25z";
        assert_eq!(
            basic_password(encoded),
            Some(b"s3cret:with:colons".to_vec())
        );
        assert_eq!(basic_password("not base64!"), None);
        // "no-colon"
        assert_eq!(basic_password("bm8tY29sb24="), None);
    }
}
