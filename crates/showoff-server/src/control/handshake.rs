//! The control listener's handler: what the PROXY prelude decided, TLS, the control rate
//! limit, then the frames `Hello`, `Auth`, `Open` under [`HANDSHAKE_TIMEOUT`], answered with
//! `Welcome` or `Refused`; then the session's [`ControlLoop`] until it ends. Every refusal is
//! logged, counted by code and audited once, here.

use showoff_core::trace::TARGET;
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::Instrument;
use tracing::field::Empty;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use showoff_core::TunnelStream;
use showoff_proto::{
    ClientMessage, FrameCodec, HANDSHAKE_TIMEOUT, RefusedCode, Role, ServerMessage, TransportKind,
};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tracing::{debug, info};

use super::admission::{Load, admit};
use super::control_loop::ControlLoop;
use super::registration::{SessionGuard, open_tunnel};
use super::{ControlContext, ControlFramed};
use crate::audit::AuditEvent;
use crate::auth::{AuthRequest, Principal};
use crate::listen::Arrived;
use crate::transport::Link;
use crate::transport::mux::MuxLink;

/// Initial read buffer of a control connection: control frames are small, so buffers start at
/// 512 bytes and grow only when a frame needs it (tokio-util's default of 8 KiB each was half
/// of an idle session's memory).
const CONTROL_BUFFER: usize = 512;

/// Frames queued towards one client before `Dial` senders wait.
const CONTROL_QUEUE: usize = 256;

/// Serves one control connection until the session ends.
pub(crate) async fn serve(arrived: Arrived, ctx: Arc<ControlContext>) {
    let arrival = match arrived {
        Ok(arrival) => arrival,
        Err(refusal) => {
            let (peer, code) = (refusal.peer, refusal.error.code());
            info!(%peer, code, "control connection refused by the PROXY protocol policy");
            ctx.stats.session_refused(code);
            return;
        }
    };
    let peer = arrival.peer;
    showoff_core::set_user_timeout(&arrival.stream, ctx.settings.heartbeat_timeout);
    let accepted = ctx
        .tls
        .accept_control(arrival.stream, arrival.prefix, HANDSHAKE_TIMEOUT)
        .await;
    let (stream, certificate) = match accepted {
        Ok(accepted) => accepted,
        Err(error) => {
            info!(%peer, %error, "control connection failed the TLS handshake");
            ctx.stats.session_refused("tls_handshake");
            return;
        }
    };
    let stream = TunnelStream::boxed(BytesMut::new(), stream);
    serve_stream(stream, peer, certificate.as_deref(), None, ctx).await;
}

/// Serves a control connection past its transport (TCP or TLS, a QUIC connection's control
/// stream with its `quic` link, or an in-memory pipe in the fuzz targets): rate limit,
/// handshake, session. True when a session ran.
pub(crate) async fn serve_stream(
    stream: TunnelStream,
    peer: SocketAddr,
    certificate: Option<&str>,
    quic: Option<Link>,
    ctx: Arc<ControlContext>,
) -> bool {
    let codec = FrameCodec::<ClientMessage, ServerMessage>::new();
    let mut framed = Framed::with_capacity(stream, codec, CONTROL_BUFFER);
    if let Err(wait) = ctx.limits.control(peer.ip()) {
        let secs = crate::limits::retry_secs(wait);
        let message = format!("too many connections from this address; retry in {secs}s");
        let refusal = ServerMessage::refused(RefusedCode::RateLimited, message);
        refuse(&ctx, &mut framed, peer, refusal).await;
        return false;
    }
    let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
    let client = Client {
        peer,
        certificate,
        quic,
    };
    let trace = session_span(&ctx, peer);
    let setup = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut framed, tx, client, &ctx));
    let guard = match setup.instrument(trace.clone()).await {
        Ok(Ok(guard)) => guard,
        Ok(Err(refusal)) => {
            if let ServerMessage::Refused { code, .. } = &refusal {
                trace.record("otel.status_code", "error");
                trace.record("showoff.refused", code.as_str());
            }
            refuse(&ctx, &mut framed, peer, refusal).await;
            return false;
        }
        Err(_) => {
            trace.record("otel.status_code", "error");
            trace.record("showoff.refused", "handshake_timeout");
            debug!(%peer, "control handshake timed out");
            return false;
        }
    };
    let framed = match switch(framed, &guard.link).await {
        Ok(framed) => framed,
        Err(reason) => {
            info!(%peer, reason, "multiplexed session failed to start");
            return false;
        }
    };
    let session = guard.session.clone();
    let span = tracing::Span::current();
    span.record("session", &*session.id);
    span.record("principal", session.principal.id.as_str());
    let transport = session.transport.as_str();
    info!(%peer, session = %session.id, principal = %session.principal.id, transport, "session up");
    let up = AuditEvent::new("auth_ok")
        .principal(&session.principal.id)
        .peer(peer);
    ctx.audit
        .record(up.session(&session.id).names(session.tunnel_names()));
    trace.record("showoff.session", &*session.id);
    trace.record("showoff.principal", session.principal.id.as_str());
    trace.record("showoff.transport", transport);
    tracing::debug!(target: TARGET, parent: &trace, principal = session.principal.id.as_str(), transport, "auth");
    for name in session.tunnel_names() {
        tracing::debug!(target: TARGET, parent: &trace, tunnel = name.as_str(), "open");
    }
    let end = ControlLoop::new(framed, rx, session.clone(), ctx.clone())
        .watching(guard.link.clone())
        .run()
        .instrument(trace.clone())
        .await;
    trace.record("showoff.end_reason", end);
    info!(%peer, session = %session.id, reason = end, "session ended");
    drop(guard);
    true
}

