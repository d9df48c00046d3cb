//! The real binary's inspector settings and request lines: `showoff http --json` prints its
//! inspector's address and one JSON object per request; `--quiet` keeps only the tunnel line;
//! a stdout nobody reads never stalls the tunnel; a non-loopback inspector is refused.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use showoff_testkit::process::{Reaper, ServerProcess, lines, wait_line};
use showoff_testkit::target::spawn_target;
use showoff_testkit::visitor::{HttpConn, get};

const BIN: &str = env!("CARGO_BIN_EXE_showoff");

fn wait_for(rx: &mpsc::Receiver<String>, what: &str, pred: impl Fn(&str) -> bool) -> String {
    wait_line(rx, what, Duration::from_secs(20), pred)
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// A server, a target and `showoff http` for it named `name` with `--json`, the inspector on
/// a free loopback port, and `extra` flags; stdout is piped and left to the test.
async fn start(name: &str, extra: &[&str]) -> (ServerProcess, std::process::Child) {
    let server = ServerProcess::start(Path::new(BIN), &[]);
    let control = server.addr("control").to_string();
    let target = spawn_target("cli").await;
    let port = target.addr.port().to_string();
    let client = Command::new(BIN)
        .args([
            "http", &port, "--server", &control, "--name", name, "--json",
        ])
        .args(["--inspect-addr", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("client starts");
    (server, client)
}

/// The tunnel's `host:port` from its `connected` line.
fn host_of(connected: &serde_json::Value) -> String {
    let url = connected["public_url"].as_str().expect("url");
    url.trim_start_matches("http://").to_string()
}

#[tokio::test]
async fn json_output_names_the_inspector_and_prints_one_line_per_request() {
    let (server, mut child) = start("cli", &[]).await;
    let out = lines(child.stdout.take().expect("stdout"));
    let _child = Reaper(child);
    let connected = json(&wait_for(&out, "the tunnel line", |l| {
        l.contains("\"connected\"")
    }));
    let inspector = json(&wait_for(&out, "the inspector line", |l| {
        l.contains("\"inspector\"")
    }));
    let url = inspector["url"].as_str().expect("url").to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let host = host_of(&connected);
    for path in ["/first", "/second?x=1"] {
        assert_eq!(get(server.addr("http"), &host, path).await.status, 200);
        let line = json(&wait_for(&out, "a request line", |l| {
            l.contains("\"request\"")
        }));
        assert_eq!(
            (line["method"].as_str(), line["path"].as_str()),
            (Some("GET"), Some(path))
        );
        assert_eq!(line["status"], 200);
        assert!(line["duration_ms"].as_f64().is_some(), "{line}");
    }
    let api: std::net::SocketAddr = url.trim_start_matches("http://").parse().expect("addr");
    let listed = get(api, "127.0.0.1", "/api/requests").await;
    let listed = json(&listed.body);
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    assert_eq!(listed[0]["path"], "/second?x=1", "newest first");
}

#[tokio::test]
async fn quiet_keeps_only_the_tunnel_line() {
    let (server, mut child) = start("hush", &["--quiet"]).await;
    let out = lines(child.stdout.take().expect("stdout"));
    let _child = Reaper(child);
    let connected = json(&wait_for(&out, "the tunnel line", |_| true));
    assert_eq!(connected["event"], "connected");
    let host = host_of(&connected);
    for _ in 0..3 {
        assert_eq!(get(server.addr("http"), &host, "/").await.status, 200);
    }
    let extra = out.recv_timeout(Duration::from_millis(300));
    assert!(extra.is_err(), "quiet printed {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdout_nobody_reads_never_stalls_the_tunnel() {
    // Request lines go to a pipe that is never read after the tunnel line: it fills at 64 KiB
    // (about 200 lines), and the tunnel must go on serving.
    let (server, mut child) = start("unread", &[]).await;
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let _child = Reaper(child);
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).expect("tunnel line");
    let host = host_of(&json(&first));
    let mut conn = HttpConn::open(server.addr("http")).await;
    let path = format!("/{}", "long-path-".repeat(20));
    for i in 0..2_000 {
        let reply = conn.get(&host, &path).await;
        assert_eq!(reply.status, 200, "request {i}");
    }
    drop(stdout);
}

#[test]
fn an_inspector_off_loopback_is_refused() {
    let out = Command::new(BIN)
        .args([
            "http",
            "3000",
            "--inspect-addr",
            "0.0.0.0:4040",
            "--server",
            "127.0.0.1:9",
        ])
        .args([OsStr::new("--no-reconnect")])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("loopback only"), "{stderr}");
}
