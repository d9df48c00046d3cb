//! The HTTP edge: one task per visitor connection, one exchange per request.
//!
//! Each request head is read under the head deadline and validated on its own
//! ([`head::parse_head`]), so a keep-alive connection is routed request by request. The request is
//! re-encoded for the target (hop-by-hop headers out, `X-Forwarded-*` set, `Host` per tunnel
//! policy) and sent on a pooled upstream connection ([`upstream`]); the response head is parsed
//! ([`response`]) and the body relayed as it arrives, both ways through fixed buffers. Upgrades
//! (WebSocket) are spliced after the `101`. Failures before the response head become the error
//! pages of [`crate::edge::error`].

pub(crate) mod body;
pub(crate) mod head;
pub(crate) mod response;
pub(crate) mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::header::{self, HeaderName};
use showoff_proto::{HostHeader, TunnelSpec};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{debug, info, warn};

use self::body::{ChunkedDecoder, Decoded, Framing};
use self::head::{RequestHead, parse_head};
use self::response::{Asked, BodyFraming, Response, VisitorFraming, parse_response};
use self::upstream::UpstreamConn;
use crate::edge::error::{EdgeError, Origin};
use crate::edge::forwarded::{Forwarded, forwarded};
use crate::edge::proxy_protocol;
use crate::server::Shared;
use crate::stats::GaugeGuard;
use crate::transport::{StreamMeta, splice};
use crate::tunnel::Tunnel;

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

/// Request headers that never reach the target: hop-by-hop (RFC 9110 §7.6.1), or re-stated by
/// Showoff (framing, `Host`, `Expect`, untrusted `X-Forwarded-*`).
const NOT_FORWARDED: [HeaderName; 14] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::CONTENT_LENGTH,
    header::EXPECT,
    header::HOST,
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
];

/// Serves one visitor connection until it closes, fails or the server drains.
pub(crate) async fn serve_visitor(mut stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let stats = shared.clone();
    let _gauge = GaugeGuard::new(&stats.stats.visitor_connections_active);
    let config = &shared.config;
    let arrival = proxy_protocol::arrive(
        &mut stream,
        peer,
        config.proxy.protocol,
        &config.proxy,
        config.head_timeout,
    )
    .await;
    let (peer, buf, refused) = match arrival {
        Ok(arrival) => (arrival.peer, arrival.prefix, None),
        Err(error) => (peer, BytesMut::new(), Some(error)),
    };
    let mut conn = Conn::new(stream, peer, buf, Scheme::Http, shared);
    match refused {
        Some(error) => conn.fail(EdgeError::Proxy(error), "").await,
        None => conn.run().await,
    }
}

/// Which public listener a visitor came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTPS, terminated by Showoff.
    Https,
}

impl Scheme {
    /// The scheme's name, as in `X-Forwarded-Proto`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// One visitor connection, plain or TLS.
pub(crate) struct Conn<S> {
    stream: Metered<S>,
    /// The visitor's address: the TCP peer, or the source a trusted PROXY header named.
    peer: SocketAddr,
    buf: BytesMut,
    scheme: Scheme,
    shared: Arc<Shared>,
}

/// A finished request, as recorded.
struct Exchanged<'a> {
    tunnel: &'a str,
    visitor: std::net::IpAddr,
    status: u16,
    started: Instant,
    bytes: (u64, u64),
}

/// How an exchange left the connection.
enum Next {
    KeepAlive,
    Close,
    /// Close, but the visitor may still be sending a request body we did not read: drain it
    /// briefly first, or the close resets the connection and the response can be lost.
    CloseLingering,
}

