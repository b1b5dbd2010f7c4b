//! Delivering a page: one type for a page in flight, whatever built it (an Issues sweep, a
//! hint lookup, a feed window), and one flow for it. The page goes to the sink actor; the tenant
//! waits for the ack of every sink; only then is what the page settles written (its states, its
//! position), by the job that built it. A page the sink does not take is kept and sent again
//! after a backoff, so a sink that is down (with its backlog full, or without one) is
//! backpressure, never loss.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ractor::ActorRef;

use super::{TenantActorState, TenantMsg};
use crate::change::Known;
use crate::event::EventKind;
use crate::format::Lines;
use crate::health::LastError;
use crate::metrics::Observation;
use crate::sink::{deliver, Batch, SinkMsg, SinkRefusal};
use crate::state::Checkpoint;

/// Longest wait for the sink's ack before the page is sent again.
const ACK_TIMEOUT: Duration = Duration::from_secs(120);

/// First and longest delay between attempts to deliver a page the sink did not take.
const RESEND_FIRST: Duration = Duration::from_millis(200);

const RESEND_MAX: Duration = Duration::from_secs(5);

/// A page given to the sink and not acknowledged yet: an Issues page, a hint lookup's, a
/// reconciliation batch's or a feed window's.
pub(super) struct Pending {
    pub batch: Arc<Batch>,
    pub ledger: Ledger,
    /// Deliveries tried so far (for the backoff and the log).
    pub attempts: u32,
}

/// What a page's delivery settles once the sink took it: the states to remember, the in-flight
/// marks to clear, and the counts to report.
#[derive(Default)]
pub(super) struct Ledger {
    pub remember: Vec<(String, Known)>,
    /// States of the page's `issue.opened` / `issue.reopened` events, marked in flight before
    /// the page goes to the sink (see [`Write::Mark`]).
    pub opening: Vec<(String, Known)>,
    /// In-flight marks the commit after the ack clears.
    pub settle: Vec<String>,
    /// Events by kind.
    pub kinds: Vec<(EventKind, u64)>,
    /// How many of the events report an issue that vanished from Wiz.
    pub vanished: u64,
    /// For each event a webhook hint led to: when the hint arrived.
    pub hinted: Vec<Instant>,
    /// The latest change time (`updatedAt` or `statusChangedAt`) among the events: its age at
    /// delivery is the tenant's freshness.
    pub newest_change: Option<SystemTime>,
    /// A feed page's position, fixed when the page was built (an Issues page's is taken at the
    /// ack, from the running sweep).
    pub checkpoint: Option<Checkpoint>,
    /// A feed page that ends its window.
    pub last: bool,
}

/// The events of one page being built, and their ledger.
#[derive(Default)]
pub(super) struct Outbox {
    pub lines: Lines,
    pub events: usize,
    pub ledger: Ledger,
}

impl Outbox {
    pub fn count(&mut self, kind: EventKind) {
        self.events += 1;
        let kinds = &mut self.ledger.kinds;
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => kinds.push((kind, 1)),
        }
    }
}

impl TenantActorState {
    /// A page of this tenant's events of `feed` for the sink (`only`: a baseline's
    /// destinations).
    pub(super) fn batch(
        &self,
        feed: &'static str,
        lines: Lines,
        events: usize,
        only: Option<Arc<[String]>>,
    ) -> Arc<Batch> {
        let (lines, formatted) = lines.split();
        Arc::new(Batch {
            tenant: Arc::from(self.args.spec.id.as_str()),
            feed,
            lines,
            formatted,
            events,
            only,
        })
    }

    /// Gives the pending page to the sink; on the ack, counts it and lets the job that built it
    /// settle it (its states and position); without one, tries again after a backoff.
    pub(super) async fn try_deliver(&mut self, myself: &ActorRef<TenantMsg>) {
        let Some(batch) = self.pending.as_ref().map(|p| p.batch.clone()) else {
            return;
        };
        // Cluster mode: only while this replica's lease holds (a page fetched before a pause
        // or a cut from NATS is not handed over after it without this check).
        match self.lease_gate().await {
            super::claim::Gate::Open => {}
            super::claim::Gate::Closed(why) => {
                return self.lease_wait(myself, why, || TenantMsg::Resend)
            }
            super::claim::Gate::Fenced(e) => return self.stop_fenced(myself, &e),
        }
        let result = self.to_sink(batch).await;
        let Some(pending) = self.pending.as_mut() else {
            return;
        };
        if let Err(e) = result {
            pending.attempts += 1;
            let attempts = pending.attempts;
            return self.sink_refused(myself, &e, attempts);
        }
        let pending = *self.pending.take().expect("checked above");
        let events = pending.batch.events as u64;
        for (kind, count) in &pending.ledger.kinds {
            self.args.observer.emit(
                &self.args.spec.id,
                Observation::EventsDelivered {
                    kind: *kind,
                    count: *count,
                },
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
        let feed = self.feed_job.as_ref().map(|j| j.feed_name().as_str());
        self.args.health.update(&self.args.spec.id, |h| {
            h.held_by_sink = None;
            h.events_total += events;
            if let Some(f) = feed {
                h.feed(f).events_total += events;
            }
        });
        // Only now, after every sink has the page, is it remembered.
        if self.baseline.is_some() {
            self.baseline_page_acked(myself, pending)
        } else if self.feed_job.is_some() {
            self.feed_page_acked(myself, pending).await
        } else {
            self.issues_page_acked(myself, pending).await
        }
    }

    /// Gives `batch` to the sink actor (looked up by name: it changes after a restart) and waits
    /// for every sink's ack.
    pub(super) async fn to_sink(&self, batch: Arc<Batch>) -> Result<(), SinkRefusal> {
        let sink =
            ractor::registry::where_is(self.args.sink_name.clone()).map(ActorRef::<SinkMsg>::from);
        match sink {
            Some(sink) => deliver(&sink, &self.args.sink_stats, batch, ACK_TIMEOUT).await,
            None => Err(SinkRefusal {
                sink: None,
                message: "the sink is not running".to_string(),
            }),
        }
    }

    /// The sink did not take the pending page (its `attempts`-th try): reported, and tried again
    /// after a backoff (200 ms doubling to 5 s) with `Resend`.
    pub(super) fn sink_refused(
        &self,
        myself: &ActorRef<TenantMsg>,
        refusal: &SinkRefusal,
        attempts: u32,
    ) {
        let e = &refusal.to_string();
        let exp = attempts.saturating_sub(1).min(8);
        let delay = RESEND_FIRST.saturating_mul(1 << exp).min(RESEND_MAX);
        self.args.observer.emit(
            &self.args.spec.id,
            Observation::SinkUnavailable { error: e, attempts },
        );
        let now = SystemTime::now();
        let held_by = refusal.sink.clone();
        self.args.health.update(&self.args.spec.id, |h| {
            h.last_error = Some(LastError {
                message: format!("sink unavailable: {e}"),
                at: now,
            });
            h.held_by_sink = held_by;
        });
        myself.send_after(delay, || TenantMsg::Resend);
    }
}
