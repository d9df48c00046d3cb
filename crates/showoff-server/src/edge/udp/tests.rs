//! Unit tests of the UDP relay, over a loopback socket and in-memory paths.

use super::*;
use showoff_core::{DatagramQueue, FlowBudget};
use showoff_proto::VisitorRules;

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
        peers: mpsc::channel(1).1,
        spans: Default::default(),
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
    rig.relay.inbound(b"query", from, None);
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
    rig.relay.inbound(b"again", from, None);
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
    rig.relay.inbound(b"third", from, None);
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
    rig.relay.inbound(b"a", addr("127.0.0.1:1001"), None);
    rig.relay.inbound(b"b", addr("127.0.0.1:1002"), None);
    rig.relay.inbound(b"c", addr("127.0.0.1:1003"), None);
    assert_eq!(rig.relay.flows.len(), 2);
    assert!(counted(
        &rig,
        r#"showoff_udp_drops_total{reason="tunnel_flows_full"} 1"#
    ));
    while sent(&rig).is_some() {}
    rig.relay.inbound(&[7u8; 200], addr("127.0.0.1:1001"), None);
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
    denied.relay.inbound(b"x", addr("127.0.0.1:2000"), None);
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
    rig.relay.inbound(b"q", quiet, None);
    rig.relay.inbound(b"b", busy, None);
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
    rig.relay.inbound(b"back", quiet, None);
    assert!(matches!(
        sent(&rig),
        Some(Datagram::Data { open: Some(_), flow, .. }) if flow != quiet_flow
    ));
}

#[tokio::test]
async fn closes_are_idempotent_and_a_closed_tunnel_frees_every_flow() {
    let mut rig = relay_rig(10, 65_000, Access::default()).await;
    for port in 4001..4006 {
        rig.relay
            .inbound(b"x", addr(&format!("127.0.0.1:{port}")), None);
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
    rig.relay.inbound(b"again", addr("127.0.0.1:4001"), None);
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
