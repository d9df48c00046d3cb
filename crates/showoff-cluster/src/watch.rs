//! The task each [`RedisRegistry`](crate::RedisRegistry) runs beside its calls: it keeps a
//! subscription to the cluster's events channel (each message drops one cached lookup) and
//! asks Redis `PING` every [`PING_EVERY`], so [`Health`] knows whether Redis answers even
//! when no lease changes; the ping also keeps this instance's peer listener announced, and a
//! new announcement is written at once. While the subscription is down, or a ping goes
//! unanswered, nothing is cached; it reconnects with a backoff of up to [`MAX_BACKOFF`].

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use redis::Client;
use redis::aio::ConnectionManager;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cache::LookupCache;

/// How often Redis is asked whether it answers.
pub const PING_EVERY: Duration = Duration::from_secs(1);
/// The longest wait between two attempts to subscribe again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Whether Redis answered the last call, and if not, why; and when it last answered.
#[derive(Debug)]
pub struct Health {
    state: Mutex<HealthState>,
}

#[derive(Debug)]
struct HealthState {
    /// Why the last call failed; `None` when it succeeded.
    problem: Option<String>,
    /// When a call last got its answer (or the registry was made).
    last_answer: std::time::Instant,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            state: Mutex::new(HealthState {
                problem: None,
                last_answer: std::time::Instant::now(),
            }),
        }
    }
}

impl Health {
    /// Healthy until a call fails.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A call got its answer.
    pub fn answered(&self) {
        let recovered = {
            let mut state = self.state();
            state.last_answer = std::time::Instant::now();
            state.problem.take()
        };
        if let Some(reason) = recovered {
            info!(was = %reason, "the cluster's Redis answers again");
        }
    }

    /// A call failed for `reason`.
    pub fn failed(&self, reason: &str) {
        let before = self.state().problem.replace(reason.to_string());
        if before.is_none() {
            warn!(%reason, "the cluster's Redis does not answer");
        }
    }

    /// Why the last call failed; `None` when it succeeded.
    pub fn problem(&self) -> Option<String> {
        self.state().problem.clone()
    }

    /// How long since Redis last answered, while the last call failed; `None` while calls
    /// succeed. Counted from the last answer, not the first failure: leases renewed before
    /// it lapse on that clock.
    pub fn silent_for(&self) -> Option<std::time::Duration> {
        let state = self.state();
        state.problem.as_ref().map(|_| state.last_answer.elapsed())
    }
}

/// This instance's announced peer listener, kept in Redis by the watch task.
#[derive(Debug, Default)]
pub(crate) struct Announcement {
    addr: Mutex<Option<String>>,
    /// Wakes the watch task to write a new address at once rather than at its next ping (the
    /// other instances cannot forward here until it is written).
    changed: tokio::sync::Notify,
}

impl Announcement {
    pub(crate) fn set(&self, addr: &str) {
        *self.addr.lock().unwrap_or_else(PoisonError::into_inner) = Some(addr.to_string());
        self.changed.notify_one();
    }

