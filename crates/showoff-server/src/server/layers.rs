//! Building and starting the layers: one narrow context per layer, made from the
//! configuration and the services ([`Layers::build`]), then one accept loop per listener and
//! the background jobs ([`Layers::start`]).

use std::sync::Arc;
use std::time::Duration;

use showoff_core::{ExchangeSink, Exchanges, MemoryRegistry};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Listeners, Services, port_of};
use crate::audit::AuditLog;
use crate::config::ServerConfig;
use crate::control::{ControlContext, ControlSettings, NoMirrors};
use crate::drain::Drain;
use crate::edge::peer::ClusterEdge;
use crate::edge::peer::mirror::Mirrors;
use crate::edge::tcp::TcpEdge;
use crate::edge::udp::UdpEdge;
use crate::edge::{EdgeContext, EdgeSettings};
use crate::limits::RateLimits;
use crate::listen::{ConnectionGate, Prelude};
use crate::ops::acme::AcmeContext;
use crate::ops::admin::AdminContext;
use crate::state::partition::Partition;
use crate::state::ports::{PortKind, PortPlan};
use crate::state::{PublicUrls, Routes, Sessions, VisitorCaps};
use crate::stats::Stats;
use crate::tls::{Http01Answers, Tls};
use crate::transport::dialback::{DialBackHub, DialBackSettings};

/// On-demand certificate requests queued for the ACME task; more are dropped (the name is asked
/// for again when its tunnel next registers).
const ACME_QUEUE: usize = 256;

/// Every layer's context, built once by [`Server::bind`].
pub(super) struct Layers {
    pub(super) control: Arc<ControlContext>,
    pub(super) edge: Arc<EdgeContext>,
    pub(super) dialback: Arc<DialBackHub>,
    pub(super) admin: Arc<AdminContext>,
    pub(super) acme: Option<(AcmeContext, mpsc::Receiver<String>)>,
    pub(super) sessions: Arc<Sessions>,
    pub(super) stats: Arc<Stats>,
    pub(super) limits: Arc<RateLimits>,
    pub(super) tls: Arc<Tls>,
    pub(super) audit: AuditLog,
    pub(super) drain: Drain,
    /// In a cluster: the ports this instance listens on for the others.
    pub(super) mirrors: Option<Arc<Mirrors>>,
    /// Whether this instance fenced itself off its cluster.
    pub(super) partition: Arc<Partition>,
}

/// The services several layers share, before each gets its own context. Lives only while
/// the layers are built; no layer ever sees it.
struct Parts {
    stats: Arc<Stats>,
    limits: Arc<RateLimits>,
    sessions: Arc<Sessions>,
    routes: Arc<Routes>,
    drain: Drain,
    tls: Arc<Tls>,
    urls: PublicUrls,
    http01: Http01Answers,
    partition: Arc<Partition>,
}

impl Parts {
    fn new(config: &ServerConfig, tls: Arc<Tls>, listeners: &Listeners) -> Self {
        Self {
            stats: Arc::new(Stats::new(&config.build, config.admin.tunnel_metrics)),
            limits: Arc::new(RateLimits::new(&config.rates)),
            sessions: Arc::new(Sessions::default()),
            routes: Arc::new(Routes::default()),
            drain: Drain::default(),
            tls,
            urls: public_urls(config, listeners),
            http01: Http01Answers::default(),
            partition: Arc::default(),
        }
    }
}

