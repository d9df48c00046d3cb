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
}
