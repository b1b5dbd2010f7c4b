//! Webhook hints: Wiz automation rules call `POST /hooks/wiz/{tenant}` when an issue changes.
//! The call is a hint, not data: its body is a template the customer wrote, so only the issue id
//! is read from it, and the tenant confirms the change by looking the issue up through the API,
//! inside its rate limiter, with the same change rules and event ids as a poll.
//!
//! - [`Hints`] is the registry the receiver and the tenants share: each tenant's token (as a
//!   SHA-256 digest, replaced whole when the configuration changes) and each running tenant's
//!   [`HintQueue`].
//! - [`HintQueue`] collapses duplicate ids, is bounded (`hooks.queue_limit`), and on overflow turns
//!   into one request for a full sweep.
//! - [`serve`] runs the receiver, a listener of its own (Wiz reaches it from outside; the admin API
//!   stays private).
//! - In cluster mode a hint that reaches a replica which does not own the tenant is forwarded over
//!   core NATS to every replica; the owner queues it (see [`Forwarder`]).

mod receiver;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use ractor::ActorId;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use crate::config::TenantSpec;

pub use receiver::{bind, serve, valid_issue_id, HooksServer, MAX_BODY_BYTES};

/// How long a change the connector made itself (write-back) is expected: an event for the issue
/// within this time is marked `"origin": "connector"`.
const WRITTEN_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// What became of one pushed id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued; `wake` when the queue was empty before (the tenant must be told).
    Queued { wake: bool },
    /// Already waiting: collapsed into the queued one.
    Duplicate,
    /// The queue was full: it was dropped and the tenant will sweep fully instead; `wake` on the
    /// hint that overflowed it (later ones are absorbed until the tenant takes the overflow).
    Overflowed { wake: bool },
}

#[derive(Default)]
struct Queued {
    order: VecDeque<(String, Instant)>,
    ids: HashSet<String>,
    overflowed: bool,
}

/// Tells a tenant actor that hinted ids arrived.
pub type Waker = Box<dyn Fn() + Send + Sync>;

/// One tenant's hinted issue ids, waiting for lookup.
pub struct HintQueue {
    queued: Mutex<Queued>,
    limit: usize,
    /// The running tenant actor, told when ids arrive (none while it is being restarted: the
    /// new actor looks at the queue when it starts): its id and how to wake it. A callback, so
    /// this module does not know the tenant's messages.
    waker: Mutex<Option<(ActorId, Waker)>>,
    /// Issues the connector changed itself (write-back), and when: their next event is marked
    /// `"origin": "connector"` (the echo guard of a SOAR that mirrors both ways).
    written: Mutex<HashMap<String, Instant>>,
}

impl HintQueue {
    pub fn new(limit: usize) -> Self {
        HintQueue {
            queued: Mutex::new(Queued::default()),
            limit: limit.max(1),
            waker: Mutex::new(None),
            written: Mutex::new(HashMap::new()),
        }
    }

    /// The connector changed issue `id` itself.
    pub fn mark_written(&self, id: &str) {
        let mut w = self.written.lock().expect("written lock");
        let now = Instant::now();
        w.retain(|_, at| now.duration_since(*at) < WRITTEN_TTL);
        w.insert(id.to_string(), now);
    }

    /// True (once) when the change about to be delivered for `id` is the connector's own.
    pub fn take_written(&self, id: &str) -> bool {
        let mut w = self.written.lock().expect("written lock");
        if w.is_empty() {
            return false;
        }
        w.remove(id).is_some_and(|at| at.elapsed() < WRITTEN_TTL)
    }

    /// Queues `id` (received at `at`).
    pub fn push(&self, id: &str, at: Instant) -> Pushed {
        let mut q = self.queued.lock().expect("hint queue lock");
        if q.overflowed {
            return Pushed::Overflowed { wake: false };
        }
        if q.ids.contains(id) {
            return Pushed::Duplicate;
        }
        if q.ids.len() >= self.limit {
            q.order.clear();
            q.ids.clear();
            q.overflowed = true;
            return Pushed::Overflowed { wake: true };
        }
        let wake = q.ids.is_empty();
        q.ids.insert(id.to_string());
        q.order.push_back((id.to_string(), at));
        Pushed::Queued { wake }
    }

    /// Takes up to `n` ids, oldest first.
    pub fn take(&self, n: usize) -> Vec<(String, Instant)> {
        let mut q = self.queued.lock().expect("hint queue lock");
        let n = n.min(q.order.len());
        let batch: Vec<_> = q.order.drain(..n).collect();
        for (id, _) in &batch {
            q.ids.remove(id);
        }
        batch
    }

