//! UDP tunnels: each tunnel owns one public UDP socket. A *flow* is one visitor address on one
//! tunnel; its first datagram opens it (the tunnel's IP rules, the per-address datagram rate
//! and the flow caps decide), gets a flow id and goes to the client with the visitor's address,
//! so no round trip is needed. The client's answers come back by flow id and leave from the
//! tunnel's socket to that visitor.
//!
//! One task per tunnel owns the socket's receive side, the tunnel's flow table and the path to
//! the client, so nothing here takes a lock per datagram; one timer per tunnel sweeps idle
//! flows. Nothing is truncated and nothing waits: a datagram that does not fit the path, finds
//! a queue full or meets a cap is dropped and counted by reason
//! (`showoff_udp_drops_total{reason}`). Each flow is reported once, when it ends, as an exchange
//! event with its bytes.
//!
//! In a cluster, visitors who reach another instance on this tunnel's port come over a peer
//! link ([`peer_link`]) into the same task, and their flows are answered over that link.

mod index;
mod peer_link;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use showoff_core::trace::Decision;
use showoff_core::{DatagramDrop, Exchange, FlowTable, Protocol};
use showoff_proto::datagram::{self, Datagram, FlowOpen, MAX_UDP_PAYLOAD};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::debug;

use crate::control::UdpTunnels;
use crate::edge::EdgeContext;
use crate::edge::spans;
use crate::state::Tunnel;
use crate::transport::datagrams::DatagramPath;
use index::{Visited, VisitorIndex};
use peer_link::{PeerDatagram, PeerInbox, Replies};
pub(crate) use peer_link::{serve_peer_link, takes_peer_links};

/// The UDP edge, as the control layer starts it for each UDP tunnel.
pub(crate) struct UdpEdge(pub(crate) Arc<EdgeContext>);

impl UdpTunnels for UdpEdge {
    fn serve(&self, socket: UdpSocket, tunnel: Arc<Tunnel>, path: DatagramPath) {
        let ctx = self.0.clone();
        ctx.drain
            .tasks()
            .spawn(serve_tunnel(socket, tunnel, path, ctx.clone()));
    }
}

/// Milliseconds from `epoch` to `now`, modulo 2³² (about 49 days): differences taken with
/// wrapping arithmetic stay exact for any flow shorter than that, however long the relay runs.
fn millis_since(epoch: Instant, now: Instant) -> u32 {
    let millis = now.saturating_duration_since(epoch).as_millis() & u128::from(u32::MAX);
    u32::try_from(millis).unwrap_or_default()
}

/// One visitor address on the tunnel.
struct Flow {
    visitor: SocketAddr,
    /// The client answered, so it knows the flow: later datagrams go without `open`.
    answered: bool,
    /// When the flow's first datagram came, as [`millis_since`] the relay's start (four bytes
    /// where an `Instant` takes sixteen: flows are many and small).
    opened_ms: u32,
    bytes_in: u64,
    bytes_out: u64,
    /// The peer link the visitor came over (it reached another instance of the cluster);
    /// `None`: this instance's socket.
    via: Option<Replies>,
}

impl Visited for Flow {
    fn visitor(&self) -> SocketAddr {
        self.visitor
    }
}

/// A UDP tunnel's relay state, owned by its one task.
struct Relay {
    socket: UdpSocket,
    tunnel: Arc<Tunnel>,
    path: DatagramPath,
    ctx: Arc<EdgeContext>,
    flows: FlowTable<Flow>,
    by_visitor: VisitorIndex,
    /// The next flow's sequence number (the flow id is `seq << 8 | slot`).
    next: u64,
    /// When the relay started; flows keep their start as an offset from it.
    epoch: Instant,
    /// Scratch buffer datagrams are encoded into.
    out: BytesMut,
    /// Datagrams other instances of the cluster took for this tunnel.
    peers: mpsc::Receiver<PeerDatagram>,
    /// Each open flow's span, when tracing is on (empty otherwise: a flow itself stays small).
    spans: HashMap<u64, tracing::Span>,
}

