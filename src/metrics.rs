//! Typed internal events: every notable thing a tenant, the client or the supervisor does is one
//! [`Observation`], and [`Observer::emit`] both logs it (one line, with `tenant=<id>`) and counts it in
//! the Prometheus registry. Logs and metrics come from the same place, so they cannot disagree.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::event::EventKind;
use crate::health::{HealthMap, TenantState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    tenant: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    tenant: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    tenant: String,
    state: String,
}

fn poll_histogram() -> Histogram {
    Histogram::new([
        0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
    ])
}

/// The registry and every metric in it. The registry takes more from the modules that own their
/// metrics ([`Metrics::register`]): `app` wires them, so this module imports none of them.
pub struct Metrics {
    registry: std::sync::Mutex<Registry>,
    events: Family<KindLabels, Counter>,
    polls: Family<ResultLabels, Counter>,
    errors: Family<KindLabels, Counter>,
    retries: Family<TenantLabels, Counter>,
    restarts: Family<TenantLabels, Counter>,
    token_renewals: Family<TenantLabels, Counter>,
    /// Fleet-wide poll durations.
    poll_duration: Histogram,
    /// Per tenant, only with `telemetry.per_tenant_histograms`.
    tenant_poll_duration: Family<TenantLabels, Histogram, fn() -> Histogram>,
    per_tenant_histograms: std::sync::atomic::AtomicBool,
    last_success: Family<TenantLabels, Gauge<f64, AtomicU64>>,
    since_success: Family<TenantLabels, Gauge<f64, AtomicU64>>,
    state: Family<StateLabels, Gauge>,
    reloads: Family<OutcomeLabels, Counter>,
    vanished: Family<TenantLabels, Counter>,
    /// Cluster mode (fleet-wide series, none per tenant).
    pub cluster: ClusterMetrics,
    /// Sweep slots (fleet-wide).
    pub slots: SlotMetrics,
    /// Per tenant: the age of the newest change delivered, at its delivery.
    change_age: Family<TenantLabels, Gauge<f64, AtomicU64>>,
    /// Per tenant that takes hints: the last hint-to-event time.
    hint_latency: Family<TenantLabels, Gauge<f64, AtomicU64>>,
}

/// The fleet's sweep slots (`max_concurrent_sweeps`): how many are held, and how long tenants
/// wait for one.
#[derive(Clone)]
pub struct SlotMetrics {
    in_use: Gauge,
    wait: Histogram,
}

impl Default for SlotMetrics {
    fn default() -> Self {
        SlotMetrics {
            in_use: Gauge::default(),
            wait: Histogram::new([
                0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
            ]),
        }
    }
}

impl SlotMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "sweep_slots_in_use",
            "Sweep slots held now (at most connector.max_concurrent_sweeps); a tenant waiting out a retry holds none",
            self.in_use.clone(),
        );
        registry.register(
            "sweep_slot_wait_seconds",
            "How long tenants waited for a sweep slot (at the start of a poll, and after each retry wait)",
            self.wait.clone(),
        );
    }

    pub fn taken(&self, waited: Duration) {
        self.in_use.inc();
        self.wait.observe(waited.as_secs_f64());
    }

    pub fn given_back(&self) {
        self.in_use.dec();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: String,
}

/// Cluster mode's series: fleet-wide, so their number does not grow with the tenants.
#[derive(Clone)]
pub struct ClusterMetrics {
    tenants_owned: Gauge,
    members: Gauge,
    config_mismatch: Gauge,
    handovers: Family<DirectionLabels, Counter>,
    fencing_rejections: Counter,
    state_write: Family<BackendLabels, Histogram, fn() -> Histogram>,
    /// How long applying one placement took (spawning and stopping tenants included).
    placement: Histogram,
    /// How long one heartbeat round (renewing this replica's key and listing the members) took:
    /// rounds slower than the heartbeat delay failover detection by as much.
    heartbeat_round: Histogram,
    /// 1 while this replica's lease holds, else 0.
    lease_held: Gauge,
    /// Times the lease was granted again after a lapse.
    lease_lapses: Counter,
}

fn state_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
    ])
}

impl Default for ClusterMetrics {
    fn default() -> Self {
        ClusterMetrics::new()
    }
}

