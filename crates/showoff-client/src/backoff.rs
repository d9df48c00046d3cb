//! Reconnect delays: exponential growth from `initial` to `max`, with jitter so that many
//! clients dropped at once (a server restart) do not return in lockstep.

use std::time::Duration;

/// Default first delay.
pub const DEFAULT_INITIAL: Duration = Duration::from_millis(250);
/// Default longest delay.
pub const DEFAULT_MAX: Duration = Duration::from_secs(30);

/// The delay schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry (before jitter).
    pub initial: Duration,
    /// Cap on any delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: DEFAULT_INITIAL,
            max: DEFAULT_MAX,
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based). `jitter` in `[0, 1)` scales the
    /// exponential step into `[step/2, step)` ("equal jitter").
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let step = self
            .initial
            .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .min(self.max);
        let jitter = jitter.clamp(0.0, 1.0);
        step.mul_f64(0.5 + jitter / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_then_caps() {
        let b = Backoff::default();
        let top = |attempt| b.delay(attempt, 1.0);
        assert_eq!(top(0), Duration::from_millis(250));
        assert_eq!(top(1), Duration::from_millis(500));
        assert_eq!(top(2), Duration::from_secs(1));
        assert_eq!(top(20), Duration::from_secs(30));
        assert_eq!(top(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_within_half_to_full_step() {
        let b = Backoff::default();
        for attempt in 0..10 {
            let low = b.delay(attempt, 0.0);
            let high = b.delay(attempt, 0.999);
            assert_eq!(low * 2, b.delay(attempt, 1.0), "attempt {attempt}");
            assert!(low <= high && high <= b.delay(attempt, 1.0));
        }
    }
}
