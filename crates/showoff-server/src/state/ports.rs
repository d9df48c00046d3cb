//! Public ports for TCP and UDP tunnels: the requested one, or the first free one of the
//! configured range starting at a random offset (so restarts and several servers do not all
//! probe from the same end). Binding is the test of "free" on this machine; ownership across
//! instances is the registry's port lease (TCP and UDP ports are separate namespaces), claimed
//! by registration once a port is bound.

use std::net::{IpAddr, SocketAddr};

use showoff_core::LeaseKey;
use showoff_proto::{RefusedCode, ServerMessage};
use tokio::net::{TcpListener, UdpSocket};

use crate::config::PortRange;

/// Which protocol a public port is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PortKind {
    Tcp,
    Udp,
}

/// A bound public port: a TCP tunnel's listener or a UDP tunnel's socket.
#[derive(Debug)]
pub(crate) enum PublicSocket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl PublicSocket {
    /// The bound port.
    pub(crate) fn port(&self) -> u16 {
        let addr = match self {
            Self::Tcp(listener) => listener.local_addr(),
            Self::Udp(socket) => socket.local_addr(),
        };
        addr.map(|a| a.port()).unwrap_or(0)
    }
}

/// Where one protocol's tunnel ports are bound and which ones may be handed out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PortPlan {
    /// The public HTTP listener's IP: tunnel ports share it.
    pub(crate) ip: IpAddr,
    /// The configured range (`0-0`: the OS picks).
    pub(crate) range: PortRange,
    /// TCP or UDP.
    pub(crate) kind: PortKind,
}

impl PortPlan {
    /// The refusal for a port that cannot be had.
    pub(crate) fn unavailable(&self, port: u16) -> ServerMessage {
        let kind = match self.kind {
            PortKind::Tcp => "TCP",
            PortKind::Udp => "UDP",
        };
        ServerMessage::refused(
            RefusedCode::PortUnavailable,
            format!(
                "{kind} port {port} is in use or outside the server's range {}",
                self.range
            ),
        )
    }

    /// The registry key of `port` in this plan's namespace.
    pub(crate) fn lease_key(&self, port: u16) -> LeaseKey {
        match self.kind {
            PortKind::Tcp => LeaseKey::Port(port),
            PortKind::Udp => LeaseKey::UdpPort(port),
        }
    }

    /// Whether `port` may be asked for (`0-0`: any).
    pub(crate) fn allows(&self, port: u16) -> bool {
        self.range.first == 0 || self.range.contains(port)
    }

    /// Binds `requested`, or a free port of the range.
    pub(crate) async fn bind(&self, requested: Option<u16>) -> Result<PublicSocket, ServerMessage> {
        let range = self.range;
        if let Some(port) = requested {
            if !self.allows(port) {
                return Err(self.unavailable(port));
            }
            return self.bind_port(port).ok_or_else(|| self.unavailable(port));
        }
        if range.first == 0 {
            return self.bind_port(0).ok_or_else(|| self.unavailable(0));
        }
        let offset = rand::random_range(0..range.len());
        for i in 0..range.len() {
            let port = range.first + ((offset + i) % range.len()) as u16;
            if let Some(socket) = self.bind_port(port) {
                return Ok(socket);
            }
        }
        Err(ServerMessage::refused(
            RefusedCode::LimitReached,
            format!("every port of {range} is in use"),
        ))
    }

    /// Binds exactly `port`, in the range or not (a port another instance of the cluster
    /// handed out); `None` when it is in use here.
    pub(crate) fn bind_port(&self, port: u16) -> Option<PublicSocket> {
        let addr = SocketAddr::new(self.ip, port);
        match self.kind {
            PortKind::Tcp => crate::listen::listen(addr).ok().map(PublicSocket::Tcp),
            PortKind::Udp => {
                // Raised buffers: a burst of visitors' datagrams waits in the kernel, not lost.
                let (socket, _) = showoff_core::quic::bind_udp(addr).ok()?;
                UdpSocket::from_std(socket).ok().map(PublicSocket::Udp)
            }
        }
    }
}
