//! The composition root: the only module that sees every layer. [`Server::bind`] validates the
//! configuration, loads keys, certificates and policies once, builds each layer's narrow
//! context and binds every listener, reporting the real addresses; [`Server::run`] starts one
//! accept loop per listener and the background jobs, serves until told to stop, then drains.
//!
//! What the embedder provides beside the plain configuration are [`Services`]: the name
//! registry, the token table, the audit sink, run-time log control and extra exchange sinks.

mod fence;
mod layers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use showoff_core::{ExchangeSink, Registry};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use self::layers::Layers;
use crate::audit::{AuditEvent, AuditLog};
use crate::auth::TokenTable;
use crate::config::{ConfigError, ServerConfig};
use crate::drain::{Drain, DrainReport};
use crate::ops::admin::LogControl;
use crate::state::Sessions;
use crate::stats::{Stats, StatsSnapshot};
use crate::tls::{PemPair, Tls};

/// In a cluster, how long a drain waits for its clients to move their sessions to another
/// instance (each opens the new session before it leaves this one) before it stops them.
pub const SESSION_HANDOVER: Duration = Duration::from_secs(5);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is unsafe or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error("failed to bind the {listener} listener on {addr}: {source}")]
    Bind {
        /// Which listener.
        listener: &'static str,
        /// The address tried.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The addresses the server actually listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerAddrs {
    /// Control listener.
    pub control: SocketAddr,
    /// Data listener.
    pub data: SocketAddr,
    /// Public HTTP listener.
    pub http: SocketAddr,
    /// Admin listener, when enabled.
    pub admin: Option<SocketAddr>,
    /// Public HTTPS listener, when enabled.
    pub https: Option<SocketAddr>,
    /// QUIC listener (UDP), when enabled.
    pub quic: Option<SocketAddr>,
    /// Public HTTP/3 listener (UDP), when enabled.
    pub http3: Option<SocketAddr>,
    /// Cluster peer listener, when enabled.
    pub peer: Option<SocketAddr>,
}

/// The runtime parts an embedder hands the server beside its configuration. Every one has a
/// working default: the in-memory registry, no token table, no audit sink, no log control.
#[derive(Clone, Default)]
pub struct Services {
    /// Leases on names and ports; [`MemoryRegistry`] when `None`.
    pub registry: Option<Arc<dyn Registry>>,
    /// Per-client tokens, replaceable at run time (the binary fills it from a token file).
    pub token_table: Option<TokenTable>,
    /// Where audit events go.
    pub audit: AuditLog,
    /// Run-time log level changes (`PUT /api/v1/log-level`), when the binary supports them.
    pub log_control: Option<LogControl>,
    /// More consumers of exchange events, after the metrics and the access log.
    pub exchange_sinks: Vec<Arc<dyn ExchangeSink>>,
}

/// Checks everything [`Server::bind`] would check before binding: the rules, and that keys,
/// certificates and policies load (`--check-config`).
pub fn validate(config: &ServerConfig, services: &Services) -> Result<(), ConfigError> {
    config.check_rules(services.token_table.is_some())?;
    if config.cluster.enabled() && services.registry.is_none() {
        return Err(ConfigError::ClusterWithoutRegistry);
    }
    crate::auth::from_config(config, services.token_table.as_ref())?;
    Tls::new(&config.tls).map_err(ConfigError::Tls)?;
    Ok(())
}

/// The bound sockets.
struct Listeners {
    control: TcpListener,
    data: TcpListener,
    http: TcpListener,
    https: Option<TcpListener>,
    admin: Option<TcpListener>,
    /// The QUIC listener's endpoint, when on.
    quic: Option<quinn::Endpoint>,
    /// The public HTTP/3 listener's endpoint, when on.
    http3: Option<quinn::Endpoint>,
    /// The cluster peer listener, when on.
    peer: Option<TcpListener>,
}

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    config: ServerConfig,
    layers: Layers,
    listeners: Listeners,
}