    /// True (once) when the queue overflowed since the last call: the tenant should sweep fully.
    pub fn take_overflow(&self) -> bool {
        std::mem::take(&mut self.queued.lock().expect("hint queue lock").overflowed)
    }

    /// Ids (or an overflow) are waiting.
    pub fn pending(&self) -> bool {
        let q = self.queued.lock().expect("hint queue lock");
        q.overflowed || !q.order.is_empty()
    }

    /// Ids waiting now.
    pub fn len(&self) -> usize {
        self.queued.lock().expect("hint queue lock").order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tenant actor `actor` takes this queue's ids; `wake` tells it that some arrived.
    pub fn attach(&self, actor: ActorId, wake: Waker) {
        *self.waker.lock().expect("hint waker lock") = Some((actor, wake));
    }

    /// `actor` stopped: it takes no more ids (a successor that already attached stays).
    pub fn detach(&self, actor: ActorId) {
        let mut w = self.waker.lock().expect("hint waker lock");
        if w.as_ref().is_some_and(|(a, _)| *a == actor) {
            *w = None;
        }
    }

    /// Tells the attached actor; false when none is attached.
    fn wake(&self) -> bool {
        match self.waker.lock().expect("hint waker lock").as_ref() {
            Some((_, wake)) => {
                wake();
                true
            }
            None => false,
        }
    }
}

/// The SHA-256 digest a token is kept and compared as: fixed length, so the comparison neither
/// stops early nor reveals the token's length.
type TokenDigest = [u8; 32];

fn digest(token: &[u8]) -> TokenDigest {
    Sha256::digest(token).into()
}

/// The webhook tokens of some tenants, as digests (see [`tokens_of`]).
pub struct TokenDigests(HashMap<String, TokenDigest>);

/// The digests of the webhook tokens of `tenants` (those that have one): a reload takes them
/// before it keeps only the tenants this replica runs.
pub fn tokens_of(tenants: &[Arc<TenantSpec>]) -> TokenDigests {
    TokenDigests(
        tenants
            .iter()
            .filter_map(|t| {
                let token = t.webhook_token.as_ref()?;
                Some((t.id.clone(), digest(token.expose_secret().as_bytes())))
            })
            .collect(),
    )
}

/// Compares in time independent of where the first difference is.
fn same(a: &TokenDigest, b: &TokenDigest) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// Fleet-wide hint metrics (no series per tenant).
#[derive(Clone)]
pub struct HookMetrics {
    received: Family<ResultLabels, Counter>,
    lookups: Family<ResultLabels, Counter>,
    overflows: Counter,
    to_event: Histogram,
}

impl Default for HookMetrics {
    fn default() -> Self {
        HookMetrics {
            received: Family::default(),
            lookups: Family::default(),
            overflows: Counter::default(),
            to_event: Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0]),
        }
    }
}

impl HookMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "hints",
            "Webhook hints received, by result (queued, duplicate, overflowed, forwarded, unauthorized, bad_request, too_large)",
            self.received.clone(),
        );
        registry.register(
            "hint_lookups",
            "Lookups of hinted issues by id, by result (ok, failed); a failed one is left to the next poll",
            self.lookups.clone(),
        );
        registry.register(
            "hint_overflows",
            "Times a tenant's hint queue overflowed (hooks.queue_limit) and a full sweep replaced the lookups",
            self.overflows.clone(),
        );
        registry.register(
            "hint_to_event_seconds",
            "Time from a hint's arrival to the sinks' acknowledgement of the event it led to",
            self.to_event.clone(),
        );
    }

    pub fn received(&self, result: &str) {
        self.received
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    pub fn lookup(&self, ok: bool) {
        self.lookups
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "failed" }.to_string(),
            })
            .inc();
    }

    pub fn overflowed(&self) {
        self.overflows.inc();
    }

    pub fn delivered(&self, since_hint: Duration) {
        self.to_event.observe(since_hint.as_secs_f64());
    }
}

/// Cluster mode: carries a hint to the replica that owns its tenant. Core NATS (at most once):
/// a hint lost here is still found by the next poll.
#[derive(Clone)]
pub struct Forwarder {
    client: async_nats::Client,
    subject: String,
}

