//! The public HTTPS listener: certificates chosen by SNI (the wildcard for tunnel names, an
//! explicit one for another name), `X-Forwarded-Proto: https`, the redirect from HTTP, reloads.

use showoff_proto::TunnelKind;
use showoff_server::{ServerConfig, TlsConfig};
use showoff_testkit::pki::TestCa;
use showoff_testkit::target::spawn_target;
use showoff_testkit::visitor::{get, https_get};
use showoff_testkit::{TestClient, TestServer, tunnel, within};

async fn https_server(ca: &TestCa, redirect_http: bool) -> TestServer {
    TestServer::start(ServerConfig {
        tls: TlsConfig {
            certificates: vec![
                ca.server(&["*.tunnel.test", "tunnel.test", "127.0.0.1"]),
                ca.server(&["app.customer.test"]),
            ],
            https_addr: Some("127.0.0.1:0".parse().expect("addr")),
            redirect_http,
            ..TlsConfig::default()
        },
        domain: "tunnel.test".into(),
        ..ServerConfig::ephemeral()
    })
    .await
}

async fn client(server: &TestServer, ca: &TestCa, name: &str) -> TestClient {
    let target = spawn_target("secure").await;
    let mut config = TestClient::config(
        server,
        vec![tunnel(TunnelKind::Http, Some(name), target.addr)],
    );
    std::mem::forget(target);
    config.tls = Some(showoff_client::ClientTls {
        ca: Some(ca.cert_pem.clone()),
        ..Default::default()
    });
    TestClient::start(config).await.expect("session")
}

#[tokio::test]
async fn visitors_get_https_with_the_certificate_their_name_selects() {
    let ca = TestCa::new("https CA");
    let server = https_server(&ca, false).await;
    let client = client(&server, &ca, "shop").await;
    let https = server.addrs.https.expect("https listener");
    assert_eq!(
        client.tunnels[0].public_url,
        format!("https://shop.tunnel.test:{}", https.port())
    );

    let seen = https_get(
        https,
        "shop.tunnel.test",
        &ca.cert_pem,
        &["http/1.1"],
        "/cart",
    )
    .await
    .expect("the wildcard certificate verifies for the tunnel name");
    assert_eq!(seen.reply.status, 200);
    assert_eq!(seen.alpn.as_deref(), Some("http/1.1"));
    let echo = seen.reply.echo();
    assert_eq!(echo["headers"]["x-forwarded-proto"][0], "https");
    assert_eq!(echo["path"], "/cart");
    // The explicit certificate answers its own name (no tunnel there: 404 over TLS).
    let custom = https_get(https, "app.customer.test", &ca.cert_pem, &[], "/")
        .await
        .expect("the explicit certificate verifies");
    assert_eq!(custom.reply.status, 404);
    assert_eq!(custom.reply.error_code(), Some("tunnel_not_found"));
    // A client that trusts another CA refuses the server.
    let stranger = TestCa::new("stranger");
    let refused = https_get(https, "shop.tunnel.test", &stranger.cert_pem, &[], "/").await;
    assert!(refused.is_err_and(|e| e.contains("UnknownIssuer")));
    // Plain HTTP still works when no redirect is asked for.
    assert_eq!(
        get(server.addrs.http, &server.host("shop"), "/")
            .await
            .status,
        200
    );
    // Not TLS at all on the HTTPS port: the connection is closed, nothing else breaks.
    let junk =
        showoff_testkit::visitor::raw(https, b"GET / HTTP/1.1\r\nhost: shop.tunnel.test\r\n\r\n")
            .await;
    assert!(junk.is_empty(), "{junk}");
    assert_eq!(
        https_get(https, "shop.tunnel.test", &ca.cert_pem, &[], "/")
            .await
            .expect("still serving")
            .reply
            .status,
        200
    );
}

#[tokio::test]
async fn plain_http_redirects_to_https_when_asked() {
    let ca = TestCa::new("https CA");
    let server = https_server(&ca, true).await;
    let _client = client(&server, &ca, "shop").await;
    let https = server.addrs.https.expect("https listener");
    let reply = get(server.addrs.http, &server.host("shop"), "/a?b=c").await;
    assert_eq!(reply.status, 308);
    assert_eq!(
        reply.headers["location"],
        format!("https://shop.tunnel.test:{}/a?b=c", https.port()).as_str()
    );
}

