//! Webhook hints: `POST /hooks/wiz/{tenant}` queues an issue id, the tenant looks it up by id
//! within its rate limit and delivers what changed with a poll's kinds and ids, without moving
//! the checkpoint. Polls are 300 s apart here, so anything delivered came from a hint.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use wiz_connector::app::{App, AppOptions};
use wiz_connector::sim::Simulator;

const TOKEN: &str = "hook-token-0123456789abcdef";

/// t0 takes hints (token [`TOKEN`]); t1 has no token. Polls every 300 s.
fn config(sim: &Simulator, out: &std::path::Path, state: &std::path::Path, hooks: &str) -> String {
    let tenants = sim.tenants();
    let mut body = format!(
        "[connector]\nstate_dir = \"{}\"\npoll_interval = \"300s\"\nstartup_jitter = \"0s\"\npage_size = 50\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[hooks]\nlisten = \"127.0.0.1:0\"\n{hooks}\n\
         [sinks.out]\ntype = \"file\"\npath = \"{}\"\n",
        state.display(),
        out.display()
    );
    body.push_str(&tenant_toml(
        sim,
        "t0",
        &tenants[0],
        &format!("rate_limit = 2\nwebhook_token = \"{TOKEN}\""),
    ));
    if let Some(t1) = tenants.get(1) {
        body.push_str(&tenant_toml(sim, "t1", t1, ""));
    }
    body
}

struct Hooked {
    app: App,
    url: String,
    http: reqwest::Client,
}

impl Hooked {
    async fn start(body: &str) -> Hooked {
        let app = App::start(settings(body), AppOptions::default())
            .await
            .unwrap();
        let url = format!("http://{}", app.hooks_addr().expect("[hooks] is set"));
        Hooked {
            app,
            url,
            http: reqwest::Client::new(),
        }
    }

    async fn post(&self, tenant: &str, auth: Option<&str>, body: Vec<u8>) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/hooks/wiz/{tenant}", self.url))
            .header("content-type", "application/json")
            .body(body);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let bytes = r.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn hint(&self, id: &str) -> u16 {
        let body = serde_json::to_vec(&json!({"issue": {"id": id}, "trigger": "UPDATED"})).unwrap();
        self.post("t0", Some(&format!("Bearer {TOKEN}")), body)
            .await
            .0
    }

    async fn first_sweep(&self, out: &std::path::Path, open: usize) {
        wait_until("the first sweep", Duration::from_secs(30), || {
            read_lines(out).len() == open && self.app.health.get("t0").is_some_and(|h| h.polls >= 1)
        })
        .await;
    }
}

fn updates_of(out: &std::path::Path, id: &str) -> Vec<Value> {
    read_lines(out)
        .into_iter()
        .filter(|l| l["issue_id"] == id && l["kind"] == "issue.updated")
        .collect()
}

