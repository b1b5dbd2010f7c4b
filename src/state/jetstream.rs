//! The replicated state backend (cluster mode): every tenant's checkpoint, known issues and
//! in-flight marks live on one subject per tenant, `<stream>.<tenant>`, of a JetStream stream, so
//! they move with the tenant to whichever replica owns it. The local redb stays as a cache that
//! every read goes to; every write goes to JetStream first, then to redb.
//!
//! **Layout** (chosen by measuring; see docs/scale-out.md): a tenant's subject holds a snapshot
//! (one or more parts) followed by one delta message per write (a page's commit or its marks), in
//! the binary records of [`super::codec`]. When the deltas outweigh half the snapshot, a new
//! snapshot is written and everything before it on the subject is purged.
//!
//! **Fencing**: every message is published with `Nats-Expected-Last-Subject-Sequence` set to the
//! sequence this replica last saw on the subject. Taking a tenant over starts with a `claim`
//! message, so a replica that lost the tenant (a rebalance, or a pause past `failover_after`)
//! fails its next write and stops that tenant: it can never write over the new owner's state.
//!
//! **Handover**: a replica that gives a tenant up (rebalance, SIGTERM) finishes its page, commits
//! and writes `release`. A replica taking a tenant over waits while the last writer is alive and
//! has not released it, so nothing is polled by two replicas and nothing is repeated; a dead last
//! writer (silent for `failover_after`) is not waited for.
//!
//! **NATS unreachable**: writes go to redb only and the tenant is marked dirty; its next write
//! once NATS answers publishes a whole snapshot (fenced as usual) instead of a delta.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{
    self,
    context::PublishErrorKind,
    message::{PublishMessage, StreamMessage},
};
use dashmap::DashMap;

use super::codec::{encode_write, Format, TenantImage};
use super::Write;

// The first format's headers: one each for the operation, the writer, its epoch and a
// snapshot's part.
const OP: &str = "Wiz-Op";
const REPLICA: &str = "Wiz-Replica";
const EPOCH: &str = "Wiz-Epoch";
const PART: &str = "Wiz-Part";
/// The compact format's one header: `<op> <epoch> <part> <incarnation> <replica>`, the part
/// `i/k` of a snapshot and `-` otherwise, the writer's incarnation in base 36 (an idle tenant's
/// message: about 30 bytes of headers instead of 58).
const META: &str = "Wiz";
const ROLLUP: &str = "Nats-Rollup";

/// Longest wait for one JetStream publish and its ack before the write counts as offline.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// Size of one snapshot part: well under NATS's default 1 MiB message limit.
const PART_BYTES: usize = 256 * 1024;
/// Deltas may grow to half the snapshot plus this before a new snapshot is written.
const COMPACT_SLACK: u64 = 64 * 1024;
/// A tenant whose whole image stays within this many bytes replaces it at every write (a
/// snapshot, then everything before it purged) instead of adding a delta: an idle tenant's
/// subject holds one message, not a delta per poll until the compaction slack is reached.
const TINY_IMAGE: u64 = 2048;

/// The replica ids this replica sees alive (leaving ones included): a claim waits for a live
/// last writer to release. Kept up to date by the membership loop.
#[derive(Debug, Default)]
pub struct LiveSet {
    /// Each live replica's incarnation (see [`crate::cluster::membership::MemberValue`]; 0 for
    /// a version that announces none).
    ids: RwLock<BTreeMap<String, u64>>,
    /// Every live replica reads the compact format (see [`Format`]): state is written in it.
    /// False until the first listing, and whenever a replica of an earlier version is alive,
    /// which would misread it.
    compact: std::sync::atomic::AtomicBool,
}