/// A cheap handle for reading and steering a running server.
#[derive(Clone)]
pub struct ServerHandle {
    stats: Arc<Stats>,
    sessions: Arc<Sessions>,
    tls: Arc<Tls>,
    tls_enabled: bool,
    audit: AuditLog,
    drain: Drain,
}

impl ServerHandle {
    /// Current counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Whether a drain has begun.
    pub fn is_draining(&self) -> bool {
        self.drain.is_draining()
    }

    /// Replaces the TLS certificates (file change or SIGHUP); new handshakes use them at once,
    /// open connections are untouched. On error the previous certificates stay in force.
    pub fn reload_certificates(&self, pairs: &[PemPair]) -> Result<usize, String> {
        if !self.tls_enabled {
            return Err("the server started without TLS; restart it to turn TLS on".into());
        }
        let count = self.tls.store.replace(pairs)?;
        info!(count, names = ?self.tls.store.names(), "certificates reloaded");
        Ok(count)
    }

    /// Closes every session of a principal whose token was revoked; returns how many. Their
    /// names and ports are freed at once.
    pub fn close_principal(&self, principal: &str) -> usize {
        let closed = self.sessions.close_principal(principal);
        let event = AuditEvent::new("revoked").principal(principal);
        self.audit
            .record(event.message(format!("{closed} session(s) closed")));
        closed
    }
}

async fn bind(listener: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    crate::listen::listen(addr).map_err(|source| ServerError::Bind {
        listener,
        addr,
        source,
    })
}

async fn bind_optional(
    listener: &'static str,
    addr: Option<SocketAddr>,
) -> Result<Option<TcpListener>, ServerError> {
    match addr {
        Some(addr) => Ok(Some(bind(listener, addr).await?)),
        None => Ok(None),
    }
}

/// The QUIC listener's endpoint, when the config asks for one (TLS is checked by then).
fn bind_quic(config: &ServerConfig, tls: &Tls) -> Result<Option<quinn::Endpoint>, ServerError> {
    let (Some(addr), Some(crypto)) = (config.quic_addr, tls.quic()) else {
        return Ok(None);
    };
    let failed = |source: std::io::Error| ServerError::Bind {
        listener: "QUIC",
        addr,
        source,
    };
    let server = crate::transport::quic::server_config(crypto, config.heartbeat_timeout)
        .map_err(ConfigError::Tls)?;
    let (socket, report) = showoff_core::quic::bind_udp(addr).map_err(failed)?;
    info!(%addr, %report, "QUIC socket bound");
    let endpoint = showoff_core::quic::endpoint(socket, Some(server)).map_err(failed)?;
    Ok(Some(endpoint))
}

/// The public HTTP/3 listener's endpoint, when the config asks for one.
fn bind_http3(config: &ServerConfig, tls: &Tls) -> Result<Option<quinn::Endpoint>, ServerError> {
    let (Some(addr), Some(crypto)) = (config.tls.http3_addr, tls.http3()) else {
        return Ok(None);
    };
    let failed = |source: std::io::Error| ServerError::Bind {
        listener: "public HTTP/3",
        addr,
        source,
    };
    let server =
        crate::edge::h3::server_config(crypto, config.io_idle_timeout).map_err(ConfigError::Tls)?;
    let (socket, report) = showoff_core::quic::bind_udp(addr).map_err(failed)?;
    info!(%addr, %report, "HTTP/3 socket bound");
    let endpoint = showoff_core::quic::endpoint(socket, Some(server)).map_err(failed)?;
    Ok(Some(endpoint))
}

/// Tells the cluster where this instance's peer listener is: `--peer-advertise`, or the
/// listener's own address (refused by the rules when that is a wildcard).
fn announce_peer(config: &ServerConfig, services: &Services, peer: Option<&TcpListener>) {
    let (Some(registry), Some(listener)) = (&services.registry, peer) else {
        return;
    };
    let advertised = match config.cluster.peer_advertise.trim() {
        "" => listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        given => given.to_string(),
    };
    info!(peer = %advertised, instance = %config.cluster.instance, "cluster peer listener announced");
    registry.announce(&advertised);
}

