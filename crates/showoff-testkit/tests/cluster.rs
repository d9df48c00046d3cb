//! The Redis registry against a real `redis-server` on loopback: the registry conformance
//! suite, two instances seeing each other's leases and events, fencing across instances,
//! Redis going away and coming back empty, and a server on it keeping its tunnels through
//! the outage.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use showoff_cluster::RedisRegistry;
use showoff_core::registry::conformance;
use showoff_core::{Claim, LeaseKey, Owner, Registry, RegistryError};
use showoff_proto::{RefusedCode, ServerMessage, TunnelKind};
use showoff_server::config::ClusterConfig;
use showoff_server::{ServerConfig, Services};
use showoff_testkit::cluster::{SECRET, instance_parts, registry_settings};
use showoff_testkit::raw_client::http_spec;
use showoff_testkit::redis::RedisServer;
use showoff_testkit::{
    TestClient, TestServer, eventually, raw_client, serve_http, visitor, within,
};

fn owner(principal: &str, session: &str) -> Owner {
    Owner {
        principal: principal.into(),
        session: session.into(),
    }
}

#[tokio::test]
async fn the_redis_registry_passes_the_conformance_suite() {
    let redis = RedisServer::start();
    let registry =
        RedisRegistry::connect(&registry_settings(&redis, "node-a", "conformance")).expect("setup");
    conformance::run(&registry).await;
    conformance::run_expiry(&registry, tokio::time::sleep).await;
    assert_eq!(registry.unavailable(), None);
}

