//! Resolved settings: what the running connector uses. Built from [`ConfigFile`] by [`resolve`],
//! which applies defaults, reads secrets, parses URLs and checks every limit.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Serialize, Serializer};
use url::Url;

use super::error::{ConfigError, Problem};
use super::redact::{redact, redact_opt};
use super::source::{EnvSource, Origins};
use super::types::{ConfigFile, TenantSection};
use super::DurationValue;
pub use crate::sink::{SinkKind, SinkSpec};

/// The Issue statuses Wiz knows.
pub const VALID_STATUSES: [&str; 4] = ["OPEN", "IN_PROGRESS", "RESOLVED", "REJECTED"];

/// Longest request timeout accepted: Wiz's gateway cuts requests at about 115 s.
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(115);

/// Highest `rate_limit` accepted; far above anything Wiz allows, it only catches typos.
pub const MAX_RATE_LIMIT: f64 = 100.0;

/// Shortest poll interval accepted.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The whole resolved configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// The main configuration file it was loaded from.
    pub config_path: PathBuf,
    pub connector: ConnectorSettings,
    pub admin: AdminSettings,
    pub sinks: Vec<SinkSpec>,
    /// Routes resolved into each tenant's destinations; `None`: no routes and no tenant
    /// `sinks`, so every sink receives every event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing: Option<Arc<crate::sink::routing::Routing>>,
    /// In id order.
    pub tenants: Vec<Arc<TenantSpec>>,
    pub telemetry: TelemetrySettings,
    /// Cluster mode (`[cluster]`); `None`: one process with local state.
    pub cluster: Option<super::cluster::ClusterSettings>,
    /// The webhook receiver (`[hooks]`); `None`: no receiver.
    pub hooks: Option<super::hooks::HooksSettings>,
}

/// `[telemetry]`, parsed.
#[derive(Debug, Clone, Serialize)]
pub struct TelemetrySettings {
    pub otlp_endpoint: Option<Url>,
    pub service_name: String,
    pub metrics_interval: DurationValue,
    /// A poll-duration histogram per tenant besides the fleet-wide one (opt-in: 15 series each).
    pub per_tenant_histograms: bool,
}

/// Process-wide settings from `[connector]`.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectorSettings {
    pub state_dir: PathBuf,
    pub state_cache_mib: u64,
    pub shutdown_timeout: DurationValue,
    pub tenants_dir: Option<PathBuf>,
    pub max_concurrent_sweeps: u32,
    pub startup_jitter: DurationValue,
    pub restart: RestartPolicy,
    pub summary_interval: DurationValue,
    pub watch_interval: DurationValue,
}

/// How the supervisor restarts crashed tenants.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RestartPolicy {
    /// More crashes than this within `period` park the tenant as failed.
    pub intensity: u32,
    pub period: DurationValue,
    pub backoff_initial: DurationValue,
    pub backoff_max: DurationValue,
    pub failed_cooldown: DurationValue,
}

/// `[admin]`, parsed.
#[derive(Debug, Clone, Serialize)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    /// The tokens the admin API takes (none: it is open, which only a loopback address allows).
    pub tokens: Vec<AdminToken>,
}

impl AdminSettings {
    /// True when the admin API requires a token.
    pub fn guarded(&self) -> bool {
        !self.tokens.is_empty()
    }
}

/// What an admin token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// GET routes only (dashboards, `status`).
    Read,
    /// Also `POST` routes: reloads, polls on demand, write-back actions.
    Write,
}

/// One admin token: its name (who asked, in the audit trail) and permission.
#[derive(Debug, Clone, Serialize)]
pub struct AdminToken {
    pub name: String,
    #[serde(serialize_with = "redact")]
    pub token: SecretString,
    pub permission: Permission,
}

/// The credential a tenant writes with (`write_back`).
#[derive(Debug, Clone, Serialize)]
pub struct WriteCredential {
    pub client_id: String,
    #[serde(serialize_with = "redact")]
    pub client_secret: SecretString,
}

/// Which Wiz cloud a tenant lives in; decides console links and default token host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cloud {
    /// `*.wiz.io` (commercial, including AWS GovCloud).
    Commercial,
    /// `*.wiz.us` (FedRAMP).
    Fedramp,
}

/// Where a client secret came from; shown by `validate` instead of the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Literal,
    Env(String),
    File(PathBuf),
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Literal => f.write_str("[REDACTED] (literal in the config)"),
            SecretSource::Env(v) => write!(f, "[REDACTED] (from ${{{v}}})"),
            SecretSource::File(p) => write!(f, "[REDACTED] (from file {})", p.display()),
        }
    }
}

