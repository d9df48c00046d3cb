//! Client sessions: the control connection from `Hello` to its end.
//!
//! [`serve_control`] runs the handshake (`Hello`, `Auth`, `Open` → `Welcome` or `Refused`), then
//! the [`ControlLoop`]: it forwards `Dial`s from the transport, answers heartbeats, handles
//! `Close` and `StreamError`, closes idle tunnels and says `GoAway` when the server drains.
//! A [`SessionGuard`] undoes everything the session registered, however the task ends.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use showoff_proto::{
    ClientMessage, FrameCodec, HANDSHAKE_TIMEOUT, RefusedCode, Role, SUPPORTED_VERSIONS,
    ServerMessage, TunnelInfo, TunnelKind, TunnelSpec,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::audit::AuditEvent;
use crate::auth::{NamePattern, Principal};
use crate::config::NamePolicy;
use crate::edge::access::Access;
use crate::registry::{Claim, Owner, RegistryError};
use crate::server::Shared;
use crate::transport::dialback::DialBack;
use crate::tunnel::Tunnel;

/// Most tunnels one session may open.
pub const MAX_TUNNELS_PER_SESSION: usize = 64;

/// Initial read buffer of a control connection.
const CONTROL_BUFFER: usize = 512;

/// Frames queued towards one client before `Dial` senders wait.
const CONTROL_QUEUE: usize = 256;

type ControlFramed = Framed<crate::tls::ServerIo, FrameCodec<ClientMessage, ServerMessage>>;

/// One authenticated client.
pub(crate) struct Session {
    pub(crate) id: String,
    pub(crate) principal: Principal,
    /// The client's address.
    pub(crate) peer: SocketAddr,
    /// When the session was set up.
    pub(crate) started: Instant,
    pub(crate) dialback: Arc<DialBack>,
    pub(crate) tunnels: Mutex<Vec<Arc<Tunnel>>>,
    /// Cancelled to close the session (takeover, shutdown).
    pub(crate) cancel: CancellationToken,
}

