//! TLS on the control and data listeners: the client verifies the server against a CA, refuses
//! an unknown one, can skip verification only when told to; mTLS admits certificates of the
//! configured CA (the certificate names the principal) and refuses other CAs, expired and
//! missing certificates; certificates reload without dropping sessions.

use showoff_client::{ClientConfig, ClientError, ClientTls};
use showoff_proto::TunnelKind;
use showoff_server::{PemPair, ServerConfig, TlsConfig};
use showoff_testkit::pki::TestCa;
use showoff_testkit::target::spawn_target;
use showoff_testkit::visitor::get;
use showoff_testkit::{TestClient, TestServer, tunnel};

async fn tls_server(ca: &TestCa, client_ca: Option<&TestCa>) -> TestServer {
    TestServer::start(ServerConfig {
        tls: TlsConfig {
            certificates: vec![ca.server(&["127.0.0.1", "localhost"])],
            client_ca: client_ca.map(|c| c.cert_pem.clone()),
            ..TlsConfig::default()
        },
        ..ServerConfig::ephemeral()
    })
    .await
}

async fn client_config(server: &TestServer, name: &str, tls: Option<ClientTls>) -> ClientConfig {
    let target = spawn_target("tls").await;
    let mut config = TestClient::config(
        server,
        vec![tunnel(TunnelKind::Http, Some(name), target.addr)],
    );
    std::mem::forget(target);
    config.reconnect = false;
    config.tls = tls;
    config
}

fn trusting(ca: &TestCa) -> ClientTls {
    ClientTls {
        ca: Some(ca.cert_pem.clone()),
        ..ClientTls::default()
    }
}

fn failure(result: Result<TestClient, ClientError>) -> String {
    match result {
        Err(ClientError::Failed(message)) => message,
        Err(other) => panic!("expected a connection failure, got {other}"),
        Ok(_) => panic!("expected a failure, got a session"),
    }
}

#[tokio::test]
async fn control_and_data_connections_speak_verified_tls() {
    let ca = TestCa::new("Showoff test CA");
    let server = tls_server(&ca, None).await;
    let client = TestClient::start(client_config(&server, "secure", Some(trusting(&ca))).await)
        .await
        .expect("a verified TLS session");
    // Visitors reach the target over TLS data connections (warm pool and dial-back alike).
    for _ in 0..3 {
        assert_eq!(
            get(server.addrs.http, &server.host("secure"), "/")
                .await
                .status,
            200
        );
    }
    client.stop().await.expect("stop");

    // A server certificate from an unknown CA is refused by the client.
    let stranger = TestCa::new("someone else");
    let message = failure(
        TestClient::start(client_config(&server, "x", Some(trusting(&stranger))).await).await,
    );
    assert!(
        message.contains("TLS handshake") && message.contains("UnknownIssuer"),
        "{message}"
    );
    // The webpki roots do not know a private CA either.
    let message = failure(
        TestClient::start(client_config(&server, "x", Some(ClientTls::default())).await).await,
    );
    assert!(message.contains("UnknownIssuer"), "{message}");
    // A plain client gets no session from a TLS server.
    assert!(
        TestClient::start(client_config(&server, "x", None).await)
            .await
            .is_err()
    );
    // Skipping verification works, for test set-ups.
    let skip = ClientTls {
        dangerously_skip_verify: true,
        ..ClientTls::default()
    };
    let client = TestClient::start(client_config(&server, "unchecked", Some(skip)).await)
        .await
        .expect("unverified session");
    client.stop().await.expect("stop");
}

fn with_identity(ca: &TestCa, identity: &PemPair) -> ClientTls {
    ClientTls {
        identity: Some((identity.cert.clone(), identity.key.clone())),
        ..trusting(ca)
    }
}

#[tokio::test]
async fn mutual_tls_admits_the_configured_ca_and_names_the_principal() {
    let server_ca = TestCa::new("server CA");
    let client_ca = TestCa::new("client CA");
    let server = tls_server(&server_ca, Some(&client_ca)).await;

    let good = client_ca.client("ci-runner");
    let client = TestClient::start(
        client_config(&server, "ci", Some(with_identity(&server_ca, &good))).await,
    )
    .await
    .expect("a certificate of the client CA");
    assert_eq!(
        get(server.addrs.http, &server.host("ci"), "/").await.status,
        200
    );
    assert_eq!(server.first_principal().await, "cert:ci-runner");
    client.stop().await.expect("stop");

    let other_ca = TestCa::new("other CA").client("ci-runner");
    let expired = client_ca.expired_client("ci-runner");
    for (what, tls) in [
        ("another CA", with_identity(&server_ca, &other_ca)),
        ("expired", with_identity(&server_ca, &expired)),
        ("no certificate", trusting(&server_ca)),
    ] {
        let result = TestClient::start(client_config(&server, "ci", Some(tls)).await).await;
        assert!(result.is_err(), "{what} must be refused");
    }
    assert_eq!(
        server
            .metric("showoff_sessions_refused_total{code=\"tls_handshake\"}")
            .await,
        Some(3.0)
    );
}

#[tokio::test]
async fn certificates_reload_without_dropping_sessions() {
    let old_ca = TestCa::new("old CA");
    let new_ca = TestCa::new("new CA");
    let server = tls_server(&old_ca, None).await;
    // A client that trusts both CAs, as during a planned CA rotation.
    let both = ClientTls {
        ca: Some(format!("{}{}", old_ca.cert_pem, new_ca.cert_pem)),
        ..ClientTls::default()
    };
    let client = TestClient::start(client_config(&server, "steady", Some(both)).await)
        .await
        .expect("session");
    // A broken reload is refused and changes nothing.
    let broken = PemPair {
        cert: "garbage".into(),
        key: "garbage".into(),
    };
    assert!(server.handle.reload_certificates(&[broken]).is_err());
    assert!(
        TestClient::start(client_config(&server, "a", Some(trusting(&old_ca))).await)
            .await
            .is_ok()
    );
    assert_eq!(
        server
            .handle
            .reload_certificates(&[new_ca.server(&["127.0.0.1"])]),
        Ok(1)
    );
    // New handshakes get the new certificate; the established session keeps working.
    let message = failure(
        TestClient::start(client_config(&server, "b", Some(trusting(&old_ca))).await).await,
    );
    assert!(message.contains("UnknownIssuer"), "{message}");
    TestClient::start(client_config(&server, "c", Some(trusting(&new_ca))).await)
        .await
        .expect("the new certificate");
    assert_eq!(
        get(server.addrs.http, &server.host("steady"), "/")
            .await
            .status,
        200
    );
    client.stop().await.expect("the old session is still up");
}
