//! The forwarding side of streams: every instance of a cluster listens on the TCP and UDP
//! ports the other instances hold (it *mirrors* them), so one L4 balancer in front of all
//! instances reaches every tunnel. A visitor on a mirrored TCP port, or a TLS passthrough
//! visitor whose name another instance holds, is carried one hop to the holder; a mirrored
//! UDP port sends its datagrams there over one link and answers its visitors from its own
//! socket.
//!
//! [`Mirrors::run`] follows the registry's port leases (woken by cluster events, and every
//! [`RESYNC_EVERY`] in case one was missed): a port another instance holds is bound here; a
//! port nobody else holds any more is let go. When a tunnel of this instance takes a mirrored
//! port (its client moved here), [`PortMirrors::take`] hands the bound socket over, visitors
//! waiting in its backlog included.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use showoff_core::{LeaseKey, TunnelStream, splice};
use showoff_proto::datagram::MAX_UDP_PAYLOAD;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::opening::{Opening, StreamKind};
use super::{ClusterEdge, Unopened, datagrams};
use crate::control::PortMirrors;
use crate::edge::EdgeContext;
use crate::listen::Arrived;
use crate::state::ports::{PortPlan, PublicSocket};

/// How often the port leases are listed even without an event.
pub(crate) const RESYNC_EVERY: Duration = Duration::from_secs(2);
/// How long a mirrored UDP port waits before dialling its holder again after a failure.
const REDIAL_AFTER: Duration = Duration::from_millis(500);
/// Datagrams waiting to go over one UDP link.
const LINK_QUEUE: usize = 1024;

/// One mirrored port: its task, which gives the socket back when stopped.
struct Mirrored {
    stop: CancellationToken,
    task: JoinHandle<Option<PublicSocket>>,
}

/// The ports this instance mirrors.
pub(crate) struct Mirrors {
    ctx: Arc<EdgeContext>,
    cluster: Arc<ClusterEdge>,
    tcp: PortPlan,
    udp: PortPlan,
    held: Mutex<HashMap<LeaseKey, Mirrored>>,
}

