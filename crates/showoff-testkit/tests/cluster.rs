//! The Redis registry against a real `redis-server` on loopback: the registry conformance
//! suite, two instances seeing each other's leases and events, fencing across instances,
//! Redis going away and coming back empty, and a server on it keeping its tunnels through
//! the outage.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use showoff_cluster::{RedisRegistry, RedisSettings};
use showoff_core::registry::conformance;
use showoff_core::{Claim, LeaseKey, Owner, Registry, RegistryError, Secret};
use showoff_proto::{HostHeader, RefusedCode, ServerMessage, TunnelKind, TunnelSpec};
use showoff_server::config::ClusterConfig;
use showoff_server::{ServerConfig, Services};
use showoff_testkit::redis::RedisServer;
use showoff_testkit::{TestServer, eventually, raw_client, serve_http, visitor, within};

fn settings(redis: &RedisServer, instance: &str, prefix: &str) -> RedisSettings {
    let mut settings = RedisSettings::new(Secret::new(redis.url()), instance);
    settings.prefix = format!("{prefix}:");
    settings.lease_ttl = Duration::from_secs(1);
    settings.cache_ttl = Duration::from_millis(200);
    settings.timeout = Duration::from_millis(500);
    settings
}

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
        RedisRegistry::connect(&settings(&redis, "node-a", "conformance")).expect("setup");
    conformance::run(&registry).await;
    conformance::run_expiry(&registry, tokio::time::sleep).await;
    assert_eq!(registry.unavailable(), None);
}

#[tokio::test]
async fn instances_see_each_others_leases_and_events_drop_cached_lookups() {
    let redis = RedisServer::start();
    let mut long_cache = settings(&redis, "node-b", "shared");
    long_cache.cache_ttl = Duration::from_secs(60);
    long_cache.lease_ttl = Duration::from_secs(30);
    let a = RedisRegistry::connect(&settings(&redis, "node-a", "shared")).expect("setup");
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
    let registry = RedisRegistry::connect(&settings(&redis, "node-a", "outage")).expect("setup");
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

fn http_spec(name: &str) -> TunnelSpec {
    TunnelSpec {
        kind: TunnelKind::Http,
        name: Some(name.into()),
        port: None,
        host_header: HostHeader::Preserve,
        target: String::new(),
        visitors: Default::default(),
    }
}

/// A server on a Redis registry with a 1 s lease TTL.
async fn server_on(redis: &RedisServer, prefix: &str) -> TestServer {
    let settings = settings(redis, "node-a", prefix);
    let mut config = ServerConfig::ephemeral();
    config.cluster = ClusterConfig {
        redis: Some(settings.url.clone()),
        instance: settings.instance.clone(),
        lease_ttl: settings.lease_ttl,
        prefix: settings.prefix.clone(),
    };
    let registry = RedisRegistry::connect(&settings).expect("setup");
    let services = Services {
        registry: Some(Arc::new(registry)),
        ..Services::default()
    };
    TestServer::start_with(config, services).await
}

#[tokio::test]
async fn a_server_on_redis_keeps_its_tunnels_through_an_outage_and_takes_them_back() {
    let mut redis = RedisServer::start();
    let server = server_on(&redis, "outage-server").await;
    let (_target, _client) = serve_http(&server, "demo", "demo-target").await;
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
