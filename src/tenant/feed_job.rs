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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use ractor::ActorRef;

use super::delivery::{Ledger, Pending};
use super::slot::Held;
use super::{unix_now, TenantActorState, TenantMsg};
use crate::change::{change, Change, Known, VANISHED};
use crate::event::{now_rfc3339, EventKind};
use crate::feeds::normalize::{decode, micros, once_kind, states_kind, FeedNormalizer, Item};
use crate::feeds::{
    ChangeRule, Feed, FeedCheckpoint, FeedName, Recent, RunningWindow, Window, MAX_RECENT,
};
use crate::format::{Lines, Mark};
use crate::health::{FeedState, LastError};
use crate::metrics::Observation;
use crate::state::{Checkpoint, Commit};
use crate::wiz::page::NodeError;
use crate::wiz::WizError;

/// A running window older than this starts over instead of continuing.
const RUNNING_MAX_AGE: u64 = 24 * 3600;
/// Pages one window may take (at least; `max_pages_per_sweep` when larger): 50,000,000 items at
/// 500 a page. A guard against a cursor that never ends, not a size limit: a tenant's first
/// vulnerability window may hold millions of findings.
const MAX_WINDOW_PAGES: u32 = 100_000;
/// Pages one step of a poll sweeps of a feed's window. A longer window (a first sweep of millions
/// of findings) yields after this many and continues in a new poll that starts at once, Issues
/// first: the tenant's issues stay fresh while the window takes its hour.
const STEP_PAGES: u32 = 100;

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
    span: tracing::Span,
    /// A baseline job (see `tenant::baseline`): its destinations. It sweeps the whole feed and
    /// sends only the items recorded as open, to these only, and commits nothing but, at its
    /// end, the destinations served.
    baseline: Option<Arc<[String]>>,
}

/// Where a feed's baseline that yielded goes on (kept in memory: after a restart the baseline
/// starts over; it is recorded as done only at its end).
pub(super) struct BaselineStash {
    feed: FeedName,
    sinks: Arc<[String]>,
    window: Window,
    cursor: Option<String>,
    pages: u32,
}

/// The events one page of a window makes, and the item states its commit remembers.
pub(super) struct BuiltPage {
    /// JSON lines, one per event, in each format the tenant's destinations take.
    pub lines: Lines,
    pub events: usize,
    pub kinds: Vec<(EventKind, u64)>,
    pub remember: Vec<(String, Known)>,
    /// In-flight marks the commit after the ack settles: the page's changed items (marked
    /// before the page goes out, see [`FeedJob::build_page`]) and stale marks it saw.
    pub settle: Vec<String>,
}

impl BuiltPage {
    /// Adds the page's quarantine events (already in its lines) by their records, one each.
    /// The records are marked in flight with the page's states and settled by its commit like
    /// them.
    fn add_quarantined(&mut self, feed: FeedName, records: Vec<(String, Known)>) {
        if records.is_empty() {
            return;
        }
        self.events += records.len();
        self.kinds
            .push((feed.unreadable_kind(), records.len() as u64));
        self.settle.extend(records.iter().map(|(id, _)| id.clone()));
        self.remember.extend(records);
    }
}

impl FeedJob {
    /// The feed this job sweeps.
    pub(super) fn feed_name(&self) -> FeedName {
        self.feed.name
    }

    /// Counts a fetched page and takes its cursor: whether the page ends the window, or the
    /// error a missing or repeated cursor is (a sweep that would never end).
    fn advance(&mut self, has_next: bool, end_cursor: Option<&str>) -> Result<bool, WizError> {
        self.pages += 1;
        self.step_pages += 1;
        if !has_next {
            return Ok(true);
        }
        match end_cursor {
            None | Some("") => Err(WizError::CursorMissing { page: self.pages }),
            Some(c) if !self.cursors.insert(c.to_string()) => {
                Err(WizError::CursorRepeated { page: self.pages })
            }
            Some(c) => {
                self.cursor = Some(c.to_string());
                Ok(false)
            }
        }
    }

    /// The lower bound of the window's overlap with the next one, in microseconds.
    fn overlap_from(&self, overlap: std::time::Duration) -> Option<i64> {
        micros(&self.window.before).map(|b| b - overlap.as_micros() as i64)
    }

