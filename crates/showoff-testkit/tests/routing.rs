//! Routing by Host, per request; forwarded headers; Host policies.

use showoff_proto::{HostHeader, TunnelKind};
use showoff_testkit::target::spawn_target;
use showoff_testkit::visitor::{HttpConn, get};
use showoff_testkit::{TestClient, TestServer, serve_http, tunnel};

#[tokio::test]
async fn a_request_reaches_the_local_target() {
    let server = TestServer::default_config().await;
    let (_target, client) = serve_http(&server, "demo", "a").await;
    assert_eq!(
        client.tunnels[0].public_url,
        format!("http://demo.localhost:{}", server.addrs.http.port())
    );
    let reply = get(server.addrs.http, &server.host("demo"), "/anything?x=1").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let echo = reply.echo();
    assert_eq!(echo["target"], "a");
    assert_eq!(echo["path"], "/anything?x=1");
}

#[tokio::test]
async fn host_matching_ignores_port_and_case_and_unknown_hosts_get_404() {
    let server = TestServer::default_config().await;
    let (_target, _client) = serve_http(&server, "demo", "a").await;
    for host in ["DEMO.LocalHost", "demo.localhost:1", "demo.localhost."] {
        let reply = get(server.addrs.http, host, "/").await;
        assert_eq!(reply.status, 200, "{host}: {}", reply.body);
    }
    for host in [
        "other.localhost",
        "localhost",
        "a.demo.localhost",
        "demo.example.com",
    ] {
        let reply = get(server.addrs.http, host, "/").await;
        assert_eq!(reply.status, 404, "{host}");
        assert_eq!(reply.error_code(), Some("tunnel_not_found"), "{host}");
    }
}

#[tokio::test]
async fn several_clients_and_tunnels_each_reach_their_own_target() {
    let server = TestServer::default_config().await;
    let (a, b, c) = (
        spawn_target("a").await,
        spawn_target("b").await,
        spawn_target("c").await,
    );
    let _one = TestClient::start(TestClient::config(
        &server,
        vec![
            tunnel(TunnelKind::Http, Some("alpha"), a.addr),
            tunnel(TunnelKind::Http, Some("beta"), b.addr),
        ],
    ))
    .await
    .expect("first client");
    let mut config = TestClient::config(
        &server,
        vec![tunnel(TunnelKind::Http, Some("gamma"), c.addr)],
    );
    config.token = "someone-else".into();
    let _two = TestClient::start(config).await.expect("second client");
    for (name, label) in [("alpha", "a"), ("beta", "b"), ("gamma", "c")] {
        let reply = get(server.addrs.http, &server.host(name), "/").await;
        assert_eq!(reply.echo()["target"], label, "{name}");
    }
}

#[tokio::test]
async fn each_request_on_a_keep_alive_connection_is_routed_by_its_own_host() {
    let server = TestServer::default_config().await;
    let (a, b) = (spawn_target("a").await, spawn_target("b").await);
    let _client = TestClient::start(TestClient::config(
        &server,
        vec![
            tunnel(TunnelKind::Http, Some("one"), a.addr),
            tunnel(TunnelKind::Http, Some("two"), b.addr),
        ],
    ))
    .await
    .expect("session");
    let mut conn = HttpConn::open(server.addrs.http).await;
    assert_eq!(
        conn.get(&server.host("one"), "/").await.echo()["target"],
        "a"
    );
    assert_eq!(
        conn.get(&server.host("two"), "/").await.echo()["target"],
        "b"
    );
    assert_eq!(
        conn.get(&server.host("one"), "/").await.echo()["target"],
        "a"
    );
    assert_eq!(
        server.handle.stats().visitor_connections_active,
        1,
        "one visitor connection"
    );
}

#[tokio::test]
async fn forwarded_headers_are_set_and_hop_by_hop_headers_removed() {
    let server = TestServer::default_config().await;
    let (_target, _client) = serve_http(&server, "demo", "a").await;
    let host = server.host("demo");
    let req = http::Request::get("/")
        .header("host", &host)
        .header("connection", "keep-alive, x-drop-me")
        .header("x-drop-me", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic abc")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-kept", "yes")
        .body(http_body_util::Empty::new())
        .expect("request");
    let reply = HttpConn::open(server.addrs.http).await.send(req).await;
    assert_eq!(
        reply.echoed_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        reply.echoed_header("x-forwarded-proto").as_deref(),
        Some("http")
    );
    assert_eq!(
        reply.echoed_header("x-forwarded-host").as_deref(),
        Some(host.as_str())
    );
    assert_eq!(
        reply.echoed_header("host").as_deref(),
        Some(host.as_str()),
        "preserved"
    );
    assert_eq!(reply.echoed_header("x-kept").as_deref(), Some("yes"));
    for gone in ["x-drop-me", "keep-alive", "proxy-authorization"] {
        assert_eq!(
            reply.echoed_header(gone),
            None,
            "{gone} must not reach the target"
        );
    }
}

#[tokio::test]
async fn host_header_can_be_rewritten_or_set_per_tunnel() {
    let server = TestServer::default_config().await;
    let target = spawn_target("a").await;
    let mut rewrite = tunnel(TunnelKind::Http, Some("rw"), target.addr);
    rewrite.spec.host_header = HostHeader::Rewrite;
    let mut fixed = tunnel(TunnelKind::Http, Some("fixed"), target.addr);
    fixed.spec.host_header = HostHeader::Value("app.internal".into());
    let _client = TestClient::start(TestClient::config(&server, vec![rewrite, fixed]))
        .await
        .expect("session");
    let reply = get(server.addrs.http, &server.host("rw"), "/").await;
    assert_eq!(reply.echoed_header("host"), Some(target.addr.to_string()));
    let reply = get(server.addrs.http, &server.host("fixed"), "/").await;
    assert_eq!(reply.echoed_header("host").as_deref(), Some("app.internal"));
}
