//! UDP tunnels, client side. The server's first datagram of a flow names the tunnel and the
//! visitor; the client opens one local UDP socket per flow, connected to the tunnel's target,
//! so the target's answers come back on that socket and go to the right visitor.
//!
//! Each UDP tunnel of a session has one flow handler task ([`Flows`]) that owns its flow table
//! (caps, idle expiry, one sweep timer) and one answer task per flow reading the flow's socket.
//! Datagrams arrive as QUIC DATAGRAM frames ([`serve_quic`]: one reader per connection hands
//! them out by the slot in the flow id's low byte) or on a datagram channel stream
//! ([`serve_channel`]). Nothing waits and nothing is truncated: what a socket, queue or path
//! cannot take now is dropped and logged.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use showoff_core::{
    DatagramLink, DatagramQueue, FlowBudget, FlowTable, carry_channel, quic::QuicDatagrams,
};
use showoff_proto::datagram::{self, Datagram, FlowOpen, MAX_HEADER, MAX_UDP_PAYLOAD};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, warn};

use crate::config::CONNECT_TIMEOUT;
use crate::transport::ServerStream;

/// Flows one UDP tunnel keeps at once; a new flow past it is refused with `close`.
pub const FLOWS_PER_TUNNEL: usize = 4_096;
/// Flows one session keeps at once across its UDP tunnels.
pub const FLOWS_PER_SESSION: usize = 65_536;
/// How much longer than the server's idle timeout the client keeps a silent flow: the server
/// ends idle flows and says so; this only catches a `close` that was lost.
pub const IDLE_GRACE: Duration = Duration::from_secs(30);
/// The idle timeout assumed when the server did not say (the server's default).
pub const DEFAULT_FLOW_IDLE: Duration = Duration::from_secs(120);
/// Datagrams waiting for a tunnel's flow handler.
const INBOUND_QUEUE: usize = 4_096;

/// Where one UDP tunnel's datagrams go.
#[derive(Debug)]
pub(crate) struct UdpTarget {
    /// `host:port` of the local UDP service.
    pub(crate) addr: String,
    /// Put a PROXY v2 `DGRAM` header naming the visitor in front of each datagram.
    pub(crate) proxy_protocol: bool,
}

/// A session's UDP tunnels and the limits their flows share.
pub(crate) struct UdpTunnels {
    /// Tunnel name → target.
    pub(crate) targets: HashMap<String, Arc<UdpTarget>>,
    /// A silent flow ends after this.
    pub(crate) idle: Duration,
    pub(crate) budget: Arc<FlowBudget>,
}

impl UdpTunnels {
    /// The session's UDP tunnels, with flows idling out `IDLE_GRACE` after the server's.
    pub(crate) fn new(targets: HashMap<String, Arc<UdpTarget>>, server_idle: Option<u32>) -> Self {
        let idle = server_idle.map_or(DEFAULT_FLOW_IDLE, |secs| Duration::from_secs(secs.into()));
        Self {
            targets,
            idle: idle + IDLE_GRACE,
            budget: FlowBudget::new(FLOWS_PER_SESSION),
        }
    }

    /// Starts the flow handler of `target` answering through `link`; its queue of datagrams.
    fn spawn(&self, target: Arc<UdpTarget>, link: Arc<dyn DatagramLink>) -> mpsc::Sender<Datagram> {
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        let flows = Flows {
            table: FlowTable::new(FLOWS_PER_TUNNEL, self.idle, self.budget.clone()),
            target,
            resolved: None,
            link,
        };
        tokio::spawn(flows.run(rx, showoff_core::sweep_period(self.idle)));
        tx
    }
}

/// The largest UDP payload a path whose datagrams are at most `max_datagram` bytes carries
/// whole for any tunnel name and visitor address.
pub fn payload_limit(max_datagram: usize) -> usize {
    max_datagram.saturating_sub(MAX_HEADER).min(MAX_UDP_PAYLOAD)
}

/// The payload limit of a session's UDP tunnels on `connection` (QUIC), or on a datagram
/// channel (any UDP payload).
pub(crate) fn session_payload_limit(connection: Option<&quinn::Connection>) -> usize {
    match connection {
        Some(connection) => payload_limit(connection.max_datagram_size().unwrap_or(0)),
        None => MAX_UDP_PAYLOAD,
    }
}

