//! UDP tunnels end to end, on the transport under test: public UDP ports, one flow per visitor
//! address with answers back to the right visitor, 100,000 datagrams through an echo, the PROXY
//! v2 `DGRAM` header, IP rules, a session drop freeing every flow, and a real DNS server
//! (dnsmasq) answering a real resolver (dig) through the tunnel.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use showoff_proto::{TunnelKind, VisitorRules};
use showoff_server::ServerConfig;
use showoff_testkit::visitor::udp_ask;
use showoff_testkit::{TestClient, TestServer, eventually, tunnel, within};
use tokio::net::UdpSocket;

/// A UDP service answering each datagram with `<sender port>:<datagram>`, so a visitor sees
/// both its own payload and that its flow has a socket of its own.
async fn tagging_echo() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            let mut answer = format!("{}:", from.port()).into_bytes();
            answer.extend_from_slice(&buf[..len]);
            let _ = socket.send_to(&answer, from).await;
        }
    });
    addr
}

/// A loopback UDP socket with a receive buffer for bursts (the default holds only about a
/// hundred small datagrams), so the test measures the tunnel, not its own sockets.
fn roomy_socket() -> UdpSocket {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).expect("socket");
    let _ = socket.set_recv_buffer_size(4 << 20);
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    socket.set_nonblocking(true).expect("non-blocking");
    UdpSocket::from_std(socket.into()).expect("tokio socket")
}

/// A UDP service sending each datagram back as it came.
async fn echo() -> SocketAddr {
    let socket = roomy_socket();
    let addr = socket.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..len], from).await;
        }
    });
    addr
}

async fn udp_client(server: &TestServer, local: SocketAddr) -> (TestClient, u16) {
    let config = TestClient::config(server, vec![tunnel(TunnelKind::Udp, Some("dns"), local)]);
    let client = TestClient::start(config).await.expect("session");
    let port = client.tunnels[0].port.expect("a public UDP port");
    (client, port)
}

#[tokio::test]
async fn each_visitor_gets_its_own_flow_and_its_own_answers() {
    let server = TestServer::start(ServerConfig::ephemeral()).await;
    let (client, port) = udp_client(&server, tagging_echo().await).await;
    assert_eq!(
        client.tunnels[0].public_url,
        format!("udp://localhost:{port}")
    );
    let limit = client.max_udp_payload.expect("the limit is told");
    assert!((1_000..=65_507).contains(&limit), "{limit}");
    let visitors: Vec<UdpSocket> = futures_util::future::join_all(
        (0..20).map(|_| async { UdpSocket::bind("127.0.0.1:0").await.expect("bind") }),
    )
    .await;
    let answers =
        futures_util::future::join_all(visitors.iter().enumerate().map(|(i, v)| async move {
            udp_ask(v, port, format!("visitor {i}").as_bytes()).await
        }))
        .await;
    let mut target_ports = HashSet::new();
    for (i, answer) in answers.iter().enumerate() {
        let text = String::from_utf8_lossy(answer);
        let (source, payload) = text.split_once(':').expect("tagged");
        assert_eq!(
            payload,
            format!("visitor {i}"),
            "answers reach their own visitor"
        );
        target_ports.insert(source.to_string());
    }
    assert_eq!(
        target_ports.len(),
        20,
        "one local socket per flow: {target_ports:?}"
    );
    assert_eq!(server.handle.stats().udp_flows_active, 20);
    // A second datagram of a flow keeps its socket.
    let again = udp_ask(&visitors[0], port, b"visitor 0").await;
    assert_eq!(again, answers[0]);
}

