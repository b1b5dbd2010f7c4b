//! The normalized event of CONTRACT.md and [`Normalizer::normalize`], which turns one Issue node,
//! exactly as Wiz sent it, into one JSON event.
//!
//! This is the hot path of the connector, so it reads only the fields it needs, borrowing from the
//! response (no `serde_json::Value` per issue), and copies the node's bytes verbatim into
//! `raw_event`.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::TenantSpec;
use crate::wiz::page::{Issue, NodeError, Page, Str};

/// What happened to an issue (`issue.*`), or to an item of another feed (see [`crate::feeds`]).
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
    #[serde(rename = "vulnerability.opened")]
    VulnerabilityOpened,
    #[serde(rename = "vulnerability.updated")]
    VulnerabilityUpdated,
    #[serde(rename = "vulnerability.resolved")]
    VulnerabilityResolved,
    #[serde(rename = "vulnerability.reopened")]
    VulnerabilityReopened,
    #[serde(rename = "detection.created")]
    DetectionCreated,
    #[serde(rename = "audit.entry")]
    AuditEntry,
    #[serde(rename = "configuration_finding.opened")]
    ConfigurationOpened,
    #[serde(rename = "configuration_finding.updated")]
    ConfigurationUpdated,
    #[serde(rename = "configuration_finding.resolved")]
    ConfigurationResolved,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Opened => "issue.opened",
            EventKind::Updated => "issue.updated",
            EventKind::Resolved => "issue.resolved",
            EventKind::Rejected => "issue.rejected",
            EventKind::Reopened => "issue.reopened",
            EventKind::VulnerabilityOpened => "vulnerability.opened",
            EventKind::VulnerabilityUpdated => "vulnerability.updated",
            EventKind::VulnerabilityResolved => "vulnerability.resolved",
            EventKind::VulnerabilityReopened => "vulnerability.reopened",
            EventKind::DetectionCreated => "detection.created",
            EventKind::AuditEntry => "audit.entry",
            EventKind::ConfigurationOpened => "configuration_finding.opened",
            EventKind::ConfigurationUpdated => "configuration_finding.updated",
            EventKind::ConfigurationResolved => "configuration_finding.resolved",
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

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
            Severity::Info => "info",
        }
    }
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

/// How many distinct unknown severities a tenant logs before it only counts them.
const MAX_LOGGED_UNKNOWN: usize = 32;

