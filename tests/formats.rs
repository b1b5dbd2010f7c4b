//! Output formats (issue 21): every event of every feed and kind, written from the simulator's
//! nodes in `ocsf`, validates against the OCSF 1.8.0 schema with zero errors; in `ecs` it has the
//! fields Elastic's Wiz integration fills; and every format carries the same events with the
//! same ids as `native`, line for line.

mod common;
#[path = "support/formats.rs"]
mod formats;
#[path = "support/ocsf.rs"]
mod ocsf;

use formats::{ecs_problems, id_of};

use std::collections::BTreeSet;

use bytes::Bytes;
use serde_json::Value;
use wiz_connector::event::{issue_fingerprint, EventKind, Normalizer};
use wiz_connector::feeds::normalize::{decode, FeedNormalizer};
use wiz_connector::feeds::FeedName;
use wiz_connector::format::{Format, FormatSet, Lines, Mark};
use wiz_connector::sim::feed_data::FeedSets;
use wiz_connector::sim::IssueSet;
use wiz_connector::wiz::page::parse_feed_page;
use wiz_connector::wiz::parse_page;

const OBSERVED: &str = "2026-12-04T10:00:00.000Z";

fn all_formats() -> Lines {
    Lines::new(FormatSet::of([Format::Ocsf, Format::Ecs]))
}

/// The kinds an item of `feed` can be reported with.
fn kinds(feed: FeedName) -> Vec<EventKind> {
    use EventKind::*;
    match feed {
        FeedName::Issues => vec![Opened, Updated, Resolved, Rejected, Reopened],
        FeedName::Vulnerabilities => vec![
            VulnerabilityOpened,
            VulnerabilityUpdated,
            VulnerabilityResolved,
            VulnerabilityReopened,
        ],
        FeedName::CloudConfiguration => vec![
            ConfigurationOpened,
            ConfigurationUpdated,
            ConfigurationResolved,
        ],
        FeedName::Detections => vec![DetectionCreated, DetectionUpdated],
        FeedName::Audit => vec![AuditEntry],
    }
}

/// Every line of `text` as JSON.
fn parse(text: &[u8]) -> Vec<Value> {
    std::str::from_utf8(text)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l}: {e}")))
        .collect()
}

/// Checks one page's lines in every format: the same number of events, the same ids in the
/// same order, OCSF without errors or undefined attributes, ECS without problems, and the node
/// in `raw_data` / `event.original` as the native event's `raw_event`.
///
/// With `WIZ_FORMATS_DUMP=<dir>`, the lines are also appended to `<dir>/<format>.jsonl` (to run
/// another validator over them, such as the OCSF project's).
fn check(lines: Lines, schema: &ocsf::Schema, seen: &mut BTreeSet<(String, String)>) -> usize {
    if let Ok(dir) = std::env::var("WIZ_FORMATS_DUMP") {
        use std::io::Write;
        for (name, text) in [
            ("native", &lines.native),
            ("ocsf", &lines.ocsf),
            ("ecs", &lines.ecs),
        ] {
            let path = std::path::Path::new(&dir).join(format!("{name}.jsonl"));
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            f.write_all(text).unwrap();
        }
    }
    // Every line starts with its id, whatever the format (a sink reads it from there).
    for text in [&lines.native, &lines.ocsf, &lines.ecs] {
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let id = wiz_connector::event::event_id_of(line).expect("an id at the start");
            let e: Value = serde_json::from_slice(line).unwrap();
            assert!(
                [&e["id"], &e["metadata"]["uid"], &e["event"]["id"]].contains(&&Value::from(id))
            );
        }
    }
    // Every event names its Wiz item the same way in every format (a Kafka record's key).
    let split = |t: &[u8]| -> Vec<Vec<u8>> {
        t.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect()
    };
    for ((n, o), e) in split(&lines.native)
        .iter()
        .zip(split(&lines.ocsf))
        .zip(split(&lines.ecs))
    {
        let item = wiz_connector::format::item_id(n)
            .unwrap_or_else(|| panic!("no item id in {}", String::from_utf8_lossy(n)))
            .into_owned();
        assert_eq!(
            wiz_connector::format::item_id(&o).as_deref(),
            Some(item.as_str())
        );
        assert_eq!(
            wiz_connector::format::item_id(&e).as_deref(),
            Some(item.as_str())
        );
    }
    let native = parse(&lines.native);
    let ocsf = parse(&lines.ocsf);
    let ecs = parse(&lines.ecs);
    assert_eq!(native.len(), ocsf.len());
    assert_eq!(native.len(), ecs.len());
    for ((n, o), e) in native.iter().zip(&ocsf).zip(&ecs) {
        let id = id_of(Format::Native, n);
        assert_eq!(id_of(Format::Ocsf, o), id);
        assert_eq!(id_of(Format::Ecs, e), id);
        let report = schema.validate(o);
        assert!(report.errors.is_empty(), "{:?}\n{o:#}", report.errors);
        assert!(report.undefined.is_empty(), "{:?}\n{o:#}", report.undefined);
        let problems = ecs_problems(e);
        assert!(problems.is_empty(), "{problems:?}\n{e:#}");
        assert_eq!(o["metadata"]["tenant_uid"], "acme");
        assert_eq!(e["organization"]["id"], "acme");
        if !n["raw_event"].is_null() {
            let raw: Value = serde_json::from_str(o["raw_data"].as_str().unwrap()).unwrap();
            assert_eq!(raw, n["raw_event"]);
            let original: Value =
                serde_json::from_str(e["event"]["original"].as_str().unwrap()).unwrap();
            assert_eq!(original, n["raw_event"]);
        }
        assert_eq!(o["unmapped"]["kind"], n["kind"]);
        if n["kind"] == "audit.entry" {
            // Elastic's choice: the Wiz action, lower-cased (`Login` is `login`).
            let action = n["action"].as_str().unwrap().to_lowercase();
            assert_eq!(e["event"]["action"], action.as_str());
        } else {
            assert_eq!(e["event"]["action"], n["kind"]);
        }
        seen.insert((o["class_uid"].to_string(), o["activity_id"].to_string()));
    }
    native.len()
}

