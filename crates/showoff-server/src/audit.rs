//! Audit events: who did what, from where, with which names, when, and how it ended.
//!
//! The server emits an [`AuditEvent`] for every authentication (accepted or refused), session
//! refusal, tunnel opened and closed, name takeover and revocation. Where they go is the
//! embedder's choice through [`AuditSink`]; the binary appends them to a JSON-lines file
//! (`--audit-log`). Events are rare (per session and tunnel, never per request).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

/// One audited fact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    /// UTC time, RFC 3339 with milliseconds.
    pub time: String,
    /// `auth_ok`, `auth_failed`, `session_refused`, `tunnel_opened`, `tunnel_closed`,
    /// `takeover`, `revoked`.
    pub event: &'static str,
    /// The principal, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The client's address, when the event comes from a connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The session concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Tunnel names concerned.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// `ok` or `refused`.
    pub outcome: &'static str,
    /// Stable refusal code, for refusals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Details for a person.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl AuditEvent {
    /// An event of kind `event` with outcome `ok`, stamped now.
    pub(crate) fn new(event: &'static str) -> Self {
        Self {
            time: rfc3339(SystemTime::now()),
            event,
            principal: None,
            peer: None,
            session: None,
            names: Vec::new(),
            outcome: "ok",
            code: None,
            message: None,
        }
    }

    pub(crate) fn principal(mut self, principal: &str) -> Self {
        self.principal = Some(principal.to_string());
        self
    }

    pub(crate) fn peer(mut self, peer: SocketAddr) -> Self {
        self.peer = Some(peer.to_string());
        self
    }

    pub(crate) fn session(mut self, session: &str) -> Self {
        self.session = Some(session.to_string());
        self
    }

    pub(crate) fn names(mut self, names: Vec<String>) -> Self {
        self.names = names;
        self
    }

    pub(crate) fn refused(mut self, code: &str, message: &str) -> Self {
        self.outcome = "refused";
        self.code = Some(code.to_string());
        self.message = Some(message.to_string());
        self
    }

    pub(crate) fn message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }
}

/// Receives audit events; must not block for long (it is called on the serving path).
pub trait AuditSink: Send + Sync + 'static {
    /// Records one event.
    fn record(&self, event: &AuditEvent);
}

/// A cloneable handle to an [`AuditSink`], handed to the server with its services; the
/// default records nothing.
#[derive(Clone, Default)]
pub struct AuditLog(Option<Arc<dyn AuditSink>>);

impl AuditLog {
    /// Wraps a sink.
    pub fn new(sink: impl AuditSink) -> Self {
        Self(Some(Arc::new(sink)))
    }

    /// Hands `event` to the sink, if there is one.
    pub(crate) fn record(&self, event: AuditEvent) {
        if let Some(sink) = &self.0 {
            sink.record(&event);
        }
    }
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditLog")
    }
}

pub use showoff_core::time::rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialise_without_empty_fields() {
        let event = AuditEvent::new("auth_failed")
            .peer("192.0.2.1:4000".parse().expect("addr"))
            .refused("auth_failed", "the token was not accepted");
        let json = serde_json::to_string(&event).expect("json");
        assert!(
            json.contains("\"event\":\"auth_failed\"") && json.contains("\"outcome\":\"refused\""),
            "{json}"
        );
        assert!(
            !json.contains("principal") && !json.contains("names"),
            "{json}"
        );
    }
}
