//! Server configuration: every tunable of the server library, validated once at bind time.
//!
//! The binary resolves flags, environment and files into a [`ServerConfig`]; this module only
//! holds the values, their defaults and the rules that make a configuration unsafe to run.

mod acme;
mod auth;
mod cluster;
mod proxy;
mod tls;
mod trace;

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

pub use self::acme::{AcmeChallenge, AcmeConfig, DEFAULT_RENEW_BEFORE};
pub use self::auth::{
    AuthConfig, DEFAULT_WEBHOOK_TIMEOUT, JwtConfig, JwtKey, NamePattern, PolicyConfig,
    WebhookConfig,
};
pub use self::cluster::{ClusterConfig, DEFAULT_CLUSTER_PREFIX, DEFAULT_LEASE_TTL, MIN_LEASE_TTL};
pub use self::proxy::ProxyConfig;
pub use self::tls::{PemPair, TlsConfig};
pub use self::trace::TraceConfig;
pub use showoff_core::Secret;

/// Default control listener.
pub const DEFAULT_CONTROL_ADDR: &str = "127.0.0.1:7000";
/// Default data (dial-back) listener.
pub const DEFAULT_DATA_ADDR: &str = "127.0.0.1:7001";
/// Default public HTTP listener.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
/// Default base domain: `*.localhost` resolves to loopback in curl and browsers.
pub const DEFAULT_DOMAIN: &str = "localhost";
/// Default range of public ports for TCP tunnels.
pub const DEFAULT_TCP_PORTS: PortRange = PortRange {
    first: 20000,
    last: 20999,
};
/// Default cap on a request head (request line and headers).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
/// Default deadline for a visitor to send a complete request head; also how long an idle
/// keep-alive visitor connection is kept.
pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(15);
/// Default time a visitor waits for the client to produce a stream.
pub const DEFAULT_PENDING_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap on streams being set up at once for one session.
pub const DEFAULT_MAX_PENDING_PER_SESSION: usize = 128;
/// Default cap on streams being set up at once across the server.
pub const DEFAULT_MAX_PENDING_TOTAL: usize = 4096;
/// Default interval between server pings.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);
/// Default silence after which a session is considered dead.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(45);
/// Default limit on a visitor body read or response write making no progress.
pub const DEFAULT_IO_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default minimum rate of a request body: 1 KiB/s after the head deadline, so a body dripped
/// a byte at a time cannot hold a tunnel's visitor slot, while any real link passes.
pub const DEFAULT_MIN_BODY_RATE: u64 = 1024;
/// Default time in-flight work gets to finish on shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Default cap on client sessions at once.
pub const DEFAULT_MAX_SESSIONS: usize = 50_000;
/// Default cap on concurrent visitors per tunnel (HTTP requests in flight, TCP connections).
pub const DEFAULT_MAX_VISITORS_PER_TUNNEL: usize = 1_000;
/// Default cap on one visitor address's share of a tunnel's visitors (a quarter of the
/// tunnel's, so a few busy NATs still fit while one address cannot take every slot).
pub const DEFAULT_MAX_VISITORS_PER_TUNNEL_PER_IP: usize = 250;
/// The one upgrade allowed by default: WebSocket.
pub const DEFAULT_UPGRADE: &str = "websocket";

/// Default number of pre-dialled data connections a client keeps per session.
pub const DEFAULT_WARM_POOL: u16 = 8;

/// Default idle timeout of a UDP flow. RFC 4787 (REQ-5) asks NATs to keep a UDP mapping for at
/// least two minutes without traffic, so an application that keeps its flow alive for the NATs
/// on its path (DNS retries, QUIC and WireGuard keep-alives, game heartbeats) keeps it here too.
pub const DEFAULT_UDP_FLOW_IDLE: Duration = Duration::from_secs(120);
/// Default cap on one UDP tunnel's flows (visitor addresses at once).
pub const DEFAULT_UDP_FLOWS_PER_TUNNEL: usize = 4_096;
/// Default cap on UDP flows across the server (about 10 MB of flow state at most).
pub const DEFAULT_UDP_FLOWS: usize = 65_536;

