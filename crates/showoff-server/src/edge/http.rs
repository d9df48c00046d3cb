//! The HTTP edge: one task per visitor connection, one exchange per request.
//!
//! Each request head is read under the head deadline and validated on its own
//! ([`head::parse_head`]), so a keep-alive connection is routed request by request. The
//! request is re-encoded for the target (hop-by-hop headers out, `X-Forwarded-*` set, `Host`
//! per tunnel policy) and sent on a pooled upstream connection ([`pool`], [`client`]); the
//! response head is parsed ([`response`]) and the body relayed as it arrives, both ways through
//! fixed buffers. Upgrades (WebSocket) are spliced after the `101`. Failures before the response
//! head become the error pages of [`crate::edge::error`].
//!
//! Layout: [`conn`] (the connection loop and error pages), [`exchange`] (per-request
//! policy), [`forward`] (one hop to the cluster instance holding the tunnel), [`client`] (the
//! upstream request/response turn), [`pool`] (idle upstream
//! connections), [`relay`] (bodies and upgrades), [`encode`] (what is written towards the
//! target), [`head`], [`body`] and [`response`] (parsers), [`meter`] (byte counts).

pub(crate) mod body;
pub(crate) mod client;
pub(crate) mod conn;
pub(crate) mod encode;
pub(crate) mod exchange;
pub(crate) mod forward;
pub(crate) mod gate;
pub(crate) mod head;
pub(crate) mod meter;
pub(crate) mod pool;
pub(crate) mod relay;
pub(crate) mod response;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

pub(crate) use self::conn::{Conn, Ended};
use crate::edge::EdgeContext;
use crate::edge::error::EdgeError;
use crate::listen::Arrived;

/// Bytes asked of a socket per read.
const READ_CHUNK: usize = 16 * 1024;
/// Bytes asked of a socket per read while relaying a body.
const BODY_CHUNK: usize = 64 * 1024;
/// Response bytes gathered before a write.
const WRITE_COALESCE: usize = 64 * 1024;
/// How long an error page's connection lingers to drain the visitor's unread request.
const LINGER: Duration = Duration::from_millis(500);
/// Most bytes drained while lingering.
const LINGER_BYTES: usize = 256 * 1024;
/// How long a keep-alive connection that is idle when the drain begins still waits for its
/// next request (answered with `Connection: close`): its client may be writing it right now.
const DRAIN_IDLE: Duration = Duration::from_secs(1);

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
    if conn.run().await == Ended::Done {
        return;
    }
    let (stream, unread) = conn.into_parts();
    let io = TokioIo::new(showoff_core::Prefixed::new(unread, stream));
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

/// Which public listener a visitor came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTPS, terminated by Showoff.
    Https,
    /// The peer listener: requests another instance of the cluster forwarded, with what it
    /// decided about the visitor in the peer headers; never forwarded again.
    Peer,
}

impl Scheme {
    /// The scheme's name, as in `X-Forwarded-Proto`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Http | Self::Peer => "http",
            Self::Https => "https",
        }
    }
}