#[tokio::test]
async fn instances_see_each_others_leases_and_events_drop_cached_lookups() {
    let redis = RedisServer::start();
    let mut long_cache = registry_settings(&redis, "node-b", "shared");
    long_cache.cache_ttl = Duration::from_secs(60);
    long_cache.lease_ttl = Duration::from_secs(30);
    let a = RedisRegistry::connect(&registry_settings(&redis, "node-a", "shared")).expect("setup");
    let b = RedisRegistry::connect(&long_cache).expect("setup");
    let key = LeaseKey::Name("demo".into());

    // B caches "free" while its subscription is up; A's claim must reach it as an event.
    let subscribed = within("b subscribes", async {
        loop {
            if b.lookup(&key).await.expect("lookup").is_none() && cached_free(&redis, &b).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    subscribed.await;
    let claimed = a.claim(&key, &owner("alice", "s1")).await.expect("claim");
    assert_eq!(claimed.claim, Claim::Fresh);
    let seen = within("b sees a's claim", async {
        loop {
            if let Some(lease) = b.lookup(&key).await.expect("lookup") {
                return lease;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(
        &*seen.instance, "node-a",
        "the lease names the instance that granted it"
    );
    assert_eq!(seen, claimed.lease);
    assert_eq!(
        b.claim(&key, &owner("bob", "s9")).await,
        Err(RegistryError::Taken),
        "another principal is refused on every instance"
    );

    // The same principal on another instance takes the name over; the old holder is fenced.
    let moved = b
        .claim(&key, &owner("alice", "s2"))
        .await
        .expect("takeover");
    assert_eq!(
        moved.claim,
        Claim::TakenOver {
            previous_session: "s1".into()
        }
    );
    assert_eq!(&*moved.lease.instance, "node-b");
    assert_eq!(a.renew(&claimed.lease).await, Err(RegistryError::Lost));
    assert_eq!(a.reassert(&claimed.lease).await, Err(RegistryError::Lost));
    assert_eq!(a.release(&claimed.lease).await, Ok(false));
    assert_eq!(a.lookup(&key).await, Ok(Some(moved.lease.clone())));

    // A release on B reaches A's cache as an event.
    assert_eq!(b.release(&moved.lease).await, Ok(true));
    within("a sees the release", async {
        while a.lookup(&key).await.expect("lookup").is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_peer_listener_is_found_once_announced_and_a_miss_is_not_remembered() {
    let redis = RedisServer::start();
    let mut long_cache = registry_settings(&redis, "node-b", "peers");
    long_cache.cache_ttl = Duration::from_secs(60);
    let a = RedisRegistry::connect(&registry_settings(&redis, "node-a", "peers")).expect("setup");
    let b = RedisRegistry::connect(&long_cache).expect("setup");
    // B asks before A has announced (a visitor for A's first tunnel can be that early).
    assert_eq!(b.peer_addr("node-a").await.expect("lookup"), None);
    a.announce("127.0.0.1:7946");
    within("b finds a's peer listener", async {
        while b.peer_addr("node-a").await.expect("lookup").is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(
        b.peer_addr("node-a").await.expect("lookup").as_deref(),
        Some("127.0.0.1:7946")
    );
}

/// Whether `registry` now answers lookups from its cache: a key it found free, then written
/// behind its back (straight into Redis, with no event), still looks free. Each call probes a
/// key of its own, so an answer cached by an earlier call cannot mislead it.
async fn cached_free(redis: &RedisServer, registry: &RedisRegistry) -> bool {
    static PROBES: AtomicU32 = AtomicU32::new(0);
    let name = format!("probe-{}", PROBES.fetch_add(1, Ordering::Relaxed));
    let probe = LeaseKey::Name(name.clone());
    if registry.lookup(&probe).await.expect("lookup").is_some() {
        return false;
    }
    let stored = format!("shared:lease:name:{name}");
    redis.command(&["SET", &stored, r#"{"g":1,"i":"x","p":"x","s":"x"}"#]);
    let cached = registry.lookup(&probe).await.expect("lookup").is_none();
    redis.command(&["DEL", &stored]);
    cached
}

#[tokio::test]
async fn redis_away_refuses_with_a_retryable_error_and_back_empty_takes_leases_back() {
    let mut redis = RedisServer::start();
    let registry =
        RedisRegistry::connect(&registry_settings(&redis, "node-a", "outage")).expect("setup");
    let key = LeaseKey::Port(20_001);
    let held = registry
        .claim(&key, &owner("alice", "s1"))
        .await
        .expect("claim");
    redis.stop();

    let started = tokio::time::Instant::now();
    let refused = registry
        .claim(&LeaseKey::Port(20_002), &owner("bob", "s2"))
        .await;
    assert!(
        matches!(refused, Err(RegistryError::Backend(_))),
        "{refused:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a call waits for its deadline, not forever"
    );
    eventually("the registry says why it is unavailable", || {
        registry.unavailable().is_some()
    })
    .await;
    let reason = registry.unavailable().expect("reason");
    assert!(reason.contains("Redis"), "{reason}");

    redis.start_again();
    eventually("the registry answers again", || {
        registry.unavailable().is_none()
    })
    .await;
    within("the lease renews again or is taken back", async {
        loop {
            match registry.renew(&held.lease).await {
                Ok(()) => panic!("an empty Redis cannot renew what it lost"),
                Err(RegistryError::Lost) => break,
                Err(RegistryError::Backend(_)) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(other) => panic!("{other:?}"),
            }
        }
    })
    .await;
    registry.reassert(&held.lease).await.expect("reassert");
    assert_eq!(registry.lookup(&key).await, Ok(Some(held.lease.clone())));
    assert_eq!(
        registry.claim(&key, &owner("bob", "s2")).await,
        Err(RegistryError::Taken),
        "the reasserted lease is held"
    );
    let next = registry
        .claim(&LeaseKey::Port(20_003), &owner("bob", "s2"))
        .await
        .expect("claims resume");
    assert!(
        next.lease.generation > held.lease.generation,
        "generations stay above every lease taken back ({} > {})",
        next.lease.generation,
        held.lease.generation
    );
}

/// A server on a Redis registry with a 1 s lease TTL, on plain TCP whatever the transport
/// under test (the test speaks the wire protocol by hand).
async fn server_on(redis: &RedisServer, prefix: &str) -> TestServer {
    let settings = registry_settings(redis, "node-a", prefix);
    let mut config = ServerConfig::ephemeral();
    config.cluster = ClusterConfig {
        redis: Some(settings.url.clone()),
        instance: settings.instance.clone(),
        lease_ttl: settings.lease_ttl,
        prefix: settings.prefix.clone(),
        ..ClusterConfig::default()
    };
    let registry = RedisRegistry::connect(&settings).expect("setup");
    let services = Services {
        registry: Some(Arc::new(registry)),
        ..Services::default()
    };
    TestServer::start_raw_with(config, services).await
}

#[tokio::test]
async fn a_server_on_redis_keeps_its_tunnels_through_an_outage_and_takes_them_back() {
    let mut redis = RedisServer::start();
    let server = server_on(&redis, "outage-server").await;
    let target = showoff_testkit::target::spawn_target("demo-target").await;
    let tunnels = vec![showoff_testkit::tunnel(
        TunnelKind::Http,
        Some("demo"),
        target.addr,
    )];
    let _client = TestClient::start(TestClient::config(&server, tunnels))
        .await
        .expect("session");
    let stored = |redis: &RedisServer| redis.command(&["GET", "outage-server:lease:name:demo"]);
    assert!(
        stored(&redis).contains("\"s\""),
        "the lease is in Redis: {}",
        stored(&redis)
    );

    // Leases outlive several TTLs: the session renews them.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(
        stored(&redis).contains("\"s\""),
        "renewed: {}",
        stored(&redis)
    );
    let reply = visitor::get(server.addrs.http, &server.host("demo"), "/").await;
    assert_eq!(reply.status, 200);

    redis.stop();
    // Claims are refused with a retryable code while the tunnel up keeps serving.
    let (_conn, answer) =
        raw_client::open(server.addrs.control, "", vec![http_spec("other")]).await;
    match answer {
        ServerMessage::Refused { code, message } => {
            assert_eq!(code, RefusedCode::RegistryUnavailable, "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let ready = within("readyz says why", async {
        loop {
            let reply = server.admin_get("/readyz").await;
            if reply.body.contains("degraded") {
                return reply;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(ready.status, 200, "still ready: its tunnels serve");
    assert!(ready.body.contains("Redis"), "{}", ready.body);
    // Longer than the TTL: the lease could have lapsed, but nobody could claim it.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let reply = visitor::get(server.addrs.http, &server.host("demo"), "/").await;
    assert_eq!(reply.status, 200, "visitors still reach the tunnel");

    // Redis comes back empty: the session takes its lease back, claims resume.
    redis.start_again();
    within("the lease is taken back", async {
        while !stored(&redis).contains("\"s\"") {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    within("readyz is plain ready again", async {
        while server.admin_get("/readyz").await.body != "ready\n" {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let (_conn, answer) =
        raw_client::open(server.addrs.control, "", vec![http_spec("other")]).await;
    assert!(
        matches!(answer, ServerMessage::Welcome { .. }),
        "{answer:?}"
    );
    let reply = visitor::get(server.addrs.http, &server.host("demo"), "/").await;
    assert_eq!(reply.status, 200);
}

/// One instance of a cluster on `redis`, with a peer listener and `secret`.
async fn instance(redis: &RedisServer, name: &str, prefix: &str, secret: &str) -> TestServer {
    let (config, services) = instance_parts(redis, name, prefix, secret);
    TestServer::start_with(config, services).await
}

#[tokio::test]
async fn a_visitor_on_any_instance_reaches_the_tunnel_in_one_hop() {
    let redis = RedisServer::start();
    let a = instance(&redis, "node-a", "hop", SECRET).await;
    let b = instance(&redis, "node-b", "hop", SECRET).await;
    let (_target, _client) = serve_http(&a, "demo", "demo-target").await;

    // Through B, which does not hold the tunnel: one hop to A, A applies the tunnel's policy.
    let reply = within("b forwards", async {
        loop {
            let reply = visitor::get(b.addrs.http, &b.host("demo"), "/hello").await;
            if reply.status == 200 {
                return reply;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let echo: serde_json::Value = serde_json::from_str(&reply.body).expect("echo JSON");
    assert_eq!(echo["target"], "demo-target");
    assert_eq!(echo["path"], "/hello");
    assert_eq!(
        echo["headers"]["x-forwarded-for"][0], "127.0.0.1",
        "the visitor as B saw it, not B: {echo}"
    );
    let sent: Vec<&String> = echo["headers"]
        .as_object()
        .expect("headers")
        .keys()
        .filter(|name| name.starts_with("x-showoff-peer"))
        .collect();
    assert!(
        sent.is_empty(),
        "peer headers never reach the target: {sent:?}"
    );
    // Bodies cross the hop in both framings.
    let host = b.host("demo");
    let sized = format!(
        "POST /upload HTTP/1.1\r\nhost: {host}\r\ncontent-length: 10\r\nconnection: close\r\n\r\n0123456789"
    );
    let answer = visitor::raw(b.addrs.http, sized.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"body_bytes\":10"), "{answer}");
    let chunked = format!(
        "POST /upload HTTP/1.1\r\nhost: {host}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\n01234\r\n7\r\n5678901\r\n0\r\n\r\n"
    );
    let answer = visitor::raw(b.addrs.http, chunked.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"body_bytes\":12"), "{answer}");

    // Exactly one hop: B forwarded, A served from its peer listener, A forwarded nothing.
    let forwarded = r#"showoff_cluster_forwarded_total{result="ok"}"#;
    assert!(b.metric(forwarded).await >= Some(3.0));
    assert_eq!(a.metric(forwarded).await, Some(0.0));
    assert!(a.metric("showoff_cluster_peer_requests_total").await >= Some(3.0));
    assert_eq!(
        b.metric("showoff_cluster_peer_requests_total").await,
        Some(0.0)
    );

    // A name nobody holds is 404 on every instance, and nothing was forwarded for it.
    let missing = visitor::get(b.addrs.http, &b.host("nobody"), "/").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.headers["x-showoff-error"], "tunnel_not_found");
    let not_here = r#"showoff_cluster_forwarded_total{result="not_here"}"#;
    assert_eq!(b.metric(not_here).await, Some(0.0));
}

#[tokio::test]
async fn a_peer_without_the_secret_is_refused_and_the_visitor_told() {
    let redis = RedisServer::start();
    let a = instance(&redis, "node-a", "secret", SECRET).await;
    let stranger = instance(&redis, "node-x", "secret", "not the cluster's secret!").await;
    let (_target, _client) = serve_http(&a, "demo", "demo-target").await;
    let reply = within("the stranger tries", async {
        loop {
            let reply = visitor::get(stranger.addrs.http, &stranger.host("demo"), "/").await;
            if reply.status != 404 {
                return reply;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.headers["x-showoff-error"], "peer_unreachable");
    assert!(a.metric("showoff_cluster_peer_refused_total").await >= Some(1.0));
    assert_eq!(
        a.metric("showoff_cluster_peer_requests_total").await,
        Some(0.0)
    );
}

#[tokio::test]
async fn a_tunnel_that_moves_is_found_where_it_went() {
    let redis = RedisServer::start();
    let a = instance(&redis, "node-a", "moves", SECRET).await;
    let b = instance(&redis, "node-b", "moves", SECRET).await;
    let target = showoff_testkit::target::spawn_target("moving-target").await;
    let spec = || {
        vec![showoff_testkit::tunnel(
            TunnelKind::Http,
            Some("demo"),
            target.addr,
        )]
    };
    let mut on_a = TestClient::config(&a, spec());
    on_a.token = "same-token".into();
    let first = TestClient::start(on_a).await.expect("session on a");
    let through_b = visitor::get(b.addrs.http, &b.host("demo"), "/").await;
    assert_eq!(through_b.status, 200, "{}", through_b.body);

    // The same client reconnects to B (its instance died, say) and takes the name over.
    let mut on_b = TestClient::config(&b, spec());
    on_b.token = "same-token".into();
    let _second = TestClient::start(on_b).await.expect("session on b");
    // The first client hears it was replaced (within a renewal) and stops, as on one server.
    match first.ended().await {
        Err(showoff_client::ClientError::Refused { code, .. }) => {
            assert_eq!(code, RefusedCode::Replaced)
        }
        other => panic!("expected a replaced refusal, got {other:?}"),
    }
    within("a forwards to b now", async {
        loop {
            let reply = visitor::get(a.addrs.http, &a.host("demo"), "/").await;
            if reply.status == 200
                && b.metric("showoff_cluster_peer_requests_total").await >= Some(1.0)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let local = visitor::get(b.addrs.http, &b.host("demo"), "/").await;
    assert_eq!(local.status, 200, "b serves its own tunnel");
}

#[tokio::test]
async fn the_holders_visitor_rules_apply_to_visitors_of_other_instances() {
    let redis = RedisServer::start();
    let a = instance(&redis, "node-a", "rules", SECRET).await;
    let b = instance(&redis, "node-b", "rules", SECRET).await;
    let target = showoff_testkit::target::spawn_target("guarded").await;
    let mut guarded = showoff_testkit::tunnel(TunnelKind::Http, Some("guarded"), target.addr);
    guarded.spec.visitors = showoff_proto::VisitorRules {
        basic_auth: Some("ann:s3cret".into()),
        ..Default::default()
    };
    let denied_tunnel = {
        let mut t = showoff_testkit::tunnel(TunnelKind::Http, Some("closed"), target.addr);
        t.spec.visitors = showoff_proto::VisitorRules {
            deny_ips: vec!["127.0.0.0/8".into()],
            ..Default::default()
        };
        t
    };
    let _client = TestClient::start(TestClient::config(&a, vec![guarded, denied_tunnel]))
        .await
        .expect("session");
    let ask = |host: String, auth: &'static str| {
        let addr = b.addrs.http;
        async move {
            let raw = format!("GET / HTTP/1.1\r\nhost: {host}\r\n{auth}connection: close\r\n\r\n");
            visitor::raw(addr, raw.as_bytes()).await
        }
    };
    let anonymous = ask(b.host("guarded"), "").await;
    assert!(anonymous.starts_with("HTTP/1.1 401"), "{anonymous}");
    assert!(
        anonymous.contains("x-showoff-error: auth_required"),
        "{anonymous}"
    );
    // ann:s3cret
    let signed_in = ask(
        b.host("guarded"),
        "authorization: Basic YW5uOnMzY3JldA==\r\n",
    )
    .await;
    assert!(signed_in.starts_with("HTTP/1.1 200"), "{signed_in}");
    assert!(
        !signed_in.contains("YW5uOnMzY3JldA"),
        "the credentials stay at the edge: {signed_in}"
    );
    let refused = ask(b.host("closed"), "").await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    assert!(
        refused.contains("x-showoff-error: ip_forbidden"),
        "{refused}"
    );
    // A visitor cannot pass for another address with the peer headers, through B or at A.
    let spoof = "x-showoff-peer-visitor: 192.0.2.1\r\nx-showoff-peer-chain: 192.0.2.1\r\nx-showoff-peer-proto: http\r\n";
    let through_b = ask(b.host("closed"), spoof).await;
    assert!(through_b.starts_with("HTTP/1.1 403"), "{through_b}");
    let raw = format!(
        "GET / HTTP/1.1\r\nhost: {}\r\n{spoof}connection: close\r\n\r\n",
        a.host("closed")
    );
    let at_a = visitor::raw(a.addrs.http, raw.as_bytes()).await;
    assert!(at_a.starts_with("HTTP/1.1 403"), "{at_a}");
}

#[tokio::test]
async fn a_client_with_a_server_list_moves_on_when_its_instance_drains() {
    let redis = RedisServer::start();
    let plain = |name: &'static str| {
        let (config, services) = instance_parts(&redis, name, "list", SECRET);
        TestServer::start_raw_with(config, services)
    };
    let (a, b) = (plain("node-a").await, plain("node-b").await);
    let target = showoff_testkit::target::spawn_target("listed").await;
    let tunnels = vec![showoff_testkit::tunnel(
        TunnelKind::Http,
        Some("listed"),
        target.addr,
    )];
    let mut config = TestClient::config(&a, tunnels);
    config.transport = showoff_client::TransportChoice::Mux;
    config.server = format!("{},{}", a.addrs.control, b.addrs.control);
    let mut client = TestClient::start(config).await.expect("session on a");
    let before = visitor::get(b.addrs.http, &b.host("listed"), "/").await;
    assert_eq!(before.status, 200, "forwarded from b to a");

    // A drains: its GoAway sends the client to the next server of its list, with its name.
    a.stop().await;
    let tunnels = client.reconnected().await;
    assert_eq!(tunnels[0].name, "listed");
    let after = visitor::get(b.addrs.http, &b.host("listed"), "/").await;
    assert_eq!(after.status, 200, "b serves it itself now");
    assert_eq!(
        b.metric(r#"showoff_cluster_forwarded_total{result="ok"}"#)
            .await,
        Some(1.0),
        "only the request before the drain was forwarded"
    );
}
