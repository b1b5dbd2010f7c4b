//! Sinks: where events go. Tenants send one page (a [`Batch`]) to the sink actor and wait for
//! its ack before they fetch the next, so the bound on memory is in the protocol (ractor
//! mailboxes are unbounded).
//!
//! - [`actor`]: the sink actor, a router. It looks up the batch's tenant in the resolved routes,
//!   gives each destination its part, and acks once every destination has it durably: written,
//!   or kept in that destination's backlog.
//! - [`worker`]: one task per configured sink, owning its outputs. While the sink takes writes
//!   it writes directly; a write it refuses goes to the sink's backlog, which the worker then
//!   drains in order (new parts queue behind it) until it is empty again.
//! - [`backlog`]: the durable queue on disk (segment files).
//! - [`routing`]: each tenant's destinations, resolved once per configuration.
//!
//! **A sink type is one file plus one line.** Each `sink/<type>.rs` owns everything about its
//! type: the `[sinks.<name>]` section as users write it (`Section`), its checks and defaults and
//! the resolved settings (`Spec`, whose `Serialize` redacts secrets, shown by `validate`), the
//! secrets a reload compares, and how it opens and writes. It says so by implementing
//! [`SinkType`]. The line in [`sink_types!`] below registers it: the `type = "..."` name, the
//! variant and the implementing type. `config` knows sinks only through the types that macro
//! makes ([`SinkSection`], [`SinkKind`]) and the [`SinkChecks`] it hands to `resolve`. The keys
//! every type takes (`backlog_max_bytes`, `format`) are read once, in [`Common`], not by each type.

mod actor;
pub mod backlog;
mod elasticsearch;
mod file;
mod http;
mod kafka;
mod nats;
mod pack;
mod retry;
pub mod routing;
mod sentinel;
mod splunk_hec;
mod stdout;
mod web;
mod worker;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;

use secrecy::SecretString;

use crate::format::{Format, Formatted};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

pub use actor::{deliver, Backlogs, SinkActor, SinkArgs, SinkMsg};
pub use file::FileOutput;
pub use http::HttpOutput;
pub use nats::NatsOutput;
pub use sentinel::SCOPE as SENTINEL_SCOPE;
pub use stdout::StdoutOutput;

/// One page of events from one tenant and one feed: JSON lines, each ending in `\n`.
#[derive(Debug)]
pub struct Batch {
    pub tenant: Arc<str>,
    /// The feed of every event in it (`issues` for Issues pages, hint lookups and write-back's
    /// audit events): routes that take some feeds only decide per batch.
    pub feed: &'static str,
    /// The events in the `native` format.
    pub lines: Vec<u8>,
    /// The same events in the other formats the tenant's destinations take, line for line.
    pub formatted: Formatted,
    pub events: usize,
    /// A baseline's page: only these of the tenant's destinations take it (`None`: all of them).
    pub only: Option<Arc<[String]>>,
}

impl Batch {
    /// A batch of the same tenant and feed holding `lines` (in one format) alone.
    pub fn with_lines(&self, lines: Vec<u8>, events: usize) -> Batch {
        Batch {
            tenant: self.tenant.clone(),
            feed: self.feed,
            lines,
            formatted: Formatted::default(),
            events,
            only: None,
        }
    }

    /// The events in `format`; `None` when the page was built without it (its tenant did not
    /// know yet that a destination takes it).
    pub fn lines_in(&self, format: Format) -> Option<&[u8]> {
        match format {
            Format::Native => Some(&self.lines),
            other => self.formatted.get(other),
        }
    }
}

/// Why the sink did not take a page (the tenant keeps it and sends it again).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", sink.as_deref().map(|s| format!("sink `{s}`: ")).unwrap_or_default())]
pub struct SinkRefusal {
    /// The sink that refused, when one did (not when the sink actor itself is unavailable): the
    /// tenant's health names it.
    pub sink: Option<String>,
    pub message: String,
}

impl SinkRefusal {
    fn of(sink: &str, message: impl Into<String>) -> SinkRefusal {
        SinkRefusal {
            sink: Some(sink.to_string()),
            message: message.into(),
        }
    }

