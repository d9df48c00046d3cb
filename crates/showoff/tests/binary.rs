//! The real `showoff` binary, as the README uses it: server, client, a visitor, SIGTERM.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use showoff_testkit::process::{self, Reaper, ServerProcess, field, lines, wait_line};

use showoff_testkit::target::spawn_target;
use showoff_testkit::visitor::get;

const BIN: &str = env!("CARGO_BIN_EXE_showoff");

fn wait_for(rx: &mpsc::Receiver<String>, what: &str, pred: impl Fn(&str) -> bool) -> String {
    wait_line(rx, what, Duration::from_secs(20), pred)
}

/// Starts `showoff server` with JSON logs, every listener on `127.0.0.1:0`, and `extra` flags;
/// returns the process, its log lines and its `server listening` line.
fn spawn_server(extra: &[&std::ffi::OsStr]) -> (Reaper, mpsc::Receiver<String>, String) {
    let server = ServerProcess::start(Path::new(BIN), extra);
    (server.child, server.log, server.listening)
}

/// Runs a client subcommand; its stdout arrives line by line, stderr is dropped.
fn spawn_client(args: &[&std::ffi::OsStr]) -> (Reaper, mpsc::Receiver<String>) {
    process::spawn_client(Path::new(BIN), args)
}

#[test]
fn version_names_commit_date_and_compiler() {
    let out = Command::new(BIN).arg("--version").output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.starts_with("showoff 0."), "{text}");
    assert!(
        text.contains("commit ") && text.contains("built 20") && text.contains("rustc"),
        "{text}"
    );
}

#[test]
fn an_open_server_on_a_public_address_refuses_to_start() {
    let out = Command::new(BIN)
        .args([
            "server",
            "--http-addr",
            "0.0.0.0:0",
            "--control-addr",
            "127.0.0.1:0",
            "--data-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .env_remove("SHOWOFF_TOKEN")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no token is configured") && err.contains("SHOWOFF_TOKEN"),
        "{err}"
    );
}

