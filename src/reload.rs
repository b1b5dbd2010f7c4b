//! Reconfiguration without restart. A reload is triggered by SIGHUP, `POST /reload`, or a change
//! to the configuration file or `tenants_dir` (seen by a polling watcher, debounced). The new
//! configuration is loaded and validated whole; when it is invalid the running one stays and the
//! error is returned, logged and counted. Otherwise the difference is handed to the supervisor,
//! which touches only what changed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ractor::ActorRef;
use serde::Serialize;

use crate::config::{diff, load, EnvSource, Settings};
use crate::metrics::Observer;
use crate::supervisor::SupervisorMsg;

/// What a reload changed.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub restarted: Vec<String>,
    pub updated: Vec<String>,
    pub sinks_changed: bool,
    /// Keys that changed but take effect only after a process restart.
    pub needs_restart: Vec<String>,
}

struct Inner {
    path: PathBuf,
    env: EnvSource,
    current: tokio::sync::Mutex<Settings>,
    supervisor: ActorRef<SupervisorMsg>,
    observer: Observer,
}

/// Reloads the configuration; cheap to clone, reloads are serialized.
#[derive(Clone)]
pub struct Reloader {
    inner: Arc<Inner>,
}

/// Identifies the state of the watched files: size and modification time of each.
fn snapshot(config: &Path, tenants_dir: Option<&Path>) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let stat = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| (m.len(), m.modified().ok()))
            .unwrap_or((0, None))
    };
    let mut out = vec![{
        let (l, m) = stat(config);
        (config.to_path_buf(), l, m)
    }];
    if let Some(dir) = tenants_dir {
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut files: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            files.sort();
            for f in files {
                let (l, m) = stat(&f);
                out.push((f, l, m));
            }
        }
    }
    out
}

impl Reloader {
    pub fn new(
        settings: Settings,
        env: EnvSource,
        supervisor: ActorRef<SupervisorMsg>,
        observer: Observer,
    ) -> Self {
        Reloader {
            inner: Arc::new(Inner {
                path: settings.config_path.clone(),
                env,
                current: tokio::sync::Mutex::new(settings),
                supervisor,
                observer,
            }),
        }
    }

    /// Loads the configuration file again and applies the difference. `trigger` names what asked
    /// (for the log).
    pub async fn reload(&self, trigger: &str) -> Result<ReloadSummary, String> {
        let mut current = self.inner.current.lock().await;
        let path = &self.inner.path;
        if !path.is_file() {
            let e = format!(
                "{} is not a file (a configuration built in memory cannot be reloaded)",
                path.display()
            );
            self.inner.observer.reload(trigger, Err(&e));
            return Err(e);
        }
        let new = match load(path, &self.inner.env) {
            Ok(s) => s,
            Err(e) => {
                let e = format!("{e}; the running configuration is kept");
                self.inner.observer.reload(trigger, Err(&e));
                return Err(e);
            }
        };
        if new.sinks.is_empty() {
            let e = format!(
                "{}: no [sinks] configured; the running configuration is kept",
                path.display()
            );
            self.inner.observer.reload(trigger, Err(&e));
            return Err(e);
        }
        let d = diff(&current, &new);
        let summary = ReloadSummary {
            added: d.added.iter().map(|t| t.id.clone()).collect(),
            removed: d.removed.clone(),
            restarted: d.restarted.iter().map(|t| t.id.clone()).collect(),
            updated: d.updated.iter().map(|t| t.id.clone()).collect(),
            sinks_changed: d.sinks.is_some(),
            needs_restart: d.needs_restart.clone(),
        };
        if !d.is_empty() {
            let applied = self
                .inner
                .supervisor
                .call(
                    |r| SupervisorMsg::Apply(d, r),
                    Some(Duration::from_secs(120)),
                )
                .await;
            if !matches!(applied, Ok(ractor::rpc::CallResult::Success(()))) {
                let e = "the supervisor did not apply the new configuration".to_string();
                self.inner.observer.reload(trigger, Err(&e));
                return Err(e);
            }
        }
        *current = new;
        self.inner.observer.reload(trigger, Ok(&summary));
        Ok(summary)
    }

    /// Watches the configuration file and the current `tenants_dir`, checking every `every`;
    /// after a change it waits until the files hold still for one more check, then reloads.
    /// Tools should write a file elsewhere and rename it into place, so a half-written file is
    /// never read (one that is gets refused, and the next change is picked up).
    pub fn spawn_watcher(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let files = |s: &Settings| (s.config_path.clone(), s.connector.tenants_dir.clone());
            let (p, d) = files(&*me.inner.current.lock().await);
            let mut seen = snapshot(&p, d.as_deref());
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut changed = false;
            loop {
                tick.tick().await;
                let (p, d) = files(&*me.inner.current.lock().await);
                let now = snapshot(&p, d.as_deref());
                if now != seen {
                    seen = now;
                    changed = true;
                    continue;
                }
                if changed {
                    // `seen` stays the state read before this reload: a change made while it
                    // runs differs from it and triggers another reload.
                    changed = false;
                    let _ = me.reload("file change").await;
                }
            }
        })
    }
}
