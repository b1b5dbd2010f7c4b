//! A page's unreadable nodes, quarantined (see [`crate::event::unreadable`]): each node not
//! quarantined before with the same bytes becomes one event on the page; every one is counted
//! and logged, and the newest shows in the tenant's health. Issues pages and feed pages share
//! it.

use std::collections::HashSet;
use std::time::SystemTime;

use super::TenantActorState;
use crate::change::Known;
use crate::event::unreadable;
use crate::feeds::FeedName;
use crate::format::Lines;
use crate::health::{UnreadableHealth, UnreadableNode};
use crate::metrics::Observation;
use crate::state::StateError;
use crate::wiz::page::NodeError;

impl TenantActorState {
    /// Writes into `lines` a quarantine event for each of `nodes` (the refused nodes of one page
    /// of `feed`, whose records live under the state key `key`) that has no record with its
    /// bytes; one read of the store. Returns the records the page's commit keeps, one per event
    /// written (ended), so the same nodes are not quarantined again.
    pub(super) fn quarantine(
        &self,
        key: &str,
        feed: FeedName,
        nodes: &[&NodeError],
        observed_at: &str,
        lines: &mut Lines,
    ) -> Result<Vec<(String, Known)>, StateError> {
        let mut out = Vec::new();
        if nodes.is_empty() {
            return Ok(out);
        }
        let ids: Vec<String> = nodes.iter().map(|n| unreadable::record_id(n)).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let recorded = self.args.store.known(key, &refs)?;
        let tenant = self.args.spec.id.as_str();
        let console = crate::json::console_json(self.args.spec.console_url.as_str());
        // A node twice on one page (the same bytes) is one event.
        let mut written = HashSet::new();
        let mut newest = None;
        for ((node, id), recorded) in nodes.iter().zip(ids).zip(recorded) {
            let new = unreadable::is_new(node, recorded.as_ref())
                && written.insert((id.clone(), node.node.sha256.clone()));
            self.args.observer.emit(
                tenant,
                Observation::NodeUnreadable {
                    feed: feed.as_str(),
                    id: node.node.id.as_deref(),
                    reason: &node.reason,
                    bytes: node.node.bytes,
                    quarantined: new,
                },
            );
            if !new {
                continue;
            }
            unreadable::write(tenant, &console, feed, node, observed_at, lines);
            lines.end_event();
            out.push((id, unreadable::record(node)));
            newest = Some(*node);
        }
        if let Some(node) = newest {
            let last = UnreadableNode {
                feed: feed.as_str(),
                item_id: node.node.id.clone(),
                reason: node.reason.clone(),
                bytes: node.node.bytes,
                sha256: node.node.sha256.clone(),
                at: SystemTime::now(),
            };
            let events = out.len() as u64;
            self.args
                .health
                .update(tenant, |h| match &mut h.unreadable {
                    Some(u) => {
                        u.quarantined += events;
                        u.last = last;
                    }
                    None => {
                        h.unreadable = Some(UnreadableHealth {
                            quarantined: events,
                            last,
                        })
                    }
                });
        }
        Ok(out)
    }
}
