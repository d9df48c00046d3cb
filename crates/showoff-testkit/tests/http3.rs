//! HTTP/3 visitors (issue 18): a real HTTP/3 client (quinn + h3, `showoff_testkit::h3_client`)
//! gets the same answers and error pages as HTTP/1.1 and HTTP/2 visitors, under the same
//! rules, and the HTTPS listener advertises HTTP/3 with `Alt-Svc`.

use bytes::Bytes;
use http::Request;
use showoff_proto::{TunnelKind, Upstream, VisitorRules};
use showoff_server::{ServerConfig, TlsConfig};
use showoff_testkit::h2_target::spawn_h2c_target;
use showoff_testkit::h3_client::{H3Reply, h3_request};
use showoff_testkit::pki::TestCa;
use showoff_testkit::target::{TEXT, spawn_target};
use showoff_testkit::visitor::https_get;
use showoff_testkit::{TestClient, TestServer, tunnel};

/// An HTTPS and HTTP/3 server for `*.tunnel.test`.
async fn server(ca: &TestCa) -> TestServer {
    let config = ServerConfig {
        tls: TlsConfig {
            certificates: vec![ca.server(&["*.tunnel.test", "127.0.0.1"])],
            https_addr: Some("127.0.0.1:0".parse().expect("addr")),
            http3_addr: Some("127.0.0.1:0".parse().expect("addr")),
            ..TlsConfig::default()
        },
        domain: "tunnel.test".into(),
        ..ServerConfig::ephemeral()
    };
    TestServer::start(config).await
}

/// A client with these tunnels, speaking TLS to the server.
async fn client(
    server: &TestServer,
    ca: &TestCa,
    tunnels: Vec<showoff_client::TunnelConfig>,
) -> TestClient {
    let mut config = TestClient::config(server, tunnels);
    config.tls = Some(showoff_client::ClientTls {
        ca: Some(ca.cert_pem.clone()),
        ..Default::default()
    });
    TestClient::start(config).await.expect("session")
}

async fn h3(
    server: &TestServer,
    ca: &TestCa,
    request: Request<()>,
    body: &'static [u8],
) -> H3Reply {
    let addr = server.addrs.http3.expect("HTTP/3 listener");
    let sni = request.uri().host().expect("host").to_string();
    h3_request(addr, &sni, &ca.cert_pem, request, Bytes::from_static(body))
        .await
        .expect("HTTP/3 exchange")
}

#[tokio::test]
async fn http3_visitors_get_what_http1_visitors_get() {
    let ca = TestCa::new("h3 CA");
    let server = server(&ca).await;
    let target = spawn_target("h3").await;
    let _client = client(
        &server,
        &ca,
        vec![tunnel(TunnelKind::Http, Some("web"), target.addr)],
    )
    .await;
    let https = server.addrs.https.expect("https");
    let h3_port = server.addrs.http3.expect("http3").port();

    let reply = h3(
        &server,
        &ca,
        Request::get("https://web.tunnel.test/text")
            .body(())
            .expect("request"),
        b"",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, TEXT);

    // A body crosses whole, and the target sees the visitor as HTTP/1.1 ones are shown.
    let payload: &'static [u8] = Box::leak(vec![b'p'; 300_000].into_boxed_slice());
    let request = Request::post("https://web.tunnel.test/echo")
        .body(())
        .expect("request");
    let reply = h3(&server, &ca, request, payload).await;
    assert_eq!(reply.status, 200);
    let echo: serde_json::Value = serde_json::from_slice(&reply.body).expect("echo");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body_bytes"], 300_000);
    assert_eq!(
        echo["headers"]["x-forwarded-proto"],
        serde_json::json!(["https"])
    );

    // Error pages are the same page.
    let missing = Request::get("https://nobody.tunnel.test/")
        .body(())
        .expect("request");
    let reply = h3(&server, &ca, missing, b"").await;
    let over_h1 = https_get(
        https,
        "nobody.tunnel.test",
        &ca.cert_pem,
        &["http/1.1"],
        "/",
    )
    .await
    .expect("https");
    assert_eq!(reply.status, 404);
    assert_eq!(reply.error_code(), Some("tunnel_not_found"));
    assert_eq!(over_h1.reply.status, 404);
    assert_eq!(String::from_utf8_lossy(&reply.body), over_h1.reply.body);

    // The HTTPS listener advertises HTTP/3, over HTTP/1.1 and HTTP/2 alike.
    let advertised = format!("h3=\":{h3_port}\"; ma=86400");
    for alpn in ["http/1.1", "h2"] {
        let reply = https_get(https, "web.tunnel.test", &ca.cert_pem, &[alpn], "/text")
            .await
            .expect("https");
        assert_eq!(reply.reply.status, 200, "{alpn}");
        assert_eq!(
            reply.reply.headers["alt-svc"],
            advertised.as_str(),
            "{alpn}"
        );
    }
}

#[tokio::test]
async fn http3_visitors_meet_the_tunnels_rules_and_reach_http2_targets() {
    let ca = TestCa::new("h3 rules CA");
    let server = server(&ca).await;
    let target = spawn_target("guarded").await;
    let mut guarded = tunnel(TunnelKind::Http, Some("guarded"), target.addr);
    guarded.spec.visitors = VisitorRules {
        basic_auth: Some("alice:secret".into()),
        ..Default::default()
    };
    let h2c = spawn_h2c_target("h2c").await;
    let mut streamed = tunnel(TunnelKind::Http, Some("grpcish"), h2c.addr);
    streamed.spec.upstream = Upstream::H2c;
    let _client = client(&server, &ca, vec![guarded, streamed]).await;

    let bare = Request::get("https://guarded.tunnel.test/")
        .body(())
        .expect("request");
    let reply = h3(&server, &ca, bare, b"").await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.error_code(), Some("auth_required"));
    let authorised = Request::get("https://guarded.tunnel.test/text")
        .header("authorization", "Basic YWxpY2U6c2VjcmV0")
        .body(())
        .expect("request");
    let reply = h3(&server, &ca, authorised, b"").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, TEXT);

    // HTTP/3 in, HTTP/2 out: the body streams through and the target's trailers come back.
    let request = Request::post("https://grpcish.tunnel.test/echo-body")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let reply = h3(&server, &ca, request, &[b'z'; 50_000]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), 50_000);
    let trailers = reply.trailers.expect("trailers");
    assert_eq!(trailers["x-bytes"], "50000");
}
