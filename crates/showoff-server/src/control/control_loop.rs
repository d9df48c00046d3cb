//! The steady state of a control connection: one task per session that forwards `Dial`s from
//! the transport, pings and watches for silence, handles `Close` and `StreamError`, closes
//! idle and expired tunnels, keeps the session's leases when the registry's leases expire
//! (renewed every third of their TTL, taken back if they fell free, the tunnel closed if
//! someone else holds them now), and says `GoAway` when the server drains. Each `select!` arm
//! calls one method.

use showoff_core::trace::TARGET;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use showoff_core::{Lease, LeaseKey, Registry, RegistryError};
use showoff_proto::{ClientMessage, ServerMessage};
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::registration::{Streams, release_tunnel};
use super::{ControlContext, ControlFramed};
use crate::state::{Session, Tunnel};
use crate::transport::Link;

/// Why a session ended, for the log.
type End = &'static str;

/// How often a session's leases are renewed when they expire after `ttl`: three times per
/// TTL, so two renewals can fail (a slow or briefly unreachable registry) before one lapses.
pub(crate) fn renewal_period(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(100))
}

/// Whether `key` is held now by `session`'s principal through another session.
async fn taken_over(registry: &dyn Registry, session: &Session, key: &LeaseKey) -> bool {
    registry.forget(key);
    match registry.lookup(key).await {
        Ok(Some(lease)) => {
            *lease.owner.principal == *session.principal_id && *lease.owner.session != *session.id
        }
        _ => false,
    }
}

/// Keeps `lease`: renews it, and when it is no longer current, takes it back if its key fell
/// free (it expired while the registry did not answer, or the registry lost its data).
/// [`RegistryError::Lost`] means someone else holds the key now.
async fn keep(registry: &dyn Registry, lease: &Lease) -> Result<(), RegistryError> {
    match registry.renew(lease).await {
        Err(RegistryError::Lost) => registry.reassert(lease).await,
        kept => kept,
    }
}

/// The steady state of a control connection.
pub(crate) struct ControlLoop {
    framed: ControlFramed,
    rx: mpsc::Receiver<ServerMessage>,
    session: Arc<Session>,
    ctx: Arc<ControlContext>,
    last_seen: Instant,
    said_goaway: bool,
    link: Link,
    /// What the link had received at the last heartbeat.
    last_received: Option<u64>,
}

impl ControlLoop {
    pub(crate) fn new(
        framed: ControlFramed,
        rx: mpsc::Receiver<ServerMessage>,
        session: Arc<Session>,
        ctx: Arc<ControlContext>,
    ) -> Self {
        Self {
            framed,
            rx,
            session,
            ctx,
            last_seen: Instant::now(),
            said_goaway: false,
            link: Link::DialBack,
            last_received: None,
        }
    }

    /// Counts anything the session's `link` receives as a sign of life, not only frames.
    pub(crate) fn watching(mut self, link: Link) -> Self {
        self.link = link;
        self
    }

    /// Runs until the session ends; returns why, for the log.
    pub(crate) async fn run(mut self) -> End {
        let period = self.ctx.settings.heartbeat_interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let renew_every = self.ctx.registry.ttl().map(renewal_period);
        let renew_period = renew_every.unwrap_or(period);
        let mut renewal =
            tokio::time::interval_at(tokio::time::Instant::now() + renew_period, renew_period);
        renewal.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let session_cancel = self.session.cancel.clone();
        let drain = self.ctx.drain.draining().clone();
        loop {
            let step = tokio::select! {
                _ = session_cancel.cancelled() => self.closing().await,
                _ = drain.cancelled(), if !self.said_goaway => self.go_away().await,
                Some(msg) = self.rx.recv() => self.send(msg).await,
                frame = self.framed.next() => self.on_frame(frame),
                _ = ticker.tick() => self.heartbeat().await,
                _ = renewal.tick(), if renew_every.is_some() => self.keep_leases().await,
            };
            if let Err(reason) = step {
                return reason;
            }
        }
    }

