//! The `kafka` sink (issue 22) against a real Kafka-protocol broker (tansu, see
//! `support/kafka.rs`): records keyed `<tenant>:<item id>`, one item's events in order in one
//! partition, the event id as a header, the sink's format, a topic template; a missing topic
//! named; a broker restart while pages wait loses nothing; kill -9 loses nothing.

mod common;
#[path = "support/kafka.rs"]
mod kafka;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use kafka::Broker;
use wiz_connector::app::{App, AppOptions};
use wiz_connector::sim::Simulator;

/// Every tenant of `sim`, a native file sink (the reference) and a Kafka sink with `extra` keys.
fn config(sim: &Simulator, broker: &Broker, dir: &std::path::Path, extra: &str) -> String {
    format!(
        "{}[sinks.archive]\ntype = \"file\"\npath = \"{}\"\n[sinks.kafka]\ntype = \"kafka\"\nbrokers = \"{}\"\ntimeout = \"10s\"\n{extra}",
        sim_config(
            sim,
            "poll_interval = \"1h\"\nstartup_jitter = \"0s\"\npage_size = 10",
            "rate_limit = 50"
        ),
        dir.join("archive.jsonl").display(),
        broker.addr
    )
}

fn archive(dir: &std::path::Path) -> Vec<serde_json::Value> {
    read_lines(&dir.join("archive.jsonl"))
}

