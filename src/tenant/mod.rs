//! The tenant actor: one per configured Wiz tenant. It owns its Wiz client (token cache and its
//! handle on the credential's rate limiter) and its poll timer, and runs one poll at a time.
//!
//! A poll is a sweep over every page, driven one page per message: fetch a page, normalize it,
//! drop the issues whose state did not change, send the rest to the sink and wait for its ack,
//! remember what was delivered, then ask itself for the next page. Between pages the mailbox is
//! free, so a stop request takes effect after the page in flight is delivered. The timer is
//! re-armed with `send_after` once a poll ends, never with an interval.
//!
//! A full sweep ends with a reconciliation: the known issues in the watched statuses it did not
//! see are looked up by id, a batch per message, and those Wiz no longer returns are reported as
//! vanished (see [`crate::event::Normalizer::vanished`]).
//!
//! Webhook hints ([`crate::hints`]) are looked up by id in batches (`hints`): between the pages of
//! a running sweep, or, when none runs, in a short lookup-only job that moves no checkpoint.
//!
//! A poll runs the tenant's feeds one after another (`feeds`): the Issues sweep above, then one
//! window of each other feed, each step with a sweep slot, all through the same client.

mod feeds;
mod hints;
pub mod slot;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use rand::Rng;
use slot::{Held, Slots, StopSignal, TenantSlot};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::change::{change, Change, Known, VANISHED};
use crate::config::TenantSpec;
use crate::event::{issue_fingerprint, now_rfc3339, EventKind, Normalizer};
use crate::faults::FaultInjection;
use crate::health::{HealthMap, LastError, TenantState};
use crate::metrics::{Observation, Observer};
use crate::sink::{deliver, Batch, SinkMsg, SinkStats};
use crate::state::{
    Checkpoint, ClaimResult, Commit, StateStore, SweepPosition, UpdatedAtProbe, Write,
};
use crate::wiz::page::{Issue, Page};
use crate::wiz::TimeRange;
use crate::wiz::{IssueFilter, IssueOrder, Sweep, TenantClient, WizHttp};

/// Longest wait for the sink's ack before the page is sent again.
const ACK_TIMEOUT: Duration = Duration::from_secs(120);
/// First and longest delay between attempts to deliver a page the sink did not take.
const RESEND_FIRST: Duration = Duration::from_millis(200);
const RESEND_MAX: Duration = Duration::from_secs(5);
/// First delay before polling again after a failed poll; doubles up to the poll interval.
const FAILED_POLL_FIRST: Duration = Duration::from_secs(5);
/// Polls in a row whose credentials were refused before the tenant is parked as `failed` (until
/// its configuration changes or `failed_cooldown` passes), so a wrong secret does not keep
/// hitting the token endpoint.
pub const PARK_AFTER_REFUSALS: u32 = 3;

/// Messages of a tenant actor.
pub enum TenantMsg {
    /// Start a poll now (timer, or an operator's request). Ignored while one runs.
    Poll,
    /// Make the next poll a full sweep (an operator's resync), and start it now.
    PollFull,
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
}

/// How often a claim is tried again while another replica still holds the tenant.
const CLAIM_RETRY: Duration = Duration::from_millis(250);
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
}

/// A page delivered to the sink but not yet acknowledged.
struct Pending {
    batch: Arc<Batch>,
    ledger: Ledger,
    attempts: u32,
}

/// What a page's delivery settles once the sink took it: the states to remember, the in-flight
/// marks to clear, and the counts to report.
#[derive(Default)]
struct Ledger {
    remember: Vec<(String, Known)>,
    /// States of the page's `issue.opened` / `issue.reopened` events, marked in flight before
    /// the page goes to the sink (see [`Write::Mark`]).
    opening: Vec<(String, Known)>,
    /// In-flight marks the commit after the ack clears.
    settle: Vec<String>,
    /// Events by kind.
    kinds: Vec<(EventKind, u64)>,
    /// How many of the events report an issue that vanished from Wiz.
    vanished: u64,
    /// For each event a webhook hint led to: when the hint arrived.
    hinted: Vec<Instant>,
    /// The latest change time (`updatedAt` or `statusChangedAt`) among the events: its age at
    /// delivery is the tenant's freshness.
    newest_change: Option<SystemTime>,
}

/// The events of one page being built, and their ledger.
#[derive(Default)]
struct Outbox {
    lines: Vec<u8>,
    events: usize,
    ledger: Ledger,
}

impl Outbox {
    fn count(&mut self, kind: EventKind) {
        self.events += 1;
        let kinds = &mut self.ledger.kinds;
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => kinds.push((kind, 1)),
        }
    }
}

struct ActiveSweep {
    /// The poll's trace span; pages are its children.
    span: tracing::Span,
    /// A full sweep of the watched statuses (else incremental: what changed since the checkpoint).
    full: bool,
    /// The checkpoint the sweep started from.
    checkpoint: Checkpoint,
    /// Wall-clock time the sweep started: what the next incremental poll asks changes after.
    started_at: SystemTime,
    /// It continues a sweep a crash or a handover interrupted (see `Checkpoint::position`).
    resumed: bool,
    /// Pages the sweep had done when this actor took it up.
    pages_at_start: u32,
    /// The client's request count when the sweep started (the poll's cost, for health).
    requests_at_start: u64,
    sweep: Sweep,
    started: Instant,
    events: u64,
    observed_at: String,
    pending: Option<Pending>,
    /// Ids a full sweep saw (an incremental one leaves it empty).
    seen: HashSet<String>,
    /// Once a full sweep's pages are done: the known issues in the watched statuses it did not
    /// see, in batches still to be looked up by id (each batch is then delivered as a page).
    reconcile: Option<VecDeque<Vec<(String, Known)>>>,
    /// A lookup-only job for webhook hints (no pages, no checkpoint, not a poll).
    hints_only: bool,
    /// The last step looked hints up: the next one fetches a page (hints and pages alternate).
    hint_step: bool,
    /// A poll came due during a hints-only job: it starts when the job ends.
    poll_after: bool,
    /// A hints-only job: the health state to show again when it ends.
    state_before: TenantState,
}

