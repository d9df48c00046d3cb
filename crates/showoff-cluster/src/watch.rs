//! The task each [`RedisRegistry`](crate::RedisRegistry) runs beside its calls: it keeps a
//! subscription to the cluster's events channel (each message drops one cached lookup) and
//! asks Redis `PING` every [`PING_EVERY`], so [`Health`] knows whether Redis answers even
//! when no lease changes. While the subscription is down, or a ping goes unanswered, nothing
//! is cached; it reconnects with a backoff of up to [`MAX_BACKOFF`].

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

/// Whether Redis answered the last call, and if not, why.
#[derive(Debug, Default)]
pub struct Health {
    problem: Mutex<Option<String>>,
}

impl Health {
    /// Healthy until a call fails.
    pub fn new() -> Self {
        Self::default()
    }

    fn problem_slot(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.problem.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A call got its answer.
    pub fn answered(&self) {
        let recovered = self.problem_slot().take();
        if let Some(reason) = recovered {
            info!(was = %reason, "the cluster's Redis answers again");
        }
    }

    /// A call failed for `reason`.
    pub fn failed(&self, reason: &str) {
        let before = self.problem_slot().replace(reason.to_string());
        if before.is_none() {
            warn!(%reason, "the cluster's Redis does not answer");
        }
    }

    /// Why the last call failed; `None` when it succeeded.
    pub fn problem(&self) -> Option<String> {
        self.problem_slot().clone()
    }
}

/// This instance's announced peer listener, kept in Redis by the watch task.
#[derive(Debug, Default)]
pub(crate) struct Announcement {
    addr: Mutex<Option<String>>,
}

impl Announcement {
    pub(crate) fn set(&self, addr: &str) {
        *self.addr.lock().unwrap_or_else(PoisonError::into_inner) = Some(addr.to_string());
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
            tokio::select! {
                _ = self.cancel.cancelled() => return None,
                event = events.next() => match event {
                    Some(message) => match message.get_payload::<String>() {
                        Ok(key) => {
                            if self.keys.leased(&key).is_some_and(|k| k.is_port()) {
                                self.ports_changed.notify_one();
                            }
                            self.cache.invalidate(&key);
                        }
                        Err(error) => debug!(%error, "unreadable cluster event"),
                    },
                    None => {
                        self.health.failed("the events subscription was closed");
                        return Some(());
                    }
                },
                _ = ping.tick() => {
                    if let Err(reason) = self.ping().await {
                        self.health.failed(&reason);
                        return Some(());
                    }
                    self.health.answered();
                }
            }
        }
    }

    /// Pings Redis, or with a peer listener announced, writes where it is (which answers the
    /// same question and keeps the announcement alive for the lease TTL).
    async fn ping(&self) -> Result<(), String> {
        let mut connection = self.connection.clone();
        let mut command = redis::cmd("PING");
        if let Some(addr) = self.announcement.get() {
            command = redis::cmd("SET");
            command
                .arg(&self.instance_key)
                .arg(addr)
                .arg("PX")
                .arg(self.ttl_ms);
        }
        let ping = command.query_async::<String>(&mut connection);
        match tokio::time::timeout(self.timeout, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}
