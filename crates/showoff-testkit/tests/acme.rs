//! ACME against Debian's pebble on loopback: a fresh tunnel gets a certificate on demand through
//! HTTP-01 and visitors get a valid chain for it; configured names are certified through
//! TLS-ALPN-01 and renewed inside the renewal margin; certificates persist across restarts
//! without a new order; an unreachable ACME server and name churn are retried, guarded and
//! counted while serving goes on.

use std::time::Duration;

use showoff_client::ClientTls;
use showoff_proto::TunnelKind;
use showoff_server::{AcmeChallenge, AcmeConfig, ServerConfig, TlsConfig};
use showoff_testkit::pebble::Pebble;
use showoff_testkit::pki::TestCa;
use showoff_testkit::ports::steady_port;
use showoff_testkit::target::spawn_target;
use showoff_testkit::visitor::{get, https_get};
use showoff_testkit::{TestClient, TestServer, tunnel, within};

fn storage(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("showoff-acme-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A server whose control listener uses a test-CA certificate and whose public names come from
/// ACME at `directory`.
async fn server(ca: &TestCa, acme: AcmeConfig) -> TestServer {
    TestServer::start(ServerConfig {
        tls: TlsConfig {
            certificates: vec![ca.server(&["127.0.0.1"])],
            https_addr: Some("127.0.0.1:0".parse().expect("addr")),
            acme: Some(acme),
            ..TlsConfig::default()
        },
        domain: "tunnel.test".into(),
        ..ServerConfig::ephemeral()
    })
    .await
}

/// [`server`] with `acme`, then pebble on the server's HTTP and HTTPS ports, its API CA written
/// to `placeholder` (the file `acme.directory_ca` names, read only once an order starts).
async fn with_pebble(
    ca: &TestCa,
    port: u16,
    placeholder: &std::path::Path,
    acme: AcmeConfig,
) -> (TestServer, Pebble) {
    let server = server(ca, acme).await;
    let https = server.addrs.https.expect("https");
    let pebble = Pebble::start(port, server.addrs.http.port(), https.port()).await;
    std::fs::copy(&pebble.api_ca, placeholder).expect("pebble CA");
    (server, pebble)
}

/// A client config with HTTP tunnel `name` to a fresh target, trusting the control CA.
async fn tls_client(
    server: &TestServer,
    ca: &TestCa,
    name: &str,
) -> (
    showoff_client::ClientConfig,
    showoff_testkit::target::Target,
) {
    let target = spawn_target("acme").await;
    let mut config = TestClient::config(
        server,
        vec![tunnel(TunnelKind::Http, Some(name), target.addr)],
    );
    config.tls = Some(ClientTls {
        ca: Some(ca.cert_pem.clone()),
        ..ClientTls::default()
    });
    (config, target)
}

fn acme(directory: String, pebble_ca: std::path::PathBuf, store: std::path::PathBuf) -> AcmeConfig {
    AcmeConfig {
        directory,
        contact: vec!["mailto:ops@tunnel.test".into()],
        storage: store,
        directory_ca: Some(pebble_ca),
        challenge: AcmeChallenge::Http01,
        names: Vec::new(),
        on_demand: true,
        orders_per_hour: 10,
        renew_before: showoff_server::acme::DEFAULT_RENEW_BEFORE,
        retry_after: Duration::from_millis(200),
    }
}

async fn orders(server: &TestServer, code: &str) -> Option<f64> {
    let sample = format!("showoff_acme_orders_total{{code=\"{code}\"}}");
    server.metric(&sample).await
}

async fn wait_for_order(server: &TestServer, code: &str) {
    within("the ACME order", async {
        while orders(server, code).await.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_fresh_tunnel_gets_a_certificate_on_demand_and_keeps_it_across_restarts() {
    let ca = TestCa::new("control CA");
    let port = steady_port();
    let store = storage("http01");
    // The pebble CA file must exist before the server reads it; write it through pebble's
    // start, which needs the server's ports: start the server first, pebble second.
    let placeholder = std::env::temp_dir().join(format!("showoff-pebble-ca-{port}.pem"));
    let config = acme(
        Pebble::directory_for(port),
        placeholder.clone(),
        store.clone(),
    );
    let (server, pebble) = with_pebble(&ca, port, &placeholder, config.clone()).await;
    let https = server.addrs.https.expect("https");
    let (mut client_config, _target) = tls_client(&server, &ca, "fresh").await;
    let client = TestClient::start(client_config.clone())
        .await
        .expect("session");
    wait_for_order(&server, "ok").await;
    let root = pebble.root_pem().await;
    let visit = https_get(https, "fresh.tunnel.test", &root, &["http/1.1"], "/")
        .await
        .expect("a chain that verifies against pebble's root");
    assert_eq!(visit.reply.status, 200);
    // Stored with a private key only the owner can read.
    use std::os::unix::fs::PermissionsExt;
    let key_mode = std::fs::metadata(store.join("certs/fresh.tunnel.test.key"))
        .expect("stored key")
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    assert!(store.join("account.json").exists());
    client.stop().await.expect("stop");
    server.stop().await;

    // A restarted server serves the stored certificate at once, without ordering again.
    let again = self::server(&ca, config).await;
    let https = again.addrs.https.expect("https");
    client_config.server = again.addrs.control.to_string();
    let _client = TestClient::start(client_config).await.expect("session");
    let visit = https_get(https, "fresh.tunnel.test", &root, &[], "/")
        .await
        .expect("the stored certificate");
    assert_eq!(visit.reply.status, 200);
    assert_eq!(orders(&again, "ok").await, None, "no new order");
    let _ = std::fs::remove_dir_all(&store);
    let _ = std::fs::remove_file(&placeholder);
}

#[tokio::test]
async fn configured_names_are_certified_through_tls_alpn_01() {
    let ca = TestCa::new("control CA");
    let port = steady_port();
    let store = storage("alpn");
    let placeholder = std::env::temp_dir().join(format!("showoff-pebble-ca-{port}.pem"));
    let mut config = acme(
        Pebble::directory_for(port),
        placeholder.clone(),
        store.clone(),
    );
    config.challenge = AcmeChallenge::TlsAlpn01;
    config.names = vec!["edge.tunnel.test".into()];
    config.on_demand = false;
    // Longer than pebble's certificates live: every certificate is due for renewal at once.
    config.renew_before = Duration::from_secs(20 * 365 * 86_400);
    let (server, pebble) = with_pebble(&ca, port, &placeholder, config).await;
    let https = server.addrs.https.expect("https");
    wait_for_order(&server, "ok").await;
    let root = pebble.root_pem().await;
    let visit = https_get(https, "edge.tunnel.test", &root, &[], "/")
        .await
        .expect("the TLS-ALPN-01 certificate verifies");
    // No tunnel named "edge": the certificate is there, the page says so.
    assert_eq!(visit.reply.status, 404);
    // Renewal: a certificate inside the margin is ordered again and replaces the old one.
    within("a renewal", async {
        while orders(&server, "ok").await.unwrap_or(0.0) < 2.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let renewed = https_get(https, "edge.tunnel.test", &root, &[], "/")
        .await
        .expect("the renewed certificate verifies");
    assert_eq!(renewed.reply.status, 404);
    let _ = std::fs::remove_dir_all(&store);
    let _ = std::fs::remove_file(&placeholder);
}

#[tokio::test]
async fn an_unreachable_acme_server_is_retried_and_counted_while_serving_goes_on() {
    let ca = TestCa::new("control CA");
    let store = storage("down");
    let mut config = acme(
        Pebble::directory_for(steady_port()),
        std::path::PathBuf::from("/nonexistent-ca.pem"),
        store.clone(),
    );
    config.directory_ca = None;
    config.orders_per_hour = 1;
    let server = server(&ca, config).await;
    let target = spawn_target("down").await;
    let mut client_config = TestClient::config(
        &server,
        vec![
            tunnel(TunnelKind::Http, Some("plain"), target.addr),
            tunnel(TunnelKind::Http, Some("second"), target.addr),
        ],
    );
    client_config.tls = Some(ClientTls {
        ca: Some(ca.cert_pem.clone()),
        ..ClientTls::default()
    });
    let _client = TestClient::start(client_config).await.expect("session");
    wait_for_order(&server, "account_failed").await;
    // One on-demand order per hour: the second name is refused by the guard (and asked for
    // again when its tunnel next registers).
    wait_for_order(&server, "rate_guarded").await;
    // HTTP keeps working while certificates cannot be had.
    assert_eq!(
        get(server.addrs.http, &server.host("plain"), "/")
            .await
            .status,
        200
    );
    let _ = std::fs::remove_dir_all(&store);
}

#[tokio::test]
async fn an_unwritable_acme_store_still_serves_the_certificate() {
    // Issue 12 (chaos: the ACME store full or read-only): the certificate was stored before it
    // was installed, so a store that cannot be written threw the new certificate away and the
    // order failed again and again.
    let ca = TestCa::new("control CA");
    let port = steady_port();
    let file = storage("unwritable");
    std::fs::write(&file, "a file, so nothing can be created below it").expect("file");
    let placeholder = std::env::temp_dir().join(format!("showoff-pebble-ca-{port}.pem"));
    let config = acme(
        Pebble::directory_for(port),
        placeholder.clone(),
        file.join("store"),
    );
    let (server, pebble) = with_pebble(&ca, port, &placeholder, config).await;
    let https = server.addrs.https.expect("https");
    let (client_config, _target) = tls_client(&server, &ca, "unstored").await;
    let _client = TestClient::start(client_config).await.expect("session");
    wait_for_order(&server, "not_stored").await;
    let root = pebble.root_pem().await;
    let visit = https_get(https, "unstored.tunnel.test", &root, &["http/1.1"], "/")
        .await
        .expect("the certificate is served although it could not be stored");
    assert_eq!(visit.reply.status, 200);
    assert_eq!(orders(&server, "failed").await, None, "no order failed");
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&placeholder);
}