impl LiveSet {
    pub fn set(&self, ids: BTreeMap<String, u64>, compact: bool) {
        *self.ids.write().expect("live set lock") = ids;
        self.compact
            .store(compact, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a message written by `incarnation` of `replica` comes from a replica that runs
    /// now: it is alive, and (when both incarnations are known) it has not restarted since. A
    /// restarted replica no longer runs what its previous incarnation held, so nobody waits for
    /// it to release those tenants.
    pub fn holds(&self, replica: &str, incarnation: u64) -> bool {
        match self.ids.read().expect("live set lock").get(replica) {
            None => false,
            Some(&live) => incarnation == 0 || live == 0 || live == incarnation,
        }
    }

    /// The format state is written in now.
    pub fn format(&self) -> Format {
        if self.compact.load(std::sync::atomic::Ordering::Relaxed) {
            Format::Compact
        } else {
            Format::Json
        }
    }
}

/// Where this replica stands on a tenant it owns.
#[derive(Debug, Clone, Copy, Default)]
struct Owned {
    /// The subject's last sequence as this replica wrote it: the fence of the next write.
    seq: u64,
    /// The sequence of this replica's claim: marks its messages as this ownership's.
    epoch: u64,
    /// Writes went to redb only (NATS was unreachable): the next write publishes a snapshot.
    dirty: bool,
    delta_bytes: u64,
    snapshot_bytes: u64,
    /// `snapshot_bytes` and `delta_bytes` bound the tenant's whole image: a subject this
    /// replica found empty, snapshotted, or installed. After a claim that kept an image it
    /// did not measure, the first write compacts (which measures it).
    sized: bool,
    /// Set by a claim that found state on the subject: the first write is appended as a delta
    /// even when the image is tiny, and the next one replaces them all. Replacing rolls the
    /// subject up, purging the earlier owner's messages, which NATS 2.9 does 7 to 86 times
    /// slower than a plain publish (docs/benchmarks.md, session 15): a failover's first commits
    /// would queue behind those purges. Costs the moved tenant two more small messages until
    /// its next write.
    append_first: bool,
    /// The format of everything the subject holds of the image since the last snapshot, when
    /// it is one format (`None`: unknown or mixed). A tenant whose image is not in the format
    /// written now does not leave out idle writes (see [`Replicated::holds_current`]): its next
    /// write moves it to that format.
    format: Option<Format>,
    /// The NATS client's connect count (see [`Replicated::connects`]) when this replica last
    /// wrote the subject. After a reconnect the subject may be gone (NATS restarted without its
    /// store), which only a write finds out: the tenant's next poll then writes, idle or not.
    connects: u64,
}

/// What a state message's headers say, in either format ("" or 0 for what it lacks), and its
/// sequence: read from a tenant's last message by claims, from each message by loads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LastWrite {
    pub seq: u64,
    pub op: String,
    pub replica: String,
    pub epoch: u64,
    /// The writer's incarnation (0: unknown, a message of the first format).
    pub incarnation: u64,
    /// A snapshot's `i/k` ("" for other operations).
    pub part: String,
}

/// Why a replicated write did not land.
#[derive(Debug)]
pub enum PublishFailure {
    /// Another replica wrote since this one's last write: it owns the tenant now.
    Fenced,
    /// NATS did not answer (down, partitioned, slow).
    Offline(String),
}

pub struct Replicated {
    js: jetstream::Context,
    client: async_nats::Client,
    stream: jetstream::stream::Stream,
    stream_name: String,
    /// The stream's configuration, to make it again when NATS lost it.
    stream_config: jetstream::stream::Config,
    /// When the stream was last found missing and made again (at most once a second).
    remade_at: std::sync::Mutex<Option<std::time::Instant>>,
    replica: String,
    /// This run of the replica (see [`crate::cluster::membership::MemberValue::incarnation`]),
    /// written in every compact message so a claim can tell a restarted holder from a running
    /// one.
    incarnation: u64,
    owned: DashMap<String, Owned>,
    live: Arc<LiveSet>,
    /// This replica's membership lease: tenants check it before polling and delivering.
    lease: Arc<crate::cluster::lease::Lease>,
    /// Bounds the claims, re-assertions and releases in flight at once, so a placement that
    /// moves many tenants queues them here instead of flooding NATS.
    ownership: tokio::sync::Semaphore,
    /// The stream answers direct gets (see [`Replicated::open`]); cleared when one fails for
    /// a reason other than an empty subject, so a server without them costs one failure.
    direct: std::sync::atomic::AtomicBool,
}

/// A new owner publishes a fresh snapshot when it finds more messages than this on the tenant's
/// subject (previous owners' deltas, claims, holds and releases): markers are not counted as
/// deltas, so without this an idle tenant moved back and forth would grow without bound.
const COMPACT_MESSAGES: usize = 16;

/// A turn among the ownership operations in flight (see [`Replicated::turn`]).
pub(crate) type Turn<'a> = tokio::sync::SemaphorePermit<'a>;

/// Claims, re-assertions and releases in flight at once (see [`Replicated::ownership`]).
const OWNERSHIP_CONCURRENCY: usize = 64;

impl Replicated {
    /// Opens (creating when missing) the state stream.
    pub async fn open(
        client: async_nats::Client,
        stream_name: &str,
        replicas: usize,
        replica: &str,
        incarnation: u64,
        live: Arc<LiveSet>,
        lease: Arc<crate::cluster::lease::Lease>,
    ) -> Result<Replicated, String> {
        let js = jetstream::new(client.clone());
        let stream_config = jetstream::stream::Config {
            name: stream_name.to_string(),
            subjects: vec![format!("{stream_name}.*")],
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            allow_rollup: true,
            // Claims read a tenant's last message with a direct get, which any server holding
            // the stream answers without the JetStream API's leader round trip. A stale answer
            // is safe: the claim is fenced at the sequence it read.
            allow_direct: true,
            ..Default::default()
        };
        let mut stream = js
            .get_or_create_stream(stream_config.clone())
            .await
            .map_err(|e| {
                format!("cannot create or open the state stream {stream_name} (is JetStream enabled on the server, `-js`?): {e}")
            })?;
        // A stream made by an earlier version has no direct gets: turned on once (claims fall
        // back to the API's get while they are off).
        let direct = match stream.info().await {
            Ok(info) if !info.config.allow_direct => {
                let mut config = info.config.clone();
                config.allow_direct = true;
                match js.update_stream(config).await {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::warn!(stream = %stream_name, error = %e, "cannot turn on direct gets on the state stream; claims read through the JetStream API");
                        false
                    }
                }
            }
            Ok(_) => true,
            Err(_) => false,
        };
        Ok(Replicated {
            js,
            client,
            stream,
            stream_name: stream_name.to_string(),
            stream_config,
            remade_at: std::sync::Mutex::new(None),
            replica: replica.to_string(),
            incarnation,
            owned: DashMap::new(),
            live,
            lease,
            ownership: tokio::sync::Semaphore::new(OWNERSHIP_CONCURRENCY),
            direct: std::sync::atomic::AtomicBool::new(direct),
        })
    }

