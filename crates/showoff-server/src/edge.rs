//! The public side: visitors arrive here and are routed to a tunnel.
//!
//! - [`visitor`]: where HTTP visitor connections start, and their hand-over to [`request`].
//! - [`http`]: HTTP/1.1 reverse proxy routed by `Host`, per request.
//! - [`request`]: the request-level edge (HTTP/2 visitors, connections handed over): HTTP/2
//!   end to end to targets that speak it ([`h2`]), HTTP/1.1 through [`http`] otherwise.
//! - [`pages`]: error pages as responses of the request-level edge, gRPC statuses included;
//!   [`body`]: that edge's body type.
//! - [`https`]: the HTTPS listener: ClientHello (SNI) first, then TLS, then [`http`].
//! - [`h2`]: HTTP/2 visitors, and HTTP/2 towards targets (one connection per tunnel).
//! - [`forwarded`]: `X-Forwarded-*` and which proxies are believed.
//! - [`tcp`]: raw TCP tunnels, one public port each; also TLS passthrough visitors.
//! - [`udp`]: UDP tunnels, one public UDP port each, relayed flow by flow.
//! - [`peer`]: the links between the instances of a cluster: one hop to the instance holding
//!   a tunnel, and the peer listener that takes such hops.
//! - [`spans`]: the spans each edge makes when tracing is on.
//! - [`error`]: the one mapping from edge failures to status codes and stable error codes,
//!   used by every edge.
//!
//! Every edge gets the same narrow [`EdgeContext`]: routes, limits, the exchange sinks, the
//! drain, URLs, TLS acceptors and ACME answers, and the settings it reads. Each finished
//! request or connection is reported once, as an exchange event.

pub(crate) mod body;
pub(crate) mod error;
pub(crate) mod forwarded;
pub(crate) mod h2;
pub(crate) mod h3;
pub(crate) mod http;
pub(crate) mod https;
pub(crate) mod pages;
pub(crate) mod peer;
pub(crate) mod request;
pub(crate) mod spans;
pub(crate) mod tcp;
pub(crate) mod udp;
pub(crate) mod visitor;

use std::sync::Arc;
use std::time::Duration;

use showoff_core::{Exchanges, FlowBudget};

use crate::config::{ProxyConfig, UdpConfig};
use crate::drain::Drain;
use crate::limits::RateLimits;
use crate::state::{PublicUrls, Routes, VisitorCaps};
use crate::stats::{GaugeGuard, Stats};
use crate::tls::{Http01Answers, Tls};

/// The settings the edges read.
#[derive(Debug, Clone)]
pub(crate) struct EdgeSettings {
    pub(crate) max_header_bytes: usize,
    pub(crate) head_timeout: Duration,
    pub(crate) io_idle_timeout: Duration,
    /// A request body's minimum rate in bytes per second after the head deadline (0: off).
    pub(crate) min_body_rate: u64,
    /// Concurrent visitors per tunnel, in all and per visitor address.
    pub(crate) visitor_caps: VisitorCaps,
    /// Upgrade protocols passed through (lowercase).
    pub(crate) upgrades: Vec<String>,
    /// Plain-HTTP visitors are redirected to HTTPS.
    pub(crate) redirect_http: bool,
    /// Which peers' `X-Forwarded-*` and PROXY headers are believed.
    pub(crate) proxy: ProxyConfig,
    /// Whether spans are made, and whose trace context is continued.
    pub(crate) trace: crate::config::TraceConfig,
    /// UDP flows' caps and idle timeout.
    pub(crate) udp: UdpConfig,
    /// `Alt-Svc` for HTTPS responses when the HTTP/3 listener is on.
    pub(crate) alt_svc: Option<::http::HeaderValue>,
}

/// What the edges use, and nothing else.
pub(crate) struct EdgeContext {
    pub(crate) settings: EdgeSettings,
    /// The arrival prelude of every public listener (HTTP, HTTPS, TCP tunnel ports), with
    /// their shared connection caps.
    pub(crate) prelude: crate::listen::Prelude,
    pub(crate) routes: Arc<Routes>,
    pub(crate) limits: Arc<RateLimits>,
    /// Gauges of open visitor connections.
    pub(crate) stats: Arc<Stats>,
    /// Where every finished request and connection is reported.
    pub(crate) exchanges: Exchanges,
    pub(crate) drain: Drain,
    /// Public URLs and the base domain tunnel names are routed under.
    pub(crate) urls: PublicUrls,
    /// The HTTPS acceptor and certificate store.
    pub(crate) tls: Arc<Tls>,
    /// Pending ACME HTTP-01 answers.
    pub(crate) acme_http01: Http01Answers,
    /// The server-wide cap on UDP flows, shared by every UDP tunnel's flow table.
    pub(crate) flow_budget: Arc<FlowBudget>,
    /// In a cluster with a secret: how requests for other instances' tunnels are forwarded.
    pub(crate) cluster: Option<Arc<peer::ClusterEdge>>,
}

impl EdgeContext {
    /// Counts one open visitor connection for as long as the guard lives.
    pub(crate) fn visitor_gauge(&self) -> GaugeGuard {
        GaugeGuard::new(&self.stats.visitor_connections_active)
    }
}

/// Contexts over in-memory parts, for unit tests and the fuzz targets.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod tests {
    use super::*;

    /// An edge context over in-memory parts: no tunnel, no listener.
    pub(crate) fn context() -> Arc<EdgeContext> {
        let stats = Arc::new(Stats::new(&Default::default(), 0));
        Arc::new(EdgeContext {
            settings: EdgeSettings {
                max_header_bytes: 32 * 1024,
                head_timeout: Duration::from_secs(5),
                io_idle_timeout: Duration::from_secs(5),
                min_body_rate: 0,
                visitor_caps: VisitorCaps {
                    per_tunnel: 10,
                    per_ip: 10,
                },
                upgrades: vec!["websocket".into()],
                redirect_http: false,
                proxy: ProxyConfig::default(),
                trace: Default::default(),
                udp: UdpConfig::default(),
                alt_svc: None,
            },
            prelude: crate::listen::Prelude::plain(None),
            routes: Arc::default(),
            limits: Arc::new(RateLimits::new(&Default::default())),
            exchanges: Exchanges::new(vec![stats.clone()]),
            stats,
            drain: Drain::default(),
            urls: PublicUrls {
                domain: "localhost".into(),
                http_port: 8080,
                https_port: None,
            },
            tls: Arc::new(Tls::new(&Default::default()).expect("no TLS")),
            acme_http01: Http01Answers::default(),
            flow_budget: FlowBudget::new(UdpConfig::default().flows),
            cluster: None,
        })
    }
}
