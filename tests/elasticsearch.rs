//! The `elasticsearch` sink (issue 22) against the bulk simulator: `create` with `_id` = the
//! event id into a data stream, `@timestamp` added to native events, batching by bytes, a
//! templated index, a 409 counted delivered, only failed items retried, mapping errors reported
//! and not retried, whole-request refusals named and nothing lost, 413 split, and kill -9.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use wiz_connector::app::{App, AppOptions};
use wiz_connector::sim::elastic::{ElasticOptions, ElasticSimulator};
use wiz_connector::sim::Simulator;

const KEY: &str = "c2ltLWtleS1pZDpzaW0ta2V5LXNlY3JldA==";

async fn es(opts: ElasticOptions) -> ElasticSimulator {
    ElasticSimulator::start("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap()
}

/// Every tenant of `sim`, a native file sink (the reference) and an Elasticsearch sink with
/// `extra` keys.
fn config(sim: &Simulator, es: &ElasticSimulator, dir: &std::path::Path, extra: &str) -> String {
    format!(
        "{}[sinks.archive]\ntype = \"file\"\npath = \"{}\"\n[sinks.elastic]\ntype = \"elasticsearch\"\nurl = \"{}\"\napi_key = \"{KEY}\"\ntimeout = \"2s\"\n{extra}",
        sim_config(
            sim,
            "poll_interval = \"1h\"\nstartup_jitter = \"0s\"\npage_size = 10",
            "rate_limit = 50"
        ),
        dir.join("archive.jsonl").display(),
        es.base()
    )
}

fn archived(dir: &std::path::Path) -> BTreeSet<String> {
    read_lines(&dir.join("archive.jsonl"))
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

/// How many documents each `_id` has in `index`.
fn stored(es: &ElasticSimulator, index: &str) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for d in es.docs().into_iter().filter(|d| d.index == index) {
        *n.entry(d.id).or_default() += 1;
    }
    n
}

const STREAM: &str = "logs-wiz.issues-default";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_become_documents_with_their_ids_in_a_data_stream_and_a_templated_index() {
    let sim = sim(2, 30).await;
    let es = es(ElasticOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}max_batch_bytes = 16384\n[sinks.elastic_ecs]\ntype = \"elasticsearch\"\nurl = \"{}\"\napi_key = \"{KEY}\"\nformat = \"ecs\"\nindex = \"wiz-{{tenant}}-{{feed}}\"\ngzip = false\n",
        config(&sim, &es, dir.path(), ""),
        es.base()
    );
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    let open: usize = open_ids(&sim).values().map(|s| s.len()).sum();
    wait_until("every event in both", Duration::from_secs(30), || {
        stored(&es, STREAM).len() >= open
            && stored(&es, "wiz-t0-issues").len() + stored(&es, "wiz-t1-issues").len() >= open
            && archived(dir.path()).len() >= open
    })
    .await;
    let want = archived(dir.path());
    let native = stored(&es, STREAM);
    assert_eq!(native.keys().cloned().collect::<BTreeSet<_>>(), want);
    assert!(native.values().all(|n| *n == 1));
    assert_eq!(es.data_streams(), vec![STREAM.to_string()]);
    for d in es.docs() {
        if d.index == STREAM {
            // Native: `_id` is the event id, and `@timestamp` is `observed_at`.
            assert_eq!(d.source["id"].as_str(), Some(d.id.as_str()));
            assert_eq!(d.source["@timestamp"], d.source["observed_at"]);
            assert!(d.source["@timestamp"].is_string());
        } else {
            // ECS, one index per tenant: its own `@timestamp`, `event.id` the `_id`.
            assert_eq!(d.source["event"]["id"].as_str(), Some(d.id.as_str()));
            let tenant = d.source["organization"]["id"].as_str().unwrap();
            assert_eq!(d.index, format!("wiz-{tenant}-issues"));
        }
    }
    // Pages of ten native events of about 3 KB do not fit 16 KiB: several requests per page.
    let pages = open.div_ceil(10) as u64;
    assert!(
        es.counters().requests > 2 * pages,
        "{} requests",
        es.counters().requests
    );
    let status = &app.sink_stats.statuses()["elastic"];
    assert_eq!(status.delivered_events as usize, open);
    assert_eq!(status.rejected_events, 0);
    assert!(status.last_error.is_none());
    app.shutdown().await.unwrap();

    // The same events again from a connector that lost its state: every one a 409, counted
    // delivered, nothing stored twice.
    let before = es.docs().len();
    let body = config(&sim, &es, tempfile::tempdir().unwrap().path(), "");
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    wait_until("every event again", Duration::from_secs(30), || {
        app.sink_stats
            .statuses()
            .get("elastic")
            .is_some_and(|s| s.delivered_events as usize >= open)
    })
    .await;
    assert_eq!(es.docs().len(), before, "nothing stored twice");
    assert!(es.counters().conflicts as usize >= open);
    assert!(app.sink_stats.statuses()["elastic"].last_error.is_none());
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_failed_items_are_retried_and_mapping_errors_are_reported_not_retried() {
    let sim = sim(1, 20).await;
    let es = es(ElasticOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    // Busy twice (whole requests), then three items refused for now, then two for good.
    es.set_busy(2);
    es.fail_items(429, 3);
    let body = config(&sim, &es, dir.path(), "");
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    let open = open_ids(&sim)["t0"].len();
    wait_until(
        "every event despite refusals",
        Duration::from_secs(30),
        || stored(&es, STREAM).len() >= open,
    )
    .await;
    let c = es.counters();
    assert_eq!(c.busy, 2);
    // Only the three refused items were sent again, not their requests.
    assert_eq!(c.items as usize, open + 3, "{c:?}");
    assert!(stored(&es, STREAM).values().all(|n| *n == 1));
    app.shutdown().await.unwrap();

    let sim2 = common::sim(1, 20).await;
    let es2 = self::es(ElasticOptions::default()).await;
    es2.fail_items(400, 2);
    let dir2 = tempfile::tempdir().unwrap();
    let app = App::start(
        settings(&config(&sim2, &es2, dir2.path(), "")),
        AppOptions::default(),
    )
    .await
    .unwrap();
    let open = open_ids(&sim2)["t0"].len();
    wait_until("every page delivered", Duration::from_secs(30), || {
        let s = &app.sink_stats.statuses()["elastic"];
        s.delivered_events as usize + s.rejected_events as usize >= open
    })
    .await;
    let status = app.sink_stats.statuses()["elastic"].clone();
    assert_eq!(status.rejected_events, 2);
    assert_eq!(status.delivered_events as usize, open - 2);
    let rejection = status.last_rejection.unwrap().message;
    assert!(
        rejection.contains("document_parsing_exception")
            && rejection.contains("fix the index template's mapping"),
        "{rejection}"
    );
    // The rejected id is named, and was not stored.
    let id = rejection
        .strip_prefix("event ")
        .and_then(|r| r.split(':').next())
        .unwrap()
        .to_string();
    assert!(archived(dir2.path()).contains(&id));
    assert!(!stored(&es2, STREAM).contains_key(&id));
    assert_eq!(stored(&es2, STREAM).len(), open - 2);
    // Never sent again: exactly one item per event.
    assert_eq!(es2.counters().items as usize, open);
    assert!(status.last_error.is_none());
    // The admin API shows them.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sinks: serde_json::Value = serde_json::from_slice(
        &reqwest::get(format!("http://{}/sinks", app.admin_addr()))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let elastic = sinks
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "elastic")
        .unwrap();
    assert_eq!(elastic["type"], "elasticsearch");
    assert_eq!(elastic["rejected_events"], 2);
    assert!(elastic["last_rejection"]["message"]
        .as_str()
        .unwrap()
        .contains(&id));
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_named_keep_the_pages_and_a_too_large_request_is_split() {
    // Credentials the cluster does not know, and an index no template makes with auto-create
    // off: each named, the pages wait in the backlog, and after a reload that fixes them every
    // event arrives once.
    for (broken, fixed, expect) in [
        (
            format!("api_key = \"{KEY}\""),
            format!("api_key = \"{KEY}\""),
            "the credentials are not valid",
        ),
        (
            "index = \"wiz-nowhere\"".to_string(),
            format!("index = \"{STREAM}\""),
            "no data stream or index `wiz-nowhere`",
        ),
    ] {
        let sim = sim(1, 20).await;
        let es = es(ElasticOptions {
            auto_create_index: false,
            ..Default::default()
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let good = config(&sim, &es, dir.path(), "");
        let bad = if expect.contains("credentials") {
            good.replace(&broken, "api_key = \"d3Jvbmc6a2V5\"")
        } else {
            format!("{good}{broken}\n")
        };
        let good = if expect.contains("credentials") {
            good
        } else {
            format!("{good}{fixed}\n")
        };
        let open = open_ids(&sim)["t0"].len() as u64;
        let (app, cfg, message) = start_refused(&bad, "elastic", open).await;
        assert!(message.contains(expect), "{message}");
        assert!(!message.contains(KEY) && !message.contains("d3Jvbmc6a2V5"));
        assert!(es.docs().is_empty());
        std::fs::write(&cfg.path, &good).unwrap();
        app.reloader().reload("test").await.unwrap();
        wait_until("the backlog delivered", Duration::from_secs(30), || {
            stored(&es, STREAM).len() as u64 >= open
        })
        .await;
        assert_eq!(
            stored(&es, STREAM).keys().cloned().collect::<BTreeSet<_>>(),
            archived(dir.path())
        );
        app.shutdown().await.unwrap();
    }

    // A cluster that takes at most 12 KB per request, behind a sink that packs 64 KiB: each
    // refused request is split until it fits, and nothing is lost or doubled.
    let sim = sim(1, 20).await;
    let es = es(ElasticOptions {
        max_content_length: 12_000,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let app = App::start(
        settings(&config(&sim, &es, dir.path(), "max_batch_bytes = 65536\n")),
        AppOptions::default(),
    )
    .await
    .unwrap();
    let open = open_ids(&sim)["t0"].len();
    wait_until("every event despite 413", Duration::from_secs(30), || {
        stored(&es, STREAM).len() >= open
    })
    .await;
    assert!(es.counters().too_large > 0);
    assert!(stored(&es, STREAM).values().all(|n| *n == 1));
    assert_eq!(
        stored(&es, STREAM).keys().cloned().collect::<BTreeSet<_>>(),
        archived(dir.path())
    );
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_delivery_to_elasticsearch_loses_nothing() {
    let sim = sim(1, 40).await;
    let client = sim.tenants()[0].client_id.clone();
    let es = es(ElasticOptions::default()).await;
    // A slow cluster keeps pages in flight when the kill comes.
    es.set_delay(Duration::from_millis(150));
    let dir = tempfile::tempdir().unwrap();
    let body = config(&sim, &es, dir.path(), "")
        .replace("poll_interval = \"1h\"", "poll_interval = \"1s\"");
    let cfg = write_config(&body);
    // Documents in the order they were created: a repeat is a 409, never a second document.
    kill_9_rounds_lose_nothing(
        &sim,
        &client,
        &cfg.path,
        &dir.path().join("archive.jsonl"),
        env_count("WIZ_ES_CRASH_KILLS", 5),
        || last_events(es.docs().into_iter().map(|d| d.source)),
    )
    .await;
    let ids: Vec<String> = es.docs().into_iter().map(|d| d.id).collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a document stored twice");
}
