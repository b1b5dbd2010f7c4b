//! Normalizers of the feeds beyond Issues. As for Issues ([`crate::event`]), a node is decoded
//! once, by serde into borrowed fields (strings without escapes are never copied and are written
//! back verbatim), and the node's bytes are copied as they came into `raw_event`.
//!
//! Every event starts with the common fields (`id`, `source`, `tenant`, `feed`, `kind`,
//! `severity` on the Issues ladder, `observed_at`), then the feed's typed fields, `url` (only a
//! detection linked to an issue has a console page the connector can name) and `raw_event`.

use std::borrow::Cow;

pub use super::view::{decode, micros, Item, View};
use super::view::{st, txt};
use super::view::{AssetView, RuleView};
use super::FeedName;
use crate::event::id::{event_id, salted_event_id};
use crate::event::kind::{map_severity, EventKind, Severity};
use crate::format::{ecs, ocsf, Format, Lines};
use crate::json::{console_json, write_issue_url, write_str, JsonWriter};
use crate::wiz::page::Str;

/// Writes feed events for one tenant.
pub struct FeedNormalizer {
    tenant: String,
    /// The console's base, escaped for a JSON string.
    console_json: String,
    /// Items whose severity was not on Wiz's ladder (mapped to `info`).
    pub unknown_severities: u64,
}

impl FeedNormalizer {
    pub fn new(tenant: &str, console: &str) -> Self {
        FeedNormalizer {
            tenant: tenant.to_string(),
            console_json: console_json(console),
            unknown_severities: 0,
        }
    }

    /// Writes the event of `item` (the node `raw`, verbatim) as one JSON object without a trailing
    /// newline, and returns its id. The id is drawn from the tenant, the feed, the item's id and
    /// `fingerprint`, and from `salt` (the state it changed from) for a change, so a return to an
    /// earlier state gets a new id while a replay gets the same one.
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        &mut self,
        feed: FeedName,
        item: &Item<'_>,
        raw: &str,
        kind: EventKind,
        fingerprint: &[u8; 16],
        salt: Option<&[u8; 16]>,
        observed_at: &str,
        lines: &mut Lines,
    ) -> String {
        let out = &mut lines.native;
        let scoped = format!("{}/{}", feed.as_str(), &*item.id.0);
        let id = match salt {
            None => event_id(&self.tenant, &scoped, fingerprint),
            Some(s) => salted_event_id(&self.tenant, &scoped, fingerprint, s),
        };
        let severity = match item.severity_raw() {
            None if matches!(item.view, View::Audit(_)) => Severity::Info,
            s => s.and_then(map_severity).unwrap_or_else(|| {
                self.unknown_severities += 1;
                Severity::Info
            }),
        };
        let item_id = Some(Str {
            text: &item.id.0,
            verbatim: matches!(item.id.0, Cow::Borrowed(_)),
        });
        let mut w = JsonWriter::new(out);
        w.safe("id", &id);
        w.safe("source", "wiz");
        w.safe("tenant", &self.tenant);
        w.safe("feed", feed.as_str());
        w.safe("kind", kind.as_str());
        w.safe("severity", severity.as_str());
        w.escaped("observed_at", observed_at);
        let mut url = None;
        let mut vuln_url = None;
        match &item.view {
            View::Vulnerability(v) => {
                w.str(feed.id_field(), item_id);
                w.str("cve", st(&v.name));
                w.str("status", Some(status_str(item)));
                w.str("wiz_severity", item.severity_raw().map(plain));
                w.key("score");
                match v.score {
                    Some(s) if s.is_finite() => {
                        serde_json::to_writer(&mut *w.out, &s).expect("a number serializes")
                    }
                    _ => w.out.extend_from_slice(b"null"),
                }
                w.str("package", st(&v.detailed_name));
                w.str("version", st(&v.version));
                w.str("fixed_version", st(&v.fixed_version));
                w.str("first_detected_at", st(&v.first_detected_at));
                w.str("last_detected_at", st(&v.last_detected_at));
                w.str("resolved_at", st(&v.resolved_at));
                asset(&mut w, "asset", v.vulnerable_asset.as_ref(), None);
                vuln_url = st(&v.portal_url);
            }
            View::Detection(d) => {
                w.str(feed.id_field(), item_id);
                w.str("detection_type", st(&d.detection_type));
                w.str("created_at", st(&d.created_at));
                w.str("updated_at", st(&d.updated_at));
                w.str("description", st(&d.description));
                let rule = d.rule_match.as_ref().and_then(|m| m.rule.as_ref());
                rule_obj(&mut w, rule);
                asset(&mut w, "actor", d.primary_actor.as_ref(), None);
                let cloud = d
                    .cloud_accounts
                    .as_ref()
                    .and_then(|a| a.first())
                    .and_then(|a| st(&a.cloud_provider));
                asset(&mut w, "resource", d.primary_resource.as_ref(), cloud);
                w.key("mitre_tactics");
                w.out.push(b'[');
                let mut first = true;
                for sc in rule
                    .and_then(|r| r.security_sub_categories.as_ref())
                    .into_iter()
                    .flatten()
                {
                    let is_tactic = sc
                        .category
                        .as_ref()
                        .and_then(|c| txt(&c.name))
                        .is_some_and(|n| n.contains("Tactic"));
                    if let (true, Some(title)) = (is_tactic, st(&sc.title)) {
                        if !first {
                            w.out.push(b',');
                        }
                        first = false;
                        write_str(w.out, title);
                    }
                }
                w.out.push(b']');
                let issue_id = d.issue.as_ref().and_then(|i| txt(&i.id));
                w.str("issue_id", d.issue.as_ref().and_then(|i| st(&i.id)));
                url = issue_id;
            }
            View::Audit(a) => {
                w.str(feed.id_field(), item_id);
                w.str("action", st(&a.action));
                w.str("status", st(&a.status));
                w.str("timestamp", st(&a.timestamp));
                w.str("request_id", st(&a.request_id));
                w.str("user", a.user.as_ref().and_then(|u| st(&u.name)));
                w.str(
                    "service_account",
                    a.service_account.as_ref().and_then(|u| st(&u.name)),
                );
                w.str("source_ip", st(&a.source_ip));
                w.str("user_agent", st(&a.user_agent));
            }
            View::Configuration(c) => {
                w.str(feed.id_field(), item_id);
                w.str("status", Some(status_str(item)));
                w.str("result", st(&c.result));
                w.str("wiz_severity", st(&c.severity));
                w.str("analyzed_at", st(&c.analyzed_at));
                w.str("updated_at", st(&c.updated_at));
                w.str("remediation", st(&c.remediation));
                rule_obj(&mut w, c.rule.as_ref());
                asset(&mut w, "resource", c.resource.as_ref(), None);
            }
        }
        w.key("url");
        match (url, vuln_url) {
            (Some(issue), _) => write_issue_url(w.out, &self.console_json, issue),
            (None, Some(portal)) => write_str(w.out, portal),
            (None, None) => w.out.extend_from_slice(b"null"),
        }
        w.raw("raw_event", raw);
        w.close();
        let ctx = ocsf::Ctx {
            id: &id,
            tenant: &self.tenant,
            kind,
            observed_at,
            console_json: &self.console_json,
        };
        if lines.formats.has(Format::Ocsf) {
            ocsf::feed_item(&ctx, feed, item, raw, &mut lines.ocsf);
        }
        if lines.formats.has(Format::Ecs) {
            ecs::feed_item(&ctx, feed, item, raw, &mut lines.ecs);
        }
        id
    }
}

