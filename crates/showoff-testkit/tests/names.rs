//! Names: validation, random names, conflicts between principals, takeover by the same one.

use showoff_client::ClientError;
use showoff_proto::{RefusedCode, TunnelKind};
use showoff_server::{Secret, ServerConfig};
use showoff_testkit::target::spawn_target;
use showoff_testkit::visitor::get;
use showoff_testkit::{TestClient, TestServer, eventually, refusal, tunnel};

#[tokio::test]
async fn invalid_names_are_refused_with_the_rule() {
    let server = TestServer::default_config().await;
    let target = spawn_target("a").await;
    for bad in ["-dash", "UPPER", "has.dot", "under_score", &"x".repeat(64)] {
        let config = TestClient::config(
            &server,
            vec![tunnel(TunnelKind::Http, Some(bad), target.addr)],
        );
        let (code, message) = refusal(TestClient::start(config).await);
        assert_eq!(code, RefusedCode::NameNotAllowed, "{bad}");
        assert!(message.contains("a-z, 0-9 and '-'"), "{message}");
    }
}

#[tokio::test]
async fn a_tunnel_without_a_name_gets_a_readable_random_one() {
    let server = TestServer::default_config().await;
    let target = spawn_target("a").await;
    let client = TestClient::start(TestClient::config(
        &server,
        vec![tunnel(TunnelKind::Http, None, target.addr)],
    ))
    .await
    .expect("session");
    let name = &client.tunnels[0].name;
    assert_eq!(name.split('-').count(), 3, "{name}");
    assert_eq!(
        get(server.addrs.http, &server.host(name), "/").await.status,
        200
    );
}

/// A server accepting the tokens of alice and bob.
async fn two_tokens() -> TestServer {
    TestServer::start(ServerConfig {
        tokens: vec![Secret::new("alice-token"), Secret::new("bob-token")],
        ..ServerConfig::ephemeral()
    })
    .await
}

/// A client config for one tunnel `name` of `kind` towards `target`, with `token`.
fn with_token(
    server: &TestServer,
    kind: TunnelKind,
    name: &str,
    target: std::net::SocketAddr,
    token: &str,
) -> showoff_client::ClientConfig {
    let mut config = TestClient::config(server, vec![tunnel(kind, Some(name), target)]);
    config.token = token.into();
    config
}

#[tokio::test]
async fn a_name_held_by_another_token_is_refused() {
    let server = two_tokens().await;
    let target = spawn_target("a").await;
    let alice = with_token(
        &server,
        TunnelKind::Http,
        "shared",
        target.addr,
        "alice-token",
    );
    let _alice = TestClient::start(alice).await.expect("alice");
    let bob = with_token(
        &server,
        TunnelKind::Http,
        "shared",
        target.addr,
        "bob-token",
    );
    let (code, message) = refusal(TestClient::start(bob).await);
    assert_eq!(code, RefusedCode::NameTaken);
    assert!(message.contains("in use by another client"), "{message}");
    let mallory = with_token(&server, TunnelKind::Http, "other", target.addr, "guess");
    assert_eq!(
        refusal(TestClient::start(mallory).await).0,
        RefusedCode::AuthFailed
    );
}

#[tokio::test]
async fn the_same_token_reconnecting_takes_its_name_over_at_once() {
    let server = TestServer::default_config().await;
    let (old_target, new_target) = (spawn_target("old").await, spawn_target("new").await);
    let mut first = with_token(&server, TunnelKind::Http, "laptop", old_target.addr, "me");
    first.reconnect = false;
    let first = TestClient::start(first).await.expect("first");
    let second = with_token(&server, TunnelKind::Http, "laptop", new_target.addr, "me");
    let _second = TestClient::start(second).await.expect("takeover");
    assert_eq!(
        get(server.addrs.http, &server.host("laptop"), "/")
            .await
            .echo()["target"],
        "new"
    );
    let ended = first.stop().await;
    assert!(
        ended.is_err(),
        "the stale session was closed by the server: {ended:?}"
    );
    let handle = server.handle.clone();
    eventually("one session left", || handle.stats().sessions_active == 1).await;
    assert_eq!(
        get(server.addrs.http, &server.host("laptop"), "/")
            .await
            .echo()["target"],
        "new"
    );
}

#[tokio::test]
async fn a_refused_tunnel_does_not_keep_its_name_from_others() {
    // A TLS tunnel on a server without the HTTPS listener is refused after its name was
    // claimed; the name must not stay held by the session that never got it.
    let server = two_tokens().await;
    let target = spawn_target("a").await;
    let alice = with_token(
        &server,
        TunnelKind::Tls,
        "shared",
        target.addr,
        "alice-token",
    );
    let (code, _) = refusal(TestClient::start(alice).await);
    assert_eq!(code, RefusedCode::KindNotAllowed);
    let bob = with_token(
        &server,
        TunnelKind::Http,
        "shared",
        target.addr,
        "bob-token",
    );
    let _bob = TestClient::start(bob)
        .await
        .expect("the name is free for bob");
    assert_eq!(
        get(server.addrs.http, &server.host("shared"), "/")
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn two_clients_with_one_token_do_not_fight_over_a_name() {
    // Issue 11, item 3: the replaced client used to reconnect at once and take the name back,
    // about five times a second each, forever. Now it is told it was replaced and stops.
    let server = TestServer::default_config().await;
    let (old_target, new_target) = (spawn_target("old").await, spawn_target("new").await);
    let first = with_token(&server, TunnelKind::Http, "shared", old_target.addr, "me");
    let first = TestClient::start(first).await.expect("first");
    let second = with_token(&server, TunnelKind::Http, "shared", new_target.addr, "me");
    let mut second = TestClient::start(second).await.expect("takeover");
    match first.ended().await {
        Err(ClientError::Refused { code, message }) => {
            assert_eq!(code, RefusedCode::Replaced);
            assert_eq!(
                message,
                "another client with the same token took over shared"
            );
        }
        other => panic!("the replaced client should stop, got {other:?}"),
    }
    let handle = server.handle.clone();
    eventually("one session left", || handle.stats().sessions_active == 1).await;
    assert_eq!(
        get(server.addrs.http, &server.host("shared"), "/")
            .await
            .echo()["target"],
        "new"
    );
    assert!(!second.has_event(), "the new session was left alone");
}
