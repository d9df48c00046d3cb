//! The control side of a session, from the client's first frame to its end:
//!
//! - [`handshake`]: the control listener's handler: PROXY prelude outcome, TLS, the control
//!   rate limit, then `Hello`, `Auth`, `Open` → `Welcome` or `Refused`;
//! - [`admission`]: whether a principal may open what it asks (kinds, tunnel limit, tunnel
//!   rate, server capacity) — pure checks over plain values;
//! - [`registration`]: names and ports claimed as leases, tunnels built and routed, and the
//!   [`SessionGuard`](registration::SessionGuard) that undoes all of it however a session ends;
//! - [`control_loop`]: the steady state: `Dial`s out, heartbeats, `Close`, `StreamError`, idle
//!   tunnels, lease renewal, `GoAway` on drain.
//!
//! [`ControlContext`] is everything this layer uses; the composition root builds it. Starting a
//! TCP tunnel's public listener belongs to the edge above, reached through [`TcpTunnels`].

pub(crate) mod admission;
pub(crate) mod control_loop;
pub(crate) mod handshake;
pub(crate) mod registration;

use std::sync::Arc;
use std::time::Duration;

use showoff_core::Registry;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::audit::AuditLog;
use crate::auth::Authenticator;
use crate::config::NamePolicy;
use crate::drain::Drain;
use crate::limits::RateLimits;
use crate::state::ports::PortPlan;
use crate::state::{PublicUrls, Routes, Sessions, Tunnel};
use crate::stats::Stats;
use crate::tls::Tls;
use crate::transport::dialback::DialBackHub;

/// A control connection speaking frames.
pub(crate) type ControlFramed = tokio_util::codec::Framed<
    crate::tls::ServerIo,
    showoff_proto::FrameCodec<showoff_proto::ClientMessage, showoff_proto::ServerMessage>,
>;

/// Most tunnels one session may open.
pub const MAX_TUNNELS_PER_SESSION: usize = 64;

/// The settings the control layer reads.
#[derive(Debug, Clone)]
pub(crate) struct ControlSettings {
    pub(crate) heartbeat_interval: Duration,
    pub(crate) heartbeat_timeout: Duration,
    pub(crate) tunnel_idle_timeout: Option<Duration>,
    pub(crate) tunnel_lifetime: Option<Duration>,
    pub(crate) max_sessions: usize,
    pub(crate) warm_pool: u16,
    /// Tunnels per minute per principal (0: off), for the refusal's message.
    pub(crate) tunnels_per_principal: u32,
    pub(crate) names: NamePolicy,
    pub(crate) ports: PortPlan,
    /// The data listener's port, told to clients in `Welcome`.
    pub(crate) data_port: u16,
}

/// Starts serving visitors on a TCP tunnel's bound public port (the TCP edge does).
pub(crate) trait TcpTunnels: Send + Sync + 'static {
    /// Accepts visitors on `listener` for `tunnel` until it closes or the server drains.
    fn serve(&self, listener: TcpListener, tunnel: Arc<Tunnel>);
}

/// What the control layer uses, and nothing else.
pub(crate) struct ControlContext {
    pub(crate) settings: ControlSettings,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) routes: Arc<Routes>,
    pub(crate) registry: Arc<dyn Registry>,
    pub(crate) dialback: Arc<DialBackHub>,
    pub(crate) authenticator: Arc<dyn Authenticator>,
    pub(crate) limits: Arc<RateLimits>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) audit: AuditLog,
    pub(crate) tls: Arc<Tls>,
    pub(crate) urls: PublicUrls,
    /// Hostnames of new HTTP tunnels for the ACME task (on-demand certificates).
    pub(crate) acme_requests: Option<mpsc::Sender<String>>,
    pub(crate) tcp_tunnels: Arc<dyn TcpTunnels>,
    pub(crate) drain: Drain,
}
