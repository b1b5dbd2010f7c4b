//! The feeds beyond Issues against the simulator: a first sweep of every feed, changes delivered
//! once with the right kinds, nothing repeated after a restart, detections in creation order, one
//! rate limit for all five feeds, and a feed Wiz refuses that does not stop the others.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use serde_json::Value;
use wiz_connector::app::{App, AppOptions};
use wiz_connector::sim::{SimTenantSpec, Simulator, SimulatorOptions};

const ALL_FEEDS: &str =
    "feeds = [\"issues\", \"vulnerabilities\", \"detections\", \"audit\", \"cloud_configuration\"]";

fn config(sim: &Simulator, out: &std::path::Path, state: &std::path::Path, extra: &str) -> String {
    let t = &sim.tenants()[0];
    format!(
        "[connector]\nstate_dir = \"{}\"\npoll_interval = \"1s\"\nstartup_jitter = \"0s\"\npage_size = 7\n{ALL_FEEDS}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[sinks.out]\ntype = \"file\"\npath = \"{}\"\n{}",
        state.display(),
        out.display(),
        tenant_toml(sim, "t0", t, extra)
    )
}

/// Events of `feed` in the file, in order.
fn of_feed<'a>(lines: &'a [Value], feed: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["feed"] == feed).collect()
}

