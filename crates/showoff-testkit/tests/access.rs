//! Per-client tokens and name rules: patterns, kinds, limits, tenant isolation, revocation.

use showoff_client::ClientError;
use showoff_proto::{RefusedCode, TunnelKind};
use showoff_server::auth::{NamePattern, Principal, TokenEntry, TokenTable, token_hash};
use showoff_server::{NamePolicy, ServerConfig, Services};
use showoff_testkit::target::spawn_target;
use showoff_testkit::visitor::{connect_from, get, read_to_close, status_of};
use showoff_testkit::{TestClient, TestServer, eventually, refusal, tunnel};
use tokio::io::AsyncWriteExt;

fn alice() -> TokenEntry {
    TokenEntry {
        sha256: token_hash("alice-token"),
        principal: Principal {
            id: "alice".into(),
            names: vec![NamePattern::new("alice-*")],
            kinds: vec![TunnelKind::Http],
            max_tunnels: Some(2),
        },
    }
}

fn bob() -> TokenEntry {
    TokenEntry {
        sha256: token_hash("bob-token"),
        principal: Principal::unrestricted("bob"),
    }
}

fn with_table(table: TokenTable) -> Services {
    Services {
        token_table: Some(table),
        ..Services::default()
    }
}

async fn server_with(table: TokenTable, names: NamePolicy) -> TestServer {
    let config = ServerConfig {
        names,
        ..ServerConfig::ephemeral()
    };
    TestServer::start_with(config, with_table(table)).await
}

async fn start(
    server: &TestServer,
    token: &str,
    tunnels: Vec<showoff_client::TunnelConfig>,
) -> Result<TestClient, ClientError> {
    let mut config = TestClient::config(server, tunnels);
    config.token = token.into();
    // Refusals such as limit_reached are retried by default; here the first answer counts.
    config.reconnect = false;
    TestClient::start(config).await
}

#[tokio::test]
async fn a_token_is_held_to_its_names_kinds_and_limit() {
    let server = server_with(TokenTable::new(vec![alice(), bob()]), NamePolicy::default()).await;
    let target = spawn_target("a").await;
    let http = |name: Option<&str>| tunnel(TunnelKind::Http, name, target.addr);

    let (code, message) =
        refusal(start(&server, "alice-token", vec![http(Some("bob-site"))]).await);
    assert_eq!(code, RefusedCode::NameNotAllowed);
    assert!(message.contains("alice-*"), "{message}");
    let (code, message) = refusal(
        start(
            &server,
            "alice-token",
            vec![tunnel(TunnelKind::Tcp, Some("alice-db"), target.addr)],
        )
        .await,
    );
    assert_eq!(code, RefusedCode::KindNotAllowed);
    assert!(message.contains("tcp"), "{message}");
    let (code, _) = refusal(
        start(
            &server,
            "alice-token",
            vec![http(None), http(None), http(None)],
        )
        .await,
    );
    assert_eq!(code, RefusedCode::LimitReached);

    let first = start(
        &server,
        "alice-token",
        vec![http(None), http(Some("alice-web"))],
    )
    .await
    .expect("within limits");
    let random = &first.tunnels[0].name;
    assert!(
        random.starts_with("alice-"),
        "a random name inside the pattern: {random}"
    );
    assert_eq!(
        get(server.addrs.http, &server.host(random), "/")
            .await
            .status,
        200
    );
    // At the limit, a reconnect naming the same tunnel takes it over instead of counting twice.
    let again = start(&server, "alice-token", vec![http(Some("alice-web"))])
        .await
        .expect("takeover at the limit");
    assert_eq!(again.tunnels[0].name, "alice-web");
    // Another principal never gets alice's name.
    let (code, _) = refusal(start(&server, "bob-token", vec![http(Some("alice-web"))]).await);
    assert_eq!(code, RefusedCode::NameTaken);
    assert_eq!(
        refusal(start(&server, "mallory", vec![http(Some("x"))]).await).0,
        RefusedCode::AuthFailed
    );
}

