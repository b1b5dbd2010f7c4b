//! The configuration file as users write it (CONTRACT.md). Data only: no I/O, no validation beyond
//! what serde does (unknown keys are rejected everywhere). Defaults live here so that `validate`
//! can print them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use secrecy::SecretString;
use serde::{Deserialize, Deserializer};

use super::DurationValue;

/// The whole file after layering (main file, `tenants_dir`, environment overrides).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigFile {
    /// Settings shared by every tenant and the process.
    pub connector: ConnectorSection,
    /// The admin HTTP API.
    pub admin: AdminSection,
    /// Named outputs. Without routes and tenant `sinks`, every event goes to all of them.
    pub sinks: BTreeMap<String, crate::sink::SinkSection>,
    /// Shared destinations for a subset of the fleet (by tenant id or glob, labels, feeds and
    /// severity).
    pub routes: BTreeMap<String, RouteSection>,
    /// One table per Wiz tenant; the key is the tenant id.
    pub tenants: BTreeMap<String, TenantSection>,
    /// Trace export.
    pub telemetry: TelemetrySection,
    /// Cluster mode; absent: one process with local state.
    pub cluster: Option<super::cluster::ClusterSection>,
    /// The webhook receiver; absent: no receiver.
    pub hooks: Option<super::hooks::HooksSection>,
}

/// `[telemetry]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySection {
    /// Base URL of an OTLP/HTTP collector (e.g. `http://localhost:4318`); spans go to
    /// `<otlp_endpoint>/v1/traces`. Unset: no export.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans and metrics.
    pub service_name: String,
    /// How often metrics are pushed to the collector.
    pub metrics_interval: DurationValue,
    /// Also keep a poll-duration histogram per tenant (15 series each: at 100,000 tenants that is
    /// 1.5 million series). Off: one fleet-wide histogram.
    pub per_tenant_histograms: bool,
}

impl Default for TelemetrySection {
    fn default() -> Self {
        TelemetrySection {
            per_tenant_histograms: false,
            otlp_endpoint: None,
            service_name: "wiz-connector".to_string(),
            metrics_interval: DurationValue::secs(60),
        }
    }
}

/// `[connector]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectorSection {
    /// How often each tenant polls unless it overrides it (the seed's default: 300 s).
    pub poll_interval: DurationValue,
    /// `first` of the issues query: 1..=500, Wiz's maximum, because fewer round trips cost less of
    /// the 3 req/s budget.
    pub page_size: u32,
    /// Issue statuses that are watched. Accepts a list or, from an environment variable, a
    /// comma-separated string.
    #[serde(deserialize_with = "status_list")]
    pub statuses: Vec<String>,
    /// The feeds every tenant collects unless it names its own: `issues` (the default),
    /// `vulnerabilities`, `detections`, `audit`, `cloud_configuration`. A list, or a
    /// comma-separated string from an environment variable.
    #[serde(deserialize_with = "status_list")]
    pub feeds: Vec<String>,
    /// Where the embedded state store lives; created when missing.
    pub state_dir: PathBuf,
    /// Memory the state store may use to cache its pages, in MiB: what bounds the connector's
    /// memory as the store grows (millions of findings), at the price of disk reads beyond it.
    pub state_cache_mib: u64,
    /// How long an orderly shutdown may take before the process exits anyway.
    pub shutdown_timeout: DurationValue,
    /// Optional folder of `<tenant-id>.toml` files, one per tenant, so an MSSP adds a customer by
    /// dropping a file.
    pub tenants_dir: Option<PathBuf>,
    /// Timeout of every HTTP request to Wiz; Wiz's gateway gives up at about 115 s.
    pub request_timeout: DurationValue,
    /// Default requests per second per Wiz credential (Wiz allows about 3).
    pub rate_limit: f64,
    /// Upper bound on pages in one sweep, so a misbehaving API cannot keep a tenant paging forever.
    pub max_pages_per_sweep: u32,
    /// Retries of one request after a transient failure (429, 5xx, timeout, downstream error).
    pub max_retries: u32,
    /// First backoff delay; doubles on each retry, with jitter.
    pub retry_initial_backoff: DurationValue,
    /// Cap on one backoff delay (a `Retry-After` from Wiz may exceed it up to 300 s).
    pub retry_max_backoff: DurationValue,
    /// At most this many tenants sweep at once, so a large fleet does not open thousands of
    /// connections together.
    pub max_concurrent_sweeps: u32,
    /// Each tenant's first poll is delayed by a random time below this (and below its poll
    /// interval), so thousands of tenants do not hit the token endpoint at once.
    pub startup_jitter: DurationValue,
    /// A tenant that crashes more than this many times within `restart_period` is parked as
    /// `failed`.
    pub restart_intensity: u32,
    /// The window over which crashes are counted.
    pub restart_period: DurationValue,
    /// First delay before restarting a crashed tenant; doubles with each crash in the window.
    pub restart_backoff_initial: DurationValue,
    /// Cap on the restart delay.
    pub restart_backoff_max: DurationValue,
    /// How long a `failed` tenant stays parked before it is tried again.
    pub failed_cooldown: DurationValue,
    /// How often `run` logs a one-line summary of the fleet's states.
    pub summary_interval: DurationValue,
    /// How often the configuration file and `tenants_dir` are checked for changes; `"0s"` turns
    /// the watcher off (SIGHUP and `POST /reload` still work).
    pub watch_interval: DurationValue,
    /// A full reconciliation sweep of the watched statuses runs this often, to catch what
    /// `statusChangedAt` misses (severity, notes, due dates); polls in between are incremental.
    pub full_sweep_interval: DurationValue,
    /// A tenant whose last full sweep took at most this many pages sweeps fully on every poll
    /// (each change its fingerprint covers then arrives within one poll interval, not at the
    /// next `full_sweep_interval`); larger tenants poll incrementally. 0 turns this off.
    pub full_sweep_max_pages: u32,
    /// Incremental polls ask for `statusChangedAt` after the high-water mark minus this, so a
    /// change written late on Wiz's side is not missed.
    pub incremental_overlap: DurationValue,
    /// How far back a feed's first window reaches, by feed (`{ detections = "2d" }`); a feed not
    /// listed reads everything Wiz keeps.
    pub initial_lookback: BTreeMap<String, DurationValue>,
}

