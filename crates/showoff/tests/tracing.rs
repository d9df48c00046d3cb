//! Tracing with real parts: the real `showoff server` and `showoff http` export their spans over
//! OTLP to a real receiver (Python, on the OpenTelemetry protocol definitions: OTLP/HTTP and
//! gRPC, `tests/otel/receiver.py`), and the target is a Python HTTP server instrumented with
//! the OpenTelemetry SDK (`tests/otel/target.py`) exporting to the same receiver. A visitor's
//! request must come out as one trace: server request → upstream exchange → stream pairing →
//! the client's stream → its target dial, and the target's own span under the upstream
//! exchange. An untrusted visitor's `traceparent` is only linked; a trusted one's is the
//! parent; sampling 0 exports nothing; a request forwarded between two instances of a cluster
//! (real `redis-server`) stays one trace. `scripts/test` installs the Python packages
//! (`tests/otel/requirements.txt`).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use showoff_testkit::process::{Reaper, ServerProcess, lines, spawn_client_with_env, wait_line};
use showoff_testkit::visitor::request_to;

const BIN: &str = env!("CARGO_BIN_EXE_showoff");
/// A visitor's own trace context.
const VISITOR_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const VISITOR_SPAN: &str = "00f067aa0ba902b7";
/// Batches leave every 100 ms instead of every 5 s, so the test waits little.
const FAST_BATCHES: [(&str, &str); 1] = [("OTEL_BSP_SCHEDULE_DELAY", "100")];

fn otel_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/otel")
}

/// The receiver: its ports and the spans it printed.
struct Receiver {
    _child: Reaper,
    spans: mpsc::Receiver<String>,
    http: u16,
    grpc: u16,
}

impl Receiver {
    fn start() -> Self {
        let mut child = Command::new("python3")
            .arg(otel_dir().join("receiver.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the receiver");
        let out = lines(child.stdout.take().expect("stdout"));
        let ports = wait_line(
            &out,
            "the receiver's ports",
            Duration::from_secs(30),
            |_| true,
        );
        let ports: Value = serde_json::from_str(&ports).unwrap_or_else(|_| {
            panic!(
                "the receiver did not start (pip install -r tests/otel/requirements.txt): {ports}"
            )
        });
        let port = |key: &str| ports[key].as_u64().expect("port") as u16;
        Self {
            http: port("http"),
            grpc: port("grpc"),
            _child: Reaper(child),
            spans: out,
        }
    }

    fn http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }

    /// Spans received until `done` holds for them (or the deadline, which fails the test).
    fn until(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut spans = Vec::new();
        while !done(&spans) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.spans.recv_timeout(left) {
                Ok(line) => spans.push(serde_json::from_str(&line).expect("span JSON")),
                Err(_) => panic!("no {what} in time; received: {spans:#?}"),
            }
        }
        spans
    }

    /// Whatever arrives within `wait` (for asserting that nothing does).
    fn within(&self, wait: Duration) -> Vec<String> {
        let deadline = Instant::now() + wait;
        let mut got = Vec::new();
        while let Ok(line) = self
            .spans
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            got.push(line);
        }
        got
    }
}

