//! Real visitor addresses: PROXY protocol v1/v2 from trusted load balancers on the public
//! listeners, `X-Forwarded-For` trusted only from configured proxies, and PROXY headers the
//! client sends on to a TCP target. The attacker's side: headers from untrusted peers,
//! malformed headers, spoofed `X-Forwarded-For`.

use std::net::SocketAddr;

use ppp::v2;
use serde_json::Value;
use showoff_client::ProxyVersion;
use showoff_proto::{TunnelKind, VisitorRules};
use showoff_server::{ProxyConfig, ProxyProtocol, ServerConfig};
use showoff_testkit::target::spawn_target;
use showoff_testkit::visitor::{raw, status_of};
use showoff_testkit::{TestClient, TestServer, tunnel, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn server(protocol: ProxyProtocol, trusted: &[&str]) -> TestServer {
    TestServer::start(ServerConfig {
        proxy: ProxyConfig {
            protocol,
            trusted: trusted.iter().map(|t| t.parse().expect("cidr")).collect(),
            ..ProxyConfig::default()
        },
        ..ServerConfig::ephemeral()
    })
    .await
}

/// An HTTP tunnel `name` to an echo target, refusing visitors from `deny`.
async fn http_tunnel(server: &TestServer, name: &str, deny: &[&str]) -> TestClient {
    let target = spawn_target("echo").await;
    let mut config = tunnel(TunnelKind::Http, Some(name), target.addr);
    config.spec.visitors = VisitorRules {
        deny_ips: deny.iter().map(|d| d.to_string()).collect(),
        ..VisitorRules::default()
    };
    let client = TestClient::start(TestClient::config(server, vec![config]))
        .await
        .expect("session");
    std::mem::forget(target);
    client
}

fn request(host: &str, extra: &str) -> String {
    format!("GET /who HTTP/1.1\r\nhost: {host}\r\n{extra}connection: close\r\n\r\n")
}

/// Status, error code and (for 200) the echoed `X-Forwarded-For`.
fn answer(response: &str) -> (u16, Option<String>, Option<String>) {
    let status = status_of(response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response, ""));
    let code = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("x-showoff-error: ")
            .map(str::to_string)
    });
    let xff = (status == 200).then(|| {
        let echo: Value = serde_json::from_str(body).expect("echo json");
        echo["headers"]["x-forwarded-for"][0]
            .as_str()
            .expect("xff")
            .to_string()
    });
    (status, code, xff)
}

fn v2_header(source: &str, destination: SocketAddr) -> Vec<u8> {
    let source: SocketAddr = source.parse().expect("addr");
    v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Proxy,
        v2::Protocol::Stream,
        (source, destination),
    )
    .build()
    .expect("header")
}

