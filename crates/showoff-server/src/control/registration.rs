//! Registering what a session asked for: names and public ports claimed as registry leases,
//! tunnels built and put in the routing table, on-demand certificates asked for; and the
//! [`SessionGuard`] that undoes every registration of a session however it ends.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::FutureExt;
use showoff_core::{Claim, Lease, LeaseKey, Owner, RegistryError};
use showoff_proto::{RefusedCode, ServerMessage, TunnelInfo, TunnelKind, TunnelSpec};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::ControlContext;
use super::admission::check_kind;
use crate::audit::AuditEvent;
use crate::auth::Principal;
use crate::state::access::Access;
use crate::state::names::{check_name, random_name};
use crate::state::ports::{PortPlan, PublicSocket};
use crate::state::tunnel::Activity;
use crate::state::{Session, Tunnel};
use crate::transport::Link;
use crate::transport::dialback::DialBackGuard;

/// Undoes a session's registrations when dropped: routes, leases, pending streams, warm pool,
/// the transport's link.
pub(crate) struct SessionGuard {
    pub(crate) session: Arc<Session>,
    dialback: DialBackGuard,
    pub(crate) link: Link,
    ctx: Arc<ControlContext>,
}

impl SessionGuard {
    /// A new session of `principal` whose control connection takes frames from `tx` and whose
    /// streams travel on `link`.
    pub(crate) fn new(
        principal: Principal,
        peer: SocketAddr,
        tx: mpsc::Sender<ServerMessage>,
        link: Link,
        ctx: Arc<ControlContext>,
    ) -> Self {
        let id: Arc<str> = showoff_proto::id::random_id().into();
        let dialback = ctx.dialback.attach(&id, tx);
        let cancel = ctx.drain.stopping().child_token();
        let session = Session::new(id, principal, peer, cancel).on(link.kind());
        ctx.stats.session_up(link.kind());
        Self {
            session: Arc::new(session),
            dialback,
            link,
            ctx,
        }
    }

    /// The opener the session's tunnels reach the client through.
    pub(crate) fn opener(&self) -> Arc<dyn showoff_core::StreamOpener> {
        self.link.opener(self.dialback.opener())
    }

    /// The key the session's data connections must show.
    pub(crate) fn data_key(&self) -> &str {
        self.dialback.data_key()
    }

    fn owner(&self) -> Owner {
        Owner {
            principal: self.session.principal_id.clone(),
            session: self.session.id.clone(),
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let session = &self.session;
        session.cancel.cancel();
        self.ctx.sessions.remove(&session.id);
        // Detach from dial-back first: waiters see the client gone before routes go.
        self.dialback.detach();
        self.link.finish();
        let tunnels = std::mem::take(&mut *session.tunnels());
        // Established streams outlive a lost or replaced session; a revoked one takes them.
        let streams = if session.revoked() {
            Streams::Cut
        } else {
            Streams::Keep
        };
        for tunnel in &tunnels {
            release_tunnel(&self.ctx, tunnel, streams);
        }
        self.ctx.stats.session_down(self.link.kind());
    }
}

/// What happens to a released tunnel's established TCP and TLS streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Streams {
    /// They run until either end closes (bounded by the shutdown grace on a drain).
    Keep,
    /// They end with the tunnel.
    Cut,
}

/// Unregisters a tunnel: route, leases, and through `closed` its TCP listener (and through
/// `cut`, when asked, its spliced visitors); its idle upstream connections go with the
/// tunnel's last reference.
pub(crate) fn release_tunnel(ctx: &ControlContext, tunnel: &Arc<Tunnel>, streams: Streams) {
    tunnel.closed.cancel();
    if streams == Streams::Cut {
        tunnel.cut.cancel();
    }
    ctx.routes.remove(&tunnel.info.name, &tunnel.session_id);
    ctx.stats
        .tunnel_closed(tunnel.info.kind.as_str(), tunnel.age());
    let closed = AuditEvent::new("tunnel_closed")
        .principal(&tunnel.principal)
        .session(&tunnel.session_id)
        .names(vec![tunnel.info.name.clone()]);
    ctx.audit
        .record(closed.message(format!("open for {}s", tunnel.age().as_secs())));
    release_leases(ctx, tunnel.leases.clone());
}

