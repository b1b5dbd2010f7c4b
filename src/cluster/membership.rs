//! The heartbeat of one replica: registers it in the members bucket, renews its key every
//! heartbeat (revision-checked), which extends its [`Lease`], lists the other members' keys,
//! decides who is alive, and publishes the members placement should use.
//!
//! **Nothing can block it.** It runs on its own OS thread with its own single-threaded runtime
//! and its own NATS connection: a busy main runtime (a reload of many tenants, placement spawning
//! thousands of actors, state I/O, claim traffic on the main connection) cannot delay a renewal.
//! It reads what it announces (this replica's owned count and configuration digest) from a watch
//! channel the placement task writes, and hands the members to placement over another; it never
//! waits on either.
//!
//! **Liveness from observed time.** A member is dead when its key's revision has not changed for
//! `failover_after` of *observed* silence: each listing adds the time since the previous one, but
//! at most two heartbeats, and a key the listing holds twice only once. A renewal the bucket's
//! watch delivered before the listing that found it counts from when it arrived (so survivors
//! notice a death together, within milliseconds, not up to a heartbeat apart). A replica that
//! was paused, starved or cut off from NATS therefore never declares others dead from stale
//! timestamps (it has not observed them for that long), and one that merely runs late declares
//! them dead later, never sooner. A dead member stays dead: its
//! stale key (nats-server 2.9 does not report expired keys) is remembered with its revision and
//! ignored until it changes; after twice `failover_after` the member is forgotten.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::lease::Lease;
use super::placement::PlaceOutcome;
use super::{ClusterStatus, ClusterView, MemberView};
use crate::config::ClusterSettings;
use crate::metrics::Observer;
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
    /// The newest state format it reads: 0 (absent) for versions that read only the first
    /// format, [`READS_COMPACT`] for this one. State is written compact only when every live
    /// member reads it, so a rolling upgrade never leaves an older replica misreading state.
    #[serde(default)]
    pub state_format: u8,
    /// This run of the replica (milliseconds since 1970 at its start; 0 for versions that
    /// announce none), also written in its compact state messages: a claim waits for a holder
    /// only while the run that wrote is the one alive, so a replica restarted under the same id
    /// is not waited for to release what its previous run held.
    #[serde(default)]
    pub incarnation: u64,
    /// It has placed the fleet (made its first placement) in this run. A replica starting while
    /// no other member has placed is part of a cold start, and waits `start_settle` for the
    /// others before its first placement. Absent (versions that announce none): placed, as such
    /// a member is part of a running cluster.
    #[serde(default = "placed_when_absent")]
    pub placed: bool,
}

fn placed_when_absent() -> bool {
    true
}

/// A new incarnation for this run: milliseconds since 1970 (a restart takes longer than one).
pub fn new_incarnation() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_millis().max(1) as u64)
}

/// [`MemberValue::state_format`] of a replica that reads the compact state format.
pub const READS_COMPACT: u8 = 1;

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

/// One member as tracked here.
#[derive(Debug, Clone)]
struct Seen {
    revision: u64,
    /// Observed time since its revision last changed (see the module docs).
    silence: Duration,
    value: MemberValue,
    /// Listings since its revision last changed, and how many of them did not hold its key at
    /// all: logged when it is declared dead, to tell a member that stopped renewing from reads
    /// that did not see its renewals.
    silent_listings: u32,
    absent_listings: u32,
}

/// One key of a listing: its revision and value, or `None` for a deleted key.
pub type Listed = (String, u64, Option<MemberValue>);

/// Who is alive, decided from listings alone (pure; the heartbeat feeds it).
#[derive(Debug)]
pub struct Tracker {
    me: String,
    /// The most silence one listing may add.
    step_cap: Duration,
    failover: Duration,
    members: BTreeMap<String, Seen>,
    /// Members declared dead and forgotten, with the revision their stale key still has.
    forgotten: BTreeMap<String, u64>,
    last_listing: Option<Instant>,
    /// Renewals the members bucket's watch delivered since the last listing: the revision and
    /// when it arrived here (see [`Tracker::renewal_seen`]).
    watched: BTreeMap<String, (u64, Instant)>,
}

/// The outcome of one listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Liveness {
    /// Alive members, leaving ones and this replica included.
    pub alive: BTreeSet<String>,
    /// The members placement places over: alive and not leaving (this replica always).
    pub eligible: BTreeSet<String>,
    /// The listing came after a gap (a pause, a stall, NATS away): logged once.
    pub after_gap: bool,
    /// Every alive member reads the compact state format (see [`MemberValue::state_format`]).
    pub compact: bool,
    /// Another alive member has placed the fleet (see [`MemberValue::placed`]): the cluster
    /// runs, and this replica joins it rather than starting it.
    pub others_placed: bool,
}

impl Tracker {
    pub fn new(me: &str, heartbeat: Duration, failover: Duration) -> Tracker {
        Tracker {
            me: me.to_string(),
            step_cap: heartbeat * 2,
            failover,
            members: BTreeMap::new(),
            forgotten: BTreeMap::new(),
            last_listing: None,
            watched: BTreeMap::new(),
        }
    }

    /// The members bucket's watch delivered `revision` of `id`'s key at `at`. When the next
    /// listing finds that revision new, the member's silence starts from `at` instead of from
    /// the listing: a survivor then counts a dead member's silence from the moment its last
    /// renewal reached it, not from a listing up to a heartbeat later (at 300,000 tenants the
    /// nine survivors of a kill -9 noticed it up to 1 s apart, by when each first listed the
    /// last renewal). Still observed time on this replica's clock: `at` is never before the
    /// renewal was written, so a member is never found dead sooner than `failover_after` after
    /// its last renewal, and what a listing credits is capped like any step.
    pub fn renewal_seen(&mut self, id: &str, revision: u64, at: Instant) {
        match self.watched.get(id) {
            Some((r, _)) if *r >= revision => {}
            _ => {
                self.watched.insert(id.to_string(), (revision, at));
            }
        }
    }

