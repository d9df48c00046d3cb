//! Raw TCP tunnels: each tunnel owns one public listener; every visitor connection gets a fresh
//! stream to the client and the two are spliced until either side closes. A trusted PROXY
//! protocol header (when configured) names the visitor; the client can pass it on to its
//! target in a header of its own. Each connection is reported once as an exchange event.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use showoff_core::trace;
use showoff_core::trace::Decision;
use showoff_core::{Exchange, OpenError, Protocol, StreamMeta, splice};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tracing::{Instrument, debug, info};

use crate::control::TcpTunnels;
use crate::edge::EdgeContext;
use crate::edge::error::EdgeError;
use crate::edge::spans;
use crate::listen::Arrived;
use crate::state::Tunnel;

/// The TCP edge, as the control layer starts it for each TCP tunnel.
pub(crate) struct TcpEdge(pub(crate) Arc<EdgeContext>);

impl TcpTunnels for TcpEdge {
    fn serve(&self, listener: TcpListener, tunnel: Arc<Tunnel>) {
        let ctx = self.0.clone();
        ctx.drain
            .tasks()
            .spawn(serve_tunnel(listener, tunnel, ctx.clone()));
    }
}

/// Accepts visitors on a TCP tunnel's port until the tunnel closes or the server drains.
async fn serve_tunnel(listener: TcpListener, tunnel: Arc<Tunnel>, ctx: Arc<EdgeContext>) {
    let (closed, drain) = (tunnel.closed.clone(), ctx.drain.draining().clone());
    let until = async move {
        tokio::select! {
            _ = closed.cancelled() => {}
            _ = drain.cancelled() => {}
        }
    };
    let prelude = ctx.prelude.clone();
    let (name, session) = (tunnel.info.name.clone(), tunnel.session_id.clone());
    let span = move |peer: SocketAddr| tracing::info_span!("visitor", %peer, tunnel = %name, session = %session);
    let tracker = ctx.drain.visitors().clone();
    let handle = move |arrived: Arrived| serve_visitor(arrived, tunnel.clone(), ctx.clone());
    crate::listen::serve(listener, until, prelude, tracker, span, handle).await;
}

async fn serve_visitor(arrived: Arrived, tunnel: Arc<Tunnel>, ctx: Arc<EdgeContext>) {
    let _gauge = ctx.visitor_gauge();
    match arrived {
        Ok(arrival) => {
            relay_visitor(arrival.stream, arrival.peer, arrival.prefix, tunnel, &ctx).await
        }
        Err(refusal) => {
            let (peer, code) = (refusal.peer, refusal.error.code());
            debug!(%peer, tunnel = %tunnel.info.name, code, "tcp visitor refused by the PROXY protocol policy");
            let failed = Exchange::failed(Protocol::Tcp, peer.ip(), code);
            ctx.exchanges.emit(&Exchange {
                tunnel: Some(&tunnel.info.name),
                ..failed
            });
        }
    }
}

/// Splices one visitor with a fresh stream to the tunnel's client, after the tunnel's IP rules
/// and visitor cap; `prefix` (bytes already read from the visitor) goes first. Also serves TLS
/// passthrough visitors, whose prefix is their ClientHello.
pub(crate) async fn relay_visitor<V: AsyncRead + AsyncWrite + Unpin>(
    visitor: V,
    peer: SocketAddr,
    prefix: BytesMut,
    tunnel: Arc<Tunnel>,
    ctx: &EdgeContext,
) {
    let protocol = match tunnel.info.kind {
        showoff_proto::TunnelKind::Tls => Protocol::Tls,
        _ => Protocol::Tcp,
    };
    let started = Instant::now();
    let (span, decision) =
        spans::connection(&ctx.settings, protocol.as_str(), &tunnel.info.name, peer);
    let visit = Visit {
        peer,
        prefix,
        may_retry: true,
        decision,
    };
    let relayed = relay(visitor, visit, &tunnel, ctx).instrument(span.clone());
    let (bytes_in, bytes_out, error) = match relayed.await {
        Ok((bytes_in, bytes_out)) => (bytes_in, bytes_out, None),
        Err(error) => (0, 0, Some(error.code())),
    };
    span.record("showoff.bytes_in", trace::int(bytes_in));
    span.record("showoff.bytes_out", trace::int(bytes_out));
    if let Some(code) = error {
        spans::failed(&span, code);
    }
    ctx.exchanges.emit(&Exchange {
        protocol,
        tunnel: Some(&tunnel.info.name),
        visitor: peer.ip(),
        http: None,
        status: None,
        error,
        bytes_in,
        bytes_out,
        duration: started.elapsed(),
    });
}

