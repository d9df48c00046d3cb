//! Choosing a transport: `auto` against the failure modes peers shipped (never falling back,
//! falling back too eagerly, never retrying QUIC, a path that answers UDP but refuses the
//! handshake), and QUIC through a client address change. The QUIC path runs through the UDP
//! impairment relay, which the client is pointed at with `quic_port`.

use std::time::{Duration, Instant};

use showoff_client::{ClientConfig, TransportChoice};
use showoff_proto::{TransportKind, TunnelKind};
use showoff_server::ServerConfig;
use showoff_testkit::impair::udp::{UdpFaults, UdpRelay};
use showoff_testkit::pki::TestCa;
use showoff_testkit::target::spawn_target;
use showoff_testkit::visitor::get;
use showoff_testkit::{TestClient, TestServer, eventually, tunnel};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server with a certificate and a QUIC listener, and the CA that trusts it.
async fn quic_server(tweak: impl FnOnce(&mut ServerConfig)) -> (TestServer, String) {
    let ca = TestCa::new("transports test");
    let mut config = ServerConfig::ephemeral();
    config.tls.certificates = vec![ca.server(&["localhost", "127.0.0.1"])];
    config.quic_addr = Some("127.0.0.1:0".parse().expect("literal"));
    tweak(&mut config);
    (TestServer::start(config).await, ca.cert_pem)
}

/// An `auto` client of `server` for tunnel `name`, reaching QUIC through `relay`.
fn auto_client(
    server: &TestServer,
    ca: &str,
    relay: &UdpRelay,
    name: &str,
    target: std::net::SocketAddr,
) -> ClientConfig {
    let mut config = TestClient::config(server, vec![tunnel(TunnelKind::Http, Some(name), target)]);
    config.transport = TransportChoice::Auto;
    config.tls = Some(showoff_client::ClientTls {
        ca: Some(ca.to_string()),
        ..Default::default()
    });
    config.quic_port = Some(relay.addr().port());
    config.quic_probe_interval = Duration::from_millis(500);
    config
}

/// The transport the admin API shows for the server's only session.
async fn session_transport(server: &TestServer) -> String {
    let body = server.admin_get("/api/v1/sessions").await.body;
    let sessions: serde_json::Value = serde_json::from_str(&body).expect("sessions JSON");
    sessions[0]["transport"]
        .as_str()
        .unwrap_or("none")
        .to_string()
}

async fn served(server: &TestServer, name: &str) -> u16 {
    get(server.addrs.http, &server.host(name), "/")
        .await
        .status
        .as_u16()
}

#[tokio::test]
async fn auto_upgrades_to_quic_and_a_slow_handshake_is_not_given_up() {
    // cloudflared #721: falling back too eagerly. 300 ms each way makes the QUIC handshake
    // take over a second; it is still taken, and a lost QUIC session comes back on QUIC.
    let (server, ca) = quic_server(|c| {
        c.heartbeat_interval = Duration::from_millis(300);
        c.heartbeat_timeout = Duration::from_secs(2);
    })
    .await;
    let relay = UdpRelay::start(server.addrs.quic.expect("QUIC on")).await;
    relay.set(UdpFaults {
        delay: Duration::from_millis(300),
        ..Default::default()
    });
    let target = spawn_target("a").await;
    let config = auto_client(&server, &ca, &relay, "slow", target.addr);
    let mut client = TestClient::start(config).await.expect("session");
    assert_eq!(
        client.transport,
        TransportKind::Mux,
        "no QUIC knowledge yet"
    );
    let next = client.next_transport(Duration::from_secs(10)).await;
    assert_eq!(next, Some(TransportKind::Quic), "the probe switched");
    let up = client.next_transport(Duration::from_secs(5)).await;
    assert_eq!(up, Some(TransportKind::Quic), "the QUIC session is up");
    assert_eq!(session_transport(&server).await, "quic");
    assert_eq!(served(&server, "slow").await, 200);
    // The QUIC session dies (UDP blocked past the idle timeout); once UDP is back, the
    // client is on QUIC again rather than stuck on mux.
    relay.set(UdpFaults {
        blocked: true,
        ..Default::default()
    });
    let handle = server.handle.clone();
    eventually("the QUIC session to be lost", || {
        handle.stats().sessions_active == 0
    })
    .await;
    relay.set(UdpFaults::default());
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && last != Some(TransportKind::Quic) {
        last = client.next_transport(Duration::from_secs(10)).await;
    }
    assert_eq!(last, Some(TransportKind::Quic));
    assert_eq!(served(&server, "slow").await, 200);
}

