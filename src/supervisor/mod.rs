//! The connector supervisor: spawns, linked, one tenant actor per configured tenant and one sink
//! actor, and implements the restart policy itself (ractor has none: its default stops the
//! supervisor when any child ends).
//!
//! - A crashed tenant is restarted after an exponential backoff with jitter; one that crashes more
//!   than `restart_intensity` times within `restart_period` is parked as `failed` (shown in
//!   health) and tried again only after `failed_cooldown`. No tenant's failure stops another
//!   tenant, the sink or the process.
//! - A crashed sink is restarted at once (after a short backoff); tenants resend the page it did
//!   not acknowledge.
//! - A child stopped on purpose is marked first, so its exit is not taken for a crash.

mod policy;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};
use rand::Rng;

use crate::config::{ConfigDiff, RestartPolicy, Settings, SinkSpec, TenantSpec};
use crate::faults::FaultInjection;
use crate::health::{HealthMap, LastError, TenantState};
use crate::hints::Hints;
use crate::metrics::{Observation, Observer};
use crate::sink::{Backlogs, SinkActor, SinkArgs, SinkMsg, SinkStats};
use crate::state::StateStore;
use crate::tenant::slot::{Slots, StopSignal};
use crate::tenant::{TenantArgs, TenantMsg, WizTenantActor};
use crate::wiz::WizHttp;
pub use policy::restart_delay;

/// Messages of the supervisor.
pub enum SupervisorMsg {
    /// Restart a crashed tenant (scheduled by the restart policy). Stale when the generation moved.
    Restart { tenant: String, generation: u64 },
    /// Restart the sink after it crashed.
    RestartSink,
    /// Ask a tenant to poll now (`full`: a full sweep); replies false for an unknown or not
    /// running tenant.
    PollNow(String, bool, RpcReplyPort<bool>),
    /// Send tenant `.0`'s baseline to its destination `.1` again; replies why not (an unknown or
    /// stopped tenant, a sink that does not take its events).
    Baseline(String, String, RpcReplyPort<Result<(), BaselineRefused>>),
    /// Stop every tenant (each finishes its page in flight), then the sink; reply when done.
    Shutdown(RpcReplyPort<()>),
    /// Apply a reload's difference; replies once every change has been started.
    Apply(ConfigDiff, RpcReplyPort<()>),
    /// Start a reconfigured tenant whose old actor has stopped.
    Respawn(String),
    /// The running sink actor (write-back delivers its audit events through it).
    Sink(RpcReplyPort<Option<ActorRef<SinkMsg>>>),
    /// Start the deferred tenants whose first poll comes within [`START_AHEAD`].
    StartDue,
    /// A hint arrived for a tenant whose actor is not running: if it is deferred, start it now
    /// (its first poll keeps its time; the hint is looked up at once). Otherwise (a restart
    /// pending) nothing: its next actor looks at the queue when it starts.
    StartNow(String),
}

/// Why a baseline cannot be sent on request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaselineRefused {
    UnknownTenant,
    NotRunning,
    /// The sink does not take the tenant's events; its destinations are listed.
    NotRouted(Vec<String>),
}

/// What the supervisor is started with.
pub struct SupervisorArgs {
    pub settings: Settings,
    pub http: WizHttp,
    pub health: HealthMap,
    pub sink_stats: Arc<SinkStats>,
    pub faults: FaultInjection,
    pub observer: Observer,
    pub store: StateStore,
    /// Set when the state store had to be recreated: shown on every tenant at start.
    pub store_recovered: Option<String>,
    /// Set once every tenant has been spawned.
    pub ready: Arc<AtomicBool>,
    /// Webhook hints: each tenant's queue comes from here.
    pub hints: Hints,
    /// How long before its first poll a tenant's actor starts ([`START_AHEAD`]).
    pub start_ahead: Duration,
}

/// One supervised tenant.
struct Child {
    spec: Arc<TenantSpec>,
    actor: Option<ActorRef<TenantMsg>>,
    /// The running actor's stop signal: given before a deliberate stop, so a retry wait ends at
    /// once instead of holding the stop back.
    stop: Arc<StopSignal>,
    /// Crash times within the restart period.
    crashes: VecDeque<Instant>,
    /// Bumped whenever a scheduled restart must be ignored (the tenant was restarted or
    /// parked meanwhile).
    generation: u64,
    /// Set before a deliberate stop, so the exit is not a crash.
    stopping: bool,
    /// Removed by a reload: forget it once its actor has stopped.
    removing: bool,
    /// Reconfigured by a reload: start it with this spec once its actor has stopped.
    replacement: Option<Arc<TenantSpec>>,
    /// Not started yet: its first poll is this far off, and its actor starts shortly before
    /// (see [`START_AHEAD`]).
    deferred_until: Option<Instant>,
}