/// UDP tunnels: their flows' caps and idle timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpConfig {
    /// A flow without a datagram either way for this long ends.
    pub flow_idle: Duration,
    /// Flows of one tunnel at once; a new visitor address past it is dropped and counted.
    pub flows_per_tunnel: usize,
    /// Flows across the server at once.
    pub flows: usize,
}

impl Default for UdpConfig {
    fn default() -> Self {
        Self {
            flow_idle: DEFAULT_UDP_FLOW_IDLE,
            flows_per_tunnel: DEFAULT_UDP_FLOWS_PER_TUNNEL,
            flows: DEFAULT_UDP_FLOWS,
        }
    }
}

/// An inclusive range of ports; `0-0` lets the operating system pick (tests use it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port of the range.
    pub first: u16,
    /// Last port of the range (inclusive).
    pub last: u16,
}

impl PortRange {
    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    /// Number of ports in the range.
    pub fn len(&self) -> usize {
        usize::from(self.last - self.first) + 1
    }

    /// Always false: a range holds at least one port.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl std::str::FromStr for PortRange {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::BadPortRange(s.to_string());
        let (first, last) = s.split_once('-').unwrap_or((s, s));
        let first: u16 = first.trim().parse().map_err(|_| bad())?;
        let last: u16 = last.trim().parse().map_err(|_| bad())?;
        if first > last || (first == 0) != (last == 0) {
            return Err(bad());
        }
        Ok(Self { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No token is configured while a listener faces more than loopback.
    #[error(
        "no token is configured and {listener} listens on {addr}, which is not loopback; \
         set --token / SHOWOFF_TOKEN, or bind every listener to 127.0.0.1"
    )]
    OpenOnPublicAddress {
        /// Which listener.
        listener: &'static str,
        /// Its address.
        addr: SocketAddr,
    },
    /// Control or data would carry tokens and session keys in clear on a non-loopback address.
    #[error(
        "{listener} listens on {addr}, which is not loopback, without TLS: tokens and session \
         keys would cross the network in clear; give it a certificate (--tls-cert/--tls-key or \
         --acme-directory), or pass --allow-plaintext when a TLS-terminating proxy or a mesh \
         encrypts the link"
    )]
    PlaintextOnPublicAddress {
        /// Which listener.
        listener: &'static str,
        /// Its address.
        addr: SocketAddr,
    },
    /// A port range that does not parse or is reversed.
    #[error("invalid port range {0:?}: expected FIRST-LAST with FIRST <= LAST, or 0-0")]
    BadPortRange(String),
    /// The domain is not a valid DNS name.
    #[error("invalid domain {domain:?}: {reason}")]
    BadDomain {
        /// The value given.
        domain: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A limit that must be positive is zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// A certificate, key or CA is unusable.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// An authenticator's key, policy or URL is unusable.
    #[error("authentication setup: {0}")]
    Auth(String),
    /// A QUIC listener (`--quic-addr`, `--http3-addr`) is asked for without a certificate.
    #[error(
        "the {0} needs a certificate: QUIC is always TLS 1.3; give the server one \
         (--tls-cert/--tls-key or --acme-directory), or leave it off"
    )]
    QuicWithoutTls(&'static str),
    /// The cluster's lease TTL is too short to renew reliably.
    #[error("lease_ttl must be at least 1s (got {0:?}): leases are renewed every third of it")]
    LeaseTtlTooShort(Duration),
    /// A cluster is configured but nobody built its registry.
    #[error(
        "--cluster-redis is set but no registry was given: the binary builds it; an embedder \
         passes showoff_cluster::RedisRegistry as Services::registry"
    )]
    ClusterWithoutRegistry,
    /// A cluster instance without a name.
    #[error("a cluster instance needs a name (--instance)")]
    ClusterWithoutInstance,
    /// A peer listener outside a cluster, or without the secret peers prove.
    #[error(
        "--peer-addr needs --cluster-redis and a --cluster-secret of at least 16 bytes \
         shared by every instance"
    )]
    PeerWithoutCluster,
    /// A peer listener on a wildcard address, with nothing the others could dial.
    #[error(
        "--peer-addr {0} listens on every address: say which one the other instances dial \
         with --peer-advertise host:port"
    )]
    PeerAdvertiseNeeded(SocketAddr),
}