/// Retry policy for transient Wiz failures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub initial_backoff: DurationValue,
    pub max_backoff: DurationValue,
}

/// Everything one tenant needs to talk to Wiz. Equality compares the secret too, explicitly, so a
/// reload can tell a rotated secret from an unchanged one.
#[derive(Debug, Clone, Serialize)]
pub struct TenantSpec {
    pub id: String,
    /// The file that defined this tenant.
    pub origin: String,
    pub client_id: String,
    #[serde(serialize_with = "redact")]
    pub client_secret: SecretString,
    #[serde(serialize_with = "display", rename = "client_secret_source")]
    pub secret_source: SecretSource,
    pub api_url: Url,
    pub auth_url: Url,
    pub audience: String,
    pub cloud: Cloud,
    /// Console base, e.g. `https://app.wiz.io`.
    pub console_url: Url,
    pub poll_interval: DurationValue,
    pub page_size: u32,
    pub statuses: Vec<String>,
    pub rate_limit: f64,
    pub request_timeout: DurationValue,
    pub max_pages_per_sweep: u32,
    pub retry: RetryPolicy,
    pub allow_insecure_endpoints: bool,
    pub full_sweep_interval: DurationValue,
    /// Sweep fully on every poll while the last full sweep took at most this many pages.
    pub full_sweep_max_pages: u32,
    pub incremental_overlap: DurationValue,
    /// How far back each feed's first window reaches (feeds not listed: no bound).
    pub initial_lookback: Vec<(crate::feeds::FeedName, DurationValue)>,
    /// The bearer token of this tenant's webhook hints; `None`: hints for it are refused.
    /// Changing it needs no restart of the tenant (the receiver reads it from the configuration).
    #[serde(serialize_with = "redact_opt")]
    pub webhook_token: Option<SecretString>,
    /// Write-back is on for this tenant.
    pub write_back: bool,
    /// The feeds this tenant collects, in the order a poll runs them (Issues first).
    pub feeds: Vec<crate::feeds::FeedName>,
    /// A separate credential for writes (`None`: the read credential writes).
    pub write_credential: Option<WriteCredential>,
}

impl TenantSpec {
    /// The key of the credential's shared rate limiter: tenants using one service account at one
    /// token host share one budget.
    pub fn credential_key(&self) -> String {
        format!("{}|{}", self.auth_url, self.client_id)
    }

    /// True when both specs hold the same secret. Compared explicitly: secrets have no `PartialEq`.
    pub fn same_secret(&self, other: &TenantSpec) -> bool {
        self.client_secret.expose_secret() == other.client_secret.expose_secret()
    }
}

/// How a sink type's `resolve` reports problems and reads secrets: through the checker, with
/// keys under `sinks.<name>`.
struct SinkProblems<'c, 'o> {
    c: &'c mut Checker<'o>,
    env: &'c EnvSource,
    name: &'c str,
    /// The tenant whose own file defines the sink (its problems name that file).
    owner: Option<&'c str>,
}

impl crate::sink::SinkChecks for SinkProblems<'_, '_> {
    fn error(&mut self, key: &str, message: String) {
        let key = format!("sinks.{}.{key}", self.name);
        match self.owner {
            Some(id) => self.c.tenant(id, &key, message),
            None => self.c.global(&key, message),
        }
    }

    fn secret(
        &mut self,
        value: Option<&SecretString>,
        file: Option<&PathBuf>,
        keys: (&'static str, &'static str),
    ) -> Option<SecretString> {
        match secret_value(value, file, keys, self.env) {
            Ok(v) => v.map(|(s, _)| s),
            Err((k, m)) => {
                self.error(k, m);
                None
            }
        }
    }
}

fn display<T: fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Collects problems while resolving, so the user sees all of them at once.
struct Checker<'a> {
    origins: &'a Origins,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn global(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            origin: self.origins.of(key),
            tenant: None,
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn tenant(&mut self, id: &str, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            origin: self.origins.of_tenant(id, key),
            tenant: Some(id.to_string()),
            key: key.to_string(),
            message: message.into(),
        });
    }
}

/// True for a valid tenant or sink id: `[a-z0-9_-]`, 1..=64 characters.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Shortest accepted webhook token.
const MIN_WEBHOOK_TOKEN: usize = 16;

