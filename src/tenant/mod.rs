//! The tenant actor: one per configured Wiz tenant. It owns its Wiz client (token cache and its
//! handle on the credential's rate limiter) and its poll alarm, and runs one poll at a time,
//! one page per message: between pages the mailbox is free, so a stop request takes effect after
//! the page in flight is delivered.
//!
//! The actor is split by concern, one file each, all methods of [`TenantActorState`]:
//! - `schedule`: the poll plan (Issues, then each other feed, each step with a sweep slot) and
//!   the timer; the only reader of `poll_interval`.
//! - `issues`: the Issues engine: full and incremental sweeps, the `updatedAt` probe,
//!   reconciliation of vanished issues; which sweep to run is the pure [`issues::plan_sweep`].
//! - `feed_job`: one window of a feed beyond Issues; a page's events and position are built by
//!   the pure [`feed_job::build_feed_page`].
//! - `hints`: webhook hints looked up by id, between pages or in a lookup-only job.
//! - `quarantine`: a page's unreadable nodes, each one quarantine event, once per version.
//! - `delivery`: one page in flight ([`delivery::Pending`]) and one flow to the sink and back,
//!   for all of the above.
//! - `claim`: cluster mode's takeover of the tenant's state keys.
//! - `slot`: sweep slots and retry waits.
//! - `alarm`: the fleet's poll alarms, one task for every tenant's next poll.

pub mod alarm;
mod baseline;
mod claim;
mod delivery;
mod feed_job;
mod hints;
pub mod issues;
mod quarantine;
mod schedule;
pub mod slot;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use slot::{Held, Slots, StopSignal, TenantSlot};
use tracing::Instrument;

use crate::config::TenantSpec;
use crate::event::Normalizer;
use crate::faults::FaultInjection;
use crate::health::HealthMap;
use crate::metrics::Observer;
use crate::sink::SinkStats;
use crate::state::{Commit, StateStore, Write};
use crate::wiz::{TenantClient, WizHttp};

/// Polls in a row whose credentials were refused before the tenant is parked as `failed` (until
/// its configuration changes or `failed_cooldown` passes), so a wrong secret does not keep
/// hitting the token endpoint.
pub const PARK_AFTER_REFUSALS: u32 = 3;

/// Messages of a tenant actor.
pub enum TenantMsg {
    /// Start a poll now (timer, hints, a reroute). Ignored while one runs.
    Poll,
    /// An operator asked for a poll (`full`: a full sweep, a resync). It starts now; while a
    /// poll runs, another follows as soon as that one ends, so what changed after the running
    /// poll read its pages is fetched at once rather than an interval later.
    Asked { full: bool },
    /// A sweep slot became free for the poll that was waiting for it.
    Permit(Held),
    /// Fetch and deliver the next page of the running sweep.
    NextPage,
    /// Try again to deliver the page the sink did not acknowledge.
    Resend,
    /// The poll interval or rate limit changed (a reload): apply in place.
    Update(Arc<TenantSpec>),
    /// Cluster mode: try to take the tenant over (before its first poll).
    Claim,
    /// Webhook hints are waiting in the tenant's queue (or it overflowed).
    Hints,
    /// The sinks that take this tenant's events changed (a reload): a new one gets a baseline,
    /// at a poll started now.
    Destinations(Arc<[String]>, crate::format::FormatSet),
    /// Send the baseline to this destination again (an operator's request), at a poll started
    /// now.
    Baseline(String),
}

/// The error kind of a state write refused by fencing (cluster mode).
const FENCED: &str = "fenced";