    /// Builds the events of a page's readable items (`decoded`, with `known`, the recorded
    /// states of a `States` feed's items in the same order) into `lines`: a `States` item whose
    /// state changed, a `Once` item not delivered before in this window or the last one's
    /// overlap (remembered here, when it falls in this window's overlap). Pure but for the
    /// job's recent ids.
    ///
    /// `marks`: the `States` feed's in-flight marks, the states of pages that went to the sink
    /// and were never committed (the process died between the two). A consumer may hold such a
    /// state although the store does not: an item found in its recorded state but marked in
    /// another (resolved, then found open again) is reported as a change from the marked state,
    /// which the recorded state alone would call unchanged. The changed items' new states are
    /// the page's own marks (`remember`, written as marks before delivery).
    fn build_page(
        &mut self,
        decoded: &[(&str, Result<Item<'_>, NodeError>)],
        known: Vec<Option<Known>>,
        marks: &HashMap<String, Known>,
        overlap: std::time::Duration,
        normalizer: &mut FeedNormalizer,
        mut lines: Lines,
    ) -> BuiltPage {
        let (feed, name) = (self.feed, self.feed.name);
        let overlap_from = self.overlap_from(overlap);
        let mut known = known.into_iter();
        let mut out = BuiltPage {
            lines: Lines::default(),
            events: 0,
            kinds: Vec::new(),
            remember: Vec::new(),
            settle: Vec::new(),
        };
        for (raw, item) in decoded {
            let Ok(item) = item else {
                continue;
            };
            let fp = item.fingerprint();
            let (kind, salt) = match feed.rule {
                ChangeRule::States => {
                    let old = known.next().flatten();
                    let status = item.status();
                    let open = !matches!(status, "RESOLVED" | "REJECTED");
                    let mark = marks.get(&*item.id.0);
                    let (kind, from) = match change(old.as_ref(), status, &fp, open) {
                        Change::Emit(k) => (k, old.map(|o| o.fingerprint)),
                        Change::Remember | Change::Unchanged => {
                            let unsure = mark.filter(|m| m.fingerprint != fp);
                            match unsure.map(|m| (m, change(Some(m), status, &fp, open))) {
                                Some((m, Change::Emit(k))) => (k, Some(m.fingerprint)),
                                _ => {
                                    if mark.is_some() {
                                        // Delivered and recorded after all: the mark is stale.
                                        out.settle.push(item.id.0.to_string());
                                    }
                                    continue;
                                }
                            }
                        }
                    };
                    let kind = states_kind(name, kind);
                    out.settle.push(item.id.0.to_string());
                    out.remember.push((
                        item.id.0.to_string(),
                        Known {
                            fingerprint: fp,
                            status: status.to_string(),
                            severity: item.severity_raw().map(str::to_string),
                            silent: false,
                        },
                    ));
                    (kind, from)
                }
                ChangeRule::Once => {
                    let key = item.once_key();
                    if self.recent_ids.contains(&*key) {
                        continue;
                    }
                    let at = item.time_micros();
                    if at.is_none_or(|t| overlap_from.is_none_or(|from| t >= from)) {
                        self.recent_ids.insert(key.to_string());
                        self.recent.push(Recent {
                            id: key.into_owned(),
                            at: at.unwrap_or(0),
                        });
                    }
                    (once_kind(name, item), None)
                }
            };
            normalizer.write(
                name,
                item,
                raw,
                kind,
                &fp,
                salt.as_ref(),
                &self.observed_at,
                &mut lines,
            );
            lines.end_event();
            out.events += 1;
            match out.kinds.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, n)) => *n += 1,
                None => out.kinds.push((kind, 1)),
            }
        }
        out.lines = lines;
        out
    }

    /// Builds a baseline page: each readable item that is open in Wiz and recorded as open (and
    /// reported) in the state, as the kind of a first sight, marked `"baseline": true`. Remembers
    /// nothing.
    fn build_baseline_page(
        &self,
        decoded: &[(&str, Result<Item<'_>, NodeError>)],
        known: Vec<Option<Known>>,
        normalizer: &mut FeedNormalizer,
        mut lines: Lines,
    ) -> BuiltPage {
        let name = self.feed.name;
        let kind = states_kind(name, EventKind::Opened);
        let open = |status: &str| !matches!(status, "RESOLVED" | "REJECTED" | VANISHED);
        let mut events = 0;
        let mut known = known.into_iter();
        for (raw, item) in decoded {
            let Ok(item) = item else {
                continue;
            };
            let recorded = known.next().flatten();
            if !recorded.is_some_and(|k| !k.silent && open(&k.status)) || !open(item.status()) {
                continue;
            }
            let fp = item.fingerprint();
            normalizer.write(
                name,
                item,
                raw,
                kind,
                &fp,
                None,
                &self.observed_at,
                &mut lines,
            );
            lines.mark(Mark::Baseline);
            lines.end_event();
            events += 1;
        }
        BuiltPage {
            lines,
            events,
            kinds: if events > 0 {
                vec![(kind, events as u64)]
            } else {
                Vec::new()
            },
            remember: Vec::new(),
            settle: Vec::new(),
        }
    }

    /// The checkpoint after a page: the window done (`last`: its end becomes the next window's
    /// start, and the recent ids within its overlap are kept, at most [`MAX_RECENT`]), or the
    /// window running with the next page's cursor.
    fn position(&self, last: bool, overlap: std::time::Duration) -> Checkpoint {
        let mut cp = self.checkpoint.clone();
        let fc = cp.feed.get_or_insert_with(Default::default);
        if last {
            fc.done_until = Some(self.window.before.clone());
            fc.running = None;
            let from = self.overlap_from(overlap).unwrap_or(i64::MIN);
            let mut keep: Vec<Recent> = self
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
                window: self.window.clone(),
                cursor: self.cursor.clone(),
                pages: self.pages,
                started: self.started_unix,
            });
            fc.recent = self.recent.clone();
        }
        cp
    }
}

