//! The `ocsf` format: OCSF 1.8.0 events, written from the fields the normalizer decoded (never
//! from a second parse of the node). docs/formats.md has the mapping, field by field.
//!
//! | feed | class |
//! |---|---|
//! | Issues of type `CLOUD_CONFIGURATION` | Compliance Finding (2003) |
//! | other Issues | Detection Finding (2004) |
//! | vulnerabilities | Vulnerability Finding (2002) |
//! | cloud_configuration | Compliance Finding (2003) |
//! | detections | Detection Finding (2004) |
//! | audit, and write-back's `action.applied` | API Activity (6003) |
//!
//! Every event starts with `metadata` and `metadata.uid` (the event id) first, so a sink that
//! needs the id per event reads it from the start of the line ([`crate::event::id::event_id_of`]),
//! and ends with `unmapped` (the Wiz fields OCSF has no place for), so a tenant's marks go in last
//! ([`super::Lines::mark`]). The node itself is in `raw_data`, as a string.

use super::{own, Asset, Members};
use crate::event::kind::EventKind;
use crate::feeds::view::{st, txt, DetectionView, Item, RuleView, View};
use crate::feeds::FeedName;
use crate::json::{write_escaped, write_issue_url, JsonWriter};
use crate::wiz::page::{Issue, Str};

/// The schema version written in `metadata.version`.
pub const VERSION: &str = "1.8.0";

/// Closing braces that end an event: `unmapped`'s and the event's.
pub(crate) const TAIL_DEPTH: usize = 2;

/// What every event of a tenant's page shares, and the event's own id and kind.
pub struct Ctx<'a> {
    /// The event id (the native event's `id`): `metadata.uid`.
    pub id: &'a str,
    pub tenant: &'a str,
    pub kind: EventKind,
    pub observed_at: &'a str,
    /// The tenant's console, escaped for a JSON string (see [`crate::json::console_json`]).
    pub console_json: &'a str,
}

#[derive(Clone, Copy)]
struct Class {
    uid: i64,
    name: &'static str,
    category_uid: i64,
    category_name: &'static str,
}

const VULNERABILITY_FINDING: Class = Class {
    uid: 2002,
    name: "Vulnerability Finding",
    category_uid: 2,
    category_name: "Findings",
};
const COMPLIANCE_FINDING: Class = Class {
    uid: 2003,
    name: "Compliance Finding",
    category_uid: 2,
    category_name: "Findings",
};
const DETECTION_FINDING: Class = Class {
    uid: 2004,
    name: "Detection Finding",
    category_uid: 2,
    category_name: "Findings",
};
const API_ACTIVITY: Class = Class {
    uid: 6003,
    name: "API Activity",
    category_uid: 6,
    category_name: "Application Activity",
};

/// `severity_id` and its caption for Wiz's severity text; an unknown text is 0 `Unknown`.
pub fn severity(wiz: Option<&str>) -> (i64, &'static str) {
    match wiz {
        Some("CRITICAL") => (5, "Critical"),
        Some("HIGH") => (4, "High"),
        Some("MEDIUM") => (3, "Medium"),
        Some("LOW") => (2, "Low"),
        Some("INFORMATIONAL") => (1, "Informational"),
        _ => (0, "Unknown"),
    }
}

/// A finding's `activity_id`: 1 Create (opened, first seen), 2 Update (updated, reopened), 3
/// Close (resolved, rejected, vanished).
pub fn finding_activity(kind: EventKind) -> (i64, &'static str) {
    use EventKind::*;
    match kind {
        Opened | VulnerabilityOpened | ConfigurationOpened | DetectionCreated => (1, "Create"),
        Updated
        | Reopened
        | VulnerabilityUpdated
        | VulnerabilityReopened
        | ConfigurationUpdated
        | DetectionUpdated => (2, "Update"),
        Resolved | Rejected | VulnerabilityResolved | ConfigurationResolved => (3, "Close"),
        AuditEntry
        | IssueUnreadable
        | VulnerabilityUnreadable
        | DetectionUnreadable
        | AuditUnreadable
        | ConfigurationUnreadable => (99, "Other"),
    }
}

