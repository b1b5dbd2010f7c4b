//! Reconfiguration without restart: the diff is applied and nothing else is touched.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::Value;
use wiz_connector::app::{App, AppOptions};
use wiz_connector::config::{load, EnvSource};
use wiz_connector::sim::{SimTenantSpec, Simulator};

/// A config with tenant `t<id>` using simulated client `client` for each pair.
fn config(
    sim: &Simulator,
    sink: &std::path::Path,
    tenants: &[(usize, usize)],
    extra: &HashMap<usize, &str>,
) -> String {
    let mut body = format!(
        "[connector]\nstate_dir = \"{}\"\npoll_interval = \"1s\"\nstartup_jitter = \"500ms\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[sinks.archive]\ntype = \"file\"\npath = \"{}\"\n",
        sink.parent().unwrap().join("state").display(),
        sink.display()
    );
    let specs = sim.tenants();
    for (id, client) in tenants {
        let more = format!("rate_limit = 50\n{}", extra.get(id).copied().unwrap_or(""));
        body.push_str(&tenant_toml(sim, &format!("t{id}"), &specs[*client], &more));
    }
    body
}

async fn post_reload(app: &App) -> (u16, Value) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let r = reqwest::Client::new()
        .post(format!("http://{}/reload", app.admin_addr()))
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    (
        code,
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap(),
    )
}

