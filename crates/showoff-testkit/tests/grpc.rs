//! HTTP/2 end to end (issue 18): gRPC through the HTTPS listener with a real gRPC server and
//! client (Python `grpcio`, `tests/grpc/*.py`), and HTTP/2 targets (hyper, h2c with prior
//! knowledge and h2 over TLS) reached by HTTP/2 and HTTP/1.1 visitors, trailers included.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use showoff_client::target::TargetTls;
use showoff_proto::{TunnelKind, Upstream};
use showoff_server::{ServerConfig, TlsConfig};
use showoff_testkit::h2_target::{spawn_h2_tls_target, spawn_h2c_target};
use showoff_testkit::pki::TestCa;
use showoff_testkit::target::spawn_target;
use showoff_testkit::visitor::tls_connect;
use showoff_testkit::{TestClient, TestServer, tunnel, within};

const DOMAIN: &str = "tunnel.test";

fn script(name: &str) -> String {
    format!("{}/tests/grpc/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A Python gRPC server process; killed when dropped. Its later output lines arrive on `lines`.
struct GrpcServer {
    child: Child,
    port: u16,
    lines: mpsc::Receiver<String>,
}

impl GrpcServer {
    fn start(tls: Option<(&str, &str)>) -> Self {
        let mut command = Command::new("python3");
        command.arg(script("server.py"));
        if let Some((cert, key)) = tls {
            command.args(["--tls", cert, key]);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the gRPC server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let first = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the gRPC server starts");
        let port = first
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .expect("port line");
        Self { child, port, lines }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTPS server for `*.tunnel.test`, the CA's file for clients, and the CA.
async fn https_server() -> (TestServer, TestCa, tempfile_path::Path) {
    let ca = TestCa::new("grpc CA");
    let config = ServerConfig {
        tls: TlsConfig {
            certificates: vec![ca.server(&["*.tunnel.test", "127.0.0.1"])],
            https_addr: Some("127.0.0.1:0".parse().expect("addr")),
            ..TlsConfig::default()
        },
        domain: DOMAIN.into(),
        ..ServerConfig::ephemeral()
    };
    let server = TestServer::start(config).await;
    let ca_file = tempfile_path::Path::with(&ca.cert_pem);
    (server, ca, ca_file)
}

/// A client with one HTTP tunnel `name` to `target`, speaking `upstream` to it.
async fn client(
    server: &TestServer,
    ca: &TestCa,
    name: &str,
    target: SocketAddr,
    upstream: Upstream,
    tls: Option<TargetTls>,
) -> TestClient {
    let mut config = tunnel(TunnelKind::Http, Some(name), target);
    config.spec.upstream = upstream;
    config.tls = tls;
    let mut client = TestClient::config(server, vec![config]);
    client.tls = Some(showoff_client::ClientTls {
        ca: Some(ca.cert_pem.clone()),
        ..Default::default()
    });
    TestClient::start(client).await.expect("session")
}

/// Runs the gRPC client script; its JSON answer.
async fn grpc_client(
    server: &TestServer,
    ca_file: &tempfile_path::Path,
    name: &str,
    scenario: &str,
) -> serde_json::Value {
    let https = server.addrs.https.expect("https listener");
    let args = [
        script("client.py"),
        https.to_string(),
        format!("{name}.{DOMAIN}:{}", https.port()),
        ca_file.0.display().to_string(),
        scenario.to_string(),
    ];
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(&args)
            .output()
            .expect("python3 runs the gRPC client")
    });
    let output = within("the gRPC client", output).await.expect("client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "client failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("one JSON line")
}

fn assert_every_call_works(out: &serde_json::Value, grpc: &GrpcServer) {
    assert_eq!(out["unary"], "hello", "{out}");
    let headers = &out["headers"];
    assert_eq!(headers["x-forwarded-proto"], "https", "{out}");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1", "{out}");
    // A server error keeps its status, message and custom trailing metadata.
    assert_eq!(out["error"]["code"], "FAILED_PRECONDITION", "{out}");
    assert_eq!(out["error"]["details"], "no such thing", "{out}");
    assert_eq!(
        out["error"]["trailing"]["x-detail"], "the thing is missing",
        "{out}"
    );
    assert_eq!(out["deadline"], "DEADLINE_EXCEEDED", "{out}");
    assert_eq!(
        out["server_stream"],
        serde_json::json!([300000, 300000, 300000, 300000, 300000]),
        "{out}"
    );
    assert_eq!(out["client_stream"], "40:2800000", "{out}");
    assert_eq!(
        out["bidi"],
        serde_json::json!(["re:1", "re:2", "re:3"]),
        "{out}"
    );
    assert_eq!(out["bidi_bytes"], 30 * 100_003, "{out}");
    assert_eq!(out["hang_first"], "first", "{out}");
    assert_eq!(out["cancelled"], "CANCELLED", "{out}");
    // The cancel reached the target as a reset of its stream.
    let line = grpc
        .lines
        .recv_timeout(Duration::from_secs(10))
        .expect("the server saw the cancel");
    assert_eq!(line, "cancelled");
}

#[tokio::test]
async fn grpc_calls_of_every_kind_cross_an_h2c_tunnel() {
    let grpc = GrpcServer::start(None);
    let (server, ca, ca_file) = https_server().await;
    let _client = client(&server, &ca, "grpc", grpc.addr(), Upstream::H2c, None).await;
    let out = grpc_client(&server, &ca_file, "grpc", "all").await;
    assert_every_call_works(&out, &grpc);
}

#[tokio::test]
async fn grpc_calls_reach_a_tunnel_another_cluster_instance_holds() {
    let redis = showoff_testkit::redis::RedisServer::start();
    let ca = TestCa::new("grpc cluster CA");
    let instance = |name: &str| {
        let (config, services) = showoff_testkit::cluster::instance_parts(
            &redis,
            name,
            "grpc",
            showoff_testkit::cluster::SECRET,
        );
        let config = ServerConfig {
            tls: TlsConfig {
                certificates: vec![ca.server(&["*.tunnel.test", "127.0.0.1"])],
                https_addr: Some("127.0.0.1:0".parse().expect("addr")),
                ..TlsConfig::default()
            },
            domain: DOMAIN.into(),
            ..config
        };
        TestServer::start_with(config, services)
    };
    let (front, holder) = (instance("front").await, instance("holder").await);
    let grpc = GrpcServer::start(None);
    let _client = client(&holder, &ca, "far", grpc.addr(), Upstream::H2c, None).await;
    let ca_file = tempfile_path::Path::with(&ca.cert_pem);
    // The visitor reaches the instance that does not hold the tunnel: one HTTP/2 hop.
    let out = grpc_client(&front, &ca_file, "far", "all").await;
    assert_every_call_works(&out, &grpc);
    let forwarded = front
        .metric("showoff_cluster_forwarded_total{result=\"ok\"}")
        .await
        .unwrap_or_default();
    assert!(forwarded >= 8.0, "every call took the hop: {forwarded}");
}

#[tokio::test]
async fn grpc_calls_cross_a_tunnel_to_a_tls_target_and_auto_finds_http2() {
    let target_ca = TestCa::new("target CA");
    let identity = target_ca.server(&["localhost", "127.0.0.1"]);
    let cert = tempfile_path::Path::with(&identity.cert);
    let key = tempfile_path::Path::with(&identity.key);
    let grpc = GrpcServer::start(Some((
        &cert.0.display().to_string(),
        &key.0.display().to_string(),
    )));
    let (server, ca, ca_file) = https_server().await;
    let addr = grpc.addr().to_string();
    // The target's certificate is checked against its CA and name when one is given.
    let tls = TargetTls::new(
        Upstream::H2,
        &addr,
        Some(&target_ca.cert_pem),
        Some("localhost"),
    )
    .expect("target TLS");
    let _h2 = client(&server, &ca, "tls", grpc.addr(), Upstream::H2, Some(tls)).await;
    let out = grpc_client(&server, &ca_file, "tls", "all").await;
    assert_every_call_works(&out, &grpc);

    let plain = GrpcServer::start(None);
    let _auto = client(&server, &ca, "auto", plain.addr(), Upstream::Auto, None).await;
    let out = grpc_client(&server, &ca_file, "auto", "one").await;
    assert_eq!(out["unary"], "hello", "{out}");
}

#[tokio::test]
async fn grpc_refusals_are_grpc_statuses_with_the_showoff_code() {
    let (server, ca, ca_file) = https_server().await;
    let out = grpc_client(&server, &ca_file, "nobody", "one").await;
    assert_refused(&out, "tunnel_not_found", "nobody.tunnel.test");
    // A tunnel that speaks HTTP/1.1 to its target cannot carry gRPC, and says how to fix it.
    let target = spawn_target("http1").await;
    let _client = client(&server, &ca, "web", target.addr, Upstream::Http1, None).await;
    let out = grpc_client(&server, &ca_file, "web", "one").await;
    assert_refused(&out, "grpc_needs_http2", "--upstream h2c");
    // gRPC over HTTP/1.1 is refused with 505 and the reason.
    let https = server.addrs.https.expect("https");
    let tls = tls_connect(https, "web.tunnel.test", &ca.cert_pem, &["http/1.1"])
        .await
        .expect("tls");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("http1");
    tokio::spawn(connection);
    let request = Request::post("/showoff.test.Echo/Unary")
        .header("host", "web.tunnel.test")
        .header("content-type", "application/grpc")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let response = within("505", sender.send_request(request))
        .await
        .expect("response");
    assert_eq!(response.status(), 505);
    assert_eq!(response.headers()["x-showoff-error"], "grpc_needs_http2");
}

/// The call failed `UNIMPLEMENTED`, Showoff's `code` in its trailers and `saying` in its
/// message.
fn assert_refused(out: &serde_json::Value, code: &str, saying: &str) {
    let error = &out["error"];
    assert_eq!(error["code"], "UNIMPLEMENTED", "{out}");
    assert_eq!(error["trailing"]["x-showoff-error"], code, "{out}");
    let details = error["details"].as_str().unwrap_or_default();
    assert!(details.contains(saying), "{out}");
}

/// An HTTP/2 connection to the HTTPS listener, as `name`'s visitor.
async fn h2_visitor(
    server: &TestServer,
    ca: &TestCa,
    name: &str,
) -> hyper::client::conn::http2::SendRequest<
    http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>,
> {
    let https = server.addrs.https.expect("https");
    let sni = format!("{name}.{DOMAIN}");
    let tls = tls_connect(https, &sni, &ca.cert_pem, &["h2"])
        .await
        .expect("tls");
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2");
    tokio::spawn(connection);
    sender
}

/// The whole body of a response.
async fn body_of(response: http::Response<hyper::body::Incoming>) -> Bytes {
    within("body", response.into_body().collect())
        .await
        .expect("body")
        .to_bytes()
}

/// A request body of `chunks` data frames, then the trailer `x-client-trailer: sent`.
fn body_with_trailer(
    chunks: usize,
) -> http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible> {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-client-trailer", "sent".parse().expect("value"));
    let frames = (0..chunks)
        .map(|_| Frame::data(Bytes::from(vec![b'q'; 16 * 1024])))
        .chain([Frame::trailers(trailers)])
        .map(Ok::<_, std::convert::Infallible>);
    BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)))
}

#[tokio::test]
async fn http2_targets_get_trailers_both_ways_from_http2_and_http1_visitors() {
    let (server, ca, _ca_file) = https_server().await;
    let h2c = spawn_h2c_target("h2c").await;
    let _h2c = client(&server, &ca, "plain", h2c.addr, Upstream::H2c, None).await;
    let target_ca = TestCa::new("target CA");
    let tls_target = spawn_h2_tls_target("h2", target_ca.server(&["127.0.0.1"])).await;
    let tls =
        TargetTls::new(Upstream::H2, &tls_target.addr.to_string(), None, None).expect("target TLS");
    let _h2 = client(
        &server,
        &ca,
        "secure",
        tls_target.addr,
        Upstream::H2,
        Some(tls),
    )
    .await;
    for (name, label) in [("plain", "h2c"), ("secure", "h2")] {
        let mut sender = h2_visitor(&server, &ca, name).await;
        let request = Request::post(format!("https://{name}.{DOMAIN}/echo-body"))
            .header("te", "trailers")
            .body(body_with_trailer(20))
            .expect("request");
        let response = within("echo", sender.send_request(request))
            .await
            .expect("response");
        assert_eq!(response.status(), 200);
        let collected = within("body", response.into_body().collect())
            .await
            .expect("body");
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(collected.to_bytes().len(), 20 * 16 * 1024, "{name}");
        assert_eq!(trailers["x-bytes"], (20 * 16 * 1024).to_string());
        assert_eq!(
            trailers["x-got-trailer"], "sent",
            "{name}: request trailers"
        );
        let request = Request::get(format!("https://{name}.{DOMAIN}/info"))
            .body(body_with_trailer(0))
            .expect("request");
        let response = within("echo", sender.send_request(request))
            .await
            .expect("response");
        let echo: serde_json::Value =
            serde_json::from_slice(&body_of(response).await).expect("json");
        assert_eq!(echo["target"], label);
        assert_eq!(echo["version"], "HTTP/2.0");
        assert_eq!(echo["authority"], format!("{name}.{DOMAIN}"));
        assert_eq!(
            echo["headers"]["x-forwarded-proto"],
            serde_json::json!(["https"])
        );
    }
    // An HTTP/1.1 visitor of an HTTP/2 tunnel: its connection is handed over and each request
    // reaches the target as HTTP/2, keep-alive and all.
    let https = server.addrs.https.expect("https");
    let tls = tls_connect(https, "plain.tunnel.test", &ca.cert_pem, &["http/1.1"])
        .await
        .expect("tls");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("http1");
    tokio::spawn(connection);
    for path in ["/first", "/second"] {
        let request = Request::get(path)
            .header("host", "plain.tunnel.test")
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request");
        let response = within("h1", sender.send_request(request))
            .await
            .expect("response");
        assert_eq!(response.status(), 200);
        let echo: serde_json::Value =
            serde_json::from_slice(&body_of(response).await).expect("json");
        assert_eq!(echo["version"], "HTTP/2.0");
        assert_eq!(echo["path"], path);
    }
    assert_eq!(
        h2c.connections(),
        1,
        "one HTTP/2 connection carries every request"
    );
}

#[tokio::test]
async fn the_inspector_records_each_call_of_an_http2_tunnel_with_its_trailers() {
    use showoff_client::inspect::{InspectConfig, Inspector};
    let grpc = GrpcServer::start(None);
    let (server, ca, ca_file) = https_server().await;
    let inspector = Inspector::new(&InspectConfig::default()).expect("inspector");
    let mut config = tunnel(TunnelKind::Http, Some("seen"), grpc.addr());
    config.spec.upstream = Upstream::H2c;
    let mut client = TestClient::config(&server, vec![config]);
    client.tls = Some(showoff_client::ClientTls {
        ca: Some(ca.cert_pem.clone()),
        ..Default::default()
    });
    client.inspector = Some(inspector.clone());
    let _client = TestClient::start(client).await.expect("session");
    let out = grpc_client(&server, &ca_file, "seen", "all").await;
    assert_every_call_works(&out, &grpc);
    // Every call is an entry once it ended: the unary ones, the streams, the cancelled one.
    let counted = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while inspector.entries().len() < 9 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    if counted.is_err() {
        let seen: Vec<_> = inspector
            .entries()
            .iter()
            .map(|e| (e.request.path.clone(), e.error))
            .collect();
        panic!("entries: {seen:?}");
    }
    let entries = inspector.entries();
    let failed = entries
        .iter()
        .find(|e| e.request.body.captured.ends_with(b"fail"))
        .expect("the failing call");
    assert_eq!(failed.request.method, "POST");
    assert_eq!(failed.request.path, "/showoff.test.Echo/Unary");
    assert_eq!(failed.request.version, "HTTP/2");
    let response = failed.response.as_ref().expect("answered");
    assert_eq!(response.status, 200);
    let fields = response.headers();
    let field =
        |name: &str| showoff_client::inspect::entry::header(&fields, name).map(str::to_string);
    assert_eq!(field("content-type").as_deref(), Some("application/grpc"));
    assert_eq!(field("grpc-status").as_deref(), Some("9"), "{fields:?}");
    assert_eq!(field("x-detail").as_deref(), Some("the thing is missing"));
    let streamed = entries
        .iter()
        .find(|e| e.request.path.ends_with("/ServerStream"))
        .expect("the server stream");
    let size = streamed.response.as_ref().expect("answered").body.size;
    assert!(
        size >= 5 * 300_000,
        "the streamed messages were counted: {size}"
    );
    let cancelled = entries
        .iter()
        .find(|e| e.request.path.ends_with("/Hang"))
        .expect("the cancelled call");
    assert_eq!(cancelled.error, Some("stream_reset"));
}

#[tokio::test]
async fn auto_settles_on_http1_for_an_http1_target() {
    let (server, ca, _ca_file) = https_server().await;
    let target = spawn_target("http1").await;
    let _client = client(&server, &ca, "old", target.addr, Upstream::Auto, None).await;
    let mut sender = h2_visitor(&server, &ca, "old").await;
    for _ in 0..3 {
        let request = Request::get(format!("https://old.{DOMAIN}/text"))
            .body(body_with_trailer(0))
            .expect("request");
        let response = within("auto", sender.send_request(request))
            .await
            .expect("response");
        assert_eq!(response.status(), 200);
        assert_eq!(body_of(response).await, showoff_testkit::target::TEXT);
    }
    // The probe's connection and the HTTP/1.1 one: not one per request.
    assert!(target.connections() <= 2, "{}", target.connections());
}

/// Files holding test PEMs, removed when dropped.
mod tempfile_path {
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub struct Path(pub std::path::PathBuf);

    impl Path {
        pub fn with(text: &str) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("showoff-grpc-{}-{n}.pem", std::process::id()));
            std::fs::write(&path, text).expect("write PEM");
            Self(path)
        }
    }

    impl Drop for Path {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}
