//! The feeds beyond Issues in the tenant actor. A poll runs the tenant's feeds one after another
//! (a [`PollPlan`]): Issues first, with its own engine, then each other feed as a [`FeedJob`].
//! Every step takes a sweep slot, and every request goes through the tenant's one client, so
//! one token and one rate limiter: a tenant never asks faster than its credential allows,
//! whatever feeds it runs.
//!
//! A feed job sweeps one window of the feed's time field: from `incremental_overlap` before the
//! end of the last completed window (from the beginning, the first time) to a bound frozen when
//! the window starts. It pages through it by cursor, and each page is delivered and acknowledged
//! before its commit records the feed's position (window, cursor) with the page's item states.
//! So a crash continues the same window from the next page, repeating at most the page in
//! flight, with the same event ids; and an item whose time falls in the overlap of two windows,
//! or that Wiz indexed late, is seen again and dropped: by its recorded state (`States` feeds),
//! or by its id among the recent ones (`Once` feeds).
//!
//! A feed that fails (a permission Wiz refuses, an error that outlasted the retries) records its
//! error in its own health and sits out polls for a while; the tenant's other feeds run as usual.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use ractor::ActorRef;

use super::{unix_now, TenantActorState, TenantMsg};
use crate::change::{change, Change, Known};
use crate::event::{now_rfc3339, EventKind};
use crate::feeds::normalize::{decode, micros, once_kind, states_kind, FeedNormalizer};
use crate::feeds::{
    ChangeRule, Feed, FeedCheckpoint, FeedName, Recent, RunningWindow, Window, MAX_RECENT,
};
use crate::health::{FeedState, LastError, TenantState};
use crate::metrics::Observation;
use crate::sink::Batch;
use crate::state::{Checkpoint, Commit};
use crate::wiz::WizError;

/// A running window older than this starts over instead of continuing.
const RUNNING_MAX_AGE: u64 = 24 * 3600;
/// Longest a failed feed sits out polls (its first failure: one poll interval, then doubling).
const FEED_BACKOFF_MAX: Duration = Duration::from_secs(3600);
/// Pages one window may take (at least; `max_pages_per_sweep` when larger): 50,000,000 items at
/// 500 a page. A guard against a cursor that never ends, not a size limit: a tenant's first
/// vulnerability window may hold millions of findings.
const MAX_WINDOW_PAGES: u32 = 100_000;
/// Pages one step of a poll sweeps of a feed's window. A longer window (a first sweep of millions
/// of findings) yields after this many and continues in a new poll that starts at once, Issues
/// first: the tenant's issues stay fresh while the window takes its hour.
const STEP_PAGES: u32 = 100;
/// Shortest a feed Wiz refused sits out (a missing permission is not granted in seconds).
const DENIED_BACKOFF_MIN: Duration = Duration::from_secs(600);

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

/// One window of one feed being swept.
pub(super) struct FeedJob {
    feed: &'static Feed,
    key: String,
    checkpoint: Checkpoint,
    window: Window,
    cursor: Option<String>,
    pages: u32,
    /// Pages this step fetched (see `STEP_PAGES`).
    step_pages: u32,
    /// The step continues a window from a committed cursor.
    resumed: bool,
    cursors: HashSet<String>,
    /// When the window started (Unix seconds).
    started_unix: u64,
    started: Instant,
    events: u64,
    observed_at: String,
    /// `Once` feeds: ids delivered earlier in this window or in the last one's overlap.
    recent: Vec<Recent>,
    recent_ids: HashSet<String>,
    pending: Option<FeedPending>,
    span: tracing::Span,
}

/// A page given to the sink, not acknowledged yet.
struct FeedPending {
    batch: Arc<Batch>,
    /// Written once the sink took the page.
    commit: Option<Commit>,
    kinds: Vec<(EventKind, u64)>,
    last: bool,
    attempts: u32,
}