/// Carries one datagram channel (mux stream, QUIC stream or dial-back data connection) for
/// `target` until it or the session ends; its flows end with it.
pub(crate) async fn serve_channel(
    udp: &UdpTunnels,
    target: Arc<UdpTarget>,
    stream: ServerStream,
    prefix: BytesMut,
    stop: &tokio_util::sync::CancellationToken,
) {
    let queue = Arc::new(DatagramQueue::for_channel());
    let flows = udp.spawn(target, queue.clone());
    let deliver = |datagram| {
        if flows.try_send(datagram).is_err() {
            debug!("udp datagram dropped: the flow handler is behind");
        }
    };
    tokio::select! {
        end = carry_channel(stream, prefix, &queue, deliver) => debug!(%end, "datagram channel ended"),
        _ = stop.cancelled() => {}
    }
    queue.close();
}

/// Hands the datagrams of a QUIC session's connection to their tunnels' flow handlers, until
/// the connection ends.
pub(crate) async fn serve_quic(udp: Arc<UdpTunnels>, connection: quinn::Connection) {
    let link: Arc<dyn DatagramLink> = Arc::new(QuicDatagrams(connection.clone()));
    let mut slots: HashMap<u8, mpsc::Sender<Datagram>> = HashMap::new();
    while let Ok(bytes) = connection.read_datagram().await {
        let Ok(datagram) = Datagram::decode(bytes) else {
            debug!("a malformed datagram from the server was dropped");
            continue;
        };
        let (flow, slot) = (datagram.flow(), (datagram.flow() & 0xff) as u8);
        if !slots.contains_key(&slot)
            && let Datagram::Data {
                open: Some(open), ..
            } = &datagram
            && let Some(target) = udp.targets.get(&open.tunnel)
        {
            slots.insert(slot, udp.spawn(target.clone(), link.clone()));
        }
        match slots.get(&slot) {
            Some(flows) => {
                if flows.try_send(datagram).is_err() {
                    debug!("udp datagram dropped: the flow handler is behind");
                }
            }
            None => close(&*link, flow),
        }
    }
}

/// Tells the server flow `flow` is unknown or over here.
fn close(link: &dyn DatagramLink, flow: u64) {
    if let Ok(bytes) = (Datagram::Close { flow }).to_bytes() {
        let _ = link.send(bytes);
    }
}

/// One local flow: its socket towards the target and the task reading the target's answers.
struct Flow {
    socket: Arc<UdpSocket>,
    /// The PROXY v2 header sent in front of each datagram, when the tunnel asks for one.
    header: Option<Bytes>,
    /// Set by the answer task; the sweep counts it as activity.
    answered: Arc<AtomicBool>,
    answers: AbortHandle,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.answers.abort();
    }
}

/// One UDP tunnel's flows on one datagram path.
struct Flows {
    target: Arc<UdpTarget>,
    resolved: Option<SocketAddr>,
    link: Arc<dyn DatagramLink>,
    table: FlowTable<Flow>,
}

