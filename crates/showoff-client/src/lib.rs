//! The Showoff client: keeps a session with a server and carries visitor streams to local
//! targets.
//!
//! [`run`] connects, authenticates, opens the configured tunnels and then serves `Dial`s until
//! told to stop, reconnecting with exponential backoff and jitter after any loss (the server
//! gives the same name back to the same token). Progress is reported as [`ClientEvent`]s so the
//! binary can print `<public URL> -> <local address>` lines or JSON.
//!
//! # Layout
//! - [`config`]: [`ClientConfig`], [`TunnelConfig`].
//! - [`backoff`]: the reconnect delay schedule (pure).
//! - [`session`]: one connected session: handshake, control loop, warm pool, streams.
//! - [`target`]: where a tunnel's streams end ([`Target`]; local TCP services today).
//! - [`transport`]: how the server is reached ([`Transport`]; TCP with optional TLS today).
//! - [`inspect`]: the traffic inspector of `http` tunnels: capture, page, API, replay, HAR.

pub mod backoff;
pub mod config;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod inspect;
pub mod proxy_header;
mod session;
pub mod target;
pub mod tls;
pub mod transport;

use std::time::Duration;

use showoff_proto::{RefusedCode, TransportKind, TunnelInfo};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::{ClientConfig, TransportChoice, TunnelConfig};
pub use proxy_header::ProxyVersion;
pub use target::{Target, TcpTarget, local_address};
pub use tls::ClientTls;
pub use transport::Transport;

/// What the client reports while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// A session is up; one entry per tunnel with its local target.
    Connected {
        /// Granted tunnels paired with the local address each reaches.
        tunnels: Vec<(TunnelInfo, String)>,
        /// The transport the session runs on.
        transport: TransportKind,
        /// When the session has UDP tunnels: the largest datagram payload they carry whole
        /// (65,507 on a datagram channel; the QUIC path's DATAGRAM frame limit less the
        /// largest header on QUIC). Larger datagrams are dropped, never truncated.
        max_udp_payload: Option<usize>,
    },
    /// An `auto` client moved its session to a better transport (mux → QUIC); the URLs stay.
    Switched {
        /// The transport left.
        from: TransportKind,
        /// The transport the session runs on now.
        to: TransportKind,
    },
    /// The session was lost; the client retries after `retry_in`.
    Disconnected {
        /// What happened.
        error: String,
        /// Delay before the next attempt.
        retry_in: Duration,
    },
    /// The server closed one tunnel (e.g. idle timeout).
    TunnelClosed {
        /// Its name.
        tunnel: String,
        /// The server's reason.
        reason: String,
    },
    /// The server is draining; the client reconnects when it closes the session.
    GoAway {
        /// The server's reason.
        reason: String,
    },
}

/// Why the client stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused the session in a way retrying cannot fix.
    #[error("the server refused the session ({code}): {message}")]
    Refused {
        /// Stable refusal code.
        code: RefusedCode,
        /// The server's explanation.
        message: String,
    },
    /// The session failed and reconnecting is off.
    #[error("{0}")]
    Failed(String),
    /// The TLS settings are unusable (a CA or certificate file that does not parse).
    #[error("TLS settings: {0}")]
    Tls(String),
    /// The configuration names no tunnel.
    #[error("no tunnel is configured")]
    NoTunnels,
}

impl ClientError {
    /// True for refusals that reconnecting cannot cure (wrong token, name held by another).
    fn is_permanent(&self) -> bool {
        match self {
            Self::Refused { code, .. } => !matches!(
                code,
                RefusedCode::ShuttingDown
                    | RefusedCode::AuthUnavailable
                    | RefusedCode::LimitReached
                    | RefusedCode::RegistryUnavailable
                    | RefusedCode::RateLimited
                    | RefusedCode::Unknown
            ),
            Self::Failed(_) | Self::NoTunnels | Self::Tls(_) => false,
        }
    }
}

/// How a session ended without a permanent error.
pub(crate) enum SessionEnd {
    /// Shutdown was requested.
    Shutdown,
    /// The server said `GoAway`; reconnect after the delay once it closed the session.
    GoAway(Duration),
}

