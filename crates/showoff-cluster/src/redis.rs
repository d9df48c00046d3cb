//! [`RedisRegistry`]: the lease registry several Showoff instances share through one Redis.
//!
//! Each lease is one key (see [`record`](crate::record)) set with the lease's TTL. Every
//! change is one Lua script, so it is atomic on the Redis side:
//!
//! - **claim**: a free key is taken with `SET NX PX` and a new generation from `INCR`; the
//!   same principal's other session takes it over (new generation, `SET XX PX`); anyone else
//!   is refused;
//! - **renew** and **release** act only when the stored generation *and* session are the
//!   caller's (a compare-and-set), so a stale holder can never extend or free the new one's;
//! - **reassert** puts a lease back, unchanged, when its key has fallen free (it expired while
//!   this instance could not reach Redis, or Redis restarted without its data), and raises
//!   the generation counter past it so later grants stay fenced.
//!
//! Claims, takeovers, reasserts and releases publish the key on the events channel; every
//! instance drops its cached lookup of that key ([`LookupCache`]), and a port key wakes
//! whoever follows [`Registry::port_changes`]. Port leases are also listed in a set, so
//! [`Registry::port_leases`] is one script that prunes what expired. Each call has a deadline:
//! Redis that does not answer in time is a [`RegistryError::Backend`], which the server turns
//! into a retryable refusal, and [`Registry::unavailable`] says why until Redis answers again.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use showoff_core::{Claim, Claimed, Lease, LeaseKey, Owner, Registry, RegistryError, Secret};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::cache::LookupCache;
use crate::record::{Keys, Record};
use crate::tls::RedisTls;
use crate::watch::{Announcement, Health, Watch};

/// Key prefix of a cluster's names.
pub const DEFAULT_PREFIX: &str = "showoff:";
/// How long a lease lives without renewal: how long a killed instance's names stay taken.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);
/// How long a lookup is cached at most (events drop it sooner).
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(1);
/// How long one Redis call may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// How to reach the cluster's Redis and how its leases behave.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    pub url: Secret,
    /// This instance's name in the cluster (leases say which instance granted them).
    pub instance: String,
    /// Prefix of every key and channel, so several clusters can share one Redis.
    pub prefix: String,
    /// Lease TTL.
    pub lease_ttl: Duration,
    /// Longest a lookup is served from the local cache.
    pub cache_ttl: Duration,
    /// Deadline of each Redis call (and of each connection attempt).
    pub timeout: Duration,
    /// A CA and client certificate for a `rediss://` URL, beyond the system's roots.
    pub tls: RedisTls,
}

impl RedisSettings {
    /// Settings for `url` and `instance` with the defaults.
    pub fn new(url: Secret, instance: &str) -> Self {
        Self {
            url,
            instance: instance.to_string(),
            prefix: DEFAULT_PREFIX.to_string(),
            lease_ttl: DEFAULT_LEASE_TTL,
            cache_ttl: DEFAULT_CACHE_TTL,
            timeout: DEFAULT_TIMEOUT,
            tls: RedisTls::default(),
        }
    }
}

/// Why a [`RedisRegistry`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    /// The lease TTL is under a second, too short to renew reliably.
    #[error("the lease TTL must be at least 1s (got {0:?})")]
    TtlTooShort(Duration),
    /// The Redis client could not be opened (URL or TLS material).
    #[error(transparent)]
    Open(#[from] crate::tls::OpenError),
}

const CLAIM: &str = r#"
local current = redis.call('GET', KEYS[1])
local how = 'fresh'
local previous = ''
if current then
  local held = cjson.decode(current)
  if held.p ~= ARGV[1] then return {'taken', current, ''} end
  if held.s == ARGV[2] then return {'held', current, ''} end
  how = 'over'
  previous = held.s
end
local generation = redis.call('INCR', KEYS[2])
local value = cjson.encode({g = generation, i = ARGV[3], p = ARGV[1], s = ARGV[2]})
if how == 'fresh' then
  redis.call('SET', KEYS[1], value, 'NX', 'PX', ARGV[4])
else
  redis.call('SET', KEYS[1], value, 'XX', 'PX', ARGV[4])