/// Gives leases back to the registry. A registry that answers at once (in memory) is done
/// before this returns, so a refused or closed tunnel's name is free for the next claim; a
/// remote one is finished in a spawned task, because the caller can be a `Drop`, which must
/// not wait. Releases are fenced by generation, so a repeated one frees nothing.
fn release_leases(ctx: &ControlContext, leases: Vec<Lease>) {
    let registry = ctx.registry.clone();
    let mut later = Vec::new();
    for lease in leases {
        match registry.release(&lease).now_or_never() {
            Some(Ok(_)) => {}
            Some(Err(error)) => warn!(%error, key = %lease.key, "failed to release lease"),
            None => later.push(lease),
        }
    }
    if later.is_empty() {
        return;
    }
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            for lease in later {
                if let Err(error) = registry.release(&lease).await {
                    warn!(%error, key = %lease.key, "failed to release lease");
                }
            }
        });
    }
}

/// Registers one tunnel of the session: checks, name and port leases, route.
pub(crate) async fn open_tunnel(
    guard: &SessionGuard,
    spec: TunnelSpec,
    opener: Arc<dyn showoff_core::StreamOpener>,
) -> Result<TunnelInfo, ServerMessage> {
    let ctx = &guard.ctx;
    let session = &guard.session;
    check_kind(&session.principal, spec.kind)?;
    let access = Access::parse(&spec.visitors).map_err(ServerMessage::bad_request)?;
    if access.wants_basic_auth() && spec.kind != TunnelKind::Http {
        return Err(ServerMessage::bad_request(
            "basic auth applies to HTTP tunnels only",
        ));
    }
    let (name, name_lease) = claim_name(guard, spec.name.as_deref()).await?;
    let mut leases = vec![name_lease];
    let socket = match bind_for(guard, &spec, &mut leases).await {
        Ok(socket) => socket,
        Err(refusal) => {
            // Nothing holds these leases now: give them back rather than strand the name.
            release_leases(ctx, leases);
            return Err(refusal);
        }
    };
    let port = socket.as_ref().map(PublicSocket::port);
    let info = TunnelInfo {
        public_url: ctx.urls.tunnel(spec.kind, &name, port),
        name,
        kind: spec.kind,
        port,
        flow_idle_secs: (spec.kind == TunnelKind::Udp).then(|| {
            let secs = ctx.settings.udp_flow_idle.as_secs();
            u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
        }),
    };
    let tunnel = Arc::new(Tunnel {
        info: info.clone(),
        spec,
        principal: session.principal_id.clone(),
        session_id: session.id.clone(),
        opener: opener.clone(),
        access,
        leases,
        closed: session.cancel.child_token(),
        cut: tokio_util::sync::CancellationToken::new(),
        activity: Activity::default(),
    });
    // A UDP tunnel's slot: how many UDP tunnels the session registered before it (at most
    // MAX_TUNNELS_PER_SESSION, so it fits the byte flow ids keep for it).
    let slot = {
        let mut tunnels = session.tunnels();
        let slot = tunnels
            .iter()
            .filter(|t| t.info.kind == TunnelKind::Udp)
            .count();
        tunnels.push(tunnel.clone());
        slot as u8
    };
    ctx.routes.insert(tunnel.clone());
    announce(guard, &tunnel);
    match socket {
        Some(PublicSocket::Tcp(listener)) => ctx.tcp_tunnels.serve(listener, tunnel),
        Some(PublicSocket::Udp(socket)) => {
            let path = guard.link.datagram_path(
                opener,
                &tunnel.info.name,
                slot,
                tunnel.closed.clone(),
                ctx.stats.clone(),
            );
            ctx.udp_tunnels.serve(socket, tunnel, path);
        }
        None => {}
    }
    Ok(info)
}

/// The public socket a tunnel of this kind needs: a leased port for TCP and UDP, none for
/// HTTP and TLS (served by the shared listeners), a refusal for what this server cannot serve.
async fn bind_for(
    guard: &SessionGuard,
    spec: &TunnelSpec,
    leases: &mut Vec<Lease>,
) -> Result<Option<PublicSocket>, ServerMessage> {
    let settings = &guard.ctx.settings;
    match spec.kind {
        TunnelKind::Tls if guard.ctx.urls.https_port.is_none() => Err(ServerMessage::refused(
            RefusedCode::KindNotAllowed,
            "TLS tunnels need the server's HTTPS listener (--https-addr), which is off",
        )),
        TunnelKind::Http | TunnelKind::Tls => Ok(None),
        TunnelKind::Tcp => Ok(Some(
            claim_port(guard, settings.ports, spec.port, leases).await?,
        )),
        TunnelKind::Udp => Ok(Some(
            claim_port(guard, settings.udp_ports, spec.port, leases).await?,
        )),
    }
}

