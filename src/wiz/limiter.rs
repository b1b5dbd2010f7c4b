//! Per-credential rate limiting. Wiz counts requests per service account, so every tenant that
//! uses the same credential (token URL + client id) shares one limiter, found in a dashmap.

use std::num::NonZeroU32;
use std::sync::{Arc, LazyLock, RwLock, Weak};
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::DefaultClock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// One credential's budget. Requests are spaced `1/rate` seconds apart with a burst of one: Wiz
/// counts per second, and a burst followed by more earns 429s.
pub struct CredentialLimiter {
    /// `(requests per second, limiter)`; replaced whole when the rate changes.
    inner: RwLock<(f64, Arc<DefaultDirectRateLimiter>)>,
}

/// One clock for every limiter: creating a quanta clock calibrates it (CPUID and a measurement),
/// which cost 14% of starting a 100,000-tenant fleet when every credential made its own.
static CLOCK: LazyLock<DefaultClock> = LazyLock::new(DefaultClock::default);

fn build(rate: f64) -> Arc<DefaultDirectRateLimiter> {
    let period = Duration::from_secs_f64(1.0 / rate);
    let quota = Quota::with_period(period)
        .expect("rate is validated to be positive and finite")
        .allow_burst(NonZeroU32::MIN);
    Arc::new(RateLimiter::direct_with_clock(quota, CLOCK.clone()))
}

impl CredentialLimiter {
    fn new(rate: f64) -> Self {
        CredentialLimiter {
            inner: RwLock::new((rate, build(rate))),
        }
    }

    /// Takes the credential's next request now if it may be sent (`None`), or says how long
    /// to wait before asking again.
    pub fn check(&self) -> Option<Duration> {
        use governor::clock::Clock;
        let lim = self.inner.read().expect("limiter lock").1.clone();
        match lim.check() {
            Ok(()) => None,
            Err(not_until) => Some(not_until.wait_time_from(CLOCK.now())),
        }
    }

    /// The current rate in requests per second.
    pub fn rate(&self) -> f64 {
        self.inner.read().expect("limiter lock").0
    }

    /// Changes the rate in place (tenants keep their handle).
    pub fn set_rate(&self, rate: f64) {
        let mut g = self.inner.write().expect("limiter lock");
        if g.0 != rate {
            *g = (rate, build(rate));
        }
    }
}

/// All credentials' limiters. Entries are weak: a limiter lives as long as a tenant uses it.
#[derive(Default, Clone)]
pub struct LimiterRegistry {
    map: Arc<DashMap<String, Weak<CredentialLimiter>>>,
}

impl LimiterRegistry {
    /// The limiter of `credential`, created at `rate` when new. When tenants sharing a credential
    /// ask for different rates, the lowest wins: the budget is the service account's, not theirs.
    pub fn get(&self, credential: &str, rate: f64) -> Arc<CredentialLimiter> {
        let mut entry = self.map.entry(credential.to_string()).or_default();
        if let Some(existing) = entry.upgrade() {
            if rate < existing.rate() {
                existing.set_rate(rate);
            }
            return existing;
        }
        let fresh = Arc::new(CredentialLimiter::new(rate));
        *entry = Arc::downgrade(&fresh);
        fresh
    }

    /// Changes the rate of a credential's limiter in place (a reload changed `rate_limit`).
    pub fn set_rate(&self, credential: &str, rate: f64) {
        let live = self.map.get(credential).and_then(|w| w.upgrade());
        if let Some(l) = live {
            l.set_rate(rate);
        }
    }

    /// Number of credentials with a live limiter.
    pub fn len(&self) -> usize {
        self.map.retain(|_, w| w.strong_count() > 0);
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_credential_shares_one_limiter_and_takes_the_lower_rate() {
        let reg = LimiterRegistry::default();
        let a = reg.get("https://auth/x|id1", 3.0);
        let b = reg.get("https://auth/x|id1", 2.0);
        let c = reg.get("https://auth/x|id2", 3.0);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(a.rate(), 2.0);
        assert_eq!(reg.len(), 2);
        drop((a, b));
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn a_check_takes_the_next_request_or_says_how_long_to_wait() {
        let lim = CredentialLimiter::new(2.0);
        assert_eq!(lim.check(), None, "the first request goes at once");
        let wait = lim.check().expect("the second waits");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
    }
}
