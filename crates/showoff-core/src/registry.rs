//! Who owns which tunnel name and public port: fenced leases behind one trait.
//!
//! A [`Lease`] names its key (a name or a port), its [`Owner`] (principal and session), the
//! instance that granted it and a **generation** that changes on every grant. Renewing and
//! releasing compare the generation, so a session that lost its lease (taken over, expired) can
//! never renew or free the new holder's. Names are taken over by the same principal (a
//! reconnecting laptop gets its URL back at once) and refused to anyone else.
//!
//! [`MemoryRegistry`] is the single-instance default; a clustered backend implements the same
//! trait and proves it with [`conformance::run`] (feature `conformance`).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

/// What a lease is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LeaseKey {
    /// A tunnel name (`demo` of `demo.<domain>`).
    Name(String),
    /// A public TCP port.
    Port(u16),
    /// A public UDP port (a namespace of its own: TCP 20001 and UDP 20001 are two ports).
    UdpPort(u16),
}

impl fmt::Display for LeaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(name) => write!(f, "name:{name}"),
            Self::Port(port) => write!(f, "port:{port}"),
            Self::UdpPort(port) => write!(f, "udp-port:{port}"),
        }
    }
}

/// Who holds a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The authenticated identity behind the session (never the token itself); shared with
    /// the session, not copied per lease.
    pub principal: Arc<str>,
    /// The session currently serving the key.
    pub session: Arc<str>,
}

/// A granted lease; keep it to renew or release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// What is leased.
    pub key: LeaseKey,
    /// Who holds it.
    pub owner: Owner,
    /// The instance that granted it (clusters forward visitors there); shared, not copied,
    /// across the leases of one instance.
    pub instance: Arc<str>,
    /// Changes on every grant of this key; renew and release must show the current one.
    pub generation: u64,
}

/// How a claim was granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Nobody held the key.
    Fresh,
    /// The same principal held it through another session, which must now be closed.
    TakenOver {
        /// The session that held the key before.
        previous_session: String,
    },
    /// This very session already held it (the lease is unchanged).
    AlreadyHeld,
}

/// A successful claim: the lease and how it was granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The lease now held.
    pub lease: Lease,
    /// Fresh, taken over or already held.
    pub claim: Claim,
}

/// Why a registry call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Another principal holds the key.
    #[error("held by another client")]
    Taken,
    /// The lease is no longer this holder's (taken over, expired, released).
    #[error("the lease was lost")]
    Lost,
    /// The backend could not be reached or answered nonsense; retrying may help.
    #[error("registry backend failed: {0}")]
    Backend(String),
}

/// Leases on names and ports, shared by every instance that serves the same domain.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Claims `key` for `owner`: granted when free, expired, or held by the same principal.
    async fn claim(&self, key: &LeaseKey, owner: &Owner) -> Result<Claimed, RegistryError>;
    /// Extends `lease` by the registry's TTL; [`RegistryError::Lost`] when it is no longer held.
    async fn renew(&self, lease: &Lease) -> Result<(), RegistryError>;
    /// Frees `lease` if it is still the current one; returns whether it was.
    async fn release(&self, lease: &Lease) -> Result<bool, RegistryError>;
    /// Puts `lease` back, unchanged, when its key has fallen free (it expired while the
    /// backend could not be reached, or the backend lost its data), and extends it when it is
    /// still current; [`RegistryError::Lost`] when anyone else holds the key now. Two owners
    /// never result: the key is only taken back when nobody holds it.
    async fn reassert(&self, lease: &Lease) -> Result<(), RegistryError>;
    /// The current lease on `key`, if any.
    async fn lookup(&self, key: &LeaseKey) -> Result<Option<Lease>, RegistryError>;
    /// How long a lease lives without renewal; `None` when leases last until released.
    fn ttl(&self) -> Option<Duration>;
    /// Why the backend cannot serve claims now (`/readyz` says it); `None` while it can.
    fn unavailable(&self) -> Option<String> {
        None
    }
    /// Drops whatever this instance remembers of `key`, so the next lookup asks the backend
    /// (a peer said it no longer holds the key).
    fn forget(&self, key: &LeaseKey) {
        let _ = key;
    }
    /// Tells the cluster where this instance takes visitors forwarded by the others (its peer
    /// listener, `host:port`), from now on and for as long as it runs.
    fn announce(&self, peer_addr: &str) {
        let _ = peer_addr;
    }
    /// Where `instance` takes visitors forwarded by the other instances of its cluster (its
    /// peer listener, `host:port`), when it announced one; a single server has no peers.
    async fn peer_addr(&self, instance: &str) -> Result<Option<String>, RegistryError> {
        let _ = instance;
        Ok(None)
    }
    /// Every live lease on a TCP or UDP port, whichever instance granted it: each instance of
    /// a cluster listens on the ports the others hold, so one L4 balancer in front of all of
    /// them works. A single server's own ports need no such list.
    async fn port_leases(&self) -> Result<Vec<Lease>, RegistryError> {
        Ok(Vec::new())
    }
    /// Notified whenever a port lease may have changed anywhere in the cluster (then
    /// [`port_leases`](Self::port_leases) tells what holds now); `None` when no other
    /// instance can change one.
    fn port_changes(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }
    /// How long the backend has not answered, while it does not; `None` while it does (or
    /// for a backend that cannot fail). An instance that is cut off from a backend its peers
    /// still reach must stop serving before its leases lapse.
    fn silent_for(&self) -> Option<Duration> {
        None
    }
    /// The instances of the cluster that announced a peer listener lately, with where it is
    /// (this one included); empty for a single server.
    async fn instances(&self) -> Result<Vec<(String, String)>, RegistryError> {
        Ok(Vec::new())
    }
}

