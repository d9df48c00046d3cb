//! Bodies stream both ways; WebSocket upgrades are spliced.

use futures_util::{SinkExt, StreamExt};
use showoff_testkit::visitor::{HttpConn, read_to_close, status_of};
use showoff_testkit::{TestClient, TestServer, serve_http, within};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

async fn setup() -> (TestServer, TestClient) {
    let server = TestServer::default_config().await;
    let (_target, client) = serve_http(&server, "demo", "a").await;
    (server, client)
}

#[tokio::test]
async fn large_uploads_stream_with_length_or_chunked() {
    let (server, _client) = setup().await;
    const SIZE: usize = 16 << 20;
    let block = vec![b'u'; 64 * 1024];
    for chunked in [false, true] {
        let mut stream = TcpStream::connect(server.addrs.http)
            .await
            .expect("connect");
        let framing = if chunked {
            "Transfer-Encoding: chunked".to_string()
        } else {
            format!("Content-Length: {SIZE}")
        };
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{framing}\r\n\r\n",
            server.host("demo")
        );
        stream.write_all(head.as_bytes()).await.expect("head");
        for _ in 0..SIZE / block.len() {
            if chunked {
                stream
                    .write_all(format!("{:x}\r\n", block.len()).as_bytes())
                    .await
                    .expect("size");
                stream.write_all(&block).await.expect("chunk");
                stream.write_all(b"\r\n").await.expect("crlf");
            } else {
                stream.write_all(&block).await.expect("block");
            }
        }
        if chunked {
            stream.write_all(b"0\r\n\r\n").await.expect("last chunk");
        }
        let response = read_to_close(&mut stream).await;
        assert_eq!(status_of(&response), 200, "{response}");
        assert!(
            response.contains(&format!("\"body_bytes\":{SIZE}")),
            "chunked={chunked}: {response}"
        );
    }
}

#[tokio::test]
async fn large_downloads_stream_with_length_or_chunked() {
    let (server, _client) = setup().await;
    let mut conn = HttpConn::open(server.addrs.http).await;
    for path in ["/big?bytes=20000000", "/big?bytes=20000000&cl=1"] {
        let reply = conn.get(&server.host("demo"), path).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body.len(), 20_000_000, "{path}");
    }
    // A HEAD answer has no body even though the target states a length.
    let req = http::Request::head("/big?bytes=10&cl=1")
        .header("host", server.host("demo"))
        .body(http_body_util::Empty::new())
        .expect("request");
    let reply = conn.send(req).await;
    assert_eq!((reply.status.as_u16(), reply.body.len()), (200, 0));
    // And the connection is still usable afterwards.
    assert_eq!(conn.get(&server.host("demo"), "/").await.status, 200);
}

#[tokio::test]
async fn expect_continue_uploads_proceed() {
    let (server, _client) = setup().await;
    let mut stream = TcpStream::connect(server.addrs.http)
        .await
        .expect("connect");
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: {}\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        server.host("demo")
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let mut interim = [0u8; 25];
    within(
        "100 continue",
        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut interim),
    )
    .await
    .expect("read");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hello").await.expect("body");
    let response = read_to_close(&mut stream).await;
    assert!(response.contains("\"body_bytes\":5"), "{response}");
}

#[tokio::test]
async fn websocket_upgrades_are_spliced() {
    let (server, _client) = setup().await;
    let stream = TcpStream::connect(server.addrs.http)
        .await
        .expect("connect");
    let url = format!("ws://{}/ws", server.host("demo"));
    let (mut ws, resp) = within(
        "websocket handshake",
        tokio_tungstenite::client_async(url, stream),
    )
    .await
    .expect("upgrade");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hello through the tunnel"))
        .await
        .expect("send");
    let echoed = within("echo", ws.next()).await.expect("frame").expect("ok");
    assert_eq!(echoed, Message::text("hello through the tunnel"));
    let big = vec![7u8; 1 << 20];
    ws.send(Message::binary(big.clone()))
        .await
        .expect("send binary");
    let echoed = within("binary echo", ws.next())
        .await
        .expect("frame")
        .expect("ok");
    assert_eq!(echoed.into_data().len(), big.len());
    ws.close(None).await.expect("close");
}