impl ClusterMetrics {
    fn new() -> Self {
        ClusterMetrics {
            tenants_owned: Gauge::default(),
            members: Gauge::default(),
            config_mismatch: Gauge::default(),
            handovers: Family::default(),
            fencing_rejections: Counter::default(),
            state_write: Family::new_with_constructor(state_histogram as fn() -> Histogram),
            placement: Histogram::new([0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            heartbeat_round: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            lease_held: Gauge::default(),
            lease_lapses: Counter::default(),
        }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "cluster_tenants_owned",
            "Tenants this replica owns now (cluster mode)",
            self.tenants_owned.clone(),
        );
        registry.register(
            "cluster_members",
            "Live replicas this replica sees (cluster mode)",
            self.members.clone(),
        );
        registry.register(
            "cluster_config_mismatch",
            "Live replicas whose configured tenant set differs from this replica's (should be 0)",
            self.config_mismatch.clone(),
        );
        registry.register(
            "cluster_handovers",
            "Tenants taken over (acquired) or handed over (released) by this replica",
            self.handovers.clone(),
        );
        registry.register(
            "cluster_fencing_rejections",
            "State writes refused because another replica took the tenant over (the tenant stopped here)",
            self.fencing_rejections.clone(),
        );
        registry.register(
            "cluster_placement_seconds",
            "How long applying one placement took on this replica (starting and stopping its tenants)",
            self.placement.clone(),
        );
        registry.register(
            "cluster_heartbeat_round_seconds",
            "How long one heartbeat round took on this replica (renewing its membership and listing the members); rounds slower than the heartbeat delay failover detection",
            self.heartbeat_round.clone(),
        );
        registry.register(
            "cluster_lease_held",
            "1 while this replica's membership lease holds (its tenants poll and deliver), else 0",
            self.lease_held.clone(),
        );
        registry.register(
            "cluster_lease_lapses",
            "Times this replica's lease ran out and was granted again (its tenants re-asserted ownership)",
            self.lease_lapses.clone(),
        );
        registry.register(
            "state_write_seconds",
            "Latency of one durable state write (a page's commit or mark), by backend (redb, jetstream)",
            self.state_write.clone(),
        );
    }

    pub fn set_membership(&self, members: usize, owned: usize, mismatched: usize) {
        self.members.set(members as i64);
        self.tenants_owned.set(owned as i64);
        self.config_mismatch.set(mismatched as i64);
    }

    pub fn fenced(&self) {
        self.fencing_rejections.inc();
    }

    /// A placement was applied in `took`.
    pub fn placed(&self, took: Duration) {
        self.placement.observe(took.as_secs_f64());
    }

    /// One heartbeat round (renewal and listing) took `took`.
    pub fn heartbeat_round(&self, took: Duration) {
        self.heartbeat_round.observe(took.as_secs_f64());
    }

    /// A tenant was claimed (`acquired`) or released by this replica.
    pub fn handover(&self, acquired: bool) {
        let direction = if acquired { "acquired" } else { "released" };
        self.handovers
            .get_or_create(&DirectionLabels {
                direction: direction.into(),
            })
            .inc();
    }

    /// The lease as the heartbeat last saw it; `lapsed`: it was granted again after a lapse.
    pub fn lease(&self, held: bool, lapsed: bool) {
        self.lease_held.set(i64::from(held));
        if lapsed {
            self.lease_lapses.inc();
        }
    }

    pub fn state_write(&self, backend: &str, took: Duration) {
        self.state_write
            .get_or_create(&BackendLabels {
                backend: backend.into(),
            })
            .observe(took.as_secs_f64());
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("wiz_connector");
        let m = Metrics {
            events: Family::default(),
            polls: Family::default(),
            errors: Family::default(),
            retries: Family::default(),
            restarts: Family::default(),
            token_renewals: Family::default(),
            poll_duration: poll_histogram(),
            tenant_poll_duration: Family::new_with_constructor(poll_histogram as fn() -> Histogram),
            per_tenant_histograms: std::sync::atomic::AtomicBool::new(false),
            last_success: Family::default(),
            since_success: Family::default(),
            state: Family::default(),
            reloads: Family::default(),
            vanished: Family::default(),
            cluster: ClusterMetrics::new(),
            slots: SlotMetrics::default(),
            change_age: Family::default(),
            hint_latency: Family::default(),
            registry: std::sync::Mutex::new(Registry::default()),
        };
        m.cluster.register(&mut registry);
        m.slots.register(&mut registry);
        registry.register(
            "change_age_seconds",
            "Freshness: how old the newest change among the tenant's last delivered events was when the sinks took it",
            m.change_age.clone(),
        );
        registry.register(
            "last_hint_to_event_seconds",
            "Per tenant that received webhook hints: the time from the hint to the sinks' ack of its event, for the last page that held such events",
            m.hint_latency.clone(),
        );
        registry.register(
            "events",
            "Events delivered to every sink, by kind",
            m.events.clone(),
        );
        registry.register(
            "polls",
            "Polls finished, by result (success, failure)",
            m.polls.clone(),
        );
        registry.register(
            "errors",
            "Errors by kind (auth, rate_limited, server, graphql, timeout, transport, client, bad_response, pagination, sink, crash, feed, feed_denied)",
            m.errors.clone(),
        );
        registry.register(
            "retries",
            "Wiz requests retried after a transient failure",
            m.retries.clone(),
        );
        registry.register(
            "issues_vanished",
            "Issues reported resolved because a full sweep missed them and Wiz no longer returns them by id",
            m.vanished.clone(),
        );
        registry.register(
            "restarts",
            "Tenant actor restarts after a crash",
            m.restarts.clone(),
        );
        registry.register(
            "token_renewals",
            "Wiz tokens obtained after the tenant's first (near expiry, or after a 401)",
            m.token_renewals.clone(),
        );
        registry.register(
            "poll_duration_seconds",
            "Duration of a poll, every tenant together",
            m.poll_duration.clone(),
        );
        registry.register(
            "tenant_poll_duration_seconds",
            "Duration of a poll, per tenant (only with telemetry.per_tenant_histograms)",
            m.tenant_poll_duration.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "When the tenant's last successful poll ended (Unix time)",
            m.last_success.clone(),
        );
        registry.register(
            "seconds_since_last_success",
            "Seconds since the tenant's last successful poll ended (absent before the first)",
            m.since_success.clone(),
        );
        registry.register(
            "tenant_state",
            "1 for the tenant's current state (starting, polling, idle, backoff, failed, stopped), 0 for the others",
            m.state.clone(),
        );
        registry.register(
            "reloads",
            "Configuration reloads, by result (success, failure)",
            m.reloads.clone(),
        );
        Metrics {
            registry: std::sync::Mutex::new(registry),
            ..m
        }
    }
}

impl Metrics {
    /// Lets a module register the metrics it owns (webhook hints, write-back), under the
    /// registry's `wiz_connector_` prefix.
    pub fn register(&self, f: impl FnOnce(&mut Registry)) {
        f(&mut self.registry.lock().expect("metrics registry lock"));
    }

