//! The poll plan and its timer: when a tenant polls, and what a poll runs. A poll is a plan of
//! steps (Issues first, then each other feed that is not sitting out a failure), each step with a
//! sweep slot; the timer is armed when the plan ends, never with an interval. This is the only
//! reader of `poll_interval`: the delay after a good poll, the backoff after a failed one, how
//! long a failed feed sits out.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use ractor::ActorRef;
use rand::Rng;

use super::{TenantActorState, TenantMsg, PARK_AFTER_REFUSALS};
use crate::feeds::FeedName;
use crate::health::TenantState;

/// First delay before polling again after a failed poll; doubles up to the poll interval.
/// Longest a failed feed sits out polls (its first failure: one poll interval, then doubling).
const FEED_BACKOFF_MAX: Duration = Duration::from_secs(3600);
/// Shortest a feed Wiz refused sits out (a missing permission is not granted in seconds).
const DENIED_BACKOFF_MIN: Duration = Duration::from_secs(600);
pub(super) const FAILED_POLL_FIRST: Duration = Duration::from_secs(5);

/// The steps of one poll: the feeds still to run, and when to poll next.
pub(super) struct PollPlan {
    pub steps: VecDeque<FeedName>,
    /// The delay the Issues step chose (its backoff after a failure); `None`: the poll interval.
    pub delay: Option<Duration>,
    /// Feeds of this poll that succeeded / failed (for a tenant without Issues, whose state
    /// they make).
    pub ok: u32,
    pub failed: u32,
    /// A feed stopped its window after `STEP_PAGES` pages: the next poll starts at once.
    pub yielded: bool,
    /// The Issues step failed (its `delay` is a backoff, which a yielded feed does not cut).
    pub issues_failed: bool,
}

/// When a failed feed runs again.
#[derive(Default, Clone, Copy)]
pub(super) struct FeedRetry {
    pub failures: u32,
    pub not_before: Option<Instant>,
}

/// `d` scaled by a random factor in [0.5, 1.0].
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.5..=1.0))
}

impl TenantActorState {
    /// Arms the timer of the next poll. A poll an operator asked for while the last one ran
    /// ([`TenantMsg::Asked`]) makes it fire at once.
    pub(super) fn arm_timer(&mut self, myself: &ActorRef<TenantMsg>, after: Duration) {
        let after = if std::mem::take(&mut self.poll_asked) {
            Duration::ZERO
        } else {
            after
        };
        if let Some(t) = self.timer.take() {
            self.args.alarms.cancel(t);
        }
        self.timer = Some(self.args.alarms.set(after, myself));
        self.due = Some(Instant::now() + after);
        let at = SystemTime::now() + after;
        self.args
            .health
            .update(self.id(), |h| h.next_poll_at = Some(at));
    }

    /// The steps of a new poll: Issues when configured, then every other feed that is not
    /// sitting out after a failure.
    pub(super) fn new_plan(&self) -> PollPlan {
        let now = Instant::now();
        let steps = self
            .args
            .spec
            .feeds
            .iter()
            .copied()
            .filter(|f| {
                *f == FeedName::Issues
                    || self
                        .feed_retry
                        .get(f)
                        .and_then(|r| r.not_before)
                        .is_none_or(|t| now >= t)
            })
            .collect();
        PollPlan {
            steps,
            delay: None,
            ok: 0,
            failed: 0,
            yielded: false,
            issues_failed: false,
        }
    }

    /// Asks for a sweep slot for the plan's next step (it comes as `Permit`).
    pub(super) fn ask_slot(&mut self, myself: &ActorRef<TenantMsg>) {
        match self.args.slots.try_take() {
            Some(held) => {
                let _ = myself.send_message(TenantMsg::Permit(held));
            }
            None => {
                let slots = self.args.slots.clone();
                let me = myself.clone();
                tokio::spawn(async move {
                    let held = slots.take().await;
                    let _ = me.send_message(TenantMsg::Permit(held));
                });
            }
        }
        self.waiting_for_permit = true;
    }