/// Everything a tenant actor is built from; the supervisor keeps it to rebuild the actor after a
/// crash (ractor re-runs `pre_start` on a new actor; nothing restarts in place).
#[derive(Clone)]
pub struct TenantArgs {
    pub spec: Arc<TenantSpec>,
    pub http: WizHttp,
    pub health: HealthMap,
    /// The registry name of the sink actor (looked up per delivery: it changes after a restart).
    pub sink_name: String,
    pub sink_stats: Arc<SinkStats>,
    /// Checkpoints and known issues; survives restarts of the actor and of the process.
    pub store: StateStore,
    /// The fleet's sweep slots (`max_concurrent_sweeps`).
    pub slots: Slots,
    /// The fleet's poll alarms (the tenant's timer).
    pub alarms: alarm::Alarms,
    /// Given by the supervisor before it stops this tenant on purpose: ends retry waits at once.
    pub stop: Arc<StopSignal>,
    pub faults: FaultInjection,
    /// Logs and counts what happens.
    pub observer: Observer,
    /// Delay of the first poll (jitter at start, zero after a crash: the supervisor already
    /// waited).
    pub first_poll_in: Duration,
    /// Cluster mode: how long a claim waits for a live holder to release the tenant before it
    /// takes it anyway (fencing still protects the holder's state).
    pub claim_patience: Duration,
    /// How long a tenant whose credentials keep being refused stays parked.
    pub failed_cooldown: Duration,
    /// Issue ids webhook hints named, waiting for lookup (kept across restarts of the actor).
    pub hints: Arc<crate::hints::HintQueue>,
    /// The fleet-wide hint metrics (lookups by result).
    pub hint_metrics: crate::hints::HookMetrics,
    /// The sinks that take this tenant's events (see [`baseline`]).
    pub destinations: Arc<[String]>,
    /// The formats those sinks take: each page is written in all of them (see
    /// [`crate::format`]).
    pub formats: crate::format::FormatSet,
}

pub struct TenantActorState {
    args: TenantArgs,
    client: Arc<TenantClient>,
    /// The sweep slot this tenant holds while it sweeps (given back during retry waits).
    slot: Arc<TenantSlot>,
    normalizer: Normalizer,
    /// The armed poll alarm (see [`alarm`]).
    timer: Option<alarm::AlarmKey>,
    /// When the armed timer is due, to measure how late the poll starts.
    due: Option<Instant>,
    /// The sweep running now (boxed: it is large, and an idle tenant's state lives in its
    /// actor's task for the tenant's whole life).
    sweep: Option<Box<issues::ActiveSweep>>,
    /// The page given to the sink and not acknowledged yet, whichever job built it (boxed: an
    /// idle tenant pays a pointer).
    pending: Option<Box<delivery::Pending>>,
    /// A poll asked for a sweep slot and is waiting for it.
    waiting_for_permit: bool,
    /// The next sweep is full whatever the checkpoint says (an operator asked).
    force_full: bool,
    consecutive_failures: u32,
    /// Polls in a row that failed because the credentials were refused.
    refusals: u32,
    /// Reused output buffer.
    buf: crate::format::Lines,
    /// The tenant is this replica's to poll (always, without cluster mode); until then polls
    /// are ignored and claims retried.
    claimed: bool,
    /// When the first claim was tried (`None` before it).
    claiming_since: Option<Instant>,
    /// The hint queue overflowed during a sweep: a full one follows it at once.
    poll_after_sweep: bool,
    /// An operator asked for a poll while one ran: the timer armed when it ends fires at once.
    poll_asked: bool,
    /// Cluster mode: how many of the tenant's state keys are claimed so far.
    keys_claimed: usize,
    /// Cluster mode: the lease epoch in which this tenant last proved it owns its state (its
    /// claim, or a re-assertion after a lapse); see [`claim::Gate`].
    lease_epoch: u64,
    /// Cluster mode: claims in a row that failed (their retries back off).
    claim_failures: u32,
    /// The running poll's remaining feeds (see [`schedule`]).
    plan: Option<schedule::PollPlan>,
    /// The feed (other than Issues) being swept (boxed: an idle tenant pays a pointer).
    feed_job: Option<Box<feed_job::FeedJob>>,
    /// Feeds sitting out polls after a failure.
    feed_retry: HashMap<crate::feeds::FeedName, schedule::FeedRetry>,
    /// Writes the events of the feeds beyond Issues (made at the first feed job: an Issues-only
    /// tenant never needs one).
    feed_normalizer: Option<Box<crate::feeds::normalize::FeedNormalizer>>,
    /// The baseline being sent (boxed: an idle tenant pays a pointer).
    baseline: Option<Box<baseline::BaselineJob>>,
    /// Destinations an operator asked a baseline for, by feed (Issues and each feed with item
    /// states), until that feed's baseline went out.
    baseline_asked: std::collections::BTreeSet<(crate::feeds::FeedName, String)>,
    /// A feed's baseline that yielded between polls (a long window): where it goes on.
    feed_baseline_stash: Option<Box<feed_job::BaselineStash>>,
    /// Feeds whose baseline failed this poll: their window runs without it.
    feed_baseline_skip: std::collections::BTreeSet<crate::feeds::FeedName>,
    /// The baseline failed during this poll: its sweep goes on without it.
    baseline_skip: bool,
}

