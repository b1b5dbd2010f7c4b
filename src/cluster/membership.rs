//! The membership loop of one replica: registers it in the members bucket, renews its key every
//! heartbeat (revision-checked), tracks the other members' keys (watched, and listed every
//! heartbeat), decides who is alive, and hands the live set to placement when it changes.
//!
//! While this replica cannot read the bucket (NATS unreachable) it changes nothing: it keeps the
//! tenants it owns and takes over nothing. When it can read again, every member gets a fresh
//! grace period, because silence seen through a broken link proves nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{ClusterStatus, ClusterView, MemberView};
use crate::config::ClusterSettings;
use crate::metrics::Observer;
use crate::reload::Reloader;
use crate::state::jetstream::LiveSet;

/// What a member publishes in its key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct MemberValue {
    /// Digest of the member's configured tenant set.
    pub digest: String,
    /// Shutting down: excluded from placement, still alive while it hands over.
    #[serde(default)]
    pub leaving: bool,
    /// Tenants it owns (its own count).
    #[serde(default)]
    pub owned: usize,
}

/// One member as tracked here.
#[derive(Debug, Clone)]
struct Seen {
    revision: u64,
    /// When its revision last changed, on this replica's clock.
    changed_at: Instant,
    value: MemberValue,
}

/// Opens the members bucket (creating it when missing).
pub async fn open_bucket(
    js: &async_nats::jetstream::Context,
    s: &ClusterSettings,
) -> Result<kv::Store, String> {
    if let Ok(store) = js.get_key_value(&s.members_bucket).await {
        return Ok(store);
    }
    // The bucket's stream, created as a KV bucket is (async-nats's `create_key_value` first
    // queries the account, whose answer from nats-server 2.9 it cannot read).
    let bucket = &s.members_bucket;
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        description: Some("wiz-connector cluster members".into()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        // Keys of dead replicas are removed eventually; liveness itself is decided from
        // revisions, not from this.
        max_age: (s.failover_after.0 * 6).max(Duration::from_secs(60)),
        storage: async_nats::jetstream::stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        num_replicas: s.replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| {
        format!("cannot create the members bucket {bucket} (is JetStream enabled on the server, `-js`?): {e}")
    })?;
    js.get_key_value(bucket)
        .await
        .map_err(|e| format!("cannot open the members bucket {bucket}: {e}"))
}

/// The running loop; [`Membership::leave`] stops it.
pub struct Membership {
    kv: kv::Store,
    replica: String,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Everything the loop works with.
pub struct LoopArgs {
    pub kv: kv::Store,
    pub settings: ClusterSettings,
    pub reloader: Reloader,
    pub view: Arc<ClusterView>,
    pub live: Arc<LiveSet>,
    pub observer: Observer,
    /// Set once the first placement is applied (`/readyz`).
    pub ready: Arc<AtomicBool>,
}

impl Membership {
    pub fn start(args: LoopArgs) -> Membership {
        let (stop, stopped) = watch::channel(false);
        let kv = args.kv.clone();
        let replica = args.settings.replica_id.clone();
        let task = tokio::spawn(run(args, stopped));
        Membership {
            kv,
            replica,
            stop,
            task,
        }
    }

