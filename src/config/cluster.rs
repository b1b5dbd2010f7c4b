//! `[cluster]`: cluster mode (several replicas share one fleet over NATS JetStream). The table as
//! users write it, its checks and its resolved settings live here, next to each other, and report
//! into the shared problem list like every other section.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::DurationValue;

/// `[cluster]` as written. Its presence turns cluster mode on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// The NATS server (with JetStream) that holds membership and state: `nats://host:4222` or
    /// `tls://...`. Required.
    pub nats_url: Option<String>,
    /// This replica's name, unique in the cluster; defaults to the host name (a Kubernetes pod's
    /// name), so replicas of one Deployment need no per-pod configuration.
    pub replica_id: Option<String>,
    /// How often this replica renews its membership key.
    pub heartbeat: DurationValue,
    /// A replica whose key has not changed for this long is dead, and its tenants move.
    pub failover_after: DurationValue,
    /// The JetStream key-value bucket of the members.
    pub members_bucket: String,
    /// The JetStream stream that holds every tenant's state (checkpoint, known issues), one
    /// subject per tenant.
    pub state_stream: String,
    /// Replicas of the bucket and the stream in a NATS cluster (1 for a single server; 3 is the
    /// usual choice for a NATS cluster of 3).
    pub replicas: usize,
    /// A cold start (no other live replica has placed yet) waits this long before its first
    /// placement, so that replicas started together (each reading the configuration first, which
    /// takes seconds for a large fleet) place over each other instead of the first one up taking
    /// the whole fleet and handing most of it back. A replica joining a running cluster places
    /// after one heartbeat. Set it to how far apart your replicas come up.
    pub start_settle: DurationValue,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            nats_url: None,
            replica_id: None,
            heartbeat: DurationValue::secs(2),
            failover_after: DurationValue::secs(10),
            members_bucket: "wiz_connector_members".to_string(),
            state_stream: "WIZ_CONNECTOR_STATE".to_string(),
            replicas: 1,
            start_settle: DurationValue::secs(10),
        }
    }
}

/// Resolved `[cluster]`: what a replica runs with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterSettings {
    pub nats_url: String,
    pub replica_id: String,
    pub heartbeat: DurationValue,
    pub failover_after: DurationValue,
    pub members_bucket: String,
    pub state_stream: String,
    pub replicas: usize,
    pub start_settle: DurationValue,
}

/// Longest `start_settle` accepted: a cold start is not ready before it ends.
const MAX_START_SETTLE: Duration = Duration::from_secs(300);

/// Shortest heartbeat accepted: below it the renewals alone load the server.
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);

/// A replica id (and a NATS KV key): letters, digits, `_`, `-` and `.`, 1..=64 characters.
pub fn valid_replica_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !id.starts_with('.')
        && !id.ends_with('.')
}

/// A JetStream stream or bucket name: no spaces, dots, `*`, `>` or path separators.
fn valid_stream_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// The host name, the default replica id.
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "replica".to_string())
}

/// Checks `[cluster]`; `report(key, message)` collects problems.
pub fn resolve_cluster(
    s: &ClusterSection,
    mut report: impl FnMut(&str, String),
) -> Option<ClusterSettings> {
    let nats_url = match s.nats_url.as_deref().map(str::trim) {
        // Credentials in the URL would be shown wherever the URL is (logs, `validate`, errors).
        Some(u)
            if u.split("://")
                .nth(1)
                .is_some_and(|rest| rest.split('/').next().unwrap_or("").contains('@')) =>
        {
            report(
                "cluster.nats_url",
                "must not carry credentials (user:password@ or token@): NATS authentication other than TLS is not supported yet".into(),
            );
            None
        }
        Some(u) if u.starts_with("nats://") || u.starts_with("tls://") => Some(u.to_string()),
        Some(u) => {
            report(
                "cluster.nats_url",
                format!("{u:?} is not a NATS URL such as \"nats://127.0.0.1:4222\""),
            );
            None
        }
        None => {
            report(
                "cluster.nats_url",
                "is required in cluster mode (the NATS server with JetStream that holds membership and state)".into(),
            );
            None
        }
    };
    let replica_id = s
        .replica_id
        .clone()
        .unwrap_or_else(host_name)
        .trim()
        .to_string();
    if !valid_replica_id(&replica_id) {
        report(
            "cluster.replica_id",
            format!("{replica_id:?} is not a valid replica id: use letters, digits, '_', '-' and '.' (1 to 64 characters)"),
        );
    }
    if s.heartbeat.0 < MIN_HEARTBEAT {
        report(
            "cluster.heartbeat",
            format!("must be at least 100ms, got {}", s.heartbeat),
        );
    }
    if s.failover_after.0 < s.heartbeat.0 * 3 {
        report(
            "cluster.failover_after",
            format!(
                "must be at least three heartbeats ({} x 3), got {}: a replica would be declared dead between two renewals",
                s.heartbeat, s.failover_after
            ),
        );
    }
    for (key, name) in [
        ("cluster.members_bucket", &s.members_bucket),
        ("cluster.state_stream", &s.state_stream),
    ] {
        if !valid_stream_name(name) {
            report(
                key,
                format!("{name:?} is not a valid JetStream name: use letters, digits, '_' and '-'"),
            );
        }
    }
    if !(1..=5).contains(&s.replicas) {
        report(
            "cluster.replicas",
            format!(
                "must be between 1 and 5 (JetStream's limit), got {}",
                s.replicas
            ),
        );
    }
    if s.start_settle.0 > MAX_START_SETTLE {
        report(
            "cluster.start_settle",
            format!(
                "must be at most 5m (a cold start is not ready before it ends), got {}",
                s.start_settle
            ),
        );
    }
    Some(ClusterSettings {
        nats_url: nats_url?,
        replica_id,
        heartbeat: s.heartbeat,
        failover_after: s.failover_after,
        members_bucket: s.members_bucket.clone(),
        state_stream: s.state_stream.clone(),
        replicas: s.replicas,
        start_settle: s.start_settle,
    })
}