/// The instrumented target, exporting to `receiver`; its port.
fn target(receiver: &Receiver) -> (Reaper, u16) {
    let mut child = Command::new("python3")
        .arg(otel_dir().join("target.py"))
        .arg(format!("{}/v1/traces", receiver.http_endpoint()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs the target");
    let out = lines(child.stdout.take().expect("stdout"));
    let port = wait_line(&out, "the target's port", Duration::from_secs(30), |_| true);
    (Reaper(child), port.trim().parse().expect("port"))
}

/// `showoff http PORT` against `server`, named `name`, with `flags`; its public host.
fn client(server: &ServerProcess, port: u16, name: &str, flags: &[&str]) -> (Reaper, String) {
    let mut flags = flags.to_vec();
    flags.extend(["--name", name, "--no-inspect"]);
    let (child, url) = client_of("http", server, port, &flags);
    (child, url.trim_start_matches("http://").to_string())
}

/// `showoff KIND PORT` against `server` with `flags`; its public URL.
fn client_of(kind: &str, server: &ServerProcess, port: u16, flags: &[&str]) -> (Reaper, String) {
    let (port, control) = (port.to_string(), server.addr("control").to_string());
    let mut args = vec![kind, &port, "--json", "--server", &control];
    args.extend(flags);
    let args: Vec<&OsStr> = args.into_iter().map(OsStr::new).collect();
    let (child, out) = spawn_client_with_env(Path::new(BIN), &args, &FAST_BATCHES);
    let up = wait_line(&out, "the tunnel line", Duration::from_secs(20), |l| {
        l.contains("\"connected\"")
    });
    let up: Value = serde_json::from_str(&up).expect("JSON");
    let url = up["public_url"].as_str().expect("url").to_string();
    (child, url)
}

fn server(flags: &[&str]) -> ServerProcess {
    let flags: Vec<&OsStr> = flags.iter().map(OsStr::new).collect();
    ServerProcess::start_with_env(Path::new(BIN), &flags, &FAST_BATCHES)
}

/// Everything one test runs: the receiver, the instrumented target, a server and `showoff
/// http` for the target, both exporting to the receiver.
struct Rig {
    receiver: Receiver,
    server: ServerProcess,
    /// The tunnel's public host.
    host: String,
    /// The target's port.
    port: u16,
    _target: Reaper,
    _client: Reaper,
}

/// A [`Rig`] whose tunnel is `name`; `both` are flags for the server and the client besides the
/// endpoint (sampling), `server_only` the server's own; `grpc` exports over gRPC.
fn rig(name: &str, both: &[&str], server_only: &[&str], grpc: bool) -> Rig {
    let receiver = Receiver::start();
    let (target, port) = target(&receiver);
    let endpoint = if grpc {
        receiver.grpc_endpoint()
    } else {
        receiver.http_endpoint()
    };
    let protocol = if grpc { "grpc" } else { "http" };
    let mut export = vec!["--otlp-endpoint", &endpoint, "--otlp-protocol", protocol];
    export.extend(both);
    let server = server(&[export.as_slice(), server_only].concat());
    let (client, host) = client(&server, port, name, &export);
    Rig {
        receiver,
        server,
        host,
        port,
        _target: target,
        _client: client,
    }
}

fn named<'a>(spans: &'a [Value], name: &str) -> Option<&'a Value> {
    spans.iter().find(|s| s["name"] == name)
}

fn span<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    named(spans, name).unwrap_or_else(|| panic!("no {name} span in {spans:#?}"))
}

/// Asserts `child`'s parent is `parent`, in the same trace.
fn child_of(child: &Value, parent: &Value) {
    assert_eq!(
        child["trace_id"], parent["trace_id"],
        "{child:#} / {parent:#}"
    );
    assert_eq!(
        child["parent_span_id"], parent["span_id"],
        "{} must be a child of {}",
        child["name"], parent["name"]
    );
}

