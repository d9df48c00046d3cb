//! The HTTP edge: one task per visitor connection, one exchange per request.
//!
//! Each request head is read under the head deadline and validated on its own
//! ([`head::parse_head`]), so a keep-alive connection is routed request by request. The request is
//! sanitised (hop-by-hop headers out, `X-Forwarded-*` set, `Host` per tunnel policy) and sent on
//! a pooled upstream connection ([`upstream`]); bodies stream both ways through small buffers,
//! upgrades (WebSocket) are spliced after the `101`. Failures before the response head become
//! the error pages of [`crate::edge::error`].

pub(crate) mod body;
pub(crate) mod head;
pub(crate) mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use showoff_proto::HostHeader;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{debug, info, warn};

use self::body::{BodySender, ChannelBody, ChunkedDecoder, Decoded, Framing};
use self::head::{RequestHead, parse_head};
use crate::edge::error::{EdgeError, Origin};
use crate::server::Shared;
use crate::stats::GaugeGuard;
use crate::transport::StreamMeta;
use crate::tunnel::Tunnel;

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;
/// Response bytes gathered before a write.
const WRITE_COALESCE: usize = 64 * 1024;
/// How long an error page's connection lingers to drain the visitor's unread request.
const LINGER: Duration = Duration::from_millis(500);
/// Most bytes drained while lingering.
const LINGER_BYTES: usize = 256 * 1024;

/// Headers that describe one hop and never cross the proxy (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Serves one visitor connection until it closes, fails or the server drains.
pub(crate) async fn serve_visitor(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let stats = shared.clone();
    let _gauge = GaugeGuard::new(&stats.stats.visitor_connections_active);
    let mut conn = Conn {
        stream,
        peer,
        buf: BytesMut::with_capacity(READ_CHUNK),
        shared,
    };
    conn.run().await;
}

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    buf: BytesMut,
    shared: Arc<Shared>,
}

/// How an exchange left the connection.
enum Next {
    KeepAlive,
    Close,
}

