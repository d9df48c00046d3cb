//! Targets that answer in unusual ways: close-delimited bodies, garbage, early answers.

use showoff_proto::TunnelKind;
use showoff_testkit::visitor::{HttpConn, raw, status_of};
use showoff_testkit::{TestClient, TestServer, tunnel};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request head, read byte by byte so nothing after it is consumed; `None` once the
/// connection ends.
async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.ok()?;
        head.push(byte[0]);
    }
    Some(head)
}

/// A target that reads one request head, writes `answer`, then closes the way real servers do:
/// it stops writing and drains what the client still sends for a moment (a plain close with
/// unread input resets the connection, and the kernel may drop the answer with it).
async fn scripted_target(answer: &'static [u8]) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_head(&mut stream).await.is_none() {
                    return;
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
    expose_at(server, name, scripted_target(answer).await).await
}

/// A client serving HTTP tunnel `name` from the target at `target`.
async fn expose_at(server: &TestServer, name: &str, target: std::net::SocketAddr) -> TestClient {
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

/// A target that answers the first request of each connection (keep-alive) and closes any
/// later one unanswered, as a server does when its idle connection times out just as a request
/// arrives (or, with `hang`, keeps it open and silent). Returns its address and the number of
/// requests of each method it received.
async fn answers_once_per_connection(
    hang: bool,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let counts = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                for nth in 0.. {
                    let Some(head) = read_head(&mut stream).await else {
                        return;
                    };
                    let method = String::from_utf8_lossy(&head)
                        .split(' ')
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    *seen.lock().expect("lock").entry(method).or_insert(0) += 1;
                    if nth > 0 && hang {
                        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    }
                    if nth > 0 {
                        return; // closed without an answer
                    }
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, counts)
}

#[tokio::test]
async fn a_body_less_post_is_never_sent_twice_but_a_get_is_retried() {
    // Issue 11, item 4: when a pooled upstream connection dies before answering, only a safe
    // method may be sent again (RFC 9112 §9.3.1); the target may have run a POST already.
    let server = TestServer::default_config().await;
    let (target, seen) = answers_once_per_connection(false).await;
    let _client = expose_at(&server, "once", target).await;
    let host = server.host("once");
    let mut conn = HttpConn::open(server.addrs.http).await;
    assert_eq!(conn.get(&host, "/").await.status, 200, "warms the pool");
    // The pooled connection is reused and dies unanswered: a GET goes out again, fresh.
    assert_eq!(conn.get(&host, "/").await.status, 200, "retried");
    assert_eq!(seen.lock().expect("lock").get("GET"), Some(&3));
    // Now a body-less POST meets the same fate: the visitor hears 502, the target saw it once.
    let post = format!("POST /charge HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let response = raw(server.addrs.http, post.as_bytes()).await;
    assert_eq!(status_of(&response), 502, "{response}");
    assert!(response.contains("tunnel_unavailable"), "{response}");
    assert_eq!(
        seen.lock().expect("lock").get("POST"),
        Some(&1),
        "sent once"
    );
}

#[tokio::test]
async fn a_request_that_timed_out_is_not_sent_again() {
    // Issue 11, item 4: a timeout is no proof the target did nothing; even a GET is not resent.
    let server = TestServer::start(showoff_server::ServerConfig {
        io_idle_timeout: std::time::Duration::from_secs(1),
        ..showoff_server::ServerConfig::ephemeral()
    })
    .await;
    let (target, seen) = answers_once_per_connection(true).await;
    let _client = expose_at(&server, "slow", target).await;
    let host = server.host("slow");
    let mut conn = HttpConn::open(server.addrs.http).await;
    assert_eq!(conn.get(&host, "/").await.status, 200, "warms the pool");
    let reply = HttpConn::open(server.addrs.http)
        .await
        .get(&host, "/")
        .await;
    assert_eq!(reply.status, 502);
    assert_eq!(
        seen.lock().expect("lock").get("GET"),
        Some(&2),
        "not resent"
    );
}

#[tokio::test]
async fn only_websocket_upgrades_pass_and_an_unrequested_101_is_refused() {
    // Issue 11, item 7: an `h2c` upgrade would hand the visitor an HTTP/2 connection to the
    // target past every per-request rule of the edge; a 101 nobody asked for is not HTTP.
    let server = TestServer::default_config().await;
    let (_target, _client) = showoff_testkit::serve_http(&server, "echo", "a").await;
    let request = http::Request::get("/")
        .header("host", server.host("echo"))
        .header("connection", "Upgrade, HTTP2-Settings")
        .header("upgrade", "h2c")
        .header("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA")
        .body(http_body_util::Empty::new())
        .expect("request");
    let reply = HttpConn::open(server.addrs.http).await.send(request).await;
    assert_eq!(reply.status, 200, "served as a plain request");
    assert_eq!(
        reply.echoed_header("upgrade"),
        None,
        "the h2c upgrade never reached the target"
    );
    let _unasked = expose(
        &server,
        "switch",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
    )
    .await;
    let reply = showoff_testkit::visitor::get(server.addrs.http, &server.host("switch"), "/").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.error_code(), Some("upstream_invalid_response"));
}

/// A target that authenticates connections the way NTLM does: `type1` then `type3` on the
/// same connection, after which that connection (and only it) is logged in.
async fn ntlm_like_target() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut handshaking, mut logged_in) = (false, false);
                loop {
                    let Some(head) = read_head(&mut stream).await else {
                        return;
                    };
                    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    let answer: &[u8] = if head.contains("authorization: ntlm type1") {
                        handshaking = true;
                        b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: NTLM challenge\r\ncontent-length: 0\r\n\r\n"
                    } else if head.contains("authorization: ntlm type3") && handshaking {
                        logged_in = true;
                        b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nwelcome"
                    } else if logged_in {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nstill you"
                    } else {
                        b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: NTLM\r\ncontent-length: 0\r\n\r\n"
                    };
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_connection_the_target_authenticated_stays_with_its_visitor() {
    // Issue 11, item 6: NTLM and Negotiate log in the TCP connection; pooled across visitors,
    // one visitor's login served the next visitor.
    let server = TestServer::default_config().await;
    let target = ntlm_like_target().await;
    let _client = expose_at(&server, "intranet", target).await;
    let host = server.host("intranet");
    let get = |authorization: Option<&str>| {
        let mut request = http::Request::get("/").header("host", &host);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        request.body(http_body_util::Empty::new()).expect("request")
    };
    let mut alice = HttpConn::open(server.addrs.http).await;
    assert_eq!(alice.send(get(Some("NTLM type1"))).await.status, 401);
    let welcome = alice.send(get(Some("NTLM type3"))).await;
    assert_eq!(
        (welcome.status.as_u16(), welcome.body.as_str()),
        (200, "welcome")
    );
    let again = alice.send(get(None)).await;
    assert_eq!(
        again.body, "still you",
        "the login rides alice's connection"
    );
    let mut mallory = HttpConn::open(server.addrs.http).await;
    let reply = mallory.send(get(None)).await;
    assert_eq!(
        reply.status, 401,
        "another visitor never gets alice's login: {}",
        reply.body
    );
}
