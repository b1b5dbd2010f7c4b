//! The Issues engine: a sweep over every page, driven one page per message: fetch a page,
//! normalize it, drop the issues whose state did not change, hand the rest to delivery, remember
//! what was delivered, then ask for the next page. A full sweep ends with a reconciliation: the
//! known issues in the watched statuses it did not see are looked up by id, a batch per message,
//! and those Wiz no longer returns are reported as vanished. An interrupted sweep continues from
//! its committed position. Which sweep a poll runs (full or incremental, and on which filter) is
//! decided by [`plan_sweep`], a pure function.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use ractor::ActorRef;
use tracing::Instrument;

use super::delivery::{Ledger, Outbox, Pending};
use super::slot::Held;
use super::{unix_now, TenantActorState, TenantMsg, FENCED};
use crate::change::{change, Change, Known, VANISHED};
use crate::event::{issue_fingerprint, now_rfc3339, EventKind};
use crate::feeds::FeedName;
use crate::format::Mark;
use crate::health::{LastError, TenantState};
use crate::metrics::Observation;
use crate::state::{
    Checkpoint, Commit, SweepPosition, UpdatedAtProbe, Write, TIME_MARKS_UNWRITTEN_AT_MOST,
};
use crate::wiz::page::{Issue, Page};
use crate::wiz::TimeRange;
use crate::wiz::{IssueFilter, IssueOrder, Sweep};

pub(super) struct ActiveSweep {
    /// The poll's trace span; pages are its children.
    pub(super) span: tracing::Span,
    /// A full sweep of the watched statuses (else incremental: what changed since the checkpoint).
    pub(super) full: bool,
    /// The checkpoint the sweep started from.
    pub(super) checkpoint: Checkpoint,
    /// The checkpoint as the store held it when the sweep began (`None`: not known, as for a
    /// resumed sweep). `checkpoint` may differ from it (a position taken out, a destination's
    /// baseline recorded, a probe's answer learnt on the way): a sweep of one page that
    /// delivered nothing and whose checkpoint moved only in its time marks since this need not
    /// write it (see [`Checkpoint::moved_only_in_time`]).
    pub(super) stored: Option<Checkpoint>,
    /// Wall-clock time the sweep started: what the next incremental poll asks changes after.
    pub(super) started_at: SystemTime,
    /// It continues a sweep a crash or a handover interrupted (see `Checkpoint::position`).
    pub(super) resumed: bool,
    /// Pages the sweep had done when this actor took it up.
    pub(super) pages_at_start: u32,
    /// The client's request count when the sweep started (the poll's cost, for health).
    pub(super) requests_at_start: u64,
    pub(super) sweep: Sweep,
    pub(super) started: Instant,
    pub(super) events: u64,
    pub(super) observed_at: String,
    /// Ids a full sweep saw (an incremental one leaves it empty).
    pub(super) seen: HashSet<String>,
    /// Once a full sweep's pages are done: the known issues in the watched statuses it did not
    /// see, in batches still to be looked up by id (each batch is then delivered as a page).
    pub(super) reconcile: Option<VecDeque<Vec<(String, Known)>>>,
    /// A lookup-only job for webhook hints (no pages, no checkpoint, not a poll).
    pub(super) hints_only: bool,
    /// The last step looked hints up: the next one fetches a page (hints and pages alternate).
    pub(super) hint_step: bool,
    /// A poll came due during a hints-only job: it starts when the job ends.
    pub(super) poll_after: bool,
    /// A hints-only job: the health state to show again when it ends.
    pub(super) state_before: TenantState,
}

/// What [`TenantActorState::observe`] made of some pages.
pub(super) struct Observed {
    pub(super) outbox: Outbox,
    /// Ids of the issues seen (when asked for): the readable ones, and the unreadable nodes
    /// whose id could be read (quarantined, but there).
    pub(super) ids: Vec<String>,
    /// Unreadable nodes whose id could not be read either: any of the ids asked for may be one.
    pub(super) unreadable: usize,
}

