//! A real HTTP/1.1 target for tunnels, built on hyper, that records what it saw.
//!
//! Routes: `/slow?ms=N` answers after N ms; `/big?bytes=N[&cl=1]` streams N bytes (chunked, or
//! with `Content-Length`); `/bytes?n=N` answers N bytes counting 0 to 255 over and over
//! (`application/octet-stream`); `/text` answers plain text; `/image.png` a small PNG; `/ws` is
//! a WebSocket echo; anything else answers with a JSON echo
//! of the request (`method`, `path`, `headers`, `body_bytes`), counting body bytes as they
//! stream without keeping them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, std::io::Error>;

/// What the target has seen.
#[derive(Debug, Default)]
pub struct TargetStats {
    /// TCP connections accepted.
    pub connections: AtomicU64,
    /// Requests served.
    pub requests: AtomicU64,
}

/// A running target.
#[derive(Clone)]
pub struct Target {
    /// Its address.
    pub addr: SocketAddr,
    /// Its counters.
    pub stats: Arc<TargetStats>,
    /// A label included in every echo, to tell targets apart.
    pub label: &'static str,
}

impl Target {
    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::Relaxed)
    }
}

/// Starts a target on `127.0.0.1:0`; it runs until the test's runtime ends.
pub async fn spawn_target(label: &'static str) -> Target {
    serve_on_loopback(label, move |stream, stats| async move {
        let service = hyper::service::service_fn(move |req| handle(req, label, stats.clone()));
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades()
            .await;
    })
    .await
}

/// A target on `127.0.0.1:0` whose every accepted connection (`TCP_NODELAY`, counted) is
/// served by `serve` in a task of its own, until the test's runtime ends.
pub(crate) async fn serve_on_loopback<F, Fut>(label: &'static str, serve: F) -> Target
where
    F: Fn(tokio::net::TcpStream, Arc<TargetStats>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("target binds");
    let addr = listener.local_addr().expect("addr");
    let stats = Arc::new(TargetStats::default());
    let served = stats.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            served.connections.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(serve(stream, served.clone()));
        }
    });
    Target { addr, stats, label }
}

/// A port on which nothing listens, held so that nothing else can take it while the test
/// runs: a socket bound to it that never listens, so connecting is refused.
pub struct ClosedPort {
    /// The refusing address.
    pub addr: SocketAddr,
    _held: socket2::Socket,
}

/// A [`ClosedPort`] on loopback.
pub async fn closed_port() -> ClosedPort {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    socket.bind(&any.into()).expect("bind");
    let addr = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("addr");
    ClosedPort {
        addr,
        _held: socket,
    }
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

fn query(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

async fn handle(
    req: Request<Incoming>,
    label: &'static str,
    stats: Arc<TargetStats>,
) -> Result<Response<Body>, Infallible> {
    stats.requests.fetch_add(1, Ordering::Relaxed);
    Ok(match req.uri().path() {
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(query(&req, "ms").unwrap_or(500))).await;
            Response::new(full("slow done"))
        }
        "/big" => big(&req),
        "/bytes" => {
            let n = query(&req, "n").unwrap_or(256) as usize;
            let bytes: Vec<u8> = (0..n).map(|i| (i % 256) as u8).collect();
            typed("application/octet-stream", Bytes::from(bytes))
        }
        "/text" => typed(
            "text/plain; charset=utf-8",
            Bytes::from_static(TEXT.as_bytes()),
        ),
        "/image.png" => typed("image/png", Bytes::from_static(PNG)),
        "/ws" => websocket(req),
        _ => echo(req, label).await,
    })
}

/// What `/text` answers.
pub const TEXT: &str = "plain text from the target\nsecond line\n";

/// What `/image.png` answers: a 2×2 PNG, red, green, blue and white.
pub const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x02, 0x08, 0x02, 0x00, 0x00, 0x00, 0xfd, 0xd4, 0x9a,
    0x73, 0x00, 0x00, 0x00, 0x12, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0xc0,
    0x00, 0xc2, 0x0c, 0xff, 0x81, 0x00, 0x00, 0x1f, 0xee, 0x05, 0xfb, 0x0b, 0xd9, 0x68, 0x8b, 0x00,
    0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

fn typed(content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(full(body));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

fn big(req: &Request<Incoming>) -> Response<Body> {
    let total = query(req, "bytes").unwrap_or(1 << 20);
    const CHUNK: u64 = 64 * 1024;
    let chunk = Bytes::from(vec![b'x'; CHUNK as usize]);
    let frames = futures_util::stream::iter((0..total.div_ceil(CHUNK)).map(move |i| {
        let n = CHUNK.min(total - i * CHUNK) as usize;
        Ok::<_, std::io::Error>(Frame::data(chunk.slice(..n)))
    }));
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    if query(req, "cl") == Some(1) {
        resp.headers_mut()
            .insert(http::header::CONTENT_LENGTH, total.into());
    }
    resp
}

async fn echo(req: Request<Incoming>, label: &'static str) -> Response<Body> {
    let (parts, mut body) = req.into_parts();
    let mut body_bytes = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            body_bytes += data.len() as u64;
        }
    }
    let headers = headers_json(&parts.headers);
    let echo = serde_json::json!({
        "target": label,
        "method": parts.method.as_str(),
        "path": parts.uri.to_string(),
        "headers": headers,
        "body_bytes": body_bytes,
    });
    let mut resp = Response::new(full(echo.to_string()));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A request's fields as the echoes show them: each name with the list of its values.
pub(crate) fn headers_json(fields: &http::HeaderMap) -> serde_json::Map<String, serde_json::Value> {
    let mut headers = serde_json::Map::new();
    for (name, value) in fields {
        let entry = headers
            .entry(name.as_str())
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(values) = entry {
            values.push(String::from_utf8_lossy(value.as_bytes()).into());
        }
    }
    headers
}

fn websocket(mut req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        let mut resp = Response::new(full("not a websocket request"));
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        return resp;
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() || ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(full(""))
        .expect("valid response")
}

/// A local TLS service with its own certificate that answers every request with `body`.
pub async fn tls_service(
    identity: showoff_server::PemPair,
    body: &'static str,
) -> std::net::SocketAddr {
    let chain = <rustls::pki_types::CertificateDer<'_> as rustls::pki_types::pem::PemObject>::pem_slice_iter(identity.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("chain");
    let key =
        <rustls::pki_types::PrivateKeyDer<'_> as rustls::pki_types::pem::PemObject>::from_pem_slice(identity.key.as_bytes()).expect("key");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("cert");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tokio::io::AsyncWriteExt::write_all(&mut tls, response.as_bytes()).await;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
            });
        }
    });
    addr
}
