//! Self-fencing: an instance that cannot reach the cluster's Redis must tell an outage (every
//! instance cut off: keep serving what is up) from a partition (only this one: its leases
//! lapse in Redis and other instances may hand its names to other sessions). Half the lease
//! TTL after Redis last answered, before any lease can lapse (they are renewed every third
//! of it), it asks its peers over the peer links (`redis?`, within an eighth of the TTL). If any of them reaches Redis, this instance is
//! partitioned: it sends every session away (`GoAway`, so clients reconnect to another
//! instance and take their names back there), keeps doing so while it lasts, and `/readyz`
//! answers 503 so the balancer stops sending it visitors. When Redis answers again the fence
//! is lifted. The peers are the instances that announced a peer listener, as last listed
//! while Redis answered.

use std::sync::Arc;
use std::time::Duration;

use showoff_core::Registry;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::edge::peer::ClusterEdge;
use crate::state::Sessions;
use crate::state::partition::Partition;
use crate::stats::Stats;

/// How often the registry's health is looked at.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// How often the peers are listed while Redis answers, and asked while it does not.
const PEERS_EVERY: Duration = Duration::from_secs(1);

/// What the fencing task works with.
pub(super) struct Fencing {
    pub(super) registry: Arc<dyn Registry>,
    pub(super) cluster: Arc<ClusterEdge>,
    pub(super) sessions: Arc<Sessions>,
    pub(super) partition: Arc<Partition>,
    pub(super) stats: Arc<Stats>,
}

impl Fencing {
    /// Watches until `stop`; does nothing for a registry whose leases never lapse.
    pub(super) async fn run(self, stop: CancellationToken) {
        let Some(ttl) = self.registry.ttl() else {
            return;
        };
        // Sessions renew every third of the TTL, so a lease lapses no sooner than two thirds
        // of it after Redis last answered: fencing at half leaves a sixth for the peers.
        let fence_after = ttl / 2;
        let ask_within = (ttl / 8).min(crate::edge::peer::HANDSHAKE_TIMEOUT);
        let mut peers: Vec<String> = Vec::new();
        let mut peers_at: Option<Instant> = None;
        // Whether the peers were asked during this silence (the first time is at once).
        let mut asked_yet = false;
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let due = peers_at.is_none_or(|at| at.elapsed() >= PEERS_EVERY);
            match self.registry.silent_for() {
                None => {
                    asked_yet = false;
                    if self.partition.lift() {
                        self.stats.cluster.partitioned(false);
                        info!("the cluster's Redis answers again: the fence is lifted");
                    }
                    if due {
                        peers_at = Some(Instant::now());
                        if let Ok(listed) = self.registry.instances().await {
                            peers = self.others(listed);
                            self.stats.cluster.peers(peers.len());
                        }
                    }
                }
                Some(silent) if silent >= fence_after => {
                    if let Some(why) = self.partition.reason() {
                        self.sessions.send_away(&why);
                    } else if due || !asked_yet {
                        peers_at = Some(Instant::now());
                        asked_yet = true;
                        self.ask(&peers, silent, ask_within).await;
                    }
                }
                Some(_) => {}
            }
        }
    }

    /// The peer listeners of the instances in `listed` other than this one.
    fn others(&self, listed: Vec<(String, String)>) -> Vec<String> {
        listed
            .into_iter()
            .filter(|(instance, _)| *instance != self.cluster.instance)
            .map(|(_, addr)| addr)
            .collect()
    }

    /// Asks `peers` whether they reach Redis; fences this instance off if one does.
    async fn ask(&self, peers: &[String], silent: Duration, within: Duration) {
        let asked = peers
            .iter()
            .map(|addr| self.cluster.reaches_redis(addr, within));
        let answers = futures_util::future::join_all(asked).await;
        let reached = answers.iter().filter(|a| **a == Some(true)).count();
        if reached == 0 {
            return;
        }
        let why = format!(
            "partitioned: the cluster's Redis has not answered for {silent:.1?} while {reached} of {} peers reach it",
            peers.len()
        );
        if self.partition.fence(&why) {
            self.stats.cluster.partitioned(true);
            let sent = self.sessions.send_away(&why);
            warn!(
                sessions = sent,
                "{why}: every session sent to another instance"
            );
        }
    }
}
