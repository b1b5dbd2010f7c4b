//! The sink actor: a router in front of one worker per configured sink. For each batch it
//! looks up the tenant's destinations (resolved once per configuration: nothing is matched per
//! event beyond a route's severity filter), refuses the batch at once if a destination's
//! backlog is full, gives each destination its part, and acks when every destination has it
//! durably. It never waits on a destination itself: the waiting happens on a task per batch,
//! so a slow destination holds back only the tenants routed to it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::oneshot;
use tracing::Instrument;

use super::backlog::Backlog;
use super::routing::Routing;
use super::routing::{Destination, TenantRoutes};
use super::worker::{Job, SinkSlot, Worker, WorkerHandle};
use super::{Batch, Output, SinkRefusal, SinkSpec, SinkStats};
use crate::faults::FaultInjection;
use crate::format::Format;

/// What the sink actor does.
pub enum SinkMsg {
    /// Give a batch to each of its tenant's destinations; the reply comes once all have it
    /// durably (written, or in a backlog).
    Deliver(Arc<Batch>, RpcReplyPort<Result<(), SinkRefusal>>),
}

/// The sinks' backlogs, opened once per process and kept across restarts of the sink actor
/// (a reload replaces the actor; the queues on disk and their reading position stay).
#[derive(Clone, Debug)]
pub struct Backlogs {
    dir: PathBuf,
    open: Arc<Mutex<HashMap<String, Arc<Mutex<Backlog>>>>>,
}

impl Backlogs {
    /// The backlogs under `dir` (`state_dir/backlog`), one directory per sink.
    pub fn new(dir: PathBuf) -> Backlogs {
        Backlogs {
            dir,
            open: Arc::default(),
        }
    }

    /// Sink `name`'s backlog, opened (and checked) on first use.
    async fn get(&self, name: &str) -> Result<Arc<Mutex<Backlog>>, String> {
        if let Some(b) = self.open.lock().expect("backlogs lock").get(name) {
            return Ok(b.clone());
        }
        let dir = self.dir.join(name);
        let opened = tokio::task::spawn_blocking(move || Backlog::open(&dir))
            .await
            .map_err(|e| format!("sink `{name}`: opening its backlog failed: {e}"))?
            .map_err(|e| format!("sink `{name}`: {e}"))?;
        let depth = opened.depth();
        if depth.records > 0 {
            tracing::info!(sink = %name, events = depth.events, bytes = depth.bytes, "the sink's backlog holds batches from before; draining them first");
        }
        let b = Arc::new(Mutex::new(opened));
        Ok(self
            .open
            .lock()
            .expect("backlogs lock")
            .entry(name.to_string())
            .or_insert(b)
            .clone())
    }
}

/// Arguments of the sink actor.
pub struct SinkArgs {
    pub specs: Vec<SinkSpec>,
    /// Each tenant's destinations; `None` (or `every_sink`): every sink takes every event.
    pub routing: Option<Arc<Routing>>,
    pub stats: Arc<SinkStats>,
    pub backlogs: Backlogs,
    pub faults: FaultInjection,
}

/// One configured sink, seen from the router.
struct Route {
    name: String,
    /// The schema it takes: the router gives it the batch's lines in this format.
    format: Format,
    worker: WorkerHandle,
}

pub struct SinkState {
    sinks: Vec<Route>,
    /// Index into `sinks` by name.
    index: HashMap<String, usize>,
    routing: Option<Arc<Routing>>,
    stats: Arc<SinkStats>,
    faults: FaultInjection,
}

/// Routes every batch to its tenant's destinations.
pub struct SinkActor;

