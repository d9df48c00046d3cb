//! The server's lifecycle: starting → ready → draining → stopped, as one cheap handle
//! ([`Drain`]) every layer holds instead of the tokens themselves.
//!
//! Two cancellation tokens and three task trackers: `drain` (stop accepting, say `GoAway`, let
//! keep-alive visitors go) and `stop` (everything ends); `tasks` (data connections, accept
//! loops, background jobs), `sessions` (clients' control sessions) and `visitors` (what the
//! drain waits for). [`Drain::run`] is the whole procedure: cancel `drain`; in a cluster, give
//! the clients up to the handover to move their sessions to another instance (the peer
//! listener keeps serving the visitors the others forward meanwhile); wait for visitors within
//! the grace; cancel `stop`, wait briefly for the rest, and report whether it was clean.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// Longest the server waits for background tasks after the hard stop.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// How the drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// True when every in-flight visitor finished within the grace period.
    pub clean: bool,
}

/// The lifecycle handle; clones share one lifecycle.
#[derive(Clone, Default)]
pub(crate) struct Drain {
    drain: CancellationToken,
    stop: CancellationToken,
    tasks: TaskTracker,
    sessions: TaskTracker,
    visitors: TaskTracker,
    ready: Arc<AtomicBool>,
    leaving: Arc<AtomicBool>,
}

impl Drain {
    /// Cancelled when the drain begins.
    pub(crate) fn draining(&self) -> &CancellationToken {
        &self.drain
    }

    /// Whether the drain has begun.
    pub(crate) fn is_draining(&self) -> bool {
        self.drain.is_cancelled()
    }

    /// Whether the server is on its way out: in the pre-drain delay or draining. Readiness
    /// says 503 and responses say `Connection: close` from then on.
    pub(crate) fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::Acquire) || self.is_draining()
    }

    /// Cancelled when everything must end.
    pub(crate) fn stopping(&self) -> &CancellationToken {
        &self.stop
    }

    /// Sessions, data connections, accept loops, background jobs. (Upstream connections are
    /// not tasks: they belong to the visitor task using them, or idle in their tunnel's pool.)
    pub(crate) fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Control sessions: in a cluster, the drain waits a while for their clients to move.
    pub(crate) fn sessions(&self) -> &TaskTracker {
        &self.sessions
    }

    /// Visitor connections: what the drain waits for.
    pub(crate) fn visitors(&self) -> &TaskTracker {
        &self.visitors
    }

    /// Every listener accepts: `/readyz` may say ready.
    pub(crate) fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Whether the server has started serving.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Waits out `delay` as not ready but still serving, drains within `grace` (sessions get up
    /// to `handover` of it to end, as their clients move elsewhere), then stops everything;
    /// says whether visitors finished in time.
    pub(crate) async fn run(
        &self,
        delay: Duration,
        grace: Duration,
        handover: Duration,
    ) -> DrainReport {
        self.leaving.store(true, Ordering::Release);
        if !delay.is_zero() {
            info!(
                delay_ms = delay.as_millis() as u64,
                "not ready; draining after the delay"
            );
            tokio::time::sleep(delay).await;
        }
        info!(grace_secs = grace.as_secs(), "draining");
        self.drain.cancel();
        self.visitors.close();
        self.sessions.close();
        let waits = async {
            if !handover.is_zero()
                && tokio::time::timeout(handover, self.sessions.wait())
                    .await
                    .is_err()
            {
                info!(
                    sessions = self.sessions.len(),
                    "sessions still here after the handover; stopping them"
                );
            }
            self.visitors.wait().await;
        };
        let clean = tokio::time::timeout(grace, waits).await.is_ok();
        self.stop.cancel();
        self.tasks.close();
        let rest = async {
            self.tasks.wait().await;
            self.sessions.wait().await;
        };
        if tokio::time::timeout(STOP_WAIT, rest).await.is_err() {
            warn!("background tasks did not stop in time");
        }
        if clean {
            info!("drain finished cleanly");
        } else {
            warn!(
                cut = self.visitors.len(),
                "drain cut short: visitors still connected after the grace period"
            );
        }
        DrainReport { clean }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_drain_waits_for_visitors_then_stops_the_rest() {
        let drain = Drain::default();
        let d = drain.clone();
        drain.visitors().spawn(async move {
            d.draining().cancelled().await;
            tokio::time::sleep(Duration::from_secs(3)).await;
        });
        let d = drain.clone();
        drain
            .tasks()
            .spawn(async move { d.stopping().cancelled().await });
        assert!(!drain.is_draining());
        let report = drain
            .run(Duration::ZERO, Duration::from_secs(10), Duration::ZERO)
            .await;
        assert!(report.clean, "the visitor finished inside the grace");
        assert!(drain.is_draining() && drain.stopping().is_cancelled());
        assert!(
            drain.tasks().is_empty(),
            "background tasks ended at the stop"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_visitor_past_the_grace_makes_the_drain_unclean() {
        let drain = Drain::default();
        let d = drain.clone();
        drain.visitors().spawn(async move {
            d.stopping().cancelled().await;
        });
        let started = tokio::time::Instant::now();
        let report = drain
            .run(Duration::ZERO, Duration::from_secs(5), Duration::ZERO)
            .await;
        assert!(!report.clean);
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(5),
            "cut at the grace"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_pre_drain_delay_comes_first_and_serves_on() {
        let drain = Drain::default();
        let run = tokio::spawn({
            let drain = drain.clone();
            async move {
                drain
                    .run(
                        Duration::from_secs(5),
                        Duration::from_secs(1),
                        Duration::ZERO,
                    )
                    .await
            }
        });
        tokio::task::yield_now().await;
        assert!(
            drain.is_leaving() && !drain.is_draining(),
            "leaving, still accepting"
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(run.await.expect("joined").clean);
        assert!(drain.is_draining());
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_get_the_handover_to_move_and_are_stopped_after_it() {
        let drain = Drain::default();
        let d = drain.clone();
        // A client that moves 300 ms into the drain.
        drain.sessions().spawn(async move {
            d.draining().cancelled().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        });
        let started = tokio::time::Instant::now();
        let handover = Duration::from_secs(5);
        let report = drain
            .run(Duration::ZERO, Duration::from_secs(30), handover)
            .await;
        assert!(report.clean);
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(300),
            "no longer than the move"
        );
        // A client that never moves: stopped at the end of the handover.
        let drain = Drain::default();
        let d = drain.clone();
        drain
            .sessions()
            .spawn(async move { d.stopping().cancelled().await });
        let started = tokio::time::Instant::now();
        let report = drain
            .run(Duration::ZERO, Duration::from_secs(30), handover)
            .await;
        assert!(report.clean, "a session is not a visitor");
        assert_eq!(started.elapsed(), handover);
        assert!(drain.sessions().is_empty(), "stopped");
    }

    #[test]
    fn readiness_is_a_latch() {
        let drain = Drain::default();
        assert!(!drain.is_ready());
        drain.clone().mark_ready();
        assert!(drain.is_ready());
    }
}
