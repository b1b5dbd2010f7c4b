//! The `sentinel` sink (issue 22) against the Entra token endpoint and Logs Ingestion API
//! simulator: one token reused and renewed on 401, JSON arrays within the byte limit, an event
//! over the limit reported and the rest delivered, 429/503 retried after Retry-After, each
//! refusal named with nothing lost, and kill -9.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use wiz_connector::app::{App, AppOptions};
use wiz_connector::sim::sentinel::{
    SentinelOptions, SentinelSimulator, CLIENT_ID, CLIENT_SECRET, DCR_ID, TENANT_ID,
};
use wiz_connector::sim::Simulator;

async fn azure(opts: SentinelOptions) -> SentinelSimulator {
    SentinelSimulator::start("127.0.0.1:0".parse().unwrap(), opts)
        .await
        .unwrap()
}

const STREAM: &str = "Custom-WizIssues_CL";

/// Every tenant of `sim`, a native file sink (the reference) and a Sentinel sink with `extra`
/// keys.
fn config(sim: &Simulator, az: &SentinelSimulator, dir: &std::path::Path, extra: &str) -> String {
    format!(
        "{}[sinks.archive]\ntype = \"file\"\npath = \"{}\"\n[sinks.sentinel]\ntype = \"sentinel\"\ntenant_id = \"{TENANT_ID}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\nauthority = \"{base}\"\nendpoint = \"{base}\"\ndcr_id = \"{DCR_ID}\"\nstream = \"{STREAM}\"\ntimeout = \"2s\"\n{extra}",
        sim_config(
            sim,
            "poll_interval = \"1h\"\nstartup_jitter = \"0s\"\npage_size = 10",
            "rate_limit = 50"
        ),
        dir.join("archive.jsonl").display(),
        base = az.base()
    )
}

