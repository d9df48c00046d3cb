//! The local routing table: tunnel name → live tunnel. The edges read it on every request;
//! registration writes it. A takeover replaces the entry; removal only removes an entry that
//! still belongs to the session removing it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::Tunnel;

/// Name → live tunnel.
#[derive(Default)]
pub(crate) struct Routes {
    by_name: RwLock<HashMap<String, Arc<Tunnel>>>,
}

impl Routes {
    /// The tunnel serving `name`.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<Tunnel>> {
        self.read().get(name).cloned()
    }

    /// Points `name` at `tunnel`, replacing whatever was there (takeover).
    pub(crate) fn insert(&self, tunnel: Arc<Tunnel>) {
        let name = tunnel.info.name.clone();
        self.write().insert(name, tunnel);
    }

    /// Removes `name` only if it still points at a tunnel of `session`.
    pub(crate) fn remove(&self, name: &str, session: &str) -> Option<Arc<Tunnel>> {
        let mut map = self.write();
        if map.get(name).is_some_and(|t| &*t.session_id == session) {
            return map.remove(name);
        }
        None
    }

    /// The live tunnel holding the lease on `key` (a public port), if any. A scan of the
    /// table: asked only for visitors another instance of a cluster forwards here.
    pub(crate) fn holding(&self, key: &showoff_core::LeaseKey) -> Option<Arc<Tunnel>> {
        self.read()
            .values()
            .find(|tunnel| tunnel.leases.iter().any(|lease| lease.key == *key))
            .cloned()
    }

    /// Every live tunnel.
    pub(crate) fn all(&self) -> Vec<Arc<Tunnel>> {
        self.read().values().cloned().collect()
    }

    /// Tunnels `principal` holds now, except those named in `except` (a reconnect takes them
    /// over).
    pub(crate) fn count_of(&self, principal: &str, except: &[String]) -> usize {
        self.read()
            .values()
            .filter(|t| &*t.principal == principal && !except.contains(&t.info.name))
            .count()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Tunnel>>> {
        // Every critical section is one map operation: a panic cannot leave it half-done.
        self.by_name.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Tunnel>>> {
        self.by_name.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tunnel::tests::tunnel;

    #[test]
    fn removal_is_fenced_by_session_and_takeover_replaces() {
        let routes = Routes::default();
        routes.insert(Arc::new(tunnel("demo", "s1", "alice")));
        routes.insert(Arc::new(tunnel("other", "s1", "alice")));
        routes.insert(Arc::new(tunnel("demo", "s2", "alice")));
        assert_eq!(
            routes.get("demo").map(|t| t.session_id.to_string()),
            Some("s2".into())
        );
        assert!(routes.remove("demo", "s1").is_none(), "stale session");
        assert_eq!(routes.count_of("alice", &[]), 2);
        assert_eq!(routes.count_of("alice", &["demo".into()]), 1);
        assert!(routes.remove("demo", "s2").is_some());
        assert!(routes.get("demo").is_none());
        assert_eq!(routes.all().len(), 1);
    }

    #[test]
    fn the_tunnel_holding_a_port_is_found_by_its_lease() {
        let routes = Routes::default();
        let mut tcp = tunnel("t1", "s1", "alice");
        tcp.leases.push(showoff_core::Lease {
            key: showoff_core::LeaseKey::Port(30_001),
            owner: showoff_core::Owner {
                principal: "alice".into(),
                session: "s1".into(),
            },
            instance: "node-a".into(),
            generation: 7,
        });
        routes.insert(Arc::new(tcp));
        routes.insert(Arc::new(tunnel("web", "s1", "alice")));
        let found = routes.holding(&showoff_core::LeaseKey::Port(30_001));
        assert_eq!(found.map(|t| t.info.name.clone()), Some("t1".into()));
        assert!(
            routes
                .holding(&showoff_core::LeaseKey::UdpPort(30_001))
                .is_none()
        );
    }
}
