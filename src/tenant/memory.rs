//! What a tenant knows about an issue between polls, and how a new observation compares with it.
//! The knowledge itself lives in the state store.

use crate::event::EventKind;

/// The last delivered (or silently recorded) state of one issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// Digest of the state last delivered (see [`crate::event::fingerprint`]); a new observation
    /// with another digest is a change.
    pub fingerprint: [u8; 16],
    /// The Wiz status last seen, or [`VANISHED`]: says which kind a change is.
    pub status: String,
    /// Wiz's severity last seen (e.g. `HIGH`), so the event for an issue that vanished from Wiz
    /// can still say how severe it was. `None` in records written before it was kept.
    pub severity: Option<String>,
}

/// The recorded status of an issue a full sweep no longer found and Wiz no longer returns by id.
/// It was reported as resolved; if it comes back it is reported as reopened.
pub const VANISHED: &str = "VANISHED";

/// What to do with an observed issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Deliver an event of this kind, then remember the state.
    Emit(EventKind),
    /// Remember the state without an event (first seen in a status that is neither watched nor
    /// closed).
    Remember,
    /// Nothing changed.
    Unchanged,
}

fn closed(status: &str) -> bool {
    matches!(status, "RESOLVED" | "REJECTED" | VANISHED)
}

/// Compares an observation (`status`, `fingerprint`) with what is known. `watched` says whether
/// `status` is one of the watched statuses.
///
/// An unknown issue first seen RESOLVED or REJECTED is reported as such: it may be one whose open
/// state was delivered just before a crash that prevented recording it, and a consumer must then
/// learn that it closed. (An issue created and closed between two polls is reported the same way.)
pub fn change(old: Option<&Known>, status: &str, fingerprint: &[u8; 16], watched: bool) -> Change {
    match old {
        None if watched => Change::Emit(EventKind::Opened),
        None if closed(status) => Change::Emit(EventKind::for_first_sight(status)),
        None => Change::Remember,
        Some(k) if &k.fingerprint == fingerprint => Change::Unchanged,
        Some(k) => Change::Emit(match status {
            "RESOLVED" if k.status != "RESOLVED" => EventKind::Resolved,
            "REJECTED" if k.status != "REJECTED" => EventKind::Rejected,
            s if closed(&k.status) && !closed(s) => EventKind::Reopened,
            _ => EventKind::Updated,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_transitions() {
        let k = |b: u8, s: &str| Known {
            fingerprint: [b; 16],
            status: s.into(),
            severity: None,
        };
        let fp = |b| [b; 16];
        assert_eq!(
            change(None, "OPEN", &fp(1), true),
            Change::Emit(EventKind::Opened)
        );
        assert_eq!(
            change(None, "RESOLVED", &fp(1), false),
            Change::Emit(EventKind::Resolved)
        );
        assert_eq!(
            change(None, "REJECTED", &fp(1), false),
            Change::Emit(EventKind::Rejected)
        );
        assert_eq!(change(None, "IN_PROGRESS", &fp(1), false), Change::Remember);
        let open = k(1, "OPEN");
        assert_eq!(change(Some(&open), "OPEN", &fp(1), true), Change::Unchanged);
        assert_eq!(
            change(Some(&open), "OPEN", &fp(2), true),
            Change::Emit(EventKind::Updated)
        );
        assert_eq!(
            change(Some(&open), "RESOLVED", &fp(3), false),
            Change::Emit(EventKind::Resolved)
        );
        assert_eq!(
            change(Some(&open), "REJECTED", &fp(3), false),
            Change::Emit(EventKind::Rejected)
        );
        assert_eq!(
            change(Some(&open), "IN_PROGRESS", &fp(3), false),
            Change::Emit(EventKind::Updated)
        );
        let resolved = k(3, "RESOLVED");
        assert_eq!(
            change(Some(&resolved), "OPEN", &fp(4), true),
            Change::Emit(EventKind::Reopened)
        );
        assert_eq!(
            change(Some(&resolved), "IN_PROGRESS", &fp(4), false),
            Change::Emit(EventKind::Reopened)
        );
        assert_eq!(
            change(Some(&resolved), "RESOLVED", &fp(5), false),
            Change::Emit(EventKind::Updated)
        );
        // An issue that vanished and comes back is reopened; back as RESOLVED, it is resolved
        // for real (with Wiz's own record this time).
        let vanished = k(6, VANISHED);
        assert_eq!(
            change(Some(&vanished), "OPEN", &fp(1), true),
            Change::Emit(EventKind::Reopened)
        );
        assert_eq!(
            change(Some(&vanished), "RESOLVED", &fp(1), false),
            Change::Emit(EventKind::Resolved)
        );
    }
}
