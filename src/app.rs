//! Wiring and ordered shutdown: builds the shared pieces (HTTP client, health map, sink counters),
//! starts the supervisor, and stops everything in order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::task::JoinHandle;

use crate::admin::{self, AdminServer, AdminState};
use crate::cluster::membership::{HeartbeatArgs, Membership};
use crate::cluster::ClusterView;
use crate::config::{EnvSource, Settings};
use crate::faults::FaultInjection;
use crate::health::HealthMap;
use crate::hints::Hints;
use crate::metrics::Observer;
use crate::reload::Reloader;
use crate::sink::SinkStats;
use crate::state::StateStore;
use crate::supervisor::{ConnectorSupervisor, SupervisorArgs, SupervisorMsg};
use crate::wiz::WizHttp;

/// What the caller may add when starting the connector from code.
#[derive(Clone, Default)]
pub struct AppOptions {
    pub faults: FaultInjection,
    /// When `admin.listen` is taken, serve the admin API on a free port instead of failing
    /// (`demo` does this).
    pub admin_fallback_port: bool,
    /// The environment reloads read (`${VAR}` secrets, `WIZ_CONNECTOR__...` overrides).
    pub env: EnvSource,
    /// How often the configuration file and `tenants_dir` are checked for changes, overriding
    /// `connector.watch_interval`; `Some(Duration::ZERO)` turns the watcher off.
    pub watch_every: Option<Duration>,
    /// How long before its first poll a tenant's actor starts, overriding
    /// [`crate::supervisor::START_AHEAD`] (a benchmark that measures started actors sets it
    /// beyond `startup_jitter`).
    pub start_ahead: Option<Duration>,
}

/// A running connector.
pub struct App {
    supervisor: ActorRef<SupervisorMsg>,
    handle: JoinHandle<()>,
    pub health: HealthMap,
    pub sink_stats: Arc<SinkStats>,
    pub faults: FaultInjection,
    ready: Arc<AtomicBool>,
    shutdown_timeout: Duration,
    admin: AdminServer,
    reloader: Reloader,
    watcher: Option<tokio::task::JoinHandle<()>>,
    observer: Observer,
    /// Cluster mode: the heartbeat (left and removed at shutdown).
    membership: Option<Membership>,
    /// Cluster mode: the placement task (stopped first at shutdown).
    placement: Option<JoinHandle<()>>,
    /// Cluster mode: what `/cluster` shows.
    cluster_view: Option<Arc<ClusterView>>,
    /// The webhook receiver (`[hooks]`); stops when dropped.
    hooks: Option<crate::hints::HooksServer>,
    /// Cluster mode with `[hooks]`: queues hints other replicas forwarded.
    forwarded: Option<JoinHandle<()>>,
}