#[tokio::test]
async fn with_udp_blocked_auto_is_on_mux_within_three_seconds_and_stays_served() {
    // cloudflared #749: never falling back. The client knows QUIC (it ran on it), UDP goes
    // dark, the session is lost: the next one is up on mux within the 3 s budget.
    let (server, ca) = quic_server(|c| {
        c.heartbeat_interval = Duration::from_millis(300);
        c.heartbeat_timeout = Duration::from_secs(1);
    })
    .await;
    let relay = UdpRelay::start(server.addrs.quic.expect("QUIC on")).await;
    let target = spawn_target("a").await;
    let mut client = TestClient::start(auto_client(&server, &ca, &relay, "dark", target.addr))
        .await
        .expect("session");
    let switched = client.next_transport(Duration::from_secs(10)).await;
    assert_eq!(switched, Some(TransportKind::Quic));
    relay.set(UdpFaults {
        blocked: true,
        ..Default::default()
    });
    // Lost after the idle timeout; then QUIC is tried for at most 3 s, then mux.
    let lost_by = Instant::now() + Duration::from_secs(2);
    let mut next = client.next_transport(Duration::from_secs(15)).await;
    while next == Some(TransportKind::Quic) {
        next = client.next_transport(Duration::from_secs(15)).await;
    }
    assert_eq!(next, Some(TransportKind::Mux));
    let took = Instant::now().saturating_duration_since(lost_by);
    assert!(
        took < Duration::from_secs(5),
        "on mux {took:?} after the loss"
    );
    assert_eq!(session_transport(&server).await, "mux");
    assert_eq!(served(&server, "dark").await, 200);
}

#[tokio::test]
async fn a_client_on_mux_retries_quic_until_udp_is_back() {
    // cloudflared #1534: never retrying QUIC. UDP is blocked from the start, so probes fail;
    // once it is unblocked a later probe moves the session to QUIC without a restart.
    let (server, ca) = quic_server(|_| {}).await;
    let relay = UdpRelay::start(server.addrs.quic.expect("QUIC on")).await;
    relay.set(UdpFaults {
        blocked: true,
        ..Default::default()
    });
    let target = spawn_target("a").await;
    let mut client = TestClient::start(auto_client(&server, &ca, &relay, "later", target.addr))
        .await
        .expect("session");
    assert_eq!(client.transport, TransportKind::Mux);
    assert_eq!(
        client.next_transport(Duration::from_secs(4)).await,
        None,
        "a blocked probe switches nothing"
    );
    assert_eq!(served(&server, "later").await, 200, "mux serves meanwhile");
    relay.set(UdpFaults::default());
    assert_eq!(
        client.next_transport(Duration::from_secs(10)).await,
        Some(TransportKind::Quic)
    );
    assert_eq!(session_transport(&server).await, "quic");
    assert_eq!(served(&server, "later").await, 200);
}

#[tokio::test]
async fn udp_that_answers_but_refuses_the_handshake_keeps_the_client_on_mux() {
    // cloudflared #1736: a pre-check passes while the handshake is refused. Here the UDP
    // port answers (a QUIC listener with a certificate the client does not trust): the probe
    // is a whole session, so it fails, and the client stays served on mux.
    let (server, ca) = quic_server(|_| {}).await;
    let (impostor, _) = quic_server(|_| {}).await;
    let relay = UdpRelay::start(impostor.addrs.quic.expect("QUIC on")).await;
    let target = spawn_target("a").await;
    let mut client = TestClient::start(auto_client(&server, &ca, &relay, "stay", target.addr))
        .await
        .expect("session");
    assert_eq!(
        client.next_transport(Duration::from_secs(4)).await,
        None,
        "the refused handshake switched nothing"
    );
    let (forwarded, _) = relay.counts();
    assert!(forwarded > 0, "the UDP path did answer");
    assert_eq!(session_transport(&server).await, "mux");
    assert_eq!(served(&server, "stay").await, 200);
}