impl Layers {
    /// Builds every layer's context from the configuration and the services.
    pub(super) fn build(
        config: &ServerConfig,
        services: Services,
        authenticator: Arc<dyn crate::auth::Authenticator>,
        tls: Arc<Tls>,
        listeners: &Listeners,
    ) -> Self {
        let parts = Parts::new(config, tls, listeners);
        let registry: Arc<dyn showoff_core::Registry> = services
            .registry
            .clone()
            .unwrap_or_else(|| Arc::new(MemoryRegistry::default()));
        let cluster = cluster_edge(config, &registry);
        let http3_port = listeners
            .http3
            .as_ref()
            .and_then(|e| e.local_addr().ok())
            .map(|a| a.port());
        let edge = edge_context(
            config,
            http3_port,
            &parts,
            services.exchange_sinks.clone(),
            cluster.clone(),
        );
        let mirrors = cluster.map(|cluster| {
            let (tcp, udp) = port_plans(config);
            Arc::new(Mirrors::new(edge.clone(), cluster, tcp, udp))
        });
        let dialback = DialBackHub::new(
            dialback_settings(config),
            parts.stats.clone(),
            parts.tls.clone(),
        );
        let (acme, acme_requests) = acme_context(config, &parts);
        let control = Arc::new(ControlContext {
            settings: control_settings(
                config,
                port_of(&listeners.data),
                listeners
                    .quic
                    .as_ref()
                    .and_then(|e| e.local_addr().ok())
                    .map(|a| a.port()),
            ),
            sessions: parts.sessions.clone(),
            routes: parts.routes.clone(),
            registry: registry.clone(),
            dialback: dialback.clone(),
            authenticator,
            limits: parts.limits.clone(),
            stats: parts.stats.clone(),
            audit: services.audit.clone(),
            tls: parts.tls.clone(),
            urls: parts.urls.clone(),
            acme_requests,
            tcp_tunnels: Arc::new(TcpEdge(edge.clone())),
            udp_tunnels: Arc::new(UdpEdge(edge.clone())),
            mirrors: control_mirrors(mirrors.as_ref()),
            drain: parts.drain.clone(),
        });
        let admin = admin_context(config, &parts, &services, registry);
        Self {
            control,
            edge,
            dialback,
            admin,
            acme,
            sessions: parts.sessions,
            stats: parts.stats,
            limits: parts.limits,
            tls: parts.tls,
            audit: services.audit,
            drain: parts.drain,
            mirrors,
            partition: parts.partition,
        }
    }

    /// Starts one accept loop per listener, the admin listener and the background jobs.
    pub(super) fn start(self, config: &ServerConfig, listeners: Listeners) {
        let drain = self.drain.clone();
        let tasks = drain.tasks().clone();
        let (draining, stopping) = (drain.draining().clone(), drain.stopping().clone());
        let public = self.edge.prelude.clone();
        let limits = &config.connections;
        let gate = |listener, total, per_ip| {
            Some(ConnectionGate::new(
                listener,
                total,
                per_ip,
                self.stats.clone(),
            ))
        };
        let control_prelude = Prelude {
            policy: config.proxy.control,
            proxy: config.proxy.clone(),
            deadline: showoff_proto::HANDSHAKE_TIMEOUT,
            gate: gate("control", limits.control, limits.client_per_ip),
        };
        let data_gate = gate("data", limits.data, limits.client_per_ip);
        let ctx = self.control.clone();
        tasks.spawn(crate::listen::serve(
            listeners.control,
            draining.clone().cancelled_owned(),
            control_prelude,
            drain.sessions().clone(),
            |peer| tracing::info_span!("session", %peer, session = tracing::field::Empty, principal = tracing::field::Empty),
            move |arrived| crate::control::handshake::serve(arrived, ctx.clone()),
        ));
        let hub = self.dialback.clone();
        tasks.spawn(crate::listen::serve(
            listeners.data,
            stopping.clone().cancelled_owned(),
            Prelude::plain(data_gate),
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
            move |arrived| crate::edge::visitor::serve_visitor(arrived, edge.clone()),
        ));
        if let Some(peer) = listeners.peer {
            let edge = self.edge.clone();
            // Open until the hard stop: while this instance drains, the others still forward
            // to it the visitors of the tunnels it holds, until their clients have moved.
            tasks.spawn(crate::listen::serve(
                peer,
                stopping.clone().cancelled_owned(),
                Prelude::plain(None),
                drain.visitors().clone(),
                |peer| tracing::info_span!("peer", %peer, tunnel = tracing::field::Empty),
                move |arrived| crate::edge::visitor::serve_peer(arrived, edge.clone()),
            ));
        }
        if let Some(https) = listeners.https {
            let edge = self.edge.clone();
            tasks.spawn(crate::listen::serve(
                https,
                draining.clone().cancelled_owned(),
                public,
                drain.visitors().clone(),
                visitor_span,
                move |arrived| crate::edge::https::serve_visitor(arrived, edge.clone()),
            ));
        }
        self.start_background(listeners.quic, listeners.http3, listeners.admin, &tasks);
    }