/// A finding's `status_id` for Wiz's status: 1 New (OPEN), 2 In Progress, 3 Suppressed
/// (REJECTED), 4 Resolved; another status is 99 Other with its own text.
pub fn finding_status(wiz: &str) -> (i64, &str) {
    match wiz {
        "OPEN" => (1, "New"),
        "IN_PROGRESS" => (2, "In Progress"),
        "REJECTED" => (3, "Suppressed"),
        "RESOLVED" => (4, "Resolved"),
        other => (99, other),
    }
}

/// An audit entry's `activity_id`, from the verb its action starts with (`CreateUser`,
/// `DeleteReport`, ...): 1 Create, 2 Read, 3 Update, 4 Delete, else 99 Other.
pub fn api_activity(action: &str) -> (i64, &'static str) {
    const VERBS: [(&str, i64, &str); 14] = [
        ("Create", 1, "Create"),
        ("Add", 1, "Create"),
        ("Get", 2, "Read"),
        ("List", 2, "Read"),
        ("Read", 2, "Read"),
        ("Search", 2, "Read"),
        ("Export", 2, "Read"),
        ("Download", 2, "Read"),
        ("Update", 3, "Update"),
        ("Set", 3, "Update"),
        ("Edit", 3, "Update"),
        ("Modify", 3, "Update"),
        ("Delete", 4, "Delete"),
        ("Remove", 4, "Delete"),
    ];
    VERBS
        .iter()
        .find(|(v, _, _)| {
            action.starts_with(v)
                && action[v.len()..]
                    .chars()
                    .next()
                    .is_none_or(|c| c.is_ascii_uppercase() || c == '_')
        })
        .map_or((99, "Other"), |(_, id, name)| (*id, name))
}

/// The start of every event: `metadata` (uid first), the class, activity, type, severity and
/// time. `profiles`: `["cloud"]` when the event has a `cloud` object.
#[allow(clippy::too_many_arguments)]
fn head(
    w: &mut JsonWriter<'_>,
    c: &Ctx<'_>,
    feed: &str,
    class: Class,
    activity: (i64, &str),
    severity: (i64, &str),
    time: Option<Str<'_>>,
    cloud: bool,
) {
    w.key("metadata");
    let mut m = JsonWriter::new(w.out);
    m.safe("uid", c.id);
    m.safe("version", VERSION);
    m.key("product");
    m.out
        .extend_from_slice(b"{\"name\":\"Wiz\",\"vendor_name\":\"Wiz\"}");
    m.safe("tenant_uid", c.tenant);
    m.safe("log_name", feed);
    m.ms("processed_time", Some(own(c.observed_at)));
    if cloud {
        m.raw("profiles", "[\"cloud\"]");
    }
    m.close();
    w.int("class_uid", class.uid);
    w.safe("class_name", class.name);
    w.int("category_uid", class.category_uid);
    w.safe("category_name", class.category_name);
    w.int("activity_id", activity.0);
    w.safe("activity_name", activity.1);
    w.int("type_uid", class.uid * 100 + activity.0);
    w.key("type_name");
    w.out.push(b'"');
    w.out.extend_from_slice(class.name.as_bytes());
    w.out.extend_from_slice(b": ");
    w.out.extend_from_slice(activity.1.as_bytes());
    w.out.push(b'"');
    w.int("severity_id", severity.0);
    w.safe("severity", severity.1);
    let ms = time
        .and_then(|t| super::millis(t.text))
        .or_else(|| super::millis(c.observed_at))
        .unwrap_or(0);
    w.int("time", ms);
}

/// `status_id` and `status` of a finding.
fn status(w: &mut JsonWriter<'_>, wiz: &str) {
    let (id, caption) = finding_status(wiz);
    w.int("status_id", id);
    w.text("status", caption);
}