pub struct WizTenantActor;

impl TenantActorState {
    fn id(&self) -> &str {
        &self.args.spec.id
    }

    /// A step of a poll runs or waits for its slot (a sweep, a feed job, a baseline): a new
    /// poll cannot start now.
    fn step_runs(&self) -> bool {
        self.sweep.is_some()
            || self.waiting_for_permit
            || self.feed_job.is_some()
            || self.baseline.is_some()
    }

    /// Writes known states, settled marks and/or a checkpoint durably (through the store's
    /// group-commit writer: commits of tenants that arrive together share one fsync).
    async fn commit(&self, c: Commit) -> Result<(), (&'static str, String)> {
        self.write(Write::Commit(c)).await
    }

    async fn write(&self, w: Write) -> Result<(), (&'static str, String)> {
        self.write_to(&self.args.spec.id, w).await
    }

    /// [`Self::write`] under another state key (a feed's).
    async fn write_to(&self, key: &str, w: Write) -> Result<(), (&'static str, String)> {
        self.args
            .store
            .write(key, w)
            .await
            .map_err(|e| (if e.fenced { FENCED } else { "state" }, e.to_string()))
    }

    /// Another replica owns the tenant now (a state write was fenced): stop here without writing
    /// anything more. The supervisor starts it again, and the new actor waits to claim it.
    fn stop_fenced(&self, myself: &ActorRef<TenantMsg>, message: &str) {
        tracing::warn!(tenant = %self.args.spec.id, error = %message, "tenant taken over by another replica; stopping it here");
        myself.stop(Some(format!("{FENCED}: {message}")));
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl Actor for WizTenantActor {
    type Msg = TenantMsg;
    type State = TenantActorState;
    type Arguments = TenantArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<TenantMsg>,
        args: TenantArgs,
    ) -> Result<TenantActorState, ActorProcessingErr> {
        let client = args.http.tenant(args.spec.clone());
        let slot = Arc::new(TenantSlot::new(
            args.slots.clone(),
            &args.spec.id,
            args.health.clone(),
            args.stop.clone(),
        ));
        client.set_waits(Arc::new(slot.clone()));
        let normalizer = Normalizer::new(&args.spec);
        let mut state = TenantActorState {
            client,
            slot,
            normalizer,
            timer: None,
            due: None,
            sweep: None,
            pending: None,
            waiting_for_permit: false,
            force_full: false,
            consecutive_failures: 0,
            refusals: 0,
            buf: Default::default(),
            claimed: args.store.replicated().is_none(),
            claiming_since: None,
            poll_after_sweep: false,
            poll_asked: false,
            keys_claimed: 0,
            lease_epoch: 0,
            claim_failures: 0,
            plan: None,
            feed_job: None,
            feed_retry: HashMap::new(),
            feed_normalizer: None,
            baseline: None,
            baseline_asked: Default::default(),
            feed_baseline_stash: None,
            feed_baseline_skip: Default::default(),
            baseline_skip: false,
            args,
        };
        let me = myself.clone();
        state.args.hints.attach(
            myself.get_id(),
            Box::new(move || {
                let _ = me.send_message(TenantMsg::Hints);
            }),
        );
        if state.claimed {
            let first = state.args.first_poll_in;
            state.arm_timer(&myself, first);
            if state.args.hints.pending() {
                let _ = myself.send_message(TenantMsg::Hints);
            }
        } else {
            // Cluster mode: the claim waits for the tenant's first poll (spread over
            // `startup_jitter` like the polls), then the poll follows at once. A tenant moved on
            // before its turn never claimed, so placement churn at a cold start or a failover
            // costs NATS nothing for it, and a failover's claims are spread, not sent at once.
            let first = state.args.first_poll_in;
            if first.is_zero() {
                let _ = myself.send_message(TenantMsg::Claim);
            } else {
                myself.send_after(first, || TenantMsg::Claim);
            }
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<TenantMsg>,
        state: &mut TenantActorState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.timer.take() {
            state.args.alarms.cancel(t);
        }
        state.args.hints.detach(myself.get_id());
        Ok(())
    }

    // The arms that drive a sweep are boxed: ractor keeps every actor's message loop future for
    // the actor's whole life, and that future is as large as the largest await in `handle`. Boxed,
    // an idle tenant costs a few hundred bytes there instead of kilobytes (100,000 tenants).
    async fn handle(
        &self,
        myself: ActorRef<TenantMsg>,
        msg: TenantMsg,
        state: &mut TenantActorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TenantMsg::Asked { full } => {
                state.force_full |= full;
                // A hints-only job with no poll behind it: the poll the `Poll` below starts
                // after that job begins after this ask, so none needs to follow it.
                let hints_job_alone =
                    state.plan.is_none() && state.sweep.as_ref().is_some_and(|a| a.hints_only);
                if !hints_job_alone && (state.plan.is_some() || state.step_runs()) {
                    tracing::debug!(tenant = %state.id(), "poll asked while one runs; another follows it");
                    state.poll_asked = true;
                }
                // Starts a poll when none runs (or the rest of one a hints-only job interrupted).
                let _ = myself.send_message(TenantMsg::Poll);
            }
            TenantMsg::Claim => Box::pin(state.claim(&myself)).await,
            TenantMsg::Hints => Box::pin(state.on_hints(&myself)).await,
            TenantMsg::Poll => {
                if !state.claimed {
                    tracing::debug!(tenant = %state.id(), "poll requested before the tenant was taken over; ignored");
                    return Ok(());
                }
                if let Some(a) = state.sweep.as_mut().filter(|a| a.hints_only) {
                    a.poll_after = true;
                    return Ok(());
                }
                if state.step_runs() {
                    tracing::debug!(tenant = %state.id(), "poll requested while one runs; ignored");
                    return Ok(());
                }
                if let Some(t) = state.timer.take() {
                    state.args.alarms.cancel(t);
                }
                // A new poll, or the rest of one a hints-only job interrupted.
                if state.plan.is_none() {
                    state.plan = Some(state.new_plan());
                }
                state.ask_slot(&myself);
            }
            TenantMsg::Permit(permit) => {
                state.waiting_for_permit = false;
                if let Some(a) = state.sweep.as_mut().filter(|a| a.hints_only) {
                    // A hints-only job started while the poll waited: the poll follows it.
                    a.poll_after = true;
                } else if !state.step_runs() {
                    Box::pin(state.start_step(&myself, permit)).await;
                }
            }
            TenantMsg::NextPage if state.feed_job.is_some() => {
                Box::pin(state.feed_next_page(&myself)).await
            }
            TenantMsg::NextPage if state.baseline.is_some() => {
                Box::pin(state.baseline_next(&myself)).await
            }
            TenantMsg::NextPage => Box::pin(state.next_page(&myself)).await,
            TenantMsg::Resend => {
                let span = match &state.sweep {
                    Some(a) => {
                        tracing::info_span!(parent: &a.span, "page_resend", tenant = %state.args.spec.id)
                    }
                    None => tracing::Span::none(),
                };
                Box::pin(state.try_deliver(&myself).instrument(span)).await
            }
            TenantMsg::Update(spec) => state.update_spec(&myself, spec),
            TenantMsg::Destinations(d, formats) => {
                state.args.destinations = d;
                state.args.formats = formats;
                Box::pin(state.baseline_rerouted(&myself)).await;
                let _ = myself.send_message(TenantMsg::Poll);
            }
            TenantMsg::Baseline(sink) => {
                for feed in state.args.spec.feeds.clone() {
                    if baseline::has_baseline(feed) {
                        state.baseline_asked.insert((feed, sink.clone()));
                    }
                }
                let _ = myself.send_message(TenantMsg::Poll);
            }
        }
        Ok(())
    }
}
