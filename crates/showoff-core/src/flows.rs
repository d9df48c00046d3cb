//! The UDP flow table both sides keep: flows by id with their last activity, a hard cap per
//! table (one tunnel's flows) and a budget shared by every table of the process, idle expiry,
//! and a close that is idempotent. A table gives its flows back to the budget when it is
//! dropped, so a session that ends leaks none. Pure bookkeeping: the caller passes the time,
//! so it is tested without sockets or clocks.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How often a table with idle timeout `idle` should be swept: a quarter of it, within 1 to
/// 30 s, so a flow ends at most a quarter late and a sweep never runs more than once a second.
pub fn sweep_period(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// The process-wide cap on flows, shared by every table.
#[derive(Debug)]
pub struct FlowBudget {
    limit: usize,
    used: AtomicUsize,
}

impl FlowBudget {
    /// A budget of `limit` flows.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    fn try_take(&self) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used < self.limit).then_some(used + 1)
            })
            .is_ok()
    }

    fn give_back(&self, flows: usize) {
        self.used.fetch_sub(flows, Ordering::AcqRel);
    }

    /// Flows held now, across every table.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// Why a new flow was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FlowRefused {
    /// The tunnel holds its cap of flows.
    #[error("the tunnel has its maximum of flows")]
    TunnelFull,
    /// The process holds its cap of flows.
    #[error("the server has its maximum of flows")]
    GlobalFull,
}

impl FlowRefused {
    /// Stable label for metrics (`showoff_udp_drops_total{reason}`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TunnelFull => "tunnel_flows_full",
            Self::GlobalFull => "flows_full",
        }
    }
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    last: Instant,
}

/// One tunnel's flows.
#[derive(Debug)]
pub struct FlowTable<V> {
    entries: HashMap<u64, Entry<V>>,
    cap: usize,
    idle: Duration,
    budget: Arc<FlowBudget>,
}

impl<V> FlowTable<V> {
    /// A table of at most `cap` flows, each expiring after `idle` without a datagram, drawing
    /// on `budget`.
    pub fn new(cap: usize, idle: Duration, budget: Arc<FlowBudget>) -> Self {
        Self {
            entries: HashMap::new(),
            cap,
            idle,
            budget,
        }
    }

    /// Adds flow `flow`, or says which cap refused it. An id already present is replaced
    /// without drawing on the budget again.
    pub fn insert(&mut self, flow: u64, value: V, now: Instant) -> Result<&mut V, FlowRefused> {
        if !self.entries.contains_key(&flow) {
            if self.entries.len() >= self.cap {
                return Err(FlowRefused::TunnelFull);
            }
            if !self.budget.try_take() {
                return Err(FlowRefused::GlobalFull);
            }
        }
        let entry = self
            .entries
            .entry(flow)
            .or_insert(Entry { value, last: now });
        entry.last = now;
        Ok(&mut entry.value)
    }

    /// Flow `flow`, leaving its activity as it was.
    pub fn get(&self, flow: u64) -> Option<&V> {
        self.entries.get(&flow).map(|entry| &entry.value)
    }

    /// Flow `flow`, marked active at `now`.
    pub fn touch(&mut self, flow: u64, now: Instant) -> Option<&mut V> {
        let entry = self.entries.get_mut(&flow)?;
        entry.last = now;
        Some(&mut entry.value)
    }

    /// Ends flow `flow`; `None` when it was not there (a second close changes nothing).
    pub fn remove(&mut self, flow: u64) -> Option<V> {
        let entry = self.entries.remove(&flow)?;
        self.budget.give_back(1);
        Some(entry.value)
    }

    /// Marks active at `now` every flow for which `active` says so (activity seen elsewhere,
    /// such as answers a flow's own task relayed since the last sweep).
    pub fn refresh(&mut self, now: Instant, mut active: impl FnMut(&V) -> bool) {
        for entry in self.entries.values_mut() {
            if active(&entry.value) {
                entry.last = now;
            }
        }
    }

    /// Ends and returns every flow idle for the table's idle timeout at `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<(u64, V)> {
        let idle = self.idle;
        let stale: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.last) >= idle)
            .map(|(&flow, _)| flow)
            .collect();
        stale
            .into_iter()
            .filter_map(|flow| self.remove(flow).map(|v| (flow, v)))
            .collect()
    }

    /// Ends and returns every flow (the tunnel closed).
    pub fn drain(&mut self) -> Vec<(u64, V)> {
        let flows: Vec<(u64, V)> = self.entries.drain().map(|(f, e)| (f, e.value)).collect();
        self.budget.give_back(flows.len());
        flows
    }

    /// Flows held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table holds no flow.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<V> Drop for FlowTable<V> {
    fn drop(&mut self) {
        self.budget.give_back(self.entries.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(cap: usize, budget: &Arc<FlowBudget>) -> FlowTable<&'static str> {
        FlowTable::new(cap, Duration::from_secs(120), budget.clone())
    }

    #[test]
    fn caps_per_table_and_across_tables() {
        let budget = FlowBudget::new(3);
        let now = Instant::now();
        let mut a = table(2, &budget);
        let mut b = table(5, &budget);
        a.insert(1, "a1", now).expect("room");
        a.insert(2, "a2", now).expect("room");
        assert_eq!(a.insert(3, "a3", now), Err(FlowRefused::TunnelFull));
        a.insert(2, "a2 again", now)
            .expect("a known flow is no new flow");
        b.insert(1, "b1", now).expect("room");
        assert_eq!(b.insert(2, "b2", now), Err(FlowRefused::GlobalFull));
        assert_eq!(budget.used(), 3);
        assert_eq!(a.remove(1), Some("a1"));
        assert_eq!(a.remove(1), None, "a second close changes nothing");
        assert_eq!(budget.used(), 2);
        b.insert(2, "b2", now).expect("the budget has room again");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_flows_expire_and_active_ones_stay() {
        let budget = FlowBudget::new(10);
        let mut flows = table(10, &budget);
        flows.insert(1, "quiet", Instant::now()).expect("room");
        flows.insert(2, "busy", Instant::now()).expect("room");
        tokio::time::advance(Duration::from_secs(100)).await;
        assert!(flows.touch(2, Instant::now()).is_some());
        assert!(flows.expire(Instant::now()).is_empty());
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(flows.expire(Instant::now()), vec![(1, "quiet")]);
        assert_eq!(flows.len(), 1);
        tokio::time::advance(Duration::from_secs(100)).await;
        assert_eq!(flows.expire(Instant::now()), vec![(2, "busy")]);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn activity_seen_elsewhere_keeps_a_flow() {
        let budget = FlowBudget::new(10);
        let mut flows = table(10, &budget);
        flows.insert(1, "answered", Instant::now()).expect("room");
        flows.insert(2, "silent", Instant::now()).expect("room");
        tokio::time::advance(Duration::from_secs(100)).await;
        flows.refresh(Instant::now(), |v| *v == "answered");
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(flows.expire(Instant::now()), vec![(2, "silent")]);
        assert_eq!(flows.len(), 1);
    }

    #[test]
    fn a_dropped_or_drained_table_gives_its_flows_back() {
        let budget = FlowBudget::new(10);
        let now = Instant::now();
        let mut flows = table(10, &budget);
        for flow in 0..4 {
            flows.insert(flow, "f", now).expect("room");
        }
        assert_eq!(flows.drain().len(), 4);
        assert_eq!(budget.used(), 0);
        for flow in 0..6 {
            flows.insert(flow, "f", now).expect("room");
        }
        drop(flows);
        assert_eq!(budget.used(), 0, "a session's end leaks no flow");
    }
}
