//! The sink actor and its outputs. Tenants send one page (a [`Batch`]) and wait for the ack before
//! they fetch the next, so the bound on memory is in the protocol (ractor mailboxes are
//! unbounded). The sink acks only after every output has the batch durably.
//!
//! **A sink type is one file plus one line.** Each `sink/<type>.rs` owns everything about its
//! type: the `[sinks.<name>]` section as users write it (`Section`), its checks and defaults and
//! the resolved settings (`Spec`, whose `Serialize` redacts secrets, shown by `validate`), the
//! secrets a reload compares, and how it opens and writes. It says so by implementing
//! [`SinkType`]. The line in [`sink_types!`] below registers it: the `type = "..."` name, the
//! variant and the implementing type. `config` knows sinks only through the enums that macro
//! makes ([`SinkSection`], [`SinkKind`]) and the [`SinkChecks`] it hands to `resolve`.

mod file;
mod http;
mod nats;
pub mod routing;
mod stdout;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use secrecy::SecretString;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tracing::Instrument;

use crate::faults::FaultInjection;
pub use file::FileOutput;
pub use http::HttpOutput;
pub use nats::NatsOutput;
pub use stdout::StdoutOutput;

/// One page of events from one tenant and one feed: JSON lines, each ending in `\n`.
#[derive(Debug)]
pub struct Batch {
    pub tenant: Arc<str>,
    /// The feed of every event in it (`issues` for Issues pages, hint lookups and write-back's
    /// audit events): routes that take some feeds only decide per batch.
    pub feed: &'static str,
    pub lines: Vec<u8>,
    pub events: usize,
}

/// What the sink actor does.
pub enum SinkMsg {
    /// Write a batch to every output; the reply comes once all have it durably.
    Deliver(Arc<Batch>, RpcReplyPort<Result<(), String>>),
}

/// Counters of the sink, shared with whoever wants to read them.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub batches: AtomicU64,
    pub events: AtomicU64,
    pub errors: AtomicU64,
    /// Batches received but not yet acknowledged, and the most there ever were.
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    /// Each sink's state, by name (`GET /sinks`).
    pub sinks: std::sync::Mutex<BTreeMap<String, SinkStatus>>,
    /// Per-sink metrics (one series per sink, none per tenant and sink).
    pub metrics: SinkMetrics,
}

/// Consecutive failed batches after which a sink is `down` rather than `retrying`.
pub const DOWN_AFTER_FAILURES: u32 = 5;

/// Where a sink stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkHealth {
    /// Its last write succeeded (or none was tried yet).
    #[default]
    Up,
    /// Its last write failed; the tenants that reach it resend their pages.
    Retrying,
    /// [`DOWN_AFTER_FAILURES`] writes or more failed in a row.
    Down,
}

/// A sink's last error and when it happened (the sink module's own type: `health` knows
/// `config`, which knows sinks, so sinks do not import `health`).
#[derive(Debug, Clone, Serialize)]
pub struct SinkError {
    pub message: String,
    #[serde(serialize_with = "rfc3339")]
    pub at: std::time::SystemTime,
}

fn rfc3339<S: serde::Serializer>(t: &std::time::SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

/// One sink's state, as `GET /sinks` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SinkStatus {
    pub state: SinkHealth,
    pub last_error: Option<SinkError>,
    /// Batches that failed in a row (0 once one succeeds).
    pub failures_in_a_row: u32,
    /// Events written since the process started.
    pub delivered_events: u64,
    /// Batches that failed since the process started.
    pub failed_batches: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct SinkLabels {
    sink: String,
}

/// Fleet-wide metrics per sink, registered by `app` into the one registry.
#[derive(Clone, Debug, Default)]
pub struct SinkMetrics {
    delivered: prometheus_client::metrics::family::Family<
        SinkLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    failed: prometheus_client::metrics::family::Family<
        SinkLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    up: prometheus_client::metrics::family::Family<
        SinkLabels,
        prometheus_client::metrics::gauge::Gauge,
    >,
}

impl SinkMetrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "sink_delivered_events",
            "Events written to each sink",
            self.delivered.clone(),
        );
        registry.register(
            "sink_failed_batches",
            "Batches a sink failed to take (the tenants keep them and resend)",
            self.failed.clone(),
        );
        registry.register(
            "sink_up",
            "1 when the sink's last write succeeded, 0 when it failed",
            self.up.clone(),
        );
    }
}

