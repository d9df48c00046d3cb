//! Per-client tokens and name rules: patterns, kinds, limits, tenant isolation, revocation.

use showoff_client::ClientError;
use showoff_proto::{RefusedCode, TunnelKind};
use showoff_server::auth::{NamePattern, Principal, TokenEntry, TokenTable, token_hash};
use showoff_server::{NamePolicy, ServerConfig};
use showoff_testkit::target::spawn_target;
use showoff_testkit::visitor::get;
use showoff_testkit::{TestClient, TestServer, eventually, tunnel};

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

async fn server_with(table: TokenTable, names: NamePolicy) -> TestServer {
    TestServer::start(ServerConfig {
        token_table: Some(table),
        names,
        ..ServerConfig::ephemeral()
    })
    .await
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

fn refusal(result: Result<TestClient, ClientError>) -> (RefusedCode, String) {
    match result {
        Err(ClientError::Refused { code, message }) => (code, message),
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, got a session"),
    }
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
