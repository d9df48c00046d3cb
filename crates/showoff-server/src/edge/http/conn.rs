//! One visitor connection: read each request head under the head deadline, hand it to the
//! exchange, and on failure send the error page, log it once by origin, report it as an
//! exchange event and linger briefly so the visitor can read it.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use showoff_core::{Exchange, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{Instrument, debug, info, warn};

use super::head::{RequestHead, parse_head};
use super::meter::Metered;
use super::pool::UpstreamConn;
use super::{DRAIN_IDLE, LINGER, LINGER_BYTES, READ_CHUNK, Scheme, gate};
use crate::edge::EdgeContext;
use crate::edge::error::{EdgeError, ErrorPage, Origin};
use crate::edge::spans;

/// One visitor connection, plain or TLS.
pub(crate) struct Conn<S> {
    pub(super) stream: Metered<S>,
    /// The visitor's address: the TCP peer, or the source a trusted PROXY header named.
    pub(super) peer: SocketAddr,
    pub(super) buf: BytesMut,
    pub(super) scheme: Scheme,
    pub(super) ctx: Arc<EdgeContext>,
    /// An upstream connection the target authenticated for this visitor connection, and the
    /// tunnel (name, session) it belongs to; later requests to that tunnel ride it.
    pub(super) pinned: Option<(String, Arc<str>, UpstreamConn)>,
    /// The tunnel the current request was routed to, so a failure is counted against it.
    pub(super) routed: Option<Arc<crate::state::Tunnel>>,
    /// The connection's log span (which records the tunnel); each request's trace span, when
    /// tracing is on, is entered inside it.
    pub(super) log_span: tracing::Span,
    /// How the current request is traced.
    pub(super) decision: showoff_core::trace::Decision,
    /// Carries one request of another edge; never handed over.
    pub(super) piped: bool,
}

/// How [`Conn::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The connection is finished.
    Done,
    /// A request reached a tunnel whose target speaks HTTP/2: the rest of the connection,
    /// that request's head first, is for the request-level edge.
    HandOff,
    /// A peer-listener connection opened with the HTTP/2 preface (an instance forwarding
    /// gRPC): the whole connection, preface first, is HTTP/2.
    Http2,
}

