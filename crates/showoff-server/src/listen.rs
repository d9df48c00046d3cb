//! Sockets and arrivals: binding every listener the same way ([`listen`]), the one accept loop
//! every listener runs ([`serve`]), and the one arrival prelude ([`Prelude`]) each accepted
//! connection passes before its handler sees it: socket options, the real peer address (a
//! trusted PROXY header, [`proxy_protocol`]), and bytes read ahead kept for the handler.
//!
//! The prelude is also where connection caps hold ([`ConnectionGate`]): a total and a
//! per-address cap per class of listener (public, control, data), so running out of file
//! descriptors on the public side cannot take the control plane down. Over a cap the
//! connection is closed at once and counted.

pub(crate) mod proxy_protocol;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
    /// The caps of this listener's class; `None`: uncapped.
    pub(crate) gate: Option<Arc<ConnectionGate>>,
}

/// Concurrent connections of one class of listener: a total and a per-address cap (0: off;
/// trusted proxies are exempt from the per-address cap, they carry many visitors).
pub(crate) struct ConnectionGate {
    listener: &'static str,
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    stats: Arc<crate::stats::Stats>,
}

impl ConnectionGate {
    /// The caps of `listener` (`public`, `control`, `data`), counted into `stats`.
    pub(crate) fn new(
        listener: &'static str,
        max_total: usize,
        max_per_ip: usize,
        stats: Arc<crate::stats::Stats>,
    ) -> Arc<Self> {
        Arc::new(Self {
            listener,
            max_total,
            max_per_ip,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            stats,
        })
    }

    fn per_ip(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // One lookup and update per critical section: a panic cannot leave it torn.
        self.per_ip.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot under the total cap, before anything is read from the connection.
    fn enter(self: &Arc<Self>) -> Option<ConnectionSlot> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            self.stats.connection_refused(self.listener, "total");
            return None;
        }
        Some(ConnectionSlot {
            gate: self.clone(),
            ip: None,
        })
    }

    /// Claims `ip`'s share for `slot`; false over the per-address cap.
    fn claim(&self, slot: &mut ConnectionSlot, ip: IpAddr) -> bool {
        if self.max_per_ip == 0 {
            return true;
        }
        let mut per_ip = self.per_ip();
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= self.max_per_ip {
            drop(per_ip);
            self.stats.connection_refused(self.listener, "per_ip");
            return false;
        }
        *count += 1;
        slot.ip = Some(ip);
        true
    }
}

impl std::fmt::Debug for ConnectionGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionGate")
            .field("listener", &self.listener)
            .field("max_total", &self.max_total)
            .field("max_per_ip", &self.max_per_ip)
            .field("total", &self.total.load(Ordering::Relaxed))
            .finish()
    }
}

/// One connection's place under its gate; given back when dropped.
pub(crate) struct ConnectionSlot {
    gate: Arc<ConnectionGate>,
    ip: Option<IpAddr>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.gate.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut per_ip = self.gate.per_ip();
            if let Some(count) = per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

impl Prelude {
    /// A prelude that reads nothing (the data listener), under `gate`.
    pub(crate) fn plain(gate: Option<Arc<ConnectionGate>>) -> Self {
        Self {
            policy: ProxyProtocol::Off,
            proxy: ProxyConfig::default(),
            deadline: Duration::ZERO,
            gate,
        }
    }

    /// The per-address share of an arrival that passed the total cap; `false`: close it.
    fn claim(&self, slot: &mut Option<ConnectionSlot>, arrived: &Arrived) -> bool {
        let (Some(gate), Some(slot), Ok(arrival)) = (&self.gate, slot.as_mut(), arrived) else {
            return true;
        };
        self.proxy.trusts(arrival.peer.ip()) || gate.claim(slot, arrival.peer.ip())
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
/// The listener is given back when `until` completes (a cluster hands a mirrored port over).
pub(crate) async fn serve<H, F>(
    listener: TcpListener,
    until: impl Future<Output = ()>,
    prelude: Prelude,
    tracker: TaskTracker,
    span: impl Fn(SocketAddr) -> Span,
    handle: H,
) -> TcpListener
where
    H: Fn(Arrived) -> F + Clone + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    tokio::pin!(until);
    // Shared, not copied: every connection's task keeps it for its whole life.
    let prelude = Arc::new(prelude);
    loop {
        let accepted = tokio::select! {
            _ = &mut until => return listener,
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
        let mut slot = match &prelude.gate {
            Some(gate) => match gate.enter() {
                Some(slot) => Some(slot),
                None => continue, // over the total cap: closed at once, counted
            },
            None => None,
        };
        showoff_core::tune_socket(&stream);
        let prelude = prelude.clone();
        let handle = handle.clone();
        // The prelude runs inside the connection's task, so the loop never waits on a peer.
        tracker.spawn(
            async move {
                let arrived = prelude.arrive(stream, peer).await;
                if !prelude.claim(&mut slot, &arrived) {
                    return; // over the per-address cap: closed, counted
                }
                // The slot is held for as long as the connection is served.
                handle(arrived).await;
                drop(slot);
            }
            .instrument(span(peer)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_holds_its_caps_and_gives_slots_back() {
        let stats = Arc::new(crate::stats::Stats::new(&Default::default(), 0));
        let gate = ConnectionGate::new("public", 3, 2, stats.clone());
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        let mut a = gate.enter().expect("first");
        let mut b = gate.enter().expect("second");
        let mut c = gate.enter().expect("third");
        assert!(gate.enter().is_none(), "total cap");
        assert!(gate.claim(&mut a, ip) && gate.claim(&mut b, ip));
        assert!(!gate.claim(&mut c, ip), "per-address cap");
        assert!(gate.claim(&mut c, other), "another address has room");
        drop(a);
        let mut d = gate.enter().expect("a slot came back");
        assert!(gate.claim(&mut d, ip), "and its address share");
        drop((b, c, d));
        assert_eq!(gate.total.load(Ordering::Relaxed), 0);
        assert!(gate.per_ip().is_empty(), "no address left behind");
        let text = stats.encode().expect("encode");
        assert!(
            text.contains(
                "showoff_connections_refused_total{listener=\"public\",reason=\"total\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "showoff_connections_refused_total{listener=\"public\",reason=\"per_ip\"} 1"
            ),
            "{text}"
        );
    }
}
