//! Instances of a cluster for end-to-end tests: each on the same real `redis-server`
//! ([`crate::redis`]) under a prefix of the test's own, with a peer listener and the shared
//! secret, and, where ports must not collide, on a loopback address of its own (every
//! instance listens on the ports the others hold, as each would on its own machine).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use showoff_cluster::{RedisRegistry, RedisSettings};
use showoff_core::Secret;
use showoff_server::config::ClusterConfig;
use showoff_server::{ServerConfig, Services};

use crate::redis::RedisServer;

/// The secret the tests' clusters share.
pub const SECRET: &str = "a cluster secret of 32 bytes ...";

/// Registry settings for `instance` under `prefix`, with short timings (1 s leases).
pub fn registry_settings(redis: &RedisServer, instance: &str, prefix: &str) -> RedisSettings {
    let mut settings = RedisSettings::new(Secret::new(redis.url()), instance);
    settings.prefix = format!("{prefix}:");
    settings.lease_ttl = Duration::from_secs(1);
    settings.cache_ttl = Duration::from_millis(200);
    settings.timeout = Duration::from_millis(500);
    settings
}

/// The configuration and services of instance `name` of the cluster `prefix` on `redis`
/// (3 s leases), with a peer listener and `secret`; every listener on `127.0.0.1:0`.
pub fn instance_parts(
    redis: &RedisServer,
    name: &str,
    prefix: &str,
    secret: &str,
) -> (ServerConfig, Services) {
    instance_parts_via(&redis.url(), name, prefix, secret)
}

/// [`instance_parts`] reaching Redis at `url` (e.g. through an impairment relay).
pub fn instance_parts_via(
    url: &str,
    name: &str,
    prefix: &str,
    secret: &str,
) -> (ServerConfig, Services) {
    let mut settings = RedisSettings::new(Secret::new(url), name);
    settings.prefix = format!("{prefix}:");
    settings.cache_ttl = Duration::from_millis(200);
    settings.timeout = Duration::from_millis(500);
    settings.lease_ttl = Duration::from_secs(3);
    let mut config = ServerConfig::ephemeral();
    config.cluster = ClusterConfig {
        redis: Some(settings.url.clone()),
        instance: name.into(),
        lease_ttl: settings.lease_ttl,
        prefix: settings.prefix.clone(),
        peer_addr: Some("127.0.0.1:0".parse().expect("addr")),
        peer_advertise: String::new(),
        secret: Some(Secret::new(secret)),
    };
    let registry = RedisRegistry::connect(&settings).expect("setup");
    let services = Services {
        registry: Some(Arc::new(registry)),
        ..Services::default()
    };
    (config, services)
}

/// A loopback address of its own (`127.x.y.z`, random): an instance whose public listener
/// and tunnel ports bind there can listen on the same port numbers as another instance.
pub fn own_loopback() -> IpAddr {
    let [x, y, z] = rand::random::<[u8; 3]>();
    IpAddr::V4(Ipv4Addr::new(127, x.max(1), y, z.clamp(1, 254)))
}
