//! The embedded state store (redb, in `state_dir/state.redb`): per tenant, the checkpoint of
//! completed sweeps (high-water mark of `statusChangedAt`, time of the last full sweep) and the
//! fingerprint and status of every known issue. redb is crash-safe (copy-on-write B-trees, a
//! commit is durable when it returns), so the store survives kill -9 at any instant.
//!
//! A page's fingerprints are committed only after every sink acknowledged the page, and the
//! checkpoint only when the sweep completed: a crash replays at most the page in flight, with the
//! same event ids, and never leaves a gap. Openings are marked in flight before delivery.
//!
//! Tenants write through one writer thread ([`StateStore::write`]) that groups the writes
//! waiting at the same moment into one transaction: one fsync for many tenants instead of one
//! each in turn behind redb's single writer. Reads go straight to the database.

pub mod codec;
pub mod jetstream;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::change::Known;
use crate::metrics::ClusterMetrics;
use codec::TenantImage;
use jetstream::{Claim, ClaimLoad, PublishFailure, Replicated, WriteOutcome};

/// `<tenant>\u{1f}<issue id>` → fingerprint (16 bytes), `\u{1}` if the record is silent, the
/// status, then `\u{1f}` and Wiz's severity (records written before the severity was kept end
/// after the status).
const ISSUES: TableDefinition<&str, &[u8]> = TableDefinition::new("issues");
/// `<tenant>` → JSON [`Checkpoint`].
const CHECKPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoints");
/// `<tenant>\u{1f}<issue id>` → the state (encoded as in `issues`) of an issue whose opening
/// event (`issue.opened` or `issue.reopened`) is being delivered: written before the delivery,
/// removed by the commit after the ack. One left behind by a crash says a consumer may think the
/// issue open though the store does not; a full sweep that no longer finds it reconciles it.
const IN_FLIGHT: TableDefinition<&str, &[u8]> = TableDefinition::new("in_flight");

/// Cluster mode: `<tenant>` → the JetStream subject sequence the tenant's records here are in
/// sync with (8 bytes, little endian), then `1` if they hold writes NATS has not seen yet.
const SYNC: TableDefinition<&str, &[u8]> = TableDefinition::new("sync");

const FILE: &str = "state.redb";
/// The page cache of a store opened without a configured size (`connector.state_cache_mib`).
pub const DEFAULT_CACHE_BYTES: usize = 256 << 20;

/// Why the database could not be opened.
enum OpenError {
    /// Held open by another process (or another part of this one): not damaged.
    InUse(String),
    /// Anything else: treated as damage.
    Damaged(String),
}

/// What a tenant's completed sweeps left behind, and where a running one stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The latest `statusChangedAt` seen by a completed sweep (Wiz's text).
    pub high_water: Option<String>,
    /// When the last full sweep completed (Unix seconds).
    pub last_full_sweep: Option<u64>,
    /// How many pages the last full sweep took: a small tenant sweeps fully on every poll.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_full_pages: Option<u32>,
    /// The running sweep's position, committed with each page: a restarted tenant continues the
    /// same sweep from here instead of from page 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Box<SweepPosition>>,
    /// Whether Wiz takes `filterBy.updatedAt` on this tenant's issues (learnt by the first
    /// incremental poll; a refusal is asked again after [`UpdatedAtProbe::RETRY_AFTER`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at_filter: Option<UpdatedAtProbe>,
    /// The destinations (sink names) that have had this tenant's baseline (every current item)
    /// or took its events from its first sweep on: a destination routed to the tenant that is
    /// not here gets a baseline first. `None` in a checkpoint written before baselines existed
    /// (its destinations then count as served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baselined: Option<std::collections::BTreeSet<String>>,
    /// A feed other than Issues: its windows (kept under the feed's own state key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feed: Option<Box<crate::feeds::FeedCheckpoint>>,
}

/// How long a sweep that changed nothing but its checkpoint's time marks may leave them
/// unwritten (see [`Checkpoint::moved_only_in_time`]). An idle tenant then writes its state about
/// once this often instead of at every poll, and a tenant moved by a failover is not written at
/// its first poll elsewhere when that poll finds nothing. What it costs after a restart or a
/// move: an incremental sweep asks for up to this much more history (read again, not delivered
/// again: the known states filter it), and the time of the last full sweep may read this much
/// older than it is.
pub const TIME_MARKS_UNWRITTEN_AT_MOST: std::time::Duration = std::time::Duration::from_secs(3600);

impl Checkpoint {
    /// Whether `self` differs from `stored` (the checkpoint the store holds) only in its time
    /// marks (the high-water mark and the time of the last full sweep), each moved forward by
    /// less than `within`: then writing it changes nothing a sweep would do differently within
    /// `within`. Equal checkpoints count too.
    pub fn moved_only_in_time(&self, stored: &Checkpoint, within: std::time::Duration) -> bool {
        let forward = |new: Option<SystemTime>, old: Option<SystemTime>| match (new, old) {
            (None, None) => true,
            (Some(n), Some(o)) => n.duration_since(o).is_ok_and(|d| d < within),
            _ => false,
        };
        let parse = |h: &Option<String>| match h {
            None => Some(None),
            Some(t) => humantime::parse_rfc3339_weak(t).ok().map(Some),
        };
        let (Some(new_hw), Some(old_hw)) = (parse(&self.high_water), parse(&stored.high_water))
        else {
            return false;
        };
        let at = |s: Option<u64>| s.map(|s| UNIX_EPOCH + std::time::Duration::from_secs(s));
        let rest_equal = Checkpoint {
            high_water: stored.high_water.clone(),
            last_full_sweep: stored.last_full_sweep,
            ..self.clone()
        } == *stored;
        rest_equal
            && forward(new_hw, old_hw)
            && forward(at(self.last_full_sweep), at(stored.last_full_sweep))
    }
}

/// What the `filterBy.updatedAt` probe found, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdatedAtProbe {
    pub accepted: bool,
    /// Unix seconds.
    pub at: u64,
}

impl UpdatedAtProbe {
    /// How long a refusal is believed before the next incremental poll asks again (one request).
    pub const RETRY_AFTER: u64 = 24 * 3600;

    /// Incremental polls filter on `updatedAt` (probing when the answer is unknown or stale).
    pub fn try_it(probe: Option<UpdatedAtProbe>, now: u64) -> bool {
        match probe {
            None => true,
            Some(p) => p.accepted || now.saturating_sub(p.at) >= Self::RETRY_AFTER,
        }
    }

    /// Known to be accepted.
    pub fn accepted(probe: Option<UpdatedAtProbe>) -> bool {
        probe.is_some_and(|p| p.accepted)
    }
}

/// Where a running sweep stands, committed with each delivered page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepPosition {
    /// A full sweep (else incremental).
    pub full: bool,
    /// The sweep's frozen filter.
    pub filter: crate::wiz::IssueFilter,
    /// When the sweep started (RFC 3339): the high-water mark an incremental sweep moves to.
    pub started_at: String,
    /// The cursor of the next page; `None` once every page is done.
    pub after: Option<String>,
    /// Pages done.
    pub pages: u32,
}