    /// Stops the loop and marks this replica as leaving: the others stop placing tenants here
    /// and take them over as this replica releases them.
    pub async fn leave(&self, owned: usize, digest: String) {
        let _ = self.stop.send(true);
        let value = MemberValue {
            digest,
            leaving: true,
            owned,
        };
        let body = serde_json::to_vec(&value).expect("a member value serializes");
        if let Err(e) = tokio::time::timeout(
            Duration::from_secs(3),
            self.kv.put(&self.replica, body.into()),
        )
        .await
        .map_err(|_| "timed out".to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
        {
            tracing::warn!(error = %e, "could not announce that this replica is leaving; the others notice when its key goes stale");
        }
    }

    /// Removes this replica's key (after its tenants were released).
    pub async fn remove(self) {
        self.task.abort();
        let _ = tokio::time::timeout(Duration::from_secs(3), self.kv.delete(&self.replica)).await;
    }
}

async fn run(a: LoopArgs, mut stopped: watch::Receiver<bool>) {
    let me = a.settings.replica_id.clone();
    let heartbeat = a.settings.heartbeat.0;
    let failover = a.settings.failover_after.0;
    let mut members: BTreeMap<String, Seen> = BTreeMap::new();
    let mut my_revision: Option<u64> = None;
    let mut blind = false;
    let mut watcher: Option<kv::Watch> = None;
    let mut placed: Option<BTreeSet<String>> = None;
    let mut reported_mismatch: BTreeSet<String> = BTreeSet::new();
    let mut placed_at: Option<SystemTime> = None;
    let mut renew_failing = false;
    let mut last_listed: Option<Instant> = None;
    let started = Instant::now();
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut listed = false;
        tokio::select! {
            _ = tick.tick() => {
                let outcome = a.reloader.placement().await;
                let value = MemberValue { digest: outcome.digest, leaving: false, owned: outcome.owned };
                match renew(&a.kv, &me, &value, my_revision).await {
                    Ok(r) => {
                        if std::mem::take(&mut renew_failing) {
                            tracing::info!("membership renewed again");
                        }
                        my_revision = Some(r);
                    }
                    Err(e) => {
                        if !std::mem::replace(&mut renew_failing, true) {
                            tracing::warn!(error = %e, "could not renew this replica's membership; retrying every heartbeat");
                        }
                    }
                }
                listed = true;
            }
            entry = next(&mut watcher) => {
                match entry {
                    Some(e) => observe(&mut members, e),
                    None => watcher = None,
                }
            }
            _ = stopped.changed() => return,
        }
        if listed {
            match list(&a.kv).await {
                Ok(entries) => {
                    // Observation was interrupted (NATS away, or this process paused or slowed
                    // down): a member whose key seemed not to change meanwhile proves nothing.
                    if last_listed.is_some_and(|t: Instant| {
                        t.elapsed() > heartbeat * 2 + Duration::from_millis(500)
                    }) {
                        blind = true;
                    }
                    last_listed = Some(Instant::now());
                    // A key missing from a listing is not taken as gone: the server may have
                    // expired it, or the listing raced a renewal. Liveness comes from revisions
                    // (a member whose key stops changing is dead after `failover_after`); only a
                    // deletion seen on the watch removes a member at once.
                    for e in entries {
                        observe(&mut members, e);
                    }
                    if std::mem::take(&mut blind) {
                        // Nothing was seen for a while: that proves nobody dead.
                        let now = Instant::now();
                        for s in members.values_mut() {
                            s.changed_at = now;
                        }
                        tracing::info!(
                            "members bucket readable again; every member gets a fresh grace period"
                        );
                    }
                    if watcher.is_none() {
                        watcher = a.kv.watch_all().await.ok();
                    }
                }
                Err(e) => {
                    if !blind {
                        tracing::warn!(error = %e, "cannot read the members bucket; keeping the current tenants and taking over nothing until it is readable");
                    }
                    blind = true;
                }
            }
        }
        if blind {
            publish_status(&a, &members, None, &me, placed_at, &mut reported_mismatch).await;
            continue;
        }
        let now = Instant::now();
        let alive: BTreeSet<String> = members
            .iter()
            .filter(|(id, s)| **id == me || now.duration_since(s.changed_at) < failover)
            .map(|(id, _)| id.clone())
            .chain(std::iter::once(me.clone()))
            .collect();
        a.live.set(alive.clone());
        let eligible: BTreeSet<String> = alive
            .iter()
            .filter(|id| **id == me || !members.get(*id).is_some_and(|s| s.value.leaving))
            .cloned()
            .collect();
        // The first placement waits one heartbeat, so replicas started together see each other
        // before they place (fewer moves right after a cluster starts).
        let settled = placed.is_some() || now.duration_since(started) >= heartbeat;
        if settled && placed.as_ref() != Some(&eligible) {
            match a.reloader.place(eligible.clone()).await {
                Ok(o) => {
                    tracing::info!(
                        members = eligible.len(),
                        owned = o.owned,
                        acquired = o.acquired,
                        released = o.released,
                        "placement changed"
                    );
                    for _ in 0..o.acquired {
                        a.observer.metrics().cluster.handover(true);
                    }
                    for _ in 0..o.released {
                        a.observer.metrics().cluster.handover(false);
                    }
                    placed = Some(eligible);
                    placed_at = Some(SystemTime::now());
                    a.ready.store(true, Ordering::Release);
                }
                Err(e) => tracing::error!(error = %e, "placement could not be applied; retrying"),
            }
        }
        publish_status(
            &a,
            &members,
            Some(&alive),
            &me,
            placed_at,
            &mut reported_mismatch,
        )
        .await;
    }
}

async fn next(w: &mut Option<kv::Watch>) -> Option<kv::Entry> {
    match w {
        Some(w) => match w.next().await {
            Some(Ok(e)) => Some(e),
            _ => None,
        },
        None => std::future::pending().await,
    }
}

fn observe(members: &mut BTreeMap<String, Seen>, e: kv::Entry) {
    if e.operation != kv::Operation::Put {
        members.remove(&e.key);
        return;
    }
    let value: MemberValue = serde_json::from_slice(&e.value).unwrap_or_default();
    match members.get_mut(&e.key) {
        Some(s) if s.revision == e.revision => {}
        Some(s) if s.revision > e.revision => {}
        Some(s) => {
            s.revision = e.revision;
            s.changed_at = Instant::now();
            s.value = value;
        }
        None => {
            members.insert(
                e.key,
                Seen {
                    revision: e.revision,
                    changed_at: Instant::now(),
                    value,
                },
            );
        }
    }
}

/// Every key's current entry.
async fn list(store: &kv::Store) -> Result<Vec<kv::Entry>, String> {
    let listing = async {
        let mut keys = store.keys().await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(|e| e.to_string())?;
            if let Some(e) = store.entry(k).await.map_err(|e| e.to_string())? {
                out.push(e);
            }
        }
        Ok::<_, String>(out)
    };
    tokio::time::timeout(Duration::from_secs(5), listing)
        .await
        .map_err(|_| "timed out listing the members".to_string())?
}