impl Flows {
    async fn run(mut self, mut inbound: mpsc::Receiver<Datagram>, sweep_every: Duration) {
        let mut sweep = tokio::time::interval(sweep_every);
        sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                datagram = inbound.recv() => match datagram {
                    Some(datagram) => self.on_datagram(datagram).await,
                    None => break,
                },
                _ = sweep.tick() => self.sweep(),
            }
        }
        // Every socket and answer task goes with the table.
        self.table.drain();
    }

    async fn on_datagram(&mut self, datagram: Datagram) {
        let now = Instant::now();
        match datagram {
            Datagram::Data {
                flow,
                open,
                payload,
            } => {
                if self.table.touch(flow, now).is_none() {
                    let Some(open) = open else {
                        // A flow this side forgot (a new channel, an expiry): the server
                        // opens it afresh on the visitor's next datagram.
                        return close(&*self.link, flow);
                    };
                    if let Err(reason) = self.open(flow, &open, now).await {
                        debug!(flow, reason, "udp flow not opened");
                        return close(&*self.link, flow);
                    }
                }
                if let Some(entry) = self.table.touch(flow, now) {
                    send_to_target(entry, &payload);
                }
            }
            Datagram::Close { flow } => {
                self.table.remove(flow);
            }
        }
    }

    /// Opens flow `flow` for the visitor `open` names: a socket connected to the target, and
    /// its answer task.
    async fn open(&mut self, flow: u64, open: &FlowOpen, now: Instant) -> Result<(), String> {
        let target = self.resolve().await?;
        let socket = connect(target).map_err(|e| format!("udp socket to {target}: {e}"))?;
        let socket = Arc::new(socket);
        let header = self
            .target
            .proxy_protocol
            .then(|| Bytes::from(crate::proxy_header::encode_datagram(open.visitor, target)));
        let answered = Arc::new(AtomicBool::new(false));
        let answers = tokio::spawn(answer(
            socket.clone(),
            flow,
            self.link.clone(),
            answered.clone(),
        ))
        .abort_handle();
        let entry = Flow {
            socket,
            header,
            answered,
            answers,
        };
        self.table
            .insert(flow, entry, now)
            .map(|_| ())
            .map_err(|refused| refused.to_string())
    }

    /// The target's address, looked up once (again after a failure).
    async fn resolve(&mut self) -> Result<SocketAddr, String> {
        if let Some(addr) = self.resolved {
            return Ok(addr);
        }
        let addr = &self.target.addr;
        let found = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host(addr.as_str()))
            .await
            .map_err(|_| format!("looking up {addr} timed out"))?
            .map_err(|e| format!("looking up {addr} failed: {e}"))?
            .next()
            .ok_or_else(|| format!("{addr} has no address"))?;
        self.resolved = Some(found);
        Ok(found)
    }

    /// Ends silent flows (answers count as activity) and tells the server.
    fn sweep(&mut self) {
        let now = Instant::now();
        self.table
            .refresh(now, |flow| flow.answered.swap(false, Ordering::Relaxed));
        for (flow, _) in self.table.expire(now) {
            close(&*self.link, flow);
        }
    }
}

/// Receive buffer asked for on each flow's socket, so a burst of answers waits in the kernel
/// rather than being lost (the default holds about a hundred small datagrams); the kernel
/// caps it at `net.core.rmem_max` and charges only what is queued.
const FLOW_SOCKET_BUFFER: usize = 1 << 20;

/// A non-blocking UDP socket connected to `target`, from an ephemeral port of its family.
fn connect(target: SocketAddr) -> std::io::Result<UdpSocket> {
    let local = match target {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let domain = socket2::Domain::for_address(target);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, None)?;
    // Best effort: a capped buffer still works.
    let _ = socket.set_recv_buffer_size(FLOW_SOCKET_BUFFER);
    socket.bind(&local.into())?;
    socket.connect(&target.into())?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

/// Sends a visitor's datagram to the target, behind the PROXY header when there is one.
fn send_to_target(flow: &Flow, payload: &[u8]) {
    let sent = match &flow.header {
        None => showoff_core::send_now(&flow.socket, payload, None),
        Some(header) => {
            let mut datagram = Vec::with_capacity(header.len() + payload.len());
            datagram.extend_from_slice(header);
            datagram.extend_from_slice(payload);
            showoff_core::send_now(&flow.socket, &datagram, None)
        }
    };
    if let Err(error) = sent {
        debug!(%error, "udp datagram to the target dropped");
    }
}

thread_local! {
    /// Where answers are received before they are encoded: one buffer per worker thread, big
    /// enough for any UDP payload, instead of one per flow.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_UDP_PAYLOAD + 1]);
}

/// Relays the target's answers on flow `flow` to the server until the flow ends.
async fn answer(
    socket: Arc<UdpSocket>,
    flow: u64,
    link: Arc<dyn DatagramLink>,
    answered: Arc<AtomicBool>,
) {
    let mut out = BytesMut::new();
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        let received = SCRATCH.with(|scratch| {
            let mut buf = scratch.borrow_mut();
            let len = socket.try_recv(&mut buf)?;
            out.clear();
            datagram::encode_data(flow, None, &buf[..len], &mut out)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        });
        match received {
            Ok(()) => {
                answered.store(true, Ordering::Relaxed);
                if let Err(drop) = link.send(out.split().freeze()) {
                    debug!(flow, %drop, "udp answer dropped");
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            // The target is not listening (an ICMP error): later datagrams may find it up.
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Err(error) => {
                warn!(flow, %error, "udp flow's socket failed");
                return;
            }
        }
    }
}
