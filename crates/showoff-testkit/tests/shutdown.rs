//! Graceful drain and reconnects: in-flight work finishes, new visitors are refused, clients
//! are told to go away and come back with the same name.

use std::sync::atomic::Ordering;

use showoff_client::ClientEvent;
use showoff_proto::TunnelKind;
use showoff_server::ServerConfig;
use showoff_testkit::target::spawn_target;
use showoff_testkit::visitor::{KeepAlive, get, keep_alive_loop};
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
        quic_addr: addrs.quic,
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
    let mut total = KeepAlive::default();
    for handle in loops {
        let seen = handle.await.expect("loop");
        total.add(&seen);
    }
    assert!(total.answered >= 2_000, "{total:?}");
    assert_eq!((total.lost, total.failed), (0, 0), "{total:?}");
    assert!(report.clean, "{report:?}");
}
