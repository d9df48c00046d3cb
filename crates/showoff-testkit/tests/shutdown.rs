//! Graceful drain and reconnects: in-flight work finishes, new visitors are refused, clients
//! are told to go away and come back with the same name.

use std::sync::atomic::Ordering;

use showoff_client::ClientEvent;
use showoff_proto::TunnelKind;
use showoff_server::ServerConfig;
use showoff_testkit::target::spawn_target;
use showoff_testkit::visitor::get;
use showoff_testkit::{TestClient, TestServer, eventually, serve_http, tunnel};

#[tokio::test]
async fn a_slow_request_finishes_while_new_connections_are_refused() {
    let server = TestServer::default_config().await;
    let target = spawn_target("a").await;
    let mut client = TestClient::start(TestClient::config(
        &server,
        vec![tunnel(TunnelKind::Http, Some("busy"), target.addr)],
    ))
    .await
    .expect("session");
    let (addr, host) = (server.addrs.http, server.host("busy"));
    let in_flight = tokio::spawn(async move { get(addr, &host, "/slow?ms=800").await });
    let stats = target.stats.clone();
    eventually("the slow request at the target", || {
        stats.requests.load(Ordering::Relaxed) == 1
    })
    .await;

    server.begin_shutdown();
    let handle = server.handle.clone();
    eventually("the drain to start", || handle.is_draining()).await;
    let http = server.addrs.http;
    let mut refused = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(http).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(
        refused,
        "new visitor connections are refused during the drain"
    );
    assert!(matches!(
        client.next_event().await,
        ClientEvent::GoAway { .. }
    ));

    let reply = in_flight.await.expect("visitor");
    assert_eq!(
        (reply.status.as_u16(), reply.body.as_str()),
        (200, "slow done")
    );
    let report = server.stop().await;
    assert!(
        report.clean,
        "every visitor finished within the grace period"
    );
    assert!(
        client.stop().await.is_ok(),
        "the client shuts down gracefully"
    );
}

#[tokio::test]
async fn a_drain_that_outlasts_the_grace_is_reported_as_cut_short() {
    let server = TestServer::start(ServerConfig {
        shutdown_grace: std::time::Duration::from_millis(200),
        ..ServerConfig::ephemeral()
    })
    .await;
    let (target, _client) = serve_http(&server, "stuck", "a").await;
    let (addr, host) = (server.addrs.http, server.host("stuck"));
    let _in_flight = tokio::spawn(async move { get(addr, &host, "/slow?ms=10000").await });
    let stats = target.stats.clone();
    eventually("the request at the target", || {
        stats.requests.load(Ordering::Relaxed) == 1
    })
    .await;
    assert!(!server.stop().await.clean);
}

#[tokio::test]
async fn after_a_server_restart_the_client_gets_its_name_back() {
    let first = TestServer::default_config().await;
    let addrs = first.addrs;
    let target = spawn_target("a").await;
    let mut client = TestClient::start(TestClient::config(
        &first,
        vec![tunnel(TunnelKind::Http, Some("phoenix"), target.addr)],
    ))
    .await
    .expect("session");
    let url = client.tunnels[0].public_url.clone();
    assert!(first.stop().await.clean);

    let second = TestServer::start(ServerConfig {
        control_addr: addrs.control,
        data_addr: addrs.data,
        http_addr: addrs.http,
        ..ServerConfig::ephemeral()
    })
    .await;
    let tunnels = client.reconnected().await;
    assert_eq!(tunnels[0].public_url, url);
    assert_eq!(
        get(second.addrs.http, &second.host("phoenix"), "/")
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn the_pre_drain_delay_turns_readiness_off_and_closes_keep_alive_connections() {
    // Issue 11, item 14: a load balancer must see /readyz fail while the server still serves,
    // and keep-alive clients must hear `Connection: close` rather than find a closed socket.
    let server = TestServer::start(ServerConfig {
        drain_delay: std::time::Duration::from_secs(5),
        ..ServerConfig::ephemeral()
    })
    .await;
    let (_target, _client) = serve_http(&server, "steady", "a").await;
    let host = server.host("steady");
    let mut conn = showoff_testkit::visitor::HttpConn::open(server.addrs.http).await;
    let before = conn.get(&host, "/").await;
    assert_eq!(before.status, 200);
    assert!(
        before.headers.get("connection").is_none(),
        "kept alive before"
    );
    let admin = server.addrs.admin.expect("admin");
    server.begin_shutdown();
    let mut ready = 200;
    for _ in 0..300 {
        ready = get(admin, "localhost", "/readyz").await.status.as_u16();
        if ready == 503 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(
        ready, 503,
        "not ready from the first moment of the shutdown"
    );
    assert!(!server.handle.is_draining(), "still in the delay");
    let during = conn.get(&host, "/").await;
    assert_eq!(during.status, 200, "still served");
    assert_eq!(
        during.headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "told to go elsewhere"
    );
    let fresh = get(server.addrs.http, &host, "/").await;
    assert_eq!(
        fresh.status, 200,
        "new connections are still accepted during the delay"
    );
    assert!(server.stop().await.clean);
}

/// What one keep-alive connection saw while the server drained under it.
#[derive(Debug, Default)]
struct Loop {
    answered: u64,
    /// Requests written that got no response at all.
    lost: u64,
    /// Answers other than 200.
    failed: u64,
}

/// Sends back-to-back requests on one keep-alive connection until the server says
/// `Connection: close` (or `limit` requests went through), counting requests left unanswered.
async fn keep_alive_loop(addr: std::net::SocketAddr, host: String, limit: u64) -> Loop {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut seen = Loop::default();
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
        }
        if head.contains("\r\nconnection: close\r\n") {
            return seen;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_on_a_keep_alive_connection_is_lost_to_a_drain() {
    // Issue 11, item 14: a connection idle between two requests when the drain began was
    // closed at once, and the request its client was writing then got no answer.
    let server = TestServer::start(ServerConfig::ephemeral()).await;
    let (_target, _client) = serve_http(&server, "busy", "a").await;
    let host = server.host("busy");
    let loops: Vec<_> = (0..16)
        .map(|_| tokio::spawn(keep_alive_loop(server.addrs.http, host.clone(), 100_000)))
        .collect();
    // Let every loop get going, then drain under them.
    eventually("load through the tunnel", || {
        server.handle.stats().http_requests >= 2_000
    })
    .await;
    let report = server.stop().await;
    let mut total = Loop::default();
    for handle in loops {
        let seen = handle.await.expect("loop");
        total.answered += seen.answered;
        total.lost += seen.lost;
        total.failed += seen.failed;
    }
    assert!(total.answered >= 2_000, "{total:?}");
    assert_eq!((total.lost, total.failed), (0, 0), "{total:?}");
    assert!(report.clean, "{report:?}");
}