impl LeaseKey {
    /// Parses what [`Display`](fmt::Display) writes (`name:demo`, `port:20001`,
    /// `udp-port:53`); `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let (kind, rest) = text.split_once(':')?;
        match kind {
            "name" if !rest.is_empty() => Some(Self::Name(rest.to_string())),
            "port" => rest.parse().ok().map(Self::Port),
            "udp-port" => rest.parse().ok().map(Self::UdpPort),
            _ => None,
        }
    }

    /// Whether the key is a TCP or UDP port.
    pub fn is_port(&self) -> bool {
        !matches!(self, Self::Name(_))
    }
}

/// The instance name of a [`MemoryRegistry`] built with `default()`.
pub const LOCAL_INSTANCE: &str = "local";

/// In-process leases: the default for a single server.
#[derive(Debug)]
pub struct MemoryRegistry {
    instance: Arc<str>,
    ttl: Option<Duration>,
    leases: Mutex<HashMap<LeaseKey, Held>>,
    generations: AtomicU64,
}

#[derive(Debug, Clone)]
struct Held {
    lease: Lease,
    /// `None`: until released.
    expires: Option<Instant>,
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new(LOCAL_INSTANCE, None)
    }
}

impl MemoryRegistry {
    /// A registry for `instance` whose leases expire `ttl` after their last renewal (`None`:
    /// never; a single server releases its leases itself).
    pub fn new(instance: &str, ttl: Option<Duration>) -> Self {
        Self {
            instance: instance.into(),
            ttl,
            leases: Mutex::new(HashMap::new()),
            generations: AtomicU64::new(0),
        }
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<LeaseKey, Held>> {
        // Every critical section is a single lookup and insert or remove: a panic cannot leave
        // the map half-updated.
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expiry(&self) -> Option<Instant> {
        self.ttl.map(|ttl| Instant::now() + ttl)
    }

    /// The live lease on `key` in `leases`, forgetting an expired one.
    fn live<'a>(leases: &'a mut HashMap<LeaseKey, Held>, key: &LeaseKey) -> Option<&'a Held> {
        let expired = leases
            .get(key)
            .is_some_and(|h| h.expires.is_some_and(|at| at <= Instant::now()));
        if expired {
            leases.remove(key);
        }
        leases.get(key)
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn claim(&self, key: &LeaseKey, owner: &Owner) -> Result<Claimed, RegistryError> {
        let mut leases = self.leases();
        let claim = match Self::live(&mut leases, key) {
            None => Claim::Fresh,
            Some(held) if held.lease.owner == *owner => {
                let lease = held.lease.clone();
                let claim = Claim::AlreadyHeld;
                return Ok(Claimed { lease, claim });
            }
            Some(held) if held.lease.owner.principal == owner.principal => Claim::TakenOver {
                previous_session: held.lease.owner.session.to_string(),
            },
            Some(_) => return Err(RegistryError::Taken),
        };
        let lease = Lease {
            key: key.clone(),
            owner: owner.clone(),
            instance: self.instance.clone(),
            generation: self.generations.fetch_add(1, Ordering::Relaxed) + 1,
        };
        let held = Held {
            lease: lease.clone(),
            expires: self.expiry(),
        };
        leases.insert(key.clone(), held);
        Ok(Claimed { lease, claim })
    }

    async fn renew(&self, lease: &Lease) -> Result<(), RegistryError> {
        let expires = self.expiry();
        let mut leases = self.leases();
        match leases.get_mut(&lease.key) {
            Some(held)
                if held.lease.generation == lease.generation
                    && held.expires.is_none_or(|at| at > Instant::now()) =>
            {
                held.expires = expires;
                Ok(())
            }
            _ => Err(RegistryError::Lost),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<bool, RegistryError> {
        let mut leases = self.leases();
        let current = Self::live(&mut leases, &lease.key)
            .is_some_and(|held| held.lease.generation == lease.generation);
        if current {
            leases.remove(&lease.key);
        }
        Ok(current)
    }

    async fn reassert(&self, lease: &Lease) -> Result<(), RegistryError> {
        let expires = self.expiry();
        let mut leases = self.leases();
        match Self::live(&mut leases, &lease.key) {
            Some(held) if held.lease.generation != lease.generation => Err(RegistryError::Lost),
            _ => {
                let held = Held {
                    lease: lease.clone(),
                    expires,
                };
                leases.insert(lease.key.clone(), held);
                Ok(())
            }
        }
    }

    async fn lookup(&self, key: &LeaseKey) -> Result<Option<Lease>, RegistryError> {
        let mut leases = self.leases();
        Ok(Self::live(&mut leases, key).map(|held| held.lease.clone()))
    }

    fn ttl(&self) -> Option<Duration> {
        self.ttl
    }

    async fn port_leases(&self) -> Result<Vec<Lease>, RegistryError> {
        let now = Instant::now();
        let leases = self.leases();
        let live = leases
            .values()
            .filter(|held| held.lease.key.is_port())
            .filter(|held| held.expires.is_none_or(|at| at > now));
        Ok(live.map(|held| held.lease.clone()).collect())
    }
}

/// The behaviour every [`Registry`] implementation must show. A backend crate runs
/// [`run`](conformance::run) on a fresh, empty registry and, when its leases expire,
/// [`run_expiry`](conformance::run_expiry) under paused time or with a short TTL.
#[cfg(any(test, feature = "conformance"))]
#[allow(clippy::unwrap_used)]
pub mod conformance {
    use super::*;

    fn owner(principal: &str, session: &str) -> Owner {
        Owner {
            principal: principal.into(),
            session: session.into(),
        }
    }

    /// Claims, takeovers, refusals, fencing and release for names and ports.
    pub async fn run(registry: &dyn Registry) {
        for key in [LeaseKey::Name("demo".into()), LeaseKey::Port(20_001)] {
            run_key(registry, &key).await;
        }
        let a = registry
            .claim(&LeaseKey::Name("a".into()), &owner("alice", "s9"))
            .await
            .unwrap();
        let b = registry
            .claim(&LeaseKey::Name("b".into()), &owner("alice", "s9"))
            .await
            .unwrap();
        assert_ne!(a.lease.generation, b.lease.generation, "generations differ");
        assert_eq!(
            registry.lookup(&LeaseKey::Port(20_002)).await,
            Ok(None),
            "keys are independent"
        );
        run_port_list(registry).await;
    }

    /// The list of port leases holds every live port lease and nothing else.
    async fn run_port_list(registry: &dyn Registry) {
        let udp = LeaseKey::UdpPort(20_003);
        let tcp = LeaseKey::Port(20_003);
        let u = registry.claim(&udp, &owner("dave", "s5")).await.unwrap();
        let t = registry.claim(&tcp, &owner("erin", "s6")).await.unwrap();
        let mut listed = registry.port_leases().await.unwrap();
        listed.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(listed, vec![t.lease.clone(), u.lease.clone()]);
        assert!(registry.release(&t.lease).await.unwrap());
        assert_eq!(registry.port_leases().await.unwrap(), vec![u.lease.clone()]);
        assert!(registry.release(&u.lease).await.unwrap());
        assert_eq!(registry.port_leases().await.unwrap(), vec![]);
    }

    async fn run_key(registry: &dyn Registry, key: &LeaseKey) {
        let (alice1, alice2, bob) = (
            owner("alice", "s1"),
            owner("alice", "s2"),
            owner("bob", "s3"),
        );
        assert_eq!(registry.lookup(key).await, Ok(None), "{key} starts free");
        let first = registry.claim(key, &alice1).await.unwrap();
        assert_eq!(first.claim, Claim::Fresh);
        assert_eq!(first.lease.owner, alice1);
        let again = registry.claim(key, &alice1).await.unwrap();
        assert_eq!(again.claim, Claim::AlreadyHeld);
        assert_eq!(
            again.lease, first.lease,
            "an already-held lease is unchanged"
        );
        assert_eq!(
            registry.claim(key, &bob).await,
            Err(RegistryError::Taken),
            "another principal is refused"
        );
        let taken = registry.claim(key, &alice2).await.unwrap();
        assert_eq!(
            taken.claim,
            Claim::TakenOver {
                previous_session: "s1".into()
            }
        );
        assert_ne!(taken.lease.generation, first.lease.generation, "fenced");
        assert_eq!(registry.renew(&first.lease).await, Err(RegistryError::Lost));
        assert_eq!(
            registry.release(&first.lease).await,
            Ok(false),
            "a stale lease frees nothing"
        );
        assert_eq!(registry.lookup(key).await, Ok(Some(taken.lease.clone())));
        registry.renew(&taken.lease).await.unwrap();
        assert_eq!(registry.release(&taken.lease).await, Ok(true));
        assert_eq!(
            registry.release(&taken.lease).await,
            Ok(false),
            "idempotent"
        );
        assert_eq!(registry.renew(&taken.lease).await, Err(RegistryError::Lost));
        let bobs = registry.claim(key, &bob).await.unwrap();
        assert_eq!(bobs.claim, Claim::Fresh, "free again after release");
        assert!(registry.release(&bobs.lease).await.unwrap());
    }

    /// Leases expire `ttl` after their last renewal; `advance` moves the registry's clock
    /// (tokio's paused time for in-process backends, a real wait for remote ones).
    pub async fn run_expiry<F, Fut>(registry: &dyn Registry, advance: F)
    where
        F: Fn(Duration) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let ttl = registry.ttl().expect("an expiring registry has a TTL");
        let key = LeaseKey::Name("expiring".into());
        let alice = registry.claim(&key, &owner("alice", "s1")).await.unwrap();
        advance(ttl / 2).await;
        registry.renew(&alice.lease).await.unwrap();
        advance(ttl / 2 + ttl / 4).await;
        assert_eq!(
            registry.lookup(&key).await,
            Ok(Some(alice.lease.clone())),
            "a renewed lease outlives its first TTL"
        );
        advance(ttl).await;
        assert_eq!(registry.lookup(&key).await, Ok(None), "expired");
        assert_eq!(registry.renew(&alice.lease).await, Err(RegistryError::Lost));
        let bob = registry.claim(&key, &owner("bob", "s2")).await.unwrap();
        assert_eq!(
            bob.claim,
            Claim::Fresh,
            "an expired lease is free to anyone"
        );
        assert_eq!(registry.release(&alice.lease).await, Ok(false));
        assert_eq!(
            registry.reassert(&alice.lease).await,
            Err(RegistryError::Lost),
            "a lease someone else took is not taken back"
        );
        assert_eq!(registry.lookup(&key).await, Ok(Some(bob.lease.clone())));

        // A lease that fell free while its holder could not renew is put back unchanged, and
        // fenced as before.
        let port = LeaseKey::Port(20_009);
        let carol = registry.claim(&port, &owner("carol", "s3")).await.unwrap();
        advance(ttl + ttl / 4).await;
        assert_eq!(registry.lookup(&port).await, Ok(None), "expired");
        registry.reassert(&carol.lease).await.unwrap();
        assert_eq!(registry.lookup(&port).await, Ok(Some(carol.lease.clone())));
        registry.renew(&carol.lease).await.unwrap();
        registry.reassert(&carol.lease).await.unwrap();
        assert_eq!(
            registry.claim(&port, &owner("dave", "s4")).await,
            Err(RegistryError::Taken),
            "a reasserted lease is held"
        );
        let next = registry.claim(&port, &owner("carol", "s5")).await.unwrap();
        assert!(
            next.lease.generation > carol.lease.generation,
            "generations keep rising past a reasserted lease"
        );
        assert_eq!(
            registry.reassert(&carol.lease).await,
            Err(RegistryError::Lost)
        );
        assert!(registry.release(&next.lease).await.unwrap());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_registry_conforms() {
        conformance::run(&MemoryRegistry::default()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn memory_leases_expire_without_renewal() {
        let registry = MemoryRegistry::new("a", Some(Duration::from_secs(10)));
        conformance::run(&registry).await;
        conformance::run_expiry(&registry, tokio::time::advance).await;
    }

    #[test]
    fn lease_keys_parse_what_they_display() {
        for key in [
            LeaseKey::Name("demo".into()),
            LeaseKey::Port(20_001),
            LeaseKey::UdpPort(53),
        ] {
            assert_eq!(LeaseKey::parse(&key.to_string()), Some(key));
        }
        for junk in ["", "name:", "port:x", "port:70000", "tcp:1", "udp-port"] {
            assert_eq!(LeaseKey::parse(junk), None, "{junk}");
        }
    }

    #[tokio::test]
    async fn leases_name_their_instance() {
        let registry = MemoryRegistry::new("node-1", None);
        let owner = Owner {
            principal: "p".into(),
            session: "s".into(),
        };
        let claimed = registry
            .claim(&LeaseKey::Port(1), &owner)
            .await
            .expect("claim");
        assert_eq!(&*claimed.lease.instance, "node-1");
        assert_eq!(registry.ttl(), None);
        assert_eq!(LeaseKey::Port(1).to_string(), "port:1");
        assert_eq!(LeaseKey::UdpPort(1).to_string(), "udp-port:1");
    }
}