/// Turns the layered file into settings, or reports every problem.
pub(super) fn resolve(
    file: &ConfigFile,
    origins: &Origins,
    env: &EnvSource,
    config_path: PathBuf,
) -> Result<Settings, ConfigError> {
    let mut c = Checker {
        origins,
        problems: Vec::new(),
    };
    let conn = &file.connector;

    let (statuses, feeds) = check_connector(&mut c, conn);
    let (listen, tokens) = resolve_admin(&mut c, file, env);
    let otlp_endpoint = resolve_telemetry(&mut c, file);
    let cluster = file.cluster.as_ref().and_then(|section| {
        super::cluster::resolve_cluster(section, |key, message| c.global(key, message))
    });
    let hooks = file.hooks.as_ref().and_then(|section| {
        super::hooks::resolve_hooks(section, |key, message| c.global(key, message))
    });

    let sinks = resolve_sinks(&mut c, file, env);

    let retry = RetryPolicy {
        max_retries: conn.max_retries,
        initial_backoff: conn.retry_initial_backoff,
        max_backoff: conn.retry_max_backoff,
    };
    let mut tenants = Vec::with_capacity(file.tenants.len());
    for (id, t) in &file.tenants {
        if !valid_id(id) {
            c.tenant(
                id,
                "(tenant id)",
                "tenant ids use only a-z, 0-9, '_' and '-' (1 to 64 characters)",
            );
            continue;
        }
        if let Some(spec) = resolve_tenant(&mut c, id, t, conn, &statuses, &feeds, retry, env) {
            tenants.push(Arc::new(spec));
        }
    }

    let routing = resolve_routing(&mut c, file, &sinks);

    if !c.problems.is_empty() {
        return Err(ConfigError {
            problems: c.problems,
        });
    }
    Ok(Settings {
        config_path,
        connector: ConnectorSettings {
            state_dir: conn.state_dir.clone(),
            state_cache_mib: conn.state_cache_mib,
            shutdown_timeout: conn.shutdown_timeout,
            tenants_dir: conn.tenants_dir.clone(),
            max_concurrent_sweeps: conn.max_concurrent_sweeps,
            startup_jitter: conn.startup_jitter,
            restart: RestartPolicy {
                intensity: conn.restart_intensity,
                period: conn.restart_period,
                backoff_initial: conn.restart_backoff_initial,
                backoff_max: conn.restart_backoff_max,
                failed_cooldown: conn.failed_cooldown,
            },
            summary_interval: conn.summary_interval,
            watch_interval: conn.watch_interval,
        },
        admin: AdminSettings {
            listen: listen.expect("checked above"),
            tokens,
        },
        sinks,
        routing,
        tenants,
        telemetry: TelemetrySettings {
            otlp_endpoint,
            service_name: file.telemetry.service_name.trim().to_string(),
            metrics_interval: file.telemetry.metrics_interval,
            per_tenant_histograms: file.telemetry.per_tenant_histograms,
        },
        cluster,
        hooks,
    })
}