#[tokio::test]
async fn quic_streams_survive_a_client_address_change() {
    let (server, ca) = quic_server(|_| {}).await;
    let relay = UdpRelay::start(server.addrs.quic.expect("QUIC on")).await;
    let target = spawn_target("a").await;
    let mut config = auto_client(&server, &ca, &relay, "moving", target.addr);
    config.transport = TransportChoice::Quic;
    let _client = TestClient::start(config).await.expect("session");
    let (addr, host) = (server.addrs.http, server.host("moving"));
    let slow: Vec<_> = (0..5)
        .map(|_| {
            let host = host.clone();
            tokio::spawn(async move { get(addr, &host, "/slow?ms=1500").await })
        })
        .collect();
    let stats = target.stats.clone();
    eventually("the slow requests to reach the target", || {
        stats.requests.load(std::sync::atomic::Ordering::Relaxed) == 5
    })
    .await;
    relay.rebind().await;
    for reply in slow {
        let reply = reply.await.expect("visitor");
        assert_eq!(reply.status, 200, "a stream was lost: {}", reply.body);
    }
    assert_eq!(served(&server, "moving").await, 200);
    assert_eq!(session_transport(&server).await, "quic");
}

#[tokio::test]
async fn stopped_quic_streams_free_the_connection_at_once() {
    // Found by bench/transports.sh (1 % loss): visitors that leave mid-download stop their
    // streams, but a writer parked on quinn's full connection send window never heard of it,
    // so every other stream waited behind their discarded bytes. Ten downloads fill the window
    // of a 256 KiB/s path, the visitors leave, and a new request must still be served at once.
    let (server, ca) = quic_server(|_| {}).await;
    let relay = UdpRelay::start(server.addrs.quic.expect("QUIC on")).await;
    relay.set(UdpFaults {
        rate: 256 * 1024,
        ..Default::default()
    });
    let target = spawn_target("a").await;
    let mut config = auto_client(&server, &ca, &relay, "leaving", target.addr);
    config.transport = TransportChoice::Quic;
    let _client = TestClient::start(config).await.expect("session");
    let request = format!(
        "GET /big?bytes=1000000000 HTTP/1.1\r\nHost: {}\r\n\r\n",
        server.host("leaving")
    );
    let mut visitors = Vec::new();
    for _ in 0..10 {
        let mut visitor = tokio::net::TcpStream::connect(server.addrs.http)
            .await
            .expect("connect");
        visitor
            .write_all(request.as_bytes())
            .await
            .expect("request");
        visitors.push(visitor);
    }
    // The visitors read for two seconds: the target fills the client's side of the QUIC
    // connection far faster than the path drains it, up to the connection's send window.
    let reading: Vec<_> = visitors
        .into_iter()
        .map(|mut visitor| {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut got = Vec::new();
                let read_for = tokio::time::sleep(Duration::from_secs(2));
                tokio::pin!(read_for);
                loop {
                    tokio::select! {
                        _ = &mut read_for => break,
                        n = visitor.read(&mut buf) => match n {
                            Ok(0) | Err(_) => break,
                            Ok(n) if got.len() < 16 => got.extend_from_slice(&buf[..n.min(16)]),
                            Ok(_) => {}
                        },
                    }
                }
                got
            })
        })
        .collect();
    for visitor in reading {
        let head = visitor.await.expect("visitor");
        assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
    }
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(8), served(&server, "leaving"))
        .await
        .expect("a new request waited behind the stopped streams' bytes");
    assert_eq!(status, 200);
    eprintln!("served {:?} after the visitors left", started.elapsed());
}
