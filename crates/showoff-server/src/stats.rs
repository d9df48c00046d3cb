//! Counters and gauges the server keeps about itself, readable at any time through
//! [`crate::Server::stats`]. Lock-free atomics; the admin/metrics layer reads the same values.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a data connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataRejectReason {
    /// Its id names no pending stream (never issued, expired or already used).
    UnknownId,
    /// The key does not match the session the id belongs to.
    WrongKey,
    /// Its session is unknown (for warm-pool connections).
    UnknownSession,
    /// Its handshake was malformed, too slow or of the wrong version.
    BadHandshake,
    /// The session's warm pool is already full.
    PoolFull,
}

/// Live counters of one server.
#[derive(Debug, Default)]
pub struct Stats {
    pub(crate) sessions_active: AtomicU64,
    pub(crate) tunnels_active: AtomicU64,
    pub(crate) pending: AtomicU64,
    pub(crate) visitor_connections_active: AtomicU64,
    pub(crate) http_requests: AtomicU64,
    pub(crate) pool_hits: AtomicU64,
    pub(crate) pool_misses: AtomicU64,
    pub(crate) pool_idle: AtomicU64,
    rejected: [AtomicU64; 5],
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Authenticated sessions now connected.
    pub sessions_active: u64,
    /// Tunnels now registered.
    pub tunnels_active: u64,
    /// Streams being set up now (waiting for the client).
    pub pending: u64,
    /// Visitor connections now open (HTTP and TCP).
    pub visitor_connections_active: u64,
    /// HTTP requests routed to a tunnel so far.
    pub http_requests: u64,
    /// Streams served from a warm pool.
    pub pool_hits: u64,
    /// Streams that needed a dial-back round trip.
    pub pool_misses: u64,
    /// Warm-pool data connections now idle, across sessions.
    pub pool_idle: u64,
    /// Data connections rejected: unknown id.
    pub data_rejected_unknown_id: u64,
    /// Data connections rejected: wrong key.
    pub data_rejected_wrong_key: u64,
    /// Data connections rejected: unknown session.
    pub data_rejected_unknown_session: u64,
    /// Data connections rejected: bad handshake.
    pub data_rejected_bad_handshake: u64,
    /// Data connections rejected: warm pool full.
    pub data_rejected_pool_full: u64,
}

impl Stats {
    pub(crate) fn reject(&self, reason: DataRejectReason) {
        self.rejected[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            sessions_active: get(&self.sessions_active),
            tunnels_active: get(&self.tunnels_active),
            pending: get(&self.pending),
            visitor_connections_active: get(&self.visitor_connections_active),
            http_requests: get(&self.http_requests),
            pool_hits: get(&self.pool_hits),
            pool_misses: get(&self.pool_misses),
            pool_idle: get(&self.pool_idle),
            data_rejected_unknown_id: get(&self.rejected[DataRejectReason::UnknownId as usize]),
            data_rejected_wrong_key: get(&self.rejected[DataRejectReason::WrongKey as usize]),
            data_rejected_unknown_session: get(
                &self.rejected[DataRejectReason::UnknownSession as usize]
            ),
            data_rejected_bad_handshake: get(
                &self.rejected[DataRejectReason::BadHandshake as usize]
            ),
            data_rejected_pool_full: get(&self.rejected[DataRejectReason::PoolFull as usize]),
        }
    }
}

/// Increments a gauge for as long as it lives.
#[derive(Debug)]
pub(crate) struct GaugeGuard<'a>(&'a AtomicU64);

impl<'a> GaugeGuard<'a> {
    pub(crate) fn new(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
