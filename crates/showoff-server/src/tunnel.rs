//! A registered tunnel: what the client asked for, what it was granted, how to open streams to
//! it, and its idle upstream HTTP connections. Edges look tunnels up in
//! [`Routes`](crate::registry::Routes) and never hold them past a request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use showoff_proto::{TunnelInfo, TunnelSpec};
use tokio_util::sync::CancellationToken;

use crate::edge::access::Access;
use crate::edge::http::upstream::Upstream;
use crate::transport::StreamOpener;

/// One live tunnel of one session.
pub(crate) struct Tunnel {
    /// What the client was told (name, public URL, port).
    pub(crate) info: TunnelInfo,
    /// What the client asked for (host header policy, target).
    pub(crate) spec: TunnelSpec,
    /// The principal that owns it.
    pub(crate) principal: String,
    /// The session serving it.
    pub(crate) session_id: String,
    /// Opens streams to the client.
    pub(crate) opener: Arc<dyn StreamOpener>,
    /// Idle HTTP/1.1 connections to the target, reused across visitors.
    pub(crate) upstream: Upstream,
    /// Who may visit (IP lists, basic auth).
    pub(crate) access: Access,
    /// Cancelled when the tunnel closes; its TCP listener and upstream connections stop.
    pub(crate) closed: CancellationToken,
    epoch: Instant,
    last_active_ms: AtomicU64,
    /// Visitors being served now (HTTP requests in flight, TCP connections).
    visitors: AtomicUsize,
}

/// One visitor slot of a tunnel; released on drop.
pub(crate) struct VisitorSlot<'a>(&'a AtomicUsize);

impl Drop for VisitorSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Tunnel {
    pub(crate) fn new(
        info: TunnelInfo,
        spec: TunnelSpec,
        principal: String,
        session_id: String,
        opener: Arc<dyn StreamOpener>,
        access: Access,
        closed: CancellationToken,
    ) -> Self {
        Self {
            info,
            spec,
            principal,
            session_id,
            opener,
            upstream: Upstream::default(),
            access,
            closed,
            epoch: Instant::now(),
            last_active_ms: AtomicU64::new(0),
            visitors: AtomicUsize::new(0),
        }
    }

    /// Takes a visitor slot if fewer than `max` are in use.
    pub(crate) fn visitor_slot(&self, max: usize) -> Option<VisitorSlot<'_>> {
        if self.visitors.fetch_add(1, Ordering::AcqRel) >= max {
            self.visitors.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(VisitorSlot(&self.visitors))
    }

    /// Records visitor activity (idle timeout bookkeeping; one relaxed store).
    pub(crate) fn touch(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_active_ms.store(now, Ordering::Relaxed);
    }

    /// Time since the tunnel was registered.
    pub(crate) fn age(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Time since the last visitor activity (or since the tunnel opened).
    pub(crate) fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}