    /// The QUIC, HTTP/3 and admin listeners and the background jobs.
    fn start_background(
        self,
        quic: Option<quinn::Endpoint>,
        http3: Option<quinn::Endpoint>,
        admin: Option<tokio::net::TcpListener>,
        tasks: &tokio_util::task::TaskTracker,
    ) {
        let (draining, stopping) = (self.drain.draining().clone(), self.drain.stopping().clone());
        if let Some(endpoint) = http3 {
            tasks.spawn(crate::edge::h3::serve(
                endpoint,
                draining.clone(),
                stopping.clone(),
                self.drain.visitors().clone(),
                self.edge.clone(),
            ));
        }
        if let Some(endpoint) = quic {
            let serving = crate::control::quic::serve(
                endpoint,
                draining.clone(),
                stopping.clone(),
                self.drain.sessions().clone(),
                self.control.clone(),
            );
            tasks.spawn(serving);
        }
        if let Some(admin) = admin {
            tasks.spawn(crate::ops::admin::serve(admin, self.admin.clone()));
        }
        tasks.spawn(forget_full_buckets(self.limits.clone(), stopping));
        if let Some(mirrors) = self.mirrors {
            tasks.spawn(mirrors.run());
        }
        if let Some(cluster) = self.edge.cluster.clone() {
            let fencing = super::fence::Fencing {
                registry: self.control.registry.clone(),
                cluster,
                sessions: self.sessions.clone(),
                partition: self.partition.clone(),
                stats: self.stats.clone(),
            };
            tasks.spawn(fencing.run(self.drain.stopping().clone()));
        }
        if let Some((ctx, rx)) = self.acme {
            tasks.spawn(crate::ops::acme::run(ctx, rx));
        }
    }
}

/// How requests for other instances' tunnels are forwarded: in a cluster with a secret.
fn cluster_edge(
    config: &ServerConfig,
    registry: &Arc<dyn showoff_core::Registry>,
) -> Option<Arc<ClusterEdge>> {
    let cluster = &config.cluster;
    let secret = cluster.secret.as_ref().filter(|_| cluster.enabled())?;
    Some(Arc::new(ClusterEdge::new(
        &cluster.instance,
        registry.clone(),
        secret,
    )))
}

fn edge_context(
    config: &ServerConfig,
    http3_port: Option<u16>,
    parts: &Parts,
    sinks: Vec<Arc<dyn ExchangeSink>>,
    cluster: Option<Arc<ClusterEdge>>,
) -> Arc<EdgeContext> {
    Arc::new(EdgeContext {
        settings: edge_settings(config, http3_port),
        prelude: Prelude {
            policy: config.proxy.protocol,
            proxy: config.proxy.clone(),
            deadline: config.head_timeout,
            gate: Some(ConnectionGate::new(
                "public",
                config.connections.public,
                config.connections.public_per_ip,
                parts.stats.clone(),
            )),
        },
        routes: parts.routes.clone(),
        limits: parts.limits.clone(),
        stats: parts.stats.clone(),
        exchanges: exchanges(config, &parts.stats, sinks),
        drain: parts.drain.clone(),
        urls: parts.urls.clone(),
        tls: parts.tls.clone(),
        acme_http01: parts.http01.clone(),
        flow_budget: showoff_core::FlowBudget::new(config.udp.flows),
        cluster,
    })
}

/// The ACME task's context and its request queue, and the sender registration uses for
/// on-demand names; `None`s without ACME.
type Acme = (
    Option<(AcmeContext, mpsc::Receiver<String>)>,
    Option<mpsc::Sender<String>>,
);