fn client(n: usize) -> String {
    SimTenantSpec::numbered(n, 42, 0).client_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_removes_and_restarts_only_what_changed() {
    let sim = sim(220, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("events.jsonl");
    let cfg = dir.path().join("wiz-connector.toml");
    let first: Vec<(usize, usize)> = (0..100).map(|i| (i, i)).collect();
    std::fs::write(&cfg, config(&sim, &sink, &first, &HashMap::new())).unwrap();
    let settings = load(&cfg, &EnvSource::Process).unwrap();
    let opts = AppOptions {
        watch_every: Some(Duration::ZERO),
        ..Default::default()
    };
    let app = App::start(settings, opts).await.unwrap();
    wait_until("every first poll", Duration::from_secs(60), || {
        app.health.all().iter().all(|h| h.polls >= 1)
    })
    .await;

    // Remove t0..t49, move t50..t59 to other credentials, slow t60 down in place, add t100..t199.
    let mut next: Vec<(usize, usize)> = (50..100).map(|i| (i, i)).collect();
    for p in next.iter_mut().filter(|(i, _)| *i < 60) {
        p.1 = p.0 + 150; // clients 200..209
    }
    next.extend((100..200).map(|i| (i, i)));
    let extra = HashMap::from([(60, "poll_interval = \"2s\"")]);
    std::fs::write(&cfg, config(&sim, &sink, &next, &extra)).unwrap();
    let polls_before: HashMap<String, u64> = app
        .health
        .all()
        .into_iter()
        .map(|h| (h.id, h.polls))
        .collect();

    let (code, summary) = post_reload(&app).await;
    assert_eq!(code, 200, "{summary}");
    let count = |k: &str| summary[k].as_array().unwrap().len();
    assert_eq!(
        (
            count("added"),
            count("removed"),
            count("restarted"),
            count("updated")
        ),
        (100, 50, 10, 1),
        "{summary}"
    );
    assert_eq!(summary["updated"][0], "t60");
    assert_eq!(summary["sinks_changed"], false);

    wait_until(
        "removed tenants gone, new and changed ones polled",
        Duration::from_secs(60),
        || {
            let all = app.health.all();
            all.len() == 150
                && (100..200).all(|i| {
                    app.health
                        .get(&format!("t{i}"))
                        .is_some_and(|h| h.polls >= 1)
                })
                && (200..210).all(|c| sim.counters(&client(c)).graphql_requests >= 1)
        },
    )
    .await;
    assert!(app.health.get("t0").is_none());
    let removed_requests: Vec<u64> = (0..50)
        .map(|c| sim.counters(&client(c)).graphql_requests)
        .collect();
    let old_changed: Vec<u64> = (50..60)
        .map(|c| sim.counters(&client(c)).graphql_requests)
        .collect();
    // Let the unchanged tenants poll twice more.
    let mark: HashMap<String, u64> = app
        .health
        .all()
        .into_iter()
        .map(|h| (h.id, h.polls))
        .collect();
    wait_until(
        "two more polls of the unchanged tenants",
        Duration::from_secs(30),
        || {
            (61..100).all(|i| {
                app.health.get(&format!("t{i}")).unwrap().polls >= mark[&format!("t{i}")] + 2
            })
        },
    )
    .await;
    for i in 61..100 {
        let h = app.health.get(&format!("t{i}")).unwrap();
        assert!(h.polls > polls_before[&h.id], "{h:?}");
        assert_eq!(h.restarts, 0);
        assert_eq!(
            sim.counters(&client(i)).tokens_issued,
            1,
            "t{i} asked for no new token"
        );
    }
    assert_eq!(
        sim.counters(&client(60)).tokens_issued,
        1,
        "an in-place change keeps the token"
    );
    for (c, before) in (0..50).zip(removed_requests) {
        assert_eq!(
            sim.counters(&client(c)).graphql_requests,
            before,
            "removed client {c} is not polled"
        );
    }
    for (c, before) in (50..60).zip(old_changed) {
        assert_eq!(
            sim.counters(&client(c)).graphql_requests,
            before,
            "old credentials of a changed tenant are not used"
        );
        assert_eq!(
            sim.counters(&client(c + 150)).tokens_issued,
            1,
            "the new secret was used once"
        );
    }

    // An invalid configuration changes nothing and says why.
    std::fs::write(
        &cfg,
        config(&sim, &sink, &next, &extra).replace(
            "poll_interval = \"1s\"",
            "poll_interval = \"1s\"\npage_size = 0",
        ),
    )
    .unwrap();
    let (code, err) = post_reload(&app).await;
    assert_eq!(code, 400);
    let msg = err["error"].as_str().unwrap();
    assert!(
        msg.contains("connector.page_size") && msg.contains("running configuration is kept"),
        "{msg}"
    );
    assert_eq!(app.health.len(), 150);
    let metrics = app.observer_metrics_text();
    assert!(
        metrics.contains("wiz_connector_reloads_total{result=\"failure\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wiz_connector_reloads_total{result=\"success\"} 1"),
        "{metrics}"
    );
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_dropped_into_tenants_dir_adds_a_customer() {
    let sim = sim(2, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let tdir = dir.path().join("tenants.d");
    std::fs::create_dir(&tdir).unwrap();
    let sink = dir.path().join("events.jsonl");
    let cfg = dir.path().join("wiz-connector.toml");
    std::fs::write(
        &cfg,
        format!(
            "[connector]\nstate_dir = \"{}\"\npoll_interval = \"1s\"\nstartup_jitter = \"0s\"\ntenants_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[sinks.archive]\ntype = \"file\"\npath = \"{}\"\n",
            state_dir().display(),
            tdir.display(),
            sink.display()
        ),
    )
    .unwrap();
    // Like a deployment tool: write aside, then rename into place.
    let put = |name: &str, text: String| {
        let tmp = dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, tdir.join(name)).unwrap();
    };
    let file_for = |n: usize| {
        tenant_toml(&sim, "x", &sim.tenants()[n], "")
            .lines()
            .skip(1)
            .collect::<Vec<_>>()
            .join("\n")
    };
    std::fs::write(tdir.join("acme.toml"), file_for(0)).unwrap();
    let settings = load(&cfg, &EnvSource::Process).unwrap();
    let opts = AppOptions {
        watch_every: Some(Duration::from_millis(100)),
        ..Default::default()
    };
    let app = App::start(settings, opts).await.unwrap();
    wait_until("acme polls", Duration::from_secs(20), || {
        app.health.get("acme").is_some_and(|h| h.polls >= 1)
    })
    .await;
    put("globex.toml", file_for(1));
    wait_until(
        "globex added by the watcher",
        Duration::from_secs(20),
        || app.health.get("globex").is_some_and(|h| h.polls >= 1),
    )
    .await;
    std::fs::remove_file(tdir.join("acme.toml")).unwrap();
    wait_until(
        "acme removed by the watcher",
        Duration::from_secs(20),
        || app.health.get("acme").is_none(),
    )
    .await;
    // A broken file is refused and nothing changes.
    put("initech.toml", "client_id = [".to_string());
    wait_until(
        "the refused reload counted",
        Duration::from_secs(20),
        || {
            app.observer_metrics_text()
                .contains("wiz_connector_reloads_total{result=\"failure\"} 1")
        },
    )
    .await;
    assert_eq!(app.health.len(), 1);
    assert!(app.health.get("globex").is_some());
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_change_moves_delivery_without_losing_events() {
    let sim = sim(3, 12).await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    let cfg = dir.path().join("wiz-connector.toml");
    let tenants: Vec<(usize, usize)> = (0..3).map(|i| (i, i)).collect();
    std::fs::write(&cfg, config(&sim, &a, &tenants, &HashMap::new())).unwrap();
    let opts = AppOptions {
        watch_every: Some(Duration::ZERO),
        ..Default::default()
    };
    let app = App::start(load(&cfg, &EnvSource::Process).unwrap(), opts)
        .await
        .unwrap();
    wait_until("first polls", Duration::from_secs(20), || {
        app.health.all().iter().all(|h| h.polls >= 1)
    })
    .await;
    std::fs::write(&cfg, config(&sim, &b, &tenants, &HashMap::new())).unwrap();
    let (code, summary) = post_reload(&app).await;
    assert_eq!(
        (code, summary["sinks_changed"].clone()),
        (200, Value::Bool(true)),
        "{summary}"
    );
    let added: Vec<String> = (0..3)
        .map(|n| sim.issues(&client(n), |s| s.add()))
        .collect();
    wait_until(
        "new issues in the new sink",
        Duration::from_secs(20),
        || {
            let got: Vec<String> = read_lines(&b)
                .iter()
                .map(|l| l["issue_id"].as_str().unwrap().to_string())
                .collect();
            added.iter().all(|i| got.contains(i))
        },
    )
    .await;
    app.shutdown().await.unwrap();
    let mut all: Vec<String> = read_lines(&a)
        .into_iter()
        .chain(read_lines(&b))
        .map(|l| format!("{}/{}", l["tenant"], l["issue_id"]))
        .collect();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "nothing delivered twice across the switch");
    let expected: usize = open_ids(&sim).values().map(|s| s.len()).sum();
    assert_eq!(n, expected, "nothing lost across the switch");
}
