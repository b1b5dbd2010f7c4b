//! Write-back (opt-in per tenant, `write_back = true`): `POST /tenants/{id}/issues/{issue_id}/actions`
//! rejects, resolves, reopens, annotates an issue or sets its due date through Wiz's own
//! mutations (`updateIssue`, `createIssueNote`).
//!
//! Every action is checked before anything is sent (action, reason, date, note length, issue id),
//! then the issue is read: an action whose effect already holds answers `applied: false` and sends
//! no mutation, a resolve of an issue that is not a threat detection is refused. Notes carry a
//! marker derived from the issue and the text, so a retry after a lost answer finds the note and
//! does not add it twice. Mutations are sent once, inside the credential's rate limiter; a lost
//! answer is settled by reading the issue again.
//!
//! An applied action is audited: an `action.applied` event goes to the sinks (who asked, the
//! arguments, Wiz's answer), and the issue's resulting change is looked up at once through the
//! tenant's hint queue, delivered with the normal kinds and marked `"origin": "connector"`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use dashmap::DashMap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::LiveConfig;
use crate::config::TenantSpec;
use crate::hints::Hints;
use crate::sink::{deliver, Batch, SinkStats};
use crate::supervisor::SupervisorMsg;
use crate::wiz::{TenantClient, WizError, WizHttp};

/// Longest note Wiz takes (its API has failed above it; CONTRACT: refused, never cut).
pub const MAX_NOTE_CHARS: usize = 1400;
/// The reasons Wiz takes for a manual reject.
pub const REASONS: [&str; 3] = ["FALSE_POSITIVE", "EXCEPTION", "WONT_FIX"];
/// The reasons Wiz takes for resolving a threat-detection issue by hand (XSOAR's WizDefend pack;
/// every public client sends one, with a note).
pub const THREAT_REASONS: [&str; 5] = [
    "MALICIOUS_THREAT",
    "NOT_MALICIOUS_THREAT",
    "SECURITY_TEST_THREAT",
    "PLANNED_ACTION_THREAT",
    "INCONCLUSIVE_THREAT",
];
const REJECT_REASONS_TEXT: &str = "FALSE_POSITIVE, EXCEPTION or WONT_FIX";
const THREAT_REASONS_TEXT: &str = "MALICIOUS_THREAT, NOT_MALICIOUS_THREAT, SECURITY_TEST_THREAT, PLANNED_ACTION_THREAT or INCONCLUSIVE_THREAT";
/// How long the sinks may take to acknowledge the `action.applied` event.
const AUDIT_TIMEOUT: Duration = Duration::from_secs(30);

/// A checked action.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Reject {
        reason: String,
        note: Option<String>,
    },
    Resolve {
        reason: String,
        note: Option<String>,
    },
    Reopen {
        note: Option<String>,
    },
    Note {
        text: String,
    },
    SetDueDate {
        date: String,
    },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Reject { .. } => "reject",
            Action::Resolve { .. } => "resolve",
            Action::Reopen { .. } => "reopen",
            Action::Note { .. } => "note",
            Action::SetDueDate { .. } => "set_due_date",
        }
    }

    /// The arguments, as the audit event records them.
    fn arguments(&self) -> Value {
        match self {
            Action::Reject { reason, note } | Action::Resolve { reason, note } => {
                json!({"reason": reason, "note": note})
            }
            Action::Reopen { note } => json!({"note": note}),
            Action::Note { text } => json!({"note": text}),
            Action::SetDueDate { date } => json!({"due_date": date}),
        }
    }
}

/// The request body (CONTRACT "Write-back").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    pub action: String,
    pub reason: Option<String>,
    pub note: Option<String>,
    pub due_date: Option<String>,
}

/// The marker a note carries, derived from the issue and the text: the same note on the same
/// issue is recognized, so a retry never adds it twice.
pub fn note_marker(issue_id: &str, text: &str) -> String {
    let mut h = Sha256::new();
    h.update(issue_id.as_bytes());
    h.update([0]);
    h.update(text.as_bytes());
    format!("\n\n[wiz-connector {}]", &hex::encode(h.finalize())[..12])
}

fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400) => 29,
        _ => 28,
    }
}

/// A calendar date `YYYY-MM-DD` (years 2000 to 2199).
fn valid_date(d: &str) -> bool {
    let b = d.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let num = |r: std::ops::Range<usize>| d[r].parse::<u32>().ok();
    match (num(0..4), num(5..7), num(8..10)) {
        (Some(y), Some(m), Some(day)) => {
            (2000..2200).contains(&y)
                && (1..=12).contains(&m)
                && day >= 1
                && day <= days_in_month(y, m)
        }
        _ => false,
    }
}

/// Checks a request; the error says what is wrong and how to fix it.
pub fn check(issue_id: &str, req: ActionRequest) -> Result<Action, String> {
    if !crate::hints::valid_issue_id(issue_id) {
        return Err(format!(
            "{issue_id:?} is not a Wiz issue id (letters, digits, '-', '_', ':', '.'; at most 128)"
        ));
    }
    let note = match req.note {
        Some(n) if n.trim().is_empty() => return Err("note must not be empty".into()),
        Some(n) => {
            let room = MAX_NOTE_CHARS - note_marker(issue_id, &n).chars().count();
            let len = n.chars().count();
            if len > room {
                return Err(format!(
                    "note is {len} characters; Wiz takes {MAX_NOTE_CHARS} and the connector's retry marker takes {}, so at most {room}: shorten it (it is never cut)",
                    MAX_NOTE_CHARS - room
                ));
            }
            Some(n)
        }
        None => None,
    };
    let unexpected =
        |field: &str, action: &str| Err(format!("`{field}` does not go with action `{action}`"));
    match req.action.as_str() {
        "reject" => {
            if req.due_date.is_some() {
                return unexpected("due_date", "reject");
            }
            match req.reason.as_deref() {
                Some(r) if REASONS.contains(&r) => Ok(Action::Reject {
                    reason: r.to_string(),
                    note,
                }),
                Some(r) if THREAT_REASONS.contains(&r) => Err(format!(
                    "reason {r:?} is for resolving a threat; a reject takes {REJECT_REASONS_TEXT}"
                )),
                Some(r) => Err(format!(
                    "reason {r:?} is not one Wiz takes for a reject: use {REJECT_REASONS_TEXT}"
                )),
                None => Err(format!("reject needs a reason: {REJECT_REASONS_TEXT}")),
            }
        }
        "resolve" => {
            if req.due_date.is_some() {
                return unexpected("due_date", "resolve");
            }
            match req.reason.as_deref() {
                Some(r) if THREAT_REASONS.contains(&r) => Ok(Action::Resolve {
                    reason: r.to_string(),
                    note,
                }),
                Some(r) if REASONS.contains(&r) => Err(format!(
                    "reason {r:?} is for a reject; resolving a threat takes {THREAT_REASONS_TEXT}"
                )),
                Some(r) => Err(format!(
                    "reason {r:?} is not one Wiz takes for resolving a threat: use {THREAT_REASONS_TEXT}"
                )),
                None => Err(format!("resolve needs a reason: {THREAT_REASONS_TEXT}")),
            }
        }
        "reopen" => {
            if req.reason.is_some() {
                return unexpected("reason", "reopen");
            }
            if req.due_date.is_some() {
                return unexpected("due_date", "reopen");
            }
            Ok(Action::Reopen { note })
        }
        "note" => {
            if req.reason.is_some() {
                return unexpected("reason", "note");
            }
            if req.due_date.is_some() {
                return unexpected("due_date", "note");
            }
            match note {
                Some(text) => Ok(Action::Note { text }),
                None => Err("action `note` needs `note`, the text".into()),
            }
        }
        "set_due_date" => {
            if req.reason.is_some() || note.is_some() {
                return unexpected(
                    if req.reason.is_some() {
                        "reason"
                    } else {
                        "note"
                    },
                    "set_due_date",
                );
            }
            match req.due_date {
                Some(d) if valid_date(&d) => Ok(Action::SetDueDate { date: d }),
                Some(d) => Err(format!("due_date {d:?} is not a date such as 2026-12-31")),
                None => Err("set_due_date needs `due_date` (YYYY-MM-DD)".into()),
            }
        }
        other => Err(format!(
            "unknown action {other:?}: use reject, resolve, reopen, note or set_due_date"
        )),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: String,
    result: String,
}

/// Fleet-wide counts of write-back actions by action and result.
#[derive(Clone, Default)]
pub struct ActionMetrics {
    actions: Family<ActionLabels, Counter>,
}

impl ActionMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "write_back_actions",
            "Write-back actions by action and result (applied, already, refused_by_wiz, invalid, error)",
            self.actions.clone(),
        );
    }

    fn count(&self, action: &str, result: &str) {
        self.actions
            .get_or_create(&ActionLabels {
                action: action.to_string(),
                result: result.to_string(),
            })
            .inc();
    }
}

