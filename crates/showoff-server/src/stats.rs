//! Counters, gauges and histograms the server keeps about itself, exported as Prometheus
//! metrics by the admin listener and readable in tests through
//! [`crate::ServerHandle::stats`].
//!
//! Per-request and per-connection figures arrive as exchange events ([`Stats`] is an
//! [`ExchangeSink`]); gauges of live things (sessions, pending streams, open visitor
//! connections, idle pool connections) are moved by the layer that owns the thing.
//!
//! Every metric is a prometheus-client type (atomics behind an `Arc`), registered in a registry
//! of this server's own (no global registry). Names follow `showoff_<subsystem>_<thing>_<unit>`;
//! labels are bounded: kinds, status classes, error codes, rejection reasons, directions, and
//! tunnel names only when per-tunnel metrics are switched on, capped at a configured number.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use showoff_core::{Exchange, ExchangeSink, Protocol};

use crate::config::BuildInfo;

mod cluster;
pub(crate) mod recent;
mod udp;
pub(crate) use cluster::ClusterStats;
pub(crate) use recent::Recent;
pub(crate) use udp::UdpStats;

/// Why a data connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataRejectReason {
    /// Its id names no pending stream (never issued, expired or already used).
    UnknownId,
    /// The key does not match the session the id belongs to.
    WrongKey,
    /// Its session is unknown (for warm-pool connections).
    UnknownSession,
    /// Its handshake was malformed, too slow or of the wrong version.
    BadHandshake,
    /// The session's warm pool is already full.
    PoolFull,
}

impl DataRejectReason {
    fn label(self) -> &'static str {
        match self {
            Self::UnknownId => "unknown_id",
            Self::WrongKey => "wrong_key",
            Self::UnknownSession => "unknown_session",
            Self::BadHandshake => "bad_handshake",
            Self::PoolFull => "pool_full",
        }
    }
}

