//! Where HTTP visitor connections start. Plain-HTTP, HTTPS (HTTP/1.1) and peer-listener
//! connections run the HTTP/1.1 edge ([`crate::edge::http`]); a connection whose request
//! reaches a tunnel whose target speaks HTTP/2 is handed over, from that request on, to hyper's
//! HTTP/1.1 server and the request-level edge ([`crate::edge::request`]).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::edge::EdgeContext;
use crate::edge::error::EdgeError;
use crate::edge::http::{Conn, Ended, Scheme};
use crate::listen::Arrived;

/// Serves one plain-HTTP visitor connection until it closes, fails or the server drains.
pub(crate) async fn serve_visitor(arrived: Arrived, ctx: Arc<EdgeContext>) {
    let _gauge = ctx.visitor_gauge();
    match arrived {
        Ok(arrival) => {
            let (stream, peer, prefix) = (arrival.stream, arrival.peer, arrival.prefix);
            serve_conn(stream, peer, prefix, Scheme::Http, ctx).await;
        }
        Err(refusal) => {
            let (stream, peer) = (refusal.stream, refusal.peer);
            let mut conn = Conn::new(stream, peer, BytesMut::new(), Scheme::Http, ctx);
            conn.fail(EdgeError::Proxy(refusal.error), "").await;
        }
    }
}

/// Serves one connection on the peer listener: the cluster secret proved
/// ([`crate::edge::peer::accept`]), then the forwarding instance's requests as visitors of this
/// instance's tunnels (HTTP/1.1, or HTTP/2 for forwarded gRPC calls).
pub(crate) async fn serve_peer(arrived: Arrived, ctx: Arc<EdgeContext>) {
    if let Some((stream, peer, buf)) = crate::edge::peer::accept(arrived, &ctx).await {
        serve_conn(stream, peer, buf, Scheme::Peer, ctx).await;
    }
}

/// Serves one visitor connection with the HTTP/1.1 edge. A connection that reaches a tunnel
/// whose target speaks HTTP/2 is served from that request on by hyper's HTTP/1.1 server, each
/// request through the request-level edge ([`crate::edge::request`]), which relays it to the
/// target as an HTTP/2 stream; the head deadline and keep-alive stay as they were, and a drain
/// closes it once its request in flight is answered.
pub(crate) async fn serve_conn<S>(
    stream: S,
    peer: SocketAddr,
    prefix: BytesMut,
    scheme: Scheme,
    ctx: Arc<EdgeContext>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut conn = Conn::new(stream, peer, prefix, scheme, ctx.clone());
    let ended = conn.run().await;
    if ended == Ended::Done {
        return;
    }
    let (stream, unread) = conn.into_parts();
    let stream = showoff_core::Prefixed::new(unread, stream);
    if ended == Ended::Http2 {
        return crate::edge::h2::serve(stream, peer, scheme, ctx).await;
    }
    let io = TokioIo::new(stream);
    let service_ctx = ctx.clone();
    let service = hyper::service::service_fn(move |request| {
        let ctx = service_ctx.clone();
        async move {
            let response = crate::edge::request::serve(request, peer, scheme, ctx).await;
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(ctx.settings.head_timeout)
        .max_buf_size(ctx.settings.max_header_bytes.max(8192));
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "HTTP/1.1 connection to an HTTP/2 tunnel ended");
            }
            return;
        }
        _ = ctx.drain.draining().cancelled() => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}