/// Normalizes the issues of one tenant. Holds what it needs from the tenant's spec and counts
/// what it could not map.
pub struct Normalizer {
    tenant: String,
    /// `https://app.wiz.io` or the tenant's console, escaped for a JSON string (once, here).
    console_json: String,
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
            console_json: console_json(console),
            logged_unknown: HashSet::new(),
            unknown_severities: 0,
        }
    }

    /// Writes the event for `issue` to `out`, as one JSON object without a trailing newline.
    /// `kind` is the change the caller detected; `None` means "first sight" (opened, or
    /// resolved/rejected for an issue first seen in those states).
    pub fn normalize(
        &mut self,
        issue: &Issue<'_>,
        kind: Option<EventKind>,
        observed_at: &str,
        out: &mut Vec<u8>,
    ) -> EventMeta {
        let fingerprint = issue_fingerprint(issue);
        self.normalize_with(issue, kind, &fingerprint, None, observed_at, out)
    }

    /// [`Normalizer::normalize`] for a caller that already has the issue's
    /// [`issue_fingerprint`] (a tenant needs it to tell whether the issue changed, and it is not
    /// computed twice), with the event id drawn from `id_salt` as well as the state (see
    /// [`salted_event_id`]) when given. The salt is for an issue that comes back after it
    /// vanished: its state may be exactly the one it was first reported in, and the return must
    /// not carry that old event's id, or a consumer that dedups by id would drop it.
    pub fn normalize_with(
        &mut self,
        issue: &Issue<'_>,
        kind: Option<EventKind>,
        fingerprint: &[u8; 16],
        id_salt: Option<&[u8; 16]>,
        observed_at: &str,
        out: &mut Vec<u8>,
    ) -> EventMeta {
        let r = issue.record;
        let id_str = issue.text(&r.id);
        let status = issue.text(&r.status);
        let severity_raw = issue.opt(&r.severity);
        let updated_at = issue.opt(&r.updated_at);
        let status_changed_at = issue.opt(&r.status_changed_at);
        let severity = match severity_raw.map(|s| map_severity(s.text)) {
            Some(Some(s)) => s,
            _ => {
                self.unknown_severities += 1;
                let raw = severity_raw.map_or("null", |s| s.text);
                if self.logged_unknown.len() < MAX_LOGGED_UNKNOWN
                    && self.logged_unknown.insert(raw.to_string())
                {
                    tracing::warn!(
                        tenant = %self.tenant,
                        severity = raw,
                        issue_id = id_str.text,
                        "unknown wiz severity, mapped to info (logged once per tenant and value)"
                    );
                }
                Severity::Info
            }
        };
        let kind = kind.unwrap_or_else(|| EventKind::for_first_sight(status.text));
        let id = match id_salt {
            None => event_id(&self.tenant, id_str.text, fingerprint),
            Some(salt) => salted_event_id(&self.tenant, id_str.text, fingerprint, salt),
        };

        let mut w = JsonWriter::new(out);
        w.safe("id", &id);
        w.safe("source", "wiz");
        w.safe("tenant", &self.tenant);
        w.safe("feed", "issues");
        w.safe("kind", kind.as_str());
        w.str("issue_id", Some(id_str));
        w.safe("severity", severity.as_str());
        w.str("status", Some(status));
        w.str("issue_type", issue.opt(&r.issue_type));
        w.str("title", issue.opt(&r.title));
        w.str("created_at", issue.opt(&r.created_at));
        w.str("updated_at", updated_at);
        w.str("status_changed_at", status_changed_at);
        w.escaped("observed_at", observed_at);
        match &r.resource {
            None => w.raw("resource", "null"),
            Some(e) => {
                w.key("resource");
                let mut o = JsonWriter::new(w.out);
                o.str("id", issue.opt(&e.id));
                o.str("name", issue.opt(&e.name));
                o.str("type", issue.opt(&e.resource_type));
                o.str("native_type", issue.opt(&e.native_type));
                o.str("cloud_platform", issue.opt(&e.cloud_platform));
                o.str("region", issue.opt(&e.region));
                o.str("subscription_id", issue.opt(&e.subscription_id));
                o.str("subscription_name", issue.opt(&e.subscription_name));
                o.str("provider_id", issue.opt(&e.provider_id));
                o.str("cloud_provider_url", issue.opt(&e.cloud_provider_url));
                o.close();
            }
        }
        w.key("projects");
        w.out.push(b'[');
        for (i, p) in r.projects.iter().enumerate() {
            if i > 0 {
                w.out.push(b',');
            }
            write_str(w.out, issue.text(p));
        }
        w.out.push(b']');
        self.write_url(&mut w, id_str.text);
        w.raw("raw_event", issue.raw);
        w.close();
        EventMeta {
            id,
            issue_id: id_str.text.to_string(),
            kind,
            status: status.text.to_string(),
            fingerprint: *fingerprint,
        }
    }

    /// `,"url":"<console>/issues#~(issue~'<id>)"`.
    fn write_url(&self, w: &mut JsonWriter<'_>, issue_id: &str) {
        w.key("url");
        write_issue_url(w.out, &self.console_json, issue_id);
    }

    /// Writes the event for an issue that vanished: a full sweep no longer found it and Wiz no
    /// longer returns it by id (deleted, or out of the service account's reach). There is no
    /// node to describe it, so the event holds what is known: `kind` `issue.resolved`, `status`
    /// `RESOLVED` (set by the connector, so that consumers close it whether they follow the kind
    /// or the status), the last severity seen, `raw_event` null, and `"vanished": true`. The
    /// Wiz-only fields (title, timestamps, resource) are null. The id is drawn from the last
    /// known state, so a replay gives the same one.
    pub fn vanished(
        &mut self,
        issue_id: &str,
        last_fingerprint: &[u8; 16],
        last_severity: Option<&str>,
        observed_at: &str,
        out: &mut Vec<u8>,
    ) -> EventMeta {
        let fingerprint = vanished_fingerprint(last_fingerprint);
        let id = event_id(&self.tenant, issue_id, &fingerprint);
        let severity = last_severity
            .and_then(map_severity)
            .unwrap_or(Severity::Info);
        let mut w = JsonWriter::new(out);
        w.safe("id", &id);
        w.safe("source", "wiz");
        w.safe("tenant", &self.tenant);
        w.safe("feed", "issues");
        w.safe("kind", EventKind::Resolved.as_str());
        w.escaped("issue_id", issue_id);
        w.safe("severity", severity.as_str());
        w.safe("status", "RESOLVED");
        for key in [
            "issue_type",
            "title",
            "created_at",
            "updated_at",
            "status_changed_at",
        ] {
            w.raw(key, "null");
        }
        w.escaped("observed_at", observed_at);
        w.raw("resource", "null");
        w.raw("projects", "[]");
        self.write_url(&mut w, issue_id);
        w.raw("raw_event", "null");
        w.raw("vanished", "true");
        w.close();
        EventMeta {
            id,
            issue_id: issue_id.to_string(),
            kind: EventKind::Resolved,
            status: "RESOLVED".to_string(),
            fingerprint,
        }
    }

    /// [`Normalizer::normalize`] for one Issue node given as JSON text.
    pub fn normalize_json(
        &mut self,
        node: &str,
        kind: Option<EventKind>,
        observed_at: &str,
        out: &mut Vec<u8>,
    ) -> Result<EventMeta, NodeError> {
        let page = Page::single(node).map_err(|e| NodeError {
            reason: e.to_string(),
            snippet: crate::net::snippet(node.as_bytes()),
        })?;
        let issue = page
            .issues()
            .next()
            .expect("a one-node page")
            .map_err(Clone::clone)?;
        Ok(self.normalize(&issue, kind, observed_at, out))
    }
}