impl TenantActorState {
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
    fn end_plan(&mut self, myself: &ActorRef<TenantMsg>) {
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

    /// Starts a window of `feed`: the one a crash interrupted, or the next one.
    async fn start_feed(
        &mut self,
        myself: &ActorRef<TenantMsg>,
        feed: &'static Feed,
        permit: super::Held,
    ) {
        let key = feed.name.state_key(&self.args.spec.id);
        let mut checkpoint = match self.args.store.checkpoint(&key) {
            Ok(c) => c.unwrap_or_default(),
            Err(e) => {
                tracing::error!(tenant = %self.args.spec.id, feed = %feed.name, error = %e, "cannot read the feed's checkpoint; starting from the beginning");
                Checkpoint::default()
            }
        };
        let fc = checkpoint.feed.take().map(|b| *b).unwrap_or_default();
        let now = unix_now();
        let (window, cursor, pages, started_unix) = match fc
            .running
            .clone()
            .filter(|r| now.saturating_sub(r.started) < RUNNING_MAX_AGE)
        {
            Some(r) => {
                tracing::info!(tenant = %self.args.spec.id, feed = %feed.name, pages_done = r.pages, "continuing the interrupted window");
                (r.window, r.cursor, r.pages, r.started)
            }
            None => {
                let overlap = self.args.spec.incremental_overlap.0;
                let after = fc
                    .done_until
                    .as_deref()
                    .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                    .map(|t| t.checked_sub(overlap).unwrap_or(t))
                    .map(|t| humantime::format_rfc3339_micros(t).to_string());
                let before = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
                (Window { after, before }, None, 0, now)
            }
        };
        let resumed = cursor.is_some();
        let recent_ids = fc.recent.iter().map(|r| r.id.clone()).collect();
        checkpoint.feed = Some(Box::new(FeedCheckpoint {
            running: None,
            ..fc.clone()
        }));
        self.feed_job = Some(Box::new(FeedJob {
            feed,
            key,
            checkpoint,
            window,
            cursor,
            pages,
            step_pages: 0,
            resumed,
            cursors: HashSet::new(),
            started_unix,
            started: Instant::now(),
            events: 0,
            observed_at: now_rfc3339(),
            recent: fc.recent,
            recent_ids,
            pending: None,
            span: tracing::info_span!("feed", tenant = %self.args.spec.id, feed = feed.name.as_str()),
        }));
        let name = feed.name.as_str();
        self.args.health.update(self.id(), |h| {
            h.feed(name).state = FeedState::Polling;
        });
        self.slot.hold(permit);
        let _ = myself.send_message(TenantMsg::NextPage);
    }

    /// Fetches the job's next page, builds its events and hands them to the sink.
    pub(super) async fn feed_next_page(&mut self, myself: &ActorRef<TenantMsg>) {
        let Some(job) = self.feed_job.as_mut() else {
            return;
        };
        let max = self.args.spec.max_pages_per_sweep.max(MAX_WINDOW_PAGES);
        if job.pages >= max {
            let e = WizError::TooManyPages { max };
            return self.feed_finish(myself, Err(e)).await;
        }
        let body = Bytes::from(job.feed.request(
            &job.window,
            self.args.spec.page_size,
            job.cursor.as_deref(),
        ));
        let root = job.feed.root;
        let span = tracing::info_span!(parent: &job.span, "page", tenant = %self.args.spec.id, page = job.pages + 1);
        let fetched =
            tracing::Instrument::instrument(self.client.fetch_feed_page(body, root), span).await;
        let page = match fetched {
            Ok(p) => p,
            Err(e) => return self.feed_finish(myself, Err(e)).await,
        };
        let Some(job) = self.feed_job.as_mut() else {
            return;
        };
        job.pages += 1;
        job.step_pages += 1;
        let last = if page.has_next_page {
            match page.end_cursor.as_deref() {
                None | Some("") => {
                    let e = WizError::CursorMissing { page: job.pages };
                    return self.feed_finish(myself, Err(e)).await;
                }
                Some(c) if !job.cursors.insert(c.to_string()) => {
                    let e = WizError::CursorRepeated { page: job.pages };
                    return self.feed_finish(myself, Err(e)).await;
                }
                Some(c) => {
                    job.cursor = Some(c.to_string());
                    false
                }
            }
        } else {
            true
        };
        let feed = job.feed;
        let name = feed.name;
        // The item states this page knows, for a `States` feed (one read).
        let decoded: Vec<_> = page.nodes().map(|n| (n, decode(name, n))).collect();
        let known = if feed.rule == ChangeRule::States {
            let ids: Vec<&str> = decoded
                .iter()
                .filter_map(|(_, d)| d.as_ref().ok().map(|i| &*i.id.0))
                .collect();
            match self.args.store.known(&job.key, &ids) {
                Ok(k) => k,
                Err(e) => {
                    let e = WizError::BadResponse(format!("state store: {e}"));
                    return self.feed_finish(myself, Err(e)).await;
                }
            }
        } else {
            Vec::new()
        };
        let mut known = known.into_iter();
        let overlap_from = micros(&job.window.before)
            .map(|b| b - self.args.spec.incremental_overlap.0.as_micros() as i64);
        let mut lines = std::mem::take(&mut self.buf);
        lines.clear();
        let mut events = 0usize;
        let mut kinds: Vec<(EventKind, u64)> = Vec::new();
        let mut remember = Vec::new();
        for (raw, item) in &decoded {
            let item = match item {
                Ok(i) => i,
                Err(e) => {
                    self.args.observer.emit(
                        &self.args.spec.id,
                        Observation::NodeSkipped {
                            error: &format!("{name}: {e}"),
                        },
                    );
                    continue;
                }
            };
            let fp = item.fingerprint();
            let (kind, salt) = match feed.rule {
                ChangeRule::States => {
                    let old = known.next().flatten();
                    let status = item.status();
                    let open = !matches!(status, "RESOLVED" | "REJECTED");
                    let kind = match change(old.as_ref(), status, &fp, open) {
                        Change::Emit(k) => states_kind(name, k),
                        Change::Remember | Change::Unchanged => continue,
                    };
                    remember.push((
                        item.id.0.to_string(),
                        Known {
                            fingerprint: fp,
                            status: status.to_string(),
                            severity: item.severity_raw().map(str::to_string),
                            silent: false,
                        },
                    ));
                    (kind, old.map(|o| o.fingerprint))
                }
                ChangeRule::Once => {
                    if job.recent_ids.contains(&*item.id.0) {
                        continue;
                    }
                    let at = item.time_micros();
                    if at.is_none_or(|t| overlap_from.is_none_or(|from| t >= from)) {
                        job.recent_ids.insert(item.id.0.to_string());
                        job.recent.push(Recent {
                            id: item.id.0.to_string(),
                            at: at.unwrap_or(0),
                        });
                    }
                    (once_kind(name), None)
                }
            };
            let normalizer = self.feed_normalizer.get_or_insert_with(|| {
                Box::new(FeedNormalizer::new(
                    &self.args.spec.id,
                    self.args.spec.console_url.as_str(),
                ))
            });
            normalizer.write(
                name,
                item,
                raw,
                kind,
                &fp,
                salt.as_ref(),
                &job.observed_at,
                &mut lines,
            );
            lines.push(b'\n');
            events += 1;
            match kinds.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, n)) => *n += 1,
                None => kinds.push((kind, 1)),
            }
        }
        // The position after this page: the next page's cursor, or the window done.
        let mut cp = job.checkpoint.clone();
        let fc = cp.feed.get_or_insert_with(Default::default);
        if last {
            fc.done_until = Some(job.window.before.clone());
            fc.running = None;
            let from = overlap_from.unwrap_or(i64::MIN);
            let mut keep: Vec<Recent> = job
                .recent
                .iter()
                .filter(|r| r.at == 0 || r.at >= from)
                .cloned()
                .collect();
            if keep.len() > MAX_RECENT {
                keep.drain(..keep.len() - MAX_RECENT);
            }
            fc.recent = keep;
        } else {
            fc.running = Some(RunningWindow {
                window: job.window.clone(),
                cursor: job.cursor.clone(),
                pages: job.pages,
                started: job.started_unix,
            });
            fc.recent = job.recent.clone();
        }
        let commit = Commit {
            remember,
            settle: Vec::new(),
            checkpoint: Some(cp),
        };
        if events == 0 {
            self.buf = lines;
            let key = job.key.clone();
            if let Err(e) = self
                .write_to(&key, crate::state::Write::Commit(commit))
                .await
            {
                return self.feed_store_failed(myself, e).await;
            }
            return self.feed_page_done(myself, last).await;
        }
        let Some(job) = self.feed_job.as_mut() else {
            return;
        };
        job.pending = Some(FeedPending {
            batch: Arc::new(Batch {
                tenant: Arc::from(self.args.spec.id.as_str()),
                lines,
                events,
            }),
            commit: Some(commit),
            kinds,
            last,
            attempts: 0,
        });
        self.feed_try_deliver(myself).await;
    }

    async fn feed_page_done(&mut self, myself: &ActorRef<TenantMsg>, last: bool) {
        let step_done = self
            .feed_job
            .as_ref()
            .is_some_and(|j| j.step_pages >= STEP_PAGES);
        if last {
            self.feed_finish(myself, Ok(())).await
        } else if step_done {
            // The window's position is committed: the next poll continues it.
            self.feed_yield(myself).await
        } else {
            let _ = myself.send_message(TenantMsg::NextPage);
        }
    }

    /// Takes the running feed job off the actor: its sweep slot goes back, and hints that waited
    /// for it are taken up.
    fn end_feed_job(&mut self, myself: &ActorRef<TenantMsg>) -> Option<Box<FeedJob>> {
        let job = self.feed_job.take()?;
        self.slot.release();
        if self.args.hints.pending() {
            let _ = myself.send_message(TenantMsg::Hints);
        }
        Some(job)
    }

    /// Ends this step of a long window; a new poll starts as soon as this one ends.
    async fn feed_yield(&mut self, myself: &ActorRef<TenantMsg>) {
        let Some(job) = self.end_feed_job(myself) else {
            return;
        };
        if let Some(p) = self.plan.as_mut() {
            p.yielded = true;
        }
        tracing::debug!(tenant = %self.args.spec.id, feed = %job.feed.name, pages_done = job.pages, "long feed window: continuing after the tenant's next issues poll");
        let name = job.feed.name.as_str();
        self.args.health.update(self.id(), |h| {
            h.feed(name).events_added = job.events;
        });
        self.step_done(myself, None);
    }

    /// Gives the pending page to the sink; on its ack, commits the page and moves on.
    pub(super) async fn feed_try_deliver(&mut self, myself: &ActorRef<TenantMsg>) {
        let Some(batch) = self
            .feed_job
            .as_ref()
            .and_then(|j| j.pending.as_ref())
            .map(|p| p.batch.clone())
        else {
            return;
        };
        let result = self.to_sink(batch).await;
        let Some(pending) = self.feed_job.as_mut().and_then(|j| j.pending.as_mut()) else {
            return;
        };
        match result {
            Ok(()) => {
                let job = self.feed_job.as_mut().expect("checked above");
                let mut pending = job.pending.take().expect("checked above");
                let events = pending.batch.events as u64;
                job.events += events;
                let feed = job.feed.name.as_str();
                for (kind, count) in pending.kinds.drain(..) {
                    self.args.observer.emit(
                        &self.args.spec.id,
                        Observation::EventsDelivered { kind, count },
                    );
                }
                self.args.health.update(&self.args.spec.id, |h| {
                    h.events_total += events;
                    h.feed(feed).events_total += events;
                });
                let commit = pending.commit.take().unwrap_or_default();
                let key = job.key.clone();
                if let Err(e) = self
                    .write_to(&key, crate::state::Write::Commit(commit))
                    .await
                {
                    return self.feed_store_failed(myself, e).await;
                }
                if let Ok(b) = Arc::try_unwrap(pending.batch) {
                    self.buf = b.lines;
                }
                self.feed_page_done(myself, pending.last).await;
            }
            Err(e) => {
                pending.attempts += 1;
                let attempts = pending.attempts;
                self.sink_refused(myself, &e, attempts);
            }
        }
    }

    /// A state write of the feed failed: fenced (another replica owns the tenant now), the
    /// tenant stops here; otherwise the feed fails this time and its window is tried again.
    async fn feed_store_failed(&mut self, myself: &ActorRef<TenantMsg>, (kind, e): (&str, String)) {
        if kind == super::FENCED {
            self.end_feed_job(myself);
            return self.stop_fenced(myself, &e);
        }
        let e = WizError::BadResponse(format!("state store: {e}"));
        self.feed_finish(myself, Err(e)).await
    }

    /// Ends the feed job: its health, its retry gate, and the plan's next step.
    async fn feed_finish(&mut self, myself: &ActorRef<TenantMsg>, result: Result<(), WizError>) {
        let Some(job) = self.end_feed_job(myself) else {
            return;
        };
        if matches!(result, Err(WizError::Stopping)) {
            return;
        }
        let name = job.feed.name;
        let now = SystemTime::now();
        match result {
            Ok(()) => {
                self.feed_retry.remove(&name);
                if let Some(p) = self.plan.as_mut() {
                    p.ok += 1;
                }
                tracing::info!(tenant = %self.args.spec.id, feed = %name, events = job.events, pages = job.pages, duration_ms = job.started.elapsed().as_millis() as u64, "feed window delivered");
                self.args.health.update(self.id(), |h| {
                    let f = h.feed(name.as_str());
                    f.state = FeedState::Idle;
                    f.last_success_at = Some(now);
                    f.events_added = job.events;
                    f.next_try_at = None;
                });
            }
            Err(e) => {
                if job.resumed && job.step_pages == 0 {
                    // A cursor Wiz may no longer take: the next attempt starts a new window
                    // (from the same lower bound, so nothing is skipped; what the interrupted
                    // window delivered is dropped as known, or repeated with its event ids).
                    let fresh = crate::state::Write::Commit(Commit {
                        checkpoint: Some(job.checkpoint.clone()),
                        ..Default::default()
                    });
                    let _ = self.write_to(&job.key, fresh).await;
                }
                let denied = e.is_permission_denied();
                let retry = self.feed_retry.entry(name).or_default();
                retry.failures += 1;
                let interval = self.args.spec.poll_interval.0;
                let mut wait = interval
                    .saturating_mul(1 << retry.failures.saturating_sub(1).min(10))
                    .min(FEED_BACKOFF_MAX.max(interval));
                if denied {
                    wait = wait.max(DENIED_BACKOFF_MIN);
                }
                retry.not_before = Some(Instant::now() + wait);
                if let Some(p) = self.plan.as_mut() {
                    p.failed += 1;
                }
                let message = if denied {
                    format!(
                        "feed {name}: Wiz refused it ({e}); the service account needs this permission: {}. The tenant's other feeds keep running",
                        job.feed.permission
                    )
                } else {
                    format!("feed {name}: {e}")
                };
                self.args.observer.emit(
                    &self.args.spec.id,
                    Observation::FeedFailed {
                        feed: name.as_str(),
                        denied,
                        error: &message,
                        retry_in: wait,
                    },
                );
                let error = LastError {
                    message: message.clone(),
                    at: now,
                };
                self.args.health.update(self.id(), |h| {
                    let f = h.feed(name.as_str());
                    f.state = if denied {
                        FeedState::Denied
                    } else {
                        FeedState::Backoff
                    };
                    f.last_error = Some(error.clone());
                    f.events_added = job.events;
                    f.next_try_at = Some(now + wait);
                    h.last_error = Some(error);
                });
            }
        }
        self.step_done(myself, None);
    }
}
