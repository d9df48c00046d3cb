//! The real binary on a real `redis-server` that asks for TLS, a client certificate and an
//! ACL user: `--cluster-redis rediss://user:password@…` with `--cluster-redis-ca`,
//! `--cluster-redis-cert` and `--cluster-redis-key` serves tunnels; a wrong password, a CA
//! that did not sign Redis's certificate or a missing client certificate keeps the server up
//! and says why on `/readyz`, without printing the password.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use showoff_testkit::pki::TestCa;
use showoff_testkit::process::{ServerProcess, spawn_client, wait_line};
use showoff_testkit::redis::{RedisOptions, RedisServer, RedisTlsOptions};
use showoff_testkit::target::spawn_target;
use showoff_testkit::visitor::get;

const BIN: &str = env!("CARGO_BIN_EXE_showoff");
const USER: &str = "showoff";
const PASSWORD: &str = "a-redis-password-41";

/// Redis with a TLS port whose clients must present a certificate, and an ACL user.
fn secured_redis() -> RedisServer {
    RedisServer::start_with(RedisOptions {
        tls: Some(RedisTlsOptions {
            ca: TestCa::new("redis test CA"),
            client_certificates: true,
        }),
        user: Some((USER.into(), PASSWORD.into())),
    })
}

/// A directory of the test's own holding `files` (name, text).
fn files(tag: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("showoff-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("file");
    }
    dir
}

fn rediss(redis: &RedisServer, password: &str) -> String {
    let addr = redis.tls_addr.expect("a TLS port");
    format!("rediss://{USER}:{password}@{addr}")
}

/// `showoff server` in a cluster on `url`, with `extra` flags.
fn server(url: &str, extra: &[&OsStr]) -> ServerProcess {
    let mut args: Vec<&OsStr> = ["--cluster-redis", url, "--instance", "node-tls"]
        .map(OsStr::new)
        .to_vec();
    args.extend_from_slice(extra);
    ServerProcess::start(Path::new(BIN), &args)
}

