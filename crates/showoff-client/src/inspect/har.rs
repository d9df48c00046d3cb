//! HAR 1.2 export of captured entries (`GET /api/har`), for browsers' network panels and
//! HAR viewers. Bodies are exported as far as they were captured; a cut body says so in the
//! entry's `comment`.

use base64::Engine;
use serde_json::{Value, json};

use super::entry::{Body, Entry, Headers, header};

/// The HAR document of `entries` (in the order given).
pub fn export(entries: &[std::sync::Arc<Entry>]) -> Value {
    json!({
        "log": {
            "version": "1.2",
            "creator": { "name": "showoff", "version": env!("CARGO_PKG_VERSION") },
            "entries": entries.iter().map(|e| entry(e)).collect::<Vec<_>>(),
        }
    })
}

fn entry(e: &Entry) -> Value {
    let total = e.duration.as_secs_f64() * 1000.0;
    let wait = e
        .response
        .as_ref()
        .map_or(total, |r| r.waited.as_secs_f64() * 1000.0);
    let mut value = json!({
        "startedDateTime": showoff_core::time::rfc3339(e.started),
        "time": total,
        "request": request(e),
        "response": response(e),
        "cache": {},
        "timings": { "send": 0, "wait": wait, "receive": (total - wait).max(0.0) },
    });
    let cuts: Vec<String> = [
        ("request", &e.request.body),
        (
            "response",
            &e.response
                .as_ref()
                .map(|r| r.body.clone())
                .unwrap_or_default(),
        ),
    ]
    .iter()
    .filter_map(|(side, body)| {
        body.cut.map(|cut| {
            format!(
                "{side} body cut ({}) after {} of {} bytes",
                cut.as_str(),
                body.captured.len(),
                body.size
            )
        })
    })
    .collect();
    if !cuts.is_empty() {
        value["comment"] = cuts.join("; ").into();
    }
    value
}

fn headers(list: &Headers) -> Value {
    list.iter()
        .map(|(name, value)| json!({ "name": name, "value": value }))
        .collect()
}

fn request(e: &Entry) -> Value {
    let fields = e.request.headers();
    let host = header(&fields, "host").unwrap_or("localhost");
    let scheme = header(&fields, "x-forwarded-proto").unwrap_or("http");
    let url = format!("{scheme}://{host}{}", e.request.path);
    let query: Vec<Value> = e
        .request
        .path
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            json!({ "name": name, "value": value })
        })
        .collect();
    let mut value = json!({
        "method": e.request.method,
        "url": url,
        "httpVersion": e.request.version,
        "cookies": [],
        "headers": headers(&fields),
        "queryString": query,
        "headersSize": e.request.head.len(),
        "bodySize": e.request.body.size,
    });
    if e.request.body.size > 0 {
        let mime = header(&fields, "content-type").unwrap_or("application/octet-stream");
        let (text, _) = text_of(&e.request.body);
        value["postData"] = json!({ "mimeType": mime, "text": text });
    }
    value
}

fn response(e: &Entry) -> Value {
    let Some(r) = &e.response else {
        return json!({
            "status": 0, "statusText": "", "httpVersion": "HTTP/1.1", "cookies": [], "headers": [],
            "content": { "size": 0, "mimeType": "x-unknown" }, "redirectURL": "",
            "headersSize": -1, "bodySize": -1,
            "_error": e.error.unwrap_or("no response"),
        });
    };
    let fields = r.headers();
    let mime = header(&fields, "content-type").unwrap_or("application/octet-stream");
    let (text, encoding) = text_of(&r.body);
    let mut content = json!({ "size": r.body.size, "mimeType": mime, "text": text });
    if let Some(encoding) = encoding {
        content["encoding"] = encoding.into();
    }
    json!({
        "status": r.status,
        "statusText": r.reason(),
        "httpVersion": r.version,
        "cookies": [],
        "headers": headers(&fields),
        "content": content,
        "redirectURL": header(&fields, "location").unwrap_or(""),
        "headersSize": r.head.len(),
        "bodySize": r.body.size,
    })
}

/// The captured bytes as text, or base64 with its encoding named.
fn text_of(body: &Body) -> (String, Option<&'static str>) {
    match std::str::from_utf8(&body.captured) {
        Ok(text) => (text.to_string(), None),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(&body.captured),
            Some("base64"),
        ),
    }
}
