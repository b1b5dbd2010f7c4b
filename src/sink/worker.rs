//! One task per configured sink: it owns the sink's outputs and its backlog.
//!
//! While the backlog is empty a part is written directly; if the write fails, the part goes to
//! the backlog (synced to disk) and its tenant moves on. While the backlog holds anything, every
//! new part is appended behind it (so each destination receives a tenant's pages in order), and
//! the worker drains the backlog from its head: one record at a time, after a backoff while the
//! destination keeps refusing, at once while it takes them. Appends go on during a drain
//! attempt: a destination that is slow to fail never holds back the tenants that write to its
//! backlog. The bound (`backlog_max_bytes`) is checked by the router before a page is given to
//! any destination, so a tenant held by one full backlog repeats nothing to the others.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::backlog::{Backlog, BacklogError, Depth, Record};
use super::routing::{self, Routing, TenantRoutes};
use super::{Batch, Output, SinkSpec, SinkStats, Written};

/// First and longest wait between attempts to drain a backlog whose destination refuses.
const DRAIN_FIRST: Duration = Duration::from_millis(250);
const DRAIN_MAX: Duration = Duration::from_secs(5);

/// Joins the filled values of a templated sink's settings into one output key.
const KEY_SEPARATOR: char = '\u{1f}';

/// One part of a page for this sink.
pub(super) struct Job {
    pub part: Arc<Batch>,
    /// The tenant's routes: their labels fill the sink's templates.
    pub routes: Option<Arc<TenantRoutes>>,
    /// `Ok` once the destination, or the sink's backlog on disk, has the part.
    pub reply: oneshot::Sender<Result<(), String>>,
}

/// What the router reads of a worker: its backlog's size and bound.
#[derive(Debug)]
pub(super) struct Gauge {
    pub bytes: AtomicU64,
    pub max: u64,
}

