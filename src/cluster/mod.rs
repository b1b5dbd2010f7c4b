//! Cluster mode: several replicas share one tenant fleet over NATS JetStream.
//!
//! - **Membership** ([`membership`]): each replica keeps a key in a JetStream KV bucket, renewed
//!   every `heartbeat` with a revision-checked update by a heartbeat on its own thread and NATS
//!   connection. A replica whose key has not changed for `failover_after` of observed silence
//!   (measured on the observer's clock, so clock skew between hosts does not matter) is dead.
//!   The bucket is listed every heartbeat (nats-server 2.9/2.10 tells watchers nothing when a key
//!   expires).
//! - **Lease** ([`lease`]): each successful renewal extends this replica's lease, shorter than
//!   `failover_after`; its tenants poll and deliver only while it holds, so a replica cut off from
//!   NATS stops before anyone may take its tenants over.
//! - **Placement** ([`placement`]): a pure function of the live members and the configured
//!   tenants (rendezvous hashing by credential). The heartbeat hands the members over a watch
//!   channel to the placement task of [`crate::reload::Reloader`], which turns the owned set into
//!   the same add/remove diff a reload applies: the supervisor has one way of starting and
//!   stopping tenants.
//! - **State** moves with the tenant through the JetStream backend of the state store
//!   ([`crate::state::jetstream`]), fenced by subject sequence.

pub mod lease;
pub mod membership;
pub mod placement;

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::ClusterSettings;
use crate::state::jetstream::{LiveSet, Replicated};
use lease::{Lease, LeaseView};

/// A replica's connection to the cluster: the NATS client, the replicated state backend, its
/// lease, and the views the heartbeat keeps up to date.
pub struct Connected {
    /// The NATS connection of state and hints (the heartbeat has its own).
    pub client: async_nats::Client,
    pub replicated: Arc<Replicated>,
    pub live: Arc<LiveSet>,
    pub lease: Arc<Lease>,
    pub view: Arc<ClusterView>,
    /// This run of the replica (see [`membership::MemberValue::incarnation`]).
    pub incarnation: u64,
}

/// How long connecting to NATS at start may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to NATS and opens the members bucket and the state stream. A NATS that cannot be
/// reached fails the start with the reason (after that, NATS may come and go: see
/// [`membership`]).
pub async fn connect(s: &ClusterSettings) -> Result<Connected, String> {
    let url = &s.nats_url;
    let client = tokio::time::timeout(
        CONNECT_TIMEOUT,
        async_nats::ConnectOptions::new()
            .name(format!("wiz-connector {}", s.replica_id))
            .connect(url.as_str()),
    )
    .await
    .map_err(|_| {
        format!(
            "cluster.nats_url: cannot reach NATS at {url} within {}s",
            CONNECT_TIMEOUT.as_secs()
        )
    })?
    .map_err(|e| format!("cluster.nats_url: cannot connect to NATS at {url}: {e}"))?;
    let version = client.server_info().version;
    if let Some(warning) = nats_version_warning(&version, s.replicas) {
        tracing::warn!(nats_version = %version, replicas = s.replicas, "{warning}");
    }
    let js = async_nats::jetstream::new(client.clone());
    // Opened (created when missing) here, so a start without JetStream fails with the reason.
    membership::open_bucket(&js, s).await?;
    let live = Arc::new(LiveSet::default());
    let lease = Arc::new(Lease::new(Lease::duration_for(
        s.heartbeat.0,
        s.failover_after.0,
    )));
    let incarnation = membership::new_incarnation();
    let replicated = Replicated::open(
        client.clone(),
        &s.state_stream,
        s.replicas,
        &s.replica_id,
        incarnation,
        live.clone(),
        lease.clone(),
    )
    .await?;
    Ok(Connected {
        client: client.clone(),
        view: Arc::new(ClusterView::new(&s.replica_id, client, lease.clone())),
        replicated: Arc::new(replicated),
        live,
        lease,
        incarnation,
    })
}

