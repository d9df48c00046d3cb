//! Rate limits: HTTP requests per visitor address and per tunnel, control connections per
//! client address, new tunnels per principal. Token buckets (GCRA, the `governor` crate) keyed by address or tunnel name;
//! a refused caller learns how long to wait. Every limit is off unless configured.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

pub use crate::config::RateConfig;

/// The limiters of one server.
pub(crate) struct RateLimits {
    visitor_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    tunnel: Option<DefaultKeyedRateLimiter<String>>,
    control_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    principal_tunnels: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
}

fn limiter<K: std::hash::Hash + Eq + Clone>(
    rate: u32,
    per: fn(NonZeroU32) -> Quota,
) -> Option<DefaultKeyedRateLimiter<K>> {
    NonZeroU32::new(rate).map(|n| RateLimiter::keyed(per(n).allow_burst(n)))
}

impl RateLimits {
    pub(crate) fn new(config: &RateConfig) -> Self {
        Self {
            visitor_ip: limiter(config.visitor_per_ip, Quota::per_second),
            tunnel: limiter(config.tunnel_requests, Quota::per_second),
            control_ip: limiter(config.control_per_ip, Quota::per_minute),
            principal_tunnels: limiter(config.tunnels_per_principal, Quota::per_minute),
            clock: DefaultClock::default(),
        }
    }

    /// Admits one HTTP request from `ip` to `tunnel`, or says how long to wait.
    pub(crate) fn visitor(&self, ip: IpAddr, tunnel: &str) -> Result<(), Duration> {
        if let Some(limiter) = &self.visitor_ip {
            limiter
                .check_key(&ip)
                .map_err(|n| n.wait_time_from(self.clock.now()))?;
        }
        if let Some(limiter) = &self.tunnel {
            limiter
                .check_key(&tunnel.to_string())
                .map_err(|n| n.wait_time_from(self.clock.now()))?;
        }
        Ok(())
    }

    /// Admits one control connection from `ip`, or says how long to wait.
    pub(crate) fn control(&self, ip: IpAddr) -> Result<(), Duration> {
        match &self.control_ip {
            Some(limiter) => limiter
                .check_key(&ip)
                .map_err(|n| n.wait_time_from(self.clock.now())),
            None => Ok(()),
        }
    }

    /// Admits `count` new tunnels for `principal`, or says how long to wait; `Err(None)` when
    /// `count` is more than the limit allows at all.
    pub(crate) fn new_tunnels(
        &self,
        principal: &str,
        count: usize,
    ) -> Result<(), Option<Duration>> {
        let Some(limiter) = &self.principal_tunnels else {
            return Ok(());
        };
        let n = u32::try_from(count)
            .ok()
            .and_then(NonZeroU32::new)
            .unwrap_or(NonZeroU32::MIN);
        match limiter.check_key_n(&principal.to_string(), n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(Some(not_until.wait_time_from(self.clock.now()))),
            Err(_) => Err(None),
        }
    }

    /// Forgets keys whose buckets are full again (bounded memory; called every minute).
    pub(crate) fn retain_recent(&self) {
        for limiter in [&self.visitor_ip, &self.control_ip].into_iter().flatten() {
            limiter.retain_recent();
        }
        for limiter in [&self.tunnel, &self.principal_tunnels]
            .into_iter()
            .flatten()
        {
            limiter.retain_recent();
        }
    }
}

/// Whole seconds to advertise in `Retry-After` (at least 1).
pub(crate) fn retry_secs(wait: Duration) -> u32 {
    wait.as_secs_f64().ceil().max(1.0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_admit_the_burst_then_refuse_with_a_wait() {
        let limits = RateLimits::new(&RateConfig {
            visitor_per_ip: 2,
            tunnel_requests: 0,
            control_per_ip: 1,
            tunnels_per_principal: 3,
        });
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        assert!(limits.visitor(ip, "t").is_ok() && limits.visitor(ip, "t").is_ok());
        let wait = limits
            .visitor(ip, "t")
            .expect_err("third in the same second");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(limits.visitor(other, "t").is_ok(), "keys are independent");
        assert!(limits.control(ip).is_ok());
        assert!(limits.control(ip).expect_err("one per minute") > Duration::from_secs(50));
        assert!(limits.new_tunnels("alice", 2).is_ok());
        assert!(limits.new_tunnels("alice", 2).expect_err("4 > 3").is_some());
        assert_eq!(
            limits.new_tunnels("bob", 4),
            Err(None),
            "more than the burst"
        );
        assert!(limits.new_tunnels("bob", 3).is_ok());
        assert_eq!(retry_secs(Duration::from_millis(10)), 1);
        assert_eq!(retry_secs(Duration::from_millis(1500)), 2);
    }

    #[test]
    fn off_limits_admit_everything() {
        let limits = RateLimits::new(&RateConfig::default());
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        assert!((0..1000).all(|_| limits.visitor(ip, "t").is_ok() && limits.control(ip).is_ok()));
        assert!(limits.new_tunnels("p", 64).is_ok());
    }
}