pub struct TenantActorState {
    args: TenantArgs,
    client: Arc<TenantClient>,
    /// The sweep slot this tenant holds while it sweeps (given back during retry waits).
    slot: Arc<TenantSlot>,
    normalizer: Normalizer,
    timer: Option<JoinHandle<Result<(), ractor::MessagingErr<TenantMsg>>>>,
    /// When the armed timer is due, to measure how late the poll starts.
    due: Option<Instant>,
    sweep: Option<ActiveSweep>,
    /// A poll asked for a sweep slot and is waiting for it.
    waiting_for_permit: bool,
    /// The next sweep is full whatever the checkpoint says (an operator asked).
    force_full: bool,
    consecutive_failures: u32,
    /// Polls in a row that failed because the credentials were refused.
    refusals: u32,
    /// Reused output buffer.
    buf: Vec<u8>,
    /// The tenant is this replica's to poll (always, without cluster mode); until then polls
    /// are ignored and claims retried.
    claimed: bool,
    /// When the first claim was tried.
    claiming_since: Instant,
    /// The hint queue overflowed during a sweep: a full one follows it at once.
    poll_after_sweep: bool,
    /// Cluster mode: how many of the tenant's state keys are claimed so far.
    keys_claimed: usize,
    /// The running poll's remaining feeds (see [`feeds`]).
    plan: Option<feeds::PollPlan>,
    /// The feed (other than Issues) being swept (boxed: an idle tenant pays a pointer).
    feed_job: Option<Box<feeds::FeedJob>>,
    /// Feeds sitting out polls after a failure.
    feed_retry: HashMap<crate::feeds::FeedName, feeds::FeedRetry>,
    /// Writes the events of the feeds beyond Issues (made at the first feed job: an Issues-only
    /// tenant never needs one).
    feed_normalizer: Option<Box<crate::feeds::normalize::FeedNormalizer>>,
}

pub struct WizTenantActor;

impl TenantActorState {
    fn id(&self) -> &str {
        &self.args.spec.id
    }

    fn arm_timer(&mut self, myself: &ActorRef<TenantMsg>, after: Duration) {
        if let Some(t) = self.timer.take() {
            t.abort();
        }
        self.timer = Some(myself.send_after(after, || TenantMsg::Poll));
        self.due = Some(Instant::now() + after);
        let at = SystemTime::now() + after;
        self.args
            .health
            .update(self.id(), |h| h.next_poll_at = Some(at));
    }