/// Raises (or lowers) an open issue's severity; its status stays.
fn escalate(sim: &Simulator, id: &str) {
    let client = sim.tenants()[0].client_id.clone();
    assert!(sim.issues(&client, |s| s.escalate(id)).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_delivers_the_change_long_before_the_next_poll_and_a_resync_finds_nothing_new() {
    let sim = sim(1, 40).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let h = Hooked::start(&config(&sim, &out, dir.path(), "")).await;
    let open: Vec<String> = open_ids(&sim)["t0"].iter().cloned().collect();
    h.first_sweep(&out, open.len()).await;
    let requests = sim.counters(&sim.tenants()[0].client_id).graphql_requests;

    // An unchanged issue's hint costs one lookup and emits nothing.
    assert_eq!(h.hint(&open[0]).await, 202);
    wait_until(
        "the unchanged issue looked up",
        Duration::from_secs(10),
        || h.app.health.get("t0").unwrap().hints_looked_up == 1,
    )
    .await;
    // Then a changed one: delivered as issue.updated, by the hint (no poll ran).
    escalate(&sim, &open[1]);
    assert_eq!(h.hint(&open[1]).await, 202);
    wait_until(
        "the hinted change delivered (CONTRACT: within 5 s)",
        Duration::from_secs(5),
        || !updates_of(&out, &open[1]).is_empty(),
    )
    .await;
    // The sink writes the event before the tenant learns of its ack and records the timings.
    wait_until(
        "the hint's page acknowledged",
        Duration::from_secs(5),
        || {
            h.app
                .health
                .get("t0")
                .is_some_and(|h| h.last_hint_to_event_ms.is_some())
        },
    )
    .await;
    let lines = read_lines(&out);
    assert_eq!(
        lines.len(),
        open.len() + 1,
        "only the changed issue's event"
    );
    let health = h.app.health.get("t0").unwrap();
    assert_eq!(health.polls, 1, "delivered by the hint, not by a poll");
    assert_eq!(health.hints_looked_up, 2);
    assert!(health.last_change_age_ms.is_some());
    assert!(health.last_hint_to_event_ms.is_some());
    assert_eq!(
        sim.counters(&sim.tenants()[0].client_id).graphql_requests - requests,
        2,
        "one lookup per hint"
    );
    let metrics = h.app.observer_metrics_text();
    assert!(
        metrics.contains("wiz_connector_hint_to_event_seconds_count 1"),
        "{metrics}"
    );
    for series in [
        "wiz_connector_last_hint_to_event_seconds{tenant=\"t0\"}",
        "wiz_connector_change_age_seconds{tenant=\"t0\"}",
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }
    assert!(
        metrics.contains("wiz_connector_hints_total{result=\"queued\"} 2"),
        "{metrics}"
    );

    // A full sweep sees the same state the hint recorded: nothing more is delivered, so the
    // hint's event was the one a poll would have given.
    assert!(h.app.resync("t0").await);
    wait_until("the resync", Duration::from_secs(30), || {
        h.app.health.get("t0").unwrap().polls >= 2
    })
    .await;
    assert_eq!(read_lines(&out).len(), open.len() + 1);
    assert_eq!(updates_of(&out, &open[1]).len(), 1);
    h.app.shutdown().await.unwrap();
}

/// A poll asked for while a hint's lookup runs (and no poll does) starts once that lookup is
/// done, and no second poll follows it: the one that ran began after the ask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_asked_during_a_hint_lookup_runs_once_after_it() {
    use wiz_connector::sim::Fault;
    let sim = sim(1, 10).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let h = Hooked::start(&config(&sim, &out, dir.path(), "")).await;
    let open: Vec<String> = open_ids(&sim)["t0"].iter().cloned().collect();
    h.first_sweep(&out, open.len()).await;
    let client = sim.tenants()[0].client_id.clone();
    let before = sim.counters(&client).graphql_requests;
    // The lookup's answer comes 3 s after it is asked: the poll is asked meanwhile.
    sim.push_faults(&client, [Fault::SlowAnswer { ms: 3000 }]);
    escalate(&sim, &open[0]);
    assert_eq!(h.hint(&open[0]).await, 202);
    wait_until("the slow lookup asked for", Duration::from_secs(10), || {
        sim.counters(&client).graphql_requests > before
    })
    .await;
    let asked = std::time::SystemTime::now();
    assert!(h.app.poll_now("t0").await);
    // Settled: the next poll is an interval (300 s) after one that started after the ask.
    wait_until(
        "the asked poll, and no poll due",
        Duration::from_secs(30),
        || {
            h.app.health.get("t0").is_some_and(|t| {
                t.polls >= 2
                    && t.next_poll_at
                        .is_some_and(|at| at >= asked + Duration::from_secs(290))
            })
        },
    )
    .await;
    let t = h.app.health.get("t0").unwrap();
    assert_eq!(
        t.polls, 2,
        "the first sweep and the poll asked for, no other"
    );
    assert_eq!(t.hints_looked_up, 1);
    assert_eq!(
        updates_of(&out, &open[0]).len(),
        1,
        "the change once, by the hint"
    );
    h.app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_are_refused_alike_for_wrong_tokens_and_unknown_tenants() {
    let sim = sim(2, 5).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let h = Hooked::start(&config(&sim, &out, dir.path(), "")).await;
    let body = || serde_json::to_vec(&json!({"issueId": "x-1"})).unwrap();
    let good = format!("Bearer {TOKEN}");
    let wrong = format!("Bearer {TOKEN}x");
    let refusals = [
        h.post("t0", Some(&wrong), body()).await,
        h.post("t0", None, body()).await,
        h.post("t0", Some(&format!("Basic {TOKEN}")), body()).await,
        // t1 has no webhook_token; nobody is configured as t9.
        h.post("t1", Some(&good), body()).await,
        h.post("t9", Some(&good), body()).await,
    ];
    for (status, answer) in &refusals {
        assert_eq!(*status, 401);
        assert_eq!(
            answer, &refusals[0].1,
            "one answer, so tenants cannot be probed"
        );
    }
    assert!(!refusals[0].1.to_string().contains(TOKEN));
    // Accepted: the scheme in any case, the id in any of its three places.
    let lower = format!("bearer {TOKEN}");
    for b in [
        json!({"issue": {"id": "a-1"}}),
        json!({"issueId": "a-2"}),
        json!({"id": "a-3"}),
    ] {
        let (status, answer) = h
            .post("t0", Some(&lower), serde_json::to_vec(&b).unwrap())
            .await;
        assert_eq!(status, 202, "{answer}");
    }
    let (status, answer) = h
        .post(
            "t0",
            Some(&good),
            serde_json::to_vec(&json!({"issue": {"status": "OPEN"}})).unwrap(),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("no issue id"),
        "{answer}"
    );
    let (status, _) = h.post("t0", Some(&good), b"{not json".to_vec()).await;
    assert_eq!(status, 400);
    let mut big = br#"{"issue": {"id": "a-1"}, "pad": ""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 1024 * 1024));
    big.extend(br#""}"#);
    let (status, _) = h.post("t0", Some(&good), big).await;
    assert_eq!(status, 413);
    let metrics = h.app.observer_metrics_text();
    for line in [
        "wiz_connector_hints_total{result=\"unauthorized\"} 5",
        "wiz_connector_hints_total{result=\"bad_request\"} 2",
        "wiz_connector_hints_total{result=\"too_large\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    h.app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_a_thousand_hints_stays_within_the_rate_limit() {
    let sim = sim(1, 1500).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let h = Hooked::start(&config(&sim, &out, dir.path(), "queue_limit = 2000")).await;
    let client = sim.tenants()[0].client_id.clone();
    // Open issues, known after the first sweep. (A closed issue the tenant never saw would be
    // reported by its lookup, as an incremental poll reports it.)
    let ids: Vec<String> = open_ids(&sim)["t0"].iter().cloned().collect();
    let open = ids.len();
    assert!(open >= 1000, "{open}");
    h.first_sweep(&out, open).await;
    let before = sim.counters(&client);
    // 1,000 distinct ids, each hinted twice: 2,000 calls, duplicates collapsed.
    let burst: Vec<&String> = ids.iter().take(1000).collect();
    let sends = burst.iter().chain(burst.iter()).map(|id| h.hint(id));
    let statuses = futures_util::future::join_all(sends).await;
    assert!(statuses.iter().all(|s| *s == 202));
    wait_until("every hinted id looked up", Duration::from_secs(60), || {
        h.app.health.get("t0").unwrap().hints_looked_up >= 1000
    })
    .await;
    let after = sim.counters(&client);
    let health = h.app.health.get("t0").unwrap();
    // Nothing changed, so nothing is delivered; the ids went in batches of page_size (50), each
    // id once or, when hinted again after its lookup, twice.
    assert_eq!(read_lines(&out).len(), open);
    assert!(health.hints_looked_up <= 2000, "{health:?}");
    let lookups = after.graphql_requests - before.graphql_requests;
    assert!(
        (20..=40).contains(&lookups),
        "{lookups} lookups for 1,000 ids in batches of 50"
    );
    assert_eq!(
        after.rate_limited, before.rate_limited,
        "no 429 from the simulator"
    );
    // rate_limit = 2: at most 2 per second, one more for arrival jitter at a window's edge.
    assert!(after.peak_requests_per_second <= 3, "{after:?}");
    assert_eq!(health.hint_overflows, 0);
    h.app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflowing_queue_becomes_one_full_sweep() {
    let sim = sim(1, 60).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let h = Hooked::start(&config(&sim, &out, dir.path(), "queue_limit = 5")).await;
    let open: Vec<String> = open_ids(&sim)["t0"].iter().cloned().collect();
    h.first_sweep(&out, open.len()).await;
    let changed = &open[..12];
    for id in changed {
        escalate(&sim, id);
    }
    // The first lookup answers after 3 s: meanwhile at least 7 of the 12 hints find the queue
    // (5 ids at most) full.
    sim.push_faults(
        &sim.tenants()[0].client_id,
        [wiz_connector::sim::Fault::Latency { ms: 3000 }],
    );
    for id in changed {
        assert_eq!(h.hint(id).await, 202);
    }
    wait_until(
        "the full sweep after the overflow",
        Duration::from_secs(30),
        || h.app.health.get("t0").unwrap().polls >= 2,
    )
    .await;
    let health = h.app.health.get("t0").unwrap();
    assert_eq!(health.hint_overflows, 1, "{health:?}");
    assert_eq!(health.last_poll_mode, Some("full"));
    wait_until("every change delivered", Duration::from_secs(30), || {
        changed.iter().all(|id| !updates_of(&out, id).is_empty())
    })
    .await;
    for id in changed {
        assert_eq!(updates_of(&out, id).len(), 1, "{id} once");
    }
    let metrics = h.app.observer_metrics_text();
    assert!(
        metrics.contains("wiz_connector_hint_overflows_total 1"),
        "{metrics}"
    );
    h.app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_hinted_changes_are_not_repeated_and_unhinted_ones_arrive() {
    let sim = sim(1, 30).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let body = config(&sim, &out, dir.path(), "");
    let open: Vec<String> = open_ids(&sim)["t0"].iter().cloned().collect();
    let h = Hooked::start(&body).await;
    h.first_sweep(&out, open.len()).await;
    escalate(&sim, &open[0]);
    assert_eq!(h.hint(&open[0]).await, 202);
    wait_until("the hinted change", Duration::from_secs(20), || {
        !updates_of(&out, &open[0]).is_empty()
    })
    .await;
    // A change nobody hints.
    escalate(&sim, &open[1]);
    h.app.shutdown().await.unwrap();

    let h = Hooked::start(&body).await;
    wait_until(
        "the first poll after the restart",
        Duration::from_secs(30),
        || h.app.health.get("t0").is_some_and(|x| x.polls >= 1),
    )
    .await;
    assert_eq!(
        updates_of(&out, &open[0]).len(),
        1,
        "the hinted change is not repeated"
    );
    assert_eq!(
        updates_of(&out, &open[1]).len(),
        1,
        "the unhinted change arrives by the poll"
    );
    assert_eq!(read_lines(&out).len(), open.len() + 2);
    h.app.shutdown().await.unwrap();
}

/// Issue 18 (start-up): a tenant whose first poll is far off (here `startup_jitter` of a day)
/// is not started until shortly before it; a hint for it starts it at once and is looked up,
/// while its first poll keeps its time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_for_a_tenant_not_started_yet_starts_it_and_is_looked_up() {
    let sim = sim(1, 20).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let body = config(&sim, &out, dir.path(), "")
        .replace("startup_jitter = \"0s\"", "startup_jitter = \"24h\"")
        .replace("poll_interval = \"300s\"", "poll_interval = \"48h\"");
    let h = Hooked::start(&body).await;
    wait_until("ready", Duration::from_secs(10), || h.app.is_ready()).await;
    let health = h.app.health.get("t0").unwrap();
    assert_eq!(health.state.as_str(), "starting");
    let first = health.next_poll_at.expect("its first poll is scheduled");
    assert!(first > std::time::SystemTime::now());
    // Its first poll is a random moment of the next 24 h: in the rare draw that puts it within
    // two minutes, the poll may come during the test, and only the hint's part is checked.
    let far = first > std::time::SystemTime::now() + Duration::from_secs(120);
    let open: Vec<String> = open_ids(&sim)["t0"].iter().cloned().collect();
    assert_eq!(h.hint(&open[0]).await, 202);
    wait_until("the hinted issue", Duration::from_secs(10), || {
        read_lines(&out)
            .iter()
            .any(|l| l["issue_id"] == open[0].as_str())
    })
    .await;
    let health = h.app.health.get("t0").unwrap();
    assert_eq!(health.hints_looked_up, 1);
    if far {
        assert_eq!(health.polls, 0, "looked up by the hint, not by a poll");
        assert_eq!(read_lines(&out).len(), 1);
    }
    h.app.shutdown().await.unwrap();
}
