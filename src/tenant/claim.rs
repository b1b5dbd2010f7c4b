//! Cluster mode: taking a tenant over before its first poll. Each of the tenant's state keys (the
//! tenant's, then each feed's) is claimed in order; while another replica still holds one, the
//! claim is tried again shortly, and after `claim_patience` it is taken anyway (fencing still
//! protects the holder's writes).

use std::time::{Duration, SystemTime};

use ractor::ActorRef;

use super::{TenantActorState, TenantMsg};
use crate::health::LastError;
use crate::state::ClaimResult;

/// How often a claim is tried again while another replica still holds the tenant.
const CLAIM_RETRY: Duration = Duration::from_millis(250);

impl TenantActorState {
    /// Cluster mode: tries to take the tenant over; retries shortly while another replica
    /// holds it. Once claimed, the poll timer starts.
    pub(super) async fn claim(&mut self, myself: &ActorRef<TenantMsg>) {
        if self.claimed {
            return;
        }
        let force = self.claiming_since.elapsed() >= self.args.claim_patience;
        let id = self.args.spec.id.clone();
        // One claim per state key (the tenant's, then each feed's), in order; a key already
        // claimed is not claimed again when a later one has to wait.
        let keys = crate::feeds::state_keys(&id, &self.args.spec.feeds);
        let mut result = Ok(ClaimResult::Claimed { moved: false });
        let mut moved_any = false;
        while self.keys_claimed < keys.len() {
            result = self.args.store.claim(&keys[self.keys_claimed], force).await;
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
                tracing::info!(tenant = %id, state_moved = moved, waited_ms = self.claiming_since.elapsed().as_millis() as u64, "tenant taken over by this replica");
                let first = self.args.first_poll_in;
                self.arm_timer(myself, first);
                if self.args.hints.pending() {
                    let _ = myself.send_message(TenantMsg::Hints);
                }
            }
            Ok(ClaimResult::Wait { holder }) => {
                tracing::debug!(tenant = %id, holder = %holder, "waiting for the tenant's previous owner to hand it over");
                myself.send_after(CLAIM_RETRY, || TenantMsg::Claim);
            }
            Err(e) => {
                let message = format!("cannot take the tenant over: {e}");
                tracing::warn!(tenant = %id, error = %message, "claim failed; retrying");
                let at = SystemTime::now();
                self.args.health.update(&id, |h| {
                    h.last_error = Some(LastError { message, at });
                });
                myself.send_after(Duration::from_secs(1), || TenantMsg::Claim);
            }
        }
    }
}
