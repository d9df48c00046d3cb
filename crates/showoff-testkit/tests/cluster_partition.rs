//! Failures of the cluster's Redis on a real `redis-server`: an instance cut off from Redis
//! alone (its link black-holed through the impairment relay) fences itself off before its
//! leases lapse, and its clients take their names to another instance; Redis down for every
//! instance for 10 s fences nobody, loses nothing that was connected, and claims resume.

use std::time::Duration;

use showoff_proto::TunnelKind;
use showoff_testkit::cluster::{SECRET, instance_parts, instance_parts_via};
use showoff_testkit::impair::{Faults, Relay};
use showoff_testkit::redis::RedisServer;
use showoff_testkit::target::spawn_target;
use showoff_testkit::visitor::{self, Reply};
use showoff_testkit::{TestClient, TestServer, tunnel, within};
use tokio::time::Instant;

/// The address of `redis`, parsed back from its URL.
fn redis_addr(redis: &RedisServer) -> std::net::SocketAddr {
    let url = redis.url();
    url.trim_start_matches("redis://").parse().expect("addr")
}

async fn readyz(server: &TestServer) -> Reply {
    let admin = server.addrs.admin.expect("admin");
    visitor::get(admin, "localhost", "/readyz").await
}

/// Gets `name` through `server` until it answers 200.
async fn reaches(server: &TestServer, name: &str) {
    within(&format!("{name} answers"), async {
        while visitor::get(server.addrs.http, &server.host(name), "/")
            .await
            .status
            != 200
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn an_instance_cut_off_from_redis_alone_fences_itself_and_its_clients_move() {
    let redis = RedisServer::start();
    let relay = Relay::start(redis_addr(&redis)).await;
    let via = format!("redis://{}", relay.addr());
    // Without QUIC listeners: one QUIC port number cannot name two instances on one machine,
    // so a client with a server list moves over a stream transport here.
    let (config, services) = instance_parts_via(&via, "node-a", "fence", SECRET);
    let a = TestServer::start_raw_with(config, services).await;
    let (config, services) = instance_parts(&redis, "node-b", "fence", SECRET);
    let b = TestServer::start_raw_with(config, services).await;
    let target = spawn_target("fenced").await;
    let mut config = TestClient::config(
        &a,
        vec![tunnel(TunnelKind::Http, Some("fenced"), target.addr)],
    );
    config.server = format!("{},{}", a.addrs.control, b.addrs.control);
    let mut client = TestClient::start(config).await.expect("session on A");
    reaches(&b, "fenced").await;
    within("A knows its peer", async {
        while a.metric("showoff_cluster_peers").await != Some(1.0) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // A's link to Redis goes silent (nothing passes; TCP loses nothing, so the bytes wait);
    // B's does not.
    relay.set(Faults {
        stall: true,
        ..Faults::default()
    });
    let cut = Instant::now();
    let tunnels = client.reconnected().await;
    let moved_after = cut.elapsed();
    assert_eq!(tunnels[0].name, "fenced");
    // 3 s leases: A gives its sessions up after 2 s of silence, before they lapse.
    assert!(
        moved_after < Duration::from_secs(3),
        "the client moved only after {moved_after:?}"
    );
    let ready = readyz(&a).await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(a.metric("showoff_cluster_partitioned").await, Some(1.0));
    assert!(ready.body.starts_with("partitioned"), "{}", ready.body);
    // No ghost: A serves no tunnel any more, B serves the name itself.
    let listed = a.admin_get("/api/v1/tunnels").await;
    assert_eq!(listed.body.trim(), "[]", "A still lists {}", listed.body);
    let forwarded = r#"showoff_cluster_forwarded_total{result="ok"}"#;
    let before = b.metric(forwarded).await;
    reaches(&b, "fenced").await;
    assert_eq!(
        b.metric(forwarded).await,
        before,
        "served by B, not forwarded"
    );
    let lease = redis.command(&["GET", "fence:lease:name:fenced"]);
    assert!(lease.contains("node-b"), "the lease is B's: {lease}");

    // The link heals: A is ready again, with nothing of its old sessions.
    relay.set(Faults::default());
    within("A ready again", async {
        while readyz(&a).await.status != 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn redis_down_for_everyone_for_ten_seconds_fences_nobody_and_loses_nothing() {
    let mut redis = RedisServer::start();
    let (config, services) = instance_parts(&redis, "node-a", "outage10", SECRET);
    let a = TestServer::start_with(config, services).await;
    let (config, services) = instance_parts(&redis, "node-b", "outage10", SECRET);
    let b = TestServer::start_with(config, services).await;
    let target = spawn_target("kept").await;
    let config = TestClient::config(
        &a,
        vec![tunnel(TunnelKind::Http, Some("kept"), target.addr)],
    );
    let mut client = TestClient::start(config).await.expect("session");
    reaches(&b, "kept").await;

    redis.stop();
    let (stopped, mut served, mut failed) = (Instant::now(), 0, 0);
    while stopped.elapsed() < Duration::from_secs(10) {
        let reply = visitor::get(a.addrs.http, &a.host("kept"), "/").await;
        if reply.status == 200 {
            served += 1;
        } else {
            failed += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(failed, 0, "{served} served, {failed} failed on the holder");
    let ready = readyz(&a).await;
    assert_eq!(ready.status, 200, "an outage fences nobody: {}", ready.body);
    assert!(ready.body.contains("degraded"), "{}", ready.body);
    assert!(!client.has_event(), "the client was never told to leave");

    // Redis back, empty: the lease is taken back by its holder, claims resume on B.
    redis.start_again();
    reaches(&b, "kept").await;
    let lease = redis.command(&["GET", "outage10:lease:name:kept"]);
    assert!(lease.contains("node-a"), "{lease}");
    let other = spawn_target("after").await;
    let config = TestClient::config(
        &b,
        vec![tunnel(TunnelKind::Http, Some("after"), other.addr)],
    );
    let _late = within("a claim after the outage", async {
        loop {
            if let Ok(client) = TestClient::start(config.clone()).await {
                return client;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    reaches(&a, "after").await;
}