    fn get(&self) -> Option<String> {
        self.addr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The watch task's state.
pub(crate) struct Watch {
    pub(crate) client: Client,
    pub(crate) connection: ConnectionManager,
    pub(crate) channel: String,
    pub(crate) cache: Arc<LookupCache>,
    pub(crate) health: Arc<Health>,
    pub(crate) timeout: Duration,
    pub(crate) cancel: CancellationToken,
    /// What to announce, under which key, for how long (milliseconds).
    pub(crate) announcement: Arc<Announcement>,
    pub(crate) instance_key: String,
    /// This instance's name.
    pub(crate) instance: String,
    pub(crate) ttl_ms: u64,
    /// The cluster's key names, to tell port events apart.
    pub(crate) keys: crate::record::Keys,
    /// Woken by every event on a port lease, and on each new subscription (events may have
    /// been missed while there was none).
    pub(crate) ports_changed: Arc<tokio::sync::Notify>,
}

impl Watch {
    /// Subscribes, drops cached keys as events name them, pings; until cancelled.
    pub(crate) async fn run(self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.subscribe().await {
                Ok(mut events) => {
                    backoff = Duration::from_millis(100);
                    self.cache.set_live(true);
                    self.ports_changed.notify_one();
                    debug!(channel = %self.channel, "subscribed to cluster events");
                    let ended = self.follow(&mut events).await;
                    self.cache.set_live(false);
                    if ended.is_none() {
                        return;
                    }
                }
                Err(reason) => {
                    self.health.failed(&reason);
                    debug!(%reason, "cluster events subscription failed");
                }
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn subscribe(&self) -> Result<redis::aio::PubSubStream, String> {
        let attempt = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&self.channel).await?;
            Ok::<_, redis::RedisError>(pubsub.into_on_message())
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(events)) => Ok(events),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    /// Follows `events` until the subscription or a ping fails (`Some`) or the registry is
    /// dropped (`None`).
    async fn follow(&self, events: &mut redis::aio::PubSubStream) -> Option<()> {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let due = tokio::select! {
                _ = self.cancel.cancelled() => return None,
                event = events.next() => match event {
                    Some(message) => {
                        self.event(&message);
                        false
                    }
                    None => {
                        self.health.failed("the events subscription was closed");
                        return Some(());
                    }
                },
                _ = ping.tick() => true,
                // A new announcement is written at once; each ping keeps it alive.
                _ = self.announcement.changed.notified() => true,
            };
            if due && !self.ping().await {
                return Some(());
            }
        }
    }

    /// One cluster event: a key whose cached lookup is dropped.
    fn event(&self, message: &redis::Msg) {
        match message.get_payload::<String>() {
            Ok(key) => {
                if self.keys.leased(&key).is_some_and(|k| k.is_port()) {
                    self.ports_changed.notify_one();
                }
                self.cache.invalidate(&key);
            }
            Err(error) => debug!(%error, "unreadable cluster event"),
        }
    }

    /// Pings (and announces, [`Self::announce`]); false when Redis did not answer (the
    /// subscription is then opened again).
    async fn ping(&self) -> bool {
        match self.announce().await {
            Ok(()) => {
                self.health.answered();
                true
            }
            Err(reason) => {
                self.health.failed(&reason);
                false
            }
        }
    }

    /// Pings Redis, or with a peer listener announced, writes where it is (which answers the
    /// same question and keeps the announcement alive for the lease TTL).
    async fn announce(&self) -> Result<(), String> {
        let mut connection = self.connection.clone();
        let mut pipe = redis::pipe();
        match self.announcement.get() {
            Some(addr) => {
                let until = unix_millis().saturating_add(self.ttl_ms);
                pipe.cmd("SET")
                    .arg(&self.instance_key)
                    .arg(addr)
                    .arg("PX")
                    .arg(self.ttl_ms)
                    .ignore()
                    .cmd("ZADD")
                    .arg(self.keys.instances())
                    .arg(until)
                    .arg(&self.instance)
                    .ignore();
            }
            None => {
                pipe.cmd("PING").ignore();
            }
        }
        let ping = pipe.query_async::<()>(&mut connection);
        match tokio::time::timeout(self.timeout, ping).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}

/// Milliseconds since the Unix epoch (the instances set is scored with them).
pub(crate) fn unix_millis() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_is_counted_from_the_last_answer_and_ends_with_the_next() {
        let health = Health::new();
        assert_eq!(health.silent_for(), None);
        std::thread::sleep(Duration::from_millis(30));
        health.failed("timed out");
        let silent = health.silent_for().expect("silent");
        assert!(
            silent >= Duration::from_millis(30),
            "from the last answer: {silent:?}"
        );
        health.failed("timed out again");
        assert_eq!(health.problem().as_deref(), Some("timed out again"));
        assert!(
            health.silent_for() >= Some(silent),
            "not restarted by a second failure"
        );
        health.answered();
        assert_eq!((health.silent_for(), health.problem()), (None, None));
    }
}
