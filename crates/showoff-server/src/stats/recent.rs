//! What each tunnel did over the last minutes, for the admin dashboard: requests (connections
//! for TCP and TLS tunnels, flows for UDP), errors, latency and bytes in 10-second buckets
//! over 5 minutes, from the same exchange events as the Prometheus metrics; and refused
//! sessions by code since the start.
//!
//! A tunnel's buckets exist only while it has traffic in the window (at most
//! [`MAX_TUNNELS`] tunnels, the most recently active kept); each bucket is 300 bytes, so
//! an active tunnel costs about 9 KiB. Recording takes one short lock and no allocation
//! unless the tunnel is new to the window.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use showoff_core::{Exchange, Protocol};

/// Width of one bucket.
pub(crate) const BUCKET: Duration = Duration::from_secs(10);
/// Buckets kept: 5 minutes.
pub(crate) const BUCKETS: usize = 30;
/// Most tunnels the window follows at once.
pub(crate) const MAX_TUNNELS: usize = 1000;
/// Latency buckets: three per doubling from 100 µs, so the last one starts near 200 s.
const LATENCY_BUCKETS: usize = 64;
const LATENCY_FLOOR_US: f64 = 100.0;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Which 10-second period since the start this bucket holds.
    period: u32,
    requests: u32,
    errors: u32,
    bytes_in: u64,
    bytes_out: u64,
    latency: [u32; LATENCY_BUCKETS],
}

impl Bucket {
    const EMPTY: Self = Self {
        period: u32::MAX,
        requests: 0,
        errors: 0,
        bytes_in: 0,
        bytes_out: 0,
        latency: [0; LATENCY_BUCKETS],
    };
}

struct TunnelWindow {
    buckets: Box<[Bucket; BUCKETS]>,
    last: u32,
}

/// The last minutes of every active tunnel.
pub(crate) struct Recent {
    start: Instant,
    tunnels: Mutex<HashMap<String, TunnelWindow>>,
    refused: Mutex<BTreeMap<&'static str, u64>>,
}

/// One tunnel's figures over the window, as the dashboard shows them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TunnelFigures {
    /// Requests per second over the last minute.
    pub rate_1m: f64,
    /// Share of the last minute's requests that failed (5xx or a Showoff error).
    pub error_rate_1m: f64,
    /// Requests in the whole window.
    pub requests_5m: u64,
    /// Median latency over the window, in milliseconds (HTTP).
    pub p50_ms: Option<f64>,
    /// 99th percentile latency over the window, in milliseconds (HTTP).
    pub p99_ms: Option<f64>,
    /// Bytes from visitors over the window.
    pub bytes_in_5m: u64,
    /// Bytes to visitors over the window.
    pub bytes_out_5m: u64,
    /// Requests in each bucket, oldest first (30 × 10 s).
    pub series: Vec<u32>,
    /// Errors in each bucket, oldest first.
    pub error_series: Vec<u32>,
}

fn latency_bucket(duration: Duration) -> usize {
    let us = duration.as_secs_f64() * 1e6;
    if us <= LATENCY_FLOOR_US {
        return 0;
    }
    let index = (3.0 * (us / LATENCY_FLOOR_US).log2()).floor() as usize + 1;
    index.min(LATENCY_BUCKETS - 1)
}

/// The upper bound of a latency bucket, in milliseconds.
fn latency_bound_ms(index: usize) -> f64 {
    LATENCY_FLOOR_US * 2f64.powf(index as f64 / 3.0) / 1000.0
}