impl TenantActorState {
    pub(super) async fn start_sweep(&mut self, myself: &ActorRef<TenantMsg>, permit: Held) {
        // An unreadable checkpoint means a full sweep, which restores it.
        let mut checkpoint = match self.args.store.checkpoint(&self.args.spec.id) {
            Ok(c) => c.unwrap_or_default(),
            Err(e) => {
                tracing::error!(tenant = %self.args.spec.id, error = %e, "cannot read the checkpoint; doing a full sweep");
                Checkpoint::default()
            }
        };
        // What the store holds, to tell whether the sweep's end must write (see `stored`).
        let mut stored = checkpoint.clone();
        // Destinations routed here since the checkpoint was written get a baseline first (a
        // fresh tenant's destinations count as served: its first sweep gives them everything).
        let due = super::baseline::due(
            &self.args.destinations,
            &mut checkpoint,
            &self.asked_for(crate::feeds::FeedName::Issues),
        );
        if checkpoint.high_water.is_none() {
            if let Err((kind, e)) = self.first_high_water(&mut checkpoint).await {
                drop(permit);
                if kind == FENCED {
                    return self.stop_fenced(myself, &e);
                }
                let now = SystemTime::now();
                self.args.health.update(&self.args.spec.id, |h| {
                    h.last_error = Some(LastError {
                        message: e.clone(),
                        at: now,
                    });
                    h.state = TenantState::Backoff;
                });
                tracing::error!(tenant = %self.args.spec.id, error = %e, "cannot write the first checkpoint; retrying later");
                self.step_done(myself, Some(super::schedule::FAILED_POLL_FIRST));
                return;
            }
            stored = checkpoint.clone();
        }
        if !due.is_empty() && !std::mem::take(&mut self.baseline_skip) {
            return self.start_baseline(myself, permit, checkpoint, due).await;
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
        let (full, filter) = plan_sweep(spec, &checkpoint, force_full, now_unix);
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
        .await;
        if let Some(a) = self.sweep.as_mut() {
            a.stored = Some(stored);
        }
    }

    /// The very first sweep fixes the high-water mark at its start, before it delivers
    /// anything: every change to an issue delivered from then on is later than the mark, even if
    /// this sweep is interrupted and another one completes first.
    async fn first_high_water(
        &self,
        checkpoint: &mut Checkpoint,
    ) -> Result<(), (&'static str, String)> {
        let now = SystemTime::now();
        checkpoint.high_water = Some(humantime::format_rfc3339_micros(now).to_string());
        self.commit(Commit {
            checkpoint: Some(checkpoint.clone()),
            ..Default::default()
        })
        .await
    }

    /// Makes `sweep` the running one and asks for its first page.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn begin(
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
        self.sweep = Some(Box::new(ActiveSweep {
            span: tracing::info_span!("poll", tenant = %spec.id, full),
            full,
            checkpoint,
            stored: None,
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
            seen: HashSet::new(),
            reconcile: None,
            hints_only: false,
            hint_step: false,
            poll_after: false,
            state_before: TenantState::Polling,
        }));
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
    pub(super) async fn finish(
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
        self.pending = None;
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
        let (events, duration) = (sweep.events, sweep.started.elapsed());
        let result = self.close_sweep(&sweep, result).await;
        match result {
            Ok(()) => self.poll_succeeded(myself, events, duration),
            Err((FENCED, message)) => self.stop_fenced(myself, &message),
            Err((kind, message)) => self.poll_failed(myself, kind, message, events, duration),
        }
    }

    /// Moves the checkpoint after a completed sweep: the high-water mark, and the time and size
    /// of the last full sweep when this was one. After a failure, a resumed sweep that could not
    /// fetch even one page drops its position (it may hold a cursor Wiz no longer takes).
    async fn close_sweep(
        &self,
        sweep: &ActiveSweep,
        result: Result<(), (&'static str, String)>,
    ) -> Result<(), (&'static str, String)> {
        if let Err(e) = result {
            if sweep.resumed && sweep.sweep.pages() == sweep.pages_at_start {
                let _ = self
                    .commit(Commit {
                        checkpoint: Some(sweep.checkpoint.clone()),
                        ..Default::default()
                    })
                    .await;
            }
            return Err(e);
        }
        // The high-water mark is the sweep's start, not the latest `statusChangedAt` it saw: a
        // change made while the sweep paged may sit on a page already fetched, and only a bound
        // from before the sweep is sure to ask for it again. A full sweep sees the watched
        // statuses only, so it never moves the mark (but sets the first one); an incremental
        // sweep sees every status and moves it to its start.
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
        // An idle poll: one page, nothing delivered, only the time marks moved. The store keeps
        // the earlier marks (for at most TIME_MARKS_UNWRITTEN_AT_MOST): a later sweep from them
        // at most asks for that much more history, which the known states filter. An idle fleet
        // writes its state about once an hour instead of at every poll, and a failover's
        // takeovers that find nothing new write nothing after their claims.
        if sweep.events == 0
            && sweep.sweep.pages() <= 1
            && sweep
                .stored
                .as_ref()
                .is_some_and(|s| cp.moved_only_in_time(s, TIME_MARKS_UNWRITTEN_AT_MOST))
            && self.args.store.holds_current(&self.args.spec.id)
        {
            tracing::debug!(tenant = %self.args.spec.id, "idle poll: the checkpoint's time marks are not written");
            return Ok(());
        }
        self.commit(Commit {
            checkpoint: Some(cp),
            ..Default::default()
        })
        .await
    }

    /// The Issues step succeeded: reported, health updated, the next poll scheduled.
    fn poll_succeeded(&mut self, myself: &ActorRef<TenantMsg>, events: u64, duration: Duration) {
        let now = SystemTime::now();
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
        let next = self.next_poll_after_success();
        self.step_done(myself, Some(next));
    }

    /// The Issues step failed: reported with its backoff (or parked, when the credentials keep
    /// being refused), health updated, the next poll scheduled.
    fn poll_failed(
        &mut self,
        myself: &ActorRef<TenantMsg>,
        kind: &'static str,
        message: String,
        events: u64,
        duration: Duration,
    ) {
        let now = SystemTime::now();
        self.consecutive_failures += 1;
        let (delay, parked) = self.next_poll_after_failure();
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

    /// The checkpoint with the running sweep's position, for the commit of a page that is not the
    /// sweep's last (`None` after the last page: the sweep's end commits its checkpoint).
    pub(super) fn position(&self) -> Option<Checkpoint> {
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

    /// Fetches the next page and hands it to the sink (or finishes the sweep). Hints go between
    /// pages: one batch, then one page, while both wait (every step in a hints-only job). After
    /// the last page of a full sweep comes the reconciliation: the known issues the sweep did not
    /// see are looked up by id, a batch per message.
    pub(super) async fn next_page(&mut self, myself: &ActorRef<TenantMsg>) {
        if let Some(batch) = self.hint_turn() {
            return self.hint_batch(myself, batch).await;
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
                tracing::debug!(tenant = %self.args.spec.id, error = %e, "wiz does not accept filterBy.updatedAt; incremental polls use statusChangedAt");
                return self.updated_at_refused(myself);
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

    /// Whether this step looks hints up instead of fetching a page: hints and pages alternate
    /// while both wait (a hints-only job takes hints every step). The batch to look up, if so.
    fn hint_turn(&mut self) -> Option<Vec<(String, Instant)>> {
        let active = self.sweep.as_mut()?;
        let turn = active.hints_only || !active.hint_step;
        active.hint_step = false;
        if !turn {
            return None;
        }
        let batch = self
            .args
            .hints
            .take(self.args.spec.page_size.max(1) as usize);
        if batch.is_empty() {
            return None;
        }
        if let Some(active) = self.sweep.as_mut() {
            active.hint_step = true;
        }
        Some(batch)
    }

    /// The `updatedAt` probe's answer: Wiz does not take `filterBy.updatedAt`. The same sweep
    /// asks again on `statusChangedAt` (a small tenant sweeps fully instead: only that sees every
    /// edit), and the answer is kept (asked again after a day).
    fn updated_at_refused(&mut self, myself: &ActorRef<TenantMsg>) {
        let Some(active) = self.sweep.as_mut() else {
            return;
        };
        active.checkpoint.updated_at_filter = Some(UpdatedAtProbe {
            accepted: false,
            at: unix_now(),
        });
        let small = active
            .checkpoint
            .last_full_pages
            .is_some_and(|p| p <= self.args.spec.full_sweep_max_pages);
        let filter = if small {
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
    }

    /// A full sweep's pages are done: finds the known issues in the watched statuses it did not
    /// see, and queues them for lookup by id (or finishes when there are none).
    pub(super) async fn start_reconcile(&mut self, myself: &ActorRef<TenantMsg>) {
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
    pub(super) async fn reconcile_batch(
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
            // A node whose id cannot be read may be one of the ids asked for: none of this
            // batch is called vanished on that evidence, and its in-flight marks stay. The next
            // full sweep tries again.
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
                outbox.lines.end_event();
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
    pub(super) fn observe(
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
        out.outbox.lines.reset(self.args.formats);
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
            let mut refused = Vec::new();
            for issue in page.issues() {
                let issue = match issue {
                    Ok(i) => i,
                    Err(e) => {
                        match &e.node.id {
                            Some(id) if collect_ids => out.ids.push(id.clone()),
                            Some(_) => {}
                            None => out.unreadable += 1,
                        }
                        refused.push(e);
                        continue;
                    }
                };
                let old = known.next().flatten();
                self.observe_issue(&mut out.outbox, &issue, old, observed_at);
            }
            // Each node that cannot be read is set aside as one quarantine event; the rest of
            // the page is delivered as usual.
            let records = self
                .quarantine(
                    &self.args.spec.id,
                    FeedName::Issues,
                    &refused,
                    observed_at,
                    &mut out.outbox.lines,
                )
                .map_err(|e| ("state", e.to_string()))?;
            for record in records {
                out.outbox.count(EventKind::IssueUnreadable);
                out.outbox.ledger.remember.push(record);
            }
        }
        Ok(out)
    }

    /// Compares one issue with its known state; writes its event when it changed, and notes
    /// what to remember.
    pub(super) fn observe_issue(
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
        if self.args.hints.take_written(issue.id()) {
            // The connector made this change itself (write-back): say so, so a SOAR that
            // mirrors both ways does not echo it back.
            out.lines.mark(Mark::Origin);
        }
        out.lines.end_event();
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
    pub(super) async fn hand_over(&mut self, myself: &ActorRef<TenantMsg>, mut outbox: Outbox) {
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
        if self.sweep.is_none() {
            return;
        }
        self.pending = Some(Box::new(Pending {
            batch: self.batch("issues", outbox.lines, outbox.events, None),
            ledger: outbox.ledger,
            attempts: 0,
        }));
        self.try_deliver(myself).await;
    }

    /// The sink took a page of the running sweep: it is remembered with the sweep's position (a
    /// crash from here on continues after this page), then the next page is asked for.
    pub(super) async fn issues_page_acked(
        &mut self,
        myself: &ActorRef<TenantMsg>,
        pending: Pending,
    ) {
        let ledger: Ledger = pending.ledger;
        if let Some(active) = self.sweep.as_mut() {
            active.events += pending.batch.events as u64;
        }
        self.delivered_freshness(&ledger.hinted, ledger.newest_change);
        let settled = Commit {
            remember: ledger.remember,
            settle: ledger.settle,
            checkpoint: self.position(),
        };
        match self.commit(settled).await {
            Ok(()) => {
                let _ = myself.send_message(TenantMsg::NextPage);
            }
            Err(e) => self.finish(myself, Err(e)).await,
        }
    }
}

/// Which sweep a poll runs, from the tenant's settings and checkpoint at `now_unix`: full (the
/// watched statuses) or incremental (every status, changed since the high-water mark less the
/// overlap, on `updatedAt` where Wiz takes it or is being asked, else on `statusChangedAt`).
///
/// A small tenant (its last full sweep fit in `full_sweep_max_pages`) sweeps fully every time:
/// that costs its few pages and catches every change the fingerprint covers (severity, notes,
/// due dates), which incremental polls on `statusChangedAt` miss. Where Wiz takes
/// `filterBy.updatedAt` (or it is not known yet: this poll asks), an incremental poll sees every
/// edit and a small tenant need not sweep fully each time; a tenant of one page is not asked (a
/// full sweep costs it what an incremental poll would). A full sweep is also due when an
/// operator asked (`force_full`), when none was ever done, or `full_sweep_interval` after the
/// last one.
pub fn plan_sweep(
    spec: &crate::config::TenantSpec,
    checkpoint: &Checkpoint,
    force_full: bool,
    now_unix: u64,
) -> (bool, IssueFilter) {
    // A tenant whose last full sweep took one page (and that counts as small at all) sweeps
    // fully without asking whether Wiz takes `updatedAt`: an incremental poll would cost the
    // same one page, so the answer could save nothing, and asking where Wiz refuses costs a
    // refused request. The question is asked once its full sweeps need more pages.
    let fits = checkpoint
        .last_full_pages
        .filter(|p| *p <= spec.full_sweep_max_pages);
    let probe = if fits.is_some_and(|p| p <= 1) {
        UpdatedAtProbe::accepted(checkpoint.updated_at_filter)
    } else {
        UpdatedAtProbe::try_it(checkpoint.updated_at_filter, now_unix)
    };
    let small = fits.is_some() && !probe;
    let due_full = force_full
        || small
        || checkpoint
            .last_full_sweep
            .is_none_or(|t| now_unix.saturating_sub(t) >= spec.full_sweep_interval.0.as_secs());
    let since = checkpoint
        .high_water
        .as_deref()
        .and_then(|h| humantime::parse_rfc3339_weak(h).ok());
    match since {
        Some(hw) if !due_full => {
            let after = hw.checked_sub(spec.incremental_overlap.0).unwrap_or(hw);
            let range = Some(TimeRange {
                after: Some(humantime::format_rfc3339_micros(after).to_string()),
                before: None,
            });
            let filter = if probe {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_str, EnvSource, TenantSpec};

    fn spec() -> TenantSpec {
        let toml = "[connector]\nincremental_overlap = \"60s\"\n[sinks.out]\ntype = \"stdout\"\n[tenants.t]\nclient_id = \"c\"\nclient_secret = \"s\"\napi_url = \"https://api.us1.app.wiz.io/graphql\"\n";
        let s = load_str("t.toml", toml, &EnvSource::Fixed(Default::default())).unwrap();
        (*s.tenants[0]).clone()
    }

    const NOW: u64 = 1_800_000_000;
    const HW: &str = "2027-01-15T08:00:00Z";

    /// A checkpoint after a full sweep of `pages` pages an hour ago, with the probe's answer.
    fn after_full(pages: u32, probe: Option<bool>) -> Checkpoint {
        Checkpoint {
            high_water: Some(HW.into()),
            last_full_sweep: Some(NOW - 3600),
            last_full_pages: Some(pages),
            updated_at_filter: probe.map(|accepted| UpdatedAtProbe {
                accepted,
                at: NOW - 60,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_first_poll_and_an_operators_resync_sweep_fully_over_the_watched_statuses() {
        let spec = spec();
        let (full, filter) = plan_sweep(&spec, &Checkpoint::default(), false, NOW);
        assert!(full);
        assert_eq!(filter.status, spec.statuses);
        assert!(filter.updated_at.is_none() && filter.status_changed_at.is_none());
        let (full, _) = plan_sweep(&spec, &after_full(100, Some(true)), true, NOW);
        assert!(full, "force_full");
    }

    #[test]
    fn a_large_tenant_polls_incrementally_on_the_filter_wiz_takes() {
        let spec = spec();
        let after = Some("2027-01-15T07:59:00.000000Z".to_string());
        // Wiz takes updatedAt (or it is not known yet: this poll asks).
        for probe in [Some(true), None] {
            let (full, f) = plan_sweep(&spec, &after_full(100, probe), false, NOW);
            assert!(!full);
            assert_eq!(f.updated_at.as_ref().unwrap().after, after, "{probe:?}");
            assert!(f.status.is_empty() && f.status_changed_at.is_none());
        }
        // Refused a minute ago: statusChangedAt.
        let (full, f) = plan_sweep(&spec, &after_full(100, Some(false)), false, NOW);
        assert!(!full);
        assert_eq!(f.status_changed_at.unwrap().after, after);
        assert!(f.updated_at.is_none());
    }

    #[test]
    fn a_small_tenant_without_updated_at_sweeps_fully_and_a_stale_full_sweep_is_due() {
        let spec = spec();
        let (full, _) = plan_sweep(&spec, &after_full(2, Some(false)), false, NOW);
        assert!(
            full,
            "small, updatedAt refused: only a full sweep sees every edit"
        );
        let (full, _) = plan_sweep(&spec, &after_full(2, Some(true)), false, NOW);
        assert!(!full, "small, updatedAt taken: incremental sees every edit");
        // One page: swept fully without asking (an incremental poll would cost the same page),
        // unless Wiz is known to take updatedAt.
        for probe in [None, Some(false)] {
            let (full, f) = plan_sweep(&spec, &after_full(1, probe), false, NOW);
            assert!(full, "one page, {probe:?}: no probe");
            assert!(f.updated_at.is_none() && f.status_changed_at.is_none());
            assert_eq!(f.status, spec.statuses);
        }
        let (full, _) = plan_sweep(&spec, &after_full(1, Some(true)), false, NOW);
        assert!(!full, "one page, updatedAt taken: incremental");
        let (full, f) = plan_sweep(&spec, &after_full(2, None), false, NOW);
        assert!(!full && f.updated_at.is_some(), "two pages: the probe asks");
        let mut every_tenant_large = spec.clone();
        every_tenant_large.full_sweep_max_pages = 0;
        let (full, f) = plan_sweep(&every_tenant_large, &after_full(1, None), false, NOW);
        assert!(!full && f.updated_at.is_some(), "no tenant is small: asks");
        let mut cp = after_full(100, Some(true));
        cp.last_full_sweep = Some(NOW - spec.full_sweep_interval.0.as_secs());
        let (full, _) = plan_sweep(&spec, &cp, false, NOW);
        assert!(full, "full_sweep_interval after the last one");
    }
}
