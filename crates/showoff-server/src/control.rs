//! The control side of a session, from the client's first frame to its end:
//!
//! - [`handshake`]: the control listener's handler: PROXY prelude outcome, TLS, the control
//!   rate limit, then `Hello`, `Auth`, `Open` → `Welcome` or `Refused`;
//! - [`admission`]: whether a principal may open what it asks (kinds, tunnel limit, tunnel
//!   rate, server capacity) — pure checks over plain values;
//! - [`registration`]: names and ports claimed as leases, tunnels built and routed, and the
//!   [`SessionGuard`](registration::SessionGuard) that undoes all of it however a session ends;
//! - [`quic`]: the QUIC listener's accept loop, feeding the same handshake;
//! - [`control_loop`]: the steady state: `Dial`s out, heartbeats, `Close`, `StreamError`, idle
//!   tunnels, lease renewal, `GoAway` on drain.
//!
//! [`ControlContext`] is everything this layer uses; the composition root builds it. Serving a
//! TCP tunnel's public listener or a UDP tunnel's socket belongs to the edge above, reached
//! through [`TcpTunnels`] and [`UdpTunnels`].

pub(crate) mod admission;
pub(crate) mod control_loop;
pub(crate) mod handshake;
pub(crate) mod quic;
pub(crate) mod registration;

use std::sync::Arc;
use std::time::Duration;

use showoff_core::Registry;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;

use crate::audit::AuditLog;
use crate::auth::Authenticator;
use crate::config::NamePolicy;
use crate::drain::Drain;
use crate::limits::RateLimits;
use crate::state::ports::{PortPlan, PublicSocket};
use crate::state::{PublicUrls, Routes, Sessions, Tunnel};
use crate::stats::Stats;
use crate::tls::Tls;
use crate::transport::datagrams::DatagramPath;
use crate::transport::dialback::DialBackHub;

/// A control connection speaking frames, over TCP, TLS or (in fuzzing) an in-memory pipe.
pub(crate) type ControlFramed = tokio_util::codec::Framed<
    showoff_core::TunnelStream,
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
    /// TCP tunnel ports.
    pub(crate) ports: PortPlan,
    /// UDP tunnel ports.
    pub(crate) udp_ports: PortPlan,
    /// A UDP flow's idle timeout, told to clients in `Welcome`.
    pub(crate) udp_flow_idle: Duration,
    /// The data listener's port, told to clients in `Welcome`.
    pub(crate) data_port: u16,
    /// The QUIC listener's UDP port, told to clients in `Welcome`; `None` when QUIC is off.
    pub(crate) quic_port: Option<u16>,
    /// Sessions are traced (a span each, with events), this share of them (`None`: off).
    pub(crate) trace: Option<f64>,
}

/// Starts serving visitors on a TCP tunnel's bound public port (the TCP edge does).
pub(crate) trait TcpTunnels: Send + Sync + 'static {
    /// Accepts visitors on `listener` for `tunnel` until it closes or the server drains.
    fn serve(&self, listener: TcpListener, tunnel: Arc<Tunnel>);
}

/// Starts relaying a UDP tunnel's datagrams between its bound public socket and its path to
/// the client (the UDP edge does).
pub(crate) trait UdpTunnels: Send + Sync + 'static {
    /// Relays for `tunnel` until it closes or the server drains.
    fn serve(&self, socket: UdpSocket, tunnel: Arc<Tunnel>, path: DatagramPath);
}

/// The public ports this instance listens on for the other instances of a cluster (the edge
/// mirrors every port they hold, so one balancer in front of all instances works).
#[async_trait::async_trait]
pub(crate) trait PortMirrors: Send + Sync + 'static {
    /// Stops mirroring `key` and hands its bound socket over, for a tunnel of this instance
    /// that now holds the port; `None` when it was not mirrored.
    async fn take(&self, key: &showoff_core::LeaseKey) -> Option<PublicSocket>;
}

/// A server that is not in a cluster mirrors nothing.
pub(crate) struct NoMirrors;