#[tokio::test]
async fn trusted_proxy_headers_name_the_visitor_for_rules_and_targets() {
    let server = server(ProxyProtocol::Required, &["127.0.0.0/8"]).await;
    let _client = http_tunnel(&server, "site", &["198.51.100.0/24"]).await;
    let host = server.host("site");
    let http = server.addrs.http;

    let v1 = format!(
        "PROXY TCP4 203.0.113.9 127.0.0.1 5555 80\r\n{}",
        request(&host, "")
    );
    assert_eq!(
        answer(&raw(http, v1.as_bytes()).await),
        (200, None, Some("203.0.113.9".into()))
    );
    let mut v2 = v2_header("[2001:db8::9]:4000", "[::1]:80".parse().expect("addr"));
    v2.extend_from_slice(request(&host, "").as_bytes());
    assert_eq!(
        answer(&raw(http, &v2).await),
        (200, None, Some("2001:db8::9".into()))
    );
    // The tunnel's IP rules see the address from the header.
    let denied = format!(
        "PROXY TCP4 198.51.100.4 127.0.0.1 5555 80\r\n{}",
        request(&host, "")
    );
    assert_eq!(
        answer(&raw(http, denied.as_bytes()).await),
        (403, Some("ip_forbidden".into()), None)
    );
    // Required: a connection without a header is refused; a malformed one too.
    assert_eq!(
        answer(&raw(http, request(&host, "").as_bytes()).await),
        (400, Some("proxy_header_required".into()), None)
    );
    for bad in [
        "PROXY TCP4 300.1.1.1 127.0.0.1 1 2\r\n",
        "PROXY TCP4 1.2.3.4\r\n",
        "PROXY HTTP/1.1 nonsense that never ends with a line break before the limit of one hundred and seven bytes is reached ....",
    ] {
        let text = format!("{bad}{}", request(&host, ""));
        assert_eq!(
            answer(&raw(http, text.as_bytes()).await),
            (400, Some("bad_proxy_header".into()), None),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn untrusted_peers_cannot_claim_another_address() {
    // 127.0.0.1 is not trusted here: headers from it are just bytes, XFF is replaced.
    let server = server(ProxyProtocol::Optional, &["10.0.0.0/8"]).await;
    let _client = http_tunnel(&server, "site", &[]).await;
    let host = server.host("site");
    let http = server.addrs.http;
    let spoofed = request(
        &host,
        "x-forwarded-for: 203.0.113.1\r\nx-forwarded-proto: https\r\n",
    );
    assert_eq!(
        answer(&raw(http, spoofed.as_bytes()).await),
        (200, None, Some("127.0.0.1".into()))
    );
    let smuggled = format!(
        "PROXY TCP4 203.0.113.9 127.0.0.1 5555 80\r\n{}",
        request(&host, "")
    );
    let (status, code, _) = answer(&raw(http, smuggled.as_bytes()).await);
    assert_eq!((status, code.as_deref()), (400, Some("bad_request")));
    // Under `required`, untrusted peers get nothing through at all.
    let strict = server_required_untrusted().await;
    let _strict_client = http_tunnel(&strict, "site", &[]).await;
    let text = request(&strict.host("site"), "");
    assert_eq!(
        answer(&raw(strict.addrs.http, text.as_bytes()).await),
        (400, Some("proxy_header_required".into()), None)
    );
}

async fn server_required_untrusted() -> TestServer {
    server(ProxyProtocol::Required, &["10.0.0.0/8"]).await
}

#[tokio::test]
async fn forwarded_for_is_kept_and_extended_only_from_trusted_proxies() {
    let server = server(ProxyProtocol::Off, &["127.0.0.0/8"]).await;
    let _client = http_tunnel(&server, "site", &["198.51.100.0/24"]).await;
    let host = server.host("site");
    let http = server.addrs.http;
    let via_proxy = request(&host, "x-forwarded-for: 203.0.113.5\r\n");
    assert_eq!(
        answer(&raw(http, via_proxy.as_bytes()).await),
        (200, None, Some("203.0.113.5, 127.0.0.1".into()))
    );
    // The visitor named by the trusted proxy is who the IP rules judge.
    let denied = request(&host, "x-forwarded-for: 198.51.100.7\r\n");
    assert_eq!(
        answer(&raw(http, denied.as_bytes()).await),
        (403, Some("ip_forbidden".into()), None)
    );
    // A visitor that prepends a fake entry is still judged by the entry the proxy added.
    let prepended = request(&host, "x-forwarded-for: 203.0.113.5, 198.51.100.7\r\n");
    assert_eq!(
        answer(&raw(http, prepended.as_bytes()).await),
        (403, Some("ip_forbidden".into()), None)
    );
}

/// A TCP target that reports the first bytes each connection sends, then echoes a greeting.
async fn header_target() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 512];
                // Everything up to and including the visitor's "ping".
                while !seen.ends_with(b"ping") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tx.send(seen);
                let _ = stream.write_all(b"pong").await;
            });
        }
    });
    (addr, rx)
}

async fn tcp_round_trip(public: SocketAddr, preface: &[u8]) -> String {
    let mut stream = TcpStream::connect(public).await.expect("connect");
    stream.write_all(preface).await.expect("preface");
    stream.write_all(b"ping").await.expect("ping");
    let mut reply = [0u8; 4];
    within("pong", stream.read_exact(&mut reply))
        .await
        .expect("pong");
    String::from_utf8_lossy(&reply).into_owned()
}