/// Checks `[connector]`: every key with a rule of its own, the watched statuses and the feeds.
fn check_connector(
    c: &mut Checker<'_>,
    conn: &super::types::ConnectorSection,
) -> (Vec<String>, Vec<crate::feeds::FeedName>) {
    PAGE_SIZE.check_global(c, conn.page_size);
    POLL_INTERVAL.check_global(c, conn.poll_interval);
    if conn.shutdown_timeout.0.is_zero() {
        c.global("connector.shutdown_timeout", "must be greater than zero");
    }
    REQUEST_TIMEOUT.check_global(c, conn.request_timeout);
    RATE_LIMIT.check_global(c, conn.rate_limit);
    if conn.max_pages_per_sweep == 0 {
        c.global("connector.max_pages_per_sweep", "must be at least 1");
    }
    if conn.retry_initial_backoff.0.is_zero() {
        c.global(
            "connector.retry_initial_backoff",
            "must be greater than zero",
        );
    }
    if conn.retry_max_backoff.0 < conn.retry_initial_backoff.0 {
        c.global(
            "connector.retry_max_backoff",
            "must not be shorter than connector.retry_initial_backoff",
        );
    }
    let mut statuses = Vec::new();
    for s in &conn.statuses {
        let up = s.trim().to_ascii_uppercase();
        if !VALID_STATUSES.contains(&up.as_str()) {
            c.global(
                "connector.statuses",
                format!(
                    "unknown status {s:?}; use any of {}",
                    VALID_STATUSES.join(", ")
                ),
            );
        } else if !statuses.contains(&up) {
            statuses.push(up);
        }
    }
    if !(16..=65_536).contains(&conn.state_cache_mib) {
        c.global(
            "connector.state_cache_mib",
            format!(
                "must be between 16 and 65536 (MiB), got {}",
                conn.state_cache_mib
            ),
        );
    }
    if conn.full_sweep_interval.0 < Duration::from_secs(1) {
        c.global("connector.full_sweep_interval", "must be at least 1s");
    }
    if conn.max_concurrent_sweeps == 0 {
        c.global("connector.max_concurrent_sweeps", "must be at least 1");
    }
    if conn.restart_period.0.is_zero() {
        c.global("connector.restart_period", "must be greater than zero");
    }
    if conn.restart_backoff_initial.0.is_zero() {
        c.global(
            "connector.restart_backoff_initial",
            "must be greater than zero",
        );
    }
    if conn.restart_backoff_max.0 < conn.restart_backoff_initial.0 {
        c.global(
            "connector.restart_backoff_max",
            "must not be shorter than connector.restart_backoff_initial",
        );
    }
    if conn.summary_interval.0 < Duration::from_secs(1) {
        c.global("connector.summary_interval", "must be at least 1s");
    }
    let feeds = parse_feeds(&conn.feeds, |m| c.global("connector.feeds", m));
    if conn.statuses.is_empty() {
        c.global(
            "connector.statuses",
            "must name at least one status, e.g. [\"OPEN\"]",
        );
    }
    for (feed, d) in &conn.initial_lookback {
        let key = format!("connector.initial_lookback.{feed}");
        match crate::feeds::FeedName::parse(feed) {
            Some(crate::feeds::FeedName::Issues) => c.global(
                &key,
                "Issues has no first window: its first poll is a full sweep of the watched statuses",
            ),
            Some(_) if d.0 < Duration::from_secs(60) => c.global(&key, "must be at least 1m"),
            Some(_) => {}
            None => c.global(
                &key,
                format!(
                    "unknown feed {feed:?}; use vulnerabilities, detections, audit or cloud_configuration"
                ),
            ),
        }
    }
    (statuses, feeds)
}

/// `[admin]`: the listen address and the named tokens (a token is required off loopback).
fn resolve_admin(
    c: &mut Checker<'_>,
    file: &ConfigFile,
    env: &EnvSource,
) -> (Option<SocketAddr>, Vec<AdminToken>) {
    let listen = match file.admin.listen.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            c.global(
                "admin.listen",
                format!(
                    "{:?} is not an address such as \"127.0.0.1:8686\"",
                    file.admin.listen
                ),
            );
            None
        }
    };

    let token = match secret_value(
        file.admin.token.as_ref(),
        file.admin.token_file.as_ref(),
        ("admin.token", "admin.token_file"),
        env,
    ) {
        Ok(t) => t,
        Err((key, message)) => {
            c.global(key, message);
            None
        }
    };
    let mut tokens: Vec<AdminToken> = Vec::new();
    if let Some((t, _)) = &token {
        tokens.push(AdminToken {
            name: "admin".into(),
            token: t.clone(),
            permission: Permission::Write,
        });
    }
    for (name, t) in &file.admin.tokens {
        let key = format!("admin.tokens.{name}");
        if !valid_id(name) {
            c.global(
                &key,
                "token names use only a-z, 0-9, '_' and '-' (1 to 64 characters)",
            );
            continue;
        }
        if token.is_some() && name == "admin" {
            c.global(
                &key,
                "the name `admin` is taken by admin.token; choose another name",
            );
            continue;
        }
        let permission = match t.permission.as_str() {
            "read" => Permission::Read,
            "write" => Permission::Write,
            other => {
                c.global(
                    &format!("{key}.permission"),
                    format!("{other:?} is not a permission: use \"read\" or \"write\""),
                );
                continue;
            }
        };
        match secret_value(
            t.token.as_ref(),
            t.token_file.as_ref(),
            ("token", "token_file"),
            env,
        ) {
            Ok(Some((secret, _))) => tokens.push(AdminToken {
                name: name.clone(),
                token: secret,
                permission,
            }),
            Ok(None) => c.global(
                &format!("{key}.token"),
                "is required: a literal, \"${ENV_VAR}\", or token_file = \"/path\"",
            ),
            Err((k, message)) => c.global(&format!("{key}.{k}"), message),
        }
    }
    for (i, a) in tokens.iter().enumerate() {
        if tokens[..i]
            .iter()
            .any(|b| b.token.expose_secret() == a.token.expose_secret())
        {
            c.global(
                &format!("admin.tokens.{}", a.name),
                "has the same token as another admin token: give each its own, so the audit trail can tell who asked",
            );
        }
    }
    if let Some(addr) = listen {
        if !addr.ip().is_loopback() && tokens.is_empty() {
            c.global(
                "admin.token",
                format!("admin.listen {addr} is not a loopback address: set admin.token (or admin.token_file) so the admin API requires a bearer token"),
            );
        }
    }
    (listen, tokens)
}