impl Default for ConnectorSection {
    fn default() -> Self {
        ConnectorSection {
            poll_interval: DurationValue::secs(300),
            page_size: 500,
            statuses: vec!["OPEN".to_string()],
            feeds: vec!["issues".to_string()],
            state_dir: PathBuf::from("data"),
            state_cache_mib: 256,
            shutdown_timeout: DurationValue::secs(30),
            tenants_dir: None,
            request_timeout: DurationValue::secs(60),
            rate_limit: 3.0,
            max_pages_per_sweep: 2000,
            max_retries: 5,
            retry_initial_backoff: DurationValue::secs(1),
            retry_max_backoff: DurationValue::secs(60),
            max_concurrent_sweeps: 64,
            startup_jitter: DurationValue::secs(30),
            restart_intensity: 5,
            restart_period: DurationValue::secs(60),
            restart_backoff_initial: DurationValue::secs(1),
            restart_backoff_max: DurationValue::secs(60),
            failed_cooldown: DurationValue::secs(600),
            summary_interval: DurationValue::secs(60),
            watch_interval: DurationValue::secs(1),
            full_sweep_interval: DurationValue::secs(24 * 3600),
            full_sweep_max_pages: 20,
            incremental_overlap: DurationValue::secs(600),
            initial_lookback: BTreeMap::new(),
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Address of the admin API; loopback by default so nothing is exposed unless asked.
    pub listen: String,
    /// Bearer token the admin API requires (a literal or `${ENV_VAR}`); mandatory when `listen`
    /// is not a loopback address.
    pub token: Option<SecretString>,
    /// Alternative to `token`: a file holding it.
    pub token_file: Option<PathBuf>,
    /// Named tokens, each with its permission (`[admin.tokens.<name>]`); the name is who asked
    /// in the audit trail of write-back. `token` above is the same as one named `admin` with
    /// `write` permission.
    pub tokens: BTreeMap<String, AdminTokenSection>,
}

/// `[admin.tokens.<name>]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTokenSection {
    /// A literal or `${ENV_VAR}`.
    pub token: Option<SecretString>,
    /// Alternative to `token`: a file holding it.
    pub token_file: Option<PathBuf>,
    /// `read` (GET routes only) or `write` (also reloads, polls on demand and write-back).
    #[serde(default = "read_permission")]
    pub permission: String,
}

fn read_permission() -> String {
    "read".to_string()
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            token: None,
            token_file: None,
            tokens: BTreeMap::new(),
            listen: "127.0.0.1:8686".to_string(),
        }
    }
}