fn port_of(listener: &TcpListener) -> u16 {
    listener.local_addr().map(|a| a.port()).unwrap_or(0)
}

impl Server {
    /// Validates `config` and binds every listener, with default [`Services`].
    pub async fn bind(config: ServerConfig) -> Result<Self, ServerError> {
        Self::bind_with(config, Services::default()).await
    }

    /// Like [`bind`](Self::bind) with the embedder's services.
    pub async fn bind_with(config: ServerConfig, services: Services) -> Result<Self, ServerError> {
        config.check_rules(services.token_table.is_some())?;
        // Keys, certificates and policies load once, before anything is bound.
        let authenticator = crate::auth::from_config(&config, services.token_table.as_ref())?;
        let tls = Arc::new(Tls::new(&config.tls).map_err(ConfigError::Tls)?);
        let listeners = Listeners {
            control: bind("control", config.control_addr).await?,
            data: bind("data", config.data_addr).await?,
            http: bind("public HTTP", config.http_addr).await?,
            https: bind_optional("public HTTPS", config.tls.https_addr).await?,
            admin: bind_optional("admin", config.admin.addr).await?,
            quic: bind_quic(&config, &tls)?,
            http3: bind_http3(&config, &tls)?,
            peer: bind_optional("cluster peer", config.cluster.peer_addr).await?,
        };
        announce_peer(&config, &services, listeners.peer.as_ref());
        let layers = Layers::build(&config, services, authenticator, tls, &listeners);
        Ok(Self {
            config,
            layers,
            listeners,
        })
    }

    /// The bound addresses (real ports when the config asked for port 0).
    pub fn addrs(&self) -> ServerAddrs {
        let addr = |l: &TcpListener| l.local_addr().expect("a bound listener has an address");
        let l = &self.listeners;
        ServerAddrs {
            control: addr(&l.control),
            data: addr(&l.data),
            http: addr(&l.http),
            admin: l.admin.as_ref().map(addr),
            https: l.https.as_ref().map(addr),
            quic: l.quic.as_ref().and_then(|e| e.local_addr().ok()),
            http3: l.http3.as_ref().and_then(|e| e.local_addr().ok()),
            peer: l.peer.as_ref().map(addr),
        }
    }

    /// A handle for reading counters while the server runs.
    pub fn handle(&self) -> ServerHandle {
        let layers = &self.layers;
        ServerHandle {
            stats: layers.stats.clone(),
            sessions: layers.sessions.clone(),
            tls: layers.tls.clone(),
            tls_enabled: self.config.tls.enabled(),
            audit: layers.audit.clone(),
            drain: layers.drain.clone(),
        }
    }

    /// Serves until `shutdown` is cancelled, then drains: stop accepting, `GoAway` to clients,
    /// let in-flight visitors finish within `shutdown_grace`, stop everything.
    pub async fn run(self, shutdown: CancellationToken) -> DrainReport {
        let addrs = self.addrs();
        let shown = |a: Option<SocketAddr>| a.map_or_else(|| "off".to_string(), |a| a.to_string());
        let listening = format!(
            "control={} data={} http={} domain={}",
            addrs.control, addrs.data, addrs.http, self.config.domain
        );
        info!(
            addrs = %listening,
            https = %shown(addrs.https),
            quic = %shown(addrs.quic),
            tls = self.config.tls.enabled(),
            admin = %shown(addrs.admin),
            peer = %shown(addrs.peer),
            "server listening"
        );
        let Self {
            config,
            layers,
            listeners,
        } = self;
        let drain = layers.drain.clone();
        layers.start(&config, listeners);
        // Every listener accepts and the metrics registry exists: ready.
        drain.mark_ready();
        shutdown.cancelled().await;
        // In a cluster the clients move to another instance before the sessions stop.
        let handover = if config.cluster.enabled() {
            SESSION_HANDOVER
        } else {
            Duration::ZERO
        };
        drain
            .run(config.drain_delay, config.shutdown_grace, handover)
            .await
    }
}