    /// Takes a complete listing made at `now`.
    pub fn listing(&mut self, entries: Vec<Listed>, now: Instant) -> Liveness {
        let elapsed = self
            .last_listing
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        let step = elapsed.min(self.step_cap);
        let after_gap = elapsed > self.step_cap;
        self.last_listing = Some(now);
        let mut listed = BTreeSet::new();
        for (id, revision, value) in entries {
            // A key listed twice (renewed while the listing ran) adds its silence once.
            let again = !listed.insert(id.clone());
            let Some(value) = value else {
                // Deleted: the member left after handing its tenants over.
                if let Some(s) = self.members.remove(&id) {
                    if !s.value.leaving && s.silence < self.failover {
                        // A quick shutdown deletes the key before anyone read its `leaving`;
                        // a member that comes back a moment later was not gone (a read that
                        // missed its renewals): this line tells the two apart in a log.
                        tracing::info!(member = %id, revision, last_revision = s.revision, "a member's key was deleted before this replica saw it leave; it counts as gone until its key is written again");
                    }
                }
                self.forgotten.remove(&id);
                continue;
            };
            if self.forgotten.get(&id) == Some(&revision) {
                continue;
            }
            self.forgotten.remove(&id);
            // Any other revision is a change: a lower one means the bucket was made again (NATS
            // restarted without its store) and the member registered anew.
            match self.members.get_mut(&id) {
                Some(s) if revision != s.revision => {
                    s.revision = revision;
                    // Silent since the watch delivered this revision, when it did (at most
                    // this listing's step); otherwise since now.
                    s.silence = match self.watched.get(&id) {
                        Some((r, at)) if *r == revision => {
                            now.saturating_duration_since(*at).min(step)
                        }
                        _ => Duration::ZERO,
                    };
                    s.value = value;
                    s.silent_listings = 0;
                    s.absent_listings = 0;
                }
                Some(_) if again => {}
                Some(s) => {
                    s.silence += step;
                    s.silent_listings += 1;
                }
                None => {
                    self.members.insert(
                        id,
                        Seen {
                            revision,
                            silence: Duration::ZERO,
                            value,
                            silent_listings: 0,
                            absent_listings: 0,
                        },
                    );
                }
            }
        }
        // A watched renewal this listing did not reach yet waits for the next one.
        let members = &self.members;
        self.watched
            .retain(|id, (r, _)| members.get(id).is_some_and(|s| *r > s.revision));
        // Keys gone from the listing (expired) are silent too.
        for (id, s) in self.members.iter_mut() {
            if !listed.contains(id) {
                s.silence += step;
                s.silent_listings += 1;
                s.absent_listings += 1;
            }
        }
        // Dead long enough: forgotten, and its stale key ignored until it changes.
        let forget_after = self.failover * 2;
        let me = self.me.clone();
        let gone: Vec<String> = self
            .members
            .iter()
            .filter(|(id, s)| **id != me && s.silence >= forget_after)
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            if let Some(s) = self.members.remove(&id) {
                if listed.contains(&id) {
                    self.forgotten.insert(id, s.revision);
                }
            }
        }
        self.forgotten.retain(|id, _| listed.contains(id));
        let alive: BTreeSet<String> = self
            .members
            .iter()
            .filter(|(id, s)| **id == me || s.silence < self.failover)
            .map(|(id, _)| id.clone())
            .chain(std::iter::once(me.clone()))
            .collect();
        let eligible = alive
            .iter()
            .filter(|id| **id == me || !self.members.get(*id).is_some_and(|s| s.value.leaving))
            .cloned()
            .collect();
        let compact = alive.iter().all(|id| {
            *id == me
                || self
                    .members
                    .get(id)
                    .is_some_and(|s| s.value.state_format >= READS_COMPACT)
        });
        let others_placed = alive
            .iter()
            .any(|id| *id != me && self.members.get(id).is_some_and(|s| s.value.placed));
        Liveness {
            alive,
            eligible,
            after_gap,
            compact,
            others_placed,
        }
    }

    /// The incarnation each of `alive` announces (0 for none, or not listed yet).
    pub fn incarnations(&self, alive: &BTreeSet<String>) -> BTreeMap<String, u64> {
        alive
            .iter()
            .map(|id| {
                let inc = self.members.get(id).map_or(0, |s| s.value.incarnation);
                (id.clone(), inc)
            })
            .collect()
    }

    fn members(&self) -> &BTreeMap<String, Seen> {
        &self.members
    }

    /// How much more silence makes the first silent member dead, when that is less than
    /// `within` (the time to the next listing): the heartbeat lists again then instead of a
    /// whole heartbeat later. Silence is the sum of the observed gaps between listings, each a
    /// little under a heartbeat when a round is quicker than the one before, so a member may
    /// fall short of `failover_after` by a few milliseconds at a listing and be found dead only
    /// one heartbeat later (seen at 300,000 tenants: four of nine survivors noticed a kill -9 a
    /// second after the others, after 5.95 s of silence).
    pub fn next_death_in(&self, within: Duration) -> Option<Duration> {
        self.members
            .iter()
            .filter(|(id, s)| **id != self.me && s.silent_listings > 0 && s.silence < self.failover)
            .map(|(_, s)| self.failover - s.silence)
            .filter(|left| *left < within)
            .min()
    }
}

/// What the heartbeat is told by the process.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Control {
    /// Shutting down: announce it (and keep renewing while the tenants are handed over).
    leaving: bool,
    /// Stop, and delete this replica's key.
    stop: bool,
}

