//! The operator dashboard on the admin listener: `/dashboard` (a page embedded in the binary,
//! no build step) and its data, `GET /dashboard/data` or `GET /api/v1/dashboard` (JSON):
//! sessions with their principals, transports and addresses; tunnels with request rate, error
//! rate, p50/p99 latency and bytes over the last minutes; refused sessions by code.
//!
//! Drawn from what `/api/v1/sessions`, `/api/v1/tunnels` and `/metrics` read: the session and
//! route tables, and the exchange events (through [`crate::stats::Recent`]). Behind the admin
//! token: `Authorization: Bearer <token>`, or HTTP basic auth with the token as the password,
//! so a browser asks for it once. Basic auth is taken for these reads only, never for a
//! request that changes anything, so a page elsewhere cannot make the browser act with it.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AdminContext;
use crate::stats::recent::{BUCKET, BUCKETS, TunnelFigures};

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");

/// `GET /dashboard`.
pub(crate) async fn page(State(ctx): State<Arc<AdminContext>>, headers: HeaderMap) -> Response {
    asset(&ctx, &headers, "text/html; charset=utf-8", PAGE)
}

/// `GET /dashboard/app.js`.
pub(crate) async fn script(State(ctx): State<Arc<AdminContext>>, headers: HeaderMap) -> Response {
    asset(&ctx, &headers, "text/javascript; charset=utf-8", SCRIPT)
}

fn asset(
    ctx: &AdminContext,
    headers: &HeaderMap,
    content_type: &'static str,
    text: &'static str,
) -> Response {
    if let Err(denied) = authorize_read(ctx, headers) {
        return *denied;
    }
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "no-store"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
        ),
    ];
    (headers, text).into_response()
}

/// `GET /dashboard/data` and `GET /api/v1/dashboard`.
pub(crate) async fn data(State(ctx): State<Arc<AdminContext>>, headers: HeaderMap) -> Response {
    if let Err(denied) = authorize_read(&ctx, &headers) {
        return *denied;
    }
    let mut response = axum::Json(snapshot(&ctx)).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

/// The admin token as a bearer token or as basic auth's password.
fn authorize_read(ctx: &AdminContext, headers: &HeaderMap) -> Result<(), Box<Response>> {
    super::check_token(ctx, headers, true)
}

/// A tunnel as `/api/v1/tunnels` shows it, with its principal and its last minutes.
#[derive(serde::Serialize)]
struct TunnelRow {
    #[serde(flatten)]
    view: super::TunnelView,
    principal: String,
    recent: Option<TunnelFigures>,
}

/// Everything the page shows, at this moment.
fn snapshot(ctx: &AdminContext) -> Value {
    let figures = ctx.stats.recent.figures();
    let mut tunnels: Vec<TunnelRow> = ctx
        .routes
        .all()
        .iter()
        .map(|t| TunnelRow {
            view: super::tunnel_view(t),
            principal: t.principal.to_string(),
            recent: figures.get(&t.info.name).cloned(),
        })
        .collect();
    tunnels.sort_by(|a, b| a.view.name.cmp(&b.view.name));
    let sessions: Vec<super::SessionView> = ctx
        .sessions
        .all()
        .iter()
        .map(|s| super::session_view(s))
        .collect();
    let rate: f64 = figures.values().map(|f| f.rate_1m).sum();
    let errors: f64 = figures.values().map(|f| f.rate_1m * f.error_rate_1m).sum();
    json!({
        "version": ctx.build.version,
        "draining": ctx.drain.stopping().is_cancelled(),
        "bucket_secs": BUCKET.as_secs(),
        "buckets": BUCKETS,
        "totals": {
            "sessions": sessions.len(),
            "tunnels": tunnels.len(),
            "rate_1m": rate,
            "error_rate_1m": if rate > 0.0 { errors / rate } else { 0.0 },
            "bytes_in_5m": figures.values().map(|f| f.bytes_in_5m).sum::<u64>(),
            "bytes_out_5m": figures.values().map(|f| f.bytes_out_5m).sum::<u64>(),
        },
        "sessions": sessions,
        "tunnels": tunnels,
        "refused": ctx.stats.recent.refusals(),
    })
}