    /// Runs the plan's next step with the slot `permit`.
    pub(super) async fn start_step(&mut self, myself: &ActorRef<TenantMsg>, permit: super::Held) {
        if self.plan.is_none() {
            self.plan = Some(self.new_plan());
        }
        // Cluster mode: nothing is polled while this replica's lease does not hold; the plan
        // waits (the slot is given back) and goes on at the next `Poll`.
        match self.lease_gate().await {
            super::claim::Gate::Open => {}
            super::claim::Gate::Closed(why) => {
                drop(permit);
                return self.lease_wait(myself, why, || TenantMsg::Poll);
            }
            super::claim::Gate::Fenced(e) => {
                drop(permit);
                return self.stop_fenced(myself, &e);
            }
        }
        let next = self.plan.as_mut().and_then(|p| p.steps.pop_front());
        match next {
            Some(FeedName::Issues) => self.start_sweep(myself, permit).await,
            Some(feed) => match feed.feed() {
                Some(f) => self.start_feed(myself, f, permit).await,
                None => self.step_done(myself, None),
            },
            None => {
                drop(permit);
                self.end_plan(myself);
            }
        }
    }

    /// A step ended: the next one asks for a slot, or the poll is over. `delay` is the Issues
    /// step's choice of when to poll again.
    pub(super) fn step_done(&mut self, myself: &ActorRef<TenantMsg>, delay: Option<Duration>) {
        let Some(plan) = self.plan.as_mut() else {
            if let Some(d) = delay {
                self.arm_timer(myself, d);
            }
            return;
        };
        if delay.is_some() {
            plan.delay = delay;
        }
        if plan.steps.is_empty() {
            self.end_plan(myself);
        } else {
            self.ask_slot(myself);
        }
    }

    /// The poll is over: a tenant without Issues takes its state from its feeds; the timer is
    /// armed.
    pub(super) fn end_plan(&mut self, myself: &ActorRef<TenantMsg>) {
        let Some(plan) = self.plan.take() else {
            return;
        };
        let interval = self.args.spec.poll_interval.0;
        if !self.args.spec.feeds.contains(&FeedName::Issues) {
            let now = SystemTime::now();
            self.args.health.update(self.id(), |h| {
                h.polls += 1;
                if plan.ok > 0 || plan.failed == 0 {
                    h.state = TenantState::Idle;
                    h.last_success_at = Some(now);
                } else {
                    h.state = TenantState::Backoff;
                }
            });
        }
        let delay = if plan.yielded && !plan.issues_failed {
            Duration::ZERO
        } else {
            plan.delay.unwrap_or(interval)
        };
        self.arm_timer(myself, delay);
    }

    /// When to poll again after a good Issues step: the poll interval.
    pub(super) fn next_poll_after_success(&self) -> Duration {
        self.args.spec.poll_interval.0
    }

    /// When to poll again after a failed Issues step (`consecutive_failures` counts it): 5 s
    /// doubling up to the poll interval, jittered; once the credentials were refused
    /// [`PARK_AFTER_REFUSALS`] times in a row, `failed_cooldown` (parked). Also says whether
    /// the tenant is parked.
    pub(super) fn next_poll_after_failure(&self) -> (Duration, bool) {
        let interval = self.args.spec.poll_interval.0;
        let exp = self.consecutive_failures.saturating_sub(1).min(16);
        let base = FAILED_POLL_FIRST.saturating_mul(1 << exp).min(interval);
        let parked = self.refusals >= PARK_AFTER_REFUSALS;
        let delay = if parked {
            self.args.failed_cooldown
        } else {
            jitter(base)
        };
        (delay, parked)
    }

    /// How long a feed sits out after its `failures`-th failure in a row: one poll interval,
    /// doubling up to an hour (or the interval, when longer); at least 10 minutes when Wiz
    /// refused it (`denied`).
    pub(super) fn feed_sits_out(&self, failures: u32, denied: bool) -> Duration {
        let interval = self.args.spec.poll_interval.0;
        let wait = interval
            .saturating_mul(1 << failures.saturating_sub(1).min(10))
            .min(FEED_BACKOFF_MAX.max(interval));
        if denied {
            wait.max(DENIED_BACKOFF_MIN)
        } else {
            wait
        }
    }

    /// The tenant's settings changed in place (a reload: poll interval, rate limit): an armed
    /// timer fires no later than the new interval allows.
    pub(super) fn update_spec(
        &mut self,
        myself: &ActorRef<TenantMsg>,
        spec: std::sync::Arc<crate::config::TenantSpec>,
    ) {
        let interval = spec.poll_interval.0;
        self.args.spec = spec;
        if self.sweep.is_none() && !self.waiting_for_permit && self.plan.is_none() {
            if let Some(due) = self.due {
                let remaining = due.saturating_duration_since(Instant::now());
                if remaining > interval {
                    self.arm_timer(myself, interval);
                }
            }
        }
        tracing::info!(tenant = %self.id(), poll_interval = %self.args.spec.poll_interval, rate_limit = self.args.spec.rate_limit, "tenant settings updated in place");
    }
}