impl Child {
    fn new(spec: Arc<TenantSpec>) -> Self {
        Child {
            spec,
            actor: None,
            stop: Arc::default(),
            crashes: VecDeque::new(),
            generation: 0,
            stopping: false,
            removing: false,
            replacement: None,
            deferred_until: None,
        }
    }
}

pub struct SupervisorState {
    instance: String,
    policy: RestartPolicy,
    startup_jitter: Duration,
    shutdown_timeout: Duration,
    sink_specs: Vec<SinkSpec>,
    /// Each tenant's destinations (`None`: every sink takes every tenant).
    sink_routing: Option<Arc<crate::sink::routing::Routing>>,
    sink: Option<ActorRef<SinkMsg>>,
    sink_crashes: u32,
    /// The sinks' durable backlogs (`state_dir/backlog`), kept across sink restarts.
    backlogs: Backlogs,
    /// Tenants whose destinations (or their formats) a reload changed, told once the new sink
    /// actor runs.
    destinations_changed: Vec<String>,
    /// Sinks whose `format` a reload changed: their tenants get a baseline in the new format
    /// (pages built before they learned it skip that sink; see `sink::actor`).
    reformatted: Vec<String>,
    /// The sink is being replaced by a reload: start the new one when the old has stopped.
    sink_replacing: bool,
    children: BTreeMap<String, Child>,
    by_actor: HashMap<ActorId, String>,
    http: WizHttp,
    health: HealthMap,
    sink_stats: Arc<SinkStats>,
    faults: FaultInjection,
    observer: Observer,
    store: StateStore,
    slots: Slots,
    /// The tenants' poll alarms (one task for the fleet).
    alarms: crate::tenant::alarm::Alarms,
    ready: Arc<AtomicBool>,
    shutting_down: bool,
    /// Cluster mode: how long a new owner waits for a live holder's release (see
    /// [`TenantArgs::claim_patience`]).
    claim_patience: Duration,
    /// Cluster mode: the shortest window the first polls of tenants moved here are spread over
    /// (see [`placement_window`]).
    moved_jitter: Option<Duration>,
    /// Set once the tenants configured at start were spawned.
    started: bool,
    hints: Hints,
    /// Deferred starts by first-poll time. An entry is current while its child is not running
    /// and still deferred to that time (see [`Child::deferred_until`]); others are skipped.
    deferred: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, String)>>,
    /// A [`SupervisorMsg::StartDue`] is scheduled.
    start_tick: bool,
    /// How long before its first poll a tenant's actor starts ([`START_AHEAD`]).
    start_ahead: Duration,
}

/// A tenant whose first poll is further off than this is not started at once: its actor starts
/// this long before its first poll. A large fleet is then ready once its configuration is
/// loaded (100,000 actors take about 2 s to start), and its actors start spread over
/// `startup_jitter` like their first polls.
pub const START_AHEAD: Duration = Duration::from_secs(2);
/// How often deferred starts are looked at.
const START_TICK: Duration = Duration::from_millis(250);

/// Tenants moved here by a failover whose first polls may start per second (see
/// [`placement_window`]).
const MOVED_PER_SECOND: f64 = 100.0;
/// The longest window the first polls of moved tenants are spread over, however many moved: a
/// failover of 10,000 tenants has them all polled within `failover_after` plus about 10 s
/// (noticing the death and placing take about 3 s, then the claims follow this window), 2,000
/// first polls a second (`max_concurrent_sweeps` still bounds the sweeps running at once).
/// Measured in session 15: 8 s here had such a failover polled after exactly 15 s.
const MOVED_WINDOW_MAX: Duration = Duration::from_secs(5);

/// The window the first polls of `added` tenants are spread over. At start, and in cluster mode
/// at this replica's first placement (it owned nothing before: a start, a join, a rejoin), the
/// whole `startup_jitter`, as for a single node. Tenants added later in cluster mode were moved
/// here (a failover, a handover, a member that joined or left): they should poll soon, since
/// their last poll elsewhere may be a while ago, but not all at once: `moved_min` at least,
/// longer as more move (`MOVED_PER_SECOND`), never longer than [`MOVED_WINDOW_MAX`] or
/// `startup_jitter`. Without cluster mode (`moved_min` is `None`) a tenant added by a reload
/// takes `startup_jitter` too.
fn placement_window(
    startup_jitter: Duration,
    moved_min: Option<Duration>,
    first_placement: bool,
    added: usize,
) -> Duration {
    match moved_min {
        Some(min) if !first_placement => Duration::from_secs_f64(added as f64 / MOVED_PER_SECOND)
            .max(min)
            .min(MOVED_WINDOW_MAX.max(min))
            .min(startup_jitter),
        _ => startup_jitter,
    }
}

/// Tenant actors started together at most (see `spawn_tenants`).
const SPAWN_CONCURRENCY: usize = 256;

