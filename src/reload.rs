//! Reconfiguration without restart. A reload is triggered by SIGHUP, `POST /reload`, or a change
//! to the configuration file or `tenants_dir` (seen by a polling watcher, debounced). The new
//! configuration is loaded and validated whole; when it is invalid the running one stays and the
//! error is returned, logged and counted. Otherwise the difference is handed to the supervisor,
//! which touches only what changed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ractor::ActorRef;
use serde::Serialize;

use crate::cluster::placement::{self, PlaceOutcome};
use crate::config::{diff, load, ConfigDiff, EnvSource, Settings};
use crate::hints::Hints;
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

impl ReloadSummary {
    /// The counts the log line and metrics report.
    pub fn counts(&self) -> crate::metrics::ReloadCounts<'_> {
        crate::metrics::ReloadCounts {
            added: self.added.len(),
            removed: self.removed.len(),
            restarted: self.restarted.len(),
            updated: self.updated.len(),
            sinks_changed: self.sinks_changed,
            needs_restart: &self.needs_restart,
        }
    }
}

struct Inner {
    path: PathBuf,
    env: EnvSource,
    current: tokio::sync::Mutex<Desired>,
    /// Publishes each applied configuration to the read-only readers.
    live: crate::config::LivePublisher,
    supervisor: ActorRef<SupervisorMsg>,
    observer: Observer,
    /// Takes every configured tenant's webhook token after each reload.
    hints: Hints,
    /// Every placement's summary, brought up to date by reloads: the heartbeat announces it
    /// without waiting for a reload or placement in progress.
    outcome: tokio::sync::watch::Sender<PlaceOutcome>,
}

/// What the supervisor should run: the configuration, restricted (in cluster mode) to the
/// tenants placement gives this replica. A reload changes the first, placement the second; both
/// reach the supervisor as the same add/remove diff.
struct Desired {
    settings: Arc<Settings>,
    placed: Option<Placed>,
}

/// Cluster mode: this replica's share of the fleet, as placement last decided it.
#[derive(Debug, Clone, Default)]
struct Placed {
    replica: String,
    /// The members placement was computed over (live, not leaving).
    members: BTreeSet<String>,
    /// Owner of every configured tenant.
    assignment: BTreeMap<String, String>,
}

impl Placed {
    fn owns(&self, tenant: &str) -> bool {
        self.assignment.get(tenant) == Some(&self.replica)
    }

    fn reassigned(&self, settings: &Settings, members: BTreeSet<String>) -> Placed {
        Placed {
            replica: self.replica.clone(),
            assignment: placement::assign(&settings.tenants, &members),
            members,
        }
    }
}

/// The settings the supervisor runs: every tenant, or the owned ones in cluster mode.
fn view(settings: &Settings, placed: Option<&Placed>) -> Settings {
    Settings {
        config_path: settings.config_path.clone(),
        connector: settings.connector.clone(),
        admin: settings.admin.clone(),
        sinks: settings.sinks.clone(),
        routing: settings.routing.clone(),
        tenants: settings
            .tenants
            .iter()
            .filter(|t| placed.is_none_or(|p| p.owns(&t.id)))
            .cloned()
            .collect(),
        telemetry: settings.telemetry.clone(),
        cluster: settings.cluster.clone(),
        hooks: settings.hooks.clone(),
    }
}

