//! Normalizers of the feeds beyond Issues. As for Issues ([`crate::event`]), a node is decoded
//! once, by serde into borrowed fields (strings without escapes are never copied and are written
//! back verbatim), and the node's bytes are copied as they came into `raw_event`.
//!
//! Every event starts with the common fields (`id`, `source`, `tenant`, `feed`, `kind`,
//! `severity` on the Issues ladder, `observed_at`), then the feed's typed fields, `url` (only a
//! detection linked to an issue has a console page the connector can name) and `raw_event`.

use std::borrow::Cow;

use serde::Deserialize;

use super::FeedName;
use crate::event::{
    console_json, digest_parts, event_id, map_severity, salted_event_id, write_issue_url,
    EventKind, JsonWriter, Severity,
};
use crate::wiz::page::{JStr, NodeError, Str};

type S<'a> = Option<JStr<'a>>;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VulnerabilityView<'a> {
    #[serde(borrow)]
    id: JStr<'a>,
    #[serde(borrow, default)]
    name: S<'a>,
    #[serde(borrow, default, rename = "CVSSSeverity")]
    cvss_severity: S<'a>,
    #[serde(borrow, default)]
    vendor_severity: S<'a>,
    #[serde(borrow, default)]
    severity: S<'a>,
    #[serde(default)]
    score: Option<f64>,
    #[serde(borrow, default)]
    status: S<'a>,
    #[serde(borrow, default)]
    first_detected_at: S<'a>,
    #[serde(borrow, default)]
    last_detected_at: S<'a>,
    #[serde(borrow, default)]
    resolved_at: S<'a>,
    /// The finding in the Wiz console (Elastic's vulnerability stream asks for it).
    #[serde(borrow, default)]
    portal_url: S<'a>,
    #[serde(borrow, default)]
    detailed_name: S<'a>,
    #[serde(borrow, default)]
    version: S<'a>,
    #[serde(borrow, default)]
    fixed_version: S<'a>,
    #[serde(borrow, default)]
    vulnerable_asset: Option<AssetView<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssetView<'a> {
    #[serde(borrow, default)]
    id: S<'a>,
    #[serde(borrow, default)]
    name: S<'a>,
    #[serde(borrow, default, rename = "type")]
    asset_type: S<'a>,
    #[serde(borrow, default)]
    native_type: S<'a>,
    #[serde(borrow, default)]
    region: S<'a>,
    #[serde(borrow, default)]
    cloud_platform: S<'a>,
    #[serde(borrow, default)]
    provider_id: S<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DetectionView<'a> {
    #[serde(borrow)]
    id: JStr<'a>,
    #[serde(borrow, default, rename = "type")]
    detection_type: S<'a>,
    #[serde(borrow, default)]
    severity: S<'a>,
    #[serde(borrow, default)]
    created_at: S<'a>,
    #[serde(borrow, default)]
    description: S<'a>,
    #[serde(borrow, default)]
    rule_match: Option<RuleMatchView<'a>>,
    #[serde(borrow, default)]
    primary_actor: Option<AssetView<'a>>,
    #[serde(borrow, default)]
    primary_resource: Option<AssetView<'a>>,
    /// The cloud accounts involved: the resource's cloud is the first one's `cloudProvider`
    /// (no public query asks `primaryResource` for its cloud).
    #[serde(borrow, default)]
    cloud_accounts: Option<Vec<CloudAccountView<'a>>>,
    #[serde(borrow, default)]
    issue: Option<IdView<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloudAccountView<'a> {
    #[serde(borrow, default)]
    cloud_provider: S<'a>,
}

#[derive(Deserialize)]
pub struct RuleMatchView<'a> {
    #[serde(borrow, default)]
    rule: Option<RuleView<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleView<'a> {
    #[serde(borrow, default)]
    id: S<'a>,
    #[serde(borrow, default)]
    short_id: S<'a>,
    #[serde(borrow, default)]
    name: S<'a>,
    #[serde(borrow, default)]
    security_sub_categories: Option<Vec<SubCategoryView<'a>>>,
}

#[derive(Deserialize)]
pub struct SubCategoryView<'a> {
    #[serde(borrow, default)]
    title: S<'a>,
    #[serde(borrow, default)]
    category: Option<NameView<'a>>,
}

