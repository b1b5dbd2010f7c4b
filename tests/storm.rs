//! Storm isolation: a tenant waiting out a retry or a `Retry-After` holds no sweep slot, continues
//! its sweep where it stopped when the wait ends, shows the wait in health, and stops at once
//! when asked to.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use wiz_connector::app::{App, AppOptions};
use wiz_connector::health::TenantState;
use wiz_connector::sim::Fault;

const STORMY: usize = 20;

/// 22 simulated tenants: t0..t19 answer every request with 429 and `Retry-After: 3600`, t20 and
/// t21 are healthy.
async fn storm(poll_interval: &str) -> (wiz_connector::sim::Simulator, String, tempfile::TempDir) {
    let sim = sim(STORMY + 2, 12).await;
    for t in sim.tenants().iter().take(STORMY) {
        sim.set_sticky_fault(
            &t.client_id,
            Some(Fault::RateLimited {
                retry_after: Some(3600),
            }),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}[sinks.out]\ntype = \"file\"\npath = \"{}\"\n",
        sim_config(
            &sim,
            &format!("poll_interval = \"{poll_interval}\"\nstartup_jitter = \"0s\"\nmax_concurrent_sweeps = 4\npage_size = 5"),
            "rate_limit = 50",
        ),
        dir.path().join("events.jsonl").display()
    );
    (sim, body, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_in_a_retry_after_storm_hold_no_slot_and_the_healthy_ones_deliver() {
    let (sim, body, dir) = storm("30s").await;
    let open = open_ids(&sim);
    let started = Instant::now();
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    // Every stormy tenant reaches Wiz (none waits behind the 4 slots forever) and then waits.
    wait_until(
        "every stormy tenant reached Wiz",
        Duration::from_secs(20),
        || {
            sim.tenants()
                .iter()
                .take(STORMY)
                .all(|t| sim.counters(&t.client_id).graphql_requests >= 1)
        },
    )
    .await;
    // The healthy ones deliver everything, well within one poll interval.
    let out = dir.path().join("events.jsonl");
    wait_for(
        "the healthy tenants' issues",
        Duration::from_secs(20),
        || {
            let lines = read_lines(&out);
            let mut got: HashMap<&str, usize> = HashMap::new();
            for l in &lines {
                *got.entry(l["tenant"].as_str().unwrap()).or_default() += 1;
            }
            for t in ["t20", "t21"] {
                if got.get(t).copied().unwrap_or(0) != open[t].len() {
                    return Err(format!("{t}: {:?} of {}", got.get(t), open[t].len()));
                }
            }
            Ok(())
        },
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "within one poll interval"
    );
    // The healthy ones' polls end (their slots go back once the sweep's reconciliation is done,
    // a moment after the last page reached the sink).
    wait_until(
        "the healthy tenants' polls end",
        Duration::from_secs(20),
        || {
            ["t20", "t21"].iter().all(|t| {
                app.health
                    .get(t)
                    .is_some_and(|h| h.polls >= 1 && h.state == TenantState::Idle)
            })
        },
    )
    .await;
    // The waiting tenants show why and until when, and hold no slot.
    let h = app.health.get("t3").unwrap();
    assert_eq!(h.state, TenantState::Backoff);
    let err = h.last_error.unwrap().message;
    assert!(
        err.contains("rate limited by wiz (HTTP 429, Retry-After 3600s)")
            && err.contains("retry 1 of 5"),
        "{err}"
    );
    let until = h.next_attempt_at.expect("next attempt shown");
    let wait = until.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(
        wait > Duration::from_secs(200),
        "Retry-After (capped at 300 s): {wait:?}"
    );
    let metrics = app.observer_metrics_text();
    let in_use = metrics
        .lines()
        .find(|l| l.starts_with("wiz_connector_sweep_slots_in_use "))
        .unwrap();
    assert_eq!(
        in_use, "wiz_connector_sweep_slots_in_use 0",
        "no slot held while waiting"
    );
    assert!(metrics.contains("wiz_connector_sweep_slot_wait_seconds_count"));
    // Stopping does not wait for the Retry-After.
    let stop = Instant::now();
    app.shutdown().await.unwrap();
    assert!(
        stop.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        stop.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_whose_retry_ends_continues_its_sweep_without_skipping_or_repeating() {
    let sim = sim(1, 40).await;
    let client = sim.tenants()[0].client_id.clone();
    // Page 1 answers; page 2 is rate limited twice (Retry-After 1 s), then the sweep goes on.
    sim.push_faults(
        &client,
        [
            Fault::Latency { ms: 0 },
            Fault::RateLimited {
                retry_after: Some(1),
            },
            Fault::RateLimited {
                retry_after: Some(1),
            },
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let body = format!(
        "{}[sinks.out]\ntype = \"file\"\npath = \"{}\"\n",
        sim_config(
            &sim,
            "poll_interval = \"1h\"\nstartup_jitter = \"0s\"\nmax_concurrent_sweeps = 1\npage_size = 5",
            "rate_limit = 50",
        ),
        out.display()
    );
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    wait_until("the first sweep done", Duration::from_secs(30), || {
        app.health.get("t0").is_some_and(|h| h.polls >= 1)
    })
    .await;
    let h = app.health.get("t0").unwrap();
    assert_eq!(h.state, TenantState::Idle, "{h:?}");
    assert_eq!(h.next_attempt_at, None);
    let lines = read_lines(&out);
    let open = open_ids(&sim)["t0"].clone();
    let mut ids: Vec<&str> = lines
        .iter()
        .map(|l| l["issue_id"].as_str().unwrap())
        .collect();
    ids.sort();
    let before = ids.len();
    ids.dedup();
    assert_eq!(before, ids.len(), "nothing repeated");
    assert_eq!(ids.len(), open.len(), "nothing skipped");
    // One request per page plus the two refused ones: the sweep went on from page 2.
    let pages = open.len().div_ceil(5) as u64;
    let requests = sim.counters(&client).graphql_requests;
    assert!(
        requests == pages + 2 || requests == pages + 3,
        "{requests} requests for {pages} pages"
    );
    app.shutdown().await.unwrap();
}

/// A tenant waiting for its credential's rate limiter holds no sweep slot either: with one slot
/// and a budget of one request every 100 s, each tenant's second page waits 100 s, and while both
/// wait no slot is held (before, the waiting sweep kept it, and thousands of tenants taking
/// their first polls at once spent the fleet's slots waiting for their limiters).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_waiting_for_their_rate_limit_hold_no_slot() {
    let sim = sim(2, 12).await;
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}[sinks.out]\ntype = \"file\"\npath = \"{}\"\n",
        sim_config(
            &sim,
            "poll_interval = \"1h\"\nstartup_jitter = \"0s\"\nmax_concurrent_sweeps = 1\npage_size = 5",
            // Far longer than the test runs, however loaded the machine: no second request.
            "rate_limit = 0.01",
        ),
        dir.path().join("events.jsonl").display()
    );
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    let requests = |i: usize| sim.counters(&sim.tenants()[i].client_id).graphql_requests;
    wait_until(
        "both tenants asked for their first page",
        Duration::from_secs(15),
        || requests(0) >= 1 && requests(1) >= 1,
    )
    .await;
    assert_eq!(
        (requests(0), requests(1)),
        (1, 1),
        "each second page waits for its limiter"
    );
    wait_until(
        "both waiting with no slot held",
        Duration::from_secs(10),
        || {
            app.observer_metrics_text()
                .lines()
                .any(|l| l == "wiz_connector_sweep_slots_in_use 0")
        },
    )
    .await;
    assert_eq!((requests(0), requests(1)), (1, 1));
    // Stopping ends the limiter's wait too.
    app.shutdown().await.unwrap();
}
