//! Arbitrary bytes and arbitrary JSON as a GraphQL answer never panic the client or the
//! normalizer: they are errors, or pages whose nodes normalize or fail cleanly.

mod common;

use bytes::Bytes;
use proptest::prelude::*;
use wiz_connector::event::Normalizer;
use wiz_connector::sim::Fault;
use wiz_connector::wiz::{parse_page, IssueFilter, IssueOrder, WizError, WizHttp};

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
        prop_oneof![Just("OPEN"), Just("CRITICAL"), Just("id"), Just("nodes")]
            .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        let keys = prop_oneof![
            Just("data".to_string()),
            Just("issues".to_string()),
            Just("nodes".to_string()),
            Just("pageInfo".to_string()),
            Just("hasNextPage".to_string()),
            Just("endCursor".to_string()),
            Just("errors".to_string()),
            Just("id".to_string()),
            Just("status".to_string()),
            Just("severity".to_string()),
            Just("entitySnapshot".to_string()),
            Just("projects".to_string()),
            ".{0,6}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(keys, inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Feeds a body through the page parser and, when it is a page, every node through the normalizer.
fn digest(body: Vec<u8>) {
    let mut n = Normalizer::with_console("fuzz", "https://app.wiz.io");
    if let Ok(page) = parse_page(Bytes::from(body)) {
        let mut out = Vec::new();
        for issue in page.issues().flatten() {
            out.clear();
            n.normalize(&issue, None, "2026-01-01T00:00:00Z", &mut out);
            let v: serde_json::Value = serde_json::from_slice(&out).expect("events are JSON");
            assert_eq!(v["source"], "wiz");
            assert_eq!(v["issue_id"], issue.id());
            let raw: serde_json::Value = serde_json::from_str(issue.raw).unwrap();
            assert_eq!(v["raw_event"], raw);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        digest(body);
    }

    #[test]
    fn arbitrary_json_never_panics(v in arb_json()) {
        digest(serde_json::to_vec(&v).unwrap());
    }

    #[test]
    fn arbitrary_json_inside_a_page_never_panics(nodes in prop::collection::vec(arb_json(), 0..6), more in any::<bool>()) {
        let body = serde_json::json!({"data": {"issues": {"nodes": nodes, "pageInfo": {"hasNextPage": more, "endCursor": "c"}}}});
        digest(serde_json::to_vec(&body).unwrap());
    }
}

#[test]
fn pathological_json_is_an_error() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(matches!(
        parse_page(Bytes::from(deep)),
        Err(WizError::BadResponse(_))
    ));
    let huge_number = br#"{"data":{"issues":{"nodes":[{"id":"a","status":"OPEN","severity":1e999999}],"pageInfo":{"hasNextPage":false}}}}"#;
    // A number where a string belongs fails that node alone, with a clear error.
    let page = parse_page(Bytes::from_static(huge_number)).unwrap();
    let err = page.issues().next().unwrap().unwrap_err();
    assert!(err.to_string().contains("number out of range"), "{err}");
}

#[tokio::test]
async fn hostile_answers_over_http_fail_the_page_cleanly() {
    let sim = common::sim(1, 5).await;
    let body = common::sim_config(&sim, common::FAST_RETRIES, "");
    let client = WizHttp::new().unwrap().tenant(common::spec(&body, "t0"));
    let filter = IssueFilter {
        status: vec!["OPEN".into()],
        ..Default::default()
    };
    for garbage in [
        "".to_string(),
        "null".into(),
        "{\"data\":{\"issues\":{\"nodes\":\"x\",\"pageInfo\":{}}}}".into(),
        "{\"errors\":[]}".into(),
        "{\"errors\":[{}],\"data\":null}".into(),
        format!("{{\"data\":{}}}", "[".repeat(5000)),
        "\u{0}\u{1}binary".into(),
    ] {
        sim.push_faults(
            "sim-client-0000",
            [Fault::Garbage {
                body: garbage.clone(),
            }],
        );
        let err = client
            .fetch_page(&filter, IssueOrder::CREATED_ASC, 5, None)
            .await
            .expect_err(&garbage);
        assert!(
            matches!(err, WizError::BadResponse(_) | WizError::GraphQl { .. }),
            "{garbage:?} gave {err}"
        );
    }
    // The client still works afterwards.
    assert!(client
        .fetch_page(&filter, IssueOrder::CREATED_ASC, 5, None)
        .await
        .is_ok());
}

/// A well-formed issue node with `extra` (any JSON) as a field the connector does not model.
fn node_with(extra: &str) -> String {
    format!(
        r#"{{"id":"0b6e2c3a-5f1d-4e7a-9c2b-1d3e4f5a6b7c","status":"OPEN","severity":"HIGH","type":"CLOUD_CONFIGURATION","createdAt":"2026-01-01T00:00:00Z","updatedAt":"2026-01-01T00:00:00Z","statusChangedAt":"2026-01-01T00:00:00Z","extra":{extra}}}"#
    )
}

fn page_of(node: &str) -> Vec<u8> {
    format!(r#"{{"data":{{"issues":{{"nodes":[{node}],"pageInfo":{{"hasNextPage":false,"endCursor":null}}}}}}}}"#)
        .into_bytes()
}

/// Arrays nested `depth` deep around a string that holds brackets of its own.
fn nested(depth: usize) -> String {
    format!("{}\"[[{{\\\"]]\"{}", "[".repeat(depth), "]".repeat(depth))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Whatever the nesting of a node, the page is read: a node past the depth limit is skipped
    /// as unreadable (saying so), and every event line made parses with serde_json's default
    /// limits (128 levels), the strictest of the common parsers.
    #[test]
    fn every_delivered_line_parses_with_default_parser_limits(depth in 0usize..400) {
        let node = node_with(&nested(depth));
        let page = parse_page(Bytes::from(page_of(&node)));
        prop_assert!(page.is_ok(), "depth {depth}: {:?}", page.err());
        let page = page.unwrap();
        let mut n = Normalizer::with_console("t", "https://app.wiz.io");
        let mut out = Vec::new();
        for issue in page.issues() {
            match issue {
                Err(e) => {
                    prop_assert!(depth + 1 > wiz_connector::wiz::page::MAX_NODE_DEPTH, "skipped at depth {depth}: {}", e.reason);
                    prop_assert!(e.reason == "nests deeper than 64 levels" || e.reason.starts_with("cannot be read"), "{}", e.reason);
                }
                Ok(issue) => {
                    out.clear();
                    n.normalize(&issue, None, "2026-01-01T00:00:00Z", &mut out);
                    let parsed: Result<serde_json::Value, _> = serde_json::from_slice(&out);
                    prop_assert!(parsed.is_ok(), "depth {depth}: {:?}", parsed.err());
                }
            }
        }
    }
}

/// The connector on every tenant of `sim`, polling hourly (first polls at once) with `connector`
/// lines, into a file sink: the app, the file, and the directory that holds it.
async fn start_with_file_sink(
    sim: &wiz_connector::sim::Simulator,
    connector: &str,
) -> (
    wiz_connector::app::App,
    std::path::PathBuf,
    tempfile::TempDir,
) {
    use wiz_connector::app::{App, AppOptions};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let body = format!(
        "{}[sinks.out]\ntype = \"file\"\npath = \"{}\"\n",
        common::sim_config(
            sim,
            &format!("poll_interval = \"1h\"\nstartup_jitter = \"0s\"\n{connector}"),
            "rate_limit = 50"
        ),
        out.display()
    );
    let app = App::start(common::settings(&body), AppOptions::default())
        .await
        .unwrap();
    (app, out, dir)
}

#[tokio::test]
async fn a_node_nested_100000_deep_is_quarantined_and_its_tenant_goes_on() {
    use std::time::Duration;
    let sim = common::sim(1, 5).await;
    // The deep node between two readable ones: a page of three.
    let deep = node_with(&nested(100_000));
    let fine = |id: &str| node_with("1").replace("0b6e2c3a-5f1d-4e7a-9c2b-1d3e4f5a6b7c", id);
    let body = format!(
        r#"{{"data":{{"issues":{{"nodes":[{},{deep},{}],"pageInfo":{{"hasNextPage":false,"endCursor":null}}}}}}}}"#,
        fine("11111111-5f1d-4e7a-9c2b-1d3e4f5a6b7c"),
        fine("22222222-5f1d-4e7a-9c2b-1d3e4f5a6b7c")
    );
    sim.push_faults("sim-client-0000", [Fault::Garbage { body }]);
    let (app, out, _dir) = start_with_file_sink(&sim, "").await;
    common::wait_until(
        "the poll with the deep node",
        Duration::from_secs(20),
        || app.health.get("t0").is_some_and(|h| h.polls >= 1),
    )
    .await;
    // The page's two readable issues are delivered; the deep one is quarantined and counted.
    let got: Vec<(String, String)> = common::read_lines(&out)
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["issue_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("issue.opened", "11111111-5f1d-4e7a-9c2b-1d3e4f5a6b7c"),
            ("issue.opened", "22222222-5f1d-4e7a-9c2b-1d3e4f5a6b7c"),
            ("issue.unreadable", "0b6e2c3a-5f1d-4e7a-9c2b-1d3e4f5a6b7c")
        ]
        .map(|(k, i)| (k.to_string(), i.to_string()))
    );
    let metrics = app.observer_metrics_text();
    assert!(
        metrics.contains("wiz_connector_errors_total{tenant=\"t0\",kind=\"bad_response\"} 1"),
        "{metrics}"
    );
    // The tenant goes on: the next poll (the fault was for one answer) delivers its real issues.
    assert!(app.poll_now("t0").await);
    let open = common::open_ids(&sim)["t0"].len();
    common::wait_until("the next poll", Duration::from_secs(20), || {
        common::read_lines(&out).len() == open + 3
    })
    .await;
    app.shutdown().await.unwrap();
}

/// Issue 18: a node that cannot be read is quarantined, not a stall. A persistent 10 MB node and
/// a node nested 100,000 deep in a 500-issue page: one quarantine event each, every other issue
/// delivered; the next poll delivers the tenant's changes and quarantines nothing again; a node
/// whose bytes change is quarantined once more; a node that becomes readable is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_unreadable_nodes_are_quarantined_once_per_version_and_the_tenant_goes_on() {
    use std::collections::HashSet;
    use std::time::Duration;
    let sim = common::sim(1, 500).await;
    let client = sim.tenants()[0].client_id.clone();
    let mut open: Vec<String> = common::open_ids(&sim)["t0"].iter().cloned().collect();
    open.sort();
    let (big, deep, other) = (open[0].clone(), open[1].clone(), open[2].clone());
    sim.issues(&client, |s| {
        assert_eq!(s.issues.len(), 500);
        assert!(s.set_hostile(&big, Some(format!("\"{}\"", "x".repeat(10 << 20)))));
        let nested = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(s.set_hostile(&deep, Some(nested)));
    });
    let (app, out, _dir) = start_with_file_sink(&sim, "page_size = 500").await;
    let polls = |n: u64| {
        let app = &app;
        move || app.health.get("t0").is_some_and(|h| h.polls >= n)
    };
    common::wait_until("the first poll", Duration::from_secs(60), polls(1)).await;
    let lines = common::read_lines(&out);
    let kind = |e: &serde_json::Value| e["kind"].as_str().unwrap().to_string();
    let id = |e: &serde_json::Value| e["issue_id"].as_str().unwrap().to_string();
    let quarantined: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|e| kind(e) == "issue.unreadable")
        .collect();
    assert_eq!(quarantined.len(), 2, "{quarantined:?}");
    let by_id = |want: &str| {
        quarantined
            .iter()
            .find(|e| id(e) == want)
            .unwrap_or_else(|| panic!("no quarantine event for {want}"))
    };
    let q_big = by_id(&big);
    assert!(q_big["unreadable"]["bytes"].as_u64().unwrap() > 10 << 20);
    assert!(
        q_big["unreadable"]["reason"]
            .as_str()
            .unwrap()
            .ends_with("bytes, above the limit of 1048576"),
        "{q_big}"
    );
    let q_deep = by_id(&deep);
    assert_eq!(
        q_deep["unreadable"]["reason"],
        "nests deeper than 64 levels"
    );
    for q in [q_big, q_deep] {
        let head = q["unreadable"]["head"].as_str().unwrap();
        assert!(
            head.starts_with(&format!("{{\"id\":\"{}\"", id(q))),
            "{head}"
        );
        assert!(head.len() <= 256);
        assert_eq!(q["unreadable"]["sha256"].as_str().unwrap().len(), 64);
        assert!(q.get("raw_event").is_none());
    }
    // Every other issue of the page is delivered, once.
    let delivered: Vec<String> = lines
        .iter()
        .filter(|e| kind(e) == "issue.opened")
        .map(id)
        .collect();
    let want: HashSet<String> = open.iter().skip(2).cloned().collect();
    assert_eq!(delivered.len(), want.len());
    assert_eq!(delivered.into_iter().collect::<HashSet<_>>(), want);
    assert_eq!(lines.len(), open.len());
    let health = app.health.get("t0").unwrap();
    assert_eq!(health.unreadable.as_ref().map(|u| u.quarantined), Some(2));
    let metrics = app.observer_metrics_text();
    assert!(
        metrics.contains("wiz_connector_events_total{tenant=\"t0\",kind=\"issue.unreadable\"} 2"),
        "{metrics}"
    );

    // The next poll: the tenant's change is delivered, the same two nodes are not again.
    let severity_of = |id: &str| {
        sim.issues(&client, |s| {
            s.issues
                .iter()
                .find(|i| i.id == id)
                .unwrap()
                .severity
                .clone()
        })
    };
    let another = |sev: &str| if sev == "LOW" { "HIGH" } else { "LOW" };
    let sev = severity_of(&other);
    sim.issues(&client, |s| assert!(s.set_severity(&other, another(&sev))));
    assert!(app.poll_now("t0").await);
    common::wait_until("the second poll", Duration::from_secs(60), polls(2)).await;
    let new = common::read_lines(&out)[lines.len()..].to_vec();
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(
        (kind(&new[0]), id(&new[0])),
        ("issue.updated".into(), other)
    );

    // The deep node's bytes change: it is quarantined again, once, as a new event.
    let sev = severity_of(&deep);
    sim.issues(&client, |s| assert!(s.set_severity(&deep, another(&sev))));
    assert!(app.poll_now("t0").await);
    common::wait_until("the third poll", Duration::from_secs(60), polls(3)).await;
    let new = common::read_lines(&out)[lines.len() + 1..].to_vec();
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(
        (kind(&new[0]), id(&new[0])),
        ("issue.unreadable".into(), deep.clone())
    );
    assert_ne!(new[0]["id"], q_deep["id"]);
    assert_ne!(
        new[0]["unreadable"]["sha256"],
        q_deep["unreadable"]["sha256"]
    );

    // The big node becomes readable: the issue is delivered at last.
    sim.issues(&client, |s| assert!(s.set_hostile(&big, None)));
    assert!(app.poll_now("t0").await);
    common::wait_until("the fourth poll", Duration::from_secs(60), polls(4)).await;
    let new = common::read_lines(&out)[lines.len() + 2..].to_vec();
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!((kind(&new[0]), id(&new[0])), ("issue.opened".into(), big));
    let health = app.health.get("t0").unwrap();
    assert_eq!(health.unreadable.as_ref().map(|u| u.quarantined), Some(3));
    assert_eq!(
        health.unreadable.as_ref().unwrap().last.item_id.as_deref(),
        Some(deep.as_str())
    );
    app.shutdown().await.unwrap();
}
