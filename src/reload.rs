//! Reconfiguration without restart. A reload is triggered by SIGHUP, `POST /reload`, or a change
//! to the configuration file or `tenants_dir` (seen by a polling watcher, debounced). The new
//! configuration is loaded and validated whole; when it is invalid the running one stays and the
//! error is returned, logged and counted. Otherwise the difference is handed to the supervisor,
//! which touches only what changed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ractor::ActorRef;
use serde::Serialize;

use crate::cluster::placement::{self, Owners, PlaceOutcome, PlaceTimings, ReadFrom};
use crate::config::{
    diff, load, load_placed, ConfigDiff, EnvSource, FileIndex, Fleet, Settings, TenantSpec,
};
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

/// What the supervisor runs: the configuration, restricted (in cluster mode) to the tenants
/// placement gives this replica. A reload changes the first, placement the second; both reach the
/// supervisor as the same add/remove diff.
struct Desired {
    /// The running configuration; in cluster mode with only the tenants this replica runs (full
    /// settings for every tenant of a fleet of 1,000,000 would be gigabytes on every replica).
    settings: Arc<Settings>,
    placed: Option<Placed>,
    /// Where placement reads the settings of tenants it gives this replica.
    source: Source,
}

/// Where the settings of tenants placed on a replica come from.
enum Source {
    /// The configuration files (size and modification time of each) as they were when last
    /// loaded and checked whole. While they stay so, placement reads from them only the tenants
    /// it gives this replica ([`load_placed`]), through the main file's index once a placement
    /// made one (the first that reads the files); once they changed, it loads and checks them
    /// whole first, as a reload does.
    Files(Files, Option<Arc<FileIndex>>),
    /// A configuration built in memory (an embedding program's, a test's): there is no file to
    /// read tenants from, so every tenant's settings are kept.
    Memory(Vec<Arc<TenantSpec>>),
}

/// Size and modification time of each configuration file (see [`snapshot`]).
type Files = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// Cluster mode: this replica's share of the fleet, as placement last decided it.
#[derive(Debug, Clone, Default)]
struct Placed {
    replica: String,
    /// The members placement was computed over (live, not leaving).
    members: BTreeSet<String>,
    /// Every configured tenant, as little as placement needs of it.
    fleet: Arc<Fleet>,
    /// Its digest (see [`placement::fleet_digest`]), computed once per configuration.
    digest: String,
    /// Owner of each tenant of `fleet`.
    owners: Owners,
}

impl Placed {
    fn new(replica: String, fleet: Arc<Fleet>, digest: String, members: BTreeSet<String>) -> Self {
        let owners = placement::place(&fleet, &members);
        Placed {
            replica,
            members,
            fleet,
            digest,
            owners,
        }
    }

    /// The same fleet over other members, computed from this placement (see
    /// [`placement::place_from`]).
    fn over(&self, members: BTreeSet<String>) -> Self {
        Placed {
            replica: self.replica.clone(),
            owners: placement::place_from(&self.owners, &self.fleet, &members),
            members,
            fleet: self.fleet.clone(),
            digest: self.digest.clone(),
        }
    }

    fn owned(&self) -> BTreeSet<&str> {
        self.owners.owned_by(&self.fleet, &self.replica)
    }
}

/// `shell`'s settings with `tenants` instead of its own.
fn with_tenants(shell: &Settings, tenants: Vec<Arc<TenantSpec>>) -> Settings {
    Settings {
        config_path: shell.config_path.clone(),
        connector: shell.connector.clone(),
        admin: shell.admin.clone(),
        sinks: shell.sinks.clone(),
        routing: shell.routing.clone(),
        tenants,
        telemetry: shell.telemetry.clone(),
        cluster: shell.cluster.clone(),
        hooks: shell.hooks.clone(),
    }
}

/// Sums a placement up.
fn outcome(placed: &Placed, owned: usize, d: &ConfigDiff) -> PlaceOutcome {
    PlaceOutcome {
        per_member: placed.owners.per_member(),
        owned,
        configured: placed.fleet.len(),
        settings_held: owned,
        acquired: d.added.len(),
        released: d.removed.len(),
        digest: placed.digest.clone(),
        placed_at: None,
    }
}

/// What [`Reloader::adopt`] changed.
struct Adopted {
    summary: ReloadSummary,
    outcome: Option<PlaceOutcome>,
}

/// Reloads the configuration; cheap to clone, reloads are serialized.
#[derive(Clone)]
pub struct Reloader {
    inner: Arc<Inner>,
}

