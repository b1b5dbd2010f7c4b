//! The normalized event of CONTRACT.md and [`Normalizer::normalize`], which turns one Issue node,
//! exactly as Wiz sent it, into one JSON event.
//!
//! This is the hot path of the connector, so it reads only the fields it needs, borrowing from the
//! response (no `serde_json::Value` per issue), and copies the node's bytes verbatim into
//! `raw_event`.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::config::TenantSpec;

/// What happened to an issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    #[serde(rename = "issue.opened")]
    Opened,
    #[serde(rename = "issue.updated")]
    Updated,
    #[serde(rename = "issue.resolved")]
    Resolved,
    #[serde(rename = "issue.rejected")]
    Rejected,
    #[serde(rename = "issue.reopened")]
    Reopened,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Opened => "issue.opened",
            EventKind::Updated => "issue.updated",
            EventKind::Resolved => "issue.resolved",
            EventKind::Rejected => "issue.rejected",
            EventKind::Reopened => "issue.reopened",
        }
    }

    /// The kind for an issue seen for the first time in `status`.
    pub fn for_first_sight(status: &str) -> EventKind {
        match status {
            "RESOLVED" => EventKind::Resolved,
            "REJECTED" => EventKind::Rejected,
            _ => EventKind::Opened,
        }
    }
}

/// The canonical 4-tier ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    High,
    Medium,
    Low,
    Info,
}

/// Wiz's 5-tier severity on the 4-tier ladder; `None` for a value Wiz is not known to send.
pub fn map_severity(wiz: &str) -> Option<Severity> {
    Some(match wiz {
        "CRITICAL" | "HIGH" => Severity::High,
        "MEDIUM" => Severity::Medium,
        "LOW" => Severity::Low,
        "INFORMATIONAL" => Severity::Info,
        _ => return None,
    })
}

/// The part of an Issue node the connector models. Everything else stays only in `raw_event`.
#[derive(Deserialize)]
struct IssueView<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    status: Cow<'a, str>,
    #[serde(borrow, default)]
    severity: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type")]
    issue_type: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "createdAt")]
    created_at: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "updatedAt")]
    updated_at: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "statusChangedAt")]
    status_changed_at: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "sourceRule")]
    source_rule: Option<RuleView<'a>>,
    #[serde(borrow, default, rename = "entitySnapshot")]
    entity: Option<EntityView<'a>>,
    #[serde(borrow, default)]
    projects: Option<Vec<ProjectView<'a>>>,
}

#[derive(Deserialize)]
struct RuleView<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ProjectView<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct EntityView<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type")]
    entity_type: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "nativeType")]
    native_type: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "cloudPlatform")]
    cloud_platform: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    region: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "subscriptionExternalId")]
    subscription_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "subscriptionName")]
    subscription_name: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "providerId")]
    provider_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "cloudProviderURL")]
    cloud_provider_url: Option<Cow<'a, str>>,
}

/// `resource` of the event: the affected cloud resource, from `entitySnapshot`.
#[derive(Serialize)]
struct Resource<'a> {
    id: Option<&'a str>,
    name: Option<&'a str>,
    #[serde(rename = "type")]
    resource_type: Option<&'a str>,
    native_type: Option<&'a str>,
    cloud_platform: Option<&'a str>,
    region: Option<&'a str>,
    subscription_id: Option<&'a str>,
    subscription_name: Option<&'a str>,
    provider_id: Option<&'a str>,
    cloud_provider_url: Option<&'a str>,
}

/// The event as serialized, without `raw_event` (appended verbatim after it).
#[derive(Serialize)]
struct EventOut<'a> {
    id: &'a str,
    source: &'static str,
    tenant: &'a str,
    kind: EventKind,
    issue_id: &'a str,
    severity: Severity,
    status: &'a str,
    issue_type: Option<&'a str>,
    title: Option<&'a str>,
    created_at: Option<&'a str>,
    updated_at: Option<&'a str>,
    status_changed_at: Option<&'a str>,
    observed_at: &'a str,
    resource: Option<Resource<'a>>,
    projects: Vec<&'a str>,
    url: &'a str,
}

/// What the caller needs to know about an event it just wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMeta {
    /// The event id (deterministic; see [`event_id`]).
    pub id: String,
    pub issue_id: String,
    pub kind: EventKind,
    pub status: String,
    /// Digest of the observed state (status, severity, updatedAt, statusChangedAt).
    pub fingerprint: [u8; 16],
}

/// An Issue node the connector cannot make an event of.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("issue node not understood ({reason}): {snippet}")]
pub struct NormalizeError {
    pub reason: String,
    pub snippet: String,
}

/// How many distinct unknown severities a tenant logs before it only counts them.
const MAX_LOGGED_UNKNOWN: usize = 32;

/// Normalizes the issues of one tenant. Holds what it needs from the tenant's spec and counts
/// what it could not map.
pub struct Normalizer {
    tenant: String,
    /// `https://app.wiz.io` or the tenant's console.
    console: String,
    /// Unknown severities already logged, so each is logged once per tenant.
    logged_unknown: HashSet<String>,
    /// Issues whose severity was unknown (mapped to `info`).
    pub unknown_severities: u64,
}

impl Normalizer {
    pub fn new(spec: &TenantSpec) -> Self {
        Self::with_console(&spec.id, spec.console_url.as_str())
    }

