//! What the tests know of the output formats: where each keeps the event id, the feed and the
//! item, and what an ECS document must have.
#![allow(dead_code)]

use serde_json::Value;
use wiz_connector::format::Format;

/// The event id of a line in `format`.
pub fn id_of(format: Format, e: &Value) -> String {
    let v = match format {
        Format::Native => &e["id"],
        Format::Ocsf => &e["metadata"]["uid"],
        Format::Ecs => &e["event"]["id"],
    };
    v.as_str()
        .unwrap_or_else(|| panic!("no id in {e}"))
        .to_string()
}

/// What ECS requires of our documents, and what Elastic's integration fills: problems found.
pub fn ecs_problems(e: &Value) -> Vec<String> {
    const TOP: [&str; 20] = [
        "@timestamp",
        "ecs",
        "event",
        "observer",
        "organization",
        "message",
        "rule",
        "vulnerability",
        "package",
        "resource",
        "cloud",
        "related",
        "result",
        "threat",
        "user",
        "source",
        "user_agent",
        "http",
        "error",
        "wiz",
    ];
    const KINDS: [&str; 4] = ["alert", "event", "state", "signal"];
    const CATEGORIES: [&str; 4] = [
        "configuration",
        "vulnerability",
        "intrusion_detection",
        "authentication",
    ];
    let mut p = Vec::new();
    let obj = e.as_object().expect("an object");
    for k in obj.keys() {
        if !TOP.contains(&k.as_str()) {
            p.push(format!("{k}: not a field set we write"));
        }
    }
    if e["@timestamp"]
        .as_str()
        .is_none_or(|t| humantime::parse_rfc3339(t).is_err())
    {
        p.push(format!(
            "@timestamp: {} is not an RFC 3339 UTC time",
            e["@timestamp"]
        ));
    }
    if e["ecs"]["version"] != "8.11.0" {
        p.push("ecs.version: not 8.11.0".into());
    }
    if e["observer"]["vendor"] != "Wiz" {
        p.push("observer.vendor: not Wiz".into());
    }
    if e["event"]["kind"] == "pipeline_error" {
        // A quarantine: ECS's kind for an error in the ingestion pipeline, type `error`, no
        // category, the reason in `error.message`.
        if e["event"].get("category").is_some()
            || e["event"]["type"] != serde_json::json!(["error"])
        {
            p.push(format!("a pipeline_error with {}", e["event"]));
        }
        if !e["error"]["message"].is_string() {
            p.push("a pipeline_error without error.message".into());
        }
        if e["event"].get("original").is_some() {
            p.push("a pipeline_error carries the node".into());
        }
    } else if !e["event"]["kind"]
        .as_str()
        .is_some_and(|k| KINDS.contains(&k))
    {
        p.push(format!("event.kind: {}", e["event"]["kind"]));
    }
    let quarantine = e["event"]["kind"] == "pipeline_error";
    let cats = e["event"]["category"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !quarantine && cats.is_empty()
        || cats
            .iter()
            .any(|c| !c.as_str().is_some_and(|c| CATEGORIES.contains(&c)))
    {
        p.push(format!("event.category: {}", e["event"]["category"]));
    }
    if !quarantine && e["event"]["type"] != serde_json::json!(["info"]) {
        p.push(format!("event.type: {}", e["event"]["type"]));
    }
    if e["event"]["id"].as_str().is_none_or(|i| i.len() != 32) {
        p.push("event.id: not an event id".into());
    }
    let wiz = e["wiz"].as_object().map(|w| w.len());
    if wiz != Some(1) {
        p.push(format!(
            "wiz: expected one feed object, found {:?}",
            e["wiz"]
        ));
    }
    p
}

/// The feed, the Wiz item id and the Wiz node of an event line in `format` (the node is `None`
/// for an issue that vanished).
pub fn item_of(format: Format, e: &Value) -> (String, String, Option<Value>) {
    let s = |v: &Value| {
        v.as_str()
            .unwrap_or_else(|| panic!("expected a string in {e}"))
            .to_string()
    };
    let node = |v: &Value| {
        v.as_str()
            .map(|t| serde_json::from_str::<Value>(t).unwrap())
    };
    match format {
        Format::Native => {
            let feed = s(&e["feed"]);
            let id = ["detection_id", "finding_id", "entry_id", "issue_id"]
                .iter()
                .find_map(|k| e[*k].as_str())
                .unwrap_or_else(|| panic!("no item id in {e}"))
                .to_string();
            let raw = (!e["raw_event"].is_null()).then(|| e["raw_event"].clone());
            (feed, id, raw)
        }
        Format::Ocsf => {
            let feed = s(&e["metadata"]["log_name"]);
            let id = e["finding_info"]["uid"]
                .as_str()
                .or(e["unmapped"]["entry_id"].as_str())
                .unwrap_or_else(|| panic!("no item id in {e}"))
                .to_string();
            (feed, id, node(&e["raw_data"]))
        }
        Format::Ecs => {
            let feed = s(&e["event"]["dataset"])
                .trim_start_matches("wiz.")
                .to_string();
            let id = s(&e["wiz"][feed.as_str()]["id"]);
            (feed, id, node(&e["event"]["original"]))
        }
    }
}
