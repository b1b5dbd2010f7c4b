//! The membership lease: how long this replica may act as the owner of its tenants after its last
//! successful membership renewal. A tenant polls and hands pages to the sinks only while the
//! lease holds ([`Lease::held`]); after a lapse it first writes a fenced marker on its state
//! subject ([`Lease::epoch`] tells it a lapse happened) and goes on only if nobody took it over
//! meanwhile.
//!
//! **Timing budget.** A renewal sent at `s` that succeeds extends the lease to `s + lease`, on this
//! replica's monotonic clock. Another replica sees the new revision no earlier than `s` and
//! declares this one dead no earlier than `failover_after` of *observed* silence after that (see
//! [`super::membership`]), so it cannot take a tenant over before `s + failover_after`. With
//! `lease = failover_after - max(failover_after / 4, heartbeat)` the owner stops at least a
//! quarter of `failover_after` (and at least a heartbeat) before anyone may start: that margin
//! absorbs clock rate differences between hosts (NTP keeps them under 0.05 %; the margin allows
//! 25 %) and the time between the check and the sink taking the page (a local message). What the
//! margin cannot absorb is a stall of this process *between* the check and the hand-off longer than
//! the margin; fencing of the state then still refuses the stale owner's commit, and the page it
//! handed over is the one page that can be repeated (see docs/scale-out.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// The lease of one replica, shared by its heartbeat thread (which renews it) and its tenants
/// (which check it before polling and before every delivery).
#[derive(Debug)]
pub struct Lease {
    /// The origin of the stored instants (an `Instant` is not an integer).
    base: Instant,
    /// Nanoseconds after `base` until which the lease holds; 0: never held.
    until: AtomicU64,
    /// Bumped each time the lease is held again after a lapse (the first grant included): a
    /// tenant that last checked in an older epoch must re-assert its ownership first.
    epoch: AtomicU64,
    /// How long one renewal holds.
    duration: Duration,
}

/// What `/cluster` shows of the lease.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LeaseView {
    pub held: bool,
    /// Seconds the lease still holds (0 when it does not).
    pub remaining_seconds: f64,
    pub duration_seconds: f64,
    /// How many times the lease was granted, the first time included.
    pub epoch: u64,
}

impl Lease {
    pub fn new(duration: Duration) -> Lease {
        Lease {
            base: Instant::now(),
            until: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            duration,
        }
    }

    /// The lease a cluster of `heartbeat` and `failover_after` runs with (see the module docs).
    pub fn duration_for(heartbeat: Duration, failover_after: Duration) -> Duration {
        failover_after.saturating_sub((failover_after / 4).max(heartbeat))
    }

    fn nanos(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }

    /// A renewal sent at `sent` succeeded (called by the heartbeat alone).
    pub fn renewed(&self, sent: Instant) {
        let now = self.nanos(Instant::now());
        let until = self.nanos(sent + self.duration);
        if until <= now {
            // The renewal took longer than the lease: it proves nothing about now.
            return;
        }
        let old = self.until.load(Ordering::Acquire);
        if old <= now {
            // Never held, or lapsed: a new epoch.
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        self.until.store(until.max(old), Ordering::Release);
    }

    /// Gives the lease up at once (this replica knows it must not act as an owner).
    pub fn revoke(&self) {
        self.until.store(0, Ordering::Release);
    }

    /// True while this replica may act as the owner of its tenants.
    pub fn held(&self) -> bool {
        self.nanos(Instant::now()) < self.until.load(Ordering::Acquire)
    }

    /// The current epoch (see [`Lease::epoch`]'s field).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }

    pub fn view(&self) -> LeaseView {
        let now = self.nanos(Instant::now());
        let until = self.until.load(Ordering::Acquire);
        LeaseView {
            held: now < until,
            remaining_seconds: Duration::from_nanos(until.saturating_sub(now)).as_secs_f64(),
            duration_seconds: self.duration.as_secs_f64(),
            epoch: self.epoch(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_leaves_a_quarter_of_failover_or_a_heartbeat() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        assert_eq!(Lease::duration_for(s(2), s(10)), ms(7500));
        assert_eq!(Lease::duration_for(ms(250), s(2)), ms(1500));
        // failover_after at its minimum, three heartbeats: two heartbeats of lease.
        assert_eq!(Lease::duration_for(s(4), s(12)), s(8));
    }

    #[test]
    fn a_renewal_grants_and_a_lapse_starts_a_new_epoch() {
        let lease = Lease::new(Duration::from_millis(200));
        assert!(!lease.held());
        assert_eq!(lease.epoch(), 0);
        lease.renewed(Instant::now());
        assert!(lease.held());
        assert_eq!(lease.epoch(), 1);
        // Renewed while held: the same epoch.
        lease.renewed(Instant::now());
        assert_eq!(lease.epoch(), 1);
        // A renewal sent longer ago than the lease grants nothing.
        lease.revoke();
        lease.renewed(Instant::now() - Duration::from_secs(1));
        assert!(!lease.held());
        assert_eq!(lease.epoch(), 1);
        // Held again after the lapse: a new epoch.
        lease.renewed(Instant::now());
        assert!(lease.held());
        assert_eq!(lease.epoch(), 2);
        let v = lease.view();
        assert!(v.held && v.remaining_seconds > 0.0 && v.remaining_seconds <= 0.2);
    }
}