/// Event ids per key, in partition order, and the partition of each key.
fn by_key(
    records: &BTreeMap<i32, Vec<kafka::Record>>,
) -> (
    BTreeMap<String, Vec<String>>,
    BTreeMap<String, BTreeSet<i32>>,
) {
    let mut ids: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut partitions: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    for (p, rs) in records {
        for r in rs {
            ids.entry(r.key.clone())
                .or_default()
                .push(r.id.clone().unwrap_or_default());
            partitions.entry(r.key.clone()).or_default().insert(*p);
        }
    }
    (ids, partitions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_keyed_by_item_in_order_with_the_event_id_in_the_sinks_format() {
    let broker = Broker::start().await;
    broker.create_topic("wiz.issues", 3).await;
    broker.create_topic("wiz-ocsf.t0", 2).await;
    let sim = sim(1, 20).await;
    let client = sim.tenants()[0].client_id.clone();
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}[sinks.kafka_ocsf]\ntype = \"kafka\"\nbrokers = [\"{}\"]\ntopic = \"wiz-ocsf.{{tenant}}\"\nformat = \"ocsf\"\ncompression = \"gzip\"\n",
        config(&sim, &broker, dir.path(), ""),
        broker.addr
    );
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    let open = open_ids(&sim)["t0"].len();
    wait_until("the first sync archived", Duration::from_secs(30), || {
        archive(dir.path()).len() >= open
    })
    .await;
    // Changes: each changed issue gets a second event, after its first, under the same key.
    // (A churn may change only issues outside the watched statuses: churn until one shows.)
    let expected = || archive(dir.path());
    // Each poll is waited out (every page of it delivered to every sink) before the next.
    let polled = |n: u64| {
        app.health
            .get("t0")
            .is_some_and(|h| h.polls >= n && h.state.as_str() == "idle")
    };
    let mut polls = app.health.get("t0").unwrap().polls;
    wait_until(
        "the first sync's poll done",
        Duration::from_secs(30),
        || polled(polls.max(1)),
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while expected().len() <= open {
        assert!(
            std::time::Instant::now() < deadline,
            "no change ever showed"
        );
        polls = app.health.get("t0").unwrap().polls;
        sim.churn(&client, 3);
        assert!(app.poll_now("t0").await);
        wait_until("the poll done", Duration::from_secs(30), || {
            polled(polls + 1)
        })
        .await;
    }
    wait_for(
        "every event in both topics",
        Duration::from_secs(30),
        || {
            let n = expected().len();
            let s = app.sink_stats.statuses();
            let (a, b) = (&s["kafka"], &s["kafka_ocsf"]);
            // All three sinks at the same page (the Kafka ones may run ahead of the file).
            let same = [a, b, &s["archive"]]
                .iter()
                .all(|x| x.delivered_events as usize == n);
            if n > open && same {
                Ok(())
            } else {
                Err(format!("archive {n} (open {open}); {a:?}; {b:?}"))
            }
        },
    )
    .await;
    let events = expected();
    for (topic, native) in [("wiz.issues", true), ("wiz-ocsf.t0", false)] {
        let records = broker.records(topic);
        let (mut ids, partitions) = by_key(&records);
        // At least once: a page resent after a failed delivery report repeats records, with
        // the same event id (consumers deduplicate on it); the first sight of each keeps the
        // order. Without a failed page, every event is there exactly once.
        let sink = if native { "kafka" } else { "kafka_ocsf" };
        let failed = app.sink_stats.statuses()[sink].failed_batches;
        let before = ids.clone();
        for v in ids.values_mut() {
            let mut seen = BTreeSet::new();
            v.retain(|id| seen.insert(id.clone()));
        }
        if failed == 0 {
            assert_eq!(
                ids, before,
                "{topic}: a record repeated without a failed page"
            );
        }
        // One partition per key: one item's events stay in order.
        assert!(partitions.values().all(|p| p.len() == 1), "{partitions:?}");
        // The archive's events per issue, in order, are the topic's per key.
        let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for e in &events {
            want.entry(format!("t0:{}", e["issue_id"].as_str().unwrap()))
                .or_default()
                .push(e["id"].as_str().unwrap().to_string());
        }
        assert_eq!(ids, want, "{topic}");
        for r in records.values().flatten() {
            if native {
                assert_eq!(r.value["id"].as_str(), r.id.as_deref());
            } else {
                assert_eq!(r.value["metadata"]["uid"].as_str(), r.id.as_deref());
                assert!(r.value["class_uid"].is_i64());
            }
        }
    }
    app.shutdown().await.unwrap();

    // `check --sinks`: a metadata round trip per Kafka sink, the topic's partitions named.
    let cfg = write_config(&format!(
        "{}[sinks.missing]\ntype = \"kafka\"\nbrokers = \"{}\"\ntopic = \"wiz.nowhere\"\n",
        body, broker.addr
    ));
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wiz-connector"))
        .args(["check", "--sinks", "--config"])
        .arg(&cfg.path)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("sink kafka (kafka): ok (brokers reachable; topic `wiz.issues` has 3 partition(s), settings filled for tenant t0, feed issues)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("sink kafka_ocsf (kafka): ok (brokers reachable; topic `wiz-ocsf.t0` has 2 partition(s), settings filled for tenant t0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("sink missing (kafka): sink `missing`: Kafka has no topic `wiz.nowhere`"),
        "{stdout}"
    );

    // A topic that does not exist: the start fails and names it (as for every sink that cannot
    // open).
    let dir2 = tempfile::tempdir().unwrap();
    let refused = App::start(
        settings(&config(
            &sim,
            &broker,
            dir2.path(),
            "topic = \"wiz.nowhere\"\n",
        )),
        AppOptions::default(),
    )
    .await
    .err()
    .expect("no such topic")
    .to_string();
    assert!(
        refused.contains("sink `kafka`: Kafka has no topic `wiz.nowhere`")
            && refused.contains("create it, or set the sink's topic"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_nothing() {
    let mut broker = Broker::start().await;
    broker.create_topic("wiz.issues", 3).await;
    let sim = sim(1, 20).await;
    let client = sim.tenants()[0].client_id.clone();
    let dir = tempfile::tempdir().unwrap();
    let app = App::start(
        settings(&config(&sim, &broker, dir.path(), "")),
        AppOptions::default(),
    )
    .await
    .unwrap();
    let open = open_ids(&sim)["t0"].len();
    wait_until("the first sync in Kafka", Duration::from_secs(30), || {
        app.sink_stats.statuses()["kafka"].delivered_events as usize >= open
    })
    .await;
    // The broker goes away; changes come; the sink fails and keeps them.
    broker.stop().await;
    sim.churn(&client, 4);
    assert!(app.poll_now("t0").await);
    wait_for(
        "the pages kept while Kafka is away",
        Duration::from_secs(60),
        || {
            let s = &app.sink_stats.statuses()["kafka"];
            if s.backlog_events > 0 && s.last_error.is_some() {
                Ok(())
            } else {
                let t = app.health.get("t0").unwrap();
                Err(format!("sink: {s:?}; tenant: {t:?}"))
            }
        },
    )
    .await;
    let message = app.sink_stats.statuses()["kafka"]
        .last_error
        .clone()
        .unwrap()
        .message;
    assert!(message.contains("Kafka"), "{message}");
    // Back, on the same store: every event arrives, the first sync's still there.
    broker.resume().await;
    let total = || archive(dir.path()).len();
    wait_for(
        "every event after the restart",
        Duration::from_secs(90),
        || {
            let s = &app.sink_stats.statuses()["kafka"];
            if s.backlog_events == 0 && s.delivered_events as usize >= total() {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        },
    )
    .await;
    let records = broker.records("wiz.issues");
    let got: BTreeSet<String> = records
        .values()
        .flatten()
        .filter_map(|r| r.id.clone())
        .collect();
    let want: BTreeSet<String> = archive(dir.path())
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert!(want.len() > open);
    assert_eq!(got, want);
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_delivery_to_kafka_loses_nothing() {
    let broker = Broker::start().await;
    broker.create_topic("wiz.issues", 3).await;
    let sim = sim(1, 40).await;
    let client = sim.tenants()[0].client_id.clone();
    let dir = tempfile::tempdir().unwrap();
    let body = config(&sim, &broker, dir.path(), "")
        .replace("poll_interval = \"1h\"", "poll_interval = \"1s\"");
    let cfg = write_config(&body);
    // A key's records are in one partition, in order: the last per key is the latest.
    kill_9_rounds_lose_nothing(
        &sim,
        &client,
        &cfg.path,
        &dir.path().join("archive.jsonl"),
        env_count("WIZ_KAFKA_CRASH_KILLS", 5),
        || {
            last_events(
                broker
                    .records("wiz.issues")
                    .into_values()
                    .flatten()
                    .map(|r| r.value),
            )
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_scram_credentials_are_used_and_a_wrong_password_is_named() {
    const PASSWORD: &str = "scram-password-never-shown-0045";
    let broker = Broker::start_with_user("wiz", PASSWORD, &["wiz.issues"]).await;
    let sim = sim(1, 10).await;
    let dir = tempfile::tempdir().unwrap();
    let sasl = |password: &str| {
        format!(
            "sasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"wiz\"\nsasl_password = \"{password}\"\n"
        )
    };
    let app = App::start(
        settings(&config(&sim, &broker, dir.path(), &sasl(PASSWORD))),
        AppOptions::default(),
    )
    .await
    .unwrap();
    let open = open_ids(&sim)["t0"].len();
    wait_until(
        "every event in Kafka over SASL",
        Duration::from_secs(30),
        || app.sink_stats.statuses()["kafka"].delivered_events as usize >= open,
    )
    .await;
    let got: BTreeSet<String> = broker
        .records("wiz.issues")
        .values()
        .flatten()
        .filter_map(|r| r.id.clone())
        .collect();
    assert_eq!(got.len(), open);
    app.shutdown().await.unwrap();

    // A wrong password: the sink (its topic is a template, opened at first use) fails the page,
    // saying what to check and never showing the password; the page waits in the backlog.
    let app = App::start(
        settings(&config(
            &sim,
            &broker,
            tempfile::tempdir().unwrap().path(),
            &sasl("not-the-password"),
        )),
        AppOptions::default(),
    )
    .await
    .unwrap();
    wait_until("the refusal named", Duration::from_secs(60), || {
        let s = &app.sink_stats.statuses()["kafka"];
        s.backlog_events > 0 && s.last_error.is_some()
    })
    .await;
    let refused = app.sink_stats.statuses()["kafka"]
        .last_error
        .clone()
        .unwrap()
        .message;
    assert!(
        refused.contains("cannot reach the Kafka brokers")
            && refused.contains("check sasl_username and sasl_password"),
        "{refused}"
    );
    assert!(!refused.contains("not-the-password") && !refused.contains(PASSWORD));
    app.shutdown().await.unwrap();
}
