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
    /// Recorded without an event: the issue has only been seen in statuses that are neither
    /// watched nor closed, so no consumer has heard of it. Its first watched status is then an
    /// `issue.opened`, and it is never reported vanished.
    pub silent: bool,
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
///
/// A silently recorded issue (see [`Known::silent`]) is treated as unknown, except that staying
/// in an unwatched status changes nothing a consumer knows of.
pub fn change(old: Option<&Known>, status: &str, fingerprint: &[u8; 16], watched: bool) -> Change {
    let first_sight = || {
        if watched {
            Change::Emit(EventKind::Opened)
        } else if closed(status) {
            Change::Emit(EventKind::for_first_sight(status))
        } else {
            Change::Remember
        }
    };
    match old {
        None => first_sight(),
        Some(k) if k.silent => match first_sight() {
            Change::Remember if &k.fingerprint == fingerprint => Change::Unchanged,
            c => c,
        },
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
            silent: false,
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
        // Seen only IN_PROGRESS (unwatched) so far: nobody heard of it. Its changes there stay
        // silent; reaching a watched status opens it; closing reports the closure.
        let silent = Known {
            silent: true,
            ..k(7, "IN_PROGRESS")
        };
        assert_eq!(
            change(Some(&silent), "IN_PROGRESS", &fp(7), false),
            Change::Unchanged
        );
        assert_eq!(
            change(Some(&silent), "IN_PROGRESS", &fp(8), false),
            Change::Remember
        );
        assert_eq!(
            change(Some(&silent), "OPEN", &fp(9), true),
            Change::Emit(EventKind::Opened)
        );
        // Watched now (the watched statuses changed), in the very state it was recorded in.
        assert_eq!(
            change(Some(&silent), "IN_PROGRESS", &fp(7), true),
            Change::Emit(EventKind::Opened)
        );
        assert_eq!(
            change(Some(&silent), "REJECTED", &fp(9), false),
            Change::Emit(EventKind::Rejected)
        );
        // An issue a consumer did hear of that moves to an unwatched status is an update.
        assert_eq!(
            change(Some(&k(1, "OPEN")), "IN_PROGRESS", &fp(2), false),
            Change::Emit(EventKind::Updated)
        );
    }
}