impl SinkStats {
    /// Records a write to sink `name`: `events` taken, or the error.
    fn record(&self, name: &str, result: Result<usize, &str>) {
        let l = SinkLabels {
            sink: name.to_string(),
        };
        let mut sinks = self.sinks.lock().expect("sink status lock");
        let s = sinks.entry(name.to_string()).or_default();
        match result {
            Ok(events) => {
                s.state = SinkHealth::Up;
                s.failures_in_a_row = 0;
                s.delivered_events += events as u64;
                self.metrics
                    .delivered
                    .get_or_create(&l)
                    .inc_by(events as u64);
                self.metrics.up.get_or_create(&l).set(1);
            }
            Err(e) => {
                s.failures_in_a_row += 1;
                s.failed_batches += 1;
                s.state = if s.failures_in_a_row >= DOWN_AFTER_FAILURES {
                    SinkHealth::Down
                } else {
                    SinkHealth::Retrying
                };
                s.last_error = Some(SinkError {
                    message: e.to_string(),
                    at: std::time::SystemTime::now(),
                });
                self.metrics.failed.get_or_create(&l).inc();
                self.metrics.up.get_or_create(&l).set(0);
            }
        }
    }

    /// Each sink's state, by name.
    pub fn statuses(&self) -> BTreeMap<String, SinkStatus> {
        self.sinks.lock().expect("sink status lock").clone()
    }
}

/// What `config` lends a sink type while it resolves a section: where problems go (each names
/// `sinks.<name>.<key>` and the file it came from) and how secrets are read (a literal,
/// `${ENV_VAR}` or a `*_file`).
pub trait SinkChecks {
    /// Records a problem with `sinks.<name>.<key>`.
    fn error(&mut self, key: &str, message: String);
    /// Reads a secret given as `keys.0` (literal or `${ENV}`) or `keys.1` (a file); a problem
    /// (both given, an unset variable, an unreadable file) is recorded and gives `None`.
    fn secret(
        &mut self,
        value: Option<&SecretString>,
        file: Option<&PathBuf>,
        keys: (&'static str, &'static str),
    ) -> Option<SecretString>;
}

/// One sink type: its configuration section, its resolved settings, and its output.
pub trait SinkType {
    /// `[sinks.<name>]` as users write it, without `type` (unknown keys are errors).
    type Section: DeserializeOwned + Debug + Clone;
    /// The resolved settings. `Serialize` is what `validate` prints: secrets redacted.
    type Spec: Serialize + Debug + Clone + Send + Sync;
    /// The open output.
    type Output: Send;

    /// Checks `section` and applies defaults; every problem goes to `checks`. `None` when the
    /// section cannot make a sink (the problems say why).
    fn resolve(
        name: &str,
        section: &Self::Section,
        checks: &mut dyn SinkChecks,
    ) -> Option<Self::Spec>;

    /// The secrets in `spec`, compared on reload: a rotated secret reopens the sink although the
    /// printed (redacted) settings look the same.
    fn secrets(_spec: &Self::Spec) -> Vec<&str> {
        Vec::new()
    }

    /// The settings that may hold placeholders (`{tenant}`, `{feed}`, `{label.<key>}`), by key.
    fn templates(_spec: &Self::Spec) -> Vec<(&'static str, &str)> {
        Vec::new()
    }

    /// `spec` with its templated settings filled by `fill` (one output per distinct result), or
    /// why the filled settings are not usable (the batch then fails; it never goes elsewhere).
    fn instantiate(
        spec: &Self::Spec,
        _fill: &dyn Fn(&str) -> String,
    ) -> Result<Self::Spec, String> {
        Ok(spec.clone())
    }

    /// Opens the output (connects, creates, checks); the error names the sink and says what to do.
    fn open(
        name: &str,
        spec: &Self::Spec,
    ) -> impl std::future::Future<Output = Result<Self::Output, String>> + Send;