end
if ARGV[6] == '1' then redis.call('SADD', KEYS[3], KEYS[1]) end
redis.call('PUBLISH', ARGV[5], KEYS[1])
return {how, value, previous}
"#;

const RENEW: &str = r#"
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local held = cjson.decode(current)
if held.g ~= tonumber(ARGV[1]) or held.s ~= ARGV[2] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#;

const RELEASE: &str = r#"
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local held = cjson.decode(current)
if held.g ~= tonumber(ARGV[1]) or held.s ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], KEYS[1])
redis.call('PUBLISH', ARGV[3], KEYS[1])
return 1
"#;

const REASSERT: &str = r#"
local current = redis.call('GET', KEYS[1])
if current then
  local held = cjson.decode(current)
  if held.g ~= tonumber(ARGV[2]) or held.s ~= ARGV[3] then return 0 end
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return 1
end
redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[4])
local counter = tonumber(redis.call('GET', KEYS[2]) or '0')
if counter < tonumber(ARGV[2]) then redis.call('SET', KEYS[2], ARGV[2]) end
if ARGV[6] == '1' then redis.call('SADD', KEYS[3], KEYS[1]) end
redis.call('PUBLISH', ARGV[5], KEYS[1])
return 1
"#;

const PORTS: &str = r#"
local listed = {}
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local value = redis.call('GET', key)
  if value then
    table.insert(listed, key)
    table.insert(listed, value)
  else
    redis.call('SREM', KEYS[1], key)
  end
end
return listed
"#;

const INSTANCES: &str = r#"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local listed = {}
for _, name in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local addr = redis.call('GET', ARGV[2] .. name)
  if addr then
    table.insert(listed, name)
    table.insert(listed, addr)
  end
end
return listed
"#;

/// The scripts, hashed once (`EVALSHA`, loaded again when Redis has forgotten them).
struct Scripts {
    claim: Script,
    renew: Script,
    release: Script,
    reassert: Script,
    ports: Script,
    instances: Script,
}

/// Leases in Redis, shared by every instance of a cluster.
pub struct RedisRegistry {
    connection: ConnectionManager,
    keys: Keys,
    instance: Arc<str>,
    ttl: Duration,
    ttl_ms: u64,
    timeout: Duration,
    scripts: Scripts,
    cache: Arc<LookupCache>,
    health: Arc<Health>,
    announcement: Arc<Announcement>,
    /// Peer addresses looked up lately, by instance, with when.
    peers: std::sync::Mutex<std::collections::HashMap<String, (String, Instant)>>,
    cache_ttl: Duration,
    /// Notified when an event names a port lease.
    ports_changed: Arc<Notify>,
    /// Ends the watch task when the registry goes.
    _watch: DropGuard,
}

impl std::fmt::Debug for RedisRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRegistry")
            .field("instance", &self.instance)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl RedisRegistry {
    /// A registry on the Redis `settings` names. It connects lazily and keeps reconnecting,
    /// so a server starts while Redis is still coming up (claims are refused, and
    /// [`Registry::unavailable`] says why, until it answers). Must run inside a Tokio runtime:
    /// it starts the task that watches Redis and keeps the event subscription.
    pub fn connect(settings: &RedisSettings) -> Result<Self, RedisSetupError> {
        if settings.lease_ttl < Duration::from_secs(1) {
            return Err(RedisSetupError::TtlTooShort(settings.lease_ttl));
        }
        let client = crate::tls::open(&settings.url, &settings.tls)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(settings.timeout))
            .set_connection_timeout(Some(settings.timeout))
            .set_max_delay(Duration::from_secs(1));
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| crate::tls::OpenError::Url(e.to_string()))?;
        let keys = Keys::new(&settings.prefix);
        let cache = Arc::new(LookupCache::new(settings.cache_ttl));
        let health = Arc::new(Health::new());
        let cancel = CancellationToken::new();
        let announcement = Arc::new(Announcement::default());
        let ttl_ms = u64::try_from(settings.lease_ttl.as_millis()).unwrap_or(u64::MAX);
        let ports_changed = Arc::new(Notify::new());
        let watch = Watch {
            ports_changed: ports_changed.clone(),
            keys: keys.clone(),
            announcement: announcement.clone(),
            instance_key: keys.instance(&settings.instance),
            instance: settings.instance.clone(),
            ttl_ms,
            client,
            connection: connection.clone(),
            channel: keys.events(),
            cache: cache.clone(),
            health: health.clone(),
            timeout: settings.timeout,
            cancel: cancel.clone(),
        };
        tokio::spawn(watch.run());
        Ok(Self {
            connection,
            keys,
            instance: settings.instance.as_str().into(),
            ttl: settings.lease_ttl,
            ttl_ms,
            timeout: settings.timeout,
            scripts: Scripts {
                claim: Script::new(CLAIM),
                renew: Script::new(RENEW),
                release: Script::new(RELEASE),
                reassert: Script::new(REASSERT),
                ports: Script::new(PORTS),
                instances: Script::new(INSTANCES),
            },
            cache,
            health,
            announcement,
            peers: std::sync::Mutex::default(),
            cache_ttl: settings.cache_ttl,
            ports_changed,
            _watch: cancel.drop_guard(),
        })
    }

    /// Runs one Redis call under the deadline, recording whether Redis answered.
    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RegistryError> {
        let answer = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        };
        match answer {
            Ok(value) => {
                self.health.answered();
                Ok(value)
            }
            Err(reason) => {
                self.health.failed(&reason);
                Err(RegistryError::Backend(reason))
            }
        }
    }

    fn parse(stored: &str) -> Result<Record, RegistryError> {
        Record::parse(stored).map_err(|e| RegistryError::Backend(e.to_string()))
    }
}