#[derive(Deserialize)]
pub struct NameView<'a> {
    #[serde(borrow, default)]
    name: S<'a>,
}

#[derive(Deserialize)]
pub struct IdView<'a> {
    #[serde(borrow, default)]
    id: S<'a>,
    #[serde(borrow, default)]
    name: S<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditView<'a> {
    #[serde(borrow)]
    id: JStr<'a>,
    #[serde(borrow, default)]
    action: S<'a>,
    #[serde(borrow, default)]
    request_id: S<'a>,
    #[serde(borrow, default)]
    status: S<'a>,
    #[serde(borrow, default)]
    timestamp: S<'a>,
    #[serde(borrow, default)]
    user_agent: S<'a>,
    #[serde(borrow, default, rename = "sourceIP")]
    source_ip: S<'a>,
    #[serde(borrow, default)]
    user: Option<IdView<'a>>,
    #[serde(borrow, default)]
    service_account: Option<IdView<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationView<'a> {
    #[serde(borrow)]
    id: JStr<'a>,
    #[serde(borrow, default)]
    analyzed_at: S<'a>,
    #[serde(borrow, default)]
    updated_at: S<'a>,
    #[serde(borrow, default)]
    severity: S<'a>,
    #[serde(borrow, default)]
    result: S<'a>,
    #[serde(borrow, default)]
    status: S<'a>,
    #[serde(borrow, default)]
    remediation: S<'a>,
    #[serde(borrow, default)]
    resource: Option<AssetView<'a>>,
    #[serde(borrow, default)]
    rule: Option<RuleView<'a>>,
}

/// The fields of a node a feed models.
pub enum View<'a> {
    Vulnerability(Box<VulnerabilityView<'a>>),
    Detection(Box<DetectionView<'a>>),
    Audit(Box<AuditView<'a>>),
    Configuration(Box<ConfigurationView<'a>>),
}

/// A node of a feed, decoded.
pub struct Item<'a> {
    pub id: JStr<'a>,
    pub view: View<'a>,
}

fn not_understood(node: &str, e: impl std::fmt::Display) -> NodeError {
    NodeError {
        reason: e.to_string(),
        snippet: crate::net::snippet(node.as_bytes()),
    }
}

/// Decodes one node of `feed` (not Issues). A node without an `id`, or with a field of the wrong
/// type, is an error for that node alone.
pub fn decode(feed: FeedName, node: &str) -> Result<Item<'_>, NodeError> {
    fn parse<'a, T: Deserialize<'a>>(node: &'a str) -> Result<Box<T>, NodeError> {
        serde_json::from_str(node).map_err(|e| not_understood(node, e))
    }
    Ok(match feed {
        FeedName::Vulnerabilities => {
            let mut v: Box<VulnerabilityView<'_>> = parse(node)?;
            Item {
                id: take(&mut v.id),
                view: View::Vulnerability(v),
            }
        }
        FeedName::Detections => {
            let mut v: Box<DetectionView<'_>> = parse(node)?;
            Item {
                id: take(&mut v.id),
                view: View::Detection(v),
            }
        }
        FeedName::Audit => {
            let mut v: Box<AuditView<'_>> = parse(node)?;
            Item {
                id: take(&mut v.id),
                view: View::Audit(v),
            }
        }
        FeedName::CloudConfiguration => {
            let mut v: Box<ConfigurationView<'_>> = parse(node)?;
            Item {
                id: take(&mut v.id),
                view: View::Configuration(v),
            }
        }
        FeedName::Issues => return Err(not_understood(node, "issues have their own normalizer")),
    })
}

fn take<'a>(id: &mut JStr<'a>) -> JStr<'a> {
    JStr(std::mem::replace(&mut id.0, Cow::Borrowed("")))
}

fn st<'a>(j: &'a S<'_>) -> Option<Str<'a>> {
    j.as_ref().map(|j| Str {
        text: &j.0,
        verbatim: matches!(j.0, Cow::Borrowed(_)),
    })
}

fn txt<'a>(j: &'a S<'_>) -> Option<&'a str> {
    j.as_ref().map(|j| &*j.0)
}