impl Session {
    fn tunnels(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Tunnel>>> {
        self.tunnels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Names of the session's tunnels, for the admin API.
    pub(crate) fn tunnel_names(&self) -> Vec<String> {
        self.tunnels().iter().map(|t| t.info.name.clone()).collect()
    }
}

/// A refusal to send before closing.
pub(crate) fn refused(code: RefusedCode, message: impl Into<String>) -> ServerMessage {
    ServerMessage::Refused {
        code,
        message: message.into(),
    }
}

pub(crate) fn bad_request(message: &str) -> ServerMessage {
    refused(RefusedCode::BadRequest, message)
}

/// Accepts a `Hello` version or says which versions this server speaks.
pub(crate) fn check_version(version: u16) -> Result<(), ServerMessage> {
    if SUPPORTED_VERSIONS.contains(&version) {
        return Ok(());
    }
    Err(refused(
        RefusedCode::VersionMismatch,
        format!(
            "protocol version {version} is not supported; this server speaks {SUPPORTED_VERSIONS:?}"
        ),
    ))
}

/// Serves one control connection until the session ends.
pub(crate) async fn serve_control(mut stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let proxy = &shared.config.proxy;
    let arrival = crate::edge::proxy_protocol::arrive(
        &mut stream,
        peer,
        proxy.control,
        proxy,
        HANDSHAKE_TIMEOUT,
    )
    .await;
    let (peer, prefix) = match arrival {
        Ok(arrival) => (arrival.peer, arrival.prefix),
        Err(error) => {
            info!(%peer, code = error.code(), "control connection refused by the PROXY protocol policy");
            shared.stats.session_refused(error.code());
            return;
        }
    };
    let accepted = shared
        .tls
        .accept_control(stream, prefix, HANDSHAKE_TIMEOUT)
        .await;
    let (stream, certificate) = match accepted {
        Ok(accepted) => accepted,
        Err(error) => {
            info!(%peer, %error, "control connection failed the TLS handshake");
            shared.stats.session_refused("tls_handshake");
            return;
        }
    };
    if let Err(wait) = shared.limits.control(peer.ip()) {
        let secs = crate::limits::retry_secs(wait);
        let message = format!("too many connections from this address; retry in {secs}s");
        shared
            .stats
            .session_refused(RefusedCode::RateLimited.as_str());
        shared.audit(
            AuditEvent::new("session_refused")
                .peer(peer)
                .refused("rate_limited", &message),
        );
        let mut framed = Framed::new(stream, FrameCodec::<ClientMessage, ServerMessage>::new());
        let _ = framed
            .send(refused(RefusedCode::RateLimited, message))
            .await;
        return;
    }
    // Control frames are small; buffers start at 512 bytes and grow only when a frame needs it
    // (tokio-util's default of 8 KiB each was half of an idle session's memory).
    let codec = FrameCodec::<ClientMessage, ServerMessage>::new();
    let mut framed = Framed::with_capacity(stream, codec, CONTROL_BUFFER);
    let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
    let client = Client {
        peer,
        certificate: certificate.as_deref(),
    };
    let setup = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake(&mut framed, tx, client, &shared),
    );
    let guard = match setup.await {
        Ok(Ok(guard)) => guard,
        Ok(Err(refusal)) => {
            if let ServerMessage::Refused { code, message } = &refusal {
                info!(%peer, %code, message, "session refused");
                shared.stats.session_refused(code.as_str());
                let kind = if matches!(code, RefusedCode::AuthFailed | RefusedCode::AuthUnavailable)
                {
                    "auth_failed"
                } else {
                    "session_refused"
                };
                shared.audit(
                    AuditEvent::new(kind)
                        .peer(peer)
                        .refused(code.as_str(), message),
                );
            }
            let _ = framed.send(refusal).await;
            return;
        }
        Err(_) => {
            debug!(%peer, "control handshake timed out");
            return;
        }
    };
    let session = guard.session.clone();
    let span = tracing::Span::current();
    span.record("session", session.id.as_str());
    span.record("principal", session.principal.id.as_str());
    info!(%peer, session = %session.id, principal = %session.principal.id, "session up");
    let up = AuditEvent::new("auth_ok")
        .principal(&session.principal.id)
        .peer(peer);
    shared.audit(up.session(&session.id).names(session.tunnel_names()));
    let end = ControlLoop::new(framed, rx, session.clone(), shared.clone())
        .run()
        .await;
    info!(%peer, session = %session.id, reason = end, "session ended");
    drop(guard);
}

/// Who is on the other end of a control connection.
#[derive(Clone, Copy)]
struct Client<'a> {
    peer: SocketAddr,
    /// The verified client certificate's identity (mTLS).
    certificate: Option<&'a str>,
}

