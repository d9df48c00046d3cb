//! Visitors: a real HTTP/1.1 client (hyper) for well-formed requests, raw sockets for the
//! malformed, slow and hostile ones, and a UDP visitor that asks until answered.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::within;

/// A complete response as a visitor saw it.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body as text (lossy).
    pub body: String,
}

impl Reply {
    /// The `X-Showoff-Error` code, if any.
    pub fn error_code(&self) -> Option<&str> {
        self.headers
            .get(showoff_server::ERROR_HEADER)?
            .to_str()
            .ok()
    }

    /// The body parsed as the target's JSON echo.
    pub fn echo(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not an echo ({e}): {}", self.body))
    }

    /// The first value of header `name` in the target's echo of the request.
    pub fn echoed_header(&self, name: &str) -> Option<String> {
        self.echo()["headers"][name][0].as_str().map(str::to_string)
    }
}

/// A keep-alive HTTP/1.1 connection to the public listener.
pub struct HttpConn {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl HttpConn {
    /// Opens a connection to `addr`.
    pub async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect to public listener");
        stream.set_nodelay(true).expect("nodelay");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        Self { sender }
    }

    /// Sends `GET path` with `Host: host` and reads the whole response.
    pub async fn get(&mut self, host: &str, path: &str) -> Reply {
        let req = Request::get(path)
            .header("host", host)
            .body(Empty::new())
            .expect("request");
        self.send(req).await
    }

    /// Sends a prepared request and reads the whole response.
    pub async fn send(&mut self, req: Request<Empty<Bytes>>) -> Reply {
        within("response", async {
            self.sender.ready().await.expect("connection ready");
            read_reply(self.sender.send_request(req).await.expect("response")).await
        })
        .await
    }
}

/// Reads a whole response into a [`Reply`].
async fn read_reply(resp: http::Response<hyper::body::Incoming>) -> Reply {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// What an HTTPS visitor saw: the reply and the protocol ALPN settled on.
#[derive(Debug)]
pub struct TlsReply {
    /// The response.
    pub reply: Reply,
    /// The negotiated ALPN protocol (`http/1.1`, `h2`), if any.
    pub alpn: Option<String>,
}

/// A TLS connection to `addr`, verifying the server as `sni` against `ca_pem`, offering
/// `alpn` protocols. Errors (handshake refused) come back as text.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    ca_pem: &str,
    alpn: &[&str],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("root");
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let name =
        rustls::pki_types::ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    within("TLS handshake", connector.connect(name, stream))
        .await
        .map_err(|e| e.to_string())
}

/// One `GET` over TLS to `addr`, verifying the server as `sni` against `ca_pem`; offers
/// `alpn` protocols. Errors (handshake refused) come back as text.
pub async fn https_get(
    addr: SocketAddr,
    sni: &str,
    ca_pem: &str,
    alpn: &[&str],
    path: &str,
) -> Result<TlsReply, String> {
    let tls = tls_connect(addr, sni, ca_pem, alpn).await?;
    let alpn = tls
        .get_ref()
        .1
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let req = Request::get(path)
        .header("host", sni)
        .body(Empty::<Bytes>::new())
        .expect("request");
    let reply = if alpn.as_deref() == Some("h2") {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(tls),
        )
        .await
        .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::get(format!("https://{sni}{path}"))
            .body(Empty::<Bytes>::new())
            .expect("request");
        within("h2 response", async {
            read_reply(sender.send_request(req).await.expect("response")).await
        })
        .await
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        within("response", async {
            read_reply(sender.send_request(req).await.expect("response")).await
        })
        .await
    };
    Ok(TlsReply { reply, alpn })
}

/// One `GET` on a fresh connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Reply {
    HttpConn::open(addr).await.get(host, path).await
}

/// Writes `raw` and returns everything the server sends until it closes the connection.
pub async fn raw(addr: SocketAddr, raw: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(raw).await.expect("write");
    read_to_close(&mut stream).await
}