/// `resources` (the one resource, when it has an id or a name) and `cloud` (when the provider
/// is known: OCSF requires it). The resource's `region` comes from OCSF's cloud profile, so it is
/// written only with `cloud` (whose presence [`head`] declares the profile for).
fn place(w: &mut JsonWriter<'_>, a: &Asset<'_>) {
    if a.id.is_some() || a.name.is_some() {
        w.key("resources");
        w.out.push(b'[');
        let mut o = JsonWriter::new(w.out);
        o.some("uid", a.id);
        o.some("name", a.name);
        o.some("type", a.kind);
        if a.provider.is_some() {
            o.some("region", a.region);
        }
        o.some("uid_alt", a.cloud_id);
        o.some("provider", a.provider);
        o.close();
        w.out.push(b']');
    }
    let Some(p) = a.provider else { return };
    w.key("cloud");
    let mut o = JsonWriter::new(w.out);
    o.some("provider", Some(p));
    o.some("region", a.region);
    if a.account_id.is_some() || a.account_name.is_some() {
        o.key("account");
        let mut acc = JsonWriter::new(o.out);
        acc.some("uid", a.account_id);
        acc.some("name", a.account_name);
        acc.close();
    }
    o.close();
}

/// `analytic`: the Wiz rule that found it (type Rule).
fn analytic(w: &mut JsonWriter<'_>, uid: Option<Str<'_>>, name: Option<Str<'_>>) {
    if uid.is_none() && name.is_none() {
        return;
    }
    w.key("analytic");
    let mut a = JsonWriter::new(w.out);
    a.some("uid", uid);
    a.some("name", name);
    a.int("type_id", 1);
    a.safe("type", "Rule");
    a.close();
}

/// `"raw_data"` (the node as a string) and the opening of `unmapped` with the event's kind;
/// the caller adds its members and calls [`close_unmapped`].
fn raw_and_unmapped<'o>(
    w: &'o mut JsonWriter<'_>,
    raw: Option<&str>,
    kind: &str,
) -> JsonWriter<'o> {
    if let Some(raw) = raw {
        w.key("raw_data");
        write_escaped(w.out, raw);
    }
    w.key("unmapped");
    let mut u = JsonWriter::new(w.out);
    u.text("kind", kind);
    u
}

/// An Issue's event: a Compliance Finding for a `CLOUD_CONFIGURATION` issue, a Detection
/// Finding for the others.
pub fn issue(c: &Ctx<'_>, issue: &Issue<'_>, out: &mut Vec<u8>) {
    let r = issue.record;
    let issue_type = issue.opt(&r.issue_type);
    let compliance = issue_type.is_some_and(|t| t.text == "CLOUD_CONFIGURATION");
    let class = if compliance {
        COMPLIANCE_FINDING
    } else {
        DETECTION_FINDING
    };
    let res = r.resource.as_deref();
    let asset = Asset::of_issue(issue);
    let severity_raw = issue.opt(&r.severity);
    let updated = issue.opt(&r.updated_at);
    let created = issue.opt(&r.created_at);
    let id = issue.text(&r.id);
    let mut w = JsonWriter::new(out);
    head(
        &mut w,
        c,
        "issues",
        class,
        finding_activity(c.kind),
        severity(severity_raw.map(|s| s.text)),
        updated.or(created),
        asset.provider.is_some(),
    );
    status(&mut w, issue.status());
    w.some("message", issue.opt(&r.title));
    w.key("finding_info");
    let mut f = JsonWriter::new(w.out);
    f.str("uid", Some(id));
    f.some("title", issue.opt(&r.title));
    f.some("desc", issue.opt(&r.description));
    f.list("types", issue_type);
    f.ms("created_time", created);
    f.ms("modified_time", updated);
    f.key("src_url");
    write_issue_url(f.out, c.console_json, id.text);
    analytic(&mut f, issue.opt(&r.rule_id), issue.opt(&r.title));
    f.close();
    place(&mut w, &asset);
    if compliance {
        w.key("compliance");
        let mut o = JsonWriter::new(w.out);
        o.some("control", issue.opt(&r.rule_id).or(issue.opt(&r.title)));
        let frameworks = issue.frameworks();
        o.list("standards", frameworks.iter().map(|f| own(f)));
        // Open: the rule fails; resolved: it passes; rejected (accepted risk): no verdict.
        match issue.status() {
            "OPEN" | "IN_PROGRESS" => {
                o.int("status_id", 3);
                o.safe("status", "Fail");
            }
            "RESOLVED" => {
                o.int("status_id", 1);
                o.safe("status", "Pass");
            }
            _ => {}
        }
        o.close();
    } else {
        w.raw("is_alert", "true");
    }
    if let Some(fix) = issue.opt(&r.remediation) {
        w.key("remediation");
        let mut o = JsonWriter::new(w.out);
        o.some("desc", Some(fix));
        o.close();
    }
    let mut u = raw_and_unmapped(&mut w, Some(issue.raw), c.kind.as_str());
    u.str("status", Some(issue.text(&r.status)));
    u.some("severity", severity_raw);
    u.some("status_changed_at", issue.opt(&r.status_changed_at));
    u.some("resolved_at", issue.opt(&r.resolved_at));
    u.some("due_at", issue.opt(&r.due_at));
    u.list("projects", r.projects.iter().map(|p| issue.text(p)));
    if !compliance {
        // A Detection Finding has no `compliance` to name them in.
        let frameworks = issue.frameworks();
        u.list("frameworks", frameworks.iter().map(|f| own(f)));
    }
    if let Some(e) = res {
        u.some("native_type", issue.opt(&e.native_type));
        u.some("cloud_provider_url", issue.opt(&e.cloud_provider_url));
    }
    u.close();
    w.close();
}

