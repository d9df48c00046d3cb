//! The inspector's web page and JSON API, on a loopback listener. Endpoints:
//!
//! | method and path | answer |
//! | --- | --- |
//! | `GET /` | the page (HTML, JS and CSS embedded in the binary) |
//! | `GET /api/requests` | summaries, newest first; filters `method`, `status` (`404` or `4xx`), `path` (substring), `tunnel`, `limit` |
//! | `GET /api/requests/{id}` | one entry with headers and bodies (text, or base64 when binary) |
//! | `GET /api/requests/{id}/request/body`, `.../response/body` | the body's bytes with its content type (the whole body when it was spilled); `?download=1` as an attachment |
//! | `POST /api/requests/{id}/replay` | sends it to the target again; optional JSON body of edits (`method`, `path`, `headers`, `body`, `body_base64`); answers the replay's summary |
//! | `GET /api/events` | server-sent events: `request` (a summary, new or updated), `clear`, `lagged` |
//! | `DELETE /api/requests` | removes every entry (204) |
//! | `GET /api/har` | HAR 1.2 of every entry, or of `?ids=3,5,8` |
//! | `GET /api/status` | entries, memory used and budget, body cap, spill use, drops |
//!
//! Errors are JSON `{"error": code, "message": ...}`. The listener takes loopback addresses only,
//! and answers 403 `host_forbidden` to a `Host` that is not loopback or `localhost` (a page
//! elsewhere that rebinds its DNS name to 127.0.0.1 cannot read it), and 403
//! `origin_forbidden` to a changing request (`POST`, `DELETE`) from another site's page.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::entry::{Body, Entry, Headers, header};
use super::replay::{Edits, ReplayError};
use super::{Inspector, StoreEvent};

const PAGE: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

/// Serves the page and API on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, inspector: Inspector, shutdown: CancellationToken) {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let served = axum::serve(listener, router(inspector))
        .with_graceful_shutdown(async move { shutdown.cancelled().await });
    if let Err(error) = served.await {
        tracing::warn!(%error, "inspector listener failed");
    }
}

/// The routes, for [`serve`] and for embedding under another server.
pub fn router(inspector: Inspector) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", PAGE) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route("/api/requests", get(list).delete(clear))
        .route("/api/requests/{id}", get(detail))
        .route("/api/requests/{id}/{side}/body", get(body))
        .route("/api/requests/{id}/replay", post(replay))
        .route("/api/events", get(events))
        .route("/api/har", get(har))
        .route("/api/status", get(status))
        .layer(middleware::from_fn(guard))
        .with_state(inspector)
}

fn asset(content_type: &'static str, text: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        text,
    )
        .into_response()
}

/// An error answer.
fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    let body = json!({ "error": code, "message": message.to_string() });
    (status, axum::Json(body)).into_response()
}

/// Loopback `Host` only; changing requests only from this page (or from scripts, which send
/// no `Origin`).
async fn guard(request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !is_local_authority(host) {
        let message =
            format!("the inspector answers to localhost or a loopback address, not {host:?}");
        return error(StatusCode::FORBIDDEN, "host_forbidden", message);
    }
    let changes = !matches!(*request.method(), Method::GET | Method::HEAD);
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    if changes && let Some(origin) = origin {
        let authority = origin.split_once("://").map_or("", |(_, rest)| rest);
        if !is_local_authority(authority) {
            let message = format!("changing requests from {origin} are refused");
            return error(StatusCode::FORBIDDEN, "origin_forbidden", message);
        }
    }
    next.run(request).await
}

/// `localhost`, `*.localhost` or a loopback address, with or without a port.
fn is_local_authority(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                authority
            }
        }),
    };
    let host = host.to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// `GET /api/requests` filters.
#[derive(Debug, Default, Deserialize)]
struct Filter {
    method: Option<String>,
    status: Option<String>,
    path: Option<String>,
    tunnel: Option<String>,
    limit: Option<usize>,
}

impl Filter {
    fn keeps(&self, entry: &Entry) -> bool {
        let method = self
            .method
            .as_ref()
            .is_none_or(|m| m.eq_ignore_ascii_case(&entry.request.method));
        let path = self
            .path
            .as_ref()
            .is_none_or(|p| entry.request.path.contains(p.as_str()));
        let tunnel = self.tunnel.as_ref().is_none_or(|t| **t == *entry.tunnel);
        let status = self
            .status
            .as_ref()
            .is_none_or(|s| status_matches(s, entry.status()));
        method && path && tunnel && status
    }
}

