//! Test helpers for Showoff's end-to-end tests (in `tests/`): a real HTTP target
//! ([`target`]), a server and a client started for real on `127.0.0.1:0` ([`TestServer`],
//! [`TestClient`]), HTTP and raw-socket visitors ([`visitor`]), and polling with a deadline
//! ([`eventually`]) instead of sleeps; test certificates ([`pki`]); an impairment relay that
//! delays, drops, stalls and cuts connections ([`impair`]); the real binary as a child
//! process ([`process`]) and the chaos scenarios run against it ([`chaos`]); a real Redis for
//! the cluster tests ([`redis`]) and HAProxy in front of a cluster ([`haproxy`]); ports for
//! processes restarted where others expect them ([`ports`]).

pub mod chaos;
pub mod cluster;
pub mod h2_target;
pub mod h3_client;
pub mod haproxy;
pub mod impair;
pub mod pebble;
pub mod pki;
pub mod ports;
pub mod process;
pub mod redis;
pub mod target;
pub mod visitor;

use std::future::Future;
use std::time::Duration;

use showoff_client::{ClientConfig, ClientError, ClientEvent, TransportChoice, TunnelConfig};
use showoff_proto::{HostHeader, TunnelInfo, TunnelKind, TunnelSpec};
use showoff_server::{DrainReport, Server, ServerAddrs, ServerConfig, ServerHandle, Services};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long any wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Installs a test log subscriber once (`RUST_LOG` picks the level; silent by default).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Polls `check` every 10 ms until it is true; panics naming `what` after [`DEADLINE`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits `fut` under [`DEADLINE`], panicking with `what` if it takes longer.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A server running in the test's runtime on ephemeral loopback ports.
pub struct TestServer {
    /// Where it listens.
    pub addrs: ServerAddrs,
    /// Counters.
    pub handle: ServerHandle,
    /// The domain it serves.
    pub domain: String,
    /// The CA of the certificate the server was given for QUIC under test.
    quic_ca: Option<String>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<DrainReport>,
}

impl TestServer {
    /// Binds and runs a server with `config` (use [`ServerConfig::ephemeral`] as a base).
    pub async fn start(config: ServerConfig) -> Self {
        Self::start_with(config, Services::default()).await
    }

    /// A server exactly as `config` says, whatever transport is under test: for tests that
    /// speak the wire protocol by hand over plain TCP.
    pub async fn start_raw(config: ServerConfig) -> Self {
        Self::start_as(config, Services::default(), false).await
    }

    /// Like [`start_raw`](Self::start_raw), with services (a registry, a token table…).
    pub async fn start_raw_with(config: ServerConfig, services: Services) -> Self {
        Self::start_as(config, services, false).await
    }

    /// Like [`start`](Self::start), with a token table, audit sink or other services.
    pub async fn start_with(config: ServerConfig, services: Services) -> Self {
        Self::start_as(config, services, true).await
    }

    async fn start_as(mut config: ServerConfig, services: Services, under_test: bool) -> Self {
        init_logs();
        let quic_ca = under_test
            .then(|| with_quic_under_test(&mut config))
            .flatten();
        let domain = config.domain.clone();
        let server = Server::bind_with(config, services)
            .await
            .expect("server binds");
        let addrs = server.addrs();
        let handle = server.handle();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Self {
            addrs,
            handle,
            domain,
            quic_ca,
            shutdown,
            task,
        }
    }

    /// A server with the default test configuration.
    pub async fn default_config() -> Self {
        Self::start(ServerConfig::ephemeral()).await
    }

    /// The `Host` a visitor uses for tunnel `name`.
    pub fn host(&self, name: &str) -> String {
        format!("{name}.{}:{}", self.domain, self.addrs.http.port())
    }

    /// One sample of the admin listener's `/metrics`, e.g.
    /// `showoff_errors_total{code="tunnel_not_found"}`; `None` when absent.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let admin = self.addrs.admin.expect("the admin listener is on");
        let text = visitor::get(admin, "localhost", "/metrics").await.body;
        visitor::metric(&text, sample)
    }

    /// `GET path` on the admin listener with the admin token of
    /// [`ServerConfig::ephemeral`] (the `/api/v1` endpoints need it).
    pub async fn admin_get(&self, path: &str) -> visitor::Reply {
        let admin = self.addrs.admin.expect("the admin listener is on");
        let bearer = format!("Bearer {}", showoff_server::config::TEST_ADMIN_TOKEN);
        visitor::request(admin, "GET", path, &[("authorization", &bearer)], "").await
    }

    /// The principal of the oldest session, from the admin API.
    pub async fn first_principal(&self) -> String {
        let body = self.admin_get("/api/v1/sessions").await.body;
        let sessions: serde_json::Value = serde_json::from_str(&body).expect("sessions JSON");
        sessions[0]["principal"]
            .as_str()
            .expect("a session with a principal")
            .to_string()
    }

    /// Starts the drain without waiting for it.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Drains and waits for the server to stop.
    pub async fn stop(self) -> DrainReport {
        self.shutdown.cancel();
        within("server drain", self.task)
            .await
            .expect("server task")
    }
}