/// The event of an Issue that vanished from Wiz: a Detection Finding closed (its type is no
/// longer known), status Resolved, without `raw_data`, and `unmapped.vanished`.
pub fn vanished(c: &Ctx<'_>, issue_id: &str, last_severity: Option<&str>, out: &mut Vec<u8>) {
    let mut w = JsonWriter::new(out);
    head(
        &mut w,
        c,
        "issues",
        DETECTION_FINDING,
        finding_activity(EventKind::Resolved),
        severity(last_severity),
        None,
        false,
    );
    status(&mut w, "RESOLVED");
    w.key("finding_info");
    let mut f = JsonWriter::new(w.out);
    f.text("uid", issue_id);
    f.key("src_url");
    write_issue_url(f.out, c.console_json, issue_id);
    f.close();
    let mut u = raw_and_unmapped(&mut w, None, EventKind::Resolved.as_str());
    u.safe("status", "RESOLVED");
    if let Some(s) = last_severity {
        u.text("severity", s);
    }
    u.raw("vanished", "true");
    u.close();
    w.close();
}

/// The event of a node that cannot be read (a quarantine, see [`crate::event::unreadable`]), of
/// any feed: a Detection Finding of activity 99 Other, severity Informational. The feed's own
/// class is not used: Vulnerability Finding, Compliance Finding and API Activity require
/// objects (`vulnerabilities`, `compliance`, `actor`, `api`) that only the unread node could
/// fill, while a Detection Finding requires nothing beyond `finding_info.uid` (the item's id,
/// else `sha256:<digest>`). `raw_data` is left out (the node is never carried whole); what is
/// known of it is in `unmapped.unreadable`.
pub fn unreadable(
    c: &Ctx<'_>,
    feed: FeedName,
    node: &crate::wiz::page::NodeError,
    out: &mut Vec<u8>,
) {
    let mut w = JsonWriter::new(out);
    head(
        &mut w,
        c,
        feed.as_str(),
        DETECTION_FINDING,
        (99, "Other"),
        (1, "Informational"),
        None,
        false,
    );
    w.text("message", &super::unreadable_message(feed, node));
    w.key("finding_info");
    let mut f = JsonWriter::new(w.out);
    f.text("uid", &node.node.key());
    f.text("title", &format!("Unreadable Wiz {} record", feed.as_str()));
    f.text("desc", &node.reason);
    if let (FeedName::Issues, Some(id)) = (feed, &node.node.id) {
        f.key("src_url");
        write_issue_url(f.out, c.console_json, id);
    }
    f.close();
    let mut u = raw_and_unmapped(&mut w, None, c.kind.as_str());
    super::unreadable_member(&mut u, node);
    u.close();
    w.close();
}