async fn serve_tunnel(
    socket: UdpSocket,
    tunnel: Arc<Tunnel>,
    path: DatagramPath,
    ctx: Arc<EdgeContext>,
) {
    let udp = ctx.settings.udp;
    let (inbox, peers) = mpsc::channel(peer_link::INBOX);
    if let Some(slot) = tunnel.edge_state::<PeerInbox>() {
        let _ = slot.0.set(inbox);
    }
    let mut relay = Relay {
        peers,
        flows: FlowTable::new(udp.flows_per_tunnel, udp.flow_idle, ctx.flow_budget.clone()),
        by_visitor: VisitorIndex::default(),
        next: 1,
        epoch: Instant::now(),
        out: BytesMut::new(),
        spans: HashMap::new(),
        socket,
        tunnel,
        path,
        ctx,
    };
    let (closed, draining) = (
        relay.tunnel.closed.clone(),
        relay.ctx.drain.draining().clone(),
    );
    let mut sweep = tokio::time::interval(showoff_core::sweep_period(udp.flow_idle));
    sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut buf = vec![0u8; MAX_UDP_PAYLOAD + 1];
    loop {
        tokio::select! {
            _ = closed.cancelled() => break,
            _ = draining.cancelled() => break,
            received = relay.socket.recv_from(&mut buf) => match received {
                Ok((len, visitor)) => relay.inbound(&buf[..len], visitor, None),
                // ICMP errors surface as failed receives on some systems: keep serving.
                Err(error) => debug!(%error, "udp receive failed"),
            },
            Some(peer) = relay.peers.recv() => {
                relay.inbound(&peer.payload, peer.visitor, Some(&peer.reply));
            }
            answer = relay.path.answers.recv() => match answer {
                Some(datagram) => relay.answer(datagram),
                None => break,
            },
            _ = sweep.tick() => relay.sweep(),
        }
    }
    relay.end();
}

impl Relay {
    /// A visitor's datagram, that came to this instance's socket (`via` is `None`) or over a
    /// peer link: its flow found or opened, then sent towards the client.
    fn inbound(&mut self, payload: &[u8], visitor: SocketAddr, via: Option<&Replies>) {
        let now = Instant::now();
        if !self.ctx.limits.datagram(visitor.ip()) {
            return self.ctx.stats.udp.dropped("rate_limited");
        }
        let flow_id = match self.by_visitor.get(visitor, &self.flows) {
            Some(flow_id) => flow_id,
            None => match self.open(visitor, now) {
                Ok(flow_id) => flow_id,
                Err(reason) => return self.ctx.stats.udp.dropped(reason),
            },
        };
        let stats = &self.ctx.stats.udp;
        let Some(flow) = self.flows.touch(flow_id, now) else {
            return stats.dropped("unknown_flow");
        };
        let moved = match (&flow.via, via) {
            (Some(old), Some(new)) => !old.same_channel(new),
            (None, None) => false,
            _ => true,
        };
        if moved {
            // The visitor's datagrams come another way now (another instance, or a new link):
            // answers follow them.
            flow.via = via.cloned();
        }
        let open = (!flow.answered).then(|| FlowOpen {
            tunnel: self.tunnel.info.name.clone(),
            visitor,
        });
        let max = self.path.link.max_datagram();
        let len = Datagram::header_len(flow_id, open.as_ref()) + payload.len();
        if len > max {
            debug!(%visitor, len, max, "udp datagram larger than the path carries: dropped");
            return stats.dropped(DatagramDrop::TooLarge { len, max }.as_str());
        }
        self.out.clear();
        if datagram::encode_data(flow_id, open.as_ref(), payload, &mut self.out).is_err() {
            return stats.dropped("malformed");
        }
        match self.path.link.send(self.out.split().freeze()) {
            Ok(()) => {
                flow.bytes_in += payload.len() as u64;
                stats.inbound(payload.len());
                self.tunnel.touch();
            }
            Err(drop) => stats.dropped(drop.as_str()),
        }
    }

