//! Normalization: the severity ladder, optional fields, the event contract, and `raw_event`
//! byte-for-byte equal to what the simulator sent.

mod common;

use common::*;
use serde_json::{json, Value};
use wiz_connector::event::{map_severity, EventKind, Normalizer, Severity};
use wiz_connector::format::Lines;
use wiz_connector::wiz::{IssueFilter, IssueOrder, WizHttp};

const OBSERVED: &str = "2026-11-24T10:00:00.000Z";

fn normalize(n: &mut Normalizer, node: &str) -> Value {
    let mut out = Vec::new();
    n.normalize_json(node, None, OBSERVED, &mut out).unwrap();
    serde_json::from_slice(&out).expect("the event is valid JSON")
}

fn node(severity: Value) -> String {
    json!({"id": "i-1", "status": "OPEN", "severity": severity}).to_string()
}

#[test]
fn the_severity_ladder_maps_five_tiers_to_four() {
    let table = [
        ("CRITICAL", Severity::High),
        ("HIGH", Severity::High),
        ("MEDIUM", Severity::Medium),
        ("LOW", Severity::Low),
        ("INFORMATIONAL", Severity::Info),
    ];
    let mut n = Normalizer::with_console("acme", "https://app.wiz.io");
    for (wiz, ours) in table {
        assert_eq!(map_severity(wiz), Some(ours));
        let ev = normalize(&mut n, &node(json!(wiz)));
        assert_eq!(ev["severity"], serde_json::to_value(ours).unwrap());
        assert_eq!(
            ev["raw_event"]["severity"], wiz,
            "raw keeps the 5-tier value"
        );
    }
    assert_eq!(n.unknown_severities, 0);
}