#[async_trait::async_trait]
impl PortMirrors for NoMirrors {
    async fn take(&self, _key: &showoff_core::LeaseKey) -> Option<PublicSocket> {
        None
    }
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
    pub(crate) udp_tunnels: Arc<dyn UdpTunnels>,
    pub(crate) mirrors: Arc<dyn PortMirrors>,
    pub(crate) drain: Drain,
}

/// Contexts over in-memory parts, for unit tests and the fuzz targets.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod tests {
    use super::*;
    use crate::config::PortRange;
    use crate::state::ports::PortKind;
    use crate::transport::dialback::DialBackSettings;

    /// Records the TCP tunnels registration asks the edge to serve.
    #[derive(Default)]
    pub(crate) struct Served(pub(crate) std::sync::Mutex<Vec<String>>);

    impl TcpTunnels for Served {
        fn serve(&self, _listener: TcpListener, tunnel: Arc<Tunnel>) {
            let mut served = self.0.lock().unwrap_or_else(|p| p.into_inner());
            served.push(tunnel.info.name.clone());
        }
    }

    impl UdpTunnels for Served {
        fn serve(&self, _socket: UdpSocket, tunnel: Arc<Tunnel>, path: DatagramPath) {
            let mut served = self.0.lock().unwrap_or_else(|p| p.into_inner());
            served.push(format!("{} (slot {})", tunnel.info.name, path.slot));
        }
    }

    /// A control context over in-memory parts only: no listener, no socket.
    pub(crate) fn context(https_port: Option<u16>) -> Arc<ControlContext> {
        context_with(https_port, |_| {})
    }

    fn settings() -> ControlSettings {
        ControlSettings {
            heartbeat_interval: Duration::from_secs(15),
            heartbeat_timeout: Duration::from_secs(45),
            tunnel_idle_timeout: None,
            tunnel_lifetime: None,
            max_sessions: 10,
            warm_pool: 0,
            tunnels_per_principal: 0,
            names: NamePolicy::default(),
            ports: PortPlan {
                ip: std::net::Ipv4Addr::LOCALHOST.into(),
                range: PortRange { first: 0, last: 0 },
                kind: PortKind::Tcp,
            },
            udp_ports: PortPlan {
                ip: std::net::Ipv4Addr::LOCALHOST.into(),
                range: PortRange { first: 0, last: 0 },
                kind: PortKind::Udp,
            },
            udp_flow_idle: Duration::from_secs(120),
            data_port: 7001,
            quic_port: None,
            trace: None,
        }
    }

    /// [`context`] with its settings adjusted by `adjust`.
    pub(crate) fn context_with(
        https_port: Option<u16>,
        adjust: impl FnOnce(&mut ControlSettings),
    ) -> Arc<ControlContext> {
        context_served(https_port, adjust).0
    }

    /// [`context_with`], and what its edges are asked to serve.
    pub(crate) fn context_served(
        https_port: Option<u16>,
        adjust: impl FnOnce(&mut ControlSettings),
    ) -> (Arc<ControlContext>, Arc<Served>) {
        let mut settings = settings();
        adjust(&mut settings);
        let served = Arc::new(Served::default());
        let stats = Arc::new(Stats::new(&Default::default(), 0));
        let tls = Arc::new(Tls::new(&Default::default()).expect("no TLS"));
        let dialback = DialBackHub::new(
            DialBackSettings {
                warm_pool: 0,
                pending_timeout: Duration::from_secs(10),
                max_pending_per_session: 8,
                max_pending_total: 8,
                user_timeout: Duration::from_secs(60),
            },
            stats.clone(),
            tls.clone(),
        );
        let ctx = Arc::new(ControlContext {
            settings,
            sessions: Arc::default(),
            routes: Arc::default(),
            registry: Arc::new(showoff_core::MemoryRegistry::default()),
            dialback,
            authenticator: Arc::new(crate::auth::Open),
            limits: Arc::new(RateLimits::new(&Default::default())),
            stats,
            audit: AuditLog::default(),
            tls,
            urls: PublicUrls {
                domain: "localhost".into(),
                http_port: 8080,
                https_port,
            },
            acme_requests: None,
            tcp_tunnels: served.clone(),
            udp_tunnels: served.clone(),
            mirrors: Arc::new(NoMirrors),
            drain: Drain::default(),
        });
        (ctx, served)
    }
}
