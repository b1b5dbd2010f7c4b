//! The restart backoff, kept pure so it can be tested without actors.

use std::time::Duration;

use crate::config::RestartPolicy;

/// Delay before restarting a tenant that has crashed `crashes` times (≥ 1) within the period:
/// `backoff_initial × 2^(crashes-1)`, capped at `backoff_max`, scaled by `jitter` (0.5..=1.0).
pub fn restart_delay(policy: &RestartPolicy, crashes: u32, jitter: f64) -> Duration {
    let exp = crashes.saturating_sub(1).min(20);
    let base = policy
        .backoff_initial
        .0
        .saturating_mul(1u32 << exp)
        .min(policy.backoff_max.0);
    base.mul_f64(jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DurationValue;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RestartPolicy {
            intensity: 5,
            period: DurationValue::secs(60),
            backoff_initial: DurationValue::secs(1),
            backoff_max: DurationValue::secs(10),
            failed_cooldown: DurationValue::secs(600),
        };
        let d: Vec<u64> = (1..=6)
            .map(|c| restart_delay(&p, c, 1.0).as_secs())
            .collect();
        assert_eq!(d, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(restart_delay(&p, 3, 0.5), Duration::from_secs(2));
    }
}
