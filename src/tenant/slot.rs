//! Sweep slots: at most `connector.max_concurrent_sweeps` tenants talk to Wiz at once. A tenant
//! holds a slot while it sweeps, and gives it back while it waits out a retry (backoff,
//! `Retry-After`, a token endpoint's backoff), taking one again, in the semaphore's first-come
//! order, when the wait ends. So a storm of 429s with long `Retry-After`s on many tenants cannot
//! starve the healthy ones, and the waiting tenant's sweep resumes where it stopped (same frozen
//! bounds, same cursor).
//!
//! The same wait ends at once when the tenant is told to stop ([`StopSignal`]), so shutdown and
//! reloads never wait for a `Retry-After`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::health::{HealthMap, LastError, TenantState};
use crate::metrics::SlotMetrics;
use crate::wiz::client::RetryWaits;
use crate::wiz::error::WizError;

/// The fleet's slots; cheap to clone.
#[derive(Clone)]
pub struct Slots {
    sem: Arc<Semaphore>,
    metrics: SlotMetrics,
}

/// A held slot; given back when dropped.
pub struct Held {
    _permit: OwnedSemaphorePermit,
    metrics: SlotMetrics,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.metrics.given_back();
    }
}

impl Slots {
    pub fn new(n: usize, metrics: SlotMetrics) -> Slots {
        Slots {
            sem: Arc::new(Semaphore::new(n)),
            metrics,
        }
    }

    /// A slot now, if one is free.
    pub fn try_take(&self) -> Option<Held> {
        let permit = self.sem.clone().try_acquire_owned().ok()?;
        self.metrics.taken(Duration::ZERO);
        Some(Held {
            _permit: permit,
            metrics: self.metrics.clone(),
        })
    }

    /// A slot, waiting in line (first come, first served) for one.
    pub async fn take(&self) -> Held {
        let started = Instant::now();
        let permit = self
            .sem
            .clone()
            .acquire_owned()
            .await
            .expect("the sweep semaphore is never closed");
        self.metrics.taken(started.elapsed());
        Held {
            _permit: permit,
            metrics: self.metrics.clone(),
        }
    }
}

/// Tells a tenant's waits to end: set by the supervisor before it stops the tenant on purpose.
#[derive(Debug, Default)]
pub struct StopSignal {
    stopped: AtomicBool,
    notify: Notify,
}

impl StopSignal {
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Resolves once the stop is given.
    pub async fn stopped(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.is_stopped() {
            return;
        }
        notified.await;
    }

    /// Sleeps `d`; false when the stop came first.
    pub async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.stopped() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }
}

/// One tenant's hold on the slots, and how it waits between retries.
pub struct TenantSlot {
    slots: Slots,
    held: Mutex<Option<Held>>,
    tenant: String,
    health: HealthMap,
    stop: Arc<StopSignal>,
}

impl TenantSlot {
    pub fn new(slots: Slots, tenant: &str, health: HealthMap, stop: Arc<StopSignal>) -> Self {
        TenantSlot {
            slots,
            held: Mutex::new(None),
            tenant: tenant.to_string(),
            health,
            stop,
        }
    }

    /// The sweep starts with `held`.
    pub fn hold(&self, held: Held) {
        *self.held.lock().expect("slot lock") = Some(held);
    }

    /// The sweep ended: the slot goes back.
    pub fn release(&self) {
        self.held.lock().expect("slot lock").take();
    }
}

impl TenantSlot {
    /// Waits `delay` holding no slot (another tenant sweeps meanwhile), then takes one again if
    /// one was held; false when the tenant is stopping.
    async fn without_slot(self: Arc<Self>, delay: Duration) -> bool {
        let had = self.held.lock().expect("slot lock").take().is_some();
        if !self.stop.sleep(delay).await {
            return false;
        }
        if had {
            let taken = tokio::select! {
                h = self.slots.take() => Some(h),
                _ = self.stop.stopped() => None,
            };
            match taken {
                Some(h) => self.hold(h),
                None => return false,
            }
        }
        true
    }
}

impl RetryWaits for Arc<TenantSlot> {
    fn waiting(&self, error: &WizError, attempt: u32, max: u32, delay: Duration) {
        let now = SystemTime::now();
        let until = now + delay;
        let message = format!(
            "{error}; retry {attempt} of {} at {}",
            max.saturating_sub(1),
            humantime::format_rfc3339_seconds(until)
        );
        self.health.update(&self.tenant, |h| {
            h.state = TenantState::Backoff;
            h.last_error = Some(LastError { message, at: now });
            h.next_attempt_at = Some(until);
        });
    }

    fn wait(&self, delay: Duration) -> Pin<Box<dyn Future<Output = bool> + Send>> {
        let me = self.clone();
        Box::pin(async move {
            if !me.clone().without_slot(delay).await {
                return false;
            }
            me.health.update(&me.tenant, |h| {
                h.state = TenantState::Polling;
                h.next_attempt_at = None;
            });
            true
        })
    }

    fn pause(&self, delay: Duration) -> Pin<Box<dyn Future<Output = bool> + Send>> {
        Box::pin(self.clone().without_slot(delay))
    }
}
