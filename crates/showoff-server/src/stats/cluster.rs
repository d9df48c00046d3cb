//! Cluster metrics: requests forwarded one hop to the instance holding their tunnel, by
//! result, and requests other instances forwarded here, with the peer links refused; the
//! peers this instance knows and whether it fenced itself off.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// How a forwarded request ended, pre-created so dashboards see zeros: answered by the peer,
/// the peer no longer held the tunnel, even after one fresh look (404), or the peer did not
/// answer (502). A request for a name no instance holds is not forwarded and not counted.
pub(crate) const FORWARD_RESULTS: [&str; 3] = ["ok", "not_here", "peer_unreachable"];

/// Metrics of the cluster's peer links.
#[derive(Default)]
pub(crate) struct ClusterStats {
    forwarded: Family<ResultLabel, Counter>,
    served: Counter,
    refused: Counter,
    peers: Gauge,
    partitioned: Gauge,
    fenced: Counter,
}

impl ClusterStats {
    pub(super) fn register(&self, r: &mut Registry) {
        for result in FORWARD_RESULTS {
            let _ = self.forwarded.get_or_create(&ResultLabel { result });
        }
        r.register(
            "cluster_forwarded",
            "Visitor requests forwarded one hop to the instance holding their tunnel, by result",
            self.forwarded.clone(),
        );
        r.register(
            "cluster_peer_requests",
            "Visitor requests other instances forwarded to this one",
            self.served.clone(),
        );
        r.register(
            "cluster_peer_refused",
            "Peer connections refused for a wrong or missing proof of the cluster secret",
            self.refused.clone(),
        );
        r.register(
            "cluster_peers",
            "Other instances this one knows a peer listener of (asked before it fences itself off)",
            self.peers.clone(),
        );
        r.register(
            "cluster_partitioned",
            "1 while this instance cannot reach the cluster's Redis that its peers reach, and has sent its sessions away",
            self.partitioned.clone(),
        );
        r.register(
            "cluster_fenced",
            "Times this instance fenced itself off its cluster",
            self.fenced.clone(),
        );
    }

    /// This instance knows `count` other instances.
    pub(crate) fn peers(&self, count: usize) {
        self.peers.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// This instance fenced itself off (`true`) or rejoined (`false`).
    pub(crate) fn partitioned(&self, partitioned: bool) {
        self.partitioned.set(i64::from(partitioned));
        if partitioned {
            self.fenced.inc();
        }
    }

    /// A request was forwarded and ended with `result` (one of [`FORWARD_RESULTS`]).
    pub(crate) fn forwarded(&self, result: &'static str) {
        self.forwarded.get_or_create(&ResultLabel { result }).inc();
    }

    /// Another instance forwarded a request here.
    pub(crate) fn served(&self) {
        self.served.inc();
    }

    /// A peer connection failed its proof.
    pub(crate) fn refused(&self) {
        self.refused.inc();
    }
}