/// `[telemetry]`: the collector's URL, when export is on.
fn resolve_telemetry(c: &mut Checker<'_>, file: &ConfigFile) -> Option<Url> {
    let otlp_endpoint = match &file.telemetry.otlp_endpoint {
        None => None,
        Some(raw) => match Url::parse(raw.trim()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Some(u),
            _ => {
                c.global(
                    "telemetry.otlp_endpoint",
                    format!("{raw:?} is not an http(s) URL such as \"http://localhost:4318\""),
                );
                None
            }
        },
    };
    if file.telemetry.metrics_interval.0 < Duration::from_secs(1) {
        c.global("telemetry.metrics_interval", "must be at least 1s");
    }
    if file.telemetry.service_name.trim().is_empty() {
        c.global("telemetry.service_name", "must not be empty");
    }
    otlp_endpoint
}

/// `[sinks.*]` and the sinks of tenants' own files, each resolved by its type.
fn resolve_sinks(c: &mut Checker<'_>, file: &ConfigFile, env: &EnvSource) -> Vec<SinkSpec> {
    let mut sinks = Vec::new();
    for (name, s) in &file.sinks {
        if !valid_id(name) {
            c.global(
                &format!("sinks.{name}"),
                "sink names use only a-z, 0-9, '_' and '-' (1 to 64 characters)",
            );
        }
        let mut checks = SinkProblems {
            c,
            env,
            name,
            owner: None,
        };
        sinks.extend(s.resolve(name, None, &mut checks));
    }
    // Sinks defined in a tenant's own file: that tenant's alone. Names are unique across the
    // configuration, so a route or another tenant naming one is told whose it is.
    for (id, t) in &file.tenants {
        let Some(super::types::TenantSinks::Own(own)) = &t.sinks else {
            continue;
        };
        for (name, section) in own {
            let key = format!("sinks.{name}");
            if !valid_id(name) {
                c.tenant(
                    id,
                    &key,
                    "sink names use only a-z, 0-9, '_' and '-' (1 to 64 characters)",
                );
            }
            if let Some(other) = sinks.iter().find(|x: &&SinkSpec| &x.name == name) {
                let whose = match &other.owner {
                    Some(o) => format!("in tenant `{o}`'s file"),
                    None => "in [sinks]".to_string(),
                };
                c.tenant(
                    id,
                    &key,
                    format!("a sink named `{name}` is already defined {whose}: sink names are unique across the configuration"),
                );
                continue;
            }
            let mut checks = SinkProblems {
                c,
                env,
                name,
                owner: Some(id),
            };
            sinks.extend(section.resolve(name, Some(id), &mut checks));
        }
    }
    sinks
}

/// Routes, resolved once into each tenant's destinations; sink templates checked against the
/// tenants whose events reach them. `None`: no routes, no tenant `sinks` and no labels.
fn resolve_routing(
    c: &mut Checker<'_>,
    file: &ConfigFile,
    sinks: &[SinkSpec],
) -> Option<Arc<crate::sink::routing::Routing>> {
    // Routes: resolved once into each tenant's destinations; sink templates checked against the
    // tenants whose events reach them.
    let ids: Vec<&str> = file
        .tenants
        .keys()
        .map(String::as_str)
        .filter(|id| valid_id(id))
        .collect();
    let mut route_problem = |at: super::routes::At<'_>, message: String| match at {
        super::routes::At::Global(key) => c.global(&key, message),
        super::routes::At::Tenant(id, key) => c.tenant(id, &key, message),
    };
    let routing = if super::routes::routed(file) {
        Some(Arc::new(super::routes::resolve(
            file,
            sinks,
            &ids,
            &mut route_problem,
        )))
    } else {
        super::routes::labels_only(file, &ids).map(Arc::new)
    };
    super::routes::check_templates(file, sinks, routing.as_deref(), &ids, &mut route_problem);
    routing
}

