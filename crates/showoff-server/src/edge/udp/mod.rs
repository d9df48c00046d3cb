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

mod index;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use showoff_core::{DatagramDrop, Exchange, FlowTable, Protocol};
use showoff_proto::datagram::{self, Datagram, FlowOpen, MAX_UDP_PAYLOAD};
use tokio::net::UdpSocket;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::debug;

use crate::control::UdpTunnels;
use crate::edge::EdgeContext;
use crate::state::Tunnel;
use crate::transport::datagrams::DatagramPath;
use index::{Visited, VisitorIndex};

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
}

async fn serve_tunnel(
    socket: UdpSocket,
    tunnel: Arc<Tunnel>,
    path: DatagramPath,
    ctx: Arc<EdgeContext>,
) {
    let udp = ctx.settings.udp;
    let mut relay = Relay {
        flows: FlowTable::new(udp.flows_per_tunnel, udp.flow_idle, ctx.flow_budget.clone()),
        by_visitor: VisitorIndex::default(),
        next: 1,
        epoch: Instant::now(),
        out: BytesMut::new(),
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
                Ok((len, visitor)) => relay.inbound(&buf[..len], visitor),
                // ICMP errors surface as failed receives on some systems: keep serving.
                Err(error) => debug!(%error, "udp receive failed"),
            },
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
    /// A visitor's datagram: its flow found or opened, then sent towards the client.
    fn inbound(&mut self, payload: &[u8], visitor: SocketAddr) {
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
        };
        self.flows
            .insert(flow_id, flow, now)
            .map_err(|refused| refused.as_str())?;
        self.next += 1;
        self.by_visitor.insert(visitor, flow_id, &self.flows);
        self.ctx.stats.udp.flow_opened();
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
mod tests {
    use super::*;
    use showoff_core::{DatagramQueue, FlowBudget};
    use showoff_proto::VisitorRules;
    use tokio::sync::mpsc;

    use crate::state::access::Access;
    use crate::state::tunnel::tests::tunnel;

    struct Rig {
        relay: Relay,
        /// What the relay sent towards the client.
        sent: Arc<DatagramQueue>,
        budget: Arc<FlowBudget>,
    }

    /// A relay of tunnel `dns` in slot 3, its socket on loopback, its path an in-memory queue.
    async fn relay_rig(cap: usize, max_datagram: usize, access: Access) -> Rig {
        let ctx = crate::edge::tests::context();
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let sent = Arc::new(DatagramQueue::new(64, 1 << 20, max_datagram));
        let (_answers_tx, answers) = mpsc::channel(8);
        let budget = FlowBudget::new(100);
        let mut tunnel = tunnel("dns", "s1", "alice");
        tunnel.access = access;
        let relay = Relay {
            socket,
            tunnel: Arc::new(tunnel),
            path: DatagramPath {
                link: sent.clone(),
                answers,
                slot: 3,
            },
            flows: FlowTable::new(cap, Duration::from_secs(120), budget.clone()),
            by_visitor: VisitorIndex::default(),
            next: 1,
            epoch: Instant::now(),
            out: BytesMut::new(),
            ctx,
        };
        Rig {
            relay,
            sent,
            budget,
        }
    }

    fn sent(rig: &Rig) -> Option<Datagram> {
        rig.sent
            .try_pop()
            .map(|bytes| Datagram::decode(bytes).expect("well formed"))
    }

    fn counted(rig: &Rig, sample: &str) -> bool {
        let text = rig.relay.ctx.stats.encode().expect("metrics");
        text.lines().any(|line| line == sample)
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("addr")
    }

    #[tokio::test]
    async fn a_first_datagram_opens_its_flow_and_answers_reach_their_visitor() {
        let mut rig = relay_rig(10, 65_000, Access::default()).await;
        let visitor = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let from = visitor.local_addr().expect("addr");
        rig.relay.inbound(b"query", from);
        let Some(Datagram::Data {
            flow,
            open: Some(open),
            payload,
        }) = sent(&rig)
        else {
            panic!("expected a datagram with its flow's open header");
        };
        assert_eq!(flow & 0xff, 3, "the slot is the low byte");
        assert_eq!((open.tunnel.as_str(), open.visitor), ("dns", from));
        assert_eq!(&payload[..], b"query");
        rig.relay.inbound(b"again", from);
        assert!(
            matches!(sent(&rig), Some(Datagram::Data { open: Some(_), flow: f, .. }) if f == flow),
            "open until the client answered"
        );
        rig.relay.answer(Datagram::Data {
            flow,
            open: None,
            payload: "answer".into(),
        });
        let mut buf = [0u8; 64];
        let (len, source) = visitor.recv_from(&mut buf).await.expect("answer");
        assert_eq!(&buf[..len], b"answer");
        assert_eq!(source, rig.relay.socket.local_addr().expect("addr"));
        rig.relay.inbound(b"third", from);
        assert!(matches!(
            sent(&rig),
            Some(Datagram::Data { open: None, .. })
        ));
        assert!(counted(&rig, "showoff_udp_flows_opened_total 1"));
        assert!(counted(
            &rig,
            r#"showoff_udp_datagrams_total{direction="in"} 3"#
        ));
        assert!(counted(
            &rig,
            r#"showoff_udp_datagrams_total{direction="out"} 1"#
        ));
    }

    #[tokio::test]
    async fn caps_ip_rules_and_the_path_limit_drop_and_count_without_truncating() {
        let mut rig = relay_rig(2, 100, Access::default()).await;
        rig.relay.inbound(b"a", addr("127.0.0.1:1001"));
        rig.relay.inbound(b"b", addr("127.0.0.1:1002"));
        rig.relay.inbound(b"c", addr("127.0.0.1:1003"));
        assert_eq!(rig.relay.flows.len(), 2);
        assert!(counted(
            &rig,
            r#"showoff_udp_drops_total{reason="tunnel_flows_full"} 1"#
        ));
        while sent(&rig).is_some() {}
        rig.relay.inbound(&[7u8; 200], addr("127.0.0.1:1001"));
        assert!(sent(&rig).is_none(), "nothing of it was sent");
        assert!(counted(
            &rig,
            r#"showoff_udp_drops_total{reason="too_large"} 1"#
        ));
        let rules = VisitorRules {
            deny_ips: vec!["127.0.0.0/8".into()],
            ..VisitorRules::default()
        };
        let mut denied = relay_rig(10, 65_000, Access::parse(&rules).expect("rules")).await;
        denied.relay.inbound(b"x", addr("127.0.0.1:2000"));
        assert!(sent(&denied).is_none());
        assert!(denied.relay.flows.is_empty());
        assert!(counted(
            &denied,
            r#"showoff_udp_drops_total{reason="ip_forbidden"} 1"#
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_flows_end_with_a_close_and_answered_ones_stay() {
        let mut rig = relay_rig(10, 65_000, Access::default()).await;
        let (quiet, busy) = (addr("127.0.0.1:3001"), addr("127.0.0.1:3002"));
        rig.relay.inbound(b"q", quiet);
        rig.relay.inbound(b"b", busy);
        let busy_flow = rig
            .relay
            .by_visitor
            .get(busy, &rig.relay.flows)
            .expect("flow");
        let quiet_flow = rig
            .relay
            .by_visitor
            .get(quiet, &rig.relay.flows)
            .expect("flow");
        while sent(&rig).is_some() {}
        tokio::time::advance(Duration::from_secs(100)).await;
        rig.relay.answer(Datagram::Data {
            flow: busy_flow,
            open: None,
            payload: "a".into(),
        });
        tokio::time::advance(Duration::from_secs(30)).await;
        rig.relay.sweep();
        assert_eq!(sent(&rig), Some(Datagram::Close { flow: quiet_flow }));
        assert_eq!(rig.relay.flows.len(), 1);
        assert_eq!(rig.relay.by_visitor.get(quiet, &rig.relay.flows), None);
        assert_eq!(rig.relay.by_visitor.len(), rig.relay.flows.len());
        assert!(counted(
            &rig,
            r#"showoff_udp_flows_ended_total{reason="idle"} 1"#
        ));
        // A visitor back after its flow ended gets a new flow, announced again.
        rig.relay.inbound(b"back", quiet);
        assert!(matches!(
            sent(&rig),
            Some(Datagram::Data { open: Some(_), flow, .. }) if flow != quiet_flow
        ));
    }

    #[tokio::test]
    async fn closes_are_idempotent_and_a_closed_tunnel_frees_every_flow() {
        let mut rig = relay_rig(10, 65_000, Access::default()).await;
        for port in 4001..4006 {
            rig.relay.inbound(b"x", addr(&format!("127.0.0.1:{port}")));
        }
        let flow = rig
            .relay
            .by_visitor
            .get(addr("127.0.0.1:4001"), &rig.relay.flows)
            .expect("flow");
        rig.relay.answer(Datagram::Close { flow });
        rig.relay.answer(Datagram::Close { flow });
        assert!(counted(
            &rig,
            r#"showoff_udp_flows_ended_total{reason="client_closed"} 1"#
        ));
        rig.relay.answer(Datagram::Data {
            flow,
            open: None,
            payload: "late".into(),
        });
        assert!(counted(
            &rig,
            r#"showoff_udp_drops_total{reason="unknown_flow"} 1"#
        ));
        assert_eq!(rig.budget.used(), 4);
        rig.relay.inbound(b"again", addr("127.0.0.1:4001"));
        let reopened = rig
            .relay
            .by_visitor
            .get(addr("127.0.0.1:4001"), &rig.relay.flows);
        assert!(
            reopened.is_some_and(|id| id != flow),
            "a closed flow's visitor opens a new one"
        );
        assert_eq!(rig.budget.used(), 5);
        let (stats, budget) = (rig.relay.ctx.stats.clone(), rig.budget.clone());
        rig.relay.end();
        assert_eq!(budget.used(), 0, "no flow outlives its tunnel");
        assert_eq!(stats.snapshot().udp_flows_active, 0);
    }

    #[test]
    fn a_flow_spanning_the_offsets_wrap_keeps_its_exact_duration() {
        let epoch = Instant::now();
        let opened = epoch + Duration::from_millis(u64::from(u32::MAX) - 5);
        let ended = opened + Duration::from_millis(20);
        let elapsed = millis_since(epoch, ended).wrapping_sub(millis_since(epoch, opened));
        assert_eq!(elapsed, 20);
    }
}