#[tokio::test]
async fn revoking_a_token_closes_its_sessions_and_frees_its_names() {
    let table = TokenTable::new(vec![alice(), bob()]);
    let server = server_with(table.clone(), NamePolicy::default()).await;
    let target = spawn_target("a").await;
    let mut config = TestClient::config(
        &server,
        vec![tunnel(TunnelKind::Http, Some("alice-web"), target.addr)],
    );
    config.token = "alice-token".into();
    let client = TestClient::start(config).await.expect("alice");
    assert_eq!(
        get(server.addrs.http, &server.host("alice-web"), "/")
            .await
            .status,
        200
    );

    let revoked = table.replace(vec![bob()]);
    assert_eq!(revoked, vec!["alice".to_string()]);
    assert_eq!(server.handle.close_principal("alice"), 1);
    let handle = server.handle.clone();
    eventually("alice's session closed", || {
        handle.stats().sessions_active == 0
    })
    .await;
    assert_eq!(
        get(server.addrs.http, &server.host("alice-web"), "/")
            .await
            .status,
        404
    );
    // The client's reconnect is refused for good.
    match client.ended().await {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, RefusedCode::AuthFailed),
        other => panic!("expected auth_failed after revocation, got {other:?}"),
    }
    // The freed name is anyone's now.
    let bob = start(
        &server,
        "bob-token",
        vec![tunnel(TunnelKind::Http, Some("alice-web"), target.addr)],
    )
    .await;
    assert!(bob.is_ok(), "the revoked principal's name is free");
}

#[tokio::test]
async fn server_name_rules_say_which_rule_refused() {
    let policy = NamePolicy {
        allow: vec![NamePattern::new("team-*"), NamePattern::new("www")],
        reserved: vec!["www".into()],
        banned: vec!["team-evil".into()],
    };
    let server = server_with(TokenTable::new(vec![bob()]), policy).await;
    let target = spawn_target("a").await;
    let http = |name: Option<&str>| tunnel(TunnelKind::Http, name, target.addr);
    for (name, rule) in [
        ("www", "reserved"),
        ("team-evil", "banned"),
        ("other", "outside the names this server allows"),
    ] {
        let (code, message) = refusal(start(&server, "bob-token", vec![http(Some(name))]).await);
        assert_eq!(code, RefusedCode::NameNotAllowed, "{name}");
        assert!(message.contains(rule), "{name}: {message}");
    }
    let ok = start(&server, "bob-token", vec![http(None)])
        .await
        .expect("a random name inside the allow list");
    assert!(
        ok.tunnels[0].name.starts_with("team-"),
        "{}",
        ok.tunnels[0].name
    );
}

fn with_rules(
    mut config: showoff_client::TunnelConfig,
    rules: showoff_proto::VisitorRules,
) -> showoff_client::TunnelConfig {
    config.spec.visitors = rules;
    config
}