impl Item<'_> {
    /// The status a `States` feed keeps: Wiz's `status`, or for a configuration finding without
    /// one, its `result` (`FAIL` is open, `PASS` resolved).
    pub fn status(&self) -> &str {
        match &self.view {
            View::Vulnerability(v) => txt(&v.status).unwrap_or("OPEN"),
            View::Configuration(c) => match (txt(&c.status), txt(&c.result)) {
                (Some(s), _) => s,
                (None, Some("PASS")) => "RESOLVED",
                (None, Some("FAIL")) | (None, None) => "OPEN",
                (None, Some(r)) => r,
            },
            View::Detection(_) | View::Audit(_) => "OPEN",
        }
    }

    /// Wiz's severity, verbatim, when the node has one.
    pub fn severity_raw(&self) -> Option<&str> {
        match &self.view {
            View::Vulnerability(v) => txt(&v.cvss_severity)
                .or(txt(&v.vendor_severity))
                .or(txt(&v.severity)),
            View::Detection(d) => txt(&d.severity),
            View::Audit(_) => None,
            View::Configuration(c) => txt(&c.severity),
        }
    }

    /// The time a `Once` feed's windows are on (`createdAt`, `timestamp`), in microseconds.
    pub fn time_micros(&self) -> Option<i64> {
        let t = match &self.view {
            View::Detection(d) => txt(&d.created_at),
            View::Audit(a) => txt(&a.timestamp),
            View::Vulnerability(v) => txt(&v.last_detected_at),
            View::Configuration(c) => txt(&c.updated_at).or(txt(&c.analyzed_at)),
        }?;
        micros(t)
    }

    /// Digest of the state that makes a new event. Vulnerabilities: status, severity, score,
    /// fixed version, resolution time. Configuration findings: status, result,
    /// severity, update time. `lastDetectedAt` and `analyzedAt` are left out: Wiz moves them on
    /// every scan, and a rescan that finds the same thing is not news. Detections and audit
    /// entries never change: their digest is the feed's alone.
    pub fn fingerprint(&self) -> [u8; 16] {
        let score;
        let parts: Vec<Option<&str>> = match &self.view {
            View::Vulnerability(v) => {
                score = v.score.map(|s| s.to_string());
                vec![
                    Some(self.status()),
                    self.severity_raw(),
                    score.as_deref(),
                    txt(&v.fixed_version),
                    txt(&v.resolved_at),
                    // Was `updatedAt`, which no public query asks a finding for and which is
                    // no longer asked; kept as a gap so that stored digests stay comparable.
                    None,
                ]
            }
            View::Configuration(c) => vec![
                Some(self.status()),
                txt(&c.result),
                txt(&c.severity),
                txt(&c.updated_at),
            ],
            View::Detection(_) => vec![Some("detection")],
            View::Audit(_) => vec![Some("audit")],
        };
        digest_parts(&parts)
    }
}

/// RFC 3339 text to microseconds since the epoch.
pub fn micros(t: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(t.trim_end_matches('Z'))
        .or_else(|_| humantime::parse_rfc3339(t))
        .ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(d.as_micros() as i64)
}

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
        out: &mut Vec<u8>,
    ) -> String {
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
                w.str("finding_id", item_id);
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
                w.str("detection_id", item_id);
                w.str("detection_type", st(&d.detection_type));
                w.str("created_at", st(&d.created_at));
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
                        crate::event::write_str(w.out, title);
                    }
                }
                w.out.push(b']');
                let issue_id = d.issue.as_ref().and_then(|i| txt(&i.id));
                w.str("issue_id", d.issue.as_ref().and_then(|i| st(&i.id)));
                url = issue_id;
            }
            View::Audit(a) => {
                w.str("entry_id", item_id);
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
                w.str("finding_id", item_id);
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
            (None, Some(portal)) => crate::event::write_str(w.out, portal),
            (None, None) => w.out.extend_from_slice(b"null"),
        }
        w.raw("raw_event", raw);
        w.close();
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

/// The kind of every event of a `Once` feed.
pub fn once_kind(feed: FeedName) -> EventKind {
    match feed {
        FeedName::Detections => EventKind::DetectionCreated,
        _ => EventKind::AuditEntry,
    }
}