/// Default failed authentications per minute from one client address, and failed basic-auth
/// attempts per minute from one visitor address, before further attempts are refused: enough
/// for people mistyping, far too few for guessing.
pub const DEFAULT_FAILURES_PER_IP: u32 = 20;

/// Caps on concurrent connections, per class of listener: public (HTTP, HTTPS and TCP tunnel
/// ports together), control and data. A full class closes new connections at once, so the
/// public side running out of descriptors cannot take the control plane with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Public connections at once.
    pub public: usize,
    /// Public connections at once from one visitor address (0: off; trusted proxies exempt).
    pub public_per_ip: usize,
    /// Control connections at once.
    pub control: usize,
    /// Data connections at once (warm pools and streams).
    pub data: usize,
    /// Control, and separately data, connections at once from one client address (0: off).
    pub client_per_ip: usize,
}

/// Default cap on public connections at once.
pub const DEFAULT_MAX_PUBLIC_CONNECTIONS: usize = 100_000;
/// Default cap on control connections at once (the session cap plus handshakes in flight).
pub const DEFAULT_MAX_CONTROL_CONNECTIONS: usize = 60_000;
/// Default cap on data connections at once (a full warm pool for every session).
pub const DEFAULT_MAX_DATA_CONNECTIONS: usize = 500_000;

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            public: DEFAULT_MAX_PUBLIC_CONNECTIONS,
            public_per_ip: 0,
            control: DEFAULT_MAX_CONTROL_CONNECTIONS,
            data: DEFAULT_MAX_DATA_CONNECTIONS,
            client_per_ip: 0,
        }
    }
}

/// Configured rates; 0 turns a limit off. The guessing limits are on by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateConfig {
    /// HTTP requests per second from one visitor address (burst: the same number).
    pub visitor_per_ip: u32,
    /// HTTP requests per second to one tunnel (burst: the same number).
    pub tunnel_requests: u32,
    /// UDP datagrams per second from one visitor address, across UDP tunnels (burst: the same
    /// number); past it datagrams are dropped and counted.
    pub udp_per_ip: u32,
    /// Control connections per minute from one client address (burst: the same number).
    pub control_per_ip: u32,
    /// Tunnels opened per minute by one principal, reconnects included (burst: the same).
    pub tunnels_per_principal: u32,
    /// Failed authentications per minute from one client address (burst: the same); past
    /// it, the address's sessions are refused `rate_limited` before their token is looked at.
    pub auth_failures_per_ip: u32,
    /// Failed basic-auth attempts per minute from one visitor address (burst: the same); past
    /// it, the address gets 429 before its credentials are looked at.
    pub basic_auth_failures_per_ip: u32,
}

impl Default for RateConfig {
    fn default() -> Self {
        Self {
            visitor_per_ip: 0,
            tunnel_requests: 0,
            udp_per_ip: 0,
            control_per_ip: 0,
            tunnels_per_principal: 0,
            auth_failures_per_ip: DEFAULT_FAILURES_PER_IP,
            basic_auth_failures_per_ip: DEFAULT_FAILURES_PER_IP,
        }
    }
}

/// Whether public listeners read a PROXY protocol header before the traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// Never: the TCP peer is the visitor.
    #[default]
    Off,
    /// From trusted peers, when the connection starts with one; others are served as they are.
    Optional,
    /// Every connection must come from a trusted peer and start with a header.
    Required,
}

impl std::str::FromStr for ProxyProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Self::Off),
            "optional" => Ok(Self::Optional),
            "required" => Ok(Self::Required),
            _ => Err("expected off, optional or required".into()),
        }
    }
}

/// Server-wide rules for tunnel names, on top of DNS-label rules and per-principal patterns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamePolicy {
    /// When not empty, every name must match one of these patterns.
    pub allow: Vec<NamePattern>,
    /// Names kept for the operator (`www`, `admin`); nobody may register them.
    pub reserved: Vec<String>,
    /// Names refused outright (abuse, trademarks).
    pub banned: Vec<String>,
}