/// What the actions endpoint works with.
pub struct Actions {
    pub http: WizHttp,
    /// The running configuration: the tenant's spec is read from it per action.
    pub config: LiveConfig,
    pub hints: Hints,
    pub supervisor: ractor::ActorRef<SupervisorMsg>,
    pub sink_stats: Arc<SinkStats>,
    pub metrics: ActionMetrics,
    /// One write client per tenant (its token is reused), rebuilt when the tenant's spec changes.
    clients: DashMap<String, (Arc<TenantSpec>, Arc<TenantClient>)>,
}

impl Actions {
    pub fn new(
        http: WizHttp,
        config: LiveConfig,
        hints: Hints,
        supervisor: ractor::ActorRef<SupervisorMsg>,
        sink_stats: Arc<SinkStats>,
        metrics: ActionMetrics,
    ) -> Self {
        Actions {
            http,
            config,
            hints,
            supervisor,
            sink_stats,
            metrics,
            clients: DashMap::new(),
        }
    }

    fn client(&self, spec: Arc<TenantSpec>) -> Arc<TenantClient> {
        if let Some(c) = self.clients.get(&spec.id) {
            // Reused unless it talks to Wiz differently: what restarts a tenant on reload, or
            // another write credential.
            let same_writer = match (&c.0.write_credential, &spec.write_credential) {
                (None, None) => true,
                (Some(a), Some(b)) => {
                    a.client_id == b.client_id
                        && a.client_secret.expose_secret() == b.client_secret.expose_secret()
                }
                _ => false,
            };
            if same_writer && !crate::config::needs_restart(&c.0, &spec) {
                return c.1.clone();
            }
        }
        let client = self.http.writer(spec.clone());
        self.clients.insert(spec.id.clone(), (spec, client.clone()));
        client
    }
}