#[test]
fn unknown_or_missing_severities_become_info_and_are_counted() {
    let mut n = Normalizer::with_console("acme", "https://app.wiz.io");
    for sev in [json!("SEVERE"), json!("high"), json!(null)] {
        let ev = normalize(&mut n, &node(sev.clone()));
        assert_eq!(ev["severity"], "info");
        assert_eq!(ev["raw_event"]["severity"], sev);
    }
    let ev = normalize(&mut n, r#"{"id":"i-2","status":"OPEN"}"#);
    assert_eq!(ev["severity"], "info");
    assert_eq!(n.unknown_severities, 4);
}

#[test]
fn null_and_missing_optional_fields_are_null_in_the_event() {
    let mut n = Normalizer::with_console("acme", "https://app.wiz.io");
    let ev = normalize(
        &mut n,
        r#"{"id":"i-3","status":"RESOLVED","severity":"LOW","type":null,"sourceRule":null,"entitySnapshot":null,"projects":null,"createdAt":null}"#,
    );
    assert_eq!(ev["kind"], "issue.resolved");
    for k in [
        "issue_type",
        "title",
        "created_at",
        "updated_at",
        "status_changed_at",
        "resource",
    ] {
        assert_eq!(ev[k], Value::Null, "{k}");
    }
    assert_eq!(ev["projects"], json!([]));
    let ev = normalize(
        &mut n,
        r#"{"id":"i-4","status":"OPEN","entitySnapshot":{"name":"","region":"","cloudPlatform":null},"projects":[{"name":"P"},{"id":"x"}]}"#,
    );
    assert_eq!(ev["resource"]["name"], "");
    assert_eq!(ev["resource"]["region"], "");
    assert_eq!(ev["resource"]["cloud_platform"], Value::Null);
    assert_eq!(ev["resource"]["id"], Value::Null);
    assert_eq!(ev["projects"], json!(["P"]));
}

#[test]
fn nodes_without_an_id_or_status_are_errors_not_panics() {
    let mut n = Normalizer::with_console("acme", "https://app.wiz.io");
    let mut out = Vec::new();
    for bad in [
        r#"{"status":"OPEN"}"#,
        r#"{"id":"x"}"#,
        r#"{"id":5,"status":"OPEN"}"#,
        "[]",
        "{",
    ] {
        let e = n.normalize_json(bad, None, OBSERVED, &mut out).unwrap_err();
        assert!(
            e.to_string().starts_with("issue node not understood"),
            "{e}"
        );
    }
}

#[test]
fn event_ids_are_deterministic_and_change_with_the_state() {
    let mut n = Normalizer::with_console("acme", "https://app.wiz.io");
    let mut other = Normalizer::with_console("globex", "https://app.wiz.io");
    let a = r#"{"id":"i-1","status":"OPEN","severity":"HIGH","updatedAt":"2026-01-01T00:00:00Z","statusChangedAt":"2026-01-01T00:00:00Z"}"#;
    let id = |n: &mut Normalizer, s: &str| normalize(n, s)["id"].as_str().unwrap().to_string();
    let first = id(&mut n, a);
    assert_eq!(first.len(), 32);
    assert_eq!(first, id(&mut n, a), "same state, same id");
    assert_eq!(
        first,
        id(&mut n, &a.replace("\"severity\"", " \"severity\"")),
        "formatting is not state"
    );
    assert_ne!(first, id(&mut other, a), "tenant is part of the id");
    for changed in [
        a.replace("HIGH", "LOW"),
        a.replace("\"OPEN\"", "\"RESOLVED\""),
        a.replace("\"updatedAt\":\"2026-01-01", "\"updatedAt\":\"2026-01-02"),
        a.replace(
            "\"statusChangedAt\":\"2026-01-01",
            "\"statusChangedAt\":\"2026-01-02",
        ),
        a.replace("i-1", "i-2"),
    ] {
        assert_ne!(first, id(&mut n, &changed), "{changed}");
    }
}

#[tokio::test]
async fn events_from_the_simulator_carry_every_contract_field_and_the_raw_node_verbatim() {
    let sim = sim(1, 60).await;
    let body = sim_config(&sim, "page_size = 500", "");
    let spec = spec(&body, "t0");
    let client = WizHttp::new().unwrap().tenant(spec.clone());
    let filter = IssueFilter {
        status: vec!["OPEN".into()],
        ..Default::default()
    };
    let page = client
        .fetch_page(&filter, IssueOrder::CREATED_ASC, 500, None)
        .await
        .unwrap();
    assert!(page.len() > 20);

    // What the simulator sent, fetched independently of the client.
    let raw_body = reqwest_raw(&sim, &body).await;
    let sent: Value = serde_json::from_slice(&raw_body).unwrap();
    let sent_nodes = sent["data"]["issues"]["nodes"].as_array().unwrap().clone();
    assert_eq!(sent_nodes.len(), page.len());

    let mut n = Normalizer::new(&spec);
    for (issue, sent) in page.issues().zip(&sent_nodes) {
        let issue = issue.unwrap();
        let node = issue.raw;
        let mut out = Vec::new();
        let meta = n.normalize(&issue, None, OBSERVED, &mut out);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(
            text.ends_with(&format!(",\"raw_event\":{node}}}")),
            "raw_event is the node's bytes"
        );
        let ev: Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            &ev["raw_event"], sent,
            "raw_event equals what the simulator sent"
        );
        let id = sent["id"].as_str().unwrap();
        assert_eq!(ev["id"], meta.id);
        assert_eq!(
            wiz_connector::event::event_id_of(&out),
            Some(meta.id.as_str())
        );
        assert_eq!(ev["source"], "wiz");
        assert_eq!(ev["tenant"], "t0");
        assert_eq!(ev["kind"], "issue.opened");
        assert_eq!(meta.kind, EventKind::Opened);
        assert_eq!(ev["issue_id"], id);
        assert_eq!(ev["status"], "OPEN");
        assert_eq!(
            ev["severity"],
            serde_json::to_value(map_severity(sent["severity"].as_str().unwrap()).unwrap())
                .unwrap()
        );
        assert_eq!(ev["issue_type"], sent["type"]);
        assert_eq!(ev["title"], sent["sourceRule"]["name"]);
        assert_eq!(ev["created_at"], sent["createdAt"]);
        assert_eq!(ev["updated_at"], sent["updatedAt"]);
        assert_eq!(ev["status_changed_at"], sent["statusChangedAt"]);
        assert_eq!(ev["observed_at"], OBSERVED);
        let e = &sent["entitySnapshot"];
        let r = &ev["resource"];
        for (ours, theirs) in [
            ("id", "id"),
            ("name", "name"),
            ("type", "type"),
            ("native_type", "nativeType"),
            ("cloud_platform", "cloudPlatform"),
            ("region", "region"),
            ("subscription_id", "subscriptionExternalId"),
            ("subscription_name", "subscriptionName"),
            ("provider_id", "providerId"),
            ("cloud_provider_url", "cloudProviderURL"),
        ] {
            assert_eq!(r[ours], e[theirs], "resource.{ours}");
        }
        let names: Vec<&Value> = sent["projects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| &p["name"])
            .collect();
        assert_eq!(
            ev["projects"]
                .as_array()
                .unwrap()
                .iter()
                .collect::<Vec<_>>(),
            names
        );
        assert_eq!(
            ev["url"],
            format!("https://app.wiz.io/issues#~(issue~'{id})")
        );
    }
}

/// The first page of open issues, fetched with a plain HTTP client (no connector code).
async fn reqwest_raw(sim: &wiz_connector::sim::Simulator, _body: &str) -> Vec<u8> {
    let t = &sim.tenants()[0];
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let tok: Value = serde_json::from_slice(
        &http
            .post(sim.token_url())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=client_credentials&client_id={}&client_secret={}&audience=wiz-api",
                t.client_id, t.client_secret
            ))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let q = json!({"query": wiz_connector::wiz::issues::query_text(),
        "variables": {"first": 500, "filterBy": {"status": ["OPEN"]}, "orderBy": {"field": "CREATED_AT", "direction": "ASC"}}});
    http.post(sim.graphql_url())
        .header("content-type", "application/json")
        .bearer_auth(tok["access_token"].as_str().unwrap())
        .body(q.to_string())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec()
}

