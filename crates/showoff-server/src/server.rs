//! The server as a whole: [`Server::bind`] binds every listener and reports the real addresses;
//! [`Server::run`] accepts until told to stop, then drains. [`Shared`] is the state every task
//! reaches through an `Arc`: config, registry, routes, sessions, pending streams, counters, and
//! the two cancellation tokens of the drain (`drain`: stop accepting and say `GoAway`; `stop`:
//! everything ends).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use showoff_proto::{RefusedCode, ServerMessage, TunnelKind};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

use crate::audit::AuditEvent;
use crate::auth::{Authenticator, Chain, Open, Principal, SharedTokens};
use crate::config::{ConfigError, ServerConfig};
use crate::limits::RateLimits;
use crate::registry::{MemoryRegistry, Registry, Routes};
use crate::session::{Session, refused};
use crate::stats::{Stats, StatsSnapshot};
use crate::transport::dialback::DialBack;
use crate::transport::tune_socket;
use crate::tunnel::Tunnel;

/// Longest the server waits for background tasks after the hard stop.
const STOP_WAIT: Duration = Duration::from_secs(2);
/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

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

/// How the drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// True when every in-flight visitor finished within the grace period.
    pub clean: bool,
}

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    shared: Arc<Shared>,
    /// The ACME task's request queue, handed to it by `run`.
    acme_rx: Option<tokio::sync::mpsc::Receiver<String>>,
    control: TcpListener,
    data: TcpListener,
    http: TcpListener,
    https: Option<TcpListener>,
    admin: Option<TcpListener>,
}

/// A cheap handle for reading a running server's state.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl ServerHandle {
    /// Current counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Whether a drain has begun.
    pub fn is_draining(&self) -> bool {
        self.shared.drain.is_cancelled()
    }

    /// Replaces the TLS certificates (file change or SIGHUP); new handshakes use them at once,
    /// open connections are untouched. On error the previous certificates stay in force.
    pub fn reload_certificates(&self, pairs: &[crate::tls::PemPair]) -> Result<usize, String> {
        if !self.shared.config.tls.enabled() {
            return Err("the server started without TLS; restart it to turn TLS on".into());
        }
        let count = self.shared.tls.store.replace(pairs)?;
        info!(count, names = ?self.shared.tls.store.names(), "certificates reloaded");
        Ok(count)
    }

    /// Closes every session of a principal whose token was revoked; returns how many. Their
    /// names and ports are freed at once.
    pub fn close_principal(&self, principal: &str) -> usize {
        self.shared.close_principal(principal)
    }
}

impl Server {
    /// Validates `config` and binds every listener, with the in-memory registry.
    pub async fn bind(config: ServerConfig) -> Result<Self, ServerError> {
        Self::bind_with_registry(config, Arc::new(MemoryRegistry::default())).await
    }