/// Each supervisor's actors get a unique name prefix, so several can live in one process.
static INSTANCES: AtomicU64 = AtomicU64::new(0);

pub struct ConnectorSupervisor;

impl SupervisorState {
    fn sink_name(&self) -> String {
        format!("{}:sink", self.instance)
    }

    async fn spawn_sink(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let (sink, _) = Actor::spawn_linked(
            Some(self.sink_name()),
            SinkActor,
            SinkArgs {
                specs: self.sink_specs.clone(),
                routing: self.sink_routing.clone(),
                stats: self.sink_stats.clone(),
                backlogs: self.backlogs.clone(),
                faults: self.faults.clone(),
            },
            myself.get_cell(),
        )
        .await
        .map_err(|e| format!("cannot start the sink: {e}"))?;
        self.sink = Some(sink);
        Ok(())
    }

    /// The sinks that take tenant `id`'s events now.
    fn destinations(&self, id: &str) -> Arc<[String]> {
        crate::sink::routing::sinks_for(self.sink_routing.as_deref(), &self.sink_specs, id)
    }

    /// The formats `destinations` take.
    fn formats(&self, destinations: &[String]) -> crate::format::FormatSet {
        crate::sink::routing::formats_of(&self.sink_specs, destinations)
    }

    async fn spawn_tenant(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        id: &str,
        first_poll_in: Duration,
    ) {
        let Some(args) = self.tenant_args(id, first_poll_in) else {
            return;
        };
        let result = Actor::spawn_linked(None, WizTenantActor, args, myself.get_cell()).await;
        self.spawned(myself, id, result.map(|(actor, _)| actor));
    }

    /// Starts tenants, each with the delay of its first poll: one whose first poll is more than
    /// [`START_AHEAD`] off is deferred (see [`SupervisorState::defer`]), the others start now.
    async fn spawn_tenants(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        tenants: Vec<(String, Duration)>,
    ) {
        let (now, later): (Vec<_>, Vec<_>) = tenants
            .into_iter()
            .partition(|(_, first)| *first <= self.start_ahead);
        if !later.is_empty() {
            self.defer(myself, later);
        }
        self.start_now(myself, now).await;
    }

    /// Records tenants to start shortly before their first polls: their health shows when that
    /// is, and a hint for one of them starts it at once (its queue exists, so a hint is queued
    /// here, and the idle waker set at start tells this supervisor).
    fn defer(&mut self, myself: &ActorRef<SupervisorMsg>, tenants: Vec<(String, Duration)>) {
        let (now, wall) = (Instant::now(), SystemTime::now());
        for (id, first) in tenants {
            let Some(child) = self.children.get_mut(&id) else {
                continue;
            };
            child.deferred_until = Some(now + first);
            self.deferred
                .push(std::cmp::Reverse((now + first, id.clone())));
            self.health
                .update(&id, |h| h.next_poll_at = Some(wall + first));
            self.hints.queue(&id);
        }
        self.schedule_start_tick(myself);
    }

    fn schedule_start_tick(&mut self, myself: &ActorRef<SupervisorMsg>) {
        if !self.start_tick && !self.deferred.is_empty() {
            self.start_tick = true;
            myself.send_after(START_TICK, || SupervisorMsg::StartDue);
        }
    }

    /// Starts the deferred tenants whose first poll is within [`START_AHEAD`].
    async fn start_due(&mut self, myself: &ActorRef<SupervisorMsg>) {
        self.start_tick = false;
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(std::cmp::Reverse((at, _))) = self.deferred.peek() {
            if *at > now + self.start_ahead {
                break;
            }
            let std::cmp::Reverse((at, id)) = self.deferred.pop().expect("peeked");
            let current = self
                .children
                .get(&id)
                .is_some_and(|c| c.actor.is_none() && c.deferred_until == Some(at));
            if current {
                due.push((id, at.saturating_duration_since(now)));
            }
        }
        self.start_now(myself, due).await;
        self.schedule_start_tick(myself);
    }

    /// Starts tenant `id` now if it is deferred, its first poll kept where it was.
    async fn start_deferred(&mut self, myself: &ActorRef<SupervisorMsg>, id: &str) {
        let Some(at) = self
            .children
            .get(id)
            .filter(|c| c.actor.is_none())
            .and_then(|c| c.deferred_until)
        else {
            return;
        };
        let first = at.saturating_duration_since(Instant::now());
        self.start_now(myself, vec![(id.to_string(), first)]).await;
    }