impl App {
    /// Starts the supervisor, which starts the sink and every tenant. Fails when the sink cannot
    /// start (e.g. its file cannot be opened).
    pub async fn start(settings: Settings, opts: AppOptions) -> anyhow::Result<App> {
        let replica = settings.cluster.as_ref().map(|c| c.replica_id.clone());
        let health =
            HealthMap::with_owner(&replica.clone().unwrap_or_else(crate::config::host_name));
        let sink_stats = Arc::new(SinkStats::default());
        let ready = Arc::new(AtomicBool::new(false));
        let shutdown_timeout = settings.connector.shutdown_timeout.0;
        let observer = Observer::default();
        observer.observe_health(&health);
        observer
            .metrics()
            .set_per_tenant_histograms(settings.telemetry.per_tenant_histograms);
        let http = WizHttp::new()?.with_observer(observer.clone());
        let admin_listen = settings.admin.listen;
        let admin_tokens = Arc::new(settings.admin.tokens.clone());
        // Bind first: a taken port is an error before anything polls.
        let listener = admin::bind(admin_listen, opts.admin_fallback_port)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot serve the admin API on {admin_listen}: {e} (key admin.listen; choose a free address)"
                )
            })?;
        let config_is_file = settings.config_path.is_file();
        let (store, store_recovered) = StateStore::open_or_recover_with(
            &settings.connector.state_dir,
            (settings.connector.state_cache_mib as usize) << 20,
        )?;
        let store = store.with_metrics(observer.metrics().cluster.clone());
        // Cluster mode: NATS holds membership and the authoritative state; the supervisor starts
        // with no tenant and placement gives it its share.
        let cluster = match &settings.cluster {
            Some(c) => Some(
                crate::cluster::connect(c)
                    .await
                    .map_err(anyhow::Error::msg)?,
            ),
            None => None,
        };
        let store = match &cluster {
            Some(c) => store.replicate_to(c.replicated.clone()),
            None => store,
        };
        // Webhook hints: the registry of tokens and queues, and the receiver's address, bound
        // now so a taken port fails the start.
        // Every tenant has a queue of issue ids to look up at once: webhook hints fill it, and
        // write-back's follow-up lookups (which need no receiver). In cluster mode a lookup for a
        // tenant another replica owns is forwarded there.
        let forwarder = cluster
            .as_ref()
            .zip(settings.cluster.as_ref())
            .map(|(c, s)| crate::hints::Forwarder::new(c.client.clone(), &s.members_bucket));
        let queue_limit = settings
            .hooks
            .as_ref()
            .map_or(crate::config::DEFAULT_HINT_QUEUE_LIMIT, |h| h.queue_limit);
        // Hints and write-back own their metrics; they join the one registry here.
        let hint_metrics = crate::hints::HookMetrics::default();
        observer.metrics().register(|r| hint_metrics.register(r));
        let action_metrics = crate::writeback::ActionMetrics::default();
        observer.metrics().register(|r| action_metrics.register(r));
        observer
            .metrics()
            .register(|r| sink_stats.metrics.register(r));
        let hints = Hints::new(queue_limit, forwarder, hint_metrics);
        hints.set_tokens(&settings.tenants);
        let hooks_listener = match &settings.hooks {
            Some(h) => Some(crate::hints::bind(h.listen).await.map_err(|e| {
                anyhow::anyhow!(
                    "cannot serve the webhook receiver on {}: {e} (key hooks.listen; choose a free address)",
                    h.listen
                )
            })?),
            None => None,
        };
        let for_reload = settings.clone();
        let mut settings = settings;
        let supervisor_ready = if cluster.is_some() {
            settings.tenants.clear();
            Arc::new(AtomicBool::new(false))
        } else {
            ready.clone()
        };
        let http_for_actions = http.clone();
        let (supervisor, handle) = Actor::spawn(
            None,
            ConnectorSupervisor,
            SupervisorArgs {
                settings,
                http,
                health: health.clone(),
                sink_stats: sink_stats.clone(),
                faults: opts.faults.clone(),
                observer: observer.clone(),
                store,
                store_recovered,
                ready: supervisor_ready,
                hints: hints.clone(),
                start_ahead: opts.start_ahead.unwrap_or(crate::supervisor::START_AHEAD),
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the connector: {e}"))?;
        let every = opts
            .watch_every
            .unwrap_or(for_reload.connector.watch_interval.0);
        let cluster_settings = for_reload.cluster.clone();
        let reloader = Reloader::new(
            for_reload,
            opts.env.clone(),
            supervisor.clone(),
            observer.clone(),
            replica,
            hints.clone(),
        );
        let cluster_view = cluster.as_ref().map(|c| c.view.clone());
        // Cluster mode: the heartbeat (its own thread and NATS connection) hands the members to
        // the placement task over a watch channel, and reads back what to announce.
        let (membership, placement) = match (cluster, cluster_settings) {
            (Some(c), Some(settings)) => {
                let (members, members_rx) = tokio::sync::watch::channel(None);
                let placement = reloader.follow_placement(members_rx, ready.clone());
                let membership = Membership::start(HeartbeatArgs {
                    settings,
                    incarnation: c.incarnation,
                    lease: c.lease,
                    view: c.view,
                    live: c.live,
                    observer: observer.clone(),
                    outcome: reloader.placements(),
                    members,
                })
                .map_err(anyhow::Error::msg)?;
                (Some(membership), Some(placement))
            }
            _ => (None, None),
        };
        let watcher = (config_is_file && !every.is_zero()).then(|| reloader.spawn_watcher(every));
        let admin = admin::serve(
            listener,
            AdminState {
                health: health.clone(),
                ready: ready.clone(),
                supervisor: supervisor.clone(),
                tokens: admin_tokens,
                actions: Arc::new(crate::writeback::Actions::new(
                    http_for_actions,
                    reloader.live(),
                    hints.clone(),
                    supervisor.clone(),
                    sink_stats.clone(),
                    action_metrics,
                )),
                observer: observer.clone(),
                reloader: reloader.clone(),
                sink_stats: sink_stats.clone(),
                cluster: cluster_view.clone(),
            },
        )?;
        tracing::info!(addr = %admin.addr, "admin API listening");
        let hooks = match hooks_listener {
            Some(l) => {
                let server = crate::hints::serve(l, hints.clone())?;
                tracing::info!(addr = %server.addr, "webhook receiver listening");
                Some(server)
            }
            None => None,
        };
        let forwarded = hints.spawn_forward_listener();
        Ok(App {
            hooks,
            forwarded,
            membership,
            placement,
            cluster_view,
            admin,
            reloader,
            watcher,
            observer,
            supervisor,
            handle,
            health,
            sink_stats,
            faults: opts.faults,
            ready,
            shutdown_timeout,
        })
    }

    /// Cluster mode: this replica's view of the cluster (what `/cluster` shows).
    pub fn cluster_status(&self) -> Option<crate::cluster::ClusterStatus> {
        self.cluster_view.as_ref().map(|v| v.status())
    }

    /// The metrics exposition, as `/metrics` serves it.
    pub fn observer_metrics_text(&self) -> String {
        self.observer.metrics().render(&self.health)
    }

    /// Reloads the configuration (what SIGHUP and `POST /reload` do).
    pub fn reloader(&self) -> &Reloader {
        &self.reloader
    }

    /// Where the webhook receiver listens (`None` without `[hooks]`).
    pub fn hooks_addr(&self) -> Option<std::net::SocketAddr> {
        self.hooks.as_ref().map(|h| h.addr)
    }

    /// Where the admin API listens.
    pub fn admin_addr(&self) -> std::net::SocketAddr {
        self.admin.addr
    }

    /// True once the supervisor has started every tenant.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Asks a tenant to poll now. False for an unknown or not running tenant.
    pub async fn poll_now(&self, tenant: &str) -> bool {
        self.ask_poll(tenant, false).await
    }

    /// Asks a tenant to resync now: a full sweep of the watched statuses.
    pub async fn resync(&self, tenant: &str) -> bool {
        self.ask_poll(tenant, true).await
    }

    async fn ask_poll(&self, tenant: &str, full: bool) -> bool {
        let t = tenant.to_string();
        let asked = self
            .supervisor
            .call(
                |r| SupervisorMsg::PollNow(t, full, r),
                Some(Duration::from_secs(5)),
            )
            .await;
        matches!(asked, Ok(ractor::rpc::CallResult::Success(true)))
    }

    /// True while the supervisor runs.
    pub fn is_running(&self) -> bool {
        !self.handle.is_finished()
    }

    /// Stops timers, lets every tenant finish and deliver its page in flight, flushes and stops
    /// the sink, then stops the supervisor. Takes at most about twice `shutdown_timeout` (tenants,
    /// then the sink), after which stragglers are killed.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        if let Some(w) = &self.watcher {
            w.abort();
        }
        if let Some(f) = &self.forwarded {
            f.abort();
        }
        // Cluster mode: announce leaving first, so the others stop placing tenants here and take
        // each over as soon as its release is written (after its page in flight). The heartbeat
        // goes on renewing meanwhile, so the lease holds while the tenants finish.
        if let Some(p) = &self.placement {
            p.abort();
        }
        if let Some(m) = &self.membership {
            m.leave();
        }
        let budget = self.shutdown_timeout * 2 + Duration::from_secs(1);
        let res = self
            .supervisor
            .call(SupervisorMsg::Shutdown, Some(budget))
            .await;
        let clean = matches!(res, Ok(ractor::rpc::CallResult::Success(())));
        if let Some(m) = self.membership {
            m.remove().await;
        }
        self.supervisor.stop(Some("shutdown".into()));
        let _ = tokio::time::timeout(Duration::from_secs(5), self.handle).await;
        if clean {
            Ok(())
        } else {
            anyhow::bail!("shutdown did not complete within {}s", budget.as_secs())
        }
    }
}