/// The router's handle on a worker; dropping it stops the worker.
pub(super) struct WorkerHandle {
    pub tx: mpsc::UnboundedSender<Job>,
    pub gauge: Arc<Gauge>,
    task: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// Stops the worker and waits until it has (a write in progress is abandoned: its tenant
    /// was not acked and sends the page again).
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// One configured sink and its open outputs: one, or with templated settings, one per distinct
/// filled value (opened at first use).
pub(super) struct SinkSlot {
    pub spec: SinkSpec,
    pub outputs: HashMap<String, Output>,
}

impl SinkSlot {
    /// Writes `batch` to the output of `key`, opened first if need be with its templates
    /// filled by `fill`.
    async fn write(
        &mut self,
        key: &str,
        fill: &(dyn Fn(&str) -> String + Sync),
        batch: &Arc<Batch>,
    ) -> Result<Written, String> {
        if !self.outputs.contains_key(key) {
            let spec = SinkSpec {
                kind: self.spec.kind.instantiate(fill)?,
                ..self.spec.clone()
            };
            let out = Output::open(&spec).await?;
            self.outputs.insert(key.to_string(), out);
        }
        self.outputs
            .get_mut(key)
            .expect("inserted above")
            .write(batch)
            .await
    }
}

/// The running worker.
pub(super) struct Worker {
    name: String,
    slot: SinkSlot,
    /// The sink's templates (their texts), apart from `slot` so that parts can be keyed while
    /// a drain attempt holds the slot.
    templates: Vec<String>,
    backlog: Arc<Mutex<Backlog>>,
    gauge: Arc<Gauge>,
    stats: Arc<SinkStats>,
    /// The routes the worker was started with: a drained record of a sink whose templates
    /// changed since is written where the tenant's current labels say.
    routing: Option<Arc<Routing>>,
}

impl Worker {
    /// Starts the worker of `slot` on its own task.
    pub fn spawn(
        slot: SinkSlot,
        backlog: Arc<Mutex<Backlog>>,
        stats: Arc<SinkStats>,
        routing: Option<Arc<Routing>>,
    ) -> WorkerHandle {
        let name = slot.spec.name.clone();
        let depth = backlog.lock().expect("backlog lock").depth();
        stats.set_backlog(&name, depth);
        let gauge = Arc::new(Gauge {
            bytes: AtomicU64::new(depth.bytes),
            max: slot.spec.backlog_max_bytes,
        });
        let templates = slot
            .spec
            .kind
            .templates()
            .iter()
            .map(|(_, t)| t.to_string())
            .collect();
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = Worker {
            name,
            slot,
            templates,
            backlog,
            gauge: gauge.clone(),
            stats,
            routing,
        };
        let task = tokio::spawn(worker.run(rx));
        WorkerHandle {
            tx,
            gauge,
            task: Some(task),
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Job>) {
        let mut failures = 0u32;
        loop {
            if self.gauge.bytes.load(Ordering::Acquire) == 0 {
                let Some(job) = rx.recv().await else { return };
                self.direct(job).await;
                continue;
            }
            // Draining: the head record, after a backoff while the destination refuses.
            let delay = backoff(failures);
            let (head, depth) = with_backlog(&self.backlog, |b| b.peek()).await;
            self.publish(depth);
            let rec = match head {
                Ok(Some(rec)) => rec,
                Ok(None) => continue,
                Err(e) => {
                    failures += 1;
                    tracing::error!(sink = %self.name, error = %e, "cannot read the sink's backlog; trying again");
                    if self
                        .attempt(&mut rx, None, backoff(failures))
                        .await
                        .is_none()
                    {
                        return;
                    }
                    continue;
                }
            };
            let (receipt, tenant) = (rec.receipt(), rec.tenant.clone());
            let Some(result) = self.attempt(&mut rx, Some(rec), delay).await else {
                return;
            };
            self.stats.record(
                &self.name,
                &tenant,
                result
                    .as_ref()
                    .map(|w| (receipt.events as usize, w))
                    .map_err(String::as_str),
            );
            match result {
                Ok(_) => {
                    failures = 0;
                    let (popped, depth) =
                        with_backlog(&self.backlog, move |b| b.pop(receipt)).await;
                    self.publish(depth);
                    match popped {
                        Ok(()) => {
                            tracing::info!(sink = %self.name, tenant = %tenant, events = receipt.events, "a batch from the backlog delivered")
                        }
                        Err(e) => {
                            tracing::error!(sink = %self.name, tenant = %tenant, error = %e, "a batch from the backlog delivered, but the backlog cannot record it: it will be sent again")
                        }
                    }
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(sink = %self.name, tenant = %tenant, error = %e, attempts = failures, "the sink still refuses the head of its backlog; trying again");
                }
            }
        }
    }

    /// Writes a part directly; if the destination refuses it, keeps it in the backlog (unless
    /// the sink has none).
    async fn direct(&mut self, job: Job) {
        let Job {
            part,
            routes,
            reply,
        } = job;
        let labels = labels_of(&routes);
        let key = key_of(&self.templates, &part, labels);
        let fill = |t: &str| routing::render(t, &part.tenant, part.feed, labels);
        let result = self.slot.write(&key, &fill, &part).await;
        self.stats.record(
            &self.name,
            &part.tenant,
            result
                .as_ref()
                .map(|w| (part.events, w))
                .map_err(String::as_str),
        );
        let answer = match result {
            Ok(_) => Ok(()),
            Err(e) if self.gauge.max == 0 => {
                tracing::error!(sink = %self.name, tenant = %part.tenant, error = %e, "sink write failed; the tenant keeps the page and retries");
                Err(e)
            }
            Err(e) => {
                tracing::warn!(sink = %self.name, tenant = %part.tenant, error = %e, "sink write failed; the batch waits in the sink's backlog");
                let (kept, depth) = append(&self.backlog, part.clone(), key).await;
                self.publish(depth);
                kept.map_err(|be| format!("{e}; and its backlog: {be}"))
            }
        };
        let _ = reply.send(answer);
    }

    /// Sleeps `delay`, then writes `rec` (with `None`, only sleeps), keeping every part that
    /// arrives meanwhile in the backlog behind it. `None` when the router has stopped.
    async fn attempt(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Job>,
        rec: Option<Record>,
        delay: Duration,
    ) -> Option<Result<Written, String>> {
        let Worker {
            name,
            slot,
            templates,
            backlog,
            gauge,
            stats,
            routing,
        } = self;
        let write = async {
            tokio::time::sleep(delay).await;
            let Some(rec) = rec else {
                return Ok(Written::default());
            };
            let feed = feed_name(&rec.feed);
            let values = filled_values(templates, &rec, routing.as_deref(), feed);
            let batch = Arc::new(Batch {
                tenant: rec.tenant,
                feed,
                lines: rec.lines,
                formatted: Default::default(),
                events: rec.events as usize,
                only: None,
            });
            let fill = |t: &str| {
                templates
                    .iter()
                    .position(|x| x == t)
                    .map_or_else(|| t.to_string(), |i| values[i].clone())
            };
            slot.write(&rec.key, &fill, &batch).await
        };
        tokio::pin!(write);
        loop {
            tokio::select! {
                result = &mut write => return Some(result),
                job = rx.recv() => {
                    let job = job?;
                    let key = key_of(templates, &job.part, labels_of(&job.routes));
                    let (kept, depth) = append(backlog, job.part.clone(), key).await;
                    publish(name, gauge, stats, depth);
                    if let Err(e) = &kept {
                        tracing::error!(sink = %name, tenant = %job.part.tenant, error = %e, "cannot keep the batch in the sink's backlog; the tenant holds it");
                    }
                    let _ = job.reply.send(kept.map_err(|e| e.to_string()));
                }
            }
        }
    }

    fn publish(&self, depth: Depth) {
        publish(&self.name, &self.gauge, &self.stats, depth);
    }
}

/// Shows the backlog's depth to the router, `GET /sinks` and the metrics.
fn publish(name: &str, gauge: &Gauge, stats: &SinkStats, depth: Depth) {
    gauge.bytes.store(depth.bytes, Ordering::Release);
    stats.set_backlog(name, depth);
}

/// Runs `f` on the backlog on the blocking pool (it reads, writes and syncs files), and returns
/// its result and the depth after it.
async fn with_backlog<R: Send + 'static>(
    backlog: &Arc<Mutex<Backlog>>,
    f: impl FnOnce(&mut Backlog) -> Result<R, BacklogError> + Send + 'static,
) -> (Result<R, BacklogError>, Depth) {
    let backlog = backlog.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let mut b = backlog.lock().expect("backlog lock");
        let r = f(&mut b);
        (r, b.depth())
    })
    .await;
    match joined {
        Ok(r) => r,
        Err(e) => panic!("a backlog operation panicked: {e}"),
    }
}