#[tokio::test]
async fn https_certificates_reload_for_new_handshakes() {
    let ca = TestCa::new("rotating CA");
    let server = https_server(&ca, false).await;
    let _client = client(&server, &ca, "shop").await;
    let https = server.addrs.https.expect("https listener");
    let before = https_get(https, "added.example", &ca.cert_pem, &[], "/").await;
    assert!(before.is_err_and(|e| e.contains("not valid for name")));
    server
        .handle
        .reload_certificates(&[ca.server(&["*.tunnel.test", "127.0.0.1", "added.example"])])
        .expect("reload");
    // The new certificate covers the added name (no tunnel there: 404, over verified TLS).
    let after = https_get(https, "added.example", &ca.cert_pem, &[], "/")
        .await
        .expect("the reloaded certificate");
    assert_eq!(after.reply.status, 404);
    // Tunnels keep working through the reload.
    for _ in 0..3 {
        let reply = https_get(https, "shop.tunnel.test", &ca.cert_pem, &[], "/")
            .await
            .expect("tunnel");
        assert_eq!(reply.reply.status, 200);
    }
}

#[tokio::test]
async fn http2_visitors_are_served_by_alpn() {
    let ca = TestCa::new("h2 CA");
    let server = https_server(&ca, false).await;
    let _client = client(&server, &ca, "fast").await;
    let https = server.addrs.https.expect("https listener");
    let seen = https_get(
        https,
        "fast.tunnel.test",
        &ca.cert_pem,
        &["h2", "http/1.1"],
        "/h2?x=1",
    )
    .await
    .expect("h2");
    assert_eq!(seen.alpn.as_deref(), Some("h2"));
    assert_eq!(seen.reply.status, 200);
    let echo = seen.reply.echo();
    assert_eq!(echo["path"], "/h2?x=1");
    assert_eq!(echo["headers"]["x-forwarded-proto"][0], "https");
    assert_eq!(echo["headers"]["host"][0], "fast.tunnel.test");
    // Error pages keep their status and code over h2.
    let missing = https_get(https, "nobody.tunnel.test", &ca.cert_pem, &["h2"], "/")
        .await
        .expect("h2 404");
    assert_eq!(missing.alpn.as_deref(), Some("h2"));
    assert_eq!(missing.reply.status, 404);
    assert_eq!(missing.reply.error_code(), Some("tunnel_not_found"));
}

#[tokio::test]
async fn hostile_hellos_are_cut_off_without_hurting_other_visitors() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = TestCa::new("https CA");
    let server = TestServer::start(ServerConfig {
        tls: TlsConfig {
            certificates: vec![ca.server(&["*.tunnel.test", "127.0.0.1"])],
            https_addr: Some("127.0.0.1:0".parse().expect("addr")),
            ..TlsConfig::default()
        },
        domain: "tunnel.test".into(),
        head_timeout: std::time::Duration::from_millis(300),
        ..ServerConfig::ephemeral()
    })
    .await;
    let _client = client(&server, &ca, "shop").await;
    let https = server.addrs.https.expect("https listener");
    // A handshake record that never ends (claims 16 KiB, then goes quiet): closed at the
    // deadline.
    let mut slow = tokio::net::TcpStream::connect(https)
        .await
        .expect("connect");
    slow.write_all(&[0x16, 0x03, 0x01, 0x40, 0x00, 0x01])
        .await
        .expect("write");
    let mut rest = Vec::new();
    within("the slow hello is closed", slow.read_to_end(&mut rest))
        .await
        .expect("closed, not reset");
    assert!(rest.is_empty());
    // An oversized hello (records chained past 16 KiB) is refused as soon as it is too large.
    let mut record = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0xff, 0xff, 0xff];
    record.resize(5 + 0x4000, 0);
    let mut big = tokio::net::TcpStream::connect(https)
        .await
        .expect("connect");
    let _ = big.write_all(&record).await;
    let _ = big.write_all(&record).await;
    let mut rest = Vec::new();
    let _ = within("the oversized hello is closed", big.read_to_end(&mut rest)).await;
    assert!(rest.is_empty());
    // Meanwhile a real visitor is served.
    let reply = https_get(https, "shop.tunnel.test", &ca.cert_pem, &[], "/")
        .await
        .expect("served");
    assert_eq!(reply.reply.status, 200);
    for code in ["header_timeout", "bad_tls_hello"] {
        let sample = format!("showoff_errors_total{{code=\"{code}\"}}");
        assert_eq!(server.metric(&sample).await, Some(1.0), "{sample}");
    }
}