/// A string the connector derived (not copied from the node): escaped on output.
fn plain(s: &str) -> Str<'_> {
    Str {
        text: s,
        verbatim: false,
    }
}

fn status_str<'a>(item: &'a Item<'_>) -> Str<'a> {
    plain(item.status())
}

/// Writes an asset; `cloud` stands in for its `cloudPlatform` where the query asks the cloud
/// elsewhere (a detection's cloud accounts).
fn asset(w: &mut JsonWriter<'_>, key: &str, a: Option<&AssetView<'_>>, cloud: Option<Str<'_>>) {
    let Some(a) = a else {
        return w.raw(key, "null");
    };
    w.key(key);
    let mut o = JsonWriter::new(w.out);
    o.str("id", st(&a.id));
    o.str("name", st(&a.name));
    o.str("type", st(&a.asset_type));
    if a.native_type.is_some() {
        o.str("native_type", st(&a.native_type));
    }
    o.str("region", st(&a.region));
    o.str("cloud_platform", st(&a.cloud_platform).or(cloud));
    if a.provider_id.is_some() {
        o.str("provider_id", st(&a.provider_id));
    }
    o.close();
}

fn rule_obj(w: &mut JsonWriter<'_>, r: Option<&RuleView<'_>>) {
    let Some(r) = r else {
        return w.raw("rule", "null");
    };
    w.key("rule");
    let mut o = JsonWriter::new(w.out);
    o.str("id", st(&r.id));
    if r.short_id.is_some() {
        o.str("short_id", st(&r.short_id));
    }
    o.str("name", st(&r.name));
    o.close();
}

/// The kind of a change a `States` feed found, from the Issues rule's kind.
pub fn states_kind(feed: FeedName, issue_kind: EventKind) -> EventKind {
    use EventKind::*;
    match (feed, issue_kind) {
        (FeedName::Vulnerabilities, Opened) => VulnerabilityOpened,
        (FeedName::Vulnerabilities, Reopened) => VulnerabilityReopened,
        (FeedName::Vulnerabilities, Resolved | Rejected) => VulnerabilityResolved,
        (FeedName::Vulnerabilities, _) => VulnerabilityUpdated,
        (_, Opened | Reopened) => ConfigurationOpened,
        (_, Resolved | Rejected) => ConfigurationResolved,
        (_, _) => ConfigurationUpdated,
    }
}

/// The kind of an item's event in a `Once` feed: a detection's first version is
/// `detection.created`, a later one `detection.updated`.
pub fn once_kind(feed: FeedName, item: &Item<'_>) -> EventKind {
    match feed {
        FeedName::Detections if item.is_update() => EventKind::DetectionUpdated,
        FeedName::Detections => EventKind::DetectionCreated,
        _ => EventKind::AuditEntry,
    }
}
