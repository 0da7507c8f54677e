//! Backoff as a policy object, the one every retry uses: the delivery adapters and the stage
//! runner say whether a failure is retriable, the policy says when (and whether) to try again.

use crate::config::RetryPolicyConfig;
use rand::Rng;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub factor: f64,
    pub cap: Duration,
}

impl From<&RetryPolicyConfig> for RetryPolicy {
    fn from(c: &RetryPolicyConfig) -> Self {
        RetryPolicy {
            max_attempts: c.max_attempts,
            base: Duration::from_millis(c.base_ms),
            factor: c.factor,
            cap: Duration::from_millis(c.cap_ms),
        }
    }
}

impl RetryPolicy {
    /// The stage runner's policy for a batch that hit a passing backend failure: it is tried
    /// again until it succeeds, waiting up to 50 ms, 100 ms, ... 5 s.
    pub fn stage() -> RetryPolicy {
        RetryPolicy {
            max_attempts: u32::MAX,
            base: Duration::from_millis(50),
            factor: 2.0,
            cap: Duration::from_secs(5),
        }
    }

    /// The ceiling of the wait after failed attempt `attempt` (0 = the first try):
    /// `min(cap, base * factor^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let ms = self.base.as_millis() as f64 * self.factor.powi(attempt.min(64) as i32);
        Duration::from_millis(ms.min(self.cap.as_millis() as f64) as u64)
    }

    /// The wait before the next attempt after failed attempt `attempt`, drawn uniformly from
    /// `[0, ceiling]` (full jitter); `None` when the attempts are used up.
    pub fn next_delay(&self, attempt: u32, rng: &mut impl Rng) -> Option<Duration> {
        if attempt + 1 >= self.max_attempts {
            return None;
        }
        let ceiling = self.ceiling(attempt).as_millis() as u64;
        Some(Duration::from_millis(rng.gen_range(0..=ceiling)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn policy() -> RetryPolicy {
        RetryPolicy::from(&RetryPolicyConfig {
            max_attempts: 4,
            base_ms: 100,
            factor: 2.0,
            cap_ms: 300,
        })
    }

    #[test]
    fn ceilings_grow_to_the_cap() {
        let p = policy();
        assert_eq!(p.ceiling(0), Duration::from_millis(100));
        assert_eq!(p.ceiling(1), Duration::from_millis(200));
        assert_eq!(p.ceiling(2), Duration::from_millis(300));
        assert_eq!(p.ceiling(60), Duration::from_millis(300));
    }

    #[test]
    fn full_jitter_stays_under_the_ceiling_and_attempts_run_out() {
        let p = policy();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut seen_low = false;
        for _ in 0..1000 {
            let d = p.next_delay(1, &mut rng).unwrap();
            assert!(d <= Duration::from_millis(200));
            seen_low |= d < Duration::from_millis(50);
        }
        assert!(seen_low, "jitter reaches down to zero");
        assert!(p.next_delay(2, &mut rng).is_some());
        assert!(p.next_delay(3, &mut rng).is_none(), "4 attempts in all");
    }
}