/// Metrics, audit and the on-demand certificate request of a tunnel that just registered.
fn announce(guard: &SessionGuard, tunnel: &Tunnel) {
    let ctx = &guard.ctx;
    let session = &guard.session;
    if let Some(acme) = &ctx.acme_requests
        && tunnel.info.kind == TunnelKind::Http
    {
        let host = format!("{}.{}", tunnel.info.name, ctx.urls.domain);
        if !ctx.tls.store.has_acme(&host) {
            let _ = acme.try_send(host);
        }
    }
    ctx.stats.tunnel_opened(tunnel.info.kind.as_str());
    let opened = AuditEvent::new("tunnel_opened")
        .principal(&session.principal.id)
        .peer(session.peer)
        .session(&session.id);
    ctx.audit.record(
        opened
            .names(vec![tunnel.info.name.clone()])
            .message(tunnel.info.public_url.clone()),
    );
}

/// Binds a public port and claims its lease; a port leased elsewhere is refused (requested)
/// or skipped (picked from the range, a few tries).
async fn claim_port(
    guard: &SessionGuard,
    plan: PortPlan,
    requested: Option<u16>,
    leases: &mut Vec<Lease>,
) -> Result<PublicSocket, ServerMessage> {
    if let Some(port) = requested {
        return claim_requested_port(guard, plan, port, leases).await;
    }
    for _ in 0..8 {
        let socket = plan.bind(requested).await?;
        let port = socket.port();
        match guard
            .ctx
            .registry
            .claim(&plan.lease_key(port), &guard.owner())
            .await
        {
            Ok(claimed) => {
                leases.push(claimed.lease);
                return Ok(socket);
            }
            Err(RegistryError::Taken) if requested.is_none() => continue,
            Err(RegistryError::Taken) => return Err(plan.unavailable(port)),
            Err(error) => return Err(registry_failed(&error)),
        }
    }
    Err(ServerMessage::refused(
        RefusedCode::LimitReached,
        "no free port found; ask for one",
    ))
}

/// How long a fixed port taken over from the principal's previous session may take to be
/// given up by it (its listener closes once its session task sees the cancellation).
const PORT_HANDOVER: std::time::Duration = std::time::Duration::from_secs(3);
/// Pause between binds while a port is being handed over.
const HANDOVER_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Claims a fixed port's lease first, then binds it. A port the same principal holds through
/// another session (a reconnect) is taken over: that session is replaced and its listener
/// waited for, so the reconnecting client keeps its port instead of `port_unavailable`.
async fn claim_requested_port(
    guard: &SessionGuard,
    plan: PortPlan,
    port: u16,
    leases: &mut Vec<Lease>,
) -> Result<PublicSocket, ServerMessage> {
    let ctx = &guard.ctx;
    if !plan.allows(port) {
        return Err(plan.unavailable(port));
    }
    let claimed = match ctx
        .registry
        .claim(&plan.lease_key(port), &guard.owner())
        .await
    {
        Ok(claimed) => claimed,
        Err(RegistryError::Taken) => return Err(plan.unavailable(port)),
        Err(error) => return Err(registry_failed(&error)),
    };
    let deadline = tokio::time::Instant::now() + PORT_HANDOVER;
    match &claimed.claim {
        Claim::AlreadyHeld => {
            return Err(ServerMessage::bad_request(format!(
                "port {port} is requested twice"
            )));
        }
        Claim::TakenOver { previous_session } => {
            info!(port, previous = %previous_session, "port taken over by the same principal");
            ctx.sessions
                .replace(previous_session, &format!("port {port}"));
        }
        Claim::Fresh => {}
    }
    let handover = matches!(claimed.claim, Claim::TakenOver { .. });
    // In a cluster this instance may be listening on the port for the instance that held it
    // (the client moved here): that socket is the tunnel's now, with any visitor waiting on it.
    if let Some(socket) = ctx.mirrors.take(&claimed.lease.key).await {
        leases.push(claimed.lease);
        return Ok(socket);
    }
    loop {
        match plan.bind(Some(port)).await {
            Ok(socket) => {
                leases.push(claimed.lease);
                return Ok(socket);
            }
            Err(refusal) if !handover || tokio::time::Instant::now() >= deadline => {
                release_leases(ctx, vec![claimed.lease]);
                return Err(refusal);
            }
            Err(_) => tokio::time::sleep(HANDOVER_POLL).await,
        }
    }
}

fn registry_failed(error: &RegistryError) -> ServerMessage {
    warn!(%error, "registry failed");
    ServerMessage::refused(
        RefusedCode::RegistryUnavailable,
        "the name registry does not answer; retry shortly",
    )
}

