//! The client's traffic inspector end to end: real visitors through a real server and client
//! to a real target, and the inspector's JSON API read as a script would.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use showoff_client::inspect::{InspectConfig, Inspector, api};
use showoff_proto::TunnelKind;
use showoff_testkit::target::{self, PNG, TEXT};
use showoff_testkit::visitor::{self, request_to};
use showoff_testkit::{TestClient, TestServer, eventually, tunnel, within};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// A server, a target, a client exposing it as `demo` with an inspector, and the inspector's
/// API on its own loopback port.
struct Setup {
    server: TestServer,
    target: target::Target,
    _client: TestClient,
    inspector: Inspector,
    api: SocketAddr,
    _stop: tokio_util::sync::DropGuard,
}

impl Setup {
    async fn start(config: InspectConfig) -> Self {
        let server = TestServer::default_config().await;
        let target = target::spawn_target("a").await;
        let inspector = Inspector::new(&config).expect("inspector");
        let mut client = TestClient::config(
            &server,
            vec![tunnel(TunnelKind::Http, Some("demo"), target.addr)],
        );
        client.inspector = Some(inspector.clone());
        let client = TestClient::start(client).await.expect("client session");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind api");
        let api = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        tokio::spawn(api::serve(listener, inspector.clone(), stop.clone()));
        Self {
            server,
            target,
            _client: client,
            inspector,
            api,
            _stop: stop.drop_guard(),
        }
    }

