//! A baseline: a destination newly routed to the tenant (at start or by a reload), or one an
//! operator names (`POST /tenants/{id}/baseline?sink=`), first receives every item the tenant's
//! state holds as current (open issues, open findings of the vulnerabilities and
//! cloud_configuration feeds), each marked `"baseline": true` with the kind it was first
//! reported with; then changes as usual. Each feed keeps its own record of the destinations it
//! served (its checkpoint's `baselined`). A feed's baseline is a window of the whole feed that
//! sends only the items recorded as open (see `feed_job`); the Issues baseline is below.
//!
//! The Issues baseline runs at the start of an Issues step, before the sweep, holding the same sweep slot: the
//! ids come from the state store, their current nodes from Wiz by id (a page's worth per
//! lookup), and each page goes to the baseline's destinations only. It changes no state but the
//! checkpoint's list of destinations served (`Checkpoint::baselined`), written once the last
//! page is acknowledged: a baseline interrupted by a crash runs again from its start.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use ractor::ActorRef;

use super::delivery::{Ledger, Outbox, Pending};
use super::slot::Held;
use super::{TenantActorState, TenantMsg, FENCED};
use crate::event::{issue_fingerprint, now_rfc3339, EventKind};
use crate::feeds::{ChangeRule, FeedName};
use crate::format::{Lines, Mark};
use crate::health::LastError;
use crate::sink::Batch;
use crate::state::{Checkpoint, Commit};

/// The statuses of a current item.
const CURRENT: [&str; 2] = ["OPEN", "IN_PROGRESS"];

/// A running baseline.
pub(super) struct BaselineJob {
    /// The destinations it goes to.
    sinks: Arc<[String]>,
    /// Ids still to be looked up, a page's worth each.
    batches: VecDeque<Vec<String>>,
    checkpoint: Checkpoint,
    /// The sweep slot, handed on to the sweep that follows.
    permit: Held,
    observed_at: String,
    events: u64,
}

/// The destinations that are due a baseline: those routed to the tenant that the checkpoint
/// does not list as served, and those an operator asked for (if still routed). A checkpoint
/// from before baselines existed lists every destination as served (nothing is sent again on an
/// upgrade).
pub fn due(
    destinations: &[String],
    checkpoint: &mut Checkpoint,
    asked: &BTreeSet<String>,
) -> Vec<String> {
    let served = checkpoint
        .baselined
        .get_or_insert_with(|| destinations.iter().cloned().collect());
    destinations
        .iter()
        .filter(|d| !served.contains(*d) || asked.contains(*d))
        .cloned()
        .collect()
}

/// Whether a feed's items go into a baseline: Issues and the feeds whose items have a state
/// (findings); not detections or audit entries, which happened once.
pub fn has_baseline(feed: FeedName) -> bool {
    feed == FeedName::Issues || feed.feed().is_some_and(|f| f.rule == ChangeRule::States)
}

