//! The normalized event of CONTRACT.md and [`Normalizer::normalize`], which turns one Issue node,
//! exactly as Wiz sent it, into one JSON event.
//!
//! This is the hot path of the connector, so it reads only the fields it needs, borrowing from the
//! response (no `serde_json::Value` per issue), and copies the node's bytes verbatim into
//! `raw_event`.

pub mod id;
pub mod kind;
pub mod unreadable;

use std::collections::HashSet;

pub use id::*;
pub use kind::*;

pub(crate) use crate::json::{console_json, write_issue_url, write_str, JsonWriter};

use crate::config::TenantSpec;
use crate::format::{ecs, ocsf, Format, Lines};
use crate::wiz::page::{Issue, NodeError, Page};

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
        let mut lines = Lines {
            native: std::mem::take(out),
            ..Default::default()
        };
        let meta = self.normalize_with(issue, kind, &fingerprint, None, observed_at, &mut lines);
        *out = lines.native;
        meta
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
        lines: &mut Lines,
    ) -> EventMeta {
        let out = &mut lines.native;
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
        let ctx = self.ctx(&id, kind, observed_at);
        if lines.formats.has(Format::Ocsf) {
            ocsf::issue(&ctx, issue, &mut lines.ocsf);
        }
        if lines.formats.has(Format::Ecs) {
            ecs::issue(&ctx, issue, &mut lines.ecs);
        }
        EventMeta {
            id,
            issue_id: id_str.text.to_string(),
            kind,
            status: status.text.to_string(),
            fingerprint: *fingerprint,
        }
    }

    /// What the other formats' writers need of this tenant and event.
    fn ctx<'a>(&'a self, id: &'a str, kind: EventKind, observed_at: &'a str) -> ocsf::Ctx<'a> {
        ocsf::Ctx {
            id,
            tenant: &self.tenant,
            kind,
            observed_at,
            console_json: &self.console_json,
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
        lines: &mut Lines,
    ) -> EventMeta {
        let out = &mut lines.native;
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
        let ctx = self.ctx(&id, EventKind::Resolved, observed_at);
        if lines.formats.has(Format::Ocsf) {
            ocsf::vanished(&ctx, issue_id, last_severity, &mut lines.ocsf);
        }
        if lines.formats.has(Format::Ecs) {
            ecs::vanished(&ctx, issue_id, last_severity, &mut lines.ecs);
        }
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
        let page = Page::single(node).map_err(|e| NodeError::new(e.to_string(), node))?;
        let issue = page
            .issues()
            .next()
            .expect("a one-node page")
            .map_err(Clone::clone)?;
        Ok(self.normalize(&issue, kind, observed_at, out))
    }
}

/// The current time as RFC 3339 UTC with millisecond precision, for `observed_at`.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
