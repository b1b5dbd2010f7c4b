//! The `ecs` format: Elastic Common Schema documents with the field choices of Elastic's own Wiz
//! integration (`elastic/integrations`, `packages/wiz`), written from the fields the normalizer
//! decoded. docs/formats.md has the mapping, field by field, and where it departs from Elastic's.
//!
//! Every document starts with `event` and `event.id` (the event id) first, so a sink that needs
//! the id per event reads it from the start of the line, and ends with `wiz.<feed>` (the Wiz
//! fields ECS has no place for), so a tenant's marks go in last ([`super::Lines::mark`]). The
//! node itself is `event.original`, as a string.

use super::{own, Asset, Members};
use crate::event::kind::EventKind;
use crate::feeds::view::{st, txt, AssetView, Item, RuleView, View};
use crate::feeds::FeedName;
use crate::json::{write_escaped, write_issue_url, JsonWriter};
use crate::wiz::page::{Issue, Str};

/// The ECS version written in `ecs.version` (the one Elastic's Wiz integration declares).
pub const VERSION: &str = "8.11.0";

/// Closing braces that end a document: `wiz.<feed>`'s, `wiz`'s and the document's.
pub(crate) const TAIL_DEPTH: usize = 3;

pub use super::ocsf::Ctx;

/// `event`: the id first, then the kind, categories, types, the connector's kind as the action,
/// the creation time, the console link and the node.
#[allow(clippy::too_many_arguments)]
fn event(
    w: &mut JsonWriter<'_>,
    c: &Ctx<'_>,
    feed: &str,
    kind: &str,
    category: &str,
    action: Option<&str>,
    created: Option<Str<'_>>,
    outcome: Option<&str>,
    url: Option<Url<'_>>,
    raw: Option<&str>,
) {
    w.key("event");
    let mut e = JsonWriter::new(w.out);
    e.safe("id", c.id);
    e.safe("kind", kind);
    e.key("category");
    e.out.extend_from_slice(b"[\"");
    e.out.extend_from_slice(category.as_bytes());
    e.out.extend_from_slice(b"\"]");
    e.raw("type", "[\"info\"]");
    e.text("action", action.unwrap_or(c.kind.as_str()));
    e.key("dataset");
    e.out.extend_from_slice(b"\"wiz.");
    e.out.extend_from_slice(feed.as_bytes());
    e.out.push(b'"');
    e.date("created", created);
    e.date("ingested", Some(own(c.observed_at)));
    if let Some(o) = outcome {
        e.safe("outcome", o);
    }
    match url {
        Some(Url::Issue(id)) => {
            e.key("url");
            write_issue_url(e.out, c.console_json, id);
        }
        Some(Url::Given(u)) => e.some("url", Some(u)),
        None => {}
    }
    if let Some(raw) = raw {
        e.key("original");
        write_escaped(e.out, raw);
    }
    e.close();
}