/// The admin token of [`ServerConfig::ephemeral`] (tests only; every listener is loopback).
pub const TEST_ADMIN_TOKEN: &str = "test-admin-token";

/// Default admin listener.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9090";

/// The admin listener and what it exposes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Admin listener; `None` turns it off.
    pub addr: Option<SocketAddr>,
    /// Bearer token for `/api/v1/*` and `/debug/pprof/*` (and `/metrics` with
    /// `metrics_auth`); `None` turns them off.
    pub token: Option<Secret>,
    /// `/metrics` needs the admin token too (off by default, for scrapers).
    pub metrics_auth: bool,
    /// One log line per proxied HTTP request.
    pub access_log: bool,
    /// Per-tunnel request counters for at most this many tunnels (0: off).
    pub tunnel_metrics: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            addr: Some(DEFAULT_ADMIN_ADDR.parse().expect("valid default")),
            token: None,
            metrics_auth: false,
            access_log: true,
            tunnel_metrics: 0,
        }
    }
}

/// What `/version` and `showoff_build_info` report; the binary fills it in.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BuildInfo {
    /// Crate version.
    pub version: String,
    /// Git commit the binary was built from.
    pub commit: String,
    /// Build date (UTC, `YYYY-MM-DD`).
    pub build_date: String,
    /// Compiler version.
    pub rustc: String,
}

