//! Tenant health: an explicit state machine per tenant, published by the tenant actor (and by the
//! supervisor for restarts and parking) into a shared map that readers never block on a busy
//! actor to read.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use dashmap::DashMap;
use serde::{Serialize, Serializer};

/// Where a tenant is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantState {
    /// Spawned; the first poll has not started yet.
    Starting,
    /// A sweep is running.
    Polling,
    /// The last sweep succeeded; waiting for the next poll.
    Idle,
    /// The last sweep failed, or the actor crashed; the next attempt is scheduled.
    Backoff,
    /// Crashed too often; parked until a long cool-down ends.
    Failed,
    /// Stopped on purpose (shutdown, removal).
    Stopped,
}

impl TenantState {
    pub const ALL: [TenantState; 6] = [
        TenantState::Starting,
        TenantState::Polling,
        TenantState::Idle,
        TenantState::Backoff,
        TenantState::Failed,
        TenantState::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TenantState::Starting => "starting",
            TenantState::Polling => "polling",
            TenantState::Idle => "idle",
            TenantState::Backoff => "backoff",
            TenantState::Failed => "failed",
            TenantState::Stopped => "stopped",
        }
    }
}

/// An error and when it happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LastError {
    pub message: String,
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
}

/// One tenant's health (CONTRACT.md's `/tenants/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantHealth {
    pub id: String,
    /// The replica that owns (polls) the tenant: this process's replica id (the host name
    /// without cluster mode).
    #[serde(serialize_with = "shared_str")]
    pub owner: Arc<str>,
    pub state: TenantState,
    #[serde(serialize_with = "opt_rfc3339")]
    pub last_poll_at: Option<SystemTime>,
    #[serde(serialize_with = "opt_rfc3339")]
    pub last_success_at: Option<SystemTime>,
    pub last_error: Option<LastError>,
    /// Events delivered by the last completed poll.
    pub events_added: u64,
    /// Events delivered since the process started.
    pub events_total: u64,
    /// Times the tenant's actor was restarted after a crash.
    pub restarts: u64,
    #[serde(serialize_with = "opt_rfc3339")]
    pub next_poll_at: Option<SystemTime>,
    /// While the tenant waits out a retry inside a sweep (`state` is then `backoff` and
    /// `last_error` says why): when the next attempt is due.
    #[serde(serialize_with = "opt_rfc3339")]
    pub next_attempt_at: Option<SystemTime>,
    /// Polls completed since the process started (successful or not).
    pub polls: u64,
    /// `full` or `incremental`: what the last poll was (a tenant whose full sweep fits in
    /// `full_sweep_max_pages` pages sweeps fully every time).
    pub last_poll_mode: Option<&'static str>,
    /// GraphQL requests the last poll sent (retries included).
    pub last_poll_requests: Option<u64>,
    /// How late the last scheduled poll started, in milliseconds (waiting for a sweep slot
    /// included): a fleet that outgrows `max_concurrent_sweeps` shows here first.
    pub last_poll_lag_ms: Option<u64>,
    /// Freshness: how old the newest change (`updatedAt` / `statusChangedAt`) among the last
    /// delivered events was when the sinks took it, in milliseconds.
    pub last_change_age_ms: Option<u64>,
    /// The time from a webhook hint's arrival to the sinks' ack of the event it led to, for the
    /// last page that held such events (the slowest of them), in milliseconds.
    pub last_hint_to_event_ms: Option<u64>,
    /// The sink that refused the tenant's page in flight (the tenant holds the page and resends
    /// it); `None` once a page got through.
    pub held_by_sink: Option<String>,
    /// Cluster mode: the replica this tenant waits for to hand it over (its run wrote the
    /// tenant's state last and is alive, and has not released it); `None` once taken over.
    pub waiting_for: Option<String>,
    /// Issue ids webhook hints named that were looked up (since the process started).
    pub hints_looked_up: u64,
    /// Times the hint queue overflowed and a full sweep replaced the lookups.
    pub hint_overflows: u64,
    /// Nodes of this tenant's pages that could not be read and were set aside as quarantine
    /// events (see [`crate::event::unreadable`]); not shown while there are none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<UnreadableHealth>,
    /// Per feed, for a tenant that collects more than Issues (empty, and not shown, for an
    /// Issues-only tenant: its health is the fields above).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub feeds: Vec<FeedHealth>,
}

/// The quarantine of a tenant's unreadable nodes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnreadableHealth {
    /// Quarantine events made since the process started (a node seen again unchanged makes
    /// none).
    pub quarantined: u64,
    /// The latest one.
    pub last: UnreadableNode,
}

/// One quarantined node, as health shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnreadableNode {
    pub feed: &'static str,
    /// The item's id, when one could be read.
    pub item_id: Option<String>,
    pub reason: String,
    pub bytes: usize,
    pub sha256: String,
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
}