    fn general(message: impl Into<String>) -> SinkRefusal {
        SinkRefusal {
            sink: None,
            message: message.into(),
        }
    }
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
    /// Events it refused for good since the process started (see [`Written`]), and the last
    /// such refusal.
    pub rejected_events: u64,
    pub last_rejection: Option<SinkError>,
    /// What waits in its backlog (events, and bytes on disk).
    pub backlog_events: u64,
    pub backlog_bytes: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct SinkLabels {
    sink: String,
}

/// A counter with one series per sink.
type PerSinkCounter = prometheus_client::metrics::family::Family<
    SinkLabels,
    prometheus_client::metrics::counter::Counter,
>;
/// A gauge with one series per sink.
type PerSinkGauge = prometheus_client::metrics::family::Family<
    SinkLabels,
    prometheus_client::metrics::gauge::Gauge,
>;

/// Fleet-wide metrics per sink, registered by `app` into the one registry.
#[derive(Clone, Debug, Default)]
pub struct SinkMetrics {
    delivered: PerSinkCounter,
    failed: PerSinkCounter,
    rejected: PerSinkCounter,
    up: PerSinkGauge,
    backlog_events: PerSinkGauge,
    backlog_bytes: PerSinkGauge,
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
            "sink_rejected_events",
            "Events a sink refused for good (reported in the log with their ids, not sent again)",
            self.rejected.clone(),
        );
        registry.register(
            "sink_up",
            "1 when the sink's last write succeeded, 0 when it failed",
            self.up.clone(),
        );
        registry.register(
            "sink_backlog_events",
            "Events waiting in each sink's durable backlog",
            self.backlog_events.clone(),
        );
        registry.register(
            "sink_backlog_bytes",
            "Bytes on disk in each sink's durable backlog",
            self.backlog_bytes.clone(),
        );
    }
}