/// The transport the end-to-end suites run on: `SHOWOFF_TEST_TRANSPORT` (`tcp`, `mux`,
/// `quic`, `auto`), else the client's default (`tcp`).
pub fn transport_under_test() -> TransportChoice {
    match std::env::var("SHOWOFF_TEST_TRANSPORT") {
        Ok(value) if !value.is_empty() => value
            .parse()
            .unwrap_or_else(|e| panic!("SHOWOFF_TEST_TRANSPORT: {e}")),
        _ => TransportChoice::default(),
    }
}

/// With QUIC under test, a plain test server gets a certificate and a QUIC listener on
/// loopback; returns the CA its clients trust.
fn with_quic_under_test(config: &mut ServerConfig) -> Option<String> {
    if transport_under_test() != TransportChoice::Quic || config.tls.enabled() {
        return None;
    }
    // One CA and certificate for the whole test process: a restarted server is trusted alike.
    static CA: std::sync::OnceLock<(String, showoff_server::PemPair)> = std::sync::OnceLock::new();
    let (ca, pair) = CA.get_or_init(|| {
        let ca = pki::TestCa::new("showoff test QUIC");
        let pair = ca.server(&["localhost", "127.0.0.1"]);
        (ca.cert_pem, pair)
    });
    config.tls.certificates = vec![pair.clone()];
    // A test that restarts a server on the same addresses passes the QUIC one too.
    let any = std::net::SocketAddr::new(config.control_addr.ip(), 0);
    config.quic_addr = Some(config.quic_addr.unwrap_or(any));
    Some(ca.clone())
}

/// A tunnel spec for tests: `kind` with an optional name, pointing at `local`.
pub fn tunnel(kind: TunnelKind, name: Option<&str>, local: std::net::SocketAddr) -> TunnelConfig {
    TunnelConfig {
        tls: None,
        spec: TunnelSpec {
            upstream: Default::default(),
            kind,
            name: name.map(str::to_string),
            port: None,
            host_header: HostHeader::Preserve,
            target: local.to_string(),
            visitors: Default::default(),
        },
        local: local.to_string(),
        proxy_protocol: None,
    }
}

/// Starts a target labelled `label` and a client exposing it as HTTP tunnel `name`.
pub async fn serve_http(
    server: &TestServer,
    name: &str,
    label: &'static str,
) -> (target::Target, TestClient) {
    serve_http_on(server, name, label, transport_under_test()).await
}

/// Like [`serve_http`] on a given transport (tests of one transport's own behaviour).
pub async fn serve_http_on(
    server: &TestServer,
    name: &str,
    label: &'static str,
    transport: TransportChoice,
) -> (target::Target, TestClient) {
    let target = target::spawn_target(label).await;
    let mut config = TestClient::config(
        server,
        vec![tunnel(TunnelKind::Http, Some(name), target.addr)],
    );
    if transport != config.transport {
        config.transport = transport;
    }
    let client = TestClient::start(config).await.expect("client session");
    (target, client)
}

