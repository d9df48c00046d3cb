//! The upstream client: HTTP/1.1 connections to the target over tunnel streams, kept alive and
//! pooled per tunnel (in the tunnel's edge-state slot), and the request/response turn on one of
//! them.
//!
//! The visitor's own task speaks HTTP/1.1 to the target: it writes the request, reads the
//! response head into the connection's buffer and relays the body. No connection task and no
//! channel sit between them, so a keep-alive request costs one task's wake-ups. A visitor
//! connection does not cost a tunnel stream: requests borrow an idle connection from the
//! tunnel's pool (or open a stream) and return it once the response was relayed completely.

use std::sync::Mutex;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::FutureExt;
use showoff_core::{StreamMeta, TunnelStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;
use tracing::debug;

use super::body::Framing;
use super::conn::Conn;
use super::head::RequestHead;
use super::relay::{pump_body, read_more};
use super::response::{Asked, Response, parse_response};
use crate::edge::error::EdgeError;
use crate::state::Tunnel;

/// Most idle upstream connections kept per tunnel.
pub(crate) const MAX_IDLE_PER_TUNNEL: usize = 64;
/// Read buffer of an upstream connection.
pub(crate) const UPSTREAM_BUF: usize = 16 * 1024;

/// One HTTP/1.1 connection to the target, through a tunnel stream.
pub(crate) struct UpstreamConn {
    pub(crate) io: TunnelStream,
    /// Bytes read from the target and not yet relayed.
    pub(crate) buf: BytesMut,
}

impl UpstreamConn {
    fn new(io: TunnelStream) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(UPSTREAM_BUF),
        }
    }

    /// True when the idle connection is still open and silent. An idle HTTP/1.1 connection must
    /// not send anything, so readable means closed (or broken): drop it.
    fn is_idle_and_open(&mut self) -> bool {
        let mut probe = [0u8; 1];
        self.buf.is_empty() && self.io.read(&mut probe).now_or_never().is_none()
    }
}

/// The idle upstream connections of one tunnel.
#[derive(Default)]
pub(crate) struct Upstream {
    idle: Mutex<Vec<UpstreamConn>>,
}

impl Upstream {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<UpstreamConn>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_idle(&self) -> Option<UpstreamConn> {
        loop {
            let mut conn = self.idle().pop()?;
            if conn.is_idle_and_open() {
                return Some(conn);
            }
        }
    }

    /// Returns a connection whose last response was relayed completely. A buffer that grew for
    /// a large body is given back, so idle connections stay small.
    pub(crate) fn put_back(&self, mut conn: UpstreamConn) {
        if conn.buf.is_empty() && conn.buf.capacity() > UPSTREAM_BUF {
            conn.buf = BytesMut::with_capacity(UPSTREAM_BUF);
        }
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE_PER_TUNNEL {
            idle.push(conn);
        }
    }
}

/// The tunnel's pool of idle upstream connections.
pub(crate) fn pool(tunnel: &Tunnel) -> Option<&Upstream> {
    tunnel.edge_state::<Upstream>()
}

/// An upstream connection for one request, and whether it was reused from the pool.
pub(crate) async fn checkout(
    tunnel: &Tunnel,
    meta: &StreamMeta,
) -> Result<(UpstreamConn, bool), EdgeError> {
    if let Some(conn) = pool(tunnel).and_then(Upstream::take_idle) {
        return Ok((conn, true));
    }
    let stream = tunnel.opener.open(meta).await.map_err(EdgeError::Open)?;
    Ok((UpstreamConn::new(stream), false))
}

/// Why sending a request upstream failed.
pub(super) enum SendError {
    /// A pooled connection turned out closed before anything was answered: retry on a fresh one.
    Stale,
    Failed(EdgeError),
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Conn<S> {
    /// sent again safely).
    pub(super) async fn send(
        &mut self,
        tunnel: &Tunnel,
        meta: &StreamMeta,
        head: &RequestHead,
        request: &[u8],
    ) -> Result<(UpstreamConn, Response, bool), EdgeError> {
        loop {
            let (mut up, reused) = checkout(tunnel, meta).await?;
            match self.try_send(&mut up, head, request).await {
                Ok((resp, body_done)) => return Ok((up, resp, body_done)),
                Err(SendError::Stale) if reused && head.framing == Framing::Empty => continue,
                Err(SendError::Stale) => return Err(EdgeError::TunnelBroken),
                Err(SendError::Failed(error)) => return Err(error),
            }
        }
    }

    async fn try_send(
        &mut self,
        up: &mut UpstreamConn,
        head: &RequestHead,
        request: &[u8],
    ) -> Result<(Response, bool), SendError> {
        let idle = self.ctx.settings.io_idle_timeout;
        let asked = Asked {
            head_method: head.method == http::Method::HEAD,
            visitor_http11: head.version == http::Version::HTTP_11,
            visitor_keep_alive: head.keep_alive,
            upgrade: head.upgrade,
        };
        if !matches!(timeout(idle, up.io.write_all(request)).await, Ok(Ok(()))) {
            return Err(SendError::Stale);
        }
        let UpstreamConn { io, buf } = up;
        if head.framing == Framing::Empty {
            return read_response(io, buf, asked, idle).await.map(|r| (r, true));
        }
        // Body and response run together: a target may answer before reading the whole body.
        let (mut rd, mut wr) = tokio::io::split(io);
        let pump = pump_body(&mut self.stream, &mut self.buf, head.framing, &mut wr, idle);
        let read = read_response(&mut rd, buf, asked, idle);
        tokio::pin!(pump, read);
        let mut body_done = false;
        loop {
            tokio::select! {
                ok = &mut pump, if !body_done => {
                    if !ok {
                        return Err(SendError::Failed(EdgeError::BadBody));
                    }
                    body_done = true;
                }
                resp = &mut read => return resp.map(|r| (r, body_done)),
            }
        }
    }
}

/// Reads the response head into `buf` (interim 1xx answers are skipped); body bytes that came
/// with it stay in `buf`.
async fn read_response<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    asked: Asked,
    idle: Duration,
) -> Result<Response, SendError> {
    let mut answered = false;
    loop {
        if !buf.is_empty() {
            answered = true;
            let parsed = parse_response(buf, asked).map_err(|error| {
                debug!(%error, "target sent an invalid response");
                SendError::Failed(EdgeError::BadResponse)
            })?;
            if let Some(resp) = parsed {
                buf.advance(resp.len);
                if resp.status < 200 && resp.status != 101 {
                    continue;
                }
                return Ok(resp);
            }
        }
        match read_more(io, buf, idle).await {
            Ok(()) => {}
            Err(_) if !answered => return Err(SendError::Stale),
            Err(_) => return Err(SendError::Failed(EdgeError::TunnelBroken)),
        }
    }
}