fn acme_context(config: &ServerConfig, parts: &Parts) -> Acme {
    let Some(acme) = &config.tls.acme else {
        return (None, None);
    };
    let (tx, rx) = mpsc::channel(ACME_QUEUE);
    let ctx = AcmeContext {
        config: acme.clone(),
        domain: config.domain.clone(),
        routes: parts.routes.clone(),
        tls: parts.tls.clone(),
        http01: parts.http01.clone(),
        stats: parts.stats.clone(),
        stop: parts.drain.stopping().clone(),
    };
    (Some((ctx, rx)), acme.on_demand.then_some(tx))
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

/// The domain and public ports URLs are written with: the configured public ports, else the
/// listeners' own.
fn public_urls(config: &ServerConfig, listeners: &Listeners) -> PublicUrls {
    PublicUrls {
        domain: config.domain.clone(),
        http_port: config
            .public_http_port
            .unwrap_or_else(|| port_of(&listeners.http)),
        https_port: config
            .public_https_port
            .or(listeners.https.as_ref().map(port_of)),
    }
}

/// The edges' settings; `http3_port` is the bound HTTP/3 listener's, advertised in `Alt-Svc`.
fn edge_settings(config: &ServerConfig, http3_port: Option<u16>) -> EdgeSettings {
    EdgeSettings {
        max_header_bytes: config.max_header_bytes,
        head_timeout: config.head_timeout,
        io_idle_timeout: config.io_idle_timeout,
        min_body_rate: config.min_body_rate,
        visitor_caps: VisitorCaps {
            per_tunnel: config.max_visitors_per_tunnel,
            per_ip: config.max_visitors_per_tunnel_per_ip,
        },
        upgrades: config.allowed_upgrades.clone(),
        redirect_http: config.tls.redirect_http,
        proxy: config.proxy.clone(),
        trace: config.trace.clone(),
        udp: config.udp,
        alt_svc: http3_port
            .map(|bound| config.public_http3_port.unwrap_or(bound))
            .map(crate::edge::h3::alt_svc),
    }
}

fn dialback_settings(config: &ServerConfig) -> DialBackSettings {
    DialBackSettings {
        warm_pool: config.warm_pool,
        pending_timeout: config.pending_timeout,
        max_pending_per_session: config.max_pending_per_session,
        max_pending_total: config.max_pending_total,
        user_timeout: config.io_idle_timeout,
    }
}

fn control_settings(
    config: &ServerConfig,
    data_port: u16,
    quic_port: Option<u16>,
) -> ControlSettings {
    ControlSettings {
        heartbeat_interval: config.heartbeat_interval,
        heartbeat_timeout: config.heartbeat_timeout,
        tunnel_idle_timeout: config.tunnel_idle_timeout,
        tunnel_lifetime: config.tunnel_lifetime,
        max_sessions: config.max_sessions,
        warm_pool: config.warm_pool,
        tunnels_per_principal: config.rates.tunnels_per_principal,
        names: config.names.clone(),
        ports: port_plans(config).0,
        udp_ports: port_plans(config).1,
        udp_flow_idle: config.udp.flow_idle,
        data_port,
        quic_port,
        trace: config.trace.enabled.then_some(config.trace.sample),
    }
}

/// What registration asks for mirrored ports: nothing outside a cluster.
fn control_mirrors(mirrors: Option<&Arc<Mirrors>>) -> Arc<dyn crate::control::PortMirrors> {
    match mirrors {
        Some(mirrors) => mirrors.clone(),
        None => Arc::new(NoMirrors),
    }
}

fn admin_context(
    config: &ServerConfig,
    parts: &Parts,
    services: &Services,
    registry: Arc<dyn showoff_core::Registry>,
) -> Arc<AdminContext> {
    Arc::new(AdminContext {
        sessions: parts.sessions.clone(),
        routes: parts.routes.clone(),
        stats: parts.stats.clone(),
        build: config.build.clone(),
        token: config.admin.token.clone(),
        metrics_auth: config.admin.metrics_auth,
        log_control: services.log_control.clone(),
        drain: parts.drain.clone(),
        registry,
        partition: parts.partition.clone(),
    })
}

/// Where TCP and UDP tunnel ports are bound: beside the public HTTP listener.
fn port_plans(config: &ServerConfig) -> (PortPlan, PortPlan) {
    let ip = config.http_addr.ip();
    (
        PortPlan {
            ip,
            range: config.tcp_ports,
            kind: PortKind::Tcp,
        },
        PortPlan {
            ip,
            range: config.udp_ports,
            kind: PortKind::Udp,
        },
    )
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