/// Why `replicas` > 1 is unsafe on nats-server `version`, if it is. The expected-last-subject-
/// sequence check of a publish is what fences a tenant's state to its owner; on a clustered
/// stream, 2.9.x did not serialize it (nats-server issue 4320: two concurrent writes with the
/// same expectation could both be accepted; tested broken on 2.9.15 to 2.9.20, fixed by PR 4319),
/// and the check of a first write (expected sequence 0) was not applied on clustered streams
/// until August 2024 (issue 5644, PR 5794). A single server (`replicas` 1) enforces both. A
/// version that cannot be read gives no warning.
pub fn nats_version_warning(version: &str, replicas: usize) -> Option<String> {
    if replicas <= 1 {
        return None;
    }
    let mut parts = version.trim_start_matches('v').split(['.', '-']);
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    ((major, minor) < (2, 10)).then(|| {
        format!(
            "cluster.replicas = {replicas} on nats-server {version}: clustered streams of 2.9.x do not reliably enforce the expected-sequence checks that fence each tenant's state to its owner (nats-server issues 4320 and 5644), so two replicas could both write a tenant's state during a failover; upgrade NATS to a current 2.10 or later, or use replicas = 1"
        )
    })
}

/// One member as this replica sees it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MemberView {
    pub id: String,
    /// Tenants this member owns by this replica's view of placement.
    pub tenants: usize,
    /// The member is shutting down and handing its tenants over.
    pub leaving: bool,
    /// The digest of the member's configured tenant set.
    pub config_digest: String,
    /// False when its tenant set differs from this replica's: the two poll different fleets.
    pub config_matches: bool,
    /// Seconds since its key last changed, as seen here.
    pub seconds_since_heartbeat: f64,
}

/// What `/cluster` shows; written by the membership loop.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ClusterStatus {
    pub replica: String,
    pub members: Vec<MemberView>,
    /// Whether this replica can reach NATS now (asked at every read).
    pub nats_connected: bool,
    /// This replica's lease (read at every read): its tenants poll and deliver only while it
    /// holds.
    pub lease: Option<LeaseView>,
    /// This replica's digest of its configured tenant set.
    pub config_digest: String,
    /// Tenants this replica owns.
    pub owned: usize,
    /// Configured tenants (all replicas together own each once).
    pub configured: usize,
    /// Tenants whose full settings this replica keeps (see [`placement::PlaceOutcome`]).
    pub settings_held: usize,
    /// When placement last changed here.
    #[serde(serialize_with = "opt_time")]
    pub placed_at: Option<SystemTime>,
    /// Members whose configuration differs from this one's.
    pub config_mismatch: Vec<String>,
    /// The format this replica writes state in: `compact` once every live member reads it,
    /// `json` (the first format) while one does not (see `state::codec::Format`).
    pub state_format: &'static str,
}

fn opt_time<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.collect_str(&humantime::format_rfc3339_millis(*t)),
        None => s.serialize_none(),
    }
}

/// The shared, readable-at-any-time view of the cluster.
#[derive(Debug)]
pub struct ClusterView {
    status: RwLock<ClusterStatus>,
    /// Asked at every read: the loop's last status may be older than a reconnection.
    client: async_nats::Client,
    lease: Arc<Lease>,
}

impl ClusterView {
    pub fn new(replica: &str, client: async_nats::Client, lease: Arc<Lease>) -> Self {
        ClusterView {
            status: RwLock::new(ClusterStatus {
                replica: replica.to_string(),
                ..Default::default()
            }),
            client,
            lease,
        }
    }

    pub fn status(&self) -> ClusterStatus {
        let mut s = self.status.read().expect("cluster view lock").clone();
        s.nats_connected =
            self.client.connection_state() == async_nats::connection::State::Connected;
        s.lease = Some(self.lease.view());
        s
    }

    pub(crate) fn set(&self, status: ClusterStatus) {
        *self.status.write().expect("cluster view lock") = status;
    }
}

#[cfg(test)]
mod version_tests {
    use super::nats_version_warning;

    #[test]
    fn clustered_streams_on_nats_2_9_are_warned_about() {
        let w = nats_version_warning("2.9.25", 3).unwrap();
        assert!(
            w.contains("cluster.replicas = 3 on nats-server 2.9.25"),
            "{w}"
        );
        assert!(w.contains("4320"), "{w}");
        assert!(nats_version_warning("v2.9.15", 2).is_some());
        assert!(nats_version_warning("2.8.4", 3).is_some());
        // A single replica, a newer server, or a version that cannot be read: nothing.
        assert_eq!(nats_version_warning("2.9.25", 1), None);
        assert_eq!(nats_version_warning("2.10.22", 3), None);
        assert_eq!(nats_version_warning("2.11.0-beta.1", 3), None);
        assert_eq!(nats_version_warning("unknown", 3), None);
    }
}