/// A key set in `[connector]` that a tenant may override: one rule checks both, the global
/// value as `connector.<key>` and a tenant's own as `tenants.<id>.<key>` (same text), so the
/// two can never disagree.
struct Overridable<T> {
    key: &'static str,
    /// `Err(why)` for a value the key does not take.
    rule: fn(T) -> Result<(), String>,
}

impl<T: Copy> Overridable<T> {
    fn check_global(&self, c: &mut Checker<'_>, value: T) {
        if let Err(m) = (self.rule)(value) {
            c.global(&format!("connector.{}", self.key), m);
        }
    }

    /// The tenant's value: its own (checked), or the global one (checked once, globally).
    fn resolve(&self, c: &mut Checker<'_>, id: &str, global: T, own: Option<T>) -> T {
        match own {
            Some(v) => {
                if let Err(m) = (self.rule)(v) {
                    c.tenant(id, self.key, m);
                }
                v
            }
            None => global,
        }
    }
}

const PAGE_SIZE: Overridable<u32> = Overridable {
    key: "page_size",
    rule: |n| {
        if (1..=500).contains(&n) {
            Ok(())
        } else {
            Err(format!(
                "must be between 1 and 500 (Wiz's maximum), got {n}"
            ))
        }
    },
};

const POLL_INTERVAL: Overridable<DurationValue> = Overridable {
    key: "poll_interval",
    rule: |d| {
        if d.0 < MIN_POLL_INTERVAL {
            Err("must be at least 1s".into())
        } else {
            Ok(())
        }
    },
};

const REQUEST_TIMEOUT: Overridable<DurationValue> = Overridable {
    key: "request_timeout",
    rule: |t| {
        if t.0 < Duration::from_secs(1) || t.0 > MAX_REQUEST_TIMEOUT {
            Err(format!(
                "must be between 1s and 115s (Wiz's gateway limit), got {t}"
            ))
        } else {
            Ok(())
        }
    },
};

const RATE_LIMIT: Overridable<f64> = Overridable {
    key: "rate_limit",
    rule: |r| {
        if r.is_finite() && r > 0.0 && r <= MAX_RATE_LIMIT {
            Ok(())
        } else {
            Err(format!(
                "must be a number of requests per second above 0 and at most {MAX_RATE_LIMIT}, got {r}"
            ))
        }
    },
};