/// `/readyz` until `done` says yes (20 s at most); the last body.
async fn readyz_until(server: &ServerProcess, done: impl Fn(&str) -> bool) -> String {
    let admin: std::net::SocketAddr =
        showoff_testkit::process::field(&server.listening, "\"admin\":\"")
            .parse()
            .expect("admin address");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = get(admin, "localhost", "/readyz").await;
        if done(&reply.body) || Instant::now() > deadline {
            return reply.body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_cluster_on_rediss_with_an_acl_user_and_a_client_certificate_serves_tunnels() {
    let redis = secured_redis();
    let ca = redis.ca_pem.clone().expect("CA");
    // The client certificate Redis accepts is one its own CA signed.
    let signed = redis_client_pair(&redis);
    let dir = files(
        "rediss-ok",
        &[("ca.pem", &ca), ("c.pem", &signed.0), ("k.pem", &signed.1)],
    );
    let paths = ["ca.pem", "c.pem", "k.pem"].map(|name| dir.join(name).into_os_string());
    let url = rediss(&redis, PASSWORD);
    let server = server(
        &url,
        &[
            OsStr::new("--cluster-redis-ca"),
            &paths[0],
            OsStr::new("--cluster-redis-cert"),
            &paths[1],
            OsStr::new("--cluster-redis-key"),
            &paths[2],
        ],
    );
    let target = spawn_target("over-rediss").await;
    let control = server.addr("control").to_string();
    let port = target.addr.port().to_string();
    let args = ["http", &port, "--name", "secured", "--server", &control];
    let (_client, out) = spawn_client(Path::new(BIN), &args.map(OsStr::new));
    let line = wait_line(&out, "the tunnel's URL", Duration::from_secs(20), |l| {
        l.contains("http://")
    });
    assert!(line.contains("secured."), "{line}");
    let reply = get(server.addr("http"), "secured.localhost", "/").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.contains("over-rediss"), "{}", reply.body);
    let stored = redis.command(&["GET", "showoff:lease:name:secured"]);
    assert!(stored.contains("\"i\":\"node-tls\""), "{stored}");
    assert_eq!(readyz_until(&server, |b| b == "ready\n").await, "ready\n");
    let _ = std::fs::remove_dir_all(dir);
}

/// A client certificate and key signed by the test Redis's own CA.
fn redis_client_pair(redis: &RedisServer) -> (String, String) {
    let pair = redis.client_pair.clone().expect("a client certificate");
    (pair.cert, pair.key)
}

#[tokio::test]
async fn wrong_credentials_and_certificates_keep_the_server_up_and_readyz_says_why() {
    let redis = secured_redis();
    let ca = redis.ca_pem.clone().expect("CA");
    let (cert, key) = redis_client_pair(&redis);
    let stranger = TestCa::new("not redis's CA").cert_pem;
    let dir = files(
        "rediss-bad",
        &[
            ("ca.pem", &ca),
            ("c.pem", &cert),
            ("k.pem", &key),
            ("other-ca.pem", &stranger),
        ],
    );
    let path = |name: &str| dir.join(name).into_os_string();
    let (ca_flag, cert_flag, key_flag) = (
        OsStr::new("--cluster-redis-ca"),
        OsStr::new("--cluster-redis-cert"),
        OsStr::new("--cluster-redis-key"),
    );
    let (ca, other, cert, key) = (
        path("ca.pem"),
        path("other-ca.pem"),
        path("c.pem"),
        path("k.pem"),
    );
    let cases: [(&str, String, Vec<&OsStr>, &str); 3] = [
        (
            "a wrong password",
            rediss(&redis, "not-the-password"),
            vec![ca_flag, &ca, cert_flag, &cert, key_flag, &key],
            "authentication failed",
        ),
        (
            "a CA that did not sign Redis's certificate",
            rediss(&redis, PASSWORD),
            vec![ca_flag, &other, cert_flag, &cert, key_flag, &key],
            "unknownissuer",
        ),
        (
            "no client certificate",
            rediss(&redis, PASSWORD),
            vec![ca_flag, &ca],
            "certificaterequired",
        ),
    ];
    for (case, url, extra, reason) in cases {
        let server = server(&url, &extra);
        let body = readyz_until(&server, |b| b.contains("degraded")).await;
        assert!(
            body.starts_with("ready, degraded: the cluster's Redis does not answer"),
            "{case}: {body}"
        );
        assert!(body.to_lowercase().contains(reason), "{case}: {body}");
        assert!(
            !body.contains(PASSWORD),
            "{case}: the password leaked: {body}"
        );
        // A claim meanwhile is refused with the retryable code, and the server stays up.
        let control = server.addr("control").to_string();
        let args = ["http", "9", "--name", "refused", "--server", &control];
        let (_client, _out) = spawn_client(Path::new(BIN), &args.map(OsStr::new));
        let again = readyz_until(&server, |b| b.contains("degraded")).await;
        assert!(again.contains("degraded"), "{case}: {again}");
        let logged: Vec<String> = server.log.try_iter().collect();
        assert!(
            logged.iter().all(|line| !line.contains(PASSWORD)),
            "{case}: the password is in the log"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn tls_material_without_rediss_or_without_its_key_is_refused_at_start() {
    let dir = files("rediss-config", &[("ca.pem", "x"), ("c.pem", "x")]);
    let run = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(["server", "--check-config", "--instance", "n"])
            .args(args)
            .output()
            .expect("run");
        assert!(!out.status.success(), "{args:?} must be refused");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let ca = dir.join("ca.pem").display().to_string();
    let cert = dir.join("c.pem").display().to_string();
    let plain = run(&[
        "--cluster-redis",
        "redis://127.0.0.1:1",
        "--cluster-redis-ca",
        &ca,
    ]);
    assert!(plain.contains("rediss://"), "{plain}");
    let alone = run(&["--cluster-redis-ca", &ca]);
    assert!(alone.contains("need cluster_redis"), "{alone}");
    let halves = run(&[
        "--cluster-redis",
        "rediss://127.0.0.1:1",
        "--cluster-redis-cert",
        &cert,
    ]);
    assert!(halves.contains("go together"), "{halves}");
    let garbage = run(&[
        "--cluster-redis",
        "rediss://127.0.0.1:1",
        "--cluster-redis-ca",
        &ca,
    ]);
    assert!(garbage.contains("holds no certificate"), "{garbage}");
    let _ = std::fs::remove_dir_all(dir);
}
