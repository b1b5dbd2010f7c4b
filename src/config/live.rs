//! The running configuration, read-only, for the parts that only read it (write-back's tenant
//! lookups, say): a watch channel the reloader publishes each applied configuration on. Readers
//! never wait for a reload in progress, and never hold one up.
//!
//! In cluster mode the running configuration holds full settings only for the tenants this
//! replica owns; the others are known by the [`Fleet`] alone, and [`LiveConfig::tenant_anywhere`]
//! reads one from the files when asked for it.

use std::sync::Arc;

use tokio::sync::watch;

use super::fleet::Fleet;
use super::load::{load, EnvSource};
use super::settings::{Settings, TenantSpec};

/// What the reloader publishes: the running settings and, in cluster mode, the whole fleet.
#[derive(Clone)]
struct Running {
    settings: Arc<Settings>,
    /// Cluster mode: every configured tenant, owned here or not.
    fleet: Option<Arc<Fleet>>,
}

/// A read-only view of the running configuration. Cheap to clone.
#[derive(Clone)]
pub struct LiveConfig {
    rx: watch::Receiver<Running>,
    /// To read a tenant this replica does not run from the files.
    env: EnvSource,
}

/// The reloader's end: publishes each configuration it applied.
pub struct LivePublisher {
    tx: watch::Sender<Running>,
    env: EnvSource,
}

/// A channel that starts with `settings`; readers come from [`LivePublisher::subscribe`].
pub fn live(settings: Arc<Settings>, env: EnvSource) -> LivePublisher {
    LivePublisher {
        tx: watch::Sender::new(Running {
            settings,
            fleet: None,
        }),
        env,
    }
}

impl LivePublisher {
    /// Makes `settings` (and, in cluster mode, `fleet`) the running configuration readers see.
    pub fn publish(&self, settings: Arc<Settings>, fleet: Option<Arc<Fleet>>) {
        self.tx.send_replace(Running { settings, fleet });
    }

    /// A new reader.
    pub fn subscribe(&self) -> LiveConfig {
        LiveConfig {
            rx: self.tx.subscribe(),
            env: self.env.clone(),
        }
    }
}

impl LiveConfig {
    /// The running configuration (in cluster mode: with the tenants this replica runs).
    pub fn current(&self) -> Arc<Settings> {
        self.rx.borrow().settings.clone()
    }

    /// Tenant `id` as the running configuration defines it, when this replica runs it (or, without
    /// cluster mode, whenever it is configured).
    pub fn tenant(&self, id: &str) -> Option<Arc<TenantSpec>> {
        let running = self.rx.borrow();
        // The tenants are in id order (see `Settings::tenants`).
        let tenants = &running.settings.tenants;
        tenants
            .binary_search_by(|t| t.id.as_str().cmp(id))
            .ok()
            .map(|i| tenants[i].clone())
    }

    /// Tenant `id`, whichever replica owns it: one this replica does not run is read from the
    /// configuration files (a whole load: seconds for a fleet of 100,000). `Ok(None)`: no such
    /// tenant; `Err`: the files no longer load.
    pub async fn tenant_anywhere(&self, id: &str) -> Result<Option<Arc<TenantSpec>>, String> {
        if let Some(t) = self.tenant(id) {
            return Ok(Some(t));
        }
        let (path, configured) = {
            let running = self.rx.borrow();
            let configured = running.fleet.as_ref().is_some_and(|f| f.contains(id));
            (running.settings.config_path.clone(), configured)
        };
        if !configured {
            return Ok(None);
        }
        let env = self.env.clone();
        let loaded = tokio::task::spawn_blocking(move || load(&path, &env))
            .await
            .map_err(|e| format!("reading the configuration failed: {e}"))?
            .map_err(|e| e.to_string())?;
        Ok(loaded.tenants.into_iter().find(|t| t.id == id))
    }
}