/// The control session's span (`SERVER`), from the handshake to the session's end, with events
/// for authentication, each tunnel opened or closed, heartbeat loss and go-away; made only when
/// tracing is on and the session is sampled (a root like any other).
fn session_span(ctx: &ControlContext, peer: SocketAddr) -> tracing::Span {
    let Some(ratio) = ctx.settings.trace else {
        return tracing::Span::none();
    };
    if !showoff_core::trace::Decision::root(ratio, None).sampled() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "showoff.session",
        otel.kind = "server",
        otel.status_code = Empty,
        client.address = %peer.ip(),
        client.port = i64::from(peer.port()),
        showoff.session = Empty,
        showoff.principal = Empty,
        showoff.transport = Empty,
        showoff.refused = Empty,
        showoff.end_reason = Empty,
    )
}

/// Logs, counts and audits a refusal, then tells the client.
async fn refuse(
    ctx: &ControlContext,
    framed: &mut ControlFramed,
    peer: SocketAddr,
    refusal: ServerMessage,
) {
    if let ServerMessage::Refused { code, message } = &refusal {
        info!(%peer, %code, message, "session refused");
        ctx.stats.session_refused(code.as_str());
        let kind = match code {
            RefusedCode::AuthFailed | RefusedCode::AuthUnavailable => "auth_failed",
            _ => "session_refused",
        };
        let event = AuditEvent::new(kind).peer(peer);
        ctx.audit.record(event.refused(code.as_str(), message));
    }
    // The refusal is one small frame; a client that does not read it is not waited for.
    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, framed.send(refusal)).await;
}

/// After `Welcome` on a mux session, the control frames move to the first yamux stream; other
/// sessions keep their connection as it is.
async fn switch(framed: ControlFramed, link: &Link) -> Result<ControlFramed, &'static str> {
    let Link::Mux(mux) = link else {
        return Ok(framed);
    };
    let parts = framed.into_parts();
    let connection = parts.io.unread(parts.read_buf);
    let control = mux.start(connection, HANDSHAKE_TIMEOUT).await?;
    let codec = FrameCodec::<ClientMessage, ServerMessage>::new();
    Ok(Framed::with_capacity(control, codec, CONTROL_BUFFER))
}

/// Who is on the other end of a control connection.
#[derive(Clone)]
struct Client<'a> {
    peer: SocketAddr,
    /// The verified client certificate's identity (mTLS).
    certificate: Option<&'a str>,
    /// The link of the QUIC connection this control stream belongs to.
    quic: Option<Link>,
}