    pub fn with_console(tenant: &str, console: &str) -> Self {
        Normalizer {
            tenant: tenant.to_string(),
            console: console.trim_end_matches('/').to_string(),
            logged_unknown: HashSet::new(),
            unknown_severities: 0,
        }
    }

    /// Writes the event for `node` (one Issue's JSON, as received) to `out`, as one JSON object
    /// without a trailing newline. `kind` is the change the caller detected; `None` means "first
    /// sight" (opened, or resolved/rejected for an issue first seen in those states).
    pub fn normalize(
        &mut self,
        node: &str,
        kind: Option<EventKind>,
        observed_at: &str,
        out: &mut Vec<u8>,
    ) -> Result<EventMeta, NormalizeError> {
        let v: IssueView<'_> = serde_json::from_str(node).map_err(|e| NormalizeError {
            reason: e.to_string(),
            snippet: crate::wiz::error::snippet(node.as_bytes()),
        })?;
        let severity = match v.severity.as_deref().map(map_severity) {
            Some(Some(s)) => s,
            _ => {
                self.unknown_severities += 1;
                let raw = v.severity.as_deref().unwrap_or("null");
                if self.logged_unknown.len() < MAX_LOGGED_UNKNOWN
                    && self.logged_unknown.insert(raw.to_string())
                {
                    tracing::warn!(
                        tenant = %self.tenant,
                        severity = raw,
                        issue_id = %v.id,
                        "unknown wiz severity, mapped to info (logged once per tenant and value)"
                    );
                }
                Severity::Info
            }
        };
        let kind = kind.unwrap_or_else(|| EventKind::for_first_sight(&v.status));
        let fingerprint = fingerprint(
            &v.status,
            v.severity.as_deref(),
            v.updated_at.as_deref(),
            v.status_changed_at.as_deref(),
        );
        let id = event_id(&self.tenant, &v.id, &fingerprint);
        let mut url = String::with_capacity(self.console.len() + v.id.len() + 20);
        url.push_str(&self.console);
        url.push_str("/issues#~(issue~'");
        push_url_safe(&mut url, &v.id);
        url.push(')');
        let resource = v.entity.as_ref().map(|e| Resource {
            id: e.id.as_deref(),
            name: e.name.as_deref(),
            resource_type: e.entity_type.as_deref(),
            native_type: e.native_type.as_deref(),
            cloud_platform: e.cloud_platform.as_deref(),
            region: e.region.as_deref(),
            subscription_id: e.subscription_id.as_deref(),
            subscription_name: e.subscription_name.as_deref(),
            provider_id: e.provider_id.as_deref(),
            cloud_provider_url: e.cloud_provider_url.as_deref(),
        });
        let projects = v
            .projects
            .as_deref()
            .unwrap_or_default()
            .iter()
            .filter_map(|p| p.name.as_deref())
            .collect();
        let ev = EventOut {
            id: &id,
            source: "wiz",
            tenant: &self.tenant,
            kind,
            issue_id: &v.id,
            severity,
            status: &v.status,
            issue_type: v.issue_type.as_deref(),
            title: v.source_rule.as_ref().and_then(|r| r.name.as_deref()),
            created_at: v.created_at.as_deref(),
            updated_at: v.updated_at.as_deref(),
            status_changed_at: v.status_changed_at.as_deref(),
            observed_at,
            resource,
            projects,
            url: &url,
        };
        let start = out.len();
        serde_json::to_writer(&mut *out, &ev).expect("writing to a Vec cannot fail");
        // The object ends in '}': reopen it and append the node verbatim as raw_event.
        debug_assert_eq!(out.last(), Some(&b'}'));
        out.pop();
        out.extend_from_slice(b",\"raw_event\":");
        out.extend_from_slice(node.trim().as_bytes());
        out.push(b'}');
        debug_assert!(out.len() > start);
        Ok(EventMeta {
            id,
            issue_id: v.id.into_owned(),
            kind,
            status: v.status.into_owned(),
            fingerprint,
        })
    }
}

/// Digest of the state of an issue that makes a new event: status, severity, updatedAt and
/// statusChangedAt. Fields are length-prefixed so no two states share an encoding.
pub fn fingerprint(
    status: &str,
    severity: Option<&str>,
    updated_at: Option<&str>,
    status_changed_at: Option<&str>,
) -> [u8; 16] {
    let mut h = Sha256::new();
    for part in [Some(status), severity, updated_at, status_changed_at] {
        match part {
            Some(s) => {
                h.update((s.len() as u64 + 1).to_le_bytes());
                h.update(s.as_bytes());
            }
            None => h.update(0u64.to_le_bytes()),
        }
    }
    let d = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

/// The event id: the same tenant, issue and observed state always give the same id (so consumers
/// and brokers can drop replays); a change of state gives a new one. 32 hex characters.
pub fn event_id(tenant: &str, issue_id: &str, fingerprint: &[u8; 16]) -> String {
    let mut h = Sha256::new();
    h.update((tenant.len() as u64).to_le_bytes());
    h.update(tenant.as_bytes());
    h.update((issue_id.len() as u64).to_le_bytes());
    h.update(issue_id.as_bytes());
    h.update(fingerprint);
    let d = h.finalize();
    let mut s = String::with_capacity(32);
    for b in &d[..16] {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Appends `id` with anything but `[A-Za-z0-9-_.]` percent-encoded (Wiz ids are UUIDs; this only
/// guards against odd ones breaking the link).
fn push_url_safe(out: &mut String, id: &str) {
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// The current time as RFC 3339 UTC with millisecond precision, for `observed_at`.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
