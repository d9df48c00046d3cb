//! Streams across the instances of a cluster on a real `redis-server`: a TCP tunnel's port
//! and a UDP tunnel's port answer at every instance (each mirrors the ports the others hold,
//! on a loopback address of its own, as it would on its own machine), a client that moves
//! takes its port with it, and TLS passthrough and terminated names are served at any
//! instance's HTTPS listener. Each visitor crosses one hop.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use showoff_client::ClientTls;
use showoff_proto::TunnelKind;
use showoff_server::{PemPair, ServerConfig, TlsConfig};
use showoff_testkit::cluster::{SECRET, instance_parts, own_loopback};
use showoff_testkit::pki::TestCa;
use showoff_testkit::redis::RedisServer;
use showoff_testkit::target::{spawn_target, tls_service};
use showoff_testkit::visitor::https_get;
use showoff_testkit::{TestClient, TestServer, tunnel, within};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Instance `name` of cluster `prefix`, its public listener and tunnel ports on `ip`.
async fn instance_at(redis: &RedisServer, name: &str, prefix: &str, ip: IpAddr) -> TestServer {
    let (mut config, services) = instance_parts(redis, name, prefix, SECRET);
    config.http_addr = SocketAddr::new(ip, 0);
    TestServer::start_with(config, services).await
}

/// A TCP service answering each line with `<label>: <line>`.
async fn line_service(label: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let answer = format!("{label}: {line}\n");
                    if write.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Sends one line to `addr` and reads the answer; `None` when nothing listens there yet or
/// the connection closes without one.
async fn talk(addr: SocketAddr, line: &str) -> Option<String> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let (read, mut write) = stream.into_split();
    write.write_all(format!("{line}\n").as_bytes()).await.ok()?;
    let (mut answer, mut read) = (String::new(), BufReader::new(read));
    let read = read.read_line(&mut answer);
    match tokio::time::timeout(Duration::from_secs(2), read).await {
        Ok(Ok(n)) if n > 0 => Some(answer.trim_end().to_string()),
        _ => None,
    }
}