#[tokio::test]
async fn a_hundred_thousand_datagrams_come_back_whole() {
    const FLOWS: usize = 4;
    const PER_FLOW: usize = 25_000;
    const WINDOW: usize = 64;
    let server = TestServer::start(ServerConfig::ephemeral()).await;
    let (_client, port) = udp_client(&server, echo().await).await;
    let runs = (0..FLOWS).map(|flow| async move {
        let visitor = roomy_socket();
        visitor.connect(("127.0.0.1", port)).await.expect("connect");
        let mut seen = vec![false; PER_FLOW];
        let (mut lost, mut buf) = (0usize, vec![0u8; 2_048]);
        for start in (0..PER_FLOW).step_by(WINDOW) {
            let end = (start + WINDOW).min(PER_FLOW);
            for i in start..end {
                // Sizes 12 to 1,011 bytes; the content names the flow and the datagram.
                let mut payload = format!("{flow}:{i}:").into_bytes();
                payload.resize(12 + i % 1_000, (i % 251) as u8);
                visitor.send(&payload).await.expect("send");
            }
            let mut pending = end - start;
            while pending > 0 {
                let wait = tokio::time::timeout(Duration::from_secs(2), visitor.recv(&mut buf));
                let Ok(Ok(len)) = wait.await else { break };
                let text = String::from_utf8_lossy(&buf[..len]).into_owned();
                let mut parts = text.splitn(3, ':');
                let (f, i) = (parts.next(), parts.next());
                let i: usize = i.and_then(|i| i.parse().ok()).expect("numbered");
                assert_eq!(
                    f,
                    Some(flow.to_string().as_str()),
                    "another visitor's datagram"
                );
                assert_eq!(len, 12 + i % 1_000, "datagram {i} came back whole");
                assert_eq!(buf[len - 1], (i % 251) as u8, "datagram {i}'s content");
                assert!(
                    !std::mem::replace(&mut seen[i], true),
                    "datagram {i} came twice"
                );
                pending -= 1;
            }
            lost += pending;
        }
        lost
    });
    let lost: usize = futures_util::future::join_all(runs).await.iter().sum();
    let admin = server.addrs.admin.expect("admin");
    let metrics = showoff_testkit::visitor::get(admin, "localhost", "/metrics")
        .await
        .body;
    let drops: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("showoff_udp_drops_total") && !l.ends_with(" 0"))
        .collect();
    eprintln!(
        "udp echo: {} datagrams, {lost} lost on loopback; server drops: {drops:?}",
        FLOWS * PER_FLOW
    );
    assert_eq!(
        lost, 0,
        "the default queues lose nothing on a clean loopback"
    );
}

#[tokio::test]
async fn targets_that_ask_get_the_visitors_address_in_a_proxy_v2_header() {
    let server = TestServer::start(ServerConfig::ephemeral()).await;
    let target = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let mut spec = tunnel(
        TunnelKind::Udp,
        Some("syslog"),
        target.local_addr().expect("addr"),
    );
    spec.proxy_protocol = Some(showoff_client::ProxyVersion::V2);
    let client = TestClient::start(TestClient::config(&server, vec![spec]))
        .await
        .expect("session");
    let port = client.tunnels[0].port.expect("port");
    let visitor = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let from = visitor.local_addr().expect("addr");
    let mut buf = vec![0u8; 2_048];
    let len = within("the datagram", async {
        loop {
            visitor
                .send_to(b"<13>hello", ("127.0.0.1", port))
                .await
                .expect("send");
            let wait = tokio::time::timeout(Duration::from_millis(500), target.recv(&mut buf));
            if let Ok(Ok(len)) = wait.await {
                return len;
            }
        }
    })
    .await;
    let datagram = &buf[..len];
    let signature = b"\r\n\r\n\0\r\nQUIT\n";
    assert!(datagram.starts_with(signature), "a PROXY v2 header first");
    assert_eq!(datagram[12], 0x21, "version 2, PROXY");
    assert_eq!(datagram[13], 0x12, "IPv4 over UDP (DGRAM)");
    let header_len = 16 + usize::from(u16::from_be_bytes([datagram[14], datagram[15]]));
    assert_eq!(&datagram[16..20], &[127, 0, 0, 1], "the visitor's IP");
    assert_eq!(
        u16::from_be_bytes([datagram[24], datagram[25]]),
        from.port(),
        "the visitor's port"
    );
    assert_eq!(
        &datagram[header_len..],
        b"<13>hello",
        "then the datagram whole"
    );
}

