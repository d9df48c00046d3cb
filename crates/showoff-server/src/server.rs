//! The composition root: the only module that sees every layer. [`Server::bind`] validates the
//! configuration, loads keys, certificates and policies once, builds each layer's narrow
//! context and binds every listener, reporting the real addresses; [`Server::run`] starts one
//! accept loop per listener and the background jobs, serves until told to stop, then drains.
//!
//! What the embedder provides beside the plain configuration are [`Services`]: the name
//! registry, the token table, the audit sink, run-time log control and extra exchange sinks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use showoff_core::{ExchangeSink, Exchanges, MemoryRegistry, Registry};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::audit::{AuditEvent, AuditLog};
use crate::auth::TokenTable;
use crate::config::{ConfigError, ServerConfig};
use crate::control::{ControlContext, ControlSettings};
use crate::drain::{Drain, DrainReport};
use crate::edge::tcp::TcpEdge;
use crate::edge::{EdgeContext, EdgeSettings};
use crate::limits::RateLimits;
use crate::listen::Prelude;
use crate::ops::acme::AcmeContext;
use crate::ops::admin::{AdminContext, LogControl};
use crate::state::ports::PortPlan;
use crate::state::{PublicUrls, Routes, Sessions};
use crate::stats::{Stats, StatsSnapshot};
use crate::tls::{Http01Answers, PemPair, Tls};
use crate::transport::dialback::{DialBackHub, DialBackSettings};

/// On-demand certificate requests queued for the ACME task; more are dropped (the name is asked
/// for again when its tunnel next registers).
const ACME_QUEUE: usize = 256;

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
    crate::auth::from_config(config, services.token_table.as_ref())?;
    Tls::new(&config.tls).map_err(ConfigError::Tls)?;
    Ok(())
}

/// Every layer's context, built once by [`Server::bind`].
struct Layers {
    control: Arc<ControlContext>,
    edge: Arc<EdgeContext>,
    dialback: Arc<DialBackHub>,
    admin: Arc<AdminContext>,
    acme: Option<(AcmeContext, mpsc::Receiver<String>)>,
    sessions: Arc<Sessions>,
    stats: Arc<Stats>,
    limits: Arc<RateLimits>,
    tls: Arc<Tls>,
    audit: AuditLog,
    drain: Drain,
}

/// The bound sockets.
struct Listeners {
    control: TcpListener,
    data: TcpListener,
    http: TcpListener,
    https: Option<TcpListener>,
    admin: Option<TcpListener>,
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
        };
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
            tls = self.config.tls.enabled(),
            admin = %shown(addrs.admin),
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
        drain.run(config.shutdown_grace).await
    }
}

impl Layers {
    /// Builds every layer's context from the configuration and the services.
    fn build(
        config: &ServerConfig,
        services: Services,
        authenticator: Arc<dyn crate::auth::Authenticator>,
        tls: Arc<Tls>,
        listeners: &Listeners,
    ) -> Self {
        let stats = Arc::new(Stats::new(&config.build, config.admin.tunnel_metrics));
        let limits = Arc::new(RateLimits::new(&config.rates));
        let (sessions, routes) = (Arc::new(Sessions::default()), Arc::new(Routes::default()));
        let drain = Drain::default();
        let https_port = listeners.https.as_ref().map(port_of);
        let urls = PublicUrls {
            domain: config.domain.clone(),
            http_port: config
                .public_http_port
                .unwrap_or_else(|| port_of(&listeners.http)),
            https_port: config.public_https_port.or(https_port),
        };
        let acme_http01 = Http01Answers::default();
        let edge = Arc::new(EdgeContext {
            settings: edge_settings(config),
            routes: routes.clone(),
            limits: limits.clone(),
            stats: stats.clone(),
            exchanges: exchanges(config, &stats, services.exchange_sinks),
            drain: drain.clone(),
            urls: urls.clone(),
            tls: tls.clone(),
            acme_http01: acme_http01.clone(),
        });
        let dialback = DialBackHub::new(dialback_settings(config), stats.clone(), tls.clone());
        let (acme, acme_requests) = match &config.tls.acme {
            Some(acme) => {
                let (tx, rx) = mpsc::channel(ACME_QUEUE);
                let ctx = AcmeContext {
                    config: acme.clone(),
                    domain: config.domain.clone(),
                    routes: routes.clone(),
                    tls: tls.clone(),
                    http01: acme_http01,
                    stats: stats.clone(),
                    stop: drain.stopping().clone(),
                };
                (Some((ctx, rx)), acme.on_demand.then_some(tx))
            }
            None => (None, None),
        };
        let registry = services
            .registry
            .unwrap_or_else(|| Arc::new(MemoryRegistry::default()));
        let control = Arc::new(ControlContext {
            settings: control_settings(config, port_of(&listeners.data)),
            sessions: sessions.clone(),
            routes: routes.clone(),
            registry,
            dialback: dialback.clone(),
            authenticator,
            limits: limits.clone(),
            stats: stats.clone(),
            audit: services.audit.clone(),
            tls: tls.clone(),
            urls,
            acme_requests,
            tcp_tunnels: Arc::new(TcpEdge(edge.clone())),
            drain: drain.clone(),
        });
        let admin = Arc::new(AdminContext {
            sessions: sessions.clone(),
            routes,
            stats: stats.clone(),
            build: config.build.clone(),
            token: config.admin.token.clone(),
            log_control: services.log_control,
            drain: drain.clone(),
        });
        Self {
            control,
            edge,
            dialback,
            admin,
            acme,
            sessions,
            stats,
            limits,
            tls,
            audit: services.audit,
            drain,
        }
    }