    async fn start_sweep(&mut self, myself: &ActorRef<TenantMsg>, permit: Held) {
        // An unreadable checkpoint means a full sweep, which restores it.
        let mut checkpoint = match self.args.store.checkpoint(&self.args.spec.id) {
            Ok(c) => c.unwrap_or_default(),
            Err(e) => {
                tracing::error!(tenant = %self.args.spec.id, error = %e, "cannot read the checkpoint; doing a full sweep");
                Checkpoint::default()
            }
        };
        // The very first sweep fixes the high-water mark at its start, before it delivers
        // anything: every change to an issue delivered from then on is later than the mark,
        // even if this sweep is interrupted and another one completes first.
        if checkpoint.high_water.is_none() {
            let now = SystemTime::now();
            checkpoint.high_water = Some(humantime::format_rfc3339_micros(now).to_string());
            let first = Commit {
                checkpoint: Some(checkpoint.clone()),
                ..Default::default()
            };
            if let Err((kind, e)) = self.commit(first).await {
                drop(permit);
                if kind == FENCED {
                    return self.stop_fenced(myself, &e);
                }
                self.args.health.update(&self.args.spec.id, |h| {
                    h.last_error = Some(LastError {
                        message: e.clone(),
                        at: now,
                    });
                    h.state = TenantState::Backoff;
                });
                tracing::error!(tenant = %self.args.spec.id, error = %e, "cannot write the first checkpoint; retrying later");
                self.step_done(myself, Some(FAILED_POLL_FIRST));
                return;
            }
        }
        let spec = &self.args.spec;
        let now_unix = unix_now();
        let force_full = std::mem::take(&mut self.force_full);
        // A sweep a crash (or a handover) interrupted continues where it stopped, unless an
        // operator asked for a full sweep or the position is older than a full sweep interval.
        let resume = checkpoint.position.take().filter(|p| {
            !force_full
                && humantime::parse_rfc3339_weak(&p.started_at)
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_some_and(|age| age < spec.full_sweep_interval.0)
        });
        if let Some(p) = resume {
            let started_at =
                humantime::parse_rfc3339_weak(&p.started_at).unwrap_or_else(|_| SystemTime::now());
            tracing::info!(tenant = %spec.id, full = p.full, pages_done = p.pages, "continuing the interrupted sweep");
            let sweep = self.client.resume_sweep(
                p.filter.clone(),
                IssueOrder::CREATED_ASC,
                p.after.clone(),
                p.pages,
            );
            return self
                .begin(myself, permit, checkpoint, p.full, sweep, started_at, true)
                .await;
        }
        // A small tenant (its last full sweep fit in `full_sweep_max_pages`) sweeps fully every
        // time: that costs its few pages and catches every change the fingerprint covers
        // (severity, notes, due dates), which incremental polls on `statusChangedAt` miss.
        // Where Wiz takes `filterBy.updatedAt` (or it is not known yet: this poll asks), an
        // incremental poll sees every edit and a small tenant need not sweep fully each time.
        let small = checkpoint
            .last_full_pages
            .is_some_and(|p| p <= spec.full_sweep_max_pages)
            && !UpdatedAtProbe::try_it(checkpoint.updated_at_filter, now_unix);
        let due_full = force_full
            || small
            || checkpoint
                .last_full_sweep
                .is_none_or(|t| now_unix.saturating_sub(t) >= spec.full_sweep_interval.0.as_secs());
        let since = checkpoint
            .high_water
            .as_deref()
            .and_then(|h| humantime::parse_rfc3339_weak(h).ok());
        let (full, filter) = match since {
            Some(hw) if !due_full => {
                // Every status, so transitions out of the watched set are seen too. On
                // `updatedAt` when Wiz takes it (every edit), else on `statusChangedAt`.
                let after = hw.checked_sub(spec.incremental_overlap.0).unwrap_or(hw);
                let range = Some(TimeRange {
                    after: Some(humantime::format_rfc3339_micros(after).to_string()),
                    before: None,
                });
                let filter = if UpdatedAtProbe::try_it(checkpoint.updated_at_filter, now_unix) {
                    IssueFilter {
                        updated_at: range,
                        ..Default::default()
                    }
                } else {
                    IssueFilter {
                        status_changed_at: range,
                        ..Default::default()
                    }
                };
                (false, filter)
            }
            _ => (
                true,
                IssueFilter {
                    status: spec.statuses.clone(),
                    ..Default::default()
                },
            ),
        };
        let sweep = self.client.sweep(filter, IssueOrder::CREATED_ASC);
        self.begin(
            myself,
            permit,
            checkpoint,
            full,
            sweep,
            SystemTime::now(),
            false,
        )
        .await
    }

    /// Makes `sweep` the running one and asks for its first page.
    #[allow(clippy::too_many_arguments)]
    async fn begin(
        &mut self,
        myself: &ActorRef<TenantMsg>,
        permit: Held,
        checkpoint: Checkpoint,
        full: bool,
        sweep: Sweep,
        started_at: SystemTime,
        resumed: bool,
    ) {
        let spec = &self.args.spec;
        self.sweep = Some(ActiveSweep {
            span: tracing::info_span!("poll", tenant = %spec.id, full),
            full,
            checkpoint,
            started_at,
            resumed,
            pages_at_start: sweep.pages(),
            requests_at_start: self
                .client
                .stats
                .requests
                .load(std::sync::atomic::Ordering::Relaxed),
            sweep,
            started: Instant::now(),
            events: 0,
            observed_at: now_rfc3339(),
            pending: None,
            seen: HashSet::new(),
            reconcile: None,
            hints_only: false,
            hint_step: false,
            poll_after: false,
            state_before: TenantState::Polling,
        });
        let now = SystemTime::now();
        // A poll asked for early (by an operator) is not late.
        let lag = self
            .due
            .take()
            .map(|due| Instant::now().saturating_duration_since(due).as_millis() as u64);
        self.args.health.update(self.id(), |h| {
            h.state = TenantState::Polling;
            h.last_poll_at = Some(now);
            h.next_poll_at = None;
            if lag.is_some() {
                h.last_poll_lag_ms = lag;
            }
        });
        self.slot.hold(permit);
        let _ = myself.send_message(TenantMsg::NextPage);
    }