#[tokio::test]
async fn basic_auth_guards_a_tunnel_and_the_credentials_stay_at_the_edge() {
    let server = TestServer::default_config().await;
    let target = spawn_target("a").await;
    let rules = showoff_proto::VisitorRules {
        basic_auth: Some("ann:s3cret".into()),
        ..Default::default()
    };
    let _client = start(
        &server,
        "",
        vec![with_rules(
            tunnel(TunnelKind::Http, Some("private"), target.addr),
            rules,
        )],
    )
    .await
    .expect("session");
    let host = server.host("private");
    let addr = server.addrs.http;
    let anonymous = showoff_testkit::visitor::raw(
        addr,
        format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(
        showoff_testkit::visitor::status_of(&anonymous),
        401,
        "{anonymous}"
    );
    assert!(
        anonymous.contains("www-authenticate: Basic realm=\"showoff\""),
        "{anonymous}"
    );
    assert!(anonymous.contains("x-showoff-error: auth_required"));
    let wrong = showoff_testkit::visitor::raw(
        addr,
        format!("GET / HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic YW5uOndyb25n\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(showoff_testkit::visitor::status_of(&wrong), 401);
    let right = showoff_testkit::visitor::raw(
        addr,
        format!("GET / HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic YW5uOnMzY3JldA==\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(showoff_testkit::visitor::status_of(&right), 200, "{right}");
    assert!(
        !right.contains("authorization"),
        "the target never sees the tunnel's credentials: {right}"
    );
}

#[tokio::test]
async fn ip_rules_refuse_http_and_tcp_visitors() {
    let server = TestServer::default_config().await;
    let target = spawn_target("a").await;
    let deny_loopback = showoff_proto::VisitorRules {
        deny_ips: vec!["127.0.0.0/8".into()],
        ..Default::default()
    };
    let allow_elsewhere = showoff_proto::VisitorRules {
        allow_ips: vec!["192.0.2.0/24".into()],
        ..Default::default()
    };
    let allow_loopback = showoff_proto::VisitorRules {
        allow_ips: vec!["127.0.0.1".into()],
        ..Default::default()
    };
    let client = start(
        &server,
        "",
        vec![
            with_rules(
                tunnel(TunnelKind::Http, Some("denied"), target.addr),
                deny_loopback.clone(),
            ),
            with_rules(
                tunnel(TunnelKind::Http, Some("elsewhere"), target.addr),
                allow_elsewhere,
            ),
            with_rules(
                tunnel(TunnelKind::Http, Some("welcome"), target.addr),
                allow_loopback,
            ),
            with_rules(
                tunnel(TunnelKind::Tcp, Some("tcp-denied"), target.addr),
                deny_loopback,
            ),
        ],
    )
    .await
    .expect("session");
    for (name, status) in [("denied", 403), ("elsewhere", 403), ("welcome", 200)] {
        let reply = get(server.addrs.http, &server.host(name), "/").await;
        assert_eq!(reply.status, status, "{name}");
        if status == 403 {
            assert_eq!(reply.error_code(), Some("ip_forbidden"), "{name}");
        }
    }
    let port = client.tunnels[3].port.expect("tcp port");
    let answer = showoff_testkit::visitor::raw(
        ([127, 0, 0, 1], port).into(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(
        answer, "",
        "a denied TCP visitor is disconnected without a byte"
    );
    assert_eq!(
        target
            .stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "only the welcome visitor reached the target"
    );
}

#[tokio::test]
async fn invalid_visitor_rules_are_refused_by_name() {
    let server = TestServer::default_config().await;
    let target = spawn_target("a").await;
    let bad = showoff_proto::VisitorRules {
        allow_ips: vec!["10.0.0.0/33".into()],
        ..Default::default()
    };
    let (code, message) = refusal(
        start(
            &server,
            "",
            vec![with_rules(
                tunnel(TunnelKind::Http, Some("bad"), target.addr),
                bad,
            )],
        )
        .await,
    );
    assert_eq!(code, RefusedCode::BadRequest);
    assert!(message.contains("10.0.0.0/33"), "{message}");
    let tcp_auth = showoff_proto::VisitorRules {
        basic_auth: Some("a:b".into()),
        ..Default::default()
    };
    let (code, message) = refusal(
        start(
            &server,
            "",
            vec![with_rules(
                tunnel(TunnelKind::Tcp, Some("t"), target.addr),
                tcp_auth,
            )],
        )
        .await,
    );
    assert_eq!(code, RefusedCode::BadRequest);
    assert!(message.contains("HTTP tunnels only"), "{message}");
}

/// Collects audit events in memory.
#[derive(Clone, Default)]
struct Collected(std::sync::Arc<std::sync::Mutex<Vec<showoff_server::audit::AuditEvent>>>);

impl showoff_server::audit::AuditSink for Collected {
    fn record(&self, event: &showoff_server::audit::AuditEvent) {
        self.0.lock().expect("lock").push(event.clone());
    }
}

impl Collected {
    fn kinds(&self) -> Vec<(&'static str, Option<String>, &'static str)> {
        self.0
            .lock()
            .expect("lock")
            .iter()
            .map(|e| (e.event, e.principal.clone(), e.outcome))
            .collect()
    }
}

#[tokio::test]
async fn the_audit_log_records_who_did_what_and_how_it_ended() {
    let audit = Collected::default();
    let table = TokenTable::new(vec![alice(), bob()]);
    let services = Services {
        audit: showoff_server::audit::AuditLog::new(audit.clone()),
        ..with_table(table.clone())
    };
    let server = TestServer::start_with(ServerConfig::ephemeral(), services).await;
    let target = spawn_target("a").await;
    let http = |name: &str| tunnel(TunnelKind::Http, Some(name), target.addr);
    let first = start(&server, "alice-token", vec![http("alice-web")])
        .await
        .expect("alice");
    assert!(start(&server, "mallory", vec![http("x")]).await.is_err());
    let _again = start(&server, "alice-token", vec![http("alice-web")])
        .await
        .expect("takeover");
    assert!(
        start(
            &server,
            "alice-token",
            vec![http("alice-a"), http("alice-b")]
        )
        .await
        .is_err(),
        "over the limit"
    );
    drop(first);
    table.replace(vec![bob()]);
    server.handle.close_principal("alice");
    let handle = server.handle.clone();
    eventually("alice gone", || handle.stats().sessions_active == 0).await;
    let seen = audit.clone();
    eventually("the tunnel_closed events", || {
        seen.kinds()
            .iter()
            .filter(|(kind, _, _)| *kind == "tunnel_closed")
            .count()
            == 2
    })
    .await;

    let alice = Some("alice".to_string());
    let kinds = audit.kinds();
    for expected in [
        ("tunnel_opened", alice.clone(), "ok"),
        ("auth_ok", alice.clone(), "ok"),
        ("auth_failed", None, "refused"),
        ("takeover", alice.clone(), "ok"),
        ("session_refused", None, "refused"),
        ("revoked", alice.clone(), "ok"),
        ("tunnel_closed", alice.clone(), "ok"),
    ] {
        assert!(
            kinds.contains(&expected),
            "missing {expected:?} in {kinds:?}"
        );
    }
    let events = audit.0.lock().expect("lock").clone();
    let failed = events
        .iter()
        .find(|e| e.event == "auth_failed")
        .expect("auth_failed");
    assert_eq!(failed.code.as_deref(), Some("auth_failed"));
    assert!(
        failed
            .peer
            .as_deref()
            .is_some_and(|p| p.starts_with("127.0.0.1:"))
    );
    let refused = events
        .iter()
        .find(|e| e.event == "session_refused")
        .expect("refused");
    assert_eq!(refused.code.as_deref(), Some("limit_reached"));
    let opened = events
        .iter()
        .find(|e| e.event == "tunnel_opened")
        .expect("opened");
    assert_eq!(opened.names, vec!["alice-web".to_string()]);
    assert!(
        opened.time.ends_with('Z') && opened.time.len() == 24,
        "{}",
        opened.time
    );
}

#[tokio::test]
async fn caps_on_sessions_visitors_and_lifetime_hold() {
    let server = TestServer::start(ServerConfig {
        max_sessions: 1,
        max_visitors_per_tunnel: 1,
        tunnel_lifetime: Some(std::time::Duration::from_millis(1500)),
        heartbeat_interval: std::time::Duration::from_millis(50),
        ..ServerConfig::ephemeral()
    })
    .await;
    let target = spawn_target("a").await;
    let mut first = TestClient::start(TestClient::config(
        &server,
        vec![tunnel(TunnelKind::Http, Some("capped"), target.addr)],
    ))
    .await
    .expect("first session");
    let (code, message) = refusal(
        start(
            &server,
            "other",
            vec![tunnel(TunnelKind::Http, Some("second"), target.addr)],
        )
        .await,
    );
    assert_eq!(code, RefusedCode::LimitReached);
    assert!(message.contains("full"), "{message}");

    // One visitor at a time: a second concurrent request is refused, not queued.
    let (addr, host) = (server.addrs.http, server.host("capped"));
    let slow = tokio::spawn(async move { get(addr, &host, "/slow?ms=300").await });
    let stats = target.stats.clone();
    eventually("the slow request in flight", || {
        stats.requests.load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;
    let refused = get(server.addrs.http, &server.host("capped"), "/").await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.error_code(), Some("over_capacity"));
    assert_eq!(slow.await.expect("slow").status, 200);

    // The absolute lifetime closes the tunnel whatever its traffic.
    let event = first.next_event().await;
    assert!(
        matches!(&event, showoff_client::ClientEvent::TunnelClosed { reason, .. } if reason.contains("lifetime")),
        "{event:?}"
    );
    assert_eq!(
        get(server.addrs.http, &server.host("capped"), "/")
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn one_visitor_address_cannot_take_every_slot_of_a_tunnel() {
    // Issue 11, item 10: one address held every visitor slot of a tunnel (its requests queued
    // behind slow ones), so other visitors got 503.
    let server = TestServer::start(ServerConfig {
        max_visitors_per_tunnel: 10,
        max_visitors_per_tunnel_per_ip: 1,
        ..ServerConfig::ephemeral()
    })
    .await;
    let target = spawn_target("a").await;
    let _client = start(
        &server,
        "",
        vec![tunnel(TunnelKind::Http, Some("shared"), target.addr)],
    )
    .await
    .expect("session");
    let (addr, host) = (server.addrs.http, server.host("shared"));
    let request =
        |path: &str| format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    let mut slow = connect_from("127.0.0.1".parse().expect("ip"), addr).await;
    slow.write_all(request("/slow?ms=500").as_bytes())
        .await
        .expect("write");
    let stats = target.stats.clone();
    eventually("the slow request in flight", || {
        stats.requests.load(std::sync::atomic::Ordering::Relaxed) == 1
    })
    .await;
    let mut same = connect_from("127.0.0.1".parse().expect("ip"), addr).await;
    same.write_all(request("/").as_bytes())
        .await
        .expect("write");
    let refused = read_to_close(&mut same).await;
    assert_eq!(status_of(&refused), 429, "{refused}");
    assert!(
        refused.contains("x-showoff-error: visitor_over_capacity\r\n")
            && refused.contains("retry-after: 1\r\n"),
        "{refused}"
    );
    let mut other = connect_from("127.0.0.2".parse().expect("ip"), addr).await;
    other
        .write_all(request("/").as_bytes())
        .await
        .expect("write");
    assert_eq!(status_of(&read_to_close(&mut other).await), 200);
    assert_eq!(status_of(&read_to_close(&mut slow).await), 200);
}

#[tokio::test]
async fn rate_limits_hold_while_other_tenants_are_served() {
    let server = TestServer::start(ServerConfig {
        rates: showoff_server::RateConfig {
            visitor_per_ip: 0,
            tunnel_requests: 3,
            control_per_ip: 3,
            ..Default::default()
        },
        ..ServerConfig::ephemeral()
    })
    .await;
    let target = spawn_target("a").await;
    let _client = start(
        &server,
        "",
        vec![
            tunnel(TunnelKind::Http, Some("flooded"), target.addr),
            tunnel(TunnelKind::Http, Some("calm"), target.addr),
        ],
    )
    .await
    .expect("session");
    // Flood one tunnel at once: its burst of 3 passes (one more if the bucket refilled while
    // the flood ran on a slow machine), the rest get 429 with Retry-After.
    let host = server.host("flooded");
    let replies =
        futures_util::future::join_all((0..10).map(|_| get(server.addrs.http, &host, "/"))).await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    assert!((3..=4).contains(&ok), "{ok} passed");
    let limited: Vec<_> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!(limited.len(), 10 - ok);
    assert_eq!(limited[0].error_code(), Some("rate_limited"));
    assert!(limited[0].headers.contains_key("retry-after"));
    // The other tenant's tunnel is untouched.
    assert_eq!(
        get(server.addrs.http, &server.host("calm"), "/")
            .await
            .status,
        200
    );
    // Control connections: 1 used above, 2 more pass, the next is refused with the wait.
    for name in ["c1", "c2"] {
        start(
            &server,
            name,
            vec![tunnel(TunnelKind::Http, Some(name), target.addr)],
        )
        .await
        .expect("within the control rate");
    }
    let (code, message) = refusal(
        start(
            &server,
            "c3",
            vec![tunnel(TunnelKind::Http, Some("c3"), target.addr)],
        )
        .await,
    );
    assert_eq!(code, RefusedCode::RateLimited);
    assert!(message.contains("retry in"), "{message}");
}

#[tokio::test]
async fn visitor_rate_limits_are_per_address() {
    let server = TestServer::start(ServerConfig {
        rates: showoff_server::RateConfig {
            visitor_per_ip: 2,
            ..Default::default()
        },
        ..ServerConfig::ephemeral()
    })
    .await;
    let target = spawn_target("a").await;
    let host = server.host("site");
    let _client = start(
        &server,
        "",
        vec![tunnel(TunnelKind::Http, Some("site"), target.addr)],
    )
    .await
    .expect("session");
    let statuses: Vec<u16> =
        futures_util::future::join_all((0..6).map(|_| get(server.addrs.http, &host, "/")))
            .await
            .iter()
            .map(|r| r.status.as_u16())
            .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        4,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn new_tunnels_per_principal_are_rate_limited() {
    let config = ServerConfig {
        rates: showoff_server::RateConfig {
            tunnels_per_principal: 2,
            ..Default::default()
        },
        ..ServerConfig::ephemeral()
    };
    let table = TokenTable::new(vec![alice(), bob()]);
    let server = TestServer::start_with(config, with_table(table)).await;
    let target = spawn_target("a").await;
    let http = |name: &str| tunnel(TunnelKind::Http, Some(name), target.addr);
    let first = start(&server, "alice-token", vec![http("alice-1")])
        .await
        .expect("first tunnel");
    first.stop().await.expect("stop");
    let second = start(&server, "alice-token", vec![http("alice-2")])
        .await
        .expect("second tunnel");
    second.stop().await.expect("stop");
    // The third in the same minute is refused with the wait, although alice holds none now.
    let (code, message) = refusal(start(&server, "alice-token", vec![http("alice-3")]).await);
    assert_eq!(code, RefusedCode::RateLimited);
    assert!(
        message.contains("2 tunnels per minute") && message.contains("retry in"),
        "{message}"
    );
    // More at once than the limit allows at all is a limit, not a wait.
    let (code, _) = refusal(
        start(
            &server,
            "bob-token",
            vec![http("b1"), http("b2"), http("b3")],
        )
        .await,
    );
    assert_eq!(code, RefusedCode::LimitReached);
    for (code, want) in [("rate_limited", 1.0), ("limit_reached", 1.0)] {
        let sample = format!("showoff_sessions_refused_total{{code=\"{code}\"}}");
        assert_eq!(server.metric(&sample).await, Some(want), "{sample}");
    }
    // Another tenant is served meanwhile.
    let bob = start(&server, "bob-token", vec![http("bobs")])
        .await
        .expect("bob is not limited by alice");
    assert_eq!(
        get(server.addrs.http, &server.host("bobs"), "/")
            .await
            .status,
        200
    );
    bob.stop().await.expect("stop");
}

fn guessing_limits(per_minute: u32) -> ServerConfig {
    ServerConfig {
        rates: showoff_server::RateConfig {
            auth_failures_per_ip: per_minute,
            basic_auth_failures_per_ip: per_minute,
            ..Default::default()
        },
        ..ServerConfig::ephemeral()
    }
}

#[tokio::test]
async fn guessing_tokens_gets_the_address_refused_before_its_token_is_looked_at() {
    // Issue 11, item 11: failed logins per client address are limited by default.
    let table = TokenTable::new(vec![alice()]);
    let server = TestServer::start_with(guessing_limits(3), with_table(table)).await;
    let target = spawn_target("a").await;
    let http = || vec![tunnel(TunnelKind::Http, Some("alice-web"), target.addr)];
    for guess in 0..4 {
        let (code, _) = refusal(start(&server, &format!("guess-{guess}"), http()).await);
        assert_eq!(code, RefusedCode::AuthFailed, "guess {guess}");
    }
    let (code, message) = refusal(start(&server, "guess-5", http()).await);
    assert_eq!(code, RefusedCode::RateLimited);
    assert!(message.contains("too many failed logins"), "{message}");
    // Even the right token waits: the address is refused before any token is looked at.
    let mut config = TestClient::config(&server, http());
    config.token = "alice-token".into();
    config.reconnect = false;
    let ended = showoff_testkit::TestClient::start(config).await;
    assert!(
        matches!(
            &ended,
            Err(ClientError::Refused {
                code: RefusedCode::RateLimited,
                ..
            })
        ),
        "{:?}",
        ended.as_ref().err()
    );
    assert_eq!(
        server
            .metric("showoff_sessions_refused_total{code=\"rate_limited\"}")
            .await,
        Some(2.0)
    );
}

#[tokio::test]
async fn guessing_basic_auth_gets_429_before_the_credentials_are_looked_at() {
    let server = TestServer::start(guessing_limits(2)).await;
    let target = spawn_target("a").await;
    let rules = showoff_proto::VisitorRules {
        basic_auth: Some("ann:s3cret".into()),
        ..Default::default()
    };
    let private = with_rules(
        tunnel(TunnelKind::Http, Some("private"), target.addr),
        rules,
    );
    let _client = start(&server, "", vec![private]).await.expect("session");
    let host = server.host("private");
    let ask = |credentials: &str| {
        format!(
            "GET / HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic {credentials}\r\nConnection: close\r\n\r\n"
        )
    };
    let status = |response: &str| showoff_testkit::visitor::status_of(response);
    for _ in 0..3 {
        let wrong =
            showoff_testkit::visitor::raw(server.addrs.http, ask("YW5uOndyb25n").as_bytes()).await;
        assert_eq!(status(&wrong), 401, "{wrong}");
    }
    let right =
        showoff_testkit::visitor::raw(server.addrs.http, ask("YW5uOnMzY3JldA==").as_bytes()).await;
    assert_eq!(status(&right), 429, "{right}");
    assert!(
        right.contains("retry-after:") && right.contains("rate_limited"),
        "{right}"
    );
}