/// Renews this replica's key (creating it when missing). Returns the new revision.
async fn renew(
    store: &kv::Store,
    me: &str,
    value: &MemberValue,
    revision: Option<u64>,
) -> Result<u64, String> {
    let body: bytes::Bytes = serde_json::to_vec(value)
        .expect("a member value serializes")
        .into();
    let attempt = async {
        if let Some(rev) = revision {
            match store.update(me, body.clone(), rev).await {
                Ok(r) => return Ok(r),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        // First registration, or the key changed under us (expired while we were away, or a
        // previous run of this replica): take the current revision.
        match store.entry(me).await.map_err(|e| e.to_string())? {
            Some(e) if e.operation == kv::Operation::Put => store
                .update(me, body.clone(), e.revision)
                .await
                .map_err(|e| e.to_string()),
            _ => store
                .create(me, body.clone())
                .await
                .map_err(|e| e.to_string()),
        }
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .map_err(|_| "timed out".to_string())?
}

async fn publish_status(
    a: &LoopArgs,
    members: &BTreeMap<String, Seen>,
    alive: Option<&BTreeSet<String>>,
    me: &str,
    placed_at: Option<SystemTime>,
    reported: &mut BTreeSet<String>,
) {
    let outcome = a.reloader.placement().await;
    let now = Instant::now();
    let mut views = Vec::new();
    let mut mismatch = BTreeSet::new();
    for (id, s) in members {
        if alive.is_some_and(|l| !l.contains(id)) {
            continue;
        }
        let matches = s.value.digest == outcome.digest;
        if !matches {
            mismatch.insert(id.clone());
        }
        views.push(MemberView {
            id: id.clone(),
            tenants: outcome.per_member.get(id).copied().unwrap_or(0),
            leaving: s.value.leaving,
            config_digest: s.value.digest.clone(),
            config_matches: matches,
            seconds_since_heartbeat: now.duration_since(s.changed_at).as_secs_f64(),
        });
    }
    if !members.contains_key(me) {
        views.push(MemberView {
            id: me.to_string(),
            tenants: outcome.per_member.get(me).copied().unwrap_or(0),
            leaving: false,
            config_digest: outcome.digest.clone(),
            config_matches: true,
            seconds_since_heartbeat: 0.0,
        });
    }
    for id in mismatch.difference(reported) {
        tracing::error!(member = %id, "replica {id} reads a different tenant set than this one (its config digest differs): the replicas must read the same configuration, or some tenants go unpolled or are polled twice");
    }
    *reported = mismatch.clone();
    a.observer
        .metrics()
        .cluster
        .set_membership(views.len(), outcome.owned, mismatch.len());
    a.view.set(ClusterStatus {
        replica: me.to_string(),
        members: views,
        // Read live by `ClusterView::status`.
        nats_connected: false,
        config_digest: outcome.digest,
        owned: outcome.owned,
        configured: outcome.configured,
        placed_at,
        config_mismatch: mismatch.into_iter().collect(),
    });
}