/// `404` matches 404; `4xx` matches 400–499; `none` matches an exchange without a response.
fn status_matches(filter: &str, status: Option<u16>) -> bool {
    let filter = filter.to_ascii_lowercase();
    let Some(status) = status else {
        return filter == "none";
    };
    match filter.strip_suffix("xx") {
        Some(class) => class.parse::<u16>().is_ok_and(|c| status / 100 == c),
        None => filter.parse::<u16>().is_ok_and(|s| s == status),
    }
}

async fn list(State(inspector): State<Inspector>, Query(filter): Query<Filter>) -> Response {
    let limit = filter.limit.unwrap_or(usize::MAX);
    let entries: Vec<Value> = inspector
        .entries()
        .iter()
        .filter(|e| filter.keeps(e))
        .take(limit)
        .map(|e| summary(e))
        .collect();
    axum::Json(entries).into_response()
}

fn found(inspector: &Inspector, id: &str) -> Result<std::sync::Arc<Entry>, Box<Response>> {
    let entry = id.parse::<u64>().ok().and_then(|id| inspector.get(id));
    entry.ok_or_else(|| {
        let message = format!("no captured request has id {id}");
        Box::new(error(StatusCode::NOT_FOUND, "not_found", message))
    })
}

async fn detail(State(inspector): State<Inspector>, Path(id): Path<String>) -> Response {
    match found(&inspector, &id) {
        Ok(entry) => axum::Json(full(&entry)).into_response(),
        Err(denied) => *denied,
    }
}

#[derive(Debug, Default, Deserialize)]
struct Download {
    download: Option<String>,
}

async fn body(
    State(inspector): State<Inspector>,
    Path((id, side)): Path<(String, String)>,
    Query(download): Query<Download>,
) -> Response {
    let entry = match found(&inspector, &id) {
        Ok(entry) => entry,
        Err(denied) => return *denied,
    };
    let (body, headers) = match (side.as_str(), &entry.response) {
        ("request", _) => (&entry.request.body, entry.request.headers()),
        ("response", Some(response)) => (&response.body, response.headers()),
        ("response", None) => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                "the exchange has no response",
            );
        }
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                "the side is request or response",
            );
        }
    };
    let content_type = header(&headers, "content-type").unwrap_or("application/octet-stream");
    // A spilled body streams from its file (it may be gigabytes); the entry, and with it the
    // file, is held until the stream ends.
    let mut response = match body.spilled.as_ref().filter(|_| body.on_disk()) {
        Some(file) => match tokio::fs::File::open(file.path()).await {
            Ok(opened) => {
                let held = entry.clone();
                let stream = tokio_util::io::ReaderStream::new(opened).map(move |chunk| {
                    let _ = &held;
                    chunk
                });
                axum::body::Body::from_stream(stream).into_response()
            }
            Err(e) => return error(StatusCode::GONE, "spill_unreadable", e),
        },
        None => body.captured.clone().into_response(),
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox",
        ),
    );
    if download.download.is_some() {
        let name = format!("attachment; filename=\"showoff-{id}-{side}.bin\"");
        if let Ok(value) = HeaderValue::from_str(&name) {
            headers.insert(header::CONTENT_DISPOSITION, value);
        }
    }
    if let Some(cut) = body.cut.filter(|_| !body.on_disk()) {
        headers.insert("x-showoff-body-cut", HeaderValue::from_static(cut.as_str()));
    }
    response
}

async fn replay(
    State(inspector): State<Inspector>,
    Path(id): Path<String>,
    headers: HeaderMap,
    text: axum::body::Bytes,
) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no captured request has id {id}"),
        );
    };
    let edits = if text.iter().all(u8::is_ascii_whitespace) {
        Edits::default()
    } else {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "bad_edit",
                "edits are sent as application/json",
            );
        }
        match serde_json::from_slice::<Edits>(&text) {
            Ok(edits) => edits,
            Err(e) => return error(StatusCode::BAD_REQUEST, "bad_edit", e),
        }
    };
    match inspector.replay(id, edits).await {
        Ok(entry) => axum::Json(summary(&entry)).into_response(),
        Err(e) => {
            let status = match e {
                ReplayError::NotFound(_) => StatusCode::NOT_FOUND,
                ReplayError::NoTunnel(_) | ReplayError::BodyIncomplete(_) => StatusCode::CONFLICT,
                ReplayError::BadEdit(_) => StatusCode::BAD_REQUEST,
                ReplayError::Target(_) => StatusCode::BAD_GATEWAY,
                ReplayError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            };
            error(status, e.code(), e)
        }
    }
}