/// The refusal a client start ended with; panics on a session or another error.
pub fn refusal(result: Result<TestClient, ClientError>) -> (showoff_proto::RefusedCode, String) {
    match result {
        Err(ClientError::Refused { code, message }) => (code, message),
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, got a session"),
    }
}

/// A client running on a runtime of its own, so [`TestClient::kill`] can end every one of its
/// connections at once, as a killed process would.
pub struct TestClient {
    /// The tunnels of the first session.
    pub tunnels: Vec<TunnelInfo>,
    /// The transport of the first session.
    pub transport: showoff_proto::TransportKind,
    /// The first session's UDP payload limit, when it has UDP tunnels.
    pub max_udp_payload: Option<usize>,
    events: mpsc::UnboundedReceiver<ClientEvent>,
    shutdown: CancellationToken,
    runtime: Option<tokio::runtime::Runtime>,
    done: Option<tokio::sync::oneshot::Receiver<Result<(), ClientError>>>,
}

impl TestClient {
    /// A client config for `server` with fast reconnects, on the transport under test.
    pub fn config(server: &TestServer, tunnels: Vec<TunnelConfig>) -> ClientConfig {
        let mut config = ClientConfig::new(server.addrs.control.to_string(), tunnels);
        config.backoff.initial = Duration::from_millis(50);
        config.backoff.max = Duration::from_millis(500);
        config.transport = transport_under_test();
        if config.transport == TransportChoice::Quic {
            match (server.addrs.quic, &server.quic_ca) {
                (Some(quic), Some(ca)) => {
                    config.quic_port = Some(quic.port());
                    config.tls = Some(showoff_client::ClientTls {
                        ca: Some(ca.clone()),
                        ..Default::default()
                    });
                }
                // A server the test set up its own way: the closest stream transport.
                _ => config.transport = TransportChoice::Mux,
            }
        }
        config
    }

    /// Starts a client and waits until its session is up; returns the refusal if it ends first.
    pub async fn start(config: ClientConfig) -> Result<Self, ClientError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("client runtime");
        let (tx, mut events) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let (done_tx, mut done) = tokio::sync::oneshot::channel();
        let stop = shutdown.clone();
        runtime.spawn(async move {
            let _ = done_tx.send(showoff_client::run(config, tx, stop).await);
        });
        let first = within("client session", async {
            tokio::select! {
                Some(event) = events.recv() => Ok(Some(event)),
                // The event channel closes just before the result is sent: wait for the result.
                result = &mut done => Err(result),
            }
        })
        .await;
        let (tunnels, transport, max_udp_payload) = match first {
            Ok(Some(ClientEvent::Connected {
                tunnels,
                transport,
                max_udp_payload,
            })) => (
                tunnels.into_iter().map(|(t, _)| t).collect(),
                transport,
                max_udp_payload,
            ),
            Ok(other) => panic!("unexpected first client event {other:?}"),
            Err(Ok(Err(error))) => {
                runtime.shutdown_background();
                return Err(error);
            }
            Err(other) => panic!("client ended without a session: {other:?}"),
        };
        Ok(Self {
            tunnels,
            transport,
            max_udp_payload,
            events,
            shutdown,
            runtime: Some(runtime),
            done: Some(done),
        })
    }

    /// The next event, waiting at most [`DEADLINE`].
    pub async fn next_event(&mut self) -> ClientEvent {
        within("client event", self.events.recv())
            .await
            .expect("client still running")
    }

    /// Waits for the next `Connected` event (a reconnect) and returns its tunnels; panics
    /// after [`DEADLINE`] in all, however many other events (failed attempts) come first.
    pub async fn reconnected(&mut self) -> Vec<TunnelInfo> {
        within("a reconnect", async {
            loop {
                match self.events.recv().await {
                    Some(ClientEvent::Connected { tunnels, .. }) => {
                        return tunnels.into_iter().map(|(t, _)| t).collect();
                    }
                    Some(_) => continue,
                    None => panic!("the client ended before reconnecting"),
                }
            }
        })
        .await
    }

    /// The transport of the next session or switch, waiting at most `deadline`; `None` when
    /// none came.
    pub async fn next_transport(
        &mut self,
        deadline: Duration,
    ) -> Option<showoff_proto::TransportKind> {
        let wait = async {
            loop {
                match self.events.recv().await? {
                    ClientEvent::Connected { transport, .. } => return Some(transport),
                    ClientEvent::Switched { to, .. } => return Some(to),
                    _ => {}
                }
            }
        };
        tokio::time::timeout(deadline, wait).await.ok().flatten()
    }

    /// Whether an event is waiting (without waiting for one).
    pub fn has_event(&mut self) -> bool {
        !self.events.is_empty()
    }

    /// Stops the client gracefully and returns how it ended.
    pub async fn stop(mut self) -> Result<(), ClientError> {
        self.shutdown.cancel();
        let done = self.done.take().expect("not stopped twice");
        within("client stop", done).await.expect("client result")
    }

    /// Waits for the client to end by itself (a permanent refusal, or a loss with reconnect off).
    pub async fn ended(mut self) -> Result<(), ClientError> {
        let done = self.done.take().expect("not stopped twice");
        within("the client to end", done)
            .await
            .expect("client result")
    }

    /// Ends the client abruptly: every socket closes, nothing is said to the server.
    pub fn kill(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            self.shutdown.cancel();
            runtime.shutdown_background();
        }
    }
}

