//! Retrying one request of a sink: the backoff every HTTP sink shares (200 ms doubling to 30 s,
//! with jitter; a `Retry-After` honoured up to 60 s), so each sink writes only how one try ends.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// How one try ended.
pub(super) enum Try<T> {
    Done(T),
    /// A transient failure (busy, 429, 5xx, a timeout): why, and the server's `Retry-After`.
    Again(String, Option<Duration>),
    /// A failure another try now would not fix.
    Stop(String),
}

/// Why the request did not succeed.
pub(super) enum GaveUp {
    /// A try ended with [`Try::Stop`].
    Stopped(String),
    /// `max_retries` retries failed too; the last failure.
    Exhausted(String),
}

/// Runs `attempt` until it is done or stopped, retrying transient failures at most
/// `max_retries` times. `target` names the destination in the log.
pub(super) async fn with_retries<T, F, Fut>(
    target: &str,
    max_retries: u32,
    mut attempt: F,
) -> Result<T, GaveUp>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Try<T>>,
{
    let mut delay = Duration::from_millis(200);
    let mut last = String::new();
    for n in 0..=max_retries {
        if n > 0 {
            tokio::time::sleep(delay).await;
        }
        match attempt().await {
            Try::Done(v) => return Ok(v),
            Try::Stop(m) => return Err(GaveUp::Stopped(m)),
            Try::Again(m, retry_after) => {
                let backoff = delay
                    .saturating_mul(2)
                    .min(Duration::from_secs(30))
                    .mul_f64(rand::rng().random_range(0.5..=1.0));
                delay = match retry_after {
                    Some(ra) => ra.min(MAX_RETRY_AFTER).max(backoff),
                    None => backoff,
                };
                tracing::warn!(target = %target, error = %m, attempt = n, "delivery failed; retrying");
                last = m;
            }
        }
    }
    Err(GaveUp::Exhausted(format!(
        "gave up after {} attempts: {last}",
        max_retries + 1
    )))
}
