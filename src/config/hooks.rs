//! `[hooks]`: the webhook receiver Wiz automation rules call with a hint (an issue id). The table
//! as users write it, its checks and its resolved settings live here, like `[cluster]`.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// `[hooks]` as written. Its presence starts the receiver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksSection {
    /// Address of the receiver, a listener of its own: Wiz must reach it from outside, while the
    /// admin API stays private. Terminate TLS in front of it (an ingress or reverse proxy).
    pub listen: String,
    /// Distinct issue ids one tenant may have waiting for lookup. Beyond it the queue is dropped
    /// and the tenant sweeps fully instead (counted), so a flood costs one sweep, not one lookup
    /// per hint.
    pub queue_limit: usize,
}

impl Default for HooksSection {
    fn default() -> Self {
        HooksSection {
            listen: "127.0.0.1:8687".to_string(),
            queue_limit: DEFAULT_HINT_QUEUE_LIMIT,
        }
    }
}

/// `hooks.queue_limit` by default (also the queue of write-back's lookups without `[hooks]`).
pub const DEFAULT_HINT_QUEUE_LIMIT: usize = 1000;

/// Largest accepted `hooks.queue_limit`.
const MAX_QUEUE_LIMIT: usize = 100_000;

/// Resolved `[hooks]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HooksSettings {
    pub listen: SocketAddr,
    pub queue_limit: usize,
}

/// Checks `[hooks]`; `report(key, message)` collects problems.
pub fn resolve_hooks(
    s: &HooksSection,
    mut report: impl FnMut(&str, String),
) -> Option<HooksSettings> {
    let listen = match s.listen.trim().parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            report(
                "hooks.listen",
                format!(
                    "{:?} is not an address such as \"0.0.0.0:8687\" (host:port)",
                    s.listen
                ),
            );
            None
        }
    };
    if !(1..=MAX_QUEUE_LIMIT).contains(&s.queue_limit) {
        report(
            "hooks.queue_limit",
            format!(
                "must be between 1 and {MAX_QUEUE_LIMIT}, got {}",
                s.queue_limit
            ),
        );
        return None;
    }
    Some(HooksSettings {
        listen: listen?,
        queue_limit: s.queue_limit,
    })
}
