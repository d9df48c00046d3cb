//! Public ports for TCP tunnels: the requested one, or the first free one of the configured
//! range starting at a random offset (so restarts and several servers do not all probe from the
//! same end). Binding is the test of "free" on this machine; ownership across instances is the
//! registry's port lease, claimed by registration once a port is bound.

use std::net::IpAddr;

use showoff_proto::{RefusedCode, ServerMessage};
use tokio::net::TcpListener;

use crate::config::PortRange;

/// Where TCP tunnel ports are bound and which ones may be handed out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PortPlan {
    /// The public HTTP listener's IP: tunnel ports share it.
    pub(crate) ip: IpAddr,
    /// The configured range (`0-0`: the OS picks).
    pub(crate) range: PortRange,
}

impl PortPlan {
    /// The refusal for a port that cannot be had.
    pub(crate) fn unavailable(&self, port: u16) -> ServerMessage {
        ServerMessage::refused(
            RefusedCode::PortUnavailable,
            format!(
                "port {port} is in use or outside the server's range {}",
                self.range
            ),
        )
    }

    /// Whether `port` may be asked for (`0-0`: any).
    pub(crate) fn allows(&self, port: u16) -> bool {
        self.range.first == 0 || self.range.contains(port)
    }

    /// Binds `requested`, or a free port of the range.
    pub(crate) async fn bind(&self, requested: Option<u16>) -> Result<TcpListener, ServerMessage> {
        let range = self.range;
        if let Some(port) = requested {
            if !self.allows(port) {
                return Err(self.unavailable(port));
            }
            return TcpListener::bind((self.ip, port))
                .await
                .map_err(|_| self.unavailable(port));
        }
        if range.first == 0 {
            return TcpListener::bind((self.ip, 0))
                .await
                .map_err(|_| self.unavailable(0));
        }
        let offset = rand::random_range(0..range.len());
        for i in 0..range.len() {
            let port = range.first + ((offset + i) % range.len()) as u16;
            if let Ok(listener) = crate::listen::listen((self.ip, port).into()) {
                return Ok(listener);
            }
        }
        Err(ServerMessage::refused(
            RefusedCode::LimitReached,
            format!("every port of {range} is in use"),
        ))
    }
}
