//! Self-contained credentials and policies, end to end with real clients: signed tokens, JWTs,
//! an in-process Rego policy and an OPA-shaped decision webhook — the accepted client, then the
//! attacker's tries (tampered, expired, foreign, denied), then a decision service that fails.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use showoff_client::ClientError;
use showoff_proto::{RefusedCode, TunnelKind};
use showoff_server::auth::jwt::{JwtConfig, JwtKey};
use showoff_server::auth::signed::{SignedClaims, sign};
use showoff_server::auth::{Grant, token_hash};
use showoff_server::{AuthConfig, PolicyConfig, Secret, ServerConfig, WebhookConfig};
use showoff_testkit::target::spawn_target;
use showoff_testkit::visitor::get;
use showoff_testkit::{TestClient, TestServer, refusal, tunnel};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const SECRET: &str = "a-server-secret-of-32-bytes-long";

async fn server(auth: AuthConfig) -> TestServer {
    TestServer::start(ServerConfig {
        auth,
        ..ServerConfig::ephemeral()
    })
    .await
}

async fn start(server: &TestServer, token: &str, name: &str) -> Result<TestClient, ClientError> {
    let target = spawn_target("t").await;
    let mut config = TestClient::config(
        server,
        vec![tunnel(TunnelKind::Http, Some(name), target.addr)],
    );
    config.token = token.into();
    config.reconnect = false;
    let client = TestClient::start(config).await?;
    // The tunnel answers: the session is real, not just accepted.
    assert_eq!(
        get(server.addrs.http, &server.host(name), "/").await.status,
        200
    );
    std::mem::forget(target);
    Ok(client)
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

#[tokio::test]
async fn signed_tokens_carry_their_grant_and_cannot_be_forged() {
    let server = server(AuthConfig {
        signed_secret: Some(Secret::new(SECRET)),
        ..AuthConfig::default()
    })
    .await;
    let claims = |exp| SignedClaims {
        sub: "alice".into(),
        exp,
        grant: Grant {
            names: vec!["alice-*".into()],
            ..Grant::default()
        },
    };
    let token = sign(&Secret::new(SECRET), &claims(now() + 600));
    let client = start(&server, &token, "alice-web")
        .await
        .expect("genuine token");
    client.stop().await.expect("stop");
    // Outside the token's names.
    let (code, message) = refusal(start(&server, &token, "bob-web").await);
    assert_eq!(code, RefusedCode::NameNotAllowed);
    assert!(message.contains("alice-*"), "{message}");
    // Expired.
    let expired = sign(&Secret::new(SECRET), &claims(now() - 1));
    let (code, message) = refusal(start(&server, &expired, "alice-web").await);
    assert_eq!(
        (code, message.as_str()),
        (RefusedCode::AuthFailed, "the token has expired")
    );
    // Widened payload with the original signature, and a token from another secret.
    let (signing_input, signature) = token.rsplit_once('.').expect("signature");
    let _ = signing_input;
    let mut wide = claims(now() + 600);
    wide.grant.names.clear();
    let forged_payload = sign(&Secret::new("attacker-guess"), &wide);
    let (forged_input, _) = forged_payload.rsplit_once('.').expect("signature");
    for bad in [
        format!("{forged_input}.{signature}"),
        forged_payload.clone(),
    ] {
        let (code, message) = refusal(start(&server, &bad, "bob-web").await);
        assert_eq!(
            (code, message.as_str()),
            (RefusedCode::AuthFailed, "the token was not accepted")
        );
    }
    assert_eq!(
        server.metric("showoff_auth_failures_total").await,
        Some(3.0)
    );
}

#[tokio::test]
async fn jwts_are_checked_for_signature_issuer_audience_and_expiry() {
    let server = server(AuthConfig {
        jwt: Some(JwtConfig {
            key: JwtKey::Secret(Secret::new(SECRET)),
            issuer: Some("https://login.example".into()),
            audience: Some("showoff".into()),
            names_claim: "tunnels".into(),
        }),
        ..AuthConfig::default()
    })
    .await;
    let jwt = |claims: Value, key: &str| {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(key.as_bytes()),
        )
        .expect("jwt")
    };
    let good = json!({
        "sub": "carol", "iss": "https://login.example", "aud": "showoff",
        "exp": now() + 600, "tunnels": ["carol-*"],
    });
    let client = start(&server, &jwt(good.clone(), SECRET), "carol-api")
        .await
        .expect("valid JWT");
    assert_eq!(server.first_principal().await, "jwt:carol");
    client.stop().await.expect("stop");

    let (code, _) = refusal(start(&server, &jwt(good.clone(), SECRET), "dave-api").await);
    assert_eq!(code, RefusedCode::NameNotAllowed);
    let mut cases = Vec::new();
    let mut expired = good.clone();
    expired["exp"] = json!(now() - 3600);
    cases.push((jwt(expired, SECRET), "the token has expired"));
    let mut issuer = good.clone();
    issuer["iss"] = json!("https://evil.example");
    cases.push((
        jwt(issuer, SECRET),
        "the token was not issued for this server (issuer)",
    ));
    let mut audience = good.clone();
    audience["aud"] = json!("another-service");
    cases.push((
        jwt(audience, SECRET),
        "the token was not issued for this server (audience)",
    ));
    cases.push((
        jwt(good.clone(), "a-different-secret-of-32-bytes!!"),
        "the token was not accepted",
    ));
    // Tampered: the payload says "admin" under carol's signature.
    let real = jwt(good.clone(), SECRET);
    let parts: Vec<&str> = real.split('.').collect();
    let mut admin = good;
    admin["sub"] = json!("admin");
    let other = jwt(admin, "x-different-secret-of-32-bytes!!");
    let other_payload = other.split('.').nth(1).expect("payload");
    cases.push((
        format!("{}.{other_payload}.{}", parts[0], parts[2]),
        "the token was not accepted",
    ));
    for (token, want) in cases {
        let (code, message) = refusal(start(&server, &token, "carol-api").await);
        assert_eq!((code, message.as_str()), (RefusedCode::AuthFailed, want));
    }
}