    /// A request through the tunnel.
    async fn visit(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> visitor::Reply {
        let host = self.server.host("demo");
        request_to(self.server.addrs.http, &host, method, path, headers, body).await
    }

    /// An API call; the reply's body parsed as JSON (null when empty).
    async fn api(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, Value) {
        let reply = visitor::request(self.api, method, path, headers, body).await;
        let json = serde_json::from_str(&reply.body).unwrap_or(Value::Null);
        (reply.status.as_u16(), json)
    }

    /// The entry `id` with its heads and bodies.
    async fn entry_by_id(&self, id: u64) -> Value {
        let (status, detail) = self
            .api("GET", &format!("/api/requests/{id}"), &[], "")
            .await;
        assert_eq!(status, 200, "{detail}");
        detail
    }

    /// The newest entry whose path is `path`, once it is there.
    async fn entry(&self, path: &str) -> Value {
        eventually(&format!("an entry for {path}"), || {
            self.inspector
                .entries()
                .iter()
                .any(|e| e.request.path == path)
        })
        .await;
        let (_, list) = self.api("GET", "/api/requests", &[], "").await;
        let id = list
            .as_array()
            .expect("list")
            .iter()
            .find(|e| e["path"] == path)
            .map(|e| e["id"].clone())
            .expect("listed");
        let (status, detail) = self
            .api("GET", &format!("/api/requests/{id}"), &[], "")
            .await;
        assert_eq!(status, 200, "{detail}");
        detail
    }
}

fn small() -> InspectConfig {
    InspectConfig {
        body_cap: 4096,
        ..InspectConfig::default()
    }
}

#[tokio::test]
async fn json_text_binary_image_and_chunked_exchanges_are_captured() {
    let s = Setup::start(small()).await;
    let sent = br#"{"name":"ada","langs":["en","fr"]}"#;
    let reply = s
        .visit(
            "POST",
            "/api/users?page=2",
            &[("content-type", "application/json")],
            Bytes::from_static(sent),
        )
        .await;
    assert_eq!(reply.status, 200);
    s.visit("GET", "/text", &[], Bytes::new()).await;
    s.visit("GET", "/bytes?n=300", &[], Bytes::new()).await;
    s.visit("GET", "/image.png", &[], Bytes::new()).await;

    let json = s.entry("/api/users?page=2").await;
    assert_eq!(json["method"], "POST");
    assert_eq!(json["status"], 200);
    assert_eq!(json["tunnel"], "demo");
    assert!(
        json["duration_ms"].as_f64().expect("duration") > 0.0,
        "{json}"
    );
    let request = &json["request"];
    assert_eq!(
        request["body"]["data"],
        std::str::from_utf8(sent).expect("utf8")
    );
    assert_eq!(request["body"]["encoding"], "text");
    let headers = request["headers"].as_array().expect("headers");
    assert!(
        headers
            .iter()
            .any(|h| h[0] == "content-type" && h[1] == "application/json"),
        "{headers:?}"
    );
    let response = &json["response"];
    assert_eq!(response["body"]["content_type"], "application/json");
    let echoed: Value =
        serde_json::from_str(response["body"]["data"].as_str().expect("text")).expect("json");
    assert_eq!(echoed["body_bytes"], sent.len());
    assert_eq!(json["remote_addr"], "127.0.0.1");

    let text = s.entry("/text").await;
    assert_eq!(text["response"]["body"]["data"], TEXT);

    let binary = s.entry("/bytes?n=300").await;
    let body = &binary["response"]["body"];
    assert_eq!(
        (body["encoding"].as_str(), body["size"].as_u64()),
        (Some("base64"), Some(300))
    );
    let raw = visitor::request(
        s.api,
        "GET",
        &format!("/api/requests/{}/response/body", binary["id"]),
        &[],
        "",
    )
    .await;
    assert_eq!(raw.headers["content-type"], "application/octet-stream");
    assert_eq!(
        raw.body.len(),
        String::from_utf8_lossy(&(0..300).map(|i| (i % 256) as u8).collect::<Vec<u8>>()).len()
    );

    let image = s.entry("/image.png").await;
    assert_eq!(image["response"]["body"]["size"], PNG.len());
    assert_eq!(image["content_type"], "image/png");
}

#[tokio::test]
async fn a_large_chunked_body_is_cut_at_the_cap_with_a_mark_and_still_relayed_whole() {
    let s = Setup::start(small()).await;
    let reply = s.visit("GET", "/big?bytes=300000", &[], Bytes::new()).await;
    assert_eq!(reply.body.len(), 300_000, "the visitor gets every byte");
    let entry = s.entry("/big?bytes=300000").await;
    let body = &entry["response"]["body"];
    assert_eq!(body["size"], 300_000);
    assert_eq!(body["captured"], 4096);
    assert_eq!(body["cut"], "body_cap");
    assert_eq!(body["complete"], false);
    let headers = entry["response"]["headers"].as_array().expect("headers");
    assert!(
        headers
            .iter()
            .any(|h| h[0] == "transfer-encoding" && h[1] == "chunked"),
        "{headers:?}"
    );
}

#[tokio::test]
async fn an_upgraded_connection_is_one_entry_with_its_byte_counts() {
    let s = Setup::start(small()).await;
    let stream = TcpStream::connect(s.server.addrs.http)
        .await
        .expect("connect");
    let url = format!("ws://{}/ws", s.server.host("demo"));
    let (mut ws, _) = within("handshake", tokio_tungstenite::client_async(url, stream))
        .await
        .expect("upgrade");
    let open = s.entry("/ws").await;
    assert_eq!(
        (open["status"].as_u64(), open["upgrade"]["open"].as_bool()),
        (Some(101), Some(true))
    );
    for _ in 0..10 {
        ws.send(Message::text("x".repeat(1000)))
            .await
            .expect("send");
        within("echo", ws.next()).await.expect("frame").expect("ok");
    }
    ws.close(None).await.expect("close");
    drop(ws);
    eventually("the upgrade's entry closed", || {
        s.inspector.entries().iter().any(|e| {
            e.upgrade
                .is_some_and(|u| !u.open && u.bytes_in > 10_000 && u.bytes_out > 10_000)
        })
    })
    .await;
    assert_eq!(
        s.inspector.entries().len(),
        1,
        "one entry for the whole connection"
    );
}

#[tokio::test]
async fn replay_reaches_the_target_again_with_the_edit_applied() {
    let s = Setup::start(small()).await;
    s.visit(
        "POST",
        "/orders",
        &[("x-original", "1")],
        Bytes::from_static(b"first body"),
    )
    .await;
    let original = s.entry("/orders").await;
    let id = original["id"].as_u64().expect("id");
    let served = s
        .target
        .stats
        .requests
        .load(std::sync::atomic::Ordering::Relaxed);

    let (status, again) = s
        .api("POST", &format!("/api/requests/{id}/replay"), &[], "")
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["replay_of"], id);
    assert_eq!(again["status"], 200);