fn archived(dir: &std::path::Path) -> BTreeSet<String> {
    read_lines(&dir.join("archive.jsonl"))
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

/// How many times each event id was ingested (read in the record's format).
fn ingested(az: &SentinelSimulator) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for r in az.records() {
        let id = r.record["id"]
            .as_str()
            .or(r.record["metadata"]["uid"].as_str())
            .unwrap()
            .to_string();
        *n.entry(id).or_default() += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_as_arrays_within_the_limit_with_one_token_renewed_on_401() {
    let sim = sim(1, 40).await;
    let az = azure(SentinelOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    // Busy once and failing once (both with Retry-After), and one token found expired: every
    // event still arrives once.
    az.set_busy(1);
    az.set_failing(1);
    az.expire_tokens(1);
    let body = config(
        &sim,
        &az,
        dir.path(),
        "format = \"ocsf\"\nmax_batch_bytes = 16384\ngzip = false\n",
    );
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    let open = open_ids(&sim)["t0"].len();
    wait_until("every event at Sentinel", Duration::from_secs(30), || {
        ingested(&az).len() >= open && archived(dir.path()).len() >= open
    })
    .await;
    let got = ingested(&az);
    assert_eq!(
        got.keys().cloned().collect::<BTreeSet<_>>(),
        archived(dir.path())
    );
    assert!(got.values().all(|n| *n == 1), "each once: {got:?}");
    for r in az.records() {
        assert_eq!((r.dcr.as_str(), r.stream.as_str()), (DCR_ID, STREAM));
        assert!(r.record["class_uid"].is_i64(), "OCSF: {}", r.record);
    }
    let c = az.counters();
    // Several requests per page, none over the limit.
    assert!(c.largest_body <= 16384, "{c:?}");
    assert!(c.requests as usize > open / 4, "{c:?}");
    assert_eq!((c.throttled, c.unauthorized), (2, 1), "{c:?}");
    // One token, and one more after the 401.
    assert_eq!(c.tokens, 2, "{c:?}");
    let status = &app.sink_stats.statuses()["sentinel"];
    assert_eq!(status.delivered_events as usize, open);
    assert!(status.last_error.is_none());
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_over_the_limit_is_reported_and_the_rest_delivered() {
    let sim = sim(1, 40).await;
    let az = azure(SentinelOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    // Requests of at most 4,096 bytes: the OCSF events of the larger issues do not fit alone.
    let body = format!(
        "{}[sinks.ocsf_copy]\ntype = \"file\"\nformat = \"ocsf\"\npath = \"{}\"\n",
        config(
            &sim,
            &az,
            dir.path(),
            "format = \"ocsf\"\nmax_batch_bytes = 4096\n"
        ),
        dir.path().join("ocsf.jsonl").display()
    );
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    let open = open_ids(&sim)["t0"].len();
    wait_until("every page through", Duration::from_secs(30), || {
        let s = &app.sink_stats.statuses()["sentinel"];
        (s.delivered_events + s.rejected_events) as usize >= open
    })
    .await;
    let raw = std::fs::read(dir.path().join("ocsf.jsonl")).unwrap();
    let (big, small): (Vec<&[u8]>, Vec<&[u8]>) = raw
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .partition(|l| l.len() + 2 > 4096);
    assert!(
        !big.is_empty() && !small.is_empty(),
        "{} {}",
        big.len(),
        small.len()
    );
    let id = |l: &[u8]| -> String {
        serde_json::from_slice::<serde_json::Value>(l).unwrap()["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let status = app.sink_stats.statuses()["sentinel"].clone();
    assert_eq!(status.rejected_events as usize, big.len());
    let rejection = status.last_rejection.unwrap().message;
    assert!(
        rejection.contains("over the 4096 bytes one Logs Ingestion request may hold"),
        "{rejection}"
    );
    assert!(
        big.iter().any(|l| rejection.contains(&id(l))),
        "names the event"
    );
    assert_eq!(
        ingested(&az).keys().cloned().collect::<BTreeSet<_>>(),
        small.iter().map(|l| id(l)).collect::<BTreeSet<_>>()
    );
    assert!(status.last_error.is_none());
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_named_keep_the_pages_and_deliver_once_fixed() {
    // (what to break, the text the error must hold)
    let cases = [
        (
            "client_secret = \"wrong\"",
            "the client secret is not valid",
        ),
        (
            "tenant_id = \"00000000-0000-4000-8000-000000000000\"",
            "no such tenant: check tenant_id",
        ),
        ("dcr_id = \"dcr-unknown\"", "no such data collection rule"),
        (
            "stream = \"Custom-Typo_CL\"",
            "it must be declared in the DCR",
        ),
        ("client_id = \"no-role\"", "Monitoring Metrics Publisher"),
    ];
    for (broken, expect) in cases {
        let sim = sim(1, 10).await;
        let mut opts = SentinelOptions::default();
        opts.apps.push(("no-role".into(), CLIENT_SECRET.into()));
        opts.apps_without_role.push("no-role".into());
        let az = azure(opts).await;
        let dir = tempfile::tempdir().unwrap();
        let good = config(&sim, &az, dir.path(), "");
        // Only the Sentinel sink's key (the Wiz tenants have a client_id too).
        let key = broken.split(" = ").next().unwrap();
        let (head, sink) = good.split_at(good.find("[sinks.sentinel]").unwrap());
        let sink: String = sink
            .lines()
            .map(|l| {
                if l.starts_with(&format!("{key} = ")) {
                    broken.to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let bad = format!("{head}{sink}\n");
        assert_ne!(bad, good);
        let open = open_ids(&sim)["t0"].len() as u64;
        let (app, cfg, message) = start_refused(&bad, "sentinel", open).await;
        assert!(message.contains(expect), "{broken}: {message}");
        assert!(!message.contains(CLIENT_SECRET));
        assert!(az.records().is_empty());
        std::fs::write(&cfg.path, &good).unwrap();
        app.reloader().reload("test").await.unwrap();
        wait_until("the backlog delivered", Duration::from_secs(30), || {
            az.records().len() as u64 >= open
        })
        .await;
        assert_eq!(
            ingested(&az).keys().cloned().collect::<BTreeSet<_>>(),
            archived(dir.path())
        );
        app.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_delivery_to_sentinel_loses_nothing() {
    let sim = sim(1, 40).await;
    let client = sim.tenants()[0].client_id.clone();
    let az = azure(SentinelOptions::default()).await;
    // A slow API keeps pages in flight when the kill comes.
    az.set_delay(Duration::from_millis(150));
    let dir = tempfile::tempdir().unwrap();
    let body = config(&sim, &az, dir.path(), "")
        .replace("poll_interval = \"1h\"", "poll_interval = \"1s\"");
    let cfg = write_config(&body);
    // Sentinel has no ids to deduplicate on: a page a crash cut short after it was ingested is
    // ingested again, so repeats are allowed (each with the same event id); nothing is lost.
    kill_9_rounds_lose_nothing(
        &sim,
        &client,
        &cfg.path,
        &dir.path().join("archive.jsonl"),
        env_count("WIZ_SENTINEL_CRASH_KILLS", 5),
        || last_events(az.records().into_iter().map(|r| r.record)),
    )
    .await;
}