#[test]
fn a_vanished_issue_gets_every_contract_field_from_what_was_known() {
    use wiz_connector::event::{event_id, event_id_of, salted_event_id, vanished_fingerprint};
    let mut n = Normalizer::with_console("acme", "https://app.wiz.us");
    let last = [7u8; 16];
    let mut lines = Lines::default();
    let meta = n.vanished("i-\"9\"", &last, Some("CRITICAL"), OBSERVED, &mut lines);
    let mut out = lines.native;
    let ev: Value = serde_json::from_slice(&out).expect("valid JSON");
    let mut fields: Vec<&str> = ev.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort_unstable();
    let mut want = [
        "id",
        "source",
        "tenant",
        "feed",
        "kind",
        "issue_id",
        "severity",
        "status",
        "issue_type",
        "title",
        "created_at",
        "updated_at",
        "status_changed_at",
        "observed_at",
        "resource",
        "projects",
        "url",
        "raw_event",
        "vanished",
    ];
    want.sort_unstable();
    assert_eq!(fields, want);
    assert_eq!(ev["kind"], "issue.resolved");
    assert_eq!(ev["status"], "RESOLVED");
    assert_eq!(ev["severity"], "high");
    assert_eq!(ev["issue_id"], "i-\"9\"", "escaped as needed");
    assert_eq!(ev["observed_at"], OBSERVED);
    assert_eq!(ev["vanished"], true);
    assert!(ev["raw_event"].is_null() && ev["title"].is_null() && ev["resource"].is_null());
    assert!(ev["url"]
        .as_str()
        .unwrap()
        .starts_with("https://app.wiz.us/issues#~(issue~'"));
    // Deterministic from the last state, and unlike any id of an observed state.
    let id = event_id("acme", "i-\"9\"", &vanished_fingerprint(&last));
    assert_eq!(ev["id"], id.as_str());
    assert_eq!(meta.id, id);
    assert_eq!(
        event_id_of(&out),
        Some(id.as_str()),
        "read from the line's start"
    );
    assert_ne!(id, event_id("acme", "i-\"9\"", &last));
    assert_eq!(meta.fingerprint, vanished_fingerprint(&last));
    // Unknown severity (records from before it was kept): info, as for any unknown severity.
    let mut lines = Lines::default();
    n.vanished("i-1", &last, None, OBSERVED, &mut lines);
    out = lines.native;
    let ev: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(ev["severity"], "info");
    // A salted id differs from the plain one and is stable.
    let salted = salted_event_id("acme", "i-1", &last, &[1; 16]);
    assert_ne!(salted, event_id("acme", "i-1", &last));
    assert_eq!(salted, salted_event_id("acme", "i-1", &last, &[1; 16]));
}

/// Issues' events are the bytes they were before feeds existed, with `"feed":"issues"` added
/// after `tenant`: the same ids, the same fields, the same order (the fixture was written by the
/// code before feeds).
#[test]
fn issue_events_keep_their_bytes_with_the_feed_added() {
    let node = include_str!("fixtures/issue_node.json");
    let before = include_str!("fixtures/issue_events_before_feeds.jsonl");
    let mut n = Normalizer::with_console("acme", "https://app.wiz.io");
    let mut out = Vec::new();
    n.normalize_json(node, None, OBSERVED, &mut out).unwrap();
    out.push(b'\n');
    n.normalize_json(node, Some(EventKind::Updated), OBSERVED, &mut out)
        .unwrap();
    out.push(b'\n');
    let mut lines = Lines {
        native: out,
        ..Default::default()
    };
    n.vanished(
        "5f1c2a9e-0b7d-4c3e-9a51-2d8f6e4b7c10",
        &[7u8; 16],
        Some("HIGH"),
        OBSERVED,
        &mut lines,
    );
    lines.end_event();
    let out = lines.native;
    let now = String::from_utf8(out).unwrap();
    assert_eq!(
        now.matches("\"tenant\":\"acme\",\"feed\":\"issues\",")
            .count(),
        3
    );
    assert_eq!(now.replace("\"feed\":\"issues\",", ""), before);
}