/// The running heartbeat; [`Membership::leave`] and [`Membership::remove`] end it.
pub struct Membership {
    control: watch::Sender<Control>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Everything the heartbeat works with.
pub struct HeartbeatArgs {
    pub settings: ClusterSettings,
    /// This run's incarnation, announced in the membership value.
    pub incarnation: u64,
    pub lease: Arc<Lease>,
    pub view: Arc<ClusterView>,
    pub live: Arc<LiveSet>,
    pub observer: Observer,
    /// This replica's last placement (owned count, digest), written by the placement task.
    pub outcome: watch::Receiver<PlaceOutcome>,
    /// The members placement should place over (alive, not leaving); `None` until the first
    /// decision.
    pub members: watch::Sender<Option<BTreeSet<String>>>,
}

impl Membership {
    /// Starts the heartbeat on its own thread. Fails only when the thread cannot be made.
    pub fn start(args: HeartbeatArgs) -> Result<Membership, String> {
        let (control, control_rx) = watch::channel(Control::default());
        let name = format!("heartbeat-{}", args.settings.replica_id);
        let thread = std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the heartbeat's runtime; this replica never holds a lease and polls nothing");
                        return;
                    }
                };
                rt.block_on(run(args, control_rx));
            })
            .map_err(|e| format!("cannot start the {name} thread: {e}"))?;
        Ok(Membership {
            control,
            thread: Some(thread),
        })
    }

    /// Marks this replica as leaving, at once: the others stop placing tenants here and take
    /// them over as they are released. The heartbeat goes on renewing (the lease must hold while
    /// the tenants finish their pages) until [`Membership::remove`].
    pub fn leave(&self) {
        self.control.send_modify(|c| c.leaving = true);
    }

    /// Stops the heartbeat and removes this replica's key (after its tenants were released).
    pub async fn remove(mut self) {
        self.control.send_modify(|c| c.stop = true);
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// Longest wait for one NATS request of the heartbeat.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

async fn connect(s: &ClusterSettings) -> Result<(async_nats::Client, kv::Store), String> {
    let client = async_nats::ConnectOptions::new()
        .name(format!("wiz-connector {} heartbeat", s.replica_id))
        .retry_on_initial_connect()
        .connect(s.nats_url.as_str())
        .await
        .map_err(|e| format!("cannot connect to NATS at {}: {e}", s.nats_url))?;
    let js = async_nats::jetstream::new(client.clone());
    Ok((client, open_bucket(&js, s).await?))
}

/// How long after a silent member's due time the early round lists (see
/// [`Tracker::next_death_in`]).
const EARLY_ROUND_SLACK: Duration = Duration::from_millis(5);

async fn run(a: HeartbeatArgs, mut control: watch::Receiver<Control>) {
    let me = a.settings.replica_id.clone();
    let heartbeat = a.settings.heartbeat.0;
    let timeout = REQUEST_TIMEOUT.min(a.lease.duration());
    let (client, mut kv) = loop {
        match tokio::time::timeout(REQUEST_TIMEOUT, connect(&a.settings)).await {
            Ok(Ok(connected)) => break connected,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the heartbeat cannot open the members bucket; retrying")
            }
            Err(_) => tracing::warn!("the heartbeat cannot reach NATS; retrying"),
        }
        if control.borrow().stop {
            return;
        }
        tokio::time::sleep(heartbeat).await;
    };
    let mut tracker = Tracker::new(&me, heartbeat, a.settings.failover_after.0);
    // The members' renewals as they happen (see `Tracker::renewal_seen`); a task of this
    // runtime, so it takes them while a round waits on NATS. It ends with the runtime.
    let (renewal_tx, mut renewals) = tokio::sync::mpsc::channel(RENEWALS_BUFFERED);
    tokio::spawn(watch_renewals(kv.clone(), heartbeat, renewal_tx));
    let mut my_revision: Option<u64> = None;
    // When the server stored each member's revision last read (see `list`).
    let mut written: BTreeMap<String, (u64, SystemTime)> = BTreeMap::new();
    // When the last renewal that succeeded was sent: a gap of more than two heartbeats between
    // two is logged (this thread did not run, or NATS did not answer, for that long).
    let mut last_renewal: Option<Instant> = None;
    let mut renew_failing = false;
    let mut list_failing = false;
    let mut decided = false;
    let mut was_held = false;
    let mut reported_mismatch = BTreeSet::new();
    let mut slow_rounds = false;
    let started = Instant::now();
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // An early round, when a silent member is due to be found dead before the next tick (see
    // `Tracker::next_death_in`).
    let mut early: Option<tokio::time::Instant> = None;
    loop {
        let early_at = early.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::time::sleep_until(early_at), if early.is_some() => {}
            changed = control.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        early = None;
        let c = *control.borrow_and_update();
        if c.stop {
            a.lease.revoke();
            let _ = tokio::time::timeout(timeout, kv.delete(&me)).await;
            return;
        }
        let outcome = a.outcome.borrow().clone();
        let value = MemberValue {
            digest: outcome.digest.clone(),
            leaving: c.leaving,
            owned: outcome.owned,
            state_format: READS_COMPACT,
            incarnation: a.incarnation,
            placed: outcome.placed_at.is_some(),
        };
        let sent = Instant::now();
        let epoch = a.lease.epoch();
        let mut renewed = false;
        match tokio::time::timeout(timeout, renew(&kv, &me, &value, my_revision)).await {
            Ok(Ok(r)) => {
                renewed = true;
                a.lease.renewed(sent);
                if let Some(gap) = last_renewal
                    .replace(sent)
                    .map(|t| sent.saturating_duration_since(t))
                    .filter(|g| *g > heartbeat * 2)
                {
                    tracing::warn!(
                        gap_ms = gap.as_millis() as u64,
                        heartbeat_ms = heartbeat.as_millis() as u64,
                        revision = r,
                        "this replica's membership was renewed after a gap: its heartbeat did not run or NATS did not answer for that long, and the others may have judged it dead"
                    );
                }
                if epoch > 0 && a.lease.epoch() > epoch {
                    tracing::warn!(epoch = a.lease.epoch(), "the lease is held again after a lapse; each tenant re-asserts its ownership before it polls or delivers");
                    a.observer.metrics().cluster.lease(true, true);
                }
                if std::mem::take(&mut renew_failing) {
                    tracing::info!("membership renewed again; the lease holds");
                }
                my_revision = Some(r);
            }
            failed => {
                let e = match failed {
                    Ok(Err(e)) => e,
                    _ => "timed out".to_string(),
                };
                if !std::mem::replace(&mut renew_failing, true) {
                    tracing::warn!(error = %e, lease_ms = a.lease.duration().as_millis() as u64, "could not renew this replica's membership; its tenants stop polling and delivering when the lease runs out, and resume after a renewal");
                }
                // The bucket may be gone (NATS restarted without its store): open it again,
                // making it when missing, once per heartbeat at most.
                my_revision = None;
                let js = async_nats::jetstream::new(client.clone());
                if let Ok(Ok(again)) =
                    tokio::time::timeout(timeout, open_bucket(&js, &a.settings)).await
                {
                    kv = again;
                }
            }
        }
        let renew_took = sent.elapsed();
        let known = tracker.members().keys().cloned().collect();
        let listing = match tokio::time::timeout(timeout, list(&kv, known, &mut written)).await {
            Ok(r) => r,
            Err(_) => Err("timed out listing the members".to_string()),
        };
        let round = sent.elapsed();
        a.observer.metrics().cluster.heartbeat_round(round);
        if round > heartbeat && !std::mem::replace(&mut slow_rounds, true) {
            tracing::warn!(
                round_ms = round.as_millis() as u64,
                renew_ms = renew_took.as_millis() as u64,
                list_ms = (round - renew_took).as_millis() as u64,
                heartbeat_ms = heartbeat.as_millis() as u64,
                "a heartbeat round took longer than the heartbeat: NATS answers slowly, and a dead replica is noticed later by as much"
            );
        } else if round <= heartbeat && std::mem::take(&mut slow_rounds) {
            tracing::info!(
                round_ms = round.as_millis() as u64,
                "heartbeat rounds are within the heartbeat again"
            );
        }
        let liveness = match listing {
            Ok(entries) => {
                if std::mem::take(&mut list_failing) {
                    tracing::info!("members bucket readable again");
                }
                while let Ok((id, revision, at)) = renewals.try_recv() {
                    tracker.renewal_seen(&id, revision, at);
                }
                if tracing::enabled!(tracing::Level::DEBUG) {
                    let revisions: Vec<String> = entries
                        .iter()
                        .map(|(id, rev, v)| {
                            format!("{id}:{rev}{}", if v.is_some() { "" } else { "(deleted)" })
                        })
                        .collect();
                    tracing::debug!(round_ms = sent.elapsed().as_millis() as u64, revisions = %revisions.join(" "), "members listed");
                }
                let l = tracker.listing(entries, Instant::now());
                // Worth a round of its own only when it saves about a tenth of a heartbeat or
                // more (listed a few milliseconds after the due time, so the silence has passed).
                if let Some(left) = tracker.next_death_in(heartbeat - heartbeat / 10) {
                    early = Some(tokio::time::Instant::now() + left + EARLY_ROUND_SLACK);
                }
                Some(l)
            }
            Err(e) => {
                if !std::mem::replace(&mut list_failing, true) {
                    tracing::warn!(error = %e, "cannot read the members bucket; placement is kept as it is until it is readable");
                }
                None
            }
        };
        if let Some(l) = &liveness {
            if l.after_gap {
                tracing::info!(
                    "members listed after a gap; silence is counted only while observed, so nobody is declared dead from it"
                );
            }
            a.live.set(tracker.incarnations(&l.alive), l.compact);
            // The first decision waits one heartbeat, so that members already running are seen;
            // in a cold start (no other member has placed) it waits `start_settle`, so replicas
            // started together see each other before they place (fewer moves right after a
            // cluster starts). A replica that could not renew its own key changes nothing: when
            // writes are refused everywhere (storage full, permissions) every key goes silent,
            // and each replica would otherwise place the whole fleet on itself.
            let settled = started.elapsed() >= heartbeat
                && (l.others_placed || started.elapsed() >= a.settings.start_settle.0);
            if renewed && (decided || settled) {
                decided = true;
                let eligible = Some(l.eligible.clone());
                let mut before = None;
                a.members.send_if_modified(|m| {
                    if *m == eligible {
                        false
                    } else {
                        before = Some(std::mem::replace(m, eligible));
                        true
                    }
                });
                if let Some(before) = before {
                    log_members_changed(
                        &tracker,
                        &written,
                        before.unwrap_or_default(),
                        &l.eligible,
                        round,
                    );
                }
            }
        }
        let held = a.lease.held();
        if was_held && !held {
            tracing::warn!(lease_ms = a.lease.duration().as_millis() as u64, "the lease ran out (no membership renewal within it): this replica's tenants stop polling and delivering until it is renewed");
        }
        was_held = held;
        a.observer.metrics().cluster.lease(held, false);
        publish_status(
            &a,
            &tracker,
            liveness.as_ref().map(|l| &l.alive),
            &me,
            &outcome,
            &mut reported_mismatch,
        );
    }
}