    /// Messages on the tenant's subject now (snapshot parts, deltas and every owner's markers).
    pub async fn messages(&self, tenant: &str) -> Result<usize, String> {
        use futures_util::StreamExt;
        let subject = self.subject(tenant);
        let mut info = self
            .stream
            .info_with_subjects(&subject)
            .await
            .map_err(|e| e.to_string())?;
        while let Some(item) = info.next().await {
            let (s, n) = item.map_err(|e| e.to_string())?;
            if s == subject {
                return Ok(n);
            }
        }
        Ok(0)
    }

    /// After a claim: whether the subject has grown enough to be compacted now (see
    /// [`COMPACT_MESSAGES`]). A failed count says no: the next compaction by size still comes.
    pub async fn crowded(&self, tenant: &str) -> bool {
        self.messages(tenant)
            .await
            .is_ok_and(|n| n > COMPACT_MESSAGES)
    }

    /// This replica's membership lease.
    pub fn lease(&self) -> &crate::cluster::lease::Lease {
        &self.lease
    }

    /// Waits for a turn among the ownership operations in flight. A claim takes one turn for
    /// its look and its take together (see [`Replicated::claim`]).
    pub(crate) async fn turn(&self) -> Turn<'_> {
        self.ownership
            .acquire()
            .await
            .expect("the ownership semaphore is never closed")
    }

    /// After a lapse of the lease: writes a fenced `hold` marker on the tenant's subject, which
    /// succeeds only if nobody wrote there since this replica's last write. `Err(Fenced)`:
    /// another replica took the tenant over meanwhile; stop it. Afterwards a claim by another
    /// replica that read the subject before this marker is refused too.
    pub async fn reassert(&self, tenant: &str) -> Result<u64, PublishFailure> {
        let _turn = self.turn().await;
        let Some(mut owned) = self.owned.get(tenant).map(|o| *o) else {
            return Err(PublishFailure::Fenced);
        };
        match self.marker(tenant, "hold", owned.seq, owned.epoch).await {
            Ok(seq) => {
                owned.seq = seq;
                self.owned.insert(tenant.to_string(), owned);
                Ok(seq)
            }
            Err(PublishFailure::Fenced) => {
                if self.lost(tenant, &mut owned).await {
                    // Nobody holds it; the next write republishes it whole.
                    return Ok(0);
                }
                self.owned.remove(tenant);
                Err(PublishFailure::Fenced)
            }
            Err(e) => Err(e),
        }
    }

    fn subject(&self, tenant: &str) -> String {
        format!("{}.{tenant}", self.stream_name)
    }

    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Publishes a marker (`claim`, `hold`, `release`: no payload) fenced at `expected`, in the
    /// format state is written in now.
    async fn marker(
        &self,
        tenant: &str,
        op: &str,
        expected: u64,
        epoch: u64,
    ) -> Result<u64, PublishFailure> {
        let format = self.live.format();
        self.publish(tenant, op, Vec::new(), format, expected, epoch, None)
            .await
    }

    /// Publishes one state message fenced at `expected`, its headers in `format` (the format
    /// of `payload`, which the caller encoded).
    #[allow(clippy::too_many_arguments)]
    async fn publish(
        &self,
        tenant: &str,
        op: &str,
        payload: Vec<u8>,
        format: Format,
        expected: u64,
        epoch: u64,
        part: Option<(usize, usize)>,
    ) -> Result<u64, PublishFailure> {
        let mut m = PublishMessage::build()
            .payload(payload.into())
            .expected_last_subject_sequence(expected);
        m = match format {
            Format::Compact => {
                let meta = compact_header(op, epoch, part, self.incarnation, &self.replica);
                m.header(META, meta.as_str())
            }
            Format::Json => {
                let mut m = m
                    .header(OP, op)
                    .header(REPLICA, self.replica.as_str())
                    .header(EPOCH, epoch.to_string().as_str());
                if let Some((i, k)) = part {
                    m = m.header(PART, format!("{i}/{k}").as_str());
                }
                m
            }
        };
        if let Some((_, k)) = part {
            if k == 1 {
                // A whole snapshot in one message replaces everything before it on the subject,
                // atomically with its fenced write (the stream allows roll-ups): no purge after.
                m = m.header(ROLLUP, "sub");
            }
        }
        let subject = self.subject(tenant);
        let sent = tokio::time::timeout(PUBLISH_TIMEOUT, async {
            self.js.send_publish(subject, m).await?.await
        })
        .await;
        match sent {
            Err(_) => Err(PublishFailure::Offline(format!(
                "no JetStream ack within {}s",
                PUBLISH_TIMEOUT.as_secs()
            ))),
            Ok(Ok(ack)) => Ok(ack.sequence),
            Ok(Err(e)) if e.kind() == PublishErrorKind::WrongLastSequence => {
                Err(PublishFailure::Fenced)
            }
            Ok(Err(e)) if e.kind() == PublishErrorKind::StreamNotFound => {
                Err(PublishFailure::Offline(self.remake_stream().await))
            }
            Ok(Err(e)) => Err(PublishFailure::Offline(e.to_string())),
        }
    }

    /// The state stream is gone (NATS restarted without its store): makes it again, at most
    /// once a second whatever the number of tenants writing, and says what happened. Each
    /// tenant then republishes its state from the local cache (see [`Replicated::lost`]).
    async fn remake_stream(&self) -> String {
        {
            let mut at = self.remade_at.lock().expect("remade_at lock");
            if at.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return format!("the state stream {} is missing", self.stream_name);
            }
            *at = Some(std::time::Instant::now());
        }
        match self
            .js
            .get_or_create_stream(self.stream_config.clone())
            .await
        {
            Ok(_) => {
                tracing::warn!(stream = %self.stream_name, "the state stream was missing (NATS lost its store?); made it again: each tenant republishes its state from this replica's cache");
                format!(
                    "the state stream {} was missing; made again",
                    self.stream_name
                )
            }
            Err(e) => format!(
                "the state stream {} is missing and cannot be made again: {e}",
                self.stream_name
            ),
        }
    }

    /// A fenced write found the tenant's subject empty: NATS lost this tenant's state (its
    /// store was replaced), nobody took it over. Its next write starts the subject again from
    /// the local cache, as a snapshot (the tenant is dirty).
    async fn lost(&self, tenant: &str, owned: &mut Owned) -> bool {
        if !matches!(self.last_write(tenant).await, Ok(None)) {
            return false;
        }
        tracing::warn!(tenant = %tenant, "the tenant's state is gone from NATS; republishing it from this replica's cache");
        owned.seq = 0;
        owned.epoch = 0;
        owned.dirty = true;
        self.owned.insert(tenant.to_string(), *owned);
        true
    }

    /// The last message on the tenant's subject, if any.
    pub async fn last_write(&self, tenant: &str) -> Result<Option<LastWrite>, String> {
        Ok(self.last_message(tenant).await?.as_ref().map(last_of))
    }

    /// The last message on the tenant's subject by a direct get (one request any server holding
    /// the stream answers; see [`Replicated::open`]), falling back to the JetStream API's get.
    /// Only for claims: a stale answer makes the fenced claim fail, never succeed wrongly.
    async fn last_message_direct(&self, tenant: &str) -> Result<Option<StreamMessage>, String> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        use std::sync::atomic::Ordering;
        if self.direct.load(Ordering::Relaxed) {
            match self
                .stream
                .direct_get_last_for_subject(self.subject(tenant))
                .await
            {
                Ok(m) => return Ok(Some(m)),
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(None),
                Err(e) => {
                    // The stream may be gone (NATS lost its store) or not answer direct gets:
                    // the API's get tells which, and makes the stream again when missing.
                    if matches!(e.kind(), DirectGetErrorKind::ErrorResponse(..)) {
                        self.direct.store(false, Ordering::Relaxed);
                        tracing::warn!(stream = %self.stream_name, error = %e, "direct gets refused on the state stream; claims read through the JetStream API");
                    }
                }
            }
        }
        self.last_message(tenant).await
    }

    /// The last message on the tenant's subject, read through the stream's leader.
    async fn last_message(&self, tenant: &str) -> Result<Option<StreamMessage>, String> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        match self
            .stream
            .get_last_raw_message_by_subject(&self.subject(tenant))
            .await
        {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e)
                if matches!(e.kind(), LastRawMessageErrorKind::JetStream(j)
                    if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                Err(format!(
                    "cannot read the state of tenant {tenant}: {}",
                    self.remake_stream().await
                ))
            }
            Err(e) => Err(format!("cannot read the state of tenant {tenant}: {e}")),
        }
    }

    /// Reads the tenant's image from its subject, up to (and including) `upto`, and how many
    /// messages it read.
    pub async fn load(&self, tenant: &str, upto: u64) -> Result<(TenantImage, usize), String> {
        let subject = self.subject(tenant);
        let mut image = TenantImage::default();
        let mut snapshot: Option<TenantImage> = None;
        let mut seq = 1;
        let mut read = 0;
        while seq <= upto {
            let m = self
                .stream
                .raw_message_builder()
                .sequence(seq)
                .next_by_subject(subject.clone())
                .send()
                .await
                .map_err(|e| format!("cannot read the state of tenant {tenant}: {e}"))?;
            read += 1;
            let meta = last_of(&m);
            let bad = |e: String| format!("state of tenant {tenant}, message {}: {e}", m.sequence);
            match meta.op.as_str() {
                "delta" => {
                    snapshot = None;
                    image.apply(&m.payload).map_err(bad)?;
                }
                "snap" => {
                    let part = meta.part;
                    let (i, k) = part
                        .split_once('/')
                        .and_then(|(i, k)| {
                            Some((i.parse::<usize>().ok()?, k.parse::<usize>().ok()?))
                        })
                        .ok_or_else(|| bad(format!("bad snapshot part {part:?}")))?;
                    if i == 1 {
                        snapshot = Some(TenantImage::default());
                    }
                    if let Some(s) = snapshot.as_mut() {
                        s.apply(&m.payload).map_err(bad)?;
                        if i == k {
                            image = snapshot.take().expect("checked");
                        }
                    }
                }
                _ => snapshot = None,
            }
            seq = m.sequence + 1;
        }
        Ok((image, read))
    }

    /// Decides how to take `tenant` over. `local` is the subject sequence the local cache is in
    /// sync with and whether it holds writes NATS has not seen; `local_has_state` says whether the
    /// cache holds anything for the tenant (single-node history to import). With `force`, a live
    /// holder is not waited for (fencing still protects its state).
    ///
    /// The caller holds one [`Replicated::turn`] from here until [`Replicated::take`] returned
    /// (both ask for it):
    /// with a turn for each, a claim's take queued behind every look that arrived after its own
    /// (the queue is first come, first served), so while a failover's claims kept arriving
    /// almost none completed, and they all completed at once when the arrivals stopped, their
    /// first polls bunched after them (measured at 300,000 tenants: looks and takes waiting 2 to
    /// 3 s each, then 1,500 takeovers in one second on a survivor).
    pub async fn claim(
        &self,
        _turn: &Turn<'_>,
        tenant: &str,
        local: Option<(u64, bool)>,
        local_has_state: bool,
        force: bool,
    ) -> Result<Claim, String> {
        let message = self.last_message_direct(tenant).await?;
        let last = message.as_ref().map(last_of);
        if let Some(l) = &last {
            let held = l.op != "release"
                && l.replica != self.replica
                && self.live.holds(&l.replica, l.incarnation);
            if held && !force {
                return Ok(Claim::Wait {
                    holder: l.replica.clone(),
                });
            }
        }
        let last_seq = last.as_ref().map_or(0, |l| l.seq);
        // A one-part snapshot rolled everything before it up: it is the subject's only message
        // and the whole image (an idle tenant's usual state), so nothing more is read.
        let whole = message.as_ref().filter(|_| {
            last.as_ref()
                .is_some_and(|l| l.op == "snap" && l.part == "1/1")
        });
        let (load, messages) = match (local, last_seq) {
            // Nothing in NATS: this replica's local state (single-node history) is imported.
            (_, 0) if local_has_state => (ClaimLoad::Publish, Some(0)),
            (_, 0) => (ClaimLoad::Keep, Some(0)),
            // The cache is what NATS holds (this replica wrote last).
            (Some((seq, true)), n) if seq == n => (ClaimLoad::Publish, whole.map(|_| 1)),
            (Some((seq, false)), n) if seq == n => (ClaimLoad::Keep, whole.map(|_| 1)),
            (_, n) => match whole {
                Some(m) => {
                    let mut image = TenantImage::default();
                    image.apply(&m.payload).map_err(|e| {
                        format!("state of tenant {tenant}, message {}: {e}", m.sequence)
                    })?;
                    (ClaimLoad::Install(Box::new(image)), Some(1))
                }
                None => {
                    let (image, read) = self.load(tenant, n).await?;
                    (ClaimLoad::Install(Box::new(image)), Some(read))
                }
            },
        };
        Ok(Claim::Take {
            last_seq,
            load,
            crowded: messages.map(|n| n + 1 > COMPACT_MESSAGES),
            format: whole.map(|m| {
                if m.headers.get(META).is_some() {
                    Format::Compact
                } else {
                    Format::Json
                }
            }),
        })
    }

    /// Writes the claim marker (or, for [`ClaimLoad::Publish`], a snapshot of `image`), fenced at
    /// `last_seq`; afterwards this replica owns the tenant. Under the claim's turn (see
    /// [`Replicated::claim`]).
    pub async fn take(
        &self,
        _turn: &Turn<'_>,
        tenant: &str,
        last_seq: u64,
        image: Option<&TenantImage>,
        format: Option<Format>,
    ) -> Result<u64, PublishFailure> {
        let connects = self.connects();
        let epoch_seq = self.marker(tenant, "claim", last_seq, 0).await?;
        let mut owned = Owned {
            connects,
            seq: epoch_seq,
            epoch: epoch_seq,
            // Nothing was on the subject before the claim: the image is empty.
            sized: last_seq == 0,
            append_first: last_seq != 0,
            format,
            ..Default::default()
        };
        if let Some(img) = image {
            owned.seq = self.publish_snapshot(tenant, &mut owned, img).await?;
        }
        self.owned.insert(tenant.to_string(), owned);
        Ok(owned.seq)
    }

    async fn publish_snapshot(
        &self,
        tenant: &str,
        owned: &mut Owned,
        image: &TenantImage,
    ) -> Result<u64, PublishFailure> {
        let format = self.live.format();
        let connects = self.connects();
        let parts = image.encode_parts(PART_BYTES, format);
        let k = parts.len();
        let mut first = None;
        let mut bytes = 0u64;
        for (i, p) in parts.into_iter().enumerate() {
            bytes += p.len() as u64;
            let seq = self
                .publish(
                    tenant,
                    "snap",
                    p,
                    format,
                    owned.seq,
                    owned.epoch,
                    Some((i + 1, k)),
                )
                .await?;
            first.get_or_insert(seq);
            owned.seq = seq;
        }
        // Everything before the snapshot is superseded (a one-part snapshot rolled it up). A
        // failed purge only leaves extra bytes.
        if let Some(first) = first.filter(|_| k > 1) {
            if let Err(e) = self
                .stream
                .purge()
                .filter(self.subject(tenant))
                .sequence(first)
                .await
            {
                tracing::warn!(tenant = %tenant, error = %e, "could not purge the state before a snapshot; it is kept until the next one");
            }
        }
        owned.snapshot_bytes = bytes;
        owned.delta_bytes = 0;
        owned.sized = true;
        owned.append_first = false;
        owned.format = Some(format);
        owned.connects = connects;
        Ok(owned.seq)
    }

    /// Publishes one write as a delta, fenced. `Ok(None)`: NATS was unreachable and the write
    /// must go to the cache only (the tenant is now dirty). `Err(Fenced)`: stop the tenant.
    pub async fn publish_write(
        &self,
        tenant: &str,
        w: &Write,
    ) -> Result<WriteOutcome, PublishFailure> {
        let Some(mut owned) = self.owned.get(tenant).map(|o| *o) else {
            return Err(PublishFailure::Fenced);
        };
        if owned.dirty || !self.connected() {
            self.set_dirty(tenant);
            return Ok(WriteOutcome::CacheOnly {
                seq: owned.seq,
                resync: self.connected(),
            });
        }
        let format = self.live.format();
        let connects = self.connects();
        let payload = encode_write(w, format);
        let len = payload.len() as u64;
        if owned.sized
            && !owned.append_first
            && owned.snapshot_bytes + owned.delta_bytes + len <= TINY_IMAGE
        {
            return Ok(WriteOutcome::Replace { seq: owned.seq });
        }
        match self
            .publish(
                tenant,
                "delta",
                payload,
                format,
                owned.seq,
                owned.epoch,
                None,
            )
            .await
        {
            Ok(seq) => {
                owned.seq = seq;
                owned.delta_bytes += len;
                let compact =
                    !owned.sized || owned.delta_bytes > owned.snapshot_bytes / 2 + COMPACT_SLACK;
                owned.append_first = false;
                if owned.format != Some(format) {
                    owned.format = None;
                }
                owned.connects = connects;
                self.owned.insert(tenant.to_string(), owned);
                Ok(WriteOutcome::Published { seq, compact })
            }
            Err(PublishFailure::Fenced) => {
                if self.lost(tenant, &mut owned).await {
                    return Ok(WriteOutcome::CacheOnly {
                        seq: 0,
                        resync: true,
                    });
                }
                self.owned.remove(tenant);
                Err(PublishFailure::Fenced)
            }
            Err(PublishFailure::Offline(e)) => {
                tracing::warn!(tenant = %tenant, error = %e, "state not replicated (NATS unreachable); kept locally and published as a snapshot once NATS answers");
                self.set_dirty(tenant);
                Ok(WriteOutcome::CacheOnly {
                    seq: owned.seq,
                    resync: false,
                })
            }
        }
    }

    /// Whether this replica's state messages name its run (the compact format): then a claim
    /// by another replica does not wait for this run once it is gone.
    pub fn names_its_run(&self) -> bool {
        self.live.format() == Format::Compact
    }

    /// See [`super::StateStore::holds_current`].
    pub fn holds_current(&self, tenant: &str) -> bool {
        self.connected()
            && self.owned.get(tenant).is_some_and(|o| {
                !o.dirty
                    && o.sized
                    && o.format == Some(self.live.format())
                    && o.connects == self.connects()
            })
    }

    /// How many times the client has connected to NATS (the first connect counted).
    fn connects(&self) -> u64 {
        self.client
            .statistics()
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// True when the tenant holds writes NATS has not seen.
    pub fn is_dirty(&self, tenant: &str) -> bool {
        self.owned.get(tenant).is_some_and(|o| o.dirty)
    }

    /// Records an image this replica installed from NATS (about `bytes` encoded) at a claim.
    pub fn installed(&self, tenant: &str, bytes: u64) {
        if let Some(mut o) = self.owned.get_mut(tenant) {
            o.snapshot_bytes = bytes;
            o.delta_bytes = 0;
            o.sized = true;
        }
    }

    /// The tenant's cache holds writes NATS has not seen: the next write publishes a snapshot.
    pub fn set_dirty(&self, tenant: &str) {
        if let Some(mut o) = self.owned.get_mut(tenant) {
            o.dirty = true;
        }
    }

    /// Publishes a whole snapshot of `image` (after NATS came back, or to compact), fenced.
    /// A fence refused because of this ownership's own earlier write whose ack was lost is
    /// recognised (same replica and epoch) and the snapshot retried after it.
    pub async fn snapshot(&self, tenant: &str, image: &TenantImage) -> Result<u64, PublishFailure> {
        let Some(mut owned) = self.owned.get(tenant).map(|o| *o) else {
            return Err(PublishFailure::Fenced);
        };
        let mut result = self.publish_snapshot(tenant, &mut owned, image).await;
        if matches!(result, Err(PublishFailure::Fenced)) && self.lost(tenant, &mut owned).await {
            result = self.publish_snapshot(tenant, &mut owned, image).await;
        }
        if matches!(result, Err(PublishFailure::Fenced)) {
            if let Ok(Some(last)) = self.last_write(tenant).await {
                if last.replica == self.replica && last.epoch == owned.epoch && last.seq > owned.seq
                {
                    owned.seq = last.seq;
                    result = self.publish_snapshot(tenant, &mut owned, image).await;
                }
            }
        }
        match result {
            Ok(seq) => {
                owned.dirty = false;
                self.owned.insert(tenant.to_string(), owned);
                Ok(seq)
            }
            Err(PublishFailure::Fenced) => {
                self.owned.remove(tenant);
                Err(PublishFailure::Fenced)
            }
            Err(e) => {
                self.set_dirty(tenant);
                Err(e)
            }
        }
    }

    /// Gives the tenant up: writes `release` (fenced) so the next owner starts at once. Returns
    /// the release's sequence, or `None` when this replica did not hold the tenant, was fenced,
    /// or could not reach NATS (the next owner then waits until this replica is gone).
    pub async fn release(&self, tenant: &str) -> Option<u64> {
        let _turn = self.turn().await;
        let (_, owned) = self.owned.remove(tenant)?;
        if owned.dirty {
            tracing::warn!(tenant = %tenant, "not released: its latest state is not in NATS; the next owner waits until this replica is gone and may repeat what it delivered since");
            return None;
        }
        match self.marker(tenant, "release", owned.seq, owned.epoch).await {
            Ok(seq) => Some(seq),
            Err(e) => {
                tracing::warn!(tenant = %tenant, error = ?e, "could not release the tenant; the next owner waits until this replica is gone");
                None
            }
        }
    }
}