    /// Starts tenants now, up to [`SPAWN_CONCURRENCY`] at a time: each start runs the new
    /// actor's `pre_start` on its own task, so starting them together keeps both cores busy.
    async fn start_now(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        tenants: Vec<(String, Duration)>,
    ) {
        if self.shutting_down {
            return;
        }
        for chunk in tenants.chunks(SPAWN_CONCURRENCY) {
            let prepared: Vec<(String, TenantArgs)> = chunk
                .iter()
                .filter_map(|(id, first)| Some((id.clone(), self.tenant_args(id, *first)?)))
                .collect();
            let starts = prepared.into_iter().map(|(id, args)| {
                let cell = myself.get_cell();
                async move {
                    // Unnamed: nothing looks tenants up by name (the supervisor keeps their
                    // references), and ractor's global name registry would cost every start.
                    let r = Actor::spawn_linked(None, WizTenantActor, args, cell).await;
                    (id, r.map(|(actor, _)| actor))
                }
            });
            for (id, result) in futures_util::future::join_all(starts).await {
                self.spawned(myself, &id, result);
            }
        }
    }

    /// The arguments of tenant `id`'s next actor (`None` for an unknown tenant).
    fn tenant_args(&mut self, id: &str, first_poll_in: Duration) -> Option<TenantArgs> {
        let destinations = self.destinations(id);
        let child = self.children.get_mut(id)?;
        child.stop = Arc::default();
        child.deferred_until = None;
        let args = TenantArgs {
            spec: child.spec.clone(),
            http: self.http.clone(),
            health: self.health.clone(),
            sink_name: format!("{}:sink", self.instance),
            sink_stats: self.sink_stats.clone(),
            store: self.store.clone(),
            slots: self.slots.clone(),
            alarms: self.alarms.clone(),
            stop: child.stop.clone(),
            faults: self.faults.clone(),
            observer: self.observer.clone(),
            first_poll_in,
            claim_patience: self.claim_patience,
            failed_cooldown: self.policy.failed_cooldown.0,
            hints: self.hints.queue(id),
            hint_metrics: self.hints.metrics().clone(),
            destinations: destinations.clone(),
            formats: self.formats(&destinations),
        };
        Some(args)
    }

    /// Records the outcome of starting tenant `id`'s actor.
    fn spawned(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        id: &str,
        result: Result<ActorRef<TenantMsg>, ractor::SpawnErr>,
    ) {
        match result {
            Ok(actor) => {
                self.by_actor.insert(actor.get_id(), id.to_string());
                if let Some(child) = self.children.get_mut(id) {
                    child.actor = Some(actor);
                    child.stopping = false;
                }
            }
            Err(e) => {
                // pre_start failed: treat it like a crash so the policy applies.
                let message = format!("tenant actor failed to start: {e}");
                self.on_crash(myself, id, message);
            }
        }
    }

    /// A new tenant's first poll: a random delay within `window` (see [`placement_window`]) and
    /// below its interval, so a large fleet does not hit the token endpoints at once.
    fn first_poll_delay(spec: &TenantSpec, window: Duration) -> Duration {
        window
            .min(spec.poll_interval.0)
            .mul_f64(rand::rng().random_range(0.0..1.0))
    }

    /// The window the first polls of `added` new tenants are spread over.
    fn added_window(&self, added: usize) -> Duration {
        placement_window(
            self.startup_jitter,
            self.moved_jitter,
            !self.started || self.children.is_empty(),
            added,
        )
    }

