//! Who owns which tunnel name, and where visitors for a name are routed.
//!
//! [`Registry`] is the ownership layer: names are claimed by a principal's session, taken over
//! by the same principal, refused to anyone else. It is a trait so a clustered backend can hold
//! the same claims for many instances; [`MemoryRegistry`] is the single-instance default.
//! [`Routes`] is the local routing table the edges read on every request: a plain map from
//! name to the live [`Tunnel`](crate::tunnel::Tunnel), kept in step by the session code.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;

use crate::tunnel::Tunnel;

/// Who holds a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The authenticated identity behind the session (never the token itself).
    pub principal: String,
    /// The session currently serving the name.
    pub session: String,
}

/// The result of a successful claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Nobody held the name.
    Fresh,
    /// The same principal held it through another session, which must now be closed.
    TakenOver {
        /// The session that held the name before.
        previous_session: String,
    },
    /// This very session already held it.
    AlreadyHeld,
}

/// Why a registry call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Another principal holds the name.
    #[error("the name is held by another client")]
    Taken,
    /// The backend could not be reached or answered nonsense.
    #[error("registry backend failed: {0}")]
    Backend(String),
}

/// Name ownership, shared by every instance that serves the same domain.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Claims `name` for `owner`: granted when free or held by the same principal.
    async fn claim(&self, name: &str, owner: &Owner) -> Result<Claim, RegistryError>;
    /// Releases `name` if `session` holds it; returns whether it did.
    async fn release(&self, name: &str, session: &str) -> Result<bool, RegistryError>;
    /// The current owner of `name`.
    async fn owner(&self, name: &str) -> Result<Option<Owner>, RegistryError>;
}

/// In-process registry: the default for a single server.
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    names: Mutex<HashMap<String, Owner>>,
}

impl MemoryRegistry {
    fn names(&self) -> std::sync::MutexGuard<'_, HashMap<String, Owner>> {
        // A panic while holding this lock cannot leave the map half-updated: every critical
        // section is a single insert, remove or lookup.
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn claim(&self, name: &str, owner: &Owner) -> Result<Claim, RegistryError> {
        let mut names = self.names();
        let claim = match names.get(name) {
            None => Claim::Fresh,
            Some(held) if held == owner => return Ok(Claim::AlreadyHeld),
            Some(held) if held.principal == owner.principal => Claim::TakenOver {
                previous_session: held.session.clone(),
            },
            Some(_) => return Err(RegistryError::Taken),
        };
        names.insert(name.to_string(), owner.clone());
        Ok(claim)
    }

    async fn release(&self, name: &str, session: &str) -> Result<bool, RegistryError> {
        let mut names = self.names();
        if names.get(name).is_some_and(|o| o.session == session) {
            names.remove(name);
            return Ok(true);
        }
        Ok(false)
    }

    async fn owner(&self, name: &str) -> Result<Option<Owner>, RegistryError> {
        Ok(self.names().get(name).cloned())
    }
}

/// The local routing table: tunnel name → live tunnel.
#[derive(Default)]
pub(crate) struct Routes {
    by_name: RwLock<HashMap<String, Arc<Tunnel>>>,
}

impl Routes {
    pub(crate) fn get(&self, name: &str) -> Option<Arc<Tunnel>> {
        self.read().get(name).cloned()
    }

    /// Points `name` at `tunnel`, replacing whatever was there (takeover).
    pub(crate) fn insert(&self, tunnel: Arc<Tunnel>) {
        let name = tunnel.info.name.clone();
        self.by_name
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, tunnel);
    }

    /// Removes `name` only if it still points at a tunnel of `session`.
    pub(crate) fn remove(&self, name: &str, session: &str) -> Option<Arc<Tunnel>> {
        let mut map = self.by_name.write().unwrap_or_else(|p| p.into_inner());
        if map.get(name).is_some_and(|t| t.session_id == session) {
            return map.remove(name);
        }
        None
    }

    pub(crate) fn all(&self) -> Vec<Arc<Tunnel>> {
        self.read().values().cloned().collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Tunnel>>> {
        self.by_name.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// The behaviour every [`Registry`] implementation must show; run against each backend.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;

    fn owner(principal: &str, session: &str) -> Owner {
        Owner {
            principal: principal.into(),
            session: session.into(),
        }
    }

    pub(crate) async fn run(registry: &dyn Registry) {
        let alice1 = owner("alice", "s1");
        let alice2 = owner("alice", "s2");
        let bob = owner("bob", "s3");
        assert_eq!(registry.owner("demo").await, Ok(None));
        assert_eq!(registry.claim("demo", &alice1).await, Ok(Claim::Fresh));
        assert_eq!(
            registry.claim("demo", &alice1).await,
            Ok(Claim::AlreadyHeld)
        );
        assert_eq!(
            registry.claim("demo", &bob).await,
            Err(RegistryError::Taken)
        );
        assert_eq!(
            registry.claim("demo", &alice2).await,
            Ok(Claim::TakenOver {
                previous_session: "s1".into()
            })
        );
        assert_eq!(
            registry.release("demo", "s1").await,
            Ok(false),
            "stale session"
        );
        assert_eq!(registry.owner("demo").await, Ok(Some(alice2)));
        assert_eq!(registry.release("demo", "s2").await, Ok(true));
        assert_eq!(registry.claim("demo", &bob).await, Ok(Claim::Fresh));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_registry_conforms() {
        conformance::run(&MemoryRegistry::default()).await;
    }
}
