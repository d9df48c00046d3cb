//! Replay: a captured request sent to its tunnel's local target again, optionally edited
//! (method, path, headers, body). The replay goes through the same capture as visitor traffic,
//! so it appears as a new entry that names the one it replays.
//!
//! The request is restated with `Content-Length` and `Connection: close`; its body is the edit,
//! else the captured body if it is whole in memory, else the spilled file streamed from disk.
//! A body that was cut and not spilled cannot be replayed unedited (`body_incomplete`).

use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::entry::{Entry, Headers};
use super::{Inspector, StoreEvent};

/// How long a replay may take, from dialling the target to its response's end.
pub const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);

/// Headers the replay restates instead of copying.
const RESTATED: [&str; 5] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "expect",
];

/// Changes to a replayed request; every field is optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Edits {
    /// Another method.
    pub method: Option<String>,
    /// Another request target (`/path?query`).
    pub path: Option<String>,
    /// Every header, in order, instead of the captured ones.
    pub headers: Option<Vec<(String, String)>>,
    /// Another body, as text.
    pub body: Option<String>,
    /// Another body, base64-encoded (binary).
    pub body_base64: Option<String>,
}

/// Why a replay did not happen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplayError {
    /// No entry has that id (never captured, evicted or cleared).
    #[error("no captured request has id {0}")]
    NotFound(u64),
    /// The entry's tunnel is not open in this client any more.
    #[error("tunnel {0} is not open")]
    NoTunnel(String),
    /// An edit is not a valid part of an HTTP request.
    #[error("{0}")]
    BadEdit(String),
    /// The captured body was cut and not spilled: it cannot be sent unedited.
    #[error("the captured body is incomplete ({0}); send an edited body instead")]
    BodyIncomplete(&'static str),
    /// The local target could not be reached, or broke the exchange.
    #[error("{0}")]
    Target(String),
    /// The target did not answer within [`REPLAY_TIMEOUT`].
    #[error("the target did not answer within {} s", REPLAY_TIMEOUT.as_secs())]
    Timeout,
}

impl ReplayError {
    /// The stable code the API answers with.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::NoTunnel(_) => "tunnel_closed",
            Self::BadEdit(_) => "bad_edit",
            Self::BodyIncomplete(_) => "body_incomplete",
            Self::Target(_) => "target_unreachable",
            Self::Timeout => "target_timeout",
        }
    }
}

/// The body to send.
enum Source {
    Memory(bytes::Bytes),
    File(std::path::PathBuf, u64),
}

impl Source {
    fn len(&self) -> u64 {
        match self {
            Self::Memory(bytes) => bytes.len() as u64,
            Self::File(_, len) => *len,
        }
    }
}

impl Inspector {
    /// Sends entry `id`'s request again with `edits`; returns the replay's entry.
    pub async fn replay(
        &self,
        id: u64,
        edits: Edits,
    ) -> Result<std::sync::Arc<Entry>, ReplayError> {
        let entry = self.get(id).ok_or(ReplayError::NotFound(id))?;
        if entry.request.version == "HTTP/2" {
            return Err(ReplayError::BadEdit(
                "an HTTP/2 exchange cannot be replayed: replay sends HTTP/1.1".into(),
            ));
        }
        let target = self
            .target_of(&entry.tunnel)
            .ok_or_else(|| ReplayError::NoTunnel(entry.tunnel.to_string()))?;
        let mut head = head_of(&entry, &edits)?;
        let body = body_of(&entry, &edits)?;
        head.extend_from_slice(restated(body.len()).as_bytes());
        let mut events = self.subscribe();
        let exchange = async {
            let (mut stream, replay_id) =
                target.open_replay(id).await.map_err(ReplayError::Target)?;
            send(&mut stream, &head, &body).await?;
            let replay_id = replay_id
                .await
                .map_err(|_| ReplayError::Target("the request was not captured".into()))?;
            // Reading drives the capture; the entry is stored when the response ends.
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                tokio::select! {
                    read = stream.read(&mut buf) => match read {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    },
                    event = events.recv() => {
                        if let Ok(StoreEvent::Entry(e)) = event && e.id == replay_id {
                            return Ok(e);
                        }
                    }
                }
            }
            drop(stream);
            self.get(replay_id)
                .ok_or_else(|| ReplayError::Target("the target closed without answering".into()))
        };
        tokio::time::timeout(REPLAY_TIMEOUT, exchange)
            .await
            .map_err(|_| ReplayError::Timeout)?
    }
}

async fn send(
    stream: &mut crate::target::TargetStream,
    head: &[u8],
    body: &Source,
) -> Result<(), ReplayError> {
    let failed =
        |e: std::io::Error| ReplayError::Target(format!("sending to the target failed: {e}"));
    stream.write_all(head).await.map_err(failed)?;
    match body {
        Source::Memory(bytes) => stream.write_all(bytes).await.map_err(failed)?,
        Source::File(path, _) => {
            let mut file = tokio::fs::File::open(path).await.map_err(failed)?;
            tokio::io::copy(&mut file, stream).await.map_err(failed)?;
        }
    }
    stream.flush().await.map_err(failed)
}

fn body_of(entry: &Entry, edits: &Edits) -> Result<Source, ReplayError> {
    if let Some(text) = &edits.body {
        return Ok(Source::Memory(bytes::Bytes::from(
            text.clone().into_bytes(),
        )));
    }
    if let Some(encoded) = &edits.body_base64 {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| ReplayError::BadEdit(format!("body_base64 is not base64: {e}")))?;
        return Ok(Source::Memory(decoded.into()));
    }
    let body = &entry.request.body;
    if body.on_disk()
        && let Some(file) = &body.spilled
    {
        return Ok(Source::File(file.path().to_path_buf(), body.size));
    }
    if !body.complete() {
        let why = body.cut.map_or("stream_closed", |c| c.as_str());
        return Err(ReplayError::BodyIncomplete(why));
    }
    Ok(Source::Memory(body.captured.clone()))
}

