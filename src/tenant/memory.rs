//! What a tenant remembers about its issues between polls: each known issue's fingerprint and
//! status, so an unchanged issue is not emitted again and a change gets the right kind. Kept by
//! the supervisor across restarts of the tenant's actor.

use std::collections::HashMap;

use crate::event::EventKind;

/// The last delivered state of one issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub fingerprint: [u8; 16],
    pub status: String,
}

/// Known issues of one tenant, by issue id.
#[derive(Debug, Default)]
pub struct TenantMemory {
    issues: HashMap<String, Known>,
}

fn closed(status: &str) -> bool {
    matches!(status, "RESOLVED" | "REJECTED")
}

impl TenantMemory {
    /// The event kind for an issue now in `status` with `fingerprint`, or `None` when nothing
    /// changed since it was last delivered.
    pub fn change(
        &self,
        issue_id: &str,
        status: &str,
        fingerprint: &[u8; 16],
    ) -> Option<EventKind> {
        match self.issues.get(issue_id) {
            None => Some(EventKind::for_first_sight(status)),
            Some(k) if &k.fingerprint == fingerprint => None,
            Some(k) => Some(match status {
                "RESOLVED" if k.status != "RESOLVED" => EventKind::Resolved,
                "REJECTED" if k.status != "REJECTED" => EventKind::Rejected,
                s if closed(&k.status) && !closed(s) => EventKind::Reopened,
                _ => EventKind::Updated,
            }),
        }
    }

    /// Records a delivered state.
    pub fn remember(&mut self, issue_id: String, known: Known) {
        self.issues.insert(issue_id, known);
    }

    pub fn len(&self) -> usize {
        self.issues.len()
    }

    pub fn is_empty(&self) -> bool {
        self.issues.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_transitions() {
        let mut m = TenantMemory::default();
        let fp = |b| [b; 16];
        assert_eq!(m.change("a", "OPEN", &fp(1)), Some(EventKind::Opened));
        m.remember(
            "a".into(),
            Known {
                fingerprint: fp(1),
                status: "OPEN".into(),
            },
        );
        assert_eq!(m.change("a", "OPEN", &fp(1)), None);
        assert_eq!(m.change("a", "OPEN", &fp(2)), Some(EventKind::Updated));
        assert_eq!(m.change("a", "RESOLVED", &fp(3)), Some(EventKind::Resolved));
        assert_eq!(m.change("a", "REJECTED", &fp(3)), Some(EventKind::Rejected));
        m.remember(
            "a".into(),
            Known {
                fingerprint: fp(3),
                status: "RESOLVED".into(),
            },
        );
        assert_eq!(m.change("a", "OPEN", &fp(4)), Some(EventKind::Reopened));
        assert_eq!(
            m.change("a", "IN_PROGRESS", &fp(4)),
            Some(EventKind::Reopened)
        );
        assert_eq!(m.change("b", "RESOLVED", &fp(1)), Some(EventKind::Resolved));
    }
}