/// The link a session's `Hello` asks for, on the listener it arrived on.
fn choose_link(
    first: Option<&ClientMessage>,
    quic: Option<Link>,
    ctx: &ControlContext,
) -> Result<Link, ServerMessage> {
    let asked = match first {
        Some(ClientMessage::Hello { transport, .. }) => *transport,
        _ => TransportKind::Tcp,
    };
    match (asked, quic) {
        (TransportKind::Tcp, None) => Ok(Link::DialBack),
        (TransportKind::Mux, None) => Ok(Link::Mux(MuxLink::new(ctx.dialback.pending_timeout()))),
        (TransportKind::Quic, Some(link)) => Ok(link),
        (TransportKind::Quic, None) => Err(ServerMessage::bad_request(
            "transport quic is spoken on the server's QUIC listener (UDP), not here",
        )),
        (TransportKind::Tcp | TransportKind::Mux, Some(_)) => Err(ServerMessage::bad_request(
            "a session on the QUIC listener must ask for transport quic",
        )),
        (TransportKind::Unknown, _) => Err(ServerMessage::bad_request(format!(
            "unknown transport; this server offers {}",
            offers(ctx)
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// What `Welcome` says this server serves.
fn offers(ctx: &ControlContext) -> Vec<TransportKind> {
    let mut offers = vec![TransportKind::Tcp, TransportKind::Mux];
    if ctx.settings.quic_port.is_some() {
        offers.push(TransportKind::Quic);
    }
    offers
}

async fn handshake(
    framed: &mut ControlFramed,
    tx: mpsc::Sender<ServerMessage>,
    client: Client<'_>,
    ctx: &Arc<ControlContext>,
) -> Result<SessionGuard, ServerMessage> {
    let first = framed.next().await.and_then(Result::ok);
    showoff_proto::check_hello(first.as_ref(), Role::Control)?;
    let link = choose_link(first.as_ref(), client.quic.clone(), ctx)?;
    if ctx.drain.is_draining() {
        return Err(ServerMessage::refused(
            RefusedCode::ShuttingDown,
            "the server is shutting down",
        ));
    }
    let principal = authenticate(framed, &client, ctx).await?;
    let specs = match framed.next().await {
        Some(Ok(ClientMessage::Open { tunnels })) => tunnels,
        _ => return Err(ServerMessage::bad_request("expected open")),
    };
    let held = || {
        let renamed: Vec<String> = specs.iter().filter_map(|s| s.name.clone()).collect();
        ctx.routes.count_of(&principal.id, &renamed)
    };
    let load = Load {
        held_by_principal: held,
        sessions: ctx.sessions.count(),
        max_sessions: ctx.settings.max_sessions,
    };
    let rate = || ctx.limits.new_tunnels(&principal.id, specs.len());
    let per_minute = ctx.settings.tunnels_per_principal;
    admit(&principal, &specs, load, rate, per_minute)?;
    let guard = SessionGuard::new(principal, client.peer, tx, link, ctx.clone());
    let opener = guard.opener();
    let mut infos = Vec::with_capacity(specs.len());
    for spec in specs {
        infos.push(open_tunnel(&guard, spec, opener.clone()).await?);
    }
    ctx.sessions.add(guard.session.clone());
    let welcome = ServerMessage::Welcome {
        session: guard.session.id.to_string(),
        data_key: guard.data_key().to_string(),
        data_port: ctx.settings.data_port,
        heartbeat_interval_secs: ctx.settings.heartbeat_interval.as_secs().max(1),
        warm_pool: match guard.link {
            Link::DialBack => ctx.settings.warm_pool,
            _ => 0,
        },
        tunnels: infos,
        transport: guard.link.kind(),
        offers: offers(ctx),
        quic_port: ctx.settings.quic_port,
    };
    framed
        .send(welcome)
        .await
        .map_err(|_| ServerMessage::bad_request("connection lost"))?;
    Ok(guard)
}

/// Reads `Auth` and asks the authenticators who the client is.
async fn authenticate(
    framed: &mut ControlFramed,
    client: &Client<'_>,
    ctx: &ControlContext,
) -> Result<Principal, ServerMessage> {
    let Some(Ok(ClientMessage::Auth { token })) = framed.next().await else {
        return Err(ServerMessage::bad_request("expected auth"));
    };
    let ip = client.peer.ip();
    if let Err(wait) = ctx.limits.logins.check(ip) {
        let secs = crate::limits::retry_secs(wait);
        return Err(ServerMessage::refused(
            RefusedCode::RateLimited,
            format!("too many failed logins from this address; retry in {secs}s"),
        ));
    }
    let request = AuthRequest {
        token: &token,
        peer: client.peer,
        certificate: client.certificate,
    };
    ctx.authenticator
        .authenticate(&request)
        .await
        .map_err(|error| {
            if error.code() == RefusedCode::AuthFailed {
                ctx.stats.auth_failures.inc();
                ctx.limits.logins.failed(ip);
            }
            ServerMessage::refused(error.code(), error.to_string())
        })
}