impl Mirrors {
    pub(crate) fn new(
        ctx: Arc<EdgeContext>,
        cluster: Arc<ClusterEdge>,
        tcp: PortPlan,
        udp: PortPlan,
    ) -> Self {
        Self {
            ctx,
            cluster,
            tcp,
            udp,
            held: Mutex::default(),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<LeaseKey, Mirrored>> {
        // Each critical section is a few map operations and no await: nothing is left
        // half-done by a panic.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Follows the cluster's port leases until the server drains.
    pub(crate) async fn run(self: Arc<Self>) {
        let changes = self.cluster.registry.port_changes();
        let draining = self.ctx.drain.draining().clone();
        loop {
            self.resync().await;
            let changed = async {
                match &changes {
                    Some(notify) => notify.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = draining.cancelled() => break,
                _ = changed => {}
                _ = tokio::time::sleep(RESYNC_EVERY) => {}
            }
        }
        for (_, mirrored) in self.held().drain() {
            mirrored.stop.cancel();
        }
    }

    /// Binds the ports other instances hold and lets go of those they no longer hold. A
    /// registry that does not answer changes nothing.
    async fn resync(&self) {
        let leases = match self.cluster.registry.port_leases().await {
            Ok(leases) => leases,
            Err(error) => return debug!(%error, "port leases not listed; mirrors unchanged"),
        };
        let remote: HashSet<LeaseKey> = leases
            .into_iter()
            .filter(|lease| *lease.instance != *self.cluster.instance)
            .map(|lease| lease.key)
            .collect();
        let mut held = self.held();
        held.retain(|key, mirrored| {
            let keep = remote.contains(key) && !mirrored.task.is_finished();
            if !keep {
                mirrored.stop.cancel();
                debug!(%key, "port no longer mirrored");
            }
            keep
        });
        for key in remote {
            if held.contains_key(&key) {
                continue;
            }
            if let Some(mirrored) = self.start(&key) {
                held.insert(key, mirrored);
            }
        }
    }

    /// Binds `key`'s port here and starts serving it; `None` when it is in use here.
    fn start(&self, key: &LeaseKey) -> Option<Mirrored> {
        let socket = match key {
            LeaseKey::Port(port) => self.tcp.bind_port(*port),
            LeaseKey::UdpPort(port) => self.udp.bind_port(*port),
            LeaseKey::Name(_) => return None,
        };
        let Some(socket) = socket else {
            debug!(%key, "a port another instance holds is in use here: not mirrored");
            return None;
        };
        info!(%key, "mirroring a port another instance holds");
        let stop = CancellationToken::new();
        let (ctx, cluster) = (self.ctx.clone(), self.cluster.clone());
        let task = match socket {
            PublicSocket::Tcp(listener) => self.ctx.drain.tasks().spawn(mirror_tcp(
                listener,
                key.clone(),
                stop.clone(),
                ctx,
                cluster,
            )),
            PublicSocket::Udp(socket) => {
                let udp = UdpMirror {
                    key: key.clone(),
                    link: None,
                    redial_at: Instant::now(),
                    ctx,
                    cluster,
                };
                self.ctx.drain.tasks().spawn(udp.run(socket, stop.clone()))
            }
        };
        Some(Mirrored { stop, task })
    }
}

#[async_trait::async_trait]
impl PortMirrors for Mirrors {
    async fn take(&self, key: &LeaseKey) -> Option<PublicSocket> {
        let mirrored = self.held().remove(key)?;
        mirrored.stop.cancel();
        let socket = mirrored.task.await.ok().flatten();
        if socket.is_some() {
            info!(%key, "a mirrored port is handed to a tunnel of this instance");
        }
        socket
    }
}

/// Carries `opening` to the instance holding its key: one fresh lookup and one more try
/// when the first holder answers that it no longer holds it. Counted as forwarded.
pub(crate) async fn open_at_holder(
    cluster: &ClusterEdge,
    opening: &Opening,
    ctx: &EdgeContext,
) -> Result<TunnelStream, Unopened> {
    let stats = &ctx.stats.cluster;
    let mut looked_again = false;
    loop {
        let addr = match cluster.locate(&opening.key).await {
            Ok(Some(addr)) => addr,
            Ok(None) => return Err(Unopened::NotHere),
            Err(_) => {
                stats.forwarded("peer_unreachable");
                return Err(Unopened::Unreachable);
            }
        };
        let unopened = match cluster.open_stream(&addr, opening).await {
            Ok(stream) => {
                stats.forwarded("ok");
                return Ok(stream);
            }
            Err(unopened) => unopened,
        };
        match unopened {
            Unopened::NotHere if !looked_again => {
                looked_again = true;
                cluster.registry.forget(&opening.key);
                continue;
            }
            Unopened::NotHere => stats.forwarded("not_here"),
            Unopened::Unreachable => stats.forwarded("peer_unreachable"),
            Unopened::Terminate => {}
        }
        return Err(unopened);
    }
}

/// Accepts visitors on a mirrored TCP port until stopped; gives the listener back.
async fn mirror_tcp(
    listener: TcpListener,
    key: LeaseKey,
    stop: CancellationToken,
    ctx: Arc<EdgeContext>,
    cluster: Arc<ClusterEdge>,
) -> Option<PublicSocket> {
    let draining = ctx.drain.draining().clone();
    let until = {
        let stop = stop.clone();
        async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = draining.cancelled() => {}
            }
        }
    };
    let (prelude, tracker) = (ctx.prelude.clone(), ctx.drain.visitors().clone());
    let span_key = key.to_string();
    let span = move |peer: SocketAddr| tracing::info_span!("visitor", %peer, mirrored = %span_key);
    let handle =
        move |arrived: Arrived| forward_tcp(arrived, key.clone(), ctx.clone(), cluster.clone());
    let listener = crate::listen::serve(listener, until, prelude, tracker, span, handle).await;
    Some(PublicSocket::Tcp(listener))
}

/// One visitor of a mirrored TCP port, spliced to the holder.
async fn forward_tcp(
    arrived: Arrived,
    key: LeaseKey,
    ctx: Arc<EdgeContext>,
    cluster: Arc<ClusterEdge>,
) {
    let Ok(mut arrival) = arrived else {
        return; // a PROXY header the policy refused: closed
    };
    let _gauge = ctx.visitor_gauge();
    let opening = Opening {
        kind: StreamKind::Tcp,
        key,
        visitor: arrival.peer,
    };
    let Ok(mut stream) = open_at_holder(&cluster, &opening, &ctx).await else {
        return debug!(visitor = %arrival.peer, key = %opening.key, "mirrored visitor closed: no holder answers");
    };
    if !arrival.prefix.is_empty() && stream.write_all(&arrival.prefix).await.is_err() {
        return;
    }
    tokio::select! {
        _ = splice(&mut arrival.stream, &mut stream) => {}
        _ = ctx.drain.stopping().cancelled() => {}
    }
}

/// A mirrored UDP port: its visitors' datagrams go to the holder over one link, the
/// holder's answers leave from this socket.
struct UdpMirror {
    key: LeaseKey,
    link: Option<UdpLink>,
    /// No dial before this instant (the last one failed).
    redial_at: Instant,
    ctx: Arc<EdgeContext>,
    cluster: Arc<ClusterEdge>,
}

/// The two queues of a live link; its task moves frames between them and the stream.
struct UdpLink {
    frames: mpsc::Sender<Bytes>,
    answers: mpsc::Receiver<(SocketAddr, Bytes)>,
}

impl UdpMirror {
    async fn run(mut self, socket: UdpSocket, stop: CancellationToken) -> Option<PublicSocket> {
        let draining = self.ctx.drain.draining().clone();
        let mut buf = vec![0u8; MAX_UDP_PAYLOAD + 1];
        loop {
            let answer = async {
                match self.link.as_mut() {
                    Some(link) => link.answers.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = draining.cancelled() => break,
                answer = answer => match answer {
                    Some((visitor, payload)) => self.answer(&socket, visitor, &payload),
                    None => self.link = None,
                },
                received = socket.recv_from(&mut buf) => match received {
                    Ok((len, visitor)) => self.forward(&buf[..len], visitor).await,
                    Err(error) => debug!(%error, "udp receive failed"),
                },
            }
        }
        Some(PublicSocket::Udp(socket))
    }

    fn answer(&self, socket: &UdpSocket, visitor: SocketAddr, payload: &[u8]) {
        let stats = &self.ctx.stats.udp;
        match showoff_core::send_now(socket, payload, Some(visitor)) {
            Ok(_) => stats.outbound(payload.len()),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                stats.dropped("socket_full")
            }
            Err(_) => stats.dropped("closed"),
        }
    }

    /// Sends one visitor datagram to the holder, dialling it first when there is no link.
    async fn forward(&mut self, payload: &[u8], visitor: SocketAddr) {
        let mut frame = BytesMut::new();
        if datagrams::encode(visitor, payload, &mut frame).is_err() {
            return self.ctx.stats.udp.dropped("too_large");
        }
        if self
            .link
            .as_ref()
            .is_none_or(|link| link.frames.is_closed())
        {
            self.link = self.dial(visitor).await;
        }
        let Some(link) = &self.link else {
            return self.ctx.stats.udp.dropped("closed");
        };
        if link.frames.try_send(frame.freeze()).is_err() {
            self.ctx.stats.udp.dropped("queue_full");
        }
    }

    async fn dial(&mut self, visitor: SocketAddr) -> Option<UdpLink> {
        if Instant::now() < self.redial_at {
            return None;
        }
        let opening = Opening {
            kind: StreamKind::Udp,
            key: self.key.clone(),
            visitor,
        };
        let Ok(stream) = open_at_holder(&self.cluster, &opening, &self.ctx).await else {
            self.redial_at = Instant::now() + REDIAL_AFTER;
            debug!(key = %self.key, "no holder answers for a mirrored UDP port");
            return None;
        };
        let (frames, outgoing) = mpsc::channel(LINK_QUEUE);
        let (replies, answers) = mpsc::channel(LINK_QUEUE);
        let stopping = self.ctx.drain.stopping().clone();
        self.ctx.drain.tasks().spawn(async move {
            tokio::select! {
                _ = carry(stream, outgoing, replies) => {}
                _ = stopping.cancelled() => {}
            }
        });
        Some(UdpLink { frames, answers })
    }
}

/// Moves frames from `outgoing` onto the link and the holder's frames into `replies`, until
/// either side ends.
async fn carry(
    stream: TunnelStream,
    mut outgoing: mpsc::Receiver<Bytes>,
    replies: mpsc::Sender<(SocketAddr, Bytes)>,
) {
    let (mut from, mut to) = tokio::io::split(stream);
    let send = async {
        while let Some(frame) = outgoing.recv().await {
            if to.write_all(&frame).await.is_err() {
                return;
            }
        }
    };
    let receive = async {
        let mut buf = BytesMut::new();
        loop {
            while let Ok(Some(answer)) = datagrams::decode(&mut buf) {
                // A full queue drops the answer, as the UDP path does everywhere.
                let _ = replies.try_send(answer);
            }
            if datagrams::decode(&mut buf).is_err() {
                return;
            }
            buf.reserve(64 * 1024);
            match from.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        _ = send => {}
        _ = receive => {}
    }
}