/// Issue 11, item 18: tokens and session keys never cross a public address in clear unless
/// the operator says something else encrypts the hop.
#[test]
fn plaintext_control_on_a_public_address_refuses_to_start_unless_allowed() {
    let run = |extra: &[&str]| {
        Command::new(BIN)
            .args([
                "server",
                "--control-addr",
                "0.0.0.0:0",
                "--data-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
                "--admin-addr",
                "127.0.0.1:0",
                "--check-config",
            ])
            .args(extra)
            .env("SHOWOFF_TOKEN", "a-token")
            .output()
            .expect("run")
    };
    let out = run(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("without TLS") && err.contains("--allow-plaintext"),
        "{err}"
    );
    let out = run(&["--allow-plaintext", "true"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_and_client_binaries_work_end_to_end_and_drain_on_sigterm() {
    let target = spawn_target("bin").await;
    let (server, server_log, listening) = spawn_server(&[]);
    let control = field(&listening, "control=").to_string();
    let http = field(&listening, "http=").to_string();

    let mut client = Command::new(BIN)
        .args([
            "http",
            &target.addr.port().to_string(),
            "--name",
            "demo",
            "--server",
            &control,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("client starts");
    let client_out = lines(client.stdout.take().expect("stdout"));
    let _client = Reaper(client);
    let http_port = http.rsplit(':').next().expect("port");
    let line = wait_for(&client_out, "the tunnel line", |l| l.contains(" -> "));
    let session_up = wait_for(&server_log, "session up", |l| l.contains("session up"));
    assert!(
        session_up.contains("\"name\":\"session\""),
        "in the session span: {session_up}"
    );
    assert_eq!(
        line,
        format!(
            "http://demo.localhost:{http_port} -> http://127.0.0.1:{}",
            target.addr.port()
        )
    );

    let reply = get(
        http.parse().expect("addr"),
        &format!("demo.localhost:{http_port}"),
        "/hi",
    )
    .await;
    assert_eq!(reply.echo()["target"], "bin");
    // One JSON access-log line, inside the visitor connection's span.
    let access = wait_for(&server_log, "the access log line", |l| {
        l.contains("showoff::access")
    });
    for needle in [
        "\"name\":\"visitor\"",
        "\"tunnel\":\"demo\"",
        "\"status\":200",
        "\"path\":\"/hi\"",
    ] {
        assert!(access.contains(needle), "{needle} missing in {access}");
    }
    // The admin listener of the real binary reports this build.
    let admin = field(&listening, "\"admin\":\"");
    let version = get(admin.parse().expect("admin addr"), "localhost", "/version").await;
    assert_eq!(version.status, 200);
    assert!(
        version.body.contains(env!("CARGO_PKG_VERSION")),
        "{}",
        version.body
    );

    let pid = server.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    wait_for(&server_log, "a clean drain", |l| {
        l.contains("drain finished cleanly")
    });
    let mut server = server;
    let status = server.0.wait().expect("exit");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_config_file_opens_every_tunnel_it_names() {
    let server = showoff_testkit::TestServer::default_config().await;
    let target = spawn_target("file").await;
    let path = std::env::temp_dir().join(format!("showoff-client-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        format!(
            "server = \"{}\"\n\n[[tunnels]]\nkind = \"http\"\nlocal = \"{}\"\nname = \"from-file\"\n\n\
             [[tunnels]]\nkind = \"tcp\"\nlocal = \"{}\"\n",
            server.addrs.control,
            target.addr.port(),
            target.addr
        ),
    )
    .expect("write config");
    let (_client, out) = spawn_client(&[
        "client".as_ref(),
        "--json".as_ref(),
        "-c".as_ref(),
        path.as_os_str(),
    ]);
    let events: Vec<serde_json::Value> = (0..2)
        .map(|_| wait_for(&out, "a connected event", |l| l.contains("\"connected\"")))
        .map(|l| serde_json::from_str(&l).expect("json event"))
        .collect();
    assert_eq!(events[0]["name"], "from-file");
    assert_eq!(events[0]["kind"], "http");
    assert_eq!(events[1]["kind"], "tcp");
    let _ = std::fs::remove_file(&path);

    let reply = get(server.addrs.http, &server.host("from-file"), "/").await;
    assert_eq!(reply.echo()["target"], "file");
    let url = events[1]["public_url"].as_str().expect("url");
    let port: u16 = url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let answer = showoff_testkit::visitor::raw(
        ([127, 0, 0, 1], port).into(),
        b"GET /over-tcp HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.contains("\"target\":\"file\""), "{answer}");
}

/// A UDP echo on loopback.
async fn udp_echo() -> std::net::SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2_048];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..len], from).await;
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn showoff_udp_prints_its_url_and_limit_and_relays_datagrams() {
    let server = showoff_testkit::TestServer::default_config().await;
    let echo = udp_echo().await;
    let control = server.addrs.control.to_string();
    let target = echo.port().to_string();
    let (_client, out) = spawn_client(&[
        "udp".as_ref(),
        target.as_ref(),
        "--server".as_ref(),
        control.as_ref(),
    ]);
    let line = wait_for(&out, "the tunnel line", |l| l.starts_with("udp://"));
    let (url, rest) = line.split_once(" -> ").expect("URL -> target");
    assert_eq!(
        rest,
        format!("{echo} (datagrams up to 65507 bytes)"),
        "{line}"
    );
    let port: u16 = url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let visitor = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let answered = showoff_testkit::visitor::udp_ask(&visitor, port, b"ping").await;
    assert_eq!(answered, b"ping");
    // PROXY v1 has no UDP form: refused before anything is opened, with the way out.
    let refused = Command::new(BIN)
        .args(["udp", "53", "--proxy-protocol", "v1"])
        .output()
        .expect("runs");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("use v2 for udp tunnels"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_token_works_until_the_token_file_drops_it() {
    let minted = Command::new(BIN)
        .args(["token", "new", "--name", "alice", "--names", "alice-*"])
        .output()
        .expect("token new");
    assert!(minted.status.success());
    let text = String::from_utf8_lossy(&minted.stdout).into_owned();
    let token = text.lines().nth(1).expect("token line").trim().to_string();
    let entry = &text[text.find("[[tokens]]").expect("entry")..];
    let path = std::env::temp_dir().join(format!("showoff-tokens-{}.toml", std::process::id()));
    std::fs::write(&path, entry).expect("token file");

    let target = spawn_target("minted").await;
    let audit = std::env::temp_dir().join(format!("showoff-audit-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&audit);
    let (server, server_log, listening) = spawn_server(&[
        "--token-file".as_ref(),
        path.as_os_str(),
        "--audit-log".as_ref(),
        audit.as_os_str(),
    ]);
    let control = field(&listening, "control=").to_string();

    let mut client = Command::new(BIN)
        .args([
            "http",
            &target.addr.port().to_string(),
            "--server",
            &control,
            "--token",
            &token,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("client starts");
    let out = lines(client.stdout.take().expect("stdout"));
    let client_err = client.stderr.take().expect("stderr");
    let mut client = Reaper(client);
    let line = wait_for(&out, "the tunnel line", |l| l.contains(" -> "));
    assert!(
        line.starts_with("http://alice-"),
        "a name inside the token's pattern: {line}"
    );

    // Revoke: the file no longer holds alice; SIGHUP reloads it at once.
    std::fs::write(&path, "tokens = []\n").expect("rewrite");
    let pid = server.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("kill")
            .success()
    );
    wait_for(&server_log, "the revocation", |l| {
        l.contains("token revoked")
    });
    let status = tokio::task::spawn_blocking(move || client.0.wait())
        .await
        .expect("join")
        .expect("exit");
    assert!(!status.success(), "the client stops for good");
    let err: String = lines(client_err).iter().collect::<Vec<_>>().join("\n");
    assert!(err.contains("auth_failed"), "{err}");
    let _ = std::fs::remove_file(&path);
    // The audit log holds one JSON object per line for each step.
    let text = std::fs::read_to_string(&audit).expect("audit log");
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    for kind in [
        "tunnel_opened",
        "auth_ok",
        "revoked",
        "tunnel_closed",
        "auth_failed",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let _ = std::fs::remove_file(&audit);
}

#[tokio::test]
async fn a_signed_token_works_without_a_token_file() {
    const SECRET: &str = "binary-test-signing-secret-32by";
    let signed = Command::new(BIN)
        .args([
            "token", "sign", "--name", "ci", "--names", "ci-*", "--ttl", "10m",
        ])
        .env("SHOWOFF_SIGNED_TOKEN_SECRET", SECRET)
        .output()
        .expect("token sign");
    assert!(signed.status.success(), "{signed:?}");
    let token = String::from_utf8_lossy(&signed.stdout).trim().to_string();
    assert!(token.starts_with("so1."), "{token}");
    // Without the secret, signing refuses and says what to set.
    let unsigned = Command::new(BIN)
        .args(["token", "sign", "--name", "ci"])
        .env_remove("SHOWOFF_SIGNED_TOKEN_SECRET")
        .output()
        .expect("token sign");
    assert!(!unsigned.status.success());
    assert!(String::from_utf8_lossy(&unsigned.stderr).contains("SHOWOFF_SIGNED_TOKEN_SECRET"));

    let target = spawn_target("signed").await;
    let (_server, _log, listening) =
        spawn_server(&["--signed-token-secret".as_ref(), SECRET.as_ref()]);
    let control = field(&listening, "control=").to_string();
    let port = target.addr.port().to_string();
    let (_client, out) = spawn_client(&[
        "http".as_ref(),
        port.as_ref(),
        "--server".as_ref(),
        control.as_ref(),
        "--token".as_ref(),
        token.as_ref(),
        "--name".as_ref(),
        "ci-build".as_ref(),
    ]);
    let line = wait_for(&out, "the tunnel line", |l| l.contains(" -> "));
    assert!(line.starts_with("http://ci-build."), "{line}");
}

#[test]
fn check_config_refuses_a_broken_policy_or_key_with_the_reason() {
    let dir = std::env::temp_dir();
    let policy = dir.join(format!("showoff-policy-{}.rego", std::process::id()));
    std::fs::write(&policy, "package showoff\nauthz if {").expect("policy");
    let key = dir.join(format!("showoff-key-{}.pem", std::process::id()));
    std::fs::write(&key, "not a key").expect("key");
    for (flag, path, want) in [
        ("--policy-file", &policy, "showoff-policy-"),
        (
            "--jwt-public-key",
            &key,
            "neither an RSA nor an EC P-256 public key",
        ),
    ] {
        let out = Command::new(BIN)
            .args(["server", "--check-config", flag])
            .arg(path)
            .output()
            .expect("check-config");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag}: {err}");
        assert!(err.contains(want), "{flag}: {err}");
    }
    let _ = std::fs::remove_file(&policy);
    let _ = std::fs::remove_file(&key);
}

#[tokio::test]
async fn tls_flags_give_verified_control_and_an_https_url() {
    let dir = std::env::temp_dir().join(format!("showoff-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca = showoff_testkit::pki::TestCa::new("binary test CA");
    let cert = ca.server(&["*.tunnel.test", "127.0.0.1"]);
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let (cert_path, key_path) = (write("cert.pem", &cert.cert), write("key.pem", &cert.key));
    let ca_path = write("ca.pem", &ca.cert_pem);
    let target = spawn_target("tls").await;
    let (_server, server_log, listening) = spawn_server(&[
        "--tls-cert".as_ref(),
        cert_path.as_os_str(),
        "--tls-key".as_ref(),
        key_path.as_os_str(),
        "--https-addr".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--domain".as_ref(),
        "tunnel.test".as_ref(),
    ]);
    let control = field(&listening, "control=").to_string();
    let https: std::net::SocketAddr = field(&listening, "https\":\"")
        .parse()
        .unwrap_or_else(|e| panic!("https address in {listening}: {e}"));
    let port = target.addr.port().to_string();
    let (_client, out) = spawn_client(&[
        "http".as_ref(),
        port.as_ref(),
        "--server".as_ref(),
        control.as_ref(),
        "--name".as_ref(),
        "secure".as_ref(),
        "--tls-ca".as_ref(),
        ca_path.as_os_str(),
    ]);
    let line = wait_for(&out, "the tunnel line", |l| l.contains(" -> "));
    assert!(
        line.starts_with(&format!("https://secure.tunnel.test:{}", https.port())),
        "{line}"
    );
    let seen =
        showoff_testkit::visitor::https_get(https, "secure.tunnel.test", &ca.cert_pem, &[], "/")
            .await
            .expect("https visit");
    assert_eq!(seen.reply.status, 200);
    // Rotating the files is picked up without a restart: the new certificate adds a name.
    let rotated = ca.server(&["*.tunnel.test", "127.0.0.1", "added.example"]);
    std::fs::write(&key_path, &rotated.key).expect("key");
    std::fs::write(&cert_path, &rotated.cert).expect("cert");
    wait_for(&server_log, "the reload", |l| {
        l.contains("certificates reloaded")
    });
    let added = showoff_testkit::visitor::https_get(https, "added.example", &ca.cert_pem, &[], "/")
        .await
        .expect("the rotated certificate");
    assert_eq!(added.reply.status, 404);
    // A client without the CA cannot connect and says why.
    let refused = Command::new(BIN)
        .args(["http", "1", "--server", &control, "--tls", "--no-reconnect"])
        .output()
        .expect("client");
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("UnknownIssuer") || err.contains("invalid peer certificate"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