/// Runs the client until `shutdown` is cancelled or a permanent error occurs. In-flight streams
/// get `config.shutdown_grace` to finish after shutdown.
pub async fn run(
    config: ClientConfig,
    events: mpsc::UnboundedSender<ClientEvent>,
    shutdown: CancellationToken,
) -> Result<(), ClientError> {
    if config.tunnels.is_empty() {
        return Err(ClientError::NoTunnels);
    }
    if let Some(tls) = &config.tls {
        tls::Connector::new(tls).map_err(ClientError::Tls)?;
    }
    let streams = tokio_util::task::TaskTracker::new();
    let result = reconnect_loop(&config, &events, &shutdown, &streams).await;
    streams.close();
    if tokio::time::timeout(config.shutdown_grace, streams.wait())
        .await
        .is_err()
    {
        warn!("in-flight streams cut short at shutdown");
    }
    result
}

/// How long a session must have stayed up for the next loss to start the backoff afresh; a
/// session that fails sooner keeps climbing it, so no error (a refusal after `Welcome`, a
/// takeover loop, a crashing target) can make the client reconnect several times a second.
pub const STABLE_SESSION: Duration = Duration::from_secs(10);

/// The backoff attempt after a session that was up for `up_for` (`None`: never welcomed).
fn attempt_after(attempt: u32, up_for: Option<Duration>) -> u32 {
    match up_for {
        Some(up) if up >= STABLE_SESSION => 0,
        _ => attempt,
    }
}

/// The servers `--server` names: one `host:port`, or several separated by commas (the
/// instances of a cluster without a balancer in front).
fn servers(server: &str) -> Vec<String> {
    let listed: Vec<String> = server
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if listed.is_empty() {
        vec![server.to_string()]
    } else {
        listed
    }
}

async fn reconnect_loop(
    config: &ClientConfig,
    events: &mpsc::UnboundedSender<ClientEvent>,
    shutdown: &CancellationToken,
    streams: &tokio_util::task::TaskTracker,
) -> Result<(), ClientError> {
    let mut attempt = 0u32;
    let mut memory = session::link::Memory::default();
    let servers = servers(&config.server);
    let mut current = config.clone();
    let mut next = 0;
    loop {
        // Each session goes to the next server of the list: after a loss or a `GoAway`, the
        // client is back elsewhere while the one it left is down or draining.
        current.server = servers[next % servers.len()].clone();
        next += 1;
        if servers.len() > 1 {
            memory.moved();
        }
        let config = &current;
        // Where a session sent away by a draining server opens its successor.
        let mut successor = current.clone();
        successor.server = servers[next % servers.len()].clone();
        let mut welcomed = None;
        let outcome = session::run(
            config,
            events,
            shutdown,
            streams,
            &mut welcomed,
            &mut memory,
            &successor,
        );
        let outcome = outcome.await;
        attempt = attempt_after(attempt, welcomed.map(|at| at.elapsed()));
        let delay = match outcome {
            Ok(SessionEnd::Shutdown) => return Ok(()),
            Ok(SessionEnd::GoAway(delay)) => delay,
            Err(error) if error.is_permanent() || !config.reconnect => return Err(error),
            Err(error) => {
                let delay = config.backoff.delay(attempt, rand::random::<f64>());
                attempt = attempt.saturating_add(1);
                warn!(%error, retry_in_ms = delay.as_millis() as u64, "session lost");
                let _ = events.send(ClientEvent::Disconnected {
                    error: error.to_string(),
                    retry_in: delay,
                });
                delay
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => info!("reconnecting"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_list_is_split_on_commas() {
        assert_eq!(servers("a:7000"), ["a:7000"]);
        assert_eq!(
            servers("a:7000, b:7000,,c:7000"),
            ["a:7000", "b:7000", "c:7000"]
        );
        assert_eq!(servers("[::1]:7000"), ["[::1]:7000"]);
    }

    #[test]
    fn only_a_stable_session_resets_the_backoff() {
        assert_eq!(attempt_after(5, None), 5, "never welcomed");
        assert_eq!(
            attempt_after(5, Some(Duration::from_millis(200))),
            5,
            "up briefly"
        );
        assert_eq!(attempt_after(5, Some(STABLE_SESSION)), 0, "stayed up");
    }

    #[test]
    fn a_replaced_session_does_not_fight_back() {
        let replaced = ClientError::Refused {
            code: RefusedCode::Replaced,
            message: "another client with the same token took over demo".into(),
        };
        assert!(replaced.is_permanent());
        let limited = ClientError::Refused {
            code: RefusedCode::RateLimited,
            message: String::new(),
        };
        assert!(!limited.is_permanent());
    }

    #[test]
    fn a_registry_that_does_not_answer_is_waited_out() {
        let unavailable = ClientError::Refused {
            code: RefusedCode::RegistryUnavailable,
            message: "the name registry does not answer; retry shortly".into(),
        };
        assert!(!unavailable.is_permanent());
    }
}
