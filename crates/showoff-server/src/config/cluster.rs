//! Clustering settings: the Redis that several instances share and how its leases behave.
//! Plain data: the binary builds the registry from it (`showoff_cluster::RedisRegistry`) and
//! hands it in as [`Services::registry`](crate::Services::registry).

use std::net::SocketAddr;
use std::time::Duration;

use showoff_core::Secret;

/// Default lease TTL in a cluster: how long a killed instance's names stay taken.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);
/// Default prefix of the cluster's Redis keys and channels.
pub const DEFAULT_CLUSTER_PREFIX: &str = "showoff:";
/// The shortest lease TTL accepted: renewals run every third of it.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(1);

/// How this instance joins a cluster; `redis: None` is a single server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `redis://` or `rediss://` URL of the shared Redis (may carry a password).
    pub redis: Option<Secret>,
    /// This instance's name in the cluster; the binary defaults it to the host name.
    pub instance: String,
    /// How long a lease lives without renewal.
    pub lease_ttl: Duration,
    /// Prefix of every Redis key and channel, so clusters can share a Redis.
    pub prefix: String,
    /// The peer listener: where the other instances forward visitors of this instance's
    /// tunnels; `None`: visitors of other instances' tunnels get 404 here.
    pub peer_addr: Option<SocketAddr>,
    /// The address the other instances dial for the peer listener (`host:port`); empty: the
    /// peer listener's own address.
    pub peer_advertise: String,
    /// Shared by every instance: peer links prove it (HMAC over a fresh challenge).
    pub secret: Option<Secret>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis: None,
            instance: String::new(),
            lease_ttl: DEFAULT_LEASE_TTL,
            prefix: DEFAULT_CLUSTER_PREFIX.into(),
            peer_addr: None,
            peer_advertise: String::new(),
            secret: None,
        }
    }
}

impl ClusterConfig {
    /// Whether this instance is part of a cluster.
    pub fn enabled(&self) -> bool {
        self.redis.is_some()
    }
}
