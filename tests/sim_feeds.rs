//! The simulator serves Wiz's other feeds over real HTTP, with Wiz's query shapes: a token, then
//! `detections`, `vulnerabilityFindings`, `auditLogEntries` and `configurationFindings`, paged by
//! cursor; churn adds to them. (Groundwork for issue 12: the connector reads only Issues today.)

mod common;

use common::*;
use serde_json::{json, Value};

async fn token(http: &reqwest::Client, sim: &wiz_connector::sim::Simulator) -> String {
    let t = &sim.tenants()[0];
    let body = format!(
        "grant_type=client_credentials&client_id={}&client_secret={}&audience=wiz-api",
        t.client_id, t.client_secret
    );
    let r = http
        .post(sim.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

async fn query(
    http: &reqwest::Client,
    sim: &wiz_connector::sim::Simulator,
    token: &str,
    body: Value,
) -> Value {
    let r = http
        .post(sim.graphql_url())
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

/// Every node of `root`, following cursors, with `filter`.
async fn all(
    http: &reqwest::Client,
    sim: &wiz_connector::sim::Simulator,
    token: &str,
    root: &str,
    filter: Value,
) -> Vec<Value> {
    // The filter's input type, as the simulator's schema (and Wiz) names it.
    let filters = match root {
        "detections" => "DetectionFilters",
        "vulnerabilityFindings" => "VulnerabilityFindingFilters",
        "auditLogEntries" => "AuditLogEntryFilters",
        _ => "ConfigurationFindingFilters",
    };
    let q = format!("query Q($filterBy: {filters}, $first: Int, $after: String) {{ {root}(filterBy: $filterBy, first: $first, after: $after) {{ nodes {{ id }} pageInfo {{ hasNextPage endCursor }} }} }}");
    let mut after = Value::Null;
    let mut out = Vec::new();
    loop {
        let v = query(
            http,
            sim,
            token,
            json!({"query": q, "variables": {"first": 50, "after": after, "filterBy": filter}}),
        )
        .await;
        let conn = &v["data"][root];
        out.extend(conn["nodes"].as_array().unwrap().iter().cloned());
        if conn["pageInfo"]["hasNextPage"] != true {
            return out;
        }
        after = conn["pageInfo"]["endCursor"].clone();
    }
}

#[tokio::test]
async fn the_other_feeds_page_and_grow_with_churn() {
    let sim = sim(1, 60).await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let token = token(&http, &sim).await;
    let both = json!({"type": {"equals": ["GENERATED_THREAT", "MATCH_ONLY"]}});
    let counts = [
        (
            "detections",
            all(&http, &sim, &token, "detections", both.clone())
                .await
                .len(),
        ),
        (
            "vulnerabilityFindings",
            all(&http, &sim, &token, "vulnerabilityFindings", Value::Null)
                .await
                .len(),
        ),
        (
            "auditLogEntries",
            all(&http, &sim, &token, "auditLogEntries", Value::Null)
                .await
                .len(),
        ),
        (
            "configurationFindings",
            all(&http, &sim, &token, "configurationFindings", Value::Null)
                .await
                .len(),
        ),
    ];
    assert_eq!(counts.map(|c| c.1), [30, 120, 60, 60], "{counts:?}");
    // Issues are unaffected, and churn adds a detection and an audit entry per step.
    let mark = humantime::format_rfc3339_micros(
        std::time::SystemTime::now() - std::time::Duration::from_millis(1),
    )
    .to_string();
    sim.churn(&sim.tenants()[0].client_id, 3);
    let mut since = both.clone();
    since["createdAt"] = json!({"after": mark});
    assert_eq!(all(&http, &sim, &token, "detections", since).await.len(), 3);
    let audit = all(
        &http,
        &sim,
        &token,
        "auditLogEntries",
        json!({"timestamp": {"after": mark}}),
    )
    .await;
    assert_eq!(audit.len(), 3);
}