impl Forwarder {
    /// The subject is scoped by the members bucket, so two clusters on one NATS stay apart.
    pub fn new(client: async_nats::Client, members_bucket: &str) -> Self {
        Forwarder {
            client,
            subject: format!("_wiz_connector.{members_bucket}.hints"),
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Forwarded {
    tenant: String,
    id: String,
    /// The change is the connector's own (write-back).
    #[serde(default)]
    connector: bool,
}

struct Inner {
    tokens: RwLock<HashMap<String, TokenDigest>>,
    queues: DashMap<String, Arc<HintQueue>>,
    limit: usize,
    /// Cluster mode: where hints for tenants not running here go.
    forwarder: Option<Forwarder>,
    metrics: HookMetrics,
    /// Told the tenant's id when ids arrive for a tenant whose actor is not running (see
    /// [`Hints::on_idle`]).
    idle: RwLock<Option<IdleWaker>>,
}

/// See [`Hints::on_idle`].
pub type IdleWaker = Box<dyn Fn(&str) + Send + Sync>;

/// The registry the receiver and the tenants share; cheap to clone.
#[derive(Clone)]
pub struct Hints {
    inner: Arc<Inner>,
}

/// Why a hint was refused before anything was queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Unknown tenant, a tenant without `webhook_token`, or a wrong or missing token: one answer
    /// for all, so tenant ids cannot be probed.
    Unauthorized,
}

impl Hints {
    /// `limit`: `hooks.queue_limit`.
    pub fn new(limit: usize, forwarder: Option<Forwarder>, metrics: HookMetrics) -> Self {
        Hints {
            inner: Arc::new(Inner {
                tokens: RwLock::new(HashMap::new()),
                queues: DashMap::new(),
                limit,
                forwarder,
                metrics,
                idle: RwLock::new(None),
            }),
        }
    }

    /// `wake` is told the tenant whenever ids arrive for a tenant whose actor is not running:
    /// the supervisor starts a tenant it deferred (one waker for the fleet, instead of one per
    /// tenant not started yet).
    pub fn on_idle(&self, wake: IdleWaker) {
        *self.inner.idle.write().expect("idle waker lock") = Some(wake);
    }

    /// Wakes `tenant`'s actor, or the idle waker when none is attached.
    fn wake(&self, q: &HintQueue, tenant: &str) {
        if !q.wake() {
            if let Some(idle) = self.inner.idle.read().expect("idle waker lock").as_ref() {
                idle(tenant);
            }
        }
    }

    pub fn metrics(&self) -> &HookMetrics {
        &self.inner.metrics
    }

    /// Takes the tokens of the configured tenants (at start and after every reload: a rotated
    /// token applies at once, without restarting the tenant).
    pub fn set_tokens(&self, tenants: &[Arc<TenantSpec>]) {
        self.set_digests(tokens_of(tenants));
    }

    /// [`Hints::set_tokens`] with digests made by [`tokens_of`].
    pub fn set_digests(&self, tokens: TokenDigests) {
        *self.inner.tokens.write().expect("hint tokens lock") = tokens.0;
    }

    /// Checks `token` for `tenant` in constant time; an unknown tenant costs the same comparison.
    pub fn authorize(&self, tenant: &str, token: &str) -> Result<(), Refused> {
        let given = digest(token.as_bytes());
        let tokens = self.inner.tokens.read().expect("hint tokens lock");
        let (expected, known) = match tokens.get(tenant) {
            Some(d) => (*d, true),
            None => ([0u8; 32], false),
        };
        if same(&given, &expected) && known && !token.is_empty() {
            Ok(())
        } else {
            Err(Refused::Unauthorized)
        }
    }

    /// The queue of a tenant that runs here (created by the supervisor when it starts the
    /// tenant; kept across the tenant's restarts).
    pub fn queue(&self, tenant: &str) -> Arc<HintQueue> {
        self.inner
            .queues
            .entry(tenant.to_string())
            .or_insert_with(|| Arc::new(HintQueue::new(self.inner.limit)))
            .clone()
    }

    /// The tenant stopped running here (removed, or placed on another replica).
    pub fn forget(&self, tenant: &str) {
        self.inner.queues.remove(tenant);
    }

    /// Queues an authorized hint for a tenant running here, or forwards it (cluster mode) when
    /// the tenant runs elsewhere. Returns the result's metric label.
    pub async fn deliver(&self, tenant: &str, id: &str) -> &'static str {
        self.deliver_as(tenant, id, false).await
    }

    /// Write-back changed issue `id`: its owner looks it up now, and marks the resulting event
    /// as the connector's own. (Works without `[hooks]` too: write-back needs no receiver.)
    pub async fn deliver_from_connector(&self, tenant: &str, id: &str) -> &'static str {
        self.deliver_as(tenant, id, true).await
    }