#[allow(clippy::too_many_arguments)]
fn resolve_tenant(
    c: &mut Checker<'_>,
    id: &str,
    t: &TenantSection,
    conn: &super::types::ConnectorSection,
    statuses: &[String],
    feeds: &[crate::feeds::FeedName],
    retry: RetryPolicy,
    env: &EnvSource,
) -> Option<TenantSpec> {
    let before = c.problems.len();
    let client_id = match t.client_id.as_deref().map(str::trim) {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => {
            c.tenant(
                id,
                "client_id",
                "is required: the Wiz service account's client id",
            );
            String::new()
        }
    };
    let secret = resolve_secret(c, id, t, env);
    let webhook_token = match secret_value(
        t.webhook_token.as_ref(),
        t.webhook_token_file.as_ref(),
        ("webhook_token", "webhook_token_file"),
        env,
    ) {
        Ok(Some((token, _))) if token.expose_secret().len() < MIN_WEBHOOK_TOKEN => {
            c.tenant(
                id,
                "webhook_token",
                format!("must be at least {MIN_WEBHOOK_TOKEN} characters: it guards an endpoint Wiz reaches from outside (generate one with `openssl rand -hex 32`)"),
            );
            None
        }
        Ok(v) => v.map(|(token, _)| token),
        Err((key, message)) => {
            c.tenant(id, key, message);
            None
        }
    };

    let write_credential = match (
        t.write_client_id.as_deref().map(str::trim),
        secret_value(
            t.write_client_secret.as_ref(),
            t.write_client_secret_file.as_ref(),
            ("write_client_secret", "write_client_secret_file"),
            env,
        ),
    ) {
        (None, Ok(None)) => None,
        (Some(id), Ok(Some((secret, _)))) if !id.is_empty() => Some(WriteCredential {
            client_id: id.to_string(),
            client_secret: secret,
        }),
        (_, Err((key, message))) => {
            c.tenant(id, key, message);
            None
        }
        (Some(_), Ok(None)) => {
            c.tenant(id, "write_client_secret", "is required with write_client_id (a literal, \"${ENV_VAR}\", or write_client_secret_file)");
            None
        }
        (_, Ok(Some(_))) => {
            c.tenant(
                id,
                "write_client_id",
                "is required with write_client_secret",
            );
            None
        }
    };
    if write_credential.is_some() && !t.write_back {
        c.tenant(
            id,
            "write_client_id",
            "is set but write_back is off; set write_back = true or remove it",
        );
    }
    let insecure = t.allow_insecure_endpoints;
    let api_url = match &t.api_url {
        None => {
            c.tenant(
                id,
                "api_url",
                "is required: copy it from the Wiz console (Settings → Tenant → API Endpoint), e.g. https://api.us20.app.wiz.io/graphql",
            );
            None
        }
        Some(raw) => check_endpoint(raw, insecure)
            .map_err(|m| c.tenant(id, "api_url", m))
            .ok(),
    };
    let cloud = match api_url.as_ref().and_then(|u| u.host_str()) {
        Some(h) if h == "wiz.us" || h.ends_with(".wiz.us") => Cloud::Fedramp,
        _ => Cloud::Commercial,
    };
    let auth_url = match &t.auth_url {
        Some(raw) => check_endpoint(raw, insecure)
            .map_err(|m| c.tenant(id, "auth_url", m))
            .ok(),
        None => Some(
            Url::parse(match cloud {
                Cloud::Commercial => "https://auth.app.wiz.io/oauth/token",
                Cloud::Fedramp => "https://auth.app.wiz.us/oauth/token",
            })
            .expect("constant URL"),
        ),
    };
    let audience = match &t.audience {
        Some(a) if a.trim().is_empty() => {
            c.tenant(
                id,
                "audience",
                "must not be empty; remove it to derive it from auth_url",
            );
            String::new()
        }
        Some(a) => a.trim().to_string(),
        None => auth_url.as_ref().map(derive_audience).unwrap_or_default(),
    };
    let console_url = match &t.console_url {
        Some(raw) => check_endpoint(raw, insecure)
            .map_err(|m| c.tenant(id, "console_url", m))
            .ok(),
        None => Some(
            Url::parse(match cloud {
                Cloud::Commercial => "https://app.wiz.io",
                Cloud::Fedramp => "https://app.wiz.us",
            })
            .expect("constant URL"),
        ),
    };

    let poll_interval = POLL_INTERVAL.resolve(c, id, conn.poll_interval, t.poll_interval);
    let page_size = PAGE_SIZE.resolve(c, id, conn.page_size, t.page_size);
    let rate_limit = RATE_LIMIT.resolve(c, id, conn.rate_limit, t.rate_limit);
    let request_timeout = REQUEST_TIMEOUT.resolve(c, id, conn.request_timeout, t.request_timeout);

    let feeds = match &t.feeds {
        Some(list) => parse_feeds(list, |m| c.tenant(id, "feeds", m)),
        None => feeds.to_vec(),
    };
    if c.problems.len() != before {
        return None;
    }
    let (client_secret, secret_source) = secret?;
    Some(TenantSpec {
        id: id.to_string(),
        origin: c.origins.tenant_file(id),
        client_id,
        client_secret,
        secret_source,
        api_url: api_url?,
        auth_url: auth_url?,
        audience,
        cloud,
        console_url: console_url?,
        poll_interval,
        page_size,
        statuses: statuses.to_vec(),
        rate_limit,
        request_timeout,
        max_pages_per_sweep: conn.max_pages_per_sweep,
        retry,
        allow_insecure_endpoints: insecure,
        full_sweep_interval: conn.full_sweep_interval,
        full_sweep_max_pages: conn.full_sweep_max_pages,
        incremental_overlap: conn.incremental_overlap,
        initial_lookback: initial_lookback(conn),
        webhook_token,
        write_back: t.write_back,
        write_credential,
        feeds,
    })
}

/// Feed names, checked: known, at least one; duplicates dropped; in the order a poll runs them.
fn parse_feeds(list: &[String], mut problem: impl FnMut(String)) -> Vec<crate::feeds::FeedName> {
    use crate::feeds::FeedName;
    let mut out = Vec::new();
    for name in list {
        match FeedName::parse(name.trim()) {
            Some(f) if !out.contains(&f) => out.push(f),
            Some(_) => {}
            None => problem(format!(
                "unknown feed {name:?}; use any of {}",
                FeedName::ALL.map(FeedName::as_str).join(", ")
            )),
        }
    }
    if list.is_empty() {
        problem("must name at least one feed, e.g. [\"issues\", \"detections\"]".into());
    }
    out.sort();
    out
}

