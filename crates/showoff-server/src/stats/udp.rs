//! UDP tunnels' metrics: flows open, opened and ended by reason, datagrams and bytes by
//! direction, drops by reason.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{DirectionLabel, ReasonLabel};

/// Metrics of UDP tunnels. The per-datagram counters are kept as handles on their labelled
/// series, so relaying a datagram touches one atomic and no label map.
pub(crate) struct UdpStats {
    pub(crate) flows_active: Gauge,
    flows_opened: Counter,
    flows_ended: Family<ReasonLabel, Counter>,
    datagrams: Family<DirectionLabel, Counter>,
    bytes: Family<DirectionLabel, Counter>,
    drops: Family<ReasonLabel, Counter>,
    datagrams_in: Counter,
    datagrams_out: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
}

/// Why UDP flows end, pre-created so dashboards see zeros.
pub(crate) const UDP_FLOW_ENDS: [&str; 3] = ["idle", "client_closed", "tunnel_closed"];
/// Why UDP datagrams are dropped, pre-created so dashboards see zeros.
pub(crate) const UDP_DROPS: [&str; 10] = [
    "ip_forbidden",
    "rate_limited",
    "tunnel_flows_full",
    "flows_full",
    "too_large",
    "queue_full",
    "closed",
    "socket_full",
    "unknown_flow",
    "malformed",
];

impl Default for UdpStats {
    fn default() -> Self {
        let datagrams: Family<DirectionLabel, Counter> = Family::default();
        let bytes: Family<DirectionLabel, Counter> = Family::default();
        let series = |family: &Family<DirectionLabel, Counter>, direction: &'static str| {
            family.get_or_create_owned(&DirectionLabel { direction })
        };
        let drops: Family<ReasonLabel, Counter> = Family::default();
        for reason in UDP_DROPS {
            let _ = drops.get_or_create(&ReasonLabel { reason });
        }
        let flows_ended: Family<ReasonLabel, Counter> = Family::default();
        for reason in UDP_FLOW_ENDS {
            let _ = flows_ended.get_or_create(&ReasonLabel { reason });
        }
        Self {
            flows_active: Gauge::default(),
            flows_opened: Counter::default(),
            datagrams_in: series(&datagrams, "in"),
            datagrams_out: series(&datagrams, "out"),
            bytes_in: series(&bytes, "in"),
            bytes_out: series(&bytes, "out"),
            flows_ended,
            datagrams,
            bytes,
            drops,
        }
    }
}

impl UdpStats {
    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "udp_flows_active",
            "UDP flows open now (visitor address and tunnel)",
            self.flows_active.clone(),
        );
        r.register(
            "udp_flows_opened",
            "UDP flows opened by a visitor's first datagram",
            self.flows_opened.clone(),
        );
        r.register(
            "udp_flows_ended",
            "UDP flows ended, by reason (idle, client_closed, tunnel_closed)",
            self.flows_ended.clone(),
        );
        r.register(
            "udp_datagrams",
            "UDP datagrams relayed: in = from visitors, out = to visitors",
            self.datagrams.clone(),
        );
        r.register(
            "udp_bytes",
            "UDP payload bytes relayed: in = from visitors, out = to visitors",
            self.bytes.clone(),
        );
        r.register(
            "udp_drops",
            "UDP datagrams dropped instead of relayed, by reason",
            self.drops.clone(),
        );
    }

    /// A visitor's first datagram opened a flow.
    pub(crate) fn flow_opened(&self) {
        self.flows_opened.inc();
        self.flows_active.inc();
    }

    /// A flow ended for `reason` (one of [`UDP_FLOW_ENDS`]).
    pub(crate) fn flow_ended(&self, reason: &'static str) {
        self.flows_active.dec();
        self.flows_ended
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// A visitor's datagram of `len` payload bytes went towards the client.
    pub(crate) fn inbound(&self, len: usize) {
        self.datagrams_in.inc();
        self.bytes_in.inc_by(len as u64);
    }

    /// An answer of `len` payload bytes went to its visitor.
    pub(crate) fn outbound(&self, len: usize) {
        self.datagrams_out.inc();
        self.bytes_out.inc_by(len as u64);
    }

    /// A datagram was dropped for `reason` (one of [`UDP_DROPS`]).
    pub(crate) fn dropped(&self, reason: &'static str) {
        self.drops.get_or_create(&ReasonLabel { reason }).inc();
    }
}
