//! The sink actor and its outputs. Tenants send one page (a [`Batch`]) and wait for the ack before
//! they fetch the next, so the bound on memory is in the protocol (ractor mailboxes are
//! unbounded). The sink acks only after every output has the batch durably.

mod file;
mod http;
mod nats;
mod stdout;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::Instrument;

use crate::config::{SinkKind, SinkSpec};
use crate::faults::FaultInjection;
pub use file::FileOutput;
pub use http::HttpOutput;
pub use nats::NatsOutput;
pub use stdout::StdoutOutput;

/// One page of events from one tenant: JSON lines, each ending in `\n`.
#[derive(Debug)]
pub struct Batch {
    pub tenant: Arc<str>,
    pub lines: Vec<u8>,
    pub events: usize,
}

/// What the sink actor does.
pub enum SinkMsg {
    /// Write a batch to every output; the reply comes once all have it durably.
    Deliver(Arc<Batch>, RpcReplyPort<Result<(), String>>),
}

/// Counters of the sink, shared with whoever wants to read them.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub batches: AtomicU64,
    pub events: AtomicU64,
    pub errors: AtomicU64,
    /// Batches received but not yet acknowledged, and the most there ever were.
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
}

/// One output.
pub enum Output {
    Stdout(StdoutOutput),
    File(FileOutput),
    Http(HttpOutput),
    Nats(NatsOutput),
}

impl Output {
    /// Opens the output described by `spec`.
    pub async fn open(spec: &SinkSpec) -> Result<Output, String> {
        Ok(match &spec.kind {
            SinkKind::Stdout => Output::Stdout(StdoutOutput),
            SinkKind::Http { .. } => Output::Http(HttpOutput::open(spec)?),
            SinkKind::Nats { .. } => Output::Nats(NatsOutput::open(spec).await?),
            SinkKind::File { path, max_bytes } => {
                Output::File(FileOutput::open(path.clone(), *max_bytes).map_err(|e| {
                    format!("sink `{}`: cannot open {}: {e}", spec.name, path.display())
                })?)
            }
        })
    }

    async fn write(&mut self, batch: &Arc<Batch>) -> Result<(), String> {
        match self {
            Output::Stdout(o) => o.write(batch.clone()).await,
            Output::File(o) => o.write(batch.clone()).await,
            Output::Http(o) => o.write(batch.clone()).await,
            Output::Nats(o) => o.write(batch.clone()).await,
        }
    }
}

/// Arguments of the sink actor.
pub struct SinkArgs {
    pub specs: Vec<SinkSpec>,
    pub stats: Arc<SinkStats>,
    pub faults: FaultInjection,
}

pub struct SinkState {
    names: Vec<String>,
    outputs: Vec<Output>,
    stats: Arc<SinkStats>,
    faults: FaultInjection,
}

/// Writes every batch to every output, in order.
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
        let mut outputs = Vec::new();
        for spec in &args.specs {
            outputs.push(Output::open(spec).await?);
        }
        Ok(SinkState {
            names: args.specs.iter().map(|s| s.name.clone()).collect(),
            outputs,
            stats: args.stats,
            faults: args.faults,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<SinkMsg>,
        msg: SinkMsg,
        state: &mut SinkState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SinkMsg::Deliver(batch, reply) => {
                let span = tracing::info_span!(
                    "sink_write",
                    tenant = %batch.tenant,
                    events = batch.events,
                    bytes = batch.lines.len()
                );
                let result = write_all(state, &batch).instrument(span).await;
                let _ = reply.send(result);
            }
        }
        Ok(())
    }
}

/// Writes one batch to every output, in order; the first failure fails the batch.
async fn write_all(state: &mut SinkState, batch: &Arc<Batch>) -> Result<(), String> {
    if let Some(delay) = state.faults.sink_delay() {
        tokio::time::sleep(delay).await;
    }
    state.faults.maybe_panic_sink();
    let mut result = match state.faults.sink_failure() {
        Some(e) => Err(e),
        None => Ok(()),
    };
    for (name, out) in state.names.iter().zip(state.outputs.iter_mut()) {
        if result.is_err() {
            break;
        }
        if let Err(e) = out.write(batch).await {
            state.stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(sink = %name, tenant = %batch.tenant, error = %e, "sink write failed; the tenant keeps the page and retries");
            result = Err(format!("sink `{name}`: {e}"));
            break;
        }
    }
    if result.is_ok() {
        state.stats.batches.fetch_add(1, Ordering::Relaxed);
        state
            .stats
            .events
            .fetch_add(batch.events as u64, Ordering::Relaxed);
    }
    result
}

/// Sends a batch to `sink` and waits for the ack. Counts the batch as in flight meanwhile.
pub async fn deliver(
    sink: &ActorRef<SinkMsg>,
    stats: &SinkStats,
    batch: Arc<Batch>,
    timeout: Duration,
) -> Result<(), String> {
    let now = stats.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
    stats.max_in_flight.fetch_max(now, Ordering::AcqRel);
    let res = sink
        .call(|reply| SinkMsg::Deliver(batch, reply), Some(timeout))
        .await;
    stats.in_flight.fetch_sub(1, Ordering::AcqRel);
    match res {
        Ok(ractor::rpc::CallResult::Success(r)) => r,
        Ok(ractor::rpc::CallResult::Timeout) => Err(format!(
            "the sink did not acknowledge within {}s",
            timeout.as_secs()
        )),
        Ok(ractor::rpc::CallResult::SenderError) => {
            Err("the sink stopped before acknowledging".into())
        }
        Err(e) => Err(format!("the sink is not running ({e})")),
    }
}