/// An answer of the endpoint.
fn answer(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

fn refused(status: StatusCode, message: impl Into<String>) -> Response {
    answer(status, json!({"error": message.into()}))
}

/// The issue as Wiz returns it now (`None`: Wiz does not return it).
async fn read(client: &Arc<TenantClient>, issue_id: &str) -> Result<Option<Value>, WizError> {
    let pages = client.lookup(&[issue_id.to_string()]).await?;
    for page in &pages {
        for raw in page.raw_nodes() {
            if let Ok(v) = serde_json::from_str::<Value>(raw) {
                if v["id"] == issue_id {
                    return Ok(Some(v));
                }
            }
        }
    }
    Ok(None)
}

/// True when the effect of `action` already holds on `issue`.
fn holds(action: &Action, issue_id: &str, issue: &Value) -> bool {
    let status = issue["status"].as_str().unwrap_or("");
    match action {
        Action::Reject { .. } => status == "REJECTED",
        Action::Resolve { .. } => status == "RESOLVED",
        Action::Reopen { .. } => status == "OPEN",
        Action::Note { text } => {
            let marker = note_marker(issue_id, text);
            let marker = marker.trim();
            issue["notes"].as_array().is_some_and(|notes| {
                notes
                    .iter()
                    .any(|n| n["text"].as_str().is_some_and(|t| t.contains(marker)))
            })
        }
        Action::SetDueDate { date } => issue["dueAt"]
            .as_str()
            .is_some_and(|d| d.starts_with(date.as_str())),
    }
}

/// The note a reject or resolve sends when the caller gave none: Wiz's console shows who closed
/// the issue and why, and every public client sends one.
fn default_note(action: &str, reason: &str) -> String {
    format!("{action} through wiz-connector (reason {reason})")
}

/// The mutation request for `action`.
pub fn mutation(action: &Action, issue_id: &str) -> Value {
    let with_marker = |n: &str| format!("{n}{}", note_marker(issue_id, n));
    let update = |patch: Value| {
        json!({
            "query": "mutation UpdateIssue($issueId: ID!, $patch: UpdateIssuePatch, $override: UpdateIssuePatch) { updateIssue(input: {id: $issueId, patch: $patch, override: $override}) { issue { id status dueAt resolutionReason } } }",
            "variables": {"issueId": issue_id, "patch": patch},
        })
    };
    let status_patch = |status: &str, reason: Option<&str>, note: &Option<String>| {
        let mut p = json!({"status": status});
        if let Some(r) = reason {
            p["resolutionReason"] = json!(r);
        }
        if let Some(n) = note {
            p["note"] = json!(with_marker(n));
        }
        p
    };
    match action {
        Action::Reject { reason, note } => {
            let note = note
                .clone()
                .or_else(|| Some(default_note("Rejected", reason)));
            update(status_patch("REJECTED", Some(reason), &note))
        }
        Action::Resolve { reason, note } => {
            let note = note
                .clone()
                .or_else(|| Some(default_note("Resolved", reason)));
            update(status_patch("RESOLVED", Some(reason), &note))
        }
        Action::Reopen { note } => update(status_patch("OPEN", None, note)),
        Action::SetDueDate { date } => update(json!({"dueAt": format!("{date}T00:00:00Z")})),
        Action::Note { text } => json!({
            "query": "mutation CreateIssueNote($input: CreateIssueNoteInput!) { createIssueNote(input: $input) { issueNote { id createdAt text } } }",
            "variables": {"input": {"issueId": issue_id, "text": with_marker(text)}},
        }),
    }
}

/// A refusal by Wiz, passed on in a 502 with Wiz's words and, where one is known, what to do.
fn wiz_refused(e: &WizError) -> Response {
    let message = e.to_string();
    let hint = if message.contains("Unauthorized") || matches!(e, WizError::Unauthorized { .. }) {
        Some("grant write:issues to the service account (or name one that has it in write_client_id)")
    } else if message.contains("resolutionReason") || message.contains("reason") {
        Some(
            if message.contains("THREAT") || message.to_ascii_lowercase().contains("resolved") {
                "resolving a threat takes MALICIOUS_THREAT, NOT_MALICIOUS_THREAT, SECURITY_TEST_THREAT, PLANNED_ACTION_THREAT or INCONCLUSIVE_THREAT"
            } else {
                "a reject takes FALSE_POSITIVE, EXCEPTION or WONT_FIX"
            },
        )
    } else {
        None
    };
    let mut body = json!({"error": format!("wiz refused the action: {message}")});
    if let Some(h) = hint {
        body["hint"] = json!(h);
    }
    answer(StatusCode::BAD_GATEWAY, body)
}

/// Carries out one action request (the body of `POST /tenants/{id}/issues/{issue_id}/actions`,
/// whose route is in `admin`) for `requested_by` (the admin token's name), and answers it.
pub async fn act(
    acts: Arc<Actions>,
    tenant: &str,
    issue_id: &str,
    requested_by: &str,
    body: Bytes,
) -> Response {
    let (tenant, issue_id) = (tenant.to_string(), issue_id.to_string());
    let req: ActionRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            acts.metrics.count("unknown", "invalid");
            return refused(
                StatusCode::BAD_REQUEST,
                format!("the body is not an action ({e}); send {{\"action\": \"reject\", \"reason\": \"FALSE_POSITIVE\"}}"),
            );
        }
    };
    let spec = match acts.config.tenant_anywhere(&tenant).await {
        Ok(Some(spec)) => spec,
        Ok(None) => return refused(StatusCode::NOT_FOUND, format!("no tenant `{tenant}`")),
        Err(e) => {
            return refused(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("tenant `{tenant}` is run by another replica, and the configuration files no longer load to read it here: {e}; send the action to the replica that owns it, or fix the files"),
            )
        }
    };
    if !spec.write_back {
        return refused(
            StatusCode::FORBIDDEN,
            format!("write-back is off for tenant `{tenant}`: set write_back = true in its configuration (its service account then needs write access to issues)"),
        );
    }
    let action = match check(&issue_id, req) {
        Ok(a) => a,
        Err(message) => {
            acts.metrics.count("unknown", "invalid");
            return refused(StatusCode::BAD_REQUEST, message);
        }
    };
    let name = action.name();
    let client = acts.client(spec.clone());
    let issue = match read(&client, &issue_id).await {
        Ok(Some(i)) => i,
        Ok(None) => {
            acts.metrics.count(name, "invalid");
            return refused(
                StatusCode::NOT_FOUND,
                format!("wiz does not return issue {issue_id} for tenant `{tenant}` (it no longer exists, or the service account cannot see it)"),
            );
        }
        Err(e) => {
            acts.metrics.count(name, "error");
            return wiz_refused(&e);
        }
    };
    if let Action::Resolve { .. } = action {
        let kind = issue["type"].as_str().unwrap_or("unknown");
        if kind != "THREAT_DETECTION" {
            acts.metrics.count(name, "invalid");
            return refused(
                StatusCode::BAD_REQUEST,
                format!("resolve is for threat-detection issues only; issue {issue_id} is {kind}, which Wiz resolves itself once the cause is fixed (reject it with a reason instead)"),
            );
        }
    }
    let status_now = issue["status"].as_str().unwrap_or("").to_string();
    if holds(&action, &issue_id, &issue) {
        acts.metrics.count(name, "already");
        tracing::info!(tenant = %tenant, issue_id = %issue_id, action = name, requested_by = %requested_by, "write-back: already in effect; nothing sent");
        return answer(
            StatusCode::OK,
            json!({"issue_id": issue_id, "status": status_now, "applied": false, "action": name}),
        );
    }
    let request = Bytes::from(serde_json::to_vec(&mutation(&action, &issue_id)).expect("json"));
    let wiz_answer = match client.mutate(request.clone()).await {
        Ok(data) => data,
        Err(e @ (WizError::Timeout { .. } | WizError::Transport(_) | WizError::Server { .. })) => {
            // The answer was lost: did it apply? Read again; send once more only if it did not.
            tracing::warn!(tenant = %tenant, issue_id = %issue_id, action = name, error = %e, "write-back: no answer to the mutation; reading the issue again");
            match read(&client, &issue_id).await {
                Ok(Some(i)) if holds(&action, &issue_id, &i) => {
                    json!({"settled_by_reading": true, "status": i["status"]})
                }
                Ok(Some(_)) => match client.mutate(request).await {
                    Ok(data) => data,
                    Err(e) => {
                        acts.metrics.count(name, "error");
                        return wiz_refused(&e);
                    }
                },
                Ok(None) => {
                    acts.metrics.count(name, "error");
                    return refused(
                        StatusCode::BAD_GATEWAY,
                        format!("wiz no longer returns issue {issue_id}"),
                    );
                }
                Err(e) => {
                    acts.metrics.count(name, "error");
                    return wiz_refused(&e);
                }
            }
        }
        Err(e) => {
            acts.metrics.count(name, "refused_by_wiz");
            tracing::warn!(tenant = %tenant, issue_id = %issue_id, action = name, error = %e, "write-back: wiz refused the action");
            return wiz_refused(&e);
        }
    };
    let status_after = wiz_answer
        .pointer("/updateIssue/issue/status")
        .or_else(|| wiz_answer.get("status"))
        .and_then(Value::as_str)
        .unwrap_or(status_now.as_str())
        .to_string();
    acts.metrics.count(name, "applied");
    tracing::info!(tenant = %tenant, issue_id = %issue_id, action = name, requested_by = %requested_by, status = %status_after, "write-back: action applied");
    // The issue's resulting change: looked up now by its owner, marked as the connector's own.
    acts.hints.deliver_from_connector(&tenant, &issue_id).await;
    let audit = audit_event(
        &spec,
        &issue_id,
        &action,
        requested_by,
        &wiz_answer,
        &status_after,
    );
    let delivered = emit(&acts, &tenant, audit).await;
    let mut body =
        json!({"issue_id": issue_id, "status": status_after, "applied": true, "action": name});
    if let Err(e) = delivered {
        tracing::error!(tenant = %tenant, issue_id = %issue_id, action = name, error = %e, "write-back: the action.applied event did not reach the sinks");
        body["audit_error"] = json!(e);
    }
    answer(StatusCode::OK, body)
}

