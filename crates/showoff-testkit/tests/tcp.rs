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

/// A client with TCP tunnel `db` to a fresh echo server.
async fn echo_tunnel(server: &TestServer) -> TestClient {
    let echo = echo_server().await;
    let config = TestClient::config(server, vec![tunnel(TunnelKind::Tcp, Some("db"), echo)]);
    TestClient::start(config).await.expect("session")
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
    let client = echo_tunnel(&server).await;
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
    let client = echo_tunnel(&server).await;
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

/// Polls the server's session gauge until it reads `want`.
async fn sessions_become(server: &TestServer, want: f64) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while server.metric("showoff_sessions_active").await != Some(want) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sessions never became {want}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_established_tcp_stream_outlives_its_session() {
    // Issue 11, item 15: the takeover of a session cut every TCP stream it had spliced,
    // although each runs on its own data connection.
    let server = TestServer::start(ServerConfig::ephemeral()).await;
    let echo = echo_server().await;
    let config = || {
        let mut config =
            TestClient::config(&server, vec![tunnel(TunnelKind::Tcp, Some("db"), echo)]);
        config.token = "me".into();
        config
    };
    let first = TestClient::start(config()).await.expect("first");
    let port = first.tunnels[0].port.expect("port");
    let mut visitor = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut echoed = [0u8; 6];
    visitor.write_all(b"before").await.expect("write");
    within("echo", visitor.read_exact(&mut echoed))
        .await
        .expect("read");
    let _second = TestClient::start(config()).await.expect("the takeover");
    sessions_become(&server, 1.0).await;
    visitor.write_all(b"after!").await.expect("write after");
    within("echo after the takeover", visitor.read_exact(&mut echoed))
        .await
        .expect("the stream still runs");
    assert_eq!(&echoed, b"after!");
    drop(first);
}

#[tokio::test]
async fn a_visitor_waiting_for_a_stream_is_retried_on_the_successor_session() {
    // Issue 11, item 15: a visitor whose stream was being set up when the session was taken
    // over was dropped, although the successor could serve it.
    let server = TestServer::start_raw(ServerConfig {
        warm_pool: 0,
        ..ServerConfig::ephemeral()
    })
    .await;
    let echo = echo_server().await;
    let spec = tunnel(TunnelKind::Tcp, Some("db"), echo);
    // A session that never answers its dials.
    let (mut stalled, welcome) =
        showoff_testkit::raw_client::open(server.addrs.control, "me", vec![spec.spec.clone()])
            .await;
    let showoff_proto::ServerMessage::Welcome { tunnels, .. } = welcome else {
        panic!("{welcome:?}");
    };
    let port = tunnels[0].port.expect("port");
    let mut visitor = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    visitor.write_all(b"waiting").await.expect("write");
    let dial = showoff_testkit::raw_client::next(&mut stalled).await;
    assert!(
        matches!(dial, Some(showoff_proto::ServerMessage::Dial { .. })),
        "{dial:?}"
    );
    let mut config = TestClient::config(&server, vec![spec]);
    config.token = "me".into();
    let _successor = TestClient::start(config).await.expect("the takeover");
    let mut answer = [0u8; 7];
    within("the successor's echo", visitor.read_exact(&mut answer))
        .await
        .expect("the waiting visitor was served");
    assert_eq!(&answer, b"waiting");
}

#[tokio::test]
async fn a_revoked_principal_loses_its_established_streams_too() {
    // The other side of item 15: revocation is not a blip; what the token carried ends.
    let server = TestServer::start(ServerConfig::ephemeral()).await;
    let echo = echo_server().await;
    let mut config = TestClient::config(&server, vec![tunnel(TunnelKind::Tcp, Some("db"), echo)]);
    config.token = "me".into();
    let client = TestClient::start(config).await.expect("session");
    let port = client.tunnels[0].port.expect("port");
    let mut visitor = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut echoed = [0u8; 2];
    visitor.write_all(b"hi").await.expect("write");
    within("echo", visitor.read_exact(&mut echoed))
        .await
        .expect("read");
    let principal = server.first_principal().await;
    assert_eq!(server.handle.close_principal(&principal), 1);
    let mut rest = Vec::new();
    let read = within("the cut", visitor.read_to_end(&mut rest)).await;
    assert!(read.is_err() || rest.is_empty(), "{rest:?}");
    drop(client);
}