#[tokio::test]
async fn tcp_tunnels_take_proxy_headers_in_and_send_them_on() {
    let server = server(ProxyProtocol::Optional, &["127.0.0.0/8"]).await;
    let (target, mut seen) = header_target().await;
    let mut v1 = tunnel(TunnelKind::Tcp, Some("pg"), target);
    v1.proxy_protocol = Some(ProxyVersion::V1);
    let mut v2 = tunnel(TunnelKind::Tcp, Some("pg2"), target);
    v2.proxy_protocol = Some(ProxyVersion::V2);
    let client = TestClient::start(TestClient::config(&server, vec![v1, v2]))
        .await
        .expect("session");
    let port = |i: usize| client.tunnels[i].port.expect("tcp port");
    let public = |i: usize| SocketAddr::from(([127, 0, 0, 1], port(i)));

    // A trusted load balancer's v2 header in; the client's v1 header out, naming the visitor.
    let header = v2_header("203.0.113.9:5555", public(0));
    assert_eq!(tcp_round_trip(public(0), &header).await, "pong");
    let first = String::from_utf8(seen.recv().await.expect("seen")).expect("text");
    assert_eq!(
        first,
        format!(
            "PROXY TCP4 203.0.113.9 127.0.0.1 5555 {}\r\nping",
            target.port()
        )
    );
    // Without a header in (optional), the TCP peer is the visitor; out as binary v2.
    assert_eq!(tcp_round_trip(public(1), b"").await, "pong");
    let second = seen.recv().await.expect("seen");
    let parsed = v2::Header::try_from(&second[..second.len() - 4]).expect("v2 header");
    match parsed.addresses {
        v2::Addresses::IPv4(a) => {
            assert_eq!(a.source_address.to_string(), "127.0.0.1");
            assert_eq!(a.destination_port, target.port());
        }
        other => panic!("expected IPv4 addresses, got {other:?}"),
    }
    // A malformed header from a trusted peer closes the connection before the client is asked.
    let mut bad = TcpStream::connect(public(0)).await.expect("connect");
    bad.write_all(b"PROXY TCP4 1.2.3.4 nonsense\r\nping")
        .await
        .expect("write");
    let mut rest = Vec::new();
    let _ = within("close", bad.read_to_end(&mut rest)).await;
    assert!(rest.is_empty());
    assert!(seen.try_recv().is_err(), "the target saw nothing");
}

/// Opens a control session by hand, after sending `preface` (a PROXY header, or nothing).
async fn control_session(
    addr: SocketAddr,
    preface: &[u8],
    name: &str,
) -> Option<showoff_proto::ServerMessage> {
    use futures_util::{SinkExt, StreamExt};
    use showoff_proto::{ClientMessage, FrameCodec, PROTOCOL_VERSION, Role, ServerMessage};
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(preface).await.expect("preface");
    let mut conn =
        tokio_util::codec::Framed::new(stream, FrameCodec::<ServerMessage, ClientMessage>::new());
    let target = "127.0.0.1:9".to_string();
    let spec = showoff_proto::TunnelSpec {
        upstream: Default::default(),
        kind: TunnelKind::Http,
        name: Some(name.into()),
        port: None,
        host_header: Default::default(),
        target,
        visitors: VisitorRules::default(),
    };
    for msg in [
        ClientMessage::Hello {
            version: PROTOCOL_VERSION,
            role: Role::Control,
            transport: Default::default(),
        },
        ClientMessage::Auth { token: name.into() },
        ClientMessage::Open {
            tunnels: vec![spec],
        },
    ] {
        if conn.send(msg).await.is_err() {
            return None;
        }
    }
    let answer = within("the server's answer", conn.next()).await;
    // Keep the session open while the test looks at it.
    std::mem::forget(conn);
    answer.and_then(Result::ok)
}

#[tokio::test]
async fn the_control_listener_takes_client_addresses_from_trusted_proxies() {
    use showoff_proto::ServerMessage;
    let server = TestServer::start_raw(ServerConfig {
        proxy: ProxyConfig {
            control: ProxyProtocol::Required,
            trusted: vec!["127.0.0.0/8".parse().expect("cidr")],
            ..ProxyConfig::default()
        },
        rates: showoff_server::RateConfig {
            control_per_ip: 1,
            ..Default::default()
        },
        ..ServerConfig::ephemeral()
    })
    .await;
    let control = server.addrs.control;
    let header = |ip: &str| format!("PROXY TCP4 {ip} 127.0.0.1 40000 7000\r\n").into_bytes();
    // Two clients behind the balancer, each with its own address and its own rate budget.
    let first = control_session(control, &header("203.0.113.1"), "first").await;
    assert!(
        matches!(first, Some(ServerMessage::Welcome { .. })),
        "{first:?}"
    );
    let second = control_session(control, &header("203.0.113.2"), "second").await;
    assert!(
        matches!(second, Some(ServerMessage::Welcome { .. })),
        "{second:?}"
    );
    let again = control_session(control, &header("203.0.113.1"), "again").await;
    assert!(
        matches!(&again, Some(ServerMessage::Refused { code, .. }) if *code == showoff_proto::RefusedCode::RateLimited),
        "{again:?}"
    );
    // The admin API shows the addresses the headers named.
    let sessions = server.admin_get("/api/v1/sessions").await.body;
    assert!(
        sessions.contains("203.0.113.1:40000") && sessions.contains("203.0.113.2:40000"),
        "{sessions}"
    );
    // Without a header the connection is refused before anything else.
    assert_eq!(control_session(control, b"", "direct").await, None);
    let sample = "showoff_sessions_refused_total{code=\"proxy_header_required\"}";
    assert_eq!(server.metric(sample).await, Some(1.0));
}
