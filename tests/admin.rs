//! The admin API over real HTTP: tenant states in fault scenarios, filters, polls on demand,
//! authentication, and no secret in any answer.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;
use wiz_connector::app::{App, AppOptions};
use wiz_connector::faults::FaultInjection;
use wiz_connector::sim::Fault;

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn get(app: &App, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = http().get(format!("http://{}{path}", app.admin_addr()));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn state_of(app: &App, id: &str) -> String {
    get(app, &format!("/tenants/{id}"), None).await.1["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_states_follow_the_fault_scenarios() {
    let sim = sim(4, 12).await;
    let secrets: Vec<String> = sim
        .tenants()
        .iter()
        .map(|t| t.client_secret.clone())
        .collect();
    // t0 healthy, t1 slow (polling), t2 wrong secret (backoff), t3 crashes (failed at once).
    let body = sim_config(
        &sim,
        "poll_interval = \"1h\"\nstartup_jitter = \"0s\"\nrestart_intensity = 0\nmax_retries = 0\nshutdown_timeout = \"1s\"",
        "rate_limit = 50",
    )
    .replace(&secrets[2], "not-the-secret")
        + "[sinks.out]\ntype = \"file\"\npath = \"/dev/null\"\n";
    sim.set_sticky_fault("sim-client-0001", Some(Fault::Latency { ms: 60_000 }));
    let faults = FaultInjection::default();
    faults.set_page_hook(Some(Arc::new(|t: &str, _: &wiz_connector::wiz::Page| {
        if t == "t3" {
            panic!("boom in {t}");
        }
    })));
    let app = App::start(
        settings(&body),
        AppOptions {
            faults,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    wait_until("ready", Duration::from_secs(10), || app.is_ready()).await;
    for (id, want) in [
        ("t0", "idle"),
        ("t1", "polling"),
        ("t2", "backoff"),
        ("t3", "failed"),
    ] {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while state_of(&app, id).await != want {
            assert!(
                std::time::Instant::now() < deadline,
                "{id} never became {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (code, t0) = get(&app, "/tenants/t0", None).await;
    assert_eq!(code, 200);
    for key in [
        "id",
        "state",
        "last_poll_at",
        "last_success_at",
        "last_error",
        "events_added",
        "events_total",
        "restarts",
        "next_poll_at",
    ] {
        assert!(t0.get(key).is_some(), "{key} missing in {t0}");
    }
    assert!(t0["events_added"].as_u64().unwrap() > 0);
    assert_eq!(t0["events_total"], t0["events_added"]);
    assert!(t0["next_poll_at"].is_string());
    let (_, t2) = get(&app, "/tenants/t2", None).await;
    assert!(
        t2["last_error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("could not authenticate to wiz"),
        "{t2}"
    );
    assert!(t2["last_error"]["at"].is_string());
    let (_, t3) = get(&app, "/tenants/t3", None).await;
    assert!(
        t3["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("boom in t3"),
        "{t3}"
    );

    // Filters.
    let (code, failed) = get(&app, "/tenants?state=failed", None).await;
    assert_eq!(code, 200);
    assert_eq!(failed.as_array().unwrap().len(), 1);
    assert_eq!(failed[0]["id"], "t3");
    let (_, some) = get(&app, "/tenants?state=idle,backoff", None).await;
    let ids: Vec<&str> = some
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["t0", "t2"]);
    let (code, all) = get(&app, "/tenants", None).await;
    assert_eq!((code, all.as_array().unwrap().len()), (200, 4));
    let (code, err) = get(&app, "/tenants?state=sick", None).await;
    assert_eq!(code, 400);
    assert!(err["error"]
        .as_str()
        .unwrap()
        .contains("unknown state `sick`"));
    let (code, err) = get(&app, "/tenants/nobody", None).await;
    assert_eq!(code, 404);
    assert_eq!(err["error"], "no tenant `nobody`");

    // Polls on demand.
    let before = app.health.get("t0").unwrap().polls;
    let url = |p: &str| format!("http://{}{p}", app.admin_addr());
    let r = http().post(url("/tenants/t0/poll")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202);
    wait_until("the requested poll", Duration::from_secs(10), || {
        app.health.get("t0").unwrap().polls > before
    })
    .await;
    assert_eq!(
        http()
            .post(url("/tenants/nobody/poll"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        404
    );
    let r = http().post(url("/tenants/t3/poll")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 409, "a failed tenant is not running");

    // Probes.
    assert_eq!(get(&app, "/healthz", None).await.0, 200);
    assert_eq!(
        get(&app, "/readyz", None).await,
        (200, serde_json::json!({"ready": true}))
    );

    // Nothing secret in any answer.
    let everything = format!("{all}{t0}{t2}{t3}");
    for s in &secrets {
        assert!(!everything.contains(s.as_str()));
    }
    assert!(!everything.contains("simtok_"));
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn off_loopback_the_admin_api_needs_a_token() {
    let sim = sim(1, 3).await;
    let open = sim_config(&sim, "startup_jitter = \"1h\"", "")
        .replace("listen = \"127.0.0.1:0\"", "listen = \"0.0.0.0:0\"")
        + "[sinks.out]\ntype = \"stdout\"\n";
    let c = write_config(&open);
    let err = wiz_connector::config::load(
        &c.path,
        &wiz_connector::config::EnvSource::Fixed(Default::default()),
    )
    .unwrap_err();
    assert_eq!(err.problems.len(), 1, "{err}");
    assert_eq!(err.problems[0].key, "admin.token");
    assert!(err.to_string().contains("not a loopback address"), "{err}");

    const TOKEN: &str = "admin-token-5f0c8e1d";
    let guarded = open.replace("[admin]\n", "[admin]\ntoken = \"${ADMIN_TOKEN}\"\n");
    let c = write_config(&guarded);
    let env = wiz_connector::config::EnvSource::Fixed(
        [("ADMIN_TOKEN".to_string(), TOKEN.to_string())].into(),
    );
    let s = wiz_connector::config::load(&c.path, &env).unwrap();
    assert!(!format!("{s:?} {}", serde_json::to_string(&s).unwrap()).contains(TOKEN));
    let app = App::start(s, AppOptions::default()).await.unwrap();
    assert!(app.admin_addr().ip().is_unspecified());
    let port = app.admin_addr().port();
    let at = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let r = http().get(at("/tenants")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(!String::from_utf8_lossy(&r.bytes().await.unwrap()).contains(TOKEN));
    let r = http()
        .get(at("/tenants"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = http()
        .get(at("/tenants"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // The scheme is case-insensitive.
    for scheme in ["bearer", "BEARER"] {
        let r = http()
            .get(at("/tenants"))
            .header("authorization", format!("{scheme} {TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{scheme}");
    }
    let r = http()
        .get(at("/tenants"))
        .header("authorization", format!("Basic {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "another scheme is refused");
    // A large body is refused before anything reads it.
    let r = http()
        .post(at("/reload"))
        .bearer_auth(TOKEN)
        .body(vec![b'x'; 10 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    // Probes stay open for load balancers and orchestrators.
    assert_eq!(
        http()
            .get(at("/healthz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_the_fleet_worst_first_with_a_summary_line() {
    let sim = sim(3, 4).await;
    let wrong = sim.tenants()[1].client_secret.clone();
    let body = sim_config(
        &sim,
        "poll_interval = \"1s\"\nstartup_jitter = \"0s\"\nfailed_cooldown = \"1h\"",
        "",
    )
    .replace(&wrong, "wrong-secret")
        + "[sinks.out]\ntype = \"file\"\npath = \"/dev/null\"\n";
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    wait_until(
        "t1 parked, the others idle",
        Duration::from_secs(30),
        || {
            app.health
                .get("t1")
                .is_some_and(|h| h.state.as_str() == "failed")
                && ["t0", "t2"]
                    .iter()
                    .all(|t| app.health.get(t).is_some_and(|h| h.polls >= 1))
        },
    )
    .await;
    // The API pages and orders.
    let r = http()
        .get(format!(
            "http://{}/tenants?order=worst&limit=1",
            app.admin_addr()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-total-count"], "3");
    let page: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(page.as_array().unwrap().len(), 1);
    assert_eq!(page[0]["id"], "t1", "the failed tenant first");
    let (_, found) = get(&app, "/tenants?q=2", None).await;
    assert_eq!(found.as_array().unwrap().len(), 1);
    assert_eq!(found[0]["id"], "t2");
    // `limit=0` counts, with the same filters, and lists nothing.
    for (query, count) in [
        ("", "3"),
        ("&state=failed", "1"),
        ("&state=failed,backoff", "1"),
        ("&state=backoff", "0"),
        ("&q=t0", "1"),
        ("&state=failed&q=t0", "0"),
    ] {
        let r = http()
            .get(format!(
                "http://{}/tenants?limit=0{query}",
                app.admin_addr()
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-total-count"], count, "{query}");
        assert_eq!(r.text().await.unwrap(), "[]", "{query}");
    }
    // The terminal view.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wiz-connector"))
        .args(["status", "--admin", &format!("http://{}", app.admin_addr())])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("3 tenants: failed=1 backoff=0 stale=0"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("TENANT") && lines[1].contains("LAST ERROR"),
        "{text}"
    );
    assert!(
        lines[2].starts_with("t1") && lines[2].contains("failed"),
        "{text}"
    );
    assert!(lines[2].contains("credentials refused"), "{text}");
    assert!(!text.contains("wrong-secret"), "{text}");
    assert_eq!(lines.len(), 5, "{text}");
    // The healthy ones poll every second: idle, or in a poll when `status` reads them.
    assert!(
        (lines[3].contains("idle") || lines[3].contains("polling")) && lines[3].contains("s ago"),
        "{text}"
    );
    // Nothing listens: a clear error and a non-zero exit.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wiz-connector"))
        .args([
            "status",
            "--admin",
            &format!("http://127.0.0.1:{}", free_port()),
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the admin API"));
    app.shutdown().await.unwrap();
}
