//! TLS passthrough tunnels (`showoff tls`): the HTTPS listener routes a visitor by SNI to the
//! client without terminating TLS, so the certificate and the plaintext stay with the client's
//! own service; other names on the same listener are still terminated by the server.

use showoff_client::{ClientError, ClientTls};
use showoff_proto::{RefusedCode, TunnelKind, VisitorRules};
use showoff_server::{PemPair, ServerConfig, TlsConfig};
use showoff_testkit::pki::TestCa;
use showoff_testkit::target::{spawn_target, tls_service};
use showoff_testkit::visitor::https_get;
use showoff_testkit::{TestClient, TestServer, refusal, tunnel};

async fn server(certificates: Vec<PemPair>) -> TestServer {
    TestServer::start(ServerConfig {
        tls: TlsConfig {
            certificates,
            https_addr: Some("127.0.0.1:0".parse().expect("addr")),
            ..TlsConfig::default()
        },
        domain: "tunnel.test".into(),
        ..ServerConfig::ephemeral()
    })
    .await
}

#[tokio::test]
async fn tls_tunnels_are_routed_by_sni_without_termination() {
    let server_ca = TestCa::new("server CA");
    let service_ca = TestCa::new("the client's own CA");
    let server = server(vec![server_ca.server(&["*.tunnel.test", "127.0.0.1"])]).await;
    let service = tls_service(service_ca.server(&["db.tunnel.test"]), "end to end").await;
    let web = spawn_target("web").await;
    let mut config = TestClient::config(
        &server,
        vec![
            tunnel(TunnelKind::Tls, Some("db"), service),
            tunnel(TunnelKind::Http, Some("web"), web.addr),
        ],
    );
    config.tls = Some(ClientTls {
        ca: Some(server_ca.cert_pem.clone()),
        ..ClientTls::default()
    });
    let client = TestClient::start(config).await.expect("session");
    let https = server.addrs.https.expect("https");
    assert_eq!(
        client.tunnels[0].public_url,
        format!("tls://db.tunnel.test:{}", https.port())
    );
    // The visitor verifies the service's own certificate: the server never terminated TLS.
    let seen = https_get(https, "db.tunnel.test", &service_ca.cert_pem, &[], "/")
        .await
        .expect("passthrough");
    assert_eq!(
        (seen.reply.status.as_u16(), seen.reply.body.as_str()),
        (200, "end to end")
    );
    // The same listener still terminates for HTTP tunnels with the server's certificate.
    let terminated = https_get(https, "web.tunnel.test", &server_ca.cert_pem, &[], "/")
        .await
        .expect("terminated");
    assert_eq!(terminated.reply.status, 200);
    // A visitor expecting the server's certificate on the passthrough name is refused: the
    // service's certificate is what it gets.
    assert!(
        https_get(https, "db.tunnel.test", &server_ca.cert_pem, &[], "/")
            .await
            .is_err()
    );
}

#[tokio::test]
async fn passthrough_alone_needs_no_certificate_and_keeps_ip_rules() {
    let server = server(Vec::new()).await;
    let service_ca = TestCa::new("service CA");
    let service = tls_service(service_ca.server(&["vault.tunnel.test"]), "sealed").await;
    let mut denied = tunnel(TunnelKind::Tls, Some("closed"), service);
    denied.spec.visitors = VisitorRules {
        deny_ips: vec!["127.0.0.0/8".into()],
        ..VisitorRules::default()
    };
    let _client = TestClient::start(TestClient::config(
        &server,
        vec![tunnel(TunnelKind::Tls, Some("vault"), service), denied],
    ))
    .await
    .expect("session");
    let https = server.addrs.https.expect("https");
    let seen = https_get(https, "vault.tunnel.test", &service_ca.cert_pem, &[], "/")
        .await
        .expect("passthrough");
    assert_eq!(seen.reply.body, "sealed");
    // The tunnel's IP rules hold before anything reaches the client.
    assert!(
        https_get(https, "closed.tunnel.test", &service_ca.cert_pem, &[], "/")
            .await
            .is_err()
    );
    // Unknown names have nowhere to go without a certificate: the connection is closed.
    assert!(
        https_get(https, "nobody.tunnel.test", &service_ca.cert_pem, &[], "/")
            .await
            .is_err()
    );
}

#[tokio::test]
async fn tls_tunnels_need_an_https_listener() {
    let server = TestServer::default_config().await;
    let target = spawn_target("x").await;
    let mut config = TestClient::config(
        &server,
        vec![tunnel(TunnelKind::Tls, Some("db"), target.addr)],
    );
    config.reconnect = false;
    let result: Result<TestClient, ClientError> = TestClient::start(config).await;
    let (code, message) = refusal(result);
    assert_eq!(code, RefusedCode::KindNotAllowed);
    assert!(message.contains("--https-addr"), "{message}");
}