/// Identifies the state of the watched files: size and modification time of each.
fn snapshot(config: &Path, tenants_dir: Option<&Path>) -> Files {
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
        // The files as `settings` read them (taken now: the watcher's first look is later still).
        let files = snapshot(
            &settings.config_path,
            settings.connector.tenants_dir.as_deref(),
        );
        let (current, configured, digest, fleet) = match replica {
            Some(replica) => {
                let fleet = Arc::new(Fleet::of(&settings.tenants));
                let digest = placement::fleet_digest(&fleet);
                let placed = Placed::new(replica, fleet.clone(), digest.clone(), BTreeSet::new());
                // No tenant runs before placement, and placement reads those it gives this
                // replica from the files: the whole fleet's settings are freed now, not held
                // until then (gigabytes at a million tenants, and the allocator kept the pages).
                let mut settings = settings;
                let all = std::mem::take(&mut settings.tenants);
                let source = if settings.config_path.is_file() {
                    drop(all);
                    crate::heap::give_back();
                    Source::Files(files, None)
                } else {
                    Source::Memory(all)
                };
                let desired = Desired {
                    settings: Arc::new(settings),
                    placed: Some(placed),
                    source,
                };
                (desired, fleet.len(), digest, Some(fleet))
            }
            None => {
                let fleet = Fleet::of(&settings.tenants);
                let desired = Desired {
                    settings: Arc::new(settings),
                    placed: None,
                    source: Source::Files(files, None),
                };
                (desired, fleet.len(), placement::fleet_digest(&fleet), None)
            }
        };
        let live = crate::config::live(current.settings.clone(), env.clone());
        live.publish(current.settings.clone(), fleet);
        let held = current.settings.tenants.len();
        let (outcome, _) = tokio::sync::watch::channel(PlaceOutcome {
            configured,
            settings_held: held,
            digest,
            ..Default::default()
        });
        Reloader {
            inner: Arc::new(Inner {
                path: current.settings.config_path.clone(),
                env,
                live,
                current: tokio::sync::Mutex::new(current),
                supervisor,
                observer,
                hints,
                outcome,
            }),
        }
    }

    /// Runs `read` over the configuration files (the main file and the environment) on a
    /// blocking thread: a large fleet's files take seconds.
    async fn read_files<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Path, &EnvSource) -> Result<T, crate::config::ConfigError> + Send + 'static,
    ) -> Result<T, String> {
        let (path, env) = (self.inner.path.clone(), self.inner.env.clone());
        tokio::task::spawn_blocking(move || read(&path, &env))
            .await
            .map_err(|e| format!("loading the configuration failed: {e}"))?
            .map_err(|e| e.to_string())
    }

    /// Loads and checks the configuration files whole, with their snapshot taken before (a
    /// change while it reads is seen as one afterwards).
    async fn load(&self, tenants_dir: Option<PathBuf>) -> Result<(Settings, Files), String> {
        self.read_files(move |path, env| {
            let files = snapshot(path, tenants_dir.as_deref());
            load(path, env).map(|s| (s, files))
        })
        .await
    }

    /// Reads only the `wanted` tenants' settings from the files (through `index` when there is
    /// one), if the files are the `checked` ones before and after the read (`Ok(None)`
    /// otherwise: they changed, and are to be checked whole). Returns the index to keep.
    async fn load_tenants(
        &self,
        wanted: BTreeSet<String>,
        tenants_dir: Option<PathBuf>,
        checked: Files,
        index: Option<Arc<FileIndex>>,
    ) -> Result<Option<(Vec<Arc<TenantSpec>>, Option<Arc<FileIndex>>)>, String> {
        self.read_files(move |path, env| {
            let unchanged = || snapshot(path, tenants_dir.as_deref()) == checked;
            if !unchanged() {
                return Ok(None);
            }
            let (settings, index) = load_placed(path, env, &wanted, index)?;
            let specs = settings.tenants;
            // Every tenant placed here read, from the files checked.
            Ok((unchanged() && specs.len() == wanted.len()).then_some((specs, index)))
        })
        .await
        .map(|read| read.map(|(specs, index)| (rehome(specs), index)))
    }

    /// Makes `full` (every configured tenant) the running configuration, with the tenants
    /// placement over `members` gives this replica in cluster mode: diffs it against the running
    /// one and hands the difference to the supervisor.
    async fn adopt(
        &self,
        current: &mut Desired,
        mut full: Settings,
        members: Option<BTreeSet<String>>,
    ) -> Result<Adopted, String> {
        let tokens = crate::hints::tokens_of(&full.tenants);
        let placed = match (&current.placed, members) {
            (Some(p), Some(members)) => {
                let fleet = Arc::new(Fleet::of(&full.tenants));
                let digest = placement::fleet_digest(&fleet);
                Some(Placed::new(p.replica.clone(), fleet, digest, members))
            }
            _ => None,
        };
        // Cluster mode: full settings only for the tenants this replica runs (none before the
        // first placement).
        if let Some(p) = &placed {
            let owned = p.owned();
            full.tenants.retain(|t| owned.contains(t.id.as_str()));
        }
        let d = diff(&current.settings, &full);
        let summary = ReloadSummary {
            added: d.added.iter().map(|t| t.id.clone()).collect(),
            removed: d.removed.clone(),
            restarted: d.restarted.iter().map(|t| t.id.clone()).collect(),
            updated: d.updated.iter().map(|t| t.id.clone()).collect(),
            sinks_changed: d.sinks.is_some(),
            needs_restart: d.needs_restart.clone(),
        };
        let outcome = placed.as_ref().map(|p| outcome(p, full.tenants.len(), &d));
        if !self.apply(d).await {
            return Err("the supervisor did not apply the new configuration".into());
        }
        // Tokens of every configured tenant (a hint reaching a replica that does not own the
        // tenant is checked here and forwarded): a rotated token applies at once.
        self.inner.hints.set_digests(tokens);
        current.settings = Arc::new(full);
        if let Some(p) = placed {
            current.placed = Some(p);
        }
        let fleet = current.placed.as_ref().map(|p| p.fleet.clone());
        self.inner.live.publish(current.settings.clone(), fleet);
        // The settings of tenants this replica does not run were freed just now.
        crate::heap::give_back();
        Ok(Adopted { summary, outcome })
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
    /// would. Tenants placed here that it does not run yet are read from the files: only they,
    /// while the files are as last checked whole; otherwise the files are loaded and checked
    /// whole first, as a reload does. When the files no longer load, the tenants placed
    /// elsewhere are still released, and the error returned. Without cluster mode it does nothing.
    pub async fn place(
        &self,
        members: BTreeSet<String>,
    ) -> Result<(PlaceOutcome, PlaceTimings), String> {
        let started = std::time::Instant::now();
        let mut current = self.inner.current.lock().await;
        let mut t = PlaceTimings {
            waited: started.elapsed(),
            ..Default::default()
        };
        let Some(old) = current.placed.clone() else {
            return Ok((PlaceOutcome::default(), t));
        };
        let new = old.over(members.clone());
        let acquiring: BTreeSet<String> = {
            let running: BTreeSet<&str> = current
                .settings
                .tenants
                .iter()
                .map(|t| t.id.as_str())
                .collect();
            new.owned()
                .into_iter()
                .filter(|id| !running.contains(id))
                .map(str::to_string)
                .collect()
        };
        t.computed = started.elapsed() - t.waited;
        if acquiring.is_empty() {
            let o = self.restrict_to(&mut current, new, Vec::new()).await;
            return o.map(|o| (o, t));
        }
        let reading = std::time::Instant::now();
        let (checked, index) = match &current.source {
            Source::Files(checked, index) => (checked.clone(), index.clone()),
            Source::Memory(all) => {
                let specs = all
                    .iter()
                    .filter(|t| acquiring.contains(&t.id))
                    .cloned()
                    .collect();
                t.read_from = ReadFrom::Memory;
                let o = self.restrict_to(&mut current, new, specs).await;
                return o.map(|o| (o, t));
            }
        };
        let dir = current.settings.connector.tenants_dir.clone();
        let read = self
            .load_tenants(acquiring, dir.clone(), checked.clone(), index.clone())
            .await;
        let loaded = match read {
            Ok(Some((specs, kept))) => {
                t.read = reading.elapsed();
                let same = |k: &Arc<FileIndex>| index.as_ref().is_some_and(|i| Arc::ptr_eq(i, k));
                t.read_from = match &kept {
                    Some(k) if same(k) => ReadFrom::Index,
                    _ => ReadFrom::File,
                };
                current.source = Source::Files(checked, kept);
                let o = self.restrict_to(&mut current, new, specs).await;
                return o.map(|o| (o, t));
            }
            // The files changed: loaded and checked whole.
            Ok(None) => self.load(dir).await,
            Err(e) => Err(e),
        };
        t.read = reading.elapsed();
        t.read_from = ReadFrom::Checked;
        let (full, files) = match loaded {
            Ok(loaded) => loaded,
            Err(e) => {
                // Release what moved away all the same: its new owner waits for it.
                let _ = self.restrict_to(&mut current, new, Vec::new()).await;
                return Err(format!("the tenants placed here cannot start, as the configuration files no longer load: {e}"));
            }
        };
        let adopted = self.adopt(&mut current, full, Some(members)).await?;
        current.source = Source::Files(files, None);
        let mut outcome = adopted.outcome.unwrap_or_default();
        outcome.placed_at = Some(SystemTime::now());
        self.inner.outcome.send_replace(outcome.clone());
        Ok((outcome, t))
    }

    /// Runs, of the tenants already running, those `new` places here, and `more` (read from the
    /// files just now; none when the placement gives this replica no new tenant, or its new
    /// tenants cannot be read).
    async fn restrict_to(
        &self,
        current: &mut Desired,
        new: Placed,
        more: Vec<Arc<TenantSpec>>,
    ) -> Result<PlaceOutcome, String> {
        let owned = new.owned();
        let mut kept: Vec<Arc<TenantSpec>> = current
            .settings
            .tenants
            .iter()
            .filter(|t| owned.contains(t.id.as_str()))
            .cloned()
            .chain(more)
            .collect();
        kept.sort_by(|a, b| a.id.cmp(&b.id));
        let owned = owned.len();
        let next = with_tenants(&current.settings, kept);
        let d = diff(&current.settings, &next);
        let mut outcome = outcome(&new, owned, &d);
        outcome.settings_held = next.tenants.len();
        if !self.apply(d).await {
            return Err("the supervisor did not apply the new placement".into());
        }
        current.settings = Arc::new(next);
        let fleet = Some(new.fleet.clone());
        current.placed = Some(new);
        self.inner.live.publish(current.settings.clone(), fleet);
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
            // After a failed placement: 1 s, doubling to 30 s (a placement that must read the
            // files of a large fleet is not retried every second while they stay broken).
            let mut delay = Duration::from_secs(1);
            loop {
                let next = members.borrow_and_update().clone();
                if let Some(eligible) = next {
                    let started = std::time::Instant::now();
                    match me.place(eligible.clone()).await {
                        Ok((o, t)) => {
                            tracing::info!(
                                members = eligible.len(),
                                owned = o.owned,
                                acquired = o.acquired,
                                released = o.released,
                                took_ms = started.elapsed().as_millis() as u64,
                                waited_ms = t.waited.as_millis() as u64,
                                computed_ms = t.computed.as_millis() as u64,
                                read_ms = t.read.as_millis() as u64,
                                read_from = %t.read_from.as_str(),
                                "placement changed"
                            );
                            if o.acquired > 0 || o.released > 0 {
                                // Released tenants' actors and settings go; taken-over ones'
                                // claims read and free their state: the trimmer gives it back.
                                crate::heap::churned();
                            }
                            let m = me.inner.observer.metrics();
                            m.cluster.placed(started.elapsed());
                            ready.store(true, std::sync::atomic::Ordering::Release);
                            delay = Duration::from_secs(1);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, retry_in_s = delay.as_secs(), "placement could not be applied; retrying");
                            let again = tokio::time::sleep(delay);
                            delay = (delay * 2).min(Duration::from_secs(30));
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
        let dir = current.settings.connector.tenants_dir.clone();
        let (new, files) = match self.load(dir).await {
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
        // Without cluster mode only the digest is announced (in cluster mode `adopt` makes it).
        let digest = current
            .placed
            .is_none()
            .then(|| placement::fleet_digest(&Fleet::of(&new.tenants)));
        let members = current.placed.as_ref().map(|p| p.members.clone());
        let adopted = match self.adopt(&mut current, new, members).await {
            Ok(a) => a,
            Err(e) => {
                self.inner.observer.reload(trigger, Err(&e));
                return Err(e);
            }
        };
        self.inner.outcome.send_modify(|o| match adopted.outcome {
            Some(n) => {
                let placed_at = o.placed_at;
                *o = n;
                o.acquired = 0;
                o.released = 0;
                o.placed_at = placed_at;
            }
            None => o.digest = digest.unwrap_or_default(),
        });
        current.source = Source::Files(files, None);
        let summary = adopted.summary;
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

/// Copies specs read on a blocking thread into memory allocated here, and frees the originals
/// and their thread's free memory. glibc gives that thread an arena of its own, where the specs
/// sat among the parse's freed temporaries, and their few live bytes per page kept the pages
/// (measured at 100,000 tenants on 10 replicas: 0.9 KiB per owned tenant, docs/benchmarks.md).
fn rehome(read: Vec<Arc<TenantSpec>>) -> Vec<Arc<TenantSpec>> {
    let copies = read
        .iter()
        .map(|s| Arc::new(TenantSpec::clone(s)))
        .collect();
    drop(read);
    crate::heap::give_back();
    copies
}