    /// Starts one accept loop per listener, the admin listener and the background jobs.
    fn start(self, config: &ServerConfig, listeners: Listeners) {
        let drain = self.drain.clone();
        let tasks = drain.tasks().clone();
        let (draining, stopping) = (drain.draining().clone(), drain.stopping().clone());
        let public = Prelude {
            policy: config.proxy.protocol,
            proxy: config.proxy.clone(),
            deadline: config.head_timeout,
        };
        let control_prelude = Prelude {
            policy: config.proxy.control,
            proxy: config.proxy.clone(),
            deadline: showoff_proto::HANDSHAKE_TIMEOUT,
        };
        let ctx = self.control.clone();
        tasks.spawn(crate::listen::serve(
            listeners.control,
            draining.clone().cancelled_owned(),
            control_prelude,
            tasks.clone(),
            |peer| tracing::info_span!("session", %peer, session = tracing::field::Empty, principal = tracing::field::Empty),
            move |arrived| crate::control::handshake::serve(arrived, ctx.clone()),
        ));
        let hub = self.dialback.clone();
        tasks.spawn(crate::listen::serve(
            listeners.data,
            stopping.clone().cancelled_owned(),
            Prelude::plain(),
            tasks.clone(),
            |peer| tracing::debug_span!("data", %peer),
            move |arrived: crate::listen::Arrived| {
                let hub = hub.clone();
                async move {
                    if let Ok(arrival) = arrived {
                        crate::transport::dialback::accept::serve(arrival, hub).await;
                    }
                }
            },
        ));
        let visitor_span =
            |peer| tracing::info_span!("visitor", %peer, tunnel = tracing::field::Empty);
        let edge = self.edge.clone();
        tasks.spawn(crate::listen::serve(
            listeners.http,
            draining.clone().cancelled_owned(),
            public.clone(),
            drain.visitors().clone(),
            visitor_span,
            move |arrived| crate::edge::http::serve_visitor(arrived, edge.clone()),
        ));
        if let Some(https) = listeners.https {
            let edge = self.edge.clone();
            tasks.spawn(crate::listen::serve(
                https,
                draining.cancelled_owned(),
                public,
                drain.visitors().clone(),
                visitor_span,
                move |arrived| crate::edge::https::serve_visitor(arrived, edge.clone()),
            ));
        }
        if let Some(admin) = listeners.admin {
            tasks.spawn(crate::ops::admin::serve(admin, self.admin.clone()));
        }
        tasks.spawn(forget_full_buckets(self.limits.clone(), stopping));
        if let Some((ctx, rx)) = self.acme {
            tasks.spawn(crate::ops::acme::run(ctx, rx));
        }
    }
}

/// The exchange sinks: metrics, the access log when on, then the embedder's.
fn exchanges(
    config: &ServerConfig,
    stats: &Arc<Stats>,
    extra: Vec<Arc<dyn ExchangeSink>>,
) -> Exchanges {
    let mut sinks: Vec<Arc<dyn ExchangeSink>> = vec![stats.clone()];
    if config.admin.access_log {
        sinks.push(Arc::new(crate::ops::access_log::AccessLog));
    }
    sinks.extend(extra);
    Exchanges::new(sinks)
}

fn edge_settings(config: &ServerConfig) -> EdgeSettings {
    EdgeSettings {
        domain: config.domain.clone(),
        max_header_bytes: config.max_header_bytes,
        head_timeout: config.head_timeout,
        io_idle_timeout: config.io_idle_timeout,
        max_visitors_per_tunnel: config.max_visitors_per_tunnel,
        redirect_http: config.tls.redirect_http,
        proxy: config.proxy.clone(),
    }
}

fn dialback_settings(config: &ServerConfig) -> DialBackSettings {
    DialBackSettings {
        warm_pool: config.warm_pool,
        pending_timeout: config.pending_timeout,
        max_pending_per_session: config.max_pending_per_session,
        max_pending_total: config.max_pending_total,
    }
}

fn control_settings(config: &ServerConfig, data_port: u16) -> ControlSettings {
    ControlSettings {
        heartbeat_interval: config.heartbeat_interval,
        heartbeat_timeout: config.heartbeat_timeout,
        tunnel_idle_timeout: config.tunnel_idle_timeout,
        tunnel_lifetime: config.tunnel_lifetime,
        max_sessions: config.max_sessions,
        warm_pool: config.warm_pool,
        tunnels_per_principal: config.rates.tunnels_per_principal,
        names: config.names.clone(),
        ports: PortPlan {
            ip: config.http_addr.ip(),
            range: config.tcp_ports,
        },
        data_port,
    }
}

/// Every minute, drops rate-limit state of keys that are idle again (bounded memory).
async fn forget_full_buckets(limits: Arc<RateLimits>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => limits.retain_recent(),
        }
    }
}
