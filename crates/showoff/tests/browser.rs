//! The inspector page and the server dashboard in a real browser: Debian's Chromium, headless,
//! driven by Playwright (`tests/browser/pages.mjs`) against a real server, client and target on
//! loopback. `scripts/test` installs Chromium and the script's `playwright-core`; screenshots
//! of each page are left in `target/browser/` for a reviewer.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use showoff_client::inspect::{InspectConfig, Inspector, api};
use showoff_proto::TunnelKind;
use showoff_server::ServerConfig;
use showoff_server::config::TEST_ADMIN_TOKEN;
use showoff_testkit::{TestClient, TestServer, target, tunnel};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long the browser script may take in all.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(120);

fn script_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inspector_and_the_dashboard_work_in_a_real_browser() {
    let dir = script_dir();
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run scripts/test, or `npm ci --prefix {}`",
        dir.display()
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: run scripts/test (it installs Debian's chromium)"
    );

    let server = TestServer::start(ServerConfig::ephemeral()).await;
    let target = target::spawn_target("browser").await;
    let inspector = Inspector::new(&InspectConfig::default()).expect("inspector");
    let mut config = TestClient::config(
        &server,
        vec![tunnel(TunnelKind::Http, Some("shop"), target.addr)],
    );
    config.inspector = Some(inspector.clone());
    let _client = TestClient::start(config).await.expect("client session");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let inspector_url = format!("http://{}/", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    tokio::spawn(api::serve(listener, inspector, stop.clone()));
    let _stop = stop.drop_guard();

    let admin = server.addrs.admin.expect("admin listener");
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/browser");
    let _ = std::fs::remove_dir_all(&shots);
    let run = tokio::process::Command::new("node")
        .arg(dir.join("pages.mjs"))
        .current_dir(&dir)
        .env("INSPECTOR_URL", &inspector_url)
        .env("PUBLIC_PORT", server.addrs.http.port().to_string())
        .env("TUNNEL_HOST", server.host("shop"))
        .env("TUNNEL_NAME", "shop")
        .env("DASHBOARD_URL", format!("http://{admin}/dashboard"))
        .env("ADMIN_TOKEN", TEST_ADMIN_TOKEN)
        .env("SCREENSHOT_DIR", &shots)
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(SCRIPT_DEADLINE, run)
        .await
        .expect("the browser script finished in time")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser script failed:\n{stdout}\n{stderr}"
    );
    let result: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no result line ({e}):\n{stdout}\n{stderr}"));
    assert_eq!(result["ok"], true, "{result}");
    assert!(result["rate"].as_f64().is_some_and(|r| r > 0.0), "{result}");

    // The target's own count: the order, its replay from the page, the image, five visits.
    assert_eq!(target.stats.requests.load(Ordering::Relaxed), 8);
    for shot in [
        "inspector-detail.png",
        "inspector-image.png",
        "dashboard.png",
    ] {
        let size = std::fs::metadata(shots.join(shot)).map_or(0, |m| m.len());
        assert!(size > 10_000, "{shot} was written ({size} bytes)");
    }
}