/// `[tenants.<id>]` or `tenants_dir/<id>.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSection {
    /// The Wiz service account's client id.
    pub client_id: Option<String>,
    /// A literal secret or `${ENV_VAR}`. Held in a secret type from the moment it is read.
    pub client_secret: Option<SecretString>,
    /// Alternative to `client_secret`: a file holding the secret (trailing newline ignored).
    pub client_secret_file: Option<PathBuf>,
    /// The tenant's GraphQL endpoint, e.g. `https://api.us20.app.wiz.io/graphql`.
    pub api_url: Option<String>,
    /// Token endpoint; defaults to the commercial one (FedRAMP's when `api_url` is on wiz.us).
    pub auth_url: Option<String>,
    /// OAuth audience; derived from the token host when absent.
    pub audience: Option<String>,
    /// Base of console links; derived from `api_url` when absent.
    pub console_url: Option<String>,
    /// Per-tenant override of `connector.poll_interval`.
    pub poll_interval: Option<DurationValue>,
    /// Per-tenant override of `connector.page_size`.
    pub page_size: Option<u32>,
    /// Per-tenant override of `connector.feeds`.
    #[serde(default, deserialize_with = "opt_list")]
    pub feeds: Option<Vec<String>>,
    /// Requests per second for this tenant's credential.
    pub rate_limit: Option<f64>,
    /// Per-tenant override of `connector.request_timeout`.
    pub request_timeout: Option<DurationValue>,
    /// Permits `http://` and non-Wiz hosts (simulators, tests); logged as a warning.
    #[serde(default)]
    pub allow_insecure_endpoints: bool,
    /// The bearer token Wiz's automation rule sends with its webhook hints (a literal or
    /// `${ENV_VAR}`). Without it the tenant takes no hints.
    pub webhook_token: Option<SecretString>,
    /// Alternative to `webhook_token`: a file holding it.
    pub webhook_token_file: Option<PathBuf>,
    /// Let the SOC resolve, reject, reopen and annotate this tenant's issues through the admin
    /// API (the service account then needs write access to issues). Off by default.
    #[serde(default)]
    pub write_back: bool,
    /// Free-form string labels (`customer = "acme"`), matched by routes and filled into sink
    /// templates (`{label.customer}`).
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// This tenant's own destinations: a list of sink names (in the main file), or, in the
    /// tenant's own file in `tenants_dir`, `[sinks.<name>]` tables: sinks of this tenant alone.
    #[serde(default)]
    pub sinks: Option<TenantSinks>,
    /// A separate service account for writes; without it the read credential writes.
    pub write_client_id: Option<String>,
    /// Its secret (literal or `${ENV_VAR}`).
    pub write_client_secret: Option<SecretString>,
    /// Alternative to `write_client_secret`: a file holding it.
    pub write_client_secret_file: Option<PathBuf>,
}

/// `[routes.<name>]`: a shared destination for a subset of the fleet. A tenant is routed when
/// it matches `tenants` (when given) and every label in `labels` (when given).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// The sinks this route sends to (shared sinks, not a tenant's own).
    #[serde(deserialize_with = "status_list")]
    pub sinks: Vec<String>,
    /// Tenant ids or globs (`*` any run of characters, `?` one character).
    #[serde(default, deserialize_with = "opt_list")]
    pub tenants: Option<Vec<String>>,
    /// Labels a tenant must all have, with these values.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// The feeds it takes (default: all).
    #[serde(default, deserialize_with = "opt_list")]
    pub feeds: Option<Vec<String>>,
    /// The lowest normalized severity it takes: `info`, `low`, `medium` or `high`.
    #[serde(default)]
    pub min_severity: Option<String>,
}

/// `tenants.<id>.sinks`: names of sinks (a list, or `"a,b"` from an environment variable), or
/// the `[sinks.<name>]` tables of a tenant's own file.
#[derive(Debug, Clone)]
pub enum TenantSinks {
    Names(Vec<String>),
    Own(BTreeMap<String, crate::sink::SinkSection>),
}

impl<'de> Deserialize<'de> for TenantSinks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TenantSinks;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "a list of sink names, or [sinks.<name>] tables in the tenant's own file",
                )
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<TenantSinks, E> {
                Ok(TenantSinks::Names(
                    s.split(',')
                        .map(|p| p.trim().to_string())
                        .filter(|p| !p.is_empty())
                        .collect(),
                ))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                a: A,
            ) -> Result<TenantSinks, A::Error> {
                Vec::<String>::deserialize(serde::de::value::SeqAccessDeserializer::new(a))
                    .map(TenantSinks::Names)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                a: A,
            ) -> Result<TenantSinks, A::Error> {
                BTreeMap::<String, crate::sink::SinkSection>::deserialize(
                    serde::de::value::MapAccessDeserializer::new(a),
                )
                .map(TenantSinks::Own)
            }
        }
        d.deserialize_any(V)
    }
}

/// [`status_list`] for an optional key.
fn opt_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    status_list(d).map(Some)
}

/// Statuses as a TOML list, or as `"OPEN,IN_PROGRESS"` (how an environment variable carries a list).
fn status_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<String>),
        One(String),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::Many(v) => v,
        OneOrMany::One(s) => s
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect(),
    })
}