/// A label set of one bounded value.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabel {
    transport: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    pub(crate) kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabel {
    listener: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TunnelLabel {
    tunnel: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    commit: String,
    build_date: String,
    rustc: String,
}

/// Live metrics of one server.
pub struct Stats {
    pub(crate) sessions_active: Gauge,
    sessions_by_transport: Family<TransportLabel, Gauge>,
    tunnels_active: Family<KindLabel, Gauge>,
    pub(crate) pending: Gauge,
    pub(crate) visitor_connections_active: Gauge,
    http_requests: Family<ClassLabel, Counter>,
    request_duration: Histogram,
    tunnel_lifetime: Histogram,
    bytes: Family<DirectionLabel, Counter>,
    errors: Family<CodeLabel, Counter>,
    sessions_refused: Family<CodeLabel, Counter>,
    connections_refused: Family<ConnectionLabel, Counter>,
    acme_orders: Family<CodeLabel, Counter>,
    pub(crate) auth_failures: Counter,
    data_rejected: Family<ReasonLabel, Counter>,
    pub(crate) pool_hits: Counter,
    pub(crate) pool_misses: Counter,
    pub(crate) pool_idle: Gauge,
    tunnel_requests: Family<TunnelLabel, Counter>,
    /// UDP tunnels' flows, datagrams and drops.
    pub(crate) udp: UdpStats,
    /// Requests forwarded between the instances of a cluster.
    pub(crate) cluster: ClusterStats,
    /// Each tunnel's last minutes and refusals by code, for the dashboard.
    pub(crate) recent: Recent,
    tunnel_metrics_cap: usize,
    tracked_tunnels: Mutex<std::collections::HashSet<String>>,
    registry: Registry,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats")
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

/// A copy of the main counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Authenticated sessions now connected.
    pub sessions_active: u64,
    /// Tunnels now registered.
    pub tunnels_active: u64,
    /// Streams being set up now (waiting for the client).
    pub pending: u64,
    /// Visitor connections now open (HTTP and TCP).
    pub visitor_connections_active: u64,
    /// HTTP requests routed to a tunnel so far.
    pub http_requests: u64,
    /// Streams served from a warm pool.
    pub pool_hits: u64,
    /// Streams that needed a dial-back round trip.
    pub pool_misses: u64,
    /// Warm-pool data connections now idle, across sessions.
    pub pool_idle: u64,
    /// Data connections rejected: unknown id.
    pub data_rejected_unknown_id: u64,
    /// Data connections rejected: wrong key.
    pub data_rejected_wrong_key: u64,
    /// Data connections rejected: unknown session.
    pub data_rejected_unknown_session: u64,
    /// Data connections rejected: bad handshake.
    pub data_rejected_bad_handshake: u64,
    /// Data connections rejected: warm pool full.
    pub data_rejected_pool_full: u64,
    /// UDP flows now open, across tunnels.
    pub udp_flows_active: u64,
}

const TRANSPORTS: [&str; 3] = ["tcp", "mux", "quic"];
const KINDS: [&str; 3] = ["http", "tcp", "udp"];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl Stats {
    /// Metrics for a server built as `build`, with per-tunnel counters for at most
    /// `tunnel_metrics_cap` tunnels (0: off).
    pub(crate) fn new(build: &BuildInfo, tunnel_metrics_cap: usize) -> Self {
        let mut stats = Self {
            sessions_active: Gauge::default(),
            sessions_by_transport: Family::default(),
            tunnels_active: Family::default(),
            pending: Gauge::default(),
            visitor_connections_active: Gauge::default(),
            http_requests: Family::default(),
            // 0.5 ms to ~16 s in 16 doublings: loopback requests up to slow uploads.
            request_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            // 1 s to ~9 h in 16 steps of ×2: tunnel lifetimes.
            tunnel_lifetime: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
            bytes: Family::default(),
            errors: Family::default(),
            sessions_refused: Family::default(),
            connections_refused: Family::default(),
            acme_orders: Family::default(),
            auth_failures: Counter::default(),
            data_rejected: Family::default(),
            pool_hits: Counter::default(),
            pool_misses: Counter::default(),
            pool_idle: Gauge::default(),
            tunnel_requests: Family::default(),
            udp: UdpStats::default(),
            cluster: ClusterStats::default(),
            recent: Recent::new(),
            tunnel_metrics_cap,
            tracked_tunnels: Mutex::new(Default::default()),
            registry: Registry::with_prefix("showoff"),
        };
        stats.register(build);
        stats
    }

    fn register(&mut self, build: &BuildInfo) {
        let info: Family<BuildLabels, Gauge> = Family::default();
        info.get_or_create(&BuildLabels {
            version: build.version.clone(),
            commit: build.commit.clone(),
            build_date: build.build_date.clone(),
            rustc: build.rustc.clone(),
        })
        .set(1);
        // Pre-create the bounded label values so dashboards see zeros, not gaps.
        for kind in KINDS {
            let _ = self.tunnels_active.get_or_create(&KindLabel { kind });
        }
        for class in CLASSES {
            let _ = self.http_requests.get_or_create(&ClassLabel { class });
        }
        for direction in ["in", "out"] {
            let _ = self.bytes.get_or_create(&DirectionLabel { direction });
        }
        for transport in TRANSPORTS {
            let _ = self
                .sessions_by_transport
                .get_or_create(&TransportLabel { transport });
        }
        let r = &mut self.registry;
        r.register("build_info", "Build of this server (always 1)", info);
        r.register(
            "sessions_active",
            "Client sessions connected now",
            self.sessions_active.clone(),
        );
        r.register(
            "sessions_by_transport",
            "Client sessions connected now, by transport (tcp = dial-back, mux, quic)",
            self.sessions_by_transport.clone(),
        );
        r.register(
            "tunnels_active",
            "Tunnels registered now, by kind",
            self.tunnels_active.clone(),
        );
        r.register(
            "pending_streams",
            "Streams being set up now (waiting for the client)",
            self.pending.clone(),
        );
        r.register(
            "visitor_connections_active",
            "Visitor connections open now",
            self.visitor_connections_active.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests routed to a tunnel, by status class",
            self.http_requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "Time from request head to the end of the response",
            self.request_duration.clone(),
        );
        r.register(
            "tunnel_lifetime_seconds",
            "How long tunnels stayed registered",
            self.tunnel_lifetime.clone(),
        );
        r.register(
            "tunnel_bytes",
            "Bytes relayed through tunnels: in = from visitors, out = to visitors",
            self.bytes.clone(),
        );
        r.register(
            "errors",
            "Requests and connections that ended in an error, by code",
            self.errors.clone(),
        );
        r.register(
            "acme_orders",
            "ACME certificate orders, by outcome (ok, failed, account_failed, rate_guarded)",
            self.acme_orders.clone(),
        );
        r.register(
            "sessions_refused",
            "Control connections refused, by refusal code (auth, limits, rates, names)",
            self.sessions_refused.clone(),
        );
        r.register(
            "connections_refused",
            "Connections closed at once by a listener's caps, by listener and cap (total, per_ip)",
            self.connections_refused.clone(),
        );
        r.register(
            "auth_failures",
            "Control connections refused with auth_failed",
            self.auth_failures.clone(),
        );
        r.register(
            "data_rejected",
            "Data connections turned away, by reason",
            self.data_rejected.clone(),
        );
        r.register(
            "pool_hits",
            "Streams served from a warm pool",
            self.pool_hits.clone(),
        );
        r.register(
            "pool_misses",
            "Streams that needed a dial-back round trip",
            self.pool_misses.clone(),
        );
        r.register(
            "pool_idle_connections",
            "Warm-pool data connections idle now",
            self.pool_idle.clone(),
        );
        self.udp.register(r);
        self.cluster.register(r);
        if self.tunnel_metrics_cap > 0 {
            r.register(
                "tunnel_http_requests",
                "HTTP requests per tunnel (opt-in, capped; excess under tunnel=\"other\")",
                self.tunnel_requests.clone(),
            );
        }
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    pub(crate) fn reject(&self, reason: DataRejectReason) {
        self.data_rejected
            .get_or_create(&ReasonLabel {
                reason: reason.label(),
            })
            .inc();
    }

    pub(crate) fn tunnel_opened(&self, kind: &'static str) {
        self.tunnels_active.get_or_create(&KindLabel { kind }).inc();
    }

    pub(crate) fn tunnel_closed(&self, kind: &'static str, lifetime: Duration) {
        self.tunnels_active.get_or_create(&KindLabel { kind }).dec();
        self.tunnel_lifetime.observe(lifetime.as_secs_f64());
    }

    /// Records one finished HTTP request.
    pub(crate) fn http_request(&self, tunnel: &str, status: u16, took: Duration) {
        let class = CLASSES
            .get(usize::from(status / 100).saturating_sub(1))
            .copied()
            .unwrap_or("5xx");
        self.http_requests
            .get_or_create(&ClassLabel { class })
            .inc();
        self.request_duration.observe(took.as_secs_f64());
        if self.tunnel_metrics_cap > 0 {
            let label = self.tunnel_label(tunnel);
            self.tunnel_requests
                .get_or_create(&TunnelLabel { tunnel: label })
                .inc();
        }
    }

    fn tunnel_label(&self, tunnel: &str) -> String {
        let mut tracked = self
            .tracked_tunnels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if tracked.contains(tunnel)
            || tracked.len() < self.tunnel_metrics_cap && tracked.insert(tunnel.to_string())
        {
            return tunnel.to_string();
        }
        "other".to_string()
    }

    /// Counts an error by its stable code.
    pub(crate) fn acme_order(&self, code: &'static str) {
        self.acme_orders.get_or_create(&CodeLabel { code }).inc();
    }

    /// A session came up on `transport`.
    pub(crate) fn session_up(&self, transport: showoff_proto::TransportKind) {
        self.sessions_active.inc();
        self.sessions_on(transport).inc();
    }

    /// A session on `transport` ended.
    pub(crate) fn session_down(&self, transport: showoff_proto::TransportKind) {
        self.sessions_active.dec();
        self.sessions_on(transport).dec();
    }

    fn sessions_on(&self, transport: showoff_proto::TransportKind) -> Gauge {
        let transport = transport.as_str();
        self.sessions_by_transport
            .get_or_create_owned(&TransportLabel { transport })
    }

    pub(crate) fn session_refused(&self, code: &'static str) {
        self.recent.refused(code);
        self.sessions_refused
            .get_or_create(&CodeLabel { code })
            .inc();
    }

    /// Counts a connection a listener's cap closed at once.
    pub(crate) fn connection_refused(&self, listener: &'static str, reason: &'static str) {
        self.connections_refused
            .get_or_create(&ConnectionLabel { listener, reason })
            .inc();
    }

    pub(crate) fn error(&self, code: &'static str) {
        self.errors.get_or_create(&CodeLabel { code }).inc();
    }

    /// Counts relayed bytes: `inbound` from visitors, `outbound` to them.
    pub(crate) fn bytes(&self, inbound: u64, outbound: u64) {
        self.bytes
            .get_or_create(&DirectionLabel { direction: "in" })
            .inc_by(inbound);
        self.bytes
            .get_or_create(&DirectionLabel { direction: "out" })
            .inc_by(outbound);
    }

    /// Reads the main counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        let gauge = |g: &Gauge| g.get().max(0) as u64;
        let rejected = |reason: DataRejectReason| {
            self.data_rejected
                .get_or_create(&ReasonLabel {
                    reason: reason.label(),
                })
                .get()
        };
        StatsSnapshot {
            sessions_active: gauge(&self.sessions_active),
            tunnels_active: KINDS
                .iter()
                .map(|&kind| gauge(&self.tunnels_active.get_or_create(&KindLabel { kind })))
                .sum(),
            pending: gauge(&self.pending),
            visitor_connections_active: gauge(&self.visitor_connections_active),
            http_requests: CLASSES
                .iter()
                .map(|&class| {
                    self.http_requests
                        .get_or_create(&ClassLabel { class })
                        .get()
                })
                .sum(),
            pool_hits: self.pool_hits.get(),
            pool_misses: self.pool_misses.get(),
            pool_idle: gauge(&self.pool_idle),
            data_rejected_unknown_id: rejected(DataRejectReason::UnknownId),
            data_rejected_wrong_key: rejected(DataRejectReason::WrongKey),
            data_rejected_unknown_session: rejected(DataRejectReason::UnknownSession),
            data_rejected_bad_handshake: rejected(DataRejectReason::BadHandshake),
            data_rejected_pool_full: rejected(DataRejectReason::PoolFull),
            udp_flows_active: gauge(&self.udp.flows_active),
        }
    }
}

impl ExchangeSink for Stats {
    /// Errors by code; relayed HTTP requests by status class, duration and tunnel; bytes.
    fn record(&self, exchange: &Exchange<'_>) {
        self.recent.record(exchange);
        if let Some(code) = exchange.error {
            self.error(code);
            return;
        }
        if exchange.protocol == Protocol::Http
            && let (Some(tunnel), Some(status)) = (exchange.tunnel, exchange.status)
        {
            self.http_request(tunnel, status, exchange.duration);
        }
        self.bytes(exchange.bytes_in, exchange.bytes_out);
    }
}

/// Increments a gauge for as long as it lives.
#[derive(Debug)]
pub(crate) struct GaugeGuard(Gauge);

impl GaugeGuard {
    /// Holds a handle to `gauge` (prometheus gauges share their value), so the guard borrows
    /// nothing and can live in any task.
    pub(crate) fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build() -> BuildInfo {
        BuildInfo {
            version: "1.2.3".into(),
            commit: "abc".into(),
            build_date: "2026-01-01".into(),
            rustc: "rustc 1.95.0".into(),
        }
    }

    #[test]
    fn exposition_names_follow_the_convention() {
        let stats = Stats::new(&build(), 0);
        stats.http_request("demo", 204, Duration::from_millis(3));
        stats.error("tunnel_not_found");
        stats.bytes(10, 20);
        stats.reject(DataRejectReason::WrongKey);
        let text = stats.encode().expect("encode");
        for needle in [
            "showoff_build_info{version=\"1.2.3\",commit=\"abc\",build_date=\"2026-01-01\",rustc=\"rustc 1.95.0\"} 1",
            "showoff_http_requests_total{class=\"2xx\"} 1",
            "showoff_http_requests_total{class=\"5xx\"} 0",
            "showoff_http_request_duration_seconds_count 1",
            "showoff_errors_total{code=\"tunnel_not_found\"} 1",
            "showoff_tunnel_bytes_total{direction=\"out\"} 20",
            "showoff_data_rejected_total{reason=\"wrong_key\"} 1",
            "showoff_tunnels_active{kind=\"tcp\"} 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        assert!(
            !text.contains("tunnel_http_requests"),
            "per-tunnel metrics are opt-in"
        );
    }

    #[test]
    fn per_tunnel_labels_are_capped() {
        let stats = Stats::new(&build(), 2);
        for tunnel in ["a", "b", "c", "d", "a"] {
            stats.http_request(tunnel, 200, Duration::ZERO);
        }
        let text = stats.encode().expect("encode");
        assert!(
            text.contains("showoff_tunnel_http_requests_total{tunnel=\"a\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("showoff_tunnel_http_requests_total{tunnel=\"other\"} 2"),
            "{text}"
        );
        assert!(!text.contains("tunnel=\"c\""), "{text}");
    }

    #[test]
    fn exchange_events_feed_the_same_counters() {
        let stats = Stats::new(&build(), 0);
        let relayed = Exchange {
            protocol: Protocol::Http,
            tunnel: Some("demo"),
            visitor: "192.0.2.1".parse().expect("ip"),
            http: None,
            status: Some(200),
            error: None,
            bytes_in: 5,
            bytes_out: 7,
            duration: Duration::from_millis(1),
        };
        stats.record(&relayed);
        stats.record(&Exchange {
            error: Some("rate_limited"),
            status: Some(429),
            ..relayed
        });
        stats.record(&Exchange {
            protocol: Protocol::Tcp,
            status: None,
            ..relayed
        });
        assert_eq!(stats.snapshot().http_requests, 1, "errors are not requests");
        let text = stats.encode().expect("encode");
        assert!(
            text.contains("showoff_errors_total{code=\"rate_limited\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("showoff_tunnel_bytes_total{direction=\"in\"} 10"),
            "{text}"
        );
    }

    #[test]
    fn status_classes_cover_every_code() {
        let stats = Stats::new(&build(), 0);
        for status in [101, 200, 302, 404, 599, 999] {
            stats.http_request("t", status, Duration::ZERO);
        }
        assert_eq!(stats.snapshot().http_requests, 6);
    }
}