async fn visit(server: &ServerProcess, host: &str, path: &str, traceparent: &str) -> String {
    let headers = [("traceparent", traceparent)];
    let reply = request_to(
        server.addr("http"),
        host,
        "GET",
        path,
        &headers,
        Bytes::new(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

fn visitor_parent() -> String {
    format!("00-{VISITOR_TRACE}-{VISITOR_SPAN}-01")
}

#[tokio::test]
async fn a_request_is_one_trace_from_the_server_through_the_client_to_the_target() {
    let Rig {
        receiver,
        server,
        host,
        port,
        ..
    } = &rig("traced", &[], &[], false);
    let echoed = visit(server, host, "/hello", &visitor_parent()).await;

    let spans = receiver.until("complete trace", |spans| {
        [
            "http.request",
            "showoff.upstream",
            "showoff.stream.open",
            "showoff.client.stream",
            "showoff.client.dial",
            "target /hello",
        ]
        .iter()
        .all(|name| named(spans, name).is_some())
    });
    let request = span(&spans, "http.request");
    let upstream = span(&spans, "showoff.upstream");
    let open = span(&spans, "showoff.stream.open");
    let stream = span(&spans, "showoff.client.stream");
    let dial = span(&spans, "showoff.client.dial");
    let target = span(&spans, "target /hello");

    // The visitor on loopback is not trusted: a new trace, linked to the visitor's.
    assert_eq!(request["parent_span_id"], "", "{request:#}");
    assert_ne!(request["trace_id"], VISITOR_TRACE);
    assert_eq!(
        request["links"],
        serde_json::json!([{"trace_id": VISITOR_TRACE, "span_id": VISITOR_SPAN}])
    );
    child_of(upstream, request);
    child_of(open, upstream);
    child_of(stream, open);
    child_of(dial, stream);
    child_of(target, upstream);
    // What the target was sent is the upstream span, sampled; the visitor's header is gone.
    let trace = request["trace_id"].as_str().expect("id");
    let sent = format!(
        "00-{trace}-{}-01",
        upstream["span_id"].as_str().expect("id")
    );
    assert_eq!(echoed, sent);

    for (span, service) in [
        (request, "showoff-server"),
        (open, "showoff-server"),
        (stream, "showoff-client"),
        (dial, "showoff-client"),
        (target, "target"),
    ] {
        assert_eq!(span["service"], service, "{span:#}");
    }
    assert!(request["resource"]["service.instance.id"].is_string());
    assert_eq!(request["kind"], 2, "SERVER");
    assert_eq!(upstream["kind"], 3, "CLIENT");
    let attrs = &request["attributes"];
    assert_eq!(attrs["http.request.method"], "GET");
    assert_eq!(attrs["url.path"], "/hello");
    assert_eq!(attrs["showoff.tunnel"], "traced");
    assert_eq!(attrs["http.response.status_code"], 200);
    assert_eq!(open["attributes"]["showoff.transport"], "tcp");
    assert!(
        ["hit", "miss"].contains(
            &open["attributes"]["showoff.warm_pool"]
                .as_str()
                .unwrap_or("")
        ),
        "{open:#}"
    );
    assert_eq!(
        dial["attributes"]["server.address"],
        format!("127.0.0.1:{port}")
    );
    assert!(
        stream["attributes"]["showoff.bytes_out"].as_i64() > Some(0),
        "{stream:#}"
    );
}

#[tokio::test]
async fn a_trusted_visitor_continues_its_trace_over_grpc_and_logs_carry_the_trace_id() {
    let own = [
        "--trace-trust",
        "127.0.0.0/8",
        "--log-level",
        "info,showoff_server=debug",
    ];
    let Rig {
        receiver,
        server,
        host,
        ..
    } = &rig("trusted", &[], &own, true);
    visit(server, host, "/continued", &visitor_parent()).await;

    let spans = receiver.until("the continued trace", |spans| {
        named(spans, "target /continued").is_some() && named(spans, "showoff.client.dial").is_some()
    });
    let request = span(&spans, "http.request");
    assert_eq!(request["via"], "grpc");
    assert_eq!(request["trace_id"], VISITOR_TRACE);
    assert_eq!(request["parent_span_id"], VISITOR_SPAN);
    assert_eq!(
        span(&spans, "showoff.client.dial")["trace_id"],
        VISITOR_TRACE
    );
    assert_eq!(span(&spans, "target /continued")["trace_id"], VISITOR_TRACE);

    // A refused request's span has its status and code, and its log line the trace id.
    let refused = request_to(
        server.addr("http"),
        "nobody.localhost",
        "GET",
        "/",
        &[(
            "traceparent",
            "00-11111111111111111111111111111111-2222222222222222-01",
        )],
        Bytes::new(),
    )
    .await;
    assert_eq!(refused.status, 404);
    let spans = receiver.until("the refused request", |spans| {
        spans
            .iter()
            .any(|s| s["trace_id"] == "11111111111111111111111111111111")
    });
    let failed = spans
        .iter()
        .find(|s| s["trace_id"] == "11111111111111111111111111111111")
        .expect("span");
    assert_eq!(failed["attributes"]["http.response.status_code"], 404);
    assert_eq!(failed["attributes"]["showoff.error"], "tunnel_not_found");
    let logged = wait_line(
        &server.log,
        "the refusal's log line",
        Duration::from_secs(10),
        |l| l.contains("request refused"),
    );
    assert!(
        logged.contains("\"trace_id\":\"11111111111111111111111111111111\""),
        "{logged}"
    );
}

#[tokio::test]
async fn sampling_zero_exports_nothing_and_tells_the_target_so() {
    let Rig {
        receiver,
        server,
        host,
        ..
    } = &rig("unsampled", &["--trace-sample", "0"], &[], false);
    for i in 0..5 {
        // An untrusted visitor asking for sampling does not get it.
        let echoed = visit(server, host, &format!("/{i}"), &visitor_parent()).await;
        assert!(
            echoed.starts_with("00-") && echoed.ends_with("-00"),
            "{echoed}"
        );
        assert!(!echoed.contains(VISITOR_TRACE), "{echoed}");
    }
    // Batches leave every 100 ms: a second and a half covers many.
    let exported = receiver.within(Duration::from_millis(1500));
    assert!(exported.is_empty(), "exported: {exported:#?}");
}

#[test]
fn a_bad_export_setting_is_refused_at_start() {
    for (flags, says) in [
        (vec!["--otlp-endpoint", "collector:4318"], "otlp_endpoint"),
        (
            vec![
                "--otlp-endpoint",
                "http://127.0.0.1:1",
                "--trace-sample",
                "2",
            ],
            "trace_sample",
        ),
        (vec!["--otlp-protocol", "thrift"], "otlp_protocol"),
        (vec!["--otlp-headers", "novalue"], "otlp_headers"),
    ] {
        let out = Command::new(BIN)
            .args(["server", "--check-config"])
            .args(&flags)
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} was accepted");
        assert!(stderr.contains(says), "{flags:?}: {stderr}");
    }
}

#[tokio::test]
async fn a_trusted_parent_decides_sampling_whatever_the_ratio() {
    let trust = ["--trace-trust", "127.0.0.0/8"];
    let Rig {
        receiver,
        server,
        host,
        ..
    } = &rig("parented", &["--trace-sample", "0"], &trust, false);

    // Sampled by the visitor: the whole trace is exported, the client's spans too, although
    // both processes sample no new trace.
    visit(server, host, "/sampled", &visitor_parent()).await;
    let spans = receiver.until("the parent's sampled trace", |spans| {
        named(spans, "target /sampled").is_some() && named(spans, "showoff.client.dial").is_some()
    });
    assert_eq!(span(&spans, "http.request")["trace_id"], VISITOR_TRACE);

    // Not sampled by the visitor: nothing is exported, and the target hears the same trace,
    // still not sampled.
    let unsampled = "00-5bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let echoed = visit(server, host, "/unsampled", unsampled).await;
    assert!(
        echoed.starts_with("00-5bf92f3577b34da6a3ce929d0e0e4736-") && echoed.ends_with("-00"),
        "{echoed}"
    );
    assert_ne!(echoed, unsampled, "a span id of the server's own");
    let exported = receiver.within(Duration::from_millis(1500));
    assert!(
        exported
            .iter()
            .all(|s| !s.contains("5bf92f3577b34da6a3ce929d0e0e4736")),
        "exported: {exported:#?}"
    );
}

#[tokio::test]
async fn each_control_session_is_a_span_with_its_events() {
    let grace = ["--shutdown-grace", "2s"];
    let Rig {
        receiver, server, ..
    } = &rig("sessions", &[], &grace, false);
    // The server drains: it says go-away, and both sessions end and are exported.
    let killed = Command::new("kill")
        .args(["-TERM", &server.child.pid().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let spans = receiver.until("both session spans", |spans| {
        named(spans, "showoff.session").is_some()
            && named(spans, "showoff.client.session").is_some()
    });
    let session = span(&spans, "showoff.session");
    assert_eq!(session["service"], "showoff-server");
    let events = session["events"].as_array().expect("events");
    for event in ["auth", "open", "go_away"] {
        assert!(events.iter().any(|e| e == event), "{event} in {session:#}");
    }
    assert!(
        session["attributes"]["showoff.session"].is_string(),
        "{session:#}"
    );
    assert_eq!(session["attributes"]["showoff.transport"], "tcp");
    assert!(
        session["attributes"]["showoff.end_reason"].is_string(),
        "{session:#}"
    );
    let client = span(&spans, "showoff.client.session");
    assert_eq!(client["service"], "showoff-client");
    let events = client["events"].as_array().expect("events");
    for event in ["open", "go_away"] {
        assert!(events.iter().any(|e| e == event), "{event} in {client:#}");
    }
    assert_eq!(
        client["attributes"]["server.address"],
        server.addr("control").to_string()
    );
}

#[tokio::test]
async fn a_request_forwarded_to_the_instance_holding_the_tunnel_stays_one_trace() {
    let redis = showoff_testkit::redis::RedisServer::start();
    let receiver = Receiver::start();
    let (_target, port) = target(&receiver);
    let endpoint = receiver.http_endpoint();
    let url = format!("redis://{}", redis.addr);
    let instance = |name| {
        server(&[
            "--otlp-endpoint",
            &endpoint,
            "--cluster-redis",
            &url,
            "--instance",
            name,
            "--peer-addr",
            "127.0.0.1:0",
            "--cluster-secret",
            "a-cluster-secret-for-the-test",
        ])
    };
    let holder = instance("holder");
    let other = instance("other");
    let (_client, host) = client(&holder, port, "clustered", &["--otlp-endpoint", &endpoint]);
    // The visitor reaches the instance that does not hold the tunnel.
    visit(&other, &host, "/hop", &visitor_parent()).await;

    let spans = receiver.until("the forwarded trace", |spans| {
        named(spans, "showoff.forward").is_some()
            && named(spans, "target /hop").is_some()
            && spans.iter().filter(|s| s["name"] == "http.request").count() == 2
    });
    let forward = span(&spans, "showoff.forward");
    let requests: Vec<&Value> = spans
        .iter()
        .filter(|s| s["name"] == "http.request")
        .collect();
    let (first, second) = if requests[0]["parent_span_id"] == "" {
        (requests[0], requests[1])
    } else {
        (requests[1], requests[0])
    };
    child_of(forward, first);
    child_of(second, forward);
    let upstream = span(&spans, "showoff.upstream");
    child_of(upstream, second);
    child_of(span(&spans, "target /hop"), upstream);
    assert_eq!(forward["kind"], 3, "CLIENT");
    assert_eq!(second["attributes"]["showoff.tunnel"], "clustered");
}

#[tokio::test]
async fn tcp_connections_and_udp_flows_are_spans() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let receiver = Receiver::start();
    let (_target, port) = target(&receiver);
    let endpoint = receiver.http_endpoint();
    let ports = [
        "--tcp-ports",
        "0-0",
        "--udp-ports",
        "0-0",
        "--udp-flow-idle",
        "1s",
    ];
    let server = server(&[&["--otlp-endpoint", endpoint.as_str()], &ports[..]].concat());
    let export = ["--otlp-endpoint", endpoint.as_str()];
    let (_tcp, tcp_url) = client_of("tcp", &server, port, &export);

    // A UDP echo as the UDP tunnel's target.
    let echo = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let echo_port = echo.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..n], from).await;
        }
    });
    let (_udp, udp_url) = client_of("udp", &server, echo_port, &export);

    let tcp_addr = tcp_url.trim_start_matches("tcp://");
    let mut conn = tokio::net::TcpStream::connect(tcp_addr)
        .await
        .expect("connect");
    conn.write_all(b"GET /raw HTTP/1.0\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.expect("read");
    assert!(answer.starts_with(b"HTTP/1.0 200"), "{answer:?}");
    drop(conn);

    let visitor = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    visitor
        .send_to(b"ping", udp_url.trim_start_matches("udp://"))
        .await
        .expect("send");
    let mut buf = [0u8; 16];
    let got = tokio::time::timeout(Duration::from_secs(10), visitor.recv(&mut buf))
        .await
        .expect("an answer")
        .expect("recv");
    assert_eq!(&buf[..got], b"ping");

    // The flow ends after its idle second; the connection ended with the target's close.
    let spans = receiver.until("the connection's and the flow's spans", |spans| {
        named(spans, "showoff.flow").is_some()
            && named(spans, "showoff.connection").is_some()
            && named(spans, "showoff.client.dial").is_some()
    });
    let connection = span(&spans, "showoff.connection");
    assert_eq!(connection["kind"], 2, "SERVER");
    assert_eq!(connection["attributes"]["showoff.protocol"], "tcp");
    assert_eq!(
        connection["attributes"]["showoff.bytes_in"],
        "GET /raw HTTP/1.0\r\nHost: t\r\n\r\n".len()
    );
    let open = span(&spans, "showoff.stream.open");
    child_of(open, connection);
    let stream = span(&spans, "showoff.client.stream");
    child_of(stream, open);
    child_of(span(&spans, "showoff.client.dial"), stream);
    let flow = span(&spans, "showoff.flow");
    assert_eq!(flow["attributes"]["showoff.bytes_in"], 4);
    assert_eq!(flow["attributes"]["showoff.bytes_out"], 4);
    assert_eq!(flow["attributes"]["showoff.end_reason"], "idle");
}