#[test]
fn every_issue_in_every_kind_validates_in_ocsf_and_matches_in_ecs() {
    let schema = ocsf::Schema::bundled();
    let set = IssueSet::generate(2026, 300);
    let body = serde_json::json!({"data": {"issues": {
        "nodes": set.issues,
        "pageInfo": {"hasNextPage": false, "endCursor": null}
    }}});
    let page = parse_page(Bytes::from(serde_json::to_vec(&body).unwrap())).unwrap();
    let mut n = Normalizer::with_console("acme", "https://app.wiz.io");
    let mut seen = BTreeSet::new();
    let mut types = BTreeSet::new();
    let mut total = 0;
    for kind in kinds(FeedName::Issues) {
        let mut lines = all_formats();
        for issue in page.issues() {
            let issue = issue.unwrap();
            types.insert(issue.record.issue_type.is_some());
            let fp = issue_fingerprint(&issue);
            n.normalize_with(&issue, Some(kind), &fp, None, OBSERVED, &mut lines);
            if total % 7 == 0 {
                lines.mark(Mark::Baseline);
            }
            lines.end_event();
            total += 1;
        }
        // An issue that vanished has no node.
        n.vanished("gone-1", &[3; 16], Some("HIGH"), OBSERVED, &mut lines);
        lines.mark(Mark::Origin);
        lines.end_event();
        check(lines, &schema, &mut seen);
    }
    // Both classes of Issues, each with every activity.
    let want: BTreeSet<(String, String)> = ["2003", "2004"]
        .iter()
        .flat_map(|c| ["1", "2", "3"].map(|a| (c.to_string(), a.to_string())))
        .collect();
    assert_eq!(seen, want);
}

#[test]
fn every_feed_item_in_every_kind_validates_in_ocsf_and_matches_in_ecs() {
    let schema = ocsf::Schema::bundled();
    let sets = FeedSets::generate(2026, 200);
    let mut n = FeedNormalizer::new("acme", "https://app.wiz.io");
    for feed in [
        FeedName::Vulnerabilities,
        FeedName::CloudConfiguration,
        FeedName::Detections,
        FeedName::Audit,
    ] {
        let f = feed.feed().unwrap();
        let nodes: Vec<Value> = match feed {
            FeedName::Vulnerabilities => sets
                .vulnerabilities
                .iter()
                .map(|v| serde_json::json!(v))
                .collect(),
            FeedName::Detections => sets
                .detections
                .iter()
                .map(|v| serde_json::json!(v))
                .collect(),
            FeedName::Audit => sets.audit.iter().map(|v| serde_json::json!(v)).collect(),
            _ => sets
                .configuration
                .iter()
                .map(|v| serde_json::json!(v))
                .collect(),
        };
        assert!(nodes.len() >= 50, "{feed:?}: {} nodes", nodes.len());
        let body = serde_json::json!({"data": {f.root: {
            "nodes": nodes,
            "pageInfo": {"hasNextPage": false, "endCursor": null}
        }}});
        let page =
            parse_feed_page(Bytes::from(serde_json::to_vec(&body).unwrap()), f.root).unwrap();
        let mut seen = BTreeSet::new();
        for kind in kinds(feed) {
            let mut lines = all_formats();
            for raw in page.nodes() {
                let item = decode(feed, raw).unwrap();
                let fp = item.fingerprint();
                n.write(feed, &item, raw, kind, &fp, None, OBSERVED, &mut lines);
                lines.end_event();
            }
            let count = check(lines, &schema, &mut seen);
            assert_eq!(count, nodes.len());
        }
        let classes: BTreeSet<&str> = seen.iter().map(|(c, _)| c.as_str()).collect();
        let want = match feed {
            FeedName::Vulnerabilities => "2002",
            FeedName::CloudConfiguration => "2003",
            FeedName::Detections => "2004",
            _ => "6003",
        };
        assert_eq!(classes, BTreeSet::from([want]), "{feed:?}");
    }
}

