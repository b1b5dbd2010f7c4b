//! `wiz-connector run` and `demo` as a user runs them: child processes, signals, the file sink.

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use wiz_connector::event::{event_id, fingerprint};
use wiz_connector::sim::{SimTenantSpec, SimulatorOptions};

const BIN: &str = env!("CARGO_BIN_EXE_wiz-connector");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_writes_one_event_per_open_issue_with_every_contract_field() {
    let sim = sim(2, 30).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out/events.jsonl");
    let body = format!(
        "{}[sinks.archive]\ntype = \"file\"\npath = \"{}\"\n",
        sim_config(
            &sim,
            "poll_interval = \"1s\"\nstartup_jitter = \"0s\"\npage_size = 7",
            ""
        ),
        path.display()
    );
    let cfg = write_config(&body);
    let expected = open_ids(&sim);
    let total: usize = expected.values().map(|s| s.len()).sum();
    let mut child = spawn_run(&cfg.path);
    wait_until(
        "every open issue in the file",
        Duration::from_secs(60),
        || read_lines(&path).len() >= total,
    )
    .await;
    signal(&child, "-TERM");
    assert_eq!(exit_code(&mut child, Duration::from_secs(40)).await, 0);

    let lines = read_lines(&path);
    assert_eq!(
        lines.len(),
        total,
        "one event per open issue, none repeated"
    );
    let clients: HashMap<String, String> = sim
        .tenants()
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("t{i}"), t.client_id.clone()))
        .collect();
    for ev in &lines {
        let tenant = ev["tenant"].as_str().unwrap();
        let issue_id = ev["issue_id"].as_str().unwrap();
        assert!(expected[tenant].contains(issue_id));
        let sent = sim.issues(&clients[tenant], |s| {
            s.issues.iter().find(|i| i.id == issue_id).cloned().unwrap()
        });
        let raw = serde_json::to_value(&sent).unwrap();
        assert_eq!(
            ev["raw_event"], raw,
            "raw_event is the node the simulator sent"
        );
        let fp = fingerprint(
            &sent.status,
            Some(&sent.severity),
            Some(&sent.updated_at),
            Some(&sent.status_changed_at),
        );
        assert_eq!(ev["id"], event_id(tenant, issue_id, &fp));
        assert_eq!(ev["source"], "wiz");
        assert_eq!(ev["kind"], "issue.opened");
        assert_eq!(ev["status"], "OPEN");
        let sev = match sent.severity.as_str() {
            "CRITICAL" | "HIGH" => "high",
            "MEDIUM" => "medium",
            "LOW" => "low",
            _ => "info",
        };
        assert_eq!(ev["severity"], sev);
        assert_eq!(ev["issue_type"], sent.issue_type);
        assert_eq!(ev["title"], raw["sourceRule"]["name"]);
        assert_eq!(ev["created_at"], sent.created_at);
        assert_eq!(ev["updated_at"], sent.updated_at);
        assert_eq!(ev["status_changed_at"], sent.status_changed_at);
        assert!(humantime::parse_rfc3339(ev["observed_at"].as_str().unwrap()).is_ok());
        let r = &ev["resource"];
        assert_eq!(r["id"], sent.entity_snapshot.id);
        assert_eq!(r["name"], sent.entity_snapshot.name);
        assert_eq!(r["type"], sent.entity_snapshot.entity_type);
        assert_eq!(r["native_type"], sent.entity_snapshot.native_type);
        assert_eq!(r["cloud_platform"], raw["entitySnapshot"]["cloudPlatform"]);
        assert_eq!(r["region"], sent.entity_snapshot.region);
        assert_eq!(
            r["subscription_id"],
            sent.entity_snapshot.subscription_external_id
        );
        assert_eq!(
            r["subscription_name"],
            sent.entity_snapshot.subscription_name
        );
        assert_eq!(r["provider_id"], sent.entity_snapshot.provider_id);
        assert_eq!(
            r["cloud_provider_url"],
            sent.entity_snapshot.cloud_provider_url
        );
        let projects: Vec<&str> = sent.projects.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(ev["projects"], serde_json::json!(projects));
        assert_eq!(
            ev["url"],
            format!("https://app.wiz.io/issues#~(issue~'{issue_id})")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_sweep_delivers_what_was_fetched_and_exits_zero_in_time() {
    let sim = sim_with(SimulatorOptions {
        tenants: vec![SimTenantSpec::numbered(0, 42, 80)],
        latency: Duration::from_millis(250),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let body = format!(
        "{}[sinks.archive]\ntype = \"file\"\npath = \"{}\"\n",
        sim_config(&sim, "poll_interval = \"1h\"\nstartup_jitter = \"0s\"\npage_size = 4\nshutdown_timeout = \"10s\"", "rate_limit = 50"),
        path.display()
    );
    let cfg = write_config(&body);
    let total = open_ids(&sim)["t0"].len();
    assert!(total > 40);
    let mut child = spawn_run(&cfg.path);
    wait_until("the first page delivered", Duration::from_secs(30), || {
        !read_lines(&path).is_empty()
    })
    .await;
    let signalled = Instant::now();
    signal(&child, "-TERM");
    assert_eq!(exit_code(&mut child, Duration::from_secs(12)).await, 0);
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "within shutdown_timeout"
    );
    let lines = read_lines(&path);
    let fetched = sim.counters("sim-client-0000").graphql_requests as usize;
    assert!(
        lines.len() < total,
        "stopped mid-sweep ({} of {total})",
        lines.len()
    );
    assert_eq!(
        lines.len(),
        4 * fetched,
        "every fetched page was delivered, whole"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_streams_normalized_events_with_no_config_and_exits_zero_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .arg("demo")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut errs = BufReader::new(child.stderr.take().unwrap()).lines();
    let admin = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(l) = errs.next_line().await.unwrap() {
            if let Some(rest) = l.strip_prefix("admin API on http://") {
                return rest.split_whitespace().next().unwrap().to_string();
            }
        }
        panic!("demo never said where the admin API is");
    })
    .await
    .unwrap();
    let drain_err = tokio::spawn(async move { while let Ok(Some(_)) = errs.next_line().await {} });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("an event within seconds")
        .unwrap()
        .expect("a line");
    let ev: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(ev["source"], "wiz");
    assert!(
        ["acme", "globex", "initech"].contains(&ev["tenant"].as_str().unwrap()),
        "{ev}"
    );
    assert_eq!(ev["raw_event"]["id"], ev["issue_id"]);
    // Detections follow the issues of the same poll.
    let mut feeds = std::collections::BTreeSet::new();
    feeds.insert(ev["feed"].as_str().unwrap().to_string());
    tokio::time::timeout(Duration::from_secs(60), async {
        while !feeds.contains("detections") {
            let l = lines.next_line().await.unwrap().expect("a line");
            let ev: Value = serde_json::from_str(&l).unwrap();
            if ev["feed"] == "detections" {
                assert_eq!(ev["kind"], "detection.created");
                assert_eq!(ev["raw_event"]["id"], ev["detection_id"]);
            }
            feeds.insert(ev["feed"].as_str().unwrap().to_string());
        }
    })
    .await
    .expect("detections within a minute");
    assert_eq!(
        feeds.into_iter().collect::<Vec<_>>(),
        ["detections", "issues"]
    );
    // Keep reading so the pipe never fills.
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    // The admin API answers for the demo's tenants (on 8686, or a free port it named).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tenants: Value = serde_json::from_slice(
        &reqwest::get(format!("http://{admin}/tenants"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let ids: Vec<&str> = tenants
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["acme", "globex", "initech"]);
    signal(&child, "-INT");
    assert_eq!(exit_code(&mut child, Duration::from_secs(40)).await, 0);
    drain.abort();
    drain_err.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_configuration() {
    let sim = sim(2, 10).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let sink = format!(
        "[sinks.archive]\ntype = \"file\"\npath = \"{}\"\n",
        path.display()
    );
    let connector = "poll_interval = \"1s\"\nstartup_jitter = \"0s\"\nwatch_interval = \"0s\"";
    let one = format!(
        "[connector]\nstate_dir = \"{}\"\n{connector}\n[admin]\nlisten = \"127.0.0.1:0\"\n{sink}{}",
        dir.path().join("state").display(),
        tenant_toml(&sim, "t0", &sim.tenants()[0], "")
    );
    let cfg = write_config(&one);
    let mut child = spawn_run(&cfg.path);
    let tenants_in_file = || {
        read_lines(&path)
            .iter()
            .map(|l| l["tenant"].as_str().unwrap().to_string())
            .collect::<std::collections::HashSet<_>>()
    };
    wait_until("t0's events", Duration::from_secs(30), || {
        tenants_in_file().contains("t0")
    })
    .await;
    std::fs::write(
        &cfg.path,
        format!("{one}{}", tenant_toml(&sim, "t1", &sim.tenants()[1], "")),
    )
    .unwrap();
    signal(&child, "-HUP");
    wait_until("t1 added by SIGHUP", Duration::from_secs(30), || {
        tenants_in_file().contains("t1")
    })
    .await;
    signal(&child, "-TERM");
    assert_eq!(exit_code(&mut child, Duration::from_secs(40)).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_the_process_within_5s_with_hundreds_of_tenants_waiting_out_retry_after() {
    // 300 tenants whose Wiz answers every request with 429 and `Retry-After: 3600`, and 2 that
    // cannot get a token (their credentials are wrong): every one of them is waiting when the
    // signal comes, none has a page in flight.
    let sim = sim(302, 3).await;
    for t in sim.tenants().iter().take(300) {
        sim.set_sticky_fault(
            &t.client_id,
            Some(wiz_connector::sim::Fault::RateLimited {
                retry_after: Some(3600),
            }),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let mut body = format!(
        "{}[sinks.out]\ntype = \"file\"\npath = \"{}\"\n",
        sim_config(
            &sim,
            "poll_interval = \"60s\"\nstartup_jitter = \"0s\"\nshutdown_timeout = \"30s\"",
            "rate_limit = 50",
        ),
        dir.path().join("events.jsonl").display()
    );
    for t in sim.tenants().iter().skip(300) {
        body = body.replace(&t.client_secret, "wrong-secret-0123");
    }
    let cfg = write_config(&body);
    let mut child = spawn_run(&cfg.path);
    wait_until(
        "every tenant has asked Wiz once",
        Duration::from_secs(60),
        || {
            sim.tenants()
                .iter()
                .take(300)
                .all(|t| sim.counters(&t.client_id).graphql_requests >= 1)
                && sim
                    .tenants()
                    .iter()
                    .skip(300)
                    .all(|t| sim.counters(&t.client_id).token_requests >= 1)
        },
    )
    .await;
    let signalled = Instant::now();
    signal(&child, "-TERM");
    let code = exit_code(&mut child, Duration::from_secs(30)).await;
    let took = signalled.elapsed();
    assert_eq!(code, 0);
    // CONTRACT ("Operations"): within 5 s when no page is in flight, however many tenants wait
    // (shutdown_timeout, 30 s here, is not what bounds it).
    assert!(took < Duration::from_secs(5), "SIGTERM took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_with_a_siem_delivers_into_its_simulator() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["demo", "--siem", "elasticsearch"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut errs = BufReader::new(child.stderr.take().unwrap()).lines();
    // The demo says every few seconds what the simulated Elasticsearch took.
    let report = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(l) = errs.next_line().await.unwrap() {
            if l.starts_with("elasticsearch simulator at ") && !l.contains(": 0 documents") {
                return l;
            }
        }
        panic!("the demo never reported documents in Elasticsearch");
    })
    .await
    .expect("a report within a minute");
    let docs: usize = report
        .split(": ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{report}"));
    assert!(docs > 0, "{report}");
    assert!(report.contains("logs-wiz.issues-default"), "{report}");
    child.kill().await.unwrap();
}
