//! Client configuration: where the server is, the token, and the tunnels to open.

use std::time::Duration;

use showoff_proto::TunnelSpec;

use crate::backoff::Backoff;

/// Default control address of the server.
pub const DEFAULT_SERVER: &str = "127.0.0.1:7000";
/// Default time in-flight streams get to finish when the client stops.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
pub use crate::target::CONNECT_TIMEOUT;
/// How long `auto` gives a QUIC handshake before it falls back to mux.
pub const QUIC_FALLBACK: Duration = Duration::from_secs(3);
/// Default pause between QUIC probes of an `auto` client that fell back to mux.
pub const DEFAULT_QUIC_PROBE_INTERVAL: Duration = Duration::from_secs(300);

/// Which transport the client asks for (`--transport`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TransportChoice {
    /// QUIC when the server offers it and UDP gets through, else mux; re-probes QUIC.
    Auto,
    /// QUIC only.
    Quic,
    /// Multiplexed streams over the control connection.
    Mux,
    /// Dial-back: one TCP data connection per stream, with a warm pool. The default: on a
    /// clean link it measured fastest for bulk and keep-alive traffic (docs/benchmarks.md).
    #[default]
    Tcp,
}

impl std::str::FromStr for TransportChoice {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "auto" => Ok(Self::Auto),
            "quic" => Ok(Self::Quic),
            "mux" => Ok(Self::Mux),
            "tcp" => Ok(Self::Tcp),
            other => Err(format!(
                "unknown transport {other:?}; expected auto, quic, mux or tcp"
            )),
        }
    }
}

/// One tunnel: what to ask the server for and where its traffic goes locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelConfig {
    /// The request sent in `Open`.
    pub spec: TunnelSpec,
    /// `host:port` of the local target, e.g. `127.0.0.1:3000`.
    pub local: String,
    /// Send the visitor's address to the target in a PROXY protocol header (TCP tunnels).
    pub proxy_protocol: Option<crate::ProxyVersion>,
    /// Speak TLS to the target (`https://` targets, `--upstream h2`).
    pub tls: Option<crate::target::TargetTls>,
}

/// Everything the client needs.
#[derive(Clone)]
pub struct ClientConfig {
    /// `host:port` of the server's control listener.
    pub server: String,
    /// `host:port` of the data listener when it differs from the control host and the port the
    /// server announces (e.g. behind a load balancer that maps ports).
    pub data_server: Option<String>,
    /// The client's token (may be empty for an open server).
    pub token: String,
    /// Tunnels to open.
    pub tunnels: Vec<TunnelConfig>,
    /// Reconnect after losses (on by default); off makes the first loss fatal.
    pub reconnect: bool,
    /// Reconnect delay schedule.
    pub backoff: Backoff,
    /// Time in-flight streams get when the client stops.
    pub shutdown_grace: Duration,
    /// TLS towards the server's control and data listeners; `None` speaks plain TCP.
    pub tls: Option<crate::tls::ClientTls>,
    /// The transport to ask for.
    pub transport: TransportChoice,
    /// UDP port of the server's QUIC listener when the client must know it before any
    /// `Welcome` (`--transport quic`); `auto` learns it from `Welcome`.
    pub quic_port: Option<u16>,
    /// Pause between QUIC probes of an `auto` client running on mux.
    pub quic_probe_interval: Duration,
    /// Captures every exchange of the `http` tunnels when set (the traffic inspector).
    pub inspector: Option<crate::inspect::Inspector>,
    /// Makes spans (session, stream, target dial) that join the server's traces, when set; the
    /// binary installs the exporter. The value is the share of new traces sampled, 0 to 1: the
    /// client's sessions and the streams the server did not trace (no `traceparent` came with
    /// them); streams the server traced follow its decision. `None`: no span is made.
    pub trace: Option<f64>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("server", &self.server)
            .field("data_server", &self.data_server)
            .field("token", &"***")
            .field("tunnels", &self.tunnels)
            .field("reconnect", &self.reconnect)
            .field("backoff", &self.backoff)
            .field("tls", &self.tls)
            .field("transport", &self.transport)
            .field("quic_port", &self.quic_port)
            .field("inspector", &self.inspector.is_some())
            .field("trace", &self.trace)
            .finish()
    }
}

impl ClientConfig {
    /// A config with defaults for everything but the tunnels.
    pub fn new(server: impl Into<String>, tunnels: Vec<TunnelConfig>) -> Self {
        Self {
            server: server.into(),
            data_server: None,
            token: String::new(),
            tunnels,
            reconnect: true,
            backoff: Backoff::default(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            tls: None,
            transport: TransportChoice::default(),
            quic_port: None,
            quic_probe_interval: DEFAULT_QUIC_PROBE_INTERVAL,
            inspector: None,
            trace: None,
        }
    }

    /// The host part of the control address (brackets of an IPv6 literal kept).
    pub(crate) fn server_host(&self) -> &str {
        self.server
            .rsplit_once(':')
            .map_or(self.server.as_str(), |(h, _)| h)
    }

    /// The data listener address to dial: the override, else the control host with the port
    /// the server announced in `Welcome`.
    pub fn data_addr(&self, announced_port: u16) -> String {
        if let Some(addr) = &self.data_server {
            return addr.clone();
        }
        format!("{}:{announced_port}", self.server_host())
    }

    /// The tunnel at `index`, in `Open` order.
    pub(crate) fn tunnel_at(&self, index: usize) -> Option<&TunnelConfig> {
        self.tunnels.get(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_address_uses_the_announced_port_on_the_control_host() {
        let c = ClientConfig::new("127.0.0.1:7000", vec![]);
        assert_eq!(c.data_addr(7001), "127.0.0.1:7001");
        let c = ClientConfig::new("[::1]:7000", vec![]);
        assert_eq!(c.data_addr(9), "[::1]:9");
        let c = ClientConfig {
            data_server: Some("tunnel.example:9000".into()),
            ..ClientConfig::new("tunnel.example:7000", vec![])
        };
        assert_eq!(c.data_addr(7001), "tunnel.example:9000");
    }

    #[test]
    fn debug_masks_the_token() {
        let c = ClientConfig {
            token: "hunter2".into(),
            ..ClientConfig::new("127.0.0.1:7000", vec![])
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