#[tokio::test]
async fn visitor_ip_rules_apply_to_udp() {
    let server = TestServer::start(ServerConfig::ephemeral()).await;
    let mut spec = tunnel(TunnelKind::Udp, Some("closed"), echo().await);
    spec.spec.visitors = VisitorRules {
        deny_ips: vec!["127.0.0.0/8".into()],
        ..VisitorRules::default()
    };
    let client = TestClient::start(TestClient::config(&server, vec![spec]))
        .await
        .expect("session");
    let port = client.tunnels[0].port.expect("port");
    let visitor = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    visitor
        .send_to(b"let me in", ("127.0.0.1", port))
        .await
        .expect("send");
    let sample = r#"showoff_udp_drops_total{reason="ip_forbidden"}"#;
    within("the drop to be counted", async {
        while server.metric(sample).await != Some(1.0) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut buf = [0u8; 64];
    let answer = tokio::time::timeout(Duration::from_millis(300), visitor.recv(&mut buf)).await;
    assert!(answer.is_err(), "no answer to a denied visitor");
    assert_eq!(server.handle.stats().udp_flows_active, 0);
}

#[tokio::test]
async fn a_session_that_drops_mid_flow_frees_every_flow() {
    // A killed QUIC client says nothing: its session ends when the link has been silent for
    // the heartbeat timeout.
    let server = TestServer::start(ServerConfig {
        heartbeat_interval: Duration::from_secs(1),
        heartbeat_timeout: Duration::from_secs(3),
        ..ServerConfig::ephemeral()
    })
    .await;
    let (client, port) = udp_client(&server, echo().await).await;
    let visitors: Vec<UdpSocket> = futures_util::future::join_all(
        (0..10).map(|_| async { UdpSocket::bind("127.0.0.1:0").await.expect("bind") }),
    )
    .await;
    for visitor in &visitors {
        udp_ask(visitor, port, b"ping").await;
    }
    let handle = server.handle.clone();
    assert_eq!(handle.stats().udp_flows_active, 10);
    client.kill();
    eventually("every flow freed", || {
        let stats = handle.stats();
        stats.udp_flows_active == 0 && stats.sessions_active == 0
    })
    .await;
    let ended = r#"showoff_udp_flows_ended_total{reason="tunnel_closed"}"#;
    assert_eq!(server.metric(ended).await, Some(10.0));
}

/// A real DNS server on loopback: dnsmasq answering one name from its own hosts file.
struct Dnsmasq {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port free for both UDP and TCP a moment ago: dnsmasq binds both, and exits at once when
/// either is taken.
fn free_dns_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("a free port");
        let port = udp.local_addr().expect("address").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// dnsmasq on a free port, once it answers `dig` directly; another port is tried when it
/// exits at start (a test elsewhere took the port in between).
async fn dnsmasq() -> Dnsmasq {
    for _ in 0..5 {
        let dir = std::env::temp_dir().join(format!("showoff-dnsmasq-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let hosts = dir.join("hosts");
        std::fs::write(&hosts, "192.0.2.53 printer.showoff.test\n").expect("hosts file");
        let port = free_dns_port();
        let child = std::process::Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--user=root",
                &format!("--pid-file={}", dir.join("pid").display()),
                &format!("--port={port}"),
                &format!("--addn-hosts={}", hosts.display()),
                "--log-facility=-",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("dnsmasq runs (scripts/test installs Debian's dnsmasq-base)");
        let mut dns = Dnsmasq { child, port, dir };
        let answered = within("dnsmasq to answer or exit", async {
            loop {
                if matches!(dns.child.try_wait(), Ok(Some(_))) {
                    return false;
                }
                if dig(port, "printer.showoff.test").await == "192.0.2.53" {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        if answered {
            return dns;
        }
    }
    panic!("dnsmasq did not start on any of five free ports");
}

/// `dig` (bind9-dnsutils) asking `port` on loopback for `name`; its short answer.
async fn dig(port: u16, name: &str) -> String {
    let out = tokio::process::Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            "+short",
            "+tries=5",
            "+timeout=1",
            name,
        ])
        .output()
        .await
        .expect("dig runs (scripts/test installs Debian's bind9-dnsutils)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn a_real_dns_server_answers_many_resolvers_through_the_tunnel() {
    let dns = dnsmasq().await;
    let server = TestServer::start(ServerConfig::ephemeral()).await;
    let target: SocketAddr = ([127, 0, 0, 1], dns.port).into();
    let (_client, port) = udp_client(&server, target).await;
    // Many resolvers at once, each from its own source port, through the tunnel.
    let queries = (0..24).map(|_| dig(port, "printer.showoff.test"));
    let answers = within("every answer", futures_util::future::join_all(queries)).await;
    for answer in &answers {
        assert_eq!(answer, "192.0.2.53");
    }
    assert!(
        server.handle.stats().udp_flows_active >= 24,
        "one flow per resolver"
    );
}