/// Talks to `addr` until the answer is `expected` (a port being mirrored or handed over).
async fn answers(addr: SocketAddr, expected: &str) {
    within(&format!("{addr} answers {expected:?}"), async {
        loop {
            if talk(addr, "hi").await.as_deref() == Some(expected) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_tcp_tunnel_answers_at_every_instance_and_its_port_moves_with_its_client() {
    let redis = RedisServer::start();
    let (ip_a, ip_b) = (own_loopback(), own_loopback());
    let a = instance_at(&redis, "node-a", "tcp", ip_a).await;
    let b = instance_at(&redis, "node-b", "tcp", ip_b).await;
    let one = line_service("one").await;
    let client = TestClient::start(TestClient::config(
        &a,
        vec![tunnel(TunnelKind::Tcp, None, one)],
    ))
    .await
    .expect("session");
    let port = client.tunnels[0].port.expect("a public port");
    assert_eq!(
        talk(SocketAddr::new(ip_a, port), "hi").await.as_deref(),
        Some("one: hi")
    );
    // B listens on the same port for A, and carries its visitors there.
    answers(SocketAddr::new(ip_b, port), "one: hi").await;
    let forwarded = r#"showoff_cluster_forwarded_total{result="ok"}"#;
    assert!(b.metric(forwarded).await >= Some(1.0));
    assert_eq!(a.metric(forwarded).await, Some(0.0), "one hop only");
    assert!(a.metric("showoff_cluster_peer_requests_total").await >= Some(1.0));

    // The client moves to B asking for its port: B hands the socket it mirrored over.
    let two = line_service("two").await;
    let mut moved = tunnel(TunnelKind::Tcp, None, two);
    moved.spec.port = Some(port);
    let moved = TestClient::start(TestClient::config(&b, vec![moved]))
        .await
        .expect("the same principal takes its port to another instance");
    assert_eq!(moved.tunnels[0].port, Some(port));
    answers(SocketAddr::new(ip_b, port), "two: hi").await;
    // And A, whose tunnel was taken over, now mirrors the port for B.
    answers(SocketAddr::new(ip_a, port), "two: hi").await;
    drop(client);
}

/// A UDP service answering each datagram with `<label>:<datagram>`.
async fn tagging_udp(label: &'static str) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            let mut answer = format!("{label}:").into_bytes();
            answer.extend_from_slice(&buf[..len]);
            let _ = socket.send_to(&answer, from).await;
        }
    });
    addr
}

/// Sends `payload` from `visitor` to `to` until an answer comes (the port may not be
/// mirrored yet); the answer and where it came from.
async fn ask(visitor: &UdpSocket, to: SocketAddr, payload: &[u8]) -> (Vec<u8>, SocketAddr) {
    within(&format!("an answer from {to}"), async {
        let mut buf = vec![0u8; 65_536];
        loop {
            visitor.send_to(payload, to).await.expect("send");
            let answer =
                tokio::time::timeout(Duration::from_millis(200), visitor.recv_from(&mut buf));
            if let Ok(Ok((len, from))) = answer.await {
                return (buf[..len].to_vec(), from);
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_udp_tunnel_answers_at_every_instance_from_the_port_visitors_sent_to() {
    let redis = RedisServer::start();
    let (ip_a, ip_b) = (own_loopback(), own_loopback());
    let a = instance_at(&redis, "node-a", "udp", ip_a).await;
    let b = instance_at(&redis, "node-b", "udp", ip_b).await;
    let service = tagging_udp("dns").await;
    let client = TestClient::start(TestClient::config(
        &a,
        vec![tunnel(TunnelKind::Udp, Some("dns"), service)],
    ))
    .await
    .expect("session");
    let port = client.tunnels[0].port.expect("a public UDP port");
    let at_b = SocketAddr::new(ip_b, port);
    let (first, second) = (
        UdpSocket::bind("127.0.0.1:0").await.expect("bind"),
        UdpSocket::bind("127.0.0.1:0").await.expect("bind"),
    );
    let (answer, from) = ask(&first, at_b, b"one").await;
    assert_eq!((answer.as_slice(), from), (&b"dns:one"[..], at_b));
    // Each visitor of B gets its own answers, over the same link.
    let (answer, from) = ask(&second, at_b, b"two").await;
    assert_eq!((answer.as_slice(), from), (&b"dns:two"[..], at_b));
    let (answer, _) = ask(&first, at_b, &[7u8; 1200]).await;
    assert_eq!(answer.len(), 4 + 1200, "a large datagram crosses whole");
    // Visitors of A itself are served from A's socket: the first visitor, now sending to A,
    // keeps its flow and its answers follow it there.
    let at_a = SocketAddr::new(ip_a, port);
    let (answer, from) = ask(&first, at_a, b"direct").await;
    assert_eq!((answer.as_slice(), from), (&b"dns:direct"[..], at_a));
    assert_eq!(a.metric("showoff_udp_flows_opened_total").await, Some(2.0));
    assert!(a.metric("showoff_cluster_peer_requests_total").await >= Some(1.0));
    let forwarded = r#"showoff_cluster_forwarded_total{result="ok"}"#;
    assert!(b.metric(forwarded).await >= Some(1.0));
}

/// Instance `name` with an HTTPS listener for `*.tunnel.test`.
async fn https_instance(redis: &RedisServer, name: &str, identity: PemPair) -> TestServer {
    let (config, services) = instance_parts(redis, name, "tls", SECRET);
    let config = ServerConfig {
        tls: TlsConfig {
            certificates: vec![identity],
            https_addr: Some("127.0.0.1:0".parse().expect("addr")),
            ..TlsConfig::default()
        },
        domain: "tunnel.test".into(),
        ..config
    };
    TestServer::start_with(config, services).await
}

#[tokio::test]
async fn tls_passthrough_and_terminated_names_are_served_at_every_instance() {
    let redis = RedisServer::start();
    let server_ca = TestCa::new("server CA");
    let service_ca = TestCa::new("the client's own CA");
    let identity = || server_ca.server(&["*.tunnel.test", "127.0.0.1"]);
    let a = https_instance(&redis, "node-a", identity()).await;
    let b = https_instance(&redis, "node-b", identity()).await;
    let service = tls_service(service_ca.server(&["db.tunnel.test"]), "end to end").await;
    let web = spawn_target("web").await;
    let mut config = TestClient::config(
        &a,
        vec![
            tunnel(TunnelKind::Tls, Some("db"), service),
            tunnel(TunnelKind::Http, Some("web"), web.addr),
        ],
    );
    config.tls = Some(ClientTls {
        ca: Some(server_ca.cert_pem.clone()),
        ..ClientTls::default()
    });
    let _client = TestClient::start(config).await.expect("session");
    let https_b = b.addrs.https.expect("https");
    // Through B, the visitor still verifies the service's own certificate: nobody terminated.
    let seen = https_get(https_b, "db.tunnel.test", &service_ca.cert_pem, &[], "/")
        .await
        .expect("passthrough through another instance");
    assert_eq!(
        (seen.reply.status.as_u16(), seen.reply.body.as_str()),
        (200, "end to end")
    );
    // An HTTP tunnel's name is terminated at B with the server's certificate and forwarded.
    for _ in 0..2 {
        let terminated = https_get(https_b, "web.tunnel.test", &server_ca.cert_pem, &[], "/")
            .await
            .expect("terminated at B");
        assert_eq!(terminated.reply.status, 200);
    }
    let forwarded = r#"showoff_cluster_forwarded_total{result="ok"}"#;
    assert!(b.metric(forwarded).await >= Some(3.0));
    assert_eq!(a.metric(forwarded).await, Some(0.0));
}