/// The start of the HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// How an exchange left the connection.
pub(super) enum Next {
    KeepAlive,
    /// Close lingering: the visitor may still be sending (a body we did not read, a request
    /// written before it read `Connection: close`); it is drained briefly first, or the close
    /// resets the connection and the response can be lost.
    Close,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Conn<S> {
    /// A connection whose first bytes (read while looking for a PROXY header) are `buf`.
    pub(crate) fn new(
        stream: S,
        peer: SocketAddr,
        mut buf: BytesMut,
        scheme: Scheme,
        ctx: Arc<EdgeContext>,
    ) -> Self {
        buf.reserve(READ_CHUNK);
        Self {
            stream: Metered::new(stream),
            peer,
            buf,
            scheme,
            ctx,
            pinned: None,
            routed: None,
            log_span: tracing::Span::current(),
            decision: Default::default(),
            piped: false,
        }
    }

    /// Serves requests until the connection ends, or until one reaches a tunnel whose target
    /// speaks HTTP/2: the connection is then handed over with that request's head unread
    /// ([`Ended::HandOff`], [`Conn::into_parts`]).
    pub(crate) async fn run(&mut self) -> Ended {
        loop {
            let head = match self.next_head().await {
                Ok(Some(head)) => head,
                Ok(None) => return Ended::Done,
                // Another instance forwarding gRPC speaks HTTP/2 on the peer listener.
                Err(_) if self.scheme == Scheme::Peer && self.buf.starts_with(H2_PREFACE) => {
                    return Ended::Http2;
                }
                Err(error) => {
                    self.fail(error, "").await;
                    return Ended::Done;
                }
            };
            let routed = gate::route(&self.ctx, &head.host.name).ok();
            if routed.as_ref().is_some_and(|t| self.hands_off(&head, t)) {
                return Ended::HandOff;
            }
            self.buf.advance(head.len);
            let host = head.host.name.clone();
            self.routed = None;
            let (span, decision) = spans::request(
                &self.ctx.settings,
                &head,
                self.peer,
                self.scheme.as_str(),
                self.scheme == Scheme::Peer,
            );
            self.decision = decision;
            match self.exchange(head, routed).instrument(span.clone()).await {
                Ok(Next::KeepAlive) => continue,
                Ok(Next::Close) => {
                    drop(span);
                    self.close_lingering().await;
                    return Ended::Done;
                }
                Err(error) => {
                    // The span ends once the page is written, not after the linger.
                    let written = self.error_page(error, &host).instrument(span).await;
                    if written {
                        self.close_lingering().await;
                    }
                    return Ended::Done;
                }
            }
        }
    }

    /// Whether the request goes to the request-level edge with the rest of the connection:
    /// its tunnel's target speaks HTTP/2, and it is not an ACME answer or a redirect, which
    /// are answered here. Connections from the HTTP/2 edge's pipe never are.
    fn hands_off(&self, head: &RequestHead, tunnel: &crate::state::Tunnel) -> bool {
        if self.piped || !crate::edge::h2::upstream::speaks_h2(tunnel) {
            return false;
        }
        let redirected = self.scheme == Scheme::Http && self.ctx.settings.redirect_http;
        !redirected && !head.target.starts_with(crate::tls::HTTP01_PREFIX)
    }

    /// The visitor's stream and the bytes read from it and not yet served.
    pub(crate) fn into_parts(self) -> (S, BytesMut) {
        (self.stream.into_inner(), self.buf)
    }

    /// Marks a connection that carries one request of another edge (the HTTP/2 edge's pipe):
    /// it is never handed over.
    pub(crate) fn piped(mut self) -> Self {
        self.piped = true;
        self
    }

    /// Reads the next request head; `None` when the visitor is done, or stayed idle for
    /// [`DRAIN_IDLE`] once the drain began (a request already on its way is still answered).
    async fn next_head(&mut self) -> Result<Option<RequestHead>, EdgeError> {
        let settings = &self.ctx.settings;
        let mut deadline = Instant::now() + settings.head_timeout;
        let mut drain_seen = self.ctx.drain.is_draining();
        if drain_seen && self.buf.is_empty() {
            deadline = deadline.min(Instant::now() + DRAIN_IDLE);
        }
        let mut scanned = 0;
        loop {
            if head_end(&self.buf, &mut scanned) || self.buf.len() > settings.max_header_bytes {
                let head =
                    parse_head(&self.buf, settings.max_header_bytes).map_err(EdgeError::Head)?;
                if let Some(mut head) = head {
                    head.upgrade = head.upgrade && upgrade_allowed(&head, &settings.upgrades);
                    return Ok(Some(head));
                }
            }
            let idle = self.buf.is_empty();
            self.buf.reserve(READ_CHUNK);
            let read = tokio::select! {
                read = timeout_at(deadline, self.stream.read_buf(&mut self.buf)) => read,
                _ = self.ctx.drain.draining().cancelled(), if idle && !drain_seen => {
                    drain_seen = true;
                    deadline = deadline.min(Instant::now() + DRAIN_IDLE);
                    continue;
                }
            };
            match read {
                Err(_) if idle => return Ok(None),
                Err(_) => return Err(EdgeError::HeadTimeout),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
                Ok(Ok(_)) => {}
            }
        }
    }

    pub(super) async fn write(&mut self, bytes: &[u8]) -> Result<(), EdgeError> {
        match timeout(
            self.ctx.settings.io_idle_timeout,
            self.stream.write_all(bytes),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            _ => Err(EdgeError::TunnelBroken),
        }
    }

    /// Sends an error page, logs it once by origin, and closes after draining the visitor.
    pub(crate) async fn fail(&mut self, error: EdgeError, host: &str) {
        if self.error_page(error, host).await {
            self.close_lingering().await;
        }
    }

    /// Reports, logs and writes an error page; whether it was written (the connection then
    /// closes lingering). The current span records the status and the code.
    async fn error_page(&mut self, error: EdgeError, host: &str) -> bool {
        let page = error.page(host);
        let routed = self.routed.take();
        let tunnel = routed.as_ref().map(|t| t.info.name.as_str());
        report_failure(&self.ctx, self.peer, host, tunnel, &page, &self.decision);
        self.write(&page.to_bytes()).await.is_ok()
    }

    pub(super) async fn close_lingering(&mut self) {
        let _ = self.stream.shutdown().await;
        linger(&mut self.stream).await;
    }
}

/// Reports a failed request once, whatever protocol it came over: on the current span (when
/// sampled), as an exchange event, and in the log at the level its origin calls for.
pub(crate) fn report_failure(
    ctx: &EdgeContext,
    peer: SocketAddr,
    host: &str,
    tunnel: Option<&str>,
    page: &ErrorPage,
    decision: &showoff_core::trace::Decision,
) {
    if decision.sampled() {
        let span = tracing::Span::current();
        spans::responded(&span, page.status);
        span.record("showoff.error", page.code);
    }
    ctx.exchanges.emit(&Exchange {
        tunnel,
        status: Some(page.status),
        ..Exchange::failed(Protocol::Http, peer.ip(), page.code)
    });
    match page.origin {
        Origin::Visitor => {
            debug!(%peer, host, status = page.status, code = page.code, "request refused")
        }
        Origin::Tunnel => {
            info!(%peer, host, status = page.status, code = page.code, message = %page.message, "tunnel failed")
        }
        Origin::Showoff => {
            warn!(%peer, host, status = page.status, code = page.code, message = %page.message, "request refused by the server")
        }
    }
}

/// Whether the protocol a request asks to upgrade to is one the edge passes through; others
/// (`h2c` above all, which would bypass the edge's per-request rules) are not upgrades.
fn upgrade_allowed(head: &RequestHead, allowed: &[String]) -> bool {
    let Some(value) = head.headers.get(http::header::UPGRADE) else {
        return false;
    };
    let first = String::from_utf8_lossy(value.as_bytes());
    let protocol = first
        .split(',')
        .next()
        .unwrap_or_default()
        .trim()
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    allowed.contains(&protocol)
}

/// Reads and discards what the visitor still sends, briefly, so closing does not reset the
/// connection before the error page is read.
async fn linger<S: AsyncRead + Unpin>(stream: &mut S) {
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    let deadline = Instant::now() + LINGER;
    while drained < LINGER_BYTES {
        match timeout_at(deadline, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => return,
        }
    }
}

/// Whether the buffer holds a complete head terminator (`\n\n` or `\n\r\n`); `scanned` keeps the
/// search linear across reads of a slow head.
fn head_end(buf: &[u8], scanned: &mut usize) -> bool {
    let start = scanned.saturating_sub(2);
    let found = buf[start..].windows(2).enumerate().any(|(i, w)| {
        w[0] == b'\n'
            && (w[1] == b'\n' || (w[1] == b'\r' && buf.get(start + i + 2) == Some(&b'\n')))
    });
    *scanned = buf.len();
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::tests::context;

    /// What a visitor that sent `request` over an in-memory connection reads back.
    async fn served(ctx: Arc<EdgeContext>, request: &[u8]) -> String {
        let (mut visitor, edge) = tokio::io::duplex(64 * 1024);
        let peer = "192.0.2.1:4000".parse().expect("addr");
        let task = tokio::spawn(async move {
            Conn::new(edge, peer, BytesMut::new(), Scheme::Http, ctx)
                .run()
                .await;
        });
        visitor.write_all(request).await.expect("write");
        let mut out = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            visitor.read_to_end(&mut out),
        )
        .await
        .expect("the edge closed")
        .expect("read");
        task.await.expect("edge task");
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn an_acme_answer_to_a_request_with_a_body_closes_instead_of_parsing_the_body() {
        // Issue 11, item 7: the body was left in the buffer and parsed as the next request.
        let ctx = context();
        ctx.acme_http01.set("tok", Some("tok.key".into()));
        let smuggled = "GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: a.localhost\r\n\r\n";
        let request = format!(
            "POST /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        );
        let out = served(ctx, request.as_bytes()).await;
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 1, "{out}");
        assert!(
            out.contains("connection: close") && out.ends_with("tok.key"),
            "{out}"
        );
    }

    #[test]
    fn head_end_finds_terminators_across_reads() {
        let mut scanned = 0;
        let mut buf = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        assert!(!head_end(&buf, &mut scanned));
        buf.extend_from_slice(b"\r");
        assert!(!head_end(&buf, &mut scanned));
        buf.extend_from_slice(b"\n");
        assert!(head_end(&buf, &mut scanned));
        let mut scanned = 0;
        assert!(head_end(b"GET / HTTP/1.1\nHost: a\n\n", &mut scanned));
    }
}