async fn handshake(
    framed: &mut ControlFramed,
    tx: mpsc::Sender<ServerMessage>,
    client: Client<'_>,
    shared: &Arc<Shared>,
) -> Result<SessionGuard, ServerMessage> {
    let peer = client.peer;
    match framed.next().await {
        Some(Ok(ClientMessage::Hello { version, role })) => {
            check_version(version)?;
            if role != Role::Control {
                return Err(bad_request("expected role control"));
            }
        }
        _ => return Err(bad_request("expected hello")),
    }
    if shared.drain.is_cancelled() {
        return Err(refused(
            RefusedCode::ShuttingDown,
            "the server is shutting down",
        ));
    }
    let principal = match framed.next().await {
        Some(Ok(ClientMessage::Auth { token })) => {
            let request = crate::auth::AuthRequest {
                token: &token,
                peer,
                certificate: client.certificate,
            };
            shared.authenticate(&request).await.map_err(|error| {
                if error.code() == RefusedCode::AuthFailed {
                    shared.stats.auth_failures.inc();
                }
                refused(error.code(), error.to_string())
            })?
        }
        _ => return Err(bad_request("expected auth")),
    };
    let specs = match framed.next().await {
        Some(Ok(ClientMessage::Open { tunnels })) => tunnels,
        _ => return Err(bad_request("expected open")),
    };
    if specs.is_empty() || specs.len() > MAX_TUNNELS_PER_SESSION {
        return Err(refused(
            RefusedCode::LimitReached,
            format!("a session opens 1 to {MAX_TUNNELS_PER_SESSION} tunnels"),
        ));
    }
    check_tunnel_limit(shared, &principal, &specs)?;
    check_tunnel_rate(shared, &principal, specs.len())?;
    if shared.session_count() >= shared.config.max_sessions {
        return Err(refused(
            RefusedCode::LimitReached,
            format!(
                "the server is full ({} sessions); try again later",
                shared.config.max_sessions
            ),
        ));
    }
    let guard = SessionGuard::new(principal, peer, tx, shared.clone());
    let mut infos = Vec::with_capacity(specs.len());
    for spec in specs {
        infos.push(open_tunnel(&guard, spec).await?);
    }
    shared.add_session(guard.session.clone());
    let welcome = ServerMessage::Welcome {
        session: guard.session.id.clone(),
        data_key: guard.session.dialback.data_key.clone(),
        data_port: shared.data_port,
        heartbeat_interval_secs: shared.config.heartbeat_interval.as_secs().max(1),
        warm_pool: shared.config.warm_pool,
        tunnels: infos,
    };
    framed
        .send(welcome)
        .await
        .map_err(|_| bad_request("connection lost"))?;
    Ok(guard)
}

/// Refuses a session that would take its principal over its tunnel limit. Tunnels the request
/// names again are not counted twice: a reconnect takes them over.
fn check_tunnel_limit(
    shared: &Shared,
    principal: &Principal,
    specs: &[TunnelSpec],
) -> Result<(), ServerMessage> {
    let Some(max) = principal.max_tunnels else {
        return Ok(());
    };
    let renamed: Vec<String> = specs.iter().filter_map(|s| s.name.clone()).collect();
    let held = shared.tunnels_of(&principal.id, &renamed);
    if held + specs.len() > max {
        return Err(refused(
            RefusedCode::LimitReached,
            format!(
                "{} may hold {max} tunnels; {held} are open and {} were asked for",
                principal.id,
                specs.len()
            ),
        ));
    }
    Ok(())
}

/// Refuses a session that would open tunnels faster than its principal's rate allows.
fn check_tunnel_rate(
    shared: &Shared,
    principal: &Principal,
    count: usize,
) -> Result<(), ServerMessage> {
    let per_minute = shared.config.rates.tunnels_per_principal;
    match shared.limits.new_tunnels(&principal.id, count) {
        Ok(()) => Ok(()),
        Err(Some(wait)) => Err(refused(
            RefusedCode::RateLimited,
            format!(
                "{} opens at most {per_minute} tunnels per minute; retry in {}s",
                principal.id,
                crate::limits::retry_secs(wait)
            ),
        )),
        Err(None) => Err(refused(
            RefusedCode::LimitReached,
            format!("{count} tunnels at once exceed the limit of {per_minute} per minute"),
        )),
    }
}

