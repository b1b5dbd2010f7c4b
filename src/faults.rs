//! Fault injection for tests and chaos drills: knobs that make a component misbehave on purpose,
//! set through the library API only (never from the configuration file). Wiz-side faults live in
//! the simulator; these are the connector-side ones.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::wiz::Page;

/// Called with the tenant id and each page a tenant fetched, before it is normalized. A hook that
/// panics makes the tenant actor crash, as a bug triggered by a poisoned page would.
pub type PageHook = Arc<dyn Fn(&str, &Page) + Send + Sync>;

#[derive(Default)]
struct Inner {
    sink_delay_ms: AtomicU64,
    sink_panics: AtomicU64,
    sink_failure: Mutex<Option<String>>,
    page_hook: Mutex<Option<PageHook>>,
}

/// Shared, cheap to clone; the default injects nothing.
#[derive(Clone, Default)]
pub struct FaultInjection {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FaultInjection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FaultInjection")
    }
}

impl FaultInjection {
    /// Every sink write waits this long first (a slow sink); zero turns it off.
    pub fn set_sink_delay(&self, d: Duration) {
        self.inner
            .sink_delay_ms
            .store(d.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn sink_delay(&self) -> Option<Duration> {
        match self.inner.sink_delay_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Every sink write fails with this message (a sink that is down); `None` turns it off.
    pub fn set_sink_failure(&self, message: Option<&str>) {
        *self.inner.sink_failure.lock().expect("faults lock") = message.map(str::to_string);
    }

    pub fn sink_failure(&self) -> Option<String> {
        self.inner.sink_failure.lock().expect("faults lock").clone()
    }

    /// The next `n` sink writes panic (a sink crash), after taking the batch.
    pub fn panic_sink(&self, n: u64) {
        self.inner.sink_panics.store(n, Ordering::Relaxed);
    }

    /// Panics when a sink crash is due.
    pub fn maybe_panic_sink(&self) {
        let due = self
            .inner
            .sink_panics
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if due {
            panic!("injected sink crash");
        }
    }

    pub fn set_page_hook(&self, hook: Option<PageHook>) {
        *self.inner.page_hook.lock().expect("faults lock") = hook;
    }

    /// Runs the page hook, if any (outside the lock, so a panicking hook poisons nothing).
    pub fn on_page(&self, tenant: &str, page: &Page) {
        let hook = self.inner.page_hook.lock().expect("faults lock").clone();
        if let Some(h) = hook {
            h(tenant, page);
        }
    }
}