/// `1` for a port key (the scripts list it in the port set), `0` for a name.
fn port_flag(key: &LeaseKey) -> &'static str {
    if key.is_port() { "1" } else { "0" }
}

#[async_trait]
impl Registry for RedisRegistry {
    async fn claim(&self, key: &LeaseKey, owner: &Owner) -> Result<Claimed, RegistryError> {
        let lease_key = self.keys.lease(key);
        let mut invocation = self.scripts.claim.prepare_invoke();
        invocation
            .key(&lease_key)
            .key(self.keys.generation())
            .key(self.keys.ports())
            .arg(&*owner.principal)
            .arg(&*owner.session)
            .arg(&*self.instance)
            .arg(self.ttl_ms)
            .arg(self.keys.events())
            .arg(port_flag(key));
        let mut connection = self.connection.clone();
        let (how, stored, previous): (String, String, String) =
            self.call(invocation.invoke_async(&mut connection)).await?;
        self.cache.invalidate(&lease_key);
        let lease = Self::parse(&stored)?.into_lease(key.clone());
        let claim = match how.as_str() {
            "fresh" => Claim::Fresh,
            "held" => Claim::AlreadyHeld,
            "over" => Claim::TakenOver {
                previous_session: previous,
            },
            "taken" => return Err(RegistryError::Taken),
            other => {
                return Err(RegistryError::Backend(format!(
                    "unexpected claim answer {other:?}"
                )));
            }
        };
        Ok(Claimed { lease, claim })
    }

    async fn renew(&self, lease: &Lease) -> Result<(), RegistryError> {
        let mut invocation = self.scripts.renew.prepare_invoke();
        invocation
            .key(self.keys.lease(&lease.key))
            .arg(lease.generation)
            .arg(&*lease.owner.session)
            .arg(self.ttl_ms);
        let mut connection = self.connection.clone();
        let renewed: i64 = self.call(invocation.invoke_async(&mut connection)).await?;
        if renewed == 1 {
            Ok(())
        } else {
            Err(RegistryError::Lost)
        }
    }

    async fn release(&self, lease: &Lease) -> Result<bool, RegistryError> {
        let lease_key = self.keys.lease(&lease.key);
        let mut invocation = self.scripts.release.prepare_invoke();
        invocation
            .key(&lease_key)
            .key(self.keys.ports())
            .arg(lease.generation)
            .arg(&*lease.owner.session)
            .arg(self.keys.events());
        let mut connection = self.connection.clone();
        let released: i64 = self.call(invocation.invoke_async(&mut connection)).await?;
        self.cache.invalidate(&lease_key);
        Ok(released == 1)
    }

