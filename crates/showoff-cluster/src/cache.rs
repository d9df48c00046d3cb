//! A short local cache of lease lookups, so a busy instance does not ask Redis once per
//! visitor. An entry lives for the cache's TTL at most and is dropped as soon as a cluster
//! event names its key; while the event subscription is down nothing is cached, since no
//! event could drop a stale entry. A lookup that raced an event is not cached: each lookup
//! takes a ticket first, and an event in between voids it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use showoff_core::Lease;
use tokio::time::Instant;

/// Entries kept at most; past it, expired ones are dropped and, if that is not enough, new
/// ones are not cached.
pub const MAX_ENTRIES: usize = 65_536;

/// What a lookup may start with: the cache's state when it began.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

/// Lookups by Redis key.
#[derive(Debug)]
pub struct LookupCache {
    ttl: Duration,
    live: AtomicBool,
    /// Bumped by every event, so lookups in flight across it are not cached.
    changes: AtomicU64,
    entries: Mutex<HashMap<String, (Option<Lease>, Instant)>>,
}

impl LookupCache {
    /// A cache whose entries live `ttl` at most (zero: nothing is cached); it caches only
    /// once [`set_live`](Self::set_live) says events arrive.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            live: AtomicBool::new(false),
            changes: AtomicU64::new(0),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Option<Lease>, Instant)>> {
        // Each critical section is one map operation: a panic cannot leave it half-done.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached lookup of `key` (`Some(None)`: cached as free), or `None` on a miss.
    pub fn get(&self, key: &str, now: Instant) -> Option<Option<Lease>> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        let entries = self.entries();
        let (lease, at) = entries.get(key)?;
        (now.saturating_duration_since(*at) < self.ttl).then(|| lease.clone())
    }

    /// Taken before asking Redis; hand it to [`put`](Self::put) with the answer.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.changes.load(Ordering::Acquire))
    }

    /// Caches the answer for `key`, unless an event came since `ticket` or events do not
    /// arrive.
    pub fn put(&self, key: &str, lease: Option<Lease>, ticket: Ticket, now: Instant) {
        if self.ttl.is_zero() || !self.live.load(Ordering::Acquire) {
            return;
        }
        let mut entries = self.entries();
        if self.changes.load(Ordering::Acquire) != ticket.0 {
            return;
        }
        if entries.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            entries.retain(|_, (_, at)| now.saturating_duration_since(*at) < ttl);
            if entries.len() >= MAX_ENTRIES {
                return;
            }
        }
        entries.insert(key.to_string(), (lease, now));
    }

    /// An event named `key`: its entry goes, and lookups in flight are not cached.
    pub fn invalidate(&self, key: &str) {
        let mut entries = self.entries();
        self.changes.fetch_add(1, Ordering::AcqRel);
        entries.remove(key);
    }

    /// Whether events arrive; when they stop, everything cached goes.
    pub fn set_live(&self, live: bool) {
        let mut entries = self.entries();
        self.changes.fetch_add(1, Ordering::AcqRel);
        self.live.store(live, Ordering::Release);
        if !live {
            entries.clear();
        }
    }

    /// Entries held (expired ones included until they are swept).
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use showoff_core::{LeaseKey, Owner};

    use super::*;

    fn lease(generation: u64) -> Lease {
        Lease {
            key: LeaseKey::Name("demo".into()),
            owner: Owner {
                principal: "alice".into(),
                session: "s1".into(),
            },
            instance: Arc::from("node-a"),
            generation,
        }
    }

    fn live(ttl: Duration) -> LookupCache {
        let cache = LookupCache::new(ttl);
        cache.set_live(true);
        cache
    }

    #[tokio::test(start_paused = true)]
    async fn an_entry_lives_its_ttl_then_misses() {
        let cache = live(Duration::from_secs(1));
        let now = Instant::now();
        cache.put("k", Some(lease(1)), cache.ticket(), now);
        cache.put("free", None, cache.ticket(), now);
        assert_eq!(cache.get("k", now), Some(Some(lease(1))));
        assert_eq!(cache.get("free", now), Some(None), "free is cached too");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(cache.get("k", Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_drops_its_key_and_voids_lookups_in_flight() {
        let cache = live(Duration::from_secs(5));
        let now = Instant::now();
        cache.put("k", Some(lease(1)), cache.ticket(), now);
        let ticket = cache.ticket();
        cache.invalidate("k");
        assert_eq!(cache.get("k", now), None);
        cache.put("k", Some(lease(1)), ticket, now);
        assert_eq!(cache.get("k", now), None, "an answer older than the event");
        cache.put("k", Some(lease(2)), cache.ticket(), now);
        assert_eq!(cache.get("k", now), Some(Some(lease(2))));
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_cached_while_events_do_not_arrive() {
        let cache = LookupCache::new(Duration::from_secs(5));
        let now = Instant::now();
        cache.put("k", Some(lease(1)), cache.ticket(), now);
        assert!(cache.is_empty(), "not live yet");
        cache.set_live(true);
        cache.put("k", Some(lease(1)), cache.ticket(), now);
        assert_eq!(cache.len(), 1);
        cache.set_live(false);
        assert!(cache.is_empty(), "the subscription dropped: all goes");
        assert_eq!(cache.get("k", now), None);
        let off = live(Duration::ZERO);
        off.put("k", Some(lease(1)), off.ticket(), now);
        assert!(off.is_empty(), "a zero TTL caches nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_cache_sweeps_expired_entries_before_refusing() {
        let cache = live(Duration::from_secs(1));
        let now = Instant::now();
        for i in 0..MAX_ENTRIES {
            cache.put(&format!("k{i}"), None, cache.ticket(), now);
        }
        cache.put("late", None, cache.ticket(), now);
        assert_eq!(cache.get("late", now), None, "full of live entries");
        tokio::time::advance(Duration::from_secs(2)).await;
        let later = Instant::now();
        cache.put("late", None, cache.ticket(), later);
        assert_eq!(cache.get("late", later), Some(None));
        assert_eq!(cache.len(), 1);
    }
}
