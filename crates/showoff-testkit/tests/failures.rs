//! Failures stay contained: a killed client, a refusing target, a silent client, idle tunnels.

use std::time::Duration;

use showoff_client::ClientEvent;
use showoff_proto::{HostHeader, ServerMessage, TunnelKind, TunnelSpec};
use showoff_server::ServerConfig;
use showoff_testkit::raw_client;
use showoff_testkit::target::{closed_port, spawn_target};
use showoff_testkit::visitor::get;
use showoff_testkit::{TestClient, TestServer, eventually, tunnel};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn killing_a_client_mid_request_fails_only_its_visitor() {
    // A killed process closes nothing on QUIC: the server hears silence, and the heartbeat
    // timeout (QUIC's idle timeout) bounds how long; on TCP the kernel's reset is immediate.
    let server = TestServer::start(ServerConfig {
        heartbeat_interval: Duration::from_millis(300),
        heartbeat_timeout: Duration::from_secs(1),
        ..ServerConfig::ephemeral()
    })
    .await;
    let (a, b) = (spawn_target("a").await, spawn_target("b").await);
    let doomed = TestClient::start(TestClient::config(
        &server,
        vec![tunnel(TunnelKind::Http, Some("doomed"), a.addr)],
    ))
    .await
    .expect("first");
    let mut other = TestClient::config(
        &server,
        vec![tunnel(TunnelKind::Http, Some("healthy"), b.addr)],
    );
    other.token = "other".into();
    let _healthy = TestClient::start(other).await.expect("second");

    let (addr, host) = (server.addrs.http, server.host("doomed"));
    let in_flight = tokio::spawn(async move { get(addr, &host, "/slow?ms=5000").await });
    let stats = a.stats.clone();
    eventually("the slow request to reach the target", || {
        stats.requests.load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;
    doomed.kill();
    let reply = in_flight.await.expect("visitor");
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert_eq!(reply.error_code(), Some("tunnel_unavailable"));

    assert_eq!(
        get(server.addrs.http, &server.host("healthy"), "/")
            .await
            .status,
        200
    );
    let handle = server.handle.clone();
    eventually("the dead session to be dropped", || {
        handle.stats().sessions_active == 1
    })
    .await;
    let gone = get(server.addrs.http, &server.host("doomed"), "/").await;
    assert_eq!(gone.error_code(), Some("tunnel_not_found"));
}

#[tokio::test]
async fn a_refusing_target_gives_502_upstream_unreachable() {
    for warm_pool in [0, 4] {
        let server = TestServer::start(ServerConfig {
            warm_pool,
            ..ServerConfig::ephemeral()
        })
        .await;
        let dead = closed_port().await;
        let mut config = TestClient::config(
            &server,
            vec![tunnel(TunnelKind::Http, Some("down"), dead.addr)],
        );
        if warm_pool > 0 {
            // The warm pool is dial-back's: its StreamError path is what this covers.
            config.transport = showoff_client::TransportChoice::Tcp;
        }
        let _client = TestClient::start(config).await.expect("session");
        if warm_pool > 0 {
            let handle = server.handle.clone();
            eventually("pool filled", || handle.stats().pool_idle == 4).await;
        }
        let reply = get(server.addrs.http, &server.host("down"), "/").await;
        assert_eq!(reply.status, 502, "pool {warm_pool}: {}", reply.body);
        assert_eq!(
            reply.error_code(),
            Some("upstream_unreachable"),
            "pool {warm_pool}"
        );
        assert!(reply.body.contains("127.0.0.1"), "{}", reply.body);
    }
}

#[tokio::test]
async fn a_client_whose_heartbeats_stop_is_dropped_and_its_name_freed() {
    let server = TestServer::start_raw(ServerConfig {
        heartbeat_interval: Duration::from_millis(50),
        heartbeat_timeout: Duration::from_millis(200),
        ..ServerConfig::ephemeral()
    })
    .await;
    let spec = TunnelSpec {
        upstream: Default::default(),
        kind: TunnelKind::Http,
        name: Some("sleepy".into()),
        port: None,
        host_header: HostHeader::Preserve,
        target: String::new(),
        visitors: Default::default(),
    };
    let (mut conn, welcome) =
        raw_client::open(server.addrs.control, "sleepy", vec![spec.clone()]).await;
    assert!(matches!(welcome, ServerMessage::Welcome { .. }));
    // Never answer: read pings until the server hangs up.
    while let Some(msg) = raw_client::next(&mut conn).await {
        assert_eq!(msg, ServerMessage::Ping);
    }
    let handle = server.handle.clone();
    eventually("the session to be gone", || {
        handle.stats().sessions_active == 0
    })
    .await;
    // Another principal can now take the name.
    let (_conn, welcome) = raw_client::open(server.addrs.control, "someone-else", vec![spec]).await;
    assert!(
        matches!(welcome, ServerMessage::Welcome { .. }),
        "{welcome:?}"
    );
}

#[tokio::test]
async fn idle_tunnels_are_closed_and_the_client_is_told() {
    let server = TestServer::start(ServerConfig {
        heartbeat_interval: Duration::from_millis(50),
        tunnel_idle_timeout: Some(Duration::from_millis(200)),
        ..ServerConfig::ephemeral()
    })
    .await;
    let target = spawn_target("a").await;
    let mut client = TestClient::start(TestClient::config(
        &server,
        vec![tunnel(TunnelKind::Http, Some("idle"), target.addr)],
    ))
    .await
    .expect("session");
    let event = client.next_event().await;
    assert!(
        matches!(&event, ClientEvent::TunnelClosed { tunnel, reason } if tunnel == "idle" && reason.contains("idle")),
        "{event:?}"
    );
    assert_eq!(
        get(server.addrs.http, &server.host("idle"), "/")
            .await
            .status,
        404
    );
    assert_eq!(server.handle.stats().tunnels_active, 0);
}

#[tokio::test]
async fn a_full_public_side_closes_new_visitors_at_once_and_spares_the_control_plane() {
    // Issue 11, item 9: no listener limited connections, so the public side could take every
    // descriptor and, with them, the control plane.
    let server = TestServer::start(ServerConfig {
        connections: showoff_server::ConnectionLimits {
            public: 2,
            ..Default::default()
        },
        ..ServerConfig::ephemeral()
    })
    .await;
    let (target, _client) = showoff_testkit::serve_http(&server, "demo", "a").await;
    // Two visitors hold the public side with half a head each.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(server.addrs.http)
            .await
            .expect("connect");
        stream
            .write_all(b"GET / HTTP/1.1\r\n")
            .await
            .expect("write");
        held.push(stream);
    }
    let handle = server.handle.clone();
    showoff_testkit::eventually("two visitors held", || {
        handle.stats().visitor_connections_active == 2
    })
    .await;
    let mut third = tokio::net::TcpStream::connect(server.addrs.http)
        .await
        .expect("connect");
    let mut byte = [0u8; 1];
    let closed = showoff_testkit::within("the third visitor closed", third.read(&mut byte)).await;
    assert!(
        matches!(closed, Ok(0) | Err(_)),
        "closed at once: {closed:?}"
    );
    let sample = "showoff_connections_refused_total{listener=\"public\",reason=\"total\"}";
    assert_eq!(server.metric(sample).await, Some(1.0));
    // The control plane still takes sessions.
    let (_other, _second) = showoff_testkit::serve_http(&server, "other", "b").await;
    drop(held);
    showoff_testkit::eventually("the held visitors gone", || {
        handle.stats().visitor_connections_active == 0
    })
    .await;
    let reply = get(server.addrs.http, &server.host("demo"), "/").await;
    assert_eq!(reply.status, 200, "room again");
    drop(target);
}