/// A MITRE tactic or technique title as Wiz gives it (`"TA0002 Execution"`, `"T1059 - Command
/// and Scripting Interpreter"`, or a bare name): its id, when it starts with one, and its name.
pub(crate) fn mitre(title: &str) -> (Option<&str>, &str) {
    let (head, rest) = title.split_once([' ', ':']).unwrap_or((title, ""));
    let is_id = head.len() >= 5
        && head.starts_with('T')
        && head[1..]
            .trim_start_matches('A')
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.');
    if is_id {
        let name = rest.trim_start_matches([' ', '-', ':']).trim();
        (Some(head), if name.is_empty() { head } else { name })
    } else {
        (None, title)
    }
}

/// `attacks`: the MITRE ATT&CK tactics and techniques of a detection rule's sub-categories.
fn attacks(w: &mut JsonWriter<'_>, rule: Option<&RuleView<'_>>) {
    let subs = rule
        .and_then(|r| r.security_sub_categories.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|sc| {
            let cat = sc.category.as_ref().and_then(|c| txt(&c.name))?;
            let key = if cat.contains("Technique") {
                "technique"
            } else if cat.contains("Tactic") {
                "tactic"
            } else {
                return None;
            };
            Some((key, txt(&sc.title)?))
        });
    let mut first = true;
    for (key, title) in subs {
        if first {
            w.key("attacks");
            w.out.push(b'[');
            first = false;
        } else {
            w.out.push(b',');
        }
        let (uid, name) = mitre(title);
        let mut a = JsonWriter::new(w.out);
        a.key(key);
        let mut t = JsonWriter::new(a.out);
        if let Some(uid) = uid {
            t.text("uid", uid);
        }
        t.text("name", name);
        t.close();
        a.close();
    }
    if !first {
        w.out.push(b']');
    }
}

/// A detection's resource, with the cloud and account of its first cloud account (the query
/// does not ask the resource for its cloud).
pub(crate) fn detection_asset<'a>(d: &'a DetectionView<'_>) -> Asset<'a> {
    let account = d.cloud_accounts.as_ref().and_then(|a| a.first());
    let mut asset = d
        .primary_resource
        .as_ref()
        .map(Asset::of)
        .unwrap_or_default();
    asset.provider = account.and_then(|a| st(&a.cloud_provider));
    asset.account_id = account.and_then(|a| st(&a.external_id));
    asset.account_name = account.and_then(|a| st(&a.name));
    asset
}

