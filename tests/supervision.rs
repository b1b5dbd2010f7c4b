//! The supervision tree: restarts, parking, a slow sink, and a thousand tenants at once.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use wiz_connector::app::{App, AppOptions};
use wiz_connector::faults::FaultInjection;
use wiz_connector::health::TenantState;

fn file_sink(dir: &std::path::Path) -> (String, std::path::PathBuf) {
    let path = dir.join("events.jsonl");
    (
        format!(
            "[sinks.archive]\ntype = \"file\"\npath = \"{}\"\n",
            path.display()
        ),
        path,
    )
}

/// (tenant, issue_id) of every event line.
fn keys(lines: &[serde_json::Value]) -> Vec<(String, String)> {
    lines
        .iter()
        .map(|l| {
            (
                l["tenant"].as_str().unwrap().to_string(),
                l["issue_id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn expected_keys(sim: &wiz_connector::sim::Simulator) -> HashSet<(String, String)> {
    open_ids(sim)
        .into_iter()
        .flat_map(|(t, ids)| ids.into_iter().map(move |i| (t.clone(), i)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_tenant_is_restarted_with_backoff_then_parked_while_others_poll() {
    let sim = sim(3, 12).await;
    let dir = tempfile::tempdir().unwrap();
    let (sink, _) = file_sink(dir.path());
    let body = format!(
        "{}{sink}",
        sim_config(
            &sim,
            "poll_interval = \"1s\"\nstartup_jitter = \"0s\"\nrestart_intensity = 3\nrestart_period = \"60s\"\nrestart_backoff_initial = \"1s\"\nrestart_backoff_max = \"4s\"\nfailed_cooldown = \"1h\"",
            "",
        )
    );
    let faults = FaultInjection::default();
    faults.set_page_hook(Some(Arc::new(
        |tenant: &str, _page: &wiz_connector::wiz::Page| {
            if tenant == "t1" {
                panic!("poisoned page for {tenant}");
            }
        },
    )));
    let app = App::start(
        settings(&body),
        AppOptions {
            faults,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    wait_until("the others' first polls", Duration::from_secs(20), || {
        ["t0", "t2"]
            .iter()
            .all(|t| app.health.get(t).unwrap().polls >= 1)
    })
    .await;
    let before: Vec<u64> = ["t0", "t2"]
        .iter()
        .map(|t| app.health.get(t).unwrap().polls)
        .collect();
    wait_until("t1 parked as failed", Duration::from_secs(30), || {
        app.health.get("t1").unwrap().state == TenantState::Failed
    })
    .await;
    let t1 = app.health.get("t1").unwrap();
    assert_eq!(t1.restarts, 3, "restarted up to the intensity, then parked");
    assert!(
        t1.last_error
            .as_ref()
            .unwrap()
            .message
            .contains("poisoned page for t1"),
        "{t1:?}"
    );
    assert_eq!(t1.events_total, 0);
    assert!(
        t1.next_poll_at.is_some(),
        "the cool-down retry is scheduled"
    );
    // The crash loop (backoffs of 0.5-1, 1-2 and 2-4 s) spans at least one more poll of the others.
    for (i, t) in ["t0", "t2"].iter().enumerate() {
        let h = app.health.get(t).unwrap();
        assert!(h.polls > before[i], "{t} kept polling: {h:?}");
        assert!(
            matches!(h.state, TenantState::Idle | TenantState::Polling),
            "{h:?}"
        );
        assert_eq!(h.restarts, 0);
        assert!(h.last_error.is_none(), "{h:?}");
    }
    assert!(app.is_running(), "the process lives");
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sink_loses_nothing_bounds_memory_and_tenants_resume_when_it_recovers() {
    let sim = sim(5, 40).await;
    let dir = tempfile::tempdir().unwrap();
    let (sink, path) = file_sink(dir.path());
    let body = format!(
        "{}{sink}",
        sim_config(
            &sim,
            "poll_interval = \"1s\"\nstartup_jitter = \"0s\"\npage_size = 5",
            "rate_limit = 50"
        )
    );
    let faults = FaultInjection::default();
    faults.set_sink_delay(Duration::from_millis(150));
    let app = App::start(
        settings(&body),
        AppOptions {
            faults: faults.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let expected = expected_keys(&sim);
    wait_until(
        "every open issue delivered through the slow sink",
        Duration::from_secs(60),
        || read_lines(&path).len() >= expected.len(),
    )
    .await;
    let stats = &app.sink_stats;
    let max = stats
        .max_in_flight
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        max <= 5,
        "at most one page per tenant waits for the sink: {max}"
    );
    // Recovery: the sink is fast again and new issues flow at once.
    faults.set_sink_delay(Duration::ZERO);
    let new_ids: Vec<String> = sim
        .tenants()
        .iter()
        .map(|t| sim.issues(&t.client_id, |s| s.add()))
        .collect();
    wait_until(
        "new issues delivered after recovery",
        Duration::from_secs(15),
        || {
            let got: HashSet<String> = read_lines(&path)
                .iter()
                .map(|l| l["issue_id"].as_str().unwrap().to_string())
                .collect();
            new_ids.iter().all(|i| got.contains(i))
        },
    )
    .await;
    let health = app.health.clone();
    app.shutdown().await.unwrap();
    for h in health.all() {
        assert_eq!(
            h.state,
            TenantState::Stopped,
            "a deliberate stop is not a crash: {h:?}"
        );
        assert_eq!(h.restarts, 0);
    }
    let lines = read_lines(&path);
    let all = keys(&lines);
    let unique: HashSet<_> = all.iter().cloned().collect();
    assert_eq!(all.len(), unique.len(), "no event twice");
    assert!(expected.is_subset(&unique), "nothing lost");
    assert_eq!(unique.len(), expected.len() + 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_tenants_deliver_every_issue_exactly_once() {
    let sim = sim(1000, 6).await;
    let dir = tempfile::tempdir().unwrap();
    let (sink, path) = file_sink(dir.path());
    let body = format!(
        "{}{sink}",
        sim_config(
            &sim,
            "poll_interval = \"2s\"\nstartup_jitter = \"1s\"\npage_size = 3\nmax_concurrent_sweeps = 64",
            "rate_limit = 50"
        )
    );
    let expected = expected_keys(&sim);
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    wait_until("all tenants started", Duration::from_secs(30), || {
        app.is_ready()
    })
    .await;
    assert_eq!(app.health.len(), 1000);
    wait_until(
        "every tenant polled twice",
        Duration::from_secs(120),
        || app.health.all().iter().all(|h| h.polls >= 2),
    )
    .await;
    app.shutdown().await.unwrap();
    let all = keys(&read_lines(&path));
    let mut seen = HashMap::new();
    for k in &all {
        *seen.entry(k.clone()).or_insert(0) += 1;
    }
    let dupes: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dupes.is_empty(),
        "{} duplicated, e.g. {:?}",
        dupes.len(),
        dupes.first()
    );
    let got: HashSet<_> = seen.into_keys().collect();
    assert_eq!(got, expected, "every open issue of every tenant");
    assert!(expected.len() > 2500, "{}", expected.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_sink_is_restarted_and_tenants_resend_their_page() {
    let sim = sim(3, 30).await;
    let dir = tempfile::tempdir().unwrap();
    let (sink, path) = file_sink(dir.path());
    let body = format!(
        "{}{sink}",
        sim_config(
            &sim,
            "poll_interval = \"1s\"\nstartup_jitter = \"0s\"\npage_size = 5",
            "rate_limit = 50"
        )
    );
    let faults = FaultInjection::default();
    faults.panic_sink(3);
    let app = App::start(
        settings(&body),
        AppOptions {
            faults,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let expected = expected_keys(&sim);
    wait_until(
        "every open issue delivered despite three sink crashes",
        Duration::from_secs(60),
        || read_lines(&path).len() >= expected.len(),
    )
    .await;
    wait_until(
        "a further poll of every tenant",
        Duration::from_secs(20),
        || app.health.all().iter().all(|h| h.polls >= 2),
    )
    .await;
    app.shutdown().await.unwrap();
    let all = keys(&read_lines(&path));
    let unique: HashSet<_> = all.iter().cloned().collect();
    assert_eq!(
        all.len(),
        unique.len(),
        "a crashed write is resent once, not twice"
    );
    assert_eq!(unique, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_park_the_tenant_until_its_configuration_changes() {
    let sim = sim(1, 4).await;
    let good = sim.tenants()[0].client_secret.clone();
    let dir = tempfile::tempdir().unwrap();
    let (sink, out) = file_sink(dir.path());
    let body = |secret: &str| {
        format!(
            "{}{sink}",
            sim_config(
                &sim,
                "poll_interval = \"1s\"\nstartup_jitter = \"0s\"\nfailed_cooldown = \"1h\"\nwatch_interval = \"0s\"",
                "",
            )
            .replace(&good, secret)
        )
    };
    let cfg = write_config(&body("wrong-secret-123"));
    let settings = wiz_connector::config::load(
        &cfg.path,
        &wiz_connector::config::EnvSource::Fixed(Default::default()),
    )
    .unwrap();
    let app = App::start(settings, AppOptions::default()).await.unwrap();
    wait_until("the tenant parked", Duration::from_secs(30), || {
        app.health
            .get("t0")
            .is_some_and(|h| h.state == TenantState::Failed)
    })
    .await;
    let h = app.health.get("t0").unwrap();
    let err = h.last_error.unwrap().message;
    assert!(
        err.starts_with("credentials refused 3 times in a row; parked until the configuration changes or connector.failed_cooldown (1h) passes: could not authenticate to wiz: credentials refused"),
        "{err}"
    );
    assert!(!err.contains("wrong-secret-123"));
    // Its next try is the cool-down away: the token endpoint saw exactly the three refusals.
    let next = h.next_poll_at.unwrap();
    assert!(next > std::time::SystemTime::now() + Duration::from_secs(3000));
    assert_eq!(sim.counters("sim-client-0000").token_requests, 3);
    // A corrected secret (a configuration change) brings it back at once.
    std::fs::write(&cfg.path, body(&good)).unwrap();
    let summary = app.reloader().reload("test").await.unwrap();
    assert_eq!(summary.restarted, vec!["t0".to_string()]);
    let open = open_ids(&sim)["t0"].len();
    // The poll ends (idle) just after the sink took its events: wait for both.
    wait_until(
        "the tenant delivers and its poll ends",
        Duration::from_secs(30),
        || {
            read_lines(&out).len() == open
                && app
                    .health
                    .get("t0")
                    .is_some_and(|h| h.state == TenantState::Idle)
        },
    )
    .await;
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_crashing_more_often_than_a_sweep_lasts_still_finishes_it() {
    let sim = sim(1, 120).await;
    let dir = tempfile::tempdir().unwrap();
    let (sink, out) = file_sink(dir.path());
    let body = format!(
        "{}{sink}",
        sim_config(
            &sim,
            "poll_interval = \"1h\"\nstartup_jitter = \"0s\"\npage_size = 5\nrestart_intensity = 1000\nrestart_backoff_initial = \"10ms\"\nrestart_backoff_max = \"20ms\"",
            "rate_limit = 100",
        )
    );
    // Every 4th page the process sees crashes the tenant before it is delivered: a sweep from
    // page 1 would never get past page 3.
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let faults = FaultInjection::default();
    let counter = seen.clone();
    faults.set_page_hook(Some(Arc::new(
        move |_tenant: &str, _page: &wiz_connector::wiz::Page| {
            if counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 4 == 3 {
                panic!("crash in the middle of the sweep");
            }
        },
    )));
    let app = App::start(
        settings(&body),
        AppOptions {
            faults,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let open = open_ids(&sim)["t0"].clone();
    assert!(open.len() > 40, "a sweep of many pages: {}", open.len());
    wait_until("the sweep finished", Duration::from_secs(60), || {
        app.health
            .get("t0")
            .is_some_and(|h| h.polls >= 1 && h.last_success_at.is_some())
    })
    .await;
    let lines = read_lines(&out);
    let ids: Vec<String> = lines
        .iter()
        .map(|l| l["issue_id"].as_str().unwrap().to_string())
        .collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "nothing delivered twice");
    let delivered: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(delivered, open, "every open issue delivered");
    let h = app.health.get("t0").unwrap();
    assert!(h.restarts >= 5, "it crashed often: {} restarts", h.restarts);
    app.shutdown().await.unwrap();
}

/// Issue 18 (start-up): tenants whose first polls are far off are ready at once without being
/// started: their health says when they poll, nothing reaches Wiz before then, and an operator's
/// poll starts one at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_whose_first_poll_is_far_off_start_shortly_before_it() {
    let sim = sim(3, 5).await;
    let dir = tempfile::tempdir().unwrap();
    let (sink, out) = file_sink(dir.path());
    let body = format!(
        "{}{sink}",
        sim_config(
            &sim,
            "poll_interval = \"48h\"\nstartup_jitter = \"24h\"",
            ""
        )
    );
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    wait_until("ready", Duration::from_secs(10), || app.is_ready()).await;
    let now = std::time::SystemTime::now();
    // Each first poll is a random moment of the next 24 h. A tenant drawn within two minutes
    // may poll during the test (rare): only the others are held to "nothing reached Wiz".
    let mut far = Vec::new();
    for t in ["t0", "t1", "t2"] {
        let h = app.health.get(t).unwrap();
        assert_eq!(h.state, TenantState::Starting, "{t}");
        let at = h.next_poll_at.expect("the first poll is scheduled");
        assert!(
            at > now && at <= now + Duration::from_secs(24 * 3600),
            "{t}"
        );
        if at > now + Duration::from_secs(120) {
            far.push(t);
        }
    }
    assert!(
        app.poll_now("t1").await,
        "an operator's poll starts the tenant"
    );
    wait_until("t1 polled", Duration::from_secs(20), || {
        app.health.get("t1").is_some_and(|h| h.polls >= 1)
    })
    .await;
    let t1_tokens = sim.counters(&sim.tenants()[1].client_id).token_requests;
    assert_eq!(t1_tokens, 1, "t1 reached Wiz once");
    for (i, t) in sim.tenants().iter().enumerate() {
        let id = format!("t{i}");
        if i == 1 || !far.contains(&id.as_str()) {
            continue;
        }
        assert_eq!(
            sim.counters(&t.client_id).token_requests,
            0,
            "{id} did not reach Wiz"
        );
        assert_eq!(app.health.get(&id).unwrap().polls, 0);
    }
    if far.contains(&"t0") && far.contains(&"t2") {
        assert_eq!(read_lines(&out).len(), open_ids(&sim)["t1"].len());
    }
    app.shutdown().await.unwrap();
}