    /// Writes one frame within the heartbeat timeout: a client that stops reading cannot wedge
    /// the loop (heartbeats, takeover and drain would all wait behind the write).
    async fn send(&mut self, msg: ServerMessage) -> Result<(), End> {
        let deadline = self.ctx.settings.heartbeat_timeout;
        match tokio::time::timeout(deadline, self.framed.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("write failed"),
            Err(_) => Err("write timed out: the client stopped reading"),
        }
    }

    /// The session is being closed by the server; the client hears why when it can: a
    /// `replaced` refusal (it must not take the name back) or, during a drain, `GoAway`.
    async fn closing(&mut self) -> Result<(), End> {
        if let Some(name) = self.session.replaced_for() {
            let message = format!("another client with the same token took over {name}");
            let refusal = ServerMessage::refused(showoff_proto::RefusedCode::Replaced, message);
            let _ = self.send(refusal).await;
            return Err("replaced by another session");
        }
        if let Some(why) = self.session.sent_away_for() {
            let why = why.to_string();
            let _ = self.say_goaway(why, 0).await;
            return Err("sent to another instance");
        }
        if self.ctx.drain.is_draining() && !self.said_goaway {
            let _ = self.go_away().await;
        }
        Err("closed by the server")
    }

    async fn go_away(&mut self) -> Result<(), End> {
        self.say_goaway("server shutting down".into(), 1000).await
    }

    async fn say_goaway(&mut self, reason: String, reconnect_after_ms: u64) -> Result<(), End> {
        self.said_goaway = true;
        tracing::debug!(target: TARGET, reason = reason.as_str(), reconnect_after_ms = showoff_core::trace::int(reconnect_after_ms), "go_away");
        let msg = ServerMessage::GoAway {
            reason,
            reconnect_after_ms,
        };
        self.send(msg).await
    }

    fn on_frame(
        &mut self,
        frame: Option<Result<ClientMessage, showoff_proto::ProtocolError>>,
    ) -> Result<(), End> {
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
                self.ctx.dialback.fail(&id, &self.session.id, reason);
            }
            ClientMessage::Close { tunnel } => {
                tracing::debug!(target: TARGET, tunnel = tunnel.as_str(), "close");
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
        let tunnel = self.session.take_tunnel(name)?;
        release_tunnel(&self.ctx, &tunnel, Streams::Cut);
        Some(tunnel)
    }

    async fn heartbeat(&mut self) -> Result<(), End> {
        let received = self.link.received();
        if received != self.last_received {
            self.last_received = received;
            self.last_seen = Instant::now();
        }
        if self.last_seen.elapsed() > self.ctx.settings.heartbeat_timeout {
            tracing::debug!(target: TARGET, silent_ms = showoff_core::trace::int(self.last_seen.elapsed().as_millis() as u64), "heartbeat_lost");
            return Err("heartbeat timeout");
        }
        self.close_idle_tunnels().await?;
        self.send(ServerMessage::Ping).await
    }

    /// Keeps every lease of the session's tunnels, all at once (each call has the registry's
    /// deadline); a tunnel whose lease someone else holds now is closed and the client told.
    async fn keep_leases(&mut self) -> Result<(), End> {
        let tunnels: Vec<Arc<Tunnel>> = self.session.tunnels().clone();
        let registry = &*self.ctx.registry;
        let kept = tunnels.iter().flat_map(|tunnel| {
            tunnel
                .leases
                .iter()
                .map(move |lease| async move { (tunnel, lease, keep(registry, lease).await) })
        });
        let mut lost: Vec<(String, LeaseKey)> = Vec::new();
        for (tunnel, lease, kept) in futures_util::future::join_all(kept).await {
            match kept {
                Ok(()) => {}
                Err(RegistryError::Lost) => {
                    lost.push((tunnel.info.name.clone(), lease.key.clone()))
                }
                // A registry that does not answer keeps the tunnel; the next tick retries (the
                // registry itself logs when it stops and starts answering).
                Err(error) => debug!(%error, key = %lease.key, "lease renewal failed"),
            }
        }
        lost.dedup_by(|a, b| a.0 == b.0);
        for (name, key) in lost {
            if taken_over(&*self.ctx.registry, &self.session, &key).await {
                // The same principal holds it through another session, on another instance:
                // this client was replaced, as on a single server, and must not take it back.
                info!(tunnel = %name, "taken over by the same principal elsewhere in the cluster");
                self.ctx.sessions.replace(&self.session.id, &name);
                return Ok(());
            }
            self.tunnel_closed(name, "its lease was lost".into())
                .await?;
        }
        Ok(())
    }

