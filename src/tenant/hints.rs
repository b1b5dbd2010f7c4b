//! Webhook hints in the tenant actor: the queued ids are looked up by id in batches of
//! `page_size`, through the tenant's client (so inside its rate limiter), and compared with what
//! is known exactly like a poll's pages: same change rules, fingerprints and event ids.
//!
//! A running sweep takes a batch between two of its pages. With no sweep running, a short
//! hints-only job does the lookups: it holds no sweep slot (its cost is a few requests), moves no
//! checkpoint and is not counted as a poll. A failed lookup is logged and counted and its ids are
//! dropped: polling stays the truth, and the next poll finds the change.

use std::time::{Instant, SystemTime};

use ractor::ActorRef;
use tracing::Instrument;

use super::issues::ActiveSweep;
use super::{TenantActorState, TenantMsg};
use crate::event::now_rfc3339;
use crate::health::TenantState;
use crate::state::Checkpoint;
use crate::wiz::{IssueFilter, IssueOrder, WizError};

impl TenantActorState {
    /// Ids arrived in the queue (or it overflowed).
    pub(super) async fn on_hints(&mut self, myself: &ActorRef<TenantMsg>) {
        if !self.claimed {
            // Taken up once the tenant is claimed (see `claim`).
            return;
        }
        if self.refusals >= super::PARK_AFTER_REFUSALS {
            // Parked: its credentials are refused, and a lookup would only ask the token
            // endpoint again. The hints are dropped; the poll after the parking finds the changes.
            let dropped = self.args.hints.take(usize::MAX).len();
            self.args.hints.take_overflow();
            tracing::debug!(tenant = %self.id(), dropped, "hints dropped: the tenant is parked (credentials refused)");
            return;
        }
        if self.args.hints.take_overflow() {
            // Too many to look up one by one: one full sweep covers them all. A sweep running
            // now may have passed the changed issues already, so the full one comes after it.
            self.args
                .health
                .update(self.id(), |h| h.hint_overflows += 1);
            tracing::info!(tenant = %self.id(), "hint queue overflowed; a full sweep replaces the lookups");
            self.force_full = true;
            match self.sweep.as_mut() {
                Some(a) if a.hints_only => a.poll_after = true,
                Some(_) => self.poll_after_sweep = true,
                None => {
                    let _ = myself.send_message(TenantMsg::Poll);
                }
            }
            return;
        }
        if self.sweep.is_some()
            || self.feed_job.is_some()
            || self.baseline.is_some()
            || !self.args.hints.pending()
        {
            // The running sweep (or job) takes them between its pages.
            return;
        }
        self.begin_hints(myself);
    }

    /// Starts a hints-only job.
    pub(super) fn begin_hints(&mut self, myself: &ActorRef<TenantMsg>) {
        let state_before = self
            .args
            .health
            .get(self.id())
            .map_or(TenantState::Idle, |h| h.state);
        let sweep = self
            .client
            .sweep(IssueFilter::default(), IssueOrder::CREATED_ASC);
        self.sweep = Some(Box::new(ActiveSweep {
            span: tracing::info_span!("hints", tenant = %self.args.spec.id),
            full: false,
            checkpoint: Checkpoint::default(),
            stored: None,
            started_at: SystemTime::now(),
            resumed: false,
            pages_at_start: 0,
            requests_at_start: 0,
            sweep,
            started: Instant::now(),
            events: 0,
            observed_at: now_rfc3339(),
            seen: Default::default(),
            reconcile: None,
            hints_only: true,
            hint_step: false,
            poll_after: false,
            state_before,
        }));
        let _ = myself.send_message(TenantMsg::NextPage);
    }

    /// Looks one batch of hinted ids up and hands what changed to the sink (as a page of the
    /// running sweep or job).
    pub(super) async fn hint_batch(
        &mut self,
        myself: &ActorRef<TenantMsg>,
        batch: Vec<(String, Instant)>,
    ) {
        let ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
        let span = match &self.sweep {
            Some(a) => {
                tracing::info_span!(parent: &a.span, "hint_lookup", tenant = %self.args.spec.id, ids = ids.len())
            }
            None => return,
        };
        let metrics = self.args.hint_metrics.clone();
        let pages = match self.client.lookup(&ids).instrument(span.clone()).await {
            Ok(p) => p,
            Err(WizError::Stopping) => {
                return self.finish(myself, Err(("stopping", String::new()))).await
            }
            Err(e) => {
                metrics.lookup(false);
                tracing::warn!(tenant = %self.args.spec.id, ids = ids.len(), error = %e, "looking hinted issues up failed; the next poll finds their changes");
                let _ = myself.send_message(TenantMsg::NextPage);
                return;
            }
        };
        metrics.lookup(true);
        self.args
            .health
            .update(self.id(), |h| h.hints_looked_up += ids.len() as u64);
        let observed_at = now_rfc3339();
        let observed = match self.observe(&pages, &observed_at, false) {
            Ok(o) => o,
            Err(e) => return self.finish(myself, Err(e)).await,
        };
        let mut outbox = observed.outbox;
        // The hint time of every issue that produced an event (for hint-to-event latency).
        for (id, known) in &outbox.ledger.remember {
            if !known.silent {
                if let Some((_, at)) = batch.iter().find(|(h, _)| h == id) {
                    outbox.ledger.hinted.push(*at);
                }
            }
        }
        self.hand_over(myself, outbox).instrument(span).await;
    }

    /// Ends a hints-only job: no checkpoint moves and no poll is counted. A poll that came due
    /// meanwhile starts now; hints that arrived since are taken by a new job.
    pub(super) fn finish_hints(
        &mut self,
        myself: &ActorRef<TenantMsg>,
        result: Result<(), (&'static str, String)>,
    ) {
        let Some(job) = self.sweep.take() else {
            return;
        };
        let before = job.state_before;
        self.args.health.update(self.id(), |h| {
            // Retry waits inside the lookups show as backoff / polling; the job is over.
            h.state = before;
            h.next_attempt_at = None;
        });
        if let Err((kind, message)) = result {
            if kind == "stopping" {
                return;
            }
            if kind == super::FENCED {
                return self.stop_fenced(myself, &message);
            }
            tracing::warn!(tenant = %self.args.spec.id, kind, error = %message, "hint lookup job failed; the next poll finds the changes");
        }
        if job.poll_after {
            let _ = myself.send_message(TenantMsg::Poll);
        } else if self.args.hints.pending() {
            let _ = myself.send_message(TenantMsg::Hints);
        }
    }

    /// Records, for a page the sinks acknowledged, the hint-to-event latencies and the age of
    /// its newest change.
    pub(super) fn delivered_freshness(&self, hinted: &[Instant], newest: Option<SystemTime>) {
        let metrics = &self.args.hint_metrics;
        for at in hinted {
            metrics.delivered(at.elapsed());
        }
        if let Some(slowest) = hinted.iter().map(|at| at.elapsed()).max() {
            let ms = slowest.as_millis() as u64;
            self.args
                .health
                .update(self.id(), |h| h.last_hint_to_event_ms = Some(ms));
        }
        if let Some(t) = newest {
            let age = SystemTime::now()
                .duration_since(t)
                .unwrap_or_default()
                .as_millis() as u64;
            self.args
                .health
                .update(self.id(), |h| h.last_change_age_ms = Some(age));
        }
    }
}