/// Everything the server needs to run. Build with [`ServerConfig::default`] and adjust fields.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Control listener (clients authenticate and register tunnels here).
    pub control_addr: SocketAddr,
    /// Data listener (clients dial back one connection per stream).
    pub data_addr: SocketAddr,
    /// QUIC listener (UDP) for clients on the QUIC transport; `None`: off. Needs TLS.
    pub quic_addr: Option<SocketAddr>,
    /// Public HTTP listener (visitors, routed by `Host`).
    pub http_addr: SocketAddr,
    /// Base domain of tunnel hostnames: tunnel `demo` is served at `demo.<domain>`.
    pub domain: String,
    /// Port shown in public HTTP URLs; defaults to the HTTP listener's port (omitted when 80).
    pub public_http_port: Option<u16>,
    /// Port shown in public HTTPS URLs; defaults to the HTTPS listener's (omitted when 443).
    pub public_https_port: Option<u16>,
    /// Port advertised for HTTP/3 in `Alt-Svc`; defaults to the HTTP/3 listener's.
    pub public_http3_port: Option<u16>,
    /// Ports handed to TCP tunnels; bound on the public HTTP listener's IP.
    pub tcp_ports: PortRange,
    /// Ports handed to UDP tunnels, on the same IP (a separate namespace from TCP's).
    pub udp_ports: PortRange,
    /// UDP flows: caps and idle timeout.
    pub udp: UdpConfig,
    /// Accepted shared tokens (unrestricted principals `token:<index>`).
    pub tokens: Vec<Secret>,
    /// Signed tokens, JWT, Rego policy, decision webhook.
    pub auth: AuthConfig,
    /// PROXY protocol and trusted proxies for real visitor addresses.
    pub proxy: ProxyConfig,
    /// OpenTelemetry spans: on or off, and whose `traceparent` is continued.
    pub trace: TraceConfig,
    /// Certificates, mTLS, the HTTPS listener.
    pub tls: TlsConfig,
    /// Control and data may listen on non-loopback addresses without TLS (a TLS-terminating
    /// L4 proxy or a mesh encrypts the link); refused by default.
    pub allow_plaintext: bool,
    /// Server-wide name rules.
    pub names: NamePolicy,
    /// Cap on a request head in bytes (431 above it).
    pub max_header_bytes: usize,
    /// Deadline for a complete request head (408 after it) and idle keep-alive limit.
    pub head_timeout: Duration,
    /// Longest a visitor body read or response write may make no progress.
    pub io_idle_timeout: Duration,
    /// A request body must arrive at this many bytes per second on average, after a grace of
    /// `head_timeout` (408 `body_timeout` below it; 0 turns it off).
    pub min_body_rate: u64,
    /// How long a visitor waits for a stream from the client (504 after it).
    pub pending_timeout: Duration,
    /// Streams being set up at once per session (503 above it).
    pub max_pending_per_session: usize,
    /// Streams being set up at once across the server (503 above it).
    pub max_pending_total: usize,
    /// Interval between pings to each client.
    pub heartbeat_interval: Duration,
    /// Silence after which a client is dropped and its names freed.
    pub heartbeat_timeout: Duration,
    /// Tunnels without visitor traffic for this long are closed (off when `None`).
    pub tunnel_idle_timeout: Option<Duration>,
    /// Tunnels are closed this long after they opened, whatever their traffic (off when `None`).
    pub tunnel_lifetime: Option<Duration>,
    /// Client sessions at once (`limit_reached` above it).
    pub max_sessions: usize,
    /// Concurrent visitors per tunnel: HTTP requests in flight or TCP connections (503 above).
    pub max_visitors_per_tunnel: usize,
    /// Concurrent visitors per tunnel from one visitor address (HTTP 429
    /// `visitor_over_capacity`, TCP connections closed above it).
    pub max_visitors_per_tunnel_per_ip: usize,
    /// Caps on concurrent connections per class of listener.
    pub connections: ConnectionLimits,
    /// Protocols a visitor may upgrade to (`Upgrade:` first token, lowercase); other upgrade
    /// requests are forwarded as plain requests without their `Upgrade` (so `h2c` is refused).
    pub allowed_upgrades: Vec<String>,
    /// Rate limits (all off by default).
    pub rates: RateConfig,
    /// Time in-flight requests and streams get to finish on shutdown.
    pub shutdown_grace: Duration,
    /// Before the drain: `/readyz` says 503 and every response says `Connection: close` for
    /// this long while the server still accepts, so a load balancer stops sending first.
    pub drain_delay: Duration,
    /// Pre-dialled data connections each client keeps (0 turns the warm pool off).
    pub warm_pool: u16,
    /// Admin listener, access log and metric options.
    pub admin: AdminConfig,
    /// The cluster this instance is part of, if any.
    pub cluster: ClusterConfig,
    /// Reported by `/version` and `showoff_build_info`.
    pub build: BuildInfo,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let addr = |s: &str| s.parse().expect("default addresses are valid");
        Self {
            control_addr: addr(DEFAULT_CONTROL_ADDR),
            data_addr: addr(DEFAULT_DATA_ADDR),
            quic_addr: None,
            http_addr: addr(DEFAULT_HTTP_ADDR),
            domain: DEFAULT_DOMAIN.into(),
            public_http_port: None,
            public_https_port: None,
            public_http3_port: None,
            tcp_ports: DEFAULT_TCP_PORTS,
            udp_ports: DEFAULT_TCP_PORTS,
            udp: UdpConfig::default(),
            tokens: Vec::new(),
            auth: AuthConfig::default(),
            proxy: ProxyConfig::default(),
            trace: TraceConfig::default(),
            tls: TlsConfig::default(),
            allow_plaintext: false,
            names: NamePolicy::default(),
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            head_timeout: DEFAULT_HEAD_TIMEOUT,
            io_idle_timeout: DEFAULT_IO_IDLE_TIMEOUT,
            min_body_rate: DEFAULT_MIN_BODY_RATE,
            pending_timeout: DEFAULT_PENDING_TIMEOUT,
            max_pending_per_session: DEFAULT_MAX_PENDING_PER_SESSION,
            max_pending_total: DEFAULT_MAX_PENDING_TOTAL,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            tunnel_idle_timeout: None,
            tunnel_lifetime: None,
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_visitors_per_tunnel: DEFAULT_MAX_VISITORS_PER_TUNNEL,
            max_visitors_per_tunnel_per_ip: DEFAULT_MAX_VISITORS_PER_TUNNEL_PER_IP,
            allowed_upgrades: vec![DEFAULT_UPGRADE.into()],
            connections: ConnectionLimits::default(),
            rates: RateConfig::default(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            drain_delay: Duration::ZERO,
            warm_pool: DEFAULT_WARM_POOL,
            admin: AdminConfig::default(),
            cluster: ClusterConfig::default(),
            build: BuildInfo::default(),
        }
    }
}