    /// Like [`bind`](Self::bind) with a chosen name registry.
    pub async fn bind_with_registry(
        config: ServerConfig,
        registry: Arc<dyn Registry>,
    ) -> Result<Self, ServerError> {
        config.check_rules()?;
        // Keys, certificates and policies load once, before anything is bound.
        let authenticator = authenticator(&config)?;
        let tls = crate::tls::Tls::new(&config.tls).map_err(ConfigError::Tls)?;
        let control = bind("control", config.control_addr).await?;
        let data = bind("data", config.data_addr).await?;
        let http = bind("public HTTP", config.http_addr).await?;
        let https = match config.tls.https_addr {
            Some(addr) => Some(bind("public HTTPS", addr).await?),
            None => None,
        };
        let admin = match config.admin.addr {
            Some(addr) => Some(bind("admin", addr).await?),
            None => None,
        };
        let http_port = http.local_addr().map(|a| a.port()).unwrap_or(0);
        let data_port = data.local_addr().map(|a| a.port()).unwrap_or(0);
        let stats = Stats::new(&config.build, config.admin.tunnel_metrics);
        let limits = RateLimits::new(&config.rates);
        let https_port = https
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port());
        let acme = config.tls.acme.as_ref().map(|acme| {
            let (tx, rx) = tokio::sync::mpsc::channel(ACME_QUEUE);
            (acme.on_demand.then_some(tx), rx)
        });
        let (acme_requests, acme_rx) = match acme {
            Some((tx, rx)) => (tx, Some(rx)),
            None => (None, None),
        };
        let shared = Arc::new(Shared {
            acme_http01: Default::default(),
            acme_requests,
            public_http_port: config.public_http_port.unwrap_or(http_port),
            public_https_port: config.public_https_port.or(https_port),
            tls,
            tunnel_ip: config.http_addr.ip(),
            data_port,
            config,
            registry,
            routes: Routes::default(),
            sessions: Mutex::new(HashMap::new()),
            pending: Default::default(),
            stats,
            authenticator,
            limits,
            ready: AtomicBool::new(false),
            drain: CancellationToken::new(),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            visitors: TaskTracker::new(),
        });
        Ok(Self {
            shared,
            acme_rx,
            control,
            data,
            http,
            https,
            admin,
        })
    }

    /// The bound addresses (real ports when the config asked for port 0).
    pub fn addrs(&self) -> ServerAddrs {
        let addr = |l: &TcpListener| l.local_addr().expect("a bound listener has an address");
        ServerAddrs {
            control: addr(&self.control),
            data: addr(&self.data),
            http: addr(&self.http),
            admin: self.admin.as_ref().map(addr),
            https: self.https.as_ref().map(addr),
        }
    }

    /// A handle for reading counters while the server runs.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: self.shared.clone(),
        }
    }

    /// Serves until `shutdown` is cancelled, then drains: stop accepting, `GoAway` to clients,
    /// let in-flight visitors finish within `shutdown_grace`, stop everything.
    pub async fn run(self, shutdown: CancellationToken) -> DrainReport {
        let shared = self.shared;
        let admin = self.admin.as_ref().and_then(|l| l.local_addr().ok());
        let admin = admin.map_or_else(|| "off".to_string(), |a| a.to_string());
        let https = self.https.as_ref().and_then(|l| l.local_addr().ok());
        let https = https.map_or_else(|| "off".to_string(), |a| a.to_string());
        info!(
            addrs = ?ServerAddrsDisplay(&shared, &self.control, &self.data, &self.http),
            https = %https,
            tls = shared.config.tls.enabled(),
            admin = %admin,
            "server listening"
        );
        let s = shared.clone();
        shared.tasks.spawn(accept_loop(
            self.control,
            s.drain.clone().cancelled_owned(),
            s.clone(),
            |stream, peer, s| {
                s.tasks
                    .spawn(crate::session::serve_control(stream, peer, s.clone()).instrument(
                        tracing::info_span!("session", %peer, session = tracing::field::Empty, principal = tracing::field::Empty),
                    ));
            },
        ));
        shared.tasks.spawn(accept_loop(
            self.data,
            s.stop.clone().cancelled_owned(),
            s.clone(),
            |stream, peer, s| {
                s.tasks.spawn(
                    crate::transport::dialback::accept_data(stream, s.clone())
                        .instrument(tracing::debug_span!("data", %peer)),
                );
            },
        ));
        shared.tasks.spawn(accept_loop(
            self.http,
            s.drain.clone().cancelled_owned(),
            s.clone(),
            |stream, peer, s| {
                s.visitors.spawn(
                    crate::edge::http::serve_visitor(stream, peer, s.clone()).instrument(
                        tracing::info_span!("visitor", %peer, tunnel = tracing::field::Empty),
                    ),
                );
            },
        ));
        if let Some(https) = self.https {
            shared.tasks.spawn(accept_loop(
                https,
                s.drain.clone().cancelled_owned(),
                s.clone(),
                |stream, peer, s| {
                    s.visitors.spawn(
                        crate::edge::https::serve_visitor(stream, peer, s.clone()).instrument(
                            tracing::info_span!("visitor", %peer, tunnel = tracing::field::Empty),
                        ),
                    );
                },
            ));
        }
        if let Some(admin) = self.admin {
            shared
                .tasks
                .spawn(crate::admin::serve(admin, shared.clone()));
        }
        shared.tasks.spawn(forget_full_buckets(shared.clone()));
        if let Some(rx) = self.acme_rx {
            shared.tasks.spawn(crate::acme::run(shared.clone(), rx));
        }
        // Every listener accepts and the metrics registry exists: ready.
        shared.ready.store(true, Ordering::Release);
        shutdown.cancelled().await;
        shared.drain_and_stop().await
    }
}