fn kinds(events: &[&Value]) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for e in events {
        *out.entry(e["kind"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    out
}

/// What the simulator holds now: (detections, audit entries, vulnerability findings, open ones,
/// configuration findings, open ones).
fn sizes(sim: &Simulator, client: &str) -> (usize, usize, usize, usize, usize, usize) {
    sim.feeds(client, |f| {
        (
            f.detections.len(),
            f.audit.len(),
            f.vulnerabilities.len(),
            f.vulnerabilities
                .iter()
                .filter(|v| v.status == "OPEN")
                .count(),
            f.configuration.len(),
            f.configuration
                .iter()
                .filter(|c| c.status == "OPEN")
                .count(),
        )
    })
}

/// The states of every vulnerability (`v/<id>`) and configuration finding (`c/<id>`) the
/// connector can tell apart: the status, and the other fields its fingerprint covers that churn
/// moves (the resolution time; the result and update time).
fn states(sim: &Simulator, client: &str) -> HashMap<String, (String, String)> {
    sim.feeds(client, |f| {
        f.vulnerabilities
            .iter()
            .map(|v| {
                (
                    format!("v/{}", v.id),
                    (v.status.to_string(), format!("{:?}", v.resolved_at)),
                )
            })
            .chain(f.configuration.iter().map(|c| {
                (
                    format!("c/{}", c.id),
                    (
                        c.status.to_string(),
                        format!("{} {}", c.result, c.updated_at),
                    ),
                )
            }))
            .collect()
    })
}

/// Waits (up to 60 s) until the file holds `want` events of each feed named.
async fn feed_events(out: &std::path::Path, want: &[(&str, usize)], what: &str) {
    let want_n: Vec<usize> = want.iter().map(|(_, n)| *n).collect();
    wait_for(what, Duration::from_secs(60), || {
        let lines = read_lines(out);
        let got: Vec<usize> = want
            .iter()
            .map(|(feed, _)| of_feed(&lines, feed).len())
            .collect();
        if got == want_n {
            Ok(())
        } else {
            Err(format!("got {got:?}, want {want_n:?}"))
        }
    })
    .await;
}

async fn polls_after(app: &App, n: u64) {
    let p0 = app.health.get("t0").unwrap().polls;
    wait_for("more polls", Duration::from_secs(30), || {
        let h = app.health.get("t0").unwrap();
        if h.polls >= p0 + n && h.state.as_str() == "idle" {
            Ok(())
        } else {
            Err(serde_json::to_string(&h).unwrap())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_feed_sweeps_then_delivers_each_change_once_and_nothing_after_a_restart() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("wiz_connector=debug")
        .with_test_writer()
        .try_init();
    let sim = sim(1, 30).await;
    let client = sim.tenants()[0].client_id.clone();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let state = state_dir();
    let body = config(&sim, &out, &state, "");
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();

    let (det, aud, vul, vul_open, cfg, cfg_open) = sizes(&sim, &client);
    let open_issues = open_ids(&sim)["t0"].len();
    feed_events(
        &out,
        &[
            ("issues", open_issues),
            ("detections", det),
            ("audit", aud),
            ("vulnerabilities", vul),
            ("cloud_configuration", cfg),
        ],
        "the first sweep of every feed",
    )
    .await;
    polls_after(&app, 1).await;
    let first = read_lines(&out);
    assert_eq!(
        first.len(),
        open_issues + det + aud + vul + cfg,
        "nothing more than the sweep"
    );

    // Kinds of the first sweep: every item once, by its status.
    let v = of_feed(&first, "vulnerabilities");
    assert_eq!(kinds(&v).get("vulnerability.opened"), Some(&vul_open));
    let c = of_feed(&first, "cloud_configuration");
    assert_eq!(
        kinds(&c)
            .get("configuration_finding.opened")
            .copied()
            .unwrap_or(0),
        cfg_open
    );
    assert_eq!(
        kinds(&c)
            .get("configuration_finding.resolved")
            .copied()
            .unwrap_or(0),
        cfg - cfg_open
    );
    let d = of_feed(&first, "detections");
    assert!(d.iter().all(|e| e["kind"] == "detection.created"));
    assert!(
        d.iter().any(|e| e["detection_type"] == "MATCH_ONLY"),
        "both detection types are asked for (Wiz's default would drop MATCH_ONLY)"
    );
    let created: Vec<&str> = d
        .iter()
        .map(|e| e["created_at"].as_str().unwrap())
        .collect();
    assert!(
        created.windows(2).all(|w| w[0] <= w[1]),
        "detections in creation order"
    );
    assert!(of_feed(&first, "audit")
        .iter()
        .all(|e| e["kind"] == "audit.entry"));
    // Every event: the common fields, a unique id, the node verbatim.
    let ids: HashSet<&str> = first.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), first.len(), "event ids are unique");
    for e in &first {
        for key in [
            "id",
            "source",
            "tenant",
            "feed",
            "kind",
            "severity",
            "observed_at",
            "url",
            "raw_event",
        ] {
            assert!(e.get(key).is_some(), "{key} missing in {e}");
        }
        assert_eq!(e["source"], "wiz");
        assert_eq!(e["tenant"], "t0");
        assert!(["high", "medium", "low", "info"].contains(&e["severity"].as_str().unwrap()));
    }
    // Typed fields, checked against what the simulator holds.
    let sim_v = sim.feeds(&client, |f| f.vulnerabilities[0].clone());
    let ev = v
        .iter()
        .find(|e| e["finding_id"] == sim_v.id.as_str())
        .unwrap();
    assert_eq!(ev["cve"], sim_v.name.as_str());
    assert_eq!(ev["score"].as_f64(), Some(sim_v.score));
    assert_eq!(ev["fixed_version"].as_str(), sim_v.fixed_version.as_deref());
    assert_eq!(ev["asset"]["id"], sim_v.vulnerable_asset["id"]);
    assert_eq!(ev["raw_event"]["CVSSSeverity"], sim_v.cvss_severity);
    let sim_d = sim.feeds(&client, |f| f.detections[0].clone());
    let ed = d
        .iter()
        .find(|e| e["detection_id"] == sim_d.id.as_str())
        .unwrap();
    assert_eq!(ed["rule"]["name"], sim_d.rule_match["rule"]["name"]);
    assert_eq!(ed["actor"]["name"], sim_d.primary_actor["name"]);
    assert_eq!(ed["resource"]["id"], sim_d.primary_resource["id"]);
    let tactic = &sim_d.rule_match["rule"]["securitySubCategories"][0]["title"];
    assert_eq!(ed["mitre_tactics"], serde_json::json!([tactic]));
    match &sim_d.issue {
        Some(i) => assert!(ed["url"]
            .as_str()
            .unwrap()
            .contains(i["id"].as_str().unwrap())),
        None => assert!(ed["url"].is_null()),
    }

    // Changes: each once, with its kind. The expected events are what changed between the
    // states the connector can see (the four churn steps land between two polls).
    let before = states(&sim, &client);
    sim.churn(&client, 4);
    let now = states(&sim, &client);
    let mut expected: HashMap<String, &str> = HashMap::new();
    for (key, (status, rest)) in &now {
        let Some((old_status, old_rest)) = before.get(key) else {
            continue;
        };
        if (old_status, old_rest) == (status, rest) {
            continue;
        }
        let vuln = key.starts_with("v/");
        let kind = match (old_status.as_str(), status.as_str(), vuln) {
            ("OPEN", "RESOLVED", true) => "vulnerability.resolved",
            ("RESOLVED", "OPEN", true) => "vulnerability.reopened",
            (_, _, true) => "vulnerability.updated",
            ("OPEN", "RESOLVED", false) => "configuration_finding.resolved",
            ("RESOLVED", "OPEN", false) => "configuration_finding.opened",
            (_, _, false) => "configuration_finding.updated",
        };
        expected.insert(key[2..].to_string(), kind);
    }
    assert!(!expected.is_empty());
    let (det2, aud2, ..) = sizes(&sim, &client);
    assert_eq!((det2, aud2), (det + 4, aud + 4));
    let first_len = first.len();
    wait_for("the churned items", Duration::from_secs(30), || {
        let lines = read_lines(&out);
        let got = (
            of_feed(&lines, "detections").len(),
            of_feed(&lines, "audit").len(),
            lines[first_len..]
                .iter()
                .filter(|l| l["feed"] != "issues")
                .count(),
        );
        let want = (det2, aud2, 8 + expected.len());
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}, want {want:?}"))
        }
    })
    .await;
    polls_after(&app, 2).await;
    let after = read_lines(&out);
    let new = &after[first.len()..];
    let new_refs: Vec<&Value> = new.iter().collect();
    let nk = kinds(&new_refs);
    assert_eq!(nk.get("detection.created"), Some(&4));
    assert_eq!(nk.get("audit.entry"), Some(&4));
    let mut got: HashMap<String, &str> = HashMap::new();
    for e in new.iter().filter(|e| e["finding_id"].is_string()) {
        let prev = got.insert(
            e["finding_id"].as_str().unwrap().to_string(),
            e["kind"].as_str().unwrap(),
        );
        assert!(prev.is_none(), "one event per changed finding: {e}");
    }
    assert_eq!(
        got, expected,
        "every change once, with its kind, and nothing else"
    );
    let ids: HashSet<&str> = after.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), after.len(), "no event twice");
    let settled = after.len();
    app.shutdown().await.unwrap();

    // A restart on the same state repeats nothing.
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    wait_until(
        "two polls after the restart",
        Duration::from_secs(30),
        || app.health.get("t0").is_some_and(|h| h.polls >= 2),
    )
    .await;
    polls_after(&app, 1).await;
    assert_eq!(
        read_lines(&out).len(),
        settled,
        "nothing re-emitted after a restart"
    );
    let h = app.health.get("t0").unwrap();
    let feeds: Vec<&str> = h.feeds.iter().map(|f| f.feed).collect();
    for f in [
        "issues",
        "vulnerabilities",
        "detections",
        "audit",
        "cloud_configuration",
    ] {
        assert!(feeds.contains(&f), "health has {f}: {feeds:?}");
    }
    assert!(h
        .feeds
        .iter()
        .all(|f| f.last_success_at.is_some() && f.last_error.is_none()));
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_wiz_refuses_does_not_stop_the_others() {
    let mut t = SimTenantSpec::numbered(0, 42, 20);
    t.denied_feeds = vec!["vulnerabilities".into()];
    let sim = sim_with(SimulatorOptions {
        tenants: vec![t],
        ..Default::default()
    })
    .await;
    let client = sim.tenants()[0].client_id.clone();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let body = config(&sim, &out, &state_dir(), "");
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    let (det, aud, _, _, cfg, _) = sizes(&sim, &client);
    wait_until("the other feeds' sweeps", Duration::from_secs(60), || {
        let lines = read_lines(&out);
        of_feed(&lines, "detections").len() == det
            && of_feed(&lines, "audit").len() == aud
            && of_feed(&lines, "cloud_configuration").len() == cfg
    })
    .await;
    polls_after(&app, 2).await;
    let h = app.health.get("t0").unwrap();
    assert_eq!(h.state.as_str(), "idle", "Issues (and the tenant) are fine");
    let v = h
        .feeds
        .iter()
        .find(|f| f.feed == "vulnerabilities")
        .unwrap();
    let err = &v.last_error.as_ref().unwrap().message;
    assert_eq!(serde_json::to_value(v.state).unwrap(), "denied");
    assert!(
        err.contains("read:vulnerabilities") && err.contains("other feeds keep running"),
        "{err}"
    );
    assert!(v.next_try_at.is_some());
    assert!(of_feed(&read_lines(&out), "vulnerabilities").is_empty());
    // It sits out polls: one refused query for several polls, not one per poll.
    let denied = sim.counters(&client).denied_feed_queries;
    polls_after(&app, 2).await;
    assert_eq!(sim.counters(&client).denied_feed_queries, denied);
    // The admin API shows it per feed.
    let url = format!("http://{}/tenants/t0", app.admin_addr());
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    let feed = body["feeds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["feed"] == "vulnerabilities")
        .unwrap();
    assert_eq!(feed["state"], "denied");
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_feeds_share_one_rate_limit() {
    let sim = sim(1, 80).await;
    let client = sim.tenants()[0].client_id.clone();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let body = config(&sim, &out, &state_dir(), "rate_limit = 2\npage_size = 20");
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    let (det, aud, vul, _, cfg, _) = sizes(&sim, &client);
    wait_until("every feed's first sweep", Duration::from_secs(120), || {
        let lines = read_lines(&out);
        of_feed(&lines, "detections").len() == det
            && of_feed(&lines, "audit").len() == aud
            && of_feed(&lines, "vulnerabilities").len() == vul
            && of_feed(&lines, "cloud_configuration").len() == cfg
    })
    .await;
    let c = sim.counters(&client);
    // 80 issues, 40 detections, 160 vulnerability findings, 80 audit entries and 80
    // configuration findings at 20 a page: over 20 requests.
    assert!(c.graphql_requests > 20, "{}", c.graphql_requests);
    assert!(c.feed_queries.len() == 4, "{:?}", c.feed_queries);
    assert!(
        c.peak_requests_per_second <= 3,
        "peak {} requests in a second with rate_limit = 2 (one more for arrival jitter at the window's edge)",
        c.peak_requests_per_second
    );
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_tests_every_feed_and_names_the_one_refused() {
    let mut denied = SimTenantSpec::numbered(1, 42, 5);
    denied.denied_feeds = vec!["detections".into()];
    let sim = sim_with(SimulatorOptions {
        tenants: vec![SimTenantSpec::numbered(0, 42, 5), denied],
        ..Default::default()
    })
    .await;
    let body = sim_config(&sim, ALL_FEEDS, "");
    let lines = wiz_connector::commands::check::check_all(&settings(&body), None)
        .await
        .unwrap();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].ok, "{}", lines[0].line);
    assert!(
        lines[0].line.starts_with("t0: ok") && lines[0].line.contains("detections 1"),
        "{}",
        lines[0].line
    );
    assert!(!lines[1].ok);
    assert_eq!(
        lines[1].line.lines().count(),
        1,
        "one line per failed feed: {}",
        lines[1].line
    );
    let l = &lines[1].line;
    assert!(
        l.starts_with("t1: feed detections: ")
            && l.contains("Wiz Defend detections")
            && l.contains("Unauthorized"),
        "{l}"
    );
    // An Issues-only tenant keeps the original line.
    let body = sim_config(&sim, "", "");
    let lines = wiz_connector::commands::check::check_all(&settings(&body), Some("t1"))
        .await
        .unwrap();
    assert!(
        lines[0].ok
            && lines[0]
                .line
                .starts_with("t1: ok (token exchange and 1-row issues query succeeded")
    );
}

#[test]
fn unknown_feeds_are_refused_with_the_key_and_the_choices() {
    let e = config_error(
        "[connector]\nfeeds = [\"issues\", \"vulns\"]\n[tenants.a]\nclient_id = \"x\"\nclient_secret = \"y\"\napi_url = \"https://api.us1.app.wiz.io/graphql\"\nfeeds = []\n",
    );
    assert!(
        e.contains("connector.feeds") && e.contains("unknown feed \"vulns\""),
        "{e}"
    );
    assert!(
        e.contains("vulnerabilities, detections, audit, cloud_configuration"),
        "{e}"
    );
    assert!(e.contains("tenant `a`: key `feeds`"), "{e}");
    assert!(e.contains("must name at least one feed"), "{e}");
}

/// Cluster mode: every feed's state lives in JetStream and moves with the tenant. A second
/// replica with an empty local cache takes the tenant over after the first handed it over, and
/// repeats nothing; a change after that is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_cluster_mode_every_feed_state_moves_with_the_tenant() {
    let nats = nats_server().await;
    let sim = sim(1, 20).await;
    let client = sim.tenants()[0].client_id.clone();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let replica = |id: &str| {
        let mut body = config(&sim, &out, &state_dir(), "");
        body.push_str(&format!(
            "[cluster]\nnats_url = \"{}\"\nreplica_id = \"{id}\"\nheartbeat = \"200ms\"\nfailover_after = \"1s\"\nstart_settle = \"0s\"\n",
            nats.url
        ));
        body
    };
    let app = App::start(settings(&replica("r1")), AppOptions::default())
        .await
        .unwrap();
    let (det, aud, vul, _, cfg, _) = sizes(&sim, &client);
    let open_issues = open_ids(&sim)["t0"].len();
    let total = open_issues + det + aud + vul + cfg;
    wait_until(
        "r1's first sweep of every feed",
        Duration::from_secs(60),
        || read_lines(&out).len() == total,
    )
    .await;
    polls_after(&app, 1).await;
    assert_eq!(read_lines(&out).len(), total);
    app.shutdown().await.unwrap();

    let app = App::start(settings(&replica("r2")), AppOptions::default())
        .await
        .unwrap();
    wait_until("r2 polls twice", Duration::from_secs(60), || {
        app.health.get("t0").is_some_and(|h| h.polls >= 2)
    })
    .await;
    polls_after(&app, 1).await;
    assert_eq!(
        read_lines(&out).len(),
        total,
        "r2 repeated nothing: the feeds' state came from JetStream"
    );
    sim.churn(&client, 2);
    wait_until(
        "the churned detections and audit entries",
        Duration::from_secs(30),
        || {
            let lines = read_lines(&out);
            of_feed(&lines, "detections").len() == det + 2
                && of_feed(&lines, "audit").len() == aud + 2
        },
    )
    .await;
    polls_after(&app, 2).await;
    let lines = read_lines(&out);
    let ids: HashSet<&str> = lines.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), lines.len(), "no event twice");
    app.shutdown().await.unwrap();
}