    /// Ends the running sweep and schedules the next poll. An error carries its kind (for
    /// metrics) and message.
    async fn finish(
        &mut self,
        myself: &ActorRef<TenantMsg>,
        result: Result<(), (&'static str, String)>,
    ) {
        if self.sweep.as_ref().is_some_and(|a| a.hints_only) {
            return self.finish_hints(myself, result);
        }
        let Some(sweep) = self.sweep.take() else {
            return;
        };
        self.slot.release();
        // Hints that arrived while the sweep ran and were not taken between its pages; or an
        // overflow that asked for a full sweep after this one.
        if std::mem::take(&mut self.poll_after_sweep) {
            let _ = myself.send_message(TenantMsg::Poll);
        } else if self.args.hints.pending() {
            let _ = myself.send_message(TenantMsg::Hints);
        }
        if matches!(&result, Err((kind, _)) if *kind == "stopping") {
            // A retry wait was cut short because the tenant is being stopped: nothing failed.
            return;
        }
        let (events, duration) = (sweep.events, sweep.started.elapsed());
        let requests = self
            .client
            .stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(sweep.requests_at_start);
        let mode = if sweep.full { "full" } else { "incremental" };
        self.args.health.update(self.id(), |h| {
            h.last_poll_mode = Some(mode);
            h.last_poll_requests = Some(requests);
        });
        // A completed sweep moves the checkpoint: the high-water mark, and the time of the last
        // full sweep when this was one.
        let result = match result {
            Ok(()) => {
                // The high-water mark is the sweep's start, not the latest `statusChangedAt` it
                // saw: a change made while the sweep paged may sit on a page already fetched, and
                // only a bound from before the sweep is sure to ask for it again. A full sweep
                // sees the watched statuses only, so it never moves the mark (but sets the first
                // one); an incremental sweep sees every status and moves it to its start.
                let mut cp = sweep.checkpoint.clone();
                let previous = cp
                    .high_water
                    .as_deref()
                    .and_then(|h| humantime::parse_rfc3339_weak(h).ok());
                let start = sweep.started_at;
                let moved = match previous {
                    None => Some(start),
                    Some(p) if !sweep.full && start > p => Some(start),
                    Some(_) => None,
                };
                if let Some(t) = moved {
                    cp.high_water = Some(humantime::format_rfc3339_micros(t).to_string());
                }
                if sweep.full {
                    cp.last_full_sweep = Some(unix_now());
                    cp.last_full_pages = Some(sweep.sweep.pages());
                }
                self.commit(Commit {
                    checkpoint: Some(cp),
                    ..Default::default()
                })
                .await
            }
            Err(e) => {
                // A resumed sweep that could not fetch even one page may hold a cursor Wiz no
                // longer takes: the next poll starts over instead.
                if sweep.resumed && sweep.sweep.pages() == sweep.pages_at_start {
                    let _ = self
                        .commit(Commit {
                            checkpoint: Some(sweep.checkpoint.clone()),
                            ..Default::default()
                        })
                        .await;
                }
                Err(e)
            }
        };
        let now = SystemTime::now();
        let interval = self.args.spec.poll_interval.0;
        match result {
            Ok(()) => {
                self.consecutive_failures = 0;
                self.refusals = 0;
                self.args.observer.emit(
                    &self.args.spec.id,
                    Observation::PollSucceeded {
                        events_added: events,
                        duration,
                    },
                );
                let multi = self.args.spec.feeds.len() > 1;
                self.args.health.update(self.id(), |h| {
                    h.state = TenantState::Idle;
                    h.last_success_at = Some(now);
                    h.events_added = events;
                    h.polls += 1;
                    if multi {
                        let f = h.feed("issues");
                        f.state = crate::health::FeedState::Idle;
                        f.last_success_at = Some(now);
                        f.events_added = events;
                        f.events_total += events;
                    }
                });
                self.step_done(myself, Some(interval));
            }
            Err((FENCED, message)) => self.stop_fenced(myself, &message),
            Err((kind, message)) => {
                self.consecutive_failures += 1;
                let exp = self.consecutive_failures.saturating_sub(1).min(16);
                let base = FAILED_POLL_FIRST.saturating_mul(1 << exp).min(interval);
                let parked = self.refusals >= PARK_AFTER_REFUSALS;
                let delay = if parked {
                    self.args.failed_cooldown
                } else {
                    jitter(base)
                };
                let message = if parked {
                    format!(
                        "credentials refused {} times in a row; parked until the configuration changes or connector.failed_cooldown ({}) passes: {message}",
                        self.refusals,
                        humantime::format_duration(self.args.failed_cooldown)
                    )
                } else {
                    message
                };
                self.args.observer.emit(
                    &self.args.spec.id,
                    Observation::PollFailed {
                        kind,
                        error: &message,
                        duration,
                        retry_in: delay,
                    },
                );
                if let Some(p) = self.plan.as_mut() {
                    p.issues_failed = true;
                }
                let multi = self.args.spec.feeds.len() > 1;
                self.args.health.update(self.id(), |h| {
                    h.state = if parked {
                        TenantState::Failed
                    } else {
                        TenantState::Backoff
                    };
                    let error = LastError { message, at: now };
                    if multi {
                        let f = h.feed("issues");
                        f.state = crate::health::FeedState::Backoff;
                        f.last_error = Some(error.clone());
                        f.events_added = events;
                        f.events_total += events;
                    }
                    h.last_error = Some(error);
                    h.events_added = events;
                    h.polls += 1;
                });
                self.step_done(myself, Some(delay));
            }
        }
    }

    /// The checkpoint with the running sweep's position, for the commit of a page that is not the
    /// sweep's last (`None` after the last page: the sweep's end commits its checkpoint).
    fn position(&self) -> Option<Checkpoint> {
        let a = self.sweep.as_ref()?;
        let after = a.sweep.next_cursor()?.to_string();
        let mut cp = a.checkpoint.clone();
        cp.position = Some(Box::new(SweepPosition {
            full: a.full,
            filter: a.sweep.filter().clone(),
            started_at: humantime::format_rfc3339_micros(a.started_at).to_string(),
            after: Some(after),
            pages: a.sweep.pages(),
        }));
        Some(cp)
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

    /// Cluster mode: tries to take the tenant over; retries shortly while another replica
    /// holds it. Once claimed, the poll timer starts.
    async fn claim(&mut self, myself: &ActorRef<TenantMsg>) {
        if self.claimed {
            return;
        }
        let force = self.claiming_since.elapsed() >= self.args.claim_patience;
        let id = self.args.spec.id.clone();
        // One claim per state key (the tenant's, then each feed's), in order; a key already
        // claimed is not claimed again when a later one has to wait.
        let keys = crate::feeds::state_keys(&id, &self.args.spec.feeds);
        let mut result = Ok(ClaimResult::Claimed { moved: false });
        let mut moved_any = false;
        while self.keys_claimed < keys.len() {
            result = self.args.store.claim(&keys[self.keys_claimed], force).await;
            match &result {
                Ok(ClaimResult::Claimed { moved }) => {
                    moved_any |= *moved;
                    self.keys_claimed += 1;
                }
                _ => break,
            }
        }
        if self.keys_claimed == keys.len() {
            result = Ok(ClaimResult::Claimed { moved: moved_any });
        }
        match result {
            Ok(ClaimResult::Claimed { moved }) => {
                self.claimed = true;
                tracing::info!(tenant = %id, state_moved = moved, waited_ms = self.claiming_since.elapsed().as_millis() as u64, "tenant taken over by this replica");
                let first = self.args.first_poll_in;
                self.arm_timer(myself, first);
                if self.args.hints.pending() {
                    let _ = myself.send_message(TenantMsg::Hints);
                }
            }
            Ok(ClaimResult::Wait { holder }) => {
                tracing::debug!(tenant = %id, holder = %holder, "waiting for the tenant's previous owner to hand it over");
                myself.send_after(CLAIM_RETRY, || TenantMsg::Claim);
            }
            Err(e) => {
                let message = format!("cannot take the tenant over: {e}");
                tracing::warn!(tenant = %id, error = %message, "claim failed; retrying");
                let at = SystemTime::now();
                self.args.health.update(&id, |h| {
                    h.last_error = Some(LastError { message, at });
                });
                myself.send_after(Duration::from_secs(1), || TenantMsg::Claim);
            }
        }
    }

    /// Sends the pending page to the sink; on the ack, remembers it and moves on.
    async fn try_deliver(&mut self, myself: &ActorRef<TenantMsg>) {
        let Some(batch) = self
            .sweep
            .as_ref()
            .and_then(|a| a.pending.as_ref())
            .map(|p| p.batch.clone())
        else {
            return;
        };
        let result = self.to_sink(batch).await;
        let Some(active) = self.sweep.as_mut() else {
            return;
        };
        let Some(pending) = active.pending.as_mut() else {
            return;
        };
        match result {
            Ok(()) => {
                let pending = active.pending.take().expect("checked above");
                active.events += pending.batch.events as u64;
                let events = pending.batch.events as u64;
                self.delivered_freshness(&pending.ledger.hinted, pending.ledger.newest_change);
                for (kind, count) in pending.ledger.kinds {
                    self.args.observer.emit(
                        &self.args.spec.id,
                        Observation::EventsDelivered { kind, count },
                    );
                }
                if pending.ledger.vanished > 0 {
                    self.args.observer.emit(
                        &self.args.spec.id,
                        Observation::IssuesVanished {
                            count: pending.ledger.vanished,
                        },
                    );
                }
                self.args
                    .health
                    .update(&self.args.spec.id, |h| h.events_total += events);
                // Only now, after every sink has the page, is it remembered, with the sweep's
                // position (a crash from here on continues after this page).
                let settled = Commit {
                    remember: pending.ledger.remember,
                    settle: pending.ledger.settle,
                    checkpoint: self.position(),
                };
                match self.commit(settled).await {
                    Ok(()) => {
                        let _ = myself.send_message(TenantMsg::NextPage);
                    }
                    Err(e) => self.finish(myself, Err(e)).await,
                }
            }
            Err(e) => {
                pending.attempts += 1;
                let attempts = pending.attempts;
                self.sink_refused(myself, &e, attempts);
            }
        }
    }

    /// Gives `batch` to the sink actor (looked up by name: it changes after a restart) and waits
    /// for every sink's ack.
    async fn to_sink(&self, batch: Arc<Batch>) -> Result<(), String> {
        let sink =
            ractor::registry::where_is(self.args.sink_name.clone()).map(ActorRef::<SinkMsg>::from);
        match sink {
            Some(sink) => deliver(&sink, &self.args.sink_stats, batch, ACK_TIMEOUT).await,
            None => Err("the sink is not running".to_string()),
        }
    }

    /// The sink did not take the pending page (its `attempts`-th try): reported, and tried again
    /// after a backoff (200 ms doubling to 5 s) with `Resend`.
    fn sink_refused(&self, myself: &ActorRef<TenantMsg>, e: &str, attempts: u32) {
        let exp = attempts.saturating_sub(1).min(8);
        let delay = RESEND_FIRST.saturating_mul(1 << exp).min(RESEND_MAX);
        self.args.observer.emit(
            &self.args.spec.id,
            Observation::SinkUnavailable { error: e, attempts },
        );
        let now = SystemTime::now();
        self.args.health.update(&self.args.spec.id, |h| {
            h.last_error = Some(LastError {
                message: format!("sink unavailable: {e}"),
                at: now,
            })
        });
        myself.send_after(delay, || TenantMsg::Resend);
    }

    /// Fetches the next page and hands it to the sink (or finishes the sweep). After the last
    /// page of a full sweep comes the reconciliation: the known issues the sweep did not see are
    /// looked up by id, a batch per message.
    async fn next_page(&mut self, myself: &ActorRef<TenantMsg>) {
        let Some(active) = self.sweep.as_mut() else {
            return;
        };
        // Hints go between pages: one batch, then one page, while both wait (every step in a
        // hints-only job).
        let hint_turn = active.hints_only || !active.hint_step;
        active.hint_step = false;
        if hint_turn {
            let batch = self
                .args
                .hints
                .take(self.args.spec.page_size.max(1) as usize);
            if !batch.is_empty() {
                if let Some(active) = self.sweep.as_mut() {
                    active.hint_step = true;
                }
                return self.hint_batch(myself, batch).await;
            }
        }
        let Some(active) = self.sweep.as_mut() else {
            return;
        };
        if active.hints_only {
            return self.finish(myself, Ok(())).await;
        }
        let observed_at = active.observed_at.clone();
        if let Some(batches) = active.reconcile.as_mut() {
            let Some(batch) = batches.pop_front() else {
                return self.finish(myself, Ok(())).await;
            };
            let span = tracing::info_span!(parent: &active.span, "lookup", tenant = %self.args.spec.id, ids = batch.len());
            return self
                .reconcile_batch(myself, batch, &observed_at)
                .instrument(span)
                .await;
        }
        let page_span = tracing::info_span!(
            parent: &active.span,
            "page",
            tenant = %self.args.spec.id,
            page = active.sweep.pages() + 1
        );
        let page = match active.sweep.next_page().instrument(page_span.clone()).await {
            Err(e)
                if active.sweep.pages() == 0
                    && active.sweep.filter().updated_at.is_some()
                    && e.rejects_field("updatedAt") =>
            {
                // The probe's answer: Wiz does not take `updatedAt`. The same sweep asks again
                // on `statusChangedAt`, and the answer is kept (asked again after a day).
                tracing::debug!(tenant = %self.args.spec.id, error = %e, "wiz does not accept filterBy.updatedAt; incremental polls use statusChangedAt");
                active.checkpoint.updated_at_filter = Some(UpdatedAtProbe {
                    accepted: false,
                    at: unix_now(),
                });
                let small = active
                    .checkpoint
                    .last_full_pages
                    .is_some_and(|p| p <= self.args.spec.full_sweep_max_pages);
                let filter = if small {
                    // A small tenant sweeps fully instead: only that sees every edit.
                    active.full = true;
                    IssueFilter {
                        status: self.args.spec.statuses.clone(),
                        ..Default::default()
                    }
                } else {
                    let mut filter = active.sweep.filter().clone();
                    filter.status_changed_at = filter.updated_at.take();
                    filter
                };
                active.sweep = self.client.sweep(filter, IssueOrder::CREATED_ASC);
                let _ = myself.send_message(TenantMsg::NextPage);
                return;
            }
            Err(e) => {
                self.refusals = if e.credentials_refused() {
                    self.refusals + 1
                } else {
                    0
                };
                return self
                    .finish(myself, Err((e.kind().as_str(), e.to_string())))
                    .await;
            }
            Ok(None) if active.full && active.resumed => {
                // The ids seen before the interruption are not known, so which known issues this
                // sweep missed is not either: reconciliation waits for the next full sweep.
                tracing::info!(tenant = %self.args.spec.id, "a resumed full sweep completed; reconciliation waits for the next full sweep");
                return self.finish(myself, Ok(())).await;
            }
            Ok(None) if active.full => return self.start_reconcile(myself).await,
            Ok(None) => return self.finish(myself, Ok(())).await,
            Ok(Some(page)) => page,
        };
        if active.sweep.filter().updated_at.is_some()
            && !UpdatedAtProbe::accepted(active.checkpoint.updated_at_filter)
        {
            tracing::debug!(tenant = %self.args.spec.id, "wiz accepts filterBy.updatedAt: incremental polls see every edit");
            active.checkpoint.updated_at_filter = Some(UpdatedAtProbe {
                accepted: true,
                at: unix_now(),
            });
        }
        self.args.faults.on_page(&self.args.spec.id, &page);
        let full = active.full;
        let observed = match self.observe(std::slice::from_ref(&page), &observed_at, full) {
            Ok(o) => o,
            Err(e) => return self.finish(myself, Err(e)).await,
        };
        if let Some(active) = self.sweep.as_mut() {
            active.seen.extend(observed.ids);
        }
        self.hand_over(myself, observed.outbox)
            .instrument(page_span)
            .await;
    }

    /// A full sweep's pages are done: finds the known issues in the watched statuses it did not
    /// see, and queues them for lookup by id (or finishes when there are none).
    async fn start_reconcile(&mut self, myself: &ActorRef<TenantMsg>) {
        let Some(active) = self.sweep.as_mut() else {
            return;
        };
        let seen = std::mem::take(&mut active.seen);
        // The statuses the sweep asked for (a reload may have changed the spec's since).
        let statuses = active.sweep.filter().status.clone();
        let store = self.args.store.clone();
        let tenant = self.args.spec.id.clone();
        let missing = tokio::task::spawn_blocking(move || {
            // A silent record was never reported, so its absence is nothing to report. An
            // in-flight mark left by a crash is an opening a consumer may have received though
            // the store never recorded it: if the issue is gone, that must be reported too.
            let known = store.known_with_status(&tenant, &statuses)?;
            let marks = store.in_flight(&tenant)?;
            let mut listed = HashSet::new();
            Ok::<_, crate::state::StateError>(
                known
                    .into_iter()
                    .filter(|(_, k)| !k.silent)
                    .chain(marks)
                    .filter(|(id, _)| !seen.contains(id) && listed.insert(id.clone()))
                    .collect::<Vec<_>>(),
            )
        })
        .await;
        let missing = match missing {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => return self.finish(myself, Err(("state", e.to_string()))).await,
            Err(e) => {
                return self
                    .finish(
                        myself,
                        Err(("state", format!("state store scan failed: {e}"))),
                    )
                    .await
            }
        };
        if missing.is_empty() {
            return self.finish(myself, Ok(())).await;
        }
        tracing::info!(
            tenant = %self.args.spec.id,
            missing = missing.len(),
            "the full sweep did not see some known issues; looking them up by id"
        );
        let size = self.args.spec.page_size.max(1) as usize;
        let batches = missing.chunks(size).map(<[_]>::to_vec).collect();
        if let Some(active) = self.sweep.as_mut() {
            active.reconcile = Some(batches);
        }
        let _ = myself.send_message(TenantMsg::NextPage);
    }

    /// Looks up one batch of issues a full sweep missed: those Wiz returns are compared like any
    /// observation (a status change the incremental polls did not see comes out here); those it
    /// does not return have vanished, and each gets one `issue.resolved` event marked
    /// `"vanished": true`.
    async fn reconcile_batch(
        &mut self,
        myself: &ActorRef<TenantMsg>,
        batch: Vec<(String, Known)>,
        observed_at: &str,
    ) {
        let ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
        let pages = match self.client.lookup(&ids).await {
            Ok(p) => p,
            Err(e) => {
                return self
                    .finish(myself, Err((e.kind().as_str(), e.to_string())))
                    .await
            }
        };
        let observed = match self.observe(&pages, observed_at, true) {
            Ok(o) => o,
            Err(e) => return self.finish(myself, Err(e)).await,
        };
        let mut outbox = observed.outbox;
        if observed.unreadable > 0 {
            // A node that cannot be read may be one of the ids asked for: none of this batch
            // is called vanished on that evidence, and its in-flight marks stay. The next full
            // sweep tries again.
            tracing::warn!(
                tenant = %self.args.spec.id,
                ids = ids.len(),
                unreadable = observed.unreadable,
                "an issue looked up by id could not be read; not deciding which of this batch vanished"
            );
        } else {
            // Decided for every id of the batch: found (and compared) or vanished. Their
            // in-flight marks are settled by this batch's commit.
            outbox.ledger.settle.extend(ids.iter().cloned());
            let returned: HashSet<String> = observed.ids.into_iter().collect();
            for (id, last) in batch.iter().filter(|(id, _)| !returned.contains(id)) {
                let meta = self.normalizer.vanished(
                    id,
                    &last.fingerprint,
                    last.severity.as_deref(),
                    observed_at,
                    &mut outbox.lines,
                );
                outbox.lines.push(b'\n');
                outbox.count(meta.kind);
                outbox.ledger.vanished += 1;
                outbox.ledger.remember.push((
                    meta.issue_id,
                    Known {
                        fingerprint: meta.fingerprint,
                        status: VANISHED.to_string(),
                        severity: last.severity.clone(),
                        silent: false,
                    },
                ));
            }
        }
        self.hand_over(myself, outbox).await;
    }

    /// Compares the issues of `pages` with what is known and builds the events of the changed
    /// ones. With `collect_ids`, also returns the id of every readable issue.
    fn observe(
        &mut self,
        pages: &[Page],
        observed_at: &str,
        collect_ids: bool,
    ) -> Result<Observed, (&'static str, String)> {
        let mut out = Observed {
            outbox: Outbox {
                lines: std::mem::take(&mut self.buf),
                ..Default::default()
            },
            ids: Vec::new(),
            unreadable: 0,
        };
        out.outbox.lines.clear();
        for page in pages {
            let ids: Vec<&str> = page
                .issues()
                .filter_map(|i| i.ok().map(|i| i.id()))
                .collect();
            let known = self
                .args
                .store
                .known(&self.args.spec.id, &ids)
                .map_err(|e| ("state", e.to_string()))?;
            if collect_ids {
                out.ids.extend(ids.iter().map(|s| s.to_string()));
            }
            let mut known = known.into_iter();
            for issue in page.issues() {
                let issue = match issue {
                    Ok(i) => i,
                    Err(e) => {
                        out.unreadable += 1;
                        self.args.observer.emit(
                            &self.args.spec.id,
                            Observation::NodeSkipped {
                                error: &e.to_string(),
                            },
                        );
                        continue;
                    }
                };
                let old = known.next().flatten();
                self.observe_issue(&mut out.outbox, &issue, old, observed_at);
            }
        }
        Ok(out)
    }

    /// Compares one issue with its known state; writes its event when it changed, and notes
    /// what to remember.
    fn observe_issue(
        &mut self,
        out: &mut Outbox,
        issue: &Issue<'_>,
        old: Option<Known>,
        observed_at: &str,
    ) {
        let fp = issue_fingerprint(issue);
        let watched = self.args.spec.statuses.iter().any(|s| s == issue.status());
        let kind = match change(old.as_ref(), issue.status(), &fp, watched) {
            Change::Unchanged => return,
            Change::Remember => {
                out.ledger.remember.push((
                    issue.id().to_string(),
                    Known {
                        fingerprint: fp,
                        status: issue.status().to_string(),
                        severity: issue.severity().map(str::to_string),
                        silent: true,
                    },
                ));
                return;
            }
            Change::Emit(kind) => kind,
        };
        // Back after it vanished: the id must differ from the one this state had before.
        let salt = old
            .as_ref()
            .filter(|k| k.status == VANISHED)
            .map(|k| k.fingerprint);
        let meta = self.normalizer.normalize_with(
            issue,
            Some(kind),
            &fp,
            salt.as_ref(),
            observed_at,
            &mut out.lines,
        );
        if self.args.hints.take_written(issue.id()) && out.lines.last() == Some(&b'}') {
            // The connector made this change itself (write-back): say so, so a SOAR that
            // mirrors both ways does not echo it back.
            out.lines.pop();
            out.lines.extend_from_slice(b",\"origin\":\"connector\"}");
        }
        out.lines.push(b'\n');
        out.count(kind);
        let changed = [&issue.record.updated_at, &issue.record.status_changed_at]
            .into_iter()
            .filter_map(|t| humantime::parse_rfc3339_weak(issue.opt(t)?.text).ok())
            .max();
        if changed > out.ledger.newest_change {
            out.ledger.newest_change = changed;
        }
        let known = Known {
            fingerprint: meta.fingerprint,
            status: meta.status,
            severity: issue.severity().map(str::to_string),
            silent: false,
        };
        if matches!(kind, EventKind::Opened | EventKind::Reopened) {
            out.ledger
                .opening
                .push((meta.issue_id.clone(), known.clone()));
        }
        out.ledger.remember.push((meta.issue_id, known));
    }

    /// Sends a built page to the sink, or, when it holds no event, records what it remembers
    /// and moves on.
    async fn hand_over(&mut self, myself: &ActorRef<TenantMsg>, mut outbox: Outbox) {
        if outbox.events == 0 {
            self.buf = outbox.lines;
            // Nothing to deliver; states first seen outside the watched statuses are recorded,
            // marks a lookup settled are cleared.
            let c = Commit {
                remember: outbox.ledger.remember,
                settle: outbox.ledger.settle,
                checkpoint: self.position(),
            };
            if !c.is_empty() {
                if let Err(e) = self.commit(c).await {
                    return self.finish(myself, Err(e)).await;
                }
            }
            let _ = myself.send_message(TenantMsg::NextPage);
            return;
        }
        // Openings are marked durably before a consumer can see them: if the process dies before
        // the page is recorded and the issue then vanishes from Wiz, the mark is what lets a full
        // sweep report it (nothing else would say a consumer thinks it open).
        let opening = std::mem::take(&mut outbox.ledger.opening);
        if !opening.is_empty() {
            outbox
                .ledger
                .settle
                .extend(opening.iter().map(|(id, _)| id.clone()));
            if let Err(e) = self.write(Write::Mark(opening)).await {
                return self.finish(myself, Err(e)).await;
            }
        }
        let Some(active) = self.sweep.as_mut() else {
            return;
        };
        active.pending = Some(Pending {
            batch: Arc::new(Batch {
                tenant: Arc::from(self.args.spec.id.as_str()),
                lines: outbox.lines,
                events: outbox.events,
            }),
            ledger: outbox.ledger,
            attempts: 0,
        });
        self.try_deliver(myself).await;
    }
}

/// What [`TenantActorState::observe`] made of some pages.
struct Observed {
    outbox: Outbox,
    /// Ids of the readable issues (when asked for).
    ids: Vec<String>,
    /// Nodes that could not be read.
    unreadable: usize,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// `d` scaled by a random factor in [0.5, 1.0].
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.5..=1.0))
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
            waiting_for_permit: false,
            force_full: false,
            consecutive_failures: 0,
            refusals: 0,
            buf: Vec::new(),
            claimed: args.store.replicated().is_none(),
            claiming_since: Instant::now(),
            poll_after_sweep: false,
            keys_claimed: 0,
            plan: None,
            feed_job: None,
            feed_retry: HashMap::new(),
            feed_normalizer: None,
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
            let _ = myself.send_message(TenantMsg::Claim);
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<TenantMsg>,
        state: &mut TenantActorState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.timer.take() {
            t.abort();
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
            TenantMsg::PollFull => {
                state.force_full = true;
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
                if state.sweep.is_some() || state.waiting_for_permit || state.feed_job.is_some() {
                    tracing::debug!(tenant = %state.id(), "poll requested while one runs; ignored");
                    return Ok(());
                }
                if let Some(t) = state.timer.take() {
                    t.abort();
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
                } else if state.sweep.is_none() && state.feed_job.is_none() {
                    Box::pin(state.start_step(&myself, permit)).await;
                }
            }
            TenantMsg::NextPage if state.feed_job.is_some() => {
                Box::pin(state.feed_next_page(&myself)).await
            }
            TenantMsg::NextPage => Box::pin(state.next_page(&myself)).await,
            TenantMsg::Resend if state.feed_job.is_some() => {
                Box::pin(state.feed_try_deliver(&myself)).await
            }
            TenantMsg::Resend => {
                let span = match &state.sweep {
                    Some(a) => {
                        tracing::info_span!(parent: &a.span, "page_resend", tenant = %state.args.spec.id)
                    }
                    None => tracing::Span::none(),
                };
                Box::pin(state.try_deliver(&myself).instrument(span)).await
            }
            TenantMsg::Update(spec) => {
                let interval = spec.poll_interval.0;
                state.args.spec = spec;
                // An armed timer fires no later than the new interval allows.
                if state.sweep.is_none() && !state.waiting_for_permit && state.plan.is_none() {
                    if let Some(due) = state.due {
                        let remaining = due.saturating_duration_since(Instant::now());
                        if remaining > interval {
                            state.arm_timer(&myself, interval);
                        }
                    }
                }
                tracing::info!(tenant = %state.id(), poll_interval = %state.args.spec.poll_interval, rate_limit = state.args.spec.rate_limit, "tenant settings updated in place");
            }
        }
        Ok(())
    }
}