    /// Applies the restart policy to a tenant whose actor died unexpectedly.
    fn on_crash(&mut self, myself: &ActorRef<SupervisorMsg>, id: &str, message: String) {
        let Some(child) = self.children.get_mut(id) else {
            return;
        };
        child.actor = None;
        let now = Instant::now();
        let period = self.policy.period.0;
        child.crashes.push_back(now);
        while child
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > period)
        {
            child.crashes.pop_front();
        }
        child.generation += 1;
        let generation = child.generation;
        let at = SystemTime::now();
        let crashes = child.crashes.len() as u32;
        if crashes > self.policy.intensity {
            let cooldown = self.policy.failed_cooldown.0;
            self.observer.emit(
                id,
                Observation::Parked {
                    error: &message,
                    crashes,
                    retry_in: cooldown,
                },
            );
            child.crashes.clear();
            self.health.update(id, |h| {
                h.state = TenantState::Failed;
                h.last_error = Some(LastError { message, at });
                h.next_poll_at = Some(at + cooldown);
            });
            let tenant = id.to_string();
            myself.send_after(cooldown, move || SupervisorMsg::Restart {
                tenant,
                generation,
            });
        } else {
            let delay = restart_delay(&self.policy, crashes, rand::rng().random_range(0.5..=1.0));
            self.observer.emit(
                id,
                Observation::Crashed {
                    error: &message,
                    crashes,
                    restart_in: delay,
                },
            );
            self.health.update(id, |h| {
                h.state = TenantState::Backoff;
                h.last_error = Some(LastError { message, at });
                h.next_poll_at = Some(at + delay);
            });
            let tenant = id.to_string();
            myself.send_after(delay, move || SupervisorMsg::Restart { tenant, generation });
        }
    }

    fn child_exited(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        cell: &ActorCell,
        crash: Option<String>,
    ) {
        let id = cell.get_id();
        if self.sink.as_ref().is_some_and(|s| s.get_id() == id) {
            self.sink = None;
            if self.shutting_down {
                return;
            }
            if std::mem::take(&mut self.sink_replacing) {
                tracing::info!("sink stopped for a reload; starting the new one");
                let _ = myself.send_message(SupervisorMsg::RestartSink);
                return;
            }
            self.sink_crashes += 1;
            let delay = Duration::from_millis(100 * (1 << self.sink_crashes.min(6)));
            tracing::error!(
                error = crash.as_deref().unwrap_or("stopped"),
                restart_in_ms = delay.as_millis() as u64,
                "sink stopped unexpectedly; restarting it (tenants hold their unacknowledged page)"
            );
            myself.send_after(delay, || SupervisorMsg::RestartSink);
            return;
        }
        let Some(tenant) = self.by_actor.remove(&id) else {
            return;
        };
        if !self.shutting_down {
            if let Some(c) = self.children.get_mut(&tenant) {
                if c.removing {
                    self.children.remove(&tenant);
                    self.health.remove(&tenant);
                    self.observer.metrics().forget(&tenant);
                    self.hints.forget(&tenant);
                    self.release(&tenant);
                    tracing::info!(tenant = %tenant, "tenant removed");
                    return;
                }
                if let Some(spec) = c.replacement.take() {
                    c.spec = spec;
                    c.actor = None;
                    c.crashes.clear();
                    let _ = myself.send_message(SupervisorMsg::Respawn(tenant));
                    return;
                }
            }
        }
        if let Some(reason) = crash.as_deref().filter(|r| r.contains("fenced: ")) {
            self.on_fenced(myself, &tenant, reason);
            return;
        }
        let deliberate =
            self.shutting_down || self.children.get(&tenant).is_none_or(|c| c.stopping);
        if deliberate {
            if let Some(c) = self.children.get_mut(&tenant) {
                c.actor = None;
            }
            self.health.update(&tenant, |h| {
                h.state = TenantState::Stopped;
                h.next_poll_at = None;
            });
            return;
        }
        let message = crash.unwrap_or_else(|| "the tenant actor stopped unexpectedly".into());
        self.on_crash(myself, &tenant, message);
    }

    /// Cluster mode: writes the release of a tenant this replica gave up, in the background (the
    /// next owner waits for it), then drops its local cache.
    fn release(&self, tenant: &str) {
        if self.store.replicated().is_none() {
            return;
        }
        let store = self.store.clone();
        let keys = self.state_keys(tenant);
        tokio::spawn(async move {
            for key in keys {
                // Released (its state is in NATS): the local cache of it goes; kept when the
                // release failed, as the next owner may need this replica to publish it.
                if store.release(&key).await {
                    if let Err(e) = store.forget(&key).await {
                        tracing::warn!(tenant = %key, error = %e, "could not drop the local cache of a tenant handed over; it stays until the next handover");
                    }
                }
            }
        });
    }

    /// The state keys of `tenant` (one per feed; see [`crate::feeds::state_keys`]).
    fn state_keys(&self, tenant: &str) -> Vec<String> {
        match self.children.get(tenant) {
            Some(c) => crate::feeds::state_keys(tenant, &c.spec.feeds),
            None => vec![tenant.to_string()],
        }
    }

    /// A tenant stopped because another replica took it over (its state write was fenced). Not a
    /// crash: it is started again shortly, and its new actor waits until this replica may own it.
    fn on_fenced(&mut self, myself: &ActorRef<SupervisorMsg>, id: &str, reason: &str) {
        let Some(child) = self.children.get_mut(id) else {
            return;
        };
        child.actor = None;
        child.generation += 1;
        let generation = child.generation;
        let at = SystemTime::now();
        let delay = Duration::from_secs(1);
        self.health.update(id, |h| {
            h.state = TenantState::Backoff;
            h.last_error = Some(LastError {
                message: reason.to_string(),
                at,
            });
            h.next_poll_at = Some(at + delay);
        });
        let tenant = id.to_string();
        myself.send_after(delay, move || SupervisorMsg::Restart { tenant, generation });
    }

    /// Applies a reload's difference. Untouched tenants are not touched at all: they keep their
    /// token, timer and memory.
    async fn apply(&mut self, myself: &ActorRef<SupervisorMsg>, diff: ConfigDiff) {
        for id in &diff.removed {
            let Some(c) = self.children.get_mut(id) else {
                continue;
            };
            c.removing = true;
            c.stopping = true;
            c.generation += 1;
            c.stop.stop();
            match &c.actor {
                Some(a) => a.stop(Some("removed from the configuration".into())),
                None => {
                    self.children.remove(id);
                    self.health.remove(id);
                    self.observer.metrics().forget(id);
                    self.hints.forget(id);
                    self.release(id);
                    tracing::info!(tenant = %id, "tenant removed");
                }
            }
        }
        for spec in diff.restarted {
            let id = spec.id.clone();
            let Some(c) = self.children.get_mut(&id) else {
                continue;
            };
            c.generation += 1;
            match &c.actor {
                Some(a) => {
                    c.replacement = Some(spec);
                    c.stopping = true;
                    c.stop.stop();
                    a.stop(Some("reconfigured".into()));
                }
                // Not started yet: it starts with the new spec at its time.
                None if c.deferred_until.is_some() => c.spec = spec,
                None => {
                    // Crashed, parked or backing off: a new configuration is worth a new try.
                    c.spec = spec;
                    c.crashes.clear();
                    self.spawn_tenant(myself, &id, Duration::ZERO).await;
                }
            }
        }
        for spec in diff.updated {
            let Some(c) = self.children.get_mut(&spec.id) else {
                continue;
            };
            self.http
                .limiters()
                .set_rate(&spec.credential_key(), spec.rate_limit);
            c.spec = spec.clone();
            if let Some(a) = &c.actor {
                let _ = a.send_message(TenantMsg::Update(spec));
            }
        }
        let mut added = Vec::new();
        let window = self.added_window(diff.added.len());
        for spec in diff.added {
            let id = spec.id.clone();
            if let Some(c) = self.children.get_mut(&id) {
                // Removed a moment ago and back before its actor stopped (placement moved it
                // away and back): start it again once the old actor has stopped.
                if c.removing {
                    c.removing = false;
                    c.replacement = Some(spec);
                }
                continue;
            }
            self.health.ensure(&id);
            self.children.insert(id.clone(), Child::new(spec.clone()));
            added.push((id, SupervisorState::first_poll_delay(&spec, window)));
        }
        let sinks = diff.sinks;
        if let Some(sinks) = &sinks {
            // Tenants whose destinations changed learn them (a new one gets a baseline); the
            // others are not disturbed. Set before the new tenants start, so they start with
            // theirs.
            let before: HashMap<String, (Arc<[String]>, crate::format::FormatSet)> = self
                .children
                .keys()
                .map(|id| {
                    let d = self.destinations(id);
                    let f = self.formats(&d);
                    (id.clone(), (d, f))
                })
                .collect();
            let old_formats: HashMap<String, crate::format::Format> = self
                .sink_specs
                .iter()
                .map(|s| (s.name.clone(), s.format))
                .collect();
            self.sink_specs = sinks.specs.clone();
            self.sink_routing = sinks.routing.clone();
            self.reformatted = self
                .sink_specs
                .iter()
                .filter(|s| old_formats.get(&s.name).is_some_and(|f| *f != s.format))
                .map(|s| s.name.clone())
                .collect();
            // Told once the new sink actor runs (a baseline sent before would meet the old
            // routes).
            self.destinations_changed = before
                .into_iter()
                .filter(|(id, (old, old_f))| {
                    let now = self.destinations(id);
                    now != *old
                        || self.formats(&now) != *old_f
                        || self.reformatted.iter().any(|s| now.contains(s))
                })
                .map(|(id, _)| id)
                .collect();
        }
        self.spawn_tenants(myself, added).await;
        if sinks.is_some() {
            match &self.sink {
                Some(s) => {
                    self.sink_replacing = true;
                    s.stop(Some("reconfigured".into()));
                }
                None => {
                    let _ = myself.send_message(SupervisorMsg::RestartSink);
                }
            }
        }
    }

    async fn shutdown(&mut self) {
        self.shutting_down = true;
        let timeout = self.shutdown_timeout;
        let mut stops = tokio::task::JoinSet::new();
        for (id, child) in self.children.iter_mut() {
            child.stopping = true;
            child.generation += 1;
            child.stop.stop();
            if let Some(a) = child.actor.clone() {
                let id = id.clone();
                stops.spawn(async move {
                    if a.stop_and_wait(Some("shutdown".into()), Some(timeout))
                        .await
                        .is_err()
                    {
                        tracing::warn!(tenant = %id, "tenant did not stop in time; killing it");
                        a.kill();
                    }
                });
            }
        }
        while stops.join_next().await.is_some() {}
        // Cluster mode: hand the tenants over (their pages in flight are committed by now).
        // Most need no release write: see `StateStore::released_at_shutdown`.
        if self.store.replicated().is_some() {
            let mut releases = tokio::task::JoinSet::new();
            let mut left = 0usize;
            for id in self.children.keys() {
                let store = self.store.clone();
                let keys: Vec<String> = self
                    .state_keys(id)
                    .into_iter()
                    .filter(|k| store.released_at_shutdown(k))
                    .collect();
                if keys.is_empty() {
                    left += 1;
                    continue;
                }
                releases.spawn(async move {
                    let mut all = true;
                    for key in keys {
                        all &= store.release(&key).await;
                    }
                    all
                });
            }
            let released = tokio::time::timeout(timeout, async {
                let mut n = 0usize;
                while let Some(r) = releases.join_next().await {
                    n += usize::from(r.unwrap_or(false));
                }
                n
            })
            .await
            .unwrap_or(0);
            tracing::info!(
                released,
                left_to_takeover = left,
                tenants = self.children.len(),
                "tenants handed over to the other replicas (released, or taken over once this replica's membership key is gone)"
            );
        }
        // Their exit events are still queued behind this message: record the outcome here.
        for (id, child) in self.children.iter_mut() {
            child.actor = None;
            self.health.update(id, |h| {
                h.state = TenantState::Stopped;
                h.next_poll_at = None;
            });
        }
        if let Some(sink) = self.sink.take() {
            if sink
                .stop_and_wait(Some("shutdown".into()), Some(timeout))
                .await
                .is_err()
            {
                sink.kill();
            }
        }
    }
}