    /// Keeps a poll-duration histogram per tenant besides the fleet-wide one
    /// (`telemetry.per_tenant_histograms`).
    pub fn set_per_tenant_histograms(&self, on: bool) {
        self.per_tenant_histograms
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    fn per_tenant(&self) -> bool {
        self.per_tenant_histograms
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn observe_poll(&self, tenant: &str, duration: Duration) {
        self.poll_duration.observe(duration.as_secs_f64());
        if self.per_tenant() {
            self.tenant_poll_duration
                .get_or_create(&TenantLabels {
                    tenant: tenant.to_string(),
                })
                .observe(duration.as_secs_f64());
        }
    }

    /// The Prometheus text exposition (OpenMetrics), with per-tenant state refreshed from health.
    pub fn render(&self, health: &HealthMap) -> String {
        let now = SystemTime::now();
        for h in health.all() {
            for s in TenantState::ALL {
                let l = StateLabels {
                    tenant: h.id.clone(),
                    state: s.as_str().to_string(),
                };
                self.state.get_or_create(&l).set(i64::from(h.state == s));
            }
            if let Some(t) = h.last_success_at {
                let l = TenantLabels {
                    tenant: h.id.clone(),
                };
                let since = now.duration_since(t).unwrap_or_default().as_secs_f64();
                self.since_success.get_or_create(&l).set(since);
            }
            if let Some(ms) = h.last_change_age_ms {
                let l = TenantLabels {
                    tenant: h.id.clone(),
                };
                self.change_age.get_or_create(&l).set(ms as f64 / 1000.0);
            }
            if let Some(ms) = h.last_hint_to_event_ms {
                let l = TenantLabels {
                    tenant: h.id.clone(),
                };
                self.hint_latency.get_or_create(&l).set(ms as f64 / 1000.0);
            }
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(
            &mut out,
            &self.registry.lock().expect("metrics registry lock"),
        )
        .expect("writing to a String cannot fail");
        out
    }

    /// Drops every series of a tenant (it was removed from the configuration).
    pub fn forget(&self, tenant: &str) {
        let t = TenantLabels {
            tenant: tenant.to_string(),
        };
        self.retries.remove(&t);
        self.restarts.remove(&t);
        self.token_renewals.remove(&t);
        self.tenant_poll_duration.remove(&t);
        self.last_success.remove(&t);
        self.since_success.remove(&t);
        self.change_age.remove(&t);
        self.hint_latency.remove(&t);
        for s in TenantState::ALL {
            self.state.remove(&StateLabels {
                tenant: tenant.to_string(),
                state: s.as_str().into(),
            });
        }
        for r in ["success", "failure"] {
            self.polls.remove(&ResultLabels {
                tenant: tenant.to_string(),
                result: r.into(),
            });
        }
        for k in [
            "issue.opened",
            "issue.updated",
            "issue.resolved",
            "issue.rejected",
            "issue.reopened",
        ] {
            self.events.remove(&KindLabels {
                tenant: tenant.to_string(),
                kind: k.into(),
            });
        }
        for k in ERROR_KINDS {
            self.errors.remove(&KindLabels {
                tenant: tenant.to_string(),
                kind: k.to_string(),
            });
        }
    }
}

const ERROR_KINDS: [&str; 11] = [
    "auth",
    "rate_limited",
    "server",
    "graphql",
    "timeout",
    "transport",
    "client",
    "bad_response",
    "pagination",
    "sink",
    "crash",
];

/// Something that happened to a tenant.
#[derive(Debug)]
pub enum Observation<'a> {
    PollSucceeded {
        events_added: u64,
        duration: Duration,
    },
    PollFailed {
        kind: &'static str,
        error: &'a str,
        duration: Duration,
        retry_in: Duration,
    },
    EventsDelivered {
        kind: EventKind,
        count: u64,
    },
    RequestRetried {
        kind: &'static str,
        error: &'a str,
        retry_in: Duration,
    },
    TokenObtained {
        renewal: bool,
        after_401: bool,
    },
    SinkUnavailable {
        error: &'a str,
        attempts: u32,
    },
    /// A node of a page could not be read: set aside as a quarantine event (`quarantined`), or
    /// seen again unchanged after it was (nothing is delivered again).
    NodeUnreadable {
        feed: &'static str,
        id: Option<&'a str>,
        reason: &'a str,
        bytes: usize,
        quarantined: bool,
    },
    /// Events delivered for issues that vanished from Wiz (a full sweep missed them and a lookup
    /// by id found nothing).
    IssuesVanished {
        count: u64,
    },
    /// A feed beyond Issues failed this poll (`denied`: Wiz refused the service account the
    /// feed); it sits out polls for `retry_in`.
    FeedFailed {
        feed: &'static str,
        denied: bool,
        error: &'a str,
        retry_in: Duration,
    },
    Crashed {
        error: &'a str,
        crashes: u32,
        restart_in: Duration,
    },
    Parked {
        error: &'a str,
        crashes: u32,
        retry_in: Duration,
    },
    Restarted,
}

impl OtelInstruments {
    /// The OpenTelemetry side of [`Observer::emit`]: the same counters, the same labels.
    fn record(&self, tenant: &str, event: &Observation<'_>, per_tenant: bool) {
        let t = [("tenant", tenant)];
        match event {
            Observation::PollSucceeded { duration, .. } => {
                self.polls
                    .add(1, &kv(&[("tenant", tenant), ("result", "success")]));
                self.poll_duration.record(
                    duration.as_secs_f64(),
                    &kv(if per_tenant { &t } else { &[] }),
                );
            }
            Observation::PollFailed { kind, duration, .. } => {
                self.polls
                    .add(1, &kv(&[("tenant", tenant), ("result", "failure")]));
                self.errors
                    .add(1, &kv(&[("tenant", tenant), ("kind", kind)]));
                self.poll_duration.record(
                    duration.as_secs_f64(),
                    &kv(if per_tenant { &t } else { &[] }),
                );
            }
            Observation::EventsDelivered { kind, count } => {
                self.events
                    .add(*count, &kv(&[("tenant", tenant), ("kind", kind.as_str())]));
            }
            Observation::RequestRetried { kind, .. } => {
                self.retries.add(1, &kv(&t));
                self.errors
                    .add(1, &kv(&[("tenant", tenant), ("kind", kind)]));
            }
            Observation::TokenObtained { renewal: true, .. } => self.token_renewals.add(1, &kv(&t)),
            Observation::TokenObtained { .. } => {}
            Observation::SinkUnavailable { .. } => self
                .errors
                .add(1, &kv(&[("tenant", tenant), ("kind", "sink")])),
            Observation::NodeUnreadable { .. } => self
                .errors
                .add(1, &kv(&[("tenant", tenant), ("kind", "bad_response")])),
            Observation::IssuesVanished { count } => self.vanished.add(*count, &kv(&t)),
            Observation::FeedFailed { denied, .. } => self.errors.add(
                1,
                &kv(&[
                    ("tenant", tenant),
                    ("kind", if *denied { "feed_denied" } else { "feed" }),
                ]),
            ),
            Observation::Crashed { .. } | Observation::Parked { .. } => self
                .errors
                .add(1, &kv(&[("tenant", tenant), ("kind", "crash")])),
            Observation::Restarted => self.restarts.add(1, &kv(&t)),
        }
    }
}

/// The same counters as OpenTelemetry instruments, for OTLP export.
struct OtelInstruments {
    events: opentelemetry::metrics::Counter<u64>,
    polls: opentelemetry::metrics::Counter<u64>,
    errors: opentelemetry::metrics::Counter<u64>,
    retries: opentelemetry::metrics::Counter<u64>,
    restarts: opentelemetry::metrics::Counter<u64>,
    token_renewals: opentelemetry::metrics::Counter<u64>,
    reloads: opentelemetry::metrics::Counter<u64>,
    vanished: opentelemetry::metrics::Counter<u64>,
    poll_duration: opentelemetry::metrics::Histogram<f64>,
}

impl OtelInstruments {
    fn new(m: &opentelemetry::metrics::Meter) -> Self {
        let c = |name: &'static str, help: &'static str| {
            m.u64_counter(name).with_description(help).build()
        };
        OtelInstruments {
            events: c(
                "wiz_connector.events",
                "Events delivered to every sink, by kind",
            ),
            polls: c("wiz_connector.polls", "Polls finished, by result"),
            errors: c("wiz_connector.errors", "Errors by kind"),
            retries: c("wiz_connector.retries", "Wiz requests retried"),
            restarts: c(
                "wiz_connector.restarts",
                "Tenant actor restarts after a crash",
            ),
            token_renewals: c(
                "wiz_connector.token_renewals",
                "Wiz tokens obtained after the first",
            ),
            reloads: c("wiz_connector.reloads", "Configuration reloads, by result"),
            vanished: c(
                "wiz_connector.issues_vanished",
                "Issues reported resolved because Wiz no longer returns them",
            ),
            poll_duration: m
                .f64_histogram("wiz_connector.poll_duration")
                .with_unit("s")
                .with_description("Duration of a poll")
                .build(),
        }
    }
}

/// Logs and counts [`Observation`]s, in the Prometheus registry and, when OTLP export is on, in
/// OpenTelemetry instruments. Cheap to clone.
#[derive(Clone)]
pub struct Observer {
    metrics: Arc<Metrics>,
    otel: Option<Arc<OtelInstruments>>,
}

impl Default for Observer {
    fn default() -> Self {
        Observer {
            metrics: Arc::default(),
            otel: crate::telemetry::meter().map(|m| Arc::new(OtelInstruments::new(&m))),
        }
    }
}

fn kv(pairs: &[(&'static str, &str)]) -> Vec<opentelemetry::KeyValue> {
    pairs
        .iter()
        .map(|(k, v)| opentelemetry::KeyValue::new(*k, v.to_string()))
        .collect()
}

impl Observer {
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// When OTLP export is on: exports each tenant's state (1 for the current one, 0 for the
    /// others) and the seconds since its last successful poll as gauges, read from `health` at
    /// every export, as `/metrics` computes them at every scrape.
    pub fn observe_health(&self, health: &HealthMap) {
        if self.otel.is_none() {
            return;
        }
        let Some(meter) = crate::telemetry::meter() else {
            return;
        };
        let h = health.clone();
        meter
            .u64_observable_gauge("wiz_connector.tenant_state")
            .with_description("1 for the tenant's current state, 0 for the others")
            .with_callback(move |o| {
                for t in h.all() {
                    for s in TenantState::ALL {
                        o.observe(
                            u64::from(t.state == s),
                            &kv(&[("tenant", &t.id), ("state", s.as_str())]),
                        );
                    }
                }
            })
            .build();
        let h = health.clone();
        meter
            .f64_observable_gauge("wiz_connector.seconds_since_last_success")
            .with_unit("s")
            .with_description("Seconds since the tenant's last successful poll")
            .with_callback(move |o| {
                let now = SystemTime::now();
                for t in h.all() {
                    if let Some(at) = t.last_success_at {
                        let since = now.duration_since(at).unwrap_or_default().as_secs_f64();
                        o.observe(since, &kv(&[("tenant", &t.id)]));
                    }
                }
            })
            .build();
    }

    /// Logs and counts a reload's outcome: what it changed, or why it was refused.
    pub fn reload(&self, trigger: &str, outcome: Result<ReloadCounts<'_>, &str>) {
        let result = match outcome {
            Ok(s) => {
                tracing::info!(
                    trigger,
                    added = s.added,
                    removed = s.removed,
                    restarted = s.restarted,
                    updated = s.updated,
                    sinks_changed = s.sinks_changed,
                    needs_restart = ?s.needs_restart,
                    "configuration reloaded"
                );
                "success"
            }
            Err(e) => {
                tracing::error!(trigger, error = e, "configuration reload refused");
                "failure"
            }
        };
        self.metrics
            .reloads
            .get_or_create(&OutcomeLabels {
                result: result.into(),
            })
            .inc();
        if let Some(o) = &self.otel {
            o.reloads.add(1, &kv(&[("result", result)]));
        }
    }

    pub fn emit(&self, tenant: &str, event: Observation<'_>) {
        if let Some(o) = &self.otel {
            o.record(tenant, &event, self.metrics.per_tenant());
        }
        let m = &self.metrics;
        let t = || TenantLabels {
            tenant: tenant.to_string(),
        };
        let k = |kind: &str| KindLabels {
            tenant: tenant.to_string(),
            kind: kind.to_string(),
        };
        let r = |result: &str| ResultLabels {
            tenant: tenant.to_string(),
            result: result.to_string(),
        };
        match event {
            Observation::PollSucceeded {
                events_added,
                duration,
            } => {
                tracing::info!(
                    tenant,
                    events_added,
                    duration_ms = duration.as_millis() as u64,
                    "poll complete"
                );
                m.polls.get_or_create(&r("success")).inc();
                m.observe_poll(tenant, duration);
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                m.last_success.get_or_create(&t()).set(now.as_secs_f64());
            }
            Observation::PollFailed {
                kind,
                error,
                duration,
                retry_in,
            } => {
                tracing::warn!(
                    tenant,
                    kind,
                    error,
                    retry_in_s = retry_in.as_secs(),
                    "poll failed"
                );
                m.polls.get_or_create(&r("failure")).inc();
                m.errors.get_or_create(&k(kind)).inc();
                m.observe_poll(tenant, duration);
            }
            Observation::EventsDelivered { kind, count } => {
                tracing::debug!(tenant, kind = kind.as_str(), count, "events delivered");
                m.events.get_or_create(&k(kind.as_str())).inc_by(count);
            }
            Observation::RequestRetried {
                kind,
                error,
                retry_in,
            } => {
                tracing::warn!(
                    tenant,
                    kind,
                    error,
                    retry_in_ms = retry_in.as_millis() as u64,
                    "wiz request failed, retrying"
                );
                m.retries.get_or_create(&t()).inc();
                m.errors.get_or_create(&k(kind)).inc();
            }
            Observation::TokenObtained { renewal, after_401 } => {
                if after_401 {
                    tracing::info!(tenant, "wiz answered 401; obtained a new token");
                } else {
                    tracing::debug!(tenant, renewal, "obtained a wiz token");
                }
                if renewal {
                    m.token_renewals.get_or_create(&t()).inc();
                }
            }
            Observation::SinkUnavailable { error, attempts } => {
                if attempts == 1 || attempts.is_multiple_of(10) {
                    tracing::warn!(
                        tenant,
                        error,
                        attempts,
                        "sink did not take the page; holding it and retrying"
                    );
                }
                m.errors.get_or_create(&k("sink")).inc();
            }
            Observation::NodeUnreadable {
                feed,
                id,
                reason,
                bytes,
                quarantined,
            } => {
                if quarantined {
                    tracing::warn!(
                        tenant,
                        feed,
                        item_id = id,
                        reason,
                        bytes,
                        "a node of the page cannot be read: it is delivered as one quarantine event, and the rest of the page goes on"
                    );
                } else {
                    tracing::debug!(
                        tenant,
                        feed,
                        item_id = id,
                        reason,
                        bytes,
                        "a quarantined node is still unreadable and unchanged: not delivered again"
                    );
                }
                m.errors.get_or_create(&k("bad_response")).inc();
            }
            Observation::FeedFailed {
                feed,
                denied,
                error,
                retry_in,
            } => {
                tracing::warn!(
                    tenant,
                    feed,
                    denied,
                    error,
                    retry_in_s = retry_in.as_secs(),
                    "feed failed; its window is tried again later (the tenant's other feeds go on)"
                );
                m.errors
                    .get_or_create(&k(if denied { "feed_denied" } else { "feed" }))
                    .inc();
            }
            Observation::IssuesVanished { count } => {
                tracing::info!(
                    tenant,
                    count,
                    "issues no longer returned by wiz reported as resolved (vanished)"
                );
                m.vanished.get_or_create(&t()).inc_by(count);
            }
            Observation::Crashed {
                error,
                crashes,
                restart_in,
            } => {
                tracing::warn!(
                    tenant,
                    error,
                    crashes,
                    restart_in_ms = restart_in.as_millis() as u64,
                    "tenant crashed; restarting"
                );
                m.errors.get_or_create(&k("crash")).inc();
            }
            Observation::Parked {
                error,
                crashes,
                retry_in,
            } => {
                tracing::error!(
                    tenant,
                    error,
                    crashes,
                    retry_in_s = retry_in.as_secs(),
                    "tenant crashed too often; parked as failed"
                );
                m.errors.get_or_create(&k("crash")).inc();
            }
            Observation::Restarted => {
                tracing::info!(tenant, "tenant restarted");
                m.restarts.get_or_create(&t()).inc();
            }
        }
    }
}

/// What an applied reload changed, as the log line and metrics report it (counts, so metrics
/// need not know the reloader's types).
#[derive(Debug, Clone, Copy)]
pub struct ReloadCounts<'a> {
    pub added: usize,
    pub removed: usize,
    pub restarted: usize,
    pub updated: usize,
    pub sinks_changed: bool,
    /// Keys that changed but take effect only after a process restart.
    pub needs_restart: &'a [String],
}

#[cfg(test)]
mod cardinality_tests {
    use super::*;

    #[test]
    fn per_tenant_histograms_are_opt_in() {
        let m = Metrics::default();
        let health = HealthMap::default();
        m.observe_poll("a", Duration::from_millis(20));
        let text = m.render(&health);
        assert!(
            text.contains("wiz_connector_poll_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            !text.contains("tenant_poll_duration_seconds_count{"),
            "{text}"
        );
        m.set_per_tenant_histograms(true);
        m.observe_poll("a", Duration::from_millis(20));
        let text = m.render(&health);
        assert!(
            text.contains("wiz_connector_poll_duration_seconds_count 2"),
            "{text}"
        );
        assert!(
            text.contains("wiz_connector_tenant_poll_duration_seconds_count{tenant=\"a\"} 1"),
            "{text}"
        );
    }
}