    async fn close_idle_tunnels(&mut self) -> Result<(), End> {
        let settings = &self.ctx.settings;
        let (idle_limit, lifetime) = (settings.tunnel_idle_timeout, settings.tunnel_lifetime);
        if idle_limit.is_none() && lifetime.is_none() {
            return Ok(());
        }
        let expired: Vec<(String, String)> = self
            .session
            .tunnels()
            .iter()
            .filter_map(|t| {
                if let Some(max) = lifetime.filter(|max| t.age() >= *max) {
                    let reason = format!("reached its lifetime of {}s", max.as_secs());
                    return Some((t.info.name.clone(), reason));
                }
                let limit = idle_limit.filter(|limit| t.idle_for() >= *limit)?;
                Some((
                    t.info.name.clone(),
                    format!("idle for {}s", limit.as_secs()),
                ))
            })
            .collect();
        for (name, reason) in expired {
            self.tunnel_closed(name, reason).await?;
        }
        Ok(())
    }

    /// Closes one tunnel on the server's initiative and tells the client why.
    async fn tunnel_closed(&mut self, name: String, reason: String) -> Result<(), End> {
        self.close_tunnel(&name);
        info!(tunnel = %name, reason, "tunnel closed");
        self.send(ServerMessage::TunnelClosed {
            tunnel: name,
            reason,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Principal;
    use crate::control::tests::context_with;
    use bytes::BytesMut;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn a_client_that_stops_reading_cannot_wedge_the_loop() {
        // Issue 11, item 12: without a write deadline the loop waited in `send` forever, and
        // heartbeats, takeovers and the drain all waited behind it.
        let ctx = context_with(None, |s| {
            s.heartbeat_timeout = Duration::from_millis(300);
            s.heartbeat_interval = Duration::from_secs(3600);
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = tokio::net::TcpSocket::new_v4().expect("socket");
        client
            .set_recv_buffer_size(2048)
            .expect("small receive buffer");
        let client = client
            .connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server_side, peer) = listener.accept().await.expect("accept");
        socket2::SockRef::from(&server_side)
            .set_send_buffer_size(4096)
            .expect("small send buffer");
        let io = showoff_core::TunnelStream::boxed(BytesMut::new(), server_side);
        let framed = tokio_util::codec::Framed::new(io, showoff_proto::FrameCodec::new());
        let (tx, rx) = mpsc::channel(20_000);
        for i in 0..20_000 {
            let dial = ServerMessage::Dial {
                id: format!("{i:022}"),
                tunnel: "t".repeat(64),
                visitor_addr: "192.0.2.1:40000".into(),
                traceparent: None,
                tracestate: None,
            };
            tx.try_send(dial).expect("queued");
        }
        let principal = Principal::unrestricted("p");
        let session = Arc::new(Session::new(
            "s".into(),
            principal,
            peer,
            CancellationToken::new(),
        ));
        let looped = ControlLoop::new(framed, rx, session, ctx).run();
        let end = tokio::time::timeout(Duration::from_secs(10), looped)
            .await
            .expect("the loop ended instead of waiting on the write");
        assert_eq!(end, "write timed out: the client stopped reading");
        drop(client);
    }
}
