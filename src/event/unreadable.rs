//! Quarantine: a node of a page that the decoder refuses (above the size limit, nested too deep,
//! not an object, no `id`, a field of the wrong type) is not a reason to stall its tenant. The
//! rest of the page is delivered, and the node becomes one event of kind `<item>.unreadable`
//! (`issue.unreadable`, `vulnerability.unreadable`, `detection.unreadable`, `audit.unreadable`,
//! `configuration_finding.unreadable`) that says what it is without carrying it: the item's id
//! when one can be read, why it was refused, its size, the SHA-256 of its bytes and its first
//! bytes ([`crate::wiz::page::UNREADABLE_HEAD`]).
//!
//! The same node is quarantined once until its bytes change: the state store keeps a record per
//! quarantined node ([`record_id`], [`record`]) next to the feed's item states, committed with
//! the page after the sinks took it, like any delivered state. Its status,
//! [`UNREADABLE`], is never a Wiz status, so nothing that scans states by status (reconciliation,
//! baselines) ever sees it.

use crate::change::Known;
use crate::event::id::event_id;
use crate::event::kind::EventKind;
use crate::feeds::FeedName;
use crate::format::{ecs, ocsf, Format, Lines};
use crate::json::{write_issue_url, JsonWriter};
use crate::wiz::page::NodeError;

/// The status recorded for a quarantined node (never a Wiz status).
pub const UNREADABLE: &str = "UNREADABLE";

/// Starts the id of every quarantine record in the state store. Wiz ids never start with `!`, so
/// a record never shadows an item's state.
const RECORD_PREFIX: &str = "!unreadable/";

/// The state-store id of the quarantine record of `node`: by the item's id when it has one (its
/// later versions then replace the record), else by the SHA-256 of its bytes.
pub fn record_id(node: &NodeError) -> String {
    format!("{RECORD_PREFIX}{}", node.node.key())
}

/// The first 16 bytes of the node's SHA-256: what its record holds.
pub fn fingerprint(node: &NodeError) -> [u8; 16] {
    let mut out = [0u8; 16];
    // `sha256` is 64 hex digits, made by `NodeError::new`.
    let _ = hex::decode_to_slice(&node.node.sha256.as_bytes()[..32], &mut out);
    out
}

/// The record that says `node` was quarantined (silent: it is never reported vanished).
pub fn record(node: &NodeError) -> Known {
    Known {
        fingerprint: fingerprint(node),
        status: UNREADABLE.to_string(),
        severity: None,
        silent: true,
    }
}

/// Whether `node` is to be quarantined: no record of it, or one of other bytes.
pub fn is_new(node: &NodeError, recorded: Option<&Known>) -> bool {
    recorded.is_none_or(|k| k.fingerprint != fingerprint(node))
}

