//! HTTP/2 visitors held to the rules HTTP/1.1 ones get (issue 11, item 8): one `cookie` field
//! for the target, `host` agreeing with `:authority`, a cap on concurrent streams, and no way
//! for an idle, silent or non-reading peer to keep a connection.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use showoff_proto::TunnelKind;
use showoff_server::{ServerConfig, TlsConfig};
use showoff_testkit::pki::TestCa;
use showoff_testkit::target::spawn_target;
use showoff_testkit::visitor::tls_connect;
use showoff_testkit::{TestClient, TestServer, tunnel, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

const HOST: &str = "h2.tunnel.test";

/// An HTTPS server for `*.tunnel.test` with tunnel `h2` to a test target.
async fn serve(ca: &TestCa, adjust: impl FnOnce(&mut ServerConfig)) -> (TestServer, TestClient) {
    let mut config = ServerConfig {
        tls: TlsConfig {
            certificates: vec![ca.server(&["*.tunnel.test", "127.0.0.1"])],
            https_addr: Some("127.0.0.1:0".parse().expect("addr")),
            ..TlsConfig::default()
        },
        domain: "tunnel.test".into(),
        ..ServerConfig::ephemeral()
    };
    adjust(&mut config);
    let server = TestServer::start(config).await;
    let target = spawn_target("h2").await;
    let mut client = TestClient::config(
        &server,
        vec![tunnel(TunnelKind::Http, Some("h2"), target.addr)],
    );
    std::mem::forget(target);
    client.tls = Some(showoff_client::ClientTls {
        ca: Some(ca.cert_pem.clone()),
        ..Default::default()
    });
    let client = TestClient::start(client).await.expect("session");
    (server, client)
}

/// An h2 connection driven in the background: `ended` resolves when the server closes it,
/// `ask` reports the stream limit the server announced.
struct H2 {
    send: h2::client::SendRequest<Bytes>,
    ask: mpsc::Sender<oneshot::Sender<usize>>,
    ended: tokio::task::JoinHandle<()>,
}

impl H2 {
    async fn connect(server: &TestServer, ca: &TestCa) -> Self {
        let https = server.addrs.https.expect("https listener");
        let tls = tls_connect(https, HOST, &ca.cert_pem, &["h2"])
            .await
            .expect("tls");
        let (send, mut connection) = h2::client::handshake(tls).await.expect("h2 handshake");
        let (ask, mut asked) = mpsc::channel::<oneshot::Sender<usize>>(1);
        let ended = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut connection => return,
                    Some(reply) = asked.recv() => {
                        let _ = reply.send(connection.max_concurrent_send_streams());
                    }
                }
            }
        });
        Self { send, ask, ended }
    }

    /// Sends `request` and returns the status and the whole body.
    async fn fetch(&mut self, request: Request<()>) -> (u16, String) {
        let response = self.start(request).await;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut text = Vec::new();
        while let Some(chunk) = within("h2 body", body.data()).await {
            let chunk = chunk.expect("body chunk");
            let _ = body.flow_control().release_capacity(chunk.len());
            text.extend_from_slice(&chunk);
        }
        (status, String::from_utf8_lossy(&text).into_owned())
    }

    /// Sends `request` and returns its response head, the body unread.
    async fn start(&mut self, request: Request<()>) -> http::Response<h2::RecvStream> {
        let send = within("h2 ready", self.send.clone().ready())
            .await
            .expect("ready");
        self.send = send;
        let (response, _) = self.send.send_request(request, true).expect("send");
        within("h2 response", response).await.expect("response")
    }

    async fn max_streams(&self) -> usize {
        let (reply, answer) = oneshot::channel();
        self.ask.send(reply).await.expect("connection task");
        answer.await.expect("answer")
    }

    /// Waits for the server to close the connection, for at most `limit`. The request handle
    /// stays alive meanwhile (the h2 client closes a connection nobody can use).
    async fn closed_within(self, limit: Duration) {
        let _send = self.send;
        tokio::time::timeout(limit, self.ended)
            .await
            .expect("the server closed the connection in time")
            .expect("connection task");
    }
}

