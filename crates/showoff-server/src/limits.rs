//! Rate limits: HTTP requests per visitor address and per tunnel, UDP datagrams per visitor
//! address, control connections per client address, new tunnels per principal, and failed
//! logins per address (tokens on the control listener, basic auth at the edge). Token buckets (GCRA, the `governor` crate) keyed
//! by address or tunnel name; a refused caller learns how long to wait. The guessing limits
//! are on by default; every other limit is off unless configured.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

pub use crate::config::RateConfig;

/// The limiters of one server.
pub(crate) struct RateLimits {
    visitor_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    tunnel: Option<DefaultKeyedRateLimiter<String>>,
    udp_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    control_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    principal_tunnels: Option<DefaultKeyedRateLimiter<String>>,
    /// Failed token logins per client address.
    pub(crate) logins: FailureGate,
    /// Failed basic-auth attempts per visitor address.
    pub(crate) basic_auth: FailureGate,
    clock: DefaultClock,
}

/// Counts failures per address; once an address spent its budget, it is refused outright
/// until the budget refills, without its next attempt being evaluated at all.
pub(crate) struct FailureGate {
    failures: Option<DefaultKeyedRateLimiter<IpAddr>>,
    blocked: Mutex<HashMap<IpAddr, Instant>>,
    clock: DefaultClock,
}

impl FailureGate {
    fn new(per_minute: u32) -> Self {
        Self {
            failures: limiter(per_minute, Quota::per_minute),
            blocked: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
        }
    }

    fn blocked(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Instant>> {
        // One insert, lookup or retain per critical section: a panic cannot leave it torn.
        self.blocked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Err(wait)` while `ip` is refused for having failed too often.
    pub(crate) fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        self.failures.as_ref().map_or(Ok(()), |_| {
            let now = Instant::now();
            match self.blocked().get(&ip) {
                Some(until) if *until > now => Err(*until - now),
                _ => Ok(()),
            }
        })
    }

    /// Records one failure of `ip`; past the budget, `ip` is refused until a failure's worth
    /// of budget comes back.
    pub(crate) fn failed(&self, ip: IpAddr) {
        let Some(limiter) = &self.failures else {
            return;
        };
        if let Err(not_until) = limiter.check_key(&ip) {
            let wait = not_until.wait_time_from(self.clock.now());
            self.blocked().insert(ip, Instant::now() + wait);
        }
    }

    fn retain_recent(&self) {
        if let Some(limiter) = &self.failures {
            limiter.retain_recent();
        }
        let now = Instant::now();
        self.blocked().retain(|_, until| *until > now);
    }
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
            udp_ip: limiter(config.udp_per_ip, Quota::per_second),
            control_ip: limiter(config.control_per_ip, Quota::per_minute),
            principal_tunnels: limiter(config.tunnels_per_principal, Quota::per_minute),
            logins: FailureGate::new(config.auth_failures_per_ip),
            basic_auth: FailureGate::new(config.basic_auth_failures_per_ip),
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

    /// Whether one more UDP datagram from `ip` is admitted now.
    pub(crate) fn datagram(&self, ip: IpAddr) -> bool {
        self.udp_ip
            .as_ref()
            .is_none_or(|limiter| limiter.check_key(&ip).is_ok())
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
        for limiter in [&self.visitor_ip, &self.udp_ip, &self.control_ip]
            .into_iter()
            .flatten()
        {
            limiter.retain_recent();
        }
        for limiter in [&self.tunnel, &self.principal_tunnels]
            .into_iter()
            .flatten()
        {
            limiter.retain_recent();
        }
        self.logins.retain_recent();
        self.basic_auth.retain_recent();
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
    fn an_address_that_failed_too_often_is_refused_before_it_is_checked() {
        let gate = FailureGate::new(3);
        let (guesser, other): (IpAddr, IpAddr) = (
            "192.0.2.1".parse().expect("ip"),
            "192.0.2.2".parse().expect("ip"),
        );
        for _ in 0..3 {
            gate.check(guesser).expect("within the budget");
            gate.failed(guesser);
        }
        gate.check(guesser)
            .expect("the budget is spent, not exceeded");
        gate.failed(guesser);
        let wait = gate.check(guesser).expect_err("refused");
        assert!(
            wait <= Duration::from_secs(20) && wait > Duration::ZERO,
            "{wait:?}"
        );
        gate.check(other).expect("other addresses are not affected");
        let off = FailureGate::new(0);
        for _ in 0..100 {
            off.failed(guesser);
        }
        off.check(guesser).expect("0 turns the gate off");
    }

    #[test]
    fn the_guessing_limits_are_on_by_default() {
        let config = RateConfig::default();
        assert_eq!(
            config.auth_failures_per_ip,
            crate::config::DEFAULT_FAILURES_PER_IP
        );
        assert_eq!(
            config.basic_auth_failures_per_ip,
            crate::config::DEFAULT_FAILURES_PER_IP
        );
        assert_eq!(config.visitor_per_ip, 0, "the others stay off");
    }

    #[test]
    fn limits_admit_the_burst_then_refuse_with_a_wait() {
        let limits = RateLimits::new(&RateConfig {
            visitor_per_ip: 2,
            tunnel_requests: 0,
            udp_per_ip: 3,
            control_per_ip: 1,
            tunnels_per_principal: 3,
            ..RateConfig::default()
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
        assert!((0..3).all(|_| limits.datagram(ip)), "the burst");
        assert!(!limits.datagram(ip), "a fourth datagram in the same second");
        assert!(limits.datagram(other));
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
        assert!((0..1000).all(|_| limits.datagram(ip)));
        assert!(limits.new_tunnels("p", 64).is_ok());
    }
}