/// What one durable commit records for a tenant.
#[derive(Debug, Default)]
pub struct Commit {
    /// Delivered (or silently recorded) states.
    pub remember: Vec<(String, Known)>,
    /// Issues whose in-flight marks are settled (their delivery was acknowledged, or a
    /// reconciliation looked them up).
    pub settle: Vec<String>,
    /// The checkpoint, at the end of a sweep.
    pub checkpoint: Option<Checkpoint>,
}

impl Commit {
    pub fn is_empty(&self) -> bool {
        self.remember.is_empty() && self.settle.is_empty() && self.checkpoint.is_none()
    }
}

/// A failure of the state store.
#[derive(Debug, Error)]
#[error("state store {path}: {message}")]
pub struct StateError {
    pub path: String,
    pub message: String,
    /// Cluster mode: another replica took the tenant over; this replica must stop it.
    pub fenced: bool,
}

/// What taking a tenant over came to.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimResult {
    /// This replica owns the tenant (always, without cluster mode).
    Claimed {
        /// The tenant's state was read from JetStream (another replica wrote it last).
        moved: bool,
    },
    /// Another live replica still holds it; try again shortly.
    Wait { holder: String },
    /// Given up before anything was written to NATS (see [`StateStore::claim_unless`]).
    GaveUp,
}

/// The store; cheap to clone. Backed by the local redb alone, or (cluster mode) by JetStream
/// with the local redb as its cache: the same interface either way.
#[derive(Clone)]
pub struct StateStore {
    db: Arc<Db>,
    /// The group-commit writer ([`StateStore::write`]).
    writer: Arc<WriterHandle>,
    /// Cluster mode: the authoritative copy in JetStream.
    replicated: Option<Arc<Replicated>>,
    /// Write latency and fencing counts.
    metrics: ClusterMetrics,
}

/// The database and its path (for error messages); shared by the handles and the writer thread.
struct Db {
    db: Database,
    path: PathBuf,
    /// Commits made without an fsync since the last durable one (see [`Durable`]).
    unsynced: std::sync::atomic::AtomicBool,
}

/// Whether a commit waits for the disk. In cluster mode a write NATS acknowledged is held there,
/// so the local cache need not fsync it: if a crash loses it, the cache comes back as it was at
/// an earlier commit (redb keeps commits in order, atomically), with the sync mark of that
/// commit, and the tenant's next claim installs the newer state from NATS. Everything else (a
/// single node's writes, writes NATS has not seen) is durable when it returns. A non-durable
/// commit is made durable within [`SYNC_EVERY`] by the writer thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durable {
    Yes,
    /// NATS holds it.
    InNats,
}

/// How long a non-durable commit stays off the disk at most (redb also frees the pages such
/// commits release only after a durable one).
const SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The writer thread and the way to it. Dropped with the last clone of the store: closes the
/// channel and waits for the thread, so the database is closed when the last handle is gone (and
/// can be opened again at once).
struct WriterHandle {
    tx: Option<std::sync::mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A durable write a tenant asks for.
#[derive(Debug)]
pub enum Write {
    /// Records delivered states, settles in-flight marks and, at the end of a sweep, writes the
    /// checkpoint.
    Commit(Commit),
    /// Marks issues whose opening event is about to be delivered (see `IN_FLIGHT`).
    Mark(Vec<(String, Known)>),
}

/// What the writer thread applies for a tenant.
#[derive(Debug)]
enum Change {
    /// One of the tenant's writes.
    Write(Write),
    /// Cluster mode: the tenant's whole image, read from NATS by a claim, replacing everything
    /// the cache held for it. Through the writer like the writes, so a failover's installs
    /// share its group commits instead of taking redb's one writer each in turn.
    Install(Box<TenantImage>),
}

struct Job {
    tenant: String,
    change: Change,
    /// Cluster mode: the subject sequence this write brings the tenant's records in sync with.
    sync: Option<SyncMark>,
    durable: Durable,
    done: tokio::sync::oneshot::Sender<Result<(), StateError>>,
}

/// Most writes one group commit takes.
const GROUP_MAX: usize = 256;

fn key(tenant: &str, issue: &str) -> String {
    format!("{tenant}\u{1f}{issue}")
}

/// The bounds of `tenant`'s keys in a table keyed by [`key`]: from `<tenant>\u{1f}` up to, not
/// including, `<tenant>\u{20}` (the separator's next character). Tenant ids never hold
/// `\u{1f}` or `\u{20}`, so the range is exactly the tenant's keys.
fn tenant_range(tenant: &str) -> (String, String) {
    (format!("{tenant}\u{1f}"), format!("{tenant}\u{20}"))
}

/// Where a tenant's cached records stand against JetStream: the subject sequence, and whether
/// they hold writes NATS has not seen.
/// A tenant's own state key, not one of its feeds' (`<tenant>:<feed>`; tenant ids have no `:`):
/// handovers are counted once per tenant.
fn is_tenant_key(key: &str) -> bool {
    !key.contains(':')
}

pub type SyncMark = (u64, bool);

fn encode_sync((seq, dirty): SyncMark) -> [u8; 9] {
    let mut b = [0u8; 9];
    b[..8].copy_from_slice(&seq.to_le_bytes());
    b[8] = u8::from(dirty);
    b
}

fn decode_sync(b: &[u8]) -> Option<SyncMark> {
    (b.len() == 9).then(|| (u64::from_le_bytes(b[..8].try_into().expect("8")), b[8] == 1))
}

const SEP: u8 = 0x1f;
/// Written before the status of a silent record ([`Known::silent`]); no status starts with it.
const SILENT: u8 = 0x01;

fn encode(k: &Known, buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(&k.fingerprint);
    if k.silent {
        buf.push(SILENT);
    }
    buf.extend_from_slice(k.status.as_bytes());
    if let Some(s) = &k.severity {
        buf.push(SEP);
        buf.extend_from_slice(s.as_bytes());
    }
}

/// A record, or `None` when it is too short to hold a fingerprint (the issue is then treated as
/// unknown: at worst it is reported once more).
fn decode(b: &[u8]) -> Option<Known> {
    if b.len() < 16 {
        return None;
    }
    let rest = &b[16..];
    let silent = rest.first() == Some(&SILENT);
    let rest = if silent { &rest[1..] } else { rest };
    let (status, severity) = match rest.iter().position(|&c| c == SEP) {
        Some(i) => (
            &rest[..i],
            Some(String::from_utf8_lossy(&rest[i + 1..]).into_owned()),
        ),
        None => (rest, None),
    };
    Some(Known {
        fingerprint: b[..16].try_into().expect("16 bytes"),
        status: String::from_utf8_lossy(status).into_owned(),
        severity,
        silent,
    })
}

impl StateStore {
    /// Opens (or creates) the store in `dir`. An unreadable or corrupt file is moved aside to
    /// `state.redb.corrupt-<unix time>` and a fresh store is created; the returned note says so
    /// (every tenant then falls back to a full sweep).
    pub fn open_or_recover(dir: &Path) -> Result<(StateStore, Option<String>), StateError> {
        Self::open_or_recover_with(dir, DEFAULT_CACHE_BYTES)
    }