fn get(path: &str) -> http::request::Builder {
    Request::get(format!("https://{HOST}{path}"))
}

#[tokio::test]
async fn http2_requests_reach_the_target_as_valid_http1_ones() {
    let ca = TestCa::new("h2 rules CA");
    let (server, _client) = serve(&ca, |_| {}).await;
    let mut h2 = H2::connect(&server, &ca).await;
    // Split cookie fields were forwarded as separate HTTP/1.1 fields, which HTTP/1.1 forbids.
    let request = get("/cookies")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(())
        .expect("request");
    let (status, body) = h2.fetch(request).await;
    assert_eq!(status, 200, "{body}");
    let echo: serde_json::Value = serde_json::from_str(&body).expect("echo");
    assert_eq!(echo["headers"]["cookie"], serde_json::json!(["a=1; b=2"]));
    // A host field naming another tunnel than :authority was routed by one and seen by the
    // target as the other.
    let request = get("/").header("host", "other.tunnel.test").body(());
    let (status, body) = h2.fetch(request.expect("request")).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains(":authority"), "{body}");
    // The stream cap the server announced.
    assert_eq!(h2.max_streams().await, 100);
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_head_timeout() {
    let ca = TestCa::new("h2 idle CA");
    let (server, _client) = serve(&ca, |c| c.head_timeout = Duration::from_secs(1)).await;
    let mut h2 = H2::connect(&server, &ca).await;
    assert_eq!(h2.fetch(get("/").body(()).expect("request")).await.0, 200);
    // Before: the connection stayed open for as long as the visitor liked.
    h2.closed_within(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_visitor_that_stops_reading_does_not_keep_its_http2_connection() {
    let ca = TestCa::new("h2 reader CA");
    let (server, _client) = serve(&ca, |c| {
        c.head_timeout = Duration::from_secs(1);
        c.io_idle_timeout = Duration::from_secs(1);
    })
    .await;
    let mut h2 = H2::connect(&server, &ca).await;
    // 64 MiB the visitor never reads: its window stays shut, the server's buffers fill.
    let response = h2
        .start(get("/big?bytes=67108864").body(()).expect("request"))
        .await;
    assert_eq!(response.status(), 200);
    h2.closed_within(Duration::from_secs(10)).await;
    drop(response);
}

#[tokio::test]
async fn a_peer_that_ignores_pings_loses_its_http2_connection() {
    let ca = TestCa::new("h2 ping CA");
    let (server, _client) = serve(&ca, |c| c.head_timeout = Duration::from_secs(1)).await;
    let https = server.addrs.https.expect("https listener");
    let mut tls = tls_connect(https, HOST, &ca.cert_pem, &["h2"])
        .await
        .expect("tls");
    // By hand, so nothing answers the server's pings: the preface, empty SETTINGS, and one
    // request whose answer takes 30 s (HPACK: :method GET, :scheme https, literal :path and
    // :authority).
    let mut block = vec![0x82, 0x87];
    for (index, value) in [(0x04u8, "/slow?ms=30000"), (0x01, HOST)] {
        block.push(index);
        block.push(u8::try_from(value.len()).expect("short"));
        block.extend_from_slice(value.as_bytes());
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    let len = u32::try_from(block.len()).expect("short").to_be_bytes();
    out.extend_from_slice(&[len[1], len[2], len[3], 0x1, 0x5, 0, 0, 0, 1]);
    out.extend_from_slice(&block);
    tls.write_all(&out).await.expect("write");
    let mut seen = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(8), tls.read_to_end(&mut seen)).await;
    assert!(
        read.is_ok(),
        "the connection outlived its unanswered pings ({} bytes read)",
        seen.len()
    );
}
