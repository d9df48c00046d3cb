//! A registered tunnel: what the client asked for, what it was granted (name, URL, port, the
//! leases behind them), how to open streams to it, and visitor bookkeeping. Edges look tunnels
//! up in [`Routes`](super::Routes) and never hold them past a request or connection.
//!
//! An edge that keeps state per tunnel (the HTTP edge's idle upstream connections) keeps it in
//! the tunnel's [`edge_state`](Tunnel::edge_state) slot, created on first use: this layer does
//! not know the edge's types, a TCP tunnel carries no HTTP pool, and the state goes when the
//! tunnel goes.

use std::any::Any;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use showoff_core::{Lease, StreamOpener};
use showoff_proto::{TunnelInfo, TunnelSpec};
use tokio_util::sync::CancellationToken;

use super::access::Access;

/// One live tunnel of one session: what registration decided, and its [`Activity`].
pub(crate) struct Tunnel {
    /// What the client was told (name, public URL, port).
    pub(crate) info: TunnelInfo,
    /// What the client asked for (host header policy, target).
    pub(crate) spec: TunnelSpec,
    /// The principal that owns it.
    pub(crate) principal: Arc<str>,
    /// The session serving it.
    pub(crate) session_id: Arc<str>,
    /// Opens streams to the client.
    pub(crate) opener: Arc<dyn StreamOpener>,
    /// Who may visit (IP lists, basic auth).
    pub(crate) access: Access,
    /// The leases on its name and, for TCP tunnels, its public port.
    pub(crate) leases: Vec<Lease>,
    /// Cancelled when the tunnel closes; its TCP listener and spliced TCP visitors stop.
    pub(crate) closed: CancellationToken,
    /// Visitor bookkeeping, from the moment the tunnel is built.
    pub(crate) activity: Activity,
}

/// When a tunnel was registered and last visited, its visitors now, and its edge's state.
pub(crate) struct Activity {
    epoch: Instant,
    last_active_ms: AtomicU64,
    /// Visitors being served now (HTTP requests in flight, TCP connections).
    visitors: AtomicUsize,
    edge_state: OnceLock<Box<dyn Any + Send + Sync>>,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            last_active_ms: AtomicU64::new(0),
            visitors: AtomicUsize::new(0),
            edge_state: OnceLock::new(),
        }
    }
}

/// One visitor slot of a tunnel; released on drop.
pub(crate) struct VisitorSlot<'a>(&'a AtomicUsize);

impl Drop for VisitorSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Tunnel {
    /// Takes a visitor slot if fewer than `max` are in use.
    pub(crate) fn visitor_slot(&self, max: usize) -> Option<VisitorSlot<'_>> {
        let visitors = &self.activity.visitors;
        if visitors.fetch_add(1, Ordering::AcqRel) >= max {
            visitors.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(VisitorSlot(visitors))
    }

    /// Records visitor activity (idle timeout bookkeeping; one relaxed store).
    pub(crate) fn touch(&self) {
        let now = self.activity.epoch.elapsed().as_millis() as u64;
        self.activity.last_active_ms.store(now, Ordering::Relaxed);
    }

    /// Time since the tunnel was registered.
    pub(crate) fn age(&self) -> Duration {
        self.activity.epoch.elapsed()
    }

    /// Time since the last visitor activity (or since the tunnel opened).
    pub(crate) fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.activity.last_active_ms.load(Ordering::Relaxed));
        self.activity.epoch.elapsed().saturating_sub(last)
    }

    /// The edge's state for this tunnel, created on first use. `None` only if another type
    /// already took the slot (one edge serves each tunnel kind, so it does not happen).
    pub(crate) fn edge_state<T: Default + Send + Sync + 'static>(&self) -> Option<&T> {
        self.activity
            .edge_state
            .get_or_init(|| Box::new(T::default()))
            .downcast_ref()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use async_trait::async_trait;
    use showoff_core::{OpenError, StreamMeta, TunnelStream};
    use showoff_proto::TunnelKind;

    /// An opener whose client is never there.
    pub(crate) struct Gone;

    #[async_trait]
    impl StreamOpener for Gone {
        async fn open(&self, _meta: &StreamMeta) -> Result<TunnelStream, OpenError> {
            Err(OpenError::ClientGone)
        }
    }

    /// An HTTP tunnel `name` of `session`, owned by `principal`.
    pub(crate) fn tunnel(name: &str, session: &str, principal: &str) -> Tunnel {
        let spec = TunnelSpec {
            kind: TunnelKind::Http,
            name: Some(name.into()),
            port: None,
            host_header: Default::default(),
            target: "127.0.0.1:3000".into(),
            visitors: Default::default(),
        };
        Tunnel {
            info: TunnelInfo {
                name: name.into(),
                kind: TunnelKind::Http,
                public_url: format!("http://{name}.localhost"),
                port: None,
            },
            spec,
            principal: principal.into(),
            session_id: session.into(),
            opener: Arc::new(Gone),
            access: Access::default(),
            leases: Vec::new(),
            closed: CancellationToken::new(),
            activity: Activity::default(),
        }
    }

    #[test]
    fn visitor_slots_are_capped_and_given_back() {
        let t = tunnel("demo", "s1", "alice");
        let a = t.visitor_slot(2).expect("first");
        let _b = t.visitor_slot(2).expect("second");
        assert!(t.visitor_slot(2).is_none(), "at the cap");
        drop(a);
        assert!(t.visitor_slot(2).is_some(), "a slot came back");
    }

    #[test]
    fn idle_time_restarts_at_each_touch() {
        let t = tunnel("demo", "s1", "alice");
        std::thread::sleep(Duration::from_millis(20));
        assert!(t.idle_for() >= Duration::from_millis(20));
        t.touch();
        assert!(t.idle_for() < Duration::from_millis(20));
        assert!(t.age() >= Duration::from_millis(20));
    }

    #[test]
    fn edge_state_is_made_once_per_tunnel() {
        #[derive(Default)]
        struct Counter(AtomicUsize);
        let t = tunnel("demo", "s1", "alice");
        let counter = t.edge_state::<Counter>().expect("slot");
        counter.0.fetch_add(1, Ordering::Relaxed);
        let again = t.edge_state::<Counter>().expect("same slot");
        assert_eq!(again.0.load(Ordering::Relaxed), 1);
        assert!(t.edge_state::<String>().is_none(), "one type per slot");
    }
}