    /// [`StateStore::open_or_recover`] with a page cache of `cache_bytes` (redb's own default is
    /// 1 GiB, which a store of millions of records would fill).
    pub fn open_or_recover_with(
        dir: &Path,
        cache_bytes: usize,
    ) -> Result<(StateStore, Option<String>), StateError> {
        let path = dir.join(FILE);
        let fail = |m: String| StateError {
            path: path.display().to_string(),
            message: m,
            fenced: false,
        };
        std::fs::create_dir_all(dir).map_err(|e| {
            fail(format!(
                "cannot create the state directory: {e} (key connector.state_dir)"
            ))
        })?;
        let try_open = || -> Result<Database, OpenError> {
            // redb would take an empty file for a new store; an empty file where a store was is
            // damage (a truncation, a failed copy), not a fresh start.
            if std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
                return Err(OpenError::Damaged("the file is empty (0 bytes)".into()));
            }
            let db = Database::builder()
                .set_cache_size(cache_bytes)
                .create(&path)
                .map_err(|e| match e {
                    redb::DatabaseError::DatabaseAlreadyOpen
                    | redb::DatabaseError::LockProtocolMismatch => OpenError::InUse(e.to_string()),
                    e => OpenError::Damaged(e.to_string()),
                })?;
            // Touch every table so a damaged tree shows now, not mid-poll.
            let damaged = |e: redb::Error| OpenError::Damaged(e.to_string());
            let w = db.begin_write().map_err(|e| damaged(e.into()))?;
            w.open_table(ISSUES).map_err(|e| damaged(e.into()))?;
            w.open_table(CHECKPOINTS).map_err(|e| damaged(e.into()))?;
            w.open_table(IN_FLIGHT).map_err(|e| damaged(e.into()))?;
            w.open_table(SYNC).map_err(|e| damaged(e.into()))?;
            w.commit().map_err(|e| damaged(e.into()))?;
            Ok(db)
        };
        let in_use = |e: String| {
            fail(format!(
                "{e}: another wiz-connector is using this state directory; give each instance its own connector.state_dir"
            ))
        };
        match try_open() {
            Ok(db) => Ok((StateStore::with_writer(db, path), None)),
            // Refuse to start rather than move the store aside under its owner.
            Err(OpenError::InUse(e)) => Err(in_use(e)),
            Err(OpenError::Damaged(e)) => {
                let stamp = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                let aside = dir.join(format!("{FILE}.corrupt-{stamp}"));
                std::fs::rename(&path, &aside).map_err(|re| {
                    fail(format!("unreadable ({e}) and cannot be moved aside: {re}"))
                })?;
                let note = format!(
                    "the state store {} was unreadable ({e}); it was moved to {} and every tenant resyncs with a full sweep",
                    path.display(),
                    aside.display()
                );
                tracing::error!(error = %e, moved_to = %aside.display(), "state store unreadable; starting a fresh one");
                let db = match try_open() {
                    Ok(db) => db,
                    Err(OpenError::InUse(e)) => return Err(in_use(e)),
                    Err(OpenError::Damaged(e)) => return Err(fail(e)),
                };
                Ok((StateStore::with_writer(db, path), Some(note)))
            }
        }
    }

    /// Starts the writer thread of a freshly opened database. It ends when the last clone of
    /// the store is dropped.
    fn with_writer(db: Database, path: PathBuf) -> StateStore {
        let db = Arc::new(Db {
            db,
            path,
            unsynced: std::sync::atomic::AtomicBool::new(false),
        });
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let worker = db.clone();
        let thread = std::thread::Builder::new()
            .name("state-writer".into())
            .spawn(move || worker.run(rx))
            .expect("spawning the state writer thread");
        StateStore {
            db,
            writer: Arc::new(WriterHandle {
                tx: Some(tx),
                thread: Some(thread),
            }),
            replicated: None,
            metrics: ClusterMetrics::default(),
        }
    }

    /// Makes JetStream the authoritative copy (cluster mode); this store becomes its cache.
    pub fn replicate_to(mut self, replicated: Arc<Replicated>) -> StateStore {
        self.replicated = Some(replicated);
        self
    }

    /// Where write latencies and fencing rejections are counted.
    pub fn with_metrics(mut self, metrics: ClusterMetrics) -> StateStore {
        self.metrics = metrics;
        self
    }

    /// The replicated backend, in cluster mode.
    pub fn replicated(&self) -> Option<&Arc<Replicated>> {
        self.replicated.as_ref()
    }

    /// Whether what the store holds for `tenant` is also where it would write it now, so a
    /// write that would change only the checkpoint's time marks may be left out (see
    /// [`Checkpoint::moved_only_in_time`]). Always without cluster mode. In cluster mode, only
    /// while this replica owns the tenant, NATS answers, NATS has seen every write (not dirty),
    /// the image's size is known (else the next write compacts to measure it), the subject
    /// holds it in the format written now (else the next write moves it to that format), and
    /// the client has not reconnected since the last write (NATS may have come back without its
    /// store, which the next write finds out and repairs).
    pub fn holds_current(&self, tenant: &str) -> bool {
        self.replicated
            .as_ref()
            .is_none_or(|r| r.holds_current(tenant))
    }

    /// Writes durably; returns once the write is on disk (and, in cluster mode, in JetStream).
    /// Local writes are grouped with other tenants' writes that arrive at the same time (see
    /// `Db::run`). In cluster mode a write refused by the fence fails with `fenced` set: the
    /// tenant belongs to another replica now.
    pub async fn write(&self, tenant: &str, write: Write) -> Result<(), StateError> {
        let started = Instant::now();
        let Some(r) = &self.replicated else {
            let res = self.write_local(tenant, write, None, Durable::Yes).await;
            self.metrics.state_write("redb", started.elapsed());
            return res;
        };
        let outcome = r
            .publish_write(tenant, &write)
            .await
            .map_err(|e| self.failure(tenant, e))?;
        match outcome {
            WriteOutcome::Published { seq, compact } => {
                self.write_local(tenant, write, Some((seq, false)), Durable::InNats)
                    .await?;
                if compact {
                    self.publish_image(r, tenant).await?;
                }
            }
            WriteOutcome::CacheOnly { seq, resync } => {
                self.write_local(tenant, write, Some((seq, true)), Durable::Yes)
                    .await?;
                if resync {
                    self.publish_image(r, tenant).await?;
                }
            }
            WriteOutcome::Replace { seq } => {
                // Not on disk yet: the image published next holds it. Made durable when that
                // publish fails, as the cache then holds the only copy.
                self.write_local(tenant, write, Some((seq, true)), Durable::InNats)
                    .await?;
                if !self.publish_image(r, tenant).await? {
                    r.set_dirty(tenant);
                    self.write_local(tenant, Write::Commit(Commit::default()), None, Durable::Yes)
                        .await?;
                }
            }
        }
        self.metrics.state_write("jetstream", started.elapsed());
        Ok(())
    }

    fn failure(&self, tenant: &str, e: PublishFailure) -> StateError {
        match e {
            PublishFailure::Fenced => {
                self.metrics.fenced();
                StateError {
                    path: self.db.path.display().to_string(),
                    message: format!(
                        "tenant {tenant} was taken over by another replica (its state write was fenced); it stops here"
                    ),
                    fenced: true,
                }
            }
            PublishFailure::Offline(m) => self.db.err(format!("NATS: {m}")),
        }
    }

