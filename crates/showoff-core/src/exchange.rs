//! Exchange events: one [`Exchange`] per HTTP request and per TCP (or TLS passthrough)
//! connection, emitted once where it ends and handed to every [`ExchangeSink`].
//!
//! This is the seam observers plug into instead of the edges writing metrics and logs
//! themselves: the server's metrics and access log consume it today; the client inspector,
//! tracing and cluster events consume the same event later. Events borrow from the edge's
//! state (no allocation per request); a sink that keeps one copies what it needs. Sinks run on
//! the serving path and must not block.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Which kind of traffic an exchange was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// One HTTP request and its response (or its error page).
    Http,
    /// One raw TCP visitor connection.
    Tcp,
    /// One TLS connection: passthrough to a `tls` tunnel, or refused before HTTP began.
    Tls,
    /// One UDP flow (a visitor address on a UDP tunnel), reported when it ends.
    Udp,
}

impl Protocol {
    /// Lowercase name, as in logs and span attributes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
            Self::Udp => "udp",
        }
    }
}

/// The HTTP facts of an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpExchange<'a> {
    /// The request's `Host` (lowercase, without port).
    pub host: &'a str,
    /// The method.
    pub method: &'a str,
    /// The request target as sent (`/path?query`).
    pub path: &'a str,
}

/// One finished request or connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exchange<'a> {
    /// HTTP, TCP, TLS or UDP.
    pub protocol: Protocol,
    /// The tunnel it was routed to; `None` when it failed before routing.
    pub tunnel: Option<&'a str>,
    /// The visitor: the TCP peer, or who a trusted proxy said it was.
    pub visitor: IpAddr,
    /// Method, host and path, for HTTP exchanges whose head was read.
    pub http: Option<HttpExchange<'a>>,
    /// The status the visitor received (HTTP), from the target or from an error page.
    pub status: Option<u16>,
    /// The stable error code (`tunnel_not_found`, `ip_forbidden`, ...) when Showoff refused or
    /// failed the exchange; `None` when the target's answer was relayed.
    pub error: Option<&'static str>,
    /// Bytes from the visitor.
    pub bytes_in: u64,
    /// Bytes to the visitor.
    pub bytes_out: u64,
    /// From the request head (or connection) to the end of the exchange.
    pub duration: Duration,
}

impl Exchange<'static> {
    /// An exchange Showoff refused or failed with the stable `code`, before or without a
    /// tunnel; set `tunnel`, `status` and the rest with struct update syntax where known.
    pub fn failed(protocol: Protocol, visitor: IpAddr, code: &'static str) -> Self {
        Self {
            protocol,
            tunnel: None,
            visitor,
            http: None,
            status: None,
            error: Some(code),
            bytes_in: 0,
            bytes_out: 0,
            duration: Duration::ZERO,
        }
    }
}

impl Exchange<'_> {
    /// True when the target's answer reached the visitor (no Showoff error).
    pub fn relayed(&self) -> bool {
        self.error.is_none()
    }
}

/// Consumes exchange events; called on the serving path, so it must not block.
pub trait ExchangeSink: Send + Sync + 'static {
    /// Records one finished exchange.
    fn record(&self, exchange: &Exchange<'_>);
}

/// Every sink an edge reports to, in order; cheap to clone.
#[derive(Clone, Default)]
pub struct Exchanges(Arc<[Arc<dyn ExchangeSink>]>);

impl Exchanges {
    /// Sinks that each receive every event.
    pub fn new(sinks: Vec<Arc<dyn ExchangeSink>>) -> Self {
        Self(sinks.into())
    }

    /// Hands `exchange` to every sink.
    pub fn emit(&self, exchange: &Exchange<'_>) {
        for sink in self.0.iter() {
            sink.record(exchange);
        }
    }
}

impl std::fmt::Debug for Exchanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Exchanges({} sinks)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Seen(Mutex<Vec<(Option<String>, Option<&'static str>)>>);

    impl ExchangeSink for Seen {
        fn record(&self, exchange: &Exchange<'_>) {
            let tunnel = exchange.tunnel.map(str::to_string);
            self.0.lock().expect("lock").push((tunnel, exchange.error));
        }
    }

    #[test]
    fn every_sink_sees_every_event_once() {
        let (a, b) = (Arc::new(Seen::default()), Arc::new(Seen::default()));
        let sinks = Exchanges::new(vec![a.clone(), b.clone()]);
        let visitor = "192.0.2.1".parse().expect("ip");
        let event = Exchange {
            tunnel: Some("db"),
            ..Exchange::failed(Protocol::Tcp, visitor, "ip_forbidden")
        };
        sinks.emit(&event);
        assert!(!event.relayed());
        for seen in [&a, &b] {
            let seen = seen.0.lock().expect("lock");
            assert_eq!(*seen, vec![(Some("db".to_string()), Some("ip_forbidden"))]);
        }
    }
}