/// Writes the quarantine event of `node`, a node of `feed` refused on a page of `tenant`'s, in
/// every format of `lines` (not ended: the caller ends it). `console_json`: the tenant's console,
/// escaped for a JSON string. Returns its kind.
pub fn write(
    tenant: &str,
    console_json: &str,
    feed: FeedName,
    node: &NodeError,
    observed_at: &str,
    lines: &mut Lines,
) -> EventKind {
    let kind = feed.unreadable_kind();
    let scoped = format!("{}/{}", feed.as_str(), record_id(node));
    let id = event_id(tenant, &scoped, &fingerprint(node));
    let mut w = JsonWriter::new(&mut lines.native);
    w.safe("id", &id);
    w.safe("source", "wiz");
    w.safe("tenant", tenant);
    w.safe("feed", feed.as_str());
    w.safe("kind", kind.as_str());
    // Unknown, which the ladder calls `info`: a consumer that routes on severity still gets it.
    w.safe("severity", "info");
    match &node.node.id {
        Some(item) => w.escaped(feed.id_field(), item),
        None => w.raw(feed.id_field(), "null"),
    }
    w.escaped("observed_at", observed_at);
    if let (FeedName::Issues, Some(item)) = (feed, &node.node.id) {
        w.key("url");
        write_issue_url(w.out, console_json, item);
    }
    crate::format::unreadable_member(&mut w, node);
    w.close();
    let ctx = ocsf::Ctx {
        id: &id,
        tenant,
        kind,
        observed_at,
        console_json,
    };
    if lines.formats.has(Format::Ocsf) {
        ocsf::unreadable(&ctx, feed, node, &mut lines.ocsf);
    }
    if lines.formats.has(Format::Ecs) {
        ecs::unreadable(&ctx, feed, node, &mut lines.ecs);
    }
    kind
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::FormatSet;

    fn node(raw: &str) -> NodeError {
        NodeError::new("not an object but null", raw)
    }

    #[test]
    fn a_record_is_keyed_by_id_else_by_bytes_and_new_only_when_the_bytes_change() {
        let a = NodeError::new("r", r#"{"id":"x","deep":[[1]]}"#);
        let b = NodeError::new("r", r#"{"id":"x","deep":[[2]]}"#);
        assert_eq!(record_id(&a), "!unreadable/x");
        assert_eq!(record_id(&a), record_id(&b));
        assert!(is_new(&a, None));
        assert!(!is_new(&a, Some(&record(&a))));
        assert!(is_new(&b, Some(&record(&a))));
        let anon = node("null");
        assert_eq!(
            record_id(&anon),
            format!("!unreadable/sha256:{}", anon.node.sha256)
        );
        assert!(record(&anon).silent);
        assert_eq!(record(&anon).status, UNREADABLE);
    }

    #[test]
    fn the_event_says_what_the_node_is_without_carrying_it() {
        let big = format!(r#"{{"id":"i-1","blob":"{}"}}"#, "é".repeat(300));
        let n = NodeError::new("2000 bytes, above the limit", &big);
        let mut lines = Lines::new(FormatSet::of([Format::Ocsf, Format::Ecs]));
        let kind = write(
            "acme",
            "https://app.wiz.io",
            FeedName::Issues,
            &n,
            "2026-12-05T00:00:00Z",
            &mut lines,
        );
        lines.end_event();
        assert_eq!(kind, EventKind::IssueUnreadable);
        let v: serde_json::Value = serde_json::from_slice(&lines.native).unwrap();
        assert_eq!(v["kind"], "issue.unreadable");
        assert_eq!(v["issue_id"], "i-1");
        assert_eq!(v["unreadable"]["bytes"], big.len());
        assert_eq!(v["unreadable"]["reason"], "2000 bytes, above the limit");
        assert_eq!(v["unreadable"]["sha256"].as_str().unwrap().len(), 64);
        let head = v["unreadable"]["head"].as_str().unwrap();
        assert!(head.len() <= crate::wiz::page::UNREADABLE_HEAD && head.len() > 200);
        assert!(big.starts_with(head));
        assert!(v["url"].as_str().unwrap().ends_with("issue~'i-1)"));
        // The same id in every format, and the item's id where each format keeps it.
        let o: serde_json::Value = serde_json::from_slice(&lines.ocsf).unwrap();
        let e: serde_json::Value = serde_json::from_slice(&lines.ecs).unwrap();
        assert_eq!(o["metadata"]["uid"], v["id"]);
        assert_eq!(e["event"]["id"], v["id"]);
        assert_eq!(o["finding_info"]["uid"], "i-1");
        assert_eq!(e["wiz"]["issues"]["id"], "i-1");
        assert_eq!(e["event"]["kind"], "pipeline_error");
        for line in [&lines.native, &lines.ocsf, &lines.ecs] {
            assert_eq!(
                crate::format::item_id(line.trim_ascii_end()).as_deref(),
                Some("i-1")
            );
        }
        // Without an id: null where the id goes, the digest in OCSF's uid.
        let mut lines = Lines::new(FormatSet::of([Format::Ocsf]));
        let anon = node("null");
        write(
            "acme",
            "https://app.wiz.io",
            FeedName::Audit,
            &anon,
            "2026-12-05T00:00:00Z",
            &mut lines,
        );
        let v: serde_json::Value = serde_json::from_slice(&lines.native).unwrap();
        assert_eq!(v["kind"], "audit.unreadable");
        assert!(v["entry_id"].is_null());
        assert!(v.get("url").is_none());
        let o: serde_json::Value = serde_json::from_slice(&lines.ocsf).unwrap();
        assert_eq!(
            o["finding_info"]["uid"],
            format!("sha256:{}", anon.node.sha256)
        );
    }
}
