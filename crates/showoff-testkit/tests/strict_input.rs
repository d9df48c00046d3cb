//! Hostile and malformed requests get clear errors and never reach the target.

use std::time::Duration;

use showoff_server::ServerConfig;
use showoff_testkit::visitor::{raw, read_to_close, status_of};
use showoff_testkit::{TestClient, TestServer, serve_http, within};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn setup(config: ServerConfig) -> (TestServer, TestClient, showoff_testkit::target::Target) {
    let server = TestServer::start(config).await;
    let (target, client) = serve_http(&server, "demo", "a").await;
    (server, client, target)
}

#[tokio::test]
async fn malformed_and_ambiguous_heads_are_refused_with_codes() {
    let (server, _client, target) = setup(ServerConfig::ephemeral()).await;
    let host = server.host("demo");
    let cases: Vec<(String, u16, &str)> = vec![
        (
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nHost: other.localhost\r\n\r\n"),
            400,
            "bad_request",
        ),
        (
            "GET / HTTP/1.1\r\nHost: demo..localhost\r\n\r\n".into(),
            400,
            "bad_request",
        ),
        (
            "GET / HTTP/1.1\r\nHost: demo.localhost:99999\r\n\r\n".into(),
            400,
            "bad_request",
        ),
        (
            format!(
                "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
            400,
            "bad_request",
        ),
        (
            format!("GET http://evil.localhost/ HTTP/1.1\r\nHost: {host}\r\n\r\n"),
            400,
            "bad_request",
        ),
        (
            format!("POST / HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: gzip\r\n\r\n"),
            501,
            "unsupported_transfer_coding",
        ),
        ("NOT HTTP AT ALL\r\n\r\n".into(), 400, "bad_request"),
    ];
    assert!(!cases.is_empty());
    for (request, status, code) in &cases {
        let response = raw(server.addrs.http, request.as_bytes()).await;
        assert_eq!(status_of(&response), *status, "{request:?} → {response}");
        assert!(
            response.contains(&format!("x-showoff-error: {code}")),
            "{response}"
        );
    }
    assert_eq!(
        target
            .stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "nothing reached the target"
    );
}

#[tokio::test]
async fn heads_over_the_limit_get_431() {
    let (server, _client, _target) = setup(ServerConfig::ephemeral()).await;
    let filler = "a".repeat(40 * 1024);
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nX-Big: {filler}\r\n\r\n",
        server.host("demo")
    );
    let response = raw(server.addrs.http, request.as_bytes()).await;
    assert_eq!(status_of(&response), 431, "{response}");
    assert!(response.contains("x-showoff-error: header_too_large"));
    // Just under the limit still works.
    let ok = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        server.host("demo"),
        "a".repeat(30 * 1024)
    );
    assert_eq!(status_of(&raw(server.addrs.http, ok.as_bytes()).await), 200);
}

#[tokio::test]
async fn a_head_sent_in_many_small_pieces_parses() {
    let (server, _client, _target) = setup(ServerConfig::ephemeral()).await;
    let request = format!(
        "GET /pieces HTTP/1.1\r\nHost: {}\r\nX-A: 1\r\nConnection: close\r\n\r\n",
        server.host("demo")
    );
    let mut stream = TcpStream::connect(server.addrs.http)
        .await
        .expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    for piece in request.as_bytes().chunks(3) {
        stream.write_all(piece).await.expect("write");
        stream.flush().await.expect("flush");
        tokio::task::yield_now().await;
    }
    let response = read_to_close(&mut stream).await;
    assert_eq!(status_of(&response), 200, "{response}");
    assert!(response.contains("\"path\":\"/pieces\""), "{response}");
}

#[tokio::test]
async fn a_slow_head_gets_408_after_the_head_deadline() {
    let config = ServerConfig {
        head_timeout: Duration::from_millis(300),
        ..ServerConfig::ephemeral()
    };
    let (server, _client, _target) = setup(config).await;
    let mut stream = TcpStream::connect(server.addrs.http)
        .await
        .expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: demo.loc")
        .await
        .expect("write");
    // The server answers by itself once its deadline passes; the read just waits for it.
    let response = read_to_close(&mut stream).await;
    assert_eq!(status_of(&response), 408, "{response}");
    assert!(response.contains("x-showoff-error: header_timeout"));
    // An idle keep-alive connection is closed quietly instead.
    let mut idle = TcpStream::connect(server.addrs.http)
        .await
        .expect("connect");
    assert_eq!(within("idle close", read_to_close(&mut idle)).await, "");
}

#[tokio::test]
async fn control_bytes_in_chunk_lines_and_trailers_are_refused() {
    // Issue 11, item 5: a bare LF (or any control byte) inside a chunk-size line or its
    // extension lets an RFC-strict front proxy and the edge disagree on where a request ends;
    // garbage trailers are not header fields. All of them are a 400, not a relayed request.
    let (server, _client, _target) = setup(ServerConfig::ephemeral()).await;
    let host = server.host("demo");
    let head = format!(
        "POST / HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let bodies: [&[u8]; 6] = [
        b"3;x\nGET /smuggled HTTP/1.1\r\nabc\r\n0\r\n\r\n",
        b"3;x\rGET /smuggled\r\nabc\r\n0\r\n\r\n",
        b"3;ext=\x00\r\nabc\r\n0\r\n\r\n",
        b"3\r\nabc\r\n0\r\nnot a header field\r\n\r\n",
        b"3\r\nabc\r\n0\r\nX-Trailer: a\x01b\r\n\r\n",
        b"3\r\nabc\r\n0\r\nX-T: 1\nGET /smuggled HTTP/1.1\r\n\r\n",
    ];
    for body in bodies {
        let mut request = head.clone().into_bytes();
        request.extend_from_slice(body);
        let response = raw(server.addrs.http, &request).await;
        assert_eq!(
            status_of(&response),
            400,
            "{:?} → {response}",
            String::from_utf8_lossy(body)
        );
        assert!(response.contains("bad_request"), "{response}");
    }
    let mut fine = head.into_bytes();
    fine.extend_from_slice(b"3;name=value\r\nabc\r\n0\r\nX-Checksum: 1\r\n\r\n");
    assert_eq!(
        status_of(&raw(server.addrs.http, &fine).await),
        200,
        "valid extensions and trailers"
    );
}

#[tokio::test]
async fn a_dripped_body_gets_408_instead_of_holding_its_slot() {
    // Issue 11, item 10: only a 60 s per-read timeout bounded a body, so one dripped a few
    // bytes at a time held a tunnel's visitor slot for as long as it liked.
    let (server, _client, _target) = setup(ServerConfig {
        head_timeout: Duration::from_secs(1),
        min_body_rate: 1000,
        ..ServerConfig::ephemeral()
    })
    .await;
    let mut stream = TcpStream::connect(server.addrs.http)
        .await
        .expect("connect");
    let head = format!(
        "POST / HTTP/1.1\r\nHost: {}\r\nContent-Length: 1000\r\n\r\n",
        server.host("demo")
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let (mut reader, mut writer) = stream.into_split();
    let drip = async move {
        // 10 bytes every 100 ms: 100 B/s, ten times too slow; the whole body would take 10 s.
        for _ in 0..100 {
            if writer.write_all(&[b'x'; 10]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let read = async {
        let mut response = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut response).await;
        String::from_utf8_lossy(&response).into_owned()
    };
    let response = tokio::select! {
        response = read => response,
        _ = drip => String::from("the whole body went through"),
    };
    assert_eq!(status_of(&response), 408, "{response}");
    assert!(response.contains("body_timeout"), "{response}");
}