impl Actor for SinkActor {
    type Msg = SinkMsg;
    type State = SinkState;
    type Arguments = SinkArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<SinkMsg>,
        args: SinkArgs,
    ) -> Result<SinkState, ActorProcessingErr> {
        {
            // Every configured sink is listed from the start; removed ones are forgotten.
            let mut board = args.stats.sinks.lock().expect("sink status lock");
            board.retain(|name, _| args.specs.iter().any(|s| &s.name == name));
            for s in &args.specs {
                board.entry(s.name.clone()).or_default();
            }
        }
        let mut sinks = Vec::new();
        for spec in args.specs {
            let mut outputs = HashMap::new();
            if spec.kind.templates().is_empty() {
                // Opened now: a sink that cannot start fails the start with its reason.
                outputs.insert(String::new(), Output::open(&spec).await?);
            }
            let backlog = args.backlogs.get(&spec.name).await?;
            let name = spec.name.clone();
            let format = spec.format;
            let worker = Worker::spawn(
                SinkSlot { spec, outputs },
                backlog,
                args.stats.clone(),
                args.routing.clone(),
            );
            sinks.push(Route {
                name,
                format,
                worker,
            });
        }
        Ok(SinkState {
            index: sinks
                .iter()
                .enumerate()
                .map(|(i, s)| (s.name.clone(), i))
                .collect(),
            sinks,
            routing: args.routing,
            stats: args.stats,
            faults: args.faults,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SinkMsg>,
        state: &mut SinkState,
    ) -> Result<(), ActorProcessingErr> {
        // The workers stop before the actor counts as stopped: a replacement started after a
        // reload never shares a backlog with them.
        for s in &mut state.sinks {
            s.worker.stop().await;
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<SinkMsg>,
        msg: SinkMsg,
        state: &mut SinkState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SinkMsg::Deliver(batch, reply) => route(state, batch, reply),
        }
        Ok(())
    }
}

/// Where one batch goes: each sink it reaches, with the lines of the sink's format, all of
/// them or the part a severity filter keeps. Decided by a lookup of the batch's tenant, never by
/// event content beyond the normalized severity. `routes`: the tenant's (looked up once per
/// batch by the caller).
///
/// A page built before its tenant learned that a destination takes another format (a reload
/// added the destination or changed its format a moment ago) lacks that format's lines: it skips
/// that destination, which gets the tenant's open findings from the baseline that follows.
fn targets(
    state: &SinkState,
    batch: &Arc<Batch>,
    routes: Option<&TenantRoutes>,
) -> Vec<(usize, Arc<Batch>)> {
    let routed = state.routing.as_ref().is_some_and(|r| !r.every_sink);
    let routes = routed.then_some(routes);
    let named = |name: &str| {
        batch
            .only
            .as_ref()
            .is_none_or(|o| o.iter().any(|n| n == name))
    };
    let part = |i: usize, d: Option<&Destination>| -> Option<(usize, Arc<Batch>)> {
        let format = state.sinks[i].format;
        let Some(lines) = batch.lines_in(format) else {
            tracing::info!(
                tenant = %batch.tenant,
                sink = %state.sinks[i].name,
                format = format.as_str(),
                events = batch.events,
                "a page built before the tenant knew this sink's format skips it; the sink gets a baseline"
            );
            return None;
        };
        let selected = d.and_then(|d| d.select(&batch.lines, lines));
        match (selected, format) {
            (None, Format::Native) => Some((i, batch.clone())),
            (None, _) => Some((i, Arc::new(batch.with_lines(lines.to_vec(), batch.events)))),
            (Some((_, 0)), _) => None,
            (Some((lines, events)), _) => Some((i, Arc::new(batch.with_lines(lines, events)))),
        }
    };
    match routes {
        None => (0..state.sinks.len())
            .filter(|i| named(&state.sinks[*i].name))
            .filter_map(|i| part(i, None))
            .collect(),
        Some(None) => Vec::new(),
        Some(Some(t)) => t
            .destinations
            .iter()
            .filter(|d| d.takes_feed(batch.feed) && named(&d.sink))
            .filter_map(|d| part(*state.index.get(&d.sink)?, Some(d)))
            .collect(),
    }
}

/// Gives one batch to every sink it reaches, and replies on a task of its own once all have
/// answered; the first refusal fails the batch.
fn route(state: &mut SinkState, batch: Arc<Batch>, reply: RpcReplyPort<Result<(), SinkRefusal>>) {
    // The span covers the page from its arrival to the last destination's answer.
    let span = tracing::info_span!(
        "sink_write",
        tenant = %batch.tenant,
        events = batch.events,
        bytes = batch.lines.len()
    );
    let _entered = span.enter();
    state.faults.maybe_panic_sink();
    let delay = state.faults.sink_delay();
    if let Some(e) = state.faults.sink_failure() {
        let _ = reply.send(Err(SinkRefusal::general(e)));
        return;
    }
    // The tenant's routes, looked up once: they choose the destinations and fill templates.
    let routes = state
        .routing
        .as_ref()
        .and_then(|r| r.tenants.get(&*batch.tenant))
        .cloned();
    let targets = targets(state, &batch, routes.as_deref());
    if targets.is_empty() && batch.only.is_some() {
        // A baseline for destinations these routes do not give the tenant (yet: the actor with
        // a reload's routes is starting). The tenant sends it again; if a reload removed them,
        // it drops them.
        let _ = reply.send(Err(SinkRefusal::general(
            "the baseline's destinations do not take this tenant's events (yet)",
        )));
        return;
    }
    // A full backlog refuses the page before any destination gets it: the tenant holds, and
    // nothing is written twice when it sends the page again.
    for (i, _) in &targets {
        let s = &state.sinks[*i];
        let bytes = s.worker.gauge.bytes.load(Ordering::Acquire);
        if s.worker.gauge.max > 0 && bytes >= s.worker.gauge.max {
            state.stats.errors.fetch_add(1, Ordering::Relaxed);
            let _ = reply.send(Err(SinkRefusal::of(
                &s.name,
                format!(
                    "its backlog is full ({bytes} bytes of backlog_max_bytes = {}): the tenant holds until the sink takes its backlog",
                    s.worker.gauge.max
                ),
            )));
            return;
        }
    }
    let mut answers = Vec::with_capacity(targets.len());
    for (i, part) in targets {
        let s = &state.sinks[i];
        let (tx, rx) = oneshot::channel();
        let job = Job {
            part,
            routes: routes.clone(),
            reply: tx,
        };
        if s.worker.tx.send(job).is_err() {
            let _ = reply.send(Err(SinkRefusal::of(&s.name, "its worker has stopped")));
            return;
        }
        answers.push((s.name.clone(), rx));
    }
    let stats = state.stats.clone();
    tokio::spawn(
        async move {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            let mut result = Ok(());
            for (name, rx) in answers {
                let answer = rx
                    .await
                    .unwrap_or_else(|_| Err("it stopped before answering".to_string()));
                if let (Err(e), Ok(())) = (answer, &result) {
                    result = Err(SinkRefusal::of(&name, e));
                }
            }
            match &result {
                Ok(()) => {
                    stats.batches.fetch_add(1, Ordering::Relaxed);
                    stats
                        .events
                        .fetch_add(batch.events as u64, Ordering::Relaxed);
                }
                Err(_) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            let _ = reply.send(result);
        }
        .instrument(span.clone()),
    );
}

/// Sends a batch to `sink` and waits for the ack. Counts the batch as in flight meanwhile.
pub async fn deliver(
    sink: &ActorRef<SinkMsg>,
    stats: &SinkStats,
    batch: Arc<Batch>,
    timeout: Duration,
) -> Result<(), SinkRefusal> {
    let now = stats.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
    stats.max_in_flight.fetch_max(now, Ordering::AcqRel);
    let res = sink
        .call(|reply| SinkMsg::Deliver(batch, reply), Some(timeout))
        .await;
    stats.in_flight.fetch_sub(1, Ordering::AcqRel);
    match res {
        Ok(ractor::rpc::CallResult::Success(r)) => r,
        Ok(ractor::rpc::CallResult::Timeout) => Err(SinkRefusal::general(format!(
            "the sink did not acknowledge within {}s",
            timeout.as_secs()
        ))),
        Ok(ractor::rpc::CallResult::SenderError) => Err(SinkRefusal::general(
            "the sink stopped before acknowledging",
        )),
        Err(e) => Err(SinkRefusal::general(format!(
            "the sink is not running ({e})"
        ))),
    }
}