/// A control connection driven by hand, for clients that misbehave on purpose.
pub mod raw_client {
    use futures_util::{SinkExt, StreamExt};
    use showoff_proto::{
        ClientMessage, FrameCodec, PROTOCOL_VERSION, Role, ServerMessage, TunnelSpec,
    };
    use tokio::net::TcpStream;
    use tokio_util::codec::Framed;

    use crate::within;

    /// A framed connection as a client sees it.
    pub type Conn = Framed<TcpStream, FrameCodec<ServerMessage, ClientMessage>>;

    /// Connects to `addr` (control or data listener).
    pub async fn connect(addr: std::net::SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Framed::new(stream, FrameCodec::new())
    }

    /// Sends one message.
    pub async fn send(conn: &mut Conn, msg: ClientMessage) {
        conn.send(msg).await.expect("send");
    }

    /// The next message (`None` when the server closed the connection).
    pub async fn next(conn: &mut Conn) -> Option<ServerMessage> {
        within("server frame", conn.next())
            .await
            .and_then(Result::ok)
    }

    /// Sends `Hello` with the current version and `role`.
    pub async fn hello(conn: &mut Conn, role: Role) {
        send(
            conn,
            ClientMessage::Hello {
                version: PROTOCOL_VERSION,
                role,
                transport: Default::default(),
            },
        )
        .await;
    }

    /// An HTTP tunnel named `name`, as a raw `Open` asks for it.
    pub fn http_spec(name: &str) -> TunnelSpec {
        TunnelSpec {
            upstream: Default::default(),
            kind: showoff_proto::TunnelKind::Http,
            name: Some(name.into()),
            port: None,
            host_header: showoff_proto::HostHeader::Preserve,
            target: String::new(),
            visitors: Default::default(),
        }
    }

    /// Opens a session by hand: `Hello`, `Auth`, `Open`; returns the server's answer.
    pub async fn open(
        addr: std::net::SocketAddr,
        token: &str,
        tunnels: Vec<TunnelSpec>,
    ) -> (Conn, ServerMessage) {
        let mut conn = connect(addr).await;
        hello(&mut conn, Role::Control).await;
        send(
            &mut conn,
            ClientMessage::Auth {
                token: token.into(),
            },
        )
        .await;
        send(&mut conn, ClientMessage::Open { tunnels }).await;
        let answer = next(&mut conn).await.expect("an answer to open");
        (conn, answer)
    }
}