/// The event of an item of a feed beyond Issues; `raw` is its node, verbatim.
pub fn feed_item(c: &Ctx<'_>, feed: FeedName, item: &Item<'_>, raw: &str, out: &mut Vec<u8>) {
    let id = Str {
        text: &item.id.0,
        verbatim: matches!(item.id.0, std::borrow::Cow::Borrowed(_)),
    };
    let mut w = JsonWriter::new(out);
    match &item.view {
        View::Vulnerability(v) => {
            let asset = v
                .vulnerable_asset
                .as_ref()
                .map(Asset::of)
                .unwrap_or_default();
            head(
                &mut w,
                c,
                feed.as_str(),
                VULNERABILITY_FINDING,
                finding_activity(c.kind),
                severity(item.severity_raw()),
                st(&v.last_detected_at).or(st(&v.first_detected_at)),
                asset.provider.is_some(),
            );
            status(&mut w, item.status());
            w.some("message", st(&v.name));
            w.key("finding_info");
            let mut f = JsonWriter::new(w.out);
            f.some("uid", Some(id));
            f.some("title", st(&v.name));
            f.some("desc", v.description.str());
            f.raw("types", "[\"Vulnerability\"]");
            f.ms("first_seen_time", st(&v.first_detected_at));
            f.ms("last_seen_time", st(&v.last_detected_at));
            f.some("src_url", st(&v.portal_url));
            f.close();
            w.key("vulnerabilities");
            w.out.push(b'[');
            let mut o = JsonWriter::new(w.out);
            match txt(&v.name) {
                Some(n) if n.starts_with("CVE-") => {
                    o.key("cve");
                    let mut cve = JsonWriter::new(o.out);
                    cve.some("uid", st(&v.name));
                    cve.close();
                }
                Some(_) => {
                    o.key("advisory");
                    let mut adv = JsonWriter::new(o.out);
                    adv.some("uid", st(&v.name));
                    adv.close();
                }
                None => {
                    // OCSF needs one of cve, advisory or cwe: the finding's own id stands in.
                    o.key("advisory");
                    let mut adv = JsonWriter::new(o.out);
                    adv.some("uid", Some(id));
                    adv.close();
                }
            }
            o.some("title", st(&v.name));
            o.some("desc", v.description.str());
            o.text("severity", severity(item.severity_raw()).1);
            if let (Some(name), Some(version)) = (st(&v.detailed_name), st(&v.version)) {
                o.key("affected_packages");
                o.out.push(b'[');
                let mut p = JsonWriter::new(o.out);
                p.some("name", Some(name));
                p.some("version", Some(version));
                p.some("fixed_in_version", st(&v.fixed_version));
                p.close();
                o.out.push(b']');
            }
            o.key("is_fix_available");
            o.out.extend_from_slice(if v.fixed_version.is_some() {
                b"true"
            } else {
                b"false"
            });
            o.ms("first_seen_time", st(&v.first_detected_at));
            o.ms("last_seen_time", st(&v.last_detected_at));
            if let Some(fix) = v.remediation.str() {
                o.key("remediation");
                let mut r = JsonWriter::new(o.out);
                r.some("desc", Some(fix));
                r.close();
            }
            o.close();
            w.out.push(b']');
            place(&mut w, &asset);
            let mut u = raw_and_unmapped(&mut w, Some(raw), c.kind.as_str());
            u.some("status", txt(&v.status).map(own));
            u.some("severity", item.severity_raw().map(own));
            u.some("vendor_severity", st(&v.vendor_severity));
            u.num("score", v.score);
            u.some("resolved_at", st(&v.resolved_at));
            u.close();
        }
        View::Configuration(cf) => {
            let asset = cf.resource.as_ref().map(Asset::of).unwrap_or_default();
            let rule = cf.rule.as_ref();
            head(
                &mut w,
                c,
                feed.as_str(),
                COMPLIANCE_FINDING,
                finding_activity(c.kind),
                severity(item.severity_raw()),
                st(&cf.updated_at).or(st(&cf.analyzed_at)),
                asset.provider.is_some(),
            );
            status(&mut w, item.status());
            w.some("message", rule.and_then(|r| st(&r.name)));
            w.key("finding_info");
            let mut f = JsonWriter::new(w.out);
            f.some("uid", Some(id));
            f.some("title", rule.and_then(|r| st(&r.name)));
            f.some("desc", rule.and_then(|r| r.description.str()));
            f.raw("types", "[\"Cloud Configuration\"]");
            f.ms("modified_time", st(&cf.updated_at));
            f.ms("last_seen_time", st(&cf.analyzed_at));
            analytic(
                &mut f,
                rule.and_then(|r| st(&r.id)),
                rule.and_then(|r| st(&r.name)),
            );
            f.close();
            w.key("compliance");
            let mut o = JsonWriter::new(w.out);
            o.some(
                "control",
                rule.and_then(|r| st(&r.short_id).or(st(&r.id)).or(st(&r.name))),
            );
            match txt(&cf.result) {
                Some("PASS") => {
                    o.int("status_id", 1);
                    o.safe("status", "Pass");
                }
                Some("FAIL") => {
                    o.int("status_id", 3);
                    o.safe("status", "Fail");
                }
                Some(other) => o.text("status", other),
                None => {}
            }
            o.close();
            if let Some(fix) = st(&cf.remediation) {
                w.key("remediation");
                let mut r = JsonWriter::new(w.out);
                r.some("desc", Some(fix));
                r.close();
            }
            place(&mut w, &asset);
            let mut u = raw_and_unmapped(&mut w, Some(raw), c.kind.as_str());
            u.some("status", Some(own(item.status())));
            u.some("result", st(&cf.result));
            u.some("severity", st(&cf.severity));
            u.close();
        }
        View::Detection(d) => {
            let rule = d.rule_match.as_ref().and_then(|m| m.rule.as_ref());
            let asset = detection_asset(d);
            head(
                &mut w,
                c,
                feed.as_str(),
                DETECTION_FINDING,
                finding_activity(c.kind),
                severity(item.severity_raw()),
                st(&d.created_at),
                asset.provider.is_some(),
            );
            status(&mut w, "OPEN");
            w.some(
                "message",
                st(&d.description).or(rule.and_then(|r| st(&r.name))),
            );
            w.key("finding_info");
            let mut f = JsonWriter::new(w.out);
            f.some("uid", Some(id));
            f.some(
                "title",
                rule.and_then(|r| st(&r.name)).or(st(&d.detection_type)),
            );
            f.some("desc", st(&d.description));
            f.list("types", st(&d.detection_type));
            f.ms("created_time", st(&d.created_at));
            f.ms("modified_time", st(&d.updated_at));
            if let Some(issue) = d.issue.as_ref().and_then(|i| txt(&i.id)) {
                f.key("src_url");
                write_issue_url(f.out, c.console_json, issue);
            }
            analytic(
                &mut f,
                rule.and_then(|r| st(&r.id)),
                rule.and_then(|r| st(&r.name)),
            );
            attacks(&mut f, rule);
            f.close();
            w.raw("is_alert", "true");
            place(&mut w, &asset);
            if let Some(actor) = d.primary_actor.as_ref() {
                if actor.id.is_some() || actor.name.is_some() {
                    // The principal that acted, as evidence (OCSF's Detection Finding has no
                    // `actor` of its own).
                    w.key("evidences");
                    w.out.extend_from_slice(b"[{\"actor\":{\"user\":");
                    let mut u = JsonWriter::new(w.out);
                    u.some("uid", st(&actor.id));
                    u.some("name", st(&actor.name));
                    match txt(&actor.asset_type) {
                        Some("SERVICE_ACCOUNT") => {
                            u.int("type_id", 4);
                            u.safe("type", "Service");
                        }
                        Some("USER_ACCOUNT" | "USER") => {
                            u.int("type_id", 1);
                            u.safe("type", "User");
                        }
                        Some(other) => {
                            u.int("type_id", 99);
                            u.text("type", other);
                        }
                        None => {}
                    }
                    u.close();
                    w.out.extend_from_slice(b"}}]");
                }
            }
            let mut u = raw_and_unmapped(&mut w, Some(raw), c.kind.as_str());
            u.some("severity", st(&d.severity));
            u.some("issue_id", d.issue.as_ref().and_then(|i| st(&i.id)));
            u.close();
        }
        View::Audit(a) => {
            let action = txt(&a.action).unwrap_or("");
            head(
                &mut w,
                c,
                feed.as_str(),
                API_ACTIVITY,
                api_activity(action),
                (1, "Informational"),
                st(&a.timestamp),
                false,
            );
            match txt(&a.status) {
                Some("SUCCESS") => {
                    w.int("status_id", 1);
                    w.safe("status", "Success");
                }
                Some("FAILED" | "FAILURE") => {
                    w.int("status_id", 2);
                    w.safe("status", "Failure");
                }
                Some(other) => {
                    w.int("status_id", 99);
                    w.text("status", other);
                }
                None => w.int("status_id", 0),
            }
            w.key("api");
            let mut o = JsonWriter::new(w.out);
            o.some("operation", st(&a.action).or(Some(own("unknown"))));
            if a.request_id.is_some() {
                o.key("request");
                let mut r = JsonWriter::new(o.out);
                r.some("uid", st(&a.request_id));
                r.close();
            }
            o.close();
            w.key("actor");
            let mut o = JsonWriter::new(w.out);
            let (who, type_id, type_name) = match (&a.user, &a.service_account) {
                (Some(u), _) if u.id.is_some() || u.name.is_some() => (Some(u), 1, "User"),
                (_, Some(s)) if s.id.is_some() || s.name.is_some() => (Some(s), 4, "Service"),
                _ => (None, 0, ""),
            };
            match who {
                Some(u) => {
                    o.key("user");
                    let mut p = JsonWriter::new(o.out);
                    p.some("uid", st(&u.id));
                    p.some("name", st(&u.name));
                    p.int("type_id", type_id);
                    p.safe("type", type_name);
                    p.close();
                }
                None => o.safe("app_name", "Wiz"),
            }
            o.close();
            w.key("src_endpoint");
            let mut o = JsonWriter::new(w.out);
            match txt(&a.source_ip).filter(|ip| ip.parse::<std::net::IpAddr>().is_ok()) {
                Some(ip) => o.text("ip", ip),
                // OCSF requires the endpoint; Wiz gave no address for this entry.
                None => o.safe("name", "unknown"),
            }
            o.close();
            if let Some(ua) = st(&a.user_agent) {
                w.key("http_request");
                let mut o = JsonWriter::new(w.out);
                o.some("user_agent", Some(ua));
                o.close();
            }
            let mut u = raw_and_unmapped(&mut w, Some(raw), c.kind.as_str());
            u.some("entry_id", Some(id));
            u.some("status", st(&a.status));
            u.close();
        }
    }
    w.close();
}