    /// Writes one batch durably, or says why not (the tenant keeps the page and retries).
    fn write(
        out: &mut Self::Output,
        batch: Arc<Batch>,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;
}

/// The registry: one line per sink type, `"<type name>" => Variant(module::Type)`. It makes the
/// section enum `config` deserializes, the resolved enum, and the output enum, with their
/// dispatch.
macro_rules! sink_types {
    ($($name:literal => $variant:ident($ty:ty)),+ $(,)?) => {
        /// `[sinks.<name>]`: one output, by `type`.
        #[derive(Debug, Clone, Deserialize)]
        #[serde(tag = "type")]
        pub enum SinkSection {
            $(#[serde(rename = $name)] $variant(<$ty as SinkType>::Section),)+
        }

        /// A sink's resolved settings, by type.
        #[derive(Debug, Clone, Serialize)]
        #[serde(tag = "type")]
        pub enum SinkKind {
            $(#[serde(rename = $name)] $variant(<$ty as SinkType>::Spec),)+
        }

        /// One open output.
        pub enum Output {
            $($variant(<$ty as SinkType>::Output),)+
        }

        impl SinkSection {
            /// Checks the section of sink `name` and resolves it.
            pub fn resolve(&self, name: &str, checks: &mut dyn SinkChecks) -> Option<SinkKind> {
                match self {
                    $(SinkSection::$variant(s) => {
                        <$ty as SinkType>::resolve(name, s, checks).map(SinkKind::$variant)
                    })+
                }
            }
        }

        impl SinkKind {
            /// The `type` name.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $(SinkKind::$variant(_) => $name,)+
                }
            }

            /// The secrets of these settings (compared on reload).
            pub fn secrets(&self) -> Vec<&str> {
                match self {
                    $(SinkKind::$variant(s) => <$ty as SinkType>::secrets(s),)+
                }
            }

            /// The settings that may hold placeholders, by key.
            pub fn templates(&self) -> Vec<(&'static str, &str)> {
                match self {
                    $(SinkKind::$variant(s) => <$ty as SinkType>::templates(s),)+
                }
            }

            /// These settings with their placeholders filled.
            pub fn instantiate(&self, fill: &dyn Fn(&str) -> String) -> Result<SinkKind, String> {
                match self {
                    $(SinkKind::$variant(s) => <$ty as SinkType>::instantiate(s, fill).map(SinkKind::$variant),)+
                }
            }
        }

        impl Output {
            /// Opens the output described by `spec`.
            pub async fn open(spec: &SinkSpec) -> Result<Output, String> {
                match &spec.kind {
                    $(SinkKind::$variant(s) => {
                        <$ty as SinkType>::open(&spec.name, s).await.map(Output::$variant)
                    })+
                }
            }

            async fn write(&mut self, batch: &Arc<Batch>) -> Result<(), String> {
                match self {
                    $(Output::$variant(o) => <$ty as SinkType>::write(o, batch.clone()).await,)+
                }
            }
        }
    };
}

sink_types! {
    "stdout" => Stdout(stdout::StdoutSink),
    "file" => File(file::FileSink),
    "http" => Http(http::HttpSink),
    "nats" => Nats(nats::NatsSink),
}

/// One output, by name, resolved.
#[derive(Debug, Clone, Serialize)]
pub struct SinkSpec {
    pub name: String,
    /// The tenant whose own file defines this sink: it takes that tenant's events alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(flatten)]
    pub kind: SinkKind,
}

/// Arguments of the sink actor.
pub struct SinkArgs {
    pub specs: Vec<SinkSpec>,
    /// Each tenant's destinations; `None` (or `every_sink`): every sink takes every event.
    pub routing: Option<Arc<routing::Routing>>,
    pub stats: Arc<SinkStats>,
    pub faults: FaultInjection,
}

/// One configured sink and its open outputs: one, or with templated settings, one per distinct
/// filled value (opened at first use).
struct SinkSlot {
    spec: SinkSpec,
    templated: bool,
    outputs: HashMap<String, Output>,
}

pub struct SinkState {
    sinks: Vec<SinkSlot>,
    /// Index into `sinks` by name.
    index: HashMap<String, usize>,
    routing: Option<Arc<routing::Routing>>,
    stats: Arc<SinkStats>,
    faults: FaultInjection,
}

/// Writes every batch to each of its tenant's destinations, in order.
pub struct SinkActor;

impl Actor for SinkActor {
    type Msg = SinkMsg;
    type State = SinkState;
    type Arguments = SinkArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<SinkMsg>,
        args: SinkArgs,
    ) -> Result<SinkState, ActorProcessingErr> {
        {
            // Every configured sink is listed from the start; removed ones are forgotten.
            let mut board = args.stats.sinks.lock().expect("sink status lock");
            board.retain(|name, _| args.specs.iter().any(|s| &s.name == name));
            for s in &args.specs {
                board.entry(s.name.clone()).or_default();
            }
        }
        let mut sinks = Vec::new();
        for spec in args.specs {
            let templated = !spec.kind.templates().is_empty();
            let mut outputs = HashMap::new();
            if !templated {
                // Opened now: a sink that cannot start fails the start with its reason.
                outputs.insert(String::new(), Output::open(&spec).await?);
            }
            sinks.push(SinkSlot {
                spec,
                templated,
                outputs,
            });
        }
        Ok(SinkState {
            index: sinks
                .iter()
                .enumerate()
                .map(|(i, s)| (s.spec.name.clone(), i))
                .collect(),
            sinks,
            routing: args.routing,
            stats: args.stats,
            faults: args.faults,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<SinkMsg>,
        msg: SinkMsg,
        state: &mut SinkState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SinkMsg::Deliver(batch, reply) => {
                let span = tracing::info_span!(
                    "sink_write",
                    tenant = %batch.tenant,
                    events = batch.events,
                    bytes = batch.lines.len()
                );
                let result = write_all(state, &batch).instrument(span).await;
                let _ = reply.send(result);
            }
        }
        Ok(())
    }
}

/// Where one batch goes: each sink it reaches, with the batch itself or the part a severity
/// filter keeps. Decided by a lookup of the batch's tenant, never by event content beyond the
/// normalized severity.
fn targets(state: &SinkState, batch: &Arc<Batch>) -> Vec<(usize, Arc<Batch>)> {
    let routes = state
        .routing
        .as_ref()
        .filter(|r| !r.every_sink)
        .map(|r| r.tenants.get(&*batch.tenant));
    match routes {
        None => (0..state.sinks.len()).map(|i| (i, batch.clone())).collect(),
        Some(None) => Vec::new(),
        Some(Some(t)) => t
            .destinations
            .iter()
            .filter(|d| d.takes_feed(batch.feed))
            .filter_map(|d| {
                let i = *state.index.get(&d.sink)?;
                match d.select(&batch.lines) {
                    None => Some((i, batch.clone())),
                    Some((_, 0)) => None,
                    Some((lines, events)) => Some((
                        i,
                        Arc::new(Batch {
                            tenant: batch.tenant.clone(),
                            feed: batch.feed,
                            lines,
                            events,
                        }),
                    )),
                }
            })
            .collect(),
    }
}

/// Writes one batch to every sink it reaches, in order; the first failure fails the batch.
async fn write_all(state: &mut SinkState, batch: &Arc<Batch>) -> Result<(), String> {
    if let Some(delay) = state.faults.sink_delay() {
        tokio::time::sleep(delay).await;
    }
    state.faults.maybe_panic_sink();
    if let Some(e) = state.faults.sink_failure() {
        return Err(e);
    }
    // The tenant's routes (shared, not copied per batch): their labels fill sink templates.
    let routes = state
        .routing
        .as_ref()
        .and_then(|r| r.tenants.get(&*batch.tenant))
        .cloned();
    let empty = BTreeMap::new();
    let labels = routes.as_ref().map_or(&empty, |t| &t.labels);
    for (i, part) in targets(state, batch) {
        let slot = &mut state.sinks[i];
        let name = slot.spec.name.clone();
        let result = slot.write(&part, labels).await;
        state.stats.record(
            &name,
            result.as_ref().map(|_| part.events).map_err(String::as_str),
        );
        if let Err(e) = result {
            state.stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(sink = %name, tenant = %batch.tenant, error = %e, "sink write failed; the tenant keeps the page and retries");
            return Err(format!("sink `{name}`: {e}"));
        }
    }
    state.stats.batches.fetch_add(1, Ordering::Relaxed);
    state
        .stats
        .events
        .fetch_add(batch.events as u64, Ordering::Relaxed);
    Ok(())
}

impl SinkSlot {
    /// Writes `batch` to the output its tenant and feed fill the templates with (opened on
    /// first use), or to the one output of an untemplated sink.
    async fn write(
        &mut self,
        batch: &Arc<Batch>,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), String> {
        let key = if self.templated {
            self.spec
                .kind
                .templates()
                .iter()
                .map(|(_, t)| routing::render(t, &batch.tenant, batch.feed, labels))
                .collect::<Vec<_>>()
                .join("\u{1f}")
        } else {
            String::new()
        };
        if !self.outputs.contains_key(&key) {
            let fill = |t: &str| routing::render(t, &batch.tenant, batch.feed, labels);
            let spec = SinkSpec {
                name: self.spec.name.clone(),
                owner: self.spec.owner.clone(),
                kind: self.spec.kind.instantiate(&fill)?,
            };
            let out = Output::open(&spec).await?;
            self.outputs.insert(key.clone(), out);
        }
        self.outputs
            .get_mut(&key)
            .expect("inserted above")
            .write(batch)
            .await
    }
}

/// Sends a batch to `sink` and waits for the ack. Counts the batch as in flight meanwhile.
pub async fn deliver(
    sink: &ActorRef<SinkMsg>,
    stats: &SinkStats,
    batch: Arc<Batch>,
    timeout: Duration,
) -> Result<(), String> {
    let now = stats.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
    stats.max_in_flight.fetch_max(now, Ordering::AcqRel);
    let res = sink
        .call(|reply| SinkMsg::Deliver(batch, reply), Some(timeout))
        .await;
    stats.in_flight.fetch_sub(1, Ordering::AcqRel);
    match res {
        Ok(ractor::rpc::CallResult::Success(r)) => r,
        Ok(ractor::rpc::CallResult::Timeout) => Err(format!(
            "the sink did not acknowledge within {}s",
            timeout.as_secs()
        )),
        Ok(ractor::rpc::CallResult::SenderError) => {
            Err("the sink stopped before acknowledging".into())
        }
        Err(e) => Err(format!("the sink is not running ({e})")),
    }
}
