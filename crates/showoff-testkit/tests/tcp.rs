//! Raw TCP tunnels: public ports from the range or as requested, bytes both ways.

use showoff_client::ClientError;
use showoff_proto::{RefusedCode, TunnelKind};
use showoff_server::{PortRange, ServerConfig};
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
