//! Live sessions: one [`Session`] per authenticated client connection, in a table the control
//! layer fills and the admin API and revocations read.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::Tunnel;
use crate::auth::Principal;

/// One authenticated client.
pub(crate) struct Session {
    /// Shared with its tunnels, leases and dial-back opener, not copied into each.
    pub(crate) id: Arc<str>,
    pub(crate) principal: Principal,
    /// `principal.id`, shared the same way.
    pub(crate) principal_id: Arc<str>,
    /// The client's address.
    pub(crate) peer: SocketAddr,
    /// When the session was set up.
    pub(crate) started: Instant,
    pub(crate) tunnels: Mutex<Vec<Arc<Tunnel>>>,
    /// Cancelled to close the session (takeover, revocation, shutdown).
    pub(crate) cancel: CancellationToken,
    /// Set when another session of the same principal took a name over: the name, for the
    /// `replaced` refusal the client is sent before the session closes.
    replaced: std::sync::OnceLock<String>,
    /// Set when the client must go to another instance: why, for its `GoAway`.
    sent_away: std::sync::OnceLock<String>,
    /// Set when the session's principal was revoked: its established streams end too.
    revoked: std::sync::atomic::AtomicBool,
    /// How the session's streams travel.
    pub(crate) transport: showoff_proto::TransportKind,
}

impl Session {
    /// A session of `principal` from `peer`, closed by `cancel`.
    pub(crate) fn new(
        id: Arc<str>,
        principal: Principal,
        peer: SocketAddr,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            id,
            principal_id: principal.id.as_str().into(),
            principal,
            peer,
            started: Instant::now(),
            tunnels: Mutex::new(Vec::new()),
            cancel,
            replaced: std::sync::OnceLock::new(),
            sent_away: std::sync::OnceLock::new(),
            revoked: Default::default(),
            transport: showoff_proto::TransportKind::Tcp,
        }
    }

    /// The same session, on `transport`.
    pub(crate) fn on(mut self, transport: showoff_proto::TransportKind) -> Self {
        self.transport = transport;
        self
    }

    /// The name another session took over, if this one was replaced.
    pub(crate) fn replaced_for(&self) -> Option<&str> {
        self.replaced.get().map(String::as_str)
    }

    /// Why the session's client was sent to another instance, if it was.
    pub(crate) fn sent_away_for(&self) -> Option<&str> {
        self.sent_away.get().map(String::as_str)
    }

    /// Whether the session was closed because its principal was revoked.
    pub(crate) fn revoked(&self) -> bool {
        self.revoked.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The session's tunnels.
    pub(crate) fn tunnels(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Tunnel>>> {
        self.tunnels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Names of the session's tunnels, for the admin API and audit events.
    pub(crate) fn tunnel_names(&self) -> Vec<String> {
        self.tunnels().iter().map(|t| t.info.name.clone()).collect()
    }

    /// Removes the tunnel `name` from the session; the caller releases it.
    pub(crate) fn take_tunnel(&self, name: &str) -> Option<Arc<Tunnel>> {
        let mut tunnels = self.tunnels();
        let index = tunnels.iter().position(|t| t.info.name == name)?;
        Some(tunnels.swap_remove(index))
    }
}

/// Every live session, by id.
#[derive(Default)]
pub(crate) struct Sessions {
    by_id: Mutex<HashMap<Arc<str>, Arc<Session>>>,
}

impl Sessions {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<Session>>> {
        // Every critical section is one map operation: a panic cannot leave it half-done.
        self.by_id.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sessions connected now.
    pub(crate) fn count(&self) -> usize {
        self.map().len()
    }

    pub(crate) fn add(&self, session: Arc<Session>) {
        self.map().insert(session.id.clone(), session);
    }

    pub(crate) fn remove(&self, id: &str) {
        self.map().remove(id);
    }

    /// Every live session, oldest first.
    pub(crate) fn all(&self) -> Vec<Arc<Session>> {
        let mut sessions: Vec<_> = self.map().values().cloned().collect();
        sessions.sort_by_key(|s| s.started);
        sessions
    }

    /// Ends a session whose `name` another session of its principal took over: its task sees
    /// the cancellation, tells its client it was replaced, and tears it down.
    pub(crate) fn replace(&self, id: &str, name: &str) {
        if let Some(session) = self.map().get(id) {
            let _ = session.replaced.set(name.to_string());
            session.cancel.cancel();
        }
    }

    /// Ends every session with a `GoAway` saying `why`: their clients reconnect, to another
    /// instance of the cluster. Returns how many.
    pub(crate) fn send_away(&self, why: &str) -> usize {
        let map = self.map();
        for session in map.values() {
            let _ = session.sent_away.set(why.to_string());
            session.cancel.cancel();
        }
        map.len()
    }

    /// Closes every session of `principal` (revoked token); returns how many.
    pub(crate) fn close_principal(&self, principal: &str) -> usize {
        let map = self.map();
        let of_principal = map.values().filter(|s| s.principal.id == principal);
        let mut closed = 0;
        for session in of_principal {
            session
                .revoked
                .store(true, std::sync::atomic::Ordering::Release);
            session.cancel.cancel();
            closed += 1;
        }
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str, principal: &str) -> Arc<Session> {
        let peer = "127.0.0.1:1".parse().expect("addr");
        let principal = Principal::unrestricted(principal);
        Arc::new(Session::new(
            id.into(),
            principal,
            peer,
            CancellationToken::new(),
        ))
    }

    #[test]
    fn closing_a_principal_cancels_only_its_sessions() {
        let sessions = Sessions::default();
        let (a, b, c) = (
            session("1", "alice"),
            session("2", "alice"),
            session("3", "bob"),
        );
        for s in [&a, &b, &c] {
            sessions.add(s.clone());
        }
        assert_eq!(sessions.close_principal("alice"), 2);
        assert!(a.cancel.is_cancelled() && b.cancel.is_cancelled());
        assert!(!c.cancel.is_cancelled());
        sessions.replace("3", "demo");
        assert!(c.cancel.is_cancelled());
        assert_eq!(c.replaced_for(), Some("demo"));
        assert_eq!(a.replaced_for(), None, "revoked, not replaced");
        sessions.remove("1");
        assert_eq!(sessions.count(), 2);
        assert_eq!(sessions.all().len(), 2);
    }

    #[test]
    fn a_tunnel_is_taken_out_once() {
        let s = session("1", "alice");
        let t = crate::state::tunnel::tests::tunnel("demo", "1", "alice");
        s.tunnels().push(Arc::new(t));
        assert_eq!(s.tunnel_names(), vec!["demo".to_string()]);
        assert!(s.take_tunnel("demo").is_some());
        assert!(s.take_tunnel("demo").is_none());
    }
}