/// Writes one JSON object field by field. Strings that serde borrowed from the response had no
/// escape sequences, and strict JSON cannot hold raw quotes, backslashes or control characters, so
/// they are copied verbatim; only strings serde had to unescape are escaped again. This is most of
/// the speed of the hot path.
pub(crate) struct JsonWriter<'o> {
    pub(crate) out: &'o mut Vec<u8>,
    first: bool,
}

impl<'o> JsonWriter<'o> {
    pub(crate) fn new(out: &'o mut Vec<u8>) -> Self {
        out.push(b'{');
        JsonWriter { out, first: true }
    }

    /// `,"key":` (keys are constants without characters that need escaping).
    pub(crate) fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    /// A value known to need no escaping (ids we made, constants, validated tenant ids).
    pub(crate) fn safe(&mut self, key: &str, value: &str) {
        debug_assert!(!value.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20));
        self.key(key);
        self.out.push(b'"');
        self.out.extend_from_slice(value.as_bytes());
        self.out.push(b'"');
    }

    pub(crate) fn escaped(&mut self, key: &str, value: &str) {
        self.key(key);
        write_escaped(self.out, value);
    }

    pub(crate) fn str(&mut self, key: &str, value: Option<Str<'_>>) {
        self.key(key);
        match value {
            Some(v) => write_str(self.out, v),
            None => self.out.extend_from_slice(b"null"),
        }
    }

    pub(crate) fn raw(&mut self, key: &str, json: &str) {
        self.key(key);
        self.out.extend_from_slice(json.as_bytes());
    }

    pub(crate) fn close(self) {
        self.out.push(b'}');
    }
}

/// A console's base URL (without a trailing `/`) escaped for the inside of a JSON string, once per
/// tenant: every event's `url` starts with it.
pub(crate) fn console_json(console: &str) -> String {
    let quoted = serde_json::to_string(console.trim_end_matches('/')).expect("a string serializes");
    quoted[1..quoted.len() - 1].to_string()
}

