//! The `splunk_hec` sink (issue 22) against the HEC simulator: envelopes, auth, gzip, batching
//! by bytes, the format, busy retried, a refusal named and nothing lost, and indexer
//! acknowledgement (nothing counted delivered before its ack; lost acknowledgements sent again).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use wiz_connector::app::{App, AppOptions};
use wiz_connector::sim::hec::{HecOptions, HecSimulator};
use wiz_connector::sim::Simulator;

const TOKEN: &str = "00000000-0000-4000-8000-000000000001";

async fn hec(opts: HecOptions) -> HecSimulator {
    HecSimulator::start("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap()
}

/// Every tenant of `sim`, a native file sink (the reference) and a HEC sink with `extra` keys.
fn config(sim: &Simulator, hec: &HecSimulator, dir: &std::path::Path, extra: &str) -> String {
    format!(
        "{}[sinks.archive]\ntype = \"file\"\npath = \"{}\"\n[sinks.splunk]\ntype = \"splunk_hec\"\nurl = \"{}\"\ntoken = \"{TOKEN}\"\nindex = \"wiz\"\nhost = \"connector-1\"\ntimeout = \"2s\"\n{extra}",
        sim_config(
            sim,
            "poll_interval = \"1h\"\nstartup_jitter = \"0s\"\npage_size = 10",
            "rate_limit = 50"
        ),
        dir.join("archive.jsonl").display(),
        hec.base()
    )
}

/// The event ids the reference file sink has.
fn archived(dir: &std::path::Path) -> BTreeSet<String> {
    read_lines(&dir.join("archive.jsonl"))
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

/// How many times each event id reached Splunk (the id read in the event's format).
fn indexed(hec: &HecSimulator) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for e in hec.events() {
        let id = e.event["id"]
            .as_str()
            .or(e.event["metadata"]["uid"].as_str())
            .unwrap()
            .to_string();
        *n.entry(id).or_default() += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_as_envelopes_in_requests_within_the_byte_limit_in_the_sinks_format() {
    let sim = sim(1, 40).await;
    let hec = hec(HecOptions {
        indexes: vec!["wiz".into()],
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let body = config(
        &sim,
        &hec,
        dir.path(),
        "format = \"ocsf\"\nmax_batch_bytes = 16384\n",
    );
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    let open = open_ids(&sim)["t0"].len();
    wait_until("every event at Splunk", Duration::from_secs(30), || {
        hec.events().len() >= open && archived(dir.path()).len() >= open
    })
    .await;
    let want = archived(dir.path());
    let got = indexed(&hec);
    assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), want);
    assert!(got.values().all(|n| *n == 1), "each once: {got:?}");
    let events = hec.events();
    for e in &events {
        assert_eq!(e.index.as_deref(), Some("wiz"));
        assert_eq!(e.sourcetype.as_deref(), Some("wiz:issues"));
        assert_eq!(e.source.as_deref(), Some("wiz-connector"));
        assert_eq!(e.host.as_deref(), Some("connector-1"));
        // Epoch seconds with milliseconds.
        let t = e.time.as_ref().and_then(|t| t.as_f64()).unwrap();
        assert!(t > 1.7e9 && (t * 1000.0).fract().abs() < 1e-3, "{t}");
        // In the sink's format: OCSF.
        assert!(e.event["class_uid"].is_i64(), "{}", e.event);
    }
    // 40 issues of about 4 KB in OCSF each do not fit one 16 KiB request: several per page.
    let requests = hec.counters().requests;
    assert!(
        requests as usize > open / 4,
        "{requests} requests for {open} events"
    );
    let status = &app.sink_stats.statuses()["splunk"];
    assert_eq!(status.delivered_events as usize, open);
    assert!(status.last_error.is_none());
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_is_retried_and_a_refusal_is_named_and_loses_nothing() {
    let sim = sim(1, 20).await;
    let hec = hec(HecOptions {
        indexes: vec!["wiz".into()],
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    // Busy for three requests: retried, every event arrives once.
    hec.set_busy(3);
    let body = config(&sim, &hec, dir.path(), "gzip = false\n");
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    let open = open_ids(&sim)["t0"].len();
    wait_until("every event despite busy", Duration::from_secs(30), || {
        hec.events().len() >= open
    })
    .await;
    assert_eq!(hec.counters().busy, 3);
    assert!(indexed(&hec).values().all(|n| *n == 1));
    app.shutdown().await.unwrap();

    // An index Splunk does not have: refused with what it means, the pages wait in the backlog,
    // and once the index is right (a reload) they all arrive.
    let sim2 = common::sim(1, 20).await;
    let hec2 = self::hec(HecOptions {
        indexes: vec!["wiz".into()],
        ..Default::default()
    })
    .await;
    let dir2 = tempfile::tempdir().unwrap();
    let wrong =
        config(&sim2, &hec2, dir2.path(), "").replace("index = \"wiz\"", "index = \"wiz_typo\"");
    let open = open_ids(&sim2)["t0"].len() as u64;
    let (app, cfg, message) = start_refused(&wrong, "splunk", open).await;
    assert!(
        message.contains("Incorrect index (code 7)") && message.contains("check the sink's index"),
        "{message}"
    );
    assert!(hec2.events().is_empty());
    assert!(!message.contains(TOKEN), "the token never shows");
    std::fs::write(&cfg.path, wrong.replace("wiz_typo", "wiz")).unwrap();
    app.reloader().reload("test").await.unwrap();
    wait_until("the backlog delivered", Duration::from_secs(30), || {
        hec2.events().len() as u64 >= open
    })
    .await;
    assert_eq!(
        indexed(&hec2).keys().cloned().collect::<BTreeSet<_>>(),
        archived(dir2.path())
    );
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_ack_a_page_counts_only_once_acknowledged_and_lost_acks_are_sent_again() {
    let sim = sim(1, 20).await;
    let hec = hec(HecOptions {
        ack: true,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    // Acknowledgements come late: until then nothing counts as delivered at the sink, and the
    // tenant's first page is not acknowledged to it.
    // (Held back until released below, so the check does not race the clock.)
    hec.set_ack_delay(Duration::from_secs(3600));
    let body = config(
        &sim,
        &hec,
        dir.path(),
        "ack = true\nack_timeout = \"10s\"\n",
    );
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    wait_until("a request at Splunk", Duration::from_secs(30), || {
        hec.counters().requests >= 1
    })
    .await;
    let early = app.sink_stats.statuses()["splunk"].delivered_events;
    let indexed_early = hec.events().len();
    assert_eq!(
        (early, indexed_early),
        (0, 0),
        "nothing counted before Splunk acknowledged it"
    );
    let open = open_ids(&sim)["t0"].len();
    hec.set_ack_delay(Duration::ZERO);
    wait_until("every event acknowledged", Duration::from_secs(60), || {
        app.sink_stats.statuses()["splunk"].delivered_events as usize >= open
    })
    .await;
    assert!(hec.counters().ack_queries >= 1);
    assert_eq!(
        indexed(&hec).keys().cloned().collect::<BTreeSet<_>>(),
        archived(dir.path())
    );
    app.shutdown().await.unwrap();

    // Lost acknowledgements: the request is sent again after `ack_timeout`, and its events
    // arrive (once: the lost ones were never indexed).
    let sim2 = common::sim(1, 20).await;
    let hec2 = self::hec(HecOptions {
        ack: true,
        ..Default::default()
    })
    .await;
    hec2.lose_acks(2);
    let dir2 = tempfile::tempdir().unwrap();
    let body = config(
        &sim2,
        &hec2,
        dir2.path(),
        "ack = true\nack_timeout = \"1s\"\n",
    );
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    let open = open_ids(&sim2)["t0"].len();
    wait_until(
        "every event despite lost acks",
        Duration::from_secs(60),
        || app.sink_stats.statuses()["splunk"].delivered_events as usize >= open,
    )
    .await;
    let got = indexed(&hec2);
    assert_eq!(
        got.keys().cloned().collect::<BTreeSet<_>>(),
        archived(dir2.path())
    );
    assert!(got.values().all(|n| *n == 1), "{got:?}");
    // Two requests were lost and sent again: more requests than pages.
    let pages = open.div_ceil(10) as u64;
    assert!(
        hec2.counters().requests >= pages + 2,
        "{} requests for {pages} pages",
        hec2.counters().requests
    );
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_delivery_to_splunk_loses_nothing() {
    let sim = sim(1, 40).await;
    let client = sim.tenants()[0].client_id.clone();
    let hec = hec(HecOptions {
        ack: true,
        ..Default::default()
    })
    .await;
    // Slow acknowledgements keep pages in flight at Splunk when the kill comes.
    hec.set_ack_delay(Duration::from_millis(200));
    let dir = tempfile::tempdir().unwrap();
    let body = config(&sim, &hec, dir.path(), "ack = true\nack_timeout = \"5s\"\n")
        .replace("poll_interval = \"1h\"", "poll_interval = \"1s\"");
    let cfg = write_config(&body);
    kill_9_rounds_lose_nothing(
        &sim,
        &client,
        &cfg.path,
        &dir.path().join("archive.jsonl"),
        env_count("WIZ_HEC_CRASH_KILLS", 5),
        || last_events(hec.events().into_iter().map(|e| e.event)),
    )
    .await;
}