/// Claims the requested name (or a fresh readable one) for the session.
async fn claim_name(
    guard: &SessionGuard,
    requested: Option<&str>,
) -> Result<(String, Lease), ServerMessage> {
    let owner = guard.owner();
    let ctx = &guard.ctx;
    let (policy, principal) = (&ctx.settings.names, &guard.session.principal);
    let Some(name) = requested else {
        // ~10 million readable names: a handful of tries always finds a free one in practice.
        for _ in 0..16 {
            let name = random_name(policy, principal)?;
            if check_name(policy, principal, &name).is_err() {
                continue;
            }
            let key = LeaseKey::Name(name.clone());
            if let Ok(claimed) = ctx.registry.claim(&key, &owner).await
                && claimed.claim == Claim::Fresh
            {
                return Ok((name, claimed.lease));
            }
        }
        return Err(ServerMessage::refused(
            RefusedCode::LimitReached,
            "no free name found; ask for one",
        ));
    };
    check_name(policy, principal, name)?;
    let claimed = match ctx
        .registry
        .claim(&LeaseKey::Name(name.into()), &owner)
        .await
    {
        Ok(claimed) => claimed,
        Err(RegistryError::Taken) => {
            return Err(ServerMessage::refused(
                RefusedCode::NameTaken,
                format!("{name:?} is in use by another client; pick another name"),
            ));
        }
        Err(error) => return Err(registry_failed(&error)),
    };
    match claimed.claim {
        Claim::Fresh => {}
        Claim::TakenOver { previous_session } => {
            info!(name, previous = %previous_session, "name taken over by the same principal");
            let event = AuditEvent::new("takeover")
                .principal(&owner.principal)
                .session(&owner.session)
                .names(vec![name.to_string()]);
            ctx.audit
                .record(event.message(format!("from session {previous_session}")));
            ctx.sessions.replace(&previous_session, name);
        }
        Claim::AlreadyHeld => {
            return Err(ServerMessage::bad_request(format!(
                "{name:?} is requested twice"
            )));
        }
    }
    Ok((name.to_string(), claimed.lease))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::tests::context;

    fn spec(kind: TunnelKind, name: &str) -> TunnelSpec {
        TunnelSpec {
            upstream: Default::default(),
            kind,
            name: Some(name.into()),
            port: None,
            host_header: Default::default(),
            target: "127.0.0.1:3000".into(),
            visitors: Default::default(),
        }
    }

    fn guard(ctx: &Arc<ControlContext>, principal: &str) -> SessionGuard {
        let peer = "127.0.0.1:5000".parse().expect("addr");
        let (tx, _rx) = mpsc::channel(4);
        let guard = SessionGuard::new(
            Principal::unrestricted(principal),
            peer,
            tx,
            Link::DialBack,
            ctx.clone(),
        );
        ctx.sessions.add(guard.session.clone());
        guard
    }

    async fn open(guard: &SessionGuard, spec: TunnelSpec) -> Result<TunnelInfo, ServerMessage> {
        open_tunnel(guard, spec, guard.opener()).await
    }

    fn code(result: Result<TunnelInfo, ServerMessage>) -> RefusedCode {
        match result {
            Err(ServerMessage::Refused { code, .. }) => code,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    async fn lease_of(ctx: &ControlContext, name: &str) -> Option<Lease> {
        // The memory registry releases at once: no yielding, no waiting.
        let key = LeaseKey::Name(name.into());
        ctx.registry.lookup(&key).await.expect("memory registry")
    }

    #[tokio::test]
    async fn a_tunnel_is_leased_routed_and_undone_by_the_guard() {
        let ctx = context(None);
        let alice = guard(&ctx, "alice");
        let info = open(&alice, spec(TunnelKind::Http, "demo"))
            .await
            .expect("opened");
        assert_eq!(info.public_url, "http://demo.localhost:8080");
        let routed = ctx.routes.get("demo").expect("routed");
        assert_eq!(routed.session_id, alice.session.id);
        let lease = lease_of(&ctx, "demo").await.expect("leased");
        assert_eq!(&*lease.owner.principal, "alice");
        assert_eq!(ctx.stats.snapshot().tunnels_active, 1);
        assert_eq!(ctx.stats.snapshot().sessions_active, 1);
        drop(alice);
        assert!(ctx.routes.get("demo").is_none(), "unrouted");
        assert_eq!(lease_of(&ctx, "demo").await, None, "released");
        assert_eq!(ctx.stats.snapshot().tunnels_active, 0);
        assert_eq!(ctx.stats.snapshot().sessions_active, 0);
        assert_eq!(ctx.sessions.count(), 0);
    }

    #[tokio::test]
    async fn the_same_principal_takes_a_name_over_and_others_are_refused() {
        let ctx = context(None);
        let first = guard(&ctx, "alice");
        open(&first, spec(TunnelKind::Http, "demo"))
            .await
            .expect("first");
        let second = guard(&ctx, "alice");
        open(&second, spec(TunnelKind::Http, "demo"))
            .await
            .expect("taken over");
        assert!(
            first.session.cancel.is_cancelled(),
            "the stale session is closed"
        );
        let bob = guard(&ctx, "bob");
        assert_eq!(
            code(open(&bob, spec(TunnelKind::Http, "demo")).await),
            RefusedCode::NameTaken
        );
        assert_eq!(
            code(open(&second, spec(TunnelKind::Http, "demo")).await),
            RefusedCode::BadRequest,
            "asked twice by one session"
        );
        drop(first);
        let routed = ctx.routes.get("demo").expect("still routed");
        assert_eq!(
            routed.session_id, second.session.id,
            "the old guard removed nothing"
        );
        let lease = lease_of(&ctx, "demo").await.expect("still leased");
        assert_eq!(
            lease.owner.session, second.session.id,
            "fenced by generation"
        );
    }

    #[tokio::test]
    async fn a_tunnel_that_cannot_open_gives_its_name_back() {
        let ctx = context(None);
        let alice = guard(&ctx, "alice");
        let refused = open(&alice, spec(TunnelKind::Tls, "db")).await;
        assert_eq!(
            code(refused),
            RefusedCode::KindNotAllowed,
            "no HTTPS listener"
        );
        assert_eq!(lease_of(&ctx, "db").await, None, "the name was given back");
        assert!(ctx.routes.get("db").is_none());
    }

    #[tokio::test]
    async fn udp_tunnels_get_a_leased_udp_port_and_a_slot_each() {
        let (ctx, served) = crate::control::tests::context_served(None, |_| {});
        let alice = guard(&ctx, "alice");
        let dns = open(&alice, spec(TunnelKind::Udp, "dns"))
            .await
            .expect("udp");
        let port = dns.port.expect("a public port");
        assert_eq!(dns.public_url, format!("udp://localhost:{port}"));
        let game = open(&alice, spec(TunnelKind::Udp, "game"))
            .await
            .expect("udp");
        open(&alice, spec(TunnelKind::Http, "web"))
            .await
            .expect("http");
        let udp_lease = ctx.registry.lookup(&LeaseKey::UdpPort(port)).await;
        assert!(matches!(udp_lease, Ok(Some(_))), "leased as a UDP port");
        let tcp_lease = ctx.registry.lookup(&LeaseKey::Port(port)).await;
        assert!(
            matches!(tcp_lease, Ok(None)),
            "TCP ports are another namespace"
        );
        let served = served.0.lock().expect("not poisoned").clone();
        assert_eq!(served, vec!["dns (slot 0)", "game (slot 1)"]);
        assert_ne!(game.port, dns.port);
        drop(alice);
        let released = ctx.registry.lookup(&LeaseKey::UdpPort(port)).await;
        assert!(matches!(released, Ok(None)));
    }

    #[tokio::test]
    async fn kinds_and_rules_refuse_before_anything_is_claimed() {
        let ctx = context(Some(443));
        let peer = "127.0.0.1:5000".parse().expect("addr");
        let (tx, _rx) = mpsc::channel(4);
        let mut bob = Principal::unrestricted("bob");
        bob.kinds = vec![TunnelKind::Http];
        let guard = SessionGuard::new(bob, peer, tx, Link::DialBack, ctx.clone());
        let refused = open(&guard, spec(TunnelKind::Tls, "db")).await;
        assert_eq!(code(refused), RefusedCode::KindNotAllowed);
        assert_eq!(lease_of(&ctx, "db").await, None);
        let mut basic = spec(TunnelKind::Tls, "x");
        basic.visitors.basic_auth = Some("u:p".into());
        let (alice_tx, _alice_rx) = mpsc::channel(4);
        let alice = SessionGuard::new(
            Principal::unrestricted("a"),
            peer,
            alice_tx,
            Link::DialBack,
            ctx.clone(),
        );
        assert_eq!(code(open(&alice, basic).await), RefusedCode::BadRequest);
        let tls = open(&alice, spec(TunnelKind::Tls, "db"))
            .await
            .expect("with HTTPS");
        assert_eq!(tls.public_url, "tls://db.localhost");
    }
}