impl Conn {
    async fn run(&mut self) {
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

    /// Proxies one request and its response.
    async fn exchange(&mut self, head: RequestHead) -> Result<Next, EdgeError> {
        let tunnel = self.route(&head)?;
        tunnel.touch();
        self.shared
            .stats
            .http_requests
            .fetch_add(1, Ordering::Relaxed);
        if head.expect_continue && head.framing != Framing::Empty {
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let (req, tx) = upstream_request(&head, &tunnel, self.peer);
        let meta = StreamMeta {
            tunnel: tunnel.info.name.clone(),
            visitor_addr: self.peer,
        };
        let shared = self.shared.clone();
        let send = upstream::send(&tunnel, &shared, &meta, req);
        let pump = pump_body(
            &mut self.stream,
            &mut self.buf,
            head.framing,
            tx,
            shared.config.io_idle_timeout,
        );
        let (sent, body_ok) = tokio::join!(send, pump);
        // A request that failed because its body broke framing is the visitor's fault.
        let (sender, resp) = sent.map_err(|e| if body_ok { e } else { EdgeError::BadBody })?;
        if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS && head.upgrade {
            self.splice_upgrade(resp).await;
            return Ok(Next::Close);
        }
        let keep_alive = head.keep_alive && body_ok && !self.shared.drain.is_cancelled();
        let complete = self.write_response(&head, resp, keep_alive).await;
        if complete {
            tunnel.upstream.put_back(sender);
        }
        Ok(if complete && keep_alive {
            Next::KeepAlive
        } else {
            Next::Close
        })
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

    /// Writes the response head and streams its body; true when it was delivered completely.
    async fn write_response(
        &mut self,
        head: &RequestHead,
        resp: Response<Incoming>,
        keep_alive: bool,
    ) -> bool {
        let (parts, mut body) = resp.into_parts();
        let bodiless = head.method == http::Method::HEAD
            || parts.status.is_informational()
            || parts.status == http::StatusCode::NO_CONTENT
            || parts.status == http::StatusCode::NOT_MODIFIED;
        let framing = if bodiless {
            ResponseFraming::None
        } else if parts.headers.contains_key(header::CONTENT_LENGTH) {
            ResponseFraming::Raw
        } else if body.is_end_stream() {
            ResponseFraming::Empty
        } else if head.version == Version::HTTP_11 {
            ResponseFraming::Chunked
        } else {
            ResponseFraming::UntilClose
        };
        let keep_alive = keep_alive && framing != ResponseFraming::UntilClose;
        let mut out = BytesMut::with_capacity(1024);
        encode_response_head(
            &mut out,
            parts.status,
            &parts.headers,
            framing,
            keep_alive,
            head.version,
        );
        if framing == ResponseFraming::None {
            return self.write(&out).await.is_ok();
        }
        loop {
            let frame = match body.frame().now_or_never() {
                Some(frame) => frame,
                None => {
                    if self.write(&out).await.is_err() {
                        return false;
                    }
                    out.clear();
                    body.frame().await
                }
            };
            match frame {
                None => break,
                Some(Err(error)) => {
                    debug!(%error, "upstream body failed");
                    return false;
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        encode_body_chunk(&mut out, &data, framing);
                    }
                }
            }
            if out.len() >= WRITE_COALESCE {
                if self.write(&out).await.is_err() {
                    return false;
                }
                out.clear();
            }
        }
        if framing == ResponseFraming::Chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        }
        self.write(&out).await.is_ok()
    }

    async fn splice_upgrade(&mut self, resp: Response<Incoming>) {
        let mut out = BytesMut::with_capacity(512);
        out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
        for (name, value) in resp.headers() {
            append_header(&mut out, name, value);
        }
        out.extend_from_slice(b"\r\n");
        if self.write(&out).await.is_err() {
            return;
        }
        let upgraded = match hyper::upgrade::on(resp).await {
            Ok(upgraded) => upgraded,
            Err(error) => return debug!(%error, "upgrade failed"),
        };
        let mut upstream = TokioIo::new(upgraded);
        if !self.buf.is_empty() && upstream.write_all(&self.buf).await.is_err() {
            return;
        }
        self.buf.clear();
        let stop = self.shared.stop.clone();
        tokio::select! {
            result = tokio::io::copy_bidirectional(&mut self.stream, &mut upstream) => {
                if let Err(error) = result {
                    debug!(%error, "upgraded connection ended");
                }
            }
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
    async fn fail(&mut self, error: EdgeError, host: &str) {
        let page = error.page(host);
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
        let _ = self.stream.shutdown().await;
        linger(&mut self.stream).await;
    }
}

/// Reads and discards what the visitor still sends, briefly, so closing does not reset the
/// connection before the error page is read.
async fn linger(stream: &mut TcpStream) {
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

/// Feeds the visitor's request body into the upstream request; false if it broke its framing
/// or the visitor left mid-body (the connection is then not reused).
async fn pump_body(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    framing: Framing,
    tx: Option<BodySender>,
    idle: Duration,
) -> bool {
    let Some(tx) = tx else {
        return true;
    };
    let result = match framing {
        Framing::Empty => Ok(()),
        Framing::Length(n) => pump_length(stream, buf, n, &tx, idle).await,
        Framing::Chunked => pump_chunked(stream, buf, &tx, idle).await,
    };
    match result {
        Ok(()) => true,
        Err(error) => {
            let _ = tx.send(Err(error)).await;
            false
        }
    }
}

async fn read_more<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
    idle: Duration,
) -> std::io::Result<()> {
    buf.reserve(READ_CHUNK);
    match timeout(idle, stream.read_buf(buf)).await {
        Ok(Ok(0)) => Err(std::io::ErrorKind::UnexpectedEof.into()),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

async fn pump_length<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
    mut left: u64,
    tx: &BodySender,
    idle: Duration,
) -> std::io::Result<()> {
    while left > 0 {
        if buf.is_empty() {
            read_more(stream, buf, idle).await?;
        }
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        left -= n as u64;
        let chunk = buf.split_to(n).freeze();
        if tx.send(Ok(chunk)).await.is_err() {
            // Upstream stopped reading (it answered early or failed): drop the rest.
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
    }
    Ok(())
}

async fn pump_chunked<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
    tx: &BodySender,
    idle: Duration,
) -> std::io::Result<()> {
    let mut decoder = ChunkedDecoder::default();
    loop {
        let step = decoder
            .decode(buf)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        match step {
            Decoded::End => return Ok(()),
            Decoded::NeedMore => read_more(stream, buf, idle).await?,
            Decoded::Data(chunk) => {
                if tx.send(Ok(chunk)).await.is_err() {
                    return Err(std::io::ErrorKind::BrokenPipe.into());
                }
            }
        }
    }
}

/// Builds the request sent upstream, and the sender that feeds its body.
fn upstream_request(
    head: &RequestHead,
    tunnel: &Tunnel,
    peer: SocketAddr,
) -> (Request<ChannelBody>, Option<BodySender>) {
    let (tx, body) = match head.framing {
        Framing::Empty => (None, ChannelBody::empty()),
        Framing::Length(n) => {
            let (tx, body) = ChannelBody::channel(Some(n));
            (Some(tx), body)
        }
        Framing::Chunked => {
            let (tx, body) = ChannelBody::channel(None);
            (Some(tx), body)
        }
    };
    let mut req = Request::new(body);
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = head
        .target
        .parse()
        .unwrap_or_else(|_| http::Uri::from_static("/"));
    *req.headers_mut() =
        forwarded_headers(head, &tunnel.spec.host_header, &tunnel.spec.target, peer);
    (req, tx)
}

/// The visitor's headers as the target should see them.
pub(crate) fn forwarded_headers(
    head: &RequestHead,
    policy: &HostHeader,
    target: &str,
    peer: SocketAddr,
) -> HeaderMap {
    let mut headers = head.headers.clone();
    strip_hop_by_hop(&mut headers);
    for name in [header::CONTENT_LENGTH, header::EXPECT, header::HOST] {
        headers.remove(name);
    }
    for name in ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"] {
        headers.remove(name);
    }
    let host = match policy {
        HostHeader::Preserve => Some(head.raw_host.clone()),
        HostHeader::Rewrite => HeaderValue::from_str(target).ok(),
        HostHeader::Value(value) => HeaderValue::from_str(value).ok(),
    };
    headers.insert(header::HOST, host.unwrap_or_else(|| head.raw_host.clone()));
    if let Ok(ip) = HeaderValue::from_str(&peer.ip().to_string()) {
        headers.insert("x-forwarded-for", ip);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    headers.insert("x-forwarded-host", head.raw_host.clone());
    if !head.upgrade {
        headers.remove(header::UPGRADE);
    } else {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    headers
}

/// Removes hop-by-hop headers and every header the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for token in head::connection_tokens(headers) {
        if token != "upgrade"
            && let Ok(name) = HeaderName::from_bytes(token.as_bytes())
        {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResponseFraming {
    /// No body by definition (HEAD, 1xx, 204, 304).
    None,
    /// Upstream gave no body and no length.
    Empty,
    /// `Content-Length` from upstream; bytes pass as they are.
    Raw,
    /// Unknown length to an HTTP/1.1 visitor.
    Chunked,
    /// Unknown length to an HTTP/1.0 visitor: the end is the close.
    UntilClose,
}

fn encode_response_head(
    out: &mut BytesMut,
    status: http::StatusCode,
    headers: &HeaderMap,
    framing: ResponseFraming,
    keep_alive: bool,
    version: Version,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut headers = headers.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::UPGRADE);
    for (name, value) in &headers {
        append_header(out, name, value);
    }
    match framing {
        ResponseFraming::Empty => out.extend_from_slice(b"content-length: 0\r\n"),
        ResponseFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn append_header(out: &mut BytesMut, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn encode_body_chunk(out: &mut BytesMut, data: &Bytes, framing: ResponseFraming) {
    if data.is_empty() {
        return;
    }
    if framing == ResponseFraming::Chunked {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> RequestHead {
        parse_head(raw.as_bytes(), 32 * 1024)
            .expect("valid")
            .expect("complete")
    }

    fn peer() -> SocketAddr {
        "203.0.113.7:5555".parse().expect("addr")
    }

    #[test]
    fn forwarded_headers_are_sanitised() {
        let h = head(
            "GET / HTTP/1.1\r\nHost: demo.localhost:8080\r\nConnection: keep-alive, X-Secret\r\n\
             X-Secret: 1\r\nKeep-Alive: 5\r\nProxy-Authorization: x\r\nX-Forwarded-For: 6.6.6.6\r\n\
             Upgrade: websocket\r\nAccept: */*\r\n\r\n",
        );
        let out = forwarded_headers(&h, &HostHeader::Preserve, "127.0.0.1:3000", peer());
        assert_eq!(out["host"], "demo.localhost:8080");
        assert_eq!(
            out["x-forwarded-for"], "203.0.113.7",
            "untrusted XFF replaced"
        );
        assert_eq!(out["x-forwarded-proto"], "http");
        assert_eq!(out["x-forwarded-host"], "demo.localhost:8080");
        assert_eq!(out["accept"], "*/*");
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "proxy-authorization",
            "upgrade",
        ] {
            assert!(!out.contains_key(gone), "{gone} must be removed");
        }
    }

    #[test]
    fn host_policy_is_applied() {
        let h = head("GET / HTTP/1.1\r\nHost: demo.localhost\r\n\r\n");
        let rewrite = forwarded_headers(&h, &HostHeader::Rewrite, "127.0.0.1:3000", peer());
        assert_eq!(rewrite["host"], "127.0.0.1:3000");
        let value = forwarded_headers(&h, &HostHeader::Value("app.test".into()), "", peer());
        assert_eq!(value["host"], "app.test");
    }

    #[test]
    fn upgrade_requests_keep_their_upgrade_headers() {
        let h = head(
            "GET /ws HTTP/1.1\r\nHost: demo.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        let out = forwarded_headers(&h, &HostHeader::Preserve, "", peer());
        assert_eq!(out["upgrade"], "websocket");
        assert_eq!(out["connection"], "upgrade");
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
    fn response_heads_frame_bodies() {
        let mut out = BytesMut::new();
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("keep-alive"));
        headers.insert("x-app", HeaderValue::from_static("1"));
        encode_response_head(
            &mut out,
            http::StatusCode::OK,
            &headers,
            ResponseFraming::Chunked,
            false,
            Version::HTTP_11,
        );
        let text = String::from_utf8(out.to_vec()).expect("utf8");
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nx-app: 1\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        let mut body = BytesMut::new();
        encode_body_chunk(
            &mut body,
            &Bytes::from_static(b"hello"),
            ResponseFraming::Chunked,
        );
        assert_eq!(&body[..], b"5\r\nhello\r\n");
    }
}