async fn open_tunnel(guard: &SessionGuard, spec: TunnelSpec) -> Result<TunnelInfo, ServerMessage> {
    let shared = &guard.shared;
    let session = &guard.session;
    if !session.principal.may_open(spec.kind) {
        return Err(refused(
            RefusedCode::KindNotAllowed,
            format!(
                "{} may not open {} tunnels",
                session.principal.id,
                spec.kind.as_str()
            ),
        ));
    }
    let access =
        Access::parse(&spec.visitors).map_err(|why| refused(RefusedCode::BadRequest, why))?;
    if access.wants_basic_auth() && spec.kind != TunnelKind::Http {
        return Err(refused(
            RefusedCode::BadRequest,
            "basic auth applies to HTTP tunnels only",
        ));
    }
    let name = claim_name(guard, spec.name.as_deref()).await?;
    if spec.kind == TunnelKind::Tls && shared.public_https_port.is_none() {
        return Err(refused(
            RefusedCode::KindNotAllowed,
            "TLS tunnels need the server's HTTPS listener (--https-addr), which is off",
        ));
    }
    let listener = match spec.kind {
        TunnelKind::Http | TunnelKind::Tls => None,
        TunnelKind::Tcp => Some(shared.bind_tunnel_port(spec.port).await?),
        TunnelKind::Udp => {
            return Err(refused(
                RefusedCode::BadRequest,
                "UDP tunnels are not supported by this server yet",
            ));
        }
    };
    let port = listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.port());
    let info = TunnelInfo {
        public_url: shared.public_url(spec.kind, &name, port),
        name,
        kind: spec.kind,
        port,
    };
    let tunnel = Arc::new(Tunnel::new(
        info.clone(),
        spec,
        session.principal.id.clone(),
        session.id.clone(),
        session.dialback.clone(),
        access,
        session.cancel.child_token(),
    ));
    session.tunnels().push(tunnel.clone());
    shared.routes.insert(tunnel.clone());
    if let Some(acme) = &shared.acme_requests
        && tunnel.info.kind == TunnelKind::Http
    {
        let host = format!("{}.{}", tunnel.info.name, shared.config.domain);
        if !shared.tls.store.has_acme(&host) {
            let _ = acme.try_send(host);
        }
    }
    shared.stats.tunnel_opened(tunnel.info.kind.as_str());
    let opened = AuditEvent::new("tunnel_opened")
        .principal(&session.principal.id)
        .peer(session.peer)
        .session(&session.id);
    shared.audit(
        opened
            .names(vec![info.name.clone()])
            .message(info.public_url.clone()),
    );
    if let Some(listener) = listener {
        shared.spawn_tcp_tunnel(listener, tunnel);
    }
    Ok(info)
}

/// Claims the requested name (or a fresh readable one) for the session.
async fn claim_name(
    guard: &SessionGuard,
    requested: Option<&str>,
) -> Result<String, ServerMessage> {
    let owner = Owner {
        principal: guard.session.principal.id.clone(),
        session: guard.session.id.clone(),
    };
    let registry = &guard.shared.registry;
    let policy = &guard.shared.config.names;
    let principal = &guard.session.principal;
    let Some(name) = requested else {
        // ~10 million readable names: a handful of tries always finds a free one in practice.
        for _ in 0..16 {
            let name = random_name(policy, principal)?;
            if check_name(policy, principal, &name).is_err() {
                continue;
            }
            if let Ok(Claim::Fresh) = registry.claim(&name, &owner).await {
                return Ok(name);
            }
        }
        return Err(refused(
            RefusedCode::LimitReached,
            "no free name found; ask for one",
        ));
    };
    check_name(policy, principal, name)?;
    match registry.claim(name, &owner).await {
        Ok(Claim::Fresh) => Ok(name.to_string()),
        Ok(Claim::TakenOver { previous_session }) => {
            info!(name, previous = %previous_session, "name taken over by the same principal");
            let event = AuditEvent::new("takeover")
                .principal(&owner.principal)
                .session(&owner.session)
                .names(vec![name.to_string()]);
            guard
                .shared
                .audit(event.message(format!("from session {previous_session}")));
            guard.shared.close_session(&previous_session);
            Ok(name.to_string())
        }
        Ok(Claim::AlreadyHeld) => Err(refused(
            RefusedCode::BadRequest,
            format!("{name:?} is requested twice"),
        )),
        Err(RegistryError::Taken) => Err(refused(
            RefusedCode::NameTaken,
            format!("{name:?} is in use by another client; pick another name"),
        )),
        Err(RegistryError::Backend(e)) => {
            warn!(error = %e, "registry failed");
            Err(refused(
                RefusedCode::LimitReached,
                "the name registry is unavailable",
            ))
        }
    }
}