impl Actor for ConnectorSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        mut args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let c = &args.settings.connector;
        let mut children = BTreeMap::new();
        // Taken, not cloned: a 100,000-tenant fleet's specs are a large copy.
        for spec in std::mem::take(&mut args.settings.tenants) {
            args.health.ensure(&spec.id);
            if let Some(note) = &args.store_recovered {
                let at = SystemTime::now();
                args.health.update(&spec.id, |h| {
                    h.last_error = Some(LastError {
                        message: note.clone(),
                        at,
                    })
                });
            }
            children.insert(spec.id.clone(), Child::new(spec));
        }
        let slot_metrics = args.observer.metrics().slots.clone();
        let mut state = SupervisorState {
            instance: format!("wiz{n}"),
            policy: c.restart,
            startup_jitter: c.startup_jitter.0,
            shutdown_timeout: c.shutdown_timeout.0,
            sink_specs: args.settings.sinks.clone(),
            sink_routing: args.settings.routing.clone(),
            sink: None,
            sink_crashes: 0,
            backlogs: Backlogs::new(args.settings.connector.state_dir.join("backlog")),
            destinations_changed: Vec::new(),
            reformatted: Vec::new(),
            sink_replacing: false,
            children,
            by_actor: HashMap::new(),
            http: args.http,
            health: args.health,
            sink_stats: args.sink_stats,
            faults: args.faults,
            observer: args.observer,
            store: args.store,
            slots: Slots::new(c.max_concurrent_sweeps as usize, slot_metrics),
            alarms: crate::tenant::alarm::Alarms::spawn(),
            ready: args.ready,
            shutting_down: false,
            // A live holder is waiting on its page in flight (a slow sink) or draining: at most a
            // shutdown's whole budget (tenants, then sinks) plus a few failover periods. One that
            // cannot reach NATS is not live for long: its lease and its membership lapse.
            claim_patience: args.settings.cluster.as_ref().map_or(Duration::ZERO, |cl| {
                cl.failover_after.0 * 3 + c.shutdown_timeout.0 * 2
            }),
            moved_jitter: args
                .settings
                .cluster
                .as_ref()
                .map(|_| Duration::from_secs(2)),
            started: false,
            hints: args.hints,
            deferred: Default::default(),
            start_tick: false,
            start_ahead: args.start_ahead,
        };
        // A hint for a tenant not started yet (deferred) starts it.
        let me = myself.clone();
        state.hints.on_idle(Box::new(move |tenant| {
            let _ = me.send_message(SupervisorMsg::StartNow(tenant.to_string()));
        }));
        // The sink starts here, before any tenant: a sink that cannot start (a file that cannot
        // be opened, a NATS server that cannot be reached) fails the start with its reason.
        state.spawn_sink(&myself).await?;
        Ok(state)
    }

    async fn post_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let window = state.added_window(state.children.len());
        let tenants: Vec<(String, Duration)> = state
            .children
            .iter()
            .map(|(id, c)| {
                (
                    id.clone(),
                    SupervisorState::first_poll_delay(&c.spec, window),
                )
            })
            .collect();
        state.spawn_tenants(&myself, tenants).await;
        state.ready.store(true, Ordering::Release);
        state.started = true;
        tracing::info!(
            tenants = state.children.len(),
            sinks = state.sink_specs.len(),
            "supervisor started every tenant"
        );
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Restart { tenant, generation } => {
                if state.shutting_down {
                    return Ok(());
                }
                let current = state
                    .children
                    .get(&tenant)
                    .is_some_and(|c| c.generation == generation && c.actor.is_none());
                if current {
                    state.health.update(&tenant, |h| h.restarts += 1);
                    state.observer.emit(&tenant, Observation::Restarted);
                    state.spawn_tenant(&myself, &tenant, Duration::ZERO).await;
                }
            }
            SupervisorMsg::RestartSink => {
                if !state.shutting_down && state.sink.is_none() {
                    if let Err(e) = state.spawn_sink(&myself).await {
                        tracing::error!(error = %e, "sink restart failed; trying again");
                        state.sink_crashes += 1;
                        myself.send_after(Duration::from_secs(1), || SupervisorMsg::RestartSink);
                    } else {
                        tracing::info!("sink restarted");
                        let reformatted = std::mem::take(&mut state.reformatted);
                        for id in std::mem::take(&mut state.destinations_changed) {
                            let now = state.destinations(&id);
                            let formats = state.formats(&now);
                            if let Some(a) = state.children.get(&id).and_then(|c| c.actor.as_ref())
                            {
                                let _ =
                                    a.send_message(TenantMsg::Destinations(now.clone(), formats));
                                for sink in reformatted.iter().filter(|s| now.contains(*s)) {
                                    let _ = a.send_message(TenantMsg::Baseline(sink.clone()));
                                }
                            }
                        }
                    }
                }
            }
            SupervisorMsg::PollNow(tenant, full, reply) => {
                state.start_deferred(&myself, &tenant).await;
                let msg = TenantMsg::Asked { full };
                let sent = state
                    .children
                    .get(&tenant)
                    .and_then(|c| c.actor.as_ref())
                    .is_some_and(|a| a.send_message(msg).is_ok());
                let _ = reply.send(sent);
            }
            SupervisorMsg::Baseline(tenant, sink, reply) => {
                state.start_deferred(&myself, &tenant).await;
                let answer = match state.children.get(&tenant) {
                    None => Err(BaselineRefused::UnknownTenant),
                    Some(child) => {
                        let destinations = state.destinations(&tenant);
                        if !destinations.contains(&sink) {
                            Err(BaselineRefused::NotRouted(destinations.to_vec()))
                        } else if child
                            .actor
                            .as_ref()
                            .is_some_and(|a| a.send_message(TenantMsg::Baseline(sink)).is_ok())
                        {
                            Ok(())
                        } else {
                            Err(BaselineRefused::NotRunning)
                        }
                    }
                };
                let _ = reply.send(answer);
            }
            SupervisorMsg::Apply(diff, reply) => {
                state.apply(&myself, diff).await;
                let _ = reply.send(());
            }
            SupervisorMsg::Respawn(tenant) => {
                if !state.shutting_down {
                    tracing::info!(tenant = %tenant, "tenant restarted with its new configuration");
                    state.spawn_tenant(&myself, &tenant, Duration::ZERO).await;
                }
            }
            SupervisorMsg::Shutdown(reply) => {
                state.shutdown().await;
                let _ = reply.send(());
            }
            SupervisorMsg::Sink(reply) => {
                let _ = reply.send(state.sink.clone());
            }
            SupervisorMsg::StartDue => state.start_due(&myself).await,
            SupervisorMsg::StartNow(tenant) => {
                state.start_deferred(&myself, &tenant).await;
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        tracing::debug!(event = ?event, "supervision event");
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                state.child_exited(&myself, &cell, Some(err.to_string()))
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                // A clean exit we did not ask for is still an exit of a permanent child.
                let unexpected = reason.map(|r| format!("the actor stopped: {r}"));
                state.child_exited(&myself, &cell, unexpected)
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::placement_window;
    use std::time::Duration;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn first_polls_spread_over_startup_jitter_at_start_and_at_a_first_placement() {
        // A single node, at start and for tenants a reload adds.
        assert_eq!(placement_window(S(30), None, true, 100_000), S(30));
        assert_eq!(placement_window(S(30), None, false, 3), S(30));
        // Cluster mode: the first placement of a replica is its start.
        assert_eq!(placement_window(S(30), Some(S(2)), true, 100_000), S(30));
    }

    #[test]
    fn moved_tenants_poll_soon_but_not_all_at_once() {
        // A few moved: the shortest window.
        assert_eq!(placement_window(S(30), Some(S(2)), false, 10), S(2));
        // A failover of 300 tenants: 3 s, 100 first polls a second.
        assert_eq!(placement_window(S(30), Some(S(2)), false, 300), S(3));
        // 500, 10,000 or 100,000: bounded, so they are all polled soon after the failover.
        assert_eq!(placement_window(S(30), Some(S(2)), false, 500), S(5));
        assert_eq!(placement_window(S(30), Some(S(2)), false, 10_000), S(5));
        assert_eq!(placement_window(S(30), Some(S(2)), false, 100_000), S(5));
        // And by a shorter startup_jitter.
        assert_eq!(placement_window(S(4), Some(S(2)), false, 10_000), S(4));
        // startup_jitter = 0 means at once, moved or not.
        assert_eq!(placement_window(S(0), Some(S(2)), false, 1_000), S(0));
    }
}