impl TenantActorState {
    /// Starts a window of `feed`: the one a crash interrupted, or the next one.
    pub(super) async fn start_feed(
        &mut self,
        myself: &ActorRef<TenantMsg>,
        feed: &'static Feed,
        permit: Held,
    ) {
        let key = feed.name.state_key(&self.args.spec.id);
        let mut checkpoint = match self.args.store.checkpoint(&key) {
            Ok(c) => c.unwrap_or_default(),
            Err(e) => {
                tracing::error!(tenant = %self.args.spec.id, feed = %feed.name, error = %e, "cannot read the feed's checkpoint; starting from the beginning");
                Checkpoint::default()
            }
        };
        if super::baseline::has_baseline(feed.name) {
            let due = super::baseline::due(
                &self.args.destinations,
                &mut checkpoint,
                &self.asked_for(feed.name),
            );
            if !due.is_empty() && !self.feed_baseline_skip.remove(&feed.name) {
                return self.start_feed_baseline(myself, feed, permit, checkpoint, due);
            }
        }
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
                let after = match fc.done_until.as_deref() {
                    Some(done) => humantime::parse_rfc3339_weak(done)
                        .ok()
                        .map(|t| t.checked_sub(overlap).unwrap_or(t)),
                    // The first window: bounded by the feed's lookback, when one is set.
                    None => self.first_window_after(feed.name),
                }
                .map(|t| humantime::format_rfc3339_micros(t).to_string());
                let before = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
                (Window { after, before }, None, 0, now)
            }
        };
        // Shown in health while the first window runs, when a lookback bounds it.
        let first = fc
            .done_until
            .is_none()
            .then(|| window.after.clone())
            .flatten();
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
            span: tracing::info_span!("feed", tenant = %self.args.spec.id, feed = feed.name.as_str()),
            baseline: None,
        }));
        let name = feed.name.as_str();
        self.args.health.update(self.id(), |h| {
            let f = h.feed(name);
            f.state = FeedState::Polling;
            f.first_window_after = first;
        });
        self.slot.hold(permit);
        let _ = myself.send_message(TenantMsg::NextPage);
    }

    /// Starts (or continues, after a yield) `feed`'s baseline for `sinks`: the whole feed, up
    /// to now, in pages, sending the items recorded as open.
    fn start_feed_baseline(
        &mut self,
        myself: &ActorRef<TenantMsg>,
        feed: &'static Feed,
        permit: Held,
        checkpoint: Checkpoint,
        sinks: Vec<String>,
    ) {
        let sinks: Arc<[String]> = sinks.into();
        let stash = self
            .feed_baseline_stash
            .take()
            .filter(|s| s.feed == feed.name && s.sinks == sinks);
        let (window, cursor, pages) = match stash {
            Some(s) => (s.window, s.cursor, s.pages),
            None => {
                tracing::info!(tenant = %self.args.spec.id, feed = %feed.name, sinks = ?sinks, "sending the feed's open findings to newly routed destinations (a baseline)");
                let before = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
                (
                    Window {
                        after: None,
                        before,
                    },
                    None,
                    0,
                )
            }
        };
        self.feed_job = Some(Box::new(FeedJob {
            feed,
            key: feed.name.state_key(&self.args.spec.id),
            checkpoint,
            window,
            resumed: cursor.is_some(),
            cursor,
            pages,
            step_pages: 0,
            cursors: HashSet::new(),
            started_unix: unix_now(),
            started: Instant::now(),
            events: 0,
            observed_at: now_rfc3339(),
            recent: Vec::new(),
            recent_ids: HashSet::new(),
            span: tracing::info_span!("feed_baseline", tenant = %self.args.spec.id, feed = feed.name.as_str()),
            baseline: Some(sinks),
        }));
        self.slot.hold(permit);
        let _ = myself.send_message(TenantMsg::NextPage);
    }

    /// A feed's baseline swept the whole feed: the destinations are recorded as served (in the
    /// feed's checkpoint, read when the baseline started: the feed's own window does not run
    /// meanwhile), and a new poll runs the feed's window at once.
    async fn feed_baseline_done(&mut self, myself: &ActorRef<TenantMsg>) {
        let Some(job) = self.end_feed_job(myself) else {
            return;
        };
        let sinks = job
            .baseline
            .clone()
            .unwrap_or_else(|| Arc::from(Vec::new()));
        let mut checkpoint = job.checkpoint.clone();
        checkpoint
            .baselined
            .get_or_insert_with(Default::default)
            .extend(sinks.iter().cloned());
        let written = self
            .write_to(
                &job.key,
                crate::state::Write::Commit(Commit {
                    checkpoint: Some(checkpoint),
                    ..Default::default()
                }),
            )
            .await;
        match written {
            Err((kind, e)) if kind == super::FENCED => return self.stop_fenced(myself, &e),
            Err((_, e)) => {
                tracing::error!(tenant = %self.args.spec.id, feed = %job.feed.name, error = %e, "a feed's baseline was delivered but cannot be recorded; it runs again");
            }
            Ok(()) => {
                self.baseline_served(job.feed.name, &sinks);
                tracing::info!(tenant = %self.args.spec.id, feed = %job.feed.name, sinks = ?sinks, events = job.events, pages = job.pages, "baseline delivered");
            }
        }
        if let Some(p) = self.plan.as_mut() {
            p.yielded = true;
        }
        self.step_done(myself, None);
    }

    /// The lower bound of `feed`'s first window: `connector.initial_lookback` before now, or
    /// none (everything Wiz keeps).
    fn first_window_after(&self, feed: FeedName) -> Option<SystemTime> {
        let (_, lookback) = self
            .args
            .spec
            .initial_lookback
            .iter()
            .find(|(f, _)| *f == feed)?;
        SystemTime::now().checked_sub(lookback.0)
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
        let last = match job.advance(page.has_next_page, page.end_cursor.as_deref()) {
            Ok(last) => last,
            Err(e) => return self.feed_finish(myself, Err(e)).await,
        };
        let name = job.feed.name;
        // A node past the size or depth limit is not decoded: it is reported and skipped.
        let decoded: Vec<_> = page
            .checked_nodes()
            .map(|(n, unreadable)| match unreadable {
                Some(e) => (n, Err(e)),
                None => (n, decode(name, n)),
            })
            .collect();
        // The item states this page knows, and the feed's in-flight marks, for a `States` feed
        // (two reads; marks are few: only pages a crash cut between delivery and commit).
        let (known, marks) = if job.feed.rule == ChangeRule::States {
            let ids: Vec<&str> = decoded
                .iter()
                .filter_map(|(_, d)| d.as_ref().ok().map(|i| &*i.id.0))
                .collect();
            let read = self.args.store.known(&job.key, &ids).and_then(|k| {
                let marks = self.args.store.in_flight(&job.key)?;
                Ok((k, marks.into_iter().collect::<HashMap<_, _>>()))
            });
            match read {
                Ok(r) => r,
                Err(e) => {
                    let e = WizError::BadResponse(format!("state store: {e}"));
                    return self.feed_finish(myself, Err(e)).await;
                }
            }
        } else {
            (Vec::new(), HashMap::new())
        };
        let normalizer = self.feed_normalizer.get_or_insert_with(|| {
            Box::new(FeedNormalizer::new(
                &self.args.spec.id,
                self.args.spec.console_url.as_str(),
            ))
        });
        let mut lines = std::mem::take(&mut self.buf);
        lines.reset(self.args.formats);
        let overlap = self.args.spec.incremental_overlap.0;
        if job.baseline.is_some() {
            let built = job.build_baseline_page(&decoded, known, normalizer, lines);
            return self.feed_hand_over(myself, built, None, last).await;
        }
        let mut built = job.build_page(&decoded, known, &marks, overlap, normalizer, lines);
        let position = job.position(last, overlap);
        let (key, observed_at) = (job.key.clone(), job.observed_at.clone());
        // Each node that cannot be read is set aside as one quarantine event; the rest of the
        // page is delivered as usual.
        let refused: Vec<&NodeError> = decoded
            .iter()
            .filter_map(|(_, d)| d.as_ref().err())
            .collect();
        match self.quarantine(&key, name, &refused, &observed_at, &mut built.lines) {
            Ok(q) => built.add_quarantined(name, q),
            Err(e) => {
                let e = WizError::BadResponse(format!("state store: {e}"));
                return self.feed_finish(myself, Err(e)).await;
            }
        }
        self.feed_hand_over(myself, built, Some(position), last)
            .await
    }

    /// Gives a built page to the sink with what its ack commits (its item states, the window's
    /// position); a page without events is committed at once.
    async fn feed_hand_over(
        &mut self,
        myself: &ActorRef<TenantMsg>,
        built: BuiltPage,
        position: Option<Checkpoint>,
        last: bool,
    ) {
        let Some(job) = self.feed_job.as_ref() else {
            return;
        };
        if built.events == 0 {
            self.buf = built.lines;
            let commit = Commit {
                remember: built.remember,
                settle: built.settle,
                checkpoint: position,
            };
            let key = job.key.clone();
            if !commit.is_empty() {
                if let Err(e) = self
                    .write_to(&key, crate::state::Write::Commit(commit))
                    .await
                {
                    return self.feed_store_failed(myself, e).await;
                }
            }
            return self.feed_page_done(myself, last).await;
        }
        if !built.remember.is_empty() {
            // The new states are marked in flight before a consumer can see them: if the
            // process dies before the commit, the next sight of each item knows what a consumer
            // may hold (see `build_page`).
            let key = job.key.clone();
            let marks = crate::state::Write::Mark(built.remember.clone());
            if let Err(e) = self.write_to(&key, marks).await {
                return self.feed_store_failed(myself, e).await;
            }
        }
        let Some(job) = self.feed_job.as_ref() else {
            return;
        };
        self.pending = Some(Box::new(Pending {
            batch: self.batch(
                job.feed.name.as_str(),
                built.lines,
                built.events,
                job.baseline.clone(),
            ),
            ledger: Ledger {
                remember: built.remember,
                settle: built.settle,
                checkpoint: position,
                kinds: built.kinds,
                last,
                ..Default::default()
            },
            attempts: 0,
        }));
        self.try_deliver(myself).await;
    }

    pub(super) async fn feed_page_done(&mut self, myself: &ActorRef<TenantMsg>, last: bool) {
        let step_done = self
            .feed_job
            .as_ref()
            .is_some_and(|j| j.step_pages >= STEP_PAGES);
        let baseline = self.feed_job.as_ref().is_some_and(|j| j.baseline.is_some());
        if last && baseline {
            self.feed_baseline_done(myself).await
        } else if last {
            self.feed_finish(myself, Ok(())).await
        } else if step_done && baseline {
            self.feed_baseline_yield(myself).await
        } else if step_done {
            // The window's position is committed: the next poll continues it.
            self.feed_yield(myself).await
        } else {
            let _ = myself.send_message(TenantMsg::NextPage);
        }
    }

    /// Takes the running feed job off the actor: its sweep slot goes back, and hints that waited
    /// for it are taken up.
    pub(super) fn end_feed_job(&mut self, myself: &ActorRef<TenantMsg>) -> Option<Box<FeedJob>> {
        let job = self.feed_job.take()?;
        self.pending = None;
        self.slot.release();
        if self.args.hints.pending() {
            let _ = myself.send_message(TenantMsg::Hints);
        }
        Some(job)
    }

    /// Ends this step of a long window; a new poll starts as soon as this one ends.
    pub(super) async fn feed_yield(&mut self, myself: &ActorRef<TenantMsg>) {
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

    /// A long baseline ends this step; where it stands is kept in memory and the next poll
    /// (started at once) goes on from there.
    async fn feed_baseline_yield(&mut self, myself: &ActorRef<TenantMsg>) {
        let Some(job) = self.end_feed_job(myself) else {
            return;
        };
        if let Some(sinks) = job.baseline.clone() {
            self.feed_baseline_stash = Some(Box::new(BaselineStash {
                feed: job.feed.name,
                sinks,
                window: job.window.clone(),
                cursor: job.cursor.clone(),
                pages: job.pages,
            }));
        }
        if let Some(p) = self.plan.as_mut() {
            p.yielded = true;
        }
        self.step_done(myself, None);
    }

    /// The sink took a page of the running window: its item states and the window's position
    /// are committed, then the job goes on (or ends with the window, or yields).
    pub(super) async fn feed_page_acked(&mut self, myself: &ActorRef<TenantMsg>, pending: Pending) {
        let Some(job) = self.feed_job.as_mut() else {
            return;
        };
        job.events += pending.batch.events as u64;
        let key = job.key.clone();
        let commit = Commit {
            remember: pending.ledger.remember,
            settle: pending.ledger.settle,
            checkpoint: pending.ledger.checkpoint,
        };
        if !commit.is_empty() {
            if let Err(e) = self
                .write_to(&key, crate::state::Write::Commit(commit))
                .await
            {
                return self.feed_store_failed(myself, e).await;
            }
        }
        if let Ok(b) = Arc::try_unwrap(pending.batch) {
            self.buf.native = b.lines;
        }
        self.feed_page_done(myself, pending.ledger.last).await;
    }

    /// A state write of the feed failed: fenced (another replica owns the tenant now), the
    /// tenant stops here; otherwise the feed fails this time and its window is tried again.
    pub(super) async fn feed_store_failed(
        &mut self,
        myself: &ActorRef<TenantMsg>,
        (kind, e): (&str, String),
    ) {
        if kind == super::FENCED {
            self.end_feed_job(myself);
            return self.stop_fenced(myself, &e);
        }
        let e = WizError::BadResponse(format!("state store: {e}"));
        self.feed_finish(myself, Err(e)).await
    }

    /// Ends the feed job: its health, its retry gate, and the plan's next step.
    pub(super) async fn feed_finish(
        &mut self,
        myself: &ActorRef<TenantMsg>,
        result: Result<(), WizError>,
    ) {
        let Some(job) = self.end_feed_job(myself) else {
            return;
        };
        if matches!(result, Err(WizError::Stopping)) {
            return;
        }
        let name = job.feed.name;
        let now = SystemTime::now();
        if let (Some(_), Err(e)) = (&job.baseline, &result) {
            // The baseline failed: reported; the feed's window runs at the next poll without
            // it, and the baseline is tried again at the poll after.
            tracing::error!(tenant = %self.args.spec.id, feed = %name, error = %e, "the feed's baseline failed; it is tried again");
            let error = LastError {
                message: format!("feed {name}: baseline: {e}"),
                at: now,
            };
            self.args.health.update(self.id(), |h| {
                h.feed(name.as_str()).last_error = Some(error.clone());
                h.last_error = Some(error);
            });
            self.feed_baseline_skip.insert(name);
            if let Some(p) = self.plan.as_mut() {
                p.yielded = true;
            }
            return self.step_done(myself, None);
        }
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
                    f.first_window_after = None;
                });
            }
            Err(e) => self.feed_failed(&job, e, now).await,
        }
        self.step_done(myself, None);
    }

    /// A feed's window failed: a resumed window that fetched nothing starts over next time, the
    /// feed sits out polls (longer when Wiz refused it), and its health and the tenant's last
    /// error say why.
    async fn feed_failed(&mut self, job: &FeedJob, e: WizError, now: SystemTime) {
        let name = job.feed.name;
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
        let failures = retry.failures;
        let wait = self.feed_sits_out(failures, denied);
        if let Some(r) = self.feed_retry.get_mut(&name) {
            r.not_before = Some(Instant::now() + wait);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const BEFORE: &str = "2027-01-15T08:00:00Z";

    fn job(feed: FeedName) -> FeedJob {
        FeedJob {
            feed: feed.feed().unwrap(),
            key: format!("t:{}", feed.as_str()),
            checkpoint: Checkpoint::default(),
            window: Window {
                after: Some("2027-01-15T07:00:00Z".into()),
                before: BEFORE.into(),
            },
            cursor: None,
            pages: 0,
            step_pages: 0,
            resumed: false,
            cursors: HashSet::new(),
            started_unix: 1_800_000_000,
            started: Instant::now(),
            events: 0,
            observed_at: "2027-01-15T08:00:05Z".into(),
            recent: Vec::new(),
            recent_ids: HashSet::new(),
            span: tracing::Span::none(),
            baseline: None,
        }
    }

    fn build(j: &mut FeedJob, nodes: &[String], known: Vec<Option<Known>>) -> BuiltPage {
        let decoded: Vec<_> = nodes
            .iter()
            .map(|n| (n.as_str(), decode(j.feed.name, n)))
            .collect();
        let mut normalizer = FeedNormalizer::new("t", "https://app.wiz.io");
        j.build_page(
            &decoded,
            known,
            &HashMap::new(),
            Duration::from_secs(300),
            &mut normalizer,
            Lines::default(),
        )
    }

    #[test]
    fn a_cursor_that_is_missing_or_comes_back_stops_the_window() {
        let mut j = job(FeedName::Audit);
        assert!(!j.advance(true, Some("c1")).unwrap());
        assert_eq!(j.cursor.as_deref(), Some("c1"));
        assert!(matches!(
            j.advance(true, Some("c1")),
            Err(WizError::CursorRepeated { page: 2 })
        ));
        assert!(matches!(
            j.advance(true, None),
            Err(WizError::CursorMissing { page: 3 })
        ));
        assert!(j.advance(false, None).unwrap());
        assert_eq!((j.pages, j.step_pages), (4, 4));
    }

    #[test]
    fn a_once_feed_delivers_each_item_once_and_keeps_the_ids_of_its_overlap() {
        let mut j = job(FeedName::Detections);
        j.recent_ids.insert("d-seen".into());
        let node = |id: &str, at: &str| {
            format!(
                r#"{{"id":"{id}","type":"GENERATED_THREAT","severity":"HIGH","createdAt":"{at}"}}"#
            )
        };
        let nodes = [
            node("d-seen", "2027-01-15T07:58:00Z"),
            node("d-early", "2027-01-15T07:10:00Z"),
            node("d-late", "2027-01-15T07:58:00Z"),
        ];
        let page = build(&mut j, &nodes, Vec::new());
        assert_eq!(page.events, 2);
        assert_eq!(page.kinds, vec![(EventKind::DetectionCreated, 2)]);
        assert!(page.remember.is_empty());
        let text = String::from_utf8(page.lines.native).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(
            text.contains("\"d-early\"") && text.contains("\"d-late\""),
            "{text}"
        );
        assert!(!text.contains("\"d-seen\""));
        // Only the item within the window's last 5 minutes is kept for the next window.
        let recent: Vec<&str> = j.recent.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(recent, ["d-late"]);
        let done = j.position(true, Duration::from_secs(300)).feed.unwrap();
        assert_eq!(done.done_until.as_deref(), Some(BEFORE));
        assert!(done.running.is_none());
        assert_eq!(done.recent.len(), 1);
    }

    #[test]
    fn a_state_delivered_but_never_committed_is_not_mistaken_for_the_recorded_one() {
        let node = |status: &str, resolved: &str| {
            format!(
                r#"{{"id":"v1","name":"CVE-2026-1","CVSSSeverity":"HIGH","score":7.5,"status":"{status}","fixedVersion":"1.1","resolvedAt":{resolved},"lastDetectedAt":"2027-01-15T07:30:00Z"}}"#
            )
        };
        let open = node("OPEN", "null");
        let resolved = node("RESOLVED", "\"2027-01-15T07:40:00Z\"");
        let state = |n: &str, status: &str| {
            let item = decode(FeedName::Vulnerabilities, n).unwrap();
            Known {
                fingerprint: item.fingerprint(),
                status: status.into(),
                severity: Some("HIGH".into()),
                silent: false,
            }
        };
        let build_with = |marks: &HashMap<String, Known>| {
            let mut j = job(FeedName::Vulnerabilities);
            let decoded = vec![(open.as_str(), decode(FeedName::Vulnerabilities, &open))];
            let mut normalizer = FeedNormalizer::new("t", "https://app.wiz.io");
            j.build_page(
                &decoded,
                vec![Some(state(&open, "OPEN"))],
                marks,
                Duration::from_secs(300),
                &mut normalizer,
                Lines::default(),
            )
        };
        // Recorded open, found open, nothing in flight: no news.
        let quiet = build_with(&HashMap::new());
        assert_eq!(quiet.events, 0);
        assert!(quiet.settle.is_empty());
        // Recorded open, but `resolved` went to the sink and the process died before the commit;
        // found open again: the consumer may think it resolved, so it is reported reopened.
        let marks = HashMap::from([("v1".to_string(), state(&resolved, "RESOLVED"))]);
        let page = build_with(&marks);
        assert_eq!(page.kinds, vec![(EventKind::VulnerabilityReopened, 1)]);
        assert_eq!(page.remember[0].1.status, "OPEN");
        assert_eq!(page.settle, ["v1"]);
        // A mark of the state it is in now is stale (it was delivered and recorded): settled,
        // nothing sent.
        let marks = HashMap::from([("v1".to_string(), state(&open, "OPEN"))]);
        let stale = build_with(&marks);
        assert_eq!(stale.events, 0);
        assert_eq!(stale.settle, ["v1"]);
    }

    #[test]
    fn a_states_feed_delivers_changes_only_and_a_running_window_keeps_its_cursor() {
        let mut j = job(FeedName::Vulnerabilities);
        let node = |id: &str, status: &str| {
            format!(
                r#"{{"id":"{id}","name":"CVE-2026-1","CVSSSeverity":"HIGH","score":7.5,"status":"{status}","firstDetectedAt":"2027-01-01T00:00:00Z","lastDetectedAt":"2027-01-15T07:30:00Z"}}"#
            )
        };
        let nodes = [node("v1", "OPEN"), node("v2", "OPEN")];
        // v2 is known in the state it has now.
        let v2 = decode(FeedName::Vulnerabilities, &nodes[1]).unwrap();
        let known = vec![
            None,
            Some(Known {
                fingerprint: v2.fingerprint(),
                status: "OPEN".into(),
                severity: Some("HIGH".into()),
                silent: false,
            }),
        ];
        let page = build(&mut j, &nodes, known);
        assert_eq!(page.events, 1);
        assert_eq!(page.kinds, vec![(EventKind::VulnerabilityOpened, 1)]);
        assert_eq!(page.remember.len(), 1);
        assert_eq!(page.remember[0].0, "v1");
        j.advance(true, Some("c9")).unwrap();
        let running = j
            .position(false, Duration::from_secs(300))
            .feed
            .unwrap()
            .running
            .unwrap();
        assert_eq!(running.cursor.as_deref(), Some("c9"));
        assert_eq!(running.pages, 1);
        assert_eq!(running.window.before, BEFORE);
    }
}