    async fn write_local(
        &self,
        tenant: &str,
        write: Write,
        sync: Option<SyncMark>,
        durable: Durable,
    ) -> Result<(), StateError> {
        self.apply_local(tenant, Change::Write(write), sync, durable)
            .await
    }

    /// Hands `change` to the writer thread and waits for its group commit.
    async fn apply_local(
        &self,
        tenant: &str,
        change: Change,
        sync: Option<SyncMark>,
        durable: Durable,
    ) -> Result<(), StateError> {
        let (done, answer) = tokio::sync::oneshot::channel();
        let gone = || self.db.err("the state writer has stopped");
        self.writer
            .tx
            .as_ref()
            .ok_or_else(gone)?
            .send(Job {
                tenant: tenant.to_string(),
                change,
                sync,
                durable,
                done,
            })
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Publishes the cached image of `tenant` as a snapshot (compaction, catching NATS up after
    /// it was unreachable, or replacing a tiny image); false when NATS was unreachable.
    async fn publish_image(&self, r: &Replicated, tenant: &str) -> Result<bool, StateError> {
        let image = self.image_blocking(tenant).await?;
        match r.snapshot(tenant, &image).await {
            Ok(seq) => {
                tracing::debug!(tenant = %tenant, seq, issues = image.issues.len(), "state snapshot published");
                self.set_sync(tenant, (seq, false)).await?;
                Ok(true)
            }
            Err(PublishFailure::Offline(e)) => {
                tracing::warn!(tenant = %tenant, error = %e, "state snapshot not published (NATS unreachable); kept locally and tried again at the next write");
                Ok(false)
            }
            Err(e) => Err(self.failure(tenant, e)),
        }
    }

    /// Records where the tenant's cache stands against NATS; durable only while it holds writes
    /// NATS has not seen.
    async fn set_sync(&self, tenant: &str, mark: SyncMark) -> Result<(), StateError> {
        let empty = Write::Commit(Commit::default());
        let durable = if mark.1 {
            Durable::Yes
        } else {
            Durable::InNats
        };
        self.write_local(tenant, empty, Some(mark), durable).await
    }

    async fn image_blocking(&self, tenant: &str) -> Result<TenantImage, StateError> {
        let me = self.clone();
        let t = tenant.to_string();
        tokio::task::spawn_blocking(move || me.image(&t))
            .await
            .map_err(|e| self.db.err(e))?
    }

    /// Everything the cache holds for `tenant`.
    pub fn image(&self, tenant: &str) -> Result<TenantImage, StateError> {
        Ok(TenantImage {
            checkpoint: self.checkpoint(tenant)?,
            issues: self.scan(ISSUES, tenant, |_| true)?.into_iter().collect(),
            marks: self.in_flight(tenant)?.into_iter().collect(),
        })
    }

    /// The cache's sync mark for `tenant` (cluster mode).
    fn sync_mark(&self, tenant: &str) -> Result<Option<SyncMark>, StateError> {
        let r = self.db.db.begin_read().map_err(|e| self.db.err(e))?;
        let t = r.open_table(SYNC).map_err(|e| self.db.err(e))?;
        let v = t.get(tenant).map_err(|e| self.db.err(e))?;
        Ok(v.and_then(|v| decode_sync(v.value())))
    }

    /// Takes `tenant` over before its first poll. Without cluster mode: always claimed. In
    /// cluster mode: waits (answers `Wait`) while another live replica holds it; then writes the
    /// fencing claim (with the cache's state when NATS lacks it: an import from single-node
    /// state) and brings the cache in line with JetStream (installing the newer state read from
    /// it, or marking the cache as in sync).
    pub async fn claim(&self, tenant: &str, force: bool) -> Result<ClaimResult, StateError> {
        self.claim_unless(tenant, force, std::future::pending())
            .await
    }

    /// [`StateStore::claim`], given up ([`ClaimResult::GaveUp`]) when `cancel` resolves while
    /// the claim waits for its turn or reads NATS: before the fenced take, so nothing was
    /// written. A tenant that placement moved away while its claim queued behind thousands of
    /// others (a failover, a cold start) stops at once instead of claiming first.
    pub async fn claim_unless(
        &self,
        tenant: &str,
        force: bool,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<ClaimResult, StateError> {
        let Some(r) = &self.replicated else {
            return Ok(ClaimResult::Claimed { moved: false });
        };
        let started = Instant::now();
        let local = self.sync_mark(tenant)?;
        let has_state = self.checkpoint(tenant)?.is_some();
        // One turn for the look and the take (see `Replicated::claim`). Both are reads: the
        // claim may be given up until they are done.
        let look = async {
            let turn = r.turn().await;
            let claim = r.claim(&turn, tenant, local, has_state, force).await;
            (turn, claim)
        };
        let (turn, claim) = tokio::select! {
            biased;
            _ = cancel => return Ok(ClaimResult::GaveUp),
            looked = look => looked,
        };
        let claim = claim.map_err(|e| self.db.err(e))?;
        let looked = started.elapsed();
        let (last_seq, load, crowded, format) = match claim {
            Claim::Wait { holder } => return Ok(ClaimResult::Wait { holder }),
            Claim::Take {
                last_seq,
                load,
                crowded,
                format,
            } => (last_seq, load, crowded, format),
        };
        // A newer state read from NATS is installed after the take, in one write with the take's
        // sync mark: the turn is not held while the cache is written, and the writer thread
        // gets one job per takeover, not two. Should the install fail, or the process die
        // before it, the cache's sync mark is still the old one: the next claim finds this
        // replica's own marker last in NATS, reads the state again and installs it.
        let (image, install) = match load {
            ClaimLoad::Keep => (None, None),
            ClaimLoad::Publish => (Some(self.image_blocking(tenant).await?), None),
            ClaimLoad::Install(image) => (None, Some(image)),
        };
        let loaded = started.elapsed();
        let took = r
            .take(&turn, tenant, last_seq, image.as_ref(), format)
            .await;
        drop(turn);
        match took {
            Ok(seq) => {
                let taken = started.elapsed();
                let moved = install.is_some();
                match install {
                    Some(image) => {
                        let bytes = image.approx_encoded_len();
                        // Read from NATS, which keeps it: no fsync of its own.
                        self.apply_local(
                            tenant,
                            Change::Install(image),
                            Some((seq, false)),
                            Durable::InNats,
                        )
                        .await?;
                        r.installed(tenant, bytes);
                        // The image read from NATS is freed now: worth giving back after a
                        // failover.
                        crate::heap::churned();
                    }
                    None => self.set_sync(tenant, (seq, false)).await?,
                }
                // Where a takeover's time goes (the lookup in NATS, a snapshot of the cache to
                // publish, the fenced claim, the cache's install or sync mark): for sizing a
                // failover.
                tracing::debug!(
                    tenant = %tenant,
                    look_ms = looked.as_millis() as u64,
                    snapshot_ms = (loaded - looked).as_millis() as u64,
                    claim_ms = (taken - loaded).as_millis() as u64,
                    install_ms = (started.elapsed() - taken).as_millis() as u64,
                    moved,
                    "claim timings"
                );
                if is_tenant_key(tenant) {
                    self.metrics.handover(true);
                }
                // Previous owners' deltas and markers: compacted into one snapshot now.
                let crowded = match crowded {
                    Some(known) => known,
                    None => r.crowded(tenant).await,
                };
                if crowded {
                    self.publish_image(r, tenant).await?;
                }
                Ok(ClaimResult::Claimed { moved })
            }
            // Someone wrote between the look and the claim: look again.
            Err(PublishFailure::Fenced) => Ok(ClaimResult::Wait {
                holder: "another replica".into(),
            }),
            Err(PublishFailure::Offline(m)) => Err(self.db.err(format!("NATS: {m}"))),
        }
    }

    /// Cluster mode, after a lapse of this replica's lease: re-asserts that it still owns
    /// `tenant` with a fenced marker (see [`Replicated::reassert`]). Fails with `fenced` set when
    /// another replica took the tenant over meanwhile. Without cluster mode: nothing to do.
    pub async fn reassert(&self, tenant: &str) -> Result<(), StateError> {
        let Some(r) = &self.replicated else {
            return Ok(());
        };
        match r.reassert(tenant).await {
            Ok(seq) => self.set_sync(tenant, (seq, r.is_dirty(tenant))).await,
            Err(e) => Err(self.failure(tenant, e)),
        }
    }

    /// Cluster mode, at shutdown: whether `tenant` is handed over with a release write. Not
    /// when NATS holds its whole state and every live replica reads the compact format: its
    /// messages then name this run (the incarnation), and the others take it over as soon as
    /// this replica's membership key is gone, or this replica restarts, without waiting for a
    /// release (one write per tenant, most of a shutdown of many thousands of tenants). A
    /// tenant holding writes NATS has not seen is always published and released, or its next
    /// owner would start from older state.
    pub fn released_at_shutdown(&self, tenant: &str) -> bool {
        self.replicated
            .as_ref()
            .is_some_and(|r| r.is_dirty(tenant) || !r.names_its_run())
    }

    /// Gives `tenant` up (cluster mode): writes the release so its next owner starts at once.
    /// Returns true when a release was written.
    pub async fn release(&self, tenant: &str) -> bool {
        let Some(r) = &self.replicated else {
            return false;
        };
        // Writes made while NATS was away are published first, or the next owner would start
        // from older state and repeat what this replica already delivered.
        if r.is_dirty(tenant) {
            if let Err(e) = self.publish_image(r, tenant).await {
                tracing::warn!(tenant = %tenant, error = %e, "could not publish the state before handing the tenant over");
            }
        }
        match r.release(tenant).await {
            Some(seq) => {
                let _ = self.set_sync(tenant, (seq, false)).await;
                if is_tenant_key(tenant) {
                    self.metrics.handover(false);
                }
                true
            }
            None => false,
        }
    }

    /// Cluster mode: drops the local cache of a tenant this replica released to another (its
    /// state is in NATS; a later claim here installs it from there). Not used at shutdown: a
    /// restarted replica usually gets its tenants back, and its cache spares reading them.
    pub async fn forget(&self, tenant: &str) -> Result<(), StateError> {
        let me = self.clone();
        let t = tenant.to_string();
        tokio::task::spawn_blocking(move || me.db.forget(&t))
            .await
            .map_err(|e| self.db.err(e))?
    }

    /// Whether the local cache holds anything of `tenant` (its checkpoint, known issues, in-flight
    /// marks or sync mark).
    pub fn cached(&self, tenant: &str) -> Result<bool, StateError> {
        self.db.cached(tenant)
    }

    pub fn checkpoint(&self, tenant: &str) -> Result<Option<Checkpoint>, StateError> {
        let r = self.db.db.begin_read().map_err(|e| self.db.err(e))?;
        let t = r.open_table(CHECKPOINTS).map_err(|e| self.db.err(e))?;
        let Some(v) = t.get(tenant).map_err(|e| self.db.err(e))? else {
            return Ok(None);
        };
        // An unreadable checkpoint is as good as none: the tenant does a full sweep.
        Ok(serde_json::from_slice(v.value()).ok())
    }

    /// The known state of each of `ids` (one read transaction).
    pub fn known(&self, tenant: &str, ids: &[&str]) -> Result<Vec<Option<Known>>, StateError> {
        let r = self.db.db.begin_read().map_err(|e| self.db.err(e))?;
        let t = r.open_table(ISSUES).map_err(|e| self.db.err(e))?;
        ids.iter()
            .map(|id| {
                let v = t
                    .get(key(tenant, id).as_str())
                    .map_err(|e| self.db.err(e))?;
                Ok(v.and_then(|v| decode(v.value())))
            })
            .collect()
    }

    /// Every known issue of `tenant` whose recorded status is one of `statuses`, in key order
    /// (one read transaction, a range scan over the tenant's keys).
    pub fn known_with_status(
        &self,
        tenant: &str,
        statuses: &[String],
    ) -> Result<Vec<(String, Known)>, StateError> {
        self.scan(ISSUES, tenant, |k| statuses.contains(&k.status))
    }

    /// The in-flight marks of `tenant` (see `IN_FLIGHT`): issues whose opening event was being
    /// delivered and is not settled yet.
    pub fn in_flight(&self, tenant: &str) -> Result<Vec<(String, Known)>, StateError> {
        self.scan(IN_FLIGHT, tenant, |_| true)
    }

    /// The records of `tenant` in `table` that `keep` accepts, in key order.
    fn scan(
        &self,
        table: TableDefinition<&str, &[u8]>,
        tenant: &str,
        keep: impl Fn(&Known) -> bool,
    ) -> Result<Vec<(String, Known)>, StateError> {
        let r = self.db.db.begin_read().map_err(|e| self.db.err(e))?;
        let t = r.open_table(table).map_err(|e| self.db.err(e))?;
        let (from, to) = tenant_range(tenant);
        let mut out = Vec::new();
        for entry in t
            .range(from.as_str()..to.as_str())
            .map_err(|e| self.db.err(e))?
        {
            let (k, v) = entry.map_err(|e| self.db.err(e))?;
            let Some(known) = decode(v.value()) else {
                continue;
            };
            if keep(&known) {
                let id = &k.value()[from.len()..];
                out.push((id.to_string(), known));
            }
        }
        Ok(out)
    }

    /// [`StateStore::write`] on the caller's thread, without grouping (tools and tests).
    pub fn write_now(&self, tenant: &str, write: Write) -> Result<(), StateError> {
        self.db
            .apply(&[(tenant, &Change::Write(write), None)], Durable::Yes)
    }
}

impl Db {
    fn err(&self, e: impl std::fmt::Display) -> StateError {
        StateError {
            path: self.path.display().to_string(),
            message: e.to_string(),
            fenced: false,
        }
    }

    /// Replaces everything held for `tenant` with `image` (a tenant's state read from JetStream
    /// when it moved here), in sync with subject sequence `seq`.
    fn forget(&self, tenant: &str) -> Result<(), StateError> {
        let w = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let (from, to) = tenant_range(tenant);
            for table in [ISSUES, IN_FLIGHT] {
                let mut t = w.open_table(table).map_err(|e| self.err(e))?;
                t.retain_in(from.as_str()..to.as_str(), |_, _| false)
                    .map_err(|e| self.err(e))?;
            }
            for table in [CHECKPOINTS, SYNC] {
                let mut t = w.open_table(table).map_err(|e| self.err(e))?;
                t.remove(tenant).map_err(|e| self.err(e))?;
            }
        }
        // NATS holds the tenant (released there); a crash that loses this keeps a stale copy
        // whose sync mark is older than NATS, which a later claim replaces.
        self.commit(w, Durable::InNats)
    }

    fn cached(&self, tenant: &str) -> Result<bool, StateError> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let (from, to) = tenant_range(tenant);
        for table in [ISSUES, IN_FLIGHT] {
            let t = match r.open_table(table) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => continue,
                Err(e) => return Err(self.err(e)),
            };
            if t.range(from.as_str()..to.as_str())
                .map_err(|e| self.err(e))?
                .next()
                .is_some()
            {
                return Ok(true);
            }
        }
        for table in [CHECKPOINTS, SYNC] {
            let t = match r.open_table(table) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => continue,
                Err(e) => return Err(self.err(e)),
            };
            if t.get(tenant).map_err(|e| self.err(e))?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A claim's install on the caller's thread (tests; the store sends it to the writer).
    #[cfg(test)]
    fn install(&self, tenant: &str, image: &TenantImage, seq: u64) -> Result<(), StateError> {
        let change = Change::Install(Box::new(image.clone()));
        self.apply(&[(tenant, &change, Some((seq, false)))], Durable::InNats)
    }

    /// Group commit: takes every write waiting (up to [`GROUP_MAX`]) into one transaction and
    /// one fsync, then answers each. Tenants that commit at the same time share the cost of the
    /// fsync instead of queueing for redb's single writer one by one. If the group fails, each
    /// write is retried alone, so one failing write fails only its own tenant.
    fn run(&self, rx: std::sync::mpsc::Receiver<Job>) {
        let mut synced = Instant::now();
        loop {
            let first = match rx.recv_timeout(SYNC_EVERY) {
                Ok(j) => j,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    // Non-durable commits made durable (an empty transaction syncs them).
                    self.sync();
                    synced = Instant::now();
                    continue;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    // The store is closing: what is not on disk yet goes there now.
                    self.sync();
                    break;
                }
            };
            let mut jobs = vec![first];
            while jobs.len() < GROUP_MAX {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            let all: Vec<(&str, &Change, Option<SyncMark>)> = jobs
                .iter()
                .map(|j| (j.tenant.as_str(), &j.change, j.sync))
                .collect();
            let durable = if jobs.iter().any(|j| j.durable == Durable::Yes)
                || synced.elapsed() >= SYNC_EVERY
            {
                synced = Instant::now();
                Durable::Yes
            } else {
                Durable::InNats
            };
            match self.apply(&all, durable) {
                Ok(()) => {
                    for j in jobs {
                        let _ = j.done.send(Ok(()));
                    }
                }
                Err(e) if jobs.len() == 1 => {
                    let j = jobs.pop().expect("one job");
                    let _ = j.done.send(Err(e));
                }
                Err(_) => {
                    for j in jobs {
                        let r = self.apply(&[(j.tenant.as_str(), &j.change, j.sync)], j.durable);
                        let _ = j.done.send(r);
                    }
                }
            }
        }
    }

    /// Makes the commits not on disk yet durable (an empty durable transaction does).
    fn sync(&self) {
        if self.unsynced.load(std::sync::atomic::Ordering::Acquire) {
            if let Ok(w) = self.db.begin_write() {
                if let Err(e) = self.commit(w, Durable::Yes) {
                    tracing::warn!(path = %self.path.display(), error = %e, "could not sync the state cache to disk; tried again in a second");
                }
            }
        }
    }

    /// Commits `w`: on disk when it returns, or (for state NATS holds) later, within
    /// [`SYNC_EVERY`].
    fn commit(&self, mut w: redb::WriteTransaction, durable: Durable) -> Result<(), StateError> {
        use std::sync::atomic::Ordering;
        match durable {
            Durable::Yes => {
                // Cleared before: this transaction holds redb's one writer, so no other commit
                // comes between, and it makes every earlier one durable too.
                let was = self.unsynced.swap(false, Ordering::AcqRel);
                if let Err(e) = w.commit() {
                    self.unsynced.fetch_or(was, Ordering::AcqRel);
                    return Err(self.err(e));
                }
            }
            Durable::InNats => {
                w.set_durability(redb::Durability::None)
                    .map_err(|e| self.err(e))?;
                w.commit().map_err(|e| self.err(e))?;
                self.unsynced.store(true, Ordering::Release);
            }
        }
        Ok(())
    }

    /// Applies writes in order in one transaction; durable when it returns unless `durable`
    /// says NATS holds them.
    fn apply(
        &self,
        writes: &[(&str, &Change, Option<SyncMark>)],
        durable: Durable,
    ) -> Result<(), StateError> {
        let w = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut issues = w.open_table(ISSUES).map_err(|e| self.err(e))?;
            let mut in_flight = w.open_table(IN_FLIGHT).map_err(|e| self.err(e))?;
            let mut checkpoints = w.open_table(CHECKPOINTS).map_err(|e| self.err(e))?;
            let mut sync = w.open_table(SYNC).map_err(|e| self.err(e))?;
            let mut buf = Vec::new();
            for (tenant, write, mark) in writes {
                if let Some(m) = mark {
                    sync.insert(*tenant, encode_sync(*m).as_slice())
                        .map_err(|e| self.err(e))?;
                }
                match write {
                    Change::Install(image) => {
                        let (from, to) = tenant_range(tenant);
                        for (t, records) in
                            [(&mut issues, &image.issues), (&mut in_flight, &image.marks)]
                        {
                            t.retain_in(from.as_str()..to.as_str(), |_, _| false)
                                .map_err(|e| self.err(e))?;
                            for (id, k) in records {
                                encode(k, &mut buf);
                                t.insert(key(tenant, id).as_str(), buf.as_slice())
                                    .map_err(|e| self.err(e))?;
                            }
                        }
                        match &image.checkpoint {
                            Some(cp) => {
                                let json = serde_json::to_vec(cp).expect("a checkpoint serializes");
                                checkpoints
                                    .insert(*tenant, json.as_slice())
                                    .map_err(|e| self.err(e))?;
                            }
                            None => {
                                checkpoints.remove(*tenant).map_err(|e| self.err(e))?;
                            }
                        }
                    }
                    Change::Write(Write::Mark(marks)) => {
                        for (id, k) in marks {
                            encode(k, &mut buf);
                            in_flight
                                .insert(key(tenant, id).as_str(), buf.as_slice())
                                .map_err(|e| self.err(e))?;
                        }
                    }
                    Change::Write(Write::Commit(c)) => {
                        for (id, k) in &c.remember {
                            encode(k, &mut buf);
                            issues
                                .insert(key(tenant, id).as_str(), buf.as_slice())
                                .map_err(|e| self.err(e))?;
                        }
                        for id in &c.settle {
                            in_flight
                                .remove(key(tenant, id).as_str())
                                .map_err(|e| self.err(e))?;
                        }
                        if let Some(cp) = &c.checkpoint {
                            let json = serde_json::to_vec(cp).expect("a checkpoint serializes");
                            checkpoints
                                .insert(*tenant, json.as_slice())
                                .map_err(|e| self.err(e))?;
                        }
                    }
                }
            }
        }
        self.commit(w, durable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_time_marks_moved_forward_by_less_than_the_bound_may_stay_unwritten() {
        const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);
        const FULL: u64 = 1_800_000_000;
        let stored = Checkpoint {
            high_water: Some("2027-01-15T08:00:00.000000Z".into()),
            last_full_sweep: Some(FULL),
            last_full_pages: Some(1),
            ..Default::default()
        };
        let marks = |hw: &str, full: Option<u64>| Checkpoint {
            high_water: Some(hw.into()),
            last_full_sweep: full,
            ..stored.clone()
        };
        let same = |cp: &Checkpoint, base: &Checkpoint| cp.moved_only_in_time(base, HOUR);
        assert!(same(&stored, &stored), "unchanged");
        assert!(
            same(&marks("2027-01-15T08:59:59Z", Some(FULL + 3599)), &stored),
            "both marks just under an hour on"
        );
        let written = [
            (
                "the mark an hour on",
                marks("2027-01-15T09:00:00Z", Some(FULL)),
            ),
            (
                "the mark moved back",
                marks("2027-01-15T07:59:00Z", Some(FULL)),
            ),
            ("the mark unreadable", marks("yesterday", Some(FULL))),
            (
                "a full sweep an hour on",
                marks("2027-01-15T08:00:00Z", Some(FULL + 3600)),
            ),
            (
                "a full sweep moved back",
                marks("2027-01-15T08:00:00Z", Some(FULL - 1)),
            ),
            (
                "another page count",
                Checkpoint {
                    last_full_pages: Some(2),
                    ..stored.clone()
                },
            ),
            (
                "the probe's answer",
                Checkpoint {
                    updated_at_filter: Some(UpdatedAtProbe {
                        accepted: false,
                        at: FULL,
                    }),
                    ..stored.clone()
                },
            ),
        ];
        for (what, cp) in written {
            assert!(!same(&cp, &stored), "{what}");
        }
        // A first full sweep, and a sweep's position left in the store, are written.
        let never_full = Checkpoint {
            last_full_sweep: None,
            ..stored.clone()
        };
        assert!(!same(&stored, &never_full), "a first full sweep");
        let with_position = Checkpoint {
            position: Some(Box::default()),
            ..stored.clone()
        };
        assert!(!same(&stored, &with_position), "a position to clear");
    }

    /// A claim's install and the tenant's writes share a group commit and apply in their order:
    /// the install replaces every record, mark and checkpoint the cache held for the tenant (and
    /// nothing of another tenant's), sets the sync mark, and a write after it adds to it.
    #[test]
    fn an_install_in_a_group_replaces_the_tenants_cache_and_later_writes_add_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = StateStore::open_or_recover(dir.path()).unwrap();
        let known = |status: &str| Known {
            fingerprint: [1; 16],
            status: status.into(),
            severity: None,
            silent: false,
        };
        let before = Write::Commit(Commit {
            remember: vec![("a".into(), known("OPEN")), ("b".into(), known("OPEN"))],
            checkpoint: Some(Checkpoint {
                high_water: Some("2026-01-01T00:00:00Z".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        s.write_now("t1", before).unwrap();
        s.write_now("t1", Write::Mark(vec![("m".into(), known("OPEN"))]))
            .unwrap();
        s.write_now("t10", Write::Mark(vec![("m".into(), known("OPEN"))]))
            .unwrap();
        let image = TenantImage {
            checkpoint: None,
            issues: [("c".to_string(), known("RESOLVED"))].into(),
            marks: Default::default(),
        };
        let after = Change::Write(Write::Commit(Commit {
            remember: vec![("d".into(), known("OPEN"))],
            ..Default::default()
        }));
        s.db.apply(
            &[
                ("t1", &Change::Install(Box::new(image)), Some((42, false))),
                ("t1", &after, None),
            ],
            Durable::InNats,
        )
        .unwrap();
        assert_eq!(
            s.known("t1", &["a", "b", "c", "d"]).unwrap(),
            vec![None, None, Some(known("RESOLVED")), Some(known("OPEN"))]
        );
        assert!(s.in_flight("t1").unwrap().is_empty());
        assert_eq!(s.checkpoint("t1").unwrap(), None);
        assert_eq!(s.sync_mark("t1").unwrap(), Some((42, false)));
        assert_eq!(
            s.in_flight("t10").unwrap().len(),
            1,
            "another tenant's mark stays"
        );
    }

    /// State NATS holds (a cluster tenant's installed image) is committed without an fsync; a
    /// durable commit makes it durable too; the writer thread syncs it within [`SYNC_EVERY`],
    /// and when the store closes.
    #[test]
    fn state_nats_holds_reaches_the_disk_within_a_second_and_at_close() {
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let known = Known {
            fingerprint: [3; 16],
            status: "OPEN".into(),
            severity: None,
            silent: false,
        };
        let image = TenantImage {
            checkpoint: None,
            issues: [("i1".to_string(), known.clone())].into(),
            marks: Default::default(),
        };
        // Without a writer thread nothing syncs behind the test's back.
        {
            let db = Db {
                db: Database::create(dir.path().join(FILE)).unwrap(),
                path: dir.path().join(FILE),
                unsynced: std::sync::atomic::AtomicBool::new(false),
            };
            db.install("t1", &image, 7).unwrap();
            assert!(db.unsynced.load(Ordering::Acquire), "not on disk yet");
            assert!(db.cached("t1").unwrap());
            // A single node's write is durable at once, and takes the earlier ones with it.
            let empty = Change::Write(Write::Commit(Commit::default()));
            db.apply(&[("t2", &empty, None)], Durable::Yes).unwrap();
            assert!(!db.unsynced.load(Ordering::Acquire));
            db.install("t3", &image, 8).unwrap();
            assert!(db.unsynced.load(Ordering::Acquire));
            db.sync();
            assert!(!db.unsynced.load(Ordering::Acquire));
        }
        let (s, _) = StateStore::open_or_recover(dir.path()).unwrap();
        assert_eq!(s.known("t1", &["i1"]).unwrap(), vec![Some(known.clone())]);
        // The writer thread syncs within a second.
        s.db.install("t4", &image, 9).unwrap();
        let start = Instant::now();
        while s.db.unsynced.load(Ordering::Acquire) {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "never synced"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // And when the store closes.
        s.db.install("t5", &image, 10).unwrap();
        drop(s);
        let (s, _) = StateStore::open_or_recover(dir.path()).unwrap();
        assert_eq!(s.known("t5", &["i1"]).unwrap(), vec![Some(known)]);
        assert_eq!(s.sync_mark("t5").unwrap(), Some((10, false)));
    }

    #[test]
    fn commits_survive_reopening_and_garbage_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (s, note) = StateStore::open_or_recover(dir.path()).unwrap();
            assert!(note.is_none());
            let k = Known {
                fingerprint: [7; 16],
                status: "OPEN".into(),
                severity: Some("HIGH".into()),
                silent: false,
            };
            let cp = Checkpoint {
                high_water: Some("2026-01-01T00:00:00Z".into()),
                last_full_sweep: Some(5),
                position: None,
                last_full_pages: None,
                updated_at_filter: None,
                baselined: None,
                feed: None,
            };
            s.write_now(
                "acme",
                Write::Commit(Commit {
                    remember: vec![("i1".into(), k.clone())],
                    checkpoint: Some(cp),
                    ..Default::default()
                }),
            )
            .unwrap();
            assert_eq!(s.known("acme", &["i1", "i2"]).unwrap(), vec![Some(k), None]);
            assert_eq!(s.known("other", &["i1"]).unwrap(), vec![None]);
        }
        let (s, _) = StateStore::open_or_recover(dir.path()).unwrap();
        assert_eq!(
            s.checkpoint("acme").unwrap().unwrap().last_full_sweep,
            Some(5)
        );
        drop(s);
        std::fs::write(
            dir.path().join(FILE),
            b"this is not a redb file at all, not even close",
        )
        .unwrap();
        let (s, note) = StateStore::open_or_recover(dir.path()).unwrap();
        assert!(note.unwrap().contains("was unreadable"));
        assert_eq!(s.checkpoint("acme").unwrap(), None, "a fresh store");
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("state.redb.corrupt-")
            })
            .collect();
        assert_eq!(aside.len(), 1, "the damaged file is kept for inspection");
    }

    #[test]
    fn an_empty_store_file_is_reported_as_damage() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"").unwrap();
        let (s, note) = StateStore::open_or_recover(dir.path()).unwrap();
        let note = note.expect("reported");
        assert!(
            note.contains("was unreadable (the file is empty (0 bytes))")
                && note.contains("corrupt-"),
            "{note}"
        );
        assert_eq!(s.checkpoint("acme").unwrap(), None);
    }

