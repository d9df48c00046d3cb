//! Targets that answer in unusual ways: close-delimited bodies, garbage, early answers.

use showoff_proto::TunnelKind;
use showoff_testkit::visitor::{HttpConn, raw, status_of};
use showoff_testkit::{TestClient, TestServer, tunnel};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A target that reads one request head, writes `answer`, then closes the way real servers do:
/// it stops writing and drains what the client still sends for a moment (a plain close with
/// unread input resets the connection, and the kernel may drop the answer with it).
async fn scripted_target(answer: &'static [u8]) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = stream.write_all(answer).await;
                let _ = stream.shutdown().await;
                let mut sink = vec![0u8; 64 * 1024];
                let drain =
                    async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
            });
        }
    });
    addr
}

async fn expose(server: &TestServer, name: &str, answer: &'static [u8]) -> TestClient {
    let target = scripted_target(answer).await;
    TestClient::start(TestClient::config(
        server,
        vec![tunnel(TunnelKind::Http, Some(name), target)],
    ))
    .await
    .expect("session")
}

#[tokio::test]
async fn a_close_delimited_response_reaches_the_visitor_whole() {
    let server = TestServer::default_config().await;
    let _client = expose(
        &server,
        "old",
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
    )
    .await;
    let mut conn = HttpConn::open(server.addrs.http).await;
    let reply = conn.get(&server.host("old"), "/").await;
    assert_eq!(
        (reply.status.as_u16(), reply.body.as_str()),
        (200, "until the end")
    );
    assert_eq!(
        reply.headers["transfer-encoding"], "chunked",
        "re-framed for an HTTP/1.1 visitor"
    );
    // The visitor's connection stays usable.
    assert_eq!(
        conn.get(&server.host("old"), "/").await.body,
        "until the end"
    );
}

#[tokio::test]
async fn a_target_speaking_garbage_gets_502_upstream_invalid_response() {
    let server = TestServer::default_config().await;
    let _client = expose(&server, "garbage", b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
    let reply =
        showoff_testkit::visitor::get(server.addrs.http, &server.host("garbage"), "/").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.error_code(), Some("upstream_invalid_response"));
}

#[tokio::test]
async fn an_early_answer_to_a_large_upload_is_delivered() {
    let server = TestServer::default_config().await;
    let _client = expose(
        &server,
        "early",
        b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\n\r\ntoo big!",
    )
    .await;
    let mut request = format!(
        "POST / HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
        server.host("early"),
        64 << 20
    )
    .into_bytes();
    // Only the first megabyte is ever sent: the answer must not wait for the rest.
    request.extend(std::iter::repeat_n(b'x', 1 << 20));
    let response = raw(server.addrs.http, &request).await;
    assert_eq!(status_of(&response), 413, "{response}");
    assert!(response.ends_with("too big!"), "{response}");
}
