//! Cluster metrics: requests forwarded one hop to the instance holding their tunnel, by
//! result, and requests other instances forwarded here, with the peer links refused.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