/// The `action.applied` event.
fn audit_event(
    spec: &TenantSpec,
    issue_id: &str,
    action: &Action,
    requested_by: &str,
    wiz_answer: &Value,
    status: &str,
) -> Vec<u8> {
    let observed_at = crate::event::now_rfc3339();
    let mut h = Sha256::new();
    for part in [
        spec.id.as_str(),
        issue_id,
        action.name(),
        &action.arguments().to_string(),
        requested_by,
        &observed_at,
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let id = hex::encode(&h.finalize()[..16]);
    let url = format!(
        "{}/issues#~(issue~'{issue_id})",
        spec.console_url.as_str().trim_end_matches('/')
    );
    // serde_json's maps are sorted; every event starts with its id (sinks read it from the
    // line's start, see `event::id::event_id_of`), so the id is written first by hand.
    let mut line = format!("{{\"id\":\"{id}\",").into_bytes();
    let rest = serde_json::to_vec(&json!({
        "source": "wiz",
        "tenant": spec.id,
        "kind": "action.applied",
        "issue_id": issue_id,
        "action": action.name(),
        "arguments": action.arguments(),
        "requested_by": requested_by,
        "status": status,
        "wiz_answer": wiz_answer,
        "observed_at": observed_at,
        "url": url,
        "origin": "connector",
    }))
    .expect("json");
    line.extend_from_slice(&rest[1..]);
    line.push(b'\n');
    line
}

/// Delivers one event to the sinks (through the supervisor's current sink actor).
async fn emit(acts: &Actions, tenant: &str, line: Vec<u8>) -> Result<(), String> {
    let sink = acts
        .supervisor
        .call(SupervisorMsg::Sink, Some(Duration::from_secs(5)))
        .await
        .ok()
        .and_then(|r| match r {
            ractor::rpc::CallResult::Success(s) => s,
            _ => None,
        })
        .ok_or_else(|| "the sink is not running".to_string())?;
    // Rare and small: written in every format, whichever the tenant's destinations take.
    let formatted = match serde_json::from_slice::<Value>(&line) {
        Ok(native) => {
            let mut ocsf = Vec::new();
            crate::format::ocsf::action(&native, &mut ocsf);
            ocsf.push(b'\n');
            let mut ecs = Vec::new();
            crate::format::ecs::action(&native, &mut ecs);
            ecs.push(b'\n');
            crate::format::Formatted {
                ocsf: Some(ocsf),
                ecs: Some(ecs),
            }
        }
        Err(_) => Default::default(),
    };
    let batch = Arc::new(Batch {
        feed: "issues",
        tenant: Arc::from(tenant),
        lines: line,
        formatted,
        events: 1,
        only: None,
    });
    deliver(&sink, &acts.sink_stats, batch, AUDIT_TIMEOUT)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(
        action: &str,
        reason: Option<&str>,
        note: Option<&str>,
        due: Option<&str>,
    ) -> ActionRequest {
        ActionRequest {
            action: action.into(),
            reason: reason.map(Into::into),
            note: note.map(Into::into),
            due_date: due.map(Into::into),
        }
    }

    #[test]
    fn actions_are_checked_before_anything_is_sent() {
        let id = "0b9a1c2d-0000-4000-8000-000000000001";
        assert_eq!(
            check(id, req("reject", Some("WONT_FIX"), None, None)),
            Ok(Action::Reject {
                reason: "WONT_FIX".into(),
                note: None
            })
        );
        assert!(check(id, req("reject", Some("BECAUSE"), None, None))
            .unwrap_err()
            .contains("FALSE_POSITIVE"));
        assert!(check(id, req("reject", None, None, None))
            .unwrap_err()
            .contains("needs a reason"));
        assert!(
            check(id, req("set_due_date", None, None, Some("2026-02-30")))
                .unwrap_err()
                .contains("not a date")
        );
        assert!(check(id, req("set_due_date", None, None, Some("2028-02-29"))).is_ok());
        assert!(check(id, req("note", None, Some(""), None)).is_err());
        assert!(check(id, req("explode", None, None, None))
            .unwrap_err()
            .contains("unknown action"));
        assert!(check("a b", req("reopen", None, None, None))
            .unwrap_err()
            .contains("not a Wiz issue id"));
        let long = "x".repeat(MAX_NOTE_CHARS);
        let e = check(id, req("note", None, Some(&long), None)).unwrap_err();
        assert!(e.contains("never cut"), "{e}");
        let room = MAX_NOTE_CHARS - note_marker(id, "x").chars().count();
        assert_eq!(room, 1370, "the limit the docs give");
        assert!(check(id, req("note", None, Some(&"y".repeat(room)), None)).is_ok());
        assert!(check(id, req("note", None, Some(&"y".repeat(room + 1)), None)).is_err());
    }

    #[test]
    fn resolve_takes_a_threat_reason_and_closing_actions_always_send_a_note() {
        let id = "i-1";
        for r in THREAT_REASONS {
            assert_eq!(
                check(id, req("resolve", Some(r), None, None)),
                Ok(Action::Resolve {
                    reason: r.into(),
                    note: None
                })
            );
        }
        let e = check(id, req("resolve", None, None, None)).unwrap_err();
        assert!(
            e.contains("resolve needs a reason: MALICIOUS_THREAT"),
            "{e}"
        );
        let e = check(id, req("resolve", Some("WONT_FIX"), None, None)).unwrap_err();
        assert!(e.contains("is for a reject"), "{e}");
        let e = check(id, req("reject", Some("MALICIOUS_THREAT"), None, None)).unwrap_err();
        assert!(e.contains("is for resolving a threat"), "{e}");
        let m = mutation(
            &Action::Resolve {
                reason: "SECURITY_TEST_THREAT".into(),
                note: None,
            },
            id,
        );
        let patch = &m["variables"]["patch"];
        assert_eq!(patch["status"], "RESOLVED");
        assert_eq!(patch["resolutionReason"], "SECURITY_TEST_THREAT");
        assert!(patch["note"]
            .as_str()
            .unwrap()
            .starts_with("Resolved through wiz-connector (reason SECURITY_TEST_THREAT)"));
        let m = mutation(
            &Action::Reject {
                reason: "EXCEPTION".into(),
                note: None,
            },
            id,
        );
        assert!(m["variables"]["patch"]["note"]
            .as_str()
            .unwrap()
            .starts_with("Rejected through wiz-connector (reason EXCEPTION)"));
    }

    #[test]
    fn a_note_is_recognized_by_its_marker() {
        let id = "i-1";
        let issue = json!({"status": "OPEN", "notes": [{"text": format!("hello{}", note_marker(id, "hello"))}]});
        assert!(holds(
            &Action::Note {
                text: "hello".into()
            },
            id,
            &issue
        ));
        assert!(!holds(
            &Action::Note {
                text: "hello!".into()
            },
            id,
            &issue
        ));
        assert!(holds(&Action::Reopen { note: None }, id, &issue));
        assert!(!holds(
            &Action::Reject {
                reason: "WONT_FIX".into(),
                note: None
            },
            id,
            &issue
        ));
    }
}