/// Sums a placement up.
fn outcome(settings: &Settings, placed: &Placed, d: &ConfigDiff) -> PlaceOutcome {
    PlaceOutcome {
        per_member: crate::cluster::tenants_per_member(&placed.assignment, &placed.members),
        owned: settings
            .tenants
            .iter()
            .filter(|t| placed.owns(&t.id))
            .count(),
        configured: settings.tenants.len(),
        acquired: d.added.len(),
        released: d.removed.len(),
        digest: placement::fleet_digest(&settings.tenants),
        placed_at: None,
    }
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
    /// `replica`: in cluster mode, this replica's id; the supervisor then runs only the tenants
    /// [`Reloader::place`] gives it (none until the first placement).
    pub fn new(
        settings: Settings,
        env: EnvSource,
        supervisor: ActorRef<SupervisorMsg>,
        observer: Observer,
        replica: Option<String>,
        hints: Hints,
    ) -> Self {
        let placed = replica.map(|replica| Placed {
            replica,
            ..Default::default()
        });
        let settings = Arc::new(settings);
        let live = crate::config::live(settings.clone());
        let (outcome, _) = tokio::sync::watch::channel(PlaceOutcome {
            configured: settings.tenants.len(),
            digest: placement::fleet_digest(&settings.tenants),
            ..Default::default()
        });
        Reloader {
            inner: Arc::new(Inner {
                path: settings.config_path.clone(),
                env,
                live,
                current: tokio::sync::Mutex::new(Desired { settings, placed }),
                supervisor,
                observer,
                hints,
                outcome,
            }),
        }
    }

    /// Hands a difference to the supervisor; false when it did not apply it.
    async fn apply(&self, d: ConfigDiff) -> bool {
        if d.is_empty() {
            return true;
        }
        let applied = self
            .inner
            .supervisor
            .call(
                |r| SupervisorMsg::Apply(d, r),
                Some(Duration::from_secs(120)),
            )
            .await;
        matches!(applied, Ok(ractor::rpc::CallResult::Success(())))
    }

    /// Cluster mode: places the configured tenants over `members` (the live replicas that are
    /// not leaving) and starts or stops this replica's tenants accordingly, exactly as a reload
    /// would. Without cluster mode it does nothing.
    pub async fn place(&self, members: BTreeSet<String>) -> Result<PlaceOutcome, String> {
        let mut current = self.inner.current.lock().await;
        let Some(old) = current.placed.clone() else {
            return Ok(PlaceOutcome::default());
        };
        let new = old.reassigned(&current.settings, members);
        let d = diff(
            &view(&current.settings, Some(&old)),
            &view(&current.settings, Some(&new)),
        );
        let mut outcome = outcome(&current.settings, &new, &d);
        if !self.apply(d).await {
            return Err("the supervisor did not apply the new placement".into());
        }
        current.placed = Some(new);
        outcome.placed_at = Some(SystemTime::now());
        self.inner.outcome.send_replace(outcome.clone());
        Ok(outcome)
    }

    /// Cluster mode: runs placement whenever the heartbeat publishes a new set of members
    /// (`None` until its first decision), on a task of its own: the heartbeat never waits for
    /// it. Sets `ready` after the first placement applied; a placement the supervisor did not
    /// apply is tried again after a second, unless newer members came meanwhile.
    pub fn follow_placement(
        &self,
        mut members: tokio::sync::watch::Receiver<Option<BTreeSet<String>>>,
        ready: Arc<std::sync::atomic::AtomicBool>,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let next = members.borrow_and_update().clone();
                if let Some(eligible) = next {
                    let started = std::time::Instant::now();
                    match me.place(eligible.clone()).await {
                        Ok(o) => {
                            tracing::info!(
                                members = eligible.len(),
                                owned = o.owned,
                                acquired = o.acquired,
                                released = o.released,
                                took_ms = started.elapsed().as_millis() as u64,
                                "placement changed"
                            );
                            let m = me.inner.observer.metrics();
                            m.cluster.placed(started.elapsed());
                            ready.store(true, std::sync::atomic::Ordering::Release);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "placement could not be applied; retrying");
                            let again = tokio::time::sleep(Duration::from_secs(1));
                            tokio::select! {
                                _ = again => continue,
                                changed = members.changed() => if changed.is_err() { return },
                            }
                        }
                    }
                }
                if members.changed().await.is_err() {
                    return;
                }
            }
        })
    }

    /// The running configuration, read-only: never waits for a reload in progress.
    pub fn live(&self) -> crate::config::LiveConfig {
        self.inner.live.subscribe()
    }

    /// The last placement's summary, brought up to date with reloads since; never waits.
    pub fn placement(&self) -> PlaceOutcome {
        self.inner.outcome.borrow().clone()
    }

    /// Follows [`Reloader::placement`] (the heartbeat announces it).
    pub fn placements(&self) -> tokio::sync::watch::Receiver<PlaceOutcome> {
        self.inner.outcome.subscribe()
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
        let placed = current
            .placed
            .as_ref()
            .map(|p| p.reassigned(&new, p.members.clone()));
        let d = diff(
            &view(&current.settings, current.placed.as_ref()),
            &view(&new, placed.as_ref()),
        );
        let summary = ReloadSummary {
            added: d.added.iter().map(|t| t.id.clone()).collect(),
            removed: d.removed.clone(),
            restarted: d.restarted.iter().map(|t| t.id.clone()).collect(),
            updated: d.updated.iter().map(|t| t.id.clone()).collect(),
            sinks_changed: d.sinks.is_some(),
            needs_restart: d.needs_restart.clone(),
        };
        if !self.apply(d).await {
            let e = "the supervisor did not apply the new configuration".to_string();
            self.inner.observer.reload(trigger, Err(&e));
            return Err(e);
        }
        let digest = placement::fleet_digest(&new.tenants);
        self.inner.outcome.send_modify(|o| match &placed {
            Some(p) => {
                let placed_at = o.placed_at;
                *o = outcome(&new, p, &ConfigDiff::default());
                o.placed_at = placed_at;
            }
            None => o.digest = digest,
        });
        // Tokens of every configured tenant (a hint reaching a replica that does not own the
        // tenant is checked here and forwarded): a rotated token applies at once.
        self.inner.hints.set_tokens(&new.tenants);
        current.settings = Arc::new(new);
        self.inner.live.publish(current.settings.clone());
        if placed.is_some() {
            current.placed = placed;
        }
        self.inner.observer.reload(trigger, Ok(summary.counts()));
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
            let (p, d) = files(&me.inner.current.lock().await.settings);
            let mut seen = snapshot(&p, d.as_deref());
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut changed = false;
            loop {
                tick.tick().await;
                let (p, d) = files(&me.inner.current.lock().await.settings);
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