    let edits = r#"{"method":"PUT","path":"/orders/7?edited=1","headers":[["x-edited","yes"]],"body":"the edited body"}"#;
    let json = [("content-type", "application/json")];
    let (status, edited) = s
        .api("POST", &format!("/api/requests/{id}/replay"), &json, edits)
        .await;
    assert_eq!(status, 200, "{edited}");
    assert_eq!(edited["method"], "PUT");
    let served_now = s
        .target
        .stats
        .requests
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(served_now, served + 2, "the target saw both replays");
    let detail = s.entry("/orders/7?edited=1").await;
    let echo: Value =
        serde_json::from_str(detail["response"]["body"]["data"].as_str().expect("text"))
            .expect("echo");
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/orders/7?edited=1");
    assert_eq!(echo["headers"]["x-edited"][0], "yes");
    assert!(
        echo["headers"].get("x-original").is_none(),
        "headers replaced: {echo}"
    );
    assert_eq!(echo["body_bytes"], "the edited body".len());
}

/// An API call and what it must answer: method, path, headers, body, status, error code.
type Case<'a> = (
    &'a str,
    String,
    Vec<(&'a str, &'a str)>,
    &'a str,
    u16,
    &'a str,
);

#[tokio::test]
async fn bad_api_calls_get_their_codes_and_nothing_breaks() {
    let s = Setup::start(small()).await;
    s.visit("GET", "/big?bytes=100000", &[], Bytes::new()).await;
    s.visit("POST", "/upload", &[], Bytes::from(vec![b'u'; 10_000]))
        .await;
    let upload = s.entry("/upload").await;
    let id = upload["id"].as_u64().expect("id");

    let cases: Vec<Case<'_>> = vec![
        (
            "GET",
            "/api/requests/999999".into(),
            vec![],
            "",
            404,
            "not_found",
        ),
        (
            "GET",
            "/api/requests/abc".into(),
            vec![],
            "",
            404,
            "not_found",
        ),
        (
            "POST",
            "/api/requests/999999/replay".into(),
            vec![],
            "",
            404,
            "not_found",
        ),
        (
            "POST",
            format!("/api/requests/{id}/replay"),
            vec![],
            "",
            409,
            "body_incomplete",
        ),
        (
            "POST",
            format!("/api/requests/{id}/replay"),
            vec![("content-type", "application/json")],
            r#"{"path":"no slash"}"#,
            400,
            "bad_edit",
        ),
        (
            "POST",
            format!("/api/requests/{id}/replay"),
            vec![("content-type", "application/json")],
            r#"{"headers":[["x","a\r\nb: c"]],"body":""}"#,
            400,
            "bad_edit",
        ),
        (
            "POST",
            format!("/api/requests/{id}/replay"),
            vec![("content-type", "application/json")],
            r#"{"unknown":1}"#,
            400,
            "bad_edit",
        ),
        (
            "POST",
            format!("/api/requests/{id}/replay"),
            vec![("content-type", "text/plain")],
            "x",
            415,
            "bad_edit",
        ),
        (
            "POST",
            format!("/api/requests/{id}/replay"),
            vec![("origin", "http://evil.example")],
            "",
            403,
            "origin_forbidden",
        ),
        (
            "DELETE",
            "/api/requests".into(),
            vec![("origin", "https://evil.example")],
            "",
            403,
            "origin_forbidden",
        ),
    ];
    for (method, path, headers, body, want, code) in cases {
        let (status, json) = s.api(method, &path, &headers, body).await;
        assert_eq!(
            (status, json["error"].as_str()),
            (want, Some(code)),
            "{method} {path}: {json}"
        );
        assert!(
            json["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{json}"
        );
    }
    let rebound = request_to(
        s.api,
        "attacker.example",
        "GET",
        "/api/requests",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(
        rebound.status, 403,
        "a DNS-rebound page cannot read: {}",
        rebound.body
    );
    assert!(rebound.body.contains("host_forbidden"));
    // The edited body makes a cut request replayable; the tunnel still serves.
    let edited = r#"{"body":"now whole"}"#;
    let (status, _) = s
        .api(
            "POST",
            &format!("/api/requests/{id}/replay"),
            &[("content-type", "application/json")],
            edited,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(s.visit("GET", "/text", &[], Bytes::new()).await.status, 200);
}

#[tokio::test]
async fn events_har_status_and_clear() {
    let s = Setup::start(small()).await;
    let mut events = TcpStream::connect(s.api).await.expect("connect");
    events
        .write_all(
            b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n",
        )
        .await
        .expect("write");
    let mut events = BufReader::new(events);
    let mut head = String::new();
    events.read_line(&mut head).await.expect("status line");
    assert!(head.contains("200"), "{head}");
    s.visit("GET", "/live", &[], Bytes::new()).await;
    let seen = within("an event for /live", async {
        let mut line = String::new();
        loop {
            line.clear();
            events.read_line(&mut line).await.expect("event line");
            if line.starts_with("data:") && line.contains("\"/live\"") {
                return line.clone();
            }
        }
    })
    .await;
    assert!(seen.contains("\"status\":200"), "{seen}");

    s.visit("GET", "/second", &[], Bytes::new()).await;
    let second = s.entry("/second").await;
    let reply = visitor::request(
        s.api,
        "GET",
        &format!("/api/har?ids={}", second["id"]),
        &[],
        "",
    )
    .await;
    let har: Value = serde_json::from_str(&reply.body).expect("har");
    let entries = har["log"]["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0]["request"]["url"],
        format!("http://{}/second", s.server.host("demo"))
    );
    assert_eq!(entries[0]["response"]["status"], 200);

    let (_, filtered) = s
        .api(
            "GET",
            "/api/requests?path=/sec&status=2xx&method=get",
            &[],
            "",
        )
        .await;
    assert_eq!(filtered.as_array().map(Vec::len), Some(1), "{filtered}");
    let (_, status) = s.api("GET", "/api/status", &[], "").await;
    assert_eq!(status["entries"], 2);
    assert!(status["memory_used"].as_u64().expect("used") > 0);
    let (code, _) = s.api("DELETE", "/api/requests", &[], "").await;
    assert_eq!(code, 204);
    let (_, list) = s.api("GET", "/api/requests", &[], "").await;
    assert_eq!(list, Value::Array(vec![]));
    let (_, status) = s.api("GET", "/api/status", &[], "").await;
    assert_eq!(status["memory_used"], 0);
}

#[tokio::test]
async fn the_memory_budget_holds_under_load_and_every_byte_is_relayed() {
    let budget = 256 * 1024;
    let s = Setup::start(InspectConfig {
        memory: budget,
        body_cap: 64 * 1024,
        ..InspectConfig::default()
    })
    .await;
    let upload = Bytes::from(vec![b'l'; 100 * 1024]);
    let mut visitors = Vec::new();
    for v in 0..8 {
        let host = s.server.host("demo");
        let (addr, upload) = (s.server.addrs.http, upload.clone());
        visitors.push(tokio::spawn(async move {
            for i in 0..15 {
                let path = format!("/load/{v}/{i}");
                let reply = request_to(addr, &host, "POST", &path, &[], upload.clone()).await;
                assert_eq!(reply.status, 200);
                let echo = reply.echo();
                assert_eq!(echo["body_bytes"], upload.len(), "relayed whole");
                let down =
                    request_to(addr, &host, "GET", "/big?bytes=200000", &[], Bytes::new()).await;
                assert_eq!(down.body.len(), 200_000);
            }
        }));
    }
    let mut peak = 0;
    while visitors.iter().any(|v| !v.is_finished()) {
        peak = peak.max(s.inspector.status().memory_used);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for v in visitors {
        v.await.expect("visitor");
    }
    let status = s.inspector.status();
    assert!(peak <= budget, "peak {peak} over the budget {budget}");
    assert!(status.memory_used <= budget, "{status:?}");
    assert!(status.drops.evicted > 0, "{status:?}");
    assert!(status.entries > 0, "{status:?}");
}

#[tokio::test]
async fn a_large_upload_streams_through_with_the_inspector_on() {
    let s = Setup::start(InspectConfig::default()).await;
    let size = 48 << 20;
    let reply = s
        .visit("POST", "/huge", &[], Bytes::from(vec![b'h'; size]))
        .await;
    assert_eq!(reply.echo()["body_bytes"], size);
    let entry = s.entry("/huge").await;
    assert_eq!(entry["request"]["body"]["size"], size);
    assert_eq!(entry["request"]["body"]["cut"], "body_cap");
    assert!(
        s.inspector.status().memory_used < 1 << 20,
        "{:?}",
        s.inspector.status()
    );
}

#[tokio::test]
async fn a_spilled_body_downloads_whole_and_replays_unedited() {
    let dir = std::env::temp_dir().join(format!("showoff-spill-e2e-{}", std::process::id()));
    let s = Setup::start(InspectConfig {
        body_cap: 4096,
        spill: Some(dir.clone()),
        ..InspectConfig::default()
    })
    .await;
    let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    let reply = s
        .visit("POST", "/upload", &[], Bytes::from(body.clone()))
        .await;
    assert_eq!(reply.echo()["body_bytes"], body.len());
    let entry = s.entry("/upload").await;
    let id = entry["id"].as_u64().expect("id");
    assert_eq!(entry["request"]["body"]["captured"], 4096);
    eventually("the spill written", || {
        s.inspector
            .get(id)
            .is_some_and(|e| e.request.body.on_disk())
    })
    .await;
    let path = format!("/api/requests/{id}/request/body?download=1");
    let raw = TcpStream::connect(s.api).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(raw))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let request = http::Request::get(&path)
        .header("host", "127.0.0.1")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .expect("ascii")
            .starts_with("attachment")
    );
    let downloaded = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(downloaded.len(), body.len());
    assert!(downloaded[..] == body[..], "the whole body, byte for byte");

    let (status, again) = s
        .api("POST", &format!("/api/requests/{id}/replay"), &[], "")
        .await;
    assert_eq!(status, 200, "{again}");
    let replay = s.entry_by_id(again["id"].as_u64().expect("id")).await;
    let echo: Value =
        serde_json::from_str(replay["response"]["body"]["data"].as_str().expect("text"))
            .expect("echo");
    assert_eq!(
        echo["body_bytes"],
        body.len(),
        "the replay streamed the spilled body"
    );
    let (_, status) = s.api("GET", "/api/status", &[], "").await;
    assert!(
        status["spill_used"].as_u64().expect("spill") >= 2 * body.len() as u64 - 8192,
        "{status}"
    );
    s.inspector.clear();
    // A file goes when its last holder lets go: the entry, and the writer thread once it has
    // written what was queued for it.
    eventually("the files gone with their entries", || {
        s.inspector.status().spill_used == Some(0)
    })
    .await;
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}