/// The request line and headers to send, edits applied and checked; [`restated`] ends it.
fn head_of(entry: &Entry, edits: &Edits) -> Result<Vec<u8>, ReplayError> {
    let method = edits.method.as_deref().unwrap_or(&entry.request.method);
    if method.is_empty() || !method.bytes().all(is_token) {
        return Err(ReplayError::BadEdit(format!(
            "method {method:?} is not a token"
        )));
    }
    let path = edits.path.as_deref().unwrap_or(&entry.request.path);
    let path_ok =
        (path.starts_with('/') || path == "*") && path.bytes().all(|b| b.is_ascii_graphic());
    if !path_ok {
        return Err(ReplayError::BadEdit(format!(
            "path {path:?} must start with / and hold no spaces or control characters"
        )));
    }
    let captured;
    let headers: &Headers = match &edits.headers {
        Some(edited) => edited,
        None => {
            captured = entry.request.headers();
            &captured
        }
    };
    let mut head = format!("{method} {path} HTTP/1.1\r\n").into_bytes();
    for (name, value) in headers {
        if name.is_empty() || !name.bytes().all(is_token) {
            return Err(ReplayError::BadEdit(format!(
                "header name {name:?} is not a token"
            )));
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(ReplayError::BadEdit(format!(
                "header {name} holds a line break"
            )));
        }
        if RESTATED.iter().any(|r| name.eq_ignore_ascii_case(r)) {
            continue;
        }
        head.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    Ok(head)
}

/// The framing headers the replay states itself, and the head's end.
fn restated(body_len: u64) -> String {
    format!("content-length: {body_len}\r\nconnection: close\r\n\r\n")
}

/// A `tchar` of RFC 9110 §5.6.2.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::entry::{Body, Request};

    fn entry(body: &[u8], cut: Option<crate::inspect::entry::Cut>) -> Entry {
        Entry {
            id: 7,
            tunnel: "demo".into(),
            started: std::time::SystemTime::now(),
            duration: Duration::ZERO,
            request: Request {
                method: "POST".into(),
                path: "/orders".into(),
                version: "HTTP/1.1",
                head: bytes::Bytes::from_static(
                    b"POST /orders HTTP/1.1\r\nHost: demo.localhost\r\nTransfer-Encoding: chunked\r\nX-Trace: 1\r\n\r\n",
                ),
                body: Body {
                    captured: bytes::Bytes::copy_from_slice(body),
                    size: body.len() as u64 + u64::from(cut.is_some()) * 10,
                    cut,
                    spilled: None,
                },
            },
            response: None,
            upgrade: None,
            error: None,
            replay_of: None,
        }
    }

    #[test]
    fn the_request_is_restated_with_its_length_and_a_close() {
        let e = entry(b"{\"a\":1}", None);
        let body = body_of(&e, &Edits::default()).expect("body");
        let mut head = head_of(&e, &Edits::default()).expect("head");
        head.extend_from_slice(restated(body.len()).as_bytes());
        let head = String::from_utf8(head).expect("utf8");
        assert_eq!(
            head,
            "POST /orders HTTP/1.1\r\nHost: demo.localhost\r\nX-Trace: 1\r\ncontent-length: 7\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn edits_replace_method_path_headers_and_body() {
        let e = entry(b"old", None);
        let edits = Edits {
            method: Some("PUT".into()),
            path: Some("/orders/2?dry=1".into()),
            headers: Some(vec![("X-Edited".into(), "yes".into())]),
            body: Some("new body".into()),
            body_base64: None,
        };
        let body = body_of(&e, &edits).expect("body");
        assert_eq!(body.len(), 8);
        let head = String::from_utf8(head_of(&e, &edits).expect("head")).expect("utf8");
        assert_eq!(head, "PUT /orders/2?dry=1 HTTP/1.1\r\nX-Edited: yes\r\n");
    }

    #[test]
    fn bad_edits_are_refused_with_the_reason() {
        let e = entry(b"", None);
        for edits in [
            Edits {
                method: Some("GE T".into()),
                ..Edits::default()
            },
            Edits {
                path: Some("no-slash".into()),
                ..Edits::default()
            },
            Edits {
                path: Some("/a b".into()),
                ..Edits::default()
            },
            Edits {
                headers: Some(vec![("X".into(), "a\r\nInjected: 1".into())]),
                ..Edits::default()
            },
            Edits {
                headers: Some(vec![("Bad Name".into(), "v".into())]),
                ..Edits::default()
            },
        ] {
            let error = head_of(&e, &edits).expect_err("refused");
            assert_eq!(error.code(), "bad_edit", "{edits:?}");
        }
        let bad = Edits {
            body_base64: Some("***".into()),
            ..Edits::default()
        };
        assert_eq!(body_of(&e, &bad).err().map(|e| e.code()), Some("bad_edit"));
    }

    #[test]
    fn a_cut_body_is_not_replayed_unedited() {
        let e = entry(b"part", Some(crate::inspect::entry::Cut::Cap));
        let error = body_of(&e, &Edits::default()).err().expect("refused");
        assert_eq!(error, ReplayError::BodyIncomplete("body_cap"));
        let edited = Edits {
            body: Some("whole".into()),
            ..Edits::default()
        };
        assert!(body_of(&e, &edited).is_ok());
    }
}
