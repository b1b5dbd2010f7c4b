//! Cluster mode: taking a tenant over before its first poll, and keeping it.
//!
//! - **Claim.** Each of the tenant's state keys (the tenant's, then each feed's) is claimed in
//!   order; while another replica still holds one, the claim is tried again shortly, and after
//!   `claim_patience` it is taken anyway (fencing still protects the holder's writes). A claim
//!   still queued for its turn or reading NATS when the supervisor stops the tenant is given up
//!   before it writes anything.
//! - **Lease gate.** Before each poll step and before each page goes to the sinks the tenant
//!   checks this replica's lease ([`crate::cluster::lease`]): while it does not hold, nothing is
//!   polled or delivered (the page waits); after a lapse the tenant first re-asserts its
//!   ownership with a fenced write, and stops if another replica took it over meanwhile.

use std::time::{Duration, Instant, SystemTime};

use ractor::ActorRef;

use super::{TenantActorState, TenantMsg};
use crate::health::LastError;
use crate::state::ClaimResult;

/// How often a claim is tried again while another replica still holds the tenant.
const CLAIM_RETRY: Duration = Duration::from_millis(250);

/// First and longest wait after a claim that failed (NATS unreachable or refusing writes).
const CLAIM_BACKOFF_FIRST: Duration = Duration::from_secs(1);
const CLAIM_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How long a poll or a page waits before checking a lease that did not hold again (plus up to
/// as much jitter, so a fleet does not wake at once).
const LEASE_WAIT: Duration = Duration::from_millis(500);

/// What the lease gate decided.
pub(super) enum Gate {
    /// Poll or deliver.
    Open,
    /// The lease does not hold (or ownership could not be re-asserted yet): wait.
    Closed(String),
    /// Another replica took the tenant over while the lease lapsed: stop it here.
    Fenced(String),
}

impl TenantActorState {
    /// Cluster mode: tries to take the tenant over; retries shortly while another replica
    /// holds it. Once claimed, the poll timer starts.
    pub(super) async fn claim(&mut self, myself: &ActorRef<TenantMsg>) {
        if self.claimed || self.args.stop.is_stopped() {
            return;
        }
        let since = *self.claiming_since.get_or_insert_with(Instant::now);
        let force = since.elapsed() >= self.args.claim_patience;
        let id = self.args.spec.id.clone();
        // One claim per state key (the tenant's, then each feed's), in order; a key already
        // claimed is not claimed again when a later one has to wait.
        let keys = crate::feeds::state_keys(&id, &self.args.spec.feeds);
        let mut result = Ok(ClaimResult::Claimed { moved: false });
        let mut moved_any = false;
        while self.keys_claimed < keys.len() {
            // Given up when the supervisor stops the tenant (placement moved it away, a reload
            // removed it) while the claim queues for its turn.
            result = self
                .args
                .store
                .claim_unless(&keys[self.keys_claimed], force, self.args.stop.stopped())
                .await;
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
                self.claim_failures = 0;
                self.args.health.update(&id, |h| h.waiting_for = None);
                self.lease_epoch = self
                    .args
                    .store
                    .replicated()
                    .map_or(0, |r| r.lease().epoch());
                tracing::info!(tenant = %id, state_moved = moved, waited_ms = since.elapsed().as_millis() as u64, "tenant taken over by this replica");
                // The first poll's spread was waited before the claim.
                self.arm_timer(myself, Duration::ZERO);
                if self.args.hints.pending() {
                    let _ = myself.send_message(TenantMsg::Hints);
                }
            }
            Ok(ClaimResult::GaveUp) => {
                tracing::debug!(tenant = %id, "claim given up: the tenant is being stopped");
            }
            Ok(ClaimResult::Wait { holder }) => {
                tracing::debug!(tenant = %id, holder = %holder, "waiting for the tenant's previous owner to hand it over");
                self.args.health.update(&id, |h| {
                    if h.waiting_for.as_deref() != Some(holder.as_str()) {
                        h.waiting_for = Some(holder);
                    }
                });
                myself.send_after(CLAIM_RETRY, || TenantMsg::Claim);
            }
            Err(e) => {
                // Backing off (1 s doubling to 30 s, jittered): when NATS refuses writes, a fleet
                // of waiting claims must not hammer it.
                self.claim_failures = self.claim_failures.saturating_add(1);
                let delay = CLAIM_BACKOFF_FIRST
                    .saturating_mul(1 << (self.claim_failures - 1).min(5))
                    .min(CLAIM_BACKOFF_MAX)
                    .mul_f64(rand::random_range(0.5..=1.0));
                let message = format!("cannot take the tenant over: {e}");
                tracing::warn!(tenant = %id, error = %message, retry_in_ms = delay.as_millis() as u64, "claim failed; retrying");
                let at = SystemTime::now();
                self.args.health.update(&id, |h| {
                    h.last_error = Some(LastError { message, at });
                });
                myself.send_after(delay, || TenantMsg::Claim);
            }
        }
    }
}

impl TenantActorState {
    /// May this tenant poll or deliver now (see the module docs)? Always open without cluster
    /// mode.
    pub(super) async fn lease_gate(&mut self) -> Gate {
        let Some(r) = self.args.store.replicated() else {
            return Gate::Open;
        };
        let lease = r.lease();
        if !lease.held() {
            return Gate::Closed(format!(
                "this replica's cluster lease ran out (no membership renewal within {} ms); polling and delivery wait until it is renewed",
                lease.duration().as_millis()
            ));
        }
        let epoch = lease.epoch();
        if epoch == self.lease_epoch {
            return Gate::Open;
        }
        match self.args.store.reassert(&self.args.spec.id).await {
            Ok(()) => {
                tracing::info!(tenant = %self.args.spec.id, "ownership re-asserted after the lease lapsed");
                self.lease_epoch = epoch;
                Gate::Open
            }
            Err(e) if e.fenced => Gate::Fenced(e.to_string()),
            Err(e) => Gate::Closed(format!(
                "cannot re-assert ownership after the lease lapsed: {e}"
            )),
        }
    }

    /// The gate was closed for `why`: shown in health, and `msg` is sent again after a short,
    /// jittered wait.
    pub(super) fn lease_wait(
        &self,
        myself: &ActorRef<TenantMsg>,
        why: String,
        msg: fn() -> TenantMsg,
    ) {
        let at = SystemTime::now();
        self.args.health.update(&self.args.spec.id, |h| {
            h.last_error = Some(LastError { message: why, at });
        });
        let wait = LEASE_WAIT + LEASE_WAIT.mul_f64(rand::random::<f64>());
        myself.send_after(wait, msg);
    }
}