/// What a claim found.
#[derive(Debug)]
pub enum Claim {
    /// Another live replica still holds the tenant (it has not released it yet).
    Wait { holder: String },
    /// Take it, fenced at the subject's `last_seq`, doing `load` with the local cache.
    Take {
        last_seq: u64,
        load: ClaimLoad,
        /// Whether the subject holds more than [`COMPACT_MESSAGES`] messages with the claim,
        /// when the claim learnt it on the way (`None`: ask with [`Replicated::crowded`]).
        crowded: Option<bool>,
        /// The format of the subject's image when it is one snapshot message (`None`: it is
        /// more, or nothing): see [`Owned::format`].
        format: Option<Format>,
    },
}

/// What taking a tenant over must do with the local cache.
#[derive(Debug)]
pub enum ClaimLoad {
    /// The cache is current.
    Keep,
    /// The cache holds what NATS lacks: publish it as a snapshot.
    Publish,
    /// NATS holds newer state: install it in the cache.
    Install(Box<TenantImage>),
}

/// What a replicated write did.
#[derive(Debug)]
pub enum WriteOutcome {
    /// In NATS at `seq`; `compact`: time for a new snapshot.
    Published { seq: u64, compact: bool },
    /// Only in the cache; `resync`: NATS answers again, publish a snapshot now.
    CacheOnly { seq: u64, resync: bool },
    /// Nothing published: the image is tiny (see [`TINY_IMAGE`]), so the write goes to the
    /// cache (not in sync with NATS at `seq`) and the whole image is published as a snapshot.
    Replace { seq: u64 },
}