/// The golden events: hand-written nodes of each feed (`tests/fixtures/formats/<name>.node.json`)
/// and their events in each format (`<name>.<format>.json`), checked by hand field by field
/// against docs/formats.md. `WIZ_GOLDEN_WRITE=1` rewrites the expected files (then review the
/// diff by hand before committing it).
#[test]
fn golden_events_per_feed_and_format() {
    use wiz_connector::wiz::page::Page;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/formats");
    let cases = [
        ("issue_control", FeedName::Issues, EventKind::Updated),
        ("issue_configuration", FeedName::Issues, EventKind::Resolved),
        (
            "vulnerabilities",
            FeedName::Vulnerabilities,
            EventKind::VulnerabilityOpened,
        ),
        (
            "cloud_configuration",
            FeedName::CloudConfiguration,
            EventKind::ConfigurationOpened,
        ),
        (
            "detections",
            FeedName::Detections,
            EventKind::DetectionCreated,
        ),
        ("audit", FeedName::Audit, EventKind::AuditEntry),
    ];
    let write = std::env::var("WIZ_GOLDEN_WRITE").is_ok();
    let schema = ocsf::Schema::bundled();
    for (name, feed, kind) in cases {
        let node = std::fs::read_to_string(dir.join(format!("{name}.node.json"))).unwrap();
        let node = node.trim();
        let mut lines = all_formats();
        if feed == FeedName::Issues {
            let page = Page::single(node).unwrap();
            let issue = page.issues().next().unwrap().unwrap();
            let fp = issue_fingerprint(&issue);
            Normalizer::with_console("acme", "https://app.wiz.io").normalize_with(
                &issue,
                Some(kind),
                &fp,
                None,
                OBSERVED,
                &mut lines,
            );
        } else {
            let item = decode(feed, node).unwrap();
            let fp = item.fingerprint();
            FeedNormalizer::new("acme", "https://app.wiz.io")
                .write(feed, &item, node, kind, &fp, None, OBSERVED, &mut lines);
        }
        lines.end_event();
        let mut seen = BTreeSet::new();
        check(
            Lines {
                native: lines.native.clone(),
                ocsf: lines.ocsf.clone(),
                ecs: lines.ecs.clone(),
                formats: lines.formats,
            },
            &schema,
            &mut seen,
        );
        for (format, text) in [
            ("native", &lines.native),
            ("ocsf", &lines.ocsf),
            ("ecs", &lines.ecs),
        ] {
            let got: Value = serde_json::from_slice(text).unwrap();
            let path = dir.join(format!("{name}.{format}.json"));
            if write {
                std::fs::write(&path, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
                continue;
            }
            let want: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(got, want, "{name} in {format} (left: written now)");
        }
    }
}

/// A quarantine event (a node that cannot be read, issue 18) of every feed validates in OCSF
/// and passes the ECS checks, with the same id and item in every format, and carries no more of
/// the node than its first bytes.
#[test]
fn quarantine_events_of_every_feed_validate_in_ocsf_and_ecs() {
    use wiz_connector::event::unreadable;
    use wiz_connector::wiz::page::NodeError;
    let schema = ocsf::Schema::bundled();
    let big = format!(r#"{{"id":"item-1","blob":"{}"}}"#, "x\\\"".repeat(10_000));
    let mut seen = BTreeSet::new();
    for feed in FeedName::ALL {
        let mut lines = all_formats();
        let node = NodeError::new("40013 bytes, above the limit", &big);
        let kind = unreadable::write(
            "acme",
            "https://app.wiz.io",
            feed,
            &node,
            OBSERVED,
            &mut lines,
        );
        lines.end_event();
        assert_eq!(kind, feed.unreadable_kind());
        assert!(kind.as_str().ends_with(".unreadable"));
        for text in [&lines.native, &lines.ocsf, &lines.ecs] {
            assert!(text.len() < 2048, "{}", String::from_utf8_lossy(text));
        }
        assert_eq!(check(lines, &schema, &mut seen), 1);
        // Without a readable id: OCSF's uid is the digest, and it still validates.
        let mut lines = all_formats();
        let anon = NodeError::new("not an object but null", "null");
        unreadable::write(
            "acme",
            "https://app.wiz.io",
            feed,
            &anon,
            OBSERVED,
            &mut lines,
        );
        lines.end_event();
        let o = &parse(&lines.ocsf)[0];
        let report = schema.validate(o);
        assert!(report.errors.is_empty(), "{:?}\n{o:#}", report.errors);
        assert!(report.undefined.is_empty(), "{:?}\n{o:#}", report.undefined);
        assert_eq!(
            o["finding_info"]["uid"].as_str(),
            Some(format!("sha256:{}", anon.node.sha256).as_str())
        );
        assert!(ecs_problems(&parse(&lines.ecs)[0]).is_empty());
    }
    // One class and activity for all: Detection Finding, 99 Other.
    assert_eq!(
        seen,
        BTreeSet::from([("2004".to_string(), "99".to_string())])
    );
}