fn resolve_secret(
    c: &mut Checker<'_>,
    id: &str,
    t: &TenantSection,
    env: &EnvSource,
) -> Option<(SecretString, SecretSource)> {
    match secret_value(
        t.client_secret.as_ref(),
        t.client_secret_file.as_ref(),
        ("client_secret", "client_secret_file"),
        env,
    ) {
        Ok(Some(s)) => Some(s),
        Ok(None) => {
            c.tenant(
                id,
                "client_secret",
                "is required: a literal, \"${ENV_VAR}\", or client_secret_file = \"/path\"",
            );
            None
        }
        Err((key, message)) => {
            c.tenant(id, key, message);
            None
        }
    }
}

/// Reads a secret given as a literal, `${ENV_VAR}`, or a file (`keys` = the two key names, for
/// messages). `Ok(None)` when neither is set; `Err((key, message))` when it cannot be read.
fn secret_value(
    value: Option<&SecretString>,
    file: Option<&PathBuf>,
    keys: (&'static str, &'static str),
    env: &EnvSource,
) -> Result<Option<(SecretString, SecretSource)>, (&'static str, String)> {
    let (key, file_key) = keys;
    match (value, file) {
        (Some(_), Some(_)) => Err((
            file_key,
            format!("set either {key} or {file_key}, not both"),
        )),
        (None, None) => Ok(None),
        (Some(s), None) => {
            let raw = s.expose_secret().trim();
            if let Some(var) = raw.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
                let var = var.trim();
                match env.var(var) {
                    Some(v) if !v.trim().is_empty() => Ok(Some((
                        SecretString::from(v.trim().to_string()),
                        SecretSource::Env(var.to_string()),
                    ))),
                    Some(_) => Err((key, format!("environment variable {var} is empty"))),
                    None => Err((
                        key,
                        format!(
                            "environment variable {var} is not set; export it or use {file_key}"
                        ),
                    )),
                }
            } else if raw.is_empty() {
                Err((key, "must not be empty".into()))
            } else {
                Ok(Some((
                    SecretString::from(raw.to_string()),
                    SecretSource::Literal,
                )))
            }
        }
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(s) if !s.trim().is_empty() => Ok(Some((
                SecretString::from(s.trim().to_string()),
                SecretSource::File(path.clone()),
            ))),
            Ok(_) => Err((file_key, format!("{} is empty", path.display()))),
            Err(e) => Err((file_key, format!("cannot read {}: {e}", path.display()))),
        },
    }
}

/// Wiz's legacy Auth0 token hosts want `beyond-api`; today's hosts want `wiz-api`.
pub fn derive_audience(auth_url: &Url) -> String {
    match auth_url.host_str() {
        Some("auth.wiz.io" | "auth0.gov.wiz.io" | "auth0.test.wiz.io") => "beyond-api",
        _ => "wiz-api",
    }
    .to_string()
}

/// Accepts `https://` URLs on Wiz hosts, or anything http(s) when `insecure`.
pub fn check_endpoint(raw: &str, insecure: bool) -> Result<Url, String> {
    let url = Url::parse(raw.trim()).map_err(|e| format!("{raw:?} is not a URL ({e})"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "must not carry credentials in the URL; use client_id and client_secret".into(),
        );
    }
    let host = url
        .host_str()
        .ok_or_else(|| format!("{raw:?} has no host"))?
        .to_ascii_lowercase();
    match url.scheme() {
        "https" => {}
        "http" if insecure => {}
        "http" => {
            return Err(format!(
                "{raw:?} is not https; Wiz endpoints are https (set allow_insecure_endpoints = true only for a simulator or test endpoint)"
            ))
        }
        other => return Err(format!("{raw:?}: unsupported scheme {other:?}, use https")),
    }
    let wiz_host = ["wiz.io", "wiz.us"]
        .iter()
        .any(|d| host == *d || host.ends_with(&format!(".{d}")));
    if !wiz_host && !insecure {
        return Err(format!(
            "{host} is not a Wiz host (*.wiz.io or *.wiz.us); set allow_insecure_endpoints = true only for a simulator or test endpoint"
        ));
    }
    Ok(url)
}

/// `connector.initial_lookback`, checked (in `check_connector`) and resolved.
fn initial_lookback(
    conn: &super::types::ConnectorSection,
) -> Vec<(crate::feeds::FeedName, DurationValue)> {
    conn.initial_lookback
        .iter()
        .filter_map(|(f, d)| Some((crate::feeds::FeedName::parse(f)?, *d)))
        .collect()
}
