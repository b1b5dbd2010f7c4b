//! `/metrics` parses as Prometheus text (with a parser) and its counters move as the scenario says.

mod common;

use std::time::Duration;

use common::*;
use prometheus_parse::{Scrape, Value};
use wiz_connector::app::{App, AppOptions};
use wiz_connector::sim::Fault;

async fn scrape(app: &App) -> (Scrape, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let resp = reqwest::get(format!("http://{}/metrics", app.admin_addr()))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let text = String::from_utf8(resp.bytes().await.unwrap().to_vec()).unwrap();
    let lines: Vec<std::io::Result<String>> = text.lines().map(|l| Ok(l.to_string())).collect();
    let s = Scrape::parse(lines.into_iter()).expect("parses as Prometheus text");
    // The parser skips what it cannot read: make sure every sample line was read.
    let sample_lines = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    let histogram_lines = text.lines().filter(|l| l.contains("_bucket{")).count();
    let histograms = s
        .samples
        .iter()
        .filter(|x| matches!(x.value, Value::Histogram(_)))
        .count();
    assert_eq!(
        s.samples.len() + histogram_lines - histograms,
        sample_lines,
        "every sample parsed:\n{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"));
    (s, text)
}

fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(h) => h.last().map(|b| b.count).unwrap_or(0.0),
            Value::Summary(_) => f64::NAN,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_as_the_scenario_says() {
    let sim = sim(3, 20).await;
    let wrong = sim.tenants()[2].client_secret.clone();
    let body = sim_config(
        &sim,
        "poll_interval = \"1h\"\nstartup_jitter = \"0s\"\npage_size = 500\nretry_initial_backoff = \"10ms\"\nretry_max_backoff = \"20ms\"\nmax_retries = 2",
        "rate_limit = 50",
    )
    .replace(&wrong, "wrong-secret")
        + "[sinks.out]\ntype = \"file\"\npath = \"/dev/null\"\n";
    // t1's first request is rate limited once.
    sim.push_faults(
        "sim-client-0001",
        [Fault::RateLimited { retry_after: None }],
    );
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    wait_until("every first poll", Duration::from_secs(20), || {
        app.health.all().iter().all(|h| h.polls >= 1)
    })
    .await;
    let open = open_ids(&sim);
    let (s, text) = scrape(&app).await;
    let t0_open = open["t0"].len() as f64;
    assert_eq!(
        value(
            &s,
            "wiz_connector_events_total",
            &[("tenant", "t0"), ("kind", "issue.opened")]
        ),
        Some(t0_open),
        "{text}"
    );
    assert_eq!(
        value(
            &s,
            "wiz_connector_polls_total",
            &[("tenant", "t0"), ("result", "success")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "wiz_connector_retries_total", &[("tenant", "t1")]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "wiz_connector_errors_total",
            &[("tenant", "t1"), ("kind", "rate_limited")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "wiz_connector_retries_total", &[("tenant", "t0")]),
        None,
        "no series without a retry"
    );
    assert_eq!(
        value(
            &s,
            "wiz_connector_polls_total",
            &[("tenant", "t2"), ("result", "failure")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "wiz_connector_errors_total",
            &[("tenant", "t2"), ("kind", "auth")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "wiz_connector_tenant_state",
            &[("tenant", "t0"), ("state", "idle")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "wiz_connector_tenant_state",
            &[("tenant", "t0"), ("state", "failed")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &s,
            "wiz_connector_tenant_state",
            &[("tenant", "t2"), ("state", "backoff")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "wiz_connector_poll_duration_seconds", &[]),
        Some(3.0),
        "one observation per tenant, in one fleet-wide histogram"
    );
    assert_eq!(
        value(
            &s,
            "wiz_connector_tenant_poll_duration_seconds",
            &[("tenant", "t0")]
        ),
        None,
        "no per-tenant histogram unless asked for"
    );
    assert!(
        value(
            &s,
            "wiz_connector_seconds_since_last_success",
            &[("tenant", "t0")]
        )
        .unwrap()
            < 60.0
    );
    assert!(
        value(
            &s,
            "wiz_connector_last_success_timestamp_seconds",
            &[("tenant", "t0")]
        )
        .unwrap()
            > 1.7e9
    );
    assert_eq!(
        value(
            &s,
            "wiz_connector_seconds_since_last_success",
            &[("tenant", "t2")]
        ),
        None
    );

    // A revoked token: the next (incremental) poll renews it once; a resolution and a new issue
    // are counted.
    sim.revoke_tokens("sim-client-0000");
    let gone = open["t0"].iter().next().unwrap().clone();
    sim.issues("sim-client-0000", |set| {
        set.add();
        set.set_status(&gone, "RESOLVED");
    });
    assert!(app.poll_now("t0").await);
    wait_until("the second poll of t0", Duration::from_secs(20), || {
        app.health.get("t0").unwrap().polls >= 2
    })
    .await;
    let (s, text) = scrape(&app).await;
    assert_eq!(
        value(
            &s,
            "wiz_connector_token_renewals_total",
            &[("tenant", "t0")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &s,
            "wiz_connector_events_total",
            &[("tenant", "t0"), ("kind", "issue.opened")]
        ),
        Some(t0_open + 1.0)
    );
    let resolved = value(
        &s,
        "wiz_connector_events_total",
        &[("tenant", "t0"), ("kind", "issue.resolved")],
    );
    assert_eq!(
        resolved,
        Some(1.0),
        "the resolution (seen by the incremental poll)"
    );
    assert_eq!(
        value(
            &s,
            "wiz_connector_polls_total",
            &[("tenant", "t0"), ("result", "success")]
        ),
        Some(2.0)
    );
    // Nothing secret in the exposition.
    for t in sim.tenants() {
        assert!(!text.contains(&t.client_secret));
    }
    app.shutdown().await.unwrap();
}