/// Write-back's `action.applied` event as an API Activity (Update) by the connector; `native`
/// is the native event, whose fields it carries.
pub fn action(native: &serde_json::Value, out: &mut Vec<u8>) {
    let s = |k: &str| native.get(k).and_then(|v| v.as_str()).unwrap_or("");
    let ok = s("status") != "failed";
    let c = Ctx {
        id: s("id"),
        tenant: s("tenant"),
        kind: EventKind::AuditEntry,
        observed_at: s("observed_at"),
        console_json: "",
    };
    let mut w = JsonWriter::new(out);
    head(
        &mut w,
        &c,
        "issues",
        API_ACTIVITY,
        (3, "Update"),
        (1, "Informational"),
        None,
        false,
    );
    w.int("status_id", if ok { 1 } else { 2 });
    w.safe("status", if ok { "Success" } else { "Failure" });
    w.text(
        "message",
        &format!("{} on issue {}", s("action"), s("issue_id")),
    );
    let mut member = |key: &str, v: serde_json::Value| {
        w.key(key);
        serde_json::to_writer(&mut *w.out, &v).expect("a value serializes");
    };
    member("api", serde_json::json!({"operation": s("action")}));
    member(
        "actor",
        serde_json::json!({"user": {"name": s("requested_by")}, "app_name": "wiz-connector"}),
    );
    member("src_endpoint", serde_json::json!({"name": "wiz-connector"}));
    member(
        "resources",
        serde_json::json!([{"uid": s("issue_id"), "type": "Issue"}]),
    );
    let mut u = raw_and_unmapped(&mut w, None, "action.applied");
    for key in ["issue_id", "arguments", "wiz_answer", "origin"] {
        if let Some(v) = native.get(key) {
            u.key(key);
            serde_json::to_writer(&mut *u.out, v).expect("a value serializes");
        }
    }
    u.close();
    w.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mitre_titles_split_into_id_and_name() {
        assert_eq!(mitre("TA0002 Execution"), (Some("TA0002"), "Execution"));
        assert_eq!(
            mitre("T1059 - Command and Scripting Interpreter"),
            (Some("T1059"), "Command and Scripting Interpreter")
        );
        assert_eq!(mitre("T1059.001"), (Some("T1059.001"), "T1059.001"));
        assert_eq!(mitre("Execution"), (None, "Execution"));
        assert_eq!(mitre("Tactic Foo"), (None, "Tactic Foo"));
    }

    #[test]
    fn audit_actions_map_to_api_activities() {
        assert_eq!(api_activity("CreateUser"), (1, "Create"));
        assert_eq!(api_activity("UpdateIssue"), (3, "Update"));
        assert_eq!(api_activity("DeleteReport"), (4, "Delete"));
        assert_eq!(api_activity("ListProjects"), (2, "Read"));
        assert_eq!(api_activity("Login"), (99, "Other"));
        assert_eq!(api_activity("Settle"), (99, "Other"));
    }
}