impl TenantActorState {
    /// The destinations an operator asked `feed`'s baseline for.
    pub(super) fn asked_for(&self, feed: FeedName) -> BTreeSet<String> {
        self.baseline_asked
            .iter()
            .filter(|(f, _)| *f == feed)
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// `feed`'s baseline went out to `sinks`: their requests are done.
    pub(super) fn baseline_served(&mut self, feed: FeedName, sinks: &[String]) {
        for s in sinks {
            self.baseline_asked.remove(&(feed, s.clone()));
        }
    }

    /// Starts the baseline for `sinks` (at the start of an Issues step).
    pub(super) async fn start_baseline(
        &mut self,
        myself: &ActorRef<TenantMsg>,
        permit: Held,
        checkpoint: Checkpoint,
        sinks: Vec<String>,
    ) {
        let store = self.args.store.clone();
        let tenant = self.args.spec.id.clone();
        let statuses: Vec<String> = CURRENT.iter().map(|s| s.to_string()).collect();
        let known =
            tokio::task::spawn_blocking(move || store.known_with_status(&tenant, &statuses)).await;
        let ids: Vec<String> = match known {
            Ok(Ok(k)) => k
                .into_iter()
                .filter(|(_, k)| !k.silent)
                .map(|(id, _)| id)
                .collect(),
            Ok(Err(e)) => return self.baseline_failed(myself, permit, &e.to_string()).await,
            Err(e) => return self.baseline_failed(myself, permit, &e.to_string()).await,
        };
        tracing::info!(tenant = %self.args.spec.id, sinks = ?sinks, issues = ids.len(), "sending a baseline to newly routed destinations");
        let size = self.args.spec.page_size.max(1) as usize;
        self.baseline = Some(Box::new(BaselineJob {
            sinks: sinks.into(),
            batches: ids.chunks(size).map(<[_]>::to_vec).collect(),
            checkpoint,
            permit,
            observed_at: now_rfc3339(),
            events: 0,
        }));
        let _ = myself.send_message(TenantMsg::NextPage);
    }

    /// Looks up the next batch of ids and gives their events to the baseline's destinations, or
    /// ends the baseline.
    pub(super) async fn baseline_next(&mut self, myself: &ActorRef<TenantMsg>) {
        let Some(job) = self.baseline.as_mut() else {
            return;
        };
        let Some(ids) = job.batches.pop_front() else {
            return self.baseline_done(myself).await;
        };
        let observed_at = job.observed_at.clone();
        let sinks = job.sinks.clone();
        let pages = match self.client.lookup(&ids).await {
            Ok(p) => p,
            Err(e) => {
                let job = self.baseline.take().expect("running");
                return self
                    .baseline_failed(myself, job.permit, &e.to_string())
                    .await;
            }
        };
        let mut out = Outbox {
            lines: Lines::new(self.args.formats),
            ..Default::default()
        };
        for page in &pages {
            // An unreadable node is reported by the sweeps; a baseline sends what it can read.
            for issue in page.issues().filter_map(Result::ok) {
                if !CURRENT.contains(&issue.status()) {
                    // Changed since the last sweep: the next one reports it to every destination.
                    continue;
                }
                let fp = issue_fingerprint(&issue);
                let kind = EventKind::for_first_sight(issue.status());
                self.normalizer.normalize_with(
                    &issue,
                    Some(kind),
                    &fp,
                    None,
                    &observed_at,
                    &mut out.lines,
                );
                out.lines.mark(Mark::Baseline);
                out.lines.end_event();
                out.count(kind);
            }
        }
        if out.events == 0 {
            let _ = myself.send_message(TenantMsg::NextPage);
            return;
        }
        self.pending = Some(Box::new(Pending {
            batch: self.batch("issues", out.lines, out.events, Some(sinks)),
            ledger: Ledger {
                kinds: out.ledger.kinds,
                ..Default::default()
            },
            attempts: 0,
        }));
        self.try_deliver(myself).await;
    }

    /// The tenant's destinations changed while a baseline runs: it keeps only those still
    /// routed (its page in flight too), and ends when none is left.
    pub(super) async fn baseline_rerouted(&mut self, myself: &ActorRef<TenantMsg>) {
        let destinations = self.args.destinations.clone();
        let Some(job) = self.baseline.as_mut() else {
            return;
        };
        let kept: Vec<String> = job
            .sinks
            .iter()
            .filter(|s| destinations.contains(s))
            .cloned()
            .collect();
        if kept.len() == job.sinks.len() {
            return;
        }
        if kept.is_empty() {
            tracing::info!(tenant = %self.args.spec.id, "the baseline's destinations are no longer routed; baseline dropped");
            let job = self.baseline.take().expect("running");
            self.pending = None;
            return self.start_sweep(myself, job.permit).await;
        }
        job.sinks = kept.into();
        let only = job.sinks.clone();
        if let Some(p) = self.pending.as_mut() {
            p.batch = Arc::new(Batch {
                tenant: p.batch.tenant.clone(),
                feed: p.batch.feed,
                lines: p.batch.lines.clone(),
                formatted: p.batch.formatted.clone(),
                events: p.batch.events,
                only: Some(only),
            });
        }
    }

    /// Every destination of the baseline took a page: on to the next.
    pub(super) fn baseline_page_acked(&mut self, myself: &ActorRef<TenantMsg>, pending: Pending) {
        if let Some(job) = self.baseline.as_mut() {
            job.events += pending.batch.events as u64;
        }
        let _ = myself.send_message(TenantMsg::NextPage);
    }

    /// The last page was acknowledged: the destinations are recorded as served, and the Issues
    /// step goes on with its sweep.
    async fn baseline_done(&mut self, myself: &ActorRef<TenantMsg>) {
        let Some(job) = self.baseline.take() else {
            return;
        };
        let mut checkpoint = job.checkpoint;
        let served = checkpoint.baselined.get_or_insert_with(BTreeSet::new);
        served.extend(job.sinks.iter().cloned());
        self.baseline_served(FeedName::Issues, &job.sinks);
        // Written as a checkpoint of its own; the sweep reads it back.
        let written = self
            .commit(Commit {
                checkpoint: Some(checkpoint),
                ..Default::default()
            })
            .await;
        if let Err((kind, e)) = written {
            if kind == FENCED {
                drop(job.permit);
                return self.stop_fenced(myself, &e);
            }
            return self.baseline_failed(myself, job.permit, &e).await;
        }
        tracing::info!(tenant = %self.args.spec.id, sinks = ?job.sinks, events = job.events, "baseline delivered");
        self.start_sweep(myself, job.permit).await;
    }

    /// The baseline could not run: reported, and tried again at the next poll; this poll goes on
    /// with its sweep.
    async fn baseline_failed(&mut self, myself: &ActorRef<TenantMsg>, permit: Held, error: &str) {
        tracing::error!(tenant = %self.args.spec.id, error = %error, "the baseline failed; it is tried again at the next poll");
        let now = SystemTime::now();
        let message = format!("baseline: {error}");
        self.args.health.update(&self.args.spec.id, |h| {
            h.last_error = Some(LastError { message, at: now });
        });
        self.baseline_skip = true;
        Box::pin(self.start_sweep(myself, permit)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_new_destination_is_due_and_an_upgrade_sends_nothing() {
        let dest = names(&["archive", "siem"]);
        // Written before baselines existed: everything routed counts as served.
        let mut cp = Checkpoint::default();
        assert!(due(&dest, &mut cp, &BTreeSet::new()).is_empty());
        assert_eq!(
            cp.baselined,
            Some(dest.iter().cloned().collect::<BTreeSet<_>>())
        );
        // A destination added later is due; one asked for again is too.
        let more = names(&["archive", "siem", "soc"]);
        assert_eq!(due(&more, &mut cp, &BTreeSet::new()), ["soc"]);
        let asked = BTreeSet::from(["archive".to_string(), "gone".to_string()]);
        assert_eq!(due(&more, &mut cp, &asked), ["archive", "soc"]);
    }
}