/// What a state message says of itself (see [`LastWrite`]), in either format.
fn last_of(m: &StreamMessage) -> LastWrite {
    let header = |name: &str| {
        m.headers
            .get(name)
            .map(|v| v.as_str().to_string())
            .unwrap_or_default()
    };
    let compact = header(META);
    let read = if compact.is_empty() {
        LastWrite {
            op: header(OP),
            epoch: header(EPOCH).parse().unwrap_or(0),
            part: header(PART),
            replica: header(REPLICA),
            ..Default::default()
        }
    } else {
        parse_compact_header(&compact)
    };
    LastWrite {
        seq: m.sequence,
        ..read
    }
}

/// The compact format's header value (see [`META`]) for a message of `op` by this run
/// (`incarnation`) of `replica`.
pub fn compact_header(
    op: &str,
    epoch: u64,
    part: Option<(usize, usize)>,
    incarnation: u64,
    replica: &str,
) -> String {
    let part = part.map_or("-".to_string(), |(i, k)| format!("{i}/{k}"));
    format!("{op} {epoch} {part} {} {replica}", base36(incarnation))
}

/// Reads the compact format's header (see [`META`]); the sequence is left 0.
fn parse_compact_header(v: &str) -> LastWrite {
    let mut it = v.splitn(5, ' ');
    let op = it.next().unwrap_or_default().to_string();
    let epoch = it.next().and_then(|e| e.parse().ok()).unwrap_or(0);
    let part = match it.next() {
        Some("-") | None => String::new(),
        Some(p) => p.to_string(),
    };
    let incarnation = it
        .next()
        .and_then(|i| u64::from_str_radix(i, 36).ok())
        .unwrap_or(0);
    let replica = it.next().unwrap_or_default().to_string();
    LastWrite {
        seq: 0,
        op,
        replica,
        epoch,
        incarnation,
        part,
    }
}