/// Appends a part to the backlog.
async fn append(
    backlog: &Arc<Mutex<Backlog>>,
    part: Arc<Batch>,
    key: String,
) -> (Result<(), BacklogError>, Depth) {
    let (r, depth) = with_backlog(backlog, move |b| {
        b.append(
            &part.tenant,
            part.feed,
            &key,
            part.events as u32,
            &part.lines,
        )
    })
    .await;
    (r.map(|_| ()), depth)
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

fn labels_of(routes: &Option<Arc<TenantRoutes>>) -> &BTreeMap<String, String> {
    routes.as_ref().map_or(&NO_LABELS, |r| &r.labels)
}

/// The output key of a part: its templates filled, joined (empty for an untemplated sink).
fn key_of(templates: &[String], part: &Batch, labels: &BTreeMap<String, String>) -> String {
    let mut key = String::new();
    for (i, t) in templates.iter().enumerate() {
        if i > 0 {
            key.push(KEY_SEPARATOR);
        }
        key.push_str(&routing::render(t, &part.tenant, part.feed, labels));
    }
    key
}

/// The filled value of each template for a record: from its key, or (when the sink's templates
/// changed since it was kept) from the tenant's labels now.
fn filled_values(
    templates: &[String],
    rec: &Record,
    routing: Option<&Routing>,
    feed: &str,
) -> Vec<String> {
    let kept: Vec<String> = if templates.is_empty() {
        Vec::new()
    } else {
        rec.key.split(KEY_SEPARATOR).map(str::to_string).collect()
    };
    if kept.len() == templates.len() {
        return kept;
    }
    let labels = routing
        .and_then(|r| r.tenants.get(&*rec.tenant))
        .map_or(&NO_LABELS, |t| &t.labels);
    templates
        .iter()
        .map(|t| routing::render(t, &rec.tenant, feed, labels))
        .collect()
}

/// The wait before the next drain attempt after `failures` refusals in a row: none after a
/// success, then 250 ms doubling to 5 s.
fn backoff(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => DRAIN_FIRST
            .saturating_mul(1 << (n - 1).min(8))
            .min(DRAIN_MAX),
    }
}

/// The `'static` name of a feed kept in a record. (The feeds' names are `feeds::FeedName`'s;
/// sinks do not import `feeds`, which imports `wiz` and so `config` and `sink`.)
fn feed_name(kept: &str) -> &'static str {
    const FEEDS: [&str; 5] = [
        "issues",
        "vulnerabilities",
        "detections",
        "audit",
        "cloud_configuration",
    ];
    FEEDS.into_iter().find(|f| *f == kept).unwrap_or("issues")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_backoff_starts_at_once_and_caps() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_millis(250));
        assert_eq!(backoff(3), Duration::from_secs(1));
        assert_eq!(backoff(40), DRAIN_MAX);
    }

    #[test]
    fn a_kept_key_gives_back_the_filled_values() {
        let templates = vec!["out/{tenant}/{feed}".to_string(), "{label.c}".to_string()];
        let labels = BTreeMap::from([("c".to_string(), "acme".to_string())]);
        let part = Batch {
            tenant: "t1".into(),
            feed: "audit",
            lines: Vec::new(),
            formatted: Default::default(),
            events: 0,
            only: None,
        };
        let key = key_of(&templates, &part, &labels);
        let rec = Record {
            seq: 0,
            tenant: "t1".into(),
            feed: "audit".into(),
            key,
            events: 0,
            lines: Vec::new(),
        };
        assert_eq!(
            filled_values(&templates, &rec, None, "audit"),
            ["out/t1/audit", "acme"]
        );
        assert_eq!(feed_name("cloud_configuration"), "cloud_configuration");
    }
}