/// Adds `member` (`"key":value`) to the end of the event just written at the end of `out`.
pub(crate) fn add_member(out: &mut Vec<u8>, member: &[u8]) {
    if out.last() == Some(&b'}') {
        out.pop();
        out.push(b',');
        out.extend_from_slice(member);
        out.push(b'}');
    }
}

/// `"<console>/issues#~(issue~'<id>)"`: an issue's page in the Wiz console, as a JSON string.
pub(crate) fn write_issue_url(out: &mut Vec<u8>, console_json: &str, issue_id: &str) {
    out.push(b'"');
    out.extend_from_slice(console_json.as_bytes());
    out.extend_from_slice(b"/issues#~(issue~'");
    push_url_safe(out, issue_id);
    out.extend_from_slice(b")\"");
}

pub(crate) fn write_str(out: &mut Vec<u8>, v: Str<'_>) {
    if v.verbatim {
        out.push(b'"');
        out.extend_from_slice(v.text.as_bytes());
        out.push(b'"');
    } else {
        write_escaped(out, v.text);
    }
}

pub(crate) fn write_escaped(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

/// The fingerprint of an issue as a page holds it (see [`fingerprint`]).
pub fn issue_fingerprint(issue: &Issue<'_>) -> [u8; 16] {
    let r = issue.record;
    fingerprint(
        issue.status(),
        issue.opt(&r.severity).map(|s| s.text),
        issue.opt(&r.updated_at).map(|s| s.text),
        issue.opt(&r.status_changed_at).map(|s| s.text),
    )
}

/// Digest of the state of an issue that makes a new event: status, severity, updatedAt and
/// statusChangedAt. Fields are length-prefixed so no two states share an encoding.
pub fn fingerprint(
    status: &str,
    severity: Option<&str>,
    updated_at: Option<&str>,
    status_changed_at: Option<&str>,
) -> [u8; 16] {
    digest_parts(&[Some(status), severity, updated_at, status_changed_at])
}

/// A 16-byte digest of `parts`, each length-prefixed (an absent part as length 0, a present one
/// as its length + 1), so no two lists of parts share an encoding. The fingerprints of issues and
/// of the other feeds' items.
pub fn digest_parts(parts: &[Option<&str>]) -> [u8; 16] {
    let mut h = Sha256::new();
    for part in parts {
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

/// The `id` of an event line as [`Normalizer`] writes it. Every event starts with its id
/// (`{"id":"<32 hex>",...`: the writers put it first), so it is read from the start of the line
/// instead of parsing the whole event, raw node included: the `nats` sink needs it per event.
pub fn event_id_of(line: &[u8]) -> Option<&str> {
    let rest = line.strip_prefix(b"{\"id\":\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// The fingerprint recorded for an issue that vanished, derived from its last known one: distinct
/// from any digest of an observed state, and the same on every replay of the same vanishing.
pub fn vanished_fingerprint(last: &[u8; 16]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"wiz-connector/vanished");
    h.update(last);
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize()[..16]);
    out
}

/// The id of an event whose state alone does not make it new (an issue back after it vanished):
/// [`event_id`] over the state and `salt` (the recorded vanished fingerprint), so it differs from
/// the id the same state had before, and is the same on a replay.
pub fn salted_event_id(
    tenant: &str,
    issue_id: &str,
    fingerprint: &[u8; 16],
    salt: &[u8; 16],
) -> String {
    let mut h = Sha256::new();
    h.update(fingerprint);
    h.update(salt);
    let mut mixed = [0u8; 16];
    mixed.copy_from_slice(&h.finalize()[..16]);
    event_id(tenant, issue_id, &mixed)
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
    hex::encode(&h.finalize()[..16])
}

/// Appends `id` with anything but `[A-Za-z0-9-_.]` percent-encoded (Wiz ids are UUIDs; this only
/// guards against odd ones breaking the link).
pub(crate) fn push_url_safe(out: &mut Vec<u8>, id: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        }
    }
}

/// The current time as RFC 3339 UTC with millisecond precision, for `observed_at`.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
