//! The running configuration, read-only, for the parts that only read it (write-back's tenant
//! lookups, say): a watch channel the reloader publishes each applied configuration on. Readers
//! never wait for a reload in progress, and never hold one up.

use std::sync::Arc;

use tokio::sync::watch;

use super::settings::{Settings, TenantSpec};

/// A read-only view of the running configuration. Cheap to clone.
#[derive(Clone)]
pub struct LiveConfig {
    rx: watch::Receiver<Arc<Settings>>,
}

/// The reloader's end: publishes each configuration it applied.
pub struct LivePublisher {
    tx: watch::Sender<Arc<Settings>>,
}

/// A channel that starts with `settings`; readers come from [`LivePublisher::subscribe`].
pub fn live(settings: Arc<Settings>) -> LivePublisher {
    LivePublisher {
        tx: watch::Sender::new(settings),
    }
}

impl LivePublisher {
    /// Makes `settings` the running configuration readers see.
    pub fn publish(&self, settings: Arc<Settings>) {
        self.tx.send_replace(settings);
    }

    /// A new reader.
    pub fn subscribe(&self) -> LiveConfig {
        LiveConfig {
            rx: self.tx.subscribe(),
        }
    }
}

impl LiveConfig {
    /// The running configuration.
    pub fn current(&self) -> Arc<Settings> {
        self.rx.borrow().clone()
    }

    /// Tenant `id` as the running configuration defines it (every configured tenant, whichever
    /// replica owns it).
    pub fn tenant(&self, id: &str) -> Option<Arc<TenantSpec>> {
        let settings = self.rx.borrow();
        // The tenants are in id order (see `Settings::tenants`).
        let tenants = &settings.tenants;
        tenants
            .binary_search_by(|t| t.id.as_str().cmp(id))
            .ok()
            .map(|i| Arc::new(tenants[i].clone()))
    }
}