impl SinkStats {
    /// Records a write of a page of `tenant` to sink `name`: its `events` taken (some perhaps
    /// refused for good, each then logged), or the error.
    fn record(&self, name: &str, tenant: &str, result: Result<(usize, &Written), &str>) {
        if let Ok((_, written)) = &result {
            // Logged before the status lock is taken: every reader of `GET /sinks` waits on it.
            for r in &written.rejected {
                tracing::error!(sink = %name, tenant = %tenant, event_id = %r.id, reason = %r.reason, "the sink refused an event for good; it is not sent again");
            }
        }
        let l = SinkLabels {
            sink: name.to_string(),
        };
        let mut sinks = self.sinks.lock().expect("sink status lock");
        let s = sinks.entry(name.to_string()).or_default();
        match result {
            Ok((events, written)) => {
                let rejected = written.rejected.len();
                let events = events.saturating_sub(rejected);
                if let Some(last) = written.rejected.last() {
                    s.rejected_events += rejected as u64;
                    s.last_rejection = Some(SinkError {
                        message: format!("event {}: {}", last.id, last.reason),
                        at: std::time::SystemTime::now(),
                    });
                    self.metrics
                        .rejected
                        .get_or_create(&l)
                        .inc_by(rejected as u64);
                }
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

    /// Records what waits in sink `name`'s backlog.
    fn set_backlog(&self, name: &str, depth: backlog::Depth) {
        let l = SinkLabels {
            sink: name.to_string(),
        };
        let mut sinks = self.sinks.lock().expect("sink status lock");
        let s = sinks.entry(name.to_string()).or_default();
        s.backlog_events = depth.events;
        s.backlog_bytes = depth.bytes;
        self.metrics
            .backlog_events
            .get_or_create(&l)
            .set(depth.events as i64);
        self.metrics
            .backlog_bytes
            .get_or_create(&l)
            .set(depth.bytes as i64);
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

    /// One harmless round trip with the destination (`check --sinks`): what it proved, or the
    /// problem, in the same words a failed write would use. Nothing is delivered.
    fn check(
        _out: &mut Self::Output,
    ) -> impl std::future::Future<Output = Result<String, String>> + Send {
        async { Ok("opened".to_string()) }
    }

    /// Writes one batch durably, or says why not (the batch then waits in the sink's backlog, or
    /// in its tenant without one).
    fn write(
        out: &mut Self::Output,
        batch: Arc<Batch>,
    ) -> impl std::future::Future<Output = Result<Written, String>> + Send;
}

/// What a destination did with a page it took.
#[derive(Debug, Default)]
pub struct Written {
    /// Events it refused for good (a document its mapping cannot take, an event over its size
    /// limit): each is reported and counted, and not sent again, while the rest of the page is
    /// delivered. A refusal that another try could fix fails the page instead.
    pub rejected: Vec<Rejected>,
}

/// One event a destination refused for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The event's id.
    pub id: String,
    /// Why, in the destination's words and what to do.
    pub reason: String,
}

impl From<()> for Written {
    fn from(_: ()) -> Written {
        Written::default()
    }
}

/// The registry: one line per sink type, `"<type name>" => Variant(module::Type)`. It makes the
/// section enum `config` deserializes, the resolved enum, and the output enum, with their
/// dispatch.
macro_rules! sink_types {
    ($($name:literal => $variant:ident($ty:ty)),+ $(,)?) => {
        /// The type's own keys of `[sinks.<name>]`, by `type`.
        #[derive(Debug, Clone, Deserialize)]
        #[serde(tag = "type")]
        pub enum TypeSection {
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

        impl TypeSection {
            /// Checks the type's keys of sink `name` and resolves them.
            fn resolve(&self, name: &str, checks: &mut dyn SinkChecks) -> Option<SinkKind> {
                match self {
                    $(TypeSection::$variant(s) => {
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

            /// One harmless round trip with the destination (`check --sinks`).
            pub async fn check(&mut self) -> Result<String, String> {
                match self {
                    $(Output::$variant(o) => <$ty as SinkType>::check(o).await,)+
                }
            }

            async fn write(&mut self, batch: &Arc<Batch>) -> Result<Written, String> {
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
    "splunk_hec" => SplunkHec(splunk_hec::HecSink),
    "elasticsearch" => Elasticsearch(elasticsearch::ElasticSink),
    "sentinel" => Sentinel(sentinel::SentinelSink),
    "kafka" => Kafka(kafka::KafkaSink),
}

/// The default bound of a sink's backlog (`backlog_max_bytes`).
pub const DEFAULT_BACKLOG_MAX_BYTES: u64 = 256 << 20;

/// The keys every sink type takes, read once here rather than by each type.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Common {
    /// The most bytes its durable backlog may hold before the tenants routed to it hold their
    /// pages (0: no backlog, a refused page waits in its tenant). Default 256 MiB.
    pub backlog_max_bytes: Option<u64>,
    /// The schema of its events: `native` (the default), `ocsf` or `ecs`.
    pub format: Option<Format>,
}

impl Common {
    const KEYS: [&'static str; 2] = ["backlog_max_bytes", "format"];
}

/// `[sinks.<name>]`: the keys every type takes, and the type's own.
#[derive(Debug, Clone)]
pub struct SinkSection {
    pub common: Common,
    pub kind: TypeSection,
}

impl<'de> Deserialize<'de> for SinkSection {
    /// The shared keys are taken out, then the rest is read by `type` (serde's tagged enums
    /// buffer the table anyway, so nothing is lost in the error messages).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        // Before `format` named the output schema, an http sink's `format` named its body
        // (`ndjson` or `json_array`, now `body`): those values still mean that.
        let http = table.get("type").and_then(|t| t.as_str()) == Some("http");
        let old_body = table
            .get("format")
            .and_then(|f| f.as_str())
            .is_some_and(|f| matches!(f, "ndjson" | "json_array"));
        if http && old_body && !table.contains_key("body") {
            let v = table.remove("format").expect("checked");
            table.insert("body".to_string(), v);
        }
        if let Some(f) = table.get("format") {
            if f.as_str().is_none_or(|f| Format::parse(f).is_none()) {
                return Err(D::Error::custom(format!(
                    "format: unknown format {f}; use \"native\", \"ocsf\" or \"ecs\"{}",
                    if http {
                        " (an http sink's body is `body`: \"ndjson\" or \"json_array\")"
                    } else {
                        ""
                    }
                )));
            }
        }
        let mut shared = serde_json::Map::new();
        for key in Common::KEYS {
            if let Some(v) = table.remove(key) {
                shared.insert(key.to_string(), v);
            }
        }
        let common =
            serde_json::from_value(serde_json::Value::Object(shared)).map_err(D::Error::custom)?;
        let kind =
            serde_json::from_value(serde_json::Value::Object(table)).map_err(D::Error::custom)?;
        Ok(SinkSection { common, kind })
    }
}

impl SinkSection {
    /// Checks the section of sink `name` (defined in tenant `owner`'s file, or shared) and
    /// resolves it.
    pub fn resolve(
        &self,
        name: &str,
        owner: Option<&str>,
        checks: &mut dyn SinkChecks,
    ) -> Option<SinkSpec> {
        let kind = self.kind.resolve(name, checks)?;
        Some(SinkSpec {
            name: name.to_string(),
            owner: owner.map(str::to_string),
            backlog_max_bytes: self
                .common
                .backlog_max_bytes
                .unwrap_or(DEFAULT_BACKLOG_MAX_BYTES),
            format: self.common.format.unwrap_or_default(),
            kind,
        })
    }
}

/// One output, by name, resolved.
#[derive(Debug, Clone, Serialize)]
pub struct SinkSpec {
    pub name: String,
    /// The tenant whose own file defines this sink: it takes that tenant's events alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The bound of its durable backlog, in bytes (0: none).
    pub backlog_max_bytes: u64,
    /// The schema its events are written in.
    pub format: Format,
    #[serde(flatten)]
    pub kind: SinkKind,
}