impl ServerConfig {
    /// A configuration for tests: every listener on `127.0.0.1:0`, OS-picked tunnel ports, and
    /// [`TEST_ADMIN_TOKEN`] as the admin token (so tests can read the guarded admin API).
    pub fn ephemeral() -> Self {
        let any = "127.0.0.1:0".parse().expect("valid");
        Self {
            control_addr: any,
            data_addr: any,
            http_addr: any,
            tcp_ports: PortRange { first: 0, last: 0 },
            udp_ports: PortRange { first: 0, last: 0 },
            admin: AdminConfig {
                addr: Some(any),
                token: Some(Secret::new(TEST_ADMIN_TOKEN)),
                ..AdminConfig::default()
            },
            ..Self::default()
        }
    }

    /// The rules that need nothing loaded. `token_table` says whether a token table stands
    /// beside this configuration (the embedder hands it to the server as a service); with no
    /// credential of any kind, every listener must be on loopback.
    pub fn check_rules(&self, token_table: bool) -> Result<(), ConfigError> {
        let domain = showoff_proto::host::parse_host(self.domain.as_bytes()).map_err(|e| {
            ConfigError::BadDomain {
                domain: self.domain.clone(),
                reason: e.to_string(),
            }
        })?;
        if domain.port.is_some() || domain.name != self.domain {
            return Err(ConfigError::BadDomain {
                domain: self.domain.clone(),
                reason: "expected a lowercase DNS name without port or trailing dot".into(),
            });
        }
        for (name, value) in [
            ("max_header_bytes", self.max_header_bytes),
            ("max_pending_per_session", self.max_pending_per_session),
            ("max_pending_total", self.max_pending_total),
            ("max_sessions", self.max_sessions),
            ("max_visitors_per_tunnel", self.max_visitors_per_tunnel),
            (
                "max_visitors_per_tunnel_per_ip",
                self.max_visitors_per_tunnel_per_ip,
            ),
            ("max_connections", self.connections.public),
            ("max_control_connections", self.connections.control),
            ("max_data_connections", self.connections.data),
            ("udp_flows_per_tunnel", self.udp.flows_per_tunnel),
            ("udp_flows", self.udp.flows),
            (
                "udp_flow_idle (in whole seconds)",
                self.udp.flow_idle.as_secs() as usize,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.is_open() && !token_table {
            self.check_loopback_only()?;
        }
        for (listener, addr) in [
            ("QUIC listener (--quic-addr)", self.quic_addr),
            ("HTTP/3 listener (--http3-addr)", self.tls.http3_addr),
        ] {
            if addr.is_some() && !self.tls.enabled() {
                return Err(ConfigError::QuicWithoutTls(listener));
            }
        }
        if self.cluster.enabled() {
            if self.cluster.lease_ttl < MIN_LEASE_TTL {
                return Err(ConfigError::LeaseTtlTooShort(self.cluster.lease_ttl));
            }
            if self.cluster.instance.trim().is_empty() {
                return Err(ConfigError::ClusterWithoutInstance);
            }
        }
        let secret_ok = self
            .cluster
            .secret
            .as_ref()
            .is_some_and(|s| s.expose().len() >= 16);
        if let Some(peer) = self.cluster.peer_addr {
            if !(self.cluster.enabled() && secret_ok) {
                return Err(ConfigError::PeerWithoutCluster);
            }
            if peer.ip().is_unspecified() && self.cluster.peer_advertise.trim().is_empty() {
                return Err(ConfigError::PeerAdvertiseNeeded(peer));
            }
        }
        if !self.tls.enabled() && !self.allow_plaintext {
            for (listener, addr) in [
                ("the control listener", self.control_addr),
                ("the data listener", self.data_addr),
            ] {
                if !addr.ip().is_loopback() {
                    return Err(ConfigError::PlaintextOnPublicAddress { listener, addr });
                }
            }
        }
        Ok(())
    }

    /// True when no credential of any kind is configured here (a token table is a service
    /// the embedder adds beside the configuration).
    pub fn is_open(&self) -> bool {
        self.tokens.is_empty() && !self.auth.any() && self.tls.client_ca.is_none()
    }

    fn check_loopback_only(&self) -> Result<(), ConfigError> {
        let listeners = [
            ("the control listener", Some(self.control_addr)),
            ("the data listener", Some(self.data_addr)),
            ("the QUIC listener", self.quic_addr),
            ("the public HTTP listener", Some(self.http_addr)),
            ("the public HTTPS listener", self.tls.https_addr),
            ("the public HTTP/3 listener", self.tls.http3_addr),
            ("the admin listener", self.admin.addr),
        ];
        for (listener, addr) in listeners.into_iter().filter_map(|(l, a)| Some((l, a?))) {
            if !addr.ip().is_loopback() {
                return Err(ConfigError::OpenOnPublicAddress { listener, addr });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quic_listeners_without_a_certificate_are_refused_by_name() {
        let mut config = ServerConfig::ephemeral();
        config.tls.http3_addr = Some("127.0.0.1:0".parse().expect("addr"));
        let refused = config.check_rules(false).expect_err("no certificate");
        assert!(refused.to_string().contains("--http3-addr"), "{refused}");
        let mut config = ServerConfig::ephemeral();
        config.quic_addr = Some("127.0.0.1:0".parse().expect("addr"));
        let refused = config.check_rules(false).expect_err("no certificate");
        assert!(refused.to_string().contains("--quic-addr"), "{refused}");
    }

    #[test]
    fn defaults_are_valid_and_loopback() {
        ServerConfig::default()
            .check_rules(false)
            .expect("defaults validate");
        ServerConfig::ephemeral()
            .check_rules(false)
            .expect("ephemeral validates");
    }

    #[test]
    fn open_server_on_public_address_is_refused_with_a_hint() {
        let config = ServerConfig {
            http_addr: "0.0.0.0:8080".parse().expect("addr"),
            ..ServerConfig::default()
        };
        let err = config
            .check_rules(false)
            .expect_err("must refuse")
            .to_string();
        assert!(err.contains("0.0.0.0:8080"), "{err}");
        assert!(err.contains("SHOWOFF_TOKEN"), "{err}");
        let with_token = ServerConfig {
            tokens: vec![Secret::new("t")],
            ..config
        };
        with_token
            .check_rules(false)
            .expect("a token makes it safe");
    }

    #[test]
    fn plaintext_control_or_data_on_a_public_address_is_refused_unless_allowed() {
        for (control, data) in [
            ("0.0.0.0:7000", "127.0.0.1:7001"),
            ("127.0.0.1:7000", "[::]:7001"),
        ] {
            let config = ServerConfig {
                control_addr: control.parse().expect("addr"),
                data_addr: data.parse().expect("addr"),
                tokens: vec![Secret::new("t")],
                ..ServerConfig::default()
            };
            let err = config
                .check_rules(false)
                .expect_err("plaintext")
                .to_string();
            assert!(
                err.contains("without TLS") && err.contains("--allow-plaintext"),
                "{err}"
            );
            ServerConfig {
                allow_plaintext: true,
                ..config.clone()
            }
            .check_rules(false)
            .expect("opted out");
            let mut with_cert = config;
            with_cert.tls.certificates.push(PemPair {
                cert: String::new(),
                key: String::new(),
            });
            with_cert.check_rules(false).expect("TLS makes it safe");
        }
    }

    #[test]
    fn port_ranges_parse_strictly() {
        assert_eq!(
            "20000-20999".parse::<PortRange>().expect("range").len(),
            1000
        );
        assert_eq!(
            "5000".parse::<PortRange>().expect("single"),
            PortRange {
                first: 5000,
                last: 5000
            }
        );
        assert!("0-0".parse::<PortRange>().is_ok());
        for bad in ["", "9-1", "a-b", "0-10", "1-70000"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_domains_are_refused() {
        for domain in ["", "Example.com", "a..b", "x.test:80"] {
            let config = ServerConfig {
                domain: domain.into(),
                ..ServerConfig::default()
            };
            assert!(config.check_rules(false).is_err(), "{domain:?}");
        }
    }
}
