//! Raw TCP tunnels: public ports from the range or as requested, bytes both ways.

use showoff_client::ClientError;
use showoff_proto::{RefusedCode, TunnelKind};
use showoff_server::{PortRange, ServerConfig};
use showoff_testkit::visitor::connect_from;
use showoff_testkit::{TestClient, TestServer, tunnel, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn echo_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

async fn round_trip(port: u16, payload: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream.write_all(payload).await.expect("write");
    stream.shutdown().await.expect("half close");
    let mut out = Vec::new();
    within("echo", stream.read_to_end(&mut out))
        .await
        .expect("read");
    out
}

#[tokio::test]
async fn a_tcp_tunnel_gets_a_port_from_the_range_and_carries_bytes() {
    let port = free_port().await;
    let server = TestServer::start(ServerConfig {
        tcp_ports: PortRange {
            first: port,
            last: port,
        },
        ..ServerConfig::ephemeral()
    })
    .await;
    let echo = echo_server().await;
    let client = TestClient::start(TestClient::config(
        &server,
        vec![tunnel(TunnelKind::Tcp, Some("db"), echo)],
    ))
    .await
    .expect("session");
    let info = &client.tunnels[0];
    assert_eq!(info.port, Some(port));
    assert_eq!(info.public_url, format!("tcp://localhost:{port}"));
    let payload: Vec<u8> = (0..2_000_000u32).map(|i| i as u8).collect();
    assert_eq!(round_trip(port, &payload).await, payload);
    // Several visitors at once.
    let rounds =
        (0..8).map(|i| async move { round_trip(port, format!("visitor {i}").as_bytes()).await });
    let answers = futures_util::future::join_all(rounds).await;
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(answer, format!("visitor {i}").as_bytes());
    }
}

#[tokio::test]
async fn a_requested_port_is_granted_when_free_and_refused_otherwise() {
    let server = TestServer::start(ServerConfig::ephemeral()).await;
    let echo = echo_server().await;
    let wanted = free_port().await;
    let mut spec = tunnel(TunnelKind::Tcp, Some("wanted"), echo);
    spec.spec.port = Some(wanted);
    let client = TestClient::start(TestClient::config(&server, vec![spec.clone()]))
        .await
        .expect("session");
    assert_eq!(client.tunnels[0].port, Some(wanted));
    assert_eq!(round_trip(wanted, b"ping").await, b"ping");
    // The same port again (another name, another token) is in use.
    spec.spec.name = Some("again".into());
    let mut config = TestClient::config(&server, vec![spec]);
    config.token = "other".into();
    match TestClient::start(config).await {
        Err(ClientError::Refused { code, message }) => {
            assert_eq!(code, RefusedCode::PortUnavailable);
            assert!(message.contains(&wanted.to_string()), "{message}");
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("the port was granted twice"),
    }
}

#[tokio::test]
async fn ports_outside_the_range_are_refused() {
    let server = TestServer::start(ServerConfig {
        tcp_ports: PortRange { first: 1, last: 1 },
        ..ServerConfig::ephemeral()
    })
    .await;
    let mut spec = tunnel(TunnelKind::Tcp, Some("out"), echo_server().await);
    spec.spec.port = Some(free_port().await);
    match TestClient::start(TestClient::config(&server, vec![spec])).await {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, RefusedCode::PortUnavailable),
        other => panic!("expected a refusal: {:?}", other.err()),
    }
}

#[tokio::test]
async fn a_fixed_port_follows_its_principal_to_a_new_session() {
    // Issue 11, item 16: the reconnecting client got port_unavailable while its old session
    // still held the listener.
    let server = TestServer::start(ServerConfig::ephemeral()).await;
    let echo = echo_server().await;
    let wanted = free_port().await;
    let fixed = |name: &str| {
        let mut spec = tunnel(TunnelKind::Tcp, Some(name), echo);
        spec.spec.port = Some(wanted);
        let mut config = TestClient::config(&server, vec![spec]);
        config.token = "me".into();
        config
    };
    let first = TestClient::start(fixed("db")).await.expect("first");
    assert_eq!(first.tunnels[0].port, Some(wanted));
    let second = TestClient::start(fixed("db-new"))
        .await
        .expect("the port is handed over");
    assert_eq!(second.tunnels[0].port, Some(wanted));
    match first.ended().await {
        Err(ClientError::Refused { code, message }) => {
            assert_eq!(code, RefusedCode::Replaced);
            assert!(message.contains(&format!("port {wanted}")), "{message}");
        }
        other => panic!("the old session should be replaced: {other:?}"),
    }
    assert_eq!(round_trip(wanted, b"still here").await, b"still here");
}

#[tokio::test]
async fn one_visitor_address_cannot_take_every_connection_of_a_tcp_tunnel() {
    // Issue 11, item 10: the per-tunnel cap counted every address together.
    let server = TestServer::start(ServerConfig {
        max_visitors_per_tunnel: 10,
        max_visitors_per_tunnel_per_ip: 1,
        ..ServerConfig::ephemeral()
    })
    .await;
    let echo = echo_server().await;
    let client = TestClient::start(TestClient::config(
        &server,
        vec![tunnel(TunnelKind::Tcp, Some("db"), echo)],
    ))
    .await
    .expect("session");
    let public =
        std::net::SocketAddr::from(([127, 0, 0, 1], client.tunnels[0].port.expect("port")));
    let first_ip: std::net::IpAddr = "127.0.0.1".parse().expect("ip");
    let mut held = connect_from(first_ip, public).await;
    held.write_all(b"one").await.expect("write");
    let mut echoed = [0u8; 3];
    within("echo", held.read_exact(&mut echoed))
        .await
        .expect("read");
    let mut second = connect_from(first_ip, public).await;
    let _ = second.write_all(b"two").await;
    let mut rest = Vec::new();
    let read = within("refused", second.read_to_end(&mut rest)).await;
    assert!(
        read.is_err() || rest.is_empty(),
        "a second connection from the same address got {rest:?}"
    );
    let mut other = connect_from("127.0.0.2".parse().expect("ip"), public).await;
    other.write_all(b"three").await.expect("write");
    let mut answer = [0u8; 5];
    within("echo", other.read_exact(&mut answer))
        .await
        .expect("read");
    assert_eq!(&answer, b"three");
}