const POLICY: &str = r#"
package showoff

import rego.v1

default authz := false

teams := {
    # sha256("team-red-token")
    "TEAM_RED_HASH": {"id": "red", "names": ["red-*"]},
}

authz := object.union(teams[input.token_sha256], {"allow": true}) if {
    teams[input.token_sha256]
    not input.token_sha256 == "BLOCKED_HASH"
}

authz := {"allow": false, "reason": "this token is suspended"} if {
    input.token_sha256 == "BLOCKED_HASH"
}
"#;

#[tokio::test]
async fn rego_policies_decide_who_gets_in_and_with_which_names() {
    let rego = POLICY
        .replace("TEAM_RED_HASH", &token_hash("team-red-token"))
        .replace("BLOCKED_HASH", &token_hash("suspended-token"));
    let server = server(AuthConfig {
        policy: Some(PolicyConfig {
            path: "authz.rego".into(),
            rego,
            rule: "data.showoff.authz".into(),
        }),
        ..AuthConfig::default()
    })
    .await;
    let client = start(&server, "team-red-token", "red-app")
        .await
        .expect("allowed");
    assert_eq!(server.first_principal().await, "policy:red");
    client.stop().await.expect("stop");
    let (code, _) = refusal(start(&server, "team-red-token", "blue-app").await);
    assert_eq!(code, RefusedCode::NameNotAllowed);
    let (code, message) = refusal(start(&server, "suspended-token", "red-app").await);
    assert_eq!(
        (code, message.as_str()),
        (
            RefusedCode::AuthFailed,
            "denied by policy: this token is suspended"
        )
    );
    let (code, _) = refusal(start(&server, "unknown-token", "red-app").await);
    assert_eq!(code, RefusedCode::AuthFailed);
}

/// A decision service: answers each POST with `answer(input)` and records the inputs.
struct Webhook {
    addr: SocketAddr,
    inputs: Arc<Mutex<Vec<Value>>>,
}

async fn webhook(answer: fn(&Value) -> (u16, String, Duration)) -> Webhook {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let inputs = Arc::new(Mutex::new(Vec::new()));
    let seen = inputs.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            stream.set_nodelay(true).expect("nodelay");
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read the head, then Content-Length bytes of body.
                let (head_end, length) = loop {
                    let n = stream.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        assert!(head.starts_with("post /v1/data/showoff/authz "), "{head}");
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .expect("content-length");
                        break (end + 4, length);
                    }
                };
                while buf.len() < head_end + length {
                    let n = stream.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body: Value = serde_json::from_slice(&buf[head_end..]).expect("json body");
                let input = body["input"].clone();
                seen.lock().expect("lock").push(input.clone());
                let (status, text, delay) = answer(&input);
                tokio::time::sleep(delay).await;
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    Webhook { addr, inputs }
}

fn decide(input: &Value) -> (u16, String, Duration) {
    let answer = match input["token"].as_str() {
        Some("dana-token") => {
            json!({"result": {"allow": true, "id": "dana", "names": ["dana-*"], "kinds": ["http"]}})
        }
        Some("denied-token") => {
            json!({"result": {"allow": false, "reason": "not on the guest list"}})
        }
        Some("slow-token") => {
            return (
                200,
                json!({"result": true}).to_string(),
                Duration::from_secs(5),
            );
        }
        Some("broken-token") => return (500, "{}".into(), Duration::ZERO),
        Some("garbage-token") => return (200, "<html>".into(), Duration::ZERO),
        _ => json!({}),
    };
    (200, answer.to_string(), Duration::ZERO)
}

#[tokio::test]
async fn a_decision_webhook_admits_denies_and_fails_closed() {
    let hook = webhook(decide).await;
    let server = server(AuthConfig {
        webhook: Some(WebhookConfig {
            url: format!("http://{}/v1/data/showoff/authz", hook.addr),
            timeout: Duration::from_millis(500),
        }),
        ..AuthConfig::default()
    })
    .await;
    let client = start(&server, "dana-token", "dana-site")
        .await
        .expect("admitted");
    assert_eq!(server.first_principal().await, "policy:dana");
    client.stop().await.expect("stop");
    let input = hook.inputs.lock().expect("lock")[0].clone();
    assert_eq!(input["token"], "dana-token");
    assert_eq!(input["token_sha256"], token_hash("dana-token"));
    assert_eq!(input["peer"]["ip"], "127.0.0.1");

    let (code, message) = refusal(start(&server, "denied-token", "x").await);
    assert_eq!(
        (code, message.as_str()),
        (
            RefusedCode::AuthFailed,
            "denied by policy: not on the guest list"
        )
    );
    // Undefined result (OPA's answer when no rule matched).
    let (code, _) = refusal(start(&server, "stranger", "x").await);
    assert_eq!(code, RefusedCode::AuthFailed);
    // Failures refuse (never admit) with a retryable code.
    for (token, want) in [
        (
            "slow-token",
            "authentication is unavailable: the decision service timed out",
        ),
        (
            "broken-token",
            "authentication is unavailable: the decision service failed",
        ),
        (
            "garbage-token",
            "authentication is unavailable: the decision service failed",
        ),
    ] {
        let (code, message) = refusal(start(&server, token, "x").await);
        assert_eq!(
            (code, message.as_str()),
            (RefusedCode::AuthUnavailable, want),
            "{token}"
        );
    }
    // Other authenticators keep working when the webhook is down.
    drop(hook);
}
