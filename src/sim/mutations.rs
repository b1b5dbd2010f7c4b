//! The simulator's write side: `updateIssue` and `createIssueNote` with Wiz's rules (WIZ_API.md
//! section 4): a reject needs one of the three reasons, only threat-detection issues resolve by
//! hand, notes are at most 1,400 characters, an unknown id is `NOT_FOUND`, and a service account
//! without write access gets a GraphQL "Unauthorized" error (HTTP 200).

use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::data::IssueSet;
use super::graphql::error_response;

/// Longest note Wiz takes (public integrations cut notes here to avoid errors).
pub const MAX_NOTE_CHARS: usize = 1400;
const REASONS: [&str; 3] = ["FALSE_POSITIVE", "EXCEPTION", "WONT_FIX"];
/// The reasons a threat-detection issue is resolved with by hand. Every public client sends one
/// with the resolve; the simulator requires it (an assumption: Wiz's own rule is unpublished).
const THREAT_REASONS: [&str; 5] = [
    "MALICIOUS_THREAT",
    "NOT_MALICIOUS_THREAT",
    "SECURITY_TEST_THREAT",
    "PLANNED_ACTION_THREAT",
    "INCONCLUSIVE_THREAT",
];
const STATUSES: [&str; 4] = ["OPEN", "IN_PROGRESS", "RESOLVED", "REJECTED"];

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Patch {
    status: Option<String>,
    resolution_reason: Option<String>,
    note: Option<String>,
    due_at: Option<String>,
}

/// True when the request is a mutation the simulator implements. `compact` is its query without
/// whitespace ([`super::feed_data::compact`]).
pub fn is_mutation(compact: &str) -> bool {
    compact.contains("updateIssue(") || compact.contains("createIssueNote(")
}

/// Applies the mutation of a request (its query without whitespace, `compact`, and its
/// `variables`) to `issues` as service account `author`; `can_write` is false for a read-only
/// account.
pub fn answer(
    compact: &str,
    variables: &serde_json::Value,
    issues: &mut IssueSet,
    author: &str,
    can_write: bool,
) -> Response {
    if !can_write {
        return error_response(
            "UNAUTHORIZED",
            "Unauthorized: missing required permission write:issues",
        );
    }
    let v = variables;
    if compact.contains("createIssueNote(") {
        let input = &v["input"];
        let (Some(id), Some(text)) = (input["issueId"].as_str(), input["text"].as_str()) else {
            return error_response(
                "BAD_USER_INPUT",
                "CreateIssueNoteInput needs issueId and text",
            );
        };
        if text.chars().count() > MAX_NOTE_CHARS {
            return error_response(
                "BAD_USER_INPUT",
                &format!("Note text is too long (maximum is {MAX_NOTE_CHARS} characters)"),
            );
        }
        if !issues.edit(id, None, None, None, Some((text, author))) {
            return error_response("NOT_FOUND", &format!("Issue {id} not found"));
        }
        let note = issues
            .issues
            .iter()
            .find(|i| i.id == id)
            .and_then(|i| i.notes.last())
            .map(|n| json!({"createdAt": n.created_at, "text": n.text}));
        return axum::Json(json!({"data": {"createIssueNote": {"issueNote": note}}}))
            .into_response();
    }
    let Some(id) = v["issueId"].as_str() else {
        return error_response("BAD_USER_INPUT", "updateIssue needs $issueId");
    };
    let patch: Patch = match serde_json::from_value(v.get("patch").cloned().unwrap_or(json!({}))) {
        Ok(p) => p,
        Err(e) => {
            return error_response("BAD_USER_INPUT", &format!("invalid UpdateIssuePatch: {e}"))
        }
    };
    let Some(issue) = issues.issues.iter().find(|i| i.id == id) else {
        return error_response("NOT_FOUND", &format!("Issue {id} not found"));
    };
    if let Some(s) = &patch.status {
        if !STATUSES.contains(&s.as_str()) {
            return error_response("BAD_USER_INPUT", &format!("unknown IssueStatus {s:?}"));
        }
        if s == "REJECTED"
            && !patch
                .resolution_reason
                .as_deref()
                .is_some_and(|r| REASONS.contains(&r))
        {
            return error_response(
                "BAD_USER_INPUT",
                "A rejected issue needs a resolutionReason: FALSE_POSITIVE, EXCEPTION or WONT_FIX",
            );
        }
        if s == "RESOLVED" && issue.issue_type != "THREAT_DETECTION" {
            return error_response(
                "BAD_USER_INPUT",
                "Only issues of type THREAT_DETECTION can be resolved manually",
            );
        }
        if s == "RESOLVED"
            && !patch
                .resolution_reason
                .as_deref()
                .is_some_and(|r| THREAT_REASONS.contains(&r))
        {
            return error_response(
                "BAD_USER_INPUT",
                "A resolved threat issue needs a resolutionReason: MALICIOUS_THREAT, NOT_MALICIOUS_THREAT, SECURITY_TEST_THREAT, PLANNED_ACTION_THREAT or INCONCLUSIVE_THREAT",
            );
        }
    }
    if let Some(note) = &patch.note {
        if note.chars().count() > MAX_NOTE_CHARS {
            return error_response(
                "BAD_USER_INPUT",
                &format!("Note text is too long (maximum is {MAX_NOTE_CHARS} characters)"),
            );
        }
    }
    let reason = match patch.status.as_deref() {
        Some("REJECTED" | "RESOLVED") => patch.resolution_reason.as_deref(),
        _ => None,
    };
    issues.edit(
        id,
        patch.status.as_deref(),
        reason,
        patch.due_at.as_deref(),
        patch.note.as_deref().map(|n| (n, author)),
    );
    let i = issues
        .issues
        .iter()
        .find(|i| i.id == id)
        .expect("edited above");
    axum::Json(json!({"data": {"updateIssue": {"issue": {
        "id": i.id, "status": i.status, "dueAt": i.due_at, "resolutionReason": i.resolution_reason,
    }}}}))
    .into_response()
}