/// Where a feed of a tenant is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedState {
    /// Not run yet.
    Starting,
    /// Its window is being swept.
    Polling,
    /// Its last run succeeded.
    Idle,
    /// Its last run failed; it sits out polls until `next_try_at`.
    Backoff,
    /// Wiz refused the service account this feed (a permission is missing); tried again at
    /// `next_try_at`. The tenant's other feeds are not affected.
    Denied,
}

/// One feed's health (`feeds[]` of a tenant).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedHealth {
    pub feed: &'static str,
    pub state: FeedState,
    #[serde(serialize_with = "opt_rfc3339")]
    pub last_success_at: Option<SystemTime>,
    pub last_error: Option<LastError>,
    /// Events delivered by the feed's last run.
    pub events_added: u64,
    /// Events delivered since the process started.
    pub events_total: u64,
    /// After a failure: the first poll that runs the feed again.
    #[serde(serialize_with = "opt_rfc3339")]
    pub next_try_at: Option<SystemTime>,
    /// While the feed's first window runs with `connector.initial_lookback`: where it starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_window_after: Option<String>,
}

impl FeedHealth {
    pub fn new(feed: &'static str) -> Self {
        FeedHealth {
            feed,
            state: FeedState::Starting,
            last_success_at: None,
            last_error: None,
            events_added: 0,
            events_total: 0,
            first_window_after: None,
            next_try_at: None,
        }
    }
}

impl TenantHealth {
    /// The health of `feed`, created when missing.
    pub fn feed(&mut self, feed: &'static str) -> &mut FeedHealth {
        match self.feeds.iter().position(|f| f.feed == feed) {
            Some(i) => &mut self.feeds[i],
            None => {
                self.feeds.push(FeedHealth::new(feed));
                self.feeds.last_mut().expect("just pushed")
            }
        }
    }
}

impl TenantHealth {
    pub fn new(id: &str, owner: Arc<str>) -> Self {
        TenantHealth {
            id: id.to_string(),
            owner,
            state: TenantState::Starting,
            last_poll_at: None,
            last_success_at: None,
            last_error: None,
            events_added: 0,
            events_total: 0,
            restarts: 0,
            next_poll_at: None,
            next_attempt_at: None,
            polls: 0,
            last_poll_mode: None,
            last_poll_requests: None,
            last_poll_lag_ms: None,
            last_change_age_ms: None,
            last_hint_to_event_ms: None,
            held_by_sink: None,
            waiting_for: None,
            unreadable: None,
            hints_looked_up: 0,
            hint_overflows: 0,
            feeds: Vec::new(),
        }
    }
}

/// A tenant whose scheduled poll is this late is shown as stale.
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

impl TenantHealth {
    /// Not failed or waiting, but its scheduled poll is overdue by more than [`STALE_AFTER`]
    /// (it waits for a sweep slot, or is stuck).
    pub fn is_stale(&self, now: SystemTime) -> bool {
        matches!(self.state, TenantState::Idle | TenantState::Starting)
            && self
                .next_poll_at
                .is_some_and(|t| now.duration_since(t).is_ok_and(|late| late > STALE_AFTER))
    }

    /// Worst first: failed, backoff, stale, starting, polling, idle, stopped.
    pub fn rank(&self, now: SystemTime) -> u8 {
        match self.state {
            TenantState::Failed => 0,
            TenantState::Backoff => 1,
            _ if self.is_stale(now) => 2,
            TenantState::Starting => 3,
            TenantState::Polling => 4,
            TenantState::Idle => 5,
            TenantState::Stopped => 6,
        }
    }
}

fn shared_str<S: Serializer>(v: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v)
}

fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

fn opt_rfc3339<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}

/// Every tenant's health, shared. Updates go through [`HealthMap::update`], which never holds a
/// guard beyond the closure.
#[derive(Debug, Clone)]
pub struct HealthMap {
    /// Records are boxed: a map's table grows by doubling, so its empty slots cost as much as
    /// full ones, and a record is a few hundred bytes while its box is a pointer (at 10,000
    /// tenants the table took about 800 bytes a tenant unboxed).
    map: Arc<DashMap<String, Box<TenantHealth>>>,
    /// This process's replica id, the `owner` of every tenant it runs.
    owner: Arc<str>,
    /// How many records are in each state (indexed as [`TenantState::ALL`]), kept by every
    /// change that goes through this map: counts by state cost nothing per tenant. Dashboards,
    /// the status page and the scale bench ask them of replicas with tens of thousands of
    /// tenants several times a second; a pass over the map for each was, in a failover at
    /// 100,000 tenants, several percent of the replicas' CPU (docs/benchmarks.md, session 19).
    by_state: Arc<[AtomicUsize; TenantState::ALL.len()]>,
}

