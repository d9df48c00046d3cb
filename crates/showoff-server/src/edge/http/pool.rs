//! Upstream HTTP/1.1 connections over tunnel streams, kept alive and pooled per tunnel (in the
//! tunnel's edge-state slot). A visitor connection does not cost a tunnel stream: requests
//! borrow an idle connection from the tunnel's pool (or open a stream) and return it once the
//! response was relayed completely.

use std::sync::Mutex;

use bytes::BytesMut;
use futures_util::FutureExt;
use showoff_core::{StreamMeta, TunnelStream};
use tokio::io::AsyncReadExt;

use showoff_core::trace::Decision;

use crate::edge::error::EdgeError;
use crate::edge::spans;
use crate::state::Tunnel;

/// Most idle upstream connections kept per tunnel.
pub(crate) const MAX_IDLE_PER_TUNNEL: usize = 64;
/// Read buffer of an upstream connection.
pub(crate) const UPSTREAM_BUF: usize = 16 * 1024;

/// One HTTP/1.1 connection to the target, through a tunnel stream.
pub(crate) struct UpstreamConn {
    pub(crate) io: TunnelStream,
    /// Bytes read from the target and not yet relayed.
    pub(crate) buf: BytesMut,
    /// Authenticated by the target for one visitor connection (NTLM, Negotiate): it never
    /// goes back to the tunnel's pool.
    pub(crate) pinned: bool,
}

impl UpstreamConn {
    pub(crate) fn new(io: TunnelStream) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(UPSTREAM_BUF),
            pinned: false,
        }
    }

    /// True when the idle connection is still open and silent. An idle HTTP/1.1 connection must
    /// not send anything, so readable means closed (or broken): drop it.
    pub(crate) fn is_idle_and_open(&mut self) -> bool {
        let mut probe = [0u8; 1];
        self.buf.is_empty() && self.io.read(&mut probe).now_or_never().is_none()
    }
}

/// The idle upstream connections of one tunnel.
#[derive(Default)]
pub(crate) struct Upstream {
    idle: Mutex<Vec<UpstreamConn>>,
}

impl Upstream {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<UpstreamConn>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_idle(&self) -> Option<UpstreamConn> {
        loop {
            let mut conn = self.idle().pop()?;
            if conn.is_idle_and_open() {
                return Some(conn);
            }
        }
    }

    /// Returns a connection whose last response was relayed completely. A buffer that grew for
    /// a large body is given back, so idle connections stay small.
    pub(crate) fn put_back(&self, mut conn: UpstreamConn) {
        if conn.buf.is_empty() && conn.buf.capacity() > UPSTREAM_BUF {
            conn.buf = BytesMut::with_capacity(UPSTREAM_BUF);
        }
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE_PER_TUNNEL {
            idle.push(conn);
        }
    }
}

/// The tunnel's pool of idle upstream connections.
pub(crate) fn pool(tunnel: &Tunnel) -> Option<&Upstream> {
    tunnel.edge_state::<Upstream>()
}

/// An upstream connection for one request, and whether it was reused from the pool. Only a
/// new stream is paired (and traced as such, per `decision`): a pool hit costs nothing more.
pub(crate) async fn checkout(
    decision: &Decision,
    tunnel: &Tunnel,
    meta: &StreamMeta,
) -> Result<(UpstreamConn, bool), EdgeError> {
    if let Some(conn) = pool(tunnel).and_then(Upstream::take_idle) {
        return Ok((conn, true));
    }
    let stream = spans::open_stream(decision, tunnel, meta.clone())
        .await
        .map_err(EdgeError::Open)?;
    Ok((UpstreamConn::new(stream), false))
}