/// Renewals the watch may deliver between two listings before more are dropped (dropping one
/// only means that member's silence counts from the next listing, as without the watch).
const RENEWALS_BUFFERED: usize = 1024;

/// Sends each renewal of a member's key the members bucket's watch delivers, with the moment it
/// arrived, to the heartbeat (see [`Tracker::renewal_seen`]). Without the watch (it cannot be
/// made, or it broke: NATS restarted, the bucket was made again) liveness is judged from the
/// listings alone and a death is noticed up to a heartbeat later; the watch is made again a
/// heartbeat later. Ends when the heartbeat does.
pub async fn watch_renewals(
    store: kv::Store,
    heartbeat: Duration,
    renewals: tokio::sync::mpsc::Sender<(String, u64, Instant)>,
) {
    let mut failing = false;
    loop {
        let error = match tokio::time::timeout(REQUEST_TIMEOUT, store.watch_all()).await {
            Ok(Ok(mut watch)) => {
                if std::mem::take(&mut failing) {
                    tracing::info!("watching the members bucket again");
                }
                loop {
                    match watch.next().await {
                        Some(Ok(e)) => {
                            if e.operation != kv::Operation::Put {
                                continue;
                            }
                            match renewals.try_send((e.key, e.revision, Instant::now())) {
                                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
                                _ => continue,
                            }
                        }
                        Some(Err(e)) => break e.to_string(),
                        None => break "the watch ended".to_string(),
                    }
                }
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        };
        if renewals.is_closed() {
            return;
        }
        if !std::mem::replace(&mut failing, true) {
            tracing::warn!(error = %error, "cannot watch the members bucket; a dead member is noticed up to a heartbeat later until it can (trying again every heartbeat)");
        }
        tokio::time::sleep(heartbeat).await;
    }
}

/// One line per change of the members placement uses: who joined, who left and why (leaving,
/// or silent for how long, as observed here), and how long the heartbeat round took.
fn log_members_changed(
    tracker: &Tracker,
    written: &BTreeMap<String, (u64, SystemTime)>,
    before: BTreeSet<String>,
    now: &BTreeSet<String>,
    round: Duration,
) {
    let joined: Vec<&str> = now.difference(&before).map(String::as_str).collect();
    let left: Vec<String> = before
        .difference(now)
        .map(|id| match tracker.members().get(id) {
            Some(s) if s.value.leaving => format!("{id} (leaving)"),
            Some(s) => format!(
                "{id} (silent {:.1} s: {} listings at revision {}{}, absent from {})",
                s.silence.as_secs_f64(),
                s.silent_listings,
                s.revision,
                match written.get(id) {
                    Some((rev, at)) if *rev == s.revision =>
                        format!(" written {}", humantime::format_rfc3339_millis(*at)),
                    _ => String::new(),
                },
                s.absent_listings
            ),
            None => format!("{id} (gone)"),
        })
        .collect();
    tracing::info!(
        members = now.len(),
        joined = %joined.join(", "),
        left = %left.join(", "),
        round_ms = round.as_millis() as u64,
        "members changed"
    );
}

/// Every key's current entry, and for each `known` member the listing left out, its entry read
/// directly: deleted (a listing leaves deleted keys out), absent (expired), or present after
/// all. The listing is a consumer of each key's last message; a key renewed while it runs has
/// its old message removed and its new one may come after the listing ended, so the key is
/// missing from it. Two replicas whose heartbeats ran in step saw that every round: at 300,000
/// tenants a survivor judged a live member silent for 6 s four times in 30 s, and took over
/// 4,032 of its tenants each time.
///
/// A key the listing delivers twice (renewed while it ran) is read once: read twice, a member
/// whose revision did not change between the two reads would have its silence counted twice in
/// one listing. `written` gets, per key, when the server stored the revision read (for the log
/// line of a death only: that is the server's clock, never used to judge liveness).
async fn list(
    store: &kv::Store,
    known: Vec<String>,
    written: &mut BTreeMap<String, (u64, SystemTime)>,
) -> Result<Vec<Listed>, String> {
    written.clear();
    let mut keys = store.keys().await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut take = |e: kv::Entry, out: &mut Vec<Listed>| {
        let at = std::time::UNIX_EPOCH
            + Duration::from_nanos(u64::try_from(e.created.unix_timestamp_nanos()).unwrap_or(0));
        written.insert(e.key.clone(), (e.revision, at));
        out.push(listed(e));
    };
    while let Some(k) = keys.next().await {
        let k = k.map_err(|e| e.to_string())?;
        if !seen.insert(k.clone()) {
            continue;
        }
        if let Some(e) = store.entry(k).await.map_err(|e| e.to_string())? {
            take(e, &mut out);
        }
    }
    for id in known.into_iter().filter(|id| !seen.contains(id)) {
        if let Some(e) = store.entry(id).await.map_err(|e| e.to_string())? {
            take(e, &mut out);
        }
    }
    Ok(out)
}

fn listed(e: kv::Entry) -> Listed {
    let value = (e.operation == kv::Operation::Put)
        .then(|| serde_json::from_slice(&e.value).unwrap_or_default());
    (e.key, e.revision, value)
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
}

fn publish_status(
    a: &HeartbeatArgs,
    tracker: &Tracker,
    alive: Option<&BTreeSet<String>>,
    me: &str,
    outcome: &PlaceOutcome,
    reported: &mut BTreeSet<String>,
) {
    let mut views = Vec::new();
    let mut mismatch = BTreeSet::new();
    for (id, s) in tracker.members() {
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
            seconds_since_heartbeat: s.silence.as_secs_f64(),
        });
    }
    if !tracker.members().contains_key(me) {
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
        lease: None,
        config_digest: outcome.digest.clone(),
        owned: outcome.owned,
        configured: outcome.configured,
        settings_held: outcome.settings_held,
        placed_at: outcome.placed_at,
        config_mismatch: mismatch.into_iter().collect(),
        state_format: a.live.format().name(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(id: &str, revision: u64) -> Listed {
        (id.to_string(), revision, Some(MemberValue::default()))
    }

    fn ids(s: &BTreeSet<String>) -> Vec<&str> {
        s.iter().map(String::as_str).collect()
    }

    const HB: Duration = Duration::from_millis(250);
    const F: Duration = Duration::from_secs(2);

    #[test]
    fn a_member_whose_key_stops_changing_is_dead_after_failover_of_observed_silence() {
        let mut t = Tracker::new("me", HB, F);
        let t0 = Instant::now();
        let l = t.listing(vec![put("me", 1), put("b", 1)], t0);
        assert_eq!(ids(&l.alive), ["b", "me"]);
        // b renews twice, then stops.
        t.listing(vec![put("me", 2), put("b", 2)], t0 + HB);
        let mut now = t0 + HB;
        let mut rev = 2;
        let mut died_at = None;
        for _ in 0..12 {
            now += HB;
            rev += 1;
            let l = t.listing(vec![put("me", rev), put("b", 2)], now);
            if !l.alive.contains("b") && died_at.is_none() {
                died_at = Some(now);
            }
        }
        assert_eq!(
            died_at,
            Some(t0 + HB + F),
            "dead after exactly 2 s of silence"
        );
    }

    #[test]
    fn a_member_short_of_failover_by_a_hair_is_listed_again_when_due_not_a_heartbeat_later() {
        let mut t = Tracker::new("me", HB, F);
        let t0 = Instant::now();
        t.listing(vec![put("me", 1), put("b", 1)], t0);
        assert_eq!(t.next_death_in(HB), None, "nobody is silent");
        // b's last renewal, then listings a little quicker than the heartbeat: 8 x 245 ms is
        // 1.96 s of silence, 40 ms short of failover_after.
        t.listing(vec![put("me", 2), put("b", 2)], t0 + HB);
        let step = Duration::from_millis(245);
        let mut now = t0 + HB;
        for rev in 3..11 {
            now += step;
            let l = t.listing(vec![put("me", rev), put("b", 2)], now);
            assert!(l.alive.contains("b"));
        }
        assert_eq!(t.next_death_in(HB), Some(Duration::from_millis(40)));
        assert_eq!(
            t.next_death_in(Duration::from_millis(40)),
            None,
            "not sooner than the next listing anyway"
        );
        // Listed again when due: dead then.
        let l = t.listing(
            vec![put("me", 11), put("b", 2)],
            now + Duration::from_millis(40),
        );
        assert!(!l.alive.contains("b"));
        assert_eq!(t.next_death_in(HB), None, "already dead");
        // A member that renews is never due.
        let l = t.listing(vec![put("me", 12), put("b", 3)], now + HB);
        assert!(l.alive.contains("b"));
        assert_eq!(t.next_death_in(HB), None);
    }

    #[test]
    fn a_renewal_seen_by_the_watch_starts_the_silence_when_it_arrived_not_at_the_next_listing() {
        let ms = Duration::from_millis;
        let mut t = Tracker::new("me", HB, F);
        let t0 = Instant::now();
        t.listing(vec![put("me", 1), put("b", 1)], t0);
        // b's last renewal reaches the watch 50 ms after that listing; the next one finds it.
        t.renewal_seen("b", 2, t0 + ms(50));
        t.listing(vec![put("me", 2), put("b", 2)], t0 + HB);
        assert_eq!(t.members()["b"].silence, HB - ms(50));
        let mut now = t0 + HB;
        for rev in 3..10 {
            now += HB;
            let l = t.listing(vec![put("me", rev), put("b", 2)], now);
            assert!(l.alive.contains("b"), "alive at {:?}", now - t0);
        }
        // 1.95 s of silence at t0 + 2 s: due 50 ms later, which is failover_after after the
        // renewal arrived, not after the listing that found it (that would be t0 + 2.25 s).
        assert_eq!(t.next_death_in(HB), Some(ms(50)));
        let l = t.listing(vec![put("me", 10), put("b", 2)], t0 + ms(50) + F);
        assert!(!l.alive.contains("b"));

        // A watched revision the listing does not hold gives nothing: the silence starts at the
        // listing. One the listing has not reached yet waits for the listing that has it.
        let mut t = Tracker::new("me", HB, F);
        t.listing(vec![put("me", 1), put("c", 1)], t0);
        t.renewal_seen("c", 3, t0 + ms(100));
        t.listing(vec![put("me", 2), put("c", 2)], t0 + HB);
        assert_eq!(t.members()["c"].silence, Duration::ZERO);
        t.listing(vec![put("me", 3), put("c", 3)], t0 + HB * 2);
        assert_eq!(
            t.members()["c"].silence,
            HB,
            "revision 3 from when the watch saw it, but never more than the listing's step"
        );
        // An older revision seen later does not replace a newer one.
        t.renewal_seen("c", 5, t0 + HB * 2 + ms(100));
        t.renewal_seen("c", 4, t0 + HB * 2 + ms(10));
        t.listing(vec![put("me", 4), put("c", 5)], t0 + HB * 3);
        assert_eq!(t.members()["c"].silence, HB - ms(100));
        assert!(t.watched.is_empty(), "used or dropped once listed");
    }

    /// Random schedules of renewals, listings (gaps from 20 ms to a 3 s pause, keys sometimes
    /// delivered twice) and watch deliveries (late by up to 600 ms, some lost): a live member is
    /// never declared dead, and one that stopped renewing is declared dead no sooner than
    /// `failover_after` after its last renewal and within two heartbeats after that.
    #[test]
    fn random_schedules_never_declare_a_renewing_member_dead() {
        use rand::{Rng, SeedableRng};
        let ms = |n: u64| Duration::from_millis(n);
        for seed in 0..200u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let t0 = Instant::now();
            let mut t = Tracker::new("me", HB, F);
            // b renews every 150 ms to 1.8 s (just short of failover_after) throughout; c every
            // 150 to 300 ms, and stops after 3 to 6 s.
            let c_stops = t0 + ms(rng.random_range(3000..6000));
            let mut writes: Vec<(Instant, &str, u64)> = Vec::new();
            let mut rev = 0;
            for (id, until, longest) in [("b", t0 + ms(20_000), 1800), ("c", c_stops, 300)] {
                let mut at = t0;
                while at < until {
                    writes.push((at, id, 0));
                    at += ms(rng.random_range(150..=longest));
                }
            }
            writes.sort_by_key(|w| w.0);
            for w in writes.iter_mut() {
                rev += 1;
                w.2 = rev;
            }
            let c_last = writes.iter().rev().find(|w| w.1 == "c").unwrap();
            let (c_last, c_last_rev) = (c_last.0, c_last.2);
            // The listing that first held c's last revision, and how much of the time since
            // went uncounted (pauses count two heartbeats at most).
            let mut c_listed: Option<Instant> = None;
            let mut uncounted = Duration::ZERO;
            // Watch deliveries: each renewal arrives 0 to 600 ms late, one in ten never.
            let mut deliveries: Vec<(Instant, &str, u64)> = writes
                .iter()
                .filter_map(|w| {
                    let late = ms(rng.random_range(0..600));
                    (rng.random_range(0..10) > 0).then_some((w.0 + late, w.1, w.2))
                })
                .collect();
            deliveries.sort_by_key(|d| d.0);
            let mut delivered = 0;
            let mut now = t0 + ms(10);
            let mut c_dead_at = None;
            let mut my_rev = 1_000_000;
            while now < t0 + ms(20_000) {
                while delivered < deliveries.len() && deliveries[delivered].0 <= now {
                    let (at, id, r) = deliveries[delivered];
                    t.renewal_seen(id, r, at);
                    delivered += 1;
                }
                let latest = |id: &str| {
                    writes
                        .iter()
                        .rev()
                        .find(|w| w.1 == id && w.0 <= now)
                        .map(|w| w.2)
                };
                my_rev += 1;
                let mut entries = vec![put("me", my_rev)];
                for id in ["b", "c"] {
                    if let Some(r) = latest(id) {
                        entries.push(put(id, r));
                        if rng.random_range(0..8) == 0 {
                            entries.push(put(id, r));
                        }
                    }
                }
                if c_listed.is_none() && latest("c") == Some(c_last_rev) {
                    c_listed = Some(now);
                }
                let l = t.listing(entries, now);
                assert!(
                    l.alive.contains("b"),
                    "seed {seed}: b declared dead at {:?}",
                    now - t0
                );
                if !l.alive.contains("c") && c_dead_at.is_none() {
                    c_dead_at = Some(now);
                    assert!(
                        now >= c_last + F,
                        "seed {seed}: c dead {:?} after its last renewal",
                        now - c_last
                    );
                }
                let gap = if rng.random_range(0..40) == 0 {
                    ms(3000)
                } else {
                    ms(rng.random_range(20..=600))
                };
                let gap = match t.next_death_in(gap) {
                    Some(left) => left + ms(5),
                    None => gap,
                };
                if c_listed.is_some() && c_dead_at.is_none() {
                    uncounted += gap.saturating_sub(HB * 2);
                }
                now += gap;
            }
            let dead_at = c_dead_at.unwrap_or_else(|| panic!("seed {seed}: c never declared dead"));
            // failover_after of counted time after the listing that first held its last
            // revision (the watch may only have started it earlier), listed 5 ms after due.
            let c_listed = c_listed.unwrap();
            assert!(
                dead_at <= c_listed + F + uncounted + ms(5),
                "seed {seed}: c dead {:?} after the listing that held its last revision ({:?} uncounted)",
                dead_at - c_listed,
                uncounted
            );
        }
    }

    #[test]
    fn a_silent_member_counts_the_listings_that_held_its_key_and_those_that_did_not() {
        let mut t = Tracker::new("me", HB, F);
        let t0 = Instant::now();
        t.listing(vec![put("me", 1), put("b", 7)], t0);
        // Two listings hold b's key unchanged, then three leave it out.
        t.listing(vec![put("me", 2), put("b", 7)], t0 + HB);
        t.listing(vec![put("me", 3), put("b", 7)], t0 + HB * 2);
        for n in 3..6u32 {
            t.listing(vec![put("me", u64::from(n) + 1)], t0 + HB * n);
        }
        let b = &t.members()["b"];
        assert_eq!(
            (b.silent_listings, b.absent_listings, b.revision),
            (5, 3, 7)
        );
        assert_eq!(b.silence, HB * 5);
        // A renewal resets both.
        t.listing(vec![put("me", 9), put("b", 8)], t0 + HB * 6);
        let b = &t.members()["b"];
        assert_eq!((b.silent_listings, b.absent_listings), (0, 0));
    }

    #[test]
    fn a_pause_of_this_replica_declares_nobody_dead() {
        let mut t = Tracker::new("me", HB, F);
        let t0 = Instant::now();
        t.listing(vec![put("me", 1), put("b", 1)], t0);
        // Paused for a minute: the next listing sees b's key unchanged.
        let l = t.listing(
            vec![put("me", 2), put("b", 1)],
            t0 + Duration::from_secs(60),
        );
        assert!(l.after_gap);
        assert_eq!(ids(&l.alive), ["b", "me"], "b is not judged on stale data");
        // b really is dead: after failover_after of observed silence it is.
        let mut now = t0 + Duration::from_secs(60);
        let mut alive = true;
        for i in 0..8 {
            now += HB;
            alive = t
                .listing(vec![put("me", 3 + i), put("b", 1)], now)
                .alive
                .contains("b");
        }
        assert!(!alive);
    }

    #[test]
    fn a_dead_member_never_comes_back_from_its_stale_key_and_is_forgotten() {
        let mut t = Tracker::new("me", HB, F);
        let t0 = Instant::now();
        let mut now = t0;
        t.listing(vec![put("me", 1), put("dead", 7)], now);
        for i in 0..20 {
            now += HB;
            t.listing(vec![put("me", 2 + i), put("dead", 7)], now);
        }
        assert!(
            !t.members().contains_key("dead"),
            "forgotten after 2 x failover"
        );
        // A late listing (this replica ran slow) still shows the stale key: still dead.
        now += Duration::from_secs(30);
        let l = t.listing(vec![put("me", 50), put("dead", 7)], now);
        assert_eq!(ids(&l.alive), ["me"]);
        // It comes back for real: a new revision.
        let l = t.listing(vec![put("me", 51), put("dead", 8)], now + HB);
        assert_eq!(ids(&l.alive), ["dead", "me"]);
    }

    #[test]
    fn a_leaving_member_is_alive_but_not_placed_on_and_a_deleted_one_is_gone() {
        let mut t = Tracker::new("me", HB, F);
        let t0 = Instant::now();
        let leaving = MemberValue {
            leaving: true,
            ..Default::default()
        };
        let l = t.listing(
            vec![put("me", 1), ("b".into(), 3, Some(leaving)), put("c", 1)],
            t0,
        );
        assert_eq!(ids(&l.alive), ["b", "c", "me"]);
        assert_eq!(ids(&l.eligible), ["c", "me"]);
        let l = t.listing(
            vec![put("me", 2), ("b".into(), 4, None), put("c", 2)],
            t0 + HB,
        );
        assert_eq!(ids(&l.alive), ["c", "me"]);
    }

    #[test]
    fn state_is_written_compact_only_while_every_live_member_reads_it() {
        let mut t = Tracker::new("me", HB, F);
        let t0 = Instant::now();
        let new = |id: &str, revision: u64| -> Listed {
            let v = MemberValue {
                state_format: READS_COMPACT,
                ..Default::default()
            };
            (id.to_string(), revision, Some(v))
        };
        // This replica alone, even before its own key is listed.
        assert!(t.listing(vec![], t0).compact);
        assert!(t.listing(vec![new("me", 1), new("b", 1)], t0 + HB).compact);
        // A member of an earlier version (no `state_format`) joins: the first format again.
        let l = t.listing(vec![new("me", 2), new("b", 2), put("old", 1)], t0 + HB * 2);
        assert!(!l.compact);
        // Once it is dead (silent past failover_after), compact again; a value read back from
        // an earlier version's JSON has no field and counts as not reading it.
        let mut at = t0 + HB * 2;
        let mut died = false;
        for rev in 3..1000 {
            at += HB;
            let l = t.listing(vec![new("me", rev), new("b", rev), put("old", 1)], at);
            if !l.alive.contains("old") {
                assert!(l.compact);
                died = true;
                break;
            }
            assert!(!l.compact);
        }
        assert!(died, "the silent member never died");
        // The incarnations placement's claims compare: each alive member's, 0 when it announces
        // none.
        let mut with_run = new("b", 2000);
        with_run.2.as_mut().unwrap().incarnation = 42;
        let l = t.listing(vec![new("me", 2000), with_run, put("c", 1)], at + HB);
        assert_eq!(
            t.incarnations(&l.alive),
            [
                ("b".to_string(), 42),
                ("c".to_string(), 0),
                ("me".to_string(), 0)
            ]
            .into()
        );
        let old: MemberValue = serde_json::from_str(r#"{"digest":"d","owned":3}"#).unwrap();
        assert_eq!(old.state_format, 0);
    }

    #[test]
    fn a_cold_start_is_told_from_a_running_cluster_by_the_members_that_placed() {
        let mut t = Tracker::new("me", HB, F);
        let t0 = Instant::now();
        let placed = |id: &str, revision: u64, placed: bool| -> Listed {
            let v = MemberValue {
                placed,
                ..Default::default()
            };
            (id.to_string(), revision, Some(v))
        };
        // Replicas starting together: nobody has placed yet.
        let l = t.listing(vec![placed("me", 1, false), placed("b", 1, false)], t0);
        assert!(!l.others_placed);
        // This replica's own placement does not count: it is about the others.
        let l = t.listing(vec![placed("me", 2, true), placed("b", 2, false)], t0 + HB);
        assert!(!l.others_placed);
        let l = t.listing(
            vec![placed("me", 3, true), placed("b", 3, true)],
            t0 + HB * 2,
        );
        assert!(l.others_placed);
        // A placed member that died no longer makes a running cluster.
        let mut at = t0 + HB * 2;
        let mut rev = 4;
        while t
            .listing(vec![placed("me", rev, false)], at)
            .alive
            .contains("b")
        {
            at += HB;
            rev += 1;
            assert!(rev < 1000, "b never died");
        }
        assert!(
            !t.listing(vec![placed("me", rev + 1, false)], at + HB)
                .others_placed
        );
        // A member of an earlier version announces nothing: it is part of a running cluster.
        let old: MemberValue = serde_json::from_str(r#"{"digest":"d","owned":3}"#).unwrap();
        assert!(old.placed);
    }
}