/// `n` in base 36 (lower case), as the compact header writes an incarnation.
fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii digits")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compact_header_reads_back_every_field() {
        let inc = 1_796_464_528_123;
        assert_eq!(
            parse_compact_header(&compact_header("snap", 42, Some((1, 3)), inc, "replica-a")),
            LastWrite {
                seq: 0,
                op: "snap".into(),
                epoch: 42,
                part: "1/3".into(),
                incarnation: inc,
                replica: "replica-a".into(),
            }
        );
        assert_eq!(base36(inc).len(), 8);
        assert_eq!(base36(0), "0");
        assert_eq!(
            parse_compact_header("release 7 - z r2"),
            LastWrite {
                seq: 0,
                op: "release".into(),
                epoch: 7,
                part: String::new(),
                incarnation: 35,
                replica: "r2".into(),
            }
        );
        // Damaged: what can be read is, the rest is empty (an unknown op is no state).
        assert_eq!(
            parse_compact_header("delta"),
            LastWrite {
                op: "delta".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn a_holder_is_waited_for_only_while_the_run_that_wrote_is_alive() {
        let live = LiveSet::default();
        live.set(
            [("r1".to_string(), 7), ("old".to_string(), 0)].into(),
            false,
        );
        assert!(live.holds("r1", 7), "the same run");
        assert!(!live.holds("r1", 6), "restarted since it wrote");
        assert!(
            live.holds("r1", 0),
            "a first-format message: unknown, waited for"
        );
        assert!(live.holds("old", 5), "a member announcing no incarnation");
        assert!(!live.holds("gone", 7), "not alive");
    }
}