struct ServerAddrsDisplay<'a>(
    &'a Shared,
    &'a TcpListener,
    &'a TcpListener,
    &'a TcpListener,
);

impl std::fmt::Debug for ServerAddrsDisplay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addr = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        write!(
            f,
            "control={} data={} http={} domain={}",
            addr(self.1),
            addr(self.2),
            addr(self.3),
            self.0.config.domain
        )
    }
}

async fn bind(listener: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    listen(addr).map_err(|source| ServerError::Bind {
        listener,
        addr,
        source,
    })
}

/// Pending connections the kernel queues per listener (capped by `net.core.somaxconn`). A burst
/// of reconnecting clients or visitors overflowing tokio's default of 1024 costs each dropped
/// SYN a one-second retransmit (seen as 27 s to register 10,000 tunnels).
pub(crate) const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener with [`LISTEN_BACKLOG`] and `SO_REUSEADDR` (restarts do not wait for
/// TIME_WAIT).
pub(crate) fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Every minute, drops rate-limit state of keys that are idle again (bounded memory).
async fn forget_full_buckets(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = tick.tick() => shared.limits.retain_recent(),
        }
    }
}

/// The authenticators the configuration asks for, in order: client certificates (mTLS),
/// shared tokens, the token table,
/// signed tokens, JWT, Rego policy, decision webhook; with none, the server runs open.
pub(crate) fn authenticator(config: &ServerConfig) -> Result<Arc<dyn Authenticator>, ConfigError> {
    let mut chain: Vec<Arc<dyn Authenticator>> = Vec::new();
    if config.tls.client_ca.is_some() {
        chain.push(Arc::new(crate::auth::Certificate));
    }
    if !config.tokens.is_empty() {
        chain.push(Arc::new(SharedTokens(config.tokens.clone())));
    }
    if let Some(table) = &config.token_table {
        chain.push(Arc::new(table.clone()));
    }
    let auth = &config.auth;
    if let Some(secret) = &auth.signed_secret {
        chain.push(Arc::new(crate::auth::signed::SignedTokens::new(secret)));
    }
    if let Some(jwt) = &auth.jwt {
        chain.push(Arc::new(
            crate::auth::jwt::Jwt::new(jwt).map_err(ConfigError::Auth)?,
        ));
    }
    if let Some(policy) = &auth.policy {
        let rego = crate::auth::policy::RegoPolicy::new(&policy.path, &policy.rego, &policy.rule)
            .map_err(ConfigError::Auth)?;
        chain.push(Arc::new(rego));
    }
    if let Some(webhook) = &auth.webhook {
        let webhook = crate::auth::policy::Webhook::new(&webhook.url, webhook.timeout)
            .map_err(ConfigError::Auth)?;
        chain.push(Arc::new(webhook));
    }
    if chain.is_empty() {
        return Ok(Arc::new(Open));
    }
    Ok(Arc::new(Chain(chain)))
}

/// On-demand certificate requests queued for the ACME task; more are dropped (the name is asked
/// for again when its tunnel next registers).
const ACME_QUEUE: usize = 256;

