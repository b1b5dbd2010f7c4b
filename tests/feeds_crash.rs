//! kill -9 at random moments while a tenant sweeps all five feeds, `WIZ_FEED_CRASH_KILLS` times
//! (default 12), with changes in every feed between runs: afterwards every detection and audit
//! entry was delivered, the last event of every vulnerability and configuration finding is its
//! current state, and repeats carry the same event ids and stay within one page per feed per crash.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use wiz_connector::sim::{SimTenantSpec, SimulatorOptions};

const PAGE: usize = 5;

fn kills() -> usize {
    env_count("WIZ_FEED_CRASH_KILLS", 12)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_sweeping_every_feed_leaves_no_gap() {
    let sim = sim_with(SimulatorOptions {
        tenants: vec![SimTenantSpec::numbered(0, 42, 40)],
        latency: Duration::from_millis(10),
        ..Default::default()
    })
    .await;
    let client = sim.tenants()[0].client_id.clone();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let body = format!(
        "{}[sinks.out]\ntype = \"file\"\npath = \"{}\"\n",
        sim_config(
            &sim,
            &format!("poll_interval = \"1s\"\nstartup_jitter = \"0s\"\npage_size = {PAGE}\nincremental_overlap = \"2s\"\nwatch_interval = \"0s\"\nfeeds = [\"issues\", \"vulnerabilities\", \"detections\", \"audit\", \"cloud_configuration\"]"),
            "rate_limit = 50",
        ),
        out.display()
    );
    let cfg = write_config(&body);
    let kills = kills();
    for round in 0..kills {
        sim.churn(&client, 3);
        run_and_kill(&cfg.path, &out, round, Duration::from_millis(1500)).await;
    }

    // A last, clean run until every feed caught up, then SIGTERM.
    let mut child = spawn_run_started(&cfg.path, &sim, &client).await;
    let (detections, audit, vulns, configs) = sim.feeds(&client, |f| {
        (
            f.detections
                .iter()
                .map(|d| d.id.clone())
                .collect::<Vec<_>>(),
            f.audit.iter().map(|a| a.id.clone()).collect::<Vec<_>>(),
            f.vulnerabilities
                .iter()
                .map(|v| (v.id.clone(), v.status, v.resolved_at.clone()))
                .collect::<Vec<_>>(),
            f.configuration
                .iter()
                .map(|c| (c.id.clone(), c.status, c.result))
                .collect::<Vec<_>>(),
        )
    });
    let missing = || {
        let lines = complete_lines(&out);
        let mut last: HashMap<(String, String), &serde_json::Value> = HashMap::new();
        let mut once: HashMap<(String, String), usize> = HashMap::new();
        for l in &lines {
            let feed = l["feed"].as_str().unwrap().to_string();
            let item = ["finding_id", "detection_id", "entry_id"]
                .iter()
                .find_map(|k| l[*k].as_str())
                .map(str::to_string);
            if let Some(item) = item {
                *once.entry((feed.clone(), item.clone())).or_default() += 1;
                last.insert((feed, item), l);
            }
        }
        let mut gaps = Vec::new();
        for id in &detections {
            if !once.contains_key(&("detections".into(), id.clone())) {
                gaps.push(format!("detection {id}"));
            }
        }
        for id in &audit {
            if !once.contains_key(&("audit".into(), id.clone())) {
                gaps.push(format!("audit entry {id}"));
            }
        }
        for (id, status, resolved) in &vulns {
            match last.get(&("vulnerabilities".into(), id.clone())) {
                Some(e)
                    if e["raw_event"]["status"] == *status
                        && e["raw_event"]["resolvedAt"].as_str() == resolved.as_deref() => {}
                other => gaps.push(format!(
                    "vulnerability {id} ({status}): last event {other:?}"
                )),
            }
        }
        for (id, status, result) in &configs {
            match last.get(&("cloud_configuration".into(), id.clone())) {
                Some(e)
                    if e["raw_event"]["status"] == *status
                        && e["raw_event"]["result"] == *result => {}
                other => gaps.push(format!("configuration finding {id}: last event {other:?}")),
            }
        }
        gaps
    };
    wait_for("every feed caught up", Duration::from_secs(90), || {
        let gaps = missing();
        if gaps.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} gaps, first {:?}",
                gaps.len(),
                &gaps[..gaps.len().min(3)]
            ))
        }
    })
    .await;
    signal(&child, "-TERM");
    assert_eq!(exit_code(&mut child, Duration::from_secs(40)).await, 0);

    // Repeats: only of the same event (same id, same bytes but observed_at), and few.
    let lines = complete_lines(&out);
    let mut by_id: HashMap<&str, Vec<&serde_json::Value>> = HashMap::new();
    for l in &lines {
        by_id.entry(l["id"].as_str().unwrap()).or_default().push(l);
    }
    let mut repeats = 0;
    for (id, events) in &by_id {
        let first = events[0];
        for e in &events[1..] {
            repeats += 1;
            assert_eq!(
                e["raw_event"], first["raw_event"],
                "event {id} repeated with other content"
            );
            assert_eq!(e["kind"], first["kind"]);
        }
    }
    let per_feed = |f: &str| lines.iter().filter(|l| l["feed"] == f).count();
    eprintln!(
        "{repeats} repeats over {kills} kills; events: issues {}, vulnerabilities {}, detections {}, audit {}, cloud_configuration {}",
        per_feed("issues"),
        per_feed("vulnerabilities"),
        per_feed("detections"),
        per_feed("audit"),
        per_feed("cloud_configuration")
    );
    // Each crash may repeat the page in flight of the feed it hit (plus the issues feed's).
    assert!(
        repeats <= (kills + 1) * 2 * PAGE,
        "{repeats} repeated events over {kills} kills"
    );
    // Every item of a `Once` feed is one event id, however often it was seen.
    for feed in ["detections", "audit"] {
        let mut ids: HashMap<&str, std::collections::HashSet<&str>> = HashMap::new();
        for l in lines.iter().filter(|l| l["feed"] == feed) {
            let item = l["detection_id"]
                .as_str()
                .or(l["entry_id"].as_str())
                .unwrap();
            ids.entry(item)
                .or_default()
                .insert(l["id"].as_str().unwrap());
        }
        assert!(
            ids.values().all(|s| s.len() == 1),
            "{feed}: one event id per item"
        );
        assert!(ids.len() >= 20, "{feed}: {} items", ids.len());
    }
}