/// Applies the naming rules to a requested name; the refusal says which rule refused.
fn check_name(policy: &NamePolicy, principal: &Principal, name: &str) -> Result<(), ServerMessage> {
    let not_allowed = |why: String| refused(RefusedCode::NameNotAllowed, why);
    showoff_proto::host::validate_name(name).map_err(|e| {
        not_allowed(format!(
            "{name:?} is not a valid name ({e}): use 1-63 of a-z, 0-9 and '-'"
        ))
    })?;
    if policy.banned.iter().any(|b| b == name) {
        return Err(not_allowed(format!("{name:?} is banned on this server")));
    }
    if policy.reserved.iter().any(|r| r == name) {
        return Err(not_allowed(format!("{name:?} is reserved on this server")));
    }
    if !policy.allow.is_empty() && !policy.allow.iter().any(|p| p.matches(name)) {
        let patterns = join_patterns(&policy.allow);
        return Err(not_allowed(format!(
            "{name:?} is outside the names this server allows ({patterns})"
        )));
    }
    if !principal.may_use_name(name) {
        let patterns = join_patterns(&principal.names);
        return Err(not_allowed(format!(
            "{name:?} is outside the names this token may use ({patterns})"
        )));
    }
    Ok(())
}

fn join_patterns(patterns: &[NamePattern]) -> String {
    patterns
        .iter()
        .map(NamePattern::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A readable random name; inside the principal's (or else the server's) patterns when there
/// are any, by filling a pattern's `*` (`alice-*` → `alice-brave-otter-4821`).
fn random_name(policy: &NamePolicy, principal: &Principal) -> Result<String, ServerMessage> {
    let readable = showoff_proto::id::readable_name();
    let patterns = if principal.names.is_empty() {
        &policy.allow
    } else {
        &principal.names
    };
    if patterns.is_empty() {
        return Ok(readable);
    }
    patterns
        .iter()
        .find_map(|p| p.fill(&readable))
        .ok_or_else(|| {
            let patterns = join_patterns(patterns);
            refused(
                RefusedCode::NameNotAllowed,
                format!("ask for a name: only {patterns} are allowed"),
            )
        })
}

/// Undoes a session's registrations when dropped: routes, names, pending streams, warm pool.
pub(crate) struct SessionGuard {
    pub(crate) session: Arc<Session>,
    shared: Arc<Shared>,
    _gauge: SessionGauge,
}

struct SessionGauge(Arc<Shared>);

impl Drop for SessionGauge {
    fn drop(&mut self) {
        self.0.stats.sessions_active.dec();
    }
}

impl SessionGuard {
    fn new(
        principal: Principal,
        peer: SocketAddr,
        tx: mpsc::Sender<ServerMessage>,
        shared: Arc<Shared>,
    ) -> Self {
        let id = showoff_proto::id::random_id();
        let dialback = DialBack::new(
            id.clone(),
            showoff_proto::id::random_id(),
            tx,
            shared.clone(),
        );
        let session = Arc::new(Session {
            id,
            principal,
            peer,
            started: Instant::now(),
            dialback: Arc::new(dialback),
            tunnels: Mutex::new(Vec::new()),
            cancel: shared.stop.child_token(),
        });
        shared.stats.sessions_active.inc();
        Self {
            session,
            _gauge: SessionGauge(shared.clone()),
            shared,
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let session = &self.session;
        session.cancel.cancel();
        self.shared.remove_session(&session.id);
        self.shared.pending.remove_session(&session.id);
        session.dialback.clear_pool();
        let tunnels = std::mem::take(&mut *session.tunnels());
        for tunnel in &tunnels {
            self.shared.release_tunnel(tunnel);
        }
    }
}

/// The steady state of a control connection.
struct ControlLoop {
    framed: ControlFramed,
    rx: mpsc::Receiver<ServerMessage>,
    session: Arc<Session>,
    shared: Arc<Shared>,
    last_seen: Instant,
    said_goaway: bool,
}

impl ControlLoop {
    fn new(
        framed: ControlFramed,
        rx: mpsc::Receiver<ServerMessage>,
        session: Arc<Session>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            framed,
            rx,
            session,
            shared,
            last_seen: Instant::now(),
            said_goaway: false,
        }
    }

    /// Runs until the session ends; returns why, for the log.
    async fn run(mut self) -> &'static str {
        let period = self.shared.config.heartbeat_interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let session_cancel = self.session.cancel.clone();
        let drain = self.shared.drain.clone();
        loop {
            let step = tokio::select! {
                _ = session_cancel.cancelled() => self.closing().await,
                _ = drain.cancelled(), if !self.said_goaway => self.go_away().await,
                Some(msg) = self.rx.recv() => self.send(msg).await,
                frame = self.framed.next() => self.on_frame(frame),
                _ = ticker.tick() => self.heartbeat().await,
            };
            if let Err(reason) = step {
                return reason;
            }
        }
    }

    async fn send(&mut self, msg: ServerMessage) -> Result<(), &'static str> {
        self.framed.send(msg).await.map_err(|_| "write failed")
    }

    /// The session is being closed by the server; during a drain the client still hears why.
    async fn closing(&mut self) -> Result<(), &'static str> {
        if self.shared.drain.is_cancelled() && !self.said_goaway {
            let _ = self.go_away().await;
        }
        Err("closed by the server")
    }

    async fn go_away(&mut self) -> Result<(), &'static str> {
        self.said_goaway = true;
        let msg = ServerMessage::GoAway {
            reason: "server shutting down".into(),
            reconnect_after_ms: 1000,
        };
        self.send(msg).await
    }

    fn on_frame(
        &mut self,
        frame: Option<Result<ClientMessage, showoff_proto::ProtocolError>>,
    ) -> Result<(), &'static str> {
        let msg = match frame {
            None => return Err("client disconnected"),
            Some(Err(error)) => {
                debug!(%error, "bad frame from client");
                return Err("protocol error");
            }
            Some(Ok(msg)) => msg,
        };
        self.last_seen = Instant::now();
        match msg {
            ClientMessage::Pong => {}
            ClientMessage::StreamError { id, reason } => {
                self.shared.pending.fail(&id, &self.session.id, reason);
            }
            ClientMessage::Close { tunnel } => {
                self.close_tunnel(&tunnel);
            }
            other => {
                debug!(?other, "unexpected frame on control connection");
                return Err("protocol error");
            }
        }
        Ok(())
    }

    fn close_tunnel(&self, name: &str) -> Option<Arc<Tunnel>> {
        let tunnel = {
            let mut tunnels = self.session.tunnels();
            let index = tunnels.iter().position(|t| t.info.name == name)?;
            tunnels.swap_remove(index)
        };
        self.shared.release_tunnel(&tunnel);
        Some(tunnel)
    }

    async fn heartbeat(&mut self) -> Result<(), &'static str> {
        if self.last_seen.elapsed() > self.shared.config.heartbeat_timeout {
            return Err("heartbeat timeout");
        }
        self.close_idle_tunnels().await?;
        self.send(ServerMessage::Ping).await
    }

    async fn close_idle_tunnels(&mut self) -> Result<(), &'static str> {
        let config = &self.shared.config;
        let (idle_limit, lifetime) = (config.tunnel_idle_timeout, config.tunnel_lifetime);
        if idle_limit.is_none() && lifetime.is_none() {
            return Ok(());
        }
        let expired: Vec<(String, String)> = self
            .session
            .tunnels()
            .iter()
            .filter_map(|t| {
                if let Some(max) = lifetime.filter(|max| t.age() >= *max) {
                    return Some((
                        t.info.name.clone(),
                        format!("reached its lifetime of {}s", max.as_secs()),
                    ));
                }
                let limit = idle_limit.filter(|limit| t.idle_for() >= *limit)?;
                Some((
                    t.info.name.clone(),
                    format!("idle for {}s", limit.as_secs()),
                ))
            })
            .collect();
        for (name, reason) in expired {
            self.close_tunnel(&name);
            info!(tunnel = %name, reason, "tunnel closed");
            self.send(ServerMessage::TunnelClosed {
                tunnel: name,
                reason,
            })
            .await?;
        }
        Ok(())
    }
}
