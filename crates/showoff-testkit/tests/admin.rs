//! The admin listener: probes, version, metrics after real traffic, API, guarded endpoints.

use std::sync::{Arc, Mutex};

use showoff_proto::TunnelKind;
use showoff_server::config::TEST_ADMIN_TOKEN;
use showoff_server::{AdminConfig, BuildInfo, LogControl, Secret, ServerConfig, Services};
use showoff_testkit::visitor::{get, metric, request};
use showoff_testkit::{TestClient, TestServer, eventually, serve_http, tunnel, within};

fn admin_config(token: Option<&str>) -> ServerConfig {
    let base = ServerConfig::ephemeral();
    ServerConfig {
        admin: AdminConfig {
            token: token.map(Secret::new),
            tunnel_metrics: 4,
            ..base.admin.clone()
        },
        build: BuildInfo {
            version: "9.9.9".into(),
            commit: "c0ffee".into(),
            build_date: "2026-11-26".into(),
            rustc: "rustc test".into(),
        },
        ..base
    }
}

#[tokio::test]
async fn probes_version_and_api_describe_the_server() {
    let server = TestServer::start(admin_config(Some(TEST_ADMIN_TOKEN))).await;
    let admin = server.addrs.admin.expect("admin listener");
    assert_eq!(get(admin, "localhost", "/healthz").await.status, 200);
    let ready = get(admin, "localhost", "/readyz").await;
    assert_eq!(
        (ready.status.as_u16(), ready.body.as_str()),
        (200, "ready\n")
    );
    let version: serde_json::Value =
        serde_json::from_str(&get(admin, "localhost", "/version").await.body).expect("json");
    assert_eq!(version["version"], "9.9.9");
    assert_eq!(version["commit"], "c0ffee");

    let (target, client) = serve_http(&server, "listed", "a").await;
    let sessions: serde_json::Value =
        serde_json::from_str(&server.admin_get("/api/v1/sessions").await.body).expect("json");
    assert_eq!(sessions.as_array().map(Vec::len), Some(1), "{sessions}");
    assert_eq!(sessions[0]["tunnels"][0], "listed");
    assert!(
        sessions[0]["principal"]
            .as_str()
            .is_some_and(|p| p.starts_with("open:"))
    );
    let tunnels: serde_json::Value =
        serde_json::from_str(&server.admin_get("/api/v1/tunnels").await.body).expect("json");
    assert_eq!(tunnels[0]["name"], "listed");
    assert_eq!(
        tunnels[0]["public_url"],
        client.tunnels[0].public_url.as_str()
    );
    assert_eq!(tunnels[0]["kind"], "http");

    // While a slow request keeps the drain going, readiness reports it.
    let (addr, host) = (server.addrs.http, server.host("listed"));
    let slow = tokio::spawn(async move { get(addr, &host, "/slow?ms=1500").await });
    let stats = target.stats.clone();
    eventually("the slow request in flight", || {
        stats.requests.load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;
    server.begin_shutdown();
    let handle = server.handle.clone();
    eventually("draining", || handle.is_draining()).await;
    let draining = get(admin, "localhost", "/readyz").await;
    assert_eq!(
        (draining.status.as_u16(), draining.body.as_str()),
        (503, "draining\n")
    );
    assert_eq!(
        get(admin, "localhost", "/healthz").await.status,
        200,
        "still alive while draining"
    );
    assert_eq!(slow.await.expect("slow visitor").status, 200);
}

#[tokio::test]
async fn metrics_move_by_the_right_amounts_after_real_traffic() {
    let server = TestServer::start(admin_config(None)).await;
    let admin = server.addrs.admin.expect("admin listener");
    let (_target, _client) = serve_http(&server, "counted", "a").await;
    let scrape = || async { get(admin, "localhost", "/metrics").await.body };
    let before = scrape().await;
    assert_eq!(
        metric(
            &before,
            "showoff_build_info{version=\"9.9.9\",commit=\"c0ffee\",build_date=\"2026-11-26\",rustc=\"rustc test\"}"
        ),
        Some(1.0)
    );
    assert_eq!(metric(&before, "showoff_sessions_active"), Some(1.0));
    assert_eq!(
        metric(&before, "showoff_tunnels_active{kind=\"http\"}"),
        Some(1.0)
    );
    let two_xx = "showoff_http_requests_total{class=\"2xx\"}";
    let start = metric(&before, two_xx).expect("2xx counter");

    let mut body_bytes = 0;
    for _ in 0..3 {
        let reply = get(server.addrs.http, &server.host("counted"), "/three").await;
        assert_eq!(reply.status, 200);
        body_bytes += reply.body.len();
    }
    let missing = get(server.addrs.http, &server.host("nobody"), "/").await;
    assert_eq!(missing.status, 404);

    let after = scrape().await;
    assert_eq!(metric(&after, two_xx), Some(start + 3.0));
    assert_eq!(
        metric(&after, "showoff_errors_total{code=\"tunnel_not_found\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&after, "showoff_http_request_duration_seconds_count"),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &after,
            "showoff_tunnel_http_requests_total{tunnel=\"counted\"}"
        ),
        Some(3.0)
    );
    let out = metric(&after, "showoff_tunnel_bytes_total{direction=\"out\"}").expect("bytes out");
    assert!(
        out > body_bytes as f64,
        "{out} bytes out for {body_bytes} body bytes"
    );
    let inbound = metric(&after, "showoff_tunnel_bytes_total{direction=\"in\"}").expect("bytes in");
    assert!(
        inbound >= 3.0 * "GET /three HTTP/1.1\r\n".len() as f64,
        "{inbound}"
    );
    assert_eq!(metric(&after, "showoff_pending_streams"), Some(0.0));
}

#[tokio::test]
async fn auth_failures_are_counted() {
    let config = ServerConfig {
        tokens: vec![Secret::new("right")],
        ..admin_config(None)
    };
    let server = TestServer::start(config).await;
    let admin = server.addrs.admin.expect("admin listener");
    let target = showoff_testkit::target::spawn_target("a").await;
    let mut wrong = TestClient::config(
        &server,
        vec![tunnel(TunnelKind::Http, Some("x"), target.addr)],
    );
    wrong.token = "wrong".into();
    assert!(TestClient::start(wrong).await.is_err());
    let text = get(admin, "localhost", "/metrics").await.body;
    assert_eq!(metric(&text, "showoff_auth_failures_total"), Some(1.0));
}

#[tokio::test]
async fn guarded_endpoints_need_the_admin_token() {
    let applied = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = applied.clone();
    let services = Services {
        log_control: Some(LogControl::new(move |filter| {
            if filter.contains('!') {
                return Err("not a filter".into());
            }
            seen.lock().expect("lock").push(filter.to_string());
            Ok(())
        })),
        ..Services::default()
    };
    let server = TestServer::start_with(admin_config(Some("admin-secret")), services).await;
    let admin = server.addrs.admin.expect("admin listener");
    let bearer = ("authorization", "Bearer admin-secret");

    let anonymous = request(admin, "PUT", "/api/v1/log-level", &[], "debug").await;
    assert_eq!(anonymous.status, 401);
    let wrong = request(
        admin,
        "PUT",
        "/api/v1/log-level",
        &[("authorization", "Bearer nope")],
        "debug",
    )
    .await;
    assert_eq!(wrong.status, 401);
    let ok = request(
        admin,
        "PUT",
        "/api/v1/log-level",
        &[bearer],
        "showoff_server=debug",
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let bad = request(admin, "PUT", "/api/v1/log-level", &[bearer], "!!!").await;
    assert_eq!(bad.status, 400);
    assert_eq!(
        *applied.lock().expect("lock"),
        vec!["showoff_server=debug".to_string()]
    );

    assert_eq!(
        request(admin, "GET", "/debug/pprof/profile?seconds=1", &[], "")
            .await
            .status,
        401
    );
    assert_eq!(
        request(
            admin,
            "GET",
            "/debug/pprof/profile?seconds=0",
            &[bearer],
            ""
        )
        .await
        .status,
        400
    );
    let profile = within(
        "a one-second profile",
        request(
            admin,
            "GET",
            "/debug/pprof/profile?seconds=1",
            &[bearer],
            "",
        ),
    )
    .await;
    assert_eq!(profile.status, 200, "{}", profile.body);
    assert!(!profile.body.is_empty(), "a pprof protobuf");
}

#[tokio::test]
async fn guarded_endpoints_are_off_without_a_token() {
    let server = TestServer::start(admin_config(None)).await;
    let admin = server.addrs.admin.expect("admin listener");
    let reply = request(
        admin,
        "GET",
        "/debug/pprof/profile?seconds=1",
        &[("authorization", "Bearer x")],
        "",
    )
    .await;
    assert_eq!(reply.status, 401);
    assert!(
        reply.body.contains("no admin token is configured"),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn the_api_needs_the_admin_token_and_probes_do_not() {
    // Issue 11, item 17: /api/v1/sessions listed every tenant's principals, addresses and
    // targets to anyone who reached the admin listener.
    let server = TestServer::start(admin_config(Some("admin-secret"))).await;
    let (_target, _client) = serve_http(&server, "private", "a").await;
    let admin = server.addrs.admin.expect("admin listener");
    for path in ["/api/v1/sessions", "/api/v1/tunnels"] {
        let anonymous = get(admin, "localhost", path).await;
        assert_eq!(anonymous.status, 401, "{path}");
        assert!(
            !anonymous.body.contains("private"),
            "{path}: {}",
            anonymous.body
        );
        let wrong = request(admin, "GET", path, &[("authorization", "Bearer nope")], "").await;
        assert_eq!(wrong.status, 401, "{path}");
        let right = [("authorization", "Bearer admin-secret")];
        let answered = request(admin, "GET", path, &right, "").await;
        assert_eq!(answered.status, 200, "{path}");
        assert!(
            answered.body.contains("private"),
            "{path}: {}",
            answered.body
        );
    }
    for open in ["/healthz", "/readyz", "/version", "/metrics"] {
        assert_eq!(get(admin, "localhost", open).await.status, 200, "{open}");
    }
    let without = TestServer::start(admin_config(None)).await;
    let admin = without.addrs.admin.expect("admin listener");
    let off = get(admin, "localhost", "/api/v1/sessions").await;
    assert_eq!(off.status, 401);
    assert!(
        off.body.contains("no admin token is configured"),
        "{}",
        off.body
    );
}

#[tokio::test]
async fn metrics_can_need_the_admin_token_too() {
    let mut config = admin_config(Some("admin-secret"));
    config.admin.metrics_auth = true;
    let server = TestServer::start(config).await;
    let admin = server.addrs.admin.expect("admin listener");
    assert_eq!(get(admin, "localhost", "/metrics").await.status, 401);
    let right = [("authorization", "Bearer admin-secret")];
    let metrics = request(admin, "GET", "/metrics", &right, "").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains("showoff_build_info"),
        "{}",
        metrics.body
    );
    assert_eq!(
        get(admin, "localhost", "/readyz").await.status,
        200,
        "probes stay open"
    );
}

/// `admin:<token>` as basic auth, the way a browser sends it.
fn basic(token: &str) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("admin:{token}"));
    format!("Basic {encoded}")
}

#[tokio::test]
async fn the_dashboard_shows_tunnels_rates_errors_latency_and_refusals() {
    let config = ServerConfig {
        tokens: vec![Secret::new("right")],
        ..admin_config(Some(TEST_ADMIN_TOKEN))
    };
    let server = TestServer::start(config).await;
    let admin = server.addrs.admin.expect("admin listener");
    let target = showoff_testkit::target::spawn_target("a").await;
    let closed = showoff_testkit::target::closed_port().await;
    let mut good = TestClient::config(
        &server,
        vec![
            tunnel(TunnelKind::Http, Some("dash"), target.addr),
            tunnel(TunnelKind::Http, Some("broken"), closed.addr),
        ],
    );
    good.token = "right".into();
    let client = TestClient::start(good.clone()).await.expect("session");
    let mut wrong = good;
    wrong.token = "wrong".into();
    wrong.reconnect = false;
    assert!(TestClient::start(wrong).await.is_err());
    let host = server.host("dash");
    for _ in 0..30 {
        assert_eq!(get(server.addrs.http, &host, "/ok").await.status, 200);
    }
    assert_eq!(
        get(server.addrs.http, &host, "/slow?ms=40").await.status,
        200
    );
    let broken = server.host("broken");
    for _ in 0..3 {
        assert_eq!(get(server.addrs.http, &broken, "/").await.status, 502);
    }

    let data: serde_json::Value =
        serde_json::from_str(&server.admin_get("/api/v1/dashboard").await.body).expect("json");
    let dash = &data["tunnels"][1];
    assert_eq!(dash["name"], "dash");
    assert_eq!(data["tunnels"][0]["recent"]["error_rate_1m"], 1.0, "{data}");
    assert_eq!(
        data["tunnels"][0]["recent"]["error_series"]
            .as_array()
            .map(|s| s.iter().filter_map(|n| n.as_u64()).sum::<u64>()),
        Some(3)
    );
    assert_eq!(dash["principal"], data["sessions"][0]["principal"]);
    let recent = &dash["recent"];
    assert_eq!(recent["requests_5m"], 31, "{data}");
    assert!(recent["rate_1m"].as_f64().expect("rate") > 0.0, "{data}");
    assert_eq!(recent["error_rate_1m"], 0.0);
    let p99 = recent["p99_ms"].as_f64().expect("p99");
    assert!(
        p99 >= 40.0,
        "the slow request is the 99th percentile: {p99}"
    );
    assert!(recent["bytes_out_5m"].as_u64().expect("bytes") > 0);
    assert_eq!(data["sessions"][0]["transport"], client.transport.as_str());
    assert_eq!(data["refused"]["auth_failed"], 1, "{data}");
    assert_eq!(data["totals"]["tunnels"], 2);
    let overall = data["totals"]["error_rate_1m"].as_f64().expect("errors");
    assert!((overall - 3.0 / 34.0).abs() < 1e-6, "{overall}");

    // The page and its data take the token as basic auth's password, and only for reads.
    let page = request(admin, "GET", "/dashboard", &[], "").await;
    assert_eq!(page.status, 401);
    let challenge = page.headers["www-authenticate"].to_str().expect("ascii");
    assert!(challenge.starts_with("Basic realm="), "{challenge}");
    let auth = basic(TEST_ADMIN_TOKEN);
    let page = request(admin, "GET", "/dashboard", &[("authorization", &auth)], "").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("/dashboard/app.js"));
    let script = request(
        admin,
        "GET",
        "/dashboard/app.js",
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert!(script.body.contains("/dashboard/data"));
    let via_basic = request(
        admin,
        "GET",
        "/dashboard/data",
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(via_basic.status, 200);
    let wrong = basic("not-the-token");
    let refused = request(
        admin,
        "GET",
        "/dashboard/data",
        &[("authorization", &wrong)],
        "",
    )
    .await;
    assert_eq!(refused.status, 401);
    let change = request(
        admin,
        "PUT",
        "/api/v1/log-level",
        &[("authorization", &auth)],
        "debug",
    )
    .await;
    assert_eq!(change.status, 401, "basic auth never changes anything");
}