impl Recent {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            tunnels: Mutex::new(HashMap::new()),
            refused: Mutex::new(BTreeMap::new()),
        }
    }

    fn tunnels(&self) -> MutexGuard<'_, HashMap<String, TunnelWindow>> {
        self.tunnels.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn period(&self, now: Instant) -> u32 {
        let elapsed = now.saturating_duration_since(self.start);
        (elapsed.as_secs() / BUCKET.as_secs()) as u32
    }

    /// Counts one exchange of a tunnel.
    pub(crate) fn record(&self, exchange: &Exchange<'_>) {
        self.record_at(exchange, Instant::now());
    }

    fn record_at(&self, exchange: &Exchange<'_>, now: Instant) {
        let Some(tunnel) = exchange.tunnel else {
            return;
        };
        let period = self.period(now);
        let mut tunnels = self.tunnels();
        if !tunnels.contains_key(tunnel) {
            if tunnels.len() >= MAX_TUNNELS {
                prune(&mut tunnels, period);
            }
            if tunnels.len() >= MAX_TUNNELS {
                return;
            }
            let window = TunnelWindow {
                buckets: Box::new([Bucket::EMPTY; BUCKETS]),
                last: period,
            };
            tunnels.insert(tunnel.to_string(), window);
        }
        let Some(window) = tunnels.get_mut(tunnel) else {
            return;
        };
        window.last = period;
        let bucket = &mut window.buckets[period as usize % BUCKETS];
        if bucket.period != period {
            *bucket = Bucket {
                period,
                ..Bucket::EMPTY
            };
        }
        bucket.requests += 1;
        let failed = exchange.error.is_some() || exchange.status.is_some_and(|s| s >= 500);
        bucket.errors += u32::from(failed);
        bucket.bytes_in += exchange.bytes_in;
        bucket.bytes_out += exchange.bytes_out;
        if exchange.protocol == Protocol::Http {
            bucket.latency[latency_bucket(exchange.duration)] += 1;
        }
    }

    /// Counts a refused session.
    pub(crate) fn refused(&self, code: &'static str) {
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        *refused.entry(code).or_default() += 1;
    }

    /// Refused sessions by code since the start.
    pub(crate) fn refusals(&self) -> BTreeMap<&'static str, u64> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every tunnel with traffic in the window, with its figures.
    pub(crate) fn figures(&self) -> BTreeMap<String, TunnelFigures> {
        self.figures_at(Instant::now())
    }

    fn figures_at(&self, now: Instant) -> BTreeMap<String, TunnelFigures> {
        let period = self.period(now);
        let mut tunnels = self.tunnels();
        prune(&mut tunnels, period);
        tunnels
            .iter()
            .map(|(name, window)| (name.clone(), figures(window, period, now, self.start)))
            .collect()
    }
}

/// Drops tunnels with nothing in the window.
fn prune(tunnels: &mut HashMap<String, TunnelWindow>, period: u32) {
    tunnels.retain(|_, w| period.saturating_sub(w.last) < BUCKETS as u32);
}

fn figures(window: &TunnelWindow, period: u32, now: Instant, start: Instant) -> TunnelFigures {
    let oldest = period.saturating_sub(BUCKETS as u32 - 1);
    let in_window = |b: &&Bucket| b.period != u32::MAX && b.period >= oldest && b.period <= period;
    let count = |p: u32, f: fn(&Bucket) -> u32| {
        let b = &window.buckets[p as usize % BUCKETS];
        if b.period == p { f(b) } else { 0 }
    };
    // The last minute: the current bucket's elapsed part and the five before it.
    let minute_from = period.saturating_sub(5);
    let (mut requests, mut errors) = (0u64, 0u64);
    for p in minute_from..=period {
        requests += u64::from(count(p, |b| b.requests));
        errors += u64::from(count(p, |b| b.errors));
    }
    let elapsed = now.saturating_duration_since(start).as_secs_f64();
    let span = (elapsed - f64::from(minute_from) * BUCKET.as_secs_f64()).clamp(1.0, 60.0);
    let mut latency = [0u64; LATENCY_BUCKETS];
    let (mut all, mut bytes_in, mut bytes_out) = (0u64, 0u64, 0u64);
    for bucket in window.buckets.iter().filter(in_window) {
        all += u64::from(bucket.requests);
        bytes_in += bucket.bytes_in;
        bytes_out += bucket.bytes_out;
        for (total, n) in latency.iter_mut().zip(bucket.latency) {
            *total += u64::from(n);
        }
    }
    TunnelFigures {
        rate_1m: requests as f64 / span,
        error_rate_1m: if requests == 0 {
            0.0
        } else {
            errors as f64 / requests as f64
        },
        requests_5m: all,
        p50_ms: quantile(&latency, 0.50),
        p99_ms: quantile(&latency, 0.99),
        bytes_in_5m: bytes_in,
        bytes_out_5m: bytes_out,
        series: (oldest..=period)
            .map(|p| count(p, |b| b.requests))
            .collect(),
        error_series: (oldest..=period).map(|p| count(p, |b| b.errors)).collect(),
    }
}