    /// Opens a flow for `visitor`, or names the rule that refused it.
    fn open(&mut self, visitor: SocketAddr, now: Instant) -> Result<u64, &'static str> {
        if !self.tunnel.access.ip_allowed(visitor.ip()) {
            debug!(%visitor, tunnel = %self.tunnel.info.name, "udp visitor refused by the tunnel's IP rules");
            return Err("ip_forbidden");
        }
        let flow_id = (self.next << 8) | u64::from(self.path.slot);
        let flow = Flow {
            visitor,
            answered: false,
            opened_ms: millis_since(self.epoch, now),
            bytes_in: 0,
            bytes_out: 0,
            via: None,
        };
        self.flows
            .insert(flow_id, flow, now)
            .map_err(|refused| refused.as_str())?;
        self.next += 1;
        self.by_visitor.insert(visitor, flow_id, &self.flows);
        self.ctx.stats.udp.flow_opened();
        let trace = &self.ctx.settings.trace;
        if trace.enabled && Decision::root(trace.sample, None).sampled() {
            let span = spans::flow(&self.tunnel.info.name, visitor, flow_id);
            self.spans.insert(flow_id, span);
        }
        Ok(flow_id)
    }

    /// A datagram from the client: an answer to send to its visitor, or a flow's close.
    fn answer(&mut self, datagram: Datagram) {
        let stats = &self.ctx.stats.udp;
        match datagram {
            Datagram::Data { flow, payload, .. } => {
                let Some(entry) = self.flows.touch(flow, Instant::now()) else {
                    return stats.dropped("unknown_flow");
                };
                entry.answered = true;
                if let Some(link) = &entry.via {
                    let len = payload.len();
                    return match link.try_send((entry.visitor, payload)) {
                        Ok(()) => {
                            entry.bytes_out += len as u64;
                            stats.outbound(len);
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => stats.dropped("queue_full"),
                        Err(mpsc::error::TrySendError::Closed(_)) => stats.dropped("closed"),
                    };
                }
                match showoff_core::send_now(&self.socket, &payload, Some(entry.visitor)) {
                    Ok(_) => {
                        entry.bytes_out += payload.len() as u64;
                        stats.outbound(payload.len());
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                        stats.dropped("socket_full")
                    }
                    Err(error) => {
                        debug!(%error, visitor = %entry.visitor, "udp send to the visitor failed");
                        stats.dropped("closed");
                    }
                }
            }
            Datagram::Close { flow } => {
                if let Some(ended) = self.flows.remove(flow) {
                    self.ended(flow, ended, "client_closed");
                }
            }
        }
    }

    /// Ends every flow idle past the timeout, telling the client.
    fn sweep(&mut self) {
        for (flow, ended) in self.flows.expire(Instant::now()) {
            self.out.clear();
            if (Datagram::Close { flow }).encode(&mut self.out).is_ok() {
                // Lost or dropped, the client's own idle sweep ends the flow a little later.
                let _ = self.path.link.send(self.out.split().freeze());
            }
            self.ended(flow, ended, "idle");
        }
    }

    /// The tunnel closed or the server drains: every flow ends.
    fn end(mut self) {
        for (flow, ended) in self.flows.drain() {
            self.ended(flow, ended, "tunnel_closed");
        }
    }

    fn ended(&mut self, id: u64, flow: Flow, reason: &'static str) {
        self.by_visitor.remove(flow.visitor, id);
        if let Some(span) = self.spans.remove(&id) {
            span.record("showoff.bytes_in", showoff_core::trace::int(flow.bytes_in));
            span.record(
                "showoff.bytes_out",
                showoff_core::trace::int(flow.bytes_out),
            );
            span.record("showoff.end_reason", reason);
        }
        self.ctx.stats.udp.flow_ended(reason);
        self.ctx.exchanges.emit(&Exchange {
            protocol: Protocol::Udp,
            tunnel: Some(&self.tunnel.info.name),
            visitor: flow.visitor.ip(),
            http: None,
            status: None,
            error: None,
            bytes_in: flow.bytes_in,
            bytes_out: flow.bytes_out,
            duration: Duration::from_millis(u64::from(
                millis_since(self.epoch, Instant::now()).wrapping_sub(flow.opened_ms),
            )),
        });
    }
}

#[cfg(test)]
mod tests;