/// A simulator with one tenant of `findings` vulnerability findings, and a configuration for it:
/// `connector` and `tenant` lines, `page_size` 7, a file sink (the returned path) in the returned
/// directory.
async fn findings_tenant(
    findings: usize,
    connector: &str,
    tenant: &str,
) -> (Simulator, String, tempfile::TempDir, std::path::PathBuf) {
    let mut t = SimTenantSpec::numbered(0, 42, 10);
    t.vulnerabilities = Some(findings);
    let sim = sim_with(SimulatorOptions {
        tenants: vec![t],
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let body = format!(
        "[connector]\nstate_dir = \"{}\"\nstartup_jitter = \"0s\"\npage_size = 7\n{connector}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[sinks.out]\ntype = \"file\"\npath = \"{}\"\n{}",
        state_dir().display(),
        out.display(),
        tenant_toml(&sim, "t0", &sim.tenants()[0], tenant)
    );
    (sim, body, dir, out)
}

/// A window longer than one step (100 pages) yields: the tenant's next poll starts at once with
/// Issues and continues the window where it stopped; every finding is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_window_yields_to_issues_polls_and_loses_nothing() {
    let (_sim, body, _dir, out) = findings_tenant(
        1_500,
        "poll_interval = \"300s\"\nfeeds = [\"issues\", \"vulnerabilities\"]",
        "rate_limit = 100",
    )
    .await;
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    wait_until("1,500 findings", Duration::from_secs(60), || {
        of_feed(&read_lines(&out), "vulnerabilities").len() >= 1_500
    })
    .await;
    wait_until("the window done", Duration::from_secs(30), || {
        app.health.get("t0").is_some_and(|h| {
            h.feeds
                .iter()
                .any(|f| f.feed == "vulnerabilities" && f.last_success_at.is_some())
        })
    })
    .await;
    let lines = read_lines(&out);
    let v = of_feed(&lines, "vulnerabilities");
    let ids: HashSet<&str> = v
        .iter()
        .map(|e| e["finding_id"].as_str().unwrap())
        .collect();
    assert_eq!((v.len(), ids.len()), (1_500, 1_500), "every finding once");
    // 215 pages in steps of 100: three steps, each after an Issues poll, though polls are 300 s
    // apart.
    let h = app.health.get("t0").unwrap();
    assert!(h.polls >= 3, "issues polled {} times", h.polls);
    app.shutdown().await.unwrap();
}

/// A window continued after a restart whose cursor Wiz no longer takes starts over from the same
/// lower bound: nothing is skipped, and findings already delivered are not delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_cursor_of_a_continued_window_starts_it_over_without_a_gap() {
    let (sim, body, _dir, out) = findings_tenant(
        300,
        "poll_interval = \"1s\"\nfeeds = [\"vulnerabilities\"]",
        "rate_limit = 10",
    )
    .await;
    let client = sim.tenants()[0].client_id.clone();
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    wait_until("part of the window", Duration::from_secs(30), || {
        read_lines(&out).len() >= 50
    })
    .await;
    app.shutdown().await.unwrap();
    let delivered = read_lines(&out).len();
    assert!(delivered < 300, "stopped mid-window ({delivered})");
    // The continued window's first request is refused as a stale cursor would be.
    sim.push_faults(
        &client,
        [wiz_connector::sim::Fault::GraphQlError {
            code: "BAD_USER_INPUT".into(),
            message: "invalid cursor".into(),
        }],
    );
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    wait_until("every finding", Duration::from_secs(60), || {
        read_lines(&out).len() >= 300
    })
    .await;
    wait_until("the window done", Duration::from_secs(30), || {
        app.health
            .get("t0")
            .is_some_and(|h| h.feeds.iter().any(|f| f.last_success_at.is_some()))
    })
    .await;
    let lines = read_lines(&out);
    let ids: HashSet<&str> = lines
        .iter()
        .map(|e| e["finding_id"].as_str().unwrap())
        .collect();
    assert_eq!((lines.len(), ids.len()), (300, 300), "each finding once");
    // Started over: the pages of the first run were asked again (43 pages make the window; the
    // refused request is not counted as answered). Continuing would have made 43 in all.
    let queries = sim.counters(&client).feed_queries["vulnerabilities"];
    let first_run_pages = (delivered as u64).div_ceil(7);
    assert!(queries >= 43 + first_run_pages, "{queries} feed queries");
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_window_reaches_back_only_as_far_as_the_feeds_lookback() {
    // 40 audit entries and 20 detections from 2025, then three new ones of each today.
    let sim = sim(1, 40).await;
    let client = sim.tenants()[0].client_id.clone();
    // The feeds are generated at first use; churn then adds to them.
    sim.feeds(&client, |_| ());
    sim.churn(&client, 3);
    let (old_audit, old_det) = sim.feeds(&client, |f| (f.audit.len(), f.detections.len()));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let t = &sim.tenants()[0];
    let body = format!(
        "[connector]\nstate_dir = \"{}\"\npoll_interval = \"1s\"\nstartup_jitter = \"0s\"\nfeeds = [\"issues\", \"audit\", \"detections\"]\ninitial_lookback = {{ audit = \"1d\" }}\n[admin]\nlisten = \"127.0.0.1:0\"\n[sinks.out]\ntype = \"file\"\npath = \"{}\"\n{}",
        state_dir().display(),
        out.display(),
        tenant_toml(&sim, "t0", t, "")
    );
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    wait_until("two polls of every feed", Duration::from_secs(60), || {
        app.health.get("t0").is_some_and(|h| {
            h.polls >= 2
                && h.feeds
                    .iter()
                    .filter(|f| f.feed != "issues")
                    .all(|f| f.last_success_at.is_some())
        })
    })
    .await;
    let lines = read_lines(&out);
    // Audit: only the entries of the last day (the churned ones); detections: everything.
    let today = sim.feeds(&client, |f| {
        f.audit
            .iter()
            .rev()
            .take(3)
            .map(|a| a.id.clone())
            .collect::<std::collections::BTreeSet<_>>()
    });
    let audit: std::collections::BTreeSet<String> = of_feed(&lines, "audit")
        .iter()
        .map(|e| e["entry_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(audit, today, "of {old_audit} audit entries");
    assert_eq!(of_feed(&lines, "detections").len(), old_det);
    // The lookback is shown while the first window runs, and gone once it completed.
    let h = app.health.get("t0").unwrap();
    assert!(
        h.feeds.iter().all(|f| f.first_window_after.is_none()),
        "{h:?}"
    );
    // Later windows follow on from the first: a new entry arrives once.
    sim.churn(&client, 1);
    let newest = sim.feeds(&client, |f| f.audit.last().unwrap().id.clone());
    wait_until("the new entry", Duration::from_secs(30), || {
        of_feed(&read_lines(&out), "audit")
            .iter()
            .any(|e| e["entry_id"] == newest.as_str())
    })
    .await;
    app.shutdown().await.unwrap();
}

#[test]
fn a_lookback_for_issues_or_an_unknown_feed_is_refused() {
    let e = config_error(
        "[connector]\ninitial_lookback = { issues = \"1d\", findings = \"2d\", audit = \"10s\" }\n[sinks.o]\ntype = \"stdout\"\n",
    );
    assert!(
        e.contains("connector.initial_lookback.issues") && e.contains("Issues has no first window"),
        "{e}"
    );
    assert!(
        e.contains("connector.initial_lookback.findings") && e.contains("unknown feed"),
        "{e}"
    );
    assert!(
        e.contains("connector.initial_lookback.audit") && e.contains("at least 1m"),
        "{e}"
    );
}

/// A destination routed to the tenant by a reload gets a baseline of every feed with states:
/// the open issues and the open vulnerability findings, each once, marked `"baseline": true`,
/// though the feed's window takes three steps; nothing of the detections; and the destination
/// that had them from the start gets nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newly_routed_destination_gets_the_open_findings_as_a_baseline() {
    let (sim, body, dir, out) = findings_tenant(
        1_500,
        "poll_interval = \"300s\"\nfeeds = [\"issues\", \"vulnerabilities\", \"detections\"]",
        "rate_limit = 100",
    )
    .await;
    let cfg = write_config(&body);
    let load = || {
        wiz_connector::config::load(
            &cfg.path,
            &wiz_connector::config::EnvSource::Fixed(HashMap::new()),
        )
        .unwrap()
    };
    let app = App::start(load(), AppOptions::default()).await.unwrap();
    wait_until("the first windows done", Duration::from_secs(90), || {
        app.health.get("t0").is_some_and(|h| {
            ["vulnerabilities", "detections"].iter().all(|name| {
                h.feeds
                    .iter()
                    .any(|f| f.feed == *name && f.last_success_at.is_some())
            })
        })
    })
    .await;
    let before = read_lines(&out).len();
    let open_findings = sim.feeds(&sim.tenants()[0].client_id, |f| {
        f.vulnerabilities
            .iter()
            .filter(|v| v.status == "OPEN")
            .map(|v| v.id.to_string())
            .collect::<HashSet<_>>()
    });
    let open_issues = open_ids(&sim)["t0"].clone();
    // The SOC is routed to t0 (and `out` stays routed, so it is not new).
    let soc = dir.path().join("soc.jsonl");
    std::fs::write(
        &cfg.path,
        format!(
            "{body}[sinks.soc]\ntype = \"file\"\npath = \"{}\"\n[routes.all]\nsinks = [\"out\"]\n[routes.soc]\nsinks = [\"soc\"]\n",
            soc.display()
        ),
    )
    .unwrap();
    app.reloader().reload("test").await.unwrap();
    wait_until("the baseline at the SOC", Duration::from_secs(90), || {
        read_lines(&soc).len() >= open_issues.len() + open_findings.len()
    })
    .await;
    wait_until("the baseline recorded", Duration::from_secs(30), || {
        app.health
            .get("t0")
            .is_some_and(|h| h.state.as_str() == "idle")
    })
    .await;
    let got = read_lines(&soc);
    let others = got.iter().filter(|e| e["baseline"] != true).count();
    assert_eq!(others, 0, "only the baseline");
    let vulns = of_feed(&got, "vulnerabilities");
    let ids: HashSet<String> = vulns
        .iter()
        .map(|e| e["finding_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(vulns.len(), open_findings.len(), "each open finding once");
    assert_eq!(ids, open_findings);
    assert_eq!(
        kinds(&vulns),
        HashMap::from([("vulnerability.opened".to_string(), vulns.len())])
    );
    let issues: HashSet<String> = of_feed(&got, "issues")
        .iter()
        .map(|e| e["issue_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(issues, open_issues);
    assert!(of_feed(&got, "detections").is_empty());
    assert_eq!(read_lines(&out).len(), before, "nothing again to `out`");
    app.shutdown().await.unwrap();
}

/// Issue 18: a node of a feed that cannot be read (here past the 1 MiB node limit) is one
/// quarantine event of its feed's kind, the rest of its page is delivered, and later polls do
/// not quarantine it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_feed_node_is_quarantined_once_and_the_feed_goes_on() {
    let sim = sim(1, 10).await;
    let client = sim.tenants()[0].client_id.clone();
    let huge = "y".repeat(2 << 20);
    let (det_id, vul_id) = sim.feeds(&client, |f| {
        f.detections[0].description = huge.clone();
        f.vulnerabilities[0].name = huge.clone();
        (f.detections[0].id.clone(), f.vulnerabilities[0].id.clone())
    });
    let (det, _, vul, ..) = sizes(&sim, &client);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let state = state_dir();
    let app = App::start(
        settings(&config(&sim, &out, &state, "")),
        AppOptions::default(),
    )
    .await
    .unwrap();
    feed_events(
        &out,
        &[("detections", det), ("vulnerabilities", vul)],
        "the first sweep of the feeds",
    )
    .await;
    polls_after(&app, 2).await;
    let lines = read_lines(&out);
    for (feed, kind, id_field, id, n) in [
        (
            "detections",
            "detection.unreadable",
            "detection_id",
            &det_id,
            det,
        ),
        (
            "vulnerabilities",
            "vulnerability.unreadable",
            "finding_id",
            &vul_id,
            vul,
        ),
    ] {
        let events = of_feed(&lines, feed);
        assert_eq!(events.len(), n, "{feed}: nothing repeated by later polls");
        let q: Vec<&&Value> = events.iter().filter(|e| e["kind"] == kind).collect();
        assert_eq!(q.len(), 1, "{feed}");
        assert_eq!(q[0][id_field].as_str(), Some(id.as_str()));
        assert!(q[0]["unreadable"]["bytes"].as_u64().unwrap() > 2 << 20);
        assert!(events
            .iter()
            .filter(|e| e["kind"] != kind)
            .all(|e| e[id_field].as_str() != Some(id.as_str())));
    }
    let h = app.health.get("t0").unwrap();
    assert_eq!(h.unreadable.as_ref().map(|u| u.quarantined), Some(2));
    app.shutdown().await.unwrap();
}

/// Issue 18: detections are followed on `updatedAt` (as Elastic's `defend_v2` does): a detection
/// Wiz updates after it was delivered comes again, once, as `detection.updated` with a new event
/// id and its new state; later polls do not repeat it, nor does a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_updated_detection_is_delivered_once_more_as_detection_updated() {
    let sim = sim(1, 10).await;
    let client = sim.tenants()[0].client_id.clone();
    let (det, ..) = sizes(&sim, &client);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let state = state_dir();
    let body = config(&sim, &out, &state, "");
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    feed_events(&out, &[("detections", det)], "the detections").await;
    polls_after(&app, 1).await;
    let first = read_lines(&out);
    let id = sim.feeds(&client, |f| f.update_detection(0));
    let (severity, updated_at) = sim.feeds(&client, |f| {
        (f.detections[0].severity, f.detections[0].updated_at.clone())
    });
    feed_events(&out, &[("detections", det + 1)], "the update").await;
    polls_after(&app, 2).await;
    app.shutdown().await.unwrap();
    // A restart on the same state repeats nothing either.
    let app = App::start(settings(&body), AppOptions::default())
        .await
        .unwrap();
    polls_after(&app, 2).await;
    app.shutdown().await.unwrap();
    let lines = read_lines(&out);
    let detections = of_feed(&lines, "detections");
    assert_eq!(detections.len(), det + 1, "each version once");
    let versions: Vec<&&Value> = detections
        .iter()
        .filter(|e| e["detection_id"] == id.as_str())
        .collect();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0]["kind"], "detection.created");
    assert_eq!(versions[1]["kind"], "detection.updated");
    assert_eq!(versions[1]["updated_at"], updated_at.as_str());
    assert_eq!(versions[1]["raw_event"]["severity"], severity);
    assert_ne!(versions[0]["id"], versions[1]["id"]);
    // The first version is the one delivered by the first sweep.
    assert!(first.iter().any(|e| e["id"] == versions[0]["id"]));
}