// [`HealthMap`]'s counts are indexed by a state's discriminant: [`TenantState::ALL`] lists the
// states in their declaration order, which this holds at compile time.
const _: () = {
    let mut i = 0;
    while i < TenantState::ALL.len() {
        assert!(TenantState::ALL[i] as usize == i);
        i += 1;
    }
};

impl Default for HealthMap {
    fn default() -> Self {
        HealthMap::with_owner(&crate::config::host_name())
    }
}

impl HealthMap {
    pub fn with_owner(owner: &str) -> Self {
        HealthMap {
            map: Arc::default(),
            owner: Arc::from(owner),
            by_state: Arc::default(),
        }
    }

    fn counted(&self, s: TenantState) -> &AtomicUsize {
        &self.by_state[s as usize]
    }

    /// This process's replica id (the `owner` of its tenants).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Registers a tenant (or keeps its record when it is already there).
    pub fn ensure(&self, id: &str) {
        self.map.entry(id.to_string()).or_insert_with(|| {
            let h = TenantHealth::new(id, self.owner.clone());
            self.counted(h.state).fetch_add(1, Ordering::Relaxed);
            Box::new(h)
        });
    }

    /// Changes a tenant's record in place; does nothing for an unknown tenant.
    pub fn update(&self, id: &str, f: impl FnOnce(&mut TenantHealth)) {
        if let Some(mut h) = self.map.get_mut(id) {
            let before = h.state;
            f(&mut h);
            if h.state != before {
                // Under the record's guard: two changes of one record count in their order.
                self.counted(before).fetch_sub(1, Ordering::Relaxed);
                self.counted(h.state).fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<TenantHealth> {
        self.map.get(id).map(|h| TenantHealth::clone(&h))
    }

    pub fn remove(&self, id: &str) {
        if let Some((_, h)) = self.map.remove(id) {
            self.counted(h.state).fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// How many tenants are in any of `states`, from the kept counts (no pass over the map).
    /// A record changing state at that moment may be missed (it is never counted twice).
    pub fn count_in(&self, states: &[TenantState]) -> usize {
        TenantState::ALL
            .iter()
            .filter(|s| states.contains(s))
            .map(|s| self.counted(*s).load(Ordering::Relaxed))
            .sum()
    }

    /// How many tenants `keep` accepts; no record is copied (a count over a large fleet, asked
    /// often by dashboards, costs a pass over the map and nothing else).
    pub fn count(&self, keep: impl Fn(&TenantHealth) -> bool) -> usize {
        self.map.iter().filter(|h| keep(h.value())).count()
    }

    /// Every tenant, sorted by id.
    pub fn all(&self) -> Vec<TenantHealth> {
        let mut v: Vec<TenantHealth> = self.map.iter().map(|h| TenantHealth::clone(&h)).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// How many tenants are in each state.
    pub fn counts(&self) -> Vec<(TenantState, usize)> {
        TenantState::ALL
            .iter()
            .map(|s| (*s, self.counted(*s).load(Ordering::Relaxed)))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kept counts by state agree with a pass over the records through registrations,
    /// changes (of the state and of other fields), repeated registrations and removals, also
    /// when several threads change records at once.
    #[test]
    fn kept_counts_by_state_match_a_pass_over_the_records() {
        let m = HealthMap::with_owner("r1");
        let by_pass = |m: &HealthMap| -> Vec<(TenantState, usize)> {
            TenantState::ALL
                .iter()
                .map(|s| (*s, m.count(|h| h.state == *s)))
                .collect()
        };
        for i in 0..100 {
            m.ensure(&format!("t{i}"));
        }
        m.ensure("t0");
        assert_eq!(m.count_in(&[TenantState::Starting]), 100);
        std::thread::scope(|scope| {
            for k in 0..4 {
                let m = &m;
                scope.spawn(move || {
                    for round in 0..200 {
                        let i = (k * 31 + round * 7) % 100;
                        let s = TenantState::ALL[(k + round) % 6];
                        m.update(&format!("t{i}"), |h| {
                            h.state = s;
                            h.polls += 1;
                        });
                    }
                });
            }
        });
        assert_eq!(m.counts(), by_pass(&m));
        m.update("t5", |h| h.state = TenantState::Failed);
        m.update("t6", |h| h.state = TenantState::Failed);
        m.update("unknown", |h| h.state = TenantState::Failed);
        m.remove("t5");
        m.remove("t5");
        assert_eq!(m.counts(), by_pass(&m));
        assert_eq!(m.count_in(&TenantState::ALL), 99);
        assert_eq!(
            m.count_in(&[TenantState::Failed, TenantState::Failed]),
            m.count(|h| h.state == TenantState::Failed),
            "a state named twice is counted once"
        );
    }
}
