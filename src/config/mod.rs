//! Configuration: the user-facing contract (`types`), how it is loaded and layered (`load`), and the
//! resolved, validated runtime settings the rest of the connector runs on (`settings`).
//!
//! The split follows a simple rule: `types` are data only and mirror the TOML a user writes (every
//! field optional where the user may omit it); `settings` are what a running component needs (URLs
//! parsed, secrets read, defaults applied, limits checked). Nothing outside this module sees `types`.

mod cluster;
mod diff;
mod duration;
mod error;
mod fleet;
mod hooks;
mod live;
mod load;
mod redact;
pub mod routes;
mod select;
mod settings;
mod source;
mod types;

pub use crate::sink::SinkSection;
pub use cluster::{host_name, ClusterSection, ClusterSettings};
pub use diff::{classify, diff, needs_restart, ConfigDiff, SinkSet, TenantChange};
pub use duration::DurationValue;
pub use error::{ConfigError, Problem};
pub use fleet::{Fleet, FleetEntry};
pub use hooks::{HooksSection, HooksSettings, DEFAULT_HINT_QUEUE_LIMIT};
pub use live::{live, LiveConfig, LivePublisher};
pub use load::{load, load_only, load_placed, load_str, EnvSource, Wanted, DEFAULT_CONFIG_PATH};
pub use redact::{redact, redact_opt};
pub use select::FileIndex;
pub use settings::{
    AdminSettings, AdminToken, Cloud, ConnectorSettings, Permission, RestartPolicy, RetryPolicy,
    SecretSource, Settings, SinkKind, SinkSpec, TelemetrySettings, TenantSpec, WriteCredential,
    VALID_STATUSES,
};
pub use types::{
    AdminSection, ConfigFile, ConnectorSection, RouteSection, TelemetrySection, TenantSection,
    TenantSinks,
};