    async fn deliver_as(&self, tenant: &str, id: &str, connector: bool) -> &'static str {
        let local = self.inner.queues.get(tenant).map(|q| q.clone());
        if let Some(q) = &local {
            if connector {
                q.mark_written(id);
            }
        }
        match (local, &self.inner.forwarder) {
            (Some(q), _) => self.push(&q, tenant, id),
            (None, Some(f)) => {
                let body = serde_json::to_vec(&Forwarded {
                    tenant: tenant.to_string(),
                    id: id.to_string(),
                    connector,
                })
                .expect("plain strings serialize");
                match f.client.publish(f.subject.clone(), body.into()).await {
                    Ok(()) => "forwarded",
                    Err(e) => {
                        tracing::warn!(tenant, error = %e, "cannot forward a hint to the owning replica; the next poll finds the change");
                        "dropped"
                    }
                }
            }
            // Single mode: a configured tenant not started yet (the process is starting) gets
            // its queue now; the supervisor hands it the same one.
            (None, None) => {
                let q = self.queue(tenant);
                if connector {
                    q.mark_written(id);
                }
                self.push(&q, tenant, id)
            }
        }
    }

    fn push(&self, q: &HintQueue, tenant: &str, id: &str) -> &'static str {
        match q.push(id, Instant::now()) {
            Pushed::Queued { wake } => {
                if wake {
                    self.wake(q, tenant);
                }
                "queued"
            }
            Pushed::Duplicate => "duplicate",
            Pushed::Overflowed { wake } => {
                if wake {
                    tracing::warn!(tenant, limit = self.inner.limit, "hint queue overflowed (hooks.queue_limit); the tenant sweeps fully instead");
                    self.inner.metrics.overflowed();
                    self.wake(q, tenant);
                }
                "overflowed"
            }
        }
    }

    /// Cluster mode: queues hints other replicas forwarded, for the tenants running here.
    pub fn spawn_forward_listener(&self) -> Option<tokio::task::JoinHandle<()>> {
        let f = self.inner.forwarder.clone()?;
        let me = self.clone();
        Some(tokio::spawn(async move {
            use futures_util::StreamExt;
            let mut sub = match f.client.subscribe(f.subject.clone()).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot subscribe to forwarded hints; hints reaching other replicas are left to polls");
                    return;
                }
            };
            while let Some(msg) = sub.next().await {
                let Ok(h) = serde_json::from_slice::<Forwarded>(&msg.payload) else {
                    continue;
                };
                if let Some(q) = me.inner.queues.get(&h.tenant).map(|q| q.clone()) {
                    if h.connector {
                        q.mark_written(&h.id);
                    }
                    me.push(&q, &h.tenant, &h.id);
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_collapses_duplicates_and_overflows_into_one_full_sweep() {
        let q = HintQueue::new(3);
        let t = Instant::now();
        assert_eq!(q.push("a", t), Pushed::Queued { wake: true });
        assert_eq!(q.push("a", t), Pushed::Duplicate);
        assert_eq!(q.push("b", t), Pushed::Queued { wake: false });
        assert_eq!(q.push("c", t), Pushed::Queued { wake: false });
        assert_eq!(q.len(), 3);
        assert_eq!(q.push("d", t), Pushed::Overflowed { wake: true });
        assert_eq!(q.push("e", t), Pushed::Overflowed { wake: false });
        assert!(q.is_empty() && q.pending());
        assert!(q.take_overflow());
        assert!(!q.take_overflow() && !q.pending());
        assert_eq!(q.push("a", t), Pushed::Queued { wake: true });
        assert_eq!(q.push("b", t), Pushed::Queued { wake: false });
        let batch: Vec<String> = q.take(1).into_iter().map(|(id, _)| id).collect();
        assert_eq!(batch, ["a"]);
        // A taken id may be hinted again.
        assert_eq!(q.push("a", t), Pushed::Queued { wake: false });
        let rest: Vec<String> = q.take(10).into_iter().map(|(id, _)| id).collect();
        assert_eq!(rest, ["b", "a"]);
    }

    #[test]
    fn tokens_are_checked_per_tenant_and_unknown_tenants_look_the_same() {
        let h = Hints::new(10, None, HookMetrics::default());
        let mut tokens = HashMap::new();
        tokens.insert("acme".to_string(), digest(b"0123456789abcdef-acme"));
        *h.inner.tokens.write().unwrap() = tokens;
        assert_eq!(h.authorize("acme", "0123456789abcdef-acme"), Ok(()));
        assert_eq!(
            h.authorize("acme", "0123456789abcdef-acmf"),
            Err(Refused::Unauthorized)
        );
        assert_eq!(h.authorize("acme", ""), Err(Refused::Unauthorized));
        assert_eq!(
            h.authorize("other", "0123456789abcdef-acme"),
            Err(Refused::Unauthorized)
        );
    }
}