/// Accepts connections until `until` completes; hands each to `spawn` with nodelay and
/// keepalive set. Every listener of the server, TCP tunnel ports included, runs this loop.
pub(crate) async fn accept_loop<F>(
    listener: TcpListener,
    until: impl std::future::Future<Output = ()>,
    shared: Arc<Shared>,
    spawn: F,
) where
    F: Fn(TcpStream, SocketAddr, &Arc<Shared>),
{
    tokio::pin!(until);
    loop {
        let accepted = tokio::select! {
            _ = &mut until => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                tune_socket(&stream);
                spawn(stream, peer, &shared);
            }
            Err(error) => {
                debug!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// State shared by every task of one server.
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    /// Certificates and TLS acceptors.
    pub(crate) tls: crate::tls::Tls,
    /// Pending HTTP-01 answers (ACME).
    pub(crate) acme_http01: crate::acme::Http01Answers,
    /// Hostnames of new tunnels for the ACME task (on-demand certificates).
    pub(crate) acme_requests: Option<tokio::sync::mpsc::Sender<String>>,
    /// HTTPS port shown in public URLs (`None`: no HTTPS listener).
    pub(crate) public_https_port: Option<u16>,
    pub(crate) registry: Arc<dyn Registry>,
    pub(crate) routes: Routes,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    pub(crate) pending: crate::pending::Pending,
    pub(crate) stats: Stats,
    authenticator: Arc<dyn Authenticator>,
    /// Rate limiters.
    pub(crate) limits: RateLimits,
    /// Set once every accept loop runs (`/readyz`).
    ready: AtomicBool,
    /// Cancelled when the drain begins.
    pub(crate) drain: CancellationToken,
    /// Cancelled when everything must end.
    pub(crate) stop: CancellationToken,
    /// Sessions, data connections, upstream connections, accept loops.
    pub(crate) tasks: TaskTracker,
    /// Visitor connections: what the drain waits for.
    pub(crate) visitors: TaskTracker,
    public_http_port: u16,
    tunnel_ip: IpAddr,
    /// The data listener's port, told to clients in `Welcome`.
    pub(crate) data_port: u16,
}

impl Shared {
    async fn drain_and_stop(&self) -> DrainReport {
        info!(
            grace_secs = self.config.shutdown_grace.as_secs(),
            "draining"
        );
        self.drain.cancel();
        self.visitors.close();
        let clean = tokio::time::timeout(self.config.shutdown_grace, self.visitors.wait())
            .await
            .is_ok();
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(STOP_WAIT, self.tasks.wait())
            .await
            .is_err()
        {
            warn!("background tasks did not stop in time");
        }
        if clean {
            info!("drain finished cleanly");
        } else {
            warn!(
                cut = self.visitors.len(),
                "drain cut short: visitors still connected after the grace period"
            );
        }
        DrainReport { clean }
    }

    /// Sessions connected now.
    pub(crate) fn session_count(&self) -> usize {
        self.sessions().len()
    }

    /// Whether the server has started serving (`/readyz`).
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Every live session, for the admin API.
    pub(crate) fn all_sessions(&self) -> Vec<Arc<Session>> {
        let mut sessions: Vec<_> = self.sessions().values().cloned().collect();
        sessions.sort_by_key(|s| s.started);
        sessions
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The principal a token stands for, or the refusal.
    pub(crate) async fn authenticate(
        &self,
        request: &crate::auth::AuthRequest<'_>,
    ) -> Result<Principal, crate::auth::AuthError> {
        self.authenticator.authenticate(request).await
    }

    /// Closes every session of `principal` (revoked token); returns how many.
    pub(crate) fn close_principal(&self, principal: &str) -> usize {
        let mut closed = 0;
        for session in self
            .sessions()
            .values()
            .filter(|s| s.principal.id == principal)
        {
            session.cancel.cancel();
            closed += 1;
        }
        let event = AuditEvent::new("revoked").principal(principal);
        self.audit(event.message(format!("{closed} session(s) closed")));
        closed
    }

    /// Sends an event to the audit sink, if one is configured.
    pub(crate) fn audit(&self, event: AuditEvent) {
        if let Some(log) = &self.config.audit {
            log.record(event);
        }
    }

    /// Tunnels `principal` holds now, except those named in `except` (a reconnect takes them
    /// over).
    pub(crate) fn tunnels_of(&self, principal: &str, except: &[String]) -> usize {
        self.routes
            .all()
            .iter()
            .filter(|t| t.principal == principal && !except.contains(&t.info.name))
            .count()
    }

    pub(crate) fn add_session(&self, session: Arc<Session>) {
        self.sessions().insert(session.id.clone(), session);
    }

    pub(crate) fn remove_session(&self, id: &str) {
        self.sessions().remove(id);
    }

    /// The dial-back transport of a live session.
    pub(crate) fn session(&self, id: &str) -> Option<Arc<DialBack>> {
        self.sessions().get(id).map(|s| s.dialback.clone())
    }

    /// Ends a session (takeover): its task sees the cancellation and tears it down.
    pub(crate) fn close_session(&self, id: &str) {
        if let Some(session) = self.sessions().get(id) {
            session.cancel.cancel();
        }
    }

    /// Unregisters a tunnel: route, name, listener, upstream connections.
    pub(crate) fn release_tunnel(&self, tunnel: &Arc<Tunnel>) {
        tunnel.closed.cancel();
        self.routes.remove(&tunnel.info.name, &tunnel.session_id);
        self.stats
            .tunnel_closed(tunnel.info.kind.as_str(), tunnel.age());
        let closed = AuditEvent::new("tunnel_closed")
            .principal(&tunnel.principal)
            .session(&tunnel.session_id)
            .names(vec![tunnel.info.name.clone()]);
        self.audit(closed.message(format!("open for {}s", tunnel.age().as_secs())));
        let registry = self.registry.clone();
        let name = tunnel.info.name.clone();
        let session = tunnel.session_id.clone();
        // Registry calls are async (a cluster backend may be remote); the release must not wait
        // on the caller, which can be a Drop.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = registry.release(&name, &session).await {
                    warn!(%error, name, "failed to release name");
                }
            });
        }
    }

    /// Binds a public port for a TCP tunnel: the requested one, or the first free one of the
    /// configured range starting at a random offset.
    pub(crate) async fn bind_tunnel_port(
        &self,
        requested: Option<u16>,
    ) -> Result<TcpListener, ServerMessage> {
        let range = self.config.tcp_ports;
        let unavailable = |port| {
            refused(
                RefusedCode::PortUnavailable,
                format!("port {port} is in use or outside the server's range {range}"),
            )
        };
        if let Some(port) = requested {
            let allowed = range.first == 0 || range.contains(port);
            if !allowed {
                return Err(unavailable(port));
            }
            return TcpListener::bind((self.tunnel_ip, port))
                .await
                .map_err(|_| unavailable(port));
        }
        if range.first == 0 {
            return TcpListener::bind((self.tunnel_ip, 0))
                .await
                .map_err(|_| unavailable(0));
        }
        let offset = rand::random_range(0..range.len());
        for i in 0..range.len() {
            let port = range.first + ((offset + i) % range.len()) as u16;
            if let Ok(listener) = listen((self.tunnel_ip, port).into()) {
                return Ok(listener);
            }
        }
        Err(refused(
            RefusedCode::LimitReached,
            format!("every port of {range} is in use"),
        ))
    }

    /// Starts the accept loop of a TCP tunnel.
    pub(crate) fn spawn_tcp_tunnel(self: &Arc<Self>, listener: TcpListener, tunnel: Arc<Tunnel>) {
        self.tasks.spawn(crate::edge::tcp::serve_tunnel(
            listener,
            tunnel,
            self.clone(),
        ));
    }

    /// The URL visitors use for a tunnel.
    pub(crate) fn public_url(&self, kind: TunnelKind, name: &str, port: Option<u16>) -> String {
        let domain = &self.config.domain;
        match (kind, port) {
            (TunnelKind::Tls, _) => match self.public_https_port {
                Some(443) | None => format!("tls://{name}.{domain}"),
                Some(port) => format!("tls://{name}.{domain}:{port}"),
            },
            (TunnelKind::Http, _) if self.public_https_port.is_some() => {
                match self.public_https_port {
                    Some(443) | None => format!("https://{name}.{domain}"),
                    Some(port) => format!("https://{name}.{domain}:{port}"),
                }
            }
            (TunnelKind::Http, _) if self.public_http_port == 80 => {
                format!("http://{name}.{domain}")
            }
            (TunnelKind::Http, _) => format!("http://{name}.{domain}:{}", self.public_http_port),
            (kind, Some(port)) => format!("{}://{domain}:{port}", kind.as_str()),
            (kind, None) => format!("{}://{domain}", kind.as_str()),
        }
    }
}