/// One visitor connection on its way to a stream.
struct Visit {
    peer: SocketAddr,
    /// Bytes already read from the visitor.
    prefix: BytesMut,
    /// Whether a session that ends while the stream is set up may be replaced by its
    /// successor's (once).
    may_retry: bool,
    /// How the connection is traced.
    decision: Decision,
}

/// The checks, the stream and the splice; the bytes moved each way. A stream the client could
/// not give because its session ended meanwhile is asked once of the session that took the
/// tunnel over (a takeover, or the client back after a lost link). Established streams run
/// until either end closes: only a cut (revocation, expiry, the client's close) or the end of
/// a drain's grace stops them, not the end of their session.
async fn relay<V: AsyncRead + AsyncWrite + Unpin>(
    mut visitor: V,
    mut visit: Visit,
    tunnel: &Tunnel,
    ctx: &EdgeContext,
) -> Result<(u64, u64), EdgeError> {
    let peer = visit.peer;
    if !tunnel.access.ip_allowed(peer.ip()) {
        debug!(%peer, tunnel = %tunnel.info.name, "tcp visitor refused by the tunnel's IP rules");
        return Err(EdgeError::IpForbidden);
    }
    let _slot = tunnel
        .visitor_slot(ctx.settings.visitor_caps, peer.ip())
        .map_err(|full| {
            debug!(%peer, tunnel = %tunnel.info.name, ?full, "tcp visitor refused: visitor cap");
            EdgeError::from(full)
        })?;
    tunnel.touch();
    let meta = StreamMeta {
        tunnel: tunnel.info.name.clone(),
        visitor_addr: peer,
        trace: None,
    };
    let opened = spans::open_stream(&visit.decision, tunnel, meta).await;
    let mut stream = match opened {
        Ok(stream) => stream,
        Err(OpenError::ClientGone) if visit.may_retry => {
            let Some(successor) = successor(ctx, tunnel) else {
                info!(%peer, tunnel = %tunnel.info.name, "tcp visitor dropped: the client is gone");
                return Err(EdgeError::Open(OpenError::ClientGone));
            };
            debug!(%peer, tunnel = %tunnel.info.name, "session ended; asking its successor");
            visit.may_retry = false;
            return Box::pin(relay(visitor, visit, &successor, ctx)).await;
        }
        Err(error) => {
            info!(%peer, tunnel = %tunnel.info.name, %error, "tcp visitor dropped");
            return Err(EdgeError::Open(error));
        }
    };
    let prefix = std::mem::take(&mut visit.prefix);
    if !prefix.is_empty() && stream.write_all(&prefix).await.is_err() {
        return Ok((0, 0));
    }
    let moved = tokio::select! {
        moved = splice(&mut visitor, &mut stream) => moved,
        _ = tunnel.cut.cancelled() => (0, 0),
        _ = ctx.drain.stopping().cancelled() => (0, 0),
    };
    tunnel.touch();
    Ok(moved)
}

/// The live tunnel that took `tunnel`'s name over for the same principal, if any.
fn successor(ctx: &EdgeContext, tunnel: &Tunnel) -> Option<Arc<Tunnel>> {
    let next = ctx.routes.get(&tunnel.info.name)?;
    let same_owner = next.principal == tunnel.principal && next.info.kind == tunnel.info.kind;
    (same_owner && next.session_id != tunnel.session_id).then_some(next)
}
