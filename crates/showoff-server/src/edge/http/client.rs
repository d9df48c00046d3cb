//! The upstream client: one request/response turn on an upstream connection from the pool
//! ([`super::pool`]), with one retry on a fresh connection when a pooled one proves stale
//! before answering, and the response head read (interim answers skipped).
//!
//! The visitor's own task speaks HTTP/1.1 to the target: it writes the request, reads the
//! response head into the connection's buffer and relays the body. No connection task and no
//! channel sit between them, so a keep-alive request costs one task's wake-ups.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use showoff_core::StreamMeta;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;
use tracing::debug;

use super::body::Framing;
use super::conn::Conn;
use super::head::RequestHead;
use super::pool::{UpstreamConn, checkout};
use super::relay::{Pace, pump_body, read_more};
use super::response::{Asked, Response, parse_response};
use crate::edge::error::EdgeError;
use crate::state::Tunnel;

/// Why sending a request upstream failed.
pub(super) enum SendError {
    /// The connection turned out closed before anything was answered (not a timeout): a
    /// pooled one may be replaced for a replayable request.
    Stale,
    Failed(EdgeError),
}

/// Whether a request may be sent again after its connection died before any answer: only a
/// safe method without a body (RFC 9110 §9.2.1, RFC 9112 §9.3.1); the target may already have
/// run anything else.
pub(super) fn replayable(head: &RequestHead) -> bool {
    use http::Method;
    let safe = [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE];
    head.framing == Framing::Empty && safe.contains(&head.method)
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Conn<S> {
    /// Sends the request on a pooled or fresh upstream connection. A pooled connection that
    /// proves closed before any response byte is replaced, but only for a [`replayable`]
    /// request, and never after a timeout (the target may still be working on it).
    pub(super) async fn send(
        &mut self,
        tunnel: &Tunnel,
        meta: &StreamMeta,
        head: &RequestHead,
        request: &[u8],
    ) -> Result<(UpstreamConn, Response, bool), EdgeError> {
        loop {
            let (mut up, reused) = match self.take_pinned(tunnel) {
                Some(up) => (up, true),
                None => checkout(&self.decision, tunnel, meta).await?,
            };
            if self.decision.sampled() {
                tracing::Span::current().record("showoff.upstream.reused", reused);
            }
            match self.try_send(&mut up, head, request).await {
                Ok((resp, body_done)) => return Ok((up, resp, body_done)),
                Err(SendError::Stale) if reused && replayable(head) => continue,
                Err(SendError::Stale) => return Err(EdgeError::TunnelBroken),
                Err(SendError::Failed(error)) => return Err(error),
            }
        }
    }

    /// The connection pinned to this visitor connection for `tunnel`, if any.
    fn take_pinned(&mut self, tunnel: &Tunnel) -> Option<UpstreamConn> {
        let (name, session, _) = self.pinned.as_ref()?;
        if *name != tunnel.info.name || *session != tunnel.session_id {
            self.pinned = None;
            return None;
        }
        self.pinned.take().map(|(_, _, up)| up)
    }

    pub(super) async fn try_send(
        &mut self,
        up: &mut UpstreamConn,
        head: &RequestHead,
        request: &[u8],
    ) -> Result<(Response, bool), SendError> {
        let idle = self.ctx.settings.io_idle_timeout;
        let asked = Asked {
            head_method: head.method == http::Method::HEAD,
            visitor_http11: head.version == http::Version::HTTP_11,
            // From the pre-drain delay on, every response closes its connection.
            visitor_keep_alive: head.keep_alive && !self.ctx.drain.is_leaving(),
            upgrade: head.upgrade,
        };
        if !matches!(timeout(idle, up.io.write_all(request)).await, Ok(Ok(()))) {
            return Err(SendError::Stale);
        }
        let UpstreamConn { io, buf, .. } = up;
        if head.framing == Framing::Empty {
            return read_response(io, buf, asked, idle).await.map(|r| (r, true));
        }
        // Body and response run together: a target may answer before reading the whole body.
        let (mut rd, mut wr) = tokio::io::split(io);
        let pace = Pace {
            started: tokio::time::Instant::now(),
            grace: self.ctx.settings.head_timeout,
            min_rate: self.ctx.settings.min_body_rate,
            idle,
        };
        let pump = pump_body(&mut self.stream, &mut self.buf, head.framing, &mut wr, pace);
        let read = read_response(&mut rd, buf, asked, idle);
        tokio::pin!(pump, read);
        let mut body_done = false;
        loop {
            tokio::select! {
                pumped = &mut pump, if !body_done => {
                    pumped.map_err(SendError::Failed)?;
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
            Err(e) if !answered && e.kind() != std::io::ErrorKind::TimedOut => {
                return Err(SendError::Stale);
            }
            Err(_) => return Err(SendError::Failed(EdgeError::TunnelBroken)),
        }
    }
}