/// The upper bound of the bucket holding quantile `q`; `None` without samples.
fn quantile(latency: &[u64; LATENCY_BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = latency.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (index, n) in latency.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some((latency_bound_ms(index) * 100.0).round() / 100.0);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(tunnel: &str, status: u16, millis: u64) -> Exchange<'_> {
        Exchange {
            tunnel: Some(tunnel),
            status: Some(status),
            bytes_in: 100,
            bytes_out: 1000,
            duration: Duration::from_millis(millis),
            error: None,
            ..Exchange::failed(Protocol::Http, "192.0.2.1".parse().expect("ip"), "x")
        }
    }

    #[test]
    fn rates_errors_and_percentiles_come_from_the_last_minutes() {
        let recent = Recent::new();
        let t0 = recent.start;
        for i in 0..100u64 {
            let status = if i % 10 == 0 { 502 } else { 200 };
            recent.record_at(
                &http("demo", status, 1 + i % 50),
                t0 + Duration::from_millis(i * 100),
            );
        }
        recent.record_at(&http("demo", 200, 1000), t0 + Duration::from_secs(9));
        let figures = recent.figures_at(t0 + Duration::from_secs(10));
        let demo = &figures["demo"];
        assert_eq!(demo.requests_5m, 101);
        assert!((demo.rate_1m - 10.1).abs() < 0.01, "{demo:?}");
        assert!((demo.error_rate_1m - 10.0 / 101.0).abs() < 1e-9, "{demo:?}");
        let p50 = demo.p50_ms.expect("p50");
        assert!((20.0..=33.0).contains(&p50), "p50 {p50}");
        let p99 = demo.p99_ms.expect("p99");
        assert!((50.0..=1300.0).contains(&p99), "p99 {p99}");
        assert_eq!((demo.bytes_in_5m, demo.bytes_out_5m), (10_100, 101_000));
        assert_eq!(demo.series.len(), 2);
        assert_eq!(demo.series.iter().sum::<u32>(), 101);
    }

    #[test]
    fn a_quiet_tunnel_leaves_the_window_and_old_buckets_do_not_count() {
        let recent = Recent::new();
        let t0 = recent.start;
        recent.record_at(&http("old", 200, 5), t0);
        recent.record_at(&http("busy", 200, 5), t0);
        let later = t0 + BUCKET * (BUCKETS as u32 + 1);
        recent.record_at(&http("busy", 200, 5), later);
        let figures = recent.figures_at(later);
        assert!(!figures.contains_key("old"));
        assert_eq!(figures["busy"].requests_5m, 1, "the first request fell out");
        assert_eq!(figures["busy"].series.len(), BUCKETS);
    }

    #[test]
    fn the_window_follows_at_most_its_cap_of_tunnels() {
        let recent = Recent::new();
        let names: Vec<String> = (0..MAX_TUNNELS + 50).map(|i| format!("t{i}")).collect();
        for name in &names {
            recent.record(&http(name, 200, 1));
        }
        assert_eq!(recent.figures().len(), MAX_TUNNELS);
    }

    #[test]
    fn latency_buckets_grow_by_a_third_of_a_doubling() {
        assert_eq!(latency_bucket(Duration::from_micros(50)), 0);
        assert_eq!(latency_bucket(Duration::from_micros(201)), 4);
        assert!(latency_bound_ms(4) >= 0.201);
        assert_eq!(
            latency_bucket(Duration::from_secs(10_000)),
            LATENCY_BUCKETS - 1
        );
    }
}