/// Why sending a request upstream failed.
enum SendError {
    /// A pooled connection turned out closed before anything was answered: retry on a fresh one.
    Stale,
    Failed(EdgeError),
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Conn<S> {
    /// A connection whose first bytes (read while looking for a PROXY header) are `buf`.
    pub(crate) fn new(
        stream: S,
        peer: SocketAddr,
        mut buf: BytesMut,
        scheme: Scheme,
        shared: Arc<Shared>,
    ) -> Self {
        buf.reserve(READ_CHUNK);
        Self {
            stream: Metered::new(stream),
            peer,
            buf,
            scheme,
            shared,
        }
    }

    pub(crate) async fn run(&mut self) {
        loop {
            let head = match self.next_head().await {
                Ok(Some(head)) => head,
                Ok(None) => return,
                Err(error) => return self.fail(error, "").await,
            };
            let host = head.host.name.clone();
            match self.exchange(head).await {
                Ok(Next::KeepAlive) => continue,
                Ok(Next::Close) => return,
                Ok(Next::CloseLingering) => return self.close_lingering().await,
                Err(error) => return self.fail(error, &host).await,
            }
        }
    }

    /// Reads the next request head; `None` when the visitor is done (or idle at drain).
    async fn next_head(&mut self) -> Result<Option<RequestHead>, EdgeError> {
        let config = &self.shared.config;
        let deadline = Instant::now() + config.head_timeout;
        let mut scanned = 0;
        loop {
            if head_end(&self.buf, &mut scanned) || self.buf.len() > config.max_header_bytes {
                let head =
                    parse_head(&self.buf, config.max_header_bytes).map_err(EdgeError::Head)?;
                if let Some(head) = head {
                    self.buf.advance(head.len);
                    return Ok(Some(head));
                }
            }
            let idle = self.buf.is_empty();
            self.buf.reserve(READ_CHUNK);
            let read = tokio::select! {
                read = timeout_at(deadline, self.stream.read_buf(&mut self.buf)) => read,
                _ = self.shared.drain.cancelled(), if idle => return Ok(None),
            };
            match read {
                Err(_) if idle => return Ok(None),
                Err(_) => return Err(EdgeError::HeadTimeout),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Proxies one request and its response, then records it (metrics, access log).
    async fn exchange(&mut self, head: RequestHead) -> Result<Next, EdgeError> {
        if let Some(token) = head.target.strip_prefix(crate::acme::HTTP01_PREFIX)
            && let Some(answer) = self.shared.acme_http01.get(token)
        {
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{answer}",
                answer.len()
            );
            self.write(response.as_bytes()).await?;
            return Ok(Next::KeepAlive);
        }
        if self.scheme == Scheme::Http && self.shared.config.tls.redirect_http {
            return self.redirect_to_https(&head).await;
        }
        let started = Instant::now();
        let before = self.stream.counts();
        let tunnel = self.route(&head)?;
        let forwarded = forwarded(
            &head.headers,
            self.peer.ip(),
            self.scheme.as_str(),
            &self.shared.config.proxy,
        );
        if !tunnel.access.ip_allowed(forwarded.visitor) {
            return Err(EdgeError::IpForbidden);
        }
        if !tunnel.access.basic_ok(&head.headers) {
            return Err(EdgeError::AuthRequired);
        }
        let rated = self
            .shared
            .limits
            .visitor(forwarded.visitor, &tunnel.info.name);
        rated.map_err(|wait| EdgeError::RateLimited(crate::limits::retry_secs(wait)))?;
        let max = self.shared.config.max_visitors_per_tunnel;
        let _slot = tunnel
            .visitor_slot(max)
            .ok_or(EdgeError::Open(crate::transport::OpenError::OverCapacity))?;
        tunnel.touch();
        tracing::Span::current().record("tunnel", tunnel.info.name.as_str());
        let (status, next) = self.proxy(&head, &tunnel, &forwarded).await?;
        let (read, written) = self.stream.counts();
        let bytes = (read - before.0 + head.len as u64, written - before.1);
        let request = Exchanged {
            tunnel: &tunnel.info.name,
            visitor: forwarded.visitor,
            status,
            started,
            bytes,
        };
        self.record(&head, request);
        Ok(next)
    }

    /// Answers `308 Permanent Redirect` to the same URL over HTTPS (the method and body are kept
    /// by the visitor on 308).
    async fn redirect_to_https(&mut self, head: &RequestHead) -> Result<Next, EdgeError> {
        let port = match self.shared.public_https_port {
            Some(443) | None => String::new(),
            Some(port) => format!(":{port}"),
        };
        let target = if head.target.starts_with('/') {
            head.target.as_str()
        } else {
            "/"
        };
        let response = format!(
            "HTTP/1.1 308 Permanent Redirect\r\nlocation: https://{}{port}{target}\r\n\
             content-length: 0\r\nconnection: close\r\n\r\n",
            head.host.name
        );
        self.write(response.as_bytes()).await?;
        Ok(if head.framing == Framing::Empty {
            Next::Close
        } else {
            Next::CloseLingering
        })
    }

    /// Records a finished request: status class, duration, bytes, access log line.
    fn record(&self, head: &RequestHead, request: Exchanged<'_>) {
        let Exchanged {
            tunnel,
            visitor,
            status,
            started,
            bytes,
        } = request;
        let took = started.elapsed();
        let stats = &self.shared.stats;
        stats.http_request(tunnel, status, took);
        stats.bytes(bytes.0, bytes.1);
        if self.shared.config.admin.access_log {
            info!(
                target: "showoff::access",
                tunnel,
                host = %head.host.name,
                method = %head.method,
                path = %head.target,
                status,
                duration_ms = took.as_secs_f64() * 1000.0,
                bytes_in = bytes.0,
                bytes_out = bytes.1,
                %visitor,
                "request"
            );
        }
    }

    async fn proxy(
        &mut self,
        head: &RequestHead,
        tunnel: &Tunnel,
        forwarded: &Forwarded,
    ) -> Result<(u16, Next), EdgeError> {
        if head.expect_continue && head.framing != Framing::Empty {
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let meta = StreamMeta {
            tunnel: tunnel.info.name.clone(),
            visitor_addr: SocketAddr::new(forwarded.visitor, self.peer.port()),
        };
        let request = encode_request(head, &tunnel.spec, forwarded);
        let (mut up, mut resp, body_done) = self.send(tunnel, &meta, head, &request).await?;
        if resp.status == 101 && head.upgrade {
            self.splice_upgrade(up, resp).await;
            return Ok((101, Next::Close));
        }
        let delivered = self.relay(&mut up, &mut resp).await;
        if delivered && body_done && resp.upstream_reusable {
            tunnel.upstream.put_back(up);
        }
        let keep_alive =
            delivered && body_done && resp.keep_alive && !self.shared.drain.is_cancelled();
        let next = match (keep_alive, body_done) {
            (true, _) => Next::KeepAlive,
            (false, true) => Next::Close,
            (false, false) => Next::CloseLingering,
        };
        Ok((resp.status, next))
    }

    fn route(&self, head: &RequestHead) -> Result<Arc<Tunnel>, EdgeError> {
        let name = showoff_proto::host::route_name(&head.host.name, &self.shared.config.domain)
            .ok_or(EdgeError::NotFound)?;
        let tunnel = self.shared.routes.get(name).ok_or(EdgeError::NotFound)?;
        if tunnel.info.kind != showoff_proto::TunnelKind::Http {
            return Err(EdgeError::NotFound);
        }
        Ok(tunnel)
    }

    /// Sends the request on a pooled or fresh upstream connection; a pooled one that proves
    /// stale before answering is replaced once (only for requests without a body, which can be
    /// sent again safely).
    async fn send(
        &mut self,
        tunnel: &Tunnel,
        meta: &StreamMeta,
        head: &RequestHead,
        request: &[u8],
    ) -> Result<(UpstreamConn, Response, bool), EdgeError> {
        loop {
            let (mut up, reused) = upstream::checkout(tunnel, meta).await?;
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
        let idle = self.shared.config.io_idle_timeout;
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

    /// Writes the response head and relays its body; true when delivered completely.
    async fn relay(&mut self, up: &mut UpstreamConn, resp: &mut Response) -> bool {
        let mut out = std::mem::take(&mut resp.visitor_head);
        let idle = self.shared.config.io_idle_timeout;
        match resp.body {
            BodyFraming::None => self.write(&out).await.is_ok(),
            BodyFraming::Length(n) => self.relay_length(up, out, n).await,
            BodyFraming::Chunked => {
                let mut decoder = ChunkedDecoder::default();
                loop {
                    match decoder.decode(&mut up.buf) {
                        Err(error) => {
                            debug!(%error, "bad chunked body from the target");
                            return false;
                        }
                        Ok(Decoded::Data(data)) => encode_body(&mut out, &data, resp.visitor),
                        Ok(Decoded::End) => break,
                        Ok(Decoded::NeedMore) => {
                            if !self.flush(&mut out).await
                                || read_up_to(&mut up.io, &mut up.buf, BODY_CHUNK, idle)
                                    .await
                                    .is_err()
                            {
                                return false;
                            }
                        }
                    }
                }
                finish_body(&mut out, resp.visitor);
                self.write(&out).await.is_ok()
            }
            BodyFraming::UntilClose => {
                loop {
                    let data = up.buf.split();
                    encode_body(&mut out, &data, resp.visitor);
                    if !self.flush(&mut out).await {
                        return false;
                    }
                    match read_up_to(&mut up.io, &mut up.buf, BODY_CHUNK, idle).await {
                        Ok(()) => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                        Err(_) => return false,
                    }
                }
                finish_body(&mut out, resp.visitor);
                self.write(&out).await.is_ok()
            }
        }
    }

    /// Relays a body of known length: what is buffered goes out with the head in one write.
    async fn relay_length(
        &mut self,
        up: &mut UpstreamConn,
        mut out: BytesMut,
        mut left: u64,
    ) -> bool {
        let idle = self.shared.config.io_idle_timeout;
        let first = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(up.buf.len());
        out.extend_from_slice(&up.buf[..first]);
        up.buf.advance(first);
        left -= first as u64;
        if self.write(&out).await.is_err() {
            return false;
        }
        while left > 0 {
            if read_up_to(&mut up.io, &mut up.buf, BODY_CHUNK, idle)
                .await
                .is_err()
            {
                return false;
            }
            let n = usize::try_from(left)
                .unwrap_or(usize::MAX)
                .min(up.buf.len());
            if self.write(&up.buf[..n]).await.is_err() {
                return false;
            }
            up.buf.advance(n);
            left -= n as u64;
        }
        true
    }

    /// Writes `out` once it is large enough, or when more input must be awaited.
    async fn flush(&mut self, out: &mut BytesMut) -> bool {
        if out.is_empty() {
            return true;
        }
        let ok = self.write(out).await.is_ok();
        out.clear();
        ok
    }

    async fn splice_upgrade(&mut self, mut up: UpstreamConn, resp: Response) {
        let mut to_visitor = resp.visitor_head;
        to_visitor.extend_from_slice(&up.buf);
        if self.write(&to_visitor).await.is_err() {
            return;
        }
        if !self.buf.is_empty() && up.io.write_all(&self.buf).await.is_err() {
            return;
        }
        self.buf.clear();
        let stop = self.shared.stop.clone();
        tokio::select! {
            _ = splice(&mut self.stream, &mut up.io) => {}
            _ = stop.cancelled() => {}
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), EdgeError> {
        match timeout(
            self.shared.config.io_idle_timeout,
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
        let page = error.page(host);
        self.shared.stats.error(page.code);
        match page.origin {
            Origin::Visitor => {
                debug!(peer = %self.peer, host, status = page.status, code = page.code, "request refused")
            }
            Origin::Tunnel => {
                info!(peer = %self.peer, host, status = page.status, code = page.code, message = %page.message, "tunnel failed")
            }
            Origin::Showoff => {
                warn!(peer = %self.peer, host, status = page.status, code = page.code, "request refused by a limit")
            }
        }
        if self.write(&page.to_bytes()).await.is_err() {
            return;
        }
        self.close_lingering().await;
    }

    async fn close_lingering(&mut self) {
        let _ = self.stream.shutdown().await;
        linger(&mut self.stream).await;
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

/// Reads at least one more byte into `buf` within `idle`; end of stream is `UnexpectedEof`.
async fn read_more<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
    idle: Duration,
) -> std::io::Result<()> {
    read_up_to(stream, buf, READ_CHUNK, idle).await
}

/// Like [`read_more`] with room for `want` bytes: body relays read 64 KiB at a time, so a
/// 1 MiB body takes 16 reads rather than 64.
async fn read_up_to<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
    want: usize,
    idle: Duration,
) -> std::io::Result<()> {
    buf.reserve(want);
    match timeout(idle, stream.read_buf(buf)).await {
        Ok(Ok(0)) => Err(std::io::ErrorKind::UnexpectedEof.into()),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Copies the visitor's request body to the target: `Content-Length` bytes as they are, chunked
/// bodies decoded (validated) and re-chunked. False if the visitor broke the framing or left.
async fn pump_body<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
    framing: Framing,
    up: &mut W,
    idle: Duration,
) -> bool {
    let result = match framing {
        Framing::Empty => Ok(()),
        Framing::Length(n) => pump_length(stream, buf, n, up, idle).await,
        Framing::Chunked => pump_chunked(stream, buf, up, idle).await,
    };
    if let Err(error) = &result {
        debug!(%error, "request body not delivered");
    }
    result.is_ok()
}

async fn pump_length<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
    mut left: u64,
    up: &mut W,
    idle: Duration,
) -> std::io::Result<()> {
    while left > 0 {
        if buf.is_empty() {
            read_up_to(stream, buf, BODY_CHUNK, idle).await?;
        }
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        timed_write(up, &buf[..n], idle).await?;
        buf.advance(n);
        left -= n as u64;
    }
    Ok(())
}

async fn pump_chunked<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
    up: &mut W,
    idle: Duration,
) -> std::io::Result<()> {
    let mut decoder = ChunkedDecoder::default();
    let mut out = BytesMut::new();
    loop {
        let step = decoder
            .decode(buf)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        match step {
            Decoded::End => {
                finish_body(&mut out, VisitorFraming::Chunked);
                return timed_write(up, &out, idle).await;
            }
            Decoded::NeedMore => {
                if !out.is_empty() {
                    timed_write(up, &out, idle).await?;
                    out.clear();
                }
                read_more(stream, buf, idle).await?;
            }
            Decoded::Data(chunk) => {
                encode_body(&mut out, &chunk, VisitorFraming::Chunked);
                if out.len() >= WRITE_COALESCE {
                    timed_write(up, &out, idle).await?;
                    out.clear();
                }
            }
        }
    }
}

async fn timed_write<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
    idle: Duration,
) -> std::io::Result<()> {
    match timeout(idle, w.write_all(bytes)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// The request head sent to the target.
pub(crate) fn encode_request(
    head: &RequestHead,
    spec: &TunnelSpec,
    forwarded: &Forwarded,
) -> BytesMut {
    let mut out = BytesMut::with_capacity(head.len + 128);
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(head.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let connection = head::connection_tokens(&head.headers);
    for (name, value) in &head.headers {
        let named_by_connection =
            connection.iter().any(|t| t == name.as_str()) && name != header::UPGRADE;
        let dropped_upgrade = name == header::UPGRADE && !head.upgrade;
        // Credentials for Showoff's own basic auth are not the target's business.
        let consumed_auth = name == header::AUTHORIZATION && spec.visitors.basic_auth.is_some();
        if NOT_FORWARDED.contains(name) || named_by_connection || dropped_upgrade || consumed_auth {
            continue;
        }
        put_header(&mut out, name.as_str(), value.as_bytes());
    }
    let host = match &spec.host_header {
        HostHeader::Preserve => head.raw_host.as_bytes(),
        HostHeader::Rewrite if !spec.target.is_empty() => spec.target.as_bytes(),
        HostHeader::Value(value) if !value.is_empty() => value.as_bytes(),
        _ => head.raw_host.as_bytes(),
    };
    put_header(&mut out, "host", host);
    put_header(&mut out, "x-forwarded-for", forwarded.chain.as_bytes());
    put_header(&mut out, "x-forwarded-proto", forwarded.proto.as_bytes());
    let forwarded_host = match &forwarded.host {
        Some(host) => host.as_bytes(),
        None => head.raw_host.as_bytes(),
    };
    put_header(&mut out, "x-forwarded-host", forwarded_host);
    match head.framing {
        Framing::Empty => {}
        Framing::Length(n) => put_header(&mut out, "content-length", n.to_string().as_bytes()),
        Framing::Chunked => put_header(&mut out, "transfer-encoding", b"chunked"),
    }
    if head.upgrade {
        put_header(&mut out, "connection", b"upgrade");
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn put_header(out: &mut BytesMut, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends body bytes in the visitor's framing.
fn encode_body(out: &mut BytesMut, data: &[u8], framing: VisitorFraming) {
    if data.is_empty() {
        return;
    }
    if framing == VisitorFraming::Chunked {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

/// Appends the end of a chunked body.
fn finish_body(out: &mut BytesMut, framing: VisitorFraming) {
    if framing == VisitorFraming::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
}

/// A stream that counts the bytes read from and written to it (per-request byte metrics).
struct Metered<S> {
    inner: S,
    read: u64,
    written: u64,
}

impl<S> Metered<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            read: 0,
            written: 0,
        }
    }

    /// Bytes read and written so far.
    fn counts(&self) -> (u64, u64) {
        (self.read, self.written)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read += (buf.filled().len() - before) as u64;
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &polled {
            self.written += *n as u64;
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use showoff_proto::TunnelKind;

    fn head(raw: &str) -> RequestHead {
        parse_head(raw.as_bytes(), 32 * 1024)
            .expect("valid")
            .expect("complete")
    }

    fn spec(policy: HostHeader) -> TunnelSpec {
        TunnelSpec {
            kind: TunnelKind::Http,
            name: None,
            port: None,
            host_header: policy,
            target: "127.0.0.1:3000".into(),
            visitors: Default::default(),
        }
    }

    fn peer() -> Forwarded {
        forwarded(
            &http::HeaderMap::new(),
            "203.0.113.7".parse().expect("ip"),
            "http",
            &crate::config::ProxyConfig::default(),
        )
    }

    /// The encoded request as (request line, lowercase headers).
    fn sent(h: &RequestHead, policy: HostHeader) -> (String, Vec<(String, String)>) {
        let bytes = encode_request(h, &spec(policy), &peer());
        let text = String::from_utf8(bytes.to_vec()).expect("utf8");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        let mut lines = text.trim_end().split("\r\n");
        let first = lines.next().expect("request line").to_string();
        let headers = lines
            .map(|l| {
                let (n, v) = l.split_once(": ").expect("header");
                (n.to_ascii_lowercase(), v.to_string())
            })
            .collect();
        (first, headers)
    }

    fn value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn requests_are_sanitised_for_the_target() {
        let h = head(
            "GET /p?q HTTP/1.1\r\nHost: demo.localhost:8080\r\nConnection: keep-alive, X-Secret\r\n\
             X-Secret: 1\r\nKeep-Alive: 5\r\nProxy-Authorization: x\r\nX-Forwarded-For: 6.6.6.6\r\n\
             Upgrade: websocket\r\nAccept: */*\r\nExpect: 100-continue\r\n\r\n",
        );
        let (line, headers) = sent(&h, HostHeader::Preserve);
        assert_eq!(line, "GET /p?q HTTP/1.1");
        assert_eq!(value(&headers, "host"), Some("demo.localhost:8080"));
        assert_eq!(
            value(&headers, "x-forwarded-for"),
            Some("203.0.113.7"),
            "untrusted XFF replaced"
        );
        assert_eq!(value(&headers, "x-forwarded-proto"), Some("http"));
        assert_eq!(
            value(&headers, "x-forwarded-host"),
            Some("demo.localhost:8080")
        );
        assert_eq!(value(&headers, "accept"), Some("*/*"));
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "proxy-authorization",
            "upgrade",
            "expect",
        ] {
            assert_eq!(value(&headers, gone), None, "{gone} must be removed");
        }
        assert_eq!(
            headers
                .iter()
                .filter(|(n, _)| n == "x-forwarded-for")
                .count(),
            1
        );
    }

    #[test]
    fn host_policy_is_applied() {
        let h = head("GET / HTTP/1.1\r\nHost: demo.localhost\r\n\r\n");
        assert_eq!(
            value(&sent(&h, HostHeader::Rewrite).1, "host"),
            Some("127.0.0.1:3000")
        );
        assert_eq!(
            value(&sent(&h, HostHeader::Value("app.test".into())).1, "host"),
            Some("app.test")
        );
    }

    #[test]
    fn framing_is_restated_and_upgrades_keep_their_headers() {
        let h = head("POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 7\r\n\r\n");
        assert_eq!(
            value(&sent(&h, HostHeader::Preserve).1, "content-length"),
            Some("7")
        );
        let h = head("POST / HTTP/1.1\r\nHost: a.localhost\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(
            value(&sent(&h, HostHeader::Preserve).1, "transfer-encoding"),
            Some("chunked")
        );
        let h = head(
            "GET /ws HTTP/1.1\r\nHost: a.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        let (_, headers) = sent(&h, HostHeader::Preserve);
        assert_eq!(value(&headers, "upgrade"), Some("websocket"));
        assert_eq!(value(&headers, "connection"), Some("upgrade"));
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

    #[test]
    fn bodies_are_framed_for_the_visitor() {
        let mut out = BytesMut::new();
        encode_body(&mut out, b"hello", VisitorFraming::Chunked);
        finish_body(&mut out, VisitorFraming::Chunked);
        assert_eq!(&out[..], b"5\r\nhello\r\n0\r\n\r\n");
        let mut raw = BytesMut::new();
        encode_body(&mut raw, b"hello", VisitorFraming::Raw);
        finish_body(&mut raw, VisitorFraming::Raw);
        assert_eq!(&raw[..], b"hello");
    }
}