/// A link to the Wiz console: an issue's page, or one Wiz gave.
enum Url<'a> {
    Issue(&'a str),
    Given(Str<'a>),
}

/// `@timestamp` (the item's time, else when the connector saw it), `ecs`, `observer` and
/// `organization` (the tenant: the customer the document belongs to).
fn common(w: &mut JsonWriter<'_>, c: &Ctx<'_>, time: Option<Str<'_>>) {
    let stamp = time
        .and_then(|t| super::ecs_date(t.text))
        .or_else(|| super::ecs_date(c.observed_at))
        .unwrap_or_else(|| c.observed_at.to_string());
    w.text("@timestamp", &stamp);
    w.raw("ecs", "{\"version\":\"8.11.0\"}");
    w.raw("observer", "{\"vendor\":\"Wiz\",\"product\":\"Wiz\"}");
    w.key("organization");
    let mut o = JsonWriter::new(w.out);
    o.safe("id", c.tenant);
    o.close();
}

/// `resource` (when it has an id or a name; Elastic's integration puts the cloud's own id, an
/// ARN or provider id, in `resource.id` when there is one) and `cloud` (when anything of it is
/// known).
fn place(w: &mut JsonWriter<'_>, a: &Asset<'_>) {
    if a.id.is_some() || a.name.is_some() {
        w.key("resource");
        let mut o = JsonWriter::new(w.out);
        o.some("id", a.cloud_id.or(a.id));
        o.some("name", a.name);
        o.some("type", a.kind);
        o.some("sub_type", a.native_type);
        o.close();
    }
    let account = a.account_id.is_some() || a.account_name.is_some();
    if a.provider.is_none() && a.region.is_none() && !account {
        return;
    }
    w.key("cloud");
    let mut o = JsonWriter::new(w.out);
    o.some("provider", a.provider);
    o.some("region", a.region);
    if account {
        o.key("account");
        let mut acc = JsonWriter::new(o.out);
        acc.some("id", a.account_id);
        acc.some("name", a.account_name);
        acc.close();
    }
    o.close();
}

/// `wiz.<feed>`: opened; the caller adds members, closes it, then pushes `wiz`'s brace.
fn open_wiz<'o>(w: &'o mut JsonWriter<'_>, feed: &str) -> JsonWriter<'o> {
    w.key("wiz");
    w.out.push(b'{');
    w.out.push(b'"');
    w.out.extend_from_slice(feed.as_bytes());
    w.out.extend_from_slice(b"\":");
    JsonWriter::new(w.out)
}

fn asset(o: &mut JsonWriter<'_>, key: &str, a: &AssetView<'_>) {
    o.key(key);
    let mut r = JsonWriter::new(o.out);
    r.some("id", st(&a.id));
    r.some("name", st(&a.name));
    r.some("type", st(&a.asset_type));
    r.some("native_type", st(&a.native_type));
    r.some("region", st(&a.region));
    r.some("cloud_platform", st(&a.cloud_platform));
    r.some("provider_id", st(&a.provider_id));
    r.some("provider_unique_id", st(&a.provider_unique_id));
    r.close();
}

/// An Issue's document.
pub fn issue(c: &Ctx<'_>, issue: &Issue<'_>, out: &mut Vec<u8>) {
    let r = issue.record;
    let id = issue.text(&r.id);
    let res = r.resource.as_deref();
    let updated = issue.opt(&r.updated_at);
    let created = issue.opt(&r.created_at);
    let mut w = JsonWriter::new(out);
    event(
        &mut w,
        c,
        "issues",
        "event",
        "configuration",
        None,
        created,
        None,
        Some(Url::Issue(id.text)),
        Some(issue.raw),
    );
    common(&mut w, c, updated.or(created));
    w.some("message", issue.opt(&r.description).or(issue.opt(&r.title)));
    if r.rule_id.is_some() || r.title.is_some() {
        w.key("rule");
        let mut o = JsonWriter::new(w.out);
        o.some("id", issue.opt(&r.rule_id));
        o.some("name", issue.opt(&r.title));
        o.some("description", issue.opt(&r.description));
        o.close();
    }
    place(&mut w, &Asset::of_issue(issue));
    let mut o = open_wiz(&mut w, "issues");
    o.str("id", Some(id));
    o.some("type", issue.opt(&r.issue_type));
    o.some("severity", issue.opt(&r.severity));
    o.key("status");
    let mut s = JsonWriter::new(o.out);
    s.str("value", Some(issue.text(&r.status)));
    s.date("changed_at", issue.opt(&r.status_changed_at));
    s.close();
    o.date("created_at", created);
    o.date("updated_at", updated);
    o.date("resolved_at", issue.opt(&r.resolved_at));
    o.date("due_at", issue.opt(&r.due_at));
    if r.rule_id.is_some() || r.title.is_some() || r.remediation.is_some() {
        let frameworks = issue.frameworks();
        o.key("source_rule");
        let mut s = JsonWriter::new(o.out);
        s.some("id", issue.opt(&r.rule_id));
        s.some("name", issue.opt(&r.title));
        s.some("resolution_recommendation", issue.opt(&r.remediation));
        s.list("frameworks", frameworks.iter().map(|f| own(f)));
        s.close();
    }
    if !r.projects.is_empty() {
        o.key("projects");
        o.out.push(b'[');
        for (i, p) in r.projects.iter().enumerate() {
            if i > 0 {
                o.out.push(b',');
            }
            let mut n = JsonWriter::new(o.out);
            n.str("name", Some(issue.text(p)));
            n.close();
        }
        o.out.push(b']');
    }
    if let Some(e) = res {
        o.key("entity_snapshot");
        let mut s = JsonWriter::new(o.out);
        s.some("id", issue.opt(&e.id));
        s.some("name", issue.opt(&e.name));
        s.some("type", issue.opt(&e.resource_type));
        s.some("native_type", issue.opt(&e.native_type));
        s.some("provider_id", issue.opt(&e.provider_id));
        s.some("region", issue.opt(&e.region));
        if e.cloud_platform.is_some() || e.cloud_provider_url.is_some() {
            s.key("cloud");
            let mut cl = JsonWriter::new(s.out);
            cl.some("platform", issue.opt(&e.cloud_platform));
            cl.some("provider_url", issue.opt(&e.cloud_provider_url));
            cl.close();
        }
        if e.subscription_id.is_some() || e.subscription_name.is_some() {
            s.key("subscription");
            let mut sub = JsonWriter::new(s.out);
            sub.some("external_id", issue.opt(&e.subscription_id));
            sub.some("name", issue.opt(&e.subscription_name));
            sub.close();
        }
        s.close();
    }
    o.close();
    w.out.push(b'}');
    w.close();
}

/// The document of an Issue that vanished from Wiz: no node, `wiz.issues.vanished`.
pub fn vanished(c: &Ctx<'_>, issue_id: &str, last_severity: Option<&str>, out: &mut Vec<u8>) {
    let mut w = JsonWriter::new(out);
    event(
        &mut w,
        c,
        "issues",
        "event",
        "configuration",
        Some(EventKind::Resolved.as_str()),
        None,
        None,
        Some(Url::Issue(issue_id)),
        None,
    );
    common(&mut w, c, None);
    let mut o = open_wiz(&mut w, "issues");
    o.text("id", issue_id);
    if let Some(s) = last_severity {
        o.text("severity", s);
    }
    o.raw("status", "{\"value\":\"RESOLVED\"}");
    o.raw("vanished", "true");
    o.close();
    w.out.push(b'}');
    w.close();
}

/// The document of a node that cannot be read (a quarantine, see
/// [`crate::event::unreadable`]): `event.kind` `pipeline_error` (ECS's kind for "an error during
/// the ingestion pipeline") with `event.type` `error` and no category, `error.type` `unreadable_node` and `error.message` the reason,
/// without `event.original` (the node is never carried whole); what is known of it under
/// `wiz.<feed>.unreadable`, the item's id in `wiz.<feed>.id`.
pub fn unreadable(
    c: &Ctx<'_>,
    feed: FeedName,
    node: &crate::wiz::page::NodeError,
    out: &mut Vec<u8>,
) {
    let mut w = JsonWriter::new(out);
    w.key("event");
    let mut e = JsonWriter::new(w.out);
    e.safe("id", c.id);
    e.safe("kind", "pipeline_error");
    // No `event.category` fits a record that could not be read; `error` is the type for it.
    e.raw("type", "[\"error\"]");
    e.text("action", c.kind.as_str());
    e.key("dataset");
    e.out.extend_from_slice(b"\"wiz.");
    e.out.extend_from_slice(feed.as_str().as_bytes());
    e.out.push(b'"');
    e.date("ingested", Some(own(c.observed_at)));
    if let (FeedName::Issues, Some(id)) = (feed, &node.node.id) {
        e.key("url");
        write_issue_url(e.out, c.console_json, id);
    }
    e.close();
    common(&mut w, c, None);
    w.text("message", &super::unreadable_message(feed, node));
    w.key("error");
    let mut er = JsonWriter::new(w.out);
    er.safe("type", "unreadable_node");
    er.text("message", &node.reason);
    er.close();
    let mut o = open_wiz(&mut w, feed.as_str());
    if let Some(id) = &node.node.id {
        o.text("id", id);
    }
    super::unreadable_member(&mut o, node);
    o.close();
    w.out.push(b'}');
    w.close();
}

/// `threat`: the MITRE ATT&CK tactics and techniques of a detection rule's sub-categories.
fn threat(w: &mut JsonWriter<'_>, rule: Option<&RuleView<'_>>) {
    let mut tactics: Vec<&str> = Vec::new();
    let mut techniques: Vec<&str> = Vec::new();
    for sc in rule
        .and_then(|r| r.security_sub_categories.as_ref())
        .into_iter()
        .flatten()
    {
        let (Some(cat), Some(title)) = (
            sc.category.as_ref().and_then(|c| txt(&c.name)),
            txt(&sc.title),
        ) else {
            continue;
        };
        if cat.contains("Technique") {
            techniques.push(title);
        } else if cat.contains("Tactic") {
            tactics.push(title);
        }
    }
    if tactics.is_empty() && techniques.is_empty() {
        return;
    }
    w.key("threat");
    let mut t = JsonWriter::new(w.out);
    t.safe("framework", "MITRE ATT&CK");
    for (key, titles) in [("tactic", &tactics), ("technique", &techniques)] {
        if titles.is_empty() {
            continue;
        }
        t.key(key);
        let mut o = JsonWriter::new(t.out);
        let split: Vec<(Option<&str>, &str)> =
            titles.iter().map(|x| super::ocsf::mitre(x)).collect();
        if split.iter().any(|(id, _)| id.is_some()) {
            o.list("id", split.iter().filter_map(|(id, _)| id.map(own)));
        }
        o.list("name", split.iter().map(|(_, n)| own(n)));
        o.close();
    }
    t.close();
}

/// `package` (Elastic fills it both at the top and under `vulnerability`), when the finding
/// names one.
fn package(w: &mut JsonWriter<'_>, v: &crate::feeds::view::VulnerabilityView<'_>) {
    if v.detailed_name.is_none() {
        return;
    }
    w.key("package");
    let mut p = JsonWriter::new(w.out);
    p.some("name", st(&v.detailed_name));
    p.some("version", st(&v.version));
    p.some("fixed_version", st(&v.fixed_version));
    p.close();
}

/// The document of an item of a feed beyond Issues; `raw` is its node, verbatim.
pub fn feed_item(c: &Ctx<'_>, feed: FeedName, item: &Item<'_>, raw: &str, out: &mut Vec<u8>) {
    let id = Str {
        text: &item.id.0,
        verbatim: matches!(item.id.0, std::borrow::Cow::Borrowed(_)),
    };
    let name = feed.as_str();
    let mut w = JsonWriter::new(out);
    match &item.view {
        View::Vulnerability(v) => {
            let a = v.vulnerable_asset.as_ref();
            event(
                &mut w,
                c,
                name,
                "alert",
                "vulnerability",
                None,
                st(&v.first_detected_at),
                None,
                st(&v.portal_url).map(Url::Given),
                Some(raw),
            );
            common(&mut w, c, st(&v.last_detected_at));
            w.some("message", v.description.str().or(st(&v.name)));
            w.key("vulnerability");
            let mut o = JsonWriter::new(w.out);
            o.some("id", st(&v.name));
            o.some("description", v.description.str());
            o.some("severity", item.severity_raw().map(own));
            if v.score.is_some_and(f64::is_finite) {
                o.key("score");
                let mut s = JsonWriter::new(o.out);
                s.num("base", v.score);
                s.close();
            }
            o.raw("scanner", "{\"vendor\":\"Wiz\"}");
            package(&mut o, v);
            o.close();
            package(&mut w, v);
            if let Some(a) = a {
                place(&mut w, &Asset::of(a));
            }
            let mut o = open_wiz(&mut w, name);
            o.some("id", Some(id));
            o.some("name", st(&v.name));
            o.some("status", Some(own(item.status())));
            o.some("cvss_severity", st(&v.cvss_severity));
            o.some("vendor_severity", st(&v.vendor_severity));
            o.num("score", v.score);
            o.date("first_detected_at", st(&v.first_detected_at));
            o.date("last_detected_at", st(&v.last_detected_at));
            o.date("resolved_at", st(&v.resolved_at));
            o.some("detailed_name", st(&v.detailed_name));
            o.some("version", st(&v.version));
            o.some("fixed_version", st(&v.fixed_version));
            o.some("remediation", v.remediation.str());
            o.some("portal_url", st(&v.portal_url));
            if let Some(a) = a {
                asset(&mut o, "vulnerable_asset", a);
            }
            o.close();
        }
        View::Configuration(cf) => {
            let res = cf.resource.as_ref();
            let rule = cf.rule.as_ref();
            let (evaluation, outcome) = match txt(&cf.result) {
                Some("PASS") => (Some("passed"), Some("success")),
                Some("FAIL") => (Some("failed"), Some("failure")),
                _ => (None, None),
            };
            event(
                &mut w,
                c,
                name,
                "state",
                "configuration",
                None,
                st(&cf.analyzed_at),
                outcome,
                None,
                Some(raw),
            );
            common(&mut w, c, st(&cf.updated_at).or(st(&cf.analyzed_at)));
            w.some(
                "message",
                rule.and_then(|r| r.description.str().or(st(&r.name))),
            );
            if let Some(e) = evaluation {
                w.key("result");
                let mut o = JsonWriter::new(w.out);
                o.safe("evaluation", e);
                o.close();
            }
            if let Some(r) = rule {
                w.key("rule");
                let mut o = JsonWriter::new(w.out);
                o.some("id", st(&r.short_id).or(st(&r.id)));
                o.some("uuid", st(&r.id));
                o.some("name", st(&r.name));
                o.some("description", r.description.str());
                o.some("remediation", st(&cf.remediation));
                o.close();
            }
            if let Some(a) = res {
                place(&mut w, &Asset::of(a));
            }
            let mut o = open_wiz(&mut w, name);
            o.some("id", Some(id));
            o.some("status", Some(own(item.status())));
            o.some("result", st(&cf.result));
            o.some("severity", st(&cf.severity));
            o.date("analyzed_at", st(&cf.analyzed_at));
            o.date("updated_at", st(&cf.updated_at));
            o.some("remediation", st(&cf.remediation));
            if let Some(a) = res {
                asset(&mut o, "resource", a);
            }
            o.close();
        }
        View::Detection(d) => {
            let rule = d.rule_match.as_ref().and_then(|m| m.rule.as_ref());
            let issue = d.issue.as_ref().and_then(|i| txt(&i.id));
            event(
                &mut w,
                c,
                name,
                "alert",
                "intrusion_detection",
                None,
                st(&d.created_at),
                None,
                issue.map(Url::Issue),
                Some(raw),
            );
            common(&mut w, c, st(&d.created_at));
            w.some(
                "message",
                st(&d.description).or(rule.and_then(|r| st(&r.name))),
            );
            if let Some(r) = rule {
                w.key("rule");
                let mut o = JsonWriter::new(w.out);
                o.some("id", st(&r.id));
                o.some("name", st(&r.name));
                o.close();
            }
            threat(&mut w, rule);
            place(&mut w, &super::ocsf::detection_asset(d));
            if let Some(actor) = d.primary_actor.as_ref().and_then(|a| st(&a.name)) {
                w.key("related");
                let mut o = JsonWriter::new(w.out);
                o.list("user", [actor]);
                o.close();
            }
            let mut o = open_wiz(&mut w, name);
            o.some("id", Some(id));
            o.some("type", st(&d.detection_type));
            o.some("severity", st(&d.severity));
            o.date("created_at", st(&d.created_at));
            o.date("updated_at", st(&d.updated_at));
            o.some("issue_id", d.issue.as_ref().and_then(|i| st(&i.id)));
            if let Some(a) = d.primary_actor.as_ref() {
                asset(&mut o, "primary_actor", a);
            }
            if let Some(a) = d.primary_resource.as_ref() {
                asset(&mut o, "primary_resource", a);
            }
            o.close();
        }
        View::Audit(a) => {
            let action = txt(&a.action).map(str::to_ascii_lowercase);
            let category = if action.as_deref() == Some("login") {
                "authentication"
            } else {
                "configuration"
            };
            let outcome = match txt(&a.status) {
                Some("SUCCESS") => Some("success"),
                Some("FAILED" | "FAILURE") => Some("failure"),
                _ => None,
            };
            event(
                &mut w,
                c,
                name,
                "event",
                category,
                Some(action.as_deref().unwrap_or("audit.entry")),
                None,
                outcome,
                None,
                Some(raw),
            );
            common(&mut w, c, st(&a.timestamp));
            let who = a
                .user
                .as_ref()
                .filter(|u| u.id.is_some() || u.name.is_some())
                .or(a.service_account.as_ref());
            if let Some(u) = who.filter(|u| u.id.is_some() || u.name.is_some()) {
                w.key("user");
                let mut o = JsonWriter::new(w.out);
                o.some("id", st(&u.id));
                o.some("name", st(&u.name));
                o.close();
            }
            let ip = st(&a.source_ip).filter(|ip| ip.text.parse::<std::net::IpAddr>().is_ok());
            if let Some(ip) = ip {
                w.key("source");
                let mut o = JsonWriter::new(w.out);
                o.some("ip", Some(ip));
                o.close();
            }
            if let Some(ua) = st(&a.user_agent) {
                w.key("user_agent");
                let mut o = JsonWriter::new(w.out);
                o.some("original", Some(ua));
                o.close();
            }
            if a.request_id.is_some() {
                w.key("http");
                w.out.extend_from_slice(b"{\"request\":");
                let mut o = JsonWriter::new(w.out);
                o.some("id", st(&a.request_id));
                o.close();
                w.out.push(b'}');
            }
            let user = who.and_then(|u| st(&u.name));
            if user.is_some() || ip.is_some() {
                w.key("related");
                let mut o = JsonWriter::new(w.out);
                o.list("user", user);
                o.list("ip", ip);
                o.close();
            }
            let mut o = open_wiz(&mut w, name);
            o.some("id", Some(id));
            o.some("action", st(&a.action));
            o.some("status", st(&a.status));
            o.date("timestamp", st(&a.timestamp));
            o.some("request_id", st(&a.request_id));
            if let Some(u) = a.user.as_ref() {
                o.key("user");
                let mut p = JsonWriter::new(o.out);
                p.some("id", st(&u.id));
                p.some("name", st(&u.name));
                p.close();
            }
            if let Some(u) = a.service_account.as_ref() {
                o.key("service_account");
                let mut p = JsonWriter::new(o.out);
                p.some("id", st(&u.id));
                p.some("name", st(&u.name));
                p.close();
            }
            o.close();
        }
    }
    w.out.push(b'}');
    w.close();
}

/// Write-back's `action.applied` document; `native` is the native event.
pub fn action(native: &serde_json::Value, out: &mut Vec<u8>) {
    let s = |k: &str| native.get(k).and_then(|v| v.as_str()).unwrap_or("");
    let c = Ctx {
        id: s("id"),
        tenant: s("tenant"),
        kind: EventKind::AuditEntry,
        observed_at: s("observed_at"),
        console_json: "",
    };
    let ok = s("status") != "failed";
    let mut w = JsonWriter::new(out);
    event(
        &mut w,
        &c,
        "issues",
        "event",
        "configuration",
        Some("action.applied"),
        None,
        Some(if ok { "success" } else { "failure" }),
        Some(Url::Given(own(s("url")))),
        None,
    );
    common(&mut w, &c, None);
    w.text(
        "message",
        &format!("{} on issue {}", s("action"), s("issue_id")),
    );
    w.key("user");
    let mut o = JsonWriter::new(w.out);
    o.text("name", s("requested_by"));
    o.close();
    let mut o = open_wiz(&mut w, "issues");
    for key in [
        "issue_id",
        "action",
        "arguments",
        "status",
        "wiz_answer",
        "origin",
    ] {
        if let Some(v) = native.get(key) {
            o.key(key);
            serde_json::to_writer(&mut *o.out, v).expect("a value serializes");
        }
    }
    o.close();
    w.out.push(b'}');
    w.close();
}