/// A connection to `addr` from the loopback address `source` (`127.0.0.2`: a second visitor
/// address on one machine).
pub async fn connect_from(source: std::net::IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = match source {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .expect("socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind source");
    within("connect", socket.connect(addr))
        .await
        .expect("connect")
}

/// Reads until the peer closes (or resets after a complete answer).
pub async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = within("connection close", stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of a raw response text (`HTTP/1.1 431 ...` → 431).
pub fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

/// One request with any method, headers and body, on a fresh connection (admin API calls).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let body = Bytes::from(body.to_string());
    request_to(addr, "localhost", method, path, headers, body).await
}

/// One request with `Host: host`, any method, headers and body, on a fresh connection.
pub async fn request_to(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Reply {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(http_body_util::Full::new(body)).expect("request");
    within("response", async {
        read_reply(sender.send_request(req).await.expect("response")).await
    })
    .await
}

/// The value of one sample in Prometheus text, e.g. `showoff_sessions_active` or
/// `showoff_http_requests_total{class="2xx"}`; `None` when absent.
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// What one keep-alive connection saw (while a server drained under it, say).
#[derive(Debug, Default)]
pub struct KeepAlive {
    /// Requests answered 200.
    pub answered: u64,
    /// Requests written that got no response at all.
    pub lost: u64,
    /// Answers other than 200.
    pub failed: u64,
    /// The first answer other than 200: its status line and `x-showoff-error`.
    pub first_failure: Option<String>,
}

/// Sends back-to-back requests on one keep-alive connection until the server says
/// `Connection: close` (or `limit` requests went through), counting requests left unanswered.
pub async fn keep_alive_loop(addr: std::net::SocketAddr, host: String, limit: u64) -> KeepAlive {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut seen = KeepAlive::default();
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return seen;
    };
    let _ = stream.set_nodelay(true);
    let request = format!("GET / HTTP/1.1\r\nhost: {host}\r\n\r\n");
    let mut buf = Vec::new();
    while seen.answered < limit {
        if stream.write_all(request.as_bytes()).await.is_err() {
            seen.lost += 1;
            return seen;
        }
        // Read one response: its head, then Content-Length bytes of body.
        let (head_end, length) = loop {
            let text = String::from_utf8_lossy(&buf);
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().expect("length"))
                    })
                    .expect("content-length");
                break (end + 4, length);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(std::time::Duration::from_secs(20), stream.read(&mut chunk))
                .await
            {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => {
                    seen.lost += 1;
                    return seen;
                }
            }
        };
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => {
                    seen.lost += 1;
                    return seen;
                }
            }
        }
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        buf.drain(..head_end + length);
        if head.starts_with("http/1.1 200 ") {
            seen.answered += 1;
        } else {
            seen.failed += 1;
            if seen.first_failure.is_none() {
                let status = head.lines().next().unwrap_or_default();
                let error = head.lines().find(|l| l.starts_with("x-showoff-error:"));
                seen.first_failure = Some(format!("{status} {}", error.unwrap_or_default()));
            }
        }
        if head.contains("\r\nconnection: close\r\n") {
            return seen;
        }
    }
    seen
}

impl KeepAlive {
    /// Adds another connection's tally.
    pub fn add(&mut self, other: &KeepAlive) {
        self.answered += other.answered;
        self.lost += other.lost;
        self.failed += other.failed;
        if self.first_failure.is_none() {
            self.first_failure.clone_from(&other.first_failure);
        }
    }
}

/// Sends `payload` from `visitor` to UDP port `port` on loopback until an answer comes (a
/// datagram may be lost; each try waits 500 ms), within the deadline; the answer.
pub async fn udp_ask(visitor: &tokio::net::UdpSocket, port: u16, payload: &[u8]) -> Vec<u8> {
    within("a UDP answer", async {
        let mut buf = vec![0u8; 65_536];
        loop {
            visitor
                .send_to(payload, ("127.0.0.1", port))
                .await
                .expect("send");
            let wait = tokio::time::timeout(
                std::time::Duration::from_millis(500),
                visitor.recv(&mut buf),
            );
            if let Ok(Ok(len)) = wait.await {
                return buf[..len].to_vec();
            }
        }
    })
    .await
}
