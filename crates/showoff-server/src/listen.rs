//! Sockets and arrivals: binding every listener the same way ([`listen`]), the one accept loop
//! every listener runs ([`serve`]), and the one arrival prelude ([`Prelude`]) each accepted
//! connection passes before its handler sees it: socket options, the real peer address (a
//! trusted PROXY header, [`proxy_protocol`]), and bytes read ahead kept for the handler.
//!
//! Per-address connection limits belong in [`Prelude::arrive`] too: it is the one place every
//! connection of every listener passes, before any handler allocates for it.

pub(crate) mod proxy_protocol;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span, debug};

pub(crate) use self::proxy_protocol::ProxyError;
use crate::config::{ProxyConfig, ProxyProtocol};

/// Pending connections the kernel queues per listener (capped by `net.core.somaxconn`). A burst
/// of reconnecting clients or visitors overflowing tokio's default of 1024 costs each dropped
/// SYN a one-second retransmit (seen as 27 s to register 10,000 tunnels).
pub(crate) const LISTEN_BACKLOG: u32 = 4096;

/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Binds a listener with [`LISTEN_BACKLOG`] and `SO_REUSEADDR` (restarts do not wait for
/// TIME_WAIT).
pub(crate) fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// What a listener asks of its connections before their handler runs.
#[derive(Debug, Clone)]
pub(crate) struct Prelude {
    /// Whether a PROXY header is read (public listeners: `proxy.protocol`; control:
    /// `proxy.control`; data: off).
    pub(crate) policy: ProxyProtocol,
    /// Which peers are trusted to send one.
    pub(crate) proxy: ProxyConfig,
    /// Deadline for the header.
    pub(crate) deadline: Duration,
}

impl Prelude {
    /// A prelude that reads nothing (the data listener).
    pub(crate) fn plain() -> Self {
        Self {
            policy: ProxyProtocol::Off,
            proxy: ProxyConfig::default(),
            deadline: Duration::ZERO,
        }
    }

    /// Runs the prelude on one accepted connection.
    pub(crate) async fn arrive(&self, mut stream: TcpStream, tcp_peer: SocketAddr) -> Arrived {
        let read = proxy_protocol::read_header(
            &mut stream,
            tcp_peer,
            self.policy,
            &self.proxy,
            self.deadline,
        );
        match read.await {
            Ok((peer, prefix)) => Ok(Arrival {
                stream,
                peer,
                prefix,
            }),
            Err(error) => Err(Refusal {
                stream,
                peer: tcp_peer,
                error,
            }),
        }
    }
}

/// A connection that passed its prelude.
#[derive(Debug)]
pub(crate) struct Arrival {
    /// The socket, nodelay and keepalive set.
    pub(crate) stream: TcpStream,
    /// The visitor or client: a trusted PROXY header's source, or the TCP peer.
    pub(crate) peer: SocketAddr,
    /// Traffic read while looking for the header; it comes first.
    pub(crate) prefix: BytesMut,
}

/// A connection the prelude refused; the handler decides what the peer hears.
#[derive(Debug)]
pub(crate) struct Refusal {
    /// The socket, for an error page.
    pub(crate) stream: TcpStream,
    /// The TCP peer.
    pub(crate) peer: SocketAddr,
    /// Why.
    pub(crate) error: ProxyError,
}

/// The outcome of the prelude.
pub(crate) type Arrived = Result<Arrival, Refusal>;

/// Accepts connections until `until` completes. Each gets socket options, then a task on
/// `tracker` (inside the span `span` makes for its peer) that runs `prelude` and hands the
/// result to `handle`. Every listener of the server, TCP tunnel ports included, runs this loop.
pub(crate) async fn serve<H, F>(
    listener: TcpListener,
    until: impl Future<Output = ()>,
    prelude: Prelude,
    tracker: TaskTracker,
    span: impl Fn(SocketAddr) -> Span,
    handle: H,
) where
    H: Fn(Arrived) -> F + Clone + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    tokio::pin!(until);
    loop {
        let accepted = tokio::select! {
            _ = &mut until => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                debug!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        showoff_core::tune_socket(&stream);
        let prelude = prelude.clone();
        let handle = handle.clone();
        // The prelude runs inside the connection's task, so the loop never waits on a peer.
        tracker.spawn(
            async move {
                let arrived = prelude.arrive(stream, peer).await;
                handle(arrived).await;
            }
            .instrument(span(peer)),
        );
    }
}