    #[test]
    fn a_store_in_use_is_refused_not_moved_aside_and_reopens_once_released() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = StateStore::open_or_recover(dir.path()).unwrap();
        let err = StateStore::open_or_recover(dir.path()).err().unwrap();
        assert!(
            err.to_string()
                .contains("another wiz-connector is using this state directory"),
            "{err}"
        );
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![FILE.to_string()], "nothing moved aside");
        // Dropping the last handle stops the writer and closes the file: it opens again at once.
        let s2 = s.clone();
        drop(s);
        drop(s2);
        let (_s, note) = StateStore::open_or_recover(dir.path()).unwrap();
        assert!(note.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_are_grouped_and_all_durable() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = StateStore::open_or_recover(dir.path()).unwrap();
        let known = |n: u8| Known {
            fingerprint: [n; 16],
            status: "OPEN".into(),
            severity: None,
            silent: false,
        };
        let mut tasks = Vec::new();
        for t in 0..40u8 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let tenant = format!("t{t}");
                s.write(&tenant, Write::Mark(vec![("m".into(), known(t))]))
                    .await?;
                s.write(
                    &tenant,
                    Write::Commit(Commit {
                        remember: vec![("i".into(), known(t))],
                        settle: vec!["m".into()],
                        checkpoint: Some(Checkpoint {
                            high_water: None,
                            last_full_sweep: Some(t as u64),
                            position: None,
                            last_full_pages: None,
                            updated_at_filter: None,
                            baselined: None,
                            feed: None,
                        }),
                    }),
                )
                .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        drop(s);
        let (s, _) = StateStore::open_or_recover(dir.path()).unwrap();
        for t in 0..40u8 {
            let tenant = format!("t{t}");
            assert_eq!(s.known(&tenant, &["i"]).unwrap(), vec![Some(known(t))]);
            assert_eq!(s.in_flight(&tenant).unwrap(), vec![]);
            assert_eq!(
                s.checkpoint(&tenant).unwrap().unwrap().last_full_sweep,
                Some(t as u64)
            );
        }
    }

    #[test]
    fn records_without_a_severity_still_read_and_scans_stay_within_the_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = StateStore::open_or_recover(dir.path()).unwrap();
        let known = |status: &str, severity: Option<&str>| Known {
            fingerprint: [1; 16],
            status: status.into(),
            severity: severity.map(Into::into),
            silent: false,
        };
        // A record as the first version wrote it: fingerprint and status only.
        let mut legacy = vec![1u8; 16];
        legacy.extend_from_slice(b"OPEN");
        assert_eq!(decode(&legacy), Some(known("OPEN", None)));
        assert_eq!(decode(&[1; 8]), None, "too short for a fingerprint");
        let remember = |r: Vec<(String, Known)>| {
            Write::Commit(Commit {
                remember: r,
                ..Default::default()
            })
        };
        s.write_now(
            "a",
            remember(vec![
                ("i1".into(), known("OPEN", Some("LOW"))),
                ("i2".into(), known("RESOLVED", Some("HIGH"))),
                ("i3".into(), known("IN_PROGRESS", None)),
                (
                    "i4".into(),
                    Known {
                        silent: true,
                        ..known("IN_PROGRESS", Some("LOW"))
                    },
                ),
            ]),
        )
        .unwrap();
        // Neighbours whose ids share the prefix, or sort right after it.
        s.write_now("a-b", remember(vec![("i9".into(), known("OPEN", None))]))
            .unwrap();
        s.write_now("ab", remember(vec![("i8".into(), known("OPEN", None))]))
            .unwrap();
        let watched = ["OPEN".to_string(), "IN_PROGRESS".to_string()];
        let got = s.known_with_status("a", &watched).unwrap();
        assert_eq!(
            got,
            vec![
                ("i1".to_string(), known("OPEN", Some("LOW"))),
                ("i3".to_string(), known("IN_PROGRESS", None)),
                (
                    "i4".to_string(),
                    Known {
                        silent: true,
                        ..known("IN_PROGRESS", Some("LOW"))
                    }
                ),
            ]
        );
        assert_eq!(s.known_with_status("nobody", &watched).unwrap(), vec![]);

        // In-flight marks: written before a delivery, settled by the commit after it.
        let marks = vec![
            ("i5".to_string(), known("OPEN", Some("HIGH"))),
            ("i6".to_string(), known("OPEN", None)),
        ];
        s.write_now("a", Write::Mark(marks.clone())).unwrap();
        s.write_now("ab", Write::Mark(marks[..1].to_vec())).unwrap();
        assert_eq!(s.in_flight("a").unwrap(), marks);
        s.write_now(
            "a",
            Write::Commit(Commit {
                remember: vec![marks[0].clone()],
                settle: vec!["i5".into(), "never-marked".into()],
                ..Default::default()
            }),
        )
        .unwrap();
        assert_eq!(s.in_flight("a").unwrap(), marks[1..].to_vec());
        assert_eq!(s.in_flight("ab").unwrap(), marks[..1].to_vec());
        assert_eq!(
            s.known("a", &["i5"]).unwrap(),
            vec![Some(marks[0].1.clone())]
        );
    }
}