async fn clear(State(inspector): State<Inspector>) -> StatusCode {
    inspector.clear();
    StatusCode::NO_CONTENT
}

async fn status(State(inspector): State<Inspector>) -> Response {
    axum::Json(inspector.status()).into_response()
}

#[derive(Debug, Default, Deserialize)]
struct HarQuery {
    ids: Option<String>,
}

async fn har(State(inspector): State<Inspector>, Query(query): Query<HarQuery>) -> Response {
    let mut entries = inspector.entries();
    if let Some(ids) = &query.ids {
        let wanted: Vec<u64> = ids
            .split(',')
            .filter_map(|id| id.trim().parse().ok())
            .collect();
        entries.retain(|e| wanted.contains(&e.id));
    }
    entries.reverse();
    let mut response = axum::Json(super::har::export(&entries)).into_response();
    response.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"showoff.har\""),
    );
    response
}

async fn events(
    State(inspector): State<Inspector>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = inspector.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(StoreEvent::Entry(entry)) => Event::default()
                .event("request")
                .data(summary(&entry).to_string()),
            Ok(StoreEvent::Cleared) => Event::default().event("clear").data("{}"),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                Event::default().event("lagged").data(missed.to_string())
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// Milliseconds to the microsecond: a loopback exchange can take less than 0.1 ms, and a
/// measured duration should not read as none.
fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// One entry in the list.
pub fn summary(e: &Entry) -> Value {
    let mut value = json!({
        "id": e.id,
        "tunnel": &*e.tunnel,
        "started": showoff_core::time::rfc3339(e.started),
        "method": e.request.method,
        "path": e.request.path,
        "status": e.status(),
        "duration_ms": millis(e.duration),
        "request_size": e.request_size(),
        "response_size": e.response_size(),
        "remote_addr": e.remote_addr(),
        "content_type": e.response.as_ref().and_then(|r| header(&r.headers(), "content-type").map(str::to_string)),
        "error": e.error,
        "replay_of": e.replay_of,
    });
    if let Some(upgrade) = e.upgrade {
        value["upgrade"] = json!({
            "bytes_in": upgrade.bytes_in,
            "bytes_out": upgrade.bytes_out,
            "open": upgrade.open,
        });
    }
    value
}

/// One entry with its heads and bodies.
pub fn full(e: &Entry) -> Value {
    let mut value = summary(e);
    value["request"] = json!({
        "method": e.request.method,
        "path": e.request.path,
        "version": e.request.version,
        "headers": headers(&e.request.headers()),
        "body": body_json(&e.request.body, &e.request.headers()),
    });
    if let Some(r) = &e.response {
        value["response"] = json!({
            "status": r.status,
            "reason": r.reason(),
            "version": r.version,
            "headers": headers(&r.headers()),
            "body": body_json(&r.body, &r.headers()),
            "waited_ms": millis(r.waited),
        });
    }
    value
}

fn headers(list: &Headers) -> Value {
    list.iter().map(|(n, v)| json!([n, v])).collect()
}

fn body_json(body: &Body, headers: &Headers) -> Value {
    let (encoding, data) = match std::str::from_utf8(&body.captured) {
        Ok(text) => ("text", text.to_string()),
        Err(_) => (
            "base64",
            base64::engine::general_purpose::STANDARD.encode(&body.captured),
        ),
    };
    json!({
        "size": body.size,
        "captured": body.captured.len(),
        "cut": body.cut.map(|c| c.as_str()),
        "spilled": body.on_disk(),
        "complete": body.complete(),
        "content_type": header(headers, "content-type"),
        "content_encoding": header(headers, "content-encoding"),
        "encoding": encoding,
        "data": data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_authorities_are_local() {
        for local in [
            "127.0.0.1:4040",
            "localhost:4040",
            "[::1]:4040",
            "LOCALHOST",
            "127.9.9.9",
            "app.localhost:1",
        ] {
            assert!(is_local_authority(local), "{local}");
        }
        for foreign in [
            "evil.example:4040",
            "192.0.2.1:4040",
            "",
            "localhost.evil.example",
            "[2001:db8::1]:4040",
        ] {
            assert!(!is_local_authority(foreign), "{foreign}");
        }
    }

    #[test]
    fn status_filters_take_codes_and_classes() {
        assert!(status_matches("404", Some(404)));
        assert!(status_matches("4xx", Some(418)));
        assert!(!status_matches("4xx", Some(500)));
        assert!(status_matches("none", None));
        assert!(!status_matches("200", None));
    }
}