    async fn reassert(&self, lease: &Lease) -> Result<(), RegistryError> {
        let lease_key = self.keys.lease(&lease.key);
        let mut invocation = self.scripts.reassert.prepare_invoke();
        invocation
            .key(&lease_key)
            .key(self.keys.generation())
            .key(self.keys.ports())
            .arg(Record::of(lease).encode())
            .arg(lease.generation)
            .arg(&*lease.owner.session)
            .arg(self.ttl_ms)
            .arg(self.keys.events())
            .arg(port_flag(&lease.key));
        let mut connection = self.connection.clone();
        let held: i64 = self.call(invocation.invoke_async(&mut connection)).await?;
        self.cache.invalidate(&lease_key);
        if held == 1 {
            Ok(())
        } else {
            Err(RegistryError::Lost)
        }
    }

    async fn lookup(&self, key: &LeaseKey) -> Result<Option<Lease>, RegistryError> {
        let lease_key = self.keys.lease(key);
        if let Some(cached) = self.cache.get(&lease_key, Instant::now()) {
            return Ok(cached);
        }
        let ticket = self.cache.ticket();
        let mut connection = self.connection.clone();
        let stored: Option<String> = self
            .call(
                redis::cmd("GET")
                    .arg(&lease_key)
                    .query_async(&mut connection),
            )
            .await?;
        let lease = match stored {
            Some(stored) => Some(Self::parse(&stored)?.into_lease(key.clone())),
            None => None,
        };
        self.cache
            .put(&lease_key, lease.clone(), ticket, Instant::now());
        Ok(lease)
    }

    fn ttl(&self) -> Option<Duration> {
        Some(self.ttl)
    }

    fn unavailable(&self) -> Option<String> {
        self.health
            .problem()
            .map(|reason| format!("the cluster's Redis does not answer: {reason}"))
    }

    fn forget(&self, key: &LeaseKey) {
        self.cache.invalidate(&self.keys.lease(key));
    }

    fn announce(&self, peer_addr: &str) {
        self.announcement.set(peer_addr);
    }

    async fn peer_addr(&self, instance: &str) -> Result<Option<String>, RegistryError> {
        let now = Instant::now();
        let cached = self
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(instance)
            .filter(|(_, at)| now.saturating_duration_since(*at) < self.cache_ttl)
            .map(|(addr, _)| addr.clone());
        if let Some(addr) = cached {
            return Ok(Some(addr));
        }
        let mut connection = self.connection.clone();
        let command = redis::cmd("GET").arg(self.keys.instance(instance)).clone();
        let addr: Option<String> = self.call(command.query_async(&mut connection)).await?;
        // A miss is not remembered: the instance may be announcing itself this moment.
        if let Some(addr) = &addr {
            let mut peers = self
                .peers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if peers.len() >= crate::cache::MAX_ENTRIES {
                peers.clear();
            }
            peers.insert(instance.to_string(), (addr.clone(), now));
        }
        Ok(addr)
    }

    async fn port_leases(&self) -> Result<Vec<Lease>, RegistryError> {
        let mut invocation = self.scripts.ports.prepare_invoke();
        invocation.key(self.keys.ports());
        let mut connection = self.connection.clone();
        let listed: Vec<String> = self.call(invocation.invoke_async(&mut connection)).await?;
        let mut leases = Vec::with_capacity(listed.len() / 2);
        for pair in listed.chunks_exact(2) {
            let Some(key) = self.keys.leased(&pair[0]) else {
                continue;
            };
            leases.push(Self::parse(&pair[1])?.into_lease(key));
        }
        Ok(leases)
    }

    fn port_changes(&self) -> Option<Arc<Notify>> {
        Some(self.ports_changed.clone())
    }

    fn silent_for(&self) -> Option<Duration> {
        self.health.silent_for()
    }

    async fn instances(&self) -> Result<Vec<(String, String)>, RegistryError> {
        let mut invocation = self.scripts.instances.prepare_invoke();
        // Announcements that lapsed a minute ago are pruned from the set.
        let pruned = crate::watch::unix_millis().saturating_sub(60_000);
        invocation
            .key(self.keys.instances())
            .arg(pruned)
            .arg(self.keys.instance(""));
        let mut connection = self.connection.clone();
        let listed: Vec<String> = self.call(invocation.invoke_async(&mut connection)).await?;
        Ok(listed
            .chunks_exact(2)
            .map(|pair| (pair[0].clone(), pair[1].clone()))
            .collect())
    }
}
